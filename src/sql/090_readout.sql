-- ---------------------------------------------------------------------------
-- The readout: decision(), text formatting, readout(), conclusions (doc/analysis.md,
-- doc/methodology.md)
-- ---------------------------------------------------------------------------

CREATE FUNCTION experiment.decision(experiment_id text, OUT decision text, OUT reason text)
  LANGUAGE plpgsql STABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
DECLARE
  h experiment.health;
  ex experiment.experiments;
  t record;
  ntreat integer := 0;
  nship integer := 0;
  ndont integer := 0;
  best text;
  best_lift float8;
  d text;
BEGIN
  ex := experiment.require_experiment(decision.experiment_id);
  SELECT * INTO h FROM experiment.health h0 WHERE h0.experiment_id = decision.experiment_id;
  IF h.refreshed_at IS NULL THEN
    decision := NULL;
    reason := 'not refreshed yet';
    RETURN;
  END IF;
  IF h.srm_ok IS FALSE THEN
    decision := 'INVALID';
    reason := format('sample ratio mismatch, p = %s', experiment.format_p(h.srm_p_value, false));
    RETURN;
  END IF;
  IF NOT h.runtime_ok THEN
    decision := 'KEEP RUNNING';
    reason := format('%s of %s days run', floor(h.days_run), round(h.min_runtime_days::numeric, 1)::float8);
    IF NOT h.sample_ok THEN
      reason := reason || format(', %s of %s units per variant', experiment.format_count(coalesce(h.min_units_per_variant, 0)),
                                 experiment.format_count(h.target_units_per_variant));
    END IF;
    RETURN;
  END IF;
  IF NOT h.sample_ok THEN
    decision := 'KEEP RUNNING';
    reason := format('%s of %s units per variant', experiment.format_count(coalesce(h.min_units_per_variant, 0)),
                     experiment.format_count(h.target_units_per_variant));
    RETURN;
  END IF;

  FOR t IN
    SELECT en.variant,
           bool_or(r.role = 'guardrail' AND NOT r.guardrail_ok) AS guardrail_failed,
           bool_or(r.role = 'primary' AND r.better) AS primary_better,
           bool_or(r.role = 'primary' AND r.worse) AS primary_worse,
           pg_catalog.max(CASE WHEN r.role = 'primary' THEN
             CASE WHEN r.higher_is_better THEN r.lift ELSE -r.lift END END) AS primary_gain
    FROM experiment.enrollment en
    JOIN experiment.variants v ON v.experiment_id = en.experiment_id AND v.name = en.variant AND NOT v.is_control
    LEFT JOIN experiment.results r ON r.experiment_id = en.experiment_id AND r.variant = en.variant
    WHERE en.experiment_id = decision.experiment_id
    GROUP BY en.variant ORDER BY en.variant
  LOOP
    ntreat := ntreat + 1;
    IF coalesce(t.guardrail_failed, false) OR coalesce(t.primary_worse, false) THEN
      ndont := ndont + 1;
    ELSIF coalesce(t.primary_better, false) THEN
      nship := nship + 1;
      IF best IS NULL OR t.primary_gain > best_lift THEN
        best := t.variant;
        best_lift := t.primary_gain;
      END IF;
    END IF;
  END LOOP;

  IF nship > 0 THEN
    decision := 'SHIP';
    reason := CASE WHEN ntreat > 1 THEN format('ship %s', best) END;
  ELSIF ntreat > 0 AND ndont = ntreat THEN
    decision := 'DON''T SHIP';
  ELSE
    decision := 'NO SIGNIFICANT EFFECT';
  END IF;
END
$$;

