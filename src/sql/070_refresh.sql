-- ---------------------------------------------------------------------------
-- Refresh: enrolled units, per-unit values, per-variant moments and tests
-- (doc/analysis.md, doc/operations.md)
-- ---------------------------------------------------------------------------

CREATE TABLE experiment.refreshes (
  experiment_id text PRIMARY KEY REFERENCES experiment.experiments (id) ON DELETE CASCADE,
  refreshed_at timestamptz,
  duration interval,
  enrolled_units bigint,
  multi_variant_units bigint,
  early_units bigint,
  first_exposure timestamptz,
  last_exposure timestamptz,
  exposures_by_day jsonb,
  error text,
  error_at timestamptz,
  mode text CHECK (mode IN ('full', 'incremental')),
  full_reason text,
  unit_partitions integer
);
COMMENT ON TABLE experiment.refreshes IS
  'the latest refresh of each experiment: when, how long, units enrolled and excluded, new units per day, last error';
COMMENT ON COLUMN experiment.refreshes.enrolled_units IS 'units exposed to exactly one variant (the analysed units)';
COMMENT ON COLUMN experiment.refreshes.multi_variant_units IS 'units exposed to more than one variant (excluded from the analysis)';
COMMENT ON COLUMN experiment.refreshes.early_units IS
  'analysed units first exposed before the experiment''s start_at (the decision is INVALID while there are any)';
COMMENT ON COLUMN experiment.refreshes.mode IS
  'full (every source read in full) or incremental (new exposures, and events from each source''s watermark on)';
COMMENT ON COLUMN experiment.refreshes.full_reason IS 'why the refresh was full (NULL: incremental)';
COMMENT ON COLUMN experiment.refreshes.unit_partitions IS
  'the unit-hash partitions the refresh read its sources in (1: all units at once; more when the units need more '
  'than experiment.refresh_memory); for an incremental refresh, the most partitions or passes over the units of any of its scans';
COMMENT ON COLUMN experiment.refreshes.exposures_by_day IS 'units first exposed on each day, as [{"day", "units"}]';

CREATE TABLE experiment.enrollment (
  experiment_id text NOT NULL REFERENCES experiment.experiments (id) ON DELETE CASCADE,
  variant text NOT NULL,
  units bigint NOT NULL,
  refreshed_at timestamptz NOT NULL,
  PRIMARY KEY (experiment_id, variant)
);
COMMENT ON TABLE experiment.enrollment IS 'analysed units per variant at the latest refresh (every variant, zero included)';

CREATE TABLE experiment.variant_stats (
  experiment_id text NOT NULL REFERENCES experiment.experiments (id) ON DELETE CASCADE,
  metric text NOT NULL,
  variant text NOT NULL,
  units bigint NOT NULL,
  moments experiment.moments,
  cuped_moments experiment.moments,
  cap float8,
  refreshed_at timestamptz NOT NULL,
  skipped_values bigint NOT NULL DEFAULT 0,
  cap_lower float8,
  sketch experiment.sketch,
  PRIMARY KEY (experiment_id, metric, variant)
);
COMMENT ON TABLE experiment.variant_stats IS
  'per-variant moments of each metric at the latest refresh';
COMMENT ON COLUMN experiment.variant_stats.moments IS
  'moments of the per-unit value y; for ratio metrics bivariate moments of (numerator, denominator)';
COMMENT ON COLUMN experiment.variant_stats.cuped_moments IS
  'bivariate moments of (y, pre-period y) when the metric has a CUPED lookback; for ratio metrics 4-variable moments of (numerator, denominator, pre-period numerator, pre-period denominator)';
COMMENT ON COLUMN experiment.variant_stats.cap IS
  'upper cap applied to y, if any: the pooled winsorize percentile, the metric''s cap_upper, or the smaller of the two';
COMMENT ON COLUMN experiment.variant_stats.cap_lower IS
  'lower cap applied to y, if any: the pooled winsorize_lower percentile, the metric''s cap_lower, or the larger of the two';
COMMENT ON COLUMN experiment.variant_stats.sketch IS
  'quantile metrics: the sketch of the variant''s values (of all its units'' events, or of its per-unit sums); '
  'for event quantiles moments is then the bivariate moments over the units of (events at or below the variant''s quantile, events)';
COMMENT ON COLUMN experiment.variant_stats.skipped_values IS
  'source values of the variant''s units that were NaN or infinite and were left out of the per-unit values (no measurement)';

CREATE TABLE experiment.metric_results (
  experiment_id text NOT NULL REFERENCES experiment.experiments (id) ON DELETE CASCADE,
  metric text NOT NULL,
  variant text NOT NULL,
  control_variant text NOT NULL,
  method text NOT NULL CHECK (method IN ('welch', 'prop_ztest', 'cuped', 'ratio', 'cuped_ratio', 'quantile')),
  alpha float8 NOT NULL,
  test experiment.test_result,
  refreshed_at timestamptz NOT NULL,
  analysis text NOT NULL DEFAULT 'fixed',
  sequential_tuning float8,
  bound_test experiment.test_result,
  harm_test experiment.test_result,
  stratified_by text,
  PRIMARY KEY (experiment_id, metric, variant)
);
COMMENT ON TABLE experiment.metric_results IS
  'test of each treatment variant against control for each metric at the latest refresh';
COMMENT ON COLUMN experiment.metric_results.test IS
  'the two-sided test under the experiment''s analysis (sequential: always-valid; fixed and bayesian: fixed horizon)';
COMMENT ON COLUMN experiment.metric_results.sequential_tuning IS 'N* of a sequential analysis';
COMMENT ON COLUMN experiment.metric_results.stratified_by IS
  'the dimension whose values were the strata of the tests (experiment.poststrat_ttest, the experiment''s stratify_by); NULL: not post-stratified';
COMMENT ON COLUMN experiment.metric_results.bound_test IS
  'guardrails: the one-sided test whose bound limits the harm (its interval is open on the side of improvement)';
COMMENT ON COLUMN experiment.metric_results.harm_test IS
  'guardrails: the one-sided test of harm (p-value of "treatment is worse")';

CREATE TABLE experiment.results_daily (
  experiment_id text NOT NULL REFERENCES experiment.experiments (id) ON DELETE CASCADE,
  metric text NOT NULL,
  variant text NOT NULL,
  day date NOT NULL,
  control_variant text NOT NULL,
  method text NOT NULL,
  units_control bigint NOT NULL,
  units_treatment bigint NOT NULL,
  mean_control float8,
  mean_treatment float8,
  diff float8,
  diff_lower float8,
  diff_upper float8,
  lift float8,
  lift_lower float8,
  lift_upper float8,
  p_value float8,
  refreshed_at timestamptz NOT NULL,
  PRIMARY KEY (experiment_id, metric, variant, day)
);
COMMENT ON TABLE experiment.results_daily IS
  'results over time: for each day (UTC) of first exposure, the test of the units enrolled up to the end of that day, '
  'with their values at the latest refresh (cumulative; from per-day moments merged, doc/analysis.md)';
COMMENT ON COLUMN experiment.results_daily.method IS 'the method of the day''s test, chosen from that day''s data as metric_results.method is from all of it';
COMMENT ON COLUMN experiment.results_daily.p_value IS
  'under the experiment''s analysis: with a sequential analysis, always-valid, so reading every day is not peeking';

-- dimension breakdowns (doc/analysis.md, "Dimension breakdowns"): per dimension of
-- experiment.dimensions and value (its top_n values, (other), (none) for no value), the units
-- per variant, the moments per metric and variant, and the tests, as for the whole experiment
CREATE TABLE experiment.dimension_enrollment (
  experiment_id text NOT NULL REFERENCES experiment.experiments (id) ON DELETE CASCADE,
  dimension text NOT NULL,
  value text NOT NULL,
  variant text NOT NULL,
  units bigint NOT NULL,
  refreshed_at timestamptz NOT NULL,
  PRIMARY KEY (experiment_id, dimension, value, variant)
);
COMMENT ON TABLE experiment.dimension_enrollment IS
  'analysed units per dimension, value and variant at the latest refresh (every variant of every value, zero included)';
COMMENT ON COLUMN experiment.dimension_enrollment.value IS
  'the value of the unit''s first exposure: one of the dimension''s top_n values by analysed units, (other) for the rest, (none) for no value';

CREATE TABLE experiment.dimension_stats (
  experiment_id text NOT NULL REFERENCES experiment.experiments (id) ON DELETE CASCADE,
  dimension text NOT NULL,
  value text NOT NULL,
  metric text NOT NULL,
  variant text NOT NULL,
  units bigint NOT NULL,
  moments experiment.moments,
  cuped_moments experiment.moments,
  cap float8,
  cap_lower float8,
  skipped_values bigint NOT NULL DEFAULT 0,
  refreshed_at timestamptz NOT NULL,
  PRIMARY KEY (experiment_id, dimension, value, metric, variant)
);
COMMENT ON TABLE experiment.dimension_stats IS
  'per dimension value and variant, the moments of each metric at the latest refresh (as variant_stats)';
COMMENT ON COLUMN experiment.dimension_stats.cap IS
  'upper cap applied to y: the pooled one of variant_stats, or with caps_per_value the one computed within the value';
COMMENT ON COLUMN experiment.dimension_stats.cap_lower IS
  'lower cap applied to y: the pooled one of variant_stats, or with caps_per_value the one computed within the value';

CREATE TABLE experiment.dimension_results (
  experiment_id text NOT NULL REFERENCES experiment.experiments (id) ON DELETE CASCADE,
  dimension text NOT NULL,
  value text NOT NULL,
  metric text NOT NULL,
  variant text NOT NULL,
  control_variant text NOT NULL,
  method text NOT NULL CHECK (method IN ('welch', 'prop_ztest', 'cuped', 'ratio', 'cuped_ratio')),
  alpha float8 NOT NULL,
  test experiment.test_result,
  refreshed_at timestamptz NOT NULL,
  analysis text NOT NULL,
  sequential_tuning float8,
  bound_test experiment.test_result,
  harm_test experiment.test_result,
  PRIMARY KEY (experiment_id, dimension, value, metric, variant)
);
COMMENT ON TABLE experiment.dimension_results IS
  'per dimension value, the test of each treatment variant against control for each metric at the latest refresh (as metric_results; a value without units in one of the two arms has no row)';
COMMENT ON COLUMN experiment.dimension_results.method IS
  'chosen from the value''s own data as metric_results.method is from all of it';

-- the method of a metric between two arms: quantile metrics by the quantile test, ratio metrics
-- by the delta method (adjusted by the pre-period ratio where both arms have one: pre-period
-- denominators and a pre-period that varies), CUPED where both arms have a pre-period
-- covariate that varies, else the proportion or Welch test
CREATE FUNCTION experiment.metric_method(kind text, c_cuped experiment.moments, t_cuped experiment.moments,
                                         aggregation text DEFAULT NULL)
  RETURNS text
  LANGUAGE sql IMMUTABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
  SELECT CASE
    WHEN aggregation = 'quantile' THEN 'quantile'
    WHEN kind = 'ratio' THEN
      CASE WHEN c_cuped IS NOT NULL AND t_cuped IS NOT NULL
                AND coalesce(experiment.mean(c_cuped, 4), 0) <> 0 AND coalesce(experiment.mean(t_cuped, 4), 0) <> 0
                AND (coalesce(experiment.variance(c_cuped OPERATOR(experiment.+) t_cuped, 3), 0) > 0
                     OR coalesce(experiment.variance(c_cuped OPERATOR(experiment.+) t_cuped, 4), 0) > 0)
           THEN 'cuped_ratio' ELSE 'ratio' END
    WHEN c_cuped IS NOT NULL AND t_cuped IS NOT NULL
         AND coalesce(experiment.variance(c_cuped OPERATOR(experiment.+) t_cuped, 2), 0) > 0 THEN 'cuped'
    WHEN kind = 'proportion' THEN 'prop_ztest'
    ELSE 'welch'
  END
$$;
COMMENT ON FUNCTION experiment.metric_method(text, experiment.moments, experiment.moments, text) IS
  'internal: the test method of a metric (quantile, ratio, cuped_ratio, cuped, prop_ztest or welch) from its kind, '
  'its arms'' CUPED moments and its aggregation';

