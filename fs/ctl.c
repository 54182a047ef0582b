/*
 * ctl.c - azaionctl, the operator's tool: publishes models in either
 * format, prints the hardware string, and talks to the daemon's side
 * endpoint. Every bad input gets one line on stderr and a non-zero exit.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "crypto/crypto.h"
#include "fetch/fetch.h"
#include "fs/config.h"
#include "fs/hw.h"
#include "fs/log.h"
#include "fs/names.h"
#include "fs/publish.h"
#include "fs/session.h"

#define CTL_USAGE                                                                          \
	"usage: azaionctl [-c CONFIG] [-o key=value]... [--json] [-v] COMMAND [ARGS]\n"   \
	"commands:\n"                                                                      \
	"  publish [--format 1|2] [--name NAME] [--folder F] [--shift N] [--out DIR] FILE\n" \
	"          encrypt and split a model; without --out, upload it to the CDN and\n"     \
	"          the Resource API with the configured credentials\n"                        \
	"  hw      print the hardware string and its hw_hash\n"

struct ctl {
	struct config *config;
	int json;
	int verbose;
};

static int ctl_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int ctl_error(const char *fmt, ...)
{
	va_list ap;

	fputs("azaionctl: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	return 1;
}

/* A fetch and a logged-in session from the configuration. */
static int ctl_session(struct ctl *ctl, struct fetch **ret_fetch, struct session **ret_session)
{
	struct fetch_opts fo = {
		.ca_file = ctl->config->ca_file,
		.timeout_ms = ctl->config->io_timeout * 1000,
		.connect_timeout_ms = 10000,
		.max_retries = 5,
		.log = log_sink,
	};
	struct fetch *f = NULL;
	struct session *s = NULL;
	int r;

	r = fetch_new(&fo, &f);
	if (r < 0)
		return ctl_error("cannot set up HTTP: %s", strerror(-r));
	r = session_new(ctl->config, f, &s);
	if (r < 0) {
		fetch_free(f);
		return ctl_error("cannot start a session: %s", strerror(-r));
	}
	r = session_login(s);
	if (r < 0) {
		session_free(s);
		fetch_free(f);
		if (r == -ENOKEY)
			return ctl_error("login to %s: no credentials (set credentials = FILE)",
					 ctl->config->api_url);
		if (r == -EACCES)
			return ctl_error("login to %s: the API refused the credentials",
					 ctl->config->api_url);
		return ctl_error("login to %s failed: %s", ctl->config->api_url, strerror(-r));
	}
	*ret_fetch = f;
	*ret_session = s;
	return 0;
}

/* ---- publish ------------------------------------------------------------ */

struct ctl_progress {
	const char *name;
	int tty;
	struct timespec start;
	int last_pct;
};

static double ctl_elapsed(const struct timespec *start)
{
	struct timespec now;

	clock_gettime(CLOCK_MONOTONIC, &now);
	return (double)(now.tv_sec - start->tv_sec) + (now.tv_nsec - start->tv_nsec) / 1e9;
}

static void ctl_progress(void *ctx, uint64_t done, uint64_t total)
{
	struct ctl_progress *p = ctx;
	int pct = total ? (int)(done * 100 / total) : 100;
	double secs;
	char bar[31];

	if (!p->tty || pct == p->last_pct)
		return;
	p->last_pct = pct;
	secs = ctl_elapsed(&p->start);
	memset(bar, ' ', 30);
	memset(bar, '#', (size_t)pct * 30 / 100);
	bar[30] = '\0';
	fprintf(stderr, "\r%s [%s] %3d%% %.1f MB/s", p->name, bar, pct,
		secs > 0 ? (double)done / 1e6 / secs : 0.0);
	if (done >= total)
		fputc('\n', stderr);
	fflush(stderr);
}

static ssize_t ctl_read_fd(void *ctx, uint8_t *buf, size_t cap)
{
	int fd = *(int *)ctx;
	ssize_t n;

	do
		n = read(fd, buf, cap);
	while (n < 0 && errno == EINTR);
	return n < 0 ? -errno : n;
}

