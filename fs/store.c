/*
 * store.c - the read path above the source layers (see store.h): objects
 * (one per file version), decryption, the plaintext cache and read-ahead.
 *
 * Plaintext cache: one locked slab of memory_cache bytes cut into 64 KiB
 * units. A unit is FREE (on the LRU, in no hash chain), LOADING (in the
 * hash, refs >= 1: its loader holds one), READY (in the hash; on the LRU
 * exactly when refs == 0) or FAILED (in the hash until its last reference
 * goes, never found by new lookups). A miss claims the least recently used
 * unreferenced unit, marks it LOADING, drops the lock, fetches and
 * decrypts, relocks, marks it READY or FAILED and wakes the waiters; other
 * readers of the same unit take a reference and wait instead of fetching
 * again. Eviction only ever takes units with refs == 0, so bytes handed to
 * a reader stay put until it releases them.
 *
 * Locking: st->lock guards the units, the hash, the LRU, the object table
 * and every object's refs, opens and prep state, and the job
 * queue; it is never held across I/O or decryption (st->buf_lock guards
 * only the run-sized ciphertext buffers: the kept ones and the count handed
 * out). An object's prepared fields (url,
 * blob, small part, header, key) are written only by the thread that moved
 * prep to LOADING and read only while prep is READY and opens > 0; the
 * last close wipes a format-2 key under st->lock. A handle's
 * read-ahead state is guarded by its own h->lock, an object's
 * whole-file checksum by its o->sha_lock (hashing happens under it, never
 * under st->lock).
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "crypto/crypto.h"
#include "fs/log.h"
#include "fs/names.h"
#include "fs/store.h"

#define STORE_RUN_MAX 16	     /* units per range request (1 MiB) */
#define STORE_RA_JOB 16		     /* units per read-ahead job: one range request */
#define STORE_RA_MIN (256 * 1024)    /* first read-ahead window */
#define STORE_RA_SLACK (1024 * 1024) /* reordering still counted as sequential */
#define STORE_WORKERS 4
#define STORE_JOBS_MAX 64
#define STORE_READ_MAX (16u * 1024 * 1024)
#define STORE_MIN_UNITS 64     /* 4 MiB: room for every thread's units */
#define STORE_SHA_WAIT_MS 1000 /* how long an early read waits for its turn */
#define STORE_SHA_FLY 32       /* reads in flight that an early read can wait for */
#define STORE_SHA_GRACE_MS 50  /* for the read before it to arrive, when none is in flight */
#define STORE_WRAPPED_MAX 1024
#define STORE_FAIL_HOLD_MS 1000 /* a failed fill answers new reads at once for this long */
/*
 * Ciphertext buffers of one run (STORE_RUN_MAX units, their tags or the
 * block before them, and slack), kept between fills: a fresh buffer of
 * this size is a new mapping whose every page faults in and is zeroed.
 */
#define STORE_BUF_SIZE (STORE_RUN_MAX * STORE_UNIT + 8192)
#define STORE_BUFS_KEPT 6
/*
 * Buffers of that size in use at once, kept ones included: fills past it
 * wait for one, so that sixteen readers missing at once (each miss a 1 MiB
 * kernel request) do not each hold a megabyte of their own.
 */
#define STORE_BUFS_MAX 10
/* Smaller runs (a reader's own misses, many readers at once) get buffers of their size. */
#define STORE_BUF_SMALL (4 * STORE_UNIT)
#define STORE_KEY_DOC_MAX (64 * 1024) /* a kept key document, read back */
#define STORE_KEYS_DIR "keys"	      /* under state_dir */

enum {
	UNIT_FREE,
	UNIT_LOADING,
	UNIT_READY,
	UNIT_FAILED
};
enum {
	PREP_NONE,
	PREP_LOADING,
	PREP_READY
};

struct store_unit {
	uint64_t obj_id;
	uint64_t idx;
	int state;
	int err;
	unsigned refs;
	int on_lru;
	size_t len;
	uint8_t *data; /* STORE_UNIT bytes of the slab */
	struct store_unit *hnext;
	struct store_unit *lprev, *lnext;
};

struct store_obj {
	struct store_obj *next; /* the table */
	int in_table;
	unsigned refs;
	unsigned opens; /* handles and read-ahead jobs */
	int prep;
	uint64_t id;
	struct catalog_entry e; /* own copy */

	/* prepared (see the locking rules above) */
	char *url;
	char cache_id[33];
	struct src_blob blob;
	uint64_t size;	/* plaintext */
	uint8_t *small; /* format 1: E[0:n], locked memory */
	size_t small_len;
	struct f2_header hdr; /* format 2 */
	uint8_t *key;	      /* format 2: K, locked memory, while opens > 0 */

	/* format 1 with a catalog sha256: the plaintext's prefix hashed so far */
	pthread_mutex_t sha_lock;
	pthread_cond_t sha_cond;
	struct crypto_sha256 *sha; /* NULL: nothing to check */
	uint64_t sha_next;
	int sha_state;
	/* reads in flight while the check runs: [off, end) each, or end 0 */
	struct {
		uint64_t off, end;
	} sha_fly[STORE_SHA_FLY];
	uint64_t sha_stuck; /* 1 + a prefix end that no read came to extend; 0: none */

	/* the last failed fill (under st->lock): see store_units_get */
	int64_t fail_ms;
	int fail_err;
};

enum {
	SHA_RUNNING,
	SHA_GOOD,
	SHA_BAD
};

struct store_job {
	struct store_job *next;
	struct store_obj *o;
	uint64_t first;
	size_t n;
};

struct store {
	const struct config *c;
	struct fetch *f;
	struct session *s;
	struct device *d;
	struct src *src;
	uint8_t *rkey; /* format 1 resource key, locked memory */
	uint64_t ra_max;
	unsigned timeout_s;

	pthread_mutex_t lock;
	pthread_cond_t cond; /* unit state changes, freed units, prep, jobs */
	uint8_t *slab;
	struct store_unit *units;
	size_t n_units;
	struct store_unit **hash;
	size_t hash_mask;
	struct store_unit *lru_head, *lru_tail;
	unsigned slot_waiters;
	struct store_obj *objs;
	uint64_t next_id;
	struct store_job *jobs, *jobs_tail;
	unsigned n_jobs;
	int stop;
	pthread_t workers[STORE_WORKERS];
	unsigned n_workers;
	unsigned n_handles; /* open store_files; atomic, no lock */

	struct store_stats stats; /* atomic adds only, no lock */

	pthread_mutex_t buf_lock; /* the run-sized buffers only */
	pthread_cond_t buf_cond;
	uint8_t *bufs[STORE_BUFS_KEPT];
	unsigned n_bufs;
	unsigned bufs_out; /* handed out, not yet put back */
};

struct store_file {
	struct store *st;
	struct store_obj *o;
	pthread_mutex_t lock;
	uint64_t next_off; /* where a sequential reader reads next */
	uint64_t seq;	   /* bytes read sequentially so far */
	uint64_t ra_until; /* read-ahead issued up to here */
};

/* ---- small functions ----------------------------------------------------------------- */

#define STORE_COUNT(st, field, n) __atomic_fetch_add(&(st)->stats.field, (n), __ATOMIC_RELAXED)

/* The source layers' read, counted for /metrics. */
static int store_src_read(struct store *st, const struct src_blob *b, uint64_t off, size_t len,
			  uint8_t *buf)
{
	int r = src_read(st->src, b, off, len, buf);

	STORE_COUNT(st, fetches, 1);
	if (r < 0)
		STORE_COUNT(st, fetch_errors, 1);
	else
		STORE_COUNT(st, fetch_bytes, len);
	return r;
}

/* Makes the source layers forget what they keep of a range (a failed check). */
static void store_src_drop(struct store *st, const struct src_blob *b, uint64_t off, size_t len)
{
	src_drop(st->src, b, off, len);
}

