#!/usr/bin/python3
"""CUPED for ratio metrics: experiment.cuped_ratio_ttest and cuped_ratio_theta.

1. Oracle: on seeded random datasets (sizes 3 to 4000, skewed numerators and
   denominators, pre-periods correlated with the post-period to different
   degrees, lifts 0 to 50%), an independent numpy implementation that works on
   explicit per-unit linearised values L = (num - R den) / mean(den) and
   Lp = (pre_num - Rp pre_den) / mean(pre_den) (not on the quadratic forms
   the C code evaluates): theta = sum over arms cov(L, Lp) / sum var(Lp), the
   adjusted difference and Welch's test on var(L - theta Lp); every column to
   1e-9 relative.
2. GrowthBook's published case (gbstats tests/frequentist/test_tests.py,
   test_two_sided_ttest_test_runs_ratio_ra): the same sufficient statistics
   (sums, sums of squares and cross products), our theta and moments, and
   GrowthBook's relative difference mean_t/mean_c - 1 of the adjusted means
   with its delta-method variance: expected -0.0007, CI (-0.00841, 0.00700),
   standard deviation 0.00391, p 0.85771 (their rounding: 5 digits).
3. Simulation: 1,000 seeded datasets with a known true difference of ratios:
   95% intervals cover it in [93.5%, 96.5%]; 1,000 A/A datasets: false
   positives in [3.5%, 6.5%]; the CUPED standard error is below the plain
   ratio test's on correlated data.
4. Bad input: 22023 naming the argument; NULL where undefined.
"""
import math
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))

import numpy as np  # noqa: E402
from scipy import stats  # noqa: E402

from exptest import Checker, fresh_db  # noqa: E402

import psycopg2  # noqa: E402

REL = 1e-9
COLS = ["n_control", "n_treatment", "mean_control", "mean_treatment", "diff", "diff_lower",
        "diff_upper", "lift", "lift_lower", "lift_upper", "statistic", "df", "p_value", "lift_p_value",
        "diff_se", "lift_se"]
ck = Checker("test_stats_cuped_ratio")
rng = np.random.default_rng(int(os.environ.get("ORACLE_SEED", "20261201")))
conn = fresh_db("stats_cuped_ratio")
cur = conn.cursor()
maxerr = {}


def close(col, got, want, scale=0.0):
    if got is None or want is None:
        ck.check(got is None and want is None, "%s: got %r, want %r" % (col, got, want))
        return
    got, want = float(got), float(want)
    e = 0.0 if got == want else abs(got - want) / max(abs(got), abs(want), scale)
    maxerr[col] = max(maxerr.get(col, 0.0), e)
    ck.check(e <= REL, "%s: got %r, want %r (rel err %.3g)" % (col, got, want, e))


SQL = """
SELECT (experiment.cuped_ratio_ttest(experiment.moments(m, d, mp, dp) FILTER (WHERE NOT g),
                                     experiment.moments(m, d, mp, dp) FILTER (WHERE g), %s)).*,
       experiment.cuped_ratio_theta(experiment.moments(m, d, mp, dp) FILTER (WHERE NOT g),
                                    experiment.moments(m, d, mp, dp) FILTER (WHERE g)),
       (experiment.ratio_ttest(experiment.moments(m, d) FILTER (WHERE NOT g),
                               experiment.moments(m, d) FILTER (WHERE g), %s)).diff_se
  FROM unnest(%s::boolean[], %s::float8[], %s::float8[], %s::float8[], %s::float8[]) AS u(g, m, d, mp, dp)"""


def t_quantile(p, df):
    """t with P(T > t) = p: scipy's t.isf (good to about 1e-9) polished by Newton steps on t.sf"""
    q = stats.t.isf(p, df)
    for _ in range(8):
        step = (stats.t.sf(q, df) - p) / stats.t.pdf(q, df)
        q += step
        if abs(step) <= 4e-16 * abs(q):
            break
    return q


def linearised(m, d, mp, dp):
    r, rp = m.mean() / d.mean(), mp.mean() / dp.mean()
    return r, rp, (m - r * d) / d.mean(), (mp - rp * dp) / dp.mean()