static int ctl_resource_key(const struct config *c, uint8_t key[CRYPTO_KEY_SIZE])
{
	char *secret = NULL, *msg = NULL;
	size_t len = 0;
	int r;

	if (!c->legacy_resource_secret_file) {
		f1_aes_key(F1_DEFAULT_RESOURCE_SECRET, strlen(F1_DEFAULT_RESOURCE_SECRET), key);
		return 0;
	}
	r = config_read_secret_file(c->legacy_resource_secret_file, 1, &secret, &len, &msg);
	if (r < 0) {
		ctl_error("legacy_resource_secret_file: %s", msg ? msg : strerror(-r));
		free(msg);
		return r;
	}
	f1_aes_key(secret, len, key);
	secmem_free(secret);
	return 0;
}

static int ctl_publish(struct ctl *ctl, int argc, char **argv)
{
	static const struct option opts[] = {
		{ "format", required_argument, NULL, 'f' },
		{ "name", required_argument, NULL, 'n' },
		{ "folder", required_argument, NULL, 'F' },
		{ "shift", required_argument, NULL, 's' },
		{ "out", required_argument, NULL, 'O' },
		{ NULL, 0, NULL, 0 },
	};
	struct publish_req req = { 0 };
	struct publish_target target = { 0 };
	struct publish_result res;
	struct ctl_progress progress = { 0 };
	struct session *session = NULL;
	struct fetch *fetch = NULL;
	uint8_t *resource_key = NULL;
	const char *out_dir = NULL, *name = NULL, *path;
	char *msg = NULL, *path_copy = NULL;
	struct stat st;
	int format = 1, shift = 0, fd = -1, c, rc = 1, r;
	char *end;

	optind = 1;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case 'f':
			format = (int)strtol(optarg, &end, 10);
			if (*end || (format != 1 && format != 2))
				return ctl_error("--format: expected 1 or 2, got '%s'", optarg);
			break;
		case 'n':
			name = optarg;
			break;
		case 'F':
			if (!names_valid(optarg))
				return ctl_error("--folder: '%s' is not a folder name", optarg);
			free(ctl->config->folder);
			ctl->config->folder = strdup(optarg);
			break;
		case 's':
			shift = (int)strtol(optarg, &end, 10);
			if (*end || shift < F2_SHIFT_MIN || shift > F2_SHIFT_MAX)
				return ctl_error("--shift: expected %d to %d, got '%s'",
						 F2_SHIFT_MIN, F2_SHIFT_MAX, optarg);
			break;
		case 'O':
			out_dir = optarg;
			break;
		default:
			fputs(CTL_USAGE, stderr);
			return 2;
		}
	}
	if (optind != argc - 1)
		return ctl_error("publish: expected one model file (see azaionctl --help)");
	path = argv[optind];
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return ctl_error("%s: %s", path, strerror(errno));
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		ctl_error("%s: not a regular file", path);
		goto out;
	}
	if (!name) {
		path_copy = strdup(path);
		name = path_copy ? basename(path_copy) : path;
	}
	if (!names_valid(name)) {
		ctl_error("'%s' is not a resource name: 1 to 255 bytes, no '/', not . or ..", name);
		goto out;
	}
	if (out_dir) {
		if (stat(out_dir, &st) < 0 || !S_ISDIR(st.st_mode)) {
			ctl_error("--out: %s is not a folder", out_dir);
			goto out;
		}
		target.out_dir = out_dir;
	} else {
		if (ctl_session(ctl, &fetch, &session) != 0)
			goto out;
		target.fetch = fetch;
		target.session = session;
	}
	if (format == 1) {
		resource_key = secmem_alloc(CRYPTO_KEY_SIZE);
		if (!resource_key) {
			ctl_error("cannot lock memory for the key: %s", strerror(errno));
			goto out;
		}
		if (ctl_resource_key(ctl->config, resource_key) < 0)
			goto out;
	}
	req.name = name;
	req.folder = ctl->config->folder;
	req.format = format;
	req.chunk_shift = (unsigned)shift;
	req.resource_key = resource_key;
	req.src = ctl_read_fd;
	req.src_ctx = &fd;
	fstat(fd, &st);
	req.size = (uint64_t)st.st_size;
	progress.name = name;
	progress.tty = isatty(STDERR_FILENO);
	progress.last_pct = -1;
	clock_gettime(CLOCK_MONOTONIC, &progress.start);
	req.progress = ctl_progress;
	req.progress_ctx = &progress;

	r = publish_model(&req, &target, &res, &msg);
	if (r < 0) {
		ctl_error("publish %s: %s", name, msg ? msg : strerror(-r));
		goto out;
	}
	if (ctl->json)
		printf("{\"name\": \"%s\", \"format\": %d, \"size\": %llu, \"big_size\": %llu, "
		       "\"sha256\": \"%s\"}\n",
		       name, format, (unsigned long long)res.size,
		       (unsigned long long)res.big_size, res.sha256);
	else
		printf("published %s: format %d, %llu bytes, big part %llu bytes, sha256 %s\n",
		       name, format, (unsigned long long)res.size,
		       (unsigned long long)res.big_size, res.sha256);
	rc = 0;
