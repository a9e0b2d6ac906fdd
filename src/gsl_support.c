/*-------------------------------------------------------------------------
 *
 * gsl_support.c
 *	  Module initialisation: GSL's error handler and the module's settings.
 *
 * GSL's default error handler aborts the process, which would take the
 * backend down with it; _PG_init turns it off, so that every GSL routine
 * reports failure through its status code (the *_e functions) or a NaN,
 * which the callers in stats.c and power.c turn into an ereport.
 *
 * Settings: experiment.refresh_memory, the memory a full or incremental
 * refresh may use for the per-unit values of one partition of the units
 * (src/unit_values.c, doc/scaling.md).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <limits.h>

#include <gsl/gsl_errno.h>

#include "utils/guc.h"

#include "experiment.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

/* experiment.refresh_memory, in kB; 0: no bound */
int			exp_refresh_memory_kb = 256 * 1024;

void
_PG_init(void)
{
	gsl_set_error_handler_off();

	DefineCustomIntVariable("experiment.refresh_memory",
							"Memory a refresh may use for the per-unit values of its units; beyond it, "
							"the units are split into hash partitions, each read in a scan of its own.",
							"0 means no bound (one partition).",
							&exp_refresh_memory_kb,
							256 * 1024,
							0,
							MAX_KILOBYTES,
							PGC_USERSET,
							GUC_UNIT_KB,
							NULL, NULL, NULL);
	/* (the prefix is not reserved: upgrade scripts keep placeholders under it) */
}
