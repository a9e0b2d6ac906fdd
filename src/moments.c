/*-------------------------------------------------------------------------
 *
 * moments.c
 *	  The experiment.moments type: text and binary I/O, equality, merge (+),
 *	  accessors and construction from pre-reduced sums.
 *
 * Text form (JSON, so that m::text::jsonb works too):
 *
 *	{"version":1,"n":3,"mean":[2,5],"comoment":[[2,1],[1,8]]}
 *
 * "comoment" is the full symmetric k x k matrix of sums of cross deviations
 * from the means.  Floats are printed in their shortest exact form, so the
 * text form round-trips bit for bit.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <math.h>
#include <ctype.h>

#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "common/shortest_dec.h"
#include "lib/stringinfo.h"
#include "libpq/pqformat.h"
#include "utils/builtins.h"
#include "utils/float.h"
#include "utils/lsyscache.h"
#include "utils/syscache.h"

#include "experiment.h"

/* tolerance for the Cauchy-Schwarz check of crafted input */
#define MOMENTS_CS_TOLERANCE 1e-9

Moments *
exp_moments_new(int nvars)
{
	Moments    *m = (Moments *) palloc0(MOMENTS_SIZE(nvars));

	SET_VARSIZE(m, MOMENTS_SIZE(nvars));
	m->version = MOMENTS_VERSION;
	m->nvars = (uint8) nvars;
	return m;
}

Moments *
exp_moments_copy(const Moments *m)
{
	Moments    *c = (Moments *) palloc(VARSIZE(m));

	memcpy(c, m, VARSIZE(m));
	return c;
}

/*
 * Raise an error when a computed value overflowed.
 */
void
exp_moments_check_finite(const Moments *m, const char *what)
{
	int			i;

	for (i = 0; i < MOMENTS_NDATA(m->nvars); i++)
		if (!isfinite(m->data[i]))
			ereport(ERROR,
					(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
					 errmsg("%s: moments out of the range of double precision", what)));
}

/*
 * Merge b into a (Chan et al. 1979, the pairwise update that PostgreSQL's
 * float8_regr_combine uses, written for means and co-moments):
 *	n = na + nb, delta_i = mean_b,i - mean_a,i
 *	mean_i = mean_a,i + delta_i * nb / n
 *	C_ij = C_a,ij + C_b,ij + delta_i * delta_j * na * nb / n
 */
void
exp_moments_merge_into(Moments *a, const Moments *b)
{
	int			k = a->nvars;
	int			i,
				j;
	double		na,
				nb,
				n,
				delta[MOMENTS_MAX_VARS];

	if (a->nvars != b->nvars)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("cannot merge moments of %d and %d variables", a->nvars, b->nvars)));
	if (b->n == 0)
		return;
	if (a->n == 0)
	{
		memcpy(a->data, b->data, sizeof(float8) * MOMENTS_NDATA(k));
		a->n = b->n;
		return;
	}
	if (a->n > PG_INT64_MAX - b->n)
		ereport(ERROR,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("moments count out of range")));

	na = (double) a->n;
	nb = (double) b->n;
	n = na + nb;
	for (i = 0; i < k; i++)
		delta[i] = b->data[i] - a->data[i];
	for (i = 0; i < k; i++)
		for (j = i; j < k; j++)
		{
			int			c = MOMENTS_CIDX(k, i, j);

			a->data[c] += b->data[c] + delta[i] * delta[j] * (na * nb / n);
		}
	for (i = 0; i < k; i++)
		a->data[i] += delta[i] * (nb / n);
	a->n += b->n;
	exp_moments_check_finite(a, "merge");
}

double
exp_moments_covariance(const Moments *m, int i, int j)
{
	if (m->n < 2)
		return get_float8_nan();
	return MOMENTS_COM(m, i, j) / (double) (m->n - 1);
}

double
exp_moments_variance(const Moments *m, int i)
{
	return exp_moments_covariance(m, i, i);
}

/*
 * OID of experiment.moments, for building arrays of it.
 */
Oid
exp_moments_type_oid(void)
{
	Oid			nsp = get_namespace_oid("experiment", false);
	Oid			typ = GetSysCacheOid2(TYPENAMENSP, Anum_pg_type_oid,
									  CStringGetDatum("moments"),
									  ObjectIdGetDatum(nsp));

	if (!OidIsValid(typ))
		elog(ERROR, "type experiment.moments does not exist");
	return typ;
}

