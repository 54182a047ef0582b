/*
 * test_fetch.c - fetch/ against the local stack (tests/run exports its
 * addresses and keys): the Resource API emulator, nginx as a plain CDN, the
 * SigV4-checking S3 server, dockerd; plus small servers on loopback started
 * here for what a well-behaved server never does (ignoring a Range, a wrong
 * Content-Range, short bodies, 503s, silence); and the multipart writer's
 * bytes.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/pem.h>

#include "fetch/fetch.h"
#include "tests/unit/check.h"

/* ---- environment, logs, helpers ---------------------------------------- */

static const char *env(const char *name)
{
	const char *v = getenv(name);

	if (!v || !*v) {
		CHECK(0, "environment variable %s is set (run under tests/run with the stack)",
		      name);
		return NULL;
	}
	return v;
}

static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;
static char *log_text;
static size_t log_len;
static int log_errors; /* messages at LOG_ERR or worse */

static void log_cb(int priority, const char *msg)
{
	size_t n = strlen(msg);
	char *p;

	pthread_mutex_lock(&log_lock);
	if (priority <= LOG_ERR)
		log_errors++;
	p = realloc(log_text, log_len + n + 2);
	if (p) {
		log_text = p;
		memcpy(log_text + log_len, msg, n);
		log_len += n;
		log_text[log_len++] = '\n';
		log_text[log_len] = '\0';
	}
	pthread_mutex_unlock(&log_lock);
	if (getenv("FETCH_TEST_VERBOSE"))
		fprintf(stderr, "log %d: %s\n", priority, msg);
}

static int log_has(const char *s)
{
	int found;

	pthread_mutex_lock(&log_lock);
	found = log_text && strstr(log_text, s);
	pthread_mutex_unlock(&log_lock);
	return found;
}

static int errors_logged(void)
{
	int n;

	pthread_mutex_lock(&log_lock);
	n = log_errors;
	pthread_mutex_unlock(&log_lock);
	return n;
}

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

/*
 * The factor for upper time bounds: AZ_TIME_SCALE under a slow runner
 * (valgrind runs this program some 20 times slower), else 1.
 */
static double time_scale(void)
{
	const char *v = getenv("AZ_TIME_SCALE");
	double k = v ? strtod(v, NULL) : 1.0;

	return k >= 1.0 ? k : 1.0;
}

static struct fetch *new_fetch(const char *ca, unsigned timeout_ms, unsigned retries)
{
	struct fetch_opts o = {
		.ca_file = ca,
		.timeout_ms = timeout_ms,
		.connect_timeout_ms = 3000,
		.max_retries = retries,
		.log = log_cb,
	};
	struct fetch *f = NULL;
	int r = fetch_new(&o, &f);

	CHECK(r == 0 && f, "fetch_new (%d)", r);
	return f;
}

static void fill_random(uint8_t *p, size_t n)
{
	FILE *u = fopen("/dev/urandom", "rb");

	if (!u || fread(p, 1, n, u) != n)
		memset(p, 0x5a, n);
	if (u)
		fclose(u);
}

static char *read_file(const char *path, size_t *ret_len)
{
	FILE *fp = fopen(path, "rb");
	char *p = NULL;
	long n;

	if (!fp)
		return NULL;
	if (fseek(fp, 0, SEEK_END) == 0 && (n = ftell(fp)) >= 0 && fseek(fp, 0, SEEK_SET) == 0) {
		p = malloc((size_t)n + 1);
		if (p && fread(p, 1, (size_t)n, fp) != (size_t)n) {
			free(p);
			p = NULL;
		} else if (p) {
			p[n] = '\0';
			*ret_len = (size_t)n;
		}
	}
	fclose(fp);
	return p;
}

/* A body reader over a buffer. */
struct mem_reader {
	const uint8_t *data;
	size_t len, pos;
	size_t calls;
};

static ssize_t mem_read(void *ctx, uint8_t *buf, size_t cap)
{
	struct mem_reader *m = ctx;
	size_t n = m->len - m->pos;

	m->calls++;
	if (n > cap)
		n = cap;
	/* Odd piece sizes, as a real stream would give. */
	if (n > 7777)
		n = 7777;
	memcpy(buf, m->data + m->pos, n);
	m->pos += n;
	return (ssize_t)n;
}

/* ---- multipart bodies ----------------------------------------------------- */

/* Reads a whole multipart body in pieces of at most piece bytes. */
static int mp_read_all(struct fetch_multipart *m, size_t piece, uint8_t *out, size_t cap,
		       size_t *ret_len)
{
	size_t len = 0;
	ssize_t n;

	while ((n = fetch_multipart_read(m, out + len, cap - len < piece ? cap - len : piece)) > 0)
		len += (size_t)n;
	*ret_len = len;
	return n < 0 ? (int)n : 0;
}

static ssize_t shrunk_read(void *ctx, uint8_t *buf, size_t cap)
{
	size_t *left = ctx, n = *left < cap ? *left : cap;

	memset(buf, 'x', n);
	*left -= n;
	return (ssize_t)n;
}

static ssize_t failing_read(void *ctx, uint8_t *buf, size_t cap)
{
	return -EACCES;
}

static ssize_t greedy_read(void *ctx, uint8_t *buf, size_t cap)
{
	return (ssize_t)cap + 1;
}

static void test_multipart(void)
{
	static uint8_t file[100003], body[sizeof(file) + 4096];
	const char *fields[] = {"folder", "models", "format", "2", NULL};
	const char *bad_fields[] = {"folder", NULL};
	const char *quoted[] = {"fol\"der", "models", NULL};
	struct mem_reader mr = {.data = file, .len = sizeof(file)};
	struct fetch_request req = {0};
	struct fetch_multipart *m = NULL, *m2 = NULL;
	char boundary[64], *expect = NULL;
	size_t len = 0, left;
	const char *b;
	int r, n;

	fill_random(file, sizeof(file));
	r = fetch_multipart_new(fields, "data", "m.onnx", sizeof(file), mem_read, &mr, &m);
	CHECK(r == 0 && m, "fetch_multipart_new (%d)", r);
	if (r)
		return;
	fetch_multipart_set_body(m, &req);
	b = req.content_type ? strstr(req.content_type, "; boundary=") : NULL;
	CHECK(b && !strncmp(req.content_type, "multipart/form-data; boundary=azaionfs", 38) &&
		      strlen(b + 11) == 32 && strspn(b + 19, "0123456789abcdef") == 24,
	      "the content type names the boundary, azaionfs and 24 hex digits (%s)",
	      req.content_type ? req.content_type : "(none)");
	CHECK(req.body_reader == fetch_multipart_read && req.body_ctx == m && !req.body,
	      "set_body makes the multipart the request's streamed body");
	snprintf(boundary, sizeof(boundary), "%s", b ? b + 11 : "");
	r = mp_read_all(m, 1000, body, sizeof(body), &len);
	CHECK(r == 0 && (int64_t)len == req.body_size,
	      "the body is read whole, as long as body_size says (%d, %zu of %lld)", r, len,
	      (long long)req.body_size);
	/* The layout azaionctl's F3 upload always sent and rest.c's parser reads. */
	n = asprintf(
		&expect,
		"--%s\r\nContent-Disposition: form-data; name=\"folder\"\r\n\r\nmodels\r\n"
		"--%s\r\nContent-Disposition: form-data; name=\"format\"\r\n\r\n2\r\n"
		"--%s\r\nContent-Disposition: form-data; name=\"data\"; filename=\"m.onnx\"\r\n"
		"Content-Type: application/octet-stream\r\n\r\n",
		boundary, boundary, boundary);
	CHECK(n > 0 && len == (size_t)n + sizeof(file) + strlen(boundary) + 8 &&
		      !memcmp(body, expect, (size_t)n) && !memcmp(body + n, file, sizeof(file)) &&
		      !memcmp(body + n + sizeof(file), "\r\n--", 4) &&
		      !memcmp(body + n + sizeof(file) + 4, boundary, strlen(boundary)) &&
		      !memcmp(body + len - 4, "--\r\n", 4),
	      "the bytes: each field, the file part's head, the file, the closing boundary");
	CHECK(!memmem(file, sizeof(file), boundary, strlen(boundary)),
	      "the boundary is not in the file");
	CHECK(fetch_multipart_read(m, body, sizeof(body)) == 0, "a read past the end gives 0");
	free(expect);

	r = fetch_multipart_new(NULL, "data", "m.onnx", 0, NULL, NULL, &m2);
	CHECK(r == 0 && m2, "a body with no field and an empty file (%d)", r);
	if (m2) {
		struct fetch_request req2 = {0};

		fetch_multipart_set_body(m2, &req2);
		CHECK(strcmp(req2.content_type, req.content_type) != 0,
		      "each body draws its own boundary");
		r = mp_read_all(m2, 1 << 20, body, sizeof(body), &len);
		CHECK(r == 0 && (int64_t)len == req2.body_size && len > 0 &&
			      memmem(body, len, "filename=\"m.onnx\"", 17),
		      "an empty file part is read whole (%d, %zu)", r, len);
	}
	fetch_multipart_free(m2);
	fetch_multipart_free(m);
	m = NULL;

	left = 10;
	r = fetch_multipart_new(fields, "data", "m.onnx", 100, shrunk_read, &left, &m);
	r = r ? r : mp_read_all(m, 4096, body, sizeof(body), &len);
	CHECK(r == -EIO, "a file that ends before its size ends the body with -EIO (%d)", r);
	fetch_multipart_free(m);
	m = NULL;
	r = fetch_multipart_new(fields, "data", "m.onnx", 100, failing_read, NULL, &m);
	r = r ? r : mp_read_all(m, 4096, body, sizeof(body), &len);
	CHECK(r == -EACCES, "the file reader's error ends the body (%d)", r);
	fetch_multipart_free(m);
	m = NULL;
	r = fetch_multipart_new(fields, "data", "m.onnx", 100, greedy_read, NULL, &m);
	r = r ? r : mp_read_all(m, 4096, body, sizeof(body), &len);
	CHECK(r == -EINVAL, "a file reader that gives more than asked: -EINVAL (%d)", r);
	fetch_multipart_free(m);
	m = NULL;

	CHECK(fetch_multipart_new(bad_fields, "data", "m", 0, NULL, NULL, &m) == -EINVAL &&
		      fetch_multipart_new(quoted, "data", "m", 0, NULL, NULL, &m) == -EINVAL &&
		      fetch_multipart_new(NULL, "data", "a\"b", 0, NULL, NULL, &m) == -EINVAL &&
		      fetch_multipart_new(NULL, "data", "a\r\nb", 0, NULL, NULL, &m) == -EINVAL &&
		      fetch_multipart_new(NULL, "", "m", 0, NULL, NULL, &m) == -EINVAL &&
		      fetch_multipart_new(NULL, "data", "m", 5, NULL, NULL, &m) == -EINVAL && !m,
	      "a field without a value, a quote, CR or LF in a name, an empty name, a file "
	      "without a reader: -EINVAL");
}

