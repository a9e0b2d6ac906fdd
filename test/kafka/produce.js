// SPDX-License-Identifier: GPL-3.0-or-later
//
// produce.js - an independent Kafka producer (kafkajs) for the tests.
//
// Usage: node produce.js BOOTSTRAP TOPIC FILE
//
//   BOOTSTRAP  host:port[,host:port...], e.g. the "bootstrap" line of
//              mock_cluster
//   TOPIC      an existing topic: produce.js fails if it is not listed
//              (it never creates topics)
//   FILE       one message per line: KEY<TAB>VALUE.  The key is everything
//              before the first TAB, the value everything after it, both as
//              raw bytes (any bytes except newline; no trailing CR is
//              stripped).  An empty KEY, or a line without a TAB (then the
//              whole line is the value), produces a message without a key
//              (kcat -K sends an empty, not a missing, key for an empty
//              KEY).  Empty lines are skipped, as kcat does.  The last line
//              needs no newline.
//
// Messages are sent in batches of 500 (one send() at a time, so the order
// of messages within a partition is the order of the file), GZIP
// compressed, with acks = all (-1).  Keyed messages are partitioned by
// kafkajs's default partitioner, murmur2 of the key as in the Java client
// (librdkafka / kcat: -X partitioner=murmur2_random gives the same
// partitions).  At the end "produced N" is printed; on any error the error
// goes to stderr and the exit status is 1 (2: bad usage, 3: kafkajs is not
// installed).
//
// kafkajs (the version pinned in package.json) is found by the usual node
// resolution from this file's directory (test/kafka/node_modules after
// "npm ci" there) or through NODE_PATH.

'use strict';

const fs = require('fs');

let kafkajs;
try {
  kafkajs = require('kafkajs');
} catch (err) {
  if (err.code !== 'MODULE_NOT_FOUND') throw err;
  process.stderr.write('produce.js: kafkajs is not installed: run "npm ci" in test/kafka, '
    + 'or install kafkajs@2.2.4 elsewhere and point NODE_PATH at its node_modules\n');
  process.exit(3);
}
const { Kafka, CompressionTypes, Partitioners, logLevel } = kafkajs;

const BATCH_SIZE = 500;
const NEWLINE = 0x0a;
const TAB = 0x09;

function usage() {
  process.stderr.write('usage: node produce.js BOOTSTRAP TOPIC FILE\n');
  process.exit(2);
}

// One file line (a Buffer without its newline) as a kafkajs message.
function toMessage(line) {
  const tab = line.indexOf(TAB);
  if (tab < 0) return { key: null, value: line };
  return {
    key: tab === 0 ? null : line.subarray(0, tab),
    value: line.subarray(tab + 1),
  };
}

// Yield the lines of a file as Buffers, reading it in chunks.
async function* lines(path) {
  let rest = Buffer.alloc(0);
  for await (const chunk of fs.createReadStream(path)) {
    let buf = rest.length ? Buffer.concat([rest, chunk]) : chunk;
    let start = 0;
    let nl;
    while ((nl = buf.indexOf(NEWLINE, start)) >= 0) {
      // Copy, so that a message does not pin the whole chunk.
      yield Buffer.from(buf.subarray(start, nl));
      start = nl + 1;
    }
    rest = Buffer.from(buf.subarray(start));
  }
  if (rest.length) yield rest;
}

async function main() {
  const [bootstrap, topic, file] = process.argv.slice(2);
  if (!bootstrap || !topic || !file || process.argv.length !== 5) usage();

  const kafka = new Kafka({
    clientId: 'experiment-test-produce',
    brokers: bootstrap.split(',').map((s) => s.trim()).filter(Boolean),
    // Retries are logged only with KAFKAJS_LOG_LEVEL=error (or warn, info,
    // debug) in the environment; the final error is always reported.
    logLevel: logLevel.NOTHING,
    connectionTimeout: 3000,
    requestTimeout: 30000,
    // Ride out injected errors and brokers that are briefly down.
    retry: { initialRetryTime: 100, maxRetryTime: 2000, retries: 10 },
  });
  const producer = kafka.producer({
    allowAutoTopicCreation: false,
    createPartitioner: Partitioners.DefaultPartitioner,
  });

  let produced = 0;
  let batch = [];
  const flush = async () => {
    if (!batch.length) return;
    await producer.send({
      topic,
      messages: batch,
      acks: -1,
      compression: CompressionTypes.GZIP,
      timeout: 30000,
    });
    produced += batch.length;
    batch = [];
  };

  // The topic must exist.  allowAutoTopicCreation: false is not enough: the
  // librdkafka 2.0.2 mock speaks Metadata only up to v2, which has no
  // AllowAutoTopicCreation field, and creates every unknown topic named in
  // a Metadata request.  Listing all topics creates none.
  const admin = kafka.admin();
  await admin.connect();
  let topics;
  try {
    topics = await admin.listTopics();
  } finally {
    await admin.disconnect();
  }
  if (!topics.includes(topic)) throw new Error(`topic ${topic} does not exist`);

  await producer.connect();
  try {
    for await (const line of lines(file)) {
      if (!line.length) continue; // empty lines are skipped, as kcat does
      batch.push(toMessage(line));
      if (batch.length >= BATCH_SIZE) await flush();
    }
    await flush();
  } finally {
    await producer.disconnect();
  }
  process.stdout.write(`produced ${produced}\n`);
}

main().catch((err) => {
  let text = err && err.message ? err.message : String(err);
  if (err && err.cause && err.cause.message && err.cause.message !== text) {
    text += ` (${err.cause.message})`;
  }
  process.stderr.write(`produce.js: ${text}\n`);
  process.exit(1);
});
