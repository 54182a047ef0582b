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
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "crypto/crypto.h"
#include "fetch/fetch.h"
#include "fs/config.h"
#include "fs/format.h"
#include "fs/device.h"
#include "fs/hw.h"
#include "fs/keys.h"
#include "fs/log.h"
#include "fs/names.h"
#include "fs/publish.h"
#include "fs/session.h"

#define CTL_USAGE                                                                                 \
	"usage: azaionctl [-c CONFIG] [-o key=value]... [--json] [-v] COMMAND [ARGS]\n"           \
	"commands:\n"                                                                             \
	"  publish [--format 1|2] [--name NAME] [--folder F] [--shift N] [--out DIR] FILE\n"      \
	"          encrypt and split a model; without --out, upload it to the CDN and\n"          \
	"          the Resource API with the configured credentials\n"                            \
	"  hw      print the hardware string and its hw_hash\n"                                   \
	"  enroll  enrol this device's TPM anew (device key, sealed credentials, POST\n"          \
	"          /devices); credentials from the configured file, else from stdin\n"            \
	"          (\"email = ...\" and \"password = ...\" lines, or a prompt)\n"                 \
	"side endpoint (rest_listen of the configuration, or -o rest_listen=...):\n"              \
	"  login [--email E] [--password-file F]   F1: give the daemon credentials\n"             \
	"  load [--folder F] [--out FILE] NAME     F2: a model's plaintext to FILE or stdout\n"   \
	"  upload [--format 1|2] [--name N] [--folder F] FILE   F3: publish through the daemon\n" \
	"  unlock [--email E] [--password-file F] [--no-wait]   F4: load the Docker images\n"     \
	"  status  F5 and F6: the daemon's and the unlock's state\n"                              \
	"  health  F6: whether the daemon answers\n"                                              \
	"  Without --email/--password-file the configured credentials file is used, else\n"       \
	"  a prompt (or two lines on stdin: email, password).\n"

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
		return ctl_error("login to %s failed: %s", ctl->config->api_url, log_strerror(r));
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

static void ctl_progress_start(struct ctl_progress *p, const char *name, int tty)
{
	p->name = name;
	p->tty = tty;
	p->last_pct = -1;
	clock_gettime(CLOCK_MONOTONIC, &p->start);
}

/* --format's value: a format this build knows (format.h). */
static int ctl_format_arg(const char *arg, int *ret)
{
	char *end;
	long v = strtol(arg, &end, 10);

	if (*end || v < 1 || v > 99 || !format_get((int)v))
		return ctl_error("--format: expected 1 or 2, got '%s'", arg);
	*ret = (int)v;
	return 0;
}

/*
 * The model file of publish and upload: opened and a regular file, and
 * its resource name (name, else the file's base name) checked. *ret_name
 * may point into *ret_copy, which the caller frees, as it closes *ret_fd.
 */
static int ctl_model_open(const char *path, const char *name, int *ret_fd, struct stat *st,
			  const char **ret_name, char **ret_copy)
{
	char *copy = NULL;
	int fd;

	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return ctl_error("%s: %s", path, strerror(errno));
	if (fstat(fd, st) < 0 || !S_ISREG(st->st_mode)) {
		close(fd);
		return ctl_error("%s: not a regular file", path);
	}
	if (!name) {
		copy = strdup(path);
		name = copy ? basename(copy) : path;
	}
	if (!names_valid(name)) {
		ctl_error("'%s' is not a resource name: 1 to 255 bytes, no '/', not . or ..", name);
		free(copy);
		close(fd);
		return 1;
	}
	*ret_fd = fd;
	*ret_name = name;
	*ret_copy = copy;
	return 0;
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
	char *msg = NULL;
	int r = keys_resource_key(c, NULL, key, &msg);

	if (r < 0)
		ctl_error("%s", msg ? msg : strerror(-r));
	free(msg);
	return r;
}

