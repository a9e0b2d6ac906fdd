"""Benchmark of the moments aggregates against PostgreSQL's built-in aggregates
on the same data in the same run. Prints timings and ratios; asserts nothing.

    /usr/bin/python3 bench/moments_bench.py [--rows N] [--runs R] [--reuse]

Connects with the usual PG* environment variables (bench/moments_bench.sh
starts a throwaway cluster and sets them).

- Each comparison runs its two queries alternately, R times each, and reports
  the medians (never the best run), so that a change of load on a shared
  machine weighs on both alike.
- Like with like: grouped aggregates against grouped built-ins, the ungrouped
  Welch aggregate against built-ins that also make one ungrouped pass over
  both arms (FILTER clauses).
- Every line says how many parallel workers each side's plan uses (EXPLAIN):
  serial unless the line is a parallel comparison.
- The table is regenerated on every run.  With --reuse an existing table is
  kept only if its comment records this size and seed and its content still
  has the fingerprint (count and sums of every column) recorded when it was
  generated; a table that merely has the right row count is not reused.
"""
import argparse
import json
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
SEED = 0.5
FINGERPRINT = ("SELECT count(*), sum(grp), sum(y)::text, sum(x)::text, sum(y * x)::text FROM bench_obs")


def fingerprint():
    """count and sums of the table's content, serial (a fixed order of summation)"""
    cur.execute("SET max_parallel_workers_per_gather = 0")
    cur.execute(FINGERPRINT)
    return [str(v) for v in cur.fetchone()]


# the table is regenerated unless --reuse finds one whose comment records this size and
# seed and whose content has the recorded fingerprint: a table of the right row count
# from another run, or one changed since, is not enough
have = False
if args.reuse:
    cur.execute("SELECT obj_description(c.oid, 'pg_class') FROM pg_class c "
                "WHERE c.relname = 'bench_obs' AND c.relnamespace = 'public'::regnamespace")
    row = cur.fetchone()
    try:
        recorded = json.loads(row[0]) if row and row[0] else {}
    except ValueError:
        recorded = {}
    if recorded.get("rows") == args.rows and recorded.get("seed") == SEED:
        have = recorded.get("fingerprint") == fingerprint()
    print("reuse: %s" % ("the table's content matches its record" if have else
                         "no table of this size and seed with its recorded content; regenerating"))
if not have:
    print("generating %d rows ..." % args.rows, flush=True)
    cur.execute("DROP TABLE IF EXISTS bench_obs")
    cur.execute("CREATE UNLOGGED TABLE bench_obs (grp int, y float8, x float8) WITH (parallel_workers = 2)")
    cur.execute("SELECT setseed(%s)", (SEED,))
    cur.execute("INSERT INTO bench_obs SELECT g %% 2, 100 + 20 * random() + (g %% 2), 100 + 20 * random() "
                "FROM generate_series(1, %s) g", (args.rows,))
    cur.execute("VACUUM ANALYZE bench_obs")
    cur.execute("COMMENT ON TABLE bench_obs IS %s",
                (json.dumps({"rows": args.rows, "seed": SEED, "fingerprint": fingerprint()}),))
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


def workers(sql, settings=()):
    """parallel workers the plan of sql uses under settings (0: serial)"""
    cur.execute("SET max_parallel_workers_per_gather = 0")
    for st in settings:
        cur.execute(st)
    cur.execute("EXPLAIN (FORMAT JSON) " + sql)

    def most(plan):
        return max([plan.get("Workers Planned", 0)] + [most(p) for p in plan.get("Plans", [])])
    return most(cur.fetchone()[0][0]["Plan"])


def describe(w):
    return "serial" if w == 0 else "%d workers" % w


def paired(a_sql, b_sql, a_settings=(), b_settings=()):
    """Median times of a and b, run alternately so that whatever else the
    machine is doing weighs on both alike, and the workers of each plan."""
    ta, tb = [], []
    for _ in range(args.runs):
        ta.append(run_once(a_sql, a_settings))
        tb.append(run_once(b_sql, b_settings))
    return (statistics.median(ta), statistics.median(tb),
            workers(a_sql, a_settings), workers(b_sql, b_settings))


def compare(label, ours, *builtins, target):
    """ours against the faster (by median) of one or more baselines computing the same"""
    best = None
    for builtin in builtins:
        a, b, wa, wb = paired(ours, builtin)
        if best is None or b < best[1]:
            best = (a, b, wa, wb)
    a, b, wa, wb = best
    print("%-46s %8.3f s  vs %8.3f s   ratio %.2f  (target <= %.2f)  [ours %s, baseline %s]"
          % (label, a, b, a / b, target, describe(wa), describe(wb)), flush=True)


PAR = ("SET max_parallel_workers_per_gather = 2",)
scan, _, wscan, _ = paired("SELECT count(*) FROM bench_obs", "SELECT 1")
print("rows: %d, runs per query: %d (median, alternating), jit off, serial unless stated"
      % (args.rows, args.runs))
print("%-46s %8.3f s  [%s]" % ("bare scan, count(*)", scan, describe(wscan)))
compare("moments(y) per group vs count,avg,var",
        "SELECT grp, experiment.moments(y) FROM bench_obs GROUP BY grp",
        "SELECT grp, count(y), avg(y), var_samp(y) FROM bench_obs GROUP BY grp", target=1.0)
compare("moments(y,x) vs the six built-ins",
        "SELECT grp, experiment.moments(y, x) FROM bench_obs GROUP BY grp",
        "SELECT grp, regr_count(y, x), avg(y), avg(x), var_samp(y), var_samp(x), covar_samp(y, x) "
        "FROM bench_obs GROUP BY grp", target=0.8)
# like with like: the aggregate makes one ungrouped pass and keeps both arms' moments;
# so do the baselines, each arm's statistics from FILTER clauses (as sums, or as the
# count, mean and variance that the test uses); the faster baseline is shown
compare("welch_ttest(bool, y) vs both arms ungrouped",
        "SELECT experiment.welch_ttest(grp = 1, y) FROM bench_obs",
        "SELECT count(y) FILTER (WHERE grp = 1), sum(y) FILTER (WHERE grp = 1), sum(y * y) FILTER (WHERE grp = 1), "
        "count(y) FILTER (WHERE grp <> 1), sum(y) FILTER (WHERE grp <> 1), sum(y * y) FILTER (WHERE grp <> 1) "
        "FROM bench_obs",
        "SELECT count(y) FILTER (WHERE grp = 1), avg(y) FILTER (WHERE grp = 1), var_samp(y) FILTER (WHERE grp = 1), "
        "count(y) FILTER (WHERE grp <> 1), avg(y) FILTER (WHERE grp <> 1), var_samp(y) FILTER (WHERE grp <> 1) "
        "FROM bench_obs", target=1.0)
q = "SELECT grp, experiment.moments(y) FROM bench_obs GROUP BY grp"
par, serial, wpar, wserial = paired(q, q, PAR, ())
print("%-46s %8.3f s  vs %8.3f s   speed-up %.2f (target >= 1.6)  [%s vs %s]" % (
    "moments(y): 2 workers vs none", par, serial, serial / par, describe(wpar), describe(wserial)))
q = "SELECT grp, count(y), avg(y), var_samp(y) FROM bench_obs GROUP BY grp"
par, serial, wpar, wserial = paired(q, q, PAR, ())
print("%-46s %8.3f s  vs %8.3f s   speed-up %.2f (for reference)  [%s vs %s]" % (
    "built-ins: 2 workers vs none", par, serial, serial / par, describe(wpar), describe(wserial)))
