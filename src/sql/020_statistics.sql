-- ---------------------------------------------------------------------------
-- Statistics: two-arm tests, CUPED, ratio metrics, SRM, sample size
-- (formulas and sources: doc/statistics.md)
-- ---------------------------------------------------------------------------

CREATE TYPE experiment.test_result AS (
  n_control bigint,
  n_treatment bigint,
  mean_control float8,
  mean_treatment float8,
  diff float8,
  diff_lower float8,
  diff_upper float8,
  lift float8,
  lift_lower float8,
  lift_upper float8,
  statistic float8,
  df float8,
  p_value float8,
  lift_p_value float8,
  diff_se float8,
  lift_se float8
);
COMMENT ON TYPE experiment.test_result IS
  'Result of a two-arm test: counts, arm means, difference (treatment - control) with CI, relative lift with CI, statistic, df (NULL: normal), p-values, standard errors of the difference and the lift; NULL where undefined, one-sided bounds +-Infinity';

-- Welch's t-test

CREATE FUNCTION experiment.welch_ttest(control experiment.moments, treatment experiment.moments,
                                       alpha float8 DEFAULT 0.05, alternative text DEFAULT 'two-sided',
                                       sequential_tuning float8 DEFAULT NULL)
  RETURNS experiment.test_result
  AS 'MODULE_PATHNAME', 'exp_welch_ttest' LANGUAGE C IMMUTABLE PARALLEL SAFE;
COMMENT ON FUNCTION experiment.welch_ttest(experiment.moments, experiment.moments, float8, text, float8) IS
  'Welch''s unequal-variances t-test of mean(treatment) - mean(control) from univariate moments, with delta-method lift; alternative two-sided, greater or less; sequential_tuning N* gives an always-valid confidence sequence (NULL: fixed horizon)';

CREATE FUNCTION experiment.moments_pair_accum(experiment.moments[], boolean, float8)
  RETURNS experiment.moments[]
  AS 'MODULE_PATHNAME', 'exp_moments_pair_accum' LANGUAGE C IMMUTABLE PARALLEL SAFE;
COMMENT ON FUNCTION experiment.moments_pair_accum(experiment.moments[], boolean, float8) IS
  'internal: transition function of experiment.welch_ttest(boolean, float8): state [control, treatment]';

CREATE FUNCTION experiment.moments_pair_combine(experiment.moments[], experiment.moments[])
  RETURNS experiment.moments[]
  AS 'MODULE_PATHNAME', 'exp_moments_pair_combine' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION experiment.moments_pair_combine(experiment.moments[], experiment.moments[]) IS
  'internal: combine function of experiment.welch_ttest(boolean, float8): merges both groups';

CREATE FUNCTION experiment.welch_ttest_final(experiment.moments[])
  RETURNS experiment.test_result
  AS 'MODULE_PATHNAME', 'exp_welch_ttest_final' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION experiment.welch_ttest_final(experiment.moments[]) IS
  'internal: final function of experiment.welch_ttest(boolean, float8): Welch''s t-test at alpha = 0.05';

CREATE AGGREGATE experiment.welch_ttest(is_treatment boolean, y float8) (
  SFUNC = experiment.moments_pair_accum,
  STYPE = experiment.moments[],
  COMBINEFUNC = experiment.moments_pair_combine,
  FINALFUNC = experiment.welch_ttest_final,
  PARALLEL = SAFE
);
COMMENT ON AGGREGATE experiment.welch_ttest(boolean, float8) IS
  'Welch''s t-test (alpha = 0.05) of y between is_treatment = true and false rows; rows with a NULL are skipped, no rows gives NULL';

-- proportions

CREATE FUNCTION experiment.prop_ztest(x_control bigint, n_control bigint,
                                      x_treatment bigint, n_treatment bigint,
                                      alpha float8 DEFAULT 0.05, alternative text DEFAULT 'two-sided',
                                      sequential_tuning float8 DEFAULT NULL)
  RETURNS experiment.test_result
  AS 'MODULE_PATHNAME', 'exp_prop_ztest' LANGUAGE C IMMUTABLE PARALLEL SAFE;