def oracle(arms, alpha):
    (rc, rpc, lc, lpc), (rt, rpt, lt, lpt) = [linearised(*a) for a in arms]
    num = np.cov(lc, lpc)[0, 1] + np.cov(lt, lpt)[0, 1]
    den = np.var(lpc, ddof=1) + np.var(lpt, ddof=1)
    theta = num / den if den > 0 else 0.0
    n_c, n_t = len(lc), len(lt)
    diff = (rt - rc) - theta * (rpt - rpc)
    v_c, v_t = np.var(lc - theta * lpc, ddof=1), np.var(lt - theta * lpt, ddof=1)
    a, b = v_c / n_c, v_t / n_t
    se = math.sqrt(a + b)
    df = (a + b) ** 2 / (a * a / (n_c - 1) + b * b / (n_t - 1))
    q = t_quantile(alpha / 2, df)
    # the lift diff / |R_c|: the control enters through diff and R_c, (1 + diff/R_c) L - theta Lp
    lift = diff / abs(rc)
    v_cl = np.var((1 + diff / rc) * lc - theta * lpc, ddof=1)
    se_l = math.sqrt((v_t / n_t + v_cl / n_c) / rc ** 2)
    stat = diff / se
    want = dict(n_control=n_c, n_treatment=n_t, mean_control=rc, mean_treatment=rt, diff=diff,
                diff_lower=diff - q * se, diff_upper=diff + q * se, lift=lift, lift_lower=lift - q * se_l,
                lift_upper=lift + q * se_l, statistic=stat, df=df, p_value=2 * stats.t.sf(abs(stat), df),
                lift_p_value=2 * stats.t.sf(abs(lift / se_l), df), diff_se=se, lift_se=se_l)
    scale = dict(diff=se, diff_lower=q * se, diff_upper=q * se, lift=se_l, lift_lower=q * se_l,
                 lift_upper=q * se_l, statistic=1.0)
    return want, scale, theta


def dataset(n, rho, lift, rate):
    """per-unit (num, den, pre_num, pre_den): the unit's own rate drives both periods"""
    u = rng.lognormal(0, 0.6, n)                       # the unit's level
    d = rng.poisson(4, n) + 1.0
    dp = rng.poisson(4, n) + 1.0
    noise = lambda: rng.lognormal(0, 0.6 * (1 - rho) + 0.05, n)  # noqa: E731
    m = d * rate * (1 + lift) * u ** rho * noise()
    mp = dp * rate * u ** rho * noise()
    return m, d, mp, dp


def run(arms, alpha=0.05):
    g = [False] * len(arms[0][0]) + [True] * len(arms[1][0])
    cols = [np.concatenate([arms[0][k], arms[1][k]]).tolist() for k in range(4)]
    cur.execute(SQL, (alpha, alpha, g, *cols))
    row = cur.fetchone()
    return dict(zip(COLS, row[:len(COLS)])), row[len(COLS)], row[len(COLS) + 1]


# ---- 1. oracle ----------------------------------------------------------------------
SIZES = [3, 5, 8, 20, 50, 200, 1000, 4000]
for i in range(200):
    n_c, n_t = int(rng.choice(SIZES)), int(rng.choice(SIZES))
    rho = float(rng.choice([0.0, 0.5, 0.9, 1.0]))
    lift = float(rng.choice([0, 0.01, 0.1, 0.5]))
    rate = 10 ** rng.uniform(-2, 2)
    alpha = float(rng.choice([0.05, 0.01, rng.uniform(0.001, 0.5)]))
    arms = [dataset(n_c, rho, 0.0, rate), dataset(n_t, rho, lift, rate)]
    got, theta, _ = run(arms, alpha)
    want, scale, want_theta = oracle(arms, alpha)
    close("theta", theta, want_theta, scale=1e-12)
    for c in COLS:
        close(c, got[c], want[c], scale=scale.get(c, 0.0))
print("oracle: 200 datasets; largest relative errors: %s"
      % ", ".join("%s %.1e" % (k, v) for k, v in sorted(maxerr.items())))

