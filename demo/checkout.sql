-- demo/checkout.sql: a generated checkout experiment, analysed end to end in SQL.
--
-- 26,000 users are split 50/50 between control and a checkout progress bar
-- (treatment) over 14 days. The data carry a known effect: the progress bar
-- lifts checkout completion by about 4 points and revenue with it. The
-- script registers the experiment and its metrics through the catalogue,
-- loads exposures the way a Kafka sink delivers them (with redeliveries, a
-- few units seen in both variants and a few malformed rows), loads the order,
-- error and page-load events, refreshes and prints experiment.readout().
--
--   psql -v ON_ERROR_STOP=1 -f demo/checkout.sql

\set QUIET on
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS experiment;
-- start from scratch when run again
DELETE FROM experiment.exposures WHERE experiment_id = 'checkout-progress-bar';
DELETE FROM experiment.exposures_quarantine WHERE payload ->> 'event_id' LIKE 'ev-bad-%';
DELETE FROM experiment.experiment_metrics WHERE experiment_id = 'checkout-progress-bar';
UPDATE experiment.experiments SET status = 'stopped' WHERE id = 'checkout-progress-bar' AND status = 'running';
DELETE FROM experiment.experiments WHERE id = 'checkout-progress-bar';   -- and its variants
DELETE FROM experiment.metrics WHERE kind = 'ratio' AND name = 'average_order_value';
DELETE FROM experiment.metrics WHERE name IN ('checkout_completion_rate', 'revenue_per_user', 'orders_per_user',
                                             'checkout_error_rate', 'p99_page_load_ms');
DROP SCHEMA IF EXISTS demo CASCADE;
CREATE SCHEMA demo;
SELECT setseed(0.42) \gset

-- 1. the experiment, its variants and its metrics
INSERT INTO experiment.experiments (id, name, hypothesis, owner, status, start_at, end_at,
                                    min_runtime, target_units_per_variant)
VALUES ('checkout-progress-bar', 'Checkout progress bar',
        'Showing a progress bar in checkout raises checkout completion',
        'checkout-team', 'draft', '2025-03-03 00:00+00', '2025-03-17 00:00+00',
        '14 days', 9336);
INSERT INTO experiment.variants (experiment_id, name, allocation, config, is_control) VALUES
  ('checkout-progress-bar', 'control',   0.5, '{"progress_bar": false}', true),
  ('checkout-progress-bar', 'treatment', 0.5, '{"progress_bar": true}',  false);

CREATE TABLE demo.orders (user_id text, ordered_at timestamptz, amount numeric(12, 2), items integer);
CREATE TABLE demo.checkout_errors (user_id text, occurred_at timestamptz);
CREATE TABLE demo.page_loads (user_id text, loaded_at timestamptz, load_ms integer);

INSERT INTO experiment.metrics (name, description, source, unit_column, time_column, value_column,
                                aggregation, kind, "window", higher_is_better, winsorize, cuped_lookback, quantile)
VALUES
  ('checkout_completion_rate', 'share of users who complete a checkout within 7 days of exposure',
   'demo.orders', 'user_id', 'ordered_at', NULL, 'any', 'proportion', '7 days', true, NULL, NULL, NULL),
  ('revenue_per_user', 'order revenue per user until the end of the experiment',
   'demo.orders', 'user_id', 'ordered_at', 'amount', 'sum', 'mean', NULL, true, 0.999, '28 days', NULL),
  ('orders_per_user', 'orders per user until the end of the experiment',
   'demo.orders', 'user_id', 'ordered_at', NULL, 'count', 'mean', NULL, true, NULL, NULL, NULL),
  ('checkout_error_rate', 'share of users who hit a checkout error',
   'demo.checkout_errors', 'user_id', 'occurred_at', NULL, 'any', 'proportion', NULL, false, NULL, NULL, NULL),
  -- the p99 of all checkout page loads (an event quantile: quantile_level defaults to 'event')
  ('p99_page_load_ms', '99th percentile of checkout page loads (ms)',
   'demo.page_loads', 'user_id', 'loaded_at', 'load_ms', 'quantile', 'mean', NULL, false, NULL, NULL, 0.99);
