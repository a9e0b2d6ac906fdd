#!/usr/bin/env bash
# bench/moments_bench.sh [--rows N] [--runs R]: the moments benchmark on a
# throwaway cluster (run as root; installs and builds like scripts/test.sh).
set -euo pipefail
EXP_PG_CONF=${EXP_PG_CONF:-"shared_buffers = 4GB
work_mem = 256MB"}
export EXP_PG_CONF
. "$(dirname "$0")/../scripts/setup.sh"
exp_setup
/usr/bin/python3 "$EXP_ROOT/bench/moments_bench.py" "$@"
