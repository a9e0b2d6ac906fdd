/*-------------------------------------------------------------------------
 *
 * assign.c
 *	  Deterministic buckets and variant assignment of the project's own
 *	  hashing scheme:
 *
 *		bucket(unit, salt) = int(SHA-256(salt ':' unit), big-endian) mod 10000
 *
 *	  and variant i of allocations a_1..a_k owns the buckets b with
 *	  B_{i-1} <= b < B_i, where B_i = 10000 * (a_1 + ... + a_i) computed in
 *	  float8 from left to right and snapped to the nearest integer when it
 *	  lies within 1e-6 of one (so that decimal allocations such as
 *	  0.1 + 0.19, which float8 sums to 0.29000000000000004, end exactly on
 *	  bucket 2900).  Units whose bucket lies at or above B_k get NULL.
 *
 *	  The parsed and validated variant list is cached in fn_extra, keyed by
 *	  the bytes of the arguments: a query assigning millions of units with
 *	  one variant list parses it once, and a variants argument that changes
 *	  from row to row is compared with the cached one and parsed again when
 *	  its bytes differ.  Only a Const argument is trusted not to change
 *	  without being compared: a Param may (PL/pgSQL evaluates a simple
 *	  expression such as "v := assign_variant(u, e, variants)" with one
 *	  FmgrInfo for the whole transaction, its variables changing between
 *	  calls), so get_fn_expr_arg_stable(), which accepts Params, is not used.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <math.h>

#include "catalog/pg_type.h"
#include "nodes/pg_list.h"
#include "nodes/primnodes.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"

#include "experiment.h"
#include "hashing.h"

/* allocations may sum to 1 + this much (rounding of decimal fractions) */
#define EXP_ALLOC_SUM_TOL	1e-9
/* a boundary within this many buckets of an integer is that integer */
#define EXP_BOUNDARY_SNAP	1e-6

/* the parsed variant list of the last call, keyed by its argument bytes */
typedef struct VariantCache
{
	MemoryContext cxt;			/* holds everything below; reset on a miss */
	char	   *key1;			/* bytes of the variants (or names) argument */
	Size		key1len;
	char	   *key2;			/* bytes of the weights argument, or NULL */
	Size		key2len;
	int			n;
	int		   *bounds;			/* ceil(B_1) .. ceil(B_k), B_i as above */
	text	  **names;
	bool		const_known;	/* whether the variants arguments are known to be */
	bool		is_const;		/* ... Consts of the call site's expression */
} VariantCache;

/*
 * bucket(unit_id text, salt text) integer: SHA-256(salt ':' unit_id) as a
 * 256-bit big-endian integer, mod 10000.
 */
PG_FUNCTION_INFO_V1(exp_bucket);
Datum
exp_bucket(PG_FUNCTION_ARGS)
{
	int			unitlen,
				saltlen;
	const char *unit = exp_text_utf8(PG_GETARG_TEXT_PP(0), &unitlen);
	const char *salt = exp_text_utf8(PG_GETARG_TEXT_PP(1), &saltlen);

	PG_RETURN_INT32(exp_sha256_bucket(salt, saltlen, unit, unitlen));
}

/* the cache of this call site, created on first use */
static VariantCache *
variant_cache(FunctionCallInfo fcinfo)
{
	VariantCache *vc = (VariantCache *) fcinfo->flinfo->fn_extra;

	if (vc == NULL)
	{
		vc = MemoryContextAllocZero(fcinfo->flinfo->fn_mcxt, sizeof(VariantCache));
		vc->cxt = AllocSetContextCreate(fcinfo->flinfo->fn_mcxt,
										"experiment variant cache",
										ALLOCSET_SMALL_SIZES);
		fcinfo->flinfo->fn_extra = vc;
	}
	return vc;
}

