-- the readout and decision(): every case that holds a decision back or invalidates it has
-- its line and its reason; SHIP, DON'T SHIP and NO SIGNIFICANT EFFECT name the metric, the
-- lift and the p-value; multi-arm readouts say how the arms were compared
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS experiment;
\set ECHO none
\i test/regress_support.sql
\set ECHO all
CREATE SCHEMA analysis_readout;
CREATE TABLE analysis_readout.events (user_id text, ts timestamptz, amount numeric, failed boolean);
\pset tuples_only on
\pset format unaligned

-- internal: an experiment with the given variants, one primary metric (revenue), a guardrail
-- (errors, lower is better) and a secondary metric (bought), running from Jan 1 2025
CREATE FUNCTION analysis_readout.make(id text, variants text[], analysis text DEFAULT 'sequential',
                                      margin float8 DEFAULT NULL) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
  v text;
BEGIN
  INSERT INTO experiment.experiments (id, status, start_at, end_at, analysis)
  VALUES (id, 'draft', '2025-01-01 00:00+00', '2025-01-15 00:00+00', make.analysis);
  FOREACH v IN ARRAY variants LOOP
    INSERT INTO experiment.variants (experiment_id, name, allocation, is_control)
    VALUES (id, v, 1.0 / cardinality(variants), v = variants[1]);
  END LOOP;
  INSERT INTO experiment.experiment_metrics (experiment_id, metric, role) VALUES
    (id, 'ro_revenue', 'primary'), (id, 'ro_bought', 'secondary');
  INSERT INTO experiment.experiment_metrics (experiment_id, metric, role, non_inferiority_margin) VALUES
    (id, 'ro_errors', 'guardrail', margin);
  UPDATE experiment.experiments SET status = 'running' WHERE experiments.id = make.id;
END $$;
-- internal: n units of a variant exposed on Jan 2, each with one purchase of base + (i % 7)
CREATE FUNCTION analysis_readout.units(id text, variant text, n integer, base numeric, fail_every integer DEFAULT 0)
RETURNS void LANGUAGE sql AS $$
  SELECT count(experiment.log_exposure(id, id || '-' || variant || '-' || i, variant, '2025-01-02 10:00+00'))
  FROM generate_series(1, n) i;
  INSERT INTO analysis_readout.events
  SELECT id || '-' || variant || '-' || i, '2025-01-03 10:00+00', base + (i % 7),
         fail_every > 0 AND i % fail_every = 0
  FROM generate_series(1, n) i;
$$;

INSERT INTO experiment.metrics (name, source, unit_column, time_column, value_column, aggregation, kind,
                                higher_is_better, cuped_lookback) VALUES
  ('ro_revenue', 'analysis_readout.events', 'user_id', 'ts', 'amount', 'sum', 'mean', true, NULL),
  ('ro_errors', 'analysis_readout.events', 'user_id', 'ts', 'failed', 'any', 'proportion', false, NULL),
  ('ro_bought', 'analysis_readout.events', 'user_id', 'ts', NULL, 'any', 'proportion', true, NULL);

-- 1. never refreshed: the decision says so, the readout refuses with a hint
SELECT analysis_readout.make('ro-new', '{control,treatment}');
SELECT * FROM experiment.decision('ro-new');
\set VERBOSITY default
SELECT experiment.readout('ro-new');
\set VERBOSITY terse

-- 2. a variant with fewer than 2 units: KEEP RUNNING, and the metric lines say why there is no result
SELECT analysis_readout.units('ro-new', 'control', 1, 10);
SELECT analysis_readout.units('ro-new', 'treatment', 3, 10);
SELECT experiment.refresh('ro-new');
SELECT experiment.readout('ro-new');

