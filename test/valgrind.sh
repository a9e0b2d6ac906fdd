#!/usr/bin/env bash
# test/valgrind.sh: run the extension under Valgrind memcheck.
#
# Starts a throwaway cluster whose postmaster (and so every backend and
# parallel worker it forks) runs under valgrind, runs the pg_regress suite and
# then the fuzz test (test/test_fuzz.py) against it, stops it (leaks are
# reported at process exit) and reports every invalid read or write, use of
# uninitialised values, bad free and "definitely lost" block whose stack runs
# through experiment.so. Exit 0 when there is none, 1 otherwise.
#
# Not named test_*.sh: the suite does not run it (it takes tens of minutes).
# Run as root from the project root, after installing the extension into
# $PG_BINDIR's server (scripts/test.sh or make install does that):
#
#   PG_BINDIR=/usr/lib/postgresql/15/bin bash test/valgrind.sh
#
# Knobs: PG_BINDIR, VALGRIND_PORT (54443), VALGRIND_FUZZ=0 to skip the fuzz
# test, VALGRIND_FUZZ_SECONDS (600), VALGRIND_REGRESS (pg_regress files to
# run, default all), VALGRIND_SUPP (extra suppression files, e.g. PostgreSQL's
# src/tools/valgrind.supp), VALGRIND_KEEP=1 to keep the logs' directory.
#
# Limits: Debian's server is not built with USE_VALGRIND, so memcheck sees
# palloc blocks, not the chunks inside them: an overrun that stays inside a
# memory context block is not reported. Leaks of palloc'd memory are freed
# with their context; "definitely lost" matters for malloc'd memory (GSL).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PG_BINDIR=${PG_BINDIR:-/usr/lib/postgresql/15/bin}
PORT=${VALGRIND_PORT:-54443}
PY=${PYTHON:-/usr/bin/python3}
[ "$(id -u)" = 0 ] || { echo "run as root (the cluster runs as the postgres user)" >&2; exit 1; }
command -v valgrind >/dev/null || { echo "valgrind is not installed (apt-get install valgrind)" >&2; exit 1; }

dir=$(mktemp -d /tmp/experiment-valgrind.XXXXXX)
chown postgres: "$dir"
chmod 755 "$dir"
export PGHOST=$dir PGPORT=$PORT PGUSER=postgres PGDATABASE=postgres PG_BINDIR

cleanup() {
	runuser -u postgres -- "$PG_BINDIR/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true
	[ "${VALGRIND_KEEP:-0}" = 1 ] || rm -rf "$dir"
}
trap cleanup EXIT

echo "== cluster in $dir (port $PORT), postgres under valgrind"
runuser -u postgres -- "$PG_BINDIR/initdb" -D "$dir/data" -A trust -U postgres --no-sync -E UTF8 \
	--locale=C.UTF-8 >/dev/null
cat >>"$dir/data/postgresql.conf" <<CONF
listen_addresses = ''
unix_socket_directories = '$dir'
port = $PORT
fsync = off
synchronous_commit = off
full_page_writes = off
shared_buffers = 128MB
max_connections = 30
max_parallel_workers_per_gather = 2
autovacuum = off
CONF

supp=(--suppressions="$ROOT/test/valgrind.supp")
for s in ${VALGRIND_SUPP:-}; do supp+=(--suppressions="$s"); done
mkdir -p "$dir/vg"
chown postgres: "$dir/vg"
# every process writes its own log; --trace-children is not needed for
# fork()ed backends but keeps archive/restore commands covered
runuser -u postgres -- valgrind --tool=memcheck --quiet --trace-children=yes \
	--leak-check=full --show-leak-kinds=definite --errors-for-leak-kinds=definite \
	--error-limit=no --num-callers=40 --read-var-info=no "${supp[@]}" \
	--log-file="$dir/vg/%p.log" \
	"$PG_BINDIR/postgres" -D "$dir/data" >"$dir/server.log" 2>&1 &
