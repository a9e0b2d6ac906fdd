-- ---------------------------------------------------------------------------
-- Analysis: exposures, the metric catalogue, refresh, results views, readout
-- (see doc/analysis.md for the data model and doc/operations.md for
-- scheduling and BI use)
-- ---------------------------------------------------------------------------

-- ===========================================================================
-- 1. Exposures
-- ===========================================================================

CREATE TABLE experiment.exposures (
  experiment_id text NOT NULL,
  unit_id text NOT NULL,
  variant text NOT NULL,
  exposed_at timestamptz NOT NULL,
  client text,
  app_version text,
  attributes jsonb NOT NULL DEFAULT '{}',
  event_id text,
  received_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
  CONSTRAINT exposures_pkey PRIMARY KEY (experiment_id, unit_id, variant, exposed_at),
  CONSTRAINT exposures_event_id_key UNIQUE (experiment_id, event_id),
  CONSTRAINT exposures_variant_fkey FOREIGN KEY (experiment_id, variant)
    REFERENCES experiment.variants (experiment_id, name)
);
COMMENT ON TABLE experiment.exposures IS
  'exposures of units to variants, deduplicated: the same (experiment, unit, variant, time) or the same event_id is stored once';
COMMENT ON COLUMN experiment.exposures.event_id IS
  'optional id of the delivered event; a redelivery with the same id counts once';
COMMENT ON COLUMN experiment.exposures.received_at IS 'when the row was stored';
SELECT pg_catalog.pg_extension_config_dump('experiment.exposures', '');

CREATE TABLE experiment.exposures_quarantine (
  id bigserial PRIMARY KEY,
  received_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
  reason text NOT NULL,
  experiment_id text,
  unit_id text,
  variant text,
  event_id text,
  payload jsonb NOT NULL
);
COMMENT ON TABLE experiment.exposures_quarantine IS
  'bulk-loaded exposures that could not be stored (unknown experiment or variant, missing or invalid fields), with the reason';
SELECT pg_catalog.pg_extension_config_dump('experiment.exposures_quarantine', '');
SELECT pg_catalog.pg_extension_config_dump('experiment.exposures_quarantine_id_seq', '');
COMMENT ON SEQUENCE experiment.exposures_quarantine_id_seq IS 'ids of quarantined exposures';

CREATE TABLE experiment.exposures_staging (
  experiment_id text,
  unit_id text,
  variant text,
  exposed_at text,
  client text,
  app_version text,
  attributes jsonb,
  event_id text
);
COMMENT ON TABLE experiment.exposures_staging IS
  'landing table for bulk loaders (Kafka Connect JDBC sink, COPY): experiment.process_exposures_staging() moves its rows into experiment.exposures or the quarantine';
SELECT pg_catalog.pg_extension_config_dump('experiment.exposures_staging', '');

-- text to timestamptz, NULL when the text is not a valid timestamp
CREATE FUNCTION experiment.try_timestamptz(value text) RETURNS timestamptz
  -- PARALLEL UNSAFE: the exception block is a subtransaction, which parallel mode forbids
  LANGUAGE plpgsql STABLE STRICT PARALLEL UNSAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
BEGIN
  RETURN value::timestamptz;
EXCEPTION WHEN invalid_datetime_format OR datetime_field_overflow OR invalid_time_zone_displacement_value
     OR invalid_parameter_value OR data_exception THEN
  RETURN NULL;
END
$$;
COMMENT ON FUNCTION experiment.try_timestamptz(text) IS
  'the text as timestamptz, or NULL when it is not a valid timestamp (used by bulk ingestion to quarantine bad rows)';

CREATE FUNCTION experiment.log_exposure(
  experiment_id text, unit_id text, variant text,
  exposed_at timestamptz DEFAULT pg_catalog.now(),
  client text DEFAULT NULL, app_version text DEFAULT NULL,
  attributes jsonb DEFAULT '{}', event_id text DEFAULT NULL)
  RETURNS boolean
  LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
DECLARE
  n bigint;
BEGIN
  IF log_exposure.experiment_id IS NULL OR log_exposure.unit_id IS NULL
     OR log_exposure.variant IS NULL OR log_exposure.exposed_at IS NULL THEN
    RAISE EXCEPTION 'experiment_id, unit_id, variant and exposed_at must not be NULL'
      USING ERRCODE = '22023';
  END IF;
  IF NOT EXISTS (SELECT 1 FROM experiment.experiments e WHERE e.id = log_exposure.experiment_id) THEN
    RAISE EXCEPTION 'unknown experiment_id "%"', log_exposure.experiment_id
      USING ERRCODE = '22023', HINT = 'register it in experiment.experiments first';
  END IF;
  IF NOT EXISTS (SELECT 1 FROM experiment.variants v
                 WHERE v.experiment_id = log_exposure.experiment_id AND v.name = log_exposure.variant) THEN
    RAISE EXCEPTION 'unknown variant "%" of experiment "%"', log_exposure.variant, log_exposure.experiment_id
      USING ERRCODE = '22023',
            HINT = 'the variants are listed in experiment.variants';
  END IF;
  INSERT INTO experiment.exposures AS x
    (experiment_id, unit_id, variant, exposed_at, client, app_version, attributes, event_id)
  VALUES (log_exposure.experiment_id, log_exposure.unit_id, log_exposure.variant, log_exposure.exposed_at,
          log_exposure.client, log_exposure.app_version, coalesce(log_exposure.attributes, '{}'),
          log_exposure.event_id)
  ON CONFLICT DO NOTHING;
  GET DIAGNOSTICS n = ROW_COUNT;
  RETURN n > 0;
END
$$;
COMMENT ON FUNCTION experiment.log_exposure(text, text, text, timestamptz, text, text, jsonb, text) IS
  'store one exposure (idempotent: true when stored, false when it was a duplicate); unknown experiment or variant is an error';

CREATE FUNCTION experiment.ingest_exposures(rows jsonb,
  OUT inserted bigint, OUT duplicates bigint, OUT quarantined bigint)
  LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
