-- ---------------------------------------------------------------------------
-- The experiment registry: experiments and their variants, validation,
-- experiment.assign(), switchback assignment, the ruleset for SDKs (with its
-- version and NOTIFY channel) and the GrowthBook features payload.
-- See doc/assignment.md.
-- ---------------------------------------------------------------------------

CREATE TABLE experiment.experiments (
  id text PRIMARY KEY
    CONSTRAINT experiments_id_not_empty CHECK (id <> ''),
  name text,
  hypothesis text,
  owner text,
  status text NOT NULL DEFAULT 'draft'
    CONSTRAINT experiments_status_valid CHECK (status IN ('draft', 'running', 'stopped', 'concluded')),
  salt text NOT NULL
    CONSTRAINT experiments_salt_not_empty CHECK (salt <> ''),
  hash_scheme text NOT NULL DEFAULT 'sha256'
    CONSTRAINT experiments_hash_scheme_valid
    CHECK (hash_scheme IN ('sha256', 'growthbook_v1', 'growthbook_v2', 'eppo', 'statsig')),
  traffic float8 NOT NULL DEFAULT 1
    CONSTRAINT experiments_traffic_in_0_1 CHECK (traffic >= 0 AND traffic <= 1),
  layer text
    CONSTRAINT experiments_layer_not_empty CHECK (layer <> ''),
  layer_start float8,
  layer_end float8,
  targeting jsonb
    CONSTRAINT experiments_targeting_is_object CHECK (pg_catalog.jsonb_typeof(targeting) = 'object'),
  start_at timestamptz,
  end_at timestamptz,
  min_runtime interval
    CONSTRAINT experiments_min_runtime_not_negative CHECK (min_runtime >= interval '0'),
  target_units_per_variant bigint
    CONSTRAINT experiments_target_units_positive CHECK (target_units_per_variant > 0),
  alpha float8 NOT NULL DEFAULT 0.05
    CONSTRAINT experiments_alpha_in_0_1 CHECK (alpha > 0 AND alpha < 1),
  analysis text NOT NULL DEFAULT 'sequential'
    CONSTRAINT experiments_analysis_valid CHECK (analysis IN ('fixed', 'sequential', 'bayesian')),
  sequential_tuning float8
    CONSTRAINT experiments_sequential_tuning_positive CHECK (sequential_tuning > 0),
  correction text NOT NULL DEFAULT 'holm'
    CONSTRAINT experiments_correction_valid CHECK (correction IN ('none', 'holm', 'bh')),
  correction_family text NOT NULL DEFAULT 'experiment'
    CONSTRAINT experiments_correction_family_valid CHECK (correction_family IN ('experiment', 'metric')),
  prior_mean float8 NOT NULL DEFAULT 0,
  prior_variance float8
    CONSTRAINT experiments_prior_variance_positive CHECK (prior_variance > 0),
  ship_threshold float8 NOT NULL DEFAULT 0.95
    CONSTRAINT experiments_ship_threshold_valid CHECK (ship_threshold > 0.5 AND ship_threshold < 1),
  created_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
  updated_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
  owner_role regrole NOT NULL,
  stratify_by text,
  CONSTRAINT experiments_layer_range_valid CHECK (
    (layer IS NULL AND layer_start IS NULL AND layer_end IS NULL)
    OR (layer IS NOT NULL AND layer_start IS NOT NULL AND layer_end IS NOT NULL
        AND layer_start >= 0 AND layer_start < layer_end AND layer_end <= 1)),
  CONSTRAINT experiments_end_after_start CHECK (end_at >= start_at)
);
COMMENT ON TABLE experiment.experiments IS
  'The experiment registry: one row per experiment (status, salt, hash scheme, traffic, layer range, targeting, analysis settings)';
COMMENT ON COLUMN experiment.experiments.owner_role IS
  'the role whose members may change the experiment, its variants and its metrics (default: the role that creates it; doc/security.md)';
COMMENT ON COLUMN experiment.experiments.status IS
  'draft -> running <-> stopped -> concluded; only running experiments assign units';
COMMENT ON COLUMN experiment.experiments.salt IS
  'hashing salt (GrowthBook: seed); defaults to the id; frozen once the experiment leaves draft';
COMMENT ON COLUMN experiment.experiments.hash_scheme IS
  'sha256, growthbook_v1, growthbook_v2, eppo or statsig (see experiment.unit_hash); frozen once the experiment leaves draft';
