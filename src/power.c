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

#include "experiment.h"

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

/* z_{1-alpha/2} */
static double
z_alpha(double alpha)
{
	return gsl_cdf_ugaussian_Qinv(alpha / 2);
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

	if (!(c < 9.2e18))
		ereport(ERROR,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("the required sample size (%g) is out of the range of bigint", v)));
	return (int64) c;
}

/*
 * required_n(baseline, mde, alpha, power): units per variant for a
 * two-proportion test to detect baseline -> baseline + mde.
 */
PG_FUNCTION_INFO_V1(required_n);
Datum
required_n(PG_FUNCTION_ARGS)
{
	double		p1 = PG_GETARG_FLOAT8(0);
	double		d = PG_GETARG_FLOAT8(1);
	double		alpha = PG_GETARG_FLOAT8(2);
	double		power = PG_GETARG_FLOAT8(3);
	double		sd0,
				sd1,
				s;

	check_open_unit(p1, "baseline");
	check_mde(p1, d);
	check_open_unit(alpha, "alpha");
	check_open_unit(power, "power");
	prop_sds(p1, d, &sd0, &sd1);
	s = z_alpha(alpha) * sd0 + gsl_cdf_ugaussian_Pinv(power) * sd1;
	PG_RETURN_INT64(ceil_to_int64(s * s / (d * d)));
}

/*
 * required_n_mean(stddev, mde, alpha, power): units per variant for a test
 * of a difference of means with common standard deviation stddev.
 */
PG_FUNCTION_INFO_V1(required_n_mean);
Datum
required_n_mean(PG_FUNCTION_ARGS)
{
	double		sd = PG_GETARG_FLOAT8(0);
	double		d = PG_GETARG_FLOAT8(1);
	double		alpha = PG_GETARG_FLOAT8(2);
	double		power = PG_GETARG_FLOAT8(3);
	double		s;

	if (!(sd > 0) || !isfinite(sd))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("stddev must be a positive finite number, got %g", sd)));
	if (d == 0 || !isfinite(d))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("mde must be a non-zero finite number, got %g", d)));
	check_open_unit(alpha, "alpha");
	check_open_unit(power, "power");
	s = (z_alpha(alpha) + gsl_cdf_ugaussian_Pinv(power)) * (sd / d);
	PG_RETURN_INT64(ceil_to_int64(2 * s * s));
}

/*
 * mde(n_per_variant, baseline, alpha, power): the smallest absolute rise
 * d > 0 of the rate that n units per variant detect, i.e. the root of
 *	d sqrt(n) = z_{1-alpha/2} sqrt(2 pbar (1 - pbar)) + z_power sqrt(p1 q1 + p2 q2)
 * in (0, 1 - baseline), found by bisection to the last bit.  NULL when no
 * rise below 1 - baseline reaches the power.
 */
PG_FUNCTION_INFO_V1(mde_prop);
Datum
mde_prop(PG_FUNCTION_ARGS)
{
	int64		n = PG_GETARG_INT64(0);
	double		p1 = PG_GETARG_FLOAT8(1);
	double		alpha = PG_GETARG_FLOAT8(2);
	double		power = PG_GETARG_FLOAT8(3);
	double		za,
				zb,
				sqn,
				lo,
				hi;
	int			i;

	check_n(n);
	check_open_unit(p1, "baseline");
	check_open_unit(alpha, "alpha");
	check_open_unit(power, "power");
	za = z_alpha(alpha);
	zb = gsl_cdf_ugaussian_Pinv(power);
	sqn = sqrt((double) n);

#define MDE_G(d, out) \
	do { \
		double		sd0_, sd1_; \
		prop_sds(p1, (d), &sd0_, &sd1_); \
		(out) = (d) * sqn - (za * sd0_ + zb * sd1_); \
	} while (0)

	lo = 0;
	hi = 1 - p1;
	{
		double		glo,
					ghi;

		MDE_G(lo, glo);
		MDE_G(hi, ghi);
		if (glo >= 0 || ghi < 0)
			PG_RETURN_NULL();
	}
	for (i = 0; i < 200; i++)
	{
		double		mid = lo + (hi - lo) / 2;
		double		g;

		if (mid <= lo || mid >= hi)
			break;
		MDE_G(mid, g);
		if (g < 0)
			lo = mid;
		else
			hi = mid;
	}
#undef MDE_G
	PG_RETURN_FLOAT8(hi);
}

/*
 * power(n_per_variant, baseline, mde, alpha): the power of a two-proportion
 * test with n units per variant against baseline -> baseline + mde:
 *	Phi( (|mde| sqrt(n) - z_{1-alpha/2} sqrt(2 pbar (1 - pbar))) / sqrt(p1 q1 + p2 q2) )
 */
PG_FUNCTION_INFO_V1(power_prop);
Datum
power_prop(PG_FUNCTION_ARGS)
{
	int64		n = PG_GETARG_INT64(0);
	double		p1 = PG_GETARG_FLOAT8(1);
	double		d = PG_GETARG_FLOAT8(2);
	double		alpha = PG_GETARG_FLOAT8(3);
	double		sd0,
				sd1;

	check_n(n);
	check_open_unit(p1, "baseline");
	check_mde(p1, d);
	check_open_unit(alpha, "alpha");
	prop_sds(p1, d, &sd0, &sd1);
	PG_RETURN_FLOAT8(gsl_cdf_ugaussian_P((fabs(d) * sqrt((double) n) - z_alpha(alpha) * sd0) / sd1));
}
