/*-------------------------------------------------------------------------
 *
 * hash.c
 *	  Hashing schemes that reproduce other platforms' assignments in SQL:
 *	  GrowthBook (FNV-1a 32-bit over UTF-16 code units, hash versions 1 and
 *	  2, bucket ranges, variation choice, namespaces), Eppo (MD5 shards) and
 *	  Statsig (SHA-256, first 64 bits), plus experiment.unit_hash(), the
 *	  dispatch by scheme name that the registry uses.
 *
 *	  Every scheme hashes the UTF-8 bytes of its input, as the SDKs do; in a
 *	  database whose encoding is not UTF-8 non-ASCII text is converted first.
 *	  Formulas and sources: doc/hashing.md.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <math.h>

#include "catalog/pg_type.h"
#include "mb/pg_wchar.h"
#include "utils/array.h"
#include "utils/builtins.h"

#include "experiment.h"
#include "hashing.h"

/* FNV-1a 32-bit (Fowler, Noll, Vo): offset basis and prime */
#define FNV32_OFFSET_BASIS	0x811c9dc5U
#define FNV32_PRIME			16777619U

/*
 * The UTF-8 bytes of a text value: a pointer into the value itself when the
 * database encoding is UTF-8 (or SQL_ASCII, whose bytes are taken as they
 * are) or the text is pure ASCII, else a converted copy.
 */
const char *
exp_text_utf8(text *t, int *len)
{
	const char *s = VARDATA_ANY(t);
	int			n = VARSIZE_ANY_EXHDR(t);
	int			enc = GetDatabaseEncoding();
	int			i;
	char	   *conv;

	*len = n;
	if (enc == PG_UTF8 || enc == PG_SQL_ASCII)
		return s;
	for (i = 0; i < n; i++)
		if ((unsigned char) s[i] >= 0x80)
			break;
	if (i == n)
		return s;
	conv = pg_server_to_any(s, n, PG_UTF8);
	if (conv != s)
		*len = strlen(conv);
	return conv;
}

/*
 * 2^(32 j) mod 10000 for j = 0..7, as constant expressions: the weights of
 * the digest's 32-bit words in the bucket (see exp_sha256_bucket)
 */
#define POW32_MOD_0		UINT64CONST(1)
#define POW32_MOD_1		(UINT64CONST(4294967296) % EXP_NUM_BUCKETS)
#define POW32_MOD_NEXT(p)	(((p) * POW32_MOD_1) % EXP_NUM_BUCKETS)
#define POW32_MOD_2		POW32_MOD_NEXT(POW32_MOD_1)
#define POW32_MOD_3		POW32_MOD_NEXT(POW32_MOD_2)
#define POW32_MOD_4		POW32_MOD_NEXT(POW32_MOD_3)
#define POW32_MOD_5		POW32_MOD_NEXT(POW32_MOD_4)
#define POW32_MOD_6		POW32_MOD_NEXT(POW32_MOD_5)
#define POW32_MOD_7		POW32_MOD_NEXT(POW32_MOD_6)

/*
 * SHA-256(salt ':' unit) as a 256-bit big-endian integer, mod 10000.
 *
 * With the digest's 32-bit big-endian words H_0..H_7 (H_0 the most
 * significant) the integer is sum_k H_k 2^(32 (7 - k)), so its residue is
 * (sum_k H_k (2^(32 (7 - k)) mod 10000)) mod 10000.  Every term is below
 * 2^32 * 10^4 < 2^46 and their sum below 2^49: one 64-bit sum of eight
 * independent products and one reduction, where Horner's rule (r <- (r *
 * 2^32 + H_k) mod 10000) would chain eight reductions.
 */
int
exp_sha256_bucket(const char *salt, int saltlen, const char *unit, int unitlen)
{
	uint32		H[8];
	uint64		r;

	exp_sha256_join_words((const uint8 *) salt, saltlen, ':',
						  (const uint8 *) unit, unitlen, H);
	r = H[0] * POW32_MOD_7 + H[1] * POW32_MOD_6 + H[2] * POW32_MOD_5 + H[3] * POW32_MOD_4 +
		H[4] * POW32_MOD_3 + H[5] * POW32_MOD_2 + H[6] * POW32_MOD_1 + H[7] * POW32_MOD_0;
	return (int) (r % EXP_NUM_BUCKETS);
}

