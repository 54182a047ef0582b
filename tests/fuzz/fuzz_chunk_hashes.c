/*
 * fuzz_chunk_hashes.c - the answer of GET /resources/hashes/{folder}/{name}
 * (docs/trust.md section 4), parsed by the streaming parser in fetch/api.c.
 * A list that parses must obey the rules the read path relies on: a
 * chunk size it accepts and a count within the caps; and the parse of a
 * list the parser accepted, written back out, must give the same digests.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fetch/fetch.h"
#include "fs/log.h"
#include "tests/fuzz/fuzz.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	log_init("fuzz", LOG_ERR);
	return 0;
}

/* The canonical form of a list, as the publisher sends it. */
static char *hashes_write(uint32_t cs, const uint8_t *sha, size_t n, size_t *ret_len)
{
	size_t cap = 64 + n * 67, len;
	char *s = malloc(cap);

	if (!s)
		return NULL;
	len = (size_t)snprintf(s, cap, "{\"chunk_size\":%u,\"sha256\":[", cs);
	for (size_t i = 0; i < n; i++) {
		len += (size_t)snprintf(s + len, cap - len, "%s\"", i ? "," : "");
		for (size_t j = 0; j < 32; j++)
			len += (size_t)snprintf(s + len, cap - len, "%02x", sha[i * 32 + j]);
		len += (size_t)snprintf(s + len, cap - len, "\"");
	}
	len += (size_t)snprintf(s + len, cap - len, "]}");
	*ret_len = len;
	return s;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	uint8_t *sha = NULL, *sha2 = NULL;
	size_t n = 0, n2 = 0, len = 0;
	uint32_t cs = 0, cs2 = 0;
	const char *why = NULL;
	char *again;

	if (fetch_chunk_hashes_parse(data, size, &cs, &sha, &n, &why) != 0) {
		if (!why)
			abort(); /* a refusal always says why */
		return 0;
	}
	if (!sha || !fetch_chunk_hashes_valid(cs, n))
		abort();
	again = hashes_write(cs, sha, n, &len);
	if (again) {
		if (fetch_chunk_hashes_parse((const uint8_t *)again, len, &cs2, &sha2, &n2, &why) !=
			    0 ||
		    cs2 != cs || n2 != n || memcmp(sha, sha2, n * 32) != 0)
			abort();
		free(sha2);
		free(again);
	}
	free(sha);
	return 0;
}
