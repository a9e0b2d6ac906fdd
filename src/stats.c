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
#include "utils/builtins.h"
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
	TR_DIFF_SE,
	TR_LIFT_SE,
	TR_NCOLS
};

typedef struct TestResult
{
	int64		n_control;
	int64		n_treatment;
	double		v[TR_NCOLS];	/* float columns; NaN = NULL */
} TestResult;

/*
 * An estimate: what an estimator (Welch, proportions, CUPED, ratio) makes of
 * the two arms, before any inference.  NaN is "undefined".
 */

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
	for (i = 0; i < 100; i++)
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
		/*
		 * Quadratic convergence: after a step this small only the tail's own
		 * accuracy (about 1e-13 relative) is left, and further steps only
		 * oscillate on it.
		 */
		if (fabs(step) <= 1e-12)
			break;
	}
	return x;
}

/* two-sided p-value of a z statistic */
/* two-sided p-value of a z statistic */
static double
z_p_value(double z)
{
	if (isnan(z))
		return get_float8_nan();
	return Min(1.0, 2.0 * gsl_cdf_ugaussian_Q(fabs(z)));
}

/* P(X > x) of the reference distribution: Student's t with df, or normal */
static double
ref_sf(double x, double df)
{
	if (isnan(x))
		return get_float8_nan();
	if (isnan(df))
		return gsl_cdf_ugaussian_Q(x);
	return x >= 0 ? t_sf(x, df) : 1.0 - t_sf(-x, df);
}

/* the x with P(X > x) = p, 0 < p < 0.5, of the reference distribution */
static double
ref_isf(double p, double df)
{
	return isnan(df) ? gsl_cdf_ugaussian_Qinv(p) : t_isf(p, df);
}

/* ---------- argument checks ---------- */

static void
check_alpha(double alpha)
{
	if (!(alpha >= EXP_MIN_PROBABILITY && alpha < 1))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("alpha must be in [1e-300, 1), got %g", alpha),
				 errhint("alpha is the significance level, e.g. 0.05 for a 95%% confidence interval.")));
}

static void
check_nvars(const Moments *m, int want, const char *argname, const char *test)
{
	if (m->nvars != want)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s of %s must be %s experiment.moments, got %d variable%s",
						argname, test, want == 1 ? "univariate" : want == 2 ? "bivariate" : "4-variable",
						m->nvars, m->nvars == 1 ? "" : "s"),
				 want == 1 ?
				 errhint("Build them with experiment.moments(y).") :
				 want == 2 ?
				 errhint("Build them with experiment.moments(y, x).") :
				 errhint("Build them with experiment.moments(numerator, denominator, pre_numerator, pre_denominator).")));
}

/*
 * alternative: 'two-sided', 'greater' (treatment above control) or 'less',
 * scipy's words.
 */
Alternative
exp_parse_alternative(const char *s)
{
	if (strcmp(s, "two-sided") == 0)
		return ALT_TWO_SIDED;
	if (strcmp(s, "greater") == 0)
		return ALT_GREATER;
	if (strcmp(s, "less") == 0)
		return ALT_LESS;
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("invalid alternative \"%s\"", exp_message_clip(s, -1)),
			 errhint("Use two-sided, greater (treatment above control) or less.")));
	return ALT_TWO_SIDED;		/* keep the compiler quiet */
}

/*
 * sequential_tuning: the expected total sample size N*, in [1, 1e15] (the
 * planning functions' range of sample sizes; far outside it the sequence's
 * rho overflows or underflows)
 */
void
exp_check_tuning(double tuning)
{
	if (!(tuning >= 1 && tuning <= 1e15))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("sequential_tuning must be in [1, 1e15], got %g", tuning),
				 errhint("It is the expected total sample size N* of the experiment, e.g. 20000; NULL is the fixed-horizon test.")));
}

/*
 * The inference arguments (alpha, alternative, sequential_tuning) of a test
 * function at argument positions first, first + 1, first + 2.  Returns false
 * when alpha or alternative is NULL (the test is then NULL); a NULL
 * sequential_tuning is the fixed-horizon test.
 */
