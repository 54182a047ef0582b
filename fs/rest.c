/*
 * rest.c - the side endpoint (see rest.h): request routing, bodies with
 * caps, and the replies of docs/loader-api.md. The work is elsewhere: the
 * session and unlock.h log in, the store reads (F2), the publisher
 * uploads (F3), unlock.c unlocks (F4/F5).
 *
 * libmicrohttpd runs one thread per connection, so a handler may block:
 * F2's content reader waits for the store, F3 publishes before it
 * answers. Every request answers exactly once, when its body has been
 * read (rest_dispatch); a body that is over its cap or belongs to a
 * request already refused is read and dropped, so the client always gets
 * the answer, except one announced larger than REST_DISCARD_MAX, and a
 * refused one of unannounced (chunked) length, which are answered before
 * they are read, on a connection that then closes.
 *
 * The doors of docs/trust.md 2 (peer credentials, Host, Origin, bearer
 * token, route, upload switch, content type) are checked in that order
 * before any body byte is kept.
 *
 * Secrets: JSON bodies (credentials) are kept in locked memory and wiped;
 * jansson's free is set to wipe what it frees (strings parsed out of a
 * body included). F3's plaintext is buffered in locked memory (the part's
 * size must be known before the publisher starts, docs/formats.md) and wiped.
 * What libmicrohttpd holds in its own connection buffers is beyond reach.
 *
 * Each listener is a door (rest_listen, and metrics_listen for /metrics
 * alone) with its own libmicrohttpd daemon; both share the struct rest.
 *
 * Locking: r->lock guards the API probe's cache and the last catalog
 * refresh time; the counters are atomic; a request's state belongs to its
 * connection's thread.
 */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <malloc.h>
#include <microhttpd.h>
#include <netdb.h>
#include <pthread.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>

#include "crypto/crypto.h"
#include "fs/keys.h"
#include "fs/log.h"
#include "fs/metrics.h"
#include "fs/msg.h"
#include "fs/names.h"
#include "fs/publish.h"
#include "fs/rest.h"
#include "fs/unlock.h"

#define REST_BODY_MAX (64 * 1024)
#define REST_DISCARD_MAX (4u * 1024 * 1024) /* larger bodies over a cap are refused unread */
#define REST_UPLOAD_SLACK (1024 * 1024)	    /* multipart framing and small fields */
#define REST_UPLOAD_CHUNK (4u * 1024 * 1024)
#define REST_FIELD_MAX 1024
#define REST_BACKLOG 256
#define REST_CONN_MAX 512
#define REST_CONN_TIMEOUT 300 /* seconds a connection may stay idle */
#define REST_CONN_MEMORY (512 * 1024)
#define REST_BLOCK (256 * 1024) /* F2's bytes per write */
#define REST_PP_BUFFER (64 * 1024)
#define REST_API_PROBE_S 5
#define REST_API_PROBE_MS 2000
#define REST_REFRESH_MIN_S 2
#define REST_TOKEN_MIN 16   /* bytes of a bearer token */
#define REST_PEER_GROUPS 64 /* supplementary groups read at once; more are asked for */
#define REST_HOST_SHOWN 64  /* bytes of a refused Host or Origin shown back */

#ifndef SO_PEERGROUPS
#define SO_PEERGROUPS 59 /* Linux 4.13; older kernels fall back to the group database */
#endif

/* Why a body does not fit. */
enum rest_big {
	REST_FITS,
	REST_BIG_BODY,	 /* a JSON body over REST_BODY_MAX */
	REST_BIG_UPLOAD, /* one upload over REST_UPLOAD_CONN_MAX */
	REST_BIG_TOTAL,	 /* all uploads in flight over REST_UPLOAD_MAX */
};

enum rest_route {
	ROUTE_NONE,
	ROUTE_LOGIN,
	ROUTE_LOAD,
	ROUTE_UPLOAD,
	ROUTE_UNLOCK,
	ROUTE_UNLOCK_STATUS,
	ROUTE_HEALTH,
	ROUTE_STATUS,
	ROUTE_METRICS,
};

struct rest_counters {
	uint64_t by_class[6]; /* answers by status class, 1xx .. 5xx */
	uint64_t loads, load_errors, load_bytes;
	uint64_t uploads, upload_errors, upload_bytes;
	uint64_t logins, login_errors;
};

/* One listening address and what it serves. */
struct rest_door {
	struct rest *r;
	const char *spec; /* rest_listen or metrics_listen */
	int metrics_only; /* metrics_listen: /metrics alone */
	int fd;		  /* until its daemon owns it */
	char *unix_path;  /* unix:PATH: removed at exit, if still this door's */
	ino_t unix_ino;	  /* the socket file this door bound */
	struct MHD_Daemon *mhd;
};

struct rest {
	struct rest_deps d;
	struct rest_door doors[2];
	size_t n_doors;
	gid_t group;	     /* rest_group, when a door is a unix: socket */
	uint8_t *token_hash; /* SHA-256 of the bearer token, locked memory; NULL: none */
	int serving;
	struct unlock *unlock;
	int stopping;
	uint64_t upload_bytes; /* buffered by uploads in flight */
	struct rest_counters n;

	pthread_mutex_t lock;
	time_t api_checked;
	int api_ok;
	time_t last_refresh;
};

struct rest_upload {
	uint8_t **chunks; /* secmem, REST_UPLOAD_CHUNK each */
	size_t n_chunks;
	uint64_t len;
	uint64_t pos;
	int has_data;
	char folder[REST_FIELD_MAX + 1];
	size_t folder_len;
	int has_folder;
	char format[16];
	size_t format_len;
	int has_format;
};

struct rest_req {
	struct rest *r;
	enum rest_route route;
	char *name;   /* F2/F3: the path's file name */
	int www_auth; /* a 401 for a missing or wrong bearer token */
	int close;    /* refused at a door: the connection ends with the answer */
	/* A refusal decided before the body was read: answered after it. */
	unsigned status;
	char detail[512];
	uint8_t *body; /* secmem, REST_BODY_MAX */
	size_t body_len;
	enum rest_big too_big;
	int answered; /* refused before its body: the rest of it is dropped */
	int malformed;
	int nomem;
	struct MHD_PostProcessor *pp;
	struct rest_upload up;
};

#define REST_COUNT(r, field, v) __atomic_fetch_add(&(r)->n.field, (v), __ATOMIC_RELAXED)
#define REST_LOAD(r, field) __atomic_load_n(&(r)->n.field, __ATOMIC_RELAXED)

static int rest_stopping(struct rest *r)
{
	return __atomic_load_n(&r->stopping, __ATOMIC_RELAXED);
}

/* ---- replies ------------------------------------------------------------------ */

static enum MHD_Result rest_send(struct rest *r, struct MHD_Connection *conn, unsigned status,
				 struct MHD_Response *resp)
{
	enum MHD_Result ret;

	if (!resp)
		return MHD_NO;
	ret = MHD_queue_response(conn, status, resp);
	MHD_destroy_response(resp);
	if (status >= 100 && status < 600)
		REST_COUNT(r, by_class[status / 100], 1);
	return ret;
}

/* A JSON answer, or NULL; steals body. */
static struct MHD_Response *rest_json_response(json_t *body)
{
	struct MHD_Response *resp;
	char *text;

	text = body ? json_dumps(body, JSON_COMPACT) : NULL;
	json_decref(body);
	if (!text)
		return NULL;
	resp = MHD_create_response_from_buffer(strlen(text), text, MHD_RESPMEM_MUST_FREE);
	if (!resp) {
		free(text);
		return NULL;
	}
	MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
	return resp;
}

/* Steals body. */
static enum MHD_Result rest_json(struct rest *r, struct MHD_Connection *conn, unsigned status,
				 json_t *body)
{
	return rest_send(r, conn, status, rest_json_response(body));
}

