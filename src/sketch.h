/*-------------------------------------------------------------------------
 *
 * sketch.h
 *	  The stored experiment.sketch type (a DDSketch of relative accuracy
 *	  0.005, doc/statistics.md "Quantiles"): its layout and access macros.
 *
 *-------------------------------------------------------------------------
 */
#ifndef EXPERIMENT_SKETCH_H
#define EXPERIMENT_SKETCH_H

#include "postgres.h"
#include "fmgr.h"

#define SKETCH_VERSION 1
/* relative accuracy: every returned quantile is within 0.5% of a sample value of that rank */
#define SKETCH_ALPHA 0.005
/* at most this many bins per sign; beyond it the lowest-magnitude bins collapse */
#define SKETCH_MAX_BINS 2048
/* bit of Sketch.flags: counts are uint64 (else uint32) */
#define SKETCH_FLAG_WIDE 0x01

/*
 * The bins are kept in one array sorted by their "ord", an int32 that orders
 * the bins as their values are ordered:
 *	x > 0:	ord = SKETCH_ORD_OFFSET + k(x)
 *	x = 0:	ord = 0
 *	x < 0:	ord = -(SKETCH_ORD_OFFSET + k(-x))
 * where k(x) = ceil(log_gamma(x)) is DDSketch's logarithmic index, gamma =
 * (1 + alpha) / (1 - alpha); every finite non-zero double has |k| < 75000.
 *
 * Layout of the varlena (no empty sketch exists: nbins >= 1):
 *	header (24 bytes)
 *	int32 ords[cap]
 *	counts[cap]: uint32, or uint64 aligned to 8 when SKETCH_FLAG_WIDE
 * cap >= nbins is implied by the varlena size; an aggregate's working state
 * may have spare capacity, every value the functions return has none.
 */
#define SKETCH_ORD_OFFSET 100000

typedef struct Sketch
{
	int32		vl_len_;		/* varlena header (do not touch directly!) */
	uint8		version;		/* SKETCH_VERSION */
	uint8		flags;			/* SKETCH_FLAG_* */
	uint16		nbins;			/* bins in use, 1 .. 2 * SKETCH_MAX_BINS + 1 */
	float8		min;			/* smallest value seen, exactly */
	float8		max;			/* largest value seen, exactly */
	char		data[FLEXIBLE_ARRAY_MEMBER];
} Sketch;

#define SKETCH_HEADER_SIZE		offsetof(Sketch, data)
#define SKETCH_COUNTS_OFFSET(cap, wide) \
	((wide) ? TYPEALIGN(8, sizeof(int32) * (cap)) : sizeof(int32) * (cap))
#define SKETCH_SIZE(cap, wide) \
	(SKETCH_HEADER_SIZE + SKETCH_COUNTS_OFFSET(cap, wide) + ((wide) ? 8 : 4) * (cap))
#define SKETCH_IS_WIDE(s)		(((s)->flags & SKETCH_FLAG_WIDE) != 0)
#define SKETCH_CAP(s) \
	((int) ((VARSIZE(s) - SKETCH_HEADER_SIZE) / (SKETCH_IS_WIDE(s) ? 12 : 8)))
#define SKETCH_ORDS(s)			((int32 *) (s)->data)

#define DatumGetSketchP(X)		((Sketch *) PG_DETOAST_DATUM(X))
#define SketchPGetDatum(X)		PointerGetDatum(X)
#define PG_GETARG_SKETCH_P(n)	DatumGetSketchP(PG_GETARG_DATUM(n))
#define PG_RETURN_SKETCH_P(x)	PG_RETURN_POINTER(x)

/* sketch.c */
extern uint64 exp_sketch_count(const Sketch *s, int i);
extern int64 exp_sketch_n(const Sketch *s);
extern double exp_sketch_quantile(const Sketch *s, double q);
extern double exp_sketch_rank(const Sketch *s, double x);

#endif							/* EXPERIMENT_SKETCH_H */