static int ctl_publish(struct ctl *ctl, int argc, char **argv)
{
	static const struct option opts[] = {
		{"format", required_argument, NULL, 'f'}, {"name", required_argument, NULL, 'n'},
		{"folder", required_argument, NULL, 'F'}, {"shift", required_argument, NULL, 's'},
		{"out", required_argument, NULL, 'O'},	  {NULL, 0, NULL, 0},
	};
	struct publish_req req = {0};
	struct publish_target target = {0};
	struct publish_result res;
	struct ctl_progress progress = {0};
	struct session *session = NULL;
	struct fetch *fetch = NULL;
	uint8_t *resource_key = NULL;
	const char *out_dir = NULL, *name = NULL;
	char *msg = NULL, *path_copy = NULL;
	struct stat st;
	uint64_t size;
	int format = 1, shift = 0, fd = -1, c, rc = 1, r;
	char *end;

	optind = 1;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case 'f':
			if (ctl_format_arg(optarg, &format))
				return 1;
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
	if (ctl_model_open(argv[optind], name, &fd, &st, &name, &path_copy))
		return 1;
	size = (uint64_t)st.st_size;
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
	/* A format without keys of its own encrypts with the shared resource key. */
	if (!format_get(format)->file_key) {
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
	req.size = size;
	ctl_progress_start(&progress, name, isatty(STDERR_FILENO));
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
		       name, format, (unsigned long long)res.size, (unsigned long long)res.big_size,
		       res.sha256);
	else
		printf("published %s: format %d, %llu bytes, big part %llu bytes, sha256 %s\n",
		       name, format, (unsigned long long)res.size, (unsigned long long)res.big_size,
		       res.sha256);
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

/* ---- enroll ------------------------------------------------------------- */

#define CTL_LINE_MAX 1024

/* One line of stdin into buf (secmem, cap bytes), without its line end; -1 at EOF. */
static int ctl_read_line(const char *prompt, int echo, char *buf, size_t cap)
{
	struct termios old, quiet;
	int tty = isatty(STDIN_FILENO), hidden = 0;
	size_t n = 0;
	int c;

	if (tty) {
		fputs(prompt, stderr);
		fflush(stderr);
		if (!echo && tcgetattr(STDIN_FILENO, &old) == 0) {
			quiet = old;
			quiet.c_lflag &= ~(tcflag_t)ECHO;
			hidden = tcsetattr(STDIN_FILENO, TCSAFLUSH, &quiet) == 0;
		}
	}
	/* Unbuffered reads: stdio would keep a copy of the password in its buffer. */
	for (;;) {
		char ch;
		ssize_t r = read(STDIN_FILENO, &ch, 1);

		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0) {
			c = EOF;
			break;
		}
		c = (unsigned char)ch;
		if (c == '\n')
			break;
		if (n + 1 < cap)
			buf[n++] = (char)c;
	}
	if (hidden) {
		tcsetattr(STDIN_FILENO, TCSAFLUSH, &old);
		fputc('\n', stderr);
	}
	while (n > 0 && buf[n - 1] == '\r')
		n--;
	buf[n] = '\0';
	return c == EOF && n == 0 ? -1 : 0;
}

/* "key = value" -> value when the line starts with key, else the whole line. */
static const char *ctl_value(const char *line, const char *key)
{
	size_t k = strlen(key);
	const char *p = line;

	if (strncmp(p, key, k) != 0)
		return line;
	p += k;
	while (*p == ' ' || *p == '\t')
		p++;
	if (*p != '=')
		return line;
	p++;
	while (*p == ' ' || *p == '\t')
		p++;
	return p;
}

static int ctl_enroll(struct ctl *ctl)
{
	struct fetch_opts fo = {
		.ca_file = ctl->config->ca_file,
		.timeout_ms = ctl->config->io_timeout * 1000,
		.connect_timeout_ms = 10000,
		.max_retries = 5,
		.log = log_sink,
	};
	char *email = NULL, *password = NULL, id[160], reason[512];
	struct session *s = NULL;
	struct device *d = NULL;
	struct fetch *f = NULL;
	int r, rc = 1;

	if (ctl->config->tpm == CONFIG_TPM_OFF)
		return ctl_error("enroll: tpm = off in the configuration");
	r = fetch_new(&fo, &f);
	if (r < 0)
		return ctl_error("cannot set up HTTP: %s", strerror(-r));
	r = session_new(ctl->config, f, &s);
	if (r < 0) {
		ctl_error("cannot start a session: %s", strerror(-r));
		goto out;
	}
	if (session_has_credentials(s)) {
		r = session_login(s);
	} else {
		email = secmem_alloc(CTL_LINE_MAX);
		password = secmem_alloc(CTL_LINE_MAX);
		if (!email || !password) {
			ctl_error("cannot lock memory for the credentials: %s", strerror(errno));
			goto out;
		}
		if (ctl_read_line("email: ", 1, email, CTL_LINE_MAX) < 0 ||
		    ctl_read_line("password: ", 0, password, CTL_LINE_MAX) < 0 ||
		    !*ctl_value(email, "email") || !*ctl_value(password, "password")) {
			ctl_error("enroll: no credentials (configure credentials = FILE, or give "
				  "the email and the password on stdin)");
			goto out;
		}
		r = session_set_credentials(s, ctl_value(email, "email"),
					    ctl_value(password, "password"));
	}
	if (r < 0 || !session_logged_in(s)) {
		ctl_error("login to %s failed: %s", ctl->config->api_url,
			  r == -EACCES ? "the API refused the credentials"
				       : log_strerror(r ? r : -EIO));
		goto out;
	}
	/* A TPM wait says what it waits for (tpm/) even without -v. */
	if (!ctl->verbose)
		log_set_level(LOG_WARNING);
	r = device_new(ctl->config, s, &d);
	if (!ctl->verbose)
		log_set_level(LOG_CRIT);
	if (r == -EINTR) {
		ctl_error("enroll: stopped while waiting for the TPM at %s", ctl->config->tpm_tcti);
		goto out;
	}
	if (r < 0) {
		ctl_error("enroll: no TPM at %s", ctl->config->tpm_tcti);
		goto out;
	}
	if (!strcmp(device_status(d, reason, sizeof(reason)), "absent")) {
		ctl_error("enroll: %s", reason);
		goto out;
	}
	r = device_enroll(d);
	if (r == 0)
		r = device_id(d, id, sizeof(id));
	if (r < 0) {
		device_status(d, reason, sizeof(reason));
		ctl_error("enroll failed: %s", *reason ? reason : strerror(-r));
		goto out;
	}
	if (ctl->json)
		printf("{\"device_id\": \"%s\"}\n", id);
	else
		printf("enrolled: device %s, keys in %s\n", id, ctl->config->state_dir);
	rc = 0;
out:
	device_free(d);
	session_free(s);
	fetch_free(f);
	secmem_free(email);
	secmem_free(password);
	return rc;
}

