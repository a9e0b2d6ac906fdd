-- experiment.ruleset(), its version, and experiment.growthbook_payload().
CREATE EXTENSION IF NOT EXISTS experiment;

SELECT experiment.create_experiment('rs-a',
  '[{"name": "control", "allocation": 0.5, "config": {"color": "grey"}}, {"name": "treatment", "allocation": 0.5, "config": {"color": "green"}}]',
  traffic => 0.25, layer => 'rs-layer', layer_start => 0, layer_end => 0.5,
  targeting => '{"user_country": {"$in": ["SG", "MY", "TH"]}}', name => 'Progress bar', start => true);
SELECT experiment.create_experiment('rs-draft',
  '[{"name": "control", "allocation": 0.5}, {"name": "treatment", "allocation": 0.5}]');
SELECT experiment.create_experiment('rs-g',
  '[{"name": "control", "allocation": 0.2, "config": {"price": 10, "note": null}}, {"name": "b", "allocation": 0.5}, {"name": "a", "allocation": 0.3}]',
  hash_scheme => 'growthbook_v2', salt => 'rs-g-seed', traffic => 0.8, layer => 'rs-ns', layer_start => 0.1, layer_end => 0.6,
  targeting => '{"plan": {"$ne": null}, "age": {"$gte": 18}}', start => true);
SELECT experiment.create_experiment('rs-g1',
  '[{"name": "off", "allocation": 0.5}, {"name": "on", "allocation": 0.5}]',
  hash_scheme => 'growthbook_v1', name => 'Old hash', start => true);

-- the running experiments, variants in range order (control first)
SELECT jsonb_pretty(e) FROM jsonb_array_elements(experiment.ruleset() -> 'experiments') e
 WHERE e ->> 'id' LIKE 'rs-%' ORDER BY e ->> 'id';
SELECT jsonb_typeof(experiment.ruleset() -> 'version') AS version_type,
       length(experiment.ruleset() ->> 'version') AS version_length,
       experiment.ruleset() ->> 'version' = experiment.ruleset_version() AS same_version;

-- the version is an ETag: unchanged content, same version; ruleset(known) is NULL then
CREATE TEMP TABLE v AS SELECT experiment.ruleset_version() AS v0;
SELECT experiment.ruleset((SELECT v0 FROM v)) IS NULL AS not_modified,
       experiment.ruleset('some older version') IS NOT NULL AS modified,
       experiment.ruleset(NULL) IS NOT NULL AS no_version;
-- drafts and descriptions outside the ruleset do not change it
UPDATE experiment.experiments SET hypothesis = 'greener is better', owner = 'growth' WHERE id = 'rs-a';
UPDATE experiment.variants SET allocation = 0.6 WHERE experiment_id = 'rs-draft' AND name = 'control';
SELECT experiment.ruleset_version() = (SELECT v0 FROM v) AS unchanged;
-- what SDKs see does
UPDATE experiment.variants SET config = '{"color": "lime"}' WHERE experiment_id = 'rs-a' AND name = 'treatment';
SELECT experiment.ruleset_version() <> (SELECT v0 FROM v) AS config_changed;
UPDATE v SET v0 = experiment.ruleset_version();
UPDATE experiment.experiments SET traffic = 0.5 WHERE id = 'rs-a';
SELECT experiment.ruleset_version() <> (SELECT v0 FROM v) AS traffic_changed;
UPDATE v SET v0 = experiment.ruleset_version();
UPDATE experiment.variants SET allocation = 0.5 WHERE experiment_id = 'rs-draft' AND name = 'control';
SELECT experiment.start('rs-draft');
SELECT experiment.ruleset_version() <> (SELECT v0 FROM v) AS started_changed,
       (SELECT count(*) FROM jsonb_array_elements(experiment.ruleset() -> 'experiments') e WHERE e ->> 'id' = 'rs-draft') AS listed;
UPDATE v SET v0 = experiment.ruleset_version();
SELECT experiment.stop('rs-draft');
SELECT experiment.ruleset_version() <> (SELECT v0 FROM v) AS stopped_changed,
       (SELECT count(*) FROM jsonb_array_elements(experiment.ruleset() -> 'experiments') e WHERE e ->> 'id' = 'rs-draft') AS listed;

-- the GrowthBook features payload: growthbook_v1/v2 experiments only
SELECT jsonb_pretty(f.value) AS feature, f.key
  FROM jsonb_each(experiment.growthbook_payload() -> 'features') f WHERE f.key LIKE 'rs-%' ORDER BY f.key;
SELECT experiment.growthbook_payload() -> 'features' ? 'rs-a' AS sha256_listed;

-- the payload and assign() agree on the variant ranges
SELECT count(*) FILTER (WHERE experiment.assign('u' || g, 'rs-g', '{"plan": "pro", "age": 30}') IS NOT DISTINCT FROM
         CASE WHEN experiment.growthbook_in_namespace('u' || g, r -> 'namespace' ->> 0, (r -> 'namespace' ->> 1)::float8,
                                                       (r -> 'namespace' ->> 2)::float8)
              THEN (ARRAY['control', 'a', 'b'])[1 + nullif(experiment.growthbook_choose_variation(
                     experiment.growthbook_hash(r ->> 'seed', 'u' || g, (r ->> 'hashVersion')::int),
                     experiment.growthbook_bucket_ranges(3, (r ->> 'coverage')::float8,
                       ARRAY(SELECT w::float8 FROM jsonb_array_elements_text(r -> 'weights') w))), -1)] END) AS agree
  FROM generate_series(1, 1000) g,
       LATERAL (SELECT experiment.growthbook_payload() -> 'features' -> 'rs-g' -> 'rules' -> 0) AS p(r);

UPDATE experiment.experiments SET status = 'stopped' WHERE id LIKE 'rs-%' AND status = 'running';
DELETE FROM experiment.experiments WHERE id LIKE 'rs-%';
