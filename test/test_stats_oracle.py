#!/usr/bin/python3
"""Oracle test of the statistics functions against scipy/statsmodels/numpy.

On seeded random datasets of varied sizes, spreads and means:
  welch_ttest (function and aggregate) vs scipy.stats.ttest_ind(equal_var=False);
  prop_ztest vs statsmodels proportions_ztest (pooled) and a Wald CI in numpy;
  srm_chisq vs scipy.stats.chisquare;
  cuped_ttest vs Welch on per-row adjusted values with the pooled theta;
  ratio_ttest vs the delta method in numpy;
  required_n / required_n_mean / power / mde vs the formulas with scipy.stats.norm.
Every column must agree to a relative error of 1e-9; the largest error seen
per column is printed. NULL cases are checked to be NULL.

Reference t quantiles: scipy 1.10's t.ppf is only good to about 1e-9
relative (its stdtri), so the reference quantile is t.isf polished by Newton
steps on scipy's own t.sf and t.pdf (which are accurate); the distance of the
raw t.isf from it is printed for information.

The datasets come from a fixed seed (one stream per section);
ORACLE_SEED=N runs the same test on other data.
"""
import math
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))

try:
    import numpy as np
    from scipy import optimize, stats
    from statsmodels.stats.proportion import proportions_ztest
except ImportError as e:  # pragma: no cover
    # an oracle that is not there is a failure, not a skip: scripts/setup.sh
    # installs python3-scipy and python3-statsmodels
    print("FAIL: the oracle needs numpy, scipy and statsmodels: %s" % e)
    sys.exit(1)

from exptest import Checker, fresh_db  # noqa: E402

REL = 1e-9
COLS = ["n_control", "n_treatment", "mean_control", "mean_treatment", "diff", "diff_lower",
        "diff_upper", "lift", "lift_lower", "lift_upper", "statistic", "df", "p_value",
        "lift_p_value"]

SEED = int(os.environ.get("ORACLE_SEED", "20261125"))
rng = np.random.default_rng(SEED)
ck = Checker("test_stats_oracle")
maxerr = {}
info = {"scipy t.isf vs polished quantile": 0.0}


def rel_err(got, want):
    if got == want:
        return 0.0
    return abs(got - want) / max(abs(got), abs(want))


def close(test, col, got, want, rel=REL, scale=0.0):
    """got agrees with want to rel relative to max(|got|, |want|, scale)."""
    key = (test, col)
    if got is None or want is None:
        ck.check(got is None and want is None, "%s.%s: got %r, want %r" % (test, col, got, want))
        return
    got, want = float(got), float(want)
    e = 0.0 if got == want else abs(got - want) / max(abs(got), abs(want), scale)
    if abs(float(got)) < 1e-300 and abs(float(want)) < 1e-300:
        e = 0.0  # both underflow (scipy flushes what GSL keeps as a subnormal)
    maxerr[key] = max(maxerr.get(key, 0.0), e)
    ck.check(e <= rel, "%s.%s: got %r, want %r (rel err %.3g)" % (test, col, got, want, e))


def compare_row(test, row, want, cols=COLS):
    got = dict(zip(COLS, row))
    scales = want.get("_scale", {})
    for c in cols:
        close(test, c, got[c], want[c], scale=scales.get(c, 0.0))


def t_quantile(p, df):
    """t with P(T > t) = p, polished by Newton on scipy's t.sf."""
    q0 = stats.t.isf(p, df)
    q = q0
    for _ in range(8):
        step = (stats.t.sf(q, df) - p) / stats.t.pdf(q, df)
        q += step
        if abs(step) <= 4e-16 * abs(q):
            break
    info["scipy t.isf vs polished quantile"] = max(info["scipy t.isf vs polished quantile"], rel_err(q0, q))
    return q


