"""Quantile metrics in refresh (doc/analysis.md, "Quantile metrics"), end to end.

An experiment with page loads (log-normal, a random effect per unit, a random
number of loads per unit; the treatment multiplies every load by 1.15, so every
quantile of the treatment is exactly 1.15 times the control's and the true lift
of any quantile is +15%) and orders, and three quantile metrics from them:
p99 and p50 of the page loads (event quantiles, with different windows from
one source) and p90 of the per-unit order sums (a unit quantile).

Checked:
- the plumbing, exactly: each arm's stored sketch equals the sketch built here
  in SQL from the raw rows in the metric's window (equality of the values and of
  the text form), its clustered moments equal the moments of (the unit's loads
  at or below the arm's quantile, the unit's loads) computed here, and every
  stored test equals experiment.quantile_test() called on those inputs;
- against numpy: each arm's quantile is within the sketch's relative accuracy
  (0.5%) of numpy's quantile of the same raw values, and the units' cluster
  counts computed by numpy (events <= Q) agree with the stored moments' sums;
- the known effect: p99 and p50 lifts are significant and their intervals
  cover +15%; the per-unit p90 of orders (no effect) is not significant;
- incremental refresh (new loads, late loads within the allowance, new units,
  a unit turning multi-variant) equals a full refresh of the same data;
- results_daily has the unit quantile and not the event quantiles; the readout
  marks the lines; bad definitions are refused with 22023.
"""
import datetime as dt
import io
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from exptest import Checker, fresh_db  # noqa: E402

import numpy as np  # noqa: E402
import psycopg2  # noqa: E402

DAY = 86400
START = dt.datetime(2025, 6, 1, tzinfo=dt.timezone.utc)
END_S = 12 * DAY
ALPHA_SKETCH = 0.005
EFFECT = 1.15

ck = Checker("test_analysis_quantile")
rng = np.random.default_rng(20251201)
conn = fresh_db("exp_analysis_quantile")
cur = conn.cursor()
cur.execute("SET search_path = public, experiment")   # the = of sketch and moments


def ts(sec):
    return (START + dt.timedelta(seconds=int(sec))).isoformat()


def q(sql, args=None):
    cur.execute(sql, args)
    return cur.fetchall() if cur.description else None


def copy_rows(table, cols, rows):
    buf = io.StringIO()
    for r in rows:
        buf.write("\t".join(str(x) for x in r) + "\n")
    buf.seek(0)
    cur.copy_expert("COPY %s (%s) FROM STDIN" % (table, ", ".join(cols)), buf)


# ---------------------------------------------------------------- the data
N = 4000
units = ["u%05d" % i for i in range(N)]
treat = rng.random(N) < 0.5
t0 = rng.integers(0, 5 * DAY, N)
speed = rng.normal(0.0, 0.3, N)            # each unit's device: its loads are slower or faster together


def loads_of(i, k, lo, hi):
    """k loads of unit i at random times in [lo, hi)"""
    out = []
    for _ in range(k):
        s = int(rng.integers(lo, hi))
        ms = float(np.round(np.exp(6.5 + speed[i] + 0.5 * rng.normal()) * (EFFECT if treat[i] else 1.0), 3))
        out.append((units[i], s, ms))
    return out


loads = []
orders = []
for i in range(N):
    loads += loads_of(i, int(rng.poisson(rng.gamma(2.0, 2.5))), t0[i], END_S + DAY)   # some after the end
    loads += loads_of(i, int(rng.poisson(1.0)), t0[i] - 3 * DAY, t0[i])            # before exposure: not counted
    for _ in range(int(rng.poisson(0.8))):
        orders.append((units[i], int(rng.integers(t0[i], END_S)), float(np.round(rng.lognormal(3.0, 0.8), 2))))

cur.execute("CREATE SCHEMA qm")
cur.execute("CREATE TABLE qm.page_loads (user_id text, loaded_at timestamptz, load_ms float8)")
cur.execute("CREATE TABLE qm.orders (user_id text, ordered_at timestamptz, amount numeric(12, 2))")
copy_rows("qm.page_loads", ("user_id", "loaded_at", "load_ms"), [(u, ts(s), v) for u, s, v in loads])
copy_rows("qm.orders", ("user_id", "ordered_at", "amount"), [(u, ts(s), v) for u, s, v in orders])

