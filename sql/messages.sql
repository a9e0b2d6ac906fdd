-- Error messages echo at most 200 bytes of an input (cut on a character
-- boundary, "..." appended), however large the input
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS experiment;
RESET client_min_messages;

-- SQLSTATE, octet lengths of message and detail, and the last characters of each
CREATE FUNCTION pg_temp.echo(q text)
  RETURNS TABLE (sqlstate text, message_bytes integer, message_tail text,
                 detail_bytes integer, detail_tail text)
  LANGUAGE plpgsql AS $$
DECLARE
  m text;
  d text;
  s text;
BEGIN
  EXECUTE q;
  RETURN QUERY SELECT 'no error'::text, NULL::integer, NULL::text, NULL::integer, NULL::text;
EXCEPTION WHEN OTHERS THEN
  GET STACKED DIAGNOSTICS s = RETURNED_SQLSTATE, m = MESSAGE_TEXT, d = PG_EXCEPTION_DETAIL;
  RETURN QUERY SELECT s, octet_length(m), right(m, 6), octet_length(d), right(d, 6);
END $$;

-- a 1 MB input
CREATE TEMP TABLE big AS SELECT repeat('x', 1000000) AS s, repeat('é', 500000) AS u;

SELECT * FROM pg_temp.echo($$SELECT experiment.eval_condition(to_jsonb((SELECT s FROM big)), '{}')$$);
SELECT * FROM pg_temp.echo($$SELECT experiment.eval_condition('{}', to_jsonb(ARRAY[(SELECT s FROM big)]))$$);
SELECT * FROM pg_temp.echo($$SELECT experiment.welch_ttest(experiment.moments_from_sums(3, 6, 14), experiment.moments_from_sums(3, 6, 14), 0.05, (SELECT s FROM big))$$);
SELECT * FROM pg_temp.echo($$SELECT experiment.p_adjust('{0.1}'::float8[], (SELECT s FROM big))$$);
SELECT * FROM pg_temp.echo($$SELECT experiment.unit_hash((SELECT s FROM big), 'salt', 'u1')$$);
SELECT * FROM pg_temp.echo($$SELECT experiment.assign_variant('u1', 'e1', ARRAY[(SELECT s FROM big), (SELECT s FROM big)], '{0.5,0.5}')$$);
SELECT * FROM pg_temp.echo($$SELECT experiment.assign_variant('u1', 'e1', jsonb_build_array(jsonb_build_object('name', (SELECT s FROM big), 'allocation', 2)))$$);

-- multibyte text is cut between characters: 'é' is 2 bytes, 200 bytes hold 100 of them
SELECT * FROM pg_temp.echo($$SELECT experiment.unit_hash((SELECT u FROM big), 'salt', 'u1')$$);
SELECT * FROM pg_temp.echo($$SELECT experiment.unit_hash('x' || (SELECT u FROM big), 'salt', 'u1')$$);
-- short inputs are echoed whole
SELECT * FROM pg_temp.echo($$SELECT experiment.unit_hash('md6', 'salt', 'u1')$$);
SELECT experiment.unit_hash('x' || repeat('é', 100), 'salt', 'u1');
SELECT * FROM pg_temp.echo($$SELECT experiment.unit_hash('x' || repeat('é', 99), 'salt', 'u1')$$);

-- text input of experiment.moments and the registry's SQL functions
SELECT * FROM pg_temp.echo($$SELECT (SELECT s FROM big)::experiment.moments$$);
SELECT * FROM pg_temp.echo($$SELECT ('{"version":1,"n":' || (SELECT s FROM big) || '}')::experiment.moments$$);
SELECT * FROM pg_temp.echo($$SELECT (SELECT u FROM big)::experiment.moments$$);
SELECT * FROM pg_temp.echo($$SELECT experiment.log_exposure((SELECT s FROM big), 'u', 'v')$$);
SELECT * FROM pg_temp.echo($$SELECT experiment.refresh((SELECT s FROM big))$$);
SELECT * FROM pg_temp.echo($$SELECT experiment.assign('u', (SELECT s FROM big))$$);
SELECT * FROM pg_temp.echo($$SELECT experiment.validate_metric((SELECT s FROM big))$$);
SELECT * FROM pg_temp.echo($$SELECT experiment.source_unit_values('{u}', '{a}', '{2025-01-01}', 'pg_class', (SELECT s FROM big),
  '{}', '{}', '{}', '{}', '{}', '{}', NULL, NULL, NULL)$$);
SELECT * FROM pg_temp.echo($$SELECT * FROM experiment.source_unit_values(ARRAY[(SELECT s FROM big), (SELECT s FROM big)],
  '{a,a}', '{2025-01-01,2025-01-01}', 'pg_class', 'relname', '{}', '{}', '{}', '{}', '{}', '{}', NULL, NULL, NULL)$$);