def welch_reference(n_c, n_t, m_c, m_t, diff, v_c, v_t, lift_var, alpha, stat=None, p=None):
    """Expected test_result of a Welch test from arm summaries (numpy/scipy)."""
    a, b = v_c / n_c, v_t / n_t
    se = math.sqrt(a + b)
    df = (a + b) ** 2 / (a * a / (n_c - 1) + b * b / (n_t - 1))
    if stat is None:
        stat = diff / se
        p = 2 * stats.t.sf(abs(stat), df)
    q = t_quantile(alpha / 2, df)
    lift = diff / abs(m_c)
    se_l = math.sqrt(lift_var)
    return dict(n_control=n_c, n_treatment=n_t, mean_control=m_c, mean_treatment=m_t, diff=diff,
                diff_lower=diff - q * se, diff_upper=diff + q * se, lift=lift,
                lift_lower=lift - q * se_l, lift_upper=lift + q * se_l, statistic=stat, df=df,
                p_value=p, lift_p_value=2 * stats.t.sf(abs(lift / se_l), df),
                _scale=scales(se, se_l, q))


def scales(se, se_l, q):
    """Error scales of the columns that can be near zero: a difference or a
    bound is compared relative to max(|value|, its standard error) - a t of
    1e-4 is a difference of means that cancel, known only to the precision
    of the means."""
    return dict(diff=se, diff_lower=q * se, diff_upper=q * se, lift=se_l, lift_lower=q * se_l,
                lift_upper=q * se_l, statistic=1.0)


def draw(n, loc, scale, kind):
    if kind == 0:
        return rng.normal(loc, scale, n)
    if kind == 1:
        return loc + scale * (rng.lognormal(0, 1, n) - math.exp(0.5))
    return loc + scale * (rng.exponential(1, n) - 1)


SIZES = [2, 3, 5, 8, 20, 50, 200, 1000, 4000]

conn = fresh_db("stats_oracle")
cur = conn.cursor()


def one(sql, args=()):
    cur.execute(sql, args)
    return cur.fetchone()


# ---------------------------------------------------------------- Welch
rng = np.random.default_rng([SEED, 1])  # one stream per section
WELCH_SQL = """
SELECT (experiment.welch_ttest(experiment.moments(y) FILTER (WHERE NOT g),
                               experiment.moments(y) FILTER (WHERE g), %s)).*
  FROM unnest(%s::boolean[], %s::float8[]) AS u(g, y)"""
AGG_SQL = "SELECT (experiment.welch_ttest(g, y)).* FROM unnest(%s::boolean[], %s::float8[]) AS u(g, y)"

tails = []
for i in range(220):
    n_c, n_t = int(rng.choice(SIZES)), int(rng.choice(SIZES))
    s_c = 10 ** rng.uniform(-2, 2)
    # means within 20 standard deviations of 0 (as metrics are); the
    # ill-conditioned case is below
    loc = rng.uniform(-20, 20) * s_c
    if i % 10 == 0:
        loc = rng.uniform(0.5, 2) * s_c  # small means, large lifts
    s_t = s_c * 10 ** rng.uniform(-1, 1)
    # effects from none to tens of standard errors (far tails)
    eff = rng.choice([0, 0.5, 2, 5, 20]) * math.sqrt(s_c ** 2 / n_c + s_t ** 2 / n_t) * rng.choice([-1, 1])
    if i % 20 == 0:
        # far tails with many degrees of freedom, where gsl_cdf_tdist_Q is off
        n_c, n_t = 1000, 1000
        eff = rng.uniform(20, 40) * math.sqrt(s_c ** 2 / n_c + s_t ** 2 / n_t)
    kind = int(rng.integers(0, 3))
    yc, yt = draw(n_c, loc, s_c, kind), draw(n_t, loc + eff, s_t, kind)
    alpha = float(rng.choice([0.05, 0.01, 0.1, rng.uniform(0.001, 0.5)]))
    g = [False] * n_c + [True] * n_t
    y = yc.tolist() + yt.tolist()
    row = one(WELCH_SQL, (alpha, g, y))
    m_c, m_t = yc.mean(), yt.mean()
    v_c, v_t = yc.var(ddof=1), yt.var(ddof=1)
    ref = stats.ttest_ind(yt, yc, equal_var=False)
    lift_var = v_t / (m_c ** 2 * n_t) + v_c * m_t ** 2 / (m_c ** 4 * n_c)
    want = welch_reference(n_c, n_t, m_c, m_t, m_t - m_c, v_c, v_t, lift_var, alpha,
                           ref.statistic, ref.pvalue)
    compare_row("welch", row, want)
    if want["df"] > 30 and want["p_value"] > 0:
        tails.append(want["p_value"])
    agg = one(AGG_SQL, (g, y))
    want05 = welch_reference(n_c, n_t, m_c, m_t, m_t - m_c, v_c, v_t, lift_var, 0.05,
                             ref.statistic, ref.pvalue)
    compare_row("welch_agg", agg, want05)

