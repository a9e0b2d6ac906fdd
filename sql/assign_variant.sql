-- experiment.assign_variant: variant i owns buckets
-- [10000 * sum_{j<i} a_j, 10000 * sum_{j<=i} a_j) of bucket(unit_id, experiment_id);
-- NULL past the sum.  Every validation error is SQLSTATE 22023.
-- (quiet: whether the extension exists depends on the tests run before this one)
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS experiment;
RESET client_min_messages;
CREATE SCHEMA assign_variant_t;
\set ECHO none
\i test/regress_support.sql
\set ECHO all

-- whether the plan of q has a line containing pat
CREATE FUNCTION assign_variant_t.plan_has(q text, pat text) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
  line text;
BEGIN
  FOR line IN EXECUTE 'EXPLAIN (COSTS OFF) ' || q LOOP
    IF position(pat IN line) > 0 THEN
      RETURN true;
    END IF;
  END LOOP;
  RETURN false;
END $$;

-- the seed example: bucket 5951 of a 50/50 split is treatment
SELECT experiment.assign_variant('user-abc123', 'exp-checkout-progress-bar',
  '[{"name": "control", "allocation": 0.5}, {"name": "treatment", "allocation": 0.5}]') AS jsonb_form;
SELECT experiment.assign_variant('user-abc123', 'exp-checkout-progress-bar',
  ARRAY['control', 'treatment'], ARRAY[0.5, 0.5]) AS array_form;
-- 5951 >= 10000 * 0.59 = 5900: past the sum of allocations gives NULL
SELECT experiment.assign_variant('user-abc123', 'exp-checkout-progress-bar',
  '[{"name": "control", "allocation": 0.3}, {"name": "treatment", "allocation": 0.29}]') IS NULL AS past_sum;
-- 5951 < 10000 * 0.6 = 6000: still in
SELECT experiment.assign_variant('user-abc123', 'exp-checkout-progress-bar',
  ARRAY['control', 'treatment'], ARRAY[0.3, 0.3]) AS just_inside;
-- extra keys (e.g. config) are ignored
SELECT experiment.assign_variant('user-abc123', 'exp-checkout-progress-bar',
  '[{"name": "a", "allocation": 0.6, "config": {"x": 1}}, {"name": "b", "allocation": 0.4}]') AS extra_keys;
-- a zero allocation owns no buckets
SELECT experiment.assign_variant('user-abc123', 'exp-checkout-progress-bar',
  ARRAY['a', 'never', 'b'], ARRAY[0.6, 0, 0.4]) AS zero_allocation;

-- bucket boundaries: for every bucket b the variant is the first i with
-- b < 10000 * cumsum_i; checked for all 10000 buckets by finding, per variant,
-- the smallest and largest bucket among 200000 units
CREATE TABLE assign_variant_t.units AS
  SELECT 'u' || g AS u, experiment.bucket('u' || g, 'exp-bounds') AS b
  FROM generate_series(1, 200000) g;
SELECT v, min(b), max(b), count(DISTINCT b) AS buckets
FROM (SELECT b, experiment.assign_variant(u, 'exp-bounds',
        '[{"name": "a", "allocation": 0.1}, {"name": "b", "allocation": 0.19}, {"name": "c", "allocation": 0.4}]') AS v
      FROM assign_variant_t.units) t
GROUP BY v ORDER BY v NULLS LAST;
-- (float8 sums 0.1 + 0.19 to 0.29000000000000004; the boundary 2900.0000000000005
-- is snapped to 2900, so bucket 2900 belongs to c, as 0.29 * 10000 says)
-- thirds: 10000/3 = 3333.33..., so buckets 0..3333, 3334..6666, 6667..9999
SELECT v, min(b), max(b), count(DISTINCT b) AS buckets
FROM (SELECT b, experiment.assign_variant(u, 'exp-bounds', ARRAY['x', 'y', 'z'],
        ARRAY[1/3::float8, 1/3::float8, 1/3::float8]) AS v
      FROM assign_variant_t.units) t
