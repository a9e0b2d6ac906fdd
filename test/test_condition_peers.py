"""experiment.eval_condition against GrowthBook's own definition of the
targeting language.

1. The cross-SDK cases: every row of the evalCondition section of
   ../shared/peers/growthbook-cases.json ([name, condition, attributes,
   expected, savedGroups?]) is evaluated in SQL and must give the expected
   boolean; rows with saved groups pass them as the third argument.
2. The real SDK: seeded random conditions and attributes (every operator,
   coercions between strings, numbers, booleans and null, arrays, dotted
   paths, saved groups, and a matrix of JavaScript regular expressions) are
   evaluated by evalCondition of the GrowthBook JavaScript SDK from npm
   (@growthbook/growthbook, pinned below) under node, and by SQL; the results
   must be equal.  The SDK is taken from $GROWTHBOOK_SDK_DIR, from a
   node_modules above the project, or installed with npm into a cache
   directory outside the repository; if none of that works (no node, no
   registry), this part is skipped with a message.

Prints how many peer cases passed, were skipped and failed.
"""
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
import exptest  # noqa: E402

CASES = os.path.join(exptest.PEERS_DIR, "growthbook-cases.json")
SDK_VERSION = "1.8.0"
NPM_CACHE = os.path.join(tempfile.gettempdir(), "experiment-npm-%d" % os.getuid())

RUNNER = r"""
const { evalCondition } = require(process.argv[1]);
console.error = () => {};
const rows = JSON.parse(require('fs').readFileSync(0, 'utf8'));
process.stdout.write(JSON.stringify(rows.map(([c, a, g]) => {
  try { return evalCondition(a, c, g); } catch (e) { return "error: " + e; }
})));
"""


def peer_cases(cur, chk):
    with open(CASES) as f:
        rows = json.load(f)["evalCondition"]
    passed0, failed0, skipped = chk.passed, chk.failed, 0
    for row in rows:
        name, condition, attributes, expected = row[:4]
        groups = row[4] if len(row) > 4 else {}
        if not isinstance(expected, bool):
            skipped += 1
            print("SKIP: %s: expected value %r is not a boolean" % (name, expected))
            continue
        cur.execute("SELECT experiment.eval_condition(%s::jsonb, %s::jsonb, %s::jsonb)",
                    (json.dumps(condition), json.dumps(attributes), json.dumps(groups)))
        got = cur.fetchone()[0]
        chk.check(got is expected, "%s: eval_condition(%s, %s, %s) = %r, expected %r"
                  % (name, json.dumps(condition), json.dumps(attributes), json.dumps(groups),
                     got, expected))
    print("evalCondition peer cases: %d total, %d passed, %d skipped, %d failed"
          % (len(rows), chk.passed - passed0, skipped, chk.failed - failed0))


def find_sdk():
    """Directory of the @growthbook/growthbook package, or (None, why)."""
    node = shutil.which("node")
    if node is None:
        return None, "node is not installed"
    d = os.environ.get("GROWTHBOOK_SDK_DIR")
    if d:
        return d, None
    for base in (exptest.PROJECT_ROOT, NPM_CACHE):
        r = subprocess.run([node, "-p", "require.resolve('@growthbook/growthbook/package.json')"],
                           cwd=base if os.path.isdir(base) else exptest.PROJECT_ROOT,
                           capture_output=True, text=True)
        if r.returncode == 0:
            pkg = r.stdout.strip()
            with open(pkg) as f:
                if json.load(f).get("version") == SDK_VERSION:
                    return os.path.dirname(pkg), None
    npm = shutil.which("npm")
    if npm is None:
        return None, "npm is not installed"
    os.makedirs(NPM_CACHE, exist_ok=True)
    try:
        r = subprocess.run([npm, "install", "--no-audit", "--no-fund", "--prefix", NPM_CACHE,
                            "@growthbook/growthbook@" + SDK_VERSION],
                           capture_output=True, text=True, timeout=240)
    except subprocess.TimeoutExpired:
        return None, "npm install timed out"
    d = os.path.join(NPM_CACHE, "node_modules", "@growthbook", "growthbook")
    if r.returncode != 0 or not os.path.isdir(d):
        return None, "npm install @growthbook/growthbook@%s failed: %s" % (SDK_VERSION, r.stderr[-300:])
    return d, None


# ---- random conditions -----------------------------------------------------
# Kept within what doc/targeting.md says is equal to the SDK: no object keys
# in a different order, no regular expressions on characters above U+FFFF
# with ".", no quantified lookarounds, no bounds above 255, no [\S] on
# non-ASCII spaces, string patterns only.

