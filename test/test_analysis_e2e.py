"""End-to-end test of the analysis: exposures -> units -> per-unit values ->
moments -> tests -> views and readout, on generated data with a known effect.

Every per-variant n, mean, variance and covariance that experiment.refresh()
stores is recomputed here from the raw rows with numpy, applying the
documented rules independently (first exposure defines variant and start,
units in several variants excluded, windows [t0 + delay, t0 + delay + window)
cut at the end of the experiment, zero-filled units, winsorization at a pooled
percentile_cont, CUPED pre-period [t0 - lookback, t0), ratio parts). The
p-values are checked against scipy / statsmodels on the per-unit values. A
second, deliberately skewed experiment must fail the SRM check.
"""
import datetime as dt
import io
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from exptest import Checker, fresh_db  # noqa: E402

import numpy as np  # noqa: E402
from scipy import stats  # noqa: E402
from statsmodels.stats.proportion import proportions_ztest  # noqa: E402

DAY = 86400
START = dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc)
END_S = 14 * DAY  # end_at, seconds after START
ALPHA = 0.05
REL = 1e-7

ck = Checker("test_analysis_e2e")
rng = np.random.default_rng(20250101)
conn = fresh_db("exp_analysis_e2e")
cur = conn.cursor()


def ts(sec):
    return (START + dt.timedelta(seconds=int(sec))).isoformat()


def q(sql, args=None):
    cur.execute(sql, args)
    return cur.fetchall()


def copy_rows(table, cols, rows):
    buf = io.StringIO()
    for r in rows:
        buf.write("\t".join(str(x) for x in r) + "\n")
    buf.seek(0)
    cur.copy_expert("COPY %s (%s) FROM STDIN" % (table, ", ".join(cols)), buf)


# ---------------------------------------------------------------- the data
N = 6000
units = ["u%05d" % i for i in range(N)]
treat = rng.random(N) < 0.5
t0 = rng.integers(0, 10 * DAY, N)           # first exposure, seconds after START
prop = rng.random(N)                        # latent propensity

# exposures: the first one, later ones in the same variant, 25 units also in the other variant
exposures = []
for i in range(N):
    v = "treatment" if treat[i] else "control"
    exposures.append((units[i], v, int(t0[i]), "ev-%d-0" % i))
    for k in range(int(rng.integers(0, 3))):
        exposures.append((units[i], v, int(t0[i] + rng.integers(60, 3 * DAY)), "ev-%d-%d" % (i, k + 1)))
multi = set(rng.choice(N, 25, replace=False).tolist())
for i in multi:
    v = "control" if treat[i] else "treatment"
    exposures.append((units[i], v, int(t0[i] + 3600), "ev-%d-x" % i))
# one unit exposed only after the end of the experiment: not enrolled
exposures.append(("late-unit", "control", END_S + 3600, "ev-late"))

