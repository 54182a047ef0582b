/*
 * fuzz_rest.c - the side endpoint's HTTP input: a whole request (request
 * line, headers, body: JSON for F1/F2/F4, multipart for F3) written to two
 * real endpoints (rest_new, libmicrohttpd and all) running in this process
 * over a daemon with no API, no CDN and no TPM reachable, so every call
 * fails fast. Each input goes to both, so that every door of docs/trust.md
 * 2 sees it: loopback TCP with a bearer token (FUZZ_TOKEN), rest_hosts and
 * F3 switched on; and a unix: socket whose peer check runs for this
 * process's own group, with F3 off. The corpus carries the token, Host
 * headers of every form, content types, Origins. The answer is read to
 * its end; ASan and UBSan judge what the endpoint did with the bytes.
 */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <grp.h>
#include <time.h>
#include <netinet/in.h>
#include <unistd.h>

#include "fetch/fetch.h"
#include "fs/catalog.h"
#include "fs/config.h"
#include "fs/device.h"
#include "fs/keys.h"
#include "fs/log.h"
#include "fs/rest.h"
#include "fs/session.h"
#include "fs/store.h"
#include "tests/fuzz/fuzz.h"

/* The token the corpus's requests carry. */
#define FUZZ_TOKEN "fuzz-token-0123456789abcdef"

static struct sockaddr_in fuzz_addr;
static struct sockaddr_un fuzz_unix = {.sun_family = AF_UNIX};

static void fuzz_set(struct config *c, const char *key, const char *value)
{
	char *msg = NULL;

	if (config_set(c, key, value, "fuzz", &msg) < 0) {
		fprintf(stderr, "fuzz_rest: %s\n", msg ? msg : key);
		abort();
	}
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	static char dir[] = "/tmp/fuzz-rest.XXXXXX";
	struct fetch_opts fo = {.timeout_ms = 1000, .connect_timeout_ms = 500, .max_retries = 0};
	struct rest_deps rd = {0};
	struct config *c = NULL, *cu = NULL;
	struct fetch *f = NULL;
	struct session *s = NULL;
	struct device *d = NULL;
	struct store *st = NULL;
	struct keys *keys = NULL;
	struct src *src = NULL;
	char *msg = NULL;
	struct catalog *cat = NULL;
	struct rest *r = NULL, *ru = NULL;
	struct group *gr;
	char path[256], listen[160];
	FILE *tf;

	log_init("fuzz", LOG_ERR);
	if (!mkdtemp(dir) || config_new(&c) < 0 || config_new(&cu) < 0)
		abort();
	/* TCP on loopback, as the endpoint is deployed; a port the kernel picks. */
	{
		socklen_t sl = sizeof(fuzz_addr);
		int probe = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

		fuzz_addr.sin_family = AF_INET;
		fuzz_addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		if (probe < 0 ||
		    bind(probe, (struct sockaddr *)&fuzz_addr, sizeof(fuzz_addr)) < 0 ||
		    getsockname(probe, (struct sockaddr *)&fuzz_addr, &sl) < 0)
			abort();
		close(probe);
	}
	snprintf(listen, sizeof(listen), "127.0.0.1:%u", ntohs(fuzz_addr.sin_port));
	snprintf(path, sizeof(path), "%s/state", dir);
	fuzz_set(c, "api_url", "https://127.0.0.1:1");
	fuzz_set(c, "cdn_url", "https://127.0.0.1:1");
	fuzz_set(c, "tpm", "off");
	fuzz_set(c, "state_dir", path);
	fuzz_set(c, "cache_max", "0");
	fuzz_set(c, "memory_cache", "4M");
	fuzz_set(c, "io_timeout", "1");
	fuzz_set(c, "rest_listen", listen);
	fuzz_set(c, "rest_hosts", "loader, fuzz.example");
	fuzz_set(c, "rest_upload", "true");
	snprintf(path, sizeof(path), "%s/token", dir);
	tf = fopen(path, "w");
	if (!tf || fputs(FUZZ_TOKEN "\n", tf) < 0 || fclose(tf) != 0 || chmod(path, 0600) < 0)
		abort();
	fuzz_set(c, "rest_token_file", path);
	snprintf(path, sizeof(path), "%s/images.enc", dir);
	fuzz_set(c, "images_archive", path);
	snprintf(path, sizeof(path), "%s/docker.sock", dir);
	fuzz_set(c, "docker_socket", path);
	snprintf(path, sizeof(path), "%s/state", dir);
	if (mkdir(path, 0700) < 0 || fetch_new(&fo, &f) < 0 || session_new(c, f, &s, NULL) < 0 ||
	    device_new(c, s, &d, NULL) < 0 || keys_new(c, s, d, &keys, &msg) < 0 ||
	    src_cdn_new(f, &src) < 0 || store_new(c, src, keys, &st, NULL) < 0 ||
	    catalog_new(c, s, store_probe, st, &cat) < 0)
		abort();
	rd.c = c;
	rd.mountpoint = dir;
	rd.f = f;
	rd.s = s;
	rd.d = d;
	rd.cat = cat;
	rd.st = st;
	if (rest_new(&rd, &r) < 0 || rest_start(r) < 0)
		abort();
	/* The unix: door: the same daemon, another configuration. */
	gr = getgrgid(getegid());
	snprintf(fuzz_unix.sun_path, sizeof(fuzz_unix.sun_path), "%s/rest.sock", dir);
	snprintf(listen, sizeof(listen), "unix:%s", fuzz_unix.sun_path);
	fuzz_set(cu, "api_url", "https://127.0.0.1:1");
	fuzz_set(cu, "tpm", "off");
	snprintf(path, sizeof(path), "%s/state", dir);
	fuzz_set(cu, "state_dir", path);
	fuzz_set(cu, "rest_listen", listen);
	fuzz_set(cu, "rest_group", gr ? gr->gr_name : "root");
	snprintf(path, sizeof(path), "%s/images.enc", dir);
	fuzz_set(cu, "images_archive", path);
	snprintf(path, sizeof(path), "%s/docker.sock", dir);
	fuzz_set(cu, "docker_socket", path);
	rd.c = cu;
	if (rest_new(&rd, &ru) < 0 || rest_start(ru) < 0)
		abort();
	/* Everything lives until the process ends. */
	return 0;
}

