/*-------------------------------------------------------------------------
 *
 * percentiles.c
 *	  Exact percentiles of the columns of a query, by selection instead of
 *	  a sort: the winsorization caps of a refresh.
 *
 * experiment.exact_percentiles(query, fractions, ignore_zeros, max_values)
 * runs query (k float8 columns) through SPI with a receiver of its own,
 * keeps the non-NULL values of each column (without its zeros when
 * ignore_zeros[j+1]) in an array of doubles, and returns for
 * column j the values at fractions[2j+1] and fractions[2j+2] as
 * percentile_cont(ARRAY[f1, f2]) WITHIN GROUP (ORDER BY column) would:
 * with n values in order x_1 <= ... <= x_n and h = f (n - 1), the value
 * x_{floor(h)+1} + (h - floor(h)) (x_{ceil(h)+1} - x_{floor(h)+1}), or
 * x_{floor(h)+1} when floor(h) = ceil(h) (the interpolation of PostgreSQL's
 * percentile_cont, in the same arithmetic, so the results are identical).
 * Values are ordered as float8 orders them (NaN above every number).
 *
 * The order statistics come from quickselect (Hoare's FIND, median of three
 * pivots), an expected linear time instead of the n log n of a sort; the
 * next order statistic is the smallest value above the selected position.
 * Memory: 8 bytes per value (up to twice that while an array grows); beyond
 * max_values values in all the function stops reading and returns NULL, and
 * the caller sorts instead (a sort spills to disk within work_mem, an array
 * cannot).  Past 128 rounds of partitioning the rest is sorted, so that the
 * worst case is n log n.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <math.h>

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "tcop/dest.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/float.h"
#include "utils/memutils.h"

#include "experiment.h"

typedef struct
{
	double	   *vals;
	int64		n;
	int64		cap;
} PctColumn;

typedef struct
{
	DestReceiver pub;
	MemoryContext cxt;
	int			ncols;
	PctColumn  *cols;
	bool	   *ignore_zeros;
	int64		total;
	int64		max_values;		/* -1: no limit */
	bool		overflow;
} PctReceiver;

static bool
pct_receive(TupleTableSlot *slot, DestReceiver *self)
{
	PctReceiver *r = (PctReceiver *) self;
	int			j;

	if (r->overflow)
		return false;
	slot_getallattrs(slot);
	for (j = 0; j < r->ncols; j++)
	{
		PctColumn  *c = &r->cols[j];

		if (slot->tts_isnull[j])
			continue;
		if (r->ignore_zeros[j] && DatumGetFloat8(slot->tts_values[j]) == 0.0)
			continue;
		if (r->max_values >= 0 && r->total >= r->max_values)
		{
			/* (false: the executor stops reading; the caller sorts instead) */
			r->overflow = true;
			return false;
		}
		if (c->n >= c->cap)
		{
			int64		cap = Max(c->cap * 2, 1024);

			c->vals = c->vals == NULL
				? MemoryContextAllocHuge(r->cxt, sizeof(double) * cap)
				: repalloc_huge(c->vals, sizeof(double) * cap);
			c->cap = cap;
		}
		c->vals[c->n++] = DatumGetFloat8(slot->tts_values[j]);
		r->total++;
	}
	return true;
}

static void
pct_startup(DestReceiver *self, int operation, TupleDesc typeinfo)
{
	PctReceiver *r = (PctReceiver *) self;
	int			j;

	if (typeinfo->natts != r->ncols)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("query returns %d columns, fractions name %d", typeinfo->natts, r->ncols)));
	for (j = 0; j < r->ncols; j++)
		if (TupleDescAttr(typeinfo, j)->atttypid != FLOAT8OID)
			ereport(ERROR,
					(errcode(ERRCODE_DATATYPE_MISMATCH),
					 errmsg("column %d of query must be float8", j + 1)));
}

static void
pct_shutdown(DestReceiver *self)
{
}

static void
pct_destroy(DestReceiver *self)
{
}

/*
 * Rearranges v[0..n-1] so that v[k] is the value of rank k (0-based), the
 * values before it not above it and the values after it not below it.
 */
/* qsort comparator in float8 order (NaN above everything) */
static int
pct_cmp(const void *a, const void *b)
{
	return float8_cmp_internal(*(const double *) a, *(const double *) b);
}

static void
select_rank(double *v, int64 n, int64 k)
{
	int64		lo = 0;
	int64		hi = n - 1;
	int			rounds = 0;

	while (hi > lo)
	{
		int64		mid = lo + (hi - lo) / 2;
		double		pivot;
		int64		i,
					j;
		double		t;

		/*
		 * Past twice the rounds that halving would take, the pivots are bad
		 * (data built against median of three): sort what is left instead,
		 * so the worst case is n log n, not quadratic.
		 */
		if (++rounds > 2 * 64)
		{
			qsort(v + lo, (size_t) (hi - lo + 1), sizeof(double), pct_cmp);
			return;
		}
		CHECK_FOR_INTERRUPTS();
		/* median of three as the pivot, left in v[mid] */
		if (float8_lt(v[mid], v[lo]))
		{
			t = v[mid];
			v[mid] = v[lo];
			v[lo] = t;
		}
		if (float8_lt(v[hi], v[lo]))
		{
			t = v[hi];
			v[hi] = v[lo];
			v[lo] = t;
		}
		if (float8_lt(v[hi], v[mid]))
		{
			t = v[hi];
			v[hi] = v[mid];
			v[mid] = t;
		}
		pivot = v[mid];
		/* Hoare partition of [lo, hi] around pivot */
		i = lo;
		j = hi;
		while (i <= j)
		{
			while (float8_lt(v[i], pivot))
				i++;
			while (float8_lt(pivot, v[j]))
				j--;
			if (i <= j)
			{
				t = v[i];
				v[i] = v[j];
				v[j] = t;
				i++;
				j--;
			}
		}
		/* now [lo, j] <= pivot <= [i, hi], and (j, i) equal to pivot */
		if (k <= j)
			hi = j;
		else if (k >= i)
			lo = i;
		else
			return;
	}
}

