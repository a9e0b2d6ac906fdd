/*-------------------------------------------------------------------------
 *
 * moments_agg.c
 *	  Transition and combine functions of the experiment.moments aggregates
 *	  and of the two-group state behind the welch_ttest(boolean, float8)
 *	  aggregate.
 *
 * Each row is added with the Youngs-Cramer update in mean form (Welford):
 *	n' = n + 1, d_i = x_i - mean_i, mean_i' = mean_i + d_i / n'
 *	C_ij' = C_ij + d_i * (x_j - mean_j')
 * States merge with exp_moments_merge_into (Chan et al.).  Transition and combine
 * functions update their first argument in place when called as aggregates,
 * never modify the second, and keep nothing in fn_extra.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <math.h>

#include "catalog/pg_type.h"
#include "utils/array.h"

#include "experiment.h"

static const char *const var_names[MOMENTS_MAX_VARS] = {"y", "x", "", ""};
static const char *const var_names4[MOMENTS_MAX_VARS] = {"y", "d", "x", "e"};

pg_noreturn static void
nonfinite_error(double v, const char *arg)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("experiment.moments cannot accumulate %s = %s",
					arg, isnan(v) ? "NaN" : (v > 0 ? "Infinity" : "-Infinity")),
			 errhint("Filter out or replace non-finite values before aggregating.")));
}

pg_noreturn static void
count_overflow_error(void)
{
	ereport(ERROR,
			(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
			 errmsg("moments count out of range")));
}

/*
 * Add one observation x[0..k-1] to m.
 */
static pg_attribute_always_inline void
moments_accum_row(Moments *m, const double *x, int k)
{
	double		d[MOMENTS_MAX_VARS];
	/*
	 * Divide rather than multiply by a reciprocal: the extra rounding of
	 * 1/n' costs an order of magnitude of accuracy in the variance of data
	 * with a large mean (1e-8 instead of 1e-9 relative for 1e9 + N(0,1)).
	 */
	double		n1;
	int			i,
				j;

	if (unlikely(m->n == PG_INT64_MAX))
		count_overflow_error();
	n1 = (double) (m->n + 1);
	for (i = 0; i < k; i++)
	{
		d[i] = x[i] - m->data[i];
		m->data[i] += d[i] / n1;
	}
	for (i = 0; i < k; i++)
	{
		double		di = d[i];

		for (j = i; j < k; j++)
			m->data[MOMENTS_CIDX(k, i, j)] += di * (x[j] - m->data[j]);
	}
	m->n++;

	/*
	 * With finite inputs, an overflow anywhere shows up on the diagonal of
	 * the co-moment matrix (Infinity or NaN), so checking it is enough.
	 */
	for (i = 0; i < k; i++)
		if (unlikely(!isfinite(m->data[MOMENTS_CIDX(k, i, i)])))
			exp_moments_check_finite(m, "experiment.moments");
}

/*
 * The state argument of a transition function, to be updated in place: our
 * own states are never toasted, so skip the detoast call on the hot path.
 */
static inline Moments *
state_in_place(FunctionCallInfo fcinfo)
{
	Pointer		p = DatumGetPointer(PG_GETARG_DATUM(0));

	if (unlikely(VARATT_IS_EXTENDED(p)))
		return PG_GETARG_MOMENTS_P(0);
	return (Moments *) p;
}

/*
 * Common body of the transition functions: skip rows with a NULL argument,
 * reject non-finite values, start or update the state.
 */
static pg_attribute_always_inline Datum
moments_accum_common(FunctionCallInfo fcinfo, int k)
{
	double		x[MOMENTS_MAX_VARS];
	Moments    *m;
	int			i;

	for (i = 0; i < k; i++)
	{
		if (PG_ARGISNULL(i + 1))
		{
			if (PG_ARGISNULL(0))
				PG_RETURN_NULL();
			PG_RETURN_DATUM(PG_GETARG_DATUM(0));
		}
		x[i] = PG_GETARG_FLOAT8(i + 1);
		if (unlikely(!isfinite(x[i])))
			nonfinite_error(x[i], k == 4 ? var_names4[i] : var_names[i]);
	}

	if (PG_ARGISNULL(0))
		m = exp_moments_new(k);
	else if (AggCheckCallContext(fcinfo, NULL))
		m = state_in_place(fcinfo);
	else
		m = PG_GETARG_MOMENTS_P_COPY(0);

	if (unlikely(m->nvars != k))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("cannot add %d variables to moments of %d", k, m->nvars)));
	moments_accum_row(m, x, k);
	PG_RETURN_MOMENTS_P(m);
}

/*
 * exp_moments_accum1(state, y): transition of experiment.moments(y).
 */
PG_FUNCTION_INFO_V1(exp_moments_accum1);
Datum
exp_moments_accum1(PG_FUNCTION_ARGS)
{
	return moments_accum_common(fcinfo, 1);
}

/*
 * exp_moments_accum2(state, y, x): transition of experiment.moments(y, x).
 */
