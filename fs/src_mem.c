/*
 * src_mem.c - a source layer of big parts in memory (see src.h), for
 * tests: it stands where the CDN does, and fails, lags or serves other
 * bytes on demand.
 *
 * Locking: m->lock guards the table, the faults and the counters; a read
 * copies under it (the bytes are small test data).
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "fs/msg.h"
#include "fs/src.h"

struct mem_blob {
	struct mem_blob *next;
	char *url;
	uint8_t *data;
	size_t len;
	/* one fault */
	uint64_t f_off, f_len;
	int f_err, f_count;
};

struct src_mem {
	struct src src;
	pthread_mutex_t lock;
	struct mem_blob *blobs;
	unsigned delay_ms;
	struct src_mem_stats stats;
};

static struct mem_blob *mem_find(struct src_mem *m, const char *url)
{
	struct mem_blob *b;

	for (b = m->blobs; b; b = b->next)
		if (strcmp(b->url, url) == 0)
			return b;
	return NULL;
}

static int mem_read(struct src *src, const struct src_blob *sb, uint64_t off, size_t len,
		    uint8_t *buf, char **ret_msg)
{
	struct src_mem *m = (struct src_mem *)src;
	struct mem_blob *b;
	unsigned delay;
	int r = 0;

	pthread_mutex_lock(&m->lock);
	delay = m->delay_ms;
	pthread_mutex_unlock(&m->lock);
	if (delay) {
		struct timespec ts = {delay / 1000, (long)(delay % 1000) * 1000000L};

		nanosleep(&ts, NULL);
	}
	pthread_mutex_lock(&m->lock);
	m->stats.reads++;
	b = mem_find(m, sb->url);
	if (!b) {
		r = -ENOENT;
	} else if (b->f_err && b->f_count != 0 && off < b->f_off + b->f_len &&
		   b->f_off < off + len) {
		r = b->f_err;
		if (b->f_count > 0 && --b->f_count == 0)
			b->f_err = 0;
	} else if (off > b->len || len > b->len - off) {
		r = -EIO;
	} else {
		memcpy(buf, b->data + off, len);
		m->stats.read_bytes += len;
	}
	if (r < 0)
		m->stats.failures++;
	pthread_mutex_unlock(&m->lock);
	if (r < 0)
		msg_set(ret_msg, "%s: the memory source failed %zu bytes at %llu: %s", sb->url, len,
			(unsigned long long)off, strerror(-r));
	return r;
}

/*
 * Hands the bytes on in pieces of 1 to 16 KiB, their sizes from a
 * generator seeded by the offset, so that a test sees the same pieces
 * each run and the layers above meet every way a piece may end.
 */
static int mem_stream(struct src *src, const struct src_blob *sb, uint64_t off, size_t len,
		      src_sink_fn sink, void *arg, char **ret_msg)
{
	uint32_t seed = (uint32_t)(off * 2654435761u) | 1;
	uint8_t *buf = malloc(len ? len : 1);
	int r;

	if (!buf)
		return -ENOMEM;
	r = mem_read(src, sb, off, len, buf, ret_msg);
	for (size_t at = 0, k; r == 0 && at < len; at += k) {
		seed ^= seed << 13;
		seed ^= seed >> 17;
		seed ^= seed << 5;
		k = 1 + seed % (16 * 1024);
		if (k > len - at)
			k = len - at;
		r = sink(arg, buf + at, k);
	}
	free(buf);
	return r;
}

static int mem_size(struct src *src, const struct src_blob *sb, uint64_t *ret_size, char **ret_msg)
{
	struct src_mem *m = (struct src_mem *)src;
	struct mem_blob *b;
	int r = -ENOENT;

	pthread_mutex_lock(&m->lock);
	b = mem_find(m, sb->url);
	if (b) {
		*ret_size = b->len;
		r = 0;
	}
	pthread_mutex_unlock(&m->lock);
	if (r < 0)
		msg_set(ret_msg, "%s: not in the memory source", sb->url);
	return r;
}

static void mem_drop(struct src *src, const struct src_blob *sb, uint64_t off, size_t len)
{
	struct src_mem *m = (struct src_mem *)src;

	pthread_mutex_lock(&m->lock);
	m->stats.drops++;
	pthread_mutex_unlock(&m->lock);
}

static void mem_free(struct src *src)
{
	struct src_mem *m = (struct src_mem *)src;

	while (m->blobs) {
		struct mem_blob *b = m->blobs;

		m->blobs = b->next;
		free(b->url);
		free(b->data);
		free(b);
	}
	pthread_mutex_destroy(&m->lock);
	free(m);
}

static const struct src_ops mem_ops = {
	.read = mem_read,
	.stream = mem_stream,
	.size = mem_size,
	.drop = mem_drop,
	.free = mem_free,
};

int src_mem_new(struct src **ret)
{
	struct src_mem *m = calloc(1, sizeof(*m));

	if (!m)
		return -ENOMEM;
	m->src.ops = &mem_ops;
	pthread_mutex_init(&m->lock, NULL);
	*ret = &m->src;
	return 0;
}

int src_mem_put(struct src *src, const char *url, const uint8_t *data, size_t len)
{
	struct src_mem *m = (struct src_mem *)src;
	struct mem_blob *b = calloc(1, sizeof(*b));

	if (!b)
		return -ENOMEM;
	b->url = strdup(url);
	b->data = malloc(len ? len : 1);
	if (!b->url || !b->data) {
		free(b->url);
		free(b->data);
		free(b);
		return -ENOMEM;
	}
	memcpy(b->data, data, len);
	b->len = len;
	pthread_mutex_lock(&m->lock);
	b->next = m->blobs;
	m->blobs = b;
	pthread_mutex_unlock(&m->lock);
	return 0;
}

int src_mem_poke(struct src *src, const char *url, uint64_t off, const uint8_t *data, size_t len)
{
	struct src_mem *m = (struct src_mem *)src;
	struct mem_blob *b;
	int r = -ENOENT;

	pthread_mutex_lock(&m->lock);
	b = mem_find(m, url);
	if (b && (off > b->len || len > b->len - off)) {
		r = -EINVAL;
	} else if (b) {
		memcpy(b->data + off, data, len);
		r = 0;
	}
	pthread_mutex_unlock(&m->lock);
	return r;
}

int src_mem_fault(struct src *src, const char *url, uint64_t off, uint64_t len, int err, int count)
{
	struct src_mem *m = (struct src_mem *)src;
	struct mem_blob *b;
	int r = -ENOENT;

	pthread_mutex_lock(&m->lock);
	b = mem_find(m, url);
	if (b) {
		b->f_off = off;
		b->f_len = len;
		b->f_err = err;
		b->f_count = count;
		r = 0;
	}
	pthread_mutex_unlock(&m->lock);
	return r;
}

void src_mem_delay(struct src *src, unsigned ms)
{
	struct src_mem *m = (struct src_mem *)src;

	pthread_mutex_lock(&m->lock);
	m->delay_ms = ms;
	pthread_mutex_unlock(&m->lock);
}

void src_mem_stats(struct src *src, struct src_mem_stats *ret)
{
	struct src_mem *m = (struct src_mem *)src;

	pthread_mutex_lock(&m->lock);
	*ret = m->stats;
	pthread_mutex_unlock(&m->lock);
}
