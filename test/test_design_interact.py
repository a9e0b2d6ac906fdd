"""Factorial experiments and interaction detection end to end, against
statsmodels OLS and numpy on the raw rows.

Factorial: a 2 x 3 design (color: blue, red; size: s, m, l) registered with
create_experiment's factorial form and uneven allocations, its units assigned
by experiment.assign(), exposures logged, two metrics in the catalogue (a mean
and a proportion) and a ratio metric, refresh(), then every row of
experiment.factorial_effects against statsmodels OLS on the per-unit values
recomputed from the raw events: the saturated model y ~ C(color) * C(size)
with HC2 covariance, each effect as the contrast L'b of its cells' design rows
(t_test), point estimates and standard errors to 1e-9; the two-level factor's
main effect against twice the sum-coded coefficient; the interactions against
the dummy-coded interaction coefficients; the p-values against Student's t with
the Satterthwaite df (scipy); the ratio metric against the delta method in
numpy; the cells against the control in experiment.results. A planted
interaction is found and the null ones are not. Bad designs: 22023 naming the
field.

A 2 x 2 x 2 design against the sum-coded saturated OLS (an effect of order r is
(-2)^r times its coefficient): main effects, two- and three-factor interactions.

Interactions: experiments A and B over the same 16,000 units, metrics revenue
(winsorized at 0.99, a planted interaction) and orders (none) in both, and a
metric of A only; refresh both and experiment.refresh_interactions(), then each
row of experiment.interactions against statsmodels OLS y ~ a * b (HC2) and the
2 x 2 cell means from numpy over the shared units (A's capped per-unit values
from its own first exposures); the planted interaction is flagged (p < 0.01),
the null one not; the minimum of shared units (setting
experiment.interaction_min_shared_units) and bad settings; row-level security.

Coverage: 1,000 seeded datasets of skewed, heteroskedastic cells with unequal
sizes; the 95% intervals of a 2 x 2 interaction and of a main effect of a
2 x 3 design from contrast_test cover the truth in [93.5%, 96.5%].
"""
import datetime as dt
import io
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from exptest import Checker, fresh_db  # noqa: E402

import numpy as np  # noqa: E402
import psycopg2  # noqa: E402
import statsmodels.formula.api as smf  # noqa: E402
from scipy import stats  # noqa: E402

REL = 1e-9
ck = Checker("test_design_interact")
rng = np.random.default_rng(20261201)
conn = fresh_db("exp_design_interact")
cur = conn.cursor()
worst = {"est": 0.0, "se": 0.0, "p": 0.0}
NOW = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
T0 = NOW - dt.timedelta(days=10)


def q(sql, args=None):
    cur.execute(sql, args)
    return cur.fetchall() if cur.description else None


def copy_rows(table, cols, rows):
    buf = io.StringIO()
    for r in rows:
        buf.write("\t".join("\\N" if x is None else str(x) for x in r) + "\n")
    buf.seek(0)
    cur.copy_expert("COPY %s (%s) FROM STDIN" % (table, ", ".join(cols)), buf)


def close(got, want, what, kind="est", rel=REL):
    if got is not None and want is not None and want != 0:
        worst[kind] = max(worst[kind], abs(got - want) / abs(want))
    return ck.close(got, want, what, rel=rel, abs_tol=1e-12)


def refuses(sql, args, words, what):
    try:
        cur.execute("SAVEPOINT s")
    except psycopg2.Error:
        pass
    try:
        cur.execute(sql, args)
    except psycopg2.Error as e:
        msg = e.diag.message_primary or ""
        ok = e.pgcode == "22023" and all(w in msg for w in words)
        ck.check(ok, "%s: got %s %r" % (what, e.pgcode, msg))
        return
    ck.check(False, "%s: no error" % what)


def satterthwaite_p(est, w, v, n):
    """two-sided p of est with se^2 = sum w^2 v / n and Satterthwaite df"""
    a = w * w * v / n
    se2 = a.sum()
    df = se2 * se2 / np.sum(a * a / (n - 1))
    return 2 * stats.t.sf(abs(est) / np.sqrt(se2), df), np.sqrt(se2), df


# ======================================================================= factorial
COLORS = ["blue", "red"]
SIZES = ["s", "m", "l"]
ALLOC = {"blue/s": 0.2, "blue/m": 0.15, "blue/l": 0.15, "red/s": 0.2, "red/m": 0.15, "red/l": 0.15}
design = {"factors": [{"name": "color", "levels": COLORS}, {"name": "size", "levels": SIZES}], "allocations": ALLOC}
import json  # noqa: E402

q("SELECT experiment.create_experiment('fact', %s::jsonb)", (json.dumps(design),))
q("UPDATE experiment.experiments SET analysis = 'fixed' WHERE id = 'fact'")
q("SELECT experiment.start('fact')")
cells = q("SELECT name, allocation, is_control, levels FROM experiment.variants WHERE experiment_id = 'fact' ORDER BY name")
ck.check([c[0] for c in cells] == sorted(ALLOC) and all(abs(c[1] - ALLOC[c[0]]) < 1e-15 for c in cells),
         "the cells are the variants with their allocations: %r" % cells)
ck.check([c[0] for c in cells if c[2]] == ["blue/s"], "the all-baseline cell is the control")
ck.check(all(c[3] == {"color": c[0].split("/")[0], "size": c[0].split("/")[1]} for c in cells), "each cell's levels")
(fx,), = q("SELECT factors FROM experiment.experiments WHERE id = 'fact'")
ck.check(fx == design["factors"], "experiments.factors holds the design")

