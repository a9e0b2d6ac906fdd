"""Cluster-randomised experiments end to end: the cluster declaration on
experiment.experiments -> refresh() -> clustered tests in metric_results
(delta-method ratio over per-cluster sums and unit counts) -> results,
enrollment (clusters), refreshes and the readout.

Generated data: companies of 1 to 60 users randomised as a whole (a few users
without a company, one company whose users were split across the variants),
per-user orders with a strong company effect (intra-cluster correlation), a
planted effect, a pre-period for CUPED, winsorization, and metrics of every
kind (mean, proportion, count, ratio, CUPED). Two experiments: clusters from a
mapping relation, and from a key of the exposures' attributes.

Oracles, computed here from the raw rows with numpy (per-unit values, caps,
per-cluster sums) independently of the extension:
- the difference: statsmodels OLS of the per-unit value on a treatment dummy
  (for a ratio metric: the per-arm ratio of sums); its standard error: the
  cluster-robust (sandwich) covariance of statsmodels (cov_type='cluster',
  groups = cluster and variant, no small-sample correction) of each arm's
  regression, times G/(G - 1) per arm (the n - 1 of the moments' variance),
  to 1e-9; statistic, Welch df and p-value recomputed from the cluster-level
  formulas (scipy's t distribution);
- CUPED over clusters: the formulas of cuped_ratio_ttest reimplemented in numpy
  on the per-cluster sums (theta from the linearised values of both arms);
- singleton clusters (each unit its own cluster) give exactly the unit-level
  Welch test (a property of the estimator), and the unit_test column is the
  unit-level test;
- bad declarations are 22023 errors naming the field.
"""
import datetime as dt
import io
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from exptest import Checker, fresh_db  # noqa: E402

import numpy as np  # noqa: E402
import psycopg2  # noqa: E402
import statsmodels.api as sm  # noqa: E402
from scipy import stats  # noqa: E402

DAY = 86400
START = dt.datetime(2025, 3, 1, tzinfo=dt.timezone.utc)
END_S = 14 * DAY
REL = 1e-9

ck = Checker("test_design_cluster")
rng = np.random.default_rng(20251202)
conn = fresh_db("exp_design_cluster")
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
        worst["rel"] = max(worst["rel"], abs(got - want) / max(abs(want), 1e-300))
    return ck.close(got, want, what, rel=rel, abs_tol=1e-12)


def expect_error(sql, args, words, what):
    try:
        cur.execute(sql, args)
    except psycopg2.Error as e:
        msg = e.diag.message_primary or ""
        ok = e.pgcode == "22023" and all(w in msg for w in words)
        ck.check(ok, "%s: got %s %r" % (what, e.pgcode, msg))
        return
    ck.check(False, "%s: no error" % what)


# ---------------------------------------------------------------- the data
N_COMPANIES = 240
users = {}          # user -> (company or None, variant, t0)
company_variant = {}
company_effect = {}
for c in range(N_COMPANIES):
    company_variant[c] = "treatment" if rng.random() < 0.5 else "control"
    company_effect[c] = rng.normal(0, 1.0)          # a strong company effect: high ICC
    size = int(min(60, 1 + rng.geometric(0.08)))
    for k in range(size):
        users["c%03d-u%02d" % (c, k)] = (c, company_variant[c], int(rng.integers(0, 7 * DAY)))
# users whose company is not in the mapping (unclustered)
for k in range(25):
    users["lone-%02d" % k] = (None, "treatment" if rng.random() < 0.5 else "control", int(rng.integers(0, 7 * DAY)))
# one company whose users were split across the variants (mixed)
MIXED = 0
for i, u in enumerate(sorted(x for x in users if x.startswith("c000-"))):
    users[u] = (MIXED, "control" if i % 2 == 0 else "treatment", users[u][2])

