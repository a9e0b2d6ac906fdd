/*-------------------------------------------------------------------------
 *
 * sketch.c
 *	  The experiment.sketch type: a mergeable quantile sketch (DDSketch,
 *	  Masson, Rim and Lee, VLDB 2019) of relative accuracy 0.005 with a
 *	  logarithmic index mapping, positive and negative values and zero, and
 *	  a collapsing store of at most 2048 bins per sign.  Text and binary
 *	  I/O, equality, the sketch(value) and merge(sketch) aggregates,
 *	  sketch_merge (+), n, quantile and rank.
 *
 * Text form (JSON; doc/statistics.md, "Quantiles"):
 *
 *	{"version":1,"alpha":0.005,"n":3,"min":1,"max":20,
 *	 "negative":[],"zero":0,"positive":[[0,1],[139,1],[301,1]]}
 *
 * "negative" and "positive" list [k, count] pairs in increasing k: bin k
 * holds the values whose magnitude is in (gamma^(k-1), gamma^k].  Floats
 * are printed in their shortest exact form, so text round-trips exactly.
 *
 * Merging is exact: the bins kept are the 2048 of highest magnitude per
 * sign among all the bins seen, and the count of every lower one is added
 * to the lowest kept bin, whatever the order of insertions and merges; so
 * the merge of sketches equals, bin for bin, the sketch of the union.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <math.h>
#include <float.h>
#include <ctype.h>

#include "common/shortest_dec.h"
#include "lib/stringinfo.h"
#include "libpq/pqformat.h"
#include "utils/builtins.h"
#include "utils/float.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "utils/lsyscache.h"
#include "utils/syscache.h"

#include "experiment.h"
#include "sketch.h"

/* a sketch with bins at most this big is merged bin by bin, else linearly */
#define SKETCH_SMALL_MERGE 16
/* initial capacity of an aggregate's state */
#define SKETCH_INITIAL_CAP 4

/* ---------- the index mapping ---------- */

static double sk_log_gamma = 0;		/* ln(gamma) */
static double sk_inv_log_gamma = 0;

static inline void
sk_init_mapping(void)
{
	if (unlikely(sk_log_gamma == 0))
	{
		/* gamma = (1 + alpha) / (1 - alpha) */
		sk_log_gamma = log1p(SKETCH_ALPHA) - log1p(-SKETCH_ALPHA);
		sk_inv_log_gamma = 1.0 / sk_log_gamma;
	}
}

/* DDSketch's index of a finite magnitude m > 0: ceil(log_gamma(m)) */
static inline int32
sk_key(double m)
{
	return (int32) ceil(log(m) * sk_inv_log_gamma);
}

/* the ord of a finite value (sketch.h) */
static inline int32
sk_ord(double x)
{
	if (x > 0)
		return SKETCH_ORD_OFFSET + sk_key(x);
	if (x < 0)
		return -(SKETCH_ORD_OFFSET + sk_key(-x));
	return 0;
}

/*
 * The value that represents a bin: (1 + alpha) gamma^(k-1) = 2 gamma^k /
 * (gamma + 1), within alpha (relative) of every magnitude in (gamma^(k-1),
 * gamma^k]; signed as the bin.
 */
static double
sk_ord_value(int32 ord)
{
	int32		k;
	double		v;

	if (ord == 0)
		return 0;
	k = (ord > 0 ? ord : -ord) - SKETCH_ORD_OFFSET;
	v = (1.0 + SKETCH_ALPHA) * exp((double) (k - 1) * sk_log_gamma);
	return ord > 0 ? v : -v;
}

/* the range of keys of finite non-zero doubles */
static int32
sk_key_min(void)
{
	return sk_key(DBL_TRUE_MIN);
}

static int32
sk_key_max(void)
{
	return sk_key(DBL_MAX);
}

/* ---------- access ---------- */

static inline uint32 *
sk_counts32(Sketch *s)
{
	return (uint32 *) (s->data + SKETCH_COUNTS_OFFSET(SKETCH_CAP(s), false));
}

static inline uint64 *
sk_counts64(Sketch *s)
{
	return (uint64 *) (s->data + SKETCH_COUNTS_OFFSET(SKETCH_CAP(s), true));
}

uint64
exp_sketch_count(const Sketch *s, int i)
{
	if (SKETCH_IS_WIDE(s))
		return sk_counts64((Sketch *) s)[i];
	return sk_counts32((Sketch *) s)[i];
}

/* the number of values: the sum of the counts */
int64
exp_sketch_n(const Sketch *s)
{
	uint64		n = 0;
	int			i;

	for (i = 0; i < s->nbins; i++)
		n += exp_sketch_count(s, i);
	return (int64) n;
}

static Sketch *
sk_alloc(int cap, bool wide)
{
	Sketch	   *s = (Sketch *) palloc0(SKETCH_SIZE(cap, wide));

	SET_VARSIZE(s, SKETCH_SIZE(cap, wide));
	s->version = SKETCH_VERSION;
	s->flags = wide ? SKETCH_FLAG_WIDE : 0;
	return s;
}

/* a copy with capacity cap (>= nbins) and the given count width */
static Sketch *
sk_resize(const Sketch *s, int cap, bool wide)
{
	Sketch	   *r = sk_alloc(cap, wide);
	int			i;

	Assert(cap >= s->nbins);
	r->nbins = s->nbins;
	r->min = s->min;
	r->max = s->max;
	memcpy(SKETCH_ORDS(r), SKETCH_ORDS((Sketch *) s), sizeof(int32) * s->nbins);
	for (i = 0; i < s->nbins; i++)
	{
		uint64		c = exp_sketch_count(s, i);

		if (wide)
			sk_counts64(r)[i] = c;
		else
			sk_counts32(r)[i] = (uint32) c;
	}
	return r;
}