for _ in $(seq 1 240); do
	"$PG_BINDIR/pg_isready" -q -h "$dir" -p "$PORT" && break
	sleep 1
done
"$PG_BINDIR/pg_isready" -q -h "$dir" -p "$PORT" || { echo "the server did not start"; tail -n 30 "$dir/server.log"; exit 1; }

start=$(date +%s)
regress=${VALGRIND_REGRESS:-$(for f in sql/*.sql; do basename "$f" .sql; done | tr '\n' ' ')}
echo "== pg_regress under valgrind: $regress"
set +e
make -s PG_CONFIG="$PG_BINDIR/pg_config" installcheck REGRESS="$regress" ISOLATION= \
	EXTRA_REGRESS_OPTS="--outputdir=$dir/regress" >"$dir/regress.txt" 2>&1
regress_rc=$?
grep -E '\.\.\. ' "$dir/regress.txt"
echo "-- pg_regress: exit $regress_rc ($(( $(date +%s) - start )) s)"
fuzz_rc=skipped
if [ "${VALGRIND_FUZZ:-1}" != 0 ]; then
	echo "== test_fuzz.py under valgrind (${VALGRIND_FUZZ_SECONDS:-600} s)"
	t=$(date +%s)
	FUZZ_SECONDS=${VALGRIND_FUZZ_SECONDS:-600} FUZZ_TIMEOUT_MS=60000 "$PY" test/test_fuzz.py 2>&1 |
		grep -E '^(FUZZ_SEED|calls|FAIL|sweep|test_fuzz)' 
	fuzz_rc=${PIPESTATUS[0]}
	echo "-- test_fuzz.py: exit $fuzz_rc ($(( $(date +%s) - t )) s)"
fi
set -e
echo "== stopping the server (valgrind writes the leak reports at exit)"
runuser -u postgres -- "$PG_BINDIR/pg_ctl" -D "$dir/data" -m fast -t 600 stop >/dev/null || true
sleep 2

# one error record per blank-line separated block of a log; keep those whose
# stack mentions experiment.so (or the extension's source files)
set +e
"$PY" - "$dir/vg" <<'PY'
import glob, os, re, sys, collections
kinds = collections.Counter()
ours = []
files = glob.glob(os.path.join(sys.argv[1], "*.log"))
for path in files:
    text = open(path, errors="replace").read()
    blocks, cur = [], []
    for line in text.splitlines():
        body = re.sub(r"^==\d+== ?", "", line)
        if body.strip() == "":
            if cur:
                blocks.append(cur)
            cur = []
        else:
            cur.append(body)
    if cur:
        blocks.append(cur)
    for b in blocks:
        head = b[0]
        m = re.match(r"(Invalid (read|write|free)|Conditional jump|Use of uninitialised|Syscall param|"
                     r"Mismatched free|Source and destination overlap|\S.* are definitely lost)", head)
        if not m:
            continue
        kind = "definitely lost" if "definitely lost" in head else m.group(1)
        kinds[kind] += 1
        if any("experiment.so" in l or re.search(r"\((moments|moments_agg|stats|power|assign|condition|bayes|gst|"
                                                r"multiplicity|hash|md5|sha256|unit_values|gsl_support)\.c:\d+\)", l)
               for l in b):
            ours.append((os.path.basename(path), kind, b))
print("== valgrind: %d process logs; error records (all, suppressions applied): %s"
      % (len(files), dict(kinds) or "none"))
if ours:
    print("== %d records attributable to experiment.so:" % len(ours))
    for path, kind, b in ours[:30]:
        print("-- %s (%s)" % (kind, path))
        print("\n".join("   " + l for l in b[:25]))
    sys.exit(1)
print("== no invalid read/write, uninitialised use or definite leak attributable to experiment.so")
PY
rc=$?
echo "valgrind: pg_regress exit $regress_rc, fuzz exit $fuzz_rc, experiment.so records: $([ $rc = 0 ] && echo none || echo FOUND)"
exit $rc
