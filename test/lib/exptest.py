"""Helpers shared by the test programs in test/.

Each program is one test for test/run: exit 0 passes, 77 skips, anything else
fails. Connection parameters come from the environment (PGHOST, PGPORT, PGUSER)
that scripts/setup.sh exports.
"""
import os
import sys

import psycopg2

SKIP = 77
PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PEERS_DIR = os.path.join(os.path.dirname(PROJECT_ROOT), "shared", "peers")


def fresh_db(name, extensions=("experiment",)):
    """Drop and create database NAME with the given extensions; return an
    autocommit connection to it."""
    admin = psycopg2.connect(dbname="postgres")
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute('DROP DATABASE IF EXISTS "%s" WITH (FORCE)' % name)
        cur.execute('CREATE DATABASE "%s"' % name)
    admin.close()
    conn = connect(name)
    with conn.cursor() as cur:
        for ext in extensions:
            cur.execute('CREATE EXTENSION IF NOT EXISTS "%s" CASCADE' % ext)
    return conn


def connect(name):
    conn = psycopg2.connect(dbname=name)
    conn.autocommit = True
    return conn


class Checker:
    """Counts checks; report() prints a summary and exits with the right code."""

    def __init__(self, name):
        self.name = name
        self.passed = 0
        self.failed = 0

    def check(self, ok, what):
        if ok:
            self.passed += 1
        else:
            self.failed += 1
            print("FAIL: %s" % what, flush=True)
        return ok

    def close(self, got, want, what, rel=1e-9, abs_tol=0.0):
        """got and want agree to a relative error rel (or abs_tol); None == None."""
        if got is None or want is None:
            return self.check(got is None and want is None, "%s: got %r, want %r" % (what, got, want))
        err = abs(got - want)
        ok = err <= abs_tol or err <= rel * max(abs(want), abs(got))
        return self.check(ok, "%s: got %r, want %r (rel err %.3g)" % (what, got, want, err / max(abs(want), 1e-300)))

    def report(self):
        print("%s: %d checks passed, %d failed" % (self.name, self.passed, self.failed))
        sys.exit(1 if self.failed or self.passed == 0 else 0)


def skip(why):
    print("skipped: %s" % why)
    sys.exit(SKIP)


def numbers(x, path=""):
    """flatten a JSON-ish value into (path, number-or-other) pairs, dict keys sorted"""
    if isinstance(x, dict):
        for k in sorted(x):
            yield from numbers(x[k], path + "." + k)
    elif isinstance(x, list):
        for i, v in enumerate(x):
            yield from numbers(v, "%s[%d]" % (path, i))
    else:
        yield path, x
