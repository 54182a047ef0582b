/*
 * src.h - the ciphertext sources of the read path, as layers behind one
 * function table:
 *
 *   src_cdn   range requests to the CDN (fetch_cdn_range, with its retries)
 *   src_disk  cache_dir: big parts' blocks kept on disk, over a lower layer
 *   src_mem   big parts held in memory (tests), with failures on demand
 *   src_hash  checks each range of a blob that carries chunk hashes
 *             (docs/trust.md section 4) before it goes up
 *
 * Each layer is created over the one below and owns it: src_free frees the
 * whole stack. Only ciphertext passes through a source; the layers know
 * nothing of formats, keys or plaintext, and nothing above them.
 *
 * Errors are 0 or a negative errno. On a failure, the layer that knows
 * why puts it in words into *ret_msg (msg.h: malloc()ed, the caller's to
 * free and to log once; NULL on entry, and left NULL when strerror says
 * it all). The layers log only at debug, apart from what no caller sees:
 * a range that failed its check and was read again, a cache_dir that
 * cannot be written.
 */
#ifndef AZAION_SRC_H
#define AZAION_SRC_H

#include <stddef.h>
#include <stdint.h>

#include "fetch/fetch.h"

/*
 * The SHA-256 of every chunk_size bytes of a big part (the last chunk may
 * be shorter), from the API or from a whole-file check. id names the list
 * for the checked chunks src_hash keeps: unique for the process's life.
 */
struct src_hashes {
	uint64_t id;
	uint32_t chunk_size;
	const uint8_t *sha256; /* count * 32 bytes */
	size_t count;
};

/* One big part as the sources see it. */
struct src_blob {
	const char *url;
	const struct fetch_s3 *s3;	 /* NULL: unsigned */
	uint64_t size;			 /* bytes of the big part; 0: not known yet */
	const char *cache_id;		 /* its name in cache_dir (hex); NULL: not kept */
	const struct src_hashes *hashes; /* NULL: its bytes go up unchecked */
};

/*
 * Receives a stream's bytes in order, each once, in pieces of any size;
 * anything but 0 ends the stream, which returns it (fetch.h).
 */
typedef fetch_write_fn src_sink_fn;

struct src;
struct src_ops {
	/*
	 * Reads exactly len bytes at off of b (off + len <= b->size) into buf.
	 * 0 or a negative errno; a short answer is -EIO, an answer for other
	 * bytes -EPROTO. Called from many threads at once.
	 */
	int (*read)(struct src *s, const struct src_blob *b, uint64_t off, size_t len, uint8_t *buf,
		    char **ret_msg);
	/*
	 * Reads as read does, but hands the bytes to sink as they come from
	 * below, so that they need no buffer of the caller's (for the CDN,
	 * straight from libcurl's). 0, a negative errno as read gives, or
	 * what sink returned (with no message: the receiver knows why).
	 */
	int (*stream)(struct src *s, const struct src_blob *b, uint64_t off, size_t len,
		      src_sink_fn sink, void *arg, char **ret_msg);
	/* The size of b's big part into *ret_size; 0 or a negative errno. */
	int (*size)(struct src *s, const struct src_blob *b, uint64_t *ret_size, char **ret_msg);
	/*
	 * May be NULL: forgets what this layer and the ones below keep of
	 * [off, off + len) of b, after those bytes failed their check.
	 */
	void (*drop)(struct src *s, const struct src_blob *b, uint64_t off, size_t len);
	/* Frees the layer and the layers below it. */
	void (*free)(struct src *s);
};
struct src {
	const struct src_ops *ops;
};

static inline int src_read(struct src *s, const struct src_blob *b, uint64_t off, size_t len,
			   uint8_t *buf, char **ret_msg)
{
	return s->ops->read(s, b, off, len, buf, ret_msg);
}

static inline int src_stream(struct src *s, const struct src_blob *b, uint64_t off, size_t len,
			     src_sink_fn sink, void *arg, char **ret_msg)
{
	return s->ops->stream(s, b, off, len, sink, arg, ret_msg);
}

static inline int src_size(struct src *s, const struct src_blob *b, uint64_t *ret_size,
			   char **ret_msg)
{
	return s->ops->size(s, b, ret_size, ret_msg);
}

static inline void src_drop(struct src *s, const struct src_blob *b, uint64_t off, size_t len)
{
	if (s->ops->drop)
		s->ops->drop(s, b, off, len);
}

/* Frees s and every layer below it; accepts NULL. */
void src_free(struct src *s);

/* The bottom layer: range requests to the CDN through f (which must outlive it). */
int src_cdn_new(struct fetch *f, struct src **ret);

/*
 * A ciphertext cache in dir over lower (which it owns once this
 * succeeds; on failure the caller keeps it): whole big parts' blocks kept in files of mode
 * 0600, at most max bytes in all, least recently used files evicted first.
 * Blobs without a cache_id pass through.
 */
int src_disk_new(const char *dir, uint64_t max, struct src *lower, struct src **ret);
/*
 * Tests: while held, the writer thread leaves what is queued in its queue
 * (readers copy those blocks from there; at most 4 runs may wait), until
 * released or the layer is freed.
 */
void src_disk_hold_writer(struct src *s, int hold);
/*
 * Tests: what the writer's writes cost so far, O_DIRECT and through the
 * page cache (ns per MiB), as if it had written much each way, the last
 * buffered write buffered_age_s ago.
 */
void src_disk_seed_write_costs(struct src *s, double direct_ns_per_mib, double buffered_ns_per_mib,
			       unsigned buffered_age_s);

/*
 * Checks every range of a blob with hashes against them, over lower
 * (which it then owns): whole chunks are read and checked, the last few
 * kept for the next reads. A chunk that fails is dropped from the layers
 * below and read once more (from the CDN, when cache_dir held it), which
 * is logged; a second failure is -EBADMSG, its message naming the blob's
 * URL and the chunk.
 */
int src_hash_new(struct src *lower, struct src **ret);

/*
 * Big parts in memory, by URL (tests). A put copies the bytes; a stream
 * hands them on in pieces of 1 to 16 KiB, as a CDN's would come; a fault
 * makes reads of url that touch [off, off + len) fail with err (0 clears
 * it) for the next count reads (-1: until cleared); reads, drops and
 * bytes served are counted.
 */
int src_mem_new(struct src **ret);
int src_mem_put(struct src *s, const char *url, const uint8_t *data, size_t len);
/* Changes len bytes of url's big part at off, as a CDN gone bad would. */
int src_mem_poke(struct src *s, const char *url, uint64_t off, const uint8_t *data, size_t len);
int src_mem_fault(struct src *s, const char *url, uint64_t off, uint64_t len, int err, int count);
/* Each read waits this long first (a slow CDN); 0: none. */
void src_mem_delay(struct src *s, unsigned ms);
struct src_mem_stats {
	uint64_t reads, read_bytes, drops, failures;
};
void src_mem_stats(struct src *s, struct src_mem_stats *ret);

#endif
