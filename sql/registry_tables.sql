-- The experiment registry: tables, lifecycle functions and every validation error.
CREATE EXTENSION IF NOT EXISTS experiment;
\set SHOW_CONTEXT never

-- run a statement; print 'ok' or its SQLSTATE and message
CREATE FUNCTION pg_temp.try(stmt text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
  EXECUTE stmt;
  RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
  RETURN SQLSTATE || ': ' || SQLERRM;
END $$;

-- defaults: draft, salt = id, sha256, traffic 1, alpha 0.05
INSERT INTO experiment.experiments (id, name, owner) VALUES ('rt-a', 'Progress bar', 'growth');
SELECT id, status, salt, hash_scheme, traffic, layer, alpha, created_at = updated_at AS fresh
  FROM experiment.experiments WHERE id = 'rt-a';

-- field validation (SQLSTATE 22023, naming the experiment and the value)
SELECT pg_temp.try($$INSERT INTO experiment.experiments (id, hash_scheme) VALUES ('rt-x', 'md5')$$);
SELECT pg_temp.try($$INSERT INTO experiment.experiments (id, status) VALUES ('rt-x', 'paused')$$);
SELECT pg_temp.try($$INSERT INTO experiment.experiments (id, traffic) VALUES ('rt-x', 1.5)$$);
SELECT pg_temp.try($$INSERT INTO experiment.experiments (id, traffic) VALUES ('rt-x', -0.1)$$);
SELECT pg_temp.try($$INSERT INTO experiment.experiments (id, traffic) VALUES ('rt-x', 'NaN')$$);
SELECT pg_temp.try($$INSERT INTO experiment.experiments (id, traffic) VALUES ('rt-x', 5e-324)$$);
SELECT pg_temp.try($$INSERT INTO experiment.experiments (id, layer) VALUES ('rt-x', 'L')$$);
SELECT pg_temp.try($$INSERT INTO experiment.experiments (id, layer, layer_start) VALUES ('rt-x', 'L', 0)$$);
SELECT pg_temp.try($$INSERT INTO experiment.experiments (id, layer_start, layer_end) VALUES ('rt-x', 0, 0.5)$$);
SELECT pg_temp.try($$INSERT INTO experiment.experiments (id, layer, layer_start, layer_end) VALUES ('rt-x', 'L', 0.5, 0.5)$$);
SELECT pg_temp.try($$INSERT INTO experiment.experiments (id, layer, layer_start, layer_end) VALUES ('rt-x', 'L', 0.5, 1.2)$$);
SELECT pg_temp.try($$INSERT INTO experiment.experiments (id, layer, layer_start, layer_end) VALUES ('rt-x', '', 0, 1)$$);
SELECT pg_temp.try($$INSERT INTO experiment.experiments (id, targeting) VALUES ('rt-x', '["country"]')$$);
-- the remaining columns are checked by named constraints (23514)
SELECT pg_temp.try($$INSERT INTO experiment.experiments (id) VALUES ('')$$);
SELECT pg_temp.try($$INSERT INTO experiment.experiments (id, salt) VALUES ('rt-x', '')$$);
SELECT pg_temp.try($$INSERT INTO experiment.experiments (id, alpha) VALUES ('rt-x', 1)$$);
SELECT pg_temp.try($$INSERT INTO experiment.experiments (id, min_runtime) VALUES ('rt-x', '-1 day')$$);
SELECT pg_temp.try($$INSERT INTO experiment.experiments (id, target_units_per_variant) VALUES ('rt-x', 0)$$);
SELECT pg_temp.try($$INSERT INTO experiment.experiments (id, start_at, end_at) VALUES ('rt-x', '2026-02-01', '2026-01-01')$$);
SELECT count(*) AS rt_x_rows FROM experiment.experiments WHERE id = 'rt-x';

-- variants of a draft are inserted one by one; nothing is checked yet
INSERT INTO experiment.variants (experiment_id, name, allocation, is_control) VALUES ('rt-a', 'control', 0.5, true);
SELECT pg_temp.try($$INSERT INTO experiment.variants (experiment_id, name, allocation) VALUES ('rt-a', '', 0.5)$$);
SELECT pg_temp.try($$INSERT INTO experiment.variants (experiment_id, name, allocation) VALUES ('rt-a', 'big', 1.5)$$);
SELECT pg_temp.try($$INSERT INTO experiment.variants (experiment_id, name, allocation) VALUES ('rt-a', 'neg', -0.5)$$);
SELECT pg_temp.try($$INSERT INTO experiment.variants (experiment_id, name, allocation) VALUES ('rt-a', 'nan', 'NaN')$$);
SELECT pg_temp.try($$INSERT INTO experiment.variants (experiment_id, name, allocation) VALUES ('rt-a', 'control', 0.5)$$);
SELECT pg_temp.try($$INSERT INTO experiment.variants (experiment_id, name, allocation) VALUES ('rt-nope', 'control', 0.5)$$);

-- starting checks the split: two variants, one control, allocations sum to 1
SELECT pg_temp.try($$SELECT experiment.start('rt-a')$$);
INSERT INTO experiment.variants (experiment_id, name, allocation) VALUES ('rt-a', 'treatment', 0.4);
SELECT pg_temp.try($$SELECT experiment.start('rt-a')$$);
UPDATE experiment.variants SET allocation = 0.6 WHERE experiment_id = 'rt-a' AND name = 'treatment';
SELECT pg_temp.try($$SELECT experiment.start('rt-a')$$);
UPDATE experiment.variants SET allocation = 0.5, is_control = true WHERE experiment_id = 'rt-a' AND name = 'treatment';
SELECT pg_temp.try($$SELECT experiment.start('rt-a')$$);
UPDATE experiment.variants SET is_control = false WHERE experiment_id = 'rt-a';
SELECT pg_temp.try($$SELECT experiment.start('rt-a')$$);
SELECT pg_temp.try($$UPDATE experiment.experiments SET status = 'running' WHERE id = 'rt-a'$$);
UPDATE experiment.variants SET is_control = true WHERE experiment_id = 'rt-a' AND name = 'control';
SELECT experiment.check_split('rt-a');
SELECT experiment.split('rt-a');
SELECT experiment.start('rt-a');
SELECT status, start_at IS NOT NULL AS started, end_at FROM experiment.experiments WHERE id = 'rt-a';
SELECT pg_temp.try($$SELECT experiment.start('rt-nope')$$);
SELECT pg_temp.try($$SELECT experiment.stop('rt-nope')$$);

-- a running experiment: salt, scheme, layer and split are frozen; traffic only grows
SELECT pg_temp.try($$UPDATE experiment.experiments SET salt = 'other' WHERE id = 'rt-a'$$);
SELECT pg_temp.try($$UPDATE experiment.experiments SET hash_scheme = 'eppo' WHERE id = 'rt-a'$$);
SELECT pg_temp.try($$UPDATE experiment.experiments SET layer = 'L', layer_start = 0, layer_end = 1 WHERE id = 'rt-a'$$);
SELECT pg_temp.try($$UPDATE experiment.experiments SET id = 'rt-b' WHERE id = 'rt-a'$$);
SELECT pg_temp.try($$INSERT INTO experiment.variants (experiment_id, name, allocation) VALUES ('rt-a', 'extra', 0)$$);
SELECT pg_temp.try($$UPDATE experiment.variants SET allocation = 0.7 WHERE experiment_id = 'rt-a' AND name = 'control'$$);
SELECT pg_temp.try($$UPDATE experiment.variants SET name = 'base' WHERE experiment_id = 'rt-a' AND name = 'control'$$);
SELECT pg_temp.try($$UPDATE experiment.variants SET is_control = NOT is_control WHERE experiment_id = 'rt-a'$$);
SELECT pg_temp.try($$DELETE FROM experiment.variants WHERE experiment_id = 'rt-a' AND name = 'treatment'$$);
SET client_min_messages = warning;  -- the tables a truncate cascades to depend on what is installed
SELECT pg_temp.try($$TRUNCATE experiment.variants CASCADE$$);
SELECT pg_temp.try($$TRUNCATE experiment.experiments CASCADE$$);
RESET client_min_messages;
SELECT pg_temp.try($$DELETE FROM experiment.experiments WHERE id = 'rt-a'$$);
SELECT pg_temp.try($$UPDATE experiment.experiments SET status = 'draft' WHERE id = 'rt-a'$$);
-- allowed while running: config, description, targeting, more traffic
UPDATE experiment.variants SET config = '{"color": "green"}' WHERE experiment_id = 'rt-a' AND name = 'treatment';
UPDATE experiment.experiments SET name = 'Progress bar v1', hypothesis = 'more checkouts',
       targeting = '{"country": {"$in": ["SG", "MY"]}}' WHERE id = 'rt-a';
UPDATE experiment.experiments SET traffic = 1 WHERE id = 'rt-a';
SELECT updated_at > created_at AS updated FROM experiment.experiments WHERE id = 'rt-a';
-- stop, resume, conclude; concluded is final
SELECT experiment.stop('rt-a');
SELECT status, end_at IS NOT NULL AS ended FROM experiment.experiments WHERE id = 'rt-a';
SELECT pg_temp.try($$UPDATE experiment.experiments SET salt = 'other' WHERE id = 'rt-a'$$);
SELECT pg_temp.try($$DELETE FROM experiment.variants WHERE experiment_id = 'rt-a'$$);
SELECT experiment.start('rt-a');
SELECT status, end_at FROM experiment.experiments WHERE id = 'rt-a';
UPDATE experiment.experiments SET status = 'concluded' WHERE id = 'rt-a';
SELECT pg_temp.try($$SELECT experiment.start('rt-a')$$);
SELECT pg_temp.try($$SELECT experiment.stop('rt-a')$$);
SELECT pg_temp.try($$UPDATE experiment.experiments SET traffic = 0.5 WHERE id = 'rt-a'$$);

-- traffic: raising is allowed, lowering is refused once out of draft
SELECT experiment.create_experiment('rt-ramp', '[{"name": "control", "allocation": 0.5}, {"name": "treatment", "allocation": 0.5}]',
                                    traffic => 0.1, start => true);
UPDATE experiment.experiments SET traffic = 0.5 WHERE id = 'rt-ramp';
UPDATE experiment.experiments SET traffic = 1 WHERE id = 'rt-ramp';
SELECT pg_temp.try($$UPDATE experiment.experiments SET traffic = 0.9 WHERE id = 'rt-ramp'$$);
SELECT traffic FROM experiment.experiments WHERE id = 'rt-ramp';

-- create_experiment: the first variant is the control unless one says so
SELECT experiment.create_experiment('rt-c', '[{"name": "b", "allocation": 0.25, "config": {"n": 1}},
                                               {"name": "a", "allocation": 0.75, "is_control": true}]',
                                    hash_scheme => 'eppo', salt => 'rt-c-salt', name => 'C');
