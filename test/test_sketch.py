#!/usr/bin/python3
"""experiment.sketch and experiment.quantile_test against independent oracles.

1. Accuracy: on seeded heavy-tailed data (lognormal, Pareto, a mixture with
   negatives and zeros, 1e3 to 1e6 values) every quantile of a grid is within
   alpha = 0.005 (relative) of numpy's quantile(method='lower'); q = 0 and 1
   are min and max exactly.
2. The bins: the sketch's bins equal the histogram of the index mapping
   reimplemented here (math.log, as the C code), bin for bin.
3. Merge: the sketch of the union equals the merge of random parts (also with
   collapsing); text and binary (COPY) round trips are exact; crafted binary
   values are refused with 22P03.
4. Parallel: a forced parallel plan (Partial Aggregate) gives the serial sketch.
5. quantile_test, unit and event level, against a reimplementation of
   GrowthBook's QuantileStatistic / QuantileClusteredStatistic formulas
   (packages/stats/gbstats/models/statistics.py) from the raw rows and the
   sketches' quantiles, every column of the result for each alternative,
   fixed horizon and sequential, to 1e-9; the oracle itself reproduces
   GrowthBook's published quantile case (packages/stats/tests/bayesian/test_tests.py,
   improper flat prior: the estimate and its 95% interval to 1e-12) and a
   cluster variance worked by hand (sums 10, 52, 4, 10, 22 over 2 clusters:
   0.5625, a case of GrowthBook's QuantileClusteredStatistic tests).
6. Coverage: 1,000 seeded datasets per condition; the 95% interval of the
   difference of quantiles covers the true difference in [93.5%, 96.5%]
   (unit-level q = 0.5, 0.9, 0.99; event-level clustered q = 0.5, 0.9), and
   under no effect the false-positive rate is in [3.5%, 6.5%]; treating
   clustered events as independent under-covers.
"""
import io
import json
import math
import os
import struct
import sys
from collections import Counter

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from exptest import Checker, fresh_db, skip  # noqa: E402

try:
    import numpy as np
    import psycopg2
    from scipy import optimize, stats
except ImportError as e:  # pragma: no cover
    if os.environ.get("CI"):
        print("FAIL: %s is missing" % e)
        sys.exit(1)
    skip(str(e))

ALPHA = 0.005
INF = float("inf")
SEED = int(os.environ.get("SKETCH_SEED", "20261202"))
ck = Checker("test_sketch")
maxerr = {}
conn = fresh_db("sketch_oracle")
cur = conn.cursor()
cur.execute("SET work_mem = '256MB'")
rng = np.random.default_rng(SEED)
T0 = __import__("time").time()


def elapsed(what):
    print("-- %s done at %.1f s" % (what, __import__("time").time() - T0), flush=True)

# ---------- the index mapping, reimplemented from doc/statistics.md ----------
LOG_GAMMA = math.log1p(ALPHA) - math.log1p(-ALPHA)
INV_LOG_GAMMA = 1.0 / LOG_GAMMA
OFFSET = 100000


def ordinal(x):
    if x > 0:
        return OFFSET + math.ceil(math.log(x) * INV_LOG_GAMMA)
    if x < 0:
        return -(OFFSET + math.ceil(math.log(-x) * INV_LOG_GAMMA))
    return 0


def bins_of_text(t):
    d = json.loads(t)
    c = Counter()
    for k, n in d["negative"]:
        c[-(OFFSET + k)] = n
    if d["zero"]:
        c[0] = d["zero"]
    for k, n in d["positive"]:
        c[OFFSET + k] = n
    return d, c


def expected_bins(values):
    """the bins of the values under the mapping, collapsed to the 2048 of highest magnitude per sign"""
    full = Counter(ordinal(v) for v in values)
    out = Counter({0: full[0]}) if full[0] else Counter()
    for side in ([o for o in full if o > 0], [o for o in full if o < 0]):
        keep = sorted(side, key=abs)[-2048:]
        for o in keep:
            out[o] = full[o]
        if keep:
            out[min(keep, key=abs)] += sum(full[o] for o in side if o not in set(keep))
    return out


