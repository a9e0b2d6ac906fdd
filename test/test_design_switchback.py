"""Switchback experiments end to end: experiments.switchback_window and
switchback_burn_in -> assign_switchback() -> exposures of each (region,
window) -> refresh() -> per-window values after the burn-in -> tests over
windows in metric_results, enrollment (windows), refreshes and the readout.

Generated data: 6 regions, 1-hour windows over 4 days (a few windows without
exposures, one exposed to both variants), deliveries whose count and duration
follow a daily cycle, a region effect, a treatment effect and a carry-over of
the previous window's variant into the first 10 minutes of each window.

Oracle, from the raw rows with numpy: the windows and their variants, each
window's events in [start + burn-in, end) before end_at, the pooled percentile
cap over windows, then scipy's Welch test over windows (deliveries, minutes)
and the delta-method ratio of sums over windows (minutes per delivery), to
1e-9; the same without burn-in; bad declarations are 22023 errors naming the
field.
"""
import datetime as dt
import io
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from exptest import Checker, fresh_db  # noqa: E402

import numpy as np  # noqa: E402
import psycopg2  # noqa: E402
from scipy import stats  # noqa: E402

HOUR = 3600
START = dt.datetime(2025, 6, 2, tzinfo=dt.timezone.utc)     # a multiple of the window from the epoch
DAYS = 4
END_S = DAYS * 24 * HOUR - 1800                             # the end falls inside the last window
REGIONS = ["r-%d" % k for k in range(6)]
REL = 1e-9

ck = Checker("test_design_switchback")
rng = np.random.default_rng(20251203)
conn = fresh_db("exp_design_switchback")
cur = conn.cursor()
worst = {"rel": 0.0}


def ts(sec):
    return (START + dt.timedelta(seconds=int(sec))).isoformat()


def q(sql, args=None):
    cur.execute(sql, args)
    return cur.fetchall() if cur.description else None


def copy_rows(table, cols, rows):
    buf = io.StringIO()
    for r in rows:
        buf.write("\t".join("\\N" if x is None else str(x) for x in r) + "\n")
    buf.seek(0)
    cur.copy_expert("COPY %s (%s) FROM STDIN" % (table, ", ".join(cols)), buf)


def close(got, want, what, rel=REL):
    if got is not None and want is not None and want != 0:
        worst["rel"] = max(worst["rel"], abs(got - want) / abs(want))
    return ck.close(got, want, what, rel=rel, abs_tol=1e-12)


def expect_error(sql, words, what):
    try:
        cur.execute(sql)
    except psycopg2.Error as e:
        msg = e.diag.message_primary or ""
        ck.check(e.pgcode == "22023" and all(w in msg for w in words), "%s: got %s %r" % (what, e.pgcode, msg))
        return
    ck.check(False, "%s: no error" % what)


# two experiments with the same salt (the same windows' variants): with a burn-in, and without
for eid in ("sb", "sb0"):
    cur.execute("""INSERT INTO experiment.experiments (id, status, start_at, end_at, analysis, salt)
                   VALUES (%s, 'draft', %s, NULL, 'fixed', 'sb')""", (eid, ts(0)))
    cur.execute("""INSERT INTO experiment.variants (experiment_id, name, allocation, is_control) VALUES
                   (%s, 'control', 0.5, true), (%s, 'treatment', 0.5, false)""", (eid, eid))

# bad declarations
for sql, words, what in [
    ("UPDATE experiment.experiments SET switchback_burn_in = '10 minutes' WHERE id = 'sb'",
     ["switchback_burn_in", "needs switchback_window"], "burn-in without window"),
    ("UPDATE experiment.experiments SET switchback_window = '1 month' WHERE id = 'sb'",
     ["switchback_window", "1 mon"], "a window in months"),
    ("UPDATE experiment.experiments SET switchback_window = '0 seconds' WHERE id = 'sb'",
     ["switchback_window", "at least 1 second"], "an empty window"),
    ("UPDATE experiment.experiments SET switchback_window = '1 hour', switchback_burn_in = '1 hour' WHERE id = 'sb'",
     ["switchback_burn_in", "01:00:00"], "a burn-in as long as the window"),
    ("UPDATE experiment.experiments SET switchback_window = '1 hour', switchback_burn_in = '-1 minute' WHERE id = 'sb'",
     ["switchback_burn_in"], "a negative burn-in"),
    ("UPDATE experiment.experiments SET switchback_window = '1 hour', cluster_attribute = 'region' WHERE id = 'sb'",
     ["switchback_window", "cluster-randomised"], "switchback and clusters"),
]:
    expect_error(sql, words, what)

cur.execute("""UPDATE experiment.experiments SET switchback_window = '1 hour', switchback_burn_in = '10 minutes',
               status = 'running', start_at = %s WHERE id = 'sb'""", (ts(0),))
cur.execute("""UPDATE experiment.experiments SET switchback_window = '1 hour', status = 'running', start_at = %s
               WHERE id = 'sb0'""", (ts(0),))
