/*-------------------------------------------------------------------------
 *
 * condition.c
 *	  experiment.eval_condition: GrowthBook's targeting condition language
 *	  (a MongoDB-like query syntax) evaluated over jsonb.
 *
 * A condition is a JSON object whose keys are attribute paths (dotted, as
 * "father.age") or the logical operators $and, $or, $nor and $not, and whose
 * values are either literal values (implicit equality) or operator objects
 * ({"$in": [...]}, {"$gt": 3}, ...).  The semantics follow the evaluator of
 * the GrowthBook JavaScript SDK (packages/sdk-js/src/mongrule.ts and
 * paddedVersionString in packages/sdk-js/src/util.ts), including the
 * JavaScript coercions of its comparisons; doc/targeting.md describes the
 * language and where this implementation differs.  The code here is written
 * from those semantics: values are modelled as JavaScript values (null,
 * boolean, IEEE double, string, array, object), with ToString, ToNumber,
 * ToPrimitive, truthiness, strict equality and the abstract relational
 * comparison of ECMAScript.
 *
 * Regular expressions ($regex, $regexi) are JavaScript patterns.  They are
 * translated to PostgreSQL's ARE syntax (see js_regex_to_are) and compiled
 * with pg_regcomp under the "C" collation, so that \w, \d and \b are ASCII
 * as in JavaScript and the result does not depend on the database locale.
 * Compiled patterns are kept in a small per-backend cache.
 *
 * jsonb values are read in place (JbWalk) and compared without converting
 * the attributes to another form; the only other state kept between calls
 * is a copy of the last condition found well-formed at a call site and of
 * the last saved groups with the ids of their condition groups found
 * well-formed (CondCache), so that constant arguments are validated once
 * per query.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <math.h>
#include <stdlib.h>

#include "catalog/pg_collation.h"
#include "common/shortest_dec.h"
#include "fmgr.h"
#include "lib/stringinfo.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "regex/regex.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/numeric.h"

#include "experiment.h"

/*
 * JavaScript values.  A condition is evaluated against attribute values
 * taken from jsonb; each is one of these kinds.  A missing attribute is
 * null, as getPath() makes it in the SDK.
 */
typedef enum CvKind
{
	CV_NULL,
	CV_BOOL,
	CV_NUM,
	CV_STR,
	CV_ARR,
	CV_OBJ
} CvKind;

typedef struct CondVal
{
	CvKind		kind;
	bool		b;				/* CV_BOOL */
	double		num;			/* CV_NUM */
	const char *str;			/* CV_STR: not NUL-terminated */
	int			len;
	JsonbContainer *cont;		/* CV_ARR, CV_OBJ */
} CondVal;

/* the saved groups being resolved by $savedGroup, innermost first */
typedef struct VisitedGroup
{
	const char *id;
	int			len;
	struct VisitedGroup *next;
} VisitedGroup;

/*
 * What one call site (fn_extra) remembers between calls, so that constant
 * arguments are checked once per query rather than once per row: the last
 * condition found well-formed, and for the last saved_groups value the ids
 * of the condition groups found well-formed.  Only a cache: the bytes of an
 * argument are compared with the copy before anything is relied on.
 */
typedef struct CondCache
{
	char	   *cond;			/* copy of the condition, or NULL */
	Size		condlen;
	char	   *groups;			/* copy of saved_groups, or NULL */
	Size		groupslen;
	int			nids;			/* condition groups of groups validated */
	int			maxids;
	char	  **ids;
	int		   *idlens;
} CondCache;

/* arguments larger than this are validated on every call */
#define COND_CACHE_MAX_BYTES (1024 * 1024)

/* state of one evaluation */
typedef struct CondCtx
{
	JsonbContainer *groups;		/* saved groups (an object), or NULL */
	VisitedGroup *visited;		/* to stop cycles of $savedGroup */
	bool		utf8;			/* database encoding is UTF-8 */
	CondCache  *cache;			/* the call site's, or NULL */
	MemoryContext cache_cxt;	/* where the cache lives */
	bool		groups_cached;	/* cache->groups holds these saved groups */
} CondCtx;

/* the operators of the language */
typedef enum CondOp
{
	OP_UNKNOWN,
	OP_EQ, OP_NE, OP_LT, OP_LTE, OP_GT, OP_GTE,
	OP_VEQ, OP_VNE, OP_VLT, OP_VLTE, OP_VGT, OP_VGTE,
	OP_IN, OP_NIN, OP_INI, OP_NINI, OP_INGROUP, OP_NOTINGROUP,
	OP_ALL, OP_ALLI, OP_ELEMMATCH, OP_SIZE, OP_EXISTS, OP_TYPE,
	OP_NOT, OP_REGEX, OP_REGEXI
} CondOp;

static const struct
{
	const char *name;
	CondOp		op;
}			cond_ops[] =
{
	{"$eq", OP_EQ}, {"$ne", OP_NE}, {"$lt", OP_LT}, {"$lte", OP_LTE},
	{"$gt", OP_GT}, {"$gte", OP_GTE}, {"$veq", OP_VEQ}, {"$vne", OP_VNE},
	{"$vlt", OP_VLT}, {"$vlte", OP_VLTE}, {"$vgt", OP_VGT}, {"$vgte", OP_VGTE},
	{"$in", OP_IN}, {"$nin", OP_NIN}, {"$ini", OP_INI}, {"$nini", OP_NINI},
	{"$inGroup", OP_INGROUP}, {"$notInGroup", OP_NOTINGROUP},
	{"$all", OP_ALL}, {"$alli", OP_ALLI}, {"$elemMatch", OP_ELEMMATCH},
	{"$size", OP_SIZE}, {"$exists", OP_EXISTS}, {"$type", OP_TYPE},
	{"$not", OP_NOT}, {"$regex", OP_REGEX}, {"$regexi", OP_REGEXI}
};

/* three-valued result of the abstract relational comparison */
typedef enum JsCmp
{
	JS_FALSE,
	JS_TRUE,
	JS_UNDEFINED				/* a NaN was involved */
} JsCmp;

static bool eval_cond(const CondVal *obj, JsonbContainer *cond, CondCtx *ctx);
static void validate_cond(JsonbContainer *cond, const char *argname);
static bool is_in(const CondVal *actual, JsonbContainer *expected,
				  bool insensitive, CondCtx *ctx);
static bool eval_value(const JsonbValue *cond, const CondVal *value,
					   bool insensitive, CondCtx *ctx);

static CondOp
lookup_op(const char *name, int len)
{
	for (size_t i = 0; i < lengthof(cond_ops); i++)
	{
		if ((int) strlen(cond_ops[i].name) == len &&
			memcmp(cond_ops[i].name, name, len) == 0)
			return cond_ops[i].op;
	}
	return OP_UNKNOWN;
}

static bool
key_is(const JsonbValue *k, const char *name)
{
	return k->val.string.len == (int) strlen(name) &&
		memcmp(k->val.string.val, name, k->val.string.len) == 0;
}

/* ------------------------------------------------------------------------
 * Values
 * ------------------------------------------------------------------------
 */

/* a jsonb numeric as the IEEE double JavaScript would parse it to */
static double
numeric_to_js(Numeric n)
{
	char	   *s = DatumGetCString(DirectFunctionCall1(numeric_out,
														NumericGetDatum(n)));
	double		d = strtod(s, NULL);	/* overflow gives +-Infinity, as in JS */

	pfree(s);
	return d;
}

static void
cv_number(CondVal *v, double d)
{
	memset(v, 0, sizeof(CondVal));
	v->kind = CV_NUM;
	v->num = d;
}

static void
cv_string(CondVal *v, const char *s, int len)
{
	memset(v, 0, sizeof(CondVal));
	v->kind = CV_STR;
	v->str = s;
	v->len = len;
}

static void
jbv_to_cv(const JsonbValue *jv, CondVal *v)
{
	memset(v, 0, sizeof(CondVal));
	switch (jv->type)
	{
		case jbvNull:
			v->kind = CV_NULL;
			break;
		case jbvBool:
			v->kind = CV_BOOL;
			v->b = jv->val.boolean;
			break;
		case jbvNumeric:
			v->kind = CV_NUM;
			v->num = numeric_to_js(jv->val.numeric);
			break;
		case jbvString:
			v->kind = CV_STR;
			v->str = jv->val.string.val;
			v->len = jv->val.string.len;
			break;
		case jbvBinary:
			v->cont = jv->val.binary.data;
			v->kind = JsonContainerIsArray(v->cont) ? CV_ARR : CV_OBJ;
			break;
		default:
			elog(ERROR, "unexpected jsonb value type %d", (int) jv->type);
	}
}

/*
 * Walking the members of a jsonb container in place, without the
 * allocations of JsonbIterator, in the layout that utils/jsonb.h documents:
 * the JEntry array (for objects all keys, then all values), then the data,
 * numerics and nested containers int-aligned.
 */
typedef struct JbWalk
{
	JsonbContainer *c;
	const char *base;			/* start of the data */
	int			index;			/* the next JEntry */
	int			end;
	uint32		offset;			/* its data offset */
} JbWalk;

static const char *
container_data(JsonbContainer *c)
{
	int			n = JsonContainerSize(c);

	return (const char *) &c->children[JsonContainerIsObject(c) ? 2 * n : n];
}

/* walk the elements of an array, or the keys (or values) of an object */
static void
walk_init(JbWalk *w, JsonbContainer *c, bool values)
{
	int			n = JsonContainerSize(c);

	w->c = c;
	w->base = container_data(c);
	w->index = values ? n : 0;
	w->end = w->index + n;
	w->offset = w->index > 0 ? getJsonbOffset(c, w->index) : 0;
}

static void
fill_value(JsonbContainer *c, const char *base, int index, uint32 offset,
		   uint32 len, JsonbValue *out)
{
	JEntry		je = c->children[index];

	if (JBE_ISNULL(je))
		out->type = jbvNull;
	else if (JBE_ISSTRING(je))
	{
		out->type = jbvString;
		out->val.string.val = (char *) base + offset;
		out->val.string.len = len;
	}
	else if (JBE_ISNUMERIC(je))
	{
		out->type = jbvNumeric;
		out->val.numeric = (Numeric) (base + INTALIGN(offset));
	}
	else if (JBE_ISBOOL_TRUE(je) || JBE_ISBOOL_FALSE(je))
	{
		out->type = jbvBool;
		out->val.boolean = JBE_ISBOOL_TRUE(je);
	}
	else
	{
		Assert(JBE_ISCONTAINER(je));
		out->type = jbvBinary;
		out->val.binary.data = (JsonbContainer *) (base + INTALIGN(offset));
		out->val.binary.len = len - (INTALIGN(offset) - offset);
	}
}

static bool
walk_next(JbWalk *w, JsonbValue *out)
{
	uint32		start = w->offset;

	if (w->index >= w->end)
		return false;
	JBE_ADVANCE_OFFSET(w->offset, w->c->children[w->index]);
	fill_value(w->c, w->base, w->index, start, w->offset - start, out);
	w->index++;
	return true;
}

/* the ith element of an array container */
static void
array_ith(JsonbContainer *c, uint32 i, JsonbValue *out)
{
	fill_value(c, container_data(c), i, getJsonbOffset(c, i),
			   getJsonbLength(c, i), out);
}

/* all elements of an array value, palloc'd */
static CondVal *
array_elems(JsonbContainer *cont, int *n)
{
	JbWalk		w;
	JsonbValue	jv;
	CondVal    *out = palloc(sizeof(CondVal) * (JsonContainerSize(cont) + 1));
	int			k = 0;

	walk_init(&w, cont, false);
	while (walk_next(&w, &jv))
	{
		CHECK_FOR_INTERRUPTS();
		jbv_to_cv(&jv, &out[k++]);
	}
	*n = k;
	return out;
}

/* JavaScript truthiness */
static bool
js_truthy(const CondVal *v)
{
	switch (v->kind)
	{
		case CV_NULL:
			return false;
		case CV_BOOL:
			return v->b;
		case CV_NUM:
			return v->num != 0 && !isnan(v->num);
		case CV_STR:
			return v->len > 0;
		default:
			return true;
	}
}

/*
 * Number::toString of ECMAScript (ECMA-262 6.1.6.1.20): the shortest digits
 * that round-trip, in fixed notation for decimal exponents in (-7, 21],
 * otherwise as d.ddde+N.  The digits come from PostgreSQL's shortest
 * round-trip conversion (Ryu); only the layout is JavaScript's.
 */
