/*
 * internal.h - what the files of fetch/ share and nobody else sees: the
 * exchange engine (one call, its attempts, retries and body handling) and
 * a few helpers. fetch.h is the only public header of the folder.
 */
#ifndef AZAION_FETCH_INTERNAL_H
#define AZAION_FETCH_INTERNAL_H

#include <curl/curl.h>
#include "fetch/fetch.h"

#define FETCH_MIB ((size_t)1 << 20)

/* Answers of body hooks besides 0 and a negative errno. */
enum {
	FETCH_STOP = 1,	 /* body(): all wanted bytes are in; end the transfer */
	FETCH_SHORT = 2, /* end(): the body was short; a transient failure */
};

struct fetch_call;

/*
 * How one call consumes its answer. Every hook may be NULL. begin() runs
 * before each attempt (reset what the previous one left); head() once per
 * attempt when the final status and headers are in, before any body byte;
 * body() for each piece of the body; end() after a transfer that completed.
 * A hook that fails sets c->why (a static string) for the log.
 */
struct fetch_body_ops {
	void (*begin)(struct fetch_call *c);
	int (*head)(struct fetch_call *c);
	int (*body)(struct fetch_call *c, const uint8_t *data, size_t len);
	int (*end)(struct fetch_call *c);
};

/* What the public request has no field for: options set on each attempt's
 * handle (a MIME body) and undone after it; a longer stall bound. */
struct fetch_hooks {
	int (*setup)(void *ctx, CURL *h);
	void (*undo)(void *ctx);
	void *ctx;
	unsigned low_speed_s; /* 0: the default */
};

struct fetch_call {
	struct fetch *f;
	const struct fetch_request *req;
	const struct fetch_body_ops *ops;
	void *ctx; /* for ops */
	const struct fetch_hooks *hooks;
	const char *range;    /* CURLOPT_RANGE, "a-b" */
	unsigned low_speed_s; /* 0: the default stall bound */

	/* Written by the engine for the hooks, per attempt. */
	long status;
	curl_off_t length;	 /* Content-Length, -1 unknown */
	char content_range[128]; /* "" when absent */
	int no_more_retries;	 /* set by body(): bytes left for good */
	const char *why;
};

/*
 * Runs the call: attempts, retries and backoff within the deadline.
 * Returns 0 when an HTTP answer arrived and the hooks accepted it (the
 * status is in c->status), or a negative errno, logged once.
 */
int fetch_run(struct fetch_call *c);

/* Like fetch_request() with extra per-attempt options. */
int fetch_exchange(struct fetch *f, const struct fetch_request *req,
		   const struct fetch_hooks *hooks, struct fetch_response *ret);

/* Logs through opts.log; never pass secrets. */
void fetch_logf(struct fetch *f, int priority, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/*
 * Maps a status to 0 or -errno like fetch_status_errno() and logs the
 * failure once (at debug for an expected 404 when quiet_404).
 */
int fetch_check_status(struct fetch *f, const char *method, const char *url, long status,
		       int quiet_404);

/* The per-call timeout currently in force. */
unsigned fetch_timeout_ms(struct fetch *f);

#endif
