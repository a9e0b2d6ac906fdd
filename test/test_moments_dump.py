"""pg_dump keeps every experiment.moments value: a table of extreme values
(counts up to INT64_MAX reached by merging, n above 2^53, the largest and
smallest doubles, negative zero, values that came in through binary COPY with
random doubles) is dumped in plain format, restored with psql into a new
database, and every row comes back identical (its text and its binary form);
binary COPY out and in keeps them too.
"""
import io
import os
import random
import struct
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from exptest import Checker, connect, fresh_db  # noqa: E402

PG_BINDIR = os.environ.get("PG_BINDIR", "/usr/lib/postgresql/15/bin")
SRC = "exp_moments_dump_src"
DST = "exp_moments_dump_dst"
INT64_MAX = 2**63 - 1


def m1(n, mean, c):
    return '{"version":1,"n":%s,"mean":[%s],"comoment":[[%s]]}' % (n, mean, c)


# values written as text (each must read as it is written, except where noted)
TEXT_ROWS = [
    m1(INT64_MAX, "1", "0"),
    m1(2**53 + 1, "-0", "-0"),
    m1(0, "-0", "-0"),
    m1(0, "0", "0"),
    m1(1, "5e-324", "0"),
    m1(1, "-5e-324", "0"),
    m1(2, "1.7976931348623157e+308", "1.7976931348623157e+308"),
    m1(INT64_MAX - 1, "-1.7976931348623157e+308", "2.2250738585072014e-308"),
    m1(3, "0.30000000000000004", "0.1"),
    '{"version":1,"n":3,"mean":[1,2],"comoment":[[1,1],[1,1]]}',
    '{"version":1,"n":3,"mean":[1,2],"comoment":[[4,-2],[-2,1]]}',
    '{"version":1,"n":9223372036854775807,"mean":[-0,5e-324],"comoment":[[1e+308,-0],[-0,1e-308]]}',
]


def binary_copy(payloads):
    out = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)
    for p in payloads:
        out += struct.pack("!hi", 1, len(p)) + p
    return io.BytesIO(out + struct.pack("!h", -1))


def random_payloads(rnd, count):
    """Valid binary values with random doubles (all bit patterns of finite
    doubles are reachable: the sign, the exponent and the mantissa at random)."""
    def rdouble():
        while True:
            v = struct.unpack("!d", struct.pack("!Q", rnd.getrandbits(64)))[0]
            if v == v and abs(v) != float("inf"):
                return v
    out = []
    for _ in range(count):
        k = rnd.choice([1, 2, 4])
        n = rnd.choice([2, 3, 2**53 + 1, INT64_MAX, rnd.randrange(2, INT64_MAX)])
        means = [rdouble() for _ in range(k)]
        # a diagonal matrix: any non-negative diagonal is a valid co-moment
        com = []
        for i in range(k):
            for j in range(i, k):
                com.append(abs(rdouble()) if i == j else rnd.choice([0.0, -0.0]))
        out.append(struct.pack("!BBq", 1, k, n) + b"".join(struct.pack("!d", v) for v in means + com))
    return out


def snapshot(cur):
    cur.execute("SELECT id, m::text, experiment.moments_send(m) FROM vals ORDER BY id")
    return [(i, t, bytes(b)) for i, t, b in cur.fetchall()]


def main():
    ck = Checker("test_moments_dump")
    rnd = random.Random(20240611)
    src = fresh_db(SRC)
    cur = src.cursor()
    cur.execute("CREATE TABLE vals (id serial PRIMARY KEY, m experiment.moments)")
    for t in TEXT_ROWS:
        cur.execute("INSERT INTO vals (m) VALUES (%s::experiment.moments)", (t,))
    cur.execute("SELECT m::text FROM vals ORDER BY id")
    got = [r[0] for r in cur.fetchall()]
    ck.check(len(got) == len(TEXT_ROWS), "%d text rows stored, want %d" % (len(got), len(TEXT_ROWS)))
    for t, g in zip(TEXT_ROWS, got):
        # each is written in the output's own form, so it reads back as itself
        ck.check(g == t, "text %s reads back as %s" % (t, g))
    # counts that only arithmetic produces: INT64_MAX by + and by merge()
    cur.execute("INSERT INTO vals (m) SELECT a OPERATOR(experiment.+) b FROM"
                " (SELECT %s::experiment.moments a, %s::experiment.moments b) s",
                (m1(INT64_MAX - 7, "1e150", "1e300"), m1(7, "-1e150", "0")))
    cur.execute("INSERT INTO vals (m) SELECT experiment.merge(m) FROM"
                " (VALUES (%s::experiment.moments), (%s), (%s)) v(m)",
                (m1(INT64_MAX - 10, "3", "0"), m1(4, "5", "0"), m1(6, "1e-300", "0")))
    cur.execute("INSERT INTO vals (m) SELECT experiment.moments(1.0 / g, sqrt(g::float8), g * 1e150, -g * 1e-150)"
                " FROM generate_series(1, 1000) g GROUP BY g % 5")
    # binary COPY in: random finite doubles
    cur.execute("CREATE TEMP TABLE incoming (m experiment.moments)")
    payloads = random_payloads(rnd, 200)
    cur.copy_expert("COPY incoming FROM STDIN (FORMAT binary)", binary_copy(payloads))
    cur.execute("INSERT INTO vals (m) SELECT m FROM incoming")
    cur.execute("SELECT experiment.moments_send(m) FROM incoming")
    sent = [bytes(r[0]) for r in cur.fetchall()]
    ck.check(sorted(sent) == sorted(payloads), "binary values read back byte for byte (%d)" % len(payloads))
    cur.execute("SELECT count(*) FROM vals WHERE experiment.n(m) = %s", (INT64_MAX,))
    n_max = cur.fetchone()[0]
    ck.check(n_max >= 4, "rows with n = INT64_MAX: %d" % n_max)
    want = snapshot(cur)
    print("source: %d rows, %d with n = INT64_MAX" % (len(want), n_max))

    admin = connect("postgres")
    admin.cursor().execute('DROP DATABASE IF EXISTS "%s" WITH (FORCE)' % DST)
    admin.cursor().execute('CREATE DATABASE "%s"' % DST)
    admin.close()
    dump = subprocess.run([os.path.join(PG_BINDIR, "pg_dump"), "-d", SRC], capture_output=True, check=True).stdout
    r = subprocess.run([os.path.join(PG_BINDIR, "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", DST],
                       input=dump, capture_output=True)
    ck.check(r.returncode == 0, "plain restore: %s" % r.stderr.decode()[-800:])
    dst = connect(DST)
    dcur = dst.cursor()
    got = snapshot(dcur)
    ck.check(len(got) == len(want), "restored %d rows, want %d" % (len(got), len(want)))
    for w, g in zip(want, got):
        ck.check(w == g, "row %d: restored %r, want %r" % (w[0], g[1], w[1]))
    print("plain dump restored: %d rows" % len(got))

    # binary COPY out of the source and in to the restored table
    buf = io.BytesIO()
    cur.copy_expert("COPY vals TO STDOUT (FORMAT binary)", buf)
    dcur.execute("TRUNCATE vals")
    buf.seek(0)
    dcur.copy_expert("COPY vals FROM STDIN (FORMAT binary)", buf)
    got = snapshot(dcur)
    ck.check(len(got) == len(want) and got == want, "binary COPY round trip: %d rows" % len(got))
    dst.close()
    src.close()
    ck.report()


if __name__ == "__main__":
    main()
