/*
 * ucache.h - the plaintext unit cache: one locked slab cut into units of
 * UCACHE_UNIT bytes, keyed by (object id, unit index), least recently used
 * first out. After squashfuse's cache.c and s3backer's block_cache.c: a
 * miss claims a unit, marks it loading, drops the lock and fills it (by
 * the caller's function); other readers of the same unit wait for that
 * fill instead of starting their own. A unit handed out stays put until
 * its holder puts it back.
 *
 * Locking: everything here is under the cache's own lock, which is never
 * held while a fill runs. The caller's fill function runs with no lock.
 *
 * Errors are 0 or a negative errno; nothing here logs.
 */
#ifndef AZAION_UCACHE_H
#define AZAION_UCACHE_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

#define UCACHE_UNIT (64 * 1024)

struct ucache;
struct ucache_unit;

/*
 * Fills units first .. first + n - 1 (at most the run given to ucache_new)
 * of one object: data[i] has room for UCACHE_UNIT bytes, lens[i] gets the
 * bytes it holds. 0 or a negative errno for the whole run; -EBADMSG means
 * bytes that failed their check, after which the run's units are filled
 * one by one, so that the good ones around a bad range still serve.
 */
typedef int (*ucache_fill_fn)(void *ctx, uint64_t first, size_t n, uint8_t *const *data,
			      size_t *lens);

/*
 * An object's last failed fill, which the cache keeps under its lock: a
 * get that starts within hold_ms of it, and one waiting for units that
 * others load when a fill fails meanwhile, get its error at once. Else the
 * kernel, which retries a failed read-ahead page by page, and readers
 * queued behind a dead source would each wait their deadline anew. Bad
 * bytes (-EBADMSG) are not held: they are one range's, not the source's.
 */
struct ucache_fail {
	int64_t ms;
	int err;
};

/*
 * A cache of bytes / UCACHE_UNIT units (at least min_units) in locked
 * memory; fills merge at most run units. -ENOMEM when the memory cannot be
 * locked (RLIMIT_MEMLOCK).
 */
int ucache_new(size_t bytes, size_t min_units, size_t run, unsigned hold_ms, struct ucache **ret);
/* No unit may be held. Accepts NULL. */
void ucache_free(struct ucache *c);
size_t ucache_units(const struct ucache *c);

/*
 * Takes units first .. first + n - 1 of object id into u[0 .. n - 1],
 * filling the missing ones by fill and waiting for the ones others fill,
 * until deadline (CLOCK_MONOTONIC). -ETIMEDOUT when others' fills took too
 * long, -ENOBUFS when no unit came free in time (every unit held), or the
 * fill's error; on error no unit is held.
 */
int ucache_get(struct ucache *c, uint64_t id, uint64_t first, size_t n, struct ucache_unit **u,
	       ucache_fill_fn fill, void *ctx, struct ucache_fail *fail,
	       const struct timespec *deadline);
/* Fills those of the units that nobody has or fills, as far as free units go; never waits. */
void ucache_prefetch(struct ucache *c, uint64_t id, uint64_t first, size_t n, ucache_fill_fn fill,
		     void *ctx, struct ucache_fail *fail);
/* Puts back n units of a get. */
void ucache_put(struct ucache *c, struct ucache_unit **u, size_t n);

/* A held unit's bytes. */
const uint8_t *ucache_data(const struct ucache_unit *u, size_t *ret_len);

struct ucache_stats {
	uint64_t hits, misses;
};
void ucache_stats(struct ucache *c, struct ucache_stats *ret);

#endif