# the far tail with df > 30 is where gsl_cdf_tdist_Q would be off
ck.check(min(tails) < 1e-30, "the datasets reach far tails with df > 30 (smallest p %g)" % min(tails))
info["welch smallest p-value with df > 30"] = min(tails)

rng = np.random.default_rng([SEED, 2])  # one stream per section
# Ill-conditioned data: mean 1e4 standard deviations from 0, so that the
# difference of the means is a small difference of large numbers.  Any two
# ways of computing the means (the moments' running update, numpy's pairwise
# sums) then differ in the difference by about mean/diff ulps, which the
# p-value amplifies by about t^2.  The test formulas are checked here
# against scipy's ttest_ind_from_stats on the moments the database holds; the
# gap to scipy on the raw data is printed for information.
MOM_SQL = """
SELECT experiment.mean(c), experiment.variance(c), experiment.mean(t), experiment.variance(t),
       (experiment.welch_ttest(c, t, %s)).*
  FROM (SELECT experiment.moments(y) FILTER (WHERE NOT g) AS c, experiment.moments(y) FILTER (WHERE g) AS t
          FROM unnest(%s::boolean[], %s::float8[]) AS u(g, y)) s"""
info["welch raw-data p-value gap, ill-conditioned"] = 0.0
for i in range(40):
    n_c, n_t = int(rng.choice(SIZES[3:])), int(rng.choice(SIZES[3:]))
    s_c = 10 ** rng.uniform(-2, 2)
    s_t = s_c * 10 ** rng.uniform(-0.5, 0.5)
    loc = 1e4 * s_c * rng.choice([-1, 1])
    eff = rng.choice([0.5, 2, 5]) * math.sqrt(s_c ** 2 / n_c + s_t ** 2 / n_t)
    yc, yt = rng.normal(loc, s_c, n_c), rng.normal(loc + eff, s_t, n_t)
    alpha = float(rng.choice([0.05, 0.01]))
    res = one(MOM_SQL, (alpha, [False] * n_c + [True] * n_t, yc.tolist() + yt.tolist()))
    m_c, v_c, m_t, v_t = res[:4]
    # all four moments against numpy (both means and both variances)
    close("moments", "mean", m_c, yc.mean(), rel=1e-12)
    close("moments", "mean", m_t, yt.mean(), rel=1e-12)
    close("moments", "variance", v_c, yc.var(ddof=1), rel=1e-9)
    close("moments", "variance", v_t, yt.var(ddof=1), rel=1e-9)
    ref = stats.ttest_ind_from_stats(m_t, math.sqrt(v_t), n_t, m_c, math.sqrt(v_c), n_c, equal_var=False)
    lift_var = v_t / (m_c ** 2 * n_t) + v_c * m_t ** 2 / (m_c ** 4 * n_c)
    want = welch_reference(n_c, n_t, m_c, m_t, m_t - m_c, v_c, v_t, lift_var, alpha,
                           ref.statistic, ref.pvalue)
    compare_row("welch_illcond", res[4:], want)
    raw = stats.ttest_ind(yt, yc, equal_var=False)
    info["welch raw-data p-value gap, ill-conditioned"] = max(
        info["welch raw-data p-value gap, ill-conditioned"], rel_err(res[4 + 12], raw.pvalue))

