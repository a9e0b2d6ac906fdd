"""experiment.source_unit_values() (the C per-unit aggregation used by
experiment.refresh()) against the plain SQL formulation of the same values:
a LEFT JOIN of every unit to its events and FILTERed aggregates per unit.

Randomized data with NULL units, times and values, numeric, integer and
boolean value columns, timestamptz and timestamp time columns, long and short
unit ids, units without events and events of unknown units; offsets with
day and month parts whose windows cross the daylight saving change of
Europe/Berlin (2025-03-30), and events placed exactly on window bounds.
Every spec is compared unit by unit, under Europe/Berlin and under UTC
(where day offsets take the fixed-offset path), with and without scan
bounds, then bad arguments must fail with SQLSTATE 22023.
"""
import os
import random
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from exptest import Checker, fresh_db  # noqa: E402

import psycopg2  # noqa: E402

ck = Checker("test_analysis_unit_values")
rnd = random.Random(20250330)
conn = fresh_db("exp_analysis_unit_values")
cur = conn.cursor()


def q(sql, args=None):
    cur.execute(sql, args)
    return cur.fetchall() if cur.description else None


cur.execute("SET TimeZone = 'Europe/Berlin'")
q("""CREATE TABLE uv_units (unit_id text, variant text, t0 timestamptz)""")
q("""CREATE TABLE uv_events (unit text, ts timestamptz, ts2 timestamp, val numeric, ival integer, flag boolean)""")

NU = 400
units = []
for i in range(NU):
    uid = ("unit-with-a-long-identifier-%04d" % i) if i % 5 == 0 else "u%d" % i
    units.append(uid)
# first exposures from 2025-03-20 to 2025-04-05: windows cross 2025-03-30 02:00 CET -> CEST
q("""INSERT INTO uv_units
     SELECT u, CASE WHEN i %% 2 = 0 THEN 'control' ELSE 'treatment' END,
            timestamptz '2025-03-20 00:00:00+01' + (h * interval '1 second')
     FROM unnest(%s::text[], %s::bigint[]) WITH ORDINALITY AS x(u, h, i)""",
  (units, [rnd.randrange(0, 16 * 86400) for _ in units]))

rows = []
for _ in range(12000):
    r = rnd.random()
    if r < 0.02:
        unit = None
    elif r < 0.05:
        unit = "stranger%d" % rnd.randrange(50)
    else:
        # the last 40 units get no events
        unit = units[rnd.randrange(NU - 40)]
    sec = rnd.randrange(-30 * 86400, 60 * 86400)
    ts = None if rnd.random() < 0.03 else sec
    ts2 = None if rnd.random() < 0.03 else sec + rnd.choice([0, 3600, -7200])
    val = None if rnd.random() < 0.2 else rnd.choice([0, 0, round(rnd.uniform(-50, 150), 2), 7])
    ival = None if rnd.random() < 0.2 else rnd.randrange(-3, 10)
    flag = None if rnd.random() < 0.2 else rnd.random() < 0.4
    rows.append((unit, ts, ts2, val, ival, flag))
q("""INSERT INTO uv_events
     SELECT u, timestamptz '2025-03-20 00:00:00+01' + s * interval '1 second',
            (timestamptz '2025-03-20 00:00:00+01' + s2 * interval '1 second')::timestamp, v, iv, f
     FROM unnest(%s::text[], %s::bigint[], %s::bigint[], %s::numeric[], %s::integer[], %s::boolean[])
          AS x(u, s, s2, v, iv, f)""",
  tuple(list(c) for c in zip(*rows)))

