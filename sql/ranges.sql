-- Every parameter has a documented valid range, checked up front (22023);
-- extreme but valid inputs give finite results, NULL or a clear 22003,
-- never NaN or an internal error (doc/statistics.md, "Conventions")
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS experiment;
RESET client_min_messages;
\set ECHO none
\i test/regress_support.sql
\set ECHO all
CREATE TEMP TABLE m AS
SELECT experiment.moments_from_sums(3, 6, 14) AS c1, experiment.moments_from_sums(3, 7, 19) AS t1,
       experiment.moments_from_sums(3, 6, 14, 3, 5, 7) AS c2, experiment.moments_from_sums(3, 7, 19, 3, 6, 9) AS t2;

-- alpha: [1e-300, 1) everywhere
SELECT regress_support.err($$SELECT experiment.welch_ttest(c1, t1, 5e-324) FROM m$$);
SELECT regress_support.err($$SELECT experiment.cuped_ttest(c2, t2, 5e-324) FROM m$$);
SELECT regress_support.err($$SELECT experiment.ratio_ttest(c2, t2, 5e-324) FROM m$$);
SELECT regress_support.err($$SELECT experiment.prop_ztest(10, 100, 20, 100, 5e-324)$$);
SELECT regress_support.err($$SELECT experiment.required_n(0.5, 0.1, 5e-324, 0.8)$$);
SELECT regress_support.err($$SELECT experiment.required_n_mean(1, 0.1, 5e-324, 0.8)$$);
SELECT regress_support.err($$SELECT experiment.mde(1000, 0.5, 5e-324, 0.8)$$);
SELECT regress_support.err($$SELECT experiment.power(1000, 0.5, 0.1, 5e-324)$$);
SELECT regress_support.err($$SELECT experiment.adjusted_interval(1, 0.5, 5e-324)$$);
SELECT regress_support.err($$SELECT experiment.gst_alpha('{0.5, 1}', 5e-324, 2, 1)$$);
SELECT regress_support.err($$SELECT experiment.bayesian(experiment.welch_ttest(c1, t1), 0, NULL, true, 5e-324) FROM m$$);
-- the smallest alpha gives finite intervals
SELECT (r).diff_lower > '-Infinity'::float8 AND (r).diff_upper < 'Infinity'::float8 AS finite
FROM (SELECT experiment.prop_ztest(10, 100, 20, 100, 1e-300) AS r) s;
SELECT (r).diff_lower > '-Infinity'::float8 AND (r).diff_upper < 'Infinity'::float8 AS finite
FROM (SELECT experiment.welch_ttest(c1, t1, 1e-300) AS r FROM m) s;

-- power: [1e-300, 1)
SELECT regress_support.err($$SELECT experiment.required_n(0.5, 0.1, 0.05, 5e-324)$$);
SELECT regress_support.err($$SELECT experiment.required_n_mean(1, 0.1, 0.05, 5e-324)$$);
SELECT regress_support.err($$SELECT experiment.mde(1000, 0.5, 0.05, 1)$$);
-- a power below alpha/2 is reached by any sample: 1 unit, not (c + z_power)^2 of a negative sum
SELECT experiment.required_n(0.5, 0.1, 0.05, 0.01) AS n_prop, experiment.required_n_mean(1, 0.1, 0.05, 0.01) AS n_mean;
-- an effect huge beside the standard deviation: 1 unit (was 0); one tiny beside it: 22003
SELECT experiment.required_n_mean(1e-17, 1e308, 0.05, 0.8) AS n_fixed,
       experiment.required_n_mean(1e-17, 1e308, 0.05, 0.8, 2, 1000) AS n_sequential;
SELECT regress_support.err($$SELECT experiment.required_n_mean(1, 1e-300, 0.05, 0.8)$$);
SELECT regress_support.err($$SELECT experiment.required_n(0.5, 1e-300, 0.05, 0.8)$$);

-- sequential_tuning: [1, 1e15]
SELECT regress_support.err($$SELECT experiment.welch_ttest(c1, t1, 0.05, 'two-sided', 5e-324) FROM m$$);
SELECT regress_support.err($$SELECT experiment.welch_ttest(c1, t1, 0.05, 'two-sided', 1e308) FROM m$$);
SELECT regress_support.err($$SELECT experiment.required_n(0.5, 0.1, 0.05, 0.8, 2, 0.5)$$);
SELECT (experiment.welch_ttest(c1, t1, 0.05, 'two-sided', 1)).p_value IS NOT NULL AS at_1,
       (experiment.welch_ttest(c1, t1, 0.05, 'two-sided', 1e15)).p_value IS NOT NULL AS at_1e15
FROM m;

-- growthbook_bucket_ranges: weights finite and >= 0 (coverage is clamped to [0, 1] as the SDK does)
SELECT regress_support.err($$SELECT experiment.growthbook_bucket_ranges(2, 1, '{Infinity,-Infinity}')$$);
SELECT regress_support.err($$SELECT experiment.growthbook_bucket_ranges(2, 1, '{2,-1}')$$);
SELECT regress_support.err($$SELECT experiment.growthbook_bucket_ranges(2, 1, '{0.5,NaN}')$$);
SELECT experiment.growthbook_bucket_ranges(2, 'Infinity', NULL) AS coverage_inf,
       experiment.growthbook_bucket_ranges(2, '-Infinity', NULL) AS coverage_minus_inf,
       experiment.growthbook_bucket_ranges(2, 5e-324, NULL) AS coverage_tiny;

-- cuped_adjust(y, x, theta, mean_x): finite arguments; an overflow is 22003
SELECT regress_support.err($$SELECT experiment.cuped_adjust('NaN'::float8, 1::float8, 1::float8, 1::float8)$$);
SELECT regress_support.err($$SELECT experiment.cuped_adjust(1::float8, 'Infinity'::float8, 0::float8, 1::float8)$$);
SELECT regress_support.err($$SELECT experiment.cuped_adjust(1::float8, 1::float8, '-Infinity'::float8, 1::float8)$$);
SELECT regress_support.err($$SELECT experiment.cuped_adjust(1::float8, 1::float8, 1::float8, 'Infinity'::float8)$$);
SELECT regress_support.err($$SELECT experiment.cuped_adjust(1e308::float8, -1e308::float8, 1e308::float8, 1e308::float8)$$);
SELECT experiment.cuped_adjust(5e-324::float8, 1e308::float8, 5e-324::float8, 0::float8) AS tiny;

-- adjusted_interval near the largest float8: finite bounds
SELECT experiment.adjusted_interval(1e308, 1e-300, 0.05);
-- bayesian: a huge prior mean with a tiny prior variance is the prior itself, not NULL
SELECT b.estimate, b.ci_lower = b.estimate AS ci_lower_at_estimate, b.chance_to_win, b.risk_treatment
FROM m, experiment.bayesian(experiment.welch_ttest(c1, t1), 1e308, 1e-300, true, 0.05) b;
