/*-------------------------------------------------------------------------
 *
 * stats.c
 *	  The two-arm tests on sufficient statistics: Welch's t-test (function
 *	  and aggregate final function), the two-proportion z-test, CUPED, ratio
 *	  metrics (delta method) and the sample ratio mismatch chi-squared test;
 *	  plus the CUPED helpers cuped_theta and cuped_adjust.
 *
 * Every test returns experiment.test_result.  Undefined values (an arm with
 * too few observations, zero variance, a zero control mean under the lift)
 * come out as NULL, never NaN: the computations below use NaN internally
 * for "undefined" and result_datum() turns every non-finite value into NULL.
 *
 * Student's t tail and quantile are computed here rather than with
 * gsl_cdf_tdist_Q / gsl_cdf_tdist_Qinv alone: for 30 < df < a few thousand
 * GSL approximates the tail by a Cornish-Fisher expansion that is off by up
 * to 1e-7 relative in the far tail, and its inverse stops at about 1e-9.
 * Here the tail is the regularized incomplete beta function up to
 * T_BETA_MAX_DF degrees of freedom and GSL's expansion above (where it is
 * accurate to 1e-13), and the quantile is a first guess polished by
 * Newton steps on the logarithm of that tail.  See doc/statistics.md.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <float.h>
#include <math.h>

#include <gsl/gsl_cdf.h>
#include <gsl/gsl_errno.h>
#include <gsl/gsl_sf_gamma.h>

#include "access/htup_details.h"
#include "catalog/pg_type.h"
#include "funcapi.h"
#include "utils/array.h"
#include "utils/float.h"

#include "experiment.h"

/* columns of experiment.test_result */
enum
{
	TR_N_CONTROL,
	TR_N_TREATMENT,
	TR_MEAN_CONTROL,
	TR_MEAN_TREATMENT,
	TR_DIFF,
	TR_DIFF_LOWER,
	TR_DIFF_UPPER,
	TR_LIFT,
	TR_LIFT_LOWER,
	TR_LIFT_UPPER,
	TR_STATISTIC,
	TR_DF,
	TR_P_VALUE,
	TR_LIFT_P_VALUE,
	TR_NCOLS
};

typedef struct TestResult
{
	int64		n_control;
	int64		n_treatment;
	double		v[TR_NCOLS];	/* float columns; NaN = NULL */
} TestResult;

/*
 * The inputs of a test of a difference of means: the reported means, the
 * estimated difference, and the per-unit variances whose sum over n gives
 * the variance of the difference.  lift_var is the variance of the lift
 * (already divided by the counts).
 */
typedef struct MeanDiff
{
	int64		n_c;
	int64		n_t;
	double		mean_c;
	double		mean_t;
	double		diff;
	double		var_c;
	double		var_t;
	double		lift_var;
} MeanDiff;

/* ---------- distributions ---------- */

/*
 * Regularized incomplete beta I_x(a, b); an underflow is a true zero.
 */
static double
beta_inc(double a, double b, double x)
{
	gsl_sf_result r;
	int			status = gsl_sf_beta_inc_e(a, b, x, &r);

	if (status == GSL_EUNDRFLW)
		return 0.0;
	if (status != GSL_SUCCESS || isnan(r.val))
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("GSL could not compute the incomplete beta function I(%g; %g, %g): %s",
						x, a, b, gsl_strerror(status))));
	return r.val;
}

/*
 * Up to this many degrees of freedom the t tail comes from the incomplete
 * beta function; above, the argument df/(df+t^2) is so close to 1 that its
 * rounding costs about df * 1e-16 relative, while GSL's Cornish-Fisher
 * expansion is accurate to 1e-13 (both measured against 50-digit mpmath).
 */
#define T_BETA_MAX_DF 3e4

