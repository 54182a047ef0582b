/*
 * test_rest.c - the side endpoint's pure rules (docs/trust.md 2): which Host
 * and Origin headers are accepted, content types, and the peer-credential
 * group check of a unix: socket; and that azaionctl's F3 body
 * (fetch_multipart) comes through libmicrohttpd's post processor, the
 * parser rest.c reads uploads with, with the fields rest.c looks for.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <microhttpd.h>

#include "fetch/fetch.h"

#include "fs/rest.h"
#include "tests/unit/check.h"

static void test_hosts(void)
{
	char *names[] = {"loader", "Jetson-7.local", NULL};
	static const char *const good[] = {
		"127.0.0.1",  "127.0.0.1:8080", "127.9.8.7:1",
		"localhost",  "LocalHost:8080", "localhost.",
		"[::1]",      "[::1]:8080",	"[::ffff:127.0.0.1]:80",
		"loader",     "LOADER:8080",	"jetson-7.local:443",
		"127.1:8080", "0x7f000001",
	};
	static const char *const bad[] = {
		"",
		"attacker.example",
		"attacker.example:8080",
		"127.0.0.1.attacker.example",
		"localhost.attacker.example",
		"0.0.0.0",
		"192.168.1.5:8080",
		"[::]:8080",
		"[::2]:8080",
		"[::1",
		"[::1]x",
		"::1",
		"localhost:",
		"localhost:80a",
		"localhost:123456",
		"loader.evil",
		"localhost6",
		".",
		"[127.0.0.1]",
		"2130706433.attacker",
		"128.0.0.1",
		"127.0.0.1 x",
		"loader:8080:1",
	};
	size_t nbad = 0;

	for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
		if (!rest_host_allowed(good[i], names)) {
			printf("# refused: '%s'\n", good[i]);
			nbad++;
		}
	CHECK(nbad == 0, "loopback addresses, localhost and rest_hosts names are accepted");
	nbad = 0;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		if (rest_host_allowed(bad[i], names)) {
			printf("# accepted: '%s'\n", bad[i]);
			nbad++;
		}
	CHECK(nbad == 0, "every other Host is refused (%zu tried)", sizeof(bad) / sizeof(bad[0]));
	CHECK(!rest_host_allowed(NULL, names), "no Host header is refused");
	CHECK(rest_host_allowed("localhost", NULL) && !rest_host_allowed("loader", NULL),
	      "without rest_hosts only loopback and localhost");
}

static void test_origins(void)
{
	char *names[] = {"loader", NULL};

	CHECK(rest_origin_allowed("http://localhost:3000", names) &&
		      rest_origin_allowed("https://[::1]", names) &&
		      rest_origin_allowed("http://loader:8080", names),
	      "an Origin on loopback or a rest_hosts name is accepted");
	CHECK(!rest_origin_allowed("http://attacker.example", names) &&
		      !rest_origin_allowed("null", names) &&
		      !rest_origin_allowed("http://localhost:3000/x", names) &&
		      !rest_origin_allowed("file://", names) && !rest_origin_allowed(NULL, names),
	      "a foreign, null, malformed or missing Origin is refused");
}

static void test_media_types(void)
{
	CHECK(rest_media_type_is("application/json", "application/json") &&
		      rest_media_type_is("Application/JSON; charset=utf-8", "application/json") &&
		      rest_media_type_is("  application/json ;x=y", "application/json") &&
		      rest_media_type_is("multipart/form-data; boundary=x", "multipart/form-data"),
	      "the media type is compared case-insensitively, parameters ignored");
	CHECK(!rest_media_type_is("text/plain", "application/json") &&
		      !rest_media_type_is("application/jsonx", "application/json") &&
		      !rest_media_type_is("application/json-patch+json", "application/json") &&
		      !rest_media_type_is("", "application/json") &&
		      !rest_media_type_is(NULL, "application/json") &&
		      !rest_media_type_is("application/x-www-form-urlencoded",
					  "multipart/form-data"),
	      "other types, prefixes and a missing type are refused");
}

static void test_peers(void)
{
	gid_t groups[] = {27, 1001, 44};

	CHECK(rest_peer_allowed(0, 0, NULL, 0, 1001), "root is allowed");
	CHECK(rest_peer_allowed(1000, 1001, NULL, 0, 1001), "the group as primary group");
	CHECK(rest_peer_allowed(1000, 1000, groups, 3, 1001), "the group as a supplementary group");
	CHECK(!rest_peer_allowed(1000, 1000, groups, 3, 1002),
	      "a user outside the group is refused");
	CHECK(!rest_peer_allowed(65534, 65534, NULL, 0, 1001), "nobody is refused");
	CHECK(!rest_peer_allowed(1000, 1000, groups, 1, 1001),
	      "only the groups the kernel gave count");
}

/* ---- the F3 body through the parser rest.c uses -------------------------- */

/* What libmicrohttpd's post processor gave, part by part (rest.c's rest_upload_iter reads the
 * same keys). */
struct pp_seen {
	struct MHD_PostProcessor *pp;
	char folder[64], format[8], filename[64];
	uint8_t *data;
	size_t data_len, data_cap;
	int bad, done;
};