/*
 * Check everything a value read from outside must satisfy.  errcode is
 * ERRCODE_INVALID_TEXT_REPRESENTATION for the text form and
 * ERRCODE_INVALID_BINARY_REPRESENTATION for the binary one.
 */
static void
moments_validate(const Moments *m, int errcode_)
{
	int			k = m->nvars;
	int			i,
				j;

	if (m->version != MOMENTS_VERSION)
		ereport(ERROR,
				(errcode(errcode_),
				 errmsg("unsupported experiment.moments version %d", m->version),
				 errhint("This build reads version %d.", MOMENTS_VERSION)));
	if (k != 1 && k != 2 && k != 4)
		ereport(ERROR,
				(errcode(errcode_),
				 errmsg("experiment.moments must have 1, 2 or 4 variables, not %d", k)));
	if (m->flags != 0)
		ereport(ERROR,
				(errcode(errcode_),
				 errmsg("invalid experiment.moments flags %d", m->flags)));
	if (m->n < 0)
		ereport(ERROR,
				(errcode(errcode_),
				 errmsg("experiment.moments count must not be negative: " INT64_FORMAT, m->n)));
	for (i = 0; i < MOMENTS_NDATA(k); i++)
		if (!isfinite(m->data[i]))
			ereport(ERROR,
					(errcode(errcode_),
					 errmsg("experiment.moments values must be finite")));
	for (i = 0; i < k; i++)
	{
		if (MOMENTS_COM(m, i, i) < 0)
			ereport(ERROR,
					(errcode(errcode_),
					 errmsg("experiment.moments co-moment (%d,%d) must not be negative", i + 1, i + 1)));
		for (j = i + 1; j < k; j++)
		{
			double		bound = sqrt(MOMENTS_COM(m, i, i)) * sqrt(MOMENTS_COM(m, j, j));

			if (fabs(MOMENTS_COM(m, i, j)) > bound * (1 + MOMENTS_CS_TOLERANCE) + 1e-300)
				ereport(ERROR,
						(errcode(errcode_),
						 errmsg("experiment.moments co-moment (%d,%d) exceeds the Cauchy-Schwarz bound", i + 1, j + 1)));
		}
	}
	if (m->n <= 1)
	{
		for (i = (m->n == 0 ? 0 : k); i < MOMENTS_NDATA(k); i++)
			if (m->data[i] != 0)
				ereport(ERROR,
						(errcode(errcode_),
						 errmsg("experiment.moments with n = " INT64_FORMAT " must have zero %s",
								m->n, m->n == 0 ? "means and co-moments" : "co-moments")));
	}
}

/* ---------- text input ---------- */

/*
 * The parser reads exactly the JSON object documented in doc/moments.md:
 * JSON whitespace only, each of the four keys exactly once (in any order,
 * written without escapes), strict JSON numbers (no hex, "Infinity", "NaN",
 * leading "+" or zeros, bare "." or trailing "."), and "version" and "n" as
 * unsigned JSON integers (digits only: no sign, fraction or exponent).
 */
typedef struct MomentsParser
{
	const char *start;
	const char *p;
} MomentsParser;

pg_noreturn static void
mp_error(MomentsParser *ps, const char *expected)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_TEXT_REPRESENTATION),
			 errmsg("invalid input syntax for type experiment.moments: \"%s\"",
					exp_message_clip(ps->start, (int) strlen(ps->start))),
			 errdetail("Expected %s at character %d.", expected, (int) (ps->p - ps->start) + 1),
			 errhint("The form is {\"version\":1,\"n\":N,\"mean\":[...],\"comoment\":[[...],...]}.")));
}