/* Eppo: the first 4 bytes (8 hex digits) of MD5(salt '-' subject), big-endian */
uint32
exp_eppo_hash32(const char *salt, int saltlen, const char *subject, int subjectlen)
{
	ExpMd5Ctx	ctx;
	uint8		digest[EXP_MD5_DIGEST_LENGTH];

	exp_md5_init(&ctx);
	exp_md5_update(&ctx, (const uint8 *) salt, saltlen);
	exp_md5_update(&ctx, (const uint8 *) "-", 1);
	exp_md5_update(&ctx, (const uint8 *) subject, subjectlen);
	exp_md5_final(&ctx, digest);
	return ((uint32) digest[0] << 24) | ((uint32) digest[1] << 16) |
		((uint32) digest[2] << 8) | (uint32) digest[3];
}

/* Statsig: the first 8 bytes of SHA-256(salt '.' unit) as a big-endian uint64, mod 10000 */
int
exp_statsig_bucket(const char *salt, int saltlen, const char *unit, int unitlen)
{
	uint32		H[8];

	exp_sha256_join_words((const uint8 *) salt, saltlen, '.',
						  (const uint8 *) unit, unitlen, H);
	return (int) ((((uint64) H[0] << 32) | H[1]) % EXP_NUM_BUCKETS);
}

/* one FNV-1a step per UTF-16 code unit */
static inline uint32
fnv_unit(uint32 h, uint32 cu)
{
	return (h ^ cu) * FNV32_PRIME;
}

pg_noreturn static void
invalid_utf8(void)
{
	ereport(ERROR,
			(errcode(ERRCODE_CHARACTER_NOT_IN_REPERTOIRE),
			 errmsg("GrowthBook hashing needs UTF-8 text, got an invalid byte sequence"),
			 errhint("GrowthBook hashes the UTF-16 code units of a JavaScript string; store unit ids and seeds as valid UTF-8.")));
}

/*
 * Continue FNV-1a hash h over the UTF-16 code units of UTF-8 text s: each
 * code point below U+10000 is one code unit, each one above a surrogate pair
 * (as JavaScript's String.prototype.charCodeAt sees the string).
 */
static uint32
fnv_utf16(uint32 h, const char *s, int len)
{
	const unsigned char *p = (const unsigned char *) s;
	const unsigned char *end = p + len;

	while (p < end)
	{
		uint32		c = *p;

		if (c < 0x80)
		{
			h = fnv_unit(h, c);
			p++;
			continue;
		}
		else if ((c & 0xE0) == 0xC0 && end - p >= 2 && (p[1] & 0xC0) == 0x80)
		{
			c = ((c & 0x1F) << 6) | (p[1] & 0x3F);
			if (c < 0x80)
				invalid_utf8();
			p += 2;
		}
		else if ((c & 0xF0) == 0xE0 && end - p >= 3 &&
				 (p[1] & 0xC0) == 0x80 && (p[2] & 0xC0) == 0x80)
		{
			c = ((c & 0x0F) << 12) | ((uint32) (p[1] & 0x3F) << 6) | (p[2] & 0x3F);
			if (c < 0x800 || (c >= 0xD800 && c <= 0xDFFF))
				invalid_utf8();
			p += 3;
		}
		else if ((c & 0xF8) == 0xF0 && end - p >= 4 && (p[1] & 0xC0) == 0x80 &&
				 (p[2] & 0xC0) == 0x80 && (p[3] & 0xC0) == 0x80)
		{
			c = ((c & 0x07) << 18) | ((uint32) (p[1] & 0x3F) << 12) |
				((uint32) (p[2] & 0x3F) << 6) | (p[3] & 0x3F);
			if (c < 0x10000 || c > 0x10FFFF)
				invalid_utf8();
			p += 4;
		}
		else
			invalid_utf8();

		if (c < 0x10000)
			h = fnv_unit(h, c);
		else
		{
			c -= 0x10000;
			h = fnv_unit(h, 0xD800 + (c >> 10));
			h = fnv_unit(h, 0xDC00 + (c & 0x3FF));
		}
	}
	return h;
}

/*
 * GrowthBook's hash(seed, value, version) (sdk-js src/util.ts):
 *	v1: (fnv(value seed) mod 1000) / 1000
 *	v2: (fnv(decimal string of fnv(seed value)) mod 10000) / 10000
 * Returns -1 for any other version (the SDK returns null).
 */