/* ---------- bins as plain arrays (merge, I/O) ---------- */

typedef struct SketchBins
{
	int			nbins;
	int32	   *ords;
	uint64	   *counts;
	double		min;
	double		max;
} SketchBins;

static void
sk_bins_alloc(SketchBins *b, int cap)
{
	b->nbins = 0;
	b->ords = palloc(sizeof(int32) * Max(cap, 1));
	b->counts = palloc(sizeof(uint64) * Max(cap, 1));
}

/*
 * Collapse sorted bins to at most SKETCH_MAX_BINS per sign: the counts of
 * the lowest-magnitude bins go to the lowest-magnitude bin kept.
 */
static void
sk_bins_collapse(SketchBins *b)
{
	int			nneg = 0,
				npos = 0,
				first_pos,
				i,
				j;

	while (nneg < b->nbins && b->ords[nneg] < 0)
		nneg++;
	first_pos = nneg;
	while (first_pos < b->nbins && b->ords[first_pos] == 0)
		first_pos++;
	npos = b->nbins - first_pos;

	if (npos > SKETCH_MAX_BINS)
	{
		int			drop = npos - SKETCH_MAX_BINS;
		uint64		mass = 0;

		for (i = first_pos; i < first_pos + drop; i++)
			mass += b->counts[i];
		b->counts[first_pos + drop] += mass;
		for (i = first_pos, j = first_pos + drop; j < b->nbins; i++, j++)
		{
			b->ords[i] = b->ords[j];
			b->counts[i] = b->counts[j];
		}
		b->nbins -= drop;
	}
	if (nneg > SKETCH_MAX_BINS)
	{
		int			drop = nneg - SKETCH_MAX_BINS;
		uint64		mass = 0;

		/* negative bins run from the highest magnitude to the lowest */
		for (i = SKETCH_MAX_BINS; i < nneg; i++)
			mass += b->counts[i];
		b->counts[SKETCH_MAX_BINS - 1] += mass;
		for (i = SKETCH_MAX_BINS, j = nneg; j < b->nbins; i++, j++)
		{
			b->ords[i] = b->ords[j];
			b->counts[i] = b->counts[j];
		}
		b->nbins -= drop;
	}
}

static void
sk_to_bins(const Sketch *s, SketchBins *b)
{
	int			i;

	sk_bins_alloc(b, s->nbins);
	b->nbins = s->nbins;
	b->min = s->min;
	b->max = s->max;
	memcpy(b->ords, SKETCH_ORDS((Sketch *) s), sizeof(int32) * s->nbins);
	for (i = 0; i < s->nbins; i++)
		b->counts[i] = exp_sketch_count(s, i);
}

static Sketch *
sk_from_bins(const SketchBins *b)
{
	bool		wide = false;
	Sketch	   *s;
	int			i;

	for (i = 0; i < b->nbins; i++)
		if (b->counts[i] > PG_UINT32_MAX)
			wide = true;
	s = sk_alloc(b->nbins, wide);
	s->nbins = (uint16) b->nbins;
	s->min = b->min;
	s->max = b->max;
	memcpy(SKETCH_ORDS(s), b->ords, sizeof(int32) * b->nbins);
	for (i = 0; i < b->nbins; i++)
	{
		if (wide)
			sk_counts64(s)[i] = b->counts[i];
		else
			sk_counts32(s)[i] = (uint32) b->counts[i];
	}
	return s;
}

pg_noreturn static void
sk_count_overflow(void)
{
	ereport(ERROR,
			(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
			 errmsg("experiment.sketch count out of range")));
}

/* the linear merge of two sketches into a new one */
static Sketch *
sk_merge_linear(const Sketch *a, const Sketch *b)
{
	SketchBins	ba,
				bb,
				r;
	int			i = 0,
				j = 0;

	sk_to_bins(a, &ba);
	sk_to_bins(b, &bb);
	sk_bins_alloc(&r, ba.nbins + bb.nbins);
	r.min = Min(ba.min, bb.min);
	r.max = Max(ba.max, bb.max);
	while (i < ba.nbins || j < bb.nbins)
	{
		if (j >= bb.nbins || (i < ba.nbins && ba.ords[i] < bb.ords[j]))
		{
			r.ords[r.nbins] = ba.ords[i];
			r.counts[r.nbins++] = ba.counts[i++];
		}
		else if (i >= ba.nbins || bb.ords[j] < ba.ords[i])
		{
			r.ords[r.nbins] = bb.ords[j];
			r.counts[r.nbins++] = bb.counts[j++];
		}
		else
		{
			r.ords[r.nbins] = ba.ords[i];
			r.counts[r.nbins++] = ba.counts[i++] + bb.counts[j++];
		}
	}
	sk_bins_collapse(&r);
	return sk_from_bins(&r);
}

/* ---------- adding to a sketch in place ---------- */

/*
 * Index A of the first bin whose ord is >= ord.  The ords are distinct
 * integers in increasing order, so for i >= A, A >= i - (o[i] - ord), and
 * for i < A, A <= i + (ord - o[i]): each probe of a bound narrows the range
 * of A by the run of consecutive bins around it.  The bins of dense data are
 * consecutive near the middle of the distribution, where this finds A in two
 * probes; a branch-free binary search finishes what a few rounds leave.
 */
