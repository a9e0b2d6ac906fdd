-- Post-stratification: poststrat_ttest for every method, a single stratum
-- equal to the unstratified test, strata merged into the largest, NULLs and
-- every invalid argument.
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS experiment;
CREATE SCHEMA stats_poststrat;
RESET client_min_messages;
SET search_path = stats_poststrat, regress_support, public;
\set ECHO none
\i test/regress_support.sql
\set ECHO all

-- do two results agree, column by column, to a relative tol (NULL = NULL)?
CREATE FUNCTION same(a experiment.test_result, b experiment.test_result, tol float8 DEFAULT 1e-12)
RETURNS boolean LANGUAGE sql AS $$
  SELECT a.n_control = b.n_control AND a.n_treatment = b.n_treatment AND bool_and(
           CASE WHEN x IS NULL OR y IS NULL THEN x IS NULL AND y IS NULL
                WHEN x = y THEN true
                ELSE abs(x - y) <= tol * greatest(abs(x), abs(y)) END)
    FROM unnest(ARRAY[a.mean_control, a.mean_treatment, a.diff, a.diff_lower, a.diff_upper, a.lift,
                      a.lift_lower, a.lift_upper, a.statistic, a.df, a.p_value, a.lift_p_value,
                      a.diff_se, a.lift_se],
                ARRAY[b.mean_control, b.mean_treatment, b.diff, b.diff_lower, b.diff_upper, b.lift,
                      b.lift_lower, b.lift_upper, b.statistic, b.df, b.p_value, b.lift_p_value,
                      b.diff_se, b.lift_se]) u(x, y)
$$;

-- per user: a stratum (3 countries of different sizes and levels), the arm, a value y with
-- its pre-period x, a 0/1 conversion, a ratio num/den and its pre-period pnum/pden
CREATE TABLE users AS
  SELECT i, (ARRAY['br', 'de', 'us'])[1 + (i * 7) % 11 % 3] AS country, i % 2 = 0 AS g,
         (1 + (i * 7) % 11 % 3) * 10 + 3 * sin(i) + 0.5 * (i % 2 = 0)::int + (i % 5) AS y,
         (1 + (i * 7) % 11 % 3) * 10 + 3 * sin(i) + (i % 7) * 0.3 AS x,
         ((i * 13) % 10 < 3 + (i * 7) % 11 % 3 + (i % 2 = 0)::int)::int AS conv,
         (1 + i % 4) * (0.5 + 0.1 * cos(i)) * (1 + (i * 7) % 11 % 3) + 0.2 * (i % 2 = 0)::int AS num,
         1 + i % 4 AS den,
         (1 + i % 4) * (0.5 + 0.1 * cos(i + 1)) * (1 + (i * 7) % 11 % 3) AS pnum,
         1 + (i + 1) % 4 AS pden
    FROM generate_series(1, 600) i;
CREATE TABLE strata AS
  SELECT country,
         experiment.moments(y) FILTER (WHERE NOT g) AS c1, experiment.moments(y) FILTER (WHERE g) AS t1,
         experiment.moments(conv) FILTER (WHERE NOT g) AS cp, experiment.moments(conv) FILTER (WHERE g) AS tp,
         experiment.moments(y, x) FILTER (WHERE NOT g) AS c2, experiment.moments(y, x) FILTER (WHERE g) AS t2,
         experiment.moments(num, den) FILTER (WHERE NOT g) AS cr, experiment.moments(num, den) FILTER (WHERE g) AS tr,
         experiment.moments(num, den, pnum, pden) FILTER (WHERE NOT g) AS c4,
         experiment.moments(num, den, pnum, pden) FILTER (WHERE g) AS t4
    FROM users GROUP BY country;
CREATE TABLE arr AS
  SELECT array_agg(c1 ORDER BY country) AS c1, array_agg(t1 ORDER BY country) AS t1,
         array_agg(cp ORDER BY country) AS cp, array_agg(tp ORDER BY country) AS tp,
         array_agg(c2 ORDER BY country) AS c2, array_agg(t2 ORDER BY country) AS t2,
         array_agg(cr ORDER BY country) AS cr, array_agg(tr ORDER BY country) AS tr,
         array_agg(c4 ORDER BY country) AS c4, array_agg(t4 ORDER BY country) AS t4
    FROM strata;
