-- ---------------------------------------------------------------------------
-- Kafka ingestion: what experiment-kafka-sink writes through (doc/kafka.md).
-- Each batch of messages and the offsets it consumed are written in one transaction,
-- so a message redelivered by Kafka takes effect once.
-- ---------------------------------------------------------------------------

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
CREATE FUNCTION experiment.check_message_arrays(topics text[], partitions integer[],
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

CREATE FUNCTION experiment.ingest_exposure_messages(topics text[], partitions integer[],
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
CREATE FUNCTION experiment.event_columns(target regclass, columns text[], fields text[],
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

CREATE FUNCTION experiment.ingest_event_messages(target regclass, columns text[], fields text[],
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

CREATE FUNCTION experiment.kafka_advance_offsets(consumer_group text, topics text[], partitions integer[],
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
