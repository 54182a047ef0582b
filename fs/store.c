/*
 * store.c - the read path's objects and read-ahead (see store.h): one
 * object per file version, prepared once (prep.h: its key material, head
 * and checks), filled into the plaintext cache (ucache) by decrypting what
 * the source stack (src) gives, and read ahead by a small pool of workers.
 * Nothing here knows a format: each object reaches its own through its
 * table (format.h).
 *
 * Locking: st->lock guards the object table, every object's refs, opens
 * and prep state, and the job queue; it is never held across I/O or
 * decryption. The cache has its own lock (ucache.c), which st->lock is
 * never held with. An object's prepared file (o->pf) is written only by
 * the thread that moved prep to LOADING and read only while prep is READY
 * and opens > 0; the last close closes a format-2 file (its key) under
 * st->lock. A handle's read-ahead state is guarded by its own h->lock.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "fs/format.h"
#include "fs/log.h"
#include "fs/msg.h"
#include "fs/prep.h"
#include "fs/probe.h"
#include "fs/store.h"
#include "fs/ucache.h"

#define STORE_RUN_MAX 16	     /* units per range request (1 MiB) */
#define STORE_RA_JOB 16		     /* units per read-ahead job: one range request */
#define STORE_RA_MIN (256 * 1024)    /* first read-ahead window */
#define STORE_RA_SLACK (1024 * 1024) /* reordering still counted as sequential */
#define STORE_WORKERS 4
#define STORE_JOBS_MAX 64
#define STORE_READ_MAX (16u * 1024 * 1024)
#define STORE_MIN_UNITS 64	/* 4 MiB: room for every thread's units */
#define STORE_FAIL_HOLD_MS 1000 /* a failed fill answers new reads at once for this long */

enum {
	PREP_NONE,
	PREP_LOADING,
	PREP_READY
};

struct store_obj {
	struct store_obj *next; /* the table */
	int in_table;
	unsigned refs;
	unsigned opens; /* handles and read-ahead jobs */
	int prep;
	uint64_t id;
	struct catalog_entry e; /* own copy */
	/* prepared (prep.h; see the locking rules above) */
	struct prep_file pf;

	/* when the last user of a prepared file key left (monotonic ms); 0: in use */
	int64_t idle_ms;

	/* the last failed fill, under the cache's lock (ucache.h) */
	struct ucache_fail fail;
	/* and its words (for readers that waited for it), under st->lock */
	char *fail_msg;
	int64_t fail_msg_ms;
};

struct store_job {
	struct store_job *next;
	struct store_obj *o;
	uint64_t first;
	size_t n;
};

struct store {
	struct prep_env env; /* the configuration, the source stack, the key source */
	struct ucache *cache;
	size_t n_units;
	uint64_t ra_max;
	unsigned timeout_s;

	pthread_mutex_t lock;
	pthread_cond_t cond; /* prep, jobs */
	struct store_obj *objs;
	uint64_t next_id;
	struct store_job *jobs, *jobs_tail;
	unsigned n_jobs;
	int stop;
	pthread_t workers[STORE_WORKERS];
	unsigned n_workers;
	pthread_t reaper; /* wipes file keys key_ttl after their last close */
	int has_reaper;
	pthread_cond_t reap_cond;
	unsigned n_handles; /* open store_files; atomic, no lock */
	char **unchecked;   /* names served without any check, under lock */
	size_t n_unchecked;

	struct store_stats stats; /* atomic adds only, no lock */
};

struct store_file {
	struct store *st;
	struct store_obj *o;
	pthread_mutex_t lock;
	uint64_t next_off; /* where a sequential reader reads next */
	uint64_t seq;	   /* bytes read sequentially so far */
	uint64_t ra_until; /* read-ahead issued up to here */
};

/* What a fill of the cache needs: the object and its store. */
struct store_fill_ctx {
	struct store *st;
	struct store_obj *o;
};

/* ---- small functions ----------------------------------------------------------------- */