COMMENT ON COLUMN experiment.experiments.traffic IS
  'share of eligible units that enter (GrowthBook: coverage); may only grow once the experiment leaves draft (ramp-safe)';
COMMENT ON COLUMN experiment.experiments.layer IS
  'layer (GrowthBook: namespace) whose range [layer_start, layer_end) the experiment owns; experiments of one layer are mutually exclusive';
COMMENT ON COLUMN experiment.experiments.targeting IS
  'GrowthBook condition (experiment.eval_condition) the unit''s attributes must pass; NULL = everyone';
COMMENT ON COLUMN experiment.experiments.min_runtime IS 'minimum runtime before a decision (analysis)';
COMMENT ON COLUMN experiment.experiments.target_units_per_variant IS 'planned sample size per variant (analysis)';
COMMENT ON COLUMN experiment.experiments.alpha IS 'significance level of the analysis';
COMMENT ON COLUMN experiment.experiments.analysis IS
  'sequential (default: always-valid confidence sequences, safe to look at any time), fixed (fixed-horizon tests: look once, at the end) or bayesian (Gaussian posterior, chance to win and risk); frozen once the experiment leaves draft';
COMMENT ON COLUMN experiment.experiments.sequential_tuning IS
  'N* of the sequential analysis, the expected total sample size; NULL: target_units_per_variant times the number of variants, else 5000';
COMMENT ON COLUMN experiment.experiments.correction IS
  'multiple-testing correction of the secondary metrics (and of the primary metric across treatment arms): holm (default), bh or none';
COMMENT ON COLUMN experiment.experiments.correction_family IS
  'what one correction covers: experiment (every secondary metric and arm together, default) or metric (each secondary metric across arms)';
COMMENT ON COLUMN experiment.experiments.prior_mean IS 'Bayesian analysis: prior mean of the relative lift';
COMMENT ON COLUMN experiment.experiments.prior_variance IS 'Bayesian analysis: prior variance of the relative lift; NULL = flat (improper) prior';
COMMENT ON COLUMN experiment.experiments.stratify_by IS
  'the dimension (a name in experiment.dimensions) whose values are the strata of post-stratification; NULL: none (doc/analysis.md, "Dimension breakdowns")';
COMMENT ON COLUMN experiment.experiments.ship_threshold IS
  'Bayesian analysis: chance to win at or above which the primary metric counts as better (at or below 1 - it, as worse)';

CREATE TABLE experiment.variants (
  experiment_id text NOT NULL REFERENCES experiment.experiments (id) ON DELETE CASCADE,
  name text NOT NULL
    CONSTRAINT variants_name_not_empty CHECK (name <> ''),
  allocation float8 NOT NULL
    CONSTRAINT variants_allocation_in_0_1 CHECK (allocation >= 0 AND allocation <= 1),
  config jsonb,
  is_control boolean NOT NULL DEFAULT false,
  PRIMARY KEY (experiment_id, name)
);
COMMENT ON TABLE experiment.variants IS
  'Variants of each experiment: share of the entering units (allocations sum to 1), configuration, which one is the control';
COMMENT ON COLUMN experiment.variants.allocation IS
  'share of the experiment''s entering units; the allocations of an experiment sum to 1';
COMMENT ON COLUMN experiment.variants.config IS
  'what the variant does (the feature value in the GrowthBook payload); may change while running';

SELECT pg_catalog.pg_extension_config_dump('experiment.experiments', '');
SELECT pg_catalog.pg_extension_config_dump('experiment.variants', '');

-- ---------------------------------------------------------------------------
-- Errors that name what was wrong: one wording and SQLSTATE 22023 for each
-- kind of mistake (see doc/analysis.md, "Errors")
-- ---------------------------------------------------------------------------

-- at most 10 values of a list for a HINT, and how many more there are
CREATE FUNCTION experiment.hint_list(items text[], what text, look_in text) RETURNS text
  LANGUAGE sql IMMUTABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
  SELECT CASE
    WHEN coalesce(cardinality(items), 0) = 0 THEN format('There are no %s yet (see %s).', what, look_in)
    WHEN cardinality(items) <= 10 THEN format('The %s are: %s.', what, array_to_string(items, ', '))
    ELSE format('The %s are listed in %s (%s of them).', what, look_in, cardinality(items))
  END
$$;
COMMENT ON FUNCTION experiment.hint_list(text[], text, text) IS
  'internal: the HINT of an unknown-name error: the allowed names when there are at most 10, else where to look';