/* ---- a small misbehaving server on loopback ------------------------------ */

enum ts_mode {
	TS_IGNORE_RANGE,       /* 200, whole object, Content-Length */
	TS_IGNORE_RANGE_NOLEN, /* 200, whole object, ends by closing */
	TS_BAD_RANGE,	       /* 206 with a Content-Range one byte off */
	TS_SHORT_ONCE,	       /* first answer short, then right */
	TS_503_ONCE,	       /* first answer 503, then right */
	TS_503,		       /* always 503 */
	TS_STALL,	       /* reads the request, never answers */
	TS_CHUNKED_BIG,	       /* 200, 2 MiB chunked, no length */
	TS_REFUSE,	       /* /STATUS/CODE...: STATUS with an S3 error naming CODE */
};

#define TS_SIZE ((size_t)1 << 20 | 7)

static struct {
	int fd;
	int port;
	volatile int mode;
	volatile int stop;
	volatile int requests;
	pthread_t thread;
} ts;

static uint8_t ts_byte(uint64_t i)
{
	return (uint8_t)(i * 31 + (i >> 8));
}

static int send_all(int fd, const void *p, size_t n)
{
	const char *c = p;
	ssize_t k;

	while (n) {
		k = send(fd, c, n, MSG_NOSIGNAL);
		if (k <= 0)
			return -1;
		c += k;
		n -= (size_t)k;
	}
	return 0;
}

static int send_object(int fd, uint64_t from, uint64_t to)
{
	uint8_t buf[16384];
	uint64_t i;
	size_t n = 0;

	for (i = from; i < to; i++) {
		buf[n++] = ts_byte(i);
		if (n == sizeof(buf) || i + 1 == to) {
			if (send_all(fd, buf, n))
				return -1;
			n = 0;
		}
	}
	return 0;
}

static void ts_answer(int fd, const char *req)
{
	unsigned long long a = 0, b = TS_SIZE - 1;
	const char *rg = strcasestr(req, "\r\nRange: bytes=");
	char hdr[512];
	int first = ++ts.requests == 1;
	char junk[256];

	if (rg)
		sscanf(rg + 15, "%llu-%llu", &a, &b);
	if (b >= TS_SIZE)
		b = TS_SIZE - 1;
	switch (ts.mode) {
	case TS_IGNORE_RANGE:
		snprintf(hdr, sizeof(hdr),
			 "HTTP/1.1 200 OK\r\nContent-Length: %zu\r\n"
			 "Connection: close\r\n\r\n",
			 TS_SIZE);
		if (!send_all(fd, hdr, strlen(hdr)))
			send_object(fd, 0, TS_SIZE);
		return;
	case TS_IGNORE_RANGE_NOLEN:
		snprintf(hdr, sizeof(hdr), "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n");
		if (!send_all(fd, hdr, strlen(hdr)))
			send_object(fd, 0, TS_SIZE);
		return;
	case TS_BAD_RANGE:
		snprintf(hdr, sizeof(hdr),
			 "HTTP/1.1 206 Partial Content\r\n"
			 "Content-Length: %llu\r\nContent-Range: bytes %llu-%llu/%zu\r\n"
			 "Connection: close\r\n\r\n",
			 b - a + 1, a + 1, b + 1, TS_SIZE);
		if (!send_all(fd, hdr, strlen(hdr)))
			send_object(fd, a + 1, b + 2);
		return;
	case TS_SHORT_ONCE:
	case TS_503_ONCE:
		if (first && ts.mode == TS_503_ONCE) {
			snprintf(hdr, sizeof(hdr),
				 "HTTP/1.1 503 Busy\r\nContent-Length: 5\r\n"
				 "Connection: close\r\n\r\nbusy\n");
			send_all(fd, hdr, strlen(hdr));
			return;
		}
		snprintf(hdr, sizeof(hdr),
			 "HTTP/1.1 206 Partial Content\r\n"
			 "Content-Length: %llu\r\nContent-Range: bytes %llu-%llu/%zu\r\n"
			 "Connection: close\r\n\r\n",
			 b - a + 1, a, b, TS_SIZE);
		if (!send_all(fd, hdr, strlen(hdr)))
			send_object(fd, a,
				    first && ts.mode == TS_SHORT_ONCE ? a + (b - a + 1) / 2
								      : b + 1);
		return;
	case TS_503:
		snprintf(hdr, sizeof(hdr),
			 "HTTP/1.1 503 Busy\r\nContent-Length: 5\r\n"
			 "Connection: close\r\n\r\nbusy\n");
		send_all(fd, hdr, strlen(hdr));
		return;
	case TS_STALL:
		/* Until the client gives up. */
		while (!ts.stop && recv(fd, junk, sizeof(junk), 0) > 0)
			;
		return;
	case TS_REFUSE: {
		char doc[256], code[64] = "";
		int status = 403;
		const char *cl = strcasestr(req, "\r\nContent-Length:");
		size_t body = cl ? strtoul(cl + 17, NULL, 10) : 0;
		size_t in = strlen(strstr(req, "\r\n\r\n") + 4);

		sscanf(req, "%*s /%d/%63[A-Za-z]", &status, code);
		/* A PUT's body is read first: closing on unread bytes would reset the answer. */
		body -= body < in ? body : in;
		while (body > 0) {
			ssize_t k = recv(fd, junk, body < sizeof(junk) ? body : sizeof(junk), 0);

			if (k <= 0)
				break;
			body -= (size_t)k;
		}
		snprintf(doc, sizeof(doc),
			 "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>%s</Code>"
			 "<Message>refused as %s</Message></Error>",
			 code, code);
		snprintf(hdr, sizeof(hdr),
			 "HTTP/1.1 %d Refused\r\nContent-Type: application/xml\r\n"
			 "Content-Length: %zu\r\nConnection: close\r\n\r\n",
			 status, strlen(doc));
		if (!send_all(fd, hdr, strlen(hdr)) && strncmp(req, "HEAD ", 5))
			send_all(fd, doc, strlen(doc));
		return;
	}
	case TS_CHUNKED_BIG: {
		static uint8_t chunk[65536];
		int i;

		snprintf(hdr, sizeof(hdr),
			 "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
			 "Connection: close\r\n\r\n");
		if (send_all(fd, hdr, strlen(hdr)))
			return;
		for (i = 0; i < 32; i++)
			if (send_all(fd, "10000\r\n", 7) || send_all(fd, chunk, sizeof(chunk)) ||
			    send_all(fd, "\r\n", 2))
				return;
		send_all(fd, "0\r\n\r\n", 5);
		return;
	}
	}
}