def load(table, values, extra=None):
    """values (and extra integer columns) into a new table via COPY, exactly (repr)."""
    cols = ["y"] + [c for c, _ in (extra or [])]
    cur.execute("DROP TABLE IF EXISTS %s" % table)
    cur.execute("CREATE TABLE %s (y float8%s) WITH (parallel_workers = 2)"
                % (table, "".join(", %s int" % c for c, _ in (extra or []))))
    cols_data = [values] + [v for _, v in (extra or [])]
    buf = io.StringIO("".join("\t".join(repr(float(r[0])) if i == 0 else str(int(r[i]))
                                         for i in range(len(cols))) + "\n" for r in zip(*cols_data)))
    cur.copy_expert("COPY %s (%s) FROM STDIN" % (table, ", ".join(cols)), buf)
    cur.execute("ANALYZE %s" % table)


def close(what, got, want, rel=1e-9, scale=0.0):
    if got is None or want is None:
        return ck.check(got is None and want is None, "%s: got %r, want %r" % (what, got, want))
    got, want = float(got), float(want)
    if math.isinf(want) or math.isinf(got):
        return ck.check(got == want, "%s: got %r, want %r" % (what, got, want))
    e = 0.0 if got == want else abs(got - want) / max(abs(got), abs(want), scale)
    key = what.split(" [")[0].split(" ")[0] + " " + what.split(" ")[-1]
    maxerr[key] = max(maxerr.get(key, 0.0), e)
    return ck.check(e <= rel, "%s: got %r, want %r (rel err %.3g)" % (what, got, want, e))


# ---------- 1. accuracy against numpy ----------
def mixture(n):
    kind = rng.choice(4, size=n, p=[0.1, 0.2, 0.6, 0.1])
    v = np.where(kind == 0, 0.0,
        np.where(kind == 1, -rng.lognormal(2.0, 1.5, n),
        np.where(kind == 2, rng.lognormal(4.0, 2.0, n), rng.pareto(1.2, n) * 1e-3)))
    return v


DISTS = {
    "lognormal": lambda n: rng.lognormal(5.0, 1.5, n),
    "pareto": lambda n: (rng.pareto(1.1, n) + 1) * 100,
    "mixture": mixture,
}
GRID = [0, 1e-4, 0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 0.9999, 1]
worst = 0.0
sizes = {}
for name, gen in DISTS.items():
    for n in (1000, 10000, 100000) + ((1000000,) if name == "lognormal" else ()):
        x = gen(n)
        load("acc", x)
        qs = GRID + list(rng.uniform(0, 1, 20))
        cur.execute("SELECT experiment.quantile(s, q), q, pg_column_size(s) FROM (SELECT experiment.sketch(y) s FROM acc) t,"
                    " unnest(%s::float8[]) q", (qs,))
        rows = cur.fetchall()
        want = np.quantile(x, [r[1] for r in rows], method="lower")
        for (got, q, size), w in zip(rows, want):
            if q in (0, 1):
                ck.check(got == w, "%s n=%d q=%g: %r, want exactly %r" % (name, n, q, got, w))
                continue
            err = abs(got - w) / abs(w) if w != 0 else (0.0 if got == 0 else INF)
            worst = max(worst, err)
            ck.check(err <= ALPHA * (1 + 1e-12), "%s n=%d q=%r: %r vs numpy %r (rel err %.3g)" % (name, n, q, got, w, err))
        sizes[(name, n)] = rows[0][2]
print("accuracy: largest relative error %.5f (bound %.3f); sketch sizes: %s"
      % (worst, ALPHA, ", ".join("%s %d: %d B" % (k[0], k[1], v) for k, v in sorted(sizes.items()))))

elapsed("accuracy")
# ---------- 2. bins against the reimplemented mapping ----------
x = mixture(100000)
load("bins", x)
cur.execute("SELECT experiment.sketch(y)::text FROM bins")
d, got = bins_of_text(cur.fetchone()[0])
want = expected_bins(x)
ck.check(got == want, "bins of 1e5 mixed values equal the reimplemented mapping's (collapsed) histogram (%d vs %d bins)"
         % (len(got), len(want)))
ck.check(d["n"] == len(x) and d["min"] == float(x.min()) and d["max"] == float(x.max()), "n, min, max exact")
ck.check(sum(1 for o in got if o > 0) <= 2048 and sum(1 for o in got if o < 0) <= 2048, "at most 2048 bins per sign")
# rank: the bins up to and including x's bin
for t in list(rng.choice(x, 30)) + [0.0, -1e9, 1e12]:
    cur.execute("SELECT experiment.rank(experiment.sketch(y), %s) FROM bins", (float(t),))
    r = cur.fetchone()[0]
    ck.check(r == sum(c for o, c in want.items() if o <= ordinal(t)), "rank(%r) = %r" % (t, r))
