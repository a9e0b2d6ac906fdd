/*-------------------------------------------------------------------------
 *
 * quantile_test.c
 *	  The quantile tests on two experiment.sketch values: unit-level
 *	  quantiles (one value per unit) and event-level quantiles (units are
 *	  clusters of events), as GrowthBook's QuantileStatistic and
 *	  QuantileClusteredStatistic (doc/statistics.md, "Quantiles").
 *
 * Each arm's quantile Q is the sketch's; its standard error comes from the
 * confidence interval [L, U] of the order statistics at probabilities
 * q -+ z sqrt(q (1 - q) / n), z = the 97.5% normal quantile:
 *	se^2 = (n - 1) / n * ((U - L) / (2 z))^2
 * and, for event-level quantiles, that is scaled by the design effect of the
 * clustering: the delta-method variance of the fraction of events at or
 * below Q, sum b_i / sum n_i over the units (b_i of the unit's n_i events
 * are <= Q), over its value q (1 - q) / n for independent events.  The
 * difference of the arms' quantiles and the lift get their intervals and
 * p-values from the shared inference (exp_test_result_datum), with the
 * normal reference distribution.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <math.h>

#include <gsl/gsl_cdf.h>

#include "utils/float.h"

#include "experiment.h"
#include "sketch.h"

/* relative tolerance of the check that the clusters' events add up to the sketch's */
#define CLUSTER_COUNT_TOLERANCE 1e-9

/*
 * One arm's quantile and the variance of it for independent values
 * (GrowthBook's QuantileStatistic.variance_init / n with n_star = n); NaN
 * when the interval's probabilities leave (0, 1) (n <= z^2 max(q / (1 - q),
 * (1 - q) / q), GrowthBook's _has_zero_variance) or n < 2.
 */
static void
quantile_arm(const Sketch *s, double q, double *value, double *var, int64 *n)
{
	double		z = gsl_cdf_ugaussian_Pinv(0.975);
	double		h,
				lo,
				hi,
				l,
				u,
				nd;

	*n = exp_sketch_n(s);
	*value = exp_sketch_quantile(s, q);
	*var = get_float8_nan();
	nd = (double) *n;
	if (*n < 2)
		return;
	h = z * sqrt(q * (1.0 - q) / nd);
	lo = q - h;
	hi = q + h;
	if (!(lo > 0) || !(hi < 1))
		return;
	l = exp_sketch_quantile(s, lo);
	u = exp_sketch_quantile(s, hi);
	*var = (nd - 1.0) / nd * ((u - l) / (2.0 * z)) * ((u - l) / (2.0 * z));
}

/*
 * The design effect of one arm's clusters: bivariate moments of (b_i, n_i)
 * over the arm's units.  Returns var_cluster / (q (1 - q) / n_events),
 * where var_cluster is the delta-method variance of sum b / sum n,
 *	(s_bb - 2 R s_bn + R^2 s_nn) / (N mean_n^2),	R = mean_b / mean_n
 * (GrowthBook's QuantileClusteredStatistic); NaN when undefined (fewer
 * than 2 units).  Checks that the clusters describe the sketch's events.
 */
static double
cluster_factor(const Moments *m, int64 n_events, double q, const char *argname, int64 *units)
{
	double		N,
				mu_b,
				mu_n,
				R,
				v;

	if (m->nvars != 2)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s of quantile_test must be bivariate experiment.moments of (b_i, n_i), got %d variable%s",
						argname, m->nvars, m->nvars == 1 ? "" : "s"),
				 errhint("Build them with experiment.moments(experiment.rank(unit_sketch, arm_quantile), experiment.n(unit_sketch)) over the arm's units.")));
	*units = m->n;
	if (m->n == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s of quantile_test holds no units", argname)));
	N = (double) m->n;
	mu_b = MOMENTS_MEAN(m, 0);
	mu_n = MOMENTS_MEAN(m, 1);
	if (fabs(N * mu_n - (double) n_events) > CLUSTER_COUNT_TOLERANCE * (double) n_events)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s count %.17g events (the sum of n_i), but the arm's sketch holds " INT64_FORMAT,
						argname, N * mu_n, n_events),
				 errhint("n_i is experiment.n() of each unit's sketch; the arm's sketch is the merge of the units' sketches.")));
	if (!(mu_b >= 0) || mu_b > mu_n * (1 + CLUSTER_COUNT_TOLERANCE))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must have 0 <= b_i <= n_i on average: mean b_i is %g, mean n_i %g",
						argname, mu_b, mu_n),
				 errhint("b_i is the number of the unit's events at or below the arm's quantile, experiment.rank(unit_sketch, experiment.quantile(arm_sketch, q)).")));
	if (m->n < 2)
		return get_float8_nan();
	R = mu_b / mu_n;
	v = (MOMENTS_COM(m, 0, 0) - 2 * R * MOMENTS_COM(m, 0, 1) + R * R * MOMENTS_COM(m, 1, 1)) / (N - 1);
	if (v < 0)
		v = 0;
	v /= N * mu_n * mu_n;
	return v / (q * (1.0 - q) / (double) n_events);
}

