-- GrowthBook compatibility: growthbook_hash, growthbook_bucket_ranges,
-- growthbook_choose_variation, growthbook_in_namespace.  Expected values in
-- the comments were computed with the GrowthBook JavaScript SDK
-- (@growthbook/growthbook 1.8.0, util.js hash/getBucketRanges/inNamespace);
-- the full cross-SDK cases are in test/test_hash_growthbook_peers.py.
-- (quiet: whether the extension exists depends on the tests run before this one)
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS experiment;
RESET client_min_messages;
CREATE SCHEMA assign_growthbook_t;
\set ECHO none
\i test/regress_support.sql
\set ECHO all

-- hash v1 and v2, ASCII (rows of the SDK's cases.json) and non-ASCII text:
-- UTF-16 code units, surrogate pairs above U+FFFF
SELECT s, v, experiment.growthbook_hash(s, v, 1) AS v1, experiment.growthbook_hash(s, v, 2) AS v2
FROM (VALUES ('', 'a'),             -- 0.22, 0.0216
             ('seed', 'a'),         -- 0.913, 0.0505
             ('exp', 'ü'),          -- 0.89, 0.7371
             ('s', '😀'),           -- 0.001, 0.2801
             ('日本', 'ユーザー'),  -- 0.5, 0.3623
             ('seed', 'é😀a'),      -- 0.117, 0.1144
             ('', ''),              -- 0.261, 0.2305
             ('ränking', 'user-😀-42')) t(s, v);  -- 0.024, 0.8994
-- an unknown version gives NULL, as the SDK returns null
SELECT experiment.growthbook_hash('abc', 'def', 99) IS NULL AS v99,
       experiment.growthbook_hash('abc', 'def', 0) IS NULL AS v0;

-- bucket ranges
SELECT experiment.growthbook_bucket_ranges(2) AS default_5050,
       experiment.growthbook_bucket_ranges(2, 0.5) AS half_coverage,
       experiment.growthbook_bucket_ranges(4, 1) AS four;
-- [[0,0.06999999999999999],[0.1,0.24],[0.30000000000000004,0.79]]
SELECT experiment.growthbook_bucket_ranges(3, 0.7, ARRAY[0.1, 0.2, 0.7]) AS uneven;
-- coverage clamped to [0, 1]
SELECT experiment.growthbook_bucket_ranges(2, -0.2) AS negative_coverage,
       experiment.growthbook_bucket_ranges(2, 1.5) AS coverage_above_1;
-- equal weights (1/3 each) when the weights do not fit
SELECT experiment.growthbook_bucket_ranges(3, 1, ARRAY[0.3, 0.3, 0.3]) AS sum_below_099,
       experiment.growthbook_bucket_ranges(3, 1, ARRAY[0.5, 0.5]) AS wrong_length,
       experiment.growthbook_bucket_ranges(2, 1, ARRAY[0.7, 0.6]) AS sum_above_101,
       experiment.growthbook_bucket_ranges(2, 1, ARRAY[0.4, 0.5999]) AS sum_0_9999_kept;
-- no variations: empty; NULL coverage is the default 1; NULL num_variations is NULL
SELECT experiment.growthbook_bucket_ranges(0) AS zero, experiment.growthbook_bucket_ranges(-1) AS negative,
       experiment.growthbook_bucket_ranges(2, NULL) AS null_coverage,
       experiment.growthbook_bucket_ranges(NULL) IS NULL AS null_n;
SELECT regress_support.err($q$SELECT experiment.growthbook_bucket_ranges(2, 'NaN')$q$);
SELECT regress_support.err($q$SELECT experiment.growthbook_bucket_ranges(2, 1, ARRAY[0.5, NULL])$q$);
SELECT regress_support.err($q$SELECT experiment.growthbook_bucket_ranges(2, 1, ARRAY[0.5, 'NaN'])$q$);
SELECT regress_support.err($q$SELECT experiment.growthbook_bucket_ranges(2, 1, ARRAY[[0.5, 0.5]])$q$);
SELECT regress_support.err($q$SELECT experiment.growthbook_bucket_ranges(10001)$q$);

-- choose variation: half-open ranges, -1 outside all, zero-width ranges skipped
SELECT n, experiment.growthbook_choose_variation(n, '{{0,0.25},{0.5,0.75}}') AS reduced,
       experiment.growthbook_choose_variation(n, '{{0,0.5},{0.5,0.5},{0.5,1}}') AS zero_width
FROM unnest(ARRAY[0, 0.2, 0.25, 0.4, 0.5, 0.6, 0.75, 0.9999, 1]::float8[]) n;
SELECT experiment.growthbook_choose_variation(0.3, '{}') AS no_ranges,
       experiment.growthbook_choose_variation(0.3, experiment.growthbook_bucket_ranges(3)) AS composed;
SELECT regress_support.err($q$SELECT experiment.growthbook_choose_variation(0.3, '{0,0.5,0.5,1}')$q$);
SELECT regress_support.err($q$SELECT experiment.growthbook_choose_variation(0.3, '{{0,0.5,1}}')$q$);
SELECT regress_support.err($q$SELECT experiment.growthbook_choose_variation(0.3, '{{0,NULL}}')$q$);

-- namespaces: hash('__' || namespace, unit, 1) in [start, end); h = 0.537, 0.812, 0.335, 0.09
SELECT u, experiment.growthbook_in_namespace(u, 'namespace2', 0, 0.4) AS first_40,
       experiment.growthbook_in_namespace(u, 'namespace2', 0.4, 1) AS last_60,
       experiment.growthbook_hash('__namespace2', u, 1) AS h
FROM unnest(ARRAY['1', '2', '3', '4']) u;
-- 0.779 for a non-ASCII unit and namespace
SELECT experiment.growthbook_hash('__ns-ü', '😀user', 1) AS h,
       experiment.growthbook_in_namespace('😀user', 'ns-ü', 0.779, 0.78) AS at_start,
       experiment.growthbook_in_namespace('😀user', 'ns-ü', 0.7, 0.779) AS at_end;
-- the namespaces of one id partition [0, 1): exactly one of 4 quarters
SELECT bool_and(k = 1) AS one_quarter_each FROM (
  SELECT u, count(*) FILTER (WHERE experiment.growthbook_in_namespace(u, 'ns', q / 4.0, (q + 1) / 4.0)) AS k
  FROM generate_series(1, 1000) g, LATERAL (SELECT 'user-' || g AS u) x, generate_series(0, 3) q
  GROUP BY u) t;

SELECT p.oid::regprocedure, provolatile, proisstrict, proparallel FROM pg_proc p
WHERE proname LIKE 'growthbook%' AND pronamespace = 'experiment'::regnamespace
  AND prolang = (SELECT oid FROM pg_language WHERE lanname = 'c') ORDER BY 1::text;

SET client_min_messages = warning;
DROP SCHEMA assign_growthbook_t CASCADE;
RESET client_min_messages;
