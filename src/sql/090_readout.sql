-- ---------------------------------------------------------------------------
-- The readout: text formatting, decision(), readout(), conclusions
-- (doc/analysis.md, doc/methodology.md)
-- ---------------------------------------------------------------------------

-- ===========================================================================
-- Text formatting
-- ===========================================================================

CREATE FUNCTION experiment.format_number(x float8) RETURNS text
  LANGUAGE sql IMMUTABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
  SELECT CASE
    WHEN x IS NULL THEN 'n/a'
    WHEN x = 0 THEN '0'
    WHEN x = 'NaN'::float8 THEN 'n/a'
    WHEN abs(x) = 'Infinity'::float8 THEN x::text
    WHEN abs(x) >= 1e15 OR abs(x) < 1e-12 THEN btrim(to_char(x, '9.99EEEE'))
    WHEN abs(x) >= 1000 THEN to_char(round(x::numeric), 'FM999,999,999,999,999,990')
    WHEN abs(x) >= 10 THEN to_char(round(x::numeric, 2), 'FM990.00')
    WHEN abs(x) >= 1 THEN to_char(round(x::numeric, 3), 'FM0.000')
    ELSE round(x::numeric, greatest(3, 2 - floor(log(abs(x)::numeric))::integer))::text
  END
$$;
COMMENT ON FUNCTION experiment.format_number(float8) IS
  'internal: a number as the readout prints it: thousands separators from 1,000, else 2 or 3 decimals, small values to 3 significant digits';

CREATE FUNCTION experiment.format_count(n bigint) RETURNS text
  LANGUAGE sql IMMUTABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
  SELECT CASE WHEN n IS NULL THEN 'n/a' ELSE to_char(n, 'FM999,999,999,999,999,990') END
$$;
COMMENT ON FUNCTION experiment.format_count(bigint) IS 'internal: a count with thousands separators: 12,841';

-- decimals that show the largest of some values to `digits` significant digits (0 to 10)
CREATE FUNCTION experiment.format_decimals(vals float8[], digits integer) RETURNS integer
  LANGUAGE sql IMMUTABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
  SELECT CASE WHEN m IS NULL OR m = 0 THEN digits - 1
              ELSE greatest(0, least(10, digits - 1 - floor(log(m::numeric))::integer)) END
  FROM (SELECT pg_catalog.max(abs(v)) AS m FROM unnest(vals) v
        WHERE v IS NOT NULL AND abs(v) < 'Infinity'::float8) s
$$;
COMMENT ON FUNCTION experiment.format_decimals(float8[], integer) IS
  'internal: how many decimals show the largest finite absolute value of vals to the given number of significant digits (0 to 10)';

CREATE FUNCTION experiment.format_signed(x float8, suffix text DEFAULT '', scale float8 DEFAULT 1, decimals integer DEFAULT NULL)
  RETURNS text
  LANGUAGE sql IMMUTABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
  -- x * scale in numeric: in float8 it overflows (1e307 * 100) or underflows
  SELECT CASE
    WHEN x IS NULL AND suffix = '%' THEN NULL   -- an undefined lift is left out
    WHEN x IS NULL THEN 'n/a'
    WHEN x = 'NaN'::float8 THEN 'n/a'
    WHEN abs(x) = 'Infinity'::float8 THEN CASE WHEN x > 0 THEN '+' ELSE '-' END || 'Infinity' || suffix
    -- rounded to 3 significant digits first: numeric to_char would print 9.999e16 as 10.00e+16
    WHEN abs(v) >= 1e15 THEN CASE WHEN v > 0 THEN '+' ELSE '' END
                             || btrim(to_char(round(v, 2 - floor(log(abs(v)))::integer), '9.99EEEE')) || suffix
    WHEN decimals IS NULL THEN CASE WHEN v >= 0 THEN '+' ELSE '' END || experiment.format_number(v::float8) || suffix
    ELSE CASE WHEN round(v, decimals) >= 0 THEN '+' ELSE '' END
         || to_char(round(v, decimals),
                    'FM999,999,999,999,990' || CASE WHEN decimals > 0 THEN '.' || repeat('0', decimals) ELSE '' END)
         || suffix
  END
  FROM (SELECT CASE WHEN abs(x) < 'Infinity'::float8 THEN x::numeric * scale::numeric END AS v) s
$$;
COMMENT ON FUNCTION experiment.format_signed(float8, text, float8, integer) IS
  'internal: x * scale with an explicit sign and a suffix (''%'', ''pp''), to a fixed number of decimals when given';

CREATE FUNCTION experiment.format_p(p float8, with_label boolean DEFAULT true) RETURNS text
  LANGUAGE sql IMMUTABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
  SELECT CASE WHEN with_label THEN 'p ' ELSE '' END || CASE
    WHEN p IS NULL OR p = 'NaN'::float8 THEN CASE WHEN with_label THEN '= ' ELSE '' END || 'n/a'
    WHEN p < 0.001 THEN '< 0.001'
    WHEN p < 0.01 THEN CASE WHEN with_label THEN '= ' ELSE '' END || to_char(round(p::numeric, 3), 'FM0.000')
    -- three significant digits, so that 0.0496 and 0.0504 do not both print as 0.050
    WHEN p < 0.1 THEN CASE WHEN with_label THEN '= ' ELSE '' END || to_char(round(p::numeric, 4), 'FM0.0000')
    ELSE CASE WHEN with_label THEN '= ' ELSE '' END || to_char(round(p::numeric, 2), 'FM0.00')
  END
