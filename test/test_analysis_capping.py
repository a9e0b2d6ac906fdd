"""Capping both ways (doc/analysis.md, "Winsorization"), against numpy and scipy.

The per-unit values are computed here from the raw rows of the source tables
(sums over [t0, end_at) and, for CUPED, over [t0 - 7 days, t0)), and capped
under the documented rule, written independently of the SQL: the percentile
caps are np.percentile(method='linear') of the pooled per-unit values (of the
values that are not 0 with cap_ignore_zeros), each clamped into
[cap_lower, cap_upper]; without a percentile the absolute cap is the cap; with
cap_ignore_zeros a 0 stays 0. Cases: a lower cap only, an upper cap only,
both, absolute caps alone and with percentiles, cap_ignore_zeros on revenue
that is 0 for about 92% of the units (where the plain 90th percentile is 0),
net revenue with refunds (negative values), and the pre-period of a CUPED
metric capped at percentiles of its own.

Every stored cap (variant_stats.cap, cap_lower), n, mean and variance (and the
CUPED moments) must match to 1e-9 relative, and every test the Welch t-test of
scipy.stats.ttest_ind(equal_var=False) on the capped values (CUPED: Welch on
y - theta (x - mean x)). Then: changing the capping columns keeps the refresh
incremental and gives the oracle's values for the new settings; aa_test()
caps as refresh does (its KS statistic equals the one computed here from the
same pseudo-splits, read from the server's hashes, with scipy's Welch test on
the capped values).
"""
import datetime as dt
import io
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from exptest import Checker, fresh_db  # noqa: E402

import numpy as np  # noqa: E402
from scipy import stats  # noqa: E402

DAY = 86400
START = dt.datetime(2025, 6, 1, tzinfo=dt.timezone.utc)
END_S = 10 * DAY
LOOKBACK = 7 * DAY
ALPHA = 0.05
REL = 1e-9

ck = Checker("test_analysis_capping")
rng = np.random.default_rng(20250601)
conn = fresh_db("exp_analysis_capping")
cur = conn.cursor()


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


def quarter(x):
    # amounts in quarters: every sum is exact in float8, whatever the order of the additions
    # (so that a unit whose purchases and refunds cancel is exactly 0)
    return float(np.round(x * 4) / 4)


# ---------------------------------------------------------------- the data
N = 3000
units = ["u%04d" % i for i in range(N)]
treat = rng.random(N) < 0.5
t0 = rng.integers(0, 5 * DAY, N)
orders = []      # (unit, second, amount): purchases and refunds, before and after t0
purchases = []   # (unit, second, amount): about 8% of the units buy at all
for i in range(N):
    lam = rng.gamma(2.0, 1.0)
    for _ in range(int(rng.poisson(lam))):
        s = int(t0[i] + rng.integers(0, END_S + DAY - t0[i]))   # some after the end: not counted
        amt = quarter(rng.lognormal(3.0, 1.0) * (1.15 if treat[i] else 1.0))
        if rng.random() < 0.2:
            amt = -quarter(rng.lognormal(3.5, 1.2))              # a refund
        orders.append((units[i], s, amt))
    for _ in range(int(rng.poisson(lam * 0.8))):                # pre-period, some older than the lookback
        s = int(t0[i] - rng.integers(1, 10 * DAY))
        amt = quarter(rng.lognormal(3.0, 1.0))
        if rng.random() < 0.15:
            amt = -quarter(rng.lognormal(3.5, 1.2))
        orders.append((units[i], s, amt))
    if rng.random() < 0.08:
        for _ in range(1 + int(rng.poisson(0.5))):
            purchases.append((units[i], int(t0[i] + rng.integers(0, END_S - t0[i])),
                              quarter(rng.lognormal(4.0, 1.5) * (1.2 if treat[i] else 1.0))))
purchases.append((units[0], int(t0[0] + 60), 0.0))   # a purchase of 0 is 0 like none

cur.execute("CREATE SCHEMA cap")
cur.execute("CREATE TABLE cap.orders (user_id text, ordered_at timestamptz, amount float8)")
cur.execute("CREATE TABLE cap.purchases (user_id text, bought_at timestamptz, amount float8)")
copy_rows("cap.orders", ("user_id", "ordered_at", "amount"), [(u, ts(s), a) for u, s, a in orders])
copy_rows("cap.purchases", ("user_id", "bought_at", "amount"), [(u, ts(s), a) for u, s, a in purchases])

