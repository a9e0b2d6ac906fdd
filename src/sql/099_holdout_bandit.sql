-- ---------------------------------------------------------------------------
-- Designs: long-term holdouts and bandits (doc/designs-holdouts.md).
--
-- A holdout is an experiment of its own, with two variants: the control
-- 'holdout' (the held-out share) and 'exposed' (everyone else). Its members
-- (a list of experiments, or every experiment of a layer) never assign a unit
-- that the holdout holds out, and its analysis is the ordinary refresh() of
-- the holdout experiment: exposed against held out on the catalogue's metrics.
--
-- A bandit is an experiment whose allocation weights are recomputed once per
-- period by experiment.update_bandit_weights() (top-two Thompson sampling on
-- Gaussian posteriors, src/bandit.c); units keep the variant of their first
-- exposure, and the analysis post-stratifies on the period of each unit's
-- first exposure, so that changing weights cannot produce Simpson's paradox.
-- ---------------------------------------------------------------------------

-- (after every other table that pg_dump keeps: an upgrade appends them, and the order of
-- the extension's dumped tables is the same in a new and in an upgraded installation)
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
CREATE FUNCTION experiment.holdouts_of(experiment_id text)
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
CREATE FUNCTION experiment.held_out(unit_id text, experiment_id text) RETURNS boolean
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
CREATE FUNCTION experiment.experiments_design_check() RETURNS trigger
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

CREATE TRIGGER experiments_design_check BEFORE INSERT OR UPDATE ON experiment.experiments
  FOR EACH ROW EXECUTE FUNCTION experiment.experiments_design_check();
COMMENT ON TRIGGER experiments_design_check ON experiment.experiments IS
  'the rules of holdouts, their members and bandits (experiment.experiments_design_check)';

-- membership changes may not move a unit: an experiment joins or leaves a holdout only while
-- it assigns nobody (draft or concluded) or while the holdout holds nobody out (concluded)
CREATE FUNCTION experiment.holdout_membership_guard(holdout_id text, experiment_id text, action text)
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

CREATE FUNCTION experiment.holdouts_check() RETURNS trigger
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

CREATE TRIGGER holdouts_check BEFORE INSERT OR UPDATE OR DELETE ON experiment.holdouts
  FOR EACH ROW EXECUTE FUNCTION experiment.holdouts_check();
COMMENT ON TRIGGER holdouts_check ON experiment.holdouts IS
  'validates each holdout (experiment.holdouts_check)';

CREATE FUNCTION experiment.holdout_members_check() RETURNS trigger
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

CREATE TRIGGER holdout_members_check BEFORE INSERT OR UPDATE OR DELETE ON experiment.holdout_members
  FOR EACH ROW EXECUTE FUNCTION experiment.holdout_members_check();
COMMENT ON TRIGGER holdout_members_check ON experiment.holdout_members IS
  'validates each membership (experiment.holdout_members_check)';

CREATE FUNCTION experiment.create_holdout(
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

CREATE FUNCTION experiment.best_arm_probabilities(means float8[], variances float8[], lower_is_better boolean DEFAULT false)
  RETURNS float8[]
  AS 'MODULE_PATHNAME', 'exp_best_arm_probabilities' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION experiment.best_arm_probabilities(float8[], float8[], boolean) IS
  'P(arm i is the best) for independent Gaussian posteriors N(means[i], variances[i]), by quadrature (deterministic); lower_is_better: the smallest is best';

CREATE FUNCTION experiment.second_arm_probabilities(means float8[], variances float8[], lower_is_better boolean DEFAULT false)
  RETURNS float8[]
  AS 'MODULE_PATHNAME', 'exp_second_arm_probabilities' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION experiment.second_arm_probabilities(float8[], float8[], boolean) IS
  'P(arm i ranks second) for independent Gaussian posteriors N(means[i], variances[i]), by quadrature';

CREATE FUNCTION experiment.top_two_weights(means float8[], variances float8[], lower_is_better boolean DEFAULT false,
                                           min_weight float8 DEFAULT 0.01)
  RETURNS float8[]
  AS 'MODULE_PATHNAME', 'exp_top_two_weights' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION experiment.top_two_weights(float8[], float8[], boolean, float8) IS
  'bandit allocation: p_i = f + (1 - k f) (P(i best) + P(i second)) / 2 (top-two Thompson sampling, GrowthBook''s rule, by quadrature), f = min_weight; sums to 1, each at least f';

-- the declaration of a bandit, checked: its metric is one of the experiment's mean or
-- proportion metrics, and k arms leave room for the floor (k f <= 1)
CREATE FUNCTION experiment.check_bandit(experiment_id text) RETURNS void
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

CREATE FUNCTION experiment.bandits_check() RETURNS trigger
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

CREATE TRIGGER bandits_check BEFORE INSERT OR UPDATE OR DELETE ON experiment.bandits
  FOR EACH ROW EXECUTE FUNCTION experiment.bandits_check();
COMMENT ON TRIGGER bandits_check ON experiment.bandits IS 'validates each bandit (experiment.bandits_check)';

-- the allocation a bandit assigns new units with now: the latest period's weights, before
-- the first update the split of experiment.variants (range order)
CREATE FUNCTION experiment.bandit_allocations(experiment_id text) RETURNS float8[]
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
CREATE FUNCTION experiment.bandit_sticky_variant(experiment_id text, unit_id text) RETURNS text
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
CREATE FUNCTION experiment.bandit_period_of(experiment_id text, at timestamptz) RETURNS text
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

CREATE FUNCTION experiment.create_bandit(
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
CREATE FUNCTION experiment.bandit_posteriors(experiment_id text,
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

CREATE FUNCTION experiment.update_bandit_weights(bandit text DEFAULT NULL, force boolean DEFAULT false)
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
CREATE FUNCTION experiment.bandit_srm(experiment_id text) RETURNS float8
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
CREATE FUNCTION experiment.ruleset_design(experiment_id text) RETURNS jsonb
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
CREATE FUNCTION experiment.growthbook_rule_design(experiment_id text) RETURNS jsonb
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
CREATE TRIGGER holdouts_notify AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON experiment.holdouts
  FOR EACH STATEMENT EXECUTE FUNCTION experiment.notify_ruleset();
CREATE TRIGGER holdout_members_notify AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON experiment.holdout_members
  FOR EACH STATEMENT EXECUTE FUNCTION experiment.notify_ruleset();
CREATE TRIGGER bandit_periods_notify AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON experiment.bandit_periods
  FOR EACH STATEMENT EXECUTE FUNCTION experiment.notify_ruleset();
COMMENT ON TRIGGER holdouts_notify ON experiment.holdouts IS 'NOTIFY experiment_ruleset with the new ruleset version';
COMMENT ON TRIGGER holdout_members_notify ON experiment.holdout_members IS 'NOTIFY experiment_ruleset with the new ruleset version';
COMMENT ON TRIGGER bandit_periods_notify ON experiment.bandit_periods IS 'NOTIFY experiment_ruleset with the new ruleset version (new weights)';
