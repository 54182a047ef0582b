/*
 * store.h - the read path, as layers behind one interface:
 *
 *   CDN source (fetch_cdn_range, with its retries)
 *     -> disk ciphertext cache (cache_dir, optional)
 *       -> decryption (format 1: CBC blocks; format 2: GCM chunks)
 *         -> plaintext cache (one locked slab of memory_cache bytes)
 *
 * The two source layers share struct store_src: each reads a range of a
 * big part, and the disk cache is created over the CDN source, owning it.
 * Decryption and the plaintext cache are the store itself: store_read maps
 * a plaintext range to 64 KiB units, answers from the cache, fills the
 * missing ones (merging neighbours into one range request) and hands back
 * references to the cached bytes, which stay valid until
 * store_read_release. Sequential readers trigger read-ahead on a small
 * pool of workers. Every call is bounded by io_timeout.
 *
 * Errors are 0 or a negative errno fit for a reader: -EIO, -EACCES,
 * -ENOENT, -ETIMEDOUT (the cause logged once).
 */
#ifndef AZAION_STORE_H
#define AZAION_STORE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include "fetch/fetch.h"
#include "fs/catalog.h"
#include "fs/config.h"
#include "fs/device.h"
#include "fs/session.h"
#include "fs/src.h"

#define STORE_UNIT (64 * 1024) /* plaintext bytes per cache entry */

/* ---- the store -------------------------------------------------------------- */

struct store;
/* c, f, s and d must outlive the store. */
int store_new(const struct config *c, struct fetch *f, struct session *s, struct device *d,
	      struct store **ret);
/* Starts the read-ahead workers (after daemonising). */
int store_start(struct store *st);
/* Stops the workers and frees everything; no file may be open. */
void store_free(struct store *st);

/* catalog_probe_fn: derives format, size and big_size from the big part. */
int store_probe(void *st, struct catalog_entry *e);

struct store_file;
/*
 * Opens a file of the catalog: fetches what the read needs (small part,
 * header, content key) once per file version.
 */
int store_open(struct store *st, const struct catalog_entry *e, struct store_file **ret);
void store_close(struct store_file *h);

/* What store_read hands back: iov points into the plaintext cache. */
struct store_read {
	struct iovec *iov;
	int iovcnt;
	size_t len; /* total bytes; 0 at or past the end */
	/* private */
	struct store *st;
	void **units;
	size_t n_units;
};

/*
 * Counters since store_new, for the side endpoint's /metrics. Each is
 * updated atomically on its own; a snapshot is not one consistent instant.
 */
struct store_stats {
	uint64_t opens;	       /* store_open calls */
	uint64_t open_errors;
	uint64_t reads;	       /* store_read calls */
	uint64_t read_bytes;   /* plaintext bytes handed out */
	uint64_t read_errors;
	uint64_t cache_hits;   /* 64 KiB units found in the plaintext cache */
	uint64_t cache_misses; /* units this reader (or read-ahead) had to fill */
	uint64_t fetches;      /* ciphertext reads from the source layers */
	uint64_t fetch_bytes;
	uint64_t fetch_errors;
	uint64_t cache_units;  /* capacity of the plaintext cache, in units */
};
void store_stats(struct store *st, struct store_stats *ret);

/*
 * Checks a format-2 small part (formats.md's JSON document): format 2, a
 * file_id of 32 hex digits (copied to ret_file_id), a wrapped_key that
 * decodes into at most cap bytes of wrapped. -EBADMSG when it does not.
 * Exposed for tests.
 */
int store_parse_key_doc(json_t *doc, char ret_file_id[33], uint8_t *wrapped, size_t cap,
			size_t *ret_len);

/* Reads up to len bytes at off; release the result with store_read_release. */
int store_read(struct store_file *h, uint64_t off, size_t len, struct store_read *ret);
void store_read_release(struct store_read *r);

#endif
