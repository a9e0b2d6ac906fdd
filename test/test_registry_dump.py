"""pg_dump keeps the registry: a dump of a database with draft, running,
stopped and concluded experiments (layers, targeting, GrowthBook schemes)
restores, in plain and custom format, through the registry's validation
triggers, into a database with the same rows (dimensions too, and a stratify_by
that names one), the same ruleset version and the
same assignments; the restored registry still enforces its rules. The stored
per-unit values of a refreshed experiment (and their statistics object) are not
dumped: the restored database's first refresh is full and gives the same results.
"""
import os
import subprocess
import sys

import psycopg2

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from exptest import Checker, connect, fresh_db  # noqa: E402

PG_BINDIR = os.environ.get("PG_BINDIR", "/usr/lib/postgresql/15/bin")
SRC = "exp_registry_dump_src"
V2 = '[{"name": "control", "allocation": 0.5, "config": {"x": 1}}, {"name": "treatment", "allocation": 0.5}]'
V3 = '[{"name": "control", "allocation": 0.2}, {"name": "a", "allocation": 0.3}, {"name": "b", "allocation": 0.5}]'


def snapshot(cur):
    cur.execute("SELECT to_jsonb(x) - 'created_at' - 'updated_at' FROM experiment.experiments x ORDER BY id")
    exps = [r[0] for r in cur.fetchall()]
    cur.execute("SELECT to_jsonb(v) FROM experiment.variants v ORDER BY experiment_id, name")
    variants = [r[0] for r in cur.fetchall()]
    cur.execute("SELECT experiment.ruleset_version()")
    version = cur.fetchone()[0]
    cur.execute("SELECT coalesce(jsonb_agg(to_jsonb(d) ORDER BY experiment_id, name), '[]') FROM experiment.dimensions d")
    dims = cur.fetchone()[0]
    cur.execute("SELECT array_agg(experiment.assign('u' || g, e, '{\"country\": \"SG\"}') ORDER BY e, g)"
                " FROM generate_series(1, 500) g, unnest(ARRAY['d-run', 'd-layer-a', 'd-layer-b', 'd-gb']) e")
    assigned = cur.fetchone()[0]
    return exps, variants, version, assigned, dims


