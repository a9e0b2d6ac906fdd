-- Eppo and Statsig hashing, the unit_hash dispatch and hash_schemes().
-- Expected values are Python's hashlib:
--   eppo:    int(md5(f"{salt}-{subject}").hexdigest()[:8], 16) % total
--   statsig: int.from_bytes(sha256(f"{salt}.{unit}").digest()[:8], "big") % 10000
-- (quiet: whether the extension exists depends on the tests run before this one)
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS experiment;
RESET client_min_messages;
CREATE SCHEMA assign_schemes_t;
\set ECHO none
\i test/regress_support.sql
\set ECHO all

-- 4661, 5692, 7261, 6210
SELECT experiment.eppo_shard('user-abc123', 'exp-checkout-progress-bar') AS e1,
       experiment.eppo_shard('', '') AS e2,
       experiment.eppo_shard('ü', 'exp') AS e3,
       experiment.eppo_shard('😀', 's') AS e4;
-- other shard counts: the 32-bit value is 2727714661, so 580231014, 61 and 0
SELECT experiment.eppo_shard('user-abc123', 'exp-checkout-progress-bar', 2147483647) AS e_big,
       experiment.eppo_shard('user-abc123', 'exp-checkout-progress-bar', 100) AS e100,
       experiment.eppo_shard('user-abc123', 'exp-checkout-progress-bar', 1) AS e1;
-- against PostgreSQL's md5(): first 8 hex digits as an unsigned 32-bit integer
SELECT count(*) FILTER (WHERE experiment.eppo_shard(u, 'salt-' || g % 7, 10000) <>
         ('x' || substr(md5('salt-' || g % 7 || '-' || u), 1, 8))::bit(32)::bigint % 10000) AS mismatches
FROM generate_series(1, 3000) g, LATERAL (SELECT repeat('é', g % 40) || g AS u) x;
SELECT regress_support.err($q$SELECT experiment.eppo_shard('u', 's', 0)$q$);
SELECT regress_support.err($q$SELECT experiment.eppo_shard('u', 's', -5)$q$);

-- 5916, 4234, 6222, 4914
SELECT experiment.statsig_bucket('user-abc123', 'exp-checkout-progress-bar') AS s1,
       experiment.statsig_bucket('', '') AS s2,
       experiment.statsig_bucket('ü', 'exp') AS s3,
       experiment.statsig_bucket('😀', 's') AS s4;
-- against PostgreSQL's sha256(): first 16 hex digits as an unsigned 64-bit integer
SELECT count(*) FILTER (WHERE experiment.statsig_bucket(u, 'salt') <>
         (('x' || substr(encode(sha256(convert_to('salt.' || u, 'UTF8')), 'hex'), 1, 16))::bit(64)::bigint::numeric
          + CASE WHEN ('x' || substr(encode(sha256(convert_to('salt.' || u, 'UTF8')), 'hex'), 1, 1))::bit(4)::int >= 8
                 THEN 18446744073709551616 ELSE 0 END) % 10000) AS mismatches
FROM generate_series(1, 3000) g, LATERAL (SELECT 'user-😀-' || g AS u) x;

-- unit_hash dispatches to the schemes
SELECT experiment.unit_hash('sha256', 'exp-checkout-progress-bar', 'user-abc123') AS sha256,
       experiment.unit_hash('eppo', 'exp-checkout-progress-bar', 'user-abc123') AS eppo,
       experiment.unit_hash('statsig', 'exp-checkout-progress-bar', 'user-abc123') AS statsig,
       experiment.unit_hash('growthbook_v1', 'seed', 'a') AS gb1,
       experiment.unit_hash('growthbook_v2', 'seed', 'a') AS gb2;
SELECT count(*) FILTER (WHERE experiment.unit_hash('sha256', s, u) <> experiment.bucket(u, s) / 10000.0
         OR experiment.unit_hash('eppo', s, u) <> experiment.eppo_shard(u, s) / 10000.0
         OR experiment.unit_hash('statsig', s, u) <> experiment.statsig_bucket(u, s) / 10000.0
         OR experiment.unit_hash('growthbook_v1', s, u) <> experiment.growthbook_hash(s, u, 1)
         OR experiment.unit_hash('growthbook_v2', s, u) <> experiment.growthbook_hash(s, u, 2)) AS mismatches,
       bool_and(h >= 0 AND h < 1) AS in_unit_interval
FROM generate_series(1, 2000) g,
     LATERAL (SELECT 'u' || g AS u, 'exp-' || g % 5 AS s) x,
     LATERAL (SELECT experiment.unit_hash(sc, s, u) AS h
              FROM unnest(ARRAY['sha256', 'eppo', 'statsig', 'growthbook_v1', 'growthbook_v2']) sc) y;
SELECT regress_support.err($q$SELECT experiment.unit_hash('md5', 's', 'u')$q$);
SELECT regress_support.err($q$SELECT experiment.unit_hash('SHA256', 's', 'u')$q$);
SELECT experiment.unit_hash(NULL, 's', 'u') IS NULL AS strict_null;

SELECT scheme FROM experiment.hash_schemes() ORDER BY 1;
-- every listed scheme is accepted by unit_hash
SELECT bool_and(experiment.unit_hash(scheme, 's', 'u') >= 0) AS all_accepted FROM experiment.hash_schemes();

SELECT p.oid::regprocedure, provolatile, proisstrict, proparallel FROM pg_proc p
WHERE proname IN ('eppo_shard', 'statsig_bucket', 'unit_hash', 'hash_schemes')
  AND pronamespace = 'experiment'::regnamespace ORDER BY 1::text;
-- every function of this part has a comment
SELECT p.oid::regprocedure FROM pg_proc p
WHERE pronamespace = 'experiment'::regnamespace
  AND proname IN ('bucket', 'assign_variant', 'growthbook_hash', 'growthbook_bucket_ranges',
                  'growthbook_choose_variation', 'growthbook_in_namespace', 'eppo_shard',
                  'statsig_bucket', 'unit_hash', 'hash_schemes')
  AND obj_description(p.oid, 'pg_proc') IS NULL;

SET client_min_messages = warning;
DROP SCHEMA assign_schemes_t CASCADE;
RESET client_min_messages;
