/*-------------------------------------------------------------------------
 *
 * contrasts.c
 *	  Linear contrasts of cell means: contrast_test(method, cells[],
 *	  treatment_weights[], control_weights[], ...), the test behind the
 *	  factorial effects (main effects and interactions of a factorial
 *	  experiment) and the interaction of two overlapping experiments (the
 *	  2x2 difference in differences); and independence_chisq(observed[][]),
 *	  the check that two experiments' assignments are independent.
 *
 * cells[k] are the moments of cell k (a variant of a factorial experiment,
 * or one of the four combinations of two experiments' arms).  With f_k the
 * cell's value (method welch: the mean of y; method ratio: mean(num) /
 * mean(den)) and v_k the per-unit variance of what enters it (the sample
 * variance; for ratios the delta-method variance of the linearisation
 * (num - R den) / mean(den)):
 *
 *	T = sum_k t_k f_k			(mean_treatment)
 *	C = sum_k c_k f_k			(mean_control)
 *	diff = T - C,  se^2 = sum_k (t_k - c_k)^2 v_k / n_k
 *	df = se^4 / sum_k ((t_k - c_k)^2 v_k / n_k)^2 / (n_k - 1)	(Satterthwaite)
 *	lift = diff / |C|, its variance sum_k g_k^2 v_k / n_k with
 *	g_k = t_k / |C| - sign(C) T c_k / C^2	(delta method)
 *
 * se^2 is the heteroskedasticity-consistent HC2 variance of the same
 * contrast of the coefficients of a saturated OLS regression on the cells
 * (whose leverages are 1 / n_k), so statsmodels' OLS with cov_type HC2 is
 * its oracle.  With cells (control, treatment) and weights (0, 1), (1, 0)
 * it is Welch's test.  The estimate goes through the shared inference
 * (exp_test_result_datum).  See doc/designs-factorial.md.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <math.h>

#include <gsl/gsl_errno.h>
#include <gsl/gsl_sf_gamma.h>

#include "catalog/pg_type.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/float.h"

#include "experiment.h"

/* a cell's value f, per-unit variance v (NaN when n < 2) and units */
typedef struct
{
	double		f;
	double		v;
	int64		n;
} ContrastCell;

static double *
read_weights(ArrayType *arr, const char *argname, int *nweights)
{
	Datum	   *elems;
	bool	   *nulls;
	int			n;
	double	   *w;

	if (ARR_NDIM(arr) > 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s of contrast_test must be a one-dimensional array of float8", argname)));
	deconstruct_array(arr, FLOAT8OID, sizeof(float8), FLOAT8PASSBYVAL, TYPALIGN_DOUBLE, &elems, &nulls, &n);
	w = palloc(sizeof(double) * (n > 0 ? n : 1));
	for (int i = 0; i < n; i++)
	{
		if (nulls[i] || !isfinite(DatumGetFloat8(elems[i])))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("%s[%d] of contrast_test must be a finite number, got %s",
							argname, i + 1, nulls[i] ? "NULL" : "a non-finite value"),
					 errhint("Give every cell a weight; 0 leaves it out.")));
		w[i] = DatumGetFloat8(elems[i]);
	}
	*nweights = n;
	return w;
}

/*
 * The value and per-unit variance of one cell: the mean of univariate
 * moments (welch), or the ratio of bivariate moments of (numerator,
 * denominator) with the delta-method variance (ratio).
 */
static void
cell_of(const Moments *m, bool ratio, ContrastCell *c)
{
	c->n = m->n;
	c->f = c->v = get_float8_nan();
	if (m->n == 0)
		return;
	if (!ratio)
	{
		c->f = MOMENTS_MEAN(m, 0);
		c->v = exp_moments_variance(m, 0);
		return;
	}
	else
	{
		double		mu_d = MOMENTS_MEAN(m, 1);
		double		r,
					cm;

		if (mu_d == 0)
			return;
		r = MOMENTS_MEAN(m, 0) / mu_d;
		c->f = r;
		if (m->n < 2)
			return;
		cm = MOMENTS_COM(m, 0, 0) - 2 * r * MOMENTS_COM(m, 0, 1) + r * r * MOMENTS_COM(m, 1, 1);
		c->v = (cm > 0 ? cm : 0) / (double) (m->n - 1) / (mu_d * mu_d);
	}
}