static void *ts_main(void *arg)
{
	char req[16384];

	while (!ts.stop) {
		int c = accept(ts.fd, NULL, NULL);
		size_t n = 0;
		ssize_t k;

		if (c < 0)
			continue;
		if (ts.stop) {
			close(c);
			break;
		}
		while (n + 1 < sizeof(req)) {
			k = recv(c, req + n, sizeof(req) - 1 - n, 0);
			if (k <= 0)
				break;
			n += (size_t)k;
			req[n] = '\0';
			if (strstr(req, "\r\n\r\n"))
				break;
		}
		req[n] = '\0';
		if (strstr(req, "\r\n\r\n"))
			ts_answer(c, req);
		shutdown(c, SHUT_WR);
		close(c);
	}
	return NULL;
}

static int ts_start(void)
{
	struct sockaddr_in sa = {.sin_family = AF_INET};
	socklen_t sl = sizeof(sa);
	int one = 1;

	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	ts.fd = socket(AF_INET, SOCK_STREAM, 0);
	setsockopt(ts.fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (ts.fd < 0 || bind(ts.fd, (struct sockaddr *)&sa, sizeof(sa)) || listen(ts.fd, 16) ||
	    getsockname(ts.fd, (struct sockaddr *)&sa, &sl))
		return -1;
	ts.port = ntohs(sa.sin_port);
	return pthread_create(&ts.thread, NULL, ts_main, NULL) ? -1 : 0;
}

static void ts_stop(void)
{
	struct sockaddr_in sa = {.sin_family = AF_INET};
	int fd;

	ts.stop = 1;
	/* Wake accept(). */
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	sa.sin_port = htons((uint16_t)ts.port);
	fd = socket(AF_INET, SOCK_STREAM, 0);
	if (fd >= 0) {
		connect(fd, (struct sockaddr *)&sa, sizeof(sa));
		close(fd);
	}
	pthread_join(ts.thread, NULL);
	close(ts.fd);
}

static void ts_mode(int mode)
{
	ts.mode = mode;
	ts.requests = 0;
}

static int ts_slice_ok(const uint8_t *buf, uint64_t off, size_t len)
{
	size_t i;

	for (i = 0; i < len; i++)
		if (buf[i] != ts_byte(off + i))
			return 0;
	return 1;
}

/* A stream's sink for the tests: the bytes in order, or a refusal past refuse_at. */
struct sink_log {
	uint8_t *buf;
	size_t cap, got, refuse_at;
};

static int sink_take(void *arg, const uint8_t *data, size_t len)
{
	struct sink_log *sl = arg;

	if ((sl->refuse_at && sl->got + len > sl->refuse_at) || len > sl->cap - sl->got)
		return -EBADMSG;
	memcpy(sl->buf + sl->got, data, len);
	sl->got += len;
	return 0;
}

/* ---- CDN refusals: each call its own reason ------------------------------ */

#define REFUSAL_CALLS 25

struct refusal_reader {
	struct fetch *f;
	char url[128];
	const char *want; /* the whole reason every call must give */
	int wrong;	  /* calls whose reason was not want */
};

static void *refusal_main(void *p)
{
	struct refusal_reader *a = p;
	char why[FETCH_CDN_WHY_MAX];
	uint8_t buf[64];
	uint64_t sz;
	size_t got;
	int r;

	for (int i = 0; i < REFUSAL_CALLS; i++) {
		if (i % 2)
			r = fetch_cdn_size(a->f, a->url, NULL, &sz, why, sizeof(why));
		else
			r = fetch_cdn_range(a->f, a->url, NULL, 0, sizeof(buf), buf, &got, NULL,
					    why, sizeof(why));
		if (r != -EKEYREJECTED || strcmp(why, a->want))
			a->wrong++;
	}
	return NULL;
}

/* Against the loopback server (started) in TS_REFUSE, whose path names the answer. */
static void test_refusals(struct fetch *f)
{
	struct refusal_reader rd[2] = {
		{.f = f,
		 .want = "HTTP 403: SignatureDoesNotMatch: refused as SignatureDoesNotMatch"},
		{.f = f, .want = "HTTP 401: AccessDenied: refused as AccessDenied"},
	};
	char why_a[FETCH_CDN_WHY_MAX], why_b[FETCH_CDN_WHY_MAX], small[12], url[128];
	struct mem_reader mr = {.data = (const uint8_t *)"0123456789abcdef", .len = 16};
	int errs = errors_logged(), r, ra, rb;
	pthread_t th[2];
	uint8_t buf[64];
	uint64_t sz = 0;
	size_t got = 0;

	snprintf(rd[0].url, sizeof(rd[0].url), "http://127.0.0.1:%d/403/SignatureDoesNotMatch.big",
		 ts.port);
	snprintf(rd[1].url, sizeof(rd[1].url), "http://127.0.0.1:%d/401/AccessDenied.big", ts.port);

	ts_mode(TS_REFUSE);
	ra = fetch_cdn_range(f, rd[0].url, NULL, 0, sizeof(buf), buf, &got, NULL, why_a,
			     sizeof(why_a));
	CHECK(ra == -EKEYREJECTED && ts.requests == 1,
	      "a refused GET: -EKEYREJECTED, not retried (%d, %d requests)", ra, ts.requests);
	rb = fetch_cdn_range(f, rd[1].url, NULL, 0, sizeof(buf), buf, &got, NULL, why_b,
			     sizeof(why_b));
	CHECK(rb == -EKEYREJECTED && !strcmp(why_a, rd[0].want) && !strcmp(why_b, rd[1].want),
	      "two refusals in a row: each call has its own reason (\"%s\", \"%s\")", why_a, why_b);

	snprintf(url, sizeof(url), "http://127.0.0.1:%d/403/InvalidAccessKeyId.big", ts.port);
	r = fetch_cdn_size(f, url, NULL, &sz, why_a, sizeof(why_a));
	CHECK(r == -EKEYREJECTED &&
		      !strcmp(why_a, "HTTP 403: InvalidAccessKeyId: refused as InvalidAccessKeyId"),
	      "a refused HEAD: S3's reason from a one-byte GET (%d, \"%s\")", r, why_a);
	snprintf(url, sizeof(url), "http://127.0.0.1:%d/403/AccessDenied.big", ts.port);
	r = fetch_cdn_put(f, url, NULL, mem_read, &mr, mr.len, why_a, sizeof(why_a));
	CHECK(r == -EKEYREJECTED &&
		      !strcmp(why_a, "HTTP 403: AccessDenied: refused as AccessDenied"),
	      "a refused PUT: S3's reason (%d, \"%s\")", r, why_a);
	r = fetch_cdn_range(f, rd[0].url, NULL, 0, sizeof(buf), buf, &got, NULL, small,
			    sizeof(small));
	CHECK(r == -EKEYREJECTED && !strcmp(small, "HTTP 403: S"),
	      "a reason is cut to the caller's buffer (\"%s\")", small);
	r = fetch_cdn_range(f, rd[0].url, NULL, 0, sizeof(buf), buf, &got, NULL, NULL, 0);
	CHECK(r == -EKEYREJECTED, "a refusal without a buffer for its reason (%d)", r);

	/* At once from two threads: the reasons must not cross. */
	for (int i = 0; i < 2; i++)
		if (pthread_create(&th[i], NULL, refusal_main, &rd[i])) {
			CHECK(0, "a refusal thread starts");
			rd[i].f = NULL;
		}
	for (int i = 0; i < 2; i++)
		if (rd[i].f)
			pthread_join(th[i], NULL);
	CHECK(rd[0].f && rd[1].f && !rd[0].wrong && !rd[1].wrong,
	      "concurrent refusals: every call has its own reason (%d and %d of %d wrong)",
	      rd[0].wrong, rd[1].wrong, REFUSAL_CALLS);

	ts_mode(TS_IGNORE_RANGE);
	strcpy(why_a, "left over");
	r = fetch_cdn_range(f, rd[0].url, NULL, 0, sizeof(buf), buf, &got, NULL, why_a,
			    sizeof(why_a));
	CHECK(r == 0 && !*why_a, "a call that is not refused leaves \"\" (%d, \"%s\")", r, why_a);

	CHECK(errors_logged() == errs && log_has("the CDN refused the request: HTTP 401: "
						 "AccessDenied"),
	      "refusals are logged at debug only, for the caller to say (%d errors)",
	      errors_logged() - errs);
}

static void test_odd_servers(void)
{
	struct fetch *f = new_fetch(NULL, 5000, 3);
	char url[128];
	uint8_t *buf = malloc(300000);
	uint64_t total = 0;
	size_t got = 0;
	double t0;
	int r;

	if (!f || !buf || ts_start()) {
		CHECK(0, "the loopback test server starts");
		goto out;
	}
	snprintf(url, sizeof(url), "http://127.0.0.1:%d/obj.big", ts.port);

	ts_mode(TS_IGNORE_RANGE);
	r = fetch_cdn_range(f, url, NULL, 123457, 200000, buf, &got, &total, NULL, 0);
	CHECK(r == 0 && got == 200000 && total == TS_SIZE && ts_slice_ok(buf, 123457, got),
	      "200 to a Range: the right slice of the middle (%d, %zu)", r, got);
	r = fetch_cdn_range(f, url, NULL, TS_SIZE - 1000, 4096, buf, &got, &total, NULL, 0);
	CHECK(r == 0 && got == 1000 && ts_slice_ok(buf, TS_SIZE - 1000, got),
	      "200 to a Range: the right slice at the end (%d, %zu)", r, got);
	r = fetch_cdn_range(f, url, NULL, TS_SIZE + 5, 100, buf, &got, &total, NULL, 0);
	CHECK(r == 0 && got == 0, "200 to a Range past the end: 0 bytes (%d, %zu)", r, got);

	ts_mode(TS_IGNORE_RANGE_NOLEN);
	r = fetch_cdn_range(f, url, NULL, 5000, 70000, buf, &got, &total, NULL, 0);
	CHECK(r == 0 && got == 70000 && ts_slice_ok(buf, 5000, got),
	      "200 without length to a Range: the right slice (%d, %zu)", r, got);
	r = fetch_cdn_range(f, url, NULL, TS_SIZE - 10, 70000, buf, &got, &total, NULL, 0);
	CHECK(r == 0 && got == 10 && total == TS_SIZE && ts_slice_ok(buf, TS_SIZE - 10, got),
	      "200 without length: short only at the object's end (%d, %zu)", r, got);

	ts_mode(TS_BAD_RANGE);
	r = fetch_cdn_range(f, url, NULL, 1000, 1000, buf, &got, &total, NULL, 0);
	CHECK(r == -EPROTO && ts.requests == 1,
	      "206 with a wrong Content-Range: -EPROTO, not retried (%d, %d requests)", r,
	      ts.requests);

	ts_mode(TS_SHORT_ONCE);
	r = fetch_cdn_range(f, url, NULL, 777, 100000, buf, &got, &total, NULL, 0);
	CHECK(r == 0 && got == 100000 && ts_slice_ok(buf, 777, got) && ts.requests == 2,
	      "a short body is retried and then right (%d, %d requests)", r, ts.requests);

	/* Streamed: each byte once, in order, whatever the attempts. */
	{
		struct sink_log sl = {.buf = buf, .cap = 100000};

		ts_mode(TS_SHORT_ONCE);
		r = fetch_cdn_range_stream(f, url, NULL, 777, 100000, sink_take, &sl, &got, NULL,
					   0);
		CHECK(r == 0 && got == 100000 && sl.got == 100000 &&
			      ts_slice_ok(buf, 777, sl.got) && ts.requests == 2,
		      "streamed, a short body is retried and the sink sees each byte once (%d, "
		      "%zu, "
		      "%d requests)",
		      r, sl.got, ts.requests);
		memset(&sl, 0, sizeof(sl));
		sl.buf = buf;
		sl.cap = 200000;
		ts_mode(TS_IGNORE_RANGE);
		r = fetch_cdn_range_stream(f, url, NULL, 123457, 200000, sink_take, &sl, &got, NULL,
					   0);
		CHECK(r == 0 && sl.got == 200000 && ts_slice_ok(buf, 123457, sl.got),
		      "streamed, a 200 to a Range gives the sink the right slice (%d, %zu)", r,
		      sl.got);
		memset(&sl, 0, sizeof(sl));
		sl.buf = buf;
		sl.cap = 100000;
		sl.refuse_at = 5000;
		ts_mode(TS_SHORT_ONCE);
		r = fetch_cdn_range_stream(f, url, NULL, 0, 100000, sink_take, &sl, &got, NULL, 0);
		CHECK(r == -EBADMSG && ts.requests == 1 && sl.got <= 5000,
		      "streamed, a sink's refusal ends the call with its error, not retried (%d, "
		      "%d "
		      "requests)",
		      r, ts.requests);
	}

	ts_mode(TS_503_ONCE);
	r = fetch_cdn_range(f, url, NULL, 0, 4096, buf, &got, &total, NULL, 0);
	CHECK(r == 0 && got == 4096 && ts_slice_ok(buf, 0, got) && ts.requests == 2,
	      "a 503 is retried and then right (%d, %d requests)", r, ts.requests);

	ts_mode(TS_503);
	r = fetch_cdn_range(f, url, NULL, 0, 4096, buf, &got, &total, NULL, 0);
	CHECK(r == -EIO && ts.requests == 4, "503 every time: -EIO after 1 + 3 attempts (%d, %d)",
	      r, ts.requests);
	{
		struct fetch_request req = {
			.method = "POST", .url = url, .body = "x", .body_len = 1, .no_retry = 1};
		struct fetch_response resp = {0};

		ts_mode(TS_503);
		r = fetch_request(f, &req, &resp);
		CHECK(r == 0 && resp.status == 503 && ts.requests == 1,
		      "a no_retry POST answered 503 is not sent again (%d, %ld, %d)", r,
		      resp.status, ts.requests);
		fetch_response_free(&resp);
	}
	{
		struct fetch_request req = {.method = "GET", .url = url};
		struct fetch_response resp = {0};

		ts_mode(TS_CHUNKED_BIG);
		r = fetch_request(f, &req, &resp);
		CHECK(r == -EFBIG && !resp.body.data,
		      "a chunked answer over the 1 MiB cap: -EFBIG (%d)", r);
		fetch_response_free(&resp);
	}

	ts_mode(TS_STALL);
	fetch_set_timeout(f, 1500);
	t0 = now_s();
	r = fetch_cdn_range(f, url, NULL, 0, 4096, buf, &got, &total, NULL, 0);
	t0 = now_s() - t0;
	CHECK(r == -ETIMEDOUT && t0 >= 1.3 && t0 < 3.0 * time_scale(),
	      "a server that never answers: -ETIMEDOUT within the timeout (%d, %.2f s)", r, t0);
	fetch_set_timeout(f, 5000);
	test_refusals(f);
	ts_stop();
out:
	free(buf);
	fetch_free(f);
}

static void test_closed_port(void)
{
	struct fetch *f = new_fetch(NULL, 5000, 3);
	struct sockaddr_in sa = {.sin_family = AF_INET};
	socklen_t sl = sizeof(sa);
	uint8_t buf[16];
	size_t got;
	char url[128];
	double t0;
	int fd, r;

	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	fd = socket(AF_INET, SOCK_STREAM, 0);
	if (!f || fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof(sa)) ||
	    getsockname(fd, (struct sockaddr *)&sa, &sl)) {
		CHECK(0, "a free loopback port for the closed-port test");
		goto out;
	}
	/* Bound but not listening: connections are refused. */
	snprintf(url, sizeof(url), "http://127.0.0.1:%d/x.big", ntohs(sa.sin_port));
	t0 = now_s();
	r = fetch_cdn_range(f, url, NULL, 0, sizeof(buf), buf, &got, NULL, NULL, 0);
	t0 = now_s() - t0;
	CHECK(r == -EHOSTUNREACH && t0 < 2.0 * time_scale(),
	      "a closed port: -EHOSTUNREACH quickly (%d, %.2f s)", r, t0);
	CHECK(strstr(fetch_strerror(r), "connection refused") != NULL, "... its words say so (%s)",
	      fetch_strerror(r));
	/*
	 * A failure is logged once, at error, unless the thread is quiet: then
	 * at debug, with its words kept for the caller (the read path's calls).
	 */
	{
		char api[128], *tok = NULL;
		time_t exp = 0;
		int e0, was;

		snprintf(api, sizeof(api), "http://127.0.0.1:%d", ntohs(sa.sin_port));
		for (int quiet = 0; quiet < 2; quiet++) {
			e0 = errors_logged();
			was = fetch_quiet(quiet);
			r = fetch_cdn_range(f, url, NULL, 0, sizeof(buf), buf, &got, NULL, NULL, 0);
			CHECK(r < 0 && errors_logged() == e0 + !quiet,
			      "%s: a failed CDN read logs %d error (%d)", quiet ? "quiet" : "loud",
			      !quiet, errors_logged() - e0);
			e0 = errors_logged();
			r = fetch_api_login(f, api, "a@b.c", "pw", &tok, &exp);
			CHECK(r < 0 && errors_logged() == e0 + !quiet,
			      "%s: a failed API call logs %d error (%d)", quiet ? "quiet" : "loud",
			      !quiet, errors_logged() - e0);
			CHECK(fetch_quiet(was) == quiet,
			      "fetch_quiet gives back the setting before");
			CHECK(strstr(fetch_strerror(r), "connection refused") != NULL,
			      "... and fetch_strerror has its words (%s)", fetch_strerror(r));
		}
		free(tok);
	}
out:
	if (fd >= 0)
		close(fd);
	fetch_free(f);
}