bool
exp_get_inference(FunctionCallInfo fcinfo, int first, Inference *inf)
{
	inf->alpha = get_float8_nan();
	inf->alternative = ALT_TWO_SIDED;
	if (!PG_ARGISNULL(first))
	{
		inf->alpha = PG_GETARG_FLOAT8(first);
		check_alpha(inf->alpha);
	}
	if (!PG_ARGISNULL(first + 1))
		inf->alternative = exp_parse_alternative(text_to_cstring(PG_GETARG_TEXT_PP(first + 1)));
	inf->tuning = get_float8_nan();
	if (PG_NARGS() > first + 2 && !PG_ARGISNULL(first + 2))
	{
		inf->tuning = PG_GETARG_FLOAT8(first + 2);
		exp_check_tuning(inf->tuning);
		if (inf->alternative != ALT_TWO_SIDED && !(inf->alpha < 0.5))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("alpha must be below 0.5 for a one-sided sequential test, got %g", inf->alpha)));
	}
	return !PG_ARGISNULL(first) && !PG_ARGISNULL(first + 1);
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
 * Form the experiment.test_result tuple.  NaN is NULL; the bounds of the
 * intervals may be -Infinity or Infinity (one-sided intervals), every other
 * non-finite value is NULL.
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
		bool		bound = i == TR_DIFF_LOWER || i == TR_DIFF_UPPER ||
			i == TR_LIFT_LOWER || i == TR_LIFT_UPPER;

		nulls[i] = bound ? isnan(r->v[i]) : !isfinite(r->v[i]);
		values[i] = nulls[i] ? (Datum) 0 : Float8GetDatum(r->v[i]);
	}
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}

/* ---------- inference: an estimate and its standard error to a result ---------- */

/*
 * rho of the asymptotic confidence sequence for significance level a
 * (Waudby-Smith et al. 2023, eq. 161, as GrowthBook parameterises it):
 *	rho = sqrt((-2 ln a + ln(-2 ln a + 1)) / N*)
 * a is alpha for two-sided sequences and 2 alpha for one-sided ones.
 */
static double
seq_rho(double a, double tuning)
{
	double		l = -2.0 * log(a);

	return sqrt((l + log(l + 1.0)) / tuning);
}

/*
 * Half-width of the sequence around an estimate with standard error se
 * after n units (both arms), s^2 = se^2 n:
 *	two-sided: s sqrt(2 (n rho^2 + 1) ln(sqrt(n rho^2 + 1) / alpha) / (n rho)^2)
 *	one-sided: s sqrt(2 (n rho^2 + 1) ln(1 + sqrt(n rho^2 + 1) / (2 alpha)) / (n rho)^2)
 */
double
exp_seq_halfwidth(double se, double n, double alpha, double tuning, bool two_sided)
{
	double		rho = seq_rho(two_sided ? alpha : 2.0 * alpha, tuning);
	double		nr2 = n * rho * rho;
	double		s2 = se * se * n;
	double		lg = two_sided ? log(sqrt(nr2 + 1.0) / alpha)
		: log1p(sqrt(nr2 + 1.0) / (2.0 * alpha));

	return sqrt(s2 * 2.0 * (nr2 + 1.0) * lg / (n * n * rho * rho));
}

/*
 * Always-valid p-value of a two-sided sequence (Waudby-Smith et al. 2023,
 * eq. 155): p = min(1, 1/E), E = exp(rho^2 st2 / (2 (n rho^2 + 1))) /
 * sqrt(n rho^2 + 1), st2 = est^2 n / se^2; computed in logarithms.
 */
static double
seq_p_two_sided(double est, double se, double n, double alpha, double tuning)
{
	double		rho = seq_rho(alpha, tuning);
	double		nr2 = n * rho * rho;
	double		z = est / se;
	double		log_e = rho * rho * z * z * n / (2.0 * (nr2 + 1.0)) - 0.5 * log(nr2 + 1.0);

	return log_e <= 0 ? 1.0 : exp(-log_e);
}

/*
 * Always-valid p-value of a one-sided sequence: the alpha at which the
 * one-sided bound reaches 0 with rho held at the test's own alpha, as the
 * two-sided p-value is (solving est = half-width for alpha gives exactly
 * 1/E there).  With K = est^2 n rho^2 / (2 se^2 (n rho^2 + 1)):
 *	p = sqrt(n rho^2 + 1) / (2 (e^K - 1))
 * for an estimate on the alternative's side, else 1; so p <= alpha exactly
 * when the one-sided bound excludes 0.
 */
