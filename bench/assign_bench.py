#!/usr/bin/python3
"""Benchmark: experiment.assign_variant against the same assignment in plain SQL.

    /usr/bin/python3 bench/assign_bench.py [N]      (N units, default 1,000,000)

Needs PGHOST/PGPORT/PGUSER of a cluster with the extension installed; uses (and
drops) the database exp_bench_assign.  RUNS=R in the environment sets the number
of rounds (default 5).  Asserts nothing: it prints times and ratios.

For each of three sets of ids (short ASCII 'user-N', non-ASCII 'usér-日本-N' of
multibyte UTF-8, long: 100 bytes and the number, two SHA-256 blocks) it builds a
fresh table (never one left from an earlier run), checks that every plain-SQL
bucket equals bucket() and every plain-SQL split equals assign_variant() on
every unit, prints whether each plan is parallel (the session sets
max_parallel_workers_per_gather = 0 and jit = off: every query runs in one
backend), and then runs RUNS rounds, each round every query once in turn, so
that a change of load on a shared machine weighs on all queries of a round
alike.  Per-row costs (above the bare scan of the same round) and their ratios
are taken within each round; the medians over the rounds are reported, never
the best round.

Two clocks: the elapsed time seen by the client, and the CPU time of the
backend that ran the query (the first field of /proc/<pid>/schedstat, in ns;
only when the server runs on this machine).  On a busy machine the elapsed time
includes the time the backend waited for a CPU; its CPU time does not, so the
ratios are given on both and the target is judged on CPU time when it is
available.

Compared, like with like:
  assign_variant (jsonb, arrays) and the plain-SQL split (CASE on the bucket)
  bucket()                       and the plain-SQL bucket alone
  assign_variant                 and sha256() alone on the same salted ids
The plain-SQL bucket is computed from the built-in sha256() in four ways, and
the fastest of them in each round is the baseline: Horner's rule over the hex
digest (what earlier versions of this script compared with), Horner's rule over
the raw digest with get_byte(), and the sum of get_byte(d, j) * (256^(31-j) mod
10000) over the 32 bytes (int4 arithmetic, one reduction) with the salted id
made bytes by convert_to(..., 'UTF8') or, in a UTF-8 database, textsend().
hashtext() and the other schemes' functions are shown for reference.
"""
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "test", "lib"))
from exptest import fresh_db  # noqa: E402

N = int(sys.argv[1]) if len(sys.argv) > 1 else 1000000
RUNS = int(os.environ.get("RUNS", "5"))
SALT = "exp-bench"
VARIANTS = '[{"name": "control", "allocation": 0.5}, {"name": "treatment", "allocation": 0.5}]'
TARGET = 0.1

ID_SETS = [
    ("ASCII ids ('user-N')", "'user-' || g"),
    ("non-ASCII ids ('usér-日本-N')", "'usér-日本-' || g"),
    ("long ids (100 bytes + N)", "repeat('x', 100) || g"),
]


def horner_hex(h):
    """bucket from hex digest h: r <- (r * 2^32 + w_k) % 10000 over the eight 32-bit words."""
    expr = "0::bigint"
    for k in range(8):
        w = "('x' || substr(%s, %d, 8))::bit(32)::bigint" % (h, 8 * k + 1)
        expr = "((%s) * 4294967296 + %s) %% 10000" % (expr, w)
    return expr


def horner_bytes(d):
    """the same from the raw digest d, words from get_byte()."""
    expr = "0::bigint"
    for k in range(8):
        w = " + ".join("(get_byte(%s, %d)::bigint << %d)" % (d, 4 * k + j, 24 - 8 * j) for j in range(4))
        expr = "((%s) * 4294967296 + (%s)) %% 10000" % (expr, w)
    return expr


def weighted_bytes(d):
    """sum_j byte_j * (256^(31-j) mod 10000), mod 10000: below 2^27, int4 arithmetic."""
    return "(%s) %% 10000" % " + ".join("get_byte(%s, %d) * %d" % (d, j, pow(256, 31 - j, 10000))
                                         for j in range(32))


def split(bucket):
    return "CASE WHEN %s < 5000 THEN 'control' ELSE 'treatment' END" % bucket


CONVERT = "convert_to('%s' || ':' || id, 'UTF8')" % SALT
TEXTSEND = "textsend('%s' || ':' || id)" % SALT


def digest_from(to_bytes, hexed=False):
    d = "sha256(%s)" % to_bytes
    if hexed:
        d = "encode(%s, 'hex')" % d
    return "SELECT id, %s AS d FROM units OFFSET 0" % d


# name -> (plain-SQL bucket expression over column d, subquery producing d)
PLAIN_FORMS = {
    "hex digest, Horner": (horner_hex("d"), digest_from(CONVERT, hexed=True)),
    "get_byte, Horner": (horner_bytes("d"), digest_from(CONVERT)),
    "get_byte, weighted sum": (weighted_bytes("d"), digest_from(CONVERT)),
    "get_byte, weighted sum, textsend": (weighted_bytes("d"), digest_from(TEXTSEND)),
}