-- text formatting of the readout
CREATE FUNCTION experiment.format_number(x float8) RETURNS text
  LANGUAGE sql IMMUTABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
  SELECT CASE
    WHEN x IS NULL THEN 'n/a'
    WHEN x = 0 THEN '0'
    WHEN x <> x OR abs(x) = 'Infinity'::float8 THEN x::text
    WHEN abs(x) >= 1000 THEN to_char(round(x::numeric), 'FM999,999,999,999,999,990')
    WHEN abs(x) >= 10 THEN to_char(round(x::numeric, 2), 'FM990.00')
    WHEN abs(x) >= 1 THEN to_char(round(x::numeric, 3), 'FM0.000')
    ELSE round(x::numeric, greatest(3, 2 - floor(log(abs(x)::numeric))::integer))::text
  END
$$;
COMMENT ON FUNCTION experiment.format_number(float8) IS
  'a number as the readout prints it: thousands separators from 1,000, else 2 or 3 decimals, small values to 3 significant digits';

CREATE FUNCTION experiment.format_count(n bigint) RETURNS text
  LANGUAGE sql IMMUTABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
  SELECT CASE WHEN n IS NULL THEN 'n/a' ELSE to_char(n, 'FM999,999,999,999,999,990') END
$$;
COMMENT ON FUNCTION experiment.format_count(bigint) IS 'a count with thousands separators: 12,841';

CREATE FUNCTION experiment.format_signed(x float8, suffix text DEFAULT '', scale float8 DEFAULT 1, decimals integer DEFAULT NULL)
  RETURNS text
  LANGUAGE sql IMMUTABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
  SELECT CASE
    WHEN x IS NULL THEN 'n/a'
    WHEN decimals IS NULL THEN CASE WHEN x * scale >= 0 THEN '+' ELSE '' END || experiment.format_number(x * scale) || suffix
    ELSE CASE WHEN round((x * scale)::numeric, decimals) >= 0 THEN '+' ELSE '' END
         || to_char(round((x * scale)::numeric, decimals),
                    'FM999,999,999,990' || CASE WHEN decimals > 0 THEN '.' || repeat('0', decimals) ELSE '' END)
         || suffix
  END
$$;
COMMENT ON FUNCTION experiment.format_signed(float8, text, float8, integer) IS
  'x * scale with an explicit sign and a suffix (''%'', ''pp''), to a fixed number of decimals when given';

CREATE FUNCTION experiment.format_p(p float8, with_label boolean DEFAULT true) RETURNS text
  LANGUAGE sql IMMUTABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
  SELECT CASE WHEN with_label THEN 'p ' ELSE '' END || CASE
    WHEN p IS NULL THEN CASE WHEN with_label THEN '= ' ELSE '' END || 'n/a'
    WHEN p < 0.001 THEN '< 0.001'
    WHEN p < 0.1 THEN CASE WHEN with_label THEN '= ' ELSE '' END || to_char(round(p::numeric, 3), 'FM0.000')
    ELSE CASE WHEN with_label THEN '= ' ELSE '' END || to_char(round(p::numeric, 2), 'FM0.00')
  END
$$;
COMMENT ON FUNCTION experiment.format_p(float8, boolean) IS
  'a p-value as the readout prints it: "p = 0.83", "p = 0.003", "p < 0.001"';

COMMENT ON FUNCTION experiment.decision(text) IS
  'the decision rule of the readout: INVALID (SRM), KEEP RUNNING (runtime or sample short), SHIP, DON''T SHIP, NO SIGNIFICANT EFFECT, with a reason';

CREATE FUNCTION experiment.readout_metric_line(r experiment.results, control_label text, treatment_label text)
  RETURNS text
  LANGUAGE sql IMMUTABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
  SELECT format('%s: %s   %s: %s   Lift: %s   %s%% CI [%s, %s]   %s',
    control_label, experiment.format_number(r.mean_control),
    treatment_label, experiment.format_number(r.mean_treatment),
    CASE WHEN r.kind = 'proportion'
         THEN experiment.format_signed(r.diff, 'pp', 100, 1) || ' (' || experiment.format_signed(r.lift, '%', 100, 1) || ')'
         ELSE experiment.format_signed(r.diff) || ' (' || experiment.format_signed(r.lift, '%', 100, 1) || ')'
    END,
    rtrim(rtrim(to_char(round(((1 - r.alpha) * 100)::numeric, 2), 'FM990.00'), '0'), '.'),
    CASE WHEN r.kind = 'proportion' THEN experiment.format_signed(r.diff_lower, 'pp', 100, 1)
         ELSE experiment.format_signed(r.diff_lower) END,
    CASE WHEN r.kind = 'proportion' THEN experiment.format_signed(r.diff_upper, 'pp', 100, 1)
         ELSE experiment.format_signed(r.diff_upper) END,
    experiment.format_p(r.p_value))