static double
seq_p_one_sided(double est, double se, double n, double alpha, double tuning, Alternative alt)
{
	double		rho = seq_rho(2.0 * alpha, tuning);
	double		nr2 = n * rho * rho;
	double		e = alt == ALT_GREATER ? est : -est;
	double		k,
				p;

	if (!(e > 0))
		return 1.0;
	k = (e / se) * (e / se) * n * rho * rho / (2.0 * (nr2 + 1.0));
	/* sqrt(nr2 + 1) / 2 * exp(-k) / (1 - exp(-k)), in logarithms */
	p = exp(log(0.5) + 0.5 * log(nr2 + 1.0) - k - log(-expm1(-k)));
	return Min(1.0, p);
}

/*
 * Interval and p-value of one estimate: est with standard error se (the
 * statistic's null standard error null_se) under the inference; df NaN is
 * the normal distribution.
 */
static void
infer_one(double est, double se, double null_se, double df, int64 n_c, int64 n_t,
		  const Inference *inf, double *lower, double *upper, double *stat, double *p)
{
	double		q,
				n = (double) n_c + (double) n_t;

	bool		se_ok = se > 0 && isfinite(se);

	*lower = *upper = *p = get_float8_nan();
	if (stat)
		*stat = get_float8_nan();
	if (!isfinite(est))
		return;
	if (!(null_se > 0) || !isfinite(null_se))
		null_se = se;

	if (isnan(inf->tuning))
	{
		double		z = est / null_se;

		if (!(null_se > 0) || !isfinite(null_se))
			return;
		if (stat)
			*stat = z;
		if (!se_ok)
		{
			/* a statistic without an interval (proportions of 0 and 1) */
			*p = inf->alternative == ALT_TWO_SIDED ? (isnan(df) ? z_p_value(z) : t_p_value(z, df))
				: ref_sf(inf->alternative == ALT_GREATER ? z : -z, df);
			return;
		}
		switch (inf->alternative)
		{
			case ALT_TWO_SIDED:
				*p = isnan(df) ? z_p_value(z) : t_p_value(z, df);
				q = ref_isf(inf->alpha / 2, df);
				*lower = est - q * se;
				*upper = est + q * se;
				break;
			case ALT_GREATER:
				*p = ref_sf(z, df);
				*lower = est - ref_isf(inf->alpha, df) * se;
				*upper = get_float8_infinity();
				break;
			case ALT_LESS:
				*p = ref_sf(-z, df);
				*lower = -get_float8_infinity();
				*upper = est + ref_isf(inf->alpha, df) * se;
				break;
		}
		return;
	}

	/* sequential: the estimate's own standard error throughout */
	if (!se_ok)
		return;
	if (stat)
		*stat = est / se;
	switch (inf->alternative)
	{
		case ALT_TWO_SIDED:
			q = exp_seq_halfwidth(se, n, inf->alpha, inf->tuning, true);
			*lower = est - q;
			*upper = est + q;
			*p = seq_p_two_sided(est, se, n, inf->alpha, inf->tuning);
			break;
		case ALT_GREATER:
			*lower = est - exp_seq_halfwidth(se, n, inf->alpha, inf->tuning, false);
			*upper = get_float8_infinity();
			*p = seq_p_one_sided(est, se, n, inf->alpha, inf->tuning, ALT_GREATER);
			break;
		case ALT_LESS:
			*lower = -get_float8_infinity();
			*upper = est + exp_seq_halfwidth(se, n, inf->alpha, inf->tuning, false);
			*p = seq_p_one_sided(est, se, n, inf->alpha, inf->tuning, ALT_LESS);
			break;
	}
}

/*
 * The one place where an estimate becomes a result: the difference and the
 * lift each get their interval and p-value under the inference.
 */
