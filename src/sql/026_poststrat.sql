-- ---------------------------------------------------------------------------
-- Post-stratification: the two-arm tests with per-stratum estimates combined
-- by the strata's shares of all units (src/poststrat.c; doc/statistics.md,
-- "Post-stratification")
-- ---------------------------------------------------------------------------

CREATE FUNCTION experiment.poststrat_ttest(method text, control experiment.moments[], treatment experiment.moments[],
                                           alpha float8 DEFAULT 0.05, alternative text DEFAULT 'two-sided',
                                           sequential_tuning float8 DEFAULT NULL)
  RETURNS experiment.test_result
  AS 'MODULE_PATHNAME', 'exp_poststrat_ttest' LANGUAGE C IMMUTABLE PARALLEL SAFE;
COMMENT ON FUNCTION experiment.poststrat_ttest(text, experiment.moments[], experiment.moments[], float8, text, float8) IS
  'post-stratified test: control[k], treatment[k] are the moments of stratum k in each arm (NULL: no units); '
  'method welch, prop_ztest, cuped (theta per stratum), ratio or cuped_ratio with the moments of metric_test; '
  'per-stratum estimates weighted by the strata''s shares of all units, strata without an estimate of their own '
  'merged into the largest; alternative and sequential_tuning as in welch_ttest';
