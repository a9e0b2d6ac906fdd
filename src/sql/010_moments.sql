-- ---------------------------------------------------------------------------
-- experiment.moments: mergeable sufficient statistics
-- ---------------------------------------------------------------------------

CREATE TYPE experiment.moments;

CREATE FUNCTION experiment.moments_in(cstring) RETURNS experiment.moments
  AS 'MODULE_PATHNAME', 'exp_moments_in' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
CREATE FUNCTION experiment.moments_out(experiment.moments) RETURNS cstring
  AS 'MODULE_PATHNAME', 'exp_moments_out' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
CREATE FUNCTION experiment.moments_recv(internal) RETURNS experiment.moments
  AS 'MODULE_PATHNAME', 'exp_moments_recv' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
CREATE FUNCTION experiment.moments_send(experiment.moments) RETURNS bytea
  AS 'MODULE_PATHNAME', 'exp_moments_send' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

CREATE TYPE experiment.moments (
  INPUT = experiment.moments_in,
  OUTPUT = experiment.moments_out,
  RECEIVE = experiment.moments_recv,
  SEND = experiment.moments_send,
  INTERNALLENGTH = VARIABLE,
  ALIGNMENT = double,
  STORAGE = plain
);
COMMENT ON TYPE experiment.moments IS
  'Count, means and co-moment matrix of 1, 2 or 4 variables: mergeable sufficient statistics (text form is JSON)';

COMMENT ON FUNCTION experiment.moments_in(cstring) IS 'internal: text input of experiment.moments (validated)';
COMMENT ON FUNCTION experiment.moments_out(experiment.moments) IS 'internal: text output of experiment.moments (exact, shortest float form)';
COMMENT ON FUNCTION experiment.moments_recv(internal) IS 'internal: binary input of experiment.moments (validated)';
COMMENT ON FUNCTION experiment.moments_send(experiment.moments) IS 'internal: binary output of experiment.moments';

-- equality and merge

CREATE FUNCTION experiment.moments_eq(experiment.moments, experiment.moments) RETURNS boolean
  AS 'MODULE_PATHNAME', 'exp_moments_eq' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION experiment.moments_eq(experiment.moments, experiment.moments) IS
  'internal: true when both hold the same count, means and co-moments exactly';
CREATE FUNCTION experiment.moments_ne(experiment.moments, experiment.moments) RETURNS boolean
  AS 'MODULE_PATHNAME', 'exp_moments_ne' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION experiment.moments_ne(experiment.moments, experiment.moments) IS
  'internal: negation of moments_eq';
CREATE FUNCTION experiment.moments_add(experiment.moments, experiment.moments) RETURNS experiment.moments
  AS 'MODULE_PATHNAME', 'exp_moments_add' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION experiment.moments_add(experiment.moments, experiment.moments) IS
  'internal: moments of the union of two samples (Chan et al. merge)';

CREATE OPERATOR experiment.= (
  LEFTARG = experiment.moments, RIGHTARG = experiment.moments,
  FUNCTION = experiment.moments_eq,
  COMMUTATOR = OPERATOR(experiment.=), NEGATOR = OPERATOR(experiment.<>),
  RESTRICT = eqsel, JOIN = eqjoinsel
);
COMMENT ON OPERATOR experiment.= (experiment.moments, experiment.moments) IS 'exactly equal moments';
CREATE OPERATOR experiment.<> (
  LEFTARG = experiment.moments, RIGHTARG = experiment.moments,
  FUNCTION = experiment.moments_ne,
  COMMUTATOR = OPERATOR(experiment.<>), NEGATOR = OPERATOR(experiment.=),
  RESTRICT = neqsel, JOIN = neqjoinsel
);
COMMENT ON OPERATOR experiment.<> (experiment.moments, experiment.moments) IS 'moments that differ';
CREATE OPERATOR experiment.+ (
  LEFTARG = experiment.moments, RIGHTARG = experiment.moments,
  FUNCTION = experiment.moments_add, COMMUTATOR = OPERATOR(experiment.+)
);
COMMENT ON OPERATOR experiment.+ (experiment.moments, experiment.moments) IS 'merge two moments';

-- accessors

CREATE FUNCTION experiment.n(m experiment.moments) RETURNS bigint
  AS 'MODULE_PATHNAME', 'exp_moments_n' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION experiment.n(experiment.moments) IS 'number of observations';
CREATE FUNCTION experiment.mean(m experiment.moments, i integer DEFAULT 1) RETURNS float8
  AS 'MODULE_PATHNAME', 'exp_moments_mean' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION experiment.mean(experiment.moments, integer) IS 'mean of variable i (1-based)';