orders = []
for u, (c, v, t0) in users.items():
    eff = company_effect[c] if c is not None else 0.0
    a = np.exp(0.5 * eff)
    lift = 1.15 if v == "treatment" else 1.0
    for _ in range(rng.poisson(1.0 * a)):          # pre-period
        orders.append((u, t0 - int(rng.integers(1, 14 * DAY)), round(float(20 * a + rng.normal(0, 5)), 2)))
    for _ in range(rng.poisson(1.2 * a * lift)):
        amt = round(float(20 * a * lift + rng.normal(0, 5)), 2)
        if rng.random() < 0.01:
            amt = 2500.0                             # whales: the cap matters
        orders.append((u, t0 + int(rng.integers(0, 8 * DAY)), amt))

cur.execute("CREATE SCHEMA dc")
cur.execute("CREATE TABLE dc.orders (user_id text, ordered_at timestamptz, amount float8)")
copy_rows("dc.orders", ("user_id", "ordered_at", "amount"), [(u, ts(s), a) for u, s, a in orders])
cur.execute("CREATE TABLE dc.user_company (user_id text, company_id integer, solo text)")
copy_rows("dc.user_company", ("user_id", "company_id", "solo"),
          [(u, c, u) for u, (c, v, t0) in users.items() if c is not None])

METRICS = {
    # name: (value col, aggregation, kind, winsorize, lookback)
    "k_revenue": ("amount", "sum", "mean", 0.99, None),
    "k_conv": (None, "any", "proportion", None, None),
    "k_orders": (None, "count", "mean", None, None),
    "k_revenue_cuped": ("amount", "sum", "mean", None, 14 * DAY),
}
for name, (vcol, agg, kind, wins, lookback) in METRICS.items():
    cur.execute("""INSERT INTO experiment.metrics (name, source, unit_column, time_column, value_column,
                   aggregation, kind, winsorize, cuped_lookback)
                   VALUES (%s, 'dc.orders', 'user_id', 'ordered_at', %s, %s, %s, %s, make_interval(secs => %s))""",
                (name, vcol, agg, kind, wins, lookback))
cur.execute("""INSERT INTO experiment.metrics (name, kind, numerator, denominator, cuped_lookback)
               VALUES ('k_aov', 'ratio', 'k_revenue', 'k_orders', NULL)""")
ROLES = {"k_revenue": "primary", "k_conv": "secondary", "k_orders": "guardrail", "k_aov": "secondary",
         "k_revenue_cuped": "secondary"}


def make_experiment(eid, analysis="fixed"):
    cur.execute("""INSERT INTO experiment.experiments (id, status, start_at, end_at, analysis)
                   VALUES (%s, 'draft', %s, %s, %s)""", (eid, ts(-DAY), ts(END_S), analysis))
    cur.execute("""INSERT INTO experiment.variants (experiment_id, name, allocation, is_control) VALUES
                   (%s, 'control', 0.5, true), (%s, 'treatment', 0.5, false)""", (eid, eid))
    for m, role in ROLES.items():
        cur.execute("INSERT INTO experiment.experiment_metrics (experiment_id, metric, role) VALUES (%s, %s, %s)",
                    (eid, m, role))
    rows = []
    for u, (c, v, t0) in users.items():
        attrs = "{}" if c is None else '{"company": "%d"}' % c
        rows.append((eid, u, v, ts(t0), attrs))
        if rng.random() < 0.3:                        # a later exposure, its attributes say nothing new
            rows.append((eid, u, v, ts(t0 + 3600), "{}"))
    copy_rows("experiment.exposures", ("experiment_id", "unit_id", "variant", "exposed_at", "attributes"), rows)


make_experiment("clu")
make_experiment("clu_attr", analysis="sequential")
make_experiment("clu_solo")

