-- dimension breakdowns (doc/analysis.md, "Dimension breakdowns"): experiment.dimensions and
-- experiments.stratify_by; every bad value is a 22023 error naming the column, the value and
-- what is allowed; only the experiment's owners change its dimensions; top-N values with ties
-- broken by value, (other) and (none), on a small refresh checked by hand
-- (test/test_analysis_dimensions.py checks the per-value tests against scipy and statsmodels)
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS experiment;
\set ECHO none
\i test/regress_support.sql
\set ECHO all
SELECT experiment.create_experiment('dim-a', '[{"name": "control", "allocation": 0.5}, {"name": "treatment", "allocation": 0.5}]');
SELECT experiment.create_experiment('dim-b', '[{"name": "control", "allocation": 0.5}, {"name": "treatment", "allocation": 0.5}]');

-- accepted: each attribute, the defaults (top 10, pooled caps)
INSERT INTO experiment.dimensions (experiment_id, name, attribute) VALUES ('dim-a', 'client', 'client');
INSERT INTO experiment.dimensions (experiment_id, name, attribute, top_n) VALUES ('dim-a', 'version', 'app_version', 2);
INSERT INTO experiment.dimensions (experiment_id, name, attribute, attribute_key, top_n, caps_per_value)
VALUES ('dim-a', 'country', 'attributes', 'country', 2, true);
SELECT experiment_id, name, attribute, attribute_key, top_n, caps_per_value
FROM experiment.dimensions ORDER BY experiment_id, name;

-- refused: an unknown experiment, an empty name, an unknown attribute, a key where none
-- belongs or none where one does, top_n out of range, NULL caps_per_value, a second row of a name
SELECT regress_support.err($$INSERT INTO experiment.dimensions (experiment_id, name, attribute) VALUES ('nope', 'c', 'client')$$);
SELECT regress_support.err_hint($$INSERT INTO experiment.dimensions (experiment_id, name, attribute) VALUES ('dim-a', '', 'client')$$);
SELECT regress_support.err_hint($$INSERT INTO experiment.dimensions (experiment_id, name, attribute) VALUES ('dim-a', 'c', 'country')$$);
SELECT regress_support.err_hint($$INSERT INTO experiment.dimensions (experiment_id, name, attribute) VALUES ('dim-a', 'c', NULL)$$);
SELECT regress_support.err_hint($$INSERT INTO experiment.dimensions (experiment_id, name, attribute) VALUES ('dim-a', 'c', 'attributes')$$);
SELECT regress_support.err_hint($$INSERT INTO experiment.dimensions (experiment_id, name, attribute, attribute_key)
                             VALUES ('dim-a', 'c', 'attributes', '')$$);
SELECT regress_support.err_hint($$INSERT INTO experiment.dimensions (experiment_id, name, attribute, attribute_key)
                             VALUES ('dim-a', 'c', 'client', 'os')$$);
SELECT regress_support.err_hint($$UPDATE experiment.dimensions SET top_n = 0 WHERE name = 'client'$$);
SELECT regress_support.err_hint($$UPDATE experiment.dimensions SET top_n = 1001 WHERE name = 'client'$$);
SELECT regress_support.err_hint($$UPDATE experiment.dimensions SET top_n = NULL WHERE name = 'client'$$);
SELECT regress_support.err_hint($$UPDATE experiment.dimensions SET caps_per_value = NULL WHERE name = 'client'$$);
SELECT regress_support.err_hint($$INSERT INTO experiment.dimensions (experiment_id, name, attribute) VALUES ('dim-a', 'client', 'app_version')$$);

-- stratify_by names one of the experiment's own dimensions (or NULL)
SELECT regress_support.err_hint($$UPDATE experiment.experiments SET stratify_by = 'os' WHERE id = 'dim-a'$$);
SELECT regress_support.err_hint($$UPDATE experiment.experiments SET stratify_by = 'client' WHERE id = 'dim-b'$$);
UPDATE experiment.experiments SET stratify_by = 'client' WHERE id = 'dim-a';
-- ... and that dimension stays while it is named
SELECT regress_support.err_hint($$DELETE FROM experiment.dimensions WHERE experiment_id = 'dim-a' AND name = 'client'$$);
SELECT regress_support.err_hint($$UPDATE experiment.dimensions SET name = 'os' WHERE experiment_id = 'dim-a' AND name = 'client'$$);
UPDATE experiment.dimensions SET top_n = 3 WHERE experiment_id = 'dim-a' AND name = 'client';
UPDATE experiment.experiments SET stratify_by = NULL WHERE id = 'dim-a';

-- only members of the experiment's owner role change its dimensions
CREATE ROLE dims_regress_other;
GRANT USAGE ON SCHEMA experiment TO dims_regress_other;
GRANT SELECT, INSERT, UPDATE, DELETE ON experiment.dimensions TO dims_regress_other;
GRANT SELECT ON experiment.experiments TO dims_regress_other;
GRANT USAGE ON SCHEMA regress_support TO dims_regress_other;
SET ROLE dims_regress_other;
SELECT regress_support.err($$INSERT INTO experiment.dimensions (experiment_id, name, attribute) VALUES ('dim-a', 'c2', 'client')$$);
SELECT regress_support.err($$UPDATE experiment.dimensions SET top_n = 5 WHERE experiment_id = 'dim-a' AND name = 'client'$$);
SELECT regress_support.err($$DELETE FROM experiment.dimensions WHERE experiment_id = 'dim-a' AND name = 'version'$$);
RESET ROLE;
SELECT name, top_n FROM experiment.dimensions WHERE experiment_id = 'dim-a' ORDER BY name;
REVOKE ALL ON experiment.dimensions, experiment.experiments FROM dims_regress_other;
REVOKE USAGE ON SCHEMA experiment, regress_support FROM dims_regress_other;
DROP ROLE dims_regress_other;