# specs: (time column, value column, aggregation, lo, hi, use_end)
OFFS_LO = ["0", "1 day", "2 hours", "-14 days", "-1 mon", "1 mon 2 days 3 hours"]
OFFS_HI = [None, "1 day", "7 days", "36 hours", "1 mon", "0", "2 mons 1 day"]
specs = []
for tcol in ("ts", "ts2"):
    for vcol in (None, "val", "ival", "flag"):
        for agg in ("sum", "count", "any", "max"):
            lo = rnd.choice(OFFS_LO)
            hi = rnd.choice([h for h in OFFS_HI])
            specs.append((tcol, vcol, agg, lo, hi, rnd.random() < 0.6))
# fixed specs whose bounds are hit exactly by the boundary events below
specs.append(("ts", "val", "sum", "1 day", "7 days", True))
specs.append(("ts", None, "count", "-14 days", "0", False))
specs.append(("ts", "flag", "any", "1 mon", "2 mons 1 day", True))
END_AT = "2025-04-20 12:00:00+02"

# events exactly on the bounds of the fixed specs, and on end_at
q("""INSERT INTO uv_events (unit, ts, ts2, val, ival, flag)
     SELECT u.unit_id, u.t0 + b.off, NULL, 5, 1, true
     FROM uv_units u, (VALUES (interval '1 day'), (interval '7 days'), (interval '-14 days'), (interval '0'),
                              (interval '1 mon'), (interval '2 mons 1 day')) b(off)
     WHERE u.unit_id = ANY (%s)""", (units[:NU - 40:3],))
q("""INSERT INTO uv_events (unit, ts, ts2, val, ival, flag)
     SELECT unit_id, %s, NULL, 11, 2, true FROM uv_units WHERE unit_id = ANY (%s)""",
  (END_AT, units[1:NU - 40:4]))
n_on_bound = q("""SELECT count(*) FROM uv_events e JOIN uv_units u ON u.unit_id = e.unit
                  WHERE e.ts IN (u.t0 + interval '7 days', u.t0 + interval '1 mon', u.t0 + interval '2 mons 1 day')""")[0][0]
ck.check(n_on_bound >= 3 * len(units[:NU - 40:3]), "events placed on window bounds: %d" % n_on_bound)
n_dst = q("""SELECT count(*) FROM uv_units u
             WHERE u.t0 < timestamptz '2025-03-30 03:00+02' AND u.t0 + interval '7 days' > timestamptz '2025-03-30 03:00+02'""")[0][0]
ck.check(n_dst > 50, "units whose windows cross the DST change: %d" % n_dst)


def ref_agg(tcol, vcol, agg, lo, hi, use_end, end_at):
    cond = "s.%s >= u.t0 + interval '%s'" % (tcol, lo)
    if hi is not None:
        cond += " AND s.%s < u.t0 + interval '%s'" % (tcol, hi)
    if use_end and end_at is not None:
        cond += " AND s.%s < timestamptz '%s'" % (tcol, end_at)
    v = None
    if vcol == "flag":
        v = "(s.flag)::integer::float8"
    elif vcol is not None:
        v = "(s.%s)::float8" % vcol
    if v is None:
        if agg in ("sum", "count"):
            return "count(*) FILTER (WHERE %s)::float8" % cond
        return "(count(*) FILTER (WHERE %s) > 0)::integer::float8" % cond
    if agg == "sum":
        return "coalesce(sum(%s) FILTER (WHERE %s), 0)" % (v, cond)
    if agg == "count":
        return "count(%s) FILTER (WHERE %s)::float8" % (v, cond)
    if agg == "any":
        return "(count(*) FILTER (WHERE %s AND %s <> 0) > 0)::integer::float8" % (cond, v)
    return "coalesce(max(%s) FILTER (WHERE %s), 0)" % (v, cond)


