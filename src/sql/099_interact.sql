-- ---------------------------------------------------------------------------
-- Designs: factorial experiments (factors, cells, main effects and interactions) and the
-- interactions of overlapping experiments (src/contrasts.c; doc/designs-factorial.md)
-- ---------------------------------------------------------------------------

-- the test of a linear contrast of cell moments (src/contrasts.c)
CREATE FUNCTION experiment.contrast_test(method text, cells experiment.moments[], treatment_weights float8[],
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
CREATE FUNCTION experiment.independence_chisq(observed bigint[]) RETURNS float8
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
CREATE FUNCTION experiment.check_factors(factors jsonb) RETURNS void
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
CREATE FUNCTION experiment.factorial_cells(design jsonb) RETURNS jsonb
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
CREATE FUNCTION experiment.factors_check() RETURNS trigger
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
CREATE TRIGGER factors_check BEFORE INSERT OR UPDATE OF factors ON experiment.experiments
  FOR EACH ROW EXECUTE FUNCTION experiment.factors_check();
COMMENT ON TRIGGER factors_check ON experiment.experiments IS 'checks the factorial design of an experiment';

-- the contrasts of a factorial experiment's effects: for each non-empty set S of factors and a
-- non-baseline level a_f of each, the cells' weights (in the order of cells): a cell with a
-- factor of S at neither its baseline nor a_f weighs 0; the others weigh
-- prod_{f in S, f not last} (+1 at a_f, -1 at the baseline) / prod_{g not in S} levels(g),
-- on the treatment side when the last factor of S is at a_s, else on the control side.
-- A main effect (|S| = 1) is then the level's marginal mean against the baseline's; an
-- interaction the difference of the lower-order effect between a_s and the baseline of s.
CREATE FUNCTION experiment.factorial_contrasts(experiment_id text)
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
CREATE VIEW experiment.factorial_effects WITH (security_barrier = true) AS
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

-- ---------------------------------------------------------------------------
-- Interactions of overlapping experiments
-- ---------------------------------------------------------------------------

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
CREATE FUNCTION experiment.interaction_settings(OUT min_shared_units bigint, OUT threshold float8)
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
CREATE FUNCTION experiment.refresh_interactions() RETURNS integer
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

CREATE VIEW experiment.interactions WITH (security_barrier = true) AS
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
