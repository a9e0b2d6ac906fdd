/*-------------------------------------------------------------------------
 *
 * multiplicity.c
 *	  Multiple-testing corrections: experiment.p_adjust() on an array and as
 *	  a window function (Bonferroni, Holm, Benjamini-Hochberg,
 *	  Benjamini-Yekutieli), and experiment.adjusted_interval(), the interval
 *	  that agrees with an adjusted p-value.
 *
 * See doc/statistics.md, "Multiple testing".
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <math.h>

#include <gsl/gsl_cdf.h>

#include "access/htup_details.h"
#include "catalog/pg_type.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/float.h"
#include "windowapi.h"

#include "experiment.h"

typedef enum
{
	PADJ_BONFERRONI,
	PADJ_HOLM,
	PADJ_BH,
	PADJ_BY
} PAdjustMethod;

static PAdjustMethod
parse_method(text *t)
{
	char	   *s = text_to_cstring(t);

	if (strcmp(s, "bonferroni") == 0)
		return PADJ_BONFERRONI;
	if (strcmp(s, "holm") == 0)
		return PADJ_HOLM;
	if (strcmp(s, "bh") == 0)
		return PADJ_BH;
	if (strcmp(s, "by") == 0)
		return PADJ_BY;
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("invalid method \"%s\"", exp_message_clip(s, -1)),
			 errhint("Use bonferroni, holm, bh (Benjamini-Hochberg) or by (Benjamini-Yekutieli).")));
	return PADJ_HOLM;			/* keep the compiler quiet */
}

typedef struct PItem
{
	double		p;
	int			pos;			/* index in the input */
} PItem;

static int
pitem_cmp(const void *a, const void *b)
{
	const PItem *x = a,
			   *y = b;

	if (x->p != y->p)
		return x->p < y->p ? -1 : 1;
	return x->pos - y->pos;
}

static void
check_p(double p, int pos)
{
	if (!(p >= 0 && p <= 1))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("element %d of p must be in [0, 1], got %g", pos + 1, p)));
}

/*
 * Adjust the m p-values of items (any order) into out[pos], with the
 * arithmetic of statsmodels' multipletests on the sorted values p_(j),
 * j = 1..m:
 *	bonferroni	min(1, m p)
 *	holm		cumulative max over j of min(1, (m - j + 1) p_(j))
 *	bh			cumulative min from the top of min(1, p_(j) / (j / m))
 *	by			as bh with p_(j) / ((j / m) / c_m), c_m = sum 1/k
 */
static void
adjust(PItem *items, int m, PAdjustMethod method, double *out)
{
	int			j;
	double		acc,
				cm = 0;

	qsort(items, m, sizeof(PItem), pitem_cmp);
	switch (method)
	{
		case PADJ_BONFERRONI:
			for (j = 0; j < m; j++)
				out[items[j].pos] = Min(1.0, items[j].p * (double) m);
			break;
		case PADJ_HOLM:
			acc = 0;
			for (j = 0; j < m; j++)
			{
				acc = Max(acc, items[j].p * (double) (m - j));
				out[items[j].pos] = Min(1.0, acc);
			}
			break;
		case PADJ_BY:
			for (j = 1; j <= m; j++)
				cm += 1.0 / (double) j;
			/* FALLTHROUGH */
		case PADJ_BH:
			acc = 1.0;
			for (j = m - 1; j >= 0; j--)
			{
				double		f = (double) (j + 1) / (double) m;

				if (method == PADJ_BY)
					f /= cm;
				acc = Min(acc, items[j].p / f);
				out[items[j].pos] = Min(1.0, acc);
			}
			break;
	}
}

/*
 * p_adjust(p float8[], method text): the adjusted p-values in the order of
 * the input; NULLs stay NULL and do not count.
 */
