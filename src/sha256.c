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
 *	  Two implementations of the compression function: a portable one, and on
 *	  x86-64 processors that have them the SHA extensions (SHA256RNDS2,
 *	  SHA256MSG1, SHA256MSG2; Intel, "Intel SHA Extensions", 2013), chosen at
 *	  run time with CPUID.  Both compute the same function; compiling with
 *	  -DEXP_SHA256_PORTABLE keeps only the portable one, which
 *	  test/test_hash_digest_impl.sh checks against Python's hashlib.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "hashing.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(EXP_SHA256_PORTABLE)
#define EXP_SHA256_X86_SHANI 1
#include <cpuid.h>
#include <immintrin.h>
#endif

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

/*
 * One round t of FIPS 180-4 section 6.2.2 step 3, with the working variables
 * renamed instead of moved: T1 = h + S1(e) + Ch(e,f,g) + K_t + W_t,
 * T2 = S0(a) + Maj(a,b,c); d += T1; h = T1 + T2.
 */
#define ROUND(a, b, c, d, e, f, g, h, t, w) \
	do { \
		uint32		T1_ = (h) + BSIG1(e) + CH(e, f, g) + K256[t] + (w); \
		(d) += T1_; \
		(h) = T1_ + BSIG0(a) + MAJ(a, b, c); \
	} while (0)

/* W_t for t >= 16 in a ring of 16 words (FIPS 180-4 section 6.2.2 step 1) */
#define SCHEDULE(W, t) \
	((W)[(t) & 15] += SSIG1((W)[((t) - 2) & 15]) + (W)[((t) - 7) & 15] + SSIG0((W)[((t) - 15) & 15]))

