-- capping both ways (doc/analysis.md, "Winsorization"): winsorize_lower, cap_lower,
-- cap_upper and cap_ignore_zeros of experiment.metrics; every bad value is a 22023 error
-- naming the column, the value and what is allowed; the rule that combines percentile and
-- absolute caps; a small refresh checked by hand
-- (test/test_analysis_capping.py checks the caps, moments and tests against numpy and scipy)
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS experiment;
\set ECHO none
\i test/regress_support.sql
\set ECHO all
CREATE SCHEMA capping;
CREATE TABLE capping.events (user_id text, ts timestamptz, amount float8);

-- accepted: each column alone, all together, NULL everywhere (no cap), the flag without caps
INSERT INTO experiment.metrics (name, source, unit_column, time_column, value_column, winsorize_lower) VALUES
  ('cp_lower', 'capping.events', 'user_id', 'ts', 'amount', 0.001);
INSERT INTO experiment.metrics (name, source, unit_column, time_column, value_column, cap_lower, cap_upper) VALUES
  ('cp_abs', 'capping.events', 'user_id', 'ts', 'amount', -500, 10000);
INSERT INTO experiment.metrics (name, source, unit_column, time_column, value_column, winsorize_lower, winsorize,
                                cap_lower, cap_upper, cap_ignore_zeros) VALUES
  ('cp_all', 'capping.events', 'user_id', 'ts', 'amount', 0.01, 0.99, -100, 100, true);
INSERT INTO experiment.metrics (name, source, unit_column, time_column, value_column, cap_ignore_zeros) VALUES
  ('cp_flag', 'capping.events', 'user_id', 'ts', 'amount', true);
INSERT INTO experiment.metrics (name, source, unit_column, time_column, value_column) VALUES
  ('cp_none', 'capping.events', 'user_id', 'ts', 'amount');
SELECT name, winsorize_lower, winsorize, cap_lower, cap_upper, cap_ignore_zeros
FROM experiment.metrics WHERE name LIKE 'cp\_%' ORDER BY name;

-- refused: percentiles outside (0, 1), a lower percentile not below the upper one
SELECT regress_support.err($$UPDATE experiment.metrics SET winsorize_lower = 0 WHERE name = 'cp_lower'$$);
SELECT regress_support.err($$UPDATE experiment.metrics SET winsorize_lower = 1 WHERE name = 'cp_lower'$$);
SELECT regress_support.err($$UPDATE experiment.metrics SET winsorize_lower = -0.01 WHERE name = 'cp_lower'$$);
SELECT regress_support.err($$UPDATE experiment.metrics SET winsorize_lower = 'NaN' WHERE name = 'cp_lower'$$);
SELECT regress_support.err($$UPDATE experiment.metrics SET winsorize_lower = 0.99 WHERE name = 'cp_all'$$);
SELECT regress_support.err($$UPDATE experiment.metrics SET winsorize_lower = 0.995 WHERE name = 'cp_all'$$);
-- (the upper percentile moved below the lower one names the lower one)
SELECT regress_support.err($$UPDATE experiment.metrics SET winsorize = 0.005 WHERE name = 'cp_all'$$);
-- refused: absolute caps that are not finite, a lower cap not below the upper one
SELECT regress_support.err($$UPDATE experiment.metrics SET cap_lower = '-Infinity' WHERE name = 'cp_abs'$$);
SELECT regress_support.err($$UPDATE experiment.metrics SET cap_lower = 'NaN' WHERE name = 'cp_abs'$$);
SELECT regress_support.err($$UPDATE experiment.metrics SET cap_upper = 'Infinity' WHERE name = 'cp_abs'$$);
SELECT regress_support.err($$UPDATE experiment.metrics SET cap_upper = 'NaN' WHERE name = 'cp_abs'$$);
SELECT regress_support.err($$UPDATE experiment.metrics SET cap_lower = 10000 WHERE name = 'cp_abs'$$);
SELECT regress_support.err($$UPDATE experiment.metrics SET cap_upper = -600 WHERE name = 'cp_abs'$$);
SELECT regress_support.err($$UPDATE experiment.metrics SET cap_ignore_zeros = NULL WHERE name = 'cp_flag'$$);
SELECT regress_support.err($$INSERT INTO experiment.metrics (name, source, unit_column, time_column, cap_ignore_zeros)
                             VALUES ('cp_bad', 'capping.events', 'user_id', 'ts', NULL)$$);
