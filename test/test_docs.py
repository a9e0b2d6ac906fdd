"""The SQL examples in README.md and doc/*.md run and print what they show.

Like Python's doctest; this docstring is the reference for writing examples.

Where examples run
  README.md: every ```sql block (the opening example and the "## Five-minute
  tour"), in order, in one autocommit session in database "experiment". It is
  pg_cron's database (cron.database_name), so it is never dropped: it is created
  if missing, cleaned (DROP EXTENSION IF EXISTS experiment CASCADE, DROP SCHEMA
  IF EXISTS demo CASCADE), gets CREATE EXTENSION pg_cron if cron.database_name
  is 'experiment', and the demo is loaded (psql -X -q -v ON_ERROR_STOP=1 -f
  demo/checkout.sql; its readout is ignored, a failure fails the test). Jobs the
  tour scheduled (command LIKE '%experiment.refresh_all%') are unscheduled after.
  doc/*.md, in file-name order: a page's ```sql blocks run in order in one
  session in a new database "experiment_doctest" (CREATE EXTENSION experiment),
  dropped after; with a line <!-- doctest: demo --> the demo is loaded first.
  Sessions SET client_min_messages = warning; notices are ignored.

Not run: a ```sql block whose nearest non-blank line before the opening fence
  has the word "illustrative" (any case), e.g. "*Illustrative* (it reads your
  own tables):"; blocks in other languages (```text, ```json, ```sh, none).

Statements and expected results
  Blocks split at ';' outside quotes ('...' with '', E'...' with backslashes,
  "...", $$...$$, $tag$...$tag$) and comments (--, /* */). Comments before a
  statement are prose. An expected result is a comment "-- → " (U+2192 and a
  space) ending the statement's last line ("SELECT 1;  -- → 1") or on the
  comment lines right after it (up to a blank or non-comment line: leave a
  blank line before the next statement's comments). Each "-- → " line is a
  row; a line "--" + three or more spaces continues the row, joined with one
  space (so end a continued row with "|"); other comments are prose:
      SELECT * FROM experiment.prop_ztest(5800, 10000, 5980, 10000);
      -- → n_control 10000 | n_treatment 10000 | mean_control 0.580 |
      --   mean_treatment 0.598 | ...
  Without "-- → " (or without a final ';') a statement only has to succeed.
  A statement returning no rows shows its command tag: "-- → INSERT 0 1".
  A ```text block after a ```sql block, with only blank lines between the
  fences, is the output of the block's last statement, compared line by line
  exactly (trailing whitespace ignored) with the single value it returns (e.g.
  a multi-line text) or, for several rows/columns, its rows rendered as below.

Comparison
  Values are the server's text output, NULL is "NULL", a row is its values
  joined by " | ". An expected row matches in the values form ("v1 | v2") or
  the named form ("col1 v1 | col2 v2"), token by token (split on whitespace
  and around "|"). t/true and f/false are equal. A number in an expected token,
  also among punctuation or in JSON ([19.99], {"n":10000}), matches an actual
  number that rounds to it at the precision shown: 20.40 matches 20.3999 (two
  decimals), 9336 matches 9336.0 but not 9337, 1.2e-15 matches 1.23e-15 (two
  significant digits); the rest must be equal. Same rows, same order.

Trials: DOCTEST_README, DOCTEST_DOCS_DIR (default PROJECT_ROOT/README.md,
PROJECT_ROOT/doc); DOCTEST_NO_DEMO=1 skips demo/checkout.sql (CREATE EXTENSION
experiment instead).
"""
import glob
import os
import re
import shutil
import subprocess
import sys
from decimal import Decimal, InvalidOperation

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from exptest import PROJECT_ROOT, Checker, connect, fresh_db, skip  # noqa: E402

import psycopg2  # noqa: E402
import psycopg2.extensions as ext  # noqa: E402

README = os.environ.get("DOCTEST_README", os.path.join(PROJECT_ROOT, "README.md"))
DOCS_DIR = os.environ.get("DOCTEST_DOCS_DIR", os.path.join(PROJECT_ROOT, "doc"))
NO_DEMO = os.environ.get("DOCTEST_NO_DEMO", "") not in ("", "0")
TOUR_DB, DOC_DB = "experiment", "experiment_doctest"
PSQL = shutil.which("psql") or os.path.join(os.environ.get("PG_BINDIR", "/usr/lib/postgresql/15/bin"), "psql")