CREATE FUNCTION experiment.variance(m experiment.moments, i integer DEFAULT 1) RETURNS float8
  AS 'MODULE_PATHNAME', 'exp_moments_variance_fn' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION experiment.variance(experiment.moments, integer) IS
  'sample variance (n - 1 denominator) of variable i; NULL when n < 2';
CREATE FUNCTION experiment.covariance(m experiment.moments, i integer, j integer) RETURNS float8
  AS 'MODULE_PATHNAME', 'exp_moments_covariance_fn' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION experiment.covariance(experiment.moments, integer, integer) IS
  'sample covariance (n - 1 denominator) of variables i and j; NULL when n < 2';

CREATE FUNCTION experiment.moments_from_sums(n bigint, sum float8, sum_squares float8)
  RETURNS experiment.moments
  AS 'MODULE_PATHNAME', 'exp_moments_from_sums1' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION experiment.moments_from_sums(bigint, float8, float8) IS
  'univariate moments from count, sum and sum of squares (NULL for n = 0)';
CREATE FUNCTION experiment.moments_from_sums(n bigint, sum_y float8, sum_y2 float8,
                                             sum_x float8, sum_x2 float8, sum_xy float8)
  RETURNS experiment.moments
  AS 'MODULE_PATHNAME', 'exp_moments_from_sums2' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION experiment.moments_from_sums(bigint, float8, float8, float8, float8, float8) IS
  'bivariate moments of (y, x) from count and sums (NULL for n = 0)';

-- aggregates

CREATE FUNCTION experiment.moments_accum(experiment.moments, float8) RETURNS experiment.moments
  AS 'MODULE_PATHNAME', 'exp_moments_accum1' LANGUAGE C IMMUTABLE PARALLEL SAFE;
COMMENT ON FUNCTION experiment.moments_accum(experiment.moments, float8) IS
  'internal: transition function of experiment.moments(y)';
CREATE FUNCTION experiment.moments_accum(experiment.moments, float8, float8) RETURNS experiment.moments
  AS 'MODULE_PATHNAME', 'exp_moments_accum2' LANGUAGE C IMMUTABLE PARALLEL SAFE;
COMMENT ON FUNCTION experiment.moments_accum(experiment.moments, float8, float8) IS
  'internal: transition function of experiment.moments(y, x)';
CREATE FUNCTION experiment.moments_accum(experiment.moments, float8, float8, float8, float8)
  RETURNS experiment.moments
  AS 'MODULE_PATHNAME', 'exp_moments_accum4' LANGUAGE C IMMUTABLE PARALLEL SAFE;
COMMENT ON FUNCTION experiment.moments_accum(experiment.moments, float8, float8, float8, float8) IS
  'internal: transition function of experiment.moments(y, d, x, e)';
CREATE FUNCTION experiment.moments_combine(experiment.moments, experiment.moments)
  RETURNS experiment.moments
  AS 'MODULE_PATHNAME', 'exp_moments_combine' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION experiment.moments_combine(experiment.moments, experiment.moments) IS
  'internal: combine function of the moments aggregates (updates its first argument in place)';

CREATE AGGREGATE experiment.moments(y float8) (
  SFUNC = experiment.moments_accum, STYPE = experiment.moments,
  COMBINEFUNC = experiment.moments_combine, PARALLEL = SAFE
);
COMMENT ON AGGREGATE experiment.moments(float8) IS
  'count, mean and co-moment of y (rows with NULL skipped; no rows gives NULL)';
CREATE AGGREGATE experiment.moments(y float8, x float8) (
  SFUNC = experiment.moments_accum, STYPE = experiment.moments,
  COMBINEFUNC = experiment.moments_combine, PARALLEL = SAFE
);
COMMENT ON AGGREGATE experiment.moments(float8, float8) IS
  'bivariate moments of (y, x): for CUPED (x = pre-period value) and ratio metrics (y = numerator, x = denominator)';
CREATE AGGREGATE experiment.moments(y float8, d float8, x float8, e float8) (
  SFUNC = experiment.moments_accum, STYPE = experiment.moments,
  COMBINEFUNC = experiment.moments_combine, PARALLEL = SAFE
);
COMMENT ON AGGREGATE experiment.moments(float8, float8, float8, float8) IS
  'moments of four variables: ratio metric (y / d) with pre-period covariates (x / e)';
CREATE AGGREGATE experiment.merge(experiment.moments) (
  SFUNC = experiment.moments_combine, STYPE = experiment.moments,
  COMBINEFUNC = experiment.moments_combine, PARALLEL = SAFE
);
COMMENT ON AGGREGATE experiment.merge(experiment.moments) IS
  'merge stored moments (e.g. daily rollups) into one';