-- 3. exposures stored after the refresh (more than 1% of the units): stale, KEEP RUNNING
SELECT analysis_readout.units('ro-new', 'control', 40, 10);
SELECT analysis_readout.units('ro-new', 'treatment', 40, 10);
SELECT * FROM experiment.decision('ro-new');
SELECT exposures_after_refresh, stale FROM experiment.health WHERE experiment_id = 'ro-new';

-- 4. refreshed again: no effect (both arms alike); the reason gives the interval
SELECT experiment.refresh('ro-new');
SELECT exposures_after_refresh, stale FROM experiment.health WHERE experiment_id = 'ro-new';
SELECT experiment.readout('ro-new');

-- 5. a metric added after the refresh: the primary metric has no result until the next refresh
UPDATE experiment.experiment_metrics SET role = 'secondary' WHERE experiment_id = 'ro-new' AND metric = 'ro_revenue';
INSERT INTO experiment.metrics (name, source, unit_column, time_column, value_column, aggregation)
VALUES ('ro_items', 'analysis_readout.events', 'user_id', 'ts', 'amount', 'count');
INSERT INTO experiment.experiment_metrics (experiment_id, metric, role) VALUES ('ro-new', 'ro_items', 'primary');
SELECT experiment.readout('ro-new');
-- after the refresh it has its result
SELECT experiment.refresh('ro-new');
SELECT * FROM experiment.decision('ro-new');
SELECT split_part(experiment.readout('ro-new'), E'\n', 4);

-- 6. exposures before the experiment's start: INVALID
SELECT analysis_readout.make('ro-early', '{control,treatment}');
SELECT analysis_readout.units('ro-early', 'control', 30, 10);
SELECT analysis_readout.units('ro-early', 'treatment', 30, 14);
SELECT experiment.log_exposure('ro-early', 'ro-early-control-x', 'control', '2024-12-31 23:00+00');
SELECT experiment.refresh('ro-early');
SELECT experiment.readout('ro-early');

-- 7. SRM: 100 against 300 units on a 50/50 split: INVALID, the readout shows the threshold
SELECT analysis_readout.make('ro-srm', '{control,treatment}');
SELECT analysis_readout.units('ro-srm', 'control', 100, 10);
SELECT analysis_readout.units('ro-srm', 'treatment', 300, 10);
SELECT experiment.refresh('ro-srm');
SELECT * FROM experiment.decision('ro-srm');
SELECT split_part(experiment.readout('ro-srm'), E'\n', 2);

-- 8. SHIP: revenue clearly higher, guardrail quiet; the reason names metric, lift and p
SELECT analysis_readout.make('ro-ship', '{control,treatment}');
SELECT analysis_readout.units('ro-ship', 'control', 60, 10);
SELECT analysis_readout.units('ro-ship', 'treatment', 60, 14);
SELECT experiment.refresh('ro-ship');
SELECT experiment.readout('ro-ship');

-- 9. DON'T SHIP: the guardrail (errors, lower is better) fails
SELECT analysis_readout.make('ro-dont', '{control,treatment}');
SELECT analysis_readout.units('ro-dont', 'control', 60, 10, 0);
SELECT analysis_readout.units('ro-dont', 'treatment', 60, 14, 2);
SELECT experiment.refresh('ro-dont');
SELECT experiment.readout('ro-dont');

-- 10. three arms: how they are compared, which one ships
SELECT analysis_readout.make('ro-arms', '{control,blue,green}');
SELECT analysis_readout.units('ro-arms', 'control', 60, 10);
SELECT analysis_readout.units('ro-arms', 'blue', 60, 10);
SELECT analysis_readout.units('ro-arms', 'green', 60, 15);
SELECT experiment.refresh('ro-arms');
SELECT experiment.readout('ro-arms');

-- 11. a stopped experiment is stale after any new exposure
UPDATE experiment.experiments SET status = 'stopped' WHERE id = 'ro-arms';
SELECT experiment.log_exposure('ro-arms', 'late-unit', 'blue', '2025-01-10 10:00+00');
SELECT * FROM experiment.decision('ro-arms');