/* the percentile_cont value at fraction p of v[0..n-1] (n > 0), reordering v */
static double
column_percentile(double *v, int64 n, double p)
{
	double		h = p * (double) (n - 1);
	int64		first = (int64) floor(h);
	int64		second = (int64) ceil(h);
	double		lo;
	double		hi;
	int64		i;

	select_rank(v, n, first);
	lo = v[first];
	if (second == first)
		return lo;
	/* rank first + 1: the smallest value after the selected one */
	hi = v[first + 1];
	for (i = first + 2; i < n; i++)
		if (float8_lt(v[i], hi))
			hi = v[i];
	return lo + ((h - floor(h)) * (hi - lo));
}

PG_FUNCTION_INFO_V1(exp_exact_percentiles);
Datum
exp_exact_percentiles(PG_FUNCTION_ARGS)
{
	text	   *query;
	ArrayType  *fr;
	Datum	   *fdat;
	bool	   *fnul;
	int			nf;
	int			j;
	int			ret;
	PctReceiver r;
	SPIExecuteOptions opts;
	MemoryContext cxt;
	Datum	   *out;
	bool	   *outnul;
	ArrayType  *result;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("query and fractions must not be NULL")));
	query = PG_GETARG_TEXT_PP(0);
	fr = PG_GETARG_ARRAYTYPE_P(1);
	if (ARR_NDIM(fr) > 1)
		ereport(ERROR,
				(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
				 errmsg("fractions must be a one-dimensional array")));
	deconstruct_array(fr, FLOAT8OID, sizeof(float8), FLOAT8PASSBYVAL, TYPALIGN_DOUBLE,
					  &fdat, &fnul, &nf);
	if (nf == 0 || nf % 2 != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("fractions must hold two fractions per column of the query, not %d values", nf)));
	for (j = 0; j < nf; j++)
		if (!fnul[j])
		{
			double		p = DatumGetFloat8(fdat[j]);

			if (isnan(p) || p < 0 || p > 1)
				ereport(ERROR,
						(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
						 errmsg("fraction %g is not between 0 and 1", p)));
		}

	cxt = AllocSetContextCreate(CurrentMemoryContext, "exact_percentiles", ALLOCSET_DEFAULT_SIZES);
	memset(&r, 0, sizeof(r));
	r.pub.receiveSlot = pct_receive;
	r.pub.rStartup = pct_startup;
	r.pub.rShutdown = pct_shutdown;
	r.pub.rDestroy = pct_destroy;
	r.pub.mydest = DestNone;
	r.cxt = cxt;
	r.ncols = nf / 2;
	r.cols = MemoryContextAllocZero(cxt, sizeof(PctColumn) * r.ncols);
	r.ignore_zeros = MemoryContextAllocZero(cxt, sizeof(bool) * r.ncols);
	if (!PG_ARGISNULL(2))
	{
		ArrayType  *iz = PG_GETARG_ARRAYTYPE_P(2);
		Datum	   *zdat;
		bool	   *znul;
		int			nz;

		deconstruct_array(iz, BOOLOID, 1, true, TYPALIGN_CHAR, &zdat, &znul, &nz);
		if (ARR_NDIM(iz) > 1 || nz != r.ncols)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("ignore_zeros must hold one boolean per column of the query (%d), not %d", r.ncols, nz)));
		for (j = 0; j < nz; j++)
			r.ignore_zeros[j] = !znul[j] && DatumGetBool(zdat[j]);
	}
	r.max_values = PG_ARGISNULL(3) ? -1 : Max(PG_GETARG_INT64(3), 0);

	if ((ret = SPI_connect()) != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed: %s", SPI_result_code_string(ret));
	memset(&opts, 0, sizeof(opts));
	opts.read_only = true;
	opts.dest = &r.pub;
	ret = SPI_execute_extended(text_to_cstring(query), &opts);
	if (ret != SPI_OK_SELECT && ret != SPI_OK_UTILITY)
		elog(ERROR, "reading the values failed: %s", SPI_result_code_string(ret));
	SPI_finish();

	if (r.overflow)
	{
		MemoryContextDelete(cxt);
		PG_RETURN_NULL();
	}
	out = palloc(sizeof(Datum) * nf);
	outnul = palloc(sizeof(bool) * nf);
	for (j = 0; j < nf; j++)
	{
		PctColumn  *c = &r.cols[j / 2];

		outnul[j] = fnul[j] || c->n == 0;
		out[j] = outnul[j] ? (Datum) 0
			: Float8GetDatum(column_percentile(c->vals, c->n, DatumGetFloat8(fdat[j])));
	}
	{
		int			dims[1] = {nf};
		int			lbs[1] = {1};

		result = construct_md_array(out, outnul, 1, dims, lbs, FLOAT8OID, sizeof(float8),
									FLOAT8PASSBYVAL, TYPALIGN_DOUBLE);
	}
	MemoryContextDelete(cxt);
	PG_RETURN_ARRAYTYPE_P(result);
}
