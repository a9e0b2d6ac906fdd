#!/usr/bin/python3
"""Hashing schemes against independent Python oracles.

- experiment.bucket vs int(hashlib.sha256(f"{salt}:{unit}".encode()).hexdigest(), 16) % 10000
- experiment.eppo_shard vs int(hashlib.md5(f"{salt}-{subject}".encode()).hexdigest()[:8], 16) % total
- experiment.statsig_bucket vs int.from_bytes(sha256(f"{salt}.{unit}").digest()[:8], "big") % 10000
- experiment.growthbook_hash vs FNV-1a over Python's own UTF-16 encoding of the string
- experiment.unit_hash for every scheme vs the same oracles
on 10,000 seeded ids (ASCII, empty, unicode including characters outside the
BMP, lengths across the 55/56/64-byte block boundaries), and the variant split
of assign_variant on 100,000 units: every assignment equals the documented
bucket-boundary rule computed in Python, and the split passes a chi-squared
test (p > 0.001, scipy).
"""
import hashlib
import json
import math
import os
import random
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from exptest import Checker, fresh_db  # noqa: E402

import psycopg2  # noqa: E402
from scipy import stats  # noqa: E402

rng = random.Random(20261125)
ck = Checker("test_hash_hashlib")
conn = fresh_db("exp_test_hash_hashlib")
cur = conn.cursor()

ALPHABETS = [
    "abcdefghijklmnopqrstuvwxyz0123456789-_",
    "ÄÖÜäöüßéèêçñ",                     # 2-byte UTF-8
    "日本語中文한국어ไทย€",               # 3-byte UTF-8
    "😀🚀𝄞𠀋🧪",                          # 4-byte UTF-8, surrogate pairs in UTF-16
]


def random_id(i):
    kind = i % 10
    if i == 0:
        return ""
    if kind < 5:
        return "user-%d" % rng.randrange(10**9)
    # lengths around the SHA-256/MD5 padding boundaries (55, 56, 63, 64 bytes)
    n = rng.choice([1, 2, 7, 20, 45, 46, 47, 50, 53, 54, 55, 56, 57, 63, 64, 65, 100, 130])
    chars = "".join(rng.choice(ALPHABETS[rng.randrange(len(ALPHABETS)) if kind >= 7 else 0])
                    for _ in range(n))
    return chars


ids = [random_id(i) for i in range(10000)]
salts = [rng.choice(["exp-checkout-progress-bar", "", "s", "ränking-ü", "🚀launch", "x" * 70])
         for _ in range(10000)]


def py_bucket(unit, salt):
    return int(hashlib.sha256(("%s:%s" % (salt, unit)).encode()).hexdigest(), 16) % 10000


def py_eppo(subject, salt, total=10000):
    return int(hashlib.md5(("%s-%s" % (salt, subject)).encode()).hexdigest()[:8], 16) % total


def py_statsig(unit, salt):
    return int.from_bytes(hashlib.sha256(("%s.%s" % (salt, unit)).encode()).digest()[:8], "big") % 10000


def fnv1a32_utf16(s):
    h = 0x811C9DC5
    b = s.encode("utf-16-le")
    for k in range(0, len(b), 2):
        h ^= b[k] | (b[k + 1] << 8)
        h = (h * 16777619) & 0xFFFFFFFF
    return h


def py_growthbook(seed, value, version):
    if version == 1:
        return (fnv1a32_utf16(value + seed) % 1000) / 1000
    if version == 2:
        return (fnv1a32_utf16(str(fnv1a32_utf16(seed + value))) % 10000) / 10000
    return None


ck.check(py_bucket("user-abc123", "exp-checkout-progress-bar") == 5951, "oracle sanity: 5951")
totals = [rng.choice([10000, 1, 7, 100, 2147483647]) for _ in range(10000)]

cur.execute("""
    SELECT experiment.bucket(u, s), experiment.eppo_shard(u, s), experiment.eppo_shard(u, s, t),
           experiment.statsig_bucket(u, s),
           experiment.growthbook_hash(s, u, 1), experiment.growthbook_hash(s, u, 2),
           experiment.unit_hash('sha256', s, u), experiment.unit_hash('eppo', s, u),
           experiment.unit_hash('statsig', s, u), experiment.unit_hash('growthbook_v1', s, u),
           experiment.unit_hash('growthbook_v2', s, u)
    FROM unnest(%s::text[], %s::text[], %s::int[]) WITH ORDINALITY AS x(u, s, t, i)
    ORDER BY i""", (ids, salts, totals))
rows = cur.fetchall()
ck.check(len(rows) == len(ids), "row count")
mism = {k: 0 for k in ["bucket", "eppo", "eppo_total", "statsig", "gb1", "gb2",
                       "uh_sha256", "uh_eppo", "uh_statsig", "uh_gb1", "uh_gb2"]}
for (u, s, t), r in zip(zip(ids, salts, totals), rows):
    b, e, et, st = py_bucket(u, s), py_eppo(u, s), py_eppo(u, s, t), py_statsig(u, s)
    g1, g2 = py_growthbook(s, u, 1), py_growthbook(s, u, 2)
    want = [b, e, et, st, g1, g2, b / 10000, e / 10000, st / 10000, g1, g2]
    for k, got, w in zip(mism, r, want):
        if got != w:
            if mism[k] < 3:
                print("mismatch %s: unit=%r salt=%r got %r want %r" % (k, u, s, got, w))
            mism[k] += 1
