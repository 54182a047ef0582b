/*
 * session.c - credentials, login and token, api_key, cdn.yaml and the CDN
 * address (see session.h).
 *
 * Locking: one mutex guards every field below it in struct session. It is
 * never held across I/O: a login marks logging_in, drops the lock, talks to
 * the API, relocks and wakes the threads that wait for it (they wait on
 * cond instead of logging in again). Credentials live in a reference-
 * counted block of locked memory, so a call in flight keeps the ones it
 * started with while another thread replaces them.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "crypto/crypto.h"
#include "fs/hw.h"
#include "fs/log.h"
#include "fs/msg.h"
#include "fs/metrics.h"
#include "fs/session.h"

#define SESSION_FIELD_MAX 1024	/* email, password, a cdn.yaml value */
#define SESSION_TOKEN_MARGIN 30 /* seconds before exp that count as expired */
#define SESSION_YAML_MAX 65536

struct session_creds {
	unsigned refs; /* under session.lock */
	char *email;   /* both point into this block */
	char *password;
	uint8_t api_key[CRYPTO_KEY_SIZE];
};

struct session_s3 {
	char *access_key;
	char *secret_key; /* locked memory */
	struct fetch_s3 s3;
	int on;
};

struct session_cdn_snap {
	struct session_cdn_snap *next;
	char *url;
	struct session_s3 down;
	struct session_s3 up;
};

struct session {
	const struct config *c;
	struct fetch *f;
	char *hw;
	char *conf_secret; /* s3_secret_key_file's content, locked memory */

	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct session_creds *creds;
	char *token;
	time_t exp;
	unsigned token_gen;
	int logging_in;
	int logged_in;
	struct session_cdn_snap *cdn_all; /* kept until session_free */
	struct session_cdn_snap *cdn_cur;
};

static void session_creds_put_locked(struct session_creds *cr)
{
	if (cr && --cr->refs == 0)
		secmem_free(cr);
}

static void session_creds_put(struct session *s, struct session_creds *cr)
{
	pthread_mutex_lock(&s->lock);
	session_creds_put_locked(cr);
	pthread_mutex_unlock(&s->lock);
}

static int session_creds_new(const char *hw, const char *email, const char *password,
			     struct session_creds **ret)
{
	size_t el = strlen(email), pl = strlen(password);
	char hw_hash[CRYPTO_KS_LEN + 1];
	struct session_creds *cr;
	int r;

	if (el == 0 || pl == 0 || el > SESSION_FIELD_MAX || pl > SESSION_FIELD_MAX)
		return -EINVAL;
	cr = secmem_alloc(sizeof(*cr) + el + pl + 2);
	if (!cr)
		return -errno;
	cr->refs = 1;
	cr->email = (char *)(cr + 1);
	cr->password = cr->email + el + 1;
	memcpy(cr->email, email, el + 1);
	memcpy(cr->password, password, pl + 1);
	f1_hw_hash(hw, hw_hash);
	r = f1_api_key(email, password, hw_hash, cr->api_key);
	crypto_wipe(hw_hash, sizeof(hw_hash));
	if (r < 0) {
		secmem_free(cr);
		return r;
	}
	*ret = cr;
	return 0;
}

static char *session_trim(char *s, char *end)
{
	while (s < end && (*s == ' ' || *s == '\t'))
		s++;
	while (end > s && (end[-1] == ' ' || end[-1] == '\t' || end[-1] == '\r'))
		end--;
	*end = '\0';
	return s;
}

static int session_read_credentials(struct session *s, char **ret_msg)
{
	char *email = NULL, *password = NULL, *msg = NULL;
	int r;

	r = config_read_credentials(s->c->credentials, &email, &password, &msg);
	if (r < 0) {
		msg_set(ret_msg, "credentials: %s", msg_or(msg, r));
		free(msg);
		return r;
	}
	r = session_creds_new(s->hw, email, password, &s->creds);
	if (r < 0)
		msg_set(ret_msg, "credentials: %s", strerror(-r));
	secmem_free(email);
	secmem_free(password);
	return r;
}

static void session_s3_clear(struct session_s3 *k)
{
	free(k->access_key);
	secmem_free(k->secret_key);
	memset(k, 0, sizeof(*k));
}