BEGIN
  IF rows IS NULL OR jsonb_typeof(rows) <> 'array' THEN
    RAISE EXCEPTION 'rows must be a JSON array of exposure objects, got %',
      coalesce(jsonb_typeof(rows), 'NULL') USING ERRCODE = '22023';
  END IF;

  WITH raw AS (
    SELECT r.value AS payload, r.ordinality AS ord,
           CASE WHEN jsonb_typeof(r.value) = 'object' THEN r.value END AS o
    FROM jsonb_array_elements(rows) WITH ORDINALITY AS r
  ), parsed AS (
    SELECT payload, ord,
           o ->> 'experiment_id' AS experiment_id,
           o ->> 'unit_id' AS unit_id,
           o ->> 'variant' AS variant,
           o ->> 'exposed_at' AS exposed_at_text,
           experiment.try_timestamptz(o ->> 'exposed_at') AS exposed_at,
           o ->> 'client' AS client,
           o ->> 'app_version' AS app_version,
           CASE WHEN jsonb_typeof(o -> 'attributes') = 'object' THEN o -> 'attributes' ELSE '{}'::jsonb END AS attributes,
           o ->> 'event_id' AS event_id,
           o IS NULL AS not_object
    FROM raw
  ), checked AS (
    SELECT p.*,
           CASE
             WHEN p.not_object THEN 'not a JSON object'
             WHEN p.experiment_id IS NULL THEN 'missing experiment_id'
             WHEN p.unit_id IS NULL THEN 'missing unit_id'
             WHEN p.variant IS NULL THEN 'missing variant'
             WHEN p.exposed_at_text IS NULL THEN 'missing exposed_at'
             WHEN p.exposed_at IS NULL THEN 'invalid exposed_at'
             WHEN NOT EXISTS (SELECT 1 FROM experiment.experiments e WHERE e.id = p.experiment_id)
               THEN 'unknown experiment'
             WHEN NOT EXISTS (SELECT 1 FROM experiment.variants v
                              WHERE v.experiment_id = p.experiment_id AND v.name = p.variant)
               THEN 'unknown variant'
           END AS reason
    FROM parsed p
  ), quarantine AS (
    INSERT INTO experiment.exposures_quarantine (reason, experiment_id, unit_id, variant, event_id, payload)
    SELECT reason, experiment_id, unit_id, variant, event_id, payload
    FROM checked WHERE reason IS NOT NULL
    ORDER BY ord
    RETURNING 1
  ), stored AS (
    INSERT INTO experiment.exposures
      (experiment_id, unit_id, variant, exposed_at, client, app_version, attributes, event_id)
    SELECT experiment_id, unit_id, variant, exposed_at, client, app_version, attributes, event_id
    FROM checked WHERE reason IS NULL
    -- a fixed order keeps concurrent loaders of overlapping batches from deadlocking
    ORDER BY experiment_id, unit_id, variant, exposed_at, event_id
    ON CONFLICT DO NOTHING
    RETURNING 1
  )
  SELECT (SELECT count(*) FROM stored),
         (SELECT count(*) FROM checked WHERE reason IS NULL) - (SELECT count(*) FROM stored),
         (SELECT count(*) FROM quarantine)
  INTO inserted, duplicates, quarantined;
END
$$;
COMMENT ON FUNCTION experiment.ingest_exposures(jsonb) IS
  'bulk, idempotent load of a JSON array of exposures: stores new ones, counts duplicates, quarantines bad rows with a reason';

CREATE FUNCTION experiment.process_exposures_staging(
  OUT inserted bigint, OUT duplicates bigint, OUT quarantined bigint)
  LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
DECLARE
  batch jsonb;
BEGIN
  WITH moved AS (
    DELETE FROM experiment.exposures_staging RETURNING *
  )
  SELECT coalesce(jsonb_agg(jsonb_strip_nulls(to_jsonb(moved))), '[]'::jsonb) INTO batch FROM moved;
  SELECT i.inserted, i.duplicates, i.quarantined INTO inserted, duplicates, quarantined
  FROM experiment.ingest_exposures(batch) AS i;
END
$$;
COMMENT ON FUNCTION experiment.process_exposures_staging() IS
  'move every row of experiment.exposures_staging into experiment.exposures (idempotently) or the quarantine';

-- ===========================================================================
-- 2. The metric catalogue
-- ===========================================================================

CREATE TABLE experiment.metrics (
  name text PRIMARY KEY,
  description text,
  source regclass,
  unit_column text,
  time_column text,
  value_column text,
  aggregation text NOT NULL DEFAULT 'sum'
    CHECK (aggregation IN ('sum', 'count', 'any', 'max')),
  kind text NOT NULL DEFAULT 'mean'
    CHECK (kind IN ('mean', 'proportion', 'ratio')),
  numerator text REFERENCES experiment.metrics (name),
  denominator text REFERENCES experiment.metrics (name),
  delay interval NOT NULL DEFAULT '0',
  "window" interval,
  higher_is_better boolean NOT NULL DEFAULT true,
  winsorize float8,
  cuped_lookback interval DEFAULT '14 days',
  created_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
  CONSTRAINT metrics_delay_check CHECK (delay >= interval '0'),
  CONSTRAINT metrics_window_check CHECK ("window" IS NULL OR "window" > interval '0'),
  CONSTRAINT metrics_winsorize_check CHECK (winsorize IS NULL OR (winsorize > 0 AND winsorize < 1)),
  CONSTRAINT metrics_cuped_lookback_check CHECK (cuped_lookback IS NULL OR cuped_lookback > interval '0')
);
COMMENT ON TABLE experiment.metrics IS
  'the metric catalogue: each metric reads its events from one relation (by regclass and column names), or is a ratio of two metrics';
COMMENT ON COLUMN experiment.metrics.source IS 'table, view or materialized view holding the events';
COMMENT ON COLUMN experiment.metrics.value_column IS 'numeric or boolean column aggregated per unit; NULL counts rows';
COMMENT ON COLUMN experiment.metrics.aggregation IS
  'per-unit aggregation over the window: sum, count, any (1 when converted at least once, else 0) or max';
COMMENT ON COLUMN experiment.metrics.kind IS 'mean (Welch / CUPED), proportion (aggregation any; z-test / CUPED) or ratio (delta method)';
COMMENT ON COLUMN experiment.metrics.delay IS 'events count from first exposure + delay';
COMMENT ON COLUMN experiment.metrics."window" IS 'events count until first exposure + delay + window (NULL: until the end of the experiment)';
COMMENT ON COLUMN experiment.metrics.winsorize IS 'cap per-unit values at this upper percentile, pooled over all units (e.g. 0.999)';
COMMENT ON COLUMN experiment.metrics.cuped_lookback IS 'pre-period before first exposure used as CUPED covariate; NULL turns CUPED off';
SELECT pg_catalog.pg_extension_config_dump('experiment.metrics', '');

CREATE TABLE experiment.experiment_metrics (
  experiment_id text NOT NULL REFERENCES experiment.experiments (id) ON DELETE CASCADE,
  metric text NOT NULL REFERENCES experiment.metrics (name),
  role text NOT NULL DEFAULT 'secondary' CHECK (role IN ('primary', 'secondary', 'guardrail')),
  non_inferiority_margin float8,
  PRIMARY KEY (experiment_id, metric),
  CONSTRAINT experiment_metrics_margin_check CHECK (
    non_inferiority_margin IS NULL OR (role = 'guardrail' AND non_inferiority_margin >= 0))
);
CREATE UNIQUE INDEX experiment_metrics_one_primary
  ON experiment.experiment_metrics (experiment_id) WHERE role = 'primary';
COMMENT ON TABLE experiment.experiment_metrics IS
  'metrics of each experiment: exactly one primary, any secondary and guardrail metrics';
COMMENT ON COLUMN experiment.experiment_metrics.non_inferiority_margin IS
  'guardrails: tolerated relative harm (0.02 = 2% worse) before the guardrail fails';
SELECT pg_catalog.pg_extension_config_dump('experiment.experiment_metrics', '');