PG_FUNCTION_INFO_V1(exp_p_adjust_array);
Datum
exp_p_adjust_array(PG_FUNCTION_ARGS)
{
	ArrayType  *arr = PG_GETARG_ARRAYTYPE_P(0);
	PAdjustMethod method = parse_method(PG_GETARG_TEXT_PP(1));
	Datum	   *elems;
	bool	   *nulls;
	int			n,
				m = 0,
				i;
	PItem	   *items;
	double	   *out;
	Datum	   *res;
	int			dims[1],
				lbs[1];

	if (ARR_NDIM(arr) > 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("p must be a one-dimensional array, got %d dimensions", ARR_NDIM(arr))));
	deconstruct_array(arr, FLOAT8OID, sizeof(float8), FLOAT8PASSBYVAL, TYPALIGN_DOUBLE,
					  &elems, &nulls, &n);
	items = palloc(sizeof(PItem) * Max(n, 1));
	out = palloc(sizeof(double) * Max(n, 1));
	for (i = 0; i < n; i++)
	{
		if (nulls[i])
			continue;
		items[m].p = DatumGetFloat8(elems[i]);
		check_p(items[m].p, i);
		items[m].pos = i;
		m++;
	}
	if (m > 0)
		adjust(items, m, method, out);
	res = palloc(sizeof(Datum) * Max(n, 1));
	for (i = 0; i < n; i++)
		res[i] = nulls[i] ? (Datum) 0 : Float8GetDatum(out[i]);
	if (n == 0)
		PG_RETURN_ARRAYTYPE_P(construct_empty_array(FLOAT8OID));
	dims[0] = n;
	lbs[0] = ARR_NDIM(arr) == 1 ? ARR_LBOUND(arr)[0] : 1;
	PG_RETURN_ARRAYTYPE_P(construct_md_array(res, nulls, 1, dims, lbs, FLOAT8OID, sizeof(float8),
											 FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
}

/* what the window function keeps for its partition */
typedef struct PAdjustPartition
{
	bool		ready;
	int64		n;
	double	   *adjusted;		/* per row of the partition, NaN = NULL */
} PAdjustPartition;

/*
 * p_adjust(p float8, method text) OVER (PARTITION BY ...): the adjusted
 * p-value of the row among the p-values of its partition (the whole
 * partition, whatever the frame); NULLs stay NULL and do not count.
 */
PG_FUNCTION_INFO_V1(exp_p_adjust_window);
Datum
exp_p_adjust_window(PG_FUNCTION_ARGS)
{
	WindowObject winobj = PG_WINDOW_OBJECT();
	PAdjustPartition *part;
	int64		pos;

	part = (PAdjustPartition *) WinGetPartitionLocalMemory(winobj, sizeof(PAdjustPartition));
	if (!part->ready)
	{
		MemoryContext cxt = GetMemoryChunkContext(part);
		int64		n = WinGetPartitionRowCount(winobj);
		PItem	   *items = palloc(sizeof(PItem) * Max(n, 1));
		int			m = 0;
		bool		isnull,
					isout;
		Datum		d;
		PAdjustMethod method;
		int64		i;

		if (n > INT_MAX / (int64) sizeof(PItem))
			ereport(ERROR,
					(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
					 errmsg("p_adjust: a partition of " INT64_FORMAT " rows is too large", n)));
		d = WinGetFuncArgCurrent(winobj, 1, &isnull);
		if (isnull)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("method must not be NULL"),
					 errhint("Use bonferroni, holm, bh (Benjamini-Hochberg) or by (Benjamini-Yekutieli).")));
		method = parse_method(DatumGetTextPP(d));
		part->adjusted = MemoryContextAlloc(cxt, sizeof(double) * Max(n, 1));
		for (i = 0; i < n; i++)
		{
			CHECK_FOR_INTERRUPTS();
			part->adjusted[i] = get_float8_nan();
			d = WinGetFuncArgInPartition(winobj, 1, (int) i, WINDOW_SEEK_HEAD, false, &isnull, &isout);
			if (isnull || parse_method(DatumGetTextPP(d)) != method)
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("method must be the same on every row of a partition"),
						 errhint("Adjust each family in its own partition (PARTITION BY ...).")));
			d = WinGetFuncArgInPartition(winobj, 0, (int) i, WINDOW_SEEK_HEAD, false, &isnull, &isout);
			if (isnull || isout)
				continue;
			items[m].p = DatumGetFloat8(d);
			check_p(items[m].p, (int) i);
			items[m].pos = (int) i;
			m++;
		}
		if (m > 0)
			adjust(items, m, method, part->adjusted);
		part->n = n;
		part->ready = true;
	}
	pos = WinGetCurrentPosition(winobj);
	if (pos < 0 || pos >= part->n || isnan(part->adjusted[pos]))
		PG_RETURN_NULL();
	PG_RETURN_FLOAT8(part->adjusted[pos]);
}

/*
 * adjusted_interval(estimate, p_adjusted, alpha): the normal interval that
 * agrees with an adjusted p-value (as GrowthBook adjusts its intervals): the
 * standard error implied by the adjusted p,
 *	se = |estimate| / z(1 - p_adjusted/2),
 * and estimate -/+ z(1 - alpha/2) se.  It excludes 0 exactly when
 * p_adjusted < alpha; p_adjusted = 1 gives (-Infinity, Infinity).
 */
PG_FUNCTION_INFO_V1(exp_adjusted_interval);
Datum
exp_adjusted_interval(PG_FUNCTION_ARGS)
{
	double		est = PG_GETARG_FLOAT8(0);
	double		p = PG_GETARG_FLOAT8(1);
	double		alpha = PG_GETARG_FLOAT8(2);
	double		zp,
				lower,
				upper;
	TupleDesc	tupdesc;
	Datum		values[2];
	bool		nulls[2] = {false, false};

	if (!(alpha >= EXP_MIN_PROBABILITY && alpha < 1))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("alpha must be in [1e-300, 1), got %g", alpha)));
	if (!(p >= 0 && p <= 1))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("p_adjusted must be in [0, 1], got %g", p)));
	if (!isfinite(est))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("estimate must be finite, got %g", est)));
	zp = p > 0 ? gsl_cdf_ugaussian_Qinv(p / 2) : get_float8_infinity();
	if (est == 0 && p < 1)
		PG_RETURN_NULL();		/* no standard error is implied by a zero estimate */
	if (!(zp > 0))
	{
		lower = -get_float8_infinity();
		upper = get_float8_infinity();
	}
	else
	{
		/* the ratio of the quantiles first: |est| near DBL_MAX must not overflow */
		double		half = fabs(est) * (gsl_cdf_ugaussian_Qinv(alpha / 2) / zp);

		lower = est - half;
		upper = est + half;
	}
	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	tupdesc = BlessTupleDesc(tupdesc);
	values[0] = Float8GetDatum(lower);
	values[1] = Float8GetDatum(upper);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}
