/*-------------------------------------------------------------------------
 *
 * power.c
 *	  Sample size, minimum detectable effect and power of a two-arm test.
 *
 * For a binary metric with baseline rate p1 and p2 = p1 + mde the units
 * per variant are (Fleiss, Levin and Paik, "Statistical Methods for Rates
 * and Proportions", 3rd ed. 2003, ch. 4, without continuity correction)
 *
 *	n = ceil( (z_{1-alpha/2} sqrt(2 pbar (1 - pbar))
 *			   + z_power sqrt(p1 (1 - p1) + p2 (1 - p2)))^2 / (p2 - p1)^2 ),
 *	pbar = (p1 + p2) / 2,
 *
 * and for a mean with standard deviation sigma
 *
 *	n = ceil( 2 sigma^2 (z_{1-alpha/2} + z_power)^2 / mde^2 ).
 *
 * mde() and power() solve the same equation (before rounding up) for the
 * effect and for the power, so that the three are consistent inverses.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <math.h>

#include <gsl/gsl_cdf.h>

#include "utils/float.h"

#include "experiment.h"

/*
 * alpha and power: in [EXP_MIN_PROBABILITY, 1), as alpha everywhere else
 * (a smaller value has no representable normal quantile worth planning for)
 */
static void
check_probability(double v, const char *argname)
{
	if (!(v >= EXP_MIN_PROBABILITY && v < 1))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must be in [1e-300, 1), got %g", argname, v),
				 v >= 1 && v <= 100 ?
				 errhint("%s is a proportion: write 0.80 for 80%%.", argname) : 0));
}

static void
check_open_unit(double v, const char *argname)
{
	if (!(v > 0 && v < 1))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must be in (0, 1), got %g", argname, v),
				 v >= 1 && v <= 100 ?
				 errhint("%s is a proportion: write 0.60 for 60%%.", argname) : 0));
}

static void
check_mde(double baseline, double mde)
{
	if (mde == 0 || !isfinite(mde))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("mde must be a non-zero finite number, got %g", mde)));
	if (!(baseline + mde > 0 && baseline + mde < 1))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("baseline + mde must be in (0, 1), got %g", baseline + mde),
				 errhint("mde is the absolute difference of the rates, e.g. 0.02 for 10%% -> 12%%.")));
}

static void
check_n(int64 n)
{
	if (n <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("n_per_variant must be positive, got " INT64_FORMAT, n)));
}

/* sqrt(2 pbar (1 - pbar)) and sqrt(p1 (1 - p1) + p2 (1 - p2)) */
static void
prop_sds(double p1, double d, double *sd0, double *sd1)
{
	double		p2 = p1 + d;
	double		pbar = (p1 + p2) / 2;

	*sd0 = sqrt(2 * pbar * (1 - pbar));
	*sd1 = sqrt(p1 * (1 - p1) + p2 * (1 - p2));
}

static int64
ceil_to_int64(double v)
{
	double		c = ceil(v);

	if (isnan(v))
		elog(ERROR, "the required sample size is undefined");
	if (!(c < 9.2e18))
		ereport(ERROR,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("the required sample size (%g) is out of the range of bigint", v)));
	return (int64) c;
}

/*
 * The design arguments shared by the planning functions, at argument
 * positions first (variations) and first + 1 (sequential_tuning).  With k
 * variations each of the k - 1 treatments is tested against the control at
 * alpha / (k - 1) (Bonferroni); a sequential_tuning N* plans for the
 * always-valid confidence sequence instead of the fixed-horizon test.
 */
typedef struct Design
{
	double		alpha;			/* per comparison */
	double		tuning;			/* NaN: fixed horizon */
} Design;

static void
get_design(FunctionCallInfo fcinfo, int first, double alpha, Design *dz)
{
	int32		k = PG_ARGISNULL(first) ? 2 : PG_GETARG_INT32(first);

	if (k < 2 || k > 10000)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("variations must be between 2 and 10000, got %d", k),
				 errhint("variations counts every arm, the control included: 2 for an A/B test.")));
	dz->alpha = alpha / (double) (k - 1);
	dz->tuning = get_float8_nan();
	if (!PG_ARGISNULL(first + 1))
	{
		dz->tuning = PG_GETARG_FLOAT8(first + 1);
		exp_check_tuning(dz->tuning);
	}
}

/*
 * The critical value, in standard errors, of a two-sided test of one
 * treatment against the control with n units in each: z_{1-alpha/2}, or the
 * confidence sequence's half-width over its standard error after 2n units.
 */
static double
critical(const Design *dz, double n)
{
	if (isnan(dz->tuning))
		return gsl_cdf_ugaussian_Qinv(dz->alpha / 2);
	return exp_seq_halfwidth(1.0, 2.0 * n, dz->alpha, dz->tuning, true);
}

