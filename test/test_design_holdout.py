"""Long-term holdouts end to end (src/sql/099_holdout_bandit.sql).

1. 100,000 units against a registry with two holdouts: "ho" (sha256, 3%)
   over a listed experiment and every experiment of layer L, and "gho"
   (growthbook_v2, 5%) over two GrowthBook experiments, one of them in a
   namespace. No held-out unit is ever assigned to a member, in SQL
   (assign()), before and after a member ramps its traffic up, and through
   the GrowthBook JavaScript SDK evaluating growthbook_payload() (its rules'
   filters); the SDK assigns every unit as assign() does. The held-out shares
   are within 5 binomial standard errors of the declared ones, and the
   members assign the other units at their traffic.
2. The holdout readout: a generated 120-day holdout (4,000 held-out and
   exposed units, exposures over 60 days) with a planted cumulative effect
   of +0.8 on revenue per unit for the exposed; refresh() of the holdout
   against scipy's Welch test on the raw per-unit sums (diff, SE, p-value,
   interval to 1e-9) and the planted effect inside the 95% interval.
3. A pg_dump restores to the same ruleset and payload.
4. Bad declarations and changes that would move units: 22023 naming the field.
"""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import psycopg2
from scipy import stats

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from exptest import Checker, fresh_db, skip  # noqa: E402

N_UNITS = 100_000
SDK_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sdk")