#define STORE_COUNT(st, field, n) __atomic_fetch_add(&(st)->stats.field, (n), __ATOMIC_RELAXED)

/* Where a streamed fill's bytes go: the format's decryptor, and a count. */
struct store_sink {
	const struct format_ops *fmt;
	struct format_dec *dec;
	size_t bytes;
};

static int store_sink_take(void *arg, const uint8_t *data, size_t len)
{
	struct store_sink *k = arg;

	k->bytes += len;
	return k->fmt->dec_update(k->dec, data, len);
}

/*
 * Decrypts plaintext [p0, p1) of o into data from its ciphertext
 * [c0, c1) as the sources hand it on (format.h, dec_new): the bytes are
 * opened where they arrive, in libcurl's buffer or cache_dir's staging,
 * with no fill buffer between. 0 or a negative errno with *ret_msg: the
 * decryptor's failure (*ret_opened set) before the sources'.
 */
static int store_fill_stream(struct store *st, struct store_obj *o, uint64_t p0, uint64_t p1,
			     uint64_t c0, uint64_t c1, uint8_t *const *data, char **ret_msg,
			     int *ret_opened)
{
	struct store_sink k = {.fmt = o->pf.fmt};
	size_t n = o->pf.prefix_len, len = (size_t)(c1 - c0), pre = 0;
	char *src_msg = NULL;
	int r, rd;

	r = o->pf.fmt->dec_new(o->pf.ff, p0, (size_t)(p1 - p0), data, STORE_UNIT, &k.dec);
	if (r < 0)
		return r;
	if (c0 < n) {
		pre = (size_t)(n - c0) < len ? (size_t)(n - c0) : len;
		r = o->pf.fmt->dec_update(k.dec, o->pf.prefix + c0, pre);
	}
	if (r == 0 && pre < len)
		r = src_stream(st->env.src, &o->pf.blob, c0 + pre - n, len - pre, store_sink_take,
			       &k, &src_msg);
	if (pre < len) {
		STORE_COUNT(st, fetches, 1);
		if (r < 0)
			STORE_COUNT(st, fetch_errors, 1);
		STORE_COUNT(st, fetch_bytes, k.bytes);
	}
	rd = o->pf.fmt->dec_end(k.dec, ret_msg);
	*ret_opened = rd == -EBADMSG || rd == -EPROTO;
	/* The sources' failure, unless the bytes that came failed first. */
	if (r < 0 && !*ret_opened) {
		free(*ret_msg);
		*ret_msg = src_msg;
		return r;
	}
	free(src_msg);
	return rd;
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

/* ---- decryption: filling units --------------------------------------------------- */

/*
 * Keeps a failed fill's words on the object, for the reader whose fill it
 * was and the readers that waited for it (read-ahead's too).
 */
static void store_fill_failed(struct store *st, struct store_obj *o, const char *msg, int r)
{
	char *copy = strdup(msg_or(msg, r));

	log_debug("%s: a fill failed: %s", o->e.name, msg_or(msg, r));
	pthread_mutex_lock(&st->lock);
	free(o->fail_msg);
	o->fail_msg = copy;
	o->fail_msg_ms = store_now_ms();
	pthread_mutex_unlock(&st->lock);
}

/*
 * ucache_fill_fn: reads the ciphertext that units first .. first + n - 1
 * need and decrypts it into them. A range that fails its check (a flipped
 * bit on the way or in cache_dir, an answer for other bytes) may not
 * repeat: what the disk cache holds of it is forgotten and it is read once
 * more (an event logged here). No plaintext of a failed check is ever
 * kept. A fill that fails leaves its words on the object.
 */
static int store_fill(void *arg, uint64_t first, size_t n, uint8_t *const *data, size_t *lens)
{
	struct store_fill_ctx *ctx = arg;
	struct store *st = ctx->st;
	struct store_obj *o = ctx->o;
	uint64_t p0 = first * STORE_UNIT, p1, c0, c1;
	int r = 0;

	p1 = (first + n) * STORE_UNIT < o->pf.size ? (first + n) * STORE_UNIT : o->pf.size;
	if (p0 < p1)
		o->pf.fmt->span(o->pf.ff, p0, (size_t)(p1 - p0), &c0, &c1);
	for (int retried = 0; p0 < p1; retried = 1) {
		char *msg = NULL;
		int opened = 0, again;

		/* -EBADMSG from the sources (not opened): their own check failed twice already. */
		r = store_fill_stream(st, o, p0, p1, c0, c1, data, &msg, &opened);
		/* Bytes for another range (-EPROTO) are read once more too. */
		again = r < 0 && (opened || r == -EPROTO) && !retried;
		if (again) {
			/* An event no caller sees: the read goes on. */
			log_warn("%s: %s; reading it again", o->e.name, msg_or(msg, r));
			free(msg);
			prep_drop_stream(&st->env, &o->pf, c0, (size_t)(c1 - c0));
			continue;
		}
		if (r < 0)
			store_fill_failed(st, o, msg, r);
		free(msg);
		break;
	}
	for (size_t i = 0; i < n; i++) {
		uint64_t q0 = (first + i) * STORE_UNIT;

		lens[i] = q0 >= o->pf.size		 ? 0
			  : o->pf.size - q0 < STORE_UNIT ? (size_t)(o->pf.size - q0)
							 : STORE_UNIT;
	}
	return r == -EBADMSG ? r : prep_reader_errno(r);
}

/*
 * Takes units first .. first + n - 1 of o from the cache, filling the
 * missing ones, until deadline. On failure *ret_msg says why: this
 * reader's fill's words, or those of the fill it waited for.
 */
static int store_units_get(struct store *st, struct store_obj *o, uint64_t first, size_t n,
			   struct ucache_unit **u, const struct timespec *deadline, char **ret_msg)
{
	struct store_fill_ctx ctx = {st, o};
	int64_t start = store_now_ms();
	char *msg = NULL;
	int r;

	r = ucache_get(st->cache, o->id, first, n, u, store_fill, &ctx, &o->fail, deadline);
	if (r < 0 && r != -ENOBUFS) {
		pthread_mutex_lock(&st->lock);
		/* Its own fill's, or one it waited for, or one held from just before (ucache.h). */
		if (o->fail_msg && o->fail_msg_ms >= start - STORE_FAIL_HOLD_MS)
			msg = strdup(o->fail_msg);
		pthread_mutex_unlock(&st->lock);
	}
	if (r == -EBADMSG)
		r = -EIO; /* bytes that failed their check */
	if ((r == -ETIMEDOUT && !msg) || r == -ENOBUFS) {
		msg_set(&msg, "no answer within io_timeout (%u s)%s", st->timeout_s,
			r == -ENOBUFS ? "; the plaintext cache is full" : "");
		r = -ETIMEDOUT;
	}
	if (ret_msg)
		*ret_msg = msg;
	else
		free(msg);
	return r;
}

/* ---- objects --------------------------------------------------------------------- */

/* Under st->lock, or with the object out of every other thread's reach. */
static void store_obj_unprepare(struct store_obj *o)
{
	prep_close(&o->pf);
	o->prep = PREP_NONE;
}

static void store_obj_free(struct store_obj *o)
{
	prep_free(&o->pf);
	free(o->fail_msg);
	free(o->e.name);
	free(o->e.updated);
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
	o->e = *e;
	o->e.name = strdup(e->name);
	o->e.updated = e->updated ? strdup(e->updated) : NULL;
	o->pf.fmt = format_get(e->format);
	if (!o->e.name || (e->updated && !o->e.updated)) {
		store_obj_free(o);
		return NULL;
	}
	o->id = ++st->next_id;
	o->pf.id = o->id;
	o->refs = 2; /* the table's and the caller's */
	o->in_table = 1;
	o->next = st->objs;
	st->objs = o;
	return o;
}

/* Under st->lock: one user more (a handle or a read-ahead job). */
static void store_obj_open_locked(struct store_obj *o)
{
	o->opens++;
	o->idle_ms = 0;
}

/*
 * Under st->lock: one user fewer. After the last one a file's own key
 * (format 2; docs/tpm.md) stays key_ttl seconds, for a reopening to need
 * no unwrap, then the reaper wipes it (at once with key_ttl 0, or before
 * the reaper runs); the next open unwraps it again. A shared key (format
 * 1's) stays with its object.
 */
static void store_obj_close_locked(struct store *st, struct store_obj *o)
{
	if (--o->opens > 0 || !o->pf.fmt || !o->pf.fmt->file_key || o->prep != PREP_READY)
		return;
	if (st->env.c->key_ttl == 0 || !st->has_reaper) {
		store_obj_unprepare(o);
		return;
	}
	o->idle_ms = store_now_ms();
}

/* Records name among the files served without any check (GET /status), once. */
static void store_mark_unchecked(struct store *st, const char *name)
{
	char **grown, *copy;
	int found = 0;

	pthread_mutex_lock(&st->lock);
	for (size_t i = 0; i < st->n_unchecked && !found; i++)
		found = strcmp(st->unchecked[i], name) == 0;
	if (!found) {
		grown = realloc(st->unchecked, (st->n_unchecked + 1) * sizeof(*grown));
		copy = strdup(name);
		if (grown)
			st->unchecked = grown;
		if (grown && copy)
			st->unchecked[st->n_unchecked++] = copy;
		else
			free(copy);
	}
	pthread_mutex_unlock(&st->lock);
	if (!found)
		log_warn("%s: served unchecked: the API holds no chunk hashes for it and the "
			 "catalog no sha256 (docs/trust.md)",
			 name);
}

int store_unchecked(struct store *st, char ***ret, size_t *ret_n)
{
	char **names;
	size_t n;
	int r = 0;

	pthread_mutex_lock(&st->lock);
	n = st->n_unchecked;
	names = calloc(n + 1, sizeof(*names));
	for (size_t i = 0; names && i < n; i++)
		if (!(names[i] = strdup(st->unchecked[i])))
			r = -ENOMEM;
	pthread_mutex_unlock(&st->lock);
	if (!names || r < 0) {
		for (size_t i = 0; names && i < n; i++)
			free(names[i]);
		free(names);
		return -ENOMEM;
	}
	*ret = names;
	*ret_n = n;
	return 0;
}

/* Prepares o (prep.h), counting its reads and recording a file served unchecked. */
static int store_prepare(struct store *st, struct store_obj *o, char **ret_msg)
{
	struct prep_counts n = {0};
	int r;

	r = prep_open(&st->env, &o->e, &o->pf, &n, ret_msg);
	STORE_COUNT(st, fetches, n.fetches);
	STORE_COUNT(st, fetch_bytes, n.fetch_bytes);
	STORE_COUNT(st, fetch_errors, n.fetch_errors);
	if (r == 0 && o->pf.unchecked)
		store_mark_unchecked(st, o->e.name);
	return r;
}

/* ---- handles and reads --------------------------------------------------------- */

int store_open(struct store *st, const struct catalog_entry *e, struct store_file **ret,
	       char **ret_msg)
{
	struct store_file *h;
	struct store_obj *o;
	struct timespec dl;
	char *msg = NULL;
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
			msg_set(&msg,
				"opening took longer than io_timeout (%u s): another open of it "
				"still waits for the API, the TPM or the CDN",
				st->timeout_s);
			store_obj_put_locked(o);
			pthread_mutex_unlock(&st->lock);
			r = -ETIMEDOUT;
			goto err;
		}
	}
	if (o->prep == PREP_NONE) {
		o->prep = PREP_LOADING;
		pthread_mutex_unlock(&st->lock);
		r = store_prepare(st, o, &msg);
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
	if (ret_msg)
		*ret_msg = msg;
	else
		free(msg);
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
	store_obj_close_locked(st, h->o);
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
	uint64_t end = off + len, size = h->o->pf.size, win, target, from, cap;
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

int store_read(struct store_file *h, uint64_t off, size_t len, struct store_read *ret,
	       char **ret_msg)
{
	struct store *st = h->st;
	struct store_obj *o = h->o;
	struct ucache_unit **u;
	struct timespec dl;
	uint64_t first, n;
	size_t done = 0;
	int r;

	memset(ret, 0, sizeof(*ret));
	ret->st = st;
	if (off >= o->pf.size || len == 0)
		return 0;
	if (len > o->pf.size - off)
		len = (size_t)(o->pf.size - off);
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
	STORE_COUNT(st, reads, 1);
	r = store_units_get(st, o, first, n, u, &dl, ret_msg);
	if (r < 0) {
		STORE_COUNT(st, read_errors, 1);
		free(u);
		free(ret->iov);
		ret->iov = NULL;
		return r;
	}
	ret->units = (void **)u;
	ret->n_units = n;
	for (uint64_t i = 0; i < n && done < len; i++) {
		size_t skip = i == 0 ? (size_t)(off % STORE_UNIT) : 0, ulen;
		const uint8_t *data = ucache_data(u[i], &ulen);
		size_t take = ulen > skip ? ulen - skip : 0;

		if (take > len - done)
			take = len - done;
		ret->iov[ret->iovcnt].iov_base = (void *)(data + skip);
		ret->iov[ret->iovcnt].iov_len = take;
		ret->iovcnt++;
		done += take;
	}
	ret->len = done;
	STORE_COUNT(st, read_bytes, done);
	return 0;
}

void store_stats(struct store *st, struct store_stats *ret)
{
	const uint64_t *from = (const uint64_t *)&st->stats;
	uint64_t *to = (uint64_t *)ret;
	struct ucache_stats cs;

	for (size_t i = 0; i < sizeof(*ret) / sizeof(uint64_t); i++)
		to[i] = __atomic_load_n(&from[i], __ATOMIC_RELAXED);
	ucache_stats(st->cache, &cs);
	ret->cache_hits = cs.hits;
	ret->cache_misses = cs.misses;
	ret->cache_units = st->n_units;
}

void store_read_release(struct store_read *r)
{
	struct ucache_unit **u = (struct ucache_unit **)r->units;

	if (u)
		ucache_put(r->st->cache, u, r->n_units);
	free(u);
	free(r->iov);
	memset(r, 0, sizeof(*r));
}

/* ---- read-ahead workers ----------------------------------------------------------- */

static void *store_worker(void *arg)
{
	struct store *st = arg;

	pthread_setname_np(pthread_self(), "az-readahead");

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
		if (j->first * STORE_UNIT < j->o->pf.size) {
			struct store_fill_ctx ctx = {st, j->o};
			uint64_t n = j->n;

			if ((j->first + n - 1) * STORE_UNIT >= j->o->pf.size)
				n = (j->o->pf.size - 1) / STORE_UNIT - j->first + 1;
			/*
			 * A failed read-ahead does not hold the object failed: a reader
			 * before a damaged chunk still gets its bytes (docs/trust.md).
			 */
			ucache_prefetch(st->cache, j->o->id, j->first, (size_t)n, store_fill, &ctx,
					NULL);
		}
		pthread_mutex_lock(&st->lock);
		store_obj_close_locked(st, j->o);
		store_obj_put_locked(j->o);
		free(j);
	}
	pthread_mutex_unlock(&st->lock);
	return NULL;
}

