/* SPDX-License-Identifier: GPL-3.0-or-later */
/*
 * experiment-kafka-sink: reads exposures and metric events from Kafka topics
 * and stores them in PostgreSQL through the experiment extension
 * (doc/kafka.md).
 *
 * Delivery: Kafka delivers at least once; the effect is exactly once. The
 * messages of each topic in a batch are one database transaction that
 *   1. moves the stored next offsets of every partition in the batch
 *      (experiment.kafka_advance_offsets: it fails with 40001 when another
 *      consumer moved them first, and holds their row locks to the end),
 *   2. copies the messages into a temporary table (COPY),
 *   3. stores them with experiment.ingest_exposure_messages() and
 *      experiment.ingest_event_messages(), which quarantine or dead-letter
 *      the malformed ones with their topic, partition and offset,
 * and commits. On assignment, each partition starts at the offset stored in
 * the database. Offsets committed to Kafka are advisory (lag monitoring).
 *
 * Exit codes: 0 stopped (SIGTERM, SIGINT) or --check passed; 1 a fatal Kafka
 * error; 2 a usage or configuration error; 3 the database or the topics are
 * not as configured (at start-up or with --check).
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <libpq-fe.h>
#include <librdkafka/rdkafka.h>

#define SINK_VERSION "0.4.0"

#define EXIT_STOPPED 0
#define EXIT_FATAL 1
#define EXIT_USAGE 2
#define EXIT_CHECK 3

/* ---- logging ------------------------------------------------------------ */

enum level { L_ERROR, L_WARNING, L_INFO, L_DEBUG };
static const char *const level_names[] = {"error", "warning", "info", "debug"};
static enum level log_level = L_INFO;

static void
logmsg(enum level lv, const char *fmt, ...)
{
	struct timespec ts;
	struct tm tm;
	char when[32];
	va_list ap;

	if (lv > log_level)
		return;
	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%S", &tm);
	fprintf(stderr, "%s.%03ldZ experiment-kafka-sink %s: ", when, ts.tv_nsec / 1000000, level_names[lv]);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	fflush(stderr);
}

static void *
xmalloc(size_t n)
{
	void *p = malloc(n ? n : 1);

	if (p == NULL)
	{
		logmsg(L_ERROR, "out of memory");
		exit(EXIT_FATAL);
	}
	return p;
}

static void *
xrealloc(void *p, size_t n)
{
	p = realloc(p, n ? n : 1);
	if (p == NULL)
	{
		logmsg(L_ERROR, "out of memory");
		exit(EXIT_FATAL);
	}
	return p;
}

static char *
xstrdup(const char *s)
{
	size_t n = strlen(s) + 1;

	return memcpy(xmalloc(n), s, n);
}

static double
now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* a growable byte buffer */
typedef struct
{
	char *data;
	size_t len, cap;
} buf_t;

static void
buf_put(buf_t *b, const char *s, size_t n)
{
	if (b->len + n + 1 > b->cap)
	{
		b->cap = (b->len + n + 1) * 2;
		b->data = xrealloc(b->data, b->cap);
	}
	memcpy(b->data + b->len, s, n);
	b->len += n;
	b->data[b->len] = '\0';
}

static void
buf_str(buf_t *b, const char *s)
{
	buf_put(b, s, strlen(s));
}