/* A ciphertext buffer of at least len bytes; release it with store_buf_put. */
static uint8_t *store_buf_get(struct store *st, size_t len)
{
	uint8_t *b = NULL;

	if (len <= STORE_BUF_SMALL || len > STORE_BUF_SIZE)
		return malloc(len);
	pthread_mutex_lock(&st->buf_lock);
	while (!st->n_bufs && st->bufs_out >= STORE_BUFS_MAX)
		pthread_cond_wait(&st->buf_cond, &st->buf_lock);
	b = st->n_bufs ? st->bufs[--st->n_bufs] : malloc(STORE_BUF_SIZE);
	if (b)
		st->bufs_out++;
	pthread_mutex_unlock(&st->buf_lock);
	return b;
}

/* Keeps a buffer of store_buf_get(len) for the next fill, or frees it. */
static void store_buf_put(struct store *st, uint8_t *b, size_t len)
{
	if (b && len > STORE_BUF_SMALL && len <= STORE_BUF_SIZE) {
		pthread_mutex_lock(&st->buf_lock);
		st->bufs_out--;
		if (st->n_bufs < STORE_BUFS_KEPT) {
			st->bufs[st->n_bufs++] = b;
			b = NULL;
		}
		pthread_cond_signal(&st->buf_cond);
		pthread_mutex_unlock(&st->buf_lock);
	}
	free(b);
}

static int64_t store_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void store_deadline(struct store *st, struct timespec *ts)
{
	clock_gettime(CLOCK_MONOTONIC, ts);
	ts->tv_sec += st->timeout_s;
}

/* A lower layer's errno as a reader should see it. */
static int store_reader_errno(int r)
{
	switch (r) {
	case 0:
	case -EACCES:
	case -ENOENT:
	case -ETIMEDOUT:
	case -ENOMEM:
		return r;
	default:
		return -EIO;
	}
}

static char *store_big_url(const char *base, const char *folder, const char *name)
{
	char *ef = names_url_escape(folder), *en = names_url_escape(name), *url = NULL;

	if (ef && en && asprintf(&url, "%s/%s/%s.big", base, ef, en) < 0)
		url = NULL;
	free(ef);
	free(en);
	return url;
}

/* ---- the plaintext cache ------------------------------------------------------ */

static size_t store_hash_slot(struct store *st, uint64_t id, uint64_t idx)
{
	uint64_t h = (id * 0x9E3779B97F4A7C15ull) ^ (idx * 0xC2B2AE3D27D4EB4Full);

	return (size_t)(h ^ (h >> 29)) & st->hash_mask;
}

static struct store_unit *store_unit_find(struct store *st, uint64_t id, uint64_t idx)
{
	struct store_unit *u;

	for (u = st->hash[store_hash_slot(st, id, idx)]; u; u = u->hnext)
		if (u->obj_id == id && u->idx == idx && u->state != UNIT_FAILED)
			return u;
	return NULL;
}

static void store_hash_del(struct store *st, struct store_unit *u)
{
	struct store_unit **pp = &st->hash[store_hash_slot(st, u->obj_id, u->idx)];

	while (*pp && *pp != u)
		pp = &(*pp)->hnext;
	if (*pp)
		*pp = u->hnext;
	u->hnext = NULL;
}

static void store_lru_del(struct store *st, struct store_unit *u)
{
	if (!u->on_lru)
		return;
	if (u->lprev)
		u->lprev->lnext = u->lnext;
	else
		st->lru_head = u->lnext;
	if (u->lnext)
		u->lnext->lprev = u->lprev;
	else
		st->lru_tail = u->lprev;
	u->lprev = u->lnext = NULL;
	u->on_lru = 0;
}

static void store_lru_add(struct store *st, struct store_unit *u, int at_tail)
{
	if (at_tail) {
		u->lprev = st->lru_tail;
		u->lnext = NULL;
		if (st->lru_tail)
			st->lru_tail->lnext = u;
		else
			st->lru_head = u;
		st->lru_tail = u;
	} else {
		u->lnext = st->lru_head;
		u->lprev = NULL;
		if (st->lru_head)
			st->lru_head->lprev = u;
		else
			st->lru_tail = u;
		st->lru_head = u;
	}
	u->on_lru = 1;
}

static void store_unit_ref(struct store *st, struct store_unit *u)
{
	if (u->refs++ == 0)
		store_lru_del(st, u);
}

static void store_unit_unref(struct store *st, struct store_unit *u)
{
	if (--u->refs > 0)
		return;
	if (u->state == UNIT_READY) {
		store_lru_add(st, u, 1);
	} else {
		store_hash_del(st, u);
		u->state = UNIT_FREE;
		store_lru_add(st, u, 0);
	}
	if (st->slot_waiters)
		pthread_cond_broadcast(&st->cond);
}

/* The least recently used free unit, LOADING for (id, idx); NULL when none. */
static struct store_unit *store_unit_claim(struct store *st, uint64_t id, uint64_t idx)
{
	struct store_unit *u = st->lru_head;

	if (!u)
		return NULL;
	store_lru_del(st, u);
	if (u->state != UNIT_FREE)
		store_hash_del(st, u);
	u->obj_id = id;
	u->idx = idx;
	u->state = UNIT_LOADING;
	u->err = 0;
	u->len = 0;
	u->refs = 1;
	u->hnext = st->hash[store_hash_slot(st, id, idx)];
	st->hash[store_hash_slot(st, id, idx)] = u;
	return u;
}

/* ---- decryption: filling units ------------------------------------------------- */

/* Reads E[off, off + len) of a format-1 file: the small part, then the big part. */
static int store_f1_read_e(struct store *st, struct store_obj *o, uint64_t off, size_t len,
			   uint8_t *buf)
{
	size_t n = o->small_len, k = 0;

	if (off < n) {
		k = (size_t)(n - off) < len ? (size_t)(n - off) : len;
		memcpy(buf, o->small + off, k);
	}
	if (k == len)
		return 0;
	return store_src_read(st, &o->blob, off + k - n, len - k, buf + k);
}

static int store_fill_f1(struct store *st, struct store_obj *o, uint64_t first, size_t n,
			 struct store_unit **u)
{
	uint64_t p1 = (first + n) * STORE_UNIT < o->size ? (first + n) * STORE_UNIT : o->size;
	uint64_t j0 = first * STORE_UNIT / CRYPTO_BLOCK,
		 j1 = (p1 + CRYPTO_BLOCK - 1) / CRYPTO_BLOCK;
	size_t clen = (size_t)(j1 - j0) * CRYPTO_BLOCK + CRYPTO_BLOCK;
	uint8_t *buf;
	int r;

	buf = store_buf_get(st, clen);
	if (!buf)
		return -ENOMEM;
	r = store_f1_read_e(st, o, j0 * CRYPTO_BLOCK, clen, buf);
	/* An answer for other bytes (a wrong Content-Range) may not repeat. */
	if (r == -EPROTO)
		r = store_f1_read_e(st, o, j0 * CRYPTO_BLOCK, clen, buf);
	for (size_t i = 0; r == 0 && i < n; i++) {
		uint64_t q0 = (first + i) * STORE_UNIT;
		uint64_t q1 = q0 + STORE_UNIT < o->size ? q0 + STORE_UNIT : o->size;
		uint64_t a = q0 / CRYPTO_BLOCK, b = (q1 + CRYPTO_BLOCK - 1) / CRYPTO_BLOCK;

		r = f1_decrypt_blocks(st->rkey, buf + (a - j0) * CRYPTO_BLOCK,
				      (size_t)(b - a) * CRYPTO_BLOCK + CRYPTO_BLOCK, u[i]->data);
		if (r < 0) {
			log_err("%s: decrypting blocks %llu..%llu failed: %s", o->e.name,
				(unsigned long long)a, (unsigned long long)b, strerror(-r));
			r = -EIO;
		}
		u[i]->len = (size_t)(q1 - q0);
	}
	store_buf_put(st, buf, clen);
	return r;
}

static int store_fill_f2(struct store *st, struct store_obj *o, uint64_t first, size_t n,
			 struct store_unit **u)
{
	const struct f2_header *h = &o->hdr;
	uint64_t cs = f2_chunk_size(h), count = f2_chunk_count(h), c0, c1, off0, off1;
	uint8_t *buf, *tmp = NULL;
	int r, retried = 0;