/*
 * P(T > t) for t >= 0, Student's t with df degrees of freedom.
 *
 * P(T > t) = I_{df/(df+t^2)}(df/2, 1/2) / 2 = (1 - I_{t^2/(df+t^2)}(1/2, df/2)) / 2
 * (Abramowitz and Stegun 26.7.1).  The second form is used where the tail
 * is large (no cancellation), the first where it is small, so that far
 * tails keep their relative precision.
 */
static double
t_sf(double t, double df)
{
	double		t2,
				central;

	Assert(t >= 0);
	if (t == 0)
		return 0.5;
	if (df > T_BETA_MAX_DF)
	{
		double		q = gsl_cdf_tdist_Q(t, df);

		if (isnan(q))
			ereport(ERROR,
					(errcode(ERRCODE_INTERNAL_ERROR),
					 errmsg("GSL could not compute the t tail for t = %g, df = %g", t, df)));
		return q;
	}
	t2 = t * t;
	if (isinf(t2))
		return 0.0;
	central = 0.5 * (1.0 - beta_inc(0.5, 0.5 * df, t2 / (df + t2)));
	if (central >= 0.05)
		return central;
	return 0.5 * beta_inc(0.5 * df, 0.5, df / (df + t2));
}

/*
 * Logarithm of the density of Student's t, written so that it stays accurate
 * for any df and far into the tails (gsl_ran_tdist_pdf loses digits as df
 * grows: a difference of two large log-gammas and pow(1 + tiny, -huge)):
 *	ln f(x) = -ln(df)/2 - ln B(df/2, 1/2) - (df+1)/2 * log1p(x^2/df)
 */
static double
t_log_pdf(double x, double df)
{
	return -0.5 * log(df) - gsl_sf_lnbeta(0.5 * df, 0.5) - 0.5 * (df + 1) * log1p(x * x / df);
}

/* two-sided p-value of a t statistic */
static double
t_p_value(double t, double df)
{
	if (isnan(t) || isnan(df))
		return get_float8_nan();
	return Min(1.0, 2.0 * t_sf(fabs(t), df));
}

/*
 * The t with P(T > t) = p, 0 < p < 0.5: a first guess (GSL's inverse, or
 * the normal quantile for many degrees of freedom or where GSL's inverse
 * fails), then Newton steps on ln P(T > x) as a function of ln x - nearly
 * linear in the tails, heavy or light, so that even a poor guess converges -
 * until the step is below rounding.
 */
static double
t_isf(double p, double df)
{
	double		x = -1;
	int			i;

	if (df <= T_BETA_MAX_DF)
		x = gsl_cdf_tdist_Qinv(p, df);
	if (!(x > 0 && isfinite(x)))
		x = gsl_cdf_ugaussian_Qinv(p);
	if (!(x > 0 && isfinite(x)))
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not compute the t quantile for p = %g, df = %g", p, df)));
	for (i = 0; i < 500; i++)
	{
		double		q = t_sf(x, df);
		double		step;

		if (q == 0)
		{
			x /= 2;				/* beyond the representable tail: back off */
			continue;
		}
		/* d ln q / d ln x = -x f / q, formed in logarithms (f may underflow) */
		step = (log(q) - log(p)) / exp(log(x) + t_log_pdf(x, df) - log(q));
		if (!isfinite(step))
			break;
		step = Max(-10.0, Min(10.0, step));
		x *= exp(step);
		if (fabs(step) <= 4 * DBL_EPSILON)
			break;
	}
	return x;
}

/* two-sided p-value of a z statistic */
static double
z_p_value(double z)
{
	if (isnan(z))
		return get_float8_nan();
	return Min(1.0, 2.0 * gsl_cdf_ugaussian_Q(fabs(z)));
}

/* ---------- argument checks ---------- */

static void
check_alpha(double alpha)
{
	if (!(alpha > 0 && alpha < 1))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("alpha must be in (0, 1), got %g", alpha),
				 errhint("alpha is the significance level, e.g. 0.05 for a 95%% confidence interval.")));
}