static inline int
sk_lower_bound(const Sketch *s, int32 ord)
{
	const int32 *o = SKETCH_ORDS((Sketch *) s);
	int			n = s->nbins;
	int64		lo,
				hi;
	int			len,
				round;
	const int32 *base;

	if (n == 0)
		return 0;
	/* A in [lo, hi] from the first and the last bin */
	lo = Min(Max((int64) (n - 1) - ((int64) o[n - 1] - ord), 0), n);
	hi = Min(Max((int64) ord - o[0], 0), n);
	for (round = 0; round < 4 && lo < hi; round++)
	{
		if (hi < n)
			lo = Max(lo, hi - ((int64) o[hi] - ord));
		if (o[lo] >= ord)
			return (int) lo;
		hi = Min(hi, lo + ((int64) ord - o[lo]));
	}
	len = (int) (hi - lo);
	base = o + lo;
	if (len <= 0)
		return (int) lo;
	while (len > 1)
	{
		int			half = len / 2;

		base = (base[half] < ord) ? base + half : base;
		len -= half;
	}
	return (int) (base - o) + (*base < ord);
}

/* add c to the count of bin i, widening the counts if needed */
static Sketch *
sk_add_at(Sketch *s, int i, uint64 c)
{
	if (SKETCH_IS_WIDE(s))
	{
		uint64	   *cnt = sk_counts64(s);

		if (cnt[i] > PG_UINT64_MAX - c)
			sk_count_overflow();
		cnt[i] += c;
		return s;
	}
	if ((uint64) sk_counts32(s)[i] + c > PG_UINT32_MAX)
	{
		s = sk_resize(s, SKETCH_CAP(s), true);
		return sk_add_at(s, i, c);
	}
	sk_counts32(s)[i] += (uint32) c;
	return s;
}

static void
sk_remove_at(Sketch *s, int i)
{
	int32	   *o = SKETCH_ORDS(s);
	int			tail = s->nbins - i - 1;

	memmove(o + i, o + i + 1, sizeof(int32) * tail);
	if (SKETCH_IS_WIDE(s))
		memmove(sk_counts64(s) + i, sk_counts64(s) + i + 1, sizeof(uint64) * tail);
	else
		memmove(sk_counts32(s) + i, sk_counts32(s) + i + 1, sizeof(uint32) * tail);
	s->nbins--;
}

/* insert a new bin (ord, c) at index i, growing the capacity if needed */
static Sketch *
sk_insert_at(Sketch *s, int i, int32 ord, uint64 c)
{
	int32	   *o;
	int			tail = s->nbins - i;

	if (s->nbins == SKETCH_CAP(s) || (!SKETCH_IS_WIDE(s) && c > PG_UINT32_MAX))
	{
		int			cap = SKETCH_CAP(s);

		if (s->nbins == cap)
			cap = Min(Max(cap * 2, SKETCH_INITIAL_CAP), 2 * SKETCH_MAX_BINS + 1);
		s = sk_resize(s, cap, SKETCH_IS_WIDE(s) || c > PG_UINT32_MAX);
	}
	o = SKETCH_ORDS(s);
	memmove(o + i + 1, o + i, sizeof(int32) * tail);
	o[i] = ord;
	if (SKETCH_IS_WIDE(s))
	{
		memmove(sk_counts64(s) + i + 1, sk_counts64(s) + i, sizeof(uint64) * tail);
		sk_counts64(s)[i] = c;
	}
	else
	{
		memmove(sk_counts32(s) + i + 1, sk_counts32(s) + i, sizeof(uint32) * tail);
		sk_counts32(s)[i] = (uint32) c;
	}
	s->nbins++;
	return s;
}

/*
 * Add c values to the bin ord of s, collapsing when the sign's bins are
 * full (see the file header).  Returns s, or a bigger copy of it.
 */
static Sketch *
sk_add_bin(Sketch *s, int32 ord, uint64 c)
{
	int32	   *o = SKETCH_ORDS(s);
	int			i = sk_lower_bound(s, ord);

	if (i < s->nbins && o[i] == ord)
		return sk_add_at(s, i, c);
	if (ord > 0)
	{
		int			first_pos = sk_lower_bound(s, 1);

		if (s->nbins - first_pos >= SKETCH_MAX_BINS)
		{
			uint64		mass;

			if (ord < o[first_pos])
				return sk_add_at(s, first_pos, c);
			/* drop the lowest bin, insert, give its count to the new lowest */
			mass = exp_sketch_count(s, first_pos);
			sk_remove_at(s, first_pos);
			s = sk_insert_at(s, i - 1, ord, c);
			return sk_add_at(s, first_pos, mass);
		}
	}
	else if (ord < 0)
	{
		int			nneg = sk_lower_bound(s, 0);

		if (nneg >= SKETCH_MAX_BINS)
		{
			uint64		mass;

			if (ord > o[nneg - 1])
				return sk_add_at(s, nneg - 1, c);
			mass = exp_sketch_count(s, nneg - 1);
			sk_remove_at(s, nneg - 1);
			s = sk_insert_at(s, i, ord, c);
			return sk_add_at(s, nneg - 1, mass);
		}
	}
	return sk_insert_at(s, i, ord, c);
}

/* one finite value x (not -0) added to s: min, max and its bin; returns s or a bigger copy */
static Sketch *
sk_add_value(Sketch *s, double x)
{
	if (x < s->min)
		s->min = x;
	if (x > s->max)
		s->max = x;
	return sk_add_bin(s, sk_ord(x), 1);
}

/* merge b into a (a may be changed in place); returns the result */
static Sketch *
sk_merge_into(Sketch *a, const Sketch *b)
{
	int			i;

	if ((uint64) exp_sketch_n(a) + (uint64) exp_sketch_n(b) > (uint64) PG_INT64_MAX)
		sk_count_overflow();
	if (b->nbins > SKETCH_SMALL_MERGE)
		return sk_merge_linear(a, b);
	for (i = 0; i < b->nbins; i++)
		a = sk_add_bin(a, SKETCH_ORDS((Sketch *) b)[i], exp_sketch_count(b, i));
	a->min = Min(a->min, b->min);
	a->max = Max(a->max, b->max);
	return a;
}

