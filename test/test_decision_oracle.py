#!/usr/bin/python3
"""Oracle test of the decision statistics, reimplemented here from the formulas.

On seeded random datasets (raw rows, drawn here):
  welch_ttest, prop_ztest, cuped_ttest, ratio_ttest with alternative
  'two-sided' / 'greater' / 'less', fixed horizon and sequential
  (sequential_tuning): the estimate and its standard errors from numpy on the
  raw rows; fixed-horizon p-values against scipy.stats.ttest_ind
  (equal_var=False, alternative=...) and statsmodels proportions_ztest; the
  confidence sequences from Waudby-Smith et al. (2023) eq. 155/161 as written
  in doc/statistics.md, the one-sided p-value by root finding (brentq) on the
  one-sided half-width instead of the closed form the extension uses;
  bayesian() against the Gaussian conjugate posterior with scipy.stats.norm
  (risks by numerical integration);
  p_adjust (array and window) against statsmodels multipletests;
  adjusted_interval against its formula;
  gst_alpha against boundaries solved here with scipy's multivariate normal
  CDF (K <= 3 looks) and the closed form at the first look.
GrowthBook's published cases (gbstats packages/stats/tests/frequentist/test_tests.py:
  the sequential two-sided mean and proportion tests to their 5 printed decimals, the
  fixed one-sided tests and the sequential one-sided intervals to 1e-9).
Relative error limits: 1e-9 (1e-12 for p_adjust; gst_alpha: 1e-6, the
accuracy of scipy's multivariate normal integration, see doc/statistics.md).
"""
import math
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from exptest import Checker, fresh_db, skip  # noqa: E402

try:
    import numpy as np
    from scipy import integrate, optimize, stats
    from statsmodels.stats.multitest import multipletests
    from statsmodels.stats.proportion import proportions_ztest
except ImportError as e:  # pragma: no cover
    if os.environ.get("CI"):
        print("FAIL: %s is missing" % e)
        sys.exit(1)
    skip(str(e))

SEED = int(os.environ.get("ORACLE_SEED", "20261201"))
ck = Checker("test_decision_oracle")
maxerr = {}
INF = float("inf")

conn = fresh_db("decision_oracle")
cur = conn.cursor()


def close(what, got, want, rel=1e-9, scale=0.0):
    if got is None or want is None:
        return ck.check(got is None and want is None, "%s: got %r, want %r" % (what, got, want))
    got, want = float(got), float(want)
    if math.isinf(want) or math.isinf(got):
        return ck.check(got == want, "%s: got %r, want %r" % (what, got, want))
    e = 0.0 if got == want else abs(got - want) / max(abs(got), abs(want), scale)
    if abs(got) < 1e-300 and abs(want) < 1e-300:
        e = 0.0  # both at the end of the double range (p-values of astronomically clear effects)
    key = what.split(" [")[0]
    maxerr[key] = max(maxerr.get(key, 0.0), e)
    return ck.check(e <= rel, "%s: got %r, want %r (rel err %.3g)" % (what, got, want, e))


def t_quantile(p, df):
    """t with P(T > t) = p (scipy's isf polished by Newton on t.sf); normal when df is None."""
    if df is None:
        return stats.norm.isf(p)
    q = stats.t.isf(p, df)
    for _ in range(8):
        step = (stats.t.sf(q, df) - p) / stats.t.pdf(q, df)
        q += step
        if abs(step) <= 4e-16 * abs(q):
            break
    return q


def rho(a, tuning):
    """eq. 161: rho for level a (alpha two-sided, 2 alpha one-sided)."""
    return math.sqrt((-2 * math.log(a) + math.log(-2 * math.log(a) + 1)) / tuning)


def halfwidth(se, n, alpha, tuning, two_sided, r=None):
    r = rho(alpha if two_sided else 2 * alpha, tuning) if r is None else r
    v = n * r * r + 1
    lg = math.log(math.sqrt(v) / alpha) if two_sided else math.log(1 + math.sqrt(v) / (2 * alpha))
    return math.sqrt(se * se * n * 2 * v * lg / (n * r) ** 2)


