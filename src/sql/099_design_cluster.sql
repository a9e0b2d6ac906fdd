-- ---------------------------------------------------------------------------
-- Cluster-randomised experiments: the declaration of an experiment's clusters (a mapping
-- relation unit -> cluster, or a key of the exposures' attributes), and the clustered tests
-- that refresh() computes from the stored per-unit values: per cluster the sum of the
-- per-unit values and the number of units, tested with the delta-method ratio estimator
-- over clusters (doc/designs-clusters.md)
-- ---------------------------------------------------------------------------

ALTER TABLE experiment.experiments
  ADD COLUMN cluster_relation regclass,
  ADD COLUMN cluster_unit_column text,
  ADD COLUMN cluster_column text,
  ADD COLUMN cluster_attribute text;
COMMENT ON COLUMN experiment.experiments.cluster_relation IS
  'cluster-randomised experiments: the relation (table, materialized view or partitioned table, without row-level security) that maps each unit to its cluster; NULL: not clustered, or clustered by cluster_attribute; fixed when the experiment leaves draft';
COMMENT ON COLUMN experiment.experiments.cluster_unit_column IS
  'the column of cluster_relation that holds the unit id (compared as text with experiment.exposures.unit_id)';
COMMENT ON COLUMN experiment.experiments.cluster_column IS
  'the column of cluster_relation that holds the unit''s cluster (company, household, region)';
COMMENT ON COLUMN experiment.experiments.cluster_attribute IS
  'cluster-randomised experiments: the key of experiment.exposures.attributes whose value (in the unit''s first exposure) is the unit''s cluster; NULL: not clustered, or clustered by cluster_relation';

ALTER TABLE experiment.variant_stats
  ADD COLUMN clusters bigint,
  ADD COLUMN cluster_moments experiment.moments,
  ADD COLUMN cluster_cuped_moments experiment.moments;
COMMENT ON COLUMN experiment.variant_stats.clusters IS 'clustered experiments: the clusters of the variant (with at least one analysed unit)';
COMMENT ON COLUMN experiment.variant_stats.cluster_moments IS
  'clustered experiments: bivariate moments over the variant''s clusters of (sum of the capped per-unit values, units); for ratio metrics (sum of numerators, sum of denominators)';
COMMENT ON COLUMN experiment.variant_stats.cluster_cuped_moments IS
  'clustered experiments with a CUPED pre-period: 4-variable moments over clusters of (sum of y, units, sum of pre-period y, units); for ratio metrics of the four sums';

ALTER TABLE experiment.refreshes
  ADD COLUMN clusters bigint,
  ADD COLUMN clustered_units bigint,
  ADD COLUMN unclustered_units bigint,
  ADD COLUMN mixed_clusters bigint;
COMMENT ON COLUMN experiment.refreshes.clusters IS 'clustered experiments: the (cluster, variant) pairs analysed';
COMMENT ON COLUMN experiment.refreshes.clustered_units IS 'clustered experiments: the analysed units that have a cluster';
COMMENT ON COLUMN experiment.refreshes.unclustered_units IS
  'clustered experiments: analysed units without a cluster (none in cluster_relation, or no cluster_attribute in the first exposure), left out of the clustered tests';
COMMENT ON COLUMN experiment.refreshes.mixed_clusters IS
  'clustered experiments: clusters whose units are in more than one variant (the randomisation was not by cluster); each variant''s part counts as a cluster';

-- the rules of a cluster declaration, in the wordings of the catalogue's errors; also run by
-- refresh() (the relation may have changed since)
CREATE FUNCTION experiment.validate_clusters(e experiment.experiments) RETURNS void
  LANGUAGE plpgsql STABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
DECLARE
  kind "char";
  rls boolean;
  col text;
  what text;
