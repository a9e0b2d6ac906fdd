-- experiment 0.3.0 -> 0.4.0 (ALTER EXTENSION experiment UPDATE; doc/operations.md#upgrading)
--
-- Kafka ingestion (doc/kafka.md): experiment.kafka_offsets, experiment.kafka_dead_letters,
-- the quarantine's kafka_topic, kafka_partition and kafka_offset columns,
-- ingest_exposure_messages(), ingest_event_messages() and kafka_advance_offsets();
-- setup_roles() grants experiment_ingest the new tables (run it again after the update).
-- CUPED for ratio metrics: cuped_ratio_ttest(), cuped_ratio_theta(), method 'cuped_ratio'
-- of metric_results (ratio metrics with a cuped_lookback whose parts have one).
-- Capping both ways: metrics.winsorize_lower, cap_lower, cap_upper, cap_ignore_zeros,
-- variant_stats.cap_lower.
-- Results over time: experiment.results_daily (with row-level security as metric_results),
-- experiment.sparkline(), the lift by day in readout().
-- test/test_upgrade.py checks that the result equals a fresh 0.4.0 install.
\echo Use "ALTER EXTENSION experiment UPDATE TO '0.4.0'" to load this file. \quit

DROP FUNCTION experiment.capped_sql(text, integer, float8);

CREATE OR REPLACE FUNCTION experiment.cuped_ratio_ttest(control experiment.moments, treatment experiment.moments,
                                             alpha float8 DEFAULT 0.05, alternative text DEFAULT 'two-sided',
                                             sequential_tuning float8 DEFAULT NULL)
  RETURNS experiment.test_result
  AS 'MODULE_PATHNAME', 'exp_cuped_ratio_ttest' LANGUAGE C IMMUTABLE PARALLEL SAFE;

COMMENT ON FUNCTION experiment.cuped_ratio_ttest(experiment.moments, experiment.moments, float8, text, float8) IS
  'Welch''s t-test of a ratio metric adjusted by its pre-period ratio (CUPED for ratio metrics, theta from the delta-method '
  'linearisation over both arms) from 4-variable moments of (numerator, denominator, pre-numerator, pre-denominator); '
  'means reported unadjusted';

CREATE OR REPLACE FUNCTION experiment.cuped_ratio_theta(control experiment.moments, treatment experiment.moments) RETURNS float8
  AS 'MODULE_PATHNAME', 'exp_cuped_ratio_theta' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

COMMENT ON FUNCTION experiment.cuped_ratio_theta(experiment.moments, experiment.moments) IS
  'the theta of cuped_ratio_ttest: covariance of the linearised ratio and pre-period ratio over the variance of the latter, '
  'summed over both arms; 0 where undefined';

ALTER TABLE experiment.exposures_quarantine
  ADD COLUMN kafka_topic text,
  ADD COLUMN kafka_partition integer,
  ADD COLUMN kafka_offset bigint;

COMMENT ON COLUMN experiment.exposures_quarantine.payload IS
  'the exposure as delivered; a message that was not JSON is kept as a JSON string of its text';

CREATE UNIQUE INDEX exposures_quarantine_kafka_position_key ON experiment.exposures_quarantine
  (kafka_topic, kafka_partition, kafka_offset) WHERE kafka_topic IS NOT NULL;

COMMENT ON INDEX experiment.exposures_quarantine_kafka_position_key IS
  'a Kafka message is quarantined once, however often it is read';

COMMENT ON COLUMN experiment.exposures_quarantine.kafka_offset IS
  'where a Kafka message came from (experiment-kafka-sink, doc/kafka.md): topic, partition and offset; NULL for other loads';

-- text to jsonb, NULL when the text is not JSON that jsonb can store
CREATE OR REPLACE FUNCTION experiment.try_jsonb(value text) RETURNS jsonb
  LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL UNSAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
BEGIN
  RETURN value::jsonb;
EXCEPTION WHEN data_exception OR program_limit_exceeded OR statement_too_complex THEN
  RETURN NULL;
END
$$;

COMMENT ON FUNCTION experiment.try_jsonb(text) IS
  'internal: the text as jsonb, or NULL when it is not JSON that jsonb stores (used by the Kafka ingestion to quarantine bad messages)';

-- The ingestion of exposures, shared by ingest_exposures() and ingest_exposure_messages():
-- items[i] is the parsed exposure, or NULL when texts[i] was not JSON; topics, partitions and
-- offsets (NULL, or as long as items) say where Kafka messages came from.
CREATE OR REPLACE FUNCTION experiment.store_exposures(items jsonb[], texts text[],
  topics text[], partitions integer[], offsets bigint[],
  OUT inserted bigint, OUT duplicates bigint, OUT quarantined bigint)
  LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
BEGIN
  WITH raw AS (
    SELECT coalesce(r.item, pg_catalog.to_jsonb(r.text)) AS payload, r.ord,
           CASE WHEN jsonb_typeof(r.item) = 'object' THEN r.item END AS o,
           r.item IS NULL AS not_json, r.topic, r.part, r.off
    FROM unnest(items, texts, topics, partitions, offsets) WITH ORDINALITY AS r(item, text, topic, part, off, ord)
  ), parsed AS (
    SELECT payload, ord, not_json, topic, part, off,
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
             WHEN p.not_json THEN 'not JSON'
             WHEN p.not_object THEN 'not a JSON object'
             WHEN p.experiment_id IS NULL THEN 'missing experiment_id'
             WHEN p.unit_id IS NULL THEN 'missing unit_id'
             WHEN p.variant IS NULL THEN 'missing variant'
             WHEN p.exposed_at_text IS NULL THEN 'missing exposed_at'
             WHEN p.exposed_at IS NULL THEN 'invalid exposed_at'
             WHEN NOT experiment.exposed_at_valid(p.exposed_at)
               THEN 'exposed_at out of range (1970-01-01 to 2200-01-01)'
             WHEN e.id IS NULL THEN 'unknown experiment'
             WHEN v.name IS NULL THEN 'unknown variant'
           END AS reason
    -- joins (one row each: the keys are unique), not a subquery per row
    FROM parsed p
    LEFT JOIN experiment.experiments e ON e.id = p.experiment_id
    LEFT JOIN experiment.variants v ON v.experiment_id = p.experiment_id AND v.name = p.variant
  ), quarantine AS (
    INSERT INTO experiment.exposures_quarantine
      (reason, experiment_id, unit_id, variant, event_id, payload, kafka_topic, kafka_partition, kafka_offset)
    SELECT reason, experiment_id, unit_id, variant, event_id, payload, topic, part, off
    FROM checked WHERE reason IS NOT NULL
    ORDER BY ord
    -- a Kafka message read again (a replay) is kept once, at its position
    ON CONFLICT DO NOTHING
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
         -- (every bad row counts, also one quarantined before: the CTE runs to completion anyway)
         (SELECT count(*) FROM checked WHERE reason IS NOT NULL)
  INTO inserted, duplicates, quarantined;
END
$$;

COMMENT ON FUNCTION experiment.store_exposures(jsonb[], text[], text[], integer[], bigint[]) IS
  'internal: store parsed exposures idempotently and quarantine the rest with a reason (and, for Kafka messages, where they came from)';

CREATE OR REPLACE FUNCTION experiment.ingest_exposures(rows jsonb,
  OUT inserted bigint, OUT duplicates bigint, OUT quarantined bigint)
  LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
BEGIN
  IF rows IS NULL OR jsonb_typeof(rows) <> 'array' THEN
    RAISE EXCEPTION 'rows must be a JSON array of exposure objects, got %',
      coalesce(jsonb_typeof(rows), 'NULL') USING ERRCODE = '22023';
  END IF;
  SELECT s.inserted, s.duplicates, s.quarantined INTO inserted, duplicates, quarantined
  FROM experiment.store_exposures(
         ARRAY(SELECT r.value FROM jsonb_array_elements(rows) WITH ORDINALITY AS r ORDER BY r.ordinality),
         NULL, NULL, NULL, NULL) AS s;
END
$$;

-- Capping both ways (doc/analysis.md, "Winsorization"): metrics.winsorize_lower, cap_lower,
-- cap_upper and cap_ignore_zeros, variant_stats.cap_lower
ALTER TABLE experiment.metrics
  ADD COLUMN winsorize_lower float8,
  ADD COLUMN cap_lower float8,
  ADD COLUMN cap_upper float8,
  ADD COLUMN cap_ignore_zeros boolean NOT NULL DEFAULT false,
  ADD CONSTRAINT metrics_winsorize_lower_check CHECK (
    winsorize_lower IS NULL OR (winsorize_lower > 0 AND winsorize_lower < 1
                                AND (winsorize IS NULL OR winsorize_lower < winsorize))),
  ADD CONSTRAINT metrics_cap_check CHECK (
    (cap_lower IS NULL OR (cap_lower > '-Infinity'::float8 AND cap_lower < 'Infinity'::float8))
    AND (cap_upper IS NULL OR (cap_upper > '-Infinity'::float8 AND cap_upper < 'Infinity'::float8))
    AND (cap_lower IS NULL OR cap_upper IS NULL OR cap_lower < cap_upper));

COMMENT ON COLUMN experiment.metrics.winsorize_lower IS
  'cap per-unit values from below at this lower percentile, pooled over all units (e.g. 0.001; below winsorize)';

COMMENT ON COLUMN experiment.metrics.cap_lower IS
  'absolute lower cap of per-unit values (e.g. -500 for refunds): no capped value is below it; a lower percentile cap can only raise it';

COMMENT ON COLUMN experiment.metrics.cap_upper IS
  'absolute upper cap of per-unit values: no capped value is above it; with winsorize the upper cap is the smaller of the two';

COMMENT ON COLUMN experiment.metrics.cap_ignore_zeros IS
  'percentile caps are taken over the units whose value is not 0 (zero-inflated revenue), and a 0 is never capped';

-- the values a catalogue row may hold, checked before the table's constraints so that a
-- mistake gets a message naming the column, the value and what is allowed
CREATE OR REPLACE FUNCTION experiment.metrics_check() RETURNS trigger
  LANGUAGE plpgsql
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
DECLARE
  owner text := format('metric "%s"', CASE WHEN TG_OP = 'DELETE' THEN OLD.name ELSE NEW.name END);
BEGIN
  -- ownership: like ALTER ... OWNER TO, only members of a role may act for it
  IF TG_OP IN ('UPDATE', 'DELETE') AND NOT pg_catalog.pg_has_role(current_user, OLD.owner, 'MEMBER') THEN
    RAISE EXCEPTION 'permission denied to % metric "%"', lower(TG_OP), OLD.name
      USING ERRCODE = 'insufficient_privilege',
            DETAIL = format('Only members of role "%s", the metric''s owner, may change or delete it.', OLD.owner);
  END IF;
  IF TG_OP = 'DELETE' THEN
    RETURN OLD;
  END IF;
  IF NEW.owner IS NULL THEN
    NEW.owner := CASE WHEN TG_OP = 'UPDATE' THEN OLD.owner ELSE experiment.current_regrole() END;
  END IF;
  IF (TG_OP = 'INSERT' OR NEW.owner IS DISTINCT FROM OLD.owner)
     AND NOT pg_catalog.pg_has_role(current_user, NEW.owner, 'MEMBER') THEN
    RAISE EXCEPTION 'permission denied to make role "%" the owner of metric "%"', NEW.owner, NEW.name
      USING ERRCODE = 'insufficient_privilege',
            DETAIL = 'A metric''s source is read as its owner: only members of a role may register metrics for it.',
            HINT = 'Leave owner NULL to own the metric yourself.';
  END IF;
  IF NEW.name IS NULL OR NEW.name = '' THEN
    PERFORM experiment.raise_invalid_value('name of a metric', quote_nullable(NEW.name), 'a non-empty text');
  END IF;
  IF NEW.aggregation IS NULL OR NEW.aggregation NOT IN ('sum', 'count', 'any', 'max') THEN
    PERFORM experiment.raise_invalid_choice('aggregation', NEW.aggregation, '{sum,count,any,max}', owner);
  END IF;
  IF NEW.kind IS NULL OR NEW.kind NOT IN ('mean', 'proportion', 'ratio') THEN
    PERFORM experiment.raise_invalid_choice('kind', NEW.kind, '{mean,proportion,ratio}', owner);
  END IF;
  IF NEW.delay IS NULL OR NEW.delay < interval '0' THEN
    PERFORM experiment.raise_invalid_value('delay of ' || owner, NEW.delay::text, 'a non-negative interval');
  END IF;
  IF NEW."window" <= interval '0' THEN
    PERFORM experiment.raise_invalid_value('window of ' || owner, NEW."window"::text,
                                           'a positive interval (NULL: until the end of the experiment)');
  END IF;
  IF NOT (NEW.winsorize > 0 AND NEW.winsorize < 1) THEN
    PERFORM experiment.raise_invalid_value('winsorize of ' || owner, NEW.winsorize::text,
                                           'a percentile in (0, 1), e.g. 0.999 (NULL: no cap)');
  END IF;
  IF NOT (NEW.winsorize_lower > 0 AND NEW.winsorize_lower < 1) THEN
    PERFORM experiment.raise_invalid_value('winsorize_lower of ' || owner, NEW.winsorize_lower::text,
                                           'a lower percentile in (0, 1), e.g. 0.001 (NULL: no lower percentile cap)');
  END IF;
  IF NEW.winsorize_lower >= NEW.winsorize THEN
    PERFORM experiment.raise_invalid_value('winsorize_lower of ' || owner, NEW.winsorize_lower::text,
                                           format('a percentile below winsorize (%s)', NEW.winsorize));
  END IF;
  IF NOT (NEW.cap_lower > '-Infinity'::float8 AND NEW.cap_lower < 'Infinity'::float8) THEN
    PERFORM experiment.raise_invalid_value('cap_lower of ' || owner, NEW.cap_lower::text,
                                           'a finite number (NULL: no absolute lower cap)');
  END IF;
  IF NOT (NEW.cap_upper > '-Infinity'::float8 AND NEW.cap_upper < 'Infinity'::float8) THEN
    PERFORM experiment.raise_invalid_value('cap_upper of ' || owner, NEW.cap_upper::text,
                                           'a finite number (NULL: no absolute upper cap)');
  END IF;
  IF NEW.cap_lower >= NEW.cap_upper THEN
    PERFORM experiment.raise_invalid_value('cap_lower of ' || owner, NEW.cap_lower::text,
                                           format('below cap_upper (%s)', NEW.cap_upper));
  END IF;
  IF NEW.cap_ignore_zeros IS NULL THEN
    PERFORM experiment.raise_invalid_value('cap_ignore_zeros of ' || owner, 'NULL', 'true or false');
  END IF;
  IF NEW.cuped_lookback <= interval '0' THEN
    PERFORM experiment.raise_invalid_value('cuped_lookback of ' || owner, NEW.cuped_lookback::text,
                                           'a positive interval (NULL: no CUPED)');
  END IF;
  IF NEW.late_events IS NULL OR NEW.late_events < interval '0' THEN
    PERFORM experiment.raise_invalid_value('late_events of ' || owner, coalesce(NEW.late_events::text, 'NULL'),
                                           'a non-negative interval, e.g. ''1 day''');
  END IF;
  RETURN NEW;
END
$$;

COMMENT ON TRIGGER metrics_check ON experiment.metrics IS
  'an invalid aggregation, kind, delay, window, winsorize, winsorize_lower, cap_lower, cap_upper, cap_ignore_zeros, '
  'cuped_lookback or late_events is refused with a message naming the allowed values; '
  'the owner defaults to the current user, and only members of the owner role may register, change or delete a metric';

CREATE OR REPLACE FUNCTION experiment.validate_metric(metric text) RETURNS void
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
  columns text[];
BEGIN
  m := experiment.require_metric(validate_metric.metric);

  IF m.kind = 'ratio' THEN
    IF m.winsorize_lower IS NOT NULL OR m.cap_lower IS NOT NULL OR m.cap_upper IS NOT NULL THEN
      RAISE EXCEPTION 'ratio metric "%" cannot be capped (%)', m.name,
        concat_ws(', ', 'winsorize_lower = ' || m.winsorize_lower, 'cap_lower = ' || m.cap_lower, 'cap_upper = ' || m.cap_upper)
        USING ERRCODE = '22023',
              HINT = 'A ratio''s numerator and denominator are capped as metrics of their own: set the caps on them.';
    END IF;
    IF m.numerator IS NULL OR m.denominator IS NULL THEN
      RAISE EXCEPTION 'ratio metric "%" needs both numerator and denominator', m.name USING ERRCODE = '22023';
    END IF;
    IF m.source IS NOT NULL THEN
      RAISE EXCEPTION 'ratio metric "%" reads its numerator and denominator metrics, not a source', m.name
        USING ERRCODE = '22023', HINT = 'Set source to NULL.';
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
      USING ERRCODE = '22023', HINT = 'Set kind to ''ratio''.';
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
  columns := ARRAY(SELECT a.attname::text FROM pg_catalog.pg_attribute a
                   WHERE a.attrelid = m.source AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum);
  IF m.unit_column IS NULL OR m.time_column IS NULL THEN
    RAISE EXCEPTION 'metric "%" needs unit_column and time_column', m.name USING ERRCODE = '22023';
  END IF;

  t := experiment.column_type(m.source, m.unit_column);
  IF t IS NULL THEN
    RAISE EXCEPTION 'metric "%": column "%" does not exist in %', m.name, m.unit_column, m.source
      USING ERRCODE = '22023', HINT = experiment.hint_list(columns, format('columns of %s', m.source), m.source::text);
  END IF;
  SELECT typcategory INTO cat FROM pg_catalog.pg_type WHERE oid = t;
  IF NOT (cat = 'S' OR t IN ('int2'::regtype, 'int4'::regtype, 'int8'::regtype, 'uuid'::regtype)) THEN
    RAISE EXCEPTION 'metric "%": unit column "%" has type %, expected text, an integer or uuid', m.name, m.unit_column, t
      USING ERRCODE = '22023';
  END IF;

  t := experiment.column_type(m.source, m.time_column);
  IF t IS NULL THEN
    RAISE EXCEPTION 'metric "%": column "%" does not exist in %', m.name, m.time_column, m.source
      USING ERRCODE = '22023', HINT = experiment.hint_list(columns, format('columns of %s', m.source), m.source::text);
  END IF;
  IF t NOT IN ('timestamptz'::regtype, 'timestamp'::regtype, 'date'::regtype) THEN
    RAISE EXCEPTION 'metric "%": time column "%" has type %, expected timestamptz, timestamp or date', m.name, m.time_column, t
      USING ERRCODE = '22023';
  END IF;

  IF m.value_column IS NOT NULL THEN
    t := experiment.column_type(m.source, m.value_column);
    IF t IS NULL THEN
      RAISE EXCEPTION 'metric "%": column "%" does not exist in %', m.name, m.value_column, m.source
        USING ERRCODE = '22023', HINT = experiment.hint_list(columns, format('columns of %s', m.source), m.source::text);
    END IF;
    SELECT typcategory INTO cat FROM pg_catalog.pg_type WHERE oid = t;
    IF NOT (cat = 'N' OR t = 'boolean'::regtype) OR t IN ('oid'::regtype, 'regclass'::regtype) THEN
      RAISE EXCEPTION 'metric "%": value column "%" has type %, expected a number or boolean', m.name, m.value_column, t
        USING ERRCODE = '22023';
    END IF;
  END IF;

  -- the owner reads the source: it must be allowed to, and nothing in it may run code
  -- chosen by a less trusted role
  FOREACH part IN ARRAY ARRAY[m.unit_column, m.time_column, m.value_column] LOOP
    IF NOT experiment.role_may_read_column(m.owner, m.source, part) THEN
      RAISE EXCEPTION 'metric "%": its owner "%" may not read column "%" of %', m.name, m.owner, part, m.source
        USING ERRCODE = 'insufficient_privilege',
              DETAIL = 'A metric''s source is read as the metric''s owner.',
              HINT = format('GRANT SELECT ON %s TO %s, or register the metric as a role that may read it.',
                            m.source, quote_ident(m.owner::text));
    END IF;
  END LOOP;
  part := experiment.source_trust_problem(m.source, m.owner);
  IF part IS NOT NULL THEN
    RAISE EXCEPTION 'metric "%": source % cannot be read safely as its owner "%"', m.name, m.source, m.owner
      USING ERRCODE = 'insufficient_privilege', DETAIL = part || '.',
            HINT = 'Have that role (or a member of it) register the metric, so that the source is read as it, or let a role trusted by the owner own the object (doc/security.md).';
  END IF;

  IF m.kind = 'proportion' AND m.winsorize IS NOT NULL THEN
    RAISE EXCEPTION 'proportion metric "%" cannot be winsorized', m.name
      USING ERRCODE = '22023', HINT = 'Its per-unit values are 0 or 1: set winsorize to NULL.';
  END IF;
  IF m.kind = 'proportion' AND (m.winsorize_lower IS NOT NULL OR m.cap_lower IS NOT NULL OR m.cap_upper IS NOT NULL) THEN
    RAISE EXCEPTION 'proportion metric "%" cannot be capped (%)', m.name,
      concat_ws(', ', 'winsorize_lower = ' || m.winsorize_lower, 'cap_lower = ' || m.cap_lower, 'cap_upper = ' || m.cap_upper)
      USING ERRCODE = '22023', HINT = 'Its per-unit values are 0 or 1: set winsorize_lower, cap_lower and cap_upper to NULL.';
  END IF;
  IF m.kind = 'proportion' AND m.aggregation <> 'any' THEN
    RAISE EXCEPTION 'proportion metric "%" must use aggregation ''any'', not ''%''', m.name, m.aggregation
      USING ERRCODE = '22023', HINT = 'A proportion is the share of units converted at least once.';
  END IF;
END
$$;

ALTER TABLE experiment.variant_stats ADD COLUMN cap_lower float8;

COMMENT ON COLUMN experiment.variant_stats.cuped_moments IS
  'bivariate moments of (y, pre-period y) when the metric has a CUPED lookback; for ratio metrics 4-variable moments of (numerator, denominator, pre-period numerator, pre-period denominator)';

COMMENT ON COLUMN experiment.variant_stats.cap IS
  'upper cap applied to y, if any: the pooled winsorize percentile, the metric''s cap_upper, or the smaller of the two';

COMMENT ON COLUMN experiment.variant_stats.cap_lower IS
  'lower cap applied to y, if any: the pooled winsorize_lower percentile, the metric''s cap_lower, or the larger of the two';

ALTER TABLE experiment.metric_results
  DROP CONSTRAINT metric_results_method_check,
  ADD CONSTRAINT metric_results_method_check
    CHECK (method IN ('welch', 'prop_ztest', 'cuped', 'ratio', 'cuped_ratio'));

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

-- the method of a metric between two arms: ratio metrics by the delta method (adjusted by the
-- pre-period ratio where both arms have one: pre-period denominators and a pre-period that
-- varies), CUPED where both arms have a pre-period covariate that varies, else the proportion
-- or Welch test
CREATE OR REPLACE FUNCTION experiment.metric_method(kind text, c_cuped experiment.moments, t_cuped experiment.moments)
  RETURNS text
  LANGUAGE sql IMMUTABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
  SELECT CASE
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

COMMENT ON FUNCTION experiment.metric_method(text, experiment.moments, experiment.moments) IS
  'internal: the test method of a metric (ratio, cuped_ratio, cuped, prop_ztest or welch) from its kind and its arms'' CUPED moments';

-- the test of one metric between two arms: the one place where a metric's method (its
-- kind and whether it has a CUPED covariate) picks the estimator, and the experiment's
-- analysis the inference
CREATE OR REPLACE FUNCTION experiment.metric_test(method text, c experiment.moments, t experiment.moments,
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

-- the caps of one column of per-unit values (doc/analysis.md, "Winsorization"), from its
-- pooled percentiles and the metric's absolute caps (NULL: none on that side). The absolute
-- caps are hard bounds that a percentile cap can only tighten: the upper cap is the smaller of
-- the upper percentile and cap_upper, the lower cap the larger of the lower percentile and
-- cap_lower, and a percentile beyond the absolute cap of the other side is moved to it, so
-- that the lower cap is never above the upper one (cap_lower < cap_upper is checked); a NaN or
-- infinite argument is no cap
CREATE OR REPLACE FUNCTION experiment.effective_caps(pct_lower float8, pct_upper float8, cap_lower float8, cap_upper float8,
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
CREATE OR REPLACE FUNCTION experiment.capped_sql(prefix text, i integer, lower_cap float8, upper_cap float8,
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

-- drop the temporary tables of a refresh (they are also dropped at commit)
CREATE OR REPLACE FUNCTION experiment.drop_refresh_tables() RETURNS void
  LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
DECLARE
  t text;
BEGIN
  FOR t IN SELECT c.relname FROM pg_catalog.pg_class c
           WHERE c.relnamespace = pg_catalog.pg_my_temp_schema()
             AND c.relname IN ('exp_units', 'exp_vals', 'exp_base', 'exp_newx', 'exp_touch', 'exp_marks',
                               'exp_groups', 'exp_daily') LOOP
    EXECUTE format('DROP TABLE pg_temp.%I', t);
  END LOOP;
END
$$;

-- the base metrics (non-ratio) an experiment needs, numbered: pg_temp.exp_base (name, pre, i);
-- pre-period values for metrics analysed directly with a CUPED lookback, and for the parts of
-- a ratio metric with a CUPED lookback (each over its own lookback) when both parts have one
CREATE OR REPLACE FUNCTION experiment.create_base_table(e experiment.experiments) RETURNS void
  LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
BEGIN
  CREATE TEMP TABLE exp_base ON COMMIT DROP AS
    WITH direct AS (
      SELECT mm.* FROM experiment.experiment_metrics em JOIN experiment.metrics mm ON mm.name = em.metric
      WHERE em.experiment_id = e.id
    ), needed AS (
      SELECT d.name, d.kind <> 'ratio' AND d.cuped_lookback IS NOT NULL AS pre
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

-- the caps of each base metric's values v<i> and pre-period values p<i> over the units of
-- vals_from (doc/analysis.md, "Winsorization"): the pooled percentiles winsorize_lower and
-- winsorize (over the values that are not 0 with cap_ignore_zeros; the pre-period values at
-- percentiles of their own) combined with the absolute caps cap_lower and cap_upper by
-- experiment.effective_caps(); caps and lower_caps are the upper and lower caps of v<i>,
-- pre_caps and pre_lower_caps those of p<i> (NULL: no cap), capped and pre_capped the SQL of
-- the capped columns (experiment.capped_sql())
-- (new result columns)
DROP FUNCTION experiment.winsorization_caps(text);

CREATE OR REPLACE FUNCTION experiment.winsorization_caps(vals_from text,
    OUT caps float8[], OUT lower_caps float8[], OUT pre_caps float8[], OUT pre_lower_caps float8[],
    OUT capped text[], OUT pre_capped text[])
  LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
DECLARE
  pct_sql text;
  pick_sql text;
  -- pct[4i-3], pct[4i-2]: the lower and upper percentile of v<i>; pct[4i-1], pct[4i]: of p<i>
  pct float8[];
BEGIN
  -- one sort per column: percentile_cont of both fractions at once
  SELECT string_agg(format('percentile_cont(ARRAY[%L::float8, %L::float8]) WITHIN GROUP (ORDER BY v.%s)%s AS %s',
                           m2.winsorize_lower, m2.winsorize, c.col,
                           CASE WHEN m2.cap_ignore_zeros THEN format(' FILTER (WHERE v.%s <> 0)', c.col) ELSE '' END,
                           c.col), ', ' ORDER BY b.i, c.k) FILTER (WHERE c.pct),
         string_agg(CASE WHEN c.pct THEN format('q.%s[1], q.%s[2]', c.col, c.col) ELSE 'NULL, NULL' END,
                    ', ' ORDER BY b.i, c.k)
    INTO pct_sql, pick_sql
    FROM pg_temp.exp_base b JOIN experiment.metrics m2 ON m2.name = b.name
    CROSS JOIN LATERAL (VALUES (1, 'v' || b.i), (2, 'p' || b.i)) c0(k, col)
    CROSS JOIN LATERAL (SELECT c0.k, c0.col, (m2.winsorize IS NOT NULL OR m2.winsorize_lower IS NOT NULL)
                                             AND (c0.k = 1 OR b.pre) AS pct) c;
  -- (percentile_cont of no value, all zeros with cap_ignore_zeros, is NULL: no percentile cap)
  IF pct_sql IS NOT NULL THEN
    EXECUTE format('SELECT ARRAY[%s]::float8[] FROM (SELECT %s FROM %s v) q', pick_sql, pct_sql, vals_from) INTO pct;
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
-- (new result columns)
DROP FUNCTION experiment.prepare_unit_values(experiment.experiments, boolean, boolean);

CREATE OR REPLACE FUNCTION experiment.prepare_unit_values(e experiment.experiments, keep boolean, as_owner boolean,
    OUT vals_from text, OUT capped text[], OUT pre_capped text[], OUT nmulti bigint, OUT nunits bigint,
    OUT nearly bigint, OUT min_t0 timestamptz, OUT max_t0 timestamptz)
  LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
DECLARE
  sc experiment.source_scan;
  src_no integer := 0;
  joins text := '';
  vals_sql text;
  vals_cols text := '';
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
    joins := joins || format('%s %s x%s%s', CASE WHEN src_no = 1 THEN ',' ELSE ' JOIN' END,
      experiment.source_call_sql(sc, e.end_at, sc.lower_bound, sc.upper_bound, NULL, false, false),
      src_no, CASE WHEN src_no = 1 THEN '' ELSE format(' ON x%s.unit_id = x1.unit_id', src_no) END);
  END LOOP;

  -- per-unit values, zero-filled: one statement, one scan of each source
  IF src_no = 0 THEN
    vals_sql := 'SELECT u.unit_id, u.variant FROM pg_temp.exp_units u';
  ELSE
    vals_sql := format('SELECT x1.unit_id, x1.variant%s FROM %s%s',
                       vals_cols, experiment.unit_arrays_sql('pg_temp.exp_units u'), joins);
  END IF;

  -- caps: pooled percentiles over all analysed units (a second read of the values: they are kept)
  IF keep OR EXISTS (SELECT FROM pg_temp.exp_base b JOIN experiment.metrics m2 ON m2.name = b.name
                     WHERE m2.winsorize IS NOT NULL OR m2.winsorize_lower IS NOT NULL) THEN
    EXECUTE 'CREATE TEMP TABLE exp_vals ON COMMIT DROP AS ' || vals_sql;
    vals_from := 'pg_temp.exp_vals';
  ELSE
    vals_from := '(' || vals_sql || ')';
  END IF;
  SELECT w.capped, w.pre_capped INTO capped, pre_capped FROM experiment.winsorization_caps(vals_from) w;
END
$$;

COMMENT ON FUNCTION experiment.prepare_unit_values(experiment.experiments, boolean, boolean) IS
  'internal: the temporary tables of per-unit values that experiment.refresh() and experiment.aa_test() read, and the SQL of the capped values';

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
BEGIN
  e := experiment.require_experiment(refresh.experiment_id);
  IF refresh.full IS NULL THEN
    PERFORM experiment.raise_invalid_value('full', 'NULL', 'true (read every source in full) or false (incremental where it can)');
  END IF;
  -- one refresh of an experiment at a time
  PERFORM pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('experiment.refresh:' || e.id));

  PERFORM experiment.validate_experiment_metrics(e.id);
  SELECT v.name INTO control FROM experiment.variants v WHERE v.experiment_id = e.id AND v.is_control;
  IF control IS NULL THEN
    RAISE EXCEPTION 'experiment "%" has no control variant', e.id
      USING ERRCODE = '22023', HINT = 'Set is_control on one row of experiment.variants.';
  END IF;

  -- the stored state is replaced as a whole; in a REPEATABLE READ or SERIALIZABLE transaction
  -- whose snapshot predates another refresh's commit the rows to replace are invisible, and
  -- the conflict surfaces as a unique violation: reported as the serialization failure it is
  BEGIN
  -- the stored per-unit values, brought up to date (incrementally when they can be)
  SELECT * INTO uv FROM experiment.refresh_unit_values(e, refresh.full);
  vals_from := format('(SELECT * FROM experiment.%I v WHERE NOT v.multi)', uv.relation);
  -- the units by variant and day of first exposure, in one pass: counts, enrollment, days
  EXECUTE format('CREATE TEMP TABLE exp_groups ON COMMIT DROP AS '
                 'SELECT u.multi, CASE WHEN NOT u.multi THEN u.variant END AS variant, '
                 'CASE WHEN NOT u.multi THEN (u.t0 AT TIME ZONE ''UTC'')::date END AS day, '
                 'NOT u.multi AND u.t0 < %L::timestamptz AS early, count(*) AS units, '
                 'pg_catalog.min(u.t0) AS min_t0, pg_catalog.max(u.t0) AS max_t0 '
                 'FROM experiment.%I u GROUP BY 1, 2, 3, 4', e.start_at, uv.relation);
  SELECT coalesce(sum(g.units) FILTER (WHERE g.multi), 0), coalesce(sum(g.units) FILTER (WHERE NOT g.multi), 0),
         coalesce(sum(g.units) FILTER (WHERE g.early), 0),
         pg_catalog.min(g.min_t0) FILTER (WHERE NOT g.multi), pg_catalog.max(g.max_t0) FILTER (WHERE NOT g.multi)
    INTO nmulti, nunits, nearly, min_t0, max_t0
    FROM pg_temp.exp_groups g;
  -- caps, CUPED covariates and tests: from the stored values, no source is read again
  SELECT * INTO cp FROM experiment.winsorization_caps(vals_from);

    DELETE FROM experiment.variant_stats vs WHERE vs.experiment_id = e.id;
    DELETE FROM experiment.metric_results mr WHERE mr.experiment_id = e.id;
    DELETE FROM experiment.enrollment en WHERE en.experiment_id = e.id;

    FOR r IN SELECT m2.name, m2.kind, b.i, b.pre,
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
             ORDER BY m2.name LOOP
      IF r.kind = 'ratio' THEN
        aggs := aggs || format(', experiment.moments(%s, %s) AS a%s, pg_catalog.sum(v.s%s + v.s%s) AS k%s',
                               cp.capped[r.ni], cp.capped[r.di], r.j, r.ni, r.di, r.j);
        IF r.rpre THEN
          aggs := aggs || format(', experiment.moments(%s, %s, %s, %s) AS c%s',
                                 cp.capped[r.ni], cp.capped[r.di], cp.pre_capped[r.ni], cp.pre_capped[r.di], r.j);
        END IF;
        unpivot := unpivot || format(', (%L, a.a%s, %s, NULL::float8, NULL::float8, a.k%s)', r.name, r.j,
                                     CASE WHEN r.rpre THEN format('a.c%s', r.j) ELSE 'NULL::experiment.moments' END, r.j);
      ELSE
        aggs := aggs || format(', experiment.moments(%s) AS a%s, pg_catalog.sum(v.s%s) AS k%s',
                               cp.capped[r.i], r.j, r.i, r.j);
        IF r.pre THEN
          aggs := aggs || format(', experiment.moments(%s, %s) AS c%s', cp.capped[r.i], cp.pre_capped[r.i], r.j);
        END IF;
        unpivot := unpivot || format(', (%L, a.a%s, %s, %L::float8, %L::float8, a.k%s)', r.name, r.j,
                                     CASE WHEN r.pre THEN format('a.c%s', r.j) ELSE 'NULL::experiment.moments' END,
                                     cp.caps[r.i], cp.lower_caps[r.i], r.j);
      END IF;
    END LOOP;

    -- moments of every metric per variant and day of first exposure, in one pass over the
    -- per-unit values; merged, they are the per-variant moments (and, cumulatively by day,
    -- the results over time below)
    IF unpivot <> '' THEN
      EXECUTE format(
        'CREATE TEMP TABLE exp_daily ON COMMIT DROP AS '
        'SELECT k.metric, a.variant, a.day, a.units, k.m, k.c, k.cap, k.cap_lower, k.skipped '
        'FROM (SELECT v.variant, (v.t0 AT TIME ZONE ''UTC'')::date AS day, count(*) AS units%s '
        '      FROM %s v GROUP BY 1, 2) a '
        'CROSS JOIN LATERAL (VALUES %s) AS k(metric, m, c, cap, cap_lower, skipped)',
        aggs, vals_from, substr(unpivot, 3));
      INSERT INTO experiment.variant_stats (experiment_id, metric, variant, units, moments, cuped_moments, cap,
                                            cap_lower, skipped_values, refreshed_at)
      SELECT e.id, d.metric, d.variant, sum(d.units), experiment.merge(d.m), experiment.merge(d.c),
             pg_catalog.max(d.cap), pg_catalog.max(d.cap_lower), sum(d.skipped), ts
      FROM pg_temp.exp_daily d
      GROUP BY d.metric, d.variant;
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

    -- results over time: the per-day moments merged cumulatively, tested per day
    DELETE FROM experiment.results_daily rd WHERE rd.experiment_id = e.id;
    IF unpivot <> '' THEN
      INSERT INTO experiment.results_daily
        (experiment_id, metric, variant, day, control_variant, method, units_control, units_treatment,
         mean_control, mean_treatment, diff, diff_lower, diff_upper, lift, lift_lower, lift_upper, p_value,
         refreshed_at)
      WITH cum AS (
        SELECT d.metric, d.variant, d.day, sum(d.units) OVER w AS units,
               experiment.merge(d.m) OVER w AS m, experiment.merge(d.c) OVER w AS c
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
      CROSS JOIN LATERAL (SELECT experiment.metric_method(m3.kind, cc.c, ct.c) AS method) k
      CROSS JOIN LATERAL (SELECT experiment.metric_test(k.method, cc.m, ct.m, cc.c, ct.c, e.alpha, 'two-sided',
                                                        tuning) AS t) x
      WHERE mr.experiment_id = e.id;
    END IF;

    SELECT coalesce(jsonb_agg(jsonb_build_object('day', d.day, 'units', d.units) ORDER BY d.day), '[]')
      INTO by_day
      FROM (SELECT g.day, sum(g.units)::bigint AS units FROM pg_temp.exp_groups g WHERE NOT g.multi GROUP BY g.day) d;
    INSERT INTO experiment.refreshes AS f
      (experiment_id, refreshed_at, duration, enrolled_units, multi_variant_units, early_units,
       first_exposure, last_exposure, exposures_by_day, error, error_at, mode, full_reason)
    SELECT e.id, ts, clock_timestamp() - started, nunits, nmulti, nearly, min_t0, max_t0, by_day,
           NULL, NULL, uv.mode, uv.reason
    ON CONFLICT ON CONSTRAINT refreshes_pkey DO UPDATE SET
      refreshed_at = excluded.refreshed_at, duration = excluded.duration,
      enrolled_units = excluded.enrolled_units, multi_variant_units = excluded.multi_variant_units,
      early_units = excluded.early_units,
      first_exposure = excluded.first_exposure, last_exposure = excluded.last_exposure,
      exposures_by_day = excluded.exposures_by_day, error = NULL, error_at = NULL,
      mode = excluded.mode, full_reason = excluded.full_reason;
  EXCEPTION WHEN unique_violation THEN
    RAISE EXCEPTION 'could not refresh experiment "%": another refresh committed after this transaction''s snapshot', e.id
      USING ERRCODE = 'serialization_failure', DETAIL = SQLERRM,
            HINT = 'Retry the transaction, or refresh in a READ COMMITTED transaction.';
  END;

  PERFORM experiment.drop_refresh_tables();
END
$$;

-- ===========================================================================
-- A/A validation
-- ===========================================================================

CREATE OR REPLACE FUNCTION experiment.aa_test(experiment_id text, simulations integer DEFAULT 1000, seed integer DEFAULT 0)
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
                  (SELECT bd.i FROM pg_temp.exp_base bd WHERE bd.name = m2.denominator) AS di,
                  m2.cuped_lookback IS NOT NULL
                    AND coalesce((SELECT bn.pre FROM pg_temp.exp_base bn WHERE bn.name = m2.numerator), false)
                    AND coalesce((SELECT bd.pre FROM pg_temp.exp_base bd WHERE bd.name = m2.denominator), false) AS rpre
           FROM experiment.experiment_metrics em JOIN experiment.metrics m2 ON m2.name = em.metric
           LEFT JOIN pg_temp.exp_base b ON b.name = m2.name
           WHERE em.experiment_id = e.id ORDER BY m2.name LOOP
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

-- a one-line chart of a series: each value as one of eight block heights between the
-- series' least and greatest value (NULL: a space; a flat series: the middle height)
CREATE OR REPLACE FUNCTION experiment.sparkline(vals float8[]) RETURNS text
  LANGUAGE sql IMMUTABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
  SELECT string_agg(CASE WHEN v IS NULL OR NOT (abs(v) < 'Infinity'::float8) THEN ' '
                         WHEN hi = lo THEN '▄'
                         ELSE substr('▁▂▃▄▅▆▇█', 1 + least(7, floor((v - lo) / (hi - lo) * 8)::integer), 1) END,
                    '' ORDER BY k)
  FROM unnest(vals) WITH ORDINALITY AS u(v, k),
       (SELECT min(x) AS lo, max(x) AS hi FROM unnest(vals) x WHERE abs(x) < 'Infinity'::float8) b
$$;

COMMENT ON FUNCTION experiment.sparkline(float8[]) IS
  'a series as a one-line text chart of block characters ▁ to █, scaled between its least and greatest value';

-- ===========================================================================
-- The readout
-- ===========================================================================

CREATE OR REPLACE FUNCTION experiment.readout(experiment_id text) RETURNS text
  LANGUAGE plpgsql STABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
DECLARE
  ex experiment.experiments;
  h experiment.health;
  dec record;
  b record;
  control text;
  ntreat integer;
  lines text[] := '{}';
  line text;
  r record;
  days float8;
  g record;
  s record;
  sec_seen boolean := false;
  indent text;
BEGIN
  ex := experiment.require_experiment(readout.experiment_id);
  SELECT * INTO h FROM experiment.health h0 WHERE h0.experiment_id = ex.id;
  IF h.refreshed_at IS NULL THEN
    RAISE EXCEPTION 'experiment "%" has not been refreshed', ex.id
      USING ERRCODE = 'invalid_parameter_value', HINT = format('Run SELECT experiment.refresh(%L) first.', ex.id);
  END IF;
  SELECT v.name INTO control FROM experiment.variants v WHERE v.experiment_id = ex.id AND v.is_control;
  SELECT count(*) INTO ntreat FROM experiment.variants v WHERE v.experiment_id = ex.id AND NOT v.is_control;

  days := h.days_run;
  lines := lines || format('Experiment: %s   Duration: %s', ex.id,
    CASE WHEN days IS NULL THEN 'n/a'
         WHEN floor(days) = 1 THEN '1 day'
         ELSE floor(days)::bigint || ' days' END);

  SELECT string_agg(experiment.format_count(en.units) || ' ' || en.variant, ' / '
                    ORDER BY en.variant IS DISTINCT FROM control, en.variant)
    INTO line FROM experiment.enrollment en WHERE en.experiment_id = ex.id;
  lines := lines || format('Sample: %s   SRM %s %s (threshold 0.001)', line, experiment.format_p(h.srm_p_value),
                           CASE WHEN h.srm_ok THEN 'ok' WHEN h.srm_ok IS NULL THEN 'not computed' ELSE 'FAILED' END);
  IF NOT h.multi_variant_ok THEN
    lines := lines || format('Warning: %s%% of the units (%s) were exposed to several variants and are excluded',
                             round((h.multi_variant_share * 100)::numeric, 1),
                             experiment.format_count(h.multi_variant_units));
  END IF;
  -- every reason the decision is held back or invalid, each on its line
  FOR b IN SELECT * FROM experiment.decision_blockers(ex.id) LOOP
    lines := lines || format('%s: %s', CASE b.decision WHEN 'INVALID' THEN 'Invalid' ELSE 'Keep running' END, b.reason);
  END LOOP;
  lines := lines || format('Analysis: %s, alpha = %s%s', experiment.format_analysis(ex), ex.alpha,
    CASE WHEN ex.correction = 'none' OR ex.analysis = 'bayesian' THEN ''
         ELSE format(', %s correction of secondary metrics (family: %s)',
                     experiment.format_correction(ex.correction), ex.correction_family) END);
  IF ntreat > 1 THEN
    lines := lines || format('Comparisons: each of the %s treatments against %s at alpha = %s, %s',
                             ntreat, control, ex.alpha,
                             CASE WHEN ex.correction = 'none' OR ex.analysis = 'bayesian'
                                  THEN 'not corrected for multiple comparisons'
                                  ELSE format('the primary metric %s-corrected across the arms',
                                              experiment.format_correction(ex.correction)) END);
  END IF;

  -- primary, then secondary metrics; a line for every treatment, with or without a result
  FOR g IN SELECT em.metric, em.role FROM experiment.experiment_metrics em
           WHERE em.experiment_id = ex.id AND em.role IN ('primary', 'secondary')
           ORDER BY em.role = 'secondary', em.metric LOOP
    IF g.role = 'primary' THEN
      lines := lines || format('Primary metric (%s):', g.metric);
      indent := '  ';
    ELSE
      IF NOT sec_seen THEN
        lines := lines || 'Secondary metrics:'::text;
        sec_seen := true;
      END IF;
      lines := lines || format('  %s:', g.metric);
      indent := '    ';
    END IF;
    FOR r IN SELECT v.name AS variant, rr AS res, rr.p_value IS NOT NULL AS has_result,
                    EXISTS (SELECT 1 FROM experiment.variant_stats vs
                            WHERE vs.experiment_id = ex.id AND vs.metric = g.metric) AS refreshed,
                    coalesce(en.units, 0) AS units
             FROM experiment.variants v
             LEFT JOIN experiment.enrollment en ON en.experiment_id = v.experiment_id AND en.variant = v.name
             LEFT JOIN experiment.results rr ON rr.experiment_id = v.experiment_id AND rr.metric = g.metric
                                            AND rr.variant = v.name
             WHERE v.experiment_id = ex.id AND NOT v.is_control
             ORDER BY v.name LOOP
      IF r.has_result THEN
        lines := lines || (indent
          || experiment.readout_metric_line(r.res, upper(left(control, 1)) || substr(control, 2),
                                            upper(left(r.variant, 1)) || substr(r.variant, 2))
          || CASE (r.res).method WHEN 'cuped' THEN '   (CUPED)' WHEN 'ratio' THEN '   (delta method)'
                                 WHEN 'cuped_ratio' THEN '   (CUPED, delta method)' ELSE '' END);
      ELSE
        lines := lines || format('%s%s: no result (%s)', indent, upper(left(r.variant, 1)) || substr(r.variant, 2),
          CASE WHEN NOT experiment.may_read_metric(g.metric)
                 THEN format('hidden: role %s may not read its source', current_user)
               WHEN NOT r.refreshed THEN 'the metric was added after the latest refresh'
               WHEN r.units < 2 THEN format('%s has %s unit%s', r.variant, r.units, CASE WHEN r.units = 1 THEN '' ELSE 's' END)
               WHEN (SELECT en2.units FROM experiment.enrollment en2
                     WHERE en2.experiment_id = ex.id AND en2.variant = control) < 2
                 THEN format('%s has fewer than 2 units', control)
               ELSE 'the test is undefined: no variance in either variant' END);
      END IF;
    END LOOP;
    -- the primary metric's cumulative lift by day of first exposure (experiment.results_daily)
    IF g.role = 'primary' THEN
      FOR s IN SELECT rd.variant, array_agg(rd.lift ORDER BY rd.day) AS lifts, count(*) AS ndays,
                      (array_agg(rd.lift ORDER BY rd.day DESC))[1] AS lift,
                      (array_agg(rd.lift_lower ORDER BY rd.day DESC))[1] AS lo,
                      (array_agg(rd.lift_upper ORDER BY rd.day DESC))[1] AS hi
               FROM experiment.results_daily rd
               WHERE rd.experiment_id = ex.id AND rd.metric = g.metric
               GROUP BY rd.variant ORDER BY rd.variant LOOP
        CONTINUE WHEN s.ndays < 2 OR s.lift IS NULL;
        lines := lines || format('  Lift by day%s: %s  %s%% [%s%%, %s%%] (cumulative, %s days of first exposure)',
                                 CASE WHEN ntreat > 1 THEN ' (' || s.variant || ')' ELSE '' END,
                                 experiment.sparkline(s.lifts),
                                 CASE WHEN s.lift >= 0 THEN '+' ELSE '' END || experiment.format_percent(s.lift),
                                 CASE WHEN s.lo >= 0 THEN '+' ELSE '' END || experiment.format_percent(s.lo),
                                 CASE WHEN s.hi >= 0 THEN '+' ELSE '' END || experiment.format_percent(s.hi),
                                 s.ndays);
      END LOOP;
    END IF;
  END LOOP;

  SELECT string_agg(q.metric || ' ' || CASE WHEN NOT experiment.may_read_metric(q.metric) THEN 'hidden'
                                             WHEN q.statuses IS NULL THEN 'no result'
                                             WHEN 'failed' = ANY (q.statuses) THEN 'FAILED'
                                             WHEN 'inconclusive' = ANY (q.statuses)
                                               THEN format('inconclusive (harm bound %s%%, margin %s%%)',
                                                           experiment.format_percent(q.bound),
                                                           experiment.format_percent(q.margin))
                                             WHEN q.undefined THEN 'ok (no variance)' ELSE 'ok' END,
                    '   ' ORDER BY q.metric)
    INTO line
    FROM (SELECT em.metric, array_agg(rr.guardrail_status) FILTER (WHERE rr.guardrail_status IS NOT NULL) AS statuses,
                 pg_catalog.max(rr.harm_bound) AS bound, pg_catalog.max(em.non_inferiority_margin) AS margin,
                 bool_and(rr.p_value IS NULL) AS undefined
          FROM experiment.experiment_metrics em
          LEFT JOIN experiment.results rr ON rr.experiment_id = em.experiment_id AND rr.metric = em.metric
          WHERE em.experiment_id = ex.id AND em.role = 'guardrail'
          GROUP BY em.metric) q;
  lines := lines || ('Guardrails:  ' || coalesce(line, 'none'));

  SELECT * INTO dec FROM experiment.decision(ex.id);
  lines := lines || ('Decision: ' || dec.decision || ' (' || dec.reason || ')');
  RETURN array_to_string(lines, E'\n');
END
$$;

ALTER TABLE experiment.results_daily ENABLE ROW LEVEL SECURITY;

CREATE POLICY results_daily_readable ON experiment.results_daily FOR SELECT
  USING (experiment.may_read_metric(metric));

COMMENT ON POLICY results_daily_readable ON experiment.results_daily IS
  'a role sees the results over time of the metrics whose sources it may read';

-- results are as old as the metric definition they were computed from: when a metric is
-- deleted or reads something else, its stored results (and those of ratios of it) go, so
-- that a metric registered later under the same name cannot show them
CREATE OR REPLACE FUNCTION experiment.metrics_forget_results() RETURNS trigger
  LANGUAGE plpgsql SECURITY DEFINER
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
BEGIN
  IF TG_OP = 'TRUNCATE' THEN
    DELETE FROM experiment.metric_results;
    DELETE FROM experiment.variant_stats;
    DELETE FROM experiment.results_daily;
    RETURN NULL;
  END IF;
  IF TG_OP = 'UPDATE' AND (NEW.name, NEW.source, NEW.unit_column, NEW.time_column, NEW.value_column, NEW.owner,
                           NEW.numerator, NEW.denominator)
                          IS NOT DISTINCT FROM (OLD.name, OLD.source, OLD.unit_column, OLD.time_column,
                                                OLD.value_column, OLD.owner, OLD.numerator, OLD.denominator) THEN
    RETURN NULL;
  END IF;
  DELETE FROM experiment.metric_results r
   WHERE r.metric = OLD.name
      OR r.metric IN (SELECT m.name FROM experiment.metrics m WHERE OLD.name IN (m.numerator, m.denominator));
  DELETE FROM experiment.variant_stats v
   WHERE v.metric = OLD.name
      OR v.metric IN (SELECT m.name FROM experiment.metrics m WHERE OLD.name IN (m.numerator, m.denominator));
  DELETE FROM experiment.results_daily d
   WHERE d.metric = OLD.name
      OR d.metric IN (SELECT m.name FROM experiment.metrics m WHERE OLD.name IN (m.numerator, m.denominator));
  RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION experiment.experiment_metrics_forget_results() RETURNS trigger
  LANGUAGE plpgsql SECURITY DEFINER
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
BEGIN
  IF TG_OP = 'UPDATE' AND (NEW.experiment_id, NEW.metric) IS NOT DISTINCT FROM (OLD.experiment_id, OLD.metric) THEN
    RETURN NULL;
  END IF;
  DELETE FROM experiment.metric_results r WHERE r.experiment_id = OLD.experiment_id AND r.metric = OLD.metric;
  DELETE FROM experiment.variant_stats v WHERE v.experiment_id = OLD.experiment_id AND v.metric = OLD.metric;
  DELETE FROM experiment.results_daily d WHERE d.experiment_id = OLD.experiment_id AND d.metric = OLD.metric;
  RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION experiment.setup_roles() RETURNS TABLE (role text, created boolean)
  LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
DECLARE
  r text;
  t text;
  registry text[] := '{experiments,variants,metrics,experiment_metrics}';
  -- (refreshes without its error column: a source's error may quote its data; health shows
  -- the error to roles that may read every metric of the experiment)
  results text[] := '{enrollment,variant_stats,metric_results,results_daily,conclusions,results,srm,health}';
  ingestion text[] := '{exposures,exposures_quarantine,exposures_staging,kafka_offsets,kafka_dead_letters}';
BEGIN
  FOREACH r IN ARRAY ARRAY['experiment_reader', 'experiment_ingest', 'experiment_analyst', 'experiment_admin'] LOOP
    role := r;
    created := NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles ro WHERE ro.rolname = r);
    IF created THEN
      EXECUTE format('CREATE ROLE %I NOLOGIN', r);
    END IF;
    RETURN NEXT;
  END LOOP;

  -- experiment_reader: dashboards; the registry and the results it may read
  GRANT USAGE ON SCHEMA experiment TO experiment_reader;
  FOREACH t IN ARRAY registry || results LOOP
    EXECUTE format('GRANT SELECT ON experiment.%I TO experiment_reader', t);
  END LOOP;
  GRANT SELECT (experiment_id, refreshed_at, duration, enrolled_units, multi_variant_units, early_units,
                first_exposure, last_exposure, exposures_by_day, error_at, mode, full_reason)
    ON experiment.refreshes TO experiment_reader;

  -- experiment_ingest: the exposure pipeline
  GRANT USAGE ON SCHEMA experiment TO experiment_ingest;
  GRANT SELECT ON experiment.experiments, experiment.variants TO experiment_ingest;
  FOREACH t IN ARRAY ingestion LOOP
    EXECUTE format('GRANT SELECT, INSERT ON experiment.%I TO experiment_ingest', t);
  END LOOP;
  GRANT DELETE ON experiment.exposures_staging TO experiment_ingest;
  GRANT UPDATE ON experiment.kafka_offsets TO experiment_ingest;
  GRANT USAGE ON SEQUENCE experiment.exposures_quarantine_id_seq, experiment.kafka_dead_letters_id_seq
    TO experiment_ingest;

  -- experiment_analyst: designs experiments, registers metrics it may read, refreshes, concludes
  PERFORM experiment.grant_role_once('experiment_reader', 'experiment_analyst');
  FOREACH t IN ARRAY registry LOOP
    EXECUTE format('GRANT INSERT, UPDATE, DELETE ON experiment.%I TO experiment_analyst', t);
  END LOOP;
  GRANT SELECT ON experiment.exposures, experiment.exposures_quarantine TO experiment_analyst;
  GRANT INSERT ON experiment.conclusions TO experiment_analyst;
  GRANT USAGE ON SEQUENCE experiment.conclusions_id_seq TO experiment_analyst;
  GRANT EXECUTE ON FUNCTION experiment.refresh(text, boolean) TO experiment_analyst;

  -- experiment_admin: all of it, and the scheduled refresh_all(); TRUNCATE only where no
  -- row trigger guards the rows (truncating the catalogue would skip the owners' checks)
  PERFORM experiment.grant_role_once('experiment_analyst', 'experiment_admin');
  PERFORM experiment.grant_role_once('experiment_ingest', 'experiment_admin');
  FOREACH t IN ARRAY registry || ingestion LOOP
    EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON experiment.%I TO experiment_admin', t);
  END LOOP;
  FOREACH t IN ARRAY ingestion LOOP
    EXECUTE format('GRANT TRUNCATE ON experiment.%I TO experiment_admin', t);
  END LOOP;
  GRANT EXECUTE ON FUNCTION experiment.refresh_all() TO experiment_admin;
  GRANT SELECT ON experiment.source_watermarks TO experiment_admin;
END
$$;

CREATE TABLE experiment.kafka_offsets (
  consumer_group text NOT NULL,
  topic text NOT NULL,
  partition integer NOT NULL,
  next_offset bigint NOT NULL,
  high_watermark bigint,
  updated_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
  CONSTRAINT kafka_offsets_pkey PRIMARY KEY (consumer_group, topic, partition),
  CONSTRAINT kafka_offsets_next_offset_check CHECK (next_offset >= 0)
);

COMMENT ON TABLE experiment.kafka_offsets IS
  'the next Kafka offset to read per consumer group, topic and partition: written in the transaction that stores the messages before it';

COMMENT ON COLUMN experiment.kafka_offsets.high_watermark IS
  'the partition''s end offset as the consumer last saw it: high_watermark - next_offset is the lag';

SELECT pg_catalog.pg_extension_config_dump('experiment.kafka_offsets', '');

CREATE TABLE experiment.kafka_dead_letters (
  id bigserial PRIMARY KEY,
  received_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
  target text NOT NULL,
  reason text NOT NULL,
  kafka_topic text,
  kafka_partition integer,
  kafka_offset bigint,
  payload text NOT NULL
);

COMMENT ON TABLE experiment.kafka_dead_letters IS
  'metric event messages that could not be stored in their table (not JSON, a missing field, a value the column refuses), with the reason and where they came from';

COMMENT ON COLUMN experiment.kafka_dead_letters.target IS 'the table the message was meant for';

CREATE UNIQUE INDEX kafka_dead_letters_position_key ON experiment.kafka_dead_letters
  (target, kafka_topic, kafka_partition, kafka_offset);

COMMENT ON INDEX experiment.kafka_dead_letters_position_key IS
  'a message is dead-lettered once per table, however often it is read';

SELECT pg_catalog.pg_extension_config_dump('experiment.kafka_dead_letters', '');

SELECT pg_catalog.pg_extension_config_dump('experiment.kafka_dead_letters_id_seq', '');

COMMENT ON SEQUENCE experiment.kafka_dead_letters_id_seq IS 'ids of dead-lettered metric event messages';

-- arrays of one batch: all given, all as long as the first, no NULL where none may be
CREATE OR REPLACE FUNCTION experiment.check_message_arrays(topics text[], partitions integer[],
  offsets bigint[], payloads text[]) RETURNS integer
  LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
DECLARE
  n integer := coalesce(cardinality(payloads), -1);
BEGIN
  IF topics IS NULL OR partitions IS NULL OR offsets IS NULL OR payloads IS NULL THEN
    RAISE EXCEPTION 'topics, partitions, offsets and payloads must not be NULL' USING ERRCODE = '22023';
  END IF;
  IF cardinality(topics) <> n OR cardinality(partitions) <> n OR cardinality(offsets) <> n THEN
    RAISE EXCEPTION 'topics, partitions, offsets and payloads must have the same length, got %, %, % and %',
      cardinality(topics), cardinality(partitions), cardinality(offsets), n USING ERRCODE = '22023';
  END IF;
  IF array_position(topics, NULL) IS NOT NULL OR array_position(partitions, NULL) IS NOT NULL
     OR array_position(offsets, NULL) IS NOT NULL OR array_position(payloads, NULL) IS NOT NULL THEN
    RAISE EXCEPTION 'topics, partitions, offsets and payloads must not contain NULL' USING ERRCODE = '22023';
  END IF;
  RETURN n;
END
$$;

COMMENT ON FUNCTION experiment.check_message_arrays(text[], integer[], bigint[], text[]) IS
  'internal: the number of messages of a batch, after checking that its arrays are given, of one length and without NULL';

CREATE OR REPLACE FUNCTION experiment.ingest_exposure_messages(topics text[], partitions integer[],
  offsets bigint[], payloads text[],
  OUT inserted bigint, OUT duplicates bigint, OUT quarantined bigint)
  LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
BEGIN
  PERFORM experiment.check_message_arrays(topics, partitions, offsets, payloads);
  SELECT s.inserted, s.duplicates, s.quarantined INTO inserted, duplicates, quarantined
  FROM experiment.store_exposures(
         ARRAY(SELECT experiment.try_jsonb(p) FROM unnest(payloads) WITH ORDINALITY AS u(p, ord) ORDER BY u.ord),
         payloads, topics, partitions, offsets) AS s;
END
$$;

COMMENT ON FUNCTION experiment.ingest_exposure_messages(text[], integer[], bigint[], text[]) IS
  'store a batch of Kafka messages holding exposures (JSON objects as for ingest_exposures), idempotently; '
  'messages that are not JSON or not valid exposures go to the quarantine with their topic, partition and offset';

-- The column list and value expressions that put a JSON object's fields into target's columns.
CREATE OR REPLACE FUNCTION experiment.event_columns(target regclass, columns text[], fields text[],
  OUT column_list text, OUT value_list text)
  LANGUAGE plpgsql STABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
DECLARE
  i integer;
  att record;
  path text;
BEGIN
  IF target IS NULL THEN
    RAISE EXCEPTION 'target must not be NULL' USING ERRCODE = '22023';
  END IF;
  IF columns IS NULL OR fields IS NULL OR cardinality(columns) = 0
     OR cardinality(columns) <> cardinality(fields) THEN
    RAISE EXCEPTION 'columns and fields must be non-empty arrays of the same length, got % and %',
      coalesce(cardinality(columns)::text, 'NULL'), coalesce(cardinality(fields)::text, 'NULL')
      USING ERRCODE = '22023';
  END IF;
  FOR i IN 1 .. cardinality(columns) LOOP
    IF columns[i] IS NULL OR fields[i] IS NULL OR fields[i] = '' THEN
      RAISE EXCEPTION 'columns[%] and fields[%] must be given (a column of % and the JSON field that fills it)',
        i, i, target USING ERRCODE = '22023';
    END IF;
    SELECT a.attnum, a.atttypid, a.atttypmod, a.attgenerated INTO att
    FROM pg_catalog.pg_attribute a
    WHERE a.attrelid = target AND a.attname = columns[i] AND a.attnum > 0 AND NOT a.attisdropped;
    IF NOT FOUND THEN
      RAISE EXCEPTION 'column "%" of relation % does not exist', columns[i], target
        USING ERRCODE = 'undefined_column';
    END IF;
    IF att.attgenerated <> '' THEN
      RAISE EXCEPTION 'column "%" of relation % is a generated column: it cannot be filled from a message',
        columns[i], target USING ERRCODE = '22023';
    END IF;
    IF array_position(columns[1:i - 1], columns[i]) IS NOT NULL THEN
      RAISE EXCEPTION 'column "%" is given twice', columns[i] USING ERRCODE = '22023';
    END IF;
    path := quote_literal(string_to_array(fields[i], '.')::text);
    column_list := concat_ws(', ', column_list, quote_ident(columns[i]));
    -- json and jsonb columns take the field's JSON value, other types its text, as COPY would;
    -- a JSON null is SQL NULL in both. The cast is to the type without its modifier: the
    -- INSERT's assignment then checks it (an explicit cast would cut a varchar(n) silently)
    value_list := concat_ws(', ', value_list,
      CASE WHEN att.atttypid IN ('json'::regtype, 'jsonb'::regtype)
           THEN format('nullif(m.j #> %s::text[], ''null''::jsonb)::%s', path, format_type(att.atttypid, NULL))
           ELSE format('(m.j #>> %s::text[])::%s', path, format_type(att.atttypid, NULL)) END);
  END LOOP;
END
$$;

COMMENT ON FUNCTION experiment.event_columns(regclass, text[], text[]) IS
  'internal: for ingest_event_messages, the quoted column list of target and the expressions that read each column''s JSON field (a dotted path) from m.j';

CREATE OR REPLACE FUNCTION experiment.ingest_event_messages(target regclass, columns text[], fields text[],
  topics text[], partitions integer[], offsets bigint[], payloads text[],
  OUT inserted bigint, OUT duplicates bigint, OUT dead_lettered bigint)
  LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
DECLARE
  n integer;
  cols record;
  items jsonb[];
  reasons text[];
  sql text;
  c bigint;
  i integer;
BEGIN
  n := experiment.check_message_arrays(topics, partitions, offsets, payloads);
  SELECT * INTO cols FROM experiment.event_columns(target, columns, fields);
  IF (SELECT c.relkind FROM pg_catalog.pg_class c WHERE c.oid = target) NOT IN ('r', 'p') THEN
    RAISE EXCEPTION '% is not a table', target USING ERRCODE = 'wrong_object_type';
  END IF;
  IF NOT has_table_privilege(target, 'INSERT')
     AND EXISTS (SELECT FROM unnest(columns) AS col(name) WHERE NOT has_column_privilege(target, col.name, 'INSERT')) THEN
    RAISE EXCEPTION 'permission denied for table %', target USING ERRCODE = 'insufficient_privilege',
      HINT = 'The role that ingests metric events needs INSERT on their table (or on the mapped columns).';
  END IF;
  inserted := 0; duplicates := 0; dead_lettered := 0;
  IF n = 0 THEN
    RETURN;
  END IF;

  -- what can be told without the table: not JSON, not an object, a field missing
  SELECT array_agg(s.j ORDER BY s.ord),
         array_agg(CASE WHEN s.j IS NULL THEN 'not JSON'
                        WHEN jsonb_typeof(s.j) <> 'object' THEN 'not a JSON object'
                        ELSE (SELECT 'missing field ' || f FROM unnest(fields) WITH ORDINALITY AS x(f, k)
                              WHERE s.j #> string_to_array(f, '.') IS NULL ORDER BY x.k LIMIT 1) END
                   ORDER BY s.ord)
  INTO items, reasons
  FROM (SELECT u.ord, experiment.try_jsonb(u.p) AS j FROM unnest(payloads) WITH ORDINALITY AS u(p, ord)) AS s;

  INSERT INTO experiment.kafka_dead_letters (target, reason, kafka_topic, kafka_partition, kafka_offset, payload)
  SELECT target::text, r.reason, r.topic, r.part, r.off, r.payload
  FROM unnest(reasons, topics, partitions, offsets, payloads) AS r(reason, topic, part, off, payload)
  WHERE r.reason IS NOT NULL
  -- a message read again (a replay) is kept once, at its position
  ON CONFLICT DO NOTHING;
  dead_lettered := (SELECT count(*) FROM unnest(reasons) r WHERE r IS NOT NULL);

  -- the rest in one statement; when a value is refused, row by row to find which
  sql := format('INSERT INTO %s (%s) SELECT %s FROM unnest($1::jsonb[], $2::text[]) AS m(j, reason) '
                'WHERE m.reason IS NULL ON CONFLICT DO NOTHING', target, cols.column_list, cols.value_list);
  BEGIN
    EXECUTE sql USING items, reasons;
    GET DIAGNOSTICS c = ROW_COUNT;
    inserted := c;
  EXCEPTION WHEN data_exception OR integrity_constraint_violation THEN
    sql := format('INSERT INTO %s (%s) SELECT %s FROM (SELECT $1::jsonb AS j) AS m ON CONFLICT DO NOTHING',
                  target, cols.column_list, cols.value_list);
    FOR i IN 1 .. n LOOP
      CONTINUE WHEN reasons[i] IS NOT NULL;
      BEGIN
        EXECUTE sql USING items[i];
        GET DIAGNOSTICS c = ROW_COUNT;
        inserted := inserted + c;
      EXCEPTION WHEN data_exception OR integrity_constraint_violation THEN
        reasons[i] := SQLERRM;
        INSERT INTO experiment.kafka_dead_letters (target, reason, kafka_topic, kafka_partition, kafka_offset, payload)
        VALUES (target::text, SQLERRM, topics[i], partitions[i], offsets[i], payloads[i])
        ON CONFLICT DO NOTHING;
        dead_lettered := dead_lettered + 1;
      END;
    END LOOP;
  END;
  duplicates := n - dead_lettered - inserted;
END
$$;

COMMENT ON FUNCTION experiment.ingest_event_messages(regclass, text[], text[], text[], integer[], bigint[], text[]) IS
  'store a batch of Kafka messages holding metric events in target: each of columns from the JSON field of the same position '
  '(a dotted path), converted as COPY converts text; duplicates by target''s unique constraints count once; '
  'messages that cannot be stored go to experiment.kafka_dead_letters with the reason';

CREATE OR REPLACE FUNCTION experiment.kafka_advance_offsets(consumer_group text, topics text[], partitions integer[],
  expected bigint[], next_offsets bigint[], high_watermarks bigint[] DEFAULT NULL) RETURNS void
  LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
DECLARE
  r record;
  stored bigint;
BEGIN
  IF consumer_group IS NULL OR topics IS NULL OR partitions IS NULL OR expected IS NULL OR next_offsets IS NULL THEN
    RAISE EXCEPTION 'consumer_group, topics, partitions, expected and next_offsets must not be NULL'
      USING ERRCODE = '22023';
  END IF;
  IF cardinality(partitions) <> cardinality(topics) OR cardinality(expected) <> cardinality(topics)
     OR cardinality(next_offsets) <> cardinality(topics)
     OR cardinality(coalesce(high_watermarks, next_offsets)) <> cardinality(topics) THEN
    RAISE EXCEPTION 'topics, partitions, expected, next_offsets and high_watermarks must have the same length'
      USING ERRCODE = '22023';
  END IF;
  -- a fixed order: consumers of overlapping partitions wait for each other instead of deadlocking
  FOR r IN SELECT u.topic, u.part, u.expected, u.next, u.high
           FROM unnest(topics, partitions, expected, next_offsets, high_watermarks) AS u(topic, part, expected, next, high)
           ORDER BY u.topic, u.part LOOP
    IF r.topic IS NULL OR r.part IS NULL OR r.next IS NULL OR r.next < coalesce(r.expected, 0) THEN
      RAISE EXCEPTION 'offsets of topic %, partition %: next offset % is missing or before the expected %',
        r.topic, r.part, r.next, r.expected USING ERRCODE = '22023';
    END IF;
    IF r.expected IS NULL THEN
      INSERT INTO experiment.kafka_offsets AS o (consumer_group, topic, partition, next_offset, high_watermark)
      VALUES (kafka_advance_offsets.consumer_group, r.topic, r.part, r.next, r.high)
      ON CONFLICT DO NOTHING;
    ELSE
      UPDATE experiment.kafka_offsets AS o
      SET next_offset = r.next, high_watermark = coalesce(r.high, o.high_watermark), updated_at = now()
      WHERE o.consumer_group = kafka_advance_offsets.consumer_group AND o.topic = r.topic
        AND o.partition = r.part AND o.next_offset = r.expected;
    END IF;
    IF NOT FOUND THEN
      SELECT o.next_offset INTO stored FROM experiment.kafka_offsets o
      WHERE o.consumer_group = kafka_advance_offsets.consumer_group AND o.topic = r.topic AND o.partition = r.part;
      RAISE EXCEPTION 'offsets of group %, topic %, partition % moved: expected %, stored %',
        kafka_advance_offsets.consumer_group, r.topic, r.part,
        coalesce(r.expected::text, 'none'), coalesce(stored::text, 'none')
        USING ERRCODE = 'serialization_failure',
              HINT = 'Another consumer stored these messages; read again from the stored offset.';
    END IF;
  END LOOP;
END
$$;

COMMENT ON FUNCTION experiment.kafka_advance_offsets(text, text[], integer[], bigint[], bigint[], bigint[]) IS
  'move the stored next offsets of a consumer group from expected (NULL: none stored yet) to next_offsets, '
  'or fail with 40001 when another consumer moved them first; called in the transaction that stores the messages';

ALTER FUNCTION experiment.refresh(text, boolean) SECURITY DEFINER;