$$;
COMMENT ON FUNCTION experiment.readout_metric_line(experiment.results, text, text) IS
  'one metric line of the readout: means, difference (pp for proportions) and lift, confidence interval, p-value';

CREATE FUNCTION experiment.readout(experiment_id text) RETURNS text
  LANGUAGE plpgsql STABLE PARALLEL SAFE
  SET search_path = pg_catalog, experiment, pg_temp
AS $$
DECLARE
  ex experiment.experiments;
  h experiment.health;
  dec record;
  control text;
  ntreat integer;
  lines text[] := '{}';
  line text;
  r experiment.results;
  days float8;
  g record;
  sec_seen boolean := false;
  label text;
BEGIN
  ex := experiment.require_experiment(readout.experiment_id);
  SELECT * INTO h FROM experiment.health h0 WHERE h0.experiment_id = ex.id;
  IF h.refreshed_at IS NULL THEN
    RAISE EXCEPTION 'experiment "%" has not been refreshed', ex.id
      USING ERRCODE = '22023', HINT = format('run SELECT experiment.refresh(%L)', ex.id);
  END IF;
  SELECT v.name INTO control FROM experiment.variants v WHERE v.experiment_id = ex.id AND v.is_control;
  SELECT count(*) INTO ntreat FROM experiment.enrollment en
    WHERE en.experiment_id = ex.id AND en.variant IS DISTINCT FROM control;

  days := h.days_run;
  lines := lines || format('Experiment: %s   Duration: %s', ex.id,
    CASE WHEN days IS NULL THEN 'n/a'
         WHEN floor(days) = 1 THEN '1 day'
         ELSE floor(days)::bigint || ' days' END);

  SELECT string_agg(experiment.format_count(en.units) || ' ' || en.variant, ' / '
                    ORDER BY en.variant IS DISTINCT FROM control, en.variant)
    INTO line FROM experiment.enrollment en WHERE en.experiment_id = ex.id;
  lines := lines || rtrim(format('Sample: %s   SRM %s %s', line, experiment.format_p(h.srm_p_value),
                                 CASE WHEN h.srm_ok THEN 'ok' WHEN h.srm_ok IS NULL THEN '' ELSE 'FAILED' END));
  IF NOT h.multi_variant_ok THEN
    lines := lines || format('Warning: %s%% of the units (%s) were exposed to several variants and are excluded',
                             round((h.multi_variant_share * 100)::numeric, 1),
                             experiment.format_count(h.multi_variant_units));
  END IF;

  -- primary, then secondary metrics
  FOR g IN SELECT em.metric, em.role, m.kind FROM experiment.experiment_metrics em
           JOIN experiment.metrics m ON m.name = em.metric
           WHERE em.experiment_id = ex.id AND em.role IN ('primary', 'secondary')
           ORDER BY em.role = 'secondary', em.metric LOOP
    IF g.role = 'primary' THEN
      lines := lines || format('Primary metric (%s):', g.metric);
    ELSE
      IF NOT sec_seen THEN
        lines := lines || 'Secondary metrics:'::text;
        sec_seen := true;
      END IF;
      lines := lines || format('  %s:', g.metric);
    END IF;
    FOR r IN SELECT * FROM experiment.results rr
             WHERE rr.experiment_id = ex.id AND rr.metric = g.metric ORDER BY rr.variant LOOP
      label := upper(left(r.variant, 1)) || substr(r.variant, 2);
      lines := lines || (CASE WHEN g.role = 'primary' THEN '  ' ELSE '    ' END
        || experiment.readout_metric_line(r, upper(left(control, 1)) || substr(control, 2), label)
        || CASE r.method WHEN 'cuped' THEN '   (CUPED)' WHEN 'ratio' THEN '   (delta method)' ELSE '' END);
    END LOOP;
  END LOOP;

  SELECT string_agg(q.metric || ' ' || CASE WHEN q.ok THEN 'ok' ELSE 'FAILED' END, '   ' ORDER BY q.metric)
    INTO line
    FROM (SELECT em.metric, bool_and(coalesce(rr.guardrail_ok, true)) AS ok
          FROM experiment.experiment_metrics em
          LEFT JOIN experiment.results rr ON rr.experiment_id = em.experiment_id AND rr.metric = em.metric
          WHERE em.experiment_id = ex.id AND em.role = 'guardrail'
          GROUP BY em.metric) q;
  lines := lines || ('Guardrails:  ' || coalesce(line, 'none'));

  SELECT * INTO dec FROM experiment.decision(ex.id);
  lines := lines || ('Decision: ' || coalesce(dec.decision, 'n/a')
                     || CASE WHEN dec.reason IS NOT NULL THEN ' (' || dec.reason || ')' ELSE '' END);
  RETURN array_to_string(lines, E'\n');