/* a copy without spare capacity */
static Sketch *
sk_trim(const Sketch *s)
{
	bool		wide = false;
	int			i;

	for (i = 0; i < s->nbins && SKETCH_IS_WIDE(s); i++)
		if (exp_sketch_count(s, i) > PG_UINT32_MAX)
			wide = true;
	return sk_resize(s, s->nbins, wide);
}

/* ---------- validation ---------- */

/*
 * Check everything a value read from outside must satisfy; errcode_ is
 * 22P02 for the text form and 22P03 for the binary one.
 */
static void
sk_validate(const SketchBins *b, int errcode_)
{
	int32		kmin = sk_key_min(),
				kmax = sk_key_max();
	int			nneg = 0,
				npos = 0,
				i;
	uint64		n = 0;

	if (b->nbins < 1)
		ereport(ERROR,
				(errcode(errcode_),
				 errmsg("experiment.sketch must hold at least one value")));
	if (!isfinite(b->min) || !isfinite(b->max))
		ereport(ERROR,
				(errcode(errcode_),
				 errmsg("experiment.sketch min and max must be finite")));
	if (b->min > b->max)
		ereport(ERROR,
				(errcode(errcode_),
				 errmsg("experiment.sketch min must not exceed max")));
	for (i = 0; i < b->nbins; i++)
	{
		int32		ord = b->ords[i];

		if (b->counts[i] == 0)
			ereport(ERROR,
					(errcode(errcode_),
					 errmsg("experiment.sketch bin counts must be positive")));
		if (n > PG_INT64_MAX - b->counts[i] || b->counts[i] > (uint64) PG_INT64_MAX)
			ereport(ERROR,
					(errcode(errcode_),
					 errmsg("experiment.sketch count out of range")));
		n += b->counts[i];
		if (i > 0 && b->ords[i - 1] >= ord)
			ereport(ERROR,
					(errcode(errcode_),
					 errmsg("experiment.sketch bin indexes must be strictly increasing and not repeated")));
		if (ord != 0)
		{
			int32		k = (ord > 0 ? ord : -ord) - SKETCH_ORD_OFFSET;

			if (k < kmin || k > kmax)
				ereport(ERROR,
						(errcode(errcode_),
						 errmsg("experiment.sketch bin index %d is outside [%d, %d]", k, kmin, kmax)));
			if (ord > 0)
				npos++;
			else
				nneg++;
		}
	}
	if (npos > SKETCH_MAX_BINS || nneg > SKETCH_MAX_BINS)
		ereport(ERROR,
				(errcode(errcode_),
				 errmsg("experiment.sketch holds at most %d bins per sign", SKETCH_MAX_BINS)));
	/*
	 * min and max must lie in the extreme bins; a bin of lowest magnitude
	 * may have absorbed the collapsed ones, so only the bins of highest
	 * magnitude (most negative, most positive) are exact.
	 */
	if (sk_ord(b->min) > b->ords[0] || (b->min < 0 && sk_ord(b->min) != b->ords[0]) ||
		sk_ord(b->max) < b->ords[b->nbins - 1] ||
		(b->max > 0 && sk_ord(b->max) != b->ords[b->nbins - 1]))
		ereport(ERROR,
				(errcode(errcode_),
				 errmsg("experiment.sketch min and max must lie in its lowest and highest bins")));
}

/* ---------- text input ---------- */

typedef struct SketchParser
{
	const char *start;
	const char *p;
} SketchParser;

pg_noreturn static void
sp_error(SketchParser *ps, const char *expected)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_TEXT_REPRESENTATION),
			 errmsg("invalid input syntax for type experiment.sketch: \"%s\"",
					exp_message_clip(ps->start, (int) strlen(ps->start))),
			 errdetail("Expected %s at character %d.", expected, (int) (ps->p - ps->start) + 1),
			 errhint("The form is {\"version\":1,\"alpha\":0.005,\"n\":N,\"min\":X,\"max\":Y,"
					 "\"negative\":[[k,count],...],\"zero\":count,\"positive\":[[k,count],...]}.")));
}