-- refused: caps of a proportion (its values are 0 or 1) or of a ratio (its parts are capped)
SELECT regress_support.err($$INSERT INTO experiment.metrics (name, source, unit_column, time_column, aggregation, kind, cap_upper)
                             VALUES ('cp_bad', 'capping.events', 'user_id', 'ts', 'any', 'proportion', 0.5)$$);
SELECT regress_support.err($$INSERT INTO experiment.metrics (name, source, unit_column, time_column, aggregation, kind,
                                                             winsorize_lower, cap_lower)
                             VALUES ('cp_bad', 'capping.events', 'user_id', 'ts', 'any', 'proportion', 0.1, 0)$$);
SELECT regress_support.err($$INSERT INTO experiment.metrics (name, kind, numerator, denominator, cap_lower)
                             VALUES ('cp_bad', 'ratio', 'cp_all', 'cp_none', 0)$$);
-- the table's constraints are the last line of defence (here without the triggers)
SET session_replication_role = replica;
SELECT regress_support.err($$UPDATE experiment.metrics SET winsorize_lower = 0.995 WHERE name = 'cp_all'$$);
SELECT regress_support.err($$UPDATE experiment.metrics SET cap_lower = 'Infinity', cap_upper = NULL WHERE name = 'cp_abs'$$);
SELECT regress_support.err($$UPDATE experiment.metrics SET cap_lower = 1, cap_upper = 1 WHERE name = 'cp_abs'$$);
RESET session_replication_role;
-- (nothing was changed)
SELECT name, winsorize_lower, winsorize, cap_lower, cap_upper, cap_ignore_zeros
FROM experiment.metrics WHERE name LIKE 'cp\_%' ORDER BY name;

-- the rule (experiment.effective_caps(pct_lower, pct_upper, cap_lower, cap_upper)): absolute
-- caps are hard bounds that percentiles only tighten; a percentile beyond the other side's
-- absolute cap moves to it
SELECT x.case, c.lower_cap, c.upper_cap
FROM (VALUES ('nothing', NULL::float8, NULL::float8, NULL::float8, NULL::float8),
             ('percentiles only', -3, 7, NULL, NULL),
             ('absolute only', NULL, NULL, -10, 10),
             ('the percentiles are tighter', -3, 7, -10, 10),
             ('the absolute caps are tighter', -30, 70, -10, 10),
             ('one of each', -30, 7, -10, 10),
             ('upper percentile below cap_lower', NULL, -20, -10, NULL),
             ('lower percentile above cap_upper', 20, NULL, NULL, 10),
             ('both percentiles above cap_upper', 20, 30, -10, 10),
             ('upper percentile only, cap_lower only', NULL, 7, 0, NULL),
             ('lower percentile only, cap_upper only', -3, NULL, NULL, 0),
             ('NaN and infinite arguments are no cap', 'NaN', 'Infinity', '-Infinity', 'NaN'),
             ('NaN and infinite absolute caps', -3, 7, 'NaN', 'Infinity')) AS x("case", pl, pu, al, au)
CROSS JOIN LATERAL experiment.effective_caps(x.pl, x.pu, x.al, x.au) c;

