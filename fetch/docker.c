/*
 * docker.c - the two Docker Engine API calls the unlock needs, over the
 * daemon's Unix socket: loading an image archive streamed from a reader
 * (POST /images/load, chunked), whose answer is read line by line because
 * a failed load still answers 200 with an "error" line; and asking whether
 * an image is present. No state and no locks of its own.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>

#include "fetch/internal.h"

#define DOCKER_URL "http://localhost"
/* Loading gigabytes of layers takes long; a stall still fails. */
#define DOCKER_LOAD_TIMEOUT_MS (3600u * 1000)
#define DOCKER_LOAD_STALL_S 300u
#define DOCKER_LINE_MAX FETCH_MIB
#define DOCKER_LOADED_MAX (64u * 1024)
#define DOCKER_MESSAGE_MAX 4096u

struct load {
	char *line;
	size_t len;
	int failed;    /* an "error" line came */
	char *message; /* Docker's first error words */
	char *loaded;  /* "Loaded image..." lines */
	size_t loaded_len;
};

static char *dup_trimmed(const char *s, size_t max)
{
	size_t n = strlen(s);
	char *p;

	while (n && (s[n - 1] == '\n' || s[n - 1] == '\r' || s[n - 1] == ' '))
		n--;
	if (n > max)
		n = max;
	p = malloc(n + 1);
	if (!p)
		return NULL;
	memcpy(p, s, n);
	p[n] = '\0';
	return p;
}

static void set_message(struct load *ld, const char *s)
{
	if (!ld->message && s && *s)
		ld->message = dup_trimmed(s, DOCKER_MESSAGE_MAX);
}

static int add_loaded(struct load *ld, const char *s)
{
	char *t = dup_trimmed(s, DOCKER_LOADED_MAX);
	size_t n;
	char *p;

	if (!t)
		return -ENOMEM;
	n = strlen(t);
	if (ld->loaded_len + n + 2 > DOCKER_LOADED_MAX) {
		free(t);
		return 0; /* enough names kept; the rest is only reporting */
	}
	p = realloc(ld->loaded, ld->loaded_len + n + 2);
	if (!p) {
		free(t);
		return -ENOMEM;
	}
	ld->loaded = p;
	if (ld->loaded_len)
		ld->loaded[ld->loaded_len++] = '\n';
	memcpy(ld->loaded + ld->loaded_len, t, n + 1);
	ld->loaded_len += n;
	free(t);
	return 0;
}

/* One line of the answer: a JSON message, or text from a failing daemon. */
static int load_line(struct load *ld, const char *s, size_t len)
{
	json_t *j, *v, *detail;
	int r = 0;

	while (len && (*s == ' ' || *s == '\r' || *s == '\t')) {
		s++;
		len--;
	}
	if (!len)
		return 0;
	j = json_loadb(s, len, 0, NULL);
	if (!json_is_object(j)) {
		json_decref(j);
		if (!ld->message) {
			char *t = strndup(s, len < DOCKER_MESSAGE_MAX ? len : DOCKER_MESSAGE_MAX);

			set_message(ld, t);
			free(t);
		}
		return 0;
	}
	detail = json_object_get(json_object_get(j, "errorDetail"), "message");
	v = json_object_get(j, "error");
	if (json_is_string(detail) || json_is_string(v) || json_object_get(j, "errorDetail")) {
		ld->failed = 1;
		set_message(ld, json_is_string(detail) ? json_string_value(detail)
						       : json_string_value(v));
		set_message(ld, "the load failed without a message");
	}
	v = json_object_get(j, "message");
	if (json_is_string(v))
		set_message(ld, json_string_value(v));
	v = json_object_get(j, "stream");
	if (json_is_string(v) && !strncmp(json_string_value(v), "Loaded image", 12))
		r = add_loaded(ld, json_string_value(v));
	json_decref(j);
	return r;
}

