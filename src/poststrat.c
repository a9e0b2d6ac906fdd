/*-------------------------------------------------------------------------
 *
 * poststrat.c
 *	  Post-stratified two-arm tests: poststrat_ttest(method, control[],
 *	  treatment[], ...) combines per-stratum estimates (Welch, proportions,
 *	  CUPED, ratio metrics, CUPED for ratio metrics) with the strata's shares
 *	  of all units as weights.
 *
 * control[k] and treatment[k] are the moments of stratum k in each arm.
 * Strata that cannot give an estimate of their own (an arm with fewer than
 * two units or without variance; for CUPED of ratio metrics also fewer than
 * seven units) are merged into the largest stratum, as GrowthBook's
 * post-stratification does (doc/statistics.md, "Post-stratification").
 * With weights w_k = n_k / N:
 *
 *	mean_a = sum_k w_k f_a,k			(ratio metrics: sum w num / sum w den)
 *	diff   = sum_k w_k D_k				(the stratum's difference, CUPED-adjusted
 *										 with the stratum's own theta; ratio
 *										 metrics: R_t - R_c of the combined
 *										 ratios, minus sum_k w_k theta_k
 *										 (Rp_t,k - Rp_c,k) with CUPED)
 *	var    = sum_{k,a} g' S_a,k g / n_a,k + the variance of the estimated weights
 *
 * where g is the gradient of the statistic in the arm-stratum means (delta
 * method; exact for the linear cases) and the last term is
 * sum_k w_k (b_k - b)^2 / N with b_k the derivative in w_k (the multinomial
 * covariance of the weights, as GrowthBook's PostStratificationSummary),
 * less the part of it that is the noise of the b_k (weights_variance).
 * With one stratum every estimate is that of the unstratified test.  The
 * estimate then goes through the shared inference (exp_test_result_datum).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <float.h>
#include <math.h>

#include "catalog/pg_type.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/float.h"

#include "experiment.h"

typedef enum
{
	PS_WELCH,
	PS_PROP,
	PS_CUPED,
	PS_RATIO,
	PS_CUPED_RATIO
} PsMethod;

static const char *const method_names[] = {"welch", "prop_ztest", "cuped", "ratio", "cuped_ratio"};
static const int method_nvars[] = {1, 1, 2, 2, 4};

/* one stratum (or several merged): the moments of each arm */
typedef struct
{
	Moments    *a[2];			/* [0] control, [1] treatment */
	int64		n;				/* units in both arms */
	int			index;			/* position in the input arrays */
} Cell;

static PsMethod
parse_method(const char *s)
{
	for (int i = 0; i < (int) lengthof(method_names); i++)
		if (strcmp(s, method_names[i]) == 0)
			return (PsMethod) i;
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("method must be welch, prop_ztest, cuped, ratio or cuped_ratio, got \"%s\"",
					exp_message_clip(s, -1)),
			 errhint("welch and prop_ztest take univariate moments, cuped and ratio bivariate ones, "
					 "cuped_ratio 4-variable ones, as experiment.metric_test does.")));
	return PS_WELCH;			/* keep the compiler quiet */
}

/*
 * The strata of one arm: a one-dimensional array of experiment.moments with
 * the method's number of variables; NULL elements are empty strata.
 */
