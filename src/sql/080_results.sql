-- ---------------------------------------------------------------------------
-- What users read: the results, srm and health views (doc/analysis.md, doc/operations.md)
-- ---------------------------------------------------------------------------

-- clustered tests (src/sql/099_design_cluster.sql): what they were clustered by, and the
-- unit-level test beside them (the columns before the views that show them)
ALTER TABLE experiment.metric_results
  ADD COLUMN clustered_by text,
  ADD COLUMN unit_test experiment.test_result;
COMMENT ON COLUMN experiment.metric_results.clustered_by IS
  'the cluster of a clustered test (cluster_column of cluster_relation, or attributes.<cluster_attribute>): test counts clusters and is the delta-method ratio over them; NULL: a unit-level test';
COMMENT ON COLUMN experiment.metric_results.unit_test IS
  'clustered tests: the unit-level test the refresh would report without clusters (it ignores the correlation within clusters; its standard error against test''s gives the design effect)';

-- a role sees the results of the metrics whose sources it may read (the last line); the
-- multiple-testing corrections are computed over every metric of the family first, so that
-- every role sees the same adjusted p-values (MATERIALIZED: the filter never runs below
-- the window functions)
-- security_barrier: a caller's own conditions (a cheap function that prints its argument)
-- run only on the rows the view shows
CREATE VIEW experiment.results WITH (security_barrier = true) AS
WITH r AS MATERIALIZED (
  SELECT r.*, em.role, em.non_inferiority_margin, m.kind, m.higher_is_better,
         ex.correction, ex.correction_family, ex.prior_mean, ex.prior_variance, ex.ship_threshold,
         -- the family of the multiple-testing correction: the primary metric across its arms;
         -- secondary metrics together (family 'experiment') or each across its arms ('metric');
         -- a guardrail alone (its own one-sided test decides it)
         CASE WHEN em.role = 'primary' THEN 'p:' || r.metric
              WHEN em.role = 'secondary' AND ex.correction_family = 'experiment' THEN 's:'
              WHEN em.role = 'secondary' THEN 's:' || r.metric
              ELSE 'g:' || r.metric || ':' || r.variant END AS family
  FROM experiment.metric_results r
  JOIN experiment.experiment_metrics em ON em.experiment_id = r.experiment_id AND em.metric = r.metric
  JOIN experiment.metrics m ON m.name = r.metric
  JOIN experiment.experiments ex ON ex.id = r.experiment_id
), a AS MATERIALIZED (
  SELECT r.*,
         -- (the window function runs on every row, so it gets a valid method even where unused)
         CASE WHEN r.correction = 'none' THEN (r.test).p_value
              ELSE experiment.p_adjust((r.test).p_value, CASE r.correction WHEN 'none' THEN 'holm' ELSE r.correction END)
                     OVER (PARTITION BY r.experiment_id, r.family) END AS p_value_adjusted,
         CASE WHEN r.correction = 'none' THEN (r.test).lift_p_value
              ELSE experiment.p_adjust((r.test).lift_p_value, CASE r.correction WHEN 'none' THEN 'holm' ELSE r.correction END)
                     OVER (PARTITION BY r.experiment_id, r.family) END AS lift_p_value_adjusted,
         CASE WHEN r.analysis = 'bayesian'
              THEN experiment.bayesian(r.test, r.prior_mean, r.prior_variance, true, r.alpha) END AS bayes,
         -- guardrails: the one-sided bound on the relative harm, and the lower bound of the harm
         CASE WHEN r.higher_is_better THEN -(r.bound_test).lift_lower ELSE (r.bound_test).lift_upper END AS harm_bound,
         CASE WHEN r.higher_is_better THEN -(r.harm_test).lift_upper ELSE (r.harm_test).lift_lower END AS harm_lower
  FROM r
), s AS (
  SELECT a.*,
         CASE WHEN a.analysis = 'bayesian'
              THEN (a.bayes).chance_to_win >= a.ship_threshold OR (a.bayes).chance_to_win <= 1 - a.ship_threshold
              ELSE a.p_value_adjusted < a.alpha END AS sig,
         CASE WHEN a.role <> 'guardrail' THEN NULL
              WHEN (a.harm_test).p_value IS NULL THEN 'ok'   -- nothing varies in either arm: no harm
              WHEN coalesce(a.non_inferiority_margin, 0) = 0
                THEN CASE WHEN (a.harm_test).p_value < a.alpha THEN 'failed' ELSE 'ok' END
              WHEN a.harm_lower > a.non_inferiority_margin THEN 'failed'
              WHEN a.harm_bound < a.non_inferiority_margin THEN 'ok'
              ELSE 'inconclusive' END AS guardrail_status
  FROM a
)
SELECT s.experiment_id, s.metric, s.variant, s.control_variant,
       s.role, s.kind, s.method, s.higher_is_better, s.non_inferiority_margin,
       (s.test).n_control, (s.test).n_treatment,
       (s.test).mean_control, (s.test).mean_treatment,
       (s.test).diff, (s.test).diff_lower, (s.test).diff_upper,
       (s.test).lift, (s.test).lift_lower, (s.test).lift_upper,
       (s.test).statistic, (s.test).df, (s.test).p_value, (s.test).lift_p_value,
       s.alpha,
       coalesce(s.sig, false) AS significant,
       coalesce(s.sig AND ((s.test).diff > 0) = s.higher_is_better AND (s.test).diff <> 0, false) AS better,
       coalesce(s.sig AND ((s.test).diff > 0) <> s.higher_is_better AND (s.test).diff <> 0, false) AS worse,
       s.guardrail_status = 'ok' AS guardrail_ok,
       s.refreshed_at,
       s.analysis, s.sequential_tuning, s.correction,
       s.p_value_adjusted,
       -- the interval consistent with the adjusted lift p-value, never narrower than the test's own
       -- (a normal approximation alone can be narrower than a confidence sequence)
       CASE WHEN s.lift_p_value_adjusted IS NOT DISTINCT FROM (s.test).lift_p_value THEN (s.test).lift_lower
            ELSE least((s.test).lift_lower,
                       (experiment.adjusted_interval((s.test).lift, s.lift_p_value_adjusted, s.alpha)).lower) END
         AS lift_lower_adjusted,
       CASE WHEN s.lift_p_value_adjusted IS NOT DISTINCT FROM (s.test).lift_p_value THEN (s.test).lift_upper
            ELSE greatest((s.test).lift_upper,
                          (experiment.adjusted_interval((s.test).lift, s.lift_p_value_adjusted, s.alpha)).upper) END
         AS lift_upper_adjusted,
       (s.bayes).chance_to_win, (s.bayes).risk_control, (s.bayes).risk_treatment,
       s.guardrail_status, s.harm_bound,
       (s.test).diff_se, (s.test).lift_se,
       (s.bayes).estimate AS lift_posterior, (s.bayes).ci_lower AS lift_posterior_lower,
       (s.bayes).ci_upper AS lift_posterior_upper,
       s.stratified_by, s.clustered_by
