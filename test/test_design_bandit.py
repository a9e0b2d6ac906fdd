"""Bandits end to end (src/sql/099_holdout_bandit.sql, src/bandit.c).

1. A three-arm bandit (growthbook_v2) through the registry, exposures, the
   catalogue and refresh, over six periods of generated units with a time
   trend: every unit is assigned by assign() with the weights of its period;
   experiment.update_bandit_weights(force => true) refreshes and publishes.
   Checks: the weights of every period sum to 1 and respect the floor; the
   best arm's weight and its share of new units grow; units keep the variant
   of their first exposure; ruleset() and growthbook_payload() publish the
   current weights (and the GrowthBook SDK assigns new units as assign()
   does); the stored posteriors equal numpy's period-weighted means and
   variances from the raw rows; the weights equal an independent scipy
   quadrature of the top-two rule; the refresh's period-stratified results
   equal numpy's post-stratified estimate (diff, SE, Welch df, p-value);
   bandit_srm against scipy's chi-square; min_units holds the weights still;
   a pg_dump restores to the same ruleset and payload.
2. Simulation (2,000 seeded datasets): with allocations that move towards the
   treatment while the metric trends upward, the period-weighted estimate
   (poststrat_ttest over the periods) is unbiased and its 95% interval
   covers within [93.5%, 96.5%], while the naive pooled Welch estimate is
   biased (its mean off the truth by more than 10 Monte Carlo SEs).
3. Bad declarations: 22023 naming the field.
"""
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import psycopg2
from scipy import integrate, stats

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from exptest import Checker, fresh_db  # noqa: E402

SDK_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sdk")
ARMS = ["control", "a", "b"]                   # range order: control first, then by name
MU = {"control": 1.0, "a": 1.05, "b": 1.25}    # b is best
TREND = 0.3                                     # the metric rises by this much per period
PER_PERIOD = 900
PERIODS = 6
FLOOR = 0.05


def expect_error(ck, cur, sql, code, text):
    try:
        cur.execute("SAVEPOINT s")
        cur.execute(sql)
        ck.check(False, "%s should fail with %s" % (sql, code))
    except psycopg2.Error as e:
        ck.check(e.pgcode == code and text in e.pgerror, "%s: want %s %r, got %s %s" % (sql, code, text, e.pgcode, e.pgerror))
    finally:
        cur.execute("ROLLBACK TO SAVEPOINT s")


def quad_top_two(means, variances, f):
    """The top-two weights by scipy's quad, written from the formulas of doc/designs."""
    mu, sd = np.array(means), np.sqrt(np.array(variances))
    k = len(mu)
    first, second = np.zeros(k), np.zeros(k)
    for i in range(k):
        def cdfs(z):
            x = mu[i] + sd[i] * z
            return np.array([stats.norm.cdf((x - mu[j]) / sd[j]) for j in range(k) if j != i])

        first[i] = integrate.quad(lambda z: stats.norm.pdf(z) * np.prod(cdfs(z)), -12, 12, epsabs=1e-13, limit=500)[0]

        def sec(z):
            c = cdfs(z)
            return stats.norm.pdf(z) * sum((1 - c[j]) * np.prod(np.delete(c, j)) for j in range(len(c)))
        second[i] = integrate.quad(sec, -12, 12, epsabs=1e-13, limit=500)[0]
    first /= first.sum()
    second /= second.sum()
    return f + (1 - k * f) * 0.5 * (first + second), first