/* ---- the side endpoint's client ------------------------------------------ */

#define CTL_REST_TIMEOUT_MS (60u * 1000)
#define CTL_REST_LONG_MS (3600u * 1000) /* load and upload of big models */
#define CTL_ERR_BODY_MAX (64 * 1024)

struct ctl_rest {
	struct fetch *f;
	char *base;	    /* http://host:port or http://localhost */
	const char *socket; /* unix:PATH's path, or NULL */
	char *token;	    /* rest_token_file's token, secmem; NULL: none */
};

/*
 * The daemon is on this machine: it is called localhost whatever address
 * it listens on, a name its Host rule always accepts (docs/trust.md 2).
 */
static const char *const ctl_rest_headers[] = {"Host: localhost", NULL};

/* The bearer token of rest_token_file (readable by root only, as a rule). */
static int ctl_rest_token(struct ctl *ctl, struct ctl_rest *cr)
{
	const char *path = ctl->config->rest_token_file;
	char *msg = NULL;
	size_t len = 0;
	int r;

	r = config_read_secret_file(path, 1, &cr->token, &len, &msg);
	if (r < 0) {
		ctl_error("rest_token_file: %s%s", msg ? msg : strerror(-r),
			  r == -EACCES && geteuid() != 0 ? " (run azaionctl as root)" : "");
		free(msg);
		return r;
	}
	while (len > 0 && strchr("\r\n \t", cr->token[len - 1]))
		cr->token[--len] = '\0';
	return 0;
}

static int ctl_rest_open(struct ctl *ctl, struct ctl_rest *cr)
{
	struct fetch_opts fo = {
		.timeout_ms = CTL_REST_TIMEOUT_MS,
		.connect_timeout_ms = 5000,
		.max_retries = 2,
		.log = log_sink,
	};
	const char *l = ctl->config->rest_listen, *colon;
	int r;

	memset(cr, 0, sizeof(*cr));
	if (!strncmp(l, "unix:", 5)) {
		cr->socket = l + 5;
		cr->base = strdup("http://localhost");
	} else {
		colon = strrchr(l, ':');
		/* A wildcard address is reached on loopback. */
		if (!strncmp(l, "0.0.0.0:", 8) || colon == l)
			r = asprintf(&cr->base, "http://127.0.0.1%s", colon);
		else if (!strncmp(l, "[::]:", 5))
			r = asprintf(&cr->base, "http://[::1]%s", colon);
		else
			r = asprintf(&cr->base, "http://%s", l);
		if (r < 0)
			cr->base = NULL;
	}
	if (!cr->base)
		return ctl_error("out of memory");
	if (ctl->config->rest_token_file && ctl_rest_token(ctl, cr) < 0) {
		free(cr->base);
		return 1;
	}
	r = fetch_new(&fo, &cr->f);
	if (r < 0) {
		free(cr->base);
		secmem_free(cr->token);
		return ctl_error("cannot set up HTTP: %s", strerror(-r));
	}
	return 0;
}

static void ctl_rest_close(struct ctl_rest *cr)
{
	fetch_free(cr->f);
	free(cr->base);
	secmem_free(cr->token);
}

static const char *ctl_rest_where(struct ctl *ctl)
{
	return ctl->config->rest_listen;
}

/* The "detail" of an error answer, or the body's first line. */
static void ctl_rest_detail(const uint8_t *body, size_t len, char *out, size_t cap)
{
	json_t *doc = json_loadb((const char *)body, len, 0, NULL);
	const char *d = json_string_value(json_object_get(doc, "detail"));

	if (d)
		snprintf(out, cap, "%s", d);
	else
		snprintf(out, cap, "%.*s", (int)(len < 200 ? len : 200), (const char *)body);
	json_decref(doc);
}

