#!/usr/bin/python3
"""bench/citus_bench.py: refresh() with the per-unit values on the Citus workers against
the same refresh on one node, both on this machine.

A Citus cluster of test/lib/citus.py (a coordinator and 2 workers on 127.0.0.1, Citus
13.0.5 built from ../shared/vendor; CITUS_CACHE names the build's cache). The same
events in a table distributed on the unit column (8 shards) and in a local table on the
coordinator; two experiments with the same exposures, one over each: a conversion
(any), revenue (sum, winsorized at the 0.99 percentile, CUPED over 7 days) and a count.

  /usr/bin/python3 bench/citus_bench.py [SCALE] [ROUNDS]

SCALE 1 (default): 200,000 units and 2,000,000 events; ROUNDS (default 3) alternating
rounds of: a full refresh of each experiment, then 1% new events and an incremental
refresh of each. Prints the medians, the ratio distributed / single-node, count(*) of
each source, and the parts of the distributed refresh that are done on the coordinator
per unit (the units from the exposures, written into the distributed table), from which
doc/scaling.md projects larger clusters: events per second per worker, seconds per
million units on the coordinator.
"""
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "test", "lib"))
import citus  # noqa: E402

SCALE = float(sys.argv[1]) if len(sys.argv) > 1 else 1.0
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 3
UNITS = int(200000 * SCALE)
EVENTS = int(2000000 * SCALE)

if not citus.available():
    print("Citus 13.0.5 source archive not found at %s" % citus.ARCHIVE)
    sys.exit(77)