BEGIN
  IF e.cluster_relation IS NULL THEN
    IF e.cluster_unit_column IS NOT NULL OR e.cluster_column IS NOT NULL THEN
      RAISE EXCEPTION 'cluster_% of experiment "%" needs cluster_relation, got NULL',
        CASE WHEN e.cluster_unit_column IS NOT NULL THEN 'unit_column' ELSE 'column' END, left(e.id, 200)
        USING ERRCODE = 'invalid_parameter_value',
              HINT = 'Set cluster_relation, cluster_unit_column and cluster_column together (or none of them).';
    END IF;
  ELSE
    IF e.cluster_attribute IS NOT NULL THEN
      RAISE EXCEPTION 'cluster_attribute of experiment "%" must be NULL when cluster_relation is set, got "%"',
        left(e.id, 200), left(e.cluster_attribute, 200)
        USING ERRCODE = 'invalid_parameter_value',
              HINT = 'Declare the clusters by a relation (cluster_relation, cluster_unit_column, cluster_column) or by a key of the exposures'' attributes (cluster_attribute), not both.';
    END IF;
    SELECT c.relkind, c.relrowsecurity INTO kind, rls FROM pg_catalog.pg_class c WHERE c.oid = e.cluster_relation;
    -- (refresh() reads it as the extension's owner: nothing in it may run code of its own, as a
    -- view's query, a foreign table's server or a row-level security policy would)
    IF kind IS NULL OR kind NOT IN ('r', 'm', 'p') OR rls THEN
      RAISE EXCEPTION 'invalid cluster_relation % of experiment "%"',
        coalesce(e.cluster_relation::text, e.cluster_relation::oid::text), left(e.id, 200)
        USING ERRCODE = 'invalid_parameter_value',
              HINT = 'Use a table, materialized view or partitioned table without row-level security (no view or foreign table).';
    END IF;
    FOREACH what IN ARRAY ARRAY['cluster_unit_column', 'cluster_column'] LOOP
      col := CASE what WHEN 'cluster_unit_column' THEN e.cluster_unit_column ELSE e.cluster_column END;
      IF col IS NULL THEN
        RAISE EXCEPTION '% of experiment "%" must name a column of %, got NULL', what, left(e.id, 200), e.cluster_relation
          USING ERRCODE = 'invalid_parameter_value',
                HINT = 'Set cluster_relation, cluster_unit_column and cluster_column together (or none of them).';
      END IF;
      IF NOT EXISTS (SELECT FROM pg_catalog.pg_attribute a
                     WHERE a.attrelid = e.cluster_relation AND a.attname = col AND a.attnum > 0 AND NOT a.attisdropped) THEN
        RAISE EXCEPTION '% of experiment "%" must name a column of %, got "%"', what, left(e.id, 200),
          e.cluster_relation, left(col, 200)
          USING ERRCODE = 'invalid_parameter_value',
                HINT = experiment.hint_list(ARRAY(SELECT a.attname::text FROM pg_catalog.pg_attribute a
                                                  WHERE a.attrelid = e.cluster_relation AND a.attnum > 0
                                                    AND NOT a.attisdropped ORDER BY a.attnum),
                                            format('columns of %s', e.cluster_relation), e.cluster_relation::text);
      END IF;
    END LOOP;
    IF e.cluster_unit_column = e.cluster_column THEN
      RAISE EXCEPTION 'cluster_column of experiment "%" must differ from cluster_unit_column, got "%" for both',
        left(e.id, 200), left(e.cluster_column, 200)
        USING ERRCODE = 'invalid_parameter_value';
    END IF;
  END IF;
  IF e.cluster_attribute = '' THEN
    PERFORM experiment.raise_invalid_value(format('cluster_attribute of experiment "%s"', left(e.id, 200)), '""',
                                           'a key of experiment.exposures.attributes (NULL: none)');
  END IF;
  IF (e.cluster_relation IS NOT NULL OR e.cluster_attribute IS NOT NULL) AND e.stratify_by IS NOT NULL THEN
    RAISE EXCEPTION 'stratify_by of experiment "%" must be NULL in a clustered experiment, got "%"',
      left(e.id, 200), left(e.stratify_by, 200)
      USING ERRCODE = 'invalid_parameter_value',
            HINT = 'Post-stratification and clustered tests are not combined: set stratify_by or the cluster declaration to NULL.';
  END IF;
END
$$;
COMMENT ON FUNCTION experiment.validate_clusters(experiment.experiments) IS
  'internal: nothing, or the error 22023 naming the field of an experiment''s cluster declaration that is wrong';