# Many degrees of freedom (above 3e4 the t tail is GSL's Cornish-Fisher
# expansion): arm summaries given exactly through the text form.
rng = np.random.default_rng([SEED, 8])  # one stream per section
SUM_SQL = "SELECT (experiment.welch_ttest(%s::experiment.moments, %s::experiment.moments, %s)).*"


def moments_text(n, mean, var):
    return '{"version":1,"n":%d,"mean":[%r],"comoment":[[%r]]}' % (n, mean, var * (n - 1))


bigdf = []
for i in range(60):
    n_c, n_t = int(10 ** rng.uniform(4, 6.7)), int(10 ** rng.uniform(4, 6.7))
    sd_c = 10 ** rng.uniform(-1, 1)
    sd_t = sd_c * 10 ** rng.uniform(-0.3, 0.3)
    m_c = rng.uniform(-5, 5) * sd_c
    se = math.sqrt(sd_c ** 2 / n_c + sd_t ** 2 / n_t)
    m_t = m_c + rng.choice([0.3, 2, 6, 25]) * se * rng.choice([-1, 1])
    v_c, v_t = sd_c ** 2, sd_t ** 2
    # the variances as the database will see them (co-moment / (n - 1))
    v_c = (v_c * (n_c - 1)) / (n_c - 1)
    v_t = (v_t * (n_t - 1)) / (n_t - 1)
    alpha = float(rng.choice([0.05, 0.01, 1e-4]))
    row = one(SUM_SQL, (moments_text(n_c, m_c, v_c), moments_text(n_t, m_t, v_t), alpha))
    ref = stats.ttest_ind_from_stats(m_t, math.sqrt(v_t), n_t, m_c, math.sqrt(v_c), n_c, equal_var=False)
    lift_var = v_t / (m_c ** 2 * n_t) + v_c * m_t ** 2 / (m_c ** 4 * n_c)
    want = welch_reference(n_c, n_t, m_c, m_t, m_t - m_c, v_c, v_t, lift_var, alpha, ref.statistic, ref.pvalue)
    compare_row("welch_bigdf", row, want)
    bigdf.append(want["df"])
ck.check(sum(d > 3e4 for d in bigdf) >= 30, "at least 30 cases with df > 3e4 (%d)" % sum(d > 3e4 for d in bigdf))
info["welch largest df"] = max(bigdf)

# NULL cases
row = one("SELECT (experiment.welch_ttest(experiment.moments(y) FILTER (WHERE NOT g), "
          "experiment.moments(y) FILTER (WHERE g))).* FROM unnest(%s::boolean[], %s::float8[]) u(g, y)",
          ([False, True, True], [1.0, 2.0, 3.0]))
r = dict(zip(COLS, row))
ck.check(r["n_control"] == 1 and r["mean_control"] == 1.0 and r["diff"] == 1.5
         and all(r[c] is None for c in ["diff_lower", "diff_upper", "statistic", "df", "p_value",
                                        "lift_lower", "lift_upper", "lift_p_value"]),
         "welch with n_control = 1: %r" % (r,))
row = one(AGG_SQL, ([False, False, True, True], [2.0, 2.0, 3.0, 3.0]))
r = dict(zip(COLS, row))
ck.check(r["diff"] == 1.0 and r["statistic"] is None and r["p_value"] is None and r["df"] is None,
         "welch with zero variance in both arms: %r" % (r,))
row = one(AGG_SQL, ([False, False, False, False, True, True], [-1.0, 1.0, -2.0, 2.0, 3.0, 4.0]))
r = dict(zip(COLS, row))
ck.check(r["mean_control"] == 0 and r["lift"] is None and r["lift_lower"] is None
         and r["lift_p_value"] is None and r["p_value"] is not None,
         "welch with zero control mean: %r" % (r,))
row = one(AGG_SQL, ([True, True], [1.0, 2.0]))
r = dict(zip(COLS, row))
ck.check(r["n_control"] == 0 and r["mean_control"] is None and r["diff"] is None
         and r["mean_treatment"] == 1.5, "welch aggregate with an empty control: %r" % (r,))
ck.check(one(AGG_SQL, ([], []))[0] is None, "welch aggregate over no rows is NULL")