bindir = citus.installation()
cl = citus.Cluster(bindir, workers=2)
try:
    conn = cl.connect()
    cur = conn.cursor()

    def q(sql, args=None):
        cur.execute(sql, args)
        return cur.fetchall() if cur.description else None

    def timed(sql, args=None):
        t = time.perf_counter()
        q(sql, args)
        return time.perf_counter() - t

    q("SET client_min_messages = warning")
    q("CREATE EXTENSION experiment")
    print("generating %d units and %d events ..." % (UNITS, EVENTS), file=sys.stderr)
    events = """SELECT 'u' || (i %% %d) AS uid,
                       '2025-03-01'::timestamptz + (abs(sin(i * 1.7)) * 30) * interval '1 day' - interval '7 days' AS ts,
                       round(exp(3 + 1.2 * sin(i * 12.9898))::numeric, 2)::float8 AS amount
                FROM generate_series(%d, %d) i"""
    q("CREATE TABLE ev_local AS " + events % (UNITS, 1, EVENTS))
    q("CREATE TABLE ev (LIKE ev_local)")
    q("SELECT create_distributed_table('ev', 'uid')")
    q("INSERT INTO ev SELECT * FROM ev_local")
    q("VACUUM ANALYZE ev_local")
    q("VACUUM ANALYZE ev")
    for exp, src in (("dist", "ev"), ("loc", "ev_local")):
        q("""INSERT INTO experiment.experiments (id, name, status, start_at, end_at)
             VALUES (%s, %s, 'draft', '2025-03-01', '2025-04-01')""", (exp, exp))
        q("""INSERT INTO experiment.variants (experiment_id, name, allocation, is_control)
             VALUES (%s, 'c', 0.5, true), (%s, 't', 0.5, false)""", (exp, exp))
        q("""INSERT INTO experiment.metrics (name, source, unit_column, time_column, value_column, aggregation, kind,
                                             "window", winsorize, cuped_lookback) VALUES
             (%s, %s, 'uid', 'ts', NULL, 'any', 'proportion', '14 days', NULL, NULL),
             (%s, %s, 'uid', 'ts', 'amount', 'sum', 'mean', NULL, 0.99, '7 days'),
             (%s, %s, 'uid', 'ts', NULL, 'count', 'mean', '14 days', NULL, NULL)""",
          (exp + "_conv", src, exp + "_rev", src, exp + "_cnt", src))
        q("""INSERT INTO experiment.experiment_metrics (experiment_id, metric, role)
             VALUES (%s, %s, 'primary'), (%s, %s, 'secondary'), (%s, %s, 'secondary')""",
          (exp, exp + "_rev", exp, exp + "_conv", exp, exp + "_cnt"))
        q("""INSERT INTO experiment.exposures (experiment_id, unit_id, variant, exposed_at)
             SELECT %s, 'u' || i, CASE WHEN hashtext('v' || i) %% 2 = 0 THEN 'c' ELSE 't' END,
                    '2025-03-01'::timestamptz + (abs(cos(i * 3.3)) * 20) * interval '1 day'
             FROM generate_series(0, %s - 1) i""", (exp, UNITS))
        q("UPDATE experiment.experiments SET status = 'running' WHERE id = %s", (exp,))
    q("VACUUM ANALYZE experiment.exposures")

    t = {k: [] for k in ("count_dist", "count_loc", "full_dist", "full_loc", "inc_dist", "inc_loc",
                         "units_coord", "units_copy")}
    new = 0
    for r in range(ROUNDS):
        t["count_dist"].append(timed("SELECT count(*) FROM ev"))
        t["count_loc"].append(timed("SELECT count(*) FROM ev_local"))
        order = (("dist", "loc") if r % 2 == 0 else ("loc", "dist"))
        for exp in order:
            t["full_" + exp].append(timed("SELECT experiment.refresh(%s, full => true)", (exp,)))
        # 1% new events at the newest times (within the lateness allowance)
        lo = EVENTS + 1 + new
        hi = lo + EVENTS // 100 - 1
        new += EVENTS // 100
        extra = """SELECT uid, '2025-03-24'::timestamptz - interval '12 hours' + (ts - '2025-02-22'::timestamptz) / 60,
                          amount FROM (%s) x""" % (events % (UNITS, lo, hi))
        q("INSERT INTO ev " + extra)
        q("INSERT INTO ev_local " + extra)
        for exp in order:
            t["inc_" + exp].append(timed("SELECT experiment.refresh(%s)", (exp,)))
        # the coordinator's part per unit: the units from the exposures, and their copy into a
        # distributed table co-located with the source
        q("BEGIN")
        t["units_coord"].append(timed("""CREATE TEMP TABLE bench_units ON COMMIT DROP AS
            SELECT unit_id, min(variant) AS variant, min(exposed_at) AS t0 FROM experiment.exposures
            WHERE experiment_id = 'dist' GROUP BY unit_id"""))
        q("CREATE TABLE bench_uv (unit_id text, variant text, t0 timestamptz)")
        q("SELECT create_distributed_table('bench_uv', 'unit_id', colocate_with => 'ev')")
        t["units_copy"].append(timed("INSERT INTO bench_uv SELECT * FROM pg_temp.bench_units"))
        q("ROLLBACK")
    modes = q("""SELECT experiment_id, mode, placement FROM experiment.refreshes ORDER BY 1""")
    assert modes == [("dist", "incremental", "distributed"), ("loc", "incremental", "local")], modes
    m = {k: statistics.median(v) for k, v in t.items()}
    print("units %d, events %d (+%d new), 2 workers on this machine (2 cores), medians of %d rounds"
          % (UNITS, EVENTS, new, ROUNDS))
    print("count(*)             distributed %7.3f s   single-node %7.3f s   ratio %.2f"
          % (m["count_dist"], m["count_loc"], m["count_dist"] / m["count_loc"]))
    print("full refresh         distributed %7.3f s   single-node %7.3f s   ratio %.2f"
          % (m["full_dist"], m["full_loc"], m["full_dist"] / m["full_loc"]))
    print("incremental, 1%% new  distributed %7.3f s   single-node %7.3f s   ratio %.2f"
          % (m["inc_dist"], m["inc_loc"], m["inc_dist"] / m["inc_loc"]))
    coord = m["units_coord"] + m["units_copy"]
    print("coordinator per unit: units from the exposures %.3f s + copy to the workers %.3f s = %.2f s per million units"
          % (m["units_coord"], m["units_copy"], coord / UNITS * 1e6))
    rest = m["full_dist"] - coord
    print("the rest of the distributed full refresh: %.3f s, %.0f events/s per worker (2 workers)"
          % (rest, EVENTS / rest / 2))
    print("single-node full refresh: %.0f events/s" % (EVENTS / m["full_loc"]))
finally:
    cl.stop()
