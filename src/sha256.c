/*-------------------------------------------------------------------------
 *
 * sha256.c
 *	  SHA-256 as specified in FIPS PUB 180-4, "Secure Hash Standard"
 *	  (NIST, 2015), sections 4.1.2 (functions), 4.2.2 (constants), 5.1.1
 *	  (padding), 5.3.3 (initial hash value) and 6.2.2 (computation).
 *
 *	  The context is a plain struct that callers keep on the stack, so that
 *	  hashing one unit id costs no memory allocation (PostgreSQL's
 *	  pg_cryptohash_create() allocates a context per call, which dominates
 *	  the cost for short messages).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "hashing.h"

/* FIPS 180-4 section 4.2.2: first 32 bits of the fractional parts of the
 * cube roots of the first 64 primes */
static const uint32 K256[64] = {
	0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
	0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
	0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
	0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
	0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
	0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
	0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
	0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2
};

#define ROTR32(x, n)	(((x) >> (n)) | ((x) << (32 - (n))))
#define CH(x, y, z)		(((x) & (y)) ^ (~(x) & (z)))
#define MAJ(x, y, z)	(((x) & (y)) ^ ((x) & (z)) ^ ((y) & (z)))
#define BSIG0(x)		(ROTR32(x, 2) ^ ROTR32(x, 13) ^ ROTR32(x, 22))
#define BSIG1(x)		(ROTR32(x, 6) ^ ROTR32(x, 11) ^ ROTR32(x, 25))
#define SSIG0(x)		(ROTR32(x, 7) ^ ROTR32(x, 18) ^ ((x) >> 3))
#define SSIG1(x)		(ROTR32(x, 17) ^ ROTR32(x, 19) ^ ((x) >> 10))

/* FIPS 180-4 section 6.2.2: process one 512-bit block */
static void
sha256_block(uint32 *H, const uint8 *block)
{
	uint32		W[64];
	uint32		a,
				b,
				c,
				d,
				e,
				f,
				g,
				h;
	int			t;

	for (t = 0; t < 16; t++)
		W[t] = ((uint32) block[4 * t] << 24) | ((uint32) block[4 * t + 1] << 16) |
			((uint32) block[4 * t + 2] << 8) | (uint32) block[4 * t + 3];
	for (t = 16; t < 64; t++)
		W[t] = SSIG1(W[t - 2]) + W[t - 7] + SSIG0(W[t - 15]) + W[t - 16];

	a = H[0];
	b = H[1];
	c = H[2];
	d = H[3];
	e = H[4];
	f = H[5];
	g = H[6];
	h = H[7];

	for (t = 0; t < 64; t++)
	{
		uint32		T1 = h + BSIG1(e) + CH(e, f, g) + K256[t] + W[t];
		uint32		T2 = BSIG0(a) + MAJ(a, b, c);

		h = g;
		g = f;
		f = e;
		e = d + T1;
		d = c;
		c = b;
		b = a;
		a = T1 + T2;
	}

	H[0] += a;
	H[1] += b;
	H[2] += c;
	H[3] += d;
	H[4] += e;
	H[5] += f;
	H[6] += g;
	H[7] += h;
}

/* FIPS 180-4 section 5.3.3: initial hash value H(0) */
void
exp_sha256_init(ExpSha256Ctx *ctx)
{
	ctx->state[0] = 0x6a09e667;
	ctx->state[1] = 0xbb67ae85;
	ctx->state[2] = 0x3c6ef372;
	ctx->state[3] = 0xa54ff53a;
	ctx->state[4] = 0x510e527f;
	ctx->state[5] = 0x9b05688c;
	ctx->state[6] = 0x1f83d9ab;
	ctx->state[7] = 0x5be0cd19;
	ctx->bitcount = 0;
	ctx->buflen = 0;
}

/* append len bytes to the message */
void
exp_sha256_update(ExpSha256Ctx *ctx, const uint8 *data, size_t len)
{
	ctx->bitcount += (uint64) len << 3;

	if (ctx->buflen > 0)
	{
		size_t		take = Min(len, (size_t) (64 - ctx->buflen));

		memcpy(ctx->buf + ctx->buflen, data, take);
		ctx->buflen += take;
		data += take;
		len -= take;
		if (ctx->buflen < 64)
			return;
		sha256_block(ctx->state, ctx->buf);
		ctx->buflen = 0;
	}
	while (len >= 64)
	{
		sha256_block(ctx->state, data);
		data += 64;
		len -= 64;
	}
	if (len > 0)
	{
		memcpy(ctx->buf, data, len);
		ctx->buflen = len;
	}
}

/* FIPS 180-4 section 5.1.1: pad, process the last block(s), emit the digest */
void
exp_sha256_final(ExpSha256Ctx *ctx, uint8 *digest)
{
	uint64		bits = ctx->bitcount;
	int			i;

	ctx->buf[ctx->buflen++] = 0x80;
	if (ctx->buflen > 56)
	{
		memset(ctx->buf + ctx->buflen, 0, 64 - ctx->buflen);
		sha256_block(ctx->state, ctx->buf);
		ctx->buflen = 0;
	}
	memset(ctx->buf + ctx->buflen, 0, 56 - ctx->buflen);
	for (i = 0; i < 8; i++)
		ctx->buf[56 + i] = (uint8) (bits >> (56 - 8 * i));
	sha256_block(ctx->state, ctx->buf);

	for (i = 0; i < 8; i++)
	{
		digest[4 * i] = (uint8) (ctx->state[i] >> 24);
		digest[4 * i + 1] = (uint8) (ctx->state[i] >> 16);
		digest[4 * i + 2] = (uint8) (ctx->state[i] >> 8);
		digest[4 * i + 3] = (uint8) ctx->state[i];
	}
}
