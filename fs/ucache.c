/*
 * ucache.c - the plaintext unit cache (see ucache.h).
 *
 * A unit is FREE (on the LRU, in no hash chain), LOADING (in the hash,
 * refs >= 1: its loader holds one), READY (in the hash; on the LRU exactly
 * when refs == 0) or FAILED (in the hash until its last reference goes,
 * never found by new lookups). A miss claims the least recently used
 * unreferenced unit, marks it LOADING, drops the lock, fills it, relocks,
 * marks it READY or FAILED and wakes the waiters. Eviction only ever takes
 * units with refs == 0, so bytes handed out stay put until released.
 *
 * Locking: c->lock guards every unit, the hash, the LRU, the counters and
 * the callers' struct ucache_fail; c->cond signals unit state changes and
 * freed units.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "crypto/crypto.h"
#include "fs/ucache.h"

enum {
	UNIT_FREE,
	UNIT_LOADING,
	UNIT_READY,
	UNIT_FAILED
};

struct ucache_unit {
	uint64_t obj_id;
	uint64_t idx;
	int state;
	int err;
	unsigned refs;
	int on_lru;
	size_t len;
	uint8_t *data; /* UCACHE_UNIT bytes of the slab */
	struct ucache_unit *hnext;
	struct ucache_unit *lprev, *lnext;
};

struct ucache {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	uint8_t *slab;
	struct ucache_unit *units;
	size_t n_units;
	size_t run;
	unsigned hold_ms;
	struct ucache_unit **hash;
	size_t hash_mask;
	struct ucache_unit *lru_head, *lru_tail;
	unsigned slot_waiters;
	struct ucache_stats stats;
};

static int64_t ucache_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static size_t ucache_slot(struct ucache *c, uint64_t id, uint64_t idx)
{
	uint64_t h = (id * 0x9E3779B97F4A7C15ull) ^ (idx * 0xC2B2AE3D27D4EB4Full);

	return (size_t)(h ^ (h >> 29)) & c->hash_mask;
}

static struct ucache_unit *ucache_find(struct ucache *c, uint64_t id, uint64_t idx)
{
	struct ucache_unit *u;

	for (u = c->hash[ucache_slot(c, id, idx)]; u; u = u->hnext)
		if (u->obj_id == id && u->idx == idx && u->state != UNIT_FAILED)
			return u;
	return NULL;
}

static void ucache_hash_del(struct ucache *c, struct ucache_unit *u)
{
	struct ucache_unit **pp = &c->hash[ucache_slot(c, u->obj_id, u->idx)];

	while (*pp && *pp != u)
		pp = &(*pp)->hnext;
	if (*pp)
		*pp = u->hnext;
	u->hnext = NULL;
}

static void ucache_lru_del(struct ucache *c, struct ucache_unit *u)
{
	if (!u->on_lru)
		return;
	if (u->lprev)
		u->lprev->lnext = u->lnext;
	else
		c->lru_head = u->lnext;
	if (u->lnext)
		u->lnext->lprev = u->lprev;
	else
		c->lru_tail = u->lprev;
	u->lprev = u->lnext = NULL;
	u->on_lru = 0;
}

static void ucache_lru_add(struct ucache *c, struct ucache_unit *u, int at_tail)
{
	if (at_tail) {
		u->lprev = c->lru_tail;
		u->lnext = NULL;
		if (c->lru_tail)
			c->lru_tail->lnext = u;
		else
			c->lru_head = u;
		c->lru_tail = u;
	} else {
		u->lnext = c->lru_head;
		u->lprev = NULL;
		if (c->lru_head)
			c->lru_head->lprev = u;
		else
			c->lru_tail = u;
		c->lru_head = u;
	}
	u->on_lru = 1;
}

static void ucache_ref(struct ucache *c, struct ucache_unit *u)
{
	if (u->refs++ == 0)
		ucache_lru_del(c, u);
}

static void ucache_unref(struct ucache *c, struct ucache_unit *u)
{
	if (--u->refs > 0)
		return;
	if (u->state == UNIT_READY) {
		ucache_lru_add(c, u, 1);
	} else {
		ucache_hash_del(c, u);
		u->state = UNIT_FREE;
		ucache_lru_add(c, u, 0);
	}
	if (c->slot_waiters)
		pthread_cond_broadcast(&c->cond);
}