GROUP BY v ORDER BY v NULLS LAST;
-- jsonb and array forms agree on every unit; changing the variant list
-- between rows (the cache is keyed by the arguments) gives the right answers
SELECT count(*) FILTER (WHERE
         experiment.assign_variant(u, 'exp-bounds', jsonb_build_array(
           jsonb_build_object('name', 'p', 'allocation', w),
           jsonb_build_object('name', 'q', 'allocation', 1 - w)))
         IS DISTINCT FROM experiment.assign_variant(u, 'exp-bounds', ARRAY['p', 'q'], ARRAY[w, 1 - w]))
         AS disagreements,
       count(*) FILTER (WHERE experiment.assign_variant(u, 'exp-bounds', ARRAY['p', 'q'], ARRAY[w, 1 - w])
         IS DISTINCT FROM CASE WHEN b < 10000 * w THEN 'p' ELSE 'q' END) AS wrong
FROM (SELECT u, b, (row_number() OVER ()) % 7 / 10.0::float8 AS w
      FROM assign_variant_t.units LIMIT 20000) t;
-- allocations may sum to 1 within 1e-9 (decimal rounding), and the last bucket is then covered
SELECT experiment.assign_variant(u, 'exp-bounds', ARRAY['a', 'b', 'c'],
         ARRAY[0.33333333333, 0.33333333333, 0.33333333334]) IS NOT NULL AS covered
FROM assign_variant_t.units WHERE b = 9999 LIMIT 1;

-- parallel query: the functions are PARALLEL SAFE and give the same split in workers
SET parallel_setup_cost = 0;
SET parallel_tuple_cost = 0;
SET min_parallel_table_scan_size = 0;
SET max_parallel_workers_per_gather = 2;
SELECT assign_variant_t.plan_has($q$
  SELECT experiment.assign_variant(u, 'exp-par', ARRAY['a', 'b'], ARRAY[0.3, 0.7]) AS v, count(*)
  FROM assign_variant_t.units GROUP BY 1$q$, 'Parallel Seq Scan') AS parallel_plan;
CREATE TABLE assign_variant_t.par AS
SELECT experiment.assign_variant(u, 'exp-par', ARRAY['a', 'b'], ARRAY[0.3, 0.7]) AS v, count(*) AS n
FROM assign_variant_t.units GROUP BY 1;
RESET parallel_setup_cost;
RESET parallel_tuple_cost;
RESET min_parallel_table_scan_size;
RESET max_parallel_workers_per_gather;
SET max_parallel_workers_per_gather = 0;
SELECT p.v, p.n = s.n AS same_as_serial
FROM assign_variant_t.par p
JOIN (SELECT experiment.assign_variant(u, 'exp-par', ARRAY['a', 'b'], ARRAY[0.3, 0.7]) AS v, count(*) AS n
      FROM assign_variant_t.units GROUP BY 1) s USING (v)
ORDER BY 1;
RESET max_parallel_workers_per_gather;