CREATE FUNCTION experiment.experiments_cluster_check() RETURNS trigger
  LANGUAGE plpgsql
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
BEGIN
  -- the design is fixed when the experiment starts: nobody picks the clusters after seeing the data
  IF TG_OP = 'UPDATE' AND OLD.status <> 'draft'
     AND (NEW.cluster_relation, NEW.cluster_unit_column, NEW.cluster_column, NEW.cluster_attribute)
         IS DISTINCT FROM (OLD.cluster_relation, OLD.cluster_unit_column, OLD.cluster_column, OLD.cluster_attribute) THEN
    RAISE EXCEPTION 'cannot change the cluster declaration of experiment "%": it is %', left(OLD.id, 200), OLD.status
      USING ERRCODE = 'invalid_parameter_value',
            HINT = 'cluster_relation, cluster_unit_column, cluster_column and cluster_attribute are fixed when the experiment starts; declare them while it is a draft.';
  END IF;
  PERFORM experiment.validate_clusters(NEW);
  -- who declares a mapping may read it (refresh() checks the experiment's owner_role again)
  IF NEW.cluster_relation IS NOT NULL
     AND (TG_OP = 'INSERT' OR (NEW.cluster_relation, NEW.cluster_unit_column, NEW.cluster_column)
                               IS DISTINCT FROM (OLD.cluster_relation, OLD.cluster_unit_column, OLD.cluster_column))
     AND NOT (pg_catalog.has_column_privilege(NEW.cluster_relation, NEW.cluster_unit_column, 'SELECT')
              AND pg_catalog.has_column_privilege(NEW.cluster_relation, NEW.cluster_column, 'SELECT')) THEN
    RAISE EXCEPTION 'permission denied to declare cluster_relation % of experiment "%"', NEW.cluster_relation,
      left(NEW.id, 200)
      USING ERRCODE = 'insufficient_privilege',
            DETAIL = format('Role %s may not SELECT columns %s, %s of it.', current_user, NEW.cluster_unit_column,
                            NEW.cluster_column);
  END IF;
  RETURN NEW;
END
$$;
COMMENT ON FUNCTION experiment.experiments_cluster_check() IS
  'internal: trigger: the rules of an experiment''s cluster declaration (experiment.validate_clusters)';

CREATE TRIGGER experiments_cluster_check
  BEFORE INSERT OR UPDATE OF cluster_relation, cluster_unit_column, cluster_column, cluster_attribute, stratify_by
  ON experiment.experiments
  FOR EACH ROW EXECUTE FUNCTION experiment.experiments_cluster_check();
COMMENT ON TRIGGER experiments_cluster_check ON experiment.experiments IS
  'checks the cluster declaration (22023 naming the field)';

-- the name of an experiment's cluster in results (NULL: not clustered)
CREATE FUNCTION experiment.cluster_label(e experiment.experiments) RETURNS text
  LANGUAGE sql STABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
  SELECT CASE WHEN e.cluster_relation IS NOT NULL THEN format('%s.%s', e.cluster_relation, e.cluster_column)
              WHEN e.cluster_attribute IS NOT NULL THEN 'attributes.' || e.cluster_attribute END
$$;
COMMENT ON FUNCTION experiment.cluster_label(experiment.experiments) IS
  'internal: how results name an experiment''s cluster (relation.column or attributes.key); NULL when not clustered';

-- SQL of the experiment's units' clusters (unit_id, cluster): from the mapping relation (a
-- unit listed with several clusters takes the least, in byte order; NULL clusters are no
-- cluster), or from the attributes of each unit's first exposure
CREATE FUNCTION experiment.cluster_units_sql(e experiment.experiments) RETURNS text
  LANGUAGE plpgsql STABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
BEGIN
  IF e.cluster_relation IS NOT NULL THEN
    RETURN format('SELECT m.%I::text AS unit_id, pg_catalog.min(m.%I::text COLLATE "C") AS cluster FROM %s m '
                  'WHERE m.%I IS NOT NULL AND m.%I IS NOT NULL GROUP BY 1',
                  e.cluster_unit_column, e.cluster_column, e.cluster_relation, e.cluster_unit_column, e.cluster_column);
  END IF;
  RETURN format('SELECT xp.unit_id, (pg_catalog.array_agg(xp.attributes ->> %L ORDER BY xp.exposed_at, xp.variant))[1] AS cluster '
                'FROM experiment.exposures xp WHERE xp.experiment_id = %L '
                'AND (%L::timestamptz IS NULL OR xp.exposed_at < %L::timestamptz) GROUP BY 1',
                e.cluster_attribute, e.id, e.end_at, e.end_at);
END
$$;
COMMENT ON FUNCTION experiment.cluster_units_sql(experiment.experiments) IS
  'internal: SQL of the units'' clusters (unit_id, cluster) of a clustered experiment';

-- The clustered tests of an experiment, after refresh() has stored its unit-level results:
-- the units' capped per-unit values (vals_from, alias v; capped and pre_capped their SQL)
-- summed per cluster and variant, the moments over the clusters of (sum of y, units) - or for
-- ratio metrics (sum of numerators, sum of denominators) - and their delta-method ratio test
-- (ratio_ttest; cuped_ratio_ttest with the sums of the pre-period values), under the
-- experiment's analysis. The unit-level test is kept in metric_results.unit_test; the
-- enrollment counts clusters (the randomisation units, so that the SRM check is theirs);
-- results over time and per dimension, unit-level, are removed.
CREATE FUNCTION experiment.refresh_clusters(e experiment.experiments, vals_from text, capped text[], pre_capped text[],
                                            tuning float8, ts timestamptz)
  RETURNS void
  LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
DECLARE
  r record;
  sums text := '';
  aggs text := '';
  unpivot text := '';
  label text := experiment.cluster_label(e);
  n_clusters bigint;
  n_units bigint;
  n_mixed bigint;
  n_total bigint;
BEGIN
  IF label IS NULL THEN
    RETURN;
  END IF;
  PERFORM experiment.validate_clusters(e);
  -- (refresh() runs as the extension's owner: the experiment's owner role must be allowed to
  -- read what it declared)
  IF e.cluster_relation IS NOT NULL
     AND NOT (pg_catalog.has_column_privilege(e.owner_role, e.cluster_relation, e.cluster_unit_column, 'SELECT')
              AND pg_catalog.has_column_privilege(e.owner_role, e.cluster_relation, e.cluster_column, 'SELECT')) THEN
    RAISE EXCEPTION 'refresh of experiment "%": its owner role % may not read columns %, % of cluster_relation %', e.id,
      e.owner_role, e.cluster_unit_column, e.cluster_column, e.cluster_relation
      USING ERRCODE = 'insufficient_privilege',
            HINT = format('GRANT SELECT (%s, %s) ON %s TO %s.', quote_ident(e.cluster_unit_column),
                          quote_ident(e.cluster_column), e.cluster_relation, e.owner_role);
  END IF;

  -- per cluster and variant: the units and the sums of the capped values of the base metrics
  -- (a quantile's per-unit value is no sum)
  FOR r IN SELECT b.i, b.pre FROM pg_temp.exp_base b JOIN experiment.metrics m2 ON m2.name = b.name
           WHERE m2.aggregation <> 'quantile' ORDER BY b.i LOOP
    sums := sums || format(', pg_catalog.sum(%s) AS y%s', capped[r.i], r.i);
    IF r.pre THEN
      sums := sums || format(', pg_catalog.sum(%s) AS x%s', pre_capped[r.i], r.i);
    END IF;
  END LOOP;
  EXECUTE format('CREATE TEMP TABLE exp_cluster_vals ON COMMIT DROP AS '
                 'SELECT k.cluster, v.variant, count(*)::float8 AS n%s '
                 'FROM %s v JOIN (%s) k ON k.unit_id = v.unit_id WHERE k.cluster IS NOT NULL GROUP BY 1, 2',
                 sums, vals_from, experiment.cluster_units_sql(e));
  EXECUTE format('SELECT count(*) FROM %s v', vals_from) INTO n_total;
  SELECT count(*), coalesce(sum(c.n), 0)::bigint INTO n_clusters, n_units FROM pg_temp.exp_cluster_vals c;
  SELECT count(*) INTO n_mixed
    FROM (SELECT c.cluster FROM pg_temp.exp_cluster_vals c GROUP BY c.cluster HAVING count(*) > 1) x;

  -- the moments over clusters of each metric, per variant
  FOR r IN SELECT m2.name, m2.kind, b.i, b.pre,
                  (SELECT bn.i FROM pg_temp.exp_base bn WHERE bn.name = m2.numerator) AS ni,
                  (SELECT bd.i FROM pg_temp.exp_base bd WHERE bd.name = m2.denominator) AS di,
                  m2.cuped_lookback IS NOT NULL
                    AND coalesce((SELECT bn.pre FROM pg_temp.exp_base bn WHERE bn.name = m2.numerator), false)
                    AND coalesce((SELECT bd.pre FROM pg_temp.exp_base bd WHERE bd.name = m2.denominator), false) AS rpre,
                  row_number() OVER (ORDER BY m2.name) AS j
           FROM experiment.experiment_metrics em JOIN experiment.metrics m2 ON m2.name = em.metric
           LEFT JOIN pg_temp.exp_base b ON b.name = m2.name
           WHERE em.experiment_id = e.id AND m2.aggregation <> 'quantile'
             AND CASE WHEN m2.kind = 'ratio'
                      THEN EXISTS (SELECT FROM pg_temp.exp_base bn WHERE bn.name = m2.numerator)
                           AND EXISTS (SELECT FROM pg_temp.exp_base bd WHERE bd.name = m2.denominator)
                      ELSE b.i IS NOT NULL END
           ORDER BY m2.name LOOP
    IF r.kind = 'ratio' THEN
      aggs := aggs || format(', experiment.moments(c.y%s, c.y%s) AS a%s', r.ni, r.di, r.j);
      aggs := aggs || CASE WHEN r.rpre THEN format(', experiment.moments(c.y%s, c.y%s, c.x%s, c.x%s) AS c%s',
                                                   r.ni, r.di, r.ni, r.di, r.j)
                           ELSE format(', NULL::experiment.moments AS c%s', r.j) END;
    ELSE
      aggs := aggs || format(', experiment.moments(c.y%s, c.n) AS a%s', r.i, r.j);
      aggs := aggs || CASE WHEN r.pre THEN format(', experiment.moments(c.y%s, c.n, c.x%s, c.n) AS c%s', r.i, r.i, r.j)
                           ELSE format(', NULL::experiment.moments AS c%s', r.j) END;
    END IF;
    unpivot := unpivot || format(', (%L, a.a%s, a.c%s)', r.name, r.j, r.j);
  END LOOP;
  IF unpivot <> '' THEN
    EXECUTE format('UPDATE experiment.variant_stats vs SET clusters = x.clusters, cluster_moments = x.m, '
                   '  cluster_cuped_moments = x.c '
                   'FROM (SELECT a.variant, a.clusters, k.metric, k.m, k.c '
                   '      FROM (SELECT c.variant, count(*) AS clusters%s FROM pg_temp.exp_cluster_vals c GROUP BY 1) a '
                   '      CROSS JOIN LATERAL (VALUES %s) AS k(metric, m, c)) x '
                   'WHERE vs.experiment_id = %L AND vs.metric = x.metric AND vs.variant = x.variant',
                   aggs, substr(unpivot, 3), e.id);
  END IF;

  -- the tests: the delta-method ratio over clusters (adjusted by the pre-period ratio where
  -- both arms have one that varies), under the experiment's analysis; guardrails one-sided
  UPDATE experiment.metric_results mr
     SET unit_test = mr.test,
         method = k.method,
         test = experiment.metric_test(k.method, c.cluster_moments, t.cluster_moments, c.cluster_cuped_moments,
                                       t.cluster_cuped_moments, e.alpha, 'two-sided', tuning),
         bound_test = CASE WHEN mr.bound_test IS NOT NULL THEN
           experiment.metric_test(k.method, c.cluster_moments, t.cluster_moments, c.cluster_cuped_moments,
                                  t.cluster_cuped_moments, e.alpha,
                                  CASE WHEN m2.higher_is_better THEN 'greater' ELSE 'less' END, tuning) END,
         harm_test = CASE WHEN mr.harm_test IS NOT NULL THEN
           experiment.metric_test(k.method, c.cluster_moments, t.cluster_moments, c.cluster_cuped_moments,
                                  t.cluster_cuped_moments, e.alpha,
                                  CASE WHEN m2.higher_is_better THEN 'less' ELSE 'greater' END, tuning) END,
         clustered_by = label
    FROM experiment.metrics m2, experiment.variant_stats c, experiment.variant_stats t,
         LATERAL (SELECT experiment.metric_method('ratio', c.cluster_cuped_moments, t.cluster_cuped_moments) AS method) k
   WHERE mr.experiment_id = e.id AND mr.method <> 'quantile' AND m2.name = mr.metric
     AND c.experiment_id = e.id AND c.metric = mr.metric AND c.variant = mr.control_variant
     AND t.experiment_id = e.id AND t.metric = mr.metric AND t.variant = mr.variant;

  -- the randomisation units are the clusters: the sample and its SRM check count them
  UPDATE experiment.enrollment en
     SET units = coalesce((SELECT count(*) FROM pg_temp.exp_cluster_vals c WHERE c.variant = en.variant), 0)
   WHERE en.experiment_id = e.id;
  -- (unit-level tests over time and per dimension value would ignore the clusters)
  DELETE FROM experiment.results_daily rd WHERE rd.experiment_id = e.id;
  DELETE FROM experiment.dimension_results dr WHERE dr.experiment_id = e.id;
  UPDATE experiment.refreshes f
     SET clusters = n_clusters, clustered_units = n_units, unclustered_units = n_total - n_units,
         mixed_clusters = n_mixed
   WHERE f.experiment_id = e.id;
  DROP TABLE pg_temp.exp_cluster_vals;
END
$$;
COMMENT ON FUNCTION experiment.refresh_clusters(experiment.experiments, text, text[], text[], float8, timestamptz) IS
  'internal: the clustered tests of a clustered experiment (delta-method ratio over per-cluster sums and unit counts), from refresh()';
REVOKE EXECUTE ON FUNCTION experiment.refresh_clusters(experiment.experiments, text, text[], text[], float8, timestamptz)
  FROM PUBLIC;

-- ---------------------------------------------------------------------------
-- Switchback experiments: every (cluster, time window) of experiment.assign_switchback() is
-- a randomisation unit. The exposures name the switchback's cluster (a region) as unit_id and
-- the window's variant; the metrics' sources carry the same cluster in their unit column.
-- refresh() aggregates each metric's events per (cluster, window) after the window's burn-in
-- and tests the windows' values (doc/designs-clusters.md)
-- ---------------------------------------------------------------------------

ALTER TABLE experiment.experiments
  ADD COLUMN switchback_window interval,
  ADD COLUMN switchback_burn_in interval;
COMMENT ON COLUMN experiment.experiments.switchback_window IS
  'switchback experiments: the length of a time window (the window_size of experiment.assign_switchback; windows start at multiples of it from 1970-01-01 UTC); NULL: not a switchback';
COMMENT ON COLUMN experiment.experiments.switchback_burn_in IS
  'switchback experiments: the start of every window whose events are dropped (carry-over from the previous window''s variant); NULL: none; fixed when the experiment leaves draft';

-- the rules of a switchback declaration (22023 naming the field)
CREATE FUNCTION experiment.validate_switchback(e experiment.experiments) RETURNS void
  LANGUAGE plpgsql STABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
BEGIN
  IF e.switchback_window IS NULL THEN
    IF e.switchback_burn_in IS NOT NULL THEN
      RAISE EXCEPTION 'switchback_burn_in of experiment "%" needs switchback_window, got NULL', left(e.id, 200)
        USING ERRCODE = 'invalid_parameter_value', HINT = 'Set switchback_window, the length of a window, too.';
    END IF;
    RETURN;
  END IF;
  IF NOT (e.switchback_window >= interval '1 second') OR extract(year FROM e.switchback_window) <> 0
     OR extract(month FROM e.switchback_window) <> 0 THEN
    PERFORM experiment.raise_invalid_value(format('switchback_window of experiment "%s"', left(e.id, 200)),
                                           e.switchback_window::text,
                                           'a fixed length of at least 1 second, in days, hours, minutes or seconds (no months)');
  END IF;
  IF e.switchback_burn_in IS NOT NULL AND NOT (e.switchback_burn_in >= interval '0'
       AND e.switchback_burn_in < e.switchback_window AND extract(year FROM e.switchback_burn_in) = 0
       AND extract(month FROM e.switchback_burn_in) = 0) THEN
    PERFORM experiment.raise_invalid_value(format('switchback_burn_in of experiment "%s"', left(e.id, 200)),
                                           e.switchback_burn_in::text,
                                           format('a length in [0, switchback_window = %s), no months (NULL: none)',
                                                  e.switchback_window));
  END IF;
  IF e.cluster_relation IS NOT NULL OR e.cluster_attribute IS NOT NULL THEN
    RAISE EXCEPTION 'switchback_window of experiment "%" must be NULL in a cluster-randomised experiment, got %',
      left(e.id, 200), e.switchback_window
      USING ERRCODE = 'invalid_parameter_value',
            HINT = 'A switchback''s clusters are its (cluster, window) pairs: set cluster_relation and cluster_attribute to NULL.';
  END IF;
  IF e.stratify_by IS NOT NULL THEN
    RAISE EXCEPTION 'stratify_by of experiment "%" must be NULL in a switchback experiment, got "%"',
      left(e.id, 200), left(e.stratify_by, 200)
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
END
$$;
COMMENT ON FUNCTION experiment.validate_switchback(experiment.experiments) IS
  'internal: nothing, or the error 22023 naming the field of an experiment''s switchback declaration that is wrong';

CREATE FUNCTION experiment.experiments_switchback_check() RETURNS trigger
  LANGUAGE plpgsql
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
BEGIN
  IF TG_OP = 'UPDATE' AND OLD.status <> 'draft'
     AND (NEW.switchback_window, NEW.switchback_burn_in) IS DISTINCT FROM (OLD.switchback_window, OLD.switchback_burn_in) THEN
    RAISE EXCEPTION 'cannot change the switchback declaration of experiment "%": it is %', left(OLD.id, 200), OLD.status
      USING ERRCODE = 'invalid_parameter_value',
            HINT = 'switchback_window and switchback_burn_in are fixed when the experiment starts; declare them while it is a draft.';
  END IF;
  PERFORM experiment.validate_switchback(NEW);
  RETURN NEW;
END
$$;
COMMENT ON FUNCTION experiment.experiments_switchback_check() IS
  'internal: trigger: the rules of an experiment''s switchback declaration (experiment.validate_switchback)';

CREATE TRIGGER experiments_switchback_check
  BEFORE INSERT OR UPDATE OF switchback_window, switchback_burn_in, cluster_relation, cluster_attribute, stratify_by
  ON experiment.experiments
  FOR EACH ROW EXECUTE FUNCTION experiment.experiments_switchback_check();
COMMENT ON TRIGGER experiments_switchback_check ON experiment.experiments IS
  'checks the switchback declaration (22023 naming the field)';

-- The refresh of a switchback experiment, in full (called by refresh() instead of the
-- unit-level analysis): the windows are the (cluster, window) pairs with exposures before
-- end_at, their variant that of their exposures (a window exposed to several variants is
-- left out and counted in refreshes.multi_variant_units); per window and metric the value of
-- the metric's aggregation over the cluster's events in [window start + burn-in, window end)
-- before end_at (0 without events), read by experiment.source_unit_values() as the metric's
-- owner (one call per window start: a cluster is once in each), capped at percentiles pooled
-- over the windows; per variant the moments over windows; tests of each treatment against
-- control: Welch over windows (mean and proportion metrics), the delta-method ratio of sums
-- over windows (ratio metrics), under the experiment's analysis.
CREATE FUNCTION experiment.refresh_switchback(e experiment.experiments, control text) RETURNS void
  LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
DECLARE
  started timestamptz := clock_timestamp();
  ts timestamptz := now();
  wsec float8 := extract(epoch FROM e.switchback_window);
  burn interval := pg_catalog.make_interval(secs => extract(epoch FROM coalesce(e.switchback_burn_in, interval '0')));
  win interval := pg_catalog.make_interval(secs => extract(epoch FROM e.switchback_window));
  label text;
  r record;
  sc record;
  k integer := 0;
  cols text := '';
  joins text := '';
  cp record;
  aggs text := '';
  unpivot text := '';
  tuning float8;
  nwin bigint;
  nmixed bigint;
  min_t timestamptz;
  max_t timestamptz;
BEGIN
  PERFORM experiment.validate_switchback(e);
  label := format('switchback windows of %s (burn-in %s)', e.switchback_window,
                  coalesce(e.switchback_burn_in, interval '0'));
  PERFORM experiment.drop_refresh_tables();
  -- the windows: (cluster, window number) with their variant
  CREATE TEMP TABLE exp_sb_windows ON COMMIT DROP AS
    SELECT xp.unit_id AS cluster, pg_catalog.floor(extract(epoch FROM xp.exposed_at) / wsec)::bigint AS w,
           pg_catalog.min(xp.variant) AS variant, pg_catalog.min(xp.variant) <> pg_catalog.max(xp.variant) AS multi,
           pg_catalog.min(xp.exposed_at) AS first_exposure
    FROM experiment.exposures xp
    WHERE xp.experiment_id = e.id AND (e.end_at IS NULL OR xp.exposed_at < e.end_at)
    GROUP BY 1, 2;
  SELECT count(*) FILTER (WHERE NOT x.multi), count(*) FILTER (WHERE x.multi),
         pg_catalog.min(x.first_exposure), pg_catalog.max(x.first_exposure)
    INTO nwin, nmixed, min_t, max_t FROM pg_temp.exp_sb_windows x;
  DELETE FROM pg_temp.exp_sb_windows x WHERE x.multi;
  -- the base metrics (no pre-period: CUPED is not used in a switchback; quantiles are not analysed)
  CREATE TEMP TABLE exp_base ON COMMIT DROP AS
    SELECT n.name, false AS pre, row_number() OVER (ORDER BY n.name)::integer AS i
    FROM (SELECT DISTINCT p.part AS name
          FROM experiment.experiment_metrics em JOIN experiment.metrics m ON m.name = em.metric
          CROSS JOIN LATERAL (SELECT m.name WHERE m.kind <> 'ratio' AND m.aggregation <> 'quantile'
                              UNION ALL SELECT m.numerator WHERE m.kind = 'ratio'
                              UNION ALL SELECT m.denominator WHERE m.kind = 'ratio') p(part)
          WHERE em.experiment_id = e.id) n;

  -- one scan per window start and source (units: the clusters exposed in that window)
  FOR sc IN SELECT m.source, m.unit_column, m.owner,
                   pg_catalog.array_agg(m.time_column ORDER BY b.i) AS tcols,
                   pg_catalog.array_agg(m.value_column ORDER BY b.i) AS vcols,
                   pg_catalog.array_agg(m.aggregation ORDER BY b.i) AS aggs,
                   pg_catalog.array_agg(b.i ORDER BY b.i) AS targets
            FROM pg_temp.exp_base b JOIN experiment.metrics m ON m.name = b.name
            GROUP BY 1, 2, 3 ORDER BY 1, 2, 3 LOOP
    k := k + 1;
    EXECUTE format(
      'CREATE TEMP TABLE exp_sb_src%s ON COMMIT DROP AS '
      'SELECT g.w, x.unit_id AS cluster, x.vals FROM '
      '(SELECT y.w, pg_catalog.array_agg(y.cluster) AS ids, pg_catalog.array_agg(y.variant) AS variants, '
      '        pg_catalog.array_agg(pg_catalog.to_timestamp(y.w * %s::float8)) AS t0s '
      ' FROM pg_temp.exp_sb_windows y GROUP BY y.w) g, '
      'LATERAL experiment.source_unit_values(g.ids, g.variants, g.t0s, %L::regclass, %L, %L::text[], %L::text[], '
      '  %L::text[], %L::interval[], %L::interval[], %L::boolean[], %L::timestamptz, '
      '  pg_catalog.to_timestamp(g.w * %s::float8) + %L::interval, pg_catalog.to_timestamp(g.w * %s::float8) + %L::interval, '
      '  %L::regrole) x',
      k, wsec, sc.source, sc.unit_column, sc.tcols, sc.vcols, sc.aggs,
      array_fill(burn, ARRAY[cardinality(sc.targets)]), array_fill(win, ARRAY[cardinality(sc.targets)]),
      array_fill(true, ARRAY[cardinality(sc.targets)]), e.end_at, wsec, burn, wsec, win, sc.owner);
    EXECUTE format('CREATE INDEX ON pg_temp.exp_sb_src%s (w, cluster)', k);
    SELECT cols || pg_catalog.string_agg(format(', s%s.vals[%s] AS v%s, 0::bigint AS s%s', k, t.o, t.i, t.i), '' ORDER BY t.o)
      INTO cols FROM pg_catalog.unnest(sc.targets) WITH ORDINALITY AS t(i, o);
    joins := joins || format(' JOIN pg_temp.exp_sb_src%s s%s ON s%s.w = y.w AND s%s.cluster = y.cluster', k, k, k, k);
  END LOOP;
  EXECUTE format('CREATE TEMP TABLE exp_vals ON COMMIT DROP AS '
                 'SELECT y.cluster || ''@'' || y.w AS unit_id, y.variant, y.cluster, y.w%s '
                 'FROM pg_temp.exp_sb_windows y%s', cols, joins);
  SELECT * INTO cp FROM experiment.winsorization_caps('pg_temp.exp_vals');

  DELETE FROM experiment.variant_stats vs WHERE vs.experiment_id = e.id;
  DELETE FROM experiment.metric_results mr WHERE mr.experiment_id = e.id;
  DELETE FROM experiment.enrollment en WHERE en.experiment_id = e.id;
  DELETE FROM experiment.results_daily rd WHERE rd.experiment_id = e.id;
  DELETE FROM experiment.dimension_results dr WHERE dr.experiment_id = e.id;
  DELETE FROM experiment.dimension_stats ds WHERE ds.experiment_id = e.id;
  DELETE FROM experiment.dimension_enrollment dn WHERE dn.experiment_id = e.id;

  FOR r IN SELECT m2.name, m2.kind, b.i,
                  (SELECT bn.i FROM pg_temp.exp_base bn WHERE bn.name = m2.numerator) AS ni,
                  (SELECT bd.i FROM pg_temp.exp_base bd WHERE bd.name = m2.denominator) AS di,
                  row_number() OVER (ORDER BY m2.name) AS j
           FROM experiment.experiment_metrics em JOIN experiment.metrics m2 ON m2.name = em.metric
           LEFT JOIN pg_temp.exp_base b ON b.name = m2.name
           WHERE em.experiment_id = e.id AND m2.aggregation <> 'quantile'
           ORDER BY m2.name LOOP
    IF r.kind = 'ratio' THEN
      aggs := aggs || format(', experiment.moments(%s, %s) AS a%s', cp.capped[r.ni], cp.capped[r.di], r.j);
      unpivot := unpivot || format(', (%L, a.a%s, NULL::float8, NULL::float8)', r.name, r.j);
    ELSE
      aggs := aggs || format(', experiment.moments(%s) AS a%s', cp.capped[r.i], r.j);
      unpivot := unpivot || format(', (%L, a.a%s, %L::float8, %L::float8)', r.name, r.j, cp.caps[r.i], cp.lower_caps[r.i]);
    END IF;
  END LOOP;
  IF unpivot <> '' THEN
    EXECUTE format('INSERT INTO experiment.variant_stats (experiment_id, metric, variant, units, moments, cap, cap_lower, '
                   '  refreshed_at, clusters, cluster_moments) '
                   'SELECT %L, k.metric, a.variant, a.windows, k.m, k.cap, k.cap_lower, %L, a.windows, k.m '
                   'FROM (SELECT v.variant, count(*) AS windows%s FROM pg_temp.exp_vals v GROUP BY 1) a '
                   'CROSS JOIN LATERAL (VALUES %s) AS k(metric, m, cap, cap_lower)',
                   e.id, ts, aggs, substr(unpivot, 3));
  END IF;
  INSERT INTO experiment.enrollment (experiment_id, variant, units, refreshed_at)
  SELECT e.id, v.name, (SELECT count(*) FROM pg_temp.exp_vals x WHERE x.variant = v.name), ts
  FROM experiment.variants v WHERE v.experiment_id = e.id;

  tuning := CASE WHEN e.analysis = 'sequential' THEN experiment.sequential_tuning_of(e) END;
  INSERT INTO experiment.metric_results
    (experiment_id, metric, variant, control_variant, method, alpha, test, refreshed_at,
     analysis, sequential_tuning, bound_test, harm_test, clustered_by)
  SELECT e.id, m2.name, t.variant, c.variant, k.method, e.alpha,
         experiment.metric_test(k.method, c.moments, t.moments, NULL, NULL, e.alpha, 'two-sided', tuning),
         ts, e.analysis, tuning,
         CASE WHEN em.role = 'guardrail' THEN
           experiment.metric_test(k.method, c.moments, t.moments, NULL, NULL, e.alpha,
                                  CASE WHEN m2.higher_is_better THEN 'greater' ELSE 'less' END, tuning) END,
         CASE WHEN em.role = 'guardrail' THEN
           experiment.metric_test(k.method, c.moments, t.moments, NULL, NULL, e.alpha,
                                  CASE WHEN m2.higher_is_better THEN 'less' ELSE 'greater' END, tuning) END,
         label
  FROM experiment.experiment_metrics em
  JOIN experiment.metrics m2 ON m2.name = em.metric
  JOIN experiment.variant_stats c ON c.experiment_id = e.id AND c.metric = m2.name AND c.variant = control
  JOIN experiment.variant_stats t ON t.experiment_id = e.id AND t.metric = m2.name AND t.variant <> control
  CROSS JOIN LATERAL (SELECT CASE WHEN m2.kind = 'ratio' THEN 'ratio' ELSE 'welch' END AS method) k
  WHERE em.experiment_id = e.id;

  INSERT INTO experiment.refreshes AS f
    (experiment_id, refreshed_at, duration, enrolled_units, multi_variant_units, early_units,
     first_exposure, last_exposure, exposures_by_day, error, error_at, mode, full_reason,
     clusters, clustered_units, unclustered_units, mixed_clusters)
  SELECT e.id, ts, clock_timestamp() - started, nwin, nmixed,
         (SELECT count(*) FROM pg_temp.exp_sb_windows x WHERE x.first_exposure < e.start_at),
         min_t, max_t,
         (SELECT coalesce(jsonb_agg(jsonb_build_object('day', d.day, 'units', d.n) ORDER BY d.day), '[]')
          FROM (SELECT (x.first_exposure AT TIME ZONE 'UTC')::date AS day, count(*) AS n
                FROM pg_temp.exp_sb_windows x GROUP BY 1) d),
         NULL, NULL, 'full', 'switchback experiments are refreshed in full', nwin, NULL, NULL, nmixed
  ON CONFLICT ON CONSTRAINT refreshes_pkey DO UPDATE SET
    refreshed_at = excluded.refreshed_at, duration = excluded.duration,
    enrolled_units = excluded.enrolled_units, multi_variant_units = excluded.multi_variant_units,
    early_units = excluded.early_units, first_exposure = excluded.first_exposure,
    last_exposure = excluded.last_exposure, exposures_by_day = excluded.exposures_by_day,
    error = NULL, error_at = NULL, mode = excluded.mode, full_reason = excluded.full_reason,
    clusters = excluded.clusters, clustered_units = NULL, unclustered_units = NULL,
    mixed_clusters = excluded.mixed_clusters;
  FOR r IN SELECT c.relname FROM pg_catalog.pg_class c
           WHERE c.relnamespace = pg_catalog.pg_my_temp_schema() AND c.relkind = 'r'
             AND (c.relname LIKE 'exp\_sb\_%' OR c.relname IN ('exp_vals', 'exp_base')) LOOP
    EXECUTE format('DROP TABLE pg_temp.%I', r.relname);
  END LOOP;
END
$$;
COMMENT ON FUNCTION experiment.refresh_switchback(experiment.experiments, text) IS
  'internal: the refresh of a switchback experiment, from refresh(): per (cluster, window) the metrics'' values after the burn-in, tests over windows';
REVOKE EXECUTE ON FUNCTION experiment.refresh_switchback(experiment.experiments, text) FROM PUBLIC;
