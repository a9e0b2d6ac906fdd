-- experiment 0.8.0 -> 0.9.0 (ALTER EXTENSION experiment UPDATE; doc/operations.md#upgrading)
--
-- An incremental refresh finds the stored rows of the units its scans touch by their ctid
-- (source_unit_values_from() returns it) instead of hashing every stored row; a full refresh
-- gives the stored table a statistics object on its variants and days of first exposure, so
-- that refresh() groups the units by them in parallel (tables stored by 0.8.0 get it at their
-- next full refresh). The results views show clustered_by.

-- (their result gains the column tid: dropped and created again)
DROP FUNCTION experiment.source_unit_values(text[], text[], timestamptz[], regclass, text, text[], text[], text[],
    interval[], interval[], boolean[], timestamptz, timestamptz, timestamptz, regrole, timestamptz, boolean, boolean);
DROP FUNCTION experiment.source_unit_values_from(regclass, boolean, integer, integer, bigint, regclass, text,
    text[], text[], text[], interval[], interval[], boolean[], timestamptz, timestamptz, timestamptz, regrole,
    timestamptz, boolean, boolean);

DROP FUNCTION experiment.unit_value_partitions(bigint, integer, integer, float8);

-- per-unit values of the metrics reading one source, in one scan (src/unit_values.c)
CREATE OR REPLACE FUNCTION experiment.source_unit_values(
    unit_ids text[], variants text[], t0s timestamptz[], source regclass, unit_column text,
    time_columns text[], value_columns text[], aggregations text[], lo_offsets interval[],
    hi_offsets interval[], use_end boolean[], end_at timestamptz, scan_from timestamptz, scan_to timestamptz,
    reader regrole DEFAULT NULL, split_at timestamptz DEFAULT NULL, probe boolean DEFAULT false,
    partial boolean DEFAULT false)
  RETURNS TABLE (unit_id text, variant text, t0 timestamptz, vals float8[], skipped bigint[], latest timestamptz,
                 split timestamptz, sketches experiment.sketch[], tid tid)
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
  'time column; with split_at or probe a last row without a unit carries the latest time read and the split; tid is NULL '
  '(source_unit_values_from(): the stored row''s ctid)';

-- the rows of experiment.source_unit_values(), the units read from a relation instead of passed
-- as arrays (src/unit_values.c): the units of units that are not multi, with reset = reset (NULL:
-- any) and in unit-hash partition part of nparts (experiment.unit_partition_sql()); expected_units
-- sizes the scan's hash table; with reset not NULL (the scans of an incremental refresh), tid is
-- the ctid of the unit's row in units, which the refresh's update finds it by
CREATE OR REPLACE FUNCTION experiment.source_unit_values_from(units regclass, reset boolean, nparts integer, part integer,
    expected_units bigint, source regclass, unit_column text,
    time_columns text[], value_columns text[], aggregations text[], lo_offsets interval[],
    hi_offsets interval[], use_end boolean[], end_at timestamptz, scan_from timestamptz, scan_to timestamptz,
    reader regrole DEFAULT NULL, split_at timestamptz DEFAULT NULL, probe boolean DEFAULT false,
    partial boolean DEFAULT false)
  RETURNS TABLE (unit_id text, variant text, t0 timestamptz, vals float8[], skipped bigint[], latest timestamptz,
                 split timestamptz, sketches experiment.sketch[], tid tid)
  AS 'MODULE_PATHNAME', 'exp_source_unit_values_from'
  -- (as experiment.source_unit_values(): it locks and checks the source through SPI before
  -- reading it as another role, never in a parallel query)
  LANGUAGE C STABLE PARALLEL UNSAFE;

COMMENT ON FUNCTION experiment.source_unit_values_from(regclass, boolean, integer, integer, bigint, regclass, text,
    text[], text[], text[], interval[], interval[], boolean[], timestamptz, timestamptz, timestamptz, regrole,
    timestamptz, boolean, boolean) IS
  'internal: experiment.source_unit_values() of the units of a relation (unit_id, variant, t0, multi[, reset]): '
  'those not multi, with reset = reset unless NULL, in unit-hash partition part of nparts; expected_units sizes its hash table; '
  'partial with reset false reads the events first and then only the units with events, in passes within '
  'experiment.refresh_memory (the last row''s skipped[1]: their number); reset true with at most 100000 units asks a '
  'table source with an index that leads with unit_column (text or varchar) for their ids; with reset not NULL, tid is the '
  'ctid of the unit''s row in units';

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
  -- (sized for the partition's share of the units, and a twentieth more with several: the
  -- partitions' sizes vary; experiment.unit_value_partitions() counts the same)
  SELECT format('experiment.source_unit_values_from(%L::regclass, %L::boolean, %s, %s, %s, ', units, reset,
                nparts, part, coalesce(nunits, 0) / nparts + CASE WHEN nparts > 1 THEN coalesce(nunits, 0) / nparts / 20
                                                                   ELSE 0 END + 1024)
         || substr(experiment.source_call_sql(s, end_at, scan_from, scan_to, split_at, false, partial),
                   length('experiment.source_unit_values(a.ids, a.variants, a.t0s, ') + 1)
$$;

-- the number of unit-hash partitions that keeps the per-unit values of one partition within
-- experiment.refresh_memory (src/unit_values.c; doc/scaling.md, "Memory")
CREATE OR REPLACE FUNCTION experiment.unit_value_partitions(units bigint, specs integer, sources integer, key_bytes float8,
                                                 calendar_bounds integer DEFAULT NULL)
  RETURNS integer
  AS 'MODULE_PATHNAME', 'exp_unit_value_partitions'
  LANGUAGE C STABLE PARALLEL SAFE;

COMMENT ON FUNCTION experiment.unit_value_partitions(bigint, integer, integer, float8, integer) IS
  'internal: the number of unit-hash partitions a refresh of units units (scans of at most specs specs, '
  'sources scans, unit ids of key_bytes bytes on average, at most calendar_bounds distinct calendar offsets in a scan, '
  'NULL: two per spec) uses within experiment.refresh_memory (1: no bound)';

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
  -- (the calendar bounds of a scan: its distinct window offsets with months, and with days
  -- too outside UTC, where a day is not always 24 hours; src/unit_values.c)
  SELECT experiment.unit_value_partitions(coalesce(units, 0), coalesce(pg_catalog.max(pg_catalog.cardinality(s.targets)), 0),
                                          count(*)::integer, coalesce(key_bytes, 16),
                                          coalesce(pg_catalog.max(
                                            (SELECT count(DISTINCT o::text) FROM pg_catalog.unnest(s.los || s.his) o
                                             WHERE pg_catalog.date_part('month', o) <> 0 OR pg_catalog.date_part('year', o) <> 0
                                                OR (pg_catalog.date_part('day', o) <> 0
                                                    AND pg_catalog.current_setting('TimeZone') <> 'UTC')))::integer, 0))
    INTO r FROM experiment.source_specs(e, NULL, NULL, true) s;
  RETURN r;
END
$$;

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
  touch_cols text;
  touch_sel text;
  nreset bigint;
  reset_parts integer;
  passes integer;
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
    -- (the number of variants and days of first exposure, which the statistics of the columns
    -- alone put at one group per unit: with it, refresh() groups the units by them in parallel;
    -- a statistics object cannot be an extension member: it goes with its table, and pg_dump
    -- leaves it out as it does the table)
    EXECUTE format('CREATE STATISTICS experiment.%I (ndistinct) ON multi, variant, ((t0 AT TIME ZONE ''UTC'')::date) '
                   'FROM experiment.%I', relation || '_days', relation);
    -- (from a sample of 3,000 rows: enough for the variants and days, and 15 ms where the default
    -- sample of 30,000 takes 0.2-0.45 s at a million units)
    EXECUTE format('ALTER TABLE experiment.%I ALTER multi SET STATISTICS 10, ALTER variant SET STATISTICS 10, '
                   'ALTER t0 SET STATISTICS 10', relation);
    EXECUTE format('ALTER STATISTICS experiment.%I SET STATISTICS 10', relation || '_days');
    EXECUTE format('ANALYZE experiment.%I (multi, variant, t0)', relation);
    PERFORM experiment.seal_unit_value_table(e, relation, false);
    PERFORM experiment.install_unit_value_table(e, st, relation, fp, xsince);
    RETURN;
  END IF;

  -- incremental: the exposures received since the watermark change units or add them
  mode := 'incremental';
  relation := st.relation;
  -- (no other writer until this refresh commits: its update finds the stored rows by the ctids
  -- its scans read; readers, such as refresh_interactions(), go on)
  IF NOT distributed THEN
    EXECUTE format('LOCK TABLE experiment.%I IN EXCLUSIVE MODE', relation);
  END IF;
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
  EXECUTE format('SELECT pg_catalog.min(u.t0) FILTER (WHERE u.reset), count(*) FILTER (WHERE u.reset) '
                 'FROM pg_temp.exp_newx n JOIN experiment.%I u ON u.unit_id = n.unit_id WHERE NOT u.multi', relation)
    INTO min_t0, nreset;
  -- (the scans of the new and reset units: partitions for as many as they are)
  reset_parts := experiment.refresh_partitions(e, nreset, key_bytes);
  -- (reported: the most partitions or passes of a scan)
  partitions := reset_parts;
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
    -- (the scans' rows are kept with an element per column, x.vals[k] as x.a<k>, x.skipped[k]
    -- as x.b<k> and x.sketches[k] as x.k<k>: the update below reads each element several
    -- times, and an element of a small stored array costs a copy of the whole array)
    SELECT m.merge_set, m.changed INTO merge_set, changed FROM experiment.unit_value_merge_sql(sc, true) m;
    SELECT pg_catalog.string_agg(format(', a%s float8, b%s bigint, k%s experiment.sketch', k, k, k), '' ORDER BY k),
           pg_catalog.string_agg(format(', x.vals[%s], x.skipped[%s], x.sketches[%s]', k, k, k), '' ORDER BY k)
      INTO touch_cols, touch_sel
      FROM pg_catalog.generate_series(1, 2 * pg_catalog.cardinality(sc.targets)) k;
    -- the units read before: their events from the watermark on (the scan's lower bound), in one
    -- scan that reads those events first and then only the units that have some (within
    -- experiment.refresh_memory in passes of its own: src/unit_values.c); the new and reset units
    -- apart, all their events, with a hash table of their own that is small (beyond
    -- experiment.refresh_memory, partition by partition: each scan with the units of one)
    EXECUTE format('CREATE TEMP TABLE exp_touch (unit_id text, tid tid, latest timestamptz%s) ON COMMIT DROP',
                   touch_cols);
    EXECUTE format('INSERT INTO pg_temp.exp_touch SELECT x.unit_id, x.tid, x.latest%s FROM %s x', touch_sel,
                   experiment.source_from_sql(sc, format('experiment.%I', relation), false, 1, 0, nunits,
                                              e.end_at, wm.settled_before, sc.upper_bound, split, true));
    FOR part IN 0 .. reset_parts - 1 LOOP
      IF min_t0 IS NOT NULL THEN
        EXECUTE format('INSERT INTO pg_temp.exp_touch SELECT x.unit_id, x.tid, NULL%s FROM %s x WHERE x.unit_id IS NOT NULL',
                       touch_sel,
                       experiment.source_from_sql(sc, format('experiment.%I', relation), true, reset_parts, part, nreset,
                                                  e.end_at, sc.lower_bound, sc.upper_bound, split, true));
      END IF;
    END LOOP;
    ANALYZE pg_temp.exp_touch;
    -- (a unit whose events are all read again unchanged is not written; each stored row found by
    -- the ctid the scans read it at, in the order they read them, instead of hashing every
    -- stored row: nothing else writes the table while this refresh holds its EXCLUSIVE lock, and
    -- the scans ran after the updates before them; doc/scaling.md#cost)
    PERFORM experiment.execute_by_tid(format(
      'UPDATE experiment.%I u SET %s FROM pg_temp.exp_touch x WHERE u.ctid = x.tid AND u.unit_id = x.unit_id AND %s',
      relation, merge_set, changed));
    -- (the latest time the scan of the units read before saw, and its passes over them)
    SELECT pg_catalog.max(x.latest), pg_catalog.max(x.b1) INTO latest, passes FROM pg_temp.exp_touch x WHERE x.unit_id IS NULL;
    partitions := greatest(partitions, passes);
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

-- a statement of an incremental refresh that updates the stored per-unit values of the units its
-- scans read, each row found by its ctid (a nested loop of TID scans, not a hash of every stored
-- row nor a probe of the index on unit_id)
CREATE OR REPLACE FUNCTION experiment.execute_by_tid(stmt text) RETURNS void
  LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
  SET search_path = pg_catalog, experiment, pg_temp
  SET enable_hashjoin = off
  SET enable_mergejoin = off
  SET enable_indexscan = off
  SET enable_bitmapscan = off
  SET enable_seqscan = off
AS $$
BEGIN
  EXECUTE stmt;
END
$$;

COMMENT ON FUNCTION experiment.execute_by_tid(text) IS
  'internal: runs a statement of an incremental refresh that joins the units its scans read to their stored rows by ctid';

REVOKE EXECUTE ON FUNCTION experiment.execute_by_tid(text) FROM PUBLIC;

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
    PERFORM experiment.execute_grouped(format('CREATE TEMP TABLE exp_groups ON COMMIT DROP AS '
                   'SELECT v.multi, CASE WHEN NOT v.multi THEN v.variant END AS variant, '
                   'CASE WHEN NOT v.multi THEN (v.t0 AT TIME ZONE ''UTC'')::date END AS day, count(*) AS units, '
                   'count(*) FILTER (WHERE NOT v.multi AND v.t0 < %L::timestamptz) AS early_units, '
                   'pg_catalog.min(v.t0) AS min_t0, pg_catalog.max(v.t0) AS max_t0%s '
                   -- (grouped by the columns themselves, as the statistics of the stored table
                   -- name them: the planner knows there are few groups and aggregates in parallel;
                   -- the units in several variants are summed up by the readers below)
                   'FROM experiment.%I v GROUP BY v.multi, v.variant, (v.t0 AT TIME ZONE ''UTC'')::date',
                   e.start_at, aggs, uv.relation));
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
      PERFORM experiment.execute_grouped(format('CREATE TEMP TABLE exp_dim_units ON COMMIT DROP AS '
                     'SELECT d.j, d.value, v.variant, count(*) AS units FROM %s v '
                     'CROSS JOIN LATERAL (VALUES %s) AS d(j, value) GROUP BY 1, 2, 3', vals_from, raw_sql));
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
        PERFORM experiment.execute_grouped(format(
          'INSERT INTO experiment.dimension_stats (experiment_id, dimension, value, metric, variant, units, moments, '
          '  cuped_moments, cap, cap_lower, skipped_values, refreshed_at) '
          'SELECT %L, %L, a.value, k.metric, a.variant, a.units, k.m, k.c, k.cap, k.cap_lower, coalesce(k.skipped, 0), %L '
          'FROM (SELECT v.dim_value AS value, v.variant, count(*) AS units%s FROM %s v GROUP BY 1, 2) a '
          'CROSS JOIN LATERAL (VALUES %s) AS k(metric, m, c, cap, cap_lower, skipped)',
          e.id, dm.name, ts, d_aggs, dim_from, substr(d_unpivot, 3)));
        -- the strata of post-stratification: the values of stratify_by, with the pooled caps of
        -- the overall results (a pass of their own where this dimension's caps are per value)
        IF dm.name = e.stratify_by THEN
          IF dm.caps_per_value THEN
            PERFORM experiment.execute_grouped(format(
              'CREATE TEMP TABLE exp_strata ON COMMIT DROP AS SELECT a.value, k.metric, a.variant, k.m, k.c '
              'FROM (SELECT v.dim_value AS value, v.variant%s FROM %s v GROUP BY 1, 2) a '
              'CROSS JOIN LATERAL (VALUES %s) AS k(metric, m, c, cap, cap_lower, skipped)',
              nq_aggs, dim_from, substr(nq_unpivot, 3)));
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
       s.stratified_by, s.clustered_by
FROM s
WHERE experiment.may_read_metric(s.metric);

COMMENT ON VIEW experiment.results IS
  'one row per experiment, metric and treatment variant at the latest refresh: role, test results under the experiment''s analysis, adjusted p-value and lift interval, Bayesian chance to win and risks, significance, guardrail verdict (ok, failed or inconclusive against the non-inferiority margin), the dimension of the strata when post-stratified, the cluster when the test counted clusters';

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
       NULL::text AS stratified_by, NULL::text AS clustered_by
FROM s
WHERE experiment.may_read_metric(s.metric);

ALTER FUNCTION experiment.refresh(text, boolean) SECURITY DEFINER;