COMMENT ON FUNCTION experiment.prop_ztest(bigint, bigint, bigint, bigint, float8, text, float8) IS
  'two-proportion z-test: pooled z and p-value, Wald CI of the difference, delta-method lift; df is NULL; alternative and sequential_tuning as in welch_ttest (a sequential test uses the Wald standard error throughout)';

-- CUPED

CREATE FUNCTION experiment.cuped_ttest(control experiment.moments, treatment experiment.moments,
                                       alpha float8 DEFAULT 0.05, alternative text DEFAULT 'two-sided',
                                       sequential_tuning float8 DEFAULT NULL)
  RETURNS experiment.test_result
  AS 'MODULE_PATHNAME', 'exp_cuped_ttest' LANGUAGE C IMMUTABLE PARALLEL SAFE;
COMMENT ON FUNCTION experiment.cuped_ttest(experiment.moments, experiment.moments, float8, text, float8) IS
  'Welch''s t-test on the CUPED-adjusted metric from bivariate moments (y, x = pre-period y), theta pooled over both arms; means reported unadjusted';

CREATE FUNCTION experiment.cuped_theta(m experiment.moments) RETURNS float8
  AS 'MODULE_PATHNAME', 'exp_cuped_theta' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION experiment.cuped_theta(experiment.moments) IS
  'CUPED coefficient cov(y, x) / var(x) of bivariate moments (pass control + treatment for the pooled one); NULL when var(x) = 0';

CREATE FUNCTION experiment.cuped_adjust(y float8, x float8, theta float8, mean_x float8) RETURNS float8
  AS 'MODULE_PATHNAME', 'exp_cuped_adjust_value' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION experiment.cuped_adjust(float8, float8, float8, float8) IS
  'CUPED-adjusted value y - theta * (x - mean_x)';

CREATE FUNCTION experiment.cuped_adjust(m experiment.moments, theta float8, mean_x float8)
  RETURNS experiment.moments
  AS 'MODULE_PATHNAME', 'exp_cuped_adjust_moments' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION experiment.cuped_adjust(experiment.moments, float8, float8) IS
  'univariate moments of y - theta * (x - mean_x), exactly, from bivariate moments of (y, x)';

-- ratio metrics

CREATE FUNCTION experiment.ratio_ttest(control experiment.moments, treatment experiment.moments,
                                       alpha float8 DEFAULT 0.05, alternative text DEFAULT 'two-sided',
                                       sequential_tuning float8 DEFAULT NULL)
  RETURNS experiment.test_result
  AS 'MODULE_PATHNAME', 'exp_ratio_ttest' LANGUAGE C IMMUTABLE PARALLEL SAFE;
COMMENT ON FUNCTION experiment.ratio_ttest(experiment.moments, experiment.moments, float8, text, float8) IS
  'Welch''s t-test of a ratio metric sum(numerator)/sum(denominator) from bivariate moments of each unit''s (numerator, denominator), delta-method variances';

CREATE FUNCTION experiment.cuped_ratio_ttest(control experiment.moments, treatment experiment.moments,
                                             alpha float8 DEFAULT 0.05, alternative text DEFAULT 'two-sided',
                                             sequential_tuning float8 DEFAULT NULL)
  RETURNS experiment.test_result
  AS 'MODULE_PATHNAME', 'exp_cuped_ratio_ttest' LANGUAGE C IMMUTABLE PARALLEL SAFE;
COMMENT ON FUNCTION experiment.cuped_ratio_ttest(experiment.moments, experiment.moments, float8, text, float8) IS
  'Welch''s t-test of a ratio metric adjusted by its pre-period ratio (CUPED for ratio metrics, theta from the delta-method '
  'linearisation over both arms) from 4-variable moments of (numerator, denominator, pre-numerator, pre-denominator); '
  'means reported unadjusted';