static void
sp_ws(SketchParser *ps)
{
	while (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\n' || *ps->p == '\r')
		ps->p++;
}

static void
sp_expect(SketchParser *ps, char c)
{
	char		what[4] = {'"', c, '"', 0};

	sp_ws(ps);
	if (*ps->p != c)
		sp_error(ps, what);
	ps->p++;
}

static bool
sp_peek(SketchParser *ps, char c)
{
	sp_ws(ps);
	return *ps->p == c;
}

/* "key": */
static void
sp_key(SketchParser *ps, const char *key)
{
	size_t		len = strlen(key);

	sp_ws(ps);
	if (ps->p[0] != '"' || strncmp(ps->p + 1, key, len) != 0 || ps->p[len + 1] != '"')
		sp_error(ps, psprintf("the key \"%s\"", key));
	ps->p += len + 2;
	sp_expect(ps, ':');
}

/* a JSON number as the nearest double: finite, not underflowing to 0 */
static double
sp_number(SketchParser *ps)
{
	const char *q = ps->p;
	const char *s;
	bool		nonzero = false;
	char	   *copy,
			   *end;
	double		v;

	sp_ws(ps);
	q = s = ps->p;
	if (*q == '-')
		q++;
	if (*q == '0')
		q++;
	else if (*q >= '1' && *q <= '9')
		while (isdigit((unsigned char) *q))
			q++;
	else
		sp_error(ps, "a JSON number");
	if (*q == '.')
	{
		q++;
		if (!isdigit((unsigned char) *q))
			sp_error(ps, "a JSON number");
		while (isdigit((unsigned char) *q))
			q++;
	}
	if (*q == 'e' || *q == 'E')
	{
		q++;
		if (*q == '+' || *q == '-')
			q++;
		if (!isdigit((unsigned char) *q))
			sp_error(ps, "a JSON number");
		while (isdigit((unsigned char) *q))
			q++;
	}
	if (isalnum((unsigned char) *q) || *q == '.' || *q == '+' || *q == '-')
		sp_error(ps, "a JSON number");
	copy = pnstrdup(s, q - s);
	v = strtod(copy, &end);
	if (*end != '\0')
		sp_error(ps, "a JSON number");
	if (!isfinite(v))
		sp_error(ps, "a finite number");
	for (end = copy; *end && *end != 'e' && *end != 'E'; end++)
		if (*end >= '1' && *end <= '9')
			nonzero = true;
	if (v == 0 && nonzero)
		sp_error(ps, "a number within the range of double precision");
	pfree(copy);
	ps->p = q;
	return v == 0 ? 0.0 : v;	/* -0 is 0 */
}

/* a JSON integer (optionally negative when allow_negative), exactly */
static int64
sp_integer(SketchParser *ps, bool allow_negative, const char *what)
{
	bool		neg = false;
	uint64		v = 0;
	const char *q;

	sp_ws(ps);
	q = ps->p;
	if (*q == '-' && allow_negative)
	{
		neg = true;
		q++;
	}
	if (!isdigit((unsigned char) *q) || (*q == '0' && isdigit((unsigned char) q[1])))
		sp_error(ps, what);
	while (isdigit((unsigned char) *q))
	{
		int			d = *q - '0';

		if (v > ((uint64) PG_INT64_MAX - d) / 10)
			sp_error(ps, psprintf("%s of at most " INT64_FORMAT, what, PG_INT64_MAX));
		v = v * 10 + d;
		q++;
	}
	if (isalnum((unsigned char) *q) || *q == '.' || *q == '+' || *q == '-')
		sp_error(ps, what);
	ps->p = q;
	return neg ? -(int64) v : (int64) v;
}

/* [[k, count], ...] into b (sign +1 or -1), bins in increasing k */
static void
sp_bins(SketchParser *ps, SketchBins *b, int sign, int *cap)
{
	int32		kmin = sk_key_min(),
				kmax = sk_key_max();
	int			first = b->nbins;

	sp_expect(ps, '[');
	if (sp_peek(ps, ']'))
	{
		ps->p++;
		return;
	}
	for (;;)
	{
		int64		k,
					c;

		sp_expect(ps, '[');
		k = sp_integer(ps, true, "a bin index (a JSON integer)");
		if (k < kmin || k > kmax)
			sp_error(ps, psprintf("a bin index in [%d, %d]", kmin, kmax));
		sp_expect(ps, ',');
		c = sp_integer(ps, false, "a positive count (a JSON integer)");
		if (c < 1)
			sp_error(ps, "a positive count (a JSON integer)");
		sp_expect(ps, ']');
		if (b->nbins - first >= SKETCH_MAX_BINS)
			sp_error(ps, psprintf("at most %d bins per sign", SKETCH_MAX_BINS));
		if (b->nbins == *cap)
		{
			*cap *= 2;
			b->ords = repalloc(b->ords, sizeof(int32) * *cap);
			b->counts = repalloc(b->counts, sizeof(uint64) * *cap);
		}
		b->ords[b->nbins] = sign * (SKETCH_ORD_OFFSET + (int32) k);
		b->counts[b->nbins++] = (uint64) c;
		if (sp_peek(ps, ','))
		{
			ps->p++;
			continue;
		}
		sp_expect(ps, ']');
		break;
	}
	if (sign < 0)
	{
		/* listed in increasing k: reverse into increasing ord */
		int			i,
					j;

		for (i = first, j = b->nbins - 1; i < j; i++, j--)
		{
			int32		o = b->ords[i];
			uint64		c = b->counts[i];

			b->ords[i] = b->ords[j];
			b->counts[i] = b->counts[j];
			b->ords[j] = o;
			b->counts[j] = c;
		}
	}
}

/*
 * exp_sketch_in: text form -> experiment.sketch, validated.  The keys come
 * in the documented order, with any JSON whitespace between tokens.
 */
PG_FUNCTION_INFO_V1(exp_sketch_in);
Datum
exp_sketch_in(PG_FUNCTION_ARGS)
{
	char	   *str = PG_GETARG_CSTRING(0);
	SketchParser ps = {str, str};
	SketchBins	b;
	int			cap = 16;
	int64		version,
				n,
				zero;
	double		alpha;
	uint64		total = 0;
	int			i;

	sk_init_mapping();
	sk_bins_alloc(&b, cap);
	sp_expect(&ps, '{');
	sp_key(&ps, "version");
	version = sp_integer(&ps, false, "a version number");
	if (version != SKETCH_VERSION)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_TEXT_REPRESENTATION),
				 errmsg("unsupported experiment.sketch version " INT64_FORMAT, version),
				 errhint("This build reads version %d.", SKETCH_VERSION)));
	sp_expect(&ps, ',');
	sp_key(&ps, "alpha");
	alpha = sp_number(&ps);
	if (alpha != SKETCH_ALPHA)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_TEXT_REPRESENTATION),
				 errmsg("experiment.sketch alpha must be 0.005, not %g", alpha)));
	sp_expect(&ps, ',');
	sp_key(&ps, "n");
	n = sp_integer(&ps, false, "a positive whole count");
	sp_expect(&ps, ',');
	sp_key(&ps, "min");
	b.min = sp_number(&ps);
	sp_expect(&ps, ',');
	sp_key(&ps, "max");
	b.max = sp_number(&ps);
	sp_expect(&ps, ',');
	sp_key(&ps, "negative");
	sp_bins(&ps, &b, -1, &cap);
	sp_expect(&ps, ',');
	sp_key(&ps, "zero");
	zero = sp_integer(&ps, false, "a count (a JSON integer)");
	if (zero > 0)
	{
		if (b.nbins == cap)
		{
			cap *= 2;
			b.ords = repalloc(b.ords, sizeof(int32) * cap);
			b.counts = repalloc(b.counts, sizeof(uint64) * cap);
		}
		b.ords[b.nbins] = 0;
		b.counts[b.nbins++] = (uint64) zero;
	}
	sp_expect(&ps, ',');
	sp_key(&ps, "positive");
	sp_bins(&ps, &b, 1, &cap);
	sp_expect(&ps, '}');
	sp_ws(&ps);
	if (*ps.p != '\0')
		sp_error(&ps, "end of input");

	sk_validate(&b, ERRCODE_INVALID_TEXT_REPRESENTATION);
	for (i = 0; i < b.nbins; i++)
		total += b.counts[i];
	if (total != (uint64) n)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_TEXT_REPRESENTATION),
				 errmsg("experiment.sketch n is " INT64_FORMAT " but its bins hold " UINT64_FORMAT " values",
						n, total)));
	PG_RETURN_SKETCH_P(sk_from_bins(&b));
}