	if (cs <= STORE_UNIT) {
		uint64_t per = STORE_UNIT / cs;

		c0 = first * per;
		c1 = (first + n) * per < count ? (first + n) * per : count;
	} else {
		uint64_t k = cs / STORE_UNIT;

		c0 = first / k;
		c1 = (first + n - 1) / k + 1;
		tmp = secmem_alloc(cs);
		if (!tmp)
			return -ENOMEM;
	}
	off0 = f2_chunk_offset(h, c0);
	off1 = f2_chunk_offset(h, c1 - 1) + f2_chunk_plain_len(h, c1 - 1) + CRYPTO_TAG_SIZE;
	buf = store_buf_get(st, off1 - off0);
	if (!buf) {
		secmem_free(tmp);
		return -ENOMEM;
	}
	r = store_src_read(st, &o->blob, off0, off1 - off0, buf);
again:
	for (uint64_t c = c0; r == 0 && c < c1; c++) {
		uint64_t plen = f2_chunk_plain_len(h, c), p0 = c * cs;
		const uint8_t *ct = buf + (f2_chunk_offset(h, c) - off0);

		if (!tmp) {
			uint64_t ui = p0 / STORE_UNIT - first;

			r = f2_open_chunk(o->key, h, c, ct, plen + CRYPTO_TAG_SIZE,
					  u[ui]->data + p0 % STORE_UNIT);
		} else {
			r = f2_open_chunk(o->key, h, c, ct, plen + CRYPTO_TAG_SIZE, tmp);
			/* Copy out the units of this chunk that this run fills. */
			for (size_t i = 0; r == 0 && i < n; i++) {
				uint64_t q0 = (first + i) * STORE_UNIT;

				if (q0 >= p0 && q0 < p0 + plen)
					memcpy(u[i]->data, tmp + (q0 - p0),
					       p0 + plen - q0 < STORE_UNIT ? p0 + plen - q0
									   : STORE_UNIT);
			}
		}
		if (r < 0) {
			log_err("%s: chunk %llu fails its check (%s): tampered, truncated or "
				"not this file's%s",
				o->e.name, (unsigned long long)c, strerror(-r),
				retried ? "" : "; reading it again");
			r = -EBADMSG;
		}
	}
	/*
	 * A flipped bit on the way or in cache_dir, or an answer for other
	 * bytes, may not repeat: forget what the disk cache holds of the range
	 * and read it once more. No plaintext of a failed check is ever kept.
	 */
	if ((r == -EBADMSG || r == -EPROTO) && !retried) {
		retried = 1;
		store_src_drop(st, &o->blob, off0, off1 - off0);
		r = store_src_read(st, &o->blob, off0, off1 - off0, buf);
		goto again;
	}
	if (r == -EBADMSG)
		r = -EIO;
	for (size_t i = 0; i < n; i++) {
		uint64_t q0 = (first + i) * STORE_UNIT;

		u[i]->len = o->size - q0 < STORE_UNIT ? (size_t)(o->size - q0) : STORE_UNIT;
	}
	store_buf_put(st, buf, off1 - off0);
	secmem_free(tmp);
	return r;
}

static int store_fill(struct store *st, struct store_obj *o, uint64_t first, size_t n,
		      struct store_unit **u)
{
	int r = o->e.format == 2 ? store_fill_f2(st, o, first, n, u)
				 : store_fill_f1(st, o, first, n, u);

	return store_reader_errno(r);
}

/*
 * Fills the units this thread claimed (mine[i]), merging neighbours into
 * runs of at most STORE_RUN_MAX, then marks them READY or FAILED.
 * Called and returns with st->lock held; drops it meanwhile.
 */
static void store_fill_claimed(struct store *st, struct store_obj *o, uint64_t first, size_t n,
			       struct store_unit **u, uint8_t *mine)
{
	int *res = NULL;
	size_t i, j;

	pthread_mutex_unlock(&st->lock);
	res = calloc(n, sizeof(*res));
	for (i = 0; i < n; i = j) {
		int r;

		if (!mine[i]) {
			j = i + 1;
			continue;
		}
		for (j = i + 1; j < n && mine[j] && j - i < STORE_RUN_MAX; j++)
			;
		r = res ? store_fill(st, o, first + i, j - i, u + i) : -ENOMEM;
		if (res)
			for (size_t k = i; k < j; k++)
				res[k] = r;
	}
	pthread_mutex_lock(&st->lock);
	for (i = 0; i < n; i++) {
		if (!mine[i])
			continue;
		u[i]->err = res ? res[i] : -ENOMEM;
		u[i]->state = u[i]->err ? UNIT_FAILED : UNIT_READY;
		if (u[i]->err && u[i]->err != -ENOMEM) {
			o->fail_ms = store_now_ms();
			o->fail_err = u[i]->err;
		}
		mine[i] = 0;
	}
	free(res);
	pthread_cond_broadcast(&st->cond);
}

/*
 * Takes a reference to units first .. first + n - 1 of o, READY, filling
 * the missing ones and waiting for the ones others load, until deadline.
 *
 * A fill of o that failed (its cause logged) answers for a moment: a read
 * that starts within STORE_FAIL_HOLD_MS of it, and a read waiting for
 * units that others load when a fill fails meanwhile, get its error at
 * once. Else the kernel, which retries a failed read-ahead page by page,
 * and readers queued behind a dead CDN would each wait io_timeout anew.
 */
static int store_units_get(struct store *st, struct store_obj *o, uint64_t first, size_t n,
			   struct store_unit **u, const struct timespec *deadline)
{
	int64_t start = store_now_ms();
	uint8_t *mine;
	int r = 0;

	mine = calloc(n, 1);
	if (!mine)
		return -ENOMEM;
	pthread_mutex_lock(&st->lock);
	if (o->fail_err && start - o->fail_ms < STORE_FAIL_HOLD_MS) {
		r = o->fail_err;
		pthread_mutex_unlock(&st->lock);
		free(mine);
		return r;
	}
	for (;;) {
		size_t missing = 0, claimed = 0, loading = 0;

		for (size_t i = 0; i < n; i++) {
			if (u[i])
				continue;
			u[i] = store_unit_find(st, o->id, first + i);
			if (u[i]) {
				store_unit_ref(st, u[i]);
				STORE_COUNT(st, cache_hits, 1);
				continue;
			}
			u[i] = store_unit_claim(st, o->id, first + i);
			if (u[i]) {
				mine[i] = 1;
				claimed++;
				STORE_COUNT(st, cache_misses, 1);
			} else {
				missing++;
			}
		}
		if (claimed) {
			store_fill_claimed(st, o, first, n, u, mine);
			continue;
		}
		for (size_t i = 0; i < n; i++) {
			if (!u[i])
				continue;
			if (u[i]->state == UNIT_FAILED) {
				r = u[i]->err;
				break;
			}
			loading += u[i]->state == UNIT_LOADING;
		}
		if (r || (!missing && !loading))
			break;
		if (missing)
			st->slot_waiters++;
		r = pthread_cond_timedwait(&st->cond, &st->lock, deadline);
		if (missing)
			st->slot_waiters--;
		if (r == ETIMEDOUT) {
			log_err("%s: no answer within io_timeout (%u s)%s", o->e.name,
				st->timeout_s, missing ? "; the plaintext cache is full" : "");
			r = -ETIMEDOUT;
			break;
		}
		r = 0;
		if (loading && o->fail_err && o->fail_ms >= start) {
			r = o->fail_err;
			break;
		}
	}
	if (r) {
		for (size_t i = 0; i < n; i++) {
			if (u[i])
				store_unit_unref(st, u[i]);
			u[i] = NULL;
		}
	}
	pthread_mutex_unlock(&st->lock);
	free(mine);
	return r;
}

/* ---- objects --------------------------------------------------------------------- */

