/*-------------------------------------------------------------------------
 *
 * bandit.c
 *	  Allocation weights of a bandit experiment: the probability that each
 *	  arm is the best (and the second best) under independent Gaussian
 *	  posteriors, computed by quadrature (GSL's adaptive Gauss-Kronrod
 *	  rule), and the top-two Thompson sampling weights with a floor per arm.
 *
 * With X_i ~ N(mu_i, s_i^2) independent and a_j(x) = (x - mu_j)/s_j,
 *
 *	P(i first)	= int phi(z) prod_{j != i} Phi(a_j(mu_i + s_i z)) dz
 *	P(i second) = int phi(z) sum_{j != i} (1 - Phi(a_j)) prod_{k != i, j} Phi(a_k) dz
 *
 * One-dimensional integrals over z in [-Z, Z] (the mass of phi outside is
 * below 1e-23), so the weights are deterministic and reproducible in SQL,
 * unlike the Monte Carlo draws GrowthBook's gbstats uses for the same
 * quantities.  The top-two weight is GrowthBook's single-draw top-two rule,
 * w_i = (P(i first) + P(i second)) / 2, and the published allocation
 * p_i = f + (1 - k f) w_i keeps every arm at or above the floor f.
 * See doc/designs-holdouts.md, "Bandits".
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <math.h>

#include <gsl/gsl_errno.h>
#include <gsl/gsl_integration.h>
#include <gsl/gsl_cdf.h>
#include <gsl/gsl_randist.h>

#include "catalog/pg_type.h"
#include "utils/array.h"
#include "utils/builtins.h"

#include "experiment.h"

#define BANDIT_MAX_ARMS 100
#define BANDIT_Z 10.0
#define BANDIT_LIMIT 2000

typedef struct ArmsParams
{
	int			k;
	int			i;				/* the arm integrated over */
	int			which;			/* 1: first place, 2: second place */
	const double *mu;
	const double *sd;
	double	   *phi;			/* scratch: Phi(a_j) for every j */
	double	   *pre;			/* scratch: prefix products */
} ArmsParams;

/* phi(z) times the chance that arm i, at mu_i + s_i z, ranks first (or second) */
static double
arms_integrand(double z, void *params)
{
	ArmsParams *p = (ArmsParams *) params;
	double		x = p->mu[p->i] + p->sd[p->i] * z;
	double		dens = gsl_ran_ugaussian_pdf(z);
	int			j;

	for (j = 0; j < p->k; j++)
		p->phi[j] = (j == p->i) ? 1.0 : gsl_cdf_ugaussian_P((x - p->mu[j]) / p->sd[j]);

	if (p->which == 1)
	{
		double		prod = 1.0;

		for (j = 0; j < p->k; j++)
			prod *= p->phi[j];
		return dens * prod;
	}
	else
	{
		/* sum_j (1 - Phi_j) prod_{k != j} Phi_k with prefix and suffix products (no division) */
		double		suf = 1.0;
		double		sum = 0.0;

		p->pre[0] = 1.0;
		for (j = 1; j < p->k; j++)
			p->pre[j] = p->pre[j - 1] * p->phi[j - 1];
		for (j = p->k - 1; j >= 0; j--)
		{
			if (j != p->i)
				sum += (1.0 - p->phi[j]) * p->pre[j] * suf;
			suf *= p->phi[j];
		}
		return dens * sum;
	}
}

/* read a float8[] argument of k finite elements, no NULLs */
static double *
read_vector(ArrayType *arr, const char *what, int *k)
{
	Datum	   *elems;
	bool	   *nulls;
	int			n;
	int			i;
	double	   *out;

	if (ARR_NDIM(arr) > 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must be a one-dimensional array", what)));
	deconstruct_array(arr, FLOAT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE, &elems, &nulls, &n);
	out = palloc(sizeof(double) * (n > 0 ? n : 1));
	for (i = 0; i < n; i++)
	{
		if (nulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("%s[%d] must not be NULL", what, i + 1)));
		out[i] = DatumGetFloat8(elems[i]);
		if (!isfinite(out[i]))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("%s[%d] must be finite, got %g", what, i + 1, out[i])));
	}
	*k = n;
	return out;
}

/*
 * The arms' means and posterior variances, checked: 2 to BANDIT_MAX_ARMS
 * arms, as many variances as means, variances positive.  lower_is_better
 * negates the means (the best arm is the smallest).
 */
static void
read_arms(FunctionCallInfo fcinfo, double **mu, double **sd, int *k)
{
	int			km,
				kv,
				i;
	double	   *m = read_vector(PG_GETARG_ARRAYTYPE_P(0), "means", &km);
	double	   *v = read_vector(PG_GETARG_ARRAYTYPE_P(1), "variances", &kv);
	bool		lower = PG_GETARG_BOOL(2);

	if (km != kv)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("means and variances must have the same length, got %d and %d", km, kv)));
	if (km < 2 || km > BANDIT_MAX_ARMS)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("means must have 2 to %d arms, got %d", BANDIT_MAX_ARMS, km)));
	for (i = 0; i < km; i++)
	{
		if (!(v[i] > 0))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("variances[%d] must be positive, got %g", i + 1, v[i]),
					 errhint("An arm whose posterior variance is zero or unknown has too little data; "
							 "experiment.update_bandit_weights() keeps the weights until every arm has some.")));
		v[i] = sqrt(v[i]);
		if (lower)
			m[i] = -m[i];
	}
	*mu = m;
	*sd = v;
	*k = km;
}

