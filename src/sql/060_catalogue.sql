-- ---------------------------------------------------------------------------
-- The metric catalogue: metrics over regclass sources, the metrics of each experiment,
-- their validation (doc/analysis.md)
-- ---------------------------------------------------------------------------

CREATE TABLE experiment.metrics (
  name text PRIMARY KEY,
  description text,
  source regclass,
  unit_column text,
  time_column text,
  value_column text,
  aggregation text NOT NULL DEFAULT 'sum'
    CHECK (aggregation IN ('sum', 'count', 'any', 'max', 'quantile')),
  kind text NOT NULL DEFAULT 'mean'
    CHECK (kind IN ('mean', 'proportion', 'ratio')),
  numerator text REFERENCES experiment.metrics (name),
  denominator text REFERENCES experiment.metrics (name),
  delay interval NOT NULL DEFAULT '0',
  "window" interval,
  higher_is_better boolean NOT NULL DEFAULT true,
  winsorize float8,
  cuped_lookback interval DEFAULT '14 days',
  created_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
  owner regrole NOT NULL,
  late_events interval NOT NULL DEFAULT '1 day',
  winsorize_lower float8,
  cap_lower float8,
  cap_upper float8,
  cap_ignore_zeros boolean NOT NULL DEFAULT false,
  quantile float8,
  quantile_level text,
  CONSTRAINT metrics_delay_check CHECK (delay >= interval '0'),
  CONSTRAINT metrics_window_check CHECK ("window" IS NULL OR "window" > interval '0'),
  CONSTRAINT metrics_winsorize_check CHECK (winsorize IS NULL OR (winsorize > 0 AND winsorize < 1)),
  CONSTRAINT metrics_cuped_lookback_check CHECK (cuped_lookback IS NULL OR cuped_lookback > interval '0'),
  CONSTRAINT metrics_late_events_check CHECK (late_events >= interval '0'),
  CONSTRAINT metrics_winsorize_lower_check CHECK (
    winsorize_lower IS NULL OR (winsorize_lower > 0 AND winsorize_lower < 1
                                AND (winsorize IS NULL OR winsorize_lower < winsorize))),
  CONSTRAINT metrics_cap_check CHECK (
    (cap_lower IS NULL OR (cap_lower > '-Infinity'::float8 AND cap_lower < 'Infinity'::float8))
    AND (cap_upper IS NULL OR (cap_upper > '-Infinity'::float8 AND cap_upper < 'Infinity'::float8))
    AND (cap_lower IS NULL OR cap_upper IS NULL OR cap_lower < cap_upper)),
  CONSTRAINT metrics_quantile_check CHECK (
    CASE WHEN aggregation = 'quantile'
         THEN quantile > 0 AND quantile < 1 AND quantile_level IN ('event', 'unit')
         ELSE quantile IS NULL AND quantile_level IS NULL END)
);
COMMENT ON TABLE experiment.metrics IS
  'the metric catalogue: each metric reads its events from one relation (by regclass and column names), or is a ratio of two metrics';
COMMENT ON COLUMN experiment.metrics.source IS 'table, view or materialized view holding the events';
COMMENT ON COLUMN experiment.metrics.value_column IS 'numeric or boolean column aggregated per unit; NULL counts rows';
COMMENT ON COLUMN experiment.metrics.aggregation IS
  'per-unit aggregation over the window: sum, count, any (1 when converted at least once, else 0), max, '
  'or quantile (the metric is a quantile: of all events, or of the per-unit sums; see quantile_level)';
COMMENT ON COLUMN experiment.metrics.quantile IS
  'with aggregation quantile: the quantile compared between arms, in (0, 1), e.g. 0.99 for p99';
COMMENT ON COLUMN experiment.metrics.quantile_level IS
  'with aggregation quantile: event (the quantile of all the units'' events, e.g. p99 of page loads; default) '
  'or unit (the quantile of the per-unit sums, one value per unit)';