# a unit of 5 values is compact
cur.execute("SELECT pg_column_size(experiment.sketch(v)) FROM unnest(%s::float8[]) v",
            (list(rng.lognormal(6, 1, 5)),))
small = cur.fetchone()[0]
ck.check(small <= 64, "a unit of 5 values takes %d bytes (<= 64)" % small)

elapsed("bins")
# ---------- 3. merge, round trips, crafted binary ----------
for name, vals in (("mixture", mixture(50000)), ("collapsing", np.exp(rng.uniform(-30, 30, 50000))),
                   ("collapsing negative", -np.exp(rng.uniform(-30, 30, 50000)))):
    part = rng.integers(0, 37, len(vals))
    load("mg", vals, [("part", part)])
    cur.execute("SELECT (SELECT experiment.sketch(y) FROM mg) OPERATOR(experiment.=)"
                " (SELECT experiment.merge(s) FROM (SELECT experiment.sketch(y) s FROM mg GROUP BY part ORDER BY random()) p)")
    ck.check(cur.fetchone()[0], "%s: sketch of the union = merge of 37 parts" % name)
    cur.execute("SELECT (SELECT experiment.sketch(y) FROM mg) OPERATOR(experiment.=)"
                " ((SELECT experiment.sketch(y) FROM mg WHERE part < 5) OPERATOR(experiment.+)"
                " (SELECT experiment.sketch(y) FROM mg WHERE part >= 5))")
    ck.check(cur.fetchone()[0], "%s: a + b = sketch of the union" % name)
    cur.execute("SELECT s::text, s::text::experiment.sketch::text, s::text::experiment.sketch OPERATOR(experiment.=) s"
                " FROM (SELECT experiment.sketch(y) s FROM mg) t")
    a, b, eq = cur.fetchone()
    ck.check(a == b and eq, "%s: text round trip is exact" % name)
    if name.startswith("collapsing"):
        d, c = bins_of_text(a)
        ck.check(c == expected_bins(vals), "%s: the 2048 bins of highest magnitude kept, the rest in the lowest kept" % name)

cur.execute("CREATE TABLE bin_src AS SELECT part, experiment.sketch(y) s FROM mg GROUP BY part")
cur.execute("CREATE TABLE bin_dst (part int, s experiment.sketch)")
buf = io.BytesIO()
cur.copy_expert("COPY bin_src TO STDOUT (FORMAT binary)", buf)
buf.seek(0)
cur.copy_expert("COPY bin_dst FROM STDIN (FORMAT binary)", buf)
cur.execute("SELECT count(*), bool_and(a.s OPERATOR(experiment.=) b.s) FROM bin_src a JOIN bin_dst b USING (part)")
cnt, ok = cur.fetchone()
ck.check(cnt == 37 and ok, "binary COPY round trip of %d sketches" % cnt)


def binary_copy(payloads):
    out = io.BytesIO()
    out.write(b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0))
    for p in payloads:
        out.write(struct.pack("!hi", 1, len(p)) + p)
    out.write(struct.pack("!h", -1))
    out.seek(0)
    return out


def sketch_bytes(version=1, mn=1.0, mx=2.0, bins=((OFFSET, 1), (OFFSET + 70, 1)), nbins=None):
    b = struct.pack("!Bddi", version, mn, mx, len(bins) if nbins is None else nbins)
    return b + b"".join(struct.pack("!iq", o, c) for o, c in bins)


cur.execute("CREATE TABLE crafted (s experiment.sketch)")
cur.copy_expert("COPY crafted FROM STDIN (FORMAT binary)", binary_copy([sketch_bytes()]))
cur.execute("SELECT s::text FROM crafted")
ck.check(cur.fetchone()[0] == '{"version":1,"alpha":0.005,"n":2,"min":1,"max":2,"negative":[],"zero":0,"positive":[[0,1],[70,1]]}',
         "a crafted binary value reads")
for what, p in [("version 2", sketch_bytes(version=2)), ("no bins", sketch_bytes(bins=())),
                ("truncated", sketch_bytes()[:-3]), ("extra bytes", sketch_bytes() + b"\0"),
                ("wrong count of bins", sketch_bytes(nbins=3)), ("zero count", sketch_bytes(bins=((OFFSET, 0),), mx=1.0)),
                ("unsorted", sketch_bytes(bins=((OFFSET + 70, 1), (OFFSET, 1)))),
                ("ord out of range", sketch_bytes(bins=((5, 1),), mn=1.0, mx=1.0)),
                ("NaN min", sketch_bytes(mn=float("nan"))), ("min above max", sketch_bytes(mn=3.0)),
                ("max outside the highest bin", sketch_bytes(mx=5.0)),
                ("2049 positive bins", sketch_bytes(bins=tuple((OFFSET + k, 1) for k in range(2049)), mx=1.0050251256281408 ** 2048))]:
    try:
        cur.copy_expert("COPY crafted FROM STDIN (FORMAT binary)", binary_copy([p]))
        ck.check(False, "crafted binary value (%s) was accepted" % what)
    except psycopg2.Error as e:
        ck.check(e.pgcode == "22P03", "crafted binary value (%s): %s %s" % (what, e.pgcode, e.pgerror.splitlines()[0]))

