-- ---------------------------------------------------------------------------
-- Decision statistics on top of the tests: Bayesian results, multiple-testing
-- corrections, group-sequential alpha spending (doc/statistics.md)
-- ---------------------------------------------------------------------------

CREATE TYPE experiment.bayes_result AS (
  estimate float8,
  ci_lower float8,
  ci_upper float8,
  stddev float8,
  chance_to_win float8,
  risk_control float8,
  risk_treatment float8
);
COMMENT ON TYPE experiment.bayes_result IS
  'Gaussian posterior of an effect: mean, credible interval, standard deviation, P(effect > 0), expected loss of shipping control [E max(effect, 0)] and treatment [E max(-effect, 0)]; NULL where undefined';

CREATE FUNCTION experiment.bayesian(t experiment.test_result, prior_mean float8 DEFAULT 0,
                                    prior_variance float8 DEFAULT NULL, relative boolean DEFAULT true,
                                    alpha float8 DEFAULT 0.05)
  RETURNS experiment.bayes_result
  AS 'MODULE_PATHNAME', 'exp_bayesian' LANGUAGE C IMMUTABLE PARALLEL SAFE;
COMMENT ON FUNCTION experiment.bayesian(experiment.test_result, float8, float8, boolean, float8) IS
  'Bayesian result from any test: Gaussian posterior of the relative lift (relative) or the difference, from the test''s estimate and standard error; NULL prior_variance = flat prior; a proper prior is stated on the relative scale';

CREATE FUNCTION experiment.p_adjust(p float8[], method text DEFAULT 'holm') RETURNS float8[]
  AS 'MODULE_PATHNAME', 'exp_p_adjust_array' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION experiment.p_adjust(float8[], text) IS
  'adjusted p-values in input order: bonferroni, holm, bh (Benjamini-Hochberg) or by (Benjamini-Yekutieli); NULLs stay NULL and do not count';

CREATE FUNCTION experiment.p_adjust(p float8, method text) RETURNS float8
  AS 'MODULE_PATHNAME', 'exp_p_adjust_window' LANGUAGE C IMMUTABLE WINDOW PARALLEL SAFE;
COMMENT ON FUNCTION experiment.p_adjust(float8, text) IS
  'window function: the adjusted p-value of the row among its partition''s p-values, e.g. p_adjust(p_value, ''bh'') OVER (PARTITION BY experiment_id)';

CREATE FUNCTION experiment.adjusted_interval(estimate float8, p_adjusted float8, alpha float8 DEFAULT 0.05,
                                             OUT lower float8, OUT upper float8)
  AS 'MODULE_PATHNAME', 'exp_adjusted_interval' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION experiment.adjusted_interval(float8, float8, float8) IS
  'normal confidence interval consistent with an adjusted p-value: se = |estimate| / z(1 - p_adjusted/2), estimate -/+ z(1 - alpha/2) se; excludes 0 exactly when p_adjusted < alpha';

CREATE FUNCTION experiment.gst_alpha(information_fractions float8[], alpha float8, sides integer DEFAULT 2,
                                     rho float8 DEFAULT 2) RETURNS float8[]
  AS 'MODULE_PATHNAME', 'exp_gst_alpha' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION experiment.gst_alpha(float8[], float8, integer, float8) IS
  'group-sequential test: the nominal alpha at each planned look for the Lan-DeMets power spending function alpha * min(t, 1)^rho (recursive numerical integration)';