COMMENT ON COLUMN experiment.metrics.kind IS 'mean (Welch / CUPED), proportion (aggregation any; z-test / CUPED) or ratio (delta method)';
COMMENT ON COLUMN experiment.metrics.delay IS 'events count from first exposure + delay';
COMMENT ON COLUMN experiment.metrics."window" IS 'events count until first exposure + delay + window (NULL: until the end of the experiment)';
COMMENT ON COLUMN experiment.metrics.winsorize IS 'cap per-unit values at this upper percentile, pooled over all units (e.g. 0.999)';
COMMENT ON COLUMN experiment.metrics.winsorize_lower IS
  'cap per-unit values from below at this lower percentile, pooled over all units (e.g. 0.001; below winsorize)';
COMMENT ON COLUMN experiment.metrics.cap_lower IS
  'absolute lower cap of per-unit values (e.g. -500 for refunds): no capped value is below it; a lower percentile cap can only raise it';
COMMENT ON COLUMN experiment.metrics.cap_upper IS
  'absolute upper cap of per-unit values: no capped value is above it; with winsorize the upper cap is the smaller of the two';
COMMENT ON COLUMN experiment.metrics.cap_ignore_zeros IS
  'percentile caps are taken over the units whose value is not 0 (zero-inflated revenue), and a 0 is never capped';
COMMENT ON COLUMN experiment.metrics.cuped_lookback IS 'pre-period before first exposure used as CUPED covariate; NULL turns CUPED off';
COMMENT ON COLUMN experiment.metrics.late_events IS
  'lateness allowance of an incremental refresh: an event is counted when it is stored no later than this after the newest event time of its source (doc/scaling.md)';
COMMENT ON COLUMN experiment.metrics.owner IS
  'the role the source is read as (default: the role that registers the metric); it must be allowed to SELECT the source''s columns, and only its members may change or delete the metric';
SELECT pg_catalog.pg_extension_config_dump('experiment.metrics', '');

CREATE TABLE experiment.experiment_metrics (
  experiment_id text NOT NULL REFERENCES experiment.experiments (id) ON DELETE CASCADE,
  metric text NOT NULL REFERENCES experiment.metrics (name),
  role text NOT NULL DEFAULT 'secondary' CHECK (role IN ('primary', 'secondary', 'guardrail')),
  non_inferiority_margin float8,
  PRIMARY KEY (experiment_id, metric),
  CONSTRAINT experiment_metrics_margin_check CHECK (
    non_inferiority_margin IS NULL OR (role = 'guardrail' AND non_inferiority_margin >= 0))
);
CREATE UNIQUE INDEX experiment_metrics_one_primary
  ON experiment.experiment_metrics (experiment_id) WHERE role = 'primary';
COMMENT ON TABLE experiment.experiment_metrics IS
  'metrics of each experiment: exactly one primary, any secondary and guardrail metrics';
COMMENT ON COLUMN experiment.experiment_metrics.non_inferiority_margin IS
  'guardrails: tolerated relative harm (0.02 = 2% worse) before the guardrail fails';
SELECT pg_catalog.pg_extension_config_dump('experiment.experiment_metrics', '');

CREATE FUNCTION experiment.require_metric(metric text) RETURNS experiment.metrics
  LANGUAGE plpgsql STABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
DECLARE
  m experiment.metrics;
BEGIN
  SELECT * INTO m FROM experiment.metrics mm WHERE mm.name = require_metric.metric;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'metric "%" does not exist', coalesce(left(metric, 200), 'NULL')
      USING ERRCODE = 'invalid_parameter_value',
            HINT = experiment.hint_list(ARRAY(SELECT mm.name FROM experiment.metrics mm ORDER BY mm.name),
                                        'metrics', 'experiment.metrics');
  END IF;
  RETURN m;
