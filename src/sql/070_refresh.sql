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
  error_at timestamptz
);
COMMENT ON TABLE experiment.refreshes IS
  'the latest refresh of each experiment: when, how long, units enrolled and excluded, new units per day, last error';
COMMENT ON COLUMN experiment.refreshes.enrolled_units IS 'units exposed to exactly one variant (the analysed units)';
COMMENT ON COLUMN experiment.refreshes.multi_variant_units IS 'units exposed to more than one variant (excluded from the analysis)';
COMMENT ON COLUMN experiment.refreshes.early_units IS
  'analysed units first exposed before the experiment''s start_at (the decision is INVALID while there are any)';
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
  PRIMARY KEY (experiment_id, metric, variant)
);
COMMENT ON TABLE experiment.variant_stats IS
  'per-variant moments of each metric at the latest refresh';
COMMENT ON COLUMN experiment.variant_stats.moments IS
  'moments of the per-unit value y; for ratio metrics bivariate moments of (numerator, denominator)';
COMMENT ON COLUMN experiment.variant_stats.cuped_moments IS
  'bivariate moments of (y, pre-period y) when the metric has a CUPED lookback';
COMMENT ON COLUMN experiment.variant_stats.cap IS 'winsorization cap applied to y (pooled percentile), if any';
COMMENT ON COLUMN experiment.variant_stats.skipped_values IS
  'source values of the variant''s units that were NaN or infinite and were left out of the per-unit values (no measurement)';

CREATE TABLE experiment.metric_results (
  experiment_id text NOT NULL REFERENCES experiment.experiments (id) ON DELETE CASCADE,
  metric text NOT NULL,
  variant text NOT NULL,
  control_variant text NOT NULL,
  method text NOT NULL CHECK (method IN ('welch', 'prop_ztest', 'cuped', 'ratio')),
  alpha float8 NOT NULL,
  test experiment.test_result,
  refreshed_at timestamptz NOT NULL,
  analysis text NOT NULL DEFAULT 'fixed',
  sequential_tuning float8,
  bound_test experiment.test_result,
  harm_test experiment.test_result,
  PRIMARY KEY (experiment_id, metric, variant)
);
COMMENT ON TABLE experiment.metric_results IS
  'test of each treatment variant against control for each metric at the latest refresh';
COMMENT ON COLUMN experiment.metric_results.test IS
  'the two-sided test under the experiment''s analysis (sequential: always-valid; fixed and bayesian: fixed horizon)';
COMMENT ON COLUMN experiment.metric_results.sequential_tuning IS 'N* of a sequential analysis';
COMMENT ON COLUMN experiment.metric_results.bound_test IS
  'guardrails: the one-sided test whose bound limits the harm (its interval is open on the side of improvement)';
COMMENT ON COLUMN experiment.metric_results.harm_test IS
  'guardrails: the one-sided test of harm (p-value of "treatment is worse")';

-- the method of a metric between two arms: ratio metrics by the delta method, CUPED where
-- both arms have a pre-period covariate that varies, else the proportion or Welch test
CREATE FUNCTION experiment.metric_method(kind text, c_cuped experiment.moments, t_cuped experiment.moments)
  RETURNS text
  LANGUAGE sql IMMUTABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
  SELECT CASE
    WHEN kind = 'ratio' THEN 'ratio'
    WHEN c_cuped IS NOT NULL AND t_cuped IS NOT NULL
         AND coalesce(experiment.variance(c_cuped OPERATOR(experiment.+) t_cuped, 2), 0) > 0 THEN 'cuped'
    WHEN kind = 'proportion' THEN 'prop_ztest'
    ELSE 'welch'
  END
$$;
COMMENT ON FUNCTION experiment.metric_method(text, experiment.moments, experiment.moments) IS
  'internal: the test method of a metric (ratio, cuped, prop_ztest or welch) from its kind and its arms'' CUPED moments';

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
  'internal: the test of a metric (method ratio, cuped, prop_ztest or welch) between two arms under an inference';
COMMENT ON COLUMN experiment.metric_results.method IS
  'ratio_ttest for ratio metrics, cuped_ttest when a pre-period covariate exists, else prop_ztest (proportions) or welch_ttest';

-- SQL of a per-unit value column (v<i> or p<i> of exp_vals), capped when a cap is given
CREATE FUNCTION experiment.capped_sql(prefix text, i integer, cap float8) RETURNS text
  LANGUAGE sql IMMUTABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
  -- a NaN or infinite cap caps nothing (least(v, 'NaN') is v as well)
  SELECT CASE WHEN cap IS NULL OR cap IN ('NaN'::float8, 'Infinity'::float8) THEN format('v.%s%s', prefix, i)
              ELSE format('least(v.%s%s, %L::float8)', prefix, i, cap) END
