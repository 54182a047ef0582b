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
 * workers ask for neighbouring ranges at once) or READY. Readers copy or
 * stream a READY slot's bytes without the lock, holding it (readers): a
 * held slot is not reused.
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
#include "fs/msg.h"
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
	unsigned readers; /* handing its bytes on, without the lock */
};

struct src_hash {
	struct src src;
	struct src *lower;
	pthread_mutex_t lock;
	pthread_cond_t loaded; /* a LOADING slot became READY or EMPTY */
	struct hash_kept kept[HASH_KEPT];
	uint64_t clock;
};

enum {
	KEPT_READY, /* kept and held for the caller, who releases it */
	KEPT_MINE,  /* claimed: the caller loads it (LOADING) */
	KEPT_NONE   /* every slot busy: the caller reads the chunk on its own */
};

/*
 * Under h->lock. Finds chunk c of list id kept with at least need bytes
 * and holds it; or claims an EMPTY or least recently used READY slot that
 * nobody holds. Waits while another reader loads the chunk.
 */
static int hash_kept_claim(struct src_hash *h, uint64_t id, uint64_t c, size_t need,
			   struct hash_kept **ret)
{
	struct hash_kept *victim;

	for (;;) {
		struct hash_kept *k = NULL;

		for (int i = 0; i < HASH_KEPT; i++)
			if (h->kept[i].list_id == id && h->kept[i].chunk == c &&
			    !h->kept[i].dropped)
				k = &h->kept[i];
		if (!k)
			break;
		if (!k->loading) {
			if (need > k->len)
				break; /* shorter than asked: read it anew below */
			k->readers++;
			k->used = ++h->clock;
			*ret = k;
			return KEPT_READY;
		}
		pthread_cond_wait(&h->loaded, &h->lock);
	}
	victim = NULL;
	for (int i = 0; i < HASH_KEPT; i++) {
		struct hash_kept *k = &h->kept[i];

		if (!k->loading && !k->readers && (!victim || k->used < victim->used))
			victim = k;
	}
	/* A slot's buffer is allocated once and kept: a fresh megabyte faults in page by page. */
	if (victim && !victim->data)
		victim->data = malloc(HASH_KEPT_MAX);
	if (!victim || !victim->data)
		return KEPT_NONE;
	victim->list_id = id;
	victim->chunk = c;
	victim->len = 0;
	victim->loading = 1;
	victim->dropped = 0;
	*ret = victim;
	return KEPT_MINE;
}

/*
 * Under h->lock: the loader's result (len bytes in k->data; failed:
 * r < 0), waking the waiters. The loader holds the slot on (a reader) to
 * hand its bytes on.
 */
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
	k->readers++;
	pthread_cond_broadcast(&h->loaded);
}

static int hash_matches(const struct src_hashes *hs, uint64_t c, const uint8_t *data, size_t len)
{
	uint8_t d[32];

	crypto_sha256(data, len, d);
	return crypto_memcmp(d, hs->sha256 + 32 * c, 32) == 0;
}

/*
 * Reads chunk c of b whole into buf and checks it, once more after a
 * failure: the first is an event no caller sees (the read goes on), so it
 * is logged here; the second is the caller's to tell.
 */
static int hash_chunk(struct src_hash *h, const struct src_blob *b, uint64_t c, uint8_t *buf,
		      size_t *ret_len, char **ret_msg)
{
	const struct src_hashes *hs = b->hashes;
	uint64_t a = c * hs->chunk_size;
	size_t len = b->size - a < hs->chunk_size ? (size_t)(b->size - a) : hs->chunk_size;
	int r;

	if (c >= hs->count) {
		msg_set(ret_msg, "%s: chunk %llu is past the %zu of its chunk-hash list", b->url,
			(unsigned long long)c, hs->count);
		return -EIO;
	}
	for (int retried = 0;; retried = 1) {
		r = src_read(h->lower, b, a, len, buf, ret_msg);
		if (r < 0)
			return r;
		if (hash_matches(hs, c, buf, len))
			break;
		if (retried) {
			msg_set(ret_msg,
				"%s: chunk %llu of the big part fails its SHA-256 again: tampered "
				"at the source",
				b->url, (unsigned long long)c);
			return -EBADMSG;
		}
		log_warn("%s: chunk %llu of the big part fails its SHA-256; reading it again",
			 b->url, (unsigned long long)c);
		src_drop(h->lower, b, a, len);
	}
	*ret_len = len;
	return 0;
}

