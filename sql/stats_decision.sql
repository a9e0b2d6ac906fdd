-- decision statistics: one-sided and sequential tests, Bayesian results, multiple testing,
-- group-sequential alpha spending; every bad value of a new parameter is a 22023 naming it
\set ECHO none
\i test/regress_support.sql
\set ECHO all

-- one-sided intervals are open on one side; the p-values halve on the favourable side
SELECT alt, round(diff_lower::numeric, 6) AS diff_lower, round(diff_upper::numeric, 6) AS diff_upper,
       round(p_value::numeric, 6) AS p_value, round(lift_upper::numeric, 6) AS lift_upper,
       round(diff_se::numeric, 8) AS diff_se, round(lift_se::numeric, 8) AS lift_se
FROM unnest(ARRAY['two-sided', 'greater', 'less']) alt,
     LATERAL experiment.prop_ztest(5800, 10000, 5980, 10000, alternative => alt);

-- sequential: wider intervals, larger p-values, df NULL (normal); p <= alpha exactly when 0 is excluded
SELECT tuning, round(diff_lower::numeric, 6) AS diff_lower, round(diff_upper::numeric, 6) AS diff_upper,
       round(p_value::numeric, 6) AS p_value, df IS NULL AS normal,
       (p_value <= 0.05) = (diff_lower > 0 OR diff_upper < 0) AS consistent
FROM unnest(ARRAY[NULL, 2000, 20000, 200000]::float8[]) tuning,
     LATERAL experiment.prop_ztest(5800, 10000, 5980, 10000, sequential_tuning => tuning);
SELECT a, alt, (p_value <= a) = CASE alt WHEN 'greater' THEN diff_lower > 0 ELSE diff_upper < 0 END AS consistent
FROM unnest(ARRAY[0.01, 0.05, 0.1, 0.2]::float8[]) a, unnest(ARRAY['greater', 'less']) alt,
     LATERAL experiment.prop_ztest(5800, 10000, 5960, 10000, a, alt, 20000) t
ORDER BY a, alt;

-- every test takes the knobs; NULL arguments give NULL, after the others are checked
SELECT (experiment.welch_ttest(experiment.moments_from_sums(10, 10, 20), experiment.moments_from_sums(10, 15, 30),
                               0.05, 'less', 1000)).diff_lower;
SELECT (experiment.cuped_ttest(NULL, NULL, 0.05, 'greater')).p_value IS NULL AS null_input;
SELECT regress_support.err($$SELECT experiment.welch_ttest(NULL, NULL, alpha => 2)$$);

-- bad values name the argument
SELECT regress_support.err($$SELECT experiment.prop_ztest(1, 10, 2, 10, alternative => 'both')$$);
SELECT regress_support.err($$SELECT experiment.prop_ztest(1, 10, 2, 10, sequential_tuning => 0)$$);
SELECT regress_support.err($$SELECT experiment.prop_ztest(1, 10, 2, 10, sequential_tuning => -5)$$);
SELECT regress_support.err($$SELECT experiment.prop_ztest(1, 10, 2, 10, sequential_tuning => 'Infinity')$$);
SELECT regress_support.err($$SELECT experiment.ratio_ttest(experiment.moments_from_sums(3, 6, 14, 3, 5, 7), experiment.moments_from_sums(3, 6, 14, 3, 5, 7), 0.6, 'greater', 100)$$);
SELECT regress_support.err($$SELECT experiment.bayesian(experiment.prop_ztest(1, 10, 2, 10), prior_variance => 0)$$);
SELECT regress_support.err($$SELECT experiment.bayesian(experiment.prop_ztest(1, 10, 2, 10), prior_variance => -1)$$);
SELECT regress_support.err($$SELECT experiment.bayesian(experiment.prop_ztest(1, 10, 2, 10), alpha => 1)$$);
SELECT regress_support.err($$SELECT experiment.bayesian(experiment.prop_ztest(1, 10, 2, 10), prior_mean => 'NaN')$$);
SELECT regress_support.err($$SELECT experiment.p_adjust(ARRAY[0.1, 0.2], 'fdr')$$);
SELECT regress_support.err($$SELECT experiment.p_adjust(ARRAY[0.1, 1.2], 'holm')$$);
SELECT regress_support.err($$SELECT experiment.p_adjust(ARRAY[0.1, 'NaN'], 'holm')$$);
SELECT regress_support.err($$SELECT experiment.p_adjust(p, 'fdr') OVER () FROM (VALUES (0.1)) v(p)$$);
SELECT regress_support.err($$SELECT experiment.p_adjust(p, NULL) OVER () FROM (VALUES (0.1)) v(p)$$);
SELECT regress_support.err($$SELECT experiment.adjusted_interval(0.1, 2)$$);
SELECT regress_support.err($$SELECT experiment.p_adjust(p, m) OVER () FROM (VALUES (0.1, 'holm'), (0.2, 'bh')) v(p, m)$$);
SELECT regress_support.err($$SELECT experiment.prop_ztest(-1, 10, 2, 10, NULL)$$);
SELECT regress_support.err($$SELECT experiment.prop_ztest(1, 10, 2, 10, 1.5, NULL)$$);
SELECT experiment.prop_ztest(1, 10, 2, 10, NULL) IS NULL AS null_alpha_is_null;
SELECT * FROM experiment.adjusted_interval(0, 0.3);
SELECT regress_support.err($$SELECT experiment.gst_alpha('{0.5, 0.4, 1}', 0.05)$$);
SELECT regress_support.err($$SELECT experiment.gst_alpha('{0, 0.5, 1}', 0.05)$$);
SELECT regress_support.err($$SELECT experiment.gst_alpha('{-0.2, 1}', 0.05)$$);
SELECT regress_support.err($$SELECT experiment.gst_alpha('{0.5, 1}', 0.05, 3)$$);
SELECT regress_support.err($$SELECT experiment.gst_alpha('{0.5, 1}', 0.05, 2, 0)$$);
SELECT regress_support.err($$SELECT experiment.gst_alpha('{}', 0.05)$$);
SELECT regress_support.err($$SELECT experiment.gst_alpha('{0.5, NULL}', 0.05)$$);

