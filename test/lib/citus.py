"""A Citus cluster on this machine for tests: a coordinator and workers on 127.0.0.1.

Citus is built from ../shared/vendor/citus-13.0.5.tar.gz (see that directory's README)
into a private, relocatable copy of the PostgreSQL installation, next to this
project's extension, so the system's installation is never touched. The build is
kept in a cache directory (CITUS_CACHE, default /tmp/experiment-citus-<key>) so a
second run reuses it. Tests call skip() when the archive is absent.
"""
import hashlib
import os
import shutil
import socket
import subprocess
import tempfile

import psycopg2

from exptest import PROJECT_ROOT

VENDOR = os.path.join(os.path.dirname(PROJECT_ROOT), "shared", "vendor")
ARCHIVE = os.path.join(VENDOR, "citus-13.0.5.tar.gz")
PG_BINDIR = os.environ.get("PG_BINDIR", "/usr/lib/postgresql/15/bin")
AS_PG = ["runuser", "-u", "postgres", "--"]


def run(cmd, **kw):
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)
    if r.returncode != 0:
        raise RuntimeError("command failed: %s\n%s" % (" ".join(cmd), r.stdout[-4000:]))
    return r.stdout


def available():
    return os.path.exists(ARCHIVE)


def installation():
    """bindir of a private copy of PostgreSQL with Citus and this project's extension installed"""
    pg_config = os.path.join(PG_BINDIR, "pg_config")
    dirs = {k: run([pg_config, "--" + k]).strip() for k in ("bindir", "sharedir", "pkglibdir", "includedir", "version")}
    with open(ARCHIVE, "rb") as f:
        key = hashlib.sha256(f.read() + dirs["version"].encode()).hexdigest()[:12]
    cache = os.environ.get("CITUS_CACHE", "/tmp/experiment-citus-%s" % key)
    root = os.path.join(cache, "pg")
    bindir = root + dirs["bindir"]
    cfg = os.path.join(bindir, "pg_config")
    if not os.path.exists(os.path.join(cache, "citus.done")):
        shutil.rmtree(cache, ignore_errors=True)
        os.makedirs(cache)
        for k in ("bindir", "sharedir", "pkglibdir", "includedir"):
            os.makedirs(os.path.dirname(root + dirs[k]), exist_ok=True)
            shutil.copytree(dirs[k], root + dirs[k], symlinks=True)
        src = tempfile.mkdtemp(prefix="citus_src_")
        try:
            run(["tar", "-xzf", ARCHIVE, "-C", src])
            top = os.path.join(src, "citus-13.0.5")
            run(["./configure", "PG_CONFIG=" + cfg, "--without-libcurl"], cwd=top)
            run(["make", "-s", "-j2"], cwd=top)
            run(["make", "-s", "install"], cwd=top)
        finally:
            shutil.rmtree(src, ignore_errors=True)
        open(os.path.join(cache, "citus.done"), "w").close()
    # this tree's extension, every time (the cache holds Citus only)
    run(["make", "-C", PROJECT_ROOT, "-s", "PG_CONFIG=" + cfg])
    run(["make", "-C", PROJECT_ROOT, "-s", "PG_CONFIG=" + cfg, "install"])
    return bindir


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """a coordinator and n workers, each its own data directory and port on 127.0.0.1"""

    def __init__(self, bindir, workers=2):
        self.bindir = bindir
        self.tmp = tempfile.mkdtemp(prefix="exp_citus_")
        os.chmod(self.tmp, 0o755)
        self.ports = [free_port() for _ in range(workers + 1)]
        self.datas = []
        subprocess.run(["chown", "-R", "postgres", self.tmp], check=True)
        for k, port in enumerate(self.ports):
            data = os.path.join(self.tmp, "node%d" % k)
            run(AS_PG + [os.path.join(bindir, "initdb"), "-D", data, "-A", "trust", "-U", "postgres", "--no-sync"])
            with open(os.path.join(data, "postgresql.conf"), "a") as f:
                f.write("shared_preload_libraries = 'citus'\nlisten_addresses = '127.0.0.1'\nport = %d\n"
                        "unix_socket_directories = ''\nfsync = off\nmax_connections = 100\n"
                        "citus.shard_count = 8\n" % port)
            run(AS_PG + [os.path.join(bindir, "pg_ctl"), "-D", data, "-l", os.path.join(self.tmp, "log%d" % k),
                         "-w", "start"])
            self.datas.append(data)
        for port in self.ports:
            c = self.connect(port=port)
            c.cursor().execute("CREATE EXTENSION citus")
            c.close()
        c = self.connect()
        cur = c.cursor()
        cur.execute("SELECT citus_set_coordinator_host('127.0.0.1', %s)", (self.ports[0],))
        for port in self.ports[1:]:
            cur.execute("SELECT citus_add_node('127.0.0.1', %s)", (port,))
        c.close()

    def connect(self, port=None, db="postgres"):
        c = psycopg2.connect(host="127.0.0.1", port=port or self.ports[0], user="postgres", dbname=db)
        c.autocommit = True
        return c

    def stop(self):
        for data in self.datas:
            subprocess.run(AS_PG + [os.path.join(self.bindir, "pg_ctl"), "-D", data, "-m", "immediate", "stop"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(self.tmp, ignore_errors=True)
