/*
 * cdn.c - the big parts on the CDN: ranged GETs written straight into the
 * caller's buffer or handed to its receiver as they arrive (a retry gives
 * the receiver only what it has not had; a 206 is checked against its
 * Content-Range; a 200 whose server ignored the range is sliced while it
 * streams and cut off once the slice is in), object sizes, and streamed
 * PUTs; each request optionally signed for S3 by libcurl. It keeps no
 * state: a refusal's reason goes to the call's own caller.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <syslog.h>

#include "fetch/internal.h"

#define RANGE_UNKNOWN UINT64_MAX
/* An error page read before giving up on the connection. */
#define RANGE_DISCARD_MAX (64u * 1024)
/* Upload deadline: the call's timeout plus this many ms per 128 KiB. */
#define PUT_MS_PER_128K 1000u

enum range_mode {
	RANGE_OTHER,   /* an error status: the body is dropped */
	RANGE_PARTIAL, /* 206 */
	RANGE_FULL,    /* 200: the whole object, sliced on the fly */
	RANGE_NONE,    /* 416: nothing at that offset */
};

struct range {
	uint64_t off;
	size_t len;
	uint8_t *buf; /* NULL: the bytes go to sink */
	fetch_write_fn sink;
	void *sink_arg;
	size_t delivered; /* bytes sink has had, over all attempts */
	int sink_err;
	/* per attempt */
	enum range_mode mode;
	uint64_t pos; /* RANGE_FULL: offset of the next byte */
	size_t want;  /* bytes the answer should give */
	size_t got;
	size_t dropped;
	uint64_t total;
	char err[1024]; /* the start of an error answer, for a refusal's reason */
	size_t err_len;
};

/* Each call starts with no reason: a caller's buffer never shows an earlier call's. */
static void cdn_why_clear(char *why, size_t why_cap)
{
	if (why && why_cap)
		*why = '\0';
}

/* The text between <tag> and </tag> in an S3 error document, printable ASCII. */
static void cdn_xml_field(const char *doc, size_t len, const char *tag, char *out, size_t cap)
{
	char open[32], close[32];
	const char *a, *b;
	size_t n = 0;

	*out = '\0';
	snprintf(open, sizeof(open), "<%s>", tag);
	snprintf(close, sizeof(close), "</%s>", tag);
	a = memmem(doc, len, open, strlen(open));
	if (!a)
		return;
	a += strlen(open);
	b = memmem(a, len - (size_t)(a - doc), close, strlen(close));
	if (!b)
		return;
	for (; a < b && n + 1 < cap; a++)
		out[n++] = *a >= 0x20 && *a < 0x7f ? *a : '?';
	out[n] = '\0';
}

/*
 * A 401/403 of the CDN: S3's reason into the caller's why (may be NULL),
 * logged here at debug only, since the caller says it once with its context.
 */
static int cdn_refused(struct fetch *f, const char *method, const char *url, long status,
		       const void *body, size_t len, char *why, size_t why_cap)
{
	char u[512], code[64], msg[160], reason[FETCH_CDN_WHY_MAX];

	cdn_xml_field(body ? body : "", body ? len : 0, "Code", code, sizeof(code));
	cdn_xml_field(body ? body : "", body ? len : 0, "Message", msg, sizeof(msg));
	snprintf(reason, sizeof(reason), "HTTP %ld%s%s%s%s", status, *code ? ": " : "", code,
		 *msg ? ": " : "", msg);
	fetch_url_for_log(url, u, sizeof(u));
	fetch_logf(f, LOG_DEBUG, "%s %s: the CDN refused the request: %s", method, u, reason);
	if (why && why_cap)
		snprintf(why, why_cap, "%s", reason);
	return -EKEYREJECTED;
}

