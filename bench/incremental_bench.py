#!/usr/bin/python3
"""bench/incremental_bench.py: the cost of an incremental refresh against a full
refresh of the same experiment, and both against SELECT count(*) of the source,
in one run on one cluster.

The experiment of bench/refresh_bench.sh (BENCH_UNITS enrolled units, default
1,000,000; BENCH_EVENTS events, default 10,000,000; 3 metrics of one source,
one winsorized with a CUPED lookback). Each round, alternating: count(*) of
the source, refresh(full => true), then 1% new events (at the newest times,
within the lateness allowance) and 0.1% new units, then refresh() (which must
be incremental), then refresh() with nothing new. Medians of BENCH_RUNS rounds
(default 3), for each lateness allowance (1 day, the default, and 1 hour) and
without and with an index on the time column, and with one on the unit column too
(BENCH_INDEXES, default "none brin btree btree+unit"). BENCH_VERSION creates that
installed version of the extension instead of the default one.

  PGHOST=... PGPORT=... /usr/bin/python3 bench/incremental_bench.py
The data are kept in database experiment_bench between runs when the table's
comment says it holds the requested sizes.
"""
import os
import statistics
import sys
import time

import psycopg2

UNITS = int(os.environ.get("BENCH_UNITS", "1000000"))
EVENTS = int(os.environ.get("BENCH_EVENTS", "10000000"))
RUNS = int(os.environ.get("BENCH_RUNS", "3"))
INDEXES = os.environ.get("BENCH_INDEXES", "none brin btree btree+unit").split()
DB = os.environ.get("BENCH_DB", "experiment_bench")
TAG = "units=%d events=%d v2" % (UNITS, EVENTS)

admin = psycopg2.connect(dbname="postgres")
admin.autocommit = True
acur = admin.cursor()
acur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DB,))
if not acur.fetchone():
    acur.execute('CREATE DATABASE "%s"' % DB)
conn = psycopg2.connect(dbname=DB)
conn.autocommit = True
cur = conn.cursor()


def q(sql, args=None):
    cur.execute(sql, args)
    return cur.fetchall() if cur.description else None


def timed(sql, args=None):
    t = time.perf_counter()
    q(sql, args)
    return time.perf_counter() - t


q("SET client_min_messages = warning")
q("CREATE SCHEMA IF NOT EXISTS bench")
have = q("""SELECT obj_description(oid, 'pg_class') FROM pg_class
            WHERE oid = to_regclass('bench.events')""")
if not have or have[0][0] != TAG:
    print("generating %d units and %d events ..." % (UNITS, EVENTS), file=sys.stderr)
    q("DROP EXTENSION IF EXISTS experiment CASCADE")
    q("DROP TABLE IF EXISTS bench.events, bench.units")
    q("SELECT setseed(0.7)")
    q("CREATE TABLE bench.events (user_id text, ts timestamptz, value float8)")
    q("""INSERT INTO bench.events
         SELECT 'u' || (1 + (random() * (%s - 1))::bigint),
                timestamptz '2024-12-18' + random() * interval '42 days',
                CASE WHEN random() < 0.3 THEN round((random() * 100)::numeric, 2) ELSE 0 END
         FROM generate_series(1, %s)""", (UNITS, EVENTS))
    q("CREATE TABLE bench.units AS SELECT 'u' || i AS unit_id, "
      "CASE WHEN random() < 0.5 THEN 'control' ELSE 'treatment' END AS variant, "
      "timestamptz '2025-01-01' + random() * interval '21 days' AS exposed_at "
      "FROM generate_series(1, %s) i", (UNITS,))
    q("VACUUM ANALYZE bench.events")
    q("COMMENT ON TABLE bench.events IS %s", (TAG,))
# a fresh experiment on the stored events (events added by earlier runs removed)
q("DROP EXTENSION IF EXISTS experiment CASCADE")
q("DROP INDEX IF EXISTS bench.events_ts_idx")
q("DELETE FROM bench.events WHERE ts >= '2025-01-29 01:00'")
# (the deleted rows' dead tuples lie where the new events go: vacuumed, not left to slow the
# first configuration's scans of the time index until autovacuum comes)
q("VACUUM ANALYZE bench.events")
# (BENCH_VERSION: an earlier installed version, to compare builds in one run)
if os.environ.get("BENCH_VERSION"):
    q("CREATE EXTENSION experiment VERSION %s", (os.environ["BENCH_VERSION"],))
else:
    q("CREATE EXTENSION experiment")
q("""INSERT INTO experiment.experiments (id, name, status, start_at, end_at)
     VALUES ('bench', 'incremental refresh benchmark', 'draft', '2025-01-01', '2025-02-28')""")
q("""INSERT INTO experiment.variants (experiment_id, name, allocation, is_control)
     VALUES ('bench', 'control', 0.5, true), ('bench', 'treatment', 0.5, false)""")