/* Bytes [from, from + n) of a range at off go to buf, or to sink in order. */
struct hash_dest {
	uint8_t *buf;
	uint64_t off;
	src_sink_fn sink;
	void *arg;
	char **msg; /* the caller's */
};

static int hash_give(const struct hash_dest *o, uint64_t from, const uint8_t *data, size_t n)
{
	if (o->buf) {
		memcpy(o->buf + (from - o->off), data, n);
		return 0;
	}
	return o->sink(o->arg, data, n);
}

/*
 * Gives [off, off + len) of a blob with hashes to o, chunk by chunk, each
 * checked whole before any of its bytes goes up: from a kept slot, or
 * read into one (or into tmp when every slot is busy).
 */
static int hash_give_range(struct src_hash *h, const struct src_blob *b, uint64_t off, size_t len,
			   const struct hash_dest *o)
{
	const struct src_hashes *hs = b->hashes;
	uint8_t *tmp = NULL;
	uint64_t c, c1;
	int r = 0;

	if (!hs->chunk_size) {
		msg_set(o->msg, "%s: its chunk-hash list has chunks of 0 bytes", b->url);
		return -EIO;
	}
	c1 = (off + len - 1) / hs->chunk_size;
	for (c = off / hs->chunk_size; r == 0 && c <= c1; c++) {
		uint64_t a = c * hs->chunk_size, from = a > off ? a : off;
		uint64_t to = a + hs->chunk_size < off + len ? a + hs->chunk_size : off + len;
		struct hash_kept *slot = NULL;
		int kept = KEPT_NONE;
		uint8_t *data;
		size_t clen = 0;

		if (hs->chunk_size <= HASH_KEPT_MAX) {
			pthread_mutex_lock(&h->lock);
			kept = hash_kept_claim(h, hs->id, c, (size_t)(to - a), &slot);
			pthread_mutex_unlock(&h->lock);
		}
		if (kept == KEPT_READY) {
			data = slot->data;
		} else {
			/* The chunk is read into its slot, the one copy kept for the next reads. */
			data = slot ? slot->data : tmp;
			if (!data && !(data = tmp = malloc(hs->chunk_size)))
				r = -ENOMEM;
			if (r == 0)
				r = hash_chunk(h, b, c, data, &clen, o->msg);
			if (r == 0 && to - a > clen) {
				msg_set(o->msg, "%s: chunk %llu is shorter than the range read",
					b->url, (unsigned long long)c);
				r = -EIO;
			}
			if (slot) {
				pthread_mutex_lock(&h->lock);
				hash_kept_finish(h, slot, r, clen);
				pthread_mutex_unlock(&h->lock);
			}
		}
		if (r == 0)
			r = hash_give(o, from, data + (from - a), (size_t)(to - from));
		if (slot) {
			pthread_mutex_lock(&h->lock);
			slot->readers--;
			pthread_mutex_unlock(&h->lock);
		}
	}
	free(tmp);
	return r;
}

static int hash_read(struct src *src, const struct src_blob *b, uint64_t off, size_t len,
		     uint8_t *buf, char **ret_msg)
{
	struct src_hash *h = (struct src_hash *)src;
	struct hash_dest o = {.buf = buf, .off = off, .msg = ret_msg};

	if (!b->hashes || len == 0)
		return src_read(h->lower, b, off, len, buf, ret_msg);
	return hash_give_range(h, b, off, len, &o);
}

/* A checked blob's bytes go up from the checked chunks, as read's do; others stream from below. */
static int hash_stream(struct src *src, const struct src_blob *b, uint64_t off, size_t len,
		       src_sink_fn sink, void *arg, char **ret_msg)
{
	struct src_hash *h = (struct src_hash *)src;
	struct hash_dest o = {.off = off, .sink = sink, .arg = arg, .msg = ret_msg};

	if (!b->hashes || len == 0)
		return src_stream(h->lower, b, off, len, sink, arg, ret_msg);
	return hash_give_range(h, b, off, len, &o);
}

static int hash_size(struct src *src, const struct src_blob *b, uint64_t *ret_size, char **ret_msg)
{
	return src_size(((struct src_hash *)src)->lower, b, ret_size, ret_msg);
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
	.stream = hash_stream,
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
