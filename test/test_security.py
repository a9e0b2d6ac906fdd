"""The privilege model of doc/security.md, attacked as real non-superuser roles.

Roles come from experiment.setup_roles(); login roles of this test are members of
them. Each attack must fail with 42501 and change nothing:
  - registering a metric over a table the registering role may not read;
  - registering a metric for another role (owner = a role one is not a member of);
  - a hostile view (calling a function that tries ALTER ROLE ... SUPERUSER) as a
    metric source, refreshed by a superuser and by a non-superuser administrator;
  - an administrator's metric over a view owned by the attacker, and over the
    attacker's table to which the attacker later adds a row-level security policy;
  - changing or deleting another role's metric;
  - reading a metric's results without SELECT on its source (results view,
    metric_results, variant_stats, readout, conclusions);
  - source_unit_values() as a more privileged role.
And the documented roles can do their jobs: readers read, analysts register and
refresh, the ingestion role loads exposures, administrators run refresh_all().
"""
import os
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from exptest import Checker, fresh_db  # noqa: E402

import psycopg2  # noqa: E402

DB = "exp_security"
ck = Checker("test_security")
su = fresh_db(DB)
cur = su.cursor()
cur.execute("SET client_min_messages = error")

cur.execute("SELECT role, created FROM experiment.setup_roles() ORDER BY role")
roles = [r[0] for r in cur.fetchall()]
ck.check(roles == ["experiment_admin", "experiment_analyst", "experiment_ingest", "experiment_reader"],
         "setup_roles() reports the four roles: %r" % roles)
su.notices.clear()
cur.execute("SET client_min_messages = notice")
cur.execute("SELECT bool_or(created) FROM experiment.setup_roles()")
ck.check(cur.fetchone()[0] is False, "a second setup_roles() creates nothing")
ck.check(su.notices == [], "and says nothing: %r" % su.notices)
cur.execute("SET client_min_messages = error")

LOGINS = {"sec_alice": "experiment_analyst", "sec_mallory": "experiment_analyst", "sec_bob": "experiment_reader",
          "sec_ingest": "experiment_ingest", "sec_admin": "experiment_admin"}
for name, group in LOGINS.items():
    cur.execute("SELECT count(*) FROM pg_roles WHERE rolname = %s", (name,))
    if cur.fetchone()[0] == 0:
        cur.execute('CREATE ROLE "%s" LOGIN' % name)
    cur.execute('GRANT "%s" TO "%s"' % (group, name))
cur.execute("ALTER ROLE sec_mallory NOSUPERUSER")

# data: orders readable by alice, bob and the admin; secret readable by nobody but the superuser
cur.execute("CREATE TABLE public.orders (user_id text, ts timestamptz, amount float8)")
cur.execute("CREATE TABLE public.secret (user_id text, ts timestamptz, salary float8)")
cur.execute("GRANT SELECT ON public.orders TO sec_alice, sec_bob, sec_admin")
cur.execute("""INSERT INTO public.orders SELECT 'u' || i, now() - interval '1 day', (i % 13)::float8
               FROM generate_series(1, 300) i""")
cur.execute("""INSERT INTO public.secret SELECT 'u' || i, now() - interval '1 day', 50000 + i
               FROM generate_series(1, 300) i""")
# the attacker's own schema
cur.execute("CREATE SCHEMA sec_m AUTHORIZATION sec_mallory")
cur.execute("GRANT USAGE ON SCHEMA sec_m TO PUBLIC")


def connect_as(role):
    c = psycopg2.connect(dbname=DB, user=role)
    c.autocommit = True
    k = c.cursor()
    k.execute("SET client_min_messages = error")
    return c, k


def fails(k, sql, code, what, args=None, contains=None):
    try:
        k.execute(sql, args)
    except psycopg2.Error as e:
        ok = e.pgcode == code and (contains is None or contains in str(e))
        return ck.check(ok, "%s: got %s %s" % (what, e.pgcode, str(e).strip().splitlines()[0]))
    return ck.check(False, "%s: no error" % what)


def is_superuser(role):
    cur.execute("SELECT rolsuper FROM pg_roles WHERE rolname = %s", (role,))
    return cur.fetchone()[0]


def make_experiment(k, exp_id, n=300):
    k.execute("""INSERT INTO experiment.experiments (id, name, status, start_at)
                 VALUES (%s, %s, 'draft', now() - interval '3 days')""", (exp_id, exp_id))
    k.execute("""INSERT INTO experiment.variants (experiment_id, name, allocation, is_control)
                 VALUES (%s, 'control', 0.5, true), (%s, 'treatment', 0.5, false)""", (exp_id, exp_id))


def expose(exp_id, n=300):
    ic, ik = connect_as("sec_ingest")
    ik.execute("""SELECT inserted FROM experiment.ingest_exposures(
                    (SELECT jsonb_agg(jsonb_build_object('experiment_id', %s, 'unit_id', 'u' || i,
                             'variant', CASE WHEN i %% 2 = 0 THEN 'control' ELSE 'treatment' END,
                             'exposed_at', now() - interval '2 days'))
                     FROM generate_series(1, %s) i))""", (exp_id, n))
    got = ik.fetchone()[0]
    ic.close()
    return got