-- N* of an experiment's sequential analysis: as registered, else the planned sample (target
-- units per variant times the variants), else 5000 (GrowthBook's default)
CREATE FUNCTION experiment.sequential_tuning_of(e experiment.experiments) RETURNS float8
  LANGUAGE sql STABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
  -- (NULL rather than NaN or infinity for a row that the registry's checks would refuse)
  SELECT CASE WHEN s.n > 0 AND s.n < 'Infinity'::float8 THEN s.n END
  FROM (SELECT coalesce(e.sequential_tuning,
                        e.target_units_per_variant * (SELECT count(*) FROM experiment.variants v
                                                      WHERE v.experiment_id = e.id),
                        5000)::float8 AS n) s
$$;
COMMENT ON FUNCTION experiment.sequential_tuning_of(experiment.experiments) IS
  'internal: N* of an experiment''s sequential analysis (registered, else target_units_per_variant times the variants, else 5000)';

-- the test of one metric between two arms: the one place where a metric's method (its
-- kind and whether it has a CUPED covariate) picks the estimator, and the experiment's
-- analysis the inference
CREATE FUNCTION experiment.metric_test(method text, c experiment.moments, t experiment.moments,
                                       c_cuped experiment.moments, t_cuped experiment.moments,
                                       alpha float8, alternative text, sequential_tuning float8)
  RETURNS experiment.test_result
  LANGUAGE sql IMMUTABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
  SELECT CASE method
    WHEN 'ratio' THEN experiment.ratio_ttest(c, t, alpha, alternative, sequential_tuning)
    WHEN 'cuped_ratio' THEN experiment.cuped_ratio_ttest(c_cuped, t_cuped, alpha, alternative, sequential_tuning)
    WHEN 'cuped' THEN experiment.cuped_ttest(c_cuped, t_cuped, alpha, alternative, sequential_tuning)
    WHEN 'prop_ztest' THEN experiment.prop_ztest(
      pg_catalog.round(experiment.mean(c) * experiment.n(c))::bigint, experiment.n(c),
      pg_catalog.round(experiment.mean(t) * experiment.n(t))::bigint, experiment.n(t),
      alpha, alternative, sequential_tuning)
    ELSE experiment.welch_ttest(c, t, alpha, alternative, sequential_tuning)
  END
$$;
COMMENT ON FUNCTION experiment.metric_test(text, experiment.moments, experiment.moments, experiment.moments,
                                           experiment.moments, float8, text, float8) IS
  'internal: the test of a metric (method ratio, cuped_ratio, cuped, prop_ztest or welch) between two arms under an inference';
COMMENT ON COLUMN experiment.metric_results.method IS
  'ratio_ttest for ratio metrics (cuped_ratio_ttest when they have a pre-period), cuped_ttest when a pre-period covariate exists, else prop_ztest (proportions) or welch_ttest';

-- the test of one treatment against control for a metric from their variant_stats rows: a
-- quantile metric's quantile test (of events, clustered by unit, or of units), any other
-- metric's experiment.metric_test()
CREATE FUNCTION experiment.variant_test(method text, m experiment.metrics, c experiment.variant_stats,
                                        t experiment.variant_stats, alpha float8, alternative text,
                                        sequential_tuning float8)
  RETURNS experiment.test_result
  LANGUAGE sql IMMUTABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
  SELECT CASE WHEN method = 'quantile' AND m.quantile_level = 'event'
              THEN experiment.quantile_test(c.sketch, t.sketch, m.quantile, c.moments, t.moments,
                                            alpha, alternative, sequential_tuning)
              WHEN method = 'quantile'
              THEN experiment.quantile_test(c.sketch, t.sketch, m.quantile, alpha, alternative, sequential_tuning)
              ELSE experiment.metric_test(method, c.moments, t.moments, c.cuped_moments, t.cuped_moments,
                                          alpha, alternative, sequential_tuning) END
$$;
COMMENT ON FUNCTION experiment.variant_test(text, experiment.metrics, experiment.variant_stats, experiment.variant_stats,
                                            float8, text, float8) IS
  'internal: the test of a treatment against control for a metric, from their per-variant moments and sketches';

-- the caps of one column of per-unit values (doc/analysis.md, "Winsorization"), from its
-- pooled percentiles and the metric's absolute caps (NULL: none on that side). The absolute
-- caps are hard bounds that a percentile cap can only tighten: the upper cap is the smaller of
-- the upper percentile and cap_upper, the lower cap the larger of the lower percentile and
-- cap_lower, and a percentile beyond the absolute cap of the other side is moved to it, so
-- that the lower cap is never above the upper one (cap_lower < cap_upper is checked); a NaN or
-- infinite argument is no cap
CREATE FUNCTION experiment.effective_caps(pct_lower float8, pct_upper float8, cap_lower float8, cap_upper float8,
    OUT lower_cap float8, OUT upper_cap float8)
  LANGUAGE sql IMMUTABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
  SELECT CASE WHEN f.pl IS NULL THEN f.al ELSE greatest(f.al, least(f.pl, f.au)) END,
         CASE WHEN f.pu IS NULL THEN f.au ELSE least(f.au, greatest(f.pu, f.al)) END
  FROM (SELECT CASE WHEN pct_lower > '-Infinity'::float8 AND pct_lower < 'Infinity'::float8 THEN pct_lower END AS pl,
               CASE WHEN pct_upper > '-Infinity'::float8 AND pct_upper < 'Infinity'::float8 THEN pct_upper END AS pu,
               CASE WHEN cap_lower > '-Infinity'::float8 AND cap_lower < 'Infinity'::float8 THEN cap_lower END AS al,
               CASE WHEN cap_upper > '-Infinity'::float8 AND cap_upper < 'Infinity'::float8 THEN cap_upper END AS au) f
$$;
COMMENT ON FUNCTION experiment.effective_caps(float8, float8, float8, float8) IS
  'internal: the lower and upper cap of per-unit values from their percentile caps and the absolute caps cap_lower and cap_upper';

-- SQL of a per-unit value column (v<i> or p<i> of the per-unit values, alias v), capped into
-- [lower_cap, upper_cap] (a NULL, NaN or infinite cap caps nothing); with ignore_zeros a 0
-- stays 0
CREATE FUNCTION experiment.capped_sql(prefix text, i integer, lower_cap float8, upper_cap float8,
                                      ignore_zeros boolean) RETURNS text
  LANGUAGE sql IMMUTABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
  SELECT CASE WHEN c.lo IS NULL AND c.hi IS NULL THEN c.col
              WHEN ignore_zeros THEN format('CASE WHEN %s = 0 THEN 0::float8 ELSE %s END', c.col, c.capped)
              ELSE c.capped END
  FROM (SELECT b.col, b.lo, b.hi,
               CASE WHEN b.lo IS NULL THEN b.up ELSE format('greatest(%s, %L::float8)', b.up, b.lo) END AS capped
        FROM (SELECT a.col, a.lo, a.hi,
                     CASE WHEN a.hi IS NULL THEN a.col ELSE format('least(%s, %L::float8)', a.col, a.hi) END AS up
              FROM (SELECT format('v.%s%s', prefix, i) AS col,
                           CASE WHEN lower_cap > '-Infinity'::float8 AND lower_cap < 'Infinity'::float8 THEN lower_cap END AS lo,
                           CASE WHEN upper_cap > '-Infinity'::float8 AND upper_cap < 'Infinity'::float8 THEN upper_cap END AS hi) a) b) c
$$;
COMMENT ON FUNCTION experiment.capped_sql(text, integer, float8, float8, boolean) IS
  'internal: SQL of a per-unit value column capped into [lower_cap, upper_cap] (NULL: no cap on that side); with ignore_zeros a 0 is not capped';

-- per-unit values of the metrics reading one source, in one scan (src/unit_values.c)
CREATE FUNCTION experiment.source_unit_values(
    unit_ids text[], variants text[], t0s timestamptz[], source regclass, unit_column text,
    time_columns text[], value_columns text[], aggregations text[], lo_offsets interval[],
    hi_offsets interval[], use_end boolean[], end_at timestamptz, scan_from timestamptz, scan_to timestamptz,
    reader regrole DEFAULT NULL, split_at timestamptz DEFAULT NULL, probe boolean DEFAULT false,
    partial boolean DEFAULT false)
  RETURNS TABLE (unit_id text, variant text, t0 timestamptz, vals float8[], skipped bigint[], latest timestamptz,
                 split timestamptz, sketches experiment.sketch[], tid tid)
  AS 'MODULE_PATHNAME', 'exp_source_unit_values'
  -- (it locks and checks the source through SPI before reading it as another role: never in a
  -- parallel query)
  LANGUAGE C STABLE PARALLEL UNSAFE;
COMMENT ON FUNCTION experiment.source_unit_values(text[], text[], timestamptz[], regclass, text, text[], text[], text[],
    interval[], interval[], boolean[], timestamptz, timestamptz, timestamptz, regrole, timestamptz, boolean, boolean) IS
  'internal: one row per unit (unit_ids, variants, t0s) with vals[k] = aggregations[k] (sum, count, any, max; '
  'sketch: the number of values, and sketches[k] their experiment.sketch, NULL without values) of '
  'value_columns[k] (NULL: rows) over the unit''s events in source with time_columns[k] in '
  '[t0 + lo_offsets[k], t0 + hi_offsets[k]) and, when use_end[k], before end_at; '
  '0 without events; NaN and infinite values are not aggregated and counted in skipped[k]; '
  'scan_from/scan_to bound the scan when all specs read one time column; reads source as role reader '
  '(NULL: the current user, who must have its privileges) in a security-restricted operation; '
  'with split_at, vals and skipped have 2n elements, the events before split_at and from it on, and the maximum '
  'of no event is NULL; partial returns only the units with events; probe first reads the latest time of the '
  'time column; with split_at or probe a last row without a unit carries the latest time read and the split; tid is NULL '
  '(source_unit_values_from(): the stored row''s ctid)';

-- the rows of experiment.source_unit_values(), the units read from a relation instead of passed
-- as arrays (src/unit_values.c): the units of units that are not multi, with reset = reset (NULL:
-- any) and in unit-hash partition part of nparts (experiment.unit_partition_sql()); expected_units
-- sizes the scan's hash table; with reset not NULL (the scans of an incremental refresh), tid is
-- the ctid of the unit's row in units, which the refresh's update finds it by
CREATE FUNCTION experiment.source_unit_values_from(units regclass, reset boolean, nparts integer, part integer,
    expected_units bigint, source regclass, unit_column text,
    time_columns text[], value_columns text[], aggregations text[], lo_offsets interval[],
    hi_offsets interval[], use_end boolean[], end_at timestamptz, scan_from timestamptz, scan_to timestamptz,
    reader regrole DEFAULT NULL, split_at timestamptz DEFAULT NULL, probe boolean DEFAULT false,
    partial boolean DEFAULT false)
  RETURNS TABLE (unit_id text, variant text, t0 timestamptz, vals float8[], skipped bigint[], latest timestamptz,
                 split timestamptz, sketches experiment.sketch[], tid tid)
  AS 'MODULE_PATHNAME', 'exp_source_unit_values_from'
  -- (as experiment.source_unit_values(): it locks and checks the source through SPI before
  -- reading it as another role, never in a parallel query)
  LANGUAGE C STABLE PARALLEL UNSAFE;
COMMENT ON FUNCTION experiment.source_unit_values_from(regclass, boolean, integer, integer, bigint, regclass, text,
    text[], text[], text[], interval[], interval[], boolean[], timestamptz, timestamptz, timestamptz, regrole,
    timestamptz, boolean, boolean) IS
  'internal: experiment.source_unit_values() of the units of a relation (unit_id, variant, t0, multi[, reset]): '
  'those not multi, with reset = reset unless NULL, in unit-hash partition part of nparts; expected_units sizes its hash table; '
  'partial with reset false reads the events first and then only the units with events, in passes within '
  'experiment.refresh_memory (the last row''s skipped[1]: their number); reset true with at most 100000 units asks a '
  'table source with an index that leads with unit_column (text or varchar) for their ids; with reset not NULL, tid is the '
  'ctid of the unit''s row in units';

CREATE FUNCTION experiment.timestamptz_add_clamped(t timestamptz, i interval) RETURNS timestamptz
  AS 'MODULE_PATHNAME', 'exp_timestamptz_add_clamped_sql'
  LANGUAGE C STABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION experiment.timestamptz_add_clamped(timestamptz, interval) IS
  'internal: t + i, or -infinity / infinity where the sum leaves the range of timestamptz (windows of any length)';

-- drop the temporary tables of a refresh (they are also dropped at commit)
CREATE FUNCTION experiment.drop_refresh_tables() RETURNS void
  LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
DECLARE
  t text;
BEGIN
  FOR t IN SELECT c.relname FROM pg_catalog.pg_class c
           WHERE c.relnamespace = pg_catalog.pg_my_temp_schema()
             AND c.relname IN ('exp_units', 'exp_vals', 'exp_base', 'exp_newx', 'exp_touch', 'exp_marks',
                               'exp_groups', 'exp_daily', 'exp_dims', 'exp_dim_units', 'exp_strata') LOOP
    EXECUTE format('DROP TABLE pg_temp.%I', t);
  END LOOP;
END
$$;
COMMENT ON FUNCTION experiment.drop_refresh_tables() IS 'internal: drop the temporary tables of experiment.refresh()';

-- the scans of an experiment's base metrics (pg_temp.exp_base), one per source relation,
-- unit column and reader, however many metrics read it: the specs that
-- experiment.source_unit_values() takes, what each spec fills (targets: v<i> for base metric
-- i, p<i> for its pre-period value), and bounds on the time column that cover every window of
-- units first exposed in [min_t0, max_t0] (NULL when the metrics read several time columns,
-- then time_column is NULL too); late_events: the largest allowance of the source's metrics
CREATE TYPE experiment.source_scan AS (
  src_no integer, source regclass, unit_column text, reader regrole, time_column text,
  late_events interval, tcols text[], vcols text[], aggs text[], los interval[], his interval[],
  ends boolean[], targets text[], lower_bound timestamptz, upper_bound timestamptz
);
COMMENT ON TYPE experiment.source_scan IS
  'internal: one scan of experiment.source_specs(): a source, its specs for experiment.source_unit_values() and bounds';

CREATE FUNCTION experiment.source_specs(e experiment.experiments, min_t0 timestamptz, max_t0 timestamptz,
    as_owner boolean)
  RETURNS SETOF experiment.source_scan
  LANGUAGE plpgsql STABLE PARALLEL UNSAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
DECLARE
  s experiment.source_scan;
  src regclass;
  ucol text;
  rdr regrole;
  r record;
  m experiment.metrics;
  tcol text;
  need_upper boolean;
  lb timestamptz;
BEGIN
  s.src_no := 0;
  FOR src, ucol, rdr IN
      SELECT DISTINCT m2.source, m2.unit_column, CASE WHEN as_owner THEN m2.owner END
      FROM pg_temp.exp_base b JOIN experiment.metrics m2 ON m2.name = b.name ORDER BY 1, 2, 3 LOOP
    s.src_no := s.src_no + 1;
    s.source := src;
    s.unit_column := ucol;
    s.reader := rdr;
    s.lower_bound := NULL;
    s.upper_bound := NULL;
    s.late_events := NULL;
    need_upper := true;
    tcol := NULL;
    s.tcols := '{}';
    s.vcols := '{}';
    s.aggs := '{}';
    s.los := '{}';
    s.his := '{}';
    s.ends := '{}';
    s.targets := '{}';
    FOR r IN SELECT b.i, b.pre, m2 AS m FROM pg_temp.exp_base b JOIN experiment.metrics m2 ON m2.name = b.name
             WHERE m2.source = s.source AND m2.unit_column = s.unit_column
               AND (NOT as_owner OR m2.owner = s.reader) ORDER BY b.i LOOP
      m := r.m;
      IF tcol IS NOT NULL AND tcol <> m.time_column THEN
        tcol := '';   -- metrics of this source use different time columns: no pruning
      ELSIF tcol IS NULL THEN
        tcol := m.time_column;
      END IF;
      s.late_events := greatest(s.late_events, m.late_events);
      -- the value: events in [t0 + delay, t0 + delay + window) before the end of the experiment
      s.tcols := s.tcols || m.time_column;
      s.vcols := s.vcols || m.value_column;
      -- (a quantile metric stores the unit's events as a sketch, or for a quantile of units its sum)
      s.aggs := s.aggs || CASE WHEN m.aggregation <> 'quantile' THEN m.aggregation
                               WHEN m.quantile_level = 'unit' THEN 'sum' ELSE 'sketch' END;
      s.los := s.los || m.delay;
      s.his := s.his || (m.delay + m."window");
      s.ends := s.ends || true;
      s.targets := s.targets || ('v' || r.i);
      lb := experiment.timestamptz_add_clamped(min_t0, m.delay);
      IF r.pre THEN
        -- the pre-period value: events in [t0 - lookback, t0)
        s.tcols := s.tcols || m.time_column;
        s.vcols := s.vcols || m.value_column;
        s.aggs := s.aggs || m.aggregation;
        s.los := s.los || (- m.cuped_lookback);
        s.his := s.his || interval '0';
        s.ends := s.ends || false;
        s.targets := s.targets || ('p' || r.i);
        lb := experiment.timestamptz_add_clamped(min_t0, - m.cuped_lookback);
      END IF;
      s.lower_bound := least(s.lower_bound, lb);
      IF e.end_at IS NOT NULL THEN
        s.upper_bound := greatest(s.upper_bound, e.end_at);
      ELSIF m."window" IS NOT NULL THEN
        s.upper_bound := greatest(s.upper_bound,
                                experiment.timestamptz_add_clamped(experiment.timestamptz_add_clamped(max_t0, m.delay), m."window"));
      ELSE
        need_upper := false;
      END IF;
    END LOOP;
    IF tcol = '' OR NOT need_upper THEN
      s.upper_bound := NULL;
    END IF;
    IF tcol = '' THEN
      s.lower_bound := NULL;
    END IF;
    s.time_column := nullif(tcol, '');
    RETURN NEXT s;
  END LOOP;
END
$$;
COMMENT ON FUNCTION experiment.source_specs(experiment.experiments, timestamptz, timestamptz, boolean) IS
  'internal: the scans of an experiment''s base metrics, one per source, unit column and reader: the specs of '
  'experiment.source_unit_values(), the columns they fill, the bounds of the scan and the lateness allowance';

-- SQL of the call of experiment.source_unit_values() for one row of experiment.source_specs();
-- units from the arrays a.ids, a.variants, a.t0s (experiment.unit_arrays_sql())
CREATE FUNCTION experiment.source_call_sql(s experiment.source_scan, end_at timestamptz, scan_from timestamptz,
                                           scan_to timestamptz, split_at timestamptz, probe boolean,
                                           partial boolean)
  RETURNS text
  LANGUAGE sql IMMUTABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
  SELECT format(
    'experiment.source_unit_values(a.ids, a.variants, a.t0s, %L::regclass, %L, %L::text[], %L::text[], %L::text[], '
    '%L::interval[], %L::interval[], %L::boolean[], %L::timestamptz, %L::timestamptz, %L::timestamptz, %L::regrole, '
    '%L::timestamptz, %L::boolean, %L::boolean)',
    s.source, s.unit_column, s.tcols, s.vcols, s.aggs, s.los, s.his, s.ends, end_at, scan_from, scan_to,
    s.reader, split_at, probe, partial)
$$;
COMMENT ON FUNCTION experiment.source_call_sql(experiment.source_scan, timestamptz, timestamptz, timestamptz, timestamptz,
                                               boolean, boolean) IS
  'internal: SQL of the experiment.source_unit_values() call of one scan of experiment.source_specs()';

-- SQL of the call of experiment.source_unit_values_from() for one row of experiment.source_specs():
-- the units of relation units (not multi; reset = reset unless NULL; in partition part of nparts),
-- about nunits of them over all the partitions (the scan's hash table gets room for a partition's
-- share and a twentieth more, at least 1024)
CREATE FUNCTION experiment.source_from_sql(s experiment.source_scan, units text, reset boolean, nparts integer,
                                           part integer, nunits bigint, end_at timestamptz, scan_from timestamptz,
                                           scan_to timestamptz, split_at timestamptz, partial boolean)
  RETURNS text
  LANGUAGE sql IMMUTABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
  -- (sized for the partition's share of the units, and a twentieth more with several: the
  -- partitions' sizes vary; experiment.unit_value_partitions() counts the same)
  SELECT format('experiment.source_unit_values_from(%L::regclass, %L::boolean, %s, %s, %s, ', units, reset,
                nparts, part, coalesce(nunits, 0) / nparts + CASE WHEN nparts > 1 THEN coalesce(nunits, 0) / nparts / 20
                                                                   ELSE 0 END + 1024)
         || substr(experiment.source_call_sql(s, end_at, scan_from, scan_to, split_at, false, partial),
                   length('experiment.source_unit_values(a.ids, a.variants, a.t0s, ') + 1)
$$;
COMMENT ON FUNCTION experiment.source_from_sql(experiment.source_scan, text, boolean, integer, integer, bigint,
                                               timestamptz, timestamptz, timestamptz, timestamptz, boolean) IS
  'internal: SQL of the experiment.source_unit_values_from() call of one scan of experiment.source_specs() over a relation of units';

-- SQL of the scans of an experiment's sources (rows of experiment.source_specs(), split at
-- splits[k], NULL: not split) joined on the unit (aliases x1, x2, ...), each over the units of
-- relation units in partition part of nparts (nunits of them in all)
CREATE FUNCTION experiment.scans_join_sql(scans experiment.source_scan[], splits timestamptz[], end_at timestamptz,
                                          units text, nparts integer, part integer, nunits bigint)
  RETURNS text
  LANGUAGE sql IMMUTABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
  SELECT coalesce(pg_catalog.string_agg(format('%s %s x%s%s', CASE WHEN k.o = 1 THEN '' ELSE ' JOIN' END,
           experiment.source_from_sql(scans[k.o], units, NULL, nparts, part, nunits, end_at, (scans[k.o]).lower_bound, (scans[k.o]).upper_bound, splits[k.o], false),
           (scans[k.o]).src_no,
           CASE WHEN k.o = 1 THEN '' ELSE format(' ON x%s.unit_id = x1.unit_id', (scans[k.o]).src_no) END),
           '' ORDER BY k.o), '')
  FROM pg_catalog.generate_subscripts(scans, 1) AS k(o)
$$;
COMMENT ON FUNCTION experiment.scans_join_sql(experiment.source_scan[], timestamptz[], timestamptz, text, integer,
                                              integer, bigint) IS
  'internal: SQL of the scans of an experiment''s sources over the units of one unit-hash partition of a relation, joined on the unit';

-- SQL of the units of a relation as the arrays a.ids, a.variants, a.t0s that
-- experiment.source_call_sql() passes (units_from: "relation u [WHERE ...]")
CREATE FUNCTION experiment.unit_arrays_sql(units_from text) RETURNS text
  LANGUAGE sql IMMUTABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
  SELECT format('(SELECT coalesce(pg_catalog.array_agg(u.unit_id), ''{}'') AS ids, '
                'coalesce(pg_catalog.array_agg(u.variant), ''{}'') AS variants, '
                'coalesce(pg_catalog.array_agg(u.t0), ''{}'') AS t0s FROM %s) a', units_from)
$$;
COMMENT ON FUNCTION experiment.unit_arrays_sql(text) IS
  'internal: SQL of the unit arrays a.ids, a.variants, a.t0s of a relation of units, for experiment.source_call_sql()';

-- the SELECT list of the per-unit values of one scan (x: its alias): v<i>, p<i> and s<i> (the
-- NaN and infinite values skipped) of each base metric it reads
CREATE FUNCTION experiment.unit_value_columns(s experiment.source_scan, x text)
  RETURNS text
  LANGUAGE sql IMMUTABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
  WITH spec AS (
    SELECT t.k, t.target, substr(t.target, 2) AS i
    FROM pg_catalog.unnest(s.targets) WITH ORDINALITY AS t(target, k)
  ), cols AS (
    SELECT sp.k, format(', %s.vals[%s] AS %s', x, sp.k, sp.target) AS sql FROM spec sp
    UNION ALL
    SELECT pg_catalog.max(sp.k), format(', %s AS s%s', pg_catalog.string_agg(format('coalesce(%s.skipped[%s], 0)', x, sp.k),
                                                                           ' + ' ORDER BY sp.k), sp.i)
    FROM spec sp GROUP BY sp.i
  )
  SELECT coalesce(pg_catalog.string_agg(c.sql, '' ORDER BY c.k, c.sql), '') FROM cols c
$$;
COMMENT ON FUNCTION experiment.unit_value_columns(experiment.source_scan, text) IS
  'internal: the SELECT list of the per-unit values of one scan of experiment.source_unit_values()';

-- SQL of two partial per-unit aggregates merged: sums and counts add, any and max take the
-- larger (NULL: no event), sketches merge (NULL: no value); zero_fill: no event at all is 0
-- (a sketch of no value stays NULL)
CREATE FUNCTION experiment.merged_sql(agg text, a text, b text, zero_fill boolean) RETURNS text
  LANGUAGE sql IMMUTABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
  SELECT CASE WHEN agg = 'sketch'
              THEN format('CASE WHEN %s IS NULL THEN %s WHEN %s IS NULL THEN %s ELSE experiment.sketch_merge(%s, %s) END',
                          a, b, b, a, a, b)
         ELSE format(CASE WHEN zero_fill THEN 'coalesce(%s, 0)' ELSE '%s' END,
                     CASE WHEN agg IN ('sum', 'count') THEN format('(%s + %s)', a, b)
                          ELSE format('greatest(%s, %s)', a, b) END) END
$$;
COMMENT ON FUNCTION experiment.merged_sql(text, text, text, boolean) IS
  'internal: SQL that merges two partial per-unit aggregates (sum and count add, any and max take the larger, sketches merge)';

-- ---------------------------------------------------------------------------
-- Stored per-unit values and incremental refresh (doc/scaling.md)
-- ---------------------------------------------------------------------------

-- the stored per-unit values of each refreshed experiment: one table per experiment
-- (experiment.unit_values_<n>, a member of the extension, readable by its owner only) with a
-- row per unit: unit_id, variant, t0 (first exposure), multi (exposed to several variants),
-- reset (read in full at the next scan), and per base metric i: v<i> (its value), p<i> (its
-- pre-period value), s<i> (NaN and infinite values skipped), and the parts of these settled
-- before each source's watermark, c<i>, q<i> and cs<i>
CREATE TABLE experiment.unit_value_tables (
  experiment_id text PRIMARY KEY REFERENCES experiment.experiments (id) ON DELETE CASCADE,
  relation name NOT NULL UNIQUE,
  definition text NOT NULL,
  exposures_since timestamptz NOT NULL,
  refreshed_at timestamptz NOT NULL
);
COMMENT ON TABLE experiment.unit_value_tables IS
  'internal: the table of stored per-unit values of each experiment, the definition it was computed for, and the exposures watermark';
CREATE SEQUENCE experiment.unit_value_tables_seq;
COMMENT ON SEQUENCE experiment.unit_value_tables_seq IS 'internal: numbers the tables of stored per-unit values';

CREATE TABLE experiment.source_watermarks (
  experiment_id text NOT NULL REFERENCES experiment.unit_value_tables (experiment_id) ON DELETE CASCADE,
  source regclass NOT NULL,
  unit_column text NOT NULL,
  owner regrole NOT NULL,
  time_column text,
  late_events interval,
  settled_before timestamptz,
  latest_event timestamptz,
  PRIMARY KEY (experiment_id, source, unit_column, owner)
);
COMMENT ON TABLE experiment.source_watermarks IS
  'per experiment and source: the watermark of incremental refresh (events before settled_before are stored, '
  'later ones are read again at every refresh) and the latest event time seen';
COMMENT ON COLUMN experiment.source_watermarks.settled_before IS
  'least(latest_event, refresh time) less late_events: an event stored later with an earlier time is not counted until a full refresh';
COMMENT ON COLUMN experiment.source_watermarks.time_column IS
  'the time column the watermark is on (NULL: the metrics read several, and every refresh of the experiment is full)';

-- a dropped experiment (or stored state) takes its table of per-unit values with it
CREATE FUNCTION experiment.unit_value_tables_drop() RETURNS trigger
  LANGUAGE plpgsql SECURITY DEFINER
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
DECLARE
  t name;
BEGIN
  FOR t IN SELECT CASE WHEN TG_OP = 'TRUNCATE' THEN u.relation END FROM experiment.unit_value_tables u
           WHERE TG_OP = 'TRUNCATE'
           UNION ALL SELECT OLD.relation WHERE TG_OP <> 'TRUNCATE' LOOP
    PERFORM experiment.drop_unit_value_table(t);
  END LOOP;
  RETURN NULL;
END
$$;
COMMENT ON FUNCTION experiment.unit_value_tables_drop() IS
  'internal: trigger: drops the table of per-unit values of a deleted (or truncated) row of experiment.unit_value_tables';
REVOKE EXECUTE ON FUNCTION experiment.unit_value_tables_drop() FROM PUBLIC;

CREATE FUNCTION experiment.drop_unit_value_table(t name) RETURNS void
  LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
BEGIN
  -- (only the tables refresh() made: their names, and members of the extension)
  IF t LIKE 'unit\_values\_%' AND pg_catalog.to_regclass(format('experiment.%I', t)) IS NOT NULL THEN
    EXECUTE format('ALTER EXTENSION experiment DROP TABLE experiment.%I', t);
    EXECUTE format('DROP TABLE experiment.%I', t);
  END IF;
END
$$;
COMMENT ON FUNCTION experiment.drop_unit_value_table(name) IS 'internal: drops a table of stored per-unit values';
REVOKE EXECUTE ON FUNCTION experiment.drop_unit_value_table(name) FROM PUBLIC;

CREATE TRIGGER unit_value_tables_drop AFTER DELETE ON experiment.unit_value_tables
  FOR EACH ROW EXECUTE FUNCTION experiment.unit_value_tables_drop();
COMMENT ON TRIGGER unit_value_tables_drop ON experiment.unit_value_tables IS
  'a deleted row drops its table of per-unit values';
CREATE TRIGGER unit_value_tables_truncate BEFORE TRUNCATE ON experiment.unit_value_tables
  FOR EACH STATEMENT EXECUTE FUNCTION experiment.unit_value_tables_drop();
COMMENT ON TRIGGER unit_value_tables_truncate ON experiment.unit_value_tables IS
  'truncating drops every table of per-unit values';

-- the dimensions of an experiment (experiment.dimensions), numbered j in name order:
-- pg_temp.exp_dims (j, name, attribute, attribute_key, top_n, caps_per_value, expr), expr the
-- SQL of the value of an exposure (alias xp); the stored per-unit values hold d<j>, the value
-- of the unit's first exposure
CREATE FUNCTION experiment.create_dims_table(e experiment.experiments) RETURNS void
  LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
BEGIN
  CREATE TEMP TABLE exp_dims ON COMMIT DROP AS
    SELECT row_number() OVER (ORDER BY d.name COLLATE "C")::integer AS j, d.name, d.attribute, d.attribute_key,
           d.top_n, d.caps_per_value,
           CASE d.attribute WHEN 'client' THEN 'xp.client' WHEN 'app_version' THEN 'xp.app_version'
                -- a bandit's allocation period (src/sql/099_holdout_bandit.sql)
                WHEN 'bandit_period' THEN 'experiment.bandit_period_of(xp.experiment_id, xp.exposed_at)'
                ELSE format('(xp.attributes ->> %L)', d.attribute_key) END AS expr
    FROM experiment.dimensions d WHERE d.experiment_id = e.id;
END
$$;
COMMENT ON FUNCTION experiment.create_dims_table(experiment.experiments) IS
  'internal: the temporary table exp_dims of an experiment''s dimensions, numbered, with the SQL of an exposure''s value';

-- SQL of the dimension values of the first of a group of exposures (alias xp): ", (array_agg(
-- <expr> ORDER BY exposed_at))[1] AS d<j>" for each row of pg_temp.exp_dims ('' without it)
CREATE FUNCTION experiment.first_exposure_dims_sql() RETURNS text
  LANGUAGE plpgsql STABLE PARALLEL UNSAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