/* The least recently used free unit, LOADING for (id, idx); NULL when none. */
static struct ucache_unit *ucache_claim(struct ucache *c, uint64_t id, uint64_t idx)
{
	struct ucache_unit *u = c->lru_head;

	if (!u)
		return NULL;
	ucache_lru_del(c, u);
	if (u->state != UNIT_FREE)
		ucache_hash_del(c, u);
	u->obj_id = id;
	u->idx = idx;
	u->state = UNIT_LOADING;
	u->err = 0;
	u->len = 0;
	u->refs = 1;
	u->hnext = c->hash[ucache_slot(c, id, idx)];
	c->hash[ucache_slot(c, id, idx)] = u;
	return u;
}

/*
 * Fills the units this thread claimed (mine[i]), merging neighbours into
 * runs of at most c->run, then marks them READY or FAILED. Called and
 * returns with c->lock held; drops it meanwhile.
 */
static void ucache_fill_claimed(struct ucache *c, uint64_t first, size_t n, struct ucache_unit **u,
				uint8_t *mine, ucache_fill_fn fill, void *ctx,
				struct ucache_fail *fail)
{
	uint8_t **data = NULL;
	size_t *lens = NULL, i, j;
	int *res = NULL;

	pthread_mutex_unlock(&c->lock);
	res = calloc(n, sizeof(*res));
	data = calloc(n, sizeof(*data));
	lens = calloc(n, sizeof(*lens));
	for (i = 0; i < n; i = j) {
		int r;

		if (!mine[i]) {
			j = i + 1;
			continue;
		}
		for (j = i + 1; j < n && mine[j] && j - i < c->run; j++)
			;
		if (res && data && lens) {
			for (size_t k = i; k < j; k++)
				data[k] = u[k]->data;
			r = fill(ctx, first + i, j - i, data + i, lens + i);
			for (size_t k = i; k < j; k++)
				res[k] = r;
			/* Bad bytes somewhere in the run: the other units may be good. */
			for (size_t k = i; r == -EBADMSG && j - i > 1 && k < j; k++)
				res[k] = fill(ctx, first + k, 1, data + k, lens + k);
		}
	}
	pthread_mutex_lock(&c->lock);
	for (i = 0; i < n; i++) {
		if (!mine[i])
			continue;
		u[i]->err = res && data && lens ? res[i] : -ENOMEM;
		u[i]->len = u[i]->err ? 0 : lens[i];
		u[i]->state = u[i]->err ? UNIT_FAILED : UNIT_READY;
		if (u[i]->err && u[i]->err != -ENOMEM && u[i]->err != -EBADMSG && fail) {
			fail->ms = ucache_now_ms();
			fail->err = u[i]->err;
		}
		mine[i] = 0;
	}
	free(res);
	free(data);
	free(lens);
	pthread_cond_broadcast(&c->cond);
}