cur.execute("""INSERT INTO experiment.experiments (id, name, status, start_at, end_at, alpha, analysis, correction)
               VALUES ('cap', 'capping', 'draft', %s, %s, %s, 'fixed', 'none')""", (ts(0), ts(END_S), ALPHA))
cur.execute("""INSERT INTO experiment.variants (experiment_id, name, allocation, is_control) VALUES
               ('cap', 'control', 0.5, true), ('cap', 'treatment', 0.5, false)""")

COLS = ("winsorize_lower", "winsorize", "cap_lower", "cap_upper", "cap_ignore_zeros")
METRICS = {
    # name: (source, time column, CUPED, {capping columns})
    "cap_none": ("cap.orders", "ordered_at", False, {}),
    "cap_lower_only": ("cap.orders", "ordered_at", False, {"winsorize_lower": 0.05}),
    "cap_upper_only": ("cap.orders", "ordered_at", False, {"winsorize": 0.95}),
    "cap_both": ("cap.orders", "ordered_at", False, {"winsorize_lower": 0.02, "winsorize": 0.98}),
    "cap_absolute": ("cap.orders", "ordered_at", False, {"cap_lower": -40.0, "cap_upper": 150.0}),
    # the absolute caps tighten the percentiles on one side and not on the other
    "cap_mixed": ("cap.orders", "ordered_at", False,
                  {"winsorize_lower": 0.01, "winsorize": 0.99, "cap_lower": -1000.0, "cap_upper": 120.0}),
    "cap_upper_abs_only": ("cap.orders", "ordered_at", False, {"cap_upper": 90.0}),
    "zi_plain": ("cap.purchases", "bought_at", False, {"winsorize": 0.9}),
    "zi_nonzero": ("cap.purchases", "bought_at", False, {"winsorize": 0.9, "cap_ignore_zeros": True}),
    "zi_nonzero_both": ("cap.purchases", "bought_at", False,
                        {"winsorize_lower": 0.1, "winsorize": 0.9, "cap_ignore_zeros": True}),
    # an absolute lower cap above 0: the zeros stay 0 all the same
    "zi_floor": ("cap.purchases", "bought_at", False, {"cap_lower": 20.0, "cap_ignore_zeros": True}),
    # the 20th percentile of the non-zero values is below cap_lower: the upper cap is moved up to
    # cap_lower (the absolute caps are hard bounds), every non-zero value becomes 10
    "cap_crossed": ("cap.orders", "ordered_at", False, {"winsorize": 0.2, "cap_lower": 10.0, "cap_ignore_zeros": True}),
    "net_nonzero": ("cap.orders", "ordered_at", False,
                    {"winsorize_lower": 0.05, "winsorize": 0.95, "cap_ignore_zeros": True}),
    "cuped_both": ("cap.orders", "ordered_at", True, {"winsorize_lower": 0.02, "winsorize": 0.98}),
    "cuped_mixed": ("cap.orders", "ordered_at", True,
                    {"winsorize_lower": 0.05, "winsorize": 0.97, "cap_upper": 100.0, "cap_ignore_zeros": True}),
}
for name, (src, tcol, cuped, caps) in METRICS.items():
    cur.execute("""INSERT INTO experiment.metrics (name, source, unit_column, time_column, value_column, aggregation,
                                                   kind, cuped_lookback, winsorize_lower, winsorize, cap_lower,
                                                   cap_upper, cap_ignore_zeros)
                   VALUES (%s, %s, 'user_id', %s, 'amount', 'sum', 'mean', %s, %s, %s, %s, %s, %s)""",
                (name, src, tcol, "7 days" if cuped else None, caps.get("winsorize_lower"), caps.get("winsorize"),
                 caps.get("cap_lower"), caps.get("cap_upper"), caps.get("cap_ignore_zeros", False)))
    cur.execute("INSERT INTO experiment.experiment_metrics (experiment_id, metric, role) VALUES ('cap', %s, %s)",
                (name, "primary" if name == "cap_none" else "secondary"))
cur.execute("UPDATE experiment.experiments SET status = 'running' WHERE id = 'cap'")
copy_rows("experiment.exposures", ("experiment_id", "unit_id", "variant", "exposed_at"),
          [("cap", units[i], "treatment" if treat[i] else "control", ts(t0[i])) for i in range(N)])
q("SELECT experiment.refresh('cap')")

# ---------------------------------------------------------------- the oracle
ui = {u: k for k, u in enumerate(units)}
by_src = {"cap.orders": orders, "cap.purchases": purchases}


