-- experiment.assign_variant's cache of the parsed variant list (fn_extra,
-- keyed by the argument's bytes): a call whose cache is hit on almost every
-- row, a call whose cache misses on every row and a Const call (parsed once,
-- never compared) agree with each other and with the bucket rule computed in
-- SQL, on 100,000 ids whose variant lists change along the scan, in one query.
-- (quiet: whether the extension exists depends on the tests run before this one)
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS experiment;
RESET client_min_messages;
CREATE SCHEMA assign_cache_t;

-- seven variant lists: 2 to 4 variants, a zero allocation, sums below 1
-- (NULL past the sum), decimal boundaries that float8 does not sum exactly,
-- non-ASCII names; allocations as numeric for the reference rule below
CREATE TABLE assign_cache_t.lists (k int PRIMARY KEY, names text[], allocs numeric[]);
INSERT INTO assign_cache_t.lists VALUES
  (0, '{control,treatment}', '{0.5,0.5}'),
  (1, '{a,b,c}', '{0.1,0.19,0.4}'),
  (2, '{w,x,y,z}', '{0.25,0.25,0.25,0.25}'),
  (3, '{only}', '{1}'),
  (4, '{a,never,b}', '{0.6,0,0.4}'),
  (5, '{control,treatment}', '{0.3,0.3}'),
  (6, '{contrôle,治疗}', '{0.45,0.55}');
ALTER TABLE assign_cache_t.lists ADD COLUMN variants jsonb, ADD COLUMN weights float8[];
UPDATE assign_cache_t.lists SET
  variants = (SELECT jsonb_agg(jsonb_build_object('name', n, 'allocation', a) ORDER BY i)
              FROM unnest(names, allocs) WITH ORDINALITY AS t(n, a, i)),
  weights = allocs::float8[];

-- unit g uses list (g / 500) % 7: in g order the list changes every 500 rows;
-- each row carries its own copy of the list (equal bytes within a run), and
-- a copy whose first element has an extra key "row" (ignored by
-- assign_variant, different bytes on every row)
CREATE TABLE assign_cache_t.units AS
SELECT g, 'unit-' || g AS u, l.k, l.variants, l.names, l.weights,
       jsonb_set(l.variants, '{0,row}', to_jsonb(g)) AS variants_per_row
FROM generate_series(1, 100000) g JOIN assign_cache_t.lists l ON l.k = (g / 500) % 7
ORDER BY g;

-- the reference: the first variant i with bucket < 10000 * (a_1 + ... + a_i), exact in numeric
CREATE TABLE assign_cache_t.bounds AS
SELECT k, i, n, 10000 * sum(a) OVER (PARTITION BY k ORDER BY i) AS upper
FROM assign_cache_t.lists, unnest(names, allocs) WITH ORDINALITY AS t(n, a, i);
CREATE TABLE assign_cache_t.expected AS
SELECT DISTINCT ON (u.g) u.g, b.n AS v
FROM (SELECT g, k, experiment.bucket(u, 'exp-cache') AS bucket FROM assign_cache_t.units) u
LEFT JOIN assign_cache_t.bounds b ON b.k = u.k AND u.bucket < b.upper
ORDER BY u.g, b.i;

-- in one query:
--   hit      the per-row list: equal bytes as the previous row except every 500 rows
--   miss     the per-row list with its "row" key: different bytes on every row
--   const    seven call sites, each with its list as a Const
--   arrays   the names and weights arrays of the per-row list (hits, as above)
--   arrays_alt  the same arrays, the rows scanned in the order (g % 500, g), so that the
--            list changes on every row (unit g, g + 500, g + 1000, ... are consecutive)
SELECT count(*) AS units,
       count(*) FILTER (WHERE hit IS DISTINCT FROM e.v) AS hit_wrong,
       count(*) FILTER (WHERE miss IS DISTINCT FROM e.v) AS miss_wrong,
       count(*) FILTER (WHERE const IS DISTINCT FROM e.v) AS const_wrong,
       count(*) FILTER (WHERE arrays IS DISTINCT FROM e.v) AS arrays_wrong,
       count(*) FILTER (WHERE arrays_alt IS DISTINCT FROM e.v) AS arrays_alt_wrong,
       count(*) FILTER (WHERE e.v IS NULL) AS past_the_sum,
       count(DISTINCT e.v) AS distinct_variants
