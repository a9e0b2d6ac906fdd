"""Benchmark of experiment-kafka-sink: exposures from Kafka (librdkafka's mock cluster, 3
brokers, 6 partitions) into experiment.exposures, against loading the same messages
without Kafka in the same run:
  * ingest_exposures(jsonb) in batches of the sink's size, from one client (the
    extension's own bulk path, what a hand-written consumer would call);
  * COPY into experiment.exposures_staging and process_exposures_staging() per batch
    (the Kafka Connect JDBC sink path);
  * a plain COPY of the parsed rows into an unindexed table with the exposures' columns
    (the floor: no JSON, no deduplication, no checks).
Prints medians and ratios; asserts nothing.

    /usr/bin/python3 bench/kafka_sink_bench.py [--messages N] [--runs R] [--batch B]

Connects with the usual PG* environment variables (bench/moments_bench.sh shows how to
start a throwaway cluster); needs librdkafka-dev, kcat and a built sink (make kafka-sink).
"""
import argparse
import io
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone

import psycopg2

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ap = argparse.ArgumentParser()
ap.add_argument("--messages", type=int, default=500_000)
ap.add_argument("--runs", type=int, default=3)
ap.add_argument("--batch", type=int, default=5000)
args = ap.parse_args()

work = tempfile.mkdtemp(prefix="experiment-kafka-bench-")
mock_bin = os.path.join(work, "mock_cluster")
subprocess.run(["cc", "-O2", "-o", mock_bin, os.path.join(ROOT, "test/kafka/mock_cluster.c"), "-lrdkafka"], check=True)
subprocess.run(["make", "-s", "-C", ROOT, "kafka-sink"], check=True)
sink_bin = os.path.join(ROOT, "sink/experiment-kafka-sink")

DB = "experiment_kafka_bench"
admin = psycopg2.connect(dbname="postgres")
admin.autocommit = True
admin.cursor().execute("DROP DATABASE IF EXISTS %s WITH (FORCE)" % DB)
admin.cursor().execute("CREATE DATABASE %s" % DB)
conn = psycopg2.connect(dbname=DB)
conn.autocommit = True
cur = conn.cursor()
cur.execute("CREATE EXTENSION experiment CASCADE")
cur.execute("""SELECT experiment.create_experiment('kb', '[{"name": "control", "allocation": 0.5},
                                                        {"name": "treatment", "allocation": 0.5}]')""")
cur.execute("""CREATE UNLOGGED TABLE floor_copy (experiment_id text, unit_id text, variant text,
               exposed_at timestamptz, client text, event_id text)""")

rnd = random.Random(7)
distinct = int(args.messages / 1.1)
msgs = []
for i in range(distinct):
    m = {"experiment_id": "kb", "unit_id": "u%d" % i, "variant": "control" if i % 2 else "treatment",
         "exposed_at": "2026-01-%02dT%02d:%02d:00Z" % (1 + i % 28, i % 24, i % 60), "client": "ios",
         "event_id": "ev%d" % i}
    msgs.append(json.dumps(m))
msgs += [rnd.choice(msgs) for _ in range(args.messages - distinct)]
rnd.shuffle(msgs)
print("%d messages (%d distinct exposures), batches of %d, %d runs" % (len(msgs), distinct, args.batch, args.runs))