static void
check_nvars(const Moments *m, int want, const char *argname, const char *test)
{
	if (m->nvars != want)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s of %s must be %s experiment.moments, got %d variable%s",
						argname, test, want == 1 ? "univariate" : "bivariate", m->nvars,
						m->nvars == 1 ? "" : "s"),
				 want == 1 ?
				 errhint("Build them with experiment.moments(y).") :
				 errhint("Build them with experiment.moments(y, x).")));
}

/* ---------- results ---------- */

static void
result_init(TestResult *r, int64 n_c, int64 n_t)
{
	int			i;

	r->n_control = n_c;
	r->n_treatment = n_t;
	for (i = 0; i < TR_NCOLS; i++)
		r->v[i] = get_float8_nan();
}

/*
 * Form the experiment.test_result tuple; every non-finite float is NULL.
 */
static Datum
result_datum(FunctionCallInfo fcinfo, const TestResult *r)
{
	TupleDesc	tupdesc;
	Datum		values[TR_NCOLS];
	bool		nulls[TR_NCOLS];
	int			i;

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be experiment.test_result");
	if (tupdesc->natts != TR_NCOLS)
		elog(ERROR, "experiment.test_result must have %d columns, not %d", TR_NCOLS, tupdesc->natts);
	tupdesc = BlessTupleDesc(tupdesc);

	values[TR_N_CONTROL] = Int64GetDatum(r->n_control);
	nulls[TR_N_CONTROL] = false;
	values[TR_N_TREATMENT] = Int64GetDatum(r->n_treatment);
	nulls[TR_N_TREATMENT] = false;
	for (i = TR_MEAN_CONTROL; i < TR_NCOLS; i++)
	{
		nulls[i] = !isfinite(r->v[i]);
		values[i] = nulls[i] ? (Datum) 0 : Float8GetDatum(r->v[i]);
	}
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}

/* mean of variable i, NaN when there are no observations */
static double
mean_or_nan(const Moments *m, int i)
{
	return m->n > 0 ? MOMENTS_MEAN(m, i) : get_float8_nan();
}

/*
 * Welch's t-test of a difference of means, filling everything but the n's:
 *	se^2 = var_c/n_c + var_t/n_t
 *	df = se^4 / ((var_c/n_c)^2/(n_c-1) + (var_t/n_t)^2/(n_t-1))	(Satterthwaite)
 *	CI = diff -/+ t(1-alpha/2, df) se, p = 2 P(T > |diff/se|)
 *	lift = diff/|mean_c|, CI = lift -/+ t(1-alpha/2, df) sqrt(lift_var),
 *	lift p = 2 P(T > |lift/sqrt(lift_var)|)
 */
static void
welch_finish(TestResult *r, const MeanDiff *md, double alpha)
{
	double		a,
				b,
				se2,
				se,
				q;

	r->v[TR_MEAN_CONTROL] = md->mean_c;
	r->v[TR_MEAN_TREATMENT] = md->mean_t;
	r->v[TR_DIFF] = md->diff;
	if (md->mean_c != 0)
		r->v[TR_LIFT] = md->diff / fabs(md->mean_c);

	if (md->n_c < 2 || md->n_t < 2)
		return;
	a = md->var_c / (double) md->n_c;
	b = md->var_t / (double) md->n_t;
	se2 = a + b;
	if (!(se2 > 0) || !isfinite(se2) || !isfinite(md->diff))
		return;
	se = sqrt(se2);
	/* Satterthwaite df, scaled so that tiny variances do not underflow */
	a /= se2;
	b /= se2;
	r->v[TR_DF] = 1.0 / (a * a / (double) (md->n_c - 1) + b * b / (double) (md->n_t - 1));
	r->v[TR_STATISTIC] = md->diff / se;
	r->v[TR_P_VALUE] = t_p_value(r->v[TR_STATISTIC], r->v[TR_DF]);
	q = t_isf(alpha / 2, r->v[TR_DF]);
	r->v[TR_DIFF_LOWER] = md->diff - q * se;
	r->v[TR_DIFF_UPPER] = md->diff + q * se;

	if (isfinite(r->v[TR_LIFT]) && md->lift_var > 0 && isfinite(md->lift_var))
	{
		double		se_lift = sqrt(md->lift_var);

		r->v[TR_LIFT_LOWER] = r->v[TR_LIFT] - q * se_lift;
		r->v[TR_LIFT_UPPER] = r->v[TR_LIFT] + q * se_lift;
		r->v[TR_LIFT_P_VALUE] = t_p_value(r->v[TR_LIFT] / se_lift, r->v[TR_DF]);
	}
}