static void session_snap_free(struct session_cdn_snap *sn)
{
	if (!sn)
		return;
	free(sn->url);
	session_s3_clear(&sn->down);
	session_s3_clear(&sn->up);
	free(sn);
}

static int session_s3_same(const struct session_s3 *a, const struct session_s3 *b)
{
	if (a->on != b->on)
		return 0;
	return !a->on || (strcmp(a->access_key, b->access_key) == 0 &&
			  strcmp(a->secret_key, b->secret_key) == 0);
}

/* A cdn.yaml host or a cdn_url as a base URL: a scheme, no trailing '/'. */
static char *session_base_url(const char *u)
{
	size_t n = strlen(u);
	char *out;

	while (n > 0 && u[n - 1] == '/')
		n--;
	if (strstr(u, "://"))
		return strndup(u, n);
	if (asprintf(&out, "https://%.*s", (int)n, u) < 0)
		return NULL;
	return out;
}

/*
 * Refuses a URL that would carry the password or the token in the clear
 * (docs/trust.md 5), naming the setting in *ret_msg; before any
 * connection to it.
 */
static int session_check_url(const char *what, const char *url, char **ret_msg)
{
	char *why = NULL;
	int r;

	r = fetch_url_allowed(url, &why);
	if (r < 0)
		msg_set(ret_msg, "%s: %s", what, msg_or(why, r));
	free(why);
	return r;
}

static int session_s3_set(struct session_s3 *k, const char *access, const char *secret,
			  const char *region)
{
	if (!access || !secret)
		return 0;
	k->access_key = strdup(access);
	k->secret_key = secmem_strndup(secret, strlen(secret));
	if (!k->access_key || !k->secret_key)
		return -ENOMEM;
	k->s3.access_key = k->access_key;
	k->s3.secret_key = k->secret_key;
	k->s3.region = region;
	k->on = 1;
	return 0;
}

/*
 * Works out the CDN from the configuration and y (may be NULL) and makes
 * it current when it differs from the current one. Caller holds no lock.
 */
static int session_cdn_update(struct session *s, const struct session_cdn_yaml *y)
{
	const struct config *c = s->c;
	struct session_cdn_snap *sn, *cur;
	char *yaml_url = NULL;
	int same, yaml_keys, r;

	if (y && y->host) {
		yaml_url = session_base_url(y->host);
		if (!yaml_url)
			return -ENOMEM;
	}
	sn = calloc(1, sizeof(*sn));
	if (!sn)
		goto err_nomem;
	if (c->cdn_url) {
		sn->url = session_base_url(c->cdn_url);
		if (!sn->url)
			goto err_nomem;
	} else if (yaml_url) {
		/* The token and S3 keys would follow this host: the same rule as cdn_url. */
		char *msg = NULL;

		r = session_check_url("cdn.yaml host", yaml_url, &msg);
		if (r < 0) {
			/* Background work of a login: no caller to say it. */
			log_err("%s; the host is not used, the CDN stays as it was",
				msg_or(msg, r));
			free(msg);
			free(yaml_url);
			free(sn);
			return r;
		}
		sn->url = yaml_url;
		yaml_url = NULL;
	} else {
		free(sn);
		return 0;
	}
	/* yaml_url is NULL here when the host came from cdn.yaml itself. */
	yaml_keys = y && (!c->cdn_url || (yaml_url && strcasecmp(yaml_url, sn->url) == 0));
	free(yaml_url);
	if (c->s3_access_key) {
		r = session_s3_set(&sn->down, c->s3_access_key, s->conf_secret, c->s3_region);
		if (r == 0)
			r = session_s3_set(&sn->up, c->s3_access_key, s->conf_secret, c->s3_region);
	} else if (yaml_keys) {
		r = session_s3_set(&sn->down, y->access_key, y->secret_key, c->s3_region);
		if (r == 0)
			r = session_s3_set(&sn->up, y->up_access_key, y->up_secret_key,
					   c->s3_region);
	} else {
		r = 0;
	}
	if (r < 0) {
		session_snap_free(sn);
		return r;
	}

	pthread_mutex_lock(&s->lock);
	cur = s->cdn_cur;
	same = cur && strcmp(cur->url, sn->url) == 0 && session_s3_same(&cur->down, &sn->down) &&
	       session_s3_same(&cur->up, &sn->up);
	if (!same) {
		sn->next = s->cdn_all;
		s->cdn_all = sn;
		s->cdn_cur = sn;
	}
	pthread_mutex_unlock(&s->lock);
	if (same)
		session_snap_free(sn);
	else
		log_info("CDN: %s (%s)", sn->url, sn->down.on ? "S3, signed" : "unsigned");
	return 0;

err_nomem:
	free(yaml_url);
	session_snap_free(sn);
	return -ENOMEM;
}

