/*
 * rest.h - the side endpoint (docs/loader-api.md): the loader's HTTP API (F1
 * login, F2 load, F3 upload, F4 unlock, F5 unlock status, F6 health and
 * status) plus GET /metrics, served by libmicrohttpd on rest_listen
 * (HOST:PORT, or unix:PATH with mode 0660), one thread per connection.
 *
 * The endpoint is only the HTTP layer: it reaches the daemon through the
 * pieces named in struct rest_deps, and the unlock workflow through
 * unlock.h. Bodies are capped (64 KiB; F3's upload by REST_UPLOAD_MAX),
 * errors are {"detail": "..."}; request bodies, credentials and tokens
 * never reach the log.
 */
#ifndef AZAION_REST_H
#define AZAION_REST_H

#include "fetch/fetch.h"
#include "fs/catalog.h"
#include "fs/config.h"
#include "fs/device.h"
#include "fs/session.h"
#include "fs/store.h"

/* F3 buffers the uploaded plaintext in locked memory, all uploads together at most this. */
#define REST_UPLOAD_MAX (1024ull * 1024 * 1024)

/* What the endpoint may use; everything must outlive the struct rest. */
struct rest_deps {
	const struct config *c;
	const char *mountpoint; /* shown as modelCacheDir */
	struct fetch *f;
	struct session *s;
	struct device *d;
	struct catalog *cat;
	struct store *st;
};

struct rest;
/*
 * Binds rest_listen and listens (so that a busy port is reported while the
 * terminal still shows it); starts no thread. -EADDRINUSE and the like,
 * logged.
 */
int rest_new(const struct rest_deps *deps, struct rest **ret);
/* Starts serving: after the daemon forked, from the FUSE init. */
int rest_start(struct rest *r);
/*
 * Stops serving (requests in flight are cut short), cancels an unlock in
 * progress and frees everything; call before the deps go.
 */
void rest_free(struct rest *r);

#endif