SELECT country, experiment.n(c1) AS n_c, experiment.n(t1) AS n_t FROM strata ORDER BY country;

\x on
SELECT * FROM r((SELECT experiment.poststrat_ttest('welch', c1, t1) FROM arr));
SELECT * FROM r((SELECT experiment.poststrat_ttest('prop_ztest', cp, tp) FROM arr));
SELECT * FROM r((SELECT experiment.poststrat_ttest('cuped', c2, t2) FROM arr));
SELECT * FROM r((SELECT experiment.poststrat_ttest('ratio', cr, tr) FROM arr));
SELECT * FROM r((SELECT experiment.poststrat_ttest('cuped_ratio', c4, t4) FROM arr));
\x off

-- the estimator written out with the built-in aggregates: weights n_k / N, weighted arm
-- means, and the variance sum w_k^2 s_k + max(0, sum w_k (d_k - d)^2 / N - sum w_k (1 - w_k) s_k / N)
-- with s_k = v_c/n_c + v_t/n_t
WITH s AS (SELECT country, count(*) AS n, avg(y) FILTER (WHERE NOT g) AS mc, avg(y) FILTER (WHERE g) AS mt,
                  var_samp(y) FILTER (WHERE NOT g) AS vc, var_samp(y) FILTER (WHERE g) AS vt,
                  count(*) FILTER (WHERE NOT g) AS nc, count(*) FILTER (WHERE g) AS nt
             FROM users GROUP BY country),
     w AS (SELECT s.*, n::float8 / sum(n) OVER () AS w, sum(n) OVER () AS total FROM s),
     d AS (SELECT sum(w * (mt - mc)) AS diff, sum(w * mc) AS mc, sum(w * mt) AS mt FROM w),
     v AS (SELECT sum(w.w ^ 2 * (w.vc / w.nc + w.vt / w.nt))
                  + greatest(0, sum(w.w * (w.mt - w.mc - d.diff) ^ 2) / max(w.total)
                                - sum(w.w * (1 - w.w) * (w.vc / w.nc + w.vt / w.nt)) / max(w.total)) AS var
             FROM w, d)
SELECT abs(x.mean_control - d.mc) < 1e-12 * d.mc AS mean_control,
       abs(x.mean_treatment - d.mt) < 1e-12 * d.mt AS mean_treatment,
       abs(x.diff - d.diff) < 1e-12 * abs(d.diff) AS diff,
       abs(x.diff_se - sqrt(v.var)) < 1e-12 * sqrt(v.var) AS diff_se
  FROM d, v, arr, experiment.poststrat_ttest('welch', arr.c1, arr.t1) x;

-- one stratum: the unstratified test, for every method and inference
SELECT m, alt, tuning,
       same(experiment.poststrat_ttest(m, ARRAY[c], ARRAY[t], 0.05, alt, tuning),
            CASE m WHEN 'welch' THEN experiment.welch_ttest(c, t, 0.05, alt, tuning)
                   WHEN 'cuped' THEN experiment.cuped_ttest(c, t, 0.05, alt, tuning)
                   WHEN 'ratio' THEN experiment.ratio_ttest(c, t, 0.05, alt, tuning)
                   WHEN 'cuped_ratio' THEN experiment.cuped_ratio_ttest(c, t, 0.05, alt, tuning)
                   ELSE experiment.metric_test(m, c, t, c, t, 0.05, alt, tuning) END) AS same
  FROM (SELECT 'welch' AS m, experiment.moments(y) FILTER (WHERE NOT g) AS c, experiment.moments(y) FILTER (WHERE g) AS t FROM users
        UNION ALL SELECT 'prop_ztest', experiment.moments(conv) FILTER (WHERE NOT g), experiment.moments(conv) FILTER (WHERE g) FROM users
        UNION ALL SELECT 'cuped', experiment.moments(y, x) FILTER (WHERE NOT g), experiment.moments(y, x) FILTER (WHERE g) FROM users
        UNION ALL SELECT 'ratio', experiment.moments(num, den) FILTER (WHERE NOT g), experiment.moments(num, den) FILTER (WHERE g) FROM users
        UNION ALL SELECT 'cuped_ratio', experiment.moments(num, den, pnum, pden) FILTER (WHERE NOT g),
                                        experiment.moments(num, den, pnum, pden) FILTER (WHERE g) FROM users) a,
       (VALUES ('two-sided'), ('greater'), ('less')) alts(alt),
       (VALUES (NULL::float8), (2000)) tunings(tuning)
 ORDER BY 1, 2, 3;

