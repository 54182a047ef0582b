/*
 * src_disk.c - the ciphertext cache layer (see src.h): blocks of big
 * parts kept in cache_dir so that a device reads its models again without
 * the CDN. Only big-part bytes, which are ciphertext, ever reach these
 * files; plaintext never does.
 *
 * Each big part has two files named by its cache id: ID.data (sparse, the
 * big part's bytes at their offsets) and ID.map (one byte per 64 KiB block,
 * 1 when the block is in ID.data). Both are mode 0600. Whole files are
 * evicted, least recently used first, to keep the blocks under cache_max,
 * and under what the file system can give while keeping DISK_RESERVE of
 * itself free: cache_max says how much the cache may take, not how much
 * there is, and a cache that fills its file system breaks its neighbours.
 *
 * Locking: d->lock guards the file table, every file's users and map,
 * the byte total, the failing flag, the staging pool's slots, the
 * writer's queue, how long it writes through the page cache and what its
 * writes cost each way. It is not held while reading from the layer
 * below; the file reads and writes of cached blocks happen without it too
 * (pread and pwrite on blocks that the map already or not yet marks). An
 * evicted file's names are unlinked after the lock is dropped.
 *
 * The writer thread writes whole pages with O_DIRECT: no copy into the
 * page cache on the reader's cores, and no page cache taken from the
 * inference for ciphertext. For a while after a reader waited for room in
 * the queue (the disk is behind the CDN), unless buffered writes proved
 * slower than direct ones, and always on a file system that refuses
 * O_DIRECT, it writes through the page cache (docs/architecture.md,
 * src_disk.c).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sanitizer/asan_interface.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include "crypto/crypto.h"
#include "fs/log.h"
#include "fs/metrics.h"
#include "fs/src.h"

#define DISK_BLOCK (64 * 1024)
#define DISK_ID_LEN 32
#define DISK_MAX_FILES 4096
#define DISK_RESERVE 10 /* per cent of cache_dir's file system left free */
/*
 * Staging buffers for blocks read from below: room for a 1 MiB run and
 * the blocks its ends reach into.
 */
#define DISK_TMP_SIZE (18 * DISK_BLOCK)
/*
 * Staging buffers come from one region, kept for the layer's life (a
 * fresh buffer of this size is a new mapping that faults in page by
 * page), in huge pages where the kernel gives them: an O_DIRECT write
 * pins its buffer's pages, one by one for small pages and at once for a
 * huge one (a fill's CPU 6% lower, docs/architecture.md). 8 slots fill
 * 4.5 huge pages, about what 8 buffers of small pages take; a reader
 * that finds none free takes a buffer of its own.
 */
#define DISK_HUGE (2u << 20)
#define DISK_POOL_SLOTS 8
#define DISK_POOL_SIZE ((DISK_POOL_SLOTS * DISK_TMP_SIZE + DISK_HUGE - 1) / DISK_HUGE * DISK_HUGE)
/* O_DIRECT: buffers, offsets and lengths in whole 4 KiB blocks, which any disk's sectors divide. */
#define DISK_ALIGN 4096
#define DISK_RUN_MAX 64 /* blocks per request to the layer below (4 MiB) */
/*
 * Runs waiting for the writer at most; a reader that would queue one
 * more waits, so a disk slower than the CDN slows the read rather than
 * holding the big part in memory.
 */
#define DISK_QUEUE_MAX 4
/*
 * A reader that waited this long for room in the queue (a direct write of
 * a run takes a few milliseconds on an SSD, tens on an SD card) finds the
 * disk behind the CDN; the writer then goes through the page cache for
 * DISK_BEHIND_NS: a direct write now and then, not one per run, while the
 * disk cannot keep up. Not when buffered writes have been slower than
 * direct ones: where new pages are slow to come by (memory short under the
 * inference, say), a buffered write is slower than the disk, more readers
 * wait, and the fall-back would hold the whole read.
 */
#define DISK_BEHIND_WAIT_NS 5000000ull
#define DISK_BEHIND_NS 100000000ull
/* A slow page cache passes: buffered writes measured this long ago are tried again. */
#define DISK_BUFFERED_STALE_NS 10000000000ull

/*
 * A block's byte in a file's map. Only MISSING and PRESENT are ever
 * written to ID.map; the others live in memory only: LOADING (a reader
 * fetches the block to keep it), QUEUED (fetched, in the writer's queue:
 * readers copy it from there) and DROPPED (loading or queued, but its
 * bytes failed a check above: not to be kept or served).
 */
enum {
	DISK_MISSING = 0,
	DISK_PRESENT = 1,
	DISK_LOADING = 2,
	DISK_QUEUED = 3,
	DISK_DROPPED = 4
};

struct disk_file {
	struct disk_file *next;
	char id[DISK_ID_LEN + 1];
	int fd;	       /* -1: not open */
	int direct_fd; /* the same data file, O_DIRECT, opened at its first write; -1: not (yet) */
	int direct_tried;
	int map_fd;
	uint8_t *map;
	uint64_t nblocks;
	uint64_t bytes; /* blocks present * DISK_BLOCK */
	unsigned users;
	time_t used;
};

struct disk_src {
	struct src src;
	struct src *lower;
	char *dir;
	uint64_t max_conf; /* cache_max */
	uint64_t max;	   /* the bound now: cache_max or what the file system allows */
	pthread_mutex_t lock;
	struct disk_file *files;
	unsigned n_files;
	uint64_t total;
	uint64_t pending; /* of total: counted, not yet written (not yet out of the free space) */
	/*
	 * Writing to cache_dir failed (a full file system, an I/O error) and
	 * that was logged: a full disk is said once, not at every read, and
	 * again only after a write has worked in between.
	 */
	int failing;
	int buffered;	    /* O_DIRECT writes were refused: through the page cache only (atomic) */
	uint8_t *pool;	    /* DISK_POOL_SLOTS staging buffers; NULL: none could be mapped */
	unsigned pool_used; /* the slots taken, a bit each (under lock) */