$$;
COMMENT ON FUNCTION experiment.capped_sql(text, integer, float8) IS
  'internal: SQL of a per-unit value column, capped at cap when cap is not NULL';

-- per-unit values of the metrics reading one source, in one scan (src/unit_values.c)
CREATE FUNCTION experiment.source_unit_values(
    unit_ids text[], variants text[], t0s timestamptz[], source regclass, unit_column text,
    time_columns text[], value_columns text[], aggregations text[], lo_offsets interval[],
    hi_offsets interval[], use_end boolean[], end_at timestamptz, scan_from timestamptz, scan_to timestamptz,
    reader regrole DEFAULT NULL)
  RETURNS TABLE (unit_id text, variant text, vals float8[], skipped bigint[])
  AS 'MODULE_PATHNAME', 'exp_source_unit_values'
  LANGUAGE C STABLE PARALLEL SAFE;
COMMENT ON FUNCTION experiment.source_unit_values(text[], text[], timestamptz[], regclass, text, text[], text[], text[],
    interval[], interval[], boolean[], timestamptz, timestamptz, timestamptz, regrole) IS
  'internal: one row per unit (unit_ids, variants, t0s) with vals[k] = aggregations[k] (sum, count, any, max) of '
  'value_columns[k] (NULL: rows) over the unit''s events in source with time_columns[k] in '
  '[t0 + lo_offsets[k], t0 + hi_offsets[k]) and, when use_end[k], before end_at; 0 without events; '
  'NaN and infinite values are not aggregated and counted in skipped[k]; '
  'scan_from/scan_to bound the scan when all specs read one time column; reads source as role reader '
  '(NULL: the current user, who must have its privileges) in a security-restricted operation';

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
             AND c.relname IN ('exp_units', 'exp_vals', 'exp_base') LOOP
    EXECUTE format('DROP TABLE pg_temp.%I', t);
  END LOOP;
END
$$;
COMMENT ON FUNCTION experiment.drop_refresh_tables() IS 'internal: drop the temporary tables of experiment.refresh()';

-- the per-unit values of an experiment's metrics, as refresh and aa_test read them: temporary
-- tables exp_units (the analysed units: first variant and exposure), exp_base (the base
-- metrics, numbered i) and, when keep or a metric is winsorized, exp_vals (unit_id, variant,
-- v<i> = the value of base metric i, p<i> = its pre-period value); vals_from is exp_vals or
-- the query that computes it; caps are the pooled winsorization caps of v<i> and p<i>
CREATE FUNCTION experiment.prepare_unit_values(e experiment.experiments, keep boolean, as_owner boolean,
    OUT vals_from text, OUT caps float8[], OUT pre_caps float8[], OUT nmulti bigint, OUT nunits bigint,
    OUT nearly bigint, OUT min_t0 timestamptz, OUT max_t0 timestamptz)
  LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
DECLARE
  src regclass;
  ucol text;
  rdr regrole;
  sk text;
  src_no integer := 0;
  m experiment.metrics;
  tcol text;
  lower_bound timestamptz;
  upper_bound timestamptz;
  need_upper boolean;
  lb timestamptz;
  joins text := '';
  vals_sql text;
  vals_cols text := '';
  cap_v_sql text;
  cap_p_sql text;
  r record;
  k integer;
  tcols text[];
  vcols text[];
  aggs_a text[];
  los interval[];
  his interval[];
  ends boolean[];
  hashagg text;