def seq_reference(est, se, n, alpha, tuning, alt):
    if alt == "two-sided":
        r = rho(alpha, tuning)
        st2 = est * est * n / (se * se)
        tr = n * r * r + 1
        log_e = r * r * st2 / (2 * tr) - 0.5 * math.log(tr)  # E = exp(...) / sqrt(tr), in logs
        h = halfwidth(se, n, alpha, tuning, True)
        return est - h, est + h, min(1.0, math.exp(-log_e))
    r = rho(2 * alpha, tuning)
    h = halfwidth(se, n, alpha, tuning, False)
    e = est if alt == "greater" else -est
    lower, upper = (est - h, INF) if alt == "greater" else (-INF, est + h)
    if e <= 0:
        return lower, upper, 1.0
    # the alpha at which the bound reaches 0, rho held at the test's alpha
    f = lambda la: halfwidth(se, n, math.exp(la), tuning, False, r) - e  # noqa: E731
    if f(0.0) > 0:
        return lower, upper, 1.0
    if f(-745.0) < 0:
        return lower, upper, 0.0  # below the smallest double: the extension's exp underflows to 0 as well
    la = optimize.brentq(f, -745, 0.0, xtol=1e-15, rtol=1e-15, maxiter=500)
    return lower, upper, min(1.0, math.exp(la))


def fixed_reference(est, se, null_se, df, alpha, alt):
    z = est / null_se
    sf = (lambda x: stats.norm.sf(x)) if df is None else (lambda x: stats.t.sf(x, df))
    if alt == "two-sided":
        q = t_quantile(alpha / 2, df)
        return est - q * se, est + q * se, min(1.0, 2 * sf(abs(z))), z
    q = t_quantile(alpha, df)
    if alt == "greater":
        return est - q * se, INF, sf(z), z
    return -INF, est + q * se, sf(-z), z


TEST_COLS = ("n_control, n_treatment, mean_control, mean_treatment, diff, diff_lower, diff_upper, lift, "
             "lift_lower, lift_upper, statistic, df, p_value, lift_p_value, diff_se, lift_se")


def compare(name, row, est, alpha, alt, tuning, p_ref=None, stat_ref=None):
    (n_c, n_t, m_c, m_t, diff, dlo, dhi, lift, llo, lhi, stat, df, p, lp, dse, lse) = row
    what = "%s %s %s" % (name, alt, "fixed" if tuning is None else "sequential")
    close(what + " diff", diff, est["diff"], scale=est["se"])
    close(what + " diff_se", dse, est["se"])
    close(what + " lift", lift, est["lift"], scale=est["lift_se"])
    close(what + " lift_se", lse, est["lift_se"])
    n = est["n"]
    if tuning is None:
        lo, hi, pr, z = fixed_reference(est["diff"], est["se"], est.get("null_se", est["se"]), est["df"], alpha, alt)
        llo_r, lhi_r, lpr, _ = fixed_reference(est["lift"], est["lift_se"], est["lift_se"], est["df"], alpha, alt)
        close(what + " df", df, est["df"])
        close(what + " statistic", stat, z if stat_ref is None else stat_ref, scale=1.0)
    else:
        lo, hi, pr = seq_reference(est["diff"], est["se"], n, alpha, tuning, alt)
        llo_r, lhi_r, lpr = seq_reference(est["lift"], est["lift_se"], n, alpha, tuning, alt)
        ck.check(df is None, what + " df is NULL (normal)")
    close(what + " diff_lower", dlo, lo, scale=est["se"])
    close(what + " diff_upper", dhi, hi, scale=est["se"])
    close(what + " p_value", p, pr if p_ref is None or tuning is not None else p_ref)
    close(what + " lift_lower", llo, llo_r, scale=est["lift_se"])
    close(what + " lift_upper", lhi, lhi_r, scale=est["lift_se"])
    close(what + " lift_p_value", lp, lpr)


ALTS = ("two-sided", "greater", "less")


def welch_se_df(a, b, n_c, n_t):
    """Welch's standard error and Satterthwaite df from the arms' variances of the mean a, b."""
    return dict(se=math.sqrt(a + b), df=(a + b) ** 2 / (a * a / (n_c - 1) + b * b / (n_t - 1)))