def unit_values(src, pre):
    out = np.zeros(N)
    for u, s, a in by_src[src]:
        k = ui[u]
        if (t0[k] - LOOKBACK <= s < t0[k]) if pre else (t0[k] <= s < END_S):
            out[k] += a
    return out


def pct(y, p, ignore_zeros):
    base = y[y != 0] if ignore_zeros else y
    if p is None or len(base) == 0:
        return None
    return float(np.percentile(base, 100 * p, method="linear"))


def oracle_caps(y, c):
    """(lower, upper) under the documented rule: percentile caps clamped into the absolute caps"""
    lo_abs, hi_abs = c.get("cap_lower"), c.get("cap_upper")

    def clamp(x):
        if lo_abs is not None:
            x = max(x, lo_abs)
        if hi_abs is not None:
            x = min(x, hi_abs)
        return x
    iz = c.get("cap_ignore_zeros", False)
    pl, pu = pct(y, c.get("winsorize_lower"), iz), pct(y, c.get("winsorize"), iz)
    return (clamp(pl) if pl is not None else lo_abs), (clamp(pu) if pu is not None else hi_abs)


def oracle_capped(y, c):
    lo, hi = oracle_caps(y, c)
    z = y.copy()
    if hi is not None:
        z = np.minimum(z, hi)
    if lo is not None:
        z = np.maximum(z, lo)
    if c.get("cap_ignore_zeros", False):
        z = np.where(y == 0, 0.0, z)
    return z, lo, hi


def stored(metric, variant):
    return q("""SELECT units, experiment.n(moments), experiment.mean(moments), experiment.variance(moments),
                       cap_lower, cap, experiment.mean(cuped_moments, 1), experiment.mean(cuped_moments, 2),
                       experiment.variance(cuped_moments, 2), experiment.covariance(cuped_moments, 1, 2)
                FROM experiment.variant_stats WHERE experiment_id = 'cap' AND metric = %s AND variant = %s""",
             (metric, variant))


def result(metric):
    cur.execute("SELECT * FROM experiment.results WHERE experiment_id = 'cap' AND metric = %s", (metric,))
    cols = [d[0] for d in cur.description]
    rows = cur.fetchall()
    return dict(zip(cols, rows[0])) if len(rows) == 1 else None


def close(got, want, what):
    if want is None or np.isnan(want):
        # (a test of values that do not vary is undefined: NULL where scipy says nan)
        return ck.check(got is None, "%s: got %r, want NULL" % (what, got))
    return ck.close(got, want, what, rel=REL, abs_tol=1e-12)


def check_metric(name, caps, tag=""):
    src, _, cuped, _ = METRICS[name]
    what = name + tag
    y = unit_values(src, False)
    yc, lo, hi = oracle_capped(y, caps)
    masks = {"control": ~treat, "treatment": treat}
    if cuped:
        x = unit_values(src, True)
        xc, xlo, xhi = oracle_capped(x, caps)
    for variant, m in masks.items():
        rows = stored(name, variant)
        if not ck.check(len(rows) == 1, "%s/%s: a variant_stats row" % (what, variant)):
            continue
        units_, n, mean, var, cap_lower, cap = rows[0][:6]
        ck.check(units_ == n == int(m.sum()), "%s/%s: n %r, want %d" % (what, variant, n, m.sum()))
        close(cap_lower, lo, "%s/%s cap_lower" % (what, variant))
        close(cap, hi, "%s/%s cap" % (what, variant))
        close(mean, float(yc[m].mean()), "%s/%s mean" % (what, variant))
        close(var, float(yc[m].var(ddof=1)), "%s/%s variance" % (what, variant))
        if cuped:
            close(rows[0][6], float(yc[m].mean()), "%s/%s CUPED mean of y" % (what, variant))
            close(rows[0][7], float(xc[m].mean()), "%s/%s pre-period mean (capped)" % (what, variant))
            close(rows[0][8], float(xc[m].var(ddof=1)), "%s/%s pre-period variance (capped)" % (what, variant))
            close(rows[0][9], float(np.cov(yc[m], xc[m])[0, 1]), "%s/%s covariance with the pre-period" % (what, variant))
    r = result(name)
    c, t = masks["control"], masks["treatment"]
    if cuped:
        if not ck.check(r is not None and r["method"] == "cuped", "%s: method %r" % (what, r and r["method"])):
            return yc
        theta = np.cov(xc, yc)[0, 1] / np.var(xc, ddof=1)
        adj = yc - theta * (xc - xc.mean())
        res = stats.ttest_ind(adj[t], adj[c], equal_var=False)
        diff = adj[t].mean() - adj[c].mean()
    else:
        if not ck.check(r is not None and r["method"] == "welch", "%s: method %r" % (what, r and r["method"])):
            return yc
        res = stats.ttest_ind(yc[t], yc[c], equal_var=False)
        diff = yc[t].mean() - yc[c].mean()
    close(r["p_value"], float(res.pvalue), "%s p-value vs scipy Welch" % what)
    close(r["statistic"], float(res.statistic), "%s t vs scipy Welch" % what)
    close(r["diff"], float(diff), "%s diff" % what)
    close(r["mean_control"], float(yc[c].mean()), "%s mean_control" % what)
    return yc