/* ---------- text output ---------- */

static void
append_float8(StringInfo buf, double v)
{
	char		tmp[DOUBLE_SHORTEST_DECIMAL_LEN];

	double_to_shortest_decimal_buf(v, tmp);
	appendStringInfoString(buf, tmp);
}

/*
 * exp_sketch_out: experiment.sketch -> its JSON text form.
 */
PG_FUNCTION_INFO_V1(exp_sketch_out);
Datum
exp_sketch_out(PG_FUNCTION_ARGS)
{
	Sketch	   *s = PG_GETARG_SKETCH_P(0);
	int32	   *o = SKETCH_ORDS(s);
	StringInfoData buf;
	int			nneg,
				i;
	uint64		zero = 0;
	bool		first;

	initStringInfo(&buf);
	appendStringInfo(&buf, "{\"version\":%d,\"alpha\":0.005,\"n\":" INT64_FORMAT ",\"min\":",
					 s->version, exp_sketch_n(s));
	append_float8(&buf, s->min);
	appendStringInfoString(&buf, ",\"max\":");
	append_float8(&buf, s->max);
	appendStringInfoString(&buf, ",\"negative\":[");
	for (nneg = 0; nneg < s->nbins && o[nneg] < 0; nneg++)
		;
	for (i = nneg - 1; i >= 0; i--)
		appendStringInfo(&buf, "%s[%d," UINT64_FORMAT "]", i == nneg - 1 ? "" : ",",
						 -o[i] - SKETCH_ORD_OFFSET, exp_sketch_count(s, i));
	i = nneg;
	if (i < s->nbins && o[i] == 0)
		zero = exp_sketch_count(s, i++);
	appendStringInfo(&buf, "],\"zero\":" UINT64_FORMAT ",\"positive\":[", zero);
	for (first = true; i < s->nbins; i++, first = false)
		appendStringInfo(&buf, "%s[%d," UINT64_FORMAT "]", first ? "" : ",",
						 o[i] - SKETCH_ORD_OFFSET, exp_sketch_count(s, i));
	appendStringInfoString(&buf, "]}");
	PG_RETURN_CSTRING(buf.data);
}

/* ---------- binary I/O ---------- */

/*
 * exp_sketch_recv: binary form -> experiment.sketch, validated as strictly
 * as the text form.  Layout: version (1 byte), min, max (float8), then the
 * number of bins (int4) and per bin its ord (int4, sketch.h) and count
 * (int8), in increasing ord; nothing may follow.  Errors are 22P03.
 */
PG_FUNCTION_INFO_V1(exp_sketch_recv);
Datum
exp_sketch_recv(PG_FUNCTION_ARGS)
{
	StringInfo	buf = (StringInfo) PG_GETARG_POINTER(0);
	SketchBins	b;
	int			version,
				nbins,
				i;

	sk_init_mapping();
	if (buf->len - buf->cursor < 1 + 8 + 8 + 4)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_BINARY_REPRESENTATION),
				 errmsg("experiment.sketch binary value too short: %d bytes", buf->len - buf->cursor)));
	version = pq_getmsgbyte(buf);
	if (version != SKETCH_VERSION)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_BINARY_REPRESENTATION),
				 errmsg("unsupported experiment.sketch version %d", version),
				 errhint("This build reads version %d.", SKETCH_VERSION)));
	b.min = pq_getmsgfloat8(buf);
	b.max = pq_getmsgfloat8(buf);
	nbins = pq_getmsgint(buf, 4);
	if (nbins < 1 || nbins > 2 * SKETCH_MAX_BINS + 1 || buf->len - buf->cursor != nbins * 12)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_BINARY_REPRESENTATION),
				 errmsg("experiment.sketch binary value has %d bytes of bins, not 12 for each of %d bins (1 to %d)",
						buf->len - buf->cursor, nbins, 2 * SKETCH_MAX_BINS + 1)));
	sk_bins_alloc(&b, nbins);
	b.nbins = nbins;
	for (i = 0; i < nbins; i++)
	{
		int64		c;

		b.ords[i] = pq_getmsgint(buf, 4);
		c = pq_getmsgint64(buf);
		if (c < 1)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_BINARY_REPRESENTATION),
					 errmsg("experiment.sketch bin counts must be positive")));
		b.counts[i] = (uint64) c;
	}
	pq_getmsgend(buf);
	if (b.min == 0)
		b.min = 0.0;
	if (b.max == 0)
		b.max = 0.0;
	sk_validate(&b, ERRCODE_INVALID_BINARY_REPRESENTATION);
	PG_RETURN_SKETCH_P(sk_from_bins(&b));
}

