"""Fuzz the input functions of experiment.moments: mutated text forms and
random binary payloads must either be accepted (and then round-trip exactly)
or be rejected with an ordinary error - never crash the backend or produce a
value that fails its own validation."""
import io
import os
import random
import struct
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from exptest import Checker, fresh_db  # noqa: E402

import psycopg2  # noqa: E402

ck = Checker("moments fuzz")
conn = fresh_db("test_moments_fuzz")
cur = conn.cursor()
rnd = random.Random(7)

seeds = []
cur.execute("SELECT experiment.moments(g::float8)::text FROM generate_series(1, 9) g")
seeds.append(cur.fetchone()[0])
cur.execute("SELECT experiment.moments(g::float8, (g * g)::float8)::text FROM generate_series(1, 9) g")
seeds.append(cur.fetchone()[0])
cur.execute("SELECT experiment.moments(g::float8, 1::float8, sqrt(g), (g % 3)::float8)::text FROM generate_series(1, 9) g")
seeds.append(cur.fetchone()[0])
alphabet = '{}[],:"0123456789.eE+- nversiomcat\\\x00\x01\xff'


def mutate(s):
    s = list(s)
    for _ in range(rnd.randint(1, 4)):
        op = rnd.random()
        pos = rnd.randrange(len(s) + 1)
        if op < 0.4 and s:
            s[min(pos, len(s) - 1)] = rnd.choice(alphabet)
        elif op < 0.7:
            s.insert(pos, rnd.choice(alphabet))
        elif s:
            del s[min(pos, len(s) - 1)]
    return "".join(s).replace("\x00", "")


accepted = rejected = 0
for i in range(6000):
    text = mutate(rnd.choice(seeds))
    try:
        cur.execute("SELECT m::text, m::text::experiment.moments OPERATOR(experiment.=) m, "
                    "experiment.n(m) FROM (SELECT %s::experiment.moments AS m) s", (text,))
        out, same, n = cur.fetchone()
        accepted += 1
        ck.check(same, "accepted %r but it does not round-trip (%r)" % (text, out))
    except psycopg2.Error as e:
        rejected += 1
        # every rejection of the text form is invalid_text_representation
        if e.pgcode != "22P02":
            ck.check(False, "input %r: unexpected error %s %s" % (text, e.pgcode, e))
    except ValueError:
        rejected += 1  # the client refuses the string (e.g. a NUL)
print("text: %d accepted, %d rejected" % (accepted, rejected))
ck.check(accepted > 0 and rejected > 0, "the fuzzer exercised both paths")


def copy_binary(payload):
    hdr = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)
    return io.BytesIO(hdr + struct.pack("!hi", 1, len(payload)) + payload + struct.pack("!h", -1))


cur.execute("CREATE TABLE sink (m experiment.moments)")
accepted = rejected = 0
for i in range(3000):
    k = rnd.choice([1, 2, 3, 4, 0, 255])
    version = rnd.choice([1, 1, 1, 0, 2])
    ndata = {1: 2, 2: 5, 4: 14}.get(k, rnd.randint(0, 14))
    n = rnd.choice([0, 1, 2, 5, -1, 2**62])
    vals = [rnd.choice([0.0, 1.0, -1.0, rnd.uniform(-1e6, 1e6), float("inf"), float("nan"), 1e308, 5e-324])
            for _ in range(ndata + rnd.choice([0, 0, 0, -1, 1]))]
    payload = struct.pack("!BBq", version, k, n) + b"".join(struct.pack("!d", v) for v in vals)
    if rnd.random() < 0.2:
        payload = bytes(rnd.getrandbits(8) for _ in range(rnd.randint(0, 40)))
    try:
        cur.copy_expert("COPY sink FROM STDIN (FORMAT binary)", copy_binary(payload))
        accepted += 1
    except psycopg2.Error as e:
        rejected += 1
        # moments_recv checks the length before reading, so every rejection
        # is invalid_binary_representation (never 08P01 from pq_getmsg*)
        if e.pgcode != "22P03":
            ck.check(False, "binary payload %r: unexpected error %s %s" % (payload, e.pgcode, e))
print("binary: %d accepted, %d rejected" % (accepted, rejected))
# everything that got in is valid: re-reading its text form must succeed
cur.execute("SELECT count(*) FROM sink WHERE m::text::experiment.moments OPERATOR(experiment.=) m")
ck.check(cur.fetchone()[0] == accepted, "every accepted binary value re-reads from its text form")
cur.execute("SELECT 1")
ck.check(cur.fetchone()[0] == 1, "backend alive after fuzzing")
ck.report()