static int load_sink(void *ctx, const uint8_t *data, size_t len)
{
	struct load *ld = ctx;
	const uint8_t *nl;
	size_t n;
	int r;

	while (len) {
		nl = memchr(data, '\n', len);
		n = nl ? (size_t)(nl - data) : len;
		if (n > DOCKER_LINE_MAX - ld->len)
			return -EFBIG;
		memcpy(ld->line + ld->len, data, n);
		ld->len += n;
		data += n;
		len -= n;
		if (nl) {
			r = load_line(ld, ld->line, ld->len);
			ld->len = 0;
			if (r)
				return r;
			data++;
			len--;
		}
	}
	return 0;
}

int fetch_docker_load(struct fetch *f, const char *socket_path, fetch_read_fn rd, void *ctx,
		      char **ret_loaded, char **ret_message)
{
	struct load ld = {0};
	struct fetch_request req = {
		.method = "POST",
		/* Progress lines keep the answer moving while Docker
		 * registers large layers. */
		.url = DOCKER_URL "/images/load?quiet=0",
		.unix_socket = socket_path,
		.body_reader = rd,
		.body_ctx = ctx,
		.body_size = -1,
		.content_type = "application/x-tar",
		.sink = load_sink,
		.sink_ctx = &ld,
		.no_retry = 1,
		.timeout_ms = DOCKER_LOAD_TIMEOUT_MS,
	};
	struct fetch_hooks hooks = {.low_speed_s = DOCKER_LOAD_STALL_S};
	struct fetch_response resp = {0};
	int r;

	if (ret_message)
		*ret_message = NULL;
	if (!socket_path || !rd)
		return -EINVAL;
	ld.line = malloc(DOCKER_LINE_MAX);
	if (!ld.line)
		return -ENOMEM;
	r = fetch_exchange(f, &req, &hooks, &resp);
	if (r)
		goto out;
	if (ld.len)
		r = load_line(&ld, ld.line, ld.len);
	if (r)
		goto out;
	if (resp.status < 200 || resp.status >= 300 || ld.failed) {
		/* Whatever Docker's status, the load failed: -EIO, or
		 * -EACCES when the socket refused us. */
		r = fetch_status_errno(resp.status);
		if (r != -EACCES)
			r = -EIO;
		fetch_logf(f, LOG_ERR, "docker load on %s: HTTP %ld: %s", socket_path, resp.status,
			   ld.message ? ld.message : "no message");
		if (ret_message) {
			*ret_message = ld.message;
			ld.message = NULL;
		}
		goto out;
	}
	if (ret_loaded) {
		if (!ld.loaded)
			ld.loaded = strdup("");
		if (!ld.loaded) {
			r = -ENOMEM;
			goto out;
		}
		*ret_loaded = ld.loaded;
		ld.loaded = NULL;
	}
out:
	fetch_response_free(&resp);
	free(ld.line);
	free(ld.message);
	free(ld.loaded);
	return r;
}

static int discard_sink(void *ctx, const uint8_t *data, size_t len)
{
	return 0;
}

int fetch_docker_image_exists(struct fetch *f, const char *socket_path, const char *ref)
{
	static const char hex[] = "0123456789ABCDEF";
	struct fetch_request req = {
		.method = "GET",
		.unix_socket = socket_path,
		.sink = discard_sink,
	};
	struct fetch_response resp = {0};
	char url[1024] = DOCKER_URL "/images/";
	size_t pos = strlen(url);
	const unsigned char *p;
	int r;

	if (!socket_path || !ref || !*ref)
		return -EINVAL;
	/* A reference keeps its '/', ':' and '@'; anything else odd is
	 * escaped so that it stays one path. */
	for (p = (const unsigned char *)ref; *p; p++) {
		if (pos + 4 + sizeof("/json") > sizeof(url))
			return -EINVAL;
		if ((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') ||
		    (*p >= '0' && *p <= '9') || strchr("-._~/:@", *p)) {
			url[pos++] = (char)*p;
		} else {
			url[pos++] = '%';
			url[pos++] = hex[*p >> 4];
			url[pos++] = hex[*p & 15];
		}
	}
	memcpy(url + pos, "/json", sizeof("/json"));
	req.url = url;
	r = fetch_request(f, &req, &resp);
	if (r)
		return r;
	r = fetch_check_status(f, "GET", url, resp.status, 1);
	fetch_response_free(&resp);
	return r;
}
