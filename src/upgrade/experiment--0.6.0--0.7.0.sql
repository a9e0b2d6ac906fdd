-- experiment 0.6.0 -> 0.7.0 (ALTER EXTENSION experiment UPDATE; doc/operations.md#upgrading)
--
-- The winsorization caps by selection (exact_percentiles(), src/percentiles.c) instead of a
-- sort, with the sort kept beyond the refresh's work_mem.

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
