-- CUPED: cuped_ttest, cuped_theta, cuped_adjust (values and moments), the
-- var(x) = 0 fallback, NULL results and every invalid argument.
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS experiment;
CREATE SCHEMA stats_cuped;
RESET client_min_messages;
SET search_path = stats_cuped, regress_support, public;
\set ECHO none
\i test/regress_support.sql
\set ECHO all

-- a and b agree to a relative error of 1e-10 (or both NULL)
CREATE FUNCTION near(a float8, b float8) RETURNS boolean LANGUAGE sql AS $$
  SELECT (a IS NULL AND b IS NULL) OR abs(a - b) <= 1e-10 * greatest(abs(a), abs(b))
$$;

-- y = revenue in the experiment, x = the same unit's revenue before it
CREATE TABLE units AS
  SELECT i, i % 2 = 0 AS g,
         20 + 10 * sin(i * 0.7) + (i % 11) AS x,
         5 + 0.8 * (20 + 10 * sin(i * 0.7) + (i % 11)) + 3 * cos(i * 1.3) + (i % 2 = 0)::int * 0.6 AS y
    FROM generate_series(1, 400) i;
CREATE TABLE arms AS
  SELECT experiment.moments(y, x) FILTER (WHERE NOT g) AS c,
         experiment.moments(y, x) FILTER (WHERE g) AS t
    FROM units;

\x on
SELECT * FROM r((SELECT experiment.cuped_ttest(c, t) FROM arms));
-- the plain Welch test of y for comparison: same means, wider interval
SELECT * FROM r((SELECT experiment.welch_ttest(g, y) FROM units));
\x off

-- theta is pooled over both arms
SELECT round(experiment.cuped_theta(c OPERATOR(experiment.+) t)::numeric, 12) AS theta,
       near(experiment.cuped_theta(c OPERATOR(experiment.+) t),
            (SELECT covar_samp(y, x) / var_samp(x) FROM units)) AS is_cov_over_var
  FROM arms;

-- the test equals Welch on per-row adjusted values with the pooled theta
-- (means aside, which cuped_ttest reports unadjusted)
WITH p AS (SELECT experiment.cuped_theta(c OPERATOR(experiment.+) t) AS theta,
                  experiment.mean(c OPERATOR(experiment.+) t, 2) AS mean_x FROM arms),
     a AS (SELECT (experiment.welch_ttest(g, experiment.cuped_adjust(y, x, p.theta, p.mean_x))).*
             FROM units, p),
     b AS (SELECT (experiment.cuped_ttest(c, t)).* FROM arms)
SELECT near(a.diff, b.diff) AS diff, near(a.diff_lower, b.diff_lower) AS lower,
       near(a.diff_upper, b.diff_upper) AS upper, near(a.statistic, b.statistic) AS t,
       near(a.df, b.df) AS df, near(a.p_value, b.p_value) AS p,
       NOT near(a.mean_control, b.mean_control) AS means_unadjusted
  FROM a, b;

-- cuped_adjust(moments) gives exactly the moments of the adjusted values
WITH p AS (SELECT experiment.cuped_theta(c OPERATOR(experiment.+) t) AS theta,
                  experiment.mean(c OPERATOR(experiment.+) t, 2) AS mean_x FROM arms),
     m AS (SELECT experiment.cuped_adjust(arms.t, p.theta, p.mean_x) AS adj FROM arms, p),
     v AS (SELECT experiment.moments(experiment.cuped_adjust(y, x, p.theta, p.mean_x)) AS direct
             FROM units, p WHERE g)
SELECT experiment.n(adj) = experiment.n(direct) AS n, near(experiment.mean(adj), experiment.mean(direct)) AS mean,
       near(experiment.variance(adj), experiment.variance(direct)) AS variance,
       (SELECT count(*) FROM regexp_matches(adj::text, '\[', 'g')) = 3 AS univariate
  FROM m, v;