/*
 * One buffered exchange: 0 and the parsed JSON answer for a 2xx; else one
 * line on stderr (or the answer on stdout with --json) and 1.
 */
static int ctl_rest_call(struct ctl *ctl, struct ctl_rest *cr, const char *cmd, const char *method,
			 const char *path, json_t *body, json_t **ret)
{
	struct fetch_request req = {
		.method = method,
		.unix_socket = cr->socket,
		.bearer = cr->token,
		.headers = ctl_rest_headers,
		.content_type = body ? "application/json" : NULL,
		.no_retry = strcmp(method, "GET") != 0,
	};
	struct fetch_response resp = {0};
	char *url = NULL, *text = NULL, detail[512];
	json_t *doc = NULL;
	int r, rc = 1;

	if (asprintf(&url, "%s%s", cr->base, path) < 0)
		return ctl_error("out of memory");
	if (body) {
		text = json_dumps(body, JSON_COMPACT);
		if (!text) {
			free(url);
			return ctl_error("out of memory");
		}
		req.body = text;
		req.body_len = strlen(text);
	}
	req.url = url;
	r = fetch_request(cr->f, &req, &resp);
	if (text) {
		crypto_wipe(text, strlen(text));
		free(text);
	}
	if (r < 0) {
		ctl_error("%s: the daemon does not answer on %s: %s", cmd, ctl_rest_where(ctl),
			  log_strerror(r));
		goto out;
	}
	if (resp.status < 200 || resp.status >= 300) {
		if (ctl->json) {
			fwrite(resp.body.data, 1, resp.body.len, stdout);
			putchar('\n');
		}
		ctl_rest_detail(resp.body.data, resp.body.len, detail, sizeof(detail));
		ctl_error("%s: HTTP %ld: %s", cmd, resp.status, detail);
		goto out;
	}
	doc = json_loadb((const char *)resp.body.data, resp.body.len, 0, NULL);
	if (!doc) {
		ctl_error("%s: the daemon's answer is not JSON", cmd);
		goto out;
	}
	if (ctl->json) {
		fwrite(resp.body.data, 1, resp.body.len, stdout);
		putchar('\n');
	}
	*ret = doc;
	rc = 0;
out:
	fetch_response_free(&resp);
	free(url);
	return rc;
}

/*
 * Email and password: --email and --password-file, else the configured
 * credentials file, else prompts (or stdin lines). Both secmem.
 */
static int ctl_rest_credentials(struct ctl *ctl, const char *email_opt, const char *pw_file,
				char **ret_email, char **ret_password)
{
	char *email = NULL, *password = NULL, *msg = NULL;
	size_t len;
	int r;

	if (!email_opt && !pw_file && ctl->config->credentials) {
		r = config_read_credentials(ctl->config->credentials, &email, &password, &msg);
		if (r < 0) {
			ctl_error("credentials: %s", msg ? msg : strerror(-r));
			free(msg);
			return 1;
		}
		*ret_email = email;
		*ret_password = password;
		return 0;
	}
	email = secmem_alloc(CTL_LINE_MAX);
	if (!email)
		return ctl_error("cannot lock memory for the credentials: %s", strerror(errno));
	if (email_opt)
		snprintf(email, CTL_LINE_MAX, "%s", email_opt);
	else if (ctl_read_line("email: ", 1, email, CTL_LINE_MAX) < 0 || !*email)
		goto fail_missing;
	if (pw_file) {
		r = config_read_secret_file(pw_file, 1, &password, &len, &msg);
		if (r < 0) {
			ctl_error("--password-file: %s", msg ? msg : strerror(-r));
			free(msg);
			secmem_free(email);
			return 1;
		}
		while (len > 0 && (password[len - 1] == '\n' || password[len - 1] == '\r'))
			password[--len] = '\0';
	} else {
		password = secmem_alloc(CTL_LINE_MAX);
		if (!password) {
			secmem_free(email);
			return ctl_error("cannot lock memory for the credentials: %s",
					 strerror(errno));
		}
		if (ctl_read_line("password: ", 0, password, CTL_LINE_MAX) < 0 || !*password)
			goto fail_missing;
	}
	*ret_email = email;
	*ret_password = password;
	return 0;
fail_missing:
	secmem_free(email);
	secmem_free(password);
	return ctl_error("no credentials: give --email and --password-file, configure "
			 "credentials = FILE, or type them");
}

/* The body of F1 and F4; its strings are wiped by ctl_rest_wipe_body. */
static json_t *ctl_rest_cred_body(const char *email, const char *password)
{
	return json_pack("{s:s, s:s}", "email", email, "password", password);
}