# ---------------------------------------------------------------- proportions
rng = np.random.default_rng([SEED, 3])  # one stream per section
PROP_SQL = "SELECT (experiment.prop_ztest(%s, %s, %s, %s, %s)).*"
for i in range(220):
    n_c = int(10 ** rng.uniform(0, 6))
    n_t = int(10 ** rng.uniform(0, 6))
    p = 10 ** rng.uniform(-3, 0) * 0.999
    p_t = min(0.999, p * rng.choice([1, 1.01, 1.1, 1.5, 3]))
    x_c, x_t = int(rng.binomial(n_c, p)), int(rng.binomial(n_t, p_t))
    alpha = float(rng.choice([0.05, 0.01, rng.uniform(0.001, 0.5)]))
    row = one(PROP_SQL, (x_c, n_c, x_t, n_t, alpha))
    pc, pt = x_c / n_c, x_t / n_t
    pooled = (x_c + x_t) / (n_c + n_t)
    want = dict(n_control=n_c, n_treatment=n_t, mean_control=pc, mean_treatment=pt, diff=pt - pc,
                diff_lower=None, diff_upper=None, lift=None, lift_lower=None, lift_upper=None,
                statistic=None, df=None, p_value=None, lift_p_value=None)
    if 0 < pooled < 1:
        z, pv = proportions_ztest(np.array([x_t, x_c]), np.array([n_t, n_c]))
        want.update(statistic=z, p_value=pv)
    q = stats.norm.isf(alpha / 2)
    se = math.sqrt(pc * (1 - pc) / n_c + pt * (1 - pt) / n_t)
    if se > 0:
        want.update(diff_lower=pt - pc - q * se, diff_upper=pt - pc + q * se)
    lv = 0.0
    if pc > 0:
        lift = (pt - pc) / pc
        lv = pt * (1 - pt) / (n_t * pc ** 2) + pc * (1 - pc) * pt ** 2 / (n_c * pc ** 4)
        want.update(lift=lift)
        if lv > 0:
            sl = math.sqrt(lv)
            want.update(lift_lower=lift - q * sl, lift_upper=lift + q * sl,
                        lift_p_value=2 * stats.norm.sf(abs(lift / sl)))
    want["_scale"] = scales(se, math.sqrt(lv) if pc > 0 and lv > 0 else 0.0, q)
    compare_row("prop", row, want)

r = dict(zip(COLS, one(PROP_SQL, (0, 0, 3, 10, 0.05))))
ck.check(r["mean_control"] is None and r["diff"] is None and r["p_value"] is None
         and r["mean_treatment"] == 0.3, "prop_ztest with n_control = 0: %r" % (r,))
r = dict(zip(COLS, one(PROP_SQL, (0, 100, 0, 100, 0.05))))
ck.check(r["diff"] == 0 and r["statistic"] is None and r["p_value"] is None and r["lift"] is None
         and r["diff_lower"] is None, "prop_ztest with no successes: %r" % (r,))

# ---------------------------------------------------------------- SRM
rng = np.random.default_rng([SEED, 4])  # one stream per section
for i in range(220):
    k = int(rng.integers(2, 7))
    if i % 3 == 0:
        w = None
        probs = np.full(k, 1.0 / k)
    else:
        w = rng.uniform(0.1, 5, k)
        probs = w / w.sum()
    n = int(10 ** rng.uniform(1, 7))
    skew = probs * rng.uniform(1 - 0.05 * (i % 4), 1 + 0.05 * (i % 4), k)
    obs = rng.multinomial(n, skew / skew.sum())
    if w is None:
        got = one("SELECT experiment.srm_chisq(%s::bigint[])", (obs.tolist(),))[0]
        want = stats.chisquare(obs).pvalue
    else:
        got = one("SELECT experiment.srm_chisq(%s::bigint[], %s::float8[])", (obs.tolist(), w.tolist()))[0]
        want = stats.chisquare(obs, f_exp=obs.sum() * (w / w.sum())).pvalue
    close("srm", "p_value", got, want)