	/* Runs read from below, to be written by the writer thread (under lock). */
	struct disk_write *queue, *queue_tail;
	unsigned queued;
	/*
	 * Readers enter the queue in the order their fetches ended (a ticket
	 * each), not in the order a full queue happens to wake them: when
	 * cache_max is reached, what is kept is what came first.
	 */
	uint64_t ticket_next, ticket_serving;
	int stop;
	int held; /* tests: the writer leaves the queue alone until released */
	/*
	 * A reader waited for room: the disk is behind the CDN. The writer
	 * then writes through the page cache until buffered_until
	 * (CLOCK_MONOTONIC, ns), if that has been the faster way: cost[0] is
	 * what its recent runs took with O_DIRECT, cost[1] through the page
	 * cache (sums that fade, kept by the writer), the last of those ended
	 * at buffered_at.
	 */
	int behind;
	uint64_t buffered_until, buffered_at;
	struct {
		double ns, bytes;
	} cost[2];
	pthread_cond_t queue_cond; /* the writer: work or stop; readers: room */
	pthread_t writer;
	int has_writer;
};

/*
 * Blocks i .. i + n - 1 of f read from below, in data (block i at data +
 * 0), of which those with mine[k] set are claimed by the reader and are to
 * be kept. The entry holds a user of f and owns data.
 */
struct disk_write {
	struct disk_write *next;
	struct disk_file *f;
	uint64_t i, n, size; /* size: the big part's */
	uint8_t *data;
	uint8_t mine[DISK_RUN_MAX];
};

static uint64_t disk_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint8_t *disk_tmp_get(struct disk_src *d, size_t len)
{
	uint8_t *t = NULL;

	if (len <= DISK_TMP_SIZE) {
		pthread_mutex_lock(&d->lock);
		for (unsigned k = 0; d->pool && !t && k < DISK_POOL_SLOTS; k++)
			if (!(d->pool_used & 1u << k)) {
				d->pool_used |= 1u << k;
				t = d->pool + (size_t)k * DISK_TMP_SIZE;
				ASAN_UNPOISON_MEMORY_REGION(t, DISK_TMP_SIZE);
			}
		pthread_mutex_unlock(&d->lock);
		if (t)
			return t;
		len = DISK_TMP_SIZE;
	}
	/* Page-aligned, as O_DIRECT writes want. */
	if (posix_memalign((void **)&t, DISK_ALIGN, len))
		return NULL;
	return t;
}

/* Under d->lock: gives t back to the pool, or frees it. */
static void disk_tmp_put_locked(struct disk_src *d, uint8_t *t)
{
	if (d->pool && t >= d->pool && t < d->pool + DISK_POOL_SLOTS * DISK_TMP_SIZE) {
		d->pool_used &= ~(1u << (unsigned)((size_t)(t - d->pool) / DISK_TMP_SIZE));
		ASAN_POISON_MEMORY_REGION(t, DISK_TMP_SIZE);
	} else {
		free(t);
	}
}

/*
 * The staging pool, in huge pages where the kernel gives them (secmem's:
 * ciphertext needs no locked memory, but the daemon's is all locked
 * anyway). Without it, every buffer is a buffer of its own.
 */
static void disk_pool_new(struct disk_src *d)
{
	d->pool = secmem_alloc_huge(DISK_POOL_SIZE);
	/* Under ASan a free slot is poisoned: use after it went back is caught, as with malloc's. */
	if (d->pool)
		ASAN_POISON_MEMORY_REGION(d->pool, DISK_POOL_SIZE);
}

static void disk_tmp_put(struct disk_src *d, uint8_t *t)
{
	pthread_mutex_lock(&d->lock);
	disk_tmp_put_locked(d, t);
	pthread_mutex_unlock(&d->lock);
}

/* Logs "cache_dir DIR: ACTION ID.EXT: cause" unless a failure is already logged. */
static void disk_fail(struct disk_src *d, const char *action, const char *id, const char *ext,
		      int err)
{
	int first;

	pthread_mutex_lock(&d->lock);
	first = !d->failing;
	d->failing = 1;
	pthread_mutex_unlock(&d->lock);
	if (first)
		log_warn("cache_dir %s: %s %s.%s: %s; reading on without storing there until a "
			 "write works",
			 d->dir, action, id, ext, strerror(err));
}

static int disk_id_ok(const char *id)
{
	if (strlen(id) != DISK_ID_LEN)
		return 0;
	return strspn(id, "0123456789abcdef") == DISK_ID_LEN;
}

static char *disk_path(struct disk_src *d, const char *id, const char *ext)
{
	char *p;

	if (asprintf(&p, "%s/%s.%s", d->dir, id, ext) < 0)
		return NULL;
	return p;
}

static void disk_file_close(struct disk_file *f)
{
	if (f->fd >= 0)
		close(f->fd);
	if (f->direct_fd >= 0)
		close(f->direct_fd);
	if (f->map_fd >= 0)
		close(f->map_fd);
	free(f->map);
	f->fd = f->direct_fd = f->map_fd = -1;
	f->direct_tried = 0;
	f->map = NULL;
}

static void disk_unlink(struct disk_src *d, const char *id)
{
	char *p;

	if ((p = disk_path(d, id, "data"))) {
		unlink(p);
		free(p);
	}
	if ((p = disk_path(d, id, "map"))) {
		unlink(p);
		free(p);
	}
}

