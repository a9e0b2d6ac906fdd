-- ---------------------------------------------------------------------------
-- experiment.sketch: a mergeable quantile sketch (DDSketch, relative accuracy
-- 0.005) and the quantile tests (doc/statistics.md, "Quantiles")
-- ---------------------------------------------------------------------------

CREATE TYPE experiment.sketch;

CREATE FUNCTION experiment.sketch_in(cstring) RETURNS experiment.sketch
  AS 'MODULE_PATHNAME', 'exp_sketch_in' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
CREATE FUNCTION experiment.sketch_out(experiment.sketch) RETURNS cstring
  AS 'MODULE_PATHNAME', 'exp_sketch_out' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
CREATE FUNCTION experiment.sketch_recv(internal) RETURNS experiment.sketch
  AS 'MODULE_PATHNAME', 'exp_sketch_recv' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
CREATE FUNCTION experiment.sketch_send(experiment.sketch) RETURNS bytea
  AS 'MODULE_PATHNAME', 'exp_sketch_send' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

CREATE TYPE experiment.sketch (
  INPUT = experiment.sketch_in,
  OUTPUT = experiment.sketch_out,
  RECEIVE = experiment.sketch_recv,
  SEND = experiment.sketch_send,
  INTERNALLENGTH = VARIABLE,
  ALIGNMENT = double,
  STORAGE = extended
);
COMMENT ON TYPE experiment.sketch IS
  'Mergeable quantile sketch (DDSketch, relative accuracy 0.005, at most 2048 bins per sign; text form is JSON)';

COMMENT ON FUNCTION experiment.sketch_in(cstring) IS 'internal: text input of experiment.sketch (validated)';
COMMENT ON FUNCTION experiment.sketch_out(experiment.sketch) IS 'internal: text output of experiment.sketch (exact)';
COMMENT ON FUNCTION experiment.sketch_recv(internal) IS 'internal: binary input of experiment.sketch (validated)';
COMMENT ON FUNCTION experiment.sketch_send(experiment.sketch) IS 'internal: binary output of experiment.sketch';

-- equality and merge

CREATE FUNCTION experiment.sketch_eq(experiment.sketch, experiment.sketch) RETURNS boolean
  AS 'MODULE_PATHNAME', 'exp_sketch_eq' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION experiment.sketch_eq(experiment.sketch, experiment.sketch) IS
  'internal: true when both hold the same bins, counts, min and max';
CREATE FUNCTION experiment.sketch_ne(experiment.sketch, experiment.sketch) RETURNS boolean
  AS 'MODULE_PATHNAME', 'exp_sketch_ne' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION experiment.sketch_ne(experiment.sketch, experiment.sketch) IS
  'internal: negation of sketch_eq';
CREATE FUNCTION experiment.sketch_merge(a experiment.sketch, b experiment.sketch) RETURNS experiment.sketch
  AS 'MODULE_PATHNAME', 'exp_sketch_merge' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION experiment.sketch_merge(experiment.sketch, experiment.sketch) IS
  'the sketch of the union of both samples (exact: equal, bin for bin, to the sketch of all the values); also operator +';

CREATE OPERATOR experiment.= (
  LEFTARG = experiment.sketch, RIGHTARG = experiment.sketch,
  FUNCTION = experiment.sketch_eq,
  COMMUTATOR = OPERATOR(experiment.=), NEGATOR = OPERATOR(experiment.<>),
  RESTRICT = eqsel, JOIN = eqjoinsel
);
COMMENT ON OPERATOR experiment.= (experiment.sketch, experiment.sketch) IS 'exactly equal sketches';
CREATE OPERATOR experiment.<> (
  LEFTARG = experiment.sketch, RIGHTARG = experiment.sketch,
  FUNCTION = experiment.sketch_ne,
  COMMUTATOR = OPERATOR(experiment.<>), NEGATOR = OPERATOR(experiment.=),
  RESTRICT = neqsel, JOIN = neqjoinsel
);
COMMENT ON OPERATOR experiment.<> (experiment.sketch, experiment.sketch) IS 'sketches that differ';
CREATE OPERATOR experiment.+ (
  LEFTARG = experiment.sketch, RIGHTARG = experiment.sketch,
  FUNCTION = experiment.sketch_merge, COMMUTATOR = OPERATOR(experiment.+)
);
COMMENT ON OPERATOR experiment.+ (experiment.sketch, experiment.sketch) IS 'merge two sketches';

-- accessors

CREATE FUNCTION experiment.n(s experiment.sketch) RETURNS bigint
  AS 'MODULE_PATHNAME', 'exp_sketch_n_fn' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION experiment.n(experiment.sketch) IS 'number of values in the sketch';