/* Wipes the file keys whose last close is key_ttl ago, once a second. */
static void *store_reaper(void *arg)
{
	struct store *st = arg;
	struct timespec ts;

	pthread_setname_np(pthread_self(), "az-keyreaper");
	pthread_mutex_lock(&st->lock);
	while (!st->stop) {
		int64_t now = store_now_ms(), ttl_ms = (int64_t)st->env.c->key_ttl * 1000;

		for (struct store_obj *o = st->objs; o; o = o->next)
			if (o->idle_ms && !o->opens && o->prep == PREP_READY &&
			    now - o->idle_ms >= ttl_ms) {
				store_obj_unprepare(o);
				o->idle_ms = 0;
			}
		clock_gettime(CLOCK_MONOTONIC, &ts);
		ts.tv_sec += 1;
		pthread_cond_timedwait(&st->reap_cond, &st->lock, &ts);
	}
	pthread_mutex_unlock(&st->lock);
	return NULL;
}

int store_start(struct store *st)
{
	if (st->env.c->key_ttl && pthread_create(&st->reaper, NULL, store_reaper, st) == 0)
		st->has_reaper = 1;
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

int store_probe(void *arg, struct catalog_entry *e, char **ret_msg)
{
	struct store *st = arg;
	const struct fetch_s3 *s3 = NULL;
	char *url;
	int r;

	r = prep_big_url(&st->env, e->name, &url, &s3, ret_msg);
	if (r < 0)
		return r;
	r = probe_entry(st->env.src, st->env.keys, url, s3, e, ret_msg);
	free(url);
	return r;
}

/* ---- the store ------------------------------------------------------------------------ */

int store_new(const struct config *c, struct src *src, struct keys *keys, struct store **ret,
	      char **ret_msg)
{
	pthread_condattr_t ca;
	struct store *st;
	size_t n_units;
	int r;

	st = calloc(1, sizeof(*st));
	if (!st) {
		src_free(src);
		keys_free(keys);
		return -ENOMEM;
	}
	st->env.c = c;
	st->env.src = src;
	st->env.keys = keys;
	st->timeout_s = c->io_timeout ? c->io_timeout : 1;
	pthread_mutex_init(&st->lock, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&st->cond, &ca);
	pthread_cond_init(&st->reap_cond, &ca);
	pthread_condattr_destroy(&ca);

	n_units = c->memory_cache / STORE_UNIT;
	if (n_units < STORE_MIN_UNITS)
		log_warn("memory_cache: raised to the minimum of %d KiB",
			 STORE_MIN_UNITS * STORE_UNIT / 1024);
	r = ucache_new(c->memory_cache, STORE_MIN_UNITS, STORE_RUN_MAX, STORE_FAIL_HOLD_MS,
		       &st->cache);
	if (r < 0) {
		msg_set(ret_msg,
			"memory_cache: cannot lock %zu MiB of memory: %s (RLIMIT_MEMLOCK?)",
			(n_units < STORE_MIN_UNITS ? STORE_MIN_UNITS : n_units) * STORE_UNIT >> 20,
			strerror(-r));
		goto err;
	}
	st->n_units = ucache_units(st->cache);
	st->ra_max = c->readahead_max;
	if (st->ra_max > st->n_units * STORE_UNIT / 4)
		st->ra_max = st->n_units * STORE_UNIT / 4;
	*ret = st;
	return 0;
err:
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
	pthread_cond_broadcast(&st->reap_cond);
	pthread_mutex_unlock(&st->lock);
	for (unsigned i = 0; i < st->n_workers; i++)
		pthread_join(st->workers[i], NULL);
	if (st->has_reaper)
		pthread_join(st->reaper, NULL);
	while (st->jobs) {
		struct store_job *j = st->jobs;

		st->jobs = j->next;
		store_obj_close_locked(st, j->o);
		store_obj_put_locked(j->o);
		free(j);
	}
	for (o = st->objs; o; o = next) {
		next = o->next;
		store_obj_put_locked(o);
	}
	ucache_free(st->cache);
	while (st->n_unchecked)
		free(st->unchecked[--st->n_unchecked]);
	free(st->unchecked);
	src_free(st->env.src);
	keys_free(st->env.keys);
	pthread_cond_destroy(&st->cond);
	pthread_cond_destroy(&st->reap_cond);
	pthread_mutex_destroy(&st->lock);
	free(st);
}