values = {}
for name, (src, tcol, cuped, caps) in METRICS.items():
    values[name] = check_metric(name, caps)

# the data exercise every rule
raw = unit_values("cap.orders", False)
ck.check((raw < 0).mean() > 0.1, "net revenue is negative for %.0f%% of the units (refunds)" % (100 * (raw < 0).mean()))
ck.check((raw == 0).mean() > 0.1, "and 0 for %.0f%%" % (100 * (raw == 0).mean()))
for name in ("cap_lower_only", "cap_upper_only", "cap_both", "cap_absolute", "cap_mixed", "cap_upper_abs_only",
             "net_nonzero"):
    ck.check(abs(values[name].mean() - raw.mean()) > 0.05, "%s changes the mean" % name)
ck.check(values["cap_lower_only"].min() > raw.min() and values["cap_lower_only"].max() == raw.max(),
         "a lower cap alone raises the lowest values only")
ck.check(values["cap_upper_only"].max() < raw.max() and values["cap_upper_only"].min() == raw.min(),
         "an upper cap alone lowers the highest values only")
lo_m, hi_m = oracle_caps(raw, METRICS["cap_mixed"][3])
ck.check(lo_m == pct(raw, 0.01, False) and hi_m == 120.0 < pct(raw, 0.99, False),
         "cap_mixed: the 1st percentile is the lower cap (above cap_lower), cap_upper the upper one (below the 99th percentile)")
zi = unit_values("cap.purchases", False)
ck.check(0.88 < (zi == 0).mean() < 0.96, "purchases are 0 for %.1f%% of the units" % (100 * (zi == 0).mean()))
(cap_plain,), = q("SELECT DISTINCT cap FROM experiment.variant_stats WHERE experiment_id = 'cap' AND metric = 'zi_plain'")
ck.check(cap_plain == 0.0 and np.all(values["zi_plain"] == 0),
         "the 90th percentile of mostly-zero revenue is 0 and caps everything to 0 (cap %r)" % cap_plain)
ck.check(values["zi_nonzero"].max() > 50 and np.all(values["zi_nonzero"][zi == 0] == 0),
         "over the non-zero values the cap is real, and zeros stay 0")
ck.check(np.all(values["zi_floor"][zi == 0] == 0) and values["zi_floor"][zi != 0].min() == 20.0,
         "cap_lower above 0 with cap_ignore_zeros: zeros stay 0, the rest is at least the cap")
ck.check(pct(raw, 0.2, True) < 10 and set(np.unique(values["cap_crossed"])) == {0.0, 10.0},
         "cap_crossed: the percentile cap is below cap_lower, so every non-zero value is 10")
x_raw = unit_values("cap.orders", True)
ck.check(pct(x_raw, 0.98, False) != pct(raw, 0.98, False), "the pre-period has percentiles of its own")

# ---------------------------------------------------------------- changing the caps stays incremental
(mode0,), = q("SELECT mode FROM experiment.refreshes WHERE experiment_id = 'cap'")
ck.check(mode0 == "full", "the first refresh is full (%r)" % mode0)
NEW = {
    "cap_none": {"winsorize_lower": 0.1, "cap_upper": 200.0},
    "cap_both": {"winsorize_lower": 0.03, "winsorize": 0.9, "cap_ignore_zeros": True},
    "zi_plain": {"winsorize": 0.95, "cap_ignore_zeros": True, "cap_upper": 400.0},
    "cuped_both": {"winsorize_lower": 0.1, "cap_lower": -10.0, "cap_upper": 300.0},
}
for name, caps in NEW.items():
    cur.execute("UPDATE experiment.metrics SET winsorize_lower = %s, winsorize = %s, cap_lower = %s, cap_upper = %s, "
                "cap_ignore_zeros = %s WHERE name = %s",
                (caps.get("winsorize_lower"), caps.get("winsorize"), caps.get("cap_lower"), caps.get("cap_upper"),
                 caps.get("cap_ignore_zeros", False), name))
