/*-------------------------------------------------------------------------
 *
 * hashing.h
 *	  Message digests and hash helpers of the assignment functions:
 *	  SHA-256 (FIPS 180-4) and MD5 (RFC 1321) with caller-allocated
 *	  contexts, FNV-1a 32-bit over UTF-16 code units (GrowthBook), and the
 *	  bucket functions that the SQL-callable wrappers share.
 *
 *	  The contexts are plain structs meant to live on the stack: hashing a
 *	  unit id allocates nothing.
 *
 *-------------------------------------------------------------------------
 */
#ifndef HASHING_H
#define HASHING_H

#include "postgres.h"

#define EXP_SHA256_DIGEST_LENGTH 32
#define EXP_MD5_DIGEST_LENGTH 16

/* number of buckets of the sha256, eppo and statsig schemes */
#define EXP_NUM_BUCKETS 10000

typedef struct ExpSha256Ctx
{
	uint32		state[8];
	uint64		bitcount;		/* message length in bits so far */
	uint32		buflen;			/* bytes waiting in buf */
	uint8		buf[64];
} ExpSha256Ctx;

typedef struct ExpMd5Ctx
{
	uint32		state[4];
	uint64		bytecount;		/* message length in bytes so far */
	uint32		buflen;
	uint8		buf[64];
} ExpMd5Ctx;

/*
 * The message buffering that SHA-256 and MD5 share (both are Merkle-Damgard
 * constructions over 64-byte blocks): append len bytes, compressing every
 * full block with block().
 */
static inline void
exp_md_append(uint32 *state, uint8 *buf, uint32 *buflen,
			  void (*block) (uint32 *state, const uint8 *block),
			  const uint8 *data, size_t len)
{
	if (*buflen > 0)
	{
		size_t		take = Min(len, (size_t) (64 - *buflen));

		memcpy(buf + *buflen, data, take);
		*buflen += take;
		data += take;
		len -= take;
		if (*buflen < 64)
			return;
		block(state, buf);
		*buflen = 0;
	}
	while (len >= 64)
	{
		block(state, data);
		data += 64;
		len -= 64;
	}
	if (len > 0)
	{
		memcpy(buf, data, len);
		*buflen = len;
	}
}

/* sha256.c */
extern void exp_sha256_init(ExpSha256Ctx *ctx);
extern void exp_sha256_update(ExpSha256Ctx *ctx, const uint8 *data, size_t len);
extern void exp_sha256_final(ExpSha256Ctx *ctx, uint8 *digest);
extern void exp_sha256_join_words(const uint8 *a, size_t alen, uint8 sep,
								  const uint8 *b, size_t blen, uint32 *H);
extern const char *exp_sha256_implementation(void);

/* md5.c */
extern void exp_md5_init(ExpMd5Ctx *ctx);
extern void exp_md5_update(ExpMd5Ctx *ctx, const uint8 *data, size_t len);
extern void exp_md5_final(ExpMd5Ctx *ctx, uint8 *digest);

/* hash.c */
extern const char *exp_text_utf8(text *t, int *len);
extern int	exp_sha256_bucket(const char *salt, int saltlen,
							  const char *unit, int unitlen);
extern uint32 exp_eppo_hash32(const char *salt, int saltlen,
							  const char *subject, int subjectlen);
extern int	exp_statsig_bucket(const char *salt, int saltlen,
							   const char *unit, int unitlen);
extern double exp_growthbook_hash(const char *seed, int seedlen,
								  const char *value, int valuelen,
								  int version);

#endif							/* HASHING_H */
