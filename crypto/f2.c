/*
 * f2.c - format 2 of docs/formats.md: the big part's header and its chunks,
 * each sealed with AES-256-GCM under the resource's own key, bound to the
 * header and to its position by the nonce and the additional data.
 *
 * No locking: all state is in the caller's buffers.
 */
#include <errno.h>
#include <limits.h>
#include <string.h>

#include "crypto/crypto.h"

#define F2_AAD_SIZE (F2_HEADER_SIZE + 8)

static void put_le64(uint8_t *p, uint64_t v)
{
	int i;

	for (i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t get_le64(const uint8_t *p)
{
	uint64_t v = 0;
	int i;

	for (i = 7; i >= 0; i--)
		v = (v << 8) | p[i];
	return v;
}

static uint64_t f2_count(uint64_t size, unsigned shift)
{
	return size ? ((size - 1) >> shift) + 1 : 1;
}

/*
 * Whether a big part of this plaintext size fits in an off_t, the type
 * every reader seeks it with.
 */
static int f2_size_ok(uint64_t size, unsigned shift)
{
	uint64_t tags = f2_count(size, shift) * CRYPTO_TAG_SIZE;

	return size <= (uint64_t)INT64_MAX - F2_HEADER_SIZE - tags;
}

int f2_header_init(struct f2_header *h, uint64_t size, unsigned chunk_shift,
		   const uint8_t file_id[F2_FILE_ID_SIZE])
{
	if (chunk_shift < F2_SHIFT_MIN || chunk_shift > F2_SHIFT_MAX)
		return -EINVAL;
	if (!f2_size_ok(size, chunk_shift))
		return -EINVAL;
	memset(h, 0, sizeof(*h));
	h->chunk_shift = chunk_shift;
	h->size = size;
	memcpy(h->file_id, file_id, F2_FILE_ID_SIZE);
	memcpy(h->raw, F2_MAGIC, 4);
	h->raw[4] = F2_VERSION;
	h->raw[5] = (uint8_t)chunk_shift;
	put_le64(h->raw + 8, size);
	memcpy(h->raw + 16, file_id, F2_FILE_ID_SIZE);
	return 0;
}

int f2_header_parse(const uint8_t raw[F2_HEADER_SIZE], struct f2_header *ret)
{
	unsigned shift = raw[5];
	uint64_t size = get_le64(raw + 8);
	uint8_t any = 0;
	int i;

	if (memcmp(raw, F2_MAGIC, 4) != 0 || raw[4] != F2_VERSION)
		return -EBADMSG;
	if (shift < F2_SHIFT_MIN || shift > F2_SHIFT_MAX)
		return -EBADMSG;
	any = raw[6] | raw[7];
	for (i = 32; i < F2_HEADER_SIZE; i++)
		any |= raw[i];
	if (any)
		return -EBADMSG;
	if (!f2_size_ok(size, shift))
		return -EBADMSG;
	ret->chunk_shift = shift;
	ret->size = size;
	memcpy(ret->file_id, raw + 16, F2_FILE_ID_SIZE);
	memcpy(ret->raw, raw, F2_HEADER_SIZE);
	return 0;
}

uint64_t f2_chunk_size(const struct f2_header *h)
{
	return (uint64_t)1 << h->chunk_shift;
}

uint64_t f2_chunk_count(const struct f2_header *h)
{
	return f2_count(h->size, h->chunk_shift);
}

uint64_t f2_chunk_plain_len(const struct f2_header *h, uint64_t i)
{
	uint64_t cs = f2_chunk_size(h);
	uint64_t start;

	if (i >= f2_chunk_count(h))
		return 0;
	start = i << h->chunk_shift;
	return h->size - start < cs ? h->size - start : cs;
}

uint64_t f2_chunk_offset(const struct f2_header *h, uint64_t i)
{
	return F2_HEADER_SIZE + i * (f2_chunk_size(h) + CRYPTO_TAG_SIZE);
}

uint64_t f2_big_size(const struct f2_header *h)
{
	return F2_HEADER_SIZE + h->size + f2_chunk_count(h) * CRYPTO_TAG_SIZE;
}

/* The nonce and additional data that bind chunk i to its header and position. */
static void f2_chunk_binding(const struct f2_header *h, uint64_t i,
			     uint8_t nonce[CRYPTO_GCM_NONCE_SIZE], uint8_t aad[F2_AAD_SIZE])
{
	memset(nonce, 0, CRYPTO_GCM_NONCE_SIZE);
	put_le64(nonce + 4, i);
	memcpy(aad, h->raw, F2_HEADER_SIZE);
	put_le64(aad + F2_HEADER_SIZE, i);
}

int f2_seal_chunk(const uint8_t key[CRYPTO_KEY_SIZE], const struct f2_header *h, uint64_t i,
		  const uint8_t *plain, size_t plain_len, uint8_t *out)
{
	uint8_t nonce[CRYPTO_GCM_NONCE_SIZE], aad[F2_AAD_SIZE];

	if (i >= f2_chunk_count(h) || plain_len != f2_chunk_plain_len(h, i))
		return -EINVAL;
	f2_chunk_binding(h, i, nonce, aad);
	return crypto_gcm_seal(key, nonce, aad, F2_AAD_SIZE, plain, plain_len, out);
}

int f2_open_chunk(const uint8_t key[CRYPTO_KEY_SIZE], const struct f2_header *h, uint64_t i,
		  const uint8_t *ct, size_t ct_len, uint8_t *out)
{
	uint8_t nonce[CRYPTO_GCM_NONCE_SIZE], aad[F2_AAD_SIZE];
	size_t plain_len;

	if (i >= f2_chunk_count(h))
		return -EINVAL;
	if (ct_len < CRYPTO_TAG_SIZE)
		return -EBADMSG;
	plain_len = ct_len - CRYPTO_TAG_SIZE;
	/* A short or long chunk is a truncated or damaged big part. */
	if (plain_len != f2_chunk_plain_len(h, i)) {
		crypto_wipe(out, plain_len);
		return -EBADMSG;
	}
	f2_chunk_binding(h, i, nonce, aad);
	return crypto_gcm_open(key, nonce, aad, F2_AAD_SIZE, ct, ct_len, out);
}

int f2_chunk_start(struct crypto_gcm *g, const struct f2_header *h, uint64_t i)
{
	uint8_t nonce[CRYPTO_GCM_NONCE_SIZE], aad[F2_AAD_SIZE];

	if (i >= f2_chunk_count(h))
		return -EINVAL;
	f2_chunk_binding(h, i, nonce, aad);
	return crypto_gcm_start(g, nonce, aad, F2_AAD_SIZE);
}
