#!/usr/bin/python3
"""Draft the statements of an upgrade script: what the install script of this tree
changes against the install script of an earlier release.

    /usr/bin/python3 scripts/upgrade_draft.py v0.1.0 > draft.sql

Both install scripts (src/sql/*.sql of the tree and of the git ref) are split into
statements (with test/test_docs.py's splitter) and keyed by the object they create
(function or aggregate by argument types, comment by target, other CREATEs by name).
Printed, in the order of the new install script: DROP FUNCTION / AGGREGATE for those
gone or whose argument types changed, then every new or changed statement, with
CREATE FUNCTION, AGGREGATE, VIEW and TRIGGER turned into CREATE OR REPLACE. A changed
CREATE TABLE is printed as a "-- TODO table" line: its ALTERs (and moving existing rows
to what the new constraints allow) are written by hand. test/test_upgrade.py then checks
the finished script object for object against a fresh install.
"""
import glob
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "test"))
from test_docs import split_statements  # noqa: E402


def install_script(ref):
    if ref is None:
        return "".join(open(f).read() for f in sorted(glob.glob(os.path.join(ROOT, "src/sql/*.sql"))))
    files = subprocess.run(["git", "-C", ROOT, "ls-tree", "--name-only", ref, "src/sql/"],
                           capture_output=True, text=True, check=True).stdout.split()
    return "".join(subprocess.run(["git", "-C", ROOT, "show", "%s:%s" % (ref, f)],
                                  capture_output=True, text=True, check=True).stdout for f in sorted(files))


def norm(s):
    return re.sub(r"\s+", " ", re.sub(r"--[^\n]*", "", s)).strip()


def arg_types(args):
    types = []
    for p in (p.strip() for p in re.split(r",(?![^()]*\))", args) if p.strip()):
        toks = re.sub(r"\s+DEFAULT\s+.*$", "", p, flags=re.I).split()
        if toks and toks[0].upper() == "OUT":
            continue
        if toks and toks[0].upper() in ("IN", "INOUT", "VARIADIC"):
            toks = toks[1:]
        if len(toks) >= 2 and toks[0] != "double" and not toks[0].endswith("[]"):
            toks = toks[1:]          # drop the argument's name
        types.append(" ".join(toks))
    return ", ".join(types)


def key(stmt):
    s = norm(stmt)
    m = re.match(r"CREATE (?:OR REPLACE )?(FUNCTION|AGGREGATE) (experiment\.\w+)\s*\((.*?)\)\s*(RETURNS|\(|LANGUAGE|AS)", s)
    if m:
        return "%s %s(%s)" % (m.group(1).lower(), m.group(2), arg_types(m.group(3)))
    m = re.match(r"COMMENT ON (.*?) IS ", s)
    if m:
        return "comment " + m.group(1)
    m = re.match(r'(CREATE (?:UNIQUE )?(?:CONSTRAINT )?\w+ (?:\w+ )?[\w."]+)', s)
    return m.group(1) if m else s[:80]


def statements(text):
    out = {}
    for _, sql, _ in split_statements(text):
        k = key(sql)
        while k in out:
            k += "'"
        out[k] = sql.strip()
    return out


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    old, new = statements(install_script(sys.argv[1])), statements(install_script(None))
    out = []
    for k in old:
        if k not in new and k.startswith(("function ", "aggregate ")):
            kind, signature = k.split(" ", 1)
            out.append("DROP %s %s;" % (kind.upper(), signature))
    for k, s in new.items():
        if k in old and norm(old[k]) == norm(s):
            continue
        t = s.rstrip(";").rstrip() + ";"
        if re.match(r"\s*CREATE TABLE", re.sub(r"--[^\n]*\n", "", t)):
            out.append("-- TODO table: " + k)
            continue
        for what in ("FUNCTION", "AGGREGATE", "VIEW", "TRIGGER", "CONSTRAINT TRIGGER"):
            t = re.sub(r"CREATE %s" % what, "CREATE OR REPLACE %s" % what, t, count=1)
        out.append(t)
    print("\n\n".join(out))


if __name__ == "__main__":
    main()