cur.execute("""INSERT INTO experiment.experiments (id, name, status, start_at, end_at, alpha, analysis, correction)
               VALUES ('qm', 'quantiles', 'draft', %s, %s, 0.05, 'fixed', 'none')""", (ts(0), ts(END_S)))
cur.execute("""INSERT INTO experiment.variants (experiment_id, name, allocation, is_control) VALUES
               ('qm', 'control', 0.5, true), ('qm', 'treatment', 0.5, false)""")
METRICS = {
    # name: (source, time column, value column, quantile, level, window)
    "p99_load": ("qm.page_loads", "loaded_at", "load_ms", 0.99, "event", None),
    "p50_load_3d": ("qm.page_loads", "loaded_at", "load_ms", 0.5, "event", "3 days"),
    "p90_order_sum": ("qm.orders", "ordered_at", "amount", 0.9, "unit", None),
}
for name, (src, tcol, vcol, qq, level, window) in METRICS.items():
    cur.execute("""INSERT INTO experiment.metrics (name, source, unit_column, time_column, value_column, aggregation,
                                                   quantile, quantile_level, "window", higher_is_better)
                   VALUES (%s, %s, 'user_id', %s, %s, 'quantile', %s, %s, %s, false)""",
                (name, src, tcol, vcol, qq, level, window))
    if src == "qm.page_loads":
        # (the late loads added below arrive within this allowance of the newest load)
        cur.execute("UPDATE experiment.metrics SET late_events = '5 days' WHERE name = %s", (name,))
cur.execute("""INSERT INTO experiment.metrics (name, source, unit_column, time_column, value_column, aggregation,
                                               late_events)
               VALUES ('loads', 'qm.page_loads', 'user_id', 'loaded_at', NULL, 'count', '5 days')""")
cur.execute("""INSERT INTO experiment.experiment_metrics (experiment_id, metric, role) VALUES
               ('qm', 'p99_load', 'guardrail'), ('qm', 'p50_load_3d', 'secondary'),
               ('qm', 'p90_order_sum', 'secondary'), ('qm', 'loads', 'primary')""")
cur.execute("UPDATE experiment.experiments SET status = 'running' WHERE id = 'qm'")
exposures = [(units[i], "treatment" if treat[i] else "control", ts(t0[i])) for i in range(N)]
copy_rows("experiment.exposures", ("experiment_id", "unit_id", "variant", "exposed_at"),
          [("qm",) + x for x in exposures])
q("SELECT experiment.refresh('qm')")

# ---------------------------------------------------------------- the checks


def window_sql(name):
    _, tcol, _, _, _, window = METRICS[name]
    w = "s.%s >= u.t0 AND s.%s < %%L::timestamptz" % (tcol, tcol)
    if window:
        w += " AND s.%s < u.t0 + interval '%s'" % (tcol, window)
    return w


def moments_close(got, want, what):
    """two moments values (text form) equal up to the order of the additions"""
    g, w = json.loads(got), json.loads(want)
    ck.check(g["n"] == w["n"], "%s: n %r, want %r" % (what, g["n"], w["n"]))
    for a, b in zip(g["mean"] + sum(g["comoment"], []), w["mean"] + sum(w["comoment"], [])):
        ck.close(a, b, what, rel=1e-12, abs_tol=1e-9)


