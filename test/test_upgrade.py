"""The upgrade path from the previous release: install it, ALTER EXTENSION UPDATE.

On a private copy of the PostgreSQL installation (so the system's extension
files are not touched) and a throwaway cluster:
  1. the release 0.1.0 (git tag v0.1.0, else its commit) is built from this
     repository's history and installed; databases get CREATE EXTENSION
     experiment VERSION '0.1.0', and one of them data in every user table
     (registry, exposures, quarantine, staging, metrics, results, conclusions)
     and a user table of extreme experiment.moments values;
  2. the current version is installed over it and every database runs
     ALTER EXTENSION experiment UPDATE;
  3. the upgraded extension must equal a fresh CREATE EXTENSION object for
     object: every member's definition (functions, views, columns, defaults,
     constraints, indexes, triggers, policies, comments, privileges, options);
  4. the pg_regress suite runs on an upgraded database (pg_regress
     --use-existing) and must pass;
  5. the data survive: a refresh after the upgrade works, and pg_dump / restore
     of the upgraded database gives back every user table row for row.
"""
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from exptest import PROJECT_ROOT, Checker, skip  # noqa: E402

import psycopg2  # noqa: E402

OLD = "0.1.0"
ck = Checker("test_upgrade")
PG_BINDIR = os.environ.get("PG_BINDIR", "/usr/lib/postgresql/15/bin")


def run(cmd, **kw):
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)
    if r.returncode != 0:
        print("command failed: %s\n%s" % (" ".join(cmd), r.stdout[-4000:]))
        raise SystemExit(1)
    return r.stdout


def git(*args):
    return subprocess.run(["git", "-C", PROJECT_ROOT] + list(args), stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, text=True)


commit = None
for ref in ("v%s^{commit}" % OLD, "2bae5be^{commit}"):
    r = git("rev-parse", "-q", "--verify", ref)
    if r.returncode == 0:
        commit = r.stdout.strip()
        break
if commit is None:
    skip("the %s release is not in this repository's history (a shallow clone?)" % OLD)
print("previous release %s: commit %s" % (OLD, commit[:12]))

pg_config = os.path.join(PG_BINDIR, "pg_config")
dirs = {}
for key in ("bindir", "sharedir", "pkglibdir", "includedir-server", "includedir"):
    dirs[key] = run([pg_config, "--" + key]).strip()