alice_c, alice = connect_as("sec_alice")
mal_c, mal = connect_as("sec_mallory")
bob_c, bob = connect_as("sec_bob")
adm_c, adm = connect_as("sec_admin")

# --- an analyst's ordinary job -------------------------------------------------------
make_experiment(alice, "alice-exp")
alice.execute("""INSERT INTO experiment.metrics (name, source, unit_column, time_column, value_column)
                 VALUES ('order_value', 'public.orders', 'user_id', 'ts', 'amount')""")
alice.execute("SELECT owner::text FROM experiment.metrics WHERE name = 'order_value'")
ck.check(alice.fetchone()[0] == "sec_alice", "a metric is owned by the role that registers it")
alice.execute("""INSERT INTO experiment.experiment_metrics (experiment_id, metric, role)
                 VALUES ('alice-exp', 'order_value', 'primary')""")
alice.execute("UPDATE experiment.experiments SET status = 'running' WHERE id = 'alice-exp'")
ck.check(expose("alice-exp") == 300, "the ingestion role loads exposures")
# the superuser's experiment, with alice's metric and (below) one over a secret table
make_experiment(cur, "sec-exp")
cur.execute("""INSERT INTO experiment.experiment_metrics (experiment_id, metric, role)
               VALUES ('sec-exp', 'order_value', 'primary')""")
cur.execute("UPDATE experiment.experiments SET status = 'running' WHERE id = 'sec-exp'")
expose("sec-exp")

# --- 1. a metric over a table its owner may not read -----------------------------------
fails(mal, """INSERT INTO experiment.metrics (name, source, unit_column, time_column, value_column)
              VALUES ('steal', 'public.secret', 'user_id', 'ts', 'salary')""",
      "42501", "registering a metric over an unreadable table", contains='may not read column')
fails(mal, """INSERT INTO experiment.metrics (name, source, unit_column, time_column, value_column)
              VALUES ('steal', %s::regclass::oid::regclass, 'user_id', 'ts', 'salary')""",
      "42501", "registering it by OID", args=("public.secret",))
fails(mal, """INSERT INTO experiment.metrics (name, source, unit_column, time_column, value_column, owner)
              VALUES ('steal', 'public.secret', 'user_id', 'ts', 'salary', 'postgres')""",
      "42501", "registering a metric for a role one is not a member of", contains="owner of metric")
cur.execute("SELECT count(*) FROM experiment.metrics WHERE name = 'steal'")
ck.check(cur.fetchone()[0] == 0, "no such metric was stored")

# the superuser's metric over the secret table, in alice's experiment
cur.execute("""INSERT INTO experiment.metrics (name, source, unit_column, time_column, value_column)
               VALUES ('salary', 'public.secret', 'user_id', 'ts', 'salary')""")
cur.execute("""INSERT INTO experiment.experiment_metrics (experiment_id, metric, role)
               VALUES ('sec-exp', 'salary', 'secondary')""")

# --- 2. a hostile view as a source ----------------------------------------------------
mal.execute("""CREATE FUNCTION sec_m.evil() RETURNS integer LANGUAGE plpgsql AS $$
               BEGIN
                 ALTER ROLE sec_mallory SUPERUSER;
                 RETURN 0;
               END $$""")
mal.execute("CREATE TABLE sec_m.events (user_id text, ts timestamptz, amount float8)")
mal.execute("""INSERT INTO sec_m.events SELECT 'u' || i, now() - interval '1 day', 1 FROM generate_series(1, 300) i""")
mal.execute("CREATE VIEW sec_m.hostile AS SELECT user_id, ts, amount + sec_m.evil() AS amount FROM sec_m.events")
make_experiment(mal, "mal-exp")
mal.execute("""INSERT INTO experiment.metrics (name, source, unit_column, time_column, value_column)
               VALUES ('mal_metric', 'sec_m.hostile', 'user_id', 'ts', 'amount')""")
mal.execute("""INSERT INTO experiment.experiment_metrics (experiment_id, metric, role)
               VALUES ('mal-exp', 'mal_metric', 'primary')""")
mal.execute("UPDATE experiment.experiments SET status = 'running' WHERE id = 'mal-exp'")
expose("mal-exp")

cur.execute("SELECT experiment.refresh_all()")
done = cur.fetchone()[0]
ck.check(done == 2, "a superuser's refresh_all() refreshes the benign experiments and not the hostile one: %r" % done)
ck.check(is_superuser("sec_mallory") is False, "the hostile view did not make its owner superuser (refresh_all)")
cur.execute("SELECT error FROM experiment.refreshes WHERE experiment_id = 'mal-exp'")
err = cur.fetchone()[0] or ""
ck.check("must be superuser" in err, "the hostile experiment's refresh error is recorded: %r" % err)
fails(cur, "SELECT experiment.refresh('mal-exp')", "42501", "a superuser's refresh() of the hostile experiment")
ck.check(is_superuser("sec_mallory") is False, "the hostile view did not make its owner superuser (refresh)")
adm.execute("SELECT experiment.refresh_all()")
ck.check(adm.fetchone()[0] == 2, "a non-superuser administrator runs refresh_all()")
ck.check(is_superuser("sec_mallory") is False, "nor through the administrator's refresh_all()")
fails(cur, "SELECT count(*) FROM experiment.aa_test('mal-exp', 10)", "42501",
      "a superuser's aa_test() refuses the hostile view", contains="refusing to read")