FENCE = re.compile(r"^\s*(`{3,}|~{3,})\s*([\w+-]*)")
ARROW = re.compile(r"^--\s*→(?: (.*))?$")
CONTINUATION = re.compile(r"^-- {3,}(\S.*)$")
DOLLAR = re.compile(r"\$(?:[A-Za-z_\x80-\uffff][\w\x80-\uffff]*)?\$")
NUMBER = re.compile(r"((?<![A-Za-z_\d.])[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)")
ck = Checker("test_docs")


# -- markdown ---------------------------------------------------------------

def parse_markdown(path):
    """(lines, fenced blocks as dicts, level-2 headings outside fences as
    (line, title)); line numbers count from 1."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    blocks, headings, i = [], [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            if re.match(r"^##\s", lines[i]):
                headings.append((i + 1, lines[i].strip("# \t")))
            i += 1
            continue
        close = re.compile(r"^\s*%s{%d,}\s*$" % (re.escape(m.group(1)[0]), len(m.group(1))))
        j = i + 1
        while j < len(lines) and not close.match(lines[j]):
            j += 1
        before = next((l for l in reversed(lines[:i]) if l.strip()), "")
        blocks.append({"lang": m.group(2).lower(), "open": i + 1, "close": j + 1, "body": lines[i + 1:j],
                       "illustrative": bool(re.search(r"\billustrative\b", before, re.I))})
        i = j + 1
    for a, b in zip(blocks, blocks[1:]):  # a ```text block right after a ```sql block is its output
        if a["lang"] == "sql" and b["lang"] == "text" and not "".join(lines[a["close"]:b["open"] - 1]).strip():
            a["output"] = b
    return lines, blocks, headings


# -- statements -------------------------------------------------------------

def eol(text, i):
    j = text.find("\n", i)
    return len(text) if j < 0 else j


def quote_end(text, i, q, backslash):
    """Index just after the quoted string that starts at text[i]."""
    j = i + 1
    while j < len(text):
        if backslash and text[j] == "\\":
            j += 2
        elif text[j] == q and text[j + 1:j + 2] == q:
            j += 2
        elif text[j] == q:
            return j + 1
        else:
            j += 1
    return len(text)


def expected_rows(comments):
    rows = []
    for c in comments:
        arrow, cont = ARROW.match(c), CONTINUATION.match(c)
        if arrow:
            rows.append((arrow.group(1) or "").strip())
        elif cont and rows:
            rows[-1] += " " + cont.group(1).strip()
    return rows or None


def split_statements(text):
    """The statements of a sql block: (offset of the first code, sql, expected rows or None)."""
    out, n, i, start, code = [], len(text), 0, 0, None
    ident = lambda k: k >= 0 and (text[k].isalnum() or text[k] == "_")  # noqa: E731
    while i < n:
        c = text[i]
        if text.startswith("--", i):
            i = eol(text, i)
        elif text.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                step = text[i:i + 2]
                depth += (step == "/*") - (step == "*/")
                i += 2 if step in ("/*", "*/") else 1
        elif c.isspace():
            i += 1
        elif c != ";":
            code = i if code is None else code
            dollar = DOLLAR.match(text, i) if c == "$" and not ident(i - 1) else None
            if c == "'":
                i = quote_end(text, i, "'", i > 0 and text[i - 1] in "eE" and not ident(i - 2))
            elif c == '"':
                i = quote_end(text, i, '"', False)
            elif dollar:
                j = text.find(dollar.group(0), dollar.end())
                i = n if j < 0 else j + len(dollar.group(0))
            else:
                i += 1
        else:
            end, comments = i + 1, []
            rest = text[end:eol(text, end)].strip()
            if rest and not rest.startswith("--"):  # more code on the same line
                i = end
            else:
                comments, i = [rest] if rest else [], eol(text, end) + 1
                while i < n and text[i:eol(text, i)].strip().startswith("--"):  # comment lines right after
                    comments.append(text[i:eol(text, i)].strip())
                    i = eol(text, i) + 1
            if code is not None:
                out.append((code, text[start:end], expected_rows(comments)))
            start, code = i, None
    if code is not None:
        out.append((code, text[start:], None))
    return out


# -- rendering and comparison -----------------------------------------------

def render(row, names=None):
    vals = ["NULL" if v is None else v for v in row]
    return " | ".join(vals if names is None else ["%s %s" % nv for nv in zip(names, vals)])


def tokens(s):
    return re.findall(r"\||[^\s|]+", s)


def number_match(want, got):
    """got rounds to want at want's precision (its last digit, fixed or scientific)."""
    try:
        w, g = Decimal(want), Decimal(got)
    except InvalidOperation:
        return False
    return abs(g - w) <= Decimal("0.5").scaleb(w.as_tuple().exponent) if g.is_finite() else False