q("SELECT experiment.refresh('cap')")
md = q("SELECT mode, full_reason FROM experiment.refreshes WHERE experiment_id = 'cap'")[0]
ck.check(md == ("incremental", None), "a change of the capping columns keeps the refresh incremental: %r" % (md,))
for name, caps in NEW.items():
    check_metric(name, caps, " (changed)")
check_metric("cap_mixed", METRICS["cap_mixed"][3], " (unchanged)")

# ---------------------------------------------------------------- aa_test caps as refresh does
# a few metrics, so that aa_test() is quick; the pseudo-splits from the server's hashes
# (the same expression as aa_test(): share 0.5, seed 7)
SIMS, SEED = 40, 7
q("DELETE FROM experiment.experiment_metrics WHERE experiment_id = 'cap' AND metric NOT IN "
  "('cap_none', 'cap_mixed', 'zi_nonzero_both')")
aa = {r[0]: r for r in q("SELECT metric, method, n_simulations, false_positives, ks_statistic "
                         "FROM experiment.aa_test('cap', %s, %s)", (SIMS, SEED))}
rows = q("""SELECT u.unit_id, array_agg((((hashtextextended(u.unit_id, %s::bigint * 1000003 + s) %% 10000) + 10000) %% 10000)
                                        < 5000 ORDER BY s)
            FROM (SELECT DISTINCT unit_id FROM experiment.exposures WHERE experiment_id = 'cap') u,
                 generate_series(1, %s) s GROUP BY u.unit_id""", (SEED, SIMS))
split = np.zeros((SIMS, N), dtype=bool)
for u, flags in rows:
    split[:, ui[u]] = flags
caps_now = {"cap_none": NEW["cap_none"], "cap_mixed": METRICS["cap_mixed"][3],
            "zi_nonzero_both": METRICS["zi_nonzero_both"][3]}
for name, caps in caps_now.items():
    y, _, _ = oracle_capped(unit_values(METRICS[name][0], False), caps)
    ps = np.sort([stats.ttest_ind(y[~s], y[s], equal_var=False).pvalue for s in split])
    n = len(ps)
    ks = max(max(i / n - p, p - (i - 1) / n) for i, p in enumerate(ps, 1))
    r = aa.get(name)
    if not ck.check(r is not None and r[1] == "welch" and r[2] == SIMS, "aa_test %s: %r" % (name, r)):
        continue
    ck.check(r[3] == int((ps < ALPHA).sum()), "aa_test %s: %r false positives, want %d" % (name, r[3], (ps < ALPHA).sum()))
    close(r[4], ks, "aa_test %s KS statistic (capped as refresh caps)" % name)
    raw_y = unit_values(METRICS[name][0], False)
    ps_raw = np.sort([stats.ttest_ind(raw_y[~s], raw_y[s], equal_var=False).pvalue for s in split])
    ks_raw = max(max(i / n - p, p - (i - 1) / n) for i, p in enumerate(ps_raw, 1))
    ck.check(abs(ks_raw - ks) > 1e-6, "aa_test %s: the caps change its p-values (KS %r uncapped %r)" % (name, ks, ks_raw))

# experiment.exact_percentiles(), the caps' selection, against percentile_cont (the sort it
# replaces), value for value: random, duplicated, sorted and reversed values, one and two
# values, all equal, zeros (with and without ignore_zeros), NaN and infinities
FRACTIONS = [0.0, 1.0, 0.5, 0.999, 0.001, 0.25, 1.0 / 3.0, None]
cases = {
    "normal": rng.normal(size=5001) * 100,
    "duplicates": rng.integers(0, 5, 2000).astype(float),
    "sorted": np.arange(1000.0),
    "reversed": np.arange(1000.0)[::-1].copy(),
    "one": np.array([3.5]),
    "two": np.array([1.0, -2.0]),
    "equal": np.full(777, 2.25),
    "zeros": np.where(rng.random(3000) < 0.9, 0.0, rng.exponential(50, 3000)),
    "nonfinite": np.concatenate([rng.normal(size=500), [np.nan, np.inf, -np.inf, np.nan]]),
}
cur.execute("CREATE TEMP TABLE pv (x float8)")