# --- 3. an administrator's metric over the attacker's objects -------------------------
fails(cur, """INSERT INTO experiment.metrics (name, source, unit_column, time_column, value_column)
              VALUES ('adm_hostile', 'sec_m.hostile', 'user_id', 'ts', 'amount')""",
      "42501", "a superuser's metric over a view the attacker owns", contains="cannot be read safely")
# even a plain table: its owner can make the planner run its code as the reader (an index
# or statistics expression, a partial-index predicate, a child's CHECK constraint), or
# add row-level security, at any time
mal.execute("GRANT SELECT ON sec_m.events TO sec_admin")
fails(adm, """INSERT INTO experiment.metrics (name, source, unit_column, time_column, value_column)
              VALUES ('adm_events', 'sec_m.events', 'user_id', 'ts', 'amount')""", "42501",
      "an administrator's metric over the attacker's plain table is refused", contains="could make reading it run code")
mal.execute("""CREATE FUNCTION sec_m.evil_imm(integer) RETURNS float8 LANGUAGE plpgsql IMMUTABLE AS $$
               BEGIN IF current_user <> 'sec_mallory' THEN EXECUTE 'ALTER ROLE sec_mallory SUPERUSER'; END IF;
                     RETURN 0; END $$""")
mal.execute("CREATE INDEX ON sec_m.events ((amount + sec_m.evil_imm(1)))")
fails(cur, """INSERT INTO experiment.metrics (name, source, unit_column, time_column, value_column)
              VALUES ('su_events', 'sec_m.events', 'user_id', 'ts', 'amount')""", "42501",
      "a superuser's metric over the attacker's table with an index expression is refused")
ck.check(is_superuser("sec_mallory") is False, "the index expression did not run as the superuser")
mal.execute("""INSERT INTO experiment.metrics (name, source, unit_column, time_column, value_column)
               VALUES ('mal_events', 'sec_m.events', 'user_id', 'ts', 'amount')""")
ck.check(True, "the table's owner registers a metric over it (read as the owner: its code runs as itself)")

# a table the administrator may read, owned by a trusted role, later given to the attacker,
# who then adds a row-level security policy
cur.execute("CREATE SCHEMA sec_vip")
cur.execute("GRANT USAGE ON SCHEMA sec_vip TO sec_admin, sec_mallory")
cur.execute("CREATE TABLE sec_vip.ev1 AS SELECT 'u' || i AS user_id, now() - interval '1 day' AS ts, 1.0::float8 AS amount FROM generate_series(1, 40) i")
cur.execute("GRANT SELECT ON sec_vip.ev1 TO sec_admin")
adm.execute("""INSERT INTO experiment.metrics (name, source, unit_column, time_column, value_column)
               VALUES ('adm_ev1', 'sec_vip.ev1', 'user_id', 'ts', 'amount')""")
make_experiment(adm, "adm-exp")
adm.execute("""INSERT INTO experiment.experiment_metrics (experiment_id, metric, role)
               VALUES ('adm-exp', 'adm_ev1', 'primary')""")
adm.execute("UPDATE experiment.experiments SET status = 'running' WHERE id = 'adm-exp'")
expose("adm-exp")
adm.execute("SELECT experiment.refresh('adm-exp')")
ck.check(True, "an administrator's metric over a superuser's table refreshes")
cur.execute("ALTER TABLE sec_vip.ev1 OWNER TO sec_mallory")
mal.execute("CREATE TABLE sec_m.loot (n bigint)")
mal.execute("GRANT INSERT ON sec_m.loot TO PUBLIC")
mal.execute("""CREATE FUNCTION sec_m.spy() RETURNS boolean LANGUAGE plpgsql AS $$
               BEGIN
                 INSERT INTO sec_m.loot SELECT count(*) FROM experiment.exposures;
                 RETURN true;
               END $$""")
mal.execute("ALTER TABLE sec_vip.ev1 ENABLE ROW LEVEL SECURITY")
mal.execute("CREATE POLICY spy ON sec_vip.ev1 USING (sec_m.spy())")
fails(adm, "SELECT experiment.refresh('adm-exp')", "42501",
      "refresh refuses a source that now belongs to the attacker", contains="is owned by role \"sec_mallory\"")
cur.execute("SELECT count(*) FROM sec_m.loot")
ck.check(cur.fetchone()[0] == 0, "the policy's code never ran as the administrator")
adm.execute("SELECT experiment.refresh_all()")
cur.execute("SELECT error FROM experiment.refreshes WHERE experiment_id = 'adm-exp'")
err = cur.fetchone()[0] or ""
ck.check("cannot be read safely" in err and "sec_vip.ev1" in err,
         "refresh_all() records the error with the detail that says why: %r" % err)

# a trusted function that forgets pg_temp in its search_path, and the attacker's temporary
# objects in the session that calls the SECURITY DEFINER refresh()
cur.execute("CREATE TABLE sec_vip.vip (user_id text PRIMARY KEY)")
cur.execute("""CREATE FUNCTION sec_vip.is_vip(u text) RETURNS boolean LANGUAGE sql STABLE SET search_path = sec_vip
               AS $$ SELECT EXISTS (SELECT 1 FROM vip WHERE vip.user_id = u) $$""")
