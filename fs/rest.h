/*
 * rest.h - the side endpoint (docs/loader-api.md): the loader's HTTP API (F1
 * login, F2 load, F3 upload, F4 unlock, F5 unlock status, F6 health and
 * status) plus GET /metrics, served by libmicrohttpd on rest_listen
 * (HOST:PORT, or unix:PATH with mode 0660 and group rest_group), and
 * /metrics alone on metrics_listen when set; one thread per connection.
 *
 * Who gets an answer (docs/trust.md 2): a Host that names a loopback
 * address, localhost or a name of rest_hosts (else 421); JSON bodies that
 * say application/json and F3 that says multipart/form-data (else 415);
 * no CORS header ever; F3 only with rest_upload (else 403); on a unix:
 * socket only root and members of rest_group (peer credentials, else
 * 403); with rest_token_file, every request but GET /health carries its
 * bearer token (else 401).
 *
 * The endpoint is only the HTTP layer: it reaches the daemon through the
 * pieces named in struct rest_deps, and the unlock workflow through
 * unlock.h. Bodies are capped (64 KiB; one F3 upload by
 * REST_UPLOAD_CONN_MAX, all of them together by REST_UPLOAD_MAX),
 * errors are {"detail": "..."}; request bodies, credentials and tokens
 * never reach the log.
 */
#ifndef AZAION_REST_H
#define AZAION_REST_H

#include <sys/types.h>

#include "fetch/fetch.h"
#include "fs/catalog.h"
#include "fs/config.h"
#include "fs/device.h"
#include "fs/session.h"
#include "fs/store.h"

/* F3 buffers the uploaded plaintext in locked memory, all uploads together at most this. */
#define REST_UPLOAD_MAX (1024ull * 1024 * 1024)
/* ... and one upload (one connection's request) at most this. */
#define REST_UPLOAD_CONN_MAX (512ull * 1024 * 1024)

/* What the endpoint may use; everything must outlive the struct rest. */
struct rest_deps {
	const struct config *c;
	const char *mountpoint; /* shown as modelCacheDir */
	struct fetch *f;
	struct session *s;
	struct device *d;
	struct catalog *cat;
	struct store *st;
	int takeover; /* another worker of this mount still listens (an upgrade) */
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

/*
 * The pure rules, for tests. A Host header value ("name", "name:port",
 * "[v6]:port") is allowed when it names a loopback address literally,
 * localhost, or one of names (NULL-terminated, may be NULL); never by
 * resolving it, since the name is the attacker's in DNS rebinding.
 */
int rest_host_allowed(const char *host, char *const *names);
/* An Origin header value ("scheme://host[:port]"): allowed under the same rule. */
int rest_origin_allowed(const char *origin, char *const *names);
/* 1 when a Content-Type value's media type is want (case-insensitive, parameters ignored). */
int rest_media_type_is(const char *content_type, const char *want);
/* 1 when a peer is root, or has want as its primary or one of its n supplementary groups. */
int rest_peer_allowed(uid_t uid, gid_t gid, const gid_t *groups, size_t n, gid_t want);

#endif