static enum MHD_Result rest_detail(struct rest *r, struct MHD_Connection *conn, unsigned status,
				   const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static enum MHD_Result rest_detail(struct rest *r, struct MHD_Connection *conn, unsigned status,
				   const char *fmt, ...)
{
	char msg[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	return rest_json(r, conn, status, json_pack("{s:s}", "detail", msg));
}

static void rest_refuse(struct rest_req *q, unsigned status, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static void rest_refuse(struct rest_req *q, unsigned status, const char *fmt, ...)
{
	va_list ap;

	if (q->status)
		return;
	q->status = status;
	va_start(ap, fmt);
	vsnprintf(q->detail, sizeof(q->detail), fmt, ap);
	va_end(ap);
}

/* ---- bodies ------------------------------------------------------------------- */

static void rest_upload_clear(struct rest *r, struct rest_upload *up)
{
	for (size_t i = 0; i < up->n_chunks; i++)
		secmem_free(up->chunks[i]);
	if (up->n_chunks)
		__atomic_fetch_sub(&r->upload_bytes, (uint64_t)up->n_chunks * REST_UPLOAD_CHUNK,
				   __ATOMIC_RELAXED);
	free(up->chunks);
	up->chunks = NULL;
	up->n_chunks = 0;
	up->len = 0;
}

/*
 * Appends F3's plaintext; -E2BIG past the cap of one upload, -EFBIG past
 * the budget of all uploads, -ENOMEM.
 */
static int rest_upload_append(struct rest_req *q, const char *data, size_t size)
{
	struct rest_upload *up = &q->up;
	struct rest *r = q->r;

	if (size > REST_UPLOAD_CONN_MAX - up->len)
		return -E2BIG;
	while (size) {
		size_t off = (size_t)(up->len % REST_UPLOAD_CHUNK), n;

		if (off == 0 && up->len == (uint64_t)up->n_chunks * REST_UPLOAD_CHUNK) {
			uint8_t **grown;
			uint64_t total;

			total = __atomic_add_fetch(&r->upload_bytes, REST_UPLOAD_CHUNK,
						   __ATOMIC_RELAXED);
			if (total > REST_UPLOAD_MAX) {
				__atomic_fetch_sub(&r->upload_bytes, REST_UPLOAD_CHUNK,
						   __ATOMIC_RELAXED);
				return -EFBIG;
			}
			grown = realloc(up->chunks, (up->n_chunks + 1) * sizeof(*grown));
			if (grown)
				up->chunks = grown;
			if (!grown ||
			    !(up->chunks[up->n_chunks] = secmem_alloc(REST_UPLOAD_CHUNK))) {
				__atomic_fetch_sub(&r->upload_bytes, REST_UPLOAD_CHUNK,
						   __ATOMIC_RELAXED);
				return -ENOMEM;
			}
			up->n_chunks++;
		}
		n = REST_UPLOAD_CHUNK - off < size ? REST_UPLOAD_CHUNK - off : size;
		memcpy(up->chunks[up->len / REST_UPLOAD_CHUNK] + off, data, n);
		up->len += n;
		data += n;
		size -= n;
	}
	return 0;
}

static int rest_field_append(char *buf, size_t cap, size_t *len, const char *data, size_t size)
{
	if (size > cap - 1 - *len)
		return -EFBIG;
	if (!size)
		return 0; /* data may be NULL then */
	memcpy(buf + *len, data, size);
	*len += size;
	buf[*len] = '\0';
	return 0;
}

static enum MHD_Result rest_upload_iter(void *cls, enum MHD_ValueKind kind, const char *key,
					const char *filename, const char *content_type,
					const char *transfer_encoding, const char *data,
					uint64_t off, size_t size)
{
	struct rest_req *q = cls;
	struct rest_upload *up = &q->up;
	int r = 0;

	/* libmicrohttpd passes a part without name= in its Content-Disposition with key NULL. */
	if (!key)
		return MHD_YES;
	if (strcmp(key, "data") == 0) {
		if (off == 0 && up->len > 0) {
			rest_refuse(q, MHD_HTTP_UNPROCESSABLE_CONTENT,
				    "the body holds more than one 'data' part");
			return MHD_NO;
		}
		up->has_data = 1;
		r = rest_upload_append(q, data, size);
		if (r == -EFBIG || r == -E2BIG) {
			q->too_big = r == -E2BIG ? REST_BIG_UPLOAD : REST_BIG_TOTAL;
			return MHD_NO;
		}
		if (r < 0) {
			q->nomem = 1;
			return MHD_NO;
		}
	} else if (strcmp(key, "folder") == 0) {
		up->has_folder = 1;
		r = rest_field_append(up->folder, sizeof(up->folder), &up->folder_len, data, size);
	} else if (strcmp(key, "format") == 0) {
		up->has_format = 1;
		r = rest_field_append(up->format, sizeof(up->format), &up->format_len, data, size);
	}
	if (r < 0) {
		rest_refuse(q, MHD_HTTP_UNPROCESSABLE_CONTENT, "the field '%s' is too long", key);
		return MHD_NO;
	}
	return MHD_YES;
}

static void rest_take_body(struct rest_req *q, const char *data, size_t size)
{
	if (q->status || q->too_big || q->malformed || q->nomem)
		return; /* answered after the body: drop it */
	if (q->route == ROUTE_UPLOAD) {
		if (MHD_post_process(q->pp, data, size) != MHD_YES && !q->too_big && !q->nomem)
			q->malformed = 1;
		return;
	}
	if (size > REST_BODY_MAX - q->body_len) {
		q->too_big = REST_BIG_BODY;
		return;
	}
	if (!q->body) {
		q->body = secmem_alloc(REST_BODY_MAX);
		if (!q->body) {
			q->nomem = 1;
			return;
		}
	}
	memcpy(q->body + q->body_len, data, size);
	q->body_len += size;
}

/*
 * The JSON object of a body, with the named string fields (NULL-terminated
 * list of name, const char ** pairs). On error a 422 reason in q.
 */
static json_t *rest_body_fields(struct rest_req *q, ...)
{
	json_error_t err;
	const char *name;
	json_t *doc;
	va_list ap;

	doc = json_loadb((const char *)q->body, q->body_len, JSON_REJECT_DUPLICATES, &err);
	if (!doc) {
		rest_refuse(q, MHD_HTTP_UNPROCESSABLE_CONTENT, "malformed JSON at line %d: %s",
			    err.line, q->body_len ? err.text : "the body is empty");
		return NULL;
	}
	if (!json_is_object(doc)) {
		rest_refuse(q, MHD_HTTP_UNPROCESSABLE_CONTENT, "the body must be a JSON object");
		json_decref(doc);
		return NULL;
	}
	va_start(ap, q);
	while ((name = va_arg(ap, const char *))) {
		const char **out = va_arg(ap, const char **);
		json_t *v = json_object_get(doc, name);

		if (!v) {
			rest_refuse(q, MHD_HTTP_UNPROCESSABLE_CONTENT, "field '%s' is required",
				    name);
			break;
		}
		if (!json_is_string(v)) {
			rest_refuse(q, MHD_HTTP_UNPROCESSABLE_CONTENT,
				    "field '%s' must be a string", name);
			break;
		}
		*out = json_string_value(v);
	}
	va_end(ap);
	if (q->status) {
		json_decref(doc);
		return NULL;
	}
	return doc;
}

/* jansson's free: strings parsed out of bodies may be credentials. */
static void rest_json_free(void *p)
{
	if (p) {
		crypto_wipe(p, malloc_usable_size(p));
		free(p);
	}
}

/* ---- F1 login, F4 unlock, F5 --------------------------------------------------- */

static void rest_refresh_catalog(struct rest *r, int force)
{
	time_t now = time(NULL);
	int due;

	pthread_mutex_lock(&r->lock);
	due = force || now - r->last_refresh >= REST_REFRESH_MIN_S;
	if (due)
		r->last_refresh = now;
	pthread_mutex_unlock(&r->lock);
	if (due)
		catalog_refresh(r->d.cat, 0);
}

static enum MHD_Result rest_login(struct rest *r, struct rest_req *q, struct MHD_Connection *conn)
{
	const char *email = NULL, *password = NULL;
	json_t *doc;
	int e;

	doc = rest_body_fields(q, "email", &email, "password", &password, NULL);
	if (!doc)
		return rest_detail(r, conn, q->status, "%s", q->detail);
	REST_COUNT(r, logins, 1);
	e = unlock_login(r->d.c, r->d.f, r->d.s, r->d.d, email, password);
	json_decref(doc);
	if (e == -EINVAL) {
		REST_COUNT(r, login_errors, 1);
		return rest_detail(r, conn, MHD_HTTP_UNPROCESSABLE_CONTENT,
				   "email and password must be 1 to 1024 characters");
	}
	if (e < 0) {
		/* The one line for this failure: unlock_login leaves it to its caller. */
		log_warn("login to %s with the given credentials failed: %s", r->d.c->api_url,
			 log_strerror(e));
		REST_COUNT(r, login_errors, 1);
		if (e == -EACCES)
			return rest_detail(r, conn, MHD_HTTP_UNAUTHORIZED,
					   "Invalid credentials: the API refused them");
		return rest_detail(
			r, conn, MHD_HTTP_UNAUTHORIZED,
			"cannot log in: the Resource API at %s is unreachable or failing: %s",
			r->d.c->api_url, log_strerror(e));
	}
	rest_refresh_catalog(r, 1);
	return rest_json(r, conn, MHD_HTTP_OK, json_pack("{s:s}", "status", "ok"));
}

static enum MHD_Result rest_unlock(struct rest *r, struct rest_req *q, struct MHD_Connection *conn)
{
	const char *email = NULL, *password = NULL;
	enum unlock_state st;
	json_t *doc;
	int e;

	doc = rest_body_fields(q, "email", &email, "password", &password, NULL);
	if (!doc)
		return rest_detail(r, conn, q->status, "%s", q->detail);
	e = unlock_start(r->unlock, email, password, &st);
	json_decref(doc);
	if (e == -ENOENT)
		return rest_detail(r, conn, MHD_HTTP_NOT_FOUND, "Encrypted archive not found");
	if (e == -EINVAL)
		return rest_detail(r, conn, MHD_HTTP_UNPROCESSABLE_CONTENT,
				   "email and password must not be empty");
	if (e < 0)
		return rest_detail(r, conn, MHD_HTTP_INTERNAL_SERVER_ERROR,
				   "cannot start the unlock: %s", strerror(-e));
	return rest_json(r, conn, MHD_HTTP_OK, json_pack("{s:s}", "state", unlock_state_name(st)));
}

/* ---- F2 load --------------------------------------------------------------------- */

struct rest_load {
	struct rest *r;
	struct store_file *h;
	uint64_t size;
	char name[256];
};

static ssize_t rest_load_read(void *cls, uint64_t pos, char *buf, size_t max)
{
	struct rest_load *ld = cls;
	struct store_read rd;
	size_t done = 0;
	char *msg = NULL;
	int e;

	if (pos >= ld->size)
		return MHD_CONTENT_READER_END_OF_STREAM;
	if (rest_stopping(ld->r))
		return MHD_CONTENT_READER_END_WITH_ERROR;
	e = store_read(ld->h, pos, max, &rd, &msg);
	if (e < 0 || rd.len == 0) {
		/* The status line is gone: the client sees a short body. */
		log_err("load %s: reading at %llu failed: %s", ld->name, (unsigned long long)pos,
			e < 0 ? msg_or(msg, e) : "no data");
		free(msg);
		if (e == 0)
			store_read_release(&rd);
		REST_COUNT(ld->r, load_errors, 1);
		return MHD_CONTENT_READER_END_WITH_ERROR;
	}
	for (int i = 0; i < rd.iovcnt; i++) {
		memcpy(buf + done, rd.iov[i].iov_base, rd.iov[i].iov_len);
		done += rd.iov[i].iov_len;
	}
	store_read_release(&rd);
	REST_COUNT(ld->r, load_bytes, done);
	return (ssize_t)done;
}

static void rest_load_free(void *cls)
{
	struct rest_load *ld = cls;

	store_close(ld->h);
	free(ld);
}

/*
 * The status for a store error before the first byte, and the words when
 * the store gave none.
 */
static unsigned rest_load_status(int e, const char **why)
{
	switch (e) {
	case -ENOENT:
		*why = "no such resource";
		return MHD_HTTP_NOT_FOUND;
	case -EACCES:
	case -ENOKEY:
		*why = "not logged in, or the API refused this device (POST /login first)";
		return MHD_HTTP_UNAUTHORIZED;
	case -EKEYREJECTED:
		/* The CDN, not the API, said no: a new login would not help. */
		*why = "the CDN refused the request";
		return MHD_HTTP_BAD_GATEWAY;
	case -ETIMEDOUT:
	case -EHOSTUNREACH:
		/* The failed call's own words: refused, unresolved, timed out. */
		*why = log_strerror(e);
		return MHD_HTTP_BAD_GATEWAY;
	case -EIO:
		*why = "the CDN or the API failed, or the data failed its check";
		return MHD_HTTP_BAD_GATEWAY;
	default:
		*why = strerror(-e);
		return MHD_HTTP_INTERNAL_SERVER_ERROR;
	}
}

static enum MHD_Result rest_load(struct rest *r, struct rest_req *q, struct MHD_Connection *conn)
{
	const char *filename = NULL, *folder = NULL, *why;
	const struct catalog_entry *e;
	struct catalog_list *l;
	struct MHD_Response *resp;
	struct rest_load *ld;
	struct store_read rd;
	char *msg = NULL;
	unsigned status;
	json_t *doc;
	int err;

	doc = rest_body_fields(q, "filename", &filename, "folder", &folder, NULL);
	if (!doc)
		return rest_detail(r, conn, q->status, "%s", q->detail);
	REST_COUNT(r, loads, 1);
	ld = calloc(1, sizeof(*ld));
	if (!ld) {
		json_decref(doc);
		return MHD_NO;
	}
	ld->r = r;
	snprintf(ld->name, sizeof(ld->name), "%s", filename);
	if (!names_valid(filename)) {
		status = MHD_HTTP_UNPROCESSABLE_CONTENT;
		snprintf(q->detail, sizeof(q->detail), "'filename' is not a resource name");
		goto fail;
	}
	if (*folder && strcmp(folder, r->d.c->folder) != 0) {
		status = MHD_HTTP_NOT_FOUND;
		snprintf(q->detail, sizeof(q->detail),
			 "folder '%.64s' is not served here (this device serves '%.64s')", folder,
			 r->d.c->folder);
		goto fail;
	}
	l = catalog_get(r->d.cat);
	e = catalog_find(l, ld->name);
	if (!e && session_logged_in(r->d.s)) {
		/* Published since the last refresh? */
		catalog_put(r->d.cat, l);
		rest_refresh_catalog(r, 0);
		l = catalog_get(r->d.cat);
		e = catalog_find(l, ld->name);
	}
	if (!e) {
		catalog_put(r->d.cat, l);
		status = session_has_credentials(r->d.s) ? MHD_HTTP_NOT_FOUND
							 : MHD_HTTP_UNAUTHORIZED;
		snprintf(q->detail, sizeof(q->detail), "%.200s: %s", ld->name,
			 status == MHD_HTTP_NOT_FOUND ? "no such resource"
						      : "not logged in (POST /login first)");
		goto fail;
	}
	ld->size = e->size;
	err = store_open(r->d.st, e, &ld->h, &msg);
	catalog_put(r->d.cat, l);
	/* The first bytes too, so that a failure still gets a status of its own. */
	if (err == 0 && ld->size > 0) {
		err = store_read(ld->h, 0, STORE_UNIT, &rd, &msg);
		if (err == 0)
			store_read_release(&rd);
	}
	if (err < 0) {
		/* The store's words: the CDN's refusal, the failed check, the timeout. */
		status = rest_load_status(err, &why);
		snprintf(q->detail, sizeof(q->detail), "%.64s: %.440s", ld->name, msg ? msg : why);
		free(msg);
		goto fail;
	}
	json_decref(doc);
	resp = MHD_create_response_from_callback(ld->size, REST_BLOCK, rest_load_read, ld,
						 rest_load_free);
	if (!resp) {
		rest_load_free(ld);
		return MHD_NO;
	}
	MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "application/octet-stream");
	return rest_send(r, conn, MHD_HTTP_OK, resp);
fail:
	json_decref(doc);
	REST_COUNT(r, load_errors, 1);
	/* A failure of the CDN, the API or the data is the operator's; a bad request the caller's. */
	log_msg(status >= 500 ? LOG_ERR : LOG_INFO, "load %s: %u %s", ld->name, status, q->detail);
	store_close(ld->h);
	free(ld);
	return rest_detail(r, conn, status, "%s", q->detail);
}

/* ---- F3 upload ------------------------------------------------------------------- */

/* fetch_read_fn over the buffered plaintext. */
static ssize_t rest_upload_src(void *ctx, uint8_t *buf, size_t cap)
{
	struct rest_req *q = ctx;
	struct rest_upload *up = &q->up;
	size_t off, n;

	if (rest_stopping(q->r))
		return -ECANCELED;
	if (up->pos >= up->len)
		return 0;
	off = (size_t)(up->pos % REST_UPLOAD_CHUNK);
	n = REST_UPLOAD_CHUNK - off;
	if (n > cap)
		n = cap;
	if (n > up->len - up->pos)
		n = (size_t)(up->len - up->pos);
	memcpy(buf, up->chunks[up->pos / REST_UPLOAD_CHUNK] + off, n);
	up->pos += n;
	return (ssize_t)n;
}

static unsigned rest_upload_status(int e)
{
	switch (e) {
	case -ENOKEY:
	case -EACCES:
		return MHD_HTTP_UNAUTHORIZED;
	case -EINVAL:
		return MHD_HTTP_UNPROCESSABLE_CONTENT;
	case -EHOSTUNREACH:
	case -ETIMEDOUT:
	case -EIO:
	case -EPROTO:
	case -ENOENT:
	case -EKEYREJECTED: /* the CDN refused the upload */
		return MHD_HTTP_BAD_GATEWAY;
	default:
		return MHD_HTTP_INTERNAL_SERVER_ERROR;
	}
}

static enum MHD_Result rest_upload(struct rest *r, struct rest_req *q, struct MHD_Connection *conn)
{
	struct rest_upload *up = &q->up;
	struct publish_target t = {.fetch = r->d.f, .session = r->d.s};
	struct publish_req req = {0};
	struct publish_result res;
	const char *folder = "models", *why;
	char *msg = NULL;
	uint8_t *rkey;
	enum MHD_Result ret;
	unsigned status;
	int format = 1, e;

	if (!up->has_data)
		return rest_detail(r, conn, MHD_HTTP_UNPROCESSABLE_CONTENT,
				   "field 'data' is required (multipart file field)");
	if (up->has_folder && up->folder_len)
		folder = up->folder;
	why = names_problem(folder);
	if (why)
		return rest_detail(r, conn, MHD_HTTP_UNPROCESSABLE_CONTENT,
				   "field 'folder' is not a folder name: %s", why);
	if (up->has_format && up->format_len) {
		if (strcmp(up->format, "1") == 0)
			format = 1;
		else if (strcmp(up->format, "2") == 0)
			format = 2;
		else
			return rest_detail(r, conn, MHD_HTTP_UNPROCESSABLE_CONTENT,
					   "field 'format' must be 1 or 2");
	}
	why = names_problem(q->name);
	if (why)
		return rest_detail(r, conn, MHD_HTTP_UNPROCESSABLE_CONTENT,
				   "the file name in the path is not a resource name: %s", why);
	if (!session_has_credentials(r->d.s))
		return rest_detail(r, conn, MHD_HTTP_UNAUTHORIZED,
				   "not logged in (POST /login first)");
	/* The readers' key (keys.h), asked at each upload: what F3 publishes must decrypt for them. */
	rkey = secmem_alloc(CRYPTO_KEY_SIZE);
	if (!rkey)
		return rest_detail(r, conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of locked memory");
	e = keys_resource_key(r->d.c, r->d.d, rkey, &msg);
	if (e < 0) {
		secmem_free(rkey);
		log_err("upload %s/%s: %s", folder, q->name, msg ? msg : strerror(-e));
		ret = rest_detail(r, conn, MHD_HTTP_SERVICE_UNAVAILABLE, "%s",
				  msg ? msg : strerror(-e));
		free(msg);
		return ret;
	}
	REST_COUNT(r, uploads, 1);
	req.name = q->name;
	req.folder = folder;
	req.format = format;
	req.resource_key = rkey;
	req.src = rest_upload_src;
	req.src_ctx = q;
	req.size = up->len;
	up->pos = 0;
	e = publish_model(&req, &t, &res, &msg);
	secmem_free(rkey);
	if (e < 0) {
		REST_COUNT(r, upload_errors, 1);
		status = rest_upload_status(e);
		/* A CDN refusal's reason is part of msg (publish_model). */
		log_err("upload %s/%s (format %d, %llu bytes) failed: %s", folder, q->name, format,
			(unsigned long long)up->len, msg ? msg : log_strerror(e));
		ret = rest_detail(r, conn, status, "upload failed: %s",
				  msg ? msg : log_strerror(e));
		free(msg);
		return ret;
	}
	REST_COUNT(r, upload_bytes, up->len);
	log_info("uploaded %s/%s: format %d, %llu bytes", folder, q->name, format,
		 (unsigned long long)res.size);
	rest_upload_clear(r, up);
	if (strcmp(folder, r->d.c->folder) == 0)
		rest_refresh_catalog(r, 1);
	return rest_json(r, conn, MHD_HTTP_OK, json_pack("{s:s}", "status", "ok"));
}

/* ---- F6, /metrics ------------------------------------------------------------------- */

static int rest_api_reachable(struct rest *r)
{
	struct fetch_request req = {
		.method = "GET",
		.url = r->d.c->api_url,
		.no_retry = 1,
		.timeout_ms = REST_API_PROBE_MS,
		.max_response = 64 * 1024,
	};
	struct fetch_response resp = {0};
	time_t now = time(NULL);
	int ok, e, quiet;

	pthread_mutex_lock(&r->lock);
	if (r->api_checked && now - r->api_checked < REST_API_PROBE_S) {
		ok = r->api_ok;
		pthread_mutex_unlock(&r->lock);
		return ok;
	}
	pthread_mutex_unlock(&r->lock);
	/*
	 * Any HTTP answer means reachable; only the transport can fail here.
	 * Quiet: the answer's "api" says it, and /status may be polled often.
	 */
	quiet = fetch_quiet(1);
	e = fetch_request(r->d.f, &req, &resp);
	fetch_quiet(quiet);
	if (e < 0)
		log_debug("the API probe failed: %s", log_strerror(e));
	ok = e == 0;
	fetch_response_free(&resp);
	pthread_mutex_lock(&r->lock);
	r->api_checked = now;
	r->api_ok = ok;
	pthread_mutex_unlock(&r->lock);
	return ok;
}

static size_t rest_models(struct rest *r)
{
	struct catalog_list *l = catalog_get(r->d.cat);
	size_t n = l->n;

	catalog_put(r->d.cat, l);
	return n;
}

static enum MHD_Result rest_status(struct rest *r, struct MHD_Connection *conn)
{
	char id[160], **names = NULL;
	const char *tpm = device_status(r->d.d, NULL, 0);
	int has_id = device_id(r->d.d, id, sizeof(id)) == 0;
	json_t *body, *unchecked = json_array();
	size_t n = 0;

	/* The files served without any check (docs/trust.md section 4). */
	if (unchecked && store_unchecked(r->d.st, &names, &n) == 0) {
		for (size_t i = 0; i < n; i++) {
			json_array_append_new(unchecked, json_string(names[i]));
			free(names[i]);
		}
		free(names);
	}
	body = json_pack("{s:s, s:b, s:s, s:b, s:s, s:s?, s:s, s:I, s:o?}", "status", "ok",
			 "authenticated", session_logged_in(r->d.s), "modelCacheDir",
			 r->d.mountpoint, "mounted", r->serving, "tpm", tpm, "device_id",
			 has_id ? id : NULL, "api", rest_api_reachable(r) ? "ok" : "unreachable",
			 "models", (json_int_t)rest_models(r), "unchecked", unchecked);
	return rest_json(r, conn, MHD_HTTP_OK, body);
}

static void rest_metric(FILE *m, const char *name, const char *type, const char *help,
			unsigned long long v)
{
	fprintf(m, "# HELP azaionfs_%s %s\n# TYPE azaionfs_%s %s\nazaionfs_%s %llu\n", name, help,
		name, type, name, v);
}

static enum MHD_Result rest_metrics(struct rest *r, struct MHD_Connection *conn)
{
	static const char *const states[] = {"idle",	   "authenticating", "downloading_key",
					     "decrypting", "loading_images", "ready",
					     "error"};
	static const char *const tpms[] = {"ok", "absent", "error"};
	struct MHD_Response *resp;
	struct store_stats ss;
	const char *tpm, *unlock;
	char *text = NULL;
	size_t len = 0;
	FILE *m;

	store_stats(r->d.st, &ss);
	m = open_memstream(&text, &len);
	if (!m)
		return MHD_NO;
	metrics_write(m);
	rest_metric(m, "authenticated", "gauge", "1 when the last login succeeded",
		    session_logged_in(r->d.s));
	rest_metric(m, "mounted", "gauge", "1 while the filesystem is mounted", r->serving);
	rest_metric(m, "models", "gauge", "files the mount lists", rest_models(r));
	tpm = device_status(r->d.d, NULL, 0);
	fprintf(m, "# HELP azaionfs_tpm The TPM's state, 1 for the current one\n"
		   "# TYPE azaionfs_tpm gauge\n");
	for (size_t i = 0; i < sizeof(tpms) / sizeof(tpms[0]); i++)
		fprintf(m, "azaionfs_tpm{state=\"%s\"} %d\n", tpms[i], strcmp(tpm, tpms[i]) == 0);
	unlock = unlock_state_name(unlock_state(r->unlock));
	fprintf(m, "# HELP azaionfs_unlock_state The Docker unlock's state, 1 for the current "
		   "one\n# TYPE azaionfs_unlock_state gauge\n");
	for (size_t i = 0; i < sizeof(states) / sizeof(states[0]); i++)
		fprintf(m, "azaionfs_unlock_state{state=\"%s\"} %d\n", states[i],
			strcmp(unlock, states[i]) == 0);
	rest_metric(m, "opens_total", "counter", "files opened (mount and F2)", ss.opens);
	rest_metric(m, "open_errors_total", "counter", "opens that failed", ss.open_errors);
	rest_metric(m, "reads_total", "counter", "plaintext reads (mount and F2)", ss.reads);
	rest_metric(m, "read_bytes_total", "counter", "plaintext bytes read", ss.read_bytes);
	rest_metric(m, "read_errors_total", "counter", "reads that failed", ss.read_errors);
	rest_metric(m, "cache_hits_total", "counter", "64 KiB units found in the plaintext cache",
		    ss.cache_hits);
	rest_metric(m, "cache_misses_total", "counter", "64 KiB units decrypted into the cache",
		    ss.cache_misses);
	rest_metric(m, "cache_units", "gauge", "capacity of the plaintext cache in 64 KiB units",
		    ss.cache_units);
	rest_metric(m, "fetches_total", "counter",
		    "ciphertext range reads of the store (CDN and cache_dir together)", ss.fetches);
	rest_metric(m, "fetch_bytes_total", "counter", "ciphertext bytes read", ss.fetch_bytes);
	rest_metric(m, "fetch_errors_total", "counter", "ciphertext reads that failed",
		    ss.fetch_errors);
	rest_metric(m, "loads_total", "counter", "F2 loads", REST_LOAD(r, loads));
	rest_metric(m, "load_errors_total", "counter", "F2 loads that failed",
		    REST_LOAD(r, load_errors));
	rest_metric(m, "load_bytes_total", "counter", "F2 bytes sent", REST_LOAD(r, load_bytes));
	rest_metric(m, "uploads_total", "counter", "F3 uploads", REST_LOAD(r, uploads));
	rest_metric(m, "upload_errors_total", "counter", "F3 uploads that failed",
		    REST_LOAD(r, upload_errors));
	rest_metric(m, "upload_bytes_total", "counter", "F3 plaintext bytes published",
		    REST_LOAD(r, upload_bytes));
	rest_metric(m, "logins_total", "counter", "F1 logins", REST_LOAD(r, logins));
	rest_metric(m, "login_errors_total", "counter", "F1 logins refused",
		    REST_LOAD(r, login_errors));
	rest_metric(m, "errors_total", "counter",
		    "every failure counted above (opens, reads, fetches, loads, uploads)",
		    ss.open_errors + ss.read_errors + ss.fetch_errors + REST_LOAD(r, load_errors) +
			    REST_LOAD(r, upload_errors));
	fprintf(m, "# HELP azaionfs_http_responses_total Side endpoint answers by status class\n"
		   "# TYPE azaionfs_http_responses_total counter\n");
	for (int c = 1; c <= 5; c++)
		fprintf(m, "azaionfs_http_responses_total{class=\"%dxx\"} %llu\n", c,
			(unsigned long long)REST_LOAD(r, by_class[c]));
	if (fclose(m) != 0 || !text) {
		free(text);
		return MHD_NO;
	}
	resp = MHD_create_response_from_buffer(len, text, MHD_RESPMEM_MUST_FREE);
	if (!resp) {
		free(text);
		return MHD_NO;
	}
	MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE,
				"text/plain; version=0.0.4; charset=utf-8");
	return rest_send(r, conn, MHD_HTTP_OK, resp);
}

/* ---- routing ------------------------------------------------------------------------ */

struct rest_path {
	const char *path; /* exact, or a prefix ending in '/' followed by a name */
	int prefix;
	enum rest_route route;
	const char *method;
};

static const struct rest_path rest_paths[] = {
	{"/login", 0, ROUTE_LOGIN, "POST"},
	{"/load/", 1, ROUTE_LOAD, "POST"},
	{"/upload/", 1, ROUTE_UPLOAD, "POST"},
	{"/unlock", 0, ROUTE_UNLOCK, "POST"},
	{"/unlock/status", 0, ROUTE_UNLOCK_STATUS, "GET"},
	{"/health", 0, ROUTE_HEALTH, "GET"},
	{"/status", 0, ROUTE_STATUS, "GET"},
	{"/metrics", 0, ROUTE_METRICS, "GET"},
};

static const struct rest_path *rest_match(const char *url)
{
	for (size_t i = 0; i < sizeof(rest_paths) / sizeof(rest_paths[0]); i++) {
		const struct rest_path *p = &rest_paths[i];
		size_t n = strlen(p->path);

		if (p->prefix ? strncmp(url, p->path, n) == 0 && url[n] && !strchr(url + n, '/')
			      : strcmp(url, p->path) == 0)
			return p;
	}
	return NULL;
}

static int rest_has_body(enum rest_route route)
{
	return route == ROUTE_LOGIN || route == ROUTE_LOAD || route == ROUTE_UPLOAD ||
	       route == ROUTE_UNLOCK;
}

/* ---- the doors (docs/trust.md 2) ------------------------------------------------------ */

/* name (len bytes) is a loopback address written out, localhost, or one of names. */
static int rest_name_allowed(const char *name, size_t len, int bracketed, char *const *names)
{
	char buf[256];
	struct in6_addr a6;
	struct in_addr a4;

	if (len == 0 || len >= sizeof(buf))
		return 0;
	memcpy(buf, name, len);
	buf[len] = '\0';
	if (bracketed)
		return inet_pton(AF_INET6, buf, &a6) == 1 &&
		       (IN6_IS_ADDR_LOOPBACK(&a6) ||
			(IN6_IS_ADDR_V4MAPPED(&a6) && a6.s6_addr[12] == 127));
	/* The fully qualified spelling of a name ("localhost.") is the same name. */
	if (buf[len - 1] == '.')
		buf[--len] = '\0';
	if (len == 0)
		return 0;
	/* Any numeric spelling ("127.1" as curl sends it) is an address, as browsers read it too. */
	if (buf[strspn(buf, "0123456789abcdefABCDEFxX.")] == '\0' && inet_aton(buf, &a4))
		return (ntohl(a4.s_addr) >> 24) == 127;
	if (strcasecmp(buf, "localhost") == 0)
		return 1;
	for (char *const *n = names; n && *n; n++)
		if (strcasecmp(buf, *n) == 0)
			return 1;
	return 0;
}

int rest_host_allowed(const char *host, char *const *names)
{
	const char *end, *port;
	int bracketed = 0;

	if (!host)
		return 0;
	if (*host == '[') {
		end = strchr(host, ']');
		if (!end)
			return 0;
		host++;
		port = end + 1;
		bracketed = 1;
	} else {
		end = host + strcspn(host, ":");
		port = end;
	}
	if (*port == ':') {
		size_t digits = strspn(port + 1, "0123456789");

		if (digits == 0 || digits > 5 || port[1 + digits])
			return 0;
	} else if (*port) {
		return 0;
	}
	return rest_name_allowed(host, (size_t)(end - host), bracketed, names);
}

int rest_origin_allowed(const char *origin, char *const *names)
{
	const char *hp = origin ? strstr(origin, "://") : NULL;
	char host[300];
	size_t n;

	/* "null" (a sandboxed page, a file) and anything odd is a page we do not know. */
	if (!hp)
		return 0;
	hp += 3;
	n = strcspn(hp, "/");
	if (hp[n] || n >= sizeof(host))
		return 0;
	memcpy(host, hp, n);
	host[n] = '\0';
	return rest_host_allowed(host, names);
}

int rest_media_type_is(const char *content_type, const char *want)
{
	size_t n = strlen(want);
	const char *p = content_type;

	if (!p)
		return 0;
	p += strspn(p, " \t");
	if (strncasecmp(p, want, n) != 0)
		return 0;
	p += n;
	p += strspn(p, " \t");
	return *p == '\0' || *p == ';';
}

int rest_peer_allowed(uid_t uid, gid_t gid, const gid_t *groups, size_t n, gid_t want)
{
	if (uid == 0 || gid == want)
		return 1;
	for (size_t i = 0; i < n; i++)
		if (groups[i] == want)
			return 1;
	return 0;
}

/* src as printable ASCII, for a detail that shows what the caller sent. */
static void rest_printable(char *dst, size_t cap, const char *src)
{
	size_t i = 0;

	for (; src && *src && i + 1 < cap; src++)
		dst[i++] = *src >= 0x20 && *src < 0x7f ? *src : '?';
	dst[i] = '\0';
}

/*
 * The supplementary groups of a unix: peer: from the kernel (SO_PEERGROUPS,
 * as they were at connect), else, on kernels before 4.13, from the group
 * database. *ret is malloc()ed; 0 or -errno.
 */
static int rest_peer_groups(int fd, uid_t uid, gid_t gid, gid_t **ret, size_t *ret_n)
{
	socklen_t len = REST_PEER_GROUPS * sizeof(gid_t);
	gid_t *g = malloc(len);
	struct passwd pw, *pwp = NULL;
	char pwbuf[4096];
	int n;

	if (!g)
		return -ENOMEM;
	if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, g, &len) == 0)
		goto done;
	if (errno == ERANGE) {
		gid_t *grown = realloc(g, len);

		if (!grown) {
			free(g);
			return -ENOMEM;
		}
		g = grown;
		if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, g, &len) == 0)
			goto done;
	}
	if (getpwuid_r(uid, &pw, pwbuf, sizeof(pwbuf), &pwp) != 0 || !pwp) {
		len = 0; /* a user without a name: its primary group is all it has */
		goto done;
	}
	n = REST_PEER_GROUPS;
	if (getgrouplist(pw.pw_name, gid, g, &n) < 0) {
		gid_t *grown = realloc(g, (size_t)n * sizeof(gid_t));

		if (!grown) {
			free(g);
			return -ENOMEM;
		}
		g = grown;
		if (getgrouplist(pw.pw_name, gid, g, &n) < 0)
			n = 0;
	}
	len = (socklen_t)((size_t)n * sizeof(gid_t));