-- type checks of source columns, from pg_type
CREATE FUNCTION experiment.column_type(rel regclass, col text) RETURNS regtype
  LANGUAGE sql STABLE STRICT PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
  SELECT a.atttypid::regtype FROM pg_catalog.pg_attribute a
  WHERE a.attrelid = rel AND a.attname = col AND a.attnum > 0 AND NOT a.attisdropped
$$;
COMMENT ON FUNCTION experiment.column_type(regclass, text) IS
  'type of column col of relation rel, NULL when there is no such column';

CREATE FUNCTION experiment.validate_metric(metric text) RETURNS void
  LANGUAGE plpgsql STABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
DECLARE
  m experiment.metrics;
  part text;
  part_kind text;
  relkind "char";
  t regtype;
  cat "char";
BEGIN
  SELECT * INTO m FROM experiment.metrics WHERE name = validate_metric.metric;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'unknown metric "%"', metric USING ERRCODE = '22023';
  END IF;

  IF m.kind = 'ratio' THEN
    IF m.numerator IS NULL OR m.denominator IS NULL THEN
      RAISE EXCEPTION 'ratio metric "%" needs both numerator and denominator', m.name USING ERRCODE = '22023';
    END IF;
    IF m.source IS NOT NULL THEN
      RAISE EXCEPTION 'ratio metric "%" reads its numerator and denominator metrics, not a source', m.name
        USING ERRCODE = '22023', HINT = 'set source to NULL';
    END IF;
    FOREACH part IN ARRAY ARRAY[m.numerator, m.denominator] LOOP
      SELECT kind INTO part_kind FROM experiment.metrics WHERE name = part;
      IF NOT FOUND THEN
        RAISE EXCEPTION 'ratio metric "%": part "%" is not a metric', m.name, part USING ERRCODE = '22023';
      END IF;
      IF part_kind = 'ratio' THEN
        RAISE EXCEPTION 'ratio metric "%": part "%" is itself a ratio', m.name, part USING ERRCODE = '22023';
      END IF;
      PERFORM experiment.validate_metric(part);
    END LOOP;
    RETURN;
  END IF;

  IF m.numerator IS NOT NULL OR m.denominator IS NOT NULL THEN
    RAISE EXCEPTION 'metric "%" of kind % cannot have a numerator or denominator', m.name, m.kind
      USING ERRCODE = '22023', HINT = 'set kind to ''ratio''';
  END IF;
  IF m.source IS NULL THEN
    RAISE EXCEPTION 'metric "%" needs a source relation', m.name USING ERRCODE = '22023';
  END IF;
  SELECT c.relkind INTO relkind FROM pg_catalog.pg_class c WHERE c.oid = m.source;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'metric "%": source relation with oid % does not exist', m.name, m.source::oid
      USING ERRCODE = '22023';
  END IF;
  IF relkind NOT IN ('r', 'v', 'm', 'p', 'f') THEN
    RAISE EXCEPTION 'metric "%": source % is not a table, view or materialized view', m.name, m.source
      USING ERRCODE = '22023';
  END IF;
  IF m.unit_column IS NULL OR m.time_column IS NULL THEN
    RAISE EXCEPTION 'metric "%" needs unit_column and time_column', m.name USING ERRCODE = '22023';
  END IF;

  t := experiment.column_type(m.source, m.unit_column);
  IF t IS NULL THEN
    RAISE EXCEPTION 'metric "%": column "%" does not exist in %', m.name, m.unit_column, m.source
      USING ERRCODE = '22023';
  END IF;
  SELECT typcategory INTO cat FROM pg_catalog.pg_type WHERE oid = t;
  IF NOT (cat = 'S' OR t IN ('int2'::regtype, 'int4'::regtype, 'int8'::regtype, 'uuid'::regtype)) THEN
    RAISE EXCEPTION 'metric "%": unit column "%" has type %, expected text, an integer or uuid', m.name, m.unit_column, t
      USING ERRCODE = '22023';
  END IF;

  t := experiment.column_type(m.source, m.time_column);
  IF t IS NULL THEN
    RAISE EXCEPTION 'metric "%": column "%" does not exist in %', m.name, m.time_column, m.source
      USING ERRCODE = '22023';
  END IF;
  IF t NOT IN ('timestamptz'::regtype, 'timestamp'::regtype, 'date'::regtype) THEN
    RAISE EXCEPTION 'metric "%": time column "%" has type %, expected timestamptz, timestamp or date', m.name, m.time_column, t
      USING ERRCODE = '22023';
  END IF;

  IF m.value_column IS NOT NULL THEN
    t := experiment.column_type(m.source, m.value_column);
    IF t IS NULL THEN
      RAISE EXCEPTION 'metric "%": column "%" does not exist in %', m.name, m.value_column, m.source
        USING ERRCODE = '22023';
    END IF;
    SELECT typcategory INTO cat FROM pg_catalog.pg_type WHERE oid = t;
    IF NOT (cat = 'N' OR t = 'boolean'::regtype) OR t IN ('oid'::regtype, 'regclass'::regtype) THEN
      RAISE EXCEPTION 'metric "%": value column "%" has type %, expected a number or boolean', m.name, m.value_column, t
        USING ERRCODE = '22023';
    END IF;
  END IF;

  IF m.kind = 'proportion' AND m.winsorize IS NOT NULL THEN
    RAISE EXCEPTION 'proportion metric "%" cannot be winsorized', m.name
      USING ERRCODE = '22023', HINT = 'its per-unit values are 0 or 1; set winsorize to NULL';
  END IF;
  IF m.kind = 'proportion' AND m.aggregation <> 'any' THEN
    RAISE EXCEPTION 'proportion metric "%" must use aggregation ''any'', not ''%''', m.name, m.aggregation
      USING ERRCODE = '22023', HINT = 'a proportion is the share of units converted at least once';
  END IF;
END
$$;
COMMENT ON FUNCTION experiment.validate_metric(text) IS
  'raise a clear error unless the metric''s relation and columns exist with usable types (and, for ratios, its parts are valid)';

CREATE FUNCTION experiment.metrics_validate_trigger() RETURNS trigger
  LANGUAGE plpgsql
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
BEGIN
  PERFORM experiment.validate_metric(NEW.name);
  RETURN NULL;
END
$$;
COMMENT ON FUNCTION experiment.metrics_validate_trigger() IS 'validates a metric after it is inserted or updated';
CREATE CONSTRAINT TRIGGER metrics_validate
  AFTER INSERT OR UPDATE ON experiment.metrics
  DEFERRABLE INITIALLY IMMEDIATE
  FOR EACH ROW EXECUTE FUNCTION experiment.metrics_validate_trigger();
COMMENT ON TRIGGER metrics_validate ON experiment.metrics IS
  'a metric whose relation, columns or parts are unusable is refused';

CREATE FUNCTION experiment.validate_experiment_metrics(experiment_id text) RETURNS void
  LANGUAGE plpgsql STABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
DECLARE
  nmetrics bigint;
  nprimary bigint;
  r record;
