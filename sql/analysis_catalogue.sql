-- analysis: the metric catalogue and its validation, exposure ingestion errors
-- (quiet: whether the extension exists depends on the tests run before this one)
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS experiment;
\set VERBOSITY terse
CREATE SCHEMA analysis_cat;
CREATE TABLE analysis_cat.events (user_id text, ts timestamptz, amount numeric, flag boolean,
                                  note text, day date, uid bigint, doc jsonb);
CREATE SEQUENCE analysis_cat.seq;

INSERT INTO experiment.experiments (id, name, status) VALUES ('analysis-cat', 'catalogue test', 'draft');
INSERT INTO experiment.variants (experiment_id, name, allocation, is_control) VALUES
  ('analysis-cat', 'control', 0.5, true), ('analysis-cat', 'treatment', 0.5, false);

-- valid metrics
INSERT INTO experiment.metrics (name, source, unit_column, time_column, value_column, aggregation, kind)
VALUES ('cat_revenue', 'analysis_cat.events', 'user_id', 'ts', 'amount', 'sum', 'mean'),
       ('cat_orders', 'analysis_cat.events', 'user_id', 'ts', NULL, 'count', 'mean'),
       ('cat_converted', 'analysis_cat.events', 'uid', 'day', 'flag', 'any', 'proportion');
INSERT INTO experiment.metrics (name, kind, numerator, denominator, cuped_lookback)
VALUES ('cat_aov', 'ratio', 'cat_revenue', 'cat_orders', NULL);
SELECT name, kind, aggregation, cuped_lookback, "window", delay FROM experiment.metrics
WHERE name LIKE 'cat\_%' ORDER BY name;

-- invalid metrics: every one is a clear error
INSERT INTO experiment.metrics (name, source, unit_column, time_column) VALUES ('bad', 'analysis_cat.events', 'who', 'ts');
INSERT INTO experiment.metrics (name, source, unit_column, time_column) VALUES ('bad', 'analysis_cat.events', 'user_id', 'when');
INSERT INTO experiment.metrics (name, source, unit_column, time_column) VALUES ('bad', 'analysis_cat.events', 'user_id', 'note');
INSERT INTO experiment.metrics (name, source, unit_column, time_column) VALUES ('bad', 'analysis_cat.events', 'doc', 'ts');
INSERT INTO experiment.metrics (name, source, unit_column, time_column, value_column) VALUES ('bad', 'analysis_cat.events', 'user_id', 'ts', 'note');
INSERT INTO experiment.metrics (name, source, unit_column, time_column, value_column) VALUES ('bad', 'analysis_cat.events', 'user_id', 'ts', 'nothing');
INSERT INTO experiment.metrics (name, source, unit_column, time_column) VALUES ('bad', 'analysis_cat.seq', 'user_id', 'ts');
INSERT INTO experiment.metrics (name, source, unit_column, time_column) VALUES ('bad', 'analysis_cat.events', NULL, 'ts');
INSERT INTO experiment.metrics (name, unit_column, time_column) VALUES ('bad', 'user_id', 'ts');
INSERT INTO experiment.metrics (name, source, unit_column, time_column) VALUES ('bad', 'analysis_cat.nosuch', 'user_id', 'ts');
INSERT INTO experiment.metrics (name, source, unit_column, time_column, aggregation, kind) VALUES ('bad', 'analysis_cat.events', 'user_id', 'ts', 'sum', 'proportion');
INSERT INTO experiment.metrics (name, source, unit_column, time_column, aggregation, kind, winsorize) VALUES ('bad', 'analysis_cat.events', 'user_id', 'ts', 'any', 'proportion', 0.99);
INSERT INTO experiment.metrics (name, source, unit_column, time_column, aggregation) VALUES ('bad', 'analysis_cat.events', 'user_id', 'ts', 'median');
INSERT INTO experiment.metrics (name, source, unit_column, time_column, kind) VALUES ('bad', 'analysis_cat.events', 'user_id', 'ts', 'quantile');
INSERT INTO experiment.metrics (name, source, unit_column, time_column, winsorize) VALUES ('bad', 'analysis_cat.events', 'user_id', 'ts', 1.5);
INSERT INTO experiment.metrics (name, source, unit_column, time_column, "window") VALUES ('bad', 'analysis_cat.events', 'user_id', 'ts', '-1 day');
INSERT INTO experiment.metrics (name, source, unit_column, time_column, delay) VALUES ('bad', 'analysis_cat.events', 'user_id', 'ts', '-1 hour');
INSERT INTO experiment.metrics (name, kind, numerator) VALUES ('bad', 'ratio', 'cat_revenue');
INSERT INTO experiment.metrics (name, kind, numerator, denominator) VALUES ('bad', 'ratio', 'cat_revenue', 'nosuch');
INSERT INTO experiment.metrics (name, kind, numerator, denominator) VALUES ('bad', 'ratio', 'cat_aov', 'cat_orders');
INSERT INTO experiment.metrics (name, kind, numerator, denominator, source, unit_column, time_column)
  VALUES ('bad', 'ratio', 'cat_revenue', 'cat_orders', 'analysis_cat.events', 'user_id', 'ts');
