/*
 * src_hash.c - the checking source layer (see src.h): a range of a blob
 * that carries chunk hashes goes up only after every chunk it touches has
 * matched its SHA-256 (docs/trust.md section 4). Ciphertext only; the layer
 * knows nothing of formats.
 *
 * The last HASH_KEPT checked chunks (of HASH_KEPT_MAX bytes at most) are
 * kept, so that the neighbouring reads of a sequential reader, which
 * straddle a chunk boundary, fetch each chunk once. A kept slot is EMPTY
 * (list_id 0), LOADING (one reader fetches and checks it; readers of the
 * same chunk wait on h->loaded instead of fetching it again: read-ahead
 * workers ask for neighbouring ranges at once) or READY.
 *
 * Locking: h->lock guards the kept chunks; it is never held across a read
 * from below or a hash.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "crypto/crypto.h"
#include "fs/log.h"
#include "fs/src.h"

/*
 * The read-ahead workers and the reader each load a chunk at once and
 * need their neighbours' a moment later: with 4 slots, 6% of a cold read
 * was fetched and hashed twice, with 6 0.3%; each slot is 1 MiB of the
 * memory bound.
 */
#define HASH_KEPT 6
#define HASH_KEPT_MAX (1024 * 1024) /* larger chunks are not kept */

struct hash_kept {
	uint64_t list_id, chunk; /* list_id 0: empty */
	size_t len;
	uint8_t *data;
	uint64_t used;
	int loading; /* its loader holds it; dropped: discarded when it arrives */
	int dropped;
};

struct src_hash {
	struct src src;
	struct src *lower;
	pthread_mutex_t lock;
	pthread_cond_t loaded; /* a LOADING slot became READY or EMPTY */
	struct hash_kept kept[HASH_KEPT];
	uint64_t clock;
};

/*
 * Under h->lock. Copies what is kept of chunk c of list id into out and
 * returns NULL; or claims an EMPTY or least recently used READY slot for
 * the caller to load (LOADING) and returns it; or, when every slot is
 * loading, returns NULL with *ret_uncached set. Waits while another reader
 * loads the chunk.
 */
static struct hash_kept *hash_kept_claim(struct src_hash *h, uint64_t id, uint64_t c, size_t from,
					 size_t n, uint8_t *out, int *ret_uncached)
{
	struct hash_kept *victim;

	*ret_uncached = 0;
	for (;;) {
		struct hash_kept *k = NULL;

		for (int i = 0; i < HASH_KEPT; i++)
			if (h->kept[i].list_id == id && h->kept[i].chunk == c &&
			    !h->kept[i].dropped)
				k = &h->kept[i];
		if (!k)
			break;
		if (!k->loading) {
			if (from + n > k->len)
				break; /* shorter than asked: read it anew below */
			memcpy(out, k->data + from, n);
			k->used = ++h->clock;
			return NULL;
		}
		pthread_cond_wait(&h->loaded, &h->lock);
	}
	victim = NULL;
	for (int i = 0; i < HASH_KEPT; i++) {
		struct hash_kept *k = &h->kept[i];

		if (!k->loading && (!victim || k->used < victim->used))
			victim = k;
	}
	/* A slot's buffer is allocated once and kept: a fresh megabyte faults in page by page. */
	if (victim && !victim->data)
		victim->data = malloc(HASH_KEPT_MAX);
	if (!victim || !victim->data) {
		*ret_uncached = 1;
		return NULL;
	}
	victim->list_id = id;
	victim->chunk = c;
	victim->len = 0;
	victim->loading = 1;
	victim->dropped = 0;
	return victim;
}

/* Under h->lock: the loader's result (len bytes in k->data; failed: r < 0), waking the waiters. */
static void hash_kept_finish(struct src_hash *h, struct hash_kept *k, int r, size_t len)
{
	if (r == 0 && !k->dropped) {
		k->len = len;
		k->used = ++h->clock;
	} else {
		k->list_id = 0;
	}
	k->loading = 0;
	k->dropped = 0;
	pthread_cond_broadcast(&h->loaded);
}

static int hash_matches(const struct src_hashes *hs, uint64_t c, const uint8_t *data, size_t len)
{
	uint8_t d[32];

	crypto_sha256(data, len, d);
	return crypto_memcmp(d, hs->sha256 + 32 * c, 32) == 0;
}

