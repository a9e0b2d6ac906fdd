/* SPDX-License-Identifier: GPL-3.0-or-later */
/*
 * mock_cluster.c - a librdkafka mock Kafka cluster as a standalone process.
 *
 * Runs the in-process mock cluster of librdkafka (rdkafka_mock.h) so that
 * other processes (kcat, kafkajs, a librdkafka consumer) can connect to it
 * over localhost, and lets a test driver control it through stdin.
 *
 * Usage:
 *   mock_cluster BROKERS TOPIC:PARTITIONS [TOPIC:PARTITIONS ...]
 *   e.g. mock_cluster 3 exposures:6 orders:6
 *
 * The topics are created through the mock API (the mock brokers do not
 * implement CreateTopics) with replication factor min(3, BROKERS).  When the
 * cluster is ready, exactly one line is written to stdout:
 *
 *   bootstrap 127.0.0.1:PORT,127.0.0.1:PORT,...
 *
 * Then commands are read from stdin, one per line; each is answered with
 * one line, "ok" or "error <text>":
 *
 *   down B                       broker B refuses connections (no leader change)
 *   up B                         broker B accepts connections again
 *   leader TOPIC PARTITION B     make B the partition leader (-1: leader-less)
 *   follower TOPIC PARTITION B   make B the partition's preferred replica
 *   coordinator group NAME B     make B the coordinator of group NAME
 *                                ("coordinator transaction ID B" also works)
 *   errors APIKEY COUNT ERR      the next COUNT requests with API key APIKEY
 *                                (1 = Fetch, 8 = OffsetCommit, 12 = Heartbeat,
 *                                ...) fail with error ERR, given as a number
 *                                (e.g. 6, -195) or a name (e.g.
 *                                NOT_LEADER_FOR_PARTITION, _TRANSPORT)
 *   rtt B MS                     delay the responses of broker B by MS ms
 *   quit                         exit 0
 *
 * B is a broker id (1..BROKERS); for down, up and rtt, -1 means all brokers.
 * EOF on stdin, SIGTERM and SIGINT also make the program exit 0 after
 * destroying the cluster, so keep stdin open (a pipe) for as long as the
 * cluster is needed.  Diagnostics go to stderr; MOCK_CLUSTER_DEBUG=mock (a
 * librdkafka "debug" list) in the environment logs what the brokers do.
 *
 * Mock behaviour worth knowing (librdkafka 2.0.2): Metadata is served only
 * up to v2, so a Metadata request naming an unknown topic creates it (4
 * partitions), whatever the client's allow-auto-create setting; a consumer
 * group's first join waits 3 s, and a join into a running group waits
 * session.timeout.ms - 1 s for the rebalance (use a short
 * session.timeout.ms in tests).
 *
 * Build: cc -O2 -Wall -Wextra -Werror -o mock_cluster mock_cluster.c -lrdkafka
 *
 * Retention: librdkafka's mock partition log is bounded (in 2.0.2 and later
 * versions: 5 MiB of stored record-batch bytes, or 100000 record batches,
 * per partition); older batches are dropped and the log start offset moves
 * up.  There is no public API to change it, so keep test data per partition
 * below that, e.g. by producing compressed batches.
 */

#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

#define MAX_LINE 4096
#define MAX_ARGS 8

/*
 * The topics created at start (names point into argv).  leader and follower
 * are refused for other topics or partitions, because the mock would
 * silently create a new topic for them.
 */
static int	topic_cnt = 0;
static char **topic_names = NULL;
static int *topic_parts = NULL;

/* Partition count of a topic created at start, or -1. */
static int
topic_partitions(const char *name)
{
	int			i;

	for (i = 0; i < topic_cnt; i++)
		if (strcmp(topic_names[i], name) == 0)
			return topic_parts[i];
	return -1;
}

/* Set by the SIGTERM / SIGINT handler; the main loop polls it. */
static volatile sig_atomic_t stop_requested = 0;

static void
on_signal(int sig)
{
	(void) sig;
	stop_requested = 1;
}

