/*-------------------------------------------------------------------------
 *
 * unit_values.c
 *	  experiment.source_unit_values(): the per-unit values of the metrics
 *	  that read one source relation, computed in one scan of the source.
 *
 * experiment.refresh() needs, for every enrolled unit and every metric, an
 * aggregate over the unit's events inside a window that depends on the
 * unit's first exposure t0.  Expressed in SQL this is a join of every event
 * to its unit followed by a GROUP BY unit; with a million units both the
 * hash join and the grouping probe a table far larger than the CPU caches
 * once per event, and that random memory access dominates the refresh.
 *
 * Here the units (passed as arrays, or read from a relation of units by
 * source_unit_values_from(), which the refresh uses: arrays of a million
 * units take more memory than the hash table) are loaded once into a
 * compact open-addressing hash table (keyed by hash_bytes() of the
 * unit id text, exact comparison of the key), together with one row per unit holding the window bounds that need
 * calendar arithmetic and the accumulators.  The source is scanned through
 * SPI with a DestReceiver of our own, so no event is materialised; events
 * are handled in batches, and within a batch the lookups run as a pipeline
 * (flush_batch()): an event's hash slot, then its unit record and row, are
 * prefetched a few events before they are used, so that the cache misses of
 * consecutive events overlap instead of being paid one after the other.
 *
 * The query text is built only from the relation's regclass and
 * quote_identifier()'d column names; no user-supplied SQL is executed, and
 * the privileges of the calling user apply to the source as for any query.
 *
 * Semantics (identical to the SQL formulation that refresh() used before):
 * an event counts for spec k of its unit when its time is not NULL,
 * time >= t0 + lo_offsets[k], time < t0 + hi_offsets[k] when that is not
 * NULL, and time < end_at when use_end[k] and end_at is not NULL.  The
 * bounds are computed with timestamptz + interval (timestamptz_pl_interval,
 * time zone aware for day and month parts).  Aggregations: 'sum' of the
 * non-NULL values (rows when there is no value column), 'count' of non-NULL
 * values (rows when there is no value column), 'any' = 1 when some counted
 * event has a non-NULL value <> 0 (any counted event when there is no value
 * column), 'max' of the non-NULL values (1 for any counted event when there
 * is no value column), 'sketch': the non-NULL values as an experiment.sketch
 * in sketches[k] (NULL without values), with vals[k] their number.  Boolean value columns count as 0/1, other columns
 * are cast to float8.  Units without counted events get 0.
 *
 * Incremental refresh (doc/scaling.md) calls it in split mode: the events
 * are accumulated apart before and from a split time (the source's
 * watermark), so that the part before the split can be stored and the rest
 * read again next time.  With probe, it first reads the latest time in the
 * source (max() of the time column, which an index answers), from which the
 * caller derives the split.
 *
 * The function locks and checks the source through SPI, and SPI commands
 * cannot run in a parallel query: it is PARALLEL UNSAFE.
 *
 * Memory: everything lives in a dedicated memory context that is deleted
 * before returning: 8 bytes per hash slot (two to four slots per unit),
 * 32 bytes per unit record plus the unit id when it is longer than 16
 * bytes, and per unit a row of 8 bytes per calendar bound, 8 bytes per
 * spec and 1 byte per spec (rounded up to 8).  For a million units and
 * four specs that is about 90 MB (110 MB with three calendar bounds).  A
 * sketch spec adds 24 bytes per unit with values and 8 bytes per value.  The
 * result is a tuplestore, which spills to disk beyond work_mem.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <math.h>
#include <sys/mman.h>

#include "access/htup_details.h"
#include "catalog/pg_index.h"
#include "catalog/pg_type.h"
#include "common/hashfn.h"
#include "common/int.h"
#include "executor/spi.h"
#include "executor/tuptable.h"
#include "funcapi.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "nodes/params.h"
#include "pgtime.h"
#include "tcop/dest.h"
#include "access/relation.h"
#include "storage/lmgr.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"
#include "utils/tuplestore.h"

#include "experiment.h"

#define UV_INLINE_KEY	16
#define UV_BATCH		256
/* with experiment.refresh_memory set, the result keeps 1/16 of it in memory */
#define UV_RESULT_SHARE	16
/* a scan of at most this many units of a relation may ask for their ids (unit_index_leads()) */
#define UV_ANY_UNITS	100000
/* the most specs unit_value_partitions() takes (a scan has a few per metric) */
#define UV_MAX_SPECS	100000

typedef enum
{
	AGG_SUM,
	AGG_COUNT,
	AGG_ANY,
	AGG_MAX,
	AGG_SKETCH					/* the unit's values, as an experiment.sketch */
} UvAgg;

/*
 * The values of one unit for one sketch spec, collected during the scan and
 * turned into an experiment.sketch when the unit's row is returned (a unit
 * has few events; a sketch per unit would cost more than its values).  The
 * accumulator of the spec holds the list's index + 1 (0: no value yet).
 */
typedef struct
{
	double	   *vals;
	int64		n;
	int64		cap;
} UvList;

/* one enrolled unit; the key is inline when short, else in the key arena */
typedef struct
{
	int64		t0;
	uint32		keylen;
	uint16		variant;
	uint8		t0null;
	uint8		pad;
	union
	{
		char		inline_key[UV_INLINE_KEY];
		char	   *ptr;
	}			key;
} UvUnit;

/* how one bound of a spec is computed from t0 */
typedef struct
{
	bool		present;
	bool		calendar;		/* bound = row bounds[cal] */
	int			cal;
	int64		usecs;			/* bound = t0 + usecs */
} UvBound;

typedef struct
{
	UvAgg		agg;
	int			tcol;			/* index among the time columns */
	int			vcol;			/* index among the value columns, -1 for none */
	bool		use_end;
	UvBound		lo;
	UvBound		hi;
} UvSpec;

/* one event of a batch */
typedef struct
{
	uint32		hash;
	uint32		keyoff;
	uint32		keylen;
	int64		unit;			/* index of the unit, -1 for none */
	uint64		pos;			/* hash slot where the probe stands */
} UvEvent;

typedef struct
{
	DestReceiver pub;
	struct UvState *st;
} UvReceiver;

typedef struct UvState
{
	MemoryContext cxt;
	/* specs */
	int			nspec;
	UvSpec	   *specs;
	int			ntime;
	int			nval;
	int			ncal;
	Interval   *cal_offsets;
	bool		has_end;
	int64		end_at;
	/* split mode: accumulators k (events before split) and nspec + k (after) */
	bool		has_split;
	int64		split;
	int			nacc;
	/* value lists of the sketch specs (UvList, indexed from the accumulators) */
	bool		has_sketch;
	UvList	   *lists;
	int64		nlists;
	int64		maxlists;
	/* the latest time of any row read (split mode and probe) */
	bool		has_latest;
	int64		latest;
	/* units */
	int64		nunits;
	int64		maxunits;
	UvUnit	   *units;
	uint64	   *slots;			/* (hash << 32) | (unit index + 1); 0 = empty */
	void	   *units_chunk;	/* the allocations of units, slots and rows */
	void	   *slots_chunk;
	void	   *rows_chunk;
	uint64		mask;
	char	  **variants;
	int			nvariants;
	/*
	 * per unit rows: int64 bounds[ncal], float8 acc[nacc], uint32
	 * skipped[nacc], uint8 seen[nacc]
	 */
	Size		rowsize;
	char	   *rows;
	/* batch of events */
	int			nbatch;
	UvEvent		ev[UV_BATCH];
	int64	   *ev_ts;			/* UV_BATCH * ntime */
	bool	   *ev_tsnull;
	double	   *ev_val;			/* UV_BATCH * nval */
	bool	   *ev_valnull;
	StringInfoData keys;
	bool		val_is_bool[FUNC_MAX_ARGS];
	const char *val_names[FUNC_MAX_ARGS];
	/* the long keys and the sketches' values of the units (reset between passes) */
	MemoryContext unit_cxt;
	/*
	 * events first (see source_unit_values()): the hashes of the keys of the
	 * events read (0 = empty), and the pass that reads the units with
	 * murmurhash32(hash) % npass = pass
	 */
	uint32	   *touched;
	uint64		touched_mask;
	int64		ntouched;
	int			npass;
	int			pass;
	/*
	 * the units of an incremental refresh's scans (reset not NULL): the ctid
	 * of each unit's stored row, at tid_off in its row, returned as tid
	 */
	bool		with_tid;
	Size		tid_off;
} UvState;

#define UV_ROW(st, i)		((st)->rows + (Size) (i) * (st)->rowsize)
#define UV_BOUNDS(st, r)	((int64 *) (r))
#define UV_ACC(st, r)		((double *) ((r) + sizeof(int64) * (st)->ncal))
#define UV_SKIPPED(st, r)	((uint32 *) ((r) + sizeof(int64) * (st)->ncal + sizeof(double) * (st)->nacc))
#define UV_SEEN(st, r)		((uint8 *) ((r) + sizeof(int64) * (st)->ncal + \
										(sizeof(double) + sizeof(uint32)) * (st)->nacc))

/*
 * A large zeroed array, aligned to 2 MB and marked for transparent huge
 * pages where the kernel offers them (THP in madvise mode): the random
 * lookups below then miss the TLB far less often.
 */
#define UV_HUGE_PAGE	((Size) 2 * 1024 * 1024)

static void *
huge_alloc0(MemoryContext cxt, Size size, void **chunk)
{
	char	   *p = MemoryContextAllocHuge(cxt, size + UV_HUGE_PAGE);
	char	   *a = (char *) TYPEALIGN(UV_HUGE_PAGE, p);

	if (chunk)
		*chunk = p;

#ifdef MADV_HUGEPAGE
	if (size >= UV_HUGE_PAGE)
		(void) madvise(a, TYPEALIGN_DOWN(UV_HUGE_PAGE, size), MADV_HUGEPAGE);
#endif
	memset(a, 0, size);
	return a;
}

static inline const char *
unit_key(const UvUnit *u)
{
	return u->keylen <= UV_INLINE_KEY ? u->key.inline_key : u->key.ptr;
}

/*
 * The scan's columns must be what the query asked for: (text, timestamptz
 * per time column, float8 or boolean per value column).  The Datums are
 * read without further checks, so a relation changed between planning and
 * execution must not reach them.
 */
