/*
 * test_disk.c - the cache_dir layer (src_disk) over src_mem: what it keeps
 * is the big part's bytes and serves them again without the layer below,
 * a block shared by readers at once comes from below once, a failed read
 * keeps nothing, and dropped bytes are not served again from the disk,
 * whether the writer had stored them yet or not; blocks waiting for the
 * writer are served from its queue; streams hand the same bytes on; the
 * writer writes with O_DIRECT (nothing of its runs in the page cache)
 * unless a reader waited for room in its queue and buffered writes have
 * not been the slower way.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "crypto/crypto.h"
#include "fs/src.h"
#include "tests/unit/check.h"

#define URL "mem://cdn/models/m.big"
#define BLOB_SIZE (3 * 1024 * 1024 + 1234)
#define BLOCK (64 * 1024)
#define RUN (1024 * 1024 + 16) /* a format-2 fill: never on a block */
/* Runs on blocks share none: none is read back from the disk through the page cache. */
#define ALIGNED_RUN (1024 * 1024)
#define HALF_RUN (ALIGNED_RUN / 2)
#define THREADS 4
#define MANY_READERS 12
#define MANY_PIECE (256 * 1024)
#define DIR_TEMPLATE "/tmp/test_disk.XXXXXX"

static uint8_t *blob_bytes;

static struct src_blob test_blob(void)
{
	struct src_blob b = {
		.url = URL,
		.size = BLOB_SIZE,
		.cache_id = "0123456789abcdef0123456789abcdef",
	};
	return b;
}

/* A cache layer in dir over a fresh src_mem (*ret_mem), holding the blob when with_blob. */
static struct src *disk_over_mem(const char *dir, int with_blob, struct src **ret_mem)
{
	struct src *mem = NULL, *disk = NULL;

	if (src_mem_new(&mem) < 0)
		return NULL;
	if (with_blob && src_mem_put(mem, URL, blob_bytes, BLOB_SIZE) < 0)
		goto err;
	if (src_disk_new(dir, 1ull << 30, mem, &disk) < 0)
		goto err;
	*ret_mem = mem;
	return disk;
err:
	src_free(mem);
	return NULL;
}

/* Reads [off, off + len) through s and compares it with the blob. */
static int read_matches(struct src *s, uint64_t off, size_t len)
{
	struct src_blob b = test_blob();
	uint8_t *buf = malloc(len);
	int ok;

	ok = buf && src_read(s, &b, off, len, buf, NULL) == 0 &&
	     memcmp(buf, blob_bytes + off, len) == 0;
	free(buf);
	return ok;
}

/* A stream's receiver: the bytes in order, or a refusal after refuse_at bytes. */
struct taker {
	uint8_t *buf;
	size_t got, pieces, refuse_at;
};

static int take(void *arg, const uint8_t *data, size_t len)
{
	struct taker *t = arg;

	if (t->refuse_at && t->got + len > t->refuse_at)
		return -EBADMSG;
	memcpy(t->buf + t->got, data, len);
	t->got += len;
	t->pieces++;
	return 0;
}

/* Streams [off, off + len) through s: whether it came whole and matches the blob. */
static int stream_matches(struct src *s, uint64_t off, size_t len, size_t *ret_pieces)
{
	struct src_blob b = test_blob();
	struct taker t = {.buf = malloc(len)};
	int ok;

	ok = t.buf && src_stream(s, &b, off, len, take, &t, NULL) == 0 && t.got == len &&
	     memcmp(t.buf, blob_bytes + off, len) == 0;
	if (ret_pieces)
		*ret_pieces = t.pieces;
	free(t.buf);
	return ok;
}

struct reader {
	struct src *s;
	int first, ok;
};

/* Every THREADS-th run, as read-ahead workers take them: neighbours share a block. */
static void *reader_main(void *arg)
{
	struct reader *r = arg;

	r->ok = 1;
	for (uint64_t off = (uint64_t)r->first * RUN; off < BLOB_SIZE; off += THREADS * RUN) {
		size_t len = off + RUN <= BLOB_SIZE ? RUN : BLOB_SIZE - (size_t)off;

		r->ok &= read_matches(r->s, off, len);
	}
	return NULL;
}

/* Reads the blob's run r->first of HALF_RUN bytes. */
static void *fifth_main(void *arg)
{
	struct reader *r = arg;

	r->ok = read_matches(r->s, (uint64_t)r->first * HALF_RUN, HALF_RUN);
	return NULL;
}

