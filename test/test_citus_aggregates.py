"""The mergeable states on a real Citus cluster: experiment.moments and experiment.sketch.

A coordinator and two workers (Citus 13.0.5 built from ../shared/vendor into a
private copy of PostgreSQL, test/lib/citus.py). A table of 200,000 rows is
distributed on its unit column over 8 shards; the same rows are kept in a local
table on the coordinator. Checked:
- grouped and ungrouped experiment.moments(y), moments(y, x) and experiment.sketch(y)
  over the distributed table equal those over the local one (sketches exactly: the
  merge of sketches is the sketch of the union; moments to 1e-12, the additions
  being in another order), and so do quantile(), merge() of per-unit sketches and
  quantile_test() / welch_ttest() on them;
- the aggregates are pushed to the workers as partial aggregates: the remote
  commands (citus.log_remote_commands) carry worker_partial_agg() and never the
  column's rows (no remote "SELECT ... y" without an aggregate).
Skips when the Citus archive is absent.
"""
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from exptest import Checker, skip  # noqa: E402

import citus  # noqa: E402

if not citus.available():
    skip("Citus 13.0.5 source archive not found at %s" % citus.ARCHIVE)

ck = Checker("test_citus_aggregates")
bindir = citus.installation()
cl = citus.Cluster(bindir, workers=2)
try:
    # (Citus creates the extension on the workers too)
    conn = cl.connect()
    cur = conn.cursor()
    cur.execute("CREATE EXTENSION experiment")
    cur.execute("SELECT extversion FROM pg_extension WHERE extname = 'experiment'")
    version = cur.fetchall()
    for port in cl.ports[1:]:
        c = cl.connect(port=port)
        cw = c.cursor()
        cw.execute("SELECT extversion FROM pg_extension WHERE extname = 'experiment'")
        ck.check(cw.fetchall() == version, "the extension (%s) is on the worker at port %d" % (version, port))
        c.close()

    def q(sql, args=None):
        cur.execute(sql, args)
        return cur.fetchall() if cur.description else None

    q("""CREATE TABLE ev_local AS
         SELECT 'u' || (i % 20000) AS unit_id, i % 3 AS g,
                exp(6.0 + 0.7 * sin(i * 12.9898) + 0.3 * cos(i * 78.233)) AS y,
                (i % 7)::float8 + 0.5 * sin(i * 3.1) AS x
         FROM generate_series(1, 200000) i""")
    q("CREATE TABLE ev (LIKE ev_local)")
    q("SELECT create_distributed_table('ev', 'unit_id')")
    q("INSERT INTO ev SELECT * FROM ev_local")
    (nsh,), = q("SELECT count(*) FROM pg_dist_shard WHERE logicalrelid = 'ev'::regclass")
    (nw,), = q("SELECT count(DISTINCT nodeport) FROM citus_shards WHERE table_name = 'ev'::regclass")
    ck.check(nsh == 8 and nw == 2, "ev: %d shards on %d workers" % (nsh, nw))

    def moments_close(got, want, what):
        """equal up to the order of the additions: means to 1e-12 relative, each co-moment to 1e-12
        of the scale sqrt(C_ii C_jj) (a covariance near 0 has no relative precision)"""
        g, w = json.loads(got), json.loads(want)
        ck.check(g["n"] == w["n"], "%s: n %r, want %r" % (what, g["n"], w["n"]))
        for a, b in zip(g["mean"], w["mean"]):
            ck.close(a, b, what + " (mean)", rel=1e-12)
        cw = w["comoment"]
        for i, row in enumerate(g["comoment"]):
            for j, a in enumerate(row):
                scale = abs(cw[i][i] * cw[j][j]) ** 0.5
                ck.close(a, cw[i][j], "%s (co-moment %d,%d)" % (what, i, j), rel=1e-12, abs_tol=1e-12 * scale)

    grouped = """SELECT g, experiment.moments(y)::text, experiment.moments(y, x)::text, experiment.sketch(y)::text,
                        experiment.quantile(experiment.sketch(y), 0.99)
                 FROM {t} GROUP BY g ORDER BY g"""
    loc = q(grouped.format(t="ev_local"))
    cur.execute("SET citus.log_remote_commands = on")
    cur.execute("SET client_min_messages = log")
    del conn.notices[:]
    dist = q(grouped.format(t="ev"))
    remote = [n for n in conn.notices if "issuing" in n.lower()]
    cur.execute("RESET client_min_messages")
    cur.execute("RESET citus.log_remote_commands")
    ck.check(len(dist) == len(loc) == 3, "three groups (%d, %d)" % (len(dist), len(loc)))
    for a, b in zip(dist, loc):
        moments_close(a[1], b[1], "group %s: moments(y) distributed vs local" % a[0])
        moments_close(a[2], b[2], "group %s: moments(y, x) distributed vs local" % a[0])
        ck.check(a[3] == b[3], "group %s: sketch(y) distributed equals local exactly" % a[0])
        ck.check(a[4] == b[4], "group %s: its p99 %r, local %r" % (a[0], a[4], b[4]))
    ck.check(len(remote) >= nsh, "the grouped query ran on every shard (%d remote commands)" % len(remote))
    ck.check(all("worker_partial_agg" in n for n in remote if "SELECT" in n),
             "every remote SELECT is a partial aggregate (worker_partial_agg):\n%s" % "\n".join(remote[:3]))
    ck.check(any("worker_partial_agg" in n and "sketch" in n for n in remote),
             "the sketch aggregate is among the partial aggregates")

    # ungrouped, and merge() of per-unit sketches (a sketch per unit, merged per arm)
    ungrouped = """SELECT experiment.sketch(y)::text, experiment.moments(y)::text FROM {t}"""
    a, b = q(ungrouped.format(t="ev"))[0], q(ungrouped.format(t="ev_local"))[0]
    ck.check(a[0] == b[0], "ungrouped sketch distributed equals local")
    moments_close(a[1], b[1], "ungrouped moments distributed vs local")
    per_unit = """WITH u AS (SELECT unit_id, g, experiment.sketch(y) AS s, experiment.moments(y) AS m
                             FROM {t} GROUP BY unit_id, g)
                  SELECT g, experiment.merge(s)::text, experiment.merge(m)::text FROM u GROUP BY g ORDER BY g"""
    for a, b in zip(q(per_unit.format(t="ev")), q(per_unit.format(t="ev_local"))):
        ck.check(a[1] == b[1], "group %s: merge of per-unit sketches distributed equals local" % a[0])
        moments_close(a[2], b[2], "group %s: merge of per-unit moments distributed vs local" % a[0])

    # the tests on the distributed states equal those on the local ones
    tests = """WITH s AS (SELECT g, experiment.sketch(y) AS s, experiment.moments(y) AS m FROM {t} GROUP BY g)
               SELECT (experiment.quantile_test(c.s, t.s, 0.9)).*, (experiment.welch_ttest(c.m, t.m)).p_value
               FROM s c, s t WHERE c.g = 0 AND t.g = 1"""
    a, b = q(tests.format(t="ev"))[0], q(tests.format(t="ev_local"))[0]
    for k, (x, y) in enumerate(zip(a, b)):
        if isinstance(x, float):
            ck.close(x, y, "quantile_test / welch on distributed states, column %d" % k, rel=1e-10)
        else:
            ck.check(x == y, "quantile_test on distributed states, column %d (%r, %r)" % (k, x, y))
finally:
    cl.stop()
ck.report()