done:
	*ret = g;
	*ret_n = len / sizeof(gid_t);
	return 0;
}

/*
 * On a unix: socket, the peer must be root or in rest_group. A refusal is a
 * 403 naming the group (and the connection closes), not a silent close, so
 * that the operator learns which group to join.
 */
static void rest_check_peer(struct rest *r, struct MHD_Connection *conn, struct rest_req *q)
{
	const union MHD_ConnectionInfo *ci;
	struct ucred uc;
	socklen_t sl = sizeof(uc);
	gid_t *groups = NULL;
	size_t n = 0;
	int ok;

	ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
	if (!ci || getsockopt(ci->connect_fd, SOL_SOCKET, SO_PEERCRED, &uc, &sl) < 0) {
		rest_refuse(q, MHD_HTTP_FORBIDDEN, "cannot tell who is calling (SO_PEERCRED)");
		q->close = 1;
		return;
	}
	if (rest_peer_groups(ci->connect_fd, uc.uid, uc.gid, &groups, &n) < 0) {
		rest_refuse(q, MHD_HTTP_FORBIDDEN, "cannot read the caller's groups");
		q->close = 1;
		return;
	}
	ok = rest_peer_allowed(uc.uid, uc.gid, groups, n, r->group);
	free(groups);
	if (ok)
		return;
	log_info("side endpoint: refused uid %u (pid %d): neither root nor in group %s",
		 (unsigned)uc.uid, (int)uc.pid, r->d.c->rest_group);
	rest_refuse(q, MHD_HTTP_FORBIDDEN,
		    "uid %u may not call this endpoint: only root and members of group '%.64s' "
		    "(rest_group) may; add the caller to that group",
		    (unsigned)uc.uid, r->d.c->rest_group);
	q->close = 1;
}

