#!/usr/bin/env bash
# scripts/demo.sh: install what is missing, build, install, start a throwaway
# cluster, generate the checkout experiment (demo/checkout.sql: 26,000 users,
# exposures with redeliveries and a few units in both variants, orders,
# checkout errors and page loads), register it and its metrics through the
# catalogue, refresh, and print experiment.readout().
set -euo pipefail
. "$(dirname "$0")/setup.sh"
exp_setup
cd "$EXP_ROOT"
exp_log "generating and analysing the checkout experiment"
psql -X -q -v ON_ERROR_STOP=1 -d postgres -f demo/checkout.sql