N_F = 12000
q("INSERT INTO experiment.exposures (experiment_id, unit_id, variant, exposed_at) "
  "SELECT 'fact', 'f' || i, experiment.assign('f' || i, 'fact'), %s::timestamptz + i * interval '1 second' "
  "FROM generate_series(1, %s) i", (T0, N_F))
asg = dict(q("SELECT unit_id, variant FROM experiment.exposures WHERE experiment_id = 'fact'"))
counts = {c: sum(1 for v in asg.values() if v == c) for c in ALLOC}
chi = stats.chisquare([counts[c] for c in sorted(ALLOC)], [N_F * ALLOC[c] for c in sorted(ALLOC)])
ck.check(all(counts[c] > 0 for c in ALLOC) and chi.pvalue > 0.001,
         "assign() splits the units over the cells as allocated: %r (chi2 p %.3g)" % (counts, chi.pvalue))

# per-unit truth: revenue with main effects and a planted color x size(l) interaction;
# conversion with main effects only
units = sorted(asg, key=lambda u: int(u[1:]))
color = np.array([asg[u].split("/")[0] for u in units])
size = np.array([asg[u].split("/")[1] for u in units])
mu = 10 + 1.0 * (color == "red") + 0.5 * (size == "m") - 0.3 * (size == "l") + 2.0 * ((color == "red") & (size == "l"))
sd = 3 + 2 * (color == "red")                               # heteroskedastic cells
orders_rows = []
conv_rows = []
for k, u in enumerate(units):
    t_exp = T0 + dt.timedelta(seconds=int(u[1:]))
    n_ord = rng.poisson(2)
    for j in range(n_ord):
        amt = max(0.0, rng.normal(mu[k], sd[k])) / 2
        orders_rows.append((u, (t_exp + dt.timedelta(hours=1 + j)).isoformat(), round(amt, 4)))
    # one event before the exposure: outside the window
    if k % 7 == 0:
        orders_rows.append((u, (t_exp - dt.timedelta(hours=1)).isoformat(), 99.0))
    if rng.random() < 0.3 + 0.05 * (color[k] == "red"):
        conv_rows.append((u, (t_exp + dt.timedelta(minutes=30)).isoformat()))
q("CREATE TABLE f_orders (user_id text, at timestamptz, amount float8)")
q("CREATE TABLE f_conv (user_id text, at timestamptz)")
copy_rows("f_orders", ["user_id", "at", "amount"], orders_rows)
copy_rows("f_conv", ["user_id", "at"], conv_rows)
q("""INSERT INTO experiment.metrics (name, source, unit_column, time_column, value_column, aggregation, kind, cuped_lookback)
     VALUES ('f_revenue', 'f_orders', 'user_id', 'at', 'amount', 'sum', 'mean', NULL),
            ('f_orders', 'f_orders', 'user_id', 'at', NULL, 'count', 'mean', NULL),
            ('f_converted', 'f_conv', 'user_id', 'at', NULL, 'any', 'proportion', NULL)""")
q("""INSERT INTO experiment.metrics (name, kind, numerator, denominator, cuped_lookback)
     VALUES ('f_aov', 'ratio', 'f_revenue', 'f_orders', NULL)""")
q("""INSERT INTO experiment.experiment_metrics (experiment_id, metric, role)
     VALUES ('fact', 'f_revenue', 'primary'), ('fact', 'f_converted', 'secondary'), ('fact', 'f_aov', 'secondary')""")
q("SELECT experiment.refresh('fact')")

# per-unit values from the raw rows: events at or after the unit's exposure
t_of = {u: T0 + dt.timedelta(seconds=int(u[1:])) for u in units}
rev = {u: 0.0 for u in units}
nord = {u: 0.0 for u in units}
for u, at, amt in orders_rows:
    if dt.datetime.fromisoformat(at) >= t_of[u]:
        rev[u] += amt
        nord[u] += 1
conv = {u: 0.0 for u in units}
for u, at in conv_rows:
    if dt.datetime.fromisoformat(at) >= t_of[u]:
        conv[u] = 1.0
import pandas as pd  # noqa: E402
import patsy  # noqa: E402

df = pd.DataFrame({"color": color, "size": size, "f_revenue": [rev[u] for u in units],
                   "f_converted": [conv[u] for u in units], "num": [rev[u] for u in units],
                   "den": [nord[u] for u in units]})
df["cell"] = df["color"] + "/" + df["size"]

effects = q("SELECT metric, effect, \"order\", levels, method, n_control, n_treatment, mean_control, mean_treatment, diff, "
            "diff_se, df, p_value, diff_lower, diff_upper, lift, lift_se FROM experiment.factorial_effects "
            "WHERE experiment_id = 'fact' ORDER BY metric, \"order\", effect, levels::text")
ck.check(len(effects) == 3 * 5, "5 effects (color; size m, l; color:size m, l) for each of 3 metrics: %d" % len(effects))
contrasts = {(r[0], r[1], json.dumps(r[2], sort_keys=True)): (r[3], r[4], r[5])
             for r in q("SELECT 'x', effect, levels, cells, treatment_weights, control_weights "
                        "FROM experiment.factorial_contrasts('fact')")}
cell_order = sorted(ALLOC)
fits = {}
for metric in ("f_revenue", "f_converted"):
    fits[metric] = smf.ols("%s ~ C(color, Treatment('blue')) * C(size, Treatment('s'))" % metric, data=df).fit(cov_type="HC2")
    fits[metric + ":sum"] = smf.ols("%s ~ C(color, Sum) * C(size, Sum)" % metric, data=df).fit(cov_type="HC2")


def design_row(fit, cellname):
    """the row of the fitted model's design matrix of a cell"""
    c, sz = cellname.split("/")
    return np.asarray(patsy.dmatrix(fit.model.data.design_info, pd.DataFrame({"color": [c], "size": [sz]})))[0]


