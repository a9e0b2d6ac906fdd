-- experiment 0.6.0 -> 0.7.0 (ALTER EXTENSION experiment UPDATE; doc/operations.md#upgrading)
--
-- The winsorization caps by selection (exact_percentiles(), src/percentiles.c) instead of a
-- sort, with the sort kept beyond the refresh's work_mem. Citus: each shard receives the
-- statements once and fills in its shard names itself (citus_fill()). The passes that group
-- the stored per-unit values run with a hash aggregate (execute_grouped()).

-- exact percentiles of a query's float8 columns by selection, as percentile_cont computes them
-- (src/percentiles.c): the caps of experiment.winsorization_caps()
CREATE OR REPLACE FUNCTION experiment.exact_percentiles(query text, fractions float8[], ignore_zeros boolean[],
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
CREATE OR REPLACE FUNCTION experiment.winsorization_caps(vals_from text,
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

-- run a statement that groups the stored per-unit values by a few keys (variant, day, dimension
-- value) with a hash aggregate: with the stored table's statistics (autovacuum analyzes it) the
-- planner counts a group per first-exposure time, and prefers sorting the whole table, twice
-- as slow (doc/scaling.md, "Cost"); the groups are few
CREATE OR REPLACE FUNCTION experiment.execute_grouped(stmt text) RETURNS void
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

CREATE OR REPLACE FUNCTION experiment.refresh(experiment_id text, full boolean DEFAULT false) RETURNS void
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
                   'FROM experiment.%I v GROUP BY 1, 2, 3', e.start_at, aggs, uv.relation));
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

-- a statement of experiment.citus_run_shards() for one shard group: @uv@ becomes uv (the
-- qualified name of the shard of the stored per-unit values) and @src<k>@ the literal of
-- source_shards[k], in one pass (a name that contains a placeholder is not replaced again; a
-- placeholder beyond the sources stays as it is)
CREATE OR REPLACE FUNCTION experiment.citus_fill(stmt text, uv text, source_shards text[]) RETURNS text
  LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
DECLARE
  parts text[] := pg_catalog.regexp_split_to_array(stmt, '@(uv|src[1-9][0-9]{0,8})@');
  toks text[] := ARRAY(SELECT m.r[1] FROM pg_catalog.regexp_matches(stmt, '@(uv|src[1-9][0-9]{0,8})@', 'g')
                         WITH ORDINALITY AS m(r, o) ORDER BY m.o);
  filled text := parts[1];
  k integer;
BEGIN
  FOR i IN 1 .. coalesce(pg_catalog.cardinality(toks), 0) LOOP
    k := CASE WHEN toks[i] = 'uv' THEN 0 ELSE substr(toks[i], 4)::integer END;
    IF k = 0 THEN
      filled := filled || uv;
    ELSIF k <= coalesce(pg_catalog.cardinality(source_shards), 0) THEN
      filled := filled || pg_catalog.quote_literal(source_shards[k]);
    ELSE
      -- (no such source: the text stays as it is)
      filled := filled || '@' || toks[i] || '@';
    END IF;
    filled := filled || parts[i + 1];
  END LOOP;
  RETURN filled;
END
$$;

COMMENT ON FUNCTION experiment.citus_fill(text, text, text[]) IS
  'internal: a statement of experiment.citus_run_shards() with the shard names of one shard group in place of @uv@ and @src<k>@';

-- on a worker: run the statements of one shard group. The plan stmts holds them once
-- (stmts, with the placeholders of experiment.citus_fill()) and, per shard of the stored
-- per-unit values (its qualified name, the key of shards), the co-located shards of the
-- sources; each statement returns one timestamptz (the latest event time its scan read, or
-- NULL), returned in order. It is called by the query of experiment.citus_run_shards(), once
-- per shard, with the shard's tableoid. The settings are those of refresh(): the statements
-- read times and windows in UTC as on the coordinator
CREATE OR REPLACE FUNCTION experiment.citus_shard_run(shard oid, stmts jsonb) RETURNS timestamptz[]
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
  -- (where the coordinator holds shards, it runs the shard's task in the refresh's own session,
  -- in which Citus hides shards from pg_class: the lookup below and the checks of the source
  -- must see them)
  SET citus.override_table_visibility = off
AS $$
DECLARE
  key text;
  srcs text[];
  s text;
  t timestamptz;
  result timestamptz[] := '{}';
BEGIN
  SELECT format('%I.%I', n.nspname, c.relname) INTO key
    FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = shard;
  IF key IS NULL OR NOT coalesce((stmts -> 'shards') ? key, false)
     OR pg_catalog.jsonb_typeof(stmts -> 'stmts') IS DISTINCT FROM 'array' THEN
    RAISE EXCEPTION 'no statements for shard % (%)', shard, key USING ERRCODE = 'internal_error';
  END IF;
  srcs := ARRAY(SELECT x FROM pg_catalog.jsonb_array_elements_text(stmts -> 'shards' -> key) WITH ORDINALITY AS a(x, o)
                ORDER BY a.o);
  FOR s IN SELECT x FROM pg_catalog.jsonb_array_elements_text(stmts -> 'stmts') WITH ORDINALITY AS a(x, o) ORDER BY a.o LOOP
    EXECUTE experiment.citus_fill(s, key, srcs) INTO t;
    result := result || t;
  END LOOP;
  RETURN result;
END
$$;

-- run statements on the workers, per shard group of the distributed table t of stored per-unit
-- values: in each, @uv@ becomes the qualified name of the shard of t and @src1@, @src2@ ... the
-- literals of the co-located shards of sources[1], sources[2] ... (experiment.citus_fill(), on
-- the worker); one call per shard that holds
-- units, all shards at once (Citus runs them in parallel); returns, per statement, the greatest
-- of its results over the shards
CREATE OR REPLACE FUNCTION experiment.citus_run_shards(t name, sources regclass[], stmts text[]) RETURNS timestamptz[]
  LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
DECLARE
  plan jsonb;
  reps text[];
  result timestamptz[];
BEGIN
  IF pg_catalog.cardinality(stmts) = 0 THEN
    RETURN '{}';
  END IF;
  -- the statements once and the shard names of every group (each worker fills in its own): a
  -- plan that grows with the statements plus the shards, not with their product
  SELECT pg_catalog.jsonb_build_object('stmts', pg_catalog.to_jsonb(stmts),
                                       'shards', coalesce(pg_catalog.jsonb_object_agg(g.shard,
                                                            pg_catalog.to_jsonb(coalesce(g.source_shards, '{}'))), '{}'))
    INTO plan FROM experiment.citus_shard_groups(t, sources) g;
  -- one unit of each shard that holds units: the filter on the distribution column sends the
  -- query to exactly those shards, and each calls the worker function once
  EXECUTE format('SELECT pg_catalog.array_agg(r.u) FROM (SELECT pg_catalog.min(u.unit_id) AS u FROM experiment.%I u '
                 'GROUP BY u.tableoid::pg_catalog.regclass::text) r', t) INTO reps;
  IF reps IS NULL THEN
    RETURN '{}';
  END IF;
  -- (first a write of nothing to the same shards: Citus then commits the connections that run
  -- the workers' statements, which write, in two phases with the refresh; a SELECT alone would
  -- not mark them as modifying)
  EXECUTE format('UPDATE experiment.%I u SET reset = u.reset WHERE u.unit_id = ANY ($1)', t) USING reps;
  EXECUTE format('SELECT ARRAY(SELECT pg_catalog.max(x.t) FROM (SELECT experiment.citus_shard_run(u.tableoid, $1) AS r '
                 '  FROM experiment.%I u WHERE u.unit_id = ANY ($2)) s '
                 'CROSS JOIN LATERAL pg_catalog.unnest(s.r) WITH ORDINALITY AS x(t, o) GROUP BY x.o ORDER BY x.o)', t)
    INTO result USING plan, reps;
  RETURN result;
END
$$;

ALTER FUNCTION experiment.refresh(text, boolean) SECURITY DEFINER;