/* FIPS 180-4 section 6.2.2: process one 512-bit block (portable C) */
static void
sha256_block_portable(uint32 *H, const uint8 *block)
{
	uint32		W[16];
	uint32		a = H[0],
				b = H[1],
				c = H[2],
				d = H[3],
				e = H[4],
				f = H[5],
				g = H[6],
				h = H[7];
	int			t;

	for (t = 0; t < 16; t++)
		W[t] = ((uint32) block[4 * t] << 24) | ((uint32) block[4 * t + 1] << 16) |
			((uint32) block[4 * t + 2] << 8) | (uint32) block[4 * t + 3];

	for (t = 0; t < 16; t += 8)
	{
		ROUND(a, b, c, d, e, f, g, h, t, W[t]);
		ROUND(h, a, b, c, d, e, f, g, t + 1, W[t + 1]);
		ROUND(g, h, a, b, c, d, e, f, t + 2, W[t + 2]);
		ROUND(f, g, h, a, b, c, d, e, t + 3, W[t + 3]);
		ROUND(e, f, g, h, a, b, c, d, t + 4, W[t + 4]);
		ROUND(d, e, f, g, h, a, b, c, t + 5, W[t + 5]);
		ROUND(c, d, e, f, g, h, a, b, t + 6, W[t + 6]);
		ROUND(b, c, d, e, f, g, h, a, t + 7, W[t + 7]);
	}
	for (t = 16; t < 64; t += 8)
	{
		ROUND(a, b, c, d, e, f, g, h, t, SCHEDULE(W, t));
		ROUND(h, a, b, c, d, e, f, g, t + 1, SCHEDULE(W, t + 1));
		ROUND(g, h, a, b, c, d, e, f, t + 2, SCHEDULE(W, t + 2));
		ROUND(f, g, h, a, b, c, d, e, t + 3, SCHEDULE(W, t + 3));
		ROUND(e, f, g, h, a, b, c, d, t + 4, SCHEDULE(W, t + 4));
		ROUND(d, e, f, g, h, a, b, c, t + 5, SCHEDULE(W, t + 5));
		ROUND(c, d, e, f, g, h, a, b, t + 6, SCHEDULE(W, t + 6));
		ROUND(b, c, d, e, f, g, h, a, t + 7, SCHEDULE(W, t + 7));
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

#ifdef EXP_SHA256_X86_SHANI
/*
 * The same compression function with the x86 SHA extensions.  The state is
 * kept as two vectors (A, B, E, F) and (C, D, G, H), the layout that
 * SHA256RNDS2 works on; each SHA256RNDS2 does two rounds with W_t + K_t in
 * the low 64 bits of its third operand.  The message schedule
 * W_t = s1(W_t-2) + W_t-7 + s0(W_t-15) + W_t-16 is computed four words at a
 * time: SHA256MSG1 adds s0, an ALIGNR supplies W_t-7 and SHA256MSG2 adds s1.
 */
/*
 * Rounds 4g .. 4g+3: two SHA256RNDS2, each taking W_t + K_t of its two
 * rounds from the low 64 bits of wk
 */
#define SHANI_ROUNDS4(g, w) \
	do { \
		wk = _mm_add_epi32((w), _mm_loadu_si128((const __m128i *) &K256[4 * (g)])); \
		cdgh = _mm_sha256rnds2_epu32(cdgh, abef, wk); \
		wk = _mm_shuffle_epi32(wk, 0x0E); \
		abef = _mm_sha256rnds2_epu32(abef, cdgh, wk); \
	} while (0)

/*
 * The next four message words from the last sixteen (w0 oldest, w3 newest),
 * into w0: W_t = s1(W_t-2) + W_t-7 + s0(W_t-15) + W_t-16
 */
#define SHANI_SCHEDULE(w0, w1, w2, w3) \
	do { \
		tmp = _mm_sha256msg1_epu32((w0), (w1)); \
		tmp = _mm_add_epi32(tmp, _mm_alignr_epi8((w3), (w2), 4)); \
		(w0) = _mm_sha256msg2_epu32(tmp, (w3)); \
	} while (0)

__attribute__((target("sha,sse4.1,ssse3")))
static void
sha256_block_shani(uint32 *H, const uint8 *block)
{
	const __m128i bswap = _mm_set_epi64x(0x0c0d0e0f08090a0bLL, 0x0405060700010203LL);
	__m128i		abef,
				cdgh,
				abef_save,
				cdgh_save,
				tmp,
				wk;
	__m128i		m0,
				m1,
				m2,
				m3;

	/* (A, B, C, D), (E, F, G, H) -> (A, B, E, F), (C, D, G, H) */
	tmp = _mm_loadu_si128((const __m128i *) &H[0]);
	cdgh = _mm_loadu_si128((const __m128i *) &H[4]);
	tmp = _mm_shuffle_epi32(tmp, 0xB1);
	cdgh = _mm_shuffle_epi32(cdgh, 0x1B);
	abef = _mm_alignr_epi8(tmp, cdgh, 8);
	cdgh = _mm_blend_epi16(cdgh, tmp, 0xF0);
	abef_save = abef;
	cdgh_save = cdgh;

	/*
	 * Fully unrolled, with the message schedule in four rolling registers
	 * (m0..m3 hold W[4g .. 4g+3] for the last four groups g), so that it
	 * stays in registers and runs ahead of the rounds.
	 */
	m0 = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *) block), bswap);
	m1 = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *) (block + 16)), bswap);
	m2 = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *) (block + 32)), bswap);
	m3 = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *) (block + 48)), bswap);
	SHANI_ROUNDS4(0, m0);
	SHANI_ROUNDS4(1, m1);
	SHANI_ROUNDS4(2, m2);
	SHANI_ROUNDS4(3, m3);
	SHANI_SCHEDULE(m0, m1, m2, m3);
	SHANI_ROUNDS4(4, m0);
	SHANI_SCHEDULE(m1, m2, m3, m0);
	SHANI_ROUNDS4(5, m1);
	SHANI_SCHEDULE(m2, m3, m0, m1);
	SHANI_ROUNDS4(6, m2);
	SHANI_SCHEDULE(m3, m0, m1, m2);
	SHANI_ROUNDS4(7, m3);
	SHANI_SCHEDULE(m0, m1, m2, m3);
	SHANI_ROUNDS4(8, m0);
	SHANI_SCHEDULE(m1, m2, m3, m0);
	SHANI_ROUNDS4(9, m1);
	SHANI_SCHEDULE(m2, m3, m0, m1);
	SHANI_ROUNDS4(10, m2);
	SHANI_SCHEDULE(m3, m0, m1, m2);
	SHANI_ROUNDS4(11, m3);
	SHANI_SCHEDULE(m0, m1, m2, m3);
	SHANI_ROUNDS4(12, m0);
	SHANI_SCHEDULE(m1, m2, m3, m0);
	SHANI_ROUNDS4(13, m1);
	SHANI_SCHEDULE(m2, m3, m0, m1);
	SHANI_ROUNDS4(14, m2);
	SHANI_SCHEDULE(m3, m0, m1, m2);
	SHANI_ROUNDS4(15, m3);

	abef = _mm_add_epi32(abef, abef_save);
	cdgh = _mm_add_epi32(cdgh, cdgh_save);

	/* back to (A, B, C, D), (E, F, G, H) */
	tmp = _mm_shuffle_epi32(abef, 0x1B);
	cdgh = _mm_shuffle_epi32(cdgh, 0xB1);
	abef = _mm_blend_epi16(tmp, cdgh, 0xF0);
	cdgh = _mm_alignr_epi8(cdgh, tmp, 8);
	_mm_storeu_si128((__m128i *) &H[0], abef);
	_mm_storeu_si128((__m128i *) &H[4], cdgh);
}