INSERT INTO experiment.metrics (name, source, unit_column, time_column, numerator) VALUES ('bad', 'analysis_cat.events', 'user_id', 'ts', 'cat_orders');
-- a change that breaks a metric is refused too
UPDATE experiment.metrics SET value_column = 'note' WHERE name = 'cat_revenue';
SELECT experiment.validate_metric('nosuch');
-- the source changes under the metric: validation at refresh catches it
ALTER TABLE analysis_cat.events RENAME COLUMN amount TO amount_eur;
SELECT experiment.validate_metric('cat_revenue');
SELECT experiment.validate_metric('cat_aov');
ALTER TABLE analysis_cat.events RENAME COLUMN amount_eur TO amount;
SELECT experiment.validate_metric('cat_aov');

-- experiment_metrics: one primary, margins only on guardrails
INSERT INTO experiment.experiment_metrics (experiment_id, metric, role) VALUES ('analysis-cat', 'cat_revenue', 'secondary');
INSERT INTO experiment.experiment_metrics (experiment_id, metric, role) VALUES ('analysis-cat', 'cat_orders', 'leading');
INSERT INTO experiment.experiment_metrics (experiment_id, metric, role, non_inferiority_margin) VALUES ('analysis-cat', 'cat_orders', 'secondary', 0.1);
INSERT INTO experiment.experiment_metrics (experiment_id, metric, role, non_inferiority_margin) VALUES ('analysis-cat', 'cat_orders', 'guardrail', -0.1);
INSERT INTO experiment.experiment_metrics (experiment_id, metric, role) VALUES ('analysis-cat', 'nosuch', 'secondary');
-- starting without a primary metric is refused, and so is a refresh
UPDATE experiment.experiments SET status = 'running' WHERE id = 'analysis-cat';
SELECT experiment.refresh('analysis-cat');
INSERT INTO experiment.experiment_metrics (experiment_id, metric, role) VALUES ('analysis-cat', 'cat_aov', 'primary');
INSERT INTO experiment.experiment_metrics (experiment_id, metric, role) VALUES ('analysis-cat', 'cat_converted', 'primary');
INSERT INTO experiment.experiment_metrics (experiment_id, metric, role, non_inferiority_margin) VALUES ('analysis-cat', 'cat_orders', 'guardrail', 0.05);
UPDATE experiment.experiments SET status = 'running' WHERE id = 'analysis-cat';
SELECT status FROM experiment.experiments WHERE id = 'analysis-cat';
SELECT experiment.refresh('nosuch');