# ---------------------------------------------------------------- bad declarations
bad = [
    ("UPDATE experiment.experiments SET cluster_relation = 'dc.user_company' WHERE id = 'clu'",
     ["cluster_unit_column", "must name a column", "NULL"], "relation without columns"),
    ("UPDATE experiment.experiments SET cluster_relation = 'dc.user_company', cluster_unit_column = 'user_id', "
     "cluster_column = 'nope' WHERE id = 'clu'", ["cluster_column", "nope"], "unknown cluster column"),
    ("UPDATE experiment.experiments SET cluster_column = 'company_id' WHERE id = 'clu'",
     ["cluster_column", "needs cluster_relation"], "a column without relation"),
    ("UPDATE experiment.experiments SET cluster_relation = 'dc.user_company', cluster_unit_column = 'user_id', "
     "cluster_column = 'user_id' WHERE id = 'clu'", ["cluster_column", "must differ"], "the same column twice"),
    ("UPDATE experiment.experiments SET cluster_relation = 'dc.user_company', cluster_unit_column = 'user_id', "
     "cluster_column = 'company_id', cluster_attribute = 'company' WHERE id = 'clu'",
     ["cluster_attribute", "must be NULL"], "relation and attribute"),
    ("UPDATE experiment.experiments SET cluster_attribute = '' WHERE id = 'clu'", ["cluster_attribute"],
     "an empty attribute"),
]
cur.execute("CREATE VIEW dc.v_map AS SELECT * FROM dc.user_company")
bad.append(("UPDATE experiment.experiments SET cluster_relation = 'dc.v_map', cluster_unit_column = 'user_id', "
            "cluster_column = 'company_id' WHERE id = 'clu'", ["cluster_relation", "dc.v_map"], "a view"))
cur.execute("CREATE TABLE dc.rls_map AS SELECT * FROM dc.user_company")
cur.execute("ALTER TABLE dc.rls_map ENABLE ROW LEVEL SECURITY")
bad.append(("UPDATE experiment.experiments SET cluster_relation = 'dc.rls_map', cluster_unit_column = 'user_id', "
            "cluster_column = 'company_id' WHERE id = 'clu'", ["cluster_relation", "dc.rls_map"],
            "a table with row-level security"))
for sql, words, what in bad:
    expect_error(sql, None, words, what)
cur.execute("""INSERT INTO experiment.dimensions (experiment_id, name, attribute) VALUES ('clu', 'client', 'client')""")
cur.execute("UPDATE experiment.experiments SET stratify_by = 'client' WHERE id = 'clu'")
expect_error("UPDATE experiment.experiments SET cluster_attribute = 'company' WHERE id = 'clu'", None,
             ["stratify_by", "clustered"], "stratify_by with clusters")
cur.execute("UPDATE experiment.experiments SET stratify_by = NULL WHERE id = 'clu'")

# ---------------------------------------------------------------- the declarations and refresh
cur.execute("""UPDATE experiment.experiments SET cluster_relation = 'dc.user_company', cluster_unit_column = 'user_id',
               cluster_column = 'company_id', status = 'running' WHERE id = 'clu'""")
cur.execute("UPDATE experiment.experiments SET cluster_attribute = 'company', status = 'running' WHERE id = 'clu_attr'")
cur.execute("""UPDATE experiment.experiments SET cluster_relation = 'dc.user_company', cluster_unit_column = 'user_id',
               cluster_column = 'solo', status = 'running' WHERE id = 'clu_solo'""")
for eid in ("clu", "clu_attr", "clu_solo"):
    q("SELECT experiment.refresh(%s)", (eid,))

# ---------------------------------------------------------------- the oracle
end_s = END_S
ev = {}
for u, s, a in orders:
    ev.setdefault(u, []).append((s, a))
unit_list = sorted(users)
y_rev = np.array([sum(a for s, a in ev.get(u, []) if users[u][2] <= s < end_s) for u in unit_list])
y_cnt = np.array([float(sum(1 for s, a in ev.get(u, []) if users[u][2] <= s < end_s)) for u in unit_list])
y_any = (y_cnt > 0).astype(float)
x_rev = np.array([sum(a for s, a in ev.get(u, []) if users[u][2] - 14 * DAY <= s < users[u][2]) for u in unit_list])
cap = np.percentile(y_rev, 99)                          # percentile_cont = linear interpolation
y_rev_capped = np.minimum(y_rev, cap)
variant = np.array([users[u][1] for u in unit_list])
company = [users[u][0] for u in unit_list]


