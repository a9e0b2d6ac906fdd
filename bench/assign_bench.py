#!/usr/bin/python3
"""Benchmark: experiment.assign_variant against the same assignment in plain SQL.

Over N units (default 2,000,000; `assign_bench.py N` to change), in one
session, RUNS rounds (default 5) each run every query once; per-row costs and
ratios are computed within a round and the median over rounds is reported
(robust to load changing on a shared machine).  Compared:

  bare scan         SELECT count(id) FROM units
  assign_variant    the C function (jsonb and array forms), and bucket() alone
  plain SQL sha256  the same bucket from the built-in sha256(): Horner's rule
                    mod 10000 over the eight 32-bit words of the hex digest,
                    then the same 50/50 split (verified equal to bucket() and
                    assign_variant() on every unit before timing), and the
                    same words read with get_byte() from the raw digest
  sha256() alone    the digest of every salted id, nothing else
  hashtext          the built-in, non-cryptographic hashtext() mod 10000
  other schemes     growthbook_hash v2, eppo_shard, statsig_bucket, unit_hash

and printed: the median time, the per-row cost above the bare scan, and the
ratio of assign_variant's per-row cost to the fastest plain-SQL form of the
same bucket (the hex-and-bit-cast expression or get_byte on the raw digest,
per round; target: at most 1/10) and to sha256() alone.  Three sets of ids:
short ASCII, non-ASCII (multibyte UTF-8) and long (over 100 bytes).  Parallel query and JIT are off so that per-row costs
are those of one backend.  Needs PGHOST/PGPORT/PGUSER of a cluster with the
extension installed; uses (and drops) the database exp_bench_assign.
"""
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "test", "lib"))
from exptest import fresh_db  # noqa: E402

N = int(sys.argv[1]) if len(sys.argv) > 1 else 2000000
RUNS = int(os.environ.get("RUNS", "5"))
SALT = "exp-bench"
VARIANTS = '[{"name": "control", "allocation": 0.5}, {"name": "treatment", "allocation": 0.5}]'


def horner(h):
    """bucket in plain SQL from hex digest h: r <- (r * 2^32 + w_k) % 10000."""
    expr = "0::bigint"
    for k in range(8):
        w = "('x' || substr(%s, %d, 8))::bit(32)::bigint" % (h, 8 * k + 1)
        expr = "((%s) * 4294967296 + %s) %% 10000" % (expr, w)
    return expr


DIGEST = ("SELECT id, encode(sha256(convert_to('%s' || ':' || id, 'UTF8')), 'hex') AS h "
          "FROM units OFFSET 0" % SALT)
PLAIN_BUCKET = horner("h")


def horner_bytes(d):
    """the same bucket from the raw digest d with get_byte (the fastest plain-SQL form found)."""
    expr = "0::bigint"
    for k in range(8):
        w = " + ".join("(get_byte(%s, %d)::bigint << %d)" % (d, 4 * k + j, 24 - 8 * j) for j in range(4))
        expr = "((%s) * 4294967296 + (%s)) %% 10000" % (expr, w)
    return expr


RAW = "SELECT id, sha256(convert_to('%s' || ':' || id, 'UTF8')) AS d FROM units OFFSET 0" % SALT
BYTES_BUCKET = horner_bytes("d")
BYTES_ASSIGN = "CASE WHEN %s < 5000 THEN 'control' ELSE 'treatment' END" % BYTES_BUCKET
PLAIN_ASSIGN = "CASE WHEN %s < 5000 THEN 'control' ELSE 'treatment' END" % PLAIN_BUCKET

QUERIES = [
    ("bare scan", "SELECT count(id) FROM units"),
    ("assign_variant (jsonb)",
     "SELECT count(experiment.assign_variant(id, '%s', '%s'::jsonb)) FROM units" % (SALT, VARIANTS)),
    ("assign_variant (arrays)",
     "SELECT count(experiment.assign_variant(id, '%s', '{control,treatment}'::text[], "
     "'{0.5,0.5}'::float8[])) FROM units" % SALT),
    ("bucket", "SELECT count(experiment.bucket(id, '%s')) FROM units" % SALT),
    ("plain SQL sha256 assignment", "SELECT count(%s) FROM (%s) d" % (PLAIN_ASSIGN, DIGEST)),
    ("plain SQL sha256 get_byte", "SELECT count(%s) FROM (%s) r" % (BYTES_ASSIGN, RAW)),
    ("sha256() alone", "SELECT count(sha256(convert_to('%s' || ':' || id, 'UTF8'))) FROM units" % SALT),
    ("hashtext assignment",
     "SELECT count(CASE WHEN abs(hashtext('%s:' || id)::bigint) %% 10000 < 5000 "
     "THEN 'control' ELSE 'treatment' END) FROM units" % SALT),
    ("growthbook_hash v2", "SELECT count(experiment.growthbook_hash('%s', id, 2)) FROM units" % SALT),
    ("eppo_shard", "SELECT count(experiment.eppo_shard(id, '%s')) FROM units" % SALT),
    ("statsig_bucket", "SELECT count(experiment.statsig_bucket(id, '%s')) FROM units" % SALT),
    ("unit_hash('sha256')", "SELECT count(experiment.unit_hash('sha256', '%s', id)) FROM units" % SALT),
]


