-- ---------------------------------------------------------------------------
-- Privileges: who may read which results, who may refresh, the documented roles
-- (doc/security.md)
-- ---------------------------------------------------------------------------

-- row-level security: results, per-variant moments and recorded conclusions of metrics the
-- reader may not read are not visible (superusers and the extension's owner see everything);
-- only refresh() writes results
ALTER TABLE experiment.metric_results ENABLE ROW LEVEL SECURITY;
CREATE POLICY metric_results_readable ON experiment.metric_results FOR SELECT
  USING (experiment.may_read_metric(metric));
COMMENT ON POLICY metric_results_readable ON experiment.metric_results IS
  'a role sees the tests of the metrics whose sources it may read';
ALTER TABLE experiment.variant_stats ENABLE ROW LEVEL SECURITY;
CREATE POLICY variant_stats_readable ON experiment.variant_stats FOR SELECT
  USING (experiment.may_read_metric(metric));
COMMENT ON POLICY variant_stats_readable ON experiment.variant_stats IS
  'a role sees the per-variant moments of the metrics whose sources it may read';
ALTER TABLE experiment.results_daily ENABLE ROW LEVEL SECURITY;
CREATE POLICY results_daily_readable ON experiment.results_daily FOR SELECT
  USING (experiment.may_read_metric(metric));
COMMENT ON POLICY results_daily_readable ON experiment.results_daily IS
  'a role sees the results over time of the metrics whose sources it may read';
ALTER TABLE experiment.dimension_results ENABLE ROW LEVEL SECURITY;
CREATE POLICY dimension_results_readable ON experiment.dimension_results FOR SELECT
  USING (experiment.may_read_metric(metric));
COMMENT ON POLICY dimension_results_readable ON experiment.dimension_results IS
  'a role sees the tests per dimension value of the metrics whose sources it may read';
ALTER TABLE experiment.dimension_stats ENABLE ROW LEVEL SECURITY;
CREATE POLICY dimension_stats_readable ON experiment.dimension_stats FOR SELECT
  USING (experiment.may_read_metric(metric));
COMMENT ON POLICY dimension_stats_readable ON experiment.dimension_stats IS
  'a role sees the per-value moments of the metrics whose sources it may read';
ALTER TABLE experiment.conclusions ENABLE ROW LEVEL SECURITY;
-- sources is [{"source": oid, "columns": [name, ...]}, ...] (a check constraint keeps it so)
CREATE FUNCTION experiment.may_read_sources(sources jsonb) RETURNS boolean
  LANGUAGE sql STABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
  SELECT NOT EXISTS (SELECT 1 FROM pg_catalog.jsonb_array_elements(sources) s,
                                   pg_catalog.jsonb_array_elements_text(s -> 'columns') c
                     WHERE NOT experiment.may_read_column((s ->> 'source')::oid::regclass, c))
$$;
COMMENT ON FUNCTION experiment.may_read_sources(jsonb) IS
  'internal: whether the current user may SELECT every column of a conclusion''s sources';
CREATE POLICY conclusions_readable ON experiment.conclusions FOR SELECT
  USING (experiment.may_read_sources(sources));
COMMENT ON POLICY conclusions_readable ON experiment.conclusions IS
  'a role sees a recorded conclusion when it may read every source column its metrics read when it was recorded';
CREATE POLICY conclusions_insert ON experiment.conclusions FOR INSERT
  WITH CHECK (concluded_by = current_user AND concluded_at = pg_catalog.now()
              AND pg_catalog.pg_has_role(current_user,
                                         (SELECT x.owner_role FROM experiment.experiments x WHERE x.id = experiment_id),
                                         'MEMBER'));
COMMENT ON POLICY conclusions_insert ON experiment.conclusions IS
  'roles granted INSERT (experiment_analyst) record conclusions of their own experiments, in their own name and at the time they record them, as experiment.conclude() does';

-- results are as old as the metric definition they were computed from: when a metric is
-- deleted or reads something else, its stored results (and those of ratios of it) go, so
-- that a metric registered later under the same name cannot show them
CREATE FUNCTION experiment.metrics_forget_results() RETURNS trigger
  LANGUAGE plpgsql SECURITY DEFINER
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
BEGIN
  IF TG_OP = 'TRUNCATE' THEN
    DELETE FROM experiment.metric_results;
    DELETE FROM experiment.variant_stats;
    DELETE FROM experiment.results_daily;
    DELETE FROM experiment.dimension_results;
    DELETE FROM experiment.dimension_stats;
    DELETE FROM experiment.interaction_results;   -- (src/sql/099_interact.sql)
    RETURN NULL;
  END IF;
  IF TG_OP = 'UPDATE' AND (NEW.name, NEW.source, NEW.unit_column, NEW.time_column, NEW.value_column, NEW.owner,
                           NEW.numerator, NEW.denominator)
                          IS NOT DISTINCT FROM (OLD.name, OLD.source, OLD.unit_column, OLD.time_column,
                                                OLD.value_column, OLD.owner, OLD.numerator, OLD.denominator) THEN
    RETURN NULL;
  END IF;
  DELETE FROM experiment.metric_results r
   WHERE r.metric = OLD.name
      OR r.metric IN (SELECT m.name FROM experiment.metrics m WHERE OLD.name IN (m.numerator, m.denominator));
  DELETE FROM experiment.variant_stats v
   WHERE v.metric = OLD.name
      OR v.metric IN (SELECT m.name FROM experiment.metrics m WHERE OLD.name IN (m.numerator, m.denominator));
  DELETE FROM experiment.results_daily d
   WHERE d.metric = OLD.name
      OR d.metric IN (SELECT m.name FROM experiment.metrics m WHERE OLD.name IN (m.numerator, m.denominator));
  DELETE FROM experiment.dimension_results d
   WHERE d.metric = OLD.name
      OR d.metric IN (SELECT m.name FROM experiment.metrics m WHERE OLD.name IN (m.numerator, m.denominator));
  DELETE FROM experiment.dimension_stats d
   WHERE d.metric = OLD.name
      OR d.metric IN (SELECT m.name FROM experiment.metrics m WHERE OLD.name IN (m.numerator, m.denominator));
  -- (interaction detection, src/sql/099_interact.sql)
  DELETE FROM experiment.interaction_results d
   WHERE d.metric = OLD.name
      OR d.metric IN (SELECT m.name FROM experiment.metrics m WHERE OLD.name IN (m.numerator, m.denominator));
  RETURN NULL;
END
$$;
COMMENT ON FUNCTION experiment.metrics_forget_results() IS
  'internal: trigger: deletes the stored results of a metric (and of ratios of it) that is deleted, renamed or changes what it reads';
REVOKE EXECUTE ON FUNCTION experiment.metrics_forget_results() FROM PUBLIC;
CREATE TRIGGER metrics_forget_results AFTER UPDATE OR DELETE ON experiment.metrics
  FOR EACH ROW EXECUTE FUNCTION experiment.metrics_forget_results();
COMMENT ON TRIGGER metrics_forget_results ON experiment.metrics IS
  'a deleted or renamed metric, or one that reads another source, columns or owner, loses its stored results';
-- and a metric taken out of an experiment takes its results of that experiment with it
CREATE FUNCTION experiment.experiment_metrics_forget_results() RETURNS trigger
  LANGUAGE plpgsql SECURITY DEFINER
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
BEGIN
  IF TG_OP = 'UPDATE' AND (NEW.experiment_id, NEW.metric) IS NOT DISTINCT FROM (OLD.experiment_id, OLD.metric) THEN
    RETURN NULL;
  END IF;
  DELETE FROM experiment.metric_results r WHERE r.experiment_id = OLD.experiment_id AND r.metric = OLD.metric;
  DELETE FROM experiment.variant_stats v WHERE v.experiment_id = OLD.experiment_id AND v.metric = OLD.metric;
  DELETE FROM experiment.results_daily d WHERE d.experiment_id = OLD.experiment_id AND d.metric = OLD.metric;
  DELETE FROM experiment.dimension_results d WHERE d.experiment_id = OLD.experiment_id AND d.metric = OLD.metric;
  DELETE FROM experiment.dimension_stats d WHERE d.experiment_id = OLD.experiment_id AND d.metric = OLD.metric;
  -- (interaction detection, src/sql/099_interact.sql: the pairs of the experiment either way)
  DELETE FROM experiment.interaction_results d
   WHERE OLD.experiment_id IN (d.experiment_id, d.other_experiment_id) AND d.metric = OLD.metric;
  RETURN NULL;
END
$$;
COMMENT ON FUNCTION experiment.experiment_metrics_forget_results() IS
  'internal: trigger: deletes the stored results of a metric in an experiment when it is taken out of it';
REVOKE EXECUTE ON FUNCTION experiment.experiment_metrics_forget_results() FROM PUBLIC;
CREATE TRIGGER experiment_metrics_forget_results AFTER UPDATE OR DELETE ON experiment.experiment_metrics
  FOR EACH ROW EXECUTE FUNCTION experiment.experiment_metrics_forget_results();
COMMENT ON TRIGGER experiment_metrics_forget_results ON experiment.experiment_metrics IS
  'a metric taken out of an experiment loses its stored results there';

CREATE TRIGGER metrics_forget_results_truncate AFTER TRUNCATE ON experiment.metrics
  FOR EACH STATEMENT EXECUTE FUNCTION experiment.metrics_forget_results();
COMMENT ON TRIGGER metrics_forget_results_truncate ON experiment.metrics IS
  'truncating the catalogue deletes every stored result';

-- refresh reads every source as its metric's owner and writes the results: it runs as the
-- extension's owner, and only roles granted EXECUTE (experiment_analyst, experiment_admin) call it
ALTER FUNCTION experiment.refresh(text, boolean) SECURITY DEFINER;
ALTER FUNCTION experiment.refresh_all() SECURITY DEFINER;
REVOKE EXECUTE ON FUNCTION experiment.refresh(text, boolean) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION experiment.refresh_all() FROM PUBLIC;

-- GRANT role TO member, quietly when it is granted already
CREATE FUNCTION experiment.grant_role_once(role text, member text) RETURNS void
  LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_auth_members a
                 WHERE a.roleid = grant_role_once.role::regrole AND a.member = grant_role_once.member::regrole) THEN
    EXECUTE format('GRANT %I TO %I', grant_role_once.role, grant_role_once.member);
  END IF;
END
$$;
COMMENT ON FUNCTION experiment.grant_role_once(text, text) IS 'internal: GRANT role TO member unless it is granted already';
REVOKE EXECUTE ON FUNCTION experiment.grant_role_once(text, text) FROM PUBLIC;

CREATE FUNCTION experiment.setup_roles() RETURNS TABLE (role text, created boolean)
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
COMMENT ON FUNCTION experiment.setup_roles() IS
  'create (where missing) the roles experiment_reader, experiment_ingest, experiment_analyst and experiment_admin (NOLOGIN) '
  'and grant them their privileges in this database (doc/security.md); run it as a superuser in each database with the extension';
REVOKE EXECUTE ON FUNCTION experiment.setup_roles() FROM PUBLIC;