static void
js_number_append(StringInfo out, double d)
{
	char		buf[DOUBLE_SHORTEST_DECIMAL_LEN + 1];
	char		digits[DOUBLE_SHORTEST_DECIMAL_LEN + 1];
	const char *p;
	int			k = 0;
	bool		seen_point = false;
	int			exp10 = 0;
	int			n;

	if (isnan(d))
	{
		appendStringInfoString(out, "NaN");
		return;
	}
	if (isinf(d))
	{
		appendStringInfoString(out, d > 0 ? "Infinity" : "-Infinity");
		return;
	}
	if (d == 0)
	{
		appendStringInfoChar(out, '0');	/* also -0 */
		return;
	}
	double_to_shortest_decimal_buf(d, buf);
	p = buf;
	if (*p == '-')
	{
		appendStringInfoChar(out, '-');
		p++;
	}
	/* mantissa digits without leading zeros; value = digits * 10^exp10 */
	for (; *p && *p != 'e' && *p != 'E'; p++)
	{
		if (*p == '.')
		{
			seen_point = true;
			continue;
		}
		if (seen_point)
			exp10--;
		if (k == 0 && *p == '0')
			continue;
		digits[k++] = *p;
	}
	if (*p == 'e' || *p == 'E')
		exp10 += atoi(p + 1);
	while (k > 1 && digits[k - 1] == '0')
	{
		k--;
		exp10++;
	}
	digits[k] = '\0';
	n = exp10 + k;				/* value = 0.digits * 10^n */

	if (k <= n && n <= 21)
	{
		appendBinaryStringInfo(out, digits, k);
		for (int i = 0; i < n - k; i++)
			appendStringInfoChar(out, '0');
	}
	else if (0 < n && n <= 21)
	{
		appendBinaryStringInfo(out, digits, n);
		appendStringInfoChar(out, '.');
		appendBinaryStringInfo(out, digits + n, k - n);
	}
	else if (-6 < n && n <= 0)
	{
		appendStringInfoString(out, "0.");
		for (int i = 0; i < -n; i++)
			appendStringInfoChar(out, '0');
		appendBinaryStringInfo(out, digits, k);
	}
	else
	{
		appendStringInfoChar(out, digits[0]);
		if (k > 1)
		{
			appendStringInfoChar(out, '.');
			appendBinaryStringInfo(out, digits + 1, k - 1);
		}
		appendStringInfo(out, "e%c%d", n - 1 >= 0 ? '+' : '-', abs(n - 1));
	}
}

/* ToString: appends the JavaScript string of a value */
static void
js_tostring_append(StringInfo out, const CondVal *v)
{
	check_stack_depth();		/* nested arrays recurse */
	switch (v->kind)
	{
		case CV_NULL:
			appendStringInfoString(out, "null");
			break;
		case CV_BOOL:
			appendStringInfoString(out, v->b ? "true" : "false");
			break;
		case CV_NUM:
			js_number_append(out, v->num);
			break;
		case CV_STR:
			appendBinaryStringInfo(out, v->str, v->len);
			break;
		case CV_OBJ:
			appendStringInfoString(out, "[object Object]");
			break;
		case CV_ARR:
			{
				/* Array.prototype.join(","), null elements as "" */
				JbWalk		w;
				JsonbValue	jv;
				bool		first = true;

				walk_init(&w, v->cont, false);
				while (walk_next(&w, &jv))
				{
					CondVal		e;

					CHECK_FOR_INTERRUPTS();
					if (!first)
						appendStringInfoChar(out, ',');
					first = false;
					jbv_to_cv(&jv, &e);
					if (e.kind != CV_NULL)
						js_tostring_append(out, &e);
				}
				break;
			}
	}
}

/* ToString into a string value (strings are returned as they are) */
static void
js_tostring(const CondVal *v, CondVal *out)
{
	StringInfoData buf;

	if (v->kind == CV_STR)
	{
		*out = *v;
		return;
	}
	initStringInfo(&buf);
	js_tostring_append(&buf, v);
	cv_string(out, buf.data, buf.len);
}

/* byte length of the JavaScript white space or line terminator at s[0] */
static int
js_space_at(const unsigned char *s, int avail)
{
	if (avail <= 0)
		return 0;
	if (s[0] == ' ' || (s[0] >= 0x09 && s[0] <= 0x0D))
		return 1;
	if (avail >= 2 && s[0] == 0xC2 && s[1] == 0xA0)
		return 2;				/* U+00A0 */
	if (avail >= 3)
	{
		if (s[0] == 0xE1 && s[1] == 0x9A && s[2] == 0x80)
			return 3;			/* U+1680 */
		if (s[0] == 0xE2 && s[1] == 0x80 &&
			((s[2] >= 0x80 && s[2] <= 0x8A) || s[2] == 0xA8 ||
			 s[2] == 0xA9 || s[2] == 0xAF))
			return 3;			/* U+2000..200A, 2028, 2029, 202F */
		if (s[0] == 0xE2 && s[1] == 0x81 && s[2] == 0x9F)
			return 3;			/* U+205F */
		if (s[0] == 0xE3 && s[1] == 0x80 && s[2] == 0x80)
			return 3;			/* U+3000 */
		if (s[0] == 0xEF && s[1] == 0xBB && s[2] == 0xBF)
			return 3;			/* U+FEFF */
	}
	return 0;
}

/* byte length of the white space that ends s[0 .. len) */
static int
js_space_before(const unsigned char *s, int len)
{
	for (int w = 1; w <= 3 && w <= len; w++)
	{
		if (js_space_at(s + len - w, w) == w)
			return w;
	}
	return 0;
}

/*
 * StringToNumber of ECMAScript: white space trimmed; empty is 0; decimal
 * literals with optional sign, fraction and exponent; [+-]Infinity; 0x, 0o
 * and 0b integers without sign; anything else NaN.
 */
static double
js_string_to_number(const char *str, int len, bool utf8)
{
	const unsigned char *s = (const unsigned char *) str;
	int			b = 0,
				e = len,
				w;
	int			i;
	char	   *copy;
	double		d;

	if (utf8)
	{
		while (b < e && (w = js_space_at(s + b, e - b)) > 0)
			b += w;
		while (e > b && (w = js_space_before(s + b, e - b)) > 0)
			e -= w;
	}
	else
	{
		while (b < e && js_space_at(s + b, 1) == 1)
			b++;
		while (e > b && js_space_at(s + e - 1, 1) == 1)
			e--;
	}
	if (b == e)
		return 0;

	/* 0x, 0o, 0b */
	if (e - b > 2 && s[b] == '0' && strchr("xXoObB", s[b + 1]) != NULL)
	{
		int			base = (s[b + 1] == 'x' || s[b + 1] == 'X') ? 16 :
		(s[b + 1] == 'o' || s[b + 1] == 'O') ? 8 : 2;

		d = 0;
		for (i = b + 2; i < e; i++)
		{
			int			digit;

			if (s[i] >= '0' && s[i] <= '9')
				digit = s[i] - '0';
			else if (s[i] >= 'a' && s[i] <= 'f')
				digit = s[i] - 'a' + 10;
			else if (s[i] >= 'A' && s[i] <= 'F')
				digit = s[i] - 'A' + 10;
			else
				return NAN;
			if (digit >= base)
				return NAN;
			d = d * base + digit;
		}
		return d;
	}

	i = b;
	if (s[i] == '+' || s[i] == '-')
		i++;
	if (e - i == 8 && memcmp(s + i, "Infinity", 8) == 0)
		return s[b] == '-' ? -INFINITY : INFINITY;
	{
		int			ndigits = 0;

		while (i < e && s[i] >= '0' && s[i] <= '9')
			i++, ndigits++;
		if (i < e && s[i] == '.')
		{
			i++;
			while (i < e && s[i] >= '0' && s[i] <= '9')
				i++, ndigits++;
		}
		if (ndigits == 0)
			return NAN;
		if (i < e && (s[i] == 'e' || s[i] == 'E'))
		{
			int			nexp = 0;

			i++;
			if (i < e && (s[i] == '+' || s[i] == '-'))
				i++;
			while (i < e && s[i] >= '0' && s[i] <= '9')
				i++, nexp++;
			if (nexp == 0)
				return NAN;
		}
		if (i != e)
			return NAN;
	}
	copy = pnstrdup(str + b, e - b);
	d = strtod(copy, NULL);
	pfree(copy);
	return d;
}

/* ToNumber */
static double
js_tonumber(const CondVal *v, CondCtx *ctx)
{
	switch (v->kind)
	{
		case CV_NULL:
			return 0;
		case CV_BOOL:
			return v->b ? 1 : 0;
		case CV_NUM:
			return v->num;
		case CV_STR:
			return js_string_to_number(v->str, v->len, ctx->utf8);
		case CV_OBJ:
			return NAN;			/* "[object Object]" */
		case CV_ARR:
			{
				CondVal		s;

				js_tostring(v, &s);
				return js_string_to_number(s.str, s.len, ctx->utf8);
			}
	}
	return NAN;
}

/* decode the UTF-8 character at s[0], at most avail bytes; returns length */
static int
utf8_char(const unsigned char *s, int avail, pg_wchar *cp)
{
	int			l = pg_utf_mblen(s);

	if (l < 1 || l > avail)
	{
		*cp = s[0];
		return 1;
	}
	*cp = utf8_to_unicode(s);
	return l;
}

/*
 * Compare two strings as JavaScript does: by UTF-16 code units.  For UTF-8
 * this is code point order except that characters above U+FFFF (surrogate
 * pairs) sort before U+E000..U+FFFF.
 */
static int
js_strcmp(const char *a, int alen, const char *b, int blen, bool utf8)
{
	int			i = 0;
	int			minlen = Min(alen, blen);
	pg_wchar	ca,
				cb;
	pg_wchar	ua,
				ub;

	while (i < minlen && a[i] == b[i])
		i++;
	if (i == minlen)
		return (alen > blen) - (alen < blen);
	if (!utf8)
		return (unsigned char) a[i] < (unsigned char) b[i] ? -1 : 1;
	while (i > 0 && (((unsigned char) a[i]) & 0xC0) == 0x80)
		i--;
	utf8_char((const unsigned char *) a + i, alen - i, &ca);
	utf8_char((const unsigned char *) b + i, blen - i, &cb);
	ua = ca < 0x10000 ? ca : 0xD800 + ((ca - 0x10000) >> 10);
	ub = cb < 0x10000 ? cb : 0xD800 + ((cb - 0x10000) >> 10);
	if (ua != ub)
		return ua < ub ? -1 : 1;
	return ca < cb ? -1 : (ca > cb ? 1 : 0);
}

/* strict equality (===): objects and arrays are never equal (references) */
static bool
js_strict_eq(const CondVal *a, const CondVal *b)
{
	if (a->kind != b->kind)
		return false;
	switch (a->kind)
	{
		case CV_NULL:
			return true;
		case CV_BOOL:
			return a->b == b->b;
		case CV_NUM:
			return a->num == b->num;
		case CV_STR:
			return a->len == b->len && memcmp(a->str, b->str, a->len) == 0;
		default:
			return false;
	}
}

/*
 * JSON.stringify(a) === JSON.stringify(b), the implicit equality of arrays
 * and objects.  Object keys are compared as sets (jsonb does not keep the
 * order in which keys were written; see doc/targeting.md).
 */
static bool
json_equal(const CondVal *a, const CondVal *b)
{
	CvKind		ka = a->kind,
				kb = b->kind;

	check_stack_depth();		/* nested arrays and objects recurse */

	/* JSON.stringify writes non-finite numbers as null */
	if (ka == CV_NUM && !isfinite(a->num))
		ka = CV_NULL;
	if (kb == CV_NUM && !isfinite(b->num))
		kb = CV_NULL;
	if (ka != kb)
		return false;
	switch (ka)
	{
		case CV_NULL:
			return true;
		case CV_BOOL:
		case CV_NUM:
		case CV_STR:
			return js_strict_eq(a, b);
		case CV_ARR:
		case CV_OBJ:
			{
				JbWalk		keya,
							keyb,
							wa,
							wb;
				JsonbValue	va,
							vb;

				if (JsonContainerSize(a->cont) != JsonContainerSize(b->cont))
					return false;
				if (ka == CV_OBJ)
				{
					/* the same keys (jsonb keeps them sorted) */
					walk_init(&keya, a->cont, false);
					walk_init(&keyb, b->cont, false);
					while (walk_next(&keya, &va) && walk_next(&keyb, &vb))
					{
						if (va.val.string.len != vb.val.string.len ||
							memcmp(va.val.string.val, vb.val.string.val,
								   va.val.string.len) != 0)
							return false;
					}
				}
				walk_init(&wa, a->cont, ka == CV_OBJ);
				walk_init(&wb, b->cont, ka == CV_OBJ);
				while (walk_next(&wa, &va) && walk_next(&wb, &vb))
				{
					CondVal		ea,
								eb;

					CHECK_FOR_INTERRUPTS();
					jbv_to_cv(&va, &ea);
					jbv_to_cv(&vb, &eb);
					if (!json_equal(&ea, &eb))
						return false;
				}
				return true;
			}
	}
	return false;
}

/* ToPrimitive (hint number): arrays and objects become strings */
static void
js_toprimitive(const CondVal *v, CondVal *out)
{
	if (v->kind == CV_ARR || v->kind == CV_OBJ)
		js_tostring(v, out);
	else
		*out = *v;
}