static void
mp_ws(MomentsParser *ps)
{
	/* JSON whitespace (RFC 8259), not isspace(): no \v or \f */
	while (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\n' || *ps->p == '\r')
		ps->p++;
}

static void
mp_expect(MomentsParser *ps, char c)
{
	char		what[4] = {'"', c, '"', 0};

	mp_ws(ps);
	if (*ps->p != c)
		mp_error(ps, what);
	ps->p++;
}

static bool
mp_peek(MomentsParser *ps, char c)
{
	mp_ws(ps);
	return *ps->p == c;
}

/*
 * The end of the JSON number that starts at p, or NULL when p does not start
 * one.  *integer tells whether it had neither a fraction nor an exponent.
 */
static const char *
mp_scan_number(const char *p, bool *integer)
{
	*integer = true;
	if (*p == '-')
		p++;
	if (*p == '0')
		p++;
	else if (*p >= '1' && *p <= '9')
		while (isdigit((unsigned char) *p))
			p++;
	else
		return NULL;
	if (*p == '.')
	{
		p++;
		if (!isdigit((unsigned char) *p))
			return NULL;
		while (isdigit((unsigned char) *p))
			p++;
		*integer = false;
	}
	if (*p == 'e' || *p == 'E')
	{
		p++;
		if (*p == '+' || *p == '-')
			p++;
		if (!isdigit((unsigned char) *p))
			return NULL;
		while (isdigit((unsigned char) *p))
			p++;
		*integer = false;
	}
	return p;
}

/*
 * A character that cannot follow a JSON number directly: "0x10", "01", "1.e5"
 * and "1-2" are errors at the number rather than at what follows it.
 */
static bool
mp_number_junk(char c)
{
	return isalnum((unsigned char) c) || c == '.' || c == '+' || c == '-';
}

/* a JSON number, as the nearest double; it must be finite and not underflow to 0 */
static double
mp_number(MomentsParser *ps)
{
	const char *end;
	char	   *copy;
	char	   *cend;
	bool		integer;
	bool		nonzero = false;
	const char *q;
	double		v;

	mp_ws(ps);
	end = mp_scan_number(ps->p, &integer);
	if (end == NULL || mp_number_junk(*end))
		mp_error(ps, "a JSON number");
	/* strtod on a copy, so that it cannot read past the JSON number (0x10) */
	copy = pnstrdup(ps->p, end - ps->p);
	errno = 0;
	/* strtod rounds correctly, so shortest-form output reads back exactly */
	v = strtod(copy, &cend);
	if (*cend != '\0')
		mp_error(ps, "a JSON number");
	if (!isfinite(v))
		mp_error(ps, "a finite number");
	for (q = ps->p; q < end && *q != 'e' && *q != 'E'; q++)
		if (*q >= '1' && *q <= '9')
			nonzero = true;
	if (v == 0 && nonzero)
		mp_error(ps, "a number within the range of double precision");
	pfree(copy);
	ps->p = end;
	return v;
}

/*
 * An unsigned JSON integer (digits only) of at most PG_INT64_MAX, read
 * exactly.  what names the field in errors.
 */
static int64
mp_count(MomentsParser *ps, const char *what)
{
	const char *end;
	bool		integer;
	uint64		v = 0;
	const char *q;

	mp_ws(ps);
	end = mp_scan_number(ps->p, &integer);
	if (end == NULL || mp_number_junk(*end) || *ps->p == '-' || !integer)
		mp_error(ps, what);
	for (q = ps->p; q < end; q++)
	{
		int			digit = *q - '0';

		if (v > ((uint64) PG_INT64_MAX - digit) / 10)
			mp_error(ps, psprintf("%s of at most " INT64_FORMAT, what, PG_INT64_MAX));
		v = v * 10 + digit;
	}
	ps->p = end;
	return (int64) v;
}

/* reads [x, y, ...] into out[], returns the count */
static int
mp_array(MomentsParser *ps, double *out, int max)
{
	int			n = 0;

	mp_expect(ps, '[');
	if (mp_peek(ps, ']'))
	{
		ps->p++;
		return 0;
	}
	for (;;)
	{
		double		v;

		if (n >= max)
			mp_error(ps, "at most 4 variables");
		v = mp_number(ps);
		out[n++] = v;
		if (mp_peek(ps, ','))
		{
			ps->p++;
			continue;
		}
		mp_expect(ps, ']');
		return n;
	}
}

enum
{
	MP_KEY_VERSION,
	MP_KEY_N,
	MP_KEY_MEAN,
	MP_KEY_COMOMENT,
	MP_NKEYS
};
static const char *const mp_keys[MP_NKEYS] = {"version", "n", "mean", "comoment"};

/* reads "key": and returns its MP_KEY_*; an unknown key is an error */
static int
mp_key(MomentsParser *ps)
{
	const char *key;
	size_t		len;
	int			i;

	mp_expect(ps, '"');
	key = ps->p;
	while (*ps->p && *ps->p != '"' && *ps->p != '\\')
		ps->p++;
	len = ps->p - key;
	for (i = 0; i < MP_NKEYS; i++)
		if (strlen(mp_keys[i]) == len && strncmp(key, mp_keys[i], len) == 0)
			break;
	if (i == MP_NKEYS || *ps->p != '"')
	{
		ps->p = key - 1;
		mp_error(ps, "one of the keys \"version\", \"n\", \"mean\", \"comoment\"");
	}
	ps->p++;
	mp_expect(ps, ':');
	return i;
}

/*
 * exp_moments_in: text form -> experiment.moments, validated.
 */
PG_FUNCTION_INFO_V1(exp_moments_in);
Datum
exp_moments_in(PG_FUNCTION_ARGS)
{
	char	   *str = PG_GETARG_CSTRING(0);
	MomentsParser ps = {str, str};
	double		mean[MOMENTS_MAX_VARS];
	double		com[MOMENTS_MAX_VARS][MOMENTS_MAX_VARS];
	int			nmean = 0,
				nrows = 0;
	int			ncols[MOMENTS_MAX_VARS];
	bool		seen[MP_NKEYS] = {false, false, false, false};
	int64		version = 0,
				n = 0;
	Moments    *m;
	int			i,
				j,
				k;

	mp_expect(&ps, '{');
	for (;;)
	{
		const char *at;
		int			key;

		mp_ws(&ps);
		at = ps.p;
		key = mp_key(&ps);
		if (seen[key])
		{
			ps.p = at;
			mp_error(&ps, psprintf("each key once, not a second \"%s\"", mp_keys[key]));
		}
		seen[key] = true;
		switch (key)
		{
			case MP_KEY_VERSION:
				version = mp_count(&ps, "a version number");
				break;
			case MP_KEY_N:
				n = mp_count(&ps, "a non-negative whole count");
				break;
			case MP_KEY_MEAN:
				nmean = mp_array(&ps, mean, MOMENTS_MAX_VARS);
				break;
			case MP_KEY_COMOMENT:
				mp_expect(&ps, '[');
				if (!mp_peek(&ps, ']'))
				{
					for (;;)
					{
						if (nrows >= MOMENTS_MAX_VARS)
							mp_error(&ps, "at most 4 rows");
						ncols[nrows] = mp_array(&ps, com[nrows], MOMENTS_MAX_VARS);
						nrows++;
						if (mp_peek(&ps, ','))
						{
							ps.p++;
							continue;
						}
						break;
					}
				}
				mp_expect(&ps, ']');
				break;
		}
		if (mp_peek(&ps, ','))
		{
			ps.p++;
			continue;
		}
		mp_expect(&ps, '}');
		break;
	}
	mp_ws(&ps);
	if (*ps.p != '\0')
		mp_error(&ps, "end of input");
	for (i = 0; i < MP_NKEYS; i++)
		if (!seen[i])
			mp_error(&ps, "all of the keys \"version\", \"n\", \"mean\", \"comoment\"");
	if (version != MOMENTS_VERSION)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_TEXT_REPRESENTATION),
				 errmsg("unsupported experiment.moments version " INT64_FORMAT, version),
				 errhint("This build reads version %d.", MOMENTS_VERSION)));
	k = nmean;
	if (k != 1 && k != 2 && k != 4)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_TEXT_REPRESENTATION),
				 errmsg("experiment.moments must have 1, 2 or 4 variables, not %d", k)));
	if (nrows != k)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_TEXT_REPRESENTATION),
				 errmsg("experiment.moments comoment must be a %d x %d matrix", k, k)));
	for (i = 0; i < k; i++)
		if (ncols[i] != k)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_TEXT_REPRESENTATION),
					 errmsg("experiment.moments comoment must be a %d x %d matrix", k, k)));
	for (i = 0; i < k; i++)
		for (j = i + 1; j < k; j++)
			if (com[i][j] != com[j][i])
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_TEXT_REPRESENTATION),
						 errmsg("experiment.moments comoment matrix must be symmetric")));

	m = exp_moments_new(k);
	m->n = n;
	for (i = 0; i < k; i++)
	{
		m->data[i] = mean[i];
		for (j = i; j < k; j++)
			m->data[MOMENTS_CIDX(k, i, j)] = com[i][j];
	}
	moments_validate(m, ERRCODE_INVALID_TEXT_REPRESENTATION);
	PG_RETURN_MOMENTS_P(m);
}