def cluster_sums(key_of, cols):
    """per (cluster, variant): units and sums of each column; units without a key are left out"""
    groups = {}
    for i, u in enumerate(unit_list):
        k = key_of(i)
        if k is None:
            continue
        groups.setdefault((k, variant[i]), []).append(i)
    out = {}
    for (k, v), idx in groups.items():
        out.setdefault(v, []).append([len(idx)] + [float(np.sum(c[idx])) for c in cols])
    return {v: np.array(rows) for v, rows in out.items()}, groups


def welch_from_arms(est_c, est_t, var_c, var_t, g_c, g_t):
    se2c, se2t = var_c / g_c, var_t / g_t
    se = np.sqrt(se2c + se2t)
    df = (se2c + se2t) ** 2 / (se2c ** 2 / (g_c - 1) + se2t ** 2 / (g_t - 1))
    diff = est_t - est_c
    return diff, se, df, 2 * stats.t.sf(abs(diff / se), df)


def ratio_oracle(num_c, den_c, num_t, den_t):
    """delta-method ratio over clusters, from the cluster-level formula"""
    out = []
    for num, den in ((num_c, den_c), (num_t, den_t)):
        r = num.sum() / den.sum()
        v = np.sum((num - r * den) ** 2) / (len(num) - 1) / np.mean(den) ** 2
        out.append((r, v, len(num)))
    (rc, vc, gc), (rt, vt, gt) = out
    return (rc, rt) + welch_from_arms(rc, rt, vc, vt, gc, gt)


def sandwich_se(y_by_arm, groups_by_arm):
    """statsmodels' cluster-robust SE of each arm's mean (ratio of sums), no small-sample
    correction, times G/(G-1) per arm; the difference's SE"""
    total = 0.0
    for y, g in zip(y_by_arm, groups_by_arm):
        fit = sm.OLS(y, np.ones((len(y), 1))).fit(cov_type="cluster",
                                                   cov_kwds={"groups": g, "use_correction": False})
        G = len(np.unique(g))
        total += fit.cov_params()[0, 0] * G / (G - 1)
    return np.sqrt(total)


def cuped_ratio_oracle(arms):
    """cuped_ratio_ttest's formulas on per-cluster sums (num, den, pre_num, pre_den) of each arm"""
    lin = {}
    for v, (n_, d_, pn, pd) in arms.items():
        r, rp = n_.sum() / d_.sum(), pn.sum() / pd.sum()
        L = (n_ - r * d_) / d_.mean()
        Lp = (pn - rp * pd) / pd.mean()
        lin[v] = (r, rp, L, Lp)
    num = sum(np.cov(lin[v][2], lin[v][3])[0, 1] for v in lin)
    den = sum(np.var(lin[v][3], ddof=1) for v in lin)
    theta = num / den
    (rc, rpc, Lc, Lpc), (rt, rpt, Lt, Lpt) = lin["control"], lin["treatment"]
    diff = (rt - rc) - theta * (rpt - rpc)
    vc, vt = np.var(Lc - theta * Lpc, ddof=1), np.var(Lt - theta * Lpt, ddof=1)
    _, se, df, p = welch_from_arms(0, diff, vc, vt, len(Lc), len(Lt))
    return rc, rt, diff, se, df, p


def results(eid):
    cur.execute("""SELECT metric, method, clustered_by, (test).n_control, (test).n_treatment, (test).mean_control,
                          (test).mean_treatment, (test).diff, (test).diff_se, (test).df, (test).statistic,
                          (test).p_value, (unit_test).p_value, (unit_test).diff_se, (unit_test).diff
                   FROM experiment.metric_results WHERE experiment_id = %s ORDER BY metric""", (eid,))
    return {r[0]: r[1:] for r in cur.fetchall()}