/* IsLessThan(x, y) of ECMAScript (the abstract relational comparison) */
static JsCmp
js_less(const CondVal *x, const CondVal *y, CondCtx *ctx)
{
	CondVal		px,
				py;
	double		nx,
				ny;

	js_toprimitive(x, &px);
	js_toprimitive(y, &py);
	if (px.kind == CV_STR && py.kind == CV_STR)
		return js_strcmp(px.str, px.len, py.str, py.len, ctx->utf8) < 0 ?
			JS_TRUE : JS_FALSE;
	nx = js_tonumber(&px, ctx);
	ny = js_tonumber(&py, ctx);
	if (isnan(nx) || isnan(ny))
		return JS_UNDEFINED;
	return nx < ny ? JS_TRUE : JS_FALSE;
}

/* ------------------------------------------------------------------------
 * String.prototype.toLowerCase
 * ------------------------------------------------------------------------
 */

/*
 * Unicode lowercase mappings of the characters above U+007F, as ranges
 * [first, last] of every stride-th code point, each mapped to itself plus
 * delta.  Derived from the Unicode Character Database 14.0 (the simple
 * lowercase mappings of UnicodeData.txt); the one multi-character mapping
 * (U+0130) and the final sigma rule of SpecialCasing.txt are handled in
 * js_lower.
 */
typedef struct LowerRange
{
	int32		first;
	int32		last;
	int32		stride;
	int32		delta;
} LowerRange;

static const LowerRange lower_ranges[] = {
	{0x00C0, 0x00D6, 1, 32}, {0x00D8, 0x00DE, 1, 32}, {0x0100, 0x012E, 2, 1},
	{0x0132, 0x0136, 2, 1}, {0x0139, 0x0147, 2, 1}, {0x014A, 0x0176, 2, 1},
	{0x0178, 0x0178, 1, -121}, {0x0179, 0x017D, 2, 1}, {0x0181, 0x0181, 1, 210},
	{0x0182, 0x0184, 2, 1}, {0x0186, 0x0186, 1, 206}, {0x0187, 0x0187, 1, 1},
	{0x0189, 0x018A, 1, 205}, {0x018B, 0x018B, 1, 1}, {0x018E, 0x018E, 1, 79},
	{0x018F, 0x018F, 1, 202}, {0x0190, 0x0190, 1, 203}, {0x0191, 0x0191, 1, 1},
	{0x0193, 0x0193, 1, 205}, {0x0194, 0x0194, 1, 207},
	{0x0196, 0x0196, 1, 211}, {0x0197, 0x0197, 1, 209}, {0x0198, 0x0198, 1, 1},
	{0x019C, 0x019C, 1, 211}, {0x019D, 0x019D, 1, 213},
	{0x019F, 0x019F, 1, 214}, {0x01A0, 0x01A4, 2, 1}, {0x01A6, 0x01A6, 1, 218},
	{0x01A7, 0x01A7, 1, 1}, {0x01A9, 0x01A9, 1, 218}, {0x01AC, 0x01AC, 1, 1},
	{0x01AE, 0x01AE, 1, 218}, {0x01AF, 0x01AF, 1, 1}, {0x01B1, 0x01B2, 1, 217},
	{0x01B3, 0x01B5, 2, 1}, {0x01B7, 0x01B7, 1, 219}, {0x01B8, 0x01B8, 1, 1},
	{0x01BC, 0x01BC, 1, 1}, {0x01C4, 0x01C4, 1, 2}, {0x01C5, 0x01C5, 1, 1},
	{0x01C7, 0x01C7, 1, 2}, {0x01C8, 0x01C8, 1, 1}, {0x01CA, 0x01CA, 1, 2},
	{0x01CB, 0x01DB, 2, 1}, {0x01DE, 0x01EE, 2, 1}, {0x01F1, 0x01F1, 1, 2},
	{0x01F2, 0x01F4, 2, 1}, {0x01F6, 0x01F6, 1, -97}, {0x01F7, 0x01F7, 1, -56},
	{0x01F8, 0x021E, 2, 1}, {0x0220, 0x0220, 1, -130}, {0x0222, 0x0232, 2, 1},
	{0x023A, 0x023A, 1, 10795}, {0x023B, 0x023B, 1, 1},
	{0x023D, 0x023D, 1, -163}, {0x023E, 0x023E, 1, 10792},
	{0x0241, 0x0241, 1, 1}, {0x0243, 0x0243, 1, -195}, {0x0244, 0x0244, 1, 69},
	{0x0245, 0x0245, 1, 71}, {0x0246, 0x024E, 2, 1}, {0x0370, 0x0372, 2, 1},
	{0x0376, 0x0376, 1, 1}, {0x037F, 0x037F, 1, 116}, {0x0386, 0x0386, 1, 38},
	{0x0388, 0x038A, 1, 37}, {0x038C, 0x038C, 1, 64}, {0x038E, 0x038F, 1, 63},
	{0x0391, 0x03A1, 1, 32}, {0x03A3, 0x03AB, 1, 32}, {0x03CF, 0x03CF, 1, 8},
	{0x03D8, 0x03EE, 2, 1}, {0x03F4, 0x03F4, 1, -60}, {0x03F7, 0x03F7, 1, 1},
	{0x03F9, 0x03F9, 1, -7}, {0x03FA, 0x03FA, 1, 1}, {0x03FD, 0x03FF, 1, -130},
	{0x0400, 0x040F, 1, 80}, {0x0410, 0x042F, 1, 32}, {0x0460, 0x0480, 2, 1},
	{0x048A, 0x04BE, 2, 1}, {0x04C0, 0x04C0, 1, 15}, {0x04C1, 0x04CD, 2, 1},
	{0x04D0, 0x052E, 2, 1}, {0x0531, 0x0556, 1, 48}, {0x10A0, 0x10C5, 1, 7264},
	{0x10C7, 0x10C7, 1, 7264}, {0x10CD, 0x10CD, 1, 7264},
	{0x13A0, 0x13EF, 1, 38864}, {0x13F0, 0x13F5, 1, 8},
	{0x1C90, 0x1CBA, 1, -3008}, {0x1CBD, 0x1CBF, 1, -3008},
	{0x1E00, 0x1E94, 2, 1}, {0x1E9E, 0x1E9E, 1, -7615}, {0x1EA0, 0x1EFE, 2, 1},
	{0x1F08, 0x1F0F, 1, -8}, {0x1F18, 0x1F1D, 1, -8}, {0x1F28, 0x1F2F, 1, -8},
	{0x1F38, 0x1F3F, 1, -8}, {0x1F48, 0x1F4D, 1, -8}, {0x1F59, 0x1F5F, 2, -8},
	{0x1F68, 0x1F6F, 1, -8}, {0x1F88, 0x1F8F, 1, -8}, {0x1F98, 0x1F9F, 1, -8},
	{0x1FA8, 0x1FAF, 1, -8}, {0x1FB8, 0x1FB9, 1, -8}, {0x1FBA, 0x1FBB, 1, -74},
	{0x1FBC, 0x1FBC, 1, -9}, {0x1FC8, 0x1FCB, 1, -86}, {0x1FCC, 0x1FCC, 1, -9},
	{0x1FD8, 0x1FD9, 1, -8}, {0x1FDA, 0x1FDB, 1, -100}, {0x1FE8, 0x1FE9, 1, -8},
	{0x1FEA, 0x1FEB, 1, -112}, {0x1FEC, 0x1FEC, 1, -7},
	{0x1FF8, 0x1FF9, 1, -128}, {0x1FFA, 0x1FFB, 1, -126},
	{0x1FFC, 0x1FFC, 1, -9}, {0x2126, 0x2126, 1, -7517},
	{0x212A, 0x212A, 1, -8383}, {0x212B, 0x212B, 1, -8262},
	{0x2132, 0x2132, 1, 28}, {0x2160, 0x216F, 1, 16}, {0x2183, 0x2183, 1, 1},
	{0x24B6, 0x24CF, 1, 26}, {0x2C00, 0x2C2F, 1, 48}, {0x2C60, 0x2C60, 1, 1},
	{0x2C62, 0x2C62, 1, -10743}, {0x2C63, 0x2C63, 1, -3814},
	{0x2C64, 0x2C64, 1, -10727}, {0x2C67, 0x2C6B, 2, 1},
	{0x2C6D, 0x2C6D, 1, -10780}, {0x2C6E, 0x2C6E, 1, -10749},
	{0x2C6F, 0x2C6F, 1, -10783}, {0x2C70, 0x2C70, 1, -10782},
	{0x2C72, 0x2C72, 1, 1}, {0x2C75, 0x2C75, 1, 1}, {0x2C7E, 0x2C7F, 1, -10815},
	{0x2C80, 0x2CE2, 2, 1}, {0x2CEB, 0x2CED, 2, 1}, {0x2CF2, 0x2CF2, 1, 1},
	{0xA640, 0xA66C, 2, 1}, {0xA680, 0xA69A, 2, 1}, {0xA722, 0xA72E, 2, 1},
	{0xA732, 0xA76E, 2, 1}, {0xA779, 0xA77B, 2, 1}, {0xA77D, 0xA77D, 1, -35332},
	{0xA77E, 0xA786, 2, 1}, {0xA78B, 0xA78B, 1, 1}, {0xA78D, 0xA78D, 1, -42280},
	{0xA790, 0xA792, 2, 1}, {0xA796, 0xA7A8, 2, 1}, {0xA7AA, 0xA7AA, 1, -42308},
	{0xA7AB, 0xA7AB, 1, -42319}, {0xA7AC, 0xA7AC, 1, -42315},
	{0xA7AD, 0xA7AD, 1, -42305}, {0xA7AE, 0xA7AE, 1, -42308},
	{0xA7B0, 0xA7B0, 1, -42258}, {0xA7B1, 0xA7B1, 1, -42282},
	{0xA7B2, 0xA7B2, 1, -42261}, {0xA7B3, 0xA7B3, 1, 928},
	{0xA7B4, 0xA7C2, 2, 1}, {0xA7C4, 0xA7C4, 1, -48},
	{0xA7C5, 0xA7C5, 1, -42307}, {0xA7C6, 0xA7C6, 1, -35384},
	{0xA7C7, 0xA7C9, 2, 1}, {0xA7D0, 0xA7D0, 1, 1}, {0xA7D6, 0xA7D8, 2, 1},
	{0xA7F5, 0xA7F5, 1, 1}, {0xFF21, 0xFF3A, 1, 32}, {0x10400, 0x10427, 1, 40},
	{0x104B0, 0x104D3, 1, 40}, {0x10570, 0x1057A, 1, 39},
	{0x1057C, 0x1058A, 1, 39}, {0x1058C, 0x10592, 1, 39},
	{0x10594, 0x10595, 1, 39}, {0x10C80, 0x10CB2, 1, 64},
	{0x118A0, 0x118BF, 1, 32}, {0x16E40, 0x16E5F, 1, 32},
	{0x1E900, 0x1E921, 1, 34}
};

/*
 * Map c through a table of ranges sorted by first: within a range, every
 * stride-th code point from first moves by delta; anything else maps to
 * itself.
 */
static pg_wchar
map_by_ranges(const LowerRange *ranges, int nranges, pg_wchar c)
{
	int			lo = 0,
				hi = nranges - 1;

	while (lo <= hi)
	{
		int			mid = (lo + hi) / 2;
		const LowerRange *r = &ranges[mid];

		if ((int32) c < r->first)
			hi = mid - 1;
		else if ((int32) c > r->last)
			lo = mid + 1;
		else
			return ((int32) c - r->first) % r->stride == 0 ?
				(pg_wchar) ((int32) c + r->delta) : c;
	}
	return c;
}

static pg_wchar
unicode_lower(pg_wchar c)
{
	if (c < 0x80)
		return (c >= 'A' && c <= 'Z') ? c + ('a' - 'A') : c;
	return map_by_ranges(lower_ranges, lengthof(lower_ranges), c);
}

/* a cased letter, approximately: one that has or is a lowercase mapping */
static bool
unicode_cased(pg_wchar c)
{
	if (c < 0x80)
		return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
	if (unicode_lower(c) != c)
		return true;
	for (size_t i = 0; i < lengthof(lower_ranges); i++)
	{
		const LowerRange *r = &lower_ranges[i];
		int32		off = (int32) c - (r->first + r->delta);

		if (off >= 0 && off <= r->last - r->first && off % r->stride == 0)
			return true;
	}
	return false;
}