CREATE FUNCTION experiment.require_experiment(experiment_id text) RETURNS experiment.experiments
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
COMMENT ON FUNCTION experiment.require_experiment(text) IS
  'internal: the registry row of an experiment, or the error ''experiment "x" does not exist'' (22023) with the known ids as HINT';

-- only members of an experiment's owner role change it, its variants and its metrics
CREATE FUNCTION experiment.require_experiment_owner(experiment_id text, action text) RETURNS void
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

CREATE FUNCTION experiment.require_variant(experiment_id text, variant text) RETURNS void
  LANGUAGE plpgsql STABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM experiment.variants v
                 WHERE v.experiment_id = require_variant.experiment_id AND v.name = require_variant.variant) THEN
    PERFORM experiment.require_experiment(experiment_id);
    RAISE EXCEPTION 'variant "%" does not exist in experiment "%"', coalesce(left(variant, 200), 'NULL'), experiment_id
      USING ERRCODE = 'invalid_parameter_value',
            HINT = experiment.hint_list(ARRAY(SELECT v.name FROM experiment.variants v
                                              WHERE v.experiment_id = require_variant.experiment_id
                                              ORDER BY v.is_control DESC, v.name COLLATE "C"),
                                        format('variants of experiment "%s"', experiment_id), 'experiment.variants');
  END IF;
END
$$;
COMMENT ON FUNCTION experiment.require_variant(text, text) IS
  'internal: nothing, or the error ''variant "v" does not exist in experiment "x"'' (22023) with the experiment''s variants as HINT';

-- an invalid value of a setting that takes one of a list of words
CREATE FUNCTION experiment.raise_invalid_choice(what text, value text, allowed text[], owner text DEFAULT NULL)
  RETURNS void
  LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
BEGIN
  RAISE EXCEPTION 'invalid % %', what, coalesce('"' || left(value, 200) || '"', 'NULL') || coalesce(' of ' || owner, '')
    USING ERRCODE = 'invalid_parameter_value',
          HINT = 'Use ' || CASE WHEN cardinality(allowed) = 1 THEN allowed[1]
                               ELSE array_to_string(allowed[1:cardinality(allowed) - 1], ', ')
                                    || ' or ' || allowed[cardinality(allowed)] END || '.';
END
$$;
COMMENT ON FUNCTION experiment.raise_invalid_choice(text, text, text[], text) IS
  'internal: raise ''invalid <what> "<value>" [of <owner>]'' (22023) with a HINT listing the allowed values';

-- an invalid value of a setting with a range
CREATE FUNCTION experiment.raise_invalid_value(what text, value text, allowed text) RETURNS void
  LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
BEGIN
  RAISE EXCEPTION '% must be %, got %', what, allowed, coalesce(left(value, 200), 'NULL')
    USING ERRCODE = 'invalid_parameter_value';
END
$$;
COMMENT ON FUNCTION experiment.raise_invalid_value(text, text, text) IS
  'internal: raise ''<what> must be <allowed>, got <value>'' (22023), the wording of every range check';

-- ---------------------------------------------------------------------------
-- Validation
-- ---------------------------------------------------------------------------

-- The split of an experiment: names and allocations in range order (the
-- control first, then the other variants by name in byte order).
CREATE FUNCTION experiment.split(experiment_id text, OUT names text[], OUT allocations float8[])
  LANGUAGE sql STABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
  SELECT pg_catalog.array_agg(v.name ORDER BY v.is_control DESC, v.name COLLATE "C"),
         pg_catalog.array_agg(v.allocation ORDER BY v.is_control DESC, v.name COLLATE "C")
    FROM experiment.variants v
   WHERE v.experiment_id = split.experiment_id
$$;
COMMENT ON FUNCTION experiment.split(text) IS
  'variant names and allocations of an experiment in range order: the control first, then the others by name (byte order)';

-- Raise an error unless the variants of the experiment form a valid split.
CREATE FUNCTION experiment.check_split(experiment_id text) RETURNS void
  LANGUAGE plpgsql STABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
DECLARE
  n bigint;
  controls bigint;
  total float8;