def check_experiment(eid, key_of, label, sequential=False):
    res = results(eid)
    sums, groups = cluster_sums(key_of, [y_rev_capped, y_cnt, y_any, y_rev, x_rev])
    c, t = sums["control"], sums["treatment"]
    ck.check(set(res) == set(METRICS) | {"k_aov"}, "%s: a result per metric (%r)" % (eid, sorted(res)))
    # per metric: (numerator column, denominator column) of the per-cluster sums
    cols = {"k_revenue": (1, 0), "k_orders": (2, 0), "k_conv": (3, 0), "k_aov": (1, 2)}
    for m, (ni, di) in cols.items():
        method, clustered_by, n_c, n_t, mean_c, mean_t, diff, se, df, stat, p, unit_p, unit_se, unit_diff = res[m]
        ck.check(method == "ratio" and clustered_by == label, "%s %s: method %r clustered_by %r" %
                 (eid, m, method, clustered_by))
        ck.check((n_c, n_t) == (len(c), len(t)), "%s %s: clusters %r, want %r" % (eid, m, (n_c, n_t), (len(c), len(t))))
        rc, rt, d, s, f, pv = ratio_oracle(c[:, ni], c[:, di], t[:, ni], t[:, di])
        close(mean_c, rc, "%s %s mean_control" % (eid, m))
        close(mean_t, rt, "%s %s mean_treatment" % (eid, m))
        close(diff, d, "%s %s diff" % (eid, m))
        close(se, s, "%s %s diff_se" % (eid, m))
        close(stat, d / s, "%s %s statistic" % (eid, m))
        if sequential:
            ck.check(df is None, "%s %s: sequential, no df" % (eid, m))
        else:
            close(df, f, "%s %s df" % (eid, m))
            close(p, pv, "%s %s p_value" % (eid, m))
        if m != "k_aov":
            # statsmodels: the arm mean of the unit values, cluster-robust
            vals = {1: y_rev_capped, 2: y_cnt, 3: y_any}[ni]
            arms_y, arms_g = [], []
            for v in ("control", "treatment"):
                idx = [i for i in range(len(unit_list)) if key_of(i) is not None and variant[i] == v]
                arms_y.append(vals[idx])
                arms_g.append(np.array(["%s|%s" % (key_of(i), v) for i in idx]))
            X = np.column_stack([np.ones(sum(len(a) for a in arms_y)),
                                 np.r_[np.zeros(len(arms_y[0])), np.ones(len(arms_y[1]))]])
            ols = sm.OLS(np.r_[arms_y[0], arms_y[1]], X).fit(cov_type="cluster",
                                                            cov_kwds={"groups": np.r_[arms_g[0], arms_g[1]]})
            close(diff, ols.params[1], "%s %s diff vs statsmodels OLS" % (eid, m))
            close(se, sandwich_se(arms_y, arms_g), "%s %s diff_se vs statsmodels cluster-robust" % (eid, m))
            # statsmodels' CR1 correction differs by O(1/G)
            ck.check(abs(se / ols.bse[1] - 1) < 0.02, "%s %s: diff_se %r near statsmodels CR1 %r" %
                     (eid, m, se, ols.bse[1]))
        ck.check(unit_p is not None and unit_se is not None, "%s %s: the unit-level test is kept" % (eid, m))
    # CUPED over clusters: uncapped revenue and its pre-period, the units as denominators
    method, clustered_by, n_c, n_t, mean_c, mean_t, diff, se, df, stat, p, *_ = res["k_revenue_cuped"]
    ck.check(method == "cuped_ratio", "%s k_revenue_cuped: method %r" % (eid, method))
    arms = {v: (s[:, 4], s[:, 0], s[:, 5], s[:, 0]) for v, s in sums.items()}
    rc, rt, d, s, f, pv = cuped_ratio_oracle(arms)
    close(mean_c, rc, "%s cuped mean_control" % eid)
    close(mean_t, rt, "%s cuped mean_treatment" % eid)
    close(diff, d, "%s cuped diff" % eid)
    close(se, s, "%s cuped diff_se" % eid)
    if not sequential:
        close(df, f, "%s cuped df" % eid)
        close(p, pv, "%s cuped p_value" % eid)
    return groups


groups = check_experiment("clu", lambda i: company[i], "dc.user_company.company_id")
check_experiment("clu_attr", lambda i: company[i], "attributes.company", sequential=True)