-- validation: jsonb form
SELECT regress_support.err($q$SELECT experiment.assign_variant('u', 'e', '[]')$q$);
SELECT regress_support.err($q$SELECT experiment.assign_variant('u', 'e', '{"name": "a", "allocation": 1}')$q$);
SELECT regress_support.err($q$SELECT experiment.assign_variant('u', 'e', '"control"')$q$);
SELECT regress_support.err($q$SELECT experiment.assign_variant('u', 'e', '[1, 2]')$q$);
SELECT regress_support.err($q$SELECT experiment.assign_variant('u', 'e', '[["a", 0.5]]')$q$);
SELECT regress_support.err($q$SELECT experiment.assign_variant('u', 'e', '[{"allocation": 1}]')$q$);
SELECT regress_support.err($q$SELECT experiment.assign_variant('u', 'e', '[{"name": 7, "allocation": 1}]')$q$);
SELECT regress_support.err($q$SELECT experiment.assign_variant('u', 'e', '[{"name": "a"}]')$q$);
SELECT regress_support.err($q$SELECT experiment.assign_variant('u', 'e', '[{"name": "a", "allocation": "0.5"}]')$q$);
SELECT regress_support.err($q$SELECT experiment.assign_variant('u', 'e', '[{"name": "a", "allocation": null}]')$q$);
SELECT regress_support.err($q$SELECT experiment.assign_variant('u', 'e', '[{"name": "a", "allocation": -0.1}, {"name": "b", "allocation": 0.5}]')$q$);
SELECT regress_support.err($q$SELECT experiment.assign_variant('u', 'e', '[{"name": "a", "allocation": 1.5}]')$q$);
SELECT regress_support.err($q$SELECT experiment.assign_variant('u', 'e', '[{"name": "a", "allocation": 1e400}]')$q$);
SELECT regress_support.err($q$SELECT experiment.assign_variant('u', 'e', '[{"name": "a", "allocation": 0.6}, {"name": "b", "allocation": 0.5}]')$q$);
SELECT regress_support.err($q$SELECT experiment.assign_variant('u', 'e', '[{"name": "a", "allocation": 0.5}, {"name": "a", "allocation": 0.5}]')$q$);
SELECT regress_support.err($q$SELECT experiment.assign_variant('u', 'e', '[{"name": "", "allocation": 0.5}]')$q$);
-- validation: array form
SELECT regress_support.err($q$SELECT experiment.assign_variant('u', 'e', ARRAY[]::text[], ARRAY[]::float8[])$q$);
SELECT regress_support.err($q$SELECT experiment.assign_variant('u', 'e', ARRAY['a', 'b'], ARRAY[1.0])$q$);
SELECT regress_support.err($q$SELECT experiment.assign_variant('u', 'e', ARRAY['a', NULL], ARRAY[0.5, 0.5])$q$);
SELECT regress_support.err($q$SELECT experiment.assign_variant('u', 'e', ARRAY['a', 'b'], ARRAY[0.5, NULL])$q$);
SELECT regress_support.err($q$SELECT experiment.assign_variant('u', 'e', ARRAY['a', 'b'], ARRAY[0.5, 'NaN'])$q$);
SELECT regress_support.err($q$SELECT experiment.assign_variant('u', 'e', ARRAY['a', 'b'], ARRAY[0.5, 'Infinity'])$q$);
SELECT regress_support.err($q$SELECT experiment.assign_variant('u', 'e', ARRAY['a', 'b'], ARRAY[0.7, 0.30001])$q$);
SELECT regress_support.err($q$SELECT experiment.assign_variant('u', 'e', ARRAY['a', 'a'], ARRAY[0.5, 0.5])$q$);
SELECT regress_support.err($q$SELECT experiment.assign_variant('u', 'e', ARRAY['a', ''], ARRAY[0.5, 0.5])$q$);
SELECT regress_support.err($q$SELECT experiment.assign_variant('u', 'e', ARRAY[['a', 'b']], ARRAY[0.5, 0.5])$q$);
SELECT regress_support.err($q$SELECT experiment.assign_variant('u', 'e', ARRAY['a', 'b'], ARRAY[[0.5, 0.5]])$q$);
-- STRICT: NULL arguments give NULL
SELECT experiment.assign_variant(NULL, 'e', '[{"name": "a", "allocation": 1}]') IS NULL AS null_unit,
       experiment.assign_variant('u', 'e', NULL::jsonb) IS NULL AS null_variants,
       experiment.assign_variant('u', 'e', NULL::text[], ARRAY[1.0]) IS NULL AS null_names;

SELECT p.oid::regprocedure, provolatile, proisstrict, proparallel FROM pg_proc p
WHERE proname = 'assign_variant' AND pronamespace = 'experiment'::regnamespace ORDER BY 1::text;

SET client_min_messages = warning;
DROP SCHEMA assign_variant_t CASCADE;
RESET client_min_messages;
