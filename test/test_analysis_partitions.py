"""A refresh within a tiny experiment.refresh_memory (many unit-hash partitions,
each scanned apart) equals the refresh without a bound.

Random sequences of changes as in test_analysis_incremental.py: new units,
events of known, unknown and not-yet-exposed units (NaN values among them),
units exposed to a second variant, units exposed earlier than their first
exposure, time passing so that windows close; two sources (one a view with a
timestamp column and a calendar window), sum with a winsorization cap and a
CUPED lookback, max with negative values, count with a delay, any, a ratio,
an event quantile (per-unit sketches) and a dimension. At every step, full and
incremental, the same refresh runs twice from the same stored state: once
with experiment.refresh_memory = 0 (one partition) in a transaction that is
rolled back, once with a bound of a few kB (committed). Then

- the stored per-unit values are identical, row by row and column by column
  (compared as text: every float digit, every sketch);
- the unbounded refresh used one partition and the bounded one several
  (experiment.refreshes.unit_partitions), in every sequence some of them
  empty;
- every per-variant moment, CUPED moment, cap, skipped count, test and count
  equals the unbounded one: counts exactly, numbers to 1e-12 relative (plus
  1e-12 absolute), since the stored rows are in another physical order and the
  moments of the units are merged in that order.

aa_test() within 16 kB gives the simulations it gives without a bound (counts
exactly, rates and KS statistics to 1e-9). Then experiment.unit_value_partitions()
against a reimplementation of its formula over a grid of sizes and bounds, its
argument errors (22023), and the setting's default and range.
"""
import json
import math
import os
import random
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from exptest import Checker, fresh_db, numbers  # noqa: E402

import psycopg2  # noqa: E402

ck = Checker("test_analysis_partitions")
conn = fresh_db("exp_analysis_partitions")
cur = conn.cursor()
REL = 1e-12
BASE = "2025-03-01 00:00:00+00"
HOUR = 3600


def q(sql, args=None):
    cur.execute(sql, args)
    return cur.fetchall() if cur.description else None


def same(a, b, what):
    """a and b (JSON values) equal: integers exactly, floats to REL relative (+1e-12)"""
    fa, fb = list(numbers(a)), list(numbers(b))
    if [p for p, _ in fa] != [p for p, _ in fb]:
        return ck.check(False, "%s: shapes differ: %r vs %r" % (what, a, b))
    for (p, x), (_, y) in zip(fa, fb):
        if isinstance(x, float) or isinstance(y, float):
            if math.isnan(x) or math.isnan(y):
                ok = math.isnan(x) and math.isnan(y)
            else:
                ok = abs(x - y) <= REL * max(abs(x), abs(y)) + 1e-12
            if not ok:
                return ck.check(False, "%s%s: bounded %r, unbounded %r" % (what, p, x, y))
        elif x != y:
            return ck.check(False, "%s%s: bounded %r, unbounded %r" % (what, p, x, y))
    return ck.check(True, what)


def stored_rows(exp):
    rel = q("SELECT relation FROM experiment.unit_value_tables WHERE experiment_id = %s", (exp,))[0][0]
    return q("SELECT u.unit_id, u::text FROM experiment.%s u ORDER BY u.unit_id COLLATE \"C\"" % rel)