/*
 * exp_sketch_send: experiment.sketch -> binary form.
 */
PG_FUNCTION_INFO_V1(exp_sketch_send);
Datum
exp_sketch_send(PG_FUNCTION_ARGS)
{
	Sketch	   *s = PG_GETARG_SKETCH_P(0);
	StringInfoData buf;
	int			i;

	pq_begintypsend(&buf);
	pq_sendbyte(&buf, s->version);
	pq_sendfloat8(&buf, s->min);
	pq_sendfloat8(&buf, s->max);
	pq_sendint32(&buf, s->nbins);
	for (i = 0; i < s->nbins; i++)
	{
		pq_sendint32(&buf, SKETCH_ORDS(s)[i]);
		pq_sendint64(&buf, (int64) exp_sketch_count(s, i));
	}
	PG_RETURN_BYTEA_P(pq_endtypsend(&buf));
}

/* ---------- equality ---------- */

static bool
sk_equal(const Sketch *a, const Sketch *b)
{
	int			i;

	if (a->nbins != b->nbins || a->min != b->min || a->max != b->max)
		return false;
	for (i = 0; i < a->nbins; i++)
		if (SKETCH_ORDS((Sketch *) a)[i] != SKETCH_ORDS((Sketch *) b)[i] ||
			exp_sketch_count(a, i) != exp_sketch_count(b, i))
			return false;
	return true;
}

/*
 * exp_sketch_eq: the same bins, counts, min and max.
 */
PG_FUNCTION_INFO_V1(exp_sketch_eq);
Datum
exp_sketch_eq(PG_FUNCTION_ARGS)
{
	PG_RETURN_BOOL(sk_equal(PG_GETARG_SKETCH_P(0), PG_GETARG_SKETCH_P(1)));
}

/*
 * exp_sketch_ne: negation of exp_sketch_eq.
 */
PG_FUNCTION_INFO_V1(exp_sketch_ne);
Datum
exp_sketch_ne(PG_FUNCTION_ARGS)
{
	PG_RETURN_BOOL(!sk_equal(PG_GETARG_SKETCH_P(0), PG_GETARG_SKETCH_P(1)));
}

/* ---------- aggregates ---------- */

/*
 * The state argument of a transition or combine function called as an
 * aggregate, to be updated in place: our own states are never toasted; a
 * stored value that became the state of merge() may be, and is then
 * detoasted into a fresh copy.
 */
static inline Sketch *
sk_state(FunctionCallInfo fcinfo)
{
	Pointer		p = DatumGetPointer(PG_GETARG_DATUM(0));

	if (unlikely(VARATT_IS_EXTENDED(p)))
		return PG_GETARG_SKETCH_P(0);
	return (Sketch *) p;
}

/*
 * exp_sketch_accum(state, value): transition of experiment.sketch(value).
 * NULL values are skipped; NaN and infinities are errors.  Called as an
 * aggregate it updates the state in place; when the state must grow, the
 * bigger copy is allocated in the current (per-row) context and returned:
 * the executor copies it into the aggregate's context and frees the old
 * state.
 */
PG_FUNCTION_INFO_V1(exp_sketch_accum);
Datum
exp_sketch_accum(PG_FUNCTION_ARGS)
{
	double		x;
	Sketch	   *s;

	if (PG_ARGISNULL(1))
	{
		if (PG_ARGISNULL(0))
			PG_RETURN_NULL();
		PG_RETURN_DATUM(PG_GETARG_DATUM(0));
	}
	x = PG_GETARG_FLOAT8(1);
	if (unlikely(!isfinite(x)))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("experiment.sketch cannot accumulate value = %s",
						isnan(x) ? "NaN" : (x > 0 ? "Infinity" : "-Infinity")),
				 errhint("Filter out or replace non-finite values before aggregating.")));
	if (x == 0)
		x = 0.0;				/* -0 is 0 */
	sk_init_mapping();

	if (PG_ARGISNULL(0))
	{
		s = sk_alloc(SKETCH_INITIAL_CAP, false);
		s->min = s->max = x;
		SKETCH_ORDS(s)[0] = sk_ord(x);
		sk_counts32(s)[0] = 1;
		s->nbins = 1;
		PG_RETURN_SKETCH_P(s);
	}
	if (AggCheckCallContext(fcinfo, NULL))
		s = sk_state(fcinfo);
	else
	{
		Sketch	   *in = PG_GETARG_SKETCH_P(0);

		s = sk_resize(in, in->nbins, SKETCH_IS_WIDE(in));
	}
	PG_RETURN_SKETCH_P(sk_add_value(s, x));
}

/*
 * exp_sketch_combine(a, b): combine function of the sketch aggregates and
 * transition function of experiment.merge(sketch).  Strict: the executor
 * handles NULL states.  Updates a in place when called as an aggregate,
 * never modifies b.
 */
PG_FUNCTION_INFO_V1(exp_sketch_combine);
Datum
exp_sketch_combine(PG_FUNCTION_ARGS)
{
	Sketch	   *a;
	Sketch	   *b = PG_GETARG_SKETCH_P(1);

	sk_init_mapping();
	if (AggCheckCallContext(fcinfo, NULL))
		a = sk_state(fcinfo);
	else
	{
		Sketch	   *in = PG_GETARG_SKETCH_P(0);

		a = sk_resize(in, in->nbins, SKETCH_IS_WIDE(in));
	}
	PG_RETURN_SKETCH_P(sk_merge_into(a, b));
}

