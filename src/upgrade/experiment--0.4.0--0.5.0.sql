-- experiment 0.4.0 -> 0.5.0 (ALTER EXTENSION experiment UPDATE; doc/operations.md#upgrading)
--
-- Quantiles: type experiment.sketch (DDSketch) with its aggregates, functions and operators,
-- quantile_test(); quantile metrics: metrics.quantile and quantile_level, aggregation
-- 'quantile', variant_stats.sketch, method 'quantile' of metric_results, source_unit_values()
-- with aggregation 'sketch' and a sketches result column.
-- Post-stratification: poststrat_ttest(), experiments.stratify_by, metric_results.stratified_by.
-- Dimension breakdowns: experiment.dimensions, dimension_enrollment, dimension_stats,
-- dimension_results (row-level security as metric_results), results_by_dimension,
-- srm_by_dimension, the dimensional imbalance in health and readout().
-- Bounded-memory refresh: experiment.refresh_memory, refreshes.unit_partitions.
-- Designs (doc/designs.md): cluster-randomised and switchback experiments, holdouts, bandits,
-- factorial experiments, interaction detection.
-- test/test_upgrade.py checks that the result equals a fresh 0.5.0 install.
\echo Use "ALTER EXTENSION experiment UPDATE TO '0.5.0'" to load this file. \quit

CREATE TYPE experiment.sketch;

CREATE OR REPLACE FUNCTION experiment.sketch_in(cstring) RETURNS experiment.sketch
  AS 'MODULE_PATHNAME', 'exp_sketch_in' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

CREATE OR REPLACE FUNCTION experiment.sketch_out(experiment.sketch) RETURNS cstring
  AS 'MODULE_PATHNAME', 'exp_sketch_out' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

CREATE OR REPLACE FUNCTION experiment.sketch_recv(internal) RETURNS experiment.sketch
  AS 'MODULE_PATHNAME', 'exp_sketch_recv' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

CREATE OR REPLACE FUNCTION experiment.sketch_send(experiment.sketch) RETURNS bytea
  AS 'MODULE_PATHNAME', 'exp_sketch_send' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

CREATE TYPE experiment.sketch (
  INPUT = experiment.sketch_in,
  OUTPUT = experiment.sketch_out,
  RECEIVE = experiment.sketch_recv,
  SEND = experiment.sketch_send,
  INTERNALLENGTH = VARIABLE,
  ALIGNMENT = double,
  STORAGE = extended
);

COMMENT ON TYPE experiment.sketch IS
  'Mergeable quantile sketch (DDSketch, relative accuracy 0.005, at most 2048 bins per sign; text form is JSON)';

COMMENT ON FUNCTION experiment.sketch_in(cstring) IS 'internal: text input of experiment.sketch (validated)';

COMMENT ON FUNCTION experiment.sketch_out(experiment.sketch) IS 'internal: text output of experiment.sketch (exact)';

COMMENT ON FUNCTION experiment.sketch_recv(internal) IS 'internal: binary input of experiment.sketch (validated)';

COMMENT ON FUNCTION experiment.sketch_send(experiment.sketch) IS 'internal: binary output of experiment.sketch';

-- equality and merge

CREATE OR REPLACE FUNCTION experiment.sketch_eq(experiment.sketch, experiment.sketch) RETURNS boolean
  AS 'MODULE_PATHNAME', 'exp_sketch_eq' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

COMMENT ON FUNCTION experiment.sketch_eq(experiment.sketch, experiment.sketch) IS
  'internal: true when both hold the same bins, counts, min and max';

CREATE OR REPLACE FUNCTION experiment.sketch_ne(experiment.sketch, experiment.sketch) RETURNS boolean
  AS 'MODULE_PATHNAME', 'exp_sketch_ne' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

COMMENT ON FUNCTION experiment.sketch_ne(experiment.sketch, experiment.sketch) IS
  'internal: negation of sketch_eq';

CREATE OR REPLACE FUNCTION experiment.sketch_merge(a experiment.sketch, b experiment.sketch) RETURNS experiment.sketch
  AS 'MODULE_PATHNAME', 'exp_sketch_merge' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

COMMENT ON FUNCTION experiment.sketch_merge(experiment.sketch, experiment.sketch) IS
  'the sketch of the union of both samples (exact: equal, bin for bin, to the sketch of all the values); also operator +';

CREATE OPERATOR experiment.= (
  LEFTARG = experiment.sketch, RIGHTARG = experiment.sketch,
  FUNCTION = experiment.sketch_eq,
  COMMUTATOR = OPERATOR(experiment.=), NEGATOR = OPERATOR(experiment.<>),
  RESTRICT = eqsel, JOIN = eqjoinsel
);

COMMENT ON OPERATOR experiment.= (experiment.sketch, experiment.sketch) IS 'exactly equal sketches';

CREATE OPERATOR experiment.<> (
  LEFTARG = experiment.sketch, RIGHTARG = experiment.sketch,
  FUNCTION = experiment.sketch_ne,
  COMMUTATOR = OPERATOR(experiment.<>), NEGATOR = OPERATOR(experiment.=),
  RESTRICT = neqsel, JOIN = neqjoinsel
);

COMMENT ON OPERATOR experiment.<> (experiment.sketch, experiment.sketch) IS 'sketches that differ';

CREATE OPERATOR experiment.+ (
  LEFTARG = experiment.sketch, RIGHTARG = experiment.sketch,
  FUNCTION = experiment.sketch_merge, COMMUTATOR = OPERATOR(experiment.+)
);

COMMENT ON OPERATOR experiment.+ (experiment.sketch, experiment.sketch) IS 'merge two sketches';

-- accessors

CREATE OR REPLACE FUNCTION experiment.n(s experiment.sketch) RETURNS bigint
  AS 'MODULE_PATHNAME', 'exp_sketch_n_fn' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

COMMENT ON FUNCTION experiment.n(experiment.sketch) IS 'number of values in the sketch';

CREATE OR REPLACE FUNCTION experiment.quantile(s experiment.sketch, q float8) RETURNS float8
  AS 'MODULE_PATHNAME', 'exp_sketch_quantile_fn' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

COMMENT ON FUNCTION experiment.quantile(experiment.sketch, float8) IS
  'quantile of probability q in [0, 1]: the value of rank floor(q (n - 1)) of the sorted values (numpy method ''lower''), within 0.5% (relative); q = 0 and 1 give min and max exactly';

CREATE OR REPLACE FUNCTION experiment.rank(s experiment.sketch, x float8) RETURNS float8
  AS 'MODULE_PATHNAME', 'exp_sketch_rank_fn' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

COMMENT ON FUNCTION experiment.rank(experiment.sketch, float8) IS
  'estimated number of values <= x: the counts of the bins up to and including the bin of x';

-- aggregates

CREATE OR REPLACE FUNCTION experiment.sketch_accum(experiment.sketch, float8) RETURNS experiment.sketch
  AS 'MODULE_PATHNAME', 'exp_sketch_accum' LANGUAGE C IMMUTABLE PARALLEL SAFE;

COMMENT ON FUNCTION experiment.sketch_accum(experiment.sketch, float8) IS
  'internal: transition function of experiment.sketch(value)';

CREATE OR REPLACE FUNCTION experiment.sketch_combine(experiment.sketch, experiment.sketch) RETURNS experiment.sketch
  AS 'MODULE_PATHNAME', 'exp_sketch_combine' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

COMMENT ON FUNCTION experiment.sketch_combine(experiment.sketch, experiment.sketch) IS
  'internal: combine function of the sketch aggregates (updates its first argument in place)';

CREATE OR REPLACE FUNCTION experiment.sketch_final(experiment.sketch) RETURNS experiment.sketch
  AS 'MODULE_PATHNAME', 'exp_sketch_final' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

COMMENT ON FUNCTION experiment.sketch_final(experiment.sketch) IS
  'internal: final function of the sketch aggregates (drops the working state''s spare capacity)';

CREATE OR REPLACE AGGREGATE experiment.sketch(value float8) (
  SFUNC = experiment.sketch_accum, STYPE = experiment.sketch,
  COMBINEFUNC = experiment.sketch_combine, FINALFUNC = experiment.sketch_final,
  PARALLEL = SAFE
);

COMMENT ON AGGREGATE experiment.sketch(float8) IS
  'quantile sketch of the values (NULLs skipped, NaN and infinities are errors; no rows gives NULL)';

CREATE OR REPLACE AGGREGATE experiment.merge(experiment.sketch) (
  SFUNC = experiment.sketch_combine, STYPE = experiment.sketch,
  COMBINEFUNC = experiment.sketch_combine, FINALFUNC = experiment.sketch_final,
  PARALLEL = SAFE
);

COMMENT ON AGGREGATE experiment.merge(experiment.sketch) IS
  'merge stored sketches (e.g. per unit or per day) into one, exactly';

-- quantile tests

CREATE OR REPLACE FUNCTION experiment.quantile_test(control experiment.sketch, treatment experiment.sketch, q float8,
                                         alpha float8 DEFAULT 0.05, alternative text DEFAULT 'two-sided',
                                         sequential_tuning float8 DEFAULT NULL)
  RETURNS experiment.test_result
  AS 'MODULE_PATHNAME', 'exp_quantile_test' LANGUAGE C IMMUTABLE PARALLEL SAFE;

COMMENT ON FUNCTION experiment.quantile_test(experiment.sketch, experiment.sketch, float8, float8, text, float8) IS
  'test of the difference of the q-quantiles of two sketches of one value per unit (standard errors from the order-statistic interval, as GrowthBook''s QuantileStatistic); mean_control and mean_treatment are the quantiles; normal reference, df NULL';

CREATE OR REPLACE FUNCTION experiment.quantile_test(control experiment.sketch, treatment experiment.sketch, q float8,
                                         control_clusters experiment.moments, treatment_clusters experiment.moments,
                                         alpha float8 DEFAULT 0.05, alternative text DEFAULT 'two-sided',
                                         sequential_tuning float8 DEFAULT NULL)
  RETURNS experiment.test_result
  AS 'MODULE_PATHNAME', 'exp_quantile_test_clustered' LANGUAGE C IMMUTABLE PARALLEL SAFE;

COMMENT ON FUNCTION experiment.quantile_test(experiment.sketch, experiment.sketch, float8, experiment.moments, experiment.moments, float8, text, float8) IS
  'test of the difference of the q-quantiles of all events of two arms whose units are clusters of events: *_clusters are bivariate moments over the arm''s units of (b_i = events <= the arm''s quantile, n_i = events), the variance scaled by their design effect (GrowthBook''s QuantileClusteredStatistic); n_control and n_treatment count units';

CREATE OR REPLACE FUNCTION experiment.poststrat_ttest(method text, control experiment.moments[], treatment experiment.moments[],
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

CREATE OR REPLACE FUNCTION experiment.poststrat_accum(s experiment.poststrat_state, method text, stratum text,
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

CREATE OR REPLACE FUNCTION experiment.poststrat_combine(a experiment.poststrat_state, b experiment.poststrat_state)
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

CREATE OR REPLACE FUNCTION experiment.poststrat_final(s experiment.poststrat_state)
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

CREATE OR REPLACE AGGREGATE experiment.poststrat_ttest(method text, stratum text, is_treatment boolean, m experiment.moments) (
  SFUNC = experiment.poststrat_accum,
  STYPE = experiment.poststrat_state,
  COMBINEFUNC = experiment.poststrat_combine,
  FINALFUNC = experiment.poststrat_final,
  PARALLEL = SAFE
);

COMMENT ON AGGREGATE experiment.poststrat_ttest(text, text, boolean, experiment.moments) IS
  'poststrat_ttest (alpha = 0.05) over rows of (stratum, is_treatment, moments): the rows of a stratum and arm merged, '
  'strata ordered by name (NULL: a stratum of its own); rows with a NULL is_treatment or moments are skipped, no rows gives NULL';

ALTER TABLE experiment.experiments ADD COLUMN stratify_by text;

COMMENT ON COLUMN experiment.experiments.stratify_by IS
  'the dimension (a name in experiment.dimensions) whose values are the strata of post-stratification; NULL: none (doc/analysis.md, "Dimension breakdowns")';

CREATE OR REPLACE FUNCTION experiment.experiments_check() RETURNS trigger
  LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
DECLARE
  other record;
  frozen boolean := TG_OP = 'UPDATE' AND OLD.status <> 'draft';
BEGIN
  -- ownership, as for metrics: only members of a role act for it
  IF TG_OP = 'UPDATE' THEN
    PERFORM experiment.require_experiment_owner(OLD.id, 'change');
  END IF;
  IF NEW.owner_role IS NULL THEN
    NEW.owner_role := CASE WHEN TG_OP = 'UPDATE' THEN OLD.owner_role ELSE experiment.current_regrole() END;
  END IF;
  IF (TG_OP = 'INSERT' OR NEW.owner_role IS DISTINCT FROM OLD.owner_role)
     AND NOT pg_catalog.pg_has_role(current_user, NEW.owner_role, 'MEMBER') THEN
    RAISE EXCEPTION 'permission denied to make role "%" the owner role of experiment "%"', NEW.owner_role, left(NEW.id, 200)
      USING ERRCODE = 'insufficient_privilege',
            HINT = 'Leave owner_role NULL to own the experiment yourself.';
  END IF;
  NEW.salt := coalesce(NEW.salt, NEW.id);
  IF NEW.status IS NULL OR NEW.status NOT IN ('draft', 'running', 'stopped', 'concluded') THEN
    PERFORM experiment.raise_invalid_choice('status', NEW.status, '{draft,running,stopped,concluded}',
                                            format('experiment "%s"', NEW.id));
  END IF;
  IF NEW.hash_scheme IS NULL
     OR NEW.hash_scheme NOT IN ('sha256', 'growthbook_v1', 'growthbook_v2', 'eppo', 'statsig') THEN
    PERFORM experiment.raise_invalid_choice('hash_scheme', NEW.hash_scheme,
                                            ARRAY(SELECT h.scheme FROM experiment.hash_schemes() h),
                                            format('experiment "%s"', NEW.id));
  END IF;
  -- below one unit in a million a traffic share is no ramp but an underflow
  IF NEW.traffic IS NULL OR NOT (NEW.traffic = 0 OR (NEW.traffic >= 1e-6 AND NEW.traffic <= 1)) THEN
    PERFORM experiment.raise_invalid_value(format('traffic of experiment "%s"', NEW.id), NEW.traffic::text,
                                           '0 or in [1e-6, 1]');
  END IF;
  IF NEW.id IS NULL OR NEW.id = '' THEN
    PERFORM experiment.raise_invalid_value('id of an experiment', quote_nullable(NEW.id), 'a non-empty text');
  END IF;
  IF NEW.salt = '' THEN
    PERFORM experiment.raise_invalid_value(format('salt of experiment "%s"', NEW.id), '''''',
                                           'a non-empty text (NULL: the id)');
  END IF;
  IF NEW.analysis IS NULL OR NEW.analysis NOT IN ('fixed', 'sequential', 'bayesian') THEN
    PERFORM experiment.raise_invalid_choice('analysis', NEW.analysis, '{sequential,fixed,bayesian}',
                                            format('experiment "%s"', NEW.id));
  END IF;
  IF NEW.correction IS NULL OR NEW.correction NOT IN ('none', 'holm', 'bh') THEN
    PERFORM experiment.raise_invalid_choice('correction', NEW.correction, '{holm,bh,none}', format('experiment "%s"', NEW.id));
  END IF;
  IF NEW.correction_family IS NULL OR NEW.correction_family NOT IN ('experiment', 'metric') THEN
    PERFORM experiment.raise_invalid_choice('correction_family', NEW.correction_family, '{experiment,metric}',
                                            format('experiment "%s"', NEW.id));
  END IF;
  IF NOT (NEW.sequential_tuning > 0 AND NEW.sequential_tuning < 'Infinity'::float8) THEN
    PERFORM experiment.raise_invalid_value(format('sequential_tuning of experiment "%s"', NEW.id), NEW.sequential_tuning::text,
                                           'a positive number, the expected total sample size (NULL: from target_units_per_variant)');
  END IF;
  IF NOT (NEW.prior_variance > 0 AND NEW.prior_variance < 'Infinity'::float8) THEN
    PERFORM experiment.raise_invalid_value(format('prior_variance of experiment "%s"', NEW.id), NEW.prior_variance::text,
                                           'a positive number (NULL: flat prior)');
  END IF;
  IF NEW.prior_mean IS NULL OR NOT (abs(NEW.prior_mean) < 'Infinity'::float8) THEN
    PERFORM experiment.raise_invalid_value(format('prior_mean of experiment "%s"', NEW.id), coalesce(NEW.prior_mean::text, 'NULL'),
                                           'a finite relative lift, e.g. 0');
  END IF;
  IF NEW.ship_threshold IS NULL OR NOT (NEW.ship_threshold > 0.5 AND NEW.ship_threshold < 1) THEN
    PERFORM experiment.raise_invalid_value(format('ship_threshold of experiment "%s"', NEW.id), coalesce(NEW.ship_threshold::text, 'NULL'),
                                           'a chance to win in (0.5, 1), e.g. 0.95');
  END IF;
  IF NEW.alpha IS NULL OR NOT (NEW.alpha > 0 AND NEW.alpha < 1) THEN
    PERFORM experiment.raise_invalid_value(format('alpha of experiment "%s"', NEW.id), NEW.alpha::text,
                                           'in (0, 1), e.g. 0.05');
  END IF;
  IF NEW.analysis = 'sequential' AND NEW.alpha >= 0.5 THEN
    PERFORM experiment.raise_invalid_value(format('alpha of sequential experiment "%s"', NEW.id), NEW.alpha::text,
                                           'below 0.5 (its guardrails use one-sided sequences)');
  END IF;
  IF NEW.min_runtime < interval '0' THEN
    PERFORM experiment.raise_invalid_value(format('min_runtime of experiment "%s"', NEW.id), NEW.min_runtime::text,
                                           'a non-negative interval');
  END IF;
  IF NEW.target_units_per_variant <= 0 THEN
    PERFORM experiment.raise_invalid_value(format('target_units_per_variant of experiment "%s"', NEW.id),
                                           NEW.target_units_per_variant::text, 'positive');
  END IF;
  IF NEW.end_at < NEW.start_at THEN
    PERFORM experiment.raise_invalid_value(format('end_at of experiment "%s"', NEW.id), NEW.end_at::text,
                                           format('at or after start_at (%s)', NEW.start_at));
  END IF;
  IF NEW.layer IS NOT NULL OR NEW.layer_start IS NOT NULL OR NEW.layer_end IS NOT NULL THEN
    IF NEW.layer IS NULL OR NEW.layer = ''
       OR NOT coalesce(NEW.layer_start >= 0 AND NEW.layer_start < NEW.layer_end AND NEW.layer_end <= 1, false) THEN
      RAISE EXCEPTION 'invalid layer range of experiment "%": layer %, layer_start %, layer_end %',
        NEW.id, coalesce(quote_literal(NEW.layer), 'NULL'), coalesce(NEW.layer_start::text, 'NULL'),
        coalesce(NEW.layer_end::text, 'NULL')
        USING ERRCODE = 'invalid_parameter_value',
              HINT = 'A layer needs a name and 0 <= layer_start < layer_end <= 1.';
    END IF;
  END IF;
  IF NEW.targeting IS NOT NULL AND jsonb_typeof(NEW.targeting) <> 'object' THEN
    RAISE EXCEPTION 'targeting of experiment "%" must be a JSON object (a GrowthBook condition), got %',
      NEW.id, NEW.targeting
      USING ERRCODE = 'invalid_parameter_value';
  END IF;

  IF TG_OP = 'UPDATE' THEN
    IF NEW.id <> OLD.id THEN
      RAISE EXCEPTION 'the id of experiment "%" cannot change', OLD.id
        USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF NEW.status <> OLD.status AND NOT (
         (OLD.status = 'draft' AND NEW.status = 'running')
      OR (OLD.status = 'running' AND NEW.status IN ('stopped', 'concluded'))
      OR (OLD.status = 'stopped' AND NEW.status IN ('running', 'concluded'))) THEN
      RAISE EXCEPTION 'experiment "%" cannot go from % to %', NEW.id, OLD.status, NEW.status
        USING ERRCODE = 'invalid_parameter_value',
              HINT = 'Allowed: draft -> running, running -> stopped or concluded, stopped -> running or concluded.';
    END IF;
    IF frozen THEN
      IF (NEW.analysis, NEW.sequential_tuning, NEW.correction, NEW.correction_family, NEW.prior_mean,
          NEW.prior_variance, NEW.ship_threshold, NEW.alpha)
         IS DISTINCT FROM (OLD.analysis, OLD.sequential_tuning, OLD.correction, OLD.correction_family,
                           OLD.prior_mean, OLD.prior_variance, OLD.ship_threshold, OLD.alpha) THEN
        RAISE EXCEPTION 'cannot change the analysis settings of experiment "%": it is %', NEW.id, OLD.status
          USING ERRCODE = 'invalid_parameter_value',
                HINT = 'analysis, sequential_tuning, correction, correction_family, prior_mean, prior_variance, ship_threshold and alpha are fixed when the experiment starts, so that nobody picks the method after seeing the data.';
      END IF;
      IF NEW.salt <> OLD.salt THEN
        RAISE EXCEPTION 'cannot change the salt of experiment "%": it is %', NEW.id, OLD.status
          USING ERRCODE = 'invalid_parameter_value',
                HINT = 'A new split or salt is a new experiment.';
      END IF;
      IF NEW.hash_scheme <> OLD.hash_scheme THEN
        RAISE EXCEPTION 'cannot change the hash_scheme of experiment "%": it is %', NEW.id, OLD.status
          USING ERRCODE = 'invalid_parameter_value';
      END IF;
      IF NEW.layer IS DISTINCT FROM OLD.layer OR NEW.layer_start IS DISTINCT FROM OLD.layer_start
         OR NEW.layer_end IS DISTINCT FROM OLD.layer_end THEN
        RAISE EXCEPTION 'cannot change the layer range of experiment "%": it is %', NEW.id, OLD.status
          USING ERRCODE = 'invalid_parameter_value';
      END IF;
      IF NEW.traffic < OLD.traffic THEN
        RAISE EXCEPTION 'cannot lower the traffic of experiment "%" from % to %: it is %',
          NEW.id, OLD.traffic, NEW.traffic, OLD.status
          USING ERRCODE = 'invalid_parameter_value',
                HINT = 'Raising traffic is ramp-safe; lowering it would remove enrolled units. Stop the experiment instead.';
      END IF;
    END IF;
    IF OLD.status = 'draft' AND NEW.status <> 'draft' THEN
      PERFORM experiment.check_split(NEW.id);
    END IF;
    -- (an INSERT may name a dimension stored after it, as a restored dump does: refresh()
    -- checks it again)
    IF NEW.stratify_by IS DISTINCT FROM OLD.stratify_by AND NEW.stratify_by IS NOT NULL THEN
      PERFORM experiment.require_dimension(NEW.id, NEW.stratify_by, 'stratify_by');
    END IF;
    NEW.updated_at := now();
  END IF;

  -- Ranges of one layer held by experiments that are not concluded must not
  -- overlap. The advisory lock serialises concurrent writers of one layer.
  IF NEW.layer IS NOT NULL AND NEW.status <> 'concluded' THEN
    PERFORM pg_advisory_xact_lock(hashtext('experiment.layer'), hashtext(NEW.layer));
    SELECT x.id, x.layer_start, x.layer_end, x.hash_scheme INTO other
      FROM experiment.experiments x
     WHERE x.layer = NEW.layer AND x.id <> NEW.id AND x.status <> 'concluded'
       AND (x.hash_scheme IN ('growthbook_v1', 'growthbook_v2'))
           IS DISTINCT FROM (NEW.hash_scheme IN ('growthbook_v1', 'growthbook_v2'))
     LIMIT 1;
    IF FOUND THEN
      RAISE EXCEPTION 'experiment "%" (hash_scheme %) and experiment "%" (hash_scheme %) cannot share layer "%"',
        NEW.id, NEW.hash_scheme, other.id, other.hash_scheme, NEW.layer
        USING ERRCODE = 'invalid_parameter_value',
              HINT = 'The experiments of one layer all use growthbook_* schemes (GrowthBook namespace) or all use sha256, eppo or statsig.';
    END IF;
    SELECT x.id, x.layer_start, x.layer_end INTO other
      FROM experiment.experiments x
     WHERE x.layer = NEW.layer AND x.id <> NEW.id AND x.status <> 'concluded'
       AND x.layer_start < NEW.layer_end AND NEW.layer_start < x.layer_end
     ORDER BY x.layer_start
     LIMIT 1;
    IF FOUND THEN
      RAISE EXCEPTION 'range [%, %) of experiment "%" overlaps range [%, %) of experiment "%" in layer "%"',
        NEW.layer_start, NEW.layer_end, NEW.id, other.layer_start, other.layer_end, other.id, NEW.layer
        USING ERRCODE = 'exclusion_violation',
              HINT = 'Experiments of one layer own disjoint ranges; conclude the other experiment or pick a free range.';
    END IF;
  END IF;
  RETURN NEW;
END
$$;

-- ---------------------------------------------------------------------------
-- Lifecycle functions
-- ---------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION experiment.create_experiment(
  id text,
  variants jsonb,
  traffic float8 DEFAULT 1,
  hash_scheme text DEFAULT 'sha256',
  salt text DEFAULT NULL,
  layer text DEFAULT NULL,
  layer_start float8 DEFAULT NULL,
  layer_end float8 DEFAULT NULL,
  targeting jsonb DEFAULT NULL,
  name text DEFAULT NULL,
  start boolean DEFAULT false)
  RETURNS text
  LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
DECLARE
  v jsonb;
  has_control boolean;
  design jsonb;
BEGIN
  -- a factorial design {"factors", "allocations"}: its cells are the variants
  -- (src/sql/099_interact.sql, doc/designs-factorial.md)
  IF jsonb_typeof(variants) = 'object' AND variants ? 'factors' THEN
    design := variants;
    variants := experiment.factorial_cells(design);
  END IF;
  IF variants IS NULL OR jsonb_typeof(variants) <> 'array' THEN
    RAISE EXCEPTION 'variants must be a JSON array of {"name", "allocation", "config", "is_control"}, got %',
      coalesce(variants::text, 'NULL')
      USING ERRCODE = 'invalid_parameter_value',
            HINT = 'Or a factorial design: {"factors": [{"name", "levels"}], "allocations": {"cell": share}}.';
  END IF;
  IF EXISTS (SELECT 1 FROM experiment.experiments x WHERE x.id = create_experiment.id) THEN
    RAISE EXCEPTION 'experiment "%" already exists', id
      USING ERRCODE = 'invalid_parameter_value',
            HINT = 'Choose another id, or change the existing experiment in experiment.experiments and experiment.variants.';
  END IF;
  INSERT INTO experiment.experiments AS x (id, name, salt, hash_scheme, traffic, layer, layer_start, layer_end, targeting,
                                           factors)
  VALUES (create_experiment.id, create_experiment.name, create_experiment.salt,
          coalesce(create_experiment.hash_scheme, 'sha256'), coalesce(create_experiment.traffic, 1),
          create_experiment.layer, create_experiment.layer_start, create_experiment.layer_end,
          create_experiment.targeting, design -> 'factors');
  has_control := EXISTS (SELECT FROM jsonb_array_elements(variants) e WHERE (e ->> 'is_control')::boolean);
  FOR v IN SELECT e FROM jsonb_array_elements(variants) WITH ORDINALITY AS t(e, i) ORDER BY i LOOP
    IF jsonb_typeof(v) <> 'object' OR jsonb_typeof(v -> 'name') IS DISTINCT FROM 'string'
       OR jsonb_typeof(v -> 'allocation') IS DISTINCT FROM 'number' THEN
      RAISE EXCEPTION 'each variant must be an object with a string "name" and a numeric "allocation", got %', v
        USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO experiment.variants (experiment_id, name, allocation, config, is_control, levels)
    VALUES (create_experiment.id, v ->> 'name', (v ->> 'allocation')::float8, v -> 'config',
            CASE WHEN has_control THEN coalesce((v ->> 'is_control')::boolean, false)
                 ELSE NOT EXISTS (SELECT FROM experiment.variants w WHERE w.experiment_id = create_experiment.id) END,
            CASE WHEN design IS NOT NULL THEN v -> 'levels' END);
  END LOOP;
  PERFORM experiment.check_split(create_experiment.id);
  IF start THEN
    PERFORM experiment.start(create_experiment.id);
  END IF;
  RETURN create_experiment.id;
END
$$;

COMMENT ON FUNCTION experiment.create_experiment(text, jsonb, float8, text, text, text, float8, float8, jsonb, text, boolean) IS
  'creates a draft experiment with its variants ([{"name", "allocation", "config", "is_control"}]; without is_control the first is the control), '
  'or with the cells of a factorial design ({"factors": [{"name", "levels"}], "allocations": {"cell": share}}), checks the split, optionally starts it; returns the id';

CREATE OR REPLACE FUNCTION experiment.assign(unit_id text, experiment_id text, attributes jsonb DEFAULT '{}')
  RETURNS text
  LANGUAGE plpgsql STABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
DECLARE
  e record;
  pos float8;
  i integer;
  sticky text;
BEGIN
  IF experiment_id IS NULL OR unit_id IS NULL OR unit_id = '' THEN
    RETURN NULL;
  END IF;
  SELECT x.status, x.salt, x.hash_scheme, x.traffic, x.layer, x.layer_start, x.layer_end, x.targeting,
         array_agg(v.name ORDER BY v.is_control DESC, v.name COLLATE "C") AS names,
         array_agg(v.allocation ORDER BY v.is_control DESC, v.name COLLATE "C") AS allocations
    INTO e
    FROM experiment.experiments x LEFT JOIN experiment.variants v ON v.experiment_id = x.id
   WHERE x.id = assign.experiment_id
   GROUP BY x.id;
  IF NOT FOUND THEN
    PERFORM experiment.require_experiment(experiment_id);
  END IF;
  IF e.status <> 'running' OR cardinality(e.names) < 2 THEN
    RETURN NULL;
  END IF;
  -- a unit held out by a holdout that covers the experiment (src/sql/099_holdout_bandit.sql)
  IF experiment.held_out(unit_id, experiment_id) THEN
    RETURN NULL;
  END IF;
  IF e.layer IS NOT NULL THEN
    pos := experiment.layer_position(unit_id, e.layer, e.hash_scheme);
    IF NOT (pos >= e.layer_start AND pos < e.layer_end) THEN
      RETURN NULL;
    END IF;
  END IF;
  IF e.targeting IS NOT NULL
     AND NOT coalesce(experiment.eval_condition(e.targeting, coalesce(attributes, '{}'::jsonb)), false) THEN
    RETURN NULL;
  END IF;
  -- a bandit: its units keep the variant of their first exposure, new ones get the current
  -- weights (src/sql/099_holdout_bandit.sql)
  IF EXISTS (SELECT FROM experiment.bandits b WHERE b.experiment_id = assign.experiment_id) THEN
    sticky := experiment.bandit_sticky_variant(experiment_id, unit_id);
    IF sticky IS NOT NULL THEN
      RETURN sticky;
    END IF;
    e.allocations := experiment.bandit_allocations(experiment_id);
  END IF;
  i := experiment.growthbook_choose_variation(
         experiment.unit_hash(e.hash_scheme, e.salt, unit_id),
         experiment.variant_ranges(e.hash_scheme, e.allocations, e.traffic));
  IF i < 0 THEN
    RETURN NULL;
  END IF;
  RETURN e.names[i + 1];
END
$$;

-- ---------------------------------------------------------------------------
-- Ruleset for SDKs, its version and the NOTIFY channel
-- ---------------------------------------------------------------------------

-- The running experiments as SDKs need them, ordered by id.
CREATE OR REPLACE FUNCTION experiment.ruleset_experiments() RETURNS jsonb
  LANGUAGE sql STABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
  SELECT coalesce(jsonb_agg(jsonb_build_object(
           'id', x.id,
           'name', x.name,
           'salt', x.salt,
           'hash_scheme', x.hash_scheme,
           'allocation', x.traffic,
           'layer', CASE WHEN x.layer IS NOT NULL THEN jsonb_build_object(
                      'name', x.layer, 'start', x.layer_start, 'end', x.layer_end,
                      'hash', CASE WHEN x.hash_scheme IN ('growthbook_v1', 'growthbook_v2')
                                   THEN 'growthbook_namespace' ELSE 'sha256' END,
                      'salt', CASE WHEN x.hash_scheme IN ('growthbook_v1', 'growthbook_v2')
                                   THEN '__' || x.layer ELSE 'layer:' || x.layer END) END,
           'variants', (SELECT coalesce(jsonb_agg(jsonb_build_object(
                                  'name', v.name, 'allocation', v.allocation,
                                  'config', v.config, 'is_control', v.is_control)
                                ORDER BY v.is_control DESC, v.name COLLATE "C"), '[]'::jsonb)
                          FROM experiment.variants v WHERE v.experiment_id = x.id),
           'targeting', x.targeting)
           -- holdouts and bandits (src/sql/099_holdout_bandit.sql)
           || experiment.ruleset_design(x.id)
         ORDER BY x.id COLLATE "C"), '[]'::jsonb)
    FROM experiment.experiments x
   WHERE x.status = 'running'
$$;

-- ---------------------------------------------------------------------------
-- GrowthBook SDK payload
-- ---------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION experiment.growthbook_payload() RETURNS jsonb
  LANGUAGE sql STABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
  SELECT jsonb_build_object('features', coalesce(jsonb_object_agg(f.id, f.feature), '{}'::jsonb))
    FROM (
      SELECT x.id, jsonb_build_object(
               'defaultValue', NULL::jsonb,
               'rules', jsonb_build_array(
                 jsonb_build_object(
                   'id', x.id,
                   'key', x.id,
                   'name', coalesce(x.name, x.id),
                   'seed', x.salt,
                   'hashAttribute', 'id',
                   'hashVersion', CASE x.hash_scheme WHEN 'growthbook_v1' THEN 1 ELSE 2 END,
                   'coverage', x.traffic,
                   'weights', sp.weights,
                   'variations', sp.variations,
                   'meta', sp.meta)
                 || CASE WHEN x.layer IS NOT NULL
                         THEN jsonb_build_object('namespace', jsonb_build_array(x.layer, x.layer_start, x.layer_end))
                         ELSE '{}'::jsonb END
                 || CASE WHEN x.targeting IS NOT NULL
                         THEN jsonb_build_object('condition', x.targeting)
                         ELSE '{}'::jsonb END
                 -- holdouts and bandits (src/sql/099_holdout_bandit.sql)
                 || experiment.growthbook_rule_design(x.id))) AS feature
        FROM experiment.experiments x
        CROSS JOIN LATERAL (
          SELECT jsonb_agg(v.allocation ORDER BY v.is_control DESC, v.name COLLATE "C") AS weights,
                 jsonb_agg(coalesce(v.config, to_jsonb(v.name)) ORDER BY v.is_control DESC, v.name COLLATE "C") AS variations,
                 jsonb_agg(jsonb_build_object('key', v.name, 'name', v.name)
                           ORDER BY v.is_control DESC, v.name COLLATE "C") AS meta
            FROM experiment.variants v WHERE v.experiment_id = x.id) sp
       WHERE x.status = 'running' AND x.hash_scheme IN ('growthbook_v1', 'growthbook_v2')
    ) f
$$;

ALTER TABLE experiment.metrics
  DROP CONSTRAINT metrics_aggregation_check,
  ADD CONSTRAINT metrics_aggregation_check CHECK (aggregation IN ('sum', 'count', 'any', 'max', 'quantile')),
  ADD COLUMN quantile float8,
  ADD COLUMN quantile_level text,
  ADD CONSTRAINT metrics_quantile_check CHECK (
    CASE WHEN aggregation = 'quantile'
         THEN quantile > 0 AND quantile < 1 AND quantile_level IN ('event', 'unit')
         ELSE quantile IS NULL AND quantile_level IS NULL END);

COMMENT ON COLUMN experiment.metrics.aggregation IS
  'per-unit aggregation over the window: sum, count, any (1 when converted at least once, else 0), max, '
  'or quantile (the metric is a quantile: of all events, or of the per-unit sums; see quantile_level)';

COMMENT ON COLUMN experiment.metrics.quantile IS
  'with aggregation quantile: the quantile compared between arms, in (0, 1), e.g. 0.99 for p99';

COMMENT ON COLUMN experiment.metrics.quantile_level IS
  'with aggregation quantile: event (the quantile of all the units'' events, e.g. p99 of page loads; default) '
  'or unit (the quantile of the per-unit sums, one value per unit)';

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
  IF NEW.aggregation IS NULL OR NEW.aggregation NOT IN ('sum', 'count', 'any', 'max', 'quantile') THEN
    PERFORM experiment.raise_invalid_choice('aggregation', NEW.aggregation, '{sum,count,any,max,quantile}', owner);
  END IF;
  IF NEW.aggregation = 'quantile' THEN
    IF NOT (NEW.quantile > 0 AND NEW.quantile < 1) OR NEW.quantile IS NULL THEN
      PERFORM experiment.raise_invalid_value('quantile of ' || owner, coalesce(NEW.quantile::text, 'NULL'),
                                             'a quantile in (0, 1), e.g. 0.99 (aggregation quantile needs one)');
    END IF;
    NEW.quantile_level := coalesce(NEW.quantile_level, 'event');
    IF NEW.quantile_level NOT IN ('event', 'unit') THEN
      PERFORM experiment.raise_invalid_choice('quantile_level', NEW.quantile_level, '{event,unit}', owner);
    END IF;
  ELSIF NEW.quantile IS NOT NULL OR NEW.quantile_level IS NOT NULL THEN
    RAISE EXCEPTION '% has % but aggregation ''%''', owner,
      concat_ws(' and ', 'quantile = ' || NEW.quantile, 'quantile_level = ' || quote_literal(NEW.quantile_level)),
      NEW.aggregation
      USING ERRCODE = '22023', HINT = 'Set aggregation to ''quantile'', or quantile and quantile_level to NULL.';
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
  'an invalid aggregation, quantile, quantile_level, kind, delay, window, winsorize, winsorize_lower, cap_lower, cap_upper, cap_ignore_zeros, '
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
    IF m.aggregation = 'quantile' THEN
      RAISE EXCEPTION 'ratio metric "%" cannot have aggregation ''quantile''', m.name
        USING ERRCODE = '22023', HINT = 'A ratio divides the sums of two metrics: set aggregation to ''sum''.';
    END IF;
    FOREACH part IN ARRAY ARRAY[m.numerator, m.denominator] LOOP
      SELECT kind INTO part_kind FROM experiment.metrics WHERE name = part;
      IF NOT FOUND THEN
        RAISE EXCEPTION 'ratio metric "%": part "%" is not a metric', m.name, part USING ERRCODE = '22023';
      END IF;
      IF part_kind = 'ratio' THEN
        RAISE EXCEPTION 'ratio metric "%": part "%" is itself a ratio', m.name, part USING ERRCODE = '22023';
      END IF;
      IF (SELECT mp.aggregation FROM experiment.metrics mp WHERE mp.name = part) = 'quantile' THEN
        RAISE EXCEPTION 'ratio metric "%": part "%" is a quantile metric', m.name, part
          USING ERRCODE = '22023', HINT = 'The parts of a ratio are per-unit sums, counts or maxima.';
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
  IF m.aggregation = 'quantile' THEN
    IF m.kind <> 'mean' THEN
      RAISE EXCEPTION 'quantile metric "%" must be of kind ''mean'', not ''%''', m.name, m.kind
        USING ERRCODE = '22023', HINT = 'A quantile metric compares the arms'' quantiles: leave kind at ''mean''.';
    END IF;
    IF m.value_column IS NULL THEN
      RAISE EXCEPTION 'quantile metric "%" needs a value_column', m.name
        USING ERRCODE = '22023', HINT = 'The quantile is taken of a column''s values, e.g. a latency in ms.';
    END IF;
    IF m.winsorize IS NOT NULL OR m.winsorize_lower IS NOT NULL OR m.cap_lower IS NOT NULL OR m.cap_upper IS NOT NULL THEN
      RAISE EXCEPTION 'quantile metric "%" cannot be capped (%)', m.name,
        concat_ws(', ', 'winsorize = ' || m.winsorize, 'winsorize_lower = ' || m.winsorize_lower,
                  'cap_lower = ' || m.cap_lower, 'cap_upper = ' || m.cap_upper)
        USING ERRCODE = '22023', HINT = 'A quantile is not moved by outliers: set the caps to NULL.';
    END IF;
  END IF;
  IF m.kind = 'proportion' AND m.aggregation <> 'any' THEN
    RAISE EXCEPTION 'proportion metric "%" must use aggregation ''any'', not ''%''', m.name, m.aggregation
      USING ERRCODE = '22023', HINT = 'A proportion is the share of units converted at least once.';
  END IF;
END
$$;

ALTER TABLE experiment.refreshes ADD COLUMN unit_partitions integer;

COMMENT ON COLUMN experiment.refreshes.unit_partitions IS
  'the unit-hash partitions the refresh read its sources in (1: all units at once; more when the units need more '
  'than experiment.refresh_memory)';

ALTER TABLE experiment.variant_stats ADD COLUMN sketch experiment.sketch;

COMMENT ON COLUMN experiment.variant_stats.sketch IS
  'quantile metrics: the sketch of the variant''s values (of all its units'' events, or of its per-unit sums); '
  'for event quantiles moments is then the bivariate moments over the units of (events at or below the variant''s quantile, events)';

ALTER TABLE experiment.metric_results
  DROP CONSTRAINT metric_results_method_check,
  ADD CONSTRAINT metric_results_method_check
    CHECK (method IN ('welch', 'prop_ztest', 'cuped', 'ratio', 'cuped_ratio', 'quantile')),
  ADD COLUMN stratified_by text;

COMMENT ON COLUMN experiment.metric_results.stratified_by IS
  'the dimension whose values were the strata of the tests (experiment.poststrat_ttest, the experiment''s stratify_by); NULL: not post-stratified';

CREATE TABLE experiment.dimension_enrollment (
  experiment_id text NOT NULL REFERENCES experiment.experiments (id) ON DELETE CASCADE,
  dimension text NOT NULL,
  value text NOT NULL,
  variant text NOT NULL,
  units bigint NOT NULL,
  refreshed_at timestamptz NOT NULL,
  PRIMARY KEY (experiment_id, dimension, value, variant)
);

COMMENT ON TABLE experiment.dimension_enrollment IS
  'analysed units per dimension, value and variant at the latest refresh (every variant of every value, zero included)';

COMMENT ON COLUMN experiment.dimension_enrollment.value IS
  'the value of the unit''s first exposure: one of the dimension''s top_n values by analysed units, (other) for the rest, (none) for no value';

CREATE TABLE experiment.dimension_stats (
  experiment_id text NOT NULL REFERENCES experiment.experiments (id) ON DELETE CASCADE,
  dimension text NOT NULL,
  value text NOT NULL,
  metric text NOT NULL,
  variant text NOT NULL,
  units bigint NOT NULL,
  moments experiment.moments,
  cuped_moments experiment.moments,
  cap float8,
  cap_lower float8,
  skipped_values bigint NOT NULL DEFAULT 0,
  refreshed_at timestamptz NOT NULL,
  PRIMARY KEY (experiment_id, dimension, value, metric, variant)
);

COMMENT ON TABLE experiment.dimension_stats IS
  'per dimension value and variant, the moments of each metric at the latest refresh (as variant_stats)';

COMMENT ON COLUMN experiment.dimension_stats.cap IS
  'upper cap applied to y: the pooled one of variant_stats, or with caps_per_value the one computed within the value';

COMMENT ON COLUMN experiment.dimension_stats.cap_lower IS
  'lower cap applied to y: the pooled one of variant_stats, or with caps_per_value the one computed within the value';

CREATE TABLE experiment.dimension_results (
  experiment_id text NOT NULL REFERENCES experiment.experiments (id) ON DELETE CASCADE,
  dimension text NOT NULL,
  value text NOT NULL,
  metric text NOT NULL,
  variant text NOT NULL,
  control_variant text NOT NULL,
  method text NOT NULL CHECK (method IN ('welch', 'prop_ztest', 'cuped', 'ratio', 'cuped_ratio')),
  alpha float8 NOT NULL,
  test experiment.test_result,
  refreshed_at timestamptz NOT NULL,
  analysis text NOT NULL,
  sequential_tuning float8,
  bound_test experiment.test_result,
  harm_test experiment.test_result,
  PRIMARY KEY (experiment_id, dimension, value, metric, variant)
);

COMMENT ON TABLE experiment.dimension_results IS
  'per dimension value, the test of each treatment variant against control for each metric at the latest refresh (as metric_results; a value without units in one of the two arms has no row)';

COMMENT ON COLUMN experiment.dimension_results.method IS
  'chosen from the value''s own data as metric_results.method is from all of it';

-- the caps of one column of per-unit values (doc/analysis.md, "Winsorization"), from its
-- pooled percentiles and the metric's absolute caps (NULL: none on that side). The absolute
-- caps are hard bounds that a percentile cap can only tighten: the upper cap is the smaller of
-- the upper percentile and cap_upper, the lower cap the larger of the lower percentile and
-- cap_lower, and a percentile beyond the absolute cap of the other side is moved to it, so
-- that the lower cap is never above the upper one (cap_lower < cap_upper is checked); a NaN or
-- infinite argument is no cap
-- the test of one treatment against control for a metric from their variant_stats rows: a
-- quantile metric's quantile test (of events, clustered by unit, or of units), any other
-- metric's experiment.metric_test()
CREATE OR REPLACE FUNCTION experiment.variant_test(method text, m experiment.metrics, c experiment.variant_stats,
                                        t experiment.variant_stats, alpha float8, alternative text,
                                        sequential_tuning float8)
  RETURNS experiment.test_result
  LANGUAGE sql IMMUTABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
  SELECT CASE WHEN method = 'quantile' AND m.quantile_level = 'event'
              THEN experiment.quantile_test(c.sketch, t.sketch, m.quantile, c.moments, t.moments,
                                            alpha, alternative, sequential_tuning)
              WHEN method = 'quantile'
              THEN experiment.quantile_test(c.sketch, t.sketch, m.quantile, alpha, alternative, sequential_tuning)
              ELSE experiment.metric_test(method, c.moments, t.moments, c.cuped_moments, t.cuped_moments,
                                          alpha, alternative, sequential_tuning) END
$$;

COMMENT ON FUNCTION experiment.variant_test(text, experiment.metrics, experiment.variant_stats, experiment.variant_stats,
                                            float8, text, float8) IS
  'internal: the test of a treatment against control for a metric, from their per-variant moments and sketches';

-- per-unit values of the metrics reading one source, in one scan (src/unit_values.c)
-- (a new result column)
DROP FUNCTION experiment.source_unit_values(text[], text[], timestamptz[], regclass, text, text[], text[], text[], interval[], interval[], boolean[], timestamptz, timestamptz, timestamptz, regrole, timestamptz, boolean, boolean);

CREATE OR REPLACE FUNCTION experiment.source_unit_values(
    unit_ids text[], variants text[], t0s timestamptz[], source regclass, unit_column text,
    time_columns text[], value_columns text[], aggregations text[], lo_offsets interval[],
    hi_offsets interval[], use_end boolean[], end_at timestamptz, scan_from timestamptz, scan_to timestamptz,
    reader regrole DEFAULT NULL, split_at timestamptz DEFAULT NULL, probe boolean DEFAULT false,
    partial boolean DEFAULT false)
  RETURNS TABLE (unit_id text, variant text, t0 timestamptz, vals float8[], skipped bigint[], latest timestamptz,
                 split timestamptz, sketches experiment.sketch[])
  AS 'MODULE_PATHNAME', 'exp_source_unit_values'
  -- (it locks and checks the source through SPI before reading it as another role: never in a
  -- parallel query)
  LANGUAGE C STABLE PARALLEL UNSAFE;

COMMENT ON FUNCTION experiment.source_unit_values(text[], text[], timestamptz[], regclass, text, text[], text[], text[],
    interval[], interval[], boolean[], timestamptz, timestamptz, timestamptz, regrole, timestamptz, boolean, boolean) IS
  'internal: one row per unit (unit_ids, variants, t0s) with vals[k] = aggregations[k] (sum, count, any, max; '
  'sketch: the number of values, and sketches[k] their experiment.sketch, NULL without values) of '
  'value_columns[k] (NULL: rows) over the unit''s events in source with time_columns[k] in '
  '[t0 + lo_offsets[k], t0 + hi_offsets[k]) and, when use_end[k], before end_at; '
  '0 without events; NaN and infinite values are not aggregated and counted in skipped[k]; '
  'scan_from/scan_to bound the scan when all specs read one time column; reads source as role reader '
  '(NULL: the current user, who must have its privileges) in a security-restricted operation; '
  'with split_at, vals and skipped have 2n elements, the events before split_at and from it on, and the maximum '
  'of no event is NULL; partial returns only the units with events; probe first reads the latest time of the '
  'time column; with split_at or probe a last row without a unit carries the latest time read and the split';

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
                               'exp_groups', 'exp_daily', 'exp_dims', 'exp_dim_units', 'exp_strata') LOOP
    EXECUTE format('DROP TABLE pg_temp.%I', t);
  END LOOP;
END
$$;

CREATE OR REPLACE FUNCTION experiment.source_specs(e experiment.experiments, min_t0 timestamptz, max_t0 timestamptz,
    as_owner boolean)
  RETURNS SETOF experiment.source_scan
  LANGUAGE plpgsql STABLE PARALLEL UNSAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
DECLARE
  s experiment.source_scan;
  src regclass;
  ucol text;
  rdr regrole;
  r record;
  m experiment.metrics;
  tcol text;
  need_upper boolean;
  lb timestamptz;
BEGIN
  s.src_no := 0;
  FOR src, ucol, rdr IN
      SELECT DISTINCT m2.source, m2.unit_column, CASE WHEN as_owner THEN m2.owner END
      FROM pg_temp.exp_base b JOIN experiment.metrics m2 ON m2.name = b.name ORDER BY 1, 2, 3 LOOP
    s.src_no := s.src_no + 1;
    s.source := src;
    s.unit_column := ucol;
    s.reader := rdr;
    s.lower_bound := NULL;
    s.upper_bound := NULL;
    s.late_events := NULL;
    need_upper := true;
    tcol := NULL;
    s.tcols := '{}';
    s.vcols := '{}';
    s.aggs := '{}';
    s.los := '{}';
    s.his := '{}';
    s.ends := '{}';
    s.targets := '{}';
    FOR r IN SELECT b.i, b.pre, m2 AS m FROM pg_temp.exp_base b JOIN experiment.metrics m2 ON m2.name = b.name
             WHERE m2.source = s.source AND m2.unit_column = s.unit_column
               AND (NOT as_owner OR m2.owner = s.reader) ORDER BY b.i LOOP
      m := r.m;
      IF tcol IS NOT NULL AND tcol <> m.time_column THEN
        tcol := '';   -- metrics of this source use different time columns: no pruning
      ELSIF tcol IS NULL THEN
        tcol := m.time_column;
      END IF;
      s.late_events := greatest(s.late_events, m.late_events);
      -- the value: events in [t0 + delay, t0 + delay + window) before the end of the experiment
      s.tcols := s.tcols || m.time_column;
      s.vcols := s.vcols || m.value_column;
      -- (a quantile metric stores the unit's events as a sketch, or for a quantile of units its sum)
      s.aggs := s.aggs || CASE WHEN m.aggregation <> 'quantile' THEN m.aggregation
                               WHEN m.quantile_level = 'unit' THEN 'sum' ELSE 'sketch' END;
      s.los := s.los || m.delay;
      s.his := s.his || (m.delay + m."window");
      s.ends := s.ends || true;
      s.targets := s.targets || ('v' || r.i);
      lb := experiment.timestamptz_add_clamped(min_t0, m.delay);
      IF r.pre THEN
        -- the pre-period value: events in [t0 - lookback, t0)
        s.tcols := s.tcols || m.time_column;
        s.vcols := s.vcols || m.value_column;
        s.aggs := s.aggs || m.aggregation;
        s.los := s.los || (- m.cuped_lookback);
        s.his := s.his || interval '0';
        s.ends := s.ends || false;
        s.targets := s.targets || ('p' || r.i);
        lb := experiment.timestamptz_add_clamped(min_t0, - m.cuped_lookback);
      END IF;
      s.lower_bound := least(s.lower_bound, lb);
      IF e.end_at IS NOT NULL THEN
        s.upper_bound := greatest(s.upper_bound, e.end_at);
      ELSIF m."window" IS NOT NULL THEN
        s.upper_bound := greatest(s.upper_bound,
                                experiment.timestamptz_add_clamped(experiment.timestamptz_add_clamped(max_t0, m.delay), m."window"));
      ELSE
        need_upper := false;
      END IF;
    END LOOP;
    IF tcol = '' OR NOT need_upper THEN
      s.upper_bound := NULL;
    END IF;
    IF tcol = '' THEN
      s.lower_bound := NULL;
    END IF;
    s.time_column := nullif(tcol, '');
    RETURN NEXT s;
  END LOOP;
END
$$;

-- SQL of two partial per-unit aggregates merged: sums and counts add, any and max take the
-- larger (NULL: no event), sketches merge (NULL: no value); zero_fill: no event at all is 0
-- (a sketch of no value stays NULL)
CREATE OR REPLACE FUNCTION experiment.merged_sql(agg text, a text, b text, zero_fill boolean) RETURNS text
  LANGUAGE sql IMMUTABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
  SELECT CASE WHEN agg = 'sketch'
              THEN format('CASE WHEN %s IS NULL THEN %s WHEN %s IS NULL THEN %s ELSE experiment.sketch_merge(%s, %s) END',
                          a, b, b, a, a, b)
         ELSE format(CASE WHEN zero_fill THEN 'coalesce(%s, 0)' ELSE '%s' END,
                     CASE WHEN agg IN ('sum', 'count') THEN format('(%s + %s)', a, b)
                          ELSE format('greatest(%s, %s)', a, b) END) END
$$;

COMMENT ON FUNCTION experiment.merged_sql(text, text, text, boolean) IS
  'internal: SQL that merges two partial per-unit aggregates (sum and count add, any and max take the larger, sketches merge)';

-- the dimensions of an experiment (experiment.dimensions), numbered j in name order:
-- pg_temp.exp_dims (j, name, attribute, attribute_key, top_n, caps_per_value, expr), expr the
-- SQL of the value of an exposure (alias xp); the stored per-unit values hold d<j>, the value
-- of the unit's first exposure
CREATE OR REPLACE FUNCTION experiment.create_dims_table(e experiment.experiments) RETURNS void
  LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
BEGIN
  CREATE TEMP TABLE exp_dims ON COMMIT DROP AS
    SELECT row_number() OVER (ORDER BY d.name COLLATE "C")::integer AS j, d.name, d.attribute, d.attribute_key,
           d.top_n, d.caps_per_value,
           CASE d.attribute WHEN 'client' THEN 'xp.client' WHEN 'app_version' THEN 'xp.app_version'
                -- a bandit's allocation period (src/sql/099_holdout_bandit.sql)
                WHEN 'bandit_period' THEN 'experiment.bandit_period_of(xp.experiment_id, xp.exposed_at)'
                ELSE format('(xp.attributes ->> %L)', d.attribute_key) END AS expr
    FROM experiment.dimensions d WHERE d.experiment_id = e.id;
END
$$;

COMMENT ON FUNCTION experiment.create_dims_table(experiment.experiments) IS
  'internal: the temporary table exp_dims of an experiment''s dimensions, numbered, with the SQL of an exposure''s value';

-- SQL of the dimension values of the first of a group of exposures (alias xp): ", (array_agg(
-- <expr> ORDER BY exposed_at))[1] AS d<j>" for each row of pg_temp.exp_dims ('' without it)
CREATE OR REPLACE FUNCTION experiment.first_exposure_dims_sql() RETURNS text
  LANGUAGE plpgsql STABLE PARALLEL UNSAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
DECLARE
  r text;
BEGIN
  IF pg_catalog.to_regclass('pg_temp.exp_dims') IS NULL THEN
    RETURN '';
  END IF;
  -- (the exposure that defines t0; of several at that time, in different variants, the unit is
  -- multi-variant and not analysed)
  EXECUTE 'SELECT coalesce(pg_catalog.string_agg(format('', (pg_catalog.array_agg(%s ORDER BY xp.exposed_at, xp.variant))[1] AS d%s'', '
          'd.expr, d.j), '''' ORDER BY d.j), '''') FROM pg_temp.exp_dims d' INTO r;
  RETURN r;
END
$$;

COMMENT ON FUNCTION experiment.first_exposure_dims_sql() IS
  'internal: SQL of the dimension values d<j> of the first exposure of a group of exposures';

-- the dimension columns of a relation of per-unit values (alias a): ", a.d1, a.d2" ('' without dimensions)
CREATE OR REPLACE FUNCTION experiment.dims_columns_sql(a text) RETURNS text
  LANGUAGE plpgsql STABLE PARALLEL UNSAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
DECLARE
  r text;
BEGIN
  IF pg_catalog.to_regclass('pg_temp.exp_dims') IS NULL THEN
    RETURN '';
  END IF;
  EXECUTE format('SELECT coalesce(pg_catalog.string_agg(format('', %%s.d%%s'', %L, d.j), '''' ORDER BY d.j), '''') '
                 'FROM pg_temp.exp_dims d', a) INTO r;
  RETURN r;
END
$$;

COMMENT ON FUNCTION experiment.dims_columns_sql(text) IS
  'internal: the SELECT list of the dimension columns d<j> of a relation of per-unit values';

-- an experiment's units: pg_temp.exp_units (unit_id, variant, t0, multi, and d<j> when
-- pg_temp.exp_dims exists); the first exposure before end_at defines variant, start and
-- dimension values, multi marks units exposed to several variants
CREATE OR REPLACE FUNCTION experiment.create_units_table(e experiment.experiments) RETURNS void
  LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
  SET search_path = pg_catalog, experiment, pg_temp
  -- grouping a million units in a hash table is bound by random memory access; the primary key
  -- of experiment.exposures delivers the rows in unit order, so a streaming GroupAggregate over
  -- it is about twice as fast
  SET enable_hashagg = off