static Moments **
read_strata(ArrayType *arr, const char *argname, PsMethod method, int *nstrata)
{
	Datum	   *elems;
	bool	   *nulls;
	int			n;
	int			nvars = method_nvars[method];
	Moments   **out;

	if (ARR_NDIM(arr) > 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must be a one-dimensional array of experiment.moments", argname)));
	deconstruct_array(arr, ARR_ELEMTYPE(arr), -1, false, TYPALIGN_DOUBLE, &elems, &nulls, &n);
	if (n == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must not be empty", argname),
				 errhint("Pass one experiment.moments per stratum; NULL for a stratum without units.")));
	out = palloc(sizeof(Moments *) * n);
	for (int i = 0; i < n; i++)
	{
		Moments    *m;

		if (nulls[i])
		{
			out[i] = exp_moments_new(nvars);
			continue;
		}
		m = DatumGetMomentsP(elems[i]);
		if (m->nvars != nvars)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("%s[%d] of poststrat_ttest method %s must be %s experiment.moments, got %d variable%s",
							argname, i + 1, method_names[method],
							nvars == 1 ? "univariate" : nvars == 2 ? "bivariate" : "4-variable",
							m->nvars, m->nvars == 1 ? "" : "s"),
					 errhint("welch and prop_ztest take experiment.moments(y), cuped experiment.moments(y, x), "
							 "ratio experiment.moments(numerator, denominator), cuped_ratio "
							 "experiment.moments(numerator, denominator, pre_numerator, pre_denominator).")));
		if (method == PS_PROP && m->n > 0 &&
			!(MOMENTS_MEAN(m, 0) >= -1e-12 && MOMENTS_MEAN(m, 0) <= 1 + 1e-12))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("%s[%d] of poststrat_ttest method prop_ztest must be moments of a 0/1 value, got mean %g",
							argname, i + 1, MOMENTS_MEAN(m, 0))));
		out[i] = exp_moments_copy(m);
	}
	*nstrata = n;
	return out;
}

/* ---------- per-arm quantities ---------- */

/* sample covariance g' C h / (n - 1) of linear combinations of the variables; NaN when n < 2 */
static double
bilinear(const Moments *m, const double *g, const double *h)
{
	double		s = 0;

	if (m->n < 2)
		return get_float8_nan();
	for (int i = 0; i < m->nvars; i++)
		for (int j = 0; j < m->nvars; j++)
			s += g[i] * h[j] * MOMENTS_COM(m, i, j);
	return s / (double) (m->n - 1);
}

/* per-unit variance of g'z: the sample variance (binomial p(1 - p) for proportions), clamped at 0 */
static double
unit_variance(const Moments *m, const double *g, PsMethod method)
{
	double		v;

	if (method == PS_PROP)
	{
		double		p = m->n > 0 ? MOMENTS_MEAN(m, 0) : get_float8_nan();

		return g[0] * g[0] * p * (1 - p);
	}
	v = bilinear(m, g, g);
	return v > 0 ? v : (isnan(v) ? v : 0);
}

/*
 * A ratio arm with its pre-period (4 variables): R, Rp and their gradients
 * in the four means (delta method), as cuped_ratio_ttest linearises them.
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
 * theta of CUPED for ratio metrics in one stratum: the covariance of the
 * linearised post-stratified ratio, (num - R_a den) / Den_a per unit with
 * the arm's combined ratio R_a and weighted denominator mean Den_a, and the
 * stratum's linearised pre-period ratio, over the variance of the latter,
 * summed over the arms (with one stratum: cuped_ratio_theta); 0 where
 * undefined.
 */
static double
cuped_ratio_theta_cell(const Cell *cell, const double *r, const double *den_mean)
{
	double		num = 0,
				den = 0;

	for (int a = 0; a < 2; a++)
	{
		RatioArm	ra;
		double		gl[4] = {0, 0, 0, 0};

		if (cell->a[a]->n < 2)
			continue;
		ratio_arm_pre(cell->a[a], &ra);
		gl[0] = 1 / den_mean[a];
		gl[1] = -r[a] / den_mean[a];
		num += bilinear(cell->a[a], gl, ra.gp);
		den += bilinear(cell->a[a], ra.gp, ra.gp);
	}
	if (!isfinite(num) || !isfinite(den) || !(den > 0))
		return 0;
	return num / den;
}

/*
 * theta of CUPED in one stratum: C_xy / C_xx of the stratum's two arms
 * merged (cuped_ttest's theta, pooled over both arms); 0 where undefined.
 */
