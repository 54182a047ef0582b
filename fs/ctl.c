/*
 * ctl.c - azaionctl, the operator's tool: publishes models in either
 * format, prints the hardware string, and talks to the daemon's side
 * endpoint. Every bad input gets one line on stderr and a non-zero exit.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <libgen.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <termios.h>
#include <signal.h>
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
#include "fs/msg.h"
#include "fs/names.h"
#include "fs/publish.h"
#include "fs/session.h"

/* The daemon's version (main.c's MAIN_VERSION): the two ship together. */
#define CTL_VERSION "0.1"

#define CTL_USAGE                                                                             \
	"usage: azaionctl [-c CONFIG] [-o KEY=VALUE]... [--json] [-v] COMMAND [ARGS]\n"       \
	"       azaionctl help [COMMAND] | --help | --version\n"                              \
	"commands:\n"                                                                         \
	"  publish   encrypt and split a model; upload it, or write the parts (--out)\n"      \
	"  hw        print the hardware string and its hw_hash\n"                             \
	"  enroll    enrol this device's TPM anew (device key, sealed credentials)\n"         \
	"  restart   start a new worker for the mount (an upgrade); readers notice nothing\n" \
	"side endpoint (rest_listen of the configuration, or -o rest_listen=...):\n"          \
	"  login     F1: give the daemon credentials\n"                                       \
	"  load      F2: a model's plaintext to a file or stdout\n"                           \
	"  upload    F3: publish a model through the daemon\n"                                \
	"  unlock    F4: load the Docker images, showing F5's progress\n"                     \
	"  status    F5 and F6: the daemon's and the unlock's state\n"                        \
	"  health    F6: whether the daemon answers\n"                                        \
	"options:\n"                                                                          \
	"  -c, --config FILE   the configuration (default " CONFIG_DEFAULT_PATH ")\n"         \
	"  -o, --option K=V    a configuration key, wins over the file; a comma inside\n"     \
	"                      a value is written \\, (tpm_tcti=swtpm:host=H\\,port=P)\n"     \
	"  --json              answers as JSON on stdout\n"                                   \
	"  -v, --verbose       the modules' log too (log_level); failures show without it\n"  \
	"  -h, --help          this text; azaionctl COMMAND --help: the command's\n"          \
	"  -V, --version       the version\n"

/* Credentials for login, unlock and enroll, when no option gives them. */
#define CTL_CRED_NOTE                                                                     \
	"Without --email/--password-file the configured credentials file is used, else\n" \
	"a prompt (or two lines on stdin: email, password).\n"

static const char ctl_usage_publish[] =
	"usage: azaionctl publish [--format 1|2] [--name NAME] [--folder F] [--shift N]\n"
	"                         [--out DIR] FILE\n"
	"Encrypts and splits the model FILE. Without --out, uploads the big part to the\n"
	"CDN and the small part (format 1) or the key (format 2) to the Resource API,\n"
	"logged in with the configured credentials.\n"
	"  --format 1|2   the format (default 1)\n"
	"  --name NAME    the resource name (default: FILE's base name)\n"
	"  --folder F     the API folder (default: the configured folder)\n"
	"  --shift N      format 2: chunks of 2^N bytes, 12 to 24 (default 16)\n"
	"  --out DIR      write the parts into DIR instead; no network, no login\n"
	"  -h, --help     this text\n"
	"On a terminal, a progress bar on stderr: bytes done of the total, rate, ETA.\n";
static const char ctl_usage_hw[] =
	"usage: azaionctl hw\n"
	"Prints this machine's hardware string (the configured hardware_id, else the one\n"
	"derived from the hardware) and its hw_hash, as the format-1 keys use them.\n"
	"  -h, --help     this text\n";
static const char ctl_usage_enroll[] =
	"usage: azaionctl enroll\n"
	"Enrols this device's TPM anew: a new device key, the credentials sealed to it,\n"
	"POST /devices; the new device id goes into state_dir. Needs tpm = auto or\n"
	"required. Credentials from the configured file, else from stdin (\"email = ...\"\n"
	"and \"password = ...\" lines, or a prompt).\n"
	"  -h, --help     this text\n";
static const char ctl_usage_login[] =
	"usage: azaionctl login [--email E] [--password-file F]\n"
	"F1: gives the daemon credentials (POST /login on the side endpoint).\n"
	"  --email E            the account's email\n"
	"  --password-file F    a file (mode 600) holding the password\n"
	"  -h, --help           this text\n" CTL_CRED_NOTE;
static const char ctl_usage_load[] =
	"usage: azaionctl load [--folder F] [--out FILE] NAME\n"
	"F2: the plaintext of the model NAME, from the daemon, to FILE (mode 600) or to\n"
	"stdout when that is not a terminal.\n"
	"  --folder F     the API folder (default: the configured folder)\n"
	"  --out FILE     write to FILE; on a terminal, with a progress bar on stderr\n"
	"  -h, --help     this text\n";
