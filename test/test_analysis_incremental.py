"""Incremental refresh equals a full refresh of the same data.

Random sequences of changes, each followed by an incremental
experiment.refresh(); after every one, a full refresh of the same data (in a
transaction that is rolled back) must give the same per-variant moments,
CUPED moments, caps, skipped counts, tests, enrollment and unit counts, to
1e-12 relative (plus 1e-12 absolute: an effect is a difference of two means, and
the order in which units are summed moves it by about 1e-15 of the means). The changes: new units; events of known, unknown and
not-yet-exposed units, within each source's lateness allowance; NaN values;
a unit exposed to a second variant (it leaves the analysis); a unit exposed
earlier than its first exposure (its windows move: read again in full);
exposures after the experiment's end (ignored); time passing, so that
windows close. Two sources (one a view with a timestamp column; the other, in
two of the three sequences, with an index on its unit column, which the scans
of new and reset units then use for their ids), sum with a
winsorization cap and a CUPED lookback, max with negative values, count,
any, a ratio, delays and windows.

Then the rules of when a refresh is full, and the semantics of lateness:
an event older than the watermark is not counted by an incremental refresh
and is by refresh(id, full => true); a metric whose definition changes, an
experiment whose end changes and a source whose metrics read two time
columns make the next refresh full and say why in experiment.refreshes (a
change of its caps, winsorize, winsorize_lower, cap_lower, cap_upper or
cap_ignore_zeros, does not: the caps are recomputed from the stored values);
a deleted experiment and DROP EXTENSION take the stored values with them.
"""
import json
import math
import os
import random
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from exptest import Checker, fresh_db, numbers  # noqa: E402

import psycopg2  # noqa: E402

ck = Checker("test_analysis_incremental")
conn = fresh_db("exp_analysis_incremental")
cur = conn.cursor()
REL = 1e-12


def q(sql, args=None):
    cur.execute(sql, args)
    return cur.fetchall() if cur.description else None


def same(a, b, what):
    """a and b (JSON values) equal, numbers to REL relative (floor 1e-300)"""
    fa, fb = list(numbers(a)), list(numbers(b))
    if [p for p, _ in fa] != [p for p, _ in fb]:
        return ck.check(False, "%s: shapes differ: %r vs %r" % (what, a, b))
    for (p, x), (_, y) in zip(fa, fb):
        if isinstance(x, (int, float)) and isinstance(y, (int, float)) and not isinstance(x, bool):
            if math.isnan(x) or math.isnan(y):
                ok = math.isnan(x) and math.isnan(y)
            else:
                # relative, with an absolute floor of 1e-12 for values that are differences of
                # nearly equal means (summation order moves them by ~1e-15 of the means)
                ok = abs(x - y) <= REL * max(abs(x), abs(y)) + 1e-12
            if not ok:
                return ck.check(False, "%s%s: incremental %r, full %r" % (what, p, x, y))
        elif x != y:
            return ck.check(False, "%s%s: incremental %r, full %r" % (what, p, x, y))
    return ck.check(True, what)


def snapshot(exp):
    vs = q("""SELECT json_agg(json_build_object('metric', metric, 'variant', variant, 'units', units,
                                               'm', moments::text::json, 'c', cuped_moments::text::json,
                                               'cap', cap, 'cap_lower', cap_lower, 'skipped', skipped_values)
                              ORDER BY metric, variant)
              FROM experiment.variant_stats WHERE experiment_id = %s""", (exp,))[0][0]
    mr = q("""SELECT json_agg(json_build_object('metric', metric, 'variant', variant, 'method', method,
                                               't', row_to_json(test), 'b', row_to_json(bound_test))
                              ORDER BY metric, variant)
              FROM experiment.metric_results WHERE experiment_id = %s""", (exp,))[0][0]
    en = q("""SELECT json_agg(json_build_object('variant', variant, 'units', units) ORDER BY variant)
              FROM experiment.enrollment WHERE experiment_id = %s""", (exp,))[0][0]
    rf = q("""SELECT json_build_object('enrolled', enrolled_units, 'multi', multi_variant_units, 'early', early_units,
                                       'first', first_exposure, 'last', last_exposure, 'days', exposures_by_day)
              FROM experiment.refreshes WHERE experiment_id = %s""", (exp,))[0][0]
    return {"variant_stats": vs, "metric_results": mr, "enrollment": en, "refreshes": rf}


