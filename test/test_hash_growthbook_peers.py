#!/usr/bin/python3
"""GrowthBook compatibility: every row of the `hash`, `getBucketRange`,
`chooseVariation` and `inNamespace` sections of GrowthBook's cross-SDK test
cases (../shared/peers/growthbook-cases.json) against experiment.growthbook_hash,
growthbook_bucket_ranges, growthbook_choose_variation and growthbook_in_namespace.

Comparisons follow the SDK's own test runner (packages/sdk-js/test/json.test.ts):
hash, chooseVariation and inNamespace exactly; bucket ranges after
floor(x * 1e8) / 1e8 on both sides.
"""
import json
import math
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from exptest import PEERS_DIR, Checker, fresh_db, skip  # noqa: E402

path = os.path.join(PEERS_DIR, "growthbook-cases.json")
if not os.path.exists(path):
    skip("%s is absent (GrowthBook's cross-SDK test cases)" % path)
with open(path) as f:
    cases = json.load(f)

ck = Checker("test_hash_growthbook_peers")
conn = fresh_db("exp_test_hash_growthbook_peers")
cur = conn.cursor()
counts = {}


def rnd(x):
    return math.floor(x * 1e8) / 1e8


# hash: [seed, value, version, expected]
for seed, value, version, expected in cases["hash"]:
    cur.execute("SELECT experiment.growthbook_hash(%s, %s, %s)", (seed, value, version))
    got = cur.fetchone()[0]
    ck.check(got == expected, "hash(%r, %r, %r): got %r, want %r" % (seed, value, version, got, expected))
counts["hash"] = len(cases["hash"])

# getBucketRange: [name, [numVariations, coverage, weights|null], expected ranges]
for name, (nvar, coverage, weights), expected in cases["getBucketRange"]:
    cur.execute("SELECT experiment.growthbook_bucket_ranges(%s, %s::float8, %s::float8[])",
                (nvar, coverage, weights))
    got = cur.fetchone()[0]
    got_r = [[rnd(x) for x in pair] for pair in (got or [])]
    want_r = [[rnd(x) for x in pair] for pair in expected]
    ck.check(got_r == want_r, "getBucketRange %s: got %r, want %r" % (name, got, expected))
counts["getBucketRange"] = len(cases["getBucketRange"])

# chooseVariation: [name, n, ranges, expected]
for name, n, ranges, expected in cases["chooseVariation"]:
    cur.execute("SELECT experiment.growthbook_choose_variation(%s::float8, %s::float8[])",
                (n, ranges))
    got = cur.fetchone()[0]
    ck.check(got == expected, "chooseVariation %s: got %r, want %r" % (name, got, expected))
counts["chooseVariation"] = len(cases["chooseVariation"])

# inNamespace: [name, id, [namespace, start, end], expected]
for name, unit, (ns, start, end), expected in cases["inNamespace"]:
    cur.execute("SELECT experiment.growthbook_in_namespace(%s, %s, %s, %s)", (unit, ns, start, end))
    got = cur.fetchone()[0]
    ck.check(got == expected, "inNamespace %s: got %r, want %r" % (name, got, expected))
counts["inNamespace"] = len(cases["inNamespace"])

# chooseVariation over the ranges our own getBucketRanges builds, so that the
# two functions are checked together on every getBucketRange row
for name, (nvar, coverage, weights), expected in cases["getBucketRange"]:
    for n in (0.0, 0.03, 0.1, 0.2, 0.25, 0.26, 0.3, 0.5, 0.55, 0.6, 0.75, 0.9, 0.9999, 0.99999):
        # the expected ranges are rounded to 1e-8; probe away from their ends
        if any(abs(n - x) < 1e-7 and x != 0 for pair in expected for x in pair):
            continue
        cur.execute("""SELECT experiment.growthbook_choose_variation(%s::float8,
                         experiment.growthbook_bucket_ranges(%s, %s::float8, %s::float8[]))""",
                    (n, nvar, coverage, weights))
        got = cur.fetchone()[0]
        want = next((i for i, (a, b) in enumerate(expected) if a <= n < b), -1)
        ck.check(got == want, "choose(%r, ranges of %s): got %r, want %r" % (n, name, got, want))

print("GrowthBook cases (spec %s): %s" % (cases.get("specVersion"),
                                          ", ".join("%s %d" % kv for kv in counts.items())))
conn.close()
ck.report()