/*
 * Variance of lift = (A_t - A_c)/|m_c| by the delta method, for a test whose
 * control contribution is var_c_lift (the per-unit variance of the linear
 * combination that the control means enter with), divided by m_c^2:
 *	(var_t/n_t + var_c_lift/n_c) / m_c^2
 */
static double
lift_variance(double var_t, int64 n_t, double var_c_lift, int64 n_c, double mean_c)
{
	if (mean_c == 0 || n_c < 1 || n_t < 1)
		return get_float8_nan();
	return (var_t / (double) n_t + var_c_lift / (double) n_c) / (mean_c * mean_c);
}

/*
 * The Welch test of univariate moments.
 */
static void
welch_moments(TestResult *r, const Moments *c, const Moments *t, double alpha)
{
	MeanDiff	md;
	double		ratio;

	result_init(r, c->n, t->n);
	md.n_c = c->n;
	md.n_t = t->n;
	md.mean_c = mean_or_nan(c, 0);
	md.mean_t = mean_or_nan(t, 0);
	md.diff = md.mean_t - md.mean_c;
	md.var_c = moments_variance(c, 0);
	md.var_t = moments_variance(t, 0);
	/* v_t/(mu_c^2 n_t) + v_c mu_t^2/(mu_c^4 n_c) */
	ratio = md.mean_t / md.mean_c;
	md.lift_var = lift_variance(md.var_t, md.n_t, md.var_c * ratio * ratio, md.n_c, md.mean_c);
	welch_finish(r, &md, alpha);
}

/*
 * welch_ttest(control, treatment, alpha): Welch's unequal-variances t-test of
 * mean(treatment) - mean(control) from univariate moments.
 */
PG_FUNCTION_INFO_V1(welch_ttest);
Datum
welch_ttest(PG_FUNCTION_ARGS)
{
	Moments    *c = PG_GETARG_MOMENTS_P(0);
	Moments    *t = PG_GETARG_MOMENTS_P(1);
	double		alpha = PG_GETARG_FLOAT8(2);
	TestResult	r;

	check_alpha(alpha);
	check_nvars(c, 1, "control", "welch_ttest");
	check_nvars(t, 1, "treatment", "welch_ttest");
	welch_moments(&r, c, t, alpha);
	return result_datum(fcinfo, &r);
}

/*
 * welch_ttest_final(state): final function of the welch_ttest(boolean,
 * float8) aggregate; the state is experiment.moments[] = [control, treatment].
 * alpha is 0.05.
 */
PG_FUNCTION_INFO_V1(welch_ttest_final);
Datum
welch_ttest_final(PG_FUNCTION_ARGS)
{
	ArrayType  *arr = PG_GETARG_ARRAYTYPE_P(0);
	Datum	   *elems;
	bool	   *elnulls;
	int			nelems;
	Moments    *g[2];
	int			i;
	TestResult	r;

	if (ARR_NDIM(arr) != 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("a two-group moments state must be a one-dimensional array")));
	deconstruct_array(arr, ARR_ELEMTYPE(arr), -1, false, TYPALIGN_DOUBLE,
					  &elems, &elnulls, &nelems);
	if (nelems != 2 || elnulls[0] || elnulls[1])
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("a two-group moments state must be an array of two non-NULL experiment.moments")));
	for (i = 0; i < 2; i++)
	{
		g[i] = DatumGetMomentsP(elems[i]);
		check_nvars(g[i], 1, i == 0 ? "control" : "treatment", "welch_ttest");
	}
	welch_moments(&r, g[0], g[1], 0.05);
	return result_datum(fcinfo, &r);
}

