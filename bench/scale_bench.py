#!/usr/bin/python3
"""bench/scale_bench.py: the cost and the memory of a full experiment.refresh() at
several sizes, against SELECT count(*) of the source in the same run
(doc/scaling.md, "Parallel and bounded-memory full refresh").

The experiment of bench/refresh_bench.sh at each size in BENCH_SIZES (enrolled
units, default "1000000 2000000 4000000"; 10 events per unit over 42 days, one
source table, 3 metrics: a 7-day conversion, revenue with a 0.999 cap and a 14-day
CUPED lookback, a 14-day count). For each size, alternating rounds (BENCH_RUNS,
default 3) of

  * SELECT count(*) of the source, serial (max_parallel_workers_per_gather = 0)
    and with the cluster's parallel workers (the plan says whether it ran parallel);
  * refresh(full => true) for each configuration in BENCH_CONFIGS (default
    "serial parallel bounded"): serial = no parallel workers and
    experiment.refresh_memory = 0 (no bound); parallel = 2 parallel workers for
    the scans, no bound; bounded = 2 parallel workers and refresh_memory =
    BENCH_MEMORY (default 256MB);
BENCH_VERSION creates that installed version of the extension instead of the
default one;

and prints the medians, the ratio of each refresh to the serial count(*), the
number of unit-hash partitions the refresh used (from experiment.refreshes), and
the peak private memory of the backend during the refresh: the largest RssAnon of
/proc/<backend pid>/status, sampled every 5 ms (the backend's shared buffers are
not private memory and are left out). Must run as a user that may read the
backend's /proc entry (root, or postgres).

  PGHOST=... PGPORT=... /usr/bin/python3 bench/scale_bench.py

Each size's data live in database experiment_scale_<units>; the events and units
are reused only when the source table's comment carries this script's generator
tag for that size (seed, sizes and generator version), never because a row count
matches; the extension and the experiment are created afresh at every run.
"""
import os
import statistics
import sys
import threading
import time

import psycopg2

SIZES = [int(x) for x in os.environ.get("BENCH_SIZES", "1000000 2000000 4000000").split()]
RUNS = int(os.environ.get("BENCH_RUNS", "3"))
CONFIGS = os.environ.get("BENCH_CONFIGS", "serial parallel bounded").split()
MEMORY = os.environ.get("BENCH_MEMORY", "256MB")
EVENTS_PER_UNIT = 10
GENERATOR = "scale_bench generator 1 seed 0.7"


def connect(db):
    c = psycopg2.connect(dbname=db)
    c.autocommit = True
    return c


def ensure_data(units):
    """database experiment_scale_<units> with the experiment 'bench'; generated unless tagged"""
    db = "experiment_scale_%d" % units
    events = units * EVENTS_PER_UNIT
    tag = "%s units=%d events=%d" % (GENERATOR, units, events)
    admin = connect("postgres")
    acur = admin.cursor()
    acur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db,))
    if not acur.fetchone():
        acur.execute('CREATE DATABASE "%s"' % db)
    admin.close()
    conn = connect(db)
    cur = conn.cursor()
    cur.execute("SET client_min_messages = warning")
    cur.execute("""SELECT obj_description(c.oid) FROM pg_class c WHERE c.oid = to_regclass('bench.events')""")
    have = cur.fetchone()
    if not have or have[0] != tag:
        print("generating %d units and %d events in %s ..." % (units, events, db), file=sys.stderr, flush=True)
        cur.execute("DROP EXTENSION IF EXISTS experiment CASCADE")
        cur.execute("DROP SCHEMA IF EXISTS bench CASCADE")
        cur.execute("CREATE SCHEMA bench")
        cur.execute("SELECT setseed(0.7)")
        cur.execute("CREATE TABLE bench.events (user_id text, ts timestamptz, value float8)")
        cur.execute("""INSERT INTO bench.events
                       SELECT 'u' || (1 + (random() * (%s - 1))::bigint),
                              timestamptz '2024-12-18' + random() * interval '42 days',
                              CASE WHEN random() < 0.3 THEN round((random() * 100)::numeric, 2) ELSE 0 END
                       FROM generate_series(1, %s)""", (units, events))
        cur.execute("""CREATE TABLE bench.units AS SELECT 'u' || i AS unit_id,
                              CASE WHEN random() < 0.5 THEN 'control' ELSE 'treatment' END AS variant,
                              timestamptz '2025-01-01' + random() * interval '21 days' AS exposed_at
                       FROM generate_series(1, %s) i""", (units,))
        cur.execute("VACUUM ANALYZE bench.events")
        cur.execute("COMMENT ON TABLE bench.events IS %s", (tag,))
    # the extension as installed now, on the stored events and units
    cur.execute("DROP EXTENSION IF EXISTS experiment CASCADE")
    # (BENCH_VERSION: an earlier installed version, to compare builds in one run)
    if os.environ.get("BENCH_VERSION"):
        cur.execute("CREATE EXTENSION experiment VERSION %s", (os.environ["BENCH_VERSION"],))
    else:
        cur.execute("CREATE EXTENSION experiment")
    cur.execute("""INSERT INTO experiment.experiments (id, name, status, start_at, end_at)
                   VALUES ('bench', 'scale benchmark', 'draft', '2025-01-01', '2025-01-29')""")
    cur.execute("""INSERT INTO experiment.variants (experiment_id, name, allocation, is_control)
                   VALUES ('bench', 'control', 0.5, true), ('bench', 'treatment', 0.5, false)""")
    cur.execute("""INSERT INTO experiment.exposures (experiment_id, unit_id, variant, exposed_at)
                   SELECT 'bench', unit_id, variant, exposed_at FROM bench.units""")
    cur.execute("VACUUM ANALYZE experiment.exposures")
    cur.execute("""INSERT INTO experiment.metrics (name, source, unit_column, time_column, value_column,
                                                   aggregation, kind, "window", winsorize, cuped_lookback) VALUES
      ('bench_conversion', 'bench.events', 'user_id', 'ts', 'value', 'any', 'proportion', '7 days', NULL, NULL),
      ('bench_revenue', 'bench.events', 'user_id', 'ts', 'value', 'sum', 'mean', NULL, 0.999, '14 days'),
      ('bench_events', 'bench.events', 'user_id', 'ts', NULL, 'count', 'mean', '14 days', NULL, NULL)""")
    cur.execute("""INSERT INTO experiment.experiment_metrics (experiment_id, metric, role) VALUES
      ('bench', 'bench_revenue', 'primary'), ('bench', 'bench_conversion', 'secondary'),
      ('bench', 'bench_events', 'secondary')""")
    cur.execute("UPDATE experiment.experiments SET status = 'running' WHERE id = 'bench'")
    return conn