static void pp_field(char *out, size_t cap, const char *data, uint64_t off, size_t size, int *bad)
{
	if (off + size >= cap) {
		*bad = 1;
		return;
	}
	memcpy(out + off, data, size);
	out[off + size] = '\0';
}

static enum MHD_Result pp_iter(void *cls, enum MHD_ValueKind kind, const char *key,
			       const char *filename, const char *content_type,
			       const char *transfer_encoding, const char *data, uint64_t off,
			       size_t size)
{
	struct pp_seen *s = cls;

	if (!key)
		return MHD_YES;
	if (!strcmp(key, "data")) {
		if (off != s->data_len || s->data_len + size > s->data_cap) {
			s->bad = 1;
			return MHD_NO;
		}
		memcpy(s->data + off, data, size);
		s->data_len += size;
		if (filename)
			snprintf(s->filename, sizeof(s->filename), "%s", filename);
		if (!content_type || strcmp(content_type, "application/octet-stream"))
			s->bad = 1;
	} else if (!strcmp(key, "folder")) {
		pp_field(s->folder, sizeof(s->folder), data, off, size, &s->bad);
	} else if (!strcmp(key, "format")) {
		pp_field(s->format, sizeof(s->format), data, off, size, &s->bad);
	}
	return MHD_YES;
}

static enum MHD_Result pp_answer(void *cls, struct MHD_Connection *conn, const char *url,
				 const char *method, const char *version, const char *upload_data,
				 size_t *upload_data_size, void **con_cls)
{
	struct pp_seen *s = cls;
	struct MHD_Response *resp;
	enum MHD_Result ret;

	if (!*con_cls) {
		*con_cls = s;
		s->pp = MHD_create_post_processor(conn, 64 * 1024, pp_iter, s);
		if (!s->pp)
			s->bad = 1;
		return MHD_YES;
	}
	if (*upload_data_size) {
		if (s->pp && MHD_post_process(s->pp, upload_data, *upload_data_size) != MHD_YES)
			s->bad = 1;
		*upload_data_size = 0;
		return MHD_YES;
	}
	if (s->pp && MHD_destroy_post_processor(s->pp) != MHD_YES)
		s->bad = 1;
	s->pp = NULL;
	s->done = 1;
	resp = MHD_create_response_from_buffer(2, (void *)"{}", MHD_RESPMEM_PERSISTENT);
	ret = MHD_queue_response(conn, MHD_HTTP_OK, resp);
	MHD_destroy_response(resp);
	return ret;
}

static void test_upload_body(void)
{
	static uint8_t file[300007], seen_data[sizeof(file)];
	const char *fields[] = {"folder", "models", "format", "2", NULL};
	struct pp_seen seen = {.data = seen_data, .data_cap = sizeof(seen_data)};
	struct fetch_mem_body fr = {.data = file, .len = sizeof(file)};
	struct fetch_opts o = {.timeout_ms = 20000, .connect_timeout_ms = 3000};
	struct fetch_request req = {.method = "POST", .no_retry = 1};
	struct fetch_response resp = {0};
	struct sockaddr_in lo = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	struct fetch_multipart *m = NULL;
	struct MHD_Daemon *d;
	struct fetch *f = NULL;
	const union MHD_DaemonInfo *info;
	char url[64];
	size_t i;
	int r;

	for (i = 0; i < sizeof(file); i++)
		file[i] = (uint8_t)(i * 2654435761u >> 13);
	d = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG, 0, NULL, NULL,
			     pp_answer, &seen, MHD_OPTION_SOCK_ADDR, &lo, MHD_OPTION_END);
	info = d ? MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT) : NULL;
	CHECK(d && info && info->port, "a libmicrohttpd server on loopback");
	if (!info)
		goto out;
	snprintf(url, sizeof(url), "http://127.0.0.1:%u/upload/m.onnx", (unsigned)info->port);
	r = fetch_new(&o, &f);
	r = r ? r
	      : fetch_multipart_new(fields, "data", "m.onnx", sizeof(file), fetch_mem_read, &fr,
				    &m);
	CHECK(r == 0, "a fetch and azaionctl's F3 body (%d)", r);
	if (r)
		goto out;
	req.url = url;
	fetch_multipart_set_body(m, &req);
	r = fetch_request(f, &req, &resp);
	CHECK(r == 0 && resp.status == 200 && seen.done && !seen.bad,
	      "libmicrohttpd's post processor takes the body whole (%d, HTTP %ld, bad %d)", r,
	      resp.status, seen.bad);
	CHECK(!strcmp(seen.folder, "models") && !strcmp(seen.format, "2"),
	      "the fields rest.c reads: folder '%s', format '%s'", seen.folder, seen.format);
	CHECK(!strcmp(seen.filename, "m.onnx") && seen.data_len == sizeof(file) &&
		      !memcmp(seen_data, file, sizeof(file)),
	      "the 'data' part: its file name '%s' and all %zu of %zu bytes", seen.filename,
	      seen.data_len, sizeof(file));
out:
	fetch_response_free(&resp);
	fetch_multipart_free(m);
	fetch_free(f);
	if (d)
		MHD_stop_daemon(d);
}

int main(void)
{
	test_hosts();
	test_origins();
	test_media_types();
	test_peers();
	test_upload_body();
	return check_done();
}