END
$$;
COMMENT ON FUNCTION experiment.readout(text) IS
  'the decision summary of an experiment as text: duration, sample and SRM, primary and secondary metrics, guardrails, decision';

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
  concluded_by text NOT NULL DEFAULT CURRENT_USER
);
COMMENT ON TABLE experiment.conclusions IS
  'recorded decisions with a write-up and a snapshot of the results, SRM and health as they stood';
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
  IF d IS NULL OR d NOT IN ('SHIP', 'DON''T SHIP', 'NO SIGNIFICANT EFFECT', 'INVALID') THEN
    PERFORM experiment.raise_invalid_choice('decision', decision, '{SHIP,DON''T SHIP,NO SIGNIFICANT EFFECT,INVALID}');
  END IF;
  IF NOT EXISTS (SELECT 1 FROM experiment.refreshes f WHERE f.experiment_id = conclude.experiment_id
                 AND f.refreshed_at IS NOT NULL) THEN
    PERFORM experiment.refresh(conclude.experiment_id);
  END IF;
  INSERT INTO experiment.conclusions AS k (experiment_id, decision, notes, recommended_decision, readout,
                                           results, srm, health, refreshed_at)
  SELECT conclude.experiment_id, d, conclude.notes,
         (SELECT dd.decision FROM experiment.decision(conclude.experiment_id) dd),
         experiment.readout(conclude.experiment_id),
         (SELECT coalesce(jsonb_agg(to_jsonb(rr) ORDER BY rr.metric, rr.variant), '[]')
            FROM experiment.results rr WHERE rr.experiment_id = conclude.experiment_id),
         (SELECT coalesce(jsonb_agg(to_jsonb(s) ORDER BY s.variant), '[]')
            FROM experiment.srm s WHERE s.experiment_id = conclude.experiment_id),
         (SELECT to_jsonb(h) FROM experiment.health h WHERE h.experiment_id = conclude.experiment_id),
         (SELECT f.refreshed_at FROM experiment.refreshes f WHERE f.experiment_id = conclude.experiment_id)
  RETURNING * INTO c;
  UPDATE experiment.experiments e1 SET status = 'concluded'
   WHERE e1.id = conclude.experiment_id AND e1.status IS DISTINCT FROM 'concluded';
  RETURN c;
END
$$;
COMMENT ON FUNCTION experiment.conclude(text, text, text) IS
  'record the decision and notes of an experiment with a snapshot of its readout, results, SRM and health, and mark it concluded';
