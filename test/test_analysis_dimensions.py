"""Dimension breakdowns end to end: experiment.dimensions -> the stored per-unit
values' dimension columns -> per-value moments and tests -> results_by_dimension,
srm_by_dimension and health.

Generated data with a known effect in one segment (client 'ios'), three
dimensions (the exposure's client column, its app_version column with top_n 2,
and the attributes key 'country' with top_n 3 and caps per value), units
whose later exposures carry other attribute values (the first exposure's
count), units without a value ((none)), units in both variants (excluded),
and a segment whose treatment units were lost (an imbalance).

Everything is recomputed here from the raw rows with numpy, independently of
the extension: enrollment and first exposures, windows, zero-filled per-unit
values, the pooled or per-value percentile caps, the top-N values (most units,
ties by value) and (other); per value the test the refresh chooses (Welch:
scipy.stats.ttest_ind; proportion: statsmodels proportions_ztest; ratio: the
delta method in numpy; CUPED: Welch on y - theta (x - mean x), theta over both
arms) to 1e-9 relative; the adjusted p-values against statsmodels
multipletests (Holm) within each (metric, dimension) family; SRM per value
against scipy.stats.chisquare; the same units under a sequential analysis
against the always-valid confidence sequence recomputed in numpy; with
stratify_by, the overall post-stratified Welch and proportion tests recomputed
in numpy, the ratio and CUPED ones equal to poststrat_ttest of the strata's
moments. Then an incremental refresh after new units,
new events and earlier exposures with other values equals a full one, a new
dimension makes the refresh full and a new top_n does not, and a full refresh
reads each source as often with dimensions as without (pg_stat_user_tables).
"""
import datetime as dt
import io
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from exptest import Checker, fresh_db  # noqa: E402

import numpy as np  # noqa: E402
from scipy import stats  # noqa: E402
from statsmodels.stats.multitest import multipletests  # noqa: E402
from statsmodels.stats.proportion import proportions_ztest  # noqa: E402

DAY = 86400
START = dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc)
END_S = 21 * DAY
ALPHA = 0.05
REL = 1e-9

ck = Checker("test_analysis_dimensions")
rng = np.random.default_rng(20251201)
conn = fresh_db("exp_analysis_dimensions")
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
    return ck.close(got, want, what, rel=rel, abs_tol=1e-13)


# ---------------------------------------------------------------- the data
CLIENTS = ["ios", "android", "web", None]
CLIENT_P = [0.35, 0.35, 0.2, 0.1]
COUNTRIES = ["SG", "MY", "TH", "ID", "VN", "PH"]
COUNTRY_P = [0.3, 0.2, 0.2, 0.1, 0.1, 0.1]      # ID, VN, PH tie in expectation: (other) and ties by value
VERSIONS = ["1.0", "1.1", "2.0"]

units = {}        # unit -> list of exposures (variant, second, client, app_version, country)


def new_units(prefix, n, t_lo, t_hi):
    made = []
    for i in range(n):
        u = "%s%05d" % (prefix, i)
        v = "treatment" if rng.random() < 0.5 else "control"
        cl = CLIENTS[rng.choice(4, p=CLIENT_P)]
        co = COUNTRIES[rng.choice(6, p=COUNTRY_P)]
        if rng.random() < 0.05:
            co = None                               # no country attribute: (none)
        ver = VERSIONS[int(rng.integers(0, 3))]
        t0 = int(rng.integers(t_lo, t_hi))
        # the imbalance: most treatment units in TH were lost
        if co == "TH" and v == "treatment" and rng.random() < 0.4:
            continue
        exps = [(v, t0, cl, ver, co)]
        for _ in range(int(rng.integers(0, 3))):
            # later exposures, sometimes from another client or country: the first one counts
            exps.append((v, t0 + int(rng.integers(60, 2 * DAY)),
                         CLIENTS[rng.choice(4, p=CLIENT_P)] if rng.random() < 0.3 else cl, ver,
                         COUNTRIES[rng.choice(6, p=COUNTRY_P)] if rng.random() < 0.3 else co))
        units[u] = exps
        made.append(u)
    return made


base_units = new_units("u", 6000, 0, 10 * DAY)
for u in list(units)[:30]:                          # in both variants: excluded
    v, t0 = units[u][0][0], units[u][0][1]
    units[u].append(("control" if v == "treatment" else "treatment", t0 + 3600, "web", "1.0", "SG"))

orders = []       # (unit, second, amount)