-- and Welch on adjusted moments is the CUPED test (means aside)
WITH p AS (SELECT experiment.cuped_theta(c OPERATOR(experiment.+) t) AS theta,
                  experiment.mean(c OPERATOR(experiment.+) t, 2) AS mean_x FROM arms),
     a AS (SELECT (experiment.welch_ttest(experiment.cuped_adjust(c, p.theta, p.mean_x),
                                          experiment.cuped_adjust(t, p.theta, p.mean_x))).* FROM arms, p),
     b AS (SELECT (experiment.cuped_ttest(c, t)).* FROM arms)
SELECT near(a.diff, b.diff) AND near(a.statistic, b.statistic) AND near(a.p_value, b.p_value)
       AND near(a.diff_lower, b.diff_lower) AS same
  FROM a, b;

-- the value form
SELECT experiment.cuped_adjust(10, 4, 0.5, 3) AS adjusted;
-- the moments form at the edges: n = 0 and n = 1
SELECT experiment.cuped_adjust('{"version":1,"n":0,"mean":[0,0],"comoment":[[0,0],[0,0]]}', 2, 5)::text AS empty,
       experiment.cuped_adjust('{"version":1,"n":1,"mean":[7,3],"comoment":[[0,0],[0,0]]}', 2, 5)::text AS one;

-- var(x) = 0: the plain Welch test
WITH a AS (SELECT (experiment.cuped_ttest(experiment.moments(y, 1) FILTER (WHERE NOT g),
                                          experiment.moments(y, 1) FILTER (WHERE g))).* FROM units),
     b AS (SELECT (experiment.welch_ttest(g, y)).* FROM units)
SELECT near(a.diff, b.diff) AND near(a.diff_lower, b.diff_lower) AND near(a.statistic, b.statistic)
       AND near(a.df, b.df) AND near(a.p_value, b.p_value) AND near(a.lift_upper, b.lift_upper)
       AND near(a.lift_p_value, b.lift_p_value) AS plain_welch
  FROM a, b;
SELECT experiment.cuped_theta(experiment.moments(y, 1)) IS NULL AS theta_null_var_x_zero FROM units;
SELECT experiment.cuped_theta(experiment.moments(y, x)) IS NULL AS theta_null_n_1 FROM units WHERE i = 1;

-- NULL results: an arm of one unit
\x on
SELECT * FROM r((SELECT experiment.cuped_ttest(experiment.moments(y, x) FILTER (WHERE i = 1),
                                               experiment.moments(y, x) FILTER (WHERE g)) FROM units));
\x off

-- invalid arguments
SELECT err($$SELECT experiment.cuped_ttest(experiment.moments_from_sums(3, 6, 14), experiment.moments_from_sums(3, 6, 14, 3, 5, 7))$$);
SELECT err($$SELECT experiment.cuped_ttest(experiment.moments_from_sums(3, 6, 14, 3, 5, 7), experiment.moments_from_sums(3, 6, 14))$$);
SELECT err($$SELECT experiment.cuped_ttest(experiment.moments(y, y, y, y), experiment.moments(y, y, y, y)) FROM generate_series(1, 3) y$$);
SELECT err($$SELECT experiment.cuped_ttest(experiment.moments_from_sums(3, 6, 14, 3, 5, 7), experiment.moments_from_sums(3, 6, 14, 3, 5, 7), 2)$$);
SELECT err($$SELECT experiment.cuped_theta(experiment.moments_from_sums(3, 6, 14))$$);
SELECT err($$SELECT experiment.cuped_adjust(experiment.moments_from_sums(3, 6, 14), 1, 0)$$);
SELECT err($$SELECT experiment.cuped_adjust(experiment.moments_from_sums(3, 6, 14, 3, 5, 7), 'NaN', 0)$$);
SELECT err($$SELECT experiment.cuped_adjust(experiment.moments_from_sums(3, 6, 14, 3, 5, 7), 1, 'Infinity')$$);

SET client_min_messages = warning;
DROP SCHEMA stats_cuped CASCADE;