DECLARE
  r text;
BEGIN
  IF pg_catalog.to_regclass('pg_temp.exp_dims') IS NULL THEN
    RETURN '';
  END IF;
  -- (the exposure that defines t0; of several at that time, in different variants, the unit is
  -- multi-variant and not analysed)
  EXECUTE 'SELECT coalesce(pg_catalog.string_agg(format('', (pg_catalog.array_agg(%s ORDER BY xp.exposed_at, xp.variant))[1] AS d%s'', '
          'd.expr, d.j), '''' ORDER BY d.j), '''') FROM pg_temp.exp_dims d' INTO r;
  RETURN r;
END
$$;
COMMENT ON FUNCTION experiment.first_exposure_dims_sql() IS
  'internal: SQL of the dimension values d<j> of the first exposure of a group of exposures';

-- the dimension columns of a relation of per-unit values (alias a): ", a.d1, a.d2" ('' without dimensions)
CREATE FUNCTION experiment.dims_columns_sql(a text) RETURNS text
  LANGUAGE plpgsql STABLE PARALLEL UNSAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
DECLARE
  r text;
BEGIN
  IF pg_catalog.to_regclass('pg_temp.exp_dims') IS NULL THEN
    RETURN '';
  END IF;
  EXECUTE format('SELECT coalesce(pg_catalog.string_agg(format('', %%s.d%%s'', %L, d.j), '''' ORDER BY d.j), '''') '
                 'FROM pg_temp.exp_dims d', a) INTO r;
  RETURN r;
END
$$;
COMMENT ON FUNCTION experiment.dims_columns_sql(text) IS
  'internal: the SELECT list of the dimension columns d<j> of a relation of per-unit values';

-- an experiment's units: pg_temp.exp_units (unit_id, variant, t0, multi, and d<j> when
-- pg_temp.exp_dims exists); the first exposure before end_at defines variant, start and
-- dimension values, multi marks units exposed to several variants
CREATE FUNCTION experiment.create_units_table(e experiment.experiments) RETURNS void
  LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
  SET search_path = pg_catalog, experiment, pg_temp
  -- grouping a million units in a hash table is bound by random memory access; the primary key
  -- of experiment.exposures delivers the rows in unit order, so a streaming GroupAggregate over
  -- it is about twice as fast
  SET enable_hashagg = off
AS $$
BEGIN
  EXECUTE format(
    'CREATE TEMP TABLE exp_units ON COMMIT DROP AS '
    'SELECT xp.unit_id, pg_catalog.min(xp.variant) AS variant, pg_catalog.min(xp.exposed_at) AS t0, '
    '       pg_catalog.min(xp.variant) <> pg_catalog.max(xp.variant) AS multi%s '
    'FROM experiment.exposures xp '
    'WHERE xp.experiment_id = %L AND (%L::timestamptz IS NULL OR xp.exposed_at < %L::timestamptz) '
    'GROUP BY xp.unit_id', experiment.first_exposure_dims_sql(), e.id, e.end_at, e.end_at);
END
$$;
COMMENT ON FUNCTION experiment.create_units_table(experiment.experiments) IS
  'internal: the temporary table exp_units of an experiment''s units (first variant and exposure, multi-variant mark)';

-- the base metrics (non-ratio) an experiment needs, numbered: pg_temp.exp_base (name, pre, i);
-- pre-period values for metrics analysed directly with a CUPED lookback, and for the parts of
-- a ratio metric with a CUPED lookback (each over its own lookback) when both parts have one
CREATE FUNCTION experiment.create_base_table(e experiment.experiments) RETURNS void
  LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
BEGIN
  CREATE TEMP TABLE exp_base ON COMMIT DROP AS
    WITH direct AS (
      SELECT mm.* FROM experiment.experiment_metrics em JOIN experiment.metrics mm ON mm.name = em.metric
      WHERE em.experiment_id = e.id
    ), needed AS (
      SELECT d.name, d.kind <> 'ratio' AND d.aggregation <> 'quantile' AND d.cuped_lookback IS NOT NULL AS pre
      FROM direct d WHERE d.kind <> 'ratio'
      UNION ALL
      SELECT p.part, d.cuped_lookback IS NOT NULL
                     AND (SELECT pn.cuped_lookback IS NOT NULL AND pd.cuped_lookback IS NOT NULL
                          FROM experiment.metrics pn, experiment.metrics pd
                          WHERE pn.name = d.numerator AND pd.name = d.denominator)
      FROM direct d, LATERAL (VALUES (d.numerator), (d.denominator)) p(part)
      WHERE d.kind = 'ratio'
    )
    SELECT n.name, bool_or(n.pre) AS pre, row_number() OVER (ORDER BY n.name)::integer AS i
    FROM needed n GROUP BY n.name;
END
$$;
COMMENT ON FUNCTION experiment.create_base_table(experiment.experiments) IS
  'internal: the temporary table exp_base of the base metrics an experiment needs, numbered';

-- what the stored per-unit values of an experiment depend on: when it changes, the next
-- refresh is full (the tests, caps and CUPED covariates are recomputed at every refresh)
-- (PL/pgSQL, not SQL: a SQL function's plan would outlive the temporary table it reads when
-- one transaction refreshes several experiments)
CREATE FUNCTION experiment.unit_values_definition(e experiment.experiments) RETURNS text
  LANGUAGE plpgsql STABLE PARALLEL UNSAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
BEGIN
  RETURN pg_catalog.md5(pg_catalog.concat_ws('|', 'layout 1', e.end_at::text,
           (SELECT pg_catalog.string_agg(pg_catalog.concat_ws(',', b.i, quote_literal(b.name), b.pre, m.source::oid,
                                                  quote_literal(m.unit_column), quote_literal(m.time_column),
                                                  quote_nullable(m.value_column), m.aggregation, m.quantile_level, m.delay,
                                                  m."window", CASE WHEN b.pre THEN m.cuped_lookback END,
                                                  m.owner::oid),
                                 ';' ORDER BY b.i)
            FROM pg_temp.exp_base b JOIN experiment.metrics m ON m.name = b.name),
           -- the dimension columns d<j> (none: the digest of an experiment without dimensions)
           (SELECT 'dimensions ' || pg_catalog.string_agg(pg_catalog.concat_ws(',', d.j, quote_literal(d.name), d.attribute,
                                                                  quote_nullable(d.attribute_key)), ';' ORDER BY d.j)
            FROM pg_temp.exp_dims d)));
END
$$;
COMMENT ON FUNCTION experiment.unit_values_definition(experiment.experiments) IS
  'internal: digest of what an experiment''s stored per-unit values depend on (its end, its base metrics'' sources, columns, windows and owners, its dimensions'' attributes)';

-- the columns of the stored per-unit values that one scan fills: their value for a unit that
-- has no event (sums and counts 0; the settled maximum of no event NULL, so that it merges),
-- and the SQL of their new value from a scan in split mode (alias x) merged into the stored one
-- (alias old; NULL: nothing stored, the scan read everything)
CREATE FUNCTION experiment.unit_value_layout(s experiment.source_scan, x text, old text, flat boolean DEFAULT false)
  RETURNS TABLE (col text, empty text, value_sql text)
  LANGUAGE sql IMMUTABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
  WITH spec AS (
    SELECT t.k, t.target, substr(t.target, 2) AS i, s.aggs[t.k] AS agg,
           CASE substr(t.target, 1, 1) WHEN 'v' THEN 'c' ELSE 'q' END || substr(t.target, 2) AS settled,
           format(CASE WHEN s.aggs[t.k] = 'sketch' THEN f.sketch ELSE f.val END, x, t.k) AS before_split,
           format(CASE WHEN s.aggs[t.k] = 'sketch' THEN f.sketch ELSE f.val END,
                  x, pg_catalog.array_length(s.targets, 1) + t.k) AS from_split,
           format(f.skipped, x, t.k) AS skipped_before,
           format(f.skipped, x, pg_catalog.array_length(s.targets, 1) + t.k) AS skipped_from
    FROM pg_catalog.unnest(s.targets) WITH ORDINALITY AS t(target, k),
         -- (flat: the scan's elements as columns a<k>, k<k> and b<k>, experiment.unit_value_merge_sql())
         (SELECT CASE WHEN flat THEN '%s.a%s' ELSE '%s.vals[%s]' END AS val,
                 CASE WHEN flat THEN '%s.k%s' ELSE '%s.sketches[%s]' END AS sketch,
                 CASE WHEN flat THEN 'coalesce(%s.b%s, 0)' ELSE 'coalesce(%s.skipped[%s], 0)' END AS skipped) f
  ), settled AS (
    SELECT sp.*, CASE WHEN old IS NULL THEN sp.before_split
                      ELSE experiment.merged_sql(sp.agg, old || '.' || sp.settled, sp.before_split, false) END AS settled_sql
    FROM spec sp
  )
  SELECT y.col, y.empty, y.value_sql FROM (
    SELECT st.k, 1 AS o, st.target AS col, CASE WHEN st.agg = 'sketch' THEN 'NULL' ELSE '0' END AS empty,
           experiment.merged_sql(st.agg, st.settled_sql, st.from_split, true) AS value_sql
    FROM settled st
    UNION ALL
    SELECT st.k, 2, st.settled, CASE WHEN st.agg IN ('max', 'sketch') THEN 'NULL' ELSE '0' END, st.settled_sql
    FROM settled st
    UNION ALL
    SELECT pg_catalog.max(st.k), 3, 's' || st.i, '0',
           concat(old || '.cs' || st.i || ' + ',
                  pg_catalog.string_agg(st.skipped_before || ' + ' || st.skipped_from, ' + ' ORDER BY st.k))
    FROM settled st GROUP BY st.i
    UNION ALL
    SELECT pg_catalog.max(st.k), 4, 'cs' || st.i, '0',
           concat(old || '.cs' || st.i || ' + ', pg_catalog.string_agg(st.skipped_before, ' + ' ORDER BY st.k))
    FROM settled st GROUP BY st.i
  ) y ORDER BY y.k, y.o
$$;
COMMENT ON FUNCTION experiment.unit_value_layout(experiment.source_scan, text, text, boolean) IS
  'internal: the stored per-unit value columns one scan fills, their value without events and the SQL of their value '
  'from a scan in split mode merged into the stored one (flat: its elements read as columns a<k>, b<k>, k<k>)';

-- the SQL that merges a scan's rows (alias x; flat: with its elements as columns a<k>, b<k> and
-- k<k>, experiment.unit_value_layout()) into the stored per-unit values (alias u) of an
-- incremental refresh: the SET list, and the condition that a unit's values changed
CREATE FUNCTION experiment.unit_value_merge_sql(s experiment.source_scan, flat boolean,
                                                OUT merge_set text, OUT changed text)
  LANGUAGE sql IMMUTABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
  SELECT coalesce(pg_catalog.string_agg(format('%s = %s', l.col, l.value_sql), ', '), ''),
         format('(%s) IS DISTINCT FROM (%s)', pg_catalog.string_agg('u.' || l.col, ', '),
                pg_catalog.string_agg(l.value_sql, ', '))
  FROM experiment.unit_value_layout(s, 'x', 'u', flat) l