int session_new(const struct config *c, struct fetch *f, struct session **ret, char **ret_msg)
{
	struct session *s;
	size_t len;
	char *msg = NULL;
	int r;

	s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	s->c = c;
	s->f = f;
	pthread_mutex_init(&s->lock, NULL);
	pthread_cond_init(&s->cond, NULL);
	r = session_check_url("api_url", c->api_url, ret_msg);
	if (r == 0 && c->cdn_url)
		r = session_check_url("cdn_url", c->cdn_url, ret_msg);
	if (r < 0)
		goto err;
	r = hw_string(c->hardware_id, &s->hw);
	if (r < 0) {
		msg_set(ret_msg, "hardware string: %s", strerror(-r));
		goto err;
	}
	if (c->s3_secret_key_file) {
		r = config_read_secret_file(c->s3_secret_key_file, 1, &s->conf_secret, &len, &msg);
		if (r < 0) {
			msg_set(ret_msg, "s3_secret_key_file: %s", msg_or(msg, r));
			free(msg);
			goto err;
		}
		/* A trailing newline is not part of the key. */
		while (len > 0 &&
		       (s->conf_secret[len - 1] == '\n' || s->conf_secret[len - 1] == '\r'))
			s->conf_secret[--len] = '\0';
	}
	if (c->credentials) {
		r = session_read_credentials(s, ret_msg);
		if (r < 0)
			goto err;
	}
	r = session_cdn_update(s, NULL);
	if (r < 0)
		goto err;
	*ret = s;
	return 0;

err:
	session_free(s);
	return r;
}

void session_free(struct session *s)
{
	struct session_cdn_snap *sn, *next;

	if (!s)
		return;
	for (sn = s->cdn_all; sn; sn = next) {
		next = sn->next;
		session_snap_free(sn);
	}
	secmem_free(s->token);
	session_creds_put_locked(s->creds);
	secmem_free(s->conf_secret);
	free(s->hw);
	pthread_cond_destroy(&s->cond);
	pthread_mutex_destroy(&s->lock);
	free(s);
}

const char *session_hardware(struct session *s)
{
	return s->hw;
}

int session_has_credentials(struct session *s)
{
	int r;

	pthread_mutex_lock(&s->lock);
	r = s->creds != NULL;
	pthread_mutex_unlock(&s->lock);
	return r;
}

int session_logged_in(struct session *s)
{
	int r;

	pthread_mutex_lock(&s->lock);
	r = s->logged_in;
	pthread_mutex_unlock(&s->lock);
	return r;
}

/* Tokens live in secmem (wiped on free), like the password they stand for. */
static void session_free_token(char *tok)
{
	secmem_free(tok);
}

/* Moves fetch's malloc()ed token into locked memory and wipes the original. */
static int session_lock_token(char **tok)
{
	size_t n = strlen(*tok);
	char *locked = secmem_strndup(*tok, n);

	crypto_wipe(*tok, n);
	free(*tok);
	*tok = locked;
	return locked ? 0 : -ENOMEM;
}

static int session_token_valid_locked(struct session *s)
{
	return s->token && (s->exp == 0 || time(NULL) + SESSION_TOKEN_MARGIN < s->exp);
}