BEGIN
  SELECT count(*), count(*) FILTER (WHERE v.is_control), coalesce(sum(v.allocation), 0)
    INTO n, controls, total
    FROM experiment.variants v
   WHERE v.experiment_id = check_split.experiment_id;
  IF n < 2 THEN
    RAISE EXCEPTION 'experiment "%" has % variant(s), it needs at least 2', experiment_id, n
      USING ERRCODE = 'invalid_parameter_value',
            HINT = 'Add a control and at least one treatment to experiment.variants.';
  END IF;
  IF controls <> 1 THEN
    RAISE EXCEPTION 'experiment "%" has % control variants, it needs exactly one', experiment_id, controls
      USING ERRCODE = 'invalid_parameter_value',
            HINT = 'Set is_control = true on exactly one of its variants.';
  END IF;
  IF abs(total - 1) > 1e-9 THEN
    RAISE EXCEPTION 'allocations of experiment "%" sum to %, not 1', experiment_id, total
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
END
$$;
COMMENT ON FUNCTION experiment.check_split(text) IS
  'raises an error (22023) unless the experiment has at least 2 variants, exactly one control and allocations summing to 1';

-- Position of a unit in a layer, in [0, 1). GrowthBook schemes use the SDK's
-- namespace hash (FNV-1a v1 of "__" || layer); the others bucket(unit,
-- 'layer:' || layer) / 10000. Independent of every experiment's salt.
CREATE FUNCTION experiment.layer_position(unit_id text, layer text, hash_scheme text DEFAULT 'sha256')
  RETURNS float8
  LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
BEGIN
  IF hash_scheme IN ('growthbook_v1', 'growthbook_v2') THEN
    RETURN experiment.growthbook_hash('__' || layer, unit_id, 1);
  ELSIF hash_scheme IN ('sha256', 'eppo', 'statsig') THEN
    RETURN experiment.bucket(unit_id, 'layer:' || layer)::float8 / 10000;
  END IF;
  PERFORM experiment.raise_invalid_choice('hash_scheme', hash_scheme,
                                          ARRAY(SELECT h.scheme FROM experiment.hash_schemes() h));
END
$$;
COMMENT ON FUNCTION experiment.layer_position(text, text, text) IS
  'position in [0, 1) of a unit in a layer: GrowthBook namespace hash for growthbook_* schemes, else bucket(unit, ''layer:'' || layer) / 10000';

CREATE FUNCTION experiment.experiments_check() RETURNS trigger
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
COMMENT ON FUNCTION experiment.experiments_check() IS
  'internal: trigger: validates an experiment row (fields, status transitions, frozen salt/scheme/layer once out of draft, traffic only grows, split valid on start, disjoint layer ranges)';

CREATE TRIGGER experiments_check BEFORE INSERT OR UPDATE ON experiment.experiments
  FOR EACH ROW EXECUTE FUNCTION experiment.experiments_check();
COMMENT ON TRIGGER experiments_check ON experiment.experiments IS 'validates each experiment row (experiment.experiments_check)';

CREATE FUNCTION experiment.experiments_delete_check() RETURNS trigger
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
COMMENT ON FUNCTION experiment.experiments_delete_check() IS
  'internal: trigger: a running experiment cannot be deleted or truncated';

CREATE TRIGGER experiments_delete_check BEFORE DELETE ON experiment.experiments
  FOR EACH ROW EXECUTE FUNCTION experiment.experiments_delete_check();
CREATE TRIGGER experiments_truncate_check BEFORE TRUNCATE ON experiment.experiments
  FOR EACH STATEMENT EXECUTE FUNCTION experiment.experiments_delete_check();
COMMENT ON TRIGGER experiments_delete_check ON experiment.experiments IS 'a running experiment cannot be deleted';
COMMENT ON TRIGGER experiments_truncate_check ON experiment.experiments IS 'no truncate while experiments run';

-- Variants. Drafts are edited freely (row by row); the split is checked when
-- the experiment starts. Once an experiment has left draft its split (the set
-- of variants, their allocations and which one is the control) is frozen,
-- with one exception that keeps dumps restorable: one INSERT statement may
-- give a non-draft experiment that has no variants all of its variants, and
-- they are checked at the end of that statement.
CREATE FUNCTION experiment.variants_check() RETURNS trigger
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
COMMENT ON FUNCTION experiment.variants_check() IS
  'internal: trigger: validates a variant row; the split of an experiment that left draft cannot change';

CREATE TRIGGER variants_check BEFORE INSERT OR UPDATE OR DELETE ON experiment.variants
  FOR EACH ROW EXECUTE FUNCTION experiment.variants_check();
CREATE TRIGGER variants_truncate_check BEFORE TRUNCATE ON experiment.variants
  FOR EACH STATEMENT EXECUTE FUNCTION experiment.variants_check();
COMMENT ON TRIGGER variants_check ON experiment.variants IS 'validates each variant row; frozen splits (experiment.variants_check)';
COMMENT ON TRIGGER variants_truncate_check ON experiment.variants IS 'no truncate while it holds frozen splits';