INSERT INTO experiment.metrics (name, description, kind, numerator, denominator)
VALUES ('average_order_value', 'revenue per order', 'ratio', 'revenue_per_user', 'orders_per_user');

INSERT INTO experiment.experiment_metrics (experiment_id, metric, role, non_inferiority_margin) VALUES
  ('checkout-progress-bar', 'checkout_completion_rate', 'primary', NULL),
  ('checkout-progress-bar', 'revenue_per_user', 'secondary', NULL),
  ('checkout-progress-bar', 'average_order_value', 'secondary', NULL),
  ('checkout-progress-bar', 'checkout_error_rate', 'guardrail', NULL),
  ('checkout-progress-bar', 'p99_page_load_ms', 'guardrail', 0.15);

UPDATE experiment.experiments SET status = 'running' WHERE id = 'checkout-progress-bar';

-- 2. users: variant (the SHA-256 bucket of the assignment functions), first exposure,
--    a latent propensity to buy
CREATE TABLE demo.users AS
SELECT 'u' || lpad(i::text, 6, '0') AS user_id,
       experiment.assign_variant('u' || lpad(i::text, 6, '0'), 'checkout-progress-bar',
         '[{"name": "control", "allocation": 0.5}, {"name": "treatment", "allocation": 0.5}]') AS variant,
       timestamptz '2025-03-03 00:00+00' + random() * interval '13 days' AS t0,
       random() AS propensity
FROM generate_series(1, 26000) AS i;

-- 3. exposures, as an at-least-once pipeline delivers them
CREATE TABLE demo.exposure_events AS
SELECT 'checkout-progress-bar'::text AS experiment_id, u.user_id AS unit_id, u.variant, u.t0 AS exposed_at, 'ev-' || u.user_id || '-1' AS event_id,
       CASE WHEN random() < 0.6 THEN 'ios' ELSE 'web' END AS client
FROM demo.users u
UNION ALL   -- later exposures of a third of the users (same variant)
SELECT 'checkout-progress-bar', u.user_id, u.variant, u.t0 + random() * interval '2 days', 'ev-' || u.user_id || '-2', 'web'
FROM demo.users u WHERE random() < 0.33
UNION ALL   -- 30 users who also saw the other variant (a caching bug)
SELECT 'checkout-progress-bar', u.user_id, CASE u.variant WHEN 'control' THEN 'treatment' ELSE 'control' END,
       u.t0 + interval '1 hour', 'ev-' || u.user_id || '-x', 'web'
FROM demo.users u WHERE u.user_id IN (SELECT user_id FROM demo.users ORDER BY md5(user_id) LIMIT 30);

-- every event once through the bulk API, in batches of 5,000, and 10% again (redeliveries)
SELECT sum(r.inserted) AS inserted, sum(r.duplicates) AS duplicates, sum(r.quarantined) AS quarantined
FROM (SELECT b, jsonb_agg(to_jsonb(x) - 'b') AS rows
      FROM (SELECT e.*, (row_number() OVER (ORDER BY e.event_id)) / 5000 AS b FROM demo.exposure_events e
            UNION ALL
            SELECT e.*, 1000 FROM demo.exposure_events e WHERE random() < 0.10) x
      GROUP BY b) batches,
     LATERAL experiment.ingest_exposures(batches.rows) r
\gset demo_
-- malformed rows through the staging table: they end up in the quarantine
INSERT INTO experiment.exposures_staging (experiment_id, unit_id, variant, exposed_at, event_id) VALUES
  ('checkout-progress-bar', 'u999001', 'treatmnet', '2025-03-05T10:00:00Z', 'ev-bad-1'),
  ('checkout-progress-bar', 'u999002', 'control', 'yesterday-ish', 'ev-bad-2'),
  ('checkout-progres-bar', 'u999003', 'control', '2025-03-05T10:00:00Z', 'ev-bad-3');