def queries(utf8):
    q = [
        ("bare scan", "SELECT count(id) FROM units"),
        ("assign_variant (jsonb)",
         "SELECT count(experiment.assign_variant(id, '%s', '%s'::jsonb)) FROM units" % (SALT, VARIANTS)),
        ("assign_variant (arrays)",
         "SELECT count(experiment.assign_variant(id, '%s', '{control,treatment}'::text[], "
         "'{0.5,0.5}'::float8[])) FROM units" % SALT),
        ("bucket", "SELECT count(experiment.bucket(id, '%s')) FROM units" % SALT),
    ]
    for name, (expr, sub) in PLAIN_FORMS.items():
        if "textsend" in name and not utf8:
            continue
        q.append(("plain split: " + name, "SELECT count(%s) FROM (%s) r" % (split(expr), sub)))
    fastest_bucket = "get_byte, weighted sum, textsend" if utf8 else "get_byte, weighted sum"
    expr, sub = PLAIN_FORMS[fastest_bucket]
    q.append(("plain bucket: " + fastest_bucket, "SELECT count(%s) FROM (%s) r" % (expr, sub)))
    if fastest_bucket != "get_byte, weighted sum":
        expr, sub = PLAIN_FORMS["get_byte, weighted sum"]
        q.append(("plain bucket: get_byte, weighted sum", "SELECT count(%s) FROM (%s) r" % (expr, sub)))
    q.append(("sha256() alone, convert_to", "SELECT count(sha256(%s)) FROM units" % CONVERT))
    if utf8:
        q.append(("sha256() alone, textsend", "SELECT count(sha256(%s)) FROM units" % TEXTSEND))
    q += [
        ("hashtext split",
         "SELECT count(CASE WHEN abs(hashtext('%s:' || id)::bigint) %% 10000 < 5000 "
         "THEN 'control' ELSE 'treatment' END) FROM units" % SALT),
        ("growthbook_hash v2", "SELECT count(experiment.growthbook_hash('%s', id, 2)) FROM units" % SALT),
        ("eppo_shard", "SELECT count(experiment.eppo_shard(id, '%s')) FROM units" % SALT),
        ("statsig_bucket", "SELECT count(experiment.statsig_bucket(id, '%s')) FROM units" % SALT),
        ("unit_hash('sha256')", "SELECT count(experiment.unit_hash('sha256', '%s', id)) FROM units" % SALT),
    ]
    return q


def workers_planned(plan):
    """the most workers any Gather of a JSON plan plans, 0 without one"""
    best = plan.get("Workers Planned", 0)
    for sub in plan.get("Plans", []):
        best = max(best, workers_planned(sub))
    return best


def backend_cpu_reader(cur):
    """a function returning the backend's CPU time in seconds, or None if the
    backend's /proc entry cannot be read (server on another machine)"""
    cur.execute("SELECT pg_backend_pid()")
    path = "/proc/%d/schedstat" % cur.fetchone()[0]
    try:
        with open(path) as f:
            int(f.read().split()[0])
        with open(os.path.dirname(path) + "/cmdline", "rb") as f:
            if not f.read().startswith(b"postgres"):
                return None
    except (OSError, ValueError, IndexError):
        return None

    def read():
        with open(path) as f:
            return int(f.read().split()[0]) / 1e9
    return read