elapsed("merge and round trips")
# ---------- 4. parallel == serial ----------
load("par", mixture(1000000), [("grp", rng.integers(0, 3, 1000000))])
cur.execute("CREATE TABLE par_serial AS SELECT grp, experiment.sketch(y) s FROM par GROUP BY grp")
cur.execute("SET parallel_setup_cost = 0; SET parallel_tuple_cost = 0; SET min_parallel_table_scan_size = 0;"
            " SET max_parallel_workers_per_gather = 2")
cur.execute("EXPLAIN (COSTS OFF) SELECT grp, experiment.sketch(y) FROM par GROUP BY grp")
plan = "\n".join(r[0] for r in cur.fetchall())
ck.check("Partial" in plan and "Gather" in plan, "parallel plan with partial aggregation:\n" + plan)
cur.execute("SELECT count(*), bool_and(p.s OPERATOR(experiment.=) s.s) FROM"
            " (SELECT grp, experiment.sketch(y) s FROM par GROUP BY grp) p JOIN par_serial s USING (grp)")
cnt, ok = cur.fetchone()
ck.check(cnt == 3 and ok, "parallel sketches equal the serial ones (%d groups)" % cnt)
cur.execute("RESET parallel_setup_cost; RESET parallel_tuple_cost; RESET min_parallel_table_scan_size;"
            " SET max_parallel_workers_per_gather = 0")


elapsed("parallel")
# ---------- 5. quantile_test against the formulas ----------
Z = stats.norm.ppf(0.975)


def gb_iid_var(n, lo_v, hi_v):
    """GrowthBook QuantileStatistic.variance_init / n (n_star = n): the variance of the arm's quantile."""
    return (n - 1) * ((hi_v - lo_v) / (2 * Z)) ** 2 / n


def gb_cluster_variance(main_sum, main_sum_squares, den_sum, den_sum_squares, prod, n_clusters):
    """GrowthBook QuantileClusteredStatistic.get_cluster_variance, from its sums."""
    mu_s = main_sum / n_clusters
    mu_n = den_sum / n_clusters
    s2s = (main_sum_squares / n_clusters - mu_s * mu_s) * n_clusters / (n_clusters - 1)
    s2n = (den_sum_squares / n_clusters - mu_n * mu_n) * n_clusters / (n_clusters - 1)
    ssn = (prod / n_clusters - mu_s * mu_n) * n_clusters / (n_clusters - 1)
    return (s2s - 2 * mu_s * ssn / mu_n + mu_s ** 2 * s2n / mu_n ** 2) / (n_clusters * mu_n ** 2)


close("growthbook published cluster variance", gb_cluster_variance(10, 52, 4, 10, 22, 2), 0.5625, rel=1e-12)
# GrowthBook's published quantile case (packages/stats/tests/bayesian/test_tests.py,
# TestEffectBayesianABTest.test_bayesian_effect_ab_test: nu = 0.9, n = 11054 / 10861, improper flat
# prior, so the posterior is the estimate and its normal interval): the oracle's variance reproduces it
GB = dict(n_c=11054, n_t=10861, qc=7.157987489967789, lc=7.098780136176828, uc=7.217194843758751,
          qt=7.694499927525767, lt=7.64180598628119, ut=7.747193868770344)
_vc, _vt = gb_iid_var(GB["n_c"], GB["lc"], GB["uc"]), gb_iid_var(GB["n_t"], GB["lt"], GB["ut"])
_d, _se = GB["qt"] - GB["qc"], math.sqrt(_vc + _vt)
close("growthbook published quantile expected", _d, 0.5365124375579775, rel=1e-12)
close("growthbook published quantile ci_lower", _d - Z * _se, 0.4572559589115422, rel=1e-12)
close("growthbook published quantile ci_upper", _d + Z * _se, 0.6157689162044128, rel=1e-12)
# relative, flat proper prior (variance 1e6): equal to the likelihood's to ~1e-10
_l, _lse = _d / GB["qc"], math.sqrt((_vt + _vc * (GB["qt"] / GB["qc"]) ** 2) / GB["qc"] ** 2)
close("growthbook published quantile relative", _l, 0.07495297222736319, rel=1e-9)
close("growthbook published quantile relative ci_lower", _l - Z * _lse, 0.06341005842481906, rel=1e-9)
close("growthbook published quantile relative ci_upper", _l + Z * _lse, 0.08649588602990732, rel=1e-9)