/*
 * prop_ztest(x_control, n_control, x_treatment, n_treatment, alpha): the
 * two-proportion z-test.  z uses the pooled standard error, the CI of the
 * difference the unpooled (Wald) one, the lift the delta method; quantiles
 * are normal and df is NULL.
 */
PG_FUNCTION_INFO_V1(prop_ztest);
Datum
prop_ztest(PG_FUNCTION_ARGS)
{
	int64		x_c = PG_GETARG_INT64(0);
	int64		n_c = PG_GETARG_INT64(1);
	int64		x_t = PG_GETARG_INT64(2);
	int64		n_t = PG_GETARG_INT64(3);
	double		alpha = PG_GETARG_FLOAT8(4);
	double		p_c,
				p_t,
				pooled,
				se0,
				se,
				q;
	TestResult	r;

	check_alpha(alpha);
	if (x_c < 0 || n_c < 0 || x_t < 0 || n_t < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must not be negative, got " INT64_FORMAT,
						x_c < 0 ? "x_control" : n_c < 0 ? "n_control" : x_t < 0 ? "x_treatment" : "n_treatment",
						x_c < 0 ? x_c : n_c < 0 ? n_c : x_t < 0 ? x_t : n_t)));
	if (x_c > n_c)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("x_control (" INT64_FORMAT ") must not exceed n_control (" INT64_FORMAT ")", x_c, n_c)));
	if (x_t > n_t)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("x_treatment (" INT64_FORMAT ") must not exceed n_treatment (" INT64_FORMAT ")", x_t, n_t)));

	result_init(&r, n_c, n_t);
	p_c = n_c > 0 ? (double) x_c / (double) n_c : get_float8_nan();
	p_t = n_t > 0 ? (double) x_t / (double) n_t : get_float8_nan();
	r.v[TR_MEAN_CONTROL] = p_c;
	r.v[TR_MEAN_TREATMENT] = p_t;
	if (n_c == 0 || n_t == 0)
		return result_datum(fcinfo, &r);

	r.v[TR_DIFF] = p_t - p_c;
	q = gsl_cdf_ugaussian_Qinv(alpha / 2);

	/* pooled z */
	pooled = ((double) x_c + (double) x_t) / ((double) n_c + (double) n_t);
	se0 = sqrt(pooled * (1 - pooled) * (1.0 / (double) n_c + 1.0 / (double) n_t));
	if (se0 > 0)
	{
		r.v[TR_STATISTIC] = r.v[TR_DIFF] / se0;
		r.v[TR_P_VALUE] = z_p_value(r.v[TR_STATISTIC]);
	}

	/* Wald interval */
	se = sqrt(p_c * (1 - p_c) / (double) n_c + p_t * (1 - p_t) / (double) n_t);
	if (se > 0)
	{
		r.v[TR_DIFF_LOWER] = r.v[TR_DIFF] - q * se;
		r.v[TR_DIFF_UPPER] = r.v[TR_DIFF] + q * se;
	}

	/* lift, delta method */
	if (p_c > 0)
	{
		double		ratio = p_t / p_c;
		double		lift_var = lift_variance(p_t * (1 - p_t), n_t,
											 p_c * (1 - p_c) * ratio * ratio, n_c, p_c);

		r.v[TR_LIFT] = r.v[TR_DIFF] / p_c;
		if (lift_var > 0)
		{
			double		se_lift = sqrt(lift_var);

			r.v[TR_LIFT_LOWER] = r.v[TR_LIFT] - q * se_lift;
			r.v[TR_LIFT_UPPER] = r.v[TR_LIFT] + q * se_lift;
			r.v[TR_LIFT_P_VALUE] = z_p_value(r.v[TR_LIFT] / se_lift);
		}
	}
	return result_datum(fcinfo, &r);
}