-- strata that cannot be estimated on their own (units in one arm only, one unit, no variance)
-- are merged into the largest stratum (br): the same as adding their moments to it
WITH s AS (SELECT * FROM strata ORDER BY country)
SELECT same(experiment.poststrat_ttest('welch',
                ARRAY[(SELECT c1 FROM s WHERE country = 'br'), (SELECT c1 FROM s WHERE country = 'de'),
                      (SELECT c1 FROM s WHERE country = 'us'), experiment.moments_from_sums(1, 5, 25), NULL],
                ARRAY[(SELECT t1 FROM s WHERE country = 'br'), (SELECT t1 FROM s WHERE country = 'de'),
                      (SELECT t1 FROM s WHERE country = 'us'), NULL, experiment.moments_from_sums(3, 21, 147)]),
            experiment.poststrat_ttest('welch',
                ARRAY[(SELECT c1 OPERATOR(experiment.+) experiment.moments_from_sums(1, 5, 25) FROM s WHERE country = 'br'),
                      (SELECT c1 FROM s WHERE country = 'de'), (SELECT c1 FROM s WHERE country = 'us')],
                ARRAY[(SELECT t1 OPERATOR(experiment.+) experiment.moments_from_sums(3, 21, 147) FROM s WHERE country = 'br'),
                      (SELECT t1 FROM s WHERE country = 'de'), (SELECT t1 FROM s WHERE country = 'us')])) AS merged_into_largest;
SELECT country, experiment.n(c1) + experiment.n(t1) AS units FROM strata ORDER BY 2 DESC LIMIT 1;
-- empty strata (NULL or n = 0) change nothing
SELECT same(experiment.poststrat_ttest('cuped', c2 || ARRAY[NULL::experiment.moments], t2 || ARRAY[NULL::experiment.moments]),
            experiment.poststrat_ttest('cuped', c2, t2)) AS null_stratum
  FROM arr;
-- the order of the strata does not matter
SELECT same(experiment.poststrat_ttest('ratio', cr, tr),
            experiment.poststrat_ttest('ratio', ARRAY[cr[3], cr[1], cr[2]], ARRAY[tr[3], tr[1], tr[2]]), 1e-13) AS order_free
  FROM arr;
-- a proportion stratum without conversions in an arm has no variance there: merged
SELECT same(experiment.poststrat_ttest('prop_ztest', cp || experiment.moments_from_sums(4, 0, 0), tp || experiment.moments_from_sums(5, 2, 2)),
            experiment.poststrat_ttest('prop_ztest', ARRAY[cp[1] OPERATOR(experiment.+) experiment.moments_from_sums(4, 0, 0), cp[2], cp[3]],
                                       ARRAY[tp[1] OPERATOR(experiment.+) experiment.moments_from_sums(5, 2, 2), tp[2], tp[3]])) AS merged
  FROM arr;
-- the largest stratum without an estimate of its own: the unstratified test
SELECT same(experiment.poststrat_ttest('welch', ARRAY[experiment.moments_from_sums(1000, 5000, 30000), c1[1]],
                                       ARRAY[NULL, t1[1]]),
            experiment.welch_ttest(experiment.moments_from_sums(1000, 5000, 30000) OPERATOR(experiment.+) c1[1], t1[1])) AS fallback
  FROM arr;

