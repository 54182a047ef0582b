/*
 * api.c - the Resource API client (docs/resource-api.md): each call builds its
 * URL (path segments percent-encoded) and its JSON body with jansson, runs
 * one exchange with a cap on the answer, maps the status and parses what
 * comes back. Passwords, tokens and keys travel only in bodies and the
 * Authorization header, are wiped after use (jansson's copies included)
 * and never logged. No state and no locks of its own.
 *
 * It also owns the one multipart/form-data writer: the API's upload and
 * azaionctl's F3 upload to the side endpoint (docs/loader-api.md) both
 * stream their bodies through it.
 */
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>
#include <sys/random.h>

#include "crypto/crypto.h"
#include "fetch/internal.h"

#define API_JSON_MAX FETCH_MIB
#define API_CATALOG_MAX (8 * FETCH_MIB)
#define API_PART_MAX FETCH_MIB
#define API_URL_MAX 8192
#define API_JWT_MAX (64u * 1024)

/* ---- helpers ------------------------------------------------------------ */

static int is_unreserved(unsigned char ch)
{
	return (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') ||
	       ch == '-' || ch == '.' || ch == '_' || ch == '~';
}

/* Appends s percent-encoded (every byte but the unreserved ones). */
static int append_escaped(char *out, size_t cap, size_t *pos, const char *s)
{
	static const char hex[] = "0123456789ABCDEF";
	const unsigned char *p;

	for (p = (const unsigned char *)s; *p; p++) {
		if (*pos + 4 > cap)
			return -EINVAL;
		if (is_unreserved(*p)) {
			out[(*pos)++] = (char)*p;
		} else {
			out[(*pos)++] = '%';
			out[(*pos)++] = hex[*p >> 4];
			out[(*pos)++] = hex[*p & 15];
		}
	}
	out[*pos] = '\0';
	return 0;
}

/* base (trailing slashes dropped) + path + escaped seg1 [+ "/" + seg2]. */
static char *api_url(const char *base, const char *path, const char *seg1, const char *seg2)
{
	size_t blen, pos;
	char *u;

	if (!base || !*base)
		return NULL;
	blen = strlen(base);
	while (blen && base[blen - 1] == '/')
		blen--;
	if (blen + strlen(path) + 1 > API_URL_MAX)
		return NULL;
	u = malloc(API_URL_MAX);
	if (!u)
		return NULL;
	memcpy(u, base, blen);
	strcpy(u + blen, path);
	pos = blen + strlen(path);
	if ((seg1 && append_escaped(u, API_URL_MAX, &pos, seg1)) ||
	    (seg2 && (pos + 2 > API_URL_MAX || (u[pos++] = '/', u[pos] = '\0',
						append_escaped(u, API_URL_MAX, &pos, seg2))))) {
		free(u);
		return NULL;
	}
	return u;
}

/* jansson frees its strings unwiped: wipe a secret member in place first. */
static void wipe_member(json_t *obj, const char *key)
{
	json_t *v = json_object_get(obj, key);

	if (json_is_string(v))
		crypto_wipe((char *)json_string_value(v), json_string_length(v));
}

/* Dumps obj into one exact-size buffer (no growing copies left behind). */
static int json_body(json_t *obj, char **ret, size_t *ret_len)
{
	size_t n = json_dumpb(obj, NULL, 0, JSON_COMPACT);
	char *p;

	if (!n)
		return -EINVAL;
	p = malloc(n);
	if (!p)
		return -ENOMEM;
	if (json_dumpb(obj, p, n, JSON_COMPACT) != n) {
		crypto_wipe(p, n);
		free(p);
		return -EINVAL;
	}
	*ret = p;
	*ret_len = n;
	return 0;
}

static void body_free(char *body, size_t len)
{
	crypto_wipe(body, len);
	free(body);
}

/* One exchange; a non-2xx answer is mapped and logged here. */
static int api_exchange(struct fetch *f, const struct fetch_request *req,
			const struct fetch_hooks *hooks, int quiet_404, struct fetch_buf *ret)
{
	struct fetch_response resp = {0};
	int r;

	r = fetch_exchange(f, req, hooks, &resp);
	if (r)
		return r;
	r = fetch_check_status(f, req->method, req->url, resp.status, quiet_404);
	if (r) {
		fetch_response_free(&resp);
		return r;
	}
	if (ret)
		*ret = resp.body;
	else
		fetch_buf_free(&resp.body);
	return 0;
}

static int api_bad_answer(struct fetch *f, const struct fetch_request *req, const char *why)
{
	char u[512];

	fetch_url_for_log(req->url, u, sizeof(u));
	fetch_logf(f, LOG_ERR, "%s %s: %s", req->method, u, why);
	return -EPROTO;
}

static int api_parse(struct fetch *f, const struct fetch_request *req, const struct fetch_buf *b,
		     json_t **ret)
{
	json_error_t e;
	json_t *j;

	j = json_loadb((const char *)b->data, b->len, 0, &e);
	if (!json_is_object(j)) {
		json_decref(j);
		return api_bad_answer(f, req, "the answer is not a JSON object");
	}
	*ret = j;
	return 0;
}

/* GET of a JSON object. */
static int api_get_json(struct fetch *f, const char *url, const char *token,
			const char *const *headers, size_t max, int quiet_404, json_t **ret)
{
	struct fetch_request req = {
		.method = "GET",
		.url = url,
		.bearer = token,
		.headers = headers,
		.max_response = max,
	};
	struct fetch_buf b = {0};
	int r;

	r = api_exchange(f, &req, NULL, quiet_404, &b);
	if (r)
		return r;
	r = api_parse(f, &req, &b, ret);
	fetch_buf_free(&b);
	return r;
}

/* ---- the JWT's exp -------------------------------------------------------- */

static int b64url_value(char ch)
{
	if (ch >= 'A' && ch <= 'Z')
		return ch - 'A';
	if (ch >= 'a' && ch <= 'z')
		return ch - 'a' + 26;
	if (ch >= '0' && ch <= '9')
		return ch - '0' + 52;
	if (ch == '-' || ch == '+')
		return 62;
	if (ch == '_' || ch == '/')
		return 63;
	return -1;
}

/* Decodes base64url (padding optional) into out, at most cap bytes. */
static int b64url_decode(const char *s, size_t len, uint8_t *out, size_t cap, size_t *ret_len)
{
	uint32_t acc = 0;
	size_t n = 0, i;
	int bits = 0, v;

	while (len && s[len - 1] == '=')
		len--;
	for (i = 0; i < len; i++) {
		v = b64url_value(s[i]);
		if (v < 0)
			return -EPROTO;
		acc = (acc << 6) | (uint32_t)v;
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			if (n >= cap)
				return -EFBIG;
			out[n++] = (uint8_t)(acc >> bits);
		}
	}
	*ret_len = n;
	return 0;
}