$$;
COMMENT ON FUNCTION experiment.format_p(float8, boolean) IS
  'internal: a p-value as the readout prints it: "p = 0.83", "p = 0.0496", "p = 0.003", "p < 0.001"';

-- a share as a percentage with one decimal, without sign: 0.0512 -> 5.1
CREATE FUNCTION experiment.format_percent(x float8) RETURNS text
  LANGUAGE sql IMMUTABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
  SELECT CASE WHEN abs(v) >= 1e15 THEN btrim(to_char(round(v, 2 - floor(log(abs(v)))::integer), '9.99EEEE'))
              ELSE to_char(round(v, 1), 'FM999,999,999,999,990.0') END
  FROM (SELECT CASE WHEN abs(x) < 'Infinity'::float8 THEN x::numeric * 100 END AS v) s
$$;
COMMENT ON FUNCTION experiment.format_percent(float8) IS 'internal: a share as a percentage with one decimal, e.g. 5.1 for 0.0512';

-- a one-line chart of a series: each value as one of eight block heights between the
-- series' least and greatest value (NULL: a space; a flat series: the middle height)
CREATE FUNCTION experiment.sparkline(vals float8[]) RETURNS text
  LANGUAGE sql IMMUTABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
  SELECT string_agg(CASE WHEN v IS NULL OR NOT (abs(v) < 'Infinity'::float8) THEN ' '
                         WHEN hi = lo THEN '▄'
                         ELSE substr('▁▂▃▄▅▆▇█', 1 + least(7, floor((v - lo) / (hi - lo) * 8)::integer), 1) END,
                    '' ORDER BY k)
  FROM unnest(vals) WITH ORDINALITY AS u(v, k),
       (SELECT min(x) AS lo, max(x) AS hi FROM unnest(vals) x WHERE abs(x) < 'Infinity'::float8) b
$$;
COMMENT ON FUNCTION experiment.sparkline(float8[]) IS
  'a series as a one-line text chart of block characters ▁ to █, scaled between its least and greatest value';

-- the name of a multiple-testing correction
CREATE FUNCTION experiment.format_correction(correction text, short boolean DEFAULT false) RETURNS text
  LANGUAGE sql IMMUTABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
  SELECT CASE WHEN correction = 'bh' THEN CASE WHEN short THEN 'BH' ELSE 'Benjamini-Hochberg' END ELSE 'Holm' END
$$;
COMMENT ON FUNCTION experiment.format_correction(text, boolean) IS 'internal: Holm, Benjamini-Hochberg (short: BH)';

-- the difference of a result and its interval, in one unit and to one number of decimals:
-- percentage points to 2 significant digits for proportions, else 4 significant digits
CREATE FUNCTION experiment.format_diff(kind text, diff float8, diff_lower float8, diff_upper float8,
                                       OUT diff_text text, OUT lower_text text, OUT upper_text text)
  LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
DECLARE
  pp boolean := kind = 'proportion';
  scale float8 := CASE WHEN pp THEN 100 ELSE 1 END;
  suffix text := CASE WHEN pp THEN 'pp' ELSE '' END;
  dec integer := CASE WHEN pp
    -- beyond 1e300 the values print in scientific notation, and * 100 could overflow
    THEN greatest(1, experiment.format_decimals(
           ARRAY(SELECT v * 100 FROM unnest(ARRAY[diff, diff_lower, diff_upper]) v WHERE abs(v) < 1e300), 2))
    ELSE experiment.format_decimals(ARRAY[diff, diff_lower, diff_upper], 4) END;
BEGIN
  diff_text := experiment.format_signed(diff, suffix, scale, dec);
  lower_text := experiment.format_signed(diff_lower, suffix, scale, dec);
  upper_text := experiment.format_signed(diff_upper, suffix, scale, dec);
END
$$;
COMMENT ON FUNCTION experiment.format_diff(text, float8, float8, float8, OUT text, OUT text, OUT text) IS
  'internal: difference and confidence bounds of a result as the readout prints them, all to the same decimals (pp for proportions)';

-- "+1.8pp (+3.1%)": the difference and the relative lift of a result
CREATE FUNCTION experiment.format_effect(r experiment.results) RETURNS text
  LANGUAGE sql IMMUTABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
  SELECT (experiment.format_diff(r.kind, r.diff, r.diff_lower, r.diff_upper)).diff_text
         || coalesce(' (' || experiment.format_signed(r.lift, '%', 100, 1) || ')', '')
$$;
COMMENT ON FUNCTION experiment.format_effect(experiment.results) IS
  'internal: difference and relative lift of a result, e.g. "+1.8pp (+3.1%)"';

-- the evidence of a result as the readout words it: the p-value (and the adjusted one when
-- a correction changed it), or for a Bayesian analysis the chance to win
CREATE FUNCTION experiment.format_evidence(r experiment.results) RETURNS text
  LANGUAGE sql IMMUTABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
  SELECT CASE
    WHEN r.analysis = 'bayesian' THEN
      'chance to win ' || coalesce(experiment.format_percent(r.chance_to_win) || '%', 'n/a')
    WHEN experiment.format_p(r.p_value_adjusted) IS DISTINCT FROM experiment.format_p(r.p_value) THEN
      experiment.format_p(r.p_value) || ' (' || experiment.format_correction(r.correction, true)
      || '-adjusted ' || experiment.format_p(r.p_value_adjusted, false) || ')'
    ELSE experiment.format_p(r.p_value)
  END