CREATE FUNCTION experiment.variants_insert_check() RETURNS trigger
  LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
DECLARE
  r record;
BEGIN
  FOR r IN
    SELECT n.experiment_id, x.status, count(*) AS added,
           (SELECT count(*) FROM experiment.variants v WHERE v.experiment_id = n.experiment_id) AS total
      FROM new_variants n JOIN experiment.experiments x ON x.id = n.experiment_id
     WHERE x.status <> 'draft'
     GROUP BY n.experiment_id, x.status
     ORDER BY n.experiment_id
  LOOP
    IF r.total > r.added THEN
      RAISE EXCEPTION 'cannot add variants to experiment "%": it is %', r.experiment_id, r.status
        USING ERRCODE = 'invalid_parameter_value',
              HINT = 'The split of an experiment is frozen once it leaves draft; a new split is a new experiment.';
    END IF;
    PERFORM experiment.check_split(r.experiment_id);
  END LOOP;
  RETURN NULL;
END
$$;
COMMENT ON FUNCTION experiment.variants_insert_check() IS
  'internal: trigger: variants may be added to an experiment that left draft only all at once, by one statement, as a valid split';

CREATE TRIGGER variants_insert_check AFTER INSERT ON experiment.variants
  REFERENCING NEW TABLE AS new_variants
  FOR EACH STATEMENT EXECUTE FUNCTION experiment.variants_insert_check();
COMMENT ON TRIGGER variants_insert_check ON experiment.variants IS 'variants of an experiment that left draft arrive in one statement, as a valid split';

-- ---------------------------------------------------------------------------
-- Lifecycle functions
-- ---------------------------------------------------------------------------