static void store_obj_free(struct store_obj *o)
{
	crypto_sha256_free(o->sha);
	pthread_cond_destroy(&o->sha_cond);
	pthread_mutex_destroy(&o->sha_lock);
	free(o->e.name);
	free(o->e.updated);
	free(o->url);
	secmem_free(o->small);
	secmem_free(o->key);
	free(o);
}

/* Under st->lock. */
static void store_obj_put_locked(struct store_obj *o)
{
	if (--o->refs == 0)
		store_obj_free(o);
}

/* Under st->lock: the table's object for this version of e, with a reference. */
static struct store_obj *store_obj_get_locked(struct store *st, const struct catalog_entry *e)
{
	struct store_obj **pp, *o;

	for (pp = &st->objs; (o = *pp); pp = &o->next) {
		if (strcmp(o->e.name, e->name) != 0)
			continue;
		if (catalog_entry_same(&o->e, e)) {
			o->refs++;
			return o;
		}
		/* A new version: the old one lives on for its open handles only. */
		*pp = o->next;
		o->in_table = 0;
		store_obj_put_locked(o);
		break;
	}
	o = calloc(1, sizeof(*o));
	if (!o)
		return NULL;
	pthread_mutex_init(&o->sha_lock, NULL);
	pthread_cond_init(&o->sha_cond, NULL);
	o->e = *e;
	o->e.name = strdup(e->name);
	o->e.updated = e->updated ? strdup(e->updated) : NULL;
	if (e->format == 1 && e->has_sha256)
		o->sha = crypto_sha256_new();
	if (!o->e.name || (e->updated && !o->e.updated) ||
	    (e->format == 1 && e->has_sha256 && !o->sha)) {
		store_obj_free(o);
		return NULL;
	}
	o->id = ++st->next_id;
	o->refs = 2; /* the table's and the caller's */
	o->in_table = 1;
	o->next = st->objs;
	st->objs = o;
	return o;
}

/* Under st->lock: wipes a format-2 key; the next open prepares the object again. */
static void store_obj_wipe_locked(struct store_obj *o)
{
	secmem_free(o->key);
	o->key = NULL;
	o->prep = PREP_NONE;
}

/* Under st->lock: one user more (a handle or a read-ahead job). */
static void store_obj_open_locked(struct store_obj *o)
{
	o->opens++;
}

/*
 * Under st->lock: one user fewer. The last one wipes a format-2 key
 * (tpm.md: kept while the file is in use); the next open unwraps it again.
 */
static void store_obj_close_locked(struct store_obj *o)
{
	if (--o->opens > 0 || o->e.format != 2 || o->prep != PREP_READY)
		return;
	store_obj_wipe_locked(o);
}

/* The big part's URL and size, and the CDN's keys, into o. */
static int store_obj_locate(struct store *st, struct store_obj *o)
{
	struct session_cdn cdn;
	int r;

	r = session_cdn(st->s, &cdn);
	if (r < 0) {
		log_err("%s: no CDN address: cdn_url is not set and cdn.yaml is not known "
			"(not logged in)",
			o->e.name);
		return -EACCES;
	}
	if (!o->url) {
		o->url = store_big_url(cdn.url, st->c->folder, o->e.name);
		if (!o->url)
			return -ENOMEM;
	}
	o->blob.url = o->url;
	o->blob.s3 = cdn.s3;
	o->blob.size = o->e.big_size;
	if (!o->blob.size) {
		r = fetch_cdn_size(st->f, o->url, cdn.s3, &o->blob.size);
		if (r < 0) {
			log_err("%s: the size of its big part is unknown: %s", o->e.name,
				strerror(-r));
			return store_reader_errno(r);
		}
	}
	return 0;
}

/*
 * Names the big part's blocks in cache_dir. Not by URL, so that the cache
 * still serves when the CDN's address changes or it is down; mark (the
 * small part, whose IV is random, or the format-2 file_id) makes every
 * publication's name new.
 */
static void store_obj_cache_id(struct store *st, struct store_obj *o, const void *mark,
			       size_t mark_len)
{
	struct crypto_sha256 *h = crypto_sha256_new();
	uint8_t d[32];
	char size[24];

	if (!h) {
		o->blob.cache_id = NULL;
		return;
	}
	snprintf(size, sizeof(size), "%llu", (unsigned long long)o->blob.size);
	crypto_sha256_update(h, st->c->folder, strlen(st->c->folder) + 1);
	crypto_sha256_update(h, o->e.name, strlen(o->e.name) + 1);
	crypto_sha256_update(h, size, strlen(size) + 1);
	crypto_sha256_update(h, mark, mark_len);
	crypto_sha256_final(h, d);
	crypto_sha256_free(h);
	crypto_hex(d, 16, o->cache_id);
	o->blob.cache_id = o->cache_id;
}

static int store_prepare_f1(struct store *st, struct store_obj *o)
{
	char *small_name = NULL;
	uint8_t last[32];
	uint64_t e_size;
	int r;

	r = store_obj_locate(st, o);
	if (r < 0)
		return r;
	if (o->small)
		return 0;
	if (asprintf(&small_name, "%s.small", o->e.name) < 0)
		return -ENOMEM;
	r = session_get_resource(st->s, st->c->folder, small_name, &o->small, &o->small_len);
	free(small_name);
	if (r < 0) {
		if (r == -ENOKEY)
			log_err("%s: not logged in (no credentials): its small part is out of "
				"reach",
				o->e.name);
		else
			log_err("%s: cannot get its small part: %s", o->e.name, strerror(-r));
		return r == -ENOKEY ? -EACCES : store_reader_errno(r);
	}
	e_size = o->small_len + o->blob.size;
	if (o->small_len != f1_small_size(e_size) || e_size % CRYPTO_BLOCK || e_size < 32) {
		log_err("%s: a small part of %zu bytes does not fit a big part of %llu bytes",
			o->e.name, o->small_len, (unsigned long long)o->blob.size);
		r = -EIO;
		goto err;
	}
	store_obj_cache_id(st, o, o->small, o->small_len);
	if (o->e.has_size) {
		o->size = o->e.size;
		if (f1_cipher_size(o->size) != e_size) {
			log_err("%s: the catalog's size %llu does not match its parts", o->e.name,
				(unsigned long long)o->size);
			r = -EIO;
			goto err;
		}
		return 0;
	}
	r = store_f1_read_e(st, o, e_size - 32, 32, last);
	if (r == 0)
		r = f1_plain_size(st->rkey, last, e_size, &o->size);
	if (r < 0) {
		log_err("%s: cannot derive its size: %s", o->e.name, strerror(-r));
		r = store_reader_errno(r);
		goto err;
	}
	return 0;
err:
	secmem_free(o->small);
	o->small = NULL;
	return r;
}

int store_parse_key_doc(json_t *doc, char ret_file_id[2 * F2_FILE_ID_SIZE + 1], uint8_t *wrapped,
			size_t cap, size_t *ret_len)
{
	const char *fid, *wk;
	size_t wlen;

	fid = json_string_value(json_object_get(doc, "file_id"));
	wk = json_string_value(json_object_get(doc, "wrapped_key"));
	if (!fid || !wk || !json_is_integer(json_object_get(doc, "format")) ||
	    json_integer_value(json_object_get(doc, "format")) != 2 ||
	    strlen(fid) != 2 * F2_FILE_ID_SIZE ||
	    strspn(fid, "0123456789abcdefABCDEF") != 2 * F2_FILE_ID_SIZE ||
	    crypto_b64_decode(wk, strlen(wk), wrapped, cap, &wlen) < 0 || wlen == 0)
		return -EBADMSG;
	memcpy(ret_file_id, fid, 2 * F2_FILE_ID_SIZE + 1);
	*ret_len = wlen;
	return 0;
}

/*
 * Format-2 small parts are kept in state_dir/keys, one file per folder,
 * name and device, so that a model read before still opens while the API
 * is out of reach. They are useless off this TPM. An answer of the API
 * that the key is gone (404: revoked, republished elsewhere) removes the
 * copy; only an API out of reach makes the copy serve.
 */