# ---- 2. GrowthBook's published case -------------------------------------------------------
# gbstats tests/frequentist/test_tests.py, test_two_sided_ttest_test_runs_ratio_ra: per arm n,
# sums and sums of squares of (m_post, d_post, m_pre, d_pre) and the six sums of products
GB = [dict(n=100, s=[485.112236689623, 679.9093275844917, 192.59138069991536, 290.1398399750233],
           ss=[2715.484666118136, 4939.424001640236, 460.076026390857, 920.9461385038898],
           mm=1113.6215759318352, dd=2130.9404074446747, mpdp=634.239482353647, md=3602.146836776702,
           mdp=1559.2878434944676, mpd=1460.3181079276983),
      dict(n=100, s=[514.7757826608777, 705.4090874383759, 206.94157227402536, 302.54389139107326],
           ss=[2994.897482705013, 5291.36604146392, 514.2903702246757, 994.4506208125663],
           mm=1237.0953021125997, dd=2292.081739775257, mpdp=698.4173425817908, md=3918.1561431600717,
           mdp=1701.0287270040265, mpd=1604.0759503266522)]


def gb_moments(a):
    """experiment.moments text of (m, d, mp, dp) from sums: comoment = sum of products - s_i s_j / n"""
    n, s = a["n"], a["s"]
    prod = [[a["ss"][0], a["md"], a["mm"], a["mdp"]],
            [a["md"], a["ss"][1], a["mpd"], a["dd"]],
            [a["mm"], a["mpd"], a["ss"][2], a["mpdp"]],
            [a["mdp"], a["dd"], a["mpdp"], a["ss"][3]]]
    com = [[prod[i][j] - s[i] * s[j] / n for j in range(4)] for i in range(4)]
    return np.array(s) / n, np.array(com), '{"version":1,"n":%d,"mean":[%s],"comoment":[%s]}' % (
        n, ",".join(repr(x / n) for x in s), ",".join("[%s]" % ",".join(repr(c) for c in row) for row in com))


gm = [gb_moments(a) for a in GB]
cur.execute("SELECT experiment.cuped_ratio_theta(%s::experiment.moments, %s::experiment.moments), "
            "(experiment.cuped_ratio_ttest(%s::experiment.moments, %s::experiment.moments)).*",
            (gm[0][2], gm[1][2], gm[0][2], gm[1][2]))
row = cur.fetchone()
theta = row[0]
res = dict(zip(COLS, row[1:]))


def gb_arm(mu, com, n, theta):
    """GrowthBook's adjusted mean R - theta Rp and its per-unit variance nabla' Lambda nabla"""
    lam = com / (n - 1)
    nabla = np.array([1 / mu[1], -mu[0] / mu[1] ** 2, -theta / mu[3], theta * mu[2] / mu[3] ** 2])
    return mu[0] / mu[1] - theta * mu[2] / mu[3], float(nabla @ lam @ nabla)


(ma, va), (mb, vb) = [gb_arm(mu, com, 100, theta) for mu, com, _ in gm]
# GrowthBook's relative difference of CUPED results is the adjusted difference over the
# unadjusted control mean, as our lift
got_gb = (round(res["lift"], 5), round(res["lift_lower"], 5), round(res["lift_upper"], 5),
          round(res["lift_se"], 5), round(res["lift_p_value"], 5))
ck.check(got_gb == (-0.0007, -0.00841, 0.007, 0.00391, 0.85771),
         "GrowthBook's published CUPED ratio case (relative: expected, CI, stddev, p): %r" % (got_gb,))
# and our absolute test is GrowthBook's absolute one on the same statistics
a_, b_ = va / 100, vb / 100
dof = (a_ + b_) ** 2 / (a_ ** 2 / 99 + b_ ** 2 / 99)
close("gb diff", res["diff"], mb - ma)
close("gb diff_se", res["diff_se"], math.sqrt(a_ + b_))
close("gb df", res["df"], dof)
print("GrowthBook case: theta %.6f, relative %.5f [%.5f, %.5f], sd %.5f, p %.5f" % ((theta,) + got_gb))

# ---- 3. simulation: coverage, false positives, variance reduction ----------------------
K, N = 1000, 300