BEGIN
  -- units: first exposure defines variant and start; units in several variants are excluded
  PERFORM experiment.drop_refresh_tables();
  -- grouping a million units in a hash table is bound by random memory access; the primary key
  -- of experiment.exposures delivers the rows in unit order, so a streaming GroupAggregate over
  -- it is about twice as fast
  hashagg := pg_catalog.current_setting('enable_hashagg');
  PERFORM pg_catalog.set_config('enable_hashagg', 'off', true);
  CREATE TEMP TABLE exp_units ON COMMIT DROP AS
    SELECT xp.unit_id, pg_catalog.min(xp.variant) AS variant, pg_catalog.min(xp.exposed_at) AS t0,
           pg_catalog.min(xp.variant) <> pg_catalog.max(xp.variant) AS multi
    FROM experiment.exposures xp
    WHERE xp.experiment_id = e.id AND (e.end_at IS NULL OR xp.exposed_at < e.end_at)
    GROUP BY xp.unit_id;
  PERFORM pg_catalog.set_config('enable_hashagg', hashagg, true);
  SELECT count(*) FILTER (WHERE u.multi), count(*) FILTER (WHERE NOT u.multi),
         count(*) FILTER (WHERE NOT u.multi AND u.t0 < e.start_at),
         pg_catalog.min(u.t0) FILTER (WHERE NOT u.multi), pg_catalog.max(u.t0) FILTER (WHERE NOT u.multi)
    INTO nmulti, nunits, nearly, min_t0, max_t0
    FROM exp_units u;
  DELETE FROM exp_units WHERE multi;
  ANALYZE exp_units;

  -- the base metrics (non-ratio) this experiment needs, numbered; pre-period values only
  -- for metrics analysed directly with a CUPED lookback
  CREATE TEMP TABLE exp_base ON COMMIT DROP AS
    WITH direct AS (
      SELECT mm.* FROM experiment.experiment_metrics em JOIN experiment.metrics mm ON mm.name = em.metric
      WHERE em.experiment_id = e.id
    ), needed AS (
      SELECT d.name, d.kind <> 'ratio' AND d.cuped_lookback IS NOT NULL AS pre
      FROM direct d WHERE d.kind <> 'ratio'
      UNION ALL
      SELECT p.part, false FROM direct d, LATERAL (VALUES (d.numerator), (d.denominator)) p(part)
      WHERE d.kind = 'ratio'
    )
    SELECT n.name, bool_or(n.pre) AS pre, row_number() OVER (ORDER BY n.name)::integer AS i
    FROM needed n GROUP BY n.name;

  -- one scan per source relation, however many metrics read it: experiment.source_unit_values()
  -- returns every unit (zero-filled) with the values of the metrics of that source in vals
  -- each source is read as the metric's owner (refresh) or as the current user (aa_test)
  FOR src, ucol, rdr IN SELECT DISTINCT m2.source, m2.unit_column, CASE WHEN as_owner THEN m2.owner END
                        FROM exp_base b JOIN experiment.metrics m2 ON m2.name = b.name ORDER BY 1, 2, 3 LOOP
    src_no := src_no + 1;
    lower_bound := NULL;
    upper_bound := NULL;
    need_upper := true;
    tcol := NULL;
    k := 0;
    tcols := '{}';
    vcols := '{}';
    aggs_a := '{}';
    los := '{}';
    his := '{}';
    ends := '{}';
    FOR r IN SELECT b.i, b.pre, m2 AS m FROM exp_base b JOIN experiment.metrics m2 ON m2.name = b.name
             WHERE m2.source = src AND m2.unit_column = ucol AND (NOT as_owner OR m2.owner = rdr) ORDER BY b.i LOOP
      m := r.m;
      IF tcol IS NOT NULL AND tcol <> m.time_column THEN
        tcol := '';   -- metrics of this source use different time columns: no pruning
      ELSIF tcol IS NULL THEN
        tcol := m.time_column;
      END IF;
      -- the value: events in [t0 + delay, t0 + delay + window) before the end of the experiment
      k := k + 1;
      tcols := tcols || m.time_column;
      vcols := vcols || m.value_column;
      aggs_a := aggs_a || m.aggregation;
      los := los || m.delay;
      his := his || (m.delay + m."window");
      ends := ends || true;
      vals_cols := vals_cols || format(', x%s.vals[%s] AS v%s', src_no, k, r.i);
      sk := format('coalesce(x%s.skipped[%s], 0)', src_no, k);
      lb := experiment.timestamptz_add_clamped(min_t0, m.delay);
      IF r.pre THEN
        -- the pre-period value: events in [t0 - lookback, t0)
        k := k + 1;
        tcols := tcols || m.time_column;
        vcols := vcols || m.value_column;
        aggs_a := aggs_a || m.aggregation;
        los := los || (- m.cuped_lookback);
        his := his || interval '0';
        ends := ends || false;
        vals_cols := vals_cols || format(', x%s.vals[%s] AS p%s', src_no, k, r.i);
        sk := sk || format(' + coalesce(x%s.skipped[%s], 0)', src_no, k);
        lb := experiment.timestamptz_add_clamped(min_t0, - m.cuped_lookback);
      END IF;
      -- NaN and infinite source values, not aggregated: counted per unit
      vals_cols := vals_cols || format(', %s AS s%s', sk, r.i);
      lower_bound := least(lower_bound, lb);
      IF e.end_at IS NOT NULL THEN
        upper_bound := greatest(upper_bound, e.end_at);
      ELSIF m."window" IS NOT NULL THEN
        upper_bound := greatest(upper_bound,
                                experiment.timestamptz_add_clamped(experiment.timestamptz_add_clamped(max_t0, m.delay), m."window"));
      ELSE
        need_upper := false;
      END IF;
    END LOOP;
    IF tcol = '' OR NOT need_upper THEN
      upper_bound := NULL;
    END IF;
    IF tcol = '' THEN
      lower_bound := NULL;
    END IF;
    joins := joins || format(
      '%s experiment.source_unit_values(a.ids, a.variants, a.t0s, %L::regclass, %L, %L::text[], %L::text[], %L::text[], '
      '%L::interval[], %L::interval[], %L::boolean[], %L::timestamptz, %L::timestamptz, %L::timestamptz, %L::regrole) x%s%s',
      CASE WHEN src_no = 1 THEN ',' ELSE ' JOIN' END,
      src, ucol, tcols, vcols, aggs_a, los, his, ends, e.end_at, lower_bound, upper_bound, rdr,
      src_no, CASE WHEN src_no = 1 THEN '' ELSE format(' ON x%s.unit_id = x1.unit_id', src_no) END);
  END LOOP;

  -- per-unit values, zero-filled: one statement, one scan of each source
  IF src_no = 0 THEN
    vals_sql := 'SELECT u.unit_id, u.variant FROM pg_temp.exp_units u';
  ELSE
    vals_sql := format('SELECT x1.unit_id, x1.variant%s FROM (SELECT coalesce(pg_catalog.array_agg(u.unit_id), ''{}'') AS ids, '
                       'coalesce(pg_catalog.array_agg(u.variant), ''{}'') AS variants, '
                       'coalesce(pg_catalog.array_agg(u.t0), ''{}'') AS t0s FROM pg_temp.exp_units u) a%s',
                       vals_cols, joins);
  END IF;

  -- winsorization caps: pooled upper percentiles over all analysed units
  SELECT coalesce(string_agg(CASE WHEN m2.winsorize IS NULL THEN 'NULL::float8'
                                  ELSE format('percentile_cont(%s) WITHIN GROUP (ORDER BY v%s)', m2.winsorize, b.i) END,
                             ', ' ORDER BY b.i), ''),
         coalesce(string_agg(CASE WHEN m2.winsorize IS NULL OR NOT b.pre THEN 'NULL::float8'
                                  ELSE format('percentile_cont(%s) WITHIN GROUP (ORDER BY p%s)', m2.winsorize, b.i) END,
                             ', ' ORDER BY b.i), ''),
         bool_or(m2.winsorize IS NOT NULL)
    INTO cap_v_sql, cap_p_sql, need_upper
    FROM exp_base b JOIN experiment.metrics m2 ON m2.name = b.name;
  IF need_upper OR keep THEN
    EXECUTE 'CREATE TEMP TABLE exp_vals ON COMMIT DROP AS ' || vals_sql;
    EXECUTE format('SELECT ARRAY[%s]::float8[], ARRAY[%s]::float8[] FROM pg_temp.exp_vals', cap_v_sql, cap_p_sql)
      INTO caps, pre_caps;
    vals_from := 'pg_temp.exp_vals';
  ELSE
    vals_from := '(' || vals_sql || ')';
  END IF;