expect_error("UPDATE experiment.experiments SET switchback_burn_in = '5 minutes' WHERE id = 'sb'",
             ["cannot change the switchback declaration", "running"], "a new burn-in while running")

# the windows' variants, as a dispatch service gets them (assign_switchback), and their exposures
n_windows = DAYS * 24
wins = {}          # (region, window index from START) -> variant
exposures = []
for r in REGIONS:
    for w in range(n_windows):
        if rng.random() < 0.03:
            continue                                   # nobody exposed in this window: not analysed
        at = w * HOUR + int(rng.integers(0, HOUR))
        if at >= END_S:
            continue
        (v,), = q("SELECT experiment.assign_switchback(%s, 'sb', %s, '1 hour')", (r, ts(at)))
        wins[(r, w)] = v
        exposures.append(("sb", r, v, ts(at)))
        for k in range(int(rng.integers(0, 3))):
            t = w * HOUR + int(rng.integers(0, HOUR))
            if t < END_S and ("sb", r, v, ts(t)) not in exposures:
                exposures.append(("sb", r, v, ts(t)))
# one window exposed to both variants: left out
mixed = sorted(wins)[5]
exposures.append(("sb", mixed[0], "control" if wins[mixed] == "treatment" else "treatment", ts(mixed[1] * HOUR + 30)))
del wins[mixed]
copy_rows("experiment.exposures", ("experiment_id", "unit_id", "variant", "exposed_at"),
          exposures + [("sb0",) + x[1:] for x in exposures])
cur.execute("UPDATE experiment.experiments SET end_at = %s WHERE id IN ('sb', 'sb0')", (ts(END_S),))
n_both = sum(1 for v in wins.values() if v == "treatment")
ck.check(0.35 < n_both / len(wins) < 0.65, "assign_switchback splits the windows (%d of %d)" % (n_both, len(wins)))

# deliveries: a daily cycle, region effects, the effect, and the previous window's carry-over
region_eff = {r: rng.normal(0, 3) for r in REGIONS}
deliveries = []
for r in REGIONS:
    for w in range(n_windows + 1):
        v = wins.get((r, w))
        prev = wins.get((r, w - 1))
        hour = w % 24
        rate = 20 + 10 * np.sin(2 * np.pi * hour / 24)
        for _ in range(rng.poisson(rate)):
            s = w * HOUR + int(rng.integers(0, HOUR))
            eff = -3.0 if (prev if s - w * HOUR < 600 else v) == "treatment" else 0.0
            minutes = 30 + 5 * np.cos(2 * np.pi * hour / 24) + region_eff[r] + eff + rng.normal(0, 6)
            if rng.random() < 0.005:
                minutes = 600.0
            deliveries.append((r, s, round(float(minutes), 3)))
# deliveries of another region and before the start: never counted
deliveries += [("elsewhere", 100, 30.0), (REGIONS[0], -50, 30.0)]
cur.execute("CREATE SCHEMA sw")
cur.execute("CREATE TABLE sw.deliveries (region text, created_at timestamptz, minutes float8)")
copy_rows("sw.deliveries", ("region", "created_at", "minutes"), [(r, ts(s), m) for r, s, m in deliveries])
cur.execute("CREATE INDEX ON sw.deliveries (created_at)")

for name, vcol, agg, wins_pct in [("sb_deliveries", None, "count", None), ("sb_minutes", "minutes", "sum", 0.99)]:
    cur.execute("""INSERT INTO experiment.metrics (name, source, unit_column, time_column, value_column, aggregation,
                   kind, winsorize, cuped_lookback, higher_is_better)
                   VALUES (%s, 'sw.deliveries', 'region', 'created_at', %s, %s, 'mean', %s, NULL, %s)""",
                (name, vcol, agg, wins_pct, name == "sb_deliveries"))
cur.execute("""INSERT INTO experiment.metrics (name, kind, numerator, denominator, higher_is_better)
               VALUES ('sb_avg_minutes', 'ratio', 'sb_minutes', 'sb_deliveries', false)""")
for m, role in (("sb_avg_minutes", "primary"), ("sb_deliveries", "guardrail"), ("sb_minutes", "secondary")):
    for eid in ("sb", "sb0"):
        cur.execute("INSERT INTO experiment.experiment_metrics (experiment_id, metric, role) VALUES (%s, %s, %s)",
                    (eid, m, role))


def oracle(burn_s):
    keys = sorted(wins)
    idx = {k: i for i, k in enumerate(keys)}
    cnt = np.zeros(len(keys))
    tot = np.zeros(len(keys))
    for r, s, m in deliveries:
        w = s // HOUR
        if (r, w) in idx and s - w * HOUR >= burn_s and s < END_S:
            cnt[idx[(r, w)]] += 1
            tot[idx[(r, w)]] += m
    cap = np.percentile(tot, 99)
    tot = np.minimum(tot, cap)
    var = np.array([wins[k] for k in keys])
    return cnt, tot, var