def simulate(lift, rho, seed):
    r = np.random.default_rng(seed)
    ids, gs, cols = [], [], [[], [], [], []]
    for k in range(K):
        for arm in (0, 1):
            u = r.lognormal(0, 0.6, N)
            d, dp = r.poisson(4, N) + 1.0, r.poisson(4, N) + 1.0
            m = d * (1 + lift * arm) * u ** rho * r.lognormal(0, 0.3, N)
            mp = dp * u ** rho * r.lognormal(0, 0.3, N)
            ids += [k] * N
            gs += [bool(arm)] * N
            for c, v in zip(cols, (m, d, mp, dp)):
                c += v.tolist()
    cur.execute("""
      SELECT (t).diff_lower, (t).diff_upper, (t).p_value, (t).diff_se, (p).diff_se
      FROM (SELECT experiment.cuped_ratio_ttest(experiment.moments(m, d, mp, dp) FILTER (WHERE NOT g),
                                                experiment.moments(m, d, mp, dp) FILTER (WHERE g)) AS t,
                   experiment.ratio_ttest(experiment.moments(m, d) FILTER (WHERE NOT g),
                                          experiment.moments(m, d) FILTER (WHERE g)) AS p
            FROM unnest(%s::int[], %s::boolean[], %s::float8[], %s::float8[], %s::float8[], %s::float8[])
                 AS u(k, g, m, d, mp, dp)
            GROUP BY k) s""", (ids, gs, *cols))
    return cur.fetchall()


# the true ratio of an arm: E[m]/E[d] = (1 + lift) E[u^rho] E[noise], E[d] cancels (d independent of u)
rho, lift = 0.9, 0.05
true_c = math.exp((0.6 * rho) ** 2 / 2) * math.exp(0.3 ** 2 / 2)
true_diff = true_c * lift
rows = simulate(lift, rho, 11)
cover = sum(lo <= true_diff <= hi for lo, hi, _, _, _ in rows) / K
ck.check(0.935 <= cover <= 0.965, "95%% intervals of cuped_ratio_ttest cover the true difference %.3f of %d times"
         % (cover, K))
shrink = float(np.median([s / p for _, _, _, s, p in rows]))
ck.check(shrink < 0.8, "CUPED's standard error is %.2f of the plain ratio test's on correlated data" % shrink)
rows = simulate(0.0, rho, 12)
fpr = sum(p < 0.05 for _, _, p, _, _ in rows) / K
ck.check(0.035 <= fpr <= 0.065, "A/A false-positive rate at alpha 0.05: %.3f" % fpr)
print("simulation: coverage %.3f, A/A false positives %.3f, standard error ratio to the plain ratio test %.2f"
      % (cover, fpr, shrink))

# ---- 4. bad input, undefined statistics ---------------------------------------------------
M2 = '{"version":1,"n":3,"mean":[1,2],"comoment":[[1,0],[0,1]]}'
for sql, args in [("SELECT experiment.cuped_ratio_ttest(%s::experiment.moments, %s::experiment.moments)", (M2, gm[1][2])),
                  ("SELECT experiment.cuped_ratio_ttest(%s::experiment.moments, %s::experiment.moments)", (gm[0][2], M2)),
                  ("SELECT experiment.cuped_ratio_theta(%s::experiment.moments, %s::experiment.moments)", (M2, M2)),
                  ("SELECT experiment.cuped_ratio_ttest(%s::experiment.moments, %s::experiment.moments, 1.5)",
                   (gm[0][2], gm[1][2]))]:
    try:
        cur.execute(sql, args)
        ck.check(False, "%s %r: no error" % (sql, args))
    except psycopg2.Error as e:
        ck.check(e.pgcode == "22023", "%s: SQLSTATE %s (%s)" % (sql, e.pgcode, e.pgerror.strip()))
        if "1.5" not in sql:
            ck.check("4-variable" in e.pgerror and ("control" in e.pgerror or "treatment" in e.pgerror),
                     "the error names the argument and what it must be: %s" % e.pgerror.strip())
