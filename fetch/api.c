/*
 * api.c - the Resource API client (resource-api.md): each call builds its
 * URL (path segments percent-encoded) and its JSON body with jansson, runs
 * one exchange with a cap on the answer, maps the status and parses what
 * comes back. Passwords, tokens and keys travel only in bodies and the
 * Authorization header, are wiped after use (jansson's copies included)
 * and never logged. No state and no locks of its own.
 */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>

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
		fetch_wipe((char *)json_string_value(v), json_string_length(v));
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
		fetch_wipe(p, n);
		free(p);
		return -EINVAL;
	}
	*ret = p;
	*ret_len = n;
	return 0;
}

static void body_free(char *body, size_t len)
{
	fetch_wipe(body, len);
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
	fetch_wipe(buf, n);
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

/* The multipart body: rebuilt on each attempt's handle, freed after it. */
struct upload {
	const uint8_t *data;
	size_t len;
	size_t pos;
	const char *file_name;
	const char *const *fields;
	curl_mime *mime;
};

static size_t upload_read(char *buf, size_t size, size_t nitems, void *arg)
{
	struct upload *u = arg;
	size_t n = u->len - u->pos;

	if (n > size * nitems)
		n = size * nitems;
	memcpy(buf, u->data + u->pos, n);
	u->pos += n;
	return n;
}

static int upload_seek(void *arg, curl_off_t off, int origin)
{
	struct upload *u = arg;

	if (origin != SEEK_SET || off < 0 || (uint64_t)off > u->len)
		return CURL_SEEKFUNC_FAIL;
	u->pos = (size_t)off;
	return CURL_SEEKFUNC_OK;
}

static int upload_setup(void *ctx, CURL *h)
{
	struct upload *u = ctx;
	const char *const *fp;
	curl_mimepart *part;

	u->pos = 0;
	u->mime = curl_mime_init(h);
	if (!u->mime)
		return -ENOMEM;
	part = curl_mime_addpart(u->mime);
	if (!part || curl_mime_name(part, "data") || curl_mime_filename(part, u->file_name) ||
	    curl_mime_type(part, "application/octet-stream") ||
	    curl_mime_data_cb(part, (curl_off_t)u->len, upload_read, upload_seek, NULL, u) ||
	    curl_easy_setopt(h, CURLOPT_MIMEPOST, u->mime))
		return -ENOMEM;
	for (fp = u->fields; fp && fp[0] && fp[1]; fp += 2) {
		part = curl_mime_addpart(u->mime);
		if (!part || curl_mime_name(part, fp[0]) ||
		    curl_mime_data(part, fp[1], CURL_ZERO_TERMINATED))
			return -ENOMEM;
	}
	return 0;
}

static void upload_undo(void *ctx)
{
	struct upload *u = ctx;

	curl_mime_free(u->mime);
	u->mime = NULL;
}

int fetch_api_upload(struct fetch *f, const char *api_url_base, const char *token,
		     const char *folder, const char *file_name, const void *data, size_t len,
		     const char *const *fields)
{
	struct upload u = {.data = data, .len = len, .file_name = file_name, .fields = fields};
	struct fetch_hooks hooks = {.setup = upload_setup, .undo = upload_undo, .ctx = &u};
	struct fetch_request req = {
		.method = "POST",
		.bearer = token,
		.max_response = API_JSON_MAX,
		.no_retry = 1,
	};
	const char *const *fp;
	char *url;
	int r;

	if (!file_name || (!data && len))
		return -EINVAL;
	for (fp = fields; fp && *fp; fp += 2)
		if (!fp[1])
			return -EINVAL;
	url = api_url(api_url_base, "/resources/", folder ? folder : "", NULL);
	if (!url)
		return -EINVAL;
	req.url = url;
	r = api_exchange(f, &req, &hooks, 0, NULL);
	free(url);
	return r;
}

/*
 * One POST of attested enrolment (trust.md 1). A 403 is the API's verdict
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