CREATE FUNCTION experiment.create_experiment(
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

CREATE FUNCTION experiment.start(experiment_id text) RETURNS void
  LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
DECLARE
  st text;
BEGIN
  SELECT x.status INTO st FROM experiment.experiments x WHERE x.id = experiment_id FOR UPDATE;
  IF NOT FOUND THEN
    PERFORM experiment.require_experiment(experiment_id);
  END IF;
  UPDATE experiment.experiments x
     SET status = 'running',
         start_at = CASE WHEN x.start_at IS NULL OR x.start_at > now() THEN now() ELSE x.start_at END,
         end_at = CASE WHEN st = 'stopped' THEN NULL ELSE x.end_at END
   WHERE x.id = experiment_id;
END
$$;
COMMENT ON FUNCTION experiment.start(text) IS
  'sets a draft (after checking its split) or stopped experiment running; records start_at';

CREATE FUNCTION experiment.stop(experiment_id text) RETURNS void
  LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
BEGIN
  UPDATE experiment.experiments x
     SET status = 'stopped', end_at = CASE WHEN x.status = 'running' THEN now() ELSE x.end_at END
   WHERE x.id = experiment_id;
  IF NOT FOUND THEN
    PERFORM experiment.require_experiment(experiment_id);
  END IF;
END
$$;
COMMENT ON FUNCTION experiment.stop(text) IS
  'stops a running experiment (it assigns nobody until started again); records end_at';

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
CREATE FUNCTION experiment.variant_ranges(hash_scheme text, allocations float8[], traffic float8 DEFAULT 1)
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
COMMENT ON FUNCTION experiment.variant_ranges(text, float8[], float8) IS
  'hash ranges [[start, end], ...] of the variants: [c_i, c_i + traffic * (c_{i+1} - c_i)); GrowthBook''s getBucketRanges for growthbook_* schemes, else cumulative shares snapped to the 1/10000 bucket grid as assign_variant';

CREATE FUNCTION experiment.assign(unit_id text, experiment_id text, attributes jsonb DEFAULT '{}')
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
COMMENT ON FUNCTION experiment.assign(text, text, jsonb) IS
  'variant of a unit in a registered experiment: NULL unless the experiment is running and the unit is in its layer range, passes its targeting and falls in its traffic; ramp-safe ranges (experiment.variant_ranges)';

CREATE FUNCTION experiment.assign_switchback(cluster text, experiment_id text, at timestamptz, window_size interval)
  RETURNS text
  LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
DECLARE
  e experiment.experiments;
  s record;
  w numeric;
  i integer;
BEGIN
  IF NOT (window_size > interval '0') THEN
    RAISE EXCEPTION 'window_size must be positive, got %', window_size USING ERRCODE = 'invalid_parameter_value';
  END IF;
  IF NOT isfinite(at) THEN
    RAISE EXCEPTION 'at must be a finite timestamp, got %', at USING ERRCODE = 'invalid_parameter_value';
  END IF;
  SELECT * INTO e FROM experiment.experiments x WHERE x.id = assign_switchback.experiment_id;
  IF NOT FOUND THEN
    PERFORM experiment.require_experiment(experiment_id);
  END IF;
  IF e.status <> 'running' THEN
    RETURN NULL;
  END IF;
  w := floor(extract(epoch FROM at) / extract(epoch FROM window_size));
  s := experiment.split(e.id);
  IF coalesce(cardinality(s.names), 0) < 2 THEN
    RETURN NULL;
  END IF;
  i := experiment.growthbook_choose_variation(
         experiment.unit_hash(e.hash_scheme, e.salt, cluster || '@' || w::text),
         experiment.variant_ranges(e.hash_scheme, s.allocations, e.traffic));
  IF i < 0 THEN
    RETURN NULL;
  END IF;
  RETURN s.names[i + 1];
END
$$;
COMMENT ON FUNCTION experiment.assign_switchback(text, text, timestamptz, interval) IS
  'variant of a cluster during the time window containing at: the experiment''s split applied to the hash of cluster || ''@'' || floor(epoch(at) / epoch(window_size)); NULL unless running';

-- ---------------------------------------------------------------------------
-- Ruleset for SDKs, its version and the NOTIFY channel
-- ---------------------------------------------------------------------------

-- The running experiments as SDKs need them, ordered by id.
CREATE FUNCTION experiment.ruleset_experiments() RETURNS jsonb
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
COMMENT ON FUNCTION experiment.ruleset_experiments() IS
  'internal: the running experiments (id, name, salt, hash_scheme, allocation = traffic, layer, variants in range order, targeting) as a JSON array ordered by id';

CREATE FUNCTION experiment.ruleset_version() RETURNS text
  LANGUAGE sql STABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
  SELECT encode(sha256(convert_to(experiment.ruleset_experiments()::text, 'UTF8')), 'hex')
$$;
COMMENT ON FUNCTION experiment.ruleset_version() IS
  'version of the ruleset: hex SHA-256 of its experiments array; changes exactly when the ruleset changes (an ETag)';

CREATE FUNCTION experiment.ruleset(known_version text DEFAULT NULL) RETURNS jsonb
  LANGUAGE plpgsql STABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
DECLARE
  ex jsonb := experiment.ruleset_experiments();
  ver text := encode(sha256(convert_to(ex::text, 'UTF8')), 'hex');
BEGIN
  IF known_version IS NOT NULL AND known_version = ver THEN
    RETURN NULL;
  END IF;
  RETURN jsonb_build_object('version', ver, 'experiments', ex);
END
$$;
COMMENT ON FUNCTION experiment.ruleset(text) IS
  'ruleset for SDKs: {"version", "experiments": [...]} of the running experiments; NULL when known_version is the current version (nothing changed)';

CREATE FUNCTION experiment.notify_ruleset() RETURNS trigger
  LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
BEGIN
  PERFORM pg_notify('experiment_ruleset', experiment.ruleset_version());
  RETURN NULL;
END
$$;
COMMENT ON FUNCTION experiment.notify_ruleset() IS
  'internal: trigger: NOTIFY experiment_ruleset with the ruleset version after every change to the registry (delivered at commit)';

CREATE TRIGGER experiments_notify AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON experiment.experiments
  FOR EACH STATEMENT EXECUTE FUNCTION experiment.notify_ruleset();
CREATE TRIGGER variants_notify AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON experiment.variants
  FOR EACH STATEMENT EXECUTE FUNCTION experiment.notify_ruleset();
COMMENT ON TRIGGER experiments_notify ON experiment.experiments IS 'NOTIFY experiment_ruleset with the new ruleset version';
COMMENT ON TRIGGER variants_notify ON experiment.variants IS 'NOTIFY experiment_ruleset with the new ruleset version';

-- ---------------------------------------------------------------------------
-- GrowthBook SDK payload
-- ---------------------------------------------------------------------------

CREATE FUNCTION experiment.growthbook_payload() RETURNS jsonb
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
COMMENT ON FUNCTION experiment.growthbook_payload() IS
  'GrowthBook SDK features payload: one feature per running growthbook_v1/v2 experiment (key = id), one experiment rule (seed = salt, coverage = traffic, weights, variations = configs, meta keys = variant names, namespace = layer, condition = targeting)';
