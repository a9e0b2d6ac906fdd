/*-------------------------------------------------------------------------
 *
 * bayes.c
 *	  experiment.bayesian(test_result, ...): a Gaussian posterior of the
 *	  relative lift or the difference from any test's estimate and standard
 *	  error, with its credible interval, chance to win and risks.
 *
 * See doc/statistics.md, "Bayesian results".
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <math.h>

#include <gsl/gsl_cdf.h>
#include <gsl/gsl_randist.h>
#include <gsl/gsl_sf_erf.h>

#include "access/htup_details.h"
#include "executor/executor.h"
#include "funcapi.h"
#include "utils/float.h"

#include "experiment.h"

/* columns of experiment.bayes_result */
enum
{
	BR_ESTIMATE,
	BR_CI_LOWER,
	BR_CI_UPPER,
	BR_STDDEV,
	BR_CHANCE_TO_WIN,
	BR_RISK_CONTROL,
	BR_RISK_TREATMENT,
	BR_NCOLS
};

/* a float8 attribute of a composite, NaN when NULL */
static double
attr_float8(HeapTupleHeader t, const char *name)
{
	bool		isnull;
	Datum		d = GetAttributeByName(t, name, &isnull);

	return isnull ? get_float8_nan() : DatumGetFloat8(d);
}

/*
 * E max(X, 0) for X ~ N(mu, sd^2): mu Phi(z) + sd phi(z), z = mu/sd; for
 * z < 0 written as sd Q(|z|) (h(|z|) - |z|) with GSL's hazard function h =
 * phi/Q, so that a far negative z keeps its relative precision.
 */
static double
expected_positive_part(double mu, double sd)
{
	double		z = mu / sd;

	if (isinf(z))
		return z > 0 ? mu : 0.0;	/* sd negligible beside |mu| */
	if (z >= 0)
		return mu * gsl_cdf_ugaussian_P(z) + sd * gsl_ran_ugaussian_pdf(z);
	return sd * gsl_cdf_ugaussian_Q(-z) * (gsl_sf_hazard(-z) + z);
}

/*
 * bayesian(t, prior_mean, prior_variance, relative, alpha): the posterior of
 * the effect (the relative lift, or the difference when relative is false)
 * given the test's estimate and standard error as a Gaussian likelihood.  A
 * NULL prior_variance is the flat prior; a proper prior N(prior_mean,
 * prior_variance) is stated on the relative scale and, for the difference,
 * rescaled by the control mean (mean * |mu_c|, variance * mu_c^2).
 */
PG_FUNCTION_INFO_V1(exp_bayesian);
Datum
exp_bayesian(PG_FUNCTION_ARGS)
{
	HeapTupleHeader t;
	double		prior_mean,
				prior_var = get_float8_nan(),
				alpha,
				est,
				se,
				mean_c,
				post_mean,
				post_var,
				sd,
				q;
	bool		relative;
	TupleDesc	tupdesc;
	Datum		values[BR_NCOLS];
	bool		nulls[BR_NCOLS];
	double		v[BR_NCOLS];
	int			i;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1) || PG_ARGISNULL(3) || PG_ARGISNULL(4))
		PG_RETURN_NULL();
	t = PG_GETARG_HEAPTUPLEHEADER(0);
	prior_mean = PG_GETARG_FLOAT8(1);
	relative = PG_GETARG_BOOL(3);
	alpha = PG_GETARG_FLOAT8(4);
	if (!(alpha >= EXP_MIN_PROBABILITY && alpha < 1))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("alpha must be in [1e-300, 1), got %g", alpha),
				 errhint("The credible interval has probability 1 - alpha.")));
	if (!isfinite(prior_mean))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("prior_mean must be finite, got %g", prior_mean)));
	if (!PG_ARGISNULL(2))
	{
		prior_var = PG_GETARG_FLOAT8(2);
		if (!(prior_var > 0 && isfinite(prior_var)))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("prior_variance must be a positive number, got %g", prior_var),
					 errhint("NULL is the flat (improper) prior.")));
	}

	est = attr_float8(t, relative ? "lift" : "diff");
	se = attr_float8(t, relative ? "lift_se" : "diff_se");
	mean_c = attr_float8(t, "mean_control");

	for (i = 0; i < BR_NCOLS; i++)
		v[i] = get_float8_nan();
	if (isfinite(est) && se > 0 && isfinite(se))
	{
		double		lik_var = se * se;

		if (isnan(prior_var))
		{
			post_mean = est;
			post_var = lik_var;
		}
		else
		{
			double		pm = prior_mean,
						pv = prior_var,
						vsum;

			if (!relative)
			{
				pm *= fabs(mean_c);
				pv *= mean_c * mean_c;
			}
			/*
			 * precision-weighted mean, written with the weights pv/(lv+pv)
			 * and lv/(lv+pv) so that a large mean or a tiny variance does not
			 * overflow 1/variance
			 */
			vsum = lik_var + pv;
			post_var = (lik_var / vsum) * pv;
			post_mean = est * (pv / vsum) + pm * (lik_var / vsum);
			if (!(pv > 0) || !isfinite(pv))
				post_var = get_float8_nan();	/* mu_c = 0: no absolute prior */
		}
		if (post_var > 0 && isfinite(post_var) && isfinite(post_mean))
		{
			sd = sqrt(post_var);
			q = gsl_cdf_ugaussian_Qinv(alpha / 2);
			v[BR_ESTIMATE] = post_mean;
			v[BR_STDDEV] = sd;
			v[BR_CI_LOWER] = post_mean - q * sd;
			v[BR_CI_UPPER] = post_mean + q * sd;
			v[BR_CHANCE_TO_WIN] = gsl_cdf_ugaussian_P(post_mean / sd);
			v[BR_RISK_CONTROL] = expected_positive_part(post_mean, sd);
			v[BR_RISK_TREATMENT] = expected_positive_part(-post_mean, sd);
		}
	}

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be experiment.bayes_result");
	tupdesc = BlessTupleDesc(tupdesc);
	for (i = 0; i < BR_NCOLS; i++)
	{
		nulls[i] = !isfinite(v[i]);
		values[i] = nulls[i] ? (Datum) 0 : Float8GetDatum(v[i]);
	}
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}