CREATE FUNCTION experiment.quantile(s experiment.sketch, q float8) RETURNS float8
  AS 'MODULE_PATHNAME', 'exp_sketch_quantile_fn' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION experiment.quantile(experiment.sketch, float8) IS
  'quantile of probability q in [0, 1]: the value of rank floor(q (n - 1)) of the sorted values (numpy method ''lower''), within 0.5% (relative); q = 0 and 1 give min and max exactly';
CREATE FUNCTION experiment.rank(s experiment.sketch, x float8) RETURNS float8
  AS 'MODULE_PATHNAME', 'exp_sketch_rank_fn' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION experiment.rank(experiment.sketch, float8) IS
  'estimated number of values <= x: the counts of the bins up to and including the bin of x';

-- aggregates

CREATE FUNCTION experiment.sketch_accum(experiment.sketch, float8) RETURNS experiment.sketch
  AS 'MODULE_PATHNAME', 'exp_sketch_accum' LANGUAGE C IMMUTABLE PARALLEL SAFE;
COMMENT ON FUNCTION experiment.sketch_accum(experiment.sketch, float8) IS
  'internal: transition function of experiment.sketch(value)';
CREATE FUNCTION experiment.sketch_combine(experiment.sketch, experiment.sketch) RETURNS experiment.sketch
  AS 'MODULE_PATHNAME', 'exp_sketch_combine' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION experiment.sketch_combine(experiment.sketch, experiment.sketch) IS
  'internal: combine function of the sketch aggregates (updates its first argument in place)';
CREATE FUNCTION experiment.sketch_final(experiment.sketch) RETURNS experiment.sketch
  AS 'MODULE_PATHNAME', 'exp_sketch_final' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION experiment.sketch_final(experiment.sketch) IS
  'internal: final function of the sketch aggregates (drops the working state''s spare capacity)';

CREATE AGGREGATE experiment.sketch(value float8) (
  SFUNC = experiment.sketch_accum, STYPE = experiment.sketch,
  COMBINEFUNC = experiment.sketch_combine, FINALFUNC = experiment.sketch_final,
  PARALLEL = SAFE
);
COMMENT ON AGGREGATE experiment.sketch(float8) IS
  'quantile sketch of the values (NULLs skipped, NaN and infinities are errors; no rows gives NULL)';
CREATE AGGREGATE experiment.merge(experiment.sketch) (
  SFUNC = experiment.sketch_combine, STYPE = experiment.sketch,
  COMBINEFUNC = experiment.sketch_combine, FINALFUNC = experiment.sketch_final,
  PARALLEL = SAFE
);
COMMENT ON AGGREGATE experiment.merge(experiment.sketch) IS
  'merge stored sketches (e.g. per unit or per day) into one, exactly';

-- quantile tests

CREATE FUNCTION experiment.quantile_test(control experiment.sketch, treatment experiment.sketch, q float8,
                                         alpha float8 DEFAULT 0.05, alternative text DEFAULT 'two-sided',
                                         sequential_tuning float8 DEFAULT NULL)
  RETURNS experiment.test_result
  AS 'MODULE_PATHNAME', 'exp_quantile_test' LANGUAGE C IMMUTABLE PARALLEL SAFE;
COMMENT ON FUNCTION experiment.quantile_test(experiment.sketch, experiment.sketch, float8, float8, text, float8) IS
  'test of the difference of the q-quantiles of two sketches of one value per unit (standard errors from the order-statistic interval, as GrowthBook''s QuantileStatistic); mean_control and mean_treatment are the quantiles; normal reference, df NULL';

CREATE FUNCTION experiment.quantile_test(control experiment.sketch, treatment experiment.sketch, q float8,
                                         control_clusters experiment.moments, treatment_clusters experiment.moments,
                                         alpha float8 DEFAULT 0.05, alternative text DEFAULT 'two-sided',
                                         sequential_tuning float8 DEFAULT NULL)
  RETURNS experiment.test_result
  AS 'MODULE_PATHNAME', 'exp_quantile_test_clustered' LANGUAGE C IMMUTABLE PARALLEL SAFE;
COMMENT ON FUNCTION experiment.quantile_test(experiment.sketch, experiment.sketch, float8, experiment.moments, experiment.moments, float8, text, float8) IS
  'test of the difference of the q-quantiles of all events of two arms whose units are clusters of events: *_clusters are bivariate moments over the arm''s units of (b_i = events <= the arm''s quantile, n_i = events), the variance scaled by their design effect (GrowthBook''s QuantileClusteredStatistic); n_control and n_treatment count units';