-- 12. no primary metric: KEEP RUNNING, with what to do
SELECT experiment.create_experiment('ro-nometric', '[{"name": "control", "allocation": 0.5}, {"name": "treatment", "allocation": 0.5}]', start => true);
SELECT count(experiment.log_exposure('ro-nometric', 'u' || i, CASE WHEN i % 2 = 0 THEN 'control' ELSE 'treatment' END, now()))
FROM generate_series(1, 6) i;
SELECT experiment.refresh('ro-nometric');
SELECT * FROM experiment.decision('ro-nometric');

-- 13. a refresh that failed (here in refresh_all, which records the error): KEEP RUNNING with the error
ALTER TABLE analysis_readout.events RENAME COLUMN amount TO amount_eur;
SELECT experiment.refresh_all() >= 0;
SELECT * FROM experiment.decision('ro-ship');
ALTER TABLE analysis_readout.events RENAME COLUMN amount_eur TO amount;

-- 14. the same data under each analysis: fixed horizon, Bayesian (chance to win), sequential
SELECT analysis_readout.make('ro-fixed', '{control,treatment}', 'fixed');
SELECT analysis_readout.units('ro-fixed', 'control', 60, 10);
SELECT analysis_readout.units('ro-fixed', 'treatment', 60, 11);
SELECT analysis_readout.make('ro-bayes', '{control,treatment}', 'bayesian');
SELECT analysis_readout.units('ro-bayes', 'control', 60, 10);
SELECT analysis_readout.units('ro-bayes', 'treatment', 60, 11);
SELECT analysis_readout.make('ro-seq', '{control,treatment}', 'sequential');
SELECT analysis_readout.units('ro-seq', 'control', 60, 10);
SELECT analysis_readout.units('ro-seq', 'treatment', 60, 11);
SELECT experiment.refresh(x) FROM unnest('{ro-fixed,ro-bayes,ro-seq}'::text[]) x;
SELECT experiment.readout('ro-fixed');
SELECT experiment.readout('ro-bayes');
SELECT * FROM experiment.decision('ro-seq');
SELECT experiment_id, analysis, round(p_value::numeric, 6) AS p, round(chance_to_win::numeric, 6) AS ctw,
       round(risk_treatment::numeric, 8) AS risk_treatment, significant, better
FROM experiment.results WHERE experiment_id IN ('ro-fixed', 'ro-bayes', 'ro-seq') AND metric = 'ro_revenue'
ORDER BY experiment_id;

-- 15. a guardrail with a non-inferiority margin: ok when the one-sided bound on harm is inside
--     it, inconclusive (KEEP RUNNING) when it straddles it, failed when the harm is beyond it
SELECT analysis_readout.make('ro-ni-ok', '{control,treatment}', 'fixed', 0.5);
SELECT analysis_readout.units('ro-ni-ok', 'control', 200, 10, 4);
SELECT analysis_readout.units('ro-ni-ok', 'treatment', 200, 14, 4);
SELECT analysis_readout.make('ro-ni-open', '{control,treatment}', 'fixed', 0.05);
SELECT analysis_readout.units('ro-ni-open', 'control', 200, 10, 4);
SELECT analysis_readout.units('ro-ni-open', 'treatment', 200, 14, 4);
SELECT analysis_readout.make('ro-ni-bad', '{control,treatment}', 'fixed', 0.05);
SELECT analysis_readout.units('ro-ni-bad', 'control', 200, 10, 4);
SELECT analysis_readout.units('ro-ni-bad', 'treatment', 200, 14, 2);
SELECT experiment.refresh(x) FROM unnest('{ro-ni-ok,ro-ni-open,ro-ni-bad}'::text[]) x;
SELECT experiment_id, non_inferiority_margin, round(lift::numeric, 4) AS lift, round(harm_bound::numeric, 4) AS harm_bound,
       guardrail_status, guardrail_ok