def welch_est(yc, yt, vc_lift=None):
    n_c, n_t = len(yc), len(yt)
    m_c, m_t = yc.mean(), yt.mean()
    v_c, v_t = yc.var(ddof=1), yt.var(ddof=1)
    a, b = v_c / n_c, v_t / n_t
    r = m_t / m_c
    lv = (v_t / n_t + (v_c * r * r if vc_lift is None else vc_lift) / n_c) / m_c ** 2
    return dict(n=n_c + n_t, diff=m_t - m_c, **welch_se_df(a, b, n_c, n_t),
                lift=(m_t - m_c) / abs(m_c), lift_se=math.sqrt(lv))


def bivariate_moments(y, x):
    """experiment.moments(y, x) of raw rows, aggregated by the extension."""
    cur.execute("SELECT experiment.moments(y, x)::text FROM unnest(%s::float8[], %s::float8[]) v(y, x)",
                (list(map(float, y)), list(map(float, x))))
    return cur.fetchone()[0]


def draw_pair(rng):
    n_c, n_t = int(rng.integers(5, 3000)), int(rng.integers(5, 3000))
    loc, sc = rng.uniform(1, 50), rng.uniform(0.5, 20)
    eff = rng.choice([0.0, 0.02, 0.1]) * loc
    return rng.normal(loc, sc, n_c), rng.normal(loc + eff, sc, n_t)


import time  # noqa: E402
T0 = time.time()


def section(name):
    global T0
    print("  %-12s %5.1f s" % (name, time.time() - T0), flush=True)
    T0 = time.time()


# ---------------------------------------------------------------- Welch
rng = np.random.default_rng([SEED, 1])
for i in range(200):
    yc, yt = draw_pair(rng)
    est = welch_est(yc, yt)
    alpha = float(rng.choice([0.05, 0.1, 0.01]))
    tuning = float(rng.choice([1000, 10000, 100000]))
    for alt in ALTS:
        scipy_t = stats.ttest_ind(yt, yc, equal_var=False, alternative=alt)
        for tun in (None, tuning):
            cur.execute("SELECT (t).* FROM (SELECT experiment.welch_ttest(experiment.moments(c.y), "
                        "(SELECT experiment.moments(y) FROM unnest(%s::float8[]) y), %s, %s, %s) AS t "
                        "FROM unnest(%s::float8[]) c(y)) s", (list(map(float, yt)), alpha, alt, tun, list(map(float, yc))))
            compare("welch", cur.fetchone(), est, alpha, alt, tun, p_ref=scipy_t.pvalue, stat_ref=scipy_t.statistic)

section("welch")

# ---------------------------------------------------------------- proportions
rng = np.random.default_rng([SEED, 2])
for i in range(200):
    n_c, n_t = int(rng.integers(20, 200000)), int(rng.integers(20, 200000))
    p0 = rng.uniform(0.01, 0.9)
    x_c = int(rng.binomial(n_c, p0))
    x_t = int(rng.binomial(n_t, min(0.99, p0 * rng.choice([1.0, 1.03, 1.1]))))
    pc, pt = x_c / n_c, x_t / n_t
    se = math.sqrt(pc * (1 - pc) / n_c + pt * (1 - pt) / n_t)
    r = pt / pc
    lv = (pt * (1 - pt) / n_t + pc * (1 - pc) * r * r / n_c) / pc ** 2
    pooled = (x_c + x_t) / (n_c + n_t)
    est = dict(n=n_c + n_t, diff=pt - pc, se=se, null_se=math.sqrt(pooled * (1 - pooled) * (1 / n_c + 1 / n_t)),
               df=None, lift=(pt - pc) / pc, lift_se=math.sqrt(lv))
    alpha = float(rng.choice([0.05, 0.1, 0.01]))
    tuning = float(rng.choice([1000, 10000, 100000]))
    for alt in ALTS:
        z, p_sm = proportions_ztest([x_t, x_c], [n_t, n_c],
                                    alternative={"two-sided": "two-sided", "greater": "larger", "less": "smaller"}[alt])
        for tun in (None, tuning):
            cur.execute("SELECT (experiment.prop_ztest(%s, %s, %s, %s, %s, %s, %s)).*",
                        (x_c, n_c, x_t, n_t, alpha, alt, tun))
            compare("prop", cur.fetchone(), est, alpha, alt, tun, p_ref=p_sm, stat_ref=z)

