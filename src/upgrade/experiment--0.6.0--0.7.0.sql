-- experiment 0.6.0 -> 0.7.0 (ALTER EXTENSION experiment UPDATE; doc/operations.md#upgrading)
--
-- The winsorization caps by selection (exact_percentiles(), src/percentiles.c) instead of a
-- sort, with the sort kept beyond the refresh's work_mem. Citus: each shard receives the
-- statements once and fills in its shard names itself (citus_fill()).

-- exact percentiles of a query's float8 columns by selection, as percentile_cont computes them
-- (src/percentiles.c): the caps of experiment.winsorization_caps()
CREATE OR REPLACE FUNCTION experiment.exact_percentiles(query text, fractions float8[], ignore_zeros boolean[],
    max_values bigint)
  RETURNS float8[]
  AS 'MODULE_PATHNAME', 'exp_exact_percentiles'
  -- (it runs query through SPI: never in a parallel query)
  LANGUAGE C VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION experiment.exact_percentiles(text, float8[], boolean[], bigint) IS
  'internal: for column j of query (float8), its percentile_cont at fractions[2j-1] and fractions[2j] (NULL: none) '
  'over its values that are not NULL (nor 0 when ignore_zeros[j]), by selection; NULL when the columns hold more '
  'than max_values values in all (NULL: no limit)';

-- the caps of each base metric's values v<i> and pre-period values p<i> over the units of
-- vals_from (doc/analysis.md, "Winsorization"): the pooled percentiles winsorize_lower and
-- winsorize (over the values that are not 0 with cap_ignore_zeros; the pre-period values at
-- percentiles of their own) combined with the absolute caps cap_lower and cap_upper by
-- experiment.effective_caps(); caps and lower_caps are the upper and lower caps of v<i>,
-- pre_caps and pre_lower_caps those of p<i> (NULL: no cap), capped and pre_capped the SQL of
-- the capped columns (experiment.capped_sql())
CREATE OR REPLACE FUNCTION experiment.winsorization_caps(vals_from text,
    OUT caps float8[], OUT lower_caps float8[], OUT pre_caps float8[], OUT pre_lower_caps float8[],
    OUT capped text[], OUT pre_capped text[])
  LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
DECLARE
  pct_sql text;
  pick_sql text;
  cols_sql text;
  -- fractions[j]: the lower and upper fraction of the j-th capped column
  fractions float8[];
  ignore_zeros boolean[];
  -- slots[j]: where the two percentiles of the j-th capped column go in pct
  slots integer[];
  picked float8[];
  -- pct[4i-3], pct[4i-2]: the lower and upper percentile of v<i>; pct[4i-1], pct[4i]: of p<i>
  pct float8[];
BEGIN
  SELECT string_agg(format('percentile_cont(ARRAY[%L::float8, %L::float8]) WITHIN GROUP (ORDER BY v.%s)%s AS %s',
                           m2.winsorize_lower, m2.winsorize, c.col,
                           CASE WHEN m2.cap_ignore_zeros THEN format(' FILTER (WHERE v.%s <> 0)', c.col) ELSE '' END,
                           c.col), ', ' ORDER BY b.i, c.k) FILTER (WHERE c.pct),
         string_agg(CASE WHEN c.pct THEN format('q.%s[1], q.%s[2]', c.col, c.col) ELSE 'NULL, NULL' END,
                    ', ' ORDER BY b.i, c.k),
         string_agg(format('v.%s', c.col), ', ' ORDER BY b.i, c.k) FILTER (WHERE c.pct),
         array_agg(ARRAY[m2.winsorize_lower, m2.winsorize]::float8[] ORDER BY b.i, c.k) FILTER (WHERE c.pct),
         array_agg(m2.cap_ignore_zeros ORDER BY b.i, c.k) FILTER (WHERE c.pct),
         array_agg(ARRAY[4 * b.i - 4 + 2 * c.k - 1, 4 * b.i - 4 + 2 * c.k] ORDER BY b.i, c.k) FILTER (WHERE c.pct)
    INTO pct_sql, pick_sql, cols_sql, fractions, ignore_zeros, slots
    FROM pg_temp.exp_base b JOIN experiment.metrics m2 ON m2.name = b.name
    CROSS JOIN LATERAL (VALUES (1, 'v' || b.i), (2, 'p' || b.i)) c0(k, col)
    CROSS JOIN LATERAL (SELECT c0.k, c0.col, (m2.winsorize IS NOT NULL OR m2.winsorize_lower IS NOT NULL)
                                             AND (c0.k = 1 OR b.pre) AS pct) c;
  -- (the percentile of no value, all zeros with cap_ignore_zeros, is NULL: no percentile cap)
  IF pct_sql IS NOT NULL THEN
    -- by selection, within the refresh's work_mem (8 bytes a value); beyond it, one sort per
    -- column (percentile_cont of both fractions at once, spilling to disk)
    -- (fractions: the pairs, one after the other)
    picked := experiment.exact_percentiles(format('SELECT %s FROM %s v', cols_sql, vals_from),
                                           ARRAY(SELECT pg_catalog.unnest(fractions)),
                                           ignore_zeros, pg_catalog.pg_size_bytes(experiment.refresh_work_mem()) / 8);
    IF picked IS NOT NULL THEN
      pct := pg_catalog.array_fill(NULL::float8, ARRAY[4 * (SELECT pg_catalog.max(b.i) FROM pg_temp.exp_base b)]);
      FOR j IN 1 .. pg_catalog.array_length(slots, 1) LOOP
        pct[slots[j][1]] := picked[2 * j - 1];
        pct[slots[j][2]] := picked[2 * j];
      END LOOP;
    ELSE
      EXECUTE format('SELECT ARRAY[%s]::float8[] FROM (SELECT %s FROM %s v) q', pick_sql, pct_sql, vals_from) INTO pct;
    END IF;
  END IF;
  SELECT coalesce(array_agg(c.upper_cap ORDER BY b.i), '{}'), coalesce(array_agg(c.lower_cap ORDER BY b.i), '{}'),
         coalesce(array_agg(cp.upper_cap ORDER BY b.i), '{}'), coalesce(array_agg(cp.lower_cap ORDER BY b.i), '{}'),
         coalesce(array_agg(experiment.capped_sql('v', b.i, c.lower_cap, c.upper_cap, m2.cap_ignore_zeros) ORDER BY b.i), '{}'),
         coalesce(array_agg(experiment.capped_sql('p', b.i, cp.lower_cap, cp.upper_cap, m2.cap_ignore_zeros) ORDER BY b.i), '{}')
    INTO caps, lower_caps, pre_caps, pre_lower_caps, capped, pre_capped
    FROM pg_temp.exp_base b JOIN experiment.metrics m2 ON m2.name = b.name
    CROSS JOIN LATERAL experiment.effective_caps(pct[4 * b.i - 3], pct[4 * b.i - 2], m2.cap_lower, m2.cap_upper) c
    -- (no pre-period value: no caps)
    CROSS JOIN LATERAL experiment.effective_caps(pct[4 * b.i - 1], pct[4 * b.i], CASE WHEN b.pre THEN m2.cap_lower END,
                                                 CASE WHEN b.pre THEN m2.cap_upper END) cp;
END
$$;

-- a statement of experiment.citus_run_shards() for one shard group: @uv@ becomes uv (the
-- qualified name of the shard of the stored per-unit values) and @src<k>@ the literal of
-- source_shards[k], in one pass (a name that contains a placeholder is not replaced again)
CREATE OR REPLACE FUNCTION experiment.citus_fill(stmt text, uv text, source_shards text[]) RETURNS text
  LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
DECLARE
  parts text[] := pg_catalog.regexp_split_to_array(stmt, '@(uv|src[0-9]+)@');
  toks text[] := ARRAY(SELECT m.r[1] FROM pg_catalog.regexp_matches(stmt, '@(uv|src[0-9]+)@', 'g')
                         WITH ORDINALITY AS m(r, o) ORDER BY m.o);
  filled text := parts[1];
BEGIN
  FOR i IN 1 .. coalesce(pg_catalog.cardinality(toks), 0) LOOP
    IF toks[i] = 'uv' THEN
      filled := filled || uv;
    ELSIF substr(toks[i], 4)::integer BETWEEN 1 AND coalesce(pg_catalog.cardinality(source_shards), 0) THEN
      filled := filled || pg_catalog.quote_literal(source_shards[substr(toks[i], 4)::integer]);
    ELSE
      RAISE EXCEPTION 'no source shard for @%@ (% source shards)', toks[i], coalesce(pg_catalog.cardinality(source_shards), 0)
        USING ERRCODE = 'internal_error';
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
  srcs text[];
  s text;
  t timestamptz;
  result timestamptz[] := '{}';
BEGIN
  SELECT format('%I.%I', n.nspname, c.relname) INTO key
    FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = shard;
  IF key IS NULL OR NOT (stmts -> 'shards') ? key THEN
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

-- run statements on the workers, per shard group of the distributed table t of stored per-unit
-- values: in each, @uv@ becomes the qualified name of the shard of t and @src1@, @src2@ ... the
-- literals of the co-located shards of sources[1], sources[2] ... (experiment.citus_fill(), on
-- the worker); one call per shard that holds
-- units, all shards at once (Citus runs them in parallel); returns, per statement, the greatest
-- of its results over the shards
CREATE OR REPLACE FUNCTION experiment.citus_run_shards(t name, sources regclass[], stmts text[]) RETURNS timestamptz[]
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