double
exp_growthbook_hash(const char *seed, int seedlen, const char *value, int valuelen,
					int version)
{
	uint32		h;

	if (version == 1)
	{
		h = fnv_utf16(FNV32_OFFSET_BASIS, value, valuelen);
		h = fnv_utf16(h, seed, seedlen);
		return (double) (h % 1000) / 1000.0;
	}
	if (version == 2)
	{
		char		digits[16];
		int			n;

		h = fnv_utf16(FNV32_OFFSET_BASIS, seed, seedlen);
		h = fnv_utf16(h, value, valuelen);
		n = snprintf(digits, sizeof(digits), "%u", (unsigned int) h);
		h = fnv_utf16(FNV32_OFFSET_BASIS, digits, n);
		return (double) (h % 10000) / 10000.0;
	}
	return -1.0;
}

/* check that x is not NaN; name is the argument's name */
static void
check_not_nan(double x, const char *name)
{
	if (isnan(x))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must not be NaN", name)));
}

/*
 * The elements of a float8 array of at most one dimension, with no NULLs,
 * each finite and >= 0 (weights);
 * name is the argument's name for error messages.
 */
static double *
float8_array_values(ArrayType *arr, const char *name, int *n)
{
	Datum	   *elems;
	bool	   *nulls;
	double	   *out;
	int			i;

	if (ARR_NDIM(arr) > 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must be a one-dimensional array, got %d dimensions",
						name, ARR_NDIM(arr))));
	deconstruct_array(arr, FLOAT8OID, sizeof(float8), FLOAT8PASSBYVAL,
					  TYPALIGN_DOUBLE, &elems, &nulls, n);
	out = palloc(sizeof(double) * Max(*n, 1));
	for (i = 0; i < *n; i++)
	{
		if (nulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("%s must not contain NULL (element %d is NULL)", name, i + 1)));
		out[i] = DatumGetFloat8(elems[i]);
		if (!(out[i] >= 0) || !isfinite(out[i]))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("%s[%d] must be a finite number >= 0, got %g", name, i + 1, out[i])));
	}
	return out;
}

/*
 * growthbook_hash(seed text, value text, version int) float8: GrowthBook's
 * hash in [0, 1); NULL for a version other than 1 or 2, as the SDK returns
 * null.
 */
PG_FUNCTION_INFO_V1(exp_growthbook_hash_sql);
Datum
exp_growthbook_hash_sql(PG_FUNCTION_ARGS)
{
	int			seedlen,
				valuelen;
	const char *seed = exp_text_utf8(PG_GETARG_TEXT_PP(0), &seedlen);
	const char *value = exp_text_utf8(PG_GETARG_TEXT_PP(1), &valuelen);
	int32		version = PG_GETARG_INT32(2);

	if (version != 1 && version != 2)
		PG_RETURN_NULL();
	PG_RETURN_FLOAT8(exp_growthbook_hash(seed, seedlen, value, valuelen, version));
}

/*
 * growthbook_bucket_ranges(num_variations int, coverage float8 DEFAULT 1,
 * weights float8[] DEFAULT NULL) float8[]: GrowthBook's getBucketRanges as a
 * num_variations x 2 array of [start, end).  Coverage is clamped to [0, 1];
 * weights that are missing, of the wrong length or whose sum is outside
 * [0.99, 1.01] are replaced by equal weights 1/n; variation i's range starts
 * at the sum of the weights before it and is coverage * w_i long.  Not
 * strict: NULL coverage is 1 (the SDK's default) and NULL weights are the
 * equal weights.
 */
