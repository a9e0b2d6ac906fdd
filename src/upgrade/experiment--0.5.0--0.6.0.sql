-- experiment 0.5.0 -> 0.6.0 (ALTER EXTENSION experiment UPDATE; doc/operations.md#upgrading)
--
-- Citus: per-unit values on the workers when the sources are distributed and co-located
-- (src/sql/100_citus.sql; refreshes.placement and placement_reason). refresh() and aa_test()
-- hand their units to the scans of the sources as a relation (source_unit_values_from())
-- instead of as arrays, and experiment.refresh_memory counts only the scans' hash tables;
-- refresh() counts the units by variant and day in the pass of the moments. metric_method()
-- picks the quantile test for quantile metrics itself.

DROP FUNCTION experiment.metric_method(text, experiment.moments, experiment.moments);

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

-- the method of a metric between two arms: quantile metrics by the quantile test, ratio metrics
-- by the delta method (adjusted by the pre-period ratio where both arms have one: pre-period
-- denominators and a pre-period that varies), CUPED where both arms have a pre-period
-- covariate that varies, else the proportion or Welch test
CREATE OR REPLACE FUNCTION experiment.metric_method(kind text, c_cuped experiment.moments, t_cuped experiment.moments,
                                         aggregation text DEFAULT NULL)
  RETURNS text
  LANGUAGE sql IMMUTABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
  SELECT CASE
    WHEN aggregation = 'quantile' THEN 'quantile'
    WHEN kind = 'ratio' THEN
      CASE WHEN c_cuped IS NOT NULL AND t_cuped IS NOT NULL
                AND coalesce(experiment.mean(c_cuped, 4), 0) <> 0 AND coalesce(experiment.mean(t_cuped, 4), 0) <> 0
                AND (coalesce(experiment.variance(c_cuped OPERATOR(experiment.+) t_cuped, 3), 0) > 0
                     OR coalesce(experiment.variance(c_cuped OPERATOR(experiment.+) t_cuped, 4), 0) > 0)
           THEN 'cuped_ratio' ELSE 'ratio' END
    WHEN c_cuped IS NOT NULL AND t_cuped IS NOT NULL
         AND coalesce(experiment.variance(c_cuped OPERATOR(experiment.+) t_cuped, 2), 0) > 0 THEN 'cuped'
    WHEN kind = 'proportion' THEN 'prop_ztest'
    ELSE 'welch'
  END
$$;

COMMENT ON FUNCTION experiment.metric_method(text, experiment.moments, experiment.moments, text) IS
  'internal: the test method of a metric (quantile, ratio, cuped_ratio, cuped, prop_ztest or welch) from its kind, '
  'its arms'' CUPED moments and its aggregation';

-- the rows of experiment.source_unit_values(), the units read from a relation instead of passed
-- as arrays (src/unit_values.c): the units of units that are not multi, with reset = reset (NULL:
-- any) and in unit-hash partition part of nparts (experiment.unit_partition_sql()); expected_units
-- sizes the scan's hash table
CREATE OR REPLACE FUNCTION experiment.source_unit_values_from(units regclass, reset boolean, nparts integer, part integer,
    expected_units bigint, source regclass, unit_column text,
    time_columns text[], value_columns text[], aggregations text[], lo_offsets interval[],
    hi_offsets interval[], use_end boolean[], end_at timestamptz, scan_from timestamptz, scan_to timestamptz,
    reader regrole DEFAULT NULL, split_at timestamptz DEFAULT NULL, probe boolean DEFAULT false,
    partial boolean DEFAULT false)
  RETURNS TABLE (unit_id text, variant text, t0 timestamptz, vals float8[], skipped bigint[], latest timestamptz,
                 split timestamptz, sketches experiment.sketch[])
  AS 'MODULE_PATHNAME', 'exp_source_unit_values_from'
  -- (as experiment.source_unit_values(): it locks and checks the source through SPI before
  -- reading it as another role, never in a parallel query)
  LANGUAGE C STABLE PARALLEL UNSAFE;

COMMENT ON FUNCTION experiment.source_unit_values_from(regclass, boolean, integer, integer, bigint, regclass, text,
    text[], text[], text[], interval[], interval[], boolean[], timestamptz, timestamptz, timestamptz, regrole,
    timestamptz, boolean, boolean) IS
  'internal: experiment.source_unit_values() of the units of a relation (unit_id, variant, t0, multi[, reset]): '
  'those not multi, with reset = reset unless NULL, in unit-hash partition part of nparts; expected_units sizes its hash table';

-- SQL of the call of experiment.source_unit_values_from() for one row of experiment.source_specs():
-- the units of relation units (not multi; reset = reset unless NULL; in partition part of nparts),
-- about nunits of them over all the partitions (the scan's hash table gets room for a partition's
-- share and a twentieth more, at least 1024)
CREATE OR REPLACE FUNCTION experiment.source_from_sql(s experiment.source_scan, units text, reset boolean, nparts integer,
                                           part integer, nunits bigint, end_at timestamptz, scan_from timestamptz,
                                           scan_to timestamptz, split_at timestamptz, partial boolean)
  RETURNS text
  LANGUAGE sql IMMUTABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
  SELECT format('experiment.source_unit_values_from(%L::regclass, %L::boolean, %s, %s, %s, ', units, reset,
                nparts, part, coalesce(nunits, 0) / nparts + coalesce(nunits, 0) / nparts / 20 + 1024)
         || substr(experiment.source_call_sql(s, end_at, scan_from, scan_to, split_at, false, partial),
                   length('experiment.source_unit_values(a.ids, a.variants, a.t0s, ') + 1)
$$;

COMMENT ON FUNCTION experiment.source_from_sql(experiment.source_scan, text, boolean, integer, integer, bigint,
                                               timestamptz, timestamptz, timestamptz, timestamptz, boolean) IS
  'internal: SQL of the experiment.source_unit_values_from() call of one scan of experiment.source_specs() over a relation of units';

-- SQL of the scans of an experiment's sources (rows of experiment.source_specs(), split at
-- splits[k], NULL: not split) joined on the unit (aliases x1, x2, ...), each over the units of
-- relation units in partition part of nparts (nunits of them in all)
CREATE OR REPLACE FUNCTION experiment.scans_join_sql(scans experiment.source_scan[], splits timestamptz[], end_at timestamptz,
                                          units text, nparts integer, part integer, nunits bigint)
  RETURNS text
  LANGUAGE sql IMMUTABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
  SELECT coalesce(pg_catalog.string_agg(format('%s %s x%s%s', CASE WHEN k.o = 1 THEN '' ELSE ' JOIN' END,
           experiment.source_from_sql(scans[k.o], units, NULL, nparts, part, nunits, end_at, (scans[k.o]).lower_bound, (scans[k.o]).upper_bound, splits[k.o], false),
           (scans[k.o]).src_no,
           CASE WHEN k.o = 1 THEN '' ELSE format(' ON x%s.unit_id = x1.unit_id', (scans[k.o]).src_no) END),
           '' ORDER BY k.o), '')
  FROM pg_catalog.generate_subscripts(scans, 1) AS k(o)
