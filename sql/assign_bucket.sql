-- experiment.bucket: SHA-256(salt || ':' || unit_id) as a 256-bit big-endian
-- integer, mod 10000.  Expected values are Python's
-- int(hashlib.sha256(f"{salt}:{unit_id}".encode()).hexdigest(), 16) % 10000.
-- (quiet: whether the extension exists depends on the tests run before this one)
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS experiment;
RESET client_min_messages;

SELECT experiment.bucket('user-abc123', 'exp-checkout-progress-bar') AS b;  -- 5951
SELECT experiment.bucket('', '') AS empty_both;                             -- 8935
SELECT experiment.bucket('ü', 'exp') AS two_byte_utf8;                      -- 3931
SELECT experiment.bucket('😀', 's') AS four_byte_utf8;                      -- 6906
-- messages of 64, 65 and 73 bytes: padding into a second block
SELECT experiment.bucket(repeat('x', 55), 'exp-long') AS len55,             -- 6350
       experiment.bucket(repeat('x', 56), 'exp-long') AS len56,             -- 1966
       experiment.bucket(repeat('x', 64), 'exp-long') AS len64,             -- 8380
       experiment.bucket(repeat('y', 200), 'exp-long') AS len200;           -- 9630
SELECT experiment.bucket(NULL, 'exp') IS NULL AS strict_null;

-- the same bucket from PostgreSQL's own sha256(), by Horner's rule over the
-- eight 32-bit words of the digest, for 2000 units and several salts
CREATE SCHEMA assign_bucket_t;
CREATE FUNCTION assign_bucket_t.sql_bucket(unit_id text, salt text) RETURNS integer
LANGUAGE sql IMMUTABLE AS $$
  WITH RECURSIVE d(h) AS (SELECT encode(sha256(convert_to(salt || ':' || unit_id, 'UTF8')), 'hex')),
  horner(k, r) AS (
    SELECT 0, 0::bigint
    UNION ALL
    SELECT k + 1, (r * 4294967296 + ('x' || substr(h, 8 * k + 1, 8))::bit(32)::bigint) % 10000
    FROM horner, d WHERE k < 8)
  SELECT r::integer FROM horner WHERE k = 8
$$;
SELECT count(*) AS units,
       count(*) FILTER (WHERE experiment.bucket(u, s) <> assign_bucket_t.sql_bucket(u, s)) AS mismatches,
       min(experiment.bucket(u, s)) >= 0 AND max(experiment.bucket(u, s)) <= 9999 AS in_range
FROM generate_series(1, 500) g,
     LATERAL (VALUES ('user-' || g), ('ü-' || g), (repeat('z', g % 130))) v(u),
     unnest(ARRAY['exp-a', '', 'ä😀']) s;

-- roughly uniform: every tenth of the buckets gets about 1/10 of 20000 units
SELECT bool_and(n BETWEEN 1800 AND 2200) AS deciles_balanced
FROM (SELECT experiment.bucket('u' || g, 'exp-uniform') / 1000 AS decile, count(*) AS n
      FROM generate_series(1, 20000) g GROUP BY 1) t;

SELECT provolatile, proisstrict, proparallel FROM pg_proc
WHERE oid = 'experiment.bucket(text, text)'::regprocedure;

SET client_min_messages = warning;
DROP SCHEMA assign_bucket_t CASCADE;
RESET client_min_messages;