static char *store_key_path(struct store *st, const char *name, const char *device)
{
	struct crypto_sha256 *h = crypto_sha256_new();
	char hex[33], *p = NULL;
	uint8_t d[32];

	if (!h)
		return NULL;
	crypto_sha256_update(h, st->c->folder, strlen(st->c->folder) + 1);
	crypto_sha256_update(h, name, strlen(name) + 1);
	crypto_sha256_update(h, device, strlen(device) + 1);
	crypto_sha256_final(h, d);
	crypto_sha256_free(h);
	crypto_hex(d, 16, hex);
	if (asprintf(&p, "%s/%s/%s.json", st->c->state_dir, STORE_KEYS_DIR, hex) < 0)
		return NULL;
	return p;
}

/*
 * Whether the document kept at path is for the same file and device as
 * doc. The API wraps the key anew for every answer (RSA-OAEP is
 * randomised), and any of its wrappings serves the same.
 */
static int store_key_same(const char *path, json_t *doc)
{
	static const char *const fields[] = {"file_id", "device_id"};
	struct stat sb;
	json_t *kept;
	int same = 1;

	if (stat(path, &sb) < 0 || !S_ISREG(sb.st_mode) || sb.st_size > STORE_KEY_DOC_MAX)
		return 0;
	kept = json_load_file(path, JSON_REJECT_DUPLICATES, NULL);
	if (!kept)
		return 0;
	for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++) {
		const char *a = json_string_value(json_object_get(kept, fields[i]));
		const char *b = json_string_value(json_object_get(doc, fields[i]));

		if (!a || !b || strcasecmp(a, b) != 0)
			same = 0;
	}
	if (!json_is_string(json_object_get(kept, "wrapped_key")))
		same = 0;
	json_decref(kept);
	return same;
}

static void store_key_save(struct store *st, const char *name, const char *device, json_t *doc)
{
	char *path = store_key_path(st, name, device), *dir = NULL, *tmp = NULL, *text = NULL;
	size_t len;
	int fd = -1;

	if (!path || asprintf(&dir, "%s/%s", st->c->state_dir, STORE_KEYS_DIR) < 0 ||
	    asprintf(&tmp, "%s.tmp", path) < 0)
		goto out;
	text = json_dumps(doc, JSON_COMPACT);
	if (!text || (mkdir(dir, 0700) < 0 && errno != EEXIST))
		goto out;
	/* Every open brings the document: an fsync per open would hold up each first read. */
	if (store_key_same(path, doc))
		goto out;
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd < 0)
		goto fail;
	len = strlen(text);
	if (write(fd, text, len) != (ssize_t)len || fsync(fd) < 0) {
		close(fd);
		goto fail;
	}
	if (close(fd) < 0 || rename(tmp, path) < 0)
		goto fail;
	goto out;
fail:
	log_warn("%s: cannot keep its key document in %s: %s", name, dir, strerror(errno));
	unlink(tmp);
out:
	free(text);
	free(tmp);
	free(dir);
	free(path);
}

static json_t *store_key_load(struct store *st, const char *name, const char *device)
{
	char *path = store_key_path(st, name, device);
	json_t *doc = NULL;
	struct stat sb;

	if (path && stat(path, &sb) == 0 && S_ISREG(sb.st_mode) && sb.st_size <= STORE_KEY_DOC_MAX)
		doc = json_load_file(path, JSON_REJECT_DUPLICATES, NULL);
	free(path);
	return doc;
}

static void store_key_forget(struct store *st, const char *name, const char *device)
{
	char *path = store_key_path(st, name, device);

	if (path && unlink(path) == 0)
		log_info("%s: the API no longer gives its key; the kept copy is removed", name);
	free(path);
}

/*
 * The TPM's unwrap takes as long as the header's CDN read; each runs in its
 * own thread at open, so that the first byte waits for the slower only.
 */
struct store_unwrap {
	struct device *d;
	const uint8_t *wrapped;
	size_t wlen;
	uint8_t *key; /* CRYPTO_KEY_SIZE, locked */
	size_t klen;
	int r;
};

static void *store_unwrap_main(void *arg)
{
	struct store_unwrap *u = arg;

	u->r = device_unwrap(u->d, u->wrapped, u->wlen, u->key, CRYPTO_KEY_SIZE, &u->klen);
	return NULL;
}

static int store_prepare_f2(struct store *st, struct store_obj *o)
{
	char id[160], file_id[2 * F2_FILE_ID_SIZE + 1], fid[2 * F2_FILE_ID_SIZE + 1];
	uint8_t raw[F2_HEADER_SIZE], wrapped[STORE_WRAPPED_MAX];
	struct store_unwrap unwrap = {.d = st->d, .wrapped = wrapped};
	pthread_t unwrapper;
	int r, kept = 0, threaded = 0;
	json_t *doc = NULL;

	r = store_obj_locate(st, o);
	if (r < 0)
		return r;
	r = device_id(st->d, id, sizeof(id));
	if (r < 0) {
		log_err("%s: format 2 needs an enrolled TPM device, and this one is not",
			o->e.name);
		return -EACCES;
	}
	r = session_device_key(st->s, st->c->folder, o->e.name, id, &doc);
	if (r == -ENOENT)
		store_key_forget(st, o->e.name, id);
	if (r < 0 && r != -ENOENT && r != -EACCES) {
		doc = store_key_load(st, o->e.name, id);
		if (doc) {
			log_info("%s: the API is out of reach (%s): using its key document kept "
				 "in state_dir",
				 o->e.name, strerror(-r));
			kept = 1;
			r = 0;
		}
	}
	if (r < 0) {
		log_err("%s: cannot get its key for device %s: %s", o->e.name, id, strerror(-r));
		return r == -ENOKEY || r == -ENOENT ? -EACCES : store_reader_errno(r);
	}
	if (store_parse_key_doc(doc, fid, wrapped, sizeof(wrapped), &unwrap.wlen) < 0) {
		log_err("%s: the %s key document is malformed", o->e.name, kept ? "kept" : "API's");
		r = -EIO;
		goto out;
	}
	store_obj_cache_id(st, o, fid, strlen(fid));
	unwrap.key = secmem_alloc(CRYPTO_KEY_SIZE);
	if (!unwrap.key) {
		r = -ENOMEM;
		goto out;
	}
	threaded = pthread_create(&unwrapper, NULL, store_unwrap_main, &unwrap) == 0;
	if (!threaded)
		store_unwrap_main(&unwrap);
	/* A header that fails a check is read once more, as chunks are (store_fill_f2). */
	for (int retried = 0;; retried = 1) {
		const char *again = retried ? "" : "; reading it again";

		r = store_src_read(st, &o->blob, 0, F2_HEADER_SIZE, raw);
		if (r == 0)
			r = f2_header_parse(raw, &o->hdr);
		if (r < 0) {
			log_err("%s: cannot read its header: %s%s", o->e.name, strerror(-r),
				r == -EBADMSG || r == -EPROTO ? again : "");
		} else {
			crypto_hex(o->hdr.file_id, F2_FILE_ID_SIZE, file_id);
			if (strcasecmp(file_id, fid) != 0) {
				log_err("%s: the key is for file %s, the big part is file %s%s",
					o->e.name, fid, file_id, again);
				r = -EBADMSG;
			} else if ((o->e.has_size && o->hdr.size != o->e.size) ||
				   f2_big_size(&o->hdr) != o->blob.size) {
				log_err("%s: the header's sizes do not match the catalog's or the "
					"big part's%s",
					o->e.name, again);
				r = -EBADMSG;
			}
		}
		if (r == 0 || retried || (r != -EBADMSG && r != -EPROTO))
			break;
		store_src_drop(st, &o->blob, 0, F2_HEADER_SIZE);
	}
	if (threaded)
		pthread_join(unwrapper, NULL);
	if (r < 0) {
		r = store_reader_errno(r);
		goto out;
	}
	r = unwrap.r;
	if (r == 0 && unwrap.klen != CRYPTO_KEY_SIZE) {
		log_err("%s: the unwrapped key has %zu bytes", o->e.name, unwrap.klen);
		r = -EIO;
	}
	if (r < 0)
		goto out;
	o->size = o->hdr.size;
	o->key = unwrap.key;
	unwrap.key = NULL;
	if (!kept)
		store_key_save(st, o->e.name, id, doc);
out:
	secmem_free(unwrap.key);
	json_decref(doc);
	return r;
}