$$;

COMMENT ON FUNCTION experiment.scans_join_sql(experiment.source_scan[], timestamptz[], timestamptz, text, integer,
                                              integer, bigint) IS
  'internal: SQL of the scans of an experiment''s sources over the units of one unit-hash partition of a relation, joined on the unit';

-- whether a table of stored per-unit values has no row
CREATE OR REPLACE FUNCTION experiment.unit_value_table_empty(t name) RETURNS boolean
  LANGUAGE plpgsql STABLE PARALLEL UNSAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
DECLARE
  any_row boolean;
BEGIN
  -- (a select list and a limit: Citus cannot plan an empty list over a distributed table, and
  -- sends the limit to each shard)
  EXECUTE format('SELECT EXISTS (SELECT 1 FROM experiment.%I LIMIT 1)', t) INTO any_row;
  RETURN NOT any_row;
END
$$;

-- the work_mem of a refresh's statements within experiment.refresh_memory: a quarter of it, from
-- 64 kB to 256 MB (NULL: no bound)
CREATE OR REPLACE FUNCTION experiment.refresh_work_mem() RETURNS text
  LANGUAGE sql STABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
  SELECT CASE WHEN b.bound > 0 THEN least(262144, greatest(64, b.bound / 4096))::text || 'kB' END
  FROM (SELECT pg_catalog.pg_size_bytes(pg_catalog.current_setting('experiment.refresh_memory')) AS bound) b
$$;

COMMENT ON FUNCTION experiment.refresh_work_mem() IS
  'internal: the work_mem of a refresh''s statements within experiment.refresh_memory (a quarter of it; NULL: no bound)';

-- a new table of stored per-unit values made the extension's: for its owner alone, whatever
-- default privileges say (per-unit values are per user), and commented
CREATE OR REPLACE FUNCTION experiment.seal_unit_value_table(e experiment.experiments, relation name, distributed boolean)
  RETURNS void
  LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
DECLARE
  grantee text;
BEGIN
  FOR grantee IN SELECT DISTINCT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE a.grantee::regrole::text END
                 FROM pg_catalog.pg_class c, LATERAL pg_catalog.aclexplode(c.relacl) a
                 WHERE c.oid = format('experiment.%I', relation)::regclass AND a.grantee <> c.relowner LOOP
    EXECUTE format('REVOKE ALL ON experiment.%I FROM %s', relation, grantee);
  END LOOP;
  EXECUTE format('COMMENT ON TABLE experiment.%I IS %L', relation,
                 format('stored per-unit values of experiment %s (experiment.refresh(), doc/scaling.md%s)', e.id,
                        CASE WHEN distributed THEN '; distributed' ELSE '' END));
END
$$;

COMMENT ON FUNCTION experiment.seal_unit_value_table(experiment.experiments, name, boolean) IS
  'internal: revokes every privilege but its owner''s on a new table of stored per-unit values, and comments it';

REVOKE EXECUTE ON FUNCTION experiment.seal_unit_value_table(experiment.experiments, name, boolean) FROM PUBLIC;

-- a full refresh's new table of stored per-unit values put in place of the experiment's old one
-- (dropped), with the definition it was built for, the exposures watermark and the sources'
-- watermarks of pg_temp.exp_marks
CREATE OR REPLACE FUNCTION experiment.install_unit_value_table(e experiment.experiments, st experiment.unit_value_tables,
                                                    relation name, fp text, xsince timestamptz)
  RETURNS void
  LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
BEGIN
  IF st.experiment_id IS NOT NULL THEN
    PERFORM experiment.drop_unit_value_table(st.relation);
    UPDATE experiment.unit_value_tables u
      SET relation = install_unit_value_table.relation, definition = fp, exposures_since = xsince,
          refreshed_at = pg_catalog.now()
      WHERE u.experiment_id = e.id;
    DELETE FROM experiment.source_watermarks w WHERE w.experiment_id = e.id;
  ELSE
    INSERT INTO experiment.unit_value_tables (experiment_id, relation, definition, exposures_since, refreshed_at)
    VALUES (e.id, relation, fp, xsince, pg_catalog.now());
  END IF;
  INSERT INTO experiment.source_watermarks SELECT * FROM pg_temp.exp_marks;
END
$$;

COMMENT ON FUNCTION experiment.install_unit_value_table(experiment.experiments, experiment.unit_value_tables, name, text,
                                                        timestamptz) IS
  'internal: puts a full refresh''s new table of stored per-unit values in place of the old one, with its watermarks';

REVOKE EXECUTE ON FUNCTION experiment.install_unit_value_table(experiment.experiments, experiment.unit_value_tables, name,
                                                               text, timestamptz) FROM PUBLIC;

-- the stored per-unit values of an experiment brought up to date, incrementally when it can:
-- the table's name, whether the refresh was full or incremental and why it was full, and the
-- number of unit-hash partitions its scans used (experiment.refresh_memory)
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
  sel text;
  nunits bigint;
  key_bytes float8;
  no_units text := experiment.unit_arrays_sql(
    '(SELECT NULL::text AS unit_id, NULL::text AS variant, NULL::timestamptz AS t0 WHERE false) u');
  scans experiment.source_scan[] := '{}';
  splits timestamptz[] := '{}';
  distributed boolean;