/* Host (DNS rebinding) and Origin (a page in a browser): 421 and 403. */
static void rest_check_host(struct rest *r, struct MHD_Connection *conn, struct rest_req *q)
{
	const char *host = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_HOST);
	const char *origin =
		MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_ORIGIN);
	char shown[REST_HOST_SHOWN + 1];

	if (!rest_host_allowed(host, r->d.c->rest_hosts)) {
		rest_printable(shown, sizeof(shown), host);
		rest_refuse(q, MHD_HTTP_MISDIRECTED_REQUEST,
			    host ? "the Host header '%s' names neither a loopback address, "
				   "localhost nor a name of rest_hosts"
				 : "a Host header is required%s",
			    host ? shown : "");
		q->close = 1;
		return;
	}
	/* Browsers send Origin with every cross-site POST; other clients send none. */
	if (origin && !rest_origin_allowed(origin, r->d.c->rest_hosts)) {
		rest_printable(shown, sizeof(shown), origin);
		rest_refuse(q, MHD_HTTP_FORBIDDEN,
			    "a request from the web page at '%s' is refused: pages in a browser "
			    "may not call the side endpoint",
			    shown);
		q->close = 1;
	}
}

/* With rest_token_file: "Authorization: Bearer <token>", compared in constant time. */
static void rest_check_token(struct rest *r, struct MHD_Connection *conn, struct rest_req *q)
{
	const char *a =
		MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
	uint8_t h[32];
	int ok;

	if (!a || strncasecmp(a, "Bearer ", 7) != 0) {
		rest_refuse(q, MHD_HTTP_UNAUTHORIZED,
			    "this endpoint needs 'Authorization: Bearer <token>', the token of "
			    "rest_token_file");
		q->www_auth = 1;
		return;
	}
	a += 7;
	a += strspn(a, " ");
	/* Hashes of equal length: the time taken tells nothing of the token. */
	crypto_sha256(a, strlen(a), h);
	ok = crypto_memcmp(h, r->token_hash, sizeof(h)) == 0;
	crypto_wipe(h, sizeof(h));
	if (!ok) {
		rest_refuse(q, MHD_HTTP_UNAUTHORIZED,
			    "the bearer token is not the one of rest_token_file");
		q->www_auth = 1;
	}
}