PG_FUNCTION_INFO_V1(exp_growthbook_bucket_ranges);
Datum
exp_growthbook_bucket_ranges(PG_FUNCTION_ARGS)
{
	int32		n;
	double		coverage = 1.0;
	double	   *weights = NULL;
	int			nweights = 0;
	double		total = 0.0;
	double		cumulative = 0.0;
	Datum	   *elems;
	int			dims[2];
	int			lbs[2] = {1, 1};
	int			i;

	if (PG_ARGISNULL(0))
		PG_RETURN_NULL();
	n = PG_GETARG_INT32(0);
	if (!PG_ARGISNULL(1))
	{
		coverage = PG_GETARG_FLOAT8(1);
		check_not_nan(coverage, "coverage");
		if (coverage < 0.0)
			coverage = 0.0;
		else if (coverage > 1.0)
			coverage = 1.0;
	}
	if (n <= 0)
		PG_RETURN_ARRAYTYPE_P(construct_empty_array(FLOAT8OID));
	if (n > 10000)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("num_variations must be at most 10000, got %d", n)));

	if (!PG_ARGISNULL(2))
		weights = float8_array_values(PG_GETARG_ARRAYTYPE_P(2), "weights", &nweights);
	if (weights != NULL && nweights == n)
	{
		for (i = 0; i < n; i++)
			total += weights[i];
	}
	if (weights == NULL || nweights != n || total < 0.99 || total > 1.01)
	{
		/* getEqualWeights(n): n copies of 1 / n */
		weights = palloc(sizeof(double) * n);
		for (i = 0; i < n; i++)
			weights[i] = 1.0 / n;
	}

	elems = palloc(sizeof(Datum) * 2 * n);
	for (i = 0; i < n; i++)
	{
		double		start = cumulative;

		cumulative += weights[i];
		elems[2 * i] = Float8GetDatum(start);
		elems[2 * i + 1] = Float8GetDatum(start + coverage * weights[i]);
	}
	dims[0] = n;
	dims[1] = 2;
	PG_RETURN_ARRAYTYPE_P(construct_md_array(elems, NULL, 2, dims, lbs, FLOAT8OID,
											 sizeof(float8), FLOAT8PASSBYVAL,
											 TYPALIGN_DOUBLE));
}

/*
 * growthbook_choose_variation(n float8, ranges float8[]) integer:
 * GrowthBook's chooseVariation, the 0-based index of the first range
 * [start, end) that contains n, -1 when none does.  ranges is a k x 2 array
 * (as growthbook_bucket_ranges returns) or empty.
 */
PG_FUNCTION_INFO_V1(exp_growthbook_choose_variation);
Datum
exp_growthbook_choose_variation(PG_FUNCTION_ARGS)
{
	double		x = PG_GETARG_FLOAT8(0);
	ArrayType  *arr = PG_GETARG_ARRAYTYPE_P(1);
	int			ndim = ARR_NDIM(arr);
	int		   *dims = ARR_DIMS(arr);
	Datum	   *elems;
	bool	   *nulls;
	int			nelems;
	int			i;

	if (ndim == 0)
		PG_RETURN_INT32(-1);
	if (ndim != 2 || dims[1] != 2)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("ranges must be a k x 2 array of [start, end] pairs"),
				 errhint("Use the result of experiment.growthbook_bucket_ranges(), e.g. '{{0,0.5},{0.5,1}}'.")));
	deconstruct_array(arr, FLOAT8OID, sizeof(float8), FLOAT8PASSBYVAL,
					  TYPALIGN_DOUBLE, &elems, &nulls, &nelems);
	for (i = 0; i < nelems; i++)
		if (nulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("ranges must not contain NULL")));
	for (i = 0; i < nelems / 2; i++)
	{
		if (x >= DatumGetFloat8(elems[2 * i]) && x < DatumGetFloat8(elems[2 * i + 1]))
			PG_RETURN_INT32(i);
	}
	PG_RETURN_INT32(-1);
}

/*
 * growthbook_in_namespace(unit_id text, namespace_id text, range_start
 * float8, range_end float8) boolean: GrowthBook's inNamespace, whether
 * hash("__" || namespace_id, unit_id, 1) lies in [range_start, range_end).
 */
PG_FUNCTION_INFO_V1(exp_growthbook_in_namespace);
Datum
exp_growthbook_in_namespace(PG_FUNCTION_ARGS)
{
	int			unitlen,
				nslen;
	const char *unit = exp_text_utf8(PG_GETARG_TEXT_PP(0), &unitlen);
	const char *ns = exp_text_utf8(PG_GETARG_TEXT_PP(1), &nslen);
	double		start = PG_GETARG_FLOAT8(2);
	double		end = PG_GETARG_FLOAT8(3);
	uint32		h;
	double		x;

	/* hash("__" ns, unit, 1) = (fnv(unit "__" ns) mod 1000) / 1000 */
	h = fnv_utf16(FNV32_OFFSET_BASIS, unit, unitlen);
	h = fnv_utf16(h, "__", 2);
	h = fnv_utf16(h, ns, nslen);
	x = (double) (h % 1000) / 1000.0;
	PG_RETURN_BOOL(x >= start && x < end);
}

