-- ---------------------------------------------------------------------------
-- Citus: per-unit values computed on the workers (doc/scaling.md, "Citus")
-- ---------------------------------------------------------------------------
-- When every source of an experiment's base metrics is a hash-distributed Citus table whose
-- distribution column is the metrics' unit column (text), all co-located, refresh() keeps the
-- stored per-unit values in a distributed table co-located with them: the units (from the
-- exposures on the coordinator) are written into it, each worker computes the values of the
-- units of its shards from the co-located shards of the sources (experiment.source_unit_values()
-- over shard-local tables), and the later passes (moments per variant and day, dimensions,
-- CUPED, sketches) are aggregates that Citus pushes down. Without Citus, or when the sources are
-- not distributed and co-located, refresh() reads the sources on the coordinator as before.
-- Citus is found at run time: the extension does not depend on it.

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
CREATE FUNCTION experiment.citus_placement(e experiment.experiments, OUT placement text, OUT reason text)
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
CREATE FUNCTION experiment.citus_is_distributed(t name) RETURNS boolean
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

-- a statement of experiment.citus_run_shards() for one shard group: @uv@ becomes uv (the
-- qualified name of the shard of the stored per-unit values) and @src<k>@ the literal of
-- source_shards[k], in one pass (a name that contains a placeholder is not replaced again; a
-- placeholder beyond the sources stays as it is)
CREATE FUNCTION experiment.citus_fill(stmt text, uv text, source_shards text[]) RETURNS text
  LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
DECLARE
  parts text[] := pg_catalog.regexp_split_to_array(stmt, '@(uv|src[1-9][0-9]{0,8})@');
  toks text[] := ARRAY(SELECT m.r[1] FROM pg_catalog.regexp_matches(stmt, '@(uv|src[1-9][0-9]{0,8})@', 'g')
                         WITH ORDINALITY AS m(r, o) ORDER BY m.o);
  filled text := parts[1];
  k integer;
BEGIN
  FOR i IN 1 .. coalesce(pg_catalog.cardinality(toks), 0) LOOP
    k := CASE WHEN toks[i] = 'uv' THEN 0 ELSE substr(toks[i], 4)::integer END;
    IF k = 0 THEN
      filled := filled || uv;
    ELSIF k <= coalesce(pg_catalog.cardinality(source_shards), 0) THEN
      filled := filled || pg_catalog.quote_literal(source_shards[k]);
    ELSE
      -- (no such source: the text stays as it is)
      filled := filled || '@' || toks[i] || '@';
    END IF;
    filled := filled || parts[i + 1];
  END LOOP;
  RETURN filled;
END
$$;
COMMENT ON FUNCTION experiment.citus_fill(text, text, text[]) IS
  'internal: a statement of experiment.citus_run_shards() with the shard names of one shard group in place of @uv@ and @src<k>@';

-- on a worker: run the statements of one shard group. The plan stmts holds them once
-- (stmts, with the placeholders of experiment.citus_fill()) and, per shard of the stored
-- per-unit values (its qualified name, the key of shards), the co-located shards of the
-- sources; each statement returns one timestamptz (the latest event time its scan read, or
-- NULL), returned in order. It is called by the query of experiment.citus_run_shards(), once
-- per shard, with the shard's tableoid. The settings are those of refresh(): the statements
-- read times and windows in UTC as on the coordinator
CREATE FUNCTION experiment.citus_shard_run(shard oid, stmts jsonb) RETURNS timestamptz[]
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
  srcs text[];
  s text;
  t timestamptz;
  result timestamptz[] := '{}';
BEGIN
  SELECT format('%I.%I', n.nspname, c.relname) INTO key
    FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = shard;
  IF key IS NULL OR NOT coalesce((stmts -> 'shards') ? key, false)
     OR pg_catalog.jsonb_typeof(stmts -> 'stmts') IS DISTINCT FROM 'array' THEN
    RAISE EXCEPTION 'no statements for shard % (%)', shard, key USING ERRCODE = 'internal_error';
  END IF;
  srcs := ARRAY(SELECT x FROM pg_catalog.jsonb_array_elements_text(stmts -> 'shards' -> key) WITH ORDINALITY AS a(x, o)
                ORDER BY a.o);
  FOR s IN SELECT x FROM pg_catalog.jsonb_array_elements_text(stmts -> 'stmts') WITH ORDINALITY AS a(x, o) ORDER BY a.o LOOP
    EXECUTE experiment.citus_fill(s, key, srcs) INTO t;
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
CREATE FUNCTION experiment.citus_shard_groups(t name, sources regclass[])
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
-- literals of the co-located shards of sources[1], sources[2] ... (experiment.citus_fill(), on
-- the worker); one call per shard that holds
-- units, all shards at once (Citus runs them in parallel); returns, per statement, the greatest
-- of its results over the shards
CREATE FUNCTION experiment.citus_run_shards(t name, sources regclass[], stmts text[]) RETURNS timestamptz[]
  LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
DECLARE
  plan jsonb;
  reps text[];
  result timestamptz[];
BEGIN
  IF pg_catalog.cardinality(stmts) = 0 THEN
    RETURN '{}';
  END IF;
  -- the statements once and the shard names of every group (each worker fills in its own): a
  -- plan that grows with the statements plus the shards, not with their product
  SELECT pg_catalog.jsonb_build_object('stmts', pg_catalog.to_jsonb(stmts),
                                       'shards', coalesce(pg_catalog.jsonb_object_agg(g.shard,
                                                            pg_catalog.to_jsonb(coalesce(g.source_shards, '{}'))), '{}'))
    INTO plan FROM experiment.citus_shard_groups(t, sources) g;
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
CREATE FUNCTION experiment.citus_shard_partitions(e experiment.experiments, t name, OUT parts integer,
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
CREATE FUNCTION experiment.citus_on_shard_sql(s experiment.source_scan, sql text) RETURNS text
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
CREATE FUNCTION experiment.citus_shard_call_sql(s experiment.source_scan, reset boolean, nparts integer, part integer,
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
CREATE FUNCTION experiment.citus_full_unit_values(e experiment.experiments, st experiment.unit_value_tables, fp text,
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
CREATE FUNCTION experiment.citus_incremental_scans(e experiment.experiments, relation name, min_t0 timestamptz,
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
COMMENT ON FUNCTION experiment.citus_incremental_scans(experiment.experiments, name, timestamptz, timestamptz) IS
  'internal: the source scans of an incremental refresh of distributed stored per-unit values, on the Citus workers';
REVOKE EXECUTE ON FUNCTION experiment.citus_incremental_scans(experiment.experiments, name, timestamptz, timestamptz)
  FROM PUBLIC;

-- refreshes.placement and placement_reason of the refresh just stored
CREATE FUNCTION experiment.citus_record_placement(e experiment.experiments, relation name) RETURNS void
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
