-- ---------------------------------------------------------------------------
-- Post-stratification: the two-arm tests with per-stratum estimates combined
-- by the strata's shares of all units (src/poststrat.c; doc/statistics.md,
-- "Post-stratification")
-- ---------------------------------------------------------------------------

CREATE FUNCTION experiment.poststrat_ttest(method text, control experiment.moments[], treatment experiment.moments[],
                                           alpha float8 DEFAULT 0.05, alternative text DEFAULT 'two-sided',
                                           sequential_tuning float8 DEFAULT NULL)
  RETURNS experiment.test_result
  AS 'MODULE_PATHNAME', 'exp_poststrat_ttest' LANGUAGE C IMMUTABLE PARALLEL SAFE;
COMMENT ON FUNCTION experiment.poststrat_ttest(text, experiment.moments[], experiment.moments[], float8, text, float8) IS
  'post-stratified test: control[k], treatment[k] are the moments of stratum k in each arm (NULL: no units); '
  'method welch, prop_ztest, cuped (theta per stratum), ratio or cuped_ratio with the moments of metric_test; '
  'per-stratum estimates weighted by the strata''s shares of all units, strata without an estimate of their own '
  'merged into the largest; alternative and sequential_tuning as in welch_ttest';

-- the aggregate form over rows of (stratum, arm, moments), e.g. stored per-stratum moments:
-- the rows of one stratum and arm are merged, the strata ordered by name (NULL: a stratum of
-- its own, last), then poststrat_ttest at alpha = 0.05
CREATE TYPE experiment.poststrat_state AS (
  method text,
  strata text[],
  control experiment.moments[],
  treatment experiment.moments[]
);
COMMENT ON TYPE experiment.poststrat_state IS
  'internal: state of the poststrat_ttest aggregate: the method and, per stratum, the merged moments of each arm';

CREATE FUNCTION experiment.poststrat_accum(s experiment.poststrat_state, method text, stratum text,
                                           is_treatment boolean, m experiment.moments)
  RETURNS experiment.poststrat_state
  LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
DECLARE
  i integer;
BEGIN
  IF s IS NULL THEN
    s := ROW(method, '{}'::text[], '{}'::experiment.moments[], '{}'::experiment.moments[])::experiment.poststrat_state;
  ELSIF s.method IS DISTINCT FROM method THEN
    RAISE EXCEPTION 'method of the poststrat_ttest aggregate must be the same in every row, got "%" and "%"',
      left(s.method, 200), left(method, 200)
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  IF is_treatment IS NULL OR m IS NULL THEN
    RETURN s;
  END IF;
  i := array_position(s.strata, stratum);
  IF i IS NULL THEN
    s.strata := s.strata || stratum;
    s.control := s.control || CASE WHEN is_treatment THEN NULL ELSE m END;
    s.treatment := s.treatment || CASE WHEN is_treatment THEN m END;
  ELSIF is_treatment THEN
    s.treatment[i] := CASE WHEN s.treatment[i] IS NULL THEN m ELSE s.treatment[i] OPERATOR(experiment.+) m END;
  ELSE
    s.control[i] := CASE WHEN s.control[i] IS NULL THEN m ELSE s.control[i] OPERATOR(experiment.+) m END;
  END IF;
  RETURN s;
END $$;
COMMENT ON FUNCTION experiment.poststrat_accum(experiment.poststrat_state, text, text, boolean, experiment.moments) IS
  'internal: transition function of the poststrat_ttest aggregate: merges the row''s moments into its stratum and arm';

CREATE FUNCTION experiment.poststrat_combine(a experiment.poststrat_state, b experiment.poststrat_state)
  RETURNS experiment.poststrat_state
  LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
DECLARE
  j integer;
BEGIN
  IF a IS NULL THEN
    RETURN b;
  ELSIF b IS NULL THEN
    RETURN a;
  END IF;
  FOR j IN 1 .. coalesce(array_length(b.strata, 1), 0) LOOP
    IF b.control[j] IS NOT NULL THEN
      a := experiment.poststrat_accum(a, b.method, b.strata[j], false, b.control[j]);
    END IF;
    IF b.treatment[j] IS NOT NULL THEN
      a := experiment.poststrat_accum(a, b.method, b.strata[j], true, b.treatment[j]);
    END IF;
  END LOOP;
  IF a.method IS DISTINCT FROM b.method THEN
    PERFORM experiment.poststrat_accum(a, b.method, NULL, NULL, NULL);
  END IF;
  RETURN a;
END $$;
COMMENT ON FUNCTION experiment.poststrat_combine(experiment.poststrat_state, experiment.poststrat_state) IS
  'internal: combine function of the poststrat_ttest aggregate: merges the strata of two partial states';

CREATE FUNCTION experiment.poststrat_final(s experiment.poststrat_state)
  RETURNS experiment.test_result
  LANGUAGE sql IMMUTABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
  SELECT CASE WHEN cardinality(s.strata) > 0 THEN experiment.poststrat_ttest(s.method, u.c, u.t) END
    FROM (SELECT array_agg(x.c ORDER BY x.stratum NULLS LAST) AS c, array_agg(x.t ORDER BY x.stratum NULLS LAST) AS t
            FROM unnest(s.strata, s.control, s.treatment) x(stratum, c, t)) u
$$;
COMMENT ON FUNCTION experiment.poststrat_final(experiment.poststrat_state) IS
  'internal: final function of the poststrat_ttest aggregate: poststrat_ttest of the strata ordered by name';

CREATE AGGREGATE experiment.poststrat_ttest(method text, stratum text, is_treatment boolean, m experiment.moments) (
  SFUNC = experiment.poststrat_accum,
  STYPE = experiment.poststrat_state,
  COMBINEFUNC = experiment.poststrat_combine,
  FINALFUNC = experiment.poststrat_final,
  PARALLEL = SAFE
);
COMMENT ON AGGREGATE experiment.poststrat_ttest(text, text, boolean, experiment.moments) IS
  'poststrat_ttest (alpha = 0.05) over rows of (stratum, is_treatment, moments): the rows of a stratum and arm merged, '
  'strata ordered by name (NULL: a stratum of its own); rows with a NULL is_treatment or moments are skipped, no rows gives NULL';
