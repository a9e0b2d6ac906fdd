"""experiment-kafka-sink against a real Kafka protocol: librdkafka's mock
cluster (test/kafka/mock_cluster.c, 3 brokers, topics of 6 partitions) in its
own process, with independent producers (kcat, and kafkajs from npm through
test/kafka/produce.js).

1. 200,000 distinct exposures, 20% redelivered (half of them with another key,
   so on another partition), 1% malformed: stored = the distinct valid ones,
   exactly; every malformed message in the quarantine with its partition and
   offset; the stored offsets are the partitions' ends.
2. The sink killed with SIGKILL at random moments, once while it waits between
   its COPY and its COMMIT, and restarted: the same exact counts.
3. Two sinks in one consumer group, one killed: the other takes its
   partitions over; the same exact counts.
4. A broker down and up again, partition leaders moved, and injected request
   errors (Fetch, OffsetCommit, Heartbeat) while consuming: the same counts.
5. Metric events into a user table through the column mapping (a nested
   field, redeliveries deduplicated by the table's unique key, malformed ones
   dead-lettered), then refresh() gives the same results as the same events
   loaded with COPY.
6. The command line: --help, --version, bad settings (exit 2, naming the
   setting), --check against a missing table or topic (exit 3).

Skips (exit 77) where librdkafka's mock header, kcat, node or npm is missing.
"""
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
import exptest  # noqa: E402
from exptest import Checker, connect, fresh_db, skip  # noqa: E402

ROOT = exptest.PROJECT_ROOT
KDIR = os.path.join(ROOT, "test", "kafka")
SINK = os.path.join(ROOT, "sink", "experiment-kafka-sink")
KAFKAJS = "2.2.4"
NPM_CACHE = os.path.join(tempfile.gettempdir(), "experiment-npm-kafka-%d" % os.getuid())
DB = "exp_kafka_sink"
PG_BINDIR = os.environ.get("PG_BINDIR", "/usr/lib/postgresql/15/bin")

ck = Checker("test_kafka_sink")
rnd = random.Random(20261201)
work = tempfile.mkdtemp(prefix="experiment-kafka-")
procs = []


def log(msg):
    print("-- %s" % msg, flush=True)


# ---- prerequisites ------------------------------------------------------------

if not os.path.exists("/usr/include/librdkafka/rdkafka_mock.h"):
    skip("librdkafka's mock cluster header (rdkafka_mock.h, Debian's librdkafka-dev) is not installed")
for tool in ("kcat", "node", "npm", "cc"):
    if shutil.which(tool) is None:
        skip("%s is not installed" % tool)

r = subprocess.run(["make", "-s", "-C", ROOT, "PG_CONFIG=%s/pg_config" % PG_BINDIR, "kafka-sink"],
                   capture_output=True, text=True)
if r.returncode != 0:
    print(r.stdout, r.stderr)
    sys.exit("make kafka-sink failed")
MOCK = os.path.join(work, "mock_cluster")
subprocess.run(["cc", "-O2", "-Wall", "-Wextra", "-Werror", "-o", MOCK,
                os.path.join(KDIR, "mock_cluster.c"), "-lrdkafka"], check=True)


def node_path():
    """NODE_PATH where kafkajs KAFKAJS resolves (installed into a cache when missing)."""
    for base in (os.path.join(KDIR, "node_modules"), os.path.join(NPM_CACHE, "node_modules")):
        pkg = os.path.join(base, "kafkajs", "package.json")
        if os.path.exists(pkg) and json.load(open(pkg)).get("version") == KAFKAJS:
            return base
    os.makedirs(NPM_CACHE, exist_ok=True)
    r = subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--prefix", NPM_CACHE, "kafkajs@" + KAFKAJS],
                       capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        skip("npm install kafkajs@%s failed: %s" % (KAFKAJS, r.stderr[-300:]))
    return os.path.join(NPM_CACHE, "node_modules")


NODE_PATH = node_path()

# ---- the mock cluster ------------------------------------------------------------

TOPICS = ["x_main", "x_kill", "x_pair", "x_chaos", "orders", "x_iso", "e_iso", "x_ret"]
mock = subprocess.Popen([MOCK, "3"] + ["%s:6" % t for t in TOPICS], stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE, stderr=open(os.path.join(work, "mock.err"), "w"), text=True)
procs.append(mock)
line = mock.stdout.readline().split()
if len(line) != 2 or line[0] != "bootstrap":
    sys.exit("mock_cluster did not start: %r" % line)
BOOT = line[1]
log("mock cluster at %s" % BOOT)


def mock_cmd(cmd):
    mock.stdin.write(cmd + "\n")
    mock.stdin.flush()
    answer = mock.stdout.readline().strip()
    ck.check(answer == "ok", "mock command %r: %r" % (cmd, answer))