static int parse_u64(const char **p, uint64_t *ret)
{
	const char *s = *p;
	uint64_t v = 0;

	if (*s < '0' || *s > '9')
		return -EPROTO;
	for (; *s >= '0' && *s <= '9'; s++) {
		if (v > (UINT64_MAX - (uint64_t)(*s - '0')) / 10)
			return -EPROTO;
		v = v * 10 + (uint64_t)(*s - '0');
	}
	*p = s;
	*ret = v;
	return 0;
}

/* "bytes S-E/T", "bytes S-E/(star)" or "bytes (star)/T"; unknown parts RANGE_UNKNOWN. */
static int parse_content_range(const char *s, uint64_t *ret_start, uint64_t *ret_end,
			       uint64_t *ret_total)
{
	uint64_t start = RANGE_UNKNOWN, end = RANGE_UNKNOWN, total = RANGE_UNKNOWN;

	if (strncasecmp(s, "bytes", 5))
		return -EPROTO;
	s += 5;
	while (*s == ' ')
		s++;
	if (*s == '*') {
		s++;
	} else {
		if (parse_u64(&s, &start) || *s++ != '-' || parse_u64(&s, &end) || end < start)
			return -EPROTO;
	}
	if (*s++ != '/')
		return -EPROTO;
	if (*s == '*')
		s++;
	else if (parse_u64(&s, &total))
		return -EPROTO;
	if (*s)
		return -EPROTO;
	if (start != RANGE_UNKNOWN && total != RANGE_UNKNOWN && end >= total)
		return -EPROTO;
	*ret_start = start;
	*ret_end = end;
	*ret_total = total;
	return 0;
}

static void range_begin(struct fetch_call *c)
{
	struct range *rg = c->ctx;

	rg->mode = RANGE_OTHER;
	rg->pos = 0;
	rg->want = 0;
	rg->got = 0;
	rg->dropped = 0;
	rg->err_len = 0;
	rg->total = RANGE_UNKNOWN;
}

static int range_head(struct fetch_call *c)
{
	struct range *rg = c->ctx;
	uint64_t start, end, total, last = rg->off + rg->len - 1;

	switch (c->status) {
	case 206:
		if (!c->content_range[0] ||
		    parse_content_range(c->content_range, &start, &end, &total) ||
		    start == RANGE_UNKNOWN) {
			c->why = "206 without a valid single Content-Range";
			return -EPROTO;
		}
		if (start != rg->off || end > last ||
		    (end < last && (total == RANGE_UNKNOWN || end + 1 != total))) {
			c->why = "206 whose Content-Range is not the range asked for";
			return -EPROTO;
		}
		rg->want = (size_t)(end - start + 1);
		if (c->length >= 0 && (uint64_t)c->length != rg->want) {
			c->why = "206 whose length disagrees with its Content-Range";
			return -EPROTO;
		}
		rg->mode = RANGE_PARTIAL;
		rg->total = total;
		return 0;
	case 200:
		rg->mode = RANGE_FULL;
		if (c->length >= 0) {
			rg->total = (uint64_t)c->length;
			rg->want = rg->total <= rg->off		   ? 0
				   : rg->total - rg->off < rg->len ? (size_t)(rg->total - rg->off)
								   : rg->len;
		} else {
			rg->want = rg->len;
		}
		return 0;
	case 416:
		rg->mode = RANGE_NONE;
		if (c->content_range[0] &&
		    !parse_content_range(c->content_range, &start, &end, &total))
			rg->total = total;
		return 0;
	default:
		rg->mode = RANGE_OTHER;
		return 0;
	}
}

/*
 * The next len bytes of this attempt's answer: into the buffer, or to the
 * sink, which never sees a byte twice when an attempt starts over.
 */
static int range_take(struct range *rg, const uint8_t *data, size_t len)
{
	if (rg->buf) {
		memcpy(rg->buf + rg->got, data, len);
	} else if (rg->got + len > rg->delivered) {
		size_t seen = rg->delivered > rg->got ? rg->delivered - rg->got : 0;

		rg->sink_err = rg->sink(rg->sink_arg, data + seen, len - seen);
		if (rg->sink_err)
			return rg->sink_err;
		rg->delivered = rg->got + len;
	}
	rg->got += len;
	return 0;
}