# the bookkeeping: clusters, units without one, mixed clusters; the enrollment counts clusters
n_lone = sum(1 for c in company if c is None)
(clusters, clustered, unclustered, mixed), = q("""SELECT clusters, clustered_units, unclustered_units, mixed_clusters
                                               FROM experiment.refreshes WHERE experiment_id = 'clu'""")
ck.check((clusters, clustered, unclustered, mixed) == (len(groups), len(unit_list) - n_lone, n_lone, 1),
         "refreshes: %r" % ((clusters, clustered, unclustered, mixed),))
en = dict(q("SELECT variant, units FROM experiment.enrollment WHERE experiment_id = 'clu'"))
want = {v: sum(1 for (k, vv) in groups if vv == v) for v in ("control", "treatment")}
ck.check(en == want, "enrollment counts clusters: %r, want %r" % (en, want))
(srm_p,), = q("SELECT DISTINCT p_value FROM experiment.srm WHERE experiment_id = 'clu'")
close(srm_p, stats.chisquare([want["control"], want["treatment"]]).pvalue, "SRM over clusters", rel=1e-9)
(n_daily,), = q("SELECT count(*) FROM experiment.results_daily WHERE experiment_id = 'clu'")
ck.check(n_daily == 0, "no unit-level results over time for a clustered experiment (%d)" % n_daily)
(rv,), = q("SELECT count(*) FROM experiment.results WHERE experiment_id = 'clu' AND n_control = %s",
           (want["control"],))
ck.check(rv == 5, "results show the clusters as n_control (%d rows)" % rv)
rows = q("SELECT r.metric, r.clustered_by, m.clustered_by FROM experiment.results r JOIN experiment.metric_results m "
         "USING (experiment_id, metric, variant) WHERE r.experiment_id = 'clu' ORDER BY 1")
ck.check(len(rows) == 5 and all(c == mc and c is not None for _, c, mc in rows)
         and rows[0][1] == "dc.user_company.company_id", "results.clustered_by: %r" % (rows,))

# the readout says so
(text,), = q("SELECT experiment.readout('clu')")
ck.check("Clustered by dc.user_company.company_id: %d clusters of %s units" % (len(groups), format(clustered, ","))
         in text, "readout names the clusters:\n%s" % text)
ck.check(("Warning: %d analysed units have no cluster" % n_lone) in text, "readout warns of units without a cluster")
ck.check("Warning: 1 clusters have units in several variants" in text, "readout warns of a mixed cluster")

# a reader (experiment_reader, allowed to read the source) sees the clustered readout
cur.execute("SELECT count(*) FROM experiment.setup_roles()")
cur.execute("DROP ROLE IF EXISTS dc_reader")
cur.execute("CREATE ROLE dc_reader LOGIN IN ROLE experiment_reader")
cur.execute("GRANT USAGE ON SCHEMA dc TO dc_reader")
cur.execute("GRANT SELECT ON dc.orders TO dc_reader")
rc = psycopg2.connect(dbname="exp_design_cluster", user="dc_reader")
rc.autocommit = True
with rc.cursor() as rcur:
    rcur.execute("SELECT experiment.readout('clu')")
    ck.check("Clustered by dc.user_company.company_id" in rcur.fetchone()[0], "a reader's readout names the clusters")
    rcur.execute("SELECT count(*) FROM experiment.metric_results WHERE experiment_id = 'clu' AND clustered_by IS NOT NULL")
    ck.check(rcur.fetchone()[0] == 5, "a reader sees the clustered results")
rc.close()
cur.execute("REVOKE ALL ON dc.orders FROM dc_reader")
cur.execute("REVOKE ALL ON SCHEMA dc FROM dc_reader")
cur.execute("DROP ROLE dc_reader")