static void
uv_startup(DestReceiver *self, int operation, TupleDesc typeinfo)
{
	UvState    *st = ((UvReceiver *) self)->st;
	int			c;

	if (typeinfo->natts != 1 + st->ntime + st->nval)
		ereport(ERROR,
				(errcode(ERRCODE_DATATYPE_MISMATCH),
				 errmsg("the scan of the source returned %d columns, expected %d",
						typeinfo->natts, 1 + st->ntime + st->nval)));
	for (c = 0; c < typeinfo->natts; c++)
	{
		Oid			want = c == 0 ? TEXTOID : c <= st->ntime ? TIMESTAMPTZOID :
			st->val_is_bool[c - 1 - st->ntime] ? BOOLOID : FLOAT8OID;

		if (TupleDescAttr(typeinfo, c)->atttypid != want)
			ereport(ERROR,
					(errcode(ERRCODE_DATATYPE_MISMATCH),
					 errmsg("column %d of the scan of the source has type %s, expected %s",
							c + 1, format_type_be(TupleDescAttr(typeinfo, c)->atttypid),
							format_type_be(want))));
	}
}

static void
uv_shutdown(DestReceiver *self)
{
}

static void
uv_destroy(DestReceiver *self)
{
}

/*
 * t0 + interval as SQL computes it (timestamptz_pl_interval, time zone
 * aware), except that a result outside the range of timestamptz is -infinity
 * or infinity instead of an error: a window of '1000000 years' means "no
 * bound", and one exposure near the end of time must not fail the refresh.
 * The exact sum is computed only when it is certainly in range (two days of
 * margin for calendar arithmetic and time zones); near the ends of the range
 * the bound is clamped, which moves it by at most those two days in the
 * year 294276.
 */
static TimestampTz
exp_timestamptz_add_clamped(TimestampTz t0, const Interval *iv)
{
	double		base,
				months_long,
				months_short,
				margin = 2.0 * USECS_PER_DAY;

	if (TIMESTAMP_NOT_FINITE(t0))
		return t0;
	/* the sum with months of 31 and of 27 days brackets the calendar sum */
	base = (double) t0 + (double) iv->time + (double) iv->day * USECS_PER_DAY;
	months_long = base + (double) iv->month * (DAYS_PER_MONTH + 1) * USECS_PER_DAY;
	months_short = base + (double) iv->month * (DAYS_PER_MONTH - 3) * USECS_PER_DAY;
	if (Max(months_long, months_short) >= (double) END_TIMESTAMP - margin)
		return DT_NOEND;
	if (Min(months_long, months_short) <= (double) MIN_TIMESTAMP + margin)
		return DT_NOBEGIN;
	return DatumGetTimestampTz(DirectFunctionCall2(timestamptz_pl_interval,
												   TimestampTzGetDatum(t0),
												   IntervalPGetDatum(iv)));
}

static int64
add_interval(int64 t0, Interval *iv)
{
	return exp_timestamptz_add_clamped(t0, iv);
}

/*
 * timestamptz_add_clamped(t timestamptz, i interval) RETURNS timestamptz
 *
 * t + i, or -infinity / infinity when the sum is outside the range of
 * timestamptz (see exp_timestamptz_add_clamped).
 */
PG_FUNCTION_INFO_V1(exp_timestamptz_add_clamped_sql);
Datum
exp_timestamptz_add_clamped_sql(PG_FUNCTION_ARGS)
{
	PG_RETURN_TIMESTAMPTZ(exp_timestamptz_add_clamped(PG_GETARG_TIMESTAMPTZ(0),
													  PG_GETARG_INTERVAL_P(1)));
}

/*
 * Room for maxunits units: the unit records, their rows and a hash table of
 * at least twice as many slots.  Units already loaded are moved (and their
 * slots rebuilt), so that a table read without a count can grow.
 */
static void
alloc_units(UvState *st, int64 maxunits)
{
	uint64		nslots = 16;
	void	   *uc,
			   *sc,
			   *rc;
	UvUnit	   *units;
	char	   *rows;
	uint64	   *slots;
	int64		i;

	maxunits = Max(maxunits, 1);
	if (maxunits >= (int64) PG_INT32_MAX)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("too many units (%lld)", (long long) maxunits)));
	while (nslots < (uint64) maxunits * 2)
		nslots <<= 1;
	units = huge_alloc0(st->cxt, sizeof(UvUnit) * maxunits, &uc);
	rows = huge_alloc0(st->cxt, st->rowsize * maxunits, &rc);
	slots = huge_alloc0(st->cxt, sizeof(uint64) * nslots, &sc);
	if (st->nunits > 0)
	{
		memcpy(units, st->units, sizeof(UvUnit) * st->nunits);
		memcpy(rows, st->rows, st->rowsize * st->nunits);
		for (i = 0; i < st->nunits; i++)
		{
			uint32		h = hash_bytes((const unsigned char *) unit_key(&units[i]), (int) units[i].keylen);
			uint64		pos = h & (nslots - 1);

			while (slots[pos] != 0)
				pos = (pos + 1) & (nslots - 1);
			slots[pos] = ((uint64) h << 32) | (uint64) (i + 1);
		}
	}
	if (st->units_chunk)
	{
		pfree(st->units_chunk);
		pfree(st->rows_chunk);
		pfree(st->slots_chunk);
	}
	st->units = units;
	st->rows = rows;
	st->slots = slots;
	st->units_chunk = uc;
	st->rows_chunk = rc;
	st->slots_chunk = sc;
	st->maxunits = maxunits;
	st->mask = nslots - 1;
}

static void
insert_unit(UvState *st, const char *key, uint32 keylen, uint16 variant,
			bool t0null, int64 t0)
{
	uint32		h = hash_bytes((const unsigned char *) key, (int) keylen);
	uint64		pos = h & st->mask;
	UvUnit	   *u;
	char	   *row;
	int			c;

	if (st->nunits >= st->maxunits)
	{
		/* (a table of units read without a count: grown, by a half) */
		alloc_units(st, st->maxunits + Max(st->maxunits / 2, 1024));
		pos = h & st->mask;
	}
	while (st->slots[pos] != 0)
	{
		UvUnit	   *o = &st->units[(st->slots[pos] & 0xFFFFFFFF) - 1];

		if ((uint32) (st->slots[pos] >> 32) == h && o->keylen == keylen &&
			memcmp(unit_key(o), key, keylen) == 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("unit_ids has \"%s\" more than once",
							exp_message_clip(key, (int) keylen))));
		pos = (pos + 1) & st->mask;
	}
	u = &st->units[st->nunits];
	u->t0 = t0;
	u->t0null = t0null;
	u->variant = variant;
	u->keylen = keylen;
	if (keylen <= UV_INLINE_KEY)
		memcpy(u->key.inline_key, key, keylen);
	else
	{
		u->key.ptr = MemoryContextAlloc(st->unit_cxt, keylen);
		memcpy(u->key.ptr, key, keylen);
	}
	st->slots[pos] = ((uint64) h << 32) | (uint64) (st->nunits + 1);

	row = UV_ROW(st, st->nunits);
	memset(row, 0, st->rowsize);
	for (c = 0; c < st->ncal; c++)
		UV_BOUNDS(st, row)[c] = (t0null || TIMESTAMP_NOT_FINITE(t0)) ? t0 :
			add_interval(t0, &st->cal_offsets[c]);
	st->nunits++;
}

/* adds one unit (unit_id, variant, t0) from the argument arrays */
static void
add_unit(UvState *st, Datum du, bool nu, Datum dv, bool nv, Datum dt, bool nt)
{
	text	   *k;
	text	   *vn;
	int			v;

	if (nu)
		return;					/* a NULL unit joins no event */
	if (nv)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("variants has a NULL element")));
	k = DatumGetTextPP(du);
	vn = DatumGetTextPP(dv);
	for (v = 0; v < st->nvariants; v++)
		if (strlen(st->variants[v]) == VARSIZE_ANY_EXHDR(vn) &&
			memcmp(st->variants[v], VARDATA_ANY(vn), VARSIZE_ANY_EXHDR(vn)) == 0)
			break;
	if (v == st->nvariants)
	{
		if (st->nvariants >= PG_UINT16_MAX)
			ereport(ERROR,
					(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
					 errmsg("too many variants")));
		st->variants[v] = MemoryContextStrdup(st->cxt, text_to_cstring(vn));
		st->nvariants++;
	}
	insert_unit(st, VARDATA_ANY(k), VARSIZE_ANY_EXHDR(k), (uint16) v, nt,
				nt ? 0 : DatumGetTimestampTz(dt));
}

/*
 * The set of the hashes of the events' keys (events first): open addressing
 * at most half full; a hash of 0 is kept as 1 (two hashes then stand for
 * each other: a unit loaded for nothing, without events, is not returned).
 */
static void
touched_add(UvState *st, uint32 h)
{
	uint64		pos;

	h = h != 0 ? h : 1;
	if (st->touched == NULL || (uint64) st->ntouched * 2 >= st->touched_mask + 1)
	{
		uint64		n = st->touched == NULL ? 1024 : (st->touched_mask + 1) * 2;
		uint32	   *t = MemoryContextAllocHuge(st->cxt, sizeof(uint32) * n);
		uint64		i;

		memset(t, 0, sizeof(uint32) * n);
		for (i = 0; st->touched != NULL && i <= st->touched_mask; i++)
			if (st->touched[i] != 0)
			{
				pos = st->touched[i] & (n - 1);
				while (t[pos] != 0)
					pos = (pos + 1) & (n - 1);
				t[pos] = st->touched[i];
			}
		if (st->touched != NULL)
			pfree(st->touched);
		st->touched = t;
		st->touched_mask = n - 1;
	}
	pos = h & st->touched_mask;
	while (st->touched[pos] != 0)
	{
		if (st->touched[pos] == h)
			return;
		pos = (pos + 1) & st->touched_mask;
	}
	st->touched[pos] = h;
	st->ntouched++;
}

/* whether a key's hash is in the set and in this pass */
static bool
touched_in_pass(const UvState *st, uint32 h)
{
	uint32		c = h != 0 ? h : 1;
	uint64		pos = c & st->touched_mask;

	if (st->npass > 1 && murmurhash32(h) % (uint32) st->npass != (uint32) st->pass)
		return false;
	while (st->touched[pos] != 0)
	{
		if (st->touched[pos] == c)
			return true;
		pos = (pos + 1) & st->touched_mask;
	}
	return false;
}