/* The exp claim of a JWT, unverified; 0 when there is none. */
static time_t jwt_exp(const char *token)
{
	const char *p1, *p2;
	uint8_t *buf;
	size_t n = 0;
	json_t *j, *exp;
	time_t t = 0;

	p1 = strchr(token, '.');
	p2 = p1 ? strchr(p1 + 1, '.') : NULL;
	if (!p2 || (size_t)(p2 - p1 - 1) > API_JWT_MAX)
		return 0;
	buf = malloc(API_JWT_MAX);
	if (!buf)
		return 0;
	if (!b64url_decode(p1 + 1, (size_t)(p2 - p1 - 1), buf, API_JWT_MAX, &n)) {
		j = json_loadb((const char *)buf, n, 0, NULL);
		exp = json_object_get(j, "exp");
		if (json_is_integer(exp) && json_integer_value(exp) > 0)
			t = (time_t)json_integer_value(exp);
		else if (json_is_real(exp) && json_real_value(exp) > 0)
			t = (time_t)json_real_value(exp);
		json_decref(j);
	}
	crypto_wipe(buf, n);
	free(buf);
	return t;
}

/* ---- the calls ------------------------------------------------------------ */

int fetch_api_login(struct fetch *f, const char *api_url_base, const char *email,
		    const char *password, char **ret_token, time_t *ret_exp)
{
	struct fetch_request req = {
		.method = "POST",
		.content_type = "application/json",
		.max_response = API_JSON_MAX,
	};
	struct fetch_buf b = {0};
	json_t *obj, *ans = NULL, *tok;
	char *body = NULL, *url, *token;
	size_t body_len = 0;
	int r;

	if (!email || !password)
		return -EINVAL;
	url = api_url(api_url_base, "/login", NULL, NULL);
	if (!url)
		return -EINVAL;
	obj = json_pack("{s:s, s:s}", "email", email, "password", password);
	if (!obj) {
		r = -EINVAL;
		goto out_url;
	}
	r = json_body(obj, &body, &body_len);
	wipe_member(obj, "password");
	json_decref(obj);
	if (r)
		goto out_url;
	req.url = url;
	req.body = body;
	req.body_len = body_len;
	r = api_exchange(f, &req, NULL, 0, &b);
	body_free(body, body_len);
	if (r)
		goto out_url;
	r = api_parse(f, &req, &b, &ans);
	fetch_buf_free(&b);
	if (r)
		goto out_url;
	tok = json_object_get(ans, "token");
	if (!json_is_string(tok) || !json_string_length(tok) ||
	    strlen(json_string_value(tok)) != json_string_length(tok)) {
		r = api_bad_answer(f, &req, "the answer has no token");
		goto out_json;
	}
	token = strdup(json_string_value(tok));
	if (!token) {
		r = -ENOMEM;
		goto out_json;
	}
	if (ret_exp)
		*ret_exp = jwt_exp(token);
	*ret_token = token;
out_json:
	wipe_member(ans, "token");
	json_decref(ans);
out_url:
	free(url);
	return r;
}

int fetch_api_resource(struct fetch *f, const char *api_url_base, const char *token,
		       const char *folder, const char *file_name, const char *password,
		       const char *hardware, struct fetch_buf *ret)
{
	struct fetch_request req = {
		.method = "POST",
		.bearer = token,
		.content_type = "application/json",
		.max_response = API_PART_MAX,
	};
	char *body = NULL, *url;
	size_t body_len = 0;
	json_t *obj;
	int r;

	if (!file_name || !password || !hardware)
		return -EINVAL;
	url = api_url(api_url_base, "/resources/get/", folder ? folder : "", NULL);
	if (!url)
		return -EINVAL;
	obj = json_pack("{s:s, s:s, s:s}", "password", password, "hardware", hardware, "fileName",
			file_name);
	if (!obj) {
		r = -EINVAL;
		goto out;
	}
	r = json_body(obj, &body, &body_len);
	wipe_member(obj, "password");
	json_decref(obj);
	if (r)
		goto out;
	req.url = url;
	req.body = body;
	req.body_len = body_len;
	r = api_exchange(f, &req, NULL, 0, ret);
	body_free(body, body_len);
out:
	free(url);
	return r;
}

int fetch_api_list(struct fetch *f, const char *api_url_base, const char *token, const char *folder,
		   json_t **ret)
{
	char *url = api_url(api_url_base, "/resources/list/", folder ? folder : "", NULL);
	int r;

	if (!url)
		return -EINVAL;
	r = api_get_json(f, url, token, NULL, API_CATALOG_MAX, 1, ret);
	free(url);
	return r;
}

int fetch_api_key_fragment(struct fetch *f, const char *api_url_base, const char *token,
			   struct fetch_buf *ret)
{
	char *url = api_url(api_url_base, "/binary-split/key-fragment", NULL, NULL);
	struct fetch_request req = {
		.method = "GET",
		.url = url,
		.bearer = token,
		.max_response = API_PART_MAX,
	};
	int r;