def poststrat_oracle(cells, arm_c, arm_t):
    """Post-stratified Welch from the raw values: cells[period][arm] = np.array."""
    ps = sorted(cells)
    n_k = np.array([len(cells[p][arm_c]) + len(cells[p][arm_t]) for p in ps], float)
    w = n_k / n_k.sum()
    d = np.array([cells[p][arm_t].mean() - cells[p][arm_c].mean() for p in ps])
    mc = sum(wk * cells[p][arm_c].mean() for wk, p in zip(w, ps))
    mt = sum(wk * cells[p][arm_t].mean() for wk, p in zip(w, ps))
    diff = float(w @ d)
    parts = []
    for wk, p in zip(w, ps):
        for arm in (arm_c, arm_t):
            x = cells[p][arm]
            parts.append((wk ** 2 * x.var(ddof=1) / len(x), len(x)))
    v1 = sum(v for v, _ in parts)
    # the weights' term less the strata's own noise in it, at least 0 (doc/statistics.md)
    noise = sum((1 - wk) / nk * (parts[2 * k][0] + parts[2 * k + 1][0]) for k, (wk, nk) in enumerate(zip(w, n_k)))
    var = v1 + max(0.0, float(w @ (d - diff) ** 2) / n_k.sum() - noise)
    df = var ** 2 / sum(v ** 2 / (n - 1) for v, n in parts)
    se = np.sqrt(var)
    pval = 2 * stats.t.sf(abs(diff / se), df)
    return mc, mt, diff, se, df, pval


