-- experiment.sketch: text I/O round trip, bad input, empty and NULL cases,
-- merge, a parallel plan, q out of range, small exact cases
CREATE EXTENSION IF NOT EXISTS experiment;
CREATE SCHEMA sketch_test;
SET search_path = sketch_test, public;
SET extra_float_digits = 0;
CREATE FUNCTION outcome(q text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
  detail text;
BEGIN
  EXECUTE q;
  RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
  GET STACKED DIAGNOSTICS detail = PG_EXCEPTION_DETAIL;
  RETURN SQLSTATE || ': ' || SQLERRM || coalesce(' / ' || nullif(detail, ''), '');
END $$;

-- small exact cases: bins, min and max, zero and negatives
SELECT experiment.sketch(v) FROM unnest(ARRAY[1, 2, 20, 0, -3.5, -0.0]::float8[]) v;
SELECT experiment.sketch(v) FROM unnest(ARRAY[5, 5, 5]::float8[]) v;
-- the index of 1 is 0; of gamma^k (gamma = 1.005 / 0.995) is k
SELECT experiment.sketch(v) FROM unnest(ARRAY[1, 1.0050251256281408, 1.0101012]::float8[]) v;

-- quantiles: method 'lower' ranks, min and max exact, others within 0.5%
CREATE TABLE five AS SELECT experiment.sketch(v) AS s FROM unnest(ARRAY[120, 250, 900, 1400, 3000]::float8[]) v;
SELECT q, experiment.quantile(s, q) AS value,
       abs(experiment.quantile(s, q) / (ARRAY[120, 250, 900, 1400, 3000])[floor(q * 4)::int + 1] - 1) <= 0.005 AS within
  FROM five, unnest(ARRAY[0, 0.1, 0.25, 0.5, 0.74, 0.75, 0.99, 1]::float8[]) q ORDER BY q;
SELECT x, experiment.rank(s, x) FROM five, unnest(ARRAY['-Infinity', -1, 0, 119, 120, 121, 899, 2999, 3000, 1e300, 'Infinity']::float8[]) x ORDER BY x;
SELECT experiment.n(s), pg_column_size(s) <= 64 AS compact FROM five;

-- text round trip: output of input of output is identical
SELECT s::text::experiment.sketch::text = s::text AS round_trip FROM five;
SELECT (SELECT experiment.sketch(v) FROM unnest(ARRAY[-1e300, -5e-324, 0, 5e-324, 1.7976931348623157e308]::float8[]) v)::text AS extremes;
SELECT (SELECT experiment.sketch(v) FROM unnest(ARRAY[-1e300, -5e-324, 0, 5e-324, 1.7976931348623157e308]::float8[]) v)::text::experiment.sketch::text
     = (SELECT experiment.sketch(v) FROM unnest(ARRAY[-1e300, -5e-324, 0, 5e-324, 1.7976931348623157e308]::float8[]) v)::text AS extremes_round_trip;
-- whitespace is allowed between tokens; -0 reads as 0
SELECT ' { "version" : 1 , "alpha" : 0.005 , "n" : 2 , "min" : -0 , "max" : 1 , "negative" : [ ] , "zero" : 1 , "positive" : [ [ 0 , 1 ] ] } '::experiment.sketch;

-- bad input: 22P02 naming the problem
CREATE FUNCTION sk(body text) RETURNS text LANGUAGE sql AS $$ SELECT outcome('SELECT ' || quote_literal(body) || '::experiment.sketch') $$;
SELECT sk('');
SELECT sk('{}');
SELECT sk('{"version":2,"alpha":0.005,"n":1,"min":1,"max":1,"negative":[],"zero":0,"positive":[[0,1]]}');
SELECT sk('{"version":1,"alpha":0.01,"n":1,"min":1,"max":1,"negative":[],"zero":0,"positive":[[0,1]]}');
SELECT sk('{"version":1,"alpha":0.005,"n":2,"min":1,"max":1,"negative":[],"zero":0,"positive":[[0,1]]}');
SELECT sk('{"version":1,"alpha":0.005,"n":0,"min":1,"max":1,"negative":[],"zero":0,"positive":[]}');
SELECT sk('{"version":1,"alpha":0.005,"n":1,"min":2,"max":1,"negative":[],"zero":0,"positive":[[0,1]]}');
SELECT sk('{"version":1,"alpha":0.005,"n":1,"min":1,"max":1,"negative":[],"zero":0,"positive":[[5,1]]}');
SELECT sk('{"version":1,"alpha":0.005,"n":2,"min":1,"max":2,"negative":[],"zero":0,"positive":[[70,1],[0,1]]}');
SELECT sk('{"version":1,"alpha":0.005,"n":2,"min":1,"max":1,"negative":[],"zero":0,"positive":[[0,1],[0,1]]}');
SELECT sk('{"version":1,"alpha":0.005,"n":1,"min":1,"max":1,"negative":[],"zero":0,"positive":[[0,0]]}');
SELECT sk('{"version":1,"alpha":0.005,"n":1,"min":1,"max":1,"negative":[],"zero":0,"positive":[[999999,1]]}');
SELECT sk('{"version":1,"alpha":0.005,"n":1,"min":NaN,"max":1,"negative":[],"zero":0,"positive":[[0,1]]}');
SELECT sk('{"version":1,"alpha":0.005,"n":1,"min":1e999,"max":1,"negative":[],"zero":0,"positive":[[0,1]]}');
SELECT sk('{"version":1,"alpha":0.005,"n":1,"min":1,"max":1,"negative":[],"zero":0,"positive":[[0,1]]} x');
SELECT sk('{"version":1,"alpha":0.005,"n":1,"max":1,"min":1,"negative":[],"zero":0,"positive":[[0,1]]}');
SELECT sk('{"version":1,"alpha":0.005,"n":1.0,"min":1,"max":1,"negative":[],"zero":0,"positive":[[0,1]]}');
SELECT sk('{"version":1,"alpha":0.005,"n":-1,"min":1,"max":1,"negative":[],"zero":0,"positive":[[0,1]]}');
SELECT sk('{"version":1,"alpha":0.005,"n":1,"min":1,"max":1,"negative":[],"zero":-1,"positive":[[0,1]]}');
SELECT sk('{"version":1,"alpha":0.005,"n":1,"min":1,"max":1,"negative":[],"zero":0,"positive":[[0,99999999999999999999]]}');

-- empty and NULL: no rows or only NULLs give NULL; NULL arguments give NULL
SELECT experiment.sketch(v) IS NULL AS no_rows FROM generate_series(1, 0) v;
SELECT experiment.sketch(NULL::float8) IS NULL AS only_nulls FROM generate_series(1, 3);
SELECT experiment.n(experiment.sketch(v)) AS nulls_skipped FROM unnest(ARRAY[1, NULL, 3]::float8[]) v;
SELECT experiment.merge(s) IS NULL AS merge_no_rows FROM five WHERE false;
SELECT experiment.quantile(NULL, 0.5) IS NULL, experiment.quantile(s, NULL) IS NULL, experiment.rank(s, NULL) IS NULL FROM five;

-- NaN and infinities are refused (22023); q out of range (22023 naming q)
SELECT outcome($$SELECT experiment.sketch(v) FROM unnest(ARRAY[1, 'NaN']::float8[]) v$$);
SELECT outcome($$SELECT experiment.sketch(v) FROM unnest(ARRAY['-Infinity']::float8[]) v$$);
SELECT outcome($$SELECT experiment.quantile(s, 1.5) FROM sketch_test.five$$);
SELECT outcome($$SELECT experiment.quantile(s, -0.01) FROM sketch_test.five$$);
SELECT outcome($$SELECT experiment.quantile(s, 'NaN') FROM sketch_test.five$$);
SELECT outcome($$SELECT experiment.rank(s, 'NaN') FROM sketch_test.five$$);

-- merge: the merge of parts equals the sketch of the whole, bin for bin, whatever the grouping
CREATE TABLE obs (unit int, grp int, y float8) WITH (parallel_workers = 2);
SELECT setseed(0.17);
INSERT INTO obs
SELECT g, g % 2, CASE WHEN g % 10 = 0 THEN 0 WHEN g % 7 = 0 THEN -exp(3 * random()) ELSE exp(8 * random()) END
  FROM generate_series(1, 200000) g;
ANALYZE obs;
CREATE TABLE whole AS SELECT grp, experiment.sketch(y) AS s FROM obs GROUP BY grp;
SELECT grp, experiment.n(s), s OPERATOR(experiment.=) (SELECT experiment.merge(p) FROM (
         SELECT experiment.sketch(y) AS p FROM obs o WHERE o.grp = w.grp GROUP BY unit % 13) x) AS merge_equal
  FROM whole w ORDER BY grp;
SELECT (SELECT s FROM whole WHERE grp = 0) OPERATOR(experiment.+) (SELECT s FROM whole WHERE grp = 1)
       OPERATOR(experiment.=) (SELECT experiment.sketch(y) FROM obs) AS plus_equal,
       experiment.sketch_merge((SELECT s FROM whole WHERE grp = 0), (SELECT s FROM whole WHERE grp = 1))
       OPERATOR(experiment.<>) (SELECT s FROM whole WHERE grp = 0) AS differs;
-- very different states: one value, and thousands of bins
SELECT experiment.sketch_merge(s, '{"version":1,"alpha":0.005,"n":1,"min":-1e300,"max":-1e300,"negative":[[69077,1]],"zero":0,"positive":[]}')
       OPERATOR(experiment.=) (SELECT experiment.sketch(y) FROM (SELECT y FROM obs WHERE grp = 0 UNION ALL SELECT -1e300) u) AS far_apart
  FROM whole WHERE grp = 0;
SELECT experiment.merge(s ORDER BY k DESC) OPERATOR(experiment.=) experiment.merge(s ORDER BY k) AS order_free
  FROM (SELECT unit % 17 AS k, experiment.sketch(y) AS s FROM obs GROUP BY 1) x;

-- collapsing: at most 2048 bins per sign, the lowest-magnitude ones collapse;
-- high quantiles keep the guarantee, and merge is still exact
CREATE TABLE wide AS SELECT g, exp(g * 0.004) AS y FROM generate_series(1, 12000) g;
SELECT (length(s::text) - length(replace(s::text, '],[', ''))) / 3 + 1 AS bins, experiment.n(s),
       abs(experiment.quantile(s, 0.99) / (SELECT y FROM wide WHERE g = 11880) - 1) <= 0.005 AS p99_within,
       experiment.quantile(s, 0.001) > (SELECT y FROM wide WHERE g = 12) AS low_collapsed
  FROM (SELECT experiment.sketch(y) AS s FROM wide) x;
SELECT experiment.merge(s) OPERATOR(experiment.=) (SELECT experiment.sketch(y) FROM wide) AS collapsed_merge
  FROM (SELECT g % 5 AS k, experiment.sketch(y) AS s FROM wide GROUP BY 1) x;
SELECT experiment.merge(s) OPERATOR(experiment.=) (SELECT experiment.sketch(-y) FROM wide) AS collapsed_negative_merge
  FROM (SELECT g / 1000 AS k, experiment.sketch(-y) AS s FROM wide GROUP BY 1) x;

-- quantile_test: bad arguments (22023), NULLs, equal arms, too few units for an interval
SELECT outcome($$SELECT experiment.quantile_test(s, s, 0) FROM sketch_test.five$$);
SELECT outcome($$SELECT experiment.quantile_test(s, s, 0.5, 1.5) FROM sketch_test.five$$);
SELECT outcome($$SELECT experiment.quantile_test(s, s, 0.5, m, m) FROM sketch_test.five,
  (SELECT '{"version":1,"n":5,"mean":[1],"comoment":[[0]]}'::experiment.moments AS m) c$$);
SELECT outcome($$SELECT experiment.quantile_test(s, s, 0.5, m, m) FROM sketch_test.five,
  (SELECT '{"version":1,"n":2,"mean":[1,7],"comoment":[[0,0],[0,0]]}'::experiment.moments AS m) c$$);
SELECT outcome($$SELECT experiment.quantile_test(s, s, 0.5, m, m) FROM sketch_test.five,
  (SELECT '{"version":1,"n":5,"mean":[2,1],"comoment":[[0,0],[0,0]]}'::experiment.moments AS m) c$$);
SELECT experiment.quantile_test(NULL, s, 0.5) IS NULL AS null_sketch, experiment.quantile_test(s, s, NULL) IS NULL AS null_q FROM five;
SELECT r.n_control, r.p_value, r.diff, round(r.diff_se::numeric, 6) > 0 AS has_se
  FROM whole, experiment.quantile_test(s, s, 0.9) r WHERE grp = 0;
SELECT r.n_control, r.mean_control, r.diff, r.diff_se IS NULL AS no_se, r.p_value IS NULL AS no_p
  FROM five, experiment.quantile_test(s, s, 0.99) r;
-- one event per unit: the clustered test's standard error is the unit-level one times
-- sqrt(var_F / (q (1 - q) / n)) = sqrt((0.3 / 5) / (0.25 / 5)) = sqrt(1.2)
WITH units AS (SELECT v, experiment.sketch(v) AS s FROM unnest(ARRAY[120, 250, 900, 1400, 3000]::float8[]) v GROUP BY v),
     c AS (SELECT experiment.moments(experiment.rank(u.s, experiment.quantile(f.s, 0.5)), experiment.n(u.s)) AS m
             FROM units u, five f)
SELECT r.n_control, round(r.mean_control::numeric, 4) AS q50,
       round((r.diff_se / u.diff_se)::numeric, 12) = round(sqrt(1.2)::numeric, 12) AS design_effect
  FROM five, c, experiment.quantile_test(s, s, 0.5, m, m) r, experiment.quantile_test(s, s, 0.5) u;

-- parallel: a forced parallel plan gives Partial Aggregate and the serial result
-- the aggregates are declared parallel safe with a combine function and experiment.sketch as state
SELECT p.oid::regprocedure AS aggregate, a.aggcombinefn <> 0 AS has_combine,
       a.aggtranstype::regtype AS state, a.aggfinalfn::regproc AS final, p.proparallel
  FROM pg_aggregate a JOIN pg_proc p ON p.oid = a.aggfnoid
 WHERE p.pronamespace = 'experiment'::regnamespace AND a.aggtranstype = 'experiment.sketch'::regtype
 ORDER BY 1::text;
SET parallel_setup_cost = 0;
SET parallel_tuple_cost = 0;
SET min_parallel_table_scan_size = 0;
SET max_parallel_workers_per_gather = 2;
SET parallel_leader_participation = off;
EXPLAIN (COSTS OFF) SELECT grp, experiment.sketch(y) FROM obs GROUP BY grp;
SELECT grp, s OPERATOR(experiment.=) (SELECT s FROM whole w WHERE w.grp = p.grp) AS parallel_equal
  FROM (SELECT grp, experiment.sketch(y) AS s FROM obs GROUP BY grp) p ORDER BY grp;
CREATE TABLE per_unit WITH (parallel_workers = 2) AS SELECT unit % 5000 AS u, experiment.sketch(y) AS s FROM obs GROUP BY 1;
ANALYZE per_unit;
EXPLAIN (COSTS OFF) SELECT experiment.merge(s) FROM per_unit;
SELECT experiment.merge(s) OPERATOR(experiment.=) (SELECT experiment.sketch(y) FROM obs) AS parallel_merge_equal FROM per_unit;
RESET ALL;

RESET search_path;
DROP SCHEMA sketch_test CASCADE;