static void
infer(TestResult *r, const Estimate *e, const Inference *inf)
{
	bool		sequential = !isnan(inf->tuning);
	double		df = sequential ? get_float8_nan() : e->df;

	result_init(r, e->n_c, e->n_t);
	r->v[TR_MEAN_CONTROL] = e->mean_c;
	r->v[TR_MEAN_TREATMENT] = e->mean_t;
	r->v[TR_DIFF] = e->diff;
	r->v[TR_LIFT] = e->lift;
	r->v[TR_DF] = df;
	r->v[TR_DIFF_SE] = e->diff_se;
	infer_one(e->diff, e->diff_se, sequential ? e->diff_se : e->null_se, df, e->n_c, e->n_t, inf,
			  &r->v[TR_DIFF_LOWER], &r->v[TR_DIFF_UPPER], &r->v[TR_STATISTIC], &r->v[TR_P_VALUE]);
	if (isfinite(e->lift) && e->lift_se > 0 && isfinite(e->lift_se))
	{
		r->v[TR_LIFT_SE] = e->lift_se;
		infer_one(e->lift, e->lift_se, e->lift_se, df, e->n_c, e->n_t, inf,
				  &r->v[TR_LIFT_LOWER], &r->v[TR_LIFT_UPPER], NULL, &r->v[TR_LIFT_P_VALUE]);
	}
}

/* an estimate to its experiment.test_result under the inference (experiment.h) */
Datum
exp_test_result_datum(FunctionCallInfo fcinfo, const Estimate *e, const Inference *inf)
{
	TestResult	r;

	infer(&r, e, inf);
	return result_datum(fcinfo, &r);
}

/* ---------- estimators ---------- */

void
exp_estimate_init(Estimate *e, int64 n_c, int64 n_t)
{
	e->n_c = n_c;
	e->n_t = n_t;
	e->mean_c = e->mean_t = e->diff = e->diff_se = e->null_se = get_float8_nan();
	e->lift = e->lift_se = e->df = get_float8_nan();
}

/* mean of variable i, NaN when there are no observations */
static double
mean_or_nan(const Moments *m, int i)
{
	return m->n > 0 ? MOMENTS_MEAN(m, i) : get_float8_nan();
}

/*
 * A difference of means estimated from per-unit variances var_c, var_t of
 * what enters it (Welch):
 *	se^2 = var_c/n_c + var_t/n_t
 *	df = se^4 / ((var_c/n_c)^2/(n_c-1) + (var_t/n_t)^2/(n_t-1))	(Satterthwaite)
 * and the lift diff/|mean_c| with its delta-method variance
 *	(var_t/n_t + var_c_lift/n_c) / mean_c^2
 * where var_c_lift is the per-unit variance of the combination that the
 * control enters the lift with.
 */
static void
welch_estimate(Estimate *e, double var_c, double var_t, double var_c_lift)
{
	double		a,
				b,
				se2;

	if (e->mean_c != 0 && isfinite(e->mean_c))
		e->lift = e->diff / fabs(e->mean_c);
	if (e->n_c < 2 || e->n_t < 2)
		return;
	a = var_c / (double) e->n_c;
	b = var_t / (double) e->n_t;
	se2 = a + b;
	if (!(se2 > 0) || !isfinite(se2) || !isfinite(e->diff))
		return;
	e->diff_se = sqrt(se2);
	/* Satterthwaite df, scaled so that tiny variances do not underflow */
	a /= se2;
	b /= se2;
	e->df = 1.0 / (a * a / (double) (e->n_c - 1) + b * b / (double) (e->n_t - 1));
	if (isfinite(e->lift))
	{
		double		lv = (var_t / (double) e->n_t + var_c_lift / (double) e->n_c) /
			(e->mean_c * e->mean_c);

		if (lv > 0 && isfinite(lv))
			e->lift_se = sqrt(lv);
	}
}

/* Welch: univariate moments */
static void
welch_moments_estimate(Estimate *e, const Moments *c, const Moments *t)
{
	double		ratio;

	exp_estimate_init(e, c->n, t->n);
	e->mean_c = mean_or_nan(c, 0);
	e->mean_t = mean_or_nan(t, 0);
	e->diff = e->mean_t - e->mean_c;
	/* v_t/(mu_c^2 n_t) + v_c mu_t^2/(mu_c^4 n_c) */
	ratio = e->mean_t / e->mean_c;
	welch_estimate(e, exp_moments_variance(c, 0), exp_moments_variance(t, 0),
				   exp_moments_variance(c, 0) * ratio * ratio);
}

/*
 * Proportions x/n: the difference with its unpooled (Wald) standard error
 * and, for the fixed-horizon statistic, the pooled one; the lift by the
 * delta method; normal reference distribution.
 */