def check_plumbing(tag):
    """stored sketches, moments and tests equal those built here from the raw rows in SQL"""
    cur.execute("""CREATE TEMP TABLE qu AS
                   SELECT unit_id, min(variant) AS variant, min(exposed_at) AS t0
                   FROM experiment.exposures WHERE experiment_id = 'qm' GROUP BY unit_id
                   HAVING min(variant) = max(variant)""")
    for name, (src, tcol, vcol, qq, level, window) in METRICS.items():
        what = "%s%s" % (name, tag)
        cond = window_sql(name).replace("%L", "'%s'" % ts(END_S))
        if level == "event":
            q("""CREATE TEMP TABLE qs AS SELECT u.unit_id, u.variant, experiment.sketch(s.%s::float8) AS sk
                 FROM qu u LEFT JOIN %s s ON s.user_id = u.unit_id AND %s GROUP BY u.unit_id, u.variant"""
              % (vcol, src, cond))
            arm = """SELECT variant, experiment.merge(sk) AS sk FROM qs GROUP BY variant"""
        else:
            q("""CREATE TEMP TABLE qs AS SELECT u.unit_id, u.variant,
                        coalesce(sum(s.%s::float8), 0) AS y
                 FROM qu u LEFT JOIN %s s ON s.user_id = u.unit_id AND %s GROUP BY u.unit_id, u.variant"""
              % (vcol, src, cond))
            arm = """SELECT variant, experiment.sketch(y) AS sk FROM qs GROUP BY variant"""
        rows = q("""WITH a AS (%s)
                    SELECT a.variant, vs.sketch = a.sk, vs.sketch::text = a.sk::text,
                           experiment.quantile(vs.sketch, %%s), vs.units
                    FROM a JOIN experiment.variant_stats vs
                      ON vs.experiment_id = 'qm' AND vs.metric = %%s AND vs.variant = a.variant
                    ORDER BY a.variant""" % arm, (qq, name))
        ck.check(len(rows) == 2, "%s: two arms stored (%d)" % (what, len(rows)))
        for variant, eq, eqtext, qhat, nunits in rows:
            ck.check(eq and eqtext, "%s/%s: the stored sketch equals the sketch of the raw rows" % (what, variant))
        if level == "event":
            # the clustered moments: (loads <= the arm's quantile, loads) per unit, units without loads included
            rows = q("""WITH a AS (SELECT variant, experiment.quantile(experiment.merge(sk), %s) AS qhat
                                   FROM qs GROUP BY variant),
                        m AS (SELECT s.variant, experiment.moments(coalesce(experiment.rank(s.sk, a.qhat), 0),
                                                                   coalesce(experiment.n(s.sk), 0)::float8) AS m
                              FROM qs s JOIN a USING (variant) GROUP BY s.variant)
                        SELECT m.variant, vs.moments::text, m.m::text
                        FROM m JOIN experiment.variant_stats vs
                          ON vs.experiment_id = 'qm' AND vs.metric = %s AND vs.variant = m.variant
                        ORDER BY m.variant""", (qq, name))
            for variant, got, want in rows:
                moments_close(got, want, "%s/%s: the stored clustered moments vs those of the raw rows" % (what, variant))
        # the tests
        if level == "event":
            call = """experiment.quantile_test(c.sketch, t.sketch, %s, c.moments, t.moments, 0.05, '{alt}', NULL)"""
        else:
            call = """experiment.quantile_test(c.sketch, t.sketch, %s, 0.05, '{alt}', NULL)"""
        for col, alt in (("test", "two-sided"), ("bound_test", "less"), ("harm_test", "greater")):
            if col != "test" and name != "p99_load":
                continue
            (same,), = q("""SELECT mr.%s IS NOT DISTINCT FROM %s AND mr.method = 'quantile'
                            FROM experiment.metric_results mr
                            JOIN experiment.variant_stats c ON c.experiment_id = mr.experiment_id
                                 AND c.metric = mr.metric AND c.variant = mr.control_variant
                            JOIN experiment.variant_stats t ON t.experiment_id = mr.experiment_id
                                 AND t.metric = mr.metric AND t.variant = mr.variant
                            WHERE mr.experiment_id = 'qm' AND mr.metric = %%s"""
                         % (col, call.format(alt=alt) % qq), (name,))
            ck.check(same, "%s: metric_results.%s is quantile_test() of the stored sketches (%s)" % (what, col, alt))
        q("DROP TABLE qs")
    q("DROP TABLE qu")


check_plumbing("")

# numpy: the quantiles of the raw values, the cluster counts
lv = {u: [] for u in units}
loads_arr = {}
for u, s, v in loads:
    lv[u].append((s, v))
ui = {u: k for k, u in enumerate(units)}