ck.check(one("SELECT experiment.srm_chisq('{0,0}')")[0] is None, "srm_chisq of no units is NULL")
ck.check(one("SELECT experiment.srm_chisq('{5}')")[0] is None, "srm_chisq of one arm is NULL")
ck.check(one("SELECT experiment.srm_chisq(NULL)")[0] is None, "srm_chisq(NULL) is NULL")

# ---------------------------------------------------------------- CUPED
rng = np.random.default_rng([SEED, 5])  # one stream per section
CUPED_SQL = """
SELECT (experiment.cuped_ttest(experiment.moments(y, x) FILTER (WHERE NOT g),
                               experiment.moments(y, x) FILTER (WHERE g), %s)).*
  FROM unnest(%s::boolean[], %s::float8[], %s::float8[]) AS u(g, y, x)"""
for i in range(220):
    n_c, n_t = int(rng.choice(SIZES[1:])), int(rng.choice(SIZES[1:]))
    n_c, n_t = max(n_c, 3), max(n_t, 3)
    # means within 10 standard deviations, correlation of x and y up to
    # about 0.999 (a difference of adjusted means is a difference of large
    # numbers when x explains nearly everything; see the ill-conditioned
    # Welch block for what that does to any floating-point computation)
    sx = 10 ** rng.uniform(-1, 1.5)
    mx = rng.uniform(-10, 10) * sx
    slope = rng.uniform(-2, 2)
    noise = max(abs(slope), 0.1) * sx * 10 ** rng.uniform(-1.3, 0.5)
    xc, xt = rng.normal(mx, sx, n_c), rng.normal(mx, sx, n_t)
    eff = rng.choice([0, 1, 5, 20]) * noise / math.sqrt(min(n_c, n_t))
    yc = rng.uniform(-10, 10) * noise + slope * xc + rng.normal(0, noise, n_c)
    yt = yc.mean() + slope * (xt - xc.mean()) + rng.normal(eff, noise, n_t)
    if abs(yc.mean()) < 1e-3:
        continue
    alpha = float(rng.choice([0.05, 0.01, rng.uniform(0.001, 0.5)]))
    g = [False] * n_c + [True] * n_t
    row = one(CUPED_SQL, (alpha, g, yc.tolist() + yt.tolist(), xc.tolist() + xt.tolist()))
    xa, ya = np.concatenate([xc, xt]), np.concatenate([yc, yt])
    theta = np.cov(xa, ya)[0, 1] / np.var(xa, ddof=1)
    adj_c, adj_t = yc - theta * (xc - xa.mean()), yt - theta * (xt - xa.mean())
    ref = stats.ttest_ind(adj_t, adj_c, equal_var=False)
    m_c, m_t = yc.mean(), yt.mean()
    v_ta = adj_t.var(ddof=1)
    cc = np.cov(yc, xc)
    r_ = m_t / m_c
    lift_var = v_ta / (n_t * m_c ** 2) + (cc[0, 0] * r_ ** 2 - 2 * theta * cc[0, 1] * r_
                                          + theta ** 2 * cc[1, 1]) / (n_c * m_c ** 2)
    want = welch_reference(n_c, n_t, m_c, m_t, adj_t.mean() - adj_c.mean(), adj_c.var(ddof=1), v_ta,
                           lift_var, alpha, ref.statistic, ref.pvalue)
    compare_row("cuped", row, want)
    if i % 20 == 0:
        # the moments helpers: pooled theta and the adjusted moments
        got = one("""
          WITH m AS (SELECT experiment.moments(y, x) FILTER (WHERE NOT g) AS c,
                            experiment.moments(y, x) FILTER (WHERE g) AS t
                       FROM unnest(%s::boolean[], %s::float8[], %s::float8[]) AS u(g, y, x))
          SELECT experiment.cuped_theta(c OPERATOR(experiment.+) t),
                 experiment.mean(experiment.cuped_adjust(t, experiment.cuped_theta(c OPERATOR(experiment.+) t), experiment.mean(c OPERATOR(experiment.+) t, 2))),
                 experiment.variance(experiment.cuped_adjust(t, experiment.cuped_theta(c OPERATOR(experiment.+) t), experiment.mean(c OPERATOR(experiment.+) t, 2)))
            FROM m""", (g, yc.tolist() + yt.tolist(), xc.tolist() + xt.tolist()))
        close("cuped_theta", "theta", got[0], theta)
        close("cuped_adjust", "mean", got[1], adj_t.mean())
        close("cuped_adjust", "variance", got[2], v_ta)