static uint32
text_hash(Datum d)
{
	text	   *k = DatumGetTextPP(d);
	uint32		h = hash_bytes((const unsigned char *) VARDATA_ANY(k), (int) VARSIZE_ANY_EXHDR(k));

	if ((Pointer) k != DatumGetPointer(d))
		pfree(k);
	return h;
}

/* receives (unit_id text, variant text, t0 timestamptz[, ctid tid]) from a relation of units */
static bool
uv_receive_unit(TupleTableSlot *slot, DestReceiver *self)
{
	UvState    *st = ((UvReceiver *) self)->st;
	int64		before = st->nunits;

	slot_getallattrs(slot);
	if ((st->nunits & 0xFFFF) == 0)
		CHECK_FOR_INTERRUPTS();
	/* events first: only the units with events read, those of this pass */
	if (st->touched != NULL &&
		(slot->tts_isnull[0] || !touched_in_pass(st, text_hash(slot->tts_values[0]))))
		return true;
	add_unit(st, slot->tts_values[0], slot->tts_isnull[0], slot->tts_values[1], slot->tts_isnull[1],
			 slot->tts_values[2], slot->tts_isnull[2]);
	if (st->with_tid && st->nunits > before)
		ItemPointerCopy((ItemPointer) DatumGetPointer(slot->tts_values[3]),
						(ItemPointer) (UV_ROW(st, st->nunits - 1) + st->tid_off));
	return true;
}

static void
uv_unit_startup(DestReceiver *self, int operation, TupleDesc typeinfo)
{
	UvState    *st = ((UvReceiver *) self)->st;

	if (typeinfo->natts != (st->with_tid ? 4 : 3) || TupleDescAttr(typeinfo, 0)->atttypid != TEXTOID ||
		TupleDescAttr(typeinfo, 1)->atttypid != TEXTOID ||
		TupleDescAttr(typeinfo, 2)->atttypid != TIMESTAMPTZOID ||
		(st->with_tid && TupleDescAttr(typeinfo, 3)->atttypid != TIDOID))
		ereport(ERROR,
				(errcode(ERRCODE_DATATYPE_MISMATCH),
				 errmsg("the relation of units must have the columns unit_id text, variant text and t0 timestamptz%s",
						st->with_tid ? ", and its ctid" : "")));
}

/*
 * Loads the units of a relation (as the calling user, through SPI: inside
 * SPI_connect()): unit_id, variant and t0 of the rows that are not multi,
 * whose reset is reset (-1: any) and, with nparts > 1, whose unit id is in
 * partition part (the condition of experiment.unit_partition_sql()).
 */
static void
read_units(UvState *st, Oid units_rel, int reset, int nparts, int part)
{
	StringInfoData q;
	UvReceiver	recv;
	SPIExecuteOptions opts;
	int			ret;

	char	   *relname = get_rel_name(units_rel);
	char	   *nspname = relname ? get_namespace_name(get_rel_namespace(units_rel)) : NULL;

	if (relname == NULL || nspname == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("units: relation %u does not exist", units_rel)));
	initStringInfo(&q);
	appendStringInfo(&q, "SELECT u.unit_id, u.variant, u.t0%s FROM %s u WHERE NOT u.multi",
					 st->with_tid ? ", u.ctid" : "", quote_qualified_identifier(nspname, relname));
	if (reset >= 0)
		appendStringInfo(&q, " AND %su.reset", reset ? "" : "NOT ");
	if (nparts > 1)
		appendStringInfo(&q, " AND (pg_catalog.hashtext(u.unit_id) OPERATOR(pg_catalog.&) 2147483647) "
						 "OPERATOR(pg_catalog.%%) %d = %d", nparts, part);
	memset(&recv, 0, sizeof(recv));
	recv.pub.receiveSlot = uv_receive_unit;
	recv.pub.rStartup = uv_unit_startup;
	recv.pub.rShutdown = uv_shutdown;
	recv.pub.rDestroy = uv_destroy;
	recv.pub.mydest = DestNone;
	recv.st = st;
	memset(&opts, 0, sizeof(opts));
	opts.read_only = true;
	opts.dest = &recv.pub;
	ret = SPI_execute_extended(q.data, &opts);
	/* (with a receiver of its own, a SELECT is reported as SPI_OK_UTILITY) */
	if (ret != SPI_OK_SELECT && ret != SPI_OK_UTILITY)
		elog(ERROR, "reading the units failed: %s", SPI_result_code_string(ret));
	pfree(q.data);
}

/* appends x to the value list of a sketch accumulator, making the list on the first value */
static void
list_append(UvState *st, double *acc, double x)
{
	UvList	   *l;

	if (*acc == 0.0)
	{
		if (st->nlists >= st->maxlists)
		{
			int64		m = Max(st->maxlists * 2, 1024);

			st->lists = st->lists == NULL
				? MemoryContextAllocHuge(st->cxt, sizeof(UvList) * m)
				: repalloc_huge(st->lists, sizeof(UvList) * m);
			st->maxlists = m;
		}
		l = &st->lists[st->nlists++];
		l->n = 0;
		l->cap = 4;
		l->vals = MemoryContextAlloc(st->unit_cxt, sizeof(double) * l->cap);
		*acc = (double) st->nlists;
	}
	else
		l = &st->lists[(int64) *acc - 1];
	if (l->n >= l->cap)
	{
		l->cap *= 2;
		l->vals = repalloc_huge(l->vals, sizeof(double) * l->cap);
	}
	l->vals[l->n++] = x;
}

static inline int64
spec_bound(const UvBound *b, const UvUnit *u, const int64 *bounds)
{
	int64		r;

	if (b->calendar)
		return bounds[b->cal];
	if (TIMESTAMP_NOT_FINITE(u->t0))
		return u->t0;
	if (unlikely(pg_add_s64_overflow(u->t0, b->usecs, &r) ||
				 r >= END_TIMESTAMP || r < MIN_TIMESTAMP))
		return b->usecs > 0 ? DT_NOEND : DT_NOBEGIN;
	return r;
}

/*
 * The three steps of an event's lookup, run as a pipeline over the batch
 * (flush_batch()): each step's memory is fetched a few events before the
 * next step needs it, so that the random reads of a large hash table
 * overlap instead of each stalling in turn (a batch of prefetches issued at
 * once would exceed the few misses a core keeps in flight).
 */
#define UV_AHEAD_PROBE	8		/* events between hashing and probing */
#define UV_AHEAD_ACCUM	8		/* events between probing and accumulating */

/* step 1: hash the key and fetch its first slot */
static pg_attribute_always_inline void
event_hash(UvState *st, UvEvent *e)
{
	e->hash = hash_bytes((const unsigned char *) st->keys.data + e->keyoff, (int) e->keylen);
	e->pos = e->hash & st->mask;
	__builtin_prefetch(&st->slots[e->pos]);
}

/* step 2: the first slot with the event's hash (or an empty one); fetch its unit and row */
static pg_attribute_always_inline void
event_probe(UvState *st, UvEvent *e)
{
	uint64		s;

	e->unit = -1;
	while ((s = st->slots[e->pos]) != 0)
	{
		if ((uint32) (s >> 32) == e->hash)
		{
			const char *row;
			const char *p;

			e->unit = (int64) (s & 0xFFFFFFFF) - 1;
			__builtin_prefetch(&st->units[e->unit]);
			row = UV_ROW(st, e->unit);
			for (p = row; p < row + st->rowsize; p += 64)
				__builtin_prefetch(p, 1);
			__builtin_prefetch(row + st->rowsize - 1, 1);
			break;
		}
		e->pos = (e->pos + 1) & st->mask;
	}
}

/*
 * step 3: compare the keys (on a hash collision continue the probe) and
 * accumulate event i into its unit's row
 */
static pg_attribute_always_inline void
event_accumulate(UvState *st, int i)
{
	UvEvent    *e = &st->ev[i];
	const char *key = st->keys.data + e->keyoff;
	UvUnit	   *u;
	char	   *row;
	int64	   *bounds;
	double	   *acc;
	uint8	   *seen;
	int			k;

	/* exact comparison; on a hash collision continue the probe */
	while (e->unit >= 0)
	{
		uint64		s;

		u = &st->units[e->unit];
		if (u->keylen == e->keylen && memcmp(unit_key(u), key, e->keylen) == 0)
			break;
		e->unit = -1;
		for (;;)
		{
			e->pos = (e->pos + 1) & st->mask;
			s = st->slots[e->pos];
			if (s == 0)
				break;
			if ((uint32) (s >> 32) == e->hash)
			{
				e->unit = (int64) (s & 0xFFFFFFFF) - 1;
				break;
			}
		}
	}
	if (e->unit < 0)
		return;
	u = &st->units[e->unit];
	if (u->t0null)
		return;
	row = UV_ROW(st, e->unit);
	bounds = UV_BOUNDS(st, row);
	acc = UV_ACC(st, row);
	seen = UV_SEEN(st, row);
	for (int s = 0; s < st->nspec; s++)
	{
		UvSpec	   *sp = &st->specs[s];
		int64		ts;
		double		x;

		if (st->ev_tsnull[i * st->ntime + sp->tcol])
			continue;
		ts = st->ev_ts[i * st->ntime + sp->tcol];
		if (ts < spec_bound(&sp->lo, u, bounds))
			continue;
		if (sp->hi.present && ts >= spec_bound(&sp->hi, u, bounds))
			continue;
		if (sp->use_end && st->has_end && ts >= st->end_at)
			continue;
		/* in split mode, events from the split on accumulate apart */
		k = (st->has_split && ts >= st->split) ? st->nspec + s : s;
		if (sp->vcol < 0)
		{
			if (sp->agg == AGG_SUM || sp->agg == AGG_COUNT)
				acc[k] += 1.0;
			else
				acc[k] = 1.0;
			seen[k] = 1;
			continue;
		}
		if (st->ev_valnull[i * st->nval + sp->vcol])
			continue;
		x = st->ev_val[i * st->nval + sp->vcol];
		if (unlikely(!isfinite(x)))
		{
			/* NaN and infinities are no measurement: skipped, counted */
			uint32	   *sk = UV_SKIPPED(st, row);

			if (sk[k] < PG_UINT32_MAX)
				sk[k]++;
			continue;
		}
		if (sp->agg != AGG_MAX)
			seen[k] = 1;
		switch (sp->agg)
		{
			case AGG_SUM:
				{
					double		r = acc[k] + x;

					/* as float8pl */
					if (unlikely(isinf(r)))
						ereport(ERROR,
								(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
								 errmsg("the sum of column \"%s\" over the events of unit \"%s\" is out of range for float8",
										st->val_names[sp->vcol],
										exp_message_clip(unit_key(u), (int) u->keylen))));
					acc[k] = r;
					break;
				}
			case AGG_COUNT:
				acc[k] += 1.0;
				break;
			case AGG_ANY:
				if (x != 0.0)
					acc[k] = 1.0;
				break;
			case AGG_MAX:
				if (!seen[k] || x > acc[k])
					acc[k] = x;
				seen[k] = 1;
				break;
			case AGG_SKETCH:
				list_append(st, &acc[k], x);
				break;
		}
	}
}