# a zero denominator mean: the ratio is undefined, so are the test's columns
Z = '{"version":1,"n":3,"mean":[1,0,1,1],"comoment":[[1,0,0,0],[0,0,0,0],[0,0,1,0],[0,0,0,1]]}'
cur.execute("SELECT (experiment.cuped_ratio_ttest(%s::experiment.moments, %s::experiment.moments)).*", (Z, gm[1][2]))
r = dict(zip(COLS, cur.fetchone()))
ck.check(r["mean_control"] is None and r["diff"] is None and r["p_value"] is None and r["n_control"] == 3,
         "a zero control denominator gives NULL, not NaN: %r" % r)
# no pre-period activity at all (pre-denominator mean 0): theta 0 and exactly the plain ratio test
P = ('{"version":1,"n":4,"mean":[2,1.5,0,0],"comoment":[[2,0.5,0,0],[0.5,1,0,0],[0,0,0,0],[0,0,0,0]]}',
     '{"version":1,"n":5,"mean":[2.5,1.4,0,0],"comoment":[[3,0.7,0,0],[0.7,1.2,0,0],[0,0,0,0],[0,0,0,0]]}',
     '{"version":1,"n":4,"mean":[2,1.5],"comoment":[[2,0.5],[0.5,1]]}',
     '{"version":1,"n":5,"mean":[2.5,1.4],"comoment":[[3,0.7],[0.7,1.2]]}')
cur.execute("SELECT experiment.cuped_ratio_theta(%s::experiment.moments, %s::experiment.moments), "
            "to_jsonb(experiment.cuped_ratio_ttest(%s::experiment.moments, %s::experiment.moments)), "
            "to_jsonb(experiment.ratio_ttest(%s::experiment.moments, %s::experiment.moments))", P[:2] + P[:2] + P[2:])
th, a, b = cur.fetchone()
ck.check(th == 0 and a.keys() == b.keys() and all(
    (a[k] is None and b[k] is None) or abs(a[k] - b[k]) <= 1e-12 * max(abs(a[k]), abs(b[k]), 1e-300) for k in a),
    "no pre-period: theta %r, cuped_ratio_ttest %s = ratio_ttest %s" % (th, a, b))
cur.execute("SELECT experiment.cuped_ratio_ttest(NULL, %s::experiment.moments)", (gm[1][2],))
ck.check(cur.fetchone()[0] is None, "NULL moments give NULL")

# ---- 5. refresh: a ratio metric with a pre-period is adjusted, and equals the oracle -------------
# orders of 1,600 users, 14 days before and after their first exposure; average order value =
# revenue / orders, both parts with a 14-day lookback; the treatment raises order values 3%
from datetime import datetime, timedelta, timezone  # noqa: E402
import io  # noqa: E402
r5 = np.random.default_rng(5)
START = datetime(2026, 3, 1, tzinfo=timezone.utc)
END = START + timedelta(days=14)
cur.execute("CREATE SCHEMA cr")
cur.execute("CREATE TABLE cr.orders (user_id text, ordered_at timestamptz, amount float8)")
cur.execute("""INSERT INTO experiment.experiments (id, name, status, start_at, end_at, alpha, analysis, correction)
               VALUES ('cr', 'cuped ratio', 'draft', %s, %s, 0.05, 'fixed', 'none')""", (START, END))
cur.execute("""INSERT INTO experiment.variants (experiment_id, name, allocation, is_control)
               VALUES ('cr', 'control', 0.5, true), ('cr', 'treatment', 0.5, false)""")
cur.execute("""INSERT INTO experiment.metrics (name, source, unit_column, time_column, value_column, aggregation,
                                              cuped_lookback) VALUES
               ('cr_revenue', 'cr.orders', 'user_id', 'ordered_at', 'amount', 'sum', '14 days'),
               ('cr_orders', 'cr.orders', 'user_id', 'ordered_at', NULL, 'count', '14 days')""")
cur.execute("""INSERT INTO experiment.metrics (name, kind, numerator, denominator, cuped_lookback)
               VALUES ('cr_aov', 'ratio', 'cr_revenue', 'cr_orders', '14 days'),
                      ('cr_aov_plain', 'ratio', 'cr_revenue', 'cr_orders', NULL)""")
cur.execute("""INSERT INTO experiment.experiment_metrics (experiment_id, metric, role)
               VALUES ('cr', 'cr_aov', 'primary'), ('cr', 'cr_aov_plain', 'secondary')""")
