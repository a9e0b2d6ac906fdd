-- test/regress_support.sql: helpers shared by the pg_regress files, in schema
-- regress_support. A test includes it quietly with
--   \set ECHO none
--   \i test/regress_support.sql
--   \set ECHO all
-- (pg_regress runs psql from the project root).
SET client_min_messages = warning;
CREATE SCHEMA IF NOT EXISTS regress_support;
RESET client_min_messages;

-- SQLSTATE and message of a statement, or 'no error'
CREATE OR REPLACE FUNCTION regress_support.err(q text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
  EXECUTE q;
  RETURN 'no error';
EXCEPTION WHEN OTHERS THEN
  RETURN SQLSTATE || ': ' || SQLERRM;
END $$;

-- SQLSTATE, message and HINT of a statement, or 'no error'
CREATE OR REPLACE FUNCTION regress_support.err_hint(q text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
  h text;
BEGIN
  EXECUTE q;
  RETURN 'no error';
EXCEPTION WHEN OTHERS THEN
  GET STACKED DIAGNOSTICS h = PG_EXCEPTION_HINT;
  RETURN SQLSTATE || ': ' || SQLERRM || coalesce(nullif(' HINT: ' || h, ' HINT: '), '');
END $$;

-- a test_result with its values rounded, for deterministic output
CREATE OR REPLACE FUNCTION regress_support.r(t experiment.test_result)
RETURNS TABLE (n_control bigint, n_treatment bigint, mean_control numeric, mean_treatment numeric,
               diff numeric, diff_lower numeric, diff_upper numeric, lift numeric,
               lift_lower numeric, lift_upper numeric, statistic numeric, df numeric,
               p_value numeric, lift_p_value numeric)
LANGUAGE sql AS $$
  SELECT t.n_control, t.n_treatment, round(t.mean_control::numeric, 10),
         round(t.mean_treatment::numeric, 10), round(t.diff::numeric, 10),
         round(t.diff_lower::numeric, 10), round(t.diff_upper::numeric, 10),
         round(t.lift::numeric, 10), round(t.lift_lower::numeric, 10),
         round(t.lift_upper::numeric, 10), round(t.statistic::numeric, 10),
         round(t.df::numeric, 10), round(t.p_value::numeric, 12), round(t.lift_p_value::numeric, 12)
$$;