def rho(a, tuning):
    return math.sqrt((-2 * math.log(a) + math.log(-2 * math.log(a) + 1)) / tuning)


def halfwidth(se, n, alpha, tuning, two_sided, r=None):
    r = rho(alpha if two_sided else 2 * alpha, tuning) if r is None else r
    v = n * r * r + 1
    lg = math.log(math.sqrt(v) / alpha) if two_sided else math.log(1 + math.sqrt(v) / (2 * alpha))
    return math.sqrt(se * se * n * 2 * v * lg / (n * r) ** 2)


def reference(est, se, n, alpha, tuning, alt):
    """interval and p-value: normal fixed horizon (scipy) or the confidence sequence of doc/statistics.md"""
    if tuning is None:
        z = est / se
        if alt == "two-sided":
            q = stats.norm.isf(alpha / 2)
            return est - q * se, est + q * se, 2 * stats.norm.sf(abs(z))
        q = stats.norm.isf(alpha)
        return (est - q * se, INF, stats.norm.sf(z)) if alt == "greater" else (-INF, est + q * se, stats.norm.sf(-z))
    if alt == "two-sided":
        r = rho(alpha, tuning)
        tr = n * r * r + 1
        log_e = r * r * (est * est * n / (se * se)) / (2 * tr) - 0.5 * math.log(tr)
        h = halfwidth(se, n, alpha, tuning, True)
        return est - h, est + h, min(1.0, math.exp(-log_e))
    r = rho(2 * alpha, tuning)
    h = halfwidth(se, n, alpha, tuning, False)
    e = est if alt == "greater" else -est
    lower, upper = (est - h, INF) if alt == "greater" else (-INF, est + h)
    if e <= 0:
        return lower, upper, 1.0
    f = lambda la: halfwidth(se, n, math.exp(la), tuning, False, r) - e  # noqa: E731
    if f(0.0) > 0:
        return lower, upper, 1.0
    la = optimize.brentq(f, -745, 0.0, xtol=1e-15, rtol=1e-15, maxiter=500)
    return lower, upper, min(1.0, math.exp(la))


def compare(what, row, qc, qt, var_c, var_t, n_c, n_t, alpha, alt, tuning):
    (rn_c, rn_t, m_c, m_t, diff, dlo, dhi, lift, llo, lhi, stat, df, p, lp, dse, lse) = row
    ck.check(rn_c == n_c and rn_t == n_t, "%s n: %r %r, want %r %r" % (what, rn_c, rn_t, n_c, n_t))
    ck.check(df is None, what + " df is NULL")
    close(what + " mean_control", m_c, qc)
    close(what + " mean_treatment", m_t, qt)
    d = qt - qc
    se = math.sqrt(var_c + var_t)
    lf = d / abs(qc)
    lse_w = math.sqrt((var_t + var_c * (qt / qc) ** 2) / qc ** 2)
    close(what + " diff", diff, d, scale=se)
    close(what + " diff_se", dse, se)
    close(what + " lift", lift, lf, scale=lse_w)
    close(what + " lift_se", lse, lse_w)
    close(what + " statistic", stat, d / se, scale=1.0)
    lo, hi, pr = reference(d, se, n_c + n_t, alpha, tuning, alt)
    close(what + " diff_lower", dlo, lo, scale=se)
    close(what + " diff_upper", dhi, hi, scale=se)
    close(what + " p_value", p, pr)
    lo, hi, pr = reference(lf, lse_w, n_c + n_t, alpha, tuning, alt)
    close(what + " lift_lower", llo, lo, scale=lse_w)
    close(what + " lift_upper", lhi, hi, scale=lse_w)
    close(what + " lift_p_value", lp, pr)


def sketch_quantile(table, cond, p):
    cur.execute("SELECT experiment.quantile(experiment.sketch(y), %%s) FROM %s WHERE %s" % (table, cond), (p,))
    return cur.fetchone()[0]