static double
cuped_theta_cell(const Cell *cell)
{
	Moments    *m = exp_moments_copy(cell->a[0]);
	double		theta;

	exp_moments_merge_into(m, cell->a[1]);
	if (m->n < 2 || !(MOMENTS_COM(m, 1, 1) > 0))
		return 0;
	theta = MOMENTS_COM(m, 0, 1) / MOMENTS_COM(m, 1, 1);
	return isfinite(theta) ? theta : 0;
}

/*
 * Can the stratum give an estimate of its own?  Both arms need two units
 * and a positive variance of what the arm's value is made of (GrowthBook's
 * is_cell_viable: no zero variance in either arm; CUPED of ratio metrics
 * also needs more than six units).
 */
static bool
cell_viable(const Cell *cell, PsMethod method)
{
	if (method == PS_CUPED_RATIO && cell->n < 7)
		return false;
	for (int a = 0; a < 2; a++)
	{
		const Moments *m = cell->a[a];
		double		g[4] = {1, 0, 0, 0};
		double		v;

		if (m->n < 2)
			return false;
		if (method == PS_RATIO || method == PS_CUPED_RATIO)
		{
			double		mu_d = MOMENTS_MEAN(m, 1);

			if (mu_d == 0)
				return false;
			g[0] = 1 / mu_d;
			g[1] = -MOMENTS_MEAN(m, 0) / (mu_d * mu_d);
		}
		v = unit_variance(m, g, method);
		if (!(v > 0) || !isfinite(v))
			return false;
	}
	return true;
}

/* ---------- the estimate ---------- */

/* accumulates the variance of the difference and of the lift over arm-strata */
typedef struct
{
	double		var_d;			/* sum of g_D' S g_D / n */
	double		var_l;			/* the same for the lift */
	double		df_den;			/* sum of (g_D' S g_D / n)^2 / (n - 1) */
	bool		ok;				/* every arm-stratum has n >= 2 */
} VarAcc;

static void
acc_add(VarAcc *acc, const Moments *m, const double *gd, const double *gl, PsMethod method,
		double *vd, double *vl)
{
	double		n = (double) m->n;

	*vd = *vl = 0;
	if (method == PS_PROP ? m->n < 1 : m->n < 2)
	{
		acc->ok = false;
		return;
	}
	*vd = unit_variance(m, gd, method) / n;
	*vl = unit_variance(m, gl, method) / n;
	acc->var_d += *vd;
	acc->var_l += *vl;
	if (m->n >= 2)
		acc->df_den += *vd * *vd / (n - 1);
	else
		acc->df_den = get_float8_infinity();
}

/*
 * The variance that the estimated weights add: b' (diag(w) - w w') b / N =
 * sum_k w_k (b_k - sum w b)^2 / N, less its expectation when every stratum
 * has the same effect, sum_k w_k (1 - w_k) var(b_k) / N = corr (the
 * sampling noise of the strata's own estimates b_k), so that it estimates
 * the strata's spread sum_k w_k (beta_k - beta)^2 / N without bias (before
 * it is clamped at 0).
 */
static double
weights_variance(const double *w, const double *b, int k, double total, double corr)
{
	double		mean = 0,
				s = 0;

	for (int i = 0; i < k; i++)
		mean += w[i] * b[i];
	for (int i = 0; i < k; i++)
		s += w[i] * (b[i] - mean) * (b[i] - mean);
	s = s / total - corr;
	return s > 0 ? s : 0;
}