END
$$;
COMMENT ON FUNCTION experiment.require_metric(text) IS
  'internal: the catalogue row of a metric, or the error ''metric "m" does not exist'' (22023) with the known names as HINT';

-- the values a catalogue row may hold, checked before the table's constraints so that a
-- mistake gets a message naming the column, the value and what is allowed
CREATE FUNCTION experiment.metrics_check() RETURNS trigger
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
                                             CASE WHEN NEW.quantile IS NULL THEN 'set for aggregation quantile: ' END
                                             || 'a number strictly between 0 and 1 (0.99 for the p99)');
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
COMMENT ON FUNCTION experiment.metrics_check() IS
  'internal: trigger that names the column, the value and the allowed values of an invalid metric';
CREATE TRIGGER metrics_check
  BEFORE INSERT OR UPDATE OR DELETE ON experiment.metrics
  FOR EACH ROW EXECUTE FUNCTION experiment.metrics_check();
COMMENT ON TRIGGER metrics_check ON experiment.metrics IS
  'an invalid aggregation, quantile, quantile_level, kind, delay, window, winsorize, winsorize_lower, cap_lower, cap_upper, cap_ignore_zeros, '
  'cuped_lookback or late_events is refused with a message naming the allowed values; '
  'the owner defaults to the current user, and only members of the owner role may register, change or delete a metric';

CREATE FUNCTION experiment.experiment_metrics_check() RETURNS trigger
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
COMMENT ON FUNCTION experiment.experiment_metrics_check() IS
  'internal: trigger that names the experiment, metric, role or margin that is invalid';
CREATE TRIGGER experiment_metrics_check
  BEFORE INSERT OR UPDATE OR DELETE ON experiment.experiment_metrics
  FOR EACH ROW EXECUTE FUNCTION experiment.experiment_metrics_check();
COMMENT ON TRIGGER experiment_metrics_check ON experiment.experiment_metrics IS
  'an unknown experiment or metric, an invalid role or margin, or a second primary metric is refused with a clear message; '
  'only members of the experiment''s owner_role add, change or remove its metrics';

-- type checks of source columns, from pg_type
CREATE FUNCTION experiment.column_type(rel regclass, col text) RETURNS regtype
  LANGUAGE sql STABLE STRICT PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
  SELECT a.atttypid::regtype FROM pg_catalog.pg_attribute a
  WHERE a.attrelid = rel AND a.attname = col AND a.attnum > 0 AND NOT a.attisdropped
$$;
COMMENT ON FUNCTION experiment.column_type(regclass, text) IS
  'internal: type of column col of relation rel, NULL when there is no such column';

-- the relations a read of source may read: source and, recursively, what its views read,
-- what the row-level security policies of the tables among them read, and their
-- inheritance children and partitions
CREATE FUNCTION experiment.source_relations(source regclass) RETURNS SETOF regclass
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
CREATE FUNCTION experiment.source_trust_problem(source regclass, reader regrole) RETURNS text
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

CREATE FUNCTION experiment.validate_metric(metric text) RETURNS void
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
COMMENT ON FUNCTION experiment.validate_metric(text) IS
  'raise a clear error unless the metric''s relation and columns exist with usable types (and, for ratios, its parts are valid)';

CREATE FUNCTION experiment.metrics_validate_trigger() RETURNS trigger
  LANGUAGE plpgsql
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
BEGIN
  PERFORM experiment.validate_metric(NEW.name);
  RETURN NULL;
END
$$;
COMMENT ON FUNCTION experiment.metrics_validate_trigger() IS 'internal: validates a metric after it is inserted or updated';
CREATE CONSTRAINT TRIGGER metrics_validate
  AFTER INSERT OR UPDATE ON experiment.metrics
  DEFERRABLE INITIALLY IMMEDIATE
  FOR EACH ROW EXECUTE FUNCTION experiment.metrics_validate_trigger();
COMMENT ON TRIGGER metrics_validate ON experiment.metrics IS
  'a metric whose relation, columns or parts are unusable is refused';

