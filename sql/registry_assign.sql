-- experiment.assign(): the registry applied to a unit (status, layer,
-- targeting, traffic, split, hash scheme) and experiment.assign_switchback().
CREATE EXTENSION IF NOT EXISTS experiment;
\set SHOW_CONTEXT never

CREATE FUNCTION pg_temp.try(stmt text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
  EXECUTE stmt;
  RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
  RETURN SQLSTATE || ': ' || SQLERRM;
END $$;

-- the seed example: bucket('user-abc123', 'exp-checkout-progress-bar') = 5951 -> treatment of 50/50
SELECT experiment.create_experiment('exp-checkout-progress-bar',
  '[{"name": "control", "allocation": 0.5}, {"name": "treatment", "allocation": 0.5}]', start => true);
SELECT experiment.bucket('user-abc123', 'exp-checkout-progress-bar') AS bucket,
       experiment.assign('user-abc123', 'exp-checkout-progress-bar') AS variant;

-- sha256 at traffic 1: variant i owns buckets [10000 cum_i, 10000 cum_{i+1}), as assign_variant
SELECT count(*) FILTER (WHERE experiment.assign('u' || g, 'exp-checkout-progress-bar')
                        = CASE WHEN experiment.bucket('u' || g, 'exp-checkout-progress-bar') < 5000
                               THEN 'control' ELSE 'treatment' END) AS agree,
       count(*) FILTER (WHERE experiment.assign('u' || g, 'exp-checkout-progress-bar') = 'control') AS control
  FROM generate_series(1, 2000) g;

-- decimal allocations: boundaries snapped to the bucket grid, exactly as assign_variant
-- (0.1 + 0.2 is 0.30000000000000004 in float8; bucket 3000 belongs to the third variant)
SELECT experiment.variant_ranges('sha256', ARRAY[0.1, 0.2, 0.7]) AS sha256_ranges,
       experiment.variant_ranges('eppo', ARRAY[0.1, 0.2, 0.7], 0.5) AS eppo_half_traffic,
       experiment.variant_ranges('growthbook_v2', ARRAY[0.1, 0.2, 0.7]) AS growthbook_ranges;
SELECT experiment.variant_ranges('statsig', ARRAY[1.0 / 3, 1.0 / 3, 1.0 / 3]::float8[]) AS thirds,
       experiment.variant_ranges('sha256', '{}') AS no_variants;
SELECT pg_temp.try($$SELECT experiment.variant_ranges('crc32', ARRAY[0.5, 0.5])$$);
SELECT pg_temp.try($$SELECT experiment.variant_ranges('sha256', ARRAY[0.5, 0.5], 1.5)$$);
SELECT pg_temp.try($$SELECT experiment.variant_ranges('sha256', ARRAY[0.5, 0.5], 5e-324)$$);
SELECT experiment.variant_ranges('sha256', ARRAY[0.5, 0.5], 1e-6);
SELECT pg_temp.try($$SELECT experiment.variant_ranges('sha256', ARRAY[0.5, -0.5])$$);
SELECT experiment.create_experiment('ra-decimal',
  '[{"name": "a", "allocation": 0.1, "is_control": true}, {"name": "b", "allocation": 0.2}, {"name": "c", "allocation": 0.7}]',
  start => true);
SELECT count(*) FILTER (WHERE experiment.bucket('u' || g, 'ra-decimal') = 3000) AS units_in_bucket_3000,
       count(*) FILTER (WHERE experiment.assign('u' || g, 'ra-decimal') IS DISTINCT FROM
                              experiment.assign_variant('u' || g, 'ra-decimal', ARRAY['a', 'b', 'c'], ARRAY[0.1, 0.2, 0.7])) AS differ
  FROM generate_series(1, 30000) g;

-- no unit, an empty unit, an unknown experiment
SELECT experiment.assign(NULL, 'exp-checkout-progress-bar') IS NULL AS null_unit,
       experiment.assign('', 'exp-checkout-progress-bar') IS NULL AS empty_unit,
       experiment.assign('u1', NULL) IS NULL AS null_experiment;
SELECT pg_temp.try($$SELECT experiment.assign('u1', 'ra-nope')$$);

-- range order: the control first, then the others by name in byte order
SELECT experiment.create_experiment('ra-order',
  '[{"name": "beta", "allocation": 0.5}, {"name": "Zeta", "allocation": 0.3}, {"name": "zeta", "allocation": 0.2, "is_control": true}]',
  salt => 'order-salt', start => true);
SELECT experiment.split('ra-order');
SELECT count(*) FILTER (WHERE experiment.assign('u' || g, 'ra-order')
                        = CASE WHEN h < 0.2 THEN 'zeta' WHEN h < 0.5 THEN 'Zeta' ELSE 'beta' END) AS agree
  FROM generate_series(1, 2000) g, LATERAL experiment.unit_hash('sha256', 'order-salt', 'u' || g) h;

-- only running experiments assign: draft, stopped and concluded give NULL
SELECT experiment.create_experiment('ra-status',
  '[{"name": "control", "allocation": 0.5}, {"name": "treatment", "allocation": 0.5}]');
SELECT count(experiment.assign('u' || g, 'ra-status')) AS draft FROM generate_series(1, 100) g;
SELECT experiment.start('ra-status');
SELECT count(experiment.assign('u' || g, 'ra-status')) AS running FROM generate_series(1, 100) g;
SELECT experiment.stop('ra-status');
SELECT count(experiment.assign('u' || g, 'ra-status')) AS stopped FROM generate_series(1, 100) g;
SELECT experiment.start('ra-status');
SELECT count(experiment.assign('u' || g, 'ra-status')) AS resumed FROM generate_series(1, 100) g;
UPDATE experiment.experiments SET status = 'concluded' WHERE id = 'ra-status';
SELECT count(experiment.assign('u' || g, 'ra-status')) AS concluded FROM generate_series(1, 100) g;

-- traffic: variant i covers [cum_i, cum_i + traffic * a_i); raising it moves nobody
SELECT experiment.create_experiment('ra-ramp',
  '[{"name": "control", "allocation": 0.4}, {"name": "treatment", "allocation": 0.6}]', traffic => 0, start => true);
CREATE TEMP TABLE ramp AS SELECT g, experiment.assign('u' || g, 'ra-ramp') AS t0 FROM generate_series(1, 5000) g;
UPDATE experiment.experiments SET traffic = 0.2 WHERE id = 'ra-ramp';
ALTER TABLE ramp ADD t20 text;
UPDATE ramp SET t20 = experiment.assign('u' || g, 'ra-ramp');
UPDATE experiment.experiments SET traffic = 0.7 WHERE id = 'ra-ramp';
ALTER TABLE ramp ADD t70 text;
UPDATE ramp SET t70 = experiment.assign('u' || g, 'ra-ramp');
UPDATE experiment.experiments SET traffic = 1 WHERE id = 'ra-ramp';
ALTER TABLE ramp ADD t100 text;
UPDATE ramp SET t100 = experiment.assign('u' || g, 'ra-ramp');
SELECT count(t0) AS in0,
       abs(count(t20) - 1000) < 150 AS in20, abs(count(t70) - 3500) < 200 AS in70, count(t100) AS in100,
       count(*) FILTER (WHERE t20 IS NOT NULL AND t20 IS DISTINCT FROM t70) AS moved_20_70,
       count(*) FILTER (WHERE t70 IS NOT NULL AND t70 IS DISTINCT FROM t100) AS moved_70_100
  FROM ramp;
SELECT count(*) FILTER (WHERE t100 = CASE WHEN h < 0.4 THEN 'control' ELSE 'treatment' END) AS split_agree,
       count(*) FILTER (WHERE t20 IS NOT NULL AND NOT ((h >= 0 AND h < 0.08) OR (h >= 0.4 AND h < 0.52))) AS t20_outside_ranges
  FROM ramp, LATERAL experiment.unit_hash('sha256', 'ra-ramp', 'u' || g) h;

-- targeting: the unit's attributes must pass the condition
SELECT experiment.create_experiment('ra-target',
  '[{"name": "control", "allocation": 0.5}, {"name": "treatment", "allocation": 0.5}]',
  targeting => '{"user_country": {"$in": ["SG", "MY", "TH"]}}', start => true);
SELECT count(experiment.assign('u' || g, 'ra-target', '{"user_country": "SG"}')) AS sg,
       count(experiment.assign('u' || g, 'ra-target', '{"user_country": "US"}')) AS us,
       count(experiment.assign('u' || g, 'ra-target')) AS no_attributes,
       count(experiment.assign('u' || g, 'ra-target', NULL)) AS null_attributes
  FROM generate_series(1, 100) g;
SELECT count(*) FILTER (WHERE experiment.assign('u' || g, 'ra-target', '{"user_country": "TH"}')
                        = CASE WHEN experiment.unit_hash('sha256', 'ra-target', 'u' || g) < 0.5 THEN 'control' ELSE 'treatment' END) AS agree
  FROM generate_series(1, 1000) g;

-- layers: experiments of one layer never share a unit; a unit's position is layer_position()
SELECT experiment.create_experiment('ra-layer-a',
  '[{"name": "control", "allocation": 0.5}, {"name": "treatment", "allocation": 0.5}]',
  layer => 'ra-layer', layer_start => 0, layer_end => 0.3, start => true);
SELECT experiment.create_experiment('ra-layer-b',
  '[{"name": "control", "allocation": 0.5}, {"name": "treatment", "allocation": 0.5}]',
  layer => 'ra-layer', layer_start => 0.3, layer_end => 1, start => true);
SELECT count(*) FILTER (WHERE a IS NOT NULL AND b IS NOT NULL) AS in_both,
       count(*) FILTER (WHERE a IS NULL AND b IS NULL) AS in_neither,
       count(*) FILTER (WHERE (a IS NOT NULL) <> (p < 0.3)) AS position_disagrees,
       abs(count(a) - 600) < 100 AS share_a
  FROM (SELECT experiment.assign('u' || g, 'ra-layer-a') a, experiment.assign('u' || g, 'ra-layer-b') b,
               experiment.layer_position('u' || g, 'ra-layer') p
          FROM generate_series(1, 2000) g) s;

-- GrowthBook schemes: hash(seed = salt, unit, version), getBucketRanges(n, coverage = traffic,
-- weights), chooseVariation, namespace = layer via inNamespace
SELECT experiment.create_experiment('ra-gb2',
  '[{"name": "control", "allocation": 0.2}, {"name": "a", "allocation": 0.3}, {"name": "b", "allocation": 0.5}]',
  hash_scheme => 'growthbook_v2', traffic => 0.8, layer => 'ra-ns', layer_start => 0.1, layer_end => 0.9, start => true);
SELECT experiment.create_experiment('ra-gb1',
  '[{"name": "control", "allocation": 0.5}, {"name": "treatment", "allocation": 0.5}]',
  hash_scheme => 'growthbook_v1', salt => 'gb1-seed', start => true);
SELECT count(*) FILTER (WHERE experiment.assign('u' || g, 'ra-gb2') IS NOT DISTINCT FROM
         CASE WHEN experiment.growthbook_in_namespace('u' || g, 'ra-ns', 0.1, 0.9)
              THEN (ARRAY['control', 'a', 'b'])[1 + nullif(experiment.growthbook_choose_variation(
                     experiment.growthbook_hash('ra-gb2', 'u' || g, 2),
                     experiment.growthbook_bucket_ranges(3, 0.8, ARRAY[0.2, 0.3, 0.5])), -1)] END) AS gb2_agree,
       count(*) FILTER (WHERE experiment.assign('u' || g, 'ra-gb1') =
         CASE WHEN experiment.growthbook_hash('gb1-seed', 'u' || g, 1) < 0.5 THEN 'control' ELSE 'treatment' END) AS gb1_agree,
       count(experiment.assign('u' || g, 'ra-gb2')) BETWEEN 500 AND 780 AS gb2_enrolled
  FROM generate_series(1, 1000) g;

-- a few fixed units under every scheme (checked against Python's hashlib and the GrowthBook SDK)
SELECT experiment.create_experiment('ra-eppo',
  '[{"name": "control", "allocation": 0.5}, {"name": "treatment", "allocation": 0.5}]',
  hash_scheme => 'eppo', salt => 'ra-salt', start => true);
SELECT experiment.create_experiment('ra-sha',
  '[{"name": "control", "allocation": 0.5}, {"name": "treatment", "allocation": 0.5}]',
  hash_scheme => 'sha256', salt => 'ra-salt', start => true);
SELECT experiment.create_experiment('ra-gbv2',
  '[{"name": "control", "allocation": 0.5}, {"name": "treatment", "allocation": 0.5}]',
  hash_scheme => 'growthbook_v2', salt => 'ra-salt', start => true);
SELECT u, experiment.assign(u, 'ra-sha') AS sha256, experiment.assign(u, 'ra-eppo') AS eppo,
       experiment.assign(u, 'ra-gbv2') AS growthbook_v2
  FROM unnest(ARRAY['user-1', 'user-2', 'user-3', 'user-42', 'alice', 'bob']) u;

-- switchback: the split applied to unit_hash(scheme, salt, cluster || '@' || window index)
SELECT experiment.create_experiment('ra-switch',
  '[{"name": "control", "allocation": 0.5}, {"name": "treatment", "allocation": 0.5}]', start => true);
SELECT floor(extract(epoch FROM timestamptz '2026-01-01 10:05+00') / 3600) AS window_index;
SELECT experiment.assign_switchback('singapore', 'ra-switch', '2026-01-01 10:05+00', '1 hour')
         = CASE WHEN experiment.unit_hash('sha256', 'ra-switch', 'singapore@490906') < 0.5
                THEN 'control' ELSE 'treatment' END AS formula,
       experiment.assign_switchback('singapore', 'ra-switch', '2026-01-01 10:05+00', '1 hour')
         = experiment.assign_switchback('singapore', 'ra-switch', '2026-01-01 10:59:59.999+00', '1 hour') AS same_window,
       experiment.assign_switchback('singapore', 'ra-switch', '2026-01-01 18:05+08', '1 hour')
         = experiment.assign_switchback('singapore', 'ra-switch', '2026-01-01 10:05+00', '1 hour') AS time_zone_free;
SELECT c, count(*) FILTER (WHERE v = 'control') AS control, count(*) FILTER (WHERE v = 'treatment') AS treatment,
       count(*) FILTER (WHERE v IS DISTINCT FROM lag) AS switches
  FROM (SELECT c, w, v, lag(v) OVER (PARTITION BY c ORDER BY w) AS lag
          FROM unnest(ARRAY['jakarta', 'singapore']) c, generate_series(0, 999) w,
               LATERAL experiment.assign_switchback(c, 'ra-switch', timestamptz '2026-01-01 00:00+00' + w * interval '30 minutes', '30 minutes') v) s
 GROUP BY c ORDER BY c;
SELECT experiment.assign_switchback(NULL, 'ra-switch', now(), '1 hour') IS NULL AS null_cluster,
       experiment.assign_switchback('x', 'ra-switch', NULL, '1 hour') IS NULL AS null_at,
       experiment.assign_switchback('x', 'ra-status', now(), '1 hour') IS NULL AS concluded;
SELECT pg_temp.try($$SELECT experiment.assign_switchback('x', 'ra-switch', now(), '0 seconds')$$);
SELECT pg_temp.try($$SELECT experiment.assign_switchback('x', 'ra-switch', now(), '-1 hour')$$);
SELECT pg_temp.try($$SELECT experiment.assign_switchback('x', 'ra-switch', 'infinity', '1 hour')$$);
SELECT pg_temp.try($$SELECT experiment.assign_switchback('x', 'ra-nope', now(), '1 hour')$$);

UPDATE experiment.experiments SET status = 'stopped' WHERE id LIKE 'ra-%' AND status = 'running';
UPDATE experiment.experiments SET status = 'stopped' WHERE id = 'exp-checkout-progress-bar';
DELETE FROM experiment.experiments WHERE id LIKE 'ra-%' OR id = 'exp-checkout-progress-bar';