def compare_with_full(exp, what):
    inc = snapshot(exp)
    cur.execute("BEGIN")
    q("SELECT experiment.refresh(%s, full => true)", (exp,))
    full = snapshot(exp)
    cur.execute("ROLLBACK")
    for k in inc:
        same(inc[k], full[k], "%s: %s" % (what, k))
    return inc


def mode(exp):
    return q("SELECT mode, full_reason FROM experiment.refreshes WHERE experiment_id = %s", (exp,))[0]


q("SET client_min_messages = warning")
q("SET TimeZone = 'UTC'")

BASE = "2025-03-01 00:00:00+00"
HOUR = 3600


def run_sequence(seed, steps):
    rnd = random.Random(seed)
    exp = "inc_%d" % seed
    # each sequence its own sources
    q("CREATE TABLE ev_%d (uid text, ts timestamptz, amount float8)" % seed)
    q("CREATE TABLE ev2_raw_%d (user_id text, at timestamp, ok boolean)" % seed)
    q("CREATE VIEW ev2_%d AS SELECT user_id, at, ok FROM ev2_raw_%d" % (seed, seed))
    if seed != 1:
        # (an index that leads with the unit column: the scans of new and reset units ask for
        # their ids)
        q("CREATE INDEX ON ev_%d (uid, ts)" % seed)
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
         (%s, %s, 'user_id', 'at', 'ok', 'any', 'proportion', '1 day', '3 days', NULL, NULL, '3 hours')""",
      (m("rev"), ev, m("mx"), ev, m("cnt"), ev, m("conv"), ev, m("ret"), ev2))
    q("""INSERT INTO experiment.metrics (name, kind, numerator, denominator) VALUES (%s, 'ratio', %s, %s)""",
      (m("rpc"), m("rev"), m("cnt")))
    q("""INSERT INTO experiment.experiment_metrics (experiment_id, metric, role)
         SELECT %s, n, CASE WHEN n = %s THEN 'primary' WHEN n = %s THEN 'guardrail' ELSE 'secondary' END
         FROM unnest(%s::text[]) n""",
      (exp, m("rev"), m("cnt"), [m(x) for x in ("rev", "mx", "cnt", "conv", "ret", "rpc")]))
    q("UPDATE experiment.experiments SET status = 'running' WHERE id = %s", (exp,))

    clock = 2 * 24 * HOUR          # seconds after BASE: the newest event time so far
    units = {}                     # unit -> (variant, t0 seconds)
    nid = [0]
    latest_at_refresh = None       # the newest event time at the previous refresh

    def new_unit():
        nid[0] += 1
        return "u%d" % nid[0]

    def expose(u, variant, t):
        q("""INSERT INTO experiment.exposures (experiment_id, unit_id, variant, exposed_at)
             VALUES (%s, %s, %s, %s::timestamptz + %s * interval '1 second') ON CONFLICT DO NOTHING""",
          (exp, u, variant, BASE, t))

    def events(n, lo, hi):
        rows = []
        pool = list(units) + ["stranger%d" % i for i in range(5)] + ["later%d" % i for i in range(5)]
        for _ in range(n):
            u = rnd.choice(pool)
            t = rnd.randint(lo, hi)
            r = rnd.random()
            amount = float("nan") if r < 0.02 else (None if r < 0.08 else round(rnd.uniform(-20, 80), 2))
            rows.append((u, t, amount))
        q("""INSERT INTO """ + ev + """ SELECT u, %s::timestamptz + t * interval '1 second', a
             FROM unnest(%s::text[], %s::bigint[], %s::float8[]) AS x(u, t, a)""",
          (BASE, [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]))
        rows2 = [(rnd.choice(pool), rnd.randint(lo, hi), rnd.random() < 0.4) for _ in range(n // 3)]
        q("""INSERT INTO ev2_raw_""" + str(seed) + """ SELECT u, (%s::timestamptz + t * interval '1 second') AT TIME ZONE 'UTC', o
             FROM unnest(%s::text[], %s::bigint[], %s::boolean[]) AS x(u, t, o)""",
          (BASE, [r[0] for r in rows2], [r[1] for r in rows2], [r[2] for r in rows2]))

    # the first state, and a first (full) refresh
    for _ in range(60):
        u = new_unit()
        units[u] = (rnd.choice("ct"), rnd.randint(-12 * HOUR, clock))
        expose(u, units[u][0], units[u][1])
    events(800, -4 * 24 * HOUR, clock)
    q("SELECT experiment.refresh(%s)", (exp,))
    ck.check(mode(exp) == ("full", "no stored per-unit values yet"), "%s: the first refresh is full: %r" % (exp, mode(exp)))
    compare_with_full(exp, "%s step 0" % exp)
    latest_at_refresh = clock

    for step in range(1, steps + 1):
        # time passes (windows close; after day 30 the experiment has ended)
        clock += rnd.choice([1, 2, 6, 12, 24, 48]) * HOUR
        # new units, some exposed before the newest event time
        for _ in range(rnd.randint(0, 25)):
            u = new_unit()
            units[u] = (rnd.choice("ct"), rnd.randint(clock - 24 * HOUR, clock))
            expose(u, units[u][0], units[u][1])
        # a unit exposed to the other variant too
        if units and rnd.random() < 0.5:
            u = rnd.choice(list(units))
            expose(u, "t" if units[u][0] == "c" else "c", rnd.randint(units[u][1], clock))
        # a unit exposed earlier than its first exposure
        if units and rnd.random() < 0.5:
            u = rnd.choice(list(units))
            t = units[u][1] - rnd.randint(1, 48) * HOUR
            expose(u, units[u][0], t)
            units[u] = (units[u][0], t)
        # an exposure after the end
        if rnd.random() < 0.2:
            expose(new_unit(), "c", 31 * 24 * HOUR + rnd.randint(0, 1000))
        # a redelivered exposure
        if units and rnd.random() < 0.3:
            u = rnd.choice(list(units))
            expose(u, units[u][0], units[u][1])
        # events: new ones, and late ones within the smallest allowance (2 hours) of the
        # watermark of the previous refresh
        events(rnd.randint(0, 400), latest_at_refresh - 2 * HOUR + 1, clock)
        q("SELECT experiment.refresh(%s)", (exp,))
        ck.check(mode(exp) == ("incremental", None), "%s step %d: incremental: %r" % (exp, step, mode(exp)))
        compare_with_full(exp, "%s step %d" % (exp, step))
        latest_at_refresh = max(latest_at_refresh, clock)
    return exp


exps = [run_sequence(seed, 14) for seed in (1, 2, 3)]
exp = exps[0]

# an event older than the watermark: not counted incrementally, counted by a full refresh
cnt_before = q("SELECT moments::text::json FROM experiment.variant_stats WHERE experiment_id = %s AND metric = %s AND variant = 'c'",
               (exp, exp + "_cnt"))[0][0]
u = q("""SELECT unit_id FROM experiment.exposures WHERE experiment_id = %s AND variant = 'c'
         AND unit_id NOT IN (SELECT unit_id FROM experiment.exposures WHERE experiment_id = %s AND variant = 't')
         ORDER BY unit_id LIMIT 1""", (exp, exp))[0][0]
t0 = q("SELECT min(exposed_at) FROM experiment.exposures WHERE experiment_id = %s AND unit_id = %s", (exp, u))[0][0]
q("INSERT INTO ev_1 VALUES (%s, %s::timestamptz + interval '2 hours', 1)", (u, t0))
settled = q("""SELECT settled_before > %s::timestamptz + interval '2 hours' FROM experiment.source_watermarks
               WHERE experiment_id = %s AND source = 'ev_1'::regclass""", (t0, exp))[0][0]
q("SELECT experiment.refresh(%s)", (exp,))
cnt_inc = q("SELECT moments::text::json FROM experiment.variant_stats WHERE experiment_id = %s AND metric = %s AND variant = 'c'",
            (exp, exp + "_cnt"))[0][0]
ck.check(settled, "the late event is older than the watermark")
same(cnt_inc, cnt_before, "an event older than the watermark is not counted by an incremental refresh")
q("SELECT experiment.refresh(%s, full => true)", (exp,))
cnt_full = q("SELECT moments::text::json FROM experiment.variant_stats WHERE experiment_id = %s AND metric = %s AND variant = 'c'",
             (exp, exp + "_cnt"))[0][0]
ck.check(cnt_full["mean"][0] > cnt_before["mean"][0] + 1e-3, "refresh(full => true) counts the late event: %r" % (cnt_full,))
ck.check(mode(exp) == ("full", "requested (full => true)"), "full => true is said: %r" % (mode(exp),))
q("SELECT experiment.refresh(%s)", (exp,))
ck.check(mode(exp)[0] == "incremental", "then incremental again: %r" % (mode(exp),))

# a definition change makes the next refresh full
q("UPDATE experiment.metrics SET \"window\" = '4 days' WHERE name = %s", (exp + "_mx",))
q("SELECT experiment.refresh(%s)", (exp,))
ck.check(mode(exp) == ("full", "the experiment's end, its metrics or its dimensions changed"), "a changed window: %r" % (mode(exp),))
compare_with_full(exp, "after a changed window")
q("UPDATE experiment.experiments SET end_at = end_at + interval '1 day' WHERE id = %s", (exp,))
q("SELECT experiment.refresh(%s)", (exp,))
ck.check(mode(exp) == ("full", "the experiment's end, its metrics or its dimensions changed"), "a changed end: %r" % (mode(exp),))
# winsorization is recomputed from the stored values: no full refresh needed
q("UPDATE experiment.metrics SET winsorize = 0.9 WHERE name = %s", (exp + "_rev",))
q("SELECT experiment.refresh(%s)", (exp,))
ck.check(mode(exp)[0] == "incremental", "a changed winsorization cap keeps the refresh incremental: %r" % (mode(exp),))
compare_with_full(exp, "after a changed cap")
# and so are the lower, absolute and non-zero caps (of the pre-period values too)
q("UPDATE experiment.metrics SET winsorize_lower = 0.05, cap_lower = -15, cap_upper = 150, cap_ignore_zeros = true "
  "WHERE name = %s", (exp + "_rev",))
q("UPDATE experiment.metrics SET cap_lower = -10, cap_upper = 60 WHERE name = %s", (exp + "_mx",))
q("SELECT experiment.refresh(%s)", (exp,))
ck.check(mode(exp)[0] == "incremental", "changed lower and absolute caps keep the refresh incremental: %r" % (mode(exp),))
caps = q("SELECT DISTINCT cap_lower, cap FROM experiment.variant_stats WHERE experiment_id = %s AND metric = %s",
         (exp, exp + "_rev"))
ck.check(len(caps) == 1 and caps[0][0] is not None and caps[0][0] >= -15 and caps[0][1] <= 150,
         "the changed caps are applied: %r" % (caps,))
compare_with_full(exp, "after changed lower and absolute caps")

# metrics of one source reading two time columns: no watermark, every refresh is full
q("ALTER TABLE ev_1 ADD COLUMN ts2 timestamptz")
q("UPDATE ev_1 SET ts2 = ts + interval '1 minute'")
q("""INSERT INTO experiment.metrics (name, source, unit_column, time_column, aggregation, kind, "window")
     VALUES ('two_clocks', 'ev_1', 'uid', 'ts2', 'count', 'mean', '1 day')""")
q("INSERT INTO experiment.experiment_metrics (experiment_id, metric, role) VALUES (%s, 'two_clocks', 'secondary')", (exp,))
q("SELECT experiment.refresh(%s)", (exp,))
ck.check(mode(exp) == ("full", "the experiment's end, its metrics or its dimensions changed"), "a new metric: %r" % (mode(exp),))
for _ in range(2):
    q("SELECT experiment.refresh(%s)", (exp,))
    md = mode(exp)
    ck.check(md[0] == "full" and "read several time columns" in (md[1] or ""), "two time columns: %r" % (md,))
compare_with_full(exp, "two time columns")

# the stored values are readable only by the extension's owner, and go with their experiment
rel = q("SELECT relation FROM experiment.unit_value_tables WHERE experiment_id = %s", (exp,))[0][0]
ck.check(q("SELECT relacl IS NULL FROM pg_class WHERE oid = ('experiment.' || quote_ident(%s))::regclass", (rel,))[0][0],
         "the stored per-unit values have no grants")
q("SELECT experiment.stop(%s)", (exp,))
q("DELETE FROM experiment.exposures WHERE experiment_id = %s", (exp,))
q("DELETE FROM experiment.experiments WHERE id = %s", (exp,))
ck.check(q("SELECT to_regclass('experiment.' || quote_ident(%s)) IS NULL", (rel,))[0][0],
         "deleting an experiment drops its stored per-unit values")
n = q("SELECT count(*) FROM experiment.unit_value_tables")[0][0]
ck.check(n == len(exps) - 1, "the other experiments keep theirs (%d)" % n)
# --- edge cases of the watermarks (each a small experiment of its own) ---------------------
def mini(name, late="1 day"):
    q("CREATE TABLE %s (uid text, ts timestamptz, amount float8)" % name)
    q("""INSERT INTO experiment.experiments (id, name, status, start_at)
         VALUES (%s, %s, 'draft', '2025-03-01')""", (name, name))
    q("""INSERT INTO experiment.variants (experiment_id, name, allocation, is_control)
         VALUES (%s, 'c', 0.5, true), (%s, 't', 0.5, false)""", (name, name))
    q("""INSERT INTO experiment.metrics (name, source, unit_column, time_column, value_column, aggregation,
                                         cuped_lookback, late_events)
         VALUES (%s, %s, 'uid', 'ts', 'amount', 'sum', NULL, %s)""", (name + "_m", name, late))
    q("INSERT INTO experiment.experiment_metrics (experiment_id, metric, role) VALUES (%s, %s, 'primary')",
      (name, name + "_m"))
    q("UPDATE experiment.experiments SET status = 'running' WHERE id = %s", (name,))
    q("""INSERT INTO experiment.exposures (experiment_id, unit_id, variant, exposed_at)
         SELECT %s, 'u' || i, CASE WHEN i %% 2 = 0 THEN 'c' ELSE 't' END, '2025-03-01' FROM generate_series(1, 20) i""",
      (name,))


# a source without events at the first refresh: the watermark must not jump to now()
mini("w_empty")
q("SELECT experiment.refresh('w_empty')")
q("INSERT INTO w_empty SELECT 'u' || i, '2025-03-02 10:00+00', i FROM generate_series(1, 20) i")
q("SELECT experiment.refresh('w_empty')")
q("INSERT INTO w_empty VALUES ('u1', '2025-03-02 09:00+00', 1000)")
q("SELECT experiment.refresh('w_empty')")
ck.check(mode("w_empty")[0] == "incremental", "w_empty: incremental")
compare_with_full("w_empty", "a source that had no event at the first refresh")

# a future-dated event deleted, then refresh(full => true): the watermark starts afresh
mini("w_future")
q("INSERT INTO w_future SELECT 'u' || i, '2025-03-02 10:00+00', i FROM generate_series(1, 20) i")
q("INSERT INTO w_future VALUES ('u2', '2031-01-01', 5)")
q("SELECT experiment.refresh('w_future')")
q("DELETE FROM w_future WHERE ts > '2030-01-01'")
q("SELECT experiment.refresh('w_future', full => true)")
q("INSERT INTO w_future VALUES ('u1', '2025-03-02 11:00+00', 1000)")
q("SELECT experiment.refresh('w_future')")
compare_with_full("w_future", "a full refresh after a future-dated event was deleted")

# an allowance with parts of both signs never settles events that may still come
mini("w_signs", "1 mon -30 days")
q("INSERT INTO w_signs SELECT 'u' || i, '2025-03-02 10:00+00', i FROM generate_series(1, 20) i")
q("SELECT experiment.refresh('w_signs')")
q("SELECT experiment.refresh('w_signs')")
q("INSERT INTO w_signs VALUES ('u1', '2025-03-03 10:00+00', 1000)")
q("SELECT experiment.refresh('w_signs')")
compare_with_full("w_signs", "late_events '1 mon -30 days'")

# a refresh in a REPEATABLE READ transaction whose snapshot predates an exposure's commit
mini("w_rr")
q("SELECT experiment.refresh('w_rr')")
b = psycopg2.connect(dbname="exp_analysis_incremental")
bc = b.cursor()
bc.execute("""INSERT INTO experiment.exposures (experiment_id, unit_id, variant, exposed_at)
              VALUES ('w_rr', 'u21', 't', '2025-03-01 12:00')""")
a = psycopg2.connect(dbname="exp_analysis_incremental")
ac = a.cursor()
ac.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
ac.execute("SELECT 1")
b.commit()
ac.execute("SELECT experiment.refresh('w_rr')")
a.commit()
a.close()
b.close()
q("SELECT experiment.refresh('w_rr')")
n_rr = q("SELECT enrolled_units FROM experiment.refreshes WHERE experiment_id = 'w_rr'")[0][0]
ck.check(n_rr == 21, "an exposure committed after a REPEATABLE READ refresh's snapshot is read later (%d units)" % n_rr)
compare_with_full("w_rr", "after a REPEATABLE READ refresh")

# default privileges do not reach the stored per-unit values
q("CREATE ROLE exp_inc_reader NOLOGIN")
q("ALTER DEFAULT PRIVILEGES IN SCHEMA experiment GRANT SELECT ON TABLES TO exp_inc_reader, PUBLIC")
q("SELECT experiment.refresh('w_rr', full => true)")
acl = q("""SELECT c.relacl::text FROM experiment.unit_value_tables u
           JOIN pg_class c ON c.oid = ('experiment.' || quote_ident(u.relation))::regclass
           WHERE u.experiment_id = 'w_rr'""")[0][0]
ck.check(acl is None or all(e.startswith(q("SELECT current_user")[0][0] + "=") for e in acl.strip("{}").split(",")),
         "default privileges do not grant the stored per-unit values to anyone: %s" % acl)
q("ALTER DEFAULT PRIVILEGES IN SCHEMA experiment REVOKE SELECT ON TABLES FROM exp_inc_reader, PUBLIC")

# a larger allowance, or a watermark deleted by hand, makes the next refresh full; a smaller
# one does not
q("UPDATE experiment.metrics SET late_events = '2 days' WHERE name = 'w_empty_m'")
q("SELECT experiment.refresh('w_empty')")
ck.check(mode("w_empty") == ("full", "no watermark of public.w_empty, or its lateness allowance grew"),
         "a larger late_events: %r" % (mode("w_empty"),))
q("UPDATE experiment.metrics SET late_events = '1 hour' WHERE name = 'w_empty_m'")
q("SELECT experiment.refresh('w_empty')")
ck.check(mode("w_empty")[0] == "incremental", "a smaller late_events stays incremental: %r" % (mode("w_empty"),))
compare_with_full("w_empty", "after a smaller late_events")
q("DELETE FROM experiment.source_watermarks WHERE experiment_id = 'w_empty'")
q("SELECT experiment.refresh('w_empty')")
ck.check(mode("w_empty") == ("full", "no watermark of public.w_empty, or its lateness allowance grew"),
         "a deleted watermark: %r" % (mode("w_empty"),))
try:
    q("SELECT experiment.refresh('w_empty', full => NULL)")
    ck.check(False, "refresh(full => NULL) is refused")
except psycopg2.Error as err:
    ck.check(err.pgcode == "22023" and "full" in str(err), "refresh(full => NULL): %s %s" % (err.pgcode, err))

# source_unit_values(): split and partial, against plain SQL
ids = ["u%d" % i for i in range(1, 41)]
got = {r[0]: r[1] for r in q("""
    SELECT x.unit_id, x.vals FROM experiment.source_unit_values(
      %s, array_fill('c'::text, ARRAY[40]), array_fill(%s::timestamptz, ARRAY[40]), 'ev_2', 'uid', '{ts,ts}',
      '{NULL,amount}', '{count,max}', '{0,0}', '{NULL,NULL}', '{f,f}', NULL, NULL, NULL, NULL,
      %s::timestamptz + interval '3 days', false, true) x WHERE x.unit_id IS NOT NULL""", (ids, BASE, BASE))}
want = {r[0]: [r[1], r[2], r[3], r[4]] for r in q("""
    SELECT e.uid, count(*) FILTER (WHERE e.ts < s.split), max(e.amount) FILTER (WHERE e.ts < s.split AND e.amount <> 'NaN'),
           count(*) FILTER (WHERE e.ts >= s.split), max(e.amount) FILTER (WHERE e.ts >= s.split AND e.amount <> 'NaN')
    FROM unnest(%s::text[]) AS u(uid)
    CROSS JOIN (SELECT %s::timestamptz + interval '3 days' AS split) s
    JOIN ev_2 e ON e.uid = u.uid AND e.ts >= %s::timestamptz
    GROUP BY e.uid""", (ids, BASE, BASE))}
ck.check(set(got) == set(want) and len(got) > 10, "partial: the units with events (%d of 40)" % len(got))
ck.check(all([float(v) if v is not None else None for v in want[u]] == got[u] for u in want if u in got),
         "split and partial: the counts and maxima before and from the split equal plain SQL")

q("DROP EXTENSION experiment CASCADE")
q("DROP ROLE exp_inc_reader")
left = q("SELECT count(*) FROM pg_class WHERE relname LIKE 'unit_values%%'")[0][0]
ck.check(left == 0, "DROP EXTENSION drops every table of stored per-unit values (%d left)" % left)
ck.report()
