-- Welch's t-test: the function on moments, the aggregate, parallel
-- aggregation, NULL results and every invalid argument.
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS experiment;
CREATE SCHEMA stats_welch;
RESET client_min_messages;
SET search_path = stats_welch, regress_support, public;
\set ECHO none
\i test/regress_support.sql
\set ECHO all

CREATE TABLE obs (g boolean, y float8);
INSERT INTO obs VALUES (false, 1), (false, 2), (false, 3), (false, 4), (false, 5),
                       (true, 2), (true, 4), (true, 6), (true, 8), (true, 10), (true, 12);

\x on
-- control 1..5, treatment 2, 4, .., 12
SELECT * FROM r((SELECT experiment.welch_ttest(experiment.moments(y) FILTER (WHERE NOT g),
                                               experiment.moments(y) FILTER (WHERE g))
                   FROM obs));
-- alpha = 0.01 widens both intervals, leaves the rest
SELECT * FROM r((SELECT experiment.welch_ttest(experiment.moments(y) FILTER (WHERE NOT g),
                                               experiment.moments(y) FILTER (WHERE g), 0.01)
                   FROM obs));
\x off

-- the aggregate gives exactly the function at alpha = 0.05
SELECT experiment.welch_ttest(g, y) IS NOT DISTINCT FROM
       experiment.welch_ttest(experiment.moments(y) FILTER (WHERE NOT g),
                              experiment.moments(y) FILTER (WHERE g)) AS same
  FROM obs;
-- rows with a NULL group or value are skipped
SELECT experiment.welch_ttest(g, y) IS NOT DISTINCT FROM
       (SELECT experiment.welch_ttest(g, y) FROM obs) AS nulls_skipped
  FROM (SELECT * FROM obs UNION ALL VALUES (NULL::boolean, 100::float8), (true, NULL)) s;
-- swapping the arms negates diff and the statistic
SELECT abs(a.diff + b.diff) < 1e-12 AS diff_negated, abs(a.statistic + b.statistic) < 1e-12 AS t_negated,
       abs(a.p_value - b.p_value) < 1e-15 AS same_p
  FROM (SELECT (experiment.welch_ttest(g, y)).* FROM obs) a,
       (SELECT (experiment.welch_ttest(NOT g, y)).* FROM obs) b;

-- undefined results are NULL, never NaN
\x on
-- one control observation: no variance, so no inference
SELECT * FROM r((SELECT experiment.welch_ttest(g, y) FROM (VALUES (false, 1.0::float8), (true, 2), (true, 3)) v(g, y)));
-- zero variance in both arms
SELECT * FROM r((SELECT experiment.welch_ttest(g, y) FROM (VALUES (false, 2::float8), (false, 2), (true, 3), (true, 3)) v(g, y)));
-- zero control mean: no lift
SELECT * FROM r((SELECT experiment.welch_ttest(g, y)
                   FROM (VALUES (false, -1::float8), (false, 1), (false, -2), (false, 2), (true, 3), (true, 4)) v(g, y)));
-- an empty arm
SELECT * FROM r((SELECT experiment.welch_ttest(g, y) FROM (VALUES (true, 1::float8), (true, 2)) v(g, y)));
-- moments with n = 0
SELECT * FROM r(experiment.welch_ttest('{"version":1,"n":0,"mean":[0],"comoment":[[0]]}',
                                       experiment.moments_from_sums(3, 6, 14)));
\x off
-- no rows at all: NULL
SELECT experiment.welch_ttest(g, y) IS NULL AS no_rows FROM obs WHERE false;
-- far tail: the p-value keeps its digits
SELECT to_char(statistic, '99.99999999') AS t, df, to_char(p_value, '9.9999999EEEE') AS p
  FROM experiment.welch_ttest(experiment.moments_from_sums(1000, 0, 1000),
                              experiment.moments_from_sums(1000, 500, 1250));

-- many degrees of freedom (billions of rows): the t tail and quantile tend
-- to the normal ones, 2 Q(3) = 0.0026997960632601866 and z(0.975) = 1.959963984540054
SELECT n, abs(p_value / 0.0026997960632601866 - 1) < 1e-9 AS p_is_normal,
       abs((diff_upper - diff) / sqrt(2.0 / n) / 1.959963984540054 - 1) < 1e-9 AS q_is_normal
  FROM unnest('{1000000000000,1000000000000000,4000000000000000000}'::bigint[]) n,
       experiment.welch_ttest(experiment.moments_from_sums(n, 0, n::float8),
                              experiment.moments_from_sums(n, n::float8 * 3 * sqrt(2.0 / n), n::float8 + n::float8 * (3 * sqrt(2.0 / n)) ^ 2));

-- extreme alpha: heavy tails far out (df = 2, se = sqrt(2): the quantile is 1/sqrt(alpha))
SELECT a, round(((diff_upper - diff) / sqrt(2.0) * sqrt(a))::numeric, 9) AS q_sqrt_alpha
  FROM unnest('{1e-100,1e-300}'::float8[]) a,
       experiment.welch_ttest(experiment.moments_from_sums(2, 0, 2), experiment.moments_from_sums(2, 0, 2), a);

-- parallel and partial aggregation give the serial result
CREATE TABLE big AS
  SELECT i % 3 = 0 AS g, (i % 3 = 0)::int * 0.5 + sin(i) * 100 + 20 AS y
    FROM generate_series(1, 200000) i;
