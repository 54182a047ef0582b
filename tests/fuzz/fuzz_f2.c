/*
 * fuzz_f2.c - format 2's big part: a header (f2_header_parse) and the
 * geometry derived from it, then the bytes after it opened as chunk 0 of
 * that header under a fixed key, whole and in pieces as the read path
 * streams them. A hostile CDN must never get plaintext out (the tag check
 * fails), nor an out-of-range size or offset.
 */
#include <stdlib.h>
#include <string.h>

#include "crypto/crypto.h"
#include "tests/fuzz/fuzz.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const uint8_t key[CRYPTO_KEY_SIZE] = {1, 2, 3};
	struct crypto_gcm *g;
	struct f2_header h;
	uint64_t count, last;
	uint8_t *out;

	if (size < F2_HEADER_SIZE || f2_header_parse(data, &h) < 0)
		return 0;
	if (h.chunk_shift < F2_SHIFT_MIN || h.chunk_shift > F2_SHIFT_MAX)
		abort();
	count = f2_chunk_count(&h);
	last = count - 1;
	if (count == 0 || f2_chunk_plain_len(&h, last) > f2_chunk_size(&h) ||
	    f2_chunk_offset(&h, last) >= f2_big_size(&h) || f2_big_size(&h) > INT64_MAX)
		abort();
	if (f2_chunk_plain_len(&h, count) != 0)
		abort();
	out = malloc(size);
	if (!out)
		return 0;
	/* Random bytes never pass a GCM tag. */
	if (f2_open_chunk(key, &h, 0, data + F2_HEADER_SIZE, size - F2_HEADER_SIZE, out) == 0)
		abort();
	f2_open_chunk(key, &h, count, data + F2_HEADER_SIZE, size - F2_HEADER_SIZE, out);
	/* The same bytes opened as the read path does, in pieces as they arrive: no tag passes. */
	if (size - F2_HEADER_SIZE >= CRYPTO_TAG_SIZE && crypto_gcm_new(key, &g) == 0) {
		const uint8_t *ct = data + F2_HEADER_SIZE;
		size_t n = size - F2_HEADER_SIZE - CRYPTO_TAG_SIZE, k;
		int r = f2_chunk_start(g, &h, 0);

		for (size_t at = 0; r == 0 && at < n; at += k) {
			k = 1 + ct[at] % 97u;
			if (k > n - at)
				k = n - at;
			r = crypto_gcm_update(g, ct + at, k, out + at);
		}
		if (r == 0 && crypto_gcm_finish(g, ct + n) == 0)
			abort();
		crypto_gcm_free(g);
	}
	free(out);
	return 0;
}