def event_values(name, mask):
    window = METRICS[name][5]
    wsec = 3 * DAY if window else None
    out = []
    per_unit = []
    for i in np.nonzero(mask)[0]:
        vals = [v for s, v in lv[units[i]] if t0[i] <= s < END_S and (wsec is None or s < t0[i] + wsec)]
        out += vals
        per_unit.append(vals)
    return np.array(out), per_unit


masks = {"control": ~treat, "treatment": treat}
for name in ("p99_load", "p50_load_3d"):
    qq = METRICS[name][3]
    for variant, m in masks.items():
        vals, per_unit = event_values(name, m)
        (qhat, nb, nn, n), = q("""SELECT experiment.quantile(sketch, %s), experiment.mean(moments, 1) * experiment.n(moments),
                                        experiment.mean(moments, 2) * experiment.n(moments), experiment.n(moments)
                                 FROM experiment.variant_stats WHERE experiment_id = 'qm' AND metric = %s AND variant = %s""",
                              (qq, name, variant))
        lo = np.quantile(vals, qq, method="lower")
        hi = np.quantile(vals, qq, method="higher")
        ck.check(lo * (1 - ALPHA_SKETCH) - 1e-9 <= qhat <= hi * (1 + ALPHA_SKETCH) + 1e-9,
                 "%s/%s: quantile %r within 0.5%% of numpy's [%r, %r]" % (name, variant, qhat, lo, hi))
        ck.check(n == int(m.sum()), "%s/%s: the clustered moments count every unit (%r)" % (name, variant, n))
        ck.close(nn, float(len(vals)), "%s/%s: events in the window" % (name, variant), rel=1e-12)
        exact_below = sum(sum(1 for v in pu if v <= qhat) for pu in per_unit)
        # (the rank of a sketch counts whole bins: values within 0.5% of Q may fall on either side)
        near = sum(sum(1 for v in pu if abs(v - qhat) <= 2 * ALPHA_SKETCH * qhat) for pu in per_unit)
        ck.check(abs(nb - exact_below) <= near + 1e-6,
                 "%s/%s: events at or below Q %r, numpy %d (%d within the sketch's accuracy of Q)"
                 % (name, variant, nb, exact_below, near))

# the known effect: +15% on every load quantile
res = {r[0]: r[1:] for r in q("""SELECT metric, lift, lift_lower, lift_upper, p_value, mean_control, mean_treatment
                                 FROM experiment.results WHERE experiment_id = 'qm'""")}
for name in ("p99_load", "p50_load_3d"):
    lift, lo, hi, p, mc, mt = res[name]
    ck.check(p is not None and p < 0.05, "%s: the +15%% effect is significant (p = %r)" % (name, p))
    ck.check(lo < EFFECT - 1 < hi, "%s: the lift interval [%r, %r] covers +15%%" % (name, lo, hi))
lift, lo, hi, p, mc, mt = res["p90_order_sum"]
ck.check(p is not None and lo < 0 < hi, "p90_order_sum (no effect): interval [%r, %r] covers 0" % (lo, hi))
sums = {v: np.zeros(int(m.sum())) for v, m in masks.items()}
unit_sum = np.zeros(N)
for u, s, a in orders:
    i = ui[u]
    if t0[i] <= s < END_S:
        unit_sum[i] += a
for variant, m in masks.items():
    lo_, hi_ = np.quantile(unit_sum[m], 0.9, method="lower"), np.quantile(unit_sum[m], 0.9, method="higher")
    got = mc if variant == "control" else mt
    ck.check(lo_ * (1 - ALPHA_SKETCH) - 1e-9 <= got <= hi_ * (1 + ALPHA_SKETCH) + 1e-9,
             "p90_order_sum/%s: the p90 of the per-unit sums %r within 0.5%% of numpy's [%r, %r]"
             % (variant, got, lo_, hi_))

# over time and in the readout
days = dict(q("""SELECT metric, count(*) FROM experiment.results_daily WHERE experiment_id = 'qm' GROUP BY metric"""))
ck.check(days.get("p90_order_sum", 0) >= 5 and "p99_load" not in days and "p50_load_3d" not in days,
         "results_daily: the unit quantile by day, no event quantile (%r)" % (days,))