/* Fetches and applies cdn.yaml with a fresh token; failures only logged. */
static void session_fetch_cdn_yaml(struct session *s, const char *token,
				   const struct session_creds *cr)
{
	struct session_cdn_yaml y = {0};
	struct fetch_buf buf = {0};
	uint8_t *plain = NULL;
	size_t len;
	int r;

	r = fetch_api_resource(s->f, s->c->api_url, token, "", "cdn.yaml", cr->password, s->hw,
			       &buf);
	if (r < 0) {
		if (s->c->cdn_url)
			log_debug("cdn.yaml: %s (cdn_url is configured)", log_strerror(r));
		else
			log_warn("cdn.yaml: %s", log_strerror(r));
		return;
	}
	if (buf.len < 32 || buf.len > SESSION_YAML_MAX || buf.len % CRYPTO_BLOCK) {
		log_warn("cdn.yaml: an answer of %zu bytes is not a CBC message", buf.len);
		goto out;
	}
	plain = secmem_alloc(buf.len);
	if (!plain)
		goto out;
	r = f1_decrypt(cr->api_key, buf.data, buf.len, plain, &len);
	if (r < 0) {
		log_warn("cdn.yaml does not decrypt with this device's api_key "
			 "(credentials or hardware string differ from the API's)");
		goto out;
	}
	if (session_parse_cdn_yaml((const char *)plain, len, &y) < 0) {
		log_warn("cdn.yaml: not the expected 'key: value' lines");
		goto out;
	}
	session_cdn_update(s, &y);
out:
	session_cdn_yaml_clear(&y);
	secmem_free(plain);
	fetch_buf_free(&buf);
}

/*
 * Logs in unless, once any login in progress has finished, a valid token
 * newer than seen_gen exists (force) or any valid token exists (!force).
 * with_yaml fetches cdn.yaml too (a full login); a token renewal skips it
 * while a CDN is known, so that it costs a reader one call, not two.
 */
static int session_do_login(struct session *s, int force, unsigned seen_gen, int with_yaml)
{
	struct session_creds *cr;
	char *tok = NULL;
	time_t exp = 0;
	int r, quiet;

	pthread_mutex_lock(&s->lock);
	while (s->logging_in)
		pthread_cond_wait(&s->cond, &s->lock);
	if (session_token_valid_locked(s) && (!force || s->token_gen != seen_gen)) {
		pthread_mutex_unlock(&s->lock);
		return 0;
	}
	cr = s->creds;
	if (!cr) {
		pthread_mutex_unlock(&s->lock);
		return -ENOKEY;
	}
	cr->refs++;
	s->logging_in = 1;
	with_yaml = with_yaml || !s->cdn_cur;
	pthread_mutex_unlock(&s->lock);

	quiet = fetch_quiet(1);
	r = fetch_api_login(s->f, s->c->api_url, cr->email, cr->password, &tok, &exp);
	if (r == 0)
		r = session_lock_token(&tok);
	if (r == 0) {
		log_info("logged in to %s", s->c->api_url);
		if (with_yaml)
			session_fetch_cdn_yaml(s, tok, cr);
	} else {
		/* The caller says it, with these words (session.h). */
		log_debug("login to %s failed: %s", s->c->api_url, log_strerror(r));
	}
	fetch_quiet(quiet);

	pthread_mutex_lock(&s->lock);
	s->logging_in = 0;
	/* Credentials replaced meanwhile: this token belongs to the old ones. */
	if (r == 0 && cr == s->creds) {
		session_free_token(s->token);
		s->token = tok;
		tok = NULL;
		s->exp = exp;
		s->token_gen++;
	}
	s->logged_in = r == 0;
	session_creds_put_locked(cr);
	pthread_cond_broadcast(&s->cond);
	pthread_mutex_unlock(&s->lock);
	session_free_token(tok);
	return r;
}

int session_login(struct session *s)
{
	unsigned gen;

	pthread_mutex_lock(&s->lock);
	gen = s->token_gen;
	pthread_mutex_unlock(&s->lock);
	return session_do_login(s, 1, gen, 1);
}

int session_set_credentials(struct session *s, const char *email, const char *password)
{
	struct session_creds *cr, *old;
	int r;

	r = session_creds_new(s->hw, email, password, &cr);
	if (r < 0)
		return r;
	pthread_mutex_lock(&s->lock);
	old = s->creds;
	s->creds = cr;
	session_free_token(s->token);
	s->token = NULL;
	s->exp = 0;
	session_creds_put_locked(old);
	pthread_mutex_unlock(&s->lock);
	return session_login(s);
}