static void ctl_rest_wipe_body(json_t *body)
{
	json_t *v = json_object_get(body, "password");

	if (json_is_string(v))
		crypto_wipe((char *)json_string_value(v), json_string_length(v));
	json_decref(body);
}

static int ctl_rest_login_like(struct ctl *ctl, int argc, char **argv, int unlock)
{
	static const struct option opts[] = {
		{"email", required_argument, NULL, 'e'},
		{"password-file", required_argument, NULL, 'p'},
		{"no-wait", no_argument, NULL, 'n'},
		{NULL, 0, NULL, 0},
	};
	const char *email_opt = NULL, *pw_file = NULL, *cmd = unlock ? "unlock" : "login";
	char *email = NULL, *password = NULL;
	struct ctl_rest cr;
	json_t *body, *doc = NULL;
	int c, rc, wait = 1, polled = 0;

	optind = 1;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case 'e':
			email_opt = optarg;
			break;
		case 'p':
			pw_file = optarg;
			break;
		case 'n':
			if (!unlock)
				return ctl_error("login: --no-wait is for unlock");
			wait = 0;
			break;
		default:
			fputs(CTL_USAGE, stderr);
			return 2;
		}
	}
	if (optind != argc)
		return ctl_error("%s: unexpected argument '%s'", cmd, argv[optind]);
	if (ctl_rest_credentials(ctl, email_opt, pw_file, &email, &password))
		return 1;
	body = ctl_rest_cred_body(email, password);
	secmem_free(email);
	secmem_free(password);
	if (!body)
		return ctl_error("out of memory");
	if (ctl_rest_open(ctl, &cr)) {
		ctl_rest_wipe_body(body);
		return 1;
	}
	rc = ctl_rest_call(ctl, &cr, cmd, "POST", unlock ? "/unlock" : "/login", body, &doc);
	ctl_rest_wipe_body(body);
	if (rc == 0 && !unlock && !ctl->json)
		printf("logged in\n");
	if (rc == 0 && unlock) {
		const char *st = json_string_value(json_object_get(doc, "state"));
		struct ctl_progress p;

		ctl_progress_start(&p, "unlock", isatty(STDERR_FILENO));
		while (wait && st && strcmp(st, "ready") && strcmp(st, "error")) {
			json_t *s = NULL;
			int quiet = ctl->json;

			usleep(200 * 1000);
			ctl->json = 0; /* only the last answer is printed */
			rc = ctl_rest_call(ctl, &cr, cmd, "GET", "/unlock/status", NULL, &s);
			ctl->json = quiet;
			polled = 1;
			if (rc)
				break;
			json_decref(doc);
			doc = s;
			st = json_string_value(json_object_get(doc, "state"));
			if (json_integer_value(json_object_get(doc, "bytes_total")) > 0)
				ctl_progress(&p,
					     (uint64_t)json_integer_value(
						     json_object_get(doc, "bytes_done")),
					     (uint64_t)json_integer_value(
						     json_object_get(doc, "bytes_total")));
		}
		if (rc == 0 && ctl->json && polled) {
			char *t = json_dumps(doc, JSON_COMPACT);

			if (t)
				puts(t);
			free(t);
		}
		if (rc == 0 && st && !strcmp(st, "error")) {
			ctl_error("unlock failed: %s",
				  json_string_value(json_object_get(doc, "error")) ?: "no reason");
			rc = 1;
		} else if (rc == 0 && !ctl->json) {
			printf("unlock: %s\n", st ? st : "?");
		}
	}
	json_decref(doc);
	ctl_rest_close(&cr);
	return rc;
}

/* F2's answer: the first bytes are held back until the status is known. */
struct ctl_load_sink {
	int fd;
	uint8_t *head;
	size_t head_len;
	int flushed;
	int err;
	uint64_t total;
};