def compare(label, sp, end_at, scan_from=None, scan_to=None):
    ref_sql = ("SELECT u.unit_id, u.variant, ARRAY[%s] FROM uv_units u LEFT JOIN uv_events s ON s.unit = u.unit_id "
               "GROUP BY u.unit_id, u.variant" % ", ".join(ref_agg(*x, end_at) for x in sp))
    ref = {r[0]: (r[1], r[2]) for r in q(ref_sql)}
    got_rows = q("""SELECT x.unit_id, x.variant, x.vals
                    FROM (SELECT array_agg(unit_id) i, array_agg(variant) v, array_agg(t0) t FROM uv_units) a,
                         experiment.source_unit_values(a.i, a.v, a.t, 'uv_events', 'unit', %s::text[], %s::text[],
                      %s::text[], %s::interval[],
                      %s::interval[], %s::boolean[], %s, %s, %s) x""",
                 ([x[0] for x in sp], [x[1] for x in sp], [x[2] for x in sp], [x[3] for x in sp],
                  [x[4] for x in sp], [x[5] for x in sp], end_at, scan_from, scan_to))
    got = {r[0]: (r[1], r[2]) for r in got_rows}
    ck.check(len(got_rows) == len(got) == NU, "%s: one row per unit (%d rows)" % (label, len(got_rows)))
    ck.check(set(got) == set(ref), "%s: same units" % label)
    bad = 0
    nonzero = 0
    for u, (variant, want) in ref.items():
        if u not in got:
            continue
        gv, gvals = got[u]
        if gv != variant or len(gvals) != len(want):
            bad += 1
            continue
        for k, (a, b) in enumerate(zip(gvals, want)):
            if b != 0:
                nonzero += 1
            if not (a == b or abs(a - b) <= 1e-9 * max(abs(a), abs(b))):
                bad += 1
                if bad <= 5:
                    print("  %s: unit %s spec %d %r: got %r, want %r" % (label, u, k, sp[k], a, b))
    ck.check(bad == 0, "%s: every per-unit value equals the SQL formulation (%d differ)" % (label, bad))
    ck.check(nonzero > len(sp) * 20, "%s: the values are not trivially zero (%d nonzero)" % (label, nonzero))
    # zero-filled units without events
    ck.check(all(all(x == 0 for x in got[u][1]) for u in units[NU - 40:] if u in got),
             "%s: units without events are all 0" % label)


for tz in ("Europe/Berlin", "UTC"):
    cur.execute("SET TimeZone = %s", (tz,))
    compare("%s, all specs" % tz, specs, END_AT)
    compare("%s, all specs, no end" % tz, specs, None)
    ts_specs = [s for s in specs if s[0] == "ts"]
    compare("%s, one time column" % tz, ts_specs, END_AT)
    # scan bounds that cover every window of these specs
    compare("%s, one time column, scan bounds" % tz, ts_specs, END_AT,
            "2025-01-01 00:00:00+00", "2025-07-01 00:00:00+00")

# a scan bound is applied: nothing counts when the bounds exclude everything
cur.execute("SET TimeZone = 'Europe/Berlin'")
r = q("""SELECT bool_and(vals = ARRAY[0]::float8[]) FROM (SELECT array_agg(unit_id) i, array_agg(variant) v,
           array_agg(t0) t FROM uv_units) a, experiment.source_unit_values(a.i, a.v, a.t, 'uv_events', 'unit', '{ts}',
           '{NULL}', '{count}', '{-1 year}', '{NULL}', '{f}', NULL,
           '2030-01-01', NULL)""")[0][0]
ck.check(r is True, "scan_from beyond every event leaves only zeros")

# an integer unit column is compared as text
q("CREATE TABLE uv_events_int (uid bigint, at date, amount real)")
q("""INSERT INTO uv_events_int VALUES (1, '2025-01-01', 2.5), (1, '2025-01-02', 1), (1, '2024-12-31', 100),
     (2, '2025-01-05', NULL), (3, '2025-01-02', 9), (4, '2025-01-02', 9)""")
