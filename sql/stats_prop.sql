-- Two-proportion z-test: pooled z, Wald interval, delta-method lift, NULL
-- results and every invalid argument.
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS experiment;
CREATE SCHEMA stats_prop;
RESET client_min_messages;
SET search_path = stats_prop, regress_support, public;
\set ECHO none
\i test/regress_support.sql
\set ECHO all

\x on
-- 10.0% vs 13.0% of 1000 each
SELECT * FROM r(experiment.prop_ztest(100, 1000, 130, 1000));
-- alpha = 0.1 narrows the intervals; z and p stay
SELECT * FROM r(experiment.prop_ztest(100, 1000, 130, 1000, 0.1));
-- unequal arms, a drop
SELECT * FROM r(experiment.prop_ztest(4812, 50000, 2301, 25000));

-- undefined results are NULL
-- an empty control arm
SELECT * FROM r(experiment.prop_ztest(0, 0, 3, 10));
-- no successes anywhere: nothing to test, no lift
SELECT * FROM r(experiment.prop_ztest(0, 100, 0, 100));
-- no control successes: z and the interval exist, the lift does not
SELECT * FROM r(experiment.prop_ztest(0, 100, 5, 100));
-- every unit converts in both arms
SELECT * FROM r(experiment.prop_ztest(100, 100, 50, 50));
\x off
SELECT experiment.prop_ztest(NULL, 100, 5, 100) IS NULL AS null_in_null_out;

-- invalid arguments
SELECT err($$SELECT experiment.prop_ztest(-1, 100, 5, 100)$$);
SELECT err($$SELECT experiment.prop_ztest(1, -100, 5, 100)$$);
SELECT err($$SELECT experiment.prop_ztest(1, 100, -5, 100)$$);
SELECT err($$SELECT experiment.prop_ztest(1, 100, 5, -100)$$);
SELECT err($$SELECT experiment.prop_ztest(101, 100, 5, 100)$$);
SELECT err($$SELECT experiment.prop_ztest(1, 100, 5, 4)$$);
SELECT err($$SELECT experiment.prop_ztest(1, 100, 5, 100, 0)$$);
SELECT err($$SELECT experiment.prop_ztest(1, 100, 5, 100, 1)$$);
SELECT err($$SELECT experiment.prop_ztest(1, 100, 5, 100, 'Infinity')$$);

SET client_min_messages = warning;
DROP SCHEMA stats_prop CASCADE;