/* ---- handles and reads --------------------------------------------------------- */

int store_open(struct store *st, const struct catalog_entry *e, struct store_file **ret)
{
	struct store_file *h;
	struct store_obj *o;
	struct timespec dl;
	int r;

	h = calloc(1, sizeof(*h));
	if (!h)
		return -ENOMEM;
	h->st = st;
	pthread_mutex_init(&h->lock, NULL);
	store_deadline(st, &dl);
	/* Preparing may take two API calls and a CDN read. */
	dl.tv_sec += st->timeout_s;

	pthread_mutex_lock(&st->lock);
	o = store_obj_get_locked(st, e);
	if (!o) {
		pthread_mutex_unlock(&st->lock);
		r = -ENOMEM;
		goto err;
	}
	while (o->prep == PREP_LOADING) {
		if (pthread_cond_timedwait(&st->cond, &st->lock, &dl) == ETIMEDOUT) {
			log_err("%s: opening took longer than io_timeout", e->name);
			store_obj_put_locked(o);
			pthread_mutex_unlock(&st->lock);
			r = -ETIMEDOUT;
			goto err;
		}
	}
	if (o->prep == PREP_NONE) {
		o->prep = PREP_LOADING;
		pthread_mutex_unlock(&st->lock);
		r = o->e.format == 2 ? store_prepare_f2(st, o) : store_prepare_f1(st, o);
		pthread_mutex_lock(&st->lock);
		o->prep = r == 0 ? PREP_READY : PREP_NONE;
		pthread_cond_broadcast(&st->cond);
		if (r < 0) {
			store_obj_put_locked(o);
			pthread_mutex_unlock(&st->lock);
			goto err;
		}
	}
	store_obj_open_locked(o);
	__atomic_add_fetch(&st->n_handles, 1, __ATOMIC_RELAXED);
	pthread_mutex_unlock(&st->lock);
	h->o = o;
	STORE_COUNT(st, opens, 1);
	*ret = h;
	return 0;
err:
	STORE_COUNT(st, opens, 1);
	STORE_COUNT(st, open_errors, 1);
	pthread_mutex_destroy(&h->lock);
	free(h);
	return r;
}

void store_close(struct store_file *h)
{
	struct store *st;

	if (!h)
		return;
	st = h->st;
	pthread_mutex_lock(&st->lock);
	store_obj_close_locked(h->o);
	store_obj_put_locked(h->o);
	__atomic_sub_fetch(&st->n_handles, 1, __ATOMIC_RELAXED);
	pthread_mutex_unlock(&st->lock);
	pthread_mutex_destroy(&h->lock);
	free(h);
}

/* Queues read-ahead of units first .. first + n - 1; drops it when the queue is full. */
static int store_queue_job(struct store *st, struct store_obj *o, uint64_t first, size_t n)
{
	struct store_job *j;

	if (!st->n_workers)
		return -EAGAIN;
	j = calloc(1, sizeof(*j));
	if (!j)
		return -ENOMEM;
	j->first = first;
	j->n = n;
	j->o = o;
	pthread_mutex_lock(&st->lock);
	if (st->stop || st->n_jobs >= STORE_JOBS_MAX || o->prep != PREP_READY) {
		pthread_mutex_unlock(&st->lock);
		free(j);
		return -EAGAIN;
	}
	o->refs++;
	store_obj_open_locked(o);
	if (st->jobs_tail)
		st->jobs_tail->next = j;
	else
		st->jobs = j;
	st->jobs_tail = j;
	st->n_jobs++;
	pthread_cond_broadcast(&st->cond);
	pthread_mutex_unlock(&st->lock);
	return 0;
}

/*
 * Read-ahead for a sequential reader: the window ahead is as large as what
 * it has read in order so far (at least STORE_RA_MIN, at most ra_max), so a
 * short read costs little and a stream soon runs at full width.
 */
static void store_readahead(struct store_file *h, uint64_t off, size_t len)
{
	struct store *st = h->st;
	uint64_t end = off + len, size = h->o->size, win, target, from, cap;
	unsigned readers = __atomic_load_n(&st->n_handles, __ATOMIC_RELAXED);
	int seq;

	pthread_mutex_lock(&h->lock);
	seq = off + STORE_RA_SLACK >= h->next_off && off <= h->next_off + STORE_RA_SLACK;
	if (seq) {
		h->seq += len;
	} else {
		h->seq = len;
		h->ra_until = 0;
	}
	if (end > h->next_off || h->seq == len)
		h->next_off = end;
	/* A read elsewhere than the start may be random: wait for the next to tell. */
	if (!seq && off) {
		pthread_mutex_unlock(&h->lock);
		return;
	}
	/* Open files share the cache: read-ahead evicted unread is read twice. */
	cap = st->n_units * STORE_UNIT / 2 / (readers ? readers : 1);
	if (cap > st->ra_max)
		cap = st->ra_max;
	if (cap < STORE_RA_MIN)
		cap = STORE_RA_MIN;
	win = h->seq < STORE_RA_MIN ? STORE_RA_MIN : h->seq;
	if (win > cap)
		win = cap;
	target = end + win < size ? end + win : size;
	from = h->ra_until > end ? h->ra_until : end;
	/* Issue in batches of at least half a window, or the file's rest. */
	if (from >= target || (target - from < win / 2 && target != size)) {
		pthread_mutex_unlock(&h->lock);
		return;
	}
	h->ra_until = target;
	pthread_mutex_unlock(&h->lock);

	for (uint64_t u = from / STORE_UNIT, last = (target - 1) / STORE_UNIT; u <= last;) {
		size_t n = last - u + 1 < STORE_RA_JOB ? (size_t)(last - u + 1) : STORE_RA_JOB;

		if (store_queue_job(st, h->o, u, n) < 0)
			break;
		u += n;
	}
}

/*
 * Under o->sha_lock: whether a read in flight other than slot covers the
 * end of the prefix, so that waiting for it can let a later read in.
 */
static int store_sha_filler(const struct store_obj *o, int slot)
{
	for (int i = 0; i < STORE_SHA_FLY; i++)
		if (i != slot && o->sha_fly[i].end && o->sha_fly[i].off <= o->sha_next &&
		    o->sha_next < o->sha_fly[i].end)
			return 1;
	return 0;
}

/* Under o->sha_lock: the read of slot is no longer in flight. */
static void store_sha_end_locked(struct store_obj *o, int slot)
{
	if (slot >= 0 && slot < STORE_SHA_FLY)
		o->sha_fly[slot].end = 0;
	pthread_cond_broadcast(&o->sha_cond);
}

/*
 * Feeds a read into the whole-file check of o. The object, not the handle,
 * keeps the hashed prefix: with the kernel's page cache in between, one
 * pass over the file may arrive through several opens. A read that starts
 * past the prefix waits while a read in flight covers the prefix's end
 * (parallel FUSE threads deliver neighbours out of order), or briefly for
 * one to arrive, else it is left out: pages the kernel keeps are not read
 * again, so waiting long for a gap that no read is filling would only
 * stall the reader. -EIO for
 * the read that completes a mismatching file, and for every read after.
 * Ends the read's mark (store_sha_begin).
 */