for (metric, effect, order, levels, method, n_c, n_t, m_c, m_t, diff, se, dfree, p, lo, hi, lift, lift_se) in effects:
    key = ("x", effect, json.dumps(levels, sort_keys=True))
    names, tw, cw = contrasts[key]
    ck.check(names == cell_order, "cells in name order")
    w = np.array(tw) - np.array(cw)
    g = df.groupby("cell")
    if metric == "f_aov":
        # the delta method in numpy: each cell's ratio and the variance of (num - R den) / mean(den)
        f = []
        v = []
        n = []
        for c in cell_order:
            d = df[df.cell == c]
            r = d.num.mean() / d.den.mean()
            f.append(r)
            v.append(np.var(d.num - r * d.den, ddof=1) / d.den.mean() ** 2)
            n.append(len(d))
        f, v, n = np.array(f), np.array(v), np.array(n)
        want = float(np.dot(w, f))
        close(diff, want, "f_aov %s %s: the contrast of the cells' ratios" % (effect, levels))
        pw, sew, dfw = satterthwaite_p(want, w, v, n)
        close(se, sew, "f_aov %s %s: delta-method SE" % (effect, levels), "se")
        close(p, pw, "f_aov %s %s: p-value" % (effect, levels), "p", rel=1e-7)
        ck.check(method == "ratio", "f_aov is tested as a ratio")
        continue
    fit = fits[metric]
    L = sum(wk * design_row(fit, c) for wk, c in zip(w, cell_order))
    tt = fit.t_test(L)
    close(diff, float(tt.effect[0]), "%s %s %s: estimate = OLS contrast" % (metric, effect, levels))
    close(se, float(np.asarray(tt.sd).ravel()[0]), "%s %s %s: SE = OLS HC2" % (metric, effect, levels), "se")
    mean = g[metric].mean().reindex(cell_order).to_numpy()
    var = g[metric].var(ddof=1).reindex(cell_order).to_numpy()
    cnt = g[metric].count().reindex(cell_order).to_numpy().astype(float)
    close(m_t, float(np.dot(tw, mean)), "%s %s %s: mean_treatment from the cell means" % (metric, effect, levels))
    close(m_c, float(np.dot(cw, mean)), "%s %s %s: mean_control from the cell means" % (metric, effect, levels))
    pw, sew, dfw = satterthwaite_p(diff, w, var, cnt)
    close(dfree, dfw, "%s %s %s: Satterthwaite df" % (metric, effect, levels))
    close(p, pw, "%s %s %s: p-value (t, Satterthwaite df)" % (metric, effect, levels), "p", rel=1e-7)
    q_ = stats.t.isf(0.025, dfw)
    close(lo, diff - q_ * sew, "%s %s %s: lower bound" % (metric, effect, levels))
    ck.check(n_c == int(sum(cnt[np.array(cw) != 0])) and n_t == int(sum(cnt[np.array(tw) != 0])),
             "%s %s: units of each side" % (metric, effect))
    # lift: delta method by numeric gradient of (T - C)/|C| in the cell means
    c_sum = float(np.dot(cw, mean))
    t_sum = float(np.dot(tw, mean))
    grad = np.array(tw) / abs(c_sum) - np.sign(c_sum) * t_sum * np.array(cw) / c_sum ** 2
    close(lift, (t_sum - c_sum) / abs(c_sum), "%s %s: lift" % (metric, effect))
    close(lift_se, float(np.sqrt(np.sum(grad ** 2 * var / cnt))), "%s %s: lift SE (delta method)" % (metric, effect), "se")
    if order == 1 and effect == "color":
        # main effect of a two-level factor = -2 x the sum-coded coefficient of its first level
        fs = fits[metric + ":sum"]
        name = [k for k in fs.params.index if k.startswith("C(color, Sum)") and ":" not in k][0]
        close(diff, -2 * fs.params[name], "%s: color main effect = -2 b(sum coding)" % metric)
        close(se, 2 * fs.bse[name], "%s: color main effect SE = 2 se(sum coding, HC2)" % metric, "se")
    if order == 2:
        # the interaction of two factors = the dummy-coded interaction coefficient
        sz = levels["size"]
        name = "C(color, Treatment('blue'))[T.red]:C(size, Treatment('s'))[T.%s]" % sz
        close(diff, fit.params[name], "%s color:size %s = OLS interaction coefficient" % (metric, sz))
        close(se, fit.bse[name], "%s color:size %s: SE = OLS HC2 bse" % (metric, sz), "se")
        if metric == "f_revenue" and sz == "l":
            ck.check(p < 0.01 and abs(diff - 2.0) < 1.5,
                     "the planted interaction color=red x size=l (+2 on events of half the amount: +2 per unit) "
                     "is found: %.3f, p %.2g" % (diff, p))
        if metric == "f_converted":
            ck.check(p > 0.001, "no interaction on conversion: p %.3g" % p)

# cells against the control: the ordinary multi-variant results
res = q("SELECT variant, diff FROM experiment.results WHERE experiment_id = 'fact' AND metric = 'f_revenue' ORDER BY variant")
g = df.groupby("cell")["f_revenue"].mean()
ck.check(len(res) == 5, "results: each of 5 cells against the control")
for v, d in res:
    close(d, g[v] - g["blue/s"], "results: cell %s against the control" % v)

# three two-level factors: an effect of order r is (-2)^r times the sum-coded coefficient of the
# saturated model (the first level +1), so main effects, the three two-factor interactions
# (averaged over the third factor) and the three-factor one are all checked
d3 = {"factors": [{"name": "a", "levels": ["a0", "a1"]}, {"name": "b", "levels": ["b0", "b1"]},
                  {"name": "c", "levels": ["c0", "c1"]}]}
