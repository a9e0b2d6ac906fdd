-- analysis: a small refresh by hand, the columns of the views, readout formatting
-- (quiet: whether the extension exists depends on the tests run before this one)
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS experiment;
\set VERBOSITY terse
CREATE SCHEMA analysis_views;
CREATE TABLE analysis_views.events (user_id text, ts timestamptz, amount numeric);

INSERT INTO experiment.experiments (id, name, status, start_at, end_at)
VALUES ('analysis-views', 'views test', 'draft', '2025-01-01 00:00+00', '2025-01-15 00:00+00');
INSERT INTO experiment.variants (experiment_id, name, allocation, is_control) VALUES
  ('analysis-views', 'control', 0.5, true), ('analysis-views', 'treatment', 0.5, false);
INSERT INTO experiment.metrics (name, source, unit_column, time_column, value_column, aggregation, kind,
                                delay, "window", higher_is_better, cuped_lookback)
VALUES ('views_revenue', 'analysis_views.events', 'user_id', 'ts', 'amount', 'sum', 'mean', '0', '2 days', true, NULL),
       ('views_bought', 'analysis_views.events', 'user_id', 'ts', NULL, 'any', 'proportion', '1 hour', '1 day', true, NULL);
INSERT INTO experiment.experiment_metrics (experiment_id, metric, role) VALUES
  ('analysis-views', 'views_revenue', 'primary'), ('analysis-views', 'views_bought', 'guardrail');
UPDATE experiment.experiments SET status = 'running' WHERE id = 'analysis-views';

-- four units per variant, first exposed on Jan 2 at 10:00; u4 has no events (zero-filled);
-- u9 saw both variants (excluded); events before exposure, before the delay or after the window do not count
SELECT experiment.log_exposure('analysis-views', u, v, '2025-01-02 10:00+00')
FROM (VALUES ('u1', 'control'), ('u2', 'control'), ('u3', 'control'), ('u4', 'control'),
             ('u5', 'treatment'), ('u6', 'treatment'), ('u7', 'treatment'), ('u8', 'treatment'),
             ('u9', 'control')) AS x(u, v);
SELECT experiment.log_exposure('analysis-views', 'u9', 'treatment', '2025-01-03 10:00+00');
SELECT experiment.log_exposure('analysis-views', 'u1', 'control', '2025-01-05 10:00+00');  -- a later exposure
INSERT INTO analysis_views.events VALUES
  ('u1', '2025-01-02 09:59+00', 100),   -- before exposure: not counted
  ('u1', '2025-01-02 10:30+00', 10),    -- revenue only (before the 1 hour delay of views_bought)
  ('u1', '2025-01-04 09:59+00', 5),     -- last minute of the 2 day window
  ('u2', '2025-01-02 12:00+00', 20),
  ('u2', '2025-01-04 10:00+00', 7),     -- window end is exclusive
  ('u3', '2025-01-03 09:00+00', 30),
  ('u5', '2025-01-02 11:00+00', 40),
  ('u6', '2025-01-02 11:00+00', 20), ('u6', '2025-01-02 12:00+00', 30),
  ('u7', '2025-01-03 12:00+00', 60),    -- after the 1 day window of views_bought
  ('u8', '2025-01-02 11:00+00', 0),
  ('u9', '2025-01-02 11:00+00', 1000),  -- excluded unit
  ('u99', '2025-01-02 11:00+00', 1000); -- never exposed
SELECT experiment.refresh('analysis-views');

SELECT variant, units FROM experiment.enrollment WHERE experiment_id = 'analysis-views' ORDER BY variant;
SELECT metric, variant, units, experiment.n(moments) AS n, round(experiment.mean(moments)::numeric, 4) AS mean,
       round(experiment.variance(moments)::numeric, 4) AS variance, cuped_moments IS NULL AS no_cuped
FROM experiment.variant_stats WHERE experiment_id = 'analysis-views' ORDER BY metric, variant;
SELECT metric, variant, control_variant, role, kind, method, n_control, n_treatment,
       round(mean_control::numeric, 4) AS mean_control, round(mean_treatment::numeric, 4) AS mean_treatment,
       round(diff::numeric, 4) AS diff, p_value BETWEEN 0 AND 1 AS p_ok, guardrail_ok IS NOT NULL AS has_guardrail_verdict
FROM experiment.results WHERE experiment_id = 'analysis-views' ORDER BY metric;
SELECT variant, units, expected_share, round(observed_share::numeric, 3) AS observed_share, expected_units,
       p_value BETWEEN 0 AND 1 AS p_ok
FROM experiment.srm WHERE experiment_id = 'analysis-views' ORDER BY variant;
SELECT enrolled_units, multi_variant_units, round(multi_variant_share::numeric, 4) AS multi_variant_share,
       multi_variant_ok, round(days_run::numeric, 1) AS days_run, runtime_ok, min_units_per_variant, sample_ok,
       exposures_by_day
FROM experiment.health WHERE experiment_id = 'analysis-views';

-- the readout and the decision (the primary metric is not significant with 4 units per arm)
\pset tuples_only on
\pset format unaligned
SELECT experiment.readout('analysis-views');
\pset tuples_only off
\pset format aligned
SELECT * FROM experiment.decision('analysis-views');

-- the views have stable, flat, typed columns
SELECT c.relname, a.attnum, a.attname, format_type(a.atttypid, a.atttypmod)
FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
WHERE c.oid IN ('experiment.results'::regclass, 'experiment.srm'::regclass, 'experiment.health'::regclass)
  AND a.attnum > 0
ORDER BY c.relname, a.attnum;

-- readout number formatting
SELECT x, experiment.format_number(x) FROM unnest(ARRAY[NULL, 0, 0.6123, 0.01234, 0.000012345, 1.23456, 41.2, -41.256,
                                                        999.994, 12841, 1234567.8, -12841]::float8[]) AS x;
SELECT n, experiment.format_count(n) FROM unnest(ARRAY[NULL, 0, 7, 999, 1000, 12841, -12841, 1234567890]::bigint[]) AS n;
SELECT experiment.format_signed(0.026, 'pp', 100, 1), experiment.format_signed(-0.0042, '%', 100, 1),
       experiment.format_signed(1.9), experiment.format_signed(-0.0004, 'pp', 100, 1), experiment.format_signed(NULL);
SELECT p, experiment.format_p(p), experiment.format_p(p, false)
FROM unnest(ARRAY[NULL, 0.0000001, 0.000999, 0.003, 0.0449, 0.1, 0.834, 1]::float8[]) AS p;

-- clean up
DELETE FROM experiment.exposures WHERE experiment_id = 'analysis-views';
DELETE FROM experiment.experiment_metrics WHERE experiment_id = 'analysis-views';
UPDATE experiment.experiments SET status = 'stopped' WHERE id = 'analysis-views' AND status = 'running';
DELETE FROM experiment.experiments WHERE id = 'analysis-views';   -- and its variants
DELETE FROM experiment.metrics WHERE name LIKE 'views\_%';
DROP SCHEMA analysis_views CASCADE;
