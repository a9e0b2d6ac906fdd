-- ---------------------------------------------------------------------------
-- What users read: the results, srm and health views (doc/analysis.md, doc/operations.md)
-- ---------------------------------------------------------------------------

CREATE VIEW experiment.results AS
SELECT r.experiment_id, r.metric, r.variant, r.control_variant,
       em.role, m.kind, r.method, m.higher_is_better, em.non_inferiority_margin,
       (r.test).n_control, (r.test).n_treatment,
       (r.test).mean_control, (r.test).mean_treatment,
       (r.test).diff, (r.test).diff_lower, (r.test).diff_upper,
       (r.test).lift, (r.test).lift_lower, (r.test).lift_upper,
       (r.test).statistic, (r.test).df, (r.test).p_value, (r.test).lift_p_value,
       r.alpha,
       coalesce((r.test).p_value < r.alpha, false) AS significant,
       coalesce((r.test).p_value < r.alpha AND ((r.test).diff > 0) = m.higher_is_better
                AND (r.test).diff <> 0, false) AS better,
       coalesce((r.test).p_value < r.alpha AND ((r.test).diff > 0) <> m.higher_is_better
                AND (r.test).diff <> 0, false) AS worse,
       CASE WHEN em.role = 'guardrail' THEN NOT coalesce(
         CASE WHEN coalesce(em.non_inferiority_margin, 0) = 0
              THEN (r.test).p_value < r.alpha AND ((r.test).diff > 0) <> m.higher_is_better AND (r.test).diff <> 0
              WHEN m.higher_is_better THEN (r.test).lift_upper < -em.non_inferiority_margin
              ELSE (r.test).lift_lower > em.non_inferiority_margin
         END, false)
       END AS guardrail_ok,
       r.refreshed_at
FROM experiment.metric_results r
JOIN experiment.experiment_metrics em ON em.experiment_id = r.experiment_id AND em.metric = r.metric
JOIN experiment.metrics m ON m.name = r.metric;
COMMENT ON VIEW experiment.results IS
  'one row per experiment, metric and treatment variant at the latest refresh: role, test results, significance, guardrail verdict';

CREATE VIEW experiment.srm AS
WITH w AS (
  SELECT en.experiment_id, en.variant, en.units, v.allocation, en.refreshed_at
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

CREATE VIEW experiment.health AS
SELECT ex.id AS experiment_id, ex.status, f.refreshed_at, f.duration AS refresh_duration,
       f.error AS refresh_error, f.error_at AS refresh_error_at,
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
                                OR late.n > 0.01 * (f.enrolled_units + f.multi_variant_units)), false) AS stale
FROM experiment.experiments ex
LEFT JOIN experiment.refreshes f ON f.experiment_id = ex.id
LEFT JOIN LATERAL (SELECT count(*) AS n FROM experiment.exposures xp
                   WHERE xp.experiment_id = ex.id AND xp.received_at > f.refreshed_at
                     AND (ex.end_at IS NULL OR xp.exposed_at < ex.end_at)) late ON f.refreshed_at IS NOT NULL
LEFT JOIN (SELECT DISTINCT s0.experiment_id, s0.p_value, s0.ok FROM experiment.srm s0) s ON s.experiment_id = ex.id
LEFT JOIN (SELECT e0.experiment_id, pg_catalog.min(e0.units) AS min_units FROM experiment.enrollment e0
           GROUP BY e0.experiment_id) en ON en.experiment_id = ex.id
LEFT JOIN (SELECT q.experiment_id, count(*) AS n FROM experiment.exposures_quarantine q
           GROUP BY q.experiment_id) qu ON qu.experiment_id = ex.id;
COMMENT ON VIEW experiment.health IS
  'per experiment: latest refresh, units in several variants (flagged above 1%), SRM, days run against the minimum runtime, units against the target, quarantined exposures, new units per day, units exposed before the start, exposures stored since the refresh (stale: more than 1% of the units, or any once the experiment stopped)';