AS $$
BEGIN
  EXECUTE format(
    'CREATE TEMP TABLE exp_units ON COMMIT DROP AS '
    'SELECT xp.unit_id, pg_catalog.min(xp.variant) AS variant, pg_catalog.min(xp.exposed_at) AS t0, '
    '       pg_catalog.min(xp.variant) <> pg_catalog.max(xp.variant) AS multi%s '
    'FROM experiment.exposures xp '
    'WHERE xp.experiment_id = %L AND (%L::timestamptz IS NULL OR xp.exposed_at < %L::timestamptz) '
    'GROUP BY xp.unit_id', experiment.first_exposure_dims_sql(), e.id, e.end_at, e.end_at);
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
      SELECT d.name, d.kind <> 'ratio' AND d.aggregation <> 'quantile' AND d.cuped_lookback IS NOT NULL AS pre
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

-- what the stored per-unit values of an experiment depend on: when it changes, the next
-- refresh is full (the tests, caps and CUPED covariates are recomputed at every refresh)
-- (PL/pgSQL, not SQL: a SQL function's plan would outlive the temporary table it reads when
-- one transaction refreshes several experiments)
CREATE OR REPLACE FUNCTION experiment.unit_values_definition(e experiment.experiments) RETURNS text
  LANGUAGE plpgsql STABLE PARALLEL UNSAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
BEGIN
  RETURN pg_catalog.md5(pg_catalog.concat_ws('|', 'layout 1', e.end_at::text,
           (SELECT pg_catalog.string_agg(pg_catalog.concat_ws(',', b.i, quote_literal(b.name), b.pre, m.source::oid,
                                                  quote_literal(m.unit_column), quote_literal(m.time_column),
                                                  quote_nullable(m.value_column), m.aggregation, m.quantile_level, m.delay,
                                                  m."window", CASE WHEN b.pre THEN m.cuped_lookback END,
                                                  m.owner::oid),
                                 ';' ORDER BY b.i)
            FROM pg_temp.exp_base b JOIN experiment.metrics m ON m.name = b.name),
           -- the dimension columns d<j> (none: the digest of an experiment without dimensions)
           (SELECT 'dimensions ' || pg_catalog.string_agg(pg_catalog.concat_ws(',', d.j, quote_literal(d.name), d.attribute,
                                                                  quote_nullable(d.attribute_key)), ';' ORDER BY d.j)
            FROM pg_temp.exp_dims d)));
END
$$;

COMMENT ON FUNCTION experiment.unit_values_definition(experiment.experiments) IS
  'internal: digest of what an experiment''s stored per-unit values depend on (its end, its base metrics'' sources, columns, windows and owners, its dimensions'' attributes)';

-- the columns of the stored per-unit values that one scan fills: their value for a unit that
-- has no event (sums and counts 0; the settled maximum of no event NULL, so that it merges),
-- and the SQL of their new value from a scan in split mode (alias x) merged into the stored one
-- (alias old; NULL: nothing stored, the scan read everything)
CREATE OR REPLACE FUNCTION experiment.unit_value_layout(s experiment.source_scan, x text, old text)
  RETURNS TABLE (col text, empty text, value_sql text)
  LANGUAGE sql IMMUTABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
  WITH spec AS (
    SELECT t.k, t.target, substr(t.target, 2) AS i, s.aggs[t.k] AS agg,
           CASE substr(t.target, 1, 1) WHEN 'v' THEN 'c' ELSE 'q' END || substr(t.target, 2) AS settled,
           format(CASE WHEN s.aggs[t.k] = 'sketch' THEN '%s.sketches[%s]' ELSE '%s.vals[%s]' END, x, t.k) AS before_split,
           format(CASE WHEN s.aggs[t.k] = 'sketch' THEN '%s.sketches[%s]' ELSE '%s.vals[%s]' END,
                  x, pg_catalog.array_length(s.targets, 1) + t.k) AS from_split,
           format('coalesce(%s.skipped[%s], 0)', x, t.k) AS skipped_before,
           format('coalesce(%s.skipped[%s], 0)', x, pg_catalog.array_length(s.targets, 1) + t.k) AS skipped_from
    FROM pg_catalog.unnest(s.targets) WITH ORDINALITY AS t(target, k)
  ), settled AS (
    SELECT sp.*, CASE WHEN old IS NULL THEN sp.before_split
                      ELSE experiment.merged_sql(sp.agg, old || '.' || sp.settled, sp.before_split, false) END AS settled_sql
    FROM spec sp
  )
  SELECT y.col, y.empty, y.value_sql FROM (
    SELECT st.k, 1 AS o, st.target AS col, CASE WHEN st.agg = 'sketch' THEN 'NULL' ELSE '0' END AS empty,
           experiment.merged_sql(st.agg, st.settled_sql, st.from_split, true) AS value_sql
    FROM settled st
    UNION ALL
    SELECT st.k, 2, st.settled, CASE WHEN st.agg IN ('max', 'sketch') THEN 'NULL' ELSE '0' END, st.settled_sql
    FROM settled st
    UNION ALL
    SELECT pg_catalog.max(st.k), 3, 's' || st.i, '0',
           concat(old || '.cs' || st.i || ' + ',
                  pg_catalog.string_agg(st.skipped_before || ' + ' || st.skipped_from, ' + ' ORDER BY st.k))
    FROM settled st GROUP BY st.i
    UNION ALL
    SELECT pg_catalog.max(st.k), 4, 'cs' || st.i, '0',
           concat(old || '.cs' || st.i || ' + ', pg_catalog.string_agg(st.skipped_before, ' + ' ORDER BY st.k))
    FROM settled st GROUP BY st.i
  ) y ORDER BY y.k, y.o