/* ---- the Resource API ------------------------------------------------- */

static char *make_public_pem(void)
{
	EVP_PKEY *k = EVP_RSA_gen(2048);
	BIO *b = BIO_new(BIO_s_mem());
	char *data, *pem = NULL;
	long n;

	if (k && b && PEM_write_bio_PUBKEY(b, k) == 1) {
		n = BIO_get_mem_data(b, &data);
		pem = strndup(data, (size_t)n);
	}
	BIO_free(b);
	EVP_PKEY_free(k);
	return pem;
}

static int list_has(json_t *list, const char *name, json_int_t size)
{
	json_t *res = json_object_get(list, "resources"), *e;
	size_t i;

	json_array_foreach(res, i, e)
	{
		if (!strcmp(json_string_value(json_object_get(e, "name")) ?: "", name) &&
		    (!size || json_integer_value(json_object_get(e, "size")) == size))
			return 1;
	}
	return 0;
}

static void test_api(const char *ca)
{
	const char *api = env("API_URL"), *email = env("API_EMAIL"), *pw = env("API_PASSWORD");
	const char *fragfile = env("KEY_FRAGMENT_FILE");
	struct fetch *f = new_fetch(ca, 10000, 3);
	char *token = NULL, *token2 = NULL, *dev = NULL, *dev2 = NULL, *pem = NULL;
	struct fetch_buf b = {0};
	json_t *j = NULL;
	time_t exp = 0;
	char name[64], small[80];
	uint8_t part[777];
	int r;

	if (!api || !email || !pw || !fragfile || !f)
		goto out;
	r = fetch_api_login(f, api, email, pw, &token, &exp);
	CHECK(r == 0 && token && *token, "login gives a token (%d)", r);
	CHECK(r == 0 && exp > time(NULL) && exp < time(NULL) + 366 * 86400,
	      "the token's exp is read from the JWT (%lld)", (long long)exp);
	if (r)
		goto out;
	r = fetch_api_login(f, api, email, "wrong-password", &token2, &exp);
	CHECK(r == -EACCES && !token2, "a wrong password: -EACCES (%d)", r);

	r = fetch_api_resource(f, api, token, "", "cdn.yaml", pw, "HW-test", &b);
	CHECK(r == 0 && b.len >= 16 && b.len % 16 == 0,
	      "resources/get of cdn.yaml: a CBC body (%d, %zu bytes)", r, b.len);
	fetch_buf_free(&b);
	CHECK(b.data == NULL && b.len == 0, "fetch_buf_free empties the buffer");
	r = fetch_api_resource(f, api, token, "models", "no-such-file.small", pw, "HW-test", &b);
	CHECK(r == -ENOENT, "resources/get of a missing file: -ENOENT (%d)", r);
	r = fetch_api_resource(f, api, "not-a-token", "", "cdn.yaml", pw, "HW-test", &b);
	CHECK(r == -EACCES, "resources/get with a bad token: -EACCES (%d)", r);

	{
		char *frag;
		size_t flen = 0;

		frag = read_file(fragfile, &flen);
		r = fetch_api_key_fragment(f, api, token, &b);
		CHECK(r == 0 && frag && b.len == flen && !memcmp(b.data, frag, flen),
		      "key-fragment: the emulator's bytes (%d, %zu)", r, b.len);
		fetch_buf_free(&b);
		free(frag);
	}

	snprintf(name, sizeof(name), "fetchtest-%d.onnx", (int)getpid());
	snprintf(small, sizeof(small), "%s.small", name);
	fill_random(part, sizeof(part));
	{
		const char *fields[] = {
			"size",
			"123456",
			"big_size",
			"122000",
			"sha256",
			"00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff",
			NULL};

		r = fetch_api_upload(f, api, token, "models", small, part, sizeof(part), fields);
		CHECK(r == 0, "upload of a small part (%d)", r);
	}
	r = fetch_api_list(f, api, token, "models", &j);
	CHECK(r == 0 && list_has(j, name, 123456),
	      "resources/list shows the upload with its size (%d)", r);
	json_decref(j);
	j = NULL;
	r = fetch_api_resource(f, api, token, "models", small, pw, "HW-test", &b);
	CHECK(r == 0 && b.len >= sizeof(part) && b.len % 16 == 0,
	      "resources/get of the uploaded part (%d, %zu)", r, b.len);
	fetch_buf_free(&b);

	pem = make_public_pem();
	CHECK(pem != NULL, "an RSA public key for the device");
	{
		/* A software key is refused (docs/trust.md 1): both calls answer 403 with a reason. */
		json_t *ev = json_pack("{s:s, s:s, s:s, s:s, s:s}", "name", "test-device",
				       "hardware", "HW-test", "ek_cert", "AAAA", "ek_public",
				       "AAAA", "ak_public", "AAAA");
		json_t *pr = json_pack("{s:s, s:s, s:s}", "name", "test-device", "hardware",
				       "HW-test", "public_key", pem);
		char *detail = NULL;

		r = fetch_api_device_challenge(f, api, token, ev, &j, &detail);
		CHECK(r == -EPERM && !j && detail && *detail,
		      "a challenge for a made-up EK certificate: -EPERM with the API's reason "
		      "(%d, %s)",
		      r, detail ? detail : "-");
		free(detail);
		detail = NULL;
		r = fetch_api_device_enrol(f, api, token, pr, &dev, &detail);
		CHECK(r == -EPERM && !dev && detail && *detail,
		      "the bare POST /devices with a public key: -EPERM, no device id (%d, %s)", r,
		      detail ? detail : "-");
		free(detail);
		json_decref(ev);
		json_decref(pr);
	}
	{
		/* The emulator's test control enrols a software key for the wrap checks below. */
		char url[512], *body = NULL;
		struct fetch_request req = {.method = "POST",
					    .content_type = "application/json",
					    .max_response = 65536};
		struct fetch_response resp = {0};
		json_t *pr = json_pack("{s:s, s:s, s:s}", "name", "test-device", "hardware",
				       "HW-test", "public_key", pem);

		snprintf(url, sizeof(url), "%s/_admin/devices", api);
		body = json_dumps(pr, JSON_COMPACT);
		req.url = url;
		req.body = body;
		req.body_len = body ? strlen(body) : 0;
		r = fetch_request(f, &req, &resp);
		json_decref(pr);
		pr = resp.body.data
			     ? json_loadb((const char *)resp.body.data, resp.body.len, 0, NULL)
			     : NULL;
		if (json_is_string(json_object_get(pr, "device_id")))
			dev = strdup(json_string_value(json_object_get(pr, "device_id")));
		CHECK(r == 0 && resp.status == 201 && dev,
		      "a test device through the emulator's control (%d, %ld)", r, resp.status);
		json_decref(pr);
		fetch_response_free(&resp);
		free(body);
	}
	if (!dev)
		goto out;

	r = fetch_api_register_key(f, api, token, "models", name,
				   "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=", 4242,
				   "ffeeddccbbaa9988776655443322110"
				   "0ffeeddccbbaa99887766554433221100",
				   "000102030405060708090a0b0c0d0e0f", 4300);
	CHECK(r == 0, "key registration (%d)", r);
	r = fetch_api_device_key(f, api, token, "models", name, dev, &j);
	CHECK(r == 0 && json_is_string(json_object_get(j, "wrapped_key")) &&
		      json_integer_value(json_object_get(j, "format")) == 2,
	      "device key: a wrapped key for this device (%d)", r);
	json_decref(j);
	j = NULL;
	r = fetch_api_device_key(f, api, token, "models", name, "dev-unknown", &j);
	CHECK(r == -ENOENT && !j, "device key for an unknown device: -ENOENT (%d)", r);
	r = fetch_api_list(f, api, token, "models", &j);
	CHECK(r == 0 && list_has(j, name, 4242), "the catalog shows the format-2 entry (%d)", r);
	json_decref(j);
	j = NULL;

	CHECK(!log_has(pw) && !log_has(token), "no password or token in the log");
out:
	free(pem);
	free(dev);
	free(dev2);
	free(token);
	free(token2);
	fetch_free(f);
}