def arm_quantiles(table, cond, n, q, raw):
    """the sketch's quantile and its GrowthBook variance; the quantiles checked against numpy too"""
    h = Z * math.sqrt(q * (1 - q) / n)
    qv, lo_v, hi_v = (sketch_quantile(table, cond, p) for p in (q, q - h, q + h))
    for p, v in ((q, qv), (q - h, lo_v), (q + h, hi_v)):
        w = np.quantile(raw, p, method="lower")
        ck.check(abs(v - w) <= ALPHA * abs(w) * (1 + 1e-12), "quantile %r of %s: %r vs numpy %r" % (p, cond, v, w))
    return qv, gb_iid_var(n, lo_v, hi_v)


COLS = ("n_control, n_treatment, mean_control, mean_treatment, diff, diff_lower, diff_upper, lift, lift_lower,"
        " lift_upper, statistic, df, p_value, lift_p_value, diff_se, lift_se")
CASES = [(a, alt, tun) for a in (0.05, 0.01) for alt in ("two-sided", "greater", "less") for tun in (None, 5000.0)]
n_unit = 0
for k in range(8):
    n_c, n_t = int(rng.integers(200, 5000)), int(rng.integers(200, 5000))
    q = float(rng.choice([0.1, 0.5, 0.9, 0.95, 0.99]))
    sigma = float(rng.uniform(0.3, 2))
    yc = rng.lognormal(3, sigma, n_c)
    yt = rng.lognormal(3 + float(rng.normal(0, 0.1)), sigma, n_t)
    load("qt", np.concatenate([yc, yt]), [("t", np.r_[np.zeros(n_c), np.ones(n_t)])])
    qc, vc = arm_quantiles("qt", "t = 0", n_c, q, yc)
    qtv, vt = arm_quantiles("qt", "t = 1", n_t, q, yt)
    for alpha, alt, tun in CASES:
        cur.execute("SELECT (r).* FROM (SELECT experiment.quantile_test((SELECT experiment.sketch(y) FROM qt WHERE t = 0),"
                    " (SELECT experiment.sketch(y) FROM qt WHERE t = 1), %s, %s, %s, %s) r) x", (q, alpha, alt, tun))
        compare("unit %d q=%g %s %s" % (k, q, alt, tun), cur.fetchone(), qc, qtv, vc, vt, n_c, n_t, alpha, alt, tun)
        n_unit += 1


def clustered(units, effect, sd_unit, q_list=None):
    """units per arm, each with 1 + Poisson(2) events of log value unit effect + N(0, 1)"""
    out = []
    for arm in (0, 1):
        ne = 1 + rng.poisson(2, units)
        u = rng.normal(0, sd_unit, units)
        unit = np.repeat(np.arange(units) + arm * units, ne)
        y = np.exp(np.repeat(u, ne) + rng.normal(0, 1, ne.sum()) + (effect if arm else 0))
        out.append((unit, y))
    return out


n_clu = 0
for k in range(6):
    q = float(rng.choice([0.5, 0.9, 0.95]))
    units = int(rng.integers(100, 2000))
    (uc, yc), (ut, yt) = clustered(units, float(rng.normal(0, 0.1)), float(rng.uniform(0.2, 1.0)))
    load("ev", np.concatenate([yc, yt]), [("unit", np.concatenate([uc, ut])),
                                           ("t", np.r_[np.zeros(len(yc)), np.ones(len(yt))])])
    arms = []
    for t, unit, y in ((0, uc, yc), (1, ut, yt)):
        qv, v_iid = arm_quantiles("ev", "t = %d" % t, len(y), q, y)
        # b_i: the unit's events in the bins up to the quantile's (rank), n_i its events; GrowthBook's sums
        oq = ordinal(qv)
        inb = np.array([ordinal(v) <= oq for v in y], dtype=float)
        b = np.bincount(unit - unit.min(), weights=inb)
        n = np.bincount(unit - unit.min()).astype(float)
        vcl = gb_cluster_variance(b.sum(), (b * b).sum(), n.sum(), (n * n).sum(), (b * n).sum(), len(n))
        arms.append((qv, v_iid * vcl / (q * (1 - q) / len(y)), len(n)))
    for alpha, alt, tun in CASES:
        cur.execute("""
          WITH us AS (SELECT unit, t, experiment.sketch(y) s FROM ev GROUP BY unit, t),
               a AS (SELECT t, experiment.merge(s) s FROM us GROUP BY t),
               c AS (SELECT us.t, experiment.moments(experiment.rank(us.s, experiment.quantile(a.s, %(q)s)),
                                                     experiment.n(us.s)) m
                       FROM us JOIN a USING (t) GROUP BY us.t)
          SELECT (r).* FROM (SELECT experiment.quantile_test(
                   (SELECT s FROM a WHERE t = 0), (SELECT s FROM a WHERE t = 1), %(q)s,
                   (SELECT m FROM c WHERE t = 0), (SELECT m FROM c WHERE t = 1), %(a)s, %(alt)s, %(tun)s) r) x""",
                    {"q": q, "a": alpha, "alt": alt, "tun": tun})
        compare("clustered %d q=%g %s %s" % (k, q, alt, tun), cur.fetchone(), arms[0][0], arms[1][0],
                arms[0][1], arms[1][1], arms[0][2], arms[1][2], alpha, alt, tun)
        n_clu += 1