SELECT name, allocation, config, is_control FROM experiment.variants WHERE experiment_id = 'rt-c' ORDER BY name;
SELECT id, name, salt, hash_scheme, status FROM experiment.experiments WHERE id = 'rt-c';
SELECT experiment.create_experiment('rt-d', '[{"name": "x", "allocation": 0.5}, {"name": "y", "allocation": 0.5}]');
SELECT name, is_control FROM experiment.variants WHERE experiment_id = 'rt-d' ORDER BY name;
SELECT pg_temp.try($$SELECT experiment.create_experiment('rt-e', '{"name": "x"}')$$);
SELECT pg_temp.try($$SELECT experiment.create_experiment('rt-e', '[{"name": "x"}]')$$);
SELECT pg_temp.try($$SELECT experiment.create_experiment('rt-e', '[{"name": "x", "allocation": 0.5}, {"name": "y", "allocation": 0.6}]')$$);
SELECT pg_temp.try($$SELECT experiment.create_experiment('rt-e', '[{"name": "x", "allocation": 1}]')$$);
SELECT pg_temp.try($$SELECT experiment.create_experiment('rt-e', '[{"name": "x", "allocation": 0.5}, {"name": "x", "allocation": 0.5}]')$$);
SELECT pg_temp.try($$SELECT experiment.create_experiment('rt-d', '[{"name": "x", "allocation": 0.5}, {"name": "y", "allocation": 0.5}]')$$);
SELECT count(*) AS rt_e_rows FROM experiment.experiments WHERE id = 'rt-e';

