-- Bandit weights (src/bandit.c): known values of the best-arm and second-arm
-- probabilities (two arms: Phi of the standardised difference; identical arms:
-- 1/k), the top-two weights and their floor, symmetry under lower_is_better,
-- and every invalid argument.
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS experiment;
RESET client_min_messages;

-- two arms: P(arm 2 best) = Phi((m2 - m1) / sqrt(v1 + v2)) = Phi(1) for these
SELECT abs(p[2] - 0.8413447460685429) < 1e-9 AS two_arms_phi,
       abs(p[1] + p[2] - 1) < 1e-14 AS sums_to_1
FROM (SELECT experiment.best_arm_probabilities('{0, 5}', '{9, 16}') AS p) t;
-- identical arms: 1/k each, first and second
SELECT array_agg(round(x::numeric, 9)) FROM unnest(experiment.best_arm_probabilities('{1,1,1,1}', '{2,2,2,2}')) x;
SELECT array_agg(round(x::numeric, 9)) FROM unnest(experiment.second_arm_probabilities('{1,1,1,1}', '{2,2,2,2}')) x;
-- with two arms the second place is the other arm's first place
SELECT bool_and(abs(s - f) < 1e-12) AS second_is_other_first
FROM unnest(experiment.second_arm_probabilities('{0.1, 0.3}', '{0.04, 0.01}'),
            experiment.best_arm_probabilities('{0.3, 0.1}', '{0.01, 0.04}')) AS t(s, f);
-- lower_is_better is the same as negated means
SELECT experiment.best_arm_probabilities('{1, 2, 3}', '{1, 1, 4}', true)
     = experiment.best_arm_probabilities('{-1, -2, -3}', '{1, 1, 4}') AS lower_is_negated;
-- the floor: f + (1 - k f) w, summing to 1; min_weight 1/k gives equal weights; with two arms
-- every draw ranks each arm first or second, so top-two weights are 1/2 whatever the data
SELECT array_agg(round(x::numeric, 6)) FROM unnest(experiment.top_two_weights('{0, 100}', '{1, 1}', false, 0.1)) x;
SELECT array_agg(round(x::numeric, 12)) FROM unnest(experiment.top_two_weights('{0, 1, 7}', '{1, 1, 1}', false, 1.0 / 3)) x;
SELECT abs((SELECT sum(x) FROM unnest(experiment.top_two_weights('{0.1, 0.2, 0.15, 0.3, 0.05}', '{0.01, 0.02, 0.01, 0.05, 0.02}', false, 0.02)) x) - 1) < 1e-14 AS sums_to_1;
-- NULL in, NULL out
SELECT experiment.best_arm_probabilities(NULL, '{1,1}') IS NULL AS null_means,
       experiment.top_two_weights('{1,2}', '{1,1}', false, NULL) IS NULL AS null_floor;
-- invalid arguments
SELECT experiment.best_arm_probabilities('{1,2}', '{1}');
SELECT experiment.best_arm_probabilities('{1}', '{1}');
SELECT experiment.best_arm_probabilities('{}', '{}');
SELECT experiment.best_arm_probabilities('{1,2}', '{1,0}');
SELECT experiment.best_arm_probabilities('{1,2}', '{1,-1}');
SELECT experiment.best_arm_probabilities('{1,NaN}', '{1,1}');
SELECT experiment.best_arm_probabilities('{1,2}', '{1,Infinity}');
SELECT experiment.best_arm_probabilities('{1,NULL}', '{1,1}');
SELECT experiment.best_arm_probabilities('{{1,2},{3,4}}', '{1,1,1,1}');
SELECT experiment.best_arm_probabilities(array_fill(0::float8, ARRAY[101]), array_fill(1::float8, ARRAY[101]));
SELECT experiment.top_two_weights('{1,2,3}', '{1,1,1}', false, 0.34);
SELECT experiment.top_two_weights('{1,2,3}', '{1,1,1}', false, -0.01);
SELECT experiment.top_two_weights('{1,2,3}', '{1,1,1}', false, 'NaN');