def part_e2e(ck, cur):
    rng = np.random.default_rng(2026)
    cur.execute("""
      CREATE TABLE public.outcomes (user_id text, at timestamptz, value float8);
      INSERT INTO experiment.metrics (name, source, unit_column, time_column, value_column, aggregation, kind, cuped_lookback)
      VALUES ('outcome', 'public.outcomes', 'user_id', 'at', 'value', 'sum', 'mean', NULL);
      SELECT experiment.create_bandit('bb', '[{"name": "control", "allocation": 0.34}, {"name": "a", "allocation": 0.33},
                                             {"name": "b", "allocation": 0.33}]', 'outcome',
                                      period => '1 day', min_weight => %s, min_units => 600, hash_scheme => 'growthbook_v2');
      UPDATE experiment.experiments SET analysis = 'fixed' WHERE id = 'bb';
      SELECT experiment.start('bb');
    """ % FLOOR)
    cur.execute("SELECT period, weights, message FROM experiment.update_bandit_weights('bb')")
    r = cur.fetchone()
    ck.check(r[0] == 0 and r[2].startswith("not due"), "a new period is not due before its time: %s" % (r,))
    cells = {}
    first_variant = {}
    shares = []
    node = shutil.which("node") if os.path.isdir(os.path.join(SDK_DIR, "node_modules", "@growthbook", "growthbook")) else None
    for t in range(PERIODS):
        n0 = len(first_variant)
        ids = ["bu-%d" % (n0 + j) for j in range(PER_PERIOD)]
        cur.execute("SELECT u, experiment.assign(u, 'bb') FROM unnest(%s::text[]) u", (ids,))
        got = cur.fetchall()
        if t == 2 and node:
            cur.execute("SELECT experiment.growthbook_payload()")
            payload = cur.fetchone()[0]
            doc = {"payload": payload, "features": ["bb"], "users": [{"id": u} for u in ids]}
            proc = subprocess.run([node, os.path.join(SDK_DIR, "assign.js")], input=json.dumps(doc), capture_output=True, text=True)
            if ck.check(proc.returncode == 0, "node assign.js: %s" % proc.stderr[:300]):
                sdk = [a[0] for a in json.loads(proc.stdout)["assignments"]]
                ck.check(sdk == [v for _, v in got], "the GrowthBook SDK assigns the new units of period 2 as assign() does")
        cells[t] = {a: [] for a in ARMS}
        rows_x, rows_e = [], []
        for u, v in got:
            first_variant[u] = v
            y = MU[v] + TREND * t + rng.normal(0, 1)
            cells[t][v].append(y)
            rows_x.append(u)
            rows_e.append((u, v, y))
        shares.append(sum(1 for _, v in got if v == "b") / len(got))
        cur.execute("""INSERT INTO experiment.exposures (experiment_id, unit_id, variant, exposed_at)
                       SELECT 'bb', u, v, clock_timestamp() FROM unnest(%s::text[], %s::text[]) AS x(u, v)""",
                    ([r[0] for r in rows_e], [r[1] for r in rows_e]))
        cur.execute("""INSERT INTO public.outcomes SELECT u, xp.exposed_at + interval '1 millisecond', y
                       FROM unnest(%s::text[], %s::float8[]) AS x(u, y)
                       JOIN experiment.exposures xp ON xp.experiment_id = 'bb' AND xp.unit_id = x.u""",
                    ([r[0] for r in rows_e], [r[2] for r in rows_e]))
        for a in ARMS:
            cells[t][a] = np.array(cells[t][a])
        time.sleep(0.05)
        cur.execute("SELECT period, weights, message FROM experiment.update_bandit_weights('bb', force => true)")
        period, weights, message = cur.fetchone()
        if t == 0:
            # 900 units are analysed, min_units is 600: the weights move after the first period
            ck.check(period == 1, "period 0 closes once min_units are analysed: %s" % message)
        ck.close(sum(weights), 1.0, "period %d: weights sum to 1" % period, rel=1e-12)
        ck.check(min(weights) >= FLOOR, "period %d: weights %s respect the floor %s" % (period, weights, FLOOR))
    print("share of arm b among each period's new units: %s" % ["%.3f" % s for s in shares])
    cur.execute("SELECT period, weights, means, variances, units FROM experiment.bandit_periods WHERE experiment_id = 'bb' ORDER BY period")
    periods = cur.fetchall()
    ck.check([p[0] for p in periods] == list(range(PERIODS + 1)), "periods 0 to %d recorded" % PERIODS)
    wb = [p[1][2] for p in periods]
    # (top-two sampling gives a certain leader half of what the floor leaves: f + (1 - k f)/2)
    ck.check(wb[-1] > wb[0] + 0.1 and wb[-1] <= FLOOR + (1 - 3 * FLOOR) / 2 + 1e-12,
             "the best arm's weight grows towards f + (1 - k f)/2: %s" % ["%.3f" % x for x in wb])
    ck.check(shares[-1] > shares[0] + 0.1, "the best arm's share of new units grows: %.3f -> %.3f" % (shares[0], shares[-1]))

    # units keep the variant of their first exposure
    sample = list(first_variant)[:1500]
    cur.execute("SELECT u, experiment.assign(u, 'bb') FROM unnest(%s::text[]) u", (sample,))
    moved = sum(1 for u, v in cur.fetchall() if v != first_variant[u])
    ck.check(moved == 0, "%d of %d exposed units moved after the weights changed" % (moved, len(sample)))

    # a new period is announced on the ruleset channel
    lconn = psycopg2.connect(dbname="exp_design_bandit")
    lconn.autocommit = True
    lcur = lconn.cursor()
    lcur.execute("LISTEN experiment_ruleset")
    cur.execute("SELECT period FROM experiment.update_bandit_weights('bb', force => true)")
    cur.execute("SELECT experiment.ruleset_version()")
    version = cur.fetchone()[0]
    lconn.poll()
    ck.check(any(n.payload == version for n in lconn.notifies), "a new bandit period NOTIFYs experiment_ruleset with the new version")
    lconn.close()
    cur.execute("SELECT period, weights, means, variances, units FROM experiment.bandit_periods WHERE experiment_id = 'bb' ORDER BY period")
    periods = cur.fetchall()[:PERIODS + 1]
    cur.execute("DELETE FROM experiment.bandit_periods WHERE experiment_id = 'bb' AND period > %s", (PERIODS,))

    # ruleset and payload publish the latest weights
    cur.execute("SELECT experiment.ruleset(), experiment.growthbook_payload(), experiment.bandit_allocations('bb')")
    rs, gb, alloc = cur.fetchone()
    x = [e for e in rs["experiments"] if e["id"] == "bb"][0]
    ck.check([v["allocation"] for v in x["variants"]] == alloc and x["bandit"]["period"] == PERIODS,
             "ruleset publishes the current weights and period")
    ck.check(gb["features"]["bb"]["rules"][0]["weights"] == alloc, "growthbook_payload publishes the current weights")
    ck.check(alloc == periods[-1][1], "the current allocation is the last period's")

    # the posteriors of the last update against numpy (all periods but the last, which had no refresh after it...
    # the last update refreshed after period PERIODS - 1: every period 0 .. PERIODS - 1 is in it)
    last = periods[-1]
    n_t = np.array([sum(len(cells[t][a]) for a in ARMS) for t in range(PERIODS)], float)
    wt = n_t / n_t.sum()
    for i, a in enumerate(ARMS):
        m = sum(wt[t] * cells[t][a].mean() for t in range(PERIODS))
        v = sum(wt[t] ** 2 * cells[t][a].var(ddof=1) / len(cells[t][a]) for t in range(PERIODS))
        ck.close(last[2][i], m, "posterior mean of %s" % a, rel=1e-9)
        ck.close(last[3][i], v, "posterior variance of %s" % a, rel=1e-9)
        ck.check(last[4][i] == sum(len(cells[t][a]) for t in range(PERIODS)), "units of %s" % a)
    want_w, _ = quad_top_two(last[2], last[3], FLOOR)
    for i, a in enumerate(ARMS):
        ck.close(last[1][i], want_w[i], "weight of %s against scipy's quad" % a, rel=1e-7, abs_tol=1e-10)

    # the refresh's results: post-stratified on the period against numpy
    cur.execute("""SELECT variant, stratified_by, (test).mean_control, (test).mean_treatment, (test).diff, (test).diff_se,
                          (test).df, (test).p_value
                   FROM experiment.metric_results WHERE experiment_id = 'bb' AND metric = 'outcome' ORDER BY variant""")
    res = cur.fetchall()
    ck.check(len(res) == 2, "results for both treatment arms")
    worst = 0.0
    for variant, strat, mc, mt, diff, se, df, p in res:
        ck.check(strat == "bandit_period", "%s is stratified by bandit_period" % variant)
        o = poststrat_oracle(cells, "control", variant)
        for name, got, want in zip(("mean_control", "mean_treatment", "diff", "diff_se", "df", "p_value"), (mc, mt, diff, se, df, p), o):
            ck.close(got, want, "%s %s against numpy" % (variant, name), rel=1e-7)
            worst = max(worst, abs(got - want) / max(abs(want), 1e-300))
        pooled = np.concatenate([cells[t][variant] for t in range(PERIODS)]).mean() - \
            np.concatenate([cells[t]["control"] for t in range(PERIODS)]).mean()
        print("%s: period-weighted diff %.4f (true %.2f), pooled %.4f" % (variant, diff, MU[variant] - MU["control"], pooled))
    print("largest relative error of the bandit results against numpy: %.2g" % worst)

    # SRM against the units each period's weights lead to expect
    cur.execute("SELECT experiment.bandit_srm('bb')")
    srm = cur.fetchone()[0]
    obs = np.array([sum(len(cells[t][a]) for t in range(PERIODS)) for a in ARMS], float)
    exp = sum(n_t[t] * np.array(periods[t][1]) for t in range(PERIODS))
    ck.close(srm, stats.chisquare(obs, exp * obs.sum() / exp.sum()).pvalue, "bandit_srm against scipy", rel=1e-9)
    ck.check(srm > 0.001, "no sample ratio mismatch (p = %.3g)" % srm)
    cur.execute("SELECT p_value, ok FROM experiment.srm WHERE experiment_id = 'bb' LIMIT 1")
    p_view, ok = cur.fetchone()
    ck.close(p_view, srm, "the srm view of a bandit expects its periods' weights", rel=1e-9)
    cur.execute("""SELECT value, variant, expected_share FROM experiment.srm_by_dimension
                   WHERE experiment_id = 'bb' AND dimension = 'bandit_period' ORDER BY value, variant""")
    per_value = cur.fetchall()
    ck.check(len(per_value) == 3 * PERIODS, "srm_by_dimension has every period and arm")
    for value, variant, share in per_value:
        ck.close(share, periods[int(value)][1][ARMS.index(variant)], "expected share of %s in period %s" % (variant, value), rel=1e-12)