print("quantile_test: %d unit-level and %d event-level results compared column by column" % (n_unit, n_clu))
print("largest relative errors: " + ", ".join("%s %.2g" % kv for kv in sorted(maxerr.items())))

elapsed("quantile_test oracle")
# errors and NULLs
for sql, code in [("SELECT experiment.quantile_test(experiment.sketch(y), experiment.sketch(y), 1) FROM qt", "22023"),
                  ("SELECT experiment.quantile_test(experiment.sketch(y), experiment.sketch(y), 0.5, 2) FROM qt", "22023"),
                  ("SELECT experiment.quantile_test(experiment.sketch(y), experiment.sketch(y), 0.5, 0.05, 'both') FROM qt", "22023"),
                  ("SELECT experiment.quantile_test(experiment.sketch(y), experiment.sketch(y), 0.5,"
                   " experiment.moments(2, 1), experiment.moments(2, 1)) FROM qt", "22023"),
                  ("SELECT experiment.quantile_test(experiment.sketch(y), experiment.sketch(y), 0.5,"
                   " experiment.moments(1, 2), experiment.moments(1, 2)) FROM qt", "22023"),
                  ("SELECT experiment.quantile_test(experiment.sketch(y), experiment.sketch(y), 0.5,"
                   " experiment.moments(y), experiment.moments(y)) FROM qt", "22023")]:
    try:
        cur.execute(sql)
        ck.check(False, "%s: no error" % sql)
    except psycopg2.Error as e:
        ck.check(e.pgcode == code, "%s: %s %s" % (sql, e.pgcode, e.pgerror.splitlines()[0]))
cur.execute("SELECT experiment.quantile_test(NULL, experiment.sketch(y), 0.5) IS NULL,"
            " (experiment.quantile_test(experiment.sketch(y), experiment.sketch(y), 0.5)).p_value,"
            " (experiment.quantile_test(experiment.sketch(y) FILTER (WHERE y < 0), experiment.sketch(y), 0.5)) IS NULL"
            " FROM qt")
null_res, p_same, none = cur.fetchone()
ck.check(null_res and none and p_same == 1.0, "NULL sketches give NULL; equal arms p = 1 (%r)" % p_same)
cur.execute("SELECT (r).diff_se IS NULL, (r).p_value IS NULL, (r).mean_control FROM (SELECT experiment.quantile_test("
            "experiment.sketch(v), experiment.sketch(v), 0.99) r FROM unnest(ARRAY[1, 2, 3, 4, 5]::float8[]) v) x")
se_null, p_null, m = cur.fetchone()
ck.check(se_null and p_null and abs(m / 4 - 1) <= ALPHA,
         "n = 5 at q = 0.99: no interval (n <= z^2 q / (1 - q)); the quantile %r is the value of rank 3 (4)" % m)