section("prop")

# ---------------------------------------------------------------- CUPED
rng = np.random.default_rng([SEED, 3])
for i in range(200):
    n_c, n_t = int(rng.integers(5, 3000)), int(rng.integers(5, 3000))
    xc, xt = rng.normal(10, 3, n_c), rng.normal(10, 3, n_t)
    yc = 2 + 0.8 * xc + rng.normal(0, 2, n_c)
    yt = 2 + 0.8 * xt + rng.normal(rng.choice([0.0, 0.3]), 2, n_t)
    x, y = np.concatenate([xc, xt]), np.concatenate([yc, yt])
    theta = np.cov(y, x)[0, 1] / x.var(ddof=1)
    ac, at = yc - theta * xc, yt - theta * xt
    m_c, m_t = yc.mean(), yt.mean()
    r = m_t / m_c
    a, b = ac.var(ddof=1) / n_c, at.var(ddof=1) / n_t
    diff = at.mean() - ac.mean()
    lv = (at.var(ddof=1) / n_t + (r * yc - theta * xc).var(ddof=1) / n_c) / m_c ** 2
    est = dict(n=n_c + n_t, diff=diff, **welch_se_df(a, b, n_c, n_t),
               lift=diff / abs(m_c), lift_se=math.sqrt(lv))
    alpha, tuning = 0.05, float(rng.choice([1000, 10000]))
    mc, mt = bivariate_moments(yc, xc), bivariate_moments(yt, xt)
    for alt in ALTS:
        for tun in (None, tuning):
            cur.execute("SELECT (experiment.cuped_ttest(%s::experiment.moments, %s::experiment.moments, %s, %s, %s)).*",
                        (mc, mt, alpha, alt, tun))
            compare("cuped", cur.fetchone(), est, alpha, alt, tun)

section("cuped")

# ---------------------------------------------------------------- ratio
rng = np.random.default_rng([SEED, 4])
for i in range(200):
    n_c, n_t = int(rng.integers(5, 3000)), int(rng.integers(5, 3000))
    dc, dt = rng.poisson(3, n_c) + 1.0, rng.poisson(3, n_t) + 1.0
    nc, nt = dc * rng.gamma(2, 1, n_c), dt * rng.gamma(2, 1.0 + rng.choice([0.0, 0.05]), n_t)
    R_c, R_t = nc.mean() / dc.mean(), nt.mean() / dt.mean()
    vc = (nc - R_c * dc).var(ddof=1) / dc.mean() ** 2
    vt = (nt - R_t * dt).var(ddof=1) / dt.mean() ** 2
    a, b = vc / n_c, vt / n_t
    r = R_t / R_c
    est = dict(n=n_c + n_t, diff=R_t - R_c, **welch_se_df(a, b, n_c, n_t),
               lift=(R_t - R_c) / R_c, lift_se=math.sqrt((vt / n_t + vc * r * r / n_c) / R_c ** 2))
    alpha, tuning = 0.05, float(rng.choice([1000, 10000]))
    mc, mt = bivariate_moments(nc, dc), bivariate_moments(nt, dt)
    for alt in ALTS:
        for tun in (None, tuning):
            cur.execute("SELECT (experiment.ratio_ttest(%s::experiment.moments, %s::experiment.moments, %s, %s, %s)).*",
                        (mc, mt, alpha, alt, tun))
            compare("ratio", cur.fetchone(), est, alpha, alt, tun)

section("ratio")