def part_min_units(ck, cur):
    cur.execute("""
      SELECT experiment.create_bandit('slow', '[{"name": "control", "allocation": 0.5}, {"name": "t", "allocation": 0.5}]',
                                      'outcome', min_units => 100000, start => true);
      INSERT INTO experiment.exposures (experiment_id, unit_id, variant, exposed_at)
      SELECT 'slow', 's-' || g, experiment.assign('s-' || g, 'slow'), clock_timestamp() FROM generate_series(1, 300) g;
    """)
    cur.execute("SELECT period, weights, message FROM experiment.update_bandit_weights('slow', force => true)")
    period, weights, message = cur.fetchone()
    ck.check(period == 0 and weights == [0.5, 0.5] and "100000 needed" in message,
             "below min_units the weights stay: %s %s %s" % (period, weights, message))


def part_simulation(ck, cur):
    """Allocation moving towards the treatment while the metric trends: period-weighted vs pooled."""
    rng = np.random.default_rng(7)
    sims, per = 2000, 400
    alloc_t = [0.5, 0.3, 0.15, 0.1]     # the control's share falls period by period
    base = [0.0, 1.0, 2.0, 3.0]          # the metric rises
    effect = 0.1
    rows = []
    for s in range(sims):
        for p, (ac, b) in enumerate(zip(alloc_t, base)):
            nc = rng.binomial(per, ac)
            for arm, n, mu in (("c", nc, b), ("t", per - nc, b + effect)):
                y = rng.normal(mu, 1.0, n)
                rows.append((s, p, arm, n, float(y.sum()), float((y ** 2).sum())))
    cur.execute("CREATE TEMP TABLE sim (s int, p int, arm text, n bigint, sy float8, syy float8)")
    for i in range(0, len(rows), 4000):
        cur.execute("INSERT INTO sim VALUES " + ",".join(cur.mogrify("(%s,%s,%s,%s,%s,%s)", r).decode() for r in rows[i:i + 4000]))
    cur.execute("""
      WITH m AS (SELECT s, p, arm, experiment.moments_from_sums(n, sy, syy) AS m FROM sim)
      SELECT (experiment.poststrat_ttest('welch', array_agg(m ORDER BY p) FILTER (WHERE arm = 'c'),
                                                  array_agg(m ORDER BY p) FILTER (WHERE arm = 't'))).*,
             (experiment.welch_ttest(experiment.merge(m) FILTER (WHERE arm = 'c'), experiment.merge(m) FILTER (WHERE arm = 't'))).diff
      FROM m GROUP BY s ORDER BY s""")
    res = cur.fetchall()
    cols = [d[0] for d in cur.description]
    di, lo, hi = cols.index("diff"), cols.index("diff_lower"), cols.index("diff_upper")
    pw = np.array([r[di] for r in res])
    pooled = np.array([r[-1] for r in res])
    cover = np.mean([r[lo] <= effect <= r[hi] for r in res])
    z_pw = (pw.mean() - effect) / (pw.std(ddof=1) / np.sqrt(sims))
    z_pool = (pooled.mean() - effect) / (pooled.std(ddof=1) / np.sqrt(sims))
    print("simulation, %d datasets: period-weighted mean %.4f (bias %.1f SE), pooled mean %.4f (bias %.1f SE), "
          "truth %.2f; coverage of the period-weighted 95%% interval %.1f%%"
          % (sims, pw.mean(), z_pw, pooled.mean(), z_pool, effect, 100 * cover))
    ck.check(abs(z_pw) < 3.5, "the period-weighted estimate is unbiased (%.1f SE)" % z_pw)
    ck.check(abs(z_pool) > 10, "the pooled estimate is biased (%.1f SE)" % z_pool)
    ck.check(0.935 <= cover <= 0.965, "coverage of the period-weighted interval %.3f in [0.935, 0.965]" % cover)