def run_set(cur, label, expr, utf8, cpu):
    cur.execute("DROP TABLE IF EXISTS units")
    print("== %s: creating %d units ..." % (label, N), flush=True)
    cur.execute("CREATE TABLE units AS SELECT %s AS id FROM generate_series(1, %%s) g" % expr, (N,))
    cur.execute("VACUUM ANALYZE units")
    cur.execute("SELECT count(*), min(octet_length(id)), max(octet_length(id)) FROM units")
    n, lo, hi = cur.fetchone()
    print("table built now: %d rows, ids of %d to %d bytes (salted: %d to %d)"
          % (n, lo, hi, lo + len(SALT) + 1, hi + len(SALT) + 1))

    # every plain-SQL bucket is bucket(), the plain-SQL split is assign_variant(), on every unit
    bad = []
    for name, (bexpr, sub) in PLAIN_FORMS.items():
        if "textsend" in name and not utf8:
            continue
        cur.execute("""SELECT count(*) FILTER (WHERE %s <> experiment.bucket(id, '%s')),
                              count(*) FILTER (WHERE %s <> experiment.assign_variant(id, '%s', '%s'::jsonb))
                       FROM (%s) r""" % (bexpr, SALT, split(bexpr), SALT, VARIANTS, sub))
        nb, na = cur.fetchone()
        print("verified on %d units: plain SQL (%s) bucket != bucket(): %d, split != assign_variant(): %d"
              % (N, name, nb, na))
        if nb or na:
            bad.append(name)
    if bad:
        print("plain SQL and the C functions disagree (%s); not timing" % ", ".join(bad))
        sys.exit(1)

    qs = queries(utf8)
    parallel = []
    for name, q in qs:
        cur.execute("EXPLAIN (FORMAT JSON) " + q)
        w = workers_planned(cur.fetchone()[0][0]["Plan"])
        if w:
            parallel.append("%s (%d workers)" % (name, w))
    print("parallel plans: %s" % (", ".join(parallel) or
                                  "none: every query, the baselines included, ran serially in one backend"))

    for _, q in qs:     # warm-up
        cur.execute(q)
        cur.fetchall()
    wall = {name: [] for name, _ in qs}
    cput = {name: [] for name, _ in qs}
    for _ in range(RUNS):
        for name, q in qs:
            c0 = cpu() if cpu else 0.0
            t0 = time.perf_counter()
            cur.execute(q)
            cur.fetchall()
            wall[name].append(time.perf_counter() - t0)
            cput[name].append((cpu() - c0) if cpu else float("nan"))

    clocks = [("cpu", cput), ("elapsed", wall)] if cpu else [("elapsed", wall)]

    def per_row(times, name, r):
        return (times[name][r] - times["bare scan"][r]) / N * 1e9

    print("%d units, %d rounds; medians of the rounds; per row: above the bare scan of the same round" % (N, RUNS))
    if cpu:
        print("  %-44s %10s %10s %12s %14s" % ("query", "cpu ms", "elapsed ms", "cpu ns/row", "elapsed ns/row"))
    else:
        print("  %-44s %10s %14s" % ("query", "elapsed ms", "elapsed ns/row"))
    for name, _ in qs:
        cells = []
        if cpu:
            cells.append("%10.1f" % (statistics.median(cput[name]) * 1e3))
        cells.append("%10.1f" % (statistics.median(wall[name]) * 1e3))
        if name != "bare scan":
            for _, times in clocks:
                cells.append("%12.1f" % statistics.median(per_row(times, name, r) for r in range(RUNS)))
        print("  %-44s %s" % (name, " ".join(cells)))

    splits = [name for name, _ in qs if name.startswith("plain split: ")]
    buckets = [name for name, _ in qs if name.startswith("plain bucket: ")]
    shas = [name for name, _ in qs if name.startswith("sha256() alone")]
    result = {}
    for clock, times in clocks:
        def fastest(names, r):
            return min(per_row(times, nm, r) for nm in names)

        winners = [min(splits, key=lambda nm: per_row(times, nm, r)) for r in range(RUNS)]
        print("%s: fastest plain-SQL split per round: %s" % (
            clock, ", ".join(sorted(set("%s (%d of %d)" % (w, winners.count(w), RUNS) for w in winners)))))
        for name, base, what in (("assign_variant (jsonb)", splits, "fastest plain-SQL split"),
                                 ("assign_variant (arrays)", splits, "fastest plain-SQL split"),
                                 ("bucket", buckets, "fastest plain-SQL bucket"),
                                 ("assign_variant (jsonb)", shas, "sha256() alone"),
                                 ("hashtext split", splits, "fastest plain-SQL split")):
            rs = [per_row(times, name, r) / fastest(base, r) for r in range(RUNS)]
            med = statistics.median(rs)
            result[(clock, name, what)] = med
            print("%s: %-24s / %-26s = %.3f  (rounds %s)" % (
                clock, name, what, med, " ".join("%.3f" % x for x in rs)))
    clock = clocks[0][0]
    ratio = result[(clock, "assign_variant (jsonb)", "fastest plain-SQL split")]
    print("target (%s): assign_variant per-row cost <= %.1f x the fastest plain SQL: %s (%.3f, %.1fx cheaper)" % (
        clock, TARGET, "met" if ratio <= TARGET else "NOT met", ratio, 1 / ratio if ratio > 0 else float("inf")))
    print(json.dumps({"ids": label, "n": N, "rounds": RUNS,
                      "ratios": {"%s %s / %s" % k: round(v, 4) for k, v in result.items()}}), flush=True)
    print()


def main():
    conn = fresh_db("exp_bench_assign")
    cur = conn.cursor()
    cur.execute("SET max_parallel_workers_per_gather = 0")
    cur.execute("SET jit = off")
    cur.execute("SELECT current_setting('server_encoding') = 'UTF8'")
    utf8 = cur.fetchone()[0]
    cur.execute("SELECT version()")
    print(cur.fetchone()[0])
    cpu = backend_cpu_reader(cur)
    print("clocks: %s; server encoding UTF8: %s" % (
        "backend CPU time (/proc/<pid>/schedstat) and elapsed time" if cpu else
        "elapsed time only (the server's /proc is not readable here)", utf8))
    for label, expr in ID_SETS:
        run_set(cur, label, expr, utf8, cpu)
    conn.close()
    admin = fresh_db.__globals__["psycopg2"].connect(dbname="postgres")
    admin.autocommit = True
    admin.cursor().execute("DROP DATABASE IF EXISTS exp_bench_assign")
    admin.close()


if __name__ == "__main__":
    main()