/*
 * eppo_shard(subject text, salt text, total_shards integer DEFAULT 10000)
 * integer: Eppo's getShard, the first 8 hex digits of MD5(salt '-' subject)
 * as an integer, mod total_shards.
 */
PG_FUNCTION_INFO_V1(exp_eppo_shard);
Datum
exp_eppo_shard(PG_FUNCTION_ARGS)
{
	int			subjectlen,
				saltlen;
	const char *subject = exp_text_utf8(PG_GETARG_TEXT_PP(0), &subjectlen);
	const char *salt = exp_text_utf8(PG_GETARG_TEXT_PP(1), &saltlen);
	int32		total = PG_GETARG_INT32(2);

	if (total <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("total_shards must be positive, got %d", total)));
	PG_RETURN_INT32((int32) (exp_eppo_hash32(salt, saltlen, subject, subjectlen) %
							 (uint32) total));
}

/*
 * statsig_bucket(unit_id text, salt text) integer: Statsig's bucket, the
 * first 8 bytes of SHA-256(salt '.' unit_id) as a big-endian uint64, mod
 * 10000.
 */
PG_FUNCTION_INFO_V1(exp_statsig_bucket_sql);
Datum
exp_statsig_bucket_sql(PG_FUNCTION_ARGS)
{
	int			unitlen,
				saltlen;
	const char *unit = exp_text_utf8(PG_GETARG_TEXT_PP(0), &unitlen);
	const char *salt = exp_text_utf8(PG_GETARG_TEXT_PP(1), &saltlen);

	PG_RETURN_INT32(exp_statsig_bucket(salt, saltlen, unit, unitlen));
}

#define EXP_VALID_SCHEMES "sha256, growthbook_v1, growthbook_v2, eppo or statsig"

/*
 * unit_hash(scheme text, salt text, unit_id text) float8: the position in
 * [0, 1) of a unit under a hashing scheme: sha256 -> bucket / 10000,
 * growthbook_v1/v2 -> growthbook_hash(salt, unit, 1/2), eppo ->
 * eppo_shard / 10000, statsig -> statsig_bucket / 10000.
 */
PG_FUNCTION_INFO_V1(exp_unit_hash);
Datum
exp_unit_hash(PG_FUNCTION_ARGS)
{
	text	   *scheme_t = PG_GETARG_TEXT_PP(0);
	const char *scheme = VARDATA_ANY(scheme_t);
	int			schemelen = VARSIZE_ANY_EXHDR(scheme_t);
	int			saltlen,
				unitlen;
	const char *salt = exp_text_utf8(PG_GETARG_TEXT_PP(1), &saltlen);
	const char *unit = exp_text_utf8(PG_GETARG_TEXT_PP(2), &unitlen);

#define SCHEME_IS(s) (schemelen == (int) strlen(s) && memcmp(scheme, s, schemelen) == 0)
	if (SCHEME_IS("sha256"))
		PG_RETURN_FLOAT8(exp_sha256_bucket(salt, saltlen, unit, unitlen) / (double) EXP_NUM_BUCKETS);
	if (SCHEME_IS("growthbook_v1"))
		PG_RETURN_FLOAT8(exp_growthbook_hash(salt, saltlen, unit, unitlen, 1));
	if (SCHEME_IS("growthbook_v2"))
		PG_RETURN_FLOAT8(exp_growthbook_hash(salt, saltlen, unit, unitlen, 2));
	if (SCHEME_IS("eppo"))
		PG_RETURN_FLOAT8((exp_eppo_hash32(salt, saltlen, unit, unitlen) % EXP_NUM_BUCKETS) /
						 (double) EXP_NUM_BUCKETS);
	if (SCHEME_IS("statsig"))
		PG_RETURN_FLOAT8(exp_statsig_bucket(salt, saltlen, unit, unitlen) / (double) EXP_NUM_BUCKETS);
#undef SCHEME_IS

	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("invalid scheme \"%s\"", exp_message_clip(scheme, schemelen)),
			 errhint("Use " EXP_VALID_SCHEMES ".")));
	PG_RETURN_NULL();			/* keep the compiler quiet */
}