/*
 * exp_sketch_final(state): final function of the sketch aggregates: the
 * state without its spare capacity.
 */
PG_FUNCTION_INFO_V1(exp_sketch_final);
Datum
exp_sketch_final(PG_FUNCTION_ARGS)
{
	PG_RETURN_SKETCH_P(sk_trim(PG_GETARG_SKETCH_P(0)));
}

/*
 * exp_sketch_merge(a, b): the sketch of the union of both samples (also
 * operator +).
 */
PG_FUNCTION_INFO_V1(exp_sketch_merge);
Datum
exp_sketch_merge(PG_FUNCTION_ARGS)
{
	Sketch	   *a = PG_GETARG_SKETCH_P(0);
	Sketch	   *b = PG_GETARG_SKETCH_P(1);

	sk_init_mapping();
	PG_RETURN_SKETCH_P(sk_trim(sk_merge_into(sk_resize(a, a->nbins, SKETCH_IS_WIDE(a)), b)));
}

/* ---------- for the other files (experiment.h) ---------- */

/* the OID of type experiment.sketch */
Oid
exp_sketch_type_oid(void)
{
	Oid			nsp = get_namespace_oid("experiment", false);
	Oid			typ = GetSysCacheOid2(TYPENAMENSP, Anum_pg_type_oid,
									  CStringGetDatum("sketch"),
									  ObjectIdGetDatum(nsp));

	if (!OidIsValid(typ))
		elog(ERROR, "type experiment.sketch does not exist");
	return typ;
}

/*
 * A new sketch of n > 0 finite values, equal to what experiment.sketch()
 * aggregates from them (source_unit_values() makes one per unit).
 */
Datum
exp_sketch_from_values(const double *vals, int64 n)
{
	Sketch	   *s;
	int64		i;

	Assert(n > 0);
	sk_init_mapping();
	s = sk_alloc(SKETCH_INITIAL_CAP, false);
	s->nbins = 0;
	s->min = get_float8_infinity();
	s->max = -get_float8_infinity();
	for (i = 0; i < n; i++)
	{
		double		x = vals[i] == 0 ? 0.0 : vals[i];	/* -0 is 0 */

		if (unlikely(!isfinite(x)))
			elog(ERROR, "a sketch of a non-finite value");
		s = sk_add_value(s, x);
	}
	return SketchPGetDatum(sk_trim(s));
}

/* ---------- accessors ---------- */

/*
 * The quantile of probability q in [0, 1]: the value of rank floor(q (n -
 * 1)) (0-based) of the sorted sample, numpy's quantile(method='lower'),
 * within alpha (relative).  The smallest and largest ranks give min and
 * max exactly; every other value is its bin's representative, clamped into
 * [min, max].
 */
double
exp_sketch_quantile(const Sketch *s, double q)
{
	int64		n = exp_sketch_n(s);
	uint64		r,
				cum = 0;
	int			i;

	sk_init_mapping();
	r = (uint64) floor(q * (double) (n - 1));
	if (r > (uint64) (n - 1))
		r = n - 1;
	if (r == 0)
		return s->min;
	if (r == (uint64) (n - 1))
		return s->max;
	for (i = 0; i < s->nbins; i++)
	{
		cum += exp_sketch_count(s, i);
		if (cum > r)
		{
			double		v = sk_ord_value(SKETCH_ORDS((Sketch *) s)[i]);

			return Max(s->min, Min(s->max, v));
		}
	}
	return s->max;
}

/*
 * The estimated number of values <= x: the counts of the bins up to and
 * including the bin of x (every value in x's bin counts).
 */
double
exp_sketch_rank(const Sketch *s, double x)
{
	int32		ord;
	uint64		cum = 0;
	int			i;

	sk_init_mapping();
	if (x == get_float8_infinity())
		return (double) exp_sketch_n(s);
	if (x == -get_float8_infinity())
		return 0;
	ord = sk_ord(x);
	for (i = 0; i < s->nbins && SKETCH_ORDS((Sketch *) s)[i] <= ord; i++)
		cum += exp_sketch_count(s, i);
	return (double) cum;
}

/*
 * exp_sketch_n_fn(s): the number of values.
 */
PG_FUNCTION_INFO_V1(exp_sketch_n_fn);
Datum
exp_sketch_n_fn(PG_FUNCTION_ARGS)
{
	PG_RETURN_INT64(exp_sketch_n(PG_GETARG_SKETCH_P(0)));
}

/*
 * exp_sketch_quantile_fn(s, q): the quantile of probability q.
 */
PG_FUNCTION_INFO_V1(exp_sketch_quantile_fn);
Datum
exp_sketch_quantile_fn(PG_FUNCTION_ARGS)
{
	double		q = PG_GETARG_FLOAT8(1);

	if (!(q >= 0 && q <= 1))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("q must be in [0, 1], got %g", q),
				 errhint("q is the probability of the quantile, e.g. 0.99 for the 99th percentile.")));
	PG_RETURN_FLOAT8(exp_sketch_quantile(PG_GETARG_SKETCH_P(0), q));
}

/*
 * exp_sketch_rank_fn(s, x): the estimated number of values <= x.
 */
PG_FUNCTION_INFO_V1(exp_sketch_rank_fn);
Datum
exp_sketch_rank_fn(PG_FUNCTION_ARGS)
{
	double		x = PG_GETARG_FLOAT8(1);

	if (isnan(x))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("x must not be NaN"),
				 errhint("x is a value; rank gives the number of values at or below it.")));
	PG_RETURN_FLOAT8(exp_sketch_rank(PG_GETARG_SKETCH_P(0), x));
}