class PeakAnon:
    """the largest RssAnon of a process, sampled every 5 ms while running"""

    def __init__(self, pid):
        self.path = "/proc/%d/status" % pid
        self.peak = 0
        self.stop = False
        self.thread = threading.Thread(target=self.run)

    def sample(self):
        try:
            with open(self.path) as f:
                for line in f:
                    if line.startswith("RssAnon:"):
                        self.peak = max(self.peak, int(line.split()[1]))
        except OSError:
            pass

    def run(self):
        while not self.stop:
            self.sample()
            time.sleep(0.005)

    def __enter__(self):
        self.sample()
        self.thread.start()
        return self

    def __exit__(self, *a):
        self.stop = True
        self.thread.join()


def config_sql(name):
    if name == "serial":
        return ["SET max_parallel_workers_per_gather = 0", "SET experiment.refresh_memory = 0"]
    if name == "parallel":
        return ["SET max_parallel_workers_per_gather = 2", "SET experiment.refresh_memory = 0"]
    if name == "bounded":
        return ["SET max_parallel_workers_per_gather = 2", "SET experiment.refresh_memory = '%s'" % MEMORY]
    sys.exit("unknown configuration %r (serial, parallel, bounded)" % name)


def main():
    table = []
    for units in SIZES:
        conn = ensure_data(units)
        cur = conn.cursor()
        cur.execute("SELECT pg_backend_pid()")
        pid = cur.fetchone()[0]
        cur.execute("SET max_parallel_workers_per_gather = 2")
        cur.execute("EXPLAIN (COSTS OFF) SELECT count(*) FROM bench.events")
        count_parallel = any("Gather" in r[0] for r in cur.fetchall())
        times = {"count serial": [], "count parallel": []}
        peaks = {}
        parts = {}
        for c in CONFIGS:
            times[c] = []
            peaks[c] = []
        for run in range(RUNS):
            for label, workers in (("count serial", 0), ("count parallel", 2)):
                cur.execute("SET max_parallel_workers_per_gather = %d" % workers)
                t = time.perf_counter()
                cur.execute("SELECT count(*) FROM bench.events")
                cur.fetchall()
                times[label].append(time.perf_counter() - t)
            for c in CONFIGS:
                for s in config_sql(c):
                    cur.execute(s)
                # a fresh backend each time: the peak is this refresh's, not an earlier one's
                conn.close()
                conn = connect("experiment_scale_%d" % units)
                cur = conn.cursor()
                cur.execute("SELECT pg_backend_pid()")
                pid = cur.fetchone()[0]
                for s in config_sql(c):
                    cur.execute(s)
                with PeakAnon(pid) as pk:
                    t = time.perf_counter()
                    cur.execute("SELECT experiment.refresh('bench', full => true)")
                    times[c].append(time.perf_counter() - t)
                peaks[c].append(pk.peak / 1024.0)
                cur.execute("SELECT unit_partitions FROM experiment.refreshes WHERE experiment_id = 'bench'")
                parts[c] = cur.fetchone()[0]
        med = {k: statistics.median(v) for k, v in times.items()}
        base = med["count serial"]
        print("%d units, %d events: count(*) serial %.3f s, with 2 workers %.3f s (plan %s)"
              % (units, units * EVENTS_PER_UNIT, base, med["count parallel"],
                 "parallel" if count_parallel else "serial"), flush=True)
        for c in CONFIGS:
            print("  refresh(full) %-8s %.3f s = %.1fx count(*) serial, %.1fx count(*) parallel; "
                  "%d partition(s); peak private memory %.0f MB"
                  % (c, med[c], med[c] / base, med[c] / med["count parallel"], parts[c], max(peaks[c])), flush=True)
            table.append((units, c, base, med["count parallel"], med[c], parts[c], max(peaks[c])))
        conn.close()
    print()
    print("medians of %d alternating rounds; memory: the largest RssAnon of the backend (its peak)" % RUNS)
    print("| units | events | configuration | count(*) serial | count(*) 2 workers | full refresh | ratio to serial count | partitions | peak private memory |")
    print("|---|---|---|---|---|---|---|---|---|")
    for units, c, base, par, r, p, m in table:
        print("| %d | %d | %s | %.3f s | %.3f s | %.2f s | %.1f× | %d | %.0f MB |"
              % (units, units * EVENTS_PER_UNIT, c, base, par, r, r / base, p, m))


if __name__ == "__main__":
    main()
