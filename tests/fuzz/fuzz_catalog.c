/*
 * fuzz_catalog.c - the catalog: the body of GET /resources/list/{folder}
 * (or a saved catalog.json) parsed by jansson as fetch/ does, then turned
 * into the list the mount shows by catalog_parse. Every name that comes
 * out must be one the daemon accepts, and the list sorted and unique.
 */
#include <stdlib.h>
#include <string.h>
#include <jansson.h>

#include "fs/catalog.h"
#include "fs/log.h"
#include "fs/names.h"
#include "tests/fuzz/fuzz.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	log_init("fuzz", LOG_ERR);
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct catalog_list *l = NULL;
	json_t *doc;

	doc = json_loadb((const char *)data, size, JSON_REJECT_DUPLICATES, NULL);
	if (!doc)
		return 0;
	if (catalog_parse(doc, &l) == 0) {
		for (size_t i = 0; i < l->n; i++) {
			const struct catalog_entry *e = &l->e[i];

			if (!names_valid(e->name) || (e->format != 1 && e->format != 2))
				abort();
			if (i > 0 && strcmp(l->e[i - 1].name, e->name) >= 0)
				abort();
			if (catalog_find(l, e->name) != e)
				abort();
		}
		catalog_list_free(l);
	}
	json_decref(doc);
	return 0;
}