cur.execute("""CREATE VIEW sec_vip.vip_orders AS SELECT user_id, ts, amount FROM public.orders o
               WHERE sec_vip.is_vip(o.user_id)""")
cur.execute("""INSERT INTO experiment.metrics (name, source, unit_column, time_column, value_column)
               VALUES ('vip_revenue', 'sec_vip.vip_orders', 'user_id', 'ts', 'amount')""")
cur.execute("INSERT INTO experiment.experiment_metrics VALUES ('sec-exp', 'vip_revenue', 'secondary')")
mal.execute("""CREATE FUNCTION pg_temp.pwn() RETURNS text LANGUAGE plpgsql AS $$
               BEGIN ALTER ROLE sec_mallory SUPERUSER; RETURN 'nobody'; END $$""")
mal.execute("CREATE TEMP VIEW vip AS SELECT pg_temp.pwn() AS user_id")
fails(mal, "SELECT experiment.refresh('sec-exp')", "42501",
      "refresh() refuses to read as another role while the caller has temporary objects",
      contains="temporary")
ck.check(is_superuser("sec_mallory") is False, "the temporary view did not run as the metric's owner")
mal.execute("DISCARD TEMP")
cur.execute("DELETE FROM experiment.experiment_metrics WHERE metric = 'vip_revenue'")

# check, then read: between the two, a trusted empty table is given to the attacker and
# turned into the attacker's view (a rule "_RETURN", PostgreSQL 15) in one transaction; the
# refresh must wait for it and see the view, not the table it would have checked
cur.execute("CREATE TABLE sec_vip.ev_race (user_id text, ts timestamptz, amount float8)")
cur.execute("""INSERT INTO experiment.metrics (name, source, unit_column, time_column, value_column)
               VALUES ('race_metric', 'sec_vip.ev_race', 'user_id', 'ts', 'amount')""")
make_experiment(cur, "race-exp")
cur.execute("INSERT INTO experiment.experiment_metrics VALUES ('race-exp', 'race_metric', 'primary')")
cur.execute("UPDATE experiment.experiments SET status = 'running' WHERE id = 'race-exp'")
expose("race-exp", 10)
ddl_c = psycopg2.connect(dbname=DB)
ddl = ddl_c.cursor()
converted = True
try:
    ddl.execute("ALTER TABLE sec_vip.ev_race OWNER TO sec_mallory")
    ddl.execute("""CREATE RULE "_RETURN" AS ON SELECT TO sec_vip.ev_race DO INSTEAD
                   SELECT 'u1'::text AS user_id, now() AS ts, sec_m.evil()::float8 AS amount""")
except psycopg2.Error as e:
    converted = False
    print("CREATE RULE on a table is not available here (%s): race check skipped" % e.pgcode)
    ddl_c.rollback()
if converted:
    outcome = {}

    def refresh_race():
        c, k = connect_as("postgres")
        try:
            k.execute("SELECT experiment.refresh('race-exp')")
            outcome["error"] = None
        except psycopg2.Error as e:
            outcome["error"] = (e.pgcode, str(e))
        c.close()

    t = threading.Thread(target=refresh_race)
    t.start()
    waited = False
    for _ in range(100):
        cur.execute("""SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'
                       AND query LIKE '%refresh(''race-exp'')%'""")
        if cur.fetchone()[0] > 0:
            waited = True
            break
        time.sleep(0.1)
    ck.check(waited, "the refresh waits for the attacker's open transaction on the source")
    ddl_c.commit()
    t.join(60)
    err = outcome.get("error")
    ck.check(err is not None and err[0] == "42501" and "view sec_vip.ev_race" in err[1],
             "the refresh checks the source after locking it and refuses the new view: %r" % (err,))
    ck.check(is_superuser("sec_mallory") is False, "the view that appeared between check and read did not run")
ddl_c.close()
cur.execute("UPDATE experiment.experiments SET status = 'stopped' WHERE id = 'race-exp'")

# a domain the attacker owns, cast to by a trusted view: its CHECK constraints would run
# as the reader
mal.execute("CREATE DOMAIN sec_m.amt AS float8")
mal.execute("GRANT USAGE ON DOMAIN sec_m.amt TO PUBLIC")
cur.execute("CREATE VIEW sec_vip.dom_v AS SELECT user_id, ts, amount::sec_m.amt AS amount FROM public.orders")
fails(cur, """INSERT INTO experiment.metrics (name, source, unit_column, time_column, value_column)
              VALUES ('dom_metric', 'sec_vip.dom_v', 'user_id', 'ts', 'amount')""", "42501",
      "a trusted view that casts to the attacker's domain is refused", contains="domain sec_m.amt")

# a trusted aggregate whose transition function the attacker owns (and can replace)
mal.execute("""CREATE FUNCTION sec_m.acc(float8, float8) RETURNS float8 LANGUAGE sql IMMUTABLE
               AS $$ SELECT coalesce($1, 0) + coalesce($2, 0) $$""")