/* CPUID: SHA (leaf 7, EBX bit 29), SSE4.1 and SSSE3 (leaf 1, ECX bits 19, 9) */
static bool
cpu_has_shani(void)
{
	unsigned int a,
				b,
				c,
				d;

	if (!__get_cpuid(1, &a, &b, &c, &d))
		return false;
	if (!(c & (1U << 19)) || !(c & (1U << 9)))
		return false;
	if (!__get_cpuid_count(7, 0, &a, &b, &c, &d))
		return false;
	return (b & (1U << 29)) != 0;
}
#endif							/* EXP_SHA256_X86_SHANI */

static void sha256_block_choose(uint32 *H, const uint8 *block);

/* the compression function in use; chosen on first call */
static void (*sha256_block) (uint32 *H, const uint8 *block) = sha256_block_choose;

static void
sha256_block_choose(uint32 *H, const uint8 *block)
{
#ifdef EXP_SHA256_X86_SHANI
	if (cpu_has_shani())
		sha256_block = sha256_block_shani;
	else
#endif
		sha256_block = sha256_block_portable;
	sha256_block(H, block);
}

/* name of the compression function in use ("x86 SHA extensions" or "portable") */
const char *
exp_sha256_implementation(void)
{
#ifdef EXP_SHA256_X86_SHANI
	if (cpu_has_shani())
		return "x86 SHA extensions";
#endif
	return "portable";
}

/* FIPS 180-4 section 5.3.3: initial hash value H(0) */
static const uint32 H0[8] = {
	0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19
};

void
exp_sha256_init(ExpSha256Ctx *ctx)
{
	memcpy(ctx->state, H0, sizeof(H0));
	ctx->bitcount = 0;
	ctx->buflen = 0;
}

/* append len bytes to the message */
void
exp_sha256_update(ExpSha256Ctx *ctx, const uint8 *data, size_t len)
{
	ctx->bitcount += (uint64) len << 3;
	exp_md_append(ctx->state, ctx->buf, &ctx->buflen, sha256_block, data, len);
}

/*
 * FIPS 180-4 section 5.1.1: pad, process the last block(s), leave the final
 * hash value H_0..H_7 in H (the digest is their big-endian bytes)
 */
static void
sha256_final_words(ExpSha256Ctx *ctx, uint32 *H)
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
	memcpy(H, ctx->state, sizeof(ctx->state));
}

/* pad, process the last block(s), emit the digest */
void
exp_sha256_final(ExpSha256Ctx *ctx, uint8 *digest)
{
	uint32		H[8];
	int			i;

	sha256_final_words(ctx, H);
	for (i = 0; i < 8; i++)
	{
		digest[4 * i] = (uint8) (H[i] >> 24);
		digest[4 * i + 1] = (uint8) (H[i] >> 16);
		digest[4 * i + 2] = (uint8) (H[i] >> 8);
		digest[4 * i + 3] = (uint8) H[i];
	}
}

/* the longest message exp_sha256_join_words() pads on the stack: 4 blocks */
#define JOIN_MAX_BLOCKS 4

/*
 * SHA-256 of the message a || sep || b (a salt, one separator byte and a
 * unit id), as the eight words H_0..H_7 of the final hash value.  This is
 * the per-row work of the assignment functions, so a message of up to four
 * blocks (247 bytes) is not streamed through exp_sha256_update(): it is
 * padded (the 0x80 byte, zeros, the 64-bit length; FIPS 180-4 section
 * 5.1.1) in a buffer on the stack, all of it written before the first
 * block is compressed.  A block read right after being written makes the
 * processor wait for its stores to complete (a store-forwarding stall); with
 * every store issued first, that wait happens once, and the loads of later
 * blocks no longer wait for the compression of earlier ones.
 */
void
exp_sha256_join_words(const uint8 *a, size_t alen, uint8 sep,
					  const uint8 *b, size_t blen, uint32 *H)
{
	size_t		len = alen + 1 + blen;

	if (len <= 64 * JOIN_MAX_BLOCKS - 9)
	{
		uint8		msg[64 * JOIN_MAX_BLOCKS];
		uint64		bits = (uint64) len << 3;
		size_t		padded = (len + 9 + 63) & ~(size_t) 63;
		size_t		off;
		int			i;

		memcpy(msg, a, alen);
		msg[alen] = sep;
		memcpy(msg + alen + 1, b, blen);
		msg[len] = 0x80;
		memset(msg + len + 1, 0, padded - 8 - (len + 1));
		for (i = 0; i < 8; i++)
			msg[padded - 8 + i] = (uint8) (bits >> (56 - 8 * i));
		memcpy(H, H0, sizeof(H0));
		for (off = 0; off < padded; off += 64)
			sha256_block(H, msg + off);
	}
	else
	{
		ExpSha256Ctx ctx;

		exp_sha256_init(&ctx);
		exp_sha256_update(&ctx, a, alen);
		exp_sha256_update(&ctx, &sep, 1);
		exp_sha256_update(&ctx, b, blen);
		sha256_final_words(&ctx, H);
	}
}
