/*
 * fuzz_cdn_yaml.c - cdn.yaml as the API hands it out (after decryption):
 * the flat "key: value" lines session_parse_cdn_yaml reads.
 */
#include <stdlib.h>
#include <string.h>

#include "fs/log.h"
#include "fs/session.h"
#include "tests/fuzz/fuzz.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	log_init("fuzz", LOG_ERR);
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct session_cdn_yaml y;

	memset(&y, 0, sizeof(y));
	if (session_parse_cdn_yaml((const char *)data, size, &y) == 0) {
		if (y.host && strlen(y.host) > size)
			abort();
		session_cdn_yaml_clear(&y);
	}
	return 0;
}