/* JSON bodies say so, F3 says multipart/form-data: what a page cannot send unasked. */
static void rest_check_type(struct rest_req *q, struct MHD_Connection *conn, const char *url)
{
	const char *ct =
		MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_TYPE);
	const char *want = q->route == ROUTE_UPLOAD ? "multipart/form-data" : "application/json";
	char shown[REST_HOST_SHOWN + 1];

	if (rest_media_type_is(ct, want))
		return;
	rest_printable(shown, sizeof(shown), ct);
	rest_refuse(q, MHD_HTTP_UNSUPPORTED_MEDIA_TYPE,
		    "POST %.64s needs Content-Type: %s (got %s%s%s)",
		    q->route == ROUTE_LOAD     ? "/load/{filename}"
		    : q->route == ROUTE_UPLOAD ? "/upload/{filename}"
					       : url,
		    want, ct ? "'" : "none", shown, ct ? "'" : "");
}

/* ---- routing, continued ------------------------------------------------------------- */

/* The answer to a request refused before its body; adds what the status calls for. */
static enum MHD_Result rest_refusal(struct rest *r, struct rest_req *q, struct MHD_Connection *conn)
{
	struct MHD_Response *resp;

	resp = rest_json_response(json_pack("{s:s}", "detail", q->detail));
	if (resp && q->www_auth)
		MHD_add_response_header(resp, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer");
	if (resp && q->close)
		MHD_add_response_header(resp, MHD_HTTP_HEADER_CONNECTION, "close");
	if (resp && q->status == MHD_HTTP_METHOD_NOT_ALLOWED) {
		const struct rest_path *p = NULL;

		for (size_t i = 0; i < sizeof(rest_paths) / sizeof(rest_paths[0]); i++)
			if (rest_paths[i].route == q->route)
				p = &rest_paths[i];
		MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW,
					p && strcmp(p->method, "GET") == 0 ? "GET, HEAD" : "POST");
	}
	return rest_send(r, conn, q->status, resp);
}