BEGIN
  PERFORM experiment.drop_refresh_tables();
  PERFORM experiment.create_base_table(e);
  PERFORM experiment.create_dims_table(e);
  -- on Citus, with distributed and co-located sources: the values on the workers (src/sql/100_citus.sql)
  distributed := (experiment.citus_placement(e)).placement = 'distributed';
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
    WHEN experiment.citus_is_distributed(st.relation) <> distributed
      THEN 'the placement of the per-unit values changed (local or distributed)'
  END;

  IF reason IS NOT NULL THEN
    mode := 'full';
    IF distributed THEN
      SELECT f.uv_rel, f.parts INTO relation, partitions FROM experiment.citus_full_unit_values(e, st, fp, xsince) f;
      RETURN;
    END IF;
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
      scans := scans || sc;
      splits := splits || split;
    END LOOP;

    -- unlogged (derived data, rebuilt in full when a crash empties it) and with room on each
    -- page for the updates of incremental refreshes
    relation := 'unit_values_' || pg_catalog.nextval('experiment.unit_value_tables_seq');
    -- (the dimension values d<j> of the first exposures: from the units, joined back when a
    -- source was scanned)
    IF pg_catalog.cardinality(scans) = 0 THEN
      EXECUTE format('CREATE UNLOGGED TABLE experiment.%I WITH (fillfactor = 80) AS '
                     'SELECT u.unit_id, u.variant, u.t0, false AS multi, false AS reset%s '
                     'FROM pg_temp.exp_units u WHERE NOT u.multi', relation, experiment.dims_columns_sql('u'));
    ELSE
      -- one statement per partition (the first creates the table), each with the units of its
      -- partition and one scan of each source (which reads the units of its partition itself)
      FOR part IN 0 .. partitions - 1 LOOP
        joins := experiment.scans_join_sql(scans, splits, e.end_at, 'pg_temp.exp_units', partitions, part, nunits);
        IF experiment.dims_columns_sql('du') = '' THEN
          sel := format('SELECT x1.unit_id, x1.variant, x1.t0, false AS multi, false AS reset%s FROM %s '
                        'WHERE x1.unit_id IS NOT NULL', vals_cols, joins);
        ELSE
          sel := format('SELECT x1.unit_id, x1.variant, x1.t0, false AS multi, false AS reset%s%s FROM %s '
                        'JOIN pg_temp.exp_units du ON du.unit_id = x1.unit_id', vals_cols,
                        experiment.dims_columns_sql('du'), joins);
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
    PERFORM experiment.seal_unit_value_table(e, relation, false);
    PERFORM experiment.install_unit_value_table(e, st, relation, fp, xsince);
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
  -- (the units not stored yet: the others are in conflict on the unique unit_id)
  EXECUTE format('INSERT INTO experiment.%I (unit_id, variant, t0, multi, reset%s) '
                 'SELECT n.unit_id, n.minv, n.t0, n.minv <> n.maxv, true%s FROM pg_temp.exp_newx n '
                 'ON CONFLICT (unit_id) DO NOTHING',
                 relation, CASE WHEN empty_cols = '' THEN '' ELSE ', ' || empty_cols END,
                 CASE WHEN empty_vals = '' THEN '' ELSE ', ' || empty_vals END);

  -- each source: events from its watermark on for every unit, all events of new and reset units
  -- (new and reset units are among those of the new exposures; the latest first exposure is at
  -- most the later of the previous refresh's and the new exposures')
  EXECUTE format('SELECT pg_catalog.min(u.t0) FILTER (WHERE u.reset) FROM pg_temp.exp_newx n '
                 'JOIN experiment.%I u ON u.unit_id = n.unit_id WHERE NOT u.multi', relation) INTO min_t0;
  SELECT greatest((SELECT f.last_exposure FROM experiment.refreshes f WHERE f.experiment_id = e.id),
                  (SELECT pg_catalog.max(n.t0) FROM pg_temp.exp_newx n))
    INTO max_t0;
  IF distributed THEN
    -- (on the Citus workers, shard by shard: src/sql/100_citus.sql)
    partitions := experiment.citus_incremental_scans(e, relation, min_t0, max_t0);
  END IF;
  FOR sc IN SELECT * FROM experiment.source_specs(e, min_t0, max_t0, true) WHERE NOT distributed LOOP
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
                     'FROM %s x',
                     experiment.source_from_sql(sc, format('experiment.%I', relation), false, partitions, part, nunits,
                                                e.end_at, wm.settled_before, sc.upper_bound, split, true));
      IF min_t0 IS NOT NULL THEN
        EXECUTE format('INSERT INTO pg_temp.exp_touch SELECT x.unit_id, x.vals, x.skipped, NULL, x.sketches '
                       'FROM %s x WHERE x.unit_id IS NOT NULL',
                       experiment.source_from_sql(sc, format('experiment.%I', relation), true, partitions, part, 0,
                                                  e.end_at, sc.lower_bound, sc.upper_bound, split, true));
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
  vals_sql text;
  vals_cols text := '';
  parts integer := 1;
  scans experiment.source_scan[] := '{}';
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
    scans := scans || sc;
  END LOOP;

  -- beyond experiment.refresh_memory, the units in unit-hash partitions (kept in exp_vals)
  IF src_no > 0 THEN
    SELECT experiment.refresh_partitions(e, nunits, pg_catalog.avg(pg_catalog.octet_length(u.unit_id)))
      INTO parts FROM pg_temp.exp_units u;
  END IF;
  -- per-unit values, zero-filled: one statement, one scan of each source
  IF src_no = 0 THEN
    vals_sql := 'SELECT u.unit_id, u.variant FROM pg_temp.exp_units u';
  ELSE
    vals_sql := format('SELECT x1.unit_id, x1.variant%s FROM %s', vals_cols,
                       experiment.scans_join_sql(scans, '{}', e.end_at, 'pg_temp.exp_units', 1, 0, nunits));
  END IF;
  -- caps: pooled percentiles over all analysed units (a second read of the values: they are kept)
  IF keep OR parts > 1 OR EXISTS (SELECT FROM pg_temp.exp_base b JOIN experiment.metrics m2 ON m2.name = b.name
                                  WHERE m2.winsorize IS NOT NULL OR m2.winsorize_lower IS NOT NULL) THEN
    IF parts = 1 THEN
      EXECUTE 'CREATE TEMP TABLE exp_vals ON COMMIT DROP AS ' || vals_sql;
    ELSE
      -- one statement per partition, each with the units of its partition and a scan of each source
      FOR part IN 0 .. parts - 1 LOOP
        vals_sql := format('SELECT x1.unit_id, x1.variant%s FROM %s', vals_cols,
                           experiment.scans_join_sql(scans, '{}', e.end_at, 'pg_temp.exp_units', parts, part, nunits));
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
  IF experiment.refresh_work_mem() IS NOT NULL THEN
    PERFORM pg_catalog.set_config('work_mem', experiment.refresh_work_mem(), true);
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

    -- the units and the moments of every metric by variant and day of first exposure, in one
    -- pass over the per-unit values (the units in several variants apart: counted, their
    -- moments not used): counts, enrollment, days; merged, the moments are the per-variant
    -- moments (and, cumulatively by day, the results over time below)
    EXECUTE format('CREATE TEMP TABLE exp_groups ON COMMIT DROP AS '
                   'SELECT v.multi, CASE WHEN NOT v.multi THEN v.variant END AS variant, '
                   'CASE WHEN NOT v.multi THEN (v.t0 AT TIME ZONE ''UTC'')::date END AS day, count(*) AS units, '
                   'count(*) FILTER (WHERE NOT v.multi AND v.t0 < %L::timestamptz) AS early_units, '
                   'pg_catalog.min(v.t0) AS min_t0, pg_catalog.max(v.t0) AS max_t0%s '
                   'FROM experiment.%I v GROUP BY 1, 2, 3', e.start_at, aggs, uv.relation);
    SELECT coalesce(sum(g.units) FILTER (WHERE g.multi), 0), coalesce(sum(g.units) FILTER (WHERE NOT g.multi), 0),
           coalesce(sum(g.early_units), 0),
           pg_catalog.min(g.min_t0) FILTER (WHERE NOT g.multi), pg_catalog.max(g.max_t0) FILTER (WHERE NOT g.multi)
      INTO nmulti, nunits, nearly, min_t0, max_t0
      FROM pg_temp.exp_groups g;
    IF unpivot <> '' THEN
      EXECUTE format(
        'CREATE TEMP TABLE exp_daily ON COMMIT DROP AS '
        'SELECT k.metric, a.variant, a.day, a.units, k.m, k.c, k.cap, k.cap_lower, k.skipped, k.q '
        'FROM pg_temp.exp_groups a '
        'CROSS JOIN LATERAL (VALUES %s) AS k(metric, m, c, cap, cap_lower, skipped, q) WHERE NOT a.multi',
        substr(unpivot, 3));
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
    CROSS JOIN LATERAL (SELECT experiment.metric_method(m2.kind, c.cuped_moments, t.cuped_moments, m2.aggregation)
                        AS method) k
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
      CROSS JOIN LATERAL (SELECT experiment.metric_method(m3.kind, cc.c, ct.c, m3.aggregation) AS method) k
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
    -- where the per-unit values were computed (src/sql/100_citus.sql)
    PERFORM experiment.citus_record_placement(e, uv.relation);
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
                clusters, clustered_units, unclustered_units, mixed_clusters,
                -- the memory partitions, and where the values were computed (src/sql/100_citus.sql)
                unit_partitions, placement, placement_reason)
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

