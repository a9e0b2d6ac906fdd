# Makefile for the experiment extension (PGXS).
#
#   make && make install          build and install into the server of $(PG_CONFIG)
#   make installcheck             run the pg_regress suite (sql/ -> expected/) and the
#                                 isolation specs (specs/ -> expected/)
#   bash scripts/test.sh          the whole suite on a throwaway cluster

EXTENSION = experiment
EXTVERSION = $(shell sed -n "s/^default_version[[:space:]]*=[[:space:]]*'\([^']*\)'.*/\1/p" $(EXTENSION).control)

MODULE_big = experiment
OBJS = $(patsubst %.c,%.o,$(sort $(wildcard src/*.c)))

# The install script is built from the ordered parts in src/sql/; upgrade
# scripts live in src/upgrade/ as experiment--A--B.sql.
SQL_PARTS = $(sort $(wildcard src/sql/*.sql))
DATA_built = $(EXTENSION)--$(EXTVERSION).sql
DATA = $(wildcard src/upgrade/$(EXTENSION)--*--*.sql)

REGRESS = $(patsubst sql/%.sql,%,$(sort $(wildcard sql/*.sql)))
REGRESS_OPTS = --inputdir=. --load-extension=experiment
# isolation specs (pg_isolation_regress): specs/*.spec -> expected/*.out; each
# spec creates and drops the extension in its own setup and teardown
ISOLATION = $(patsubst specs/%.spec,%,$(sort $(wildcard specs/*.spec)))
ISOLATION_OPTS = --inputdir=.

GSL_CONFIG ?= gsl-config
PG_CPPFLAGS = -I$(srcdir)/src $(shell $(GSL_CONFIG) --cflags)
PG_CFLAGS = -Wall -Wextra -Werror -Wno-unused-parameter -Wno-missing-field-initializers
SHLIB_LINK = $(shell $(GSL_CONFIG) --libs)

EXTRA_CLEAN = $(EXTENSION)--$(EXTVERSION).sql output_iso

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

$(EXTENSION)--$(EXTVERSION).sql: $(SQL_PARTS) $(EXTENSION).control
	cat $(SQL_PARTS) > $@

# experiment-kafka-sink (doc/kafka.md): an optional program, not needed by the extension.
# Needs Debian's librdkafka-dev (>= 2.0) and libpq-dev.
#   make kafka-sink && make install-kafka-sink
KAFKA_SINK = sink/experiment-kafka-sink
SINK_CFLAGS = -O2 -g -Wall -Wextra -Werror -Wno-unused-parameter

.PHONY: kafka-sink install-kafka-sink
kafka-sink: $(KAFKA_SINK)

$(KAFKA_SINK): sink/experiment-kafka-sink.c
	$(CC) $(SINK_CFLAGS) -I$(includedir) -o $@ $< -L$(libdir) -lpq -lrdkafka

install-kafka-sink: $(KAFKA_SINK)
	$(MKDIR_P) '$(DESTDIR)$(bindir)'
	$(INSTALL_PROGRAM) $(KAFKA_SINK) '$(DESTDIR)$(bindir)/experiment-kafka-sink'

EXTRA_CLEAN += $(KAFKA_SINK)