/*
 * Shortest decimal that reads back as exactly v (Ryu, as float8out with
 * extra_float_digits > 0).  Negative zero keeps its sign ("-0"), so that the
 * text form round-trips bit for bit.
 */
static void
append_float8(StringInfo buf, double v)
{
	char		tmp[DOUBLE_SHORTEST_DECIMAL_LEN];

	double_to_shortest_decimal_buf(v, tmp);
	appendStringInfoString(buf, tmp);
}

/*
 * exp_moments_out: experiment.moments -> its JSON text form.
 */
PG_FUNCTION_INFO_V1(exp_moments_out);
Datum
exp_moments_out(PG_FUNCTION_ARGS)
{
	Moments    *m = PG_GETARG_MOMENTS_P(0);
	int			k = m->nvars;
	StringInfoData buf;
	int			i,
				j;

	initStringInfo(&buf);
	appendStringInfo(&buf, "{\"version\":%d,\"n\":" INT64_FORMAT ",\"mean\":[", m->version, m->n);
	for (i = 0; i < k; i++)
	{
		if (i > 0)
			appendStringInfoChar(&buf, ',');
		append_float8(&buf, m->data[i]);
	}
	appendStringInfoString(&buf, "],\"comoment\":[");
	for (i = 0; i < k; i++)
	{
		appendStringInfoString(&buf, i > 0 ? ",[" : "[");
		for (j = 0; j < k; j++)
		{
			if (j > 0)
				appendStringInfoChar(&buf, ',');
			append_float8(&buf, MOMENTS_COM(m, i, j));
		}
		appendStringInfoChar(&buf, ']');
	}
	appendStringInfoString(&buf, "]}");
	PG_RETURN_CSTRING(buf.data);
}

