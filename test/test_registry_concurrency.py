"""Concurrent writers cannot break the registry's rules:

- a variant inserted while another transaction starts the experiment waits for
  it and is then refused (the split of a running experiment is frozen);
- a start that waits for a concurrent variant insert sees that variant and
  refuses the now invalid split;
- two transactions claiming overlapping ranges of one layer: the second waits
  and is refused (23P01).
The second transaction runs in a thread and blocks on a lock until the first
commits; the outcome does not depend on timing.
"""
import os
import sys
import threading
import time

import psycopg2

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from exptest import Checker, connect, fresh_db  # noqa: E402

DB = "exp_registry_concurrency"
V2 = '[{"name": "control", "allocation": 0.5}, {"name": "treatment", "allocation": 0.5}]'


def in_thread(stmt):
    """Run stmt on a new autocommit connection in a thread; return (thread, result dict)."""
    res = {}

    def run():
        conn = connect(DB)
        try:
            conn.cursor().execute(stmt)
            res["ok"] = True
        except psycopg2.Error as e:
            res["ok"] = False
            res["code"] = e.pgcode
            res["msg"] = str(e).splitlines()[0]
        conn.close()

    t = threading.Thread(target=run)
    t.start()
    return t, res


def main():
    ck = Checker("test_registry_concurrency")
    admin = fresh_db(DB)
    ac = admin.cursor()
    t1 = connect(DB)
    t1.autocommit = False
    c1 = t1.cursor()

    for how, start in (("start()", "SELECT experiment.start('%s')"),
                       ("UPDATE", "UPDATE experiment.experiments SET status = 'running' WHERE id = '%s'")):
        # 1. start first, then a concurrent insert of a variant
        e = "c-1-" + how[:5]
        ac.execute("SELECT experiment.create_experiment(%s, %s)", (e, V2))
        c1.execute(start % e)
        th, res = in_thread("INSERT INTO experiment.variants VALUES ('%s', 'late', 0.5, NULL, false)" % e)
        time.sleep(0.5)
        t1.commit()
        th.join()
        ck.check(res.get("ok") is False and res.get("code") == "22023", "%s: insert during start: %r" % (how, res))
        try:
            ac.execute("SELECT experiment.check_split(%s)", (e,))
        except psycopg2.Error as err:
            ck.check(False, "%s: %s split broken: %s" % (how, e, err))
        ac.execute("SELECT count(*) FROM experiment.variants WHERE experiment_id = %s", (e,))
        ck.check(ac.fetchone()[0] == 2, "%s: %s keeps its two variants" % (how, e))

        # 2. a variant insert first, then a concurrent start
        e = "c-2-" + how[:5]
        ac.execute("SELECT experiment.create_experiment(%s, %s)", (e, V2))
        c1.execute("INSERT INTO experiment.variants VALUES (%s, 'late', 0.5, NULL, false)", (e,))
        th, res = in_thread(start % e)
        time.sleep(0.5)
        t1.commit()
        th.join()
        ck.check(res.get("ok") is False and res.get("code") == "22023", "%s: start during insert: %r" % (how, res))
        ac.execute("SELECT status FROM experiment.experiments WHERE id = %s", (e,))
        ck.check(ac.fetchone()[0] == "draft", "%s: %s stays a draft" % (how, e))

    # 3. overlapping layer ranges from two transactions
    c1.execute("SELECT experiment.create_experiment('c-3', %s, layer => 'L', layer_start => 0, layer_end => 0.6)", (V2,))
    th, res = in_thread("SELECT experiment.create_experiment('c-4', '%s', layer => 'L', layer_start => 0.5, layer_end => 1)"
                        % V2)
    time.sleep(0.5)
    t1.commit()
    th.join()
    ck.check(res.get("ok") is False and res.get("code") == "23P01", "overlapping layer ranges: %r" % res)
    ac.execute("SELECT count(*) FROM experiment.experiments WHERE layer = 'L'")
    ck.check(ac.fetchone()[0] == 1, "one experiment in layer L")

    t1.close()
    admin.close()
    ck.report()


if __name__ == "__main__":
    main()