/* look the units of the batch up and accumulate their events */
static void
flush_batch(UvState *st)
{
	int			n = st->nbatch;
	int			i;

	for (i = 0; i < n + UV_AHEAD_PROBE + UV_AHEAD_ACCUM; i++)
	{
		int			j = i - UV_AHEAD_PROBE;
		int			a = j - UV_AHEAD_ACCUM;

		if (i < n)
			event_hash(st, &st->ev[i]);
		if (j >= 0 && j < n)
			event_probe(st, &st->ev[j]);
		if (a >= 0 && a < n)
			event_accumulate(st, a);
	}
	st->nbatch = 0;
	resetStringInfo(&st->keys);
}

/*
 * receives (unit text, time columns..., value columns...) from the source;
 * value columns arrive as float8 or boolean
 */
static bool
uv_receive_event(TupleTableSlot *slot, DestReceiver *self)
{
	UvState    *st = ((UvReceiver *) self)->st;
	int			i = st->nbatch;
	UvEvent    *e = &st->ev[i];
	text	   *k;
	int			c;
	bool		any_time = false;

	slot_getallattrs(slot);
	if (slot->tts_isnull[0])
		return true;
	for (c = 0; c < st->ntime; c++)
	{
		bool		isnull = slot->tts_isnull[1 + c];

		st->ev_tsnull[i * st->ntime + c] = isnull;
		if (!isnull)
		{
			int64		ts = DatumGetTimestampTz(slot->tts_values[1 + c]);

			st->ev_ts[i * st->ntime + c] = ts;
			any_time = true;
			if (!st->has_latest || ts > st->latest)
			{
				st->latest = ts;
				st->has_latest = true;
			}
		}
	}
	if (!any_time)
		return true;			/* counts in no window */
	for (c = 0; c < st->nval; c++)
	{
		int			a = 1 + st->ntime + c;
		bool		isnull = slot->tts_isnull[a];

		st->ev_valnull[i * st->nval + c] = isnull;
		if (!isnull)
			st->ev_val[i * st->nval + c] = st->val_is_bool[c] ?
				(DatumGetBool(slot->tts_values[a]) ? 1.0 : 0.0) :
				DatumGetFloat8(slot->tts_values[a]);
	}
	k = DatumGetTextPP(slot->tts_values[0]);
	e->keylen = VARSIZE_ANY_EXHDR(k);
	e->keyoff = st->keys.len;
	appendBinaryStringInfo(&st->keys, VARDATA_ANY(k), e->keylen);
	if ((Pointer) k != DatumGetPointer(slot->tts_values[0]))
		pfree(k);
	if (++st->nbatch == UV_BATCH)
		flush_batch(st);
	return true;
}

/*
 * events first: the receiver that keeps the source's rows in a tuplestore
 * and the hashes of their keys in the set
 */
typedef struct
{
	UvReceiver	r;
	Tuplestorestate *store;
	TupleDesc	desc;
	int64		nrows;
	double		keybytes;
} UvBuffer;

static void
uv_buffer_startup(DestReceiver *self, int operation, TupleDesc typeinfo)
{
	UvBuffer   *b = (UvBuffer *) self;
	MemoryContext old;

	uv_startup(self, operation, typeinfo);
	old = MemoryContextSwitchTo(b->r.st->cxt);
	b->desc = CreateTupleDescCopy(typeinfo);
	MemoryContextSwitchTo(old);
}

static bool
uv_buffer_receive(TupleTableSlot *slot, DestReceiver *self)
{
	UvBuffer   *b = (UvBuffer *) self;
	bool		isnull;
	Datum		d = slot_getattr(slot, 1, &isnull);
	text	   *k;

	if (isnull)
		return true;			/* (no unit: as uv_receive_event()) */
	if ((b->nrows & 0xFFFF) == 0)
		CHECK_FOR_INTERRUPTS();
	k = DatumGetTextPP(d);
	b->keybytes += VARSIZE_ANY_EXHDR(k);
	touched_add(b->r.st, hash_bytes((const unsigned char *) VARDATA_ANY(k), (int) VARSIZE_ANY_EXHDR(k)));
	if ((Pointer) k != DatumGetPointer(d))
		pfree(k);
	tuplestore_puttupleslot(b->store, slot);
	b->nrows++;
	return true;
}

static ArrayType *
array_arg(FunctionCallInfo fcinfo, int argno, const char *name)
{
	if (PG_ARGISNULL(argno))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must not be NULL", name)));
	return PG_GETARG_ARRAYTYPE_P(argno);
}

/* the elements of a one-dimensional array argument with nspec elements */
static void
array_elems(FunctionCallInfo fcinfo, int argno, const char *name, Oid elemtype,
			int nspec, Datum **values, bool **nulls)
{
	ArrayType  *a = array_arg(fcinfo, argno, name);
	int16		typlen;
	bool		typbyval;
	char		typalign;
	int			n;

	if (ARR_NDIM(a) > 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must be a one-dimensional array", name)));
	get_typlenbyvalalign(elemtype, &typlen, &typbyval, &typalign);
	deconstruct_array(a, elemtype, typlen, typbyval, typalign, values, nulls, &n);
	if (n != nspec)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s has %d elements, aggregations has %d", name, n, nspec)));
}

/* index of a column name in a list, appending it when new */
static int
column_index(List **names, const char *name)
{
	ListCell   *lc;
	int			i = 0;

	foreach(lc, *names)
	{
		if (strcmp((const char *) lfirst(lc), name) == 0)
			return i;
		i++;
	}
	*names = lappend(*names, pstrdup(name));
	return i;
}

static void
check_column(Oid rel, const char *col, const char *what)
{
	if (get_attnum(rel, col) == InvalidAttrNumber)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s \"%s\" is not a column of %s", what,
						exp_message_clip(col, (int) strlen(col)), get_rel_name(rel))));
}

static void
plan_bound(UvState *st, UvBound *b, Datum d, bool isnull, bool fixed_zone,
		   List **cal)
{
	Interval   *iv;
	ListCell   *lc;
	int			i = 0;

	b->present = !isnull;
	if (isnull)
		return;
	iv = DatumGetIntervalP(d);
	/* in a zone without daylight saving a day is always 24 hours */
	if (iv->month == 0 && (iv->day == 0 || fixed_zone))
	{
		int64		dayus;

		b->calendar = false;
		/* beyond the range of timestamptz either way: clamped in spec_bound */
		if (pg_mul_s64_overflow((int64) iv->day, USECS_PER_DAY, &dayus) ||
			pg_add_s64_overflow(dayus, iv->time, &b->usecs))
			b->usecs = iv->day > 0 ? PG_INT64_MAX : PG_INT64_MIN;
		return;
	}
	b->calendar = true;
	foreach(lc, *cal)
	{
		Interval   *o = (Interval *) lfirst(lc);

		if (o->month == iv->month && o->day == iv->day && o->time == iv->time)
		{
			b->cal = i;
			return;
		}
		i++;
	}
	*cal = lappend(*cal, iv);
	b->cal = i;
}

/*
 * Lock the source and every relation it reads (experiment.source_relations:
 * through views and row-level security policies, and inheritance children),
 * then check it with experiment.source_trust_problem().  DDL that could turn
 * one of them into code (a new owner, a rule on an empty table, CREATE OR
 * REPLACE VIEW, row-level security, an index) takes a stronger lock, so what
 * the check sees is what the scan reads.  A relation changed before its lock
 * may read new relations: the list is read again, with a fresh snapshot,
 * until it holds nothing new.  That last list is read through the query's
 * snapshot and the scan goes through the relation cache, which the locks
 * brought up to date: they must agree on what could run code (in a
 * REPEATABLE READ transaction the snapshot may predate a change).  Runs
 * inside SPI, as the caller.
 */
static void
lock_and_check_source(Oid src_rel, Oid reader)
{
	List	   *locked = NIL;
	Oid			argtypes[2] = {REGCLASSOID, REGROLEOID};
	Datum		args[2] = {ObjectIdGetDatum(src_rel), ObjectIdGetDatum(reader)};
	bool		more = true;
	bool		isnull;
	uint64		r;
	int			ret;
	Datum		problem;

	while (more)
	{
		more = false;
		/* (not read-only: a fresh snapshot, taken after the locks) */
		ret = SPI_execute_with_args("SELECT c.oid, c.relkind, c.relowner, c.relrowsecurity "
									"FROM experiment.source_relations($1) r "
									"JOIN pg_catalog.pg_class c ON c.oid = r",
									1, argtypes, args, NULL, false, 0);
		if (ret != SPI_OK_SELECT)
			elog(ERROR, "listing the relations of the source failed: %s",
				 SPI_result_code_string(ret));
		for (r = 0; r < SPI_processed; r++)
		{
			Oid			rel = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[r],
															 SPI_tuptable->tupdesc, 1, &isnull));

			if (!list_member_oid(locked, rel))
			{
				LockRelationOid(rel, AccessShareLock);
				locked = lappend_oid(locked, rel);
				more = true;
			}
		}
	}
	for (r = 0; r < SPI_processed; r++)
	{
		HeapTuple	t = SPI_tuptable->vals[r];
		TupleDesc	d = SPI_tuptable->tupdesc;
		Relation	rel = try_relation_open(DatumGetObjectId(SPI_getbinval(t, d, 1, &isnull)),
											NoLock);

		if (rel == NULL)
			continue;
		if (rel->rd_rel->relkind != DatumGetChar(SPI_getbinval(t, d, 2, &isnull)) ||
			rel->rd_rel->relowner != DatumGetObjectId(SPI_getbinval(t, d, 3, &isnull)) ||
			rel->rd_rel->relrowsecurity != DatumGetBool(SPI_getbinval(t, d, 4, &isnull)))
			ereport(ERROR,
					(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
					 errmsg("relation %s changed while its source was being checked",
							RelationGetRelationName(rel)),
					 errhint("Retry the refresh.")));
		relation_close(rel, NoLock);
	}

	/* nothing in the source may run code chosen by a less trusted role */
	ret = SPI_execute_with_args("SELECT experiment.source_trust_problem($1, $2)",
								2, argtypes, args, NULL, false, 1);
	if (ret != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "checking the source failed: %s", SPI_result_code_string(ret));
	problem = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	if (!isnull)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("refusing to read %s as role \"%s\": %s",
						get_rel_name(src_rel), GetUserNameFromId(reader, false),
						TextDatumGetCString(problem)),
				 errhint("Have the role named there (or a member of it) own the metric, so that the "
						 "source is read as it, or let a role trusted by \"%s\" own the object "
						 "(doc/security.md).",
						 GetUserNameFromId(reader, false))));
}

