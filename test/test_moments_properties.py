"""Properties of experiment.moments that pg_regress cannot show:

- numerical stability: y = 1e9 + N(0, 1) over a million rows gives the
  sample variance within 1e-6 relative (raw sums of squares lose every digit);
- text form round-trips exactly for random values, including extreme ones;
- binary send/recv round-trips through COPY BINARY, and crafted binary input
  is rejected with a clear error;
- moments of random data agree with numpy (means, covariances), and merging
  arbitrary splits equals the moments of the whole.
"""
import io
import struct
import sys
import os

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from exptest import Checker, fresh_db  # noqa: E402

import psycopg2  # noqa: E402

ck = Checker("moments properties")
conn = fresh_db("test_moments_properties")
cur = conn.cursor()
rng = np.random.default_rng(20261125)


def copy_in(table, rows, cols):
    buf = io.StringIO()
    for r in rows:
        buf.write("\t".join(repr(float(v)) for v in r) + "\n")
    buf.seek(0)
    cur.copy_from(buf, table, columns=cols)


# 1. numerical stability
n = 1_000_000
y = 1e9 + rng.standard_normal(n)
cur.execute("CREATE TABLE big (y float8)")
copy_in("big", ((v,) for v in y), ("y",))
true_var = float(np.var(y, ddof=1))
cur.execute("ANALYZE big")
for mode, settings in (("serial", "SET max_parallel_workers_per_gather = 0"),
                       ("parallel", "SET max_parallel_workers_per_gather = 2; SET parallel_setup_cost = 0; "
                                    "SET parallel_tuple_cost = 0; SET min_parallel_table_scan_size = 0")):
    cur.execute(settings)
    cur.execute("SELECT experiment.variance(experiment.moments(y)), experiment.mean(experiment.moments(y)) FROM big")
    var, mean = cur.fetchone()
    ck.close(var, true_var, "%s variance of 1e9 + N(0,1) over 1e6 rows" % mode, rel=1e-6)
    ck.close(mean, float(np.mean(y)), "%s mean of 1e9 + N(0,1)" % mode, rel=1e-13)
    print("%s: variance %.12g (rel err %.2g), numpy %.12g" % (mode, var, abs(var - true_var) / true_var, true_var))
cur.execute("RESET ALL")
# the same data reduced to raw sums loses the variance entirely: show the contrast
cur.execute("SELECT (sum(y * y) - sum(y) * sum(y) / count(*)) / (count(*) - 1) FROM big")
print("raw sums of squares give %.6g" % cur.fetchone()[0])
# merged from shards of very different sizes
cur.execute("SELECT experiment.variance(experiment.merge(m)) FROM ("
            " SELECT experiment.moments(y) AS m FROM (SELECT y, row_number() OVER () AS r FROM big) b"
            " GROUP BY width_bucket(r, ARRAY[2, 10, 1000, 500000])) s")
ck.close(cur.fetchone()[0], true_var, "variance merged from uneven shards", rel=1e-6)
cur.execute("DROP TABLE big")

# 2. random datasets vs numpy, with random merges
cur.execute("CREATE TABLE d (id int, part int, y float8, x float8, u float8, v float8)")
for trial in range(40):
    size = int(rng.integers(2, 3000))
    # spread from 1e-6 to 1e9, mean up to 1e4 spreads away (data whose mean is
    # 1e16 spreads away carry no information in double precision at all)
    scale = 10 ** rng.uniform(-6, 9)
    loc = scale * 10 ** rng.uniform(-3, 4) * rng.choice([-1, 1])
    data = rng.standard_normal((size, 4)) * scale + loc
    data[:, 1] += 0.7 * data[:, 0]
    parts = rng.integers(0, int(rng.integers(1, 9)), size)
    cur.execute("TRUNCATE d")
    buf = io.StringIO()
    for i in range(size):
        buf.write("%d\t%d\t%s\n" % (i, parts[i], "\t".join(repr(float(t)) for t in data[i])))
    buf.seek(0)
    cur.copy_from(buf, "d", columns=("id", "part", "y", "x", "u", "v"))
    cur.execute("SELECT m::text, (SELECT experiment.merge(p) FROM (SELECT experiment.moments(y, x, u, v) AS p"
                " FROM d GROUP BY part) s)::text FROM (SELECT experiment.moments(y, x, u, v) AS m FROM d) w")
    whole, merged = cur.fetchone()
    cov = np.cov(data, rowvar=False, ddof=1)
    for label, txt in (("whole", whole), ("merged", merged)):
        cur.execute("SELECT experiment.n(%s::experiment.moments)", (txt,))
        ck.check(cur.fetchone()[0] == size, "trial %d %s n" % (trial, label))
        for i in range(4):
            cur.execute("SELECT experiment.mean(%s::experiment.moments, %s)", (txt, i + 1))
            ck.close(cur.fetchone()[0], float(np.mean(data[:, i])), "trial %d %s mean %d" % (trial, label, i),
                     rel=1e-12, abs_tol=1e-12 * scale)
            for j in range(4):
                cur.execute("SELECT experiment.covariance(%s::experiment.moments, %s, %s)", (txt, i + 1, j + 1))
                ck.close(cur.fetchone()[0], float(cov[i, j]), "trial %d %s cov %d,%d" % (trial, label, i, j),
                         rel=1e-9, abs_tol=1e-9 * float(np.sqrt(cov[i, i] * cov[j, j])))