/*
 * exp_moments_recv: binary form -> experiment.moments, validated as strictly as
 * the text form.  Layout: version (1 byte), nvars (1 byte), n (int8), then
 * the means and the upper triangle of the co-moments (float8 each); nothing
 * may follow.  Errors are 22P03 (invalid_binary_representation).
 */
PG_FUNCTION_INFO_V1(exp_moments_recv);
Datum
exp_moments_recv(PG_FUNCTION_ARGS)
{
	StringInfo	buf = (StringInfo) PG_GETARG_POINTER(0);
	int			version;
	int			k;
	int			have;
	Moments    *m;
	int			i;

	if (buf->len - buf->cursor < 2)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_BINARY_REPRESENTATION),
				 errmsg("experiment.moments binary value too short: %d bytes", buf->len - buf->cursor)));
	version = pq_getmsgbyte(buf);
	k = pq_getmsgbyte(buf);
	if (version != MOMENTS_VERSION)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_BINARY_REPRESENTATION),
				 errmsg("unsupported experiment.moments version %d", version),
				 errhint("This build reads version %d.", MOMENTS_VERSION)));
	if (k != 1 && k != 2 && k != 4)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_BINARY_REPRESENTATION),
				 errmsg("experiment.moments must have 1, 2 or 4 variables, not %d", k)));
	have = buf->len - buf->cursor;
	if (have != (int) (sizeof(int64) + sizeof(float8) * MOMENTS_NDATA(k)))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_BINARY_REPRESENTATION),
				 errmsg("experiment.moments binary value has %d bytes after its header, not the %d that a variable count of %d needs",
						have, (int) (sizeof(int64) + sizeof(float8) * MOMENTS_NDATA(k)), k)));
	m = exp_moments_new(k);
	m->n = pq_getmsgint64(buf);
	for (i = 0; i < MOMENTS_NDATA(k); i++)
		m->data[i] = pq_getmsgfloat8(buf);
	pq_getmsgend(buf);
	moments_validate(m, ERRCODE_INVALID_BINARY_REPRESENTATION);
	PG_RETURN_MOMENTS_P(m);
}

/*
 * exp_moments_send: experiment.moments -> binary form.
 */
