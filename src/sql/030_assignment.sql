-- ---------------------------------------------------------------------------
-- Hashing and assignment: deterministic buckets, variant assignment, and the
-- hashing schemes of other SDKs (GrowthBook, Eppo, Statsig).  doc/hashing.md
-- gives every formula and its source.
-- ---------------------------------------------------------------------------

CREATE FUNCTION experiment.bucket(unit_id text, salt text) RETURNS integer
  AS 'MODULE_PATHNAME', 'exp_bucket' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION experiment.bucket(text, text) IS
  'Bucket in [0, 9999] of a unit: SHA-256(salt || '':'' || unit_id) as a 256-bit big-endian integer, mod 10000';

CREATE FUNCTION experiment.assign_variant(unit_id text, experiment_id text, variants jsonb)
  RETURNS text
  AS 'MODULE_PATHNAME', 'exp_assign_variant_jsonb' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION experiment.assign_variant(text, text, jsonb) IS
  'Variant of a unit: variants [{"name": ..., "allocation": ...}, ...]; variant i owns buckets [10000*sum of earlier allocations, 10000*sum up to i) of bucket(unit_id, experiment_id); NULL past the sum';

CREATE FUNCTION experiment.assign_variant(unit_id text, experiment_id text, names text[], weights float8[])
  RETURNS text
  AS 'MODULE_PATHNAME', 'exp_assign_variant_arrays' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION experiment.assign_variant(text, text, text[], float8[]) IS
  'Variant of a unit, with variant names and allocations as two arrays of equal length (same buckets as the jsonb form)';

CREATE FUNCTION experiment.growthbook_hash(seed text, value text, version integer) RETURNS float8
  AS 'MODULE_PATHNAME', 'exp_growthbook_hash_sql' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION experiment.growthbook_hash(text, text, integer) IS
  'GrowthBook hash in [0, 1): FNV-1a 32-bit over UTF-16 code units; v1 = (fnv(value||seed) mod 1000)/1000, v2 = (fnv(decimal of fnv(seed||value)) mod 10000)/10000; NULL for another version';

CREATE FUNCTION experiment.growthbook_bucket_ranges(num_variations integer,
                                                    coverage float8 DEFAULT 1,
                                                    weights float8[] DEFAULT NULL)
  RETURNS float8[]
  AS 'MODULE_PATHNAME', 'exp_growthbook_bucket_ranges' LANGUAGE C IMMUTABLE PARALLEL SAFE;
COMMENT ON FUNCTION experiment.growthbook_bucket_ranges(integer, float8, float8[]) IS
  'GrowthBook getBucketRanges: a num_variations x 2 array of [start, end) ranges; coverage clamped to [0, 1]; equal weights when weights are NULL, of another length or do not sum to within [0.99, 1.01]';

CREATE FUNCTION experiment.growthbook_choose_variation(n float8, ranges float8[]) RETURNS integer
  AS 'MODULE_PATHNAME', 'exp_growthbook_choose_variation' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION experiment.growthbook_choose_variation(float8, float8[]) IS
  'GrowthBook chooseVariation: 0-based index of the first range [start, end) containing n, -1 when none';

CREATE FUNCTION experiment.growthbook_in_namespace(unit_id text, namespace_id text,
                                                   range_start float8, range_end float8)
  RETURNS boolean
  AS 'MODULE_PATHNAME', 'exp_growthbook_in_namespace' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION experiment.growthbook_in_namespace(text, text, float8, float8) IS
  'GrowthBook inNamespace: growthbook_hash(''__'' || namespace_id, unit_id, 1) in [range_start, range_end)';

CREATE FUNCTION experiment.eppo_shard(subject text, salt text, total_shards integer DEFAULT 10000)
  RETURNS integer
  AS 'MODULE_PATHNAME', 'exp_eppo_shard' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION experiment.eppo_shard(text, text, integer) IS
  'Eppo shard: the first 8 hex digits (4 bytes, big-endian) of MD5(salt || ''-'' || subject), mod total_shards';

CREATE FUNCTION experiment.statsig_bucket(unit_id text, salt text) RETURNS integer
  AS 'MODULE_PATHNAME', 'exp_statsig_bucket_sql' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION experiment.statsig_bucket(text, text) IS
  'Statsig bucket in [0, 9999]: the first 8 bytes of SHA-256(salt || ''.'' || unit_id) as a big-endian uint64, mod 10000';

CREATE FUNCTION experiment.unit_hash(scheme text, salt text, unit_id text) RETURNS float8
  AS 'MODULE_PATHNAME', 'exp_unit_hash' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION experiment.unit_hash(text, text, text) IS
  'Position in [0, 1) of a unit under a hashing scheme (see experiment.hash_schemes()): sha256, growthbook_v1, growthbook_v2, eppo, statsig';

CREATE FUNCTION experiment.hash_schemes()
  RETURNS TABLE (scheme text, unit_hash text, source text)
  LANGUAGE sql IMMUTABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
  AS $$
    VALUES
      ('sha256'::text,
       'bucket(unit, salt) / 10000, bucket = int(SHA-256(salt || '':'' || unit), big-endian) mod 10000'::text,
       'this extension (FIPS 180-4 SHA-256)'::text),
      ('growthbook_v1',
       '(fnv1a32_utf16(unit || salt) mod 1000) / 1000',
       'GrowthBook SDK hash(seed, value, 1)'),
      ('growthbook_v2',
       '(fnv1a32_utf16(decimal(fnv1a32_utf16(salt || unit))) mod 10000) / 10000',
       'GrowthBook SDK hash(seed, value, 2)'),
      ('eppo',
       '(first 8 hex digits of MD5(salt || ''-'' || unit) mod 10000) / 10000',
       'Eppo SDK getShard (RFC 1321 MD5)'),
      ('statsig',
       '(big-endian uint64 of SHA-256(salt || ''.'' || unit)[0:8] mod 10000) / 10000',
       'Statsig SDK user hash (FIPS 180-4 SHA-256)')
  $$;
COMMENT ON FUNCTION experiment.hash_schemes() IS
  'The hashing schemes that experiment.unit_hash() and the registry''s hash_scheme accept, with their formulas';