-- the SQL of a capped column: no cap, one side, both, zeros kept; a NaN or infinite cap caps nothing
SELECT experiment.capped_sql('v', 1, NULL, NULL, true) AS no_cap,
       experiment.capped_sql('v', 2, NULL, 7.5, false) AS upper,
       experiment.capped_sql('p', 3, -2.25, NULL, false) AS lower,
       experiment.capped_sql('v', 4, -2.25, 7.5, false) AS both,
       experiment.capped_sql('v', 5, -2.25, 7.5, true) AS zeros_kept,
       experiment.capped_sql('v', 6, '-Infinity', 'NaN', false) AS not_finite;

-- a small refresh by hand: 10 units, 5 per variant, net values -50 -5 0 0 1 | 0 2 3 4 100
INSERT INTO experiment.experiments (id, status, start_at, end_at, analysis, correction)
VALUES ('cp', 'draft', '2025-01-01 00:00+00', '2025-01-15 00:00+00', 'fixed', 'none');
INSERT INTO experiment.variants (experiment_id, name, allocation, is_control)
VALUES ('cp', 'control', 0.5, true), ('cp', 'treatment', 0.5, false);
INSERT INTO experiment.experiment_metrics (experiment_id, metric, role) VALUES
  ('cp', 'cp_none', 'primary'), ('cp', 'cp_lower', 'secondary'), ('cp', 'cp_all', 'secondary');
UPDATE experiment.experiments SET status = 'running' WHERE id = 'cp';
SELECT count(experiment.log_exposure('cp', 'u' || i, CASE WHEN i <= 5 THEN 'control' ELSE 'treatment' END,
                                     '2025-01-02 10:00+00'))
FROM generate_series(1, 10) i;
INSERT INTO capping.events VALUES
  ('u1', '2025-01-03 10:00+00', 20), ('u1', '2025-01-04 10:00+00', -70),   -- a refund: net -50
  ('u2', '2025-01-03 10:00+00', -5), ('u4', '2025-01-03 10:00+00', 0), ('u5', '2025-01-03 10:00+00', 1),
  ('u7', '2025-01-03 10:00+00', 2), ('u8', '2025-01-03 10:00+00', 3), ('u9', '2025-01-03 10:00+00', 4),
  ('u10', '2025-01-03 10:00+00', 100);
UPDATE experiment.metrics SET winsorize_lower = 0.1 WHERE name = 'cp_lower';
-- cp_all: percentiles 0.1 and 0.9 of the 7 non-zero values (-50 -5 1 2 3 4 100): -23 and 42.4,
-- then cap_upper = 10 is tighter; zeros stay 0
UPDATE experiment.metrics SET winsorize_lower = 0.1, winsorize = 0.9, cap_lower = -100, cap_upper = 10 WHERE name = 'cp_all';
SELECT experiment.refresh('cp');
-- cp_lower: the 10th percentile of all 10 values (-50 -5 0 0 0 1 2 3 4 100) is -50 + 0.9 * 45 = -9.5
SELECT metric, variant, round(cap_lower::numeric, 9) AS cap_lower, cap, round(experiment.mean(moments)::numeric, 6) AS mean
FROM experiment.variant_stats WHERE experiment_id = 'cp' ORDER BY 1, 2;
-- the same by hand: cp_all control (-23 -5 0 0 1) and treatment (0 2 3 4 10)
SELECT round(avg(v)::numeric, 6) AS mean FROM (VALUES (-23), (-5), (0), (0), (1)) t(v)
UNION ALL SELECT round(avg(v)::numeric, 6) FROM (VALUES (0), (2), (3), (4), (10)) t(v);

-- clean up
UPDATE experiment.experiments SET status = 'stopped' WHERE id = 'cp';
DELETE FROM experiment.exposures WHERE experiment_id = 'cp';
DELETE FROM experiment.experiment_metrics WHERE experiment_id = 'cp';
DELETE FROM experiment.experiments WHERE id = 'cp';
DELETE FROM experiment.metrics WHERE name LIKE 'cp\_%';
DROP SCHEMA capping CASCADE;