mock = subprocess.Popen([mock_bin, "3", "kb:6"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
boot = mock.stdout.readline().split()[1]
path = os.path.join(work, "msgs.txt")
with open(path, "w") as f:
    for i, m in enumerate(msgs):
        f.write("u%d\t%s\n" % (i, m))
subprocess.run(["kcat", "-P", "-b", boot, "-t", "kb", "-K", "\t", "-z", "gzip", "-X", "partitioner=murmur2_random",
                "-l", path], check=True)


def reset():
    cur.execute("TRUNCATE experiment.exposures, experiment.kafka_offsets, floor_copy")
    cur.execute("VACUUM ANALYZE experiment.exposures")


def stored():
    cur.execute("SELECT count(*) FROM experiment.exposures WHERE experiment_id = 'kb'")
    return cur.fetchone()[0]


def run_sink(k):
    reset()
    conf = os.path.join(work, "sink.conf")
    with open(conf, "w") as f:
        f.write("bootstrap.servers = %s\ngroup.id = bench%d\nexposures.topics = kb\nbatch.size = %d\n"
                "batch.linger.ms = 200\nsummary.interval.s = 0\nkafka.session.timeout.ms = 6000\n"
                "kafka.heartbeat.interval.ms = 500\n" % (boot, k, args.batch))
    log = os.path.join(work, "sink%d.log" % k)
    p = subprocess.Popen([sink_bin, "-c", conf], stderr=open(log, "w"), env=dict(os.environ, PGDATABASE=DB))
    while True:
        cur.execute("SELECT coalesce(sum(next_offset), 0), max(updated_at) FROM experiment.kafka_offsets "
                    "WHERE consumer_group = %s", ("bench%d" % k,))
        n, last = cur.fetchone()
        if n == len(msgs):
            break
        if p.poll() is not None:
            sys.exit("the sink exited: %s" % open(log).read()[-2000:])
        time.sleep(0.05)
    p.terminate()
    p.wait()
    # from the assignment (after the mock's group join delay) to the last batch's commit
    first = min(re.findall(r"^(\S+) experiment-kafka-sink info: assigned", open(log).read(), re.M))
    start = datetime.strptime(first, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
    assert stored() == distinct
    return (last - start).total_seconds()


def run_ingest():
    reset()
    t = time.time()
    for i in range(0, len(msgs), args.batch):
        cur.execute("SELECT * FROM experiment.ingest_exposures(%s::jsonb)", ("[" + ",".join(msgs[i:i + args.batch]) + "]",))
    dt = time.time() - t
    assert stored() == distinct
    return dt


def run_staging():
    reset()
    t = time.time()
    for i in range(0, len(msgs), args.batch):
        buf = io.StringIO()
        for m in msgs[i:i + args.batch]:
            o = json.loads(m)
            buf.write("\t".join([o["experiment_id"], o["unit_id"], o["variant"], o["exposed_at"], o["client"],
                                 o["event_id"]]) + "\n")
        buf.seek(0)
        cur.execute("BEGIN")
        cur.copy_expert("COPY experiment.exposures_staging (experiment_id, unit_id, variant, exposed_at, client, "
                        "event_id) FROM STDIN", buf)
        cur.execute("SELECT * FROM experiment.process_exposures_staging()")
        cur.execute("COMMIT")
    dt = time.time() - t
    assert stored() == distinct
    return dt


rows = io.StringIO()
for m in msgs:
    o = json.loads(m)
    rows.write("\t".join([o["experiment_id"], o["unit_id"], o["variant"], o["exposed_at"], o["client"],
                          o["event_id"]]) + "\n")
rows = rows.getvalue()


def run_floor():
    reset()
    t = time.time()
    cur.copy_from(io.StringIO(rows), "floor_copy")
    return time.time() - t


res = {"sink": [], "ingest_exposures": [], "staging": [], "copy_floor": []}
for k in range(args.runs):
    res["sink"].append(run_sink(k))
    res["ingest_exposures"].append(run_ingest())
    res["staging"].append(run_staging())
    res["copy_floor"].append(run_floor())
mock.stdin.write("quit\n")
mock.stdin.flush()
mock.wait()
shutil.rmtree(work, ignore_errors=True)

med = {k: statistics.median(v) for k, v in res.items()}
print("%-18s %9s %12s %14s" % ("path", "median s", "messages/s", "ratio to sink"))
for k in ("sink", "ingest_exposures", "staging", "copy_floor"):
    print("%-18s %9.2f %12.0f %14.2f" % (k, med[k], len(msgs) / med[k], med[k] / med["sink"]))
print("all runs: %s" % {k: ["%.2f" % x for x in v] for k, v in res.items()})