static void remove_dir(const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *de;
	char p[512];

	while (d && (de = readdir(d)))
		if (de->d_name[0] != '.') {
			snprintf(p, sizeof(p), "%s/%s", dir, de->d_name);
			unlink(p);
		}
	if (d)
		closedir(d);
	rmdir(dir);
}

/* Whether dir's file system takes an O_DIRECT write of a page. */
static int takes_direct(const char *dir)
{
	char p[512];
	void *page = NULL;
	int fd, ok = 0;

	snprintf(p, sizeof(p), "%s/direct-probe", dir);
	fd = open(p, O_WRONLY | O_CREAT | O_DIRECT | O_CLOEXEC, 0600);
	if (fd >= 0 && posix_memalign(&page, 4096, 4096) == 0) {
		memset(page, 0, 4096);
		ok = pwrite(fd, page, 4096, 0) == 4096;
	}
	free(page);
	if (fd >= 0)
		close(fd);
	unlink(p);
	return ok;
}

/*
 * Pages [from, to) of the test blob's data file in dir (to -1: to its
 * end): how many there are (*ret_pages) and how many are in the page cache
 * (-1: unknown). Callers leave the first block out: valgrind reads the
 * first bytes of every file that is mapped, which pulls them into the page
 * cache.
 */
#define FIRST_PAGE (BLOCK / 4096)
static long pages_cached(const char *dir, long from, long to, long *ret_pages)
{
	struct src_blob b = test_blob();
	char p[512];
	struct stat st;
	unsigned char *vec = NULL;
	void *map = MAP_FAILED;
	long pages = 0, n = -1;
	int fd;

	snprintf(p, sizeof(p), "%s/%s.data", dir, b.cache_id);
	fd = open(p, O_RDONLY | O_CLOEXEC);
	if (fd < 0 || fstat(fd, &st) < 0 || st.st_size <= BLOCK)
		goto out;
	pages = (st.st_size + 4095) / 4096;
	map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
	vec = malloc((size_t)pages);
	if (map == MAP_FAILED || !vec || mincore(map, (size_t)st.st_size, vec) < 0)
		goto out;
	if (to < 0 || to > pages)
		to = pages;
	n = 0;
	for (long i = from; i < to; i++)
		n += vec[i] & 1;
out:
	if (map != MAP_FAILED)
		munmap(map, (size_t)st.st_size);
	free(vec);
	if (fd >= 0)
		close(fd);
	*ret_pages = (to < 0 ? pages : to) - from;
	return n;
}

static long data_pages_cached(const char *dir, long *ret_pages)
{
	return pages_cached(dir, FIRST_PAGE, -1, ret_pages);
}

/* How many of this process's descriptors are open on files named *.data. */
static int data_fds(void)
{
	DIR *fds = opendir("/proc/self/fd");
	struct dirent *de;
	char link[300], target[512];
	int n = 0;

	while (fds && (de = readdir(fds))) {
		ssize_t len;

		snprintf(link, sizeof(link), "/proc/self/fd/%s", de->d_name);
		len = readlink(link, target, sizeof(target) - 1);
		if (len > 5 && memcmp(target + len - 5, ".data", 5) == 0)
			n++;
	}
	if (fds)
		closedir(fds);
	return n;
}

/* Empties and removes dir, then makes a new one in its place (dir holds DIR_TEMPLATE's size). */
static void fresh_dir(char *dir)
{
	remove_dir(dir);
	strcpy(dir, DIR_TEMPLATE);
	CHECK(mkdtemp(dir) != NULL, "a fresh scratch folder");
}

/* Reads the blob's piece r->first of MANY_PIECE bytes. */
static void *piece_main(void *arg)
{
	struct reader *r = arg;

	r->ok = read_matches(r->s, (uint64_t)r->first * MANY_PIECE, MANY_PIECE);
	return NULL;
}

/*
 * More readers at once than the layer has staging buffers in its pool
 * (8), each fetching from a slow layer below: the ones that find no free
 * slot take buffers of their own. Every reader gets its bytes, and every
 * byte is kept.
 */