def ratio_oracle(num_c, den_c, num_t, den_t):
    out = []
    for num, den in ((num_c, den_c), (num_t, den_t)):
        r = num.sum() / den.sum()
        out.append((r, np.sum((num - r * den) ** 2) / (len(num) - 1) / np.mean(den) ** 2 / len(num), len(num)))
    (rc, vc, gc), (rt, vt, gt) = out
    se = np.sqrt(vc + vt)
    df = (vc + vt) ** 2 / (vc ** 2 / (gc - 1) + vt ** 2 / (gt - 1))
    return rc, rt, rt - rc, se, df, 2 * stats.t.sf(abs((rt - rc) / se), df)


def check(eid, burn_s, what):
    q("SELECT experiment.refresh(%s)", (eid,))
    cnt, tot, var = oracle(burn_s)
    c, t = var == "control", var == "treatment"
    cur.execute("""SELECT metric, method, clustered_by, (test).n_control, (test).n_treatment, (test).mean_control,
                          (test).mean_treatment, (test).diff, (test).diff_se, (test).df, (test).p_value,
                          (bound_test).p_value
                   FROM experiment.metric_results WHERE experiment_id = %s ORDER BY metric""", (eid,))
    res = {r[0]: r[1:] for r in cur.fetchall()}
    ck.check(sorted(res) == ["sb_avg_minutes", "sb_deliveries", "sb_minutes"], "%s: the metrics (%r)" % (what, sorted(res)))
    for m, vals in (("sb_deliveries", cnt), ("sb_minutes", tot)):
        method, by, n_c, n_t, mean_c, mean_t, diff, se, df, p, bound_p = res[m]
        ck.check(method == "welch" and by.startswith("switchback windows of 01:00:00"), "%s %s: %r %r" %
                 (what, m, method, by))
        ck.check((n_c, n_t) == (int(c.sum()), int(t.sum())), "%s %s: windows %r" % (what, m, (n_c, n_t)))
        wt = stats.ttest_ind(vals[t], vals[c], equal_var=False)
        close(mean_c, vals[c].mean(), "%s %s mean_control" % (what, m))
        close(mean_t, vals[t].mean(), "%s %s mean_treatment" % (what, m))
        close(diff / se, wt.statistic, "%s %s statistic" % (what, m))
        close(p, wt.pvalue, "%s %s p_value" % (what, m))
        if m == "sb_deliveries":
            want = stats.ttest_ind(vals[t], vals[c], equal_var=False, alternative="greater").pvalue
            close(bound_p, want, "%s guardrail's one-sided p" % what)
    method, by, n_c, n_t, mean_c, mean_t, diff, se, df, p, _ = res["sb_avg_minutes"]
    rc, rt, d, s, f, pv = ratio_oracle(tot[c], cnt[c], tot[t], cnt[t])
    ck.check(method == "ratio", "%s ratio method %r" % (what, method))
    for got, want, col in ((mean_c, rc, "mean_control"), (mean_t, rt, "mean_treatment"), (diff, d, "diff"),
                           (se, s, "diff_se"), (df, f, "df"), (p, pv, "p_value")):
        close(got, want, "%s minutes per delivery %s" % (what, col))
    return d, s


d_burn, s_burn = check("sb", 600, "burn-in 10 min")
# bookkeeping: windows per variant, the mixed one, SRM over windows, the readout
en = dict(q("SELECT variant, units FROM experiment.enrollment WHERE experiment_id = 'sb'"))
_, _, var = oracle(600)
want = {"control": int((var == "control").sum()), "treatment": int((var == "treatment").sum())}
ck.check(en == want, "enrollment counts windows: %r, want %r" % (en, want))
(enrolled, multi, clusters, mode), = q("""SELECT enrolled_units, multi_variant_units, clusters, mode
                                        FROM experiment.refreshes WHERE experiment_id = 'sb'""")
ck.check((enrolled, multi, clusters, mode) == (len(wins), 1, len(wins), "full"),
         "refreshes: %r" % ((enrolled, multi, clusters, mode),))
(srm_p,), = q("SELECT DISTINCT p_value FROM experiment.srm WHERE experiment_id = 'sb'")
close(srm_p, stats.chisquare([want["control"], want["treatment"]]).pvalue, "SRM over windows")
(text,), = q("SELECT experiment.readout('sb')")
ck.check("Clustered by switchback windows of 01:00:00 (burn-in 00:10:00): %d clusters;" % len(wins) in text,
         "the readout names the windows:\n%s" % text)
ck.check("Warning: 1 switchback windows were exposed to several variants and are left out" in text,
         "the readout warns of the mixed window")

# without burn-in: the carry-over of the previous window pulls the effect towards 0
d_none, s_none = check("sb0", 0, "no burn-in")
print("minutes per delivery: effect %.3f (se %.3f) with a 10-minute burn-in, %.3f (se %.3f) without; planted -3"
      % (d_burn, s_burn, d_none, s_none))
ck.check(d_none > d_burn, "the carry-over biases the effect towards 0 without burn-in")

print("largest relative error against the oracles: %.2g" % worst["rel"])
ck.report()