def snapshot(exp):
    vs = q("""SELECT json_agg(json_build_object('metric', metric, 'variant', variant, 'units', units,
                                               'm', moments::text::json, 'c', cuped_moments::text::json,
                                               'cap', cap, 'cap_lower', cap_lower, 'skipped', skipped_values,
                                               'sketch', sketch::text)
                              ORDER BY metric, variant)
              FROM experiment.variant_stats WHERE experiment_id = %s""", (exp,))[0][0]
    mr = q("""SELECT json_agg(json_build_object('metric', metric, 'variant', variant, 'method', method,
                                               't', row_to_json(test), 'b', row_to_json(bound_test))
                              ORDER BY metric, variant)
              FROM experiment.metric_results WHERE experiment_id = %s""", (exp,))[0][0]
    dr = q("""SELECT json_agg(json_build_object('d', dimension, 'v', value, 'metric', metric, 'variant', variant,
                                               't', row_to_json(test)) ORDER BY dimension, value, metric, variant)
              FROM experiment.dimension_results WHERE experiment_id = %s""", (exp,))[0][0]
    en = q("""SELECT json_agg(json_build_object('variant', variant, 'units', units) ORDER BY variant)
              FROM experiment.enrollment WHERE experiment_id = %s""", (exp,))[0][0]
    rf = q("""SELECT json_build_object('enrolled', enrolled_units, 'multi', multi_variant_units,
                                       'mode', mode, 'reason', full_reason)
              FROM experiment.refreshes WHERE experiment_id = %s""", (exp,))[0][0]
    parts = q("SELECT unit_partitions FROM experiment.refreshes WHERE experiment_id = %s", (exp,))[0][0]
    return {"variant_stats": vs, "metric_results": mr, "dimension_results": dr, "enrollment": en,
            "refreshes": rf}, stored_rows(exp), parts


def refresh_both(exp, what, full, memory, tests=True):
    """the refresh without a bound (rolled back), then with the bound (kept); compared"""
    cur.execute("BEGIN")
    q("SET LOCAL experiment.refresh_memory = 0")
    q("SELECT experiment.refresh(%s, full => %s)", (exp, full))
    free, free_rows, free_parts = snapshot(exp)
    cur.execute("ROLLBACK")
    q("SET experiment.refresh_memory = %s", (memory,))
    q("SELECT experiment.refresh(%s, full => %s)", (exp, full))
    bound, bound_rows, bound_parts = snapshot(exp)
    q("RESET experiment.refresh_memory")
    ck.check(free_parts == 1, "%s: without a bound, one partition (%r)" % (what, free_parts))
    ck.check(bound_parts is not None and bound_parts > 1,
             "%s: within %s, several partitions (%r)" % (what, memory, bound_parts))
    ck.check(len(free_rows) == len(bound_rows) and len(free_rows) > 0,
             "%s: as many stored units (%d, %d)" % (what, len(bound_rows), len(free_rows)))
    diff = [(a, b) for a, b in zip(bound_rows, free_rows) if a != b]
    ck.check(not diff, "%s: stored per-unit values identical (first difference: %r)" % (what, diff[:1]))
    for k in free:
        if tests or k not in ("metric_results", "dimension_results"):
            same(bound[k], free[k], "%s: %s" % (what, k))
    return bound_parts, len(bound_rows)


q("SET client_min_messages = warning")
q("SET TimeZone = 'UTC'")
empty_partitions_seen = [False]