/*
 * contrast_test(method, cells, treatment_weights, control_weights, alpha,
 * alternative, sequential_tuning): the test of sum_k (t_k - c_k) f_k = 0,
 * reported as treatment sum_k t_k f_k against control sum_k c_k f_k.
 */
PG_FUNCTION_INFO_V1(exp_contrast_test);
Datum
exp_contrast_test(PG_FUNCTION_ARGS)
{
	Inference	inf;
	bool		ok = exp_get_inference(fcinfo, 4, &inf);
	const char *method;
	bool		ratio;
	ArrayType  *cells_arr;
	Datum	   *elems;
	bool	   *nulls;
	int			ncells,
				nt,
				nc;
	double	   *tw,
			   *cw;
	ContrastCell *cells;
	Estimate	e;
	double		tsum = 0,
				csum = 0,
				se2 = 0,
				dfden = 0,
				lv = 0;
	int64		n_c = 0,
				n_t = 0;
	bool		defined = true;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1) || PG_ARGISNULL(2) || PG_ARGISNULL(3))
		PG_RETURN_NULL();
	method = text_to_cstring(PG_GETARG_TEXT_PP(0));
	if (strcmp(method, "welch") == 0)
		ratio = false;
	else if (strcmp(method, "ratio") == 0)
		ratio = true;
	else
	{
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("method of contrast_test must be welch or ratio, got \"%s\"", exp_message_clip(method, -1)),
				 errhint("welch takes experiment.moments(y) of each cell, ratio experiment.moments(numerator, denominator).")));
		ratio = false;			/* keep the compiler quiet */
	}
	cells_arr = PG_GETARG_ARRAYTYPE_P(1);
	if (ARR_NDIM(cells_arr) > 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("cells of contrast_test must be a one-dimensional array of experiment.moments")));
	deconstruct_array(cells_arr, ARR_ELEMTYPE(cells_arr), -1, false, TYPALIGN_DOUBLE, &elems, &nulls, &ncells);
	if (ncells == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("cells of contrast_test must not be empty"),
				 errhint("Pass one experiment.moments per cell; NULL for a cell without units.")));
	tw = read_weights(PG_GETARG_ARRAYTYPE_P(2), "treatment_weights", &nt);
	cw = read_weights(PG_GETARG_ARRAYTYPE_P(3), "control_weights", &nc);
	if (nt != ncells || nc != ncells)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("treatment_weights and control_weights of contrast_test must have one weight per cell (%d), got %d and %d",
						ncells, nt, nc)));
	cells = palloc(sizeof(ContrastCell) * ncells);
	for (int k = 0; k < ncells; k++)
	{
		if (nulls[k])
		{
			cells[k].n = 0;
			cells[k].f = cells[k].v = get_float8_nan();
			continue;
		}
		{
			Moments    *m = DatumGetMomentsP(elems[k]);
			int			want = ratio ? 2 : 1;

			if (m->nvars != want)
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("cells[%d] of contrast_test method %s must be %s experiment.moments, got %d variable%s",
								k + 1, method, ratio ? "bivariate" : "univariate", m->nvars, m->nvars == 1 ? "" : "s"),
						 errhint("welch takes experiment.moments(y), ratio experiment.moments(numerator, denominator).")));
			cell_of(m, ratio, &cells[k]);
		}
	}
	if (!ok)
		PG_RETURN_NULL();

	/* the two sides and the variance of their difference */
	for (int k = 0; k < ncells; k++)
	{
		double		w = tw[k] - cw[k];

		if (tw[k] != 0)
			n_t += cells[k].n;
		if (cw[k] != 0)
			n_c += cells[k].n;
		if (tw[k] == 0 && cw[k] == 0)
			continue;
		if (!isfinite(cells[k].f))
		{
			defined = false;
			continue;
		}
		tsum += tw[k] * cells[k].f;
		csum += cw[k] * cells[k].f;
		if (w != 0)
		{
			double		a = w * w * cells[k].v / (double) cells[k].n;

			se2 += a;
			if (cells[k].n > 1)
				dfden += a * a / (double) (cells[k].n - 1);
		}
	}
	exp_estimate_init(&e, n_c, n_t);
	if (defined)
	{
		e.mean_t = tsum;
		e.mean_c = csum;
		e.diff = tsum - csum;
		if (se2 > 0 && isfinite(se2))
		{
			e.diff_se = sqrt(se2);
			e.df = se2 * se2 / dfden;
		}
		if (csum != 0 && isfinite(e.diff))
		{
			double		ac = fabs(csum);
			double		sg = csum > 0 ? 1.0 : -1.0;

			e.lift = e.diff / ac;
			for (int k = 0; k < ncells; k++)
			{
				double		g;

				if (tw[k] == 0 && cw[k] == 0)
					continue;
				g = tw[k] / ac - sg * tsum * cw[k] / (csum * csum);
				if (g != 0)
					lv += g * g * cells[k].v / (double) cells[k].n;
			}
			if (lv > 0 && isfinite(lv))
				e.lift_se = sqrt(lv);
		}
	}
	return exp_test_result_datum(fcinfo, &e, &inf);
}