PG_FUNCTION_INFO_V1(exp_moments_send);
Datum
exp_moments_send(PG_FUNCTION_ARGS)
{
	Moments    *m = PG_GETARG_MOMENTS_P(0);
	StringInfoData buf;
	int			i;

	pq_begintypsend(&buf);
	pq_sendbyte(&buf, m->version);
	pq_sendbyte(&buf, m->nvars);
	pq_sendint64(&buf, m->n);
	for (i = 0; i < MOMENTS_NDATA(m->nvars); i++)
		pq_sendfloat8(&buf, m->data[i]);
	PG_RETURN_BYTEA_P(pq_endtypsend(&buf));
}

static bool
moments_equal(const Moments *a, const Moments *b)
{
	int			i;

	if (a->nvars != b->nvars || a->n != b->n || a->version != b->version)
		return false;
	for (i = 0; i < MOMENTS_NDATA(a->nvars); i++)
		if (a->data[i] != b->data[i])
			return false;
	return true;
}

/*
 * exp_moments_eq: the same count, means and co-moments, exactly.
 */
PG_FUNCTION_INFO_V1(exp_moments_eq);
Datum
exp_moments_eq(PG_FUNCTION_ARGS)
{
	PG_RETURN_BOOL(moments_equal(PG_GETARG_MOMENTS_P(0), PG_GETARG_MOMENTS_P(1)));
}

/*
 * exp_moments_ne: negation of exp_moments_eq.
 */
PG_FUNCTION_INFO_V1(exp_moments_ne);
Datum
exp_moments_ne(PG_FUNCTION_ARGS)
{
	PG_RETURN_BOOL(!moments_equal(PG_GETARG_MOMENTS_P(0), PG_GETARG_MOMENTS_P(1)));
}

/*
 * exp_moments_add: a + b, the moments of the union of both samples.
 */
PG_FUNCTION_INFO_V1(exp_moments_add);
Datum
exp_moments_add(PG_FUNCTION_ARGS)
{
	Moments    *a = PG_GETARG_MOMENTS_P_COPY(0);
	Moments    *b = PG_GETARG_MOMENTS_P(1);

	exp_moments_merge_into(a, b);
	PG_RETURN_MOMENTS_P(a);
}

static int
moments_var_arg(const Moments *m, int32 i, const char *argname)
{
	if (i < 1 || i > m->nvars)
	{
		if (m->nvars == 1)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("%s must be 1 for univariate moments, not %d", argname, i)));
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must be between 1 and %d, not %d", argname, m->nvars, i),
				 errdetail("These moments hold %d variables.", m->nvars)));
	}
	return i - 1;
}

/*
 * exp_moments_n: the number of observations.
 */
PG_FUNCTION_INFO_V1(exp_moments_n);
Datum
exp_moments_n(PG_FUNCTION_ARGS)
{
	PG_RETURN_INT64(PG_GETARG_MOMENTS_P(0)->n);
}

/*
 * exp_moments_mean: mean of variable i (1-based); NULL when n = 0.
 */
PG_FUNCTION_INFO_V1(exp_moments_mean);
Datum
exp_moments_mean(PG_FUNCTION_ARGS)
{
	Moments    *m = PG_GETARG_MOMENTS_P(0);
	int			i = moments_var_arg(m, PG_GETARG_INT32(1), "i");

	if (m->n == 0)
		PG_RETURN_NULL();
	PG_RETURN_FLOAT8(m->data[i]);
}

/*
 * exp_moments_variance_fn: sample variance (n - 1 denominator) of variable i;
 * NULL when n < 2.
 */
PG_FUNCTION_INFO_V1(exp_moments_variance_fn);
Datum
exp_moments_variance_fn(PG_FUNCTION_ARGS)
{
	Moments    *m = PG_GETARG_MOMENTS_P(0);
	int			i = moments_var_arg(m, PG_GETARG_INT32(1), "i");

	if (m->n < 2)
		PG_RETURN_NULL();
	PG_RETURN_FLOAT8(exp_moments_variance(m, i));
}

/*
 * exp_moments_covariance_fn: sample covariance of variables i and j; NULL when
 * n < 2.
 */
PG_FUNCTION_INFO_V1(exp_moments_covariance_fn);
Datum
exp_moments_covariance_fn(PG_FUNCTION_ARGS)
{
	Moments    *m = PG_GETARG_MOMENTS_P(0);
	int			i = moments_var_arg(m, PG_GETARG_INT32(1), "i");
	int			j = moments_var_arg(m, PG_GETARG_INT32(2), "j");

	if (m->n < 2)
		PG_RETURN_NULL();
	PG_RETURN_FLOAT8(exp_moments_covariance(m, i, j));
}