orders = []     # (unit, second, amount)
sessions = []   # (unit, second)
for i in range(N):
    a = prop[i]
    # pre-period orders, some older than the 7 day CUPED lookback
    for _ in range(rng.poisson(1.5 * a)):
        orders.append((units[i], int(t0[i] - rng.integers(1, 12 * DAY)), round(20 + 40 * a + rng.normal(0, 5), 2)))
    # orders around and after exposure (some before it, some after the windows or the end)
    for _ in range(rng.poisson(0.45 + 0.8 * a + 0.35 * treat[i])):
        amt = round(20 + 40 * a + 3 * treat[i] + rng.normal(0, 5), 2)
        if rng.random() < 0.005:
            amt = 5000.0  # a whale, for winsorization
        orders.append((units[i], int(t0[i] + rng.integers(-DAY // 2, 6 * DAY)), amt))
    for _ in range(rng.poisson(3 + 2 * a)):
        sessions.append((units[i], int(t0[i] + rng.integers(-DAY, 8 * DAY))))
# events exactly on window boundaries
for i in range(0, N, 97):
    orders.append((units[i], int(t0[i]), 11.0))                 # at exposure: counted
    orders.append((units[i], int(t0[i] + 3 * DAY), 13.0))       # at the end of the 3 day window: not counted
    sessions.append((units[i], int(t0[i] + DAY)))               # at the start of the delayed window: counted
    orders.append((units[i], int(t0[i] - 7 * DAY), 17.0))       # at the start of the lookback: counted in x
# events of units never exposed
orders.append(("stranger", 5 * DAY, 999.0))

# ---------------------------------------------------------------- register
cur.execute("CREATE SCHEMA e2e")
cur.execute("CREATE TABLE e2e.orders (user_id text, ordered_at timestamptz, amount float8)")
cur.execute("CREATE TABLE e2e.sessions (user_id text, started_at timestamptz)")
copy_rows("e2e.orders", ("user_id", "ordered_at", "amount"), [(u, ts(s), a) for u, s, a in orders])
copy_rows("e2e.sessions", ("user_id", "started_at"), [(u, ts(s)) for u, s in sessions])

# a fixed-horizon analysis without correction, so that every number has a scipy/numpy oracle
# (the sequential and corrected forms are checked in test_decision_oracle.py)
cur.execute("""INSERT INTO experiment.experiments (id, name, status, start_at, end_at, min_runtime, alpha,
                                                    analysis, correction)
               VALUES ('e2e', 'end to end', 'draft', %s, %s, '7 days', %s, 'fixed', 'none')""", (ts(0), ts(END_S), ALPHA))
cur.execute("""INSERT INTO experiment.variants (experiment_id, name, allocation, is_control) VALUES
               ('e2e', 'control', 0.5, true), ('e2e', 'treatment', 0.5, false)""")
METRICS = {
    # name: (source, time col, value col, aggregation, kind, delay, window, winsorize, lookback, higher)
    "e2e_conv": ("e2e.orders", "ordered_at", None, "any", "proportion", 0, 3 * DAY, None, None, True),
    "e2e_revenue": ("e2e.orders", "ordered_at", "amount", "sum", "mean", 0, 5 * DAY, 0.99, 7 * DAY, True),
    "e2e_orders": ("e2e.orders", "ordered_at", None, "count", "mean", 0, None, None, None, True),
    "e2e_max_order": ("e2e.orders", "ordered_at", "amount", "max", "mean", 0, None, None, None, True),
    "e2e_sessions": ("e2e.sessions", "started_at", None, "count", "mean", 0, None, None, None, True),
    "e2e_late_sessions": ("e2e.sessions", "started_at", None, "count", "mean", DAY, 2 * DAY, None, None, False),
}
for name, (src, tcol, vcol, agg, kind, delay, window, wins, lookback, hib) in METRICS.items():
    cur.execute("""INSERT INTO experiment.metrics (name, source, unit_column, time_column, value_column,
                   aggregation, kind, delay, "window", winsorize, cuped_lookback, higher_is_better)
                   VALUES (%s, %s, 'user_id', %s, %s, %s, %s, make_interval(secs => %s),
                           make_interval(secs => %s), %s, make_interval(secs => %s), %s)""",
                (name, src, tcol, vcol, agg, kind, delay, window, wins, lookback, hib))
cur.execute("""INSERT INTO experiment.metrics (name, kind, numerator, denominator)
               VALUES ('e2e_orders_per_session', 'ratio', 'e2e_orders', 'e2e_sessions')""")
ROLES = {"e2e_conv": "primary", "e2e_revenue": "secondary", "e2e_orders": "secondary",
         "e2e_max_order": "secondary", "e2e_orders_per_session": "secondary",
         "e2e_sessions": "guardrail", "e2e_late_sessions": "guardrail"}
for m, role in ROLES.items():
    cur.execute("INSERT INTO experiment.experiment_metrics (experiment_id, metric, role) VALUES ('e2e', %s, %s)",
                (m, role))
cur.execute("UPDATE experiment.experiments SET status = 'running' WHERE id = 'e2e'")

# exposures through the bulk path, with 20% redelivered in other batches
payload = [{"experiment_id": "e2e", "unit_id": u, "variant": v, "exposed_at": ts(s), "event_id": e}
           for u, v, s, e in exposures]
redelivered = [payload[j] for j in rng.choice(len(payload), len(payload) // 5, replace=False)]
allrows = payload + redelivered
order = rng.permutation(len(allrows))
ins = dup = quar = 0
for b in range(0, len(allrows), 4000):
    batch = [allrows[j] for j in order[b:b + 4000]]
    (i_, d_, q_), = q("SELECT * FROM experiment.ingest_exposures(%s::jsonb)", (json.dumps(batch),))
    ins, dup, quar = ins + i_, dup + d_, quar + q_
ck.check(ins == len(payload) and dup == len(redelivered) and quar == 0,
         "ingest: %d stored, %d duplicates, %d quarantined; want %d, %d, 0" % (ins, dup, quar, len(payload), len(redelivered)))
(nexp,), = q("SELECT count(*) FROM experiment.exposures WHERE experiment_id = 'e2e'")
ck.check(nexp == len(payload), "exposures stored %d, want %d" % (nexp, len(payload)))

q("SELECT experiment.refresh('e2e')")

# ---------------------------------------------------------------- the oracle
first = {}
variants_seen = {}
for u, v, s, e in exposures:
    if s >= END_S:
        continue
    if u not in first or s < first[u]:
        first[u] = s
    variants_seen.setdefault(u, set()).add(v)
enrolled = sorted(u for u in first if len(variants_seen[u]) == 1)
n_multi = sum(1 for u in first if len(variants_seen[u]) > 1)
ui = {u: k for k, u in enumerate(enrolled)}
uvar = np.array([next(iter(variants_seen[u])) for u in enrolled])
ut0 = np.array([first[u] for u in enrolled], dtype=np.int64)
is_t = uvar == "treatment"

events_by_src = {"e2e.orders": orders, "e2e.sessions": [(u, s, 1.0) for u, s in sessions]}


def unit_values(name, pre=False, windows=True, lookback=None):
    src, tcol, vcol, agg, kind, delay, window, wins, lb, hib = METRICS[name]
    lb = lb if lookback is None else lookback
    vals = {}
    for row in events_by_src[src]:
        u, s = row[0], row[1]
        if u not in ui:
            continue
        k = ui[u]
        t = ut0[k]
        if pre:
            ok = t - lb <= s < t
        elif windows:
            ok = s >= t + delay and (window is None or s < t + delay + window) and s < END_S
        else:
            ok = True
        if not ok:
            continue
        x = row[2] if vcol else 1.0
        vals.setdefault(k, []).append(x)
    out = np.zeros(len(enrolled))
    for k, xs in vals.items():
        if agg == "sum":
            out[k] = sum(xs)
        elif agg == "count":
            out[k] = len(xs)
        elif agg == "any":
            out[k] = 1.0 if any(x != 0 for x in xs) else 0.0
        else:
            out[k] = max(xs)
    return out


def capped(name, y):
    wins = METRICS[name][7]
    if wins is None:
        return y, None
    cap = float(np.quantile(y, wins))   # linear interpolation = percentile_cont
    return np.minimum(y, cap), cap


def moments_of(sql_metric, variant):
    rows = q("""SELECT units, experiment.n(moments), experiment.mean(moments, 1), experiment.variance(moments, 1),
                       CASE WHEN experiment.n(moments) > 0 AND %s THEN experiment.mean(moments, 2) END,
                       CASE WHEN %s THEN experiment.variance(moments, 2) END,
                       CASE WHEN %s THEN experiment.covariance(moments, 1, 2) END,
                       experiment.mean(cuped_moments, 2), experiment.variance(cuped_moments, 2),
                       experiment.covariance(cuped_moments, 1, 2), cap
                FROM experiment.variant_stats WHERE experiment_id = 'e2e' AND metric = %s AND variant = %s""",
             (sql_metric.endswith("per_session"),) * 3 + (sql_metric, variant))
    return rows[0] if rows else None


def results_of(metric):
    cur.execute("SELECT * FROM experiment.results WHERE experiment_id = 'e2e' AND metric = %s", (metric,))
    cols = [d[0] for d in cur.description]
    rows = cur.fetchall()
    return dict(zip(cols, rows[0])) if len(rows) == 1 else None


# enrolment, SRM, health
rows = q("SELECT variant, units FROM experiment.enrollment WHERE experiment_id = 'e2e' ORDER BY variant")
ck.check(rows == [("control", int((~is_t).sum())), ("treatment", int(is_t.sum()))],
         "enrollment %r, want control %d treatment %d" % (rows, (~is_t).sum(), is_t.sum()))
(mv, enr), = q("SELECT multi_variant_units, enrolled_units FROM experiment.health WHERE experiment_id = 'e2e'")
ck.check(mv == n_multi == 25 and enr == len(enrolled), "multi-variant %r / enrolled %r" % (mv, enr))
(srm_p, srm_ok), = q("SELECT DISTINCT p_value, ok FROM experiment.srm WHERE experiment_id = 'e2e'")
want_srm = stats.chisquare([(~is_t).sum(), is_t.sum()]).pvalue
ck.close(srm_p, want_srm, "srm p", rel=1e-9)
ck.check(srm_ok is True, "srm ok on a balanced split")

# ---------------------------------------------------------------- per metric
values = {}
for name in METRICS:
    y = unit_values(name)
    yc, cap = capped(name, y)
    values[name] = yc
    for variant, mask in (("control", ~is_t), ("treatment", is_t)):
        got = moments_of(name, variant)
        if not ck.check(got is not None, "%s/%s: no variant_stats row" % (name, variant)):
            continue
        units_, n, mean, var = got[0], got[1], got[2], got[3]
        ck.check(units_ == n == int(mask.sum()), "%s/%s: n %r, want %d (zero-filled)" % (name, variant, n, mask.sum()))
        ck.close(mean, float(yc[mask].mean()), "%s/%s mean" % (name, variant), rel=REL)
        ck.close(var, float(yc[mask].var(ddof=1)), "%s/%s variance" % (name, variant), rel=REL)
        if cap is not None:
            ck.close(got[10], cap, "%s/%s winsorization cap" % (name, variant), rel=1e-12)
        if METRICS[name][8] is not None:   # CUPED pre-period
            x = unit_values(name, pre=True)
            xc, _ = capped(name, x)
            ck.close(got[7], float(xc[mask].mean()), "%s/%s pre-period mean" % (name, variant), rel=REL)
            ck.close(got[8], float(xc[mask].var(ddof=1)), "%s/%s pre-period variance" % (name, variant), rel=REL)
            ck.close(got[9], float(np.cov(yc[mask], xc[mask])[0, 1]), "%s/%s covariance with pre-period" % (name, variant), rel=REL)

# the data exercise every rule: without it the means would differ
naive = unit_values("e2e_conv", windows=False)
ck.check(abs(naive.mean() - values["e2e_conv"].mean()) > 0.01, "windows matter in the data")
ck.check((values["e2e_orders"] == 0).sum() > 100, "data have zero-filled units")
raw_rev = unit_values("e2e_revenue")
ck.check(abs(raw_rev.mean() - values["e2e_revenue"].mean()) > 1.0, "winsorization matters in the data")
long_x = unit_values("e2e_revenue", pre=True, lookback=30 * DAY)
short_x = unit_values("e2e_revenue", pre=True)
ck.check(abs(long_x.mean() - short_x.mean()) > 1.0, "CUPED lookback matters in the data")
late = unit_values("e2e_late_sessions")
ck.check(abs(late.mean() - unit_values("e2e_sessions").mean()) > 0.5, "delay and window matter in the data")

# ---------------------------------------------------------------- tests vs scipy/statsmodels
c, t = ~is_t, is_t

r = results_of("e2e_conv")
y = values["e2e_conv"]
ck.check(r is not None and r["method"] == "prop_ztest", "conv method %r" % (r and r["method"]))
if r:
    xc, xt = int(y[c].sum()), int(y[t].sum())
    z, p = proportions_ztest([xt, xc], [int(t.sum()), int(c.sum())])
    ck.close(r["p_value"], float(p), "conv p-value vs statsmodels", rel=1e-6)
    ck.close(r["statistic"], float(z), "conv z vs statsmodels", rel=1e-6)
    ck.close(r["mean_control"], xc / c.sum(), "conv control rate", rel=1e-12)
    ck.close(r["mean_treatment"], xt / t.sum(), "conv treatment rate", rel=1e-12)
    pc, pt = xc / c.sum(), xt / t.sum()
    se = np.sqrt(pc * (1 - pc) / c.sum() + pt * (1 - pt) / t.sum())
    zq = stats.norm.ppf(1 - ALPHA / 2)
    ck.close(r["diff_lower"], pt - pc - zq * se, "conv Wald CI lower", rel=1e-6)
    ck.close(r["diff_upper"], pt - pc + zq * se, "conv Wald CI upper", rel=1e-6)
    ck.check(r["significant"] and r["better"] and r["p_value"] < 0.001, "known effect on conversion detected")

for name in ("e2e_orders", "e2e_max_order", "e2e_sessions", "e2e_late_sessions"):
    r = results_of(name)
    y = values[name]
    if not ck.check(r is not None and r["method"] == "welch", "%s method %r" % (name, r and r["method"])):
        continue
    res = stats.ttest_ind(y[t], y[c], equal_var=False)
    ck.close(r["p_value"], float(res.pvalue), "%s p-value vs scipy welch" % name, rel=1e-6)
    ck.close(r["statistic"], float(res.statistic), "%s t vs scipy welch" % name, rel=1e-6)
    ck.close(r["diff"], float(y[t].mean() - y[c].mean()), "%s diff" % name, rel=1e-9, abs_tol=1e-12)

# results over time: each day of first exposure, the Welch test of the units enrolled up to
# the end of that day (UTC), with their values at the refresh
uday = (ut0 // DAY).astype(np.int64)
daily = {r[0]: r[1:] for r in q("""SELECT day, units_control, units_treatment, diff, p_value, lift, method
                                   FROM experiment.results_daily WHERE experiment_id = 'e2e' AND metric = 'e2e_orders'
                                   AND variant = 'treatment' ORDER BY day""")}
want_days = sorted({(START + dt.timedelta(days=int(d))).date() for d in uday})
ck.check(sorted(daily) == want_days, "results_daily has a row per day of first exposure: %d rows, %d days"
         % (len(daily), len(want_days)))
y = values["e2e_orders"]
for k, day in enumerate(want_days):
    if day not in daily:
        continue
    upto = uday <= (day - START.date()).days
    cd, td = c & upto, t & upto
    nc_, nt_, diff_, p_, lift_, method_ = daily[day]
    ck.check((nc_, nt_, method_) == (int(cd.sum()), int(td.sum()), "welch"),
             "results_daily %s: units %r/%r, method %r" % (day, nc_, nt_, method_))
    if cd.sum() >= 2 and td.sum() >= 2:
        res = stats.ttest_ind(y[td], y[cd], equal_var=False)
        ck.close(p_, float(res.pvalue), "results_daily %s p-value vs scipy on the units enrolled by then" % day, rel=1e-6)
        ck.close(diff_, float(y[td].mean() - y[cd].mean()), "results_daily %s diff" % day, rel=1e-9, abs_tol=1e-12)
final = results_of("e2e_orders")
last = daily[want_days[-1]]
# (from merged per-day moments: equal to rounding)
ck.close(last[2], final["diff"], "the last day of results_daily is the result", rel=1e-12, abs_tol=1e-15)
ck.close(last[3], final["p_value"], "the last day's p-value is the result's", rel=1e-9)

# CUPED, the documented estimator (doc/statistics.md, cuped_ttest): Welch on
# y - theta (x - mean x) with theta = cov(x, y) / var(x) over all units of both
# arms together (not the within-arm pooled estimate); the statistic, diff,
# interval and p-value are checked against that computed here with numpy
r = results_of("e2e_revenue")
if ck.check(r is not None and r["method"] == "cuped", "revenue method %r" % (r and r["method"])):
    y = values["e2e_revenue"]
    x, _ = capped("e2e_revenue", unit_values("e2e_revenue", pre=True))
    theta = np.cov(x, y)[0, 1] / np.var(x, ddof=1)
    adj = y - theta * (x - x.mean())
    at, ac = adj[t], adj[c]
    vt, vc = at.var(ddof=1) / len(at), ac.var(ddof=1) / len(ac)
    se = np.sqrt(vt + vc)
    df = (vt + vc) ** 2 / (vt ** 2 / (len(at) - 1) + vc ** 2 / (len(ac) - 1))
    diff = at.mean() - ac.mean()
    tq = stats.t.ppf(1 - ALPHA / 2, df)
    p = 2 * stats.t.sf(abs(diff / se), df)
    ck.close(r["p_value"], float(p), "revenue CUPED p (theta pooled over both arms)", rel=1e-6)
    ck.close(r["statistic"], float(diff / se), "revenue CUPED t", rel=1e-7)
    ck.close(r["diff"], float(diff), "revenue CUPED diff", rel=1e-9)
    ck.close(r["diff_lower"], float(diff - tq * se), "revenue CUPED CI lower", rel=1e-7)
    ck.close(r["diff_upper"], float(diff + tq * se), "revenue CUPED CI upper", rel=1e-7)
    # the within-arm estimate differs here, so the check tells the two apart
    sxy = sum(np.cov(x[m], y[m])[0, 1] * (m.sum() - 1) for m in (c, t))
    sxx = sum(np.var(x[m], ddof=1) * (m.sum() - 1) for m in (c, t))
    adj_w = y - (sxy / sxx) * (x - x.mean())
    p_w = stats.ttest_ind(adj_w[t], adj_w[c], equal_var=False).pvalue
    ck.check(abs(p_w - p) > 1e-5 * p, "within-arm theta gives a different p (%r vs %r)" % (p_w, p))
    ck.close(r["mean_control"], float(y[c].mean()), "CUPED reports the unadjusted control mean", rel=REL)
    se_welch = np.sqrt(y[c].var(ddof=1) / c.sum() + y[t].var(ddof=1) / t.sum())
    ck.check(r["diff_upper"] - r["diff_lower"] < 2 * stats.norm.ppf(1 - ALPHA / 2) * se_welch,
             "CUPED interval narrower than the plain Welch interval")

# ratio: delta method per arm, then Welch
r = results_of("e2e_orders_per_session")
if ck.check(r is not None and r["method"] == "ratio", "ratio method %r" % (r and r["method"])):
    num, den = values["e2e_orders"], values["e2e_sessions"]
    arm = {}
    for lab, m in (("c", c), ("t", t)):
        mn, md = num[m].mean(), den[m].mean()
        cv = np.cov(num[m], den[m])
        v = cv[0, 0] / md ** 2 + cv[1, 1] * mn ** 2 / md ** 4 - 2 * cv[0, 1] * mn / md ** 3
        arm[lab] = (mn / md, v, m.sum())
    se2c, se2t = arm["c"][1] / arm["c"][2], arm["t"][1] / arm["t"][2]
    diff = arm["t"][0] - arm["c"][0]
    dfw = (se2c + se2t) ** 2 / (se2c ** 2 / (arm["c"][2] - 1) + se2t ** 2 / (arm["t"][2] - 1))
    tstat = diff / np.sqrt(se2c + se2t)
    ck.close(r["mean_control"], arm["c"][0], "ratio control value", rel=REL)
    ck.close(r["mean_treatment"], arm["t"][0], "ratio treatment value", rel=REL)
    ck.close(r["p_value"], float(2 * stats.t.sf(abs(tstat), dfw)), "ratio p-value vs numpy delta method", rel=1e-6)
    m = moments_of("e2e_orders_per_session", "control")
    ck.close(m[4], float(den[c].mean()), "ratio denominator mean stored", rel=REL)
    ck.close(m[6], float(np.cov(num[c], den[c])[0, 1]), "ratio covariance stored", rel=REL)

# ---------------------------------------------------------------- readout and decision
(text,), = q("SELECT experiment.readout('e2e')")
lines = text.split("\n")
ck.check(lines[0] == "Experiment: e2e   Duration: 14 days", "readout line 1: %r" % lines[0])
want_sample = "Sample: {:,} control / {:,} treatment".format(int(c.sum()), int(t.sum()))
ck.check(lines[1].startswith(want_sample) and lines[1].endswith("ok (threshold 0.001)"), "readout line 2: %r" % lines[1])
ck.check(lines[2] == "Analysis: fixed horizon (valid at the planned end only), alpha = 0.05", "readout line 3: %r" % lines[2])
ck.check(lines[3] == "Primary metric (e2e_conv):", "readout line 4: %r" % lines[3])
ck.check("pp (" in lines[4] and "95% CI [" in lines[4] and "p < 0.001" in lines[4], "readout primary: %r" % lines[4])
ck.check(lines[-1].startswith("Decision: SHIP (fixed horizon: e2e_conv +") and lines[-1].endswith(", p < 0.001, guardrails ok)"),
         "readout decision: %r" % lines[-1])
(dec, reason), = q("SELECT decision, reason FROM experiment.decision('e2e')")
ck.check(dec == "SHIP" and lines[-1] == "Decision: SHIP (%s)" % reason, "decision %r %r" % (dec, reason))

# refresh_all refreshes running experiments only, and conclude keeps a snapshot
(n_refreshed,), = q("SELECT experiment.refresh_all()")
ck.check(n_refreshed == 1, "refresh_all refreshed %r" % n_refreshed)
(cid, cdec, crec, nres, cro), = q("""SELECT id, decision, recommended_decision, jsonb_array_length(results), readout
                                     FROM experiment.conclude('e2e', 'ship', 'progress bar wins')""")
ck.check(cdec == "SHIP" and crec == "SHIP" and nres == len(ROLES) and cro == text,
         "conclusion %r %r %r" % (cdec, crec, nres))
(status,), = q("SELECT status FROM experiment.experiments WHERE id = 'e2e'")
ck.check(status == "concluded", "status after conclude %r" % status)

# ---------------------------------------------------------------- a skewed experiment fails SRM
cur.execute("""INSERT INTO experiment.experiments (id, name, status, start_at, end_at)
               VALUES ('e2e-skewed', 'skewed', 'draft', %s, %s)""", (ts(0), ts(END_S)))
cur.execute("""INSERT INTO experiment.variants (experiment_id, name, allocation, is_control) VALUES
               ('e2e-skewed', 'control', 0.5, true), ('e2e-skewed', 'treatment', 0.5, false)""")
cur.execute("""INSERT INTO experiment.experiment_metrics (experiment_id, metric, role)
               VALUES ('e2e-skewed', 'e2e_conv', 'primary')""")
cur.execute("UPDATE experiment.experiments SET status = 'running' WHERE id = 'e2e-skewed'")
skew = rng.random(N) < 0.46   # 46% treatment against a 50/50 design
copy_rows("experiment.exposures", ("experiment_id", "unit_id", "variant", "exposed_at"),
          [("e2e-skewed", units[i], "treatment" if skew[i] else "control", ts(t0[i])) for i in range(N)])
q("SELECT experiment.refresh('e2e-skewed')")
(sp, sok), = q("SELECT DISTINCT p_value, ok FROM experiment.srm WHERE experiment_id = 'e2e-skewed'")
ck.close(sp, float(stats.chisquare([(~skew).sum(), skew.sum()]).pvalue), "skewed srm p", rel=1e-9)
ck.check(sok is False and sp < 0.001, "SRM detected (p = %r)" % sp)
(text2,), = q("SELECT experiment.readout('e2e-skewed')")
ck.check(text2.split("\n")[-1].startswith("Decision: INVALID"), "skewed readout: %r" % text2.split("\n")[-1])
ck.check("FAILED" in text2.split("\n")[1], "skewed readout SRM line %r" % text2.split("\n")[1])

conn.close()
ck.report()
