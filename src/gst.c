/*-------------------------------------------------------------------------
 *
 * gst.c
 *	  experiment.gst_alpha(): the nominal significance level at each planned
 *	  look of a group-sequential test, from the Lan-DeMets alpha spending
 *	  function alpha * t^rho, by recursive numerical integration of the
 *	  score process over the continuation regions (Armitage, McPherson and
 *	  Rowe 1969; Jennison and Turnbull 2000, ch. 19).
 *
 * See doc/statistics.md, "Planned looks".
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <float.h>
#include <math.h>

#include <gsl/gsl_cdf.h>
#include <gsl/gsl_randist.h>

#include "catalog/pg_type.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/float.h"

#include "experiment.h"

/* the score S_k = Z_k sqrt(t_k) is Brownian motion: S_k ~ N(0, t_k) */
#define GST_TAIL_SD 12.0		/* grids end 12 standard deviations out */
#define GST_MIN_POINTS 4001		/* points of a grid (odd: Simpson's rule) */
#define GST_MAX_POINTS 8001
#define GST_POINTS_PER_SD 80	/* grid points per increment sd */

typedef struct Grid
{
	int			n;				/* odd */
	double		lo;
	double		hi;
	double	   *f;				/* density of S on the grid (continuation paths only) */
} Grid;

static double
grid_x(const Grid *g, int i)
{
	return g->lo + (g->hi - g->lo) * (double) i / (double) (g->n - 1);
}

/* Simpson weight of point i */
static double
grid_w(const Grid *g, int i)
{
	double		h = (g->hi - g->lo) / (double) (g->n - 1);

	if (i == 0 || i == g->n - 1)
		return h / 3.0;
	return (i % 2 ? 4.0 : 2.0) * h / 3.0;
}

/*
 * Probability that a path still going at the previous look (density g)
 * crosses at the next one: S_k = u + N(0, delta) above b, or (two-sided)
 * below -b.
 */
static double
exit_prob(const Grid *g, double delta, double b, bool two_sided)
{
	double		sd = sqrt(delta),
				sum = 0;
	int			i;

	for (i = 0; i < g->n; i++)
	{
		double		u = grid_x(g, i);
		double		p = gsl_cdf_ugaussian_Q((b - u) / sd);

		if (two_sided)
			p += gsl_cdf_ugaussian_P((-b - u) / sd);
		sum += grid_w(g, i) * g->f[i] * p;
	}
	return sum;
}

/* the boundary b with exit_prob = target, by bisection to the last bit */
static double
solve_boundary(const Grid *g, double delta, double target, bool two_sided, double scale)
{
	double		lo = 0,
				hi = scale;
	int			i;

	while (exit_prob(g, delta, hi, two_sided) > target)
	{
		lo = hi;
		hi *= 2;
		if (hi > 1e6 * scale)
			return get_float8_infinity();
	}
	for (i = 0; i < 200 && hi - lo > 4 * DBL_EPSILON * hi; i++)
	{
		double		mid = 0.5 * (lo + hi);

		CHECK_FOR_INTERRUPTS();
		if (exit_prob(g, delta, mid, two_sided) > target)
			lo = mid;
		else
			hi = mid;
	}
	return 0.5 * (lo + hi);
}

static int
grid_points(double span, double delta)
{
	double		want = span / sqrt(delta) * GST_POINTS_PER_SD;
	int			n = (int) Min((double) GST_MAX_POINTS, Max((double) GST_MIN_POINTS, want));

	return n | 1;
}

/*
 * gst_alpha(information_fractions, alpha, sides, rho): nominal alpha of each
 * look.  The spending function is alpha * min(t, 1)^rho: a fraction above 1
 * (the sample ran over the plan) spends what is left, and later looks spend
 * nothing (nominal alpha 0).  The correlations use the fractions as given.
 */
