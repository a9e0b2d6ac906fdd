#!/usr/bin/env bash
# test_hash_digest_impl.sh: the SHA-256 and MD5 code of src/sha256.c and
# src/md5.c, compiled outside the server, against Python's hashlib, for
# messages of 0..300 bytes fed in one piece and in small chunks (every padding
# case, every buffering path).  SHA-256 is built twice: as the server builds
# it (on x86-64 with the SHA extensions when the CPU has them) and with
# -DEXP_SHA256_PORTABLE, so that both compression functions are checked
# whatever the machine running the suite.  exp_sha256_join_words(), the
# one-call SHA-256 of a || sep || b that the bucket functions use (padded on
# the stack up to 247 bytes, streamed beyond), is checked on the same
# messages split at three places each (every length from 1 to 300 bytes,
# both of its paths and the boundary between them).
set -uo pipefail
cd "$(dirname "$0")/.."
PG_BINDIR=${PG_BINDIR:-/usr/lib/postgresql/15/bin}
PY=${PYTHON:-/usr/bin/python3}
CC=${CC:-cc}
command -v "$CC" >/dev/null || { echo "skipped: no C compiler"; exit 77; }
incdir=$("$PG_BINDIR/pg_config" --includedir-server) || { echo "skipped: no pg_config"; exit 77; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

cat > "$tmp/driver.c" <<'CEOF'
#include "postgres.h"
#include "hashing.h"
#undef printf
#undef fprintf

/* message byte i of a message of length len */
static uint8
msg_byte(int len, int i)
{
	return (uint8) (i * 31 + len * 7 + (i >> 3));
}

static void
hex(const uint8 *d, int n)
{
	for (int i = 0; i < n; i++)
		printf("%02x", d[i]);
}

int
main(void)
{
	uint8		msg[400];

	fprintf(stderr, "sha256 compression function: %s\n", exp_sha256_implementation());
	for (int len = 0; len <= 300; len++)
	{
		for (int i = 0; i < len; i++)
			msg[i] = msg_byte(len, i);
		for (int chunked = 0; chunked <= 1; chunked++)
		{
			ExpSha256Ctx s;
			ExpMd5Ctx	m;
			uint8		ds[EXP_SHA256_DIGEST_LENGTH];
			uint8		dm[EXP_MD5_DIGEST_LENGTH];
			int			step = chunked ? len % 7 + 1 : (len > 0 ? len : 1);

			exp_sha256_init(&s);
			exp_md5_init(&m);
			for (int off = 0; off < len; off += step)
			{
				int			n = Min(step, len - off);

				exp_sha256_update(&s, msg + off, n);
				exp_md5_update(&m, msg + off, n);
			}
			exp_sha256_final(&s, ds);
			exp_md5_final(&m, dm);
			printf("%d %d ", len, chunked);
			hex(ds, EXP_SHA256_DIGEST_LENGTH);
			printf(" ");
			hex(dm, EXP_MD5_DIGEST_LENGTH);
			printf("\n");
		}
		/* the same message as a || sep || b for three split points */
		for (int split = 0; split < 3 && len > 0; split++)
		{
			int			k = split == 0 ? 0 : split == 1 ? len / 2 : len - 1;
			uint32		H[8];
			uint8		dj[EXP_SHA256_DIGEST_LENGTH];

			exp_sha256_join_words(msg, k, msg[k], msg + k + 1, len - k - 1, H);
			for (int w = 0; w < 8; w++)
				for (int j = 0; j < 4; j++)
					dj[4 * w + j] = (uint8) (H[w] >> (24 - 8 * j));
			printf("%d j%d ", len, k);
			hex(dj, EXP_SHA256_DIGEST_LENGTH);
			printf(" -\n");
		}
	}
	return 0;
}
CEOF

cat > "$tmp/check.py" <<'PEOF'
import hashlib, sys
bad = n = 0
for line in open(sys.argv[1]):
    length, chunked, sha, md5 = line.split()
    length = int(length)
    msg = bytes(((i * 31 + length * 7 + (i >> 3)) & 0xFF) for i in range(length))
    n += 1
    if sha != hashlib.sha256(msg).hexdigest() or (md5 != "-" and md5 != hashlib.md5(msg).hexdigest()):
        bad += 1
        if bad <= 3:
            print("mismatch at length %d (%s)" % (length, "joined at %s" % chunked[1:] if chunked[0] == "j" else "chunked %s" % chunked))
# 301 lengths streamed in one piece and in chunks, 300 lengths joined at 3 places
print("%s: %d digests compared, %d wrong" % (sys.argv[2], n, bad))
sys.exit(1 if bad or n != 602 + 900 else 0)
PEOF

rc=0
for variant in native portable; do
	flags=""
	[ $variant = portable ] && flags="-DEXP_SHA256_PORTABLE"
	if ! "$CC" -O2 -Wall -Wextra -Werror $flags -Isrc -I"$incdir" -o "$tmp/driver_$variant" \
		"$tmp/driver.c" src/sha256.c src/md5.c 2>"$tmp/cc.log"; then
		cat "$tmp/cc.log"
		echo "FAIL: cannot compile the $variant driver"
		exit 1
	fi
	"$tmp/driver_$variant" > "$tmp/out_$variant" || { echo "FAIL: $variant driver"; exit 1; }
	"$PY" "$tmp/check.py" "$tmp/out_$variant" "$variant" || rc=1
done
exit $rc
