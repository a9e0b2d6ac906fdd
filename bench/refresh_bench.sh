#!/usr/bin/env bash
# bench/refresh_bench.sh: time experiment.refresh() on an experiment with
# 1 million enrolled units and 10 million events read by 3 metrics from one
# source relation, against the floor of a single SELECT count(*) of that
# source, in the same run. Prints both times and their ratio (target <= 3x).
#
#   bash bench/refresh_bench.sh                      set up a throwaway cluster (as root)
#   PGHOST=... PGPORT=... bash bench/refresh_bench.sh   use a running cluster
#
# Knobs: BENCH_UNITS (default 1000000), BENCH_EVENTS (default 10000000),
# BENCH_RUNS (default 3; the best run of each is reported).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
if [ -z "${PGHOST:-}" ]; then
	. "$here/../scripts/setup.sh"
	exp_setup
fi
UNITS=${BENCH_UNITS:-1000000}
EVENTS=${BENCH_EVENTS:-10000000}
RUNS=${BENCH_RUNS:-3}
DB=experiment_bench
export PGDATABASE=$DB

psql -qX -d postgres -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB"
echo "generating $UNITS units and $EVENTS events ..." >&2
psql -qX -v ON_ERROR_STOP=1 <<SQL
SET client_min_messages = warning;
CREATE EXTENSION experiment;
SELECT setseed(0.7);
INSERT INTO experiment.experiments (id, name, status, start_at, end_at)
VALUES ('bench', 'refresh benchmark', 'draft', '2025-01-01', '2025-01-29');
INSERT INTO experiment.variants (experiment_id, name, allocation, is_control)
VALUES ('bench', 'control', 0.5, true), ('bench', 'treatment', 0.5, false);
CREATE SCHEMA bench;
CREATE TABLE bench.events (user_id text, ts timestamptz, value float8);
INSERT INTO bench.events
SELECT 'u' || (1 + (random() * ($UNITS - 1))::bigint),
       timestamptz '2024-12-18' + random() * interval '42 days',
       CASE WHEN random() < 0.3 THEN round((random() * 100)::numeric, 2) ELSE 0 END
FROM generate_series(1, $EVENTS);
INSERT INTO experiment.exposures (experiment_id, unit_id, variant, exposed_at)
SELECT 'bench', 'u' || i, CASE WHEN random() < 0.5 THEN 'control' ELSE 'treatment' END,
       timestamptz '2025-01-01' + random() * interval '21 days'
FROM generate_series(1, $UNITS) i;
VACUUM ANALYZE bench.events;
VACUUM ANALYZE experiment.exposures;
INSERT INTO experiment.metrics (name, source, unit_column, time_column, value_column, aggregation, kind,
                                "window", winsorize, cuped_lookback) VALUES
  ('bench_conversion', 'bench.events', 'user_id', 'ts', 'value', 'any', 'proportion', '7 days', NULL, NULL),
  ('bench_revenue', 'bench.events', 'user_id', 'ts', 'value', 'sum', 'mean', NULL, 0.999, '14 days'),
  ('bench_events', 'bench.events', 'user_id', 'ts', NULL, 'count', 'mean', '14 days', NULL, NULL);
INSERT INTO experiment.experiment_metrics (experiment_id, metric, role) VALUES
  ('bench', 'bench_revenue', 'primary'), ('bench', 'bench_conversion', 'secondary'),
  ('bench', 'bench_events', 'secondary');
UPDATE experiment.experiments SET status = 'running' WHERE id = 'bench';
SQL

now() { date +%s.%N; }
best_count=""
best_refresh=""
for run in $(seq 1 "$RUNS"); do
	t0=$(now); psql -qXAt -c "SELECT count(*) FROM bench.events" >/dev/null; t1=$(now)
	psql -qXAt -c "SELECT experiment.refresh('bench')" >/dev/null; t2=$(now)
	c=$(awk "BEGIN { print $t1 - $t0 }"); r=$(awk "BEGIN { print $t2 - $t1 }")
	printf 'run %d: count(*) %.3f s   refresh() %.3f s\n' "$run" "$c" "$r"
	if [ -z "$best_count" ] || awk "BEGIN { exit !($c < $best_count) }"; then best_count=$c; fi
	if [ -z "$best_refresh" ] || awk "BEGIN { exit !($r < $best_refresh) }"; then best_refresh=$r; fi
done
psql -qXAt -c "SELECT 'enrolled units: ' || enrolled_units FROM experiment.refreshes WHERE experiment_id = 'bench'"
printf 'floor: SELECT count(*) of %s events: %.3f s\n' "$EVENTS" "$best_count"
printf 'experiment.refresh() of %s units, 3 metrics: %.3f s\n' "$UNITS" "$best_refresh"
printf 'ratio refresh / count(*): %.2fx (target <= 3x)\n' "$(awk "BEGIN { print $best_refresh / $best_count }")"