/*
 * The smallest n (real) with margin(n) >= 0, margin increasing in n where it
 * matters; by bisection on ln n to the last bit.  -1 when even 1e15 units
 * are not enough.
 */
static double
solve_n(double (*margin) (double n, void *arg), void *arg)
{
	double		lo = log(2.0),
				hi = log(1e15);
	int			i;

	if (margin(exp(hi), arg) < 0)
		return -1;
	if (margin(exp(lo), arg) >= 0)
		return 2;
	for (i = 0; i < 200 && hi - lo > 1e-15 * hi; i++)
	{
		double		mid = 0.5 * (lo + hi);

		if (margin(exp(mid), arg) >= 0)
			hi = mid;
		else
			lo = mid;
	}
	return exp(hi);
}

#define NULL_IF_ANY_NULL(count) \
	do { \
		int			i_; \
		for (i_ = 0; i_ < (count); i_++) \
			if (PG_ARGISNULL(i_)) \
				PG_RETURN_NULL(); \
	} while (0)

typedef struct PropPlan
{
	const Design *dz;
	double		p1;
	double		d;
	double		zb;
} PropPlan;

/*
 * Proportions: d sqrt(n) - (c sqrt(2 pbar qbar) + z_power sqrt(p1 q1 + p2 q2))
 * for the fixed test (pooled statistic), and d sqrt(n) - (c(n) + z_power)
 * sqrt(p1 q1 + p2 q2) for the sequential one (Wald throughout).
 */
static double
prop_margin(double n, void *arg)
{
	PropPlan   *pp = arg;
	double		sd0,
				sd1;

	prop_sds(pp->p1, pp->d, &sd0, &sd1);
	if (isnan(pp->dz->tuning))
		return fabs(pp->d) * sqrt(n) - (critical(pp->dz, n) * sd0 + pp->zb * sd1);
	return fabs(pp->d) * sqrt(n) - (critical(pp->dz, n) + pp->zb) * sd1;
}

/*
 * required_n(baseline, mde, alpha, power, variations, sequential_tuning):
 * units per variant for a two-proportion test to detect baseline ->
 * baseline + mde.
 */
PG_FUNCTION_INFO_V1(exp_required_n);
Datum
exp_required_n(PG_FUNCTION_ARGS)
{
	double		p1,
				d,
				alpha,
				power,
				n;
	Design		dz;
	PropPlan	pp;

	NULL_IF_ANY_NULL(5);
	p1 = PG_GETARG_FLOAT8(0);
	d = PG_GETARG_FLOAT8(1);
	alpha = PG_GETARG_FLOAT8(2);
	power = PG_GETARG_FLOAT8(3);
	check_open_unit(p1, "baseline");
	check_mde(p1, d);
	check_probability(alpha, "alpha");
	check_probability(power, "power");
	get_design(fcinfo, 4, alpha, &dz);
	pp.dz = &dz;
	pp.p1 = p1;
	pp.d = d;
	pp.zb = gsl_cdf_ugaussian_Pinv(power);
	if (isnan(dz.tuning))
	{
		double		sd0,
					sd1,
					s;

		prop_sds(p1, d, &sd0, &sd1);
		s = critical(&dz, 0) * sd0 + pp.zb * sd1;
		/* s <= 0: a power below alpha/2 that any sample reaches */
		if (s <= 0)
			PG_RETURN_INT64(1);
		PG_RETURN_INT64(Max(1, ceil_to_int64(s * s / (d * d))));
	}
	n = solve_n(prop_margin, &pp);
	if (n < 0)
		ereport(ERROR,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("the required sample size is above 1e15 units per variant")));
	PG_RETURN_INT64(ceil_to_int64(n * (1 - 1e-14)));
}

typedef struct MeanPlan
{
	const Design *dz;
	double		ratio;			/* |mde| / stddev */
	double		zb;
} MeanPlan;

/* means: |d| / (sd sqrt(2/n)) - c(n) - z_power */
static double
mean_margin(double n, void *arg)
{
	MeanPlan   *mp = arg;

	return mp->ratio * sqrt(n / 2.0) - critical(mp->dz, n) - mp->zb;
}

/*
 * required_n_mean(stddev, mde, alpha, power, variations, sequential_tuning):
 * units per variant for a test of a difference of means with common standard
 * deviation stddev.
 */