/* toLowerCase of a string value; returns a string value */
static void
js_lower(const CondVal *v, CondVal *out, CondCtx *ctx)
{
	const unsigned char *s = (const unsigned char *) v->str;
	StringInfoData buf;
	int			i = 0;
	pg_wchar	prev = 0;

	initStringInfo(&buf);
	while (i < v->len)
	{
		pg_wchar	c,
					l;
		int			n;
		unsigned char enc[8];

		if (s[i] < 0x80 || !ctx->utf8)
		{
			appendStringInfoChar(&buf, (s[i] >= 'A' && s[i] <= 'Z') ?
								 s[i] + ('a' - 'A') : s[i]);
			prev = s[i];
			i++;
			continue;
		}
		n = utf8_char(s + i, v->len - i, &c);
		if (c == 0x130)
			appendStringInfoString(&buf, "i\xCC\x87");	/* i + U+0307 */
		else
		{
			l = unicode_lower(c);
			if (c == 0x3A3 && unicode_cased(prev))
			{
				/* final sigma: not followed by a cased letter */
				pg_wchar	next = 0;

				if (i + n < v->len)
					utf8_char(s + i + n, v->len - i - n, &next);
				if (i + n >= v->len || !unicode_cased(next))
					l = 0x3C2;
			}
			unicode_to_utf8(l, enc);
			appendBinaryStringInfo(&buf, (char *) enc, pg_utf_mblen(enc));
		}
		prev = c;
		i += n;
	}
	cv_string(out, buf.data, buf.len);
}

/* ------------------------------------------------------------------------
 * Versions
 * ------------------------------------------------------------------------
 */

static bool
line_terminator_at(const unsigned char *s, int avail)
{
	return s[0] == '\n' || s[0] == '\r' ||
		(avail >= 3 && s[0] == 0xE2 && s[1] == 0x80 &&
		 (s[2] == 0xA8 || s[2] == 0xA9));
}

/*
 * paddedVersionString of the SDK: numbers become their string, anything
 * else that is not a non-empty string becomes "0"; a leading "v" and the
 * build suffix ("+..." to the end) are dropped; the rest is split at "-"
 * and "."; a plain x.y.z gets a "~" part (so that it sorts after its
 * pre-releases); numeric parts are left-padded with spaces to width 5; the
 * parts are joined with "-".  Versions are then compared as strings.
 */
static void
padded_version(const CondVal *v, CondVal *out)
{
	CondVal		s;
	const unsigned char *p;
	int			start = 0,
				end,
				after_lt = 0,
				nparts = 1;
	StringInfoData buf;

	if (v->kind == CV_NUM)
		js_tostring(v, &s);
	else if (v->kind == CV_STR && v->len > 0)
		s = *v;
	else
		cv_string(&s, "0", 1);
	p = (const unsigned char *) s.str;
	end = s.len;

	if (s.len > 0 && p[0] == 'v')
		start = 1;
	/* "+.*$": "." does not cross a line terminator */
	for (int i = 0; i < s.len; i++)
	{
		if (line_terminator_at(p + i, s.len - i))
			after_lt = i + 1;
	}
	for (int i = Max(start, after_lt); i < s.len; i++)
	{
		if (p[i] == '+')
		{
			end = i;
			break;
		}
	}
	for (int i = start; i < end; i++)
	{
		if (p[i] == '-' || p[i] == '.')
			nparts++;
	}

	initStringInfo(&buf);
	for (int i = start; i <= end;)
	{
		int			j = i;
		bool		numeric = true;

		while (j < end && p[j] != '-' && p[j] != '.')
		{
			if (p[j] < '0' || p[j] > '9')
				numeric = false;
			j++;
		}
		if (i > start)
			appendStringInfoChar(&buf, '-');
		if (numeric && j > i)
			for (int k = j - i; k < 5; k++)
				appendStringInfoChar(&buf, ' ');
		appendBinaryStringInfo(&buf, s.str + i, j - i);
		i = j + 1;
	}
	if (nparts == 3)
		appendStringInfoString(&buf, "-~");
	cv_string(out, buf.data, buf.len);
}

/* ------------------------------------------------------------------------
 * Regular expressions
 * ------------------------------------------------------------------------
 */

static bool
is_hex(unsigned char c)
{
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') ||
		(c >= 'A' && c <= 'F');
}

static int
hex_value(const char *p, int n)
{
	int			v = 0;

	for (int i = 0; i < n; i++)
	{
		unsigned char c = p[i];

		v = v * 16 + ((c >= '0' && c <= '9') ? c - '0' :
					  (c >= 'a' && c <= 'f') ? c - 'a' + 10 : c - 'A' + 10);
	}
	return v;
}

/* p[i .. i+n) are n hex digits */
static bool
hex_run(const char *p, int len, int i, int n)
{
	if (i + n > len)
		return false;
	for (int k = 0; k < n; k++)
	{
		if (!is_hex(p[i + k]))
			return false;
	}
	return true;
}

/* JavaScript's a{n}, a{n,} and a{n,m} at p[i] == '{' */
static int
bound_length(const char *p, int len, int i)
{
	int			j = i + 1,
				d = 0;

	while (j < len && p[j] >= '0' && p[j] <= '9')
		j++, d++;
	if (d == 0)
		return 0;
	if (j < len && p[j] == ',')
	{
		j++;
		while (j < len && p[j] >= '0' && p[j] <= '9')
			j++;
	}
	if (j < len && p[j] == '}')
		return j + 1 - i;
	return 0;
}

/*
 * Case-insensitive matching in JavaScript (without the u flag) makes two
 * characters equal when their canonical forms are: toUpperCase, unless that
 * is not one character or maps a non-ASCII character to ASCII.  This table
 * holds the canonical form of every character above U+007F that differs
 * from it, in the layout of lower_ranges (derived from the Unicode
 * Character Database 14.0).  Under the "C" collation the regex library folds
 * only ASCII; the other characters are expanded into their classes.
 */
static const LowerRange canon_ranges[] = {
	{0x00B5, 0x00B5, 1, 743}, {0x00E0, 0x00F6, 1, -32},
	{0x00F8, 0x00FE, 1, -32}, {0x00FF, 0x00FF, 1, 121}, {0x0101, 0x012F, 2, -1},
	{0x0133, 0x0137, 2, -1}, {0x013A, 0x0148, 2, -1}, {0x014B, 0x0177, 2, -1},
	{0x017A, 0x017E, 2, -1}, {0x0180, 0x0180, 1, 195}, {0x0183, 0x0185, 2, -1},
	{0x0188, 0x0188, 1, -1}, {0x018C, 0x018C, 1, -1}, {0x0192, 0x0192, 1, -1},
	{0x0195, 0x0195, 1, 97}, {0x0199, 0x0199, 1, -1}, {0x019A, 0x019A, 1, 163},
	{0x019E, 0x019E, 1, 130}, {0x01A1, 0x01A5, 2, -1}, {0x01A8, 0x01A8, 1, -1},
	{0x01AD, 0x01AD, 1, -1}, {0x01B0, 0x01B0, 1, -1}, {0x01B4, 0x01B6, 2, -1},
	{0x01B9, 0x01B9, 1, -1}, {0x01BD, 0x01BD, 1, -1}, {0x01BF, 0x01BF, 1, 56},
	{0x01C5, 0x01C5, 1, -1}, {0x01C6, 0x01C6, 1, -2}, {0x01C8, 0x01C8, 1, -1},
	{0x01C9, 0x01C9, 1, -2}, {0x01CB, 0x01CB, 1, -1}, {0x01CC, 0x01CC, 1, -2},
	{0x01CE, 0x01DC, 2, -1}, {0x01DD, 0x01DD, 1, -79}, {0x01DF, 0x01EF, 2, -1},
	{0x01F2, 0x01F2, 1, -1}, {0x01F3, 0x01F3, 1, -2}, {0x01F5, 0x01F5, 1, -1},
	{0x01F9, 0x021F, 2, -1}, {0x0223, 0x0233, 2, -1}, {0x023C, 0x023C, 1, -1},
	{0x023F, 0x0240, 1, 10815}, {0x0242, 0x0242, 1, -1},
	{0x0247, 0x024F, 2, -1}, {0x0250, 0x0250, 1, 10783},
	{0x0251, 0x0251, 1, 10780}, {0x0252, 0x0252, 1, 10782},
	{0x0253, 0x0253, 1, -210}, {0x0254, 0x0254, 1, -206},
	{0x0256, 0x0257, 1, -205}, {0x0259, 0x0259, 1, -202},
	{0x025B, 0x025B, 1, -203}, {0x025C, 0x025C, 1, 42319},
	{0x0260, 0x0260, 1, -205}, {0x0261, 0x0261, 1, 42315},
	{0x0263, 0x0263, 1, -207}, {0x0265, 0x0265, 1, 42280},
	{0x0266, 0x0266, 1, 42308}, {0x0268, 0x0268, 1, -209},
	{0x0269, 0x0269, 1, -211}, {0x026A, 0x026A, 1, 42308},
	{0x026B, 0x026B, 1, 10743}, {0x026C, 0x026C, 1, 42305},
	{0x026F, 0x026F, 1, -211}, {0x0271, 0x0271, 1, 10749},
	{0x0272, 0x0272, 1, -213}, {0x0275, 0x0275, 1, -214},
	{0x027D, 0x027D, 1, 10727}, {0x0280, 0x0280, 1, -218},
	{0x0282, 0x0282, 1, 42307}, {0x0283, 0x0283, 1, -218},
	{0x0287, 0x0287, 1, 42282}, {0x0288, 0x0288, 1, -218},
	{0x0289, 0x0289, 1, -69}, {0x028A, 0x028B, 1, -217},
	{0x028C, 0x028C, 1, -71}, {0x0292, 0x0292, 1, -219},
	{0x029D, 0x029D, 1, 42261}, {0x029E, 0x029E, 1, 42258},
	{0x0345, 0x0345, 1, 84}, {0x0371, 0x0373, 2, -1}, {0x0377, 0x0377, 1, -1},
	{0x037B, 0x037D, 1, 130}, {0x03AC, 0x03AC, 1, -38},
	{0x03AD, 0x03AF, 1, -37}, {0x03B1, 0x03C1, 1, -32},
	{0x03C2, 0x03C2, 1, -31}, {0x03C3, 0x03CB, 1, -32},
	{0x03CC, 0x03CC, 1, -64}, {0x03CD, 0x03CE, 1, -63},
	{0x03D0, 0x03D0, 1, -62}, {0x03D1, 0x03D1, 1, -57},
	{0x03D5, 0x03D5, 1, -47}, {0x03D6, 0x03D6, 1, -54}, {0x03D7, 0x03D7, 1, -8},
	{0x03D9, 0x03EF, 2, -1}, {0x03F0, 0x03F0, 1, -86}, {0x03F1, 0x03F1, 1, -80},
	{0x03F2, 0x03F2, 1, 7}, {0x03F3, 0x03F3, 1, -116}, {0x03F5, 0x03F5, 1, -96},
	{0x03F8, 0x03F8, 1, -1}, {0x03FB, 0x03FB, 1, -1}, {0x0430, 0x044F, 1, -32},
	{0x0450, 0x045F, 1, -80}, {0x0461, 0x0481, 2, -1}, {0x048B, 0x04BF, 2, -1},
	{0x04C2, 0x04CE, 2, -1}, {0x04CF, 0x04CF, 1, -15}, {0x04D1, 0x052F, 2, -1},
	{0x0561, 0x0586, 1, -48}, {0x10D0, 0x10FA, 1, 3008},
	{0x10FD, 0x10FF, 1, 3008}, {0x13F8, 0x13FD, 1, -8},
	{0x1C80, 0x1C80, 1, -6254}, {0x1C81, 0x1C81, 1, -6253},
	{0x1C82, 0x1C82, 1, -6244}, {0x1C83, 0x1C84, 1, -6242},
	{0x1C85, 0x1C85, 1, -6243}, {0x1C86, 0x1C86, 1, -6236},
	{0x1C87, 0x1C87, 1, -6181}, {0x1C88, 0x1C88, 1, 35266},
	{0x1D79, 0x1D79, 1, 35332}, {0x1D7D, 0x1D7D, 1, 3814},
	{0x1D8E, 0x1D8E, 1, 35384}, {0x1E01, 0x1E95, 2, -1},
	{0x1E9B, 0x1E9B, 1, -59}, {0x1EA1, 0x1EFF, 2, -1}, {0x1F00, 0x1F07, 1, 8},
	{0x1F10, 0x1F15, 1, 8}, {0x1F20, 0x1F27, 1, 8}, {0x1F30, 0x1F37, 1, 8},
	{0x1F40, 0x1F45, 1, 8}, {0x1F51, 0x1F57, 2, 8}, {0x1F60, 0x1F67, 1, 8},
	{0x1F70, 0x1F71, 1, 74}, {0x1F72, 0x1F75, 1, 86}, {0x1F76, 0x1F77, 1, 100},
	{0x1F78, 0x1F79, 1, 128}, {0x1F7A, 0x1F7B, 1, 112},
	{0x1F7C, 0x1F7D, 1, 126}, {0x1FB0, 0x1FB1, 1, 8},
	{0x1FBE, 0x1FBE, 1, -7205}, {0x1FD0, 0x1FD1, 1, 8}, {0x1FE0, 0x1FE1, 1, 8},
	{0x1FE5, 0x1FE5, 1, 7}, {0x214E, 0x214E, 1, -28}, {0x2170, 0x217F, 1, -16},
	{0x2184, 0x2184, 1, -1}, {0x24D0, 0x24E9, 1, -26}, {0x2C30, 0x2C5F, 1, -48},
	{0x2C61, 0x2C61, 1, -1}, {0x2C65, 0x2C65, 1, -10795},
	{0x2C66, 0x2C66, 1, -10792}, {0x2C68, 0x2C6C, 2, -1},
	{0x2C73, 0x2C73, 1, -1}, {0x2C76, 0x2C76, 1, -1}, {0x2C81, 0x2CE3, 2, -1},
	{0x2CEC, 0x2CEE, 2, -1}, {0x2CF3, 0x2CF3, 1, -1},
	{0x2D00, 0x2D25, 1, -7264}, {0x2D27, 0x2D27, 1, -7264},
	{0x2D2D, 0x2D2D, 1, -7264}, {0xA641, 0xA66D, 2, -1},
	{0xA681, 0xA69B, 2, -1}, {0xA723, 0xA72F, 2, -1}, {0xA733, 0xA76F, 2, -1},
	{0xA77A, 0xA77C, 2, -1}, {0xA77F, 0xA787, 2, -1}, {0xA78C, 0xA78C, 1, -1},
	{0xA791, 0xA793, 2, -1}, {0xA794, 0xA794, 1, 48}, {0xA797, 0xA7A9, 2, -1},
	{0xA7B5, 0xA7C3, 2, -1}, {0xA7C8, 0xA7CA, 2, -1}, {0xA7D1, 0xA7D1, 1, -1},
	{0xA7D7, 0xA7D9, 2, -1}, {0xA7F6, 0xA7F6, 1, -1}, {0xAB53, 0xAB53, 1, -928},
	{0xAB70, 0xABBF, 1, -38864}, {0xFF41, 0xFF5A, 1, -32},
	{0x10428, 0x1044F, 1, -40}, {0x104D8, 0x104FB, 1, -40},
	{0x10597, 0x105A1, 1, -39}, {0x105A3, 0x105B1, 1, -39},
	{0x105B3, 0x105B9, 1, -39}, {0x105BB, 0x105BC, 1, -39},
	{0x10CC0, 0x10CF2, 1, -64}, {0x118C0, 0x118DF, 1, -32},
	{0x16E60, 0x16E7F, 1, -32}, {0x1E922, 0x1E943, 1, -34}
};

