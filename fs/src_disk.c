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
 * the byte total, the failing flag and the kept staging buffers. It is not
 * held while reading from the layer below; the file reads and writes of
 * cached blocks happen without it too (pread and pwrite on blocks that the
 * map already or not yet marks). An evicted file's names are unlinked
 * after the lock is dropped.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include "fs/log.h"
#include "fs/metrics.h"
#include "fs/src.h"

#define DISK_BLOCK (64 * 1024)
#define DISK_ID_LEN 32
#define DISK_MAX_FILES 4096
#define DISK_RESERVE 10 /* per cent of cache_dir's file system left free */
/*
 * Staging buffers for blocks read from below, kept between misses (a
 * fresh one of this size is a new mapping that faults in page by page):
 * room for a 1 MiB run and the blocks its ends reach into.
 */
#define DISK_TMP_SIZE (18 * DISK_BLOCK)
#define DISK_TMP_KEPT 4

struct disk_file {
	struct disk_file *next;
	char id[DISK_ID_LEN + 1];
	int fd; /* -1: not open */
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
	uint8_t *tmp[DISK_TMP_KEPT]; /* kept staging buffers, under lock */
	unsigned n_tmp;
};

static uint8_t *disk_tmp_get(struct disk_src *d, size_t len)
{
	uint8_t *t = NULL;

	if (len > DISK_TMP_SIZE)
		return malloc(len);
	pthread_mutex_lock(&d->lock);
	if (d->n_tmp)
		t = d->tmp[--d->n_tmp];
	pthread_mutex_unlock(&d->lock);
	return t ? t : malloc(DISK_TMP_SIZE);
}

static void disk_tmp_put(struct disk_src *d, uint8_t *t, size_t len)
{
	if (t && len <= DISK_TMP_SIZE) {
		pthread_mutex_lock(&d->lock);
		if (d->n_tmp < DISK_TMP_KEPT) {
			d->tmp[d->n_tmp++] = t;
			t = NULL;
		}
		pthread_mutex_unlock(&d->lock);
	}
	free(t);
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
	if (f->map_fd >= 0)
		close(f->map_fd);
	free(f->map);
	f->fd = f->map_fd = -1;
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
		present += f->map[i] == 1;
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
	f->fd = f->map_fd = -1;
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

/* Keeps blocks b0 .. b1 - 1 (data at off0 in buf, len bytes) when there is room. */
static void disk_store(struct disk_src *d, struct disk_file *f, uint64_t b0, uint64_t b1,
		       const uint8_t *data, size_t len)
{
	char(*gone)[DISK_ID_LEN + 1] = NULL;
	size_t n_gone = 0;
	uint64_t add = 0;
	int fits;

	pthread_mutex_lock(&d->lock);
	for (uint64_t i = b0; i < b1; i++)
		add += f->map[i] == 0 ? DISK_BLOCK : 0;
	fits = disk_make_room(d, f, add, &gone, &n_gone);
	if (fits) {
		/* Counted now, marked present only once written. */
		d->total += add;
		d->pending += add;
		f->bytes += add;
	}
	pthread_mutex_unlock(&d->lock);
	for (size_t i = 0; i < n_gone; i++)
		disk_unlink(d, gone[i]);
	free(gone);
	if (!fits)
		return;
	if (pwrite(f->fd, data, len, (off_t)(b0 * DISK_BLOCK)) != (ssize_t)len) {
		disk_fail(d, "writing", f->id, "data", errno ? errno : ENOSPC);
		pthread_mutex_lock(&d->lock);
		d->total -= add;
		d->pending -= add;
		f->bytes -= add;
		pthread_mutex_unlock(&d->lock);
		return;
	}
	pthread_mutex_lock(&d->lock);
	d->pending -= add;
	memset(f->map + b0, 1, b1 - b0);
	pthread_mutex_unlock(&d->lock);
	if (pwrite(f->map_fd, f->map + b0, b1 - b0, (off_t)b0) != (ssize_t)(b1 - b0)) {
		disk_fail(d, "writing", f->id, "map", errno ? errno : ENOSPC);
		return;
	}
	pthread_mutex_lock(&d->lock);
	d->failing = 0;
	pthread_mutex_unlock(&d->lock);
}

static int disk_present(struct disk_src *d, struct disk_file *f, uint64_t i)
{
	int p;

	pthread_mutex_lock(&d->lock);
	p = f->map[i] == 1;
	pthread_mutex_unlock(&d->lock);
	return p;
}

static int disk_read(struct src *src, const struct src_blob *b, uint64_t off, size_t len,
		     uint8_t *buf)
{
	struct disk_src *d = (struct disk_src *)src;
	uint64_t end = off + len, i, last;
	struct disk_file *f;
	int r = 0;

	if (!b->cache_id || !disk_id_ok(b->cache_id) || len == 0)
		return src_read(d->lower, b, off, len, buf);
	f = disk_get(d, b);
	if (!f)
		return src_read(d->lower, b, off, len, buf);
	last = (end - 1) / DISK_BLOCK;
	for (i = off / DISK_BLOCK; r == 0 && i <= last;) {
		int present = disk_present(d, f, i);
		uint64_t j = i + 1, a, z;

		while (j <= last && disk_present(d, f, j) == present)
			j++;
		/* Blocks i .. j - 1 are all present or all missing. */
		a = i * DISK_BLOCK;
		z = j * DISK_BLOCK < b->size ? j * DISK_BLOCK : b->size;
		if (present) {
			uint64_t from = a > off ? a : off, to = z < end ? z : end;
			ssize_t n = pread(f->fd, buf + (from - off), to - from, (off_t)from);

			if (n != (ssize_t)(to - from)) {
				r = src_read(d->lower, b, from, to - from, buf + (from - off));
			} else {
				metrics_count(METRICS_DISK_HITS, 1);
				metrics_count(METRICS_DISK_BYTES, (uint64_t)n);
			}
		} else {
			uint8_t *tmp = disk_tmp_get(d, z - a);
			uint64_t from = a > off ? a : off, to = z < end ? z : end;

			if (!tmp) {
				r = -ENOMEM;
				break;
			}
			r = src_read(d->lower, b, a, z - a, tmp);
			if (r == 0) {
				memcpy(buf + (from - off), tmp + (from - a), to - from);
				disk_store(d, f, i, j, tmp, z - a);
			}
			disk_tmp_put(d, tmp, z - a);
		}
		i = j;
	}
	pthread_mutex_lock(&d->lock);
	f->users--;
	pthread_mutex_unlock(&d->lock);
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
			if (f->map[i] != 1)
				continue;
			f->map[i] = 0;
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

	for (f = d->files; f; f = next) {
		next = f->next;
		disk_file_close(f);
		free(f);
	}
	src_free(d->lower);
	while (d->n_tmp)
		free(d->tmp[--d->n_tmp]);
	pthread_mutex_destroy(&d->lock);
	free(d->dir);
	free(d);
}

static int disk_size(struct src *src, const struct src_blob *b, uint64_t *ret_size)
{
	struct disk_src *d = (struct disk_src *)src;

	return src_size(d->lower, b, ret_size);
}

static const struct src_ops disk_ops = {
	.read = disk_read,
	.size = disk_size,
	.free = disk_free,
	.drop = disk_drop,
};

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
					f->bytes += blk[x] == 1 ? DISK_BLOCK : 0;
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
	disk_scan(d);
	disk_say_cap(d);
	*ret = &d->src;
	return 0;
}
