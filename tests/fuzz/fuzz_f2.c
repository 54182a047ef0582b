/*
 * fuzz_f2.c - format 2's big part: a header (f2_header_parse) and the
 * geometry derived from it, then the bytes after it opened as chunk 0 of
 * that header under a fixed key. A hostile CDN must never get plaintext
 * out (the tag check fails), nor an out-of-range size or offset.
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
	free(out);
	return 0;
}