STRS = ["", "a", "A", "abc", "ABC", "8", "10", "5", " 12 ", "0x1F", "0b11", "1e3", "-0", "Infinity",
        "null", "true", "false", "1.2.3", "v1.2.3-beta", "1.2.3+build", "1.10.0", "2.0.0-rc.1", "é", "É",
        "ΣΑΣ", "σας", "😀", "\ufb01", "İ", "x y", "a.b", "1,2", "[object Object]", "foo bar", "0.1", ".5",
        "5.", "1_000", "\u00a012", "straße", "STRASSE", "ÉCOLE"]
NUMS = [0, 1, -1, 2, 5, 8, 10, 12, 0.5, 1.5, -0.0, 1e21, 1e-7, 123456789012, 3.14159, 100, 31]
KEYS = ["a", "b", "n", "s", "t", "v", "o"]
PATHS = KEYS + ["o.x", "o.y", "t.0", "t.1", "t.length", "missing", "a.b", "s.length", "t.0.x", ""]
REGEX = ["^a", "\\d+", "\\bab", "a.c", "[]", "[^]", "a{2}", "{", "\\x41", "(?<n>a)b", "[[:alpha:]]",
         "^\\w+$", "(?i)a", "a\\/b", "a/b", "^\\s*$", "é", "(", "^[0-9]+$", "\\.", "^$", "c$", "^(a|b)",
         "\\Bb", "[a-c]+", "\\u00e9", "^nu", "o\\]", "[\\d.]+", "x*", "\\m", "a|", "\\1(a)", "(a)\\1",
         "^\\S", "\\W", "[^a-z]", "\\cJ", "\\n", "^tr", "8$", "^-?\\d+(\\.\\d+)?$", "a{1,}b{,2}", "}",
         "ab?c", "(?=a)", "(?!a)", "(?<=a)b", "(?<!a)b", "\\0", "[\\b]", "(Mobile|Tablet)", "^https?://",
         "[\\-a]", "[a-]", "^[^@]+@[^@]+\\.[a-z]{2,}$", "\\$", "(a|ab)(c|bcd)(d*)", "[\\w-]+", "[\\s]",
         "(?<n>a)\\k<n>", "\\8", "\\12", "[\\u0041-\\u005A]+", "\\uD83D\\uDE00", "\\e", "\\A", "\\Z",
         "\\y", "a{3,2}", "ÉCOLE", "école", "straße", "Σ", "σ", "[^\\d]", "[\\W]", "[[]", "[=a=]", "***",
         "a**", "(?#c)", "a{2}{3}", "(?:)", "()", "|", "\\", "[a", "a]", "\\x4", "\\c1", "[\\c1]",
         "[é-ë]", "[a-zà-ÿ]+"]
SUBJECTS = ["", "a", "A", "ab", "abc", "ABC", "aab", "b", "xab", "a\nb", "abc\n", "12", "a12", "-3.5",
            "é", "É", "école", "ÉCOLE", "😀x", "foo bar", "foo\tbar", "a/b", "a\\b", "x{", "}", "[", "a.c",
            "Android Mobile Browser", "https://x.io", "me@x.io", "abcbcd", "straße", "Σ", "σ", "ς", "null",
            "8", "a-b", "aaa", "a\u2028c", "\u00a0", "\u0011", "ê", "Ê", "ÿ", "ABCa\\b"]
OPS = ["$eq", "$ne", "$lt", "$lte", "$gt", "$gte", "$veq", "$vne", "$vlt", "$vlte", "$vgt", "$vgte",
       "$in", "$nin", "$ini", "$nini", "$all", "$alli", "$elemMatch", "$size", "$exists", "$type",
       "$not", "$regex", "$regexi", "$inGroup", "$notInGroup", "$bogus"]
GROUPS = {"g1": [1, "a", 8, "8"], "g2": ["ABC", None, True], "1": ["abc"],
          "l1": {"type": "list", "attributeKey": "s", "values": ["a", "abc", 8]},
          "l2": {"type": "list", "attributeKey": "n", "values": "x"},
          "c1": {"type": "condition", "condition": {"n": {"$gt": 4}, "$savedGroup": {"id": "c2"}}},
          "c2": {"type": "condition",
                 "condition": {"$or": [{"s": {"$exists": True}}, {"$savedGroup": {"id": "c1"}}]}},
          "bad": None, "str": "x"}


def jsonb_order(d):
    """An object with its keys in jsonb's order (length, then bytes), so that
    JSON.stringify sees the same order on both sides."""
    return dict(sorted(d.items(), key=lambda kv: (len(kv[0].encode()), kv[0].encode())))