static int ctl_write_all(int fd, const uint8_t *p, size_t n)
{
	while (n) {
		ssize_t w = write(fd, p, n);

		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0)
			return -errno;
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

static int ctl_load_write(void *ctx, const uint8_t *data, size_t len)
{
	struct ctl_load_sink *s = ctx;
	int r;

	s->total += len;
	if (!s->flushed && s->head_len + len <= CTL_ERR_BODY_MAX) {
		memcpy(s->head + s->head_len, data, len);
		s->head_len += len;
		return 0;
	}
	if (!s->flushed) {
		r = ctl_write_all(s->fd, s->head, s->head_len);
		crypto_wipe(s->head, s->head_len);
		s->flushed = 1;
		if (r < 0) {
			s->err = r;
			return r;
		}
	}
	r = ctl_write_all(s->fd, data, len);
	if (r < 0)
		s->err = r;
	return r;
}

static int ctl_rest_load(struct ctl *ctl, int argc, char **argv)
{
	static const struct option opts[] = {
		{"folder", required_argument, NULL, 'F'},
		{"out", required_argument, NULL, 'O'},
		{NULL, 0, NULL, 0},
	};
	struct ctl_load_sink sink = {.fd = STDOUT_FILENO};
	struct fetch_request req = {.method = "POST",
				    .content_type = "application/json",
				    .no_retry = 1,
				    .timeout_ms = CTL_REST_LONG_MS,
				    .sink = ctl_load_write,
				    .sink_ctx = &sink};
	struct fetch_response resp = {0};
	const char *folder = ctl->config->folder, *out = NULL, *name;
	char *url = NULL, *text = NULL, *escaped = NULL, detail[512];
	struct ctl_rest cr;
	json_t *body;
	int c, r, rc = 1;

	optind = 1;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case 'F':
			folder = optarg;
			break;
		case 'O':
			out = optarg;
			break;
		default:
			fputs(CTL_USAGE, stderr);
			return 2;
		}
	}
	if (optind != argc - 1)
		return ctl_error("load: expected one model name (see azaionctl --help)");
	name = argv[optind];
	if (!names_valid(name))
		return ctl_error("load: '%s' is not a resource name", name);
	if (!out && isatty(STDOUT_FILENO))
		return ctl_error("load: stdout is a terminal; give --out FILE or redirect it");
	sink.head = secmem_alloc(CTL_ERR_BODY_MAX);
	if (!sink.head)
		return ctl_error("cannot lock memory: %s", strerror(errno));
	if (ctl_rest_open(ctl, &cr)) {
		secmem_free(sink.head);
		return 1;
	}
	if (out) {
		/* The model's plaintext: private to its owner. */
		sink.fd = open(out, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
		if (sink.fd < 0) {
			ctl_error("%s: %s", out, strerror(errno));
			goto out;
		}
	}
	escaped = names_url_escape(name);
	body = json_pack("{s:s, s:s}", "filename", name, "folder", folder);
	text = body ? json_dumps(body, JSON_COMPACT) : NULL;
	json_decref(body);
	if (!escaped || !text || asprintf(&url, "%s/load/%s", cr.base, escaped) < 0) {
		ctl_error("out of memory");
		goto out;
	}
	req.url = url;
	req.unix_socket = cr.socket;
	req.bearer = cr.token;
	req.headers = ctl_rest_headers;
	req.body = text;
	req.body_len = strlen(text);
	r = fetch_request(cr.f, &req, &resp);
	if (r < 0) {
		ctl_error("load %s: %s", name,
			  sink.err ? strerror(-sink.err)
			  : r == -EIO || r == -ECANCELED
				  ? "the transfer was cut short (see the daemon's log)"
				  : log_strerror(r));
		goto out;
	}
	if (resp.status != 200) {
		if (ctl->json) {
			fwrite(sink.head, 1, sink.head_len, stdout);
			putchar('\n');
		}
		ctl_rest_detail(sink.head, sink.head_len, detail, sizeof(detail));
		ctl_error("load %s: HTTP %ld: %s%s", name, resp.status, detail,
			  strstr(detail, "not logged in") ? "; run azaionctl login" : "");
		goto out;
	}
	if (!sink.flushed && ctl_write_all(sink.fd, sink.head, sink.head_len) < 0) {
		ctl_error("load %s: writing: %s", name, strerror(errno));
		goto out;
	}
	if (out && ctl->json)
		printf("{\"name\": \"%s\", \"size\": %llu}\n", name,
		       (unsigned long long)sink.total);
	else if (out)
		printf("loaded %s: %llu bytes to %s\n", name, (unsigned long long)sink.total, out);
	rc = 0;
out:
	if (out && sink.fd >= 0) {
		close(sink.fd);
		if (rc)
			unlink(out);
	}
	fetch_response_free(&resp);
	crypto_wipe(sink.head, CTL_ERR_BODY_MAX);
	secmem_free(sink.head);
	free(url);
	free(text);
	free(escaped);
	ctl_rest_close(&cr);
	return rc;
}

/* F3's multipart body, streamed: head, the file, tail. */
struct ctl_upload_body {
	char head[2048];
	char tail[128];
	size_t head_len, tail_len;
	int fd;
	uint64_t size, pos, total;
	struct ctl_progress progress;
};

static ssize_t ctl_upload_read(void *ctx, uint8_t *buf, size_t cap)
{
	struct ctl_upload_body *b = ctx;
	uint64_t end_head = b->head_len, end_file = end_head + b->size;
	size_t n;
	ssize_t k;

	if (b->pos < end_head) {
		n = (size_t)(end_head - b->pos) < cap ? (size_t)(end_head - b->pos) : cap;
		memcpy(buf, b->head + b->pos, n);
	} else if (b->pos < end_file) {
		n = end_file - b->pos < cap ? (size_t)(end_file - b->pos) : cap;
		do
			k = read(b->fd, buf, n);
		while (k < 0 && errno == EINTR);
		if (k < 0)
			return -errno;
		if (k == 0)
			return -EIO; /* the file shrank */
		n = (size_t)k;
		ctl_progress(&b->progress, b->pos + n - end_head, b->size);
	} else if (b->pos < b->total) {
		n = (size_t)(b->total - b->pos) < cap ? (size_t)(b->total - b->pos) : cap;
		memcpy(buf, b->tail + (b->pos - end_file), n);
	} else {
		return 0;
	}
	b->pos += n;
	return (ssize_t)n;
}