def token_match(want, got):
    if want == got or {want.lower(), got.lower()} in ({"t", "true"}, {"f", "false"}):
        return True
    wp, gp = NUMBER.split(want), NUMBER.split(got)  # odd indices: numbers; even: the text around them
    return len(wp) > 1 and len(wp) == len(gp) and all(
        number_match(w, g) if k % 2 else w == g for k, (w, g) in enumerate(zip(wp, gp)))


def row_match(want, forms):
    wt = tokens(want)
    return any(len(wt) == len(gt) and all(map(token_match, wt, gt)) for gt in map(tokens, forms))


def text_lines(s):
    return "\n".join(l.rstrip() for l in s.split("\n")).rstrip("\n").split("\n")


# -- sessions ---------------------------------------------------------------

def run_sql(dbname, *statements):
    """Run statements (sql or (sql, args)) in a new connection; return the last one's first row."""
    conn, row = connect(dbname), None
    with conn.cursor() as cur:
        for sql in statements:
            cur.execute(*(sql if isinstance(sql, tuple) else (sql,)))
            row = cur.fetchone() if cur.description else None
    conn.close()
    return row


def session(dbname):
    """An autocommit connection that returns every value as the server's text."""
    conn = connect(dbname)
    with conn.cursor() as cur:
        cur.execute("SELECT oid FROM pg_type")  # types created later are unknown: psycopg2 gives text too
        ext.register_type(ext.new_type(tuple(r[0] for r in cur.fetchall()), "RAW", lambda s, cur: s), conn)
        cur.execute("SET client_min_messages = warning")
    return conn