/* ---- format-1 chunk hashes (docs/trust.md section 4) --------------------- */

/* PUT or DELETE /_admin/hashes/{folder}/{name}: plants a raw answer or drops the list. */
static int admin_hashes(struct fetch *f, const char *api, const char *method, const char *folder,
			const char *name, const char *body, size_t len)
{
	struct fetch_request req = {.method = method, .body = body, .body_len = len};
	struct fetch_response resp = {0};
	char url[1024];
	int r;

	snprintf(url, sizeof(url), "%s/_admin/hashes/%s/%s", api, folder, name);
	req.url = url;
	r = fetch_request(f, &req, &resp);
	if (r == 0 && resp.status != 200)
		r = -EIO;
	fetch_response_free(&resp);
	return r;
}

/* Plants body as the API's answer and reads it back through the client. */
static int planted_answer(struct fetch *f, const char *api, const char *token, const char *name,
			  const char *body, size_t len, uint32_t *ret_cs, size_t *ret_count)
{
	uint8_t *sha = NULL;
	int r;

	r = admin_hashes(f, api, "PUT", "models", name, body, len);
	if (r)
		return -1000 + r;
	r = fetch_api_chunk_hashes(f, api, token, "models", name, ret_cs, &sha, ret_count);
	free(sha);
	return r;
}