static int ctl_rest_upload(struct ctl *ctl, int argc, char **argv)
{
	static const struct option opts[] = {
		{"format", required_argument, NULL, 'f'},
		{"name", required_argument, NULL, 'n'},
		{"folder", required_argument, NULL, 'F'},
		{NULL, 0, NULL, 0},
	};
	struct ctl_upload_body b = {.fd = -1};
	struct fetch_request req = {.method = "POST",
				    .no_retry = 1,
				    .timeout_ms = CTL_REST_LONG_MS,
				    .body_reader = ctl_upload_read,
				    .body_ctx = &b,
				    .max_response = CTL_ERR_BODY_MAX};
	struct fetch_response resp = {0};
	const char *folder = ctl->config->folder, *name = NULL;
	char *url = NULL, *escaped = NULL, *path_copy = NULL, detail[512], ctype[128];
	uint8_t rnd[12];
	char boundary[2 * sizeof(rnd) + 16];
	struct ctl_rest cr;
	struct stat st;
	int c, r, rc = 1, format = 1;

	optind = 1;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case 'f':
			if (ctl_format_arg(optarg, &format))
				return 1;
			break;
		case 'n':
			name = optarg;
			break;
		case 'F':
			folder = optarg;
			break;
		default:
			fputs(CTL_USAGE, stderr);
			return 2;
		}
	}
	if (optind != argc - 1)
		return ctl_error("upload: expected one model file (see azaionctl --help)");
	if (ctl_model_open(argv[optind], name, &b.fd, &st, &name, &path_copy))
		return 1;
	/* Both go into the multipart head as they are. */
	if (strpbrk(name, "\"\r\n") || !names_valid(folder) || strpbrk(folder, "\"\r\n")) {
		ctl_error("upload: '%s' in '%s' is not a resource name", name, folder);
		close(b.fd);
		free(path_copy);
		return 1;
	}
	if (ctl_rest_open(ctl, &cr)) {
		close(b.fd);
		free(path_copy);
		return 1;
	}
	if (crypto_random(rnd, sizeof(rnd)) < 0) {
		ctl_error("no random bytes for the multipart boundary");
		goto out;
	}
	memcpy(boundary, "azaionctl", 9);
	crypto_hex(rnd, sizeof(rnd), boundary + 9);
	b.size = (uint64_t)st.st_size;
	b.head_len = (size_t)snprintf(
		b.head, sizeof(b.head),
		"--%s\r\nContent-Disposition: form-data; name=\"folder\"\r\n\r\n%s\r\n"
		"--%s\r\nContent-Disposition: form-data; name=\"format\"\r\n\r\n%d\r\n"
		"--%s\r\nContent-Disposition: form-data; name=\"data\"; filename=\"%s\"\r\n"
		"Content-Type: application/octet-stream\r\n\r\n",
		boundary, folder, boundary, format, boundary, name);
	b.tail_len = (size_t)snprintf(b.tail, sizeof(b.tail), "\r\n--%s--\r\n", boundary);
	b.total = b.head_len + b.size + b.tail_len;
	ctl_progress_start(&b.progress, name, isatty(STDERR_FILENO) && !ctl->json);
	snprintf(ctype, sizeof(ctype), "multipart/form-data; boundary=%s", boundary);
	escaped = names_url_escape(name);
	if (!escaped || asprintf(&url, "%s/upload/%s", cr.base, escaped) < 0) {
		ctl_error("out of memory");
		goto out;
	}
	req.url = url;
	req.unix_socket = cr.socket;
	req.bearer = cr.token;
	req.headers = ctl_rest_headers;
	req.content_type = ctype;
	req.body_size = (int64_t)b.total;
	r = fetch_request(cr.f, &req, &resp);
	if (r < 0) {
		ctl_error("upload %s: the daemon does not answer on %s: %s", name,
			  ctl_rest_where(ctl), log_strerror(r));
		goto out;
	}
	if (ctl->json) {
		fwrite(resp.body.data, 1, resp.body.len, stdout);
		putchar('\n');
	}
	if (resp.status != 200) {
		ctl_rest_detail(resp.body.data, resp.body.len, detail, sizeof(detail));
		ctl_error("upload %s: HTTP %ld: %s%s", name, resp.status, detail,
			  strstr(detail, "not logged in") ? "; run azaionctl login" : "");
		goto out;
	}
	if (!ctl->json)
		printf("uploaded %s to %s: format %d, %llu bytes\n", name, folder, format,
		       (unsigned long long)b.size);
	rc = 0;