# var_x = 0: plain Welch
g = [False] * 5 + [True] * 6
yv = rng.normal(10, 2, 11).tolist()
row_c = one(CUPED_SQL, (0.05, g, yv, [3.0] * 11))
row_w = one(WELCH_SQL, (0.05, g, yv))
ck.check(all((a is None and b is None) or abs(a - b) <= 1e-12 * max(abs(a), abs(b)) for a, b in zip(row_c, row_w)),
         "cuped_ttest with constant x equals welch_ttest: %r vs %r" % (row_c, row_w))
ck.check(one("SELECT experiment.cuped_theta(experiment.moments(y, 1)) FROM generate_series(1, 5) y")[0] is None,
         "cuped_theta with var(x) = 0 is NULL")

# ---------------------------------------------------------------- ratio
rng = np.random.default_rng([SEED, 6])  # one stream per section
RATIO_SQL = """
SELECT (experiment.ratio_ttest(experiment.moments(num, den) FILTER (WHERE NOT g),
                               experiment.moments(num, den) FILTER (WHERE g), %s)).*
  FROM unnest(%s::boolean[], %s::float8[], %s::float8[]) AS u(g, num, den)"""
for i in range(220):
    n_c, n_t = max(3, int(rng.choice(SIZES))), max(3, int(rng.choice(SIZES)))
    lam = 10 ** rng.uniform(0, 1.5)
    rate = 10 ** rng.uniform(-2, 1)
    lift = rng.choice([0, 0.01, 0.1, 0.5])
    dc, dt = rng.poisson(lam, n_c) + 1.0, rng.poisson(lam, n_t) + 1.0
    nc = dc * rate * rng.lognormal(0, 0.5, n_c)
    nt = dt * rate * (1 + lift) * rng.lognormal(0, 0.5, n_t)
    alpha = float(rng.choice([0.05, 0.01, rng.uniform(0.001, 0.5)]))
    g = [False] * n_c + [True] * n_t
    row = one(RATIO_SQL, (alpha, g, nc.tolist() + nt.tolist(), dc.tolist() + dt.tolist()))

    def arm(num, den):
        mn, md = num.mean(), den.mean()
        c = np.cov(num, den)
        v = c[0, 0] / md ** 2 + c[1, 1] * mn ** 2 / md ** 4 - 2 * c[0, 1] * mn / md ** 3
        return mn / md, v

    r_c, v_c = arm(nc, dc)
    r_t, v_t = arm(nt, dt)
    lift_var = v_t / (r_c ** 2 * n_t) + v_c * r_t ** 2 / (r_c ** 4 * n_c)
    want = welch_reference(n_c, n_t, r_c, r_t, r_t - r_c, v_c, v_t, lift_var, alpha)
    compare_row("ratio", row, want)
r = dict(zip(COLS, one(RATIO_SQL, (0.05, [False] * 3 + [True] * 3, [0.0, 1, 2, 1, 2, 3], [0.0, 0, 0, 1, 1, 2]))))
ck.check(r["mean_control"] is None and r["diff"] is None and r["p_value"] is None and r["mean_treatment"] == 1.5,
         "ratio_ttest with a zero control denominator: %r" % (r,))

# ---------------------------------------------------------------- sample size
rng = np.random.default_rng([SEED, 7])  # one stream per section
norm = stats.norm


def n_prop_exact(p1, d, alpha, power):
    p2 = p1 + d
    pbar = (p1 + p2) / 2
    s = norm.isf(alpha / 2) * math.sqrt(2 * pbar * (1 - pbar)) + norm.ppf(power) * math.sqrt(p1 * (1 - p1) + p2 * (1 - p2))
    return s * s / (d * d)