-- status transitions
SELECT pg_temp.try($$UPDATE experiment.experiments SET status = 'stopped' WHERE id = 'rt-d'$$);
SELECT pg_temp.try($$SELECT experiment.stop('rt-d')$$);
SELECT pg_temp.try($$UPDATE experiment.experiments SET status = 'concluded' WHERE id = 'rt-d'$$);

-- layers: ranges of one layer must not overlap (23P01); concluded experiments free their range
SELECT experiment.create_experiment('rt-l1', '[{"name": "c", "allocation": 0.5}, {"name": "t", "allocation": 0.5}]',
                                    layer => 'rt-layer', layer_start => 0, layer_end => 0.3);
SELECT experiment.create_experiment('rt-l2', '[{"name": "c", "allocation": 0.5}, {"name": "t", "allocation": 0.5}]',
                                    layer => 'rt-layer', layer_start => 0.3, layer_end => 0.7, start => true);
SELECT pg_temp.try($$SELECT experiment.create_experiment('rt-l3', '[{"name": "c", "allocation": 1}, {"name": "t", "allocation": 0}]',
                                    layer => 'rt-layer', layer_start => 0.6, layer_end => 1)$$);
SELECT pg_temp.try($$INSERT INTO experiment.experiments (id, layer, layer_start, layer_end) VALUES ('rt-l3', 'rt-layer', 0.1, 0.2)$$);
SELECT pg_temp.try($$UPDATE experiment.experiments SET layer_end = 0.31 WHERE id = 'rt-l1'$$);
SELECT pg_temp.try($$UPDATE experiment.experiments SET layer_start = 0.7, layer_end = 0.9 WHERE id = 'rt-l2'$$);
-- the same range in another layer is fine
INSERT INTO experiment.experiments (id, layer, layer_start, layer_end) VALUES ('rt-l4', 'rt-other-layer', 0, 0.3);
-- a layer is either GrowthBook namespaces or sha256/eppo/statsig layers
SELECT pg_temp.try($$INSERT INTO experiment.experiments (id, hash_scheme, layer, layer_start, layer_end) VALUES ('rt-l5', 'growthbook_v2', 'rt-layer', 0.8, 0.9)$$);
INSERT INTO experiment.experiments (id, hash_scheme, layer, layer_start, layer_end) VALUES ('rt-l5', 'statsig', 'rt-layer', 0.8, 0.9);
UPDATE experiment.experiments SET status = 'concluded' WHERE id = 'rt-l2';
INSERT INTO experiment.experiments (id, layer, layer_start, layer_end) VALUES ('rt-l3', 'rt-layer', 0.3, 0.8);
SELECT pg_temp.try($$UPDATE experiment.experiments SET status = 'running' WHERE id = 'rt-l2'$$);
SELECT id, status, layer_start, layer_end FROM experiment.experiments WHERE layer = 'rt-layer' ORDER BY layer_start, id;