out:
	fetch_response_free(&resp);
	close(b.fd);
	free(url);
	free(escaped);
	free(path_copy);
	ctl_rest_close(&cr);
	return rc;
}

static int ctl_rest_status(struct ctl *ctl, int health)
{
	json_t *st = NULL, *un = NULL;
	struct ctl_rest cr;
	int rc, quiet;

	if (ctl_rest_open(ctl, &cr))
		return 1;
	if (health) {
		rc = ctl_rest_call(ctl, &cr, "health", "GET", "/health", NULL, &st);
		if (rc == 0 && !ctl->json)
			printf("%s\n", json_string_value(json_object_get(st, "status")) ?: "?");
		goto out;
	}
	quiet = ctl->json;
	ctl->json = 0;
	rc = ctl_rest_call(ctl, &cr, "status", "GET", "/status", NULL, &st);
	if (rc == 0)
		rc = ctl_rest_call(ctl, &cr, "status", "GET", "/unlock/status", NULL, &un);
	ctl->json = quiet;
	if (rc == 0 && ctl->json) {
		/* One document: /status with /unlock/status under "unlock". */
		char *t = NULL;

		if (json_object_set(st, "unlock", un) == 0)
			t = json_dumps(st, JSON_COMPACT);
		if (t)
			puts(t);
		free(t);
	} else if (rc == 0) {
		json_t *id = json_object_get(st, "device_id");
		json_t *err = json_object_get(un, "error");

		printf("authenticated: %s\nmount:         %s (%s)\nmodels:        %lld\n"
		       "tpm:           %s%s%s\napi:           %s\nunlock:        %s",
		       json_is_true(json_object_get(st, "authenticated")) ? "yes" : "no",
		       json_string_value(json_object_get(st, "modelCacheDir")) ?: "?",
		       json_is_true(json_object_get(st, "mounted")) ? "mounted" : "not mounted",
		       (long long)json_integer_value(json_object_get(st, "models")),
		       json_string_value(json_object_get(st, "tpm")) ?: "?",
		       json_is_string(id) ? ", device " : "",
		       json_is_string(id) ? json_string_value(id) : "",
		       json_string_value(json_object_get(st, "api")) ?: "?",
		       json_string_value(json_object_get(un, "state")) ?: "?");
		if (json_is_string(err))
			printf(" (%s)", json_string_value(err));
		if (json_integer_value(json_object_get(un, "bytes_total")) > 0)
			printf(", %lld of %lld bytes",
			       (long long)json_integer_value(json_object_get(un, "bytes_done")),
			       (long long)json_integer_value(json_object_get(un, "bytes_total")));
		putchar('\n');
	}
out:
	json_decref(st);
	json_decref(un);
	ctl_rest_close(&cr);
	return rc;
}

static int ctl_rest_command(const char *cmd)
{
	static const char *const cmds[] = {"login", "load", "upload", "unlock", "status", "health"};

	for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++)
		if (!strcmp(cmd, cmds[i]))
			return 1;
	return 0;
}

static int ctl_rest(struct ctl *ctl, int argc, char **argv)
{
	if (!strcmp(argv[0], "login"))
		return ctl_rest_login_like(ctl, argc, argv, 0);
	if (!strcmp(argv[0], "unlock"))
		return ctl_rest_login_like(ctl, argc, argv, 1);
	if (!strcmp(argv[0], "load"))
		return ctl_rest_load(ctl, argc, argv);
	if (!strcmp(argv[0], "upload"))
		return ctl_rest_upload(ctl, argc, argv);
	if (argc > 1)
		return ctl_error("%s: unexpected argument '%s'", argv[0], argv[1]);
	return ctl_rest_status(ctl, !strcmp(argv[0], "health"));
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
		{"config", required_argument, NULL, 'c'}, {"option", required_argument, NULL, 'o'},
		{"json", no_argument, NULL, 'j'},	  {"verbose", no_argument, NULL, 'v'},
		{"help", no_argument, NULL, 'h'},	  {NULL, 0, NULL, 0},
	};
	struct ctl ctl = {0};
	const char *config_path = NULL;
	char **options;
	int noptions = 0, c, rc;

	log_init("azaionctl", LOG_WARNING);
	setenv("TSS2_LOG", "all+NONE", 0);
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
	else if (ctl_rest_command(argv[optind]))
		rc = ctl_rest(&ctl, argc - optind, argv + optind);
	else if (!strcmp(argv[optind], "enroll"))
		rc = ctl_enroll(&ctl);
	else
		rc = ctl_error("unknown command '%s' (see azaionctl --help)", argv[optind]);
out:
	config_free(ctl.config);
	free(options);
	return rc;
}
