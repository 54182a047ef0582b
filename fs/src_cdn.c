/*
 * src_cdn.c - the bottom source layer (see src.h): range requests to the
 * CDN. Retries, timeouts and the CDN's keys are fetch's; this layer only
 * insists on an answer of exactly the bytes asked for, and logs a
 * refusal with the CDN's reason (fetch.h).
 */
#include <errno.h>
#include <stdlib.h>

#include "fs/log.h"
#include "fs/metrics.h"
#include "fs/src.h"

struct src_cdn {
	struct src src;
	struct fetch *f;
};

/* What a range request gave, counted, and the CDN's refusal said. */
static int cdn_result(const struct src_blob *b, uint64_t off, size_t len, int r, size_t got,
		      uint64_t t0, const char *why)
{
	metrics_observe(METRICS_CDN_READ, t0);
	metrics_count(METRICS_CDN_FETCHES, 1);
	metrics_count(METRICS_CDN_BYTES, got);
	if (r < 0 || got != len)
		metrics_count(METRICS_CDN_ERRORS, 1);
	if (r == -EKEYREJECTED)
		log_err("%s: the CDN refused the request: %s", b->url, why);
	if (r < 0)
		return r;
	if (got != len) {
		log_err("%s: %zu bytes at %llu, wanted %zu: the big part is shorter than "
			"expected",
			b->url, got, (unsigned long long)off, len);
		return -EIO;
	}
	return 0;
}

static int cdn_read(struct src *src, const struct src_blob *b, uint64_t off, size_t len,
		    uint8_t *buf)
{
	struct src_cdn *c = (struct src_cdn *)src;
	uint64_t t0 = metrics_now();
	char why[FETCH_CDN_WHY_MAX];
	size_t got = 0;
	int r;

	r = fetch_cdn_range(c->f, b->url, b->s3, off, len, buf, &got, NULL, why, sizeof(why));
	return cdn_result(b, off, len, r, got, t0, why);
}

static int cdn_stream(struct src *src, const struct src_blob *b, uint64_t off, size_t len,
		      src_sink_fn sink, void *arg)
{
	struct src_cdn *c = (struct src_cdn *)src;
	uint64_t t0 = metrics_now();
	char why[FETCH_CDN_WHY_MAX];
	size_t got = 0;
	int r;

	r = fetch_cdn_range_stream(c->f, b->url, b->s3, off, len, sink, arg, &got, why,
				   sizeof(why));
	return cdn_result(b, off, len, r, got, t0, why);
}

static int cdn_size(struct src *src, const struct src_blob *b, uint64_t *ret_size)
{
	struct src_cdn *c = (struct src_cdn *)src;
	char why[FETCH_CDN_WHY_MAX];
	int r;

	r = fetch_cdn_size(c->f, b->url, b->s3, ret_size, why, sizeof(why));
	if (r == -EKEYREJECTED)
		log_err("%s: the CDN refused the request: %s", b->url, why);
	return r;
}

static void cdn_free(struct src *src)
{
	free(src);
}

static const struct src_ops cdn_ops = {
	.read = cdn_read,
	.stream = cdn_stream,
	.size = cdn_size,
	.free = cdn_free,
};

int src_cdn_new(struct fetch *f, struct src **ret)
{
	struct src_cdn *c = calloc(1, sizeof(*c));

	if (!c)
		return -ENOMEM;
	c->src.ops = &cdn_ops;
	c->f = f;
	*ret = &c->src;
	return 0;
}

void src_free(struct src *s)
{
	if (s)
		s->ops->free(s);
}