END
$$;
COMMENT ON FUNCTION experiment.prepare_unit_values(experiment.experiments, boolean, boolean) IS
  'internal: the temporary tables of per-unit values that experiment.refresh() and experiment.aa_test() read, and the winsorization caps';

CREATE FUNCTION experiment.refresh(experiment_id text) RETURNS void
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
  caps float8[];
  pre_caps float8[];
  unpivot text := '';
  r record;
  k integer;
  prep record;
BEGIN
  e := experiment.require_experiment(refresh.experiment_id);
  -- one refresh of an experiment at a time
  PERFORM pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('experiment.refresh:' || e.id));

  PERFORM experiment.validate_experiment_metrics(e.id);
  SELECT v.name INTO control FROM experiment.variants v WHERE v.experiment_id = e.id AND v.is_control;
  IF control IS NULL THEN
    RAISE EXCEPTION 'experiment "%" has no control variant', e.id
      USING ERRCODE = '22023', HINT = 'Set is_control on one row of experiment.variants.';
  END IF;

  SELECT * INTO prep FROM experiment.prepare_unit_values(e, false, true);
  vals_from := prep.vals_from;
  caps := prep.caps;
  pre_caps := prep.pre_caps;
  nmulti := prep.nmulti;
  nunits := prep.nunits;
  nearly := prep.nearly;
  min_t0 := prep.min_t0;
  max_t0 := prep.max_t0;

  -- the stored state is replaced as a whole; in a REPEATABLE READ or SERIALIZABLE transaction
  -- whose snapshot predates another refresh's commit the rows to replace are invisible, and
  -- the conflict surfaces as a unique violation: reported as the serialization failure it is
  BEGIN
    DELETE FROM experiment.variant_stats vs WHERE vs.experiment_id = e.id;
    DELETE FROM experiment.metric_results mr WHERE mr.experiment_id = e.id;
    DELETE FROM experiment.enrollment en WHERE en.experiment_id = e.id;

    FOR r IN SELECT m2.name, m2.kind, b.i, b.pre,
                    (SELECT bn.i FROM exp_base bn WHERE bn.name = m2.numerator) AS ni,
                    (SELECT bd.i FROM exp_base bd WHERE bd.name = m2.denominator) AS di,
                    row_number() OVER (ORDER BY m2.name) AS j
             FROM experiment.experiment_metrics em JOIN experiment.metrics m2 ON m2.name = em.metric
             LEFT JOIN exp_base b ON b.name = m2.name
             WHERE em.experiment_id = e.id ORDER BY m2.name LOOP
      IF r.kind = 'ratio' THEN
        aggs := aggs || format(', experiment.moments(%s, %s) AS a%s, pg_catalog.sum(v.s%s + v.s%s) AS k%s',
                               experiment.capped_sql('v', r.ni, caps[r.ni]), experiment.capped_sql('v', r.di, caps[r.di]), r.j,
                               r.ni, r.di, r.j);
        unpivot := unpivot || format(', (%L, a.a%s, NULL::experiment.moments, NULL::float8, a.k%s)', r.name, r.j, r.j);
      ELSE
        aggs := aggs || format(', experiment.moments(%s) AS a%s, pg_catalog.sum(v.s%s) AS k%s',
                               experiment.capped_sql('v', r.i, caps[r.i]), r.j, r.i, r.j);
        IF r.pre THEN
          aggs := aggs || format(', experiment.moments(%s, %s) AS c%s', experiment.capped_sql('v', r.i, caps[r.i]),
                                 experiment.capped_sql('p', r.i, pre_caps[r.i]), r.j);
        END IF;
        unpivot := unpivot || format(', (%L, a.a%s, %s, %L::float8, a.k%s)', r.name, r.j,
                                     CASE WHEN r.pre THEN format('a.c%s', r.j) ELSE 'NULL::experiment.moments' END,
                                     caps[r.i], r.j);
      END IF;
    END LOOP;

    -- per-variant moments of every metric in one pass over the per-unit values
    IF unpivot <> '' THEN
      EXECUTE format(
        'INSERT INTO experiment.variant_stats (experiment_id, metric, variant, units, moments, cuped_moments, cap, '
        'skipped_values, refreshed_at) '
        'SELECT %L, k.metric, a.variant, a.units, k.m, k.c, k.cap, k.skipped, %L '
        'FROM (SELECT v.variant, count(*) AS units%s FROM %s v GROUP BY v.variant) a '
        'CROSS JOIN LATERAL (VALUES %s) AS k(metric, m, c, cap, skipped)',
        e.id, ts, aggs, vals_from, substr(unpivot, 3));
    END IF;

    INSERT INTO experiment.enrollment (experiment_id, variant, units, refreshed_at)
    SELECT e.id, v.name, coalesce(c.units, 0), ts
    FROM experiment.variants v
    LEFT JOIN (SELECT u.variant, count(*) AS units FROM pg_temp.exp_units u GROUP BY u.variant) c
      ON c.variant = v.name
    WHERE v.experiment_id = e.id;

    -- tests of each treatment against control
    -- the inference: sequential (N* from the registry or the planned sample), fixed, or Bayesian
    -- (fixed-horizon tests, turned into posteriors by the results view)
    tuning := CASE WHEN e.analysis = 'sequential' THEN experiment.sequential_tuning_of(e) END;
    INSERT INTO experiment.metric_results
      (experiment_id, metric, variant, control_variant, method, alpha, test, refreshed_at,
       analysis, sequential_tuning, bound_test, harm_test)
    SELECT e.id, m2.name, t.variant, c.variant, k.method, e.alpha,
           experiment.metric_test(k.method, c.moments, t.moments, c.cuped_moments, t.cuped_moments,
                                  e.alpha, 'two-sided', tuning),
           ts, e.analysis, tuning,
           -- guardrails: one-sided tests in each direction, under the same inference
           CASE WHEN em.role = 'guardrail' THEN
             experiment.metric_test(k.method, c.moments, t.moments, c.cuped_moments, t.cuped_moments, e.alpha,
                                    CASE WHEN m2.higher_is_better THEN 'greater' ELSE 'less' END, tuning) END,
           CASE WHEN em.role = 'guardrail' THEN
             experiment.metric_test(k.method, c.moments, t.moments, c.cuped_moments, t.cuped_moments, e.alpha,
                                    CASE WHEN m2.higher_is_better THEN 'less' ELSE 'greater' END, tuning) END
    FROM experiment.experiment_metrics em
    JOIN experiment.metrics m2 ON m2.name = em.metric
    JOIN experiment.variant_stats c
      ON c.experiment_id = e.id AND c.metric = m2.name AND c.variant = control
    JOIN experiment.variant_stats t
      ON t.experiment_id = e.id AND t.metric = m2.name AND t.variant <> control
    CROSS JOIN LATERAL (SELECT experiment.metric_method(m2.kind, c.cuped_moments, t.cuped_moments) AS method) k
    WHERE em.experiment_id = e.id;

    INSERT INTO experiment.refreshes AS f
      (experiment_id, refreshed_at, duration, enrolled_units, multi_variant_units, early_units,
       first_exposure, last_exposure, exposures_by_day, error, error_at)
    SELECT e.id, ts, clock_timestamp() - started, nunits, nmulti, nearly, min_t0, max_t0,
           (SELECT coalesce(jsonb_agg(jsonb_build_object('day', d.day, 'units', d.units) ORDER BY d.day), '[]')
            FROM (SELECT (u.t0 AT TIME ZONE 'UTC')::date AS day, count(*) AS units
                  FROM pg_temp.exp_units u GROUP BY 1) d),
           NULL, NULL
    ON CONFLICT ON CONSTRAINT refreshes_pkey DO UPDATE SET
      refreshed_at = excluded.refreshed_at, duration = excluded.duration,
      enrolled_units = excluded.enrolled_units, multi_variant_units = excluded.multi_variant_units,
      early_units = excluded.early_units,
      first_exposure = excluded.first_exposure, last_exposure = excluded.last_exposure,
      exposures_by_day = excluded.exposures_by_day, error = NULL, error_at = NULL;
  EXCEPTION WHEN unique_violation THEN
    RAISE EXCEPTION 'could not refresh experiment "%": another refresh committed after this transaction''s snapshot', e.id
      USING ERRCODE = 'serialization_failure', DETAIL = SQLERRM,
            HINT = 'Retry the transaction, or refresh in a READ COMMITTED transaction.';
  END;

  PERFORM experiment.drop_refresh_tables();