static void
prop_estimate(Estimate *e, int64 x_c, int64 n_c, int64 x_t, int64 n_t)
{
	double		p_c,
				p_t,
				pooled,
				se,
				se0;

	exp_estimate_init(e, n_c, n_t);
	p_c = n_c > 0 ? (double) x_c / (double) n_c : get_float8_nan();
	p_t = n_t > 0 ? (double) x_t / (double) n_t : get_float8_nan();
	e->mean_c = p_c;
	e->mean_t = p_t;
	if (n_c == 0 || n_t == 0)
		return;
	e->diff = p_t - p_c;
	pooled = ((double) x_c + (double) x_t) / ((double) n_c + (double) n_t);
	se0 = sqrt(pooled * (1 - pooled) * (1.0 / (double) n_c + 1.0 / (double) n_t));
	se = sqrt(p_c * (1 - p_c) / (double) n_c + p_t * (1 - p_t) / (double) n_t);
	if (se0 > 0)
		e->null_se = se0;
	if (se > 0)
		e->diff_se = se;		/* else both arms constant: no interval */
	if (p_c > 0)
	{
		double		ratio = p_t / p_c;
		double		lv = (p_t * (1 - p_t) / (double) n_t +
						  p_c * (1 - p_c) * ratio * ratio / (double) n_c) / (p_c * p_c);

		e->lift = e->diff / p_c;
		if (lv > 0)
			e->lift_se = sqrt(lv);
	}
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
 * CUPED: Welch on y - theta (x - mean x), theta pooled over both arms (0
 * when x does not vary); means are reported unadjusted.  The lift variance
 * is v_t,adj/(n_t mu_c^2) + var_c(r y - theta x)/(n_c mu_c^2), r = mu_t/mu_c.
 */
static void
cuped_estimate(Estimate *e, const Moments *c, const Moments *t)
{
	Moments    *pooled = exp_moments_copy(c);
	double		theta,
				ratio;

	exp_moments_merge_into(pooled, t);
	theta = cuped_theta_of(pooled);
	if (isnan(theta))
		theta = 0;				/* var_x = 0: the plain Welch test */
	exp_estimate_init(e, c->n, t->n);
	e->mean_c = mean_or_nan(c, 0);
	e->mean_t = mean_or_nan(t, 0);
	e->diff = (e->mean_t - e->mean_c) - theta * (mean_or_nan(t, 1) - mean_or_nan(c, 1));
	ratio = e->mean_t / e->mean_c;
	welch_estimate(e, combo_variance(c, 1, -theta), combo_variance(t, 1, -theta),
				   combo_variance(c, ratio, -theta));
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

/* ratio metrics: Welch on the arms' delta-method variances */
static void
ratio_estimate(Estimate *e, const Moments *c, const Moments *t)
{
	double		var_c,
				var_t,
				ratio;

	exp_estimate_init(e, c->n, t->n);
	ratio_arm(c, &e->mean_c, &var_c);
	ratio_arm(t, &e->mean_t, &var_t);
	e->diff = e->mean_t - e->mean_c;
	ratio = e->mean_t / e->mean_c;
	welch_estimate(e, var_c, var_t, var_c * ratio * ratio);
}

/* ---------- CUPED for ratio metrics ---------- */

/*
 * a' C b / (n - 1): the sample covariance of the linear combinations a'z and
 * b'z of the moments' variables z; NaN when n < 2
 */
static double
moments_bilinear(const Moments *m, const double *a, const double *b)
{
	double		s = 0;

	if (m->n < 2)
		return get_float8_nan();
	for (int i = 0; i < m->nvars; i++)
		for (int j = 0; j < m->nvars; j++)
			s += a[i] * b[j] * MOMENTS_COM(m, i, j);
	return s / (double) (m->n - 1);
}

/*
 * One arm of a ratio metric with its pre-period: 4-variable moments of
 * (numerator, denominator, pre-numerator, pre-denominator) per unit.  The
 * arm's ratios R = mean(num)/mean(den) and Rp (pre-period), and the
 * gradients of R and Rp in the four means, which linearise them per unit
 * (delta method): R ~ R + g'(z - mean z).
 */
typedef struct
{
	double		r,
				rp;
	double		g[4],
				gp[4];
} RatioArm;

static void
ratio_arm_pre(const Moments *m, RatioArm *a)
{
	double		mu[4];

	for (int i = 0; i < 4; i++)
		mu[i] = m->n > 0 ? MOMENTS_MEAN(m, i) : get_float8_nan();
	a->r = mu[1] != 0 ? mu[0] / mu[1] : get_float8_nan();
	a->rp = mu[3] != 0 ? mu[2] / mu[3] : get_float8_nan();
	memset(a->g, 0, sizeof a->g);
	memset(a->gp, 0, sizeof a->gp);
	a->g[0] = 1 / mu[1];
	a->g[1] = -mu[0] / (mu[1] * mu[1]);
	a->gp[2] = 1 / mu[3];
	a->gp[3] = -mu[2] / (mu[3] * mu[3]);
}

/*
 * theta of CUPED for ratio metrics: the covariance of the linearised ratio
 * and pre-period ratio over the variance of the latter, each summed over the
 * two arms (GrowthBook's RegressionAdjustedRatioStatistic, doc/statistics.md);
 * 0 where it is undefined (no variance of the pre-period ratio, n < 2).
 */
static double
cuped_ratio_theta_of(const Moments *c, const Moments *t)
{
	RatioArm	ac,
				at;
	double		num,
				den;

	ratio_arm_pre(c, &ac);
	ratio_arm_pre(t, &at);
	/* an arm of fewer than 2 units adds nothing (GrowthBook: its covariance and variance are 0) */
	num = (c->n >= 2 ? moments_bilinear(c, ac.g, ac.gp) : 0) + (t->n >= 2 ? moments_bilinear(t, at.g, at.gp) : 0);
	den = (c->n >= 2 ? moments_bilinear(c, ac.gp, ac.gp) : 0) + (t->n >= 2 ? moments_bilinear(t, at.gp, at.gp) : 0);
	if (!isfinite(num) || !isfinite(den) || !(den > 0))
		return 0;
	return num / den;
}

/*
 * CUPED for ratio metrics: Welch on R - theta Rp per arm, with per-unit
 * variances of the linearisation (g - theta gp)' z.  The lift D/|R_c| of the
 * adjusted difference D enters the control through D and R_c: its exact
 * gradient gives the control part ((1 + D/R_c) g - theta gp)' z (as
 * GrowthBook's frequentist_variance_relative_cuped_ratio; cuped_estimate
 * scales by R_t/R_c instead, as GrowthBook's CUPED of means).  Means are
 * reported unadjusted (R_c, R_t).
 */
static void
cuped_ratio_estimate(Estimate *e, const Moments *c, const Moments *t)
{
	RatioArm	ac,
				at;
	double		theta = cuped_ratio_theta_of(c, t),
				ratio,
				lc[4],
				lt[4],
				llift[4];

	exp_estimate_init(e, c->n, t->n);
	ratio_arm_pre(c, &ac);
	ratio_arm_pre(t, &at);
	e->mean_c = ac.r;
	e->mean_t = at.r;
	if (theta == 0)
	{
		/* no adjustment: the plain ratio test, whatever the pre-period (even undefined) */
		memset(ac.gp, 0, sizeof ac.gp);
		memset(at.gp, 0, sizeof at.gp);
		ac.rp = at.rp = 0;
	}
	e->diff = (at.r - ac.r) - theta * (at.rp - ac.rp);
	ratio = 1 + e->diff / ac.r;
	for (int i = 0; i < 4; i++)
	{
		lc[i] = ac.g[i] - theta * ac.gp[i];
		lt[i] = at.g[i] - theta * at.gp[i];
		llift[i] = ratio * ac.g[i] - theta * ac.gp[i];
	}
	if (!isfinite(e->diff))
	{
		e->diff = get_float8_nan();
		return;
	}
	welch_estimate(e, moments_bilinear(c, lc, lc), moments_bilinear(t, lt, lt),
				   moments_bilinear(c, llift, llift));
}

/* ---------- the SQL test functions ---------- */

/*
 * The tests on two moments arguments: the estimator by name, then the
 * inference of arguments 2..4.  NULL moments, alpha or alternative give NULL
 * (after the other arguments are checked).
 */
static Datum
moments_test(FunctionCallInfo fcinfo, const char *name, int nvars,
			 void (*estimator) (Estimate *, const Moments *, const Moments *))
{
	Inference	inf;
	Moments    *c,
			   *t;
	Estimate	e;
	TestResult	r;

	if (!exp_get_inference(fcinfo, 2, &inf) || PG_ARGISNULL(0) || PG_ARGISNULL(1))
		PG_RETURN_NULL();
	c = PG_GETARG_MOMENTS_P(0);
	t = PG_GETARG_MOMENTS_P(1);
	check_nvars(c, nvars, "control", name);
	check_nvars(t, nvars, "treatment", name);
	estimator(&e, c, t);
	infer(&r, &e, &inf);
	return result_datum(fcinfo, &r);
}

/*
 * welch_ttest(control, treatment, alpha, alternative, sequential_tuning):
 * Welch's unequal-variances t-test of mean(treatment) - mean(control) from
 * univariate moments.
 */
PG_FUNCTION_INFO_V1(exp_welch_ttest);
Datum
exp_welch_ttest(PG_FUNCTION_ARGS)
{
	return moments_test(fcinfo, "welch_ttest", 1, welch_moments_estimate);
}

/*
 * welch_ttest_final(state): final function of the welch_ttest(boolean,
 * float8) aggregate; the state is experiment.moments[] = [control, treatment].
 * Fixed horizon, two-sided, alpha 0.05.
 */
PG_FUNCTION_INFO_V1(exp_welch_ttest_final);
Datum
exp_welch_ttest_final(PG_FUNCTION_ARGS)
{
	ArrayType  *arr = PG_GETARG_ARRAYTYPE_P(0);
	Datum	   *elems;
	bool	   *elnulls;
	int			nelems;
	Moments    *g[2];
	int			i;
	Estimate	e;
	Inference	inf = {0.05, ALT_TWO_SIDED, get_float8_nan()};
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
	welch_moments_estimate(&e, g[0], g[1]);
	infer(&r, &e, &inf);
	return result_datum(fcinfo, &r);
}

/*
 * prop_ztest(x_control, n_control, x_treatment, n_treatment, alpha,
 * alternative, sequential_tuning): the two-proportion z-test.  The
 * fixed-horizon z uses the pooled standard error, the interval the unpooled
 * (Wald) one, the lift the delta method; a sequential test uses the unpooled
 * one throughout.  df is NULL.
 */
PG_FUNCTION_INFO_V1(exp_prop_ztest);
Datum
exp_prop_ztest(PG_FUNCTION_ARGS)
{
	int64		x_c,
				n_c,
				x_t,
				n_t;
	Inference	inf;
	Estimate	e;
	TestResult	r;

	bool		ok = exp_get_inference(fcinfo, 4, &inf);

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1) || PG_ARGISNULL(2) || PG_ARGISNULL(3))
		PG_RETURN_NULL();
	x_c = PG_GETARG_INT64(0);
	n_c = PG_GETARG_INT64(1);
	x_t = PG_GETARG_INT64(2);
	n_t = PG_GETARG_INT64(3);
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
	if (!ok)
		PG_RETURN_NULL();
	prop_estimate(&e, x_c, n_c, x_t, n_t);
	infer(&r, &e, &inf);
	return result_datum(fcinfo, &r);
}