mal.execute("GRANT EXECUTE ON FUNCTION sec_m.acc(float8, float8) TO PUBLIC")
cur.execute("CREATE AGGREGATE sec_vip.total(float8) (SFUNC = sec_m.acc, STYPE = float8)")
cur.execute("""CREATE VIEW sec_vip.agg_v AS SELECT user_id, max(ts) AS ts, sec_vip.total(amount) AS amount
               FROM public.orders GROUP BY user_id""")
fails(cur, """INSERT INTO experiment.metrics (name, source, unit_column, time_column, value_column)
              VALUES ('agg_metric', 'sec_vip.agg_v', 'user_id', 'ts', 'amount')""", "42501",
      "a trusted aggregate with the attacker's transition function is refused", contains="aggregate sec_vip.total")

# a trusted table with an index over the attacker's function (which the attacker can
# replace): the planner would evaluate it as the reader
mal.execute("CREATE FUNCTION sec_m.norm(t text) RETURNS text LANGUAGE sql IMMUTABLE AS $$ SELECT lower(t) $$")
mal.execute("GRANT EXECUTE ON FUNCTION sec_m.norm(text) TO PUBLIC")
cur.execute("CREATE TABLE sec_vip.idx_t AS SELECT * FROM public.orders")
cur.execute("CREATE INDEX ON sec_vip.idx_t (sec_m.norm(user_id))")
fails(cur, """INSERT INTO experiment.metrics (name, source, unit_column, time_column, value_column)
              VALUES ('idx_metric', 'sec_vip.idx_t', 'user_id', 'ts', 'amount')""", "42501",
      "a trusted table indexed over the attacker's function is refused", contains="function sec_m.norm")
cur.execute("CREATE TABLE sec_vip.stx_t AS SELECT * FROM public.orders")
cur.execute("CREATE STATISTICS sec_vip.stx ON (sec_m.norm(user_id)), amount FROM sec_vip.stx_t")
fails(cur, """INSERT INTO experiment.metrics (name, source, unit_column, time_column, value_column)
              VALUES ('stx_metric', 'sec_vip.stx_t', 'user_id', 'ts', 'amount')""", "42501",
      "a trusted table with statistics over the attacker's function is refused", contains="function sec_m.norm")

# a trusted table whose row-level security policy reads the attacker's table: the attacker
# could give that table a policy of its own (or an index expression) at any time
mal.execute("CREATE TABLE sec_m.depts (dept text)")
mal.execute("INSERT INTO sec_m.depts VALUES ('eng')")
mal.execute("GRANT SELECT ON sec_m.depts TO PUBLIC")
cur.execute("CREATE TABLE sec_vip.ev2 (user_id text, ts timestamptz, dept text, amount float8)")
cur.execute("ALTER TABLE sec_vip.ev2 ENABLE ROW LEVEL SECURITY")
cur.execute("CREATE POLICY p ON sec_vip.ev2 USING (dept IN (SELECT d.dept FROM sec_m.depts d))")
cur.execute("GRANT SELECT ON sec_vip.ev2 TO sec_admin")
fails(adm, """INSERT INTO experiment.metrics (name, source, unit_column, time_column, value_column)
              VALUES ('ev2_amount', 'sec_vip.ev2', 'user_id', 'ts', 'amount')""", "42501",
      "a table whose policy reads the attacker's table is refused", contains="table sec_m.depts is owned")

# --- 4. another role's metric -------------------------------------------------------
fails(alice, "UPDATE experiment.metrics SET source = 'sec_m.hostile' WHERE name = 'mal_metric'", "42501",
      "changing another role's metric")
fails(mal, "UPDATE experiment.metrics SET source = 'sec_m.hostile' WHERE name = 'order_value'", "42501",
      "pointing another role's metric at a hostile view")
fails(mal, "DELETE FROM experiment.metrics WHERE name = 'order_value'", "42501", "deleting another role's metric")
fails(mal, "UPDATE experiment.metrics SET owner = 'sec_mallory' WHERE name = 'order_value'", "42501",
      "taking over another role's metric")

# another role's experiment: its metrics, variants and status belong to its owner role
alice.execute("SELECT owner_role::text FROM experiment.experiments WHERE id = 'alice-exp'")
ck.check(alice.fetchone()[0] == "sec_alice", "an experiment is owned by the role that creates it")
fails(mal, "DELETE FROM experiment.experiment_metrics WHERE experiment_id = 'sec-exp'", "42501",
      "removing the metrics of another role's experiment")
fails(mal, "UPDATE experiment.experiment_metrics SET role = 'secondary' WHERE experiment_id = 'sec-exp'", "42501",
      "demoting a metric of another role's experiment")
fails(mal, "INSERT INTO experiment.experiment_metrics VALUES ('sec-exp', 'mal_metric', 'secondary')", "42501",
      "adding a metric to another role's experiment")
fails(mal, "UPDATE experiment.variants SET config = '{}' WHERE experiment_id = 'sec-exp'", "42501",
      "changing the variants of another role's experiment")
fails(mal, "SELECT experiment.stop('sec-exp')", "42501", "stopping another role's experiment")
fails(mal, "UPDATE experiment.experiments SET owner_role = 'sec_mallory' WHERE id = 'sec-exp'", "42501",
      "taking over another role's experiment")
fails(mal, """INSERT INTO experiment.experiments (id, owner_role) VALUES ('mal-owned', 'sec_alice')""", "42501",
      "creating an experiment for another role")