FROM experiment.results WHERE experiment_id LIKE 'ro-ni-%' AND role = 'guardrail' ORDER BY experiment_id;
SELECT x, d.* FROM unnest('{ro-ni-ok,ro-ni-open,ro-ni-bad}'::text[]) x, LATERAL experiment.decision(x) d;
SELECT l FROM regexp_split_to_table(experiment.readout('ro-ni-open'), E'\n') l WHERE l LIKE 'Guardrails:%';

-- 16. multiple testing: a second secondary metric; Holm across the secondary metrics
INSERT INTO experiment.metrics (name, source, unit_column, time_column, value_column, aggregation) VALUES
  ('ro_max', 'analysis_readout.events', 'user_id', 'ts', 'amount', 'max'),
  ('ro_sum', 'analysis_readout.events', 'user_id', 'ts', 'amount', 'sum');
INSERT INTO experiment.experiment_metrics (experiment_id, metric, role) VALUES
  ('ro-fixed', 'ro_max', 'secondary'), ('ro-fixed', 'ro_sum', 'secondary');
SELECT experiment.refresh('ro-fixed');
SELECT metric, role, round(p_value::numeric, 6) AS p, round(p_value_adjusted::numeric, 6) AS p_adjusted,
       round(lift_lower_adjusted::numeric, 4) AS lo_adj, round(lift_upper_adjusted::numeric, 4) AS hi_adj
FROM experiment.results WHERE experiment_id = 'ro-fixed' ORDER BY role, metric;

-- 17. the analysis is chosen before the data: frozen once running; bad values named
SELECT regress_support.err($$UPDATE experiment.experiments SET analysis = 'fixed' WHERE id = 'ro-seq'$$);
SELECT regress_support.err($$INSERT INTO experiment.experiments (id, analysis) VALUES ('ro-x', 'frequentist')$$);
SELECT regress_support.err($$INSERT INTO experiment.experiments (id, correction) VALUES ('ro-x', 'fdr')$$);
SELECT regress_support.err($$INSERT INTO experiment.experiments (id, sequential_tuning) VALUES ('ro-x', 0)$$);
SELECT regress_support.err($$INSERT INTO experiment.experiments (id, prior_variance) VALUES ('ro-x', -1)$$);
SELECT regress_support.err($$INSERT INTO experiment.experiments (id, ship_threshold) VALUES ('ro-x', 0.4)$$);

-- interval formatting: one number of decimals for the difference and both bounds
\pset tuples_only off
\pset format aligned
SELECT kind, d, lo, hi, f.*
FROM (VALUES ('mean', -0.2, -1.689, 0.0163), ('mean', 2.002, 1.315, 2.689), ('mean', 1234.5, -20.25, 2489.3),
             ('mean', 0.00012, -0.0004, 0.00064), ('mean', 3e20, 1e20, 5e20), ('mean', 5, 'Infinity', 'NaN'),
             ('proportion', 0.018, 0.006, 0.030), ('proportion', 0.0004, -0.0021, 0.0029),
             ('mean', NULL, NULL, NULL)) AS v(kind, d, lo, hi),
     LATERAL experiment.format_diff(kind, d, lo, hi) f;
SELECT x, experiment.format_number(x) FROM unnest(ARRAY[1e300, -2.5e18, 1e-300, 'NaN', '-Infinity']::float8[]) x;

-- clean up
\set QUIET on
DELETE FROM experiment.exposures WHERE experiment_id LIKE 'ro-%';
DELETE FROM experiment.experiment_metrics WHERE experiment_id LIKE 'ro-%';
UPDATE experiment.experiments SET status = 'stopped' WHERE id LIKE 'ro-%' AND status = 'running';
DELETE FROM experiment.experiments WHERE id LIKE 'ro-%';
DELETE FROM experiment.metrics WHERE name LIKE 'ro\_%';
DROP SCHEMA analysis_readout CASCADE;