static void
poststrat_estimate(Estimate *e, Cell *cells, int k, PsMethod method)
{
	int			nv = method_nvars[method];
	double		total = 0;
	double	   *w = palloc(sizeof(double) * k);
	double	   *dk = palloc(sizeof(double) * k);	/* stratum differences */
	double	   *theta = palloc0(sizeof(double) * k);
	double	   *adj = palloc0(sizeof(double) * k);	/* CUPED ratio: theta_k (Rp_t,k - Rp_c,k) */
	double	   *bd = palloc(sizeof(double) * k);	/* d diff / d w_k */
	double	   *bm = palloc(sizeof(double) * k);	/* d mean_c / d w_k */
	double	   *bl = palloc(sizeof(double) * k);
	RatioArm   *ra = palloc(sizeof(RatioArm) * 2 * k);
	int64		n_c = 0,
				n_t = 0;
	double		mc = 0,
				mt = 0,
				diff = 0,
				c_lift,
				abs_mc;
	double		num[2] = {0, 0},
				den[2] = {0, 0};	/* ratio: weighted numerator, denominator means */
	VarAcc		acc = {0, 0, 0, true};
	double		null_var = 0,
				corr_d = 0,		/* sum_k (1 - w_k) / n_k sum_a v_a,k: see weights_variance */
				corr_l = 0;

	for (int i = 0; i < k; i++)
	{
		n_c += cells[i].a[0]->n;
		n_t += cells[i].a[1]->n;
	}
	exp_estimate_init(e, n_c, n_t);
	total = (double) n_c + (double) n_t;
	if (total == 0)
		return;
	for (int i = 0; i < k; i++)
		w[i] = (double) cells[i].n / total;

	/* point estimates */
	for (int i = 0; i < k; i++)
	{
		const Moments *c = cells[i].a[0],
				   *t = cells[i].a[1];
		double		fc = c->n > 0 ? MOMENTS_MEAN(c, 0) : get_float8_nan();
		double		ft = t->n > 0 ? MOMENTS_MEAN(t, 0) : get_float8_nan();

		switch (method)
		{
			case PS_WELCH:
			case PS_PROP:
				dk[i] = ft - fc;
				break;
			case PS_CUPED:
				theta[i] = cuped_theta_cell(&cells[i]);
				dk[i] = (ft - fc) - (theta[i] == 0 ? 0 :
									 theta[i] * ((t->n > 0 ? MOMENTS_MEAN(t, 1) : get_float8_nan()) -
												 (c->n > 0 ? MOMENTS_MEAN(c, 1) : get_float8_nan())));
				break;
			case PS_RATIO:
			case PS_CUPED_RATIO:
				for (int a = 0; a < 2; a++)
				{
					const Moments *m = cells[i].a[a];

					num[a] += w[i] * (m->n > 0 ? MOMENTS_MEAN(m, 0) : get_float8_nan());
					den[a] += w[i] * (m->n > 0 ? MOMENTS_MEAN(m, 1) : get_float8_nan());
				}
				break;
		}
		if (method != PS_RATIO && method != PS_CUPED_RATIO)
		{
			mc += w[i] * fc;
			mt += w[i] * ft;
			diff += w[i] * dk[i];
			bd[i] = dk[i];
			bm[i] = fc;
		}
	}
	if (method == PS_RATIO || method == PS_CUPED_RATIO)
	{
		/* the combined ratio: weighted numerator mean over weighted denominator mean */
		mc = den[0] != 0 ? num[0] / den[0] : get_float8_nan();
		mt = den[1] != 0 ? num[1] / den[1] : get_float8_nan();
		diff = mt - mc;
		for (int i = 0; i < k; i++)
		{
			const Moments *c = cells[i].a[0],
					   *t = cells[i].a[1];

			if (method == PS_CUPED_RATIO)
			{
				/* the stratum's pre-period ratios adjust the combined ratio */
				double		r[2] = {mc, mt};

				theta[i] = cuped_ratio_theta_cell(&cells[i], r, den);
				for (int a = 0; a < 2; a++)
				{
					ratio_arm_pre(cells[i].a[a], &ra[2 * i + a]);
					if (theta[i] == 0)
					{
						/* no adjustment: the plain ratio, whatever the pre-period */
						memset(ra[2 * i + a].gp, 0, sizeof ra[2 * i + a].gp);
						ra[2 * i + a].rp = 0;
					}
				}
				adj[i] = theta[i] * (ra[2 * i + 1].rp - ra[2 * i].rp);
			}
			bm[i] = (MOMENTS_MEAN(c, 0) - mc * MOMENTS_MEAN(c, 1)) / den[0];
			bd[i] = (MOMENTS_MEAN(t, 0) - mt * MOMENTS_MEAN(t, 1)) / den[1] - bm[i];
			if (method == PS_CUPED_RATIO)
			{
				diff -= w[i] * adj[i];
				bd[i] -= adj[i];
			}
		}
	}
	e->mean_c = mc;
	e->mean_t = mt;
	if (!isfinite(diff))
		return;
	e->diff = diff;
	abs_mc = fabs(mc);
	if (mc != 0 && isfinite(mc))
		e->lift = diff / abs_mc;
	/*
	 * The lift's gradient in the control is (d diff - c d mean_c) / |mean_c|
	 * with c = diff / mean_c (exact); CUPED of means scales the control's y
	 * by mean_t / mean_c instead, i.e. c = (mean_t - mean_c) / mean_c, as
	 * cuped_ttest (and GrowthBook's CUPED) does.
	 */
	c_lift = method == PS_CUPED ? (mt - mc) / mc : diff / mc;

	/* variances of the arm-stratum means */
	for (int i = 0; i < k; i++)
	{
		double		sd = 0,
					sl = 0;

		for (int a = 0; a < 2; a++)
		{
			const Moments *m = cells[i].a[a];
			double		sgn = a == 0 ? -1.0 : 1.0;
			double		gd[4] = {0, 0, 0, 0},
						gl[4] = {0, 0, 0, 0},
						gm[4] = {0, 0, 0, 0};

			switch (method)
			{
				case PS_WELCH:
				case PS_PROP:
					gd[0] = sgn * w[i];
					gm[0] = w[i];
					break;
				case PS_CUPED:
					gd[0] = sgn * w[i];
					gd[1] = -sgn * w[i] * theta[i];
					gm[0] = w[i];
					break;
				case PS_RATIO:
				case PS_CUPED_RATIO:
					gd[0] = sgn * w[i] / den[a];
					gd[1] = -sgn * w[i] * (a == 0 ? mc : mt) / den[a];
					gm[0] = w[i] / den[a];
					gm[1] = -w[i] * mc / den[a];
					if (method == PS_CUPED_RATIO)
						for (int j = 2; j < 4; j++)
							gd[j] = -sgn * w[i] * theta[i] * ra[2 * i + a].gp[j];
					break;
			}
			for (int j = 0; j < nv; j++)
				gl[j] = (gd[j] - (a == 0 ? c_lift * gm[j] : 0)) / abs_mc;
			{
				double		vd,
							vl;

				acc_add(&acc, m, gd, gl, method, &vd, &vl);
				sd += vd;
				sl += vl;
			}
		}
		corr_d += (1 - w[i]) / (double) cells[i].n * sd;
		corr_l += (1 - w[i]) / (double) cells[i].n * sl;
		if (method == PS_PROP)
		{
			const Moments *c = cells[i].a[0],
					   *t = cells[i].a[1];

			if (c->n > 0 && t->n > 0)
			{
				double		pbar = ((double) c->n * MOMENTS_MEAN(c, 0) + (double) t->n * MOMENTS_MEAN(t, 0)) /
					(double) cells[i].n;

				null_var += w[i] * w[i] * pbar * (1 - pbar) * (1.0 / (double) c->n + 1.0 / (double) t->n);
			}
		}
	}
	if (!acc.ok)
		return;
	for (int i = 0; i < k; i++)
		bl[i] = (bd[i] - c_lift * bm[i]) / abs_mc;

	{
		double		vd = acc.var_d + weights_variance(w, bd, k, total, corr_d);

		if (!(vd > 0) || !isfinite(vd))
			return;
		e->diff_se = sqrt(vd);
		if (method == PS_PROP)
		{
			if (null_var > 0 && isfinite(null_var))
				e->null_se = sqrt(null_var);
		}
		else
		{
			/* Welch-Satterthwaite over the arm-strata, scaled against underflow */
			double		s = acc.df_den / (vd * vd);

			if (s > 0 && isfinite(s))
				e->df = 1.0 / s;
		}
	}
	if (isfinite(e->lift))
	{
		double		lv = acc.var_l + weights_variance(w, bl, k, total, corr_l);

		if (lv > 0 && isfinite(lv))
			e->lift_se = sqrt(lv);
	}
}

