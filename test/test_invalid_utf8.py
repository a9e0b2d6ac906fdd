"""Unit ids that are not valid UTF-8, in a SQL_ASCII database (the only place
PostgreSQL stores such text).

Byte-based schemes (sha256 bucketing, Eppo's MD5 shards, Statsig's SHA-256)
hash the bytes as stored and give a value; GrowthBook's schemes hash the
UTF-16 code units of a JavaScript string and refuse invalid UTF-8 with 22021
(character_not_in_repertoire) and a HINT, never a wrong bucket. Exposures,
a refresh over a source keyed by such ids, and the results work unchanged.
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from exptest import Checker, connect  # noqa: E402

import psycopg2  # noqa: E402

DB = "exp_sql_ascii"
ck = Checker("test_invalid_utf8")
admin = connect("postgres")
with admin.cursor() as cur:
    cur.execute('DROP DATABASE IF EXISTS "%s" WITH (FORCE)' % DB)
    cur.execute("""CREATE DATABASE "%s" ENCODING 'SQL_ASCII' TEMPLATE template0 LC_COLLATE 'C' LC_CTYPE 'C'""" % DB)
admin.close()
conn = connect(DB)
cur = conn.cursor()
cur.execute("SET client_min_messages = warning")
cur.execute("CREATE EXTENSION experiment")
BAD = r"E'\xff\xfe'"

for sql, what in ((r"SELECT experiment.bucket(%s, 'salt')" % BAD, "bucket"),
                  (r"SELECT experiment.eppo_shard(%s, 'salt')" % BAD, "eppo_shard"),
                  (r"SELECT experiment.statsig_bucket(%s, 'salt')" % BAD, "statsig_bucket"),
                  (r"SELECT experiment.unit_hash('sha256', 'salt', %s)" % BAD, "unit_hash sha256")):
    cur.execute(sql)
    v = cur.fetchone()[0]
    ck.check(v is not None, "%s hashes the bytes of an invalid UTF-8 id: %r" % (what, v))
cur.execute(r"SELECT experiment.bucket(%s, 'salt') = experiment.bucket(%s, 'salt')" % (BAD, BAD))
ck.check(cur.fetchone()[0] is True, "the same bytes get the same bucket")

for sql, what in ((r"SELECT experiment.growthbook_hash('seed', %s, 2)" % BAD, "growthbook_hash v2"),
                  (r"SELECT experiment.growthbook_hash('seed', %s, 1)" % BAD, "growthbook_hash v1"),
                  (r"SELECT experiment.growthbook_hash(%s, 'u1', 2)" % BAD, "growthbook_hash of a seed"),
                  (r"SELECT experiment.unit_hash('growthbook_v2', 'salt', %s)" % BAD, "unit_hash growthbook_v2"),
                  (r"SELECT experiment.growthbook_in_namespace(%s, 'ns', 0, 0.5)" % BAD, "growthbook_in_namespace")):
    try:
        cur.execute(sql)
        ck.check(False, "%s of invalid UTF-8: no error (%r)" % (what, cur.fetchone()))
    except psycopg2.Error as e:
        ck.check(e.pgcode == "22021" and "UTF-8" in e.pgerror and e.diag.message_hint is not None,
                 "%s of invalid UTF-8: %s %s" % (what, e.pgcode, e.pgerror.strip().splitlines()[0]))

# the registry, exposures and a refresh keyed by such ids
cur.execute("""SELECT experiment.create_experiment('u8', '[{"name": "control", "allocation": 0.5},
                                                            {"name": "treatment", "allocation": 0.5}]')""")
cur.execute("UPDATE experiment.experiments SET start_at = now() - interval '2 days' WHERE id = 'u8'")
cur.execute("CREATE TABLE public.events (user_id text, ts timestamptz, amount float8)")
cur.execute("""INSERT INTO experiment.metrics (name, source, unit_column, time_column, value_column)
               VALUES ('u8_amount', 'public.events', 'user_id', 'ts', 'amount')""")
cur.execute("INSERT INTO experiment.experiment_metrics (experiment_id, metric, role) VALUES ('u8', 'u8_amount', 'primary')")
cur.execute("SELECT experiment.start('u8')")
ids = [r"E'\xff%02x'" % i for i in range(64)]
n_stored = 0
for i, uid in enumerate(ids):
    cur.execute("SELECT experiment.assign(%s, 'u8')" % uid)
    variant = cur.fetchone()[0]
    cur.execute("SELECT experiment.log_exposure('u8', %s, %%s, now() - interval '1 day')" % uid, (variant,))
    n_stored += cur.fetchone()[0]
    cur.execute("INSERT INTO public.events VALUES (%s, now() - interval '12 hours', %%s)" % uid, (float(i % 5),))
ck.check(n_stored == 64, "64 exposures of invalid UTF-8 ids stored: %d" % n_stored)
cur.execute("SELECT experiment.refresh('u8')")
cur.execute("SELECT sum(experiment.n(moments)), sum(experiment.n(moments) * experiment.mean(moments)) "
            "FROM experiment.variant_stats WHERE experiment_id = 'u8'")
n, total = cur.fetchone()
ck.check(n == 64 and abs(total - sum(i % 5 for i in range(64))) < 1e-9,
         "the refresh joins events to units by the bytes of their ids: n %r, total %r" % (n, total))
conn.close()
admin = connect("postgres")
admin.cursor().execute('DROP DATABASE "%s" WITH (FORCE)' % DB)
admin.close()
ck.report()