q("SELECT experiment.create_experiment('fact3', %s::jsonb)", (json.dumps(d3),))
q("UPDATE experiment.experiments SET analysis = 'fixed' WHERE id = 'fact3'")
q("SELECT experiment.start('fact3')")
q("INSERT INTO experiment.exposures (experiment_id, unit_id, variant, exposed_at) "
  "SELECT 'fact3', 'g' || i, experiment.assign('g' || i, 'fact3'), %s::timestamptz + i * interval '1 second' "
  "FROM generate_series(1, 8000) i", (T0,))
a3 = q("SELECT unit_id, variant FROM experiment.exposures WHERE experiment_id = 'fact3' ORDER BY unit_id")
lv = np.array([[int(v.split("/")[k][1]) for k in range(3)] for _, v in a3])
y3 = 5 + lv[:, 0] + 0.5 * lv[:, 1] * lv[:, 2] + 1.5 * lv[:, 0] * lv[:, 1] * lv[:, 2] + rng.normal(0, 1 + lv[:, 2], len(a3))
q("CREATE TABLE f3_values (user_id text, at timestamptz, value float8)")
copy_rows("f3_values", ["user_id", "at", "value"],
          [(u, (T0 + dt.timedelta(seconds=int(u[1:]) + 60)).isoformat(), repr(float(y))) for (u, _), y in zip(a3, y3)])
q("INSERT INTO experiment.metrics (name, source, unit_column, time_column, value_column, aggregation, kind, cuped_lookback) "
  "VALUES ('f3_value', 'f3_values', 'user_id', 'at', 'value', 'sum', 'mean', NULL)")
q("INSERT INTO experiment.experiment_metrics (experiment_id, metric, role) VALUES ('fact3', 'f3_value', 'primary')")
q("SELECT experiment.refresh('fact3')")
d3f = pd.DataFrame({"a": lv[:, 0], "b": lv[:, 1], "c": lv[:, 2], "y": y3})
fit3 = smf.ols("y ~ C(a, Sum) * C(b, Sum) * C(c, Sum)", data=d3f).fit(cov_type="HC2")
eff3 = q("SELECT effect, \"order\", diff, diff_se FROM experiment.factorial_effects WHERE experiment_id = 'fact3' ORDER BY 2, 1")
ck.check([e[0] for e in eff3] == ["a", "b", "c", "a:b", "a:c", "b:c", "a:b:c"], "2x2x2: 7 effects: %r" % [e[0] for e in eff3])
for effect, order, diff, se in eff3:
    name = ":".join("C(%s, Sum)[S.0]" % f for f in effect.split(":"))
    close(diff, (-2) ** order * fit3.params[name], "2x2x2 %s = (-2)^%d b(sum coding)" % (effect, order))
    close(se, 2 ** order * fit3.bse[name], "2x2x2 %s: SE = 2^%d se(sum coding, HC2)" % (effect, order), "se")
(d_abc, p_abc), = q("SELECT diff, p_value FROM experiment.factorial_effects WHERE experiment_id = 'fact3' AND effect = 'a:b:c'")
ck.check(p_abc < 0.01 and abs(d_abc - 1.5) < 0.6, "the planted three-factor interaction (1.5): %.3f, p %.2g" % (d_abc, p_abc))

# a design with a cell missing has no effects
q("SELECT experiment.create_experiment('fact_gap', %s::jsonb)", (json.dumps({"factors": design["factors"]}),))
ck.check(q("SELECT count(*) FROM experiment.factorial_contrasts('fact_gap')")[0][0] == 5, "a complete 2 x 3 design: 5 contrasts")
q("DELETE FROM experiment.variants WHERE experiment_id = 'fact_gap' AND name = 'red/m'")
ck.check(q("SELECT count(*) FROM experiment.factorial_contrasts('fact_gap')")[0][0] == 0, "a cell missing: no contrast")

# the cells share equally without allocations
q("SELECT experiment.create_experiment('fact_seq', %s::jsonb)", (json.dumps({"factors": design["factors"]}),))
(n_cells,), = q("SELECT count(*) FROM experiment.variants WHERE experiment_id = 'fact_seq' AND abs(allocation - 1.0 / 6) < 1e-15")
ck.check(n_cells == 6, "without allocations the cells share equally")

# bad designs: 22023 naming the field
bad = [
    ({"factors": []}, ["factors"], "no factor"),
    ({"factors": [{"name": "a", "levels": ["x"]}]}, ["levels", '"a"'], "one level"),
    ({"factors": [{"name": "a", "levels": ["x", "x"]}]}, ["levels", '"a"', "distinct"], "repeated level"),
    ({"factors": [{"name": "a", "levels": ["x", "y"]}, {"name": "a", "levels": ["x", "y"]}]}, ['factor "a"', "twice"], "repeated factor"),
    ({"factors": [{"name": "", "levels": ["x", "y"]}]}, ["name"], "empty name"),
    ({"factors": [{"name": "a", "levels": ["x", "y"]}], "allocations": {"x": 0.5, "z": 0.5}}, ["allocations", '"z"'], "unknown cell"),
    ({"factors": [{"name": "a", "levels": ["x", "y"]}], "allocations": {"x": 1}}, ["allocations", '"y"'], "missing cell"),
    ({"factors": [{"name": "a", "levels": ["x", "y"]}], "allocations": {"x": "half", "y": 0.5}}, ["allocation", '"x"'], "non-numeric share"),
    ({"factors": [{"name": "a", "levels": ["x", "y"]}], "weights": {}}, ["factorial design"], "unknown key"),
    ({"factors": [{"name": "a", "levels": ["x/y", "x"]}, {"name": "b", "levels": ["z", "y/z"]}]}, ["distinct names"], "colliding cells"),
    ({"factors": [{"name": "f%d" % i, "levels": ["a", "b", "c", "d"]} for i in range(5)]}, ["256 cells"], "too many cells"),
]
for i, (d, words, what) in enumerate(bad):
    refuses("SELECT experiment.create_experiment(%s, %s::jsonb)", ("bad%d" % i, json.dumps(d)), words, "bad design: " + what)