# ---------------------------------------------------------------- Bayesian
rng = np.random.default_rng([SEED, 5])
for i in range(300):
    n_c, n_t = int(rng.integers(100, 100000)), int(rng.integers(100, 100000))
    p0 = rng.uniform(0.02, 0.8)
    x_c, x_t = int(rng.binomial(n_c, p0)), int(rng.binomial(n_t, p0 * rng.choice([1.0, 1.05])))
    relative = bool(rng.integers(0, 2))
    prior_var = None if rng.integers(0, 2) else float(rng.choice([0.001, 0.01, 0.1]))
    prior_mean = float(rng.choice([0.0, 0.01, -0.02]))
    alpha = float(rng.choice([0.05, 0.1]))
    cur.execute("SELECT diff, diff_se, lift, lift_se, mean_control, (experiment.bayesian(t, %s, %s, %s, %s)).* "
                "FROM experiment.prop_ztest(%s, %s, %s, %s) t", (prior_mean, prior_var, relative, alpha, x_c, n_c, x_t, n_t))
    diff, dse, lift, lse, mc, *got = cur.fetchone()
    m, s2 = (lift, lse ** 2) if relative else (diff, dse ** 2)
    if prior_var is None:
        mu, var = m, s2
    else:
        pm, pv = (prior_mean, prior_var) if relative else (prior_mean * abs(mc), prior_var * mc * mc)
        var = 1 / (1 / s2 + 1 / pv)
        mu = var * (m / s2 + pm / pv)
    sd = math.sqrt(var)
    q = stats.norm.isf(alpha / 2)
    rc = integrate.quad(lambda x: x * stats.norm.pdf(x, mu, sd), 0, np.inf, epsabs=0, epsrel=1e-13, limit=200)[0]
    rt = integrate.quad(lambda x: -x * stats.norm.pdf(x, mu, sd), -np.inf, 0, epsabs=0, epsrel=1e-13, limit=200)[0]
    want = [mu, mu - q * sd, mu + q * sd, sd, stats.norm.cdf(mu / sd), rc, rt]
    for name, g, w in zip(["estimate", "ci_lower", "ci_upper", "stddev", "chance_to_win", "risk_control", "risk_treatment"], got, want):
        close("bayesian " + name, g, w, rel=1e-9 if "risk" not in name else 1e-8, scale=sd if name in ("estimate", "ci_lower", "ci_upper") else 0)

section("bayesian")

# ---------------------------------------------------------------- p_adjust
rng = np.random.default_rng([SEED, 6])
SM = {"bonferroni": "bonferroni", "holm": "holm", "bh": "fdr_bh", "by": "fdr_by"}
for i in range(300):
    m = int(rng.integers(1, 40))
    p = rng.uniform(0, 1, m) ** rng.choice([1, 3, 8])
    if rng.integers(0, 3) == 0:
        p[rng.integers(0, m)] = p[0]  # ties
    withnull = [float(v) for v in p]
    nulls = sorted(set(int(k) for k in rng.integers(0, m + 1, int(rng.integers(0, 3)))))
    for k in nulls:
        withnull.insert(min(k, len(withnull)), None)
    for method, sm in SM.items():
        want = multipletests(p, method=sm)[1]
        cur.execute("SELECT experiment.p_adjust(%s::float8[], %s)", (withnull, method))
        got = [v for v in cur.fetchone()[0] if v is not None]
        ck.check(len(got) == len(want), "p_adjust %s keeps NULLs in place" % method)
        for g, w in zip(got, want):
            close("p_adjust " + method, g, w, rel=1e-12)
        cur.execute("SELECT experiment.p_adjust(p, %s) OVER (ORDER BY ord) FROM unnest(%s::float8[]) WITH ORDINALITY u(p, ord) "
                    "ORDER BY ord", (method, withnull))
        gw = [r[0] for r in cur.fetchall()]
        ck.check([v is None for v in gw] == [v is None for v in withnull], "p_adjust window %s NULLs" % method)
        for g, w in zip([v for v in gw if v is not None], want):
            close("p_adjust window " + method, g, w, rel=1e-12)

section("p_adjust")

# ---------------------------------------------------------------- adjusted_interval
rng = np.random.default_rng([SEED, 7])
for i in range(200):
    est, p, alpha = float(rng.normal(0, 0.1)), float(rng.uniform(1e-6, 1)), float(rng.choice([0.05, 0.1]))
    cur.execute("SELECT lower, upper FROM experiment.adjusted_interval(%s, %s, %s)", (est, p, alpha))
    lo, hi = cur.fetchone()
    se = abs(est) / stats.norm.isf(p / 2)
    q = stats.norm.isf(alpha / 2)
    close("adjusted_interval lower", lo, est - q * se, scale=q * se)
    close("adjusted_interval upper", hi, est + q * se, scale=q * se)
    ck.check((lo > 0 or hi < 0) == (p < alpha), "adjusted_interval excludes 0 iff p < alpha (p %g)" % p)