PG_FUNCTION_INFO_V1(exp_required_n_mean);
Datum
exp_required_n_mean(PG_FUNCTION_ARGS)
{
	double		sd,
				d,
				alpha,
				power,
				n;
	Design		dz;
	MeanPlan	mp;

	NULL_IF_ANY_NULL(5);
	sd = PG_GETARG_FLOAT8(0);
	d = PG_GETARG_FLOAT8(1);
	alpha = PG_GETARG_FLOAT8(2);
	power = PG_GETARG_FLOAT8(3);
	if (!(sd > 0) || !isfinite(sd))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("stddev must be a positive finite number, got %g", sd)));
	if (d == 0 || !isfinite(d))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("mde must be a non-zero finite number, got %g", d)));
	check_probability(alpha, "alpha");
	check_probability(power, "power");
	get_design(fcinfo, 4, alpha, &dz);
	mp.dz = &dz;
	mp.ratio = fabs(d) / sd;
	mp.zb = gsl_cdf_ugaussian_Pinv(power);
	if (isnan(dz.tuning))
	{
		double		s = critical(&dz, 0) + mp.zb,
					n_fixed;

		/* s <= 0: a power below alpha/2 that any sample reaches */
		if (s <= 0)
			PG_RETURN_INT64(1);
		/* 2 (s / ratio)^2; ratio may be Infinity (1) or 0 (out of range) */
		n_fixed = 2 * (s / mp.ratio) * (s / mp.ratio);
		PG_RETURN_INT64(Max(1, ceil_to_int64(n_fixed)));
	}
	n = solve_n(mean_margin, &mp);
	if (n < 0 || !(mp.ratio > 0))
		ereport(ERROR,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("the required sample size is above 1e15 units per variant")));
	PG_RETURN_INT64(ceil_to_int64(n * (1 - 1e-14)));
}

/*
 * mde(n_per_variant, baseline, alpha, power, variations, sequential_tuning):
 * the smallest absolute rise d > 0 of the rate that n units per variant
 * detect, the root of prop_margin(n) = 0 in (0, 1 - baseline), found by
 * bisection to the last bit.  NULL when no rise below 1 - baseline reaches
 * the power.
 */
PG_FUNCTION_INFO_V1(exp_mde_prop);
Datum
exp_mde_prop(PG_FUNCTION_ARGS)
{
	int64		n;
	double		p1,
				alpha,
				power,
				lo,
				hi;
	Design		dz;
	PropPlan	pp;
	int			i;

	NULL_IF_ANY_NULL(5);
	n = PG_GETARG_INT64(0);
	p1 = PG_GETARG_FLOAT8(1);
	alpha = PG_GETARG_FLOAT8(2);
	power = PG_GETARG_FLOAT8(3);
	check_n(n);
	check_open_unit(p1, "baseline");
	check_probability(alpha, "alpha");
	check_probability(power, "power");
	get_design(fcinfo, 4, alpha, &dz);
	pp.dz = &dz;
	pp.p1 = p1;
	pp.zb = gsl_cdf_ugaussian_Pinv(power);

	lo = 0;
	hi = 1 - p1;
	pp.d = lo;
	if (prop_margin((double) n, &pp) >= 0)
		PG_RETURN_NULL();
	pp.d = hi;
	if (prop_margin((double) n, &pp) < 0)
		PG_RETURN_NULL();
	for (i = 0; i < 200; i++)
	{
		double		mid = lo + (hi - lo) / 2;

		if (mid <= lo || mid >= hi)
			break;
		pp.d = mid;
		if (prop_margin((double) n, &pp) < 0)
			lo = mid;
		else
			hi = mid;
	}
	PG_RETURN_FLOAT8(hi);
}

/*
 * power(n_per_variant, baseline, mde, alpha, variations, sequential_tuning):
 * the power of a two-proportion test with n units per variant against
 * baseline -> baseline + mde:
 *	fixed:		Phi( (|mde| sqrt(n) - c sqrt(2 pbar qbar)) / sqrt(p1 q1 + p2 q2) )
 *	sequential:	Phi( |mde| sqrt(n) / sqrt(p1 q1 + p2 q2) - c(n) )
 */
PG_FUNCTION_INFO_V1(exp_power_prop);
Datum
exp_power_prop(PG_FUNCTION_ARGS)
{
	int64		n;
	double		p1,
				d,
				alpha,
				sd0,
				sd1;
	Design		dz;

	NULL_IF_ANY_NULL(5);
	n = PG_GETARG_INT64(0);
	p1 = PG_GETARG_FLOAT8(1);
	d = PG_GETARG_FLOAT8(2);
	alpha = PG_GETARG_FLOAT8(3);
	check_n(n);
	check_open_unit(p1, "baseline");
	check_mde(p1, d);
	check_probability(alpha, "alpha");
	get_design(fcinfo, 4, alpha, &dz);
	prop_sds(p1, d, &sd0, &sd1);
	if (isnan(dz.tuning))
		PG_RETURN_FLOAT8(gsl_cdf_ugaussian_P((fabs(d) * sqrt((double) n) - critical(&dz, 0) * sd0) / sd1));
	PG_RETURN_FLOAT8(gsl_cdf_ugaussian_P(fabs(d) * sqrt((double) n) / sd1 - critical(&dz, (double) n)));
}