static void
buf_printf(buf_t *b, const char *fmt, ...)
{
	char tmp[256];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(tmp, sizeof tmp, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if ((size_t) n < sizeof tmp)
		buf_put(b, tmp, (size_t) n);
	else
	{
		char *big = xmalloc((size_t) n + 1);

		va_start(ap, fmt);
		vsnprintf(big, (size_t) n + 1, fmt, ap);
		va_end(ap);
		buf_put(b, big, (size_t) n);
		free(big);
	}
}

/* ---- configuration --------------------------------------------------------- */

typedef struct
{
	char *topic;
	bool exposures;				/* exposures, or metric events for table */
	char *table;
	int ncolumns;
	char **columns;
	char **fields;
} topic_map;

typedef struct
{
	char *name, *value, *where;
} kv;

static struct
{
	char *database;
	char *group;
	char *bootstrap;
	char *auto_offset_reset;
	long batch_size;
	long linger_ms;
	long summary_s;
	int ntopics;
	topic_map *topics;
	int nkafka;
	kv *kafka;
} cfg;

static topic_map *
topic_find(const char *topic)
{
	for (int i = 0; i < cfg.ntopics; i++)
		if (strcmp(cfg.topics[i].topic, topic) == 0)
			return &cfg.topics[i];
	return NULL;
}

static topic_map *
topic_add(const char *topic, bool exposures, const char *where)
{
	topic_map *t = topic_find(topic);

	if (t != NULL)
	{
		if (t->exposures != exposures)
		{
			logmsg(L_ERROR, "%s: topic \"%s\" is mapped both to exposures and to metric events", where, topic);
			exit(EXIT_USAGE);
		}
		return t;
	}
	cfg.topics = xrealloc(cfg.topics, sizeof(topic_map) * (cfg.ntopics + 1));
	t = &cfg.topics[cfg.ntopics++];
	memset(t, 0, sizeof *t);
	t->topic = xstrdup(topic);
	t->exposures = exposures;
	return t;
}

static char *
trim(char *s)
{
	char *e;

	while (isspace((unsigned char) *s))
		s++;
	e = s + strlen(s);
	while (e > s && isspace((unsigned char) e[-1]))
		*--e = '\0';
	return s;
}

static long
parse_long(const char *key, const char *v, long lo, long hi, const char *where)
{
	char *end;
	long n;

	errno = 0;
	n = strtol(v, &end, 10);
	if (errno != 0 || end == v || *trim(end) != '\0' || n < lo || n > hi)
	{
		logmsg(L_ERROR, "%s: %s must be an integer from %ld to %ld, got \"%s\"", where, key, lo, hi, v);
		exit(EXIT_USAGE);
	}
	return n;
}

/* "col", "col=field.path" items, comma-separated */
static void
parse_columns(topic_map *t, const char *value, const char *where)
{
	char *copy = xstrdup(value), *save = NULL, *item;

	for (int i = 0; i < t->ncolumns; i++)
	{
		free(t->columns[i]);
		free(t->fields[i]);
	}
	t->ncolumns = 0;
	for (item = strtok_r(copy, ",", &save); item != NULL; item = strtok_r(NULL, ",", &save))
	{
		char *eq = strchr(item, '='), *col, *field;

		if (eq != NULL)
			*eq = '\0';
		col = trim(item);
		field = eq != NULL ? trim(eq + 1) : col;
		if (*col == '\0' || *field == '\0')
		{
			logmsg(L_ERROR, "%s: events.%s.columns must list column or column=json.field items, got \"%s\"",
				   where, t->topic, value);
			exit(EXIT_USAGE);
		}
		t->columns = xrealloc(t->columns, sizeof(char *) * (t->ncolumns + 1));
		t->fields = xrealloc(t->fields, sizeof(char *) * (t->ncolumns + 1));
		t->columns[t->ncolumns] = xstrdup(col);
		t->fields[t->ncolumns] = xstrdup(field);
		t->ncolumns++;
	}
	free(copy);
}

static void
set_kafka(const char *name, const char *value, const char *where)
{
	for (int i = 0; i < cfg.nkafka; i++)
		if (strcmp(cfg.kafka[i].name, name) == 0)
		{
			free(cfg.kafka[i].value);
			free(cfg.kafka[i].where);
			cfg.kafka[i].value = xstrdup(value);
			cfg.kafka[i].where = xstrdup(where);
			return;
		}
	cfg.kafka = xrealloc(cfg.kafka, sizeof(kv) * (cfg.nkafka + 1));
	cfg.kafka[cfg.nkafka].name = xstrdup(name);
	cfg.kafka[cfg.nkafka].value = xstrdup(value);
	cfg.kafka[cfg.nkafka].where = xstrdup(where);
	cfg.nkafka++;
}

/* the exposure topics, replaced by a new list (the environment overrides the file) */
static void
clear_exposure_topics(void)
{
	int			k = 0;

	for (int i = 0; i < cfg.ntopics; i++)
		if (cfg.topics[i].exposures)
			free(cfg.topics[i].topic);
		else
			cfg.topics[k++] = cfg.topics[i];
	cfg.ntopics = k;
}

/* one setting, from the file (where = "FILE:LINE") or the environment */
static void
set_option(const char *key, const char *value, const char *where)
{
	if (strcmp(key, "database") == 0)
		free(cfg.database), cfg.database = xstrdup(value);
	else if (strcmp(key, "group.id") == 0)
		free(cfg.group), cfg.group = xstrdup(value);
	else if (strcmp(key, "bootstrap.servers") == 0)
		free(cfg.bootstrap), cfg.bootstrap = xstrdup(value);
	else if (strcmp(key, "auto.offset.reset") == 0)
	{
		if (strcmp(value, "earliest") != 0 && strcmp(value, "latest") != 0)
		{
			logmsg(L_ERROR, "%s: auto.offset.reset must be earliest or latest, got \"%s\"", where, value);
			exit(EXIT_USAGE);
		}
		free(cfg.auto_offset_reset), cfg.auto_offset_reset = xstrdup(value);
	}
	else if (strcmp(key, "batch.size") == 0)
		cfg.batch_size = parse_long(key, value, 1, 1000000, where);
	else if (strcmp(key, "batch.linger.ms") == 0)
		cfg.linger_ms = parse_long(key, value, 0, 3600000, where);
	else if (strcmp(key, "summary.interval.s") == 0)
		cfg.summary_s = parse_long(key, value, 0, 86400, where);
	else if (strcmp(key, "log.level") == 0)
	{
		int i;

		for (i = 0; i <= L_DEBUG; i++)
			if (strcmp(value, level_names[i]) == 0)
				break;
		if (i > L_DEBUG)
		{
			logmsg(L_ERROR, "%s: log.level must be error, warning, info or debug, got \"%s\"", where, value);
			exit(EXIT_USAGE);
		}
		log_level = (enum level) i;
	}
	else if (strcmp(key, "exposures.topics") == 0)
	{
		char *copy = xstrdup(value), *save = NULL, *item;

		clear_exposure_topics();
		for (item = strtok_r(copy, ",", &save); item != NULL; item = strtok_r(NULL, ",", &save))
			if (*trim(item) != '\0')
				topic_add(trim(item), true, where);
		free(copy);
	}
	else if (strncmp(key, "events.", 7) == 0 && strrchr(key, '.') > key + 7)
	{
		const char *dot = strrchr(key, '.');
		char *topic = strndup(key + 7, (size_t) (dot - key - 7));
		topic_map *t = topic_add(topic, false, where);

		if (strcmp(dot, ".table") == 0)
			free(t->table), t->table = xstrdup(value);
		else if (strcmp(dot, ".columns") == 0)
			parse_columns(t, value, where);
		else
		{
			logmsg(L_ERROR, "%s: unknown setting \"%s\" (events.TOPIC.table or events.TOPIC.columns)", where, key);
			exit(EXIT_USAGE);
		}
		free(topic);
	}
	else if (strncmp(key, "kafka.", 6) == 0 && key[6] != '\0')
		set_kafka(key + 6, value, where);
	else
	{
		logmsg(L_ERROR, "%s: unknown setting \"%s\"; settings: database, group.id, bootstrap.servers, "
			   "exposures.topics, events.TOPIC.table, events.TOPIC.columns, batch.size, batch.linger.ms, "
			   "summary.interval.s, auto.offset.reset, log.level, kafka.PROPERTY", where, key);
		exit(EXIT_USAGE);
	}
}

static void
read_config_file(const char *path)
{
	FILE *f = fopen(path, "r");
	char *line = NULL;
	size_t cap = 0;
	int lineno = 0;
	char **seen = NULL;
	int *seen_line = NULL;
	int nseen = 0;

	if (f == NULL)
	{
		logmsg(L_ERROR, "could not open configuration file \"%s\": %s", path, strerror(errno));
		exit(EXIT_USAGE);
	}
	while (getline(&line, &cap, f) >= 0)
	{
		char where[1024], *s = trim(line), *eq;

		lineno++;
		if (*s == '\0' || *s == '#')
			continue;
		snprintf(where, sizeof where, "%s:%d", path, lineno);
		eq = strchr(s, '=');
		if (eq == NULL)
		{
			logmsg(L_ERROR, "%s: expected \"key = value\", got \"%s\"", where, s);
			exit(EXIT_USAGE);
		}
		*eq = '\0';
		s = trim(s);
		for (int i = 0; i < nseen; i++)
			if (strcmp(seen[i], s) == 0)
			{
				logmsg(L_ERROR, "%s: \"%s\" is set twice (first on line %d)", where, s, seen_line[i]);
				exit(EXIT_USAGE);
			}
		seen = xrealloc(seen, sizeof(char *) * (nseen + 1));
		seen_line = xrealloc(seen_line, sizeof(int) * (nseen + 1));
		seen[nseen] = xstrdup(s);
		seen_line[nseen++] = lineno;
		set_option(s, trim(eq + 1), where);
	}
	for (int i = 0; i < nseen; i++)
		free(seen[i]);
	free(seen);
	free(seen_line);
	free(line);
	fclose(f);
}

/*
 * Settings from the environment: EXPERIMENT_SINK_DATABASE, _GROUP_ID,
 * _BOOTSTRAP_SERVERS, ... (the key in capitals, "." as "_"), and
 * EXPERIMENT_SINK_KAFKA_SASL_PASSWORD for kafka.sasl.password: librdkafka's
 * property names have no "_", so each "_" is a ".".
 */
static void
read_environment(void)
{
	static const char *const keys[] = {"database", "group.id", "bootstrap.servers", "exposures.topics",
		"batch.size", "batch.linger.ms", "summary.interval.s", "auto.offset.reset", "log.level", NULL};
	extern char **environ;

	for (int i = 0; keys[i] != NULL; i++)
	{
		char name[128] = "EXPERIMENT_SINK_";
		size_t n = strlen(name);
		const char *v;

		for (const char *k = keys[i]; *k && n < sizeof name - 1; k++)
			name[n++] = *k == '.' ? '_' : (char) toupper((unsigned char) *k);
		name[n] = '\0';
		if ((v = getenv(name)) != NULL)
			set_option(keys[i], v, name);
	}
	for (char **e = environ; *e != NULL; e++)
	{
		const char *prefix = "EXPERIMENT_SINK_KAFKA_", *eq = strchr(*e, '=');
		char key[256], name[256];
		size_t n = 0;
		bool known = false;

		if (strncmp(*e, "EXPERIMENT_SINK_", 16) != 0 || eq == NULL)
			continue;
		snprintf(name, sizeof name, "%.*s", (int) (eq - *e), *e);
		if (strncmp(*e, prefix, strlen(prefix)) == 0)
		{
			for (const char *k = *e + strlen(prefix); k < eq && n < sizeof key - 1; k++)
				key[n++] = *k == '_' ? '.' : (char) tolower((unsigned char) *k);
			key[n] = '\0';
			if (n > 0)
				set_kafka(key, eq + 1, name);
			continue;
		}
		known = strcmp(name, "EXPERIMENT_SINK_CONFIG") == 0;
		for (int i = 0; keys[i] != NULL && !known; i++)
		{
			char want[128] = "EXPERIMENT_SINK_";
			size_t m = strlen(want);

			for (const char *k = keys[i]; *k && m < sizeof want - 1; k++)
				want[m++] = *k == '.' ? '_' : (char) toupper((unsigned char) *k);
			want[m] = '\0';
			known = strcmp(name, want) == 0;
		}
		if (!known)
		{
			logmsg(L_ERROR, "%s: unknown setting in the environment (events.TOPIC.* can only be set in the "
				   "configuration file; see --help)", name);
			exit(EXIT_USAGE);
		}
	}
}

static void
check_config(void)
{
	if (cfg.bootstrap == NULL || *cfg.bootstrap == '\0')
	{
		logmsg(L_ERROR, "bootstrap.servers is not set (in the configuration file or EXPERIMENT_SINK_BOOTSTRAP_SERVERS)");
		exit(EXIT_USAGE);
	}
	if (cfg.group == NULL || *cfg.group == '\0')
	{
		logmsg(L_ERROR, "group.id must not be empty");
		exit(EXIT_USAGE);
	}
	if (cfg.ntopics == 0)
	{
		logmsg(L_ERROR, "no topic is configured: set exposures.topics or events.TOPIC.table");
		exit(EXIT_USAGE);
	}
	for (int i = 0; i < cfg.ntopics; i++)
	{
		topic_map *t = &cfg.topics[i];

		if (!t->exposures && (t->table == NULL || t->ncolumns == 0))
		{
			logmsg(L_ERROR, "topic \"%s\" needs both events.%s.table and events.%s.columns",
				   t->topic, t->topic, t->topic);
			exit(EXIT_USAGE);
		}
	}
	for (int i = 0; i < cfg.nkafka; i++)
	{
		const char *n = cfg.kafka[i].name;

		if (strcmp(n, "enable.auto.commit") == 0 || strcmp(n, "enable.auto.offset.store") == 0 ||
			strcmp(n, "group.id") == 0 || strcmp(n, "bootstrap.servers") == 0 ||
			strcmp(n, "auto.offset.reset") == 0)
		{
			logmsg(L_ERROR, "%s: kafka.%s cannot be set: %s", cfg.kafka[i].where, n,
				   strncmp(n, "enable.", 7) == 0 ? "the sink stores offsets in the database and keeps it false"
				   : "use the setting without the kafka. prefix");
			exit(EXIT_USAGE);
		}
	}
}

/* ---- the database ------------------------------------------------------- */

static PGconn *db;
static volatile sig_atomic_t stopping;

static const char *const sql_setup =
	"SET application_name = 'experiment-kafka-sink';"
	"SET client_encoding = 'UTF8';"
	"CREATE TEMP TABLE IF NOT EXISTS experiment_kafka_sink_batch ("
	"  seq integer NOT NULL, topic text NOT NULL, partition integer NOT NULL,"
	"  \"offset\" bigint NOT NULL, payload text NOT NULL) ON COMMIT DELETE ROWS";

/* a libpq message on one line: its lines joined with " | " */
static const char *
one_line(const char *msg)
{
	static char out[2048];
	size_t		n = 0;

	for (const char *c = msg; *c && n < sizeof out - 4; c++)
		if (*c == '\n')
		{
			if (c[1] != '\0' && c[1] != '\n' && n > 0)
			{
				memcpy(out + n, " | ", 3);
				n += 3;
			}
		}
		else
			out[n++] = *c;
	out[n] = '\0';
	return out;
}

static bool
db_ok(PGresult *r, const char *what)
{
	ExecStatusType s = PQresultStatus(r);

	if (s == PGRES_COMMAND_OK || s == PGRES_TUPLES_OK || s == PGRES_COPY_IN)
		return true;
	logmsg(L_WARNING, "%s failed: %s", what, one_line(PQerrorMessage(db)));
	return false;
}

static const char *
sqlstate(PGresult *r)
{
	const char *s = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;

	return s ? s : "";
}

static bool
db_connect_once(void)
{
	PGresult *r;

	if (db != NULL)
		PQfinish(db);
	db = PQconnectdb(cfg.database ? cfg.database : "");
	if (PQstatus(db) != CONNECTION_OK)
	{
		logmsg(L_WARNING, "could not connect to the database: %s", one_line(PQerrorMessage(db)));
		return false;
	}
	r = PQexec(db, sql_setup);
	if (!db_ok(r, "session set-up"))
	{
		PQclear(r);
		return false;
	}
	PQclear(r);
	return true;
}

/* connect, retrying with backoff until it works or the sink is stopped */
static bool
db_connect(void)
{
	double wait = 0.5;

	while (!stopping)
	{
		if (db_connect_once())
			return true;
		logmsg(L_WARNING, "retrying in %.1f s", wait);
		usleep((useconds_t) (wait * 1e6));
		wait = wait * 2 > 30 ? 30 : wait * 2;
	}
	return false;
}

/* text[] literal of n strings, for a query parameter */
static char *
text_array(char **items, int n)
{
	buf_t b = {0};

	buf_str(&b, "{");
	for (int i = 0; i < n; i++)
	{
		if (i > 0)
			buf_str(&b, ",");
		buf_str(&b, "\"");
		for (const char *c = items[i]; *c; c++)
		{
			if (*c == '"' || *c == '\\')
				buf_str(&b, "\\");
			buf_put(&b, c, 1);
		}
		buf_str(&b, "\"");
	}
	buf_str(&b, "}");
	return b.data;
}

/* ---- partitions and the batch ------------------------------------------------ */

/* a partition assigned to this consumer */
typedef struct
{
	char *topic;
	int32_t partition;
	int64_t stored;				/* next offset stored in the database, -1: none yet */
	int64_t first, next;		/* offsets in the current batch: [first, next) */
	bool in_batch;
	bool paused;				/* its topic's batch failed: paused until retry_at (-1: until restarted) */
	double retry_at;
	double backoff;
	int64_t resume_from;		/* where a paused partition is read again */
} part_t;

/* the assigned partitions; messages of the batch point at them */
static int nparts;
static part_t **parts;

static part_t *
part_find(const char *topic, int32_t partition)
{
	for (int i = 0; i < nparts; i++)
		if (parts[i]->partition == partition && strcmp(parts[i]->topic, topic) == 0)
			return parts[i];
	return NULL;
}

static part_t *
part_add(const char *topic, int32_t partition)
{
	part_t *p = part_find(topic, partition);

	if (p != NULL)
		return p;
	p = xmalloc(sizeof(part_t));
	memset(p, 0, sizeof *p);
	p->topic = xstrdup(topic);
	p->partition = partition;
	p->stored = -1;
	parts = xrealloc(parts, sizeof(part_t *) * (nparts + 1));
	parts[nparts++] = p;
	return p;
}

static void
part_remove(part_t *p)
{
	for (int i = 0; i < nparts; i++)
		if (parts[i] == p)
		{
			parts[i] = parts[--nparts];
			free(p->topic);
			free(p);
			return;
		}
}

typedef struct
{
	part_t *part;
	int64_t offset;
	char *payload;
	size_t len;
} msg_t;

static struct
{
	int n, cap;
	msg_t *msgs;
	double started;
} batch;

static rd_kafka_t *rk;

/* totals, for the summary */
static struct
{
	long long messages, inserted, duplicates, quarantined, dead_lettered, batches, fenced, failed;
} total, last_summary;

static void
batch_drop_part(part_t *p)
{
	int k = 0;

	for (int i = 0; i < batch.n; i++)
		if (batch.msgs[i].part == p)
			free(batch.msgs[i].payload);
		else
			batch.msgs[k++] = batch.msgs[i];
	batch.n = k;
	p->in_batch = false;
}

static void
batch_clear(void)
{
	for (int i = 0; i < batch.n; i++)
		free(batch.msgs[i].payload);
	batch.n = 0;
	for (int i = 0; i < nparts; i++)
		parts[i]->in_batch = false;
}

/* COPY text format of a payload: UTF-8 without NUL as is (escaped); other bytes as \x and hex */
static void
copy_payload(buf_t *b, const char *s, size_t n)
{
	bool valid = true;

	for (size_t i = 0; i < n && valid;)
	{
		unsigned char c = (unsigned char) s[i];
		size_t k = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xe ? 3 : (c >> 3) == 0x1e ? 4 : 0;
		uint32_t cp;

		if (c == 0 || k == 0 || i + k > n)
		{
			valid = false;
			break;
		}
		cp = k == 1 ? c : c & (0x7f >> k);
		for (size_t j = 1; j < k; j++)
		{
			if (((unsigned char) s[i + j] & 0xc0) != 0x80)
				valid = false;
			cp = (cp << 6) | ((unsigned char) s[i + j] & 0x3f);
		}
		if ((k == 2 && cp < 0x80) || (k == 3 && cp < 0x800) || (k == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
			(cp >= 0xd800 && cp <= 0xdfff))
			valid = false;
		i += k;
	}
	if (!valid)
	{
		static const char hex[] = "0123456789abcdef";

		buf_str(b, "\\\\x");
		for (size_t i = 0; i < n; i++)
		{
			char h[2] = {hex[(unsigned char) s[i] >> 4], hex[(unsigned char) s[i] & 15]};

			buf_put(b, h, 2);
		}
		return;
	}
	for (size_t i = 0; i < n; i++)
	{
		switch (s[i])
		{
			case '\\': buf_str(b, "\\\\"); break;
			case '\n': buf_str(b, "\\n"); break;
			case '\r': buf_str(b, "\\r"); break;
			case '\t': buf_str(b, "\\t"); break;
			default: buf_put(b, s + i, 1);
		}
	}
}

/* the stored next offsets of these partitions (-1 where none is stored) */
static bool
load_offsets(part_t **ps, int n)
{
	char **topics = xmalloc(sizeof(char *) * (n ? n : 1));
	buf_t pa = {0};
	char *ta;
	const char *params[3];
	PGresult *r;
	bool ok;

	buf_str(&pa, "{");
	for (int i = 0; i < n; i++)
	{
		topics[i] = ps[i]->topic;
		buf_printf(&pa, "%s%d", i ? "," : "", (int) ps[i]->partition);
		ps[i]->stored = -1;
	}
	buf_str(&pa, "}");
	ta = text_array(topics, n);
	params[0] = cfg.group;
	params[1] = ta;
	params[2] = pa.data;
	r = PQexecParams(db,
					 "SELECT o.topic, o.partition, o.next_offset FROM experiment.kafka_offsets o "
					 "JOIN unnest($2::text[], $3::integer[]) AS u(topic, partition) USING (topic, partition) "
					 "WHERE o.consumer_group = $1",
					 3, NULL, params, NULL, NULL, 0);
	ok = db_ok(r, "reading the stored offsets");
	if (ok)
		for (int i = 0; i < PQntuples(r); i++)
		{
			part_t *p = part_find(PQgetvalue(r, i, 0), (int32_t) atoi(PQgetvalue(r, i, 1)));

			if (p != NULL)
				p->stored = strtoll(PQgetvalue(r, i, 2), NULL, 10);
		}
	PQclear(r);
	free(ta);
	free(pa.data);
	free(topics);
	return ok;
}

/* where a partition is read from: its stored offset, else auto.offset.reset */
static int64_t
start_offset(const part_t *p)
{
	if (p->stored >= 0)
		return p->stored;
	return strcmp(cfg.auto_offset_reset, "latest") == 0 ? RD_KAFKA_OFFSET_END : RD_KAFKA_OFFSET_BEGINNING;
}

/* read the stored offsets of these partitions again and continue from there */
static void
reseek(part_t **ps, int n)
{
	rd_kafka_topic_partition_list_t *l;
	rd_kafka_error_t *e;

	while (!stopping && !(PQstatus(db) == CONNECTION_OK && load_offsets(ps, n)))
		if (!db_connect())
			return;
	l = rd_kafka_topic_partition_list_new(n);
	for (int i = 0; i < n; i++)
		rd_kafka_topic_partition_list_add(l, ps[i]->topic, ps[i]->partition)->offset = start_offset(ps[i]);
	e = rd_kafka_seek_partitions(rk, l, 10000);
	if (e != NULL)
	{
		logmsg(L_WARNING, "seek failed: %s", rd_kafka_error_string(e));
		rd_kafka_error_destroy(e);
	}
	for (int i = 0; i < l->cnt; i++)
		if (l->elems[i].err)
			logmsg(L_WARNING, "seek of %s [%d] failed: %s", l->elems[i].topic, (int) l->elems[i].partition,
				   rd_kafka_err2str(l->elems[i].err));
	rd_kafka_topic_partition_list_destroy(l);
}

enum flush_result { FLUSH_OK, FLUSH_FENCED, FLUSH_FAILED };

/* one transaction: the messages of one topic in the batch, and their offsets */
static enum flush_result
flush_once(const char *only)
{
	buf_t copy = {0}, pp = {0}, ep = {0}, np = {0}, hp = {0};
	char **topics = xmalloc(sizeof(char *) * (nparts ? nparts : 1));
	int nt = 0;
	const char *params[6];
	PGresult *r;
	enum flush_result result = FLUSH_FAILED;
	long long ins = 0, dup = 0, quar = 0, dead = 0;
	char *ta = NULL;

	/* offsets: every partition of the batch moves from stored to next */
	buf_str(&pp, "{");
	buf_str(&ep, "{");
	buf_str(&np, "{");
	buf_str(&hp, "{");
	for (int i = 0; i < nparts; i++)
	{
		part_t *p = parts[i];
		int64_t lo = -1, hi = -1;

		if (!p->in_batch || strcmp(p->topic, only) != 0)
			continue;
		rd_kafka_get_watermark_offsets(rk, p->topic, p->partition, &lo, &hi);
		topics[nt] = p->topic;
		buf_printf(&pp, "%s%d", nt ? "," : "", (int) p->partition);
		if (p->stored >= 0)
			buf_printf(&ep, "%s%" PRId64, nt ? "," : "", p->stored);
		else
			buf_printf(&ep, "%sNULL", nt ? "," : "");
		buf_printf(&np, "%s%" PRId64, nt ? "," : "", p->next);
		if (hi >= 0)
			buf_printf(&hp, "%s%" PRId64, nt ? "," : "", hi);
		else
			buf_printf(&hp, "%sNULL", nt ? "," : "");
		nt++;
	}
	buf_str(&pp, "}");
	buf_str(&ep, "}");
	buf_str(&np, "}");
	buf_str(&hp, "}");
	ta = text_array(topics, nt);

	r = PQexec(db, "BEGIN");
	if (!db_ok(r, "BEGIN"))
		goto done;
	PQclear(r);

	params[0] = cfg.group;
	params[1] = ta;
	params[2] = pp.data;
	params[3] = ep.data;
	params[4] = np.data;
	params[5] = hp.data;
	r = PQexecParams(db, "SELECT experiment.kafka_advance_offsets($1, $2::text[], $3::integer[], "
					 "$4::bigint[], $5::bigint[], $6::bigint[])", 6, NULL, params, NULL, NULL, 0);
	if (!db_ok(r, "storing the offsets"))
	{
		if (strcmp(sqlstate(r), "40001") == 0)
			result = FLUSH_FENCED;
		goto done;
	}
	PQclear(r);

	/* the messages, with COPY */
	r = PQexec(db, "COPY pg_temp.experiment_kafka_sink_batch (seq, topic, partition, \"offset\", payload) FROM STDIN");
	if (!db_ok(r, "COPY"))
		goto done;
	PQclear(r);
	r = NULL;
	for (int i = 0; i < batch.n; i++)
	{
		msg_t *m = &batch.msgs[i];

		if (strcmp(m->part->topic, only) != 0)
			continue;
		buf_printf(&copy, "%d\t", i);
		copy_payload(&copy, m->part->topic, strlen(m->part->topic));
		buf_printf(&copy, "\t%d\t%" PRId64 "\t", (int) m->part->partition, m->offset);
		copy_payload(&copy, m->payload, m->len);
		buf_str(&copy, "\n");
		if (copy.len > 1 << 20)
		{
			if (PQputCopyData(db, copy.data, (int) copy.len) != 1)
			{
				logmsg(L_WARNING, "COPY failed: %s", one_line(PQerrorMessage(db)));
				goto done;
			}
			copy.len = 0;
		}
	}
	if (copy.len > 0 && PQputCopyData(db, copy.data, (int) copy.len) != 1)
	{
		logmsg(L_WARNING, "COPY failed: %s", one_line(PQerrorMessage(db)));
		goto done;
	}
	if (PQputCopyEnd(db, NULL) != 1)
	{
		logmsg(L_WARNING, "COPY failed: %s", one_line(PQerrorMessage(db)));
		goto done;
	}
	r = PQgetResult(db);
	if (!db_ok(r, "COPY"))
		goto done;
	PQclear(r);
	r = NULL;
	while ((r = PQgetResult(db)) != NULL)
		PQclear(r);

	/* the batch table holds this topic's messages only: exposures, or metric events of its table */
	{
		topic_map  *t = topic_find(only);
		const char *agg = "(SELECT array_agg(topic ORDER BY seq) AS t, array_agg(partition ORDER BY seq) AS p, "
			"array_agg(\"offset\" ORDER BY seq) AS o, array_agg(payload ORDER BY seq) AS m "
			"FROM pg_temp.experiment_kafka_sink_batch) AS b";
		char	   *ca = text_array(t->columns, t->ncolumns),
				   *fa = text_array(t->fields, t->ncolumns);
		buf_t		sql = {0};
		long long  *bad = t->exposures ? &quar : &dead;

		params[0] = t->table;
		params[1] = ca;
		params[2] = fa;
		if (t->exposures)
			buf_printf(&sql, "SELECT i.inserted, i.duplicates, i.quarantined FROM %s, "
					   "experiment.ingest_exposure_messages(b.t, b.p, b.o, b.m) AS i WHERE b.t IS NOT NULL", agg);
		else
			buf_printf(&sql, "SELECT i.inserted, i.duplicates, i.dead_lettered FROM %s, "
					   "experiment.ingest_event_messages($1::regclass, $2::text[], $3::text[], b.t, b.p, b.o, b.m) AS i "
					   "WHERE b.t IS NOT NULL", agg);
		r = PQexecParams(db, sql.data, t->exposures ? 0 : 3, NULL, params, NULL, NULL, 0);
		free(sql.data);
		free(ca);
		free(fa);
		if (!db_ok(r, t->exposures ? "storing exposures" : "storing metric events"))
			goto done;
		if (PQntuples(r) == 1)
		{
			ins += atoll(PQgetvalue(r, 0, 0));
			dup += atoll(PQgetvalue(r, 0, 1));
			*bad += atoll(PQgetvalue(r, 0, 2));
		}
		PQclear(r);
	}

	r = PQexec(db, "COMMIT");
	if (!db_ok(r, "COMMIT"))
	{
		if (strcmp(sqlstate(r), "40001") == 0)
			result = FLUSH_FENCED;
		goto done;
	}
	result = FLUSH_OK;
	{
		int			n = 0;

		for (int i = 0; i < batch.n; i++)
			n += strcmp(batch.msgs[i].part->topic, only) == 0;
		logmsg(L_DEBUG, "batch of %d messages of %s from %d partitions: %lld stored, %lld duplicates, "
			   "%lld quarantined, %lld dead-lettered", n, only, nt, ins, dup, quar, dead);
		total.messages += n;
	}
	total.inserted += ins;
	total.duplicates += dup;
	total.quarantined += quar;
	total.dead_lettered += dead;
	total.batches++;

done:
	if (r != NULL)
		PQclear(r);
	if (result != FLUSH_OK && PQstatus(db) == CONNECTION_OK)
	{
		while ((r = PQgetResult(db)) != NULL)
			PQclear(r);
		PQclear(PQexec(db, "ROLLBACK"));
	}
	free(copy.data);
	free(pp.data);
	free(ep.data);
	free(np.data);
	free(hp.data);
	free(ta);
	free(topics);
	return result;
}

static void seek_one(part_t *p, int64_t offset);
static void pause_one(part_t *p, bool pause);

/* the messages of one topic leave the batch */
static void
batch_drop_topic(const char *topic)
{
	for (int i = 0; i < nparts; i++)
		if (parts[i]->in_batch && strcmp(parts[i]->topic, topic) == 0)
			batch_drop_part(parts[i]);
}

/*
 * Store the messages of one topic in the batch. Fenced (another consumer
 * stored these offsets first): they are dropped and the topic's partitions
 * continue from the stored offsets. A broken connection: reconnect and retry.
 * Any other failure (a trigger refuses a row, a privilege was revoked, the
 * table is gone): the topic's partitions are paused and read again from the
 * stored offsets after a backoff (1 s doubling to 60 s), so that one topic
 * cannot hold up the others and nothing is skipped.
 */
static void
flush_topic(const char *topic)
{
	for (;;)
	{
		enum flush_result res = PQstatus(db) == CONNECTION_OK ? flush_once(topic) : FLUSH_FAILED;
		part_t	  **ps;
		int			n = 0;
		buf_t		where = {0};

		if (res == FLUSH_OK)
		{
			rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(nparts);

			for (int i = 0; i < nparts; i++)
				if (parts[i]->in_batch && strcmp(parts[i]->topic, topic) == 0)
				{
					parts[i]->stored = parts[i]->next;
					parts[i]->backoff = 0;
					rd_kafka_topic_partition_list_add(l, parts[i]->topic, parts[i]->partition)->offset = parts[i]->next;
				}
			/* advisory, for lag monitoring: the database holds the offsets that count */
			if (l->cnt > 0)
				rd_kafka_commit(rk, l, 1);
			rd_kafka_topic_partition_list_destroy(l);
			batch_drop_topic(topic);
			return;
		}
		if (res == FLUSH_FAILED && PQstatus(db) != CONNECTION_OK)
		{
			total.failed++;
			if (!db_connect())
				return;			/* stopping: not stored, read again at the next start */
			continue;
		}
		ps = xmalloc(sizeof(part_t *) * (nparts ? nparts : 1));
		for (int i = 0; i < nparts; i++)
			if (parts[i]->in_batch && strcmp(parts[i]->topic, topic) == 0)
			{
				ps[n++] = parts[i];
				buf_printf(&where, "%s[%d] offsets %" PRId64 "-%" PRId64, n > 1 ? ", " : "",
						   (int) parts[i]->partition, parts[i]->first, parts[i]->next - 1);
			}
		batch_drop_topic(topic);
		if (res == FLUSH_FENCED)
		{
			total.fenced++;
			logmsg(L_INFO, "another consumer stored some offsets of %s first (%s): these messages are dropped "
				   "and its partitions continue from the stored offsets", topic, where.data ? where.data : "");
			reseek(ps, n);
		}
		else
		{
			total.failed++;
			for (int i = 0; i < n; i++)
			{
				ps[i]->backoff = ps[i]->backoff > 0 ? (ps[i]->backoff * 2 > 60 ? 60 : ps[i]->backoff * 2) : 1;
				ps[i]->retry_at = now_s() + ps[i]->backoff;
				ps[i]->paused = true;
				/* the stored offset, or (none stored yet) the failed batch's first one: never skipped */
				ps[i]->resume_from = ps[i]->stored >= 0 ? ps[i]->stored : ps[i]->first;
				pause_one(ps[i], true);
			}
			logmsg(L_ERROR, "storing the messages of %s failed (%s): its partitions are paused and read again "
				   "from the stored offsets in %.0f s; the other topics go on", topic,
				   where.data ? where.data : "", n > 0 ? ps[0]->backoff : 1.0);
		}
		free(where.data);
		free(ps);
		return;
	}
}

/* store the batch: one transaction per topic */
static void
flush(void)
{
	for (int t = 0; t < cfg.ntopics && batch.n > 0; t++)
	{
		bool		any = false;

		for (int i = 0; i < nparts && !any; i++)
			any = parts[i]->in_batch && strcmp(parts[i]->topic, cfg.topics[t].topic) == 0;
		if (any)
			flush_topic(cfg.topics[t].topic);
		if (stopping && PQstatus(db) != CONNECTION_OK)
			break;
	}
}

/* paused partitions whose backoff is over: read again from the stored offsets */
static void
resume_due(void)
{
	double		now = now_s();

	for (int i = 0; i < nparts; i++)
	{
		part_t	   *p = parts[i];

		if (!p->paused || p->retry_at < 0 || now < p->retry_at)
			continue;
		seek_one(p, p->resume_from);
		pause_one(p, false);
		p->paused = false;
		logmsg(L_INFO, "%s [%d]: resumed from offset %" PRId64, p->topic, (int) p->partition, p->resume_from);
	}
}

static void
batch_add(rd_kafka_message_t *m)
{
	const char *topic = rd_kafka_topic_name(m->rkt);
	part_t *p = part_find(topic, m->partition);
	msg_t *x;

	if (p == NULL)
	{
		logmsg(L_DEBUG, "message of %s [%d] at %" PRId64 " after its partition was revoked: skipped",
			   topic, (int) m->partition, m->offset);
		return;
	}
	if (p->paused)
		return;					/* fetched before the pause: read again on resumption */
	if (p->in_batch && m->offset < p->next)
		return;					/* an older fetch, delivered again after a seek */
	if (p->stored >= 0 && m->offset < p->stored)
		return;
	if (batch.n == batch.cap)
	{
		batch.cap = batch.cap ? batch.cap * 2 : 1024;
		batch.msgs = xrealloc(batch.msgs, sizeof(msg_t) * batch.cap);
	}
	if (batch.n == 0)
		batch.started = now_s();
	x = &batch.msgs[batch.n++];
	x->part = p;
	x->offset = m->offset;
	x->len = m->len;
	x->payload = xmalloc(m->len + 1);
	if (m->len > 0)
		memcpy(x->payload, m->payload, m->len);
	if (!p->in_batch)
	{
		p->in_batch = true;
		p->first = m->offset;
	}
	p->next = m->offset + 1;
}

/* ---- Kafka ----------------------------------------------------------- */

static void
seek_one(part_t *p, int64_t offset)
{
	rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
	rd_kafka_error_t *e;

	rd_kafka_topic_partition_list_add(l, p->topic, p->partition)->offset = offset;
	e = rd_kafka_seek_partitions(rk, l, 10000);
	if (e != NULL)
	{
		logmsg(L_WARNING, "seek of %s [%d] failed: %s", p->topic, (int) p->partition, rd_kafka_error_string(e));
		rd_kafka_error_destroy(e);
	}
	rd_kafka_topic_partition_list_destroy(l);
}

/*
 * Fetch a partition again from offset: after an offset-out-of-range error its
 * fetcher has stopped, and a seek alone does not start it again; the
 * partition is assigned anew at that offset.
 */
static void
restart_at(part_t *p, int64_t offset)
{
	rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
	rd_kafka_error_t *e;
	bool		cooperative = strcmp(rd_kafka_rebalance_protocol(rk), "COOPERATIVE") == 0;

	rd_kafka_topic_partition_list_add(l, p->topic, p->partition)->offset = offset;
	if (cooperative)
	{
		if ((e = rd_kafka_incremental_unassign(rk, l)) == NULL)
			e = rd_kafka_incremental_assign(rk, l);
		if (e != NULL)
		{
			logmsg(L_WARNING, "restarting %s [%d] failed: %s", p->topic, (int) p->partition, rd_kafka_error_string(e));
			rd_kafka_error_destroy(e);
		}
	}
	else
		seek_one(p, offset);
	rd_kafka_topic_partition_list_destroy(l);
}

static void
pause_one(part_t *p, bool pause)
{
	rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);

	rd_kafka_topic_partition_list_add(l, p->topic, p->partition);
	if (pause)
		rd_kafka_pause_partitions(rk, l);
	else
		rd_kafka_resume_partitions(rk, l);
	rd_kafka_topic_partition_list_destroy(l);
}

/*
 * The offset to read from is not in the partition's log (librdkafka's
 * auto.offset.reset is "error", so nothing is skipped behind our back):
 * before the log's start, the messages in between were deleted (retention)
 * before the sink stored them: say so and go on from the start; after the
 * end (a stored offset set by hand too far): pause the partition, which
 * needs a person.
 */
static void
offset_out_of_range(const char *topic, int32_t partition)
{
	part_t	   *p = part_find(topic, partition);
	int64_t		lo = -1,
				hi = -1;
	rd_kafka_resp_err_t err;

	if (p == NULL)
		return;
	err = rd_kafka_query_watermark_offsets(rk, topic, partition, &lo, &hi, 10000);
	if (err)
	{
		logmsg(L_WARNING, "%s [%d]: offset out of range, and its watermarks could not be read (%s): retrying",
			   topic, (int) partition, rd_kafka_err2str(err));
		restart_at(p, start_offset(p));	/* the fetcher has stopped: a seek alone would not start it */
		return;
	}
	if (p->stored >= 0 && p->stored > hi)
	{
		logmsg(L_ERROR, "%s [%d]: the stored next offset %" PRId64 " is beyond the end of the partition (%" PRId64
			   "): the partition is paused; correct experiment.kafka_offsets (group %s) and restart the sink",
			   topic, (int) partition, p->stored, hi, cfg.group);
		pause_one(p, true);
		p->paused = true;
		p->retry_at = -1;		/* never retried by itself */
		return;
	}
	if (p->stored >= 0 && p->stored < lo)
		logmsg(L_ERROR, "%s [%d]: %" PRId64 " messages (offsets %" PRId64 " to %" PRId64 ") were deleted by the "
			   "topic's retention before the sink stored them; continuing from offset %" PRId64,
			   topic, (int) partition, lo - p->stored, p->stored, lo - 1, lo);
	else
		logmsg(L_WARNING, "%s [%d]: offset out of range (log %" PRId64 " to %" PRId64 "); continuing from %" PRId64,
			   topic, (int) partition, lo, hi, lo);
	restart_at(p, lo);
}

static void
rebalance_cb(rd_kafka_t *k, rd_kafka_resp_err_t err, rd_kafka_topic_partition_list_t *l, void *opaque)
{
	bool cooperative = strcmp(rd_kafka_rebalance_protocol(k), "COOPERATIVE") == 0;
	rd_kafka_error_t *e = NULL;

	if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS)
	{
		part_t **ps = xmalloc(sizeof(part_t *) * (l->cnt ? l->cnt : 1));

		for (int i = 0; i < l->cnt; i++)
			ps[i] = part_add(l->elems[i].topic, l->elems[i].partition);
		while (!stopping && !(PQstatus(db) == CONNECTION_OK && load_offsets(ps, l->cnt)))
			if (!db_connect())
				break;
		for (int i = 0; i < l->cnt; i++)
		{
			l->elems[i].offset = start_offset(ps[i]);
			logmsg(L_INFO, "assigned %s [%d], from offset %s%" PRId64, ps[i]->topic, (int) ps[i]->partition,
				   ps[i]->stored >= 0 ? "" : "(none stored) ", ps[i]->stored >= 0 ? ps[i]->stored : 0);
		}
		free(ps);
		if (cooperative)
			e = rd_kafka_incremental_assign(k, l);
		else
			rd_kafka_assign(k, l);
	}
	else if (err == RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS)
	{
		/* store what was read from them, then let them go */
		if (!rd_kafka_assignment_lost(k))
			flush();
		for (int i = 0; i < l->cnt; i++)
		{
			part_t *p = part_find(l->elems[i].topic, l->elems[i].partition);

			logmsg(L_INFO, "revoked %s [%d]%s", l->elems[i].topic, (int) l->elems[i].partition,
				   rd_kafka_assignment_lost(k) ? " (lost)" : "");
			if (p != NULL)
			{
				batch_drop_part(p);
				part_remove(p);
			}
		}
		if (cooperative)
			e = rd_kafka_incremental_unassign(k, l);
		else
			rd_kafka_assign(k, NULL);
	}
	else
	{
		logmsg(L_WARNING, "rebalance failed: %s", rd_kafka_err2str(err));
		batch_clear();
		rd_kafka_assign(k, NULL);
	}
	if (e != NULL)
	{
		logmsg(L_WARNING, "changing the assignment failed: %s", rd_kafka_error_string(e));
		rd_kafka_error_destroy(e);
	}
}