/* ---------- CUPED ---------- */

/*
 * theta = C_xy / C_xx of bivariate moments (y, x); NaN when undefined.
 */
static double
cuped_theta_of(const Moments *m)
{
	double		cxx = MOMENTS_COM(m, 1, 1);

	if (m->n < 2 || !(cxx > 0))
		return get_float8_nan();
	return MOMENTS_COM(m, 0, 1) / cxx;
}

/*
 * Co-moment of a*y + b*x from bivariate co-moments, clamped at 0 against
 * rounding.
 */
static double
combo_comoment(const Moments *m, double a, double b)
{
	double		c = a * a * MOMENTS_COM(m, 0, 0) + 2 * a * b * MOMENTS_COM(m, 0, 1)
		+ b * b * MOMENTS_COM(m, 1, 1);

	return c > 0 ? c : 0;
}

/* sample variance of a*y + b*x; NaN when n < 2 */
static double
combo_variance(const Moments *m, double a, double b)
{
	if (m->n < 2)
		return get_float8_nan();
	return combo_comoment(m, a, b) / (double) (m->n - 1);
}

/*
 * cuped_ttest(control, treatment, alpha): Welch's t-test on the CUPED-adjusted
 * metric y - theta (x - mean x), theta pooled over both arms.  Means are
 * reported unadjusted.
 */
PG_FUNCTION_INFO_V1(cuped_ttest);
Datum
cuped_ttest(PG_FUNCTION_ARGS)
{
	Moments    *c = PG_GETARG_MOMENTS_P(0);
	Moments    *t = PG_GETARG_MOMENTS_P(1);
	double		alpha = PG_GETARG_FLOAT8(2);
	Moments    *pooled;
	double		theta,
				ratio;
	MeanDiff	md;
	TestResult	r;

	check_alpha(alpha);
	check_nvars(c, 2, "control", "cuped_ttest");
	check_nvars(t, 2, "treatment", "cuped_ttest");

	pooled = moments_copy(c);
	moments_merge_into(pooled, t);
	theta = cuped_theta_of(pooled);
	if (isnan(theta))
		theta = 0;				/* var_x = 0: the plain Welch test */

	result_init(&r, c->n, t->n);
	md.n_c = c->n;
	md.n_t = t->n;
	md.mean_c = mean_or_nan(c, 0);
	md.mean_t = mean_or_nan(t, 0);
	md.diff = (md.mean_t - md.mean_c) - theta * (mean_or_nan(t, 1) - mean_or_nan(c, 1));
	md.var_c = combo_variance(c, 1, -theta);
	md.var_t = combo_variance(t, 1, -theta);

	/*
	 * lift variance: v_t,adj/(n_t mu_c^2) + [v_c,y r^2 - 2 theta cov_c r +
	 * theta^2 v_c,x]/(n_c mu_c^2), r = mu_t/mu_c; the bracket is the variance
	 * of r y - theta x in the control arm.
	 */
	ratio = md.mean_t / md.mean_c;
	md.lift_var = lift_variance(md.var_t, md.n_t, combo_variance(c, ratio, -theta),
								md.n_c, md.mean_c);
	welch_finish(&r, &md, alpha);
	return result_datum(fcinfo, &r);
}

/*
 * cuped_theta(m): cov(y, x)/var(x) of bivariate moments; NULL when var(x) is
 * zero or n < 2.  For the pooled theta of a test, pass control + treatment.
 */
PG_FUNCTION_INFO_V1(cuped_theta);
Datum
cuped_theta(PG_FUNCTION_ARGS)
{
	Moments    *m = PG_GETARG_MOMENTS_P(0);
	double		theta;

	check_nvars(m, 2, "m", "cuped_theta");
	theta = cuped_theta_of(m);
	if (!isfinite(theta))
		PG_RETURN_NULL();
	PG_RETURN_FLOAT8(theta);
}