cur.execute("UPDATE experiment.experiments SET status = 'running' WHERE id = 'cr'")
units, rows, exposures = {}, [], []
for i in range(1600):
    u, arm = "u%d" % i, i % 2
    t0 = START + timedelta(hours=int(r5.integers(0, 72)))
    level = r5.lognormal(3, 0.5)
    post, pre = [], []
    for period, lo, hi, lift in ((post, t0, END, 1.03 if arm else 1.0), (pre, t0 - timedelta(days=14), t0, 1.0)):
        for _ in range(1 + int(r5.poisson(2))):
            at = lo + (hi - lo) * float(r5.uniform(0, 0.999))
            amount = level * lift * float(r5.lognormal(0, 0.3))
            period.append(amount)
            rows.append("%s\t%s\t%r" % (u, at.isoformat(), amount))
    units[u] = (arm, sum(post), len(post), sum(pre), len(pre))
    exposures.append({"experiment_id": "cr", "unit_id": u, "variant": "treatment" if arm else "control",
                      "exposed_at": t0.isoformat()})
cur.copy_expert("COPY cr.orders FROM STDIN", io.StringIO("\n".join(rows) + "\n"))
cur.execute("SELECT * FROM experiment.ingest_exposures(%s::jsonb)", (__import__("json").dumps(exposures),))
cur.execute("SELECT experiment.refresh('cr')")
cur.execute("""SELECT metric, method, (test).* FROM experiment.metric_results WHERE experiment_id = 'cr'
               ORDER BY metric""")
got = {r[0]: (r[1], dict(zip(COLS, r[2:]))) for r in cur.fetchall()}
arms = [[np.array([v[k] for v in units.values() if v[0] == a], dtype=float) for k in (1, 2, 3, 4)] for a in (0, 1)]
want, scale, _ = oracle(arms, 0.05)
ck.check(got.get("cr_aov", ("",))[0] == "cuped_ratio", "refresh adjusts a ratio metric with a pre-period: %r"
         % (got.get("cr_aov", ("",))[0],))
ck.check(got.get("cr_aov_plain", ("",))[0] == "ratio", "a ratio metric without a lookback stays 'ratio'")
if "cr_aov" in got:
    for c in COLS:
        close("refresh " + c, got["cr_aov"][1][c], want[c], scale=scale.get(c, 0.0))
    ck.check(got["cr_aov"][1]["diff_se"] < got["cr_aov_plain"][1]["diff_se"],
             "the adjusted standard error %.4g is below the plain one %.4g"
             % (got["cr_aov"][1]["diff_se"], got["cr_aov_plain"][1]["diff_se"]))
cur.execute("SELECT experiment.readout('cr')")
ck.check("(CUPED, delta method)" in cur.fetchone()[0], "the readout names the method")
# an incremental refresh after more orders gives what a full refresh gives
more = ["u%d\t%s\t%r" % (i, (END - timedelta(hours=1)).isoformat(), 10.0 + i % 7) for i in range(0, 1600, 3)]
cur.copy_expert("COPY cr.orders FROM STDIN", io.StringIO("\n".join(more) + "\n"))
cur.execute("SELECT experiment.refresh('cr')")
cur.execute("SELECT mode FROM experiment.refreshes WHERE experiment_id = 'cr'")
mode = cur.fetchone()[0]
cur.execute("SELECT metric, (test).* FROM experiment.metric_results WHERE experiment_id = 'cr' ORDER BY 1")
inc = cur.fetchall()
cur.execute("SELECT experiment.refresh('cr', full => true)")
cur.execute("SELECT metric, (test).* FROM experiment.metric_results WHERE experiment_id = 'cr' ORDER BY 1")
full = cur.fetchall()
ck.check(mode == "incremental" and all(
    all((a is None and b is None) or a == b or abs(a - b) <= 1e-12 * max(abs(a), abs(b)) + 1e-12
        for a, b in zip(x[1:], y[1:])) for x, y in zip(inc, full)),
    "an incremental refresh (%s) equals a full one for CUPED ratio metrics" % mode)
ck.report()