# --- 5. who sees which results ------------------------------------------------------
cur.execute("INSERT INTO public.secret VALUES ('u1', now() - interval '1 day', 'NaN')")
cur.execute("""CREATE TABLE public.orders2 AS SELECT 'u' || i AS user_id, now() - interval '1 day' AS ts,
               ((i % 2) * 0.6 + (i % 7))::float8 AS amount FROM generate_series(1, 300) i""")
cur.execute("GRANT SELECT ON public.orders2 TO sec_alice, sec_bob")
alice.execute("""INSERT INTO experiment.metrics (name, source, unit_column, time_column, value_column)
                 VALUES ('order_amount2', 'public.orders2', 'user_id', 'ts', 'amount')""")
cur.execute("INSERT INTO experiment.experiment_metrics VALUES ('sec-exp', 'order_amount2', 'secondary')")
cur.execute("SELECT experiment.refresh('sec-exp')")
q_adj = "SELECT p_value_adjusted FROM experiment.results WHERE experiment_id = 'sec-exp' AND metric = 'order_amount2'"
cur.execute(q_adj)
adj_su = cur.fetchone()[0]
bob.execute(q_adj)
adj_bob = bob.fetchone()[0]
cur.execute("SELECT (test).p_value FROM experiment.metric_results WHERE experiment_id = 'sec-exp' AND metric = 'order_amount2'")
raw = cur.fetchone()[0]
ck.check(adj_su == adj_bob and adj_su is not None and adj_su != raw,
         "the Holm-adjusted p-value counts the hidden metric for every role: %r %r (raw %r)" % (adj_su, adj_bob, raw))
cur.execute("DELETE FROM experiment.experiment_metrics WHERE metric = 'order_amount2'")
cur.execute("SELECT count(*) FROM experiment.variant_stats WHERE experiment_id = 'sec-exp' AND metric = 'order_amount2'")
ck.check(cur.fetchone()[0] == 0, "a metric taken out of an experiment takes its stored results with it")

# another role's session settings cannot change what a refresh stores
alice.execute("""INSERT INTO experiment.metrics (name, source, unit_column, time_column, value_column, winsorize)
                 VALUES ('capped_orders', 'public.orders2', 'user_id', 'ts', 'amount', 0.99)""")
cur.execute("INSERT INTO experiment.experiment_metrics VALUES ('sec-exp', 'capped_orders', 'secondary')")
snapshot = "SELECT string_agg(metric || variant || moments::text || coalesce(cap::text, ''), ';' ORDER BY metric, variant) " \
           "FROM experiment.variant_stats WHERE experiment_id = 'sec-exp'"
cur.execute("SELECT experiment.refresh('sec-exp')")
cur.execute(snapshot)
before = cur.fetchone()[0]
mal.execute("SET extra_float_digits = -14")
mal.execute("SET DateStyle = 'SQL, DMY'")
mal.execute("SET TimeZone = 'Asia/Shanghai'")
mal.execute("SET IntervalStyle = 'sql_standard'")
mal.execute("SELECT experiment.refresh('sec-exp')")
mal.execute("RESET ALL")
mal.execute("SET client_min_messages = error")
cur.execute(snapshot)
ck.check(cur.fetchone()[0] == before, "a refresh under another role's odd settings stores the same results")
cur.execute("DELETE FROM experiment.experiment_metrics WHERE metric = 'capped_orders'")
cur.execute("SELECT skipped_source_values FROM experiment.health WHERE experiment_id = 'sec-exp'")
ck.check(cur.fetchone()[0] == 1, "the superuser's health counts the skipped NaN of salary")
bob.execute("SELECT coalesce(skipped_source_values, 0) FROM experiment.health WHERE experiment_id = 'sec-exp'")
ck.check(bob.fetchone()[0] == 0, "the reader's health does not count values of a source it may not read")
cur.execute("SELECT metric FROM experiment.results WHERE experiment_id = 'sec-exp' AND metric <> 'order_amount2' ORDER BY 1")
ck.check([r[0] for r in cur.fetchall()] == ["order_value", "salary"], "the superuser sees every metric")
for who, k in (("reader", bob), ("analyst", alice)):
    k.execute("SELECT metric FROM experiment.results WHERE experiment_id = 'sec-exp' AND metric <> 'order_amount2' ORDER BY 1")
    ck.check([r[0] for r in k.fetchall()] == ["order_value"], "the %s sees the results it may read, not salary" % who)
    k.execute("SELECT count(*) FROM experiment.metric_results WHERE metric = 'salary'")
    ck.check(k.fetchone()[0] == 0, "the %s sees no row of salary in metric_results" % who)
    k.execute("SELECT count(*) FROM experiment.variant_stats WHERE metric = 'salary'")
    ck.check(k.fetchone()[0] == 0, "the %s sees no moments of salary in variant_stats" % who)
    k.execute("SELECT experiment.readout('sec-exp')")
    text = k.fetchone()[0]
    ck.check("Primary metric (order_value)" in text and "salary:\n    Treatment: no result (hidden: role" in text,
             "the %s's readout shows order_value and hides salary: %s" % (who, text))