ID_SETS = [
    ("ASCII ids ('user-N')", "'user-' || g"),
    ("non-ASCII ids ('usér-日本-N')", "'usér-日本-' || g"),
    ("long ids (100 bytes + N)", "repeat('x', 100) || g"),
]


def run_set(cur, label, expr):
    cur.execute("DROP TABLE IF EXISTS units")
    print("== %s: creating %d units ..." % (label, N), flush=True)
    cur.execute("CREATE TABLE units AS SELECT %s AS id FROM generate_series(1, %%s) g" % expr, (N,))
    cur.execute("VACUUM ANALYZE units")

    # the plain-SQL buckets are the same bucket, and the split the same split, on every unit
    cur.execute("""SELECT count(*) FILTER (WHERE %s <> experiment.bucket(id, '%s')),
                          count(*) FILTER (WHERE %s <> experiment.assign_variant(id, '%s', '%s'::jsonb))
                   FROM (%s) d""" % (PLAIN_BUCKET, SALT, PLAIN_ASSIGN, SALT, VARIANTS, DIGEST))
    bad_bucket, bad_assign = cur.fetchone()
    cur.execute("""SELECT count(*) FILTER (WHERE %s <> experiment.bucket(id, '%s')) FROM (%s) r"""
                % (BYTES_BUCKET, SALT, RAW))
    bad_bytes = cur.fetchone()[0]
    print("verification over %d units: hex plain-SQL bucket != bucket(): %d, get_byte bucket != bucket(): %d, "
          "plain-SQL variant != assign_variant(): %d" % (N, bad_bucket, bad_bytes, bad_assign))
    if bad_bucket or bad_assign or bad_bytes:
        print("plain SQL and the C functions disagree; not timing")
        sys.exit(1)
    # every query runs in this backend alone: no Gather in any plan
    parallel = []
    for name, q in QUERIES:
        cur.execute("EXPLAIN " + q)
        if any("Gather" in r[0] for r in cur.fetchall()):
            parallel.append(name)
    print("parallel plans: %s" % (", ".join(parallel) or "none (max_parallel_workers_per_gather = 0)"))

    # Rounds: every round runs every query once, in turn, so that a change of
    # load on a shared machine hits all queries of a round alike; per-row costs
    # and ratios are taken within a round, then the median over rounds.
    for name, q in QUERIES:     # warm-up
        cur.execute(q)
        cur.fetchall()
    times = {name: [] for name, _ in QUERIES}
    for r in range(RUNS):
        for name, q in QUERIES:
            t0 = time.perf_counter()
            cur.execute(q)
            cur.fetchall()
            times[name].append(time.perf_counter() - t0)

    def per_row(name, r):
        return (times[name][r] - times["bare scan"][r]) / N * 1e9

    print("%d units, %d rounds; median time, and median per-row cost above the bare scan:" % (N, RUNS))
    for name, _ in QUERIES:
        med = statistics.median(times[name])
        if name == "bare scan":
            print("  %-30s %9.1f ms" % (name, med * 1e3))
        else:
            print("  %-30s %9.1f ms %9.1f ns/row" % (
                name, med * 1e3, statistics.median(per_row(name, r) for r in range(RUNS))))

    def fastest_plain(r):
        return min(per_row("plain SQL sha256 assignment", r), per_row("plain SQL sha256 get_byte", r))

    ratios = {}
    for name in ("assign_variant (jsonb)", "assign_variant (arrays)", "bucket", "hashtext assignment"):
        rs = [per_row(name, r) / fastest_plain(r) for r in range(RUNS)]
        ratios[name] = statistics.median(rs)
        print("ratio %-24s / fastest plain SQL = %.3f  (rounds: %s)" % (
            name, ratios[name], ", ".join("%.3f" % x for x in rs)))
    rs = [per_row("assign_variant (jsonb)", r) / per_row("sha256() alone", r) for r in range(RUNS)]
    print("ratio assign_variant (jsonb)   / sha256() alone   = %.3f" % statistics.median(rs))
    ratio = ratios["assign_variant (jsonb)"]
    print("target (assign_variant per-row cost <= 1/10 of the fastest plain SQL): %s (%.1fx cheaper)" % (
        "met" if ratio <= 0.1 else "NOT met", 1 / ratio if ratio > 0 else float("inf")))
    print()


def main():
    conn = fresh_db("exp_bench_assign")
    cur = conn.cursor()
    cur.execute("SET max_parallel_workers_per_gather = 0")
    cur.execute("SET jit = off")
    for label, expr in ID_SETS:
        run_set(cur, label, expr)
    conn.close()
    admin = fresh_db.__globals__["psycopg2"].connect(dbname="postgres")
    admin.autocommit = True
    admin.cursor().execute("DROP DATABASE IF EXISTS exp_bench_assign")
    admin.close()


if __name__ == "__main__":
    main()