	if (!url)
		return -EINVAL;
	r = api_exchange(f, &req, NULL, 0, ret);
	free(url);
	return r;
}

/* ---- multipart/form-data bodies ----------------------------------------- */

#define MP_BOUNDARY_PREFIX "azaionfs"
#define MP_BOUNDARY_RANDOM 12 /* bytes, as hex in the boundary */

struct fetch_multipart {
	char boundary[sizeof(MP_BOUNDARY_PREFIX) + 2 * MP_BOUNDARY_RANDOM];
	char content_type[sizeof("multipart/form-data; boundary=") + sizeof(MP_BOUNDARY_PREFIX) +
			  2 * MP_BOUNDARY_RANDOM];
	char *head; /* the fields and the file part's header */
	char tail[sizeof("\r\n----\r\n") + sizeof(MP_BOUNDARY_PREFIX) + 2 * MP_BOUNDARY_RANDOM];
	size_t head_len, tail_len;
	uint64_t size, pos, total;
	fetch_read_fn rd;
	void *rd_ctx;
};

/* A name that goes into a Content-Disposition between quotes, as it is. */
static int mp_name_ok(const char *s)
{
	return s && *s && !strpbrk(s, "\"\r\n");
}

/* Appends to out at *len, or only counts when out is NULL. */
static int mp_append(char *out, size_t cap, size_t *len, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
static int mp_append(char *out, size_t cap, size_t *len, const char *fmt, ...)
{
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(out ? out + *len : NULL, out ? cap - *len : 0, fmt, ap);
	va_end(ap);
	if (n < 0)
		return -EINVAL;
	*len += (size_t)n;
	return 0;
}

/* The head: each field, then the file part's header; measured when out is NULL. */
static int mp_head(const struct fetch_multipart *m, const char *const *fields,
		   const char *file_field, const char *file_name, char *out, size_t cap,
		   size_t *ret_len)
{
	const char *const *fp;
	size_t len = 0;
	int r = 0;

	for (fp = fields; r == 0 && fp && fp[0]; fp += 2)
		r = mp_append(out, cap, &len,
			      "--%s\r\nContent-Disposition: form-data; name=\"%s\"\r\n\r\n%s\r\n",
			      m->boundary, fp[0], fp[1]);
	if (r == 0)
		r = mp_append(out, cap, &len,
			      "--%s\r\nContent-Disposition: form-data; name=\"%s\"; "
			      "filename=\"%s\"\r\nContent-Type: application/octet-stream\r\n\r\n",
			      m->boundary, file_field, file_name);
	if (r == 0)
		*ret_len = len;
	return r;
}

int fetch_multipart_new(const char *const *fields, const char *file_field, const char *file_name,
			uint64_t size, fetch_read_fn rd, void *rd_ctx, struct fetch_multipart **ret)
{
	static const char hex[] = "0123456789abcdef";
	uint8_t rnd[MP_BOUNDARY_RANDOM];
	const char *const *fp;
	struct fetch_multipart *m;
	size_t i, len;
	char *p;
	int r;

	if (!mp_name_ok(file_field) || !mp_name_ok(file_name) || (!rd && size) ||
	    size > (uint64_t)INT64_MAX / 2)
		return -EINVAL;
	for (fp = fields; fp && fp[0]; fp += 2)
		if (!mp_name_ok(fp[0]) || !fp[1])
			return -EINVAL;
	m = calloc(1, sizeof(*m));
	if (!m)
		return -ENOMEM;
	if (getrandom(rnd, sizeof(rnd), 0) != (ssize_t)sizeof(rnd)) {
		r = errno ? -errno : -EIO;
		goto fail;
	}
	p = m->boundary + strlen(MP_BOUNDARY_PREFIX);
	memcpy(m->boundary, MP_BOUNDARY_PREFIX, strlen(MP_BOUNDARY_PREFIX));
	for (i = 0; i < sizeof(rnd); i++) {
		*p++ = hex[rnd[i] >> 4];
		*p++ = hex[rnd[i] & 15];
	}
	*p = '\0';
	snprintf(m->content_type, sizeof(m->content_type), "multipart/form-data; boundary=%s",
		 m->boundary);
	m->tail_len = (size_t)snprintf(m->tail, sizeof(m->tail), "\r\n--%s--\r\n", m->boundary);
	r = mp_head(m, fields, file_field, file_name, NULL, 0, &len);
	if (r)
		goto fail;
	m->head = malloc(len + 1);
	if (!m->head) {
		r = -ENOMEM;
		goto fail;
	}
	r = mp_head(m, fields, file_field, file_name, m->head, len + 1, &m->head_len);
	if (r)
		goto fail;
	m->size = size;
	m->total = m->head_len + size + m->tail_len;
	m->rd = rd;
	m->rd_ctx = rd_ctx;
	*ret = m;
	return 0;
fail:
	fetch_multipart_free(m);
	return r;
}

void fetch_multipart_free(struct fetch_multipart *m)
{
	if (!m)
		return;
	free(m->head);
	free(m);
}

void fetch_multipart_set_body(struct fetch_multipart *m, struct fetch_request *req)
{
	req->body = NULL;
	req->body_len = 0;
	req->body_reader = fetch_multipart_read;
	req->body_ctx = m;
	req->body_size = (int64_t)m->total;
	req->content_type = m->content_type;
}

ssize_t fetch_multipart_read(void *ctx, uint8_t *buf, size_t cap)
{
	struct fetch_multipart *m = ctx;
	uint64_t end_head = m->head_len, end_file = end_head + m->size;
	size_t n;
	ssize_t k;

	if (m->pos < end_head) {
		n = end_head - m->pos < cap ? (size_t)(end_head - m->pos) : cap;
		memcpy(buf, m->head + m->pos, n);
	} else if (m->pos < end_file) {
		n = end_file - m->pos < cap ? (size_t)(end_file - m->pos) : cap;
		k = m->rd(m->rd_ctx, buf, n);
		if (k < 0)
			return k;
		if (k == 0)
			return -EIO; /* the file ended before its size (it shrank) */
		if ((size_t)k > n)
			return -EINVAL;
		n = (size_t)k;
	} else if (m->pos < m->total) {
		n = m->total - m->pos < cap ? (size_t)(m->total - m->pos) : cap;
		memcpy(buf, m->tail + (m->pos - end_file), n);
	} else {
		return 0;
	}
	m->pos += n;
	return (ssize_t)n;
}

/* ---- the upload --------------------------------------------------------- */

ssize_t fetch_mem_read(void *body, uint8_t *buf, size_t cap)
{
	struct fetch_mem_body *m = body;
	size_t n = m->len - m->pos;

	if (n > cap)
		n = cap;
	memcpy(buf, m->data + m->pos, n);
	m->pos += n;
	return (ssize_t)n;
}

int fetch_api_upload(struct fetch *f, const char *api_url_base, const char *token,
		     const char *folder, const char *file_name, const void *data, size_t len,
		     const char *const *fields)
{
	struct fetch_mem_body u = {.data = data, .len = len};
	struct fetch_request req = {
		.method = "POST",
		.bearer = token,
		.max_response = API_JSON_MAX,
		.no_retry = 1,
	};
	struct fetch_multipart *m = NULL;
	char *url;
	int r;

	if (!file_name || (!data && len))
		return -EINVAL;
	url = api_url(api_url_base, "/resources/", folder ? folder : "", NULL);
	if (!url)
		return -EINVAL;
	r = fetch_multipart_new(fields, "data", file_name, len, fetch_mem_read, &u, &m);
	if (r)
		goto out;
	req.url = url;
	fetch_multipart_set_body(m, &req);
	r = api_exchange(f, &req, NULL, 0, NULL);
out:
	fetch_multipart_free(m);
	free(url);
	return r;
}

/*
 * One POST of attested enrolment (docs/trust.md 1). A 403 is the API's verdict
 * on the evidence, not on the token: -EPERM with its detail, never the
 * -EACCES that would make the caller log in again and send it twice.
 */
static int api_attest_post(struct fetch *f, const char *api_url_base, const char *path,
			   const char *token, json_t *obj, int no_retry, json_t **ret,
			   char **ret_detail)
{
	struct fetch_request req = {
		.method = "POST",
		.bearer = token,
		.content_type = "application/json",
		.max_response = API_JSON_MAX,
		.no_retry = no_retry,
	};
	struct fetch_response resp = {0};
	json_t *ans = NULL, *detail;
	char *body = NULL, *url, u[512];
	size_t body_len = 0;
	int r;

	url = api_url(api_url_base, path, NULL, NULL);
	if (!url)
		return -EINVAL;
	r = json_body(obj, &body, &body_len);
	if (r)
		goto out;
	req.url = url;
	req.body = body;
	req.body_len = body_len;
	r = fetch_exchange(f, &req, NULL, &resp);
	body_free(body, body_len);
	if (r)
		goto out;
	if (resp.status == 403) {
		json_error_t e;

		fetch_url_for_log(url, u, sizeof(u));
		ans = json_loadb((const char *)resp.body.data, resp.body.len, 0, &e);
		detail = json_object_get(ans, "detail");
		fetch_logf(f, LOG_ERR, "POST %s: HTTP 403: the API refused the evidence: %s", u,
			   json_is_string(detail) ? json_string_value(detail) : "(no detail)");
		if (ret_detail && json_is_string(detail))
			*ret_detail = strdup(json_string_value(detail));
		json_decref(ans);
		r = -EPERM;
		goto out_resp;
	}
	r = fetch_check_status(f, req.method, url, resp.status, 0);
	if (r)
		goto out_resp;
	r = api_parse(f, &req, &resp.body, ret);
out_resp:
	fetch_response_free(&resp);
out:
	free(url);
	return r;
}

int fetch_api_device_challenge(struct fetch *f, const char *api_url_base, const char *token,
			       json_t *evidence, json_t **ret, char **ret_detail)
{
	json_t *ans = NULL;
	int r;

	if (!json_is_object(evidence) || !ret)
		return -EINVAL;
	r = api_attest_post(f, api_url_base, "/devices/challenge", token, evidence, 0, &ans,
			    ret_detail);
	if (r)
		return r;
	*ret = ans;
	return 0;
}

int fetch_api_device_enrol(struct fetch *f, const char *api_url_base, const char *token,
			   json_t *proof, char **ret_device_id, char **ret_detail)
{
	struct fetch_request req = {.method = "POST", .url = "/devices"};
	json_t *ans = NULL, *id;
	char *dev = NULL;
	int r;

	if (!json_is_object(proof) || !ret_device_id)
		return -EINVAL;
	/* The challenge is spent by any attempt: never sent twice. */
	r = api_attest_post(f, api_url_base, "/devices", token, proof, 1, &ans, ret_detail);
	if (r)
		return r;
	id = json_object_get(ans, "device_id");
	if (json_is_string(id) && json_string_length(id)) {
		dev = strdup(json_string_value(id));
	} else if (json_is_integer(id)) {
		if (asprintf(&dev, "%" JSON_INTEGER_FORMAT, json_integer_value(id)) < 0)
			dev = NULL;
	} else {
		r = api_bad_answer(f, &req, "the answer has no device_id");
		goto out;
	}
	if (dev)
		*ret_device_id = dev;
	else
		r = -ENOMEM;
out:
	json_decref(ans);
	return r;
}

int fetch_api_device_key(struct fetch *f, const char *api_url_base, const char *token,
			 const char *folder, const char *name, const char *device_id, json_t **ret)
{
	char hdr[512];
	const char *headers[] = {hdr, NULL};
	char *url;
	int r;

	if (!name || !device_id || !*device_id || strpbrk(device_id, "\r\n") ||
	    snprintf(hdr, sizeof(hdr), "X-Device-Id: %s", device_id) >= (int)sizeof(hdr))
		return -EINVAL;
	url = api_url(api_url_base, "/resources/key/", folder ? folder : "", name);
	if (!url)
		return -EINVAL;
	r = api_get_json(f, url, token, headers, API_JSON_MAX, 1, ret);
	free(url);
	return r;
}

int fetch_api_register_key(struct fetch *f, const char *api_url_base, const char *token,
			   const char *folder, const char *name, const char *key_b64, uint64_t size,
			   const char *sha256_hex, const char *file_id_hex, uint64_t big_size)
{
	struct fetch_request req = {
		.method = "POST",
		.bearer = token,
		.content_type = "application/json",
		.max_response = API_JSON_MAX,
		.no_retry = 1,
	};
	char *body = NULL, *url;
	size_t body_len = 0;
	json_t *obj;
	int r;

	if (!name || !key_b64 || !sha256_hex || size > (uint64_t)LLONG_MAX ||
	    big_size > (uint64_t)LLONG_MAX)
		return -EINVAL;
	url = api_url(api_url_base, "/resources/key/", folder ? folder : "", name);
	if (!url)
		return -EINVAL;
	obj = json_pack("{s:s, s:I, s:s}", "key", key_b64, "size", (json_int_t)size, "sha256",
			sha256_hex);
	if (obj && file_id_hex && json_object_set_new(obj, "file_id", json_string(file_id_hex))) {
		wipe_member(obj, "key");
		json_decref(obj);
		obj = NULL;
	}
	if (obj && big_size &&
	    json_object_set_new(obj, "big_size", json_integer((json_int_t)big_size))) {
		wipe_member(obj, "key");
		json_decref(obj);
		obj = NULL;
	}
	if (!obj) {
		r = -EINVAL;
		goto out;
	}
	r = json_body(obj, &body, &body_len);
	wipe_member(obj, "key");
	json_decref(obj);
	if (r)
		goto out;
	req.url = url;
	req.body = body;
	req.body_len = body_len;
	r = api_exchange(f, &req, NULL, 0, NULL);
	body_free(body, body_len);
out:
	free(url);
	return r;
}

/* ---- format-1 chunk hashes (docs/trust.md section 4) ----------------------- */

/*
 * The list can be long (a 1 TiB big part has a million entries), so its
 * answer is parsed as it streams, by a tokenizer and a small grammar for
 * exactly {"chunk_size": n, "sha256": ["<hex>", ...]}, and only the
 * digests are kept: 32 bytes an entry, within FETCH_CHUNK_HASHES_COUNT_MAX.
 * Members of other names are skipped whatever their value.
 */
#define HASHES_TOKEN_MAX 80 /* a key, a number, a 64-hex entry */
/* Bytes of the answer: the entries with generous whitespace. */
#define HASHES_BODY_MAX (FETCH_CHUNK_HASHES_COUNT_MAX * 128 + 4096)
/* Bytes of an error page read before giving up. */
#define HASHES_DISCARD_MAX (64u * 1024)
#define HASHES_DEPTH_MAX 64

enum hashes_tok {
	TOK_BEGIN_OBJ,
	TOK_END_OBJ,
	TOK_BEGIN_ARR,
	TOK_END_ARR,
	TOK_COLON,
	TOK_COMMA,
	TOK_STRING,
	TOK_NUMBER,
	TOK_LITERAL
};

enum hashes_lex {
	LEX_WS,	     /* between tokens */
	LEX_STRING,  /* inside "..." */
	LEX_ESCAPE,  /* after a backslash */
	LEX_UHEX,    /* in the 4 digits of \uXXXX */
	LEX_NUMBER,  /* in a number */
	LEX_LITERAL, /* in true, false or null */
};

enum hashes_state {
	HS_START,     /* before '{' */
	HS_FIRST_KEY, /* after '{': a key or '}' */
	HS_KEY,	      /* after ',': a key */
	HS_COLON,     /* after a key */
	HS_VALUE,     /* after ':' */
	HS_SKIP,      /* inside a skipped array or object */
	HS_AFTER,     /* after a member: ',' or '}' */
	HS_ARR_FIRST, /* after "sha256": [ */
	HS_ARR_ITEM,  /* after a ',' in the array */
	HS_ARR_AFTER, /* after an entry: ',' or ']' */
	HS_DONE,      /* after the final '}' */
};

enum hashes_key {
	KEY_OTHER,
	KEY_CHUNK_SIZE,
	KEY_SHA256
};

struct hashes_parse {
	/* tokenizer */
	enum hashes_lex lex;
	char tok[HASHES_TOKEN_MAX + 1];
	size_t tok_len;
	int tok_long; /* the token did not fit in tok */
	int uhex;
	/* grammar */
	enum hashes_state state;
	enum hashes_key key;
	unsigned depth;
	uint64_t closers; /* bit per depth in HS_SKIP: 1 '}', 0 ']' */
	int have_chunk_size, have_sha256;
	uint32_t chunk_size;
	uint8_t *sha;
	size_t count, alloc;
	/* the answer */
	size_t bytes;
	const char *why; /* static; NULL while the answer is well formed */
};

static void hashes_reset(struct hashes_parse *p)
{
	uint8_t *sha = p->sha;
	size_t alloc = p->alloc;

	memset(p, 0, sizeof(*p));
	p->sha = sha;
	p->alloc = alloc;
}

static int hex_value(char ch)
{
	if (ch >= '0' && ch <= '9')
		return ch - '0';
	if (ch >= 'a' && ch <= 'f')
		return ch - 'a' + 10;
	if (ch >= 'A' && ch <= 'F')
		return ch - 'A' + 10;
	return -1;
}

static int hashes_fail(struct hashes_parse *p, const char *why)
{
	if (!p->why)
		p->why = why;
	return -EBADMSG;
}

static int hashes_add(struct hashes_parse *p)
{
	uint8_t *d;
	size_t i;

	if (p->tok_long || p->tok_len != 64)
		return hashes_fail(p, "an entry of \"sha256\" is not 64 hex characters");
	if (p->count == FETCH_CHUNK_HASHES_COUNT_MAX)
		return hashes_fail(p, "\"sha256\" has more entries than any big part needs");
	if (p->count == p->alloc) {
		size_t n = p->alloc ? p->alloc * 2 : 256;

		if (n > FETCH_CHUNK_HASHES_COUNT_MAX)
			n = FETCH_CHUNK_HASHES_COUNT_MAX;
		d = realloc(p->sha, n * 32);
		if (!d)
			return -ENOMEM;
		p->sha = d;
		p->alloc = n;
	}
	d = p->sha + p->count * 32;
	for (i = 0; i < 32; i++) {
		int hi = hex_value(p->tok[2 * i]), lo = hex_value(p->tok[2 * i + 1]);

		if (hi < 0 || lo < 0)
			return hashes_fail(p, "an entry of \"sha256\" is not 64 hex characters");
		d[i] = (uint8_t)(hi << 4 | lo);
	}
	p->count++;
	return 0;
}

static int hashes_chunk_size(struct hashes_parse *p)
{
	uint64_t v = 0;
	size_t i;

	if (p->tok_long || !p->tok_len || (p->tok[0] == '0' && p->tok_len > 1))
		return hashes_fail(p, "\"chunk_size\" is not a whole number");
	for (i = 0; i < p->tok_len; i++) {
		if (p->tok[i] < '0' || p->tok[i] > '9')
			return hashes_fail(p, "\"chunk_size\" is not a whole number");
		v = v * 10 + (uint64_t)(p->tok[i] - '0');
		if (v > FETCH_CHUNK_HASHES_MAX)
			break;
	}
	if (v < FETCH_CHUNK_HASHES_MIN || v > FETCH_CHUNK_HASHES_MAX || (v & (v - 1)))
		return hashes_fail(p, "\"chunk_size\" is not a power of two from 64 KiB to 16 MiB");
	p->chunk_size = (uint32_t)v;
	p->have_chunk_size = 1;
	return 0;
}

/* Opens a skipped array or object, or closes one. */
static int hashes_skip(struct hashes_parse *p, enum hashes_tok t)
{
	if (t == TOK_BEGIN_OBJ || t == TOK_BEGIN_ARR) {
		if (p->depth == HASHES_DEPTH_MAX)
			return hashes_fail(p, "a member nests deeper than any answer needs");
		if (t == TOK_BEGIN_OBJ)
			p->closers |= (uint64_t)1 << p->depth;
		else
			p->closers &= ~((uint64_t)1 << p->depth);
		p->depth++;
		p->state = HS_SKIP;
		return 0;
	}
	if (t == TOK_END_OBJ || t == TOK_END_ARR) {
		int obj = (p->closers >> (p->depth - 1)) & 1;

		if (obj != (t == TOK_END_OBJ))
			return hashes_fail(p, "the answer is not valid JSON (mismatched brackets)");
		if (--p->depth == 0)
			p->state = HS_AFTER;
	}
	return 0;
}

/* The grammar: one token at a time. */
static int hashes_token(struct hashes_parse *p, enum hashes_tok t)
{
	switch (p->state) {
	case HS_START:
		if (t != TOK_BEGIN_OBJ)
			return hashes_fail(p, "the answer is not a JSON object");
		p->state = HS_FIRST_KEY;
		return 0;
	case HS_FIRST_KEY:
		if (t == TOK_END_OBJ) {
			p->state = HS_DONE;
			return 0;
		}
		/* fall through */
	case HS_KEY:
		if (t != TOK_STRING)
			return hashes_fail(p, "the answer is not valid JSON (a key was expected)");
		p->key = KEY_OTHER;
		if (!p->tok_long && p->tok_len == 10 && !memcmp(p->tok, "chunk_size", 10))
			p->key = KEY_CHUNK_SIZE;
		else if (!p->tok_long && p->tok_len == 6 && !memcmp(p->tok, "sha256", 6))
			p->key = KEY_SHA256;
		if ((p->key == KEY_CHUNK_SIZE && p->have_chunk_size) ||
		    (p->key == KEY_SHA256 && p->have_sha256))
			return hashes_fail(p, "a member appears twice");
		p->state = HS_COLON;
		return 0;
	case HS_COLON:
		if (t != TOK_COLON)
			return hashes_fail(p, "the answer is not valid JSON (':' was expected)");
		p->state = HS_VALUE;
		return 0;
	case HS_VALUE:
		if (p->key == KEY_CHUNK_SIZE) {
			if (t != TOK_NUMBER)
				return hashes_fail(p, "\"chunk_size\" is not a whole number");
			p->state = HS_AFTER;
			return hashes_chunk_size(p);
		}
		if (p->key == KEY_SHA256) {
			if (t != TOK_BEGIN_ARR)
				return hashes_fail(p, "\"sha256\" is not an array");
			p->have_sha256 = 1;
			p->state = HS_ARR_FIRST;
			return 0;
		}
		if (t == TOK_STRING || t == TOK_NUMBER || t == TOK_LITERAL) {
			p->state = HS_AFTER;
			return 0;
		}
		if (t == TOK_BEGIN_OBJ || t == TOK_BEGIN_ARR)
			return hashes_skip(p, t);
		return hashes_fail(p, "the answer is not valid JSON (a value was expected)");
	case HS_SKIP:
		return hashes_skip(p, t);
	case HS_AFTER:
		if (t == TOK_COMMA)
			p->state = HS_KEY;
		else if (t == TOK_END_OBJ)
			p->state = HS_DONE;
		else
			return hashes_fail(
				p, "the answer is not valid JSON (',' or '}' was expected)");
		return 0;
	case HS_ARR_FIRST:
		if (t == TOK_END_ARR) {
			p->state = HS_AFTER;
			return 0;
		}
		/* fall through */
	case HS_ARR_ITEM:
		if (t != TOK_STRING)
			return hashes_fail(p, "an entry of \"sha256\" is not a string");
		p->state = HS_ARR_AFTER;
		return hashes_add(p);
	case HS_ARR_AFTER:
		if (t == TOK_COMMA)
			p->state = HS_ARR_ITEM;
		else if (t == TOK_END_ARR)
			p->state = HS_AFTER;
		else
			return hashes_fail(
				p, "the answer is not valid JSON (',' or ']' was expected)");
		return 0;
	case HS_DONE:
		break;
	}
	return hashes_fail(p, "the answer goes on after its JSON object");
}

static void tok_push(struct hashes_parse *p, char ch)
{
	if (p->tok_len < HASHES_TOKEN_MAX)
		p->tok[p->tok_len++] = ch;
	else
		p->tok_long = 1;
}

/* Ends a number or literal that the byte after it has ended. */
static int hashes_end_word(struct hashes_parse *p)
{
	enum hashes_tok t = p->lex == LEX_NUMBER ? TOK_NUMBER : TOK_LITERAL;

	p->lex = LEX_WS;
	p->tok[p->tok_len] = '\0';
	if (t == TOK_LITERAL &&
	    (p->tok_long ||
	     (strcmp(p->tok, "true") && strcmp(p->tok, "false") && strcmp(p->tok, "null"))))
		return hashes_fail(p, "the answer is not valid JSON (an unknown word)");
	return hashes_token(p, t);
}

/* The tokenizer: one byte at a time. */
static int hashes_byte(struct hashes_parse *p, unsigned char ch)
{
	int r;

	switch (p->lex) {
	case LEX_STRING:
		if (ch == '"') {
			p->lex = LEX_WS;
			return hashes_token(p, TOK_STRING);
		}
		if (ch < 0x20)
			return hashes_fail(p, "the answer is not valid JSON (a control character)");
		if (ch == '\\')
			p->lex = LEX_ESCAPE;
		tok_push(p, (char)ch);
		return 0;
	case LEX_ESCAPE:
		if (!strchr("\"\\/bfnrtu", ch) || !ch)
			return hashes_fail(p, "the answer is not valid JSON (a bad escape)");
		p->lex = ch == 'u' ? LEX_UHEX : LEX_STRING;
		p->uhex = 0;
		tok_push(p, (char)ch);
		return 0;
	case LEX_UHEX:
		if (hex_value((char)ch) < 0)
			return hashes_fail(p, "the answer is not valid JSON (a bad escape)");
		if (++p->uhex == 4)
			p->lex = LEX_STRING;
		tok_push(p, (char)ch);
		return 0;
	case LEX_NUMBER:
		if ((ch >= '0' && ch <= '9') || ch == '-' || ch == '+' || ch == '.' || ch == 'e' ||
		    ch == 'E') {
			tok_push(p, (char)ch);
			return 0;
		}
		r = hashes_end_word(p);
		if (r)
			return r;
		break;
	case LEX_LITERAL:
		if (ch >= 'a' && ch <= 'z') {
			tok_push(p, (char)ch);
			return 0;
		}
		r = hashes_end_word(p);
		if (r)
			return r;
		break;
	case LEX_WS:
		break;
	}
	p->tok_len = 0;
	p->tok_long = 0;
	switch (ch) {
	case ' ':
	case '\t':
	case '\n':
	case '\r':
		return 0;
	case '{':
		return hashes_token(p, TOK_BEGIN_OBJ);
	case '}':
		return hashes_token(p, TOK_END_OBJ);
	case '[':
		return hashes_token(p, TOK_BEGIN_ARR);
	case ']':
		return hashes_token(p, TOK_END_ARR);
	case ':':
		return hashes_token(p, TOK_COLON);
	case ',':
		return hashes_token(p, TOK_COMMA);
	case '"':
		p->lex = LEX_STRING;
		return 0;
	}
	if ((ch >= '0' && ch <= '9') || ch == '-') {
		p->lex = LEX_NUMBER;
		tok_push(p, (char)ch);
		return 0;
	}
	if (ch >= 'a' && ch <= 'z') {
		p->lex = LEX_LITERAL;
		tok_push(p, (char)ch);
		return 0;
	}
	return hashes_fail(p, "the answer is not valid JSON (an unexpected character)");
}

/* At the end of the answer: is the list whole and within the rules? */
static int hashes_finish(struct hashes_parse *p)
{
	if (p->why)
		return -EBADMSG;
	if (p->lex == LEX_NUMBER || p->lex == LEX_LITERAL) {
		int r = hashes_end_word(p);

		if (r)
			return r;
	}
	if (p->state != HS_DONE)
		return hashes_fail(p, p->state == HS_START
					      ? "the answer is empty"
					      : "the answer ends inside its JSON object");
	if (!p->have_chunk_size)
		return hashes_fail(p, "the answer has no \"chunk_size\"");
	if (!p->have_sha256)
		return hashes_fail(p, "the answer has no \"sha256\"");
	if (!fetch_chunk_hashes_valid(p->chunk_size, p->count))
		return hashes_fail(p, "\"sha256\" has more entries than a big part of 1 TiB needs");
	return 0;
}

int fetch_chunk_hashes_parse(const uint8_t *body, size_t len, uint32_t *ret_chunk_size,
			     uint8_t **ret_sha256, size_t *ret_count, const char **ret_why)
{
	struct hashes_parse p = {0};
	int r = len > HASHES_BODY_MAX ? hashes_fail(&p, "the answer is larger than any list needs")
				      : 0;

	for (size_t i = 0; r == 0 && i < len; i++)
		r = hashes_byte(&p, body[i]);
	if (r == 0)
		r = hashes_finish(&p);
	if (r == 0 && !p.sha && !(p.sha = malloc(32)))
		r = -ENOMEM;
	if (r < 0) {
		*ret_why = p.why ? p.why : strerror(-r);
		free(p.sha);
		return r;
	}
	*ret_chunk_size = p.chunk_size;
	*ret_count = p.count;
	*ret_sha256 = p.sha;
	return 0;
}

static void hashes_begin(struct fetch_call *c)
{
	hashes_reset(c->ctx);
}

static int hashes_body(struct fetch_call *c, const uint8_t *data, size_t len)
{
	struct hashes_parse *p = c->ctx;
	size_t i;
	int r;

	/* begin() starts the parse again, so a cut answer may be retried. */
	p->bytes += len;
	if (c->status < 200 || c->status > 299)
		/* An error page: only its status matters. */
		return p->bytes > HASHES_DISCARD_MAX ? FETCH_STOP : 0;
	if (p->bytes > HASHES_BODY_MAX) {
		hashes_fail(p, "the answer is larger than any list needs");
		return FETCH_STOP;
	}
	for (i = 0; i < len; i++) {
		r = hashes_byte(p, data[i]);
		if (r == -ENOMEM) {
			c->why = "out of memory for the chunk-hash list";
			return r;
		}
		/* Stop reading; the caller logs why, in full. */
		if (r)
			return FETCH_STOP;
	}
	return 0;
}

static const struct fetch_body_ops hashes_ops = {
	.begin = hashes_begin,
	.body = hashes_body,
};

int fetch_chunk_hashes_valid(uint32_t chunk_size, size_t count)
{
	if (chunk_size < FETCH_CHUNK_HASHES_MIN || chunk_size > FETCH_CHUNK_HASHES_MAX ||
	    (chunk_size & (chunk_size - 1)))
		return 0;
	return count <= FETCH_CHUNK_HASHES_COUNT_MAX &&
	       count <= FETCH_CHUNK_HASHES_BIG_MAX / chunk_size;
}

int fetch_api_chunk_hashes(struct fetch *f, const char *api_url_base, const char *token,
			   const char *folder, const char *name, uint32_t *ret_chunk_size,
			   uint8_t **ret_sha256, size_t *ret_count)
{
	struct fetch_request req = {.method = "GET", .bearer = token};
	struct hashes_parse p = {0};
	struct fetch_call c = {.f = f, .req = &req, .ops = &hashes_ops, .ctx = &p};
	char u[512];
	int r;

	if (!name || !*name)
		return -EINVAL;
	req.url = api_url(api_url_base, "/resources/hashes/", folder ? folder : "", name);
	if (!req.url)
		return -EINVAL;
	r = fetch_run(&c);
	if (r)
		goto out;
	r = fetch_check_status(f, req.method, req.url, c.status, 1);
	if (r)
		goto out;
	r = hashes_finish(&p);
	if (r) {
		fetch_url_for_log(req.url, u, sizeof(u));
		fetch_logf(f, LOG_ERR,
			   "GET %s: the chunk-hash list is malformed: %s (after %zu entries); "
			   "the API must answer {\"chunk_size\": n, \"sha256\": [\"<hex>\", ...]}",
			   u, p.why, p.count);
		goto out;
	}
	/* Never NULL on success, even for an empty list. */
	if (!p.sha && !(p.sha = malloc(32))) {
		r = -ENOMEM;
		goto out;
	}
	*ret_chunk_size = p.chunk_size;
	*ret_count = p.count;
	*ret_sha256 = p.sha;
	p.sha = NULL;
out:
	free(p.sha);
	free((char *)req.url);
	return r;
}

int fetch_api_register_chunk_hashes(struct fetch *f, const char *api_url_base, const char *token,
				    const char *folder, const char *name, uint32_t chunk_size,
				    const uint8_t *sha256, size_t count)
{
	static const char hex[] = "0123456789abcdef";
	static const char head[] = "{\"chunk_size\":%u,\"sha256\":[";
	struct fetch_request req = {
		.method = "POST",
		.bearer = token,
		.content_type = "application/json",
		.max_response = API_JSON_MAX,
	};
	char *body, *url, *w;
	size_t cap, i, j;
	int r;

	if (!name || !*name || (!sha256 && count) || !fetch_chunk_hashes_valid(chunk_size, count))
		return -EINVAL;
	url = api_url(api_url_base, "/resources/hashes/", folder ? folder : "", name);
	if (!url)
		return -EINVAL;
	/* The head, 67 bytes an entry ("<64 hex>",) and "]}". */
	cap = sizeof(head) + 16 + count * 67 + 3;
	body = malloc(cap);
	if (!body) {
		r = -ENOMEM;
		goto out;
	}
	w = body + snprintf(body, cap, head, chunk_size);
	for (i = 0; i < count; i++) {
		if (i)
			*w++ = ',';
		*w++ = '"';
		for (j = 0; j < 32; j++) {
			*w++ = hex[sha256[i * 32 + j] >> 4];
			*w++ = hex[sha256[i * 32 + j] & 15];
		}
		*w++ = '"';
	}
	*w++ = ']';
	*w++ = '}';
	req.url = url;
	req.body = body;
	req.body_len = (size_t)(w - body);
	/* Idempotent (the list replaces the one before): retries are safe. */
	r = api_exchange(f, &req, NULL, 0, NULL);
	free(body);
out:
	free(url);
	return r;
}