def ceil_ok(got, exact):
    """got is ceil(exact), allowing for exact within rounding of an integer."""
    if got == math.ceil(exact):
        return True
    return abs(exact - round(exact)) <= 1e-9 * exact and got in (round(exact), round(exact) + 1)


for i in range(220):
    p1 = rng.uniform(0.005, 0.95)
    d = rng.uniform(0.001, 0.2) * (1 - p1) * rng.choice([1, -1])
    if not 0 < p1 + d < 1:
        d = -d
    alpha = float(rng.choice([0.05, 0.01, 0.1, rng.uniform(0.001, 0.3)]))
    power = float(rng.choice([0.8, 0.9, rng.uniform(0.5, 0.99)]))
    got = one("SELECT experiment.required_n(%s, %s, %s, %s)", (p1, d, alpha, power))[0]
    exact = n_prop_exact(p1, d, alpha, power)
    ck.check(ceil_ok(got, exact), "required_n(%r, %r, %r, %r) = %r, want ceil(%r)" % (p1, d, alpha, power, got, exact))
    sd, dm = 10 ** rng.uniform(-1, 3), 10 ** rng.uniform(-2, 1)
    got = one("SELECT experiment.required_n_mean(%s, %s, %s, %s)", (sd, dm, alpha, power))[0]
    exact = 2 * (sd * (norm.isf(alpha / 2) + norm.ppf(power)) / dm) ** 2
    ck.check(ceil_ok(got, exact), "required_n_mean(%r, %r, %r, %r) = %r, want ceil(%r)" % (sd, dm, alpha, power, got, exact))

    n = int(10 ** rng.uniform(1.5, 6))
    got = one("SELECT experiment.power(%s, %s, %s, %s)", (n, p1, d, alpha))[0]
    p2 = p1 + d
    pbar = (p1 + p2) / 2
    want = norm.cdf((abs(d) * math.sqrt(n) - norm.isf(alpha / 2) * math.sqrt(2 * pbar * (1 - pbar)))
                    / math.sqrt(p1 * (1 - p1) + p2 * (1 - p2)))
    close("power", "power", got, want)

    def g_(dd):
        q2 = p1 + dd
        qb = (p1 + q2) / 2
        return dd * math.sqrt(n) - (norm.isf(alpha / 2) * math.sqrt(2 * qb * (1 - qb))
                                    + norm.ppf(power) * math.sqrt(p1 * (1 - p1) + q2 * (1 - q2)))

    got = one("SELECT experiment.mde(%s, %s, %s, %s)", (n, p1, alpha, power))[0]
    if g_(1 - p1) < 0:
        ck.check(got is None, "mde(%r, %r) should be NULL, got %r" % (n, p1, got))
    else:
        want = optimize.brentq(g_, 0, 1 - p1, xtol=1e-300, rtol=4 * np.finfo(float).eps, maxiter=500)
        close("mde", "mde", got, want)
        # consistent inverses: the mde needs n units and has the asked power
        back = one("SELECT experiment.required_n(%s, experiment.mde(%s, %s, %s, %s), %s, %s),"
                   "       experiment.power(%s, %s, experiment.mde(%s, %s, %s, %s), %s)",
                   (p1, n, p1, alpha, power, alpha, power, n, p1, n, p1, alpha, power, alpha))
        ck.check(back[0] in (n, n + 1), "required_n(mde(n = %d)) = %r" % (n, back[0]))
        close("mde->power", "power", back[1], power, rel=1e-9)

ck.check(one("SELECT experiment.required_n(0.60, 0.02)")[0] == 9336, "required_n(0.60, 0.02) = 9336")

# ---------------------------------------------------------------- report
print("largest relative error per column (limit %g):" % REL)
for (test, col), e in sorted(maxerr.items()):
    print("  %-12s %-15s %.3g" % (test, col, e))
for k, v in info.items():
    print("  (info) %s: %.3g" % (k, v))
conn.close()
ck.report()