static void test_chunk_hashes(const char *ca)
{
	static const char hex64[] =
		"00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
	static const struct {
		const char *body;
		const char *what;
	} bad[] = {
		{"", "an empty answer"},
		{"<html>busy</html>", "an HTML page"},
		{"[]", "a JSON array"},
		{"{\"chunk_size\": 1048576, \"sha256\": [", "a cut answer"},
		{"{\"chunk_size\": 1048576}", "no sha256"},
		{"{\"sha256\": []}", "no chunk_size"},
		{"{\"chunk_size\": 1000000, \"sha256\": []}", "chunk_size not a power of two"},
		{"{\"chunk_size\": 32768, \"sha256\": []}", "chunk_size below 64 KiB"},
		{"{\"chunk_size\": 33554432, \"sha256\": []}", "chunk_size above 16 MiB"},
		{"{\"chunk_size\": 4294967296, \"sha256\": []}", "chunk_size past 32 bits"},
		{"{\"chunk_size\": -1048576, \"sha256\": []}", "a negative chunk_size"},
		{"{\"chunk_size\": 1048576.0, \"sha256\": []}", "a fractional chunk_size"},
		{"{\"chunk_size\": \"1048576\", \"sha256\": []}", "chunk_size as a string"},
		{"{\"chunk_size\": 01048576, \"sha256\": []}", "a leading zero"},
		{"{\"chunk_size\": 1048576, \"sha256\": \"abc\"}", "sha256 not an array"},
		{"{\"chunk_size\": 1048576, \"sha256\": [\"0011\"]}", "a short entry"},
		{"{\"chunk_size\": 1048576, \"sha256\": [\"00112233445566778899aabbccddeeff"
		 "00112233445566778899aabbccddeeff00\"]}",
		 "a long entry"},
		{"{\"chunk_size\": 1048576, \"sha256\": [\"00112233445566778899aabbccddeeff"
		 "00112233445566778899aabbccddeefg\"]}",
		 "a non-hex entry"},
		{"{\"chunk_size\": 1048576, \"sha256\": [42]}", "a number entry"},
		{"{\"chunk_size\": 1048576, \"sha256\": [null]}", "a null entry"},
		{"{\"chunk_size\": 1048576, \"chunk_size\": 1048576, \"sha256\": []}",
		 "a member twice"},
		{"{\"chunk_size\": 1048576, \"sha256\": []} x", "trailing garbage"},
		{"{\"chunk_size\": 1048576, \"sha256\": [],}", "a trailing comma"},
		{"{\"chunk_size\": 1048576, \"x\": [1, 2}, \"sha256\": []}",
		 "mismatched brackets in another member"},
		{"{\"chunk_size\": 1048576, \"x\": nope, \"sha256\": []}", "an unknown word"},
	};
	const char *api = env("API_URL"), *email = env("API_EMAIL"), *pw = env("API_PASSWORD");
	struct fetch *f = new_fetch(ca, 20000, 2);
	char *token = NULL, *body = NULL, name[64], odd[64];
	uint8_t sha[3 * 32], *got = NULL;
	uint32_t cs = 0;
	size_t count = 0, i, n, len;
	int r, errs;

	if (!api || !email || !pw || !f)
		goto out;
	r = fetch_api_login(f, api, email, pw, &token, NULL);
	CHECK(r == 0, "login for the chunk hashes (%d)", r);
	if (r)
		goto out;
	snprintf(name, sizeof(name), "hashtest-%d.onnx", (int)getpid());
	/* Escaped in the path: '+', '@', '=' and ',' are not unreserved. */
	snprintf(odd, sizeof(odd), "hash+test@%d=a,b.onnx", (int)getpid());
	fill_random(sha, sizeof(sha));

	r = fetch_api_register_chunk_hashes(f, api, token, "models", name, 1 << 20, sha, 3);
	CHECK(r == 0, "register three chunk hashes (%d)", r);
	r = fetch_api_chunk_hashes(f, api, token, "models", name, &cs, &got, &count);
	CHECK(r == 0 && cs == 1 << 20 && count == 3 && got && !memcmp(got, sha, sizeof(sha)),
	      "the list comes back as registered (%d, %u, %zu)", r, cs, count);
	free(got);
	got = NULL;

	r = fetch_api_register_chunk_hashes(f, api, token, "models", name, 1 << 16, sha + 32, 1);
	CHECK(r == 0, "register again with another chunk size (%d)", r);
	r = fetch_api_chunk_hashes(f, api, token, "models", name, &cs, &got, &count);
	CHECK(r == 0 && cs == 1 << 16 && count == 1 && !memcmp(got, sha + 32, 32),
	      "the new list replaces the old one (%d, %u, %zu)", r, cs, count);
	free(got);
	got = NULL;

	r = fetch_api_register_chunk_hashes(f, api, token, "models", name, 1 << 20, NULL, 0);
	r = r ? r : fetch_api_chunk_hashes(f, api, token, "models", name, &cs, &got, &count);
	CHECK(r == 0 && count == 0 && got,
	      "an empty list (an empty big part) round-trips (%d, %zu)", r, count);
	free(got);
	got = NULL;

	r = fetch_api_register_chunk_hashes(f, api, token, "", odd, 1 << 24, sha, 2);
	r = r ? r : fetch_api_chunk_hashes(f, api, token, "", odd, &cs, &got, &count);
	CHECK(r == 0 && cs == 1 << 24 && count == 2 && !memcmp(got, sha, 64),
	      "the root folder and a name that needs escaping round-trip (%d, %zu)", r, count);
	free(got);
	got = NULL;

	r = admin_hashes(f, api, "DELETE", "models", name, NULL, 0);
	CHECK(r == 0, "the emulator drops the list (%d)", r);
	errs = errors_logged();
	got = (uint8_t *)"untouched";
	cs = 7;
	r = fetch_api_chunk_hashes(f, api, token, "models", name, &cs, &got, &count);
	CHECK(r == -ENOENT && cs == 7 && got == (uint8_t *)"untouched",
	      "no list (a legacy resource): -ENOENT, out-parameters untouched (%d)", r);
	CHECK(errors_logged() == errs, "that 404 is logged at debug only");
	got = NULL;
	r = fetch_api_chunk_hashes(f, api, "not-a-token", "models", odd, &cs, &got, &count);
	CHECK(r == -EACCES, "a bad token: -EACCES (%d)", r);

	r = fetch_api_register_chunk_hashes(f, api, token, "models", name, 1000000, sha, 1);
	CHECK(r == -EINVAL, "registering a chunk size that is not a power of two: -EINVAL (%d)", r);
	r = fetch_api_register_chunk_hashes(f, api, token, "models", name, 1 << 24, sha, 65537);
	CHECK(r == -EINVAL, "registering more than 1 TiB of chunks: -EINVAL (%d)", r);

	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		errs = errors_logged();
		r = planted_answer(f, api, token, name, bad[i].body, strlen(bad[i].body), &cs,
				   &count);
		CHECK(r == -EBADMSG && errors_logged() > errs &&
			      log_has("the chunk-hash list is malformed"),
		      "malformed answer, %s: -EBADMSG, logged (%d)", bad[i].what, r);
	}

	/* Members of other names, whitespace and upper-case hex are fine. */
	n = (size_t)asprintf(&body,
			     " {\"updated\": \"2026-11-01T12:00:00Z\", \"x\": {\"a\": [1, "
			     "-2.5e3, true, null, {\"b\": \"\\u00e9\\\"\"}]},\n"
			     "\t\"sha256\" : [ \"%s\" ,\r\n\"%s\" ], \"chunk_size\":1048576 }\n",
			     hex64,
			     "00112233445566778899AABBCCDDEEFF00112233445566778899AABBCCDDEEFF");
	r = planted_answer(f, api, token, name, body, n, &cs, &count);
	CHECK(r == 0 && cs == 1 << 20 && count == 2,
	      "other members are skipped, chunk_size may come last (%d, %zu)", r, count);
	free(body);
	body = NULL;

	/* 1 TiB at 16 MiB chunks is 65536 entries; one more is refused. */
	for (n = 65536; n <= 65537; n++) {
		len = 64 + n * 67;
		body = malloc(len);
		if (!body)
			break;
		len = (size_t)snprintf(body, len, "{\"chunk_size\": 16777216, \"sha256\": [");
		for (i = 0; i < n; i++)
			len += (size_t)sprintf(body + len, "%s\"%s\"", i ? "," : "", hex64);
		len += (size_t)sprintf(body + len, "]}");
		r = planted_answer(f, api, token, name, body, len, &cs, &count);
		if (n == 65536)
			CHECK(r == 0 && count == n, "a list of exactly 1 TiB is accepted (%d)", r);
		else
			CHECK(r == -EBADMSG, "a list of more than 1 TiB is refused (%d)", r);
		free(body);
		body = NULL;
	}
	admin_hashes(f, api, "DELETE", "models", name, NULL, 0);
	admin_hashes(f, api, "DELETE", "", odd, NULL, 0);
	CHECK(!log_has(token), "no token in the log");