def add_orders(us, t_from=None):
    for u in us:
        v, t0, cl = units[u][0][0], units[u][0][1], units[u][0][2]
        a = rng.random()
        lift = 1.0 if (v == "treatment" and cl == "ios") else 0.0      # the effect: iOS only
        for _ in range(rng.poisson(0.8 * a)):                            # pre-period
            s = t0 - int(rng.integers(1, 20 * DAY))
            if t_from is None or s >= t_from:
                orders.append((u, s, round(15 + 30 * a + rng.normal(0, 4), 2)))
        for _ in range(rng.poisson(0.5 + 0.8 * a + 0.6 * lift)):
            amt = round(15 + 30 * a + 6 * lift + rng.normal(0, 4), 2)
            if rng.random() < 0.01:
                amt = 3000.0                                             # whales: the caps matter
            s = t0 + int(rng.integers(-DAY // 4, 9 * DAY))
            if t_from is None or s >= t_from:
                orders.append((u, s, amt))


add_orders(base_units)

cur.execute("CREATE SCHEMA dm")
cur.execute("CREATE TABLE dm.orders (user_id text, ordered_at timestamptz, amount float8)")
copy_rows("dm.orders", ("user_id", "ordered_at", "amount"), [(u, ts(s), a) for u, s, a in orders])


def exposure_rows(us, only_new_after=None):
    rows = []
    for u in us:
        for k, (v, s, cl, ver, co) in enumerate(units[u]):
            if only_new_after is not None and k < only_new_after.get(u, 0):
                continue
            attrs = "{}" if co is None else '{"country": "%s", "plan": 1}' % co
            rows.append(("dims", u, v, ts(s), cl, ver, attrs))
    return rows


cur.execute("""INSERT INTO experiment.experiments (id, name, status, start_at, end_at, alpha, analysis, correction)
               VALUES ('dims', 'dimensions', 'draft', %s, %s, %s, 'fixed', 'holm')""", (ts(-DAY), ts(END_S), ALPHA))
cur.execute("""INSERT INTO experiment.variants (experiment_id, name, allocation, is_control) VALUES
               ('dims', 'control', 0.5, true), ('dims', 'treatment', 0.5, false)""")
METRICS = {
    # name: (value col, aggregation, kind, window, winsorize, lookback)
    "d_conv": (None, "any", "proportion", 7 * DAY, None, None),
    "d_revenue": ("amount", "sum", "mean", None, 0.95, None),
    "d_orders": (None, "count", "mean", None, None, None),
    "d_revenue_cuped": ("amount", "sum", "mean", 7 * DAY, None, 14 * DAY),
}
for name, (vcol, agg, kind, window, wins, lookback) in METRICS.items():
    cur.execute("""INSERT INTO experiment.metrics (name, source, unit_column, time_column, value_column,
                   aggregation, kind, "window", winsorize, cuped_lookback)
                   VALUES (%s, 'dm.orders', 'user_id', 'ordered_at', %s, %s, %s, make_interval(secs => %s), %s,
                           make_interval(secs => %s))""", (name, vcol, agg, kind, window, wins, lookback))
cur.execute("""INSERT INTO experiment.metrics (name, kind, numerator, denominator, cuped_lookback)
               VALUES ('d_aov', 'ratio', 'd_revenue', 'd_orders', NULL)""")
ROLES = {"d_conv": "primary", "d_revenue": "secondary", "d_orders": "guardrail", "d_aov": "secondary",
         "d_revenue_cuped": "secondary"}
for m, role in ROLES.items():
    cur.execute("INSERT INTO experiment.experiment_metrics (experiment_id, metric, role) VALUES ('dims', %s, %s)",
                (m, role))
DIMS = {
    # name: (attribute, key, top_n, caps_per_value)
    "client": ("client", None, 10, False),
    "version": ("app_version", None, 2, False),
    "country": ("attributes", "country", 3, True),
}
for name, (attr, key, top_n, cpv) in DIMS.items():
    cur.execute("""INSERT INTO experiment.dimensions (experiment_id, name, attribute, attribute_key, top_n, caps_per_value)
                   VALUES ('dims', %s, %s, %s, %s, %s)""", (name, attr, key, top_n, cpv))
cur.execute("UPDATE experiment.experiments SET status = 'running' WHERE id = 'dims'")
copy_rows("experiment.exposures", ("experiment_id", "unit_id", "variant", "exposed_at", "client", "app_version",
                                   "attributes"), exposure_rows(list(units)))
exposed_count = {u: len(e) for u, e in units.items()}

q("SELECT experiment.refresh('dims')")

# ---------------------------------------------------------------- a second round: incremental
# new units, new events, and earlier exposures of known units with other values (their
# first exposure, and so their dimension values and windows, change)
(latest,), = q("SELECT max(ordered_at) FROM dm.orders")
latest_s = int((latest - START).total_seconds())
late_units = new_units("n", 800, 9 * DAY, 11 * DAY)
moved = [u for u in base_units[100:250] if len({v for v, *_ in units[u]}) == 1]
for u in moved:
    v, t0, cl, ver, co = units[u][0]
    units[u].append((v, t0 - int(rng.integers(3600, DAY)), "web" if cl != "web" else "ios", "2.0", "VN"))
copy_rows("experiment.exposures", ("experiment_id", "unit_id", "variant", "exposed_at", "client", "app_version",
                                   "attributes"), exposure_rows(late_units + moved, exposed_count))
n_before = len(orders)
add_orders(late_units)
for u in base_units[:3000]:          # new events of known units, after the latest event time
    if rng.random() < 0.2:
        orders.append((u, latest_s + int(rng.integers(0, 3600)), round(float(rng.normal(30, 5)), 2)))
copy_rows("dm.orders", ("user_id", "ordered_at", "amount"), [(u, ts(s), a) for u, s, a in orders[n_before:]])
q("SELECT experiment.refresh('dims')")
(mode,), = q("SELECT mode FROM experiment.refreshes WHERE experiment_id = 'dims'")
ck.check(mode == "incremental", "the second refresh is incremental (%r)" % mode)


def snapshot():
    out = {}
    for table, key in (("dimension_enrollment", "dimension, value, variant"),
                       ("dimension_stats", "dimension, value, metric, variant"),
                       ("dimension_results", "dimension, value, metric, variant")):
        cur.execute("SELECT to_jsonb(x) - 'refreshed_at' FROM experiment.%s x WHERE experiment_id = 'dims' ORDER BY %s"
                    % (table, key))
        out[table] = [r[0] for r in cur.fetchall()]
    return out


def same(a, b, what, rel=1e-12):
    if isinstance(a, dict) and isinstance(b, dict):
        if sorted(a) != sorted(b):
            return False, "%s: keys %r vs %r" % (what, sorted(a), sorted(b))
        for k in sorted(a):
            ok, why = same(a[k], b[k], what + "." + k, rel)
            if not ok:
                return ok, why
        return True, ""
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return False, "%s: %d vs %d elements" % (what, len(a), len(b))
        for k, (x, y) in enumerate(zip(a, b)):
            ok, why = same(x, y, "%s[%d]" % (what, k), rel)
            if not ok:
                return ok, why
        return True, ""
    if isinstance(a, str) and isinstance(b, str) and a.startswith("{") and b.startswith("{"):
        import json
        return same(json.loads(a), json.loads(b), what, rel)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return abs(a - b) <= rel * max(abs(a), abs(b)) + 1e-12, "%s: %r vs %r" % (what, a, b)
    return a == b, "%s: %r vs %r" % (what, a, b)


incremental = snapshot()
cur.execute("BEGIN")
q("SELECT experiment.refresh('dims', full => true)")
full = snapshot()
cur.execute("ROLLBACK")
for table in incremental:
    ok, why = same(incremental[table], full[table], table)
    ck.check(ok and len(incremental[table]) > 0, "incremental equals full for %s (%d rows): %s"
             % (table, len(incremental[table]), why))

# ---------------------------------------------------------------- the oracle
first = {}
for u, exps in units.items():
    live = [e for e in exps if e[1] < END_S]
    if not live or len({e[0] for e in live}) > 1:
        continue
    first[u] = min(live, key=lambda e: e[1])
enrolled = sorted(first)
ui = {u: k for k, u in enumerate(enrolled)}
uvar = np.array([first[u][0] for u in enrolled])
ut0 = np.array([first[u][1] for u in enrolled], dtype=np.int64)
is_t = uvar == "treatment"
NONE = "(none)"
raw_dim = {
    "client": np.array([first[u][2] or NONE for u in enrolled], dtype=object),
    "version": np.array([first[u][3] or NONE for u in enrolled], dtype=object),
    "country": np.array([first[u][4] or NONE for u in enrolled], dtype=object),
}
ck.check(len(moved) > 100 and all(raw_dim["client"][ui[u]] in ("web", "ios") for u in moved),
         "the moved units' values are those of their new first exposure")


def unit_values(name, pre=False):
    vcol, agg, kind, window, wins, lookback = METRICS[name]
    vals = {}
    for u, s, amount in orders:
        k = ui.get(u)
        if k is None:
            continue
        t = ut0[k]
        ok = (t - lookback <= s < t) if pre else (s >= t and (window is None or s < t + window) and s < END_S)
        if ok:
            vals.setdefault(k, []).append(amount if vcol else 1.0)
    out = np.zeros(len(enrolled))
    for k, xs in vals.items():
        out[k] = sum(xs) if agg == "sum" else len(xs) if agg == "count" else float(any(x != 0 for x in xs))
    return out


Y = {m: unit_values(m) for m in METRICS}
X_PRE = unit_values("d_revenue_cuped", pre=True)


def labels(dim):
    raw = raw_dim[dim]
    vals, counts = np.unique(raw, return_counts=True)
    ranked = sorted(zip(vals, counts), key=lambda vc: (-vc[1], vc[0].encode()))
    top = {v for v, _ in ranked[:DIMS[dim][2]]}
    return np.array([v if v in top else "(other)" for v in raw], dtype=object), ranked


def capped(name, y, mask):
    wins = METRICS[name][4]
    if wins is None:
        return y, None
    cap = float(np.quantile(y[mask], wins))
    return np.minimum(y, cap), cap


def welch(yc, yt):
    r = stats.ttest_ind(yt, yc, equal_var=False)
    return float(r.statistic), float(r.pvalue)


def ratio(nc, dc, nt, dt_):
    arm = []
    for n_, d_ in ((nc, dc), (nt, dt_)):
        mn, md = n_.mean(), d_.mean()
        cv = np.cov(n_, d_)
        v = cv[0, 0] / md ** 2 + cv[1, 1] * mn ** 2 / md ** 4 - 2 * cv[0, 1] * mn / md ** 3
        arm.append((mn / md, v / len(n_), len(n_)))
    (rc, sc, kc), (rt, st, kt) = arm
    dfw = (sc + st) ** 2 / (sc ** 2 / (kc - 1) + st ** 2 / (kt - 1))
    tstat = (rt - rc) / np.sqrt(sc + st)
    return rc, rt, float(tstat), float(2 * stats.t.sf(abs(tstat), dfw))


def cuped(y, x, c, t):
    yy, xx = y[c | t], x[c | t]
    theta = np.cov(xx, yy)[0, 1] / np.var(xx, ddof=1)
    adj = y - theta * (x - xx.mean())
    return welch(adj[c], adj[t]) + (float(adj[t].mean() - adj[c].mean()),)


cur.execute("SELECT * FROM experiment.results_by_dimension WHERE experiment_id = 'dims'")
cols = [d[0] for d in cur.description]
got = {(r["dimension"], r["value"], r["metric"], r["variant"]): r for r in (dict(zip(cols, x)) for x in cur.fetchall())}
cur.execute("SELECT * FROM experiment.results LIMIT 0")
rcols = [(d[0], d[1]) for d in cur.description]
cur.execute("SELECT * FROM experiment.results_by_dimension LIMIT 0")
dcols = [(d[0], d[1]) for d in cur.description]
ck.check([c for c in dcols if c[0] not in ("dimension", "value")] == rcols and len(dcols) == len(rcols) + 2,
         "results_by_dimension has the typed columns of results plus dimension and value")

enr = {(d, v, var): n for d, v, var, n in q("""SELECT dimension, value, variant, units FROM experiment.dimension_enrollment
                                               WHERE experiment_id = 'dims'""")}
caps = {(d, v, m, var): (c, n) for d, v, m, var, c, n in q("""SELECT dimension, value, metric, variant, cap, units
                                                               FROM experiment.dimension_stats WHERE experiment_id = 'dims'""")}
srm = {(d, v): (p, ok) for d, v, p, ok in q("""SELECT DISTINCT dimension, value, p_value, ok FROM experiment.srm_by_dimension
                                               WHERE experiment_id = 'dims'""")}
n_tests = 0
for dim in DIMS:
    lab, ranked = labels(dim)
    values = sorted(set(lab))
    want_top = [v for v, _ in ranked[:DIMS[dim][2]]]
    ck.check(sorted({v for d, v, _ in enr if d == dim}) == values,
             "%s: values %r, want %r" % (dim, sorted({v for d, v, _ in enr if d == dim}), values))
    if dim == "version":
        ck.check(values == sorted(want_top + ["(other)"]) and len(want_top) == 2, "version: top 2 and (other)")
    if dim == "country":
        ck.check("(other)" in values and NONE not in values and len(values) == 4,
                 "country: top 3 of %r and (other) (the rare (none) among the others)" % ranked)
    for v in values:
        for var in ("control", "treatment"):
            want_n = int(((lab == v) & (uvar == var)).sum())
            ck.check(enr.get((dim, v, var)) == want_n, "%s=%s %s: %r units, want %d" % (dim, v, var, enr.get((dim, v, var)), want_n))
        # SRM of the value against the 50/50 design
        obs = [int(((lab == v) & ~is_t).sum()), int(((lab == v) & is_t).sum())]
        close(srm[(dim, v)][0], float(stats.chisquare(obs).pvalue), "%s=%s SRM p" % (dim, v))
        ck.check(srm[(dim, v)][1] == (stats.chisquare(obs).pvalue >= 0.001), "%s=%s SRM flag" % (dim, v))
    for metric in ROLES:
        pvals = []
        for v in values:
            seg = lab == v
            c, t = seg & ~is_t, seg & is_t
            r = got.get((dim, v, metric, "treatment"))
            if not ck.check(r is not None, "%s=%s %s: no result" % (dim, v, metric)):
                continue
            cap_mask = seg if DIMS[dim][3] else np.ones(len(enrolled), bool)
            what = "%s=%s %s" % (dim, v, metric)
            if metric == "d_aov":
                num, cap = capped("d_revenue", Y["d_revenue"], cap_mask)
                rc, rt, tstat, p = ratio(num[c], Y["d_orders"][c], num[t], Y["d_orders"][t])
                ck.check(r["method"] == "ratio", "%s method %r" % (what, r["method"]))
                close(r["mean_control"], rc, what + " control ratio")
                close(r["mean_treatment"], rt, what + " treatment ratio")
            else:
                y, cap = capped(metric, Y[metric], cap_mask)
                if metric == "d_conv":
                    xc, xt = int(y[c].sum()), int(y[t].sum())
                    z, p = proportions_ztest([xt, xc], [int(t.sum()), int(c.sum())])
                    tstat, p = float(z), float(p)
                    ck.check(r["method"] == "prop_ztest", "%s method %r" % (what, r["method"]))
                elif metric == "d_revenue_cuped":
                    tstat, p, diff = cuped(y, X_PRE, c, t)
                    ck.check(r["method"] == "cuped", "%s method %r" % (what, r["method"]))
                    close(r["diff"], diff, what + " CUPED-adjusted diff")
                else:
                    tstat, p = welch(y[c], y[t])
                    ck.check(r["method"] == "welch", "%s method %r" % (what, r["method"]))
                close(r["mean_control"], float(y[c].mean()), what + " control mean")
                close(r["mean_treatment"], float(y[t].mean()), what + " treatment mean")
                if metric != "d_revenue_cuped":
                    close(r["diff"], float(y[t].mean() - y[c].mean()), what + " diff")
                if cap is not None:
                    close(caps[(dim, v, metric, "control")][0], cap, what + " cap")
            ck.check((r["n_control"], r["n_treatment"]) == (int(c.sum()), int(t.sum())),
                     "%s: n %r/%r" % (what, r["n_control"], r["n_treatment"]))
            close(r["statistic"], tstat, what + " statistic")
            close(r["p_value"], p, what + " p-value")
            pvals.append((v, r))
            n_tests += 1
        # Holm within (metric, dimension), across values (one treatment arm here)
        adj = multipletests([r["p_value"] for _, r in pvals], method="holm")[1]
        for (v, r), a in zip(pvals, adj):
            close(r["p_value_adjusted"], float(a), "%s=%s %s Holm-adjusted p" % (dim, v, metric))
            ck.check(r["significant"] == (a < ALPHA), "%s=%s %s significant" % (dim, v, metric))

ck.check(n_tests == len(ROLES) * (4 + 3 + 4), "tests checked: %d" % n_tests)
# the caps differ between values of country (computed within each), not within client
cc = {v: caps[("country", v, "d_revenue", "control")][0] for v in ("SG", "MY", "(other)")}
ck.check(len(set(cc.values())) == 3, "country caps per value differ: %r" % cc)
cl = {caps[("client", v, "d_revenue", "control")][0] for v in ("ios", "android", "web")}
(pooled,), = q("SELECT cap FROM experiment.variant_stats WHERE experiment_id = 'dims' AND metric = 'd_revenue' AND variant = 'control'")
ck.check(cl == {pooled}, "client caps are the pooled cap %r: %r" % (pooled, cl))
# the known effect: iOS significant after the correction, android and web not
ios = got[("client", "ios", "d_conv", "treatment")]
ck.check(ios["significant"] and ios["better"], "the iOS effect is found (p %r adjusted %r)" % (ios["p_value"], ios["p_value_adjusted"]))
for v in ("android", "web"):
    ck.check(not got[("client", v, "d_conv", "treatment")]["significant"], "no effect found on %s" % v)
# SRM: TH (treatment units lost) flagged, the balanced values are not
ck.check(srm[("country", "TH")][1] is False, "TH fails its SRM check (p %r)" % srm[("country", "TH")][0])
# (the other dimensions' values hold TH's units too, so they share its imbalance)
ck.check(srm[("country", "SG")][1] is True and srm[("country", "MY")][1] is True,
         "balanced values pass: %r" % {k: v for k, v in srm.items() if k in (("country", "SG"), ("country", "MY"))})
(h_ok, h_list), = q("SELECT dimension_srm_ok, dimension_srm_imbalanced FROM experiment.health WHERE experiment_id = 'dims'")
ck.check(h_ok is False and {(x["dimension"], x["value"]) for x in h_list} == {k for k, (p, ok) in srm.items() if ok is False}
         and ("country", "TH") in {(x["dimension"], x["value"]) for x in h_list},
         "health flags the imbalanced values: %r" % h_list)

(text,), = q("SELECT experiment.readout('dims')")
warn = [ln for ln in text.split("\n") if ln.startswith("Warning: dimensional imbalance")]
ck.check(len(warn) == 1 and "country = TH (SRM p < 0.001)" in warn[0] and "country = SG" not in warn[0],
         "the readout warns of the imbalanced value: %r" % warn)

# a reader (experiment_reader: setup_roles() grants it the new tables and views) that may
# not read the source sees no breakdown of its metrics
cur.execute("DROP ROLE IF EXISTS dims_outsider")
cur.execute("CREATE ROLE dims_outsider")
q("SELECT * FROM experiment.setup_roles()")
cur.execute("GRANT experiment_reader TO dims_outsider")
cur.execute("SET ROLE dims_outsider")
seen = q("SELECT (SELECT count(*) FROM experiment.results_by_dimension), (SELECT count(*) FROM experiment.dimension_results),"
         " (SELECT count(*) FROM experiment.dimension_stats)")[0]
cur.execute("RESET ROLE")
cur.execute("GRANT SELECT ON dm.orders TO dims_outsider")
cur.execute("GRANT USAGE ON SCHEMA dm TO dims_outsider")
cur.execute("SET ROLE dims_outsider")
seen_after = q("SELECT (SELECT count(*) FROM experiment.results_by_dimension), (SELECT count(*) FROM experiment.dimension_results)")[0]
cur.execute("RESET ROLE")
ck.check(seen == (0, 0, 0) and seen_after == (len(got), len(got)),
         "row-level security: %r rows unseen without SELECT on the source, %r with it (%d in all)" % (seen, seen_after, len(got)))
cur.execute("REVOKE ALL ON dm.orders FROM dims_outsider")
cur.execute("REVOKE USAGE ON SCHEMA dm FROM dims_outsider")
cur.execute("DROP ROLE dims_outsider")

# ---------------------------------------------------------------- post-stratification
# stratify_by: the overall tests are experiment.poststrat_ttest of the strata's moments; the
# post-stratified Welch and proportion tests are recomputed here from the per-unit values
# (doc/statistics.md, "Post-stratification": weights n_k/N, the variance given the strata's
# counts plus the weights' term less the strata's own noise in it (at least 0),
# Welch-Satterthwaite df over the arm-strata; the proportion's statistic with the pooled null
# standard error)


def poststrat(y, lab, c, t, prop=False):
    N = int((c | t).sum())
    parts = []
    for v in sorted(set(lab[c | t])):
        yc, yt = y[c & (lab == v)], y[t & (lab == v)]
        parts.append(((len(yc) + len(yt)) / N, yc, yt))
    D = [yt.mean() - yc.mean() for _, yc, yt in parts]
    diff = sum(w * d for (w, _, _), d in zip(parts, D))
    mean_c = sum(w * yc.mean() for w, yc, _ in parts)
    if prop:
        v_arm = [(w * w * yc.mean() * (1 - yc.mean()) / len(yc), w * w * yt.mean() * (1 - yt.mean()) / len(yt))
                 for w, yc, yt in parts]
    else:
        v_arm = [(w * w * yc.var(ddof=1) / len(yc), w * w * yt.var(ddof=1) / len(yt)) for w, yc, yt in parts]
    # the weights' term less the strata's own noise in it, at least 0
    noise = sum((1 - w) / (len(yc) + len(yt)) * (a + b) for (w, yc, yt), (a, b) in zip(parts, v_arm))
    var = sum(a + b for a, b in v_arm) + max(0.0, sum(w * (d - diff) ** 2 for (w, _, _), d in zip(parts, D)) / N - noise)
    if prop:
        se0 = np.sqrt(sum(w * w * np.concatenate([yc, yt]).mean() * (1 - np.concatenate([yc, yt]).mean())
                          * (1 / len(yc) + 1 / len(yt)) for w, yc, yt in parts))
        z = diff / se0
        q_ = stats.norm.ppf(1 - ALPHA / 2)
        return dict(diff=diff, mean_control=mean_c, statistic=z, p_value=2 * stats.norm.sf(abs(z)),
                    diff_lower=diff - q_ * np.sqrt(var), diff_upper=diff + q_ * np.sqrt(var))
    df = var ** 2 / sum(a * a / (len(yc) - 1) + b * b / (len(yt) - 1) for (a, b), (_, yc, yt) in zip(v_arm, parts))
    tstat = diff / np.sqrt(var)
    q_ = stats.t.ppf(1 - ALPHA / 2, df)
    return dict(diff=diff, mean_control=mean_c, statistic=tstat, df=df, p_value=2 * stats.t.sf(abs(tstat), df),
                diff_lower=diff - q_ * np.sqrt(var), diff_upper=diff + q_ * np.sqrt(var))


def overall():
    cur.execute("SELECT * FROM experiment.results WHERE experiment_id = 'dims'")
    cols = [d[0] for d in cur.description]
    return {r["metric"]: r for r in (dict(zip(cols, x)) for x in cur.fetchall())}


plain = overall()
c_all, t_all = ~is_t, is_t
pooled_y = {m: capped(m, Y[m], np.ones(len(enrolled), bool))[0] for m in ("d_revenue", "d_orders", "d_conv")}
for dim in ("client", "country"):      # (country's caps are per value: the strata use the pooled ones)
    cur.execute("UPDATE experiment.experiments SET stratify_by = %s WHERE id = 'dims'", (dim,))
    q("SELECT experiment.refresh('dims')")
    strat = overall()
    lab, _ = labels(dim)
    for metric in ("d_revenue", "d_orders", "d_conv"):
        r = strat[metric]
        want = poststrat(pooled_y[metric], lab, c_all, t_all, prop=(metric == "d_conv"))
        ck.check(r["stratified_by"] == dim and r["method"] == plain[metric]["method"],
                 "%s stratified by %s: %r, method %r" % (metric, dim, r["stratified_by"], r["method"]))
        for col in want:
            close(r[col], float(want[col]), "%s post-stratified by %s: %s" % (metric, dim, col))
        ck.check(abs(r["p_value"] - plain[metric]["p_value"]) > 1e-9 * plain[metric]["p_value"],
                 "%s: stratification changes the p-value" % metric)
    # the ratio and CUPED metrics: poststrat_ttest of the strata's moments of every value (the
    # pooled caps), aligned by value, in the method of the unstratified test
    for metric in ("d_aov", "d_revenue_cuped"):
        (same_test,), = q("""
          WITH s AS (SELECT value, variant, CASE WHEN %s = 'cuped' THEN cuped_moments ELSE moments END AS m
                     FROM experiment.dimension_stats WHERE experiment_id = 'dims' AND dimension = %s AND metric = %s)
          SELECT (experiment.poststrat_ttest(%s, array_agg(c.m ORDER BY v.value COLLATE "C"),
                                             array_agg(t.m ORDER BY v.value COLLATE "C"), %s, 'two-sided', NULL)).p_value
          FROM (SELECT DISTINCT value FROM s) v
          LEFT JOIN s c ON c.value = v.value AND c.variant = 'control'
          LEFT JOIN s t ON t.value = v.value AND t.variant = 'treatment'""",
                           (strat[metric]["method"], dim, metric, strat[metric]["method"], ALPHA))
        if dim == "client":
            close(strat[metric]["p_value"], same_test, "%s stratified by client: poststrat_ttest of the strata" % metric)
        ck.check(strat[metric]["stratified_by"] == dim, "%s stratified_by %r" % (metric, strat[metric]["stratified_by"]))
    (text,), = q("SELECT experiment.readout('dims')")
    line = [ln for ln in text.split("\n") if ln.startswith("Analysis:")]
    ck.check(len(line) == 1 and line[0].endswith(", post-stratified by %s" % dim), "the readout says so: %r" % line)
cur.execute("UPDATE experiment.experiments SET stratify_by = NULL WHERE id = 'dims'")
q("SELECT experiment.refresh('dims')")
back = overall()
ck.check(all(back[m]["stratified_by"] is None and abs(back[m]["p_value"] - plain[m]["p_value"]) <= 1e-12 * plain[m]["p_value"]
             for m in plain),
         "stratify_by NULL: the unstratified tests again: %r" % [(back[m]["stratified_by"], back[m]["p_value"], plain[m]["p_value"])
                                                             for m in plain])

# ---------------------------------------------------------------- a sequential analysis per value
# the same units in an experiment with a sequential analysis (N* = 8000): each value's Welch
# test is the always-valid confidence sequence of doc/statistics.md ("Inference"), recomputed
# here from the per-unit values
cur.execute("""INSERT INTO experiment.experiments (id, status, start_at, end_at, alpha, analysis, sequential_tuning)
               VALUES ('dims-seq', 'draft', %s, %s, %s, 'sequential', 8000)""", (ts(-DAY), ts(END_S), ALPHA))
cur.execute("""INSERT INTO experiment.variants (experiment_id, name, allocation, is_control) VALUES
               ('dims-seq', 'control', 0.5, true), ('dims-seq', 'treatment', 0.5, false)""")
cur.execute("INSERT INTO experiment.experiment_metrics (experiment_id, metric, role) VALUES ('dims-seq', 'd_orders', 'primary')")
cur.execute("INSERT INTO experiment.dimensions (experiment_id, name, attribute) VALUES ('dims-seq', 'client', 'client')")
cur.execute("UPDATE experiment.experiments SET status = 'running' WHERE id = 'dims-seq'")
cur.execute("""INSERT INTO experiment.exposures (experiment_id, unit_id, variant, exposed_at, client, app_version, attributes)
               SELECT 'dims-seq', unit_id, variant, exposed_at, client, app_version, attributes
               FROM experiment.exposures WHERE experiment_id = 'dims'""")
q("SELECT experiment.refresh('dims-seq')")
seq = {v: (lo, hi, p) for v, lo, hi, p in q("""SELECT value, diff_lower, diff_upper, p_value FROM experiment.results_by_dimension
                                               WHERE experiment_id = 'dims-seq'""")}
lab, _ = labels("client")
rho = np.sqrt((-2 * np.log(ALPHA) + np.log(-2 * np.log(ALPHA) + 1)) / 8000)
for v in sorted(set(lab)):
    yc, yt = Y["d_orders"][(lab == v) & ~is_t], Y["d_orders"][(lab == v) & is_t]
    n = len(yc) + len(yt)
    d = yt.mean() - yc.mean()
    se = np.sqrt(yc.var(ddof=1) / len(yc) + yt.var(ddof=1) / len(yt))
    s2 = se * se * n
    half = np.sqrt(s2 * 2 * (n * rho ** 2 + 1) * np.log(np.sqrt(n * rho ** 2 + 1) / ALPHA) / (n * n * rho ** 2))
    e_val = np.exp(rho ** 2 * (d * d * n / (se * se)) / (2 * (n * rho ** 2 + 1))) / np.sqrt(n * rho ** 2 + 1)
    lo, hi, p = seq.get(v, (None, None, None))
    close(lo, float(d - half), "sequential client=%s diff_lower" % v)
    close(hi, float(d + half), "sequential client=%s diff_upper" % v)
    close(p, float(min(1.0, 1 / e_val)), "sequential client=%s always-valid p" % v)

# ---------------------------------------------------------------- definition changes
cur.execute("UPDATE experiment.dimensions SET top_n = 4 WHERE experiment_id = 'dims' AND name = 'country'")
q("SELECT experiment.refresh('dims')")
(mode, reason), = q("SELECT mode, full_reason FROM experiment.refreshes WHERE experiment_id = 'dims'")
ck.check(mode == "incremental", "a new top_n needs no full refresh (%r, %r)" % (mode, reason))
(nv,), = q("SELECT count(DISTINCT value) FROM experiment.dimension_enrollment WHERE experiment_id = 'dims' AND dimension = 'country'")
ck.check(nv == 5, "top_n 4: 4 values and (other), got %d" % nv)
cur.execute("""INSERT INTO experiment.dimensions (experiment_id, name, attribute, attribute_key)
               VALUES ('dims', 'plan', 'attributes', 'plan')""")
q("SELECT experiment.refresh('dims')")
(mode, reason), = q("SELECT mode, full_reason FROM experiment.refreshes WHERE experiment_id = 'dims'")
ck.check(mode == "full" and "changed" in reason, "a new dimension makes the refresh full (%r, %r)" % (mode, reason))
plan = dict(q("""SELECT value, sum(units)::int FROM experiment.dimension_enrollment WHERE experiment_id = 'dims'
                 AND dimension = 'plan' GROUP BY value"""))
ck.check(plan == {"1": int((raw_dim["country"] != NONE).sum()), NONE: int((raw_dim["country"] == NONE).sum())},
         "a numeric attribute as text, no attribute as (none): %r" % plan)
cur.execute("DELETE FROM experiment.dimensions WHERE experiment_id = 'dims' AND name = 'plan'")
(left,), = q("SELECT count(*) FROM experiment.dimension_results WHERE experiment_id = 'dims' AND dimension = 'plan'")
ck.check(left == 0, "a deleted dimension takes its results with it")

# ---------------------------------------------------------------- one scan of the source
# a full refresh reads dm.orders as often with three dimensions as without any: the
# breakdowns read the stored per-unit values, not the source


def seq_scans(rel):
    q("SELECT pg_stat_force_next_flush()")
    cur.execute("SELECT pg_stat_clear_snapshot()")
    (n,), = q("SELECT seq_scan FROM pg_stat_user_tables WHERE relid = %s::regclass", (rel,))
    return n


def scans_of_full_refresh():
    (uv,), = q("SELECT relation FROM experiment.unit_value_tables WHERE experiment_id = 'dims'")
    before = seq_scans("dm.orders")
    q("SELECT experiment.refresh('dims', full => true)")
    after = seq_scans("dm.orders")
    (uv,), = q("SELECT relation FROM experiment.unit_value_tables WHERE experiment_id = 'dims'")
    return after - before, seq_scans("experiment." + uv)


with_dims, uv_with = scans_of_full_refresh()
saved = q("SELECT name, attribute, attribute_key, top_n, caps_per_value FROM experiment.dimensions WHERE experiment_id = 'dims'")
cur.execute("DELETE FROM experiment.dimensions WHERE experiment_id = 'dims'")
without_dims, uv_without = scans_of_full_refresh()
ck.check(with_dims == without_dims and with_dims >= 1,
         "source scans of a full refresh: %d with 3 dimensions, %d without" % (with_dims, without_dims))
ck.check(uv_with > uv_without, "the breakdowns read the stored per-unit values (%d scans, %d without dimensions)"
         % (uv_with, uv_without))
print("largest relative error against the oracles: %.3g" % worst["rel"])
ck.report()
