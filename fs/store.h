/*
 * store.h - the read path's top layer. main composes the stack:
 *
 *   src_cdn (range requests to the CDN)              src.h
 *     -> src_disk (cache_dir, optional)              src.h
 *       -> src_hash (format 1's chunk hashes)        src.h
 *         -> the store: objects, read-ahead          here
 *              each object prepared at first open    prep.h
 *              decryption by each file's format      format.h
 *              keys from a key source                keys.h
 *              plaintext units in the cache          ucache.h
 *              a legacy file's whole check           check.h
 *              format and size for the catalog       probe.h
 *
 * store_read maps a plaintext range to 64 KiB units, answers from the
 * cache, fills the missing ones (merging neighbours into one range
 * request) and hands back references to the cached bytes, which stay
 * valid until store_read_release. Sequential readers trigger read-ahead on
 * a small pool of workers. Every call is bounded by io_timeout.
 *
 * Errors are 0 or a negative errno fit for a reader: -EIO, -EACCES,
 * -ENOENT, -ETIMEDOUT, -EKEYREJECTED (the CDN refused), with *ret_msg
 * (msg.h) saying why in an operator's words: the caller logs it once or
 * sends it back. The store itself logs only what no caller sees: a range
 * read again after a failed check, a file served unchecked.
 */
#ifndef AZAION_STORE_H
#define AZAION_STORE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include "fetch/fetch.h"
#include "fs/catalog.h"
#include "fs/config.h"
#include "fs/keys.h"
#include "fs/src.h"
#include "fs/ucache.h"

#define STORE_UNIT UCACHE_UNIT /* plaintext bytes per cache entry */

/* ---- the store -------------------------------------------------------------- */

struct store;
/*
 * A store over the source stack src and the key source keys, which it
 * owns from here on (also when this fails); c must outlive it. The
 * plaintext cache takes memory_cache bytes of locked memory; when they
 * cannot be locked, *ret_msg (may be NULL) says so.
 */
int store_new(const struct config *c, struct src *src, struct keys *keys, struct store **ret,
	      char **ret_msg);
/* Starts the read-ahead workers (after daemonising). */
int store_start(struct store *st);
/* Stops the workers and frees everything; no file may be open. */
void store_free(struct store *st);

/* catalog_probe_fn: derives format, size and big_size from the big part. */
int store_probe(void *st, struct catalog_entry *e, char **ret_msg);

struct store_file;
/*
 * Opens a file of the catalog: fetches what the read needs (small part,
 * header, content key) once per file version.
 */
int store_open(struct store *st, const struct catalog_entry *e, struct store_file **ret,
	       char **ret_msg);
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
	uint64_t opens; /* store_open calls */
	uint64_t open_errors;
	uint64_t reads;	     /* store_read calls */
	uint64_t read_bytes; /* plaintext bytes handed out */
	uint64_t read_errors;
	uint64_t cache_hits;   /* 64 KiB units found in the plaintext cache */
	uint64_t cache_misses; /* units this reader (or read-ahead) had to fill */
	uint64_t fetches;      /* ciphertext reads from the source layers */
	uint64_t fetch_bytes;
	uint64_t fetch_errors;
	uint64_t cache_units; /* capacity of the plaintext cache, in units */
};
void store_stats(struct store *st, struct store_stats *ret);

/*
 * The names of the files opened without any check (a format without tags,
 * no chunk hashes, no catalog sha256): a NULL-terminated malloc()ed array
 * of malloc()ed strings, and its length.
 */
int store_unchecked(struct store *st, char ***ret, size_t *ret_n);

/* Reads up to len bytes at off; release the result with store_read_release. */
int store_read(struct store_file *h, uint64_t off, size_t len, struct store_read *ret,
	       char **ret_msg);
void store_read_release(struct store_read *r);

#endif