def part_refusals(ck, cur):
    cur.execute("""
      INSERT INTO experiment.metrics (name, source, unit_column, time_column, value_column, aggregation, kind)
      VALUES ('outcome_count', 'public.outcomes', 'user_id', 'at', NULL, 'count', 'mean');
      INSERT INTO experiment.metrics (name, kind, numerator, denominator) VALUES ('per_count', 'ratio', 'outcome', 'outcome_count');
    """)
    v2 = '[{"name": "control", "allocation": 0.5}, {"name": "t", "allocation": 0.5}]'
    v3 = '[{"name": "control", "allocation": 0.4}, {"name": "t", "allocation": 0.3}, {"name": "u", "allocation": 0.3}]'
    expect_error(ck, cur, "SELECT experiment.create_bandit('x', '%s', 'nope')" % v2, "22023", 'metric "nope" of bandit "x" does not exist')
    expect_error(ck, cur, "SELECT experiment.create_bandit('x', '%s', 'per_count')" % v2, "22023",
                 'invalid kind of the metric "ratio" of bandit "x"')
    expect_error(ck, cur, "SELECT experiment.create_bandit('x', '%s', 'outcome', min_weight => 0.4)" % v3, "22023",
                 'min_weight of bandit "x" must be in [0, 1/3] for its 3 arms, got 0.4')
    expect_error(ck, cur, "SELECT experiment.create_bandit('x', '%s', 'outcome', min_weight => 1)" % v2, "22023",
                 'min_weight of bandit "x" must be in [0, 1/k]')
    expect_error(ck, cur, "SELECT experiment.create_bandit('x', '%s', 'outcome', period => '0')" % v2, "22023",
                 'period of bandit "x" must be a positive interval')
    expect_error(ck, cur, "SELECT experiment.create_bandit('x', '%s', 'outcome', min_units => 0)" % v2, "22023",
                 'min_units of bandit "x" must be positive')
    expect_error(ck, cur, "SELECT * FROM experiment.update_bandit_weights('nope')", "22023", 'experiment "nope" does not exist')
    cur.execute("SELECT experiment.create_experiment('plain', '%s')" % v2)
    expect_error(ck, cur, "SELECT * FROM experiment.update_bandit_weights('plain')", "22023", 'experiment "plain" is not a bandit')
    expect_error(ck, cur, "UPDATE experiment.bandits SET min_weight = 0.2 WHERE experiment_id = 'bb'", "22023",
                 'cannot change the bandit settings of experiment "bb": it is running')
    expect_error(ck, cur, "INSERT INTO experiment.dimensions (experiment_id, name, attribute) VALUES ('bb', 'd', 'nope')", "22023",
                 'Use client, app_version, attributes or bandit_period')