SELECT * FROM experiment.process_exposures_staging() \gset demo_staging_

-- 4. events: orders in the pre-period (for CUPED) and during the experiment
INSERT INTO demo.orders
SELECT u.user_id, u.t0 - random() * interval '28 days',
       round((15 + 70 * u.propensity + 30 * random())::numeric, 2), 1 + (random() * 3)::integer
FROM demo.users u, generate_series(1, 3) k
WHERE random() < 0.15 + 0.5 * u.propensity;
INSERT INTO demo.orders
SELECT u.user_id, u.t0 + random() * interval '6 days',
       round((15 + 70 * u.propensity + 30 * random() + CASE u.variant WHEN 'treatment' THEN 2 ELSE 0 END)::numeric, 2),
       1 + (random() * 3)::integer
FROM demo.users u
WHERE random() < 0.47 + 0.45 * u.propensity + CASE u.variant WHEN 'treatment' THEN 0.04 ELSE 0 END;
INSERT INTO demo.orders   -- repeat orders
SELECT u.user_id, u.t0 + interval '6 days' + random() * interval '8 days',
       round((15 + 70 * u.propensity + 30 * random())::numeric, 2), 1 + (random() * 3)::integer
FROM demo.users u WHERE random() < 0.3 * u.propensity;
INSERT INTO demo.orders   -- a few whales, capped by winsorization
SELECT u.user_id, u.t0 + interval '1 day', 25000, 40
FROM demo.users u WHERE random() < 0.0005;
INSERT INTO demo.checkout_errors
SELECT u.user_id, u.t0 + random() * interval '5 days' FROM demo.users u WHERE random() < 0.021;
INSERT INTO demo.page_loads   -- log-normal latencies, each user's device a bit faster or slower
SELECT u.user_id, u.t0 + random() * interval '7 days',
       round(exp(6.6 + 0.5 * sqrt(-2 * ln(1 - random())) * cos(2 * pi() * random()))
             * (0.8 + 0.4 * experiment.bucket(u.user_id, 'device') / 9999.0))::integer
FROM demo.users u, generate_series(1, 4) k;
ANALYZE demo.orders, demo.checkout_errors, demo.page_loads;

-- 5. one row per user, as a dbt model would build it; README's tour reads it: revenue and
--    orders from exposure to the end of the experiment, revenue in the 28 days before
CREATE VIEW demo.user_metrics AS
SELECT u.user_id, u.variant, u.t0,
       coalesce(sum(o.amount) FILTER (WHERE o.ordered_at >= u.t0), 0)::float8 AS revenue,
       coalesce(sum(o.amount) FILTER (WHERE o.ordered_at < u.t0), 0)::float8 AS revenue_pre,
       count(o.*) FILTER (WHERE o.ordered_at >= u.t0)::float8 AS orders
FROM demo.users u
LEFT JOIN demo.orders o ON o.user_id = u.user_id AND o.ordered_at >= u.t0 - interval '28 days'
                       AND o.ordered_at < timestamptz '2025-03-17 00:00+00'
GROUP BY u.user_id, u.variant, u.t0;
COMMENT ON VIEW demo.user_metrics IS 'one row per demo user: variant, first exposure, revenue and orders after it, revenue in the 28 days before';

-- 6. refresh and read
SELECT experiment.refresh('checkout-progress-bar') \gset
\echo
\echo Exposures loaded: :demo_inserted stored, :demo_duplicates duplicates ignored; :demo_staging_quarantined malformed rows quarantined
\echo
\pset format unaligned
\pset tuples_only on
SELECT experiment.readout('checkout-progress-bar');
