/*
 * src_cdn.c - the bottom source layer (see src.h): range requests to the
 * CDN. Retries, timeouts and the CDN's keys are fetch's; this layer only
 * insists on an answer of exactly the bytes asked for, and puts every
 * failure into words for its caller: the CDN's reason for a refusal, the
 * failed call's words (fetch_strerror) for the rest. Its calls run quiet
 * (fetch_quiet): the edge that answers the reader logs those words once.
 */
#include <errno.h>
#include <stdlib.h>

#include "fetch/fetch.h"
#include "fs/metrics.h"
#include "fs/msg.h"
#include "fs/src.h"

struct src_cdn {
	struct src src;
	struct fetch *f;
};

/* A failed call's words, from the CDN's refusal (why) or from fetch's. */
static void cdn_msg(const char *method, const struct src_blob *b, int r, const char *why,
		    char **ret_msg)
{
	char url[512];

	fetch_url_for_log(b->url, url, sizeof(url));
	switch (r) {
	case -EKEYREJECTED:
		msg_set(ret_msg,
			"%s: the CDN refused the request: %s; check the CDN's keys (s3_access_key, "
			"s3_secret_key_file or cdn.yaml) and the clock",
			url, why);
		break;
	case -ENOENT:
		msg_set(ret_msg, "%s %s: the CDN has no such object (HTTP 404)", method, url);
		break;
	default:
		msg_set(ret_msg, "%s %s: %s", method, url, fetch_strerror(r));
	}
}

/* What a range request gave, counted, and put into words when it failed. */
static int cdn_result(const struct src_blob *b, uint64_t off, size_t len, int r, size_t got,
		      uint64_t t0, const char *why, char **ret_msg)
{
	metrics_observe(METRICS_CDN_READ, t0);
	metrics_count(METRICS_CDN_FETCHES, 1);
	metrics_count(METRICS_CDN_BYTES, got);
	if (r < 0 || got != len)
		metrics_count(METRICS_CDN_ERRORS, 1);
	if (r < 0) {
		if (ret_msg)
			cdn_msg("GET", b, r, why, ret_msg);
		return r;
	}
	if (got != len) {
		char url[512];

		fetch_url_for_log(b->url, url, sizeof(url));
		msg_set(ret_msg,
			"%s: %zu bytes at %llu, wanted %zu: the big part is shorter than expected",
			url, got, (unsigned long long)off, len);
		return -EIO;
	}
	return 0;
}

static int cdn_read(struct src *src, const struct src_blob *b, uint64_t off, size_t len,
		    uint8_t *buf, char **ret_msg)
{
	struct src_cdn *c = (struct src_cdn *)src;
	uint64_t t0 = metrics_now();
	char why[FETCH_CDN_WHY_MAX];
	size_t got = 0;
	int r, quiet;

	quiet = fetch_quiet(1);
	r = fetch_cdn_range(c->f, b->url, b->s3, off, len, buf, &got, NULL, why, sizeof(why));
	fetch_quiet(quiet);
	return cdn_result(b, off, len, r, got, t0, why, ret_msg);
}

/* A receiver, and whether the stream ended because it refused. */
struct cdn_sink {
	src_sink_fn sink;
	void *arg;
	int refused;
};

static int cdn_sink_take(void *arg, const uint8_t *data, size_t len)
{
	struct cdn_sink *k = arg;
	int r = k->sink(k->arg, data, len);

	k->refused = r != 0;
	return r;
}

static int cdn_stream(struct src *src, const struct src_blob *b, uint64_t off, size_t len,
		      src_sink_fn sink, void *arg, char **ret_msg)
{
	struct src_cdn *c = (struct src_cdn *)src;
	struct cdn_sink k = {sink, arg, 0};
	uint64_t t0 = metrics_now();
	char why[FETCH_CDN_WHY_MAX];
	size_t got = 0;
	int r, quiet;

	quiet = fetch_quiet(1);
	r = fetch_cdn_range_stream(c->f, b->url, b->s3, off, len, cdn_sink_take, &k, &got, why,
				   sizeof(why));
	fetch_quiet(quiet);
	/* The receiver's refusal is its own to tell. */
	return cdn_result(b, off, len, r, got, t0, why, k.refused ? NULL : ret_msg);
}

static int cdn_size(struct src *src, const struct src_blob *b, uint64_t *ret_size, char **ret_msg)
{
	struct src_cdn *c = (struct src_cdn *)src;
	char why[FETCH_CDN_WHY_MAX];
	int r, quiet;

	quiet = fetch_quiet(1);
	r = fetch_cdn_size(c->f, b->url, b->s3, ret_size, why, sizeof(why));
	fetch_quiet(quiet);
	if (r == -EPROTO) {
		char url[512];

		fetch_url_for_log(b->url, url, sizeof(url));
		msg_set(ret_msg, "%s: the CDN's answer does not tell the object's size", url);
	} else if (r < 0) {
		cdn_msg("HEAD", b, r, why, ret_msg);
	}
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
