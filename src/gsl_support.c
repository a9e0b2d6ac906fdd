/*-------------------------------------------------------------------------
 *
 * gsl_support.c
 *	  Module initialisation and the distribution functions, from GSL.
 *
 * GSL's default error handler aborts the process, which would take the
 * backend down with it; _PG_init turns it off, and the wrappers here turn
 * a GSL failure (a NaN result) into an ereport.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <math.h>

#include <gsl/gsl_cdf.h>
#include <gsl/gsl_errno.h>

#include "experiment.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

void
_PG_init(void)
{
	gsl_set_error_handler_off();
}

static double
checked(double v, const char *what, double a, double b)
{
	if (isnan(v))
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("GSL could not compute %s(%g, %g)", what, a, b)));
	return v;
}

/* P(T > t) for Student's t with df degrees of freedom */
double
exp_t_sf(double t, double df)
{
	return checked(gsl_cdf_tdist_Q(t, df), "gsl_cdf_tdist_Q", t, df);
}

/* the t with P(T > t) = p */
double
exp_t_quantile_upper(double p, double df)
{
	return checked(gsl_cdf_tdist_Qinv(p, df), "gsl_cdf_tdist_Qinv", p, df);
}

/* P(Z > z) for the standard normal */
double
exp_norm_sf(double z)
{
	return checked(gsl_cdf_ugaussian_Q(z), "gsl_cdf_ugaussian_Q", z, 0);
}

/* the z with P(Z <= z) = p */
double
exp_norm_quantile(double p)
{
	return checked(gsl_cdf_ugaussian_Pinv(p), "gsl_cdf_ugaussian_Pinv", p, 0);
}

/* P(X > x) for chi-squared with df degrees of freedom */
double
exp_chisq_sf(double x, double df)
{
	return checked(gsl_cdf_chisq_Q(x, df), "gsl_cdf_chisq_Q", x, df);
}