/* The first call of a request: its route, and what can be refused before the body. */
static enum MHD_Result rest_begin(struct rest_door *door, struct MHD_Connection *conn,
				  const char *url, const char *method, void **con_cls)
{
	struct rest *r = door->r;
	const struct rest_path *p = rest_match(url);
	const char *cl;
	struct rest_req *q;
	unsigned long long len = 0;
	uint64_t cap;

	q = calloc(1, sizeof(*q));
	if (!q)
		return MHD_NO;
	q->r = r;
	*con_cls = q;
	cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
	if (cl)
		len = strtoull(cl, NULL, 10);
	if (door->unix_path)
		rest_check_peer(r, conn, q);
	if (!q->status)
		rest_check_host(r, conn, q);
	/* GET /health stays open: it tells a supervisor the daemon lives, nothing more. */
	if (!q->status && r->token_hash &&
	    !(p && p->route == ROUTE_HEALTH &&
	      (strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0)))
		rest_check_token(r, conn, q);
	if (!p || (door->metrics_only && p->route != ROUTE_METRICS)) {
		rest_refuse(q, MHD_HTTP_NOT_FOUND, "Not Found");
		goto refused;
	}
	q->route = p->route;
	if (strcmp(method, p->method) != 0 &&
	    !(strcmp(method, "HEAD") == 0 && strcmp(p->method, "GET") == 0)) {
		rest_refuse(q, MHD_HTTP_METHOD_NOT_ALLOWED, "Method Not Allowed");
		goto refused;
	}
	if (q->status)
		goto refused;
	if (p->prefix) {
		q->name = strdup(url + strlen(p->path));
		if (!q->name)
			return MHD_NO;
	}
	if (!rest_has_body(q->route))
		return MHD_YES;
	if (q->route == ROUTE_UPLOAD && !r->d.c->rest_upload) {
		rest_refuse(q, MHD_HTTP_FORBIDDEN, "uploads are disabled on this device");
		goto refused;
	}
	rest_check_type(q, conn, url);
	/* Before a byte of an upload is locked in memory. */
	if (!q->status && q->route == ROUTE_UPLOAD && !session_has_credentials(r->d.s))
		rest_refuse(q, MHD_HTTP_UNAUTHORIZED, "not logged in (POST /login first)");
	if (q->status)
		goto refused;
	cap = q->route == ROUTE_UPLOAD ? REST_UPLOAD_CONN_MAX + REST_UPLOAD_SLACK : REST_BODY_MAX;
	if (len > cap) {
		/* Refused at once when reading it all would be a waste, else after it. */
		if (q->route == ROUTE_UPLOAD || len > REST_DISCARD_MAX) {
			q->answered = 1;
			return rest_detail(r, conn, MHD_HTTP_CONTENT_TOO_LARGE,
					   q->route == ROUTE_UPLOAD
						   ? "the upload of %llu bytes is over the limit "
						     "of %llu MiB for one upload"
						   : "the body of %llu bytes is over the limit of "
						     "%llu KiB",
					   len,
					   q->route == ROUTE_UPLOAD ? REST_UPLOAD_CONN_MAX >> 20
								    : REST_BODY_MAX >> 10);
		}
		q->too_big = REST_BIG_BODY;
	}
	if (q->route == ROUTE_UPLOAD) {
		q->pp = MHD_create_post_processor(conn, REST_PP_BUFFER, rest_upload_iter, q);
		if (!q->pp)
			rest_refuse(q, MHD_HTTP_UNPROCESSABLE_CONTENT,
				    "expected a multipart/form-data body with a 'data' file field");
	}
	return MHD_YES;
refused:
	/*
	 * Its body is read and dropped, unless it is too large to be worth
	 * reading, or of a length nobody announced (chunked): then the answer
	 * goes at once and the connection closes.
	 */
	if (len > REST_DISCARD_MAX ||
	    (!cl && MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
						MHD_HTTP_HEADER_TRANSFER_ENCODING))) {
		q->answered = 1;
		q->close = 1;
		return rest_refusal(r, q, conn);
	}
	return MHD_YES;
}