# singleton clusters: exactly the unit-level Welch test
res = results("clu_solo")
for m in ("k_revenue", "k_orders", "k_conv"):
    method, clustered_by, n_c, n_t, mean_c, mean_t, diff, se, df, stat, p, unit_p, unit_se, unit_diff = res[m]
    idx_c = [i for i in range(len(unit_list)) if company[i] is not None and variant[i] == "control"]
    idx_t = [i for i in range(len(unit_list)) if company[i] is not None and variant[i] == "treatment"]
    vals = {"k_revenue": y_rev_capped, "k_orders": y_cnt, "k_conv": y_any}[m]
    w = stats.ttest_ind(vals[idx_t], vals[idx_c], equal_var=False)
    close(stat, w.statistic, "singletons %s: the Welch statistic" % m)
    close(p, w.pvalue, "singletons %s: the Welch p-value" % m)
    close(se, diff / w.statistic, "singletons %s: the Welch SE" % m)

# the experiment's owner role must be allowed to read the mapping it declared
cur.execute("DROP ROLE IF EXISTS dc_owner")
cur.execute("CREATE ROLE dc_owner")
cur.execute("UPDATE experiment.experiments SET owner_role = 'dc_owner' WHERE id = 'clu_solo'")
try:
    cur.execute("SELECT experiment.refresh('clu_solo')")
    ck.check(False, "an owner role without SELECT on the mapping: no error")
except psycopg2.Error as e:
    ck.check(e.pgcode == "42501" and "dc_owner" in e.diag.message_primary, "owner without SELECT: %s %r" %
             (e.pgcode, e.diag.message_primary))
cur.execute("GRANT USAGE ON SCHEMA dc TO dc_owner")
cur.execute("GRANT SELECT (user_id, solo) ON dc.user_company TO dc_owner")
q("SELECT experiment.refresh('clu_solo')")
ck.check(results("clu_solo")["k_revenue"][1] is not None, "with SELECT on the two columns it refreshes")
cur.execute("UPDATE experiment.experiments SET owner_role = 'postgres' WHERE id = 'clu_solo'")
cur.execute("REVOKE ALL ON dc.user_company FROM dc_owner")
cur.execute("REVOKE ALL ON SCHEMA dc FROM dc_owner")
cur.execute("DROP ROLE dc_owner")

# the clusters' correlation: the clustered SE is far above the unit-level one (design effect)
res = results("clu")
de = (res["k_revenue"][7] / res["k_revenue"][12]) ** 2
ck.check(de > 2, "design effect of revenue %.2f > 2 with a strong company effect" % de)

expect_error("SELECT * FROM experiment.aa_test('clu', 10)", None, ["aa_test", "randomised by cluster"],
             "aa_test of a clustered experiment")

# the declaration is fixed once the experiment runs
expect_error("UPDATE experiment.experiments SET cluster_relation = NULL, cluster_unit_column = NULL, "
             "cluster_column = NULL WHERE id = 'clu'", None, ["cannot change the cluster declaration", "running"],
             "undeclaring a running experiment's clusters")
expect_error("UPDATE experiment.experiments SET cluster_attribute = 'team' WHERE id = 'clu_attr'", None,
             ["cannot change the cluster declaration"], "a new cluster attribute while running")

# a clustered experiment whose clusters are gone from the mapping: every unit unclustered, no test
cur.execute("DELETE FROM dc.user_company")
q("SELECT experiment.refresh('clu')")
(clusters, unclustered), = q("SELECT clusters, unclustered_units FROM experiment.refreshes WHERE experiment_id = 'clu'")
ck.check((clusters, unclustered) == (0, len(unit_list)), "no mapping: %r" % ((clusters, unclustered),))
(n_tests,), = q("SELECT count(test) FROM experiment.metric_results WHERE experiment_id = 'clu' AND clustered_by IS NOT NULL")
ck.check(n_tests == 0, "no mapping: no clustered test (%d)" % n_tests)
(n_unit,), = q("SELECT count(*) FROM experiment.metric_results WHERE experiment_id = 'clu' AND clustered_by IS NULL "
               "AND method <> 'quantile'")
ck.check(n_unit == 0, "no mapping: no unit-level test passes for a clustered one (%d)" % n_unit)

print("largest relative error against the oracles: %.2g" % worst["rel"])
ck.report()