/*
 * independence_chisq(observed): p-value of Pearson's chi-squared test of
 * independence of the rows and columns of an r x c table of counts (no
 * continuity correction, as scipy.stats.chi2_contingency(correction=False)):
 *	chi2 = sum (o - e)^2 / e,  e = row total * column total / total,
 *	df = (r' - 1)(c' - 1)
 * over the r' rows and c' columns with a positive total (an empty row or
 * column carries no information).  NULL when fewer than two rows or columns
 * have units.
 */
PG_FUNCTION_INFO_V1(exp_independence_chisq);
Datum
exp_independence_chisq(PG_FUNCTION_ARGS)
{
	ArrayType  *arr;
	Datum	   *elems;
	bool	   *nulls;
	int			n,
				nr,
				ncol,
				rpos = 0,
				cpos = 0;
	double	   *rows,
			   *cols,
				total = 0,
				chi2 = 0;
	gsl_sf_result res;
	int			status;

	if (PG_ARGISNULL(0))
		PG_RETURN_NULL();
	arr = PG_GETARG_ARRAYTYPE_P(0);
	if (ARR_NDIM(arr) != 2)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("observed of independence_chisq must be a two-dimensional array of counts, got %d dimension%s",
						ARR_NDIM(arr), ARR_NDIM(arr) == 1 ? "" : "s"),
				 errhint("One row per arm of the first experiment, one column per arm of the second, e.g. '{{10, 12}, {11, 9}}'.")));
	nr = ARR_DIMS(arr)[0];
	ncol = ARR_DIMS(arr)[1];
	deconstruct_array(arr, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE, &elems, &nulls, &n);
	rows = palloc0(sizeof(double) * nr);
	cols = palloc0(sizeof(double) * ncol);
	for (int i = 0; i < n; i++)
	{
		int64		o;

		if (nulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("observed of independence_chisq must not contain NULL (element %d)", i + 1)));
		o = DatumGetInt64(elems[i]);
		if (o < 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("observed of independence_chisq must not be negative, got " INT64_FORMAT " (element %d)",
							o, i + 1)));
		rows[i / ncol] += (double) o;
		cols[i % ncol] += (double) o;
		total += (double) o;
	}
	for (int i = 0; i < nr; i++)
		rpos += rows[i] > 0;
	for (int j = 0; j < ncol; j++)
		cpos += cols[j] > 0;
	if (rpos < 2 || cpos < 2)
		PG_RETURN_NULL();
	for (int i = 0; i < n; i++)
	{
		double		e = rows[i / ncol] * cols[i % ncol] / total;
		double		d;

		if (e == 0)
			continue;
		d = (double) DatumGetInt64(elems[i]) - e;
		chi2 += d * d / e;
	}
	status = gsl_sf_gamma_inc_Q_e(0.5 * (double) ((rpos - 1) * (cpos - 1)), 0.5 * chi2, &res);
	if (status == GSL_EUNDRFLW)
		PG_RETURN_FLOAT8(0.0);
	if (status != GSL_SUCCESS || !isfinite(res.val))
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("GSL could not compute the chi-squared tail for %g on %d df: %s",
						chi2, (rpos - 1) * (cpos - 1), gsl_strerror(status))));
	PG_RETURN_FLOAT8(res.val);
}