static bool
cache_matches(VariantCache *vc, const void *k1, Size k1len, const void *k2, Size k2len)
{
	if (vc->key1 == NULL || vc->key1len != k1len || memcmp(vc->key1, k1, k1len) != 0)
		return false;
	if (k2 == NULL)
		return vc->key2 == NULL;
	return vc->key2 != NULL && vc->key2len == k2len && memcmp(vc->key2, k2, k2len) == 0;
}

/*
 * Validate names and allocations and fill the cache (in vc->cxt, already
 * reset) with names and boundaries.  names[i] are the bytes of name i.
 */
static void
cache_fill(VariantCache *vc, int n, char **names, int *namelens, double *alloc)
{
	MemoryContext old;
	double		cum = 0.0;
	int			i,
				j;

	if (n == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("variants must not be empty")));
	for (i = 0; i < n; i++)
	{
		if (namelens[i] == 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("variant %d has an empty name", i + 1)));
		for (j = 0; j < i; j++)
			if (namelens[j] == namelens[i] && memcmp(names[j], names[i], namelens[i]) == 0)
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("duplicate variant name \"%s\" (variants %d and %d)",
								exp_message_clip(names[i], namelens[i]), j + 1, i + 1)));
		if (!(alloc[i] >= 0.0 && alloc[i] <= 1.0))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("allocation of variant \"%s\" is %g, outside [0, 1]",
							exp_message_clip(names[i], namelens[i]), alloc[i])));
	}

	old = MemoryContextSwitchTo(vc->cxt);
	vc->n = n;
	vc->bounds = palloc(sizeof(int) * n);
	vc->names = palloc(sizeof(text *) * n);
	for (i = 0; i < n; i++)
	{
		double		b,
					r;

		cum += alloc[i];
		b = EXP_NUM_BUCKETS * cum;
		r = rint(b);
		if (fabs(b - r) < EXP_BOUNDARY_SNAP)
			b = r;
		/* for an integer bucket k, k < B_i exactly when k < ceil(B_i) */
		vc->bounds[i] = (int) Min(ceil(b), (double) (2 * EXP_NUM_BUCKETS));
		vc->names[i] = cstring_to_text_with_len(names[i], namelens[i]);
	}
	MemoryContextSwitchTo(old);

	if (cum > 1.0 + EXP_ALLOC_SUM_TOL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("allocations sum to %.15g, more than 1", cum),
				 errhint("Variant allocations are shares of all units and must sum to at most 1.")));
}

/* store the cache key; call after cache_fill succeeded */
static void
cache_key(VariantCache *vc, const void *k1, Size k1len, const void *k2, Size k2len)
{
	vc->key1 = MemoryContextAlloc(vc->cxt, k1len);
	memcpy(vc->key1, k1, k1len);
	vc->key1len = k1len;
	if (k2 != NULL)
	{
		vc->key2 = MemoryContextAlloc(vc->cxt, k2len);
		memcpy(vc->key2, k2, k2len);
		vc->key2len = k2len;
	}
}

static void
cache_reset(VariantCache *vc)
{
	MemoryContextReset(vc->cxt);
	vc->key1 = NULL;
	vc->key2 = NULL;
	vc->n = 0;
	vc->bounds = NULL;
	vc->names = NULL;
}

pg_noreturn static void
malformed_variants(const char *problem, int i)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 i > 0 ? errmsg("malformed variants: element %d %s", i, problem) :
			 errmsg("malformed variants: %s", problem),
			 errhint("Pass a JSON array of objects such as [{\"name\": \"control\", \"allocation\": 0.5}, {\"name\": \"treatment\", \"allocation\": 0.5}].")));
}