static const char ctl_usage_upload[] =
	"usage: azaionctl upload [--format 1|2] [--name N] [--folder F] FILE\n"
	"F3: publishes FILE through the daemon (rest_upload = true on its side).\n"
	"  --format 1|2   the format (default 1)\n"
	"  --name N       the resource name (default: FILE's base name)\n"
	"  --folder F     the API folder (default: the configured folder)\n"
	"  -h, --help     this text\n";
static const char ctl_usage_unlock[] =
	"usage: azaionctl unlock [--email E] [--password-file F] [--no-wait]\n"
	"F4: has the daemon decrypt images_archive into Docker, then follows F5 to\n"
	"ready or error (on a terminal: bytes decrypted of the total, then the\n"
	"loading_images phase).\n"
	"  --email E            the account's email\n"
	"  --password-file F    a file (mode 600) holding the password\n"
	"  --no-wait            return once the unlock has started\n"
	"  -h, --help           this text\n" CTL_CRED_NOTE;
static const char ctl_usage_status[] =
	"usage: azaionctl status\n"
	"F5 and F6: whether the daemon is logged in and mounted, its models, TPM, API\n"
	"and the unlock's state.\n"
	"  -h, --help     this text\n";
static const char ctl_usage_restart[] =
	"usage: azaionctl restart\n"
	"Has the mount's supervisor start a new worker (the program on disk now) and,\n"
	"once it serves, the old one finish what it has read and exit: an upgrade\n"
	"that readers do not notice. As root; the daemon is found through\n"
	"state_dir/azaionfs.pid.\n"
	"  -h, --help     this text\n";
static const char ctl_usage_health[] =
	"usage: azaionctl health\n"
	"F6: \"healthy\" when the daemon answers on its side endpoint; exit 1 when not.\n"
	"  -h, --help     this text\n";

/* Each command's options; every table has --help (-h). */
#define CTL_OPT_HELP                           \
	{                                      \
		"help", no_argument, NULL, 'h' \
	}
#define CTL_OPT_END              \
	{                        \
		NULL, 0, NULL, 0 \
	}
static const struct option ctl_opts_publish[] = {
	{"format", required_argument, NULL, 'f'},
	{"name", required_argument, NULL, 'n'},
	{"folder", required_argument, NULL, 'F'},
	{"shift", required_argument, NULL, 's'},
	{"out", required_argument, NULL, 'O'},
	CTL_OPT_HELP,
	CTL_OPT_END,
};
static const struct option ctl_opts_login[] = {
	{"email", required_argument, NULL, 'e'},
	{"password-file", required_argument, NULL, 'p'},
	CTL_OPT_HELP,
	CTL_OPT_END,
};
static const struct option ctl_opts_unlock[] = {
	{"email", required_argument, NULL, 'e'},
	{"password-file", required_argument, NULL, 'p'},
	{"no-wait", no_argument, NULL, 'n'},
	CTL_OPT_HELP,
	CTL_OPT_END,
};
static const struct option ctl_opts_load[] = {
	{"folder", required_argument, NULL, 'F'},
	{"out", required_argument, NULL, 'O'},
	CTL_OPT_HELP,
	CTL_OPT_END,
};
static const struct option ctl_opts_upload[] = {
	{"format", required_argument, NULL, 'f'},
	{"name", required_argument, NULL, 'n'},
	{"folder", required_argument, NULL, 'F'},
	CTL_OPT_HELP,
	CTL_OPT_END,
};
static const struct option ctl_opts_none[] = {CTL_OPT_HELP, CTL_OPT_END};

struct ctl {
	struct config *config;
	int json;
	int verbose;
};

static void ctl_progress_break(void);

static int ctl_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/*
 * The last error a request logged (curl's cause, a status): without -v it
 * is kept for the command's own line, which it ends in parentheses, so
 * that a failure is one line that says why. The modules' other errors
 * (a file's mode, the TPM) are log lines of their own, shown at LOG_ERR.
 */
static char ctl_reason[768];
static int ctl_verbose;

static void ctl_fetch_log(int priority, const char *msg)
{
	if (priority <= LOG_ERR && !ctl_verbose) {
		snprintf(ctl_reason, sizeof(ctl_reason), "%s", msg);
		return;
	}
	log_sink(priority, msg);
}

static int ctl_error(const char *fmt, ...)
{
	char msg[1024];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (*ctl_reason && !strstr(msg, ctl_reason))
		fprintf(stderr, "azaionctl: %s (%s)\n", msg, ctl_reason);
	else
		fprintf(stderr, "azaionctl: %s\n", msg);
	*ctl_reason = '\0';
	return 1;
}