int session_credentials_blob(struct session *s, char **ret, size_t *ret_len)
{
	struct session_creds *cr;
	size_t cap;
	char *blob;
	int n;

	pthread_mutex_lock(&s->lock);
	cr = s->creds;
	if (cr)
		cr->refs++;
	pthread_mutex_unlock(&s->lock);
	if (!cr)
		return -ENOKEY;
	cap = strlen(cr->email) + strlen(cr->password) + 32;
	blob = secmem_alloc(cap);
	if (!blob) {
		session_creds_put(s, cr);
		return -ENOMEM;
	}
	n = snprintf(blob, cap, "email = %s\npassword = %s\n", cr->email, cr->password);
	session_creds_put(s, cr);
	*ret = blob;
	*ret_len = (size_t)n;
	return 0;
}

/* A valid token (copied) and a reference to the credentials it belongs to. */
static int session_token(struct session *s, char **ret_tok, struct session_creds **ret_cr,
			 unsigned *ret_gen)
{
	struct session_creds *cr;
	char *tok;
	int r;

	pthread_mutex_lock(&s->lock);
	if (!s->creds) {
		pthread_mutex_unlock(&s->lock);
		return -ENOKEY;
	}
	if (!session_token_valid_locked(s)) {
		pthread_mutex_unlock(&s->lock);
		r = session_do_login(s, 0, 0, 0);
		if (r < 0)
			return r;
		pthread_mutex_lock(&s->lock);
		if (!s->token || !s->creds) {
			pthread_mutex_unlock(&s->lock);
			return -EACCES;
		}
	}
	tok = secmem_strndup(s->token, strlen(s->token));
	if (!tok) {
		pthread_mutex_unlock(&s->lock);
		return -ENOMEM;
	}
	cr = s->creds;
	cr->refs++;
	*ret_gen = s->token_gen;
	pthread_mutex_unlock(&s->lock);
	*ret_tok = tok;
	*ret_cr = cr;
	return 0;
}

typedef int (*session_fn)(struct session *s, const char *token, const struct session_creds *cr,
			  void *ctx);

/*
 * Runs fn with a token; on -EACCES logs in again once and retries. Quiet:
 * the caller says a failure (session.h).
 */
static int session_call(struct session *s, session_fn fn, void *ctx)
{
	struct session_creds *cr;
	unsigned gen;
	char *tok;
	int r, attempt, quiet;
	uint64_t t0 = metrics_now();

	quiet = fetch_quiet(1);
	for (attempt = 0;; attempt++) {
		r = session_token(s, &tok, &cr, &gen);
		if (r < 0)
			break;
		r = fn(s, tok, cr, ctx);
		session_free_token(tok);
		session_creds_put(s, cr);
		if (r != -EACCES || attempt > 0)
			break;
		log_info("the API refused the token; logging in again");
		r = session_do_login(s, 1, gen, 0);
		if (r < 0)
			break;
	}
	fetch_quiet(quiet);
	metrics_observe(METRICS_API_CALL, t0);
	/* An absent resource or catalog is an answer, not a failure. */
	if (r < 0 && r != -ENOENT)
		metrics_count(METRICS_API_ERRORS, 1);
	return r;
}

struct session_resource_ctx {
	const char *folder;
	const char *name;
	uint8_t *out;
	size_t len;
	char *msg; /* why the answer is not one */
};

static int session_resource_fn(struct session *s, const char *token, const struct session_creds *cr,
			       void *ctx)
{
	struct session_resource_ctx *rc = ctx;
	struct fetch_buf buf = {0};
	uint8_t *out;
	size_t len;
	int r;

	r = fetch_api_resource(s->f, s->c->api_url, token, rc->folder, rc->name, cr->password,
			       s->hw, &buf);
	if (r < 0)
		return r;
	if (buf.len < 32 || buf.len % CRYPTO_BLOCK) {
		msg_set(&rc->msg, "%s/%s: the API's answer of %zu bytes is not a CBC message",
			rc->folder, rc->name, buf.len);
		r = -EIO;
		goto out;
	}
	out = secmem_alloc(buf.len);
	if (!out) {
		r = -errno;
		goto out;
	}
	r = f1_decrypt(cr->api_key, buf.data, buf.len, out, &len);
	if (r < 0) {
		msg_set(&rc->msg,
			"%s/%s does not decrypt with this device's api_key (credentials or "
			"hardware string differ from the ones the API knows)",
			rc->folder, rc->name);
		secmem_free(out);
		/* Not -EACCES: that would make session_call log in again. */
		r = -EKEYREJECTED;
		goto out;
	}
	rc->out = out;
	rc->len = len;
out:
	fetch_buf_free(&buf);
	return r;
}

