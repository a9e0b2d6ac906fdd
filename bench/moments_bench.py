"""Benchmark of the moments aggregates against PostgreSQL's built-in aggregates
on the same data in the same run. Prints timings (median of the runs) and
ratios; asserts nothing.

    /usr/bin/python3 bench/moments_bench.py [--rows N] [--runs R]

Connects with the usual PG* environment variables (bench/moments_bench.sh
starts a throwaway cluster and sets them).
"""
import argparse
import statistics
import time

import psycopg2

ap = argparse.ArgumentParser()
ap.add_argument("--rows", type=int, default=20_000_000)
ap.add_argument("--runs", type=int, default=5)
args = ap.parse_args()

conn = psycopg2.connect(dbname="postgres")
conn.autocommit = True
cur = conn.cursor()
cur.execute("CREATE EXTENSION IF NOT EXISTS experiment")
cur.execute("SELECT count(*) FROM pg_class WHERE relname = 'bench_obs'")
have = cur.fetchone()[0]
if have:
    cur.execute("SELECT count(*) FROM bench_obs")
    have = cur.fetchone()[0] == args.rows
if not have:
    print("generating %d rows ..." % args.rows, flush=True)
    cur.execute("DROP TABLE IF EXISTS bench_obs")
    cur.execute("CREATE UNLOGGED TABLE bench_obs (grp int, y float8, x float8) WITH (parallel_workers = 2)")
    cur.execute("SELECT setseed(0.5)")
    cur.execute("INSERT INTO bench_obs SELECT g %% 2, 100 + 20 * random() + (g %% 2), 100 + 20 * random() "
                "FROM generate_series(1, %s) g", (args.rows,))
    cur.execute("VACUUM ANALYZE bench_obs")
cur.execute("SET jit = off")
cur.execute("SET max_parallel_workers_per_gather = 0")
# warm the cache
cur.execute("SELECT count(*) FROM bench_obs")


def timed(sql, settings=()):
    for s in settings:
        cur.execute(s)
    times = []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        cur.execute(sql)
        cur.fetchall()
        times.append(time.perf_counter() - t0)
    cur.execute("SET max_parallel_workers_per_gather = 0")
    return statistics.median(times)


def compare(label, ours, builtin, target, settings=()):
    a = timed(ours, settings)
    b = timed(builtin, settings)
    print("%-38s %8.3f s  vs %8.3f s   ratio %.2f  (target <= %.2f)" % (label, a, b, a / b, target), flush=True)
    return a / b


scan = timed("SELECT count(*) FROM bench_obs")
print("rows: %d, runs per query: %d (median), jit off, serial unless stated" % (args.rows, args.runs))
print("%-38s %8.3f s" % ("bare scan, count(*)", scan))
compare("moments(y) per group vs count,avg,var",
        "SELECT grp, experiment.moments(y) FROM bench_obs GROUP BY grp",
        "SELECT grp, count(y), avg(y), var_samp(y) FROM bench_obs GROUP BY grp", 1.0)
compare("moments(y,x) vs the six built-ins",
        "SELECT grp, experiment.moments(y, x) FROM bench_obs GROUP BY grp",
        "SELECT grp, regr_count(y, x), avg(y), avg(x), var_samp(y), var_samp(x), covar_samp(y, x) "
        "FROM bench_obs GROUP BY grp", 0.8)
compare("welch_ttest(bool, y) vs count,sum,sum(y*y)",
        "SELECT experiment.welch_ttest(grp = 1, y) FROM bench_obs",
        "SELECT grp, count(y), sum(y), sum(y * y) FROM bench_obs GROUP BY grp", 1.0)
serial = timed("SELECT grp, experiment.moments(y) FROM bench_obs GROUP BY grp")
par = timed("SELECT grp, experiment.moments(y) FROM bench_obs GROUP BY grp",
            ("SET max_parallel_workers_per_gather = 2",))
print("%-38s %8.3f s  vs %8.3f s   speed-up %.2f (target >= 1.6)" % (
    "moments(y): 2 workers vs none", par, serial, serial / par))
bserial = timed("SELECT grp, count(y), avg(y), var_samp(y) FROM bench_obs GROUP BY grp")
bpar = timed("SELECT grp, count(y), avg(y), var_samp(y) FROM bench_obs GROUP BY grp",
             ("SET max_parallel_workers_per_gather = 2",))
print("%-38s %8.3f s  vs %8.3f s   speed-up %.2f (for reference)" % (
    "built-ins: 2 workers vs none", bpar, bserial, bserial / bpar))