FROM s
WHERE experiment.may_read_metric(s.metric);
COMMENT ON VIEW experiment.results IS
  'one row per experiment, metric and treatment variant at the latest refresh: role, test results under the experiment''s analysis, adjusted p-value and lift interval, Bayesian chance to win and risks, significance, guardrail verdict (ok, failed or inconclusive against the non-inferiority margin), the dimension of the strata when post-stratified, the cluster when the test counted clusters';

-- the results per dimension value: the columns of experiment.results, with the dimension and
-- its value; the multiple-testing family is one metric in one dimension, across the values
-- and treatment arms (the experiment's correction), so that ten segments of one metric do not
-- look ten times as often for free
CREATE VIEW experiment.results_by_dimension WITH (security_barrier = true) AS
WITH r AS MATERIALIZED (
  SELECT r.*, em.role, em.non_inferiority_margin, m.kind, m.higher_is_better,
         ex.correction, ex.correction_family, ex.prior_mean, ex.prior_variance, ex.ship_threshold,
         -- the family of the multiple-testing correction: one metric in one dimension, across
         -- the dimension's values and the treatment arms
         r.metric AS family
  FROM experiment.dimension_results r
  JOIN experiment.experiment_metrics em ON em.experiment_id = r.experiment_id AND em.metric = r.metric
  JOIN experiment.metrics m ON m.name = r.metric
  JOIN experiment.experiments ex ON ex.id = r.experiment_id
), a AS MATERIALIZED (
  SELECT r.*,
         -- (the window function runs on every row, so it gets a valid method even where unused)
         CASE WHEN r.correction = 'none' THEN (r.test).p_value
              ELSE experiment.p_adjust((r.test).p_value, CASE r.correction WHEN 'none' THEN 'holm' ELSE r.correction END)
                     OVER (PARTITION BY r.experiment_id, r.family, r.dimension) END AS p_value_adjusted,
         CASE WHEN r.correction = 'none' THEN (r.test).lift_p_value
              ELSE experiment.p_adjust((r.test).lift_p_value, CASE r.correction WHEN 'none' THEN 'holm' ELSE r.correction END)
                     OVER (PARTITION BY r.experiment_id, r.family, r.dimension) END AS lift_p_value_adjusted,
         CASE WHEN r.analysis = 'bayesian'
              THEN experiment.bayesian(r.test, r.prior_mean, r.prior_variance, true, r.alpha) END AS bayes,
         -- guardrails: the one-sided bound on the relative harm, and the lower bound of the harm
         CASE WHEN r.higher_is_better THEN -(r.bound_test).lift_lower ELSE (r.bound_test).lift_upper END AS harm_bound,
         CASE WHEN r.higher_is_better THEN -(r.harm_test).lift_upper ELSE (r.harm_test).lift_lower END AS harm_lower
  FROM r
), s AS (
  SELECT a.*,
         CASE WHEN a.analysis = 'bayesian'
              THEN (a.bayes).chance_to_win >= a.ship_threshold OR (a.bayes).chance_to_win <= 1 - a.ship_threshold
              ELSE a.p_value_adjusted < a.alpha END AS sig,
         CASE WHEN a.role <> 'guardrail' THEN NULL
              WHEN (a.harm_test).p_value IS NULL THEN 'ok'   -- nothing varies in either arm: no harm
              WHEN coalesce(a.non_inferiority_margin, 0) = 0
                THEN CASE WHEN (a.harm_test).p_value < a.alpha THEN 'failed' ELSE 'ok' END
              WHEN a.harm_lower > a.non_inferiority_margin THEN 'failed'
              WHEN a.harm_bound < a.non_inferiority_margin THEN 'ok'
              ELSE 'inconclusive' END AS guardrail_status
  FROM a
)
SELECT s.experiment_id, s.dimension, s.value, s.metric, s.variant, s.control_variant,
       s.role, s.kind, s.method, s.higher_is_better, s.non_inferiority_margin,
       (s.test).n_control, (s.test).n_treatment,
       (s.test).mean_control, (s.test).mean_treatment,
       (s.test).diff, (s.test).diff_lower, (s.test).diff_upper,
       (s.test).lift, (s.test).lift_lower, (s.test).lift_upper,
       (s.test).statistic, (s.test).df, (s.test).p_value, (s.test).lift_p_value,
       s.alpha,
       coalesce(s.sig, false) AS significant,
       coalesce(s.sig AND ((s.test).diff > 0) = s.higher_is_better AND (s.test).diff <> 0, false) AS better,
       coalesce(s.sig AND ((s.test).diff > 0) <> s.higher_is_better AND (s.test).diff <> 0, false) AS worse,
       s.guardrail_status = 'ok' AS guardrail_ok,
       s.refreshed_at,
       s.analysis, s.sequential_tuning, s.correction,
       s.p_value_adjusted,
       -- the interval consistent with the adjusted lift p-value, never narrower than the test's own
       -- (a normal approximation alone can be narrower than a confidence sequence)
       CASE WHEN s.lift_p_value_adjusted IS NOT DISTINCT FROM (s.test).lift_p_value THEN (s.test).lift_lower
            ELSE least((s.test).lift_lower,
                       (experiment.adjusted_interval((s.test).lift, s.lift_p_value_adjusted, s.alpha)).lower) END
         AS lift_lower_adjusted,
       CASE WHEN s.lift_p_value_adjusted IS NOT DISTINCT FROM (s.test).lift_p_value THEN (s.test).lift_upper
            ELSE greatest((s.test).lift_upper,
                          (experiment.adjusted_interval((s.test).lift, s.lift_p_value_adjusted, s.alpha)).upper) END
         AS lift_upper_adjusted,
       (s.bayes).chance_to_win, (s.bayes).risk_control, (s.bayes).risk_treatment,
       s.guardrail_status, s.harm_bound,
       (s.test).diff_se, (s.test).lift_se,
       (s.bayes).estimate AS lift_posterior, (s.bayes).ci_lower AS lift_posterior_lower,
       (s.bayes).ci_upper AS lift_posterior_upper,
       -- (each value's own tests are not post-stratified)
       NULL::text AS stratified_by, NULL::text AS clustered_by
FROM s
WHERE experiment.may_read_metric(s.metric);
COMMENT ON VIEW experiment.results_by_dimension IS
  'the columns of experiment.results per dimension and value (doc/analysis.md, "Dimension breakdowns"): the tests of each value of each dimension, p-values adjusted within each experiment, metric and dimension across the values and treatment arms';

-- the expected share of a bandit's arm (src/sql/099_holdout_bandit.sql): over the periods,
-- sum_t n_t p_it / sum_t n_t with n_t the analysed units of period t; within a value of its
-- bandit_period dimension, that period's weight; NULL for other experiments (and before the
-- bandit has periods: its split is then the variants' allocations). PL/pgSQL, as the tables
-- it reads are created after these views.
CREATE FUNCTION experiment.bandit_expected_share(experiment_id text, variant text, dimension text DEFAULT NULL,
                                                 value text DEFAULT NULL)
  RETURNS float8
  LANGUAGE plpgsql STABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
DECLARE
  idx integer;
  r float8;
  pdim text;
BEGIN
  IF NOT EXISTS (SELECT FROM experiment.bandits b WHERE b.experiment_id = bandit_expected_share.experiment_id) THEN
    RETURN NULL;
  END IF;
  idx := pg_catalog.array_position((experiment.split(bandit_expected_share.experiment_id)).names, bandit_expected_share.variant);
  SELECT d.name INTO pdim FROM experiment.dimensions d
   WHERE d.experiment_id = bandit_expected_share.experiment_id AND d.attribute = 'bandit_period'
   ORDER BY d.name LIMIT 1;
  IF idx IS NULL OR pdim IS NULL THEN
    RETURN NULL;
  END IF;
  IF bandit_expected_share.dimension = pdim THEN
    IF bandit_expected_share.value !~ '^[0-9]{1,9}$' THEN
      RETURN NULL;
    END IF;
    SELECT p.weights[idx] INTO r FROM experiment.bandit_periods p
     WHERE p.experiment_id = bandit_expected_share.experiment_id AND p.period = bandit_expected_share.value::integer;
    RETURN r;
  END IF;
  SELECT pg_catalog.sum(t.n * p.weights[idx]) / nullif(pg_catalog.sum(t.n), 0) INTO r
    FROM (SELECT de.value, pg_catalog.sum(de.units) AS n FROM experiment.dimension_enrollment de
           WHERE de.experiment_id = bandit_expected_share.experiment_id AND de.dimension = pdim
             AND de.value ~ '^[0-9]{1,9}$'
           GROUP BY de.value) t
    JOIN experiment.bandit_periods p
      ON p.experiment_id = bandit_expected_share.experiment_id AND p.period = t.value::integer;
  RETURN r;
END
$$;
COMMENT ON FUNCTION experiment.bandit_expected_share(text, text, text, text) IS
  'internal: the expected share of a bandit''s arm for the srm views: sum_t n_t p_it / sum_t n_t over its periods, or within a value of its bandit_period dimension that period''s weight; NULL for other experiments';

CREATE VIEW experiment.srm AS
WITH w AS (
  SELECT en.experiment_id, en.variant, en.units,
         -- (a bandit's arms are expected in the shares of its periods' weights)
         coalesce(experiment.bandit_expected_share(en.experiment_id, en.variant), v.allocation) AS allocation,
         en.refreshed_at
  FROM experiment.enrollment en
  JOIN experiment.variants v ON v.experiment_id = en.experiment_id AND v.name = en.variant
), per_experiment AS (
  SELECT w.experiment_id, pg_catalog.sum(w.units) AS total, pg_catalog.sum(w.allocation) AS total_allocation,
         CASE WHEN pg_catalog.sum(w.units) > 0 AND count(*) >= 2 AND bool_and(w.allocation > 0)
              THEN experiment.srm_chisq(array_agg(w.units ORDER BY w.variant),
                                        array_agg(w.allocation ORDER BY w.variant)::float8[])
         END AS p_value
  FROM w GROUP BY w.experiment_id
)
SELECT w.experiment_id, w.variant, w.units,
       w.allocation / nullif(p.total_allocation, 0) AS expected_share,
       w.units::float8 / nullif(p.total, 0) AS observed_share,
       p.total * w.allocation / nullif(p.total_allocation, 0) AS expected_units,
       p.p_value,
       p.p_value >= 0.001 AS ok,
       w.refreshed_at
FROM w JOIN per_experiment p ON p.experiment_id = w.experiment_id;
COMMENT ON VIEW experiment.srm IS
  'sample ratio mismatch check per experiment and variant: units, expected and observed split, chi-squared p-value, ok = p >= 0.001';

-- sample ratio mismatch within each dimension value (Eppo's "dimensional imbalance"): the
-- value's units per variant against the design weights, as for the whole experiment
CREATE VIEW experiment.srm_by_dimension AS
WITH w AS (
  SELECT dn.experiment_id, dn.dimension, dn.value, dn.variant, dn.units,
         coalesce(experiment.bandit_expected_share(dn.experiment_id, dn.variant, dn.dimension, dn.value), v.allocation) AS allocation,
         dn.refreshed_at
  FROM experiment.dimension_enrollment dn
  JOIN experiment.variants v ON v.experiment_id = dn.experiment_id AND v.name = dn.variant
), per_value AS (
  SELECT w.experiment_id, w.dimension, w.value, pg_catalog.sum(w.units) AS total,
         pg_catalog.sum(w.allocation) AS total_allocation,
         CASE WHEN pg_catalog.sum(w.units) > 0 AND count(*) >= 2 AND bool_and(w.allocation > 0)
              THEN experiment.srm_chisq(array_agg(w.units ORDER BY w.variant),
                                        array_agg(w.allocation ORDER BY w.variant)::float8[])
         END AS p_value
  FROM w GROUP BY w.experiment_id, w.dimension, w.value
)
SELECT w.experiment_id, w.dimension, w.value, w.variant, w.units,
       w.allocation / nullif(p.total_allocation, 0) AS expected_share,
       w.units::float8 / nullif(p.total, 0) AS observed_share,
       p.total * w.allocation / nullif(p.total_allocation, 0) AS expected_units,
       p.p_value,
       p.p_value >= 0.001 AS ok,
       w.refreshed_at
FROM w JOIN per_value p ON p.experiment_id = w.experiment_id AND p.dimension = w.dimension AND p.value = w.value;
COMMENT ON VIEW experiment.srm_by_dimension IS
  'sample ratio mismatch check per experiment, dimension, value and variant (dimensional imbalance): units, expected and observed split, chi-squared p-value of the value''s units, ok = p >= 0.001';

CREATE VIEW experiment.health AS
SELECT ex.id AS experiment_id, ex.status, f.refreshed_at, f.duration AS refresh_duration,
       -- a source's error may quote its data: the message to roles that may read every metric
       CASE WHEN f.error IS NULL THEN NULL
            WHEN NOT EXISTS (SELECT 1 FROM experiment.experiment_metrics em
                             WHERE em.experiment_id = ex.id AND NOT experiment.may_read_metric(em.metric))
              THEN f.error
            ELSE 'the latest refresh failed (the message is shown to roles that may read every metric of the experiment)'
       END AS refresh_error,
       f.error_at AS refresh_error_at,
       f.enrolled_units, f.multi_variant_units,
       f.multi_variant_units::float8 / nullif(f.enrolled_units + f.multi_variant_units, 0) AS multi_variant_share,
       coalesce(f.multi_variant_units::float8 / nullif(f.enrolled_units + f.multi_variant_units, 0) <= 0.01, true)
         AS multi_variant_ok,
       s.p_value AS srm_p_value, s.ok AS srm_ok,
       coalesce(ex.start_at, f.first_exposure) AS started_at, f.first_exposure, f.last_exposure,
       extract(epoch FROM least(coalesce(ex.end_at, now()), now()) - coalesce(ex.start_at, f.first_exposure))::float8
         / 86400 AS days_run,
       extract(epoch FROM ex.min_runtime)::float8 / 86400 AS min_runtime_days,
       coalesce(least(coalesce(ex.end_at, now()), now()) - coalesce(ex.start_at, f.first_exposure) >= ex.min_runtime,
                ex.min_runtime IS NULL) AS runtime_ok,
       en.min_units AS min_units_per_variant, ex.target_units_per_variant,
       coalesce(en.min_units >= ex.target_units_per_variant, ex.target_units_per_variant IS NULL) AS sample_ok,
       coalesce(qu.n, 0) AS quarantined_exposures,
       f.exposures_by_day,
       f.early_units,
       late.n AS exposures_after_refresh,
       coalesce(late.n > 0 AND (ex.status <> 'running'
                                OR late.n > 0.01 * (f.enrolled_units + f.multi_variant_units)), false) AS stale,
       sk.n AS skipped_source_values,
       coalesce(ds.failing = 0, true) AS dimension_srm_ok,
       ds.imbalanced AS dimension_srm_imbalanced
FROM experiment.experiments ex
LEFT JOIN experiment.refreshes f ON f.experiment_id = ex.id
LEFT JOIN LATERAL (SELECT count(*) AS n FROM experiment.exposures xp
                   WHERE xp.experiment_id = ex.id AND xp.received_at > f.refreshed_at
                     AND (ex.end_at IS NULL OR xp.exposed_at < ex.end_at)) late ON f.refreshed_at IS NOT NULL
LEFT JOIN (SELECT DISTINCT s0.experiment_id, s0.p_value, s0.ok FROM experiment.srm s0) s ON s.experiment_id = ex.id
LEFT JOIN (SELECT e0.experiment_id, pg_catalog.min(e0.units) AS min_units FROM experiment.enrollment e0
           GROUP BY e0.experiment_id) en ON en.experiment_id = ex.id
LEFT JOIN (SELECT q.experiment_id, count(*) AS n FROM experiment.exposures_quarantine q
           GROUP BY q.experiment_id) qu ON qu.experiment_id = ex.id
LEFT JOIN (SELECT d.experiment_id, count(*) FILTER (WHERE NOT d.ok) AS failing,
                  coalesce(jsonb_agg(jsonb_build_object('dimension', d.dimension, 'value', d.value, 'p_value', d.p_value)
                                     ORDER BY d.dimension, d.p_value, d.value) FILTER (WHERE NOT d.ok), '[]') AS imbalanced
           FROM (SELECT DISTINCT s1.experiment_id, s1.dimension, s1.value, s1.p_value, s1.ok
                 FROM experiment.srm_by_dimension s1) d
           GROUP BY d.experiment_id) ds ON ds.experiment_id = ex.id
-- (of the metrics the reader may read: the view reads variant_stats with its owner's rights)
LEFT JOIN (SELECT vs.experiment_id, pg_catalog.sum(vs.skipped_values)::bigint AS n FROM experiment.variant_stats vs
           WHERE experiment.may_read_metric(vs.metric)
           GROUP BY vs.experiment_id) sk ON sk.experiment_id = ex.id;
COMMENT ON VIEW experiment.health IS
  'per experiment: latest refresh, units in several variants (flagged above 1%), SRM, days run against the minimum runtime, units against the target, quarantined exposures, new units per day, units exposed before the start, exposures stored since the refresh (stale: more than 1% of the units, or any once the experiment stopped), source values skipped as NaN or infinite, '
  'and the dimension values whose split fails the SRM check (dimension_srm_ok, dimension_srm_imbalanced)';