/* P(first) and P(second) of every arm, each normalised to sum to 1 */
static void
arm_probabilities(const double *mu, const double *sd, int k, double *first, double *second)
{
	gsl_integration_workspace *ws = gsl_integration_workspace_alloc(BANDIT_LIMIT);
	ArmsParams	p;
	gsl_function f;
	double		s1 = 0,
				s2 = 0;
	int			i,
				which;

	if (ws == NULL)
		elog(ERROR, "out of memory for the GSL integration workspace");
	p.k = k;
	p.mu = mu;
	p.sd = sd;
	p.phi = palloc(sizeof(double) * k);
	p.pre = palloc(sizeof(double) * k);
	f.function = arms_integrand;
	f.params = &p;
	for (which = 1; which <= 2; which++)
	{
		for (i = 0; i < k; i++)
		{
			double		r,
						err;
			int			status;

			p.i = i;
			p.which = which;
			status = gsl_integration_qag(&f, -BANDIT_Z, BANDIT_Z, 1e-14, 1e-10, BANDIT_LIMIT,
										 GSL_INTEG_GAUSS61, ws, &r, &err);
			if (status != GSL_SUCCESS && status != GSL_EROUND)
			{
				gsl_integration_workspace_free(ws);
				ereport(ERROR,
						(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
						 errmsg("quadrature of the best-arm probability of arm %d failed: %s",
								i + 1, gsl_strerror(status))));
			}
			if (r < 0)
				r = 0;
			if (which == 1)
				first[i] = r, s1 += r;
			else
				second[i] = r, s2 += r;
		}
	}
	gsl_integration_workspace_free(ws);
	for (i = 0; i < k; i++)
	{
		first[i] /= s1;
		second[i] /= s2;
	}
}

static ArrayType *
make_vector(const double *x, int k)
{
	Datum	   *d = palloc(sizeof(Datum) * k);
	int			i;

	for (i = 0; i < k; i++)
		d[i] = Float8GetDatum(x[i]);
	return construct_array(d, k, FLOAT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE);
}

/*
 * best_arm_probabilities(means, variances, lower_is_better): P(arm i is the
 * best) for independent Gaussian posteriors N(means[i], variances[i]).
 */
PG_FUNCTION_INFO_V1(exp_best_arm_probabilities);
Datum
exp_best_arm_probabilities(PG_FUNCTION_ARGS)
{
	double	   *mu,
			   *sd,
			   *first,
			   *second;
	int			k;

	read_arms(fcinfo, &mu, &sd, &k);
	first = palloc(sizeof(double) * k);
	second = palloc(sizeof(double) * k);
	arm_probabilities(mu, sd, k, first, second);
	PG_RETURN_ARRAYTYPE_P(make_vector(first, k));
}

/*
 * second_arm_probabilities(means, variances, lower_is_better): P(arm i ranks
 * second) for the same posteriors.
 */
PG_FUNCTION_INFO_V1(exp_second_arm_probabilities);
Datum
exp_second_arm_probabilities(PG_FUNCTION_ARGS)
{
	double	   *mu,
			   *sd,
			   *first,
			   *second;
	int			k;

	read_arms(fcinfo, &mu, &sd, &k);
	first = palloc(sizeof(double) * k);
	second = palloc(sizeof(double) * k);
	arm_probabilities(mu, sd, k, first, second);
	PG_RETURN_ARRAYTYPE_P(make_vector(second, k));
}

/*
 * top_two_weights(means, variances, lower_is_better, min_weight): the
 * allocation f + (1 - k f) (P(first) + P(second)) / 2, clamped to [f, 1] and
 * normalised to sum to 1 (the clamp only removes rounding).
 */
PG_FUNCTION_INFO_V1(exp_top_two_weights);
Datum
exp_top_two_weights(PG_FUNCTION_ARGS)
{
	double	   *mu,
			   *sd,
			   *first,
			   *second,
			   *w;
	double		f = PG_GETARG_FLOAT8(3);
	double		s = 0;
	int			k,
				i;

	read_arms(fcinfo, &mu, &sd, &k);
	if (!(f >= 0 && f * k <= 1))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("min_weight must be in [0, 1/%d] for %d arms, got %g", k, k, f)));
	first = palloc(sizeof(double) * k);
	second = palloc(sizeof(double) * k);
	w = palloc(sizeof(double) * k);
	arm_probabilities(mu, sd, k, first, second);
	for (i = 0; i < k; i++)
	{
		w[i] = f + (1.0 - k * f) * 0.5 * (first[i] + second[i]);
		if (w[i] < f)
			w[i] = f;
		if (w[i] > 1)
			w[i] = 1;
		s += w[i];
	}
	for (i = 0; i < k; i++)
	{
		w[i] /= s;
		if (w[i] < f)			/* renormalising may leave f by an ulp */
			w[i] = f;
	}
	PG_RETURN_ARRAYTYPE_P(make_vector(w, k));
}
