-- ---------------------------------------------------------------------------
-- Exposures: the deduplicated exposure log, bulk and staged ingestion, the quarantine
-- (doc/analysis.md)
-- ---------------------------------------------------------------------------

-- an exposure outside these years is a broken clock or a placeholder, never analysable
CREATE FUNCTION experiment.exposed_at_valid(t timestamptz) RETURNS boolean
  LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
  SELECT t >= '1970-01-01 00:00:00+00'::timestamptz AND t < '2200-01-01 00:00:00+00'::timestamptz
$$;
COMMENT ON FUNCTION experiment.exposed_at_valid(timestamptz) IS
  'internal: whether an exposure time is storable: from 1970-01-01 up to 2200-01-01 (UTC)';

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
    REFERENCES experiment.variants (experiment_id, name),
  CONSTRAINT exposures_exposed_at_check CHECK (experiment.exposed_at_valid(exposed_at))
);
COMMENT ON TABLE experiment.exposures IS
  'exposures of units to variants, deduplicated: the same (experiment, unit, variant, time) or the same event_id is stored once';
COMMENT ON COLUMN experiment.exposures.event_id IS
  'optional id of the delivered event; a redelivery with the same id counts once';
COMMENT ON COLUMN experiment.exposures.received_at IS 'when the row was stored';
COMMENT ON COLUMN experiment.exposures.exposed_at IS 'when the unit was exposed: from 1970 up to the year 2200 (exclusive)';
-- exposures stored after an experiment's latest refresh (experiment.health, experiment.decision)
CREATE INDEX exposures_received_at_idx ON experiment.exposures (experiment_id, received_at);
SELECT pg_catalog.pg_extension_config_dump('experiment.exposures', '');

CREATE TABLE experiment.exposures_quarantine (
  id bigserial PRIMARY KEY,
  received_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
  reason text NOT NULL,
  experiment_id text,
  unit_id text,
  variant text,
  event_id text,
  payload jsonb NOT NULL,
  kafka_topic text,
  kafka_partition integer,
  kafka_offset bigint
);
COMMENT ON TABLE experiment.exposures_quarantine IS
  'bulk-loaded exposures that could not be stored (unknown experiment or variant, missing or invalid fields), with the reason';
COMMENT ON COLUMN experiment.exposures_quarantine.payload IS
  'the exposure as delivered; a message that was not JSON is kept as a JSON string of its text';
CREATE UNIQUE INDEX exposures_quarantine_kafka_position_key ON experiment.exposures_quarantine
  (kafka_topic, kafka_partition, kafka_offset) WHERE kafka_topic IS NOT NULL;
COMMENT ON INDEX experiment.exposures_quarantine_kafka_position_key IS
  'a Kafka message is quarantined once, however often it is read';
COMMENT ON COLUMN experiment.exposures_quarantine.kafka_offset IS
  'where a Kafka message came from (experiment-kafka-sink, doc/kafka.md): topic, partition and offset; NULL for other loads';
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
  'internal: the text as timestamptz, or NULL when it is not a valid timestamp (used by bulk ingestion to quarantine bad rows)';

-- text to jsonb, NULL when the text is not JSON that jsonb can store
CREATE FUNCTION experiment.try_jsonb(value text) RETURNS jsonb
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
  IF NOT experiment.exposed_at_valid(log_exposure.exposed_at) THEN
    RAISE EXCEPTION 'exposed_at % is out of range', log_exposure.exposed_at
      USING ERRCODE = 'datetime_field_overflow',
            HINT = 'Exposures are stored from 1970-01-01 up to 2200-01-01 (UTC).';
  END IF;
  PERFORM experiment.require_variant(log_exposure.experiment_id, log_exposure.variant);
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

-- The ingestion of exposures, shared by ingest_exposures() and ingest_exposure_messages():
-- items[i] is the parsed exposure, or NULL when texts[i] was not JSON; topics, partitions and
-- offsets (NULL, or as long as items) say where Kafka messages came from.
CREATE FUNCTION experiment.store_exposures(items jsonb[], texts text[],
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
  SELECT s.inserted, s.duplicates, s.quarantined INTO inserted, duplicates, quarantined
  FROM experiment.store_exposures(
         ARRAY(SELECT r.value FROM jsonb_array_elements(rows) WITH ORDINALITY AS r ORDER BY r.ordinality),
         NULL, NULL, NULL, NULL) AS s;
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