$$;
COMMENT ON FUNCTION experiment.unit_value_merge_sql(experiment.source_scan, boolean) IS
  'internal: the SET list and the change condition that merge a scan''s rows into an experiment''s stored per-unit values';

-- the split of a source's events for a latest event time: least(latest, now()) less the
-- allowance, never after latest (an allowance may have parts of both signs); NULL without events
CREATE FUNCTION experiment.watermark_split(latest timestamptz, late_events interval) RETURNS timestamptz
  LANGUAGE sql STABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
  SELECT CASE WHEN latest IS NOT NULL
              THEN least(latest, experiment.timestamptz_add_clamped(least(latest, pg_catalog.now()), - late_events)) END
$$;
COMMENT ON FUNCTION experiment.watermark_split(timestamptz, interval) IS
  'internal: the split of a source''s events for its latest event time and lateness allowance';

-- whether a table of stored per-unit values has no row
CREATE FUNCTION experiment.unit_value_table_empty(t name) RETURNS boolean
  LANGUAGE plpgsql STABLE PARALLEL UNSAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
DECLARE
  any_row boolean;
BEGIN
  -- (a select list and a limit: Citus cannot plan an empty list over a distributed table, and
  -- sends the limit to each shard)
  EXECUTE format('SELECT EXISTS (SELECT 1 FROM experiment.%I LIMIT 1)', t) INTO any_row;
  RETURN NOT any_row;
END
$$;
COMMENT ON FUNCTION experiment.unit_value_table_empty(name) IS 'internal: whether a table of stored per-unit values is empty';
REVOKE EXECUTE ON FUNCTION experiment.unit_value_table_empty(name) FROM PUBLIC;

-- where incremental refresh may start reading exposures next time: no transaction that is
-- still open can store an exposure received earlier (received_at is its start); with prepared
-- transactions, without the privilege to see every session, or in a REPEATABLE READ or
-- SERIALIZABLE transaction (whose snapshot may predate a commit of a transaction that has
-- left pg_stat_activity by now), the watermark stays
CREATE FUNCTION experiment.exposures_watermark(previous timestamptz) RETURNS timestamptz
  LANGUAGE sql VOLATILE PARALLEL UNSAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
  SELECT CASE
    WHEN NOT (pg_catalog.pg_has_role(current_user, 'pg_read_all_stats', 'MEMBER')
              OR (SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname = current_user))
         OR EXISTS (SELECT FROM pg_catalog.pg_prepared_xacts)
         OR pg_catalog.current_setting('transaction_isolation') IN ('repeatable read', 'serializable')
      THEN coalesce(previous, '-infinity')
    ELSE least(pg_catalog.now(), (SELECT pg_catalog.min(a.xact_start) FROM pg_catalog.pg_stat_activity a
                                  WHERE a.xact_start IS NOT NULL))
  END
$$;
COMMENT ON FUNCTION experiment.exposures_watermark(timestamptz) IS
  'internal: the earliest received_at an exposure not yet visible can have (the start of the oldest open transaction)';
REVOKE EXECUTE ON FUNCTION experiment.exposures_watermark(timestamptz) FROM PUBLIC;

-- the work_mem of a refresh's statements within experiment.refresh_memory: a quarter of it, from
-- 64 kB to 256 MB (NULL: no bound)
CREATE FUNCTION experiment.refresh_work_mem() RETURNS text
  LANGUAGE sql STABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
  SELECT CASE WHEN b.bound > 0 THEN least(262144, greatest(64, b.bound / 4096))::text || 'kB' END
  FROM (SELECT pg_catalog.pg_size_bytes(pg_catalog.current_setting('experiment.refresh_memory')) AS bound) b
$$;
COMMENT ON FUNCTION experiment.refresh_work_mem() IS
  'internal: the work_mem of a refresh''s statements within experiment.refresh_memory (a quarter of it; NULL: no bound)';

-- the number of unit-hash partitions that keeps the per-unit values of one partition within
-- experiment.refresh_memory (src/unit_values.c; doc/scaling.md, "Memory")
CREATE FUNCTION experiment.unit_value_partitions(units bigint, specs integer, sources integer, key_bytes float8,
                                                 calendar_bounds integer DEFAULT NULL)
  RETURNS integer
  AS 'MODULE_PATHNAME', 'exp_unit_value_partitions'
  LANGUAGE C STABLE PARALLEL SAFE;
COMMENT ON FUNCTION experiment.unit_value_partitions(bigint, integer, integer, float8, integer) IS
  'internal: the number of unit-hash partitions a refresh of units units (scans of at most specs specs, '
  'sources scans, unit ids of key_bytes bytes on average, at most calendar_bounds distinct calendar offsets in a scan, '
  'NULL: two per spec) uses within experiment.refresh_memory (1: no bound)';

-- SQL of "unit_id is in partition part of nparts" (true when nparts is 1)
CREATE FUNCTION experiment.unit_partition_sql(unit_id text, nparts integer, part integer) RETURNS text
  LANGUAGE sql IMMUTABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
  SELECT CASE WHEN nparts <= 1 THEN 'true'
              ELSE format('(pg_catalog.hashtext(%s) OPERATOR(pg_catalog.&) 2147483647) OPERATOR(pg_catalog.%%) %s = %s',
                          unit_id, nparts, part) END
$$;
COMMENT ON FUNCTION experiment.unit_partition_sql(text, integer, integer) IS
  'internal: SQL of the condition that a unit id is in one of a refresh''s unit-hash partitions';

-- the partitions of a refresh of the units of relation units_from (SQL, alias u) whose sources
-- experiment.source_specs() lists
CREATE FUNCTION experiment.refresh_partitions(e experiment.experiments, units bigint, key_bytes float8)
  RETURNS integer
  LANGUAGE plpgsql STABLE PARALLEL UNSAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
DECLARE
  r integer;
BEGIN
  -- (the calendar bounds of a scan: its distinct window offsets with months, and with days
  -- too outside UTC, where a day is not always 24 hours; src/unit_values.c)
  SELECT experiment.unit_value_partitions(coalesce(units, 0), coalesce(pg_catalog.max(pg_catalog.cardinality(s.targets)), 0),
                                          count(*)::integer, coalesce(key_bytes, 16),
                                          coalesce(pg_catalog.max(
                                            (SELECT count(DISTINCT o::text) FROM pg_catalog.unnest(s.los || s.his) o
                                             WHERE pg_catalog.date_part('month', o) <> 0 OR pg_catalog.date_part('year', o) <> 0
                                                OR (pg_catalog.date_part('day', o) <> 0
                                                    AND pg_catalog.current_setting('TimeZone') <> 'UTC')))::integer, 0))
    INTO r FROM experiment.source_specs(e, NULL, NULL, true) s;
  RETURN r;
END
$$;
COMMENT ON FUNCTION experiment.refresh_partitions(experiment.experiments, bigint, float8) IS
  'internal: the number of unit-hash partitions of a refresh of an experiment''s units within experiment.refresh_memory';

-- a new table of stored per-unit values made the extension's: for its owner alone, whatever
-- default privileges say (per-unit values are per user), and commented
CREATE FUNCTION experiment.seal_unit_value_table(e experiment.experiments, relation name, distributed boolean)
  RETURNS void
  LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
DECLARE
  grantee text;
BEGIN
  FOR grantee IN SELECT DISTINCT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE a.grantee::regrole::text END
                 FROM pg_catalog.pg_class c, LATERAL pg_catalog.aclexplode(c.relacl) a
                 WHERE c.oid = format('experiment.%I', relation)::regclass AND a.grantee <> c.relowner LOOP
    EXECUTE format('REVOKE ALL ON experiment.%I FROM %s', relation, grantee);
  END LOOP;
  EXECUTE format('COMMENT ON TABLE experiment.%I IS %L', relation,
                 format('stored per-unit values of experiment %s (experiment.refresh(), doc/scaling.md%s)', e.id,
                        CASE WHEN distributed THEN '; distributed' ELSE '' END));
END
$$;
COMMENT ON FUNCTION experiment.seal_unit_value_table(experiment.experiments, name, boolean) IS
  'internal: revokes every privilege but its owner''s on a new table of stored per-unit values, and comments it';
REVOKE EXECUTE ON FUNCTION experiment.seal_unit_value_table(experiment.experiments, name, boolean) FROM PUBLIC;

-- a full refresh's new table of stored per-unit values put in place of the experiment's old one
-- (dropped), with the definition it was built for, the exposures watermark and the sources'
-- watermarks of pg_temp.exp_marks
CREATE FUNCTION experiment.install_unit_value_table(e experiment.experiments, st experiment.unit_value_tables,
                                                    relation name, fp text, xsince timestamptz)
  RETURNS void
  LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
BEGIN
  IF st.experiment_id IS NOT NULL THEN
    PERFORM experiment.drop_unit_value_table(st.relation);
    UPDATE experiment.unit_value_tables u
      SET relation = install_unit_value_table.relation, definition = fp, exposures_since = xsince,
          refreshed_at = pg_catalog.now()
      WHERE u.experiment_id = e.id;
    DELETE FROM experiment.source_watermarks w WHERE w.experiment_id = e.id;
  ELSE
    INSERT INTO experiment.unit_value_tables (experiment_id, relation, definition, exposures_since, refreshed_at)
    VALUES (e.id, relation, fp, xsince, pg_catalog.now());
  END IF;
  INSERT INTO experiment.source_watermarks SELECT * FROM pg_temp.exp_marks;
END
$$;
COMMENT ON FUNCTION experiment.install_unit_value_table(experiment.experiments, experiment.unit_value_tables, name, text,
                                                        timestamptz) IS
  'internal: puts a full refresh''s new table of stored per-unit values in place of the old one, with its watermarks';
REVOKE EXECUTE ON FUNCTION experiment.install_unit_value_table(experiment.experiments, experiment.unit_value_tables, name,
                                                               text, timestamptz) FROM PUBLIC;

-- the stored per-unit values of an experiment brought up to date, incrementally when it can:
-- the table's name, whether the refresh was full or incremental and why it was full, and the
-- number of unit-hash partitions its scans used (experiment.refresh_memory)
CREATE FUNCTION experiment.refresh_unit_values(e experiment.experiments, force_full boolean,
    OUT relation name, OUT mode text, OUT reason text, OUT partitions integer)
  LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
DECLARE
  st experiment.unit_value_tables;
  wm experiment.source_watermarks;
  sc experiment.source_scan;
  fp text;
  xsince timestamptz;
  several text;
  unmarked text;
  min_t0 timestamptz;
  max_t0 timestamptz;
  latest timestamptz;
  split timestamptz;
  scan_from timestamptz;
  vals_cols text := '';
  joins text := '';
  empty_cols text;
  empty_vals text;
  reset_set text;
  merge_set text;
  changed text;
  touch_cols text;
  touch_sel text;
  nreset bigint;
  reset_parts integer;
  passes integer;
  sel text;
  nunits bigint;
  key_bytes float8;
  no_units text := experiment.unit_arrays_sql(
    '(SELECT NULL::text AS unit_id, NULL::text AS variant, NULL::timestamptz AS t0 WHERE false) u');
  scans experiment.source_scan[] := '{}';
  splits timestamptz[] := '{}';
  distributed boolean;