CREATE FUNCTION experiment.validate_experiment_metrics(experiment_id text) RETURNS void
  LANGUAGE plpgsql STABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
DECLARE
  nmetrics bigint;
  nprimary bigint;
  r record;
BEGIN
  SELECT count(*), count(*) FILTER (WHERE role = 'primary') INTO nmetrics, nprimary
  FROM experiment.experiment_metrics em WHERE em.experiment_id = validate_experiment_metrics.experiment_id;
  IF nmetrics > 0 AND nprimary <> 1 THEN
    RAISE EXCEPTION 'experiment "%" has % primary metrics, it needs exactly one', experiment_id, nprimary
      USING ERRCODE = '22023',
            HINT = 'Set role = ''primary'' on one row of experiment.experiment_metrics.';
  END IF;
  FOR r IN SELECT em.metric FROM experiment.experiment_metrics em
           WHERE em.experiment_id = validate_experiment_metrics.experiment_id ORDER BY em.metric LOOP
    PERFORM experiment.validate_metric(r.metric);
  END LOOP;
END
$$;
COMMENT ON FUNCTION experiment.validate_experiment_metrics(text) IS
  'raise a clear error unless the experiment''s metrics are valid and exactly one is primary (when it has any)';

CREATE FUNCTION experiment.experiments_start_trigger() RETURNS trigger
  LANGUAGE plpgsql
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
BEGIN
  IF NEW.status = 'running' AND (TG_OP = 'INSERT' OR OLD.status IS DISTINCT FROM 'running') THEN
    PERFORM experiment.validate_experiment_metrics(NEW.id);
  END IF;
  RETURN NULL;
END
$$;
COMMENT ON FUNCTION experiment.experiments_start_trigger() IS
  'internal: validates an experiment''s metrics when it starts running';
CREATE TRIGGER experiments_validate_metrics_on_start
  AFTER INSERT OR UPDATE OF status ON experiment.experiments
  FOR EACH ROW EXECUTE FUNCTION experiment.experiments_start_trigger();
COMMENT ON TRIGGER experiments_validate_metrics_on_start ON experiment.experiments IS
  'an experiment starts only with valid metrics and exactly one primary (when it has metrics)';

-- the current user as a regrole (current_user is a name, which text input would case-fold)
CREATE FUNCTION experiment.current_regrole() RETURNS regrole
  LANGUAGE sql STABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
  SELECT r.oid::regrole FROM pg_catalog.pg_roles r WHERE r.rolname = current_user
$$;
COMMENT ON FUNCTION experiment.current_regrole() IS 'internal: the current user as a regrole';

-- SELECT on a column of a relation for role r (on the relation, when the column no longer
-- exists)
CREATE FUNCTION experiment.role_may_read_column(r regrole, rel regclass, col text) RETURNS boolean
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

CREATE FUNCTION experiment.may_read_column(rel regclass, col text) RETURNS boolean
  LANGUAGE sql STABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
  SELECT experiment.role_may_read_column(experiment.current_regrole(), rel, col)
$$;
COMMENT ON FUNCTION experiment.may_read_column(regclass, text) IS
  'internal: whether the current user may SELECT column col of rel (NULL col: true; a column that no longer exists: SELECT on rel)';

-- whether role r may read the columns a metric reads (for a ratio, those of both parts)
CREATE FUNCTION experiment.role_may_read_metric(r regrole, metric text) RETURNS boolean
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
CREATE FUNCTION experiment.may_read_metric(metric text) RETURNS boolean
  LANGUAGE sql STABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
  SELECT experiment.role_may_read_metric(experiment.current_regrole(), metric)
$$;
COMMENT ON FUNCTION experiment.may_read_metric(text) IS
  'whether the current user may see the results of a metric: it may SELECT the columns the metric reads from its source (for a ratio, from the sources of both parts)';
