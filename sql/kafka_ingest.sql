-- The SQL side of experiment-kafka-sink (doc/kafka.md): Kafka messages of exposures and of
-- metric events, the quarantine and dead letters with their positions, the stored offsets.
\set VERBOSITY terse
SET client_min_messages = warning;
SELECT experiment.create_experiment('kafka-x', '[{"name": "control", "allocation": 0.5}, {"name": "treatment", "allocation": 0.5}]');

-- exposures: stored once, bad messages quarantined with topic, partition and offset
SELECT * FROM experiment.ingest_exposure_messages('{x,x,x,x,x,x}', '{0,0,1,1,2,2}', '{0,1,0,1,0,1}', ARRAY[
  '{"experiment_id": "kafka-x", "unit_id": "u1", "variant": "control", "exposed_at": "2026-01-01T00:00:00Z", "event_id": "a"}',
  '{"experiment_id": "kafka-x", "unit_id": "u1", "variant": "control", "exposed_at": "2026-01-01T00:00:00Z", "event_id": "a"}',
  '{"experiment_id": "kafka-x", "unit_id": "u2", "variant": "treatment", "exposed_at": "2026-01-01T01:00:00Z"}',
  'not json{',
  '"a string"',
  '{"experiment_id": "kafka-x", "unit_id": "u3", "variant": "purple", "exposed_at": "2026-01-01T00:00:00Z"}']);
SELECT unit_id, variant, event_id FROM experiment.exposures WHERE experiment_id = 'kafka-x' ORDER BY unit_id;
SELECT reason, kafka_topic, kafka_partition, kafka_offset, payload FROM experiment.exposures_quarantine
WHERE kafka_topic = 'x' ORDER BY kafka_partition, kafka_offset;
-- a redelivery of the whole batch changes nothing but the counts
SELECT * FROM experiment.ingest_exposure_messages('{x}', '{0}', '{0}', ARRAY[
  '{"experiment_id": "kafka-x", "unit_id": "u1", "variant": "control", "exposed_at": "2026-01-01T00:00:00Z", "event_id": "a"}']);
-- a replay of the whole batch: every message counted again, the quarantine keeps each one once
SELECT * FROM experiment.ingest_exposure_messages('{x,x,x,x,x,x}', '{0,0,1,1,2,2}', '{0,1,0,1,0,1}', ARRAY[
  '{"experiment_id": "kafka-x", "unit_id": "u1", "variant": "control", "exposed_at": "2026-01-01T00:00:00Z", "event_id": "a"}',
  '{"experiment_id": "kafka-x", "unit_id": "u1", "variant": "control", "exposed_at": "2026-01-01T00:00:00Z", "event_id": "a"}',
  '{"experiment_id": "kafka-x", "unit_id": "u2", "variant": "treatment", "exposed_at": "2026-01-01T01:00:00Z"}',
  'not json{',
  '"a string"',
  '{"experiment_id": "kafka-x", "unit_id": "u3", "variant": "purple", "exposed_at": "2026-01-01T00:00:00Z"}']);
SELECT count(*) AS quarantined_rows FROM experiment.exposures_quarantine WHERE kafka_topic = 'x';
-- ingest_exposures() is unchanged: no position
SELECT * FROM experiment.ingest_exposures('[7]');
SELECT reason, kafka_topic IS NULL AS no_topic FROM experiment.exposures_quarantine WHERE payload = '7';
-- the arrays of a batch
SELECT experiment.ingest_exposure_messages('{x}', '{0}', '{0}', NULL);
SELECT experiment.ingest_exposure_messages('{x,x}', '{0}', '{0}', '{a}');
SELECT experiment.ingest_exposure_messages('{x}', '{NULL}', '{0}', '{a}');
SELECT * FROM experiment.ingest_exposure_messages('{}', '{}', '{}', '{}');

-- metric events: a JSON field per column, converted as COPY converts text
CREATE TABLE kafka_orders (event_id text PRIMARY KEY, user_id text NOT NULL, ordered_at timestamptz NOT NULL,
                           amount numeric CHECK (amount >= 0), meta jsonb, n int GENERATED ALWAYS AS (1) STORED);
SELECT * FROM experiment.ingest_event_messages('kafka_orders', '{event_id,user_id,ordered_at,amount,meta}',
  '{id,user,at,order.amount,meta}', '{o,o,o,o,o,o,o,o,o}', '{0,0,0,0,0,0,0,0,0}', '{0,1,2,3,4,5,6,7,8}', ARRAY[
  '{"id": "e1", "user": "u1", "at": "2026-01-02T00:00:00Z", "order": {"amount": 12.30}, "meta": {"a": 1}}',
  '{"id": "e1", "user": "u1", "at": "2026-01-02T00:00:00Z", "order": {"amount": 12.30}, "meta": {"a": 1}}',
  '{"id": "e2", "user": "u2", "at": "2026-01-02T00:00:00Z", "order": {"amount": 1e2}, "meta": null}',
  '{"id": "e3", "user": "u3", "at": "never", "order": {"amount": 1}, "meta": null}',
  '{"id": "e4", "user": "u4", "at": "2026-01-02T00:00:00Z", "order": {"amount": -1}, "meta": null}',
  '{"id": "e5", "user": null, "at": "2026-01-02T00:00:00Z", "order": {"amount": 1}, "meta": null}',
  '{"id": "e6", "user": "u6", "at": "2026-01-02T00:00:00Z", "meta": null}',
  '[1]',
  '{"id": "e8", "user": "u8", "at": "2026-01-02T00:00:00Z", "order": {"amount": "7.5"}, "meta": [1, "x"]}']);