$$;

-- the number of unit-hash partitions that keeps the per-unit values of one partition within
-- experiment.refresh_memory (src/unit_values.c; doc/scaling.md, "Memory")
CREATE OR REPLACE FUNCTION experiment.unit_value_partitions(units bigint, specs integer, sources integer, key_bytes float8)
  RETURNS integer
  AS 'MODULE_PATHNAME', 'exp_unit_value_partitions'
  LANGUAGE C STABLE STRICT PARALLEL SAFE;

COMMENT ON FUNCTION experiment.unit_value_partitions(bigint, integer, integer, float8) IS
  'internal: the number of unit-hash partitions a refresh of units units (scans of at most specs specs, '
  'sources scans, unit ids of key_bytes bytes on average) uses within experiment.refresh_memory (1: no bound)';

-- SQL of "unit_id is in partition part of nparts" (true when nparts is 1)
CREATE OR REPLACE FUNCTION experiment.unit_partition_sql(unit_id text, nparts integer, part integer) RETURNS text
  LANGUAGE sql IMMUTABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
  SELECT CASE WHEN nparts <= 1 THEN 'true'
              ELSE format('(pg_catalog.hashtext(%s) OPERATOR(pg_catalog.&) 2147483647) OPERATOR(pg_catalog.%%) %s = %s',
                          unit_id, nparts, part) END
$$;

COMMENT ON FUNCTION experiment.unit_partition_sql(text, integer, integer) IS
  'internal: SQL of the condition that a unit id is in one of a refresh''s unit-hash partitions';

-- the partitions of a refresh of the units of relation units_from (SQL, alias u) whose sources
-- experiment.source_specs() lists
CREATE OR REPLACE FUNCTION experiment.refresh_partitions(e experiment.experiments, units bigint, key_bytes float8)
  RETURNS integer
  LANGUAGE plpgsql STABLE PARALLEL UNSAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
DECLARE
  r integer;
BEGIN
  SELECT experiment.unit_value_partitions(coalesce(units, 0), coalesce(pg_catalog.max(pg_catalog.cardinality(s.targets)), 0),
                                          count(*)::integer, coalesce(key_bytes, 16))
    INTO r FROM experiment.source_specs(e, NULL, NULL, true) s;
  RETURN r;
END
$$;

COMMENT ON FUNCTION experiment.refresh_partitions(experiment.experiments, bigint, float8) IS
  'internal: the number of unit-hash partitions of a refresh of an experiment''s units within experiment.refresh_memory';

-- the stored per-unit values of an experiment brought up to date, incrementally when it can:
-- the table's name, whether the refresh was full or incremental and why it was full, and the
-- number of unit-hash partitions its scans used (experiment.refresh_memory)
-- (a new result column)
DROP FUNCTION experiment.refresh_unit_values(experiment.experiments, boolean);

CREATE OR REPLACE FUNCTION experiment.refresh_unit_values(e experiment.experiments, force_full boolean,
    OUT relation name, OUT mode text, OUT reason text, OUT partitions integer)
  LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
DECLARE
  st experiment.unit_value_tables;
  wm experiment.source_watermarks;
  sc experiment.source_scan;
  fp text;
  xsince timestamptz;
  several text;
  unmarked text;
  min_t0 timestamptz;
  max_t0 timestamptz;
  latest timestamptz;
  split timestamptz;
  scan_from timestamptz;
  vals_cols text := '';
  joins text := '';
  empty_cols text;
  empty_vals text;
  reset_set text;
  merge_set text;
  changed text;
  grantee text;
  sel text;
  units_where text;
  nunits bigint;
  key_bytes float8;
  no_units text := experiment.unit_arrays_sql(
    '(SELECT NULL::text AS unit_id, NULL::text AS variant, NULL::timestamptz AS t0 WHERE false) u');