def same(a, b):
    return (a is None and b is None) or (a is not None and b is not None and
                                         (a == b or (np.isnan(a) and np.isnan(b))))


for name, xs in cases.items():
    cur.execute("TRUNCATE pv")
    copy_rows("pv", ("x",), [(repr(float(x)) if np.isfinite(x) else ("NaN" if np.isnan(x) else
                                ("Infinity" if x > 0 else "-Infinity")),) for x in xs])
    for iz in (False, True):
        want = q("SELECT percentile_cont(%s::float8[]) WITHIN GROUP (ORDER BY x)" +
                 (" FILTER (WHERE x <> 0)" if iz else "") + " FROM pv", (FRACTIONS,))[0][0]
        got = q("SELECT experiment.exact_percentiles('SELECT x, x, x, x FROM pv', %s::float8[], %s, NULL)",
                (FRACTIONS, [iz] * 4))[0][0]
        want = want if want is not None else [None] * len(FRACTIONS)
        ck.check(got is not None and len(got) == len(FRACTIONS) and all(same(g, w) for g, w in zip(got, want)),
                 "exact_percentiles %s%s equals percentile_cont: %r against %r"
                 % (name, " without zeros" if iz else "", got, want))
# no value (NULL or, with ignore_zeros, only zeros): NULL percentiles
ck.check(q("SELECT experiment.exact_percentiles('SELECT NULL::float8, 0::float8', ARRAY[0.5, 0.9, 0.5, 0.9], "
           "ARRAY[false, true], NULL)")[0][0] == [None] * 4, "exact_percentiles of no value: NULLs")
# beyond max_values values in all: NULL (the caller sorts instead)
ck.check(q("SELECT experiment.exact_percentiles('SELECT x, x FROM pv', ARRAY[0.5, 0.9, 0.1, 0.2], NULL, 1007) IS NULL, "
           "experiment.exact_percentiles('SELECT x, x FROM pv', ARRAY[0.5, 0.9, 0.1, 0.2], NULL, 1008) IS NULL")[0]
         == (True, False), "exact_percentiles: NULL beyond max_values values (2 x 504 rows)")
for sql, code, what in [
        ("SELECT experiment.exact_percentiles('SELECT x FROM pv', ARRAY[0.5], NULL, NULL)", "22023", "an odd number of fractions"),
        ("SELECT experiment.exact_percentiles('SELECT x FROM pv', ARRAY[0.5, 1.5], NULL, NULL)", "22003", "a fraction above 1"),
        ("SELECT experiment.exact_percentiles('SELECT x, x FROM pv', ARRAY[0.5, 0.9], NULL, NULL)", "22023",
         "more columns than fraction pairs"),
        ("SELECT experiment.exact_percentiles('SELECT x::text FROM pv', ARRAY[0.5, 0.9], NULL, NULL)", "42804", "a text column"),
        ("SELECT experiment.exact_percentiles('SELECT x FROM pv', ARRAY[0.5, 0.9], ARRAY[true, false], NULL)", "22023",
         "ignore_zeros of another length")]:
    try:
        cur.execute(sql)
        ck.check(False, "exact_percentiles refuses %s" % what)
    except Exception as err:  # noqa: BLE001
        ck.check(getattr(err, "pgcode", None) == code, "exact_percentiles refuses %s with %s: %s" % (what, code, err))

# the caps beyond the selection's memory (experiment.refresh_memory = 16kB: work_mem 64kB,
# 4,096 values at 16 bytes; the capped columns here hold more) come from the sort, and are the same
capped_orders = sum(1 for (src, _, _, c) in METRICS.values()
                    if src == "cap.orders" and ("winsorize" in c or "winsorize_lower" in c))
ck.check(capped_orders * N > 4096, "the capped columns hold more than 4,096 values (%d x %d)" % (capped_orders, N))
before = q("SELECT metric, variant, cap, cap_lower FROM experiment.variant_stats WHERE experiment_id = 'cap' ORDER BY 1, 2")
cur.execute("SET experiment.refresh_memory = '16kB'")
cur.execute("SELECT experiment.refresh('cap', full => true)")
cur.execute("RESET experiment.refresh_memory")
after = q("SELECT metric, variant, cap, cap_lower FROM experiment.variant_stats WHERE experiment_id = 'cap' ORDER BY 1, 2")
ck.check(len(before) > 0 and before == after, "caps by the sort (16kB bound) equal the caps by selection")

conn.close()
ck.report()