static void
kafka_log_cb(const rd_kafka_t *k, int level, const char *fac, const char *buf)
{
	logmsg(level <= 3 ? L_ERROR : level <= 5 ? L_WARNING : level == 6 ? L_INFO : L_DEBUG,
		   "kafka %s: %s", fac, buf);
}

static rd_kafka_t *
kafka_new(bool consumer)
{
	char err[512];
	rd_kafka_conf_t *c = rd_kafka_conf_new();
	rd_kafka_t *k;
	struct
	{
		const char *name, *value;
	} fixed[] = {
		{"bootstrap.servers", cfg.bootstrap},
		{"group.id", cfg.group},
		{"enable.auto.commit", "false"},
		{"enable.auto.offset.store", "false"},
		{"partition.assignment.strategy", "cooperative-sticky"},
		/* a stored offset out of range is the sink's to handle (offset_out_of_range): never a silent skip */
		{"auto.offset.reset", "error"},
		{"client.id", "experiment-kafka-sink"},
	};

	for (int i = 0; i < cfg.nkafka; i++)
		if (rd_kafka_conf_set(c, cfg.kafka[i].name, cfg.kafka[i].value, err, sizeof err) != RD_KAFKA_CONF_OK)
		{
			logmsg(L_ERROR, "%s: kafka.%s: %s", cfg.kafka[i].where, cfg.kafka[i].name, err);
			exit(EXIT_USAGE);
		}
	for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++)
	{
		if (strcmp(fixed[i].name, "client.id") == 0)
		{
			bool set = false;

			for (int j = 0; j < cfg.nkafka; j++)
				set |= strcmp(cfg.kafka[j].name, "client.id") == 0;
			if (set)
				continue;
		}
		if (rd_kafka_conf_set(c, fixed[i].name, fixed[i].value, err, sizeof err) != RD_KAFKA_CONF_OK)
		{
			logmsg(L_ERROR, "%s: %s", fixed[i].name, err);
			exit(EXIT_USAGE);
		}
	}
	rd_kafka_conf_set_log_cb(c, kafka_log_cb);
	if (consumer)
		rd_kafka_conf_set_rebalance_cb(c, rebalance_cb);
	k = rd_kafka_new(RD_KAFKA_CONSUMER, c, err, sizeof err);
	if (k == NULL)
	{
		logmsg(L_ERROR, "could not create the Kafka consumer: %s", err);
		exit(EXIT_USAGE);
	}
	return k;
}

