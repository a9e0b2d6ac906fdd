"""Idempotent exposure ingestion under concurrency: 4 writers on separate
connections deliver 20,000 distinct exposures plus 20% redeliveries, each
redelivery sent by a different writer at about the same moment, through both
experiment.ingest_exposures (batches) and experiment.log_exposure (single
rows). Nothing may be lost and nothing doubled; the writers' own counts of
stored and duplicate rows must add up.

A writer retries a batch that fails with a deadlock or serialization error,
as an at-least-once consumer does; a retry is itself a redelivery.
"""
import json
import os
import random
import sys
import threading

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from exptest import Checker, connect, fresh_db  # noqa: E402

import psycopg2  # noqa: E402
import psycopg2.errorcodes  # noqa: E402

DB = "exp_analysis_ingest"
WRITERS = 4
DISTINCT = 20000
DUP_SHARE = 0.20
BATCH = 250

ck = Checker("test_analysis_ingest_concurrency")
rnd = random.Random(4242)
conn = fresh_db(DB)
cur = conn.cursor()
cur.execute("""INSERT INTO experiment.experiments (id, name, status) VALUES ('conc', 'concurrency', 'draft')""")
cur.execute("""INSERT INTO experiment.variants (experiment_id, name, allocation, is_control) VALUES
               ('conc', 'control', 0.5, true), ('conc', 'treatment', 0.5, false)""")

events = []
for i in range(DISTINCT):
    e = {"experiment_id": "conc", "unit_id": "u%d" % (i // 2), "variant": "control" if (i // 2) % 2 else "treatment",
         "exposed_at": "2025-02-01T00:00:00Z" if i % 2 == 0 else "2025-02-01T%02d:%02d:%02d.%06dZ" % (
             1 + i % 20, i % 60, (i * 7) % 60, i % 999983)}
    if i % 5:   # a fifth of the events carry no event_id: deduplicated on (experiment, unit, variant, time)
        e["event_id"] = "evt-%d" % i
    events.append(e)

# each event goes to one writer at a random slot; a redelivery goes to another writer at the same slot
plan = [[] for _ in range(WRITERS)]
dups = set(rnd.sample(range(DISTINCT), int(DISTINCT * DUP_SHARE)))
for i in range(DISTINCT):
    slot = rnd.random()
    w = rnd.randrange(WRITERS)
    plan[w].append((slot, i))
    if i in dups:
        w2 = (w + 1 + rnd.randrange(WRITERS - 1)) % WRITERS
        plan[w2].append((slot + rnd.uniform(-1e-3, 1e-3), i))
deliveries = sum(len(p) for p in plan)

barrier = threading.Barrier(WRITERS)
totals = [[0, 0, 0] for _ in range(WRITERS)]   # stored, duplicates, retries
errors = []
RETRY = {psycopg2.errorcodes.DEADLOCK_DETECTED, psycopg2.errorcodes.SERIALIZATION_FAILURE}


def writer(w):
    try:
        c = connect(DB)
        k = c.cursor()
        items = [i for _, i in sorted(plan[w])]
        barrier.wait()
        pos = 0
        while pos < len(items):
            chunk = items[pos:pos + BATCH]
            single = (pos // BATCH) % 2 == 1    # alternate batches and single-row logging
            while True:
                try:
                    if single:
                        stored = 0
                        c.autocommit = False
                        for i in chunk:
                            e = events[i]
                            k.execute("SELECT experiment.log_exposure(%s, %s, %s, %s::timestamptz, event_id => %s)",
                                      (e["experiment_id"], e["unit_id"], e["variant"], e["exposed_at"],
                                       e.get("event_id")))
                            stored += 1 if k.fetchone()[0] else 0
                        c.commit()
                        c.autocommit = True
                        totals[w][0] += stored
                        totals[w][1] += len(chunk) - stored
                    else:
                        k.execute("SELECT * FROM experiment.ingest_exposures(%s::jsonb)",
                                  (json.dumps([events[i] for i in chunk]),))
                        s, d, q = k.fetchone()
                        if q:
                            errors.append("writer %d: %d rows quarantined" % (w, q))
                        totals[w][0] += s
                        totals[w][1] += d
                    break
                except psycopg2.Error as ex:
                    if not c.autocommit:
                        c.rollback()
                        c.autocommit = True
                    if ex.pgcode in RETRY:
                        totals[w][2] += 1
                        continue
                    raise
            pos += BATCH
        c.close()
    except Exception as ex:  # reported by the main thread
        errors.append("writer %d: %r" % (w, ex))


threads = [threading.Thread(target=writer, args=(w,)) for w in range(WRITERS)]
for th in threads:
    th.start()
for th in threads:
    th.join()

ck.check(not errors, "writer errors: %r" % errors[:3])
stored = sum(t[0] for t in totals)
dupl = sum(t[1] for t in totals)
retries = sum(t[2] for t in totals)
print("deliveries %d (distinct %d), stored %d, duplicates %d, retried batches %d"
      % (deliveries, DISTINCT, stored, dupl, retries))
ck.check(deliveries == DISTINCT + len(dups), "plan has %d deliveries" % deliveries)
ck.check(stored == DISTINCT, "writers stored %d, want %d (each event exactly once)" % (stored, DISTINCT))
ck.check(stored + dupl == deliveries, "stored + duplicates = %d, want %d deliveries" % (stored + dupl, deliveries))

cur.execute("SELECT count(*), count(DISTINCT (unit_id, variant, exposed_at)), count(event_id), "
            "count(DISTINCT event_id) FROM experiment.exposures WHERE experiment_id = 'conc'")
n, nkey, nev, ndev = cur.fetchone()
want_ev = sum(1 for e in events if "event_id" in e)
ck.check(n == DISTINCT and nkey == DISTINCT, "table holds %d rows, %d distinct keys; want %d" % (n, nkey, DISTINCT))
ck.check(nev == ndev == want_ev, "event ids %d (%d distinct), want %d" % (nev, ndev, want_ev))

# every event is there, with its own id and time
cur.execute("SELECT unit_id, variant, exposed_at, event_id FROM experiment.exposures WHERE experiment_id = 'conc'")
got = {(u, v, t.isoformat(), e) for u, v, t, e in cur.fetchall()}
cur.execute("SELECT %s::timestamptz", ("2025-02-01T00:00:00Z",))
want = set()
for e in events:
    cur.execute("SELECT %s::timestamptz", (e["exposed_at"],))
    want.add((e["unit_id"], e["variant"], cur.fetchone()[0].isoformat(), e.get("event_id")))
ck.check(got == want, "stored set differs: %d missing, %d unexpected" % (len(want - got), len(got - want)))

cur.execute("SELECT count(*) FROM experiment.exposures_quarantine")
ck.check(cur.fetchone()[0] == 0, "nothing quarantined")
conn.close()
ck.report()