/*
 * cuped_ttest(control, treatment, alpha, alternative, sequential_tuning):
 * Welch's t-test on the CUPED-adjusted metric y - theta (x - mean x), theta
 * pooled over both arms.  Means are reported unadjusted.
 */
PG_FUNCTION_INFO_V1(exp_cuped_ttest);
Datum
exp_cuped_ttest(PG_FUNCTION_ARGS)
{
	return moments_test(fcinfo, "cuped_ttest", 2, cuped_estimate);
}

/*
 * cuped_ratio_ttest(control, treatment, alpha, alternative,
 * sequential_tuning): Welch's t-test of a ratio metric adjusted by its
 * pre-period ratio (CUPED for ratio metrics), from 4-variable moments of
 * (numerator, denominator, pre-numerator, pre-denominator).
 */
PG_FUNCTION_INFO_V1(exp_cuped_ratio_ttest);
Datum
exp_cuped_ratio_ttest(PG_FUNCTION_ARGS)
{
	return moments_test(fcinfo, "cuped_ratio_ttest", 4, cuped_ratio_estimate);
}

/*
 * cuped_ratio_theta(control, treatment): the theta cuped_ratio_ttest uses
 * (0 where it is undefined).
 */
PG_FUNCTION_INFO_V1(exp_cuped_ratio_theta);
Datum
exp_cuped_ratio_theta(PG_FUNCTION_ARGS)
{
	Moments    *c = PG_GETARG_MOMENTS_P(0);
	Moments    *t = PG_GETARG_MOMENTS_P(1);

	check_nvars(c, 4, "control", "cuped_ratio_theta");
	check_nvars(t, 4, "treatment", "cuped_ratio_theta");
	PG_RETURN_FLOAT8(cuped_ratio_theta_of(c, t));
}