ANALYZE big;
SET parallel_setup_cost = 0;
SET parallel_tuple_cost = 0;
SET min_parallel_table_scan_size = 0;
SET max_parallel_workers_per_gather = 2;
EXPLAIN (COSTS OFF) SELECT experiment.welch_ttest(g, y) FROM big;
CREATE TABLE par AS SELECT (experiment.welch_ttest(g, y)).* FROM big;
RESET parallel_setup_cost;
RESET parallel_tuple_cost;
RESET min_parallel_table_scan_size;
SET max_parallel_workers_per_gather = 0;
CREATE TABLE ser AS SELECT (experiment.welch_ttest(g, y)).* FROM big;
RESET max_parallel_workers_per_gather;
SELECT s.n_control = p.n_control AND s.n_treatment = p.n_treatment AS same_n,
       -- a difference of means is known to the precision of the means, not of itself
       abs(s.diff - p.diff) <= 1e-12 * greatest(abs(s.mean_control), abs(s.mean_treatment)) AS same_diff,
       abs(s.statistic - p.statistic) <= 1e-10 * abs(s.statistic) AS same_t,
       abs(s.df - p.df) <= 1e-12 * s.df AS same_df,
       abs(s.p_value - p.p_value) <= 1e-9 * s.p_value AS same_p,
       abs(s.diff_lower - p.diff_lower) <= 1e-10 * abs(s.diff_lower) AS same_lower
  FROM ser s, par p;
-- shards merged: GROUP BY i % 7, merged per arm, equals the whole
SELECT abs(a.statistic - b.statistic) <= 1e-10 * abs(b.statistic) AS shards_equal_whole
  FROM (SELECT (experiment.welch_ttest(experiment.merge(c), experiment.merge(t))).*
          FROM (SELECT experiment.moments(y) FILTER (WHERE NOT g) c, experiment.moments(y) FILTER (WHERE g) t
                  FROM (SELECT row_number() OVER () i, * FROM big) s GROUP BY i % 7) sh) a,
       ser b;

-- invalid arguments: SQLSTATE 22023 naming the argument
SELECT err($$SELECT experiment.welch_ttest(experiment.moments_from_sums(3, 6, 14), experiment.moments_from_sums(3, 6, 14), 0)$$);
SELECT err($$SELECT experiment.welch_ttest(experiment.moments_from_sums(3, 6, 14), experiment.moments_from_sums(3, 6, 14), 1)$$);
SELECT err($$SELECT experiment.welch_ttest(experiment.moments_from_sums(3, 6, 14), experiment.moments_from_sums(3, 6, 14), -0.5)$$);
SELECT err($$SELECT experiment.welch_ttest(experiment.moments_from_sums(3, 6, 14), experiment.moments_from_sums(3, 6, 14), 'NaN')$$);
SELECT err($$SELECT experiment.welch_ttest(experiment.moments_from_sums(3, 6, 14, 3, 5, 7), experiment.moments_from_sums(3, 6, 14))$$);
SELECT err($$SELECT experiment.welch_ttest(experiment.moments_from_sums(3, 6, 14), experiment.moments_from_sums(3, 6, 14, 3, 5, 7))$$);
-- crafted aggregate states
SELECT err($$SELECT experiment.welch_ttest_final('{}'::experiment.moments[])$$);
SELECT err($$SELECT experiment.welch_ttest_final(ARRAY[experiment.moments_from_sums(3, 6, 14)])$$);
SELECT err($$SELECT experiment.welch_ttest_final(ARRAY[experiment.moments_from_sums(3, 6, 14), NULL])$$);
SELECT err($$SELECT experiment.welch_ttest_final(ARRAY[experiment.moments_from_sums(3, 6, 14), experiment.moments_from_sums(3, 6, 14, 3, 5, 7)])$$);
SELECT err($$SELECT experiment.welch_ttest_final(ARRAY[[experiment.moments_from_sums(3, 6, 14)], [experiment.moments_from_sums(3, 6, 14)]])$$);
SELECT err($$SELECT experiment.moments_pair_combine(ARRAY[experiment.moments_from_sums(3, 6, 14)], ARRAY[experiment.moments_from_sums(3, 6, 14)])$$);
SELECT err($$SELECT experiment.welch_ttest(g, y) FROM (VALUES (true, 'NaN'::float8)) v(g, y)$$);
SELECT err($$SELECT experiment.welch_ttest(g, y) FROM (VALUES (true, '-Infinity'::float8)) v(g, y)$$);
-- the transition function leaves a state given to it outside an aggregate
-- alone: the state is read from a table (so the call gets a pointer into the
-- table's buffer), the result is used (the call is not planned away), and the
-- stored state is read again afterwards
CREATE TABLE pair_state AS
  SELECT ARRAY[experiment.moments_from_sums(3, 6, 14), experiment.moments_from_sums(2, 3, 5)] AS s;
SELECT experiment.n((experiment.moments_pair_accum(s, true, 10))[2]) AS treatment_n_after,
       experiment.n(s[2]) AS treatment_n_stored
  FROM pair_state;
SELECT s::text = ARRAY[experiment.moments_from_sums(3, 6, 14), experiment.moments_from_sums(2, 3, 5)]::text AS unchanged
  FROM pair_state;

SET client_min_messages = warning;
DROP SCHEMA stats_welch CASCADE;