BEGIN
  PERFORM experiment.drop_refresh_tables();
  PERFORM experiment.create_base_table(e);
  PERFORM experiment.create_dims_table(e);
  fp := experiment.unit_values_definition(e);
  SELECT * INTO st FROM experiment.unit_value_tables u WHERE u.experiment_id = e.id FOR UPDATE;
  -- (before the exposures are read: the sessions that could still store earlier ones)
  xsince := experiment.exposures_watermark(st.exposures_since);
  SELECT pg_catalog.string_agg(s.source::text, ', ' ORDER BY s.src_no) FILTER (WHERE s.time_column IS NULL),
         -- a watermark that is missing, or whose allowance grew (the events it now allows
         -- again were settled: only a full refresh reads them)
         pg_catalog.string_agg(s.source::text, ', ' ORDER BY s.src_no)
           FILTER (WHERE s.time_column IS NOT NULL AND NOT EXISTS (
                     SELECT FROM experiment.source_watermarks w
                     WHERE w.experiment_id = e.id AND w.source = s.source AND w.unit_column = s.unit_column
                       AND w.owner = s.reader AND w.time_column = s.time_column
                       AND w.late_events >= s.late_events))
    INTO several, unmarked
  FROM experiment.source_specs(e, NULL, NULL, true) s;
  reason := CASE
    WHEN force_full THEN 'requested (full => true)'
    WHEN st.experiment_id IS NULL THEN 'no stored per-unit values yet'
    WHEN pg_catalog.to_regclass(format('experiment.%I', st.relation)) IS NULL THEN 'the stored per-unit values are missing'
    -- (an unlogged table: empty after a crash)
    WHEN experiment.unit_value_table_empty(st.relation) THEN 'no stored per-unit values (none yet, or lost in a crash)'
    WHEN st.definition IS DISTINCT FROM fp THEN 'the experiment''s end, its metrics or its dimensions changed'
    WHEN several IS NOT NULL THEN format('the metrics of %s read several time columns: no watermark', several)
    WHEN unmarked IS NOT NULL THEN format('no watermark of %s, or its lateness allowance grew', unmarked)
  END;

  IF reason IS NOT NULL THEN
    mode := 'full';
    -- units (those in several variants kept, marked)
    PERFORM experiment.create_units_table(e);
    SELECT pg_catalog.min(u.t0), pg_catalog.max(u.t0), count(*), pg_catalog.avg(pg_catalog.octet_length(u.unit_id))
      INTO min_t0, max_t0, nunits, key_bytes FROM pg_temp.exp_units u WHERE NOT u.multi;
    -- beyond experiment.refresh_memory, the units in unit-hash partitions, each scanned apart
    partitions := experiment.refresh_partitions(e, nunits, key_bytes);

    CREATE TEMP TABLE exp_marks (LIKE experiment.source_watermarks) ON COMMIT DROP;
    FOR sc IN SELECT * FROM experiment.source_specs(e, min_t0, max_t0, true) LOOP
      IF sc.time_column IS NULL THEN
        split := 'infinity';   -- no watermark: everything is settled, and the next refresh is full again
        latest := NULL;
      ELSE
        -- the latest event time now, not the one remembered (a full refresh after a
        -- future-dated event was deleted starts afresh; an index on the time column
        -- answers this without a scan)
        EXECUTE format('SELECT x.latest FROM %s, %s x', no_units,
                       experiment.source_call_sql(sc, e.end_at, sc.lower_bound, sc.upper_bound, NULL, true, false))
          INTO latest;
        split := coalesce(experiment.watermark_split(latest, sc.late_events), '-infinity');
      END IF;
      INSERT INTO pg_temp.exp_marks VALUES (e.id, sc.source, sc.unit_column, sc.reader, sc.time_column, sc.late_events,
                                            split, latest);
      SELECT vals_cols || pg_catalog.string_agg(format(', %s AS %s', l.value_sql, l.col), '')
        INTO vals_cols FROM experiment.unit_value_layout(sc, format('x%s', sc.src_no), NULL) l;
      joins := joins || format('%s %s x%s%s', CASE WHEN sc.src_no = 1 THEN ',' ELSE ' JOIN' END,
        experiment.source_call_sql(sc, e.end_at, sc.lower_bound, sc.upper_bound, split, false, false),
        sc.src_no, CASE WHEN sc.src_no = 1 THEN '' ELSE format(' ON x%s.unit_id = x1.unit_id', sc.src_no) END);
    END LOOP;

    -- unlogged (derived data, rebuilt in full when a crash empties it) and with room on each
    -- page for the updates of incremental refreshes
    relation := 'unit_values_' || pg_catalog.nextval('experiment.unit_value_tables_seq');
    -- (the dimension values d<j> of the first exposures: from the units, joined back when a
    -- source was scanned)
    IF joins = '' THEN
      EXECUTE format('CREATE UNLOGGED TABLE experiment.%I WITH (fillfactor = 80) AS '
                     'SELECT u.unit_id, u.variant, u.t0, false AS multi, false AS reset%s '
                     'FROM pg_temp.exp_units u WHERE NOT u.multi', relation, experiment.dims_columns_sql('u'));
    ELSE
      -- one statement per partition (the first creates the table), each with the units of its
      -- partition and one scan of each source
      FOR part IN 0 .. partitions - 1 LOOP
        units_where := format('pg_temp.exp_units u WHERE NOT u.multi AND %s',
                              experiment.unit_partition_sql('u.unit_id', partitions, part));
        IF experiment.dims_columns_sql('du') = '' THEN
          sel := format('SELECT x1.unit_id, x1.variant, x1.t0, false AS multi, false AS reset%s FROM %s%s '
                        'WHERE x1.unit_id IS NOT NULL', vals_cols, experiment.unit_arrays_sql(units_where), joins);
        ELSE
          sel := format('SELECT x1.unit_id, x1.variant, x1.t0, false AS multi, false AS reset%s%s FROM %s%s '
                        'JOIN pg_temp.exp_units du ON du.unit_id = x1.unit_id', vals_cols,
                        experiment.dims_columns_sql('du'), experiment.unit_arrays_sql(units_where), joins);
        END IF;
        IF part = 0 THEN
          EXECUTE format('CREATE UNLOGGED TABLE experiment.%I WITH (fillfactor = 80) AS %s', relation, sel);
        ELSE
          EXECUTE format('INSERT INTO experiment.%I %s', relation, sel);
        END IF;
      END LOOP;
    END IF;
    EXECUTE format('INSERT INTO experiment.%I (unit_id, variant, t0, multi, reset%s) '
                   'SELECT u.unit_id, u.variant, u.t0, true, false%s FROM pg_temp.exp_units u WHERE u.multi', relation,
                   replace(experiment.dims_columns_sql('u'), 'u.', ''), experiment.dims_columns_sql('u'));
    -- (the index finds the units of new exposures; it is on a column no update changes, so
    -- updates stay HOT)
    EXECUTE format('ALTER TABLE experiment.%I ALTER unit_id SET NOT NULL, ADD UNIQUE (unit_id)', relation);
    EXECUTE format('ALTER EXTENSION experiment ADD TABLE experiment.%I', relation);
    -- per-unit values are for the owner alone, whatever default privileges say
    FOR grantee IN SELECT DISTINCT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE a.grantee::regrole::text END
                   FROM pg_catalog.pg_class c, LATERAL pg_catalog.aclexplode(c.relacl) a
                   WHERE c.oid = format('experiment.%I', relation)::regclass AND a.grantee <> c.relowner LOOP
      EXECUTE format('REVOKE ALL ON experiment.%I FROM %s', relation, grantee);
    END LOOP;
    EXECUTE format('COMMENT ON TABLE experiment.%I IS %L', relation,
                   format('stored per-unit values of experiment %s (experiment.refresh(), doc/scaling.md)', e.id));
    IF st.experiment_id IS NOT NULL THEN
      PERFORM experiment.drop_unit_value_table(st.relation);
      UPDATE experiment.unit_value_tables u
        SET relation = refresh_unit_values.relation, definition = fp, exposures_since = xsince, refreshed_at = pg_catalog.now()
        WHERE u.experiment_id = e.id;
      DELETE FROM experiment.source_watermarks w WHERE w.experiment_id = e.id;
    ELSE
      INSERT INTO experiment.unit_value_tables (experiment_id, relation, definition, exposures_since, refreshed_at)
      VALUES (e.id, relation, fp, xsince, pg_catalog.now());
    END IF;
    INSERT INTO experiment.source_watermarks SELECT * FROM pg_temp.exp_marks;
    RETURN;
  END IF;

  -- incremental: the exposures received since the watermark change units or add them
  mode := 'incremental';
  relation := st.relation;
  -- the units: those of the previous refresh and the new ones (ids' length from a sample)
  EXECUTE format('SELECT pg_catalog.avg(pg_catalog.octet_length(u.unit_id)) FROM (SELECT t.unit_id FROM experiment.%I t LIMIT 1000) u',
                 relation) INTO key_bytes;
  -- (with the dimension values of the earliest new exposure: they are the unit's when it is
  -- new, or when that exposure comes before its first one)
  EXECUTE format(
    'CREATE TEMP TABLE exp_newx ON COMMIT DROP AS '
    'SELECT xp.unit_id, pg_catalog.min(xp.variant) AS minv, pg_catalog.max(xp.variant) AS maxv, '
    '       pg_catalog.min(xp.exposed_at) AS t0%s '
    'FROM experiment.exposures xp '
    'WHERE xp.experiment_id = %L AND xp.received_at >= %L::timestamptz '
    '  AND (%L::timestamptz IS NULL OR xp.exposed_at < %L::timestamptz) '
    'GROUP BY xp.unit_id', experiment.first_exposure_dims_sql(), e.id, st.exposures_since, e.end_at, e.end_at);
  ANALYZE pg_temp.exp_newx;
  SELECT coalesce(f.enrolled_units, 0) + coalesce(f.multi_variant_units, 0) INTO nunits
    FROM experiment.refreshes f WHERE f.experiment_id = e.id;
  nunits := coalesce(nunits, 0) + (SELECT count(*) FROM pg_temp.exp_newx);
  partitions := experiment.refresh_partitions(e, nunits, key_bytes);
  SELECT coalesce(pg_catalog.string_agg(l.col, ', ' ORDER BY s.src_no, l.ord), ''),
         coalesce(pg_catalog.string_agg(l.empty, ', ' ORDER BY s.src_no, l.ord), ''),
         coalesce(pg_catalog.string_agg(format('%s = CASE WHEN n.t0 < u.t0 THEN %s ELSE u.%s END', l.col, l.empty, l.col),
                                        ', ' ORDER BY s.src_no, l.ord), '')
    INTO empty_cols, empty_vals, reset_set
  FROM experiment.source_specs(e, NULL, NULL, true) s,
       LATERAL (SELECT y.*, row_number() OVER () AS ord FROM experiment.unit_value_layout(s, 'x', 'u') y) l;
  -- the dimension values: those of the new first exposure
  SELECT empty_cols || CASE WHEN empty_cols <> '' AND d.cols <> '' THEN ', ' ELSE '' END || d.cols,
         empty_vals || CASE WHEN empty_vals <> '' AND d.cols <> '' THEN ', ' ELSE '' END || d.vals,
         reset_set || CASE WHEN reset_set <> '' AND d.cols <> '' THEN ', ' ELSE '' END || d.sets
    INTO empty_cols, empty_vals, reset_set
    FROM (SELECT coalesce(pg_catalog.string_agg(format('d%s', x.j), ', ' ORDER BY x.j), '') AS cols,
                 coalesce(pg_catalog.string_agg(format('n.d%s', x.j), ', ' ORDER BY x.j), '') AS vals,
                 coalesce(pg_catalog.string_agg(format('d%s = CASE WHEN n.t0 < u.t0 THEN n.d%s ELSE u.d%s END', x.j, x.j, x.j),
                                                ', ' ORDER BY x.j), '') AS sets
          FROM pg_temp.exp_dims x) d;
  -- a unit exposed to another variant leaves the analysis; one exposed earlier is read again in full
  EXECUTE format('UPDATE experiment.%I u SET multi = u.multi OR n.minv <> n.maxv OR n.minv <> u.variant, '
                 'variant = least(u.variant, n.minv), t0 = least(u.t0, n.t0), reset = u.reset OR n.t0 < u.t0%s '
                 'FROM pg_temp.exp_newx n WHERE n.unit_id = u.unit_id AND NOT u.multi '
                 'AND (n.minv <> u.variant OR n.maxv <> u.variant OR n.t0 < u.t0)',
                 relation, CASE WHEN reset_set = '' THEN '' ELSE ', ' || reset_set END);
  EXECUTE format('INSERT INTO experiment.%I (unit_id, variant, t0, multi, reset%s) '
                 'SELECT n.unit_id, n.minv, n.t0, n.minv <> n.maxv, true%s FROM pg_temp.exp_newx n '
                 'WHERE NOT EXISTS (SELECT FROM experiment.%I u WHERE u.unit_id = n.unit_id)',
                 relation, CASE WHEN empty_cols = '' THEN '' ELSE ', ' || empty_cols END,
                 CASE WHEN empty_vals = '' THEN '' ELSE ', ' || empty_vals END, relation);

  -- each source: events from its watermark on for every unit, all events of new and reset units
  -- (new and reset units are among those of the new exposures; the latest first exposure is at
  -- most the later of the previous refresh's and the new exposures')
  EXECUTE format('SELECT pg_catalog.min(u.t0) FILTER (WHERE u.reset) FROM pg_temp.exp_newx n '
                 'JOIN experiment.%I u ON u.unit_id = n.unit_id WHERE NOT u.multi', relation) INTO min_t0;
  SELECT greatest((SELECT f.last_exposure FROM experiment.refreshes f WHERE f.experiment_id = e.id),
                  (SELECT pg_catalog.max(n.t0) FROM pg_temp.exp_newx n))
    INTO max_t0;
  FOR sc IN SELECT * FROM experiment.source_specs(e, min_t0, max_t0, true) LOOP
    SELECT * INTO wm FROM experiment.source_watermarks w
    WHERE w.experiment_id = e.id AND w.source = sc.source AND w.unit_column = sc.unit_column AND w.owner = sc.reader;
    -- the split: from the latest event time the previous scan saw (this scan's is stored for
    -- the next), never earlier than the watermark (which stays while no event was seen)
    split := greatest(wm.settled_before, experiment.watermark_split(wm.latest_event, sc.late_events));
    SELECT coalesce(pg_catalog.string_agg(format('%s = %s', l.col, l.value_sql), ', '), ''),
           format('(%s) IS DISTINCT FROM (%s)', pg_catalog.string_agg('u.' || l.col, ', '),
                  pg_catalog.string_agg(l.value_sql, ', '))
      INTO merge_set, changed
    FROM experiment.unit_value_layout(sc, 'x', 'u') l;
    -- the units read before: their events from the watermark on (the scan's lower bound); the
    -- new and reset units apart, all their events, with a hash table of their own that is small
    -- (beyond experiment.refresh_memory, partition by partition: each scan with the units of one)
    CREATE TEMP TABLE exp_touch (unit_id text, vals float8[], skipped bigint[], latest timestamptz,
                                 sketches experiment.sketch[]) ON COMMIT DROP;
    FOR part IN 0 .. partitions - 1 LOOP
      EXECUTE format('INSERT INTO pg_temp.exp_touch SELECT x.unit_id, x.vals, x.skipped, x.latest, x.sketches '
                     'FROM %s, %s x',
                     experiment.unit_arrays_sql(format('experiment.%I u WHERE NOT u.multi AND NOT u.reset AND %s', relation,
                                                       experiment.unit_partition_sql('u.unit_id', partitions, part))),
                     experiment.source_call_sql(sc, e.end_at, wm.settled_before, sc.upper_bound, split, false, true));
      IF min_t0 IS NOT NULL THEN
        EXECUTE format('INSERT INTO pg_temp.exp_touch SELECT x.unit_id, x.vals, x.skipped, NULL, x.sketches '
                       'FROM %s, %s x WHERE x.unit_id IS NOT NULL',
                       experiment.unit_arrays_sql(format('experiment.%I u WHERE NOT u.multi AND u.reset AND %s', relation,
                                                         experiment.unit_partition_sql('u.unit_id', partitions, part))),
                       experiment.source_call_sql(sc, e.end_at, sc.lower_bound, sc.upper_bound, split, false, true));
      END IF;
    END LOOP;
    ANALYZE pg_temp.exp_touch;
    -- (a unit whose events are all read again unchanged is not written)
    EXECUTE format('UPDATE experiment.%I u SET %s FROM pg_temp.exp_touch x WHERE x.unit_id = u.unit_id AND %s',
                   relation, merge_set, changed);
    -- (every partition's scan reads the same rows: the same latest time)
    SELECT pg_catalog.max(x.latest) INTO latest FROM pg_temp.exp_touch x WHERE x.unit_id IS NULL;
    DROP TABLE pg_temp.exp_touch;
    UPDATE experiment.source_watermarks w
      SET settled_before = split, latest_event = greatest(w.latest_event, latest), late_events = sc.late_events
      WHERE w.experiment_id = e.id AND w.source = sc.source AND w.unit_column = sc.unit_column AND w.owner = sc.reader;
  END LOOP;
  EXECUTE format('UPDATE experiment.%I u SET reset = false FROM pg_temp.exp_newx n '
                 'WHERE u.unit_id = n.unit_id AND u.reset', relation);
  UPDATE experiment.unit_value_tables u SET exposures_since = xsince, refreshed_at = pg_catalog.now()
    WHERE u.experiment_id = e.id;
END
$$;

-- the per-unit values of an experiment's metrics, as refresh and aa_test read them: temporary
-- tables exp_units (the analysed units: first variant and exposure), exp_base (the base
-- metrics, numbered i) and, when keep or a metric has a percentile cap, exp_vals (unit_id,
-- variant, v<i> = the value of base metric i, p<i> = its pre-period value); vals_from is
-- exp_vals or the query that computes it; capped and pre_capped are the SQL of v<i> and p<i>
-- capped (experiment.winsorization_caps())
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
  parts integer := 1;
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

  -- beyond experiment.refresh_memory, the units in unit-hash partitions (kept in exp_vals)
  IF src_no > 0 THEN
    SELECT experiment.refresh_partitions(e, nunits, pg_catalog.avg(pg_catalog.octet_length(u.unit_id)))
      INTO parts FROM pg_temp.exp_units u;
  END IF;
  -- caps: pooled percentiles over all analysed units (a second read of the values: they are kept)
  IF keep OR parts > 1 OR EXISTS (SELECT FROM pg_temp.exp_base b JOIN experiment.metrics m2 ON m2.name = b.name
                                  WHERE m2.winsorize IS NOT NULL OR m2.winsorize_lower IS NOT NULL) THEN
    IF parts = 1 THEN
      EXECUTE 'CREATE TEMP TABLE exp_vals ON COMMIT DROP AS ' || vals_sql;
    ELSE
      -- one statement per partition, each with the units of its partition and a scan of each source
      FOR part IN 0 .. parts - 1 LOOP
        vals_sql := format('SELECT x1.unit_id, x1.variant%s FROM %s%s', vals_cols,
                           experiment.unit_arrays_sql('pg_temp.exp_units u WHERE '
                                                      || experiment.unit_partition_sql('u.unit_id', parts, part)),
                           joins);
        EXECUTE CASE WHEN part = 0 THEN 'CREATE TEMP TABLE exp_vals ON COMMIT DROP AS '
                     ELSE 'INSERT INTO pg_temp.exp_vals ' END || vals_sql;
      END LOOP;
    END IF;
    vals_from := 'pg_temp.exp_vals';
  ELSE
    vals_from := '(' || vals_sql || ')';
  END IF;
  SELECT w.capped, w.pre_capped INTO capped, pre_capped FROM experiment.winsorization_caps(vals_from) w;
END
$$;

-- the SQL of the moments of an experiment's metrics over per-unit values (alias v), for
-- experiment.refresh(): aggs, the aggregates ", experiment.moments(...) AS a<j>, sum(...) AS k<j>
-- [, experiment.moments(...) AS c<j>]" of each metric j from the capped values (capped[i],
-- pre_capped[i]: SQL of base metric i's capped value and pre-period value), and unpivot, the rows
-- ", (metric, a.a<j>, a.c<j>, cap, cap_lower, a.k<j>)" that turn them into one row per metric
-- (caps[i], lower_caps[i]: SQL of base metric i's caps); a metric added while the refresh ran
-- has no stored values and is left out
CREATE OR REPLACE FUNCTION experiment.metric_moments_sql(e experiment.experiments, capped text[], pre_capped text[],
    caps text[], lower_caps text[], quantiles boolean, OUT aggs text, OUT unpivot text)
  LANGUAGE plpgsql STABLE PARALLEL UNSAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
DECLARE
  r record;
BEGIN
  aggs := '';
  unpivot := '';
    FOR r IN SELECT m2.name, m2.kind, b.i, b.pre, m2.aggregation, m2.quantile_level,
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
               AND (quantiles OR m2.aggregation <> 'quantile')
             ORDER BY m2.name LOOP
      IF r.kind = 'ratio' THEN
        aggs := aggs || format(', experiment.moments(%s, %s) AS a%s, pg_catalog.sum(v.s%s + v.s%s) AS k%s',
                               capped[r.ni], capped[r.di], r.j, r.ni, r.di, r.j);
        IF r.rpre THEN
          aggs := aggs || format(', experiment.moments(%s, %s, %s, %s) AS c%s',
                                 capped[r.ni], capped[r.di], pre_capped[r.ni], pre_capped[r.di], r.j);
        END IF;
        unpivot := unpivot || format(', (%L, a.a%s, %s, NULL::float8, NULL::float8, a.k%s, NULL::experiment.sketch)',
                                     r.name, r.j,
                                     CASE WHEN r.rpre THEN format('a.c%s', r.j) ELSE 'NULL::experiment.moments' END, r.j);
      ELSIF r.aggregation = 'quantile' AND r.quantile_level = 'event' THEN
        -- an event quantile: the merged sketch of the units' events (the per-unit moments of the
        -- events at or below the arm's quantile are computed by refresh(), once the quantile is known)
        aggs := aggs || format(', experiment.merge(v.v%s) AS q%s, pg_catalog.sum(v.s%s) AS k%s', r.i, r.j, r.i, r.j);
        unpivot := unpivot || format(', (%L, NULL::experiment.moments, NULL::experiment.moments, NULL::float8, '
                                     'NULL::float8, a.k%s, a.q%s)', r.name, r.j, r.j);
      ELSIF r.aggregation = 'quantile' THEN
        -- a quantile of units: the sketch of the per-unit sums (and their moments)
        aggs := aggs || format(', experiment.moments(v.v%s) AS a%s, pg_catalog.sum(v.s%s) AS k%s, '
                               'experiment.sketch(v.v%s) AS q%s', r.i, r.j, r.i, r.j, r.i, r.j);
        unpivot := unpivot || format(', (%L, a.a%s, NULL::experiment.moments, NULL::float8, NULL::float8, a.k%s, a.q%s)',
                                     r.name, r.j, r.j, r.j);
      ELSE
        aggs := aggs || format(', experiment.moments(%s) AS a%s, pg_catalog.sum(v.s%s) AS k%s',
                               capped[r.i], r.j, r.i, r.j);
        IF r.pre THEN
          aggs := aggs || format(', experiment.moments(%s, %s) AS c%s', capped[r.i], pre_capped[r.i], r.j);
        END IF;
        unpivot := unpivot || format(', (%L, a.a%s, %s, %s, %s, a.k%s, NULL::experiment.sketch)', r.name, r.j,
                                     CASE WHEN r.pre THEN format('a.c%s', r.j) ELSE 'NULL::experiment.moments' END,
                                     caps[r.i], lower_caps[r.i], r.j);
      END IF;
    END LOOP;
END
$$;

COMMENT ON FUNCTION experiment.metric_moments_sql(experiment.experiments, text[], text[], text[], text[], boolean) IS
  'internal: the SQL of the per-metric moments aggregates of refresh() over capped per-unit values (and the sketches of quantile '
  'metrics, or without quantiles no quantile metric), and of the rows (metric, m, c, cap, cap_lower, skipped, q) that unpivot them';

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
  IF pg_catalog.pg_size_bytes(pg_catalog.current_setting('experiment.refresh_memory')) > 0 THEN
    PERFORM pg_catalog.set_config('work_mem', least(262144, greatest(64,
      pg_catalog.pg_size_bytes(pg_catalog.current_setting('experiment.refresh_memory')) / 4096))::text || 'kB', true);
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

    -- moments of every metric per variant and day of first exposure, in one pass over the
    -- per-unit values; merged, they are the per-variant moments (and, cumulatively by day,
    -- the results over time below)
    IF unpivot <> '' THEN
      EXECUTE format(
        'CREATE TEMP TABLE exp_daily ON COMMIT DROP AS '
        'SELECT k.metric, a.variant, a.day, a.units, k.m, k.c, k.cap, k.cap_lower, k.skipped, k.q '
        'FROM (SELECT v.variant, (v.t0 AT TIME ZONE ''UTC'')::date AS day, count(*) AS units%s '
        '      FROM %s v GROUP BY 1, 2) a '
        'CROSS JOIN LATERAL (VALUES %s) AS k(metric, m, c, cap, cap_lower, skipped, q)',
        aggs, vals_from, substr(unpivot, 3));
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
    CROSS JOIN LATERAL (SELECT CASE WHEN m2.aggregation = 'quantile' THEN 'quantile'
                                    ELSE experiment.metric_method(m2.kind, c.cuped_moments, t.cuped_moments) END AS method) k
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
      CROSS JOIN LATERAL (SELECT CASE WHEN m3.aggregation = 'quantile' THEN 'quantile'
                                      ELSE experiment.metric_method(m3.kind, cc.c, ct.c) END AS method) k
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
      EXECUTE format('CREATE TEMP TABLE exp_dim_units ON COMMIT DROP AS '
                     'SELECT d.j, d.value, v.variant, count(*) AS units FROM %s v '
                     'CROSS JOIN LATERAL (VALUES %s) AS d(j, value) GROUP BY 1, 2, 3', vals_from, raw_sql);
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
        EXECUTE format(
          'INSERT INTO experiment.dimension_stats (experiment_id, dimension, value, metric, variant, units, moments, '
          '  cuped_moments, cap, cap_lower, skipped_values, refreshed_at) '
          'SELECT %L, %L, a.value, k.metric, a.variant, a.units, k.m, k.c, k.cap, k.cap_lower, coalesce(k.skipped, 0), %L '
          'FROM (SELECT v.dim_value AS value, v.variant, count(*) AS units%s FROM %s v GROUP BY 1, 2) a '
          'CROSS JOIN LATERAL (VALUES %s) AS k(metric, m, c, cap, cap_lower, skipped)',
          e.id, dm.name, ts, d_aggs, dim_from, substr(d_unpivot, 3));
        -- the strata of post-stratification: the values of stratify_by, with the pooled caps of
        -- the overall results (a pass of their own where this dimension's caps are per value)
        IF dm.name = e.stratify_by THEN
          IF dm.caps_per_value THEN
            EXECUTE format(
              'CREATE TEMP TABLE exp_strata ON COMMIT DROP AS SELECT a.value, k.metric, a.variant, k.m, k.c '
              'FROM (SELECT v.dim_value AS value, v.variant%s FROM %s v GROUP BY 1, 2) a '
              'CROSS JOIN LATERAL (VALUES %s) AS k(metric, m, c, cap, cap_lower, skipped)',
              nq_aggs, dim_from, substr(nq_unpivot, 3));
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

CREATE OR REPLACE FUNCTION experiment.refresh_all() RETURNS integer
  LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
DECLARE
  id text;
  done integer := 0;
  msg text;
  detail text;
BEGIN
  PERFORM experiment.process_exposures_staging();
  FOR id IN SELECT ex.id FROM experiment.experiments ex WHERE ex.status = 'running' ORDER BY ex.id LOOP
    BEGIN
      PERFORM experiment.refresh(id);
      done := done + 1;
    EXCEPTION WHEN OTHERS THEN
      -- the message and, where there is one, the detail that says why
      GET STACKED DIAGNOSTICS detail = PG_EXCEPTION_DETAIL;
      msg := SQLERRM || coalesce(nullif(' (' || detail || ')', ' ()'), '');
      RAISE WARNING 'refresh of experiment "%" failed: %', id, msg;
      INSERT INTO experiment.refreshes AS f (experiment_id, error, error_at)
      VALUES (id, msg, clock_timestamp())
      ON CONFLICT ON CONSTRAINT refreshes_pkey DO UPDATE SET error = excluded.error, error_at = excluded.error_at;
    END;
  END LOOP;
  -- interactions of the overlapping experiments (src/sql/099_interact.sql), from the values just stored
  BEGIN
    PERFORM experiment.refresh_interactions();
  EXCEPTION WHEN OTHERS THEN
    RAISE WARNING 'interaction detection failed: %', SQLERRM;
  END;
  RETURN done;
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
  -- (src/sql/099_design_cluster.sql: its re-splits of units would ignore the clusters)
  IF e.cluster_relation IS NOT NULL OR e.cluster_attribute IS NOT NULL OR e.switchback_window IS NOT NULL THEN
    RAISE EXCEPTION 'aa_test of experiment "%": it re-splits units, and the experiment is randomised by %', e.id,
      CASE WHEN e.switchback_window IS NOT NULL THEN 'switchback window' ELSE 'cluster' END
      USING ERRCODE = 'invalid_parameter_value',
            HINT = 'aa_test() is for experiments randomised by unit; test/test_design_cluster_calibration.py shows how to simulate clustered A/A tests.';
  END IF;
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
           -- (quantile metrics are not simulated: their tests need per-arm sketches)
           WHERE em.experiment_id = e.id AND m2.aggregation <> 'quantile' ORDER BY m2.name LOOP
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

-- a role sees the results of the metrics whose sources it may read (the last line); the
-- multiple-testing corrections are computed over every metric of the family first, so that
-- every role sees the same adjusted p-values (MATERIALIZED: the filter never runs below
-- the window functions)
-- security_barrier: a caller's own conditions (a cheap function that prints its argument)
-- run only on the rows the view shows
CREATE OR REPLACE VIEW experiment.results WITH (security_barrier = true) AS
WITH r AS MATERIALIZED (
  SELECT r.*, em.role, em.non_inferiority_margin, m.kind, m.higher_is_better,
         ex.correction, ex.correction_family, ex.prior_mean, ex.prior_variance, ex.ship_threshold,
         -- the family of the multiple-testing correction: the primary metric across its arms;
         -- secondary metrics together (family 'experiment') or each across its arms ('metric');
         -- a guardrail alone (its own one-sided test decides it)
         CASE WHEN em.role = 'primary' THEN 'p:' || r.metric
              WHEN em.role = 'secondary' AND ex.correction_family = 'experiment' THEN 's:'
              WHEN em.role = 'secondary' THEN 's:' || r.metric
              ELSE 'g:' || r.metric || ':' || r.variant END AS family
  FROM experiment.metric_results r
  JOIN experiment.experiment_metrics em ON em.experiment_id = r.experiment_id AND em.metric = r.metric
  JOIN experiment.metrics m ON m.name = r.metric
  JOIN experiment.experiments ex ON ex.id = r.experiment_id
), a AS MATERIALIZED (
  SELECT r.*,
         -- (the window function runs on every row, so it gets a valid method even where unused)
         CASE WHEN r.correction = 'none' THEN (r.test).p_value
              ELSE experiment.p_adjust((r.test).p_value, CASE r.correction WHEN 'none' THEN 'holm' ELSE r.correction END)
                     OVER (PARTITION BY r.experiment_id, r.family) END AS p_value_adjusted,
         CASE WHEN r.correction = 'none' THEN (r.test).lift_p_value
              ELSE experiment.p_adjust((r.test).lift_p_value, CASE r.correction WHEN 'none' THEN 'holm' ELSE r.correction END)
                     OVER (PARTITION BY r.experiment_id, r.family) END AS lift_p_value_adjusted,
         CASE WHEN r.analysis = 'bayesian'
              THEN experiment.bayesian(r.test, r.prior_mean, r.prior_variance, true, r.alpha) END AS bayes,
         -- guardrails: the one-sided bound on the relative harm, and the lower bound of the harm
         CASE WHEN r.higher_is_better THEN -(r.bound_test).lift_lower ELSE (r.bound_test).lift_upper END AS harm_bound,
         CASE WHEN r.higher_is_better THEN -(r.harm_test).lift_upper ELSE (r.harm_test).lift_lower END AS harm_lower
  FROM r
), s AS (
  SELECT a.*,
         CASE WHEN a.analysis = 'bayesian'
              THEN (a.bayes).chance_to_win >= a.ship_threshold OR (a.bayes).chance_to_win <= 1 - a.ship_threshold
              ELSE a.p_value_adjusted < a.alpha END AS sig,
         CASE WHEN a.role <> 'guardrail' THEN NULL
              WHEN (a.harm_test).p_value IS NULL THEN 'ok'   -- nothing varies in either arm: no harm
              WHEN coalesce(a.non_inferiority_margin, 0) = 0
                THEN CASE WHEN (a.harm_test).p_value < a.alpha THEN 'failed' ELSE 'ok' END
              WHEN a.harm_lower > a.non_inferiority_margin THEN 'failed'
              WHEN a.harm_bound < a.non_inferiority_margin THEN 'ok'
              ELSE 'inconclusive' END AS guardrail_status
  FROM a
)
SELECT s.experiment_id, s.metric, s.variant, s.control_variant,
       s.role, s.kind, s.method, s.higher_is_better, s.non_inferiority_margin,
       (s.test).n_control, (s.test).n_treatment,
       (s.test).mean_control, (s.test).mean_treatment,
       (s.test).diff, (s.test).diff_lower, (s.test).diff_upper,
       (s.test).lift, (s.test).lift_lower, (s.test).lift_upper,
       (s.test).statistic, (s.test).df, (s.test).p_value, (s.test).lift_p_value,
       s.alpha,
       coalesce(s.sig, false) AS significant,
       coalesce(s.sig AND ((s.test).diff > 0) = s.higher_is_better AND (s.test).diff <> 0, false) AS better,
       coalesce(s.sig AND ((s.test).diff > 0) <> s.higher_is_better AND (s.test).diff <> 0, false) AS worse,
       s.guardrail_status = 'ok' AS guardrail_ok,
       s.refreshed_at,
       s.analysis, s.sequential_tuning, s.correction,
       s.p_value_adjusted,
       -- the interval consistent with the adjusted lift p-value, never narrower than the test's own
       -- (a normal approximation alone can be narrower than a confidence sequence)
       CASE WHEN s.lift_p_value_adjusted IS NOT DISTINCT FROM (s.test).lift_p_value THEN (s.test).lift_lower
            ELSE least((s.test).lift_lower,
                       (experiment.adjusted_interval((s.test).lift, s.lift_p_value_adjusted, s.alpha)).lower) END
         AS lift_lower_adjusted,
       CASE WHEN s.lift_p_value_adjusted IS NOT DISTINCT FROM (s.test).lift_p_value THEN (s.test).lift_upper
            ELSE greatest((s.test).lift_upper,
                          (experiment.adjusted_interval((s.test).lift, s.lift_p_value_adjusted, s.alpha)).upper) END
         AS lift_upper_adjusted,
       (s.bayes).chance_to_win, (s.bayes).risk_control, (s.bayes).risk_treatment,
       s.guardrail_status, s.harm_bound,
       (s.test).diff_se, (s.test).lift_se,
       (s.bayes).estimate AS lift_posterior, (s.bayes).ci_lower AS lift_posterior_lower,
       (s.bayes).ci_upper AS lift_posterior_upper,
       s.stratified_by
FROM s
WHERE experiment.may_read_metric(s.metric);

COMMENT ON VIEW experiment.results IS
  'one row per experiment, metric and treatment variant at the latest refresh: role, test results under the experiment''s analysis, adjusted p-value and lift interval, Bayesian chance to win and risks, significance, guardrail verdict (ok, failed or inconclusive against the non-inferiority margin), the dimension of the strata when post-stratified';

-- the results per dimension value: the columns of experiment.results, with the dimension and
-- its value; the multiple-testing family is one metric in one dimension, across the values
-- and treatment arms (the experiment's correction), so that ten segments of one metric do not
-- look ten times as often for free
CREATE OR REPLACE VIEW experiment.results_by_dimension WITH (security_barrier = true) AS
WITH r AS MATERIALIZED (
  SELECT r.*, em.role, em.non_inferiority_margin, m.kind, m.higher_is_better,
         ex.correction, ex.correction_family, ex.prior_mean, ex.prior_variance, ex.ship_threshold,
         -- the family of the multiple-testing correction: one metric in one dimension, across
         -- the dimension's values and the treatment arms
         r.metric AS family
  FROM experiment.dimension_results r
  JOIN experiment.experiment_metrics em ON em.experiment_id = r.experiment_id AND em.metric = r.metric
  JOIN experiment.metrics m ON m.name = r.metric
  JOIN experiment.experiments ex ON ex.id = r.experiment_id
), a AS MATERIALIZED (
  SELECT r.*,
         -- (the window function runs on every row, so it gets a valid method even where unused)
         CASE WHEN r.correction = 'none' THEN (r.test).p_value
              ELSE experiment.p_adjust((r.test).p_value, CASE r.correction WHEN 'none' THEN 'holm' ELSE r.correction END)
                     OVER (PARTITION BY r.experiment_id, r.family, r.dimension) END AS p_value_adjusted,
         CASE WHEN r.correction = 'none' THEN (r.test).lift_p_value
              ELSE experiment.p_adjust((r.test).lift_p_value, CASE r.correction WHEN 'none' THEN 'holm' ELSE r.correction END)
                     OVER (PARTITION BY r.experiment_id, r.family, r.dimension) END AS lift_p_value_adjusted,
         CASE WHEN r.analysis = 'bayesian'
              THEN experiment.bayesian(r.test, r.prior_mean, r.prior_variance, true, r.alpha) END AS bayes,
         -- guardrails: the one-sided bound on the relative harm, and the lower bound of the harm
         CASE WHEN r.higher_is_better THEN -(r.bound_test).lift_lower ELSE (r.bound_test).lift_upper END AS harm_bound,
         CASE WHEN r.higher_is_better THEN -(r.harm_test).lift_upper ELSE (r.harm_test).lift_lower END AS harm_lower
  FROM r
), s AS (
  SELECT a.*,
         CASE WHEN a.analysis = 'bayesian'
              THEN (a.bayes).chance_to_win >= a.ship_threshold OR (a.bayes).chance_to_win <= 1 - a.ship_threshold
              ELSE a.p_value_adjusted < a.alpha END AS sig,
         CASE WHEN a.role <> 'guardrail' THEN NULL
              WHEN (a.harm_test).p_value IS NULL THEN 'ok'   -- nothing varies in either arm: no harm
              WHEN coalesce(a.non_inferiority_margin, 0) = 0
                THEN CASE WHEN (a.harm_test).p_value < a.alpha THEN 'failed' ELSE 'ok' END
              WHEN a.harm_lower > a.non_inferiority_margin THEN 'failed'
              WHEN a.harm_bound < a.non_inferiority_margin THEN 'ok'
              ELSE 'inconclusive' END AS guardrail_status
  FROM a
)
SELECT s.experiment_id, s.dimension, s.value, s.metric, s.variant, s.control_variant,
       s.role, s.kind, s.method, s.higher_is_better, s.non_inferiority_margin,
       (s.test).n_control, (s.test).n_treatment,
       (s.test).mean_control, (s.test).mean_treatment,
       (s.test).diff, (s.test).diff_lower, (s.test).diff_upper,
       (s.test).lift, (s.test).lift_lower, (s.test).lift_upper,
       (s.test).statistic, (s.test).df, (s.test).p_value, (s.test).lift_p_value,
       s.alpha,
       coalesce(s.sig, false) AS significant,
       coalesce(s.sig AND ((s.test).diff > 0) = s.higher_is_better AND (s.test).diff <> 0, false) AS better,
       coalesce(s.sig AND ((s.test).diff > 0) <> s.higher_is_better AND (s.test).diff <> 0, false) AS worse,
       s.guardrail_status = 'ok' AS guardrail_ok,
       s.refreshed_at,
       s.analysis, s.sequential_tuning, s.correction,
       s.p_value_adjusted,
       -- the interval consistent with the adjusted lift p-value, never narrower than the test's own
       -- (a normal approximation alone can be narrower than a confidence sequence)
       CASE WHEN s.lift_p_value_adjusted IS NOT DISTINCT FROM (s.test).lift_p_value THEN (s.test).lift_lower
            ELSE least((s.test).lift_lower,
                       (experiment.adjusted_interval((s.test).lift, s.lift_p_value_adjusted, s.alpha)).lower) END
         AS lift_lower_adjusted,
       CASE WHEN s.lift_p_value_adjusted IS NOT DISTINCT FROM (s.test).lift_p_value THEN (s.test).lift_upper
            ELSE greatest((s.test).lift_upper,
                          (experiment.adjusted_interval((s.test).lift, s.lift_p_value_adjusted, s.alpha)).upper) END
         AS lift_upper_adjusted,
       (s.bayes).chance_to_win, (s.bayes).risk_control, (s.bayes).risk_treatment,
       s.guardrail_status, s.harm_bound,
       (s.test).diff_se, (s.test).lift_se,
       (s.bayes).estimate AS lift_posterior, (s.bayes).ci_lower AS lift_posterior_lower,
       (s.bayes).ci_upper AS lift_posterior_upper,
       -- (each value's own tests are not post-stratified)
       NULL::text AS stratified_by
FROM s
WHERE experiment.may_read_metric(s.metric);

COMMENT ON VIEW experiment.results_by_dimension IS
  'the columns of experiment.results per dimension and value (doc/analysis.md, "Dimension breakdowns"): the tests of each value of each dimension, p-values adjusted within each experiment, metric and dimension across the values and treatment arms';

-- the expected share of a bandit's arm (src/sql/099_holdout_bandit.sql): over the periods,
-- sum_t n_t p_it / sum_t n_t with n_t the analysed units of period t; within a value of its
-- bandit_period dimension, that period's weight; NULL for other experiments (and before the
-- bandit has periods: its split is then the variants' allocations). PL/pgSQL, as the tables
-- it reads are created after these views.
CREATE OR REPLACE FUNCTION experiment.bandit_expected_share(experiment_id text, variant text, dimension text DEFAULT NULL,
                                                 value text DEFAULT NULL)
  RETURNS float8
  LANGUAGE plpgsql STABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
DECLARE
  idx integer;
  r float8;
  pdim text;
BEGIN
  IF NOT EXISTS (SELECT FROM experiment.bandits b WHERE b.experiment_id = bandit_expected_share.experiment_id) THEN
    RETURN NULL;
  END IF;
  idx := pg_catalog.array_position((experiment.split(bandit_expected_share.experiment_id)).names, bandit_expected_share.variant);
  SELECT d.name INTO pdim FROM experiment.dimensions d
   WHERE d.experiment_id = bandit_expected_share.experiment_id AND d.attribute = 'bandit_period'
   ORDER BY d.name LIMIT 1;
  IF idx IS NULL OR pdim IS NULL THEN
    RETURN NULL;
  END IF;
  IF bandit_expected_share.dimension = pdim THEN
    IF bandit_expected_share.value !~ '^[0-9]{1,9}$' THEN
      RETURN NULL;
    END IF;
    SELECT p.weights[idx] INTO r FROM experiment.bandit_periods p
     WHERE p.experiment_id = bandit_expected_share.experiment_id AND p.period = bandit_expected_share.value::integer;
    RETURN r;
  END IF;
  SELECT pg_catalog.sum(t.n * p.weights[idx]) / nullif(pg_catalog.sum(t.n), 0) INTO r
    FROM (SELECT de.value, pg_catalog.sum(de.units) AS n FROM experiment.dimension_enrollment de
           WHERE de.experiment_id = bandit_expected_share.experiment_id AND de.dimension = pdim
             AND de.value ~ '^[0-9]{1,9}$'
           GROUP BY de.value) t
    JOIN experiment.bandit_periods p
      ON p.experiment_id = bandit_expected_share.experiment_id AND p.period = t.value::integer;
  RETURN r;
END
$$;

COMMENT ON FUNCTION experiment.bandit_expected_share(text, text, text, text) IS
  'internal: the expected share of a bandit''s arm for the srm views: sum_t n_t p_it / sum_t n_t over its periods, or within a value of its bandit_period dimension that period''s weight; NULL for other experiments';

CREATE OR REPLACE VIEW experiment.srm AS
WITH w AS (
  SELECT en.experiment_id, en.variant, en.units,
         -- (a bandit's arms are expected in the shares of its periods' weights)
         coalesce(experiment.bandit_expected_share(en.experiment_id, en.variant), v.allocation) AS allocation,
         en.refreshed_at
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

-- sample ratio mismatch within each dimension value (Eppo's "dimensional imbalance"): the
-- value's units per variant against the design weights, as for the whole experiment
CREATE OR REPLACE VIEW experiment.srm_by_dimension AS
WITH w AS (
  SELECT dn.experiment_id, dn.dimension, dn.value, dn.variant, dn.units,
         coalesce(experiment.bandit_expected_share(dn.experiment_id, dn.variant, dn.dimension, dn.value), v.allocation) AS allocation,
         dn.refreshed_at
  FROM experiment.dimension_enrollment dn
  JOIN experiment.variants v ON v.experiment_id = dn.experiment_id AND v.name = dn.variant
), per_value AS (
  SELECT w.experiment_id, w.dimension, w.value, pg_catalog.sum(w.units) AS total,
         pg_catalog.sum(w.allocation) AS total_allocation,
         CASE WHEN pg_catalog.sum(w.units) > 0 AND count(*) >= 2 AND bool_and(w.allocation > 0)
              THEN experiment.srm_chisq(array_agg(w.units ORDER BY w.variant),
                                        array_agg(w.allocation ORDER BY w.variant)::float8[])
         END AS p_value
  FROM w GROUP BY w.experiment_id, w.dimension, w.value
)
SELECT w.experiment_id, w.dimension, w.value, w.variant, w.units,
       w.allocation / nullif(p.total_allocation, 0) AS expected_share,
       w.units::float8 / nullif(p.total, 0) AS observed_share,
       p.total * w.allocation / nullif(p.total_allocation, 0) AS expected_units,
       p.p_value,
       p.p_value >= 0.001 AS ok,
       w.refreshed_at
FROM w JOIN per_value p ON p.experiment_id = w.experiment_id AND p.dimension = w.dimension AND p.value = w.value;

COMMENT ON VIEW experiment.srm_by_dimension IS
  'sample ratio mismatch check per experiment, dimension, value and variant (dimensional imbalance): units, expected and observed split, chi-squared p-value of the value''s units, ok = p >= 0.001';

CREATE OR REPLACE VIEW experiment.health AS
SELECT ex.id AS experiment_id, ex.status, f.refreshed_at, f.duration AS refresh_duration,
       -- a source's error may quote its data: the message to roles that may read every metric
       CASE WHEN f.error IS NULL THEN NULL
            WHEN NOT EXISTS (SELECT 1 FROM experiment.experiment_metrics em
                             WHERE em.experiment_id = ex.id AND NOT experiment.may_read_metric(em.metric))
              THEN f.error
            ELSE 'the latest refresh failed (the message is shown to roles that may read every metric of the experiment)'
       END AS refresh_error,
       f.error_at AS refresh_error_at,
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
       f.exposures_by_day,
       f.early_units,
       late.n AS exposures_after_refresh,
       coalesce(late.n > 0 AND (ex.status <> 'running'
                                OR late.n > 0.01 * (f.enrolled_units + f.multi_variant_units)), false) AS stale,
       sk.n AS skipped_source_values,
       coalesce(ds.failing = 0, true) AS dimension_srm_ok,
       ds.imbalanced AS dimension_srm_imbalanced
FROM experiment.experiments ex
LEFT JOIN experiment.refreshes f ON f.experiment_id = ex.id
LEFT JOIN LATERAL (SELECT count(*) AS n FROM experiment.exposures xp
                   WHERE xp.experiment_id = ex.id AND xp.received_at > f.refreshed_at
                     AND (ex.end_at IS NULL OR xp.exposed_at < ex.end_at)) late ON f.refreshed_at IS NOT NULL
LEFT JOIN (SELECT DISTINCT s0.experiment_id, s0.p_value, s0.ok FROM experiment.srm s0) s ON s.experiment_id = ex.id
LEFT JOIN (SELECT e0.experiment_id, pg_catalog.min(e0.units) AS min_units FROM experiment.enrollment e0
           GROUP BY e0.experiment_id) en ON en.experiment_id = ex.id
LEFT JOIN (SELECT q.experiment_id, count(*) AS n FROM experiment.exposures_quarantine q
           GROUP BY q.experiment_id) qu ON qu.experiment_id = ex.id
LEFT JOIN (SELECT d.experiment_id, count(*) FILTER (WHERE NOT d.ok) AS failing,
                  coalesce(jsonb_agg(jsonb_build_object('dimension', d.dimension, 'value', d.value, 'p_value', d.p_value)
                                     ORDER BY d.dimension, d.p_value, d.value) FILTER (WHERE NOT d.ok), '[]') AS imbalanced
           FROM (SELECT DISTINCT s1.experiment_id, s1.dimension, s1.value, s1.p_value, s1.ok
                 FROM experiment.srm_by_dimension s1) d
           GROUP BY d.experiment_id) ds ON ds.experiment_id = ex.id
-- (of the metrics the reader may read: the view reads variant_stats with its owner's rights)
LEFT JOIN (SELECT vs.experiment_id, pg_catalog.sum(vs.skipped_values)::bigint AS n FROM experiment.variant_stats vs
           WHERE experiment.may_read_metric(vs.metric)
           GROUP BY vs.experiment_id) sk ON sk.experiment_id = ex.id;

COMMENT ON VIEW experiment.health IS
  'per experiment: latest refresh, units in several variants (flagged above 1%), SRM, days run against the minimum runtime, units against the target, quarantined exposures, new units per day, units exposed before the start, exposures stored since the refresh (stale: more than 1% of the units, or any once the experiment stopped), source values skipped as NaN or infinite, '
  'and the dimension values whose split fails the SRM check (dimension_srm_ok, dimension_srm_imbalanced)';

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
  -- dimensional imbalance: a warning (the experiment's own SRM check decides validity)
  IF h.dimension_srm_ok IS FALSE THEN
    SELECT string_agg(format('%s = %s (SRM %s)', x ->> 'dimension', x ->> 'value',
                             experiment.format_p((x ->> 'p_value')::float8)), ', ' ORDER BY k)
             || CASE WHEN jsonb_array_length(h.dimension_srm_imbalanced) > 5
                     THEN format(' and %s more', jsonb_array_length(h.dimension_srm_imbalanced) - 5) ELSE '' END
      INTO line
      FROM jsonb_array_elements(h.dimension_srm_imbalanced) WITH ORDINALITY AS i(x, k) WHERE k <= 5;
    lines := lines || format('Warning: dimensional imbalance, the split within %s fails the SRM check', line);
  END IF;
  -- every reason the decision is held back or invalid, each on its line
  FOR b IN SELECT * FROM experiment.decision_blockers(ex.id) LOOP
    lines := lines || format('%s: %s', CASE b.decision WHEN 'INVALID' THEN 'Invalid' ELSE 'Keep running' END, b.reason);
  END LOOP;
  SELECT pg_catalog.min(mr.stratified_by) INTO line FROM experiment.metric_results mr WHERE mr.experiment_id = ex.id;
  lines := lines || format('Analysis: %s, alpha = %s%s%s', experiment.format_analysis(ex), ex.alpha,
    CASE WHEN ex.correction = 'none' OR ex.analysis = 'bayesian' THEN ''
         ELSE format(', %s correction of secondary metrics (family: %s)',
                     experiment.format_correction(ex.correction), ex.correction_family) END,
    -- post-stratified tests (the readout's metrics are those of metric_results)
    CASE WHEN line IS NOT NULL THEN format(', post-stratified by %s', line) ELSE '' END);
  -- cluster-randomised experiments (src/sql/099_design_cluster.sql): what the tests and the sample count
  SELECT pg_catalog.min(mr.clustered_by) INTO line FROM experiment.metric_results mr WHERE mr.experiment_id = ex.id;
  IF line IS NOT NULL THEN
    SELECT format('Clustered by %s: %s clusters%s; the tests, the sample and the SRM check count clusters',
                  line, experiment.format_count(f.clusters),
                  CASE WHEN f.clustered_units IS NOT NULL
                       THEN ' of ' || experiment.format_count(f.clustered_units) || ' units' ELSE '' END)
           || CASE WHEN f.unclustered_units > 0
                   THEN format(E'\nWarning: %s analysed units have no cluster and are left out of the clustered tests',
                               experiment.format_count(f.unclustered_units)) ELSE '' END
           || CASE WHEN f.mixed_clusters > 0 AND f.clustered_units IS NULL
                   THEN format(E'\nWarning: %s switchback windows were exposed to several variants and are left out',
                               experiment.format_count(f.mixed_clusters))
                   WHEN f.mixed_clusters > 0
                   THEN format(E'\nWarning: %s clusters have units in several variants (was the randomisation by cluster?); '
                               'each variant''s part counts as a cluster', experiment.format_count(f.mixed_clusters))
                   ELSE '' END
      INTO line FROM experiment.refreshes f WHERE f.experiment_id = ex.id;
    lines := lines || pg_catalog.string_to_array(line, E'\n');
  END IF;
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
                                 WHEN 'cuped_ratio' THEN '   (CUPED, delta method)'
                                 WHEN 'quantile' THEN (SELECT format('   (p%s of %s)', rtrim(rtrim(to_char(mq.quantile * 100, 'FM990.999'), '0'), '.'),
                                                                     CASE mq.quantile_level WHEN 'event' THEN 'events' ELSE 'units' END)
                                                       FROM experiment.metrics mq WHERE mq.name = g.metric)
                                 ELSE '' END);
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

ALTER TABLE experiment.dimension_results ENABLE ROW LEVEL SECURITY;

CREATE POLICY dimension_results_readable ON experiment.dimension_results FOR SELECT
  USING (experiment.may_read_metric(metric));

COMMENT ON POLICY dimension_results_readable ON experiment.dimension_results IS
  'a role sees the tests per dimension value of the metrics whose sources it may read';

ALTER TABLE experiment.dimension_stats ENABLE ROW LEVEL SECURITY;

CREATE POLICY dimension_stats_readable ON experiment.dimension_stats FOR SELECT
  USING (experiment.may_read_metric(metric));

COMMENT ON POLICY dimension_stats_readable ON experiment.dimension_stats IS
  'a role sees the per-value moments of the metrics whose sources it may read';

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
    DELETE FROM experiment.dimension_results;
    DELETE FROM experiment.dimension_stats;
    DELETE FROM experiment.interaction_results;   -- (src/sql/099_interact.sql)
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
  DELETE FROM experiment.dimension_results d
   WHERE d.metric = OLD.name
      OR d.metric IN (SELECT m.name FROM experiment.metrics m WHERE OLD.name IN (m.numerator, m.denominator));
  DELETE FROM experiment.dimension_stats d
   WHERE d.metric = OLD.name
      OR d.metric IN (SELECT m.name FROM experiment.metrics m WHERE OLD.name IN (m.numerator, m.denominator));
  -- (interaction detection, src/sql/099_interact.sql)
  DELETE FROM experiment.interaction_results d
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
  DELETE FROM experiment.dimension_results d WHERE d.experiment_id = OLD.experiment_id AND d.metric = OLD.metric;
  DELETE FROM experiment.dimension_stats d WHERE d.experiment_id = OLD.experiment_id AND d.metric = OLD.metric;
  -- (interaction detection, src/sql/099_interact.sql: the pairs of the experiment either way)
  DELETE FROM experiment.interaction_results d
   WHERE OLD.experiment_id IN (d.experiment_id, d.other_experiment_id) AND d.metric = OLD.metric;
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
  registry text[] := '{experiments,variants,metrics,experiment_metrics,dimensions,holdouts,holdout_members,bandits}';
  -- (refreshes without its error column: a source's error may quote its data; health shows
  -- the error to roles that may read every metric of the experiment)
  results text[] := '{enrollment,variant_stats,metric_results,results_daily,conclusions,results,srm,health,'
                     'dimension_enrollment,dimension_stats,dimension_results,results_by_dimension,srm_by_dimension,'
                     'factorial_effects,interaction_results,interactions}';
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
                first_exposure, last_exposure, exposures_by_day, error_at, mode, full_reason,
                -- the counts of clustered and switchback experiments (src/sql/099_design_cluster.sql)
                clusters, clustered_units, unclustered_units, mixed_clusters)
    ON experiment.refreshes TO experiment_reader;
  -- (a bandit's published weights; the posteriors they came from are its metric's results)
  GRANT SELECT (experiment_id, period, started_at, variants, weights) ON experiment.bandit_periods TO experiment_reader;

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
  GRANT EXECUTE ON FUNCTION experiment.refresh_interactions() TO experiment_admin;
  GRANT SELECT, INSERT, UPDATE, DELETE ON experiment.bandit_periods TO experiment_admin;
  GRANT EXECUTE ON FUNCTION experiment.update_bandit_weights(text, boolean) TO experiment_admin;
  GRANT SELECT ON experiment.source_watermarks TO experiment_admin;
END
$$;

CREATE TABLE experiment.dimensions (
  experiment_id text NOT NULL REFERENCES experiment.experiments (id) ON DELETE CASCADE,
  name text NOT NULL
    CONSTRAINT dimensions_name_not_empty CHECK (name <> ''),
  attribute text NOT NULL
    CONSTRAINT dimensions_attribute_valid CHECK (attribute IN ('client', 'app_version', 'attributes', 'bandit_period')),
  attribute_key text,
  top_n integer NOT NULL DEFAULT 10
    CONSTRAINT dimensions_top_n_range CHECK (top_n >= 1 AND top_n <= 1000),
  caps_per_value boolean NOT NULL DEFAULT false,
  PRIMARY KEY (experiment_id, name),
  CONSTRAINT dimensions_attribute_key_valid
    CHECK ((attribute = 'attributes') = (attribute_key IS NOT NULL) AND attribute_key <> '')
);

COMMENT ON TABLE experiment.dimensions IS
  'the dimensions each experiment''s results are broken down by: a unit attribute taken from the unit''s first exposure, its top_n values by analysed units and (other)';

COMMENT ON COLUMN experiment.dimensions.name IS 'the dimension''s name (results_by_dimension.dimension, experiments.stratify_by)';

COMMENT ON COLUMN experiment.dimensions.attribute IS
  'what the value is: the exposure''s client or app_version column, a key of its attributes (attributes, with attribute_key), or a bandit''s allocation period at the exposure (bandit_period)';

COMMENT ON COLUMN experiment.dimensions.attribute_key IS
  'the key of experiment.exposures.attributes when attribute is attributes (its value as text: attributes ->> key); NULL otherwise';

COMMENT ON COLUMN experiment.dimensions.top_n IS
  'how many values have results of their own: the top_n with the most analysed units (ties by value); the others are pooled as (other)';

COMMENT ON COLUMN experiment.dimensions.caps_per_value IS
  'winsorization percentiles computed within each value of the dimension for its results (false: the pooled caps of the overall results)';

SELECT pg_catalog.pg_extension_config_dump('experiment.dimensions', '');

-- nothing, or the error 'dimension "d" does not exist in experiment "x"' (22023) naming the
-- column that names it and the experiment's dimensions
CREATE OR REPLACE FUNCTION experiment.require_dimension(experiment_id text, dimension text, what text) RETURNS void
  LANGUAGE plpgsql STABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
BEGIN
  IF NOT EXISTS (SELECT FROM experiment.dimensions d
                 WHERE d.experiment_id = require_dimension.experiment_id AND d.name = require_dimension.dimension) THEN
    RAISE EXCEPTION 'invalid % "%" of experiment "%": no such dimension', what,
      coalesce(left(dimension, 200), 'NULL'), left(experiment_id, 200)
      USING ERRCODE = 'invalid_parameter_value',
            HINT = coalesce(experiment.hint_list(ARRAY(SELECT d.name FROM experiment.dimensions d
                                                       WHERE d.experiment_id = require_dimension.experiment_id
                                                       ORDER BY d.name COLLATE "C"),
                                                 format('dimensions of experiment "%s"', experiment_id),
                                                 'experiment.dimensions')
                                || ' ', '')
                   || format('Use the name of a row of experiment.dimensions of experiment "%s", or NULL.', experiment_id);
  END IF;
END
$$;

COMMENT ON FUNCTION experiment.require_dimension(text, text, text) IS
  'internal: nothing, or the error 22023 that an experiment has no dimension of that name, with its dimensions as HINT';

-- the values a dimension may hold, named in the errors as the catalogue's are; only members of
-- the experiment's owner role add, change or remove its dimensions
CREATE OR REPLACE FUNCTION experiment.dimensions_check() RETURNS trigger
  LANGUAGE plpgsql
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
DECLARE
  owner text;
BEGIN
  IF TG_OP IN ('UPDATE', 'DELETE') THEN
    PERFORM experiment.require_experiment_owner(OLD.experiment_id, 'change the dimensions');
    -- the strata of post-stratification stay defined (a deleted experiment's rows go freely)
    IF (TG_OP = 'DELETE' OR (NEW.experiment_id, NEW.name) IS DISTINCT FROM (OLD.experiment_id, OLD.name))
       AND EXISTS (SELECT FROM experiment.experiments x WHERE x.id = OLD.experiment_id AND x.stratify_by = OLD.name) THEN
      RAISE EXCEPTION 'cannot % dimension "%" of experiment "%": it is the experiment''s stratify_by',
        CASE WHEN TG_OP = 'DELETE' THEN 'delete' ELSE 'rename' END, OLD.name, OLD.experiment_id
        USING ERRCODE = 'invalid_parameter_value',
              HINT = 'Set experiment.experiments.stratify_by to NULL (or another dimension) first.';
    END IF;
  END IF;
  IF TG_OP = 'DELETE' THEN
    RETURN OLD;
  END IF;
  PERFORM experiment.require_experiment(NEW.experiment_id);
  PERFORM experiment.require_experiment_owner(NEW.experiment_id, 'change the dimensions');
  IF NEW.name IS NULL OR NEW.name = '' THEN
    PERFORM experiment.raise_invalid_value(format('name of a dimension of experiment "%s"', NEW.experiment_id),
                                           quote_nullable(NEW.name), 'a non-empty text');
  END IF;
  owner := format('dimension "%s" of experiment "%s"', NEW.name, NEW.experiment_id);
  IF NEW.attribute IS NULL OR NEW.attribute NOT IN ('client', 'app_version', 'attributes', 'bandit_period') THEN
    PERFORM experiment.raise_invalid_choice('attribute', NEW.attribute, '{client,app_version,attributes,bandit_period}', owner);
  END IF;
  IF NEW.attribute = 'attributes' AND (NEW.attribute_key IS NULL OR NEW.attribute_key = '') THEN
    PERFORM experiment.raise_invalid_value('attribute_key of ' || owner, quote_nullable(NEW.attribute_key),
                                           'a non-empty key of experiment.exposures.attributes (attribute is attributes)');
  END IF;
  IF NEW.attribute <> 'attributes' AND NEW.attribute_key IS NOT NULL THEN
    PERFORM experiment.raise_invalid_value('attribute_key of ' || owner, quote_nullable(NEW.attribute_key),
                                           format('NULL (attribute is %s; a key of attributes needs attribute = ''attributes'')',
                                                  NEW.attribute));
  END IF;
  IF NEW.top_n IS NULL OR NEW.top_n < 1 OR NEW.top_n > 1000 THEN
    PERFORM experiment.raise_invalid_value('top_n of ' || owner, coalesce(NEW.top_n::text, 'NULL'),
                                           'an integer between 1 and 1000');
  END IF;
  IF NEW.caps_per_value IS NULL THEN
    PERFORM experiment.raise_invalid_value('caps_per_value of ' || owner, 'NULL', 'true or false');
  END IF;
  RETURN NEW;
END
$$;

COMMENT ON FUNCTION experiment.dimensions_check() IS
  'internal: trigger that names the experiment, column, value and allowed values of an invalid dimension, and keeps changes to the experiment''s owners';

CREATE OR REPLACE TRIGGER dimensions_check
  BEFORE INSERT OR UPDATE OR DELETE ON experiment.dimensions
  FOR EACH ROW EXECUTE FUNCTION experiment.dimensions_check();

COMMENT ON TRIGGER dimensions_check ON experiment.dimensions IS
  'an unknown experiment, an invalid name, attribute, attribute_key, top_n or caps_per_value is refused with a message naming the allowed values; '
  'only members of the experiment''s owner_role add, change or remove its dimensions; the stratify_by dimension is not deleted or renamed';

-- a dimension removed or changed takes its stored results with it (the next refresh
-- computes them afresh)
CREATE OR REPLACE FUNCTION experiment.dimensions_forget_results() RETURNS trigger
  LANGUAGE plpgsql SECURITY DEFINER
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
BEGIN
  IF TG_OP = 'UPDATE' AND NEW IS NOT DISTINCT FROM OLD THEN
    RETURN NULL;
  END IF;
  DELETE FROM experiment.dimension_results r WHERE r.experiment_id = OLD.experiment_id AND r.dimension = OLD.name;
  DELETE FROM experiment.dimension_stats s WHERE s.experiment_id = OLD.experiment_id AND s.dimension = OLD.name;
  DELETE FROM experiment.dimension_enrollment n WHERE n.experiment_id = OLD.experiment_id AND n.dimension = OLD.name;
  RETURN NULL;
END
$$;

COMMENT ON FUNCTION experiment.dimensions_forget_results() IS
  'internal: trigger: deletes the stored results of a dimension that is deleted or changed';

REVOKE EXECUTE ON FUNCTION experiment.dimensions_forget_results() FROM PUBLIC;

CREATE OR REPLACE TRIGGER dimensions_forget_results AFTER UPDATE OR DELETE ON experiment.dimensions
  FOR EACH ROW EXECUTE FUNCTION experiment.dimensions_forget_results();

COMMENT ON TRIGGER dimensions_forget_results ON experiment.dimensions IS
  'a deleted or changed dimension loses its stored results';

ALTER TABLE experiment.experiments
  ADD COLUMN cluster_relation regclass,
  ADD COLUMN cluster_unit_column text,
  ADD COLUMN cluster_column text,
  ADD COLUMN cluster_attribute text;

COMMENT ON COLUMN experiment.experiments.cluster_relation IS
  'cluster-randomised experiments: the relation (table, materialized view or partitioned table, without row-level security) that maps each unit to its cluster; NULL: not clustered, or clustered by cluster_attribute; fixed when the experiment leaves draft';

COMMENT ON COLUMN experiment.experiments.cluster_unit_column IS
  'the column of cluster_relation that holds the unit id (compared as text with experiment.exposures.unit_id)';

COMMENT ON COLUMN experiment.experiments.cluster_column IS
  'the column of cluster_relation that holds the unit''s cluster (company, household, region)';

COMMENT ON COLUMN experiment.experiments.cluster_attribute IS
  'cluster-randomised experiments: the key of experiment.exposures.attributes whose value (in the unit''s first exposure) is the unit''s cluster; NULL: not clustered, or clustered by cluster_relation';

ALTER TABLE experiment.metric_results
  ADD COLUMN clustered_by text,
  ADD COLUMN unit_test experiment.test_result;

COMMENT ON COLUMN experiment.metric_results.clustered_by IS
  'the cluster of a clustered test (cluster_column of cluster_relation, or attributes.<cluster_attribute>): test counts clusters and is the delta-method ratio over them; NULL: a unit-level test';

COMMENT ON COLUMN experiment.metric_results.unit_test IS
  'clustered tests: the unit-level test the refresh would report without clusters (it ignores the correlation within clusters; its standard error against test''s gives the design effect)';

ALTER TABLE experiment.variant_stats
  ADD COLUMN clusters bigint,
  ADD COLUMN cluster_moments experiment.moments,
  ADD COLUMN cluster_cuped_moments experiment.moments;

COMMENT ON COLUMN experiment.variant_stats.clusters IS 'clustered experiments: the clusters of the variant (with at least one analysed unit)';

COMMENT ON COLUMN experiment.variant_stats.cluster_moments IS
  'clustered experiments: bivariate moments over the variant''s clusters of (sum of the capped per-unit values, units); for ratio metrics (sum of numerators, sum of denominators)';

COMMENT ON COLUMN experiment.variant_stats.cluster_cuped_moments IS
  'clustered experiments with a CUPED pre-period: 4-variable moments over clusters of (sum of y, units, sum of pre-period y, units); for ratio metrics of the four sums';

ALTER TABLE experiment.refreshes
  ADD COLUMN clusters bigint,
  ADD COLUMN clustered_units bigint,
  ADD COLUMN unclustered_units bigint,
  ADD COLUMN mixed_clusters bigint;

COMMENT ON COLUMN experiment.refreshes.clusters IS 'clustered experiments: the (cluster, variant) pairs analysed';

COMMENT ON COLUMN experiment.refreshes.clustered_units IS 'clustered experiments: the analysed units that have a cluster';

COMMENT ON COLUMN experiment.refreshes.unclustered_units IS
  'clustered experiments: analysed units without a cluster (none in cluster_relation, or no cluster_attribute in the first exposure), left out of the clustered tests';

COMMENT ON COLUMN experiment.refreshes.mixed_clusters IS
  'clustered experiments: clusters whose units are in more than one variant (the randomisation was not by cluster); each variant''s part counts as a cluster';

-- the rules of a cluster declaration, in the wordings of the catalogue's errors; also run by
-- refresh() (the relation may have changed since)
CREATE OR REPLACE FUNCTION experiment.validate_clusters(e experiment.experiments) RETURNS void
  LANGUAGE plpgsql STABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
DECLARE
  kind "char";
  rls boolean;
  col text;
  what text;
BEGIN
  IF e.cluster_relation IS NULL THEN
    IF e.cluster_unit_column IS NOT NULL OR e.cluster_column IS NOT NULL THEN
      RAISE EXCEPTION 'cluster_% of experiment "%" needs cluster_relation, got NULL',
        CASE WHEN e.cluster_unit_column IS NOT NULL THEN 'unit_column' ELSE 'column' END, left(e.id, 200)
        USING ERRCODE = 'invalid_parameter_value',
              HINT = 'Set cluster_relation, cluster_unit_column and cluster_column together (or none of them).';
    END IF;
  ELSE
    IF e.cluster_attribute IS NOT NULL THEN
      RAISE EXCEPTION 'cluster_attribute of experiment "%" must be NULL when cluster_relation is set, got "%"',
        left(e.id, 200), left(e.cluster_attribute, 200)
        USING ERRCODE = 'invalid_parameter_value',
              HINT = 'Declare the clusters by a relation (cluster_relation, cluster_unit_column, cluster_column) or by a key of the exposures'' attributes (cluster_attribute), not both.';
    END IF;
    SELECT c.relkind, c.relrowsecurity INTO kind, rls FROM pg_catalog.pg_class c WHERE c.oid = e.cluster_relation;
    -- (refresh() reads it as the extension's owner: nothing in it may run code of its own, as a
    -- view's query, a foreign table's server or a row-level security policy would)
    IF kind IS NULL OR kind NOT IN ('r', 'm', 'p') OR rls THEN
      RAISE EXCEPTION 'invalid cluster_relation % of experiment "%"',
        coalesce(e.cluster_relation::text, e.cluster_relation::oid::text), left(e.id, 200)
        USING ERRCODE = 'invalid_parameter_value',
              HINT = 'Use a table, materialized view or partitioned table without row-level security (no view or foreign table).';
    END IF;
    FOREACH what IN ARRAY ARRAY['cluster_unit_column', 'cluster_column'] LOOP
      col := CASE what WHEN 'cluster_unit_column' THEN e.cluster_unit_column ELSE e.cluster_column END;
      IF col IS NULL THEN
        RAISE EXCEPTION '% of experiment "%" must name a column of %, got NULL', what, left(e.id, 200), e.cluster_relation
          USING ERRCODE = 'invalid_parameter_value',
                HINT = 'Set cluster_relation, cluster_unit_column and cluster_column together (or none of them).';
      END IF;
      IF NOT EXISTS (SELECT FROM pg_catalog.pg_attribute a
                     WHERE a.attrelid = e.cluster_relation AND a.attname = col AND a.attnum > 0 AND NOT a.attisdropped) THEN
        RAISE EXCEPTION '% of experiment "%" must name a column of %, got "%"', what, left(e.id, 200),
          e.cluster_relation, left(col, 200)
          USING ERRCODE = 'invalid_parameter_value',
                HINT = experiment.hint_list(ARRAY(SELECT a.attname::text FROM pg_catalog.pg_attribute a
                                                  WHERE a.attrelid = e.cluster_relation AND a.attnum > 0
                                                    AND NOT a.attisdropped ORDER BY a.attnum),
                                            format('columns of %s', e.cluster_relation), e.cluster_relation::text);
      END IF;
    END LOOP;
    IF e.cluster_unit_column = e.cluster_column THEN
      RAISE EXCEPTION 'cluster_column of experiment "%" must differ from cluster_unit_column, got "%" for both',
        left(e.id, 200), left(e.cluster_column, 200)
        USING ERRCODE = 'invalid_parameter_value';
    END IF;
  END IF;
  IF e.cluster_attribute = '' THEN
    PERFORM experiment.raise_invalid_value(format('cluster_attribute of experiment "%s"', left(e.id, 200)), '""',
                                           'a key of experiment.exposures.attributes (NULL: none)');
  END IF;
  IF (e.cluster_relation IS NOT NULL OR e.cluster_attribute IS NOT NULL) AND e.stratify_by IS NOT NULL THEN
    RAISE EXCEPTION 'stratify_by of experiment "%" must be NULL in a clustered experiment, got "%"',
      left(e.id, 200), left(e.stratify_by, 200)
      USING ERRCODE = 'invalid_parameter_value',
            HINT = 'Post-stratification and clustered tests are not combined: set stratify_by or the cluster declaration to NULL.';
  END IF;
END
$$;

COMMENT ON FUNCTION experiment.validate_clusters(experiment.experiments) IS
  'internal: nothing, or the error 22023 naming the field of an experiment''s cluster declaration that is wrong';

CREATE OR REPLACE FUNCTION experiment.experiments_cluster_check() RETURNS trigger
  LANGUAGE plpgsql
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
BEGIN
  -- the design is fixed when the experiment starts: nobody picks the clusters after seeing the data
  IF TG_OP = 'UPDATE' AND OLD.status <> 'draft'
     AND (NEW.cluster_relation, NEW.cluster_unit_column, NEW.cluster_column, NEW.cluster_attribute)
         IS DISTINCT FROM (OLD.cluster_relation, OLD.cluster_unit_column, OLD.cluster_column, OLD.cluster_attribute) THEN
    RAISE EXCEPTION 'cannot change the cluster declaration of experiment "%": it is %', left(OLD.id, 200), OLD.status
      USING ERRCODE = 'invalid_parameter_value',
            HINT = 'cluster_relation, cluster_unit_column, cluster_column and cluster_attribute are fixed when the experiment starts; declare them while it is a draft.';
  END IF;
  PERFORM experiment.validate_clusters(NEW);
  -- who declares a mapping may read it (refresh() checks the experiment's owner_role again)
  IF NEW.cluster_relation IS NOT NULL
     AND (TG_OP = 'INSERT' OR (NEW.cluster_relation, NEW.cluster_unit_column, NEW.cluster_column)
                               IS DISTINCT FROM (OLD.cluster_relation, OLD.cluster_unit_column, OLD.cluster_column))
     AND NOT (pg_catalog.has_column_privilege(NEW.cluster_relation, NEW.cluster_unit_column, 'SELECT')
              AND pg_catalog.has_column_privilege(NEW.cluster_relation, NEW.cluster_column, 'SELECT')) THEN
    RAISE EXCEPTION 'permission denied to declare cluster_relation % of experiment "%"', NEW.cluster_relation,
      left(NEW.id, 200)
      USING ERRCODE = 'insufficient_privilege',
            DETAIL = format('Role %s may not SELECT columns %s, %s of it.', current_user, NEW.cluster_unit_column,
                            NEW.cluster_column);
  END IF;
  RETURN NEW;
END
$$;

COMMENT ON FUNCTION experiment.experiments_cluster_check() IS
  'internal: trigger: the rules of an experiment''s cluster declaration (experiment.validate_clusters)';

CREATE OR REPLACE TRIGGER experiments_cluster_check
  BEFORE INSERT OR UPDATE OF cluster_relation, cluster_unit_column, cluster_column, cluster_attribute, stratify_by
  ON experiment.experiments
  FOR EACH ROW EXECUTE FUNCTION experiment.experiments_cluster_check();

COMMENT ON TRIGGER experiments_cluster_check ON experiment.experiments IS
  'checks the cluster declaration (22023 naming the field)';

-- the name of an experiment's cluster in results (NULL: not clustered)
CREATE OR REPLACE FUNCTION experiment.cluster_label(e experiment.experiments) RETURNS text
  LANGUAGE sql STABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
  SELECT CASE WHEN e.cluster_relation IS NOT NULL THEN format('%s.%s', e.cluster_relation, e.cluster_column)
              WHEN e.cluster_attribute IS NOT NULL THEN 'attributes.' || e.cluster_attribute END
$$;

COMMENT ON FUNCTION experiment.cluster_label(experiment.experiments) IS
  'internal: how results name an experiment''s cluster (relation.column or attributes.key); NULL when not clustered';

-- SQL of the experiment's units' clusters (unit_id, cluster): from the mapping relation (a
-- unit listed with several clusters takes the least, in byte order; NULL clusters are no
-- cluster), or from the attributes of each unit's first exposure
CREATE OR REPLACE FUNCTION experiment.cluster_units_sql(e experiment.experiments) RETURNS text
  LANGUAGE plpgsql STABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
BEGIN
  IF e.cluster_relation IS NOT NULL THEN
    RETURN format('SELECT m.%I::text AS unit_id, pg_catalog.min(m.%I::text COLLATE "C") AS cluster FROM %s m '
                  'WHERE m.%I IS NOT NULL AND m.%I IS NOT NULL GROUP BY 1',
                  e.cluster_unit_column, e.cluster_column, e.cluster_relation, e.cluster_unit_column, e.cluster_column);
  END IF;
  RETURN format('SELECT xp.unit_id, (pg_catalog.array_agg(xp.attributes ->> %L ORDER BY xp.exposed_at, xp.variant))[1] AS cluster '
                'FROM experiment.exposures xp WHERE xp.experiment_id = %L '
                'AND (%L::timestamptz IS NULL OR xp.exposed_at < %L::timestamptz) GROUP BY 1',
                e.cluster_attribute, e.id, e.end_at, e.end_at);
END
$$;

COMMENT ON FUNCTION experiment.cluster_units_sql(experiment.experiments) IS
  'internal: SQL of the units'' clusters (unit_id, cluster) of a clustered experiment';

-- The clustered tests of an experiment, after refresh() has stored its unit-level results:
-- the units' capped per-unit values (vals_from, alias v; capped and pre_capped their SQL)
-- summed per cluster and variant, the moments over the clusters of (sum of y, units) - or for
-- ratio metrics (sum of numerators, sum of denominators) - and their delta-method ratio test
-- (ratio_ttest; cuped_ratio_ttest with the sums of the pre-period values), under the
-- experiment's analysis. The unit-level test is kept in metric_results.unit_test; the
-- enrollment counts clusters (the randomisation units, so that the SRM check is theirs);
-- results over time and per dimension, unit-level, are removed.
CREATE OR REPLACE FUNCTION experiment.refresh_clusters(e experiment.experiments, vals_from text, capped text[], pre_capped text[],
                                            tuning float8, ts timestamptz)
  RETURNS void
  LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
DECLARE
  r record;
  sums text := '';
  aggs text := '';
  unpivot text := '';
  label text := experiment.cluster_label(e);
  n_clusters bigint;
  n_units bigint;
  n_mixed bigint;
  n_total bigint;
BEGIN
  IF label IS NULL THEN
    RETURN;
  END IF;
  PERFORM experiment.validate_clusters(e);
  -- (refresh() runs as the extension's owner: the experiment's owner role must be allowed to
  -- read what it declared)
  IF e.cluster_relation IS NOT NULL
     AND NOT (pg_catalog.has_column_privilege(e.owner_role, e.cluster_relation, e.cluster_unit_column, 'SELECT')
              AND pg_catalog.has_column_privilege(e.owner_role, e.cluster_relation, e.cluster_column, 'SELECT')) THEN
    RAISE EXCEPTION 'refresh of experiment "%": its owner role % may not read columns %, % of cluster_relation %', e.id,
      e.owner_role, e.cluster_unit_column, e.cluster_column, e.cluster_relation
      USING ERRCODE = 'insufficient_privilege',
            HINT = format('GRANT SELECT (%s, %s) ON %s TO %s.', quote_ident(e.cluster_unit_column),
                          quote_ident(e.cluster_column), e.cluster_relation, e.owner_role);
  END IF;

  -- per cluster and variant: the units and the sums of the capped values of the base metrics
  -- (a quantile's per-unit value is no sum)
  FOR r IN SELECT b.i, b.pre FROM pg_temp.exp_base b JOIN experiment.metrics m2 ON m2.name = b.name
           WHERE m2.aggregation <> 'quantile' ORDER BY b.i LOOP
    sums := sums || format(', pg_catalog.sum(%s) AS y%s', capped[r.i], r.i);
    IF r.pre THEN
      sums := sums || format(', pg_catalog.sum(%s) AS x%s', pre_capped[r.i], r.i);
    END IF;
  END LOOP;
  EXECUTE format('CREATE TEMP TABLE exp_cluster_vals ON COMMIT DROP AS '
                 'SELECT k.cluster, v.variant, count(*)::float8 AS n%s '
                 'FROM %s v JOIN (%s) k ON k.unit_id = v.unit_id WHERE k.cluster IS NOT NULL GROUP BY 1, 2',
                 sums, vals_from, experiment.cluster_units_sql(e));
  EXECUTE format('SELECT count(*) FROM %s v', vals_from) INTO n_total;
  SELECT count(*), coalesce(sum(c.n), 0)::bigint INTO n_clusters, n_units FROM pg_temp.exp_cluster_vals c;
  SELECT count(*) INTO n_mixed
    FROM (SELECT c.cluster FROM pg_temp.exp_cluster_vals c GROUP BY c.cluster HAVING count(*) > 1) x;

  -- the moments over clusters of each metric, per variant
  FOR r IN SELECT m2.name, m2.kind, b.i, b.pre,
                  (SELECT bn.i FROM pg_temp.exp_base bn WHERE bn.name = m2.numerator) AS ni,
                  (SELECT bd.i FROM pg_temp.exp_base bd WHERE bd.name = m2.denominator) AS di,
                  m2.cuped_lookback IS NOT NULL
                    AND coalesce((SELECT bn.pre FROM pg_temp.exp_base bn WHERE bn.name = m2.numerator), false)
                    AND coalesce((SELECT bd.pre FROM pg_temp.exp_base bd WHERE bd.name = m2.denominator), false) AS rpre,
                  row_number() OVER (ORDER BY m2.name) AS j
           FROM experiment.experiment_metrics em JOIN experiment.metrics m2 ON m2.name = em.metric
           LEFT JOIN pg_temp.exp_base b ON b.name = m2.name
           WHERE em.experiment_id = e.id AND m2.aggregation <> 'quantile'
             AND CASE WHEN m2.kind = 'ratio'
                      THEN EXISTS (SELECT FROM pg_temp.exp_base bn WHERE bn.name = m2.numerator)
                           AND EXISTS (SELECT FROM pg_temp.exp_base bd WHERE bd.name = m2.denominator)
                      ELSE b.i IS NOT NULL END
           ORDER BY m2.name LOOP
    IF r.kind = 'ratio' THEN
      aggs := aggs || format(', experiment.moments(c.y%s, c.y%s) AS a%s', r.ni, r.di, r.j);
      aggs := aggs || CASE WHEN r.rpre THEN format(', experiment.moments(c.y%s, c.y%s, c.x%s, c.x%s) AS c%s',
                                                   r.ni, r.di, r.ni, r.di, r.j)
                           ELSE format(', NULL::experiment.moments AS c%s', r.j) END;
    ELSE
      aggs := aggs || format(', experiment.moments(c.y%s, c.n) AS a%s', r.i, r.j);
      aggs := aggs || CASE WHEN r.pre THEN format(', experiment.moments(c.y%s, c.n, c.x%s, c.n) AS c%s', r.i, r.i, r.j)
                           ELSE format(', NULL::experiment.moments AS c%s', r.j) END;
    END IF;
    unpivot := unpivot || format(', (%L, a.a%s, a.c%s)', r.name, r.j, r.j);
  END LOOP;
  IF unpivot <> '' THEN
    EXECUTE format('UPDATE experiment.variant_stats vs SET clusters = x.clusters, cluster_moments = x.m, '
                   '  cluster_cuped_moments = x.c '
                   'FROM (SELECT a.variant, a.clusters, k.metric, k.m, k.c '
                   '      FROM (SELECT c.variant, count(*) AS clusters%s FROM pg_temp.exp_cluster_vals c GROUP BY 1) a '
                   '      CROSS JOIN LATERAL (VALUES %s) AS k(metric, m, c)) x '
                   'WHERE vs.experiment_id = %L AND vs.metric = x.metric AND vs.variant = x.variant',
                   aggs, substr(unpivot, 3), e.id);
  END IF;

  -- the tests: the delta-method ratio over clusters (adjusted by the pre-period ratio where
  -- both arms have one that varies), under the experiment's analysis; guardrails one-sided
  UPDATE experiment.metric_results mr
     SET unit_test = mr.test,
         method = k.method,
         test = experiment.metric_test(k.method, c.cluster_moments, t.cluster_moments, c.cluster_cuped_moments,
                                       t.cluster_cuped_moments, e.alpha, 'two-sided', tuning),
         bound_test = CASE WHEN mr.bound_test IS NOT NULL THEN
           experiment.metric_test(k.method, c.cluster_moments, t.cluster_moments, c.cluster_cuped_moments,
                                  t.cluster_cuped_moments, e.alpha,
                                  CASE WHEN m2.higher_is_better THEN 'greater' ELSE 'less' END, tuning) END,
         harm_test = CASE WHEN mr.harm_test IS NOT NULL THEN
           experiment.metric_test(k.method, c.cluster_moments, t.cluster_moments, c.cluster_cuped_moments,
                                  t.cluster_cuped_moments, e.alpha,
                                  CASE WHEN m2.higher_is_better THEN 'less' ELSE 'greater' END, tuning) END,
         clustered_by = label
    FROM experiment.metrics m2, experiment.variant_stats c, experiment.variant_stats t,
         LATERAL (SELECT experiment.metric_method('ratio', c.cluster_cuped_moments, t.cluster_cuped_moments) AS method) k
   WHERE mr.experiment_id = e.id AND mr.method <> 'quantile' AND m2.name = mr.metric
     AND c.experiment_id = e.id AND c.metric = mr.metric AND c.variant = mr.control_variant
     AND t.experiment_id = e.id AND t.metric = mr.metric AND t.variant = mr.variant;

  -- the randomisation units are the clusters: the sample and its SRM check count them
  UPDATE experiment.enrollment en
     SET units = coalesce((SELECT count(*) FROM pg_temp.exp_cluster_vals c WHERE c.variant = en.variant), 0)
   WHERE en.experiment_id = e.id;
  -- (unit-level tests over time and per dimension value would ignore the clusters)
  DELETE FROM experiment.results_daily rd WHERE rd.experiment_id = e.id;
  DELETE FROM experiment.dimension_results dr WHERE dr.experiment_id = e.id;
  UPDATE experiment.refreshes f
     SET clusters = n_clusters, clustered_units = n_units, unclustered_units = n_total - n_units,
         mixed_clusters = n_mixed
   WHERE f.experiment_id = e.id;
  DROP TABLE pg_temp.exp_cluster_vals;
END
$$;

COMMENT ON FUNCTION experiment.refresh_clusters(experiment.experiments, text, text[], text[], float8, timestamptz) IS
  'internal: the clustered tests of a clustered experiment (delta-method ratio over per-cluster sums and unit counts), from refresh()';

REVOKE EXECUTE ON FUNCTION experiment.refresh_clusters(experiment.experiments, text, text[], text[], float8, timestamptz)
  FROM PUBLIC;

-- ---------------------------------------------------------------------------
-- Switchback experiments: every (cluster, time window) of experiment.assign_switchback() is
-- a randomisation unit. The exposures name the switchback's cluster (a region) as unit_id and
-- the window's variant; the metrics' sources carry the same cluster in their unit column.
-- refresh() aggregates each metric's events per (cluster, window) after the window's burn-in
-- and tests the windows' values (doc/designs-clusters.md)
-- ---------------------------------------------------------------------------

ALTER TABLE experiment.experiments
  ADD COLUMN switchback_window interval,
  ADD COLUMN switchback_burn_in interval;

COMMENT ON COLUMN experiment.experiments.switchback_window IS
  'switchback experiments: the length of a time window (the window_size of experiment.assign_switchback; windows start at multiples of it from 1970-01-01 UTC); NULL: not a switchback';

COMMENT ON COLUMN experiment.experiments.switchback_burn_in IS
  'switchback experiments: the start of every window whose events are dropped (carry-over from the previous window''s variant); NULL: none; fixed when the experiment leaves draft';

-- the rules of a switchback declaration (22023 naming the field)
CREATE OR REPLACE FUNCTION experiment.validate_switchback(e experiment.experiments) RETURNS void
  LANGUAGE plpgsql STABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
BEGIN
  IF e.switchback_window IS NULL THEN
    IF e.switchback_burn_in IS NOT NULL THEN
      RAISE EXCEPTION 'switchback_burn_in of experiment "%" needs switchback_window, got NULL', left(e.id, 200)
        USING ERRCODE = 'invalid_parameter_value', HINT = 'Set switchback_window, the length of a window, too.';
    END IF;
    RETURN;
  END IF;
  IF NOT (e.switchback_window >= interval '1 second') OR extract(year FROM e.switchback_window) <> 0
     OR extract(month FROM e.switchback_window) <> 0 THEN
    PERFORM experiment.raise_invalid_value(format('switchback_window of experiment "%s"', left(e.id, 200)),
                                           e.switchback_window::text,
                                           'a fixed length of at least 1 second, in days, hours, minutes or seconds (no months)');
  END IF;
  IF e.switchback_burn_in IS NOT NULL AND NOT (e.switchback_burn_in >= interval '0'
       AND e.switchback_burn_in < e.switchback_window AND extract(year FROM e.switchback_burn_in) = 0
       AND extract(month FROM e.switchback_burn_in) = 0) THEN
    PERFORM experiment.raise_invalid_value(format('switchback_burn_in of experiment "%s"', left(e.id, 200)),
                                           e.switchback_burn_in::text,
                                           format('a length in [0, switchback_window = %s), no months (NULL: none)',
                                                  e.switchback_window));
  END IF;
  IF e.cluster_relation IS NOT NULL OR e.cluster_attribute IS NOT NULL THEN
    RAISE EXCEPTION 'switchback_window of experiment "%" must be NULL in a cluster-randomised experiment, got %',
      left(e.id, 200), e.switchback_window
      USING ERRCODE = 'invalid_parameter_value',
            HINT = 'A switchback''s clusters are its (cluster, window) pairs: set cluster_relation and cluster_attribute to NULL.';
  END IF;
  IF e.stratify_by IS NOT NULL THEN
    RAISE EXCEPTION 'stratify_by of experiment "%" must be NULL in a switchback experiment, got "%"',
      left(e.id, 200), left(e.stratify_by, 200)
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
END
$$;

COMMENT ON FUNCTION experiment.validate_switchback(experiment.experiments) IS
  'internal: nothing, or the error 22023 naming the field of an experiment''s switchback declaration that is wrong';

CREATE OR REPLACE FUNCTION experiment.experiments_switchback_check() RETURNS trigger
  LANGUAGE plpgsql
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
BEGIN
  IF TG_OP = 'UPDATE' AND OLD.status <> 'draft'
     AND (NEW.switchback_window, NEW.switchback_burn_in) IS DISTINCT FROM (OLD.switchback_window, OLD.switchback_burn_in) THEN
    RAISE EXCEPTION 'cannot change the switchback declaration of experiment "%": it is %', left(OLD.id, 200), OLD.status
      USING ERRCODE = 'invalid_parameter_value',
            HINT = 'switchback_window and switchback_burn_in are fixed when the experiment starts; declare them while it is a draft.';
  END IF;
  PERFORM experiment.validate_switchback(NEW);
  RETURN NEW;
END
$$;

COMMENT ON FUNCTION experiment.experiments_switchback_check() IS
  'internal: trigger: the rules of an experiment''s switchback declaration (experiment.validate_switchback)';

CREATE OR REPLACE TRIGGER experiments_switchback_check
  BEFORE INSERT OR UPDATE OF switchback_window, switchback_burn_in, cluster_relation, cluster_attribute, stratify_by
  ON experiment.experiments
  FOR EACH ROW EXECUTE FUNCTION experiment.experiments_switchback_check();

COMMENT ON TRIGGER experiments_switchback_check ON experiment.experiments IS
  'checks the switchback declaration (22023 naming the field)';

-- The refresh of a switchback experiment, in full (called by refresh() instead of the
-- unit-level analysis): the windows are the (cluster, window) pairs with exposures before
-- end_at, their variant that of their exposures (a window exposed to several variants is
-- left out and counted in refreshes.multi_variant_units); per window and metric the value of
-- the metric's aggregation over the cluster's events in [window start + burn-in, window end)
-- before end_at (0 without events), read by experiment.source_unit_values() as the metric's
-- owner (one call per window start: a cluster is once in each), capped at percentiles pooled
-- over the windows; per variant the moments over windows; tests of each treatment against
-- control: Welch over windows (mean and proportion metrics), the delta-method ratio of sums
-- over windows (ratio metrics), under the experiment's analysis.
CREATE OR REPLACE FUNCTION experiment.refresh_switchback(e experiment.experiments, control text) RETURNS void
  LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
DECLARE
  started timestamptz := clock_timestamp();
  ts timestamptz := now();
  wsec float8 := extract(epoch FROM e.switchback_window);
  burn interval := pg_catalog.make_interval(secs => extract(epoch FROM coalesce(e.switchback_burn_in, interval '0')));
  win interval := pg_catalog.make_interval(secs => extract(epoch FROM e.switchback_window));
  label text;
  r record;
  sc record;
  k integer := 0;
  cols text := '';
  joins text := '';
  cp record;
  aggs text := '';
  unpivot text := '';
  tuning float8;
  nwin bigint;
  nmixed bigint;
  min_t timestamptz;
  max_t timestamptz;
BEGIN
  PERFORM experiment.validate_switchback(e);
  label := format('switchback windows of %s (burn-in %s)', e.switchback_window,
                  coalesce(e.switchback_burn_in, interval '0'));
  PERFORM experiment.drop_refresh_tables();
  -- the windows: (cluster, window number) with their variant
  CREATE TEMP TABLE exp_sb_windows ON COMMIT DROP AS
    SELECT xp.unit_id AS cluster, pg_catalog.floor(extract(epoch FROM xp.exposed_at) / wsec)::bigint AS w,
           pg_catalog.min(xp.variant) AS variant, pg_catalog.min(xp.variant) <> pg_catalog.max(xp.variant) AS multi,
           pg_catalog.min(xp.exposed_at) AS first_exposure
    FROM experiment.exposures xp
    WHERE xp.experiment_id = e.id AND (e.end_at IS NULL OR xp.exposed_at < e.end_at)
    GROUP BY 1, 2;
  SELECT count(*) FILTER (WHERE NOT x.multi), count(*) FILTER (WHERE x.multi),
         pg_catalog.min(x.first_exposure), pg_catalog.max(x.first_exposure)
    INTO nwin, nmixed, min_t, max_t FROM pg_temp.exp_sb_windows x;
  DELETE FROM pg_temp.exp_sb_windows x WHERE x.multi;
  -- the base metrics (no pre-period: CUPED is not used in a switchback; quantiles are not analysed)
  CREATE TEMP TABLE exp_base ON COMMIT DROP AS
    SELECT n.name, false AS pre, row_number() OVER (ORDER BY n.name)::integer AS i
    FROM (SELECT DISTINCT p.part AS name
          FROM experiment.experiment_metrics em JOIN experiment.metrics m ON m.name = em.metric
          CROSS JOIN LATERAL (SELECT m.name WHERE m.kind <> 'ratio' AND m.aggregation <> 'quantile'
                              UNION ALL SELECT m.numerator WHERE m.kind = 'ratio'
                              UNION ALL SELECT m.denominator WHERE m.kind = 'ratio') p(part)
          WHERE em.experiment_id = e.id) n;

  -- one scan per window start and source (units: the clusters exposed in that window)
  FOR sc IN SELECT m.source, m.unit_column, m.owner,
                   pg_catalog.array_agg(m.time_column ORDER BY b.i) AS tcols,
                   pg_catalog.array_agg(m.value_column ORDER BY b.i) AS vcols,
                   pg_catalog.array_agg(m.aggregation ORDER BY b.i) AS aggs,
                   pg_catalog.array_agg(b.i ORDER BY b.i) AS targets
            FROM pg_temp.exp_base b JOIN experiment.metrics m ON m.name = b.name
            GROUP BY 1, 2, 3 ORDER BY 1, 2, 3 LOOP
    k := k + 1;
    EXECUTE format(
      'CREATE TEMP TABLE exp_sb_src%s ON COMMIT DROP AS '
      'SELECT g.w, x.unit_id AS cluster, x.vals FROM '
      '(SELECT y.w, pg_catalog.array_agg(y.cluster) AS ids, pg_catalog.array_agg(y.variant) AS variants, '
      '        pg_catalog.array_agg(pg_catalog.to_timestamp(y.w * %s::float8)) AS t0s '
      ' FROM pg_temp.exp_sb_windows y GROUP BY y.w) g, '
      'LATERAL experiment.source_unit_values(g.ids, g.variants, g.t0s, %L::regclass, %L, %L::text[], %L::text[], '
      '  %L::text[], %L::interval[], %L::interval[], %L::boolean[], %L::timestamptz, '
      '  pg_catalog.to_timestamp(g.w * %s::float8) + %L::interval, pg_catalog.to_timestamp(g.w * %s::float8) + %L::interval, '
      '  %L::regrole) x',
      k, wsec, sc.source, sc.unit_column, sc.tcols, sc.vcols, sc.aggs,
      array_fill(burn, ARRAY[cardinality(sc.targets)]), array_fill(win, ARRAY[cardinality(sc.targets)]),
      array_fill(true, ARRAY[cardinality(sc.targets)]), e.end_at, wsec, burn, wsec, win, sc.owner);
    EXECUTE format('CREATE INDEX ON pg_temp.exp_sb_src%s (w, cluster)', k);
    SELECT cols || pg_catalog.string_agg(format(', s%s.vals[%s] AS v%s, 0::bigint AS s%s', k, t.o, t.i, t.i), '' ORDER BY t.o)
      INTO cols FROM pg_catalog.unnest(sc.targets) WITH ORDINALITY AS t(i, o);
    joins := joins || format(' JOIN pg_temp.exp_sb_src%s s%s ON s%s.w = y.w AND s%s.cluster = y.cluster', k, k, k, k);
  END LOOP;
  EXECUTE format('CREATE TEMP TABLE exp_vals ON COMMIT DROP AS '
                 'SELECT y.cluster || ''@'' || y.w AS unit_id, y.variant, y.cluster, y.w%s '
                 'FROM pg_temp.exp_sb_windows y%s', cols, joins);
  SELECT * INTO cp FROM experiment.winsorization_caps('pg_temp.exp_vals');

  DELETE FROM experiment.variant_stats vs WHERE vs.experiment_id = e.id;
  DELETE FROM experiment.metric_results mr WHERE mr.experiment_id = e.id;
  DELETE FROM experiment.enrollment en WHERE en.experiment_id = e.id;
  DELETE FROM experiment.results_daily rd WHERE rd.experiment_id = e.id;
  DELETE FROM experiment.dimension_results dr WHERE dr.experiment_id = e.id;
  DELETE FROM experiment.dimension_stats ds WHERE ds.experiment_id = e.id;
  DELETE FROM experiment.dimension_enrollment dn WHERE dn.experiment_id = e.id;

  FOR r IN SELECT m2.name, m2.kind, b.i,
                  (SELECT bn.i FROM pg_temp.exp_base bn WHERE bn.name = m2.numerator) AS ni,
                  (SELECT bd.i FROM pg_temp.exp_base bd WHERE bd.name = m2.denominator) AS di,
                  row_number() OVER (ORDER BY m2.name) AS j
           FROM experiment.experiment_metrics em JOIN experiment.metrics m2 ON m2.name = em.metric
           LEFT JOIN pg_temp.exp_base b ON b.name = m2.name
           WHERE em.experiment_id = e.id AND m2.aggregation <> 'quantile'
           ORDER BY m2.name LOOP
    IF r.kind = 'ratio' THEN
      aggs := aggs || format(', experiment.moments(%s, %s) AS a%s', cp.capped[r.ni], cp.capped[r.di], r.j);
      unpivot := unpivot || format(', (%L, a.a%s, NULL::float8, NULL::float8)', r.name, r.j);
    ELSE
      aggs := aggs || format(', experiment.moments(%s) AS a%s', cp.capped[r.i], r.j);
      unpivot := unpivot || format(', (%L, a.a%s, %L::float8, %L::float8)', r.name, r.j, cp.caps[r.i], cp.lower_caps[r.i]);
    END IF;
  END LOOP;
  IF unpivot <> '' THEN
    EXECUTE format('INSERT INTO experiment.variant_stats (experiment_id, metric, variant, units, moments, cap, cap_lower, '
                   '  refreshed_at, clusters, cluster_moments) '
                   'SELECT %L, k.metric, a.variant, a.windows, k.m, k.cap, k.cap_lower, %L, a.windows, k.m '
                   'FROM (SELECT v.variant, count(*) AS windows%s FROM pg_temp.exp_vals v GROUP BY 1) a '
                   'CROSS JOIN LATERAL (VALUES %s) AS k(metric, m, cap, cap_lower)',
                   e.id, ts, aggs, substr(unpivot, 3));
  END IF;
  INSERT INTO experiment.enrollment (experiment_id, variant, units, refreshed_at)
  SELECT e.id, v.name, (SELECT count(*) FROM pg_temp.exp_vals x WHERE x.variant = v.name), ts
  FROM experiment.variants v WHERE v.experiment_id = e.id;

  tuning := CASE WHEN e.analysis = 'sequential' THEN experiment.sequential_tuning_of(e) END;
  INSERT INTO experiment.metric_results
    (experiment_id, metric, variant, control_variant, method, alpha, test, refreshed_at,
     analysis, sequential_tuning, bound_test, harm_test, clustered_by)
  SELECT e.id, m2.name, t.variant, c.variant, k.method, e.alpha,
         experiment.metric_test(k.method, c.moments, t.moments, NULL, NULL, e.alpha, 'two-sided', tuning),
         ts, e.analysis, tuning,
         CASE WHEN em.role = 'guardrail' THEN
           experiment.metric_test(k.method, c.moments, t.moments, NULL, NULL, e.alpha,
                                  CASE WHEN m2.higher_is_better THEN 'greater' ELSE 'less' END, tuning) END,
         CASE WHEN em.role = 'guardrail' THEN
           experiment.metric_test(k.method, c.moments, t.moments, NULL, NULL, e.alpha,
                                  CASE WHEN m2.higher_is_better THEN 'less' ELSE 'greater' END, tuning) END,
         label
  FROM experiment.experiment_metrics em
  JOIN experiment.metrics m2 ON m2.name = em.metric
  JOIN experiment.variant_stats c ON c.experiment_id = e.id AND c.metric = m2.name AND c.variant = control
  JOIN experiment.variant_stats t ON t.experiment_id = e.id AND t.metric = m2.name AND t.variant <> control
  CROSS JOIN LATERAL (SELECT CASE WHEN m2.kind = 'ratio' THEN 'ratio' ELSE 'welch' END AS method) k
  WHERE em.experiment_id = e.id;

  INSERT INTO experiment.refreshes AS f
    (experiment_id, refreshed_at, duration, enrolled_units, multi_variant_units, early_units,
     first_exposure, last_exposure, exposures_by_day, error, error_at, mode, full_reason,
     clusters, clustered_units, unclustered_units, mixed_clusters)
  SELECT e.id, ts, clock_timestamp() - started, nwin, nmixed,
         (SELECT count(*) FROM pg_temp.exp_sb_windows x WHERE x.first_exposure < e.start_at),
         min_t, max_t,
         (SELECT coalesce(jsonb_agg(jsonb_build_object('day', d.day, 'units', d.n) ORDER BY d.day), '[]')
          FROM (SELECT (x.first_exposure AT TIME ZONE 'UTC')::date AS day, count(*) AS n
                FROM pg_temp.exp_sb_windows x GROUP BY 1) d),
         NULL, NULL, 'full', 'switchback experiments are refreshed in full', nwin, NULL, NULL, nmixed
  ON CONFLICT ON CONSTRAINT refreshes_pkey DO UPDATE SET
    refreshed_at = excluded.refreshed_at, duration = excluded.duration,
    enrolled_units = excluded.enrolled_units, multi_variant_units = excluded.multi_variant_units,
    early_units = excluded.early_units, first_exposure = excluded.first_exposure,
    last_exposure = excluded.last_exposure, exposures_by_day = excluded.exposures_by_day,
    error = NULL, error_at = NULL, mode = excluded.mode, full_reason = excluded.full_reason,
    clusters = excluded.clusters, clustered_units = NULL, unclustered_units = NULL,
    mixed_clusters = excluded.mixed_clusters;
  FOR r IN SELECT c.relname FROM pg_catalog.pg_class c
           WHERE c.relnamespace = pg_catalog.pg_my_temp_schema() AND c.relkind = 'r'
             AND (c.relname LIKE 'exp\_sb\_%' OR c.relname IN ('exp_vals', 'exp_base')) LOOP
    EXECUTE format('DROP TABLE pg_temp.%I', r.relname);
  END LOOP;
END
$$;

COMMENT ON FUNCTION experiment.refresh_switchback(experiment.experiments, text) IS
  'internal: the refresh of a switchback experiment, from refresh(): per (cluster, window) the metrics'' values after the burn-in, tests over windows';

REVOKE EXECUTE ON FUNCTION experiment.refresh_switchback(experiment.experiments, text) FROM PUBLIC;

CREATE TABLE experiment.holdouts (
  holdout_id text PRIMARY KEY REFERENCES experiment.experiments (id) ON DELETE CASCADE,
  layer text
    CONSTRAINT holdouts_layer_not_empty CHECK (layer <> ''),
  created_at timestamptz NOT NULL DEFAULT pg_catalog.now()
);

COMMENT ON TABLE experiment.holdouts IS
  'long-term holdouts: the experiment holdout_id (variants holdout = control, exposed) holds its control share of units out of every member experiment (holdout_members, and every experiment of layer) until it is concluded';

COMMENT ON COLUMN experiment.holdouts.layer IS
  'every experiment of this layer is a member of the holdout (NULL: only those of holdout_members)';

SELECT pg_catalog.pg_extension_config_dump('experiment.holdouts', '');

CREATE TABLE experiment.holdout_members (
  holdout_id text NOT NULL REFERENCES experiment.holdouts (holdout_id) ON DELETE CASCADE,
  experiment_id text NOT NULL REFERENCES experiment.experiments (id) ON DELETE CASCADE,
  PRIMARY KEY (holdout_id, experiment_id),
  CONSTRAINT holdout_members_not_self CHECK (holdout_id <> experiment_id)
);

COMMENT ON TABLE experiment.holdout_members IS
  'the experiments a holdout covers by name (besides those of its layer); a member never assigns a held-out unit';

SELECT pg_catalog.pg_extension_config_dump('experiment.holdout_members', '');

CREATE TABLE experiment.bandits (
  experiment_id text PRIMARY KEY REFERENCES experiment.experiments (id) ON DELETE CASCADE,
  metric text NOT NULL REFERENCES experiment.metrics (name),
  period interval NOT NULL DEFAULT '1 day',
  min_weight float8 NOT NULL DEFAULT 0.01,
  min_units bigint,
  CONSTRAINT bandits_period_positive CHECK (period > interval '0'),
  CONSTRAINT bandits_min_weight_range CHECK (min_weight >= 0 AND min_weight < 1),
  CONSTRAINT bandits_min_units_positive CHECK (min_units > 0)
);

COMMENT ON TABLE experiment.bandits IS
  'bandit experiments: the metric whose mean the allocation favours, how often the weights are recomputed, the floor per arm and the units needed before they move';

COMMENT ON COLUMN experiment.bandits.metric IS
  'a mean or proportion metric of the catalogue (one of the experiment''s metrics); its higher_is_better says which arm is best';

COMMENT ON COLUMN experiment.bandits.period IS
  'how long one allocation stays: experiment.update_bandit_weights() starts a new period once the current one is this old';

COMMENT ON COLUMN experiment.bandits.min_weight IS
  'floor f of every arm''s weight: p = f + (1 - k f) w, w the top-two Thompson sampling weight (k arms; k f <= 1)';

COMMENT ON COLUMN experiment.bandits.min_units IS
  'analysed units (all arms) before the weights move; NULL: 100 per arm';

SELECT pg_catalog.pg_extension_config_dump('experiment.bandits', '');

CREATE TABLE experiment.bandit_periods (
  experiment_id text NOT NULL REFERENCES experiment.bandits (experiment_id) ON DELETE CASCADE,
  period integer NOT NULL
    CONSTRAINT bandit_periods_period_not_negative CHECK (period >= 0),
  started_at timestamptz NOT NULL,
  variants text[] NOT NULL,
  weights float8[] NOT NULL,
  best_arm_probabilities float8[],
  units bigint[],
  means float8[],
  variances float8[],
  PRIMARY KEY (experiment_id, period)
);

COMMENT ON TABLE experiment.bandit_periods IS
  'the allocation of each period of a bandit: from started_at until the next period starts, new units are assigned with weights (in the order of variants, the range order); period 0 is the split of experiment.variants';

COMMENT ON COLUMN experiment.bandit_periods.best_arm_probabilities IS
  'P(arm is best) under the Gaussian posteriors the weights were computed from (NULL for period 0)';

COMMENT ON COLUMN experiment.bandit_periods.means IS
  'the posterior means: each arm''s period-weighted mean of the metric when the weights were computed';

COMMENT ON COLUMN experiment.bandit_periods.variances IS
  'the posterior variances of those means';

SELECT pg_catalog.pg_extension_config_dump('experiment.bandit_periods', '');

-- ---------------------------------------------------------------------------
-- Holdouts
-- ---------------------------------------------------------------------------

-- the holdouts that cover an experiment and still hold units out (not concluded), with the
-- end of the held-out range of the holdout's hash
CREATE OR REPLACE FUNCTION experiment.holdouts_of(experiment_id text)
  RETURNS TABLE (holdout_id text, salt text, hash_scheme text, range_end float8)
  LANGUAGE sql STABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
  SELECT h.holdout_id, hx.salt, hx.hash_scheme,
         (experiment.variant_ranges(hx.hash_scheme, (experiment.split(hx.id)).allocations, 1))[1][2]
    FROM experiment.holdouts h
    JOIN experiment.experiments hx ON hx.id = h.holdout_id
    JOIN experiment.experiments mx ON mx.id = holdouts_of.experiment_id
   WHERE hx.status <> 'concluded'
     AND (EXISTS (SELECT FROM experiment.holdout_members hm
                   WHERE hm.holdout_id = h.holdout_id AND hm.experiment_id = holdouts_of.experiment_id)
          OR (h.layer IS NOT NULL AND h.layer = mx.layer AND mx.id <> h.holdout_id))
   ORDER BY h.holdout_id COLLATE "C"
$$;

COMMENT ON FUNCTION experiment.holdouts_of(text) IS
  'internal: the holdouts (not concluded) that cover an experiment: id, salt, hash scheme and the end of the held-out range [0, range_end) of unit_hash(hash_scheme, salt, unit)';

-- (PL/pgSQL: assign() calls it for every unit, and its plan is kept for the session)
CREATE OR REPLACE FUNCTION experiment.held_out(unit_id text, experiment_id text) RETURNS boolean
  LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
DECLARE
  h record;
BEGIN
  FOR h IN SELECT hx.salt, hx.hash_scheme,
                  (SELECT pg_catalog.array_agg(v.allocation ORDER BY v.is_control DESC, v.name COLLATE "C")
                     FROM experiment.variants v WHERE v.experiment_id = hx.id) AS allocations
             FROM experiment.holdouts ho
             JOIN experiment.experiments hx ON hx.id = ho.holdout_id
             JOIN experiment.experiments mx ON mx.id = held_out.experiment_id
            WHERE hx.status <> 'concluded'
              AND ((ho.layer IS NOT NULL AND ho.layer = mx.layer AND mx.id <> ho.holdout_id)
                   OR EXISTS (SELECT FROM experiment.holdout_members hm
                               WHERE hm.holdout_id = ho.holdout_id AND hm.experiment_id = held_out.experiment_id)) LOOP
    IF experiment.unit_hash(h.hash_scheme, h.salt, unit_id)
       < (experiment.variant_ranges(h.hash_scheme, h.allocations, 1))[1][2] THEN
      RETURN true;
    END IF;
  END LOOP;
  RETURN false;
END
$$;

COMMENT ON FUNCTION experiment.held_out(text, text) IS
  'whether a holdout that covers the experiment (experiment.holdouts_of) holds the unit out (its hash in the holdout''s control range): assign() then returns NULL';

-- the rules of holdouts and bandits on experiment rows (besides experiments_check, which
-- runs first): a holdout keeps traffic 1, no layer, no targeting and two variants; a member
-- starts only once its holdouts have; members share their holdouts' hash family
CREATE OR REPLACE FUNCTION experiment.experiments_design_check() RETURNS trigger
  LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
DECLARE
  h record;
  nv bigint;
BEGIN
  IF EXISTS (SELECT FROM experiment.holdouts ho WHERE ho.holdout_id = NEW.id) THEN
    IF NEW.traffic <> 1 OR NEW.layer IS NOT NULL OR NEW.targeting IS NOT NULL THEN
      RAISE EXCEPTION 'holdout "%" must have traffic 1, no layer and no targeting', NEW.id
        USING ERRCODE = 'invalid_parameter_value',
              HINT = 'A holdout holds its share of every unit out; target and ramp its member experiments instead.';
    END IF;
    IF TG_OP = 'UPDATE' AND OLD.status = 'draft' AND NEW.status <> 'draft' THEN
      SELECT count(*) INTO nv FROM experiment.variants v WHERE v.experiment_id = NEW.id;
      IF nv <> 2 THEN
        RAISE EXCEPTION 'holdout "%" must have 2 variants (holdout and exposed), got %', NEW.id, nv
          USING ERRCODE = 'invalid_parameter_value';
      END IF;
    END IF;
  END IF;
  FOR h IN SELECT ho.holdout_id, hx.status, hx.hash_scheme
             FROM experiment.holdouts ho JOIN experiment.experiments hx ON hx.id = ho.holdout_id
            WHERE hx.status <> 'concluded' AND ho.holdout_id <> NEW.id
              AND ((ho.layer IS NOT NULL AND ho.layer = NEW.layer)
                   OR EXISTS (SELECT FROM experiment.holdout_members hm
                               WHERE hm.holdout_id = ho.holdout_id AND hm.experiment_id = NEW.id)) LOOP
    IF (h.hash_scheme IN ('growthbook_v1', 'growthbook_v2')) <> (NEW.hash_scheme IN ('growthbook_v1', 'growthbook_v2')) THEN
      RAISE EXCEPTION 'experiment "%" (hash_scheme %) cannot be a member of holdout "%" (hash_scheme %)',
        NEW.id, NEW.hash_scheme, h.holdout_id, h.hash_scheme
        USING ERRCODE = 'invalid_parameter_value',
              HINT = 'A holdout and its members all use growthbook_* schemes (the GrowthBook payload filters on the holdout''s hash) or all use sha256, eppo or statsig.';
    END IF;
    IF TG_OP = 'UPDATE' AND OLD.status = 'draft' AND NEW.status = 'running' AND h.status = 'draft' THEN
      RAISE EXCEPTION 'cannot start experiment "%": its holdout "%" is in draft', NEW.id, h.holdout_id
        USING ERRCODE = 'invalid_parameter_value',
              HINT = 'Start the holdout first (experiment.start), so that it takes its units before its members do.';
    END IF;
  END LOOP;
  IF TG_OP = 'UPDATE' AND OLD.status = 'draft' AND NEW.status = 'running'
     AND EXISTS (SELECT FROM experiment.bandits b WHERE b.experiment_id = NEW.id) THEN
    PERFORM experiment.check_bandit(NEW.id);
  END IF;
  RETURN NEW;
END
$$;

COMMENT ON FUNCTION experiment.experiments_design_check() IS
  'internal: trigger: a holdout keeps traffic 1, no layer, no targeting and 2 variants; a member starts only after its holdouts and shares their hash family; a bandit starts only with a valid declaration';

CREATE OR REPLACE TRIGGER experiments_design_check BEFORE INSERT OR UPDATE ON experiment.experiments
  FOR EACH ROW EXECUTE FUNCTION experiment.experiments_design_check();

COMMENT ON TRIGGER experiments_design_check ON experiment.experiments IS
  'the rules of holdouts, their members and bandits (experiment.experiments_design_check)';

-- membership changes may not move a unit: an experiment joins or leaves a holdout only while
-- it assigns nobody (draft or concluded) or while the holdout holds nobody out (concluded)
CREATE OR REPLACE FUNCTION experiment.holdout_membership_guard(holdout_id text, experiment_id text, action text)
  RETURNS void
  LANGUAGE plpgsql STABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
DECLARE
  hs text;
  ms text;
  hsch text;
  hsalt text;
  msch text;
BEGIN
  SELECT x.status, x.hash_scheme, x.salt INTO hs, hsch, hsalt FROM experiment.experiments x WHERE x.id = holdout_membership_guard.holdout_id;
  SELECT x.status, x.hash_scheme INTO ms, msch FROM experiment.experiments x WHERE x.id = holdout_membership_guard.experiment_id;
  IF ms IS NULL OR hs IS NULL THEN
    RETURN;   -- a deleted experiment takes its memberships with it
  END IF;
  IF action = 'add' AND EXISTS (SELECT FROM experiment.holdouts h WHERE h.holdout_id = holdout_membership_guard.experiment_id) THEN
    RAISE EXCEPTION 'experiment "%" is a holdout and cannot be a member of holdout "%"', experiment_id, holdout_id
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  -- a running member leaving would assign held-out units; one joining may only if none of
  -- the units the holdout holds out has been exposed to it (the exposure log is the source of
  -- truth: so a restored dump, whose exposures precede its memberships, passes)
  IF hs <> 'concluded' AND ms IN ('running', 'stopped')
     AND (action <> 'add'
          OR EXISTS (SELECT FROM experiment.exposures xp
                      WHERE xp.experiment_id = holdout_membership_guard.experiment_id
                        AND experiment.unit_hash(hsch, hsalt, xp.unit_id)
                            < (experiment.variant_ranges(hsch, (experiment.split(holdout_membership_guard.holdout_id)).allocations, 1))[1][2])) THEN
    RAISE EXCEPTION 'cannot % experiment "%" % holdout "%": the experiment is %', action, experiment_id,
      CASE WHEN action = 'add' THEN 'to' ELSE 'from' END, holdout_id,
      ms || CASE WHEN action = 'add' THEN ' and has exposures of units the holdout holds out' ELSE '' END
      USING ERRCODE = 'invalid_parameter_value',
            HINT = 'Units would move: an experiment joins a holdout in draft (or before a held-out unit is exposed to it), and leaves it once concluded (or once the holdout is).';
  END IF;
  IF action = 'add' AND (hsch IN ('growthbook_v1', 'growthbook_v2')) <> (msch IN ('growthbook_v1', 'growthbook_v2')) THEN
    RAISE EXCEPTION 'experiment "%" (hash_scheme %) cannot be a member of holdout "%" (hash_scheme %)',
      experiment_id, msch, holdout_id, hsch
      USING ERRCODE = 'invalid_parameter_value',
            HINT = 'A holdout and its members all use growthbook_* schemes (the GrowthBook payload filters on the holdout''s hash) or all use sha256, eppo or statsig.';
  END IF;
END
$$;

COMMENT ON FUNCTION experiment.holdout_membership_guard(text, text, text) IS
  'internal: the error (22023) when adding or removing a member would move units (member running or stopped, holdout not concluded), or the member is a holdout or of another hash family';

CREATE OR REPLACE FUNCTION experiment.holdouts_check() RETURNS trigger
  LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
DECLARE
  x record;
  nv bigint;
BEGIN
  IF TG_OP IN ('UPDATE', 'DELETE') THEN
    PERFORM experiment.require_experiment_owner(OLD.holdout_id, 'change the holdout');
    IF OLD.layer IS NOT NULL AND (TG_OP = 'DELETE' OR NEW.layer IS DISTINCT FROM OLD.layer
                                  OR NEW.holdout_id <> OLD.holdout_id) THEN
      FOR x IN SELECT m.id FROM experiment.experiments m WHERE m.layer = OLD.layer AND m.id <> OLD.holdout_id LOOP
        PERFORM experiment.holdout_membership_guard(OLD.holdout_id, x.id, 'remove');
      END LOOP;
    END IF;
  END IF;
  IF TG_OP = 'DELETE' THEN
    RETURN OLD;
  END IF;
  PERFORM experiment.require_experiment(NEW.holdout_id);
  PERFORM experiment.require_experiment_owner(NEW.holdout_id, 'change the holdout');
  SELECT * INTO x FROM experiment.experiments e WHERE e.id = NEW.holdout_id;
  IF x.traffic <> 1 OR x.layer IS NOT NULL OR x.targeting IS NOT NULL THEN
    RAISE EXCEPTION 'holdout "%" must have traffic 1, no layer and no targeting', NEW.holdout_id
      USING ERRCODE = 'invalid_parameter_value',
            HINT = 'A holdout holds its share of every unit out; target and ramp its member experiments instead.';
  END IF;
  SELECT count(*) INTO nv FROM experiment.variants v WHERE v.experiment_id = NEW.holdout_id;
  IF nv <> 2 THEN
    RAISE EXCEPTION 'holdout "%" must have 2 variants (holdout and exposed), got %', NEW.holdout_id, nv
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  IF EXISTS (SELECT FROM experiment.bandits b WHERE b.experiment_id = NEW.holdout_id) THEN
    RAISE EXCEPTION 'experiment "%" is a bandit and cannot be a holdout', NEW.holdout_id
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  IF NEW.layer IS NOT NULL AND (TG_OP = 'INSERT' OR NEW.layer IS DISTINCT FROM OLD.layer) THEN
    FOR x IN SELECT m.id FROM experiment.experiments m WHERE m.layer = NEW.layer AND m.id <> NEW.holdout_id LOOP
      PERFORM experiment.holdout_membership_guard(NEW.holdout_id, x.id, 'add');
    END LOOP;
  END IF;
  RETURN NEW;
END
$$;

COMMENT ON FUNCTION experiment.holdouts_check() IS
  'internal: trigger: a holdout is an experiment with traffic 1, no layer or targeting and 2 variants; its layer''s experiments join (and leave) it only while no unit would move; owner-only changes';

CREATE OR REPLACE TRIGGER holdouts_check BEFORE INSERT OR UPDATE OR DELETE ON experiment.holdouts
  FOR EACH ROW EXECUTE FUNCTION experiment.holdouts_check();

COMMENT ON TRIGGER holdouts_check ON experiment.holdouts IS
  'validates each holdout (experiment.holdouts_check)';

CREATE OR REPLACE FUNCTION experiment.holdout_members_check() RETURNS trigger
  LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
BEGIN
  IF TG_OP IN ('UPDATE', 'DELETE') THEN
    PERFORM experiment.require_experiment_owner(OLD.holdout_id, 'change the members of holdout');
    PERFORM experiment.holdout_membership_guard(OLD.holdout_id, OLD.experiment_id, 'remove');
  END IF;
  IF TG_OP = 'DELETE' THEN
    RETURN OLD;
  END IF;
  PERFORM experiment.require_experiment(NEW.experiment_id);
  PERFORM experiment.require_experiment_owner(NEW.holdout_id, 'change the members of holdout');
  PERFORM experiment.holdout_membership_guard(NEW.holdout_id, NEW.experiment_id, 'add');
  RETURN NEW;
END
$$;

COMMENT ON FUNCTION experiment.holdout_members_check() IS
  'internal: trigger: a member joins or leaves a holdout only while no unit would move (experiment.holdout_membership_guard); owner-only changes';

CREATE OR REPLACE TRIGGER holdout_members_check BEFORE INSERT OR UPDATE OR DELETE ON experiment.holdout_members
  FOR EACH ROW EXECUTE FUNCTION experiment.holdout_members_check();

COMMENT ON TRIGGER holdout_members_check ON experiment.holdout_members IS
  'validates each membership (experiment.holdout_members_check)';

CREATE OR REPLACE FUNCTION experiment.create_holdout(
  id text,
  share float8,
  experiments text[] DEFAULT NULL,
  layer text DEFAULT NULL,
  hash_scheme text DEFAULT 'sha256',
  salt text DEFAULT NULL,
  name text DEFAULT NULL,
  start boolean DEFAULT true)
  RETURNS text
  LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
DECLARE
  m text;
BEGIN
  IF share IS NULL OR NOT (share > 0 AND share < 1) THEN
    PERFORM experiment.raise_invalid_value('share of holdout ' || coalesce(quote_literal(id), 'NULL'),
                                           coalesce(share::text, 'NULL'), 'in (0, 1), e.g. 0.02');
  END IF;
  IF coalesce(cardinality(experiments), 0) = 0 AND layer IS NULL THEN
    RAISE EXCEPTION 'holdout % needs experiments or a layer, got neither', coalesce(quote_literal(id), 'NULL')
      USING ERRCODE = 'invalid_parameter_value',
            HINT = 'Pass experiments => ARRAY[...] (its member experiments) or layer => ''...'' (every experiment of the layer), or both.';
  END IF;
  PERFORM experiment.create_experiment(id,
    jsonb_build_array(jsonb_build_object('name', 'holdout', 'allocation', share, 'is_control', true),
                      jsonb_build_object('name', 'exposed', 'allocation', 1 - share)),
    hash_scheme => hash_scheme, salt => salt, name => name);
  INSERT INTO experiment.holdouts (holdout_id, layer) VALUES (create_holdout.id, create_holdout.layer);
  FOREACH m IN ARRAY coalesce(experiments, '{}') LOOP
    INSERT INTO experiment.holdout_members (holdout_id, experiment_id) VALUES (create_holdout.id, m);
  END LOOP;
  IF start THEN
    PERFORM experiment.start(id);
  END IF;
  RETURN id;
END
$$;

COMMENT ON FUNCTION experiment.create_holdout(text, float8, text[], text, text, text, text, boolean) IS
  'creates a holdout: an experiment with variants holdout (control, allocation share) and exposed (1 - share) whose held-out units no member '
  '(experiments, and every experiment of layer) assigns; started unless start is false; returns the id';

-- ---------------------------------------------------------------------------
-- Bandits
-- ---------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION experiment.best_arm_probabilities(means float8[], variances float8[], lower_is_better boolean DEFAULT false)
  RETURNS float8[]
  AS 'MODULE_PATHNAME', 'exp_best_arm_probabilities' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

COMMENT ON FUNCTION experiment.best_arm_probabilities(float8[], float8[], boolean) IS
  'P(arm i is the best) for independent Gaussian posteriors N(means[i], variances[i]), by quadrature (deterministic); lower_is_better: the smallest is best';

CREATE OR REPLACE FUNCTION experiment.second_arm_probabilities(means float8[], variances float8[], lower_is_better boolean DEFAULT false)
  RETURNS float8[]
  AS 'MODULE_PATHNAME', 'exp_second_arm_probabilities' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

COMMENT ON FUNCTION experiment.second_arm_probabilities(float8[], float8[], boolean) IS
  'P(arm i ranks second) for independent Gaussian posteriors N(means[i], variances[i]), by quadrature';

CREATE OR REPLACE FUNCTION experiment.top_two_weights(means float8[], variances float8[], lower_is_better boolean DEFAULT false,
                                           min_weight float8 DEFAULT 0.01)
  RETURNS float8[]
  AS 'MODULE_PATHNAME', 'exp_top_two_weights' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

COMMENT ON FUNCTION experiment.top_two_weights(float8[], float8[], boolean, float8) IS
  'bandit allocation: p_i = f + (1 - k f) (P(i best) + P(i second)) / 2 (top-two Thompson sampling, GrowthBook''s rule, by quadrature), f = min_weight; sums to 1, each at least f';

-- the declaration of a bandit, checked: its metric is one of the experiment's mean or
-- proportion metrics, and k arms leave room for the floor (k f <= 1)
CREATE OR REPLACE FUNCTION experiment.check_bandit(experiment_id text) RETURNS void
  LANGUAGE plpgsql STABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
DECLARE
  b experiment.bandits;
  mk text;
  k bigint;
BEGIN
  SELECT * INTO b FROM experiment.bandits x WHERE x.experiment_id = check_bandit.experiment_id;
  SELECT m.kind INTO mk FROM experiment.metrics m WHERE m.name = b.metric;
  IF mk IS NULL OR mk NOT IN ('mean', 'proportion') THEN
    RAISE EXCEPTION 'invalid metric "%" of bandit "%": its kind is %', b.metric, experiment_id, coalesce(mk, 'unknown')
      USING ERRCODE = 'invalid_parameter_value',
            HINT = 'A bandit optimises a mean or proportion metric of the catalogue.';
  END IF;
  IF NOT EXISTS (SELECT FROM experiment.experiment_metrics em
                  WHERE em.experiment_id = check_bandit.experiment_id AND em.metric = b.metric) THEN
    RAISE EXCEPTION 'metric "%" of bandit "%" is not one of its metrics', b.metric, experiment_id
      USING ERRCODE = 'invalid_parameter_value',
            HINT = 'Add it to experiment.experiment_metrics (experiment.create_bandit does).';
  END IF;
  SELECT count(*) INTO k FROM experiment.variants v WHERE v.experiment_id = check_bandit.experiment_id;
  IF k > 0 AND b.min_weight * k > 1 THEN
    PERFORM experiment.raise_invalid_value(format('min_weight of bandit "%s"', experiment_id), b.min_weight::text,
                                           format('in [0, 1/%s] for its %s arms', k, k));
  END IF;
END
$$;

COMMENT ON FUNCTION experiment.check_bandit(text) IS
  'internal: the error (22023) unless the bandit''s metric is one of its mean or proportion metrics and min_weight times the arms is at most 1';

CREATE OR REPLACE FUNCTION experiment.bandits_check() RETURNS trigger
  LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
DECLARE
  st text;
  owner text;
BEGIN
  IF TG_OP IN ('UPDATE', 'DELETE') THEN
    PERFORM experiment.require_experiment_owner(OLD.experiment_id, 'change the bandit');
    SELECT x.status INTO st FROM experiment.experiments x WHERE x.id = OLD.experiment_id;
    IF st IS NOT NULL AND st <> 'draft' THEN
      RAISE EXCEPTION 'cannot change the bandit settings of experiment "%": it is %', OLD.experiment_id, st
        USING ERRCODE = 'invalid_parameter_value',
              HINT = 'metric, period, min_weight and min_units are fixed when the bandit starts.';
    END IF;
  END IF;
  IF TG_OP = 'DELETE' THEN
    RETURN OLD;
  END IF;
  PERFORM experiment.require_experiment(NEW.experiment_id);
  PERFORM experiment.require_experiment_owner(NEW.experiment_id, 'change the bandit');
  owner := format('bandit "%s"', NEW.experiment_id);
  -- (a restored dump gives a running bandit its row before its exposures)
  IF TG_OP = 'INSERT' AND (SELECT x.status FROM experiment.experiments x WHERE x.id = NEW.experiment_id) <> 'draft'
     AND EXISTS (SELECT FROM experiment.exposures xp WHERE xp.experiment_id = NEW.experiment_id) THEN
    RAISE EXCEPTION 'experiment "%" must be in draft (or have no exposures) to become a bandit', NEW.experiment_id
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  IF EXISTS (SELECT FROM experiment.holdouts h WHERE h.holdout_id = NEW.experiment_id) THEN
    RAISE EXCEPTION 'experiment "%" is a holdout and cannot be a bandit', NEW.experiment_id
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  IF NEW.metric IS NULL OR NOT EXISTS (SELECT FROM experiment.metrics m WHERE m.name = NEW.metric) THEN
    RAISE EXCEPTION 'metric "%" of % does not exist', coalesce(left(NEW.metric, 200), 'NULL'), owner
      USING ERRCODE = 'invalid_parameter_value',
            HINT = experiment.hint_list(ARRAY(SELECT m.name FROM experiment.metrics m WHERE m.kind IN ('mean', 'proportion')
                                              ORDER BY m.name), 'mean and proportion metrics', 'experiment.metrics');
  END IF;
  IF (SELECT m.kind FROM experiment.metrics m WHERE m.name = NEW.metric) NOT IN ('mean', 'proportion') THEN
    PERFORM experiment.raise_invalid_choice('kind of the metric', (SELECT m.kind FROM experiment.metrics m WHERE m.name = NEW.metric),
                                            '{mean,proportion}', owner);
  END IF;
  IF NEW.period IS NULL OR NOT (NEW.period > interval '0') THEN
    PERFORM experiment.raise_invalid_value('period of ' || owner, coalesce(NEW.period::text, 'NULL'), 'a positive interval, e.g. ''1 day''');
  END IF;
  IF NEW.min_weight IS NULL OR NOT (NEW.min_weight >= 0 AND NEW.min_weight < 1) THEN
    PERFORM experiment.raise_invalid_value('min_weight of ' || owner, coalesce(NEW.min_weight::text, 'NULL'),
                                           'in [0, 1/k] for k arms, e.g. 0.01');
  END IF;
  IF NEW.min_units <= 0 THEN
    PERFORM experiment.raise_invalid_value('min_units of ' || owner, NEW.min_units::text, 'positive (NULL: 100 per arm)');
  END IF;
  RETURN NEW;
END
$$;

COMMENT ON FUNCTION experiment.bandits_check() IS
  'internal: trigger: validates a bandit (metric of kind mean or proportion, period, min_weight, min_units), naming the field; settings frozen once it leaves draft; owner-only changes';

CREATE OR REPLACE TRIGGER bandits_check BEFORE INSERT OR UPDATE OR DELETE ON experiment.bandits
  FOR EACH ROW EXECUTE FUNCTION experiment.bandits_check();

COMMENT ON TRIGGER bandits_check ON experiment.bandits IS 'validates each bandit (experiment.bandits_check)';

-- the allocation a bandit assigns new units with now: the latest period's weights, before
-- the first update the split of experiment.variants (range order)
CREATE OR REPLACE FUNCTION experiment.bandit_allocations(experiment_id text) RETURNS float8[]
  LANGUAGE sql STABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
  SELECT coalesce((SELECT p.weights FROM experiment.bandit_periods p
                    WHERE p.experiment_id = bandit_allocations.experiment_id
                    ORDER BY p.period DESC LIMIT 1),
                  (experiment.split(bandit_allocations.experiment_id)).allocations)
$$;

COMMENT ON FUNCTION experiment.bandit_allocations(text) IS
  'the allocation of a bandit''s new units: the latest weights of experiment.bandit_periods (range order), or the split of experiment.variants before the first update';

-- the variant of a unit's first exposure to a bandit (units keep it)
CREATE OR REPLACE FUNCTION experiment.bandit_sticky_variant(experiment_id text, unit_id text) RETURNS text
  LANGUAGE sql STABLE STRICT PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
  SELECT xp.variant FROM experiment.exposures xp
   WHERE xp.experiment_id = bandit_sticky_variant.experiment_id AND xp.unit_id = bandit_sticky_variant.unit_id
   ORDER BY xp.exposed_at, xp.variant LIMIT 1
$$;

COMMENT ON FUNCTION experiment.bandit_sticky_variant(text, text) IS
  'internal: the variant of the unit''s first exposure to the experiment (NULL: none); assign() keeps a bandit''s units in it';

-- the period of a bandit at a time, as the text value of its bandit_period dimension
CREATE OR REPLACE FUNCTION experiment.bandit_period_of(experiment_id text, at timestamptz) RETURNS text
  LANGUAGE sql STABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
  SELECT pg_catalog.lpad(coalesce((SELECT max(p.period) FROM experiment.bandit_periods p
                                    WHERE p.experiment_id = bandit_period_of.experiment_id
                                      AND p.started_at <= bandit_period_of.at), 0)::text, 6, '0')
   WHERE EXISTS (SELECT FROM experiment.bandits b WHERE b.experiment_id = bandit_period_of.experiment_id)
$$;

COMMENT ON FUNCTION experiment.bandit_period_of(text, timestamptz) IS
  'internal: the allocation period of a bandit that a time falls in, zero-padded (''000003''); the value of a dimension with attribute bandit_period (NULL for other experiments)';

CREATE OR REPLACE FUNCTION experiment.create_bandit(
  id text,
  variants jsonb,
  metric text,
  period interval DEFAULT '1 day',
  min_weight float8 DEFAULT 0.01,
  min_units bigint DEFAULT NULL,
  traffic float8 DEFAULT 1,
  hash_scheme text DEFAULT 'sha256',
  salt text DEFAULT NULL,
  targeting jsonb DEFAULT NULL,
  name text DEFAULT NULL,
  start boolean DEFAULT false)
  RETURNS text
  LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
BEGIN
  PERFORM experiment.create_experiment(id, variants, traffic => traffic, hash_scheme => hash_scheme, salt => salt,
                                       targeting => targeting, name => name);
  INSERT INTO experiment.bandits (experiment_id, metric, period, min_weight, min_units)
  VALUES (create_bandit.id, create_bandit.metric, coalesce(create_bandit.period, '1 day'),
          coalesce(create_bandit.min_weight, 0.01), create_bandit.min_units);
  INSERT INTO experiment.experiment_metrics (experiment_id, metric, role)
  VALUES (create_bandit.id, create_bandit.metric, 'primary')
  ON CONFLICT DO NOTHING;
  INSERT INTO experiment.dimensions (experiment_id, name, attribute, top_n)
  VALUES (create_bandit.id, 'bandit_period', 'bandit_period', 1000);
  UPDATE experiment.experiments x SET stratify_by = 'bandit_period' WHERE x.id = create_bandit.id;
  PERFORM experiment.check_bandit(id);
  IF start THEN
    PERFORM experiment.start(id);
  END IF;
  RETURN id;
END
$$;

COMMENT ON FUNCTION experiment.create_bandit(text, jsonb, text, interval, float8, bigint, float8, text, text, jsonb, text, boolean) IS
  'creates a draft bandit: the experiment (variants give the first period''s weights), its bandit settings, metric (primary), '
  'and the dimension bandit_period it is stratified by (the period-weighted analysis); optionally starts it; returns the id';

-- the posterior of each arm's mean from the refresh's per-period moments: with n_t the
-- analysed units of period t (all arms) and w_t = n_t / N over the periods where every arm has
-- at least 2 units, mean_i = sum_t w_t ybar_it and variance_i = sum_t w_t^2 s_it^2 / n_it
-- (flat prior); NULL means when no period qualifies
CREATE OR REPLACE FUNCTION experiment.bandit_posteriors(experiment_id text,
    OUT variants text[], OUT units bigint[], OUT means float8[], OUT variances float8[])
  LANGUAGE sql STABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
  WITH b AS (
    SELECT bb.metric, s.names FROM experiment.bandits bb, experiment.split(bb.experiment_id) s
     WHERE bb.experiment_id = bandit_posteriors.experiment_id
  ), cells AS (
    SELECT ds.value, ds.variant, ds.units,
           experiment.mean(ds.moments) AS m, experiment.variance(ds.moments) AS v
      FROM experiment.dimension_stats ds
      JOIN experiment.dimensions d ON d.experiment_id = ds.experiment_id AND d.name = ds.dimension
      JOIN b ON b.metric = ds.metric
     WHERE ds.experiment_id = bandit_posteriors.experiment_id AND d.attribute = 'bandit_period'
  ), ok AS (
    SELECT c.value, sum(c.units) AS n FROM cells c GROUP BY c.value
    HAVING count(*) FILTER (WHERE c.units >= 2 AND c.v IS NOT NULL) = (SELECT cardinality(b.names) FROM b)
  ), arm AS (
    SELECT c.variant,
           sum(c.units) AS units,
           sum(ok.n * c.m) / sum(ok.n) AS mean,
           sum(ok.n ^ 2 * c.v / c.units) / sum(ok.n) ^ 2 AS variance
      FROM cells c JOIN ok ON ok.value = c.value
     GROUP BY c.variant
  )
  SELECT b.names,
         ARRAY(SELECT coalesce((SELECT sum(c.units) FROM cells c WHERE c.variant = nm), 0)::bigint
                 FROM unnest(b.names) WITH ORDINALITY AS u(nm, o) ORDER BY o),
         ARRAY(SELECT a.mean FROM unnest(b.names) WITH ORDINALITY AS u(nm, o) LEFT JOIN arm a ON a.variant = nm ORDER BY o),
         ARRAY(SELECT a.variance FROM unnest(b.names) WITH ORDINALITY AS u(nm, o) LEFT JOIN arm a ON a.variant = nm ORDER BY o)
    FROM b
$$;

COMMENT ON FUNCTION experiment.bandit_posteriors(text) IS
  'internal: the Gaussian posterior of each arm''s mean of a bandit''s metric (range order) from the latest refresh''s per-period moments: '
  'period-weighted means sum_t (n_t/N) ybar_it and variances sum_t (n_t/N)^2 s_it^2/n_it over the periods where every arm has 2 units';

CREATE OR REPLACE FUNCTION experiment.update_bandit_weights(bandit text DEFAULT NULL, force boolean DEFAULT false)
  RETURNS TABLE (experiment_id text, period integer, weights float8[], message text)
  LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
DECLARE
  b record;
  cur experiment.bandit_periods;
  post record;
  need bigint;
  total bigint;
  w float8[];
  p float8[];
BEGIN
  IF update_bandit_weights.bandit IS NOT NULL THEN
    PERFORM experiment.require_experiment(update_bandit_weights.bandit);
    IF NOT EXISTS (SELECT FROM experiment.bandits x WHERE x.experiment_id = update_bandit_weights.bandit) THEN
      RAISE EXCEPTION 'experiment "%" is not a bandit', update_bandit_weights.bandit
        USING ERRCODE = 'invalid_parameter_value',
              HINT = experiment.hint_list(ARRAY(SELECT x.experiment_id FROM experiment.bandits x ORDER BY 1),
                                          'bandits', 'experiment.bandits');
    END IF;
  END IF;
  FOR b IN SELECT bb.*, x.start_at, x.status, m.higher_is_better, s.names, s.allocations
             FROM experiment.bandits bb
             JOIN experiment.experiments x ON x.id = bb.experiment_id
             JOIN experiment.metrics m ON m.name = bb.metric
             CROSS JOIN LATERAL experiment.split(bb.experiment_id) s
            WHERE x.status = 'running'
              AND (update_bandit_weights.bandit IS NULL OR bb.experiment_id = update_bandit_weights.bandit)
            ORDER BY bb.experiment_id FOR UPDATE OF bb LOOP
    experiment_id := b.experiment_id;
    -- period 0: the split the bandit started with
    INSERT INTO experiment.bandit_periods (experiment_id, period, started_at, variants, weights)
    VALUES (b.experiment_id, 0, b.start_at, b.names, b.allocations)
    ON CONFLICT DO NOTHING;
    SELECT * INTO cur FROM experiment.bandit_periods bp WHERE bp.experiment_id = b.experiment_id
     ORDER BY bp.period DESC LIMIT 1;
    period := cur.period;
    weights := cur.weights;
    IF NOT force AND pg_catalog.now() < cur.started_at + b.period THEN
      message := format('not due: period %s started at %s', cur.period, cur.started_at);
      RETURN NEXT;
      CONTINUE;
    END IF;
    PERFORM experiment.refresh(b.experiment_id);
    SELECT * INTO post FROM experiment.bandit_posteriors(b.experiment_id);
    total := (SELECT sum(u) FROM unnest(post.units) u);
    need := coalesce(b.min_units, 100 * cardinality(b.names));
    IF coalesce(total, 0) < need THEN
      message := format('not updated: %s analysed units, %s needed before the weights move', coalesce(total, 0), need);
      RETURN NEXT;
      CONTINUE;
    END IF;
    IF EXISTS (SELECT FROM unnest(post.variances) v WHERE v IS NULL OR NOT (v > 0)) THEN
      message := 'not updated: an arm has no period with 2 units and a varying metric';
      RETURN NEXT;
      CONTINUE;
    END IF;
    w := experiment.top_two_weights(post.means, post.variances, NOT b.higher_is_better, b.min_weight);
    p := experiment.best_arm_probabilities(post.means, post.variances, NOT b.higher_is_better);
    INSERT INTO experiment.bandit_periods (experiment_id, period, started_at, variants, weights,
                                           best_arm_probabilities, units, means, variances)
    VALUES (b.experiment_id, cur.period + 1, greatest(pg_catalog.now(), cur.started_at), b.names, w, p,
            post.units, post.means, post.variances);
    period := cur.period + 1;
    weights := w;
    message := format('updated: best-arm probabilities %s', p::text);
    RETURN NEXT;
  END LOOP;
END
$$;

COMMENT ON FUNCTION experiment.update_bandit_weights(text, boolean) IS
  'for pg_cron: for each running bandit (or the one given) whose period is over (or with force), refreshes it and starts a new period '
  'with top-two Thompson sampling weights from the period-weighted posteriors, once min_units are analysed; the new weights reach assign(), ruleset() and growthbook_payload()';

-- the GrowthBook-style SRM check of a bandit: observed units per arm against the units
-- expected from each period's weights, sum_t n_t w_ti (chi-square, k - 1 df)
CREATE OR REPLACE FUNCTION experiment.bandit_srm(experiment_id text) RETURNS float8
  LANGUAGE sql STABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
  WITH per AS (
    SELECT de.value, de.variant, de.units
      FROM experiment.dimension_enrollment de
      JOIN experiment.dimensions d ON d.experiment_id = de.experiment_id AND d.name = de.dimension
     WHERE de.experiment_id = bandit_srm.experiment_id AND d.attribute = 'bandit_period'
  ), tot AS (
    SELECT per.value, sum(per.units) AS n FROM per GROUP BY per.value
  ), arms AS (
    SELECT u.nm, u.o,
           coalesce((SELECT sum(per.units) FROM per WHERE per.variant = u.nm), 0) AS observed,
           coalesce((SELECT sum(tot.n * bp.weights[u.o])
                       FROM tot JOIN experiment.bandit_periods bp
                         ON bp.experiment_id = bandit_srm.experiment_id AND bp.period = tot.value::integer), 0) AS expected
      FROM unnest((experiment.split(bandit_srm.experiment_id)).names) WITH ORDINALITY AS u(nm, o)
  )
  SELECT CASE WHEN (SELECT sum(observed) FROM arms) > 0 AND (SELECT bool_and(expected > 0) FROM arms)
              THEN experiment.srm_chisq(ARRAY(SELECT observed::bigint FROM arms ORDER BY o),
                                        ARRAY(SELECT expected::float8 FROM arms ORDER BY o)) END
$$;

COMMENT ON FUNCTION experiment.bandit_srm(text) IS
  'sample ratio mismatch p-value of a bandit at its latest refresh: units per arm against sum_t n_t w_ti, each period''s units times its weights (NULL without data)';

-- ---------------------------------------------------------------------------
-- What SDKs see (called from ruleset_experiments() and growthbook_payload())
-- ---------------------------------------------------------------------------

-- extra keys of an experiment in ruleset(): "holdouts" (skip the experiment when
-- unit_hash(hash_scheme, salt, unit) falls in one of ranges) and, for a bandit, "variants"
-- with the current weights as allocations and "bandit" (period, sticky)
CREATE OR REPLACE FUNCTION experiment.ruleset_design(experiment_id text) RETURNS jsonb
  LANGUAGE sql STABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
  SELECT coalesce((SELECT jsonb_build_object('holdouts', jsonb_agg(jsonb_build_object(
                             'id', h.holdout_id, 'salt', h.salt, 'hash_scheme', h.hash_scheme,
                             'ranges', jsonb_build_array(jsonb_build_array(0, h.range_end)))
                           ORDER BY h.holdout_id COLLATE "C"))
                     FROM experiment.holdouts_of(ruleset_design.experiment_id) h
                   HAVING count(*) > 0), '{}'::jsonb)
      || coalesce((SELECT jsonb_build_object(
                     'variants', (SELECT jsonb_agg(jsonb_build_object(
                                           'name', v.name, 'allocation', a.w,
                                           'config', v.config, 'is_control', v.is_control) ORDER BY a.o)
                                    FROM unnest((experiment.split(b.experiment_id)).names,
                                                experiment.bandit_allocations(b.experiment_id)) WITH ORDINALITY AS a(nm, w, o)
                                    JOIN experiment.variants v ON v.experiment_id = b.experiment_id AND v.name = a.nm),
                     'bandit', jsonb_build_object(
                       'period', coalesce((SELECT max(p.period) FROM experiment.bandit_periods p
                                            WHERE p.experiment_id = b.experiment_id), 0),
                       'sticky', true))
                     FROM experiment.bandits b WHERE b.experiment_id = ruleset_design.experiment_id), '{}'::jsonb)
$$;

COMMENT ON FUNCTION experiment.ruleset_design(text) IS
  'internal: the keys ruleset() adds to an experiment for holdouts ("holdouts": skip when unit_hash(hash_scheme, salt, unit) is in a range) and bandits (current "variants" allocations, "bandit")';

-- extra keys of an experiment rule in growthbook_payload(): "filters" (the unit must fall
-- outside every holdout's held-out range: GrowthBook's filter ranges are where it may be;
-- an SDK that reads filters ignores namespace, so the layer range is one more filter, on the
-- namespace hash: seed "__" || layer, hash version 1) and, for a bandit, the current "weights"
CREATE OR REPLACE FUNCTION experiment.growthbook_rule_design(experiment_id text) RETURNS jsonb
  LANGUAGE sql STABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
  SELECT coalesce((SELECT jsonb_build_object('filters',
                            jsonb_agg(jsonb_build_object(
                             'seed', h.salt, 'attribute', 'id',
                             'hashVersion', CASE h.hash_scheme WHEN 'growthbook_v1' THEN 1 ELSE 2 END,
                             'ranges', jsonb_build_array(jsonb_build_array(h.range_end, 1)))
                           ORDER BY h.holdout_id COLLATE "C")
                            || coalesce((SELECT jsonb_build_array(jsonb_build_object(
                                                  'seed', '__' || x.layer, 'attribute', 'id', 'hashVersion', 1,
                                                  'ranges', jsonb_build_array(jsonb_build_array(x.layer_start, x.layer_end))))
                                           FROM experiment.experiments x
                                          WHERE x.id = growthbook_rule_design.experiment_id AND x.layer IS NOT NULL),
                                        '[]'::jsonb))
                     FROM experiment.holdouts_of(growthbook_rule_design.experiment_id) h
                    WHERE h.hash_scheme IN ('growthbook_v1', 'growthbook_v2')
                   HAVING count(*) > 0), '{}'::jsonb)
      || coalesce((SELECT jsonb_build_object('weights', to_jsonb(experiment.bandit_allocations(b.experiment_id)))
                     FROM experiment.bandits b WHERE b.experiment_id = growthbook_rule_design.experiment_id), '{}'::jsonb)
$$;

COMMENT ON FUNCTION experiment.growthbook_rule_design(text) IS
  'internal: the keys growthbook_payload() adds to an experiment rule for holdouts ("filters" outside the held-out range of the holdout''s hash) and bandits (current "weights")';

-- update_bandit_weights() refreshes and publishes: the roles that refresh all experiments run it
REVOKE EXECUTE ON FUNCTION experiment.update_bandit_weights(text, boolean) FROM PUBLIC;

-- what SDKs see changes with the holdouts, their members and every new bandit period:
-- NOTIFY experiment_ruleset as for the registry's own tables
CREATE OR REPLACE TRIGGER holdouts_notify AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON experiment.holdouts
  FOR EACH STATEMENT EXECUTE FUNCTION experiment.notify_ruleset();

CREATE OR REPLACE TRIGGER holdout_members_notify AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON experiment.holdout_members
  FOR EACH STATEMENT EXECUTE FUNCTION experiment.notify_ruleset();

CREATE OR REPLACE TRIGGER bandit_periods_notify AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON experiment.bandit_periods
  FOR EACH STATEMENT EXECUTE FUNCTION experiment.notify_ruleset();

COMMENT ON TRIGGER holdouts_notify ON experiment.holdouts IS 'NOTIFY experiment_ruleset with the new ruleset version';

COMMENT ON TRIGGER holdout_members_notify ON experiment.holdout_members IS 'NOTIFY experiment_ruleset with the new ruleset version';

COMMENT ON TRIGGER bandit_periods_notify ON experiment.bandit_periods IS 'NOTIFY experiment_ruleset with the new ruleset version (new weights)';

-- the test of a linear contrast of cell moments (src/contrasts.c)
CREATE OR REPLACE FUNCTION experiment.contrast_test(method text, cells experiment.moments[], treatment_weights float8[],
                                         control_weights float8[], alpha float8 DEFAULT 0.05,
                                         alternative text DEFAULT 'two-sided', sequential_tuning float8 DEFAULT NULL)
  RETURNS experiment.test_result
  AS 'MODULE_PATHNAME', 'exp_contrast_test' LANGUAGE C IMMUTABLE PARALLEL SAFE;

COMMENT ON FUNCTION experiment.contrast_test(text, experiment.moments[], float8[], float8[], float8, text, float8) IS
  'test of a contrast of cells: mean_treatment = sum t_k f_k, mean_control = sum c_k f_k over the cells'' values f_k '
  '(method welch: means of moments(y); ratio: ratios of moments(numerator, denominator)), diff = their difference with '
  'se^2 = sum (t_k - c_k)^2 v_k / n_k (HC2 of the saturated regression) and Satterthwaite df; NULL cells have no units; '
  'alternative and sequential_tuning as in welch_ttest';

-- Pearson's chi-squared test of independence of a table of counts (src/contrasts.c)
CREATE OR REPLACE FUNCTION experiment.independence_chisq(observed bigint[]) RETURNS float8
  AS 'MODULE_PATHNAME', 'exp_independence_chisq' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

COMMENT ON FUNCTION experiment.independence_chisq(bigint[]) IS
  'p-value of Pearson''s chi-squared test of independence of the rows and columns of a two-dimensional array of counts '
  '(no continuity correction; empty rows and columns left out; NULL with fewer than two of either)';

-- ---------------------------------------------------------------------------
-- Factorial designs
-- ---------------------------------------------------------------------------

ALTER TABLE experiment.experiments ADD COLUMN factors jsonb;

COMMENT ON COLUMN experiment.experiments.factors IS
  'factorial design: [{"name", "levels": [...]}], the first level of each factor its baseline; the variants are the cells '
  '(variants.levels); NULL: not factorial (doc/designs-factorial.md)';

ALTER TABLE experiment.variants ADD COLUMN levels jsonb;

COMMENT ON COLUMN experiment.variants.levels IS
  'factorial experiments: the cell''s level of each factor, {"factor": "level", ...}; NULL otherwise';

-- the factors of a factorial design, checked: nothing, or a 22023 error naming what is wrong
CREATE OR REPLACE FUNCTION experiment.check_factors(factors jsonb) RETURNS void
  LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
DECLARE
  f jsonb;
  cells bigint := 1;
  names text[] := '{}';
BEGIN
  IF factors IS NULL OR jsonb_typeof(factors) <> 'array' OR jsonb_array_length(factors) < 1
     OR jsonb_array_length(factors) > 6 THEN
    RAISE EXCEPTION 'factors of a factorial design must be a JSON array of 1 to 6 {"name", "levels"} objects, got %',
      left(coalesce(factors::text, 'NULL'), 200)
      USING ERRCODE = 'invalid_parameter_value',
            HINT = 'For example [{"name": "color", "levels": ["blue", "red"]}, {"name": "size", "levels": ["s", "l"]}]; the first level is the baseline.';
  END IF;
  FOR f IN SELECT x FROM jsonb_array_elements(factors) x LOOP
    IF jsonb_typeof(f) <> 'object' OR jsonb_typeof(f -> 'name') IS DISTINCT FROM 'string' OR f ->> 'name' = ''
       OR EXISTS (SELECT FROM jsonb_object_keys(f) k WHERE k NOT IN ('name', 'levels')) THEN
      RAISE EXCEPTION 'each factor of a factorial design must be an object with a non-empty string "name" and "levels", got %',
        left(f::text, 200)
        USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF f ->> 'name' = ANY (names) THEN
      RAISE EXCEPTION 'factor "%" of a factorial design appears twice', left(f ->> 'name', 200)
        USING ERRCODE = 'invalid_parameter_value', HINT = 'Give each factor a name of its own.';
    END IF;
    names := names || (f ->> 'name');
    IF jsonb_typeof(f -> 'levels') IS DISTINCT FROM 'array' OR jsonb_array_length(f -> 'levels') < 2
       OR jsonb_array_length(f -> 'levels') > 20
       OR EXISTS (SELECT FROM jsonb_array_elements(f -> 'levels') l WHERE jsonb_typeof(l) <> 'string' OR l #>> '{}' = '')
       OR (SELECT count(DISTINCT l) FROM jsonb_array_elements_text(f -> 'levels') l) <> jsonb_array_length(f -> 'levels') THEN
      RAISE EXCEPTION 'levels of factor "%" must be a JSON array of 2 to 20 distinct non-empty strings, got %',
        left(f ->> 'name', 200), left(coalesce((f -> 'levels')::text, 'NULL'), 200)
        USING ERRCODE = 'invalid_parameter_value', HINT = 'The first level is the factor''s baseline (its control).';
    END IF;
    cells := cells * jsonb_array_length(f -> 'levels');
  END LOOP;
  IF cells > 256 THEN
    RAISE EXCEPTION 'a factorial design may have at most 256 cells, got %', cells
      USING ERRCODE = 'invalid_parameter_value', HINT = 'Use fewer factors or fewer levels.';
  END IF;
END
$$;

COMMENT ON FUNCTION experiment.check_factors(jsonb) IS
  'internal: checks the factors of a factorial design (1 to 6 factors, 2 to 20 distinct levels each, at most 256 cells)';

-- the cells of a factorial design {"factors": [...], "allocations": {"cell": share, ...}} as the
-- variants of experiment.create_experiment(): every combination of levels (the last factor
-- varying fastest), named by its levels joined with "/", its levels as config and levels,
-- allocations as given (default: equal), the all-baseline cell the control
CREATE OR REPLACE FUNCTION experiment.factorial_cells(design jsonb) RETURNS jsonb
  LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
DECLARE
  cells jsonb;
  k text;
  names text[];
BEGIN
  IF jsonb_typeof(design) IS DISTINCT FROM 'object' OR NOT design ? 'factors' OR EXISTS (SELECT FROM jsonb_object_keys(design) x WHERE x NOT IN ('factors', 'allocations')) THEN
    RAISE EXCEPTION 'a factorial design must be an object {"factors", "allocations"}, got %', left(design::text, 200)
      USING ERRCODE = 'invalid_parameter_value',
            HINT = '"allocations" (optional) maps each cell name to its share; without it the cells share equally.';
  END IF;
  PERFORM experiment.check_factors(design -> 'factors');
  WITH RECURSIVE f AS (
    SELECT (x.i - 1)::integer AS i, x.f ->> 'name' AS name, x.f -> 'levels' AS levels
    FROM jsonb_array_elements(design -> 'factors') WITH ORDINALITY AS x(f, i)
  ), c(i, names, levels, base, ord) AS (
    SELECT 0, ARRAY[]::text[], '{}'::jsonb, true, ARRAY[]::bigint[]
    UNION ALL
    SELECT c.i + 1, c.names || (l.l #>> '{}'), c.levels || jsonb_build_object(f.name, l.l #>> '{}'), c.base AND l.o = 1,
           c.ord || l.o
    FROM c JOIN f ON f.i = c.i, LATERAL jsonb_array_elements(f.levels) WITH ORDINALITY AS l(l, o)
  )
  SELECT jsonb_agg(jsonb_build_object('name', array_to_string(c.names, '/'), 'levels', c.levels, 'config', c.levels,
                                      'is_control', c.base) ORDER BY c.ord)
    INTO cells
    FROM c WHERE c.i = jsonb_array_length(design -> 'factors');
  SELECT array_agg(x ->> 'name' ORDER BY o) INTO names FROM jsonb_array_elements(cells) WITH ORDINALITY AS t(x, o);
  IF (SELECT count(DISTINCT n) FROM unnest(names) n) <> cardinality(names) THEN
    RAISE EXCEPTION 'the cells of a factorial design must have distinct names (levels joined with "/"), got %',
      left(array_to_string(names, ', '), 200)
      USING ERRCODE = 'invalid_parameter_value', HINT = 'Use levels without "/".';
  END IF;
  IF design ? 'allocations' THEN
    IF jsonb_typeof(design -> 'allocations') <> 'object' THEN
      RAISE EXCEPTION 'allocations of a factorial design must be an object mapping each cell to its share, got %',
        left((design -> 'allocations')::text, 200)
        USING ERRCODE = 'invalid_parameter_value',
              HINT = experiment.hint_list(names, 'cells', 'the levels of the factors joined with "/"');
    END IF;
    FOR k IN SELECT x FROM jsonb_object_keys(design -> 'allocations') x LOOP
      IF NOT k = ANY (names) THEN
        RAISE EXCEPTION 'allocations of a factorial design: no cell "%"', left(k, 200)
          USING ERRCODE = 'invalid_parameter_value',
                HINT = experiment.hint_list(names, 'cells', 'the levels of the factors joined with "/"');
      END IF;
      IF jsonb_typeof(design -> 'allocations' -> k) <> 'number' THEN
        RAISE EXCEPTION 'allocation of cell "%" of a factorial design must be a number in [0, 1], got %', left(k, 200),
          left((design -> 'allocations' -> k)::text, 200)
          USING ERRCODE = 'invalid_parameter_value';
      END IF;
    END LOOP;
    FOREACH k IN ARRAY names LOOP
      IF NOT (design -> 'allocations') ? k THEN
        RAISE EXCEPTION 'allocations of a factorial design must give every cell a share: cell "%" has none', left(k, 200)
          USING ERRCODE = 'invalid_parameter_value',
                HINT = experiment.hint_list(names, 'cells', 'the levels of the factors joined with "/"');
      END IF;
    END LOOP;
  END IF;
  RETURN (SELECT jsonb_agg(x || jsonb_build_object('allocation',
                             coalesce((design -> 'allocations' ->> (x ->> 'name'))::float8, 1.0 / cardinality(names)))
                           ORDER BY o)
          FROM jsonb_array_elements(cells) WITH ORDINALITY AS t(x, o));
END
$$;

COMMENT ON FUNCTION experiment.factorial_cells(jsonb) IS
  'internal: the cells of a factorial design as variants of create_experiment (every combination of levels, named by them joined with "/", the all-baseline cell the control)';

-- the factors must be a valid design and stay as they are once the experiment left the draft
-- status (the variants are its cells)
CREATE OR REPLACE FUNCTION experiment.factors_check() RETURNS trigger
  LANGUAGE plpgsql
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
BEGIN
  IF NEW.factors IS NOT NULL THEN
    PERFORM experiment.check_factors(NEW.factors);
  END IF;
  IF TG_OP = 'UPDATE' AND OLD.status <> 'draft' AND NEW.factors IS DISTINCT FROM OLD.factors THEN
    RAISE EXCEPTION 'cannot change the factors of experiment "%": it is %', left(NEW.id, 200), OLD.status
      USING ERRCODE = 'invalid_parameter_value',
            HINT = 'The variants are the cells of the design; create a new experiment for another design.';
  END IF;
  RETURN NEW;
END
$$;

COMMENT ON FUNCTION experiment.factors_check() IS
  'internal: trigger: experiments.factors is a valid factorial design, unchanged once the experiment has started';

CREATE OR REPLACE TRIGGER factors_check BEFORE INSERT OR UPDATE OF factors ON experiment.experiments
  FOR EACH ROW EXECUTE FUNCTION experiment.factors_check();

COMMENT ON TRIGGER factors_check ON experiment.experiments IS 'checks the factorial design of an experiment';

-- the contrasts of a factorial experiment's effects: for each non-empty set S of factors and a
-- non-baseline level a_f of each, the cells' weights (in the order of cells): a cell with a
-- factor of S at neither its baseline nor a_f weighs 0; the others weigh
-- prod_{f in S, f not last} (+1 at a_f, -1 at the baseline) / prod_{g not in S} levels(g),
-- on the treatment side when the last factor of S is at a_s, else on the control side.
-- A main effect (|S| = 1) is then the level's marginal mean against the baseline's; an
-- interaction the difference of the lower-order effect between a_s and the baseline of s.
CREATE OR REPLACE FUNCTION experiment.factorial_contrasts(experiment_id text)
  RETURNS TABLE (effect text, "order" integer, levels jsonb, cells text[], treatment_weights float8[],
                 control_weights float8[])
  LANGUAGE plpgsql STABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
DECLARE
  fx jsonb;
  k integer;
  mask integer;
  s integer[];
  nlev integer[];
  fname text[];
  cell_names text[];
  cell_lev integer[];   -- cell_lev[(c - 1) * k + f]: level index (0 = baseline) of cell c, factor f
  nc integer;
  choice integer[];
  tw float8[];
  cw float8[];
  w float8;
  side boolean;
  ok boolean;
  scale float8;
  lv integer;
  j integer;
BEGIN
  SELECT x.factors INTO fx FROM experiment.experiments x WHERE x.id = factorial_contrasts.experiment_id;
  IF fx IS NULL THEN
    RETURN;
  END IF;
  k := jsonb_array_length(fx);
  SELECT array_agg(f ->> 'name' ORDER BY o), array_agg(jsonb_array_length(f -> 'levels') ORDER BY o)
    INTO fname, nlev FROM jsonb_array_elements(fx) WITH ORDINALITY AS t(f, o);
  -- the cells: variants with a level of every factor (a variant outside the design has none)
  SELECT array_agg(v.name ORDER BY v.name COLLATE "C") INTO cell_names
    FROM experiment.variants v
    WHERE v.experiment_id = factorial_contrasts.experiment_id
      AND NOT EXISTS (SELECT FROM jsonb_array_elements(fx) f2
                      WHERE NOT coalesce((v.levels ->> (f2 ->> 'name')) IN (SELECT jsonb_array_elements_text(f2 -> 'levels')),
                                         false));
  cell_lev := ARRAY(
    SELECT (SELECT l.o - 1 FROM jsonb_array_elements_text(f.f -> 'levels') WITH ORDINALITY AS l(l, o)
            WHERE l.l = v.levels ->> (f.f ->> 'name'))::integer
    FROM unnest(cell_names) WITH ORDINALITY AS cn(name, co)
    JOIN experiment.variants v ON v.experiment_id = factorial_contrasts.experiment_id AND v.name = cn.name
    CROSS JOIN jsonb_array_elements(fx) WITH ORDINALITY AS f(f, o)
    ORDER BY cn.co, f.o);
  nc := coalesce(cardinality(cell_names), 0);
  -- (a design with a cell missing has no effects: every contrast needs all its cells)
  IF nc = 0 OR nc <> (SELECT pg_catalog.round(exp(sum(ln(n)))) FROM unnest(nlev) n) THEN
    RETURN;
  END IF;
  FOR mask IN 1 .. (1 << k) - 1 LOOP
    s := ARRAY(SELECT f FROM generate_series(1, k) f WHERE mask & (1 << (f - 1)) <> 0 ORDER BY f);
    scale := 1;
    FOR j IN 1 .. k LOOP
      IF NOT j = ANY (s) THEN
        scale := scale / nlev[j];
      END IF;
    END LOOP;
    -- every choice of a non-baseline level of each factor of S (an odometer over the levels)
    choice := array_fill(1, ARRAY[cardinality(s)]);
    LOOP
      tw := array_fill(0::float8, ARRAY[nc]);
      cw := array_fill(0::float8, ARRAY[nc]);
      FOR c IN 1 .. nc LOOP
        w := scale;
        ok := true;
        side := false;
        FOR j IN 1 .. cardinality(s) LOOP
          lv := cell_lev[(c - 1) * k + s[j]];
          IF lv = choice[j] THEN
            IF j = cardinality(s) THEN side := true; END IF;
          ELSIF lv = 0 THEN
            IF j < cardinality(s) THEN w := -w; END IF;
          ELSE
            ok := false;
          END IF;
        END LOOP;
        IF ok THEN
          IF side THEN tw[c] := w; ELSE cw[c] := w; END IF;
        END IF;
      END LOOP;
      effect := array_to_string(ARRAY(SELECT fname[f] FROM unnest(s) f), ':');
      "order" := cardinality(s);
      levels := (SELECT jsonb_object_agg(fname[s[j2]], fx -> (s[j2] - 1) -> 'levels' ->> choice[j2])
                 FROM generate_series(1, cardinality(s)) j2);
      cells := cell_names;
      treatment_weights := tw;
      control_weights := cw;
      RETURN NEXT;
      -- the next choice
      j := cardinality(s);
      WHILE j >= 1 AND choice[j] = nlev[s[j]] - 1 LOOP
        choice[j] := 1;
        j := j - 1;
      END LOOP;
      EXIT WHEN j < 1;
      choice[j] := choice[j] + 1;
    END LOOP;
  END LOOP;
END
$$;

COMMENT ON FUNCTION experiment.factorial_contrasts(text) IS
  'the contrasts of a factorial experiment''s main effects and interactions: per effect (factors joined with ":") and '
  'non-baseline levels compared, the cells (variants in name order) and their treatment and control weights for contrast_test';

-- main effects and interactions of each factorial experiment from its cells' moments
CREATE OR REPLACE VIEW experiment.factorial_effects WITH (security_barrier = true) AS
SELECT ex.id AS experiment_id, em.metric, fc.effect, fc."order", fc.levels, k.method,
       (t.t).n_control, (t.t).n_treatment, (t.t).mean_control, (t.t).mean_treatment, (t.t).diff,
       (t.t).diff_lower, (t.t).diff_upper, (t.t).lift, (t.t).lift_lower, (t.t).lift_upper, (t.t).statistic,
       (t.t).df, (t.t).p_value, (t.t).lift_p_value, (t.t).diff_se, (t.t).lift_se,
       ex.alpha, ex.analysis, (t.t).p_value < ex.alpha AS significant, st.refreshed_at
FROM experiment.experiments ex
JOIN experiment.experiment_metrics em ON em.experiment_id = ex.id
JOIN experiment.metrics m ON m.name = em.metric
CROSS JOIN LATERAL experiment.factorial_contrasts(ex.id) fc
CROSS JOIN LATERAL (SELECT CASE WHEN m.kind = 'ratio' THEN 'ratio' ELSE 'welch' END AS method) k
CROSS JOIN LATERAL (
  SELECT array_agg(vs.moments ORDER BY c.o) AS cells, pg_catalog.max(vs.refreshed_at) AS refreshed_at,
         count(vs.moments) AS n
  FROM unnest(fc.cells) WITH ORDINALITY AS c(name, o)
  LEFT JOIN experiment.variant_stats vs ON vs.experiment_id = ex.id AND vs.metric = em.metric AND vs.variant = c.name) st
CROSS JOIN LATERAL (
  SELECT experiment.contrast_test(k.method, st.cells, fc.treatment_weights, fc.control_weights, ex.alpha, 'two-sided',
                                  CASE WHEN ex.analysis = 'sequential' THEN experiment.sequential_tuning_of(ex) END) AS t) t
-- (quantiles are no means of cells; a metric not refreshed yet has no moments)
WHERE ex.factors IS NOT NULL AND m.aggregation <> 'quantile' AND st.n > 0
  AND experiment.may_read_metric(em.metric);

COMMENT ON VIEW experiment.factorial_effects IS
  'factorial experiments: each main effect (a factor''s level against its baseline, averaged over the other factors'' levels) '
  'and interaction (the difference of the lower-order effect between a level and the baseline of the last factor) '
  'of each metric, from the cells'' moments in variant_stats (contrast_test; HC2 standard errors); the cells against '
  'the control are in results';

CREATE TABLE experiment.interaction_results (
  experiment_id text NOT NULL REFERENCES experiment.experiments (id) ON DELETE CASCADE,
  other_experiment_id text NOT NULL REFERENCES experiment.experiments (id) ON DELETE CASCADE,
  metric text NOT NULL,
  variant text NOT NULL,
  other_variant text NOT NULL,
  control_variant text NOT NULL,
  other_control_variant text NOT NULL,
  method text NOT NULL CHECK (method IN ('welch', 'ratio')),
  shared_units bigint NOT NULL,
  assignment_p_value float8,
  min_shared_units bigint NOT NULL,
  threshold float8 NOT NULL,
  test experiment.test_result,
  refreshed_at timestamptz NOT NULL,
  PRIMARY KEY (experiment_id, other_experiment_id, metric, variant, other_variant)
);

COMMENT ON TABLE experiment.interaction_results IS
  'per ordered pair of experiments with at least min_shared_units shared analysed units, metric both analyse, treatment '
  'of each: the 2x2 test of the difference of the first experiment''s effect between the other''s arms, from the stored '
  'per-unit values of the first (experiment.refresh_interactions())';

COMMENT ON COLUMN experiment.interaction_results.assignment_p_value IS
  'independence_chisq of the shared units per arm of each experiment: a small p-value means the two assignments are not independent';

COMMENT ON COLUMN experiment.interaction_results.test IS
  'contrast_test of the four cells (experiment arm x other experiment arm): mean_control is the effect within the other''s '
  'control, mean_treatment within its treatment, diff their difference (the interaction), at alpha = threshold';

ALTER TABLE experiment.interaction_results ENABLE ROW LEVEL SECURITY;

CREATE POLICY interaction_results_readable ON experiment.interaction_results FOR SELECT
  USING (experiment.may_read_metric(metric));

COMMENT ON POLICY interaction_results_readable ON experiment.interaction_results IS
  'a role sees the interactions of the metrics whose sources it may read';

-- the settings of interaction detection: experiment.interaction_min_shared_units (default 1000)
-- and experiment.interaction_threshold (default 0.01, Eppo's), e.g. ALTER DATABASE ... SET
CREATE OR REPLACE FUNCTION experiment.interaction_settings(OUT min_shared_units bigint, OUT threshold float8)
  LANGUAGE plpgsql STABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
DECLARE
  n text := nullif(current_setting('experiment.interaction_min_shared_units', true), '');
  t text := nullif(current_setting('experiment.interaction_threshold', true), '');
BEGIN
  IF n IS NOT NULL AND (n !~ '^\s*[0-9]{1,15}\s*$' OR n::bigint < 2) THEN
    PERFORM experiment.raise_invalid_value('experiment.interaction_min_shared_units', n, 'an integer of at least 2 (default 1000)');
  END IF;
  IF t IS NOT NULL AND (t !~ '^\s*[0-9.eE+-]+\s*$' OR NOT (t::float8 > 0 AND t::float8 < 1)) THEN
    PERFORM experiment.raise_invalid_value('experiment.interaction_threshold', t, 'a p-value in (0, 1) (default 0.01)');
  END IF;
  min_shared_units := coalesce(n::bigint, 1000);
  threshold := coalesce(t::float8, 0.01);
END
$$;

COMMENT ON FUNCTION experiment.interaction_settings() IS
  'internal: the settings experiment.interaction_min_shared_units (default 1000) and experiment.interaction_threshold (default 0.01), checked';

-- recompute experiment.interaction_results for every ordered pair of experiments that are not
-- drafts and whose stored per-unit values are current (refreshed since their metrics last
-- changed): per pair, one join of the two tables of per-unit values on unit_id, the first
-- experiment's values capped as its refresh caps them, moments per (arm, other arm)
CREATE OR REPLACE FUNCTION experiment.refresh_interactions() RETURNS integer
  LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE SECURITY DEFINER
  SET search_path = pg_catalog, experiment, pg_temp
  SET work_mem = '256MB'
  SET jit = off
  SET TimeZone = 'UTC'
  SET extra_float_digits = 1
  SET row_security = on
AS $$
DECLARE
  st record;
  e experiment.experiments;
  a record;
  b record;
  cp record;
  r record;
  cfg record;
  aggs text;
  unpivot text;
  shared bigint;
  apv float8;
  ts timestamptz := now();
  done integer := 0;
  j integer;
BEGIN
  SELECT * INTO cfg FROM experiment.interaction_settings();
  DELETE FROM experiment.interaction_results;
  CREATE TEMP TABLE exp_ix_sides (experiment_id text, relation name, control text, aggs text, unpivot text)
    ON COMMIT DROP;
  -- each experiment's side: its table, control and the SQL of its metrics' moments
  FOR st IN SELECT u.experiment_id, u.relation, u.definition FROM experiment.unit_value_tables u
            JOIN experiment.experiments x ON x.id = u.experiment_id
            WHERE x.status <> 'draft' ORDER BY u.experiment_id LOOP
    CONTINUE WHEN pg_catalog.to_regclass(format('experiment.%I', st.relation)) IS NULL;
    SELECT * INTO e FROM experiment.experiments x WHERE x.id = st.experiment_id;
    PERFORM experiment.drop_refresh_tables();
    PERFORM experiment.create_base_table(e);
    PERFORM experiment.create_dims_table(e);
    -- (values computed for another definition wait for the experiment's next refresh)
    CONTINUE WHEN experiment.unit_values_definition(e) IS DISTINCT FROM st.definition;
    SELECT * INTO cp FROM experiment.winsorization_caps(format('(SELECT * FROM experiment.%I v WHERE NOT v.multi)', st.relation));
    aggs := '';
    unpivot := '';
    j := 0;
    FOR r IN SELECT m.name, m.kind, bb.i,
                    (SELECT bn.i FROM pg_temp.exp_base bn WHERE bn.name = m.numerator) AS ni,
                    (SELECT bd.i FROM pg_temp.exp_base bd WHERE bd.name = m.denominator) AS di
             FROM experiment.experiment_metrics em JOIN experiment.metrics m ON m.name = em.metric
             LEFT JOIN pg_temp.exp_base bb ON bb.name = m.name
             WHERE em.experiment_id = e.id AND m.aggregation <> 'quantile' ORDER BY m.name LOOP
      j := j + 1;
      IF r.kind = 'ratio' THEN
        CONTINUE WHEN r.ni IS NULL OR r.di IS NULL;
        aggs := aggs || format(', experiment.moments(%s, %s) AS a%s', cp.capped[r.ni], cp.capped[r.di], j);
        unpivot := unpivot || format(', (%L, %L, g.a%s)', r.name, 'ratio', j);
      ELSE
        CONTINUE WHEN r.i IS NULL;
        aggs := aggs || format(', experiment.moments(%s) AS a%s', cp.capped[r.i], j);
        unpivot := unpivot || format(', (%L, %L, g.a%s)', r.name, 'welch', j);
      END IF;
    END LOOP;
    INSERT INTO pg_temp.exp_ix_sides
    SELECT e.id, st.relation, (SELECT v.name FROM experiment.variants v WHERE v.experiment_id = e.id AND v.is_control),
           aggs, unpivot;
  END LOOP;
  PERFORM experiment.drop_refresh_tables();

  FOR a IN SELECT * FROM pg_temp.exp_ix_sides s WHERE s.unpivot <> '' AND s.control IS NOT NULL ORDER BY s.experiment_id LOOP
    FOR b IN SELECT * FROM pg_temp.exp_ix_sides s WHERE s.experiment_id <> a.experiment_id AND s.control IS NOT NULL
             ORDER BY s.experiment_id LOOP
      -- the pair's shared analysed units: one join, moments per (arm, other arm) of every metric
      -- the first experiment analyses that the other analyses too
      EXECUTE format('CREATE TEMP TABLE exp_ix_cells ON COMMIT DROP AS '
                     'SELECT g.va, g.vb, g.units, k.metric, k.method, k.m '
                     'FROM (SELECT v.variant AS va, w.variant AS vb, count(*) AS units%s '
                     '      FROM experiment.%I v JOIN experiment.%I w ON w.unit_id = v.unit_id '
                     '      WHERE NOT v.multi AND NOT w.multi GROUP BY 1, 2) g '
                     'CROSS JOIN LATERAL (VALUES %s) AS k(metric, method, m) '
                     'WHERE k.metric IN (SELECT em.metric FROM experiment.experiment_metrics em WHERE em.experiment_id = %L)',
                     a.aggs, a.relation, b.relation, substr(a.unpivot, 3), b.experiment_id);
      SELECT coalesce(sum(c.units), 0) INTO shared
        FROM (SELECT DISTINCT c0.va, c0.vb, c0.units FROM pg_temp.exp_ix_cells c0) c;
      -- assignment dependence: the shared units per arm of A (rows) and of B (columns)
      SELECT experiment.independence_chisq(pg_catalog.array_agg(t.counts ORDER BY t.va COLLATE "C")) INTO apv
        FROM (SELECT x.name AS va,
                     ARRAY(SELECT coalesce((SELECT DISTINCT c.units FROM pg_temp.exp_ix_cells c
                                            WHERE c.va = x.name AND c.vb = y.name), 0)
                           FROM experiment.variants y WHERE y.experiment_id = b.experiment_id
                           ORDER BY y.name COLLATE "C") AS counts
              FROM experiment.variants x WHERE x.experiment_id = a.experiment_id) t;
      IF shared >= cfg.min_shared_units THEN
        INSERT INTO experiment.interaction_results
          (experiment_id, other_experiment_id, metric, variant, other_variant, control_variant, other_control_variant,
           method, shared_units, assignment_p_value, min_shared_units, threshold, test, refreshed_at)
        SELECT a.experiment_id, b.experiment_id, mt.metric, ta.variant, tb.variant, a.control, b.control, mt.method,
               shared, apv, cfg.min_shared_units, cfg.threshold,
               experiment.contrast_test(mt.method,
                 ARRAY[(SELECT c.m FROM pg_temp.exp_ix_cells c WHERE c.metric = mt.metric AND c.va = a.control AND c.vb = b.control),
                       (SELECT c.m FROM pg_temp.exp_ix_cells c WHERE c.metric = mt.metric AND c.va = ta.variant AND c.vb = b.control),
                       (SELECT c.m FROM pg_temp.exp_ix_cells c WHERE c.metric = mt.metric AND c.va = a.control AND c.vb = tb.variant),
                       (SELECT c.m FROM pg_temp.exp_ix_cells c WHERE c.metric = mt.metric AND c.va = ta.variant AND c.vb = tb.variant)],
                 ARRAY[0, 0, -1, 1]::float8[], ARRAY[-1, 1, 0, 0]::float8[], cfg.threshold, 'two-sided', NULL),
               ts
        FROM (SELECT DISTINCT c.metric, c.method FROM pg_temp.exp_ix_cells c) mt
        CROSS JOIN (SELECT v.name AS variant FROM experiment.variants v
                    WHERE v.experiment_id = a.experiment_id AND NOT v.is_control) ta
        CROSS JOIN (SELECT v.name AS variant FROM experiment.variants v
                    WHERE v.experiment_id = b.experiment_id AND NOT v.is_control) tb;
        GET DIAGNOSTICS j = ROW_COUNT;
        done := done + j;
      END IF;
      DROP TABLE pg_temp.exp_ix_cells;
    END LOOP;
  END LOOP;
  DROP TABLE pg_temp.exp_ix_sides;
  RETURN done;
END
$$;

COMMENT ON FUNCTION experiment.refresh_interactions() IS
  'recompute experiment.interaction_results: for each ordered pair of refreshed experiments (not drafts) with at least '
  'experiment.interaction_min_shared_units shared analysed units, each metric both analyse and each pair of treatments, '
  'the 2x2 difference in differences of the first experiment''s capped per-unit values; returns the rows stored';

REVOKE EXECUTE ON FUNCTION experiment.refresh_interactions() FROM PUBLIC;

CREATE OR REPLACE VIEW experiment.interactions WITH (security_barrier = true) AS
SELECT ir.experiment_id, ir.other_experiment_id, ir.metric, ir.variant, ir.other_variant, ir.control_variant,
       ir.other_control_variant, ir.method, ir.shared_units, ir.assignment_p_value,
       ir.assignment_p_value < ir.threshold AS assignment_dependent,
       (ir.test).n_control AS units_other_control, (ir.test).n_treatment AS units_other_treatment,
       (ir.test).mean_control AS effect_in_other_control, (ir.test).mean_treatment AS effect_in_other_treatment,
       (ir.test).diff AS interaction, (ir.test).diff_lower AS interaction_lower, (ir.test).diff_upper AS interaction_upper,
       (ir.test).diff_se AS interaction_se, (ir.test).df, (ir.test).p_value,
       ir.threshold, (ir.test).p_value < ir.threshold AS flagged, ir.min_shared_units, ir.refreshed_at
FROM experiment.interaction_results ir
WHERE experiment.may_read_metric(ir.metric);

COMMENT ON VIEW experiment.interactions IS
  'interaction detection: per ordered pair of overlapping experiments, metric both analyse and treatments, the first '
  'experiment''s effect within the other''s control and treatment, their difference (2x2 difference in differences) with '
  'its interval at 1 - threshold, SE and p-value; flagged when p < threshold (default 0.01, Eppo''s); '
  'assignment_dependent when the chi-squared test of independence of the two assignments has p < threshold';

COMMENT ON FUNCTION experiment.refresh_unit_values(experiment.experiments, boolean) IS
  'internal: brings an experiment''s stored per-unit values up to date: in full, or incrementally from the watermarks of its exposures and sources';
REVOKE EXECUTE ON FUNCTION experiment.refresh_unit_values(experiment.experiments, boolean) FROM PUBLIC;

ALTER FUNCTION experiment.refresh(text, boolean) SECURITY DEFINER;

ALTER FUNCTION experiment.refresh_all() SECURITY DEFINER;