(last,), = q("""SELECT (rd.lift - r.lift) FROM experiment.results_daily rd JOIN experiment.results r USING (experiment_id, metric, variant)
               WHERE rd.experiment_id = 'qm' AND rd.metric = 'p90_order_sum' ORDER BY rd.day DESC LIMIT 1""")
ck.check(abs(last) < 1e-12, "results_daily: the last day's unit quantile lift is the result's (%r)" % last)
(ro,), = q("SELECT experiment.readout('qm')")
ck.check("(p50 of events)" in ro and "(p90 of units)" in ro and "p99_load" in ro,
         "the readout marks the quantile lines:\n%s" % ro)

# ---------------------------------------------------------------- incremental == full
(mode0,), = q("SELECT mode FROM experiment.refreshes WHERE experiment_id = 'qm'")
ck.check(mode0 == "full", "the first refresh is full (%r)" % mode0)
more = []
for i in rng.choice(N, 600, replace=False):
    more += loads_of(i, 2, max(t0[i], END_S - 3 * DAY), END_S)      # late loads, inside the allowance
new_units = []
for k in range(200):
    i = N + k
    units.append("u%05d" % i)
    treat = np.append(treat, rng.random() < 0.5)
    t0 = np.append(t0, rng.integers(5 * DAY, 7 * DAY))
    speed = np.append(speed, rng.normal(0.0, 0.3))
    new_units.append(i)
    more += loads_of(i, 3, t0[i], END_S)
copy_rows("qm.page_loads", ("user_id", "loaded_at", "load_ms"), [(u, ts(s), v) for u, s, v in more])
copy_rows("experiment.exposures", ("experiment_id", "unit_id", "variant", "exposed_at"),
          [("qm", units[i], "treatment" if treat[i] else "control", ts(t0[i])) for i in new_units]
          + [("qm", units[3], "control" if treat[3] else "treatment", ts(t0[3] + 60))])   # unit 3 turns multi-variant
q("SELECT experiment.refresh('qm')")
md = q("SELECT mode, full_reason FROM experiment.refreshes WHERE experiment_id = 'qm'")[0]
ck.check(md == ("incremental", None), "the second refresh is incremental: %r" % (md,))
check_plumbing(" (incremental)")
snap = """SELECT vs.metric, vs.variant, vs.units, vs.sketch::text, vs.moments::text, (mr.test).*
          FROM experiment.variant_stats vs LEFT JOIN experiment.metric_results mr
            ON mr.experiment_id = vs.experiment_id AND mr.metric = vs.metric AND mr.variant = vs.variant
          WHERE vs.experiment_id = 'qm' ORDER BY 1, 2"""
inc = q(snap)
q("SELECT experiment.refresh('qm', full => true)")
full = q(snap)
ck.check(len(inc) == len(full) == 8, "8 variant_stats rows (%d, %d)" % (len(inc), len(full)))
for a, b in zip(inc, full):
    what = "%s/%s incremental vs full" % (a[0], a[1])
    ck.check(a[:4] == b[:4], "%s: units and sketch equal" % what)
    if a[4] is not None or b[4] is not None:
        moments_close(a[4], b[4], "%s: moments" % what)
    for k in range(5, len(a)):
        if isinstance(a[k], float) or isinstance(b[k], float):
            # (the moments differ in the order of their additions, ~1e-16; a small p-value's tail
            # multiplies that relative error by about z^2)
            ck.close(a[k], b[k], "%s: test column %d" % (what, k), rel=1e-10)
        else:
            ck.check(a[k] == b[k], "%s: test column %d (%r, %r)" % (what, k, a[k], b[k]))

# ---------------------------------------------------------------- with dimensions and strata
# quantile metrics are not broken down by dimension nor post-stratified: their results stay
# those of the refresh without dimensions, and the other metrics get both
before = {r[0]: r[1:] for r in q("""SELECT metric, (test).* FROM experiment.metric_results
                                     WHERE experiment_id = 'qm' AND method = 'quantile'""")}