FROM (SELECT g,
             experiment.assign_variant(u, 'exp-cache', variants) AS hit,
             experiment.assign_variant(u, 'exp-cache', variants_per_row) AS miss,
             CASE k
               WHEN 0 THEN experiment.assign_variant(u, 'exp-cache', '[{"name": "control", "allocation": 0.5}, {"name": "treatment", "allocation": 0.5}]')
               WHEN 1 THEN experiment.assign_variant(u, 'exp-cache', '[{"name": "a", "allocation": 0.1}, {"name": "b", "allocation": 0.19}, {"name": "c", "allocation": 0.4}]')
               WHEN 2 THEN experiment.assign_variant(u, 'exp-cache', ARRAY['w', 'x', 'y', 'z'], ARRAY[0.25, 0.25, 0.25, 0.25])
               WHEN 3 THEN experiment.assign_variant(u, 'exp-cache', '[{"name": "only", "allocation": 1}]')
               WHEN 4 THEN experiment.assign_variant(u, 'exp-cache', ARRAY['a', 'never', 'b'], ARRAY[0.6, 0, 0.4])
               WHEN 5 THEN experiment.assign_variant(u, 'exp-cache', '[{"name": "control", "allocation": 0.3}, {"name": "treatment", "allocation": 0.3}]')
               WHEN 6 THEN experiment.assign_variant(u, 'exp-cache', '[{"name": "contrôle", "allocation": 0.45}, {"name": "治疗", "allocation": 0.55}]')
             END AS const,
             experiment.assign_variant(u, 'exp-cache', names, weights) AS arrays
      FROM assign_cache_t.units OFFSET 0) a
JOIN (SELECT g, experiment.assign_variant(u, 'exp-cache', names, weights) AS arrays_alt
      FROM (SELECT * FROM assign_cache_t.units ORDER BY g % 500, g OFFSET 0) o OFFSET 0) b USING (g)
JOIN assign_cache_t.expected e USING (g);

-- the per-variant split of the const calls, as a sanity check of the reference
SELECT k, e.v, count(*)
FROM assign_cache_t.units JOIN assign_cache_t.expected e USING (g)
WHERE k IN (1, 6) GROUP BY 1, 2 ORDER BY 1, 2 NULLS LAST;

-- PL/pgSQL evaluates "r := assign_variant(unit, salt, v)" with one FmgrInfo for
-- the whole transaction and v a Param whose value changes between calls: the
-- cache must compare it every time
CREATE FUNCTION assign_cache_t.loop_assign() RETURNS TABLE (g int, v_jsonb text, v_arrays text)
LANGUAGE plpgsql AS $$
DECLARE
  r record;
  vj jsonb;
  n text[];
  w float8[];
BEGIN
  FOR r IN SELECT * FROM assign_cache_t.units WHERE units.g <= 7000 ORDER BY units.g LOOP
    vj := r.variants;
    n := r.names;
    w := r.weights;
    g := r.g;
    v_jsonb := experiment.assign_variant(r.u, 'exp-cache', vj);
    v_arrays := experiment.assign_variant(r.u, 'exp-cache', n, w);
    RETURN NEXT;
  END LOOP;
END $$;
SELECT count(*) AS units,
       count(*) FILTER (WHERE v_jsonb IS DISTINCT FROM e.v) AS jsonb_wrong,
       count(*) FILTER (WHERE v_arrays IS DISTINCT FROM e.v) AS arrays_wrong
FROM assign_cache_t.loop_assign() JOIN assign_cache_t.expected e USING (g);

-- a variant list that fails validation is not cached: the next row with the
-- same bad list fails again, and a good list after it is parsed afresh
CREATE FUNCTION assign_cache_t.bad_then_good() RETURNS text LANGUAGE plpgsql AS $$
DECLARE
  v jsonb;
  out text := '';
BEGIN
  FOREACH v IN ARRAY ARRAY['[{"name": "a", "allocation": 1.5}]'::jsonb,
                           '[{"name": "a", "allocation": 1.5}]'::jsonb,
                           '[{"name": "a", "allocation": 1}]'::jsonb] LOOP
    BEGIN
      out := out || coalesce(experiment.assign_variant('unit-1', 'exp-cache', v), 'NULL') || '; ';
    EXCEPTION WHEN invalid_parameter_value THEN
      out := out || SQLERRM || '; ';
    END;
  END LOOP;
  RETURN out;
END $$;
SELECT assign_cache_t.bad_then_good();

SET client_min_messages = warning;
DROP SCHEMA assign_cache_t CASCADE;
RESET client_min_messages;
