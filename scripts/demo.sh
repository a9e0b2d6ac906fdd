#!/usr/bin/env bash
# scripts/demo.sh: install what is missing, build, install, start a throwaway
# cluster, generate the checkout experiment (demo/checkout.sql: 26,000 users,
# exposures with redeliveries and a few units in both variants, orders,
# checkout errors and page loads), register it and its metrics through the
# catalogue, refresh, and print experiment.readout(), in database "experiment".
# With EXP_KEEP_CLUSTER=1 the cluster stays up for the README's tour in psql.
set -euo pipefail
. "$(dirname "$0")/setup.sh"
exp_setup
cd "$EXP_ROOT"
exp_log "generating and analysing the checkout experiment"
psql -X -q -d postgres -c 'CREATE DATABASE experiment' 2>/dev/null || true
psql -X -q -v ON_ERROR_STOP=1 -d experiment -f demo/checkout.sql