/* ---- checks ------------------------------------------------------------ */

static bool
check_database(bool retry)
{
	PGresult *r;
	bool ok = true;
	const char *params[3];

	/* a database that cannot be reached yet (it starts after the sink) is waited for */
	if (retry ? !db_connect() : !db_connect_once())
		return false;
	r = PQexec(db, "SELECT e.extversion, "
			   "to_regprocedure('experiment.ingest_exposure_messages(text[],integer[],bigint[],text[])') IS NOT NULL, "
			   "has_schema_privilege('experiment', 'USAGE') "
			   "FROM pg_extension e WHERE e.extname = 'experiment'");
	if (!db_ok(r, "checking the extension"))
		ok = false;
	else if (PQntuples(r) == 0)
	{
		logmsg(L_ERROR, "the experiment extension is not installed in this database (CREATE EXTENSION experiment)");
		ok = false;
	}
	else if (strcmp(PQgetvalue(r, 0, 1), "t") != 0)
	{
		logmsg(L_ERROR, "the experiment extension is at version %s: the sink needs 0.4.0 or later "
			   "(ALTER EXTENSION experiment UPDATE)", PQgetvalue(r, 0, 0));
		ok = false;
	}
	else if (strcmp(PQgetvalue(r, 0, 2), "t") != 0)
	{
		logmsg(L_ERROR, "this role may not use schema experiment: grant it experiment_ingest (doc/security.md)");
		ok = false;
	}
	PQclear(r);
	if (ok)
	{
		r = PQexec(db, "SELECT has_table_privilege('experiment.kafka_offsets', 'SELECT, INSERT, UPDATE')");
		if (!db_ok(r, "checking privileges"))
			ok = false;
		else if (strcmp(PQgetvalue(r, 0, 0), "t") != 0)
		{
			logmsg(L_ERROR, "this role may not read and write experiment.kafka_offsets: grant it experiment_ingest, "
				   "and after updating the extension to 0.4.0 run SELECT * FROM experiment.setup_roles() again "
				   "(doc/security.md)");
			ok = false;
		}
		PQclear(r);
	}
	for (int i = 0; ok && i < cfg.ntopics; i++)
	{
		topic_map *t = &cfg.topics[i];
		char *ca, *fa;

		if (t->exposures)
		{
			r = PQexec(db, "SELECT has_table_privilege('experiment.exposures', 'INSERT') "
					   "AND has_table_privilege('experiment.exposures_quarantine', 'INSERT')");
			if (!db_ok(r, "checking privileges"))
				ok = false;
			else if (strcmp(PQgetvalue(r, 0, 0), "t") != 0)
			{
				logmsg(L_ERROR, "topic %s: this role may not insert into experiment.exposures and "
					   "experiment.exposures_quarantine: grant it experiment_ingest", t->topic);
				ok = false;
			}
			PQclear(r);
			continue;
		}
		/* an empty batch checks the table, its columns and the privilege */
		ca = text_array(t->columns, t->ncolumns);
		fa = text_array(t->fields, t->ncolumns);
		params[0] = t->table;
		params[1] = ca;
		params[2] = fa;
		r = PQexecParams(db, "SELECT * FROM experiment.ingest_event_messages($1::regclass, $2::text[], $3::text[], "
						 "'{}', '{}', '{}', '{}')", 3, NULL, params, NULL, NULL, 0);
		if (PQresultStatus(r) != PGRES_TUPLES_OK)
		{
			logmsg(L_ERROR, "topic %s: table %s: %s", t->topic, t->table, PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY));
			ok = false;
		}
		else
			logmsg(L_INFO, "topic %s: metric events into %s (%d columns)", t->topic, t->table, t->ncolumns);
		PQclear(r);
		if (ok)
		{
			/* a NOT NULL column without a default that no field fills: every message would be dead-lettered */
			r = PQexecParams(db, "SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum) "
							 "FROM pg_attribute a WHERE a.attrelid = $1::regclass AND a.attnum > 0 "
							 "AND NOT a.attisdropped AND a.attnotnull AND NOT a.atthasdef AND a.attgenerated = '' "
							 "AND a.attidentity = '' AND NOT (a.attname = ANY ($2::text[]))",
							 2, NULL, params, NULL, NULL, 0);
			if (PQresultStatus(r) == PGRES_TUPLES_OK && !PQgetisnull(r, 0, 0))
				logmsg(L_WARNING, "topic %s: table %s has NOT NULL columns without a default that no field fills "
					   "(%s): every message will be dead-lettered", t->topic, t->table, PQgetvalue(r, 0, 0));
			PQclear(r);
		}
		free(ca);
		free(fa);
	}
	return ok;
}