def run_sequence(seed, steps, memory, initial=(150, 300), tests=True):
    rnd = random.Random(seed)
    exp = "part_%d" % seed
    q("CREATE TABLE ev_%d (uid text, ts timestamptz, amount float8)" % seed)
    q("CREATE TABLE ev2_raw_%d (user_id text, at timestamp, ok boolean)" % seed)
    q("CREATE VIEW ev2_%d AS SELECT user_id, at, ok FROM ev2_raw_%d" % (seed, seed))
    ev, ev2 = "ev_%d" % seed, "ev2_%d" % seed
    q("""INSERT INTO experiment.experiments (id, name, status, start_at, end_at)
         VALUES (%s, %s, 'draft', %s::timestamptz, %s::timestamptz + interval '30 days')""", (exp, exp, BASE, BASE))
    q("""INSERT INTO experiment.variants (experiment_id, name, allocation, is_control)
         VALUES (%s, 'c', 0.5, true), (%s, 't', 0.5, false)""", (exp, exp))
    m = lambda n: "%s_%s" % (exp, n)  # noqa: E731
    q("""INSERT INTO experiment.metrics (name, source, unit_column, time_column, value_column, aggregation, kind,
                                         delay, "window", winsorize, cuped_lookback, late_events) VALUES
         (%s, %s, 'uid', 'ts', 'amount', 'sum', 'mean', '0', NULL, 0.95, '3 days', '6 hours'),
         (%s, %s, 'uid', 'ts', 'amount', 'max', 'mean', '0', '5 days', NULL, NULL, '6 hours'),
         (%s, %s, 'uid', 'ts', NULL, 'count', 'mean', '1 hour', '2 days', NULL, '1 day', '2 hours'),
         (%s, %s, 'uid', 'ts', 'amount', 'any', 'proportion', '0', '10 days', NULL, NULL, '6 hours'),
         (%s, %s, 'user_id', 'at', 'ok', 'any', 'proportion', '1 day', '1 mon', NULL, NULL, '3 hours')""",
      (m("rev"), ev, m("mx"), ev, m("cnt"), ev, m("conv"), ev, m("ret"), ev2))
    q("""INSERT INTO experiment.metrics (name, source, unit_column, time_column, value_column, aggregation,
                                         quantile, quantile_level, kind, "window", late_events)
         VALUES (%s, %s, 'uid', 'ts', 'amount', 'quantile', 0.9, 'event', 'mean', '7 days', '6 hours')""",
      (m("p90"), ev))
    q("""INSERT INTO experiment.metrics (name, kind, numerator, denominator) VALUES (%s, 'ratio', %s, %s)""",
      (m("rpc"), m("rev"), m("cnt")))
    q("""INSERT INTO experiment.experiment_metrics (experiment_id, metric, role)
         SELECT %s, n, CASE WHEN n = %s THEN 'primary' WHEN n = %s THEN 'guardrail' ELSE 'secondary' END
         FROM unnest(%s::text[]) n""",
      (exp, m("rev"), m("cnt"), [m(x) for x in ("rev", "mx", "cnt", "conv", "ret", "rpc", "p90")]))
    q("""INSERT INTO experiment.dimensions (experiment_id, name, attribute, top_n) VALUES (%s, 'client', 'client', 3)""",
      (exp,))
    q("UPDATE experiment.experiments SET status = 'running' WHERE id = %s", (exp,))

    clock = 2 * 24 * HOUR
    units = {}
    nid = [0]

    def new_unit():
        nid[0] += 1
        # long and short ids, some non-ASCII
        return ("unité-longue-%06d" % nid[0]) if nid[0] % 4 == 0 else "u%d" % nid[0]

    def expose(u, variant, t):
        q("""INSERT INTO experiment.exposures (experiment_id, unit_id, variant, exposed_at, client)
             VALUES (%s, %s, %s, %s::timestamptz + %s * interval '1 second', %s) ON CONFLICT DO NOTHING""",
          (exp, u, variant, BASE, t, rnd.choice(["ios", "android", "web", "tv", None])))

    def events(n, lo, hi):
        pool = list(units) + ["stranger%d" % i for i in range(5)] + ["later%d" % i for i in range(5)]
        rows = []
        for _ in range(n):
            r = rnd.random()
            amount = float("nan") if r < 0.02 else (None if r < 0.08 else round(rnd.uniform(-20, 80), 2))
            rows.append((rnd.choice(pool), rnd.randint(lo, hi), amount))
        q("INSERT INTO " + ev + """ SELECT u, %s::timestamptz + t * interval '1 second', a
             FROM unnest(%s::text[], %s::bigint[], %s::float8[]) AS x(u, t, a)""",
          (BASE, [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]))
        rows2 = [(rnd.choice(pool), rnd.randint(lo, hi), rnd.random() < 0.4) for _ in range(n // 3)]
        q("INSERT INTO ev2_raw_" + str(seed) + """ SELECT u, (%s::timestamptz + t * interval '1 second') AT TIME ZONE 'UTC', o
             FROM unnest(%s::text[], %s::bigint[], %s::boolean[]) AS x(u, t, o)""",
          (BASE, [r[0] for r in rows2], [r[1] for r in rows2], [r[2] for r in rows2]))

    for _ in range(rnd.randint(*initial)):
        u = new_unit()
        units[u] = (rnd.choice("ct"), rnd.randint(-12 * HOUR, clock))
        expose(u, units[u][0], units[u][1])
    events(3000, -4 * 24 * HOUR, clock)
    refresh_both(exp, "%s step 0 (first, full)" % exp, False, memory, tests)
    latest = clock
    for step in range(1, steps + 1):
        clock += rnd.choice([1, 2, 6, 12, 24, 48]) * HOUR
        for _ in range(rnd.randint(0, 60)):
            u = new_unit()
            units[u] = (rnd.choice("ct"), rnd.randint(clock - 24 * HOUR, clock))
            expose(u, units[u][0], units[u][1])
        for _ in range(rnd.randint(0, 3)):
            u = rnd.choice(list(units))
            expose(u, "t" if units[u][0] == "c" else "c", rnd.randint(units[u][1], clock))
        for _ in range(rnd.randint(0, 3)):
            u = rnd.choice(list(units))
            t = units[u][1] - rnd.randint(1, 48) * HOUR
            expose(u, units[u][0], t)
            units[u] = (units[u][0], t)
        events(rnd.randint(0, 1500), latest - 2 * HOUR + 1, clock)
        full = rnd.random() < 0.2
        parts, n = refresh_both(exp, "%s step %d (%s)" % (exp, step, "full" if full else "incremental"), full, memory,
                                tests)
        # (an empty partition: fewer partitions hold a stored unit than there are partitions)
        rel = q("SELECT relation FROM experiment.unit_value_tables WHERE experiment_id = %s", (exp,))[0][0]
        (held,), = q("SELECT count(DISTINCT (hashtext(u.unit_id) & 2147483647) %% %s) FROM experiment.%s u"
                     % (int(parts), rel))
        if held < parts:
            empty_partitions_seen[0] = True
        md = q("SELECT mode FROM experiment.refreshes WHERE experiment_id = %s", (exp,))[0][0]
        ck.check(md == ("full" if full else "incremental"), "%s step %d: mode %s" % (exp, step, md))
        latest = max(latest, clock)


run_sequence(1, 8, "64kB")
run_sequence(2, 8, "16kB")
run_sequence(3, 6, "1kB")
# few units within the smallest bound: more partitions than units, some of them empty. The
# stored values and the moments are compared; the tests are not: with 3 or 4 units in an arm
# of a dimension value, the CUPED ratio's theta is ill-conditioned, and the other order of the
# additions moves it beyond 1e-12
run_sequence(4, 2, "1kB", initial=(5, 10), tests=False)
ck.check(empty_partitions_seen[0], "some refresh had partitions without any unit")

# aa_test() reads the sources in partitions too, with the same per-unit values: the same
# simulations (counts exactly, numbers to rounding: the units are merged in another order)
AA = "SELECT json_agg(row_to_json(a) ORDER BY a.metric) FROM experiment.aa_test('part_1', 40, 5) a"
q("SET experiment.refresh_memory = 0")
aa_free = q(AA)[0][0]
q("SET experiment.refresh_memory = '16kB'")
aa_bound = q(AA)[0][0]
q("RESET experiment.refresh_memory")
ck.check(aa_free is not None and len(aa_free) >= 5, "aa_test gives its metrics (%d)" % len(aa_free or []))
REL_AA = REL
REL = 1e-9
same(aa_bound, aa_free, "aa_test within 16kB")
REL = REL_AA

# the number of partitions: one without a bound or without units, more as the units grow
q("SET experiment.refresh_memory = 0")
ck.check(q("SELECT experiment.unit_value_partitions(100000000, 8, 3, 40)")[0][0] == 1, "no bound: one partition")


def partitions_formula(units, specs, sources, key, kb, ncal=None):
    """doc/scaling.md's estimate, reimplemented: per partition the scan's hash table, sized for the
    partition's share of the units (a twentieth more with several partitions, and 1024): its slots (a power
    of two, at least two per unit it is sized for), per unit it is sized for the unit record and the
    row (calendar bounds, split-mode accumulators, the tid of an incremental scan), per unit the key
    when it is not inline; the fewest partitions that fit, found by counting up"""
    if kb <= 0 or units == 0:
        return 1
    al = lambda a, x: (x + a - 1) // a * a  # noqa: E731
    nacc = 2 * specs
    ncal = 2 * specs if ncal is None else ncal
    row = 32 + 8 * ncal + 8 * nacc + al(8, 4 * nacc + max(nacc, 1)) + 8
    budget = kb * 1024.0
    usable = max(budget * 0.75 - sources * budget / 16, budget / 4)

    def fits(p):
        share = units // p
        sized = share + (share // 20 if p > 1 else 0) + 1024
        slots = 16
        while slots < sized * 2:
            slots *= 2
        return 8 * slots + sized * row + share * (key if key > 16 else 0) <= usable

    # (from the bound of the rows alone up to one of four slots per unit and a twentieth more, which
    # is taken when even that does not fit)
    lo = max(1, math.ceil(units * (row + (key if key > 16 else 0)) / usable))
    hi = max(lo, math.ceil(units * 1.05 * (row + (key if key > 16 else 0) + 32) / usable))
    for p in range(lo, hi):
        if fits(p):
            return p
    return hi


grid = 0
for kb, setting in ((262144, "256MB"), (65536, "64MB"), (1024, "1MB"), (64, "64kB"), (1, "1kB")):
    q("SET experiment.refresh_memory = %s", (setting,))
    for units in (0, 1, 999, 1000000, 4000000, 8000000, 100000000):
        for specs, sources, key in ((4, 1, 7.0), (1, 1, 16.0), (9, 3, 17.5), (12, 6, 40.0)):
            if kb == 1 and units > 1000000:
                continue
            for ncal in (None, 0, specs):
                got = q("SELECT experiment.unit_value_partitions(%s, %s, %s, %s, %s)",
                        (units, specs, sources, key, ncal))[0][0]
                want = partitions_formula(units, specs, sources, key, kb, ncal)
                grid += ck.check(got == want, "unit_value_partitions(%d, %d, %d, %g, %s) within %s: %d, formula %d"
                                 % (units, specs, sources, key, ncal, setting, got, want))
ck.check(grid > 100, "the grid was checked (%d)" % grid)
q("SET experiment.refresh_memory = '256MB'")
p1, p4, p8 = (q("SELECT experiment.unit_value_partitions(%s, 4, 1, 7, 0)", (n,))[0][0] for n in (1000000, 4000000, 8000000))
ck.check(p1 == 1 and p4 >= 4 and p8 >= 2 * p4 - 1, "1, 4 and 8 million units in 256MB: %d, %d, %d partitions" % (p1, p4, p8))
q("RESET experiment.refresh_memory")
ck.check(q("SHOW experiment.refresh_memory")[0][0] == "256MB", "the default is 256MB")
for args, word in (("-1, 4, 1, 8", "units"), ("10, -1, 1, 8", "specs"), ("10, 4, -1, 8", "sources"),
                   ("10, 4, 1, 'NaN'", "key_bytes"), ("10, 4, 1, -2", "key_bytes"),
                   ("10, 4, 1, 8, -1", "calendar_bounds"), ("10, 4, 1, 8, 9", "calendar_bounds"),
                   ("NULL, 4, 1, 8", "NULL"), ("10, 4, 1, NULL", "NULL")):
    try:
        q("SELECT experiment.unit_value_partitions(%s)" % args)
        ck.check(False, "unit_value_partitions(%s) must fail" % args)
    except psycopg2.Error as e:
        ck.check(e.pgcode == ("22004" if word == "NULL" else "22023") and word in e.pgerror,
                 "unit_value_partitions(%s): %s %s" % (args, e.pgcode, e.pgerror))
for bad in ("-1", "'lots'"):
    try:
        q("SET experiment.refresh_memory = %s" % bad)
        ck.check(False, "refresh_memory = %s must fail" % bad)
    except psycopg2.Error as e:
        ck.check(e.pgcode == "22023" and "refresh_memory" in e.pgerror, "refresh_memory = %s: %s" % (bad, e.pgerror))
ck.report()