tmp = tempfile.mkdtemp(prefix="exp_upgrade_")
os.chmod(tmp, 0o755)
try:
    # a relocatable copy of the installation: PostgreSQL finds its share and lib directories
    # relative to its binaries, so the copy keeps the same layout under tmp
    root = os.path.join(tmp, "pg")
    for key in ("bindir", "sharedir", "pkglibdir", "includedir"):
        src = dirs[key]
        dst = root + src
        if not os.path.exists(dst):
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            shutil.copytree(src, dst, symlinks=True)
    bindir = root + dirs["bindir"]
    cfg = os.path.join(bindir, "pg_config")
    ck.check(run([cfg, "--sharedir"]).strip() == root + dirs["sharedir"], "the copy of PostgreSQL is relocated")

    # 1. the previous release, from history
    old_src = os.path.join(tmp, "old")
    os.makedirs(old_src)
    archive = subprocess.run(["git", "-C", PROJECT_ROOT, "archive", commit], stdout=subprocess.PIPE, check=True).stdout
    subprocess.run(["tar", "-x", "-C", old_src], input=archive, check=True)
    run(["make", "-C", old_src, "-s", "-j2", "PG_CONFIG=" + cfg])
    run(["make", "-C", old_src, "-s", "PG_CONFIG=" + cfg, "install"])

    data = os.path.join(tmp, "data")
    sock = os.path.join(tmp, "sock")
    os.makedirs(sock)
    subprocess.run(["chown", "-R", "postgres", tmp], check=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    as_pg = ["runuser", "-u", "postgres", "--"]
    run(as_pg + [os.path.join(bindir, "initdb"), "-D", data, "-A", "trust", "-U", "postgres", "--no-sync"])
    run(as_pg + [os.path.join(bindir, "pg_ctl"), "-D", data, "-l", os.path.join(tmp, "log"), "-w",
                 "-o", "-p %d -k %s -c listen_addresses='' -c fsync=off" % (port, sock), "start"])
    env = dict(os.environ, PGHOST=sock, PGPORT=str(port), PGUSER="postgres")

    def conn(db):
        c = psycopg2.connect(host=sock, port=port, user="postgres", dbname=db)
        c.autocommit = True
        return c

    pg = conn("postgres")
    pc = pg.cursor()
    for db in ("upg_data", "upg_suite", "fresh"):
        pc.execute('CREATE DATABASE "%s"' % db)
    for db in ("upg_data", "upg_suite"):
        c = conn(db)
        c.cursor().execute("CREATE EXTENSION experiment VERSION %s", (OLD,))
        c.close()

    d = conn("upg_data")
    cur = d.cursor()
    cur.execute("SET client_min_messages = warning")
    cur.execute("""
      CREATE TABLE public.orders (user_id text, ts timestamptz, amount float8);
      INSERT INTO public.orders SELECT 'u' || i, '2025-01-03 10:00+00', (i % 11)::float8 FROM generate_series(1, 400) i;
      INSERT INTO experiment.experiments (id, name, status, start_at, end_at)
      VALUES ('upg', 'upgrade', 'draft', '2025-01-01 00:00+00', '2025-01-15 00:00+00');
      INSERT INTO experiment.variants (experiment_id, name, allocation, is_control)
      VALUES ('upg', 'control', 0.5, true), ('upg', 'treatment', 0.5, false);
      INSERT INTO experiment.metrics (name, source, unit_column, time_column, value_column, cuped_lookback)
      VALUES ('upg_value', 'public.orders', 'user_id', 'ts', 'amount', NULL);
      INSERT INTO experiment.experiment_metrics (experiment_id, metric, role) VALUES ('upg', 'upg_value', 'primary');
      UPDATE experiment.experiments SET status = 'running' WHERE id = 'upg';
      SELECT count(experiment.log_exposure('upg', 'u' || i, CASE WHEN i % 2 = 0 THEN 'control' ELSE 'treatment' END,
                                           '2025-01-02 10:00+00')) FROM generate_series(1, 400) i;
      SELECT experiment.ingest_exposures('[{"experiment_id": "nope", "unit_id": "x", "variant": "a", "exposed_at": "2025-01-02"}]');
      INSERT INTO experiment.exposures_staging (experiment_id, unit_id, variant, exposed_at)
      VALUES ('upg', 'u401', 'control', '2025-01-02 11:00+00');
      SELECT experiment.refresh('upg');
      SELECT experiment.conclude('upg', 'NO SIGNIFICANT EFFECT', 'before the upgrade');
      CREATE TABLE public.rollup (k text PRIMARY KEY, m experiment.moments);
      INSERT INTO public.rollup
      SELECT 'orders', experiment.moments(amount) FROM public.orders
      UNION ALL SELECT 'pair', experiment.moments(amount, amount * 2) FROM public.orders
      UNION ALL SELECT 'huge', experiment.moments(x) FROM (VALUES (1e150::float8), (-1e150), (5e-324)) v(x)
      UNION ALL SELECT 'one', experiment.moments(x) FROM (VALUES (-0.0::float8)) v(x)
      -- a count the 0.1.0 text form could not read back (pg_dump wrote it, the restore failed)
      UNION ALL SELECT 'max_n', experiment.moments_from_sums(9223372036854775807, 1, 1);
    """)
    cur.execute("SELECT experiment.n(m) FROM public.rollup WHERE k = 'orders'")
    ck.check(cur.fetchone()[0] == 400, "data loaded into the %s release" % OLD)
    d.close()

    # 2. the current version over it
    run(["make", "-C", PROJECT_ROOT, "-s", "PG_CONFIG=" + cfg, "install"])
    cur_version = None
    for db in ("upg_data", "upg_suite"):
        c = conn(db)
        k = c.cursor()
        k.execute("ALTER EXTENSION experiment UPDATE")
        k.execute("SELECT extversion FROM pg_extension WHERE extname = 'experiment'")
        cur_version = k.fetchone()[0]
        c.close()
    f = conn("fresh")
    f.cursor().execute("CREATE EXTENSION experiment")
    f.close()
    with open(os.path.join(PROJECT_ROOT, "experiment.control")) as fh:
        want_version = [l.split("'")[1] for l in fh if l.startswith("default_version")][0]
    ck.check(cur_version == want_version and want_version != OLD,
             "ALTER EXTENSION UPDATE reaches %s: %s" % (want_version, cur_version))

    # 3. the upgraded extension is the fresh one, object for object
    describe = r"""
      WITH members AS (
        SELECT d.classid, d.objid, d.objsubid FROM pg_depend d JOIN pg_extension x ON x.oid = d.refobjid
        WHERE d.refclassid = 'pg_extension'::regclass AND x.extname = 'experiment' AND d.deptype = 'e'
      ), items AS (
        SELECT pg_describe_object(m.classid, m.objid, m.objsubid) AS what,
               coalesce(obj_description(m.objid, (SELECT relname FROM pg_class WHERE oid = m.classid)), '') AS comment,
               CASE m.classid
                 WHEN 'pg_proc'::regclass THEN (SELECT CASE WHEN p.prokind IN ('f', 'p', 'w') THEN pg_get_functiondef(p.oid)
                                                            ELSE pg_get_function_arguments(p.oid) END
                                                       || coalesce(p.proacl::text, '') || p.proparallel::text || p.provolatile::text || p.prosecdef::text
                                                FROM pg_proc p WHERE p.oid = m.objid)
                 WHEN 'pg_class'::regclass THEN (
                   SELECT c.relkind::text || coalesce(c.relacl::text, '') || coalesce(c.reloptions::text, '')
                          || c.relrowsecurity::text || c.relforcerowsecurity::text
                          || coalesce(CASE WHEN c.relkind = 'v' THEN pg_get_viewdef(c.oid) END, '')
                          || coalesce((SELECT string_agg(a.attnum || ' ' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
                                                         || ' ' || a.attnotnull || ' ' || coalesce(pg_get_expr(ad.adbin, ad.adrelid), '')
                                                         || ' ' || coalesce(col_description(c.oid, a.attnum), ''), '; ' ORDER BY a.attnum)
                                       FROM pg_attribute a LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
                                       WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped), '')
                          || coalesce((SELECT string_agg(conname || ' ' || pg_get_constraintdef(co.oid), '; ' ORDER BY conname)
                                       FROM pg_constraint co WHERE co.conrelid = c.oid), '')
                          || coalesce((SELECT string_agg(pg_get_indexdef(i.indexrelid), '; ' ORDER BY 1)
                                       FROM pg_index i WHERE i.indrelid = c.oid), '')
                          || coalesce((SELECT string_agg(pg_get_triggerdef(t.oid) || coalesce(obj_description(t.oid, 'pg_trigger'), ''),
                                                         '; ' ORDER BY t.tgname)
                                       FROM pg_trigger t WHERE t.tgrelid = c.oid AND NOT t.tgisinternal), '')
                          || coalesce((SELECT string_agg(po.polname || ' ' || po.polcmd::text || ' ' || coalesce(pg_get_expr(po.polqual, po.polrelid), '')
                                                         || ' ' || coalesce(pg_get_expr(po.polwithcheck, po.polrelid), '')
                                                         || coalesce(obj_description(po.oid, 'pg_policy'), ''), '; ' ORDER BY po.polname)
                                       FROM pg_policy po WHERE po.polrelid = c.oid), '')
                   FROM pg_class c WHERE c.oid = m.objid)
                 WHEN 'pg_type'::regclass THEN (SELECT t.typtype::text || t.typinput::text || t.typoutput::text || t.typreceive::text
                                                       || t.typsend::text FROM pg_type t WHERE t.oid = m.objid)
                 WHEN 'pg_operator'::regclass THEN (SELECT o.oprcode::text || o.oprcom::regoperator::text || o.oprnegate::regoperator::text
                                                    FROM pg_operator o WHERE o.oid = m.objid)
                 ELSE ''
               END AS definition
        FROM members m
      )
      SELECT what, comment, definition FROM items ORDER BY what
    """

    def schema(db):
        c = conn(db)
        k = c.cursor()
        k.execute(describe)
        rows = k.fetchall()
        k.execute("""SELECT extconfig::regclass[]::text, extcondition FROM pg_extension WHERE extname = 'experiment'""")
        rows.append(("extension config", "", repr(k.fetchone())))
        c.close()
        return rows

    fresh, upgraded = schema("fresh"), schema("upg_data")
    fresh_d, upg_d = {r[0]: r for r in fresh}, {r[0]: r for r in upgraded}
    missing = sorted(set(fresh_d) - set(upg_d))
    extra = sorted(set(upg_d) - set(fresh_d))
    differ = sorted(w for w in set(fresh_d) & set(upg_d) if fresh_d[w] != upg_d[w])
    ck.check(not missing, "objects missing after the upgrade: %s" % missing[:20])
    ck.check(not extra, "objects left over after the upgrade: %s" % extra[:20])
    for w in differ[:10]:
        print("differs after the upgrade: %s\n  fresh:    %r\n  upgraded: %r" % (w, fresh_d[w][1:], upg_d[w][1:]))
    ck.check(not differ, "%d objects differ after the upgrade: %s" % (len(differ), differ[:20]))
    print("%d extension objects compared" % len(fresh))

    # 4. the regress suite on an upgraded database
    out = subprocess.run(["make", "-C", PROJECT_ROOT, "-s", "PG_CONFIG=" + cfg, "installcheck",
                          "REGRESS_OPTS=--inputdir=. --use-existing --dbname=upg_suite"],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    summary = [l for l in out.stdout.splitlines() if "tests passed" in l or "tests failed" in l or "failed" in l]
    ck.check(out.returncode == 0, "the regress suite passes on an upgraded database: %s" % summary[-3:])
    if out.returncode != 0:
        diffs = os.path.join(PROJECT_ROOT, "regression.diffs")
        if os.path.exists(diffs):
            print(open(diffs).read()[:4000])

    # 5. data after the upgrade: a refresh, and a dump / restore round trip
    d = conn("upg_data")
    cur = d.cursor()
    cur.execute("SET client_min_messages = warning")
    # (the experiment was concluded, so refresh_all() leaves it alone: load and refresh it here)
    cur.execute("SELECT inserted FROM experiment.process_exposures_staging()")
    ck.check(cur.fetchone()[0] == 1, "the staged exposure is loaded after the upgrade")
    cur.execute("SELECT experiment.refresh('upg')")
    cur.execute("SELECT p_value IS NOT NULL FROM experiment.results WHERE experiment_id = 'upg'")
    ck.check(cur.fetchone() == (True,), "refresh() after the upgrade gives results")
    cur.execute("SELECT owner::text FROM experiment.metrics WHERE name = 'upg_value'")
    ck.check(cur.fetchone()[0] == "postgres", "a metric registered before the upgrade is owned by the extension's owner")
    cur.execute("SELECT enrolled_units FROM experiment.refreshes WHERE experiment_id = 'upg'")
    ck.check(cur.fetchone()[0] == 401, "the refresh after the upgrade counts the staged exposure")
    # the Kafka tables of 0.4.0 take rows on the upgraded database
    cur.execute("SELECT experiment.kafka_advance_offsets('upg-group', '{upg}', '{0}', '{NULL}', '{3}')")
    cur.execute("""SELECT dead_lettered FROM experiment.ingest_event_messages('public.orders', '{user_id}', '{user}',
                   '{upg}', '{1}', '{7}', '{"not json"}')""")
    ck.check(cur.fetchone()[0] == 1, "a malformed metric event is dead-lettered after the upgrade")
    tables = ["experiment.experiments", "experiment.variants", "experiment.metrics", "experiment.experiment_metrics",
              "experiment.exposures", "experiment.exposures_quarantine", "experiment.exposures_staging",
              "experiment.conclusions", "experiment.kafka_offsets", "experiment.kafka_dead_letters",
              "public.orders", "public.rollup"]

    def fingerprint(k, t):
        k.execute("SELECT count(*), md5(coalesce(string_agg(x::text, E'\\n' ORDER BY x::text), '')) FROM %s x" % t)
        return k.fetchone()

    before = {t: fingerprint(cur, t) for t in tables}
    d.close()
    dump = os.path.join(tmp, "upg.dump")
    run(["runuser", "-u", "postgres", "--", os.path.join(bindir, "pg_dump"), "-Fc", "-h", sock, "-p", str(port),
         "-d", "upg_data", "-f", dump])
    pc.execute("CREATE DATABASE upg_restored")
    run(["runuser", "-u", "postgres", "--", os.path.join(bindir, "pg_restore"), "-h", sock, "-p", str(port),
         "-d", "upg_restored", "--exit-on-error", dump])
    r = conn("upg_restored")
    k = r.cursor()
    for t in tables:
        got = fingerprint(k, t)
        ck.check(got == before[t] and got[0] > 0 or (got == before[t] and t == "experiment.exposures_staging"),
                 "%s restored row for row (%s rows)" % (t, got[0]))
    k.execute("SELECT k, m::text FROM public.rollup ORDER BY k")
    print("restored moments: %s" % ", ".join("%s %s" % (a, b[:60]) for a, b in k.fetchall()))
    r.close()
    pg.close()
finally:
    subprocess.run(["runuser", "-u", "postgres", "--", os.path.join(tmp, "pg" + dirs["bindir"], "pg_ctl"),
                    "-D", os.path.join(tmp, "data"), "-m", "immediate", "stop"],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shutil.rmtree(tmp, ignore_errors=True)
ck.report()