q("""UPDATE experiment.exposures SET attributes = jsonb_build_object('device', CASE WHEN hashtext(unit_id) % 3 = 0
                                                                           THEN 'phone' ELSE 'desktop' END)
     WHERE experiment_id = 'qm'""")
q("""INSERT INTO experiment.dimensions (experiment_id, name, attribute, attribute_key)
     VALUES ('qm', 'device', 'attributes', 'device')""")
q("UPDATE experiment.experiments SET stratify_by = 'device' WHERE id = 'qm'")
q("SELECT experiment.refresh('qm')")
after = {r[0]: r[1:] for r in q("""SELECT metric, (test).* FROM experiment.metric_results
                                    WHERE experiment_id = 'qm' AND method = 'quantile'""")}
ck.check(sorted(after) == sorted(before) == ["p50_load_3d", "p90_order_sum", "p99_load"],
         "with dimensions: the quantile results are there (%r)" % sorted(after))
for name in before:
    for k, (a, b) in enumerate(zip(after[name], before[name])):
        if isinstance(a, float) and isinstance(b, float):
            ck.close(a, b, "%s with dimensions: test column %d unchanged" % (name, k), rel=1e-10)
        else:
            ck.check(a == b, "%s with dimensions: test column %d unchanged (%r, %r)" % (name, k, a, b))
strat = dict(q("SELECT metric, stratified_by FROM experiment.metric_results WHERE experiment_id = 'qm'"))
ck.check(strat == {"loads": "device", "p50_load_3d": None, "p90_order_sum": None, "p99_load": None},
         "only the mean metric is post-stratified: %r" % strat)
dm = [r[0] for r in q("SELECT DISTINCT metric FROM experiment.dimension_results WHERE experiment_id = 'qm'")]
ck.check(dm == ["loads"], "only the mean metric is broken down by dimension: %r" % dm)

# ---------------------------------------------------------------- bad definitions


def refused(sql, words, what):
    try:
        cur.execute("SAVEPOINT s")
        cur.execute(sql)
        ck.check(False, "%s: accepted" % what)
    except psycopg2.Error as e:
        ck.check(e.pgcode == "22023" and all(w in e.pgerror for w in words),
                 "%s: %s %s" % (what, e.pgcode, e.pgerror.splitlines()[0]))
    cur.execute("ROLLBACK TO SAVEPOINT s")


conn.autocommit = False
ins = """INSERT INTO experiment.metrics (name, source, unit_column, time_column, value_column, aggregation,
                                         quantile, quantile_level, kind, winsorize)
         VALUES ('bad', 'qm.page_loads', 'user_id', 'loaded_at', %s, %s, %s, %s, %s, %s)"""
refused(ins % ("'load_ms'", "'quantile'", "NULL", "NULL", "'mean'", "NULL"), ["quantile", "set for aggregation quantile", "between 0 and 1"], "no quantile")
refused(ins % ("'load_ms'", "'quantile'", "1.5", "NULL", "'mean'", "NULL"), ["quantile", "strictly between 0 and 1", "1.5"], "quantile 1.5")
refused(ins % ("'load_ms'", "'quantile'", "0.9", "'session'", "'mean'", "NULL"), ["quantile_level", "event", "unit"],
        "quantile_level session")
refused(ins % ("'load_ms'", "'sum'", "0.9", "NULL", "'mean'", "NULL"), ["quantile", "aggregation"],
        "a quantile with aggregation sum")
refused(ins % ("NULL", "'quantile'", "0.9", "NULL", "'mean'", "NULL"), ["value_column"], "a quantile of rows")
refused(ins % ("'load_ms'", "'quantile'", "0.9", "NULL", "'proportion'", "NULL"), ["kind"], "a quantile proportion")
refused(ins % ("'load_ms'", "'quantile'", "0.9", "NULL", "'mean'", "0.99"), ["capped", "winsorize"],
        "a winsorized quantile")
refused("""INSERT INTO experiment.metrics (name, kind, numerator, denominator)
           VALUES ('bad_ratio', 'ratio', 'p99_load', 'loads')""", ["quantile"], "a quantile in a ratio")
conn.rollback()
conn.autocommit = True

ck.report()