static pg_wchar
regex_canon(pg_wchar c)
{
	return map_by_ranges(canon_ranges, lengthof(canon_ranges), c);
}

/* JavaScript's white space and line terminators beyond ARE's \s */
#define JS_EXTRA_SPACE "\\u00A0\\u1680\\u2000-\\u200A\\u2028\\u2029\\u202F\\u205F\\u3000\\uFEFF"

/* a JavaScript pattern being translated */
typedef struct RegexXlate
{
	const char *p;
	int			len;
	bool		icase;
	bool		utf8;			/* database encoding is UTF-8 */
	bool		in_class;
	int32		last_cp;		/* in a class: the last literal, or -1 */
	int32		range_from;		/* in a class: start of a range, or -1 */
	bool		literal;		/* emit_char was called */
	int			groups_open;	/* capturing groups opened so far */
	int			groups_total;
	int			nnames;			/* named groups: name and number */
	const char *names[32];
	int			namelens[32];
	int			namegroups[32];
	StringInfo	out;
} RegexXlate;

/*
 * Emit character c as a literal.  For case-insensitive patterns, a
 * non-ASCII character stands for every character with its canonical form
 * (outside a class as a bracket expression, inside a class as more members;
 * not for range endpoints, adjacent to "-").
 */
/* the characters with the canonical form of c (c's case class) */
static int
case_class(pg_wchar c, pg_wchar *members, int max)
{
	pg_wchar	k = regex_canon(c);
	int			n = 0;

	members[n++] = k;
	for (size_t i = 0; i < lengthof(canon_ranges) && n < max; i++)
	{
		const LowerRange *r = &canon_ranges[i];
		int32		m = (int32) k - r->delta;

		if (m >= r->first && m <= r->last && (m - r->first) % r->stride == 0)
			members[n++] = (pg_wchar) m;
	}
	return n;
}

/*
 * In a case-insensitive class, a range of non-ASCII characters also takes
 * in the other cases of its characters (the first 1024 of them).
 */
static void
class_literal(RegexXlate *x, int32 c)
{
	if (x->range_from < 0)
	{
		x->last_cp = c;
		return;
	}
	if (x->icase && x->utf8 && c >= 0x80 && c >= x->range_from)
	{
		for (int32 cp = Max(x->range_from, 0x80);
			 cp <= c && cp < Max(x->range_from, 0x80) + 1024; cp++)
		{
			pg_wchar	members[8];
			int			n;

			CHECK_FOR_INTERRUPTS();
			n = case_class(cp, members, 8);

			for (int i = 0; n > 1 && i < n; i++)
			{
				if ((int32) members[i] < x->range_from || (int32) members[i] > c)
					appendStringInfo(x->out, members[i] > 0xFFFF ? "\\U%08X" : "\\u%04X",
									 (unsigned) members[i]);
			}
		}
	}
	x->range_from = -1;
	x->last_cp = -1;
}

static void
emit_char(RegexXlate *x, pg_wchar c, bool expand)
{
	int			n = 0;
	pg_wchar	members[8];

	x->literal = true;
	if (x->icase && x->utf8 && expand && c >= 0x80)
		n = case_class(c, members, 8);
	if (n < 2)
	{
		appendStringInfo(x->out, c > 0xFFFF ? "\\U%08X" : "\\u%04X", (unsigned) c);
		if (x->in_class)
			class_literal(x, c);
		return;
	}
	if (!x->in_class)
		appendStringInfoChar(x->out, '[');
	else
		x->last_cp = -1;
	for (int i = 0; i < n; i++)
		appendStringInfo(x->out, members[i] > 0xFFFF ? "\\U%08X" : "\\u%04X",
						 (unsigned) members[i]);
	if (!x->in_class)
		appendStringInfoChar(x->out, ']');
}

/* may the class member at p[i .. j) be expanded (not a range endpoint)? */
static bool
expandable(const RegexXlate *x, int i, int j)
{
	if (!x->in_class)
		return true;
	if (j < x->len && x->p[j] == '-' && j + 1 < x->len && x->p[j + 1] != ']')
		return false;
	if (i > 0 && x->p[i - 1] == '-')
		return false;
	return true;
}

/* a legacy octal escape at p[i] (up to three digits, at most \377) */
static int
legacy_octal(RegexXlate *x, int i, int start)
{
	int			v = 0,
				j = i;

	while (j < x->len && j - i < 3 && x->p[j] >= '0' && x->p[j] <= '7' &&
		   v * 8 + (x->p[j] - '0') <= 0377)
		v = v * 8 + (x->p[j++] - '0');
	if (j == i)
		return -1;
	if (v == 0)
	{
		/* NUL cannot occur in a text value */
		if (x->in_class)
			return -1;
		appendStringInfoString(x->out, "(?!\\u0001)\\u0001");
		return j;
	}
	emit_char(x, v, expandable(x, start, j));
	return j;
}

/*
 * Translate the escape at p[i] (the character after a backslash); returns
 * the index after it, or -1 for what cannot be translated.
 */
static int
translate_escape(RegexXlate *x, int i)
{
	const char *p = x->p;
	int			len = x->len;
	unsigned char c = p[i];
	int			start = i - 1;

	switch (c)
	{
		case 'b':
			/* word boundary outside classes, backspace inside */
			appendStringInfoString(x->out, x->in_class ? "\\b" : "\\y");
			return i + 1;
		case 'B':
			if (x->in_class)
				appendStringInfoChar(x->out, 'B');
			else
				appendStringInfoString(x->out, "\\Y");
			return i + 1;
		case 's':
			appendStringInfoString(x->out, x->in_class ? "\\s" JS_EXTRA_SPACE :
								   "[\\s" JS_EXTRA_SPACE "]");
			return i + 1;
		case 'S':
			appendStringInfoString(x->out, x->in_class ? "\\S" :
								   "[^\\s" JS_EXTRA_SPACE "]");
			return i + 1;
		case 'd':
		case 'D':
		case 'w':
		case 'W':
		case 'n':
		case 'r':
		case 't':
		case 'v':
		case 'f':
			appendStringInfoChar(x->out, '\\');
			appendStringInfoChar(x->out, c);
			return i + 1;
		case 'c':
			if (i + 1 < len && ((p[i + 1] >= 'a' && p[i + 1] <= 'z') ||
								(p[i + 1] >= 'A' && p[i + 1] <= 'Z') ||
								(x->in_class && ((p[i + 1] >= '0' && p[i + 1] <= '9') ||
												 p[i + 1] == '_'))))
			{
				appendStringInfo(x->out, "\\u%04X", p[i + 1] % 32);
				return i + 2;
			}
			/* a backslash that stands for itself, then "c" */
			appendStringInfoString(x->out, "\\\\");
			return i;
		case 'x':
			if (hex_run(p, len, i + 1, 2))
			{
				emit_char(x, hex_value(p + i + 1, 2), expandable(x, start, i + 3));
				return i + 3;
			}
			appendStringInfoChar(x->out, 'x');
			return i + 1;
		case 'u':
			if (hex_run(p, len, i + 1, 4))
			{
				int			u = hex_value(p + i + 1, 4);

				/* a surrogate pair written as two escapes is one character */
				if (u >= 0xD800 && u <= 0xDBFF && i + 6 < len &&
					p[i + 5] == '\\' && p[i + 6] == 'u' &&
					hex_run(p, len, i + 7, 4))
				{
					int			lo = hex_value(p + i + 7, 4);

					if (lo >= 0xDC00 && lo <= 0xDFFF)
					{
						emit_char(x, 0x10000 + ((u - 0xD800) << 10) + (lo - 0xDC00),
								  expandable(x, start, i + 11));
						return i + 11;
					}
				}
				if (u == 0)
				{
					/* NUL cannot occur in a text value */
					if (x->in_class)
						return -1;
					appendStringInfoString(x->out, "(?!\\u0001)\\u0001");
					return i + 5;
				}
				emit_char(x, u, expandable(x, start, i + 5));
				return i + 5;
			}
			appendStringInfoChar(x->out, 'u');
			return i + 1;
		case 'k':
			if (x->nnames > 0)
			{
				/* \k<name>: a named back-reference */
				int			j = i + 1,
							e;

				if (j >= len || p[j] != '<')
					return -1;
				for (e = j + 1; e < len && p[e] != '>'; e++)
					;
				if (e >= len)
					return -1;
				for (int n = 0; n < x->nnames; n++)
				{
					if (x->namelens[n] == e - j - 1 &&
						memcmp(x->names[n], p + j + 1, e - j - 1) == 0)
					{
						if (x->namegroups[n] <= x->groups_open && !x->in_class)
							appendStringInfo(x->out, "\\%d", x->namegroups[n]);
						return e + 1;
					}
				}
				return -1;
			}
			appendStringInfoChar(x->out, 'k');
			return i + 1;
		default:
			break;
	}
	if (c >= '0' && c <= '9')
	{
		/*
		 * \0 is NUL; \N a back-reference (a reference to a group not opened
		 * yet matches the empty string); inside classes, or with fewer
		 * groups, a legacy octal escape, or for 8 and 9 the digit itself.
		 */
		int			j = i,
					n = 0;

		if (c == '0' && !(i + 1 < len && p[i + 1] >= '0' && p[i + 1] <= '9'))
			return legacy_octal(x, i, start);
		while (j < len && p[j] >= '0' && p[j] <= '9' && n <= 100000)
			n = n * 10 + (p[j++] - '0');
		if (c != '0' && !x->in_class && n <= x->groups_total)
		{
			if (n <= x->groups_open)
				appendBinaryStringInfo(x->out, p + i - 1, j - i + 1);
			return j;
		}
		if (c == '8' || c == '9')
		{
			appendStringInfoChar(x->out, c);
			return i + 1;
		}
		return legacy_octal(x, i, start);
	}
	if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))
	{
		/* an identity escape: the letter itself (\m, \y, \A... in AREs) */
		appendStringInfoChar(x->out, c);
		return i + 1;
	}
	if (c < 0x80)
	{
		appendStringInfoChar(x->out, '\\');
		appendStringInfoChar(x->out, c);
		return i + 1;
	}
	{
		/* an escaped non-ASCII character is the character */
		pg_wchar	cp;
		int			n;

		if (!x->utf8)
		{
			n = Min(pg_mblen(p + i), len - i);
			appendBinaryStringInfo(x->out, p + i, n);
			return i + n;
		}
		n = utf8_char((const unsigned char *) p + i, len - i, &cp);
		emit_char(x, cp, expandable(x, start, i + n));
		return i + n;
	}
}