PG_FUNCTION_INFO_V1(exp_moments_accum2);
Datum
exp_moments_accum2(PG_FUNCTION_ARGS)
{
	return moments_accum_common(fcinfo, 2);
}

/*
 * exp_moments_accum4(state, y, d, x, e): transition of experiment.moments(y, d, x, e).
 */
PG_FUNCTION_INFO_V1(exp_moments_accum4);
Datum
exp_moments_accum4(PG_FUNCTION_ARGS)
{
	return moments_accum_common(fcinfo, 4);
}

/*
 * exp_moments_combine(a, b): combine function of the moments aggregates and
 * transition function of experiment.merge.  Strict: the executor handles NULL
 * states.
 */
PG_FUNCTION_INFO_V1(exp_moments_combine);
Datum
exp_moments_combine(PG_FUNCTION_ARGS)
{
	Moments    *a;
	Moments    *b = PG_GETARG_MOMENTS_P(1);

	if (AggCheckCallContext(fcinfo, NULL))
		a = PG_GETARG_MOMENTS_P(0);
	else
		a = PG_GETARG_MOMENTS_P_COPY(0);
	exp_moments_merge_into(a, b);
	PG_RETURN_MOMENTS_P(a);
}

/*
 * The two-group state: a one-dimensional experiment.moments[] of two
 * univariate values, [control, treatment], without NULLs.  Empty groups
 * have n = 0.
 */
static ArrayType *
pair_new(void)
{
	Datum		elems[2];

	elems[0] = MomentsPGetDatum(exp_moments_new(1));
	elems[1] = MomentsPGetDatum(exp_moments_new(1));
	return construct_array(elems, 2, exp_moments_type_oid(), -1, false, TYPALIGN_DOUBLE);
}

/*
 * Pointers to the two elements of a state, after checking its shape.
 */
static void
pair_elements(ArrayType *arr, Moments **control, Moments **treatment)
{
	char	   *p;

	if (ARR_NDIM(arr) != 1 || ARR_DIMS(arr)[0] != 2 || ARR_HASNULL(arr))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("a two-group moments state must be an array of two non-NULL experiment.moments")));
	p = (char *) arr + ARR_OVERHEAD_NONULLS(1);
	*control = (Moments *) p;
	if (VARATT_IS_EXTENDED(p) || VARSIZE(p) != MOMENTS_SIZE(1) || (*control)->nvars != 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("a two-group moments state must hold univariate moments")));
	p += MAXALIGN(VARSIZE(p));
	*treatment = (Moments *) p;
	if (VARATT_IS_EXTENDED(p) || VARSIZE(p) != MOMENTS_SIZE(1) || (*treatment)->nvars != 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("a two-group moments state must hold univariate moments")));
}

/*
 * exp_moments_pair_accum(state, is_treatment, y): transition of the
 * welch_ttest(boolean, float8) aggregate.  Rows with a NULL group or value
 * are skipped.
 */
PG_FUNCTION_INFO_V1(exp_moments_pair_accum);
Datum
exp_moments_pair_accum(PG_FUNCTION_ARGS)
{
	ArrayType  *arr;
	Moments    *g[2];
	double		y;

	if (PG_ARGISNULL(1) || PG_ARGISNULL(2))
	{
		if (PG_ARGISNULL(0))
			PG_RETURN_NULL();
		PG_RETURN_DATUM(PG_GETARG_DATUM(0));
	}
	y = PG_GETARG_FLOAT8(2);
	if (unlikely(!isfinite(y)))
		nonfinite_error(y, "y");

	if (PG_ARGISNULL(0))
		arr = pair_new();
	else if (AggCheckCallContext(fcinfo, NULL))
		arr = PG_GETARG_ARRAYTYPE_P(0);
	else
		arr = PG_GETARG_ARRAYTYPE_P_COPY(0);
	pair_elements(arr, &g[0], &g[1]);
	moments_accum_row(g[PG_GETARG_BOOL(1) ? 1 : 0], &y, 1);
	PG_RETURN_ARRAYTYPE_P(arr);
}

/*
 * exp_moments_pair_combine(a, b): combine function of the two-group state.
 */
PG_FUNCTION_INFO_V1(exp_moments_pair_combine);
Datum
exp_moments_pair_combine(PG_FUNCTION_ARGS)
{
	ArrayType  *a;
	ArrayType  *b = PG_GETARG_ARRAYTYPE_P(1);
	Moments    *ga[2],
			   *gb[2];

	if (AggCheckCallContext(fcinfo, NULL))
		a = PG_GETARG_ARRAYTYPE_P(0);
	else
		a = PG_GETARG_ARRAYTYPE_P_COPY(0);
	pair_elements(a, &ga[0], &ga[1]);
	pair_elements(b, &gb[0], &gb[1]);
	exp_moments_merge_into(ga[0], gb[0]);
	exp_moments_merge_into(ga[1], gb[1]);
	PG_RETURN_ARRAYTYPE_P(a);
}
