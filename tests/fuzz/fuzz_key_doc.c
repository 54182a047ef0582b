/*
 * fuzz_key_doc.c - the format-2 small part: the API's JSON key document
 * (docs/formats.md), parsed by jansson and checked by keys_parse_doc, as
 * the key source does with the API's answer or the copy in state_dir.
 */
#include <stdlib.h>
#include <string.h>
#include <jansson.h>

#include "fs/log.h"
#include "fs/keys.h"
#include "tests/fuzz/fuzz.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	log_init("fuzz", LOG_ERR);
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char fid[33];
	uint8_t wrapped[1024];
	size_t len;
	json_t *doc;

	doc = json_loadb((const char *)data, size, JSON_REJECT_DUPLICATES, NULL);
	if (!doc)
		return 0;
	if (keys_parse_doc(doc, fid, wrapped, sizeof(wrapped), &len) == 0) {
		if (len == 0 || len > sizeof(wrapped) || strlen(fid) != 32)
			abort();
	}
	json_decref(doc);
	return 0;
}