static void many_readers_case(char *dir)
{
	struct reader rd[MANY_READERS];
	pthread_t th[MANY_READERS];
	struct src *disk, *mem = NULL;
	struct src_mem_stats ms;
	int ok = 1, started = 0;

	disk = disk_over_mem(dir, 1, &mem);
	CHECK(disk != NULL, "src_disk for %d readers at once", MANY_READERS);
	if (!disk)
		return;
	src_mem_delay(mem, 100);
	for (; started < MANY_READERS; started++) {
		rd[started] = (struct reader){.s = disk, .first = started};
		if (pthread_create(&th[started], NULL, piece_main, &rd[started]) != 0)
			break;
	}
	ok = started == MANY_READERS;
	for (int i = 0; i < started; i++) {
		pthread_join(th[i], NULL);
		ok &= rd[i].ok;
	}
	CHECK(ok, "%d readers at once, more than the staging pool's slots, got their bytes",
	      MANY_READERS);
	src_free(disk);
	disk = disk_over_mem(dir, 0, &mem);
	CHECK(disk && read_matches(disk, 0, MANY_READERS * MANY_PIECE),
	      "and what they read is served from cache_dir alone");
	if (disk) {
		src_mem_stats(mem, &ms);
		CHECK(ms.reads == 0, "nothing asked of the layer below (%llu reads)",
		      (unsigned long long)ms.reads);
	}
	src_free(disk);
	fresh_dir(dir);
}

/*
 * Four runs of 512 KiB wait for the held writer and a fifth reader waits
 * for room; buffered writes cost buffered_ns per MiB so far against
 * direct_ns (none yet: 0), the last buffered_age_s ago. Whether the runs
 * written after the wait went through the page cache (want_buffered); the
 * run written before it did not. On a file system without O_DIRECT every
 * run goes through the page cache.
 */
static void queue_wait_case(char *dir, const char *what, double direct_ns, double buffered_ns,
			    unsigned buffered_age_s, int want_buffered)
{
	struct reader fifth = {.first = 4};
	int direct = takes_direct(dir), ok = 1;
	struct src *disk, *mem = NULL;
	long pages, run0, run2;
	pthread_t t5;

	disk = disk_over_mem(dir, 1, &mem);
	CHECK(disk != NULL, "src_disk with a held writer (buffered writes %s)", what);
	if (!disk)
		return;
	if (direct_ns > 0)
		src_disk_seed_write_costs(disk, direct_ns, buffered_ns, buffered_age_s);
	src_disk_hold_writer(disk, 1);
	for (uint64_t off = 0; off < 4 * HALF_RUN; off += HALF_RUN)
		ok &= read_matches(disk, off, HALF_RUN);
	CHECK(ok, "four runs queued while the writer is held");
	fifth.s = disk;
	CHECK(pthread_create(&t5, NULL, fifth_main, &fifth) == 0, "a fifth reader started");
	usleep(50 * 1000); /* it waits for room meanwhile */
	src_disk_hold_writer(disk, 0);
	pthread_join(t5, NULL);
	CHECK(fifth.ok, "the fifth reader got its bytes once the writer went on");
	src_free(disk);
	run0 = pages_cached(dir, FIRST_PAGE, HALF_RUN / 4096, &pages);
	CHECK(run0 == (direct ? 0 : pages),
	      "the run written before the wait went %s (%ld of %ld pages cached)",
	      direct ? "to the disk directly" : "through the page cache (no O_DIRECT here)", run0,
	      pages);
	run2 = pages_cached(dir, 2 * HALF_RUN / 4096, 3 * HALF_RUN / 4096, &pages);
	if (want_buffered || !direct)
		CHECK(run2 == pages,
		      "buffered writes %s: a run written after the reader waited went through "
		      "the page cache (%ld of %ld pages cached)",
		      what, run2, pages);
	else
		CHECK(run2 == 0,
		      "buffered writes %s: a run written after the reader waited went to the "
		      "disk directly (%ld of %ld pages cached)",
		      what, run2, pages);
	fresh_dir(dir);
}

