"""A change to the registry sends NOTIFY experiment_ruleset with the new
ruleset version as payload, delivered when the change commits and never for a
rolled-back one; a polling client that sends its known version gets NULL
until the ruleset changes.
"""
import os
import select
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from exptest import Checker, connect, fresh_db  # noqa: E402

DB = "exp_registry_notify"
VARIANTS = '[{"name": "control", "allocation": 0.5}, {"name": "treatment", "allocation": 0.5}]'


def drain(conn, wait=1.0):
    """Notifications that arrive within wait seconds (payloads, in order)."""
    got = []
    if select.select([conn], [], [], wait) != ([], [], []):
        conn.poll()
    conn.poll()
    while conn.notifies:
        n = conn.notifies.pop(0)
        got.append((n.channel, n.payload))
    return got


def main():
    ck = Checker("test_registry_notify")
    writer = fresh_db(DB)
    listener = connect(DB)
    lc = listener.cursor()
    lc.execute("LISTEN experiment_ruleset")
    wc = writer.cursor()

    def version():
        wc.execute("SELECT experiment.ruleset_version()")
        return wc.fetchone()[0]

    v0 = version()
    # creating a draft is a registry change: notified, version unchanged (drafts are not in the ruleset)
    wc.execute("SELECT experiment.create_experiment('n-a', %s)", (VARIANTS,))
    got = drain(listener)
    ck.check(len(got) >= 1 and all(c == "experiment_ruleset" for c, _ in got), "draft created: %r" % got)
    ck.check(got and got[-1][1] == v0, "draft: payload %r is the unchanged version %r" % (got[-1:] or None, v0))

    # starting it changes the version; the payload is the new version
    wc.execute("SELECT experiment.start('n-a')")
    v1 = version()
    got = drain(listener)
    ck.check(v1 != v0, "start changes the version")
    ck.check(got and got[-1][1] == v1, "start: payload %r, version %r" % (got, v1))

    # nothing is delivered before commit, nothing at all after a rollback
    writer.autocommit = False
    wc.execute("UPDATE experiment.experiments SET traffic = 1 WHERE id = 'n-a'")
    wc.execute("UPDATE experiment.variants SET config = '{\"x\": 1}' WHERE experiment_id = 'n-a' AND name = 'treatment'")
    pending = version()
    ck.check(drain(listener, 0.5) == [], "nothing delivered before commit")
    writer.rollback()
    ck.check(drain(listener, 0.5) == [], "nothing delivered after rollback")
    ck.check(version() == v1, "rollback keeps the version")
    writer.rollback()

    wc.execute("UPDATE experiment.variants SET config = '{\"x\": 1}' WHERE experiment_id = 'n-a' AND name = 'treatment'")
    ck.check(drain(listener, 0.5) == [], "nothing delivered before commit (2)")
    writer.commit()
    got = drain(listener)
    ck.check(got and got[-1][1] == pending, "commit delivers the new version %r: %r" % (pending, got))
    writer.autocommit = True

    # a polling client: ruleset(known) is NULL while nothing changed
    lc.execute("SELECT experiment.ruleset(NULL)")
    rs = lc.fetchone()[0]
    lc.execute("SELECT experiment.ruleset(%s)", (rs["version"],))
    ck.check(lc.fetchone()[0] is None, "ruleset(current version) is NULL")
    ck.check(rs["version"] == pending, "ruleset version is the notified one")
    ck.check([e["id"] for e in rs["experiments"]] == ["n-a"], "ruleset lists the running experiment")

    # a change through each table, and TRUNCATE, notify
    wc.execute("SELECT experiment.stop('n-a')")
    got = drain(listener)
    ck.check(got and got[-1][1] == version() and version() != pending, "stop notifies the new version")
    wc.execute("UPDATE experiment.experiments SET status = 'concluded' WHERE id = 'n-a'")
    drain(listener, 0.3)
    wc.execute("DELETE FROM experiment.experiments")
    got = drain(listener)
    ck.check(len(got) == 1 and got[0][1] == version(), "delete notifies: %r" % got)
    wc.execute("TRUNCATE experiment.variants CASCADE")
    got = drain(listener)
    ck.check(len(got) == 1, "truncate notifies: %r" % got)

    listener.close()
    writer.close()
    ck.report()


if __name__ == "__main__":
    main()
