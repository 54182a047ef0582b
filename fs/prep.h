/*
 * prep.h - one file version made ready to read: what every read of it
 * needs, got once, at its first open (docs/architecture.md, the read
 * path, step 2). The store keeps one per object (store.c); this module
 * owns how it is made and unmade:
 *
 *   the big part's URL and size                       the key source, src.h
 *   the format's key material and its blocks' name    format.h, keys.h
 *     in cache_dir
 *   a format without tags: the API's chunk hashes,    keys.h, check.h
 *     or a whole-file check against the catalog's
 *     sha256, or none (a file served unchecked)
 *   the format's head, read while the key source      format.h
 *     unwraps the key (the TPM), and the opened file
 *
 * Errors are 0 or a negative errno fit for a reader (store.h) with
 * *ret_msg (msg.h) saying why; nothing is logged but what no caller sees
 * (a head read again after a failed check). Not thread-safe: the store
 * lets one thread prepare an object while its readers wait.
 */
#ifndef AZAION_PREP_H
#define AZAION_PREP_H

#include <stddef.h>
#include <stdint.h>

#include "fetch/fetch.h"
#include "fs/catalog.h"
#include "fs/config.h"
#include "fs/format.h"
#include "fs/keys.h"
#include "fs/src.h"

/* What preparing reads from: all three outlive every prep_file. */
struct prep_env {
	const struct config *c;
	struct src *src;
	struct keys *keys;
};

/* The source reads a preparation made, for /metrics. */
struct prep_counts {
	uint64_t fetches;
	uint64_t fetch_bytes;
	uint64_t fetch_errors;
};

/*
 * A prepared file version. fmt and id are the caller's (id names its
 * chunk-hash list to the sources); the rest is prep_open's. url stays
 * across prep_close, since the blob points at it; prep_free frees it.
 */
struct prep_file {
	const struct format_ops *fmt; /* NULL: a format this build does not read */
	uint64_t id;

	char *url;
	char cache_id[33];
	struct src_blob blob;
	uint64_t size;	 /* plaintext */
	uint8_t *prefix; /* the stream's bytes before the big part (format 1's small part) */
	size_t prefix_len;
	struct format_file *ff; /* the opened file: its key, while prepared */

	/* a format without tags: its big part's chunk hashes (docs/trust.md section 4) */
	struct src_hashes hashes;
	uint8_t *hash_list; /* hashes.sha256, malloc()ed; NULL: none */
	int unchecked;	    /* 1: no chunk hashes and no sha256: served without a check */
};

/*
 * Prepares pf for the catalog entry e. The source reads it made are added
 * to *counts. On failure pf holds nothing prepared (prep_close's state).
 */
int prep_open(const struct prep_env *env, const struct catalog_entry *e, struct prep_file *pf,
	      struct prep_counts *counts, char **ret_msg);
/* Wipes the key and drops the rest; pf may be prepared again. */
void prep_close(struct prep_file *pf);
/* prep_close, and the URL. */
void prep_free(struct prep_file *pf);

/*
 * Makes the sources forget what they keep of [off, off + len) of pf's
 * ciphertext stream (its prefix, then the big part): a range that failed
 * its check, to be read once more.
 */
void prep_drop_stream(const struct prep_env *env, const struct prep_file *pf, uint64_t off,
		      size_t len);

/* The URL of name's big part (malloc()ed) and the CDN's keys, from the key source. */
int prep_big_url(const struct prep_env *env, const char *name, char **ret_url,
		 const struct fetch_s3 **ret_s3, char **ret_msg);

/* A lower layer's errno as a reader should see it (store.h). */
int prep_reader_errno(int r);

#endif
