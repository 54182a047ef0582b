/*
 * catalog.h - the files the mount shows: listed from GET /resources/list/
 * {folder} (or the `models` setting when the API has none), refreshed every
 * catalog_ttl in the background, the last copy kept in state_dir so an
 * offline start still lists the models.
 *
 * Readers take a reference to an immutable list (catalog_get) and drop it
 * with catalog_put; a refresh publishes a new list and never blocks them.
 */
#ifndef AZAION_CATALOG_H
#define AZAION_CATALOG_H

#include <stdint.h>
#include <time.h>
#include <jansson.h>

#include "fs/config.h"
#include "fs/session.h"

struct catalog_entry {
	char *name;
	int format;    /* 1 or 2 */
	uint64_t size; /* plaintext bytes */
	int has_size;  /* 0 until derived from the big part */
	int has_sha256;
	uint8_t sha256[32]; /* of the plaintext */
	uint64_t big_size;  /* 0: unknown */
	char *updated;	    /* the API's version mark, or NULL */
	/*
	 * The files' times: `updated` when it is an RFC 3339 time, else when
	 * this version was first listed (so a republished file moves it).
	 */
	time_t mtime;
};

struct catalog_list {
	unsigned refs; /* under the catalog's lock */
	size_t n;
	struct catalog_entry *e; /* sorted by name */
	time_t mtime;		 /* when the list last changed: the root's times */
};

/*
 * Fills in what the API did not say (size, big_size, and the format for
 * names from `models`) from the big part. 0 or a negative errno with
 * *ret_msg (msg.h) saying why; entries it cannot complete are left out of
 * the list, and the catalog logs why.
 */
typedef int (*catalog_probe_fn)(void *ctx, struct catalog_entry *e, char **ret_msg);

struct catalog;
int catalog_new(const struct config *c, struct session *s, catalog_probe_fn probe, void *probe_ctx,
		struct catalog **ret);
/* Stops the refresher (if started) and frees everything. */
void catalog_free(struct catalog *cat);

/*
 * Refreshes now: the API's list (or `models`), probed, published and saved
 * to state_dir/catalog.json. On failure the current list stays, and when
 * it is empty the saved copy is loaded. offline: only that last step (the
 * API is known to be out of reach).
 */
int catalog_refresh(struct catalog *cat, int offline);
/* Starts the background refresher thread. */
int catalog_start(struct catalog *cat);

/* The current list (never NULL); drop it with catalog_put. */
struct catalog_list *catalog_get(struct catalog *cat);
void catalog_put(struct catalog *cat, struct catalog_list *l);
const struct catalog_entry *catalog_find(const struct catalog_list *l, const char *name);
/* 1 when a and b are the same version of a resource. */
int catalog_entry_same(const struct catalog_entry *a, const struct catalog_entry *b);

/*
 * Builds a list from a /resources/list document (or a saved catalog):
 * hostile names refused and logged, duplicates dropped. Entries without a
 * size are kept with has_size 0. Exposed for tests.
 */
int catalog_parse(json_t *doc, struct catalog_list **ret);
void catalog_list_free(struct catalog_list *l);
/*
 * An RFC 3339 time ("2026-11-01T12:00:00Z", fractions and offsets too)
 * into *ret; -EINVAL when s is not one. Exposed for tests.
 */
int catalog_parse_time(const char *s, time_t *ret);

#endif