r = q("""SELECT unit_id, variant, vals FROM experiment.source_unit_values(
           '{1,2,3,NULL}', '{a,b,a,c}', '{2025-01-01,2025-01-01,NULL,2025-01-01}', 'uv_events_int', 'uid', '{at,at,at}', '{amount,amount,NULL}', '{sum,max,count}',
           '{0,0,0}', '{2 days,NULL,NULL}', '{t,t,t}', NULL, NULL, NULL) ORDER BY 1""")
ck.check(r == [("1", "a", [3.5, 2.5, 2.0]), ("2", "b", [0.0, 0.0, 1.0]), ("3", "a", [0.0, 0.0, 0.0])],
         "bigint units, date times, real values, NULL t0, NULL unit skipped: %r" % (r,))

r = q("""SELECT count(*) FROM experiment.source_unit_values('{}', '{}', '{}', 'uv_events', 'unit', '{ts}', '{NULL}',
         '{count}', '{0}', '{NULL}', '{t}', NULL, NULL, NULL)""")[0][0]
ck.check(r == 0, "no units: no rows (%r)" % r)

# source_unit_values_from(): the units read from a relation (not multi, reset as asked, in one
# unit-hash partition) give the rows of the array form exactly; a hint of 0 expected units makes
# the scan's hash table grow (and move its units) many times
cur.execute("SET TimeZone = 'Europe/Berlin'")
q("""CREATE TABLE uv_rel AS SELECT unit_id, variant, t0, (row_number() OVER (ORDER BY unit_id)) % 7 = 0 AS multi,
                                   (row_number() OVER (ORDER BY unit_id)) % 3 = 0 AS reset
     FROM uv_units""")
spec_args = ([x[0] for x in specs], [x[1] for x in specs], [x[2] for x in specs], [x[3] for x in specs],
             [x[4] for x in specs], [x[5] for x in specs], END_AT)
ARGS = "'uv_events', 'unit', %s::text[], %s::text[], %s::text[], %s::interval[], %s::interval[], %s::boolean[], %s, NULL, NULL"
for reset in (None, False, True):
    cond = "NOT multi" + ("" if reset is None else " AND %sreset" % ("" if reset else "NOT "))
    want = q("""SELECT x.unit_id, x.variant, x.t0, x.vals, x.skipped FROM
                (SELECT array_agg(unit_id) i, array_agg(variant) v, array_agg(t0) t FROM uv_rel WHERE %s) a,
                experiment.source_unit_values(a.i, a.v, a.t, %s) x ORDER BY 1""" % (cond, ARGS), spec_args)
    for hint in (0, 100, 100000):
        got = q("""SELECT x.unit_id, x.variant, x.t0, x.vals, x.skipped
                   FROM experiment.source_unit_values_from('uv_rel', %%s, 1, 0, %%s, %s) x ORDER BY 1""" % ARGS,
                (reset, hint) + spec_args)
        ck.check(got == want and len(got) > 50,
                 "from a relation (reset %s, %d units expected): the rows of the arrays, exactly (%d rows)"
                 % (reset, hint, len(got)))
    parts = []
    for part in range(3):
        parts += q("""SELECT x.unit_id, x.variant, x.t0, x.vals, x.skipped
                      FROM experiment.source_unit_values_from('uv_rel', %%s, 3, %%s, 5, %s) x""" % ARGS,
                   (reset, part) + spec_args)
    ck.check(sorted(parts) == want, "three unit-hash partitions of a relation: together the rows of one call (reset %s)" % reset)
    inpart = q("""SELECT count(*) FROM uv_rel u WHERE %s AND (hashtext(u.unit_id) & 2147483647) %% 3 = 1""" % cond)[0][0]
    got1 = q("""SELECT count(*) FROM experiment.source_unit_values_from('uv_rel', %%s, 3, 1, 0, %s) x""" % ARGS,
             (reset,) + spec_args)[0][0]
    ck.check(got1 == inpart, "partition 1 of 3 holds the units of experiment.unit_partition_sql() (%d, %d)" % (got1, inpart))
    # tid: with reset given (an incremental refresh's scans), the ctid of each unit's row, which
    # the refresh's update finds it by (also with a hash table grown from a hint of 0 units); NULL
    # otherwise
    for hint in (0, 100):
        bad = q("""SELECT count(*), count(*) FILTER (WHERE x.tid IS DISTINCT FROM
                                                    CASE WHEN %%s IS NOT NULL THEN u.ctid END)
                   FROM experiment.source_unit_values_from('uv_rel', %%s, 1, 0, %%s, %s) x
                   JOIN uv_rel u ON u.unit_id = x.unit_id""" % ARGS, (reset, reset, hint) + spec_args)[0]
        ck.check(bad[0] > 50 and bad[1] == 0, "tid (reset %s, %d units expected): %d of %d rows differ from %s"
                 % (reset, hint, bad[1], bad[0], "NULL" if reset is None else "the ctid"))