/* the estimate of the difference of two quantiles with their variances */
static void
quantile_estimate(Estimate *e, double qc, double var_c, double qt, double var_t)
{
	double		se2 = var_c + var_t;

	e->mean_c = qc;
	e->mean_t = qt;
	e->diff = qt - qc;
	if (qc != 0 && isfinite(qc))
		e->lift = e->diff / fabs(qc);
	if (se2 > 0 && isfinite(se2))
		e->diff_se = sqrt(se2);
	if (isfinite(e->lift) && qc != 0)
	{
		double		ratio = qt / qc;
		double		lv = (var_t + var_c * ratio * ratio) / (qc * qc);

		if (lv > 0 && isfinite(lv))
			e->lift_se = sqrt(lv);
	}
}

static double
check_q(FunctionCallInfo fcinfo)
{
	double		q;

	if (PG_ARGISNULL(2))
		return get_float8_nan();
	q = PG_GETARG_FLOAT8(2);
	if (!(q > 0 && q < 1))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("q must be in (0, 1), got %g", q),
				 errhint("q is the probability of the quantile tested, e.g. 0.99 for the 99th percentile.")));
	return q;
}

/*
 * quantile_test(control, treatment, q, alpha, alternative,
 * sequential_tuning): the difference of the q-quantiles of two sketches of
 * one value per unit.
 */
PG_FUNCTION_INFO_V1(exp_quantile_test);
Datum
exp_quantile_test(PG_FUNCTION_ARGS)
{
	Inference	inf;
	Estimate	e;
	double		q = check_q(fcinfo),
				qc,
				qt,
				vc,
				vt;
	int64		nc,
				nt;
	bool		ok = exp_get_inference(fcinfo, 3, &inf);

	if (!ok || PG_ARGISNULL(0) || PG_ARGISNULL(1) || isnan(q))
		PG_RETURN_NULL();
	quantile_arm(PG_GETARG_SKETCH_P(0), q, &qc, &vc, &nc);
	quantile_arm(PG_GETARG_SKETCH_P(1), q, &qt, &vt, &nt);
	exp_estimate_init(&e, nc, nt);
	quantile_estimate(&e, qc, vc, qt, vt);
	return exp_test_result_datum(fcinfo, &e, &inf);
}

/*
 * quantile_test(control, treatment, q, control_clusters, treatment_clusters,
 * alpha, alternative, sequential_tuning): the difference of the q-quantiles
 * of all events of two arms whose units are clusters of events; the
 * clusters are bivariate moments of (b_i, n_i) over each arm's units.
 * n_control and n_treatment are the numbers of units.
 */
PG_FUNCTION_INFO_V1(exp_quantile_test_clustered);
Datum
exp_quantile_test_clustered(PG_FUNCTION_ARGS)
{
	Inference	inf;
	Estimate	e;
	double		q = check_q(fcinfo),
				qc,
				qt,
				vc,
				vt;
	int64		nc,
				nt,
				uc,
				ut;
	bool		ok = exp_get_inference(fcinfo, 5, &inf);

	if (!ok || PG_ARGISNULL(0) || PG_ARGISNULL(1) || PG_ARGISNULL(3) || PG_ARGISNULL(4) || isnan(q))
		PG_RETURN_NULL();
	quantile_arm(PG_GETARG_SKETCH_P(0), q, &qc, &vc, &nc);
	quantile_arm(PG_GETARG_SKETCH_P(1), q, &qt, &vt, &nt);
	vc *= cluster_factor(PG_GETARG_MOMENTS_P(3), nc, q, "control_clusters", &uc);
	vt *= cluster_factor(PG_GETARG_MOMENTS_P(4), nt, q, "treatment_clusters", &ut);
	exp_estimate_init(&e, uc, ut);
	quantile_estimate(&e, qc, vc, qt, vt);
	return exp_test_result_datum(fcinfo, &e, &inf);
}