static bool
check_topics(rd_kafka_t *k, bool retry)
{
	const struct rd_kafka_metadata *md = NULL;
	rd_kafka_resp_err_t err;
	bool ok = true;
	double wait = 1;

	/* brokers that cannot be reached yet (a rolling restart) are waited for */
	while ((err = rd_kafka_metadata(k, 1, NULL, &md, 10000)) != 0)
	{
		if (!retry || stopping)
		{
			logmsg(L_ERROR, "could not read the Kafka metadata from %s: %s", cfg.bootstrap, rd_kafka_err2str(err));
			return false;
		}
		logmsg(L_WARNING, "could not read the Kafka metadata from %s: %s; retrying in %.0f s", cfg.bootstrap,
			   rd_kafka_err2str(err), wait);
		usleep((useconds_t) (wait * 1e6));
		wait = wait * 2 > 30 ? 30 : wait * 2;
	}
	for (int i = 0; i < cfg.ntopics; i++)
	{
		int j;

		for (j = 0; j < md->topic_cnt; j++)
			if (strcmp(md->topics[j].topic, cfg.topics[i].topic) == 0)
				break;
		if (j == md->topic_cnt || md->topics[j].err)
		{
			logmsg(L_ERROR, "topic %s does not exist in the Kafka cluster", cfg.topics[i].topic);
			ok = false;
		}
		else
			logmsg(L_INFO, "topic %s: %d partitions (%s)", cfg.topics[i].topic, md->topics[j].partition_cnt,
				   cfg.topics[i].exposures ? "exposures" : cfg.topics[i].table);
	}
	rd_kafka_metadata_destroy(md);
	return ok;
}