def fails(sql, what):
    try:
        cur.execute(sql)
    except psycopg2.Error as e:
        ck.check(e.pgcode == "22023", "%s: SQLSTATE %s (%s)" % (what, e.pgcode, e.pgerror.strip().splitlines()[0]))
        return
    ck.check(False, "%s: no error" % what)


fails("""SELECT * FROM experiment.source_unit_values('{u1}', '{a}', '{2025-03-25}', 'uv_events', 'unit', '{ts}', '{val}', '{median}',
         '{0}', '{NULL}', '{t}', NULL, NULL, NULL)""", "unknown aggregation")
fails("""SELECT * FROM experiment.source_unit_values('{u1}', '{a}', '{2025-03-25}', 'uv_events', 'unit', '{ts,ts}', '{val}', '{sum}',
         '{0}', '{NULL}', '{t}', NULL, NULL, NULL)""", "arrays of different lengths")
fails("""SELECT * FROM experiment.source_unit_values('{u1}', '{a}', '{2025-03-25}', 'uv_events', 'nope', '{ts}', '{val}', '{sum}',
         '{0}', '{NULL}', '{t}', NULL, NULL, NULL)""", "unknown unit column")
fails("""SELECT * FROM experiment.source_unit_values('{u1}', '{a}', '{2025-03-25}', 'uv_events', 'unit', '{ts}', '{nope}', '{sum}',
         '{0}', '{NULL}', '{t}', NULL, NULL, NULL)""", "unknown value column")
fails("""SELECT * FROM experiment.source_unit_values('{u1}', '{a}', '{2025-03-25}', 'uv_events', 'unit', '{ts}', '{val}', '{sum}',
         '{NULL}', '{NULL}', '{t}', NULL, NULL, NULL)""", "NULL lower offset")
fails("""SELECT * FROM experiment.source_unit_values('{u1,u2}', '{a}', '{2025-03-25}', 'uv_events', 'unit', '{ts}', '{val}',
         '{sum}', '{0}', '{NULL}', '{t}', NULL, NULL, NULL)""", "unit arrays of different lengths")
fails("""SELECT * FROM experiment.source_unit_values('{1,2,1}', '{a,b,b}', '{2025-01-01,2025-01-01,2025-01-01}',
         'uv_events_int', 'uid', '{at}', '{NULL}', '{count}',
         '{0}', '{NULL}', '{t}', NULL, NULL, NULL)""", "duplicate unit")
fails("""SELECT * FROM experiment.source_unit_values_from('uv_rel', NULL, 3, 3, 0, 'uv_events', 'unit', '{ts}', '{val}',
         '{sum}', '{0}', '{NULL}', '{t}', NULL, NULL, NULL)""", "a partition beyond nparts")
fails("""SELECT * FROM experiment.source_unit_values_from(NULL, NULL, 1, 0, 0, 'uv_events', 'unit', '{ts}', '{val}',
         '{sum}', '{0}', '{NULL}', '{t}', NULL, NULL, NULL)""", "no relation of units")

conn.close()
ck.report()
