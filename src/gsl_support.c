/*-------------------------------------------------------------------------
 *
 * gsl_support.c
 *	  Module initialisation.
 *
 * GSL's default error handler aborts the process, which would take the
 * backend down with it; _PG_init turns it off, so that every GSL routine
 * reports failure through its status code (the *_e functions) or a NaN,
 * which the callers in stats.c and power.c turn into an ereport.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <gsl/gsl_errno.h>

#include "experiment.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

void
_PG_init(void)
{
	gsl_set_error_handler_off();
}