out:
	free(token);
	fetch_free(f);
}

/* ---- the CDN: nginx ----------------------------------------------------- */

struct reader_arg {
	struct fetch *f;
	const char *url;
	const struct fetch_s3 *s3;
	const uint8_t *data;
	size_t size;
	unsigned seed;
	int bad;
	int errors;
};

#define READS_PER_THREAD 20

static void *reader_main(void *p)
{
	struct reader_arg *a = p;
	uint8_t *buf = malloc(256 * 1024);
	int i, r;

	for (i = 0; buf && i < READS_PER_THREAD; i++) {
		size_t len = 1 + (size_t)rand_r(&a->seed) % (256 * 1024), got = 0;
		uint64_t off = (uint64_t)rand_r(&a->seed) % a->size, total = 0;
		size_t want = off + len > a->size ? a->size - off : len;

		r = fetch_cdn_range(a->f, a->url, a->s3, off, len, buf, &got, &total, NULL, 0);
		if (r)
			a->errors++;
		else if (got != want || total != a->size || memcmp(buf, a->data + off, got))
			a->bad++;
	}
	free(buf);
	return NULL;
}

/* Distinct connections and requests for uri in nginx's access log. */
static void nginx_conns(const char *log, const char *uri, int *ret_conns, int *ret_reqs)
{
	FILE *fp = fopen(log, "r");
	char line[1024], m[16], u[512], st[8], rg[128];
	unsigned long conns[4096], c;
	int n = 0, reqs = 0, i, seen;
	long bytes, cr;

	*ret_conns = *ret_reqs = 0;
	if (!fp)
		return;
	while (fgets(line, sizeof(line), fp)) {
		if (sscanf(line, "%15s %511s %7s %127s %ld %lu %ld", m, u, st, rg, &bytes, &c,
			   &cr) != 7 ||
		    strcmp(m, "GET") || strcmp(u, uri))
			continue;
		reqs++;
		for (i = 0, seen = 0; i < n; i++)
			seen |= conns[i] == c;
		if (!seen && n < 4096)
			conns[n++] = c;
	}
	fclose(fp);
	*ret_conns = n;
	*ret_reqs = reqs;
}

static void test_nginx(const char *ca)
{
	const char *base = env("NGINX_URL"), *root = env("CDN_ROOT");
	const char *nlog = getenv("NGINX_LOG");
	struct fetch *f = new_fetch(ca, 20000, 3);
	size_t size = 3 * 1024 * 1024 + 12345, got = 0, flen = 0;
	uint8_t *data = malloc(size), *buf = malloc(size);
	struct mem_reader mr = {.data = data, .len = size};
	char url[512], path[512], uri[128];
	uint64_t total = 0, sz = 0;
	char *file = NULL;
	int r, i;

	if (!base || !root || !f || !data || !buf)
		goto out;
	fill_random(data, size);
	snprintf(uri, sizeof(uri), "/models/fetchtest-%d.big", (int)getpid());
	snprintf(url, sizeof(url), "%s%s", base, uri);
	snprintf(path, sizeof(path), "%s%s", root, uri);

	r = fetch_cdn_put(f, url, NULL, mem_read, &mr, size, NULL, 0);
	file = read_file(path, &flen);
	CHECK(r == 0 && file && flen == size && !memcmp(file, data, size),
	      "nginx: PUT of %zu bytes lands intact (%d)", size, r);
	free(file);
	r = fetch_cdn_size(f, url, NULL, &sz, NULL, 0);
	CHECK(r == 0 && sz == size, "nginx: size by HEAD (%d, %" PRIu64 ")", r, sz);

	r = fetch_cdn_range(f, url, NULL, 0, 4096, buf, &got, &total, NULL, 0);
	CHECK(r == 0 && got == 4096 && total == size && !memcmp(buf, data, got),
	      "nginx: range at the start (%d, %zu)", r, got);
	r = fetch_cdn_range(f, url, NULL, 1000003, 700001, buf, &got, &total, NULL, 0);
	CHECK(r == 0 && got == 700001 && !memcmp(buf, data + 1000003, got),
	      "nginx: range in the middle (%d, %zu)", r, got);
	r = fetch_cdn_range(f, url, NULL, size - 100, 4096, buf, &got, &total, NULL, 0);
	CHECK(r == 0 && got == 100 && total == size && !memcmp(buf, data + size - 100, got),
	      "nginx: range over the end is short (%d, %zu)", r, got);
	r = fetch_cdn_range(f, url, NULL, size, 4096, buf, &got, &total, NULL, 0);
	CHECK(r == 0 && got == 0 && total == size,
	      "nginx: range at the end: 0 bytes, size known (%d, %zu, %" PRIu64 ")", r, got, total);
	r = fetch_cdn_range(f, url, NULL, size + 1000, 10, buf, &got, &total, NULL, 0);
	CHECK(r == 0 && got == 0, "nginx: range past the end: 0 bytes (%d, %zu)", r, got);
	r = fetch_cdn_range(f, url, NULL, 0, size, buf, &got, &total, NULL, 0);
	CHECK(r == 0 && got == size && !memcmp(buf, data, size),
	      "nginx: the whole object as one range (%d, %zu)", r, got);
	{
		char missing[600];

		snprintf(missing, sizeof(missing), "%s/models/no-such-object.big", base);
		r = fetch_cdn_range(f, missing, NULL, 0, 10, buf, &got, &total, NULL, 0);
		CHECK(r == -ENOENT, "nginx: a missing object: -ENOENT (%d)", r);
	}
	{
		struct fetch_request req = {.method = "GET", .url = url, .max_response = 65536};
		struct fetch_response resp = {0};

		r = fetch_request(f, &req, &resp);
		CHECK(r == -EFBIG && !resp.body.data,
		      "an answer over the call's cap is refused: -EFBIG (%d)", r);
	}

	{
		struct reader_arg a[16];
		pthread_t th[16];
		int bad = 0, errors = 0, conns = 0, reqs = 0;

		for (i = 0; i < 16; i++) {
			a[i] = (struct reader_arg){.f = f,
						   .url = url,
						   .data = data,
						   .size = size,
						   .seed = (unsigned)(i * 7919 + getpid())};
			pthread_create(&th[i], NULL, reader_main, &a[i]);
		}
		for (i = 0; i < 16; i++) {
			pthread_join(th[i], NULL);
			bad += a[i].bad;
			errors += a[i].errors;
		}
		CHECK(bad == 0 && errors == 0,
		      "nginx: 16 threads x %d ranged reads, all bytes right (%d wrong, %d failed)",
		      READS_PER_THREAD, bad, errors);
		if (nlog) {
			nginx_conns(nlog, uri, &conns, &reqs);
			CHECK(reqs >= 16 * READS_PER_THREAD && conns * 4 < reqs,
			      "nginx: connections are kept alive (%d connections, %d GETs)", conns,
			      reqs);
		}
	}
out:
	free(data);
	free(buf);
	fetch_free(f);
}

static void test_tls(const char *ca)
{
	const char *base = env("NGINX_URL");
	struct fetch *f = new_fetch(NULL, 5000, 3);
	uint8_t buf[16];
	char url[512];
	size_t got = 0;
	double t0;
	int r;

	if (!base || !f)
		goto out;
	snprintf(url, sizeof(url), "%s/models/anything.big", base);
	t0 = now_s();
	r = fetch_cdn_range(f, url, NULL, 0, sizeof(buf), buf, &got, NULL, NULL, 0);
	t0 = now_s() - t0;
	CHECK(r == -EIO && t0 < 2.0 * time_scale(),
	      "TLS: the stack's server is refused without its CA, not retried (%d, %.2f s)", r, t0);
out:
	fetch_free(f);
}