int session_get_resource(struct session *s, const char *folder, const char *name, uint8_t **ret,
			 size_t *ret_len, char **ret_msg)
{
	struct session_resource_ctx rc = {.folder = folder, .name = name};
	int r;

	r = session_call(s, session_resource_fn, &rc);
	if (r == -EKEYREJECTED)
		r = -EACCES;
	if (r < 0 && ret_msg) {
		*ret_msg = rc.msg;
		rc.msg = NULL;
	}
	free(rc.msg);
	if (r < 0)
		return r;
	*ret = rc.out;
	*ret_len = rc.len;
	return 0;
}

struct session_json_ctx {
	const char *folder;
	const char *name;
	const char *device_id;
	json_t *doc;
};

static int session_list_fn(struct session *s, const char *token, const struct session_creds *cr,
			   void *ctx)
{
	struct session_json_ctx *jc = ctx;

	return fetch_api_list(s->f, s->c->api_url, token, jc->folder, &jc->doc);
}

int session_list(struct session *s, const char *folder, json_t **ret)
{
	struct session_json_ctx jc = {.folder = folder};
	int r;

	r = session_call(s, session_list_fn, &jc);
	if (r < 0)
		return r;
	*ret = jc.doc;
	return 0;
}

static int session_device_key_fn(struct session *s, const char *token,
				 const struct session_creds *cr, void *ctx)
{
	struct session_json_ctx *jc = ctx;

	return fetch_api_device_key(s->f, s->c->api_url, token, jc->folder, jc->name, jc->device_id,
				    &jc->doc);
}

int session_device_key(struct session *s, const char *folder, const char *name,
		       const char *device_id, json_t **ret)
{
	struct session_json_ctx jc = {.folder = folder, .name = name, .device_id = device_id};
	int r;

	r = session_call(s, session_device_key_fn, &jc);
	if (r < 0)
		return r;
	*ret = jc.doc;
	return 0;
}

struct session_fragment_ctx {
	uint8_t *out;
	size_t len;
	char *msg; /* why the answer is not one */
};

#define SESSION_FRAGMENT_MAX 4096

static int session_fragment_fn(struct session *s, const char *token, const struct session_creds *cr,
			       void *ctx)
{
	struct session_fragment_ctx *fc = ctx;
	struct fetch_buf buf = {0};
	int r;

	r = fetch_api_key_fragment(s->f, s->c->api_url, token, &buf);
	if (r < 0)
		return r;
	if (buf.len == 0 || buf.len > SESSION_FRAGMENT_MAX) {
		msg_set(&fc->msg, "the API's key fragment is %zu bytes, not 1 to %d", buf.len,
			SESSION_FRAGMENT_MAX);
		r = -EPROTO;
		goto out;
	}
	fc->out = secmem_alloc(buf.len);
	if (!fc->out) {
		r = -errno;
		goto out;
	}
	memcpy(fc->out, buf.data, buf.len);
	fc->len = buf.len;
out:
	fetch_buf_free(&buf);
	return r;
}

int session_key_fragment(struct session *s, uint8_t **ret, size_t *ret_len, char **ret_msg)
{
	struct session_fragment_ctx fc = {0};
	int r;

	r = session_call(s, session_fragment_fn, &fc);
	if (r < 0) {
		if (ret_msg)
			*ret_msg = fc.msg;
		else
			free(fc.msg);
		return r;
	}
	*ret = fc.out;
	*ret_len = fc.len;
	return 0;
}

struct session_attest_ctx {
	json_t *body;
	json_t *answer;
	char *id;
	char *detail;
};

static int session_challenge_fn(struct session *s, const char *token,
				const struct session_creds *cr, void *ctx)
{
	struct session_attest_ctx *ac = ctx;

	return fetch_api_device_challenge(s->f, s->c->api_url, token, ac->body, &ac->answer,
					  &ac->detail);
}