def main():
    ck = Checker("test_registry_dump")
    src = fresh_db(SRC)
    cur = src.cursor()
    cur.execute("SELECT experiment.create_experiment('d-run', %s, traffic => 0.3,"
                " targeting => '{\"country\": {\"$in\": [\"SG\", \"MY\"]}}', start => true)", (V2,))
    cur.execute("SELECT experiment.create_experiment('d-layer-a', %s, layer => 'L', layer_start => 0,"
                " layer_end => 0.4, start => true)", (V3,))
    cur.execute("SELECT experiment.create_experiment('d-layer-b', %s, layer => 'L', layer_start => 0.4,"
                " layer_end => 1, start => true)", (V2,))
    cur.execute("SELECT experiment.create_experiment('d-gb', %s, hash_scheme => 'growthbook_v2', salt => 'seed-1',"
                " layer => 'N', layer_start => 0.1, layer_end => 0.9, traffic => 0.7, start => true)", (V3,))
    cur.execute("SELECT experiment.create_experiment('d-draft', %s)", (V2,))
    cur.execute("SELECT experiment.create_experiment('d-stopped', %s, start => true)", (V2,))
    cur.execute("SELECT experiment.stop('d-stopped')")
    cur.execute("SELECT experiment.create_experiment('d-done', %s, start => true)", (V2,))
    cur.execute("UPDATE experiment.experiments SET status = 'concluded' WHERE id = 'd-done'")
    # dimensions, and one of them as stratify_by (restored after the experiment that names it)
    cur.execute("""INSERT INTO experiment.dimensions (experiment_id, name, attribute, attribute_key, top_n, caps_per_value)
                   VALUES ('d-run', 'country', 'attributes', 'country', 5, true), ('d-run', 'client', 'client', NULL, 10, false)""")
    cur.execute("UPDATE experiment.experiments SET stratify_by = 'country' WHERE id = 'd-run'")
    # a refreshed experiment: its stored per-unit values (an unlogged extension member, with a
    # statistics object on its variants and days of first exposure) are left out of the dump
    cur.execute("CREATE TABLE public.dump_orders (user_id text, ordered_at timestamptz, amount float8)")
    cur.execute("""INSERT INTO public.dump_orders
                   SELECT 'u' || (g % 300), timestamptz '2025-01-02' + g * interval '7 minutes', (g % 17)::float8
                   FROM generate_series(1, 3000) g""")
    cur.execute("SELECT experiment.create_experiment('d-metrics', %s, start => true)", (V2,))
    cur.execute("UPDATE experiment.experiments SET start_at = '2025-01-01', end_at = '2025-02-01' WHERE id = 'd-metrics'")
    cur.execute("""INSERT INTO experiment.exposures (experiment_id, unit_id, variant, exposed_at)
                   SELECT 'd-metrics', 'u' || g, CASE WHEN g % 2 = 0 THEN 'control' ELSE 'treatment' END,
                          timestamptz '2025-01-01' + g * interval '5 minutes'
                   FROM generate_series(0, 299) g""")
    cur.execute("""INSERT INTO experiment.metrics (name, source, unit_column, time_column, value_column, aggregation, kind)
                   VALUES ('dump_revenue', 'public.dump_orders', 'user_id', 'ordered_at', 'amount', 'sum', 'mean')""")
    cur.execute("INSERT INTO experiment.experiment_metrics (experiment_id, metric, role) VALUES ('d-metrics', 'dump_revenue', 'primary')")
    cur.execute("SELECT experiment.refresh('d-metrics')")
    cur.execute("""SELECT count(*) FROM pg_statistic_ext x JOIN experiment.unit_value_tables t
                     ON x.stxrelid = format('experiment.%I', t.relation)::regclass
                   JOIN pg_statistic_ext_data d ON d.stxoid = x.oid
                   WHERE t.experiment_id = 'd-metrics' AND 'd' = ANY (x.stxkind) AND d.stxdndistinct IS NOT NULL""")
    ck.check(cur.fetchone()[0] == 1, "the stored per-unit values have their statistics object, analyzed")
    results_sql = ("SELECT metric, variant, (test).p_value, (test).diff FROM experiment.metric_results"
                   " WHERE experiment_id = 'd-metrics' ORDER BY 1, 2")
    cur.execute(results_sql)
    want_results = cur.fetchall()
    ck.check(len(want_results) == 1 and want_results[0][2] is not None, "d-metrics results: %r" % (want_results,))
    want = snapshot(cur)
    ck.check(len(want[0]) == 8 and len(want[1]) == 18, "source rows: %d experiments, %d variants"
             % (len(want[0]), len(want[1])))

    for fmt in ("plain", "custom"):
        dst = "exp_registry_dump_" + fmt
        admin = connect("postgres")
        admin.cursor().execute('DROP DATABASE IF EXISTS "%s" WITH (FORCE)' % dst)
        admin.cursor().execute('CREATE DATABASE "%s"' % dst)
        admin.close()
        dump = subprocess.run([os.path.join(PG_BINDIR, "pg_dump"), "-d", SRC] + (["-Fc"] if fmt == "custom" else []),
                              capture_output=True, check=True).stdout
        if fmt == "plain":
            r = subprocess.run([os.path.join(PG_BINDIR, "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", dst],
                               input=dump, capture_output=True)
        else:
            r = subprocess.run([os.path.join(PG_BINDIR, "pg_restore"), "--exit-on-error", "-d", dst],
                               input=dump, capture_output=True)
        ck.check(r.returncode == 0, "%s restore: %s" % (fmt, r.stderr.decode()[-500:]))
        conn = connect(dst)
        c = conn.cursor()
        got = snapshot(c)
        ck.check(got[0] == want[0], "%s: experiments differ" % fmt)
        ck.check(got[1] == want[1], "%s: variants differ" % fmt)
        ck.check(got[2] == want[2], "%s: ruleset version %s, want %s" % (fmt, got[2], want[2]))
        ck.check(got[3] == want[3], "%s: assignments differ" % fmt)
        ck.check(got[4] == want[4] and len(got[4]) == 2, "%s: dimensions %r, want %r" % (fmt, got[4], want[4]))
        ck.check(sum(1 for v in got[3] if v is not None) > 500, "%s: assignments are not all NULL" % fmt)
        # the stored per-unit values were not dumped: the first refresh is full, with the same results
        c.execute("SELECT experiment.refresh('d-metrics')")
        c.execute("SELECT mode, full_reason FROM experiment.refreshes WHERE experiment_id = 'd-metrics'")
        mode = c.fetchone()
        ck.check(mode[0] == "full", "%s: the first refresh after the restore: %r" % (fmt, mode))
        c.execute(results_sql)
        got_results = c.fetchall()
        ck.check(got_results == want_results, "%s: results %r, want %r" % (fmt, got_results, want_results))
        # the rules still hold after the restore
        for stmt in ("INSERT INTO experiment.variants VALUES ('d-run', 'late', 0, NULL, false)",
                     "UPDATE experiment.experiments SET salt = 'new' WHERE id = 'd-layer-a'",
                     "INSERT INTO experiment.experiments (id, layer, layer_start, layer_end) VALUES ('x', 'L', 0.3, 0.5)",
                     "DELETE FROM experiment.dimensions WHERE experiment_id = 'd-run' AND name = 'country'",
                     "UPDATE experiment.dimensions SET top_n = 0 WHERE experiment_id = 'd-run'"):
            try:
                c.execute(stmt)
                ck.check(False, "%s: accepted after restore: %s" % (fmt, stmt))
            except psycopg2.Error as e:
                ck.check(e.pgcode in ("22023", "23P01"), "%s: %s -> %s %s" % (fmt, stmt, e.pgcode, e))
        conn.close()
        print("%s dump restored: %d experiments, %d variants, version %s..." % (fmt, len(got[0]), len(got[1]), got[2][:12]))
    src.close()
    ck.report()


if __name__ == "__main__":
    main()