-- a small refresh: 16 units. client (top 3): ios 5, android 5, (none) 4 are its values, web (2)
-- is (other). app_version (top 1): 1.0 and 2.0 tie with 6 units, 1.0 comes first by value,
-- 2.0 and 3.0 are (other). country (top 2): SG 6, then (none) and TH tie with 5, and (none)
-- sorts before TH in byte order. The values are those of the first exposure (u01's later
-- exposure says web, 3.0 and MY)
UPDATE experiment.dimensions SET top_n = 1 WHERE experiment_id = 'dim-a' AND name = 'version';
CREATE SCHEMA dims;
CREATE TABLE dims.orders (user_id text, ts timestamptz, amount float8);
UPDATE experiment.experiments SET start_at = '2025-01-01', end_at = '2025-02-01' WHERE id = 'dim-a';
INSERT INTO experiment.exposures (experiment_id, unit_id, variant, exposed_at, client, app_version, attributes)
SELECT 'dim-a', format('u%s', lpad(g::text, 2, '0')), CASE WHEN g % 2 = 0 THEN 'control' ELSE 'treatment' END,
       '2025-01-02'::timestamptz + g * interval '1 hour',
       CASE WHEN g <= 5 THEN 'ios' WHEN g <= 10 THEN 'android' WHEN g <= 12 THEN 'web' END,
       CASE WHEN g <= 6 THEN '2.0' WHEN g <= 12 THEN '1.0' ELSE '3.0' END,
       CASE WHEN g % 3 = 0 THEN '{}'::jsonb ELSE jsonb_build_object('country', CASE WHEN g % 3 = 1 THEN 'SG' ELSE 'TH' END) END
FROM generate_series(1, 16) g;
INSERT INTO experiment.exposures (experiment_id, unit_id, variant, exposed_at, client, app_version, attributes)
VALUES ('dim-a', 'u01', 'treatment', '2025-01-05', 'web', '3.0', '{"country": "MY"}');
INSERT INTO dims.orders SELECT format('u%s', lpad(g::text, 2, '0')), '2025-01-10', g FROM generate_series(1, 16) g;
INSERT INTO experiment.metrics (name, source, unit_column, time_column, value_column, cuped_lookback)
VALUES ('dims_amount', 'dims.orders', 'user_id', 'ts', 'amount', NULL);
INSERT INTO experiment.experiment_metrics (experiment_id, metric, role) VALUES ('dim-a', 'dims_amount', 'primary');
UPDATE experiment.experiments SET status = 'running', analysis = 'fixed' WHERE id = 'dim-a';
SELECT experiment.refresh('dim-a');
SELECT dimension, value, variant, units FROM experiment.dimension_enrollment
WHERE experiment_id = 'dim-a' ORDER BY dimension, value COLLATE "C", variant;
-- per value, the means of the units' amounts (u<g> ordered g)
SELECT dimension, value, n_control, n_treatment, mean_control, mean_treatment, diff, method
FROM experiment.results_by_dimension WHERE experiment_id = 'dim-a' ORDER BY dimension, value COLLATE "C";
SELECT dimension, value, round(p_value::numeric, 3) AS p, ok FROM (
  SELECT DISTINCT dimension, value, p_value, ok FROM experiment.srm_by_dimension WHERE experiment_id = 'dim-a') s
ORDER BY dimension, value COLLATE "C";
SELECT dimension_srm_ok, dimension_srm_imbalanced FROM experiment.health WHERE experiment_id = 'dim-a';
-- the values are the first exposure's: u01 counts in SG, not in MY
SELECT value, units FROM experiment.dimension_enrollment
WHERE experiment_id = 'dim-a' AND dimension = 'country' AND variant = 'treatment' ORDER BY value COLLATE "C";

-- a stratify_by inserted with the experiment (as a dump restores it) is checked by refresh
UPDATE experiment.experiments SET status = 'stopped' WHERE id = 'dim-a';
INSERT INTO experiment.experiments (id, stratify_by) VALUES ('dim-c', 'client');
INSERT INTO experiment.variants (experiment_id, name, allocation, is_control) VALUES
  ('dim-c', 'control', 0.5, true), ('dim-c', 'treatment', 0.5, false);
SELECT regress_support.err_hint($$SELECT experiment.refresh('dim-c')$$);

-- a deleted experiment takes its dimensions and their results with it
DELETE FROM experiment.exposures WHERE experiment_id = 'dim-a';
DELETE FROM experiment.experiments WHERE id IN ('dim-a', 'dim-b', 'dim-c');
SELECT (SELECT count(*) FROM experiment.dimensions) AS dimensions,
       (SELECT count(*) FROM experiment.dimension_results) AS results,
       (SELECT count(*) FROM experiment.dimension_enrollment) AS enrollment;
DELETE FROM experiment.metrics WHERE name = 'dims_amount';
DROP SCHEMA dims CASCADE;