/*
 * source_unit_values(unit_ids text[], variants text[], t0s timestamptz[],
 *                    source regclass, unit_column text,
 *                    time_columns text[], value_columns text[],
 *                    aggregations text[], lo_offsets interval[],
 *                    hi_offsets interval[], use_end boolean[],
 *                    end_at timestamptz, scan_from timestamptz,
 *                    scan_to timestamptz, reader regrole,
 *                    split_at timestamptz, probe boolean, partial boolean)
 *   RETURNS TABLE (unit_id text, variant text, t0 timestamptz,
 *                  vals float8[], skipped bigint[], latest timestamptz,
 *                  split timestamptz)
 *
 * One row per unit (the three arrays, element by element; a NULL unit id is
 * skipped), with vals[k] the aggregation k over the unit's events in source
 * inside window k (see the file header).  scan_from/scan_to, when given
 * and every spec reads the same time column, restrict the scan to that
 * column in [scan_from, scan_to); they must cover every window.  Values
 * that are NaN or infinite are not aggregated; skipped[k] counts them (NULL
 * when the unit had none).
 *
 * With split_at, vals and skipped have 2n elements: k for the events before
 * split_at, n + k for those from it on; the maximum of no event is NULL (so
 * that parts merge); partial returns only the units with counted or skipped
 * events.  With probe, the latest time of the (single) time column from
 * scan_from on is read first.  In either mode a last row without a unit
 * carries latest (the latest time read) and split.
 *
 * The source is read as role reader (NULL: the current user), which the
 * current user must have the privileges of, inside a security-restricted
 * operation with search_path pg_catalog, pg_temp: exactly as PostgreSQL
 * refreshes a materialized view as its owner.  Before that,
 * experiment.source_trust_problem() must find no object in the source that
 * a role without the reader's privileges could change to run code as the
 * reader (doc/security.md).
 */
/*
 * The rows of the units of the hash table (with partial, only those with
 * events) into the result
 */