# a cheap function of the reader's own in the WHERE clause sees only the rows it may see
bob_c.notices.clear()
bob.execute("SET client_min_messages = notice")
bob.execute("""CREATE FUNCTION pg_temp.leak(text) RETURNS boolean LANGUAGE plpgsql COST 0.0000001
               AS $$ BEGIN RAISE NOTICE 'leak: %', $1; RETURN false; END $$""")
bob.execute("SELECT 1 FROM experiment.results WHERE pg_temp.leak(metric || ' ' || mean_control::text)")
leaked = [n for n in bob_c.notices if "salary" in n]
ck.check(leaked == [] and len(bob_c.notices) > 0,
         "the results view is a security barrier: %d notices, %r" % (len(bob_c.notices), leaked[:1]))
bob.execute("SET client_min_messages = error")
k = mal
k.execute("SELECT count(*) FROM experiment.results WHERE metric IN ('salary', 'order_value')")
ck.check(k.fetchone()[0] == 0, "the attacker sees neither salary nor order_value")
fails(alice, "SELECT count(*) FROM experiment.aa_test('sec-exp', 10)", "42501",
      "aa_test() names the metric its caller may not read", contains="may not read the source of metric salary")
fails(alice, "SELECT experiment.refresh(NULL)", "22004", "refresh(NULL) says that the id is NULL",
      contains="experiment_id must not be NULL")
cur.execute("SELECT experiment.conclude('sec-exp', 'SHIP', 'ship it')")
bob.execute("SELECT count(*) FROM experiment.conclusions WHERE experiment_id = 'sec-exp'")
ck.check(bob.fetchone()[0] == 0, "a conclusion whose snapshot holds salary is hidden from the reader")
fails(alice, "SELECT experiment.conclude('sec-exp', 'SHIP', 'mine now')", "42501",
      "an analyst cannot conclude another role's experiment")
alice.execute("SELECT (experiment.conclude('alice-exp', 'SHIP', 'ship it')).decision")
ck.check(alice.fetchone()[0] == "SHIP", "an analyst concludes its own experiment")
fails(mal, """INSERT INTO experiment.conclusions (experiment_id, decision, results, srm)
              VALUES ('alice-exp', 'DON''T SHIP', '[]', '[]')""", "42501",
      "an analyst cannot record a conclusion of another role's experiment")
fails(alice, """INSERT INTO experiment.conclusions (experiment_id, decision, results, srm, sources)
                VALUES ('alice-exp', 'SHIP', '[]', '[]', '[{"source": "x", "columns": ["a"]}]')""", "23514",
      "a conclusion's sources must have the documented form")
alice.execute("SELECT count(*) FROM experiment.conclusions")
ck.check(alice.fetchone()[0] >= 1, "conclusions stay readable")
fails(mal, "INSERT INTO experiment.experiment_metrics VALUES ('mal-exp', 'order_value', 'secondary')", "42501",
      "an experiment's owner cannot add a metric it may not read (one unit per variant would show its values)",
      contains="may not read the metric's source")
fails(alice, """INSERT INTO experiment.conclusions (experiment_id, decision, results, srm, concluded_by)
                VALUES ('sec-exp', 'SHIP', '[]', '[]', 'postgres')""", "42501",
      "an analyst cannot record a conclusion in another role's name")
fails(alice, """INSERT INTO experiment.conclusions (experiment_id, decision, results, srm, concluded_at)
                VALUES ('sec-exp', 'SHIP', '[]', '[]', '2025-01-01')""", "42501",
      "an analyst cannot backdate a conclusion")

# a metric name reused after the metric is gone shows nothing of the old metric's results
cur.execute("DELETE FROM experiment.experiment_metrics WHERE metric = 'salary'")
cur.execute("DELETE FROM experiment.metrics WHERE name = 'salary'")
cur.execute("SELECT count(*) FROM experiment.variant_stats WHERE metric = 'salary'")
ck.check(cur.fetchone()[0] == 0, "deleting a metric deletes its stored moments")
mal.execute("CREATE TABLE sec_m.fake (user_id text, ts timestamptz, salary float8)")
mal.execute("""INSERT INTO experiment.metrics (name, source, unit_column, time_column, value_column)
               VALUES ('salary', 'sec_m.fake', 'user_id', 'ts', 'salary')""")
mal.execute("SELECT count(*) FROM experiment.variant_stats WHERE metric = 'salary'")
ck.check(mal.fetchone()[0] == 0, "a metric registered under a reused name shows no old moments")
mal.execute("SELECT count(*) FROM experiment.conclusions WHERE results::text LIKE '%salary%'")
ck.check(mal.fetchone()[0] == 0, "nor the conclusions recorded while the old metric existed")
fails(adm, "TRUNCATE experiment.experiment_metrics, experiment.metrics", "42501",
      "an administrator cannot truncate the catalogue past the owners' checks")
fails(adm, "UPDATE experiment.enrollment SET units = units * 3", "42501",
      "an administrator cannot rewrite the enrollment that SRM and the decision read")
fails(adm, "UPDATE experiment.refreshes SET error = 'forged'", "42501",
      "an administrator cannot rewrite the refresh record")
fails(bob, "SELECT error FROM experiment.refreshes", "42501",
      "a reader cannot read refresh errors directly (a source's error may quote its data)")