BEGIN
  SELECT count(*), count(*) FILTER (WHERE role = 'primary') INTO nmetrics, nprimary
  FROM experiment.experiment_metrics em WHERE em.experiment_id = validate_experiment_metrics.experiment_id;
  IF nmetrics > 0 AND nprimary <> 1 THEN
    RAISE EXCEPTION 'experiment "%" has % primary metrics, it needs exactly one', experiment_id, nprimary
      USING ERRCODE = '22023',
            HINT = 'set role = ''primary'' on one row of experiment.experiment_metrics';
  END IF;
  FOR r IN SELECT em.metric FROM experiment.experiment_metrics em
           WHERE em.experiment_id = validate_experiment_metrics.experiment_id ORDER BY em.metric LOOP
    PERFORM experiment.validate_metric(r.metric);
  END LOOP;
END
$$;
COMMENT ON FUNCTION experiment.validate_experiment_metrics(text) IS
  'raise a clear error unless the experiment''s metrics are valid and exactly one is primary (when it has any)';

CREATE FUNCTION experiment.experiments_start_trigger() RETURNS trigger
  LANGUAGE plpgsql
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
BEGIN
  IF NEW.status = 'running' AND (TG_OP = 'INSERT' OR OLD.status IS DISTINCT FROM 'running') THEN
    PERFORM experiment.validate_experiment_metrics(NEW.id);
  END IF;
  RETURN NULL;
END
$$;
COMMENT ON FUNCTION experiment.experiments_start_trigger() IS
  'validates an experiment''s metrics when it starts running';
CREATE TRIGGER experiments_validate_metrics_on_start
  AFTER INSERT OR UPDATE OF status ON experiment.experiments
  FOR EACH ROW EXECUTE FUNCTION experiment.experiments_start_trigger();
COMMENT ON TRIGGER experiments_validate_metrics_on_start ON experiment.experiments IS
  'an experiment starts only with valid metrics and exactly one primary (when it has metrics)';

-- ===========================================================================
-- 3. Refresh
-- ===========================================================================

CREATE TABLE experiment.refreshes (
  experiment_id text PRIMARY KEY REFERENCES experiment.experiments (id) ON DELETE CASCADE,
  refreshed_at timestamptz,
  duration interval,
  enrolled_units bigint,
  multi_variant_units bigint,
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
  PRIMARY KEY (experiment_id, metric, variant)
);
COMMENT ON TABLE experiment.variant_stats IS
  'per-variant moments of each metric at the latest refresh';
COMMENT ON COLUMN experiment.variant_stats.moments IS
  'moments of the per-unit value y; for ratio metrics bivariate moments of (numerator, denominator)';
COMMENT ON COLUMN experiment.variant_stats.cuped_moments IS
  'bivariate moments of (y, pre-period y) when the metric has a CUPED lookback';
COMMENT ON COLUMN experiment.variant_stats.cap IS 'winsorization cap applied to y (pooled percentile), if any';

CREATE TABLE experiment.metric_results (
  experiment_id text NOT NULL REFERENCES experiment.experiments (id) ON DELETE CASCADE,
  metric text NOT NULL,
  variant text NOT NULL,
  control_variant text NOT NULL,
  method text NOT NULL CHECK (method IN ('welch', 'prop_ztest', 'cuped', 'ratio')),
  alpha float8 NOT NULL,
  test experiment.test_result,
  refreshed_at timestamptz NOT NULL,
  PRIMARY KEY (experiment_id, metric, variant)
);
COMMENT ON TABLE experiment.metric_results IS
  'test of each treatment variant against control for each metric at the latest refresh';
COMMENT ON COLUMN experiment.metric_results.method IS
  'ratio_ttest for ratio metrics, cuped_ttest when a pre-period covariate exists, else prop_ztest (proportions) or welch_ttest';

-- SQL expression of a metric's per-unit aggregation over the events in (cond)
CREATE FUNCTION experiment.metric_agg_sql(m experiment.metrics, cond text) RETURNS text
  LANGUAGE plpgsql STABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
DECLARE
  v text;
BEGIN
  IF m.value_column IS NOT NULL THEN
    IF experiment.column_type(m.source, m.value_column) = 'boolean'::regtype THEN
      v := format('(s.%I)::integer::float8', m.value_column);
    ELSE
      v := format('(s.%I)::float8', m.value_column);
    END IF;
  END IF;
  RETURN CASE
    WHEN m.aggregation = 'count' AND v IS NULL THEN format('count(*) FILTER (WHERE %s)', cond)
    WHEN m.aggregation = 'count' THEN format('count(%s) FILTER (WHERE %s)', v, cond)
    WHEN m.aggregation = 'sum' AND v IS NULL THEN format('count(*) FILTER (WHERE %s)', cond)
    WHEN m.aggregation = 'sum' THEN format('sum(%s) FILTER (WHERE %s)', v, cond)
    WHEN v IS NULL THEN format('(count(*) FILTER (WHERE %s) > 0)::integer', cond)
    WHEN m.aggregation = 'any' THEN format('(count(*) FILTER (WHERE %s AND %s <> 0) > 0)::integer', cond, v)
    ELSE format('max(%s) FILTER (WHERE %s)', v, cond)
  END;
END
$$;
COMMENT ON FUNCTION experiment.metric_agg_sql(experiment.metrics, text) IS
  'internal: the aggregate expression of a metric over source alias s restricted to a condition';

-- SQL of a per-unit value column (v<i> or p<i> of exp_vals), capped when a cap is given
CREATE FUNCTION experiment.capped_sql(prefix text, i integer, cap float8) RETURNS text
  LANGUAGE sql IMMUTABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
  SELECT CASE WHEN cap IS NULL THEN format('v.%s%s', prefix, i)
              ELSE format('least(v.%s%s, %L::float8)', prefix, i, cap) END
$$;
COMMENT ON FUNCTION experiment.capped_sql(text, integer, float8) IS
  'internal: SQL of a per-unit value column, capped at cap when cap is not NULL';

-- per-unit values of the metrics reading one source, in one scan (src/unit_values.c)
CREATE FUNCTION experiment.source_unit_values(
    unit_ids text[], variants text[], t0s timestamptz[], source regclass, unit_column text,
    time_columns text[], value_columns text[], aggregations text[], lo_offsets interval[],
    hi_offsets interval[], use_end boolean[], end_at timestamptz, scan_from timestamptz, scan_to timestamptz)
  RETURNS TABLE (unit_id text, variant text, vals float8[])
  AS 'MODULE_PATHNAME', 'source_unit_values'
  LANGUAGE C STABLE PARALLEL SAFE;
COMMENT ON FUNCTION experiment.source_unit_values(text[], text[], timestamptz[], regclass, text, text[], text[], text[],
    interval[], interval[], boolean[], timestamptz, timestamptz, timestamptz) IS
  'internal: one row per unit (unit_ids, variants, t0s) with vals[k] = aggregations[k] (sum, count, any, max) of '
  'value_columns[k] (NULL: rows) over the unit''s events in source with time_columns[k] in '
  '[t0 + lo_offsets[k], t0 + hi_offsets[k]) and, when use_end[k], before end_at; 0 without events; '
  'scan_from/scan_to bound the scan when all specs read one time column; reads source like any query '
  '(STABLE, parallel safe as reading a table is)';

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