static void
emit_units(UvState *st, Tuplestorestate *tupstore, TupleDesc tupdesc, bool partial)
{
	MemoryContext oldcxt = CurrentMemoryContext;
	int			nspec = st->nspec;
	int			k;
	int64		i;
	MemoryContext tmp = AllocSetContextCreate(st->cxt, "source_unit_values row",
											  ALLOCSET_SMALL_SIZES);
	int			nacc = st->nacc;
	Datum	   *vdat = MemoryContextAlloc(st->cxt, sizeof(Datum) * Max(nacc, 1));
	bool	   *vnul = MemoryContextAlloc(st->cxt, sizeof(bool) * Max(nacc, 1));
	Datum	   *sdat = MemoryContextAlloc(st->cxt, sizeof(Datum) * Max(nacc, 1));
	Datum	   *kdat = MemoryContextAlloc(st->cxt, sizeof(Datum) * Max(nacc, 1));
	bool	   *knul = MemoryContextAlloc(st->cxt, sizeof(bool) * Max(nacc, 1));
	Oid			sketch_oid = st->has_sketch ? exp_sketch_type_oid() : InvalidOid;
	int16		sketch_len = 0;
	bool		sketch_byval = false;
	char		sketch_align = TYPALIGN_INT;
	int			dims[1] = {nacc};
	int			lbs[1] = {1};
	Datum	   *vnames = MemoryContextAlloc(st->cxt, sizeof(Datum) * Max(st->nvariants, 1));

	for (k = 0; k < st->nvariants; k++)
		vnames[k] = PointerGetDatum(cstring_to_text(st->variants[k]));
	if (st->has_sketch)
		get_typlenbyvalalign(sketch_oid, &sketch_len, &sketch_byval, &sketch_align);
	for (i = 0; i < st->nunits; i++)
	{
		UvUnit	   *u = &st->units[i];
		double	   *acc = UV_ACC(st, UV_ROW(st, i));
		uint32	   *sk = UV_SKIPPED(st, UV_ROW(st, i));
		uint8	   *seen = UV_SEEN(st, UV_ROW(st, i));
		Datum		values[9];
		bool		nulls[9] = {false, false, false, false, true, true, true, true, !st->with_tid};
		bool		touched = false;

		if ((i & 0xFFFF) == 0)
			CHECK_FOR_INTERRUPTS();
		for (k = 0; k < nacc; k++)
			if (seen[k] || sk[k] > 0)
				touched = true;
		if (partial && !touched)
			continue;
		MemoryContextSwitchTo(tmp);
		for (k = 0; k < nacc; k++)
		{
			vdat[k] = Float8GetDatum(acc[k]);
			/* in split mode the maximum of no event is NULL, so that the parts merge */
			vnul[k] = st->has_split && st->specs[k % nspec].agg == AGG_MAX && !seen[k];
			sdat[k] = Int64GetDatum((int64) sk[k]);
			knul[k] = true;
			if (st->specs[k % nspec].agg == AGG_SKETCH)
			{
				/* the value is the number of values; the sketch holds them (NULL: none) */
				vdat[k] = Float8GetDatum(0.0);
				if (acc[k] != 0.0)
				{
					UvList	   *l = &st->lists[(int64) acc[k] - 1];

					vdat[k] = Float8GetDatum((double) l->n);
					kdat[k] = exp_sketch_from_values(l->vals, l->n);
					knul[k] = false;
				}
			}
			if (sk[k] > 0)
				nulls[4] = false;
		}
		if (!nulls[4])
			values[4] = PointerGetDatum(construct_array(sdat, nacc, INT8OID, sizeof(int64),
														FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
		values[0] = PointerGetDatum(cstring_to_text_with_len(unit_key(u), (int) u->keylen));
		values[1] = vnames[u->variant];
		values[2] = TimestampTzGetDatum(u->t0);
		nulls[2] = u->t0null;
		values[3] = PointerGetDatum(construct_md_array(vdat, vnul, 1, dims, lbs, FLOAT8OID,
													   sizeof(float8), FLOAT8PASSBYVAL,
													   TYPALIGN_DOUBLE));
		if (st->has_sketch)
		{
			values[7] = PointerGetDatum(construct_md_array(kdat, knul, 1, dims, lbs, sketch_oid,
														   sketch_len, sketch_byval, sketch_align));
			nulls[7] = false;
		}
		if (st->with_tid)
			values[8] = PointerGetDatum(UV_ROW(st, i) + st->tid_off);
		tuplestore_putvalues(tupstore, tupdesc, values, nulls);
		MemoryContextSwitchTo(oldcxt);
		MemoryContextReset(tmp);
	}
	MemoryContextDelete(tmp);
}

/*
 * The row of one unit (UV_ROW): ncal calendar bounds, nacc accumulators with
 * their skipped counts and seen flags, and with_tid the ctid of its stored row
 */
static Size
uv_row_bytes(int nacc, int ncal, bool with_tid)
{
	return sizeof(int64) * ncal + sizeof(double) * nacc + MAXALIGN(sizeof(uint32) * nacc + Max(nacc, 1)) +
		(with_tid ? MAXALIGN(sizeof(ItemPointerData)) : 0);
}

/*
 * The memory of a split-mode scan of specs specs (ncal calendar bounds, a
 * tid in each row) whose units table is sized for `sized` units and holds
 * `units` of them, with keys of key bytes on average: the hash table's slots
 * (a power of two, at least twice the units it is sized for: alloc_units()),
 * per unit it is sized for the unit record and the row, per unit held its key
 * when it is not inline
 */
static double
uv_table_bytes(double sized, double units, int specs, int ncal, double key)
{
	double		slots = 16;

	sized = Max(sized, 1);
	while (slots < sized * 2)
		slots *= 2;
	return slots * sizeof(uint64) + sized * (sizeof(UvUnit) + uv_row_bytes(2 * specs, ncal, true)) +
		units * (key > UV_INLINE_KEY ? key : 0.0);
}

/*
 * units split into shares (the unit-hash partitions of a refresh, the passes
 * of an events-first scan), each scanned with a table sized for its share,
 * 1/margin_div more (only with several shares unless margin_alone) and 1024
 * more, at most cap units
 */
typedef struct
{
	double		units;
	int			specs;
	int			ncal;
	double		key;
	double		margin_div;
	bool		margin_alone;
	double		cap;
} UvShares;

/* the memory of the table of one of n shares */
static double
uv_share_bytes(const UvShares *s, double n)
{
	double		share = floor(s->units / n);
	double		sized = share + (n > 1 || s->margin_alone ? floor(share / s->margin_div) : 0) + 1024;

	return uv_table_bytes(Min(sized, s->cap), share, s->specs, s->ncal, s->key);
}

/*
 * The fewest shares in [lo, hi] whose table fits in budget bytes, by binary
 * search (the memory falls as the shares grow); -1 when even hi does not fit
 */
static double
uv_fewest_shares(const UvShares *s, double lo, double hi, double budget)
{
	if (uv_share_bytes(s, hi) > budget)
		return -1;
	while (lo < hi)
	{
		double		mid = floor((lo + hi) / 2);

		if (uv_share_bytes(s, mid) <= budget)
			hi = mid;
		else
			lo = mid + 1;
	}
	return lo;
}

/*
 * The bytes of experiment.refresh_memory the units' hash tables may take:
 * three quarters of it, less the tuplestores (1/16 each) of `stores` scans,
 * at least a quarter
 */
static double
uv_budget(int stores)
{
	double		budget = (double) exp_refresh_memory_kb * 1024.0;

	return Max(budget * 0.75 - (double) stores * budget / UV_RESULT_SHARE, budget / 4.0);
}

/*
 * Whether a valid index of the (locked) source has the unit column as its
 * first key column: a scan of a few units then asks for their ids, and the
 * index finds their events.  (Without such an index the condition would only
 * cost a filter on every row of the time range.)
 */
static bool
unit_index_leads(Oid src_rel, const char *unit_col)
{
	Relation	rel = relation_open(src_rel, NoLock);
	AttrNumber	att = get_attnum(src_rel, unit_col);
	Oid			typ = get_atttype(src_rel, att);
	List	   *indexes;
	ListCell   *lc;
	bool		found = false;

	/* (text and varchar: the condition reads the column itself, not a cast of it) */
	if (rel->rd_rel->relkind != RELKIND_RELATION || (typ != TEXTOID && typ != VARCHAROID))
	{
		relation_close(rel, NoLock);
		return false;
	}
	indexes = RelationGetIndexList(rel);
	foreach(lc, indexes)
	{
		HeapTuple	tup = SearchSysCache1(INDEXRELID, ObjectIdGetDatum(lfirst_oid(lc)));
		Form_pg_index ix;

		if (!HeapTupleIsValid(tup))
			continue;
		ix = (Form_pg_index) GETSTRUCT(tup);
		if (ix->indisvalid && ix->indnkeyatts > 0 && ix->indkey.values[0] == att &&
			heap_attisnull(tup, Anum_pg_index_indpred, NULL))
			found = true;
		ReleaseSysCache(tup);
	}
	list_free(indexes);
	relation_close(rel, NoLock);
	return found;
}

/*
 * The body of source_unit_values() and source_unit_values_from(): the
 * arguments of source_unit_values() after the unit arrays are arguments
 * off + 3 onwards; with a relation of units (units_rel), the units are read
 * from it (see read_units()) and the arrays are not arguments.
 */
static Datum
source_unit_values(FunctionCallInfo fcinfo, int off, Oid units_rel, int reset, int nparts, int part,
				   int64 expected)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	ArrayType  *unit_ids;
	ArrayType  *unit_variants;
	ArrayType  *unit_t0s;
	Oid			src_rel;
	char	   *unit_col;
	Datum	   *tcols,
			   *vcols,
			   *aggs,
			   *los,
			   *his,
			   *ends;
	bool	   *tcols_n,
			   *vcols_n,
			   *aggs_n,
			   *los_n,
			   *his_n,
			   *ends_n;
	int			nspec;
	int			k;
	List	   *time_names = NIL;
	List	   *val_names = NIL;
	List	   *cal = NIL;
	UvState    *st;
	UvReceiver	recv;
	StringInfoData q;
	ListCell   *lc;
	long		gmtoff;
	bool		fixed_zone;
	TupleDesc	tupdesc;
	Tuplestorestate *tupstore;
	MemoryContext oldcxt;
	MemoryContext callcxt = CurrentMemoryContext;
	SPIExecuteOptions opts;
	ParamListInfo params = NULL;
	int64		nrows;
	int			ret;
	Oid			reader;
	Oid			save_userid;
	int			save_sec_context;
	int			save_nestlevel;
	bool		probe;
	bool		partial;
	bool		has_probe_max = false;
	int64		probe_max = 0;
	bool		events_first;
	UvBuffer	buf;
	int			result_kb = exp_refresh_memory_kb > 0
		? Min(work_mem, Max(64, exp_refresh_memory_kb / UV_RESULT_SHARE)) : work_mem;

	if (rsinfo == NULL || !IsA(rsinfo, ReturnSetInfo) ||
		(rsinfo->allowedModes & SFRM_Materialize) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("source_unit_values must be called in a context that accepts a set")));
	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	if (tupdesc->natts != 9 || PG_NARGS() != off + 18)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the SQL declaration of source_unit_values() is of another version of the extension"),
				 errhint("Run ALTER EXTENSION experiment UPDATE.")));

	for (k = OidIsValid(units_rel) ? 3 : 0; k < 5; k++)
		if (PG_ARGISNULL(k < 3 ? k : off + k))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("%s must not be NULL",
							k == 0 ? "unit_ids" : k == 1 ? "variants" : k == 2 ? "t0s" :
							k == 3 ? "source" : "unit_column")));
	if (OidIsValid(units_rel))
	{
		/* room for the expected units; more grow the table */
		unit_ids = unit_variants = unit_t0s = NULL;
		nrows = Max(expected, 0);
	}
	else
	{
		unit_ids = PG_GETARG_ARRAYTYPE_P(0);
		unit_variants = PG_GETARG_ARRAYTYPE_P(1);
		unit_t0s = PG_GETARG_ARRAYTYPE_P(2);
		nrows = ArrayGetNItems(ARR_NDIM(unit_ids), ARR_DIMS(unit_ids));
		if (ArrayGetNItems(ARR_NDIM(unit_variants), ARR_DIMS(unit_variants)) != nrows ||
			ArrayGetNItems(ARR_NDIM(unit_t0s), ARR_DIMS(unit_t0s)) != nrows)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("unit_ids, variants and t0s must have the same number of elements")));
	}
	probe = !PG_ARGISNULL(off + 16) && PG_GETARG_BOOL(off + 16);
	partial = !PG_ARGISNULL(off + 17) && PG_GETARG_BOOL(off + 17);
	src_rel = PG_GETARG_OID(off + 3);
	unit_col = text_to_cstring(PG_GETARG_TEXT_PP(off + 4));
	if (get_rel_name(src_rel) == NULL)
		ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						errmsg("source relation %u does not exist", src_rel)));
	check_column(src_rel, unit_col, "unit_column");
	reader = PG_ARGISNULL(off + 14) ? GetUserId() : PG_GETARG_OID(off + 14);
	if (!has_privs_of_role(GetUserId(), reader))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied to read %s as role \"%s\"",
						get_rel_name(src_rel), GetUserNameFromId(reader, false)),
				 errdetail("Only roles that have the privileges of role \"%s\" may read as it.",
						   GetUserNameFromId(reader, false))));

	{
		ArrayType  *a = array_arg(fcinfo, off + 7, "aggregations");

		nspec = ArrayGetNItems(ARR_NDIM(a), ARR_DIMS(a));
	}
	array_elems(fcinfo, off + 5, "time_columns", TEXTOID, nspec, &tcols, &tcols_n);
	array_elems(fcinfo, off + 6, "value_columns", TEXTOID, nspec, &vcols, &vcols_n);
	array_elems(fcinfo, off + 7, "aggregations", TEXTOID, nspec, &aggs, &aggs_n);
	array_elems(fcinfo, off + 8, "lo_offsets", INTERVALOID, nspec, &los, &los_n);
	array_elems(fcinfo, off + 9, "hi_offsets", INTERVALOID, nspec, &his, &his_n);
	array_elems(fcinfo, off + 10, "use_end", BOOLOID, nspec, &ends, &ends_n);

	st = palloc0(sizeof(UvState));
	st->cxt = AllocSetContextCreate(callcxt, "source_unit_values",
									ALLOCSET_DEFAULT_SIZES);
	st->unit_cxt = st->cxt;
	st->nspec = nspec;
	st->specs = palloc0(sizeof(UvSpec) * Max(nspec, 1));
	fixed_zone = pg_get_timezone_offset(session_timezone, &gmtoff);
	for (k = 0; k < nspec; k++)
	{
		UvSpec	   *sp = &st->specs[k];
		char	   *agg;

		if (tcols_n[k] || aggs_n[k] || los_n[k] || ends_n[k])
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("time_columns, aggregations, lo_offsets and use_end must not contain NULL")));
		agg = TextDatumGetCString(aggs[k]);
		if (strcmp(agg, "sum") == 0)
			sp->agg = AGG_SUM;
		else if (strcmp(agg, "count") == 0)
			sp->agg = AGG_COUNT;
		else if (strcmp(agg, "any") == 0)
			sp->agg = AGG_ANY;
		else if (strcmp(agg, "max") == 0)
			sp->agg = AGG_MAX;
		else if (strcmp(agg, "sketch") == 0)
			sp->agg = AGG_SKETCH;
		else
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("invalid aggregation \"%s\"", exp_message_clip(agg, (int) strlen(agg))),
					 errhint("use sum, count, any, max or sketch")));
		if (sp->agg == AGG_SKETCH)
		{
			if (vcols_n[k])
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("aggregation sketch needs a value column")));
			st->has_sketch = true;
		}
		sp->tcol = column_index(&time_names, TextDatumGetCString(tcols[k]));
		sp->vcol = vcols_n[k] ? -1 : column_index(&val_names, TextDatumGetCString(vcols[k]));
		sp->use_end = DatumGetBool(ends[k]);
		plan_bound(st, &sp->lo, los[k], false, fixed_zone, &cal);
		plan_bound(st, &sp->hi, his[k], his_n[k], fixed_zone, &cal);
	}
	st->ntime = list_length(time_names);
	st->nval = list_length(val_names);
	if (st->nval > FUNC_MAX_ARGS)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("too many value columns (%d, at most %d)", st->nval, FUNC_MAX_ARGS)));
	st->ncal = list_length(cal);
	st->cal_offsets = palloc(sizeof(Interval) * Max(st->ncal, 1));
	k = 0;
	foreach(lc, cal)
		st->cal_offsets[k++] = *(Interval *) lfirst(lc);
	st->has_end = !PG_ARGISNULL(off + 11);
	st->end_at = st->has_end ? PG_GETARG_TIMESTAMPTZ(off + 11) : 0;
	/* split mode: the events before split_at and from it on apart */
	st->has_split = !PG_ARGISNULL(off + 15);
	st->split = st->has_split ? PG_GETARG_TIMESTAMPTZ(off + 15) : 0;
	if (probe && st->ntime != 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("probe needs one time column, the specs read %d", st->ntime)));
	if (partial && !st->has_split)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("partial needs split_at")));
	st->nacc = st->has_split ? 2 * nspec : nspec;

	/*
	 * Events first: a partial scan of the units of a relation that are not
	 * reset (the units of an incremental refresh, whose events are read from
	 * the watermark on) reads the events first, keeping them, and then only
	 * the units that have events.  Its hash table holds the units of the new
	 * events, not all units (which a first table of units would hold, read
	 * once per unit-hash partition).
	 */
	events_first = partial && OidIsValid(units_rel) && reset == 0 && !probe;

	/* the source query: unit, time columns, value columns */
	initStringInfo(&q);
	appendStringInfo(&q, "SELECT (s.%s)::pg_catalog.text", quote_identifier(unit_col));
	foreach(lc, time_names)
	{
		char	   *c = (char *) lfirst(lc);
		Oid			typ;

		check_column(src_rel, c, "time column");
		typ = get_atttype(src_rel, get_attnum(src_rel, c));
		if (typ == TIMESTAMPTZOID)
			appendStringInfo(&q, ", s.%s", quote_identifier(c));
		else
			appendStringInfo(&q, ", (s.%s)::pg_catalog.timestamptz", quote_identifier(c));
	}
	k = 0;
	foreach(lc, val_names)
	{
		char	   *c = (char *) lfirst(lc);

		check_column(src_rel, c, "value column");
		st->val_is_bool[k] = get_atttype(src_rel, get_attnum(src_rel, c)) == BOOLOID;
		appendStringInfo(&q, st->val_is_bool[k] ? ", s.%s" : ", (s.%s)::pg_catalog.float8",
						 quote_identifier(c));
		st->val_names[k] = c;
		k++;
	}
	appendStringInfo(&q, " FROM %s s",
					 quote_qualified_identifier(get_namespace_name(get_rel_namespace(src_rel)),
												get_rel_name(src_rel)));
	if (st->ntime == 1 && (!PG_ARGISNULL(off + 12) || !PG_ARGISNULL(off + 13)))
	{
		const char *tc = quote_identifier((char *) linitial(time_names));

		params = makeParamList(2);
		params->numParams = 2;
		for (k = 0; k < 2; k++)
		{
			params->params[k].ptype = TIMESTAMPTZOID;
			params->params[k].pflags = PARAM_FLAG_CONST;
			params->params[k].isnull = PG_ARGISNULL(off + 12 + k);
			params->params[k].value = PG_ARGISNULL(off + 12 + k) ? (Datum) 0 : PG_GETARG_DATUM(off + 12 + k);
		}
		appendStringInfo(&q, " WHERE ($1 IS NULL OR (s.%s)::pg_catalog.timestamptz OPERATOR(pg_catalog.>=) $1)"
						 " AND ($2 IS NULL OR (s.%s)::pg_catalog.timestamptz OPERATOR(pg_catalog.<) $2)",
						 tc, tc);
	}

	/* the units, their hash table and rows */
	oldcxt = MemoryContextSwitchTo(st->cxt);
	/* (the scans of an incremental refresh: the stored row of each unit, which its update finds by ctid) */
	st->with_tid = OidIsValid(units_rel) && reset >= 0;
	st->tid_off = uv_row_bytes(st->nacc, st->ncal, false);
	st->rowsize = uv_row_bytes(st->nacc, st->ncal, st->with_tid);
	st->ev_ts = palloc(sizeof(int64) * UV_BATCH * Max(st->ntime, 1));
	st->ev_tsnull = palloc(sizeof(bool) * UV_BATCH * Max(st->ntime, 1));
	st->ev_val = palloc(sizeof(double) * UV_BATCH * Max(st->nval, 1));
	st->ev_valnull = palloc(sizeof(bool) * UV_BATCH * Max(st->nval, 1));
	initStringInfo(&st->keys);
	st->variants = palloc(sizeof(char *) * (PG_UINT16_MAX + 1));
	MemoryContextSwitchTo(oldcxt);

	/* the result: one row per unit */
	oldcxt = MemoryContextSwitchTo(rsinfo->econtext->ecxt_per_query_memory);
	/* (within experiment.refresh_memory, the rows beyond a share of it spill to disk) */
	tupstore = tuplestore_begin_heap(true, false, result_kb);
	tupdesc = CreateTupleDescCopy(tupdesc);

	/*
	 * vals and skipped are stored in the rows as they are, not with the short
	 * header a small array would get: reading an element of an array with a
	 * short header copies the whole array first, and the refresh's statements
	 * read every element of every row (three times as fast with 12 elements).
	 * Only the storage of the rows in the tuplestore changes, not their type.
	 */
	TupleDescAttr(tupdesc, 3)->attstorage = TYPSTORAGE_PLAIN;
	TupleDescAttr(tupdesc, 4)->attstorage = TYPSTORAGE_PLAIN;
	rsinfo->returnMode = SFRM_Materialize;
	rsinfo->setResult = tupstore;
	rsinfo->setDesc = tupdesc;
	MemoryContextSwitchTo(oldcxt);
	if ((ret = SPI_connect()) != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed: %s", SPI_result_code_string(ret));

	/* the units: from the relation, as the calling user, or from the arrays (events first: later) */
	if (events_first)
		;
	else if (OidIsValid(units_rel))
	{
		alloc_units(st, nrows);
		read_units(st, units_rel, reset, nparts, part);
	}
	else
	{
		ArrayIterator iu = array_create_iterator(unit_ids, 0, NULL);
		ArrayIterator iv = array_create_iterator(unit_variants, 0, NULL);
		ArrayIterator it = array_create_iterator(unit_t0s, 0, NULL);
		Datum		du,
					dv,
					dt;
		bool		nu,
					nv,
					nt;

		while (array_iterate(iu, &du, &nu) && array_iterate(iv, &dv, &nv) &&
			   array_iterate(it, &dt, &nt))
		{
			if ((st->nunits & 0xFFFF) == 0)
				CHECK_FOR_INTERRUPTS();
			add_unit(st, du, nu, dv, nv, dt, nt);
		}
		array_free_iterator(iu);
		array_free_iterator(iv);
		array_free_iterator(it);
	}

	memset(&recv, 0, sizeof(recv));
	recv.pub.rStartup = uv_startup;
	recv.pub.rShutdown = uv_shutdown;
	recv.pub.rDestroy = uv_destroy;
	recv.pub.mydest = DestNone;
	recv.st = st;
	memset(&opts, 0, sizeof(opts));
	opts.read_only = true;
	opts.dest = &recv.pub;
	if (events_first)
	{
		/* (the rows within a share of experiment.refresh_memory, as the result's) */
		memset(&buf, 0, sizeof(buf));
		buf.r = recv;
		buf.r.pub.rStartup = uv_buffer_startup;
		buf.r.pub.receiveSlot = uv_buffer_receive;
		buf.store = tuplestore_begin_heap(true, false, result_kb);
		opts.dest = &buf.r.pub;
	}

	/* one scan of the source (and, with probe, a look at its latest time first) */
	if ((st->nunits > 0 || probe || events_first) && nspec > 0)
	{
		lock_and_check_source(src_rel, reader);

		/* as the reader, in a security-restricted operation */
		GetUserIdAndSecContext(&save_userid, &save_sec_context);
		SetUserIdAndSecContext(reader, save_sec_context | SECURITY_LOCAL_USERID_CHANGE |
							   SECURITY_RESTRICTED_OPERATION);
		save_nestlevel = NewGUCNestLevel();
		(void) set_config_option("search_path", "pg_catalog, pg_temp", PGC_USERSET,
								 PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);

		if (probe)
		{
			/* max() of the time column: an index on it answers this without a scan */
			const char *tc = quote_identifier((char *) linitial(time_names));
			StringInfoData pq;
			Oid			argtypes[1] = {TIMESTAMPTZOID};
			Datum		pargs[1] = {PG_ARGISNULL(off + 12) ? (Datum) 0 : PG_GETARG_DATUM(off + 12)};
			char		pnulls[1] = {PG_ARGISNULL(off + 12) ? 'n' : ' '};
			bool		isnull;

			initStringInfo(&pq);
			appendStringInfo(&pq, "SELECT pg_catalog.max((s.%s)::pg_catalog.timestamptz) FROM %s s"
							 " WHERE ($1 IS NULL OR (s.%s)::pg_catalog.timestamptz OPERATOR(pg_catalog.>=) $1)",
							 tc,
							 quote_qualified_identifier(get_namespace_name(get_rel_namespace(src_rel)),
														get_rel_name(src_rel)),
							 tc);
			ret = SPI_execute_with_args(pq.data, 1, argtypes, pargs, pnulls, true, 1);
			if (ret != SPI_OK_SELECT || SPI_processed != 1)
				elog(ERROR, "reading the latest time of the source failed: %s",
					 SPI_result_code_string(ret));
			probe_max = DatumGetTimestampTz(SPI_getbinval(SPI_tuptable->vals[0],
														  SPI_tuptable->tupdesc, 1, &isnull));
			has_probe_max = !isnull;
		}

		/*
		 * few units of a relation (the new and reset units of an incremental
		 * refresh, whose events are read from their first exposure's window
		 * on): their ids asked for, where an index leads with the unit column
		 */
		if (OidIsValid(units_rel) && reset == 1 && st->nunits > 0 && st->nunits <= UV_ANY_UNITS &&
			unit_index_leads(src_rel, unit_col))
		{
			Datum	   *ids = palloc(sizeof(Datum) * st->nunits);
			int			np = params != NULL ? params->numParams + 1 : 1;
			ParamListInfo p2 = makeParamList(np);
			int64		i;

			for (i = 0; i < st->nunits; i++)
				ids[i] = PointerGetDatum(cstring_to_text_with_len(unit_key(&st->units[i]),
																  (int) st->units[i].keylen));
			p2->numParams = np;
			for (k = 0; k < np - 1; k++)
				p2->params[k] = params->params[k];
			p2->params[np - 1].ptype = TEXTARRAYOID;
			p2->params[np - 1].pflags = PARAM_FLAG_CONST;
			p2->params[np - 1].isnull = false;
			p2->params[np - 1].value = PointerGetDatum(construct_array(ids, (int) st->nunits, TEXTOID, -1,
																	   false, TYPALIGN_INT));
			appendStringInfo(&q, " %s s.%s OPERATOR(pg_catalog.=) ANY ($%d::pg_catalog.text[])",
							 params != NULL ? "AND" : "WHERE", quote_identifier(unit_col), np);
			params = p2;
		}

		recv.pub.receiveSlot = uv_receive_event;
		if (st->nunits == 0 && !events_first)
			ret = SPI_OK_SELECT;
		else if (params != NULL)
		{
			Oid			argtypes[3] = {TIMESTAMPTZOID, TIMESTAMPTZOID, TEXTARRAYOID};
			/* (a parallel plan where the planner finds one cheaper) */
			SPIPlanPtr	plan;

			if (params->numParams == 1)
				argtypes[0] = TEXTARRAYOID;
			plan = SPI_prepare_cursor(q.data, params->numParams, argtypes, CURSOR_OPT_PARALLEL_OK);

			if (plan == NULL)
				elog(ERROR, "preparing the scan of the source failed: %s",
					 SPI_result_code_string(SPI_result));
			opts.params = params;
			ret = SPI_execute_plan_extended(plan, &opts);
		}
		else
			ret = SPI_execute_extended(q.data, &opts);
		if (ret != SPI_OK_SELECT && ret != SPI_OK_UTILITY)
			elog(ERROR, "scanning the source failed: %s", SPI_result_code_string(ret));
		if (st->nbatch > 0)
			flush_batch(st);
		if (has_probe_max && (!st->has_latest || probe_max > st->latest))
		{
			st->latest = probe_max;
			st->has_latest = true;
		}

		AtEOXact_GUC(false, save_nestlevel);
		SetUserIdAndSecContext(save_userid, save_sec_context);
	}

	/*
	 * events first: the units with events (as the calling user), in as many
	 * passes as keep their hash table within experiment.refresh_memory, each
	 * with the events of its units
	 */
	if (events_first && nspec > 0)
	{
		TupleTableSlot *slot = buf.desc ? MakeSingleTupleTableSlot(buf.desc, &TTSOpsMinimalTuple) : NULL;
		double		key = buf.nrows > 0 ? buf.keybytes / (double) buf.nrows : 0.0;
		int64		per_pass;

		st->npass = 1;
		if (exp_refresh_memory_kb > 0 && st->ntouched > 0)
		{
			/*
			 * the fewest passes whose table fits, each sized (below) for its
			 * share, a sixteenth and 1024 more, at most the expected units:
			 * from the whole table over the budget up to a pass per unit
			 * (when even that does not fit, the first)
			 */
			UvShares	sh = {(double) st->ntouched, nspec, st->ncal, key, 16, true, (double) nrows};
			double		budget = uv_budget(2);
			double		lo = Max(ceil(uv_share_bytes(&sh, 1) / budget), 1.0);
			double		n = uv_fewest_shares(&sh, lo, Max((double) st->ntouched, lo), budget);

			st->npass = (int) Min(n < 0 ? lo : n, (double) PG_INT32_MAX);
		}
		per_pass = st->ntouched / st->npass;
		st->unit_cxt = AllocSetContextCreate(st->cxt, "source_unit_values units", ALLOCSET_DEFAULT_SIZES);
		for (st->pass = 0; st->pass < st->npass; st->pass++)
		{
			if (st->pass == 0)
				alloc_units(st, Min(nrows, per_pass + per_pass / 16 + 1024));
			else
			{
				st->nunits = 0;
				memset(st->slots, 0, sizeof(uint64) * (st->mask + 1));
				st->nlists = 0;
				MemoryContextReset(st->unit_cxt);
			}
			if (st->ntouched > 0)
				read_units(st, units_rel, reset, nparts, part);
			if (slot != NULL && st->nunits > 0)
			{
				int64		n = 0;

				tuplestore_rescan(buf.store);
				while (tuplestore_gettupleslot(buf.store, true, false, slot))
				{
					if ((++n & 0xFFFF) == 0)
						CHECK_FOR_INTERRUPTS();
					if (st->npass > 1)
					{
						bool		isnull;
						uint32		h = text_hash(slot_getattr(slot, 1, &isnull));

						if (murmurhash32(h) % (uint32) st->npass != (uint32) st->pass)
							continue;
					}
					uv_receive_event(slot, &recv.pub);
				}
				if (st->nbatch > 0)
					flush_batch(st);
			}
			emit_units(st, tupstore, tupdesc, partial);
		}
		if (slot != NULL)
			ExecDropSingleTupleTableSlot(slot);
		tuplestore_end(buf.store);
	}
	SPI_finish();

	if (!events_first)
		emit_units(st, tupstore, tupdesc, partial);
	{
		/* split mode or probe: a last row without a unit, with the latest time read and the split */
		if (st->has_split || probe)
		{
			Datum		values[9] = {0};
			bool		nulls[9] = {true, true, true, true, true, !st->has_latest, !st->has_split, true, true};

			values[5] = TimestampTzGetDatum(st->latest);
			values[6] = TimestampTzGetDatum(st->split);
			/* (events first: skipped[1] is the number of passes over the units) */
			if (events_first)
			{
				Datum		np = Int64GetDatum((int64) Max(st->npass, 1));

				values[4] = PointerGetDatum(construct_array(&np, 1, INT8OID, sizeof(int64),
															FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
				nulls[4] = false;
			}
			tuplestore_putvalues(tupstore, tupdesc, values, nulls);
		}
	}
	MemoryContextDelete(st->cxt);
	return (Datum) 0;
}

PG_FUNCTION_INFO_V1(exp_source_unit_values);
Datum
exp_source_unit_values(PG_FUNCTION_ARGS)
{
	return source_unit_values(fcinfo, 0, InvalidOid, -1, 1, 0, 0);
}

/*
 * source_unit_values_from(units regclass, reset boolean, nparts integer,
 * part integer, expected_units bigint, <the arguments of
 * source_unit_values() after the unit arrays>): the same rows, the units
 * read from the relation units (columns unit_id text, variant text, t0
 * timestamptz, multi boolean and, when reset is not NULL, reset boolean):
 * those not multi, with reset = the argument unless it is NULL, and in
 * partition part of nparts of experiment.unit_partition_sql() when nparts
 * is above 1.  expected_units sizes the hash table (more units grow it).
 * The refresh passes its units this way instead of as arrays, which would
 * take more memory than the hash table itself.
 *
 * With partial and reset false (the units stored before, in an incremental
 * refresh) the events come first: see events_first in source_unit_values().
 * With reset true and few units (the new and reset ones), a table source
 * whose index leads with the unit column is asked for their ids
 * (unit_index_leads()).
 */
PG_FUNCTION_INFO_V1(exp_source_unit_values_from);
Datum
exp_source_unit_values_from(PG_FUNCTION_ARGS)
{
	int32		nparts;
	int32		part;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("units must not be NULL")));
	nparts = PG_ARGISNULL(2) ? 1 : PG_GETARG_INT32(2);
	part = PG_ARGISNULL(3) ? 0 : PG_GETARG_INT32(3);
	if (nparts < 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("nparts must be at least 1, not %d", nparts)));
	if (part < 0 || part >= nparts)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("part must be between 0 and nparts - 1 (%d), not %d", nparts - 1, part)));
	return source_unit_values(fcinfo, 2, PG_GETARG_OID(0),
							  PG_ARGISNULL(1) ? -1 : (PG_GETARG_BOOL(1) ? 1 : 0), nparts, part,
							  PG_ARGISNULL(4) ? 0 : Min(PG_GETARG_INT64(4), (int64) PG_INT32_MAX - 1));
}

