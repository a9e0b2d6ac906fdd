-- one bad row never stops an analysis, and nothing is replaced silently: NaN and infinite
-- source values are skipped and counted; windows of any length; exposures outside the
-- analysable years are refused or quarantined; overflowing sums and unusable arguments
-- of source_unit_values() are errors naming what overflowed
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS experiment;
\set ECHO none
\i test/regress_support.sql
\set ECHO all
CREATE SCHEMA bad_rows;
CREATE TABLE bad_rows.events (user_id text, ts timestamptz, amount float8);

INSERT INTO experiment.experiments (id, status, start_at, end_at)
VALUES ('br', 'draft', '2025-01-01 00:00+00', '2025-01-15 00:00+00');
INSERT INTO experiment.variants (experiment_id, name, allocation, is_control)
VALUES ('br', 'control', 0.5, true), ('br', 'treatment', 0.5, false);
INSERT INTO experiment.metrics (name, source, unit_column, time_column, value_column, cuped_lookback) VALUES
  ('br_amount', 'bad_rows.events', 'user_id', 'ts', 'amount', NULL);
INSERT INTO experiment.metrics (name, source, unit_column, time_column, value_column, cuped_lookback, winsorize) VALUES
  ('br_capped', 'bad_rows.events', 'user_id', 'ts', 'amount', NULL, 0.9);
INSERT INTO experiment.metrics (name, source, unit_column, time_column, value_column, cuped_lookback, "window") VALUES
  ('br_forever', 'bad_rows.events', 'user_id', 'ts', 'amount', NULL, '106751991 days'),
  ('br_long', 'bad_rows.events', 'user_id', 'ts', 'amount', NULL, '1000000 years');
INSERT INTO experiment.experiment_metrics (experiment_id, metric, role) VALUES
  ('br', 'br_amount', 'primary'), ('br', 'br_capped', 'secondary'),
  ('br', 'br_forever', 'secondary'), ('br', 'br_long', 'secondary');
UPDATE experiment.experiments SET status = 'running' WHERE id = 'br';
SELECT count(experiment.log_exposure('br', 'u' || i, CASE WHEN i % 2 = 0 THEN 'control' ELSE 'treatment' END,
                                     '2025-01-02 10:00+00'))
FROM generate_series(1, 40) i;
INSERT INTO bad_rows.events SELECT 'u' || i, '2025-01-03 10:00+00', (i % 9)::float8 FROM generate_series(1, 40) i;
-- three values that are no measurement
INSERT INTO bad_rows.events VALUES
  ('u1', '2025-01-03 11:00+00', 'NaN'), ('u2', '2025-01-03 11:00+00', 'Infinity'),
  ('u3', '2025-01-03 11:00+00', '-Infinity');
SELECT experiment.refresh('br');
-- the finite values alone: the means match a plain avg() of the finite values per unit
-- (br_capped is winsorized at the pooled 90th percentile, 7.1)
SELECT v.metric, v.variant, v.skipped_values, round(experiment.mean(v.moments)::numeric, 6) AS mean,
       round((SELECT avg(s) FROM (SELECT sum(e.amount) FILTER (WHERE e.amount NOT IN ('NaN', 'Infinity', '-Infinity')) AS s
                                  FROM experiment.exposures x LEFT JOIN bad_rows.events e ON e.user_id = x.unit_id
                                  WHERE x.experiment_id = 'br' AND x.variant = v.variant GROUP BY x.unit_id) q)::numeric, 6) AS expected
FROM experiment.variant_stats v WHERE v.experiment_id = 'br' ORDER BY 1, 2;
-- the cap is a percentile of finite values, and no NaN became the cap
SELECT metric, variant, cap FROM experiment.variant_stats WHERE experiment_id = 'br' AND cap IS NOT NULL ORDER BY 1, 2;
SELECT skipped_source_values FROM experiment.health WHERE experiment_id = 'br';

-- the results do not depend on the session of whoever refreshes: a date column and a
-- window in days are read in UTC
CREATE VIEW bad_rows.daily AS SELECT user_id, ts::date AS d, amount FROM bad_rows.events;
CREATE TABLE bad_rows.seen (tz text, metric text, variant text, m text);
INSERT INTO experiment.metrics (name, source, unit_column, time_column, value_column, cuped_lookback, "window") VALUES
  ('br_daily', 'bad_rows.daily', 'user_id', 'd', 'amount', NULL, '1 day');
INSERT INTO experiment.experiments (id, status, start_at) VALUES ('br-tz', 'draft', '2025-01-01 00:00+00');
INSERT INTO experiment.variants (experiment_id, name, allocation, is_control)
VALUES ('br-tz', 'control', 0.5, true), ('br-tz', 'treatment', 0.5, false);
INSERT INTO experiment.experiment_metrics (experiment_id, metric, role) VALUES ('br-tz', 'br_daily', 'primary');
UPDATE experiment.experiments SET status = 'running' WHERE id = 'br-tz';
SELECT count(experiment.log_exposure('br-tz', 'u' || i, CASE WHEN i % 2 = 0 THEN 'control' ELSE 'treatment' END,
                                     '2025-01-03 05:00+00'))