-- layer_position: in [0, 1), independent of experiments, GrowthBook namespace hash for growthbook schemes
SELECT experiment.layer_position('user-1', 'rt-layer') = experiment.bucket('user-1', 'layer:rt-layer') / 10000.0 AS sha256_position,
       experiment.layer_position('user-1', 'rt-layer', 'eppo') = experiment.layer_position('user-1', 'rt-layer') AS eppo_same,
       experiment.layer_position('user-1', 'rt-layer', 'growthbook_v2') = experiment.growthbook_hash('__rt-layer', 'user-1', 1) AS gb_namespace;
SELECT pg_temp.try($$SELECT experiment.layer_position('user-1', 'rt-layer', 'crc32')$$);

-- a dump restores: a running experiment arrives first, then all its variants in one statement
INSERT INTO experiment.experiments (id, status, salt) VALUES ('rt-restored', 'running', 'restored-salt');
INSERT INTO experiment.variants (experiment_id, name, allocation, is_control)
VALUES ('rt-restored', 'control', 0.5, true), ('rt-restored', 'treatment', 0.5, false);
SELECT pg_temp.try($$INSERT INTO experiment.variants (experiment_id, name, allocation) VALUES ('rt-restored', 'late', 0)$$);
INSERT INTO experiment.experiments (id, status) VALUES ('rt-restored-bad', 'running');
SELECT pg_temp.try($$INSERT INTO experiment.variants (experiment_id, name, allocation, is_control)
                     VALUES ('rt-restored-bad', 'control', 0.5, true), ('rt-restored-bad', 'treatment', 0.4, false)$$);

-- the tables are dumped with the extension
SELECT c.relname FROM pg_extension e, unnest(e.extconfig) AS t(oid) JOIN pg_class c ON c.oid = t.oid
 WHERE e.extname = 'experiment' AND c.relname IN ('experiments', 'variants') ORDER BY 1;

-- deleting a draft, stopped or concluded experiment deletes its variants
UPDATE experiment.experiments SET status = 'stopped' WHERE id LIKE 'rt-%' AND status = 'running';
DELETE FROM experiment.experiments WHERE id LIKE 'rt-%';
SELECT count(*) AS leftover_variants FROM experiment.variants WHERE experiment_id LIKE 'rt-%';