/* ---- the CDN: S3 -------------------------------------------------------- */

static void test_s3(const char *ca)
{
	const char *base = env("S3_URL"), *ak = env("S3_ACCESS_KEY"), *sk = env("S3_SECRET_KEY");
	const char *region = env("S3_REGION");
	const char *uak = getenv("S3_UPLOADER_ACCESS_KEY"), *usk = getenv("S3_UPLOADER_SECRET_KEY");
	struct fetch *f = new_fetch(ca, 20000, 3);
	size_t size = 5 * 1024 * 1024 + 333, got = 0;
	uint8_t *data = malloc(size), *buf = malloc(size);
	struct mem_reader mr = {.data = data, .len = size};
	uint64_t total = 0, sz = 0;
	char url[512];
	int r;

	if (!base || !ak || !sk || !region || !f || !data || !buf)
		goto out;
	{
		struct fetch_s3 up = {.access_key = uak ? uak : ak,
				      .secret_key = usk ? usk : sk,
				      .region = region};
		struct fetch_s3 down = {.access_key = ak, .secret_key = sk, .region = region};
		struct fetch_s3 wrong = {
			.access_key = ak, .secret_key = "not-the-secret", .region = region};
		char why_sig[FETCH_CDN_WHY_MAX], why_anon[FETCH_CDN_WHY_MAX];

		fill_random(data, size);
		snprintf(url, sizeof(url), "%s/models/fetchtest-%d.big", base, (int)getpid());
		r = fetch_cdn_put(f, url, &up, mem_read, &mr, size, NULL, 0);
		CHECK(r == 0, "S3: signed streamed PUT of %zu bytes (%d)", size, r);
		r = fetch_cdn_range(f, url, &down, 1234567, 2000000, buf, &got, &total, NULL, 0);
		CHECK(r == 0 && got == 2000000 && total == size &&
			      !memcmp(buf, data + 1234567, got),
		      "S3: signed ranged GET gives the right bytes (%d, %zu)", r, got);
		r = fetch_cdn_range(f, url, &down, size - 33, 100, buf, &got, &total, NULL, 0);
		CHECK(r == 0 && got == 33 && !memcmp(buf, data + size - 33, got),
		      "S3: signed range over the end (%d, %zu)", r, got);
		r = fetch_cdn_size(f, url, &down, &sz, NULL, 0);
		CHECK(r == 0 && sz == size, "S3: signed HEAD gives the size (%d, %" PRIu64 ")", r,
		      sz);
		/* A CDN refusal is not a login problem: its own errno (docs/resource-api.md). */
		r = fetch_cdn_range(f, url, &wrong, 0, 100, buf, &got, &total, why_sig,
				    sizeof(why_sig));
		CHECK(r == -EKEYREJECTED &&
			      !strncmp(why_sig, "HTTP 403: SignatureDoesNotMatch: ", 33),
		      "S3: a wrong secret is refused: -EKEYREJECTED with S3's reason (%d, \"%s\")",
		      r, why_sig);
		r = fetch_cdn_range(f, url, NULL, 0, 100, buf, &got, &total, why_anon,
				    sizeof(why_anon));
		CHECK(r == -EKEYREJECTED && !strncmp(why_anon, "HTTP 403: AccessDenied: ", 24),
		      "S3: an unsigned GET is refused: -EKEYREJECTED with S3's reason (%d, \"%s\")",
		      r, why_anon);
		CHECK(!strncmp(why_sig, "HTTP 403: SignatureDoesNotMatch: ", 33),
		      "S3: the first refusal's reason is still its own after the second (\"%s\")",
		      why_sig);
		r = fetch_cdn_size(f, url, &wrong, &sz, why_sig, sizeof(why_sig));
		CHECK(r == -EKEYREJECTED &&
			      !strncmp(why_sig, "HTTP 403: SignatureDoesNotMatch: ", 33),
		      "S3: a refused HEAD gives S3's reason (%d, \"%s\")", r, why_sig);
		CHECK(!log_has(sk) && !(usk && log_has(usk)), "S3: no secret key in the log");
	}
out:
	free(data);
	free(buf);
	fetch_free(f);
}

/* ---- Docker -------------------------------------------------------------- */

struct pipe_reader {
	FILE *fp;
	size_t bytes;
};

static ssize_t pipe_read(void *ctx, uint8_t *buf, size_t cap)
{
	struct pipe_reader *p = ctx;
	size_t n = fread(buf, 1, cap, p->fp);

	if (!n && ferror(p->fp))
		return -EIO;
	p->bytes += n;
	return (ssize_t)n;
}

static void test_docker(void)
{
	const char *sock = env("DOCKER_SOCK");
	const char *image = "azaion-test/busybox:latest";
	struct fetch *f = new_fetch(NULL, 20000, 2);
	char *loaded = NULL, *msg = NULL, cmd[1024];
	struct pipe_reader pr = {0};
	int r, st;

	if (!sock || !f)
		goto out;
	r = fetch_docker_image_exists(f, sock, image);
	CHECK(r == 0, "docker: %s is present (%d)", image, r);
	r = fetch_docker_image_exists(f, sock, "azaion-test/no-such-image:latest");
	CHECK(r == -ENOENT, "docker: a missing image: -ENOENT (%d)", r);

	snprintf(cmd, sizeof(cmd), "/usr/bin/docker -H 'unix://%s' save %s", sock, image);
	pr.fp = popen(cmd, "r");
	if (!pr.fp) {
		CHECK(0, "docker save runs");
		goto out;
	}
	r = fetch_docker_load(f, sock, pipe_read, &pr, &loaded, &msg);
	st = pclose(pr.fp);
	CHECK(st == 0 && pr.bytes > 100000, "docker save made an archive (%zu bytes)", pr.bytes);
	CHECK(r == 0 && loaded && strstr(loaded, image) && !msg,
	      "docker: load of a streamed archive (%d, \"%s\")", r, loaded ? loaded : "");
	free(loaded);
	loaded = NULL;

	{
		static uint8_t junk[200000];
		struct mem_reader mr = {.data = junk, .len = sizeof(junk)};

		memset(junk, 'g', sizeof(junk));
		r = fetch_docker_load(f, sock, mem_read, &mr, &loaded, &msg);
		CHECK(r == -EIO && msg && *msg && !loaded,
		      "docker: load of garbage fails with Docker's words (%d, \"%s\")", r,
		      msg ? msg : "");
		free(msg);
		msg = NULL;
	}
out:
	free(loaded);
	free(msg);
	fetch_free(f);
}

/* ---- transport policy (docs/trust.md 5) --------------------------------- */

static void test_url_policy(void)
{
	static const struct {
		const char *url;
		int want;
		const char *why; /* a part of the reason, for refusals */
	} cases[] = {
		{"https://api.azaion.com", 0, NULL},
		{"https://192.0.2.1:8443/x", 0, NULL},
		{"http://127.0.0.1:8080", 0, NULL},
		{"http://127.9.8.7", 0, NULL},
		{"http://localhost:1234/api", 0, NULL},
		{"HTTP://LOCALHOST", 0, NULL},
		{"http://[::1]:80", 0, NULL},
		{"http://[::ffff:127.0.0.1]:80", 0, NULL},
		{"http://192.0.2.1:8080", -EPERM, "'192.0.2.1' is not a loopback address"},
		{"http://10.0.0.1", -EPERM, "use https://"},
		{"http://[fd00::2]:80", -EPERM, "not a loopback address"},
		{"http://128.0.0.1", -EPERM, "not a loopback address"},
		{"http://no-such-host.invalid", -EPERM, "cannot resolve"},
		{"ftp://127.0.0.1", -EINVAL, "neither https:// nor http://"},
		{"not a url", -EINVAL, "is not a URL"},
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char *why = NULL;
		int r = fetch_url_allowed(cases[i].url, &why);

		CHECK(r == cases[i].want &&
			      (!cases[i].why || (why && strstr(why, cases[i].why) != NULL)),
		      "url policy: %s -> %d (%s)", cases[i].url, r, why ? why : "allowed");
		free(why);
	}
}

int main(void)
{
	const char *ca = env("STACK_CA");

	test_url_policy();
	test_multipart();
	test_odd_servers();
	test_closed_port();
	if (ca) {
		test_api(ca);
		test_chunk_hashes(ca);
		test_nginx(ca);
		test_tls(ca);
		test_s3(ca);
	}
	test_docker();
	free(log_text);
	return check_done();
}