/*
 * getopt_long over a command's options (argv[0] is the command): the next
 * option, -1 at the end, or '?' after one line about a bad one.
 */
static int ctl_getopt(int argc, char **argv, const struct option *opts)
{
	int c;

	opterr = 0;
	c = getopt_long(argc, argv, ":h", opts, NULL);
	if (c == '?' && optopt)
		ctl_error("%s: unknown option '-%c' (see azaionctl %s --help)", argv[0], optopt,
			  argv[0]);
	else if (c == '?')
		ctl_error("%s: unknown option '%s' (see azaionctl %s --help)", argv[0],
			  argv[optind - 1], argv[0]);
	else if (c == ':')
		ctl_error("%s: %s needs a value (see azaionctl %s --help)", argv[0],
			  argv[optind - 1], argv[0]);
	return c == ':' ? '?' : c;
}

/* A fetch and a logged-in session from the configuration. */
static int ctl_session(struct ctl *ctl, struct fetch **ret_fetch, struct session **ret_session)
{
	struct fetch_opts fo = {
		.ca_file = ctl->config->ca_file,
		.timeout_ms = ctl->config->io_timeout * 1000,
		.connect_timeout_ms = 10000,
		.max_retries = 5,
		.log = ctl_fetch_log,
	};
	struct fetch *f = NULL;
	struct session *s = NULL;
	char *msg = NULL;
	int r;

	r = fetch_new(&fo, &f);
	if (r < 0)
		return ctl_error("cannot set up HTTP: %s", strerror(-r));
	r = session_new(ctl->config, f, &s, &msg);
	if (r < 0) {
		fetch_free(f);
		r = ctl_error("%s", msg_or(msg, r));
		free(msg);
		return r;
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

/*
 * A progress line on stderr, only when it is a terminal: redrawn in place
 * ("\r", erase to the end), at most every CTL_PROGRESS_MS, fit to the
 * terminal's width. Anything else written to stderr while a line is drawn
 * first ends it (ctl_progress_break), so no message is glued to a bar.
 */
#define CTL_PROGRESS_MS 100
#define CTL_WIDTH_DEFAULT 80

struct ctl_progress {
	const char *name;
	int tty;
	int finished;
	struct timespec start;
	double last; /* seconds since start of the last draw; < 0: none yet */
};

/* The line now on the terminal and not yet ended, if any. */
static struct ctl_progress *ctl_bar_shown;
/*
 * The terminal the bar is drawn on: stderr as it was before
 * ctl_stderr_guard() put a stream in its place that ends a drawn bar
 * before any other output, whoever writes it (the modules' log lines,
 * libraries, ctl_error).
 */
static FILE *ctl_term;
#define CTL_TERM (ctl_term ? ctl_term : stderr)

static double ctl_elapsed(const struct timespec *start)
{
	struct timespec now;

	clock_gettime(CLOCK_MONOTONIC, &now);
	return (double)(now.tv_sec - start->tv_sec) + (now.tv_nsec - start->tv_nsec) / 1e9;
}

/* Ends the progress line on the terminal, so that what follows has its own. */
static void ctl_progress_break(void)
{
	if (!ctl_bar_shown)
		return;
	ctl_bar_shown = NULL;
	fputc('\n', CTL_TERM);
	fflush(CTL_TERM);
}

static ssize_t ctl_guard_write(void *cookie, const char *buf, size_t n)
{
	(void)cookie;
	ctl_progress_break();
	n = fwrite(buf, 1, n, ctl_term);
	fflush(ctl_term);
	return (ssize_t)n;
}

/* Only on a terminal, the one place a bar is drawn. */
static void ctl_stderr_guard(void)
{
	cookie_io_functions_t io = {.write = ctl_guard_write};
	FILE *guard;

	if (!isatty(STDERR_FILENO))
		return;
	guard = fopencookie(NULL, "w", io);
	if (!guard)
		return;
	setvbuf(guard, NULL, _IONBF, 0);
	ctl_term = stderr;
	stderr = guard;
}

static void ctl_stderr_unguard(void)
{
	FILE *guard = stderr;

	if (!ctl_term)
		return;
	ctl_progress_break();
	stderr = ctl_term;
	ctl_term = NULL;
	fclose(guard);
}

static int ctl_term_width(void)
{
	struct winsize ws;

	if (ioctl(STDERR_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col >= 20)
		return ws.ws_col;
	return CTL_WIDTH_DEFAULT;
}

/* 1023 B, 12.3 KiB, 4.0 GiB. */
static void ctl_bytes(uint64_t n, char *out, size_t cap)
{
	static const char *const units[] = {"KiB", "MiB", "GiB", "TiB"};
	double v = (double)n;
	int u = -1;

	if (n < 1024) {
		snprintf(out, cap, "%llu B", (unsigned long long)n);
		return;
	}
	while (v >= 1024 && u < 3) {
		v /= 1024;
		u++;
	}
	snprintf(out, cap, "%.1f %s", v, units[u]);
}

/* 0:07, 12:34, 1:02:03. */
static void ctl_duration(double secs, char *out, size_t cap)
{
	unsigned long t = secs < 0 ? 0 : secs > 359999 ? 359999 : (unsigned long)(secs + 0.5);

	if (t >= 3600)
		snprintf(out, cap, "%lu:%02lu:%02lu", t / 3600, t / 60 % 60, t % 60);
	else
		snprintf(out, cap, "%lu:%02lu", t / 60, t % 60);
}

/*
 * Draws "NAME [#####     ]  45% 12.3 MiB/27.1 MiB 3.4 MiB/s ETA 0:04" in
 * the terminal's width: the bar takes what the rest leaves, and goes when
 * too little is left; the name is cut before the numbers are.
 */
static void ctl_progress_line(struct ctl_progress *p, const char *label, const char *right, int pct)
{
	int width = ctl_term_width() - 1; /* the last column would wrap on some terminals */
	int rlen = (int)strlen(right), nlen = (int)strlen(label), bar;
	char line[1024];
	int n = 0;

	if (width > (int)sizeof(line) - 64)
		width = (int)sizeof(line) - 64;
	if (nlen > width / 3)
		nlen = width / 3;
	bar = pct < 0 ? 0 : width - nlen - rlen - 4; /* " [", "] " */
	if (bar < 5)
		bar = 0;
	n += snprintf(line + n, sizeof(line) - (size_t)n, "\r%.*s", nlen, label);
	if (bar) {
		int fill = pct * bar / 100;

		line[n++] = ' ';
		line[n++] = '[';
		memset(line + n, '#', (size_t)fill);
		memset(line + n + fill, ' ', (size_t)(bar - fill));
		n += bar;
		line[n++] = ']';
	}
	/* The numbers, cut to the width when even they do not fit. */
	snprintf(line + n, sizeof(line) - (size_t)n, " %.*s\033[K",
		 width - nlen - (bar ? bar + 3 : 0) - 1 > 0 ? width - nlen - (bar ? bar + 3 : 0) - 1
							    : 0,
		 right);
	fputs(line, CTL_TERM);
	fflush(CTL_TERM);
	ctl_bar_shown = p;
}

static void ctl_progress(void *ctx, uint64_t done, uint64_t total)
{
	struct ctl_progress *p = ctx;
	char d[32], t[32], rate[32], eta[32], right[160];
	double secs, bps;
	int pct, end;

	if (!p->tty || p->finished)
		return;
	if (done > total)
		done = total;
	end = done >= total;
	secs = ctl_elapsed(&p->start);
	if (!end && p->last >= 0 && secs - p->last < CTL_PROGRESS_MS / 1000.0)
		return;
	p->last = secs;
	pct = total ? (int)(done * 100 / total) : 100;
	bps = secs > 0 ? (double)done / secs : 0;
	ctl_bytes(done, d, sizeof(d));
	ctl_bytes(total, t, sizeof(t));
	ctl_bytes((uint64_t)bps, rate, sizeof(rate));
	if (end)
		ctl_duration(secs, eta, sizeof(eta));
	else if (bps > 0)
		ctl_duration((double)(total - done) / bps, eta, sizeof(eta));
	else
		snprintf(eta, sizeof(eta), "-:--");
	snprintf(right, sizeof(right), "%3d%% %s/%s %s/s %s %s", pct, d, t, rate,
		 end ? "in" : "ETA", eta);
	ctl_progress_line(p, p->name, right, pct);
	if (end) {
		p->finished = 1;
		ctl_progress_break();
	}
}

/* A phase without a byte count: its name and the time it has taken so far. */
static void ctl_progress_phase(struct ctl_progress *p, const char *phase)
{
	char el[32], right[160];

	if (!p->tty)
		return;
	ctl_duration(ctl_elapsed(&p->start), el, sizeof(el));
	snprintf(right, sizeof(right), "%s, %s so far", phase, el);
	ctl_progress_line(p, p->name, right, -1);
}

/* Bytes of an unknown total (F2's answer): how many so far, the rate, the time. */
static void ctl_progress_count(struct ctl_progress *p, uint64_t done)
{
	char d[32], rate[32], el[32], right[160];
	double secs;

	if (!p->tty || p->finished)
		return;
	secs = ctl_elapsed(&p->start);
	if (p->last >= 0 && secs - p->last < CTL_PROGRESS_MS / 1000.0)
		return;
	p->last = secs;
	ctl_bytes(done, d, sizeof(d));
	ctl_bytes(secs > 0 ? (uint64_t)((double)done / secs) : 0, rate, sizeof(rate));
	ctl_duration(secs, el, sizeof(el));
	snprintf(right, sizeof(right), "%s %s/s %s", d, rate, el);
	ctl_progress_line(p, p->name, right, -1);
}

static void ctl_progress_count_end(struct ctl_progress *p, uint64_t done)
{
	if (!p->tty || p->finished)
		return;
	p->last = -1;
	ctl_progress_count(p, done);
	p->finished = 1;
	ctl_progress_break();
}

static void ctl_progress_start(struct ctl_progress *p, const char *name, int tty)
{
	p->name = name;
	p->tty = tty;
	p->finished = 0;
	p->last = -1;
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

	optind = 0;
	while ((c = ctl_getopt(argc, argv, ctl_opts_publish)) != -1) {
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
			return 2; /* ctl_getopt said why; --help never gets here (main) */
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
		.log = ctl_fetch_log,
	};
	char *email = NULL, *password = NULL, *msg = NULL, id[160], reason[512];
	struct session *s = NULL;
	struct device *d = NULL;
	struct fetch *f = NULL;
	int r, rc = 1;

	if (ctl->config->tpm == CONFIG_TPM_OFF)
		return ctl_error("enroll: tpm = off in the configuration");
	r = fetch_new(&fo, &f);
	if (r < 0)
		return ctl_error("cannot set up HTTP: %s", strerror(-r));
	r = session_new(ctl->config, f, &s, &msg);
	if (r < 0) {
		ctl_error("%s", msg_or(msg, r));
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
	r = device_new(ctl->config, s, &d, &msg);
	if (!ctl->verbose)
		log_set_level(LOG_CRIT);
	if (r < 0) {
		ctl_error("enroll: %s", msg_or(msg, r));
		goto out;
	}
	if (!strcmp(device_status(d, reason, sizeof(reason)), "absent")) {
		ctl_error("enroll: %s", reason);
		goto out;
	}
	r = device_enroll(d, &msg);
	if (r == 0)
		r = device_id(d, id, sizeof(id));
	if (r < 0) {
		ctl_error("enroll failed: %s", msg_or(msg, r));
		goto out;
	}
	if (ctl->json)
		printf("{\"device_id\": \"%s\"}\n", id);
	else
		printf("enrolled: device %s, keys in %s\n", id, ctl->config->state_dir);
	rc = 0;
out:
	free(msg);
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
		.log = ctl_fetch_log,
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
	const char *email_opt = NULL, *pw_file = NULL, *cmd = unlock ? "unlock" : "login";
	char *email = NULL, *password = NULL;
	struct ctl_rest cr;
	json_t *body, *doc = NULL;
	int c, rc, wait = 1, polled = 0;

	optind = 0;
	while ((c = ctl_getopt(argc, argv, unlock ? ctl_opts_unlock : ctl_opts_login)) != -1) {
		switch (c) {
		case 'e':
			email_opt = optarg;
			break;
		case 'p':
			pw_file = optarg;
			break;
		case 'n':
			wait = 0;
			break;
		default:
			return 2; /* ctl_getopt said why; --help never gets here (main) */
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

		ctl_progress_start(&p, "unlock", isatty(STDERR_FILENO) && !ctl->json);
		while (wait && st && strcmp(st, "ready") && strcmp(st, "error")) {
			json_int_t total, done;

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
			total = json_integer_value(json_object_get(doc, "bytes_total"));
			done = json_integer_value(json_object_get(doc, "bytes_done"));
			/*
			 * Bytes while decrypting; every other phase (loading_images
			 * above all, which can take minutes after the last byte)
			 * by its name, never a bar standing at 100%.
			 */
			if (st && !strcmp(st, "decrypting") && total > 0 && done < total)
				ctl_progress(&p, (uint64_t)done, (uint64_t)total);
			else if (st && strcmp(st, "ready") && strcmp(st, "error"))
				ctl_progress_phase(&p, st);
		}
		ctl_progress_break();
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
	struct ctl_progress progress;
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
	ctl_progress_count(&s->progress, s->total);
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

	optind = 0;
	while ((c = ctl_getopt(argc, argv, ctl_opts_load)) != -1) {
		switch (c) {
		case 'F':
			folder = optarg;
			break;
		case 'O':
			out = optarg;
			break;
		default:
			return 2; /* ctl_getopt said why; --help never gets here (main) */
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
	ctl_progress_start(&sink.progress, name, isatty(STDERR_FILENO) && !ctl->json);
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
	if (r == 0 && resp.status == 200)
		ctl_progress_count_end(&sink.progress, sink.total);
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

/* F3's file part, read as the multipart body streams (fetch_multipart). */
struct ctl_upload_file {
	int fd;
	uint64_t size, done;
	struct ctl_progress progress;
};

static ssize_t ctl_upload_read(void *ctx, uint8_t *buf, size_t cap)
{
	struct ctl_upload_file *u = ctx;
	ssize_t k;

	do
		k = read(u->fd, buf, cap);
	while (k < 0 && errno == EINTR);
	if (k < 0)
		return -errno;
	if (k > 0) {
		u->done += (uint64_t)k;
		ctl_progress(&u->progress, u->done, u->size);
	}
	return k;
}

static int ctl_rest_upload(struct ctl *ctl, int argc, char **argv)
{
	struct ctl_upload_file b = {.fd = -1};
	struct fetch_request req = {.method = "POST",
				    .no_retry = 1,
				    .timeout_ms = CTL_REST_LONG_MS,
				    .max_response = CTL_ERR_BODY_MAX};
	struct fetch_response resp = {0};
	struct fetch_multipart *body = NULL;
	const char *folder = ctl->config->folder, *name = NULL;
	char *url = NULL, *escaped = NULL, *path_copy = NULL, detail[512], format_text[16];
	struct ctl_rest cr;
	struct stat st;
	int c, r, rc = 1, format = 1;

	optind = 0;
	while ((c = ctl_getopt(argc, argv, ctl_opts_upload)) != -1) {
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
			return 2; /* ctl_getopt said why; --help never gets here (main) */
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
	snprintf(format_text, sizeof(format_text), "%d", format);
	b.size = (uint64_t)st.st_size;
	{
		/* The fields rest.c reads (docs/loader-api.md F3), then the file as "data". */
		const char *fields[] = {"folder", folder, "format", format_text, NULL};

		r = fetch_multipart_new(fields, "data", name, b.size, ctl_upload_read, &b, &body);
	}
	if (r < 0) {
		ctl_error("upload %s: cannot build the multipart body: %s", name, strerror(-r));
		goto out;
	}
	ctl_progress_start(&b.progress, name, isatty(STDERR_FILENO) && !ctl->json);
	escaped = names_url_escape(name);
	if (!escaped || asprintf(&url, "%s/upload/%s", cr.base, escaped) < 0) {
		ctl_error("out of memory");
		goto out;
	}
	req.url = url;
	req.unix_socket = cr.socket;
	req.bearer = cr.token;
	req.headers = ctl_rest_headers;
	fetch_multipart_set_body(body, &req);
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
	fetch_multipart_free(body);
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

static int ctl_run_login(struct ctl *ctl, int argc, char **argv)
{
	return ctl_rest_login_like(ctl, argc, argv, 0);
}

static int ctl_run_unlock(struct ctl *ctl, int argc, char **argv)
{
	return ctl_rest_login_like(ctl, argc, argv, 1);
}

static int ctl_run_status(struct ctl *ctl, int argc, char **argv)
{
	(void)argc;
	(void)argv;
	return ctl_rest_status(ctl, 0);
}

static int ctl_run_health(struct ctl *ctl, int argc, char **argv)
{
	(void)argc;
	(void)argv;
	return ctl_rest_status(ctl, 1);
}

/* state_dir/azaionfs.pid, as the supervisor writes it (docs/architecture.md, "Restarts"). */
static int ctl_read_pidfile(const char *path, long *sup, long *worker, char *mount, size_t cap)
{
	char line[4200];
	FILE *f = fopen(path, "re");

	*sup = *worker = 0;
	*mount = '\0';
	if (!f)
		return -errno;
	while (fgets(line, sizeof(line), f)) {
		line[strcspn(line, "\n")] = '\0';
		if (!strncmp(line, "supervisor ", 11))
			*sup = strtol(line + 11, NULL, 10);
		else if (!strncmp(line, "worker ", 7))
			*worker = strtol(line + 7, NULL, 10);
		else if (!strncmp(line, "mount ", 6))
			snprintf(mount, cap, "%s", line + 6);
	}
	fclose(f);
	return *sup > 0 && *worker > 0 ? 0 : -EINVAL;
}

static int ctl_run_restart(struct ctl *ctl, int argc, char **argv)
{
	char path[4200], mount[4200], now_mount[4200];
	long sup, worker, sup2, worker2;
	int r;

	(void)argc;
	(void)argv;
	snprintf(path, sizeof(path), "%s/azaionfs.pid", ctl->config->state_dir);
	r = ctl_read_pidfile(path, &sup, &worker, mount, sizeof(mount));
	if (r == -ENOENT)
		return ctl_error("restart: no azaionfs serves with state_dir %s (%s is missing): "
				 "mount first",
				 ctl->config->state_dir, path);
	if (r < 0)
		return ctl_error("restart: cannot read %s: %s", path, strerror(-r));
	if (kill((pid_t)sup, SIGHUP) < 0) {
		if (errno == ESRCH)
			return ctl_error("restart: %s names supervisor pid %ld, which is gone: "
					 "the daemon died; mount again",
					 path, sup);
		return ctl_error("restart: cannot signal the azaionfs supervisor (pid %ld): %s; "
				 "run as root",
				 sup, strerror(errno));
	}
	/* The new worker logs in and unseals before it serves: up to a minute. */
	for (int i = 0; i < 600; i++) {
		struct timespec ts = {0, 100 * 1000 * 1000};

		nanosleep(&ts, NULL);
		if (ctl_read_pidfile(path, &sup2, &worker2, now_mount, sizeof(now_mount)) == 0 &&
		    sup2 == sup && worker2 != worker) {
			printf("azaionctl: restart: worker pid %ld serves %s (was %ld)\n", worker2,
			       now_mount, worker);
			return 0;
		}
		if (kill((pid_t)sup, 0) < 0 && errno == ESRCH)
			return ctl_error("restart: the supervisor (pid %ld) of %s ended; see the "
					 "daemon's log",
					 sup, mount);
	}
	return ctl_error("restart: no new worker serves %s after 60 s; worker pid %ld still "
			 "does; see the daemon's log for why the new one did not start",
			 mount, worker);
}

static int ctl_run_hw(struct ctl *ctl, int argc, char **argv)
{
	(void)argc;
	(void)argv;
	return ctl_hw(ctl);
}

static int ctl_run_enroll(struct ctl *ctl, int argc, char **argv)
{
	(void)argc;
	(void)argv;
	return ctl_enroll(ctl);
}

/* ---- main --------------------------------------------------------------- */

struct ctl_cmd {
	const char *name;
	const char *usage;
	const struct option *opts;
	int args; /* positional arguments: exactly this many, or -1: the command checks */
	int (*run)(struct ctl *ctl, int argc, char **argv);
};

static const struct ctl_cmd ctl_cmds[] = {
	{"publish", ctl_usage_publish, ctl_opts_publish, -1, ctl_publish},
	{"hw", ctl_usage_hw, ctl_opts_none, 0, ctl_run_hw},
	{"enroll", ctl_usage_enroll, ctl_opts_none, 0, ctl_run_enroll},
	{"login", ctl_usage_login, ctl_opts_login, 0, ctl_run_login},
	{"load", ctl_usage_load, ctl_opts_load, -1, ctl_rest_load},
	{"upload", ctl_usage_upload, ctl_opts_upload, -1, ctl_rest_upload},
	{"unlock", ctl_usage_unlock, ctl_opts_unlock, 0, ctl_run_unlock},
	{"status", ctl_usage_status, ctl_opts_none, 0, ctl_run_status},
	{"health", ctl_usage_health, ctl_opts_none, 0, ctl_run_health},
	{"restart", ctl_usage_restart, ctl_opts_none, 0, ctl_run_restart},
};

static const struct ctl_cmd *ctl_find_cmd(const char *name)
{
	for (size_t i = 0; i < sizeof(ctl_cmds) / sizeof(ctl_cmds[0]); i++)
		if (!strcmp(name, ctl_cmds[i].name))
			return &ctl_cmds[i];
	return NULL;
}

/*
 * The command's arguments checked before anything is read or done: 1 after
 * --help printed its usage, 2 after a line about a bad option, else 0. So
 * "enroll --help" touches neither the configuration, the TPM nor the network.
 */
static int ctl_check_args(const struct ctl_cmd *cmd, int argc, char **argv)
{
	int c, help = 0;

	optind = 0;
	while ((c = ctl_getopt(argc, argv, cmd->opts)) != -1) {
		if (c == '?')
			return 2;
		if (c == 'h')
			help = 1;
	}
	if (help) {
		fputs(cmd->usage, stdout);
		return 1;
	}
	if (cmd->args >= 0 && argc - optind > cmd->args) {
		ctl_error("%s: unexpected argument '%s' (see azaionctl %s --help)", cmd->name,
			  argv[optind + cmd->args], cmd->name);
		return 2;
	}
	return 0;
}

/* azaionctl help [COMMAND] */
static int ctl_help(int argc, char **argv)
{
	const struct ctl_cmd *cmd;

	if (argc < 2) {
		fputs(CTL_USAGE, stdout);
		return 0;
	}
	if (!strcmp(argv[1], "help")) {
		fputs("usage: azaionctl help [COMMAND]\nPrints the usage of azaionctl, or of "
		      "COMMAND.\n",
		      stdout);
		return 0;
	}
	cmd = ctl_find_cmd(argv[1]);
	if (!cmd) {
		ctl_error("help: unknown command '%s' (see azaionctl help)", argv[1]);
		return 2;
	}
	fputs(cmd->usage, stdout);
	return 0;
}

/*
 * One -o argument, split as the daemon's -o is (libfuse's fuse_opt): at
 * commas, where "\," is a comma of the value, "\\" a backslash and "\NNN"
 * an octal byte. So the same -o works for both programs.
 */
static int ctl_set_options(struct ctl *ctl, const char *arg, char **ret_msg)
{
	size_t len = strlen(arg);
	char *item = malloc(len + 1), *d, *eq;
	const char *s = arg;
	int r = 0;

	if (!item)
		return -ENOMEM;
	for (int nth = 0; r == 0; nth++) {
		d = item;
		while (*s && *s != ',') {
			if (s[0] == '\\' && s[1]) {
				s++;
				if (s[0] >= '0' && s[0] <= '3' && s[1] >= '0' && s[1] <= '7' &&
				    s[2] >= '0' && s[2] <= '7') {
					*d++ = (char)((s[0] - '0') * 0100 + (s[1] - '0') * 010 +
						      (s[2] - '0'));
					s += 3;
					continue;
				}
			}
			*d++ = *s++;
		}
		*d = '\0';
		if (*item) {
			eq = strchr(item, '=');
			if (!eq) {
				*ret_msg = NULL;
				if (asprintf(ret_msg, "-o %s: expected key=value%s", item,
					     nth > 0 ? " (a comma inside a value is written \\,)"
						     : "") < 0)
					*ret_msg = NULL;
				r = -EINVAL;
				break;
			}
			*eq = '\0';
			r = config_set(ctl->config, item, eq + 1, "-o", ret_msg);
			/* "port" after tpm_tcti=swtpm:host=H: a value's comma, unescaped. */
			if (r == -ENOENT && nth > 0 && !config_nearest_key(item)) {
				free(*ret_msg);
				if (asprintf(ret_msg,
					     "-o: unknown key '%s' (a comma inside a value is "
					     "written \\, as in tpm_tcti=swtpm:host=H\\,port=P)",
					     item) < 0)
					*ret_msg = NULL;
			}
		}
		if (!*s)
			break;
		s++;
	}
	free(item);
	return r;
}

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
		r = ctl_set_options(ctl, options[i], &msg);
		if (r < 0)
			goto fail;
	}
	/*
	 * Errors are the reasons of a failure (a file's mode, a refused
	 * connection): they always show. The modules' warnings, progress and
	 * debug lines are chatter for -v.
	 */
	log_set_level(ctl->verbose ? (ctl->config->log_level > LOG_ERR ? ctl->config->log_level
								       : LOG_INFO)
				   : LOG_ERR);
	return 0;
fail:
	ctl_error("%s", msg ? msg : strerror(-r));
	free(msg);
	return r;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{"config", required_argument, NULL, 'c'},
		{"option", required_argument, NULL, 'o'},
		{"json", no_argument, NULL, 'j'},
		{"verbose", no_argument, NULL, 'v'},
		{"help", no_argument, NULL, 'h'},
		{"version", no_argument, NULL, 'V'},
		{NULL, 0, NULL, 0},
	};
	const struct ctl_cmd *cmd;
	struct ctl ctl = {0};
	const char *config_path = NULL;
	char **options;
	int noptions = 0, c, rc, first;

	log_init("azaionctl", LOG_WARNING);
	setenv("TSS2_LOG", "all+NONE", 0);
	options = calloc((size_t)argc, sizeof(*options));
	if (!options)
		return ctl_error("out of memory");
	/* "+": stop at the command, whose options are its own. */
	while ((c = getopt_long(argc, argv, "+c:o:jvhV", opts, NULL)) != -1) {
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
			ctl_verbose = 1;
			break;
		case 'h':
			fputs(CTL_USAGE, stdout);
			free(options);
			return 0;
		case 'V':
			printf("azaionctl %s\n", CTL_VERSION);
			free(options);
			return 0;
		default:
			fputs("azaionctl: see azaionctl --help\n", stderr);
			free(options);
			return 2;
		}
	}
	if (optind >= argc) {
		fputs(CTL_USAGE, stderr);
		free(options);
		return 2;
	}
	if (!strcmp(argv[optind], "help")) {
		rc = ctl_help(argc - optind, argv + optind);
		goto out;
	}
	cmd = ctl_find_cmd(argv[optind]);
	if (!cmd) {
		ctl_error("unknown command '%s' (see azaionctl help)", argv[optind]);
		rc = 2;
		goto out;
	}
	/* The command's own parse moves optind. */
	first = optind;
	rc = ctl_check_args(cmd, argc - first, argv + first);
	if (rc) {
		rc = rc == 1 ? 0 : 2;
		goto out;
	}
	ctl_stderr_guard();
	if (ctl_load_config(&ctl, config_path, options, noptions) < 0) {
		rc = 1;
		goto out;
	}
	rc = cmd->run(&ctl, argc - first, argv + first);
out:
	ctl_stderr_unguard();
	config_free(ctl.config);
	free(options);
	return rc;
}