SELECT regress_support.err($$SELECT experiment.required_n(0.6, 0.02, variations => 1)$$);
SELECT regress_support.err($$SELECT experiment.power(1000, 0.6, 0.02, sequential_tuning => 0)$$);
SELECT regress_support.err($$SELECT experiment.mde(1000, 0.6, variations => 0)$$);

-- planning: more arms (Bonferroni) and the sequential test need more units; power falls, MDE grows
SELECT experiment.required_n(0.6, 0.02) AS ab, experiment.required_n(0.6, 0.02, variations => 3) AS abc,
       experiment.required_n(0.6, 0.02, sequential_tuning => 18672) AS sequential,
       round(experiment.power(9336, 0.6, 0.02)::numeric, 4) AS power_fixed,
       round(experiment.power(9336, 0.6, 0.02, sequential_tuning => 18672)::numeric, 4) AS power_sequential,
       round(experiment.mde(9336, 0.6, sequential_tuning => 18672)::numeric, 5) AS mde_sequential,
       experiment.required_n_mean(1, 0.1, variations => 4) AS mean_abcd;

-- Bayesian: a flat prior reproduces the test's estimate; a proper prior shrinks it
SELECT round(estimate::numeric, 6) AS estimate, round(chance_to_win::numeric, 6) AS chance_to_win,
       round(risk_control::numeric, 8) AS risk_control, round(risk_treatment::numeric, 8) AS risk_treatment
FROM experiment.prop_ztest(5800, 10000, 5980, 10000) t,
     LATERAL (SELECT (experiment.bayesian(t, 0, v)).* FROM unnest(ARRAY[NULL, 0.01, 0.0001]::float8[]) v) b;
SELECT (experiment.bayesian(experiment.prop_ztest(0, 10, 0, 10))).estimate IS NULL AS undefined_is_null;

-- multiple testing: array and window forms agree; NULLs stay in place
SELECT experiment.p_adjust(ARRAY[0.01, NULL, 0.04, 0.03, 0.005], m), m FROM unnest('{bonferroni,holm,bh,by}'::text[]) m;
SELECT g, p, round(experiment.p_adjust(p, 'holm') OVER (PARTITION BY g)::numeric, 6) AS holm
FROM (VALUES (1, 0.01), (1, 0.04), (1, NULL), (2, 0.3), (2, 0.01), (2, 0.02)) v(g, p) ORDER BY g, p;
SELECT experiment.p_adjust('{}'::float8[]), experiment.p_adjust(ARRAY[NULL]::float8[]);
SELECT round(lower::numeric, 6) AS lower, round(upper::numeric, 6) AS upper FROM experiment.adjusted_interval(0.05, 0.01);
SELECT * FROM experiment.adjusted_interval(0.05, 1);

-- group-sequential: the first look spends alpha * t^rho; past the plan nothing is left
SELECT round(x::numeric, 8) FROM unnest(experiment.gst_alpha('{0.2, 0.4, 0.6, 0.8, 1}', 0.05)) x;
SELECT round(x::numeric, 8) FROM unnest(experiment.gst_alpha('{0.5, 1, 1.2}', 0.025, 1, 3)) x;