/* The body is in: one answer. */
static enum MHD_Result rest_dispatch(struct rest *r, struct rest_req *q,
				     struct MHD_Connection *conn)
{
	enum MHD_Result ret;

	if (q->status)
		return rest_refusal(r, q, conn);
	switch (q->too_big) {
	case REST_FITS:
		break;
	case REST_BIG_BODY:
		return rest_detail(r, conn, MHD_HTTP_CONTENT_TOO_LARGE,
				   "the body is over the limit of %llu KiB",
				   (unsigned long long)REST_BODY_MAX >> 10);
	case REST_BIG_UPLOAD:
		return rest_detail(r, conn, MHD_HTTP_CONTENT_TOO_LARGE,
				   "the upload is over the limit of %llu MiB for one upload",
				   REST_UPLOAD_CONN_MAX >> 20);
	case REST_BIG_TOTAL:
		return rest_detail(r, conn, MHD_HTTP_CONTENT_TOO_LARGE,
				   "the upload does not fit in the %llu MiB of locked memory for "
				   "uploads in flight; try again when the others are done",
				   REST_UPLOAD_MAX >> 20);
	}
	if (q->nomem)
		return rest_detail(r, conn, MHD_HTTP_CONTENT_TOO_LARGE,
				   "cannot lock memory for the body (RLIMIT_MEMLOCK?)");
	if (q->route == ROUTE_UPLOAD) {
		enum MHD_Result done = MHD_destroy_post_processor(q->pp);

		q->pp = NULL;
		if (q->malformed || done != MHD_YES)
			return rest_detail(r, conn, MHD_HTTP_UNPROCESSABLE_CONTENT,
					   "malformed or incomplete multipart body");
	}
	switch (q->route) {
	case ROUTE_LOGIN:
		ret = rest_login(r, q, conn);
		break;
	case ROUTE_LOAD:
		ret = rest_load(r, q, conn);
		break;
	case ROUTE_UPLOAD:
		ret = rest_upload(r, q, conn);
		break;
	case ROUTE_UNLOCK:
		ret = rest_unlock(r, q, conn);
		break;
	case ROUTE_UNLOCK_STATUS:
		ret = rest_json(r, conn, MHD_HTTP_OK, unlock_status_json(r->unlock));
		break;
	case ROUTE_HEALTH:
		ret = rest_json(r, conn, MHD_HTTP_OK, json_pack("{s:s}", "status", "healthy"));
		break;
	case ROUTE_STATUS:
		ret = rest_status(r, conn);
		break;
	case ROUTE_METRICS:
		ret = rest_metrics(r, conn);
		break;
	default:
		ret = rest_detail(r, conn, MHD_HTTP_NOT_FOUND, "Not Found");
		break;
	}
	return ret;
}

static enum MHD_Result rest_handler(void *cls, struct MHD_Connection *conn, const char *url,
				    const char *method, const char *version,
				    const char *upload_data, size_t *upload_data_size,
				    void **con_cls)
{
	struct rest_door *door = cls;
	struct rest *r = door->r;
	struct rest_req *q = *con_cls;

	if (!q)
		return rest_begin(door, conn, url, method, con_cls);
	if (q->answered) {
		*upload_data_size = 0;
		return MHD_YES;
	}
	if (*upload_data_size) {
		rest_take_body(q, upload_data, *upload_data_size);
		*upload_data_size = 0;
		return MHD_YES;
	}
	return rest_dispatch(r, q, conn);
}

static void rest_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
			   enum MHD_RequestTerminationCode toe)
{
	struct rest_req *q = *con_cls;

	if (!q)
		return;
	if (q->pp)
		MHD_destroy_post_processor(q->pp);
	rest_upload_clear(q->r, &q->up);
	crypto_wipe(q->up.folder, sizeof(q->up.folder));
	secmem_free(q->body);
	free(q->name);
	free(q);
	*con_cls = NULL;
}

static void rest_mhd_log(void *cls, const char *fmt, va_list ap)
	__attribute__((format(printf, 2, 0)));
static void rest_mhd_log(void *cls, const char *fmt, va_list ap)
{
	char msg[512];
	size_t n;

	vsnprintf(msg, sizeof(msg), fmt, ap);
	n = strlen(msg);
	while (n && msg[n - 1] == '\n')
		msg[--n] = '\0';
	log_debug("side endpoint: %s", msg);
}

/* ---- listening, start and stop ------------------------------------------------------- */

/*
 * A worker that takes over from one still serving (an upgrade) binds a
 * new socket beside the path and renames it over the old one: a client
 * never finds the path missing, and the old worker keeps the connections
 * it has accepted (docs/architecture.md, "Restarts").
 */
static int rest_listen_unix(struct rest_door *door, const char *path)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	struct rest *r = door->r;
	int takeover = r->d.takeover;
	char tmp[sizeof(sa.sun_path) + 32];
	struct stat sb;
	mode_t old;
	int fd, e;

	if (strlen(path) >= sizeof(sa.sun_path) ||
	    (takeover && (size_t)snprintf(tmp, sizeof(tmp), "%s.%d", path, (int)getpid()) >=
				 sizeof(sa.sun_path))) {
		log_err("%s: unix:%s is longer than a socket path may be",
			door->metrics_only ? "metrics_listen" : "rest_listen", path);
		return -ENAMETOOLONG;
	}
	memcpy(sa.sun_path, path, strlen(path) + 1);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	/* A socket left by a daemon that died is replaced; anything else is kept. */
	if (!takeover && lstat(path, &sb) == 0 && S_ISSOCK(sb.st_mode)) {
		if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0) {
			log_err("%s: another process serves unix:%s", door->spec, path);
			close(fd);
			return -EADDRINUSE;
		}
		unlink(path);
		close(fd);
		fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (fd < 0)
			return -errno;
	}
	if (takeover) {
		memcpy(sa.sun_path, tmp, strlen(tmp) + 1);
		unlink(tmp);
	}
	/* No moment with a wider mode than 0660 (no thread runs yet). */
	old = umask(0117);
	e = bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ? -errno : 0;
	umask(old);
	if (e == 0 && chown(sa.sun_path, (uid_t)-1, r->group) < 0) {
		e = -errno;
		log_err("rest_group: cannot give unix:%s to group %s: %s", path, r->d.c->rest_group,
			strerror(-e));
	}
	if (e == 0 && chmod(sa.sun_path, 0660) < 0)
		e = -errno;
	if (e == 0 && listen(fd, REST_BACKLOG) < 0)
		e = -errno;
	if (e == 0 && takeover && rename(tmp, path) < 0)
		e = -errno;
	if (e == 0 && lstat(path, &sb) == 0)
		door->unix_ino = sb.st_ino;
	if (e < 0) {
		log_err("%s: unix:%s: %s", door->metrics_only ? "metrics_listen" : "rest_listen",
			path, strerror(-e));
		close(fd);
		unlink(sa.sun_path);
		return e;
	}
	door->unix_path = strdup(path);
	door->fd = fd;
	return 0;
}