/*
 * unit_value_partitions(units bigint, specs integer, sources integer,
 *                       key_bytes float8, calendar_bounds integer DEFAULT NULL)
 *   RETURNS integer
 *
 * The number of unit-hash partitions a refresh splits `units` units into so
 * that the per-unit values of one partition stay within
 * experiment.refresh_memory (1 when it is 0: no bound).  specs is the largest
 * number of specs of one scan, sources the number of scans, key_bytes the
 * mean length of a unit id, calendar_bounds the most distinct calendar
 * offsets of a scan (NULL: two per spec).  Per partition the refresh holds
 * the scan's hash table, sized for the partition's share of the units (a
 * twentieth more with several partitions, and 1024): its slots (a power of two, at
 * least two per unit), and per unit the 32-byte unit record, the row of
 * split-mode accumulators with its calendar bounds and the tid of an
 * incremental refresh's scans, and the key when it is longer than 16 bytes
 * (uv_table_bytes()): the scan reads the units itself
 * (source_unit_values_from()), the refresh builds no arrays of them.
 * Each scan's result keeps 1/16 of the budget in memory and spills the rest;
 * a quarter of the budget is left for those and for the refresh's own
 * statements (whose sorts and hashes experiment.refresh() gives work_mem =
 * a quarter of the budget: they run after the scans).  The values of sketch specs (8 bytes per event) are not
 * counted.
 */
