#!/usr/bin/python3
"""bench/dimensions_bench.py: what dimension breakdowns add to a refresh.

One experiment of BENCH_UNITS enrolled units (default 200,000) and BENCH_EVENTS
events (default 2,000,000) in one source read by 3 metrics (a conversion, revenue
winsorized at 0.99 with a CUPED lookback, an order count) and a ratio of two of
them. Full and incremental refreshes (1% new events, 0.1% new units) without
dimensions, with 3 dimensions (client: 4 values; app_version: 12 values, top 10;
country from attributes: 40 values, top 10), with the same 3 and caps_per_value on
country, and with country as stratify_by. Medians of BENCH_RUNS rounds (default 3);
the ratios are to the same refresh without dimensions. Prints, asserts nothing.
BENCH_KEEP=1 keeps the database (BENCH_DB, default experiment_dimensions_bench).

  PGHOST=... PGPORT=... /usr/bin/python3 bench/dimensions_bench.py
"""
import os
import statistics
import time

import psycopg2

UNITS = int(os.environ.get("BENCH_UNITS", "200000"))
EVENTS = int(os.environ.get("BENCH_EVENTS", "2000000"))
RUNS = int(os.environ.get("BENCH_RUNS", "3"))
DB = os.environ.get("BENCH_DB", "experiment_dimensions_bench")

admin = psycopg2.connect(dbname="postgres")
admin.autocommit = True
admin.cursor().execute('DROP DATABASE IF EXISTS "%s" WITH (FORCE)' % DB)
admin.cursor().execute('CREATE DATABASE "%s"' % DB)
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
q("CREATE EXTENSION experiment")
q("CREATE SCHEMA bench")
q("CREATE TABLE bench.events (user_id text, ts timestamptz, amount float8)")
q("""INSERT INTO experiment.experiments (id, status, start_at, end_at, analysis)
     VALUES ('bench', 'draft', '2025-01-01', '2025-03-01', 'fixed')""")
q("""INSERT INTO experiment.variants (experiment_id, name, allocation, is_control)
     VALUES ('bench', 'control', 0.5, true), ('bench', 'treatment', 0.5, false)""")
q("""INSERT INTO experiment.metrics (name, source, unit_column, time_column, value_column, aggregation, kind,
                                    "window", winsorize, cuped_lookback) VALUES
     ('b_conv', 'bench.events', 'user_id', 'ts', NULL, 'any', 'proportion', '7 days', NULL, NULL),
     ('b_revenue', 'bench.events', 'user_id', 'ts', 'amount', 'sum', 'mean', NULL, 0.99, '14 days'),
     ('b_orders', 'bench.events', 'user_id', 'ts', NULL, 'count', 'mean', NULL, NULL, NULL)""")
q("""INSERT INTO experiment.metrics (name, kind, numerator, denominator, cuped_lookback)
     VALUES ('b_aov', 'ratio', 'b_revenue', 'b_orders', NULL)""")
q("""INSERT INTO experiment.experiment_metrics (experiment_id, metric, role) VALUES
     ('bench', 'b_conv', 'primary'), ('bench', 'b_revenue', 'secondary'), ('bench', 'b_orders', 'secondary'),
     ('bench', 'b_aov', 'secondary')""")
q("UPDATE experiment.experiments SET status = 'running' WHERE id = 'bench'")
q("SELECT setseed(0.5)")
q("""INSERT INTO experiment.exposures (experiment_id, unit_id, variant, exposed_at, client, app_version, attributes)
     SELECT 'bench', 'u' || g, CASE WHEN random() < 0.5 THEN 'control' ELSE 'treatment' END,
            '2025-01-01'::timestamptz + random() * interval '30 days',
            (ARRAY['ios', 'android', 'web', NULL])[1 + (g %% 4)], (g %% 12)::text,
            jsonb_build_object('country', 'c' || (g %% 40))
     FROM generate_series(1, %s) g""", (UNITS,))
q("""INSERT INTO bench.events SELECT 'u' || (1 + floor(random() * %s)::int),
            '2024-12-20'::timestamptz + random() * interval '55 days', round((random() * 100)::numeric, 2)
     FROM generate_series(1, %s)""", (UNITS, EVENTS))
q("CREATE INDEX ON bench.events USING brin (ts)")
q("ANALYZE bench.events")
q("ANALYZE experiment.exposures")

DIMS = """INSERT INTO experiment.dimensions (experiment_id, name, attribute, attribute_key, caps_per_value) VALUES
          ('bench', 'client', 'client', NULL, false), ('bench', 'version', 'app_version', NULL, false),
          ('bench', 'country', 'attributes', 'country', %s)"""
new_units = [0]


def grow():
    """1% new events at the newest times, 0.1% new units"""
    n = new_units[0]
    q("""INSERT INTO experiment.exposures (experiment_id, unit_id, variant, exposed_at, client, app_version, attributes)
         SELECT 'bench', 'n' || (%s + g), CASE WHEN random() < 0.5 THEN 'control' ELSE 'treatment' END,
                '2025-01-30'::timestamptz + random() * interval '1 day', 'ios', '1', '{"country": "c1"}'
         FROM generate_series(1, %s) g""", (n, UNITS // 1000))
    new_units[0] = n + UNITS // 1000
    q("""INSERT INTO bench.events SELECT 'u' || (1 + floor(random() * %s)::int),
                '2025-02-13'::timestamptz + random() * interval '6 hours', 10
         FROM generate_series(1, %s)""", (UNITS, EVENTS // 100))


def setup(kind):
    q("UPDATE experiment.experiments SET stratify_by = NULL WHERE id = 'bench'")
    q("DELETE FROM experiment.dimensions WHERE experiment_id = 'bench'")
    if kind != "none":
        q(DIMS, (kind == "caps_per_value",))
    if kind == "stratify_by":
        q("UPDATE experiment.experiments SET stratify_by = 'country' WHERE id = 'bench'")


KINDS = ["none", "3 dimensions", "caps_per_value", "stratify_by"]
full = {k: [] for k in KINDS}
incr = {k: [] for k in KINDS}
for _ in range(RUNS):
    for k in KINDS:
        setup(k)
        full[k].append(timed("SELECT experiment.refresh('bench', full => true)"))
        grow()
        incr[k].append(timed("SELECT experiment.refresh('bench')"))
        (mode,), = q("SELECT mode FROM experiment.refreshes WHERE experiment_id = 'bench'")
        assert mode == "incremental", mode
print("%d units, %d events, medians of %d runs" % (UNITS, EVENTS, RUNS))
base_f, base_i = statistics.median(full["none"]), statistics.median(incr["none"])
for k in KINDS:
    f, i = statistics.median(full[k]), statistics.median(incr[k])
    print("%-16s full %.2f s (%.2fx)   incremental %.2f s (%.2fx)" % (k, f, f / base_f, i, i / base_i))
conn.close()
if os.environ.get("BENCH_KEEP") != "1":
    admin.cursor().execute('DROP DATABASE IF EXISTS "%s" WITH (FORCE)' % DB)