/* ---- main ------------------------------------------------------------ */

static void
on_signal(int sig)
{
	stopping = 1;
}

static void
summary(double elapsed)
{
	long long lag = 0;
	int known = 0;

	for (int i = 0; i < nparts; i++)
	{
		int64_t lo = -1, hi = -1;

		if (rd_kafka_get_watermark_offsets(rk, parts[i]->topic, parts[i]->partition, &lo, &hi) == 0 && hi >= 0)
		{
			lag += hi - (parts[i]->stored >= 0 ? parts[i]->stored : lo >= 0 ? lo : 0);
			known++;
		}
	}
	logmsg(L_INFO, "summary: %lld messages in %.0f s (%.0f/s): %lld stored, %lld duplicates, %lld quarantined, "
		   "%lld dead-lettered; %d partitions, lag %lld; %lld batches, %lld fenced, %lld retried",
		   total.messages - last_summary.messages, elapsed,
		   elapsed > 0 ? (total.messages - last_summary.messages) / elapsed : 0.0,
		   total.inserted - last_summary.inserted, total.duplicates - last_summary.duplicates,
		   total.quarantined - last_summary.quarantined, total.dead_lettered - last_summary.dead_lettered,
		   known, lag, total.batches - last_summary.batches, total.fenced - last_summary.fenced,
		   total.failed - last_summary.failed);
	last_summary = total;
}