/* count the capturing groups and record the names of named ones */
static void
scan_groups(RegexXlate *x)
{
	const char *p = x->p;
	bool		in_class = false;

	for (int k = 0; k < x->len; k++)
	{
		if (p[k] == '\\')
			k++;
		else if (in_class)
			in_class = (p[k] != ']');
		else if (p[k] == '[')
			in_class = true;
		else if (p[k] == '(' && (k + 1 >= x->len || p[k + 1] != '?'))
			x->groups_total++;
		else if (p[k] == '(' && k + 3 < x->len && p[k + 2] == '<' &&
				 p[k + 3] != '=' && p[k + 3] != '!')
		{
			int			e = k + 3;

			x->groups_total++;
			while (e < x->len && p[e] != '>')
				e++;
			if (x->nnames < (int) lengthof(x->names))
			{
				x->names[x->nnames] = p + k + 3;
				x->namelens[x->nnames] = e - k - 3;
				x->namegroups[x->nnames] = x->groups_total;
				x->nnames++;
			}
		}
	}
}

/*
 * Translate a JavaScript regular expression (flags: none, or "i") to a
 * PostgreSQL ARE with the same matches.  Returns false for patterns that
 * JavaScript rejects and for the few constructs AREs cannot express (see
 * doc/targeting.md).  The differences handled:
 *	- \b \B are \y \Y; \s \S include Unicode spaces; \xhh, \uhhhh, \cX,
 *	  legacy octal escapes become \uhhhh; \8 \9 without groups are digits;
 *	- back-references to groups not opened yet match the empty string;
 *	  (?<name>...) is a plain group and \k<name> its number;
 *	- "." does not match line terminators;
 *	- [] matches nothing, [^] matches anything, "[" inside a class is a
 *	  literal (not the start of [:class:]);
 *	- "{" that does not start a bound, and "}", are literals;
 *	- escaped letters without a JavaScript meaning stand for themselves
 *	  (AREs give \m \M \y \Y \A \Z other meanings);
 *	- (? forms other than (?: (?= (?! (?<= (?<! (?<name> are syntax errors
 *	  in JavaScript (so no ARE embedded options or director gets through),
 *	  as is a leading quantifier;
 *	- with "i", non-ASCII letters match their other cases (emit_char).
 */
static bool
js_regex_to_are(const char *p, int len, bool icase, bool utf8, StringInfo out)
{
	RegexXlate	x;
	int			i = 0;

	memset(&x, 0, sizeof(x));
	x.p = p;
	x.len = len;
	x.icase = icase;
	x.utf8 = utf8;
	x.out = out;
	scan_groups(&x);

	if (len > 0 && (p[0] == '*' || p[0] == '+' || p[0] == '?'))
		return false;			/* nothing to repeat */
	while (i < len)
	{
		unsigned char c = p[i];

		CHECK_FOR_INTERRUPTS();
		if (c == '\\')
		{
			if (i + 1 >= len)
				return false;	/* \ at end of pattern */
			x.literal = false;
			i = translate_escape(&x, i + 1);
			if (i < 0)
				return false;
			if (x.in_class && !x.literal)
				x.last_cp = x.range_from = -1;
			continue;
		}
		if (c >= 0x80)
		{
			pg_wchar	cp = 0;
			int			n = utf8 ?
				utf8_char((const unsigned char *) p + i, len - i, &cp) :
				Min(pg_mblen(p + i), len - i);

			if (icase && utf8 && cp >= 0x80)
				emit_char(&x, cp, expandable(&x, i, i + n));
			else
			{
				appendBinaryStringInfo(out, p + i, n);
				if (x.in_class)
					class_literal(&x, utf8 ? (int32) cp : -1);
			}
			i += n;
			continue;
		}
		if (x.in_class)
		{
			if (c == '-' && x.last_cp >= 0 && i + 1 < len && p[i + 1] != ']')
			{
				x.range_from = x.last_cp;
				x.last_cp = -1;
			}
			else if (c != ']')
				class_literal(&x, c);
			if (c == ']')
				x.in_class = false;
			if (c == '[')
				appendStringInfoString(out, "\\[");
			else
				appendStringInfoChar(out, c);
			i++;
			continue;
		}
		switch (c)
		{
			case '[':
				{
					bool		negated = (i + 1 < len && p[i + 1] == '^');
					int			j = i + 1 + (negated ? 1 : 0);

					if (j < len && p[j] == ']')
					{
						appendStringInfoString(out, negated ?
											   "(?:[^\\u0001]|\\u0001)" :
											   "(?!\\u0001)\\u0001");
						i = j + 1;
						continue;
					}
					appendStringInfoString(out, negated ? "[^" : "[");
					x.in_class = true;
					x.last_cp = x.range_from = -1;
					i = j;
					continue;
				}
			case '.':
				appendStringInfoString(out, "[^\\n\\r\\u2028\\u2029]");
				break;
			case '{':
				{
					int			n = bound_length(p, len, i);

					if (n > 0)
					{
						appendBinaryStringInfo(out, p + i, n);
						i += n;
						continue;
					}
					appendStringInfoString(out, "\\{");
					break;
				}
			case '}':
				appendStringInfoString(out, "\\}");
				break;
			case '(':
				if (i + 1 < len && p[i + 1] == '?')
				{
					if (i + 2 < len && (p[i + 2] == ':' || p[i + 2] == '=' ||
										p[i + 2] == '!'))
					{
						appendBinaryStringInfo(out, p + i, 3);
						i += 3;
						continue;
					}
					if (i + 3 < len && p[i + 2] == '<' &&
						(p[i + 3] == '=' || p[i + 3] == '!'))
					{
						appendBinaryStringInfo(out, p + i, 4);
						i += 4;
						continue;
					}
					if (i + 2 < len && p[i + 2] == '<')
					{
						int			j = i + 3;

						while (j < len && p[j] != '>' &&
							   ((p[j] >= 'a' && p[j] <= 'z') ||
								(p[j] >= 'A' && p[j] <= 'Z') ||
								(p[j] >= '0' && p[j] <= '9') ||
								p[j] == '_' || p[j] == '$'))
							j++;
						if (j >= len || p[j] != '>' || j == i + 3 ||
							(p[i + 3] >= '0' && p[i + 3] <= '9'))
							return false;
						appendStringInfoChar(out, '(');
						x.groups_open++;
						i = j + 1;
						continue;
					}
					return false;
				}
				appendStringInfoChar(out, '(');
				x.groups_open++;
				break;
			default:
				appendStringInfoChar(out, c);
				break;
		}
		i++;
	}
	return !x.in_class;
}

/*
 * Compiled patterns, by JavaScript source and case flag, as core's
 * RE_compile_and_cache (utils/adt/regexp.c) keeps them: each entry owns a
 * memory context, created under CurrentMemoryContext while the pattern is
 * compiled (so that an error on the way frees it with the query's memory),
 * re-parented to the long-lived regex_context once the entry is complete
 * and deleted when the entry is evicted.  The context holds the entry's
 * source and, from PostgreSQL 16 on, the compiled regex itself (PG 15's
 * regex library allocates with malloc; pg_regfree frees that).  Entries are
 * immutable once made; invalid patterns are remembered as such.
 */
#define REGEX_CACHE_SIZE 32

typedef struct RegexEntry
{
	MemoryContext cxt;			/* NULL: slot unused */
	char	   *source;			/* NUL-terminated copy of the pattern */
	int			len;
	bool		icase;
	bool		valid;
	regex_t		re;
} RegexEntry;

static RegexEntry regex_cache[REGEX_CACHE_SIZE];
static int	regex_cache_next = 0;
static MemoryContext regex_context = NULL;

static regex_t *
get_regex(const char *src, int len, bool icase, bool utf8)
{
	RegexEntry *e;
	RegexEntry	fresh;
	StringInfoData are;
	MemoryContext old;
	int			rc = REG_BADPAT;

	for (int i = 0; i < REGEX_CACHE_SIZE; i++)
	{
		e = &regex_cache[i];
		if (e->cxt != NULL && e->len == len && e->icase == icase &&
			memcmp(e->source, src, len) == 0)
			return e->valid ? &e->re : NULL;
	}

	if (regex_context == NULL)
		regex_context = AllocSetContextCreate(TopMemoryContext,
											  "experiment condition regexes",
											  ALLOCSET_SMALL_SIZES);

	memset(&fresh, 0, sizeof(fresh));
	fresh.cxt = AllocSetContextCreate(CurrentMemoryContext,
									  "experiment condition regex",
									  ALLOCSET_SMALL_SIZES);
	old = MemoryContextSwitchTo(fresh.cxt);
	initStringInfo(&are);
	if (js_regex_to_are(src, len, icase, utf8, &are))
	{
		pg_wchar   *wpat = palloc(sizeof(pg_wchar) * (are.len + 1));
		int			wlen = pg_mb2wchar_with_len(are.data, wpat, are.len);

		rc = pg_regcomp(&fresh.re, wpat, wlen,
						REG_ADVANCED | REG_NOSUB | (icase ? REG_ICASE : 0),
						C_COLLATION_OID);
		pfree(wpat);
	}
	pfree(are.data);
	if (rc == REG_CANCEL)
	{
		char		msg[128];

		/* a cancel, not an invalid pattern: report the cancel if pending */
		CHECK_FOR_INTERRUPTS();
		pg_regerror(rc, &fresh.re, msg, sizeof(msg));
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_REGULAR_EXPRESSION),
				 errmsg("could not compile the regular expression: %s", msg)));
	}
	/* any other failure is an invalid pattern, which matches nothing */
	fresh.valid = (rc == REG_OKAY);
	fresh.source = palloc(len + 1);
	memcpy(fresh.source, src, len);
	fresh.source[len] = '\0';
	fresh.len = len;
	fresh.icase = icase;
	MemoryContextSwitchTo(old);
	MemoryContextSetIdentifier(fresh.cxt, fresh.source);
	MemoryContextSetParent(fresh.cxt, regex_context);

	/* the new entry is complete: evict the oldest and take its slot */
	e = &regex_cache[regex_cache_next];
	regex_cache_next = (regex_cache_next + 1) % REGEX_CACHE_SIZE;
	if (e->cxt != NULL)
	{
		if (e->valid)
			pg_regfree(&e->re);
		MemoryContextDelete(e->cxt);
	}
	*e = fresh;
	return e->valid ? &e->re : NULL;
}

static bool
regex_matches(regex_t *re, const char *s, int len)
{
	pg_wchar   *w = palloc(sizeof(pg_wchar) * (len + 1));
	int			wlen = pg_mb2wchar_with_len(s, w, len);
	int			rc = pg_regexec(re, w, wlen, 0, NULL, 0, NULL, 0);

	pfree(w);
	if (rc == REG_OKAY)
		return true;
	if (rc == REG_NOMATCH)
		return false;
	{
		char		msg[128];

		/* a cancel, not a failure of the pattern: report the cancel if pending */
		CHECK_FOR_INTERRUPTS();
		pg_regerror(rc, re, msg, sizeof(msg));
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_REGULAR_EXPRESSION),
				 errmsg("regular expression failed: %s", msg)));
	}
	return false;
}

/* ------------------------------------------------------------------------
 * Evaluation
 * ------------------------------------------------------------------------
 */

/* an object whose keys (at least one) all start with "$" */
static bool
is_operator_object(JsonbContainer *c)
{
	JbWalk		w;
	JsonbValue	k;

	if (!JsonContainerIsObject(c) || JsonContainerSize(c) == 0)
		return false;
	walk_init(&w, c, false);
	while (walk_next(&w, &k))
	{
		if (k.val.string.len == 0 || k.val.string.val[0] != '$')
			return false;
	}
	return true;
}

/* a canonical array index ("0", "17"; not "01", "-1", "1.0") */
static bool
array_index(const char *s, int len, uint32 *idx)
{
	uint64		v = 0;

	if (len == 0 || len > 10 || (len > 1 && s[0] == '0'))
		return false;
	for (int i = 0; i < len; i++)
	{
		if (s[i] < '0' || s[i] > '9')
			return false;
		v = v * 10 + (s[i] - '0');
	}
	if (v >= PG_UINT32_MAX)
		return false;
	*idx = (uint32) v;
	return true;
}

/*
 * getPath of the SDK: follow a dot-separated path through objects (and
 * arrays: "tags.0", "tags.length"); anything not found is null.
 */