section("adjusted")

# ---------------------------------------------------------------- gst_alpha
def stay2(c1, c2, r, sides):
    """P(no crossing at looks 1 and 2) for corr(Z1, Z2) = r, by quadrature over z1."""
    s_ = math.sqrt(1 - r * r)
    if sides == 2:
        f = lambda z: stats.norm.pdf(z) * (stats.norm.cdf((c2 - r * z) / s_) - stats.norm.cdf((-c2 - r * z) / s_))  # noqa: E731
        return integrate.quad(f, -c1, c1, epsabs=1e-14, epsrel=1e-12, limit=100)[0]
    f = lambda z: stats.norm.pdf(z) * stats.norm.cdf((c2 - r * z) / s_)  # noqa: E731
    return integrate.quad(f, -40, c1, epsabs=1e-14, epsrel=1e-12, limit=100)[0]


def gst_reference(t, alpha, sides, rho_):
    """Boundaries c_k on the Z scale with P(no earlier crossing, cross at k) = the spend
    increment; corr(Z_i, Z_j) = sqrt(t_i / t_j). Two looks by quadrature, three by
    scipy's multivariate normal CDF."""
    K = len(t)
    cov = np.array([[math.sqrt(min(a, b) / max(a, b)) for b in t] for a in t])
    cs, spent, out = [], 0.0, []
    for k in range(K):
        target = alpha * min(t[k], 1.0) ** rho_ - spent
        if k == 0:
            c = stats.norm.isf(target / 2 if sides == 2 else target)
        else:
            cont_prev = 1 - alpha * min(t[k - 1], 1.0) ** rho_  # P(no crossing up to look k - 1)
            if k == 1:
                stay = lambda c_k: stay2(cs[0], c_k, cov[0, 1], sides)  # noqa: E731
            else:
                sub = cov[:k + 1, :k + 1]

                def stay(c_k):
                    hi = np.array(cs + [c_k])
                    lo = -hi if sides == 2 else np.full(k + 1, -40.0)
                    return stats.multivariate_normal.cdf(hi, cov=sub, lower_limit=lo, abseps=1e-10, releps=1e-9,
                                                         maxpts=2 * 10 ** 6)
            c = optimize.brentq(lambda c_k: (cont_prev - stay(c_k)) - target, 0.5, 12, xtol=1e-13)
        cs.append(c)
        spent += target
        out.append((2 if sides == 2 else 1) * stats.norm.sf(c))
    return out


for t, alpha, sides, rho_ in [([1.0], 0.05, 2, 2), ([0.3], 0.05, 1, 3), ([0.5, 1.0], 0.05, 2, 2), ([0.5, 1.0], 0.025, 1, 3),
                              ([0.25, 0.6, 1.0], 0.05, 2, 1), ([0.2, 0.5, 0.9], 0.1, 1, 2), ([1 / 3, 2 / 3, 1.0], 0.05, 2, 3)]:
    cur.execute("SELECT experiment.gst_alpha(%s::float8[], %s, %s, %s)", (t, alpha, sides, rho_))
    got = cur.fetchone()[0]
    want = gst_reference(t, alpha, sides, rho_)
    for k, (g, w) in enumerate(zip(got, want)):
        close("gst_alpha look %d%s" % (k + 1, "" if k < 2 else " (mvn)"), g, w,
              rel=1e-12 if k == 0 else 1e-9 if k == 1 else 1e-6)
# 100 random two-look designs (the second look by quadrature, to 1e-9)
rng = np.random.default_rng([SEED, 9])
for i in range(100):
    t1 = float(rng.uniform(0.05, 0.9))
    t2 = float(rng.uniform(t1 + 0.02, 1.3))
    alpha, sides, rho_ = float(rng.choice([0.01, 0.05, 0.1])), int(rng.integers(1, 3)), float(rng.uniform(0.5, 4))
    cur.execute("SELECT experiment.gst_alpha(%s::float8[], %s, %s, %s)", ([t1, t2], alpha, sides, rho_))
    got = cur.fetchone()[0]
    want = gst_reference([t1, t2], alpha, sides, rho_)
    close("gst_alpha look 1", got[0], want[0], rel=1e-12)
    close("gst_alpha look 2", got[1], want[1], rel=1e-9)