elapsed("errors")
# ---------- 6. coverage ----------
def coverage(label, sql_data, qs, true_diff, clustered_test, want_fpr=False):
    cur.execute("DROP TABLE IF EXISTS sim")
    cur.execute("SELECT setseed(%s)", (float(rng.uniform(-1, 1)),))
    cur.execute(sql_data)
    res = {}
    for q in qs:
        if clustered_test:
            cur.execute("""
              WITH a AS (SELECT ds, arm, experiment.merge(s) s FROM sim GROUP BY 1, 2),
                   c AS (SELECT us.ds, us.arm, experiment.moments(experiment.rank(us.s, experiment.quantile(a.s, %(q)s)),
                                                                   experiment.n(us.s)) m
                           FROM sim us JOIN a USING (ds, arm) GROUP BY 1, 2)
              SELECT (r).diff_lower, (r).diff_upper, (r).p_value, (i).diff_lower, (i).diff_upper FROM (
                SELECT experiment.quantile_test(ac.s, at.s, %(q)s, cc.m, ct.m) r,
                       experiment.quantile_test(ac.s, at.s, %(q)s) i
                  FROM a ac JOIN a at ON at.ds = ac.ds AND at.arm = 1
                  JOIN c cc ON cc.ds = ac.ds AND cc.arm = 0 JOIN c ct ON ct.ds = ac.ds AND ct.arm = 1
                 WHERE ac.arm = 0) x""", {"q": q})
        else:
            cur.execute("""
              SELECT (r).diff_lower, (r).diff_upper, (r).p_value, NULL, NULL FROM (
                SELECT experiment.quantile_test(ac.s, at.s, %(q)s) r
                  FROM sim ac JOIN sim at ON at.ds = ac.ds AND at.arm = 1 WHERE ac.arm = 0) x""", {"q": q})
        rows = cur.fetchall()
        td = true_diff(q)
        cov = np.mean([lo <= td <= hi for lo, hi, _, _, _ in rows if lo is not None])
        defined = sum(1 for r in rows if r[0] is not None)
        ck.check(defined == len(rows) and len(rows) >= 1000, "%s q=%g: %d of %d datasets with an interval"
                 % (label, q, defined, len(rows)))
        ck.check(0.935 <= cov <= 0.965, "%s q=%g: coverage %.4f outside [0.935, 0.965]" % (label, q, cov))
        msg = "%s q=%g: coverage %.3f over %d datasets" % (label, q, cov, len(rows))
        if want_fpr:
            fpr = np.mean([p < 0.05 for _, _, p, _, _ in rows])
            ck.check(0.035 <= fpr <= 0.065, "%s q=%g: false-positive rate %.4f outside [0.035, 0.065]" % (label, q, fpr))
            msg += ", false positives %.3f" % fpr
        if clustered_test:
            cov_iid = np.mean([lo <= td <= hi for _, _, _, lo, hi in rows if lo is not None])
            ck.check(cov_iid < 0.935, "%s q=%g: the independent-events interval covers only %.3f" % (label, q, cov_iid))
            msg += " (treating events as independent: %.3f)" % cov_iid
        print(msg)
        res[q] = cov
    return res


SIGMA = 1.0
for mult in (1.05, 1.0):
    # the sketch of each arm of each dataset, straight from the generated values
    coverage("unit-level lognormal, treatment x%g" % mult, """
      CREATE TABLE sim AS
      SELECT ds, arm, experiment.sketch(exp(%(s)s * sqrt(-2 * ln(1 - random())) * cos(2 * pi() * random()))
                                        * CASE WHEN arm = 1 THEN %(m)s ELSE 1 END) AS s
        FROM generate_series(1, 1000) ds, generate_series(0, 1) arm, generate_series(1, 2000) i
       GROUP BY ds, arm""" % {"s": SIGMA, "m": mult},
             (0.5, 0.9, 0.99), lambda q, m=mult: math.exp(SIGMA * stats.norm.ppf(q)) * (m - 1), False, want_fpr=(mult == 1.0))

SD_U = 0.8
for mult in (1.05, 1.0):
    # units with 1 + floor(Exp(mean 3)) events (about 3.5), a unit random effect N(0, 0.8^2), events N(0, 1) in logs
    # the sketch of each unit's events, straight from the generated values
    coverage("event-level clustered, treatment x%g" % mult, """
      CREATE TABLE sim AS
      SELECT ds, arm, unit,
             (SELECT experiment.sketch(exp(re + 0 * e + sqrt(-2 * ln(1 - random())) * cos(2 * pi() * random()))
                                       * CASE WHEN arm = 1 THEN %(m)s ELSE 1 END)
                FROM generate_series(1, ne) e) AS s  -- (0 * e: an aggregate of the subquery's level)
        FROM (SELECT ds, arm, unit, %(sd)s * sqrt(-2 * ln(1 - random())) * cos(2 * pi() * random()) AS re,
                     1 + floor(-ln(1 - random()) * 3)::int AS ne
                FROM generate_series(1, 1000) ds, generate_series(0, 1) arm, generate_series(1, 400) unit) u""" % {"sd": SD_U, "m": mult},
             (0.5, 0.9), lambda q, m=mult: math.exp(math.sqrt(SD_U ** 2 + 1) * stats.norm.ppf(q)) * (m - 1), True,
             want_fpr=(mult == 1.0))

elapsed("coverage")
conn.close()
ck.report()
