"""experiment.eval_condition against GrowthBook's cross-SDK test cases.

Every row of the evalCondition section of ../shared/peers/growthbook-cases.json
([name, condition, attributes, expected, savedGroups?]) is evaluated in SQL and
must give the expected boolean.  Rows with saved groups pass them as the third
argument.  Prints how many cases passed, were skipped and failed.
"""
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
import exptest  # noqa: E402

CASES = os.path.join(exptest.PEERS_DIR, "growthbook-cases.json")


def main():
    if not os.path.exists(CASES):
        exptest.skip("%s is absent" % CASES)
    with open(CASES) as f:
        rows = json.load(f)["evalCondition"]

    conn = exptest.fresh_db("exp_condition_peers")
    chk = exptest.Checker("test_condition_peers")
    skipped = 0
    with conn.cursor() as cur:
        for row in rows:
            name, condition, attributes, expected = row[:4]
            groups = row[4] if len(row) > 4 else {}
            if not isinstance(expected, bool):
                skipped += 1
                print("SKIP: %s: expected value %r is not a boolean" % (name, expected))
                continue
            cur.execute(
                "SELECT experiment.eval_condition(%s::jsonb, %s::jsonb, %s::jsonb)",
                (json.dumps(condition), json.dumps(attributes), json.dumps(groups)),
            )
            got = cur.fetchone()[0]
            chk.check(got is expected,
                      "%s: eval_condition(%s, %s, %s) = %r, expected %r"
                      % (name, json.dumps(condition), json.dumps(attributes),
                         json.dumps(groups), got, expected))
    conn.close()
    print("evalCondition cases: %d total, %d passed, %d skipped, %d failed"
          % (len(rows), chk.passed, skipped, chk.failed))
    chk.report()


if __name__ == "__main__":
    main()