# the cumulative spend: with 1 look at t = 1 the nominal level is alpha; past t = 1 nothing is left
cur.execute("SELECT experiment.gst_alpha('{0.5,1,1.3}', 0.05, 2, 2)")
g = cur.fetchone()[0]
ck.check(g[2] == 0 and g[0] < g[1] < 0.05, "gst_alpha after the planned information: %r" % g)

section("gst_alpha")

# ---------------------------------------------------------------- planning: variations, sequential
def crit(alpha, k, tuning, n):
    a = alpha / (k - 1)
    if tuning is None:
        return stats.norm.isf(a / 2)
    return halfwidth(1.0, 2 * n, a, tuning, True)


rng = np.random.default_rng([SEED, 8])
for i in range(200):
    p1 = float(rng.uniform(0.05, 0.8))
    d = float(rng.uniform(0.005, 0.05)) * (1 if rng.integers(0, 2) else -1)
    if not 0 < p1 + d < 1:
        continue
    alpha, pw, k = float(rng.choice([0.05, 0.1])), float(rng.choice([0.8, 0.9])), int(rng.integers(2, 6))
    tuning = None if rng.integers(0, 2) else float(rng.choice([5000, 50000]))
    p2 = p1 + d
    sd0 = math.sqrt(2 * (p1 + p2) / 2 * (1 - (p1 + p2) / 2))
    sd1 = math.sqrt(p1 * (1 - p1) + p2 * (1 - p2))
    zb = stats.norm.ppf(pw)
    if tuning is None:
        margin = lambda n: abs(d) * math.sqrt(n) - (crit(alpha, k, None, n) * sd0 + zb * sd1)  # noqa: E731
    else:
        margin = lambda n: abs(d) * math.sqrt(n) - (crit(alpha, k, tuning, n) + zb) * sd1  # noqa: E731
    n_real = optimize.brentq(margin, 2, 1e12, xtol=1e-9, rtol=1e-15)
    cur.execute("SELECT experiment.required_n(%s, %s, %s, %s, %s, %s)", (p1, d, alpha, pw, k, tuning))
    got = cur.fetchone()[0]
    ck.check(got == math.ceil(n_real - 1e-7 * n_real) or got == math.ceil(n_real),
             "required_n %r %r %r %r k=%d N*=%r: got %r, want ceil(%r)" % (p1, d, alpha, pw, k, tuning, got, n_real))
    n = int(rng.integers(100, 100000))
    if tuning is None:
        want = stats.norm.cdf((abs(d) * math.sqrt(n) - crit(alpha, k, None, n) * sd0) / sd1)
    else:
        want = stats.norm.cdf(abs(d) * math.sqrt(n) / sd1 - crit(alpha, k, tuning, n))
    cur.execute("SELECT experiment.power(%s, %s, %s, %s, %s, %s)", (n, p1, d, alpha, k, tuning))
    close("power (variations, sequential)", cur.fetchone()[0], want, scale=1e-300)
    sdv = float(rng.uniform(0.5, 50))
    dm = float(rng.uniform(0.01, 2))
    mm = lambda n: dm / (sdv * math.sqrt(2 / n)) - crit(alpha, k, tuning, n) - zb  # noqa: E731
    n_real = optimize.brentq(mm, 2, 1e14, xtol=1e-9, rtol=1e-15) if mm(2) < 0 else 2
    cur.execute("SELECT experiment.required_n_mean(%s, %s, %s, %s, %s, %s)", (sdv, dm, alpha, pw, k, tuning))
    got = cur.fetchone()[0]
    ck.check(abs(got - math.ceil(n_real)) <= 1 if tuning is None else got in (math.ceil(n_real), math.ceil(n_real - 1e-7 * n_real)),
             "required_n_mean sd=%r mde=%r k=%d N*=%r: got %r, want ceil(%r)" % (sdv, dm, k, tuning, got, n_real))
