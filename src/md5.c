/*-------------------------------------------------------------------------
 *
 * md5.c
 *	  MD5 as specified in RFC 1321, "The MD5 Message-Digest Algorithm"
 *	  (R. Rivest, 1992), section 3: padding (3.1, 3.2), initial buffer (3.3),
 *	  the four rounds with the sine table T[i] = floor(2^32 |sin(i)|) (3.4)
 *	  and little-endian output (3.5).
 *
 *	  Used by the eppo hashing scheme.  As in sha256.c the context lives on
 *	  the caller's stack.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "hashing.h"

/* RFC 1321 section 3.4: T[i] = floor(4294967296 * abs(sin(i))), i = 1..64 */
static const uint32 T[64] = {
	0xd76aa478, 0xe8c7b756, 0x242070db, 0xc1bdceee, 0xf57c0faf, 0x4787c62a, 0xa8304613, 0xfd469501,
	0x698098d8, 0x8b44f7af, 0xffff5bb1, 0x895cd7be, 0x6b901122, 0xfd987193, 0xa679438e, 0x49b40821,
	0xf61e2562, 0xc040b340, 0x265e5a51, 0xe9b6c7aa, 0xd62f105d, 0x02441453, 0xd8a1e681, 0xe7d3fbc8,
	0x21e1cde6, 0xc33707d6, 0xf4d50d87, 0x455a14ed, 0xa9e3e905, 0xfcefa3f8, 0x676f02d9, 0x8d2a4c8a,
	0xfffa3942, 0x8771f681, 0x6d9d6122, 0xfde5380c, 0xa4beea44, 0x4bdecfa9, 0xf6bb4b60, 0xbebfbc70,
	0x289b7ec6, 0xeaa127fa, 0xd4ef3085, 0x04881d05, 0xd9d4d039, 0xe6db99e5, 0x1fa27cf8, 0xc4ac5665,
	0xf4292244, 0x432aff97, 0xab9423a7, 0xfc93a039, 0x655b59c3, 0x8f0ccc92, 0xffeff47d, 0x85845dd1,
	0x6fa87e4f, 0xfe2ce6e0, 0xa3014314, 0x4e0811a1, 0xf7537e82, 0xbd3af235, 0x2ad7d2bb, 0xeb86d391
};

/* per-round shift amounts s (RFC 1321 section 3.4) */
static const uint8 S[4][4] = {
	{7, 12, 17, 22},
	{5, 9, 14, 20},
	{4, 11, 16, 23},
	{6, 10, 15, 21}
};

#define ROTL32(x, n)	(((x) << (n)) | ((x) >> (32 - (n))))

/* RFC 1321 section 3.4: process one 16-word block */
static void
md5_block(uint32 *state, const uint8 *block)
{
	uint32		X[16];
	uint32		a = state[0],
				b = state[1],
				c = state[2],
				d = state[3];
	int			i;

	for (i = 0; i < 16; i++)
		X[i] = (uint32) block[4 * i] | ((uint32) block[4 * i + 1] << 8) |
			((uint32) block[4 * i + 2] << 16) | ((uint32) block[4 * i + 3] << 24);

	/* one step: a = b + ((a + fn(b,c,d) + X[k] + T[i]) <<< s), then rotate names */
#define MD5_STEP(expr, k, s) \
	do { \
		uint32		f_ = a + (expr) + X[k] + T[i]; \
		uint32		tmp_ = d; \
		d = c; \
		c = b; \
		b = b + ROTL32(f_, s); \
		a = tmp_; \
	} while (0)

	for (i = 0; i < 16; i++)	/* round 1: F(X,Y,Z) = XY v not(X) Z */
		MD5_STEP((b & c) | (~b & d), i, S[0][i & 3]);
	for (; i < 32; i++)			/* round 2: G(X,Y,Z) = XZ v Y not(Z) */
		MD5_STEP((b & d) | (c & ~d), (5 * i + 1) & 15, S[1][i & 3]);
	for (; i < 48; i++)			/* round 3: H(X,Y,Z) = X xor Y xor Z */
		MD5_STEP(b ^ c ^ d, (3 * i + 5) & 15, S[2][i & 3]);
	for (; i < 64; i++)			/* round 4: I(X,Y,Z) = Y xor (X v not(Z)) */
		MD5_STEP(c ^ (b | ~d), (7 * i) & 15, S[3][i & 3]);
#undef MD5_STEP

	state[0] += a;
	state[1] += b;
	state[2] += c;
	state[3] += d;
}

/* RFC 1321 section 3.3: initialize the MD buffer */
void
exp_md5_init(ExpMd5Ctx *ctx)
{
	ctx->state[0] = 0x67452301;
	ctx->state[1] = 0xefcdab89;
	ctx->state[2] = 0x98badcfe;
	ctx->state[3] = 0x10325476;
	ctx->bytecount = 0;
	ctx->buflen = 0;
}

/* append len bytes to the message */
void
exp_md5_update(ExpMd5Ctx *ctx, const uint8 *data, size_t len)
{
	ctx->bytecount += len;
	exp_md_append(ctx->state, ctx->buf, &ctx->buflen, md5_block, data, len);
}

/* RFC 1321 sections 3.1, 3.2 and 3.5: pad, append the length, emit */
void
exp_md5_final(ExpMd5Ctx *ctx, uint8 *digest)
{
	uint64		bits = ctx->bytecount << 3;
	int			i;

	ctx->buf[ctx->buflen++] = 0x80;
	if (ctx->buflen > 56)
	{
		memset(ctx->buf + ctx->buflen, 0, 64 - ctx->buflen);
		md5_block(ctx->state, ctx->buf);
		ctx->buflen = 0;
	}
	memset(ctx->buf + ctx->buflen, 0, 56 - ctx->buflen);
	for (i = 0; i < 8; i++)
		ctx->buf[56 + i] = (uint8) (bits >> (8 * i));
	md5_block(ctx->state, ctx->buf);

	for (i = 0; i < 4; i++)
	{
		digest[4 * i] = (uint8) ctx->state[i];
		digest[4 * i + 1] = (uint8) (ctx->state[i] >> 8);
		digest[4 * i + 2] = (uint8) (ctx->state[i] >> 16);
		digest[4 * i + 3] = (uint8) (ctx->state[i] >> 24);
	}
}
