"""experiment.growthbook_payload() evaluated by the real GrowthBook JavaScript
SDK (@growthbook/growthbook from npm, test/sdk) assigns every user the same
variant as experiment.assign() in SQL.

Several experiments: equal and unequal weights, coverage < 1, two experiments
sharing a namespace (layer), a targeting condition, hashVersion 1 and 2; plus
experiments that must stay out of the payload (a draft, a sha256 one).
"""
import json
import os
import random
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from exptest import Checker, fresh_db, skip, PROJECT_ROOT  # noqa: E402

SDK_DIR = os.path.join(PROJECT_ROOT, "test", "sdk")
N_USERS = 6000


def missing(why):
    """The SDK cannot run here: a skip on a developer's machine, a failure in
    CI (CI=true), where the SDK must be there."""
    if os.environ.get("CI") == "true":
        print("FAIL: %s (CI=true: the GrowthBook SDK check may not be skipped)" % why)
        sys.exit(1)
    skip(why)


def ensure_sdk():
    node = shutil.which("node")
    npm = shutil.which("npm")
    if not node or not npm:
        missing("node or npm is not installed")
    if not os.path.isdir(os.path.join(SDK_DIR, "node_modules", "@growthbook", "growthbook")):
        print("installing the GrowthBook SDK: npm ci in test/sdk", flush=True)
        r = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=SDK_DIR,
                           stdout=sys.stdout, stderr=sys.stderr)
        if r.returncode != 0 or not os.path.isdir(os.path.join(SDK_DIR, "node_modules", "@growthbook", "growthbook")):
            missing("npm ci in test/sdk failed (exit %d)" % r.returncode)
    return node