CREATE FUNCTION experiment.refresh(experiment_id text) RETURNS void
  LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
  SET search_path = pg_catalog, experiment, pg_temp
  -- per-unit aggregation of a million units fits in memory; JIT compilation costs more than it saves here
  SET work_mem = '256MB'
  SET jit = off
AS $$
DECLARE
  e experiment.experiments;
  started timestamptz := clock_timestamp();
  ts timestamptz := now();
  control text;
  nmulti bigint;
  nunits bigint;
  min_t0 timestamptz;
  max_t0 timestamptz;
  src regclass;
  ucol text;
  src_no integer := 0;
  m experiment.metrics;
  tcol text;
  lower_bound timestamptz;
  upper_bound timestamptz;
  need_upper boolean;
  lb timestamptz;
  joins text := '';
  vals_sql text;
  vals_from text;
  aggs text := '';
  vals_cols text := '';
  caps float8[];
  pre_caps float8[];
  unpivot text := '';
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
  SELECT * INTO e FROM experiment.experiments ex WHERE ex.id = refresh.experiment_id;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'unknown experiment_id "%"', experiment_id USING ERRCODE = '22023';
  END IF;
  -- one refresh of an experiment at a time
  PERFORM pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('experiment.refresh:' || e.id));

  PERFORM experiment.validate_experiment_metrics(e.id);
  SELECT v.name INTO control FROM experiment.variants v WHERE v.experiment_id = e.id AND v.is_control;
  IF control IS NULL THEN
    RAISE EXCEPTION 'experiment "%" has no control variant', e.id
      USING ERRCODE = '22023', HINT = 'set is_control on one row of experiment.variants';
  END IF;

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
         pg_catalog.min(u.t0) FILTER (WHERE NOT u.multi), pg_catalog.max(u.t0) FILTER (WHERE NOT u.multi)
    INTO nmulti, nunits, min_t0, max_t0
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
  FOR src, ucol IN SELECT DISTINCT m2.source, m2.unit_column
                   FROM exp_base b JOIN experiment.metrics m2 ON m2.name = b.name ORDER BY 1, 2 LOOP
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
             WHERE m2.source = src AND m2.unit_column = ucol ORDER BY b.i LOOP
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
      lb := min_t0 + m.delay;
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
        lb := min_t0 - m.cuped_lookback;
      END IF;
      lower_bound := least(lower_bound, lb);
      IF e.end_at IS NOT NULL THEN
        upper_bound := greatest(upper_bound, e.end_at);
      ELSIF m."window" IS NOT NULL THEN
        upper_bound := greatest(upper_bound, max_t0 + m.delay + m."window");
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
      '%L::interval[], %L::interval[], %L::boolean[], %L::timestamptz, %L::timestamptz, %L::timestamptz) x%s%s',
      CASE WHEN src_no = 1 THEN ',' ELSE ' JOIN' END,
      src, ucol, tcols, vcols, aggs_a, los, his, ends, e.end_at, lower_bound, upper_bound,
      src_no, CASE WHEN src_no = 1 THEN '' ELSE format(' ON x%s.unit_id = x1.unit_id', src_no) END);
  END LOOP;

  -- per-unit values, zero-filled: one statement, one scan of each source
  IF src_no = 0 THEN
    vals_sql := 'SELECT u.variant FROM pg_temp.exp_units u';
  ELSE
    vals_sql := format('SELECT x1.variant%s FROM (SELECT coalesce(pg_catalog.array_agg(u.unit_id), ''{}'') AS ids, '
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
  IF need_upper THEN
    EXECUTE 'CREATE TEMP TABLE exp_vals ON COMMIT DROP AS ' || vals_sql;
    EXECUTE format('SELECT ARRAY[%s]::float8[], ARRAY[%s]::float8[] FROM pg_temp.exp_vals', cap_v_sql, cap_p_sql)
      INTO caps, pre_caps;
    vals_from := 'pg_temp.exp_vals';
  ELSE
    vals_from := '(' || vals_sql || ')';
  END IF;

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
      aggs := aggs || format(', experiment.moments(%s, %s) AS a%s',
                             experiment.capped_sql('v', r.ni, caps[r.ni]), experiment.capped_sql('v', r.di, caps[r.di]), r.j);
      unpivot := unpivot || format(', (%L, a.a%s, NULL::experiment.moments, NULL::float8)', r.name, r.j);
    ELSE
      aggs := aggs || format(', experiment.moments(%s) AS a%s', experiment.capped_sql('v', r.i, caps[r.i]), r.j);
      IF r.pre THEN
        aggs := aggs || format(', experiment.moments(%s, %s) AS c%s', experiment.capped_sql('v', r.i, caps[r.i]),
                               experiment.capped_sql('p', r.i, pre_caps[r.i]), r.j);
      END IF;
      unpivot := unpivot || format(', (%L, a.a%s, %s, %L::float8)', r.name, r.j,
                                   CASE WHEN r.pre THEN format('a.c%s', r.j) ELSE 'NULL::experiment.moments' END,
                                   caps[r.i]);
    END IF;
  END LOOP;

  -- per-variant moments of every metric in one pass over the per-unit values
  IF unpivot <> '' THEN
    EXECUTE format(
      'INSERT INTO experiment.variant_stats (experiment_id, metric, variant, units, moments, cuped_moments, cap, refreshed_at) '
      'SELECT %L, k.metric, a.variant, a.units, k.m, k.c, k.cap, %L '
      'FROM (SELECT v.variant, count(*) AS units%s FROM %s v GROUP BY v.variant) a '
      'CROSS JOIN LATERAL (VALUES %s) AS k(metric, m, c, cap)',
      e.id, ts, aggs, vals_from, substr(unpivot, 3));
  END IF;

  INSERT INTO experiment.enrollment (experiment_id, variant, units, refreshed_at)
  SELECT e.id, v.name, coalesce(c.units, 0), ts
  FROM experiment.variants v
  LEFT JOIN (SELECT u.variant, count(*) AS units FROM pg_temp.exp_units u GROUP BY u.variant) c
    ON c.variant = v.name
  WHERE v.experiment_id = e.id;

  -- tests of each treatment against control
  INSERT INTO experiment.metric_results
    (experiment_id, metric, variant, control_variant, method, alpha, test, refreshed_at)
  SELECT e.id, m2.name, t.variant, c.variant, k.method, coalesce(e.alpha, 0.05),
         CASE k.method
           WHEN 'ratio' THEN experiment.ratio_ttest(c.moments, t.moments, coalesce(e.alpha, 0.05))
           WHEN 'cuped' THEN experiment.cuped_ttest(c.cuped_moments, t.cuped_moments, coalesce(e.alpha, 0.05))
           WHEN 'prop_ztest' THEN experiment.prop_ztest(
             pg_catalog.round(experiment.mean(c.moments) * experiment.n(c.moments))::bigint, experiment.n(c.moments),
             pg_catalog.round(experiment.mean(t.moments) * experiment.n(t.moments))::bigint, experiment.n(t.moments),
             coalesce(e.alpha, 0.05))
           ELSE experiment.welch_ttest(c.moments, t.moments, coalesce(e.alpha, 0.05))
         END,
         ts
  FROM experiment.experiment_metrics em
  JOIN experiment.metrics m2 ON m2.name = em.metric
  JOIN experiment.variant_stats c
    ON c.experiment_id = e.id AND c.metric = m2.name AND c.variant = control
  JOIN experiment.variant_stats t
    ON t.experiment_id = e.id AND t.metric = m2.name AND t.variant <> control
  CROSS JOIN LATERAL (SELECT CASE
      WHEN m2.kind = 'ratio' THEN 'ratio'
      WHEN c.cuped_moments IS NOT NULL AND t.cuped_moments IS NOT NULL
           AND coalesce(experiment.variance(c.cuped_moments OPERATOR(experiment.+) t.cuped_moments, 2), 0) > 0
        THEN 'cuped'
      WHEN m2.kind = 'proportion' THEN 'prop_ztest'
      ELSE 'welch' END AS method) k
  WHERE em.experiment_id = e.id;

  INSERT INTO experiment.refreshes AS f
    (experiment_id, refreshed_at, duration, enrolled_units, multi_variant_units,
     first_exposure, last_exposure, exposures_by_day, error, error_at)
  SELECT e.id, ts, clock_timestamp() - started, nunits, nmulti, min_t0, max_t0,
         (SELECT coalesce(jsonb_agg(jsonb_build_object('day', d.day, 'units', d.units) ORDER BY d.day), '[]')
          FROM (SELECT (u.t0 AT TIME ZONE 'UTC')::date AS day, count(*) AS units
                FROM pg_temp.exp_units u GROUP BY 1) d),
         NULL, NULL
  ON CONFLICT ON CONSTRAINT refreshes_pkey DO UPDATE SET
    refreshed_at = excluded.refreshed_at, duration = excluded.duration,
    enrolled_units = excluded.enrolled_units, multi_variant_units = excluded.multi_variant_units,
    first_exposure = excluded.first_exposure, last_exposure = excluded.last_exposure,
    exposures_by_day = excluded.exposures_by_day, error = NULL, error_at = NULL;

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
BEGIN
  PERFORM experiment.process_exposures_staging();
  FOR id IN SELECT ex.id FROM experiment.experiments ex WHERE ex.status = 'running' ORDER BY ex.id LOOP
    BEGIN
      PERFORM experiment.refresh(id);
      done := done + 1;
    EXCEPTION WHEN OTHERS THEN
      RAISE WARNING 'refresh of experiment "%" failed: %', id, SQLERRM;
      INSERT INTO experiment.refreshes AS f (experiment_id, error, error_at)
      VALUES (id, SQLERRM, clock_timestamp())
      ON CONFLICT ON CONSTRAINT refreshes_pkey DO UPDATE SET error = excluded.error, error_at = excluded.error_at;
    END;
  END LOOP;
  RETURN done;
END
$$;
COMMENT ON FUNCTION experiment.refresh_all() IS
  'load staged exposures, then refresh every running experiment (one failing experiment is recorded in experiment.refreshes and does not stop the others); returns how many were refreshed';

-- ===========================================================================
-- 4. What users read
-- ===========================================================================

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
       f.exposures_by_day
FROM experiment.experiments ex
LEFT JOIN experiment.refreshes f ON f.experiment_id = ex.id
LEFT JOIN (SELECT DISTINCT s0.experiment_id, s0.p_value, s0.ok FROM experiment.srm s0) s ON s.experiment_id = ex.id
LEFT JOIN (SELECT e0.experiment_id, pg_catalog.min(e0.units) AS min_units FROM experiment.enrollment e0
           GROUP BY e0.experiment_id) en ON en.experiment_id = ex.id
LEFT JOIN (SELECT q.experiment_id, count(*) AS n FROM experiment.exposures_quarantine q
           GROUP BY q.experiment_id) qu ON qu.experiment_id = ex.id;
COMMENT ON VIEW experiment.health IS
  'per experiment: latest refresh, units in several variants (flagged above 1%), SRM, days run against the minimum runtime, units against the target, quarantined exposures, new units per day';

CREATE FUNCTION experiment.decision(experiment_id text, OUT decision text, OUT reason text)
  LANGUAGE plpgsql STABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
DECLARE
  h experiment.health;
  ex experiment.experiments;
  t record;
  ntreat integer := 0;
  nship integer := 0;
  ndont integer := 0;
  best text;
  best_lift float8;
  d text;
BEGIN
  SELECT * INTO ex FROM experiment.experiments e0 WHERE e0.id = decision.experiment_id;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'unknown experiment_id "%"', decision.experiment_id USING ERRCODE = '22023';
  END IF;
  SELECT * INTO h FROM experiment.health h0 WHERE h0.experiment_id = decision.experiment_id;
  IF h.refreshed_at IS NULL THEN
    decision := NULL;
    reason := 'not refreshed yet';
    RETURN;
  END IF;
  IF h.srm_ok IS FALSE THEN
    decision := 'INVALID';
    reason := format('sample ratio mismatch, p = %s', experiment.format_p(h.srm_p_value, false));
    RETURN;
  END IF;
  IF NOT h.runtime_ok THEN
    decision := 'KEEP RUNNING';
    reason := format('%s of %s days run', floor(h.days_run), round(h.min_runtime_days::numeric, 1)::float8);
    IF NOT h.sample_ok THEN
      reason := reason || format(', %s of %s units per variant', experiment.format_count(coalesce(h.min_units_per_variant, 0)),
                                 experiment.format_count(h.target_units_per_variant));
    END IF;
    RETURN;
  END IF;
  IF NOT h.sample_ok THEN
    decision := 'KEEP RUNNING';
    reason := format('%s of %s units per variant', experiment.format_count(coalesce(h.min_units_per_variant, 0)),
                     experiment.format_count(h.target_units_per_variant));
    RETURN;
  END IF;

  FOR t IN
    SELECT en.variant,
           bool_or(r.role = 'guardrail' AND NOT r.guardrail_ok) AS guardrail_failed,
           bool_or(r.role = 'primary' AND r.better) AS primary_better,
           bool_or(r.role = 'primary' AND r.worse) AS primary_worse,
           pg_catalog.max(CASE WHEN r.role = 'primary' THEN
             CASE WHEN r.higher_is_better THEN r.lift ELSE -r.lift END END) AS primary_gain
    FROM experiment.enrollment en
    JOIN experiment.variants v ON v.experiment_id = en.experiment_id AND v.name = en.variant AND NOT v.is_control
    LEFT JOIN experiment.results r ON r.experiment_id = en.experiment_id AND r.variant = en.variant
    WHERE en.experiment_id = decision.experiment_id
    GROUP BY en.variant ORDER BY en.variant
  LOOP
    ntreat := ntreat + 1;
    IF coalesce(t.guardrail_failed, false) OR coalesce(t.primary_worse, false) THEN
      ndont := ndont + 1;
    ELSIF coalesce(t.primary_better, false) THEN
      nship := nship + 1;
      IF best IS NULL OR t.primary_gain > best_lift THEN
        best := t.variant;
        best_lift := t.primary_gain;
      END IF;
    END IF;
  END LOOP;

  IF nship > 0 THEN
    decision := 'SHIP';
    reason := CASE WHEN ntreat > 1 THEN format('ship %s', best) END;
  ELSIF ntreat > 0 AND ndont = ntreat THEN
    decision := 'DON''T SHIP';
  ELSE
    decision := 'NO SIGNIFICANT EFFECT';
  END IF;
END
$$;

-- text formatting of the readout
CREATE FUNCTION experiment.format_number(x float8) RETURNS text
  LANGUAGE sql IMMUTABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
  SELECT CASE
    WHEN x IS NULL THEN 'n/a'
    WHEN x = 0 THEN '0'
    WHEN x <> x OR abs(x) = 'Infinity'::float8 THEN x::text
    WHEN abs(x) >= 1000 THEN to_char(round(x::numeric), 'FM999,999,999,999,999,990')
    WHEN abs(x) >= 10 THEN to_char(round(x::numeric, 2), 'FM990.00')
    WHEN abs(x) >= 1 THEN to_char(round(x::numeric, 3), 'FM0.000')
    ELSE round(x::numeric, greatest(3, 2 - floor(log(abs(x)::numeric))::integer))::text
  END
$$;
COMMENT ON FUNCTION experiment.format_number(float8) IS
  'a number as the readout prints it: thousands separators from 1,000, else 2 or 3 decimals, small values to 3 significant digits';

CREATE FUNCTION experiment.format_count(n bigint) RETURNS text
  LANGUAGE sql IMMUTABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
  SELECT CASE WHEN n IS NULL THEN 'n/a' ELSE to_char(n, 'FM999,999,999,999,999,990') END
$$;
COMMENT ON FUNCTION experiment.format_count(bigint) IS 'a count with thousands separators: 12,841';

CREATE FUNCTION experiment.format_signed(x float8, suffix text DEFAULT '', scale float8 DEFAULT 1, decimals integer DEFAULT NULL)
  RETURNS text
  LANGUAGE sql IMMUTABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
  SELECT CASE
    WHEN x IS NULL THEN 'n/a'
    WHEN decimals IS NULL THEN CASE WHEN x * scale >= 0 THEN '+' ELSE '' END || experiment.format_number(x * scale) || suffix
    ELSE CASE WHEN round((x * scale)::numeric, decimals) >= 0 THEN '+' ELSE '' END
         || to_char(round((x * scale)::numeric, decimals),
                    'FM999,999,999,990' || CASE WHEN decimals > 0 THEN '.' || repeat('0', decimals) ELSE '' END)
         || suffix
  END
$$;
COMMENT ON FUNCTION experiment.format_signed(float8, text, float8, integer) IS
  'x * scale with an explicit sign and a suffix (''%'', ''pp''), to a fixed number of decimals when given';

CREATE FUNCTION experiment.format_p(p float8, with_label boolean DEFAULT true) RETURNS text
  LANGUAGE sql IMMUTABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
  SELECT CASE WHEN with_label THEN 'p ' ELSE '' END || CASE
    WHEN p IS NULL THEN CASE WHEN with_label THEN '= ' ELSE '' END || 'n/a'
    WHEN p < 0.001 THEN '< 0.001'
    WHEN p < 0.1 THEN CASE WHEN with_label THEN '= ' ELSE '' END || to_char(round(p::numeric, 3), 'FM0.000')
    ELSE CASE WHEN with_label THEN '= ' ELSE '' END || to_char(round(p::numeric, 2), 'FM0.00')
  END
$$;
COMMENT ON FUNCTION experiment.format_p(float8, boolean) IS
  'a p-value as the readout prints it: "p = 0.83", "p = 0.003", "p < 0.001"';

COMMENT ON FUNCTION experiment.decision(text) IS
  'the decision rule of the readout: INVALID (SRM), KEEP RUNNING (runtime or sample short), SHIP, DON''T SHIP, NO SIGNIFICANT EFFECT, with a reason';

CREATE FUNCTION experiment.readout_metric_line(r experiment.results, control_label text, treatment_label text)
  RETURNS text
  LANGUAGE sql IMMUTABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
  SELECT format('%s: %s   %s: %s   Lift: %s   %s%% CI [%s, %s]   %s',
    control_label, experiment.format_number(r.mean_control),
    treatment_label, experiment.format_number(r.mean_treatment),
    CASE WHEN r.kind = 'proportion'
         THEN experiment.format_signed(r.diff, 'pp', 100, 1) || ' (' || experiment.format_signed(r.lift, '%', 100, 1) || ')'
         ELSE experiment.format_signed(r.diff) || ' (' || experiment.format_signed(r.lift, '%', 100, 1) || ')'
    END,
    rtrim(rtrim(to_char(round(((1 - r.alpha) * 100)::numeric, 2), 'FM990.00'), '0'), '.'),
    CASE WHEN r.kind = 'proportion' THEN experiment.format_signed(r.diff_lower, 'pp', 100, 1)
         ELSE experiment.format_signed(r.diff_lower) END,
    CASE WHEN r.kind = 'proportion' THEN experiment.format_signed(r.diff_upper, 'pp', 100, 1)
         ELSE experiment.format_signed(r.diff_upper) END,
    experiment.format_p(r.p_value))
$$;
COMMENT ON FUNCTION experiment.readout_metric_line(experiment.results, text, text) IS
  'one metric line of the readout: means, difference (pp for proportions) and lift, confidence interval, p-value';

CREATE FUNCTION experiment.readout(experiment_id text) RETURNS text
  LANGUAGE plpgsql STABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
DECLARE
  ex experiment.experiments;
  h experiment.health;
  dec record;
  control text;
  ntreat integer;
  lines text[] := '{}';
  line text;
  r experiment.results;
  days float8;
  g record;
  sec_seen boolean := false;
  label text;
BEGIN
  SELECT * INTO ex FROM experiment.experiments e0 WHERE e0.id = readout.experiment_id;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'unknown experiment_id "%"', readout.experiment_id USING ERRCODE = '22023';
  END IF;
  SELECT * INTO h FROM experiment.health h0 WHERE h0.experiment_id = ex.id;
  IF h.refreshed_at IS NULL THEN
    RAISE EXCEPTION 'experiment "%" has not been refreshed', ex.id
      USING ERRCODE = '22023', HINT = format('run SELECT experiment.refresh(%L)', ex.id);
  END IF;
  SELECT v.name INTO control FROM experiment.variants v WHERE v.experiment_id = ex.id AND v.is_control;
  SELECT count(*) INTO ntreat FROM experiment.enrollment en
    WHERE en.experiment_id = ex.id AND en.variant IS DISTINCT FROM control;

  days := h.days_run;
  lines := lines || format('Experiment: %s   Duration: %s', ex.id,
    CASE WHEN days IS NULL THEN 'n/a'
         WHEN floor(days) = 1 THEN '1 day'
         ELSE floor(days)::bigint || ' days' END);

  SELECT string_agg(experiment.format_count(en.units) || ' ' || en.variant, ' / '
                    ORDER BY en.variant IS DISTINCT FROM control, en.variant)
    INTO line FROM experiment.enrollment en WHERE en.experiment_id = ex.id;
  lines := lines || rtrim(format('Sample: %s   SRM %s %s', line, experiment.format_p(h.srm_p_value),
                                 CASE WHEN h.srm_ok THEN 'ok' WHEN h.srm_ok IS NULL THEN '' ELSE 'FAILED' END));
  IF NOT h.multi_variant_ok THEN
    lines := lines || format('Warning: %s%% of the units (%s) were exposed to several variants and are excluded',
                             round((h.multi_variant_share * 100)::numeric, 1),
                             experiment.format_count(h.multi_variant_units));
  END IF;

  -- primary, then secondary metrics
  FOR g IN SELECT em.metric, em.role, m.kind FROM experiment.experiment_metrics em
           JOIN experiment.metrics m ON m.name = em.metric
           WHERE em.experiment_id = ex.id AND em.role IN ('primary', 'secondary')
           ORDER BY em.role = 'secondary', em.metric LOOP
    IF g.role = 'primary' THEN
      lines := lines || format('Primary metric (%s):', g.metric);
    ELSE
      IF NOT sec_seen THEN
        lines := lines || 'Secondary metrics:'::text;
        sec_seen := true;
      END IF;
      lines := lines || format('  %s:', g.metric);
    END IF;
    FOR r IN SELECT * FROM experiment.results rr
             WHERE rr.experiment_id = ex.id AND rr.metric = g.metric ORDER BY rr.variant LOOP
      label := upper(left(r.variant, 1)) || substr(r.variant, 2);
      lines := lines || (CASE WHEN g.role = 'primary' THEN '  ' ELSE '    ' END
        || experiment.readout_metric_line(r, upper(left(control, 1)) || substr(control, 2), label)
        || CASE r.method WHEN 'cuped' THEN '   (CUPED)' WHEN 'ratio' THEN '   (delta method)' ELSE '' END);
    END LOOP;
  END LOOP;

  SELECT string_agg(q.metric || ' ' || CASE WHEN q.ok THEN 'ok' ELSE 'FAILED' END, '   ' ORDER BY q.metric)
    INTO line
    FROM (SELECT em.metric, bool_and(coalesce(rr.guardrail_ok, true)) AS ok
          FROM experiment.experiment_metrics em
          LEFT JOIN experiment.results rr ON rr.experiment_id = em.experiment_id AND rr.metric = em.metric
          WHERE em.experiment_id = ex.id AND em.role = 'guardrail'
          GROUP BY em.metric) q;
  lines := lines || ('Guardrails:  ' || coalesce(line, 'none'));

  SELECT * INTO dec FROM experiment.decision(ex.id);
  lines := lines || ('Decision: ' || coalesce(dec.decision, 'n/a')
                     || CASE WHEN dec.reason IS NOT NULL THEN ' (' || dec.reason || ')' ELSE '' END);
  RETURN array_to_string(lines, E'\n');
END
$$;
COMMENT ON FUNCTION experiment.readout(text) IS
  'the decision summary of an experiment as text: duration, sample and SRM, primary and secondary metrics, guardrails, decision';

CREATE TABLE experiment.conclusions (
  id bigserial PRIMARY KEY,
  experiment_id text NOT NULL REFERENCES experiment.experiments (id) ON DELETE CASCADE,
  decision text NOT NULL CHECK (decision IN ('SHIP', 'DON''T SHIP', 'NO SIGNIFICANT EFFECT', 'INVALID')),
  notes text,
  recommended_decision text,
  readout text,
  results jsonb NOT NULL,
  srm jsonb NOT NULL,
  health jsonb,
  refreshed_at timestamptz,
  concluded_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
  concluded_by text NOT NULL DEFAULT CURRENT_USER
);
COMMENT ON TABLE experiment.conclusions IS
  'recorded decisions with a write-up and a snapshot of the results, SRM and health as they stood';
SELECT pg_catalog.pg_extension_config_dump('experiment.conclusions', '');
SELECT pg_catalog.pg_extension_config_dump('experiment.conclusions_id_seq', '');
COMMENT ON SEQUENCE experiment.conclusions_id_seq IS 'ids of recorded conclusions';

CREATE FUNCTION experiment.conclude(experiment_id text, decision text, notes text DEFAULT NULL)
  RETURNS experiment.conclusions
  LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
DECLARE
  d text := upper(btrim(decision));
  c experiment.conclusions;
BEGIN
  IF NOT EXISTS (SELECT 1 FROM experiment.experiments e0 WHERE e0.id = conclude.experiment_id) THEN
    RAISE EXCEPTION 'unknown experiment_id "%"', conclude.experiment_id USING ERRCODE = '22023';
  END IF;
  IF d IS NULL OR d NOT IN ('SHIP', 'DON''T SHIP', 'NO SIGNIFICANT EFFECT', 'INVALID') THEN
    RAISE EXCEPTION 'invalid decision "%"', decision
      USING ERRCODE = '22023', HINT = 'use SHIP, DON''T SHIP, NO SIGNIFICANT EFFECT or INVALID';
  END IF;
  IF NOT EXISTS (SELECT 1 FROM experiment.refreshes f WHERE f.experiment_id = conclude.experiment_id
                 AND f.refreshed_at IS NOT NULL) THEN
    PERFORM experiment.refresh(conclude.experiment_id);
  END IF;
  INSERT INTO experiment.conclusions AS k (experiment_id, decision, notes, recommended_decision, readout,
                                           results, srm, health, refreshed_at)
  SELECT conclude.experiment_id, d, conclude.notes,
         (SELECT dd.decision FROM experiment.decision(conclude.experiment_id) dd),
         experiment.readout(conclude.experiment_id),
         (SELECT coalesce(jsonb_agg(to_jsonb(rr) ORDER BY rr.metric, rr.variant), '[]')
            FROM experiment.results rr WHERE rr.experiment_id = conclude.experiment_id),
         (SELECT coalesce(jsonb_agg(to_jsonb(s) ORDER BY s.variant), '[]')
            FROM experiment.srm s WHERE s.experiment_id = conclude.experiment_id),
         (SELECT to_jsonb(h) FROM experiment.health h WHERE h.experiment_id = conclude.experiment_id),
         (SELECT f.refreshed_at FROM experiment.refreshes f WHERE f.experiment_id = conclude.experiment_id)
  RETURNING * INTO c;
  UPDATE experiment.experiments e1 SET status = 'concluded'
   WHERE e1.id = conclude.experiment_id AND e1.status IS DISTINCT FROM 'concluded';
  RETURN c;
END
$$;
COMMENT ON FUNCTION experiment.conclude(text, text, text) IS
  'record the decision and notes of an experiment with a snapshot of its readout, results, SRM and health, and mark it concluded';