/* parse a jsonb variant list into the (reset) cache */
static void
cache_fill_jsonb(VariantCache *vc, Jsonb *jb)
{
	int			n,
				i;
	char	  **names;
	int		   *namelens;
	double	   *alloc;

	if (!JB_ROOT_IS_ARRAY(jb) || JB_ROOT_IS_SCALAR(jb))
		malformed_variants("expected a JSON array of objects", 0);
	n = JB_ROOT_COUNT(jb);
	names = palloc(sizeof(char *) * Max(n, 1));
	namelens = palloc(sizeof(int) * Max(n, 1));
	alloc = palloc(sizeof(double) * Max(n, 1));
	for (i = 0; i < n; i++)
	{
		JsonbValue *elem = getIthJsonbValueFromContainer(&jb->root, i);
		JsonbValue	name,
					share;

		if (elem == NULL || elem->type != jbvBinary ||
			!JsonContainerIsObject(elem->val.binary.data))
			malformed_variants("is not an object", i + 1);
		if (getKeyJsonValueFromContainer(elem->val.binary.data, "name", 4, &name) == NULL ||
			name.type != jbvString)
			malformed_variants("needs a string \"name\"", i + 1);
		if (getKeyJsonValueFromContainer(elem->val.binary.data, "allocation", 10, &share) == NULL ||
			share.type != jbvNumeric)
			malformed_variants("needs a numeric \"allocation\"", i + 1);
		names[i] = name.val.string.val;
		namelens[i] = name.val.string.len;
		/* through text and strtod: out-of-range values become inf or 0, not errors */
		alloc[i] = strtod(DatumGetCString(DirectFunctionCall1(numeric_out,
															  NumericGetDatum(share.val.numeric))),
						  NULL);
	}
	cache_fill(vc, n, names, namelens, alloc);
}

/* parse names and weights arrays into the (reset) cache */
static void
cache_fill_arrays(VariantCache *vc, ArrayType *names_a, ArrayType *weights_a)
{
	Datum	   *nd,
			   *wd;
	bool	   *nn,
			   *wn;
	int			n,
				nw,
				i;
	char	  **names;
	int		   *namelens;
	double	   *alloc;

	if (ARR_NDIM(names_a) > 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("names must be a one-dimensional array, got %d dimensions",
						ARR_NDIM(names_a))));
	if (ARR_NDIM(weights_a) > 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("weights must be a one-dimensional array, got %d dimensions",
						ARR_NDIM(weights_a))));
	deconstruct_array(names_a, TEXTOID, -1, false, TYPALIGN_INT, &nd, &nn, &n);
	deconstruct_array(weights_a, FLOAT8OID, sizeof(float8), FLOAT8PASSBYVAL,
					  TYPALIGN_DOUBLE, &wd, &wn, &nw);
	if (n != nw)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("names has %d elements but weights has %d", n, nw),
				 errhint("Give one weight per variant name.")));
	names = palloc(sizeof(char *) * Max(n, 1));
	namelens = palloc(sizeof(int) * Max(n, 1));
	alloc = palloc(sizeof(double) * Max(n, 1));
	for (i = 0; i < n; i++)
	{
		if (nn[i])
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("names must not contain NULL (element %d is NULL)", i + 1)));
		if (wn[i])
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("weights must not contain NULL (element %d is NULL)", i + 1)));
		names[i] = VARDATA_ANY(DatumGetPointer(nd[i]));
		namelens[i] = VARSIZE_ANY_EXHDR(DatumGetPointer(nd[i]));
		alloc[i] = DatumGetFloat8(wd[i]);
	}
	cache_fill(vc, n, names, namelens, alloc);
}

/*
 * Whether argument argnum of the call is a Const of the expression that
 * called it (false when there is no expression, as for a direct call)
 */
static bool
arg_is_const(FmgrInfo *flinfo, int argnum)
{
	Node	   *expr = flinfo->fn_expr;
	List	   *args;

	if (expr == NULL || !IsA(expr, FuncExpr))
		return false;
	args = ((FuncExpr *) expr)->args;
	return argnum < list_length(args) && IsA(list_nth(args, argnum), Const);
}