static int fuzz_connect(const struct sockaddr *sa, socklen_t len)
{
	int fd;

	fd = socket(sa->sa_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		abort();
	if (connect(fd, sa, len) < 0)
		abort();
	return fd;
}

static long long fuzz_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* One request to one endpoint, its answer read to the end. */
static void fuzz_one(const struct sockaddr *sa, socklen_t len, const uint8_t *data, size_t size)
{
	struct pollfd p;
	char buf[4096];
	size_t off = 0;
	long long deadline;
	int fd;

	fd = fuzz_connect(sa, len);
	while (off < size) {
		ssize_t n = send(fd, data + off, size - off, MSG_NOSIGNAL);

		if (n <= 0)
			break; /* the endpoint closed early: a refusal */
		off += (size_t)n;
	}
	shutdown(fd, SHUT_WR);
	p.fd = fd;
	p.events = POLLIN;
	/*
	 * The endpoint must answer or close. Every call behind it fails within
	 * io_timeout (1 s); 30 s leaves room for a loaded machine and still
	 * catches a connection held open (the endpoint's idle limit is 300 s).
	 * libFuzzer's SIGALRM (its -timeout watchdog) interrupts poll now and
	 * then: that is no answer of the endpoint, so the wait goes on.
	 */
	deadline = fuzz_now_ms() + 30000;
	for (;;) {
		long long left = deadline - fuzz_now_ms();
		ssize_t n;
		int k;

		if (left <= 0) {
			fprintf(stderr, "fuzz_rest: no answer within 30 s\n");
			abort();
		}
		k = poll(&p, 1, (int)left);
		if (k < 0 && errno == EINTR)
			continue;
		if (k < 0) {
			fprintf(stderr, "fuzz_rest: poll: %s\n", strerror(errno));
			abort();
		}
		if (k == 0)
			continue;
		n = recv(fd, buf, sizeof(buf), 0);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
	}
	close(fd);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	fuzz_one((struct sockaddr *)&fuzz_addr, sizeof(fuzz_addr), data, size);
	fuzz_one((struct sockaddr *)&fuzz_unix, sizeof(fuzz_unix), data, size);
	return 0;
}