q("""INSERT INTO experiment.exposures (experiment_id, unit_id, variant, exposed_at)
     SELECT 'bench', unit_id, variant, exposed_at FROM bench.units""")
q("VACUUM ANALYZE experiment.exposures")
q("""INSERT INTO experiment.metrics (name, source, unit_column, time_column, value_column, aggregation, kind,
                                     "window", winsorize, cuped_lookback) VALUES
  ('bench_conversion', 'bench.events', 'user_id', 'ts', 'value', 'any', 'proportion', '7 days', NULL, NULL),
  ('bench_revenue', 'bench.events', 'user_id', 'ts', 'value', 'sum', 'mean', NULL, 0.999, '14 days'),
  ('bench_events', 'bench.events', 'user_id', 'ts', NULL, 'count', 'mean', '14 days', NULL, NULL)""")
q("""INSERT INTO experiment.experiment_metrics (experiment_id, metric, role) VALUES
  ('bench', 'bench_revenue', 'primary'), ('bench', 'bench_conversion', 'secondary'),
  ('bench', 'bench_events', 'secondary')""")
q("UPDATE experiment.experiments SET status = 'running' WHERE id = 'bench'")

clock = [q("SELECT max(ts) FROM bench.events")[0][0]]
nunit = [UNITS]


def add_new_data():
    """1% new events after the newest one (and some within the allowance before it),
    0.1% new units"""
    n = EVENTS // 100
    q("""INSERT INTO bench.events
         SELECT CASE WHEN random() < 0.1 THEN 'n' || (1 + (random() * (%s - 1))::bigint)
                     ELSE 'u' || (1 + (random() * (%s - 1))::bigint) END,
                %s::timestamptz - interval '30 minutes' + random() * interval '1 hour',
                CASE WHEN random() < 0.3 THEN round((random() * 100)::numeric, 2) ELSE 0 END
         FROM generate_series(1, %s)""", (max(UNITS // 1000, 2), UNITS, clock[0], n))
    q("""INSERT INTO experiment.exposures (experiment_id, unit_id, variant, exposed_at)
         SELECT 'bench', 'n' || i, CASE WHEN random() < 0.5 THEN 'control' ELSE 'treatment' END,
                %s::timestamptz - random() * interval '1 hour'
         FROM generate_series(%s, %s) i ON CONFLICT DO NOTHING""",
      (clock[0], 1, max(UNITS // 1000, 2)))
    clock[0] = q("SELECT max(ts) FROM bench.events")[0][0]


def mode():
    return q("SELECT mode FROM experiment.refreshes WHERE experiment_id = 'bench'")[0][0]


results = []
for index in INDEXES:
    q("DROP INDEX IF EXISTS bench.events_ts_idx")
    if index != "btree+unit":
        q("DROP INDEX IF EXISTS bench.events_unit_idx")
    if index == "brin":
        q("CREATE INDEX events_ts_idx ON bench.events USING brin (ts)")
    elif index == "btree":
        q("CREATE INDEX events_ts_idx ON bench.events (ts)")
    elif index == "btree+unit":
        # (and one that leads with the unit column: the new units' events found by their ids)
        q("CREATE INDEX events_ts_idx ON bench.events (ts)")
        q("CREATE INDEX IF NOT EXISTS events_unit_idx ON bench.events (user_id)")
    q("ANALYZE bench.events")
    for late in ("1 day", "1 hour"):
        q("UPDATE experiment.metrics SET late_events = %s WHERE source = 'bench.events'::regclass", (late,))
        counts, fulls, incs, idles = [], [], [], []
        for run in range(RUNS):
            counts.append(timed("SELECT count(*) FROM bench.events"))
            fulls.append(timed("SELECT experiment.refresh('bench', full => true)"))
            add_new_data()
            incs.append(timed("SELECT experiment.refresh('bench')"))
            if mode() != "incremental":
                sys.exit("the refresh after new data was %s, not incremental" % mode())
            idles.append(timed("SELECT experiment.refresh('bench')"))
        c, f, i, z = (statistics.median(x) for x in (counts, fulls, incs, idles))
        results.append((index, late, c, f, i, z))
        print("index %-5s late_events %-6s: count(*) %.3f s  full %.3f s (%.1fx)  incremental after 1%% new %.3f s "
              "(%.3fx full)  with nothing new %.3f s (%.3fx full)"
              % (index, late, c, f, f / c, i, i / f, z, z / f), flush=True)

print()
print("medians of %d alternating rounds, %d units, %d events (+1%% per round), 3 metrics of one source"
      % (RUNS, UNITS, EVENTS))
print("| time column index | late_events | count(*) | full refresh | incremental, 1% new | ratio | nothing new | ratio |")
print("|---|---|---|---|---|---|---|---|")
for index, late, c, f, i, z in results:
    print("| %s | %s | %.3f s | %.3f s (%.1f× count) | %.3f s | %.3f | %.3f s | %.3f |" % (index, late, c, f, f / c, i, i / f, z, z / f))