/*
 * cuped_theta(m): cov(y, x)/var(x) of bivariate moments; NULL when var(x) is
 * zero or n < 2.  For the pooled theta of a test, pass control + treatment.
 */
PG_FUNCTION_INFO_V1(exp_cuped_theta);
Datum
exp_cuped_theta(PG_FUNCTION_ARGS)
{
	Moments    *m = PG_GETARG_MOMENTS_P(0);
	double		theta;

	check_nvars(m, 2, "m", "cuped_theta");
	theta = cuped_theta_of(m);
	if (!isfinite(theta))
		PG_RETURN_NULL();
	PG_RETURN_FLOAT8(theta);
}

/* a finite float8 argument of cuped_adjust */
static void
check_finite_arg(double v, const char *argname)
{
	if (!isfinite(v))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must be finite, got %g", argname, v)));
}

/*
 * cuped_adjust(y, x, theta, mean_x): the CUPED-adjusted value
 * y - theta (x - mean_x).  Every argument must be finite; a result beyond
 * the range of float8 is an error, as in float8 arithmetic.
 */
PG_FUNCTION_INFO_V1(exp_cuped_adjust_value);
Datum
exp_cuped_adjust_value(PG_FUNCTION_ARGS)
{
	double		y = PG_GETARG_FLOAT8(0);
	double		x = PG_GETARG_FLOAT8(1);
	double		theta = PG_GETARG_FLOAT8(2);
	double		mean_x = PG_GETARG_FLOAT8(3);
	double		r;

	check_finite_arg(y, "y");
	check_finite_arg(x, "x");
	check_finite_arg(theta, "theta");
	check_finite_arg(mean_x, "mean_x");
	r = y - theta * (x - mean_x);
	if (!isfinite(r))
		ereport(ERROR,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("cuped_adjust: the adjusted value %g - %g * (%g - %g) is out of the range of float8",
						y, theta, x, mean_x)));
	PG_RETURN_FLOAT8(r);
}