def load_demo(dbname, label):
    if NO_DEMO:
        run_sql(dbname, "CREATE EXTENSION IF NOT EXISTS experiment")
        return True
    p = subprocess.run([PSQL, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", dbname, "-f", "demo/checkout.sql"],
                       cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if p.returncode != 0:  # a failed setup is a failed check; a good one is not counted
        ck.check(False, "%s: psql -f demo/checkout.sql -d %s exited %d\n%s"
                 % (label, dbname, p.returncode, p.stderr.strip()))
    return p.returncode == 0


def run_blocks(dbname, label, blocks):
    """Run the sql blocks in one session and print the counts; return the connection."""
    conn, n = session(dbname), dict.fromkeys(("run", "skipped", "stmts", "stmts_skipped", "outputs"), 0)
    for b in blocks:
        text = "\n".join(b["body"])
        stmts = split_statements(text)
        n["skipped" if b["illustrative"] else "run"] += 1
        n["stmts_skipped" if b["illustrative"] else "stmts"] += len(stmts)
        for k, (offset, sql, want) in enumerate([] if b["illustrative"] else stmts):
            output = b.get("output") if k == len(stmts) - 1 else None
            n["outputs"] += output is not None
            where = "%s:%d: %s" % (label, b["open"] + 1 + text.count("\n", 0, offset), text[offset:eol(text, offset)])
            conn = run_statement(conn, dbname, where, sql, want, output)
    print("%s: %d sql blocks run, %d skipped; %d statements run, %d skipped; %d text outputs compared"
          % (label, n["run"], n["skipped"], n["stmts"], n["stmts_skipped"], n["outputs"]))
    return conn


def run_statement(conn, dbname, where, sql, want, output):
    """Run one statement, one check; return the connection (a new one if it was lost)."""
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            names = None if cur.description is None else [d.name for d in cur.description]
            rows = [(cur.statusmessage,)] if names is None else cur.fetchall()
    except psycopg2.Error as e:
        msg = (e.pgerror or str(e)).strip()
        if conn.closed:
            conn = session(dbname)
        elif conn.get_transaction_status() == ext.TRANSACTION_STATUS_INERROR:
            conn.cursor().execute("ROLLBACK")
            msg += "\n(the open transaction was rolled back)"
        ck.check(False, "%s\n    error: %s" % (where, msg.replace("\n", "\n    ")))
        return conn
    conn.notices.clear()
    problems, nl = [], "\n      "
    if want is not None:
        forms = [[render(r), render(r, names)] if names else [render(r)] for r in rows]
        if len(want) != len(rows) or not all(map(row_match, want, forms)):
            named = bool(names and want and tokens(want[0])[:1] == names[:1])
            problems.append("expected:%s%s\n    actual:%s%s" % (nl, nl.join(want) or "(no rows)",
                                                            nl, nl.join(f[named] for f in forms) or "(no rows)"))
    if output is not None:
        got = rows[0][0] if len(rows) == 1 and len(rows[0]) == 1 else "\n".join(map(render, rows))
        got = "NULL" if got is None else got
        if text_lines(got) != text_lines("\n".join(output["body"])):
            problems.append("expected (```text at line %d):%s%s\n    actual:%s%s" % (
                output["open"], nl, nl.join(output["body"]), nl, got.replace("\n", nl)))
    ck.check(not problems, "%s\n    %s" % (where, "\n    ".join(problems)))
    return conn


# -- main -------------------------------------------------------------------

def relative(path):
    path = os.path.abspath(path)
    return os.path.relpath(path, PROJECT_ROOT) if path.startswith(PROJECT_ROOT + os.sep) else path


def tour():
    _, blocks, headings = parse_markdown(README)
    if not any(title == "Five-minute tour" for _, title in headings):
        ck.check(False, "%s: no '## Five-minute tour' section" % relative(README))
        return
    blocks = [b for b in blocks if b["lang"] == "sql"]
    label = relative(README)
    if run_sql("postgres", ("SELECT count(*) FROM pg_database WHERE datname = %s", (TOUR_DB,)))[0] == 0:
        run_sql("postgres", 'CREATE DATABASE "%s"' % TOUR_DB)  # and never drop it: it is pg_cron's database
    conn = session(TOUR_DB)
    with conn.cursor() as cur:
        cur.execute("DROP EXTENSION IF EXISTS experiment CASCADE")
        cur.execute("DROP SCHEMA IF EXISTS demo CASCADE")
        cur.execute("SELECT current_setting('shared_preload_libraries') ~ 'pg_cron'"
                    " AND current_setting('cron.database_name', true) = current_database()")
        if cur.fetchone()[0]:
            cur.execute("CREATE EXTENSION IF NOT EXISTS pg_cron")
    if load_demo(TOUR_DB, label):
        conn.close()
        conn = run_blocks(TOUR_DB, label, blocks)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM pg_namespace WHERE nspname = 'cron'")
            if cur.fetchone()[0]:
                cur.execute("SELECT cron.unschedule(jobid) FROM cron.job WHERE database = current_database()"
                            " AND command LIKE '%experiment.refresh_all%'")
    except psycopg2.Error as e:
        print("note: unscheduling the tour's cron jobs failed: %s" % str(e).strip())
    conn.close()


def doc_page(path):
    lines, blocks, _ = parse_markdown(path)
    blocks = [b for b in blocks if b["lang"] == "sql"]
    if not blocks:
        print("%s: no sql blocks" % relative(path))
        return
    fresh_db(DOC_DB).close()
    if "<!-- doctest: demo -->" not in (l.strip() for l in lines) or load_demo(DOC_DB, relative(path)):
        run_blocks(DOC_DB, relative(path), blocks).close()
    run_sql("postgres", 'DROP DATABASE IF EXISTS "%s" WITH (FORCE)' % DOC_DB)


def main():
    if run_sql("postgres", "SELECT count(*) FROM pg_available_extensions WHERE name = 'experiment'")[0] == 0:
        skip("the experiment extension is not installed")
    if not NO_DEMO and not os.path.exists(PSQL):
        skip("psql not found (it loads demo/checkout.sql)")
    tour()
    for path in sorted(glob.glob(os.path.join(DOCS_DIR, "*.md"))):
        doc_page(path)
    ck.report()


if __name__ == "__main__":
    main()