PG_FUNCTION_INFO_V1(exp_unit_value_partitions);
Datum
exp_unit_value_partitions(PG_FUNCTION_ARGS)
{
	int64		units;
	int32		specs;
	int32		sources;
	double		key;
	int32		ncal;
	double		parts;
	double		budget;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1) || PG_ARGISNULL(2) || PG_ARGISNULL(3))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("units, specs, sources and key_bytes must not be NULL")));
	units = PG_GETARG_INT64(0);
	specs = PG_GETARG_INT32(1);
	sources = PG_GETARG_INT32(2);
	key = PG_GETARG_FLOAT8(3);
	/* (the calendar bounds of a scan: NULL, two per spec, the most there can be) */
	ncal = PG_NARGS() > 4 && !PG_ARGISNULL(4) ? PG_GETARG_INT32(4) : 2 * specs;

	if (units < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("units must not be negative")));
	if (specs < 0 || sources < 0 || specs > UV_MAX_SPECS)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("specs must be between 0 and %d and sources not negative, got %d and %d",
						UV_MAX_SPECS, specs, sources)));
	if (ncal < 0 || ncal > 2 * specs)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("calendar_bounds must be between 0 and twice specs (%d), not %d", 2 * specs, ncal)));
	if (!isfinite(key) || key < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("key_bytes must be a finite number of bytes, not negative")));
	if (exp_refresh_memory_kb <= 0 || units == 0)
		PG_RETURN_INT32(1);
	budget = uv_budget(sources);
	/*
	 * the fewest partitions whose tables fit, each scan's table sized as
	 * experiment.source_from_sql() sizes it (its share, a twentieth more with
	 * several partitions, and 1024 more): from the bound of the rows alone up
	 * to one of four slots per unit and a twentieth more (taken when even
	 * that does not fit)
	 */
	{
		UvShares	sh = {(double) units, specs, ncal, key, 20, false, HUGE_VAL};
		double		row = sizeof(UvUnit) + uv_row_bytes(2 * specs, ncal, true) + (key > UV_INLINE_KEY ? key : 0.0);
		double		lo = Max(ceil((double) units * row / budget), 1.0);
		double		hi = Max(ceil((double) units * 1.05 * (row + 4 * sizeof(uint64)) / budget), lo);
		double		n = uv_fewest_shares(&sh, lo, hi, budget);

		parts = n < 0 ? hi : n;
	}
	if (parts > PG_INT32_MAX)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("%lld units need more partitions than experiment.refresh_memory = %d kB allows",
						(long long) units, exp_refresh_memory_kb),
				 errhint("Raise experiment.refresh_memory.")));
	PG_RETURN_INT32((int32) Max(parts, 1.0));
}