SELECT event_id, user_id, ordered_at, amount, meta FROM kafka_orders ORDER BY event_id;
SELECT target, reason, kafka_offset, payload FROM experiment.kafka_dead_letters ORDER BY kafka_offset;
-- read again: counted again, kept once
SELECT * FROM experiment.ingest_event_messages('kafka_orders', '{event_id,user_id,ordered_at,amount,meta}',
  '{id,user,at,order.amount,meta}', '{o,o,o}', '{0,0,0}', '{3,6,7}', ARRAY[
  '{"id": "e3", "user": "u3", "at": "never", "order": {"amount": 1}, "meta": null}',
  '{"id": "e6", "user": "u6", "at": "2026-01-02T00:00:00Z", "meta": null}',
  '[1]']);
SELECT count(*) AS dead_letter_rows FROM experiment.kafka_dead_letters;
-- the table, its columns and the privilege are checked (an empty batch checks only them)
SELECT * FROM experiment.ingest_event_messages('kafka_orders', '{event_id}', '{id}', '{}', '{}', '{}', '{}');
SELECT experiment.ingest_event_messages('kafka_orders', '{event_id,nope}', '{id,x}', '{}', '{}', '{}', '{}');
SELECT experiment.ingest_event_messages('kafka_orders', '{event_id,n}', '{id,n}', '{}', '{}', '{}', '{}');
SELECT experiment.ingest_event_messages('kafka_orders', '{event_id,event_id}', '{id,id2}', '{}', '{}', '{}', '{}');
SELECT experiment.ingest_event_messages('kafka_orders', '{event_id,user_id}', '{id}', '{}', '{}', '{}', '{}');
SELECT experiment.ingest_event_messages('kafka_orders', '{event_id}', '{""}', '{}', '{}', '{}', '{}');
SELECT experiment.ingest_event_messages(NULL, '{event_id}', '{id}', '{}', '{}', '{}', '{}');
CREATE VIEW kafka_orders_v AS SELECT * FROM kafka_orders;
SELECT experiment.ingest_event_messages('kafka_orders_v', '{event_id}', '{id}', '{}', '{}', '{}', '{}');
CREATE ROLE kafka_regress_reader;
GRANT USAGE ON SCHEMA experiment TO kafka_regress_reader;
SET ROLE kafka_regress_reader;
SELECT experiment.ingest_event_messages('kafka_orders', '{event_id}', '{id}', '{}', '{}', '{}', '{}');
RESET ROLE;
-- INSERT on the mapped columns is enough
GRANT INSERT (event_id, user_id) ON kafka_orders TO kafka_regress_reader;
SET ROLE kafka_regress_reader;
SELECT * FROM experiment.ingest_event_messages('kafka_orders', '{event_id,user_id}', '{id,user}', '{}', '{}', '{}', '{}');
SELECT experiment.ingest_event_messages('kafka_orders', '{event_id,amount}', '{id,x}', '{}', '{}', '{}', '{}');
RESET ROLE;
REVOKE INSERT (event_id, user_id) ON kafka_orders FROM kafka_regress_reader;

-- offsets: moved from the expected value, or 40001 when another consumer moved them
SELECT experiment.kafka_advance_offsets('g', '{o,o}', '{1,0}', '{NULL,NULL}', '{4,9}', '{10,9}');
SELECT experiment.kafka_advance_offsets('g', '{o}', '{0}', '{9}', '{12}', '{14}');
SELECT topic, partition, next_offset, high_watermark, high_watermark - next_offset AS lag
FROM experiment.kafka_offsets WHERE consumer_group = 'g' ORDER BY partition;
SELECT experiment.kafka_advance_offsets('g', '{o}', '{0}', '{9}', '{15}');
SELECT experiment.kafka_advance_offsets('g', '{o}', '{1}', '{NULL}', '{15}');
SELECT experiment.kafka_advance_offsets('g', '{o}', '{0}', '{12}', '{11}');
SELECT experiment.kafka_advance_offsets('g', '{o,o}', '{0}', '{12}', '{13}');
SELECT experiment.kafka_advance_offsets(NULL, '{o}', '{0}', '{12}', '{13}');
SELECT next_offset FROM experiment.kafka_offsets WHERE consumer_group = 'g' AND partition = 0;

-- a value too long for its column is dead-lettered, not cut (as COPY refuses it)
CREATE TABLE kafka_codes (code varchar(3), amount numeric(6,2));
SELECT * FROM experiment.ingest_event_messages('kafka_codes', '{code,amount}', '{code,amount}', '{c,c}', '{0,0}', '{0,1}',
  ARRAY['{"code": "abc", "amount": 1.005}', '{"code": "abcdef", "amount": 2}']);
SELECT * FROM kafka_codes;
SELECT reason FROM experiment.kafka_dead_letters WHERE target = 'public.kafka_codes';
DROP TABLE kafka_codes;
DROP VIEW kafka_orders_v;
DROP TABLE kafka_orders;
REVOKE USAGE ON SCHEMA experiment FROM kafka_regress_reader;
DROP ROLE kafka_regress_reader;
DELETE FROM experiment.kafka_offsets;
DELETE FROM experiment.kafka_dead_letters;
DELETE FROM experiment.exposures_quarantine;
DELETE FROM experiment.exposures WHERE experiment_id = 'kafka-x';
DELETE FROM experiment.experiments WHERE id = 'kafka-x';