-- nothing to test: an empty arm, no units at all
\x on
SELECT * FROM r(experiment.poststrat_ttest('welch', ARRAY[experiment.moments_from_sums(2, 3, 5)], ARRAY[NULL::experiment.moments]));
SELECT * FROM r(experiment.poststrat_ttest('welch', ARRAY[NULL::experiment.moments, NULL], ARRAY[NULL::experiment.moments, NULL]));
\x off
-- NULL arguments: a NULL result
SELECT experiment.poststrat_ttest(NULL, c1, t1) IS NULL AS null_method,
       experiment.poststrat_ttest('welch', NULL, t1) IS NULL AS null_control,
       experiment.poststrat_ttest('welch', c1, NULL) IS NULL AS null_treatment,
       experiment.poststrat_ttest('welch', c1, t1, NULL) IS NULL AS null_alpha,
       experiment.poststrat_ttest('welch', c1, t1, 0.05, NULL) IS NULL AS null_alternative,
       experiment.poststrat_ttest('welch', c1, t1, 0.05, 'two-sided', NULL) IS NOT NULL AS null_tuning_is_fixed
  FROM arr;

-- invalid arguments
SELECT err($$SELECT experiment.poststrat_ttest('t-test', ARRAY[experiment.moments(1)], ARRAY[experiment.moments(2)])$$);
SELECT err($$SELECT experiment.poststrat_ttest('Welch', NULL, NULL)$$);
SELECT err($$SELECT experiment.poststrat_ttest('welch', ARRAY[experiment.moments(1)], ARRAY[experiment.moments(2), experiment.moments(3)])$$);
SELECT err($$SELECT experiment.poststrat_ttest('welch', ARRAY[]::experiment.moments[], ARRAY[]::experiment.moments[])$$);
SELECT err($$SELECT experiment.poststrat_ttest('welch', ARRAY[[experiment.moments(1)]], ARRAY[[experiment.moments(2)]])$$);
SELECT err($$SELECT experiment.poststrat_ttest('welch', ARRAY[experiment.moments(1), experiment.moments(1, 2)], ARRAY[experiment.moments(2), experiment.moments(3)])$$);
SELECT err($$SELECT experiment.poststrat_ttest('cuped', ARRAY[experiment.moments(1, 2)], ARRAY[experiment.moments(2)])$$);
SELECT err($$SELECT experiment.poststrat_ttest('ratio', ARRAY[experiment.moments(1, 2, 3, 4)], ARRAY[experiment.moments(2, 1)])$$);
SELECT err($$SELECT experiment.poststrat_ttest('cuped_ratio', ARRAY[experiment.moments(1, 2)], ARRAY[experiment.moments(2, 1)])$$);
SELECT err($$SELECT experiment.poststrat_ttest('prop_ztest', ARRAY[experiment.moments(0)], ARRAY[experiment.moments(3)])$$);
SELECT err($$SELECT experiment.poststrat_ttest('welch', ARRAY[experiment.moments(1)], ARRAY[experiment.moments(2)], 1.5)$$);
SELECT err($$SELECT experiment.poststrat_ttest('welch', ARRAY[experiment.moments(1)], ARRAY[experiment.moments(2)], 0.05, 'both')$$);
SELECT err($$SELECT experiment.poststrat_ttest('welch', ARRAY[experiment.moments(1)], ARRAY[experiment.moments(2)], 0.05, 'two-sided', 0)$$);
-- the arguments that are not NULL are checked even when the result is NULL
SELECT err($$SELECT experiment.poststrat_ttest('welch', NULL, ARRAY[experiment.moments(1, 2)])$$);
SELECT err($$SELECT experiment.poststrat_ttest('nope', NULL, NULL)$$);

-- the aggregate over rows of (stratum, arm, moments): the rows of a stratum and arm are merged,
-- the strata ordered by name; the same as the array form
CREATE TABLE rows_m AS
  SELECT country, g, experiment.moments(y, x) AS m FROM users GROUP BY country, g, i % 4;
SELECT same((SELECT experiment.poststrat_ttest('cuped', country, g, m) FROM rows_m),
            (SELECT experiment.poststrat_ttest('cuped', c2, t2) FROM arr)) AS aggregate_is_array_form;
-- rows with a NULL arm or moments are skipped; NULL is a stratum of its own; no rows: NULL
SELECT same((SELECT experiment.poststrat_ttest('welch', s, g, m)
               FROM (VALUES ('a', false, experiment.moments_from_sums(10, 50, 300)),
                            ('a', true, experiment.moments_from_sums(12, 70, 450)),
                            (NULL, false, experiment.moments_from_sums(20, 200, 2100)),
                            (NULL, true, experiment.moments_from_sums(18, 190, 2100)),
                            ('a', NULL, experiment.moments_from_sums(5, 5, 5)),
                            ('a', true, NULL)) v(s, g, m)),
            experiment.poststrat_ttest('welch', ARRAY[experiment.moments_from_sums(10, 50, 300), experiment.moments_from_sums(20, 200, 2100)],
                                       ARRAY[experiment.moments_from_sums(12, 70, 450), experiment.moments_from_sums(18, 190, 2100)])) AS nulls;