int session_device_challenge(struct session *s, json_t *evidence, json_t **ret, char **ret_detail)
{
	struct session_attest_ctx ac = {.body = evidence};
	int r;

	if (json_object_set_new(evidence, "hardware", json_string(s->hw)))
		return -ENOMEM;
	r = session_call(s, session_challenge_fn, &ac);
	if (r < 0) {
		if (ret_detail)
			*ret_detail = ac.detail;
		else
			free(ac.detail);
		return r;
	}
	*ret = ac.answer;
	return 0;
}

static int session_enrol_fn(struct session *s, const char *token, const struct session_creds *cr,
			    void *ctx)
{
	struct session_attest_ctx *ac = ctx;

	return fetch_api_device_enrol(s->f, s->c->api_url, token, ac->body, &ac->id, &ac->detail);
}

int session_device_enrol(struct session *s, json_t *proof, char **ret_id, char **ret_detail)
{
	struct session_attest_ctx ac = {.body = proof};
	int r;

	r = session_call(s, session_enrol_fn, &ac);
	if (r < 0) {
		if (ret_detail)
			*ret_detail = ac.detail;
		else
			free(ac.detail);
		return r;
	}
	*ret_id = ac.id;
	return 0;
}

static int session_cdn_get(struct session *s, int up, struct session_cdn *ret)
{
	struct session_cdn_snap *sn;
	struct session_s3 *k;

	pthread_mutex_lock(&s->lock);
	sn = s->cdn_cur;
	pthread_mutex_unlock(&s->lock);
	if (!sn)
		return -ENOENT;
	k = up ? &sn->up : &sn->down;
	ret->url = sn->url;
	ret->s3 = k->on ? &k->s3 : NULL;
	return 0;
}

int session_cdn(struct session *s, struct session_cdn *ret)
{
	return session_cdn_get(s, 0, ret);
}

int session_cdn_upload(struct session *s, struct session_cdn *ret)
{
	return session_cdn_get(s, 1, ret);
}

struct session_upload_ctx {
	const char *folder;
	const char *file_name;
	const void *data;
	size_t len;
	const char *const *fields;
};

static int session_upload_fn(struct session *s, const char *token, const struct session_creds *cr,
			     void *ctx)
{
	struct session_upload_ctx *uc = ctx;

	return fetch_api_upload(s->f, s->c->api_url, token, uc->folder, uc->file_name, uc->data,
				uc->len, uc->fields);
}

int session_upload(struct session *s, const char *folder, const char *file_name, const void *data,
		   size_t len, const char *const *fields)
{
	struct session_upload_ctx uc = {folder, file_name, data, len, fields};

	return session_call(s, session_upload_fn, &uc);
}

struct session_key_ctx {
	const char *folder;
	const char *name;
	const char *key_b64;
	uint64_t size;
	const char *sha256_hex;
	const char *file_id_hex;
	uint64_t big_size;
};

static int session_key_fn(struct session *s, const char *token, const struct session_creds *cr,
			  void *ctx)
{
	struct session_key_ctx *kc = ctx;

	return fetch_api_register_key(s->f, s->c->api_url, token, kc->folder, kc->name, kc->key_b64,
				      kc->size, kc->sha256_hex, kc->file_id_hex, kc->big_size);
}

int session_register_key(struct session *s, const char *folder, const char *name,
			 const char *key_b64, uint64_t size, const char *sha256_hex,
			 const char *file_id_hex, uint64_t big_size)
{
	struct session_key_ctx kc = {folder,	 name,	      key_b64, size,
				     sha256_hex, file_id_hex, big_size};

	return session_call(s, session_key_fn, &kc);
}

struct session_hashes_ctx {
	const char *folder;
	const char *name;
	uint32_t chunk_size;
	const uint8_t *sha256;
	size_t count;
};

static int session_hashes_fn(struct session *s, const char *token, const struct session_creds *cr,
			     void *ctx)
{
	struct session_hashes_ctx *hc = ctx;

	return fetch_api_register_chunk_hashes(s->f, s->c->api_url, token, hc->folder, hc->name,
					       hc->chunk_size, hc->sha256, hc->count);
}