int main(void)
{
	char dir[] = DIR_TEMPLATE;
	struct src *disk, *mem = NULL;
	struct src_mem_stats ms;
	struct src_blob b = test_blob();
	struct reader rd[THREADS];
	pthread_t th[THREADS];
	size_t pieces;
	uint64_t off;
	int ok, r;

	blob_bytes = malloc(BLOB_SIZE);
	CHECK(blob_bytes && crypto_random(blob_bytes, BLOB_SIZE) == 0, "a blob of random bytes");
	CHECK(mkdtemp(dir) != NULL, "a scratch folder");

	/* Sequential runs that straddle blocks, as the store's fills do. */
	disk = disk_over_mem(dir, 1, &mem);
	CHECK(disk != NULL, "src_disk over src_mem");
	ok = 1;
	for (off = 0; off < BLOB_SIZE; off += RUN)
		ok &= read_matches(disk, off,
				   off + RUN <= BLOB_SIZE ? RUN : BLOB_SIZE - (size_t)off);
	CHECK(ok, "sequential runs read the blob's bytes");
	src_mem_stats(mem, &ms);
	CHECK(ms.read_bytes <= BLOB_SIZE + 2 * BLOCK,
	      "each block from below about once (%llu bytes for %d)",
	      (unsigned long long)ms.read_bytes, BLOB_SIZE);
	src_free(disk); /* the writer finishes what is queued */

	/*
	 * The writer's runs go to the disk with O_DIRECT: only the blob's
	 * last, partial page through the page cache. One run per layer, so
	 * that the writer never finds its queue full (it would then take the
	 * page cache, on purpose), and runs that share no block, so that
	 * none is read back through the page cache.
	 */
	fresh_dir(dir);
	ok = 1;
	for (off = 0; off < BLOB_SIZE; off += ALIGNED_RUN) {
		disk = disk_over_mem(dir, 1, &mem);
		ok &= disk &&
		      read_matches(disk, off,
				   off + ALIGNED_RUN <= BLOB_SIZE ? ALIGNED_RUN
								  : BLOB_SIZE - (size_t)off);
		src_free(disk);
	}
	CHECK(ok, "the blob read a run per layer");
	{
		long pages, cached = data_pages_cached(dir, &pages);

		if (takes_direct(dir))
			CHECK(cached >= 0 && cached <= 1,
			      "its blocks went to the disk with O_DIRECT, not through the page "
			      "cache (%ld of %ld pages cached)",
			      cached, pages);
		else
			CHECK(cached == pages,
			      "%s takes no O_DIRECT: its blocks were written through the page "
			      "cache (%ld pages cached)",
			      dir, cached);
	}

	/* Kept: a new layer serves it all with nothing below. */
	disk = disk_over_mem(dir, 0, &mem);
	CHECK(disk != NULL, "src_disk again, over an empty src_mem");
	CHECK(read_matches(disk, 0, BLOB_SIZE), "the whole blob from cache_dir alone");
	CHECK(read_matches(disk, BLOB_SIZE - 7, 7), "and its last bytes");
	src_mem_stats(mem, &ms);
	CHECK(ms.reads == 0, "nothing asked of the layer below (%llu reads)",
	      (unsigned long long)ms.reads);
	CHECK(data_fds() == 1,
	      "a big part only read from cache_dir holds one descriptor of its "
	      "data (%d): the O_DIRECT one comes with a write",
	      data_fds());

	/* Dropped bytes are forgotten: they come from below again. */
	src_drop(disk, &b, BLOCK + 5, 10);
	CHECK(!read_matches(disk, BLOCK, BLOCK), "a dropped block is not served from the disk");
	src_free(disk);
	fresh_dir(dir);

	/*
	 * A reader that waits for room in the queue finds the disk behind: the
	 * writer's next runs go through the page cache, unless that has been
	 * the slower way.
	 */
	queue_wait_case(dir, "untried", 0, 0, 0, 1);
	queue_wait_case(dir, "slower than direct writes", 1e6, 1e7, 0, 0);
	queue_wait_case(dir, "slower, but a minute ago", 1e6, 1e7, 60, 1);
	queue_wait_case(dir, "faster than direct writes", 1e7, 1e6, 0, 1);
	many_readers_case(dir);

	/* Readers at once whose runs share blocks: each block fetched about once. */
	disk = disk_over_mem(dir, 1, &mem);
	CHECK(disk != NULL, "src_disk for readers at once");
	for (int i = 0; i < THREADS; i++) {
		rd[i].s = disk;
		rd[i].first = i;
		CHECK(pthread_create(&th[i], NULL, reader_main, &rd[i]) == 0, "reader %d started",
		      i);
	}
	ok = 1;
	for (int i = 0; i < THREADS; i++) {
		pthread_join(th[i], NULL);
		ok &= rd[i].ok;
	}
	CHECK(ok, "every reader got the blob's bytes");
	src_mem_stats(mem, &ms);
	/*
	 * A block another reader is loading is read only in the bytes asked
	 * for: at most a block at each end of each run beyond the blob once.
	 */
	CHECK(ms.read_bytes <= BLOB_SIZE + (uint64_t)(BLOB_SIZE / RUN + 1) * 2 * BLOCK,
	      "shared blocks are not fetched whole twice (%llu bytes for %d)",
	      (unsigned long long)ms.read_bytes, BLOB_SIZE);

	/* A read that fails below keeps nothing, and the next one works. */
	off = 2 * 1024 * 1024 + 100;
	CHECK(src_mem_fault(mem, URL, 0, BLOB_SIZE, -EIO, -1) == 0, "the layer below fails");
	{
		struct src_blob b2 = b;
		uint8_t small[64];
		char *msg = NULL;

		b2.cache_id = "fedcba9876543210fedcba9876543210"; /* nothing of it kept */
		b2.url = URL;
		CHECK(src_read(disk, &b2, off, sizeof(small), small, &msg) == -EIO,
		      "its error comes up as it is");
		CHECK(msg && strstr(msg, "the memory source failed"),
		      "... with the words of the layer below (%s)", msg ? msg : "none");
		free(msg);
		CHECK(src_mem_fault(mem, URL, 0, 0, 0, 0) == 0, "the layer below works again");
		CHECK(src_read(disk, &b2, off, sizeof(small), small, NULL) == 0 &&
			      memcmp(small, blob_bytes + off, sizeof(small)) == 0,
		      "the same read then works: the failed blocks were not left claimed");
	}

	/* A drop right after the read that queued the blocks: not kept either way. */
	src_free(disk);
	fresh_dir(dir);
	disk = disk_over_mem(dir, 1, &mem);
	CHECK(disk != NULL && read_matches(disk, 0, RUN), "a run read and queued for the writer");
	src_drop(disk, &b, 0, RUN);
	src_free(disk);
	disk = disk_over_mem(dir, 0, &mem);
	CHECK(disk != NULL && !read_matches(disk, 0, BLOCK),
	      "its blocks were forgotten, stored before the drop or not");
	src_free(disk);

	/* Blocks waiting for the writer are served from its queue, to reads and streams. */
	fresh_dir(dir);
	disk = disk_over_mem(dir, 1, &mem);
	if (disk)
		src_disk_hold_writer(disk, 1);
	CHECK(disk != NULL && read_matches(disk, 0, RUN), "a run read while the writer is held");
	src_mem_stats(mem, &ms);
	CHECK(disk != NULL && read_matches(disk, BLOCK + 7, 2 * BLOCK) &&
		      stream_matches(disk, 3 * BLOCK - 5, 2 * BLOCK, NULL),
	      "its queued blocks read and stream back from the queue");
	{
		struct src_mem_stats ms_q;

		src_mem_stats(mem, &ms_q);
		CHECK(ms_q.reads == ms.reads,
		      "... with nothing asked of the layer below (%llu reads)",
		      (unsigned long long)(ms_q.reads - ms.reads));
	}
	if (disk)
		src_disk_hold_writer(disk, 0);
	src_free(disk); /* the writer writes what is queued */
	disk = disk_over_mem(dir, 0, &mem);
	CHECK(disk != NULL && read_matches(disk, 0, RUN),
	      "once released, the writer kept them: cache_dir alone serves the run");
	src_free(disk);

	/* Streams: bytes handed on as they come, kept as reads keep them. */
	fresh_dir(dir);
	disk = disk_over_mem(dir, 1, &mem);
	{
		struct taker t = {.buf = malloc(RUN), .refuse_at = 1};

		r = disk ? src_stream(disk, &b, 2 * RUN, RUN, take, &t, NULL) : -1;
		CHECK(r == -EBADMSG, "a stream whose receiver refuses ends with its error (%d)", r);
		free(t.buf);
	}
	CHECK(disk != NULL && stream_matches(disk, 100, RUN, NULL),
	      "a cold stream hands on the blob's bytes");
	CHECK(disk != NULL && stream_matches(disk, RUN - BLOCK, RUN, NULL),
	      "and one over blocks queued or kept by the last hands on the blob's bytes");
	src_free(disk);
	disk = disk_over_mem(dir, 0, &mem);
	pieces = 0;
	CHECK(disk != NULL && stream_matches(disk, 0, 2 * RUN - 100, &pieces) && pieces > 1,
	      "from cache_dir alone, a stream hands on the kept bytes in pieces (%zu)", pieces);
	src_mem_stats(mem, &ms);
	CHECK(ms.reads == 0, "... and asks nothing of the layer below (%llu reads)",
	      (unsigned long long)ms.reads);
	CHECK(disk != NULL && !read_matches(disk, 2 * RUN + 2 * BLOCK, BLOCK),
	      "the blocks of the refused stream were not kept");
	src_free(disk);
	remove_dir(dir);
	free(blob_bytes);
	return check_done();
}
