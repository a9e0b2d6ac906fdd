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
ap.add_argument("--reuse", action="store_true",
                help="keep an existing bench_obs of the same size and seed instead of regenerating it")
args = ap.parse_args()

conn = psycopg2.connect(dbname="postgres")
conn.autocommit = True
cur = conn.cursor()
cur.execute("CREATE EXTENSION IF NOT EXISTS experiment")
# the table is regenerated unless --reuse and a table of this size and seed exists (its
# comment records them): a table of the right row count from another run is not enough
have = False
if args.reuse:
    cur.execute("SELECT obj_description('bench_obs'::regclass, 'pg_class') FROM pg_class WHERE relname = 'bench_obs'")
    row = cur.fetchone()
    have = row is not None and row[0] == "moments_bench rows=%d seed=0.5" % args.rows
if not have:
    print("generating %d rows ..." % args.rows, flush=True)
    cur.execute("DROP TABLE IF EXISTS bench_obs")
    cur.execute("CREATE UNLOGGED TABLE bench_obs (grp int, y float8, x float8) WITH (parallel_workers = 2)")
    cur.execute("SELECT setseed(0.5)")
    cur.execute("INSERT INTO bench_obs SELECT g %% 2, 100 + 20 * random() + (g %% 2), 100 + 20 * random() "
                "FROM generate_series(1, %s) g", (args.rows,))
    cur.execute("COMMENT ON TABLE bench_obs IS %s", ("moments_bench rows=%d seed=0.5" % args.rows,))
    cur.execute("VACUUM ANALYZE bench_obs")
cur.execute("SET jit = off")
# warm the cache
cur.execute("SELECT count(*) FROM bench_obs")


def run_once(sql, settings):
    cur.execute("SET max_parallel_workers_per_gather = 0")
    for st in settings:
        cur.execute(st)
    t0 = time.perf_counter()
    cur.execute(sql)
    cur.fetchall()
    return time.perf_counter() - t0


def paired(a_sql, b_sql, a_settings=(), b_settings=()):
    """Median times of a and b, run alternately so that whatever else the
    machine is doing weighs on both alike."""
    ta, tb = [], []
    for _ in range(args.runs):
        ta.append(run_once(a_sql, a_settings))
        tb.append(run_once(b_sql, b_settings))
    return statistics.median(ta), statistics.median(tb)


def compare(label, ours, builtin, target):
    a, b = paired(ours, builtin)
    print("%-42s %8.3f s  vs %8.3f s   ratio %.2f  (target <= %.2f)" % (label, a, b, a / b, target), flush=True)


PAR = ("SET max_parallel_workers_per_gather = 2",)
scan, _ = paired("SELECT count(*) FROM bench_obs", "SELECT 1")
print("rows: %d, runs per query: %d (median, alternating), jit off, serial unless stated"
      % (args.rows, args.runs))
print("%-42s %8.3f s" % ("bare scan, count(*)", scan))
compare("moments(y) per group vs count,avg,var",
        "SELECT grp, experiment.moments(y) FROM bench_obs GROUP BY grp",
        "SELECT grp, count(y), avg(y), var_samp(y) FROM bench_obs GROUP BY grp", 1.0)
compare("moments(y,x) vs the six built-ins",
        "SELECT grp, experiment.moments(y, x) FROM bench_obs GROUP BY grp",
        "SELECT grp, regr_count(y, x), avg(y), avg(x), var_samp(y), var_samp(x), covar_samp(y, x) "
        "FROM bench_obs GROUP BY grp", 0.8)
# like with like: one ungrouped pass over the rows, both arms' sums from FILTER clauses
compare("welch_ttest(bool, y) vs the same sums, ungrouped",
        "SELECT experiment.welch_ttest(grp = 1, y) FROM bench_obs",
        "SELECT count(y) FILTER (WHERE grp = 1), sum(y) FILTER (WHERE grp = 1), sum(y * y) FILTER (WHERE grp = 1), "
        "count(y) FILTER (WHERE grp <> 1), sum(y) FILTER (WHERE grp <> 1), sum(y * y) FILTER (WHERE grp <> 1) "
        "FROM bench_obs", 1.0)
compare("welch_ttest(bool, y) vs count,sum,sum(y*y) GROUP BY",
        "SELECT experiment.welch_ttest(grp = 1, y) FROM bench_obs",
        "SELECT grp, count(y), sum(y), sum(y * y) FROM bench_obs GROUP BY grp", 1.0)
q = "SELECT grp, experiment.moments(y) FROM bench_obs GROUP BY grp"
par, serial = paired(q, q, PAR, ())
print("%-42s %8.3f s  vs %8.3f s   speed-up %.2f (target >= 1.6)" % (
    "moments(y): 2 workers vs none", par, serial, serial / par))
q = "SELECT grp, count(y), avg(y), var_samp(y) FROM bench_obs GROUP BY grp"
par, serial = paired(q, q, PAR, ())
print("%-42s %8.3f s  vs %8.3f s   speed-up %.2f (for reference)" % (
    "built-ins: 2 workers vs none", par, serial, serial / par))