def cleanup():
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()
    if ck.failed:
        for name in sorted(os.listdir(work)):
            if name.endswith(".log"):
                with open(os.path.join(work, name)) as f:
                    text = f.read().splitlines()
                print("== last lines of %s" % name)
                print("\n".join(text[-15:]))
    if ck.failed and os.environ.get("EXP_KEEP_KAFKA_LOGS"):
        print("logs kept in %s" % work)
    else:
        shutil.rmtree(work, ignore_errors=True)


# ---- the database ------------------------------------------------------------

conn = fresh_db(DB)
cur = conn.cursor()


def q(sql, args=None):
    cur.execute(sql, args)
    return cur.fetchall() if cur.description else None


EXPERIMENTS = {"x_main": "k_main", "x_kill": "k_kill", "x_pair": "k_pair", "x_chaos": "k_chaos", "orders": "k_orders",
               "x_iso": "k_iso", "x_ret": "k_ret"}
for e in EXPERIMENTS.values():
    q("""SELECT experiment.create_experiment(%s, '[{"name": "control", "allocation": 0.5},
                                                {"name": "treatment", "allocation": 0.5}]')""", (e,))
# the sink runs as an experiment_ingest member, not as a superuser
q("SELECT * FROM experiment.setup_roles()")
q("DROP ROLE IF EXISTS kafka_sink_test")
q("CREATE ROLE kafka_sink_test LOGIN IN ROLE experiment_ingest")
dsn = "dbname=%s user=kafka_sink_test" % DB
for k in ("PGHOST", "PGPORT"):
    if os.environ.get(k):
        dsn += " %s=%s" % (k.lower().replace("pg", ""), os.environ[k])


def sink_config(name, group, lines):
    """a configuration file: the test's defaults, and lines ("key = value") in their place"""
    settings = {"database": dsn, "bootstrap.servers": BOOT, "group.id": group, "batch.size": "2000",
                "batch.linger.ms": "100", "summary.interval.s": "5", "kafka.session.timeout.ms": "6000",
                "kafka.heartbeat.interval.ms": "500", "kafka.topic.metadata.refresh.interval.ms": "1000"}
    extra, overridden = [], set()
    for ln in lines:
        k, _, v = ln.partition("=")
        if k.strip() in settings and k.strip() not in overridden:
            settings[k.strip()] = v.strip()
            overridden.add(k.strip())
        else:
            extra.append(ln)
    path = os.path.join(work, name + ".conf")
    with open(path, "w") as f:
        f.write("# test configuration\n" + "".join("%s = %s\n" % kv for kv in settings.items())
                + "".join(ln + "\n" for ln in extra))
    return path


def start_sink(conf, tag):
    err = open(os.path.join(work, "%s.log" % tag), "a")
    p = subprocess.Popen([SINK, "--config", conf], stdout=err, stderr=err)
    procs.append(p)
    return p


def sink_log(tag):
    with open(os.path.join(work, "%s.log" % tag)) as f:
        return f.read()


# ---- messages ------------------------------------------------------------

MALFORMED = [
    (b"not json at all", "not JSON"),
    (b'{"experiment_id": "EXP", "unit_id": "x"', "not JSON"),
    (b"[1, 2, 3]", "not a JSON object"),
    (b"", "not JSON"),
    (b"\xff\xfe not utf-8 \xc3", "not JSON"),
    (b'{"experiment_id": "EXP", "variant": "control", "exposed_at": "2026-01-01T00:00:00Z"}', "missing unit_id"),
    (b'{"experiment_id": "EXP", "unit_id": "m", "variant": "purple", "exposed_at": "2026-01-01T00:00:00Z"}',
     "unknown variant"),
    (b'{"experiment_id": "no-such-experiment", "unit_id": "m", "variant": "control", "exposed_at": "2026-01-01"}',
     "unknown experiment"),
    (b'{"experiment_id": "EXP", "unit_id": "m", "variant": "control", "exposed_at": "yesterday at noon"}',
     "invalid exposed_at"),
]