bob.execute("SELECT refresh_error FROM experiment.health WHERE experiment_id = 'mal-exp'")
ck.check((bob.fetchone()[0] or "").startswith("the latest refresh failed (the message is shown"),
         "health shows a refresh error only to roles that may read every metric of the experiment")
cur.execute("SELECT refresh_error FROM experiment.health WHERE experiment_id = 'mal-exp'")
ck.check("must be superuser" in (cur.fetchone()[0] or ""), "and the whole message to those that may")
bob.execute("SELECT count(*) FROM experiment.conclusions WHERE experiment_id = 'alice-exp'")
ck.check(bob.fetchone()[0] == 1, "the reader sees the conclusion recorded from what the analyst could read")

# a role whose name needs quoting owns what it registers
cur.execute("""SELECT count(*) FROM pg_roles WHERE rolname = 'Sec Carol'""")
if cur.fetchone()[0] == 0:
    cur.execute('CREATE ROLE "Sec Carol" LOGIN')
cur.execute('GRANT experiment_analyst TO "Sec Carol"')
cur.execute('GRANT SELECT ON public.orders TO "Sec Carol"')
carol_c, carol = connect_as("Sec Carol")
carol.execute("""INSERT INTO experiment.metrics (name, source, unit_column, time_column, value_column)
                 VALUES ('carol_value', 'public.orders', 'user_id', 'ts', 'amount')""")
carol.execute("INSERT INTO experiment.experiments (id) VALUES ('carol-exp')")
carol.execute("""SELECT (SELECT owner::text FROM experiment.metrics WHERE name = 'carol_value'),
                        (SELECT owner_role::text FROM experiment.experiments WHERE id = 'carol-exp')""")
ck.check(carol.fetchone() == ('"Sec Carol"', '"Sec Carol"'),
         "a role whose name needs quoting owns its metric and experiment")
carol_c.close()

# --- 6. the roles do their jobs and no more --------------------------------------------
fails(bob, """INSERT INTO experiment.metrics (name, source, unit_column, time_column)
              VALUES ('x', 'public.orders', 'user_id', 'ts')""", "42501", "a reader cannot register metrics")
fails(bob, "SELECT experiment.refresh('sec-exp')", "42501", "a reader cannot refresh")
fails(bob, "DELETE FROM experiment.metric_results", "42501", "a reader cannot delete results")
fails(alice, "SELECT experiment.refresh_all()", "42501", "an analyst cannot run refresh_all()")
fails(alice, "INSERT INTO experiment.metric_results SELECT * FROM experiment.metric_results", "42501",
      "an analyst cannot write results")
alice.execute("SELECT experiment.refresh('sec-exp')")
ck.check(True, "an analyst refreshes")
ic, ik = connect_as("sec_ingest")
fails(ik, "SELECT count(*) FROM experiment.results", "42501", "the ingestion role cannot read results")
fails(ik, "DELETE FROM experiment.metrics", "42501", "the ingestion role cannot change the catalogue")
ic.close()
fails(mal, """SELECT count(*) FROM experiment.source_unit_values('{u1}', '{a}', '{2025-01-01}', 'public.secret',
              'user_id', '{ts}', '{salary}', '{sum}', '{0}', '{NULL}', '{f}', NULL, NULL, NULL, 'postgres')""",
      "42501", "source_unit_values() as a more privileged role", contains="permission denied to read")
fails(mal, """SELECT count(*) FROM experiment.source_unit_values('{u1}', '{a}', '{2025-01-01}', 'public.secret',
              'user_id', '{ts}', '{salary}', '{sum}', '{0}', '{NULL}', '{f}', NULL, NULL, NULL)""",
      "42501", "source_unit_values() as oneself over an unreadable table")

# --- 7. search_path: every function of the extension puts pg_temp last -------------------
cur.execute("""SELECT count(*) FROM pg_proc p JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid
               JOIN pg_extension x ON x.oid = d.refobjid AND x.extname = 'experiment'
               WHERE p.prolang IN (SELECT oid FROM pg_language WHERE lanname IN ('sql', 'plpgsql'))
                 AND NOT coalesce(array_to_string(p.proconfig, ',') LIKE '%search_path=pg_catalog, experiment, pg_temp%', false)""")
ck.check(cur.fetchone()[0] == 0, "every SQL and plpgsql function sets search_path = pg_catalog, experiment, pg_temp")
cur.execute("""SELECT count(*) FROM pg_proc p JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid
               JOIN pg_extension x ON x.oid = d.refobjid AND x.extname = 'experiment' WHERE p.prosecdef""")
cur.execute("""SELECT string_agg(p.proname, ',' ORDER BY p.proname) FROM pg_proc p
               JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid
               JOIN pg_extension x ON x.oid = d.refobjid AND x.extname = 'experiment' WHERE p.prosecdef""")
ck.check(cur.fetchone()[0] == "dimensions_forget_results,experiment_metrics_forget_results,metrics_forget_results,refresh,refresh_all,"
                              "refresh_interactions,unit_value_tables_drop",
         "only refresh, refresh_all, refresh_interactions, the results-forgetting triggers and the drop of stored per-unit values "
         "run as the extension's owner")

for c in (alice_c, mal_c, bob_c, adm_c):
    c.close()
ck.check(is_superuser("sec_mallory") is False, "in the end the attacker is no superuser")
su.close()
ck.report()