BEGIN
  PERFORM experiment.drop_refresh_tables();
  PERFORM experiment.create_base_table(e);
  PERFORM experiment.create_dims_table(e);
  -- on Citus, with distributed and co-located sources: the values on the workers (src/sql/100_citus.sql)
  distributed := (experiment.citus_placement(e)).placement = 'distributed';
  fp := experiment.unit_values_definition(e);
  SELECT * INTO st FROM experiment.unit_value_tables u WHERE u.experiment_id = e.id FOR UPDATE;
  -- (before the exposures are read: the sessions that could still store earlier ones)
  xsince := experiment.exposures_watermark(st.exposures_since);
  SELECT pg_catalog.string_agg(s.source::text, ', ' ORDER BY s.src_no) FILTER (WHERE s.time_column IS NULL),
         -- a watermark that is missing, or whose allowance grew (the events it now allows
         -- again were settled: only a full refresh reads them)
         pg_catalog.string_agg(s.source::text, ', ' ORDER BY s.src_no)
           FILTER (WHERE s.time_column IS NOT NULL AND NOT EXISTS (
                     SELECT FROM experiment.source_watermarks w
                     WHERE w.experiment_id = e.id AND w.source = s.source AND w.unit_column = s.unit_column
                       AND w.owner = s.reader AND w.time_column = s.time_column
                       AND w.late_events >= s.late_events))
    INTO several, unmarked
  FROM experiment.source_specs(e, NULL, NULL, true) s;
  reason := CASE
    WHEN force_full THEN 'requested (full => true)'
    WHEN st.experiment_id IS NULL THEN 'no stored per-unit values yet'
    WHEN pg_catalog.to_regclass(format('experiment.%I', st.relation)) IS NULL THEN 'the stored per-unit values are missing'
    -- (an unlogged table: empty after a crash)
    WHEN experiment.unit_value_table_empty(st.relation) THEN 'no stored per-unit values (none yet, or lost in a crash)'
    WHEN st.definition IS DISTINCT FROM fp THEN 'the experiment''s end, its metrics or its dimensions changed'
    WHEN several IS NOT NULL THEN format('the metrics of %s read several time columns: no watermark', several)
    WHEN unmarked IS NOT NULL THEN format('no watermark of %s, or its lateness allowance grew', unmarked)
    WHEN experiment.citus_is_distributed(st.relation) <> distributed
      THEN 'the placement of the per-unit values changed (local or distributed)'
  END;

  IF reason IS NOT NULL THEN
    mode := 'full';
    IF distributed THEN
      SELECT f.uv_rel, f.parts INTO relation, partitions FROM experiment.citus_full_unit_values(e, st, fp, xsince) f;
      RETURN;
    END IF;
    -- units (those in several variants kept, marked)
    PERFORM experiment.create_units_table(e);
    SELECT pg_catalog.min(u.t0), pg_catalog.max(u.t0), count(*), pg_catalog.avg(pg_catalog.octet_length(u.unit_id))
      INTO min_t0, max_t0, nunits, key_bytes FROM pg_temp.exp_units u WHERE NOT u.multi;
    -- beyond experiment.refresh_memory, the units in unit-hash partitions, each scanned apart
    partitions := experiment.refresh_partitions(e, nunits, key_bytes);

    CREATE TEMP TABLE exp_marks (LIKE experiment.source_watermarks) ON COMMIT DROP;
    FOR sc IN SELECT * FROM experiment.source_specs(e, min_t0, max_t0, true) LOOP
      IF sc.time_column IS NULL THEN
        split := 'infinity';   -- no watermark: everything is settled, and the next refresh is full again
        latest := NULL;
      ELSE
        -- the latest event time now, not the one remembered (a full refresh after a
        -- future-dated event was deleted starts afresh; an index on the time column
        -- answers this without a scan)
        EXECUTE format('SELECT x.latest FROM %s, %s x', no_units,
                       experiment.source_call_sql(sc, e.end_at, sc.lower_bound, sc.upper_bound, NULL, true, false))
          INTO latest;
        split := coalesce(experiment.watermark_split(latest, sc.late_events), '-infinity');
      END IF;
      INSERT INTO pg_temp.exp_marks VALUES (e.id, sc.source, sc.unit_column, sc.reader, sc.time_column, sc.late_events,
                                            split, latest);
      SELECT vals_cols || pg_catalog.string_agg(format(', %s AS %s', l.value_sql, l.col), '')
        INTO vals_cols FROM experiment.unit_value_layout(sc, format('x%s', sc.src_no), NULL) l;
      scans := scans || sc;
      splits := splits || split;
    END LOOP;

    -- unlogged (derived data, rebuilt in full when a crash empties it) and with room on each
    -- page for the updates of incremental refreshes
    relation := 'unit_values_' || pg_catalog.nextval('experiment.unit_value_tables_seq');
    -- (the dimension values d<j> of the first exposures: from the units, joined back when a
    -- source was scanned)
    IF pg_catalog.cardinality(scans) = 0 THEN
      EXECUTE format('CREATE UNLOGGED TABLE experiment.%I WITH (fillfactor = 80) AS '
                     'SELECT u.unit_id, u.variant, u.t0, false AS multi, false AS reset%s '
                     'FROM pg_temp.exp_units u WHERE NOT u.multi', relation, experiment.dims_columns_sql('u'));
    ELSE
      -- one statement per partition (the first creates the table), each with the units of its
      -- partition and one scan of each source (which reads the units of its partition itself)
      FOR part IN 0 .. partitions - 1 LOOP
        joins := experiment.scans_join_sql(scans, splits, e.end_at, 'pg_temp.exp_units', partitions, part, nunits);
        IF experiment.dims_columns_sql('du') = '' THEN
          sel := format('SELECT x1.unit_id, x1.variant, x1.t0, false AS multi, false AS reset%s FROM %s '
                        'WHERE x1.unit_id IS NOT NULL', vals_cols, joins);
        ELSE
          sel := format('SELECT x1.unit_id, x1.variant, x1.t0, false AS multi, false AS reset%s%s FROM %s '
                        'JOIN pg_temp.exp_units du ON du.unit_id = x1.unit_id', vals_cols,
                        experiment.dims_columns_sql('du'), joins);
        END IF;
        IF part = 0 THEN
          EXECUTE format('CREATE UNLOGGED TABLE experiment.%I WITH (fillfactor = 80) AS %s', relation, sel);
        ELSE
          EXECUTE format('INSERT INTO experiment.%I %s', relation, sel);
        END IF;
      END LOOP;
    END IF;
    EXECUTE format('INSERT INTO experiment.%I (unit_id, variant, t0, multi, reset%s) '
                   'SELECT u.unit_id, u.variant, u.t0, true, false%s FROM pg_temp.exp_units u WHERE u.multi', relation,
                   replace(experiment.dims_columns_sql('u'), 'u.', ''), experiment.dims_columns_sql('u'));
    -- (the index finds the units of new exposures; it is on a column no update changes, so
    -- updates stay HOT)
    EXECUTE format('ALTER TABLE experiment.%I ALTER unit_id SET NOT NULL, ADD UNIQUE (unit_id)', relation);
    EXECUTE format('ALTER EXTENSION experiment ADD TABLE experiment.%I', relation);
    -- (the number of variants and days of first exposure, which the statistics of the columns
    -- alone put at one group per unit: with it, refresh() groups the units by them in parallel;
    -- a statistics object cannot be an extension member: it goes with its table, and pg_dump
    -- leaves it out as it does the table)
    EXECUTE format('CREATE STATISTICS experiment.%I (ndistinct) ON multi, variant, ((t0 AT TIME ZONE ''UTC'')::date) '
                   'FROM experiment.%I', relation || '_days', relation);
    -- (from a sample of 3,000 rows: enough for the variants and days, and 15 ms where the default
    -- sample of 30,000 takes 0.2-0.45 s at a million units)
    EXECUTE format('ALTER TABLE experiment.%I ALTER multi SET STATISTICS 10, ALTER variant SET STATISTICS 10, '
                   'ALTER t0 SET STATISTICS 10', relation);
    EXECUTE format('ALTER STATISTICS experiment.%I SET STATISTICS 10', relation || '_days');
    EXECUTE format('ANALYZE experiment.%I (multi, variant, t0)', relation);
    PERFORM experiment.seal_unit_value_table(e, relation, false);
    PERFORM experiment.install_unit_value_table(e, st, relation, fp, xsince);
    RETURN;
  END IF;

  -- incremental: the exposures received since the watermark change units or add them
  mode := 'incremental';
  relation := st.relation;
  -- (no other writer until this refresh commits: its update finds the stored rows by the ctids
  -- its scans read; readers, such as refresh_interactions(), go on)
  IF NOT distributed THEN
    EXECUTE format('LOCK TABLE experiment.%I IN EXCLUSIVE MODE', relation);
  END IF;
  -- the units: those of the previous refresh and the new ones (ids' length from a sample)
  EXECUTE format('SELECT pg_catalog.avg(pg_catalog.octet_length(u.unit_id)) FROM (SELECT t.unit_id FROM experiment.%I t LIMIT 1000) u',
                 relation) INTO key_bytes;
  -- (with the dimension values of the earliest new exposure: they are the unit's when it is
  -- new, or when that exposure comes before its first one)
  EXECUTE format(
    'CREATE TEMP TABLE exp_newx ON COMMIT DROP AS '
    'SELECT xp.unit_id, pg_catalog.min(xp.variant) AS minv, pg_catalog.max(xp.variant) AS maxv, '
    '       pg_catalog.min(xp.exposed_at) AS t0%s '
    'FROM experiment.exposures xp '
    'WHERE xp.experiment_id = %L AND xp.received_at >= %L::timestamptz '
    '  AND (%L::timestamptz IS NULL OR xp.exposed_at < %L::timestamptz) '
    'GROUP BY xp.unit_id', experiment.first_exposure_dims_sql(), e.id, st.exposures_since, e.end_at, e.end_at);
  ANALYZE pg_temp.exp_newx;
  SELECT coalesce(f.enrolled_units, 0) + coalesce(f.multi_variant_units, 0) INTO nunits
    FROM experiment.refreshes f WHERE f.experiment_id = e.id;
  nunits := coalesce(nunits, 0) + (SELECT count(*) FROM pg_temp.exp_newx);
  SELECT coalesce(pg_catalog.string_agg(l.col, ', ' ORDER BY s.src_no, l.ord), ''),
         coalesce(pg_catalog.string_agg(l.empty, ', ' ORDER BY s.src_no, l.ord), ''),
         coalesce(pg_catalog.string_agg(format('%s = CASE WHEN n.t0 < u.t0 THEN %s ELSE u.%s END', l.col, l.empty, l.col),
                                        ', ' ORDER BY s.src_no, l.ord), '')
    INTO empty_cols, empty_vals, reset_set
  FROM experiment.source_specs(e, NULL, NULL, true) s,
       LATERAL (SELECT y.*, row_number() OVER () AS ord FROM experiment.unit_value_layout(s, 'x', 'u') y) l;
  -- the dimension values: those of the new first exposure
  SELECT empty_cols || CASE WHEN empty_cols <> '' AND d.cols <> '' THEN ', ' ELSE '' END || d.cols,
         empty_vals || CASE WHEN empty_vals <> '' AND d.cols <> '' THEN ', ' ELSE '' END || d.vals,
         reset_set || CASE WHEN reset_set <> '' AND d.cols <> '' THEN ', ' ELSE '' END || d.sets
    INTO empty_cols, empty_vals, reset_set
    FROM (SELECT coalesce(pg_catalog.string_agg(format('d%s', x.j), ', ' ORDER BY x.j), '') AS cols,
                 coalesce(pg_catalog.string_agg(format('n.d%s', x.j), ', ' ORDER BY x.j), '') AS vals,
                 coalesce(pg_catalog.string_agg(format('d%s = CASE WHEN n.t0 < u.t0 THEN n.d%s ELSE u.d%s END', x.j, x.j, x.j),
                                                ', ' ORDER BY x.j), '') AS sets
          FROM pg_temp.exp_dims x) d;
  -- a unit exposed to another variant leaves the analysis; one exposed earlier is read again in full
  EXECUTE format('UPDATE experiment.%I u SET multi = u.multi OR n.minv <> n.maxv OR n.minv <> u.variant, '
                 'variant = least(u.variant, n.minv), t0 = least(u.t0, n.t0), reset = u.reset OR n.t0 < u.t0%s '
                 'FROM pg_temp.exp_newx n WHERE n.unit_id = u.unit_id AND NOT u.multi '
                 'AND (n.minv <> u.variant OR n.maxv <> u.variant OR n.t0 < u.t0)',
                 relation, CASE WHEN reset_set = '' THEN '' ELSE ', ' || reset_set END);
  -- (the units not stored yet: the others are in conflict on the unique unit_id)
  EXECUTE format('INSERT INTO experiment.%I (unit_id, variant, t0, multi, reset%s) '
                 'SELECT n.unit_id, n.minv, n.t0, n.minv <> n.maxv, true%s FROM pg_temp.exp_newx n '
                 'ON CONFLICT (unit_id) DO NOTHING',
                 relation, CASE WHEN empty_cols = '' THEN '' ELSE ', ' || empty_cols END,
                 CASE WHEN empty_vals = '' THEN '' ELSE ', ' || empty_vals END);

  -- each source: events from its watermark on for every unit, all events of new and reset units
  -- (new and reset units are among those of the new exposures; the latest first exposure is at
  -- most the later of the previous refresh's and the new exposures')
  EXECUTE format('SELECT pg_catalog.min(u.t0) FILTER (WHERE u.reset), count(*) FILTER (WHERE u.reset) '
                 'FROM pg_temp.exp_newx n JOIN experiment.%I u ON u.unit_id = n.unit_id WHERE NOT u.multi', relation)
    INTO min_t0, nreset;
  -- (the scans of the new and reset units: partitions for as many as they are)
  reset_parts := experiment.refresh_partitions(e, nreset, key_bytes);
  -- (reported: the most partitions or passes of a scan)
  partitions := reset_parts;
  SELECT greatest((SELECT f.last_exposure FROM experiment.refreshes f WHERE f.experiment_id = e.id),
                  (SELECT pg_catalog.max(n.t0) FROM pg_temp.exp_newx n))
    INTO max_t0;
  IF distributed THEN
    -- (on the Citus workers, shard by shard: src/sql/100_citus.sql)
    partitions := experiment.citus_incremental_scans(e, relation, min_t0, max_t0);
  END IF;
  FOR sc IN SELECT * FROM experiment.source_specs(e, min_t0, max_t0, true) WHERE NOT distributed LOOP
    SELECT * INTO wm FROM experiment.source_watermarks w
    WHERE w.experiment_id = e.id AND w.source = sc.source AND w.unit_column = sc.unit_column AND w.owner = sc.reader;
    -- the split: from the latest event time the previous scan saw (this scan's is stored for
    -- the next), never earlier than the watermark (which stays while no event was seen)
    split := greatest(wm.settled_before, experiment.watermark_split(wm.latest_event, sc.late_events));
    -- (the scans' rows are kept with an element per column, x.vals[k] as x.a<k>, x.skipped[k]
    -- as x.b<k> and x.sketches[k] as x.k<k>: the update below reads each element several
    -- times, and an element of a small stored array costs a copy of the whole array)
    SELECT m.merge_set, m.changed INTO merge_set, changed FROM experiment.unit_value_merge_sql(sc, true) m;
    SELECT pg_catalog.string_agg(format(', a%s float8, b%s bigint, k%s experiment.sketch', k, k, k), '' ORDER BY k),
           pg_catalog.string_agg(format(', x.vals[%s], x.skipped[%s], x.sketches[%s]', k, k, k), '' ORDER BY k)
      INTO touch_cols, touch_sel
      FROM pg_catalog.generate_series(1, 2 * pg_catalog.cardinality(sc.targets)) k;
    -- the units read before: their events from the watermark on (the scan's lower bound), in one
    -- scan that reads those events first and then only the units that have some (within
    -- experiment.refresh_memory in passes of its own: src/unit_values.c); the new and reset units
    -- apart, all their events, with a hash table of their own that is small (beyond
    -- experiment.refresh_memory, partition by partition: each scan with the units of one)
    EXECUTE format('CREATE TEMP TABLE exp_touch (unit_id text, tid tid, latest timestamptz%s) ON COMMIT DROP',
                   touch_cols);
    EXECUTE format('INSERT INTO pg_temp.exp_touch SELECT x.unit_id, x.tid, x.latest%s FROM %s x', touch_sel,
                   experiment.source_from_sql(sc, format('experiment.%I', relation), false, 1, 0, nunits,
                                              e.end_at, wm.settled_before, sc.upper_bound, split, true));
    FOR part IN 0 .. reset_parts - 1 LOOP
      IF min_t0 IS NOT NULL THEN
        EXECUTE format('INSERT INTO pg_temp.exp_touch SELECT x.unit_id, x.tid, NULL%s FROM %s x WHERE x.unit_id IS NOT NULL',
                       touch_sel,
                       experiment.source_from_sql(sc, format('experiment.%I', relation), true, reset_parts, part, nreset,
                                                  e.end_at, sc.lower_bound, sc.upper_bound, split, true));
      END IF;
    END LOOP;
    ANALYZE pg_temp.exp_touch;
    -- (a unit whose events are all read again unchanged is not written; each stored row found by
    -- the ctid the scans read it at, in the order they read them, instead of hashing every
    -- stored row: nothing else writes the table while this refresh holds its EXCLUSIVE lock, and
    -- the scans ran after the updates before them; doc/scaling.md#cost)
    PERFORM experiment.execute_by_tid(format(
      'UPDATE experiment.%I u SET %s FROM pg_temp.exp_touch x WHERE u.ctid = x.tid AND u.unit_id = x.unit_id AND %s',
      relation, merge_set, changed));
    -- (the latest time the scan of the units read before saw, and its passes over them)
    SELECT pg_catalog.max(x.latest), pg_catalog.max(x.b1) INTO latest, passes FROM pg_temp.exp_touch x WHERE x.unit_id IS NULL;
    partitions := greatest(partitions, passes);
    DROP TABLE pg_temp.exp_touch;
    UPDATE experiment.source_watermarks w
      SET settled_before = split, latest_event = greatest(w.latest_event, latest), late_events = sc.late_events
      WHERE w.experiment_id = e.id AND w.source = sc.source AND w.unit_column = sc.unit_column AND w.owner = sc.reader;
  END LOOP;
  EXECUTE format('UPDATE experiment.%I u SET reset = false FROM pg_temp.exp_newx n '
                 'WHERE u.unit_id = n.unit_id AND u.reset', relation);
  UPDATE experiment.unit_value_tables u SET exposures_since = xsince, refreshed_at = pg_catalog.now()
    WHERE u.experiment_id = e.id;
END
$$;
COMMENT ON FUNCTION experiment.refresh_unit_values(experiment.experiments, boolean) IS
  'internal: brings an experiment''s stored per-unit values up to date: in full, or incrementally from the watermarks of its exposures and sources';
REVOKE EXECUTE ON FUNCTION experiment.refresh_unit_values(experiment.experiments, boolean) FROM PUBLIC;

-- exact percentiles of a query's float8 columns by selection, as percentile_cont computes them
-- (src/percentiles.c): the caps of experiment.winsorization_caps()
CREATE FUNCTION experiment.exact_percentiles(query text, fractions float8[], ignore_zeros boolean[],
    max_values bigint)
  RETURNS float8[]
  AS 'MODULE_PATHNAME', 'exp_exact_percentiles'
  -- (it runs query through SPI: never in a parallel query)
  LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION experiment.exact_percentiles(text, float8[], boolean[], bigint) IS
  'internal: for column j of query (float8), its percentile_cont at fractions[2j-1] and fractions[2j] (NULL: none) '
  'over its values that are not NULL (nor 0 when ignore_zeros[j]), by selection; NULL when the columns hold more '
  'than max_values values in all (NULL: no limit)';

-- the caps of each base metric's values v<i> and pre-period values p<i> over the units of
-- vals_from (doc/analysis.md, "Winsorization"): the pooled percentiles winsorize_lower and
-- winsorize (over the values that are not 0 with cap_ignore_zeros; the pre-period values at
-- percentiles of their own) combined with the absolute caps cap_lower and cap_upper by
-- experiment.effective_caps(); caps and lower_caps are the upper and lower caps of v<i>,
-- pre_caps and pre_lower_caps those of p<i> (NULL: no cap), capped and pre_capped the SQL of
-- the capped columns (experiment.capped_sql())
CREATE FUNCTION experiment.winsorization_caps(vals_from text,
    OUT caps float8[], OUT lower_caps float8[], OUT pre_caps float8[], OUT pre_lower_caps float8[],
    OUT capped text[], OUT pre_capped text[])
  LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
DECLARE
  pct_sql text;
  pick_sql text;
  cols_sql text;
  -- fractions[j]: the lower and upper fraction of the j-th capped column
  fractions float8[];
  ignore_zeros boolean[];
  -- slots[j]: where the two percentiles of the j-th capped column go in pct
  slots integer[];
  -- picked[2j-1], picked[2j]: the lower and upper percentile of the j-th capped column
  picked float8[];
  -- pct[4i-3], pct[4i-2]: the lower and upper percentile of v<i>; pct[4i-1], pct[4i]: of p<i>
  pct float8[];
BEGIN
  SELECT string_agg(format('percentile_cont(ARRAY[%L::float8, %L::float8]) WITHIN GROUP (ORDER BY v.%s)%s AS %s',
                           m2.winsorize_lower, m2.winsorize, c.col,
                           CASE WHEN m2.cap_ignore_zeros THEN format(' FILTER (WHERE v.%s <> 0)', c.col) ELSE '' END,
                           c.col), ', ' ORDER BY b.i, c.k) FILTER (WHERE c.pct),
         string_agg(format('q.%s[1], q.%s[2]', c.col, c.col), ', ' ORDER BY b.i, c.k) FILTER (WHERE c.pct),
         string_agg(format('v.%s', c.col), ', ' ORDER BY b.i, c.k) FILTER (WHERE c.pct),
         array_agg(ARRAY[m2.winsorize_lower, m2.winsorize]::float8[] ORDER BY b.i, c.k) FILTER (WHERE c.pct),
         array_agg(m2.cap_ignore_zeros ORDER BY b.i, c.k) FILTER (WHERE c.pct),
         array_agg(ARRAY[4 * b.i - 4 + 2 * c.k - 1, 4 * b.i - 4 + 2 * c.k] ORDER BY b.i, c.k) FILTER (WHERE c.pct)
    INTO pct_sql, pick_sql, cols_sql, fractions, ignore_zeros, slots
    FROM pg_temp.exp_base b JOIN experiment.metrics m2 ON m2.name = b.name
    CROSS JOIN LATERAL (VALUES (1, 'v' || b.i), (2, 'p' || b.i)) c0(k, col)
    CROSS JOIN LATERAL (SELECT c0.k, c0.col, (m2.winsorize IS NOT NULL OR m2.winsorize_lower IS NOT NULL)
                                             AND (c0.k = 1 OR b.pre) AS pct) c;
  -- (the percentile of no value, all zeros with cap_ignore_zeros, is NULL: no percentile cap)
  IF pct_sql IS NOT NULL THEN
    -- by selection, within the refresh's work_mem (8 bytes a value, twice that while its
    -- arrays grow; without experiment.refresh_memory no bound); beyond it, one sort per column
    -- (percentile_cont of both fractions at once, spilling to disk)
    -- (fractions: the pairs, one after the other)
    picked := experiment.exact_percentiles(format('SELECT %s FROM %s v', cols_sql, vals_from),
                                           ARRAY(SELECT pg_catalog.unnest(fractions)),
                                           ignore_zeros, pg_catalog.pg_size_bytes(experiment.refresh_work_mem()) / 16);
    IF picked IS NULL THEN
      -- (the same layout: two percentiles per capped column)
      EXECUTE format('SELECT ARRAY[%s]::float8[] FROM (SELECT %s FROM %s v) q', pick_sql, pct_sql, vals_from)
        INTO picked;
    END IF;
    pct := pg_catalog.array_fill(NULL::float8, ARRAY[4 * (SELECT pg_catalog.max(b.i) FROM pg_temp.exp_base b)]);
    FOR j IN 1 .. pg_catalog.array_length(slots, 1) LOOP
      pct[slots[j][1]] := picked[2 * j - 1];
      pct[slots[j][2]] := picked[2 * j];
    END LOOP;
  END IF;
  SELECT coalesce(array_agg(c.upper_cap ORDER BY b.i), '{}'), coalesce(array_agg(c.lower_cap ORDER BY b.i), '{}'),
         coalesce(array_agg(cp.upper_cap ORDER BY b.i), '{}'), coalesce(array_agg(cp.lower_cap ORDER BY b.i), '{}'),
         coalesce(array_agg(experiment.capped_sql('v', b.i, c.lower_cap, c.upper_cap, m2.cap_ignore_zeros) ORDER BY b.i), '{}'),
         coalesce(array_agg(experiment.capped_sql('p', b.i, cp.lower_cap, cp.upper_cap, m2.cap_ignore_zeros) ORDER BY b.i), '{}')
    INTO caps, lower_caps, pre_caps, pre_lower_caps, capped, pre_capped
    FROM pg_temp.exp_base b JOIN experiment.metrics m2 ON m2.name = b.name
    CROSS JOIN LATERAL experiment.effective_caps(pct[4 * b.i - 3], pct[4 * b.i - 2], m2.cap_lower, m2.cap_upper) c
    -- (no pre-period value: no caps)
    CROSS JOIN LATERAL experiment.effective_caps(pct[4 * b.i - 1], pct[4 * b.i], CASE WHEN b.pre THEN m2.cap_lower END,
                                                 CASE WHEN b.pre THEN m2.cap_upper END) cp;
END
$$;
COMMENT ON FUNCTION experiment.winsorization_caps(text) IS
  'internal: the lower and upper caps of an experiment''s base metrics (pooled percentiles and absolute caps) over a relation of per-unit values, and the SQL of the capped values';

-- the per-unit values of an experiment's metrics, as refresh and aa_test read them: temporary
-- tables exp_units (the analysed units: first variant and exposure), exp_base (the base
-- metrics, numbered i) and, when keep or a metric has a percentile cap, exp_vals (unit_id,
-- variant, v<i> = the value of base metric i, p<i> = its pre-period value); vals_from is
-- exp_vals or the query that computes it; capped and pre_capped are the SQL of v<i> and p<i>
-- capped (experiment.winsorization_caps())
CREATE FUNCTION experiment.prepare_unit_values(e experiment.experiments, keep boolean, as_owner boolean,
    OUT vals_from text, OUT capped text[], OUT pre_capped text[], OUT nmulti bigint, OUT nunits bigint,
    OUT nearly bigint, OUT min_t0 timestamptz, OUT max_t0 timestamptz)
  LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
DECLARE
  sc experiment.source_scan;
  src_no integer := 0;
  vals_sql text;
  vals_cols text := '';
  parts integer := 1;
  scans experiment.source_scan[] := '{}';
BEGIN
  -- units: first exposure defines variant and start; units in several variants are excluded
  PERFORM experiment.drop_refresh_tables();
  PERFORM experiment.create_units_table(e);
  SELECT count(*) FILTER (WHERE u.multi), count(*) FILTER (WHERE NOT u.multi),
         count(*) FILTER (WHERE NOT u.multi AND u.t0 < e.start_at),
         pg_catalog.min(u.t0) FILTER (WHERE NOT u.multi), pg_catalog.max(u.t0) FILTER (WHERE NOT u.multi)
    INTO nmulti, nunits, nearly, min_t0, max_t0
    FROM exp_units u;
  DELETE FROM exp_units WHERE multi;
  ANALYZE exp_units;

  PERFORM experiment.create_base_table(e);

  -- one scan per source relation, however many metrics read it: experiment.source_unit_values()
  -- returns every unit (zero-filled) with the values of the metrics of that source in vals
  -- each source is read as the metric's owner (refresh) or as the current user (aa_test)
  FOR sc IN SELECT * FROM experiment.source_specs(e, min_t0, max_t0, as_owner) LOOP
    src_no := sc.src_no;
    vals_cols := vals_cols || experiment.unit_value_columns(sc, format('x%s', src_no));
    scans := scans || sc;
  END LOOP;

  -- beyond experiment.refresh_memory, the units in unit-hash partitions (kept in exp_vals)
  IF src_no > 0 THEN
    SELECT experiment.refresh_partitions(e, nunits, pg_catalog.avg(pg_catalog.octet_length(u.unit_id)))
      INTO parts FROM pg_temp.exp_units u;
  END IF;
  -- per-unit values, zero-filled: one statement, one scan of each source
  IF src_no = 0 THEN
    vals_sql := 'SELECT u.unit_id, u.variant FROM pg_temp.exp_units u';
  ELSE
    vals_sql := format('SELECT x1.unit_id, x1.variant%s FROM %s', vals_cols,
                       experiment.scans_join_sql(scans, '{}', e.end_at, 'pg_temp.exp_units', 1, 0, nunits));
  END IF;
  -- caps: pooled percentiles over all analysed units (a second read of the values: they are kept)
  IF keep OR parts > 1 OR EXISTS (SELECT FROM pg_temp.exp_base b JOIN experiment.metrics m2 ON m2.name = b.name
                                  WHERE m2.winsorize IS NOT NULL OR m2.winsorize_lower IS NOT NULL) THEN
    IF parts = 1 THEN
      EXECUTE 'CREATE TEMP TABLE exp_vals ON COMMIT DROP AS ' || vals_sql;
    ELSE
      -- one statement per partition, each with the units of its partition and a scan of each source
      FOR part IN 0 .. parts - 1 LOOP
        vals_sql := format('SELECT x1.unit_id, x1.variant%s FROM %s', vals_cols,
                           experiment.scans_join_sql(scans, '{}', e.end_at, 'pg_temp.exp_units', parts, part, nunits));
        EXECUTE CASE WHEN part = 0 THEN 'CREATE TEMP TABLE exp_vals ON COMMIT DROP AS '
                     ELSE 'INSERT INTO pg_temp.exp_vals ' END || vals_sql;
      END LOOP;
    END IF;
    vals_from := 'pg_temp.exp_vals';
  ELSE
    vals_from := '(' || vals_sql || ')';
  END IF;
  SELECT w.capped, w.pre_capped INTO capped, pre_capped FROM experiment.winsorization_caps(vals_from) w;
END
$$;
COMMENT ON FUNCTION experiment.prepare_unit_values(experiment.experiments, boolean, boolean) IS
  'internal: the temporary tables of per-unit values that experiment.refresh() and experiment.aa_test() read, and the SQL of the capped values';

-- run a statement that groups the stored per-unit values by a few keys (variant, day, dimension
-- value) with a hash aggregate: with the stored table's statistics (autovacuum analyzes it) the
-- planner counts a group per first-exposure time, and prefers sorting the whole table, twice
-- as slow (doc/scaling.md, "Cost"); the groups are few
CREATE FUNCTION experiment.execute_grouped(stmt text) RETURNS void
  LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
  SET search_path = pg_catalog, experiment, pg_temp
  SET enable_sort = off
AS $$
BEGIN
  EXECUTE stmt;
END
$$;
COMMENT ON FUNCTION experiment.execute_grouped(text) IS
  'internal: runs a statement of refresh() that groups the stored per-unit values, with a hash aggregate';
REVOKE EXECUTE ON FUNCTION experiment.execute_grouped(text) FROM PUBLIC;

-- a statement of an incremental refresh that updates the stored per-unit values of the units its
-- scans read, each row found by its ctid (a nested loop of TID scans, not a hash of every stored
-- row nor a probe of the index on unit_id)
CREATE FUNCTION experiment.execute_by_tid(stmt text) RETURNS void
  LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
  SET search_path = pg_catalog, experiment, pg_temp
  SET enable_hashjoin = off
  SET enable_mergejoin = off
  SET enable_indexscan = off
  SET enable_bitmapscan = off
  SET enable_seqscan = off
AS $$
BEGIN
  EXECUTE stmt;
END
$$;
COMMENT ON FUNCTION experiment.execute_by_tid(text) IS
  'internal: runs a statement of an incremental refresh that joins the units its scans read to their stored rows by ctid';
REVOKE EXECUTE ON FUNCTION experiment.execute_by_tid(text) FROM PUBLIC;

-- the SQL of the moments of an experiment's metrics over per-unit values (alias v), for
-- experiment.refresh(): aggs, the aggregates ", experiment.moments(...) AS a<j>, sum(...) AS k<j>
-- [, experiment.moments(...) AS c<j>]" of each metric j from the capped values (capped[i],
-- pre_capped[i]: SQL of base metric i's capped value and pre-period value), and unpivot, the rows
-- ", (metric, a.a<j>, a.c<j>, cap, cap_lower, a.k<j>)" that turn them into one row per metric
-- (caps[i], lower_caps[i]: SQL of base metric i's caps); a metric added while the refresh ran
-- has no stored values and is left out
CREATE FUNCTION experiment.metric_moments_sql(e experiment.experiments, capped text[], pre_capped text[],
    caps text[], lower_caps text[], quantiles boolean, OUT aggs text, OUT unpivot text)
  LANGUAGE plpgsql STABLE PARALLEL UNSAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
DECLARE
  r record;
BEGIN
  aggs := '';
  unpivot := '';
    FOR r IN SELECT m2.name, m2.kind, b.i, b.pre, m2.aggregation, m2.quantile_level,
                    (SELECT bn.i FROM exp_base bn WHERE bn.name = m2.numerator) AS ni,
                    (SELECT bd.i FROM exp_base bd WHERE bd.name = m2.denominator) AS di,
                    -- a ratio metric with a pre-period: both parts' pre-period values
                    m2.cuped_lookback IS NOT NULL
                      AND coalesce((SELECT bn.pre FROM exp_base bn WHERE bn.name = m2.numerator), false)
                      AND coalesce((SELECT bd.pre FROM exp_base bd WHERE bd.name = m2.denominator), false) AS rpre,
                    row_number() OVER (ORDER BY m2.name) AS j
             FROM experiment.experiment_metrics em JOIN experiment.metrics m2 ON m2.name = em.metric
             LEFT JOIN exp_base b ON b.name = m2.name
             -- (a metric added while this refresh ran has no stored values: it waits for the next one)
             WHERE em.experiment_id = e.id
               AND CASE WHEN m2.kind = 'ratio'
                        THEN EXISTS (SELECT FROM exp_base bn WHERE bn.name = m2.numerator)
                             AND EXISTS (SELECT FROM exp_base bd WHERE bd.name = m2.denominator)
                        ELSE b.i IS NOT NULL END
               AND (quantiles OR m2.aggregation <> 'quantile')
             ORDER BY m2.name LOOP
      IF r.kind = 'ratio' THEN
        aggs := aggs || format(', experiment.moments(%s, %s) AS a%s, pg_catalog.sum(v.s%s + v.s%s) AS k%s',
                               capped[r.ni], capped[r.di], r.j, r.ni, r.di, r.j);
        IF r.rpre THEN
          aggs := aggs || format(', experiment.moments(%s, %s, %s, %s) AS c%s',
                                 capped[r.ni], capped[r.di], pre_capped[r.ni], pre_capped[r.di], r.j);
        END IF;
        unpivot := unpivot || format(', (%L, a.a%s, %s, NULL::float8, NULL::float8, a.k%s, NULL::experiment.sketch)',
                                     r.name, r.j,
                                     CASE WHEN r.rpre THEN format('a.c%s', r.j) ELSE 'NULL::experiment.moments' END, r.j);
      ELSIF r.aggregation = 'quantile' AND r.quantile_level = 'event' THEN
        -- an event quantile: the merged sketch of the units' events (the per-unit moments of the
        -- events at or below the arm's quantile are computed by refresh(), once the quantile is known)
        aggs := aggs || format(', experiment.merge(v.v%s) AS q%s, pg_catalog.sum(v.s%s) AS k%s', r.i, r.j, r.i, r.j);
        unpivot := unpivot || format(', (%L, NULL::experiment.moments, NULL::experiment.moments, NULL::float8, '
                                     'NULL::float8, a.k%s, a.q%s)', r.name, r.j, r.j);
      ELSIF r.aggregation = 'quantile' THEN
        -- a quantile of units: the sketch of the per-unit sums (and their moments)
        aggs := aggs || format(', experiment.moments(v.v%s) AS a%s, pg_catalog.sum(v.s%s) AS k%s, '
                               'experiment.sketch(v.v%s) AS q%s', r.i, r.j, r.i, r.j, r.i, r.j);
        unpivot := unpivot || format(', (%L, a.a%s, NULL::experiment.moments, NULL::float8, NULL::float8, a.k%s, a.q%s)',
                                     r.name, r.j, r.j, r.j);
      ELSE
        aggs := aggs || format(', experiment.moments(%s) AS a%s, pg_catalog.sum(v.s%s) AS k%s',
                               capped[r.i], r.j, r.i, r.j);
        IF r.pre THEN
          aggs := aggs || format(', experiment.moments(%s, %s) AS c%s', capped[r.i], pre_capped[r.i], r.j);
        END IF;
        unpivot := unpivot || format(', (%L, a.a%s, %s, %s, %s, a.k%s, NULL::experiment.sketch)', r.name, r.j,
                                     CASE WHEN r.pre THEN format('a.c%s', r.j) ELSE 'NULL::experiment.moments' END,
                                     caps[r.i], lower_caps[r.i], r.j);
      END IF;
    END LOOP;
END
$$;
COMMENT ON FUNCTION experiment.metric_moments_sql(experiment.experiments, text[], text[], text[], text[], boolean) IS
  'internal: the SQL of the per-metric moments aggregates of refresh() over capped per-unit values (and the sketches of quantile '
  'metrics, or without quantiles no quantile metric), and of the rows (metric, m, c, cap, cap_lower, skipped, q) that unpivot them';

CREATE FUNCTION experiment.refresh(experiment_id text, full boolean DEFAULT false) RETURNS void
  LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
  SET search_path = pg_catalog, experiment, pg_temp
  -- per-unit aggregation of a million units fits in memory; JIT compilation costs more than it saves here
  SET work_mem = '256MB'
  SET jit = off
  -- the results do not depend on who refreshes: timestamp and date columns and calendar
  -- windows are read in UTC, and the generated SQL prints and reads back numbers, times and
  -- arrays the same, whatever the caller's session says
  SET TimeZone = 'UTC'
  SET DateStyle = 'ISO, MDY'
  SET IntervalStyle = 'postgres'
  SET extra_float_digits = 1
  SET array_nulls = on
  SET transform_null_equals = off
  SET row_security = on
AS $$
DECLARE
  e experiment.experiments;
  started timestamptz := clock_timestamp();
  ts timestamptz := now();
  control text;
  nmulti bigint;
  nunits bigint;
  nearly bigint;
  tuning float8;
  min_t0 timestamptz;
  max_t0 timestamptz;
  m experiment.metrics;
  vals_from text;
  aggs text := '';
  cp record;
  unpivot text := '';
  r record;
  uv record;
  by_day jsonb;
  cl_cols text;
  cl_qs text;
  cl_vals text;
  nq_aggs text;
  nq_unpivot text;
  ms record;
  dm record;
  wc record;
  lv text;
  top text[];
  raw_sql text;
  dim_from text;
  nb integer;
  d_aggs text;
  d_unpivot text;
  d_capped text[];
  d_pre text[];
  d_caps text[];
  d_lower text[];
BEGIN
  e := experiment.require_experiment(refresh.experiment_id);
  IF refresh.full IS NULL THEN
    PERFORM experiment.raise_invalid_value('full', 'NULL', 'true (read every source in full) or false (incremental where it can)');
  END IF;
  -- one refresh of an experiment at a time
  PERFORM pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('experiment.refresh:' || e.id));
  -- within experiment.refresh_memory, the sorts and hashes of the statements get a quarter of it
  -- (a call into the module first: loading it defines the setting)
  PERFORM experiment.unit_value_partitions(0, 0, 0, 0);
  IF experiment.refresh_work_mem() IS NOT NULL THEN
    PERFORM pg_catalog.set_config('work_mem', experiment.refresh_work_mem(), true);
  END IF;

  PERFORM experiment.validate_experiment_metrics(e.id);
  SELECT v.name INTO control FROM experiment.variants v WHERE v.experiment_id = e.id AND v.is_control;
  IF control IS NULL THEN
    RAISE EXCEPTION 'experiment "%" has no control variant', e.id
      USING ERRCODE = '22023', HINT = 'Set is_control on one row of experiment.variants.';
  END IF;
  IF e.stratify_by IS NOT NULL THEN
    PERFORM experiment.require_dimension(e.id, e.stratify_by, 'stratify_by');
  END IF;
  -- switchback experiments (src/sql/099_design_cluster.sql): analysed per (cluster, window)
  IF e.switchback_window IS NOT NULL THEN
    PERFORM experiment.refresh_switchback(e, control);
    RETURN;
  END IF;

  -- the stored state is replaced as a whole; in a REPEATABLE READ or SERIALIZABLE transaction
  -- whose snapshot predates another refresh's commit the rows to replace are invisible, and
  -- the conflict surfaces as a unique violation: reported as the serialization failure it is
  BEGIN
  -- the stored per-unit values, brought up to date (incrementally when they can be)
  SELECT * INTO uv FROM experiment.refresh_unit_values(e, refresh.full);
  vals_from := format('(SELECT * FROM experiment.%I v WHERE NOT v.multi)', uv.relation);
  -- caps, CUPED covariates and tests: from the stored values, no source is read again
  SELECT * INTO cp FROM experiment.winsorization_caps(vals_from);

    DELETE FROM experiment.variant_stats vs WHERE vs.experiment_id = e.id;
    DELETE FROM experiment.metric_results mr WHERE mr.experiment_id = e.id;
    DELETE FROM experiment.enrollment en WHERE en.experiment_id = e.id;

    SELECT * INTO ms FROM experiment.metric_moments_sql(e, cp.capped, cp.pre_capped,
      ARRAY(SELECT format('%L::float8', c) FROM pg_catalog.unnest(cp.caps) WITH ORDINALITY AS c(c, o) ORDER BY o),
      ARRAY(SELECT format('%L::float8', c) FROM pg_catalog.unnest(cp.lower_caps) WITH ORDINALITY AS c(c, o) ORDER BY o), true);
    aggs := ms.aggs;
    unpivot := ms.unpivot;
    -- (dimension breakdowns and strata: the metrics other than quantiles)
    SELECT * INTO ms FROM experiment.metric_moments_sql(e, cp.capped, cp.pre_capped,
      ARRAY(SELECT format('%L::float8', c) FROM pg_catalog.unnest(cp.caps) WITH ORDINALITY AS c(c, o) ORDER BY o),
      ARRAY(SELECT format('%L::float8', c) FROM pg_catalog.unnest(cp.lower_caps) WITH ORDINALITY AS c(c, o) ORDER BY o), false);
    nq_aggs := ms.aggs;
    nq_unpivot := ms.unpivot;

    -- the units and the moments of every metric by variant and day of first exposure, in one
    -- pass over the per-unit values (the units in several variants apart: counted, their
    -- moments not used): counts, enrollment, days; merged, the moments are the per-variant
    -- moments (and, cumulatively by day, the results over time below)
    PERFORM experiment.execute_grouped(format('CREATE TEMP TABLE exp_groups ON COMMIT DROP AS '
                   'SELECT v.multi, CASE WHEN NOT v.multi THEN v.variant END AS variant, '
                   'CASE WHEN NOT v.multi THEN (v.t0 AT TIME ZONE ''UTC'')::date END AS day, count(*) AS units, '
                   'count(*) FILTER (WHERE NOT v.multi AND v.t0 < %L::timestamptz) AS early_units, '
                   'pg_catalog.min(v.t0) AS min_t0, pg_catalog.max(v.t0) AS max_t0%s '
                   -- (grouped by the columns themselves, as the statistics of the stored table
                   -- name them: the planner knows there are few groups and aggregates in parallel;
                   -- the units in several variants are summed up by the readers below)
                   'FROM experiment.%I v GROUP BY v.multi, v.variant, (v.t0 AT TIME ZONE ''UTC'')::date',
                   e.start_at, aggs, uv.relation));
    SELECT coalesce(sum(g.units) FILTER (WHERE g.multi), 0), coalesce(sum(g.units) FILTER (WHERE NOT g.multi), 0),
           coalesce(sum(g.early_units), 0),
           pg_catalog.min(g.min_t0) FILTER (WHERE NOT g.multi), pg_catalog.max(g.max_t0) FILTER (WHERE NOT g.multi)
      INTO nmulti, nunits, nearly, min_t0, max_t0
      FROM pg_temp.exp_groups g;
    IF unpivot <> '' THEN
      EXECUTE format(
        'CREATE TEMP TABLE exp_daily ON COMMIT DROP AS '
        'SELECT k.metric, a.variant, a.day, a.units, k.m, k.c, k.cap, k.cap_lower, k.skipped, k.q '
        'FROM pg_temp.exp_groups a '
        'CROSS JOIN LATERAL (VALUES %s) AS k(metric, m, c, cap, cap_lower, skipped, q) WHERE NOT a.multi',
        substr(unpivot, 3));
      INSERT INTO experiment.variant_stats (experiment_id, metric, variant, units, moments, cuped_moments, cap,
                                            cap_lower, skipped_values, refreshed_at, sketch)
      SELECT e.id, d.metric, d.variant, sum(d.units), experiment.merge(d.m), experiment.merge(d.c),
             pg_catalog.max(d.cap), pg_catalog.max(d.cap_lower), sum(d.skipped), ts, experiment.merge(d.q)
      FROM pg_temp.exp_daily d
      GROUP BY d.metric, d.variant;
    END IF;
    -- event quantiles: per arm, the bivariate moments over its units of (the unit's events at or
    -- below the arm's quantile, the unit's events), which the clustered test's variance needs;
    -- one pass over the stored values for all of them
    cl_cols := '';
    cl_qs := '';
    cl_vals := '';
    FOR r IN SELECT m2.name, b.i, m2.quantile, row_number() OVER (ORDER BY m2.name) AS j
             FROM experiment.experiment_metrics em JOIN experiment.metrics m2 ON m2.name = em.metric
             JOIN exp_base b ON b.name = m2.name
             WHERE em.experiment_id = e.id AND m2.aggregation = 'quantile' AND m2.quantile_level = 'event'
             ORDER BY m2.name LOOP
      cl_cols := cl_cols || format(
        ', experiment.moments(coalesce(experiment.rank(v.v%s, qt.t%s), 0), coalesce(experiment.n(v.v%s), 0)::float8) AS m%s',
        r.i, r.j, r.i, r.j);
      cl_qs := cl_qs || format(', pg_catalog.max(experiment.quantile(vs.sketch, %L)) FILTER (WHERE vs.metric = %L) AS t%s',
                               r.quantile, r.name, r.j);
      cl_vals := cl_vals || format(', (%L, c.m%s)', r.name, r.j);
    END LOOP;
    IF cl_cols <> '' THEN
      EXECUTE format('UPDATE experiment.variant_stats vs SET moments = k.m '
                     'FROM (SELECT v.variant%s FROM %s v '
                     '      JOIN (SELECT vs.variant%s FROM experiment.variant_stats vs WHERE vs.experiment_id = %L '
                     '            GROUP BY vs.variant) qt ON qt.variant = v.variant '
                     '      GROUP BY v.variant) c '
                     'CROSS JOIN LATERAL (VALUES %s) AS k(metric, m) '
                     'WHERE vs.experiment_id = %L AND vs.variant = c.variant AND vs.metric = k.metric',
                     cl_cols, vals_from, cl_qs, e.id, substr(cl_vals, 3), e.id);
    END IF;

    INSERT INTO experiment.enrollment (experiment_id, variant, units, refreshed_at)
    SELECT e.id, v.name, coalesce(c.units, 0), ts
    FROM experiment.variants v
    LEFT JOIN (SELECT g.variant, sum(g.units)::bigint AS units FROM pg_temp.exp_groups g WHERE NOT g.multi
               GROUP BY g.variant) c ON c.variant = v.name
    WHERE v.experiment_id = e.id;

    -- tests of each treatment against control
    -- the inference: sequential (N* from the registry or the planned sample), fixed, or Bayesian
    -- (fixed-horizon tests, turned into posteriors by the results view)
    tuning := CASE WHEN e.analysis = 'sequential' THEN experiment.sequential_tuning_of(e) END;
    INSERT INTO experiment.metric_results
      (experiment_id, metric, variant, control_variant, method, alpha, test, refreshed_at,
       analysis, sequential_tuning, bound_test, harm_test)
    SELECT e.id, m2.name, t.variant, c.variant, k.method, e.alpha,
           experiment.variant_test(k.method, m2, c, t, e.alpha, 'two-sided', tuning),
           ts, e.analysis, tuning,
           -- guardrails: one-sided tests in each direction, under the same inference
           CASE WHEN em.role = 'guardrail' THEN
             experiment.variant_test(k.method, m2, c, t, e.alpha,
                                     CASE WHEN m2.higher_is_better THEN 'greater' ELSE 'less' END, tuning) END,
           CASE WHEN em.role = 'guardrail' THEN
             experiment.variant_test(k.method, m2, c, t, e.alpha,
                                     CASE WHEN m2.higher_is_better THEN 'less' ELSE 'greater' END, tuning) END
    FROM experiment.experiment_metrics em
    JOIN experiment.metrics m2 ON m2.name = em.metric
    JOIN experiment.variant_stats c
      ON c.experiment_id = e.id AND c.metric = m2.name AND c.variant = control
    JOIN experiment.variant_stats t
      ON t.experiment_id = e.id AND t.metric = m2.name AND t.variant <> control
    CROSS JOIN LATERAL (SELECT experiment.metric_method(m2.kind, c.cuped_moments, t.cuped_moments, m2.aggregation)
                        AS method) k
    WHERE em.experiment_id = e.id;

    -- results over time: the per-day moments merged cumulatively, tested per day
    DELETE FROM experiment.results_daily rd WHERE rd.experiment_id = e.id;
    IF unpivot <> '' THEN
      INSERT INTO experiment.results_daily
        (experiment_id, metric, variant, day, control_variant, method, units_control, units_treatment,
         mean_control, mean_treatment, diff, diff_lower, diff_upper, lift, lift_lower, lift_upper, p_value,
         refreshed_at)
      WITH cum AS (
        SELECT d.metric, d.variant, d.day, sum(d.units) OVER w AS units,
               experiment.merge(d.m) OVER w AS m, experiment.merge(d.c) OVER w AS c,
               experiment.merge(d.q) OVER w AS q
        FROM pg_temp.exp_daily d
        WINDOW w AS (PARTITION BY d.metric, d.variant ORDER BY d.day)
      ), days AS (
        SELECT DISTINCT d.metric, d.day FROM pg_temp.exp_daily d
      )
      SELECT e.id, mr.metric, mr.variant, dy.day, mr.control_variant, k.method, cc.units, ct.units,
             (x.t).mean_control, (x.t).mean_treatment, (x.t).diff, (x.t).diff_lower, (x.t).diff_upper,
             (x.t).lift, (x.t).lift_lower, (x.t).lift_upper, (x.t).p_value, ts
      FROM experiment.metric_results mr
      JOIN days dy ON dy.metric = mr.metric
      -- each arm as of the end of the day: its latest cumulative state (a day without units carries over)
      CROSS JOIN LATERAL (SELECT * FROM cum WHERE cum.metric = mr.metric AND cum.variant = mr.control_variant
                          AND cum.day <= dy.day ORDER BY cum.day DESC LIMIT 1) cc
      CROSS JOIN LATERAL (SELECT * FROM cum WHERE cum.metric = mr.metric AND cum.variant = mr.variant
                          AND cum.day <= dy.day ORDER BY cum.day DESC LIMIT 1) ct
      -- the method of the day's data (an early day may lack what the whole period has, e.g. a
      -- pre-period denominator)
      JOIN experiment.metrics m3 ON m3.name = mr.metric
      CROSS JOIN LATERAL (SELECT experiment.metric_method(m3.kind, cc.c, ct.c, m3.aggregation) AS method) k
      CROSS JOIN LATERAL (SELECT CASE WHEN k.method = 'quantile'
                                      THEN experiment.quantile_test(cc.q, ct.q, m3.quantile, e.alpha, 'two-sided', tuning)
                                      ELSE experiment.metric_test(k.method, cc.m, ct.m, cc.c, ct.c, e.alpha, 'two-sided',
                                                                  tuning) END AS t) x
      -- (an event quantile's variance needs per-unit counts at each day's quantile: not over time)
      WHERE mr.experiment_id = e.id AND NOT (m3.aggregation = 'quantile' AND m3.quantile_level = 'event');
    END IF;

    -- dimension breakdowns: per dimension, the units, moments and tests of its values, from
    -- passes over the same stored per-unit values (no source is read again)
    DELETE FROM experiment.dimension_results dr WHERE dr.experiment_id = e.id;
    DELETE FROM experiment.dimension_stats ds WHERE ds.experiment_id = e.id;
    DELETE FROM experiment.dimension_enrollment dn WHERE dn.experiment_id = e.id;
    SELECT count(*) INTO nb FROM pg_temp.exp_base;
    -- the units per dimension, value and variant, in one pass for all dimensions
    SELECT pg_catalog.string_agg(format('(%s, coalesce(v.d%s, ''(none)''))', d.j, d.j), ', ' ORDER BY d.j)
      INTO raw_sql FROM pg_temp.exp_dims d;
    IF raw_sql IS NOT NULL THEN
      PERFORM experiment.execute_grouped(format('CREATE TEMP TABLE exp_dim_units ON COMMIT DROP AS '
                     'SELECT d.j, d.value, v.variant, count(*) AS units FROM %s v '
                     'CROSS JOIN LATERAL (VALUES %s) AS d(j, value) GROUP BY 1, 2, 3', vals_from, raw_sql));
    END IF;
    FOR dm IN SELECT * FROM pg_temp.exp_dims d ORDER BY d.j LOOP
      raw_sql := format('coalesce(v.d%s, ''(none)'')', dm.j);
      -- the top_n values by analysed units (ties by value, in byte order); the rest is (other)
      SELECT coalesce(array_agg(t.value ORDER BY t.value COLLATE "C"), '{}') INTO top
        FROM (SELECT u.value FROM pg_temp.exp_dim_units u WHERE u.j = dm.j GROUP BY u.value
              ORDER BY sum(u.units) DESC, u.value COLLATE "C" LIMIT dm.top_n) t;
      INSERT INTO experiment.dimension_enrollment (experiment_id, dimension, value, variant, units, refreshed_at)
      SELECT e.id, dm.name, l.value, v.name, coalesce(sum(u.units), 0), ts
      FROM (SELECT DISTINCT CASE WHEN u0.value = ANY (top) THEN u0.value ELSE '(other)' END AS value
            FROM pg_temp.exp_dim_units u0 WHERE u0.j = dm.j) l
      CROSS JOIN experiment.variants v
      LEFT JOIN pg_temp.exp_dim_units u
        ON u.j = dm.j AND CASE WHEN u.value = ANY (top) THEN u.value ELSE '(other)' END = l.value AND u.variant = v.name
      WHERE v.experiment_id = e.id
      GROUP BY l.value, v.name;
      -- each unit's value, computed once per row
      dim_from := format('(SELECT v.*, CASE WHEN %s = ANY (%L::text[]) THEN %s ELSE ''(other)'' END AS dim_value FROM %s v)',
                         raw_sql, top, raw_sql, vals_from);
      IF nq_unpivot <> '' THEN
        IF dm.caps_per_value AND nb > 0 THEN
          -- caps computed within each value: the capped values and the caps are CASEs on it
          d_capped := array_fill(''::text, ARRAY[nb]);
          d_pre := array_fill(''::text, ARRAY[nb]);
          d_caps := array_fill(''::text, ARRAY[nb]);
          d_lower := array_fill(''::text, ARRAY[nb]);
          FOR lv IN SELECT DISTINCT CASE WHEN u.value = ANY (top) THEN u.value ELSE '(other)' END
                    FROM pg_temp.exp_dim_units u WHERE u.j = dm.j LOOP
            SELECT * INTO wc FROM experiment.winsorization_caps(format('(SELECT * FROM %s v WHERE v.dim_value = %L)',
                                                                       dim_from, lv));
            FOR i IN 1 .. nb LOOP
              d_capped[i] := d_capped[i] || format(' WHEN %L THEN %s', lv, wc.capped[i]);
              d_pre[i] := d_pre[i] || format(' WHEN %L THEN %s', lv, wc.pre_capped[i]);
              d_caps[i] := d_caps[i] || format(' WHEN %L THEN %L::float8', lv, wc.caps[i]);
              d_lower[i] := d_lower[i] || format(' WHEN %L THEN %L::float8', lv, wc.lower_caps[i]);
            END LOOP;
          END LOOP;
          SELECT * INTO ms FROM experiment.metric_moments_sql(e,
            ARRAY(SELECT format('CASE v.dim_value%s END', c) FROM pg_catalog.unnest(d_capped) WITH ORDINALITY AS c(c, o) ORDER BY o),
            ARRAY(SELECT format('CASE v.dim_value%s END', c) FROM pg_catalog.unnest(d_pre) WITH ORDINALITY AS c(c, o) ORDER BY o),
            ARRAY(SELECT format('CASE a.value%s END', c) FROM pg_catalog.unnest(d_caps) WITH ORDINALITY AS c(c, o) ORDER BY o),
            ARRAY(SELECT format('CASE a.value%s END', c) FROM pg_catalog.unnest(d_lower) WITH ORDINALITY AS c(c, o) ORDER BY o),
            false);
          d_aggs := ms.aggs;
          d_unpivot := ms.unpivot;
        ELSE
          d_aggs := nq_aggs;
          d_unpivot := nq_unpivot;
        END IF;
        PERFORM experiment.execute_grouped(format(
          'INSERT INTO experiment.dimension_stats (experiment_id, dimension, value, metric, variant, units, moments, '
          '  cuped_moments, cap, cap_lower, skipped_values, refreshed_at) '
          'SELECT %L, %L, a.value, k.metric, a.variant, a.units, k.m, k.c, k.cap, k.cap_lower, coalesce(k.skipped, 0), %L '
          'FROM (SELECT v.dim_value AS value, v.variant, count(*) AS units%s FROM %s v GROUP BY 1, 2) a '
          'CROSS JOIN LATERAL (VALUES %s) AS k(metric, m, c, cap, cap_lower, skipped)',
          e.id, dm.name, ts, d_aggs, dim_from, substr(d_unpivot, 3)));
        -- the strata of post-stratification: the values of stratify_by, with the pooled caps of
        -- the overall results (a pass of their own where this dimension's caps are per value)
        IF dm.name = e.stratify_by THEN
          IF dm.caps_per_value THEN
            PERFORM experiment.execute_grouped(format(
              'CREATE TEMP TABLE exp_strata ON COMMIT DROP AS SELECT a.value, k.metric, a.variant, k.m, k.c '
              'FROM (SELECT v.dim_value AS value, v.variant%s FROM %s v GROUP BY 1, 2) a '
              'CROSS JOIN LATERAL (VALUES %s) AS k(metric, m, c, cap, cap_lower, skipped)',
              nq_aggs, dim_from, substr(nq_unpivot, 3)));
          ELSE
            CREATE TEMP TABLE exp_strata ON COMMIT DROP AS
              SELECT ds.value, ds.metric, ds.variant, ds.moments AS m, ds.cuped_moments AS c
              FROM experiment.dimension_stats ds WHERE ds.experiment_id = e.id AND ds.dimension = dm.name;
          END IF;
        END IF;
      END IF;
    END LOOP;
    -- the tests of each value, as those of the whole experiment
    INSERT INTO experiment.dimension_results
      (experiment_id, dimension, value, metric, variant, control_variant, method, alpha, test, refreshed_at,
       analysis, sequential_tuning, bound_test, harm_test)
    SELECT e.id, c.dimension, c.value, m2.name, t.variant, c.variant, k.method, e.alpha,
           experiment.metric_test(k.method, c.moments, t.moments, c.cuped_moments, t.cuped_moments,
                                  e.alpha, 'two-sided', tuning),
           ts, e.analysis, tuning,
           CASE WHEN em.role = 'guardrail' THEN
             experiment.metric_test(k.method, c.moments, t.moments, c.cuped_moments, t.cuped_moments, e.alpha,
                                    CASE WHEN m2.higher_is_better THEN 'greater' ELSE 'less' END, tuning) END,
           CASE WHEN em.role = 'guardrail' THEN
             experiment.metric_test(k.method, c.moments, t.moments, c.cuped_moments, t.cuped_moments, e.alpha,
                                    CASE WHEN m2.higher_is_better THEN 'less' ELSE 'greater' END, tuning) END
    FROM experiment.experiment_metrics em
    JOIN experiment.metrics m2 ON m2.name = em.metric
    JOIN experiment.dimension_stats c
      ON c.experiment_id = e.id AND c.metric = m2.name AND c.variant = control
    JOIN experiment.dimension_stats t
      ON t.experiment_id = e.id AND t.metric = m2.name AND t.variant <> control
         AND t.dimension = c.dimension AND t.value = c.value
    CROSS JOIN LATERAL (SELECT experiment.metric_method(m2.kind, c.cuped_moments, t.cuped_moments) AS method) k
    WHERE em.experiment_id = e.id;

    -- post-stratification: the overall tests from the per-stratum moments (the arrays aligned
    -- by stratum, NULL for a stratum without units in an arm), with the method chosen from all
    -- of the data
    IF e.stratify_by IS NOT NULL AND pg_catalog.to_regclass('pg_temp.exp_strata') IS NOT NULL THEN
      UPDATE experiment.metric_results mr
        SET test = experiment.poststrat_ttest(mr.method, x.cs, x.ts, e.alpha, 'two-sided', tuning),
            bound_test = CASE WHEN mr.bound_test IS NOT NULL THEN
              experiment.poststrat_ttest(mr.method, x.cs, x.ts, e.alpha,
                                         CASE WHEN x.higher_is_better THEN 'greater' ELSE 'less' END, tuning) END,
            harm_test = CASE WHEN mr.harm_test IS NOT NULL THEN
              experiment.poststrat_ttest(mr.method, x.cs, x.ts, e.alpha,
                                         CASE WHEN x.higher_is_better THEN 'less' ELSE 'greater' END, tuning) END,
            stratified_by = e.stratify_by
        FROM (SELECT r0.metric, r0.variant, m3.higher_is_better,
                     array_agg(CASE WHEN r0.method IN ('cuped', 'cuped_ratio') THEN sc.c ELSE sc.m END
                               ORDER BY l.value COLLATE "C") AS cs,
                     array_agg(CASE WHEN r0.method IN ('cuped', 'cuped_ratio') THEN st.c ELSE st.m END
                               ORDER BY l.value COLLATE "C") AS ts
              FROM experiment.metric_results r0
              JOIN experiment.metrics m3 ON m3.name = r0.metric
              CROSS JOIN (SELECT DISTINCT s0.value FROM pg_temp.exp_strata s0) l
              LEFT JOIN pg_temp.exp_strata sc
                ON sc.value = l.value AND sc.metric = r0.metric AND sc.variant = r0.control_variant
              LEFT JOIN pg_temp.exp_strata st
                ON st.value = l.value AND st.metric = r0.metric AND st.variant = r0.variant
              -- (a quantile is not post-stratified)
              WHERE r0.experiment_id = e.id AND r0.method <> 'quantile'
              GROUP BY r0.metric, r0.variant, m3.higher_is_better) x
        WHERE mr.experiment_id = e.id AND mr.metric = x.metric AND mr.variant = x.variant;
    END IF;

    SELECT coalesce(jsonb_agg(jsonb_build_object('day', d.day, 'units', d.units) ORDER BY d.day), '[]')
      INTO by_day
      FROM (SELECT g.day, sum(g.units)::bigint AS units FROM pg_temp.exp_groups g WHERE NOT g.multi GROUP BY g.day) d;
    INSERT INTO experiment.refreshes AS f
      (experiment_id, refreshed_at, duration, enrolled_units, multi_variant_units, early_units,
       first_exposure, last_exposure, exposures_by_day, error, error_at, mode, full_reason, unit_partitions)
    SELECT e.id, ts, clock_timestamp() - started, nunits, nmulti, nearly, min_t0, max_t0, by_day,
           NULL, NULL, uv.mode, uv.reason, uv.partitions
    ON CONFLICT ON CONSTRAINT refreshes_pkey DO UPDATE SET
      refreshed_at = excluded.refreshed_at, duration = excluded.duration,
      enrolled_units = excluded.enrolled_units, multi_variant_units = excluded.multi_variant_units,
      early_units = excluded.early_units,
      first_exposure = excluded.first_exposure, last_exposure = excluded.last_exposure,
      exposures_by_day = excluded.exposures_by_day, error = NULL, error_at = NULL,
      mode = excluded.mode, full_reason = excluded.full_reason, unit_partitions = excluded.unit_partitions;
    -- where the per-unit values were computed (src/sql/100_citus.sql)
    PERFORM experiment.citus_record_placement(e, uv.relation);
    -- cluster-randomised experiments (src/sql/099_design_cluster.sql): the tests over clusters
    IF e.cluster_relation IS NOT NULL OR e.cluster_attribute IS NOT NULL THEN
      PERFORM experiment.refresh_clusters(e, vals_from, cp.capped, cp.pre_capped, tuning, ts);
    ELSE
      UPDATE experiment.refreshes f SET clusters = NULL, clustered_units = NULL, unclustered_units = NULL,
                                        mixed_clusters = NULL
       WHERE f.experiment_id = e.id AND f.clusters IS NOT NULL;
    END IF;
  EXCEPTION WHEN unique_violation THEN
    RAISE EXCEPTION 'could not refresh experiment "%": another refresh committed after this transaction''s snapshot', e.id
      USING ERRCODE = 'serialization_failure', DETAIL = SQLERRM,
            HINT = 'Retry the transaction, or refresh in a READ COMMITTED transaction.';
  END;

  PERFORM experiment.drop_refresh_tables();
END
$$;
COMMENT ON FUNCTION experiment.refresh(text, boolean) IS
  'bring an experiment''s enrolled units and stored per-unit metric values (windowed, zero-filled, CUPED pre-period) up to date, '
  'incrementally unless full or its definition changed, then recompute winsorization caps, per-variant moments and tests';

CREATE FUNCTION experiment.refresh_all() RETURNS integer
  LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
DECLARE
  id text;
  done integer := 0;
  msg text;
  detail text;
BEGIN
  PERFORM experiment.process_exposures_staging();
  FOR id IN SELECT ex.id FROM experiment.experiments ex WHERE ex.status = 'running' ORDER BY ex.id LOOP
    BEGIN
      PERFORM experiment.refresh(id);
      done := done + 1;
    EXCEPTION WHEN OTHERS THEN
      -- the message and, where there is one, the detail that says why
      GET STACKED DIAGNOSTICS detail = PG_EXCEPTION_DETAIL;
      msg := SQLERRM || coalesce(nullif(' (' || detail || ')', ' ()'), '');
      RAISE WARNING 'refresh of experiment "%" failed: %', id, msg;
      INSERT INTO experiment.refreshes AS f (experiment_id, error, error_at)
      VALUES (id, msg, clock_timestamp())
      ON CONFLICT ON CONSTRAINT refreshes_pkey DO UPDATE SET error = excluded.error, error_at = excluded.error_at;
    END;
  END LOOP;
  -- interactions of the overlapping experiments (src/sql/099_interact.sql), from the values just stored
  BEGIN
    PERFORM experiment.refresh_interactions();
  EXCEPTION WHEN OTHERS THEN
    RAISE WARNING 'interaction detection failed: %', SQLERRM;
  END;
  RETURN done;
END
$$;
COMMENT ON FUNCTION experiment.refresh_all() IS
  'load staged exposures, then refresh every running experiment (one failing experiment is recorded in experiment.refreshes and does not stop the others); returns how many were refreshed';


-- ===========================================================================
-- A/A validation
-- ===========================================================================

CREATE FUNCTION experiment.aa_test(experiment_id text, simulations integer DEFAULT 1000, seed integer DEFAULT 0)
  RETURNS TABLE (metric text, method text, n_simulations integer, alpha float8, false_positives bigint,
                 false_positive_rate float8, band_lower float8, band_upper float8,
                 ks_statistic float8, ks_p_value float8)
  LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
  SET search_path = pg_catalog, experiment, pg_temp
  SET work_mem = '256MB'
  SET jit = off
  SET TimeZone = 'UTC'
  SET DateStyle = 'ISO, MDY'
  SET IntervalStyle = 'postgres'
  SET extra_float_digits = 1
  SET array_nulls = on
  SET transform_null_equals = off
  SET row_security = on
AS $$
DECLARE
  e experiment.experiments;
  prep record;
  share float8;
  hidden text;
  aggs text := '';
  tests text := '';
  r record;
  j integer := 0;
BEGIN
  e := experiment.require_experiment(aa_test.experiment_id);
  -- (src/sql/099_design_cluster.sql: its re-splits of units would ignore the clusters)
  IF e.cluster_relation IS NOT NULL OR e.cluster_attribute IS NOT NULL OR e.switchback_window IS NOT NULL THEN
    RAISE EXCEPTION 'aa_test of experiment "%": it re-splits units, and the experiment is randomised by %', e.id,
      CASE WHEN e.switchback_window IS NOT NULL THEN 'switchback window' ELSE 'cluster' END
      USING ERRCODE = 'invalid_parameter_value',
            HINT = 'aa_test() is for experiments randomised by unit; test/test_design_cluster_calibration.py shows how to simulate clustered A/A tests.';
  END IF;
  IF aa_test.simulations IS NULL OR aa_test.simulations < 10 OR aa_test.simulations > 100000 THEN
    PERFORM experiment.raise_invalid_value('simulations', coalesce(aa_test.simulations::text, 'NULL'),
                                           'between 10 and 100000');
  END IF;
  IF aa_test.seed IS NULL THEN
    PERFORM experiment.raise_invalid_value('seed', 'NULL', 'an integer');
  END IF;
  PERFORM experiment.validate_experiment_metrics(e.id);
  -- it reads the sources as its caller: say which metric it may not read, up front
  SELECT string_agg(em.metric, ', ' ORDER BY em.metric) INTO hidden
  FROM experiment.experiment_metrics em
  WHERE em.experiment_id = e.id AND NOT experiment.may_read_metric(em.metric);
  IF hidden IS NOT NULL THEN
    RAISE EXCEPTION 'aa_test of experiment "%": role % may not read the source of metric %', e.id, current_user, hidden
      USING ERRCODE = 'insufficient_privilege',
            HINT = 'aa_test() reads the sources as its caller; run it as a role that may SELECT them.';
  END IF;
  -- the pseudo-control's share: the control's share of control + the first treatment
  SELECT c.allocation / nullif(c.allocation + t.allocation, 0) INTO share
  FROM experiment.variants c, LATERAL (SELECT v.allocation FROM experiment.variants v
                                       WHERE v.experiment_id = c.experiment_id AND NOT v.is_control
                                       ORDER BY v.name LIMIT 1) t
  WHERE c.experiment_id = e.id AND c.is_control;
  IF share IS NULL OR NOT (share > 0 AND share < 1) THEN
    RAISE EXCEPTION 'experiment "%" needs a control and a treatment with positive allocations for an A/A test', e.id
      USING ERRCODE = 'invalid_parameter_value';
  END IF;

  PERFORM experiment.drop_refresh_tables();
  SELECT * INTO prep FROM experiment.prepare_unit_values(e, true, false);

  -- the moments of every metric, per simulation and pseudo-arm, in one pass
  FOR r IN SELECT m2.name, m2.kind, b.i, b.pre,
                  (SELECT bn.i FROM pg_temp.exp_base bn WHERE bn.name = m2.numerator) AS ni,
                  (SELECT bd.i FROM pg_temp.exp_base bd WHERE bd.name = m2.denominator) AS di,
                  m2.cuped_lookback IS NOT NULL
                    AND coalesce((SELECT bn.pre FROM pg_temp.exp_base bn WHERE bn.name = m2.numerator), false)
                    AND coalesce((SELECT bd.pre FROM pg_temp.exp_base bd WHERE bd.name = m2.denominator), false) AS rpre
           FROM experiment.experiment_metrics em JOIN experiment.metrics m2 ON m2.name = em.metric
           LEFT JOIN pg_temp.exp_base b ON b.name = m2.name
           -- (quantile metrics are not simulated: their tests need per-arm sketches)
           WHERE em.experiment_id = e.id AND m2.aggregation <> 'quantile' ORDER BY m2.name LOOP
    j := j + 1;
    IF r.kind = 'ratio' THEN
      aggs := aggs || format(', experiment.moments(%s, %s) AS a%s, %s AS c%s',
                             prep.capped[r.ni], prep.capped[r.di], j,
                             CASE WHEN r.rpre THEN format('experiment.moments(%s, %s, %s, %s)', prep.capped[r.ni],
                                                          prep.capped[r.di], prep.pre_capped[r.ni], prep.pre_capped[r.di])
                                  ELSE 'NULL::experiment.moments' END, j);
    ELSE
      aggs := aggs || format(', experiment.moments(%s) AS a%s, %s AS c%s', prep.capped[r.i], j,
                             CASE WHEN r.pre THEN format('experiment.moments(%s, %s)', prep.capped[r.i], prep.pre_capped[r.i])
                                  ELSE 'NULL::experiment.moments' END, j);
    END IF;
    tests := tests || format(' UNION ALL SELECT %L AS metric, %L AS kind, c.s, c.a%s AS cm, t.a%s AS tm, c.c%s AS cc, t.c%s AS tc FROM g c JOIN g t ON t.s = c.s AND NOT t.is_c WHERE c.is_c',
                             r.name, r.kind, j, j, j, j);
  END LOOP;
  IF j = 0 THEN
    RETURN;
  END IF;

  RETURN QUERY EXECUTE format($q$
    WITH g AS (
      SELECT s.s, (((pg_catalog.hashtextextended(v.unit_id, %s::bigint * 1000003 + s.s) %% 10000) + 10000) %% 10000) < %s AS is_c
             %s
      FROM %s v CROSS JOIN pg_catalog.generate_series(1, %s) s(s)
      GROUP BY 1, 2
    ), pairs AS (%s
    ), p AS (
      SELECT x.metric, k.method,
             (experiment.metric_test(k.method, x.cm, x.tm, x.cc, x.tc, %s, 'two-sided', NULL)).p_value AS p
      FROM pairs x
      CROSS JOIN LATERAL (SELECT experiment.metric_method(x.kind, x.cc, x.tc) AS method) k
    ), ranked AS (
      SELECT p.*, row_number() OVER (PARTITION BY p.metric ORDER BY p.p) AS i,
             count(*) OVER (PARTITION BY p.metric) AS n
      FROM p WHERE p.p IS NOT NULL
    ), ks AS (
      SELECT ranked.metric, pg_catalog.max(greatest(ranked.i::float8 / ranked.n - ranked.p,
                                                    ranked.p - (ranked.i - 1)::float8 / ranked.n)) AS d,
             pg_catalog.max(ranked.n) AS n
      FROM ranked GROUP BY ranked.metric
    )
    SELECT p.metric, pg_catalog.min(p.method), %s::integer, %s::float8,
           count(*) FILTER (WHERE p.p < %s),
           (count(*) FILTER (WHERE p.p < %s))::float8 / nullif(count(p.p), 0)::float8,
           %s::float8 - 2.5758293035489 * sqrt(%s::float8 * (1 - %s::float8) / nullif(count(p.p), 0)),
           %s::float8 + 2.5758293035489 * sqrt(%s::float8 * (1 - %s::float8) / nullif(count(p.p), 0)),
           pg_catalog.min(ks.d),
           pg_catalog.min(experiment.ks_p_value(ks.d, ks.n))
    FROM p LEFT JOIN ks ON ks.metric = p.metric
    GROUP BY p.metric ORDER BY p.metric$q$,
    aa_test.seed, (share * 10000)::integer, aggs, prep.vals_from, aa_test.simulations, substr(tests, 12),
    e.alpha, aa_test.simulations, e.alpha, e.alpha, e.alpha, e.alpha, e.alpha, e.alpha, e.alpha, e.alpha, e.alpha);
  PERFORM experiment.drop_refresh_tables();
END
$$;
COMMENT ON FUNCTION experiment.aa_test(text, integer, integer) IS
  'A/A validation of an experiment''s metrics: re-splits its analysed units at random (simulations seeded hashes) into the shares of control and the first treatment, re-runs each metric''s fixed-horizon test, and returns the false-positive rate at alpha with its 99% band and the Kolmogorov-Smirnov p-value of the p-values'' uniformity';

-- P(D > d) of the Kolmogorov-Smirnov statistic of n values, asymptotically with Stephens'
-- small-sample correction: Q(lambda) = 2 sum (-1)^(k-1) exp(-2 k^2 lambda^2),
-- lambda = (sqrt(n) + 0.12 + 0.11 / sqrt(n)) d
CREATE FUNCTION experiment.ks_p_value(d float8, n bigint) RETURNS float8
  LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
  SELECT CASE WHEN n < 1 THEN NULL
              WHEN l < 0.2 THEN 1.0
              ELSE least(1.0, greatest(0.0, 2 * (SELECT coalesce(sum((-1) ^ (k - 1) * exp(-2 * k * k * l * l)), 0)
                                                 FROM generate_series(1, 100) k
                                                 WHERE 2 * k * k * l * l < 700)))   -- exp() below 1e-304 adds nothing
         END
  FROM (SELECT (sqrt(n::float8) + 0.12 + 0.11 / sqrt(n::float8)) * d AS l) s
$$;
COMMENT ON FUNCTION experiment.ks_p_value(float8, bigint) IS
  'internal: asymptotic Kolmogorov-Smirnov p-value of the statistic d over n values (Stephens'' correction)';
