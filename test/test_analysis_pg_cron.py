"""experiment.refresh_all() scheduled with the real pg_cron extension.

The cluster runs pg_cron (shared_preload_libraries = 'pg_cron',
cron.database_name = 'experiment', as scripts/setup.sh configures it).
The test creates that database with pg_cron and experiment, registers a
running experiment with exposures waiting in the staging table, schedules
refresh_all() (every 2 seconds with pg_cron >= 1.5, every minute before),
waits, bounded, until cron.job_run_details shows a successful run and the
experiment was refreshed by it, then unschedules the job.

The job is scheduled as doc/security.md recommends: by a dedicated login role,
member of experiment_admin only (no superuser, no SELECT on any source). Among
the running experiments is one whose metric reads a hostile view of another
role (it calls a function that tries ALTER ROLE ... SUPERUSER): the job's
refresh_all() must record that experiment's failure, refresh the other, and
the view's owner must not become superuser.
"""
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from exptest import Checker, connect, skip  # noqa: E402

import psycopg2  # noqa: E402

DB = "experiment"
ck = Checker("test_analysis_pg_cron")

admin = connect("postgres")
with admin.cursor() as cur:
    cur.execute("SHOW shared_preload_libraries")
    if "pg_cron" not in cur.fetchone()[0]:
        skip("pg_cron is not in shared_preload_libraries")
    cur.execute("SELECT current_setting('cron.database_name', true)")
    if cur.fetchone()[0] != DB:
        skip("cron.database_name is not %s" % DB)
    cur.execute("SELECT default_version FROM pg_available_extensions WHERE name = 'pg_cron'")
    row = cur.fetchone()
    if row is None:
        skip("pg_cron is not installed")
    version = row[0]
    # never drop this database: terminating the pg_cron scheduler's connection stops it until a restart
    cur.execute("SELECT count(*) FROM pg_database WHERE datname = %s", (DB,))
    if cur.fetchone()[0] == 0:
        cur.execute('CREATE DATABASE "%s"' % DB)
admin.close()

conn = connect(DB)
cur = conn.cursor()
cur.execute("SET client_min_messages = warning")
cur.execute("CREATE EXTENSION IF NOT EXISTS pg_cron")
cur.execute("SELECT cron.unschedule(jobid) FROM cron.job WHERE jobname = 'experiment-refresh-all'")
cur.execute("DROP EXTENSION IF EXISTS experiment CASCADE")
cur.execute("DROP TABLE IF EXISTS public.cron_events")
cur.execute("CREATE EXTENSION experiment")
launcher = False
for _ in range(20):
    cur.execute("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'pg_cron launcher'")
    if cur.fetchone()[0] > 0:
        launcher = True
        break
    time.sleep(0.5)
if not ck.check(launcher, "the pg_cron scheduler runs (pg_stat_activity shows a pg_cron launcher)"):
    ck.report()
cur.execute("SELECT extversion FROM pg_extension WHERE extname = 'pg_cron'")
installed = cur.fetchone()[0]
major_minor = tuple(int(x) for x in installed.split("-")[0].split(".")[:2])
seconds = major_minor >= (1, 5)
schedule = "2 seconds" if seconds else "* * * * *"
deadline_s = 60 if seconds else 150
print("pg_cron %s (default %s): schedule %r" % (installed, version, schedule))

cur.execute("SELECT count(*) FROM experiment.setup_roles()")
for role, member_of in (("exp_cron_job", "experiment_admin"), ("exp_cron_mallory", "experiment_analyst")):
    cur.execute("SELECT count(*) FROM pg_roles WHERE rolname = %s", (role,))
    if cur.fetchone()[0] == 0:
        cur.execute('CREATE ROLE "%s" LOGIN' % role)
    cur.execute('GRANT "%s" TO "%s"' % (member_of, role))
cur.execute("GRANT USAGE ON SCHEMA cron TO exp_cron_job")
cur.execute("DROP SCHEMA IF EXISTS cron_mallory CASCADE")
cur.execute("CREATE SCHEMA cron_mallory AUTHORIZATION exp_cron_mallory")
cur.execute("SET ROLE exp_cron_mallory")
cur.execute("""CREATE FUNCTION cron_mallory.evil() RETURNS integer LANGUAGE plpgsql AS $$
               BEGIN ALTER ROLE exp_cron_mallory SUPERUSER; RETURN 0; END $$""")
cur.execute("""CREATE VIEW cron_mallory.hostile AS
               SELECT 'u' || i AS user_id, now() - interval '1 day' AS ts, cron_mallory.evil()::float8 AS amount
               FROM generate_series(1, 10) i""")
cur.execute("""INSERT INTO experiment.experiments (id, name, status, start_at)
               VALUES ('cron-hostile', 'hostile', 'draft', now() - interval '3 days')""")
cur.execute("""INSERT INTO experiment.variants (experiment_id, name, allocation, is_control) VALUES
               ('cron-hostile', 'control', 0.5, true), ('cron-hostile', 'treatment', 0.5, false)""")
cur.execute("""INSERT INTO experiment.metrics (name, source, unit_column, time_column, value_column)
               VALUES ('cron_hostile', 'cron_mallory.hostile', 'user_id', 'ts', 'amount')""")
cur.execute("""INSERT INTO experiment.experiment_metrics (experiment_id, metric, role)
               VALUES ('cron-hostile', 'cron_hostile', 'primary')""")