$$;
COMMENT ON FUNCTION experiment.format_evidence(experiment.results) IS
  'internal: "p = 0.003", "p = 0.012 (Holm-adjusted 0.024)" or "chance to win 97.1%"';

-- how the experiment is analysed, in words
CREATE FUNCTION experiment.format_analysis(ex experiment.experiments) RETURNS text
  LANGUAGE sql STABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
  SELECT CASE ex.analysis
    WHEN 'sequential' THEN format('sequential (valid at any look, N* = %s)',
      experiment.format_count(experiment.sequential_tuning_of(ex)::bigint))
    WHEN 'bayesian' THEN format('Bayesian (%s prior, ship at a chance to win of %s%%)',
      CASE WHEN ex.prior_variance IS NULL THEN 'flat' ELSE format('N(%s, %s)', ex.prior_mean, ex.prior_variance) END,
      round((ex.ship_threshold * 100)::numeric, 1)::float8)
    ELSE 'fixed horizon (valid at the planned end only)'
  END
$$;
COMMENT ON FUNCTION experiment.format_analysis(experiment.experiments) IS
  'internal: the experiment''s analysis in words, e.g. "sequential (valid at any look, N* = 18,672)"';

CREATE FUNCTION experiment.readout_metric_line(r experiment.results, control_label text, treatment_label text)
  RETURNS text
  LANGUAGE sql IMMUTABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
  SELECT format('%s: %s   %s: %s   Lift: %s   %s   %s',
    control_label, experiment.format_number(r.mean_control),
    treatment_label, experiment.format_number(r.mean_treatment),
    experiment.format_effect(r),
    CASE WHEN r.analysis = 'bayesian' AND r.lift_posterior IS NOT NULL
         -- the posterior of the lift, which the chance to win describes
         THEN format('posterior lift %s [%s, %s]', experiment.format_signed(r.lift_posterior, '%', 100, 1),
                     experiment.format_signed(r.lift_posterior_lower, '%', 100, 1),
                     experiment.format_signed(r.lift_posterior_upper, '%', 100, 1))
         ELSE format('%s CI [%s, %s]',
                     CASE WHEN r.alpha > 0 AND r.alpha < 1   -- (NaN is above every number)
                          THEN rtrim(rtrim(to_char(round(((1 - r.alpha) * 100)::numeric, 2), 'FM990.00'), '0'), '.') || '%'
                          ELSE 'n/a' END,
                     d.lower_text, d.upper_text) END,
    experiment.format_evidence(r))
  FROM experiment.format_diff(r.kind, r.diff, r.diff_lower, r.diff_upper) d
$$;
COMMENT ON FUNCTION experiment.readout_metric_line(experiment.results, text, text) IS
  'internal: one metric line of the readout: means, difference (pp for proportions) and lift, confidence interval, p-value';

-- ===========================================================================
-- The decision
-- ===========================================================================

-- why the decision cannot be made yet, or is invalid: the checks that come before any
-- metric, each with the line the readout prints (see doc/methodology.md, "The decision")
CREATE FUNCTION experiment.decision_blockers(experiment_id text)
  RETURNS TABLE (decision text, reason text)
  LANGUAGE plpgsql STABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
DECLARE
  ex experiment.experiments;
  h experiment.health;
  r record;