ALTER TABLE experiment.refreshes
  ADD COLUMN placement text CHECK (placement IN ('local', 'distributed')),
  ADD COLUMN placement_reason text;

COMMENT ON COLUMN experiment.refreshes.placement IS
  'where the per-unit values were computed and are stored: local (on this server, the sources read here) or '
  'distributed (on the Citus workers, per shard of the co-located sources; doc/scaling.md, "Citus")';

COMMENT ON COLUMN experiment.refreshes.placement_reason IS
  'with Citus installed, why a refresh was local (a source not distributed, not co-located, ...); NULL otherwise';

-- whether the per-unit values of an experiment can be computed on the Citus workers, and why
-- not; reads pg_temp.exp_base (experiment.create_base_table())
CREATE OR REPLACE FUNCTION experiment.citus_placement(e experiment.experiments, OUT placement text, OUT reason text)
  LANGUAGE plpgsql STABLE PARALLEL UNSAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
DECLARE
  sc experiment.source_scan;
  r record;
  colocation integer;
  n integer := 0;
BEGIN
  placement := 'local';
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_extension x WHERE x.extname = 'citus')
     OR pg_catalog.to_regclass('pg_catalog.pg_dist_partition') IS NULL THEN
    RETURN;   -- no Citus: nothing to say
  END IF;
  IF e.cluster_relation IS NOT NULL OR e.cluster_attribute IS NOT NULL OR e.switchback_window IS NOT NULL THEN
    reason := 'cluster-randomised or switchback experiments are refreshed locally';
    RETURN;
  END IF;
  FOR sc IN SELECT * FROM experiment.source_specs(e, NULL, NULL, true) LOOP
    n := n + 1;
    EXECUTE 'SELECT p.partmethod::text AS method, p.colocationid AS colocation, '
            '       pg_catalog.column_to_column_name(p.logicalrelid, p.partkey) AS dist_column '
            'FROM pg_catalog.pg_dist_partition p WHERE p.logicalrelid = $1'
      INTO r USING sc.source;
    IF r.method IS NULL THEN
      reason := format('source %s is not a distributed table', sc.source);
    ELSIF r.method <> 'h' THEN
      reason := format('source %s is not hash-distributed (a reference or local table of Citus)', sc.source);
    ELSIF r.dist_column IS DISTINCT FROM sc.unit_column THEN
      reason := format('source %s is distributed on %s, not on its unit column %s', sc.source, r.dist_column,
                       sc.unit_column);
    ELSIF (SELECT a.atttypid FROM pg_catalog.pg_attribute a
           WHERE a.attrelid = sc.source AND a.attname = sc.unit_column) <> 'pg_catalog.text'::pg_catalog.regtype THEN
      reason := format('the unit column %s of source %s is not of type text', sc.unit_column, sc.source);
    -- (co-location needs the collation of the stored values' unit_id, the default one)
    ELSIF (SELECT a.attcollation FROM pg_catalog.pg_attribute a
           WHERE a.attrelid = sc.source AND a.attname = sc.unit_column) <> 100 THEN
      reason := format('the unit column %s of source %s has a collation of its own', sc.unit_column, sc.source);
    -- (a statement the workers run reads one copy of a shard: with several, the copies would differ)
    ELSIF EXISTS (SELECT FROM pg_catalog.pg_dist_shard s JOIN pg_catalog.pg_dist_placement p ON p.shardid = s.shardid
                  WHERE s.logicalrelid = sc.source GROUP BY s.shardid HAVING count(*) > 1)
          OR coalesce(pg_catalog.current_setting('citus.shard_replication_factor', true), '1')::integer > 1 THEN
      reason := format('source %s or the stored values would have shards with several copies (citus.shard_replication_factor)',
                       sc.source);
    ELSIF colocation IS NOT NULL AND colocation <> r.colocation THEN
      reason := format('source %s is not co-located with the experiment''s other sources', sc.source);
    END IF;
    IF reason IS NOT NULL THEN
      RETURN;
    END IF;
    colocation := r.colocation;
  END LOOP;
  IF n = 0 THEN
    reason := 'the experiment reads no source';
    RETURN;
  END IF;
  placement := 'distributed';
END
$$;

COMMENT ON FUNCTION experiment.citus_placement(experiment.experiments) IS
  'internal: distributed when every source of the experiment''s base metrics is a hash-distributed Citus table on its unit '
  'column (text), all co-located (its per-unit values are then computed on the workers); else local, and why';

-- whether a table of stored per-unit values is a distributed Citus table
CREATE OR REPLACE FUNCTION experiment.citus_is_distributed(t name) RETURNS boolean
  LANGUAGE plpgsql STABLE PARALLEL UNSAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
DECLARE
  r boolean;
BEGIN
  IF t IS NULL OR pg_catalog.to_regclass('pg_catalog.pg_dist_partition') IS NULL
     OR pg_catalog.to_regclass(format('experiment.%I', t)) IS NULL THEN
    RETURN false;
  END IF;
  EXECUTE 'SELECT EXISTS (SELECT FROM pg_catalog.pg_dist_partition p WHERE p.logicalrelid = $1)'
    INTO r USING format('experiment.%I', t)::regclass;
  RETURN r;
END
$$;

COMMENT ON FUNCTION experiment.citus_is_distributed(name) IS
  'internal: whether a table of stored per-unit values is distributed by Citus';

-- on a worker: run the statements of one shard group, given per shard of the stored per-unit
-- values (its qualified name, the key of stmts); each statement returns one timestamptz (the
-- latest event time its scan read, or NULL), returned in order. It is called by the query of
-- experiment.citus_run_shards(), once per shard, with the shard's tableoid. The settings are
-- those of refresh(): the statements read times and windows in UTC as on the coordinator
CREATE OR REPLACE FUNCTION experiment.citus_shard_run(shard oid, stmts jsonb) RETURNS timestamptz[]
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
  -- (where the coordinator holds shards, it runs the shard's task in the refresh's own session,
  -- in which Citus hides shards from pg_class: the lookup below and the checks of the source
  -- must see them)
  SET citus.override_table_visibility = off
AS $$
DECLARE
  key text;
  s text;
  t timestamptz;
  result timestamptz[] := '{}';
BEGIN
  SELECT format('%I.%I', n.nspname, c.relname) INTO key
    FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = shard;
  IF key IS NULL OR NOT stmts ? key THEN
    RAISE EXCEPTION 'no statements for shard % (%)', shard, key USING ERRCODE = 'internal_error';
  END IF;
  FOR s IN SELECT x FROM pg_catalog.jsonb_array_elements_text(stmts -> key) x LOOP
    EXECUTE s INTO t;
    result := result || t;
  END LOOP;
  RETURN result;
END
$$;

COMMENT ON FUNCTION experiment.citus_shard_run(oid, jsonb) IS
  'internal: on a Citus worker, runs the refresh statements of one shard group of stored per-unit values (experiment.refresh())';

REVOKE EXECUTE ON FUNCTION experiment.citus_shard_run(oid, jsonb) FROM PUBLIC;

-- the shard groups of a distributed table of stored per-unit values: per shard its qualified
-- name, and the qualified names of the co-located shards of the sources (in src_no order)
CREATE OR REPLACE FUNCTION experiment.citus_shard_groups(t name, sources regclass[])
  RETURNS TABLE (shard text, source_shards text[])
  LANGUAGE plpgsql STABLE PARALLEL UNSAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
BEGIN
  -- (co-located shards cover the same hash range; Citus's shard_name() shortens a long name as
  -- Citus does, and leaves out the schema public)
  RETURN QUERY EXECUTE
    'SELECT pg_catalog.shard_name(a.logicalrelid, a.shardid), '
    '       pg_catalog.array_agg(CASE WHEN n.nspname = ''public'' THEN ''public.'' ELSE '''' END '
    '                            || pg_catalog.shard_name(s.rel, b.shardid) ORDER BY s.o) '
    'FROM pg_catalog.pg_dist_shard a '
    'CROSS JOIN pg_catalog.unnest($2) WITH ORDINALITY AS s(rel, o) '
    'JOIN pg_catalog.pg_dist_shard b ON b.logicalrelid = s.rel AND b.shardminvalue = a.shardminvalue '
    'JOIN pg_catalog.pg_class c ON c.oid = s.rel JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace '
    'WHERE a.logicalrelid = format(''experiment.%I'', $1)::regclass GROUP BY a.logicalrelid, a.shardid'
    USING t, sources;
END
$$;

COMMENT ON FUNCTION experiment.citus_shard_groups(name, regclass[]) IS
  'internal: the shards of a distributed table of stored per-unit values with the co-located shards of the sources';

REVOKE EXECUTE ON FUNCTION experiment.citus_shard_groups(name, regclass[]) FROM PUBLIC;

-- run statements on the workers, per shard group of the distributed table t of stored per-unit
-- values: in each, @uv@ becomes the qualified name of the shard of t and @src1@, @src2@ ... the
-- literals of the co-located shards of sources[1], sources[2] ...; one call per shard that holds
-- units, all shards at once (Citus runs them in parallel); returns, per statement, the greatest
-- of its results over the shards
CREATE OR REPLACE FUNCTION experiment.citus_run_shards(t name, sources regclass[], stmts text[]) RETURNS timestamptz[]
  LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
DECLARE
  plan jsonb := '{}';
  g record;
  arr jsonb;
  s text;
  reps text[];
  result timestamptz[];
BEGIN
  IF pg_catalog.cardinality(stmts) = 0 THEN
    RETURN '{}';
  END IF;
  FOR g IN SELECT * FROM experiment.citus_shard_groups(t, sources) LOOP
    arr := '[]';
    FOREACH s IN ARRAY stmts LOOP
      s := pg_catalog.replace(s, '@uv@', g.shard);
      FOR k IN 1 .. coalesce(pg_catalog.cardinality(g.source_shards), 0) LOOP
        s := pg_catalog.replace(s, format('@src%s@', k), pg_catalog.quote_literal(g.source_shards[k]));
      END LOOP;
      arr := arr || pg_catalog.to_jsonb(s);
    END LOOP;
    plan := plan || pg_catalog.jsonb_build_object(g.shard, arr);
  END LOOP;
  -- one unit of each shard that holds units: the filter on the distribution column sends the
  -- query to exactly those shards, and each calls the worker function once
  EXECUTE format('SELECT pg_catalog.array_agg(r.u) FROM (SELECT pg_catalog.min(u.unit_id) AS u FROM experiment.%I u '
                 'GROUP BY u.tableoid::pg_catalog.regclass::text) r', t) INTO reps;
  IF reps IS NULL THEN
    RETURN '{}';
  END IF;
  -- (first a write of nothing to the same shards: Citus then commits the connections that run
  -- the workers' statements, which write, in two phases with the refresh; a SELECT alone would
  -- not mark them as modifying)
  EXECUTE format('UPDATE experiment.%I u SET reset = u.reset WHERE u.unit_id = ANY ($1)', t) USING reps;
  EXECUTE format('SELECT ARRAY(SELECT pg_catalog.max(x.t) FROM (SELECT experiment.citus_shard_run(u.tableoid, $1) AS r '
                 '  FROM experiment.%I u WHERE u.unit_id = ANY ($2)) s '
                 'CROSS JOIN LATERAL pg_catalog.unnest(s.r) WITH ORDINALITY AS x(t, o) GROUP BY x.o ORDER BY x.o)', t)
    INTO result USING plan, reps;
  RETURN result;
END
$$;

COMMENT ON FUNCTION experiment.citus_run_shards(name, regclass[], text[]) IS
  'internal: runs refresh statements on the Citus workers, once per shard group of a distributed table of per-unit values';

REVOKE EXECUTE ON FUNCTION experiment.citus_run_shards(name, regclass[], text[]) FROM PUBLIC;

-- the unit-hash partitions of the scans on the workers: each shard's units within
-- experiment.refresh_memory as a local refresh keeps all of them (experiment.refresh_partitions()
-- of the largest shard's analysed units), and the statement that gives the workers' sorts and
-- hashes a quarter of the bound as work_mem (refresh() does so on the coordinator)
CREATE OR REPLACE FUNCTION experiment.citus_shard_partitions(e experiment.experiments, t name, OUT parts integer,
                                                  OUT work_mem_sql text, OUT shard_units bigint)
  LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
DECLARE
  units bigint;
  key_bytes float8;
BEGIN
  EXECUTE format('SELECT pg_catalog.max(s.n), pg_catalog.avg(s.b) FROM (SELECT count(*) AS n, '
                 'pg_catalog.avg(pg_catalog.octet_length(u.unit_id)) AS b FROM experiment.%I u WHERE NOT u.multi '
                 'GROUP BY u.tableoid::pg_catalog.regclass::text) s', t) INTO units, key_bytes;
  parts := experiment.refresh_partitions(e, coalesce(units, 0), key_bytes);
  -- (the units of the largest shard, which size the scans' hash tables)
  shard_units := coalesce(units, 0);
  work_mem_sql := CASE WHEN experiment.refresh_work_mem() IS NOT NULL
                       THEN format('SELECT NULL::timestamptz FROM pg_catalog.set_config(''work_mem'', %L, true)',
                                   experiment.refresh_work_mem()) END;
END
$$;

COMMENT ON FUNCTION experiment.citus_shard_partitions(experiment.experiments, name) IS
  'internal: the unit-hash partitions of the scans of a distributed refresh on each shard, the work_mem of the workers'' statements '
  'and the analysed units of the largest shard';

REVOKE EXECUTE ON FUNCTION experiment.citus_shard_partitions(experiment.experiments, name) FROM PUBLIC;

-- a statement with the literal of a scan's source replaced by the placeholder of the source's
-- shard (experiment.citus_run_shards())
CREATE OR REPLACE FUNCTION experiment.citus_on_shard_sql(s experiment.source_scan, sql text) RETURNS text
  LANGUAGE sql IMMUTABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
  SELECT pg_catalog.replace(sql, format('%L::regclass', s.source), format('@src%s@::regclass', s.src_no))
$$;

COMMENT ON FUNCTION experiment.citus_on_shard_sql(experiment.source_scan, text) IS
  'internal: a statement over a scan''s source made a statement over the source''s shard (its placeholder)';

-- the SQL of a call of experiment.source_unit_values_from() for a statement of
-- experiment.citus_run_shards(): the units of the shard of the stored per-unit values (@uv@; not
-- multi, reset = reset unless NULL, in partition part of nparts, about nunits of them) over the
-- source's shard
CREATE OR REPLACE FUNCTION experiment.citus_shard_call_sql(s experiment.source_scan, reset boolean, nparts integer, part integer,
                                                nunits bigint, end_at timestamptz, scan_from timestamptz,
                                                scan_to timestamptz, split_at timestamptz, partial boolean)
  RETURNS text
  LANGUAGE sql STABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
  SELECT experiment.citus_on_shard_sql(s, experiment.source_from_sql(s, '@uv@', reset, nparts, part, nunits, end_at,
                                                                     scan_from, scan_to, split_at, partial))
$$;

COMMENT ON FUNCTION experiment.citus_shard_call_sql(experiment.source_scan, boolean, integer, integer, bigint, timestamptz,
                                                    timestamptz, timestamptz, timestamptz, boolean) IS
  'internal: the experiment.source_unit_values_from() call of one scan over the shard of its source and the units of the shard '
  'of the stored per-unit values (experiment.citus_run_shards())';

-- a full refresh of the stored per-unit values on the Citus workers (experiment.refresh_unit_values()
-- with experiment.citus_placement() distributed): the units from the exposures written into a new
-- distributed table co-located with the sources; then on the workers, per shard group, the latest
-- time of each source's shard (the coordinator takes the greatest: the watermark's split), and one
-- scan of each source's shard; returns the new table's name. (Every read of a source is on a
-- worker, of its shard, as the metric's owner there: a read of a distributed source from the
-- coordinator as another role would open Citus connections as that role, which then may not
-- touch the placements this transaction has written.)
CREATE OR REPLACE FUNCTION experiment.citus_full_unit_values(e experiment.experiments, st experiment.unit_value_tables, fp text,
                                                  xsince timestamptz, OUT uv_rel name, OUT parts integer)
  LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
DECLARE
  sc experiment.source_scan;
  min_t0 timestamptz;
  max_t0 timestamptz;
  split timestamptz;
  pm record;
  typed_cols text := '';
  set_sql text;
  srcs regclass[] := '{}';
  scans experiment.source_scan[] := '{}';
  probes text[] := '{}';
  latest timestamptz[];
  stmts text[] := '{}';
  no_units text := experiment.unit_arrays_sql(
    '(SELECT NULL::text AS unit_id, NULL::text AS variant, NULL::timestamptz AS t0 WHERE false) u');
BEGIN
  PERFORM experiment.create_units_table(e);
  SELECT pg_catalog.min(u.t0), pg_catalog.max(u.t0) INTO min_t0, max_t0 FROM pg_temp.exp_units u WHERE NOT u.multi;
  FOR sc IN SELECT * FROM experiment.source_specs(e, min_t0, max_t0, true) LOOP
    srcs := srcs || sc.source;
    scans := scans || sc;
    -- the columns this scan fills, typed as the local refresh's CREATE TABLE AS types them
    SELECT typed_cols || pg_catalog.string_agg(format(', NULL::%s AS %s',
             CASE WHEN l.col ~ '^c?s[0-9]' THEN 'bigint'
                  WHEN EXISTS (SELECT FROM ROWS FROM (pg_catalog.unnest(sc.targets), pg_catalog.unnest(sc.aggs)) t(target, agg)
                               WHERE t.agg = 'sketch' AND substr(t.target, 2) = substr(l.col, 2))
                  THEN 'experiment.sketch' ELSE 'float8' END, l.col), '' ORDER BY l.ord)
      INTO typed_cols
      FROM (SELECT y.*, row_number() OVER () AS ord FROM experiment.unit_value_layout(sc, 'x', NULL) y) l;
    -- the latest event time of the source's shard (no watermark: none)
    probes := probes || CASE WHEN sc.time_column IS NULL THEN 'SELECT NULL::timestamptz'
      ELSE format('SELECT x.latest FROM %s, %s x', no_units,
                  experiment.citus_on_shard_sql(sc, experiment.source_call_sql(sc, e.end_at, sc.lower_bound,
                                                                               sc.upper_bound, NULL, true, false))) END;
  END LOOP;

  uv_rel := 'unit_values_' || pg_catalog.nextval('experiment.unit_value_tables_seq');
  EXECUTE format('CREATE UNLOGGED TABLE experiment.%I WITH (fillfactor = 80) AS '
                 'SELECT u.unit_id, u.variant, u.t0, false AS multi, false AS reset%s%s FROM pg_temp.exp_units u WITH NO DATA',
                 uv_rel, typed_cols, experiment.dims_columns_sql('u'));
  EXECUTE format('ALTER TABLE experiment.%I ALTER unit_id SET NOT NULL, ADD UNIQUE (unit_id)', uv_rel);
  -- (the comment and privileges before it is distributed: Citus gives them to the shards)
  PERFORM experiment.seal_unit_value_table(e, uv_rel, true);
  EXECUTE 'SELECT pg_catalog.create_distributed_table($1, ''unit_id'', colocate_with => $2)'
    USING format('experiment.%I', uv_rel), srcs[1]::text;
  -- the units, their values NULL (the workers fill those of the analysed units; the
  -- multi-variant ones keep NULL, as in a local table)
  EXECUTE format('INSERT INTO experiment.%I (unit_id, variant, t0, multi, reset%s) '
                 'SELECT u.unit_id, u.variant, u.t0, u.multi, false%s FROM pg_temp.exp_units u', uv_rel,
                 replace(experiment.dims_columns_sql('u'), 'u.', ''), experiment.dims_columns_sql('u'));

  -- the latest event times now, from every shard group that holds units (a shard without units
  -- of the experiment is not asked: its events can only make the latest time later, and an
  -- earlier split reads more events again, never fewer)
  latest := experiment.citus_run_shards(uv_rel, srcs, probes);
  -- beyond experiment.refresh_memory, each shard's units in unit-hash partitions
  SELECT * INTO pm FROM experiment.citus_shard_partitions(e, uv_rel);
  parts := pm.parts;
  IF pm.work_mem_sql IS NOT NULL THEN
    stmts := stmts || pm.work_mem_sql;
  END IF;
  CREATE TEMP TABLE exp_marks (LIKE experiment.source_watermarks) ON COMMIT DROP;
  FOR k IN 1 .. pg_catalog.cardinality(scans) LOOP
    sc := scans[k];
    split := CASE WHEN sc.time_column IS NULL THEN 'infinity'
                  ELSE coalesce(experiment.watermark_split(latest[k], sc.late_events), '-infinity') END;
    INSERT INTO pg_temp.exp_marks VALUES (e.id, sc.source, sc.unit_column, sc.reader, sc.time_column, sc.late_events,
                                          split, latest[k]);
    SELECT pg_catalog.string_agg(format('%s = %s', l.col, l.value_sql), ', ' ORDER BY l.ord)
      INTO set_sql
      FROM (SELECT y.*, row_number() OVER () AS ord FROM experiment.unit_value_layout(sc, 'x', NULL) y) l;
    -- on the worker: every analysed unit of the shard (zero-filled, as the local full refresh
    -- fills them), from one scan of the source's shard per partition
    FOR part IN 0 .. parts - 1 LOOP
      stmts := stmts || format(
        'WITH x AS MATERIALIZED (SELECT x.* FROM %s x WHERE x.unit_id IS NOT NULL), '
        'w AS (UPDATE @uv@ u SET %s FROM x WHERE x.unit_id = u.unit_id) SELECT NULL::timestamptz',
        experiment.citus_shard_call_sql(sc, NULL, parts, part, pm.shard_units, e.end_at, sc.lower_bound, sc.upper_bound, split, false), set_sql);
    END LOOP;
  END LOOP;
  -- the values, on the workers
  PERFORM experiment.citus_run_shards(uv_rel, srcs, stmts);
  EXECUTE format('ALTER EXTENSION experiment ADD TABLE experiment.%I', uv_rel);
  PERFORM experiment.install_unit_value_table(e, st, uv_rel, fp, xsince);
END
$$;

COMMENT ON FUNCTION experiment.citus_full_unit_values(experiment.experiments, experiment.unit_value_tables, text,
                                                      timestamptz) IS
  'internal: a full refresh of an experiment''s stored per-unit values in a distributed table, computed on the Citus workers; '
  'its name and the unit-hash partitions of each shard''s scans';

REVOKE EXECUTE ON FUNCTION experiment.citus_full_unit_values(experiment.experiments, experiment.unit_value_tables, text,
                                                             timestamptz) FROM PUBLIC;

-- the scans of an incremental refresh on the Citus workers (experiment.refresh_unit_values(), after
-- the new exposures are stored): per shard, each source's events from its watermark on for the
-- units read before, and all events of the new and reset units, merged into the stored values on
-- the worker; the watermarks moved as the local refresh moves them
CREATE OR REPLACE FUNCTION experiment.citus_incremental_scans(e experiment.experiments, relation name, min_t0 timestamptz,
                                                   max_t0 timestamptz)
  RETURNS integer
  LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
DECLARE
  sc experiment.source_scan;
  wm experiment.source_watermarks;
  split timestamptz;
  merge_set text;
  changed text;
  stmt text;
  srcs regclass[] := '{}';
  stmts text[] := '{}';
  splits timestamptz[] := '{}';
  scans experiment.source_scan[] := '{}';
  latest timestamptz[];
  pm record;
  first integer[] := '{}';
  k0 integer;
BEGIN
  -- beyond experiment.refresh_memory, each shard's units in unit-hash partitions
  SELECT * INTO pm FROM experiment.citus_shard_partitions(e, relation);
  IF pm.work_mem_sql IS NOT NULL THEN
    stmts := stmts || pm.work_mem_sql;
  END IF;
  FOR sc IN SELECT * FROM experiment.source_specs(e, min_t0, max_t0, true) LOOP
    SELECT * INTO wm FROM experiment.source_watermarks w
    WHERE w.experiment_id = e.id AND w.source = sc.source AND w.unit_column = sc.unit_column AND w.owner = sc.reader;
    split := greatest(wm.settled_before, experiment.watermark_split(wm.latest_event, sc.late_events));
    SELECT coalesce(pg_catalog.string_agg(format('%s = %s', l.col, l.value_sql), ', '), ''),
           format('(%s) IS DISTINCT FROM (%s)', pg_catalog.string_agg('u.' || l.col, ', '),
                  pg_catalog.string_agg(l.value_sql, ', '))
      INTO merge_set, changed
    FROM experiment.unit_value_layout(sc, 'x', 'u') l;
    first := first || (pg_catalog.cardinality(stmts) + 1);
    FOR part IN 0 .. pm.parts - 1 LOOP
      stmt := format('WITH x AS MATERIALIZED (SELECT x.unit_id, x.vals, x.skipped, x.latest, x.sketches FROM %s x',
                     experiment.citus_shard_call_sql(sc, false, pm.parts, part, pm.shard_units, e.end_at, wm.settled_before, sc.upper_bound, split, true));
      IF min_t0 IS NOT NULL THEN
        stmt := stmt || format(' UNION ALL SELECT x.unit_id, x.vals, x.skipped, NULL, x.sketches FROM %s x '
                               'WHERE x.unit_id IS NOT NULL',
                               experiment.citus_shard_call_sql(sc, true, pm.parts, part, 0, e.end_at, sc.lower_bound,
                                                               sc.upper_bound, split, true));
      END IF;
      stmt := stmt || format('), w AS (UPDATE @uv@ u SET %s FROM x WHERE x.unit_id = u.unit_id AND %s) '
                             'SELECT pg_catalog.max(x.latest) FROM x WHERE x.unit_id IS NULL', merge_set, changed);
      stmts := stmts || stmt;
    END LOOP;
    srcs := srcs || sc.source;
    splits := splits || split;
    scans := scans || sc;
  END LOOP;
  latest := experiment.citus_run_shards(relation, srcs, stmts);
  FOR k IN 1 .. coalesce(pg_catalog.cardinality(scans), 0) LOOP
    sc := scans[k];
    k0 := first[k];
    UPDATE experiment.source_watermarks w
      SET settled_before = splits[k],
          latest_event = greatest(w.latest_event, (SELECT pg_catalog.max(l) FROM pg_catalog.unnest(latest[k0:k0 + pm.parts - 1]) l)),
          late_events = sc.late_events
      WHERE w.experiment_id = e.id AND w.source = sc.source AND w.unit_column = sc.unit_column AND w.owner = sc.reader;
  END LOOP;
  RETURN pm.parts;
END
$$;

COMMENT ON FUNCTION experiment.citus_incremental_scans(experiment.experiments, name, timestamptz, timestamptz) IS
  'internal: the source scans of an incremental refresh of distributed stored per-unit values, on the Citus workers';

REVOKE EXECUTE ON FUNCTION experiment.citus_incremental_scans(experiment.experiments, name, timestamptz, timestamptz)
  FROM PUBLIC;

-- refreshes.placement and placement_reason of the refresh just stored
CREATE OR REPLACE FUNCTION experiment.citus_record_placement(e experiment.experiments, relation name) RETURNS void
  LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
DECLARE
  distributed boolean := experiment.citus_is_distributed(relation);
BEGIN
  UPDATE experiment.refreshes f
    SET placement = CASE WHEN distributed THEN 'distributed' ELSE 'local' END,
        placement_reason = CASE WHEN NOT distributed THEN (experiment.citus_placement(e)).reason END
    WHERE f.experiment_id = e.id;
END
$$;

COMMENT ON FUNCTION experiment.citus_record_placement(experiment.experiments, name) IS
  'internal: records in experiment.refreshes where a refresh computed its per-unit values (local or distributed) and why';

REVOKE EXECUTE ON FUNCTION experiment.citus_record_placement(experiment.experiments, name) FROM PUBLIC;

ALTER FUNCTION experiment.refresh(text, boolean) SECURITY DEFINER;