CREATE FUNCTION experiment.cuped_ratio_theta(control experiment.moments, treatment experiment.moments) RETURNS float8
  AS 'MODULE_PATHNAME', 'exp_cuped_ratio_theta' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION experiment.cuped_ratio_theta(experiment.moments, experiment.moments) IS
  'the theta of cuped_ratio_ttest: covariance of the linearised ratio and pre-period ratio over the variance of the latter, '
  'summed over both arms; 0 where undefined';

-- sample ratio mismatch

CREATE FUNCTION experiment.srm_chisq(observed bigint[], weights float8[] DEFAULT NULL) RETURNS float8
  AS 'MODULE_PATHNAME', 'exp_srm_chisq' LANGUAGE C IMMUTABLE PARALLEL SAFE;
COMMENT ON FUNCTION experiment.srm_chisq(bigint[], float8[]) IS
  'sample ratio mismatch: Pearson chi-squared p-value of observed counts against the weights'' split (NULL weights: equal split)';

-- sample size and power

CREATE FUNCTION experiment.required_n(baseline float8, mde float8, alpha float8 DEFAULT 0.05,
                                      power float8 DEFAULT 0.8, variations integer DEFAULT 2,
                                      sequential_tuning float8 DEFAULT NULL) RETURNS bigint
  AS 'MODULE_PATHNAME', 'exp_required_n' LANGUAGE C IMMUTABLE PARALLEL SAFE;
COMMENT ON FUNCTION experiment.required_n(float8, float8, float8, float8, integer, float8) IS
  'units per variant for a two-proportion test to detect baseline -> baseline + mde (two-sided alpha, Bonferroni across the variations - 1 treatments; sequential_tuning: for the always-valid test)';

CREATE FUNCTION experiment.required_n_mean(stddev float8, mde float8, alpha float8 DEFAULT 0.05,
                                           power float8 DEFAULT 0.8, variations integer DEFAULT 2,
                                           sequential_tuning float8 DEFAULT NULL) RETURNS bigint
  AS 'MODULE_PATHNAME', 'exp_required_n_mean' LANGUAGE C IMMUTABLE PARALLEL SAFE;
COMMENT ON FUNCTION experiment.required_n_mean(float8, float8, float8, float8, integer, float8) IS
  'units per variant for a test of means to detect a difference mde with standard deviation stddev (two-sided alpha, Bonferroni across treatments; sequential_tuning: for the always-valid test)';

CREATE FUNCTION experiment.mde(n_per_variant bigint, baseline float8, alpha float8 DEFAULT 0.05,
                               power float8 DEFAULT 0.8, variations integer DEFAULT 2,
                               sequential_tuning float8 DEFAULT NULL) RETURNS float8
  AS 'MODULE_PATHNAME', 'exp_mde_prop' LANGUAGE C IMMUTABLE PARALLEL SAFE;
COMMENT ON FUNCTION experiment.mde(bigint, float8, float8, float8, integer, float8) IS
  'smallest absolute rise of a rate from baseline that n_per_variant units per variant detect (inverse of required_n); NULL when none below 1 - baseline does';

CREATE FUNCTION experiment.power(n_per_variant bigint, baseline float8, mde float8,
                                 alpha float8 DEFAULT 0.05, variations integer DEFAULT 2,
                                 sequential_tuning float8 DEFAULT NULL) RETURNS float8
  AS 'MODULE_PATHNAME', 'exp_power_prop' LANGUAGE C IMMUTABLE PARALLEL SAFE;
COMMENT ON FUNCTION experiment.power(bigint, float8, float8, float8, integer, float8) IS
  'power of a two-proportion test with n_per_variant units per variant against baseline -> baseline + mde (inverse of required_n)';
