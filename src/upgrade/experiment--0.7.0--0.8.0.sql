-- experiment 0.7.0 -> 0.8.0 (ALTER EXTENSION experiment UPDATE; doc/operations.md#upgrading)
--
-- The incremental refresh reads the new events first and then only the stored units they
-- touch, in one scan (src/unit_values.c bounds its memory in passes of its own); the scans of
-- new and reset units are partitioned by their own number and, with an index that leads with
-- the unit column, ask for their ids; the merged rows are kept one element per column. On the
-- Citus workers the scan of the stored units reads the events first too, in one statement.

DROP FUNCTION experiment.unit_value_layout(experiment.source_scan, text, text);

COMMENT ON COLUMN experiment.refreshes.unit_partitions IS
  'the unit-hash partitions the refresh read its sources in (1: all units at once; more when the units need more '
  'than experiment.refresh_memory); for an incremental refresh, the most partitions or passes over the units of any of its scans';

COMMENT ON FUNCTION experiment.source_unit_values_from(regclass, boolean, integer, integer, bigint, regclass, text,
    text[], text[], text[], interval[], interval[], boolean[], timestamptz, timestamptz, timestamptz, regrole,
    timestamptz, boolean, boolean) IS
  'internal: experiment.source_unit_values() of the units of a relation (unit_id, variant, t0, multi[, reset]): '
  'those not multi, with reset = reset unless NULL, in unit-hash partition part of nparts; expected_units sizes its hash table; '
  'partial with reset false reads the events first and then only the units with events, in passes within '
  'experiment.refresh_memory (the last row''s skipped[1]: their number); reset true with at most 100000 units asks a '
  'table source with an index that leads with unit_column (text or varchar) for their ids';

-- the columns of the stored per-unit values that one scan fills: their value for a unit that
-- has no event (sums and counts 0; the settled maximum of no event NULL, so that it merges),
-- and the SQL of their new value from a scan in split mode (alias x) merged into the stored one
-- (alias old; NULL: nothing stored, the scan read everything)
CREATE OR REPLACE FUNCTION experiment.unit_value_layout(s experiment.source_scan, x text, old text, flat boolean DEFAULT false)
  RETURNS TABLE (col text, empty text, value_sql text)
  LANGUAGE sql IMMUTABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
  WITH spec AS (
    SELECT t.k, t.target, substr(t.target, 2) AS i, s.aggs[t.k] AS agg,
           CASE substr(t.target, 1, 1) WHEN 'v' THEN 'c' ELSE 'q' END || substr(t.target, 2) AS settled,
           format(CASE WHEN s.aggs[t.k] = 'sketch' THEN f.sketch ELSE f.val END, x, t.k) AS before_split,
           format(CASE WHEN s.aggs[t.k] = 'sketch' THEN f.sketch ELSE f.val END,
                  x, pg_catalog.array_length(s.targets, 1) + t.k) AS from_split,
           format(f.skipped, x, t.k) AS skipped_before,
           format(f.skipped, x, pg_catalog.array_length(s.targets, 1) + t.k) AS skipped_from
    FROM pg_catalog.unnest(s.targets) WITH ORDINALITY AS t(target, k),
         -- (flat: the scan's elements as columns a<k>, k<k> and b<k>, experiment.unit_value_merge_sql())
         (SELECT CASE WHEN flat THEN '%s.a%s' ELSE '%s.vals[%s]' END AS val,
                 CASE WHEN flat THEN '%s.k%s' ELSE '%s.sketches[%s]' END AS sketch,
                 CASE WHEN flat THEN 'coalesce(%s.b%s, 0)' ELSE 'coalesce(%s.skipped[%s], 0)' END AS skipped) f
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

COMMENT ON FUNCTION experiment.unit_value_layout(experiment.source_scan, text, text, boolean) IS
  'internal: the stored per-unit value columns one scan fills, their value without events and the SQL of their value '
  'from a scan in split mode merged into the stored one (flat: its elements read as columns a<k>, b<k>, k<k>)';

-- the SQL that merges a scan's rows (alias x; flat: with its elements as columns a<k>, b<k> and
-- k<k>, experiment.unit_value_layout()) into the stored per-unit values (alias u) of an
-- incremental refresh: the SET list, and the condition that a unit's values changed
CREATE OR REPLACE FUNCTION experiment.unit_value_merge_sql(s experiment.source_scan, flat boolean,
                                                OUT merge_set text, OUT changed text)
  LANGUAGE sql IMMUTABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
  SELECT coalesce(pg_catalog.string_agg(format('%s = %s', l.col, l.value_sql), ', '), ''),
         format('(%s) IS DISTINCT FROM (%s)', pg_catalog.string_agg('u.' || l.col, ', '),
                pg_catalog.string_agg(l.value_sql, ', '))
  FROM experiment.unit_value_layout(s, 'x', 'u', flat) l
$$;

COMMENT ON FUNCTION experiment.unit_value_merge_sql(experiment.source_scan, boolean) IS
  'internal: the SET list and the change condition that merge a scan''s rows into an experiment''s stored per-unit values';

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
    EXECUTE format('CREATE TEMP TABLE exp_touch (unit_id text, latest timestamptz%s) ON COMMIT DROP', touch_cols);
    EXECUTE format('INSERT INTO pg_temp.exp_touch SELECT x.unit_id, x.latest%s FROM %s x', touch_sel,
                   experiment.source_from_sql(sc, format('experiment.%I', relation), false, 1, 0, nunits,
                                              e.end_at, wm.settled_before, sc.upper_bound, split, true));
    FOR part IN 0 .. reset_parts - 1 LOOP
      IF min_t0 IS NOT NULL THEN
        EXECUTE format('INSERT INTO pg_temp.exp_touch SELECT x.unit_id, NULL%s FROM %s x WHERE x.unit_id IS NOT NULL',
                       touch_sel,
                       experiment.source_from_sql(sc, format('experiment.%I', relation), true, reset_parts, part, 0,
                                                  e.end_at, sc.lower_bound, sc.upper_bound, split, true));
      END IF;
    END LOOP;
    ANALYZE pg_temp.exp_touch;
    -- (a unit whose events are all read again unchanged is not written)
    EXECUTE format('UPDATE experiment.%I u SET %s FROM pg_temp.exp_touch x WHERE x.unit_id = u.unit_id AND %s',
                   relation, merge_set, changed);
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
  nstmts integer[] := '{}';
  nst integer;
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
    SELECT m.merge_set, m.changed INTO merge_set, changed FROM experiment.unit_value_merge_sql(sc, false) m;
    first := first || (pg_catalog.cardinality(stmts) + 1);
    -- (the units stored before in the first statement, in one scan that reads the events first
    -- and bounds its memory itself, as a local refresh; the new and reset units partition by partition)
    nst := CASE WHEN min_t0 IS NULL THEN 1 ELSE pm.parts END;
    nstmts := nstmts || nst;
    FOR part IN 0 .. nst - 1 LOOP
      IF part = 0 THEN
        stmt := format('WITH x AS MATERIALIZED (SELECT x.unit_id, x.vals, x.skipped, x.latest, x.sketches FROM %s x',
                       experiment.citus_shard_call_sql(sc, false, 1, 0, pm.shard_units, e.end_at,
                                                       wm.settled_before, sc.upper_bound, split, true));
        IF min_t0 IS NOT NULL THEN
          stmt := stmt || ' UNION ALL';
        END IF;
      ELSE
        stmt := 'WITH x AS MATERIALIZED (';
      END IF;
      IF min_t0 IS NOT NULL THEN
        stmt := stmt || format(' SELECT x.unit_id, x.vals, x.skipped, NULL::timestamptz AS latest, x.sketches FROM %s x '
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
          latest_event = greatest(w.latest_event, (SELECT pg_catalog.max(l) FROM pg_catalog.unnest(latest[k0:k0 + nstmts[k] - 1]) l)),
          late_events = sc.late_events
      WHERE w.experiment_id = e.id AND w.source = sc.source AND w.unit_column = sc.unit_column AND w.owner = sc.reader;
  END LOOP;
  RETURN pm.parts;
END
$$;
