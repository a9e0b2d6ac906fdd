-- experiment 0.1.0 -> 0.2.0 (ALTER EXTENSION experiment UPDATE; doc/operations.md#upgrading)
--
-- Metrics get owners and are read as them (doc/security.md), result tables get row-level
-- security, NaN and infinite source values are skipped and counted, exposures are kept
-- within 1970-2200, parameter ranges are checked up front, C symbols carry the exp_
-- prefix. test/test_upgrade.py checks that the result equals a fresh 0.2.0 install.
\echo Use "ALTER EXTENSION experiment UPDATE TO '0.2.0'" to load this file. \quit

-- functions whose signature changed are dropped and created anew below
DROP FUNCTION experiment.source_unit_values(text[], text[], timestamptz[], regclass, text, text[], text[], text[], interval[], interval[], boolean[], timestamptz, timestamptz, timestamptz);

DROP FUNCTION experiment.prepare_unit_values(experiment.experiments, boolean);

CREATE OR REPLACE FUNCTION experiment.moments_in(cstring) RETURNS experiment.moments
  AS 'MODULE_PATHNAME', 'exp_moments_in' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

CREATE OR REPLACE FUNCTION experiment.moments_out(experiment.moments) RETURNS cstring
  AS 'MODULE_PATHNAME', 'exp_moments_out' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

CREATE OR REPLACE FUNCTION experiment.moments_recv(internal) RETURNS experiment.moments
  AS 'MODULE_PATHNAME', 'exp_moments_recv' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

CREATE OR REPLACE FUNCTION experiment.moments_send(experiment.moments) RETURNS bytea
  AS 'MODULE_PATHNAME', 'exp_moments_send' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

-- equality and merge

CREATE OR REPLACE FUNCTION experiment.moments_eq(experiment.moments, experiment.moments) RETURNS boolean
  AS 'MODULE_PATHNAME', 'exp_moments_eq' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

CREATE OR REPLACE FUNCTION experiment.moments_ne(experiment.moments, experiment.moments) RETURNS boolean
  AS 'MODULE_PATHNAME', 'exp_moments_ne' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

CREATE OR REPLACE FUNCTION experiment.moments_add(experiment.moments, experiment.moments) RETURNS experiment.moments
  AS 'MODULE_PATHNAME', 'exp_moments_add' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

-- accessors

CREATE OR REPLACE FUNCTION experiment.n(m experiment.moments) RETURNS bigint
  AS 'MODULE_PATHNAME', 'exp_moments_n' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

CREATE OR REPLACE FUNCTION experiment.mean(m experiment.moments, i integer DEFAULT 1) RETURNS float8
  AS 'MODULE_PATHNAME', 'exp_moments_mean' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

CREATE OR REPLACE FUNCTION experiment.variance(m experiment.moments, i integer DEFAULT 1) RETURNS float8
  AS 'MODULE_PATHNAME', 'exp_moments_variance_fn' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

CREATE OR REPLACE FUNCTION experiment.covariance(m experiment.moments, i integer, j integer) RETURNS float8
  AS 'MODULE_PATHNAME', 'exp_moments_covariance_fn' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

CREATE OR REPLACE FUNCTION experiment.moments_from_sums(n bigint, sum float8, sum_squares float8)
  RETURNS experiment.moments
  AS 'MODULE_PATHNAME', 'exp_moments_from_sums1' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

CREATE OR REPLACE FUNCTION experiment.moments_from_sums(n bigint, sum_y float8, sum_y2 float8,
                                             sum_x float8, sum_x2 float8, sum_xy float8)
  RETURNS experiment.moments
  AS 'MODULE_PATHNAME', 'exp_moments_from_sums2' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

-- aggregates

CREATE OR REPLACE FUNCTION experiment.moments_accum(experiment.moments, float8) RETURNS experiment.moments
  AS 'MODULE_PATHNAME', 'exp_moments_accum1' LANGUAGE C IMMUTABLE PARALLEL SAFE;

CREATE OR REPLACE FUNCTION experiment.moments_accum(experiment.moments, float8, float8) RETURNS experiment.moments
  AS 'MODULE_PATHNAME', 'exp_moments_accum2' LANGUAGE C IMMUTABLE PARALLEL SAFE;

CREATE OR REPLACE FUNCTION experiment.moments_accum(experiment.moments, float8, float8, float8, float8)
  RETURNS experiment.moments
  AS 'MODULE_PATHNAME', 'exp_moments_accum4' LANGUAGE C IMMUTABLE PARALLEL SAFE;

CREATE OR REPLACE FUNCTION experiment.moments_combine(experiment.moments, experiment.moments)
  RETURNS experiment.moments
  AS 'MODULE_PATHNAME', 'exp_moments_combine' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

-- Welch's t-test

CREATE OR REPLACE FUNCTION experiment.welch_ttest(control experiment.moments, treatment experiment.moments,
                                       alpha float8 DEFAULT 0.05, alternative text DEFAULT 'two-sided',
                                       sequential_tuning float8 DEFAULT NULL)
  RETURNS experiment.test_result
  AS 'MODULE_PATHNAME', 'exp_welch_ttest' LANGUAGE C IMMUTABLE PARALLEL SAFE;

CREATE OR REPLACE FUNCTION experiment.moments_pair_accum(experiment.moments[], boolean, float8)
  RETURNS experiment.moments[]
  AS 'MODULE_PATHNAME', 'exp_moments_pair_accum' LANGUAGE C IMMUTABLE PARALLEL SAFE;

CREATE OR REPLACE FUNCTION experiment.moments_pair_combine(experiment.moments[], experiment.moments[])
  RETURNS experiment.moments[]
  AS 'MODULE_PATHNAME', 'exp_moments_pair_combine' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

CREATE OR REPLACE FUNCTION experiment.welch_ttest_final(experiment.moments[])
  RETURNS experiment.test_result
  AS 'MODULE_PATHNAME', 'exp_welch_ttest_final' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

-- proportions

CREATE OR REPLACE FUNCTION experiment.prop_ztest(x_control bigint, n_control bigint,
                                      x_treatment bigint, n_treatment bigint,
                                      alpha float8 DEFAULT 0.05, alternative text DEFAULT 'two-sided',
                                      sequential_tuning float8 DEFAULT NULL)
  RETURNS experiment.test_result
  AS 'MODULE_PATHNAME', 'exp_prop_ztest' LANGUAGE C IMMUTABLE PARALLEL SAFE;

-- CUPED

CREATE OR REPLACE FUNCTION experiment.cuped_ttest(control experiment.moments, treatment experiment.moments,
                                       alpha float8 DEFAULT 0.05, alternative text DEFAULT 'two-sided',
                                       sequential_tuning float8 DEFAULT NULL)
  RETURNS experiment.test_result
  AS 'MODULE_PATHNAME', 'exp_cuped_ttest' LANGUAGE C IMMUTABLE PARALLEL SAFE;

CREATE OR REPLACE FUNCTION experiment.cuped_theta(m experiment.moments) RETURNS float8
  AS 'MODULE_PATHNAME', 'exp_cuped_theta' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

CREATE OR REPLACE FUNCTION experiment.cuped_adjust(y float8, x float8, theta float8, mean_x float8) RETURNS float8
  AS 'MODULE_PATHNAME', 'exp_cuped_adjust_value' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

CREATE OR REPLACE FUNCTION experiment.cuped_adjust(m experiment.moments, theta float8, mean_x float8)
  RETURNS experiment.moments
  AS 'MODULE_PATHNAME', 'exp_cuped_adjust_moments' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

-- ratio metrics

CREATE OR REPLACE FUNCTION experiment.ratio_ttest(control experiment.moments, treatment experiment.moments,
                                       alpha float8 DEFAULT 0.05, alternative text DEFAULT 'two-sided',
                                       sequential_tuning float8 DEFAULT NULL)
  RETURNS experiment.test_result
  AS 'MODULE_PATHNAME', 'exp_ratio_ttest' LANGUAGE C IMMUTABLE PARALLEL SAFE;

-- sample ratio mismatch

CREATE OR REPLACE FUNCTION experiment.srm_chisq(observed bigint[], weights float8[] DEFAULT NULL) RETURNS float8
  AS 'MODULE_PATHNAME', 'exp_srm_chisq' LANGUAGE C IMMUTABLE PARALLEL SAFE;

-- sample size and power

CREATE OR REPLACE FUNCTION experiment.required_n(baseline float8, mde float8, alpha float8 DEFAULT 0.05,
                                      power float8 DEFAULT 0.8, variations integer DEFAULT 2,
                                      sequential_tuning float8 DEFAULT NULL) RETURNS bigint
  AS 'MODULE_PATHNAME', 'exp_required_n' LANGUAGE C IMMUTABLE PARALLEL SAFE;

CREATE OR REPLACE FUNCTION experiment.required_n_mean(stddev float8, mde float8, alpha float8 DEFAULT 0.05,
                                           power float8 DEFAULT 0.8, variations integer DEFAULT 2,
                                           sequential_tuning float8 DEFAULT NULL) RETURNS bigint
  AS 'MODULE_PATHNAME', 'exp_required_n_mean' LANGUAGE C IMMUTABLE PARALLEL SAFE;

CREATE OR REPLACE FUNCTION experiment.mde(n_per_variant bigint, baseline float8, alpha float8 DEFAULT 0.05,
                               power float8 DEFAULT 0.8, variations integer DEFAULT 2,
                               sequential_tuning float8 DEFAULT NULL) RETURNS float8
  AS 'MODULE_PATHNAME', 'exp_mde_prop' LANGUAGE C IMMUTABLE PARALLEL SAFE;

CREATE OR REPLACE FUNCTION experiment.power(n_per_variant bigint, baseline float8, mde float8,
                                 alpha float8 DEFAULT 0.05, variations integer DEFAULT 2,
                                 sequential_tuning float8 DEFAULT NULL) RETURNS float8
  AS 'MODULE_PATHNAME', 'exp_power_prop' LANGUAGE C IMMUTABLE PARALLEL SAFE;

CREATE OR REPLACE FUNCTION experiment.eval_condition(
    condition jsonb,
    attributes jsonb,
    saved_groups jsonb DEFAULT '{}'::jsonb)
  RETURNS boolean
  AS 'MODULE_PATHNAME', 'exp_eval_condition'
  LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

-- experiments have owner roles: the existing ones are owned by the role running the update
ALTER TABLE experiment.experiments ADD COLUMN owner_role regrole;
ALTER TABLE experiment.experiments DISABLE TRIGGER USER;
UPDATE experiment.experiments
   SET owner_role = (SELECT r.oid FROM pg_catalog.pg_roles r WHERE r.rolname = current_user)::regrole;
ALTER TABLE experiment.experiments ENABLE TRIGGER USER;
ALTER TABLE experiment.experiments ALTER COLUMN owner_role SET NOT NULL;

COMMENT ON COLUMN experiment.experiments.owner_role IS
  'the role whose members may change the experiment, its variants and its metrics (default: the role that creates it; doc/security.md)';

CREATE OR REPLACE FUNCTION experiment.require_experiment(experiment_id text) RETURNS experiment.experiments
  LANGUAGE plpgsql STABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
DECLARE
  e experiment.experiments;
BEGIN
  IF experiment_id IS NULL THEN
    RAISE EXCEPTION 'experiment_id must not be NULL'
      USING ERRCODE = 'null_value_not_allowed',
            HINT = experiment.hint_list(ARRAY(SELECT x.id FROM experiment.experiments x ORDER BY x.id),
                                        'experiments', 'experiment.experiments');
  END IF;
  SELECT * INTO e FROM experiment.experiments x WHERE x.id = require_experiment.experiment_id;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'experiment "%" does not exist', coalesce(left(experiment_id, 200), 'NULL')
      USING ERRCODE = 'invalid_parameter_value',
            HINT = experiment.hint_list(ARRAY(SELECT x.id FROM experiment.experiments x ORDER BY x.id),
                                        'experiments', 'experiment.experiments');
  END IF;
  RETURN e;
END
$$;

-- only members of an experiment's owner role change it, its variants and its metrics
CREATE OR REPLACE FUNCTION experiment.require_experiment_owner(experiment_id text, action text) RETURNS void
  LANGUAGE plpgsql STABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
DECLARE
  o regrole;
BEGIN
  SELECT x.owner_role INTO o FROM experiment.experiments x WHERE x.id = require_experiment_owner.experiment_id;
  IF o IS NOT NULL AND NOT pg_catalog.pg_has_role(current_user, o, 'MEMBER') THEN
    RAISE EXCEPTION 'permission denied to % of experiment "%"', action, left(experiment_id, 200)
      USING ERRCODE = 'insufficient_privilege',
            DETAIL = format('Only members of role "%s", the experiment''s owner role, may change it.', o);
  END IF;
END
$$;

COMMENT ON FUNCTION experiment.require_experiment_owner(text, text) IS
  'internal: the error 42501 unless the current user is a member of the experiment''s owner_role';

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

CREATE OR REPLACE FUNCTION experiment.experiments_delete_check() RETURNS trigger
  LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
BEGIN
  IF TG_LEVEL = 'STATEMENT' THEN
    IF EXISTS (SELECT FROM experiment.experiments WHERE status = 'running') THEN
      RAISE EXCEPTION 'cannot truncate experiment.experiments while experiments are running'
        USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN NULL;
  END IF;
  PERFORM experiment.require_experiment_owner(OLD.id, 'delete');
  IF OLD.status = 'running' THEN
    RAISE EXCEPTION 'cannot delete experiment "%": it is running', OLD.id
      USING ERRCODE = 'invalid_parameter_value',
            HINT = 'Stop it first (experiment.stop).';
  END IF;
  RETURN OLD;
END
$$;

-- Variants. Drafts are edited freely (row by row); the split is checked when
-- the experiment starts. Once an experiment has left draft its split (the set
-- of variants, their allocations and which one is the control) is frozen,
-- with one exception that keeps dumps restorable: one INSERT statement may
-- give a non-draft experiment that has no variants all of its variants, and
-- they are checked at the end of that statement.
CREATE OR REPLACE FUNCTION experiment.variants_check() RETURNS trigger
  LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
DECLARE
  st text;
BEGIN
  IF TG_LEVEL = 'STATEMENT' THEN
    IF EXISTS (SELECT FROM experiment.variants v JOIN experiment.experiments x ON x.id = v.experiment_id
                WHERE x.status <> 'draft') THEN
      RAISE EXCEPTION 'cannot truncate experiment.variants: it holds the frozen split of experiments that left draft'
        USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN NULL;
  END IF;
  IF TG_OP IN ('UPDATE', 'DELETE') THEN
    PERFORM experiment.require_experiment_owner(OLD.experiment_id, 'change the variants');
  END IF;
  IF TG_OP IN ('INSERT', 'UPDATE') THEN
    PERFORM experiment.require_experiment_owner(NEW.experiment_id, 'change the variants');
    IF NEW.name IS NULL OR NEW.name = '' THEN
      RAISE EXCEPTION 'variant name of experiment "%" must not be empty', NEW.experiment_id
        USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF NEW.allocation IS NULL OR NOT (NEW.allocation >= 0 AND NEW.allocation <= 1) THEN
      RAISE EXCEPTION 'allocation of variant "%" of experiment "%" must be in [0, 1], got %',
        NEW.name, NEW.experiment_id, NEW.allocation
        USING ERRCODE = 'invalid_parameter_value';
    END IF;
  END IF;
  -- Lock the experiment row against a concurrent status change: starting an
  -- experiment checks its split, which must not change until that commits.
  IF TG_OP = 'INSERT' THEN
    PERFORM FROM experiment.experiments x WHERE x.id = NEW.experiment_id FOR SHARE;
  END IF;
  IF TG_OP IN ('UPDATE', 'DELETE') THEN
    SELECT x.status INTO st FROM experiment.experiments x WHERE x.id = OLD.experiment_id FOR SHARE;
    IF st <> 'draft' AND (TG_OP = 'DELETE'
         OR NEW.experiment_id <> OLD.experiment_id OR NEW.name <> OLD.name
         OR NEW.allocation <> OLD.allocation OR NEW.is_control <> OLD.is_control) THEN
      RAISE EXCEPTION 'cannot change the variants of experiment "%": it is %', OLD.experiment_id, st
        USING ERRCODE = 'invalid_parameter_value',
              HINT = 'The split of an experiment is frozen once it leaves draft; a new split is a new experiment. Only config may change.';
    END IF;
  END IF;
  IF TG_OP = 'UPDATE' AND NEW.experiment_id <> OLD.experiment_id THEN
    SELECT x.status INTO st FROM experiment.experiments x WHERE x.id = NEW.experiment_id FOR SHARE;
    IF st <> 'draft' THEN
      RAISE EXCEPTION 'cannot change the variants of experiment "%": it is %', NEW.experiment_id, st
        USING ERRCODE = 'invalid_parameter_value';
    END IF;
  END IF;
  IF TG_OP = 'DELETE' THEN
    RETURN OLD;
  END IF;
  RETURN NEW;
END
$$;

-- ---------------------------------------------------------------------------
-- Assignment
-- ---------------------------------------------------------------------------

-- The hash ranges of the variants, [[start, end], ...] in range order, as
-- experiment.growthbook_choose_variation() reads them. Variant i owns
-- [c_i, c_i + traffic * (c_{i+1} - c_i)): ramp-safe, since start stays put and
-- the end only grows with traffic. GrowthBook schemes: c_i are the SDK's
-- cumulative weights (getBucketRanges). The other schemes follow the
-- project's own contract (experiment.assign_variant): 10000 * c_i, summed in
-- float8 from left to right, is snapped to the nearest integer when within
-- 1e-6 of one, so that at traffic 1 variant i owns exactly the buckets
-- [10000 c_i, 10000 c_{i+1}) of experiment.bucket().
CREATE OR REPLACE FUNCTION experiment.variant_ranges(hash_scheme text, allocations float8[], traffic float8 DEFAULT 1)
  RETURNS float8[]
  LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
DECLARE
  n integer := coalesce(cardinality(allocations), 0);
  r float8[] := '{}';
  cum float8 := 0;
  lo float8 := 0;
  hi float8;
  b float8;
  i integer;
BEGIN
  IF hash_scheme IN ('growthbook_v1', 'growthbook_v2') THEN
    RETURN experiment.growthbook_bucket_ranges(n, traffic, allocations);
  ELSIF hash_scheme NOT IN ('sha256', 'eppo', 'statsig') THEN
    PERFORM experiment.raise_invalid_choice('hash_scheme', hash_scheme,
                                            ARRAY(SELECT h.scheme FROM experiment.hash_schemes() h));
  END IF;
  IF NOT (traffic = 0 OR (traffic >= 1e-6 AND traffic <= 1)) THEN
    RAISE EXCEPTION 'traffic must be 0 or in [1e-6, 1], got %', traffic USING ERRCODE = 'invalid_parameter_value';
  END IF;
  FOR i IN 1 .. n LOOP
    IF NOT (allocations[i] >= 0 AND allocations[i] <= 1) THEN
      RAISE EXCEPTION 'allocation % is %, outside [0, 1]', i, allocations[i]
        USING ERRCODE = 'invalid_parameter_value';
    END IF;
    cum := cum + allocations[i];
    b := 10000 * cum;
    IF abs(b - round(b)) < 1e-6 THEN
      b := round(b);
    END IF;
    hi := b / 10000;
    r := r || ARRAY[ARRAY[lo, CASE WHEN traffic >= 1 THEN hi ELSE least(lo + traffic * (hi - lo), hi) END]];
    lo := hi;
  END LOOP;
  RETURN r;
END
$$;

-- an exposure outside these years is a broken clock or a placeholder, never analysable
CREATE OR REPLACE FUNCTION experiment.exposed_at_valid(t timestamptz) RETURNS boolean
  LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
  SELECT t >= '1970-01-01 00:00:00+00'::timestamptz AND t < '2200-01-01 00:00:00+00'::timestamptz
$$;

COMMENT ON FUNCTION experiment.exposed_at_valid(timestamptz) IS
  'internal: whether an exposure time is storable: from 1970-01-01 up to 2200-01-01 (UTC)';

-- exposures outside 1970 .. 2200 go to the quarantine (nothing is lost), then the check
INSERT INTO experiment.exposures_quarantine (received_at, reason, experiment_id, unit_id, variant, event_id, payload)
SELECT x.received_at, 'exposed_at out of range (1970-01-01 to 2200-01-01)', x.experiment_id, x.unit_id,
       x.variant, x.event_id, pg_catalog.to_jsonb(x)
FROM experiment.exposures x
WHERE NOT experiment.exposed_at_valid(x.exposed_at);
DELETE FROM experiment.exposures x
WHERE NOT experiment.exposed_at_valid(x.exposed_at);
ALTER TABLE experiment.exposures ADD CONSTRAINT exposures_exposed_at_check
  CHECK (experiment.exposed_at_valid(exposed_at));

COMMENT ON COLUMN experiment.exposures.exposed_at IS 'when the unit was exposed: from 1970 up to the year 2200 (exclusive)';

CREATE OR REPLACE FUNCTION experiment.log_exposure(
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
             WHEN NOT experiment.exposed_at_valid(p.exposed_at)
               THEN 'exposed_at out of range (1970-01-01 to 2200-01-01)'
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

-- metrics have owners: each existing metric is owned by the owner of its source relation
-- (ratio metrics and metrics whose source is gone: by the role running the update)
ALTER TABLE experiment.metrics ADD COLUMN owner regrole;
ALTER TABLE experiment.metrics DISABLE TRIGGER USER;
UPDATE experiment.metrics m
   SET owner = coalesce((SELECT c.relowner FROM pg_catalog.pg_class c WHERE c.oid = m.source),
                        (SELECT r.oid FROM pg_catalog.pg_roles r WHERE r.rolname = current_user))::regrole;
ALTER TABLE experiment.metrics ENABLE TRIGGER USER;
ALTER TABLE experiment.metrics ALTER COLUMN owner SET NOT NULL;

COMMENT ON COLUMN experiment.metrics.owner IS
  'the role the source is read as (default: the role that registers the metric); it must be allowed to SELECT the source''s columns, and only its members may change or delete the metric';

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
  IF NEW.cuped_lookback <= interval '0' THEN
    PERFORM experiment.raise_invalid_value('cuped_lookback of ' || owner, NEW.cuped_lookback::text,
                                           'a positive interval (NULL: no CUPED)');
  END IF;
  RETURN NEW;
END
$$;

CREATE OR REPLACE TRIGGER metrics_check
  BEFORE INSERT OR UPDATE OR DELETE ON experiment.metrics
  FOR EACH ROW EXECUTE FUNCTION experiment.metrics_check();

COMMENT ON TRIGGER metrics_check ON experiment.metrics IS
  'an invalid aggregation, kind, delay, window, winsorize or cuped_lookback is refused with a message naming the allowed values; '
  'the owner defaults to the current user, and only members of the owner role may register, change or delete a metric';

CREATE OR REPLACE FUNCTION experiment.experiment_metrics_check() RETURNS trigger
  LANGUAGE plpgsql
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
DECLARE
  other text;
  owner_role regrole;
BEGIN
  IF TG_OP IN ('UPDATE', 'DELETE') THEN
    PERFORM experiment.require_experiment_owner(OLD.experiment_id, 'change the metrics');
  END IF;
  IF TG_OP = 'DELETE' THEN
    RETURN OLD;
  END IF;
  PERFORM experiment.require_experiment(NEW.experiment_id);
  PERFORM experiment.require_experiment_owner(NEW.experiment_id, 'change the metrics');
  PERFORM experiment.require_metric(NEW.metric);
  -- an experiment's owners see all of its results: they must be allowed to read its metrics
  -- (else an experiment of one's own, with one unit in a variant, would expose another
  -- role's per-unit values, and its family correction another's p-values)
  SELECT x.owner_role INTO owner_role FROM experiment.experiments x WHERE x.id = NEW.experiment_id;
  IF NOT experiment.role_may_read_metric(owner_role, NEW.metric) THEN
    RAISE EXCEPTION 'metric "%" cannot be added to experiment "%": its owner role "%" may not read the metric''s source',
      NEW.metric, NEW.experiment_id, owner_role
      USING ERRCODE = 'insufficient_privilege',
            HINT = 'An experiment''s owners see all of its results; grant them SELECT on the source first.';
  END IF;
  IF NEW.role IS NULL OR NEW.role NOT IN ('primary', 'secondary', 'guardrail') THEN
    PERFORM experiment.raise_invalid_choice('role', NEW.role, '{primary,secondary,guardrail}',
                                            format('metric "%s" of experiment "%s"', NEW.metric, NEW.experiment_id));
  END IF;
  IF NEW.non_inferiority_margin IS NOT NULL AND NEW.role <> 'guardrail' THEN
    RAISE EXCEPTION 'non_inferiority_margin of metric "%" of experiment "%" applies to guardrails only, the role is %',
      NEW.metric, NEW.experiment_id, NEW.role
      USING ERRCODE = 'invalid_parameter_value', HINT = 'Set role to ''guardrail'', or the margin to NULL.';
  END IF;
  IF NOT (NEW.non_inferiority_margin >= 0) THEN
    PERFORM experiment.raise_invalid_value(format('non_inferiority_margin of metric "%s" of experiment "%s"',
                                                  NEW.metric, NEW.experiment_id),
                                           NEW.non_inferiority_margin::text,
                                           'a non-negative relative harm, e.g. 0.02 for 2% (NULL or 0: any significant harm fails)');
  END IF;
  IF NEW.role = 'primary' THEN
    SELECT em.metric INTO other FROM experiment.experiment_metrics em
     WHERE em.experiment_id = NEW.experiment_id AND em.role = 'primary' AND em.metric <> NEW.metric;
    IF FOUND THEN
      RAISE EXCEPTION 'experiment "%" already has a primary metric ("%")', NEW.experiment_id, other
        USING ERRCODE = 'invalid_parameter_value',
              HINT = format('An experiment has one primary metric: make "%s" secondary first, or this one secondary.', other);
    END IF;
  END IF;
  RETURN NEW;
END
$$;

CREATE OR REPLACE TRIGGER experiment_metrics_check
  BEFORE INSERT OR UPDATE OR DELETE ON experiment.experiment_metrics
  FOR EACH ROW EXECUTE FUNCTION experiment.experiment_metrics_check();

COMMENT ON TRIGGER experiment_metrics_check ON experiment.experiment_metrics IS
  'an unknown experiment or metric, an invalid role or margin, or a second primary metric is refused with a clear message; '
  'only members of the experiment''s owner_role add, change or remove its metrics';

-- the relations a read of source may read: source and, recursively, what its views read,
-- what the row-level security policies of the tables among them read, and their
-- inheritance children and partitions
CREATE OR REPLACE FUNCTION experiment.source_relations(source regclass) RETURNS SETOF regclass
  LANGUAGE sql STABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
  WITH RECURSIVE rel(oid, depth) AS (
    SELECT source::oid, 0
    UNION
    SELECT n.oid, rel.depth + 1
    FROM rel
    JOIN pg_catalog.pg_class c ON c.oid = rel.oid
    CROSS JOIN LATERAL (
      SELECT d.refobjid AS oid
      FROM (SELECT 'pg_catalog.pg_rewrite'::regclass AS classid, rw.oid AS objid
            FROM pg_catalog.pg_rewrite rw WHERE rw.ev_class = c.oid AND c.relkind = 'v'
            UNION ALL
            SELECT 'pg_catalog.pg_policy'::regclass, p.oid
            FROM pg_catalog.pg_policy p WHERE p.polrelid = c.oid AND c.relrowsecurity) o
      JOIN pg_catalog.pg_depend d ON d.classid = o.classid AND d.objid = o.objid
                                 AND d.refclassid = 'pg_catalog.pg_class'::regclass AND d.refobjid <> c.oid
      UNION ALL
      -- a scan of a table reads its inheritance children and partitions
      SELECT i.inhrelid FROM pg_catalog.pg_inherits i WHERE i.inhparent = c.oid) n
    WHERE rel.depth < 50
  )
  SELECT DISTINCT rel.oid::regclass FROM rel
$$;

COMMENT ON FUNCTION experiment.source_relations(regclass) IS
  'internal: source and the relations its views and row-level security policies read, and their inheritance children and partitions, recursively (what source_unit_values() locks before checking a source)';

-- what in a source could run code chosen by a role that lacks the reader's privileges
-- (doc/security.md): views (and the views they read) owned by such a role, functions and
-- operators a view calls that such a role owns, row-level security policies of tables
-- such a role owns, or that call its functions, when the reader is subject to them, and
-- temporary objects of the session owned by such a role (a function of the source that
-- does not put pg_temp last would find them first)
CREATE OR REPLACE FUNCTION experiment.source_trust_problem(source regclass, reader regrole) RETURNS text
  LANGUAGE sql STABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
  WITH RECURSIVE rels AS (
    SELECT DISTINCT c.oid, c.relkind, c.relowner, c.relrowsecurity
    FROM experiment.source_relations(source) r JOIN pg_catalog.pg_class c ON c.oid = r
  ), temp_objects AS (
    SELECT 'relation' AS kind, c.oid::regclass::text AS name, c.relowner AS owner FROM pg_catalog.pg_class c
    WHERE c.relnamespace = pg_catalog.pg_my_temp_schema()
    UNION ALL
    SELECT 'function', p.oid::regprocedure::text, p.proowner FROM pg_catalog.pg_proc p
    WHERE p.pronamespace = pg_catalog.pg_my_temp_schema()
    UNION ALL
    SELECT 'type', t.oid::regtype::text, t.typowner FROM pg_catalog.pg_type t
    WHERE t.typnamespace = pg_catalog.pg_my_temp_schema()
    UNION ALL
    SELECT 'operator', o.oid::regoperator::text, o.oprowner FROM pg_catalog.pg_operator o
    WHERE o.oprnamespace = pg_catalog.pg_my_temp_schema()
    UNION ALL
    SELECT 'collation', co.oid::regcollation::text, co.collowner FROM pg_catalog.pg_collation co
    WHERE co.collnamespace = pg_catalog.pg_my_temp_schema()
    UNION ALL
    SELECT 'conversion', cv.conname::text, cv.conowner FROM pg_catalog.pg_conversion cv
    WHERE cv.connamespace = pg_catalog.pg_my_temp_schema()
  ), direct_code AS (
    -- what the planner evaluates while it plans a scan of a table: its index expressions
    -- and predicates, statistics expressions and CHECK constraints (a child's)
    SELECT d.refclassid, d.refobjid
    FROM rels JOIN pg_catalog.pg_index i ON i.indrelid = rels.oid
    JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = i.indexrelid
                               AND d.refclassid <> 'pg_catalog.pg_class'::regclass
    UNION
    SELECT d.refclassid, d.refobjid
    FROM rels JOIN pg_catalog.pg_statistic_ext s ON s.stxrelid = rels.oid
    JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_statistic_ext'::regclass AND d.objid = s.oid
    UNION
    SELECT d.refclassid, d.refobjid
    FROM rels JOIN pg_catalog.pg_constraint co ON co.conrelid = rels.oid
    JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_constraint'::regclass AND d.objid = co.oid
    UNION
    SELECT d.refclassid, d.refobjid
    FROM rels JOIN pg_catalog.pg_rewrite rw ON rw.ev_class = rels.oid
    JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_rewrite'::regclass AND d.objid = rw.oid
    WHERE rels.relkind = 'v'
    UNION
    SELECT d.refclassid, d.refobjid
    FROM rels JOIN pg_catalog.pg_policy p ON p.polrelid = rels.oid
    JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_policy'::regclass AND d.objid = p.oid
    -- (whether a policy applies depends on the role that checks the table, which for a view
    -- is the view's owner: every policy counts)
    WHERE rels.relrowsecurity
  ), domains(oid, depth) AS (
    -- domains (and the domains they are based on) that views and policies cast to: their
    -- CHECK constraints run when the source is read
    SELECT t.oid, 0 FROM direct_code dc JOIN pg_catalog.pg_type t ON dc.refclassid = 'pg_catalog.pg_type'::regclass
                                                                   AND t.oid = dc.refobjid AND t.typtype = 'd'
    UNION
    SELECT b.oid, domains.depth + 1 FROM domains JOIN pg_catalog.pg_type t ON t.oid = domains.oid
    JOIN pg_catalog.pg_type b ON b.oid = t.typbasetype AND b.typtype = 'd'
    WHERE domains.depth < 50
  ), code AS (
    SELECT dc.refclassid, dc.refobjid FROM direct_code dc
    UNION
    SELECT d.refclassid, d.refobjid
    FROM domains JOIN pg_catalog.pg_constraint co ON co.contypid = domains.oid
    JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_constraint'::regclass AND d.objid = co.oid
  ), problems AS (
    SELECT 0 AS rank, format('this session has a temporary %s %s owned by role "%s", which code in the source could find and run as "%s"',
                             t.kind, t.name, pg_catalog.pg_get_userbyid(t.owner), reader) AS problem
    FROM temp_objects t WHERE NOT pg_catalog.pg_has_role(t.owner, reader::oid, 'USAGE')
    UNION ALL
    -- any relation: its owner can make reading it run code (a view's query, a rule that turns
    -- a table into a view, row-level security, and expressions the planner evaluates: those
    -- of indexes, partial-index predicates, statistics objects, children's CHECK constraints)
    SELECT 1 AS rank, format('%s %s is owned by role "%s", which could make reading it run code as "%s"',
                             CASE rels.relkind WHEN 'v' THEN 'view' WHEN 'm' THEN 'materialized view'
                                               WHEN 'f' THEN 'foreign table' ELSE 'table' END,
                             rels.oid::regclass, pg_catalog.pg_get_userbyid(rels.relowner), reader) AS problem
    FROM rels WHERE NOT pg_catalog.pg_has_role(rels.relowner, reader::oid, 'USAGE')
    UNION ALL
    SELECT 2, format('domain %s is owned by role "%s", whose constraints could run code as "%s"',
                     t.oid::regtype, pg_catalog.pg_get_userbyid(t.typowner), reader)
    FROM (SELECT DISTINCT oid FROM domains) dm JOIN pg_catalog.pg_type t ON t.oid = dm.oid
    WHERE NOT pg_catalog.pg_has_role(t.typowner, reader::oid, 'USAGE')
    UNION ALL
    SELECT 3, format('function %s is owned by role "%s", which could change it to run code as "%s"',
                     p.oid::regprocedure, pg_catalog.pg_get_userbyid(p.proowner), reader)
    FROM code JOIN pg_catalog.pg_proc p ON code.refclassid = 'pg_catalog.pg_proc'::regclass AND p.oid = code.refobjid
    WHERE NOT pg_catalog.pg_has_role(p.proowner, reader::oid, 'USAGE')
    UNION ALL
    -- an aggregate runs its support functions, which their owners can replace
    SELECT 3, format('aggregate %s calls function %s, which is owned by role "%s" and could run code as "%s"',
                     a.aggfnoid::regprocedure, p.oid::regprocedure, pg_catalog.pg_get_userbyid(p.proowner), reader)
    FROM code JOIN pg_catalog.pg_aggregate a ON code.refclassid = 'pg_catalog.pg_proc'::regclass AND a.aggfnoid = code.refobjid
    CROSS JOIN LATERAL unnest(ARRAY[a.aggtransfn, a.aggfinalfn, a.aggcombinefn, a.aggserialfn, a.aggdeserialfn,
                                    a.aggmtransfn, a.aggminvtransfn, a.aggmfinalfn]::oid[]) f(oid)
    JOIN pg_catalog.pg_proc p ON p.oid = f.oid
    WHERE NOT pg_catalog.pg_has_role(p.proowner, reader::oid, 'USAGE')
    UNION ALL
    SELECT 3, format('operator %s calls function %s, which is owned by role "%s" and could run code as "%s"',
                     o.oid::regoperator, p.oid::regprocedure, pg_catalog.pg_get_userbyid(p.proowner), reader)
    FROM code JOIN pg_catalog.pg_operator o ON code.refclassid = 'pg_catalog.pg_operator'::regclass AND o.oid = code.refobjid
    JOIN pg_catalog.pg_proc p ON p.oid = o.oprcode
    WHERE NOT pg_catalog.pg_has_role(p.proowner, reader::oid, 'USAGE')
  )
  SELECT problems.problem FROM problems ORDER BY problems.rank, problems.problem LIMIT 1
$$;

COMMENT ON FUNCTION experiment.source_trust_problem(regclass, regrole) IS
  'internal: why reading source as reader could run code chosen by a role without reader''s privileges '
  '(a view, function, operator or row-level security policy such a role owns), or NULL';

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
  IF m.kind = 'proportion' AND m.aggregation <> 'any' THEN
    RAISE EXCEPTION 'proportion metric "%" must use aggregation ''any'', not ''%''', m.name, m.aggregation
      USING ERRCODE = '22023', HINT = 'A proportion is the share of units converted at least once.';
  END IF;
END
$$;

-- the current user as a regrole (current_user is a name, which text input would case-fold)
CREATE OR REPLACE FUNCTION experiment.current_regrole() RETURNS regrole
  LANGUAGE sql STABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
  SELECT r.oid::regrole FROM pg_catalog.pg_roles r WHERE r.rolname = current_user
$$;

COMMENT ON FUNCTION experiment.current_regrole() IS 'internal: the current user as a regrole';

-- SELECT on a column of a relation for role r (on the relation, when the column no longer
-- exists)
CREATE OR REPLACE FUNCTION experiment.role_may_read_column(r regrole, rel regclass, col text) RETURNS boolean
  LANGUAGE sql STABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
  SELECT CASE WHEN col IS NULL THEN true
              WHEN experiment.column_type(rel, col) IS NULL
                THEN coalesce(pg_catalog.has_table_privilege(r::oid, rel::oid, 'SELECT'), false)
              ELSE coalesce(pg_catalog.has_column_privilege(r::oid, rel::oid, col, 'SELECT'), false) END
$$;

COMMENT ON FUNCTION experiment.role_may_read_column(regrole, regclass, text) IS
  'internal: whether role r may SELECT column col of rel (NULL col: true; a column that no longer exists: SELECT on rel)';

CREATE OR REPLACE FUNCTION experiment.may_read_column(rel regclass, col text) RETURNS boolean
  LANGUAGE sql STABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
  SELECT experiment.role_may_read_column(experiment.current_regrole(), rel, col)
$$;

COMMENT ON FUNCTION experiment.may_read_column(regclass, text) IS
  'internal: whether the current user may SELECT column col of rel (NULL col: true; a column that no longer exists: SELECT on rel)';

-- whether role r may read the columns a metric reads (for a ratio, those of both parts)
CREATE OR REPLACE FUNCTION experiment.role_may_read_metric(r regrole, metric text) RETURNS boolean
  LANGUAGE sql STABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
  SELECT coalesce(bool_and(p.source IS NOT NULL
                           AND experiment.role_may_read_column(r, p.source, p.unit_column)
                           AND experiment.role_may_read_column(r, p.source, p.time_column)
                           AND experiment.role_may_read_column(r, p.source, p.value_column)), false)
  FROM experiment.metrics m
  JOIN experiment.metrics p ON p.name IN (m.name, m.numerator, m.denominator) AND p.kind <> 'ratio'
  WHERE m.name = role_may_read_metric.metric
$$;

COMMENT ON FUNCTION experiment.role_may_read_metric(regrole, text) IS
  'internal: whether role r may SELECT the columns a metric reads from its source (for a ratio, from both parts)';

-- a metric's results are as secret as its source: visible to roles that may read the
-- columns the metric reads (an experiment's owner role may add only metrics it may read)
CREATE OR REPLACE FUNCTION experiment.may_read_metric(metric text) RETURNS boolean
  LANGUAGE sql STABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
  SELECT experiment.role_may_read_metric(experiment.current_regrole(), metric)
$$;

COMMENT ON FUNCTION experiment.may_read_metric(text) IS
  'whether the current user may see the results of a metric: it may SELECT the columns the metric reads from its source (for a ratio, from the sources of both parts)';

ALTER TABLE experiment.variant_stats ADD COLUMN skipped_values bigint NOT NULL DEFAULT 0;

COMMENT ON COLUMN experiment.variant_stats.skipped_values IS
  'source values of the variant''s units that were NaN or infinite and were left out of the per-unit values (no measurement)';

-- N* of an experiment's sequential analysis: as registered, else the planned sample (target
-- units per variant times the variants), else 5000 (GrowthBook's default)
CREATE OR REPLACE FUNCTION experiment.sequential_tuning_of(e experiment.experiments) RETURNS float8
  LANGUAGE sql STABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
  -- (NULL rather than NaN or infinity for a row that the registry's checks would refuse)
  SELECT CASE WHEN s.n > 0 AND s.n < 'Infinity'::float8 THEN s.n END
  FROM (SELECT coalesce(e.sequential_tuning,
                        e.target_units_per_variant * (SELECT count(*) FROM experiment.variants v
                                                      WHERE v.experiment_id = e.id),
                        5000)::float8 AS n) s
$$;

-- SQL of a per-unit value column (v<i> or p<i> of exp_vals), capped when a cap is given
CREATE OR REPLACE FUNCTION experiment.capped_sql(prefix text, i integer, cap float8) RETURNS text
  LANGUAGE sql IMMUTABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
  -- a NaN or infinite cap caps nothing (least(v, 'NaN') is v as well)
  SELECT CASE WHEN cap IS NULL OR cap IN ('NaN'::float8, 'Infinity'::float8) THEN format('v.%s%s', prefix, i)
              ELSE format('least(v.%s%s, %L::float8)', prefix, i, cap) END
$$;

-- per-unit values of the metrics reading one source, in one scan (src/unit_values.c)
CREATE OR REPLACE FUNCTION experiment.source_unit_values(
    unit_ids text[], variants text[], t0s timestamptz[], source regclass, unit_column text,
    time_columns text[], value_columns text[], aggregations text[], lo_offsets interval[],
    hi_offsets interval[], use_end boolean[], end_at timestamptz, scan_from timestamptz, scan_to timestamptz,
    reader regrole DEFAULT NULL)
  RETURNS TABLE (unit_id text, variant text, vals float8[], skipped bigint[])
  AS 'MODULE_PATHNAME', 'exp_source_unit_values'
  LANGUAGE C STABLE PARALLEL SAFE;

COMMENT ON FUNCTION experiment.source_unit_values(text[], text[], timestamptz[], regclass, text, text[], text[], text[],
    interval[], interval[], boolean[], timestamptz, timestamptz, timestamptz, regrole) IS
  'internal: one row per unit (unit_ids, variants, t0s) with vals[k] = aggregations[k] (sum, count, any, max) of '
  'value_columns[k] (NULL: rows) over the unit''s events in source with time_columns[k] in '
  '[t0 + lo_offsets[k], t0 + hi_offsets[k]) and, when use_end[k], before end_at; 0 without events; '
  'NaN and infinite values are not aggregated and counted in skipped[k]; '
  'scan_from/scan_to bound the scan when all specs read one time column; reads source as role reader '
  '(NULL: the current user, who must have its privileges) in a security-restricted operation';

CREATE OR REPLACE FUNCTION experiment.timestamptz_add_clamped(t timestamptz, i interval) RETURNS timestamptz
  AS 'MODULE_PATHNAME', 'exp_timestamptz_add_clamped_sql'
  LANGUAGE C STABLE STRICT PARALLEL SAFE;

COMMENT ON FUNCTION experiment.timestamptz_add_clamped(timestamptz, interval) IS
  'internal: t + i, or -infinity / infinity where the sum leaves the range of timestamptz (windows of any length)';

-- the per-unit values of an experiment's metrics, as refresh and aa_test read them: temporary
-- tables exp_units (the analysed units: first variant and exposure), exp_base (the base
-- metrics, numbered i) and, when keep or a metric is winsorized, exp_vals (unit_id, variant,
-- v<i> = the value of base metric i, p<i> = its pre-period value); vals_from is exp_vals or
-- the query that computes it; caps are the pooled winsorization caps of v<i> and p<i>
CREATE OR REPLACE FUNCTION experiment.prepare_unit_values(e experiment.experiments, keep boolean, as_owner boolean,
    OUT vals_from text, OUT caps float8[], OUT pre_caps float8[], OUT nmulti bigint, OUT nunits bigint,
    OUT nearly bigint, OUT min_t0 timestamptz, OUT max_t0 timestamptz)
  LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
DECLARE
  src regclass;
  ucol text;
  rdr regrole;
  sk text;
  src_no integer := 0;
  m experiment.metrics;
  tcol text;
  lower_bound timestamptz;
  upper_bound timestamptz;
  need_upper boolean;
  lb timestamptz;
  joins text := '';
  vals_sql text;
  vals_cols text := '';
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
         count(*) FILTER (WHERE NOT u.multi AND u.t0 < e.start_at),
         pg_catalog.min(u.t0) FILTER (WHERE NOT u.multi), pg_catalog.max(u.t0) FILTER (WHERE NOT u.multi)
    INTO nmulti, nunits, nearly, min_t0, max_t0
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
  -- each source is read as the metric's owner (refresh) or as the current user (aa_test)
  FOR src, ucol, rdr IN SELECT DISTINCT m2.source, m2.unit_column, CASE WHEN as_owner THEN m2.owner END
                        FROM exp_base b JOIN experiment.metrics m2 ON m2.name = b.name ORDER BY 1, 2, 3 LOOP
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
             WHERE m2.source = src AND m2.unit_column = ucol AND (NOT as_owner OR m2.owner = rdr) ORDER BY b.i LOOP
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
      sk := format('coalesce(x%s.skipped[%s], 0)', src_no, k);
      lb := experiment.timestamptz_add_clamped(min_t0, m.delay);
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
        sk := sk || format(' + coalesce(x%s.skipped[%s], 0)', src_no, k);
        lb := experiment.timestamptz_add_clamped(min_t0, - m.cuped_lookback);
      END IF;
      -- NaN and infinite source values, not aggregated: counted per unit
      vals_cols := vals_cols || format(', %s AS s%s', sk, r.i);
      lower_bound := least(lower_bound, lb);
      IF e.end_at IS NOT NULL THEN
        upper_bound := greatest(upper_bound, e.end_at);
      ELSIF m."window" IS NOT NULL THEN
        upper_bound := greatest(upper_bound,
                                experiment.timestamptz_add_clamped(experiment.timestamptz_add_clamped(max_t0, m.delay), m."window"));
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
      '%L::interval[], %L::interval[], %L::boolean[], %L::timestamptz, %L::timestamptz, %L::timestamptz, %L::regrole) x%s%s',
      CASE WHEN src_no = 1 THEN ',' ELSE ' JOIN' END,
      src, ucol, tcols, vcols, aggs_a, los, his, ends, e.end_at, lower_bound, upper_bound, rdr,
      src_no, CASE WHEN src_no = 1 THEN '' ELSE format(' ON x%s.unit_id = x1.unit_id', src_no) END);
  END LOOP;

  -- per-unit values, zero-filled: one statement, one scan of each source
  IF src_no = 0 THEN
    vals_sql := 'SELECT u.unit_id, u.variant FROM pg_temp.exp_units u';
  ELSE
    vals_sql := format('SELECT x1.unit_id, x1.variant%s FROM (SELECT coalesce(pg_catalog.array_agg(u.unit_id), ''{}'') AS ids, '
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
  IF need_upper OR keep THEN
    EXECUTE 'CREATE TEMP TABLE exp_vals ON COMMIT DROP AS ' || vals_sql;
    EXECUTE format('SELECT ARRAY[%s]::float8[], ARRAY[%s]::float8[] FROM pg_temp.exp_vals', cap_v_sql, cap_p_sql)
      INTO caps, pre_caps;
    vals_from := 'pg_temp.exp_vals';
  ELSE
    vals_from := '(' || vals_sql || ')';
  END IF;

END
$$;

COMMENT ON FUNCTION experiment.prepare_unit_values(experiment.experiments, boolean, boolean) IS
  'internal: the temporary tables of per-unit values that experiment.refresh() and experiment.aa_test() read, and the winsorization caps';

CREATE OR REPLACE FUNCTION experiment.refresh(experiment_id text) RETURNS void
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
  caps float8[];
  pre_caps float8[];
  unpivot text := '';
  r record;
  k integer;
  prep record;
BEGIN
  e := experiment.require_experiment(refresh.experiment_id);
  -- one refresh of an experiment at a time
  PERFORM pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('experiment.refresh:' || e.id));

  PERFORM experiment.validate_experiment_metrics(e.id);
  SELECT v.name INTO control FROM experiment.variants v WHERE v.experiment_id = e.id AND v.is_control;
  IF control IS NULL THEN
    RAISE EXCEPTION 'experiment "%" has no control variant', e.id
      USING ERRCODE = '22023', HINT = 'Set is_control on one row of experiment.variants.';
  END IF;

  SELECT * INTO prep FROM experiment.prepare_unit_values(e, false, true);
  vals_from := prep.vals_from;
  caps := prep.caps;
  pre_caps := prep.pre_caps;
  nmulti := prep.nmulti;
  nunits := prep.nunits;
  nearly := prep.nearly;
  min_t0 := prep.min_t0;
  max_t0 := prep.max_t0;

  -- the stored state is replaced as a whole; in a REPEATABLE READ or SERIALIZABLE transaction
  -- whose snapshot predates another refresh's commit the rows to replace are invisible, and
  -- the conflict surfaces as a unique violation: reported as the serialization failure it is
  BEGIN
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
        aggs := aggs || format(', experiment.moments(%s, %s) AS a%s, pg_catalog.sum(v.s%s + v.s%s) AS k%s',
                               experiment.capped_sql('v', r.ni, caps[r.ni]), experiment.capped_sql('v', r.di, caps[r.di]), r.j,
                               r.ni, r.di, r.j);
        unpivot := unpivot || format(', (%L, a.a%s, NULL::experiment.moments, NULL::float8, a.k%s)', r.name, r.j, r.j);
      ELSE
        aggs := aggs || format(', experiment.moments(%s) AS a%s, pg_catalog.sum(v.s%s) AS k%s',
                               experiment.capped_sql('v', r.i, caps[r.i]), r.j, r.i, r.j);
        IF r.pre THEN
          aggs := aggs || format(', experiment.moments(%s, %s) AS c%s', experiment.capped_sql('v', r.i, caps[r.i]),
                                 experiment.capped_sql('p', r.i, pre_caps[r.i]), r.j);
        END IF;
        unpivot := unpivot || format(', (%L, a.a%s, %s, %L::float8, a.k%s)', r.name, r.j,
                                     CASE WHEN r.pre THEN format('a.c%s', r.j) ELSE 'NULL::experiment.moments' END,
                                     caps[r.i], r.j);
      END IF;
    END LOOP;

    -- per-variant moments of every metric in one pass over the per-unit values
    IF unpivot <> '' THEN
      EXECUTE format(
        'INSERT INTO experiment.variant_stats (experiment_id, metric, variant, units, moments, cuped_moments, cap, '
        'skipped_values, refreshed_at) '
        'SELECT %L, k.metric, a.variant, a.units, k.m, k.c, k.cap, k.skipped, %L '
        'FROM (SELECT v.variant, count(*) AS units%s FROM %s v GROUP BY v.variant) a '
        'CROSS JOIN LATERAL (VALUES %s) AS k(metric, m, c, cap, skipped)',
        e.id, ts, aggs, vals_from, substr(unpivot, 3));
    END IF;

    INSERT INTO experiment.enrollment (experiment_id, variant, units, refreshed_at)
    SELECT e.id, v.name, coalesce(c.units, 0), ts
    FROM experiment.variants v
    LEFT JOIN (SELECT u.variant, count(*) AS units FROM pg_temp.exp_units u GROUP BY u.variant) c
      ON c.variant = v.name
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

    INSERT INTO experiment.refreshes AS f
      (experiment_id, refreshed_at, duration, enrolled_units, multi_variant_units, early_units,
       first_exposure, last_exposure, exposures_by_day, error, error_at)
    SELECT e.id, ts, clock_timestamp() - started, nunits, nmulti, nearly, min_t0, max_t0,
           (SELECT coalesce(jsonb_agg(jsonb_build_object('day', d.day, 'units', d.units) ORDER BY d.day), '[]')
            FROM (SELECT (u.t0 AT TIME ZONE 'UTC')::date AS day, count(*) AS units
                  FROM pg_temp.exp_units u GROUP BY 1) d),
           NULL, NULL
    ON CONFLICT ON CONSTRAINT refreshes_pkey DO UPDATE SET
      refreshed_at = excluded.refreshed_at, duration = excluded.duration,
      enrolled_units = excluded.enrolled_units, multi_variant_units = excluded.multi_variant_units,
      early_units = excluded.early_units,
      first_exposure = excluded.first_exposure, last_exposure = excluded.last_exposure,
      exposures_by_day = excluded.exposures_by_day, error = NULL, error_at = NULL;
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
                  (SELECT bd.i FROM pg_temp.exp_base bd WHERE bd.name = m2.denominator) AS di
           FROM experiment.experiment_metrics em JOIN experiment.metrics m2 ON m2.name = em.metric
           LEFT JOIN pg_temp.exp_base b ON b.name = m2.name
           WHERE em.experiment_id = e.id ORDER BY m2.name LOOP
    j := j + 1;
    IF r.kind = 'ratio' THEN
      aggs := aggs || format(', experiment.moments(%s, %s) AS a%s, NULL::experiment.moments AS c%s',
                             experiment.capped_sql('v', r.ni, prep.caps[r.ni]), experiment.capped_sql('v', r.di, prep.caps[r.di]), j, j);
    ELSE
      aggs := aggs || format(', experiment.moments(%s) AS a%s, %s AS c%s',
                             experiment.capped_sql('v', r.i, prep.caps[r.i]), j,
                             CASE WHEN r.pre THEN format('experiment.moments(%s, %s)', experiment.capped_sql('v', r.i, prep.caps[r.i]),
                                                        experiment.capped_sql('p', r.i, prep.pre_caps[r.i]))
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
       (s.bayes).ci_upper AS lift_posterior_upper
FROM s
WHERE experiment.may_read_metric(s.metric);

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
       sk.n AS skipped_source_values
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
-- (of the metrics the reader may read: the view reads variant_stats with its owner's rights)
LEFT JOIN (SELECT vs.experiment_id, pg_catalog.sum(vs.skipped_values)::bigint AS n FROM experiment.variant_stats vs
           WHERE experiment.may_read_metric(vs.metric)
           GROUP BY vs.experiment_id) sk ON sk.experiment_id = ex.id;

COMMENT ON VIEW experiment.health IS
  'per experiment: latest refresh, units in several variants (flagged above 1%), SRM, days run against the minimum runtime, units against the target, quarantined exposures, new units per day, units exposed before the start, exposures stored since the refresh (stale: more than 1% of the units, or any once the experiment stopped), source values skipped as NaN or infinite';

CREATE OR REPLACE FUNCTION experiment.format_signed(x float8, suffix text DEFAULT '', scale float8 DEFAULT 1, decimals integer DEFAULT NULL)
  RETURNS text
  LANGUAGE sql IMMUTABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
  -- x * scale in numeric: in float8 it overflows (1e307 * 100) or underflows
  SELECT CASE
    WHEN x IS NULL AND suffix = '%' THEN NULL   -- an undefined lift is left out
    WHEN x IS NULL THEN 'n/a'
    WHEN x = 'NaN'::float8 THEN 'n/a'
    WHEN abs(x) = 'Infinity'::float8 THEN CASE WHEN x > 0 THEN '+' ELSE '-' END || 'Infinity' || suffix
    -- rounded to 3 significant digits first: numeric to_char would print 9.999e16 as 10.00e+16
    WHEN abs(v) >= 1e15 THEN CASE WHEN v > 0 THEN '+' ELSE '' END
                             || btrim(to_char(round(v, 2 - floor(log(abs(v)))::integer), '9.99EEEE')) || suffix
    WHEN decimals IS NULL THEN CASE WHEN v >= 0 THEN '+' ELSE '' END || experiment.format_number(v::float8) || suffix
    ELSE CASE WHEN round(v, decimals) >= 0 THEN '+' ELSE '' END
         || to_char(round(v, decimals),
                    'FM999,999,999,999,990' || CASE WHEN decimals > 0 THEN '.' || repeat('0', decimals) ELSE '' END)
         || suffix
  END
  FROM (SELECT CASE WHEN abs(x) < 'Infinity'::float8 THEN x::numeric * scale::numeric END AS v) s
$$;

CREATE OR REPLACE FUNCTION experiment.format_p(p float8, with_label boolean DEFAULT true) RETURNS text
  LANGUAGE sql IMMUTABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
  SELECT CASE WHEN with_label THEN 'p ' ELSE '' END || CASE
    WHEN p IS NULL OR p = 'NaN'::float8 THEN CASE WHEN with_label THEN '= ' ELSE '' END || 'n/a'
    WHEN p < 0.001 THEN '< 0.001'
    WHEN p < 0.01 THEN CASE WHEN with_label THEN '= ' ELSE '' END || to_char(round(p::numeric, 3), 'FM0.000')
    -- three significant digits, so that 0.0496 and 0.0504 do not both print as 0.050
    WHEN p < 0.1 THEN CASE WHEN with_label THEN '= ' ELSE '' END || to_char(round(p::numeric, 4), 'FM0.0000')
    ELSE CASE WHEN with_label THEN '= ' ELSE '' END || to_char(round(p::numeric, 2), 'FM0.00')
  END
$$;

-- a share as a percentage with one decimal, without sign: 0.0512 -> 5.1
CREATE OR REPLACE FUNCTION experiment.format_percent(x float8) RETURNS text
  LANGUAGE sql IMMUTABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
  SELECT CASE WHEN abs(v) >= 1e15 THEN btrim(to_char(round(v, 2 - floor(log(abs(v)))::integer), '9.99EEEE'))
              ELSE to_char(round(v, 1), 'FM999,999,999,999,990.0') END
  FROM (SELECT CASE WHEN abs(x) < 'Infinity'::float8 THEN x::numeric * 100 END AS v) s
$$;

-- the difference of a result and its interval, in one unit and to one number of decimals:
-- percentage points to 2 significant digits for proportions, else 4 significant digits
CREATE OR REPLACE FUNCTION experiment.format_diff(kind text, diff float8, diff_lower float8, diff_upper float8,
                                       OUT diff_text text, OUT lower_text text, OUT upper_text text)
  LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
DECLARE
  pp boolean := kind = 'proportion';
  scale float8 := CASE WHEN pp THEN 100 ELSE 1 END;
  suffix text := CASE WHEN pp THEN 'pp' ELSE '' END;
  dec integer := CASE WHEN pp
    -- beyond 1e300 the values print in scientific notation, and * 100 could overflow
    THEN greatest(1, experiment.format_decimals(
           ARRAY(SELECT v * 100 FROM unnest(ARRAY[diff, diff_lower, diff_upper]) v WHERE abs(v) < 1e300), 2))
    ELSE experiment.format_decimals(ARRAY[diff, diff_lower, diff_upper], 4) END;
BEGIN
  diff_text := experiment.format_signed(diff, suffix, scale, dec);
  lower_text := experiment.format_signed(diff_lower, suffix, scale, dec);
  upper_text := experiment.format_signed(diff_upper, suffix, scale, dec);
END
$$;

CREATE OR REPLACE FUNCTION experiment.readout_metric_line(r experiment.results, control_label text, treatment_label text)
  RETURNS text
  LANGUAGE sql IMMUTABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
  SELECT format('%s: %s   %s: %s   Lift: %s   %s   %s',
    control_label, experiment.format_number(r.mean_control),
    treatment_label, experiment.format_number(r.mean_treatment),
    experiment.format_effect(r),
    CASE WHEN r.analysis = 'bayesian' AND r.lift_posterior IS NOT NULL
         -- the posterior of the lift, which the chance to win describes
         THEN format('posterior lift %s [%s, %s]', experiment.format_signed(r.lift_posterior, '%', 100, 1),
                     experiment.format_signed(r.lift_posterior_lower, '%', 100, 1),
                     experiment.format_signed(r.lift_posterior_upper, '%', 100, 1))
         ELSE format('%s CI [%s, %s]',
                     CASE WHEN r.alpha > 0 AND r.alpha < 1   -- (NaN is above every number)
                          THEN rtrim(rtrim(to_char(round(((1 - r.alpha) * 100)::numeric, 2), 'FM990.00'), '0'), '.') || '%'
                          ELSE 'n/a' END,
                     d.lower_text, d.upper_text) END,
    experiment.format_evidence(r))
  FROM experiment.format_diff(r.kind, r.diff, r.diff_lower, r.diff_upper) d
$$;

-- ===========================================================================
-- The decision
-- ===========================================================================

-- why the decision cannot be made yet, or is invalid: the checks that come before any
-- metric, each with the line the readout prints (see doc/methodology.md, "The decision")
CREATE OR REPLACE FUNCTION experiment.decision_blockers(experiment_id text)
  RETURNS TABLE (decision text, reason text)
  LANGUAGE plpgsql STABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
DECLARE
  ex experiment.experiments;
  h experiment.health;
  r record;
BEGIN
  ex := experiment.require_experiment(decision_blockers.experiment_id);
  SELECT * INTO h FROM experiment.health h0 WHERE h0.experiment_id = ex.id;
  IF h.refreshed_at IS NULL THEN
    RETURN QUERY SELECT 'KEEP RUNNING'::text,
      format('not refreshed yet: run SELECT experiment.refresh(%L)', ex.id);
    RETURN;
  END IF;
  IF h.refresh_error IS NOT NULL AND h.refresh_error_at > h.refreshed_at THEN
    RETURN QUERY SELECT 'KEEP RUNNING'::text,
      format('the latest refresh failed: %s', h.refresh_error);
  END IF;
  IF NOT EXISTS (SELECT 1 FROM experiment.experiment_metrics em
                 WHERE em.experiment_id = ex.id AND em.role = 'primary') THEN
    RETURN QUERY SELECT 'KEEP RUNNING'::text,
      'no primary metric: add one to experiment.experiment_metrics (role = ''primary'') and refresh'::text;
  END IF;
  IF h.stale THEN
    RETURN QUERY SELECT 'KEEP RUNNING'::text,
      format('%s exposure%s stored after the latest refresh: run SELECT experiment.refresh(%L)',
             experiment.format_count(h.exposures_after_refresh),
             CASE WHEN h.exposures_after_refresh = 1 THEN '' ELSE 's' END, ex.id);
  END IF;
  FOR r IN SELECT en.variant, en.units FROM experiment.enrollment en
           JOIN experiment.variants v ON v.experiment_id = en.experiment_id AND v.name = en.variant
           WHERE en.experiment_id = ex.id AND en.units < 2
           ORDER BY NOT v.is_control, en.variant LOOP
    RETURN QUERY SELECT 'KEEP RUNNING'::text,
      format('variant "%s" has %s unit%s; every variant needs at least 2 to be compared',
             r.variant, r.units, CASE WHEN r.units = 1 THEN '' ELSE 's' END);
  END LOOP;
  IF h.early_units > 0 THEN
    RETURN QUERY SELECT 'INVALID'::text,
      format('%s unit%s first exposed before the start (%s): correct start_at or remove those exposures',
             experiment.format_count(h.early_units), CASE WHEN h.early_units = 1 THEN ' was' ELSE 's were' END,
             to_char(ex.start_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI "UTC"'));
  END IF;
  IF h.srm_ok IS FALSE THEN
    RETURN QUERY SELECT 'INVALID'::text,
      format('sample ratio mismatch: SRM %s, below the threshold 0.001', experiment.format_p(h.srm_p_value));
  END IF;
  IF NOT h.runtime_ok THEN
    RETURN QUERY SELECT 'KEEP RUNNING'::text,
      format('%s of %s days run', floor(h.days_run), round(h.min_runtime_days::numeric, 1)::float8);
  END IF;
  IF NOT h.sample_ok THEN
    RETURN QUERY SELECT 'KEEP RUNNING'::text,
      format('%s of %s units per variant', experiment.format_count(coalesce(h.min_units_per_variant, 0)),
             experiment.format_count(h.target_units_per_variant));
  END IF;
  -- the primary metric and the guardrails must be readable by the current user (doc/security.md)
  FOR r IN SELECT em.metric, em.role FROM experiment.experiment_metrics em
           WHERE em.experiment_id = ex.id AND em.role IN ('primary', 'guardrail')
             AND NOT experiment.may_read_metric(em.metric)
           ORDER BY em.role <> 'primary', em.metric LOOP
    RETURN QUERY SELECT 'KEEP RUNNING'::text,
      format('%s metric %s is hidden: role %s may not read its source', r.role, r.metric, current_user);
  END LOOP;
  -- the primary metric and the guardrails must have been computed by the latest refresh
  FOR r IN SELECT em.metric, em.role FROM experiment.experiment_metrics em
           WHERE em.experiment_id = ex.id AND em.role IN ('primary', 'guardrail')
             AND experiment.may_read_metric(em.metric)
             AND NOT EXISTS (SELECT 1 FROM experiment.variant_stats vs
                             WHERE vs.experiment_id = em.experiment_id AND vs.metric = em.metric)
           ORDER BY em.role <> 'primary', em.metric LOOP
    RETURN QUERY SELECT 'KEEP RUNNING'::text,
      format('%s metric %s has no result: it was added after the latest refresh; run SELECT experiment.refresh(%L)',
             r.role, r.metric, ex.id);
  END LOOP;
END
$$;

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
          || CASE (r.res).method WHEN 'cuped' THEN '   (CUPED)' WHEN 'ratio' THEN '   (delta method)' ELSE '' END);
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

-- a conclusion's sources: [{"source": relation oid, "columns": [column name, ...]}, ...]
CREATE OR REPLACE FUNCTION experiment.sources_valid(sources jsonb) RETURNS boolean
  LANGUAGE sql IMMUTABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
  SELECT jsonb_typeof(sources) = 'array'
     AND NOT EXISTS (SELECT 1 FROM jsonb_array_elements(sources) s
                     WHERE NOT (jsonb_typeof(s) = 'object'
                                AND jsonb_typeof(s -> 'source') = 'number'
                                AND (s ->> 'source') ~ '^[0-9]{1,10}$'
                                AND (s ->> 'source')::bigint <= 4294967295
                                AND jsonb_typeof(s -> 'columns') = 'array'
                                AND NOT EXISTS (SELECT 1 FROM jsonb_array_elements(s -> 'columns') c
                                                WHERE jsonb_typeof(c) <> 'string')))
$$;

COMMENT ON FUNCTION experiment.sources_valid(jsonb) IS
  'internal: whether a conclusion''s sources has the form [{"source": oid, "columns": [name, ...]}, ...]';

-- conclusions record the sources their metrics read (from the current definitions for the
-- conclusions recorded before: the best that is known)
ALTER TABLE experiment.conclusions ADD COLUMN sources jsonb NOT NULL DEFAULT '[]';
UPDATE experiment.conclusions k
   SET sources = (SELECT coalesce(jsonb_agg(DISTINCT jsonb_build_object(
                            'source', p.source::oid::bigint,
                            'columns', to_jsonb(array_remove(ARRAY[p.unit_column, p.time_column, p.value_column], NULL)))),
                          '[]')
                    FROM pg_catalog.jsonb_array_elements(k.results) x
                    JOIN experiment.metrics m ON m.name = x ->> 'metric'
                    JOIN experiment.metrics p ON p.name IN (m.name, m.numerator, m.denominator) AND p.kind <> 'ratio');
ALTER TABLE experiment.conclusions ADD CONSTRAINT conclusions_sources_valid CHECK (experiment.sources_valid(sources));

COMMENT ON COLUMN experiment.conclusions.sources IS
  'the source relations (oid) and columns the experiment''s metrics read when it was concluded: who may read them may see the conclusion';

CREATE OR REPLACE FUNCTION experiment.conclude(experiment_id text, decision text, notes text DEFAULT NULL)
  RETURNS experiment.conclusions
  LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
DECLARE
  d text := upper(btrim(decision));
  c experiment.conclusions;
BEGIN
  PERFORM experiment.require_experiment(conclude.experiment_id);
  PERFORM experiment.require_experiment_owner(conclude.experiment_id, 'conclude');
  IF d IS NULL OR d NOT IN ('SHIP', 'DON''T SHIP', 'NO SIGNIFICANT EFFECT', 'INVALID') THEN
    PERFORM experiment.raise_invalid_choice('decision', decision, '{SHIP,DON''T SHIP,NO SIGNIFICANT EFFECT,INVALID}');
  END IF;
  IF NOT EXISTS (SELECT 1 FROM experiment.refreshes f WHERE f.experiment_id = conclude.experiment_id
                 AND f.refreshed_at IS NOT NULL) THEN
    PERFORM experiment.refresh(conclude.experiment_id);
  END IF;
  INSERT INTO experiment.conclusions AS k (experiment_id, decision, notes, recommended_decision, readout,
                                           results, srm, health, refreshed_at, sources)
  SELECT conclude.experiment_id, d, conclude.notes,
         (SELECT dd.decision FROM experiment.decision(conclude.experiment_id) dd),
         experiment.readout(conclude.experiment_id),
         (SELECT coalesce(jsonb_agg(to_jsonb(rr) ORDER BY rr.metric, rr.variant), '[]')
            FROM experiment.results rr WHERE rr.experiment_id = conclude.experiment_id),
         (SELECT coalesce(jsonb_agg(to_jsonb(s) ORDER BY s.variant), '[]')
            FROM experiment.srm s WHERE s.experiment_id = conclude.experiment_id),
         (SELECT to_jsonb(h) FROM experiment.health h WHERE h.experiment_id = conclude.experiment_id),
         (SELECT f.refreshed_at FROM experiment.refreshes f WHERE f.experiment_id = conclude.experiment_id),
         (SELECT coalesce(jsonb_agg(DISTINCT jsonb_build_object(
                            'source', p.source::oid::bigint,
                            'columns', to_jsonb(array_remove(ARRAY[p.unit_column, p.time_column, p.value_column], NULL)))),
                          '[]')
            FROM experiment.experiment_metrics em
            JOIN experiment.metrics m ON m.name = em.metric
            JOIN experiment.metrics p ON p.name IN (m.name, m.numerator, m.denominator) AND p.kind <> 'ratio'
           WHERE em.experiment_id = conclude.experiment_id AND experiment.may_read_metric(m.name))
  RETURNING * INTO c;
  UPDATE experiment.experiments e1 SET status = 'concluded'
   WHERE e1.id = conclude.experiment_id AND e1.status IS DISTINCT FROM 'concluded';
  RETURN c;
END
$$;

-- row-level security: results, per-variant moments and recorded conclusions of metrics the
-- reader may not read are not visible (superusers and the extension's owner see everything);
-- only refresh() writes results
ALTER TABLE experiment.metric_results ENABLE ROW LEVEL SECURITY;

CREATE POLICY metric_results_readable ON experiment.metric_results FOR SELECT
  USING (experiment.may_read_metric(metric));

COMMENT ON POLICY metric_results_readable ON experiment.metric_results IS
  'a role sees the tests of the metrics whose sources it may read';

ALTER TABLE experiment.variant_stats ENABLE ROW LEVEL SECURITY;

CREATE POLICY variant_stats_readable ON experiment.variant_stats FOR SELECT
  USING (experiment.may_read_metric(metric));

COMMENT ON POLICY variant_stats_readable ON experiment.variant_stats IS
  'a role sees the per-variant moments of the metrics whose sources it may read';

ALTER TABLE experiment.conclusions ENABLE ROW LEVEL SECURITY;

CREATE OR REPLACE FUNCTION experiment.may_read_sources(sources jsonb) RETURNS boolean
  LANGUAGE sql STABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
  SELECT NOT EXISTS (SELECT 1 FROM pg_catalog.jsonb_array_elements(sources) s,
                                   pg_catalog.jsonb_array_elements_text(s -> 'columns') c
                     WHERE NOT experiment.may_read_column((s ->> 'source')::oid::regclass, c))
$$;

COMMENT ON FUNCTION experiment.may_read_sources(jsonb) IS
  'internal: whether the current user may SELECT every column of a conclusion''s sources';

CREATE POLICY conclusions_readable ON experiment.conclusions FOR SELECT
  USING (experiment.may_read_sources(sources));

COMMENT ON POLICY conclusions_readable ON experiment.conclusions IS
  'a role sees a recorded conclusion when it may read every source column its metrics read when it was recorded';

CREATE POLICY conclusions_insert ON experiment.conclusions FOR INSERT
  WITH CHECK (concluded_by = current_user AND concluded_at = pg_catalog.now()
              AND pg_catalog.pg_has_role(current_user,
                                         (SELECT x.owner_role FROM experiment.experiments x WHERE x.id = experiment_id),
                                         'MEMBER'));

COMMENT ON POLICY conclusions_insert ON experiment.conclusions IS
  'roles granted INSERT (experiment_analyst) record conclusions of their own experiments, in their own name and at the time they record them, as experiment.conclude() does';

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
  RETURN NULL;
END
$$;

COMMENT ON FUNCTION experiment.metrics_forget_results() IS
  'internal: trigger: deletes the stored results of a metric (and of ratios of it) that is deleted, renamed or changes what it reads';

REVOKE EXECUTE ON FUNCTION experiment.metrics_forget_results() FROM PUBLIC;

CREATE OR REPLACE TRIGGER metrics_forget_results AFTER UPDATE OR DELETE ON experiment.metrics
  FOR EACH ROW EXECUTE FUNCTION experiment.metrics_forget_results();

COMMENT ON TRIGGER metrics_forget_results ON experiment.metrics IS
  'a deleted or renamed metric, or one that reads another source, columns or owner, loses its stored results';

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
  RETURN NULL;
END
$$;

COMMENT ON FUNCTION experiment.experiment_metrics_forget_results() IS
  'internal: trigger: deletes the stored results of a metric in an experiment when it is taken out of it';

REVOKE EXECUTE ON FUNCTION experiment.experiment_metrics_forget_results() FROM PUBLIC;

CREATE OR REPLACE TRIGGER experiment_metrics_forget_results AFTER UPDATE OR DELETE ON experiment.experiment_metrics
  FOR EACH ROW EXECUTE FUNCTION experiment.experiment_metrics_forget_results();

COMMENT ON TRIGGER experiment_metrics_forget_results ON experiment.experiment_metrics IS
  'a metric taken out of an experiment loses its stored results there';

CREATE OR REPLACE TRIGGER metrics_forget_results_truncate AFTER TRUNCATE ON experiment.metrics
  FOR EACH STATEMENT EXECUTE FUNCTION experiment.metrics_forget_results();

COMMENT ON TRIGGER metrics_forget_results_truncate ON experiment.metrics IS
  'truncating the catalogue deletes every stored result';

-- refresh reads every source as its metric's owner and writes the results: it runs as the
-- extension's owner, and only roles granted EXECUTE (experiment_analyst, experiment_admin) call it
ALTER FUNCTION experiment.refresh(text) SECURITY DEFINER;

ALTER FUNCTION experiment.refresh_all() SECURITY DEFINER;

REVOKE EXECUTE ON FUNCTION experiment.refresh(text) FROM PUBLIC;

REVOKE EXECUTE ON FUNCTION experiment.refresh_all() FROM PUBLIC;

-- GRANT role TO member, quietly when it is granted already
CREATE OR REPLACE FUNCTION experiment.grant_role_once(role text, member text) RETURNS void
  LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_auth_members a
                 WHERE a.roleid = grant_role_once.role::regrole AND a.member = grant_role_once.member::regrole) THEN
    EXECUTE format('GRANT %I TO %I', grant_role_once.role, grant_role_once.member);
  END IF;
END
$$;

COMMENT ON FUNCTION experiment.grant_role_once(text, text) IS 'internal: GRANT role TO member unless it is granted already';

REVOKE EXECUTE ON FUNCTION experiment.grant_role_once(text, text) FROM PUBLIC;

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
  results text[] := '{enrollment,variant_stats,metric_results,conclusions,results,srm,health}';
  ingestion text[] := '{exposures,exposures_quarantine,exposures_staging}';
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
                first_exposure, last_exposure, exposures_by_day, error_at)
    ON experiment.refreshes TO experiment_reader;

  -- experiment_ingest: the exposure pipeline
  GRANT USAGE ON SCHEMA experiment TO experiment_ingest;
  GRANT SELECT ON experiment.experiments, experiment.variants TO experiment_ingest;
  FOREACH t IN ARRAY ingestion LOOP
    EXECUTE format('GRANT SELECT, INSERT ON experiment.%I TO experiment_ingest', t);
  END LOOP;
  GRANT DELETE ON experiment.exposures_staging TO experiment_ingest;
  GRANT USAGE ON SEQUENCE experiment.exposures_quarantine_id_seq TO experiment_ingest;

  -- experiment_analyst: designs experiments, registers metrics it may read, refreshes, concludes
  PERFORM experiment.grant_role_once('experiment_reader', 'experiment_analyst');
  FOREACH t IN ARRAY registry LOOP
    EXECUTE format('GRANT INSERT, UPDATE, DELETE ON experiment.%I TO experiment_analyst', t);
  END LOOP;
  GRANT SELECT ON experiment.exposures, experiment.exposures_quarantine TO experiment_analyst;
  GRANT INSERT ON experiment.conclusions TO experiment_analyst;
  GRANT USAGE ON SEQUENCE experiment.conclusions_id_seq TO experiment_analyst;
  GRANT EXECUTE ON FUNCTION experiment.refresh(text) TO experiment_analyst;

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
END
$$;

COMMENT ON FUNCTION experiment.setup_roles() IS
  'create (where missing) the roles experiment_reader, experiment_ingest, experiment_analyst and experiment_admin (NOLOGIN) '
  'and grant them their privileges in this database (doc/security.md); run it as a superuser in each database with the extension';

REVOKE EXECUTE ON FUNCTION experiment.setup_roles() FROM PUBLIC;