FROM generate_series(1, 40) i;
SET TimeZone = 'UTC';
SELECT experiment.refresh('br-tz');
INSERT INTO bad_rows.seen SELECT 'UTC', metric, variant, moments::text FROM experiment.variant_stats WHERE experiment_id = 'br-tz';
SET TimeZone = 'America/Los_Angeles';
SELECT experiment.refresh('br-tz');
INSERT INTO bad_rows.seen SELECT 'Los_Angeles', metric, variant, moments::text FROM experiment.variant_stats WHERE experiment_id = 'br-tz';
RESET TimeZone;
SELECT a.variant, a.m = b.m AS same, experiment.n(a.m::experiment.moments) AS n, experiment.mean(a.m::experiment.moments) AS mean
FROM bad_rows.seen a JOIN bad_rows.seen b ON b.variant = a.variant AND b.tz = 'Los_Angeles'
WHERE a.tz = 'UTC' ORDER BY 1;
UPDATE experiment.experiments SET status = 'stopped' WHERE id = 'br-tz';

-- exposures outside 1970 .. 2200 are refused (log_exposure), quarantined (ingest_exposures)
-- or rejected by the table's constraint
SELECT regress_support.err($$SELECT experiment.log_exposure('br', 'late', 'control', '294276-01-01 00:00+00')$$);
SELECT regress_support.err($$SELECT experiment.log_exposure('br', 'early', 'control', '1900-01-01 00:00+00')$$);
SELECT regress_support.err($$SELECT experiment.log_exposure('br', 'inf', 'control', 'infinity')$$);
SELECT * FROM experiment.ingest_exposures('[{"experiment_id": "br", "unit_id": "late", "variant": "control",
                                            "exposed_at": "294276-01-01T00:00:00Z"},
                                           {"experiment_id": "br", "unit_id": "ok", "variant": "control",
                                            "exposed_at": "2025-01-02T11:00:00Z"}]');
SELECT reason, unit_id FROM experiment.exposures_quarantine WHERE experiment_id = 'br';
SELECT regress_support.err($$INSERT INTO experiment.exposures (experiment_id, unit_id, variant, exposed_at)
                             VALUES ('br', 'late', 'control', '294276-01-01 00:00+00')$$);
SELECT experiment.refresh('br');
SELECT enrolled_units FROM experiment.refreshes WHERE experiment_id = 'br';

-- windows reaching past the end of time, computed directly
SELECT experiment.timestamptz_add_clamped('2025-01-01 00:00+00', '106751991 days'),
       experiment.timestamptz_add_clamped('2025-01-01 00:00+00', '-106751991 days'),
       experiment.timestamptz_add_clamped('2025-01-01 00:00+00', '1 month') = '2025-02-01 00:00+00'::timestamptz,
       experiment.timestamptz_add_clamped('infinity', '-1 day');
SELECT unit_id, vals FROM experiment.source_unit_values('{u9}', '{a}', '{294275-12-01 00:00+00}', 'bad_rows.events',
  'user_id', '{ts,ts}', '{amount,amount}', '{count,count}', '{0,-106751991 days}', '{106751991 days,0}', '{f,f}',
  NULL, NULL, NULL);

-- a sum that overflows float8 is an error naming the column and the unit
INSERT INTO bad_rows.events VALUES ('u4', '2025-01-03 12:00+00', 1e308), ('u4', '2025-01-03 12:01+00', 1e308);
SELECT regress_support.err($$SELECT experiment.refresh('br')$$);
DELETE FROM bad_rows.events WHERE amount = 1e308;

-- unusable arguments of source_unit_values()
SELECT regress_support.err($$SELECT * FROM experiment.source_unit_values('{u1}', '{NULL}', '{2025-01-01}',
  'bad_rows.events', 'user_id', '{ts}', '{amount}', '{sum}', '{0}', '{NULL}', '{f}', NULL, NULL, NULL)$$);
DO $$
BEGIN
  EXECUTE (SELECT format('CREATE TABLE bad_rows.wide (user_id text, ts timestamptz, %s)',
                         string_agg(format('c%s float8', i), ', ')) FROM generate_series(1, 101) i);
END $$;
SELECT regress_support.err(format($$SELECT * FROM experiment.source_unit_values('{u1}', '{a}', '{2025-01-01}',
  'bad_rows.wide', 'user_id', %L, %L, %L, %L, %L, %L, NULL, NULL, NULL)$$,
  (SELECT array_agg('ts'::text) FROM generate_series(1, 101) i),
  (SELECT array_agg('c' || i::text) FROM generate_series(1, 101) i),
  (SELECT array_agg('sum'::text) FROM generate_series(1, 101) i),
  (SELECT array_agg('0'::interval) FROM generate_series(1, 101) i),
  (SELECT array_agg(NULL::interval) FROM generate_series(1, 101) i),
  (SELECT array_agg(false) FROM generate_series(1, 101) i)));

-- the experiment's other failures: no control variant, a dropped source
INSERT INTO experiment.experiments (id, status) VALUES ('br-nocontrol', 'draft');
SELECT regress_support.err($$INSERT INTO experiment.variants (experiment_id, name, allocation, is_control)
                             VALUES ('br-nocontrol', 'a', 0.5, false), ('br-nocontrol', 'b', 0.5, false)$$);
SELECT regress_support.err($$SELECT experiment.refresh('br-nocontrol')$$);
DROP TABLE bad_rows.events;
SELECT regexp_replace(regress_support.err($$SELECT experiment.refresh('br')$$), 'oid [0-9]+', 'oid N');
-- (stopped, so that later tests' refresh_all() leaves it alone)
UPDATE experiment.experiments SET status = 'stopped' WHERE id = 'br';
