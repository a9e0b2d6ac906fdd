# scripts/setup.sh: shared set-up for scripts/demo.sh, scripts/test.sh and bench/.
# Source it (as root) on a fresh Debian 12 machine. It
#   1. installs the Debian packages the build and the tests need (only those missing),
#   2. builds and installs the extension into the PostgreSQL of $PG_BINDIR,
#   3. starts a throwaway cluster as the postgres OS user, and stops and removes
#      it when the calling script exits.
# Afterwards PGHOST, PGPORT, PGUSER and PGDATABASE point at that cluster.
#
# Knobs (environment): PG_BINDIR (default /usr/lib/postgresql/15/bin), PGPORT
# (default 54329), EXP_SKIP_APT=1 to skip apt-get, EXP_PG_CONF (extra lines for
# postgresql.conf), EXP_KEEP_CLUSTER=1 to leave the cluster running when the
# calling script ends (it prints how to connect and how to stop it).
# The cluster runs pg_cron with cron.database_name = 'experiment', the database
# that scripts/demo.sh loads the demo into.

set -euo pipefail

EXP_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PG_BINDIR=${PG_BINDIR:-/usr/lib/postgresql/15/bin}
export PG_BINDIR EXP_ROOT

exp_log() { printf '== %s\n' "$*" >&2; }

exp_packages=(
	make gcc libc6-dev
	postgresql-15 postgresql-server-dev-15 postgresql-15-cron
	libgsl-dev
	librdkafka-dev libpq-dev kcat
	python3 python3-numpy python3-scipy python3-statsmodels python3-psycopg2
	nodejs npm
	liblz4-dev libzstd-dev libkrb5-dev libselinux1-dev libpam0g-dev autoconf flex bison
)

exp_install_packages() {
	[ "${EXP_SKIP_APT:-0}" = 1 ] && return 0
	local missing=() p
	for p in "${exp_packages[@]}"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
	done
	# node and npm may come from elsewhere than Debian's packages
	if command -v node >/dev/null && command -v npm >/dev/null; then
		local m=() q
		for q in "${missing[@]}"; do [ "$q" = nodejs ] || [ "$q" = npm ] || m+=("$q"); done
		missing=("${m[@]}")
	fi
	if [ ${#missing[@]} -gt 0 ]; then
		exp_log "installing: ${missing[*]}"
		export DEBIAN_FRONTEND=noninteractive
		apt-get update -qq
		apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
	fi
}

exp_build() {
	exp_log "building and installing the extension"
	make -C "$EXP_ROOT" -s PG_CONFIG="$PG_BINDIR/pg_config" >/dev/null
	make -C "$EXP_ROOT" -s PG_CONFIG="$PG_BINDIR/pg_config" install >/dev/null
	# experiment-kafka-sink (doc/kafka.md), where librdkafka is installed
	if [ -f /usr/include/librdkafka/rdkafka.h ]; then
		make -C "$EXP_ROOT" -s PG_CONFIG="$PG_BINDIR/pg_config" kafka-sink install-kafka-sink >/dev/null
	fi
}

exp_stop_cluster() {
	[ -n "${EXP_PGDATA:-}" ] && [ -d "$EXP_PGDATA" ] || return 0
	if [ "${EXP_KEEP_CLUSTER:-0}" = 1 ]; then
		cat >&2 <<KEPT
== the cluster is still running (EXP_KEEP_CLUSTER=1); the demo is in database "experiment":
     psql -h $EXP_CLUSTER_DIR -p $PGPORT -U postgres -d experiment
   stop and remove it with:
     runuser -u postgres -- $PG_BINDIR/pg_ctl -D $EXP_PGDATA stop && rm -rf $EXP_CLUSTER_DIR
KEPT
		return 0
	fi
	runuser -u postgres -- "$PG_BINDIR/pg_ctl" -D "$EXP_PGDATA" -m immediate stop >/dev/null 2>&1 || true
	rm -rf "$EXP_CLUSTER_DIR"
}

exp_start_cluster() {
	EXP_CLUSTER_DIR=$(mktemp -d /tmp/experiment-cluster.XXXXXX)
	EXP_PGDATA=$EXP_CLUSTER_DIR/data
	export EXP_CLUSTER_DIR EXP_PGDATA
	chown postgres: "$EXP_CLUSTER_DIR"
	chmod 755 "$EXP_CLUSTER_DIR"
	export PGPORT=${PGPORT:-54329}
	export PGHOST=$EXP_CLUSTER_DIR
	export PGUSER=postgres
	export PGDATABASE=postgres
	exp_log "starting a throwaway cluster in $EXP_PGDATA (port $PGPORT)"
	runuser -u postgres -- "$PG_BINDIR/initdb" -D "$EXP_PGDATA" -A trust -U postgres \
		--no-sync -E UTF8 --locale=C.UTF-8 >/dev/null
	cat >>"$EXP_PGDATA/postgresql.conf" <<CONF
listen_addresses = ''
unix_socket_directories = '$EXP_CLUSTER_DIR'
port = $PGPORT
fsync = off
synchronous_commit = off
full_page_writes = off
shared_buffers = 512MB
max_worker_processes = 16
max_parallel_workers = 8
max_parallel_workers_per_gather = 2
shared_preload_libraries = 'pg_cron'
cron.database_name = 'experiment'
cron.use_background_workers = on
max_connections = 60
${EXP_PG_CONF:-}
CONF
	trap exp_stop_cluster EXIT
	runuser -u postgres -- "$PG_BINDIR/pg_ctl" -D "$EXP_PGDATA" -l "$EXP_CLUSTER_DIR/server.log" -w start >/dev/null
}

exp_setup() {
	[ "$(id -u)" = 0 ] || { echo "run this as root (it installs packages and starts PostgreSQL as the postgres user)" >&2; exit 1; }
	exp_install_packages
	exp_build
	exp_start_cluster
}