static int store_check_sha(struct store_obj *o, uint64_t off, const struct store_read *rd, int slot)
{
	struct timespec dl, grace;
	uint64_t skip;
	uint8_t d[32];
	int r = 0;

	clock_gettime(CLOCK_REALTIME, &dl);
	grace = dl;
	dl.tv_sec += STORE_SHA_WAIT_MS / 1000;
	grace.tv_nsec += STORE_SHA_GRACE_MS * 1000000L;
	if (grace.tv_nsec >= 1000000000L) {
		grace.tv_sec++;
		grace.tv_nsec -= 1000000000L;
	}
	pthread_mutex_lock(&o->sha_lock);
	while (o->sha_state == SHA_RUNNING && off > o->sha_next &&
	       off - o->sha_next <= STORE_RA_SLACK) {
		int filler = store_sha_filler(o, slot);

		/* A gap that one grace period did not fill is not waited for again. */
		if (!filler && o->sha_stuck == o->sha_next + 1)
			break;
		if (pthread_cond_timedwait(&o->sha_cond, &o->sha_lock, filler ? &dl : &grace) ==
		    ETIMEDOUT) {
			if (!store_sha_filler(o, slot))
				o->sha_stuck = o->sha_next + 1;
			break;
		}
	}
	store_sha_end_locked(o, slot);
	if (o->sha_state == SHA_BAD) {
		pthread_mutex_unlock(&o->sha_lock);
		return -EIO;
	}
	if (o->sha_state != SHA_RUNNING || off > o->sha_next || off + rd->len <= o->sha_next) {
		pthread_mutex_unlock(&o->sha_lock);
		return 0;
	}
	skip = o->sha_next - off;
	for (int i = 0; i < rd->iovcnt; i++) {
		size_t n = rd->iov[i].iov_len;

		if (skip >= n) {
			skip -= n;
			continue;
		}
		crypto_sha256_update(o->sha, (uint8_t *)rd->iov[i].iov_base + skip, n - skip);
		skip = 0;
	}
	o->sha_next = off + rd->len;
	if (o->sha_next == o->size) {
		crypto_sha256_final(o->sha, d);
		if (crypto_memcmp(d, o->e.sha256, 32) != 0) {
			log_err("%s: the plaintext's sha256 differs from the catalog's", o->e.name);
			o->sha_state = SHA_BAD;
			r = -EIO;
		} else {
			o->sha_state = SHA_GOOD;
		}
	}
	pthread_mutex_unlock(&o->sha_lock);
	return r;
}

/*
 * Marks the read of [off, off + len) in flight for store_check_sha: 0 when
 * the check does not apply, else 1 + its slot (STORE_SHA_FLY: in flight
 * unmarked, when every slot is taken).
 */
static int store_sha_begin(struct store_obj *o, uint64_t off, size_t len)
{
	int slot = 0;

	if (!o->sha)
		return 0;
	pthread_mutex_lock(&o->sha_lock);
	if (o->sha_state != SHA_GOOD) {
		while (slot < STORE_SHA_FLY && o->sha_fly[slot].end)
			slot++;
		if (slot < STORE_SHA_FLY) {
			o->sha_fly[slot].off = off;
			o->sha_fly[slot].end = off + len;
		}
		slot++;
	}
	pthread_mutex_unlock(&o->sha_lock);
	return slot;
}

static void store_sha_abort(struct store_obj *o, int slot)
{
	pthread_mutex_lock(&o->sha_lock);
	store_sha_end_locked(o, slot);
	pthread_mutex_unlock(&o->sha_lock);
}

int store_read(struct store_file *h, uint64_t off, size_t len, struct store_read *ret)
{
	struct store *st = h->st;
	struct store_obj *o = h->o;
	struct store_unit **u;
	struct timespec dl;
	uint64_t first, n;
	size_t done = 0;
	int r, check;

	memset(ret, 0, sizeof(*ret));
	ret->st = st;
	if (off >= o->size || len == 0)
		return 0;
	if (len > o->size - off)
		len = (size_t)(o->size - off);
	if (len > STORE_READ_MAX)
		len = STORE_READ_MAX;
	first = off / STORE_UNIT;
	n = (off + len - 1) / STORE_UNIT - first + 1;
	u = calloc(n, sizeof(*u));
	ret->iov = calloc(n, sizeof(*ret->iov));
	if (!u || !ret->iov) {
		free(u);
		free(ret->iov);
		ret->iov = NULL;
		return -ENOMEM;
	}
	store_readahead(h, off, len);
	store_deadline(st, &dl);
	check = store_sha_begin(o, off, len);
	STORE_COUNT(st, reads, 1);
	r = store_units_get(st, o, first, n, u, &dl);
	if (r < 0) {
		STORE_COUNT(st, read_errors, 1);
		if (check)
			store_sha_abort(o, check - 1);
		free(u);
		free(ret->iov);
		ret->iov = NULL;
		return r;
	}
	ret->units = (void **)u;
	ret->n_units = n;
	for (uint64_t i = 0; i < n && done < len; i++) {
		size_t skip = i == 0 ? (size_t)(off % STORE_UNIT) : 0;
		size_t take = u[i]->len > skip ? u[i]->len - skip : 0;

		if (take > len - done)
			take = len - done;
		ret->iov[ret->iovcnt].iov_base = u[i]->data + skip;
		ret->iov[ret->iovcnt].iov_len = take;
		ret->iovcnt++;
		done += take;
	}
	ret->len = done;
	if (check) {
		r = store_check_sha(o, off, ret, check - 1);
		if (r < 0) {
			STORE_COUNT(st, read_errors, 1);
			store_read_release(ret);
			return r;
		}
	}
	STORE_COUNT(st, read_bytes, done);
	return 0;
}

void store_stats(struct store *st, struct store_stats *ret)
{
	const uint64_t *from = (const uint64_t *)&st->stats;
	uint64_t *to = (uint64_t *)ret;

	for (size_t i = 0; i < sizeof(*ret) / sizeof(uint64_t); i++)
		to[i] = __atomic_load_n(&from[i], __ATOMIC_RELAXED);
	ret->cache_units = st->n_units;
}

void store_read_release(struct store_read *r)
{
	struct store_unit **u = (struct store_unit **)r->units;

	if (u) {
		pthread_mutex_lock(&r->st->lock);
		for (size_t i = 0; i < r->n_units; i++)
			store_unit_unref(r->st, u[i]);
		pthread_mutex_unlock(&r->st->lock);
	}
	free(u);
	free(r->iov);
	memset(r, 0, sizeof(*r));
}

/* ---- read-ahead workers ----------------------------------------------------------- */

/* Fills the units of a job that nobody has or loads; never waits for room. */
static void store_run_job(struct store *st, struct store_job *j)
{
	struct store_unit *u[STORE_RA_JOB] = {0};
	uint8_t mine[STORE_RA_JOB] = {0};
	uint64_t n = j->n;
	size_t claimed = 0;

	if (j->first * STORE_UNIT >= j->o->size)
		return;
	if ((j->first + n - 1) * STORE_UNIT >= j->o->size)
		n = (j->o->size - 1) / STORE_UNIT - j->first + 1;
	pthread_mutex_lock(&st->lock);
	for (size_t i = 0; i < n; i++) {
		if (store_unit_find(st, j->o->id, j->first + i))
			continue;
		u[i] = store_unit_claim(st, j->o->id, j->first + i);
		if (!u[i])
			break;
		mine[i] = 1;
		claimed++;
	}
	if (claimed) {
		store_fill_claimed(st, j->o, j->first, n, u, mine);
		for (size_t i = 0; i < n; i++)
			if (u[i])
				store_unit_unref(st, u[i]);
	}
	pthread_mutex_unlock(&st->lock);
}

static void *store_worker(void *arg)
{
	struct store *st = arg;

	pthread_mutex_lock(&st->lock);
	for (;;) {
		struct store_job *j;

		while (!st->stop && !st->jobs)
			pthread_cond_wait(&st->cond, &st->lock);
		if (st->stop)
			break;
		j = st->jobs;
		st->jobs = j->next;
		if (!st->jobs)
			st->jobs_tail = NULL;
		st->n_jobs--;
		pthread_mutex_unlock(&st->lock);
		store_run_job(st, j);
		pthread_mutex_lock(&st->lock);
		store_obj_close_locked(j->o);
		store_obj_put_locked(j->o);
		free(j);
	}
	pthread_mutex_unlock(&st->lock);
	return NULL;
}