static void
get_path(const CondVal *obj, const char *path, int len, CondVal *out)
{
	CondVal		cur = *obj;
	int			s = 0;

	for (;;)
	{
		int			e = s;
		JsonbValue	tmp;
		JsonbValue *jv = NULL;

		while (e < len && path[e] != '.')
			e++;
		if (cur.kind == CV_OBJ)
			jv = getKeyJsonValueFromContainer(cur.cont, path + s, e - s, &tmp);
		else if (cur.kind == CV_ARR)
		{
			uint32		idx;

			if (e - s == 6 && memcmp(path + s, "length", 6) == 0)
			{
				cv_number(&cur, JsonContainerSize(cur.cont));
				goto next;
			}
			if (array_index(path + s, e - s, &idx) &&
				idx < JsonContainerSize(cur.cont))
			{
				array_ith(cur.cont, idx, &tmp);
				jv = &tmp;
			}
		}
		if (jv == NULL)
		{
			memset(out, 0, sizeof(CondVal));
			out->kind = CV_NULL;
			return;
		}
		jbv_to_cv(jv, &cur);
next:
		if (e >= len)
			break;
		s = e + 1;
	}
	*out = cur;
}

/* a member of an object value, or NULL */
static bool
object_member(JsonbContainer *obj, const char *key, CondVal *out)
{
	JsonbValue	tmp;
	JsonbValue *jv = getKeyJsonValueFromContainer(obj, key, strlen(key), &tmp);

	if (jv == NULL)
		return false;
	jbv_to_cv(jv, out);
	return true;
}

/*
 * The values of saved group id for $inGroup and $notInGroup: a bare array,
 * or the "values" of {"type": "list", ...}.  *values = NULL for an unknown
 * id (an empty list); false for anything else (a condition group, a
 * malformed entry), which matches nobody.
 */
static bool
group_values(const char *id, int len, CondCtx *ctx, JsonbContainer **values)
{
	JsonbValue	tmp;
	JsonbValue *entry = NULL;
	CondVal		e,
				type,
				vals;

	*values = NULL;
	if (ctx->groups != NULL)
		entry = getKeyJsonValueFromContainer(ctx->groups, id, len, &tmp);
	if (entry == NULL)
		return true;
	jbv_to_cv(entry, &e);
	if (e.kind == CV_ARR)
	{
		*values = e.cont;
		return true;
	}
	if (e.kind == CV_OBJ && object_member(e.cont, "type", &type) &&
		type.kind == CV_STR && type.len == 4 && memcmp(type.str, "list", 4) == 0 &&
		object_member(e.cont, "values", &vals) && vals.kind == CV_ARR)
	{
		*values = vals.cont;
		return true;
	}
	return false;
}

/* was condition group id of these saved groups validated at this call site? */
static bool
group_validated(CondCtx *ctx, const char *id, int len)
{
	CondCache  *c = ctx->cache;

	if (!ctx->groups_cached)
		return false;
	for (int i = 0; i < c->nids; i++)
	{
		if (c->idlens[i] == len && memcmp(c->ids[i], id, len) == 0)
			return true;
	}
	return false;
}

static void
group_mark_validated(CondCtx *ctx, const char *id, int len)
{
	CondCache  *c = ctx->cache;

	if (!ctx->groups_cached)
		return;
	if (c->nids == c->maxids)
	{
		int			newmax = Max(8, 2 * c->maxids);

		if (c->ids == NULL)
		{
			c->ids = MemoryContextAlloc(ctx->cache_cxt, sizeof(char *) * newmax);
			c->idlens = MemoryContextAlloc(ctx->cache_cxt, sizeof(int) * newmax);
		}
		else
		{
			c->ids = repalloc(c->ids, sizeof(char *) * newmax);
			c->idlens = repalloc(c->idlens, sizeof(int) * newmax);
		}
		c->maxids = newmax;
	}
	c->ids[c->nids] = MemoryContextAlloc(ctx->cache_cxt, Max(len, 1));
	memcpy(c->ids[c->nids], id, len);
	c->idlens[c->nids] = len;
	c->nids++;
}

/*
 * $savedGroup: the reference is a group id, or {"id": ..., "attributeKey":
 * ...}.  The group is {"type": "list", "attributeKey": path, "values": [...]}
 * (the attribute at path is in values; a reference's attributeKey overrides
 * the group's) or {"type": "condition", "condition": {...}}.  Anything else,
 * and a group already being resolved (a cycle), matches nobody.
 */
static bool
eval_saved_group(const CondVal *obj, const JsonbValue *ref, CondCtx *ctx)
{
	CondVal		r,
				id,
				override,
				entry,
				type,
				member;
	bool		has_override = false;
	JsonbValue	tmp;
	JsonbValue *jv;
	VisitedGroup node;
	bool		result;

	jbv_to_cv(ref, &r);
	if (r.kind == CV_STR)
		id = r;
	else if (r.kind == CV_OBJ)
	{
		if (!object_member(r.cont, "id", &id) || id.kind != CV_STR)
			return false;
		if (object_member(r.cont, "attributeKey", &override))
		{
			if (override.kind != CV_STR)
				return false;
			has_override = true;
		}
	}
	else
		return false;
	for (VisitedGroup *v = ctx->visited; v != NULL; v = v->next)
	{
		if (v->len == id.len && memcmp(v->id, id.str, id.len) == 0)
			return false;
	}
	if (ctx->groups == NULL ||
		(jv = getKeyJsonValueFromContainer(ctx->groups, id.str, id.len, &tmp)) == NULL)
		return false;
	jbv_to_cv(jv, &entry);
	if (entry.kind != CV_OBJ || !object_member(entry.cont, "type", &type) ||
		type.kind != CV_STR)
		return false;

	if (type.len == 4 && memcmp(type.str, "list", 4) == 0)
	{
		CondVal		attr;

		if (!has_override &&
			(!object_member(entry.cont, "attributeKey", &override) ||
			 override.kind != CV_STR))
			return false;
		if (!object_member(entry.cont, "values", &member) || member.kind != CV_ARR)
			return false;
		get_path(obj, override.str, override.len, &attr);
		return is_in(&attr, member.cont, false, ctx);
	}
	if (type.len == 9 && memcmp(type.str, "condition", 9) == 0)
	{
		if (!object_member(entry.cont, "condition", &member) ||
			member.kind != CV_OBJ)
			return false;
		if (!group_validated(ctx, id.str, id.len))
		{
			validate_cond(member.cont, "saved_groups");
			elog(DEBUG1, "experiment.eval_condition: validated saved group \"%s\"",
				 exp_message_clip(id.str, id.len));
			group_mark_validated(ctx, id.str, id.len);
		}
		node.id = id.str;
		node.len = id.len;
		node.next = ctx->visited;
		ctx->visited = &node;
		result = eval_cond(obj, member.cont, ctx);
		ctx->visited = node.next;
		return result;
	}
	return false;				/* a type this evaluator does not know */
}

/* $or (and, negated, $nor): an empty list is true */
static bool
eval_or(const CondVal *obj, JsonbContainer *list, CondCtx *ctx)
{
	JbWalk		w;
	JsonbValue	v;

	if (JsonContainerSize(list) == 0)
		return true;
	walk_init(&w, list, false);
	while (walk_next(&w, &v))
	{
		CHECK_FOR_INTERRUPTS();
		if (eval_cond(obj, v.val.binary.data, ctx))
			return true;
	}
	return false;
}

static bool
eval_and(const CondVal *obj, JsonbContainer *list, CondCtx *ctx)
{
	JbWalk		w;
	JsonbValue	v;

	walk_init(&w, list, false);
	while (walk_next(&w, &v))
	{
		CHECK_FOR_INTERRUPTS();
		if (!eval_cond(obj, v.val.binary.data, ctx))
			return false;
	}
	return true;
}

/*
 * evalCondition of the SDK: every key of the condition object holds.  The
 * condition has been validated: $or, $nor and $and hold arrays of objects,
 * $not an object.
 */
static bool
eval_cond(const CondVal *obj, JsonbContainer *cond, CondCtx *ctx)
{
	JbWalk		wk,
				wv;
	JsonbValue	k,
				v;

	check_stack_depth();
	walk_init(&wk, cond, false);
	walk_init(&wv, cond, true);
	while (walk_next(&wk, &k) && walk_next(&wv, &v))
	{
		bool		ok;

		CHECK_FOR_INTERRUPTS();
		if (key_is(&k, "$or"))
			ok = eval_or(obj, v.val.binary.data, ctx);
		else if (key_is(&k, "$nor"))
			ok = !eval_or(obj, v.val.binary.data, ctx);
		else if (key_is(&k, "$and"))
			ok = eval_and(obj, v.val.binary.data, ctx);
		else if (key_is(&k, "$not"))
			ok = !eval_cond(obj, v.val.binary.data, ctx);
		else if (key_is(&k, "$savedGroup"))
			ok = eval_saved_group(obj, &v, ctx);
		else
		{
			CondVal		attr;

			get_path(obj, k.val.string.val, k.val.string.len, &attr);
			ok = eval_value(&v, &attr, false, ctx);
		}
		if (!ok)
			return false;
	}
	return true;
}

/*
 * isIn of the SDK: actual equals (===) one of the expected values; if
 * actual is an array, one of its elements does.  insensitive lowercases
 * strings first.
 */
static bool
is_in(const CondVal *actual, JsonbContainer *expected, bool insensitive,
	  CondCtx *ctx)
{
	int			nexp,
				nact = 1;
	CondVal    *exp = array_elems(expected, &nexp);
	CondVal    *act;

	if (actual->kind == CV_ARR)
		act = array_elems(actual->cont, &nact);
	else
		act = (CondVal *) actual;
	if (insensitive)
	{
		CondVal    *lowered = palloc(sizeof(CondVal) * Max(nact, 1));

		for (int i = 0; i < nexp; i++)
		{
			CHECK_FOR_INTERRUPTS();
			if (exp[i].kind == CV_STR)
				js_lower(&exp[i], &exp[i], ctx);
		}
		for (int j = 0; j < nact; j++)
		{
			CHECK_FOR_INTERRUPTS();
			if (act[j].kind == CV_STR)
				js_lower(&act[j], &lowered[j], ctx);
			else
				lowered[j] = act[j];
		}
		act = lowered;
	}
	for (int j = 0; j < nact; j++)
	{
		CHECK_FOR_INTERRUPTS();
		for (int i = 0; i < nexp; i++)
			if (js_strict_eq(&act[j], &exp[i]))
				return true;
	}
	return false;
}

/* elemMatch of the SDK: a non-null element matches the condition */
static bool
elem_match(const CondVal *actual, const JsonbValue *expected, CondCtx *ctx)
{
	bool		operators;
	int			n;
	CondVal    *elems;

	if (actual->kind != CV_ARR)
		return false;
	operators = is_operator_object(expected->val.binary.data);
	elems = array_elems(actual->cont, &n);
	for (int i = 0; i < n; i++)
	{
		CHECK_FOR_INTERRUPTS();
		if (elems[i].kind == CV_NULL)
			continue;
		if (operators ? eval_value(expected, &elems[i], false, ctx) :
			eval_cond(&elems[i], expected->val.binary.data, ctx))
			return true;
	}
	return false;
}

/* isInAll of the SDK: every expected condition matches some element */
static bool
is_in_all(const CondVal *actual, JsonbContainer *expected, bool insensitive,
		  CondCtx *ctx)
{
	JbWalk		w;
	JsonbValue	v;
	int			n;
	CondVal    *elems;

	if (actual->kind != CV_ARR)
		return false;
	elems = array_elems(actual->cont, &n);
	walk_init(&w, expected, false);
	while (walk_next(&w, &v))
	{
		bool		found = false;

		for (int i = 0; i < n && !found; i++)
		{
			CHECK_FOR_INTERRUPTS();
			found = eval_value(&v, &elems[i], insensitive, ctx);
		}
		if (!found)
			return false;
	}
	return true;
}

static const char *
js_type_name(const CondVal *v)
{
	switch (v->kind)
	{
		case CV_NULL:
			return "null";
		case CV_BOOL:
			return "boolean";
		case CV_NUM:
			return "number";
		case CV_STR:
			return "string";
		case CV_ARR:
			return "array";
		case CV_OBJ:
			return "object";
	}
	return "unknown";
}