class Gen:
    def __init__(self, seed):
        self.r = random.Random(seed)

    def scalar(self):
        r = self.r.random()
        if r < 0.1:
            return None
        if r < 0.2:
            return self.r.choice([True, False])
        if r < 0.55:
            return self.r.choice(NUMS)
        return self.r.choice(STRS)

    def value(self, d=0):
        r = self.r.random()
        if d < 2 and r < 0.15:
            return [self.value(d + 1) for _ in range(self.r.randint(0, 4))]
        if d < 2 and r < 0.22:
            return jsonb_order({k: self.value(d + 1)
                                for k in self.r.sample(["x", "y", "z"], self.r.randint(0, 2))})
        return self.scalar()

    def attributes(self):
        return jsonb_order({k: self.value() for k in self.r.sample(KEYS, self.r.randint(0, 6))})

    def operators(self, d):
        ops = {}
        for op in self.r.sample(OPS, self.r.randint(1, 3)):
            if op in ("$in", "$nin", "$ini", "$nini", "$all", "$alli"):
                arg = ([self.scalar() for _ in range(self.r.randint(0, 4))]
                       if self.r.random() < 0.9 else self.scalar())
                if op in ("$all", "$alli") and self.r.random() < 0.3 and d < 2:
                    arg = [self.operators(d + 1) for _ in range(self.r.randint(1, 2))]
            elif op == "$elemMatch":
                arg = self.operators(d + 1) if self.r.random() < 0.5 or d >= 2 else self.condition(d + 1)
            elif op in ("$not", "$size"):
                arg = self.operators(d + 1) if self.r.random() < 0.6 and d < 2 else self.scalar()
            elif op == "$exists":
                arg = self.r.choice([True, False, 0, 1, "", "x", None])
            elif op == "$type":
                arg = self.r.choice(["string", "number", "boolean", "null", "array", "object", "undefined", 1])
            elif op in ("$regex", "$regexi"):
                arg = self.r.choice(REGEX)
            elif op in ("$inGroup", "$notInGroup"):
                arg = self.r.choice(["g1", "g2", "nope", 1, "l1", "l2", "c1", "bad", "str"])
            elif op.startswith("$v"):
                arg = self.r.choice(STRS) if self.r.random() < 0.9 else self.scalar()
            else:
                arg = self.value(2)
            ops[op] = arg
        return jsonb_order(ops)

    def condition(self, d=0):
        c = {}
        for _ in range(self.r.randint(0, 3)):
            r = self.r.random()
            if d < 2 and r < 0.12:
                c[self.r.choice(["$and", "$or", "$nor"])] = [self.condition(d + 1)
                                                             for _ in range(self.r.randint(0, 3))]
            elif d < 2 and r < 0.18:
                c["$not"] = self.condition(d + 1)
            elif r < 0.22:
                c["$savedGroup"] = self.r.choice([
                    {"id": self.r.choice(["g1", "l1", "l2", "c1", "c2", "bad", "nope"])},
                    {"id": self.r.choice(["l1", "l2", "c1"]), "attributeKey": self.r.choice(PATHS + [1, None])},
                    {"id": 1}, None, 5, []])
            elif r < 0.35:
                c[self.r.choice(PATHS)] = self.value(1)
            else:
                c[self.r.choice(PATHS)] = self.operators(d)
        return jsonb_order(c)


def sdk_comparison(cur, chk, sdk):
    g = Gen(20240611)
    rows = [(g.condition(), g.attributes(), GROUPS) for _ in range(2500)]
    for pattern in REGEX:
        for subject in SUBJECTS:
            for op in ("$regex", "$regexi"):
                rows.append(({"v": {op: pattern}}, {"v": subject}, {}))
    r = subprocess.run(["node", "-e", RUNNER, sdk], input=json.dumps(rows),
                       capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        chk.check(False, "node evalCondition runner failed: %s" % r.stderr[-500:])
        return
    expected = json.loads(r.stdout)
    passed0, failed0 = chk.passed, chk.failed
    for (c, a, gr), want in zip(rows, expected):
        args = (json.dumps(c), json.dumps(a), json.dumps(gr))
        if not isinstance(want, bool):
            chk.check(False, "the SDK raised for %s / %s: %s" % (args[0], args[1], want))
            continue
        cur.execute("SELECT experiment.eval_condition(%s::jsonb, %s::jsonb, %s::jsonb)", args)
        got = cur.fetchone()[0]
        chk.check(got is want, "eval_condition(%s, %s, groups) = %r, the SDK says %r"
                  % (args[0], args[1], got, want))
    print("SDK %s comparisons: %d equal, %d different"
          % (SDK_VERSION, chk.passed - passed0, chk.failed - failed0))


def main():
    if not os.path.exists(CASES):
        exptest.skip("%s is absent" % CASES)
    conn = exptest.fresh_db("exp_condition_peers")
    chk = exptest.Checker("test_condition_peers")
    with conn.cursor() as cur:
        peer_cases(cur, chk)
        sdk, why = find_sdk()
        if sdk is None:
            print("comparison with the GrowthBook SDK skipped: %s" % why)
        else:
            sdk_comparison(cur, chk, sdk)
    conn.close()
    chk.report()


if __name__ == "__main__":
    main()
