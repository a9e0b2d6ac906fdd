"""README's reference lists every user-facing object of the extension.

Every function, aggregate, type, table and view in schema experiment is either
named in README.md's "## Reference" section or documented as internal (its
COMMENT starts with "internal:"), so that \\df+ experiment.* shows a user what
they may call and README shows them all of it.
"""
import os
import re
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from exptest import PROJECT_ROOT, Checker, fresh_db  # noqa: E402

ck = Checker("test_reference")
readme = open(os.path.join(PROJECT_ROOT, "README.md"), encoding="utf-8").read()
start = readme.find("## Reference")
end = readme.find("\n## ", start + 1)
ck.check(start >= 0, "README.md has a '## Reference' section")
reference = readme[start:end]

conn = fresh_db("experiment_reference")
cur = conn.cursor()
cur.execute("""
  SELECT CASE p.prokind WHEN 'a' THEN 'aggregate' ELSE 'function' END, p.proname,
         coalesce(obj_description(p.oid, 'pg_proc'), '')
  FROM pg_proc p WHERE p.pronamespace = 'experiment'::regnamespace
  UNION ALL
  SELECT CASE c.relkind WHEN 'v' THEN 'view' ELSE 'table' END, c.relname,
         coalesce(obj_description(c.oid, 'pg_class'), '')
  FROM pg_class c WHERE c.relnamespace = 'experiment'::regnamespace AND c.relkind IN ('r', 'v', 'p')
  UNION ALL
  SELECT 'type', t.typname, coalesce(obj_description(t.oid, 'pg_type'), '')
  FROM pg_type t WHERE t.typnamespace = 'experiment'::regnamespace AND t.typtype IN ('b', 'c', 'd', 'e')
    AND t.typcategory <> 'A'
    AND NOT EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = t.typrelid AND c.relkind <> 'c')
  ORDER BY 1, 2""")
internal = public = 0
for kind, name, comment in cur.fetchall():
    if comment.startswith("internal:"):
        internal += 1
        continue
    public += 1
    ck.check(re.search(r"(?<![\w.])%s(?!\w)" % re.escape(name), reference) is not None,
             "%s experiment.%s is neither in README's reference nor commented 'internal: ...'" % (kind, name))
print("%d user-facing objects (each in README's reference), %d internal" % (public, internal))
conn.close()
ck.report()
