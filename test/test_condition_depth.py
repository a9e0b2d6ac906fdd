#!/usr/bin/python3
"""eval_condition on deeply nested documents stops with an error, never a crash.

With max_stack_depth raised as high as the server allows, a condition and
attributes nested 1,000 to 200,000 arrays deep are compared (a literal
value, which is compared recursively, and $regex, which turns an array into
its JavaScript string recursively). Each call either returns or fails with
SQLSTATE 54001 (stack depth limit exceeded); after each the same connection
still answers, so the backend did not crash.
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from exptest import Checker, fresh_db  # noqa: E402

import psycopg2  # noqa: E402

ck = Checker("test_condition_depth")
conn = fresh_db("condition_depth")
cur = conn.cursor()
depth_setting = None
for mb in (60, 30, 15, 7, 3):
    try:
        cur.execute("SET max_stack_depth = '%dMB'" % mb)
        depth_setting = mb
        break
    except psycopg2.Error:
        continue
print("max_stack_depth = %sMB" % depth_setting)
for depth in (1000, 28000, 200000):
    doc = "[" * depth + "1" + "]" * depth
    for what, cond in (("equal", '{"a": %s}' % doc), ("$regex", '{"a": {"$regex": "x"}}')):
        try:
            cur.execute("SELECT experiment.eval_condition(%s::jsonb, %s::jsonb)", (cond, '{"a": %s}' % doc))
            outcome = "returned %r" % (cur.fetchone()[0],)
        except psycopg2.Error as e:
            if e.pgcode is None:  # no SQLSTATE: the server closed the connection
                ck.check(False, "depth %d %s: the connection broke (%s)" % (depth, what, str(e).strip()))
                ck.report()
            outcome = "error %s" % e.pgcode
            ck.check(e.pgcode == "54001", "depth %d %s: %s (want 54001 or a result)" % (depth, what, str(e).splitlines()[0]))
        try:
            cur.execute("SELECT 1")
            alive = cur.fetchone()[0] == 1
        except psycopg2.Error:
            alive = False
        if not ck.check(alive, "the backend answers after depth %d %s (it crashed)" % (depth, what)):
            ck.report()
        print("  depth %6d %-7s %s" % (depth, what, outcome))
conn.close()
ck.report()