int store_start(struct store *st)
{
	for (unsigned i = 0; i < STORE_WORKERS; i++) {
		int r = pthread_create(&st->workers[i], NULL, store_worker, st);

		if (r) {
			log_warn("read-ahead: only %u workers: %s", i, strerror(r));
			break;
		}
		st->n_workers++;
	}
	return st->n_workers ? 0 : -EAGAIN;
}

/* ---- probing the big part for the catalog ------------------------------------------- */

/* |E| for a big part of big bytes: |E| - min(3072, floor(0.3 |E|)) = big. */
static int store_f1_e_size(uint64_t big, uint64_t *ret)
{
	for (uint64_t e = (big + 15) / 16 * 16; e <= big + 3072 + 16; e += 16) {
		if (e >= 32 && e - f1_small_size(e) == big) {
			*ret = e;
			return 0;
		}
	}
	return -EPROTO;
}

int store_probe(void *arg, struct catalog_entry *e)
{
	struct store *st = arg;
	struct session_cdn cdn;
	uint8_t raw[F2_HEADER_SIZE], last[32];
	uint64_t big, e_size;
	char *url;
	size_t got;
	int r;

	r = session_cdn(st->s, &cdn);
	if (r < 0)
		return r;
	url = store_big_url(cdn.url, st->c->folder, e->name);
	if (!url)
		return -ENOMEM;
	r = fetch_cdn_size(st->f, url, cdn.s3, &big);
	if (r < 0)
		goto out;
	if (e->format != 1 && big >= F2_HEADER_SIZE) {
		struct f2_header h;

		r = fetch_cdn_range(st->f, url, cdn.s3, 0, sizeof(raw), raw, &got, NULL);
		if (r == 0 && got == sizeof(raw) && f2_header_parse(raw, &h) == 0 &&
		    f2_big_size(&h) == big) {
			e->format = 2;
			e->size = h.size;
			goto done;
		}
		if (r < 0)
			goto out;
	}
	if (e->format == 2) {
		r = -EPROTO;
		goto out;
	}
	e->format = 1;
	r = store_f1_e_size(big, &e_size);
	if (r < 0)
		goto out;
	if (big >= 32) {
		r = fetch_cdn_range(st->f, url, cdn.s3, big - 32, 32, last, &got, NULL);
		if (r == 0 && got != 32)
			r = -EIO;
	} else {
		/* A tiny file: its last block begins in the small part. */
		struct fetch_buf b = {0};
		uint8_t *small = NULL;
		size_t small_len = 0;
		char *small_name = NULL;

		r = asprintf(&small_name, "%s.small", e->name) < 0 ? -ENOMEM : 0;
		if (r == 0)
			r = session_get_resource(st->s, st->c->folder, small_name, &small,
						 &small_len);
		free(small_name);
		b.data = malloc(big ? big : 1);
		if (r == 0 && !b.data)
			r = -ENOMEM;
		if (r == 0 && big)
			r = fetch_cdn_range(st->f, url, cdn.s3, 0, big, b.data, &got, NULL);
		if (r == 0 && small_len + big != e_size)
			r = -EPROTO;
		if (r == 0) {
			size_t from_small = 32 - big;

			memcpy(last, small + small_len - from_small, from_small);
			memcpy(last + from_small, b.data, big);
		}
		free(b.data);
		secmem_free(small);
	}
	if (r == 0)
		r = f1_plain_size(st->rkey, last, e_size, &e->size);
	if (r < 0)
		goto out;
done:
	e->big_size = big;
	e->has_size = 1;
out:
	free(url);
	return r;
}

/* ---- the store ------------------------------------------------------------------------ */

/* The format-1 resource key: the TPM's sealed secret first, then the configuration. */
static int store_resource_key(struct store *st)
{
	char *secret = NULL, *msg = NULL;
	size_t len;
	int r;

	st->rkey = secmem_alloc(CRYPTO_KEY_SIZE);
	if (!st->rkey)
		return -errno;
	if (st->d && device_resource_secret(st->d, &secret, &len) == 0) {
		f1_aes_key(secret, len, st->rkey);
		secmem_free(secret);
		return 0;
	}
	r = config_resource_key(st->c, st->rkey, &msg);
	if (r < 0) {
		log_err("%s", msg ? msg : strerror(-r));
		free(msg);
	}
	return r;
}

int store_new(const struct config *c, struct fetch *f, struct session *s, struct device *d,
	      struct store **ret)
{
	struct src *cdn = NULL;
	pthread_condattr_t ca;
	struct store *st;
	size_t nb;
	int r;

	st = calloc(1, sizeof(*st));
	if (!st)
		return -ENOMEM;
	st->c = c;
	st->f = f;
	st->s = s;
	st->d = d;
	st->timeout_s = c->io_timeout ? c->io_timeout : 1;
	pthread_mutex_init(&st->lock, NULL);
	pthread_mutex_init(&st->buf_lock, NULL);
	pthread_cond_init(&st->buf_cond, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&st->cond, &ca);
	pthread_condattr_destroy(&ca);

	r = store_resource_key(st);
	if (r < 0)
		goto err;
	st->n_units = c->memory_cache / STORE_UNIT;
	if (st->n_units < STORE_MIN_UNITS) {
		log_warn("memory_cache: raised to the minimum of %d KiB",
			 STORE_MIN_UNITS * STORE_UNIT / 1024);
		st->n_units = STORE_MIN_UNITS;
	}
	st->slab = secmem_alloc(st->n_units * STORE_UNIT);
	if (!st->slab) {
		r = -errno;
		log_err("memory_cache: cannot lock %zu MiB of memory: %s (RLIMIT_MEMLOCK?)",
			st->n_units * STORE_UNIT >> 20, strerror(-r));
		goto err;
	}
	st->units = calloc(st->n_units, sizeof(*st->units));
	for (nb = 1; nb < 2 * st->n_units; nb <<= 1)
		;
	st->hash = calloc(nb, sizeof(*st->hash));
	if (!st->units || !st->hash) {
		r = -ENOMEM;
		goto err;
	}
	st->hash_mask = nb - 1;
	for (size_t i = 0; i < st->n_units; i++) {
		st->units[i].data = st->slab + i * STORE_UNIT;
		store_lru_add(st, &st->units[i], 1);
	}
	st->ra_max = c->readahead_max;
	if (st->ra_max > st->n_units * STORE_UNIT / 4)
		st->ra_max = st->n_units * STORE_UNIT / 4;

	r = src_cdn_new(f, &cdn);
	if (r < 0)
		goto err;
	if (c->cache_dir && *c->cache_dir && c->cache_max > 0) {
		r = src_disk_new(c->cache_dir, c->cache_max, cdn, &st->src);
		if (r < 0) {
			log_warn("cache_dir %s unusable (%s): reading without a disk cache",
				 c->cache_dir, strerror(-r));
			st->src = cdn;
		}
	} else {
		st->src = cdn;
	}
	*ret = st;
	return 0;
err:
	src_free(cdn);
	store_free(st);
	return r;
}

void store_free(struct store *st)
{
	struct store_obj *o, *next;

	if (!st)
		return;
	pthread_mutex_lock(&st->lock);
	st->stop = 1;
	pthread_cond_broadcast(&st->cond);
	pthread_mutex_unlock(&st->lock);
	for (unsigned i = 0; i < st->n_workers; i++)
		pthread_join(st->workers[i], NULL);
	while (st->jobs) {
		struct store_job *j = st->jobs;

		st->jobs = j->next;
		store_obj_close_locked(j->o);
		store_obj_put_locked(j->o);
		free(j);
	}
	for (o = st->objs; o; o = next) {
		next = o->next;
		store_obj_put_locked(o);
	}
	src_free(st->src);
	secmem_free(st->slab);
	secmem_free(st->rkey);
	free(st->units);
	free(st->hash);
	pthread_cond_destroy(&st->cond);
	pthread_mutex_destroy(&st->lock);
	while (st->n_bufs)
		free(st->bufs[--st->n_bufs]);
	pthread_mutex_destroy(&st->buf_lock);
	pthread_cond_destroy(&st->buf_cond);
	free(st);
}