SELECT experiment.poststrat_ttest('welch', country, g, NULL::experiment.moments) IS NULL AS no_moments,
       (SELECT experiment.poststrat_ttest('welch', country, g, m) FROM rows_m WHERE false) IS NULL AS no_rows
  FROM (SELECT 'us' AS country, true AS g) x;
SELECT err($$SELECT experiment.poststrat_ttest(CASE WHEN g THEN 'welch' ELSE 'cuped' END, country, g, m) FROM stats_poststrat.rows_m$$);
SELECT err($$SELECT experiment.poststrat_ttest('welch', country, g, m) FROM stats_poststrat.rows_m$$);

-- in a parallel plan (partial aggregates combined), the same result
CREATE TABLE many AS
  SELECT r.country, r.g, r.m FROM rows_m r, generate_series(1, 20) k;
SELECT same((SELECT experiment.poststrat_ttest('cuped', country, g, m) FROM many),
            (SELECT experiment.poststrat_ttest('cuped', array_agg(c ORDER BY country), array_agg(t ORDER BY country))
               FROM (SELECT country, experiment.merge(m) FILTER (WHERE NOT g) AS c, experiment.merge(m) FILTER (WHERE g) AS t
                       FROM many GROUP BY country) s), 1e-11) AS serial;
SET parallel_setup_cost = 0;
SET parallel_tuple_cost = 0;
SET min_parallel_table_scan_size = 0;
SET max_parallel_workers_per_gather = 2;
SET parallel_leader_participation = off;
EXPLAIN (COSTS OFF) SELECT experiment.poststrat_ttest('cuped', country, g, m) FROM many;
SELECT same((SELECT experiment.poststrat_ttest('cuped', country, g, m) FROM many),
            (SELECT experiment.poststrat_ttest('cuped', array_agg(c ORDER BY country), array_agg(t ORDER BY country))
               FROM (SELECT country, experiment.merge(m) FILTER (WHERE NOT g) AS c, experiment.merge(m) FILTER (WHERE g) AS t
                       FROM many GROUP BY country) s), 1e-11) AS parallel;
RESET parallel_setup_cost;
RESET parallel_tuple_cost;
RESET min_parallel_table_scan_size;
RESET max_parallel_workers_per_gather;
RESET parallel_leader_participation;

-- crafted states fed to the support functions: errors or NULLs, never a crash
SELECT experiment.poststrat_final(NULL) IS NULL AS null_state,
       experiment.poststrat_final(ROW('welch', '{}', '{}', '{}')::experiment.poststrat_state) IS NULL AS empty_state;
SELECT (experiment.poststrat_final(ROW('welch', '{a,b}', ARRAY[experiment.moments_from_sums(5, 10, 30)],
                                       '{}')::experiment.poststrat_state)).n_control AS short_arrays;
SELECT err($$SELECT experiment.poststrat_final(ROW('nope', '{a}', ARRAY[experiment.moments_from_sums(5, 10, 30)], ARRAY[experiment.moments_from_sums(5, 10, 30)])::experiment.poststrat_state)$$);
SELECT err($$SELECT experiment.poststrat_combine(ROW('welch', '{a}', ARRAY[experiment.moments_from_sums(5, 10, 30)], '{NULL}')::experiment.poststrat_state,
                                                 ROW('cuped', '{a}', '{NULL}', '{NULL}')::experiment.poststrat_state)$$);
SELECT err($$SELECT experiment.poststrat_combine(ROW('welch', '{a}', ARRAY[experiment.moments_from_sums(5, 10, 30)], '{NULL}')::experiment.poststrat_state,
                                                 ROW('welch', '{a}', ARRAY[experiment.moments(1, 2)], '{NULL}')::experiment.poststrat_state)$$);