/*
 * Co-moment from raw sums: sxy - sx * sy / n.  Raw sums lose digits when the
 * mean is large against the spread; that loss is already in the input.  A
 * diagonal that comes out negative by more than rounding is an error.
 */
static double
comoment_from_sums(int64 n, double sx, double sy, double sxy, bool diagonal,
				   const char *argname)
{
	double		c = sxy - sx * (sy / (double) n);

	if (diagonal && c < 0)
	{
		if (-c <= 1e-9 * fabs(sxy) + 1e-300)
			c = 0;
		else
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("%s is smaller than the square of the sum divided by n", argname),
					 errdetail("A sum of squares of n values is at least sum^2 / n.")));
	}
	return c;
}

static void
check_sums_args(int64 n, int nargs, const double *v, const char *const *names)
{
	int			i;

	if (n < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("n must not be negative, got " INT64_FORMAT, n)));
	for (i = 0; i < nargs; i++)
		if (!isfinite(v[i]))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("%s must be finite, got %g", names[i], v[i])));
}

/*
 * exp_moments_from_sums1(n, sum, sum_squares): univariate moments from sums, as
 * other systems reduce data.  NULL for n = 0.
 */
PG_FUNCTION_INFO_V1(exp_moments_from_sums1);
Datum
exp_moments_from_sums1(PG_FUNCTION_ARGS)
{
	int64		n = PG_GETARG_INT64(0);
	double		v[2] = {PG_GETARG_FLOAT8(1), PG_GETARG_FLOAT8(2)};
	static const char *const names[] = {"sum", "sum_squares"};
	Moments    *m;

	check_sums_args(n, 2, v, names);
	if (n == 0)
		PG_RETURN_NULL();
	m = exp_moments_new(1);
	m->n = n;
	m->data[0] = v[0] / (double) n;
	m->data[1] = n == 1 ? 0 : comoment_from_sums(n, v[0], v[0], v[1], true, "sum_squares");
	exp_moments_check_finite(m, "moments_from_sums");
	PG_RETURN_MOMENTS_P(m);
}

/*
 * exp_moments_from_sums2(n, sum_y, sum_y2, sum_x, sum_x2, sum_xy): bivariate
 * moments of (y, x) from sums.  NULL for n = 0.
 */
PG_FUNCTION_INFO_V1(exp_moments_from_sums2);
Datum
exp_moments_from_sums2(PG_FUNCTION_ARGS)
{
	int64		n = PG_GETARG_INT64(0);
	double		v[5] = {PG_GETARG_FLOAT8(1), PG_GETARG_FLOAT8(2), PG_GETARG_FLOAT8(3),
	PG_GETARG_FLOAT8(4), PG_GETARG_FLOAT8(5)};
	static const char *const names[] = {"sum_y", "sum_y2", "sum_x", "sum_x2", "sum_xy"};
	Moments    *m;

	check_sums_args(n, 5, v, names);
	if (n == 0)
		PG_RETURN_NULL();
	m = exp_moments_new(2);
	m->n = n;
	m->data[0] = v[0] / (double) n;
	m->data[1] = v[2] / (double) n;
	if (n > 1)
	{
		double		cyy = comoment_from_sums(n, v[0], v[0], v[1], true, "sum_y2");
		double		cxx = comoment_from_sums(n, v[2], v[2], v[3], true, "sum_x2");
		double		cxy = comoment_from_sums(n, v[0], v[2], v[4], false, "sum_xy");
		double		bound = sqrt(cyy) * sqrt(cxx);

		if (fabs(cxy) > bound * (1 + 1e-9) + 1e-300)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("sum_xy is inconsistent with sum_y2 and sum_x2"),
					 errdetail("The implied covariance exceeds the Cauchy-Schwarz bound.")));
		/* rounding may push |cxy| a hair past the bound */
		if (fabs(cxy) > bound)
			cxy = copysign(bound, cxy);
		m->data[MOMENTS_CIDX(2, 0, 0)] = cyy;
		m->data[MOMENTS_CIDX(2, 0, 1)] = cxy;
		m->data[MOMENTS_CIDX(2, 1, 1)] = cxx;
	}
	exp_moments_check_finite(m, "moments_from_sums");
	PG_RETURN_MOMENTS_P(m);
}