/* Opens (creating when needed) f's files for a big part of size bytes. Under d->lock. */
static int disk_file_open(struct disk_src *d, struct disk_file *f, uint64_t size)
{
	char *dp = disk_path(d, f->id, "data"), *mp = disk_path(d, f->id, "map");
	uint64_t nblocks = (size + DISK_BLOCK - 1) / DISK_BLOCK, present = 0;
	struct stat sd, sm;
	int r = 0;

	if (!dp || !mp) {
		r = -ENOMEM;
		goto out;
	}
	f->fd = open(dp, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
	f->map_fd = open(mp, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
	f->map = calloc(nblocks ? nblocks : 1, 1);
	if (f->fd < 0 || f->map_fd < 0 || !f->map || fstat(f->fd, &sd) < 0 ||
	    fstat(f->map_fd, &sm) < 0) {
		r = f->map ? -errno : -ENOMEM;
		goto err;
	}
	if ((uint64_t)sd.st_size != size || (uint64_t)sm.st_size != nblocks ||
	    pread(f->map_fd, f->map, nblocks, 0) != (ssize_t)nblocks) {
		/* New, or not this big part's: start empty. */
		memset(f->map, 0, nblocks);
		if (ftruncate(f->fd, 0) < 0 || ftruncate(f->fd, (off_t)size) < 0 ||
		    ftruncate(f->map_fd, 0) < 0 || ftruncate(f->map_fd, (off_t)nblocks) < 0) {
			r = -errno;
			goto err;
		}
	}
	for (uint64_t i = 0; i < nblocks; i++)
		present += f->map[i] == DISK_PRESENT;
	d->total -= f->bytes;
	f->bytes = present * DISK_BLOCK;
	d->total += f->bytes;
	f->nblocks = nblocks;
	goto out;
err:
	disk_file_close(f);
out:
	free(dp);
	free(mp);
	return r;
}

static struct disk_file *disk_file_new(struct disk_src *d, const char *id)
{
	struct disk_file *f = calloc(1, sizeof(*f));

	if (!f)
		return NULL;
	memcpy(f->id, id, DISK_ID_LEN + 1);
	f->fd = f->direct_fd = f->map_fd = -1;
	f->next = d->files;
	d->files = f;
	d->n_files++;
	return f;
}

/*
 * What cache_dir may hold by its file system: what it holds now plus the
 * space that is free beyond DISK_RESERVE per cent. -errno when it cannot
 * be asked. Under d->lock or before the layer is shared.
 */
static int disk_fs_allows(struct disk_src *d, uint64_t *ret, uint64_t *ret_free)
{
	struct statvfs sv;
	uint64_t avail, reserve, held;

	if (statvfs(d->dir, &sv) < 0)
		return -errno;
	/* f_bavail: what an unprivileged writer gets, root's reserve aside. */
	avail = (uint64_t)sv.f_bavail * (sv.f_frsize ? sv.f_frsize : sv.f_bsize);
	reserve = (uint64_t)sv.f_blocks * (sv.f_frsize ? sv.f_frsize : sv.f_bsize) / 100 *
		  DISK_RESERVE;
	/* What the cache has on disk now: total less what is still being written. */
	held = d->total - d->pending;
	if (avail > reserve)
		*ret = held + (avail - reserve);
	else
		*ret = held > reserve - avail ? held - (reserve - avail) : 0;
	*ret_free = avail;
	return 0;
}

/*
 * Sets d->max from cache_max and the file system before each store: a
 * statvfs costs less than the write it guards, and a cache filling at disk
 * speed would overrun a bound looked at only now and then. Under d->lock.
 */
static void disk_recheck(struct disk_src *d)
{
	uint64_t allows, avail;

	if (disk_fs_allows(d, &allows, &avail) == 0)
		d->max = allows < d->max_conf ? allows : d->max_conf;
}

/*
 * Makes room for add bytes by evicting unused files other than keep; the
 * evicted ids are returned in *ret_gone (malloc()ed list, unlink them
 * unlocked). Returns 1 when the bytes fit. Under d->lock.
 */
static int disk_make_room(struct disk_src *d, const struct disk_file *keep, uint64_t add,
			  char (**ret_gone)[DISK_ID_LEN + 1], size_t *ret_n)
{
	char(*gone)[DISK_ID_LEN + 1] = NULL;
	size_t n = 0;

	if (add)
		disk_recheck(d);
	while (d->total + add > d->max) {
		struct disk_file **pp, **victim = NULL, *f;
		void *grown;

		for (pp = &d->files; *pp; pp = &(*pp)->next)
			if (*pp != keep && (*pp)->users == 0 && (*pp)->bytes &&
			    (!victim || (*pp)->used < (*victim)->used))
				victim = pp;
		if (!victim)
			break;
		f = *victim;
		*victim = f->next;
		d->n_files--;
		d->total -= f->bytes;
		grown = realloc(gone, (n + 1) * sizeof(*gone));
		if (grown) {
			gone = grown;
			memcpy(gone[n++], f->id, DISK_ID_LEN + 1);
		}
		disk_file_close(f);
		free(f);
	}
	*ret_gone = gone;
	*ret_n = n;
	return d->total + add <= d->max;
}

static struct disk_file *disk_get(struct disk_src *d, const struct src_blob *b)
{
	struct disk_file *f;
	int r = 0;

	pthread_mutex_lock(&d->lock);
	for (f = d->files; f; f = f->next)
		if (strcmp(f->id, b->cache_id) == 0)
			break;
	if (!f && d->n_files < DISK_MAX_FILES)
		f = disk_file_new(d, b->cache_id);
	if (f && f->fd < 0 && (r = disk_file_open(d, f, b->size)) < 0)
		f = NULL;
	if (f && f->nblocks != (b->size + DISK_BLOCK - 1) / DISK_BLOCK)
		f = NULL;
	if (f) {
		f->users++;
		f->used = time(NULL);
	}
	pthread_mutex_unlock(&d->lock);
	if (r < 0)
		disk_fail(d, "cannot open", b->cache_id, "data", -r);
	return f;
}

/*
 * Under d->lock: the blocks of b0 .. b1 - 1 that this reader claimed
 * (mine[k] for block b0 + k; NULL: all of them) are missing again.
 */
static void disk_unclaim_locked(struct disk_file *f, uint64_t b0, uint64_t b1, const uint8_t *mine)
{
	for (uint64_t i = b0; i < b1; i++)
		if ((!mine || mine[i - b0]) && f->map[i] != DISK_PRESENT)
			f->map[i] = DISK_MISSING;
}

/*
 * f's data file opened with O_DIRECT, or -1. Opened at the first write
 * only: a file that is only read holds two descriptors, not three. A file
 * system without O_DIRECT refuses it here, or at the first write.
 */
static int disk_direct_fd(struct disk_src *d, struct disk_file *f)
{
	int fd;

	pthread_mutex_lock(&d->lock);
	if (!f->direct_tried) {
		char *p = disk_path(d, f->id, "data");

		f->direct_tried = 1;
		if (p)
			f->direct_fd = open(p, O_WRONLY | O_DIRECT | O_CLOEXEC | O_NOFOLLOW);
		free(p);
	}
	fd = f->direct_fd;
	pthread_mutex_unlock(&d->lock);
	return fd;
}

/*
 * Writes len bytes at off of f's data: when direct_ok, the whole pages
 * straight to the disk (O_DIRECT) while the file system takes that; the
 * rest through the page cache. 0, or -1 with errno.
 */
static int disk_write_data(struct disk_src *d, struct disk_file *f, const uint8_t *data, size_t len,
			   uint64_t off, int direct_ok)
{
	size_t direct = 0;
	ssize_t n;
	int dfd = -1;

	if (direct_ok && !__atomic_load_n(&d->buffered, __ATOMIC_RELAXED) &&
	    (uintptr_t)data % DISK_ALIGN == 0 && (dfd = disk_direct_fd(d, f)) >= 0) {
		direct = len - len % DISK_ALIGN;
		n = direct ? pwrite(dfd, data, direct, (off_t)off) : 0;
		if (n < 0 && errno == EINVAL) {
			/* Opened, but its writes refused: this file system takes none. */
			__atomic_store_n(&d->buffered, 1, __ATOMIC_RELAXED);
			direct = 0;
		} else if (n != (ssize_t)direct) {
			if (n >= 0)
				errno = ENOSPC;
			return -1;
		}
	}
	if (len > direct) {
		n = pwrite(f->fd, data + direct, len - direct, (off_t)(off + direct));
		if (n != (ssize_t)(len - direct)) {
			if (n >= 0)
				errno = ENOSPC;
			return -1;
		}
	}
	return 0;
}

/*
 * Keeps blocks b0 .. b1 - 1 (claimed by this reader; len bytes at data)
 * when there is room; they are present or missing again after it.
 * direct_ok: as disk_write_data. Whether their bytes were written.
 */
static int disk_store(struct disk_src *d, struct disk_file *f, uint64_t b0, uint64_t b1,
		      const uint8_t *data, size_t len, int direct_ok)
{
	char(*gone)[DISK_ID_LEN + 1] = NULL;
	/* The map's bytes to write: a copy, as other readers claim blocks meanwhile. */
	uint8_t marks[DISK_RUN_MAX];
	size_t n_gone = 0;
	uint64_t add = (b1 - b0) * DISK_BLOCK;
	int fits;

	pthread_mutex_lock(&d->lock);
	fits = disk_make_room(d, f, add, &gone, &n_gone);
	if (fits) {
		/* Counted now, marked present only once written. */
		d->total += add;
		d->pending += add;
		f->bytes += add;
	} else {
		disk_unclaim_locked(f, b0, b1, NULL);
	}
	pthread_mutex_unlock(&d->lock);
	for (size_t i = 0; i < n_gone; i++)
		disk_unlink(d, gone[i]);
	free(gone);
	if (!fits)
		return 0;
	if (disk_write_data(d, f, data, len, b0 * DISK_BLOCK, direct_ok) < 0) {
		disk_fail(d, "writing", f->id, "data", errno ? errno : ENOSPC);
		pthread_mutex_lock(&d->lock);
		d->total -= add;
		d->pending -= add;
		f->bytes -= add;
		disk_unclaim_locked(f, b0, b1, NULL);
		pthread_mutex_unlock(&d->lock);
		return 0;
	}
	pthread_mutex_lock(&d->lock);
	d->pending -= add;
	for (uint64_t i = b0; i < b1; i++) {
		int kept = f->map[i] == DISK_LOADING || f->map[i] == DISK_QUEUED;

		f->map[i] = kept ? DISK_PRESENT : DISK_MISSING;
		marks[i - b0] = f->map[i];
		if (!kept) {
			f->bytes -= DISK_BLOCK;
			d->total -= DISK_BLOCK;
		}
	}
	pthread_mutex_unlock(&d->lock);
	if (pwrite(f->map_fd, marks, b1 - b0, (off_t)b0) != (ssize_t)(b1 - b0)) {
		disk_fail(d, "writing", f->id, "map", errno ? errno : ENOSPC);
		return 1;
	}
	pthread_mutex_lock(&d->lock);
	d->failing = 0;
	pthread_mutex_unlock(&d->lock);
	return 1;
}

enum {
	RUN_MISSING,
	RUN_PRESENT,
	RUN_QUEUED /* one block */
};

/*
 * Blocks i .. *ret_j - 1 (at most DISK_RUN_MAX, none past last) of one
 * kind. Of a RUN_MISSING run, the missing blocks are claimed (mine[k] = 1
 * for block i + k): this reader fetches them whole and keeps them, while a
 * block that another reader is loading is read only in the bytes asked
 * for, and not kept. So readers whose ranges share a block (read-ahead
 * jobs, whose runs seldom end on a block) fetch it from the CDN once.
 */
static int disk_run(struct disk_src *d, struct disk_file *f, uint64_t i, uint64_t last,
		    uint64_t *ret_j, uint8_t *mine)
{
	int kind;
	uint64_t j = i + 1;

	pthread_mutex_lock(&d->lock);
	kind = f->map[i] == DISK_PRESENT  ? RUN_PRESENT
	       : f->map[i] == DISK_QUEUED ? RUN_QUEUED
					  : RUN_MISSING;
	if (kind == RUN_PRESENT)
		while (j <= last && j - i < DISK_RUN_MAX && f->map[j] == DISK_PRESENT)
			j++;
	if (kind == RUN_MISSING) {
		for (j = i; j <= last && j - i < DISK_RUN_MAX; j++) {
			if (f->map[j] == DISK_PRESENT || f->map[j] == DISK_QUEUED)
				break;
			mine[j - i] = f->map[j] == DISK_MISSING;
			if (mine[j - i])
				f->map[j] = DISK_LOADING;
		}
	}
	pthread_mutex_unlock(&d->lock);
	*ret_j = j;
	return kind;
}

/*
 * Copies [from, to) of queued block i of f from the writer's queue; 0
 * when it is no longer there (written or dropped meanwhile).
 */
static int disk_copy_queued(struct disk_src *d, struct disk_file *f, uint64_t i, uint64_t from,
			    uint64_t to, uint8_t *out)
{
	int found = 0;

	pthread_mutex_lock(&d->lock);
	for (struct disk_write *w = d->queue; w && f->map[i] == DISK_QUEUED; w = w->next) {
		if (w->f != f || i < w->i || i >= w->i + w->n || !w->mine[i - w->i])
			continue;
		memcpy(out, w->data + (from - w->i * DISK_BLOCK), (size_t)(to - from));
		found = 1;
		break;
	}
	pthread_mutex_unlock(&d->lock);
	return found;
}

/* The writer's work: keeps the claimed blocks of w; the bytes it wrote. */
static uint64_t disk_write_run(struct disk_src *d, struct disk_write *w, int direct_ok)
{
	uint64_t bytes = 0;

	for (uint64_t k = 0; k < w->n;) {
		uint64_t e = k, a, z;

		if (!w->mine[k]) {
			k++;
			continue;
		}
		while (e < w->n && w->mine[e])
			e++;
		a = (w->i + k) * DISK_BLOCK;
		z = (w->i + e) * DISK_BLOCK < w->size ? (w->i + e) * DISK_BLOCK : w->size;
		if (disk_store(d, w->f, w->i + k, w->i + e, w->data + k * DISK_BLOCK,
			       (size_t)(z - a), direct_ok))
			bytes += z - a;
		k = e;
	}
	return bytes;
}

/*
 * Whether the page cache has been the faster way to write (or is untried,
 * or was last tried DISK_BUFFERED_STALE_NS ago), on the writer's recent
 * runs, weighted by their bytes, the older ones fading: a single slow run
 * does not decide.
 */
static int disk_buffered_pays(const struct disk_src *d, uint64_t now)
{
	if (d->cost[1].bytes == 0 || d->cost[0].bytes == 0 ||
	    now - d->buffered_at > DISK_BUFFERED_STALE_NS)
		return 1;
	return d->cost[1].ns / d->cost[1].bytes < d->cost[0].ns / d->cost[0].bytes;
}

/* Notes a run of bytes written in ns, buffered or not, that ended at end. */
static void disk_note_cost(struct disk_src *d, int buffered, uint64_t ns, uint64_t bytes,
			   uint64_t end)
{
	if (!bytes)
		return;
	d->cost[buffered].ns = d->cost[buffered].ns * 7 / 8 + (double)ns;
	d->cost[buffered].bytes = d->cost[buffered].bytes * 7 / 8 + (double)bytes;
	if (buffered)
		d->buffered_at = end;
}

/*
 * The writer thread: cache_dir is written off the readers' path, so that
 * a cold read with cache_dir on goes at the speed of one without. It
 * writes what is queued before it stops.
 */
static void *disk_writer(void *arg)
{
	struct disk_src *d = arg;

	pthread_setname_np(pthread_self(), "az-cachewrite");

	pthread_mutex_lock(&d->lock);
	for (;;) {
		struct disk_write *w;
		uint64_t now, end, bytes;
		int direct_ok;

		while ((!d->queue || d->held) && !d->stop)
			pthread_cond_wait(&d->queue_cond, &d->lock);
		if (!d->queue)
			break;
		/*
		 * It stays queued while written: readers copy its blocks until
		 * then. While the disk is behind, the page cache takes the runs
		 * at memory speed, so that a disk slower than the CDN holds the
		 * read up no more than buffered writes would.
		 */
		w = d->queue;
		now = disk_now_ns();
		if (d->behind && disk_buffered_pays(d, now))
			d->buffered_until = now + DISK_BEHIND_NS;
		d->behind = 0;
		direct_ok = now >= d->buffered_until;
		pthread_mutex_unlock(&d->lock);
		bytes = disk_write_run(d, w, direct_ok);
		end = disk_now_ns();
		pthread_mutex_lock(&d->lock);
		disk_note_cost(d, !direct_ok, end - now, bytes, end);
		d->queue = w->next;
		if (!d->queue)
			d->queue_tail = NULL;
		disk_tmp_put_locked(d, w->data);
		d->queued--;
		w->f->users--;
		free(w);
		pthread_cond_broadcast(&d->queue_cond);
	}
	pthread_mutex_unlock(&d->lock);
	return NULL;
}

/*
 * Hands run w to the writer (which then owns it), waiting while the queue
 * is full; without a writer, writes it here.
 */
static void disk_queue(struct disk_src *d, struct disk_write *w)
{
	uint64_t ticket, full_since = 0;

	if (!d->has_writer) {
		disk_write_run(d, w, 1);
		disk_tmp_put(d, w->data);
		free(w);
		return;
	}
	pthread_mutex_lock(&d->lock);
	ticket = d->ticket_next++;
	while (d->queued >= DISK_QUEUE_MAX || ticket != d->ticket_serving) {
		if (d->queued >= DISK_QUEUE_MAX && !full_since)
			full_since = disk_now_ns();
		pthread_cond_wait(&d->queue_cond, &d->lock);
	}
	if (full_since && disk_now_ns() - full_since > DISK_BEHIND_WAIT_NS)
		d->behind = 1;
	d->ticket_serving++;
	w->f->users++;
	d->queued++;
	for (uint64_t k = 0; k < w->n; k++)
		if (w->mine[k] && w->f->map[w->i + k] == DISK_LOADING)
			w->f->map[w->i + k] = DISK_QUEUED;
	if (d->queue_tail)
		d->queue_tail->next = w;
	else
		d->queue = w;
	d->queue_tail = w;
	pthread_cond_broadcast(&d->queue_cond);
	pthread_mutex_unlock(&d->lock);
}

/*
 * Where a read's bytes go: into buf (the range's first byte at buf), or
 * to sink in order, through tmp (DISK_TMP_SIZE bytes, taken at first use)
 * for the bytes that come from the file or the writer's queue.
 */
struct disk_dest {
	uint8_t *buf;
	src_sink_fn sink;
	void *arg;
	uint64_t off; /* the range's start */
	uint8_t *tmp;
	char **msg; /* the caller's, for the layer below's words */
};

/* Bytes [from, from + n) of the range, which are at data. */
static int disk_give(struct disk_dest *o, uint64_t from, const uint8_t *data, size_t n)
{
	if (o->buf) {
		memcpy(o->buf + (from - o->off), data, n);
		return 0;
	}
	return o->sink(o->arg, data, n);
}

/* [from, to) of the range from the layer below, not kept. */
static int disk_pass(struct disk_src *d, const struct src_blob *b, struct disk_dest *o,
		     uint64_t from, uint64_t to)
{
	if (o->buf)
		return src_read(d->lower, b, from, (size_t)(to - from), o->buf + (from - o->off),
				o->msg);
	return src_stream(d->lower, b, from, (size_t)(to - from), o->sink, o->arg, o->msg);
}

/* Room to stage bytes on their way to a sink. */
static uint8_t *disk_stage(struct disk_src *d, struct disk_dest *o)
{
	if (!o->tmp)
		o->tmp = disk_tmp_get(d, DISK_TMP_SIZE);
	return o->tmp;
}

/*
 * Gives [from, to) of a run of blocks i .. j - 1 that are not present
 * (mine: the claimed ones, fetched whole and queued for the writer).
 */
static int disk_read_missing(struct disk_src *d, struct disk_file *f, const struct src_blob *b,
			     struct disk_dest *o, uint64_t from, uint64_t to, uint64_t i,
			     uint64_t j, const uint8_t *mine)
{
	uint64_t a = i * DISK_BLOCK, z = j * DISK_BLOCK < b->size ? j * DISK_BLOCK : b->size;
	/* Claimed end blocks are fetched whole; another reader's only as far as asked. */
	uint64_t start = mine[0] ? a : from, stop = mine[j - 1 - i] ? z : to;
	struct disk_write *w = NULL;
	int r;

	if (!memchr(mine, 1, (size_t)(j - i)))
		return disk_pass(d, b, o, from, to);
	/* Block i at the start of the buffer, whatever part of it the range begins in. */
	w = calloc(1, sizeof(*w));
	if (w)
		w->data = disk_tmp_get(d, (size_t)((j - i) * DISK_BLOCK));
	if (!w || !w->data) {
		r = -ENOMEM;
		goto out;
	}
	r = src_read(d->lower, b, start, (size_t)(stop - start), w->data + (start - a), o->msg);
	/* Bytes the reader above refuses are not kept either. */
	if (r == 0)
		r = disk_give(o, from, w->data + (from - a), (size_t)(to - from));
	if (r < 0)
		goto out;
	w->f = f;
	w->i = i;
	w->n = j - i;
	w->size = b->size;
	memcpy(w->mine, mine, (size_t)(j - i));
	disk_queue(d, w);
	w = NULL;
out:
	if (r < 0) {
		pthread_mutex_lock(&d->lock);
		disk_unclaim_locked(f, i, j, mine);
		pthread_mutex_unlock(&d->lock);
	}
	if (w) {
		disk_tmp_put(d, w->data);
		free(w);
	}
	return r;
}

/* Gives [from, to) of present blocks from the file (from below where it fails). */
static int disk_read_present(struct disk_src *d, struct disk_file *f, const struct src_blob *b,
			     struct disk_dest *o, uint64_t from, uint64_t to)
{
	int r = 0;

	for (uint64_t at = from, n; r == 0 && at < to; at += n) {
		uint8_t *dst = o->buf ? o->buf + (at - o->off) : disk_stage(d, o);

		n = o->buf || to - at < DISK_TMP_SIZE ? to - at : DISK_TMP_SIZE;
		if (!dst)
			return -ENOMEM;
		if (pread(f->fd, dst, (size_t)n, (off_t)at) != (ssize_t)n) {
			r = disk_pass(d, b, o, at, at + n);
			continue;
		}
		metrics_count(METRICS_DISK_HITS, 1);
		metrics_count(METRICS_DISK_BYTES, n);
		if (!o->buf)
			r = o->sink(o->arg, dst, (size_t)n);
	}
	return r;
}

/*
 * Gives [off, off + len) of b to o: from the file where present, from the
 * writer's queue where queued, from below where missing (claimed blocks
 * fetched whole and queued to be kept).
 */
static int disk_give_range(struct disk_src *d, const struct src_blob *b, uint64_t off, size_t len,
			   struct disk_dest *o)
{
	uint64_t end = off + len, i, j, last;
	uint8_t mine[DISK_RUN_MAX];
	struct disk_file *f;
	int r = 0;

	if (!b->cache_id || !disk_id_ok(b->cache_id) || len == 0)
		return disk_pass(d, b, o, off, end);
	f = disk_get(d, b);
	if (!f)
		return disk_pass(d, b, o, off, end);
	last = (end - 1) / DISK_BLOCK;
	for (i = off / DISK_BLOCK; r == 0 && i <= last; i = j) {
		uint64_t a = i * DISK_BLOCK, z, from, to;
		int kind = disk_run(d, f, i, last, &j, mine);
		uint8_t *dst;

		z = j * DISK_BLOCK < b->size ? j * DISK_BLOCK : b->size;
		from = a > off ? a : off;
		to = z < end ? z : end;
		if (kind == RUN_MISSING) {
			r = disk_read_missing(d, f, b, o, from, to, i, j, mine);
		} else if (kind == RUN_PRESENT) {
			r = disk_read_present(d, f, b, o, from, to);
		} else {
			dst = o->buf ? o->buf + (from - off) : disk_stage(d, o);
			if (!dst)
				r = -ENOMEM;
			/* Written (or dropped) meanwhile: look at the block again. */
			else if (!disk_copy_queued(d, f, i, from, to, dst))
				j = i;
			else if (!o->buf)
				r = o->sink(o->arg, dst, (size_t)(to - from));
		}
	}
	pthread_mutex_lock(&d->lock);
	f->users--;
	pthread_mutex_unlock(&d->lock);
	return r;
}

static int disk_read(struct src *src, const struct src_blob *b, uint64_t off, size_t len,
		     uint8_t *buf, char **ret_msg)
{
	struct disk_dest o = {.buf = buf, .off = off, .msg = ret_msg};

	return disk_give_range((struct disk_src *)src, b, off, len, &o);
}

static int disk_stream(struct src *src, const struct src_blob *b, uint64_t off, size_t len,
		       src_sink_fn sink, void *arg, char **ret_msg)
{
	struct disk_src *d = (struct disk_src *)src;
	struct disk_dest o = {.sink = sink, .arg = arg, .off = off, .msg = ret_msg};
	int r = disk_give_range(d, b, off, len, &o);

	if (o.tmp)
		disk_tmp_put(d, o.tmp);
	return r;
}

static void disk_drop(struct src *src, const struct src_blob *b, uint64_t off, size_t len)
{
	struct disk_src *d = (struct disk_src *)src;
	struct disk_file *f;
	uint64_t gone = 0;

	pthread_mutex_lock(&d->lock);
	for (f = d->files; b->cache_id && f; f = f->next)
		if (strcmp(f->id, b->cache_id) == 0)
			break;
	if (f && f->map && len) {
		uint64_t last = (off + len - 1) / DISK_BLOCK;

		for (uint64_t i = off / DISK_BLOCK; i <= last && i < f->nblocks; i++) {
			if (f->map[i] == DISK_LOADING || f->map[i] == DISK_QUEUED)
				f->map[i] = DISK_DROPPED; /* the writer will not keep it */
			if (f->map[i] != DISK_PRESENT)
				continue;
			f->map[i] = DISK_MISSING;
			gone += DISK_BLOCK;
			if (pwrite(f->map_fd, f->map + i, 1, (off_t)i) != 1)
				log_warn("cache_dir: cannot forget block %llu of %s",
					 (unsigned long long)i, f->id);
		}
		f->bytes -= gone;
		d->total -= gone;
	}
	pthread_mutex_unlock(&d->lock);
	src_drop(d->lower, b, off, len);
}

static void disk_free(struct src *src)
{
	struct disk_src *d = (struct disk_src *)src;
	struct disk_file *f, *next;

	if (d->has_writer) {
		pthread_mutex_lock(&d->lock);
		d->stop = 1;
		pthread_cond_broadcast(&d->queue_cond);
		pthread_mutex_unlock(&d->lock);
		pthread_join(d->writer, NULL);
	}

	for (f = d->files; f; f = next) {
		next = f->next;
		disk_file_close(f);
		free(f);
	}
	src_free(d->lower);
	if (d->pool) {
		ASAN_UNPOISON_MEMORY_REGION(d->pool, DISK_POOL_SIZE);
		secmem_free(d->pool);
	}
	pthread_cond_destroy(&d->queue_cond);
	pthread_mutex_destroy(&d->lock);
	free(d->dir);
	free(d);
}

static int disk_size(struct src *src, const struct src_blob *b, uint64_t *ret_size, char **ret_msg)
{
	struct disk_src *d = (struct disk_src *)src;

	return src_size(d->lower, b, ret_size, ret_msg);
}

static const struct src_ops disk_ops = {
	.read = disk_read,
	.stream = disk_stream,
	.size = disk_size,
	.free = disk_free,
	.drop = disk_drop,
};

void src_disk_hold_writer(struct src *s, int hold)
{
	struct disk_src *d = (struct disk_src *)s;

	pthread_mutex_lock(&d->lock);
	d->held = hold;
	pthread_cond_broadcast(&d->queue_cond);
	pthread_mutex_unlock(&d->lock);
}

void src_disk_seed_write_costs(struct src *s, double direct_ns_per_mib, double buffered_ns_per_mib,
			       unsigned buffered_age_s)
{
	struct disk_src *d = (struct disk_src *)s;
	/* As if 1 GiB had been written each way: a few real runs hardly move it. */
	const double mibs = 1024;

	pthread_mutex_lock(&d->lock);
	d->cost[0].ns = direct_ns_per_mib * mibs;
	d->cost[1].ns = buffered_ns_per_mib * mibs;
	d->cost[0].bytes = d->cost[1].bytes = mibs * 1024 * 1024;
	d->buffered_at = disk_now_ns() - (uint64_t)buffered_age_s * 1000000000ull;
	pthread_mutex_unlock(&d->lock);
}

/* Counts what an earlier run left in dir, so cache_max holds across restarts. */
static void disk_scan(struct disk_src *d)
{
	struct dirent *de;
	DIR *dir = opendir(d->dir);

	if (!dir)
		return;
	while ((de = readdir(dir))) {
		char id[DISK_ID_LEN + 1];
		size_t n = strlen(de->d_name);
		struct disk_file *f;
		struct stat sm;
		char *mp;

		if (n != DISK_ID_LEN + 4 || strcmp(de->d_name + DISK_ID_LEN, ".map") != 0)
			continue;
		memcpy(id, de->d_name, DISK_ID_LEN);
		id[DISK_ID_LEN] = '\0';
		if (!disk_id_ok(id) || d->n_files >= DISK_MAX_FILES)
			continue;
		f = disk_file_new(d, id);
		mp = disk_path(d, id, "map");
		if (!f || !mp) {
			free(mp);
			break;
		}
		if (stat(mp, &sm) == 0) {
			int fd = open(mp, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
			uint8_t blk[4096];
			ssize_t k;

			f->used = sm.st_mtime;
			while (fd >= 0 && (k = read(fd, blk, sizeof(blk))) > 0)
				for (ssize_t x = 0; x < k; x++)
					f->bytes += blk[x] == DISK_PRESENT ? DISK_BLOCK : 0;
			if (fd >= 0)
				close(fd);
			d->total += f->bytes;
		}
		free(mp);
	}
	closedir(dir);
}

/* "1.2G", "57M", "4G": n in the units of cache_max, one decimal when short. */
static void disk_human(uint64_t n, char *buf, size_t cap)
{
	static const char units[] = "KMGTPE";
	double v = (double)n;
	int u = -1;

	while (v >= 1024 && u < 5) {
		v /= 1024;
		u++;
	}
	if (u < 0)
		snprintf(buf, cap, "%llu", (unsigned long long)n);
	else if (v < 10 && v != (double)(uint64_t)v)
		snprintf(buf, cap, "%.1f%c", v, units[u]);
	else
		snprintf(buf, cap, "%.0f%c", v, units[u]);
}

/* Says at start when the file system holds cache_max down. */
static void disk_say_cap(struct disk_src *d)
{
	uint64_t allows, avail;
	char conf[16], cap[16], fr[16];
	int r = disk_fs_allows(d, &allows, &avail);

	if (r < 0) {
		log_warn("cache_dir %s: cannot see how much its file system has free (%s); "
			 "keeping to cache_max",
			 d->dir, strerror(-r));
		return;
	}
	if (allows < d->max_conf)
		d->max = allows;
	disk_human(d->max_conf, conf, sizeof(conf));
	disk_human(d->max, cap, sizeof(cap));
	disk_human(avail, fr, sizeof(fr));
	if (allows < d->max_conf)
		log_info("cache_max %s capped to %s: the filesystem of %s has %s free (%d%% of it "
			 "is kept free; the cap follows it as the cache fills)",
			 conf, cap, d->dir, fr, DISK_RESERVE);
	log_debug("cache_dir %s: %llu of %llu bytes in use", d->dir, (unsigned long long)d->total,
		  (unsigned long long)d->max);
}

int src_disk_new(const char *dir, uint64_t max, struct src *lower, struct src **ret)
{
	struct disk_src *d;
	struct stat st;

	if (mkdir(dir, 0700) < 0 && errno != EEXIST)
		return -errno;
	if (stat(dir, &st) < 0)
		return -errno;
	if (!S_ISDIR(st.st_mode))
		return -ENOTDIR;
	d = calloc(1, sizeof(*d));
	if (!d)
		return -ENOMEM;
	d->dir = strdup(dir);
	if (!d->dir) {
		free(d);
		return -ENOMEM;
	}
	d->src.ops = &disk_ops;
	d->lower = lower;
	d->max_conf = d->max = max;
	pthread_mutex_init(&d->lock, NULL);
	pthread_cond_init(&d->queue_cond, NULL);
	disk_scan(d);
	disk_say_cap(d);
	disk_pool_new(d);
	/* Without the thread, readers write what they fetch themselves. */
	d->has_writer = pthread_create(&d->writer, NULL, disk_writer, d) == 0;
	*ret = &d->src;
	return 0;
}