def part_dump(ck, cur):
    """pg_dump keeps the holdouts and bandits: a restored copy publishes the same ruleset and payload."""
    bindir = os.environ.get("PG_BINDIR", "/usr/lib/postgresql/15/bin")
    dst = "exp_design_bandit_restored"
    dump = subprocess.run([os.path.join(bindir, "pg_dump"), "-d", "exp_design_bandit"], capture_output=True, text=True)
    ck.check(dump.returncode == 0, "pg_dump: %s" % dump.stderr[-300:])
    admin = psycopg2.connect(dbname="postgres")
    admin.autocommit = True
    admin.cursor().execute('DROP DATABASE IF EXISTS "%s" WITH (FORCE)' % dst)
    admin.cursor().execute('CREATE DATABASE "%s"' % dst)
    r = subprocess.run([os.path.join(bindir, "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", dst],
                       input=dump.stdout, capture_output=True, text=True)
    ck.check(r.returncode == 0, "the dump restores: %s" % r.stderr[-500:])
    c2 = psycopg2.connect(dbname=dst)
    q = ("SELECT experiment.ruleset(), experiment.growthbook_payload(), "
         "(SELECT count(*) FROM experiment.holdout_members), (SELECT count(*) FROM experiment.bandit_periods)")
    cur.execute(q)
    want = cur.fetchone()
    k = c2.cursor()
    k.execute(q)
    ck.check(k.fetchone() == want, "the restored database publishes the same ruleset and payload")
    c2.close()
    admin.cursor().execute('DROP DATABASE IF EXISTS "%s" WITH (FORCE)' % dst)
    admin.close()


def main():
    ck = Checker("test_design_bandit")
    conn = fresh_db("exp_design_bandit")
    cur = conn.cursor()
    part_e2e(ck, cur)
    part_min_units(ck, cur)
    part_dump(ck, cur)
    part_simulation(ck, cur)
    conn.autocommit = False
    part_refusals(ck, cur)
    conn.rollback()
    ck.report()


if __name__ == "__main__":
    main()