refuses("UPDATE experiment.experiments SET factors = '[{\"name\": \"color\", \"levels\": [\"blue\", \"green\"]}]' WHERE id = 'fact'",
        None, ["factors", "fact", "running"], "the factors of a running experiment stay")
refuses("SELECT experiment.contrast_test('median', ARRAY[NULL]::experiment.moments[], '{0}', '{0}')", None,
        ["method", "welch or ratio"], "contrast_test: bad method")
refuses("SELECT experiment.contrast_test('welch', ARRAY[experiment.moments_from_sums(3, 3, 5)], '{1, 0}', '{0}')", None,
        ["one weight per cell"], "contrast_test: weights of another length")
refuses("SELECT experiment.contrast_test('welch', ARRAY[experiment.moments_from_sums(3, 3, 5)], '{NaN}', '{0}')", None,
        ["treatment_weights[1]", "finite"], "contrast_test: NaN weight")
refuses("SELECT experiment.contrast_test('ratio', ARRAY[experiment.moments_from_sums(3, 3, 5)], '{1}', '{0}')", None,
        ["cells[1]", "bivariate"], "contrast_test: univariate moments for a ratio")
(nulltest,), = q("SELECT (experiment.contrast_test('welch', ARRAY[NULL, experiment.moments_from_sums(3, 3, 5)]::experiment.moments[], "
                 "'{1, 0}', '{0, 1}')).diff")
ck.check(nulltest is None, "a cell without units in the contrast: NULL, not NaN")

# two cells with weights {0, 1}, {1, 0}: welch_ttest / ratio_ttest, under every inference
TWO = ("FROM (SELECT experiment.moments(y) FILTER (WHERE g = 0) AS c, experiment.moments(y) FILTER (WHERE g = 1) AS t, "
       "             experiment.moments(y, x) FILTER (WHERE g = 0) AS rc, experiment.moments(y, x) FILTER (WHERE g = 1) AS rt "
       "      FROM (SELECT i % 2 AS g, (i * 7919 % 101)::float8 + i % 2 AS y, 1 + (i * 31 % 5)::float8 AS x "
       "            FROM generate_series(1, 500) i) z) m")
for alt in ("two-sided", "greater", "less"):
    for tuning in (None, 5000.0):
        for method, ref, c, t in (("welch", "welch_ttest", "c", "t"), ("ratio", "ratio_ttest", "rc", "rt")):
            got2 = q("SELECT (experiment.contrast_test(%%s, ARRAY[%s, %s], '{0, 1}', '{1, 0}', 0.1, %%s, %%s)).* %s"
                     % (c, t, TWO.replace("%", "%%")), (method, alt, tuning))[0]
            want2 = q("SELECT (experiment.%s(%s, %s, 0.1, %%s, %%s)).* %s" % (ref, c, t, TWO.replace("%", "%%")), (alt, tuning))[0]
            for k, (x, y) in enumerate(zip(got2, want2)):
                if isinstance(y, float) and abs(y) == float("inf"):
                    ck.check(x == y, "two cells %s %s %s: column %d infinite" % (method, alt, tuning, k))
                else:
                    close(x, y, "two cells, %s, %s, sequential_tuning %s: column %d = %s's" % (method, alt, tuning, k, ref), rel=1e-12)

# ======================================================================= interactions
N_I = 16000
q("SELECT experiment.create_experiment('ix_a', '[{\"name\": \"control\", \"allocation\": 0.5}, {\"name\": \"treatment\", \"allocation\": 0.5}]', start => true)")
q("SELECT experiment.create_experiment('ix_b', '[{\"name\": \"off\", \"allocation\": 0.4}, {\"name\": \"on\", \"allocation\": 0.6}]', start => true)")
q("INSERT INTO experiment.exposures (experiment_id, unit_id, variant, exposed_at) "
  "SELECT x.id, 'u' || i, experiment.assign('u' || i, x.id), %s::timestamptz + i * interval '1 second' + x.lag "
  "FROM generate_series(1, %s) i, (VALUES ('ix_a', interval '0'), ('ix_b', interval '2 hours')) x(id, lag)", (T0, N_I))
# 1,000 units only in A
q("INSERT INTO experiment.exposures (experiment_id, unit_id, variant, exposed_at) "
  "SELECT 'ix_a', 'w' || i, experiment.assign('w' || i, 'ix_a'), %s::timestamptz + i * interval '1 second' "
  "FROM generate_series(1, 1000) i", (T0,))
va = dict(q("SELECT unit_id, variant FROM experiment.exposures WHERE experiment_id = 'ix_a'"))
vb = dict(q("SELECT unit_id, variant FROM experiment.exposures WHERE experiment_id = 'ix_b'"))
ta = {u: T0 + dt.timedelta(seconds=int(u[1:])) for u in va}
rows_rev = []
rows_ord = []
for u in va:
    a = va[u] == "treatment"
    b = vb.get(u) == "on"
    lam = 1.5 + 0.2 * a + 0.1 * b
    for j in range(rng.poisson(lam)):
        amt = rng.exponential(20 + 5 * a + 3 * b + 8 * (a and b))   # the planted interaction, on revenue
        at = ta[u] + dt.timedelta(hours=3 + j)
        rows_rev.append((u, at.isoformat(), round(amt, 4)))
    # orders: effects of A and B, no interaction; one event between A's and B's exposure
    rows_ord.append((u, (ta[u] + dt.timedelta(hours=1)).isoformat()))
    for j in range(rng.poisson(1 + 0.3 * a + 0.2 * b)):
        rows_ord.append((u, (ta[u] + dt.timedelta(hours=4 + j)).isoformat()))