static int range_body(struct fetch_call *c, const uint8_t *data, size_t len)
{
	struct range *rg = c->ctx;
	uint64_t skip;
	size_t take;

	switch (rg->mode) {
	case RANGE_PARTIAL:
		if (len > rg->want - rg->got) {
			c->why = "206 longer than its Content-Range";
			return -EPROTO;
		}
		/* The sink's refusal is the caller's to tell: a clean stop here. */
		return range_take(rg, data, len) ? FETCH_STOP : 0;
	case RANGE_FULL:
		skip = rg->pos < rg->off ? rg->off - rg->pos : 0;
		if (skip >= len) {
			rg->pos += len;
			return 0;
		}
		data += skip;
		len -= (size_t)skip;
		rg->pos += skip;
		take = len < rg->want - rg->got ? len : rg->want - rg->got;
		if (range_take(rg, data, take))
			return FETCH_STOP;
		rg->pos += take;
		/* The rest of the object is of no use: cut the transfer. */
		return rg->got == rg->want ? FETCH_STOP : 0;
	default:
		take = len < sizeof(rg->err) - rg->err_len ? len : sizeof(rg->err) - rg->err_len;
		memcpy(rg->err + rg->err_len, data, take);
		rg->err_len += take;
		rg->dropped += len;
		return rg->dropped > RANGE_DISCARD_MAX ? FETCH_STOP : 0;
	}
}

static int range_end(struct fetch_call *c)
{
	struct range *rg = c->ctx;

	if (rg->sink_err)
		return 0; /* the call returns it */

	switch (rg->mode) {
	case RANGE_PARTIAL:
		if (rg->got < rg->want) {
			c->why = "206 body shorter than its Content-Range";
			return FETCH_SHORT;
		}
		return 0;
	case RANGE_FULL:
		if (rg->got == rg->want)
			return 0;
		if (rg->total != RANGE_UNKNOWN) {
			c->why = "200 body shorter than its Content-Length";
			return FETCH_SHORT;
		}
		/* No length given: the object ended here. */
		rg->total = rg->pos;
		return 0;
	default:
		return 0;
	}
}

static const struct fetch_body_ops range_ops = {
	.begin = range_begin,
	.head = range_head,
	.body = range_body,
	.end = range_end,
};

/* A ranged GET into rg's buffer or sink. */
static int cdn_range(struct fetch *f, const char *url, const struct fetch_s3 *s3, struct range *rg,
		     size_t *ret_len, uint64_t *ret_total, char *why, size_t why_cap)
{
	struct fetch_request req = {.method = "GET", .url = url, .s3 = s3};
	struct fetch_call c = {.f = f, .req = &req, .ops = &range_ops, .ctx = rg};
	char spec[48];
	int r;

	cdn_why_clear(why, why_cap);
	if (!rg->len) {
		*ret_len = 0;
		if (ret_total)
			*ret_total = RANGE_UNKNOWN;
		return 0;
	}
	if ((!rg->buf && !rg->sink) || rg->off > UINT64_MAX - rg->len)
		return -EINVAL;
	snprintf(spec, sizeof(spec), "%" PRIu64 "-%" PRIu64, rg->off, rg->off + rg->len - 1);
	c.range = spec;
	r = fetch_run(&c);
	if (r)
		return r;
	if (rg->sink_err)
		return rg->sink_err;
	if (rg->mode == RANGE_OTHER && (c.status == 401 || c.status == 403))
		return cdn_refused(f, "GET", url, c.status, rg->err, rg->err_len, why, why_cap);
	if (rg->mode == RANGE_OTHER)
		return fetch_check_status(f, "GET", url, c.status, 0);
	*ret_len = rg->got;
	if (ret_total)
		*ret_total = rg->total;
	return 0;
}