static void
usage(FILE *f)
{
	fprintf(f,
			"experiment-kafka-sink " SINK_VERSION ": stores exposures and metric events from Kafka in PostgreSQL\n"
			"with the experiment extension, each batch and its offsets in one transaction (doc/kafka.md).\n"
			"\n"
			"Usage: experiment-kafka-sink [--config FILE] [--check] [--verbose]\n"
			"\n"
			"  -c, --config FILE   settings file (default: $EXPERIMENT_SINK_CONFIG)\n"
			"      --check         check the settings, the database and the topics, then exit\n"
			"  -v, --verbose       log each batch (log.level = debug)\n"
			"  -h, --help          this help\n"
			"  -V, --version       the version\n"
			"\n"
			"Settings (\"key = value\" lines; EXPERIMENT_SINK_KEY in the environment overrides, e.g.\n"
			"EXPERIMENT_SINK_DATABASE, and EXPERIMENT_SINK_KAFKA_SASL_PASSWORD sets kafka.sasl.password):\n"
			"  database             libpq connection string (default: libpq's PG* environment)\n"
			"  bootstrap.servers    Kafka brokers, host:port,...\n"
			"  group.id             consumer group (default experiment-kafka-sink)\n"
			"  exposures.topics     topics of exposures (JSON objects as for experiment.ingest_exposures)\n"
			"  events.TOPIC.table   table for the metric events of TOPIC\n"
			"  events.TOPIC.columns column[=json.field], ... (the field defaults to the column's name)\n"
			"  batch.size           messages per transaction (default 5000)\n"
			"  batch.linger.ms      longest wait before a partial batch is stored (default 500)\n"
			"  summary.interval.s   seconds between summary lines, 0 for none (default 60)\n"
			"  auto.offset.reset    where a partition with no stored offset starts: earliest (default) or latest\n"
			"  log.level            error, warning, info (default) or debug\n"
			"  kafka.PROPERTY       any librdkafka property, e.g. kafka.security.protocol, kafka.sasl.mechanism\n"
			"\n"
			"Exit codes: 0 stopped by SIGTERM or SIGINT, or --check passed; 1 a fatal Kafka error;\n"
			"2 a usage or settings error; 3 the database or the topics are not as configured.\n");
}

