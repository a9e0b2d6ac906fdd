-- Sample size, minimum detectable effect and power: the known value, the
-- inverses agreeing with each other, NULL results and every invalid argument.
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS experiment;
CREATE SCHEMA stats_power;
RESET client_min_messages;
SET search_path = stats_power, regress_support, public;
\set ECHO none
\i test/regress_support.sql
\set ECHO all

-- 60% -> 62% needs 9336 per variant (not the often-quoted ~4,700)
SELECT experiment.required_n(0.60, 0.02) AS n,
       experiment.required_n(0.62, -0.02) AS n_drop,
       experiment.required_n(0.60, 0.02, 0.05, 0.8) AS n_explicit,
       experiment.required_n(0.60, 0.02, 0.01, 0.9) AS n_strict,
       experiment.required_n(0.10, 0.01) AS n_10pct;
-- means: 2 sigma^2 (z_0.975 + z_0.8)^2 / mde^2
SELECT experiment.required_n_mean(1, 0.1) AS n_mean,
       experiment.required_n_mean(25, 2, 0.05, 0.9) AS n_mean_90,
       experiment.required_n_mean(1, -0.1) AS n_mean_drop;
-- mde and power invert required_n
SELECT round(experiment.mde(9336, 0.60)::numeric, 12) AS mde,
       experiment.mde(9336, 0.60) < 0.02 AS mde_below_asked,
       experiment.required_n(0.60, experiment.mde(9336, 0.60)) AS n_back,
       round(experiment.power(9336, 0.60, 0.02)::numeric, 12) AS power,
       experiment.power(9336, 0.60, 0.02) >= 0.8 AS power_reached,
       abs(experiment.power(9336, 0.60, experiment.mde(9336, 0.60)) - 0.8) < 1e-12 AS power_back,
       round(experiment.power(9336, 0.62, -0.02)::numeric, 12) AS power_drop,
       round(experiment.mde(100000, 0.05, 0.01, 0.95)::numeric, 12) AS mde_strict;
-- power grows with n
SELECT n, round(experiment.power(n, 0.1, 0.01)::numeric, 6) AS power
  FROM unnest('{1000,5000,14751,30000}'::bigint[]) n;
-- no rise below 1 - baseline is detectable with one unit: NULL
SELECT experiment.mde(1, 0.5) IS NULL AS mde_null;

-- invalid arguments
SELECT err($$SELECT experiment.required_n(0, 0.02)$$);
SELECT err($$SELECT experiment.required_n(1, 0.02)$$);
SELECT err($$SELECT experiment.required_n('NaN', 0.02)$$);
SELECT err($$SELECT experiment.required_n(0.6, 0)$$);
SELECT err($$SELECT experiment.required_n(0.6, 0.4)$$);
SELECT err($$SELECT experiment.required_n(0.6, -0.7)$$);
SELECT err($$SELECT experiment.required_n(0.6, 0.02, 0)$$);
SELECT err($$SELECT experiment.required_n(0.6, 0.02, 1)$$);
SELECT err($$SELECT experiment.required_n(0.6, 0.02, 0.05, 0)$$);
SELECT err($$SELECT experiment.required_n(0.6, 0.02, 0.05, 1)$$);
SELECT err($$SELECT experiment.required_n(0.5, 1e-12)$$);
SELECT err($$SELECT experiment.required_n_mean(0, 0.1)$$);
SELECT err($$SELECT experiment.required_n_mean(-1, 0.1)$$);
SELECT err($$SELECT experiment.required_n_mean(1, 0)$$);
SELECT err($$SELECT experiment.required_n_mean(1, 0.1, 1.5)$$);
SELECT err($$SELECT experiment.required_n_mean(1, 0.1, 0.05, -0.2)$$);
SELECT err($$SELECT experiment.mde(0, 0.5)$$);
SELECT err($$SELECT experiment.mde(-10, 0.5)$$);
SELECT err($$SELECT experiment.mde(1000, 1.5)$$);
SELECT err($$SELECT experiment.mde(1000, 0.5, 0)$$);
SELECT err($$SELECT experiment.mde(1000, 0.5, 0.05, 1)$$);
SELECT err($$SELECT experiment.power(0, 0.5, 0.1)$$);
SELECT err($$SELECT experiment.power(1000, 0, 0.1)$$);
SELECT err($$SELECT experiment.power(1000, 0.5, 0)$$);
SELECT err($$SELECT experiment.power(1000, 0.5, 0.5)$$);
SELECT err($$SELECT experiment.power(1000, 0.5, 0.1, 1)$$);

SET client_min_messages = warning;
DROP SCHEMA stats_power CASCADE;