q("CREATE SCHEMA ix")
q("CREATE TABLE ix.revenue (user_id text, at timestamptz, amount float8)")
q("CREATE TABLE ix.orders (user_id text, at timestamptz)")
copy_rows("ix.revenue", ["user_id", "at", "amount"], rows_rev)
copy_rows("ix.orders", ["user_id", "at"], rows_ord)
q("""INSERT INTO experiment.metrics (name, source, unit_column, time_column, value_column, aggregation, kind, cuped_lookback, winsorize)
     VALUES ('ix_revenue', 'ix.revenue', 'user_id', 'at', 'amount', 'sum', 'mean', NULL, 0.99),
            ('ix_orders', 'ix.orders', 'user_id', 'at', NULL, 'count', 'mean', NULL, NULL),
            ('ix_any_order', 'ix.orders', 'user_id', 'at', NULL, 'any', 'proportion', NULL, NULL)""")
q("""INSERT INTO experiment.experiment_metrics (experiment_id, metric, role)
     VALUES ('ix_a', 'ix_revenue', 'primary'), ('ix_a', 'ix_orders', 'secondary'), ('ix_a', 'ix_any_order', 'secondary'),
            ('ix_b', 'ix_revenue', 'primary'), ('ix_b', 'ix_orders', 'secondary')""")
q("SELECT experiment.refresh('ix_a')")
q("SELECT experiment.refresh('ix_b')")
(stored,), = q("SELECT experiment.refresh_interactions()")
got = q("SELECT experiment_id, other_experiment_id, metric, variant, other_variant, shared_units, units_other_control, "
        "units_other_treatment, effect_in_other_control, effect_in_other_treatment, interaction, interaction_lower, "
        "interaction_upper, interaction_se, df, p_value, threshold, flagged, min_shared_units "
        "FROM experiment.interactions ORDER BY 1, 2, 3")
ck.check(stored == 4 and len(got) == 4 and {(r[0], r[2]) for r in got} ==
         {("ix_a", "ix_orders"), ("ix_a", "ix_revenue"), ("ix_b", "ix_orders"), ("ix_b", "ix_revenue")},
         "one row per ordered pair and metric both analyse (ix_any_order is A's alone): %r" % [(r[0], r[2]) for r in got])


def unit_values(exp, assign, metric):
    """per-unit values of a metric of experiment exp from the raw rows, capped as its refresh caps them"""
    t = {u: T0 + dt.timedelta(seconds=int(u[1:])) + (dt.timedelta(hours=2) if exp == "ix_b" else dt.timedelta(0))
         for u in assign}
    y = {u: 0.0 for u in assign}
    if metric == "ix_revenue":
        for u, at, amt in rows_rev:
            if u in y and dt.datetime.fromisoformat(at) >= t[u]:
                y[u] += amt
        cap = float(np.quantile(np.array(list(y.values())), 0.99))      # pooled, linear (percentile_cont)
        y = {u: min(v, cap) for u, v in y.items()}
    else:
        for u, at in rows_ord:
            if u in y and dt.datetime.fromisoformat(at) >= t[u]:
                y[u] += 1
    return y


for (ea, eb, metric, v1, v2, shared, n_bc, n_bt, e_c, e_t, inter, lo, hi, se, dfree, p, thr, flagged, nmin) in got:
    first, other = (va, vb) if ea == "ix_a" else (vb, va)
    y = unit_values(ea, first, metric)
    sh = sorted(set(first) & set(other), key=lambda u: int(u[1:]))
    d = pd.DataFrame({"y": [y[u] for u in sh],
                      "a": [int(first[u] != ("control" if ea == "ix_a" else "off")) for u in sh],
                      "b": [int(other[u] != ("off" if ea == "ix_a" else "control")) for u in sh]})
    ck.check(shared == len(sh) == N_I, "%s x %s: shared units %d" % (ea, eb, shared))
    (apv, adep), = q("SELECT DISTINCT assignment_p_value, assignment_dependent FROM experiment.interactions "
                     "WHERE experiment_id = %s AND other_experiment_id = %s", (ea, eb))
    tab = pd.crosstab(d.a, d.b).to_numpy()
    close(apv, float(stats.chi2_contingency(tab, correction=False)[1]), "%s x %s: assignment p-value = scipy chi2_contingency" % (ea, eb), "p", rel=1e-9)
    ck.check(adep is False, "%s x %s: independent assignments (p %.3g)" % (ea, eb, apv))
    fit = smf.ols("y ~ a * b", data=d).fit(cov_type="HC2")
    close(inter, fit.params["a:b"], "%s x %s %s: interaction = OLS a:b coefficient" % (ea, eb, metric))
    close(se, fit.bse["a:b"], "%s x %s %s: SE = OLS HC2 bse of a:b" % (ea, eb, metric), "se")
    m = d.groupby(["a", "b"]).y.mean()
    close(e_c, m[(1, 0)] - m[(0, 0)], "%s x %s %s: effect within the other's control (numpy cell means)" % (ea, eb, metric))
    close(e_t, m[(1, 1)] - m[(0, 1)], "%s x %s %s: effect within the other's treatment" % (ea, eb, metric))
    v = d.groupby(["a", "b"]).y.var(ddof=1)
    n = d.groupby(["a", "b"]).y.count().astype(float)
    keys = [(0, 0), (1, 0), (0, 1), (1, 1)]
    w = np.array([1.0, -1.0, -1.0, 1.0])
    pw, sew, dfw = satterthwaite_p(inter, w, np.array([v[k] for k in keys]), np.array([n[k] for k in keys]))
    close(p, pw, "%s x %s %s: p-value" % (ea, eb, metric), "p", rel=1e-7)
    close(hi, inter + stats.t.isf(0.005, dfw) * sew, "%s x %s %s: upper bound at 1 - threshold" % (ea, eb, metric))
    ck.check(n_bc == int(n[(0, 0)] + n[(1, 0)]) and n_bt == int(n[(0, 1)] + n[(1, 1)]), "units per arm of the other")
    ck.check(thr == 0.01 and nmin == 1000 and flagged == (p < 0.01), "default threshold 0.01 and N 1000, flagged = p < 0.01")
    if metric == "ix_revenue":
        ck.check(flagged and inter > 0, "%s x %s: the planted interaction is flagged (%.3f, p %.2g)" % (ea, eb, inter, p))
    else:
        ck.check(not flagged, "%s x %s: no interaction on orders (p %.3g)" % (ea, eb, p))