int
main(int argc, char **argv)
{
	static const struct option opts[] = {
		{"config", required_argument, NULL, 'c'},
		{"check", no_argument, NULL, 'k'},
		{"verbose", no_argument, NULL, 'v'},
		{"help", no_argument, NULL, 'h'},
		{"version", no_argument, NULL, 'V'},
		{NULL, 0, NULL, 0},
	};
	const char *config = getenv("EXPERIMENT_SINK_CONFIG");
	bool check_only = false, verbose = false;
	int c;
	char **subs;
	rd_kafka_topic_partition_list_t *sub;
	rd_kafka_resp_err_t err;
	double last = now_s(), started = last;
	struct sigaction sa;

	while ((c = getopt_long(argc, argv, "c:vhV", opts, NULL)) != -1)
		switch (c)
		{
			case 'c': config = optarg; break;
			case 'k': check_only = true; break;
			case 'v': verbose = true; break;
			case 'h': usage(stdout); return EXIT_STOPPED;
			case 'V': printf("experiment-kafka-sink %s (librdkafka %s)\n", SINK_VERSION, rd_kafka_version_str());
				return EXIT_STOPPED;
			default: usage(stderr); return EXIT_USAGE;
		}
	if (optind < argc)
	{
		fprintf(stderr, "experiment-kafka-sink: unexpected argument \"%s\"\n", argv[optind]);
		usage(stderr);
		return EXIT_USAGE;
	}

	cfg.group = xstrdup("experiment-kafka-sink");
	cfg.auto_offset_reset = xstrdup("earliest");
	cfg.batch_size = 5000;
	cfg.linger_ms = 500;
	cfg.summary_s = 60;
	if (config != NULL)
		read_config_file(config);
	read_environment();
	if (verbose)
		log_level = L_DEBUG;
	check_config();

	memset(&sa, 0, sizeof sa);
	sa.sa_handler = on_signal;
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);

	/* --check reports what it finds; a start waits for a database or brokers that are not up yet */
	if (!check_database(!check_only))
	{
		if (stopping)
			return EXIT_STOPPED;
		logmsg(L_ERROR, "the database is not ready for the sink");
		return EXIT_CHECK;
	}
	rk = kafka_new(true);
	if (!check_topics(rk, !check_only))
	{
		rd_kafka_destroy(rk);
		if (stopping)
			return EXIT_STOPPED;
		return EXIT_CHECK;
	}
	if (check_only)
	{
		logmsg(L_INFO, "check passed: database and %d topics as configured", cfg.ntopics);
		rd_kafka_destroy(rk);
		PQfinish(db);
		return EXIT_STOPPED;
	}

	rd_kafka_poll_set_consumer(rk);
	subs = xmalloc(sizeof(char *) * cfg.ntopics);
	sub = rd_kafka_topic_partition_list_new(cfg.ntopics);
	for (int i = 0; i < cfg.ntopics; i++)
	{
		subs[i] = cfg.topics[i].topic;
		rd_kafka_topic_partition_list_add(sub, subs[i], RD_KAFKA_PARTITION_UA);
	}
	err = rd_kafka_subscribe(rk, sub);
	rd_kafka_topic_partition_list_destroy(sub);
	free(subs);
	if (err)
	{
		logmsg(L_ERROR, "could not subscribe: %s", rd_kafka_err2str(err));
		return EXIT_FATAL;
	}
	logmsg(L_INFO, "consuming %d topics as group %s (batch.size %ld, batch.linger.ms %ld)",
		   cfg.ntopics, cfg.group, cfg.batch_size, cfg.linger_ms);

	while (!stopping)
	{
		int timeout = 100;
		rd_kafka_message_t *m;

		if (batch.n > 0)
		{
			double left = batch.started + cfg.linger_ms / 1000.0 - now_s();

			timeout = left <= 0 ? 0 : left < 0.1 ? (int) (left * 1000) : 100;
		}
		m = rd_kafka_consumer_poll(rk, timeout);
		if (m != NULL)
		{
			if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF)
				;
			else if (m->err == RD_KAFKA_RESP_ERR__AUTO_OFFSET_RESET && m->rkt != NULL)
				offset_out_of_range(rd_kafka_topic_name(m->rkt), m->partition);
			else if (m->err)
			{
				rd_kafka_resp_err_t fatal;
				char why[512];

				if ((fatal = rd_kafka_fatal_error(rk, why, sizeof why)) != 0)
				{
					logmsg(L_ERROR, "fatal Kafka error: %s", why);
					rd_kafka_message_destroy(m);
					flush();
					rd_kafka_destroy(rk);
					return EXIT_FATAL;
				}
				logmsg(L_WARNING, "consumer: %s", rd_kafka_message_errstr(m));
				if (m->err == RD_KAFKA_RESP_ERR__AUTHENTICATION || m->err == RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED ||
					m->err == RD_KAFKA_RESP_ERR_GROUP_AUTHORIZATION_FAILED)
				{
					logmsg(L_ERROR, "giving up: the brokers refuse this consumer");
					rd_kafka_message_destroy(m);
					rd_kafka_destroy(rk);
					return EXIT_FATAL;
				}
			}
			else
				batch_add(m);
			rd_kafka_message_destroy(m);
		}
		if (batch.n >= cfg.batch_size ||
			(batch.n > 0 && now_s() >= batch.started + cfg.linger_ms / 1000.0))
			flush();
		resume_due();
		if (cfg.summary_s > 0 && now_s() - last >= cfg.summary_s)
		{
			summary(now_s() - last);
			last = now_s();
		}
	}

	logmsg(L_INFO, "stopping: storing the last batch and leaving the group");
	flush();					/* one attempt: what is not stored is read again at the next start */
	rd_kafka_consumer_close(rk);
	summary(now_s() - last);
	logmsg(L_INFO, "stopped after %.0f s: %lld messages in all", now_s() - started, total.messages);
	rd_kafka_destroy(rk);
	PQfinish(db);
	return EXIT_STOPPED;
}
