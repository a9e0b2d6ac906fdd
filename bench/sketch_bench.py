#!/usr/bin/python3
"""Benchmark: experiment.sketch(y) per group against percentile_cont(0.99) WITHIN GROUP.

N rows (default 20,000,000; `sketch_bench.py N` to change) of lognormal
latencies in 4 groups. In one session, RUNS rounds (default 5) run each query
once, alternately; the medians are compared:

  bare scan        SELECT grp, count(y) ... GROUP BY grp
  sketch           SELECT grp, experiment.quantile(experiment.sketch(y), 0.99) ... GROUP BY grp
  percentile_cont  SELECT grp, percentile_cont(0.99) WITHIN GROUP (ORDER BY y) ... GROUP BY grp

and printed: the median times, the ratio sketch / percentile_cont (target at
most 0.3), the largest relative difference of the sketch's p99 from the exact
one, the sketch's size in bytes per group, and the bound for 10^9 values.
Parallel query and JIT are off; work_mem is 1GB so that percentile_cont sorts
in memory (its best case). Needs PGHOST/PGPORT/PGUSER of a cluster with the
extension installed; uses (and drops) the database exp_bench_sketch.
"""
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "test", "lib"))
from exptest import fresh_db  # noqa: E402

N = int(sys.argv[1]) if len(sys.argv) > 1 else 20000000
RUNS = int(os.environ.get("RUNS", "5"))
GROUPS = 4

conn = fresh_db("exp_bench_sketch")
cur = conn.cursor()
cur.execute("SET max_parallel_workers_per_gather = 0; SET jit = off; SET work_mem = '1GB'")
t0 = time.time()
cur.execute("SELECT setseed(0.5)")
cur.execute("CREATE UNLOGGED TABLE loads AS SELECT g %% %d AS grp,"
            " round(exp(5 + 0.8 * sqrt(-2 * ln(1 - random())) * cos(2 * pi() * random()))::numeric, 3)::float8 AS y"
            " FROM generate_series(1, %d) g" % (GROUPS, N))
cur.execute("VACUUM ANALYZE loads")
print("%d rows in %d groups built in %.1f s" % (N, GROUPS, time.time() - t0), flush=True)

QUERIES = [
    ("bare scan", "SELECT grp, count(y) FROM loads GROUP BY grp"),
    ("sketch", "SELECT grp, experiment.quantile(experiment.sketch(y), 0.99) FROM loads GROUP BY grp ORDER BY grp"),
    ("percentile_cont", "SELECT grp, percentile_cont(0.99) WITHIN GROUP (ORDER BY y) FROM loads GROUP BY grp ORDER BY grp"),
]
times = {name: [] for name, _ in QUERIES}
results = {}
for r in range(RUNS):
    for name, sql in (QUERIES if r % 2 == 0 else QUERIES[::-1]):
        t = time.time()
        cur.execute(sql)
        results[name] = cur.fetchall()
        times[name].append(time.time() - t)
    print("round %d: %s" % (r + 1, ", ".join("%s %.3f s" % (k, v[-1]) for k, v in times.items())), flush=True)

med = {k: statistics.median(v) for k, v in times.items()}
for name, _ in QUERIES:
    print("%-16s median %.3f s" % (name, med[name]))
print("ratio sketch / percentile_cont: %.3f (target <= 0.3)" % (med["sketch"] / med["percentile_cont"]))
worst = max(abs(a[1] / b[1] - 1) for a, b in zip(results["sketch"], results["percentile_cont"]))
print("largest relative difference of the p99 from percentile_cont: %.5f" % worst)
cur.execute("SELECT grp, experiment.n(s), pg_column_size(s), length(s::text) FROM"
            " (SELECT grp, experiment.sketch(y) s FROM loads GROUP BY grp) x ORDER BY grp")
for grp, n, size, text in cur.fetchall():
    print("group %d: %d values, sketch %d bytes stored (%d bytes of text)" % (grp, n, size, text))
print("bound for 10^9 values: 24 + (2 * 2048 + 1) * 8 = %d bytes (every bin count below 2^32)" % (24 + 4097 * 8))
conn.close()