for k, v in mism.items():
    ck.check(v == 0, "%s: %d of %d differ" % (k, v, len(ids)))
print("compared %d ids x %d functions with hashlib/UTF-16 oracles" % (len(ids), len(mism)))

# The boundary rule of doc/hashing.md: B_i = 10000 * cumsum, snapped to an
# integer within 1e-6; variant i owns B_{i-1} <= bucket < B_i.


def py_bounds(allocs):
    out, cum = [], 0.0
    for a in allocs:
        cum += a
        b = 10000 * cum
        r = round(b)
        out.append(float(r) if abs(b - r) < 1e-6 else b)
    return out


def py_assign(bucket, names, allocs):
    for name, bound in zip(names, py_bounds(allocs)):
        if bucket < bound:
            return name
    return None


N = 100000
units = ["u%07d" % i for i in range(N)]
splits = [
    ("exp-5050", ["control", "treatment"], [0.5, 0.5]),
    ("exp-3way", ["a", "b", "c"], [0.2, 0.3, 0.5]),
    ("exp-thirds", ["x", "y", "z"], [1 / 3, 1 / 3, 1 / 3]),
    ("exp-partial", ["control", "treatment"], [0.1, 0.19]),       # 29% enrolled, rest NULL
]
for exp_id, names, allocs in splits:
    variants = json.dumps([{"name": n, "allocation": a} for n, a in zip(names, allocs)])
    cur.execute("""
        SELECT experiment.assign_variant(u, %s, %s::jsonb),
               experiment.assign_variant(u, %s, %s::text[], %s::float8[])
        FROM unnest(%s::text[]) WITH ORDINALITY AS x(u, i) ORDER BY i""",
                (exp_id, variants, exp_id, names, allocs, units))
    got = cur.fetchall()
    want = [py_assign(py_bucket(u, exp_id), names, allocs) for u in units]
    bad_j = sum(1 for g, w in zip(got, want) if g[0] != w)
    bad_a = sum(1 for g, w in zip(got, want) if g[1] != w)
    ck.check(bad_j == 0, "%s: jsonb form differs from the Python rule for %d units" % (exp_id, bad_j))
    ck.check(bad_a == 0, "%s: array form differs from the Python rule for %d units" % (exp_id, bad_a))
    # chi-squared balance: categories are the variants plus "not enrolled"
    cats = names + ([None] if sum(allocs) < 1 - 1e-9 else [])
    shares = list(allocs) + ([1 - sum(allocs)] if None in cats else [])
    observed = [sum(1 for g in got if g[0] == c) for c in cats]
    expected = [N * p for p in shares]
    chi2, p = stats.chisquare(observed, expected)
    print("%s: observed %s expected %s chi2=%.3f p=%.4f" % (exp_id, observed,
                                                           [round(e) for e in expected], chi2, p))
    ck.check(p > 0.001, "%s: chi-squared p = %.5f <= 0.001" % (exp_id, p))
    ck.check(not math.isnan(p), "%s: p is a number" % exp_id)

conn.close()

# A LATIN1 database: non-ASCII text is converted to UTF-8 before hashing, so
# the buckets are those of the UTF-8 bytes, as in a UTF-8 database.
admin = psycopg2.connect(dbname="postgres")
admin.autocommit = True
acur = admin.cursor()
acur.execute("DROP DATABASE IF EXISTS exp_test_hash_latin1 WITH (FORCE)")
acur.execute("CREATE DATABASE exp_test_hash_latin1 ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' "
             "TEMPLATE template0")
lconn = psycopg2.connect(dbname="exp_test_hash_latin1")
lconn.autocommit = True
lcur = lconn.cursor()
lcur.execute("CREATE EXTENSION experiment")
latin_ids = ["user-%d-%s" % (i, "".join(rng.choice("äöüßéèçñÅØ¿abc") for _ in range(i % 9)))
             for i in range(2000)]
lcur.execute("""SELECT experiment.bucket(u, 'exp-é'), experiment.eppo_shard(u, 'exp-é'),
                       experiment.statsig_bucket(u, 'exp-é'), experiment.growthbook_hash('exp-é', u, 2)
                FROM unnest(%s::text[]) WITH ORDINALITY AS x(u, i) ORDER BY i""", (latin_ids,))
bad = sum(1 for u, r in zip(latin_ids, lcur.fetchall())
          if r != (py_bucket(u, "exp-é"), py_eppo(u, "exp-é"), py_statsig(u, "exp-é"),
                   py_growthbook("exp-é", u, 2)))
ck.check(bad == 0, "LATIN1 database: %d of %d ids hash differently from UTF-8" % (bad, len(latin_ids)))
print("LATIN1 database: %d ids with non-ASCII text, %d differ" % (len(latin_ids), bad))
lconn.close()
acur.execute("DROP DATABASE exp_test_hash_latin1 WITH (FORCE)")
admin.close()
ck.report()