/* Reads chunk c of b whole into buf and checks it, once more after a failure. */
static int hash_chunk(struct src_hash *h, const struct src_blob *b, uint64_t c, uint8_t *buf,
		      size_t *ret_len)
{
	const struct src_hashes *hs = b->hashes;
	uint64_t a = c * hs->chunk_size;
	size_t len = b->size - a < hs->chunk_size ? (size_t)(b->size - a) : hs->chunk_size;
	int r;

	if (c >= hs->count)
		return -EIO;
	for (int retried = 0;; retried = 1) {
		r = src_read(h->lower, b, a, len, buf);
		if (r < 0)
			return r;
		if (hash_matches(hs, c, buf, len))
			break;
		if (retried) {
			log_err("%s: chunk %llu of the big part fails its SHA-256 again: tampered "
				"at the source",
				b->url, (unsigned long long)c);
			return -EBADMSG;
		}
		log_err("%s: chunk %llu of the big part fails its SHA-256; reading it again",
			b->url, (unsigned long long)c);
		src_drop(h->lower, b, a, len);
	}
	*ret_len = len;
	return 0;
}

static int hash_read(struct src *src, const struct src_blob *b, uint64_t off, size_t len,
		     uint8_t *buf)
{
	struct src_hash *h = (struct src_hash *)src;
	const struct src_hashes *hs = b->hashes;
	uint8_t *tmp = NULL, *dst;
	uint64_t c, c1;
	int r = 0;

	if (!hs || len == 0)
		return src_read(h->lower, b, off, len, buf);
	if (!hs->chunk_size)
		return -EIO;
	c1 = (off + len - 1) / hs->chunk_size;
	for (c = off / hs->chunk_size; r == 0 && c <= c1; c++) {
		uint64_t a = c * hs->chunk_size, from = a > off ? a : off;
		uint64_t to = a + hs->chunk_size < off + len ? a + hs->chunk_size : off + len;
		struct hash_kept *slot = NULL;
		int uncached = 1;
		size_t clen = 0;

		if (hs->chunk_size <= HASH_KEPT_MAX) {
			pthread_mutex_lock(&h->lock);
			slot = hash_kept_claim(h, hs->id, c, (size_t)(from - a),
					       (size_t)(to - from), buf + (from - off), &uncached);
			pthread_mutex_unlock(&h->lock);
			if (!slot && !uncached)
				continue; /* it was kept, or another reader loaded it */
		}
		/* The chunk is read into its slot, the one copy kept for the next reads. */
		dst = slot ? slot->data : tmp;
		if (!dst && !(dst = tmp = malloc(hs->chunk_size)))
			r = -ENOMEM;
		if (r == 0)
			r = hash_chunk(h, b, c, dst, &clen);
		if (r == 0 && to - a > clen)
			r = -EIO;
		if (r == 0)
			memcpy(buf + (from - off), dst + (from - a), (size_t)(to - from));
		if (slot) {
			pthread_mutex_lock(&h->lock);
			hash_kept_finish(h, slot, r, clen);
			pthread_mutex_unlock(&h->lock);
		}
	}
	free(tmp);
	return r;
}

static int hash_size(struct src *src, const struct src_blob *b, uint64_t *ret_size)
{
	return src_size(((struct src_hash *)src)->lower, b, ret_size);
}

static void hash_drop(struct src *src, const struct src_blob *b, uint64_t off, size_t len)
{
	struct src_hash *h = (struct src_hash *)src;

	if (b->hashes) {
		pthread_mutex_lock(&h->lock);
		for (int i = 0; i < HASH_KEPT; i++) {
			struct hash_kept *k = &h->kept[i];

			if (k->list_id != b->hashes->id)
				continue;
			if (k->loading)
				k->dropped = 1; /* its loader discards what arrives */
			else
				k->list_id = 0;
		}
		pthread_mutex_unlock(&h->lock);
	}
	src_drop(h->lower, b, off, len);
}

static void hash_free(struct src *src)
{
	struct src_hash *h = (struct src_hash *)src;

	for (int i = 0; i < HASH_KEPT; i++)
		free(h->kept[i].data);
	src_free(h->lower);
	pthread_cond_destroy(&h->loaded);
	pthread_mutex_destroy(&h->lock);
	free(h);
}

static const struct src_ops hash_ops = {
	.read = hash_read,
	.size = hash_size,
	.drop = hash_drop,
	.free = hash_free,
};

int src_hash_new(struct src *lower, struct src **ret)
{
	struct src_hash *h = calloc(1, sizeof(*h));

	if (!h)
		return -ENOMEM;
	h->src.ops = &hash_ops;
	h->lower = lower;
	pthread_mutex_init(&h->lock, NULL);
	pthread_cond_init(&h->loaded, NULL);
	*ret = &h->src;
	return 0;
}