/* Write one answer line to stdout and flush it. */
static void
reply(const char *fmt,...)
{
	va_list		ap;

	va_start(ap, fmt);
	vfprintf(stdout, fmt, ap);
	va_end(ap);
	fputc('\n', stdout);
	fflush(stdout);
}

/* Parse a whole decimal integer in [lo, hi]; 1 on success. */
static int
parse_long(const char *s, long lo, long hi, long *out)
{
	char	   *end;
	long		v;

	if (s == NULL || *s == '\0')
		return 0;
	errno = 0;
	v = strtol(s, &end, 10);
	if (errno != 0 || *end != '\0' || v < lo || v > hi)
		return 0;
	*out = v;
	return 1;
}

/*
 * Parse an error code: a number, or a name as rd_kafka_err2name() gives it
 * (e.g. NOT_LEADER_FOR_PARTITION, _TRANSPORT), optionally with the
 * RD_KAFKA_RESP_ERR_ prefix.  1 on success.
 */
static int
parse_error_code(const char *s, rd_kafka_resp_err_t *out)
{
	const struct rd_kafka_err_desc *descs;
	size_t		n,
				i;
	long		v;

	if (parse_long(s, INT_MIN, INT_MAX, &v))
	{
		*out = (rd_kafka_resp_err_t) v;
		return 1;
	}
	if (strncmp(s, "RD_KAFKA_RESP_ERR_", 18) == 0)
		s += 18;
	rd_kafka_get_err_descs(&descs, &n);
	for (i = 0; i < n; i++)
	{
		if (descs[i].name != NULL && strcmp(descs[i].name, s) == 0)
		{
			*out = descs[i].code;
			return 1;
		}
	}
	return 0;
}

/* Answer ok, or error with librdkafka's name and text for err. */
static void
reply_err(rd_kafka_resp_err_t err)
{
	if (err == RD_KAFKA_RESP_ERR_NO_ERROR)
		reply("ok");
	else
		reply("error %s: %s", rd_kafka_err2name(err), rd_kafka_err2str(err));
}

/*
 * Run one command line against the cluster and answer it.
 * Returns 1 if the program should exit (quit), else 0.
 */
