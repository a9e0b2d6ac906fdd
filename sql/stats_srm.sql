-- Sample ratio mismatch: srm_chisq, its NULL results and every invalid
-- argument.
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS experiment;
CREATE SCHEMA stats_srm;
RESET client_min_messages;
SET search_path = stats_srm, regress_support, public;
\set ECHO none
\i test/regress_support.sql
\set ECHO all

SELECT experiment.srm_chisq('{5000,5000}') AS exact_split,
       round(experiment.srm_chisq('{5100,4900}')::numeric, 12) AS p_50_50,
       round(experiment.srm_chisq('{5100,4900}', '{1,1}')::numeric, 12) AS p_equal_weights,
       round(experiment.srm_chisq('{5100,4900}', '{0.5,0.5}')::numeric, 12) AS p_half_weights;
-- 20/80 split, three arms, a real mismatch
SELECT round(experiment.srm_chisq('{2050,7950}', '{0.2,0.8}')::numeric, 12) AS p_20_80,
       round(experiment.srm_chisq('{1000,1010,1090}')::numeric, 12) AS p_three,
       to_char(experiment.srm_chisq('{50000,51500}'), '9.9999999EEEE') AS p_mismatch;
-- an arm with weight 0: empty is fine and drops out; anything in it is impossible
SELECT round(experiment.srm_chisq('{5100,4900,0}', '{1,1,0}')::numeric, 12) AS zero_weight_empty,
       experiment.srm_chisq('{5100,4900,1}', '{1,1,0}') AS zero_weight_used;
-- NULL results: no units, one arm, NULL counts
SELECT experiment.srm_chisq('{0,0}') IS NULL AS no_units,
       experiment.srm_chisq('{17}') IS NULL AS one_arm,
       experiment.srm_chisq('{5,0,0}', '{1,0,0}') IS NULL AS one_weighted_arm,
       experiment.srm_chisq(NULL) IS NULL AS null_counts,
       experiment.srm_chisq(NULL, '{1,2}') IS NULL AS null_counts_with_weights;

-- invalid arguments
SELECT err($$SELECT experiment.srm_chisq('{}')$$);
SELECT err($$SELECT experiment.srm_chisq('{1,NULL,3}')$$);
SELECT err($$SELECT experiment.srm_chisq('{10,-1}')$$);
SELECT err($$SELECT experiment.srm_chisq('{{1,2},{3,4}}')$$);
SELECT err($$SELECT experiment.srm_chisq('{10,10}', '{1,1,1}')$$);
SELECT err($$SELECT experiment.srm_chisq('{10,10}', '{}')$$);
SELECT err($$SELECT experiment.srm_chisq('{10,10}', '{1,-1}')$$);
SELECT err($$SELECT experiment.srm_chisq('{10,10}', '{1,NaN}')$$);
SELECT err($$SELECT experiment.srm_chisq('{10,10}', '{1,Infinity}')$$);
SELECT err($$SELECT experiment.srm_chisq('{10,10}', '{1,NULL}')$$);
SELECT err($$SELECT experiment.srm_chisq('{10,10}', '{0,0}')$$);
SELECT err($$SELECT experiment.srm_chisq('{10,10}', '{1e308,1e308}')$$);
SELECT err($$SELECT experiment.srm_chisq('{10,10}', '{{1},{1}}')$$);

SET client_min_messages = warning;
DROP SCHEMA stats_srm CASCADE;