/*
 * cuped_adjust(m, theta, mean_x): the univariate moments of
 * y - theta (x - mean_x), exactly, from the bivariate moments of (y, x):
 *	mean = mean_y - theta (mean_x(m) - mean_x)
 *	C = C_yy - 2 theta C_xy + theta^2 C_xx
 */
PG_FUNCTION_INFO_V1(exp_cuped_adjust_moments);
Datum
exp_cuped_adjust_moments(PG_FUNCTION_ARGS)
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
	res = exp_moments_new(1);
	res->n = m->n;
	if (m->n > 0)
	{
		res->data[0] = MOMENTS_MEAN(m, 0) - theta * (MOMENTS_MEAN(m, 1) - mean_x);
		res->data[1] = m->n > 1 ? combo_comoment(m, 1, -theta) : 0;
	}
	exp_moments_check_finite(res, "cuped_adjust");
	PG_RETURN_MOMENTS_P(res);
}

/*
 * ratio_ttest(control, treatment, alpha, alternative, sequential_tuning):
 * Welch's t-test of a ratio metric sum(num)/sum(den) per arm, from bivariate
 * moments of each unit's (numerator, denominator), with delta-method
 * variances.
 */
PG_FUNCTION_INFO_V1(exp_ratio_ttest);
Datum
exp_ratio_ttest(PG_FUNCTION_ARGS)
{
	return moments_test(fcinfo, "ratio_ttest", 2, ratio_estimate);
}

/* ---------- sample ratio mismatch ---------- */

/*
 * srm_chisq(observed, weights): p-value of Pearson's chi-squared test of the
 * observed counts against the split given by the weights (NULL: equal).
 * df = k - 1 over the k arms with a positive weight.
 */
PG_FUNCTION_INFO_V1(exp_srm_chisq);
Datum
exp_srm_chisq(PG_FUNCTION_ARGS)
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