def exposure_messages(topic, distinct, dup_share=0.20, bad_share=0.01):
    """(lines, expected): KEY<TAB>VALUE lines with redeliveries and malformed ones
    mixed in, and the expected distinct (unit_id, event_id) set and malformed count."""
    exp = EXPERIMENTS[topic]
    valid = []
    for i in range(distinct):
        u = "u%d" % (i // 2)   # two exposures per unit, at different times
        m = {"experiment_id": exp, "unit_id": u, "variant": "control" if (i // 2) % 2 else "treatment",
             "exposed_at": "2026-01-%02dT%02d:00:00Z" % (1 + i % 28, i % 24), "event_id": "%s-ev%d" % (topic, i),
             "client": "ios" if i % 3 else "web"}
        valid.append((u.encode(), json.dumps(m).encode()))
    out = list(valid)
    for _ in range(int(distinct * dup_share)):
        key, value = rnd.choice(valid)
        if rnd.random() < 0.5:
            key = b"other-" + key          # another key: most likely another partition
        out.append((key, value))
    rnd.shuffle(out)
    nbad = int(len(out) * bad_share)
    bad = []
    for i in range(nbad):
        text, reason = MALFORMED[i % len(MALFORMED)]
        bad.append((b"bad%d" % i, text.replace(b"EXP", exp.encode()), reason))
    for key, text, reason in bad:
        out.insert(rnd.randrange(len(out) + 1), (key, text))
    lines = [k + b"\t" + v for k, v in out]
    return lines, {(json.loads(v)["unit_id"], json.loads(v)["event_id"]) for _, v in valid}, bad


def produce(topic, lines, tool):
    path = os.path.join(work, "%s-%d.txt" % (topic, rnd.randrange(10 ** 9)))
    with open(path, "wb") as f:
        for ln in lines:
            f.write(ln + b"\n")
    t = time.time()
    if tool == "kcat":
        r = subprocess.run(["kcat", "-P", "-b", BOOT, "-t", topic, "-K", "\t", "-z", "gzip",
                            "-X", "partitioner=murmur2_random",
                            "-X", "message.timeout.ms=60000", "-l", path], capture_output=True, text=True)
    else:
        r = subprocess.run(["node", os.path.join(KDIR, "produce.js"), BOOT, topic, path],
                           capture_output=True, text=True, env=dict(os.environ, NODE_PATH=NODE_PATH))
    if r.returncode != 0:
        sys.exit("%s could not produce to %s: %s %s" % (tool, topic, r.stdout, r.stderr))
    log("%s produced %d messages to %s in %.1f s" % (tool, len(lines), topic, time.time() - t))


def produce_split(topic, lines):
    """The first quarter with kafkajs, the rest with kcat."""
    k = len(lines) // 4
    produce(topic, lines[:k], "kafkajs")
    produce(topic, lines[k:], "kcat")


def positions(topic):
    """{payload bytes: [(partition, offset), ...]} of every message of topic, read back with kcat."""
    r = subprocess.run(["kcat", "-C", "-b", BOOT, "-t", topic, "-e", "-q", "-f", "%p %o %S\\n%s\\n"],
                       capture_output=True)
    out, pos = {}, []
    data = r.stdout
    i = 0
    while i < len(data):
        nl = data.index(b"\n", i)
        p, o, size = data[i:nl].split()
        size = int(size)
        size = max(size, 0)   # -1 for a NULL value
        value = data[nl + 1: nl + 1 + size]
        out.setdefault(value, []).append((int(p), int(o)))
        pos.append((int(p), int(o)))
        i = nl + 1 + size + 1
    return out, len(pos)


def wait_done(group, topic, total, procs_alive=(), timeout=300):
    """Wait until the stored next offsets of group on topic add up to total."""
    t = time.time()
    got = None
    while time.time() - t < timeout:
        got = q("SELECT coalesce(sum(next_offset), 0) FROM experiment.kafka_offsets "
                "WHERE consumer_group = %s AND topic = %s", (group, topic))[0][0]
        if got == total:
            log("group %s stored all %d offsets of %s in %.1f s" % (group, total, topic, time.time() - t))
            return True
        for p in procs_alive:
            if p.poll() is not None:
                ck.check(False, "a sink exited with %s while %s was consumed" % (p.returncode, topic))
                return False
        time.sleep(0.2)
    ck.check(False, "group %s on %s: stored offsets add up to %s, want %d after %d s" % (group, topic, got, total, timeout))
    return False


def stop(p):
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=60)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    return p.returncode


def check_exposures(topic, expected, bad, what):
    exp = EXPERIMENTS[topic]
    rows = q("SELECT unit_id, event_id FROM experiment.exposures WHERE experiment_id = %s", (exp,))
    stored = set(rows)
    ck.check(len(rows) == len(expected), "%s: %d exposures stored, want %d" % (what, len(rows), len(expected)))
    ck.check(stored == expected, "%s: stored exposures differ from the distinct valid ones: %d missing, %d extra"
             % (what, len(expected - stored), len(stored - expected)))
    # every malformed message in the quarantine, once, at its partition and offset
    where, n_total = positions(topic)
    want = {}
    for _, text, reason in bad:
        for pos in where.get(text, []):
            want[pos] = reason
    got = q("SELECT kafka_partition, kafka_offset, reason, count(*) OVER (PARTITION BY kafka_partition, kafka_offset) "
            "FROM experiment.exposures_quarantine WHERE kafka_topic = %s", (topic,))
    ck.check(len(got) == len(bad), "%s: %d messages quarantined, want %d" % (what, len(got), len(bad)))
    ck.check(all(g[3] == 1 for g in got), "%s: a message is quarantined twice" % what)
    ck.check({(g[0], g[1]): g[2] for g in got} == want,
             "%s: quarantined positions and reasons differ from those of the malformed messages" % what)
    return n_total


try:
    # ---- 6. the command line ------------------------------------------------------
    r = subprocess.run([SINK, "--help"], capture_output=True, text=True)
    ck.check(r.returncode == 0 and "exposures.topics" in r.stdout and "Exit codes" in r.stdout,
             "--help: %d %r" % (r.returncode, r.stdout[:200]))
    r = subprocess.run([SINK, "--version"], capture_output=True, text=True)
    ck.check(r.returncode == 0 and r.stdout.startswith("experiment-kafka-sink "), "--version: %r" % r.stdout)
    r = subprocess.run([SINK, "--bogus"], capture_output=True, text=True)
    ck.check(r.returncode == 2, "an unknown option exits 2, got %d" % r.returncode)
    bad_conf = sink_config("bad1", "g", ["batch.size = lots"])
    r = subprocess.run([SINK, "-c", bad_conf], capture_output=True, text=True)
    ck.check(r.returncode == 2 and "batch.size" in r.stderr and "bad1.conf:" in r.stderr,
             "a bad batch.size exits 2 naming it and the line: %d %r" % (r.returncode, r.stderr))
    bad_conf = sink_config("bad2", "g", ["exposure.topics = x_main"])
    r = subprocess.run([SINK, "-c", bad_conf], capture_output=True, text=True)
    ck.check(r.returncode == 2 and "unknown setting \"exposure.topics\"" in r.stderr,
             "an unknown setting exits 2 naming it: %d %r" % (r.returncode, r.stderr))
    bad_conf = sink_config("bad3", "g", ["exposures.topics = x_main", "kafka.enable.auto.commit = true"])
    r = subprocess.run([SINK, "-c", bad_conf], capture_output=True, text=True)
    ck.check(r.returncode == 2 and "enable.auto.commit" in r.stderr, "auto commit is refused: %r" % r.stderr)
    bad_conf = sink_config("bad4", "g", ["events.orders.table = public.no_such_table",
                                         "events.orders.columns = user_id"])
    r = subprocess.run([SINK, "-c", bad_conf, "--check"], capture_output=True, text=True)
    ck.check(r.returncode == 3 and "no_such_table" in r.stderr,
             "--check with a missing table exits 3 naming it: %d %r" % (r.returncode, r.stderr))
    bad_conf = sink_config("bad5", "g", ["exposures.topics = no_such_topic"])
    r = subprocess.run([SINK, "-c", bad_conf, "--check"], capture_output=True, text=True)
    ck.check(r.returncode == 3 and "no_such_topic" in r.stderr,
             "--check with a missing topic exits 3 naming it: %d %r" % (r.returncode, r.stderr))
    r = subprocess.run([SINK, "-c", sink_config("ok", "g", ["exposures.topics = x_main"]), "--check"],
                       capture_output=True, text=True)
    ck.check(r.returncode == 0 and "check passed" in r.stderr, "--check passes: %d %r" % (r.returncode, r.stderr))
    for name, lines, want in [("bad6", ["exposures.topics = x_main", "batch.size = 10", "batch.size = 20"], "set twice"),
                              ("bad7", ["exposures.topics = x_main", "kafka.auto.offset.reset = latest"],
                               "auto.offset.reset"),
                              ("bad8", ["exposures.topics = x_main", "group.id ="], "group.id must not be empty")]:
        r = subprocess.run([SINK, "-c", sink_config(name, "g", lines)], capture_output=True, text=True, timeout=60)
        ck.check(r.returncode == 2 and want in r.stderr, "%s exits 2 saying %r: %d %r" % (name, want, r.returncode, r.stderr))
    r = subprocess.run([SINK, "-c", sink_config("ok", "g", ["exposures.topics = x_main"]), "--check"],
                       capture_output=True, text=True, env=dict(os.environ, EXPERIMENT_SINK_BATCH_SIZ="5"))
    ck.check(r.returncode == 2 and "EXPERIMENT_SINK_BATCH_SIZ" in r.stderr,
             "an unknown EXPERIMENT_SINK_ variable exits 2 naming it: %d %r" % (r.returncode, r.stderr))
    # brokers that cannot be reached: --check says so at once, a start waits for them
    unreachable = sink_config("down", "g", ["exposures.topics = x_main"])
    with open(unreachable) as f:
        text = f.read()
    with open(unreachable, "w") as f:
        f.write(text.replace(BOOT, "127.0.0.1:1"))
    r = subprocess.run([SINK, "-c", unreachable, "--check"], capture_output=True, text=True, timeout=60)
    ck.check(r.returncode == 3 and "Kafka metadata" in r.stderr, "--check with no broker exits 3: %d" % r.returncode)
    waiting_sink = start_sink(unreachable, "waiting")
    time.sleep(12)
    ck.check(waiting_sink.poll() is None and "retrying" in sink_log("waiting"),
             "a sink started before its brokers waits for them: %r" % sink_log("waiting")[-300:])
    ck.check(stop(waiting_sink) == 0, "and stops with 0 on SIGTERM while waiting")
    env = dict(os.environ, EXPERIMENT_SINK_BATCH_SIZE="0")
    r = subprocess.run([SINK, "-c", sink_config("ok", "g", ["exposures.topics = x_main"]), "--check"],
                       capture_output=True, text=True, env=env)
    ck.check(r.returncode == 2 and "EXPERIMENT_SINK_BATCH_SIZE" in r.stderr,
             "the environment overrides the file and is named in errors: %d %r" % (r.returncode, r.stderr))

    # ---- 1. redeliveries and malformed messages ------------------------------------
    lines, expected, bad = exposure_messages("x_main", 200000)
    produce_split("x_main", lines)
    sink = start_sink(sink_config("main", "g_main", ["exposures.topics = x_main"]), "main")
    if wait_done("g_main", "x_main", len(lines), [sink], timeout=600):
        ck.check(stop(sink) == 0, "the sink stops with 0 on SIGTERM")
        n = check_exposures("x_main", expected, bad, "redeliveries")
        ck.check(n == len(lines), "kcat reads back %d messages, %d produced" % (n, len(lines)))
        hw = q("SELECT count(*) FILTER (WHERE high_watermark = next_offset), count(*) FROM experiment.kafka_offsets "
               "WHERE consumer_group = 'g_main'")[0]
        ck.check(hw == (6, 6), "all 6 partitions stored with lag 0: %r" % (hw,))
        logtext = sink_log("main")
        ck.check("summary:" in logtext and "leaving the group" in logtext, "the sink logs summaries and its stop")
    stop(sink)

    # ---- 2. SIGKILL at random moments --------------------------------------------
    lines, expected, bad = exposure_messages("x_kill", 60000)
    produce_split("x_kill", lines)
    conf = sink_config("kill", "g_kill", ["exposures.topics = x_kill", "batch.size = 500"])
    kills = 0
    sink = start_sink(conf, "kill")
    for i in range(6):
        time.sleep(rnd.uniform(2.0, 5.0) if i == 0 else rnd.uniform(0.2, 2.5))
        sink.kill()
        sink.wait()
        kills += 1
        sink = start_sink(conf, "kill")
    # between the COPY and the COMMIT: the exposures table is locked, so the batch waits there
    locker = connect(DB)
    locker.autocommit = False
    lk = locker.cursor()
    lk.execute("LOCK TABLE experiment.exposures IN SHARE MODE")
    t = time.time()
    waiting = False
    while time.time() - t < 60 and not waiting:
        waiting = q("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'experiment-kafka-sink' "
                    "AND wait_event_type = 'Lock' AND query LIKE '%%ingest_exposure_messages%%'")[0][0] == 1
        time.sleep(0.1)
    ck.check(waiting, "the sink waits between its COPY and its COMMIT")
    sink.kill()
    sink.wait()
    kills += 1
    locker.rollback()
    locker.close()
    sink = start_sink(conf, "kill")
    if wait_done("g_kill", "x_kill", len(lines), [sink], timeout=600):
        stop(sink)
        check_exposures("x_kill", expected, bad, "after %d kills" % kills)
    log("killed the sink %d times" % kills)
    stop(sink)

    # ---- 3. two sinks in one group, one killed --------------------------------------
    lines, expected, bad = exposure_messages("x_pair", 60000)
    half = len(lines) // 2
    conf = sink_config("pair", "g_pair", ["exposures.topics = x_pair", "batch.size = 500"])
    a = start_sink(conf, "pair_a")
    b = start_sink(conf, "pair_b")
    t = time.time()
    while time.time() - t < 60 and not ("assigned x_pair" in sink_log("pair_a") and "assigned x_pair" in sink_log("pair_b")):
        time.sleep(0.2)
    ck.check("assigned x_pair" in sink_log("pair_a") and "assigned x_pair" in sink_log("pair_b"),
             "both sinks of the group get partitions")
    produce("x_pair", lines[:half], "kcat")
    time.sleep(1.0)
    a.kill()
    a.wait()
    produce("x_pair", lines[half:], "kafkajs")
    if wait_done("g_pair", "x_pair", len(lines), [b], timeout=600):
        stop(b)
        check_exposures("x_pair", expected, bad, "one of two sinks killed")
        ck.check(sink_log("pair_b").count("assigned x_pair") == 6,
                 "the survivor took over every partition: %d assignments"
                 % sink_log("pair_b").count("assigned x_pair"))
    stop(b)

    # ---- 4. brokers down and up, leaders moving, request errors -----------------------
    lines, expected, bad = exposure_messages("x_chaos", 60000)
    produce("x_chaos", lines[: len(lines) // 3], "kcat")
    sink = start_sink(sink_config("chaos", "g_chaos", ["exposures.topics = x_chaos", "batch.size = 500"]), "chaos")
    time.sleep(4)
    # a broker down while it leads some partitions: they stall, then resume
    mock_cmd("down 2")
    time.sleep(3)
    mock_cmd("up 2")
    # leaders move (as after a failover) to broker 1, the other two go down and come back
    for part in range(6):
        mock_cmd("leader x_chaos %d 1" % part)
    mock_cmd("down 2")
    mock_cmd("down 3")
    produce("x_chaos", lines[len(lines) // 3: 2 * len(lines) // 3], "kcat")
    time.sleep(1)
    mock_cmd("up 2")
    mock_cmd("up 3")
    for part in range(6):
        mock_cmd("leader x_chaos %d %d" % (part, 1 + part % 3))
    # injected request errors
    mock_cmd("errors 1 5 NOT_LEADER_FOR_PARTITION")      # Fetch
    mock_cmd("errors 1 3 _TRANSPORT")                    # Fetch: a dropped connection
    mock_cmd("errors 8 3 COORDINATOR_NOT_AVAILABLE")     # OffsetCommit (advisory)
    mock_cmd("errors 12 2 REBALANCE_IN_PROGRESS")        # Heartbeat: a rebalance
    produce("x_chaos", lines[2 * len(lines) // 3:], "kcat")
    if wait_done("g_chaos", "x_chaos", len(lines), [sink], timeout=600):
        stop(sink)
        check_exposures("x_chaos", expected, bad, "broker faults")
    stop(sink)

    # ---- 4b. one topic refused by the database does not hold up another ----------------------
    q("CREATE TABLE public.iso_events (event_id text PRIMARY KEY, n integer NOT NULL)")
    q("GRANT SELECT, INSERT ON public.iso_events TO experiment_ingest")
    q("""CREATE FUNCTION public.iso_refuse() RETURNS trigger LANGUAGE plpgsql AS
         $f$BEGIN IF NEW.n = 13 THEN RAISE EXCEPTION 'thirteen is refused'; END IF; RETURN NEW; END$f$""")
    q("CREATE TRIGGER iso_refuse BEFORE INSERT ON public.iso_events FOR EACH ROW EXECUTE FUNCTION public.iso_refuse()")
    sink = start_sink(sink_config("iso", "g_iso", ["exposures.topics = x_iso", "events.e_iso.table = public.iso_events",
                                                   "events.e_iso.columns = event_id=id, n"]), "iso")
    ev = [b"k\t" + json.dumps({"id": "i%d" % i, "n": i}).encode() for i in range(30)]
    produce("e_iso", ev, "kcat")
    xl, xexp, xbad = exposure_messages("x_iso", 2000, dup_share=0.0, bad_share=0.0)
    produce("x_iso", xl, "kcat")
    if wait_done("g_iso", "x_iso", len(xl), [sink], timeout=120):
        check_exposures("x_iso", xexp, xbad, "exposures next to a refused topic")
    t = time.time()
    while time.time() - t < 30 and "storing the messages of e_iso failed" not in sink_log("iso"):
        time.sleep(0.2)
    ck.check("storing the messages of e_iso failed" in sink_log("iso") and "paused" in sink_log("iso"),
             "the refused topic is named, with its partitions and offsets, and paused")
    ck.check(q("SELECT count(*) FROM public.iso_events")[0][0] < 30, "the refused batch is not stored")
    q("DROP TRIGGER iso_refuse ON public.iso_events")
    if wait_done("g_iso", "e_iso", len(ev), [sink], timeout=120):
        ck.check(q("SELECT count(*) FROM public.iso_events")[0][0] == 30,
                 "after the cause is removed, the paused partitions are read again: every event stored once")
    stop(sink)

    # ---- 4c. a stored offset outside the log: never a silent skip ------------------------------
    # uncompressed and on one partition, so that the mock's 5 MiB per partition drops the oldest
    big = [b"samekey\t" + json.dumps({"experiment_id": "k_ret", "unit_id": "r%d" % i, "variant": "control",
                                       "exposed_at": "2026-01-02T00:00:00Z", "event_id": "ret%d" % i,
                                       "pad": "x" * 300}).encode() for i in range(20000)]
    path = os.path.join(work, "ret.txt")
    with open(path, "wb") as f:
        f.write(b"\n".join(big) + b"\n")
    subprocess.run(["kcat", "-P", "-b", BOOT, "-t", "x_ret", "-K", "\t", "-X", "partitioner=murmur2_random",
                    "-l", path], check=True, capture_output=True)
    r = subprocess.run(["kcat", "-Q", "-b", BOOT] + sum([["-t", "x_ret:%d:-2" % pt] for pt in range(6)], []),
                       capture_output=True, text=True)
    lows = {}
    for ln in r.stdout.splitlines():
        parts_ = ln.replace("[", " ").replace("]", " ").split()
        if len(parts_) >= 4 and parts_[0] == "x_ret":
            lows[int(parts_[1])] = int(parts_[-1])
    part_ret, low = max(lows.items(), key=lambda kv: kv[1]) if lows else (None, 0)
    ck.check(low > 0, "the mock dropped the oldest messages of x_ret (log start %r)" % lows)
    q("INSERT INTO experiment.kafka_offsets (consumer_group, topic, partition, next_offset) VALUES "
      "('g_ret', 'x_ret', %s, 0)", (part_ret,))
    others = [pt for pt in range(6) if pt != part_ret]
    q("INSERT INTO experiment.kafka_offsets (consumer_group, topic, partition, next_offset) VALUES "
      "('g_ret', 'x_ret', %s, 1000000)", (others[0],))
    sink = start_sink(sink_config("ret", "g_ret", ["exposures.topics = x_ret"]), "ret")
    t = time.time()
    while time.time() - t < 60 and not ("deleted by the topic's retention" in sink_log("ret")
                                        and "beyond the end" in sink_log("ret")):
        time.sleep(0.2)
    logtext = sink_log("ret")
    ck.check("were deleted by the topic's retention before the sink stored them; continuing from offset %d" % low
             in logtext, "messages lost to retention are reported with their offsets: %r" % logtext[-500:])
    ck.check("beyond the end of the partition" in logtext and "paused" in logtext,
             "a stored offset beyond the end pauses the partition")
    time.sleep(3)
    got = q("SELECT next_offset FROM experiment.kafka_offsets WHERE consumer_group = 'g_ret' AND topic = 'x_ret' "
            "AND partition = %s", (part_ret,))[0][0]
    r = subprocess.run(["kcat", "-Q", "-b", BOOT, "-t", "x_ret:%d:-1" % part_ret], capture_output=True, text=True)
    high = int(r.stdout.split()[-1]) if r.returncode == 0 and r.stdout.split() else None
    ck.check(got == high, "the partition with deleted messages is read to its end (%r of %r)" % (got, high))
    ck.check(q("SELECT next_offset FROM experiment.kafka_offsets WHERE consumer_group = 'g_ret' AND partition = %s",
               (others[0],))[0][0] == 1000000, "the paused partition's stored offset is left for a person to correct")
    stop(sink)

    # ---- 5. metric events into a user table ---------------------------------------------
    q("""CREATE TABLE public.orders_kafka (event_id text PRIMARY KEY, user_id text NOT NULL,
                                          ordered_at timestamptz NOT NULL, amount numeric NOT NULL CHECK (amount >= 0),
                                          meta jsonb)""")
    q("CREATE TABLE public.orders_copy (LIKE public.orders_kafka INCLUDING ALL)")
    q("GRANT SELECT, INSERT ON public.orders_kafka TO experiment_ingest")
    units = ["o%d" % i for i in range(4000)]
    batch = [{"experiment_id": "k_orders", "unit_id": u, "variant": "treatment" if i % 2 else "control",
              "exposed_at": "2026-02-01T00:00:00Z"} for i, u in enumerate(units)]
    q("SELECT * FROM experiment.ingest_exposures(%s::jsonb)", (json.dumps(batch),))
    events, copy_rows = [], []
    for i in range(30000):
        u = rnd.choice(units)
        lift = 1.1 if int(u[1:]) % 2 else 1.0
        amount = "%.2f" % (rnd.lognormvariate(3, 1) * lift)
        ts = "2026-02-%02dT%02d:%02d:00Z" % (1 + rnd.randrange(20), rnd.randrange(24), rnd.randrange(60))
        m = {"id": "o-%d" % i, "user": u, "at": ts, "order": {"amount": json.loads(amount), "currency": "EUR"},
             "meta": {"n": i}}
        events.append((u.encode(), json.dumps(m).encode()))
        copy_rows.append("o-%d\t%s\t%s\t%s\t%s" % (i, u, ts, amount, json.dumps({"n": i})))
    out = list(events) + [rnd.choice(events) for _ in range(3000)]
    bad_events = [b"{not json", b'{"id": "bad-1", "user": "o1", "at": "2026-02-02T00:00:00Z", "meta": {}}',
                  b'{"id": "bad-2", "user": "o1", "at": "never", "order": {"amount": 1}, "meta": {}}',
                  b'{"id": "bad-3", "user": "o1", "at": "2026-02-02T00:00:00Z", "order": {"amount": -5}, "meta": {}}',
                  b'{"id": "bad-4", "user": null, "at": "2026-02-02T00:00:00Z", "order": {"amount": 5}, "meta": {}}',
                  b'"a string"']
    out += [(b"k", v) for v in bad_events]
    rnd.shuffle(out)
    produce_split("orders", [k + b"\t" + v for k, v in out])
    sink = start_sink(sink_config("orders", "g_orders", [
        "events.orders.table = public.orders_kafka",
        "events.orders.columns = event_id=id, user_id=user, ordered_at=at, amount=order.amount, meta"]), "orders")
    if wait_done("g_orders", "orders", len(out), [sink], timeout=600):
        stop(sink)
        cur.copy_from(__import__("io").StringIO("\n".join(copy_rows) + "\n"), "orders_copy",
                      columns=("event_id", "user_id", "ordered_at", "amount", "meta"))
        diff = q("SELECT count(*) FROM ((TABLE orders_kafka EXCEPT ALL TABLE orders_copy) UNION ALL "
                 "(TABLE orders_copy EXCEPT ALL TABLE orders_kafka)) d")[0][0]
        ck.check(diff == 0, "metric events through the sink equal the COPY load: %d rows differ" % diff)
        dead = q("SELECT reason FROM experiment.kafka_dead_letters WHERE target = 'orders_kafka' "
                 "OR target = 'public.orders_kafka' ORDER BY kafka_offset")
        ck.check(len(dead) == len(bad_events), "%d dead letters, want %d: %r" % (len(dead), len(bad_events), dead))
        reasons = " | ".join(d[0] for d in dead)
        for want in ("not JSON", "missing field order.amount", "timestamp", "orders_kafka_amount_check",
                     "null value", "not a JSON object"):
            ck.check(want in reasons, "a dead letter says %r: %s" % (want, reasons))
        for table in ("orders_kafka", "orders_copy"):
            q("""INSERT INTO experiment.metrics (name, source, unit_column, time_column, value_column, aggregation)
                 VALUES (%s, %s::regclass, 'user_id', 'ordered_at', 'amount', 'sum')""", ("revenue_" + table, table))
            q("""INSERT INTO experiment.metrics (name, source, unit_column, time_column, value_column, aggregation)
                 VALUES (%s, %s::regclass, 'user_id', 'ordered_at', NULL, 'count')""", ("orders_" + table, table))
            q("INSERT INTO experiment.experiment_metrics (experiment_id, metric, role) "
              "VALUES ('k_orders', %s, %s), ('k_orders', %s, 'secondary')",
              ("revenue_" + table, "primary" if table == "orders_kafka" else "secondary", "orders_" + table))
        q("SELECT experiment.refresh('k_orders')")
        res = q("""SELECT replace(replace(metric, 'orders_kafka', 'T'), 'orders_copy', 'T') AS m, variant,
                          (to_jsonb(r) - 'metric' - 'refreshed_at')::text
                   FROM experiment.metric_results r WHERE experiment_id = 'k_orders' ORDER BY 1, 2, 3""")
        pairs = {}
        for m, v, body in res:
            pairs.setdefault((m, v), []).append(json.loads(body))

        def same(a, b):
            """equal, numbers to 1e-12 relative (the two tables sum each unit's events in another order)"""
            if isinstance(a, dict) and isinstance(b, dict):
                return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
            if isinstance(a, (int, float)) and isinstance(b, (int, float)):
                return a == b or abs(a - b) <= 1e-12 * max(abs(a), abs(b))
            return a == b
        ck.check(len(pairs) >= 2 and all(len(b) == 2 and same(b[0], b[1]) for b in pairs.values()),
                 "refresh() of the sink's events equals refresh() of the COPY load: %r" % list(pairs.items())[:2])
    stop(sink)
finally:
    cleanup()

ck.report()
