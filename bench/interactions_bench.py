#!/usr/bin/python3
"""bench/interactions_bench.py: what interaction detection and factorial effects cost.

Two experiments over the same BENCH_UNITS units (default 200,000) and a 2 x 3
factorial experiment over them too, BENCH_EVENTS events (default 2,000,000) in one
source read by 3 metrics (a conversion, revenue winsorized at 0.99, an order count)
and a ratio of two of them, every experiment analysing all four. Times
refresh_interactions() (6 ordered pairs: one join of two tables of stored per-unit
values each, and the caps of each experiment's winsorized metric) against a full
refresh() of one experiment, and reading experiment.factorial_effects (5 effects x 4
metrics) against reading experiment.results of the factorial experiment. Medians
of BENCH_RUNS rounds (default 3). Prints, asserts nothing. BENCH_KEEP=1 keeps the
database (BENCH_DB, default experiment_interactions_bench).

  PGHOST=... PGPORT=... /usr/bin/python3 bench/interactions_bench.py
"""
import json
import os
import statistics
import time

import psycopg2

UNITS = int(os.environ.get("BENCH_UNITS", "200000"))
EVENTS = int(os.environ.get("BENCH_EVENTS", "2000000"))
RUNS = int(os.environ.get("BENCH_RUNS", "3"))
DB = os.environ.get("BENCH_DB", "experiment_interactions_bench")

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
q("""SELECT experiment.create_experiment('bench_a', '[{"name": "control", "allocation": 0.5}, {"name": "treatment", "allocation": 0.5}]')""")
q("""SELECT experiment.create_experiment('bench_b', '[{"name": "off", "allocation": 0.5}, {"name": "on", "allocation": 0.5}]')""")
q("SELECT experiment.create_experiment('bench_f', %s::jsonb)",
  (json.dumps({"factors": [{"name": "color", "levels": ["blue", "red"]}, {"name": "size", "levels": ["s", "m", "l"]}]}),))
q("""INSERT INTO experiment.metrics (name, source, unit_column, time_column, value_column, aggregation, kind,
                                    "window", winsorize, cuped_lookback) VALUES
     ('b_conv', 'bench.events', 'user_id', 'ts', NULL, 'any', 'proportion', '7 days', NULL, NULL),
     ('b_revenue', 'bench.events', 'user_id', 'ts', 'amount', 'sum', 'mean', NULL, 0.99, NULL),
     ('b_orders', 'bench.events', 'user_id', 'ts', NULL, 'count', 'mean', NULL, NULL, NULL)""")
q("""INSERT INTO experiment.metrics (name, kind, numerator, denominator, cuped_lookback)
     VALUES ('b_aov', 'ratio', 'b_revenue', 'b_orders', NULL)""")
for e in ("bench_a", "bench_b", "bench_f"):
    q("""INSERT INTO experiment.experiment_metrics (experiment_id, metric, role) VALUES
         (%s, 'b_conv', 'primary'), (%s, 'b_revenue', 'secondary'), (%s, 'b_orders', 'secondary'),
         (%s, 'b_aov', 'secondary')""", (e, e, e, e))
    q("UPDATE experiment.experiments SET analysis = 'fixed' WHERE id = %s", (e,))
    q("SELECT experiment.start(%s)", (e,))
    q("""INSERT INTO experiment.exposures (experiment_id, unit_id, variant, exposed_at)
         SELECT %s, 'u' || g, experiment.assign('u' || g, %s), now() - interval '30 days' + g * interval '1 second'
         FROM generate_series(1, %s) g""", (e, e, UNITS))
q("SELECT setseed(0.5)")
q("""INSERT INTO bench.events SELECT 'u' || (1 + floor(random() * %s)::int),
            now() - interval '25 days' + random() * interval '24 days', round((random() * 100)::numeric, 2)
     FROM generate_series(1, %s)""", (UNITS, EVENTS))
q("ANALYZE bench.events")
q("ANALYZE experiment.exposures")

refresh, interactions, effects, results = [], [], [], []
for _ in range(RUNS):
    refresh.append(timed("SELECT experiment.refresh('bench_a', full => true)"))
    q("SELECT experiment.refresh('bench_b', full => true)")
    q("SELECT experiment.refresh('bench_f', full => true)")
    interactions.append(timed("SELECT experiment.refresh_interactions()"))
    effects.append(timed("SELECT count(*) FROM experiment.factorial_effects"))
    results.append(timed("SELECT count(*) FROM experiment.results WHERE experiment_id = 'bench_f'"))
(rows,), = q("SELECT count(*) FROM experiment.interactions")
(nfx,), = q("SELECT count(*) FROM experiment.factorial_effects")
r, i, f, s = (statistics.median(x) for x in (refresh, interactions, effects, results))
print("%d units in each of 3 experiments, %d events, medians of %d runs" % (UNITS, EVENTS, RUNS))
print("full refresh() of one experiment       %.2f s" % r)
print("refresh_interactions() (%d rows)      %.2f s (%.2fx the refresh)" % (rows, i, i / r))
print("factorial_effects (%d rows)             %.3f s (%.2fx reading results of the factorial experiment, %.3f s)"
      % (nfx, f, f / s, s))
conn.close()
if os.environ.get("BENCH_KEEP") != "1":
    admin.cursor().execute('DROP DATABASE IF EXISTS "%s" WITH (FORCE)' % DB)