int ucache_get(struct ucache *c, uint64_t id, uint64_t first, size_t n, struct ucache_unit **u,
	       ucache_fill_fn fill, void *ctx, struct ucache_fail *fail,
	       const struct timespec *deadline)
{
	int64_t start = ucache_now_ms();
	uint8_t *mine;
	int r = 0;

	memset(u, 0, n * sizeof(*u));
	mine = calloc(n, 1);
	if (!mine)
		return -ENOMEM;
	pthread_mutex_lock(&c->lock);
	if (fail && fail->err && start - fail->ms < c->hold_ms) {
		r = fail->err;
		pthread_mutex_unlock(&c->lock);
		free(mine);
		return r;
	}
	for (;;) {
		size_t missing = 0, claimed = 0, loading = 0;

		for (size_t i = 0; i < n; i++) {
			if (u[i])
				continue;
			u[i] = ucache_find(c, id, first + i);
			if (u[i]) {
				ucache_ref(c, u[i]);
				c->stats.hits++;
				continue;
			}
			u[i] = ucache_claim(c, id, first + i);
			if (u[i]) {
				mine[i] = 1;
				claimed++;
				c->stats.misses++;
			} else {
				missing++;
			}
		}
		if (claimed) {
			ucache_fill_claimed(c, first, n, u, mine, fill, ctx, fail);
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
			c->slot_waiters++;
		r = pthread_cond_timedwait(&c->cond, &c->lock, deadline);
		if (missing)
			c->slot_waiters--;
		if (r == ETIMEDOUT) {
			r = missing ? -ENOBUFS : -ETIMEDOUT;
			break;
		}
		r = 0;
		if (loading && fail && fail->err && fail->ms >= start) {
			r = fail->err;
			break;
		}
	}
	if (r) {
		for (size_t i = 0; i < n; i++) {
			if (u[i])
				ucache_unref(c, u[i]);
			u[i] = NULL;
		}
	}
	pthread_mutex_unlock(&c->lock);
	free(mine);
	return r;
}

void ucache_prefetch(struct ucache *c, uint64_t id, uint64_t first, size_t n, ucache_fill_fn fill,
		     void *ctx, struct ucache_fail *fail)
{
	struct ucache_unit **u = calloc(n, sizeof(*u));
	uint8_t *mine = calloc(n, 1);
	size_t claimed = 0;

	if (!u || !mine)
		goto out;
	pthread_mutex_lock(&c->lock);
	for (size_t i = 0; i < n; i++) {
		if (ucache_find(c, id, first + i))
			continue;
		u[i] = ucache_claim(c, id, first + i);
		if (!u[i])
			break;
		mine[i] = 1;
		claimed++;
	}
	if (claimed) {
		ucache_fill_claimed(c, first, n, u, mine, fill, ctx, fail);
		for (size_t i = 0; i < n; i++)
			if (u[i])
				ucache_unref(c, u[i]);
	}
	pthread_mutex_unlock(&c->lock);
out:
	free(u);
	free(mine);
}

void ucache_put(struct ucache *c, struct ucache_unit **u, size_t n)
{
	pthread_mutex_lock(&c->lock);
	for (size_t i = 0; i < n; i++)
		if (u[i])
			ucache_unref(c, u[i]);
	pthread_mutex_unlock(&c->lock);
}

const uint8_t *ucache_data(const struct ucache_unit *u, size_t *ret_len)
{
	*ret_len = u->len;
	return u->data;
}

size_t ucache_units(const struct ucache *c)
{
	return c->n_units;
}

void ucache_stats(struct ucache *c, struct ucache_stats *ret)
{
	pthread_mutex_lock(&c->lock);
	*ret = c->stats;
	pthread_mutex_unlock(&c->lock);
}

int ucache_new(size_t bytes, size_t min_units, size_t run, unsigned hold_ms, struct ucache **ret)
{
	pthread_condattr_t ca;
	struct ucache *c;
	size_t nb;
	int r;

	c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	c->n_units = bytes / UCACHE_UNIT;
	if (c->n_units < min_units)
		c->n_units = min_units;
	c->run = run ? run : 1;
	c->hold_ms = hold_ms;
	pthread_mutex_init(&c->lock, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&c->cond, &ca);
	pthread_condattr_destroy(&ca);
	c->slab = secmem_alloc_huge(c->n_units * UCACHE_UNIT);
	r = c->slab ? -ENOMEM : (errno ? -errno : -ENOMEM);
	c->units = calloc(c->n_units, sizeof(*c->units));
	for (nb = 1; nb < 2 * c->n_units; nb <<= 1)
		;
	c->hash = calloc(nb, sizeof(*c->hash));
	if (!c->slab || !c->units || !c->hash) {
		ucache_free(c);
		return r;
	}
	c->hash_mask = nb - 1;
	for (size_t i = 0; i < c->n_units; i++) {
		c->units[i].data = c->slab + i * UCACHE_UNIT;
		ucache_lru_add(c, &c->units[i], 1);
	}
	*ret = c;
	return 0;
}

void ucache_free(struct ucache *c)
{
	if (!c)
		return;
	secmem_free(c->slab);
	free(c->units);
	free(c->hash);
	pthread_cond_destroy(&c->cond);
	pthread_mutex_destroy(&c->lock);
	free(c);
}