/* the variant whose bucket range holds the unit's bucket, or NULL */
static Datum
choose(FunctionCallInfo fcinfo, VariantCache *vc, int bucket)
{
	int			i,
				k = 0;
	text	   *name;
	text	   *res;

	/*
	 * The bounds are nondecreasing, so the variant is the number of bounds
	 * at or below the bucket; counted without a branch per variant, which a
	 * split such as 50/50 would mispredict on every other row.
	 */
	for (i = 0; i < vc->n; i++)
		k += (bucket >= vc->bounds[i]);
	if (k >= vc->n)
		PG_RETURN_NULL();
	name = vc->names[k];

	/*
	 * With Const variants the cache lives, unchanged, as long as the call
	 * site: its name can be returned as it is (results are read-only).
	 * Otherwise the next row may refill the cache.
	 */
	if (vc->is_const)
		PG_RETURN_TEXT_P(name);
	res = (text *) palloc(VARSIZE(name));
	memcpy(res, name, VARSIZE(name));
	PG_RETURN_TEXT_P(res);
}

/*
 * assign_variant(unit_id text, experiment_id text, variants jsonb) text: the
 * variant of the unit, whose bucket(unit_id, experiment_id) lies in
 * [10000 * sum of earlier allocations, 10000 * sum up to this one); NULL
 * past the sum of all allocations.
 */
PG_FUNCTION_INFO_V1(exp_assign_variant_jsonb);
Datum
exp_assign_variant_jsonb(PG_FUNCTION_ARGS)
{
	int			unitlen,
				saltlen;
	const char *unit = exp_text_utf8(PG_GETARG_TEXT_PP(0), &unitlen);
	const char *salt = exp_text_utf8(PG_GETARG_TEXT_PP(1), &saltlen);
	VariantCache *vc = variant_cache(fcinfo);

	if (!vc->const_known)
	{
		vc->is_const = arg_is_const(fcinfo->flinfo, 2);
		vc->const_known = true;
	}
	/* a Const variants argument is parsed once and not even fetched again */
	if (!(vc->is_const && vc->key1 != NULL))
	{
		Jsonb	   *jb = PG_GETARG_JSONB_P(2);

		if (!cache_matches(vc, jb, VARSIZE(jb), NULL, 0))
		{
			cache_reset(vc);
			cache_fill_jsonb(vc, jb);
			cache_key(vc, jb, VARSIZE(jb), NULL, 0);
		}
	}
	return choose(fcinfo, vc, exp_sha256_bucket(salt, saltlen, unit, unitlen));
}

/*
 * assign_variant(unit_id text, experiment_id text, names text[], weights
 * float8[]) text: as the jsonb form, with the variant names and allocations
 * given as two arrays of equal length.
 */
PG_FUNCTION_INFO_V1(exp_assign_variant_arrays);
Datum
exp_assign_variant_arrays(PG_FUNCTION_ARGS)
{
	int			unitlen,
				saltlen;
	const char *unit = exp_text_utf8(PG_GETARG_TEXT_PP(0), &unitlen);
	const char *salt = exp_text_utf8(PG_GETARG_TEXT_PP(1), &saltlen);
	VariantCache *vc = variant_cache(fcinfo);

	if (!vc->const_known)
	{
		vc->is_const = arg_is_const(fcinfo->flinfo, 2) && arg_is_const(fcinfo->flinfo, 3);
		vc->const_known = true;
	}
	if (!(vc->is_const && vc->key1 != NULL))
	{
		ArrayType  *names_a = PG_GETARG_ARRAYTYPE_P(2);
		ArrayType  *weights_a = PG_GETARG_ARRAYTYPE_P(3);

		if (!cache_matches(vc, names_a, VARSIZE(names_a), weights_a, VARSIZE(weights_a)))
		{
			cache_reset(vc);
			cache_fill_arrays(vc, names_a, weights_a);
			cache_key(vc, names_a, VARSIZE(names_a), weights_a, VARSIZE(weights_a));
		}
	}
	return choose(fcinfo, vc, exp_sha256_bucket(salt, saltlen, unit, unitlen));
}
