-- experiment.moments text I/O at the edges: the full range of n, exact
-- integers, strict JSON, each key once, signed zero, shortest exact floats,
-- and counts that would overflow when merged
CREATE EXTENSION IF NOT EXISTS experiment;
SET extra_float_digits = 0;
-- the SQLSTATE and the detail (or else the message) of a statement's error, or 'ok'
CREATE FUNCTION pg_temp.outcome(q text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
  detail text;
BEGIN
  EXECUTE q;
  RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
  GET STACKED DIAGNOSTICS detail = PG_EXCEPTION_DETAIL;
  RETURN SQLSTATE || ': ' || coalesce(nullif(detail, ''), SQLERRM);
END $$;
CREATE FUNCTION pg_temp.m1(n text, mean text DEFAULT '1', c text DEFAULT '0') RETURNS text
  LANGUAGE sql AS $$ SELECT '{"version":1,"n":' || n || ',"mean":[' || mean || '],"comoment":[[' || c || ']]}' $$;

-- n is read as an exact integer over the whole range the type holds
SELECT m::text, experiment.n(m)
  FROM (SELECT pg_temp.m1('9223372036854775807')::experiment.moments AS m) s;
SELECT m::text, experiment.n(m) = 9007199254740993 AS exact
  FROM (SELECT pg_temp.m1('9007199254740993')::experiment.moments AS m) s;
SELECT experiment.n(pg_temp.m1('9223372036854775806')::experiment.moments)
       - experiment.n(pg_temp.m1('9223372036854775805')::experiment.moments) AS one;
SELECT pg_temp.m1('9223372036854775808')::experiment.moments;
SELECT pg_temp.m1('99999999999999999999999')::experiment.moments;

-- n is digits only: no sign (not even -0), fraction, exponent, hex or leading zero
SELECT v, pg_temp.outcome(format('SELECT %L::experiment.moments', pg_temp.m1(v))) AS outcome
  FROM unnest(ARRAY['-0', '-1', '+1', '1.0', '1e3', '1E0', '0x10', '01', '00', '""', 'null', '1 2']) v;

-- merging up to INT64_MAX works and reads back; one more is 22003
SELECT experiment.n(a OPERATOR(experiment.+) b) AS n, (a OPERATOR(experiment.+) b)::text
  FROM (SELECT pg_temp.m1('9223372036854775800', '2')::experiment.moments AS a,
               pg_temp.m1('7', '2')::experiment.moments AS b) s;
SELECT (a OPERATOR(experiment.+) b)::text::experiment.moments OPERATOR(experiment.=) (a OPERATOR(experiment.+) b) AS roundtrip
  FROM (SELECT pg_temp.m1('9223372036854775800', '2')::experiment.moments AS a,
               pg_temp.m1('7', '3')::experiment.moments AS b) s;
SELECT pg_temp.outcome(q) AS overflow
  FROM unnest(ARRAY[
    format('SELECT %L::experiment.moments OPERATOR(experiment.+) %L::experiment.moments',
           pg_temp.m1('9223372036854775807'), pg_temp.m1('1')),
    format('SELECT experiment.merge(m) FROM (VALUES (%L::experiment.moments), (%L)) v(m)',
           pg_temp.m1('9223372036854775000'), pg_temp.m1('808')),
    format('SELECT experiment.moments_combine(%L, %L)', pg_temp.m1('4611686018427387904'),
           pg_temp.m1('4611686018427387904')),
    format('SELECT experiment.moments_accum(%L::experiment.moments, 1::float8)',
           pg_temp.m1('9223372036854775807')),
    format('SELECT experiment.moments_accum(%L::experiment.moments, 1::float8, 2::float8)',
           '{"version":1,"n":9223372036854775807,"mean":[1,2],"comoment":[[0,0],[0,0]]}'),
    format('SELECT experiment.moments_pair_accum(ARRAY[%L, %L]::experiment.moments[], true, 1::float8)',
           pg_temp.m1('1'), pg_temp.m1('9223372036854775807')),
    format('SELECT experiment.moments_pair_combine(ARRAY[%L, %L]::experiment.moments[], ARRAY[%L, %L]::experiment.moments[])',
           pg_temp.m1('1'), pg_temp.m1('9223372036854775807'), pg_temp.m1('1'), pg_temp.m1('1'))
  ]) q;
-- in parallel too: a partial state near the limit merged with more rows
CREATE TEMP TABLE near_limit AS
  SELECT pg_temp.m1('9223372036854775000')::experiment.moments AS m FROM generate_series(1, 2);
SELECT pg_temp.outcome('SELECT experiment.merge(m) FROM near_limit') AS merge_two_halves;

-- strict JSON numbers in the float fields
SELECT v, pg_temp.outcome(format('SELECT %L::experiment.moments', pg_temp.m1('5', v))) AS outcome
  FROM unnest(ARRAY['.5', '5.', '+1', '0x10', '01', '1e', '1e+', '-', '--1', 'Infinity', '-Infinity',
                    'NaN', '1e999', '-1e999', '1e-400', '0e-400', '1E5', '-2.5e-3', '1,']) v;

-- each key exactly once, written literally; JSON whitespace only
SELECT q, pg_temp.outcome(format('SELECT %L::experiment.moments', q)) AS outcome
  FROM unnest(ARRAY[
    '{"version":1,"version":1,"n":1,"mean":[1],"comoment":[[0]]}',
    '{"version":-5,"version":1,"n":1,"mean":[1],"comoment":[[0]]}',
    '{"version":1,"n":1,"mean":[1],"mean":[1],"comoment":[[0]]}',
    '{"version":1,"n":1,"mean":[1],"comoment":[[0]],"comoment":[[0]]}',
    '{"version":1,"\u006e":1,"mean":[1],"comoment":[[0]]}',
    '{"version":1,"nn":1,"mean":[1],"comoment":[[0]]}',
    '{"version":1,"":1,"mean":[1],"comoment":[[0]]}',
    '{"version":1,"n":1,"mean":[1],"comoment":[[0]],}',
    '{"version":1,"n":1,"mean":[1,],"comoment":[[0]]}',
    '{"version":1.0,"n":1,"mean":[1],"comoment":[[0]]}',
    '{"version":1,"n":1,"mean":[1],"comoment":[[0]]' || chr(11) || '}',
    '{"version":1,"n":1,"mean":[1],"comoment":[[0]]' || chr(12) || '}',
    E'{\t"version":1,\r\n"n":1,"mean":[1],"comoment":[[0]] }'
  ]) q;

-- floats: shortest exact decimal, independent of extra_float_digits; -0 keeps its sign
SET extra_float_digits = -15;
SELECT pg_temp.m1('2', '0.1', '0.30000000000000004')::experiment.moments;
SELECT pg_temp.m1('2', '5e-324', '1.7976931348623157e+308')::experiment.moments;
SELECT pg_temp.m1('2', '-0', '-0')::experiment.moments;
SELECT pg_temp.m1('0', '-0', '-0')::experiment.moments AS empty_with_negative_zero;
RESET extra_float_digits;
-- bit for bit: the doubles read back equal what float8 itself reads
SELECT v, float8send(experiment.mean(m)) = float8send(v::float8) AS mean_bits,
       m::text::experiment.moments::text = m::text AS text_fixed_point
  FROM unnest(ARRAY['0.1', '-0', '5e-324', '-5e-324', '2.2250738585072014e-308', '1.7976931348623157e+308',
                    '-1.7976931348623157e+308', '0.30000000000000004', '123456789012345680000',
                    '3.141592653589793', '1e-300']) v,
       LATERAL (SELECT pg_temp.m1('2', v)::experiment.moments AS m) s;
-- computed values round-trip too (1/3, sqrt(2) and their co-moments)
SELECT count(*) FILTER (WHERE m::text::experiment.moments OPERATOR(experiment.=) m
                          AND m::text::experiment.moments::text = m::text) AS roundtrip,
       count(*) AS total
  FROM (SELECT experiment.moments(1.0 / g, sqrt(g::float8), g * 1e100, g * 1e-100) AS m
          FROM generate_series(1, 50) g GROUP BY g % 7) s;