/*
 * cuped_adjust(y, x, theta, mean_x): the CUPED-adjusted value
 * y - theta (x - mean_x).
 */
PG_FUNCTION_INFO_V1(cuped_adjust_value);
Datum
cuped_adjust_value(PG_FUNCTION_ARGS)
{
	double		y = PG_GETARG_FLOAT8(0);
	double		x = PG_GETARG_FLOAT8(1);
	double		theta = PG_GETARG_FLOAT8(2);
	double		mean_x = PG_GETARG_FLOAT8(3);

	PG_RETURN_FLOAT8(y - theta * (x - mean_x));
}

/*
 * cuped_adjust(m, theta, mean_x): the univariate moments of
 * y - theta (x - mean_x), exactly, from the bivariate moments of (y, x):
 *	mean = mean_y - theta (mean_x(m) - mean_x)
 *	C = C_yy - 2 theta C_xy + theta^2 C_xx
 */
PG_FUNCTION_INFO_V1(cuped_adjust_moments);
Datum
cuped_adjust_moments(PG_FUNCTION_ARGS)
{
	Moments    *m = PG_GETARG_MOMENTS_P(0);
	double		theta = PG_GETARG_FLOAT8(1);
	double		mean_x = PG_GETARG_FLOAT8(2);
	Moments    *res;

	check_nvars(m, 2, "m", "cuped_adjust");
	if (!isfinite(theta))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("theta must be finite, got %g", theta)));
	if (!isfinite(mean_x))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("mean_x must be finite, got %g", mean_x)));
	res = moments_new(1);
	res->n = m->n;
	if (m->n > 0)
	{
		res->data[0] = MOMENTS_MEAN(m, 0) - theta * (MOMENTS_MEAN(m, 1) - mean_x);
		res->data[1] = m->n > 1 ? combo_comoment(m, 1, -theta) : 0;
	}
	moments_check_finite(res, "cuped_adjust");
	PG_RETURN_MOMENTS_P(res);
}

/* ---------- ratio metrics ---------- */

/*
 * Arm value of a ratio metric, mean(num)/mean(den), and the per-unit
 * delta-method variance
 *	(v_n - 2 R cov + R^2 v_d) / mu_d^2
 *	= v_n/mu_d^2 + v_d mu_n^2/mu_d^4 - 2 cov mu_n/mu_d^3.
 */
static void
ratio_arm(const Moments *m, double *value, double *var)
{
	double		mu_d = m->n > 0 ? MOMENTS_MEAN(m, 1) : get_float8_nan();

	if (m->n == 0 || mu_d == 0)
	{
		*value = get_float8_nan();
		*var = get_float8_nan();
		return;
	}
	*value = MOMENTS_MEAN(m, 0) / mu_d;
	*var = combo_variance(m, 1, -*value) / (mu_d * mu_d);
}

/*
 * ratio_ttest(control, treatment, alpha): Welch's t-test of a ratio metric
 * sum(num)/sum(den) per arm, from bivariate moments of each unit's
 * (numerator, denominator), with delta-method variances.
 */
PG_FUNCTION_INFO_V1(ratio_ttest);
Datum
ratio_ttest(PG_FUNCTION_ARGS)
{
	Moments    *c = PG_GETARG_MOMENTS_P(0);
	Moments    *t = PG_GETARG_MOMENTS_P(1);
	double		alpha = PG_GETARG_FLOAT8(2);
	MeanDiff	md;
	TestResult	r;
	double		ratio;

	check_alpha(alpha);
	check_nvars(c, 2, "control", "ratio_ttest");
	check_nvars(t, 2, "treatment", "ratio_ttest");

	result_init(&r, c->n, t->n);
	md.n_c = c->n;
	md.n_t = t->n;
	ratio_arm(c, &md.mean_c, &md.var_c);
	ratio_arm(t, &md.mean_t, &md.var_t);
	md.diff = md.mean_t - md.mean_c;
	ratio = md.mean_t / md.mean_c;
	md.lift_var = lift_variance(md.var_t, md.n_t, md.var_c * ratio * ratio, md.n_c, md.mean_c);
	welch_finish(&r, &md, alpha);
	return result_datum(fcinfo, &r);
}