cur.execute("UPDATE experiment.experiments SET status = 'running' WHERE id = 'cron-hostile'")
cur.execute("RESET ROLE")
cur.execute("""INSERT INTO experiment.exposures (experiment_id, unit_id, variant, exposed_at)
               SELECT 'cron-hostile', 'u' || i, CASE WHEN i % 2 = 0 THEN 'control' ELSE 'treatment' END,
                      now() - interval '2 days' FROM generate_series(1, 10) i""")

cur.execute("CREATE TABLE public.cron_events (user_id text, ts timestamptz, amount float8)")
cur.execute("""INSERT INTO experiment.experiments (id, name, status, start_at)
               VALUES ('cron-exp', 'scheduled refresh', 'draft', now() - interval '3 days')""")
cur.execute("""INSERT INTO experiment.variants (experiment_id, name, allocation, is_control) VALUES
               ('cron-exp', 'control', 0.5, true), ('cron-exp', 'treatment', 0.5, false)""")
cur.execute("""INSERT INTO experiment.metrics (name, source, unit_column, time_column, value_column, aggregation)
               VALUES ('cron_revenue', 'public.cron_events', 'user_id', 'ts', 'amount', 'sum')""")
cur.execute("""INSERT INTO experiment.experiment_metrics (experiment_id, metric, role)
               VALUES ('cron-exp', 'cron_revenue', 'primary')""")
cur.execute("UPDATE experiment.experiments SET status = 'running' WHERE id = 'cron-exp'")
# exposures land in the staging table (as a Kafka sink writes them); refresh_all loads them first
cur.execute("""INSERT INTO experiment.exposures_staging (experiment_id, unit_id, variant, exposed_at)
               SELECT 'cron-exp', 'u' || i, CASE WHEN i % 2 = 0 THEN 'control' ELSE 'treatment' END,
                      (now() - interval '2 days' + i * interval '1 minute')::text
               FROM generate_series(1, 400) i""")
cur.execute("""INSERT INTO public.cron_events
               SELECT 'u' || (i % 400 + 1), now() - interval '1 day', (i % 17)::float8
               FROM generate_series(1, 2000) i""")

cur.execute("SELECT now()")
scheduled_at = cur.fetchone()[0]
# scheduled by the job role: the job runs as it
cur.execute("SET ROLE exp_cron_job")
cur.execute("SELECT cron.schedule('experiment-refresh-all', %s, 'SELECT experiment.refresh_all()')", (schedule,))
jobid = cur.fetchone()[0]
cur.execute("RESET ROLE")
cur.execute("SELECT username FROM cron.job WHERE jobid = %s", (jobid,))
ck.check(cur.fetchone()[0] == "exp_cron_job", "the job belongs to the non-superuser job role")
ck.check(jobid is not None, "cron.schedule returned a job id")

ok = False
status = None
start = time.time()
try:
    while time.time() - start < deadline_s:
        time.sleep(1)
        cur.execute("""SELECT status, return_message FROM cron.job_run_details
                       WHERE jobid = %s ORDER BY start_time DESC LIMIT 1""", (jobid,))
        row = cur.fetchone()
        status = row
        if row and row[0] == "failed":
            break
        if row and row[0] == "succeeded":
            ok = True
            break
finally:
    cur.execute("SELECT cron.unschedule(%s)", (jobid,))
    unscheduled = cur.fetchone()[0]

print("waited %.0f s; last run %r" % (time.time() - start, status))
ck.check(ok, "a run of refresh_all() succeeded within %d s (last: %r)" % (deadline_s, status))
ck.check(unscheduled is True, "job unscheduled")
cur.execute("SELECT count(*) FROM cron.job WHERE jobid = %s", (jobid,))
ck.check(cur.fetchone()[0] == 0, "job gone from cron.job")

cur.execute("""SELECT refreshed_at, enrolled_units FROM experiment.refreshes WHERE experiment_id = 'cron-exp'""")
row = cur.fetchone()
ck.check(row is not None and row[0] is not None and row[0] >= scheduled_at,
         "experiment refreshed by the job after it was scheduled: %r" % (row,))
ck.check(row is not None and row[1] == 400, "the job loaded the staged exposures: %r" % (row,))
cur.execute("SELECT count(*) FROM experiment.exposures_staging")
ck.check(cur.fetchone()[0] == 0, "staging table emptied by the job")
cur.execute("""SELECT count(*), min(refreshed_at) FROM experiment.variant_stats WHERE experiment_id = 'cron-exp'""")
n, when = cur.fetchone()
ck.check(n == 2 and when is not None and when >= scheduled_at, "variant_stats refreshed by the job: %r %r" % (n, when))
cur.execute("SELECT p_value IS NOT NULL FROM experiment.results WHERE experiment_id = 'cron-exp'")
ck.check(cur.fetchone() == (True,), "results available after the scheduled refresh")
cur.execute("SELECT error FROM experiment.refreshes WHERE experiment_id = 'cron-hostile'")
row = cur.fetchone()
ck.check(row is not None and "must be superuser" in (row[0] or ""),
         "the hostile experiment's refresh failed as its metric's owner and was recorded: %r" % (row,))
cur.execute("SELECT rolsuper FROM pg_roles WHERE rolname = 'exp_cron_mallory'")
ck.check(cur.fetchone()[0] is False, "the hostile view's owner did not become superuser")

conn.close()
ck.report()