# the minimum of shared units, a setting
q("SET experiment.interaction_min_shared_units = 16001")
(stored,), = q("SELECT experiment.refresh_interactions()")
ck.check(stored == 0 and q("SELECT count(*) FROM experiment.interactions")[0][0] == 0,
         "fewer shared units than experiment.interaction_min_shared_units: no rows")
q("SET experiment.interaction_min_shared_units = 16000")
q("SET experiment.interaction_threshold = 0.5")
q("SELECT experiment.refresh_interactions()")
ck.check(q("SELECT bool_and(threshold = 0.5 AND min_shared_units = 16000 AND flagged = (p_value < 0.5)) "
           "FROM experiment.interactions")[0][0] is True, "the settings are stored with the rows")
q("SET experiment.interaction_threshold = 2")
refuses("SELECT experiment.refresh_interactions()", None, ["experiment.interaction_threshold", "2"], "bad threshold")
q("SET experiment.interaction_threshold = 0.01")
q("SET experiment.interaction_min_shared_units = 'many'")
refuses("SELECT experiment.refresh_interactions()", None, ["experiment.interaction_min_shared_units", "many"], "bad N")
q("RESET experiment.interaction_min_shared_units")
q("RESET experiment.interaction_threshold")
# refresh_all() refreshes them too
q("DELETE FROM experiment.interaction_results")
q("SELECT experiment.refresh_all()")
ck.check(q("SELECT count(*) FROM experiment.interactions")[0][0] == 4, "refresh_all() recomputes the interactions")
# a stale experiment (its metrics changed since its refresh) waits for its next refresh
q("DELETE FROM experiment.experiment_metrics WHERE experiment_id = 'ix_b' AND metric = 'ix_orders'")
q("SELECT experiment.refresh_interactions()")
ck.check(q("SELECT count(*) FROM experiment.interactions")[0][0] == 0,
         "an experiment whose metrics changed since its refresh has no pairs until it is refreshed")
q("SELECT experiment.refresh('ix_b')")
q("SELECT experiment.refresh_interactions()")
ck.check(q("SELECT array_agg(experiment_id || ' ' || metric ORDER BY 1) FROM experiment.interactions")[0][0] ==
         ["ix_a ix_revenue", "ix_b ix_revenue"], "after its refresh: the metric both still analyse")

# results are as old as their metric: a metric taken out of an experiment, or deleted, takes
# its interactions with it
q("SELECT experiment.refresh('ix_b')")
q("SELECT experiment.refresh_interactions()")
q("INSERT INTO experiment.experiment_metrics (experiment_id, metric, role) VALUES ('ix_b', 'ix_orders', 'secondary')")
q("SELECT experiment.refresh('ix_b')")
q("SELECT experiment.refresh_interactions()")
n_before = q("SELECT count(*) FROM experiment.interaction_results WHERE metric = 'ix_orders'")[0][0]
q("DELETE FROM experiment.experiment_metrics WHERE experiment_id = 'ix_b' AND metric = 'ix_orders'")
ck.check(n_before == 2 and q("SELECT count(*) FROM experiment.interaction_results WHERE metric = 'ix_orders'")[0][0] == 0,
         "a metric taken out of one experiment of a pair loses the pair's rows both ways")

# row-level security: a reader that may read ix.orders only sees its rows
q("INSERT INTO experiment.experiment_metrics (experiment_id, metric, role) VALUES ('ix_b', 'ix_orders', 'secondary')")
q("SELECT experiment.refresh('ix_b')")
q("SELECT experiment.refresh_interactions()")
cur.execute("DROP ROLE IF EXISTS ix_reader")
cur.execute("CREATE ROLE ix_reader")
q("SELECT * FROM experiment.setup_roles()")
cur.execute("GRANT experiment_reader TO ix_reader")
cur.execute("GRANT USAGE ON SCHEMA ix TO ix_reader")
cur.execute("GRANT SELECT ON ix.orders TO ix_reader")
cur.execute("SET ROLE ix_reader")
seen = q("SELECT DISTINCT metric FROM experiment.interactions")
seen_t = q("SELECT DISTINCT metric FROM experiment.interaction_results")
cur.execute("RESET ROLE")
ck.check(seen == [("ix_orders",)] and seen_t == [("ix_orders",)],
         "row-level security: a reader of ix.orders alone sees the orders rows only: %r %r" % (seen, seen_t))
cur.execute("REVOKE ALL ON ix.orders FROM ix_reader")
cur.execute("REVOKE USAGE ON SCHEMA ix FROM ix_reader")
cur.execute("DROP ROLE ix_reader")