/* ---------- sample ratio mismatch ---------- */

/*
 * srm_chisq(observed, weights): p-value of Pearson's chi-squared test of the
 * observed counts against the split given by the weights (NULL: equal).
 * df = k - 1 over the k arms with a positive weight.
 */
PG_FUNCTION_INFO_V1(srm_chisq);
Datum
srm_chisq(PG_FUNCTION_ARGS)
{
	ArrayType  *obs_arr;
	Datum	   *obs;
	bool	   *obs_nulls;
	int			k;
	Datum	   *w = NULL;
	bool	   *w_nulls = NULL;
	int			nw = 0;
	double		total = 0,
				wsum = 0,
				chi2 = 0;
	int			kpos = 0;
	int			i;
	gsl_sf_result res;
	int			status;

	if (PG_ARGISNULL(0))
		PG_RETURN_NULL();
	obs_arr = PG_GETARG_ARRAYTYPE_P(0);
	if (ARR_NDIM(obs_arr) > 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("observed must be a one-dimensional array")));
	deconstruct_array(obs_arr, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE,
					  &obs, &obs_nulls, &k);
	if (k == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("observed must not be empty")));
	for (i = 0; i < k; i++)
	{
		if (obs_nulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("observed must not contain NULL (element %d)", i + 1)));
		if (DatumGetInt64(obs[i]) < 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("observed[%d] must not be negative, got " INT64_FORMAT,
							i + 1, DatumGetInt64(obs[i]))));
		total += (double) DatumGetInt64(obs[i]);
	}

	if (!PG_ARGISNULL(1))
	{
		ArrayType  *w_arr = PG_GETARG_ARRAYTYPE_P(1);

		if (ARR_NDIM(w_arr) > 1)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("weights must be a one-dimensional array")));
		deconstruct_array(w_arr, FLOAT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE,
						  &w, &w_nulls, &nw);
		if (nw != k)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("weights must have as many elements as observed (%d), got %d", k, nw)));
		for (i = 0; i < k; i++)
		{
			double		wi;

			if (w_nulls[i])
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("weights must not contain NULL (element %d)", i + 1)));
			wi = DatumGetFloat8(w[i]);
			if (!(wi >= 0) || !isfinite(wi))
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("weights[%d] must be a finite non-negative number, got %g", i + 1, wi)));
			wsum += wi;
		}
		if (!(wsum > 0))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("weights must not all be zero")));
		if (!isfinite(wsum))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("the sum of weights is out of range")));
	}

	if (total == 0)
		PG_RETURN_NULL();
	for (i = 0; i < k; i++)
	{
		double		o = (double) DatumGetInt64(obs[i]);
		double		e = w ? total * (DatumGetFloat8(w[i]) / wsum) : total / k;

		if (e == 0)
		{
			/* an arm that should get nothing: anything in it rejects H0 */
			if (o > 0)
				PG_RETURN_FLOAT8(0.0);
			continue;
		}
		kpos++;
		chi2 += (o - e) * (o - e) / e;
	}
	if (kpos < 2)
		PG_RETURN_NULL();
	if (isinf(chi2))
		PG_RETURN_FLOAT8(0.0);

	status = gsl_sf_gamma_inc_Q_e(0.5 * (kpos - 1), 0.5 * chi2, &res);
	if (status == GSL_EUNDRFLW)
		PG_RETURN_FLOAT8(0.0);
	if (status != GSL_SUCCESS || !isfinite(res.val))
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("GSL could not compute the chi-squared tail for %g on %d df: %s",
						chi2, kpos - 1, gsl_strerror(status))));
	PG_RETURN_FLOAT8(res.val);
}