/* ---------- the SQL function ---------- */

static int
cell_cmp(const void *pa, const void *pb)
{
	const Cell *a = (const Cell *) pa;
	const Cell *b = (const Cell *) pb;

	if (a->n != b->n)
		return a->n > b->n ? -1 : 1;
	return a->index - b->index;
}

/*
 * poststrat_ttest(method, control, treatment, alpha, alternative,
 * sequential_tuning): the post-stratified test of method over the strata
 * control[k], treatment[k] (doc/statistics.md, "Post-stratification").
 */
PG_FUNCTION_INFO_V1(exp_poststrat_ttest);
Datum
exp_poststrat_ttest(PG_FUNCTION_ARGS)
{
	Inference	inf;
	bool		ok = exp_get_inference(fcinfo, 3, &inf);
	PsMethod	method = PS_WELCH;
	Moments   **mc = NULL,
			  **mt = NULL;
	int			kc = 0,
				kt = 0,
				k;
	Cell	   *all,
			   *cells;
	Estimate	e;

	if (!PG_ARGISNULL(0))
		method = parse_method(text_to_cstring(PG_GETARG_TEXT_PP(0)));
	if (PG_ARGISNULL(0))
		PG_RETURN_NULL();
	if (!PG_ARGISNULL(1))
		mc = read_strata(PG_GETARG_ARRAYTYPE_P(1), "control", method, &kc);
	if (!PG_ARGISNULL(2))
		mt = read_strata(PG_GETARG_ARRAYTYPE_P(2), "treatment", method, &kt);
	if (mc && mt && kc != kt)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("control and treatment must have one element per stratum each, got %d and %d", kc, kt),
				 errhint("Align the arrays by stratum (array_agg(... ORDER BY stratum)); NULL for a stratum without units in an arm.")));
	if (!ok || !mc || !mt)
		PG_RETURN_NULL();

	/* strata from the largest; those without an estimate of their own merge into the largest */
	all = palloc(sizeof(Cell) * kc);
	for (int i = 0; i < kc; i++)
	{
		all[i].a[0] = mc[i];
		all[i].a[1] = mt[i];
		all[i].n = mc[i]->n + mt[i]->n;
		all[i].index = i;
	}
	qsort(all, kc, sizeof(Cell), cell_cmp);
	cells = palloc(sizeof(Cell) * kc);
	cells[0] = all[0];
	k = 1;
	for (int i = 1; i < kc; i++)
	{
		if (all[i].n == 0)
			continue;
		if (cell_viable(&all[i], method))
			cells[k++] = all[i];
		else
		{
			exp_moments_merge_into(cells[0].a[0], all[i].a[0]);
			exp_moments_merge_into(cells[0].a[1], all[i].a[1]);
			cells[0].n += all[i].n;
		}
	}
	/*
	 * The largest stratum keeps its units however few: when it has no
	 * estimate of its own either, the post-stratified test is not defined
	 * and the result is the unstratified test (all strata merged), as
	 * GrowthBook falls back to it when a cell fails.
	 */
	if (k > 1 && !cell_viable(&cells[0], method))
	{
		for (int i = 1; i < k; i++)
		{
			exp_moments_merge_into(cells[0].a[0], cells[i].a[0]);
			exp_moments_merge_into(cells[0].a[1], cells[i].a[1]);
			cells[0].n += cells[i].n;
		}
		k = 1;
	}
	poststrat_estimate(&e, cells, k, method);
	return exp_test_result_datum(fcinfo, &e, &inf);
}