/* evalOperatorCondition of the SDK; unknown operators are false */
static bool
eval_operator(const JsonbValue *opname, const CondVal *actual,
			  const JsonbValue *expected, CondCtx *ctx)
{
	CondOp		op = lookup_op(opname->val.string.val, opname->val.string.len);
	CondVal		exp;

	jbv_to_cv(expected, &exp);
	switch (op)
	{
		case OP_VEQ:
		case OP_VNE:
		case OP_VLT:
		case OP_VLTE:
		case OP_VGT:
		case OP_VGTE:
			{
				CondVal		pa,
							pe;
				int			c;

				padded_version(actual, &pa);
				padded_version(&exp, &pe);
				c = js_strcmp(pa.str, pa.len, pe.str, pe.len, ctx->utf8);
				switch (op)
				{
					case OP_VEQ:
						return c == 0;
					case OP_VNE:
						return c != 0;
					case OP_VLT:
						return c < 0;
					case OP_VLTE:
						return c <= 0;
					case OP_VGT:
						return c > 0;
					default:
						return c >= 0;
				}
			}
		case OP_EQ:
			return js_strict_eq(actual, &exp);
		case OP_NE:
			return !js_strict_eq(actual, &exp);
		case OP_LT:
			return js_less(actual, &exp, ctx) == JS_TRUE;
		case OP_LTE:
			return js_less(&exp, actual, ctx) == JS_FALSE;
		case OP_GT:
			return js_less(&exp, actual, ctx) == JS_TRUE;
		case OP_GTE:
			return js_less(actual, &exp, ctx) == JS_FALSE;
		case OP_EXISTS:
			return js_truthy(&exp) ? actual->kind != CV_NULL :
				actual->kind == CV_NULL;
		case OP_IN:
		case OP_NIN:
		case OP_INI:
		case OP_NINI:
			{
				bool		r;

				if (exp.kind != CV_ARR)
					return false;
				r = is_in(actual, exp.cont, op == OP_INI || op == OP_NINI, ctx);
				return (op == OP_IN || op == OP_INI) ? r : !r;
			}
		case OP_INGROUP:
		case OP_NOTINGROUP:
			{
				CondVal		key;
				JsonbContainer *values;

				js_tostring(&exp, &key);
				if (!group_values(key.str, key.len, ctx, &values))
					return false;	/* not a list: matches nobody */
				if (values == NULL)
					return op == OP_NOTINGROUP; /* unknown id: empty list */
				return is_in(actual, values, false, ctx) == (op == OP_INGROUP);
			}
		case OP_NOT:
			return !eval_value(expected, actual, false, ctx);
		case OP_SIZE:
			{
				CondVal		n;

				if (actual->kind != CV_ARR)
					return false;
				cv_number(&n, JsonContainerSize(actual->cont));
				return eval_value(expected, &n, false, ctx);
			}
		case OP_ELEMMATCH:
			return elem_match(actual, expected, ctx);
		case OP_ALL:
		case OP_ALLI:
			if (exp.kind != CV_ARR)
				return false;
			return is_in_all(actual, exp.cont, op == OP_ALLI, ctx);
		case OP_REGEX:
		case OP_REGEXI:
			{
				regex_t    *re;
				CondVal		subject;

				if (exp.kind != CV_STR)
					return false;
				re = get_regex(exp.str, exp.len, op == OP_REGEXI, ctx->utf8);
				if (re == NULL)
					return false;	/* invalid pattern: no match */
				js_tostring(actual, &subject);
				return regex_matches(re, subject.str, subject.len);
			}
		case OP_TYPE:
			{
				const char *t = js_type_name(actual);

				return exp.kind == CV_STR && exp.len == (int) strlen(t) &&
					memcmp(exp.str, t, exp.len) == 0;
			}
		case OP_UNKNOWN:
			return false;
	}
	return false;
}

/*
 * evalConditionValue of the SDK: a literal condition compares with the
 * value (string: ToString equality; number: ToNumber equality; boolean:
 * truthiness of a non-null value; null: null; array or object without
 * operators: JSON equality); an operator object requires every operator.
 */
static bool
eval_value(const JsonbValue *cond, const CondVal *value, bool insensitive,
		   CondCtx *ctx)
{
	switch (cond->type)
	{
		case jbvString:
			{
				CondVal		s,
							c;

				js_tostring(value, &s);
				cv_string(&c, cond->val.string.val, cond->val.string.len);
				if (insensitive)
				{
					js_lower(&s, &s, ctx);
					js_lower(&c, &c, ctx);
				}
				return js_strict_eq(&s, &c);
			}
		case jbvNumeric:
			return js_tonumber(value, ctx) == numeric_to_js(cond->val.numeric);
		case jbvBool:
			return value->kind != CV_NULL &&
				js_truthy(value) == cond->val.boolean;
		case jbvNull:
			return value->kind == CV_NULL;
		case jbvBinary:
			{
				JsonbContainer *c = cond->val.binary.data;
				JbWalk		wk,
							wv;
				JsonbValue	k,
							v;

				check_stack_depth();
				if (!is_operator_object(c))
				{
					CondVal		cv;

					jbv_to_cv(cond, &cv);
					return json_equal(value, &cv);
				}
				walk_init(&wk, c, false);
				walk_init(&wv, c, true);
				while (walk_next(&wk, &k) && walk_next(&wv, &v))
				{
					CHECK_FOR_INTERRUPTS();
					if (!eval_operator(&k, value, &v, ctx))
						return false;
				}
				return true;
			}
		default:
			elog(ERROR, "unexpected jsonb value type %d", (int) cond->type);
	}
	return false;
}

/* ------------------------------------------------------------------------
 * Validation and the SQL-callable function
 * ------------------------------------------------------------------------
 */

/* the JSON text of a value, shortened for error messages */
static char *
json_snippet(const JsonbValue *v)
{
	char	   *s;

	if (v->type == jbvBinary)
		s = JsonbToCString(NULL, v->val.binary.data, 64);
	else
		s = JsonbToCString(NULL, &JsonbValueToJsonb((JsonbValue *) v)->root, 64);
	if (strlen(s) > 80)
		strcpy(s + pg_mbcliplen(s, strlen(s), 76), " ...");
	return s;
}

static const char *
jsonb_container_type(Jsonb *jb)
{
	if (JB_ROOT_IS_OBJECT(jb))
		return "an object";
	if (!JB_ROOT_IS_SCALAR(jb))
		return "an array";
	{
		JsonbValue	v;

		if (!JsonbExtractScalar(&jb->root, &v))
			return "a scalar";
		switch (v.type)
		{
			case jbvNull:
				return "null";
			case jbvString:
				return "a string";
			case jbvNumeric:
				return "a number";
			case jbvBool:
				return "a boolean";
			default:
				return "a scalar";
		}
	}
}

pg_noreturn static void
invalid_condition(const char *argname, const char *what, const JsonbValue *found)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("invalid condition in argument %s: %s, not %s", argname,
					what, json_snippet(found)),
			 errhint("A condition is an object of attribute paths and operators, as {\"country\": {\"$in\": [\"SG\", \"MY\"]}, \"$or\": [{...}, {...}]}.")));
}


/* an operator object's arguments that are conditions themselves */
static void
validate_value(const JsonbValue *v, const char *argname)
{
	JbWalk		wk,
				wa;
	JsonbValue	k,
				a;

	if (v->type != jbvBinary || !is_operator_object(v->val.binary.data))
		return;
	check_stack_depth();
	walk_init(&wk, v->val.binary.data, false);
	walk_init(&wa, v->val.binary.data, true);
	while (walk_next(&wk, &k) && walk_next(&wa, &a))
	{
		if (key_is(&k, "$not") || key_is(&k, "$size"))
			validate_value(&a, argname);
		else if (key_is(&k, "$elemMatch"))
		{
			if (a.type != jbvBinary || !JsonContainerIsObject(a.val.binary.data))
				invalid_condition(argname, "\"$elemMatch\" takes a condition object", &a);
			if (is_operator_object(a.val.binary.data))
				validate_value(&a, argname);
			else
				validate_cond(a.val.binary.data, argname);
		}
		else if ((key_is(&k, "$all") || key_is(&k, "$alli")) &&
				 a.type == jbvBinary && JsonContainerIsArray(a.val.binary.data))
		{
			JbWalk		we;
			JsonbValue	e;

			walk_init(&we, a.val.binary.data, false);
			while (walk_next(&we, &e))
			{
				CHECK_FOR_INTERRUPTS();
				validate_value(&e, argname);
			}
		}
	}
}

/* $and, $or, $nor hold arrays of condition objects, $not an object */
static void
validate_cond(JsonbContainer *cond, const char *argname)
{
	JbWalk		wk,
				wv;
	JsonbValue	k,
				v;

	check_stack_depth();
	walk_init(&wk, cond, false);
	walk_init(&wv, cond, true);
	while (walk_next(&wk, &k) && walk_next(&wv, &v))
	{
		if (key_is(&k, "$or") || key_is(&k, "$nor") || key_is(&k, "$and"))
		{
			JbWalk		we;
			JsonbValue	e;
			char		what[64];

			snprintf(what, sizeof(what),
					 "\"%.*s\" takes an array of condition objects",
					 k.val.string.len, k.val.string.val);
			if (v.type != jbvBinary || !JsonContainerIsArray(v.val.binary.data))
				invalid_condition(argname, what, &v);
			walk_init(&we, v.val.binary.data, false);
			while (walk_next(&we, &e))
			{
				CHECK_FOR_INTERRUPTS();
				if (e.type != jbvBinary || !JsonContainerIsObject(e.val.binary.data))
					invalid_condition(argname, what, &e);
				validate_cond(e.val.binary.data, argname);
			}
		}
		else if (key_is(&k, "$not"))
		{
			if (v.type != jbvBinary || !JsonContainerIsObject(v.val.binary.data))
				invalid_condition(argname, "\"$not\" takes a condition object", &v);
			validate_cond(v.val.binary.data, argname);
		}
		else if (!key_is(&k, "$savedGroup"))
			validate_value(&v, argname);
	}
}

static void
require_object(Jsonb *jb, const char *argname)
{
	if (!JB_ROOT_IS_OBJECT(jb))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("argument %s of experiment.eval_condition must be a JSON object, not %s",
						argname, jsonb_container_type(jb)),
				 errdetail("%s = %s", argname,
						   exp_message_clip(JsonbToCString(NULL, &jb->root, VARSIZE(jb)), -1))));
}

/* the call site's cache, created on first use */
static CondCache *
cond_cache(FunctionCallInfo fcinfo)
{
	if (fcinfo->flinfo->fn_extra == NULL)
		fcinfo->flinfo->fn_extra = MemoryContextAllocZero(fcinfo->flinfo->fn_mcxt,
														  sizeof(CondCache));
	return (CondCache *) fcinfo->flinfo->fn_extra;
}

/* does the cached copy hold these bytes? */
static bool
cache_holds(const char *copy, Size copylen, const void *bytes, Size len)
{
	return copy != NULL && copylen == len && memcmp(copy, bytes, len) == 0;
}

/* replace a cached copy by these bytes (none when too large) */
static void
cache_store(MemoryContext cxt, char **copy, Size *copylen, const void *bytes, Size len)
{
	if (*copy != NULL)
		pfree(*copy);
	*copy = NULL;
	*copylen = 0;
	if (len > COND_CACHE_MAX_BYTES)
		return;
	*copy = MemoryContextAlloc(cxt, len);
	memcpy(*copy, bytes, len);
	*copylen = len;
}

/*
 * experiment.eval_condition(condition jsonb, attributes jsonb,
 *							 saved_groups jsonb DEFAULT '{}') boolean
 *
 * Whether the attributes satisfy the GrowthBook targeting condition, as the
 * GrowthBook SDKs' evalCondition decides; saved_groups maps the group ids
 * that $inGroup and $notInGroup name to arrays of values.
 */
PG_FUNCTION_INFO_V1(exp_eval_condition);
Datum
exp_eval_condition(PG_FUNCTION_ARGS)
{
	Jsonb	   *cond = PG_GETARG_JSONB_P(0);
	Jsonb	   *attrs = PG_GETARG_JSONB_P(1);
	Jsonb	   *groups = NULL;
	CondCtx		ctx;
	CondVal		obj;

	require_object(cond, "condition");
	require_object(attrs, "attributes");
	ctx.groups = NULL;
	if (PG_NARGS() > 2)
	{
		groups = PG_GETARG_JSONB_P(2);
		require_object(groups, "saved_groups");
		ctx.groups = &groups->root;
	}
	ctx.utf8 = (GetDatabaseEncoding() == PG_UTF8);
	ctx.visited = NULL;
	ctx.cache = cond_cache(fcinfo);
	ctx.cache_cxt = fcinfo->flinfo->fn_mcxt;
	ctx.groups_cached = false;

	if (!cache_holds(ctx.cache->cond, ctx.cache->condlen, cond, VARSIZE(cond)))
	{
		validate_cond(&cond->root, "condition");
		cache_store(ctx.cache_cxt, &ctx.cache->cond, &ctx.cache->condlen, cond, VARSIZE(cond));
	}
	if (groups != NULL)
	{
		CondCache  *c = ctx.cache;

		if (!cache_holds(c->groups, c->groupslen, groups, VARSIZE(groups)))
		{
			/* other saved groups: forget which were validated */
			for (int i = 0; i < c->nids; i++)
				pfree(c->ids[i]);
			c->nids = 0;
			cache_store(ctx.cache_cxt, &c->groups, &c->groupslen, groups, VARSIZE(groups));
		}
		ctx.groups_cached = c->groups != NULL;
	}

	memset(&obj, 0, sizeof(obj));
	obj.kind = CV_OBJ;
	obj.cont = &attrs->root;
	PG_RETURN_BOOL(eval_cond(&obj, &cond->root, &ctx));
}