BEGIN
  ex := experiment.require_experiment(decision_blockers.experiment_id);
  SELECT * INTO h FROM experiment.health h0 WHERE h0.experiment_id = ex.id;
  IF h.refreshed_at IS NULL THEN
    RETURN QUERY SELECT 'KEEP RUNNING'::text,
      format('not refreshed yet: run SELECT experiment.refresh(%L)', ex.id);
    RETURN;
  END IF;
  IF h.refresh_error IS NOT NULL AND h.refresh_error_at > h.refreshed_at THEN
    RETURN QUERY SELECT 'KEEP RUNNING'::text,
      format('the latest refresh failed: %s', h.refresh_error);
  END IF;
  IF NOT EXISTS (SELECT 1 FROM experiment.experiment_metrics em
                 WHERE em.experiment_id = ex.id AND em.role = 'primary') THEN
    RETURN QUERY SELECT 'KEEP RUNNING'::text,
      'no primary metric: add one to experiment.experiment_metrics (role = ''primary'') and refresh'::text;
  END IF;
  IF h.stale THEN
    RETURN QUERY SELECT 'KEEP RUNNING'::text,
      format('%s exposure%s stored after the latest refresh: run SELECT experiment.refresh(%L)',
             experiment.format_count(h.exposures_after_refresh),
             CASE WHEN h.exposures_after_refresh = 1 THEN '' ELSE 's' END, ex.id);
  END IF;
  FOR r IN SELECT en.variant, en.units FROM experiment.enrollment en
           JOIN experiment.variants v ON v.experiment_id = en.experiment_id AND v.name = en.variant
           WHERE en.experiment_id = ex.id AND en.units < 2
           ORDER BY NOT v.is_control, en.variant LOOP
    RETURN QUERY SELECT 'KEEP RUNNING'::text,
      format('variant "%s" has %s unit%s; every variant needs at least 2 to be compared',
             r.variant, r.units, CASE WHEN r.units = 1 THEN '' ELSE 's' END);
  END LOOP;
  IF h.early_units > 0 THEN
    RETURN QUERY SELECT 'INVALID'::text,
      format('%s unit%s first exposed before the start (%s): correct start_at or remove those exposures',
             experiment.format_count(h.early_units), CASE WHEN h.early_units = 1 THEN ' was' ELSE 's were' END,
             to_char(ex.start_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI "UTC"'));
  END IF;
  IF h.srm_ok IS FALSE THEN
    RETURN QUERY SELECT 'INVALID'::text,
      format('sample ratio mismatch: SRM %s, below the threshold 0.001', experiment.format_p(h.srm_p_value));
  END IF;
  IF NOT h.runtime_ok THEN
    RETURN QUERY SELECT 'KEEP RUNNING'::text,
      format('%s of %s days run', floor(h.days_run), round(h.min_runtime_days::numeric, 1)::float8);
  END IF;
  IF NOT h.sample_ok THEN
    RETURN QUERY SELECT 'KEEP RUNNING'::text,
      format('%s of %s units per variant', experiment.format_count(coalesce(h.min_units_per_variant, 0)),
             experiment.format_count(h.target_units_per_variant));
  END IF;
  -- the primary metric and the guardrails must be readable by the current user (doc/security.md)
  FOR r IN SELECT em.metric, em.role FROM experiment.experiment_metrics em
           WHERE em.experiment_id = ex.id AND em.role IN ('primary', 'guardrail')
             AND NOT experiment.may_read_metric(em.metric)
           ORDER BY em.role <> 'primary', em.metric LOOP
    RETURN QUERY SELECT 'KEEP RUNNING'::text,
      format('%s metric %s is hidden: role %s may not read its source', r.role, r.metric, current_user);
  END LOOP;
  -- the primary metric and the guardrails must have been computed by the latest refresh
  FOR r IN SELECT em.metric, em.role FROM experiment.experiment_metrics em
           WHERE em.experiment_id = ex.id AND em.role IN ('primary', 'guardrail')
             AND experiment.may_read_metric(em.metric)
             AND NOT EXISTS (SELECT 1 FROM experiment.variant_stats vs
                             WHERE vs.experiment_id = em.experiment_id AND vs.metric = em.metric)
           ORDER BY em.role <> 'primary', em.metric LOOP
    RETURN QUERY SELECT 'KEEP RUNNING'::text,
      format('%s metric %s has no result: it was added after the latest refresh; run SELECT experiment.refresh(%L)',
             r.role, r.metric, ex.id);
  END LOOP;
END
$$;
COMMENT ON FUNCTION experiment.decision_blockers(text) IS
  'internal: the reasons, in order, why an experiment''s decision is KEEP RUNNING or INVALID before its metrics are weighed';

CREATE FUNCTION experiment.decision(experiment_id text, OUT decision text, OUT reason text)
  LANGUAGE plpgsql STABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
DECLARE
  ex experiment.experiments;
  t record;
  ntreat integer;
  prefix text;
  ship text[] := '{}';
  dont text[] := '{}';
  flat text[] := '{}';
  best text;
  best_gain float8;
  best_line text;
  hold text[] := '{}';
  method text;
BEGIN
  ex := experiment.require_experiment(decision.experiment_id);
  -- an INVALID reason outranks a KEEP RUNNING one: waiting does not mend it
  SELECT b.decision, b.reason INTO decision, reason
    FROM experiment.decision_blockers(ex.id) WITH ORDINALITY b
   ORDER BY b.decision <> 'INVALID', b.ordinality LIMIT 1;
  IF FOUND THEN
    RETURN;
  END IF;

  SELECT count(*) INTO ntreat FROM experiment.variants v WHERE v.experiment_id = ex.id AND NOT v.is_control;
  FOR t IN
    SELECT en.variant,
           pg_catalog.string_agg(format('guardrail %s failed: %s, %s', r.metric, experiment.format_effect(r),
                                        CASE WHEN coalesce(r.non_inferiority_margin, 0) = 0
                                             THEN 'one-sided p(harm) significant'
                                             ELSE format('harm above the margin of %s%%', experiment.format_percent(r.non_inferiority_margin)) END),
                                 '; ' ORDER BY r.metric)
             FILTER (WHERE r.guardrail_status = 'failed') AS guardrails_failed,
           pg_catalog.string_agg(format('guardrail %s: harm not yet shown below the margin of %s%% (bound %s%%)', r.metric,
                                        experiment.format_percent(r.non_inferiority_margin),
                                        experiment.format_percent(r.harm_bound)), '; ' ORDER BY r.metric)
             FILTER (WHERE r.guardrail_status = 'inconclusive') AS guardrails_open,
           bool_or(r.role = 'primary' AND r.better) AS primary_better,
           bool_or(r.role = 'primary' AND r.worse) AS primary_worse,
           pg_catalog.max(CASE WHEN r.role = 'primary' THEN
             CASE WHEN r.higher_is_better THEN r.lift ELSE -r.lift END END) AS primary_gain,
           pg_catalog.max(CASE WHEN r.role = 'primary' THEN
             format('%s %s, %s', r.metric, experiment.format_effect(r), experiment.format_evidence(r)) END)
             AS primary_line,
           pg_catalog.max(CASE WHEN r.role = 'primary' AND r.p_value IS NULL THEN
             format('%s: the test is undefined (no variance in either variant)', r.metric)
             WHEN r.role = 'primary' THEN
             format('%s %s, %s%% CI [%s, %s], %s', r.metric, experiment.format_effect(r),
                    rtrim(rtrim(to_char(round(((1 - r.alpha) * 100)::numeric, 2), 'FM990.00'), '0'), '.'),
                    (experiment.format_diff(r.kind, r.diff, r.diff_lower, r.diff_upper)).lower_text,
                    (experiment.format_diff(r.kind, r.diff, r.diff_lower, r.diff_upper)).upper_text,
                    experiment.format_evidence(r)) END) AS primary_ci_line
    FROM experiment.enrollment en
    JOIN experiment.variants v ON v.experiment_id = en.experiment_id AND v.name = en.variant AND NOT v.is_control
    LEFT JOIN experiment.results r ON r.experiment_id = en.experiment_id AND r.variant = en.variant
    WHERE en.experiment_id = ex.id
    GROUP BY en.variant ORDER BY en.variant
  LOOP
    prefix := CASE WHEN ntreat > 1 THEN t.variant || ': ' ELSE '' END;
    IF t.guardrails_failed IS NOT NULL THEN
      dont := dont || (prefix || t.guardrails_failed);
    ELSIF coalesce(t.primary_worse, false) THEN
      dont := dont || (prefix || 'primary metric worse: ' || t.primary_line);
    ELSIF coalesce(t.primary_better, false) AND t.guardrails_open IS NOT NULL THEN
      hold := hold || (prefix || t.guardrails_open);
    ELSIF coalesce(t.primary_better, false) THEN
      ship := ship || t.variant;
      IF best IS NULL OR t.primary_gain > best_gain THEN
        best := t.variant;
        best_gain := t.primary_gain;
        best_line := t.primary_line;
      END IF;
    ELSE
      flat := flat || (prefix || t.primary_ci_line);
    END IF;
  END LOOP;

  method := CASE ex.analysis WHEN 'sequential' THEN 'sequential, valid at any look'
                            WHEN 'bayesian' THEN 'Bayesian' ELSE 'fixed horizon' END;
  IF cardinality(ship) > 0 THEN
    decision := 'SHIP';
    reason := method || ': ' || CASE WHEN ntreat > 1 THEN format('ship %s: ', best) ELSE '' END || best_line
              || ', guardrails ok';
    RETURN;
  ELSIF cardinality(hold) > 0 THEN
    decision := 'KEEP RUNNING';
    reason := array_to_string(hold, '; ');
  ELSIF cardinality(dont) > 0 AND cardinality(dont) = ntreat THEN
    decision := 'DON''T SHIP';
    reason := array_to_string(dont, '; ');
  ELSE
    decision := 'NO SIGNIFICANT EFFECT';
    reason := array_to_string(flat || dont, '; ');
  END IF;
  reason := method || ': ' || reason;
END
$$;
COMMENT ON FUNCTION experiment.decision(text) IS
  'the recommended decision and a reason a person can read: KEEP RUNNING (not refreshed, stale, an arm under 2 units, runtime or sample short, a missing result), INVALID (exposures before the start, SRM), SHIP, DON''T SHIP or NO SIGNIFICANT EFFECT with the metric, lift and p-value';

-- ===========================================================================
-- The readout
-- ===========================================================================

CREATE FUNCTION experiment.readout(experiment_id text) RETURNS text
  LANGUAGE plpgsql STABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
DECLARE
  ex experiment.experiments;
  h experiment.health;
  dec record;
  b record;
  control text;
  ntreat integer;
  lines text[] := '{}';
  line text;
  r record;
  days float8;
  g record;
  s record;
  sec_seen boolean := false;
  indent text;
BEGIN
  ex := experiment.require_experiment(readout.experiment_id);
  SELECT * INTO h FROM experiment.health h0 WHERE h0.experiment_id = ex.id;
  IF h.refreshed_at IS NULL THEN
    RAISE EXCEPTION 'experiment "%" has not been refreshed', ex.id
      USING ERRCODE = 'invalid_parameter_value', HINT = format('Run SELECT experiment.refresh(%L) first.', ex.id);
  END IF;
  SELECT v.name INTO control FROM experiment.variants v WHERE v.experiment_id = ex.id AND v.is_control;
  SELECT count(*) INTO ntreat FROM experiment.variants v WHERE v.experiment_id = ex.id AND NOT v.is_control;

  days := h.days_run;
  lines := lines || format('Experiment: %s   Duration: %s', ex.id,
    CASE WHEN days IS NULL THEN 'n/a'
         WHEN floor(days) = 1 THEN '1 day'
         ELSE floor(days)::bigint || ' days' END);

  SELECT string_agg(experiment.format_count(en.units) || ' ' || en.variant, ' / '
                    ORDER BY en.variant IS DISTINCT FROM control, en.variant)
    INTO line FROM experiment.enrollment en WHERE en.experiment_id = ex.id;
  lines := lines || format('Sample: %s   SRM %s %s (threshold 0.001)', line, experiment.format_p(h.srm_p_value),
                           CASE WHEN h.srm_ok THEN 'ok' WHEN h.srm_ok IS NULL THEN 'not computed' ELSE 'FAILED' END);
  IF NOT h.multi_variant_ok THEN
    lines := lines || format('Warning: %s%% of the units (%s) were exposed to several variants and are excluded',
                             round((h.multi_variant_share * 100)::numeric, 1),
                             experiment.format_count(h.multi_variant_units));
  END IF;
  -- dimensional imbalance: a warning (the experiment's own SRM check decides validity)
  IF h.dimension_srm_ok IS FALSE THEN
    SELECT string_agg(format('%s = %s (SRM %s)', x ->> 'dimension', x ->> 'value',
                             experiment.format_p((x ->> 'p_value')::float8)), ', ' ORDER BY k)
             || CASE WHEN jsonb_array_length(h.dimension_srm_imbalanced) > 5
                     THEN format(' and %s more', jsonb_array_length(h.dimension_srm_imbalanced) - 5) ELSE '' END
      INTO line
      FROM jsonb_array_elements(h.dimension_srm_imbalanced) WITH ORDINALITY AS i(x, k) WHERE k <= 5;
    lines := lines || format('Warning: dimensional imbalance, the split within %s fails the SRM check', line);
  END IF;
  -- every reason the decision is held back or invalid, each on its line
  FOR b IN SELECT * FROM experiment.decision_blockers(ex.id) LOOP
    lines := lines || format('%s: %s', CASE b.decision WHEN 'INVALID' THEN 'Invalid' ELSE 'Keep running' END, b.reason);
  END LOOP;
  SELECT pg_catalog.min(mr.stratified_by) INTO line FROM experiment.metric_results mr WHERE mr.experiment_id = ex.id;
  lines := lines || format('Analysis: %s, alpha = %s%s%s', experiment.format_analysis(ex), ex.alpha,
    CASE WHEN ex.correction = 'none' OR ex.analysis = 'bayesian' THEN ''
         ELSE format(', %s correction of secondary metrics (family: %s)',
                     experiment.format_correction(ex.correction), ex.correction_family) END,
    -- post-stratified tests (the readout's metrics are those of metric_results)
    CASE WHEN line IS NOT NULL THEN format(', post-stratified by %s', line) ELSE '' END);
  -- cluster-randomised experiments (src/sql/099_design_cluster.sql): what the tests and the sample count
  SELECT pg_catalog.min(mr.clustered_by) INTO line FROM experiment.metric_results mr WHERE mr.experiment_id = ex.id;
  IF line IS NOT NULL THEN
    SELECT format('Clustered by %s: %s clusters%s; the tests, the sample and the SRM check count clusters',
                  line, experiment.format_count(f.clusters),
                  CASE WHEN f.clustered_units IS NOT NULL
                       THEN ' of ' || experiment.format_count(f.clustered_units) || ' units' ELSE '' END)
           || CASE WHEN f.unclustered_units > 0
                   THEN format(E'\nWarning: %s analysed units have no cluster and are left out of the clustered tests',
                               experiment.format_count(f.unclustered_units)) ELSE '' END
           || CASE WHEN f.mixed_clusters > 0 AND f.clustered_units IS NULL
                   THEN format(E'\nWarning: %s switchback windows were exposed to several variants and are left out',
                               experiment.format_count(f.mixed_clusters))
                   WHEN f.mixed_clusters > 0
                   THEN format(E'\nWarning: %s clusters have units in several variants (was the randomisation by cluster?); '
                               'each variant''s part counts as a cluster', experiment.format_count(f.mixed_clusters))
                   ELSE '' END
      INTO line FROM experiment.refreshes f WHERE f.experiment_id = ex.id;
    lines := lines || pg_catalog.string_to_array(line, E'\n');
  END IF;
  IF ntreat > 1 THEN
    lines := lines || format('Comparisons: each of the %s treatments against %s at alpha = %s, %s',
                             ntreat, control, ex.alpha,
                             CASE WHEN ex.correction = 'none' OR ex.analysis = 'bayesian'
                                  THEN 'not corrected for multiple comparisons'
                                  ELSE format('the primary metric %s-corrected across the arms',
                                              experiment.format_correction(ex.correction)) END);
  END IF;

  -- primary, then secondary metrics; a line for every treatment, with or without a result
  FOR g IN SELECT em.metric, em.role FROM experiment.experiment_metrics em
           WHERE em.experiment_id = ex.id AND em.role IN ('primary', 'secondary')
           ORDER BY em.role = 'secondary', em.metric LOOP
    IF g.role = 'primary' THEN
      lines := lines || format('Primary metric (%s):', g.metric);
      indent := '  ';
    ELSE
      IF NOT sec_seen THEN
        lines := lines || 'Secondary metrics:'::text;
        sec_seen := true;
      END IF;
      lines := lines || format('  %s:', g.metric);
      indent := '    ';
    END IF;
    FOR r IN SELECT v.name AS variant, rr AS res, rr.p_value IS NOT NULL AS has_result,
                    EXISTS (SELECT 1 FROM experiment.variant_stats vs
                            WHERE vs.experiment_id = ex.id AND vs.metric = g.metric) AS refreshed,
                    coalesce(en.units, 0) AS units
             FROM experiment.variants v
             LEFT JOIN experiment.enrollment en ON en.experiment_id = v.experiment_id AND en.variant = v.name
             LEFT JOIN experiment.results rr ON rr.experiment_id = v.experiment_id AND rr.metric = g.metric
                                            AND rr.variant = v.name
             WHERE v.experiment_id = ex.id AND NOT v.is_control
             ORDER BY v.name LOOP
      IF r.has_result THEN
        lines := lines || (indent
          || experiment.readout_metric_line(r.res, upper(left(control, 1)) || substr(control, 2),
                                            upper(left(r.variant, 1)) || substr(r.variant, 2))
          || CASE (r.res).method WHEN 'cuped' THEN '   (CUPED)' WHEN 'ratio' THEN '   (delta method)'
                                 WHEN 'cuped_ratio' THEN '   (CUPED, delta method)'
                                 WHEN 'quantile' THEN (SELECT format('   (p%s of %s)', rtrim(rtrim(to_char(mq.quantile * 100, 'FM990.999'), '0'), '.'),
                                                                     CASE mq.quantile_level WHEN 'event' THEN 'events' ELSE 'units' END)
                                                       FROM experiment.metrics mq WHERE mq.name = g.metric)
                                 ELSE '' END);
      ELSE
        lines := lines || format('%s%s: no result (%s)', indent, upper(left(r.variant, 1)) || substr(r.variant, 2),
          CASE WHEN NOT experiment.may_read_metric(g.metric)
                 THEN format('hidden: role %s may not read its source', current_user)
               WHEN NOT r.refreshed THEN 'the metric was added after the latest refresh'
               WHEN r.units < 2 THEN format('%s has %s unit%s', r.variant, r.units, CASE WHEN r.units = 1 THEN '' ELSE 's' END)
               WHEN (SELECT en2.units FROM experiment.enrollment en2
                     WHERE en2.experiment_id = ex.id AND en2.variant = control) < 2
                 THEN format('%s has fewer than 2 units', control)
               ELSE 'the test is undefined: no variance in either variant' END);
      END IF;
    END LOOP;
    -- the primary metric's cumulative lift by day of first exposure (experiment.results_daily)
    IF g.role = 'primary' THEN
      FOR s IN SELECT rd.variant, array_agg(rd.lift ORDER BY rd.day) AS lifts, count(*) AS ndays,
                      (array_agg(rd.lift ORDER BY rd.day DESC))[1] AS lift,
                      (array_agg(rd.lift_lower ORDER BY rd.day DESC))[1] AS lo,
                      (array_agg(rd.lift_upper ORDER BY rd.day DESC))[1] AS hi
               FROM experiment.results_daily rd
               WHERE rd.experiment_id = ex.id AND rd.metric = g.metric
               GROUP BY rd.variant ORDER BY rd.variant LOOP
        CONTINUE WHEN s.ndays < 2 OR s.lift IS NULL;
        lines := lines || format('  Lift by day%s: %s  %s%% [%s%%, %s%%] (cumulative, %s days of first exposure)',
                                 CASE WHEN ntreat > 1 THEN ' (' || s.variant || ')' ELSE '' END,
                                 experiment.sparkline(s.lifts),
                                 CASE WHEN s.lift >= 0 THEN '+' ELSE '' END || experiment.format_percent(s.lift),
                                 CASE WHEN s.lo >= 0 THEN '+' ELSE '' END || experiment.format_percent(s.lo),
                                 CASE WHEN s.hi >= 0 THEN '+' ELSE '' END || experiment.format_percent(s.hi),
                                 s.ndays);
      END LOOP;
    END IF;
  END LOOP;

  SELECT string_agg(q.metric || ' ' || CASE WHEN NOT experiment.may_read_metric(q.metric) THEN 'hidden'
                                             WHEN q.statuses IS NULL THEN 'no result'
                                             WHEN 'failed' = ANY (q.statuses) THEN 'FAILED'
                                             WHEN 'inconclusive' = ANY (q.statuses)
                                               THEN format('inconclusive (harm bound %s%%, margin %s%%)',
                                                           experiment.format_percent(q.bound),
                                                           experiment.format_percent(q.margin))
                                             WHEN q.undefined THEN 'ok (no variance)' ELSE 'ok' END,
                    '   ' ORDER BY q.metric)
    INTO line
    FROM (SELECT em.metric, array_agg(rr.guardrail_status) FILTER (WHERE rr.guardrail_status IS NOT NULL) AS statuses,
                 pg_catalog.max(rr.harm_bound) AS bound, pg_catalog.max(em.non_inferiority_margin) AS margin,
                 bool_and(rr.p_value IS NULL) AS undefined
          FROM experiment.experiment_metrics em
          LEFT JOIN experiment.results rr ON rr.experiment_id = em.experiment_id AND rr.metric = em.metric
          WHERE em.experiment_id = ex.id AND em.role = 'guardrail'
          GROUP BY em.metric) q;
  lines := lines || ('Guardrails:  ' || coalesce(line, 'none'));

  SELECT * INTO dec FROM experiment.decision(ex.id);
  lines := lines || ('Decision: ' || dec.decision || ' (' || dec.reason || ')');
  RETURN array_to_string(lines, E'\n');
END
$$;
COMMENT ON FUNCTION experiment.readout(text) IS
  'the decision summary of an experiment as text: duration, sample and SRM, why a decision is held back, primary and secondary metrics, guardrails, decision and its reason';

-- a conclusion's sources: [{"source": relation oid, "columns": [column name, ...]}, ...]
CREATE FUNCTION experiment.sources_valid(sources jsonb) RETURNS boolean
  LANGUAGE sql IMMUTABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
  SELECT jsonb_typeof(sources) = 'array'
     AND NOT EXISTS (SELECT 1 FROM jsonb_array_elements(sources) s
                     WHERE NOT (jsonb_typeof(s) = 'object'
                                AND jsonb_typeof(s -> 'source') = 'number'
                                AND (s ->> 'source') ~ '^[0-9]{1,10}$'
                                AND (s ->> 'source')::bigint <= 4294967295
                                AND jsonb_typeof(s -> 'columns') = 'array'
                                AND NOT EXISTS (SELECT 1 FROM jsonb_array_elements(s -> 'columns') c
                                                WHERE jsonb_typeof(c) <> 'string')))
$$;
COMMENT ON FUNCTION experiment.sources_valid(jsonb) IS
  'internal: whether a conclusion''s sources has the form [{"source": oid, "columns": [name, ...]}, ...]';

CREATE TABLE experiment.conclusions (
  id bigserial PRIMARY KEY,
  experiment_id text NOT NULL REFERENCES experiment.experiments (id) ON DELETE CASCADE,
  decision text NOT NULL CHECK (decision IN ('SHIP', 'DON''T SHIP', 'NO SIGNIFICANT EFFECT', 'INVALID')),
  notes text,
  recommended_decision text,
  readout text,
  results jsonb NOT NULL,
  srm jsonb NOT NULL,
  health jsonb,
  refreshed_at timestamptz,
  concluded_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
  concluded_by text NOT NULL DEFAULT CURRENT_USER,
  sources jsonb NOT NULL DEFAULT '[]',
  CONSTRAINT conclusions_sources_valid CHECK (experiment.sources_valid(sources))
);
COMMENT ON TABLE experiment.conclusions IS
  'recorded decisions with a write-up and a snapshot of the results, SRM and health as they stood';
COMMENT ON COLUMN experiment.conclusions.sources IS
  'the source relations (oid) and columns the experiment''s metrics read when it was concluded: who may read them may see the conclusion';
SELECT pg_catalog.pg_extension_config_dump('experiment.conclusions', '');
SELECT pg_catalog.pg_extension_config_dump('experiment.conclusions_id_seq', '');
COMMENT ON SEQUENCE experiment.conclusions_id_seq IS 'ids of recorded conclusions';

CREATE FUNCTION experiment.conclude(experiment_id text, decision text, notes text DEFAULT NULL)
  RETURNS experiment.conclusions
  LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
DECLARE
  d text := upper(btrim(decision));
  c experiment.conclusions;
BEGIN
  PERFORM experiment.require_experiment(conclude.experiment_id);
  PERFORM experiment.require_experiment_owner(conclude.experiment_id, 'conclude');
  IF d IS NULL OR d NOT IN ('SHIP', 'DON''T SHIP', 'NO SIGNIFICANT EFFECT', 'INVALID') THEN
    PERFORM experiment.raise_invalid_choice('decision', decision, '{SHIP,DON''T SHIP,NO SIGNIFICANT EFFECT,INVALID}');
  END IF;
  IF NOT EXISTS (SELECT 1 FROM experiment.refreshes f WHERE f.experiment_id = conclude.experiment_id
                 AND f.refreshed_at IS NOT NULL) THEN
    PERFORM experiment.refresh(conclude.experiment_id);
  END IF;
  INSERT INTO experiment.conclusions AS k (experiment_id, decision, notes, recommended_decision, readout,
                                           results, srm, health, refreshed_at, sources)
  SELECT conclude.experiment_id, d, conclude.notes,
         (SELECT dd.decision FROM experiment.decision(conclude.experiment_id) dd),
         experiment.readout(conclude.experiment_id),
         (SELECT coalesce(jsonb_agg(to_jsonb(rr) ORDER BY rr.metric, rr.variant), '[]')
            FROM experiment.results rr WHERE rr.experiment_id = conclude.experiment_id),
         (SELECT coalesce(jsonb_agg(to_jsonb(s) ORDER BY s.variant), '[]')
            FROM experiment.srm s WHERE s.experiment_id = conclude.experiment_id),
         (SELECT to_jsonb(h) FROM experiment.health h WHERE h.experiment_id = conclude.experiment_id),
         (SELECT f.refreshed_at FROM experiment.refreshes f WHERE f.experiment_id = conclude.experiment_id),
         (SELECT coalesce(jsonb_agg(DISTINCT jsonb_build_object(
                            'source', p.source::oid::bigint,
                            'columns', to_jsonb(array_remove(ARRAY[p.unit_column, p.time_column, p.value_column], NULL)))),
                          '[]')
            FROM experiment.experiment_metrics em
            JOIN experiment.metrics m ON m.name = em.metric
            JOIN experiment.metrics p ON p.name IN (m.name, m.numerator, m.denominator) AND p.kind <> 'ratio'
           WHERE em.experiment_id = conclude.experiment_id AND experiment.may_read_metric(m.name))
  RETURNING * INTO c;
  UPDATE experiment.experiments e1 SET status = 'concluded'
   WHERE e1.id = conclude.experiment_id AND e1.status IS DISTINCT FROM 'concluded';
  RETURN c;
END
$$;
COMMENT ON FUNCTION experiment.conclude(text, text, text) IS
  'record the decision and notes of an experiment with a snapshot of its readout, results, SRM and health, and mark it concluded';