int session_register_chunk_hashes(struct session *s, const char *folder, const char *name,
				  uint32_t chunk_size, const uint8_t *sha256, size_t count)
{
	struct session_hashes_ctx hc = {folder, name, chunk_size, sha256, count};

	return session_call(s, session_hashes_fn, &hc);
}

struct session_get_hashes_ctx {
	const char *folder;
	const char *name;
	uint32_t chunk_size;
	uint8_t *sha256;
	size_t count;
};

static int session_get_hashes_fn(struct session *s, const char *token,
				 const struct session_creds *cr, void *ctx)
{
	struct session_get_hashes_ctx *hc = ctx;

	return fetch_api_chunk_hashes(s->f, s->c->api_url, token, hc->folder, hc->name,
				      &hc->chunk_size, &hc->sha256, &hc->count);
}

int session_chunk_hashes(struct session *s, const char *folder, const char *name,
			 uint32_t *ret_chunk_size, uint8_t **ret_sha256, size_t *ret_count)
{
	struct session_get_hashes_ctx hc = {.folder = folder, .name = name};
	int r;

	r = session_call(s, session_get_hashes_fn, &hc);
	if (r < 0)
		return r;
	*ret_chunk_size = hc.chunk_size;
	*ret_sha256 = hc.sha256;
	*ret_count = hc.count;
	return 0;
}

/* ---- cdn.yaml ----------------------------------------------------------- */

static char *session_unquote(char *v)
{
	size_t n = strlen(v);

	if (n >= 2 && (v[0] == '"' || v[0] == '\'') && v[n - 1] == v[0]) {
		v[n - 1] = '\0';
		return v + 1;
	}
	return v;
}

int session_parse_cdn_yaml(const char *text, size_t len, struct session_cdn_yaml *ret)
{
	struct session_cdn_yaml y = {0};
	char *copy, *p, *end;
	int r = 0;

	if (len > SESSION_YAML_MAX)
		return -EFBIG;
	copy = secmem_alloc(len + 1);
	if (!copy)
		return -ENOMEM;
	memcpy(copy, text, len);
	copy[len] = '\0';
	for (p = copy, end = copy + len; p < end;) {
		char *nl = memchr(p, '\n', (size_t)(end - p));
		char *eol = nl ? nl : end;
		char *colon, *key, *val;

		*eol = '\0';
		colon = strchr(p, ':');
		key = session_trim(p, colon ? colon : eol);
		if (*key == '\0' || *key == '#' || *key == '-' || !colon) {
			p = eol + 1;
			continue;
		}
		val = session_unquote(session_trim(colon + 1, eol));
		if (strlen(val) > SESSION_FIELD_MAX) {
			r = -EFBIG;
			break;
		}
		if (strcmp(key, "host") == 0 && *val) {
			free(y.host);
			y.host = strdup(val);
			if (!y.host)
				r = -ENOMEM;
		} else if (strcmp(key, "downloader_access_key") == 0 && *val) {
			free(y.access_key);
			y.access_key = strdup(val);
			if (!y.access_key)
				r = -ENOMEM;
		} else if (strcmp(key, "downloader_access_secret") == 0 && *val) {
			secmem_free(y.secret_key);
			y.secret_key = secmem_strndup(val, strlen(val));
			if (!y.secret_key)
				r = -ENOMEM;
		} else if (strcmp(key, "uploader_access_key") == 0 && *val) {
			free(y.up_access_key);
			y.up_access_key = strdup(val);
			if (!y.up_access_key)
				r = -ENOMEM;
		} else if (strcmp(key, "uploader_access_secret") == 0 && *val) {
			secmem_free(y.up_secret_key);
			y.up_secret_key = secmem_strndup(val, strlen(val));
			if (!y.up_secret_key)
				r = -ENOMEM;
		}
		if (r < 0)
			break;
		p = eol + 1;
	}
	secmem_free(copy);
	if (r == 0 && !y.host && !y.access_key)
		r = -EPROTO;
	if (r < 0) {
		session_cdn_yaml_clear(&y);
		return r;
	}
	*ret = y;
	return 0;
}

void session_cdn_yaml_clear(struct session_cdn_yaml *y)
{
	free(y->host);
	free(y->access_key);
	secmem_free(y->secret_key);
	free(y->up_access_key);
	secmem_free(y->up_secret_key);
	memset(y, 0, sizeof(*y));
}