def main():
    node = ensure_sdk()
    ck = Checker("test_registry_growthbook_sdk")
    conn = fresh_db("exp_registry_gbsdk")
    cur = conn.cursor()

    experiments = [
        # id, variants, kwargs
        ("gb-equal", [("control", 0.5), ("treatment", 0.5)], {}),
        ("gb-weighted-coverage", [("control", 0.2), ("blue", 0.3), ("green", 0.5)],
         {"traffic": 0.35, "salt": "checkout-2026-q4"}),
        ("gb-ns-first", [("control", 0.25), ("treatment", 0.75)],
         {"layer": "checkout", "layer_start": 0.0, "layer_end": 0.4}),
        ("gb-ns-second", [("a", 0.4), ("b", 0.3), ("c", 0.3)],
         {"layer": "checkout", "layer_start": 0.4, "layer_end": 0.9, "traffic": 0.8}),
        ("gb-targeted", [("control", 0.5), ("treatment", 0.5)],
         {"targeting": {"country": {"$in": ["SG", "MY", "TH"]}, "age": {"$gte": 18}}}),
        ("gb-v1", [("control", 0.6), ("treatment", 0.4)],
         {"hash_scheme": "growthbook_v1", "traffic": 0.6}),
    ]
    for eid, variants, kw in experiments:
        vj = json.dumps([{"name": n, "allocation": a, "config": {"variant": n, "n": i}}
                         for i, (n, a) in enumerate(variants)])
        cur.execute(
            "SELECT experiment.create_experiment(%s, %s::jsonb, traffic => %s, hash_scheme => %s, salt => %s,"
            " layer => %s, layer_start => %s, layer_end => %s, targeting => %s::jsonb, start => true)",
            (eid, vj, kw.get("traffic", 1.0), kw.get("hash_scheme", "growthbook_v2"), kw.get("salt"),
             kw.get("layer"), kw.get("layer_start"), kw.get("layer_end"),
             json.dumps(kw["targeting"]) if "targeting" in kw else None))
    # not in the payload: a draft and a running sha256 experiment
    cur.execute("SELECT experiment.create_experiment('gb-draft', "
                "'[{\"name\":\"control\",\"allocation\":0.5},{\"name\":\"t\",\"allocation\":0.5}]',"
                " hash_scheme => 'growthbook_v2')")
    cur.execute("SELECT experiment.create_experiment('sha-running', "
                "'[{\"name\":\"control\",\"allocation\":0.5},{\"name\":\"t\",\"allocation\":0.5}]', start => true)")

    cur.execute("SELECT experiment.growthbook_payload()")
    payload = cur.fetchone()[0]
    feature_keys = sorted(payload["features"].keys())
    ck.check(feature_keys == sorted(e[0] for e in experiments),
             "payload features %r are the running growthbook experiments" % feature_keys)

    rng = random.Random(20261125)
    countries = ["SG", "MY", "TH", "US", "ID", "VN"]
    users = []
    for i in range(N_USERS):
        kind = rng.random()
        if kind < 0.8:
            uid = "user-%d-%08x" % (i, rng.getrandbits(32))
        elif kind < 0.9:
            uid = "%d" % rng.getrandbits(40)
        elif kind < 0.97:
            uid = "üser-%d-ñ-%s" % (i, rng.choice(["é", "中文", "日本", "ß"]))
        else:
            uid = "emoji-%d-%s" % (i, rng.choice(["\U0001F600", "\U0001F680x", "a\U00010348b"]))
        attrs = {"country": rng.choice(countries)}
        if rng.random() < 0.9:
            attrs["age"] = rng.randint(12, 70)
        users.append({"id": uid, "attributes": attrs})

    doc = {"payload": payload, "features": feature_keys, "users": users}
    proc = subprocess.run([node, os.path.join(SDK_DIR, "assign.js")], input=json.dumps(doc),
                          capture_output=True, text=True, cwd=SDK_DIR)
    if proc.returncode != 0:
        print(proc.stderr)
        ck.check(False, "node assign.js exited with %d" % proc.returncode)
        ck.report()
    out = json.loads(proc.stdout)
    sdk = out["assignments"]
    print("GrowthBook SDK %s, %d users x %d experiments" % (out["sdk_version"], len(users), len(feature_keys)))

    sql_rows = {}
    for key in feature_keys:
        cur.execute(
            "SELECT u.ord, experiment.assign(u.doc ->> 'id', %s, u.doc -> 'attributes' || "
            "jsonb_build_object('id', u.doc ->> 'id'))"
            " FROM jsonb_array_elements(%s::jsonb) WITH ORDINALITY AS u(doc, ord) ORDER BY u.ord",
            (key, json.dumps(users)))
        sql_rows[key] = [r[1] for r in cur.fetchall()]

    # the comparisons below index row by row: first make sure no row is missing
    # or extra on either side, so that a short answer cannot pass unnoticed
    ck.check(len(sdk) == len(users), "the SDK answered for %d users, want %d" % (len(sdk), len(users)))
    bad_rows = [i for i, row in enumerate(sdk) if len(row) != len(feature_keys)]
    ck.check(not bad_rows, "SDK rows without one answer per experiment: %r" % bad_rows[:5])
    for key in feature_keys:
        ck.check(len(sql_rows[key]) == len(users), "%s: SQL answered for %d users, want %d"
                 % (key, len(sql_rows[key]), len(users)))
    if len(sdk) != len(users) or bad_rows or any(len(r) != len(users) for r in sql_rows.values()):
        ck.report()

    for j, key in enumerate(feature_keys):
        mismatches = [(users[i]["id"], sdk[i][j], sql_rows[key][i])
                      for i in range(len(users)) if sdk[i][j] != sql_rows[key][i]]
        enrolled = sum(1 for i in range(len(users)) if sdk[i][j] is not None)
        ck.check(not mismatches, "%s: %d of %d users differ, e.g. %r"
                 % (key, len(mismatches), len(users), mismatches[:5]))
        # every experiment enrols some users and leaves some out or splits them
        ck.check(enrolled > 100, "%s: only %d users enrolled" % (key, enrolled))
        variants = set(sdk[i][j] for i in range(len(users))) - {None}
        ck.check(len(variants) >= 2, "%s: variants seen %r" % (key, variants))
        print("%-22s enrolled %5d of %d, %d mismatches" % (key, enrolled, len(users), len(mismatches)))

    # coverage < 1 and targeting leave users out; the namespace is exclusive
    idx = {k: j for j, k in enumerate(feature_keys)}
    ck.check(any(sdk[i][idx["gb-weighted-coverage"]] is None for i in range(len(users))),
             "coverage 0.35 leaves users out")
    both = sum(1 for i in range(len(users))
               if sdk[i][idx["gb-ns-first"]] is not None and sdk[i][idx["gb-ns-second"]] is not None)
    ck.check(both == 0, "%d users in both experiments of namespace checkout" % both)
    wrong_target = sum(1 for i, u in enumerate(users)
                       if sdk[i][idx["gb-targeted"]] is not None
                       and not (u["attributes"]["country"] in ("SG", "MY", "TH")
                                and u["attributes"].get("age", -1) >= 18))
    ck.check(wrong_target == 0, "%d users enrolled against the targeting condition" % wrong_target)

    conn.close()
    ck.report()


if __name__ == "__main__":
    main()