static int
run_command(rd_kafka_mock_cluster_t *mc, char *line)
{
	char	   *argv[MAX_ARGS + 1];
	int			argc = 0;
	char	   *save = NULL;
	char	   *tok;
	long		a, b, c;

	for (tok = strtok_r(line, " \t\r", &save); tok != NULL;
		 tok = strtok_r(NULL, " \t\r", &save))
	{
		if (argc == MAX_ARGS)
		{
			reply("error too many arguments");
			return 0;
		}
		argv[argc++] = tok;
	}
	argv[argc] = NULL;

	if (argc == 0)
	{
		reply("error empty command");
		return 0;
	}

	if (strcmp(argv[0], "quit") == 0 && argc == 1)
	{
		reply("ok");
		return 1;
	}

	if ((strcmp(argv[0], "down") == 0 || strcmp(argv[0], "up") == 0) && argc == 2)
	{
		if (!parse_long(argv[1], -1, INT32_MAX, &a))
			reply("error bad broker id: %s", argv[1]);
		else if (argv[0][0] == 'd')
			reply_err(rd_kafka_mock_broker_set_down(mc, (int32_t) a));
		else
			reply_err(rd_kafka_mock_broker_set_up(mc, (int32_t) a));
		return 0;
	}

	if ((strcmp(argv[0], "leader") == 0 || strcmp(argv[0], "follower") == 0) && argc == 4)
	{
		if (topic_partitions(argv[1]) < 0)
			reply("error unknown topic: %s", argv[1]);
		else if (!parse_long(argv[2], 0, topic_partitions(argv[1]) - 1, &a))
			reply("error bad partition: %s", argv[2]);
		else if (!parse_long(argv[3], -1, INT32_MAX, &b))
			reply("error bad broker id: %s", argv[3]);
		else if (argv[0][0] == 'l')
			reply_err(rd_kafka_mock_partition_set_leader(mc, argv[1], (int32_t) a, (int32_t) b));
		else
			reply_err(rd_kafka_mock_partition_set_follower(mc, argv[1], (int32_t) a, (int32_t) b));
		return 0;
	}

	if (strcmp(argv[0], "coordinator") == 0 && argc == 4)
	{
		if (strcmp(argv[1], "group") != 0 && strcmp(argv[1], "transaction") != 0)
			reply("error key type must be group or transaction: %s", argv[1]);
		else if (!parse_long(argv[3], -1, INT32_MAX, &a))
			reply("error bad broker id: %s", argv[3]);
		else
			reply_err(rd_kafka_mock_coordinator_set(mc, argv[1], argv[2], (int32_t) a));
		return 0;
	}

	if (strcmp(argv[0], "errors") == 0 && argc == 4)
	{
		rd_kafka_resp_err_t code;
		rd_kafka_resp_err_t *codes;
		long		i;

		if (!parse_long(argv[1], 0, INT16_MAX, &a))
			reply("error bad api key: %s", argv[1]);
		else if (!parse_long(argv[2], 1, 1000000, &b))
			reply("error bad count: %s", argv[2]);
		else if (!parse_error_code(argv[3], &code))
			reply("error bad error code: %s", argv[3]);
		else if ((codes = malloc(sizeof(*codes) * (size_t) b)) == NULL)
			reply("error out of memory");
		else
		{
			for (i = 0; i < b; i++)
				codes[i] = code;
			rd_kafka_mock_push_request_errors_array(mc, (int16_t) a, (size_t) b, codes);
			free(codes);
			reply("ok");
		}
		return 0;
	}

	if (strcmp(argv[0], "rtt") == 0 && argc == 3)
	{
		if (!parse_long(argv[1], -1, INT32_MAX, &a))
			reply("error bad broker id: %s", argv[1]);
		else if (!parse_long(argv[2], 0, INT_MAX, &c))
			reply("error bad rtt: %s", argv[2]);
		else
			reply_err(rd_kafka_mock_broker_set_rtt(mc, (int32_t) a, (int) c));
		return 0;
	}

	reply("error unknown command or wrong number of arguments: %s", argv[0]);
	return 0;
}

/*
 * Read commands from stdin until quit, EOF or a signal.  poll() with a
 * timeout keeps the loop responsive to stop_requested.
 */
static void
command_loop(rd_kafka_mock_cluster_t *mc)
{
	char		buf[MAX_LINE];
	size_t		len = 0;

	while (!stop_requested)
	{
		struct pollfd pfd = {.fd = STDIN_FILENO, .events = POLLIN};
		ssize_t		n;
		char	   *nl;
		int			r = poll(&pfd, 1, 200);

		if (r < 0)
		{
			if (errno == EINTR)
				continue;
			perror("mock_cluster: poll");
			return;
		}
		if (r == 0)
			continue;

		n = read(STDIN_FILENO, buf + len, sizeof(buf) - 1 - len);
		if (n < 0)
		{
			if (errno == EINTR || errno == EAGAIN)
				continue;
			perror("mock_cluster: read");
			return;
		}
		if (n == 0)
		{
			/* EOF: run a last unterminated command, then exit. */
			if (len > 0)
			{
				buf[len] = '\0';
				run_command(mc, buf);
			}
			return;
		}
		len += (size_t) n;
		buf[len] = '\0';

		/* Run every complete line in the buffer. */
		while ((nl = memchr(buf, '\n', len)) != NULL)
		{
			size_t		linelen = (size_t) (nl - buf);
			int			quit;

			*nl = '\0';
			quit = run_command(mc, buf);
			memmove(buf, nl + 1, len - linelen - 1);
			len -= linelen + 1;
			buf[len] = '\0';
			if (quit)
				return;
		}

		if (len == sizeof(buf) - 1)
		{
			reply("error line too long");
			len = 0;
		}
	}
}

static void
usage(void)
{
	fprintf(stderr,
			"usage: mock_cluster BROKERS TOPIC:PARTITIONS [TOPIC:PARTITIONS ...]\n"
			"e.g.   mock_cluster 3 exposures:6 orders:6\n");
}