cur.execute("DROP TABLE d")

# 3. text round trip of random and extreme values
cur.execute("CREATE TABLE vals (m experiment.moments)")
for trial in range(300):
    k = int(rng.choice([1, 2, 4]))
    size = int(rng.integers(1, 50))
    scale = 10 ** rng.uniform(-150, 150)
    data = rng.standard_normal((size, k)) * scale + rng.standard_normal(k) * scale * 10
    args = ", ".join(["%s"] * k)
    cur.execute("SELECT experiment.moments(%s) FROM (VALUES %s) v(%s)" % (
        ", ".join("c%d" % i for i in range(k)),
        ", ".join("(" + ", ".join("%r::float8" % float(t) for t in row) + ")" for row in data),
        ", ".join("c%d" % i for i in range(k))))
    txt = cur.fetchone()[0]
    cur.execute("SELECT %s::experiment.moments::text = %s, "
                "%s::experiment.moments OPERATOR(experiment.=) %s::experiment.moments::text::experiment.moments",
                (txt, txt, txt, txt))
    same_text, same_value = cur.fetchone()
    ck.check(same_text and same_value, "text round trip of %s" % txt)
    cur.execute("INSERT INTO vals VALUES (%s)", (txt,))

# 4. binary round trip through COPY BINARY
out = io.BytesIO()
cur.copy_expert("COPY vals TO STDOUT (FORMAT binary)", out)
cur.execute("CREATE TABLE vals2 (m experiment.moments)")
out.seek(0)
cur.copy_expert("COPY vals2 FROM STDIN (FORMAT binary)", out)
cur.execute("SELECT count(*), count(*) FILTER (WHERE a.m::text = b.m::text) FROM "
            "(SELECT m, row_number() OVER () r FROM vals) a JOIN (SELECT m, row_number() OVER () r FROM vals2) b USING (r)")
total, same = cur.fetchone()
ck.check(total == 300 and same == 300, "binary round trip: %d of %d identical" % (same, total))


def binary_copy(payload):
    """COPY one field with the given raw binary value into a moments column."""
    hdr = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)
    body = struct.pack("!h", 1) + struct.pack("!i", len(payload)) + payload
    return io.BytesIO(hdr + body + struct.pack("!h", -1))


def one(version, k, n, data):
    return struct.pack("!BBq", version, k, n) + b"".join(struct.pack("!d", v) for v in data)


hostile = {
    "version 9": (one(9, 1, 2, [1, 1]), "version"),
    "3 variables": (one(1, 3, 2, [0] * 9), "1, 2 or 4"),
    "negative n": (one(1, 1, -5, [1, 1]), "negative"),
    "NaN mean": (one(1, 1, 2, [float("nan"), 1]), "finite"),
    "negative variance": (one(1, 1, 2, [1, -1]), "negative"),
    "truncated": (one(1, 2, 2, [1, 1, 1]), "has 32 bytes after its header, not the 48"),
    "trailing bytes": (one(1, 1, 2, [1, 1]) + b"\x00", "has 25 bytes after its header, not the 24"),
    "cauchy-schwarz": (one(1, 2, 3, [0, 0, 1, 5, 1]), "Cauchy-Schwarz"),
}
for label, (payload, needle) in hostile.items():
    try:
        cur.copy_expert("COPY vals2 FROM STDIN (FORMAT binary)", binary_copy(payload))
        ck.check(False, "hostile binary input accepted: %s" % label)
    except psycopg2.Error as e:
        ck.check(needle.lower() in str(e).lower(), "hostile binary %s: error %r lacks %r" % (label, str(e), needle))
        ck.check(e.pgcode == "22P03", "hostile binary %s: SQLSTATE %s, want 22P03" % (label, e.pgcode))

ck.report()
