-- Ratio metrics: ratio_ttest with delta-method variances, NULL results and
-- every invalid argument.
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS experiment;
CREATE SCHEMA stats_ratio;
RESET client_min_messages;
SET search_path = stats_ratio, regress_support, public;
\set ECHO none
\i test/regress_support.sql
\set ECHO all

-- per user: clicks (numerator) and sessions (denominator)
CREATE TABLE users AS
  SELECT i, i % 2 = 0 AS g, 1 + i % 5 AS sessions,
         (1 + i % 5) * (0.3 + 0.1 * sin(i)) * (1 + 0.1 * (i % 2 = 0)::int) + (i % 3) * 0.2 AS clicks
    FROM generate_series(1, 300) i;
CREATE TABLE arms AS
  SELECT experiment.moments(clicks, sessions) FILTER (WHERE NOT g) AS c,
         experiment.moments(clicks, sessions) FILTER (WHERE g) AS t
    FROM users;

\x on
SELECT * FROM r((SELECT experiment.ratio_ttest(c, t) FROM arms));
\x off

-- arm values are sum(clicks) / sum(sessions)
SELECT abs(mean_control - (SELECT sum(clicks) / sum(sessions) FROM users WHERE NOT g)) < 1e-14 AS control_ratio,
       abs(mean_treatment - (SELECT sum(clicks) / sum(sessions) FROM users WHERE g)) < 1e-14 AS treatment_ratio
  FROM experiment.ratio_ttest((SELECT c FROM arms), (SELECT t FROM arms));
-- the statistic is the delta-method one, written out with the built-in aggregates
WITH a AS (SELECT g, count(*) AS n, avg(clicks) AS mn, avg(sessions) AS md, var_samp(clicks) AS vn,
                  var_samp(sessions) AS vd, covar_samp(clicks, sessions) AS cv
             FROM users GROUP BY g),
     v AS (SELECT g, n, mn / md AS r, vn / md ^ 2 + vd * mn ^ 2 / md ^ 4 - 2 * cv * mn / md ^ 3 AS var FROM a)
SELECT abs(x.statistic - (t.r - c.r) / sqrt(c.var / c.n + t.var / t.n)) < 1e-10 * abs(x.statistic) AS delta_method
  FROM v c, v t, experiment.ratio_ttest((SELECT c FROM arms), (SELECT t FROM arms)) x
 WHERE NOT c.g AND t.g;

-- a zero control denominator: no ratio, nothing to test
\x on
SELECT * FROM r((SELECT experiment.ratio_ttest(experiment.moments(n, d) FILTER (WHERE NOT g),
                                               experiment.moments(n, d) FILTER (WHERE g))
                   FROM (VALUES (false, 0::float8, 0::float8), (false, 1, 0), (true, 1, 1), (true, 2, 1), (true, 3, 2)) v(g, n, d)));
\x off

-- invalid arguments
SELECT err($$SELECT experiment.ratio_ttest(experiment.moments_from_sums(3, 6, 14), experiment.moments_from_sums(3, 6, 14, 3, 5, 7))$$);
SELECT err($$SELECT experiment.ratio_ttest(experiment.moments_from_sums(3, 6, 14, 3, 5, 7), experiment.moments_from_sums(3, 6, 14))$$);
SELECT err($$SELECT experiment.ratio_ttest(experiment.moments_from_sums(3, 6, 14, 3, 5, 7), experiment.moments_from_sums(3, 6, 14, 3, 5, 7), 0)$$);

SET client_min_messages = warning;
DROP SCHEMA stats_ratio CASCADE;
