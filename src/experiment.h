/*-------------------------------------------------------------------------
 *
 * experiment.h
 *	  Shared declarations of the experiment extension: the stored
 *	  experiment.moments type, its access macros and helpers.
 *
 *-------------------------------------------------------------------------
 */
#ifndef EXPERIMENT_H
#define EXPERIMENT_H

#include "postgres.h"
#include "fmgr.h"

/* PostgreSQL 18 spells it pg_noreturn; earlier releases have none */
#ifndef pg_noreturn
#define pg_noreturn __attribute__((noreturn))
#endif

/*
 * experiment.moments: the count, the means and the co-moment matrix of 1, 2
 * or 4 variables (the sufficient statistics of the mean tests, CUPED and
 * ratio metrics).  Stored as a varlena of fixed size for a given number of
 * variables:
 *
 *	data[0 .. k-1]			means
 *	data[k .. k+k(k+1)/2-1]	co-moments C_ij = sum (x_i - mean_i)(x_j - mean_j),
 *							upper triangle, row by row (see MOMENTS_CIDX)
 *
 * Updated and merged with the Youngs-Cramer / Chan formulas, never with raw
 * sums of squares.  n = 0 is the empty value (identity of the merge); the
 * aggregates return NULL rather than an empty value when they see no rows.
 */
#define MOMENTS_VERSION 1
#define MOMENTS_MAX_VARS 4

typedef struct Moments
{
	int32		vl_len_;		/* varlena header (do not touch directly!) */
	uint8		version;		/* MOMENTS_VERSION */
	uint8		nvars;			/* 1, 2 or 4 */
	uint16		flags;			/* reserved, must be 0 */
	int64		n;				/* number of observations */
	float8		data[FLEXIBLE_ARRAY_MEMBER];
} Moments;

#define MOMENTS_NCOMOMENTS(k)	((k) * ((k) + 1) / 2)
#define MOMENTS_NDATA(k)		((k) + MOMENTS_NCOMOMENTS(k))
#define MOMENTS_SIZE(k)			(offsetof(Moments, data) + sizeof(float8) * MOMENTS_NDATA(k))
#define MOMENTS_MEAN(m, i)		((m)->data[(i)])
/* index of co-moment (i, j), 0 <= i <= j < k, in the upper triangle */
#define MOMENTS_CIDX(k, i, j)	((k) + (i) * (k) - (i) * ((i) - 1) / 2 + ((j) - (i)))
#define MOMENTS_COM(m, i, j) \
	((m)->data[(i) <= (j) ? MOMENTS_CIDX((m)->nvars, (i), (j)) : MOMENTS_CIDX((m)->nvars, (j), (i))])

#define DatumGetMomentsP(X)		((Moments *) PG_DETOAST_DATUM(X))
#define DatumGetMomentsPCopy(X)	((Moments *) PG_DETOAST_DATUM_COPY(X))
#define MomentsPGetDatum(X)		PointerGetDatum(X)
#define PG_GETARG_MOMENTS_P(n)	DatumGetMomentsP(PG_GETARG_DATUM(n))
#define PG_GETARG_MOMENTS_P_COPY(n) DatumGetMomentsPCopy(PG_GETARG_DATUM(n))
#define PG_RETURN_MOMENTS_P(x)	PG_RETURN_POINTER(x)

/* moments.c */
extern Moments *exp_moments_new(int nvars);
extern Moments *exp_moments_copy(const Moments *m);
extern void exp_moments_merge_into(Moments *a, const Moments *b);
extern void exp_moments_check_finite(const Moments *m, const char *what);
extern double exp_moments_variance(const Moments *m, int i);	/* sample variance, NaN if n < 2 */
extern double exp_moments_covariance(const Moments *m, int i, int j);
extern Oid	exp_moments_type_oid(void);

/* sketch.c: the experiment.sketch type's OID, and a new sketch of n values (n > 0) */
extern Oid	exp_sketch_type_oid(void);
extern Datum exp_sketch_from_values(const double *vals, int64 n);

/* stats.c: the inference shared by every test (doc/statistics.md, "Inference") */
typedef enum
{
	ALT_TWO_SIDED,
	ALT_GREATER,
	ALT_LESS
} Alternative;

/*
 * The smallest alpha (and power) accepted: below it the normal and t
 * quantiles are no longer representable; the range is [1e-300, 1).
 */
#define EXP_MIN_PROBABILITY 1e-300

extern Alternative exp_parse_alternative(const char *s);

/*
 * An estimate of a two-arm test: what every test function computes before
 * the shared inference turns it into an experiment.test_result
 * (exp_test_result_datum: intervals and p-values of the difference and the
 * lift under the alpha, alternative and sequential tuning).
 */
typedef struct Estimate
{
	int64		n_c;
	int64		n_t;
	double		mean_c;
	double		mean_t;
	double		diff;			/* treatment - control */
	double		diff_se;		/* standard error of diff */
	double		null_se;		/* standard error of diff under H0 for the
								 * fixed-horizon statistic (pooled for
								 * proportions); NaN: diff_se */
	double		lift;			/* diff / |mean_c| */
	double		lift_se;		/* delta-method standard error of lift */
	double		df;				/* reference t distribution; NaN: normal */
} Estimate;

/* the inference applied to an estimate (doc/statistics.md, "Inference") */
typedef struct Inference
{
	double		alpha;
	Alternative alternative;
	double		tuning;			/* sequential tuning N*; NaN: fixed horizon */
} Inference;

/* alpha, alternative, sequential_tuning at argument positions first..first+2; false: a NULL makes the test NULL */
extern bool exp_get_inference(FunctionCallInfo fcinfo, int first, Inference *inf);
extern void exp_estimate_init(Estimate *e, int64 n_c, int64 n_t);
extern Datum exp_test_result_datum(FunctionCallInfo fcinfo, const Estimate *e, const Inference *inf);
extern void exp_check_tuning(double tuning);
extern double exp_seq_halfwidth(double se, double n, double alpha, double tuning, bool two_sided);

/*
 * message.c: what an error message may echo of an input, at most this many
 * bytes (cut on a character boundary, "..." appended)
 */
#define EXP_MESSAGE_ECHO_MAX 200

/* experiment.refresh_memory (kB; 0: no bound), gsl_support.c */
extern int	exp_refresh_memory_kb;

extern char *exp_message_clip(const char *s, int len);
extern char *exp_message_clip_text(const text *t);

#endif							/* EXPERIMENT_H */