-- exposures: unknown experiment or variant, NULLs, duplicates
SELECT experiment.log_exposure('nosuch', 'u1', 'control');
SELECT experiment.log_exposure('analysis-cat', 'u1', 'treatmnet');
SELECT experiment.log_exposure('analysis-cat', NULL, 'control');
SELECT experiment.log_exposure('analysis-cat', 'u1', 'control', '2025-01-01 10:00+00', event_id => 'e1');
SELECT experiment.log_exposure('analysis-cat', 'u1', 'control', '2025-01-01 10:00+00', event_id => 'e1');
SELECT experiment.log_exposure('analysis-cat', 'u1', 'control', '2025-01-01 10:00+00');
SELECT experiment.log_exposure('analysis-cat', 'u1', 'control', '2025-01-02 10:00+00', event_id => 'e1');
SELECT experiment.log_exposure('analysis-cat', 'u1', 'control', '2025-01-02 10:00+00', event_id => 'e2');
INSERT INTO experiment.exposures (experiment_id, unit_id, variant, exposed_at) VALUES ('analysis-cat', 'u2', 'nosuch', now());
SELECT count(*) FROM experiment.exposures WHERE experiment_id = 'analysis-cat';
SELECT experiment.ingest_exposures('{"a": 1}');
SELECT experiment.ingest_exposures(NULL);
SELECT * FROM experiment.ingest_exposures('[
  {"experiment_id": "analysis-cat", "unit_id": "u3", "variant": "treatment", "exposed_at": "2025-01-01T10:00:00Z", "event_id": "e3"},
  {"experiment_id": "analysis-cat", "unit_id": "u3", "variant": "treatment", "exposed_at": "2025-01-01T10:00:00Z", "event_id": "e3"},
  {"experiment_id": "analysis-cat", "unit_id": "u1", "variant": "control", "exposed_at": "2025-01-01T10:00:00Z"},
  {"experiment_id": "analysis-cat", "unit_id": "u4", "variant": "treatmnet", "exposed_at": "2025-01-01T10:00:00Z"},
  {"experiment_id": "analysis-cax", "unit_id": "u5", "variant": "control", "exposed_at": "2025-01-01T10:00:00Z"},
  {"experiment_id": "analysis-cat", "unit_id": "u6", "variant": "control", "exposed_at": "not a time"},
  {"experiment_id": "analysis-cat", "unit_id": "u7", "variant": "control"},
  {"experiment_id": "analysis-cat", "variant": "control", "exposed_at": "2025-01-01T10:00:00Z"},
  {"unit_id": "u9", "variant": "control", "exposed_at": "2025-01-01T10:00:00Z"},
  {"experiment_id": "analysis-cat", "unit_id": "u10", "exposed_at": "2025-01-01T10:00:00Z"},
  "not an object"
]');
SELECT reason, unit_id FROM experiment.exposures_quarantine
WHERE coalesce(experiment_id, '') IN ('analysis-cat', 'analysis-cax', '') ORDER BY id;
INSERT INTO experiment.exposures_staging (experiment_id, unit_id, variant, exposed_at, event_id) VALUES
  ('analysis-cat', 'u11', 'treatment', '2025-01-03 10:00+00', 'e11'),
  ('analysis-cat', 'u11', 'treatment', '2025-01-03 10:00+00', 'e11'),
  ('analysis-cat', 'u12', 'bogus', '2025-01-03 10:00+00', 'e12');
SELECT * FROM experiment.process_exposures_staging();
SELECT count(*) AS left_in_staging FROM experiment.exposures_staging;
SELECT unit_id, variant, exposed_at AT TIME ZONE 'UTC' AS exposed_utc, event_id
FROM experiment.exposures WHERE experiment_id = 'analysis-cat' ORDER BY unit_id, exposed_at;

-- conclude: only the decisions of the readout
SELECT experiment.conclude('analysis-cat', 'maybe', NULL);
SELECT experiment.conclude('nosuch', 'SHIP', NULL);

-- clean up
DELETE FROM experiment.exposures_quarantine WHERE coalesce(experiment_id, '') IN ('analysis-cat', 'analysis-cax', '');
DELETE FROM experiment.exposures WHERE experiment_id = 'analysis-cat';
DELETE FROM experiment.experiment_metrics WHERE experiment_id = 'analysis-cat';
UPDATE experiment.experiments SET status = 'stopped' WHERE id = 'analysis-cat' AND status = 'running';
DELETE FROM experiment.experiments WHERE id = 'analysis-cat';   -- and its variants
DELETE FROM experiment.metrics WHERE name = 'cat_aov';
DELETE FROM experiment.metrics WHERE name LIKE 'cat\_%';
DROP SCHEMA analysis_cat CASCADE;