/* Set a configuration property or report why not; 1 on success. */
static int
conf_set(rd_kafka_conf_t *conf, const char *name, const char *value)
{
	char		errstr[512];

	if (rd_kafka_conf_set(conf, name, value, errstr, sizeof(errstr)) != RD_KAFKA_CONF_OK)
	{
		fprintf(stderr, "mock_cluster: %s=%s: %s\n", name, value, errstr);
		return 0;
	}
	return 1;
}

int
main(int argc, char **argv)
{
	char		errstr[512];
	rd_kafka_conf_t *conf;
	rd_kafka_t *rk;
	rd_kafka_mock_cluster_t *mc;
	struct sigaction sa;
	const char *debug = getenv("MOCK_CLUSTER_DEBUG");
	long		brokers;
	int			replication;
	int			i;

	if (argc < 3 || !parse_long(argv[1], 1, 1000, &brokers))
	{
		usage();
		return 2;
	}
	replication = brokers < 3 ? (int) brokers : 3;

	/* Check all topic specs first, splitting TOPIC from PARTITIONS. */
	topic_cnt = argc - 2;
	topic_names = calloc((size_t) topic_cnt, sizeof(*topic_names));
	topic_parts = calloc((size_t) topic_cnt, sizeof(*topic_parts));
	if (topic_names == NULL || topic_parts == NULL)
	{
		fprintf(stderr, "mock_cluster: out of memory\n");
		return 1;
	}
	for (i = 0; i < topic_cnt; i++)
	{
		char	   *spec = argv[i + 2];
		char	   *colon = strrchr(spec, ':');
		long		parts;

		if (colon == NULL || colon == spec || !parse_long(colon + 1, 1, 100000, &parts))
		{
			fprintf(stderr, "mock_cluster: bad topic spec (want TOPIC:PARTITIONS): %s\n", spec);
			usage();
			return 2;
		}
		*colon = '\0';
		topic_names[i] = spec;
		topic_parts[i] = (int) parts;
	}

	/* No SA_RESTART: let poll() return EINTR so the loop sees the flag. */
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);

	/*
	 * The mock cluster needs an rd_kafka_t for its bookkeeping (logging,
	 * its thread).  This handle never connects anywhere: it has no
	 * bootstrap.servers and produces nothing.  log_level 4 hides the notice
	 * about the missing bootstrap.servers; MOCK_CLUSTER_DEBUG=mock (or any
	 * librdkafka debug context list) shows what the mock brokers do.
	 */
	conf = rd_kafka_conf_new();
	if (!conf_set(conf, "client.id", "mock_cluster") ||
		!conf_set(conf, "log_level", debug && *debug ? "7" : "4") ||
		(debug && *debug && !conf_set(conf, "debug", debug)))
	{
		rd_kafka_conf_destroy(conf);
		return 1;
	}
	rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
	if (rk == NULL)
	{
		fprintf(stderr, "mock_cluster: rd_kafka_new: %s\n", errstr);
		return 1;
	}

	mc = rd_kafka_mock_cluster_new(rk, (int) brokers);
	if (mc == NULL)
	{
		fprintf(stderr, "mock_cluster: rd_kafka_mock_cluster_new failed\n");
		rd_kafka_destroy(rk);
		return 1;
	}

	for (i = 0; i < topic_cnt; i++)
	{
		rd_kafka_resp_err_t err;

		err = rd_kafka_mock_topic_create(mc, topic_names[i], topic_parts[i], replication);
		if (err != RD_KAFKA_RESP_ERR_NO_ERROR)
		{
			fprintf(stderr, "mock_cluster: creating topic %s: %s\n",
					topic_names[i], rd_kafka_err2str(err));
			rd_kafka_mock_cluster_destroy(mc);
			rd_kafka_destroy(rk);
			return 1;
		}
	}

	reply("bootstrap %s", rd_kafka_mock_cluster_bootstraps(mc));

	command_loop(mc);

	rd_kafka_mock_cluster_destroy(mc);
	rd_kafka_destroy(rk);
	free(topic_names);
	free(topic_parts);
	return 0;
}