# assignment dependence: an experiment whose split follows A's is found by the chi-squared test
q("SELECT experiment.create_experiment('ix_c', '[{\"name\": \"c0\", \"allocation\": 0.5}, {\"name\": \"c1\", \"allocation\": 0.5}]', start => true)")
rows_c = [("ix_c", u, "c1" if rng.random() < (0.6 if va[u] == "treatment" else 0.4) else "c0",
           (ta[u] + dt.timedelta(minutes=5)).isoformat()) for u in sorted(va) if u.startswith("u")]
copy_rows("experiment.exposures", ["experiment_id", "unit_id", "variant", "exposed_at"], rows_c)
q("INSERT INTO experiment.experiment_metrics (experiment_id, metric, role) VALUES ('ix_c', 'ix_orders', 'primary')")
q("SELECT experiment.refresh('ix_c')")
q("SELECT experiment.refresh_interactions()")
got_c = q("SELECT DISTINCT experiment_id, other_experiment_id, assignment_p_value, assignment_dependent FROM experiment.interactions "
          "WHERE 'ix_c' IN (experiment_id, other_experiment_id) ORDER BY 1, 2")
vc = {r[1]: r[2] for r in rows_c}
for ea, eb, apv, adep in got_c:
    x, y = ({"ix_a": va, "ix_b": vb, "ix_c": vc}[e] for e in (ea, eb))
    sh = sorted(set(x) & set(y))
    tab = pd.crosstab(pd.Series([x[u] for u in sh]), pd.Series([y[u] for u in sh])).to_numpy()
    close(apv, float(stats.chi2_contingency(tab, correction=False)[1]), "%s x %s: assignment p-value" % (ea, eb), "p", rel=1e-9)
    ck.check(adep == ("ix_a" in (ea, eb)), "%s x %s: assignment dependent = %s (p %.3g)" % (ea, eb, adep, apv))
ck.check(len(got_c) == 4, "ix_c pairs with A and B both ways: %d" % len(got_c))
for i in range(20):
    r = np.random.default_rng(500 + i)
    tab = r.integers(0, 50, size=(r.integers(2, 5), r.integers(2, 5)))
    (pv,), = q("SELECT experiment.independence_chisq(%s::bigint[])", ("{" + ",".join("{" + ",".join(map(str, row)) + "}" for row in tab) + "}",))
    keep = tab[tab.sum(axis=1) > 0][:, tab.sum(axis=0) > 0]
    want = float(stats.chi2_contingency(keep, correction=False)[1]) if min(keep.shape) >= 2 else None
    close(pv, want, "independence_chisq of a %dx%d table" % tab.shape, "p", rel=1e-9)
refuses("SELECT experiment.independence_chisq('{1,2}')", None, ["observed", "two-dimensional"], "independence_chisq: 1-D")
refuses("SELECT experiment.independence_chisq('{{1,-2},{3,4}}')", None, ["negative"], "independence_chisq: a negative count")

# ======================================================================= coverage
cover_ix = 0
cover_main = 0
SIMS = 1000
for s in range(SIMS):
    r = np.random.default_rng(1000 + s)
    # 2 x 2: skewed cells (lognormal), unequal sizes and variances; true interaction 0.7
    sizes = r.integers(40, 400, size=4)
    scales = np.array([1.0, 2.0, 0.5, 3.0])
    true_means = np.array([1.0, 1.5, 1.2, 1.5 + 0.2 + 0.7])
    ys = [true_means[k] - scales[k] * np.exp(0.5) + scales[k] * r.lognormal(0, 1, sizes[k]) for k in range(4)]
    # 2 x 3 main effect of the 2-level factor (cells a0b0..a0b2, a1b0..a1b2): true 0.4
    sizes6 = r.integers(30, 300, size=6)
    means6 = np.array([1.0, 1.3, 0.8, 1.4, 1.9, 1.1])
    ys6 = [means6[k] + (1 + k % 3) * r.standard_t(5, sizes6[k]) for k in range(6)]
    lits = ",".join("(SELECT experiment.moments(y) FROM unnest(%s::float8[]) y)" % ("ARRAY[" + ",".join(repr(float(x)) for x in c) + "]")
                    for c in ys)
    lits6 = ",".join("(SELECT experiment.moments(y) FROM unnest(%s::float8[]) y)" % ("ARRAY[" + ",".join(repr(float(x)) for x in c) + "]")
                     for c in ys6)
    (lo1, hi1, lo2, hi2), = q("SELECT (a).diff_lower, (a).diff_upper, (b).diff_lower, (b).diff_upper FROM "
                              "(SELECT experiment.contrast_test('welch', ARRAY[%s], '{0,0,-1,1}', '{-1,1,0,0}') AS a, "
                              "experiment.contrast_test('welch', ARRAY[%s], '{0,0,0,0.3333333333333333,0.3333333333333333,0.3333333333333333}', "
                              "'{0.3333333333333333,0.3333333333333333,0.3333333333333333,0,0,0}') AS b) t" % (lits, lits6))
    cover_ix += lo1 <= 0.7 <= hi1
    true_main = means6[3:].mean() - means6[:3].mean()
    cover_main += lo2 <= true_main <= hi2
ck.check(0.935 <= cover_ix / SIMS <= 0.965, "coverage of the 2x2 interaction's 95%% interval: %.3f" % (cover_ix / SIMS))
ck.check(0.935 <= cover_main / SIMS <= 0.965, "coverage of a main effect's 95%% interval: %.3f" % (cover_main / SIMS))
print("coverage: interaction %.3f, main effect %.3f over %d datasets" % (cover_ix / SIMS, cover_main / SIMS, SIMS))
print("largest relative errors: estimates %.2g, SEs %.2g, p-values %.2g" % (worst["est"], worst["se"], worst["p"]))
ck.report()