out:
	secmem_free(resource_key);
	session_free(session);
	fetch_free(fetch);
	free(path_copy);
	free(msg);
	if (fd >= 0)
		close(fd);
	return rc;
}

/* ---- hw ----------------------------------------------------------------- */

static int ctl_hw(struct ctl *ctl)
{
	char hash[CRYPTO_KS_LEN + 1];
	char *hw = NULL;
	int r;

	r = hw_string(ctl->config->hardware_id, &hw);
	if (r < 0)
		return ctl_error("cannot read the hardware string: %s", strerror(-r));
	f1_hw_hash(hw, hash);
	if (ctl->json) {
		json_t *o = json_pack("{s:s, s:s}", "hardware", hw, "hw_hash", hash);
		char *text = o ? json_dumps(o, 0) : NULL;

		if (text)
			puts(text);
		free(text);
		json_decref(o);
	} else {
		printf("hardware: %s\nhw_hash:  %s\n", hw, hash);
	}
	free(hw);
	return 0;
}

/* ---- main --------------------------------------------------------------- */

static int ctl_load_config(struct ctl *ctl, const char *path, char **options, int noptions)
{
	char *msg = NULL;
	int r;

	r = config_new(&ctl->config);
	if (r < 0)
		return ctl_error("out of memory");
	if (!path && access(CONFIG_DEFAULT_PATH, R_OK) == 0)
		path = CONFIG_DEFAULT_PATH;
	if (path) {
		r = config_load_file(ctl->config, path, &msg);
		if (r < 0)
			goto fail;
	}
	for (int i = 0; i < noptions; i++) {
		char *eq = strchr(options[i], '=');

		if (!eq) {
			ctl_error("-o %s: expected key=value", options[i]);
			return -EINVAL;
		}
		*eq = '\0';
		r = config_set(ctl->config, options[i], eq + 1, "-o", &msg);
		*eq = '=';
		if (r < 0)
			goto fail;
	}
	/*
	 * A command reports its own failure in one line; the modules' logs
	 * would repeat it, so they show only with -v.
	 */
	log_set_level(ctl->verbose ? ctl->config->log_level : LOG_CRIT);
	return 0;
fail:
	ctl_error("%s", msg ? msg : strerror(-r));
	free(msg);
	return r;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "config", required_argument, NULL, 'c' },
		{ "option", required_argument, NULL, 'o' },
		{ "json", no_argument, NULL, 'j' },
		{ "verbose", no_argument, NULL, 'v' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct ctl ctl = { 0 };
	const char *config_path = NULL;
	char **options;
	int noptions = 0, c, rc;

	log_init("azaionctl", LOG_WARNING);
	options = calloc((size_t)argc, sizeof(*options));
	if (!options)
		return ctl_error("out of memory");
	/* "+": stop at the command, whose options are its own. */
	while ((c = getopt_long(argc, argv, "+c:o:jvh", opts, NULL)) != -1) {
		switch (c) {
		case 'c':
			config_path = optarg;
			break;
		case 'o':
			options[noptions++] = optarg;
			break;
		case 'j':
			ctl.json = 1;
			break;
		case 'v':
			ctl.verbose = 1;
			break;
		case 'h':
			fputs(CTL_USAGE, stdout);
			free(options);
			return 0;
		default:
			fputs(CTL_USAGE, stderr);
			free(options);
			return 2;
		}
	}
	if (optind >= argc) {
		fputs(CTL_USAGE, stderr);
		free(options);
		return 2;
	}
	if (ctl_load_config(&ctl, config_path, options, noptions) < 0) {
		rc = 1;
		goto out;
	}
	if (!strcmp(argv[optind], "publish"))
		rc = ctl_publish(&ctl, argc - optind, argv + optind);
	else if (!strcmp(argv[optind], "hw"))
		rc = ctl_hw(&ctl);
	else
		rc = ctl_error("unknown command '%s' (see azaionctl --help)", argv[optind]);
out:
	config_free(ctl.config);
	free(options);
	return rc;
}