def sdk_node():
    """node, with the GrowthBook SDK of test/sdk installed; None when it cannot run here."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        return None
    if not os.path.isdir(os.path.join(SDK_DIR, "node_modules", "@growthbook", "growthbook")):
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=SDK_DIR, capture_output=True, timeout=600)
    if not os.path.isdir(os.path.join(SDK_DIR, "node_modules", "@growthbook", "growthbook")):
        return None
    return node


def expect_error(ck, cur, sql, code, text):
    try:
        cur.execute("SAVEPOINT s")
        cur.execute(sql)
        ck.check(False, "%s should fail with %s" % (sql, code))
    except psycopg2.Error as e:
        ck.check(e.pgcode == code and text in e.pgerror, "%s: want %s %r, got %s %s" % (sql, code, text, e.pgcode, e.pgerror))
    finally:
        cur.execute("ROLLBACK TO SAVEPOINT s")


def registry(ck, cur):
    cur.execute("""
      SELECT experiment.create_experiment('m-list', '[{"name": "control", "allocation": 0.5}, {"name": "treatment", "allocation": 0.5}]', traffic => 0.5);
      SELECT experiment.create_experiment('m-layer-a', '[{"name": "control", "allocation": 0.5}, {"name": "treatment", "allocation": 0.5}]',
                                          layer => 'L', layer_start => 0, layer_end => 0.6);
      SELECT experiment.create_experiment('m-layer-b', '[{"name": "a", "allocation": 0.3}, {"name": "b", "allocation": 0.3}, {"name": "c", "allocation": 0.4}]',
                                          layer => 'L', layer_start => 0.6, layer_end => 1, hash_scheme => 'eppo');
      SELECT experiment.create_experiment('outsider', '[{"name": "control", "allocation": 0.5}, {"name": "treatment", "allocation": 0.5}]');
      SELECT experiment.create_holdout('ho', 0.03, experiments => ARRAY['m-list'], layer => 'L');
      SELECT experiment.create_experiment('g-plain', '[{"name": "control", "allocation": 0.5}, {"name": "treatment", "allocation": 0.5}]',
                                          hash_scheme => 'growthbook_v2');
      SELECT experiment.create_experiment('g-ns', '[{"name": "control", "allocation": 0.4}, {"name": "treatment", "allocation": 0.6}]',
                                          hash_scheme => 'growthbook_v2', layer => 'NS', layer_start => 0.2, layer_end => 0.9, traffic => 0.8);
      SELECT experiment.create_holdout('gho', 0.05, experiments => ARRAY['g-plain', 'g-ns'], hash_scheme => 'growthbook_v2');
    """)
    for x in ("m-list", "m-layer-a", "m-layer-b", "outsider", "g-plain", "g-ns"):
        cur.execute("SELECT experiment.start(%s)", (x,))


MEMBERS = ["m-list", "m-layer-a", "m-layer-b", "outsider", "g-plain", "g-ns"]
OF_HO = {"m-list", "m-layer-a", "m-layer-b"}
OF_GHO = {"g-plain", "g-ns"}
SAMPLE = 5000


def assign_rows(cur, where):
    """(id, h1, h2, assign to ho, to gho, to each member) for the units of table ids matching where."""
    cols = ", ".join("experiment.assign(id, %s)" % psycopg2.extensions.adapt(m).getquoted().decode() for m in MEMBERS)
    cur.execute("SELECT id, h1, h2, experiment.assign(id, 'ho'), experiment.assign(id, 'gho'), %s FROM ids WHERE %s ORDER BY n"
                % (cols, where))
    return cur.fetchall()


def check_no_held_out(ck, rows, label):
    bad = 0
    for r in rows:
        for j, m in enumerate(MEMBERS):
            if r[5 + j] is not None and ((m in OF_HO and r[1]) or (m in OF_GHO and r[2])):
                bad += 1
    ck.check(bad == 0, "%s: %d assignments of held-out units to members" % (label, bad))


def part_registry(ck, cur):
    registry(ck, cur)
    # who is held out, from the hash functions alone: sha256 buckets below 300 of 10000 for ho,
    # GrowthBook v2 hashes below 0.05 for gho
    cur.execute("""CREATE TEMP TABLE ids AS
                   SELECT g AS n, 'user-' || g AS id,
                          experiment.bucket('user-' || g, 'ho') < 300 AS h1,
                          experiment.growthbook_hash('gho', 'user-' || g, 2) < 0.05 AS h2
                   FROM generate_series(1, %s) g""" % N_UNITS)
    cur.execute("SELECT count(*) FILTER (WHERE h1), count(*) FILTER (WHERE h2) FROM ids")
    k1, k2 = cur.fetchone()
    for k, share, name in ((k1, 0.03, "ho"), (k2, 0.05, "gho")):
        se = np.sqrt(share * (1 - share) / N_UNITS)
        ck.check(abs(k / N_UNITS - share) < 5 * se, "%s holds out %d of %d units (declared %.2f)" % (name, k, N_UNITS, share))
    held = assign_rows(cur, "h1 OR h2")
    sample = assign_rows(cur, "n <= %d" % SAMPLE)
    print("%d held-out units of %d, each tried against the %d members; a sample of %d units in full"
          % (len(held), N_UNITS, len(MEMBERS), SAMPLE))
    check_no_held_out(ck, held, "SQL, every held-out unit of 100,000")
    check_no_held_out(ck, sample, "SQL, the sample")
    for r in held + sample:
        if r[3] != ("holdout" if r[1] else "exposed") or r[4] != ("holdout" if r[2] else "exposed"):
            ck.check(False, "assign() to the holdouts of %s: %s %s, hashes say %s %s" % (r[0], r[3], r[4], r[1], r[2]))
            break
    else:
        ck.check(True, "assign() to a holdout is holdout exactly for the units its hash holds out")
    free = [r for r in sample if not r[1]]
    k = sum(1 for r in free if r[5] is not None)
    ck.check(abs(k / len(free) - 0.5) < 5 * np.sqrt(0.25 / len(free)), "m-list assigns %d of %d units outside the holdout" % (k, len(free)))
    ck.check(all(r[8] is not None for r in held + sample), "an experiment outside the holdouts assigns held-out units too")
    ck.check(all((r[6] is not None) != (r[7] is not None) for r in free), "outside the holdout, layer L's experiments split every unit")
    ck.check(any(r[1] for r in held) and any(r[2] for r in held), "both holdouts hold units out")

    # ramp-safe: m-list ramps to 100%; nobody assigned moves, still no held-out unit
    cur.execute("UPDATE experiment.experiments SET traffic = 1 WHERE id = 'm-list'")
    held2 = assign_rows(cur, "h1 OR h2")
    sample2 = assign_rows(cur, "n <= %d" % SAMPLE)
    check_no_held_out(ck, held2, "SQL after the ramp, every held-out unit")
    moved = sum(1 for a, b in zip(sample, sample2) if a[5] is not None and a[5] != b[5])
    ck.check(moved == 0, "ramping m-list up moved %d units" % moved)
    ck.check(all((b[5] is not None) == (not b[1]) for b in sample2), "at 100%% m-list assigns exactly the units not held out")

    # the ruleset names the holdouts of each member
    cur.execute("SELECT experiment.ruleset()")
    rs = {x["id"]: x for x in cur.fetchone()[0]["experiments"]}
    ck.check([h["id"] for h in rs["m-layer-b"].get("holdouts", [])] == ["ho"], "ruleset: m-layer-b lists holdout ho")
    ck.check("holdouts" not in rs["outsider"], "ruleset: outsider lists no holdout")
    ck.check(rs["g-ns"]["holdouts"][0]["ranges"] == [[0, 0.05]], "ruleset: gho's held-out range is [0, 0.05)")

    # the GrowthBook SDK on the payload, for all 100,000 units
    node = sdk_node()
    if node is None:
        if os.environ.get("CI") == "true":
            ck.check(False, "the GrowthBook SDK (node, npm ci in test/sdk) is not available")
        else:
            print("note: the GrowthBook SDK is not available here; its part is left out")
        return
    cur.execute("SELECT experiment.growthbook_payload()")
    payload = cur.fetchone()[0]
    ck.check("filters" in payload["features"]["g-ns"]["rules"][0], "payload: g-ns's rule has gho's filter")
    ck.check("filters" not in payload["features"]["gho"]["rules"][0], "payload: the holdout's own rule has no filter")
    cur.execute("SELECT id, h2 FROM ids ORDER BY n")
    everyone = cur.fetchall()
    doc = {"payload": payload, "features": ["g-plain", "g-ns", "gho"], "users": [{"id": r[0]} for r in everyone]}
    proc = subprocess.run([node, os.path.join(SDK_DIR, "assign.js")], input=json.dumps(doc), capture_output=True, text=True)
    if not ck.check(proc.returncode == 0, "node assign.js exited with %d: %s" % (proc.returncode, proc.stderr[:500])):
        return
    out = json.loads(proc.stdout)
    sdk = out["assignments"]
    bad = sum(1 for (uid, h2), s in zip(everyone, sdk) if h2 and (s[0] is not None or s[1] is not None))
    ck.check(bad == 0, "GrowthBook SDK %s: %d held-out units of %d assigned to a member" % (out["sdk_version"], bad, N_UNITS))
    ck.check(all(s[2] == ("holdout" if h2 else "exposed") for (uid, h2), s in zip(everyone, sdk)),
             "GrowthBook SDK: the holdout feature says holdout exactly for the held-out units")
    by_id = {uid: s for (uid, h2), s in zip(everyone, sdk)}
    mism = [(r[0], by_id[r[0]], [r[9], r[10], r[4]]) for r in held2 + sample2 if by_id[r[0]] != [r[9], r[10], r[4]]]
    diff = len(mism)
    for m in mism[:5]:
        print("differs: %s SDK %s, assign() %s" % m)
    ck.check(diff == 0, "GrowthBook SDK %s assigns %d of %d units differently from assign()" % (out["sdk_version"], diff, len(held2) + len(sample2)))
    print("GrowthBook SDK %s: %d units, none held out assigned; the %d compared with assign() agree"
          % (out["sdk_version"], N_UNITS, len(held2) + len(sample2)))


def part_readout(ck, cur):
    rng = np.random.default_rng(13)
    cur.execute("""
      SELECT experiment.create_experiment('shipped-1', '[{"name": "control", "allocation": 0.5}, {"name": "treatment", "allocation": 0.5}]');
      SELECT experiment.create_holdout('long', 0.5, experiments => ARRAY['shipped-1'], start => false);
      UPDATE experiment.experiments SET analysis = 'fixed' WHERE id = 'long';
      SELECT experiment.start('long');
      UPDATE experiment.experiments SET start_at = now() - interval '120 days' WHERE id = 'long';
      CREATE TABLE public.revenue (user_id text, at timestamptz, amount float8);
      INSERT INTO experiment.metrics (name, source, unit_column, time_column, value_column, aggregation, kind, cuped_lookback)
      VALUES ('revenue', 'public.revenue', 'user_id', 'at', 'amount', 'sum', 'mean', NULL);
      INSERT INTO experiment.experiment_metrics (experiment_id, metric, role) VALUES ('long', 'revenue', 'primary');
    """)
    n = 4000
    cur.execute("SELECT 'r-' || g, experiment.assign('r-' || g, 'long') FROM generate_series(1, %s) g" % n)
    units = cur.fetchall()
    effect = 0.8
    per_unit = {"holdout": [], "exposed": []}
    expo, events = [], []
    for uid, arm in units:
        day = float(rng.uniform(0, 60))
        expo.append((uid, arm, day))
        k = int(rng.poisson(3))
        amounts = rng.exponential(10.0 / 3, k) if k else np.zeros(0)
        total = float(amounts.sum()) + (effect if arm == "exposed" else 0.0)
        after = rng.uniform(0.01, 59, k + 1)
        for a, dt in zip(list(amounts) + ([effect] if arm == "exposed" else []), after):
            events.append((uid, day + float(dt), float(a)))
        per_unit[arm].append(total)
    cur.execute("CREATE TEMP TABLE xp (u text, v text, d float8)")
    cur.execute("INSERT INTO xp VALUES " + ",".join(cur.mogrify("(%s,%s,%s)", r).decode() for r in expo))
    cur.execute("""INSERT INTO experiment.exposures (experiment_id, unit_id, variant, exposed_at)
                   SELECT 'long', u, v, x.start_at + d * interval '1 day' FROM xp, experiment.experiments x WHERE x.id = 'long'""")
    cur.execute("CREATE TEMP TABLE ev (u text, d float8, a float8)")
    for i in range(0, len(events), 20000):
        cur.execute("INSERT INTO ev VALUES " + ",".join(cur.mogrify("(%s,%s,%s)", r).decode() for r in events[i:i + 20000]))
    cur.execute("""INSERT INTO public.revenue SELECT u, x.start_at + d * interval '1 day', a
                   FROM ev, experiment.experiments x WHERE x.id = 'long'""")
    cur.execute("SELECT experiment.refresh('long')")
    cur.execute("""SELECT n_control, n_treatment, mean_control, mean_treatment, diff, diff_lower, diff_upper, p_value, diff_se
                   FROM experiment.metric_results r, LATERAL (SELECT (r.test).*) t
                   WHERE experiment_id = 'long' AND metric = 'revenue'""")
    row = cur.fetchone()
    ck.check(row is not None, "refresh('long') stored a result for revenue")
    if row is None:
        return
    nc, nt, mc, mt, diff, lo, hi, p, se = row
    c, t = np.array(per_unit["holdout"]), np.array(per_unit["exposed"])
    w = stats.ttest_ind(t, c, equal_var=False)
    want_se = np.sqrt(c.var(ddof=1) / len(c) + t.var(ddof=1) / len(t))
    df = want_se ** 4 / ((c.var(ddof=1) / len(c)) ** 2 / (len(c) - 1) + (t.var(ddof=1) / len(t)) ** 2 / (len(t) - 1))
    q = stats.t.ppf(0.975, df)
    ck.check((nc, nt) == (len(c), len(t)), "units: %s, %s against %d, %d" % (nc, nt, len(c), len(t)))
    ck.close(mc, c.mean(), "holdout mean", rel=1e-9)
    ck.close(mt, t.mean(), "exposed mean", rel=1e-9)
    ck.close(diff, t.mean() - c.mean(), "diff", rel=1e-9)
    ck.close(se, want_se, "diff SE", rel=1e-9)
    ck.close(p, w.pvalue, "p-value against scipy's Welch test", rel=1e-7)
    ck.close(lo, t.mean() - c.mean() - q * want_se, "lower bound", rel=1e-9)
    ck.close(hi, t.mean() - c.mean() + q * want_se, "upper bound", rel=1e-9)
    ck.check(lo < effect < hi, "the planted cumulative effect %.2f is in [%.3f, %.3f]" % (effect, lo, hi))
    ck.check(p < 0.05, "the planted effect is detected (p = %.3g)" % p)
    print("holdout readout: diff %.4f [%.4f, %.4f], planted %.2f, p = %.3g" % (diff, lo, hi, effect, p))


def part_refusals(ck, cur):
    cur.execute("""
      SELECT experiment.create_experiment('r-run', '[{"name": "control", "allocation": 0.5}, {"name": "treatment", "allocation": 0.5}]', start => true);
      SELECT experiment.create_experiment('r-draft', '[{"name": "control", "allocation": 0.5}, {"name": "treatment", "allocation": 0.5}]');
      SELECT experiment.create_experiment('r-gb', '[{"name": "control", "allocation": 0.5}, {"name": "treatment", "allocation": 0.5}]', hash_scheme => 'growthbook_v2');
    """)
    expect_error(ck, cur, "SELECT experiment.create_holdout('h0', 0, experiments => ARRAY['r-draft'])", "22023", "share of holdout 'h0' must be in (0, 1)")
    expect_error(ck, cur, "SELECT experiment.create_holdout('h0', 1, experiments => ARRAY['r-draft'])", "22023", "share of holdout 'h0' must be in (0, 1)")
    expect_error(ck, cur, "SELECT experiment.create_holdout('h0', 0.1)", "22023", "needs experiments or a layer")
    # a running experiment joins only if no unit the holdout holds out was exposed to it
    cur.execute("""INSERT INTO experiment.exposures (experiment_id, unit_id, variant, exposed_at)
                   SELECT 'r-run', 'user-' || g, experiment.assign('user-' || g, 'r-run'), now() FROM generate_series(1, 100) g""")
    expect_error(ck, cur, "SELECT experiment.create_holdout('h0', 0.1, experiments => ARRAY['r-run'])", "22023",
                 'cannot add experiment "r-run" to holdout "h0": the experiment is running and has exposures of units the holdout holds out')
    cur.execute("""SELECT experiment.create_experiment('r-run2', '[{"name": "control", "allocation": 0.5}, {"name": "treatment", "allocation": 0.5}]', start => true);
                   INSERT INTO experiment.exposures (experiment_id, unit_id, variant, exposed_at)
                   SELECT 'r-run2', 'user-' || g, experiment.assign('user-' || g, 'r-run2'), now() FROM generate_series(1, 300) g
                   WHERE experiment.bucket('user-' || g, 'h9') >= 1000;
                   SELECT experiment.create_holdout('h9', 0.1, experiments => ARRAY['r-run2'])""")
    cur.execute("""SELECT count(*) FROM experiment.exposures xp WHERE xp.experiment_id = 'r-run2'
                   AND experiment.held_out(xp.unit_id, 'r-run2')""")
    k = cur.fetchone()[0]
    ck.check(k == 0, "a holdout whose held-out units were never exposed to a running experiment may take it (%d exposed units held out)" % k)
    expect_error(ck, cur, "SELECT experiment.create_holdout('h0', 0.1, experiments => ARRAY['r-gb'])", "22023",
                 'experiment "r-gb" (hash_scheme growthbook_v2) cannot be a member of holdout "h0" (hash_scheme sha256)')
    expect_error(ck, cur, "SELECT experiment.create_holdout('h0', 0.1, experiments => ARRAY['nope'])", "22023", 'experiment "nope" does not exist')
    cur.execute("""INSERT INTO experiment.exposures (experiment_id, unit_id, variant, exposed_at)
                   SELECT 'm-layer-a', id, experiment.assign(id, 'm-layer-a'), now() FROM ids
                   WHERE n <= 3000 AND experiment.assign(id, 'm-layer-a') IS NOT NULL""")
    expect_error(ck, cur, "SELECT experiment.create_holdout('h0', 0.1, layer => 'L')", "22023",
                 'cannot add experiment "m-layer-a" to holdout "h0": the experiment is running and has exposures')
    cur.execute("SELECT experiment.create_holdout('h1', 0.1, experiments => ARRAY['r-draft'], start => false)")
    expect_error(ck, cur, "SELECT experiment.start('r-draft')", "22023", 'cannot start experiment "r-draft": its holdout "h1" is in draft')
    expect_error(ck, cur, "UPDATE experiment.experiments SET traffic = 0.5 WHERE id = 'h1'", "22023",
                 'holdout "h1" must have traffic 1, no layer and no targeting')
    expect_error(ck, cur, """UPDATE experiment.experiments SET targeting = '{"country": "SG"}' WHERE id = 'ho'""", "22023",
                 'holdout "ho" must have traffic 1, no layer and no targeting')
    expect_error(ck, cur, "DELETE FROM experiment.holdout_members WHERE holdout_id = 'ho' AND experiment_id = 'm-list'", "22023",
                 'cannot remove experiment "m-list" from holdout "ho": the experiment is running')
    expect_error(ck, cur, "UPDATE experiment.holdouts SET layer = NULL WHERE holdout_id = 'ho'", "22023",
                 'cannot remove experiment "m-layer-a" from holdout "ho": the experiment is running')
    expect_error(ck, cur, "INSERT INTO experiment.holdout_members VALUES ('ho', 'gho')", "22023",
                 'experiment "gho" is a holdout and cannot be a member of holdout "ho"')
    expect_error(ck, cur, "INSERT INTO experiment.holdout_members VALUES ('ho', 'ho')", "22023",
                 'experiment "ho" is a holdout and cannot be a member of holdout "ho"')
    cur.execute("SELECT experiment.start('h1'); SELECT experiment.start('r-draft')")
    ck.check(True, "a member starts once its holdout has")
    # concluding the holdout releases its units, and then the members may leave it
    cur.execute("UPDATE experiment.experiments SET status = 'concluded' WHERE id = 'h1'")
    cur.execute("SELECT count(*) FROM generate_series(1, 2000) g WHERE experiment.held_out('user-' || g, 'r-draft')")
    ck.check(cur.fetchone()[0] == 0, "a concluded holdout holds nobody out")
    cur.execute("DELETE FROM experiment.holdout_members WHERE holdout_id = 'h1'")
    ck.check(True, "members leave a concluded holdout")


def part_dump(ck, cur):
    """pg_dump keeps the holdouts and bandits: a restored copy publishes the same ruleset and payload."""
    bindir = os.environ.get("PG_BINDIR", "/usr/lib/postgresql/15/bin")
    dst = "exp_design_holdout_restored"
    dump = subprocess.run([os.path.join(bindir, "pg_dump"), "-d", "exp_design_holdout"], capture_output=True, text=True)
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
    ck = Checker("test_design_holdout")
    conn = fresh_db("exp_design_holdout")
    cur = conn.cursor()
    part_registry(ck, cur)
    part_readout(ck, cur)
    part_dump(ck, cur)
    conn.autocommit = False
    part_refusals(ck, cur)
    conn.rollback()
    ck.report()


if __name__ == "__main__":
    main()