PG_FUNCTION_INFO_V1(exp_gst_alpha);
Datum
exp_gst_alpha(PG_FUNCTION_ARGS)
{
	ArrayType  *arr = PG_GETARG_ARRAYTYPE_P(0);
	double		alpha = PG_GETARG_FLOAT8(1);
	int32		sides = PG_GETARG_INT32(2);
	double		rho = PG_GETARG_FLOAT8(3);
	bool		two_sided;
	Datum	   *elems;
	bool	   *nulls;
	int			k,
				K;
	double	   *t,
				spent = 0,
				prev_t = 0;
	Datum	   *out;
	Grid		g = {0, 0, 0, NULL};

	if (!(alpha >= EXP_MIN_PROBABILITY && alpha < 1))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("alpha must be in [1e-300, 1), got %g", alpha)));
	if (sides != 1 && sides != 2)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("sides must be 1 or 2, got %d", sides)));
	if (!(rho > 0 && isfinite(rho)))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("rho must be a positive number, got %g", rho),
				 errhint("rho = 1 spends like Pocock's boundaries, rho = 3 like O'Brien-Fleming's.")));
	if (ARR_NDIM(arr) > 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("information_fractions must be a one-dimensional array")));
	deconstruct_array(arr, FLOAT8OID, sizeof(float8), FLOAT8PASSBYVAL, TYPALIGN_DOUBLE,
					  &elems, &nulls, &K);
	if (K == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("information_fractions must not be empty")));
	if (K > 100)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("information_fractions may have at most 100 looks, got %d", K)));
	t = palloc(sizeof(double) * K);
	for (k = 0; k < K; k++)
	{
		if (nulls[k])
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("information_fractions must not contain NULL (element %d)", k + 1)));
		t[k] = DatumGetFloat8(elems[k]);
		if (k == 0 && !(t[k] > 0 && isfinite(t[k])))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("information_fractions must be positive and finite, got %g at element 1", t[k]),
					 errhint("An information fraction is the share of the planned sample seen at a look, e.g. {0.25, 0.5, 0.75, 1}.")));
		if (!(t[k] > prev_t && isfinite(t[k])))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("information_fractions must be positive, finite and increasing, got %g at element %d after %g",
							t[k], k + 1, prev_t)));
		prev_t = t[k];
	}
	two_sided = sides == 2;
	out = palloc(sizeof(Datum) * K);

	for (k = 0; k < K; k++)
	{
		double		target = alpha * pow(Min(t[k], 1.0), rho) - spent,
					sd_k = sqrt(t[k]),
					b,
					nominal;
		Grid		next;
		int			i,
					j;

		if (target < 0)
			target = 0;
		if (k == 0)
		{
			/* S_1 ~ N(0, t_1): closed form */
			if (target <= 0)
				b = get_float8_infinity();
			else
				b = sd_k * gsl_cdf_ugaussian_Qinv(two_sided ? target / 2 : target);
		}
		else if (target <= 0)
			b = get_float8_infinity();
		else
			b = solve_boundary(&g, t[k] - t[k - 1], target, two_sided, sd_k);

		nominal = isinf(b) ? 0 : (two_sided ? 2 : 1) * gsl_cdf_ugaussian_Q(b / sd_k);
		out[k] = Float8GetDatum(nominal);
		spent += isinf(b) ? 0 : target;

		if (k == K - 1)
			break;

		/* the density of S_k on the continuation region, for the next look */
		next.hi = isinf(b) ? GST_TAIL_SD * sd_k : b;
		next.lo = two_sided ? -next.hi : -GST_TAIL_SD * sd_k;
		next.n = grid_points(next.hi - next.lo, t[k + 1] - t[k]);
		next.f = palloc(sizeof(double) * next.n);
		for (i = 0; i < next.n; i++)
		{
			double		s = grid_x(&next, i);

			CHECK_FOR_INTERRUPTS();
			if (k == 0)
				next.f[i] = gsl_ran_gaussian_pdf(s, sd_k);
			else
			{
				double		delta_sd = sqrt(t[k] - t[k - 1]),
							sum = 0;

				for (j = 0; j < g.n; j++)
					sum += grid_w(&g, j) * g.f[j] * gsl_ran_gaussian_pdf(s - grid_x(&g, j), delta_sd);
				next.f[i] = sum;
			}
		}
		if (g.f)
			pfree(g.f);
		g = next;
	}
	PG_RETURN_ARRAYTYPE_P(construct_array(out, K, FLOAT8OID, sizeof(float8), FLOAT8PASSBYVAL,
										  TYPALIGN_DOUBLE));
}