int fetch_cdn_range(struct fetch *f, const char *url, const struct fetch_s3 *s3, uint64_t off,
		    size_t len, uint8_t *buf, size_t *ret_len, uint64_t *ret_total, char *why,
		    size_t why_cap)
{
	struct range rg = {.off = off, .len = len, .buf = buf};

	if (!buf && len) {
		cdn_why_clear(why, why_cap);
		return -EINVAL;
	}
	return cdn_range(f, url, s3, &rg, ret_len, ret_total, why, why_cap);
}

int fetch_cdn_range_stream(struct fetch *f, const char *url, const struct fetch_s3 *s3,
			   uint64_t off, size_t len, fetch_write_fn sink, void *arg,
			   size_t *ret_len, char *why, size_t why_cap)
{
	struct range rg = {.off = off, .len = len, .sink = sink, .sink_arg = arg};

	return cdn_range(f, url, s3, &rg, ret_len, NULL, why, why_cap);
}

int fetch_cdn_size(struct fetch *f, const char *url, const struct fetch_s3 *s3, uint64_t *ret_size,
		   char *why, size_t why_cap)
{
	struct fetch_request req = {.method = "HEAD", .url = url, .s3 = s3};
	struct fetch_call c = {.f = f, .req = &req};
	uint64_t total = RANGE_UNKNOWN;
	uint8_t one;
	size_t got;
	int r;

	cdn_why_clear(why, why_cap);
	r = fetch_run(&c);
	if (r)
		return r;
	if (c.status >= 200 && c.status < 300 && c.length >= 0) {
		*ret_size = (uint64_t)c.length;
		return 0;
	}
	/* A HEAD refusal has no body to give S3's reason: one byte's GET has. */
	if (c.status == 401 || c.status == 403) {
		r = fetch_cdn_range(f, url, s3, 0, 1, &one, &got, &total, why, why_cap);
		return r < 0 ? r : cdn_refused(f, "HEAD", url, c.status, NULL, 0, why, why_cap);
	}
	if (!(c.status >= 200 && c.status < 300) && c.status != 405 && c.status != 501)
		return fetch_check_status(f, "HEAD", url, c.status, 0);
	/* No usable HEAD: the size comes with a one-byte range. */
	r = fetch_cdn_range(f, url, s3, 0, 1, &one, &got, &total, why, why_cap);
	if (r)
		return r;
	if (total == RANGE_UNKNOWN) {
		char u[512];

		fetch_url_for_log(url, u, sizeof(u));
		fetch_logf(f, LOG_ERR, "GET %s: the server does not tell the object's size", u);
		return -EPROTO;
	}
	*ret_size = total;
	return 0;
}

int fetch_cdn_put(struct fetch *f, const char *url, const struct fetch_s3 *s3, fetch_read_fn rd,
		  void *ctx, uint64_t size, char *why, size_t why_cap)
{
	uint64_t timeout = fetch_timeout_ms(f) + (size >> 17) * PUT_MS_PER_128K;
	struct fetch_request req = {
		.method = "PUT",
		.url = url,
		.s3 = s3,
		.body_reader = rd,
		.body_ctx = ctx,
		.body_size = (int64_t)size,
		.content_type = "application/octet-stream",
	};
	struct fetch_response resp = {0};
	int r;

	cdn_why_clear(why, why_cap);
	if (!rd || size > INT64_MAX)
		return -EINVAL;
	req.timeout_ms = timeout > UINT32_MAX ? UINT32_MAX : (unsigned)timeout;
	r = fetch_exchange(f, &req, NULL, &resp);
	if (r)
		return r;
	if (resp.status == 401 || resp.status == 403)
		r = cdn_refused(f, "PUT", url, resp.status, resp.body.data, resp.body.len, why,
				why_cap);
	else
		r = fetch_check_status(f, "PUT", url, resp.status, 0);
	fetch_response_free(&resp);
	return r;
}
