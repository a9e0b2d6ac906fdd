#!/usr/bin/env bash
# scripts/test.sh: install what is missing, build, install, start a throwaway
# cluster and run the whole test suite (pg_regress, then the programs in test/).
# Ends with the line "N passed, N failed, N skipped".
set -euo pipefail
. "$(dirname "$0")/setup.sh"
exp_setup
cd "$EXP_ROOT"
set +e
bash test/run "$@"
rc=$?
exit $rc