section("planning")
# ---------------------------------------------------------------- peers' published cases
# GrowthBook gbstats, packages/stats/tests/frequentist/test_tests.py (growthbook/growthbook):
# SampleMeanStatistic(sum=1396.87, sum_squares=52377.9767, n=3000) against
# (sum=2422.7, sum_squares=134698.29, n=3461), and ProportionStatistic(1396/3000, 2422/3461).
MEANS = ("experiment.moments_from_sums(3000, 1396.87, 52377.9767)", "experiment.moments_from_sums(3461, 2422.7, 134698.29)")


def peer(label, sql, want, decimals=None):
    cur.execute(sql)
    got = cur.fetchone()
    for name, g, w in zip(want.keys(), got, want.values()):
        if decimals is not None and not (isinstance(w, float) and math.isinf(w)):
            ck.check(g is not None and round(g, decimals) == round(w, decimals),
                     "GrowthBook %s %s: got %r, want %r (to %d decimals)" % (label, name, g, w, decimals))
        else:
            close("GrowthBook " + label + " " + name, g, w, rel=1e-9)


W = "SELECT lift, lift_lower, lift_upper, lift_se, lift_p_value FROM experiment.welch_ttest(%s, %s, 0.05, '%s', %s)"
WA = "SELECT diff, diff_lower, diff_upper, diff_se, p_value FROM experiment.welch_ttest(%s, %s, 0.05, '%s', %s)"
peer("test_sequential_test_runs", W % (MEANS + ("two-sided", 1000)),
     dict(lift=0.50336, lower=-0.55844, upper=1.56516, se=0.33341, p=1.0), decimals=5)
peer("test_sequential_test_runs_prop",
     "SELECT lift, lift_lower, lift_upper, lift_se, lift_p_value FROM experiment.prop_ztest(1396, 3000, 2422, 3461, 0.05, 'two-sided', 5000)",
     dict(lift=0.50386, lower=0.40098, upper=0.60675, se=0.03386, p=0.0), decimals=5)
peer("TestOneSidedGreaterTTest relative", W % (MEANS + ("greater", "NULL")),
     dict(lift=0.5033610858562358, lower=-0.045136675850396046, upper=INF, se=0.3334122146400735, p=0.06558262868467746))
peer("TestOneSidedGreaterTTest absolute", WA % (MEANS + ("greater", "NULL")),
     dict(diff=0.23437666666666668, lower=0.020791480063255735, upper=INF, se=0.12983081254184736, p=0.03554272489873023))
peer("TestOneSidedLesserTTest relative", W % (MEANS + ("less", "NULL")),
     dict(lift=0.5033610858562358, lower=-INF, upper=1.0518588475628676, se=0.3334122146400735, p=0.9344173713153225))
peer("TestOneSidedLesserTTest absolute", WA % (MEANS + ("less", "NULL")),
     dict(diff=0.23437666666666668, lower=-INF, upper=0.44796185327007765, se=0.12983081254184736, p=0.9644572751012698))
# sequential one-sided (GrowthBook's default tuning 5000): the intervals agree; GrowthBook's
# p-values come from its bisection with rho moving with alpha (0.4999 is its upper limit),
# ours from the closed form at the test's own rho (doc/statistics.md), so only printed
for label, alt, sql, want in [
        ("TestSequentialOneSidedGreaterTTest relative", "greater", W, (-0.42356454602790883, INF)),
        ("TestSequentialOneSidedGreaterTTest absolute", "greater", WA, (-0.12656844172804982, INF)),
        ("TestSequentialOneSidedLesserTTest relative", "less", W, (-INF, 1.4302867177403806)),
        ("TestSequentialOneSidedLesserTTest absolute", "less", WA, (-INF, 0.5953217750613832))]:
    cur.execute(sql % (MEANS + (alt, 5000)))
    est, lo, hi, se_, p_ = cur.fetchone()
    close("GrowthBook %s lower" % label, lo, want[0])
    close("GrowthBook %s upper" % label, hi, want[1])
    print("  (info) %s: p-value %.6g here" % (label, p_))

for key in sorted(maxerr):
    print("  %-40s max rel err %.3g" % (key, maxerr[key]))
conn.close()
ck.report()