/* 1 when something accepts connections on ai already. */
static int rest_tcp_taken(const struct addrinfo *ai)
{
	int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
	int taken;

	if (fd < 0)
		return 0;
	taken = connect(fd, ai->ai_addr, ai->ai_addrlen) == 0;
	close(fd);
	return taken;
}

static int rest_listen_tcp(struct rest_door *door, const char *spec)
{
	struct addrinfo hints = {.ai_flags = AI_PASSIVE | AI_NUMERICSERV,
				 .ai_socktype = SOCK_STREAM};
	const char *key = door->metrics_only ? "metrics_listen" : "rest_listen";
	struct addrinfo *res = NULL, *ai;
	const char *colon = strrchr(spec, ':');
	char host[256];
	size_t hl;
	int fd = -1, e, one = 1;

	if (!colon || (size_t)(colon - spec) >= sizeof(host))
		return -EINVAL;
	hl = (size_t)(colon - spec);
	if (hl >= 2 && spec[0] == '[' && spec[hl - 1] == ']')
		snprintf(host, sizeof(host), "%.*s", (int)hl - 2, spec + 1);
	else
		snprintf(host, sizeof(host), "%.*s", (int)hl, spec);
	e = getaddrinfo(*host ? host : NULL, colon + 1, &hints, &res);
	if (e != 0) {
		log_err("%s: %s: %s", key, spec, gai_strerror(e));
		return -EINVAL;
	}
	e = -EADDRNOTAVAIL;
	for (ai = res; ai; ai = ai->ai_next) {
		/* The address bound, not the name written, decides (docs/trust.md 2). */
		if (!door->r->d.c->rest_public && !config_addr_loopback(ai->ai_addr)) {
			log_err("%s: %s resolves to a non-loopback address; set rest_public = "
				"true, with rest_token_file, to listen on it",
				key, spec);
			e = -EADDRNOTAVAIL;
			fd = -1;
			break;
		}
		fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
		if (fd < 0) {
			e = -errno;
			continue;
		}
		setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
		/*
		 * Two workers of one mount listen side by side during an upgrade;
		 * any other listener is refused (rest_tcp_taken) before this.
		 */
		setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
		if (!door->r->d.takeover && rest_tcp_taken(ai)) {
			log_err("%s: another process serves %s", key, spec);
			close(fd);
			fd = -1;
			e = -EADDRINUSE;
			break;
		}
		if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && listen(fd, REST_BACKLOG) == 0)
			break;
		e = -errno;
		close(fd);
		fd = -1;
	}
	freeaddrinfo(res);
	if (fd < 0) {
		log_err("%s: cannot listen on %s: %s", key, spec, strerror(-e));
		return e;
	}
	door->fd = fd;
	return 0;
}

/* rest_group's id (a name, or a number), needed when a door is a unix: socket. */
static int rest_group_id(struct rest *r)
{
	const char *name = r->d.c->rest_group;
	struct group gr, *grp = NULL;
	char buf[16384];
	int e;

	e = getgrnam_r(name, &gr, buf, sizeof(buf), &grp);
	/* A number is a gid, for a container whose /etc/group lists root alone. */
	if ((e != 0 || !grp) && *name && name[strspn(name, "0123456789")] == '\0' &&
	    strlen(name) < 10) {
		r->group = (gid_t)strtoul(name, NULL, 10);
		return 0;
	}
	if (e != 0 || !grp) {
		log_err("rest_group: there is no group '%s' on this system: create it (groupadd "
			"%s) and add the users that may call the side endpoint, or name another "
			"group",
			name, name);
		return e ? -e : -ENOENT;
	}
	r->group = grp->gr_gid;
	return 0;
}

/* The token of rest_token_file, kept as its SHA-256 in locked memory. */
static int rest_load_token(struct rest *r)
{
	const char *path = r->d.c->rest_token_file;
	char *token = NULL, *msg = NULL;
	size_t len = 0;
	int e;

	e = config_read_secret_file(path, 1, &token, &len, &msg);
	if (e < 0) {
		log_err("rest_token_file: %s", msg ? msg : strerror(-e));
		free(msg);
		return e;
	}
	while (len > 0 && (token[len - 1] == '\n' || token[len - 1] == '\r' ||
			   token[len - 1] == ' ' || token[len - 1] == '\t'))
		len--;
	if (len < REST_TOKEN_MIN || memchr(token, '\n', len)) {
		log_err("rest_token_file: %s must hold one token of at least %d characters on "
			"one line (e.g. openssl rand -hex 32 > %s)",
			path, REST_TOKEN_MIN, path);
		secmem_free(token);
		return -EINVAL;
	}
	r->token_hash = secmem_alloc(32);
	if (!r->token_hash) {
		e = -errno;
		secmem_free(token);
		return e;
	}
	crypto_sha256(token, len, r->token_hash);
	secmem_free(token);
	return 0;
}

static int rest_open_door(struct rest *r, const char *spec, int metrics_only)
{
	struct rest_door *door = &r->doors[r->n_doors];
	int e;

	door->r = r;
	door->spec = spec;
	door->metrics_only = metrics_only;
	door->fd = -1;
	if (strncmp(spec, "unix:", 5) == 0) {
		if (!r->group) {
			e = rest_group_id(r);
			if (e < 0)
				return e;
		}
		e = rest_listen_unix(door, spec + 5);
	} else {
		e = rest_listen_tcp(door, spec);
	}
	if (e < 0)
		return e;
	r->n_doors++;
	return 0;
}

int rest_new(const struct rest_deps *deps, struct rest **ret)
{
	struct rest *r;
	int e;

	r = calloc(1, sizeof(*r));
	if (!r)
		return -ENOMEM;
	r->d = *deps;
	pthread_mutex_init(&r->lock, NULL);
	/* Process-wide, and harmless for every other user of jansson. */
	json_set_alloc_funcs(malloc, rest_json_free);
	if (deps->c->rest_token_file) {
		e = rest_load_token(r);
		if (e < 0)
			goto err;
	}
	e = unlock_new(deps->c, deps->f, deps->s, deps->d, &r->unlock);
	if (e < 0)
		goto err;
	e = rest_open_door(r, deps->c->rest_listen, 0);
	if (e == 0 && deps->c->metrics_listen)
		e = rest_open_door(r, deps->c->metrics_listen, 1);
	if (e < 0)
		goto err;
	*ret = r;
	return 0;
err:
	rest_free(r);
	return e;
}

int rest_start(struct rest *r)
{
	for (size_t i = 0; i < r->n_doors; i++) {
		struct rest_door *door = &r->doors[i];

		door->mhd = MHD_start_daemon(
			MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD |
				MHD_USE_ITC | MHD_USE_POLL | MHD_USE_ERROR_LOG,
			0, NULL, NULL, rest_handler, door, MHD_OPTION_LISTEN_SOCKET, door->fd,
			MHD_OPTION_CONNECTION_LIMIT, (unsigned)REST_CONN_MAX,
			MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)REST_CONN_TIMEOUT,
			MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)REST_CONN_MEMORY,
			MHD_OPTION_NOTIFY_COMPLETED, rest_completed, r, MHD_OPTION_EXTERNAL_LOGGER,
			rest_mhd_log, r, MHD_OPTION_END);
		if (!door->mhd) {
			log_err("the side endpoint on %s did not start", door->spec);
			return -EIO;
		}
		/* The daemon owns the socket now and closes it when it stops. */
		door->fd = -1;
		log_info("side endpoint: listening on %s%s%s", door->spec,
			 door->metrics_only ? " (/metrics only)" : "",
			 !door->metrics_only && r->token_hash ? " (bearer token required)" : "");
	}
	__atomic_store_n(&r->serving, 1, __ATOMIC_RELAXED);
	return 0;
}

void rest_free(struct rest *r)
{
	if (!r)
		return;
	__atomic_store_n(&r->stopping, 1, __ATOMIC_RELAXED);
	/* Cancel the unlock first: a handler may be waiting for its start lock. */
	unlock_free(r->unlock);
	r->unlock = NULL;
	for (size_t i = 0; i < sizeof(r->doors) / sizeof(r->doors[0]); i++) {
		struct rest_door *door = &r->doors[i];

		if (door->mhd)
			MHD_stop_daemon(door->mhd);
		if (door->r && door->fd >= 0)
			close(door->fd);
		if (door->unix_path) {
			struct stat sb;

			/* Not the socket of a worker that took over from this one. */
			if (lstat(door->unix_path, &sb) == 0 && sb.st_ino == door->unix_ino)
				unlink(door->unix_path);
			free(door->unix_path);
		}
	}
	secmem_free(r->token_hash);
	pthread_mutex_destroy(&r->lock);
	free(r);
}