END
$$;
COMMENT ON FUNCTION experiment.refresh(text) IS
  'recompute an experiment''s enrolled units, per-unit metric values (windowed, zero-filled, winsorized, CUPED pre-period), per-variant moments and tests';

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
                  (SELECT bd.i FROM pg_temp.exp_base bd WHERE bd.name = m2.denominator) AS di
           FROM experiment.experiment_metrics em JOIN experiment.metrics m2 ON m2.name = em.metric
           LEFT JOIN pg_temp.exp_base b ON b.name = m2.name
           WHERE em.experiment_id = e.id ORDER BY m2.name LOOP
    j := j + 1;
    IF r.kind = 'ratio' THEN
      aggs := aggs || format(', experiment.moments(%s, %s) AS a%s, NULL::experiment.moments AS c%s',
                             experiment.capped_sql('v', r.ni, prep.caps[r.ni]), experiment.capped_sql('v', r.di, prep.caps[r.di]), j, j);
    ELSE
      aggs := aggs || format(', experiment.moments(%s) AS a%s, %s AS c%s',
                             experiment.capped_sql('v', r.i, prep.caps[r.i]), j,
                             CASE WHEN r.pre THEN format('experiment.moments(%s, %s)', experiment.capped_sql('v', r.i, prep.caps[r.i]),
                                                        experiment.capped_sql('p', r.i, prep.pre_caps[r.i]))
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
