/*
 * log.c - the daemon's logger. Before daemonising every message goes to
 * stderr (so start-up errors reach the terminal); after log_use_syslog()
 * to syslog; with log_file, to that file as well, always. The level and
 * the sinks are read without a lock: they change only at start-up, before
 * any thread runs.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "fetch/fetch.h"
#include "fs/log.h"

static int log_level = LOG_INFO;
static int log_to_syslog;
static int log_fd = -1;
static const char *log_ident = "azaionfs";

void log_init(const char *ident, int level)
{
	log_ident = ident;
	log_level = level;
}

void log_set_level(int level)
{
	log_level = level;
}

void log_use_syslog(void)
{
	openlog(log_ident, LOG_PID, LOG_DAEMON);
	log_to_syslog = 1;
}

void log_detach(void)
{
	int null = open("/dev/null", O_RDWR | O_CLOEXEC);

	if (null >= 0) {
		dup2(null, 0);
		dup2(null, 1);
		dup2(null, 2);
		if (null > 2)
			close(null);
	}
	log_use_syslog();
}

int log_open_file(const char *path, char **ret_msg)
{
	struct stat st;
	int fd, r;

	*ret_msg = NULL;
	fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY, 0600);
	if (fd < 0) {
		int e = errno;

		if (e == ELOOP)
			r = asprintf(ret_msg, "log_file %s is a symlink: name the file itself",
				     path);
		else
			r = asprintf(ret_msg, "log_file %s: %s", path, strerror(e));
		if (r < 0)
			*ret_msg = NULL;
		return e == ELOOP ? -EPERM : -e;
	}
	if (fstat(fd, &st) < 0) {
		r = -errno;
		goto err;
	}
	if (!S_ISREG(st.st_mode)) {
		r = -EPERM;
		if (asprintf(ret_msg, "log_file %s is not a regular file", path) < 0)
			*ret_msg = NULL;
		goto err;
	}
	/* Others could forge or erase what an operator reads. */
	if (st.st_mode & (S_IWGRP | S_IWOTH)) {
		r = -EPERM;
		if (asprintf(ret_msg, "log_file %s: mode %03o lets others write it; chmod 600 it",
			     path, (unsigned)(st.st_mode & 0777)) < 0)
			*ret_msg = NULL;
		goto err;
	}
	log_close_file();
	log_fd = fd;
	return 0;
err:
	if (!*ret_msg && asprintf(ret_msg, "log_file %s: %s", path, strerror(-r)) < 0)
		*ret_msg = NULL;
	close(fd);
	return r;
}

void log_close_file(void)
{
	if (log_fd >= 0)
		close(log_fd);
	log_fd = -1;
}

const char *log_strerror(int err)
{
	if (err == -ENOKEY)
		return "not logged in: run azaionctl login (or set credentials = FILE)";
	return fetch_strerror(err);
}

int log_enabled(int priority)
{
	return priority <= log_level;
}

static const char *log_prefix(int priority)
{
	/* libfuse also logs at the levels around these (crit, notice). */
	if (priority <= LOG_ERR)
		return "error";
	if (priority == LOG_WARNING)
		return "warn";
	if (priority <= LOG_INFO)
		return "info";
	return "debug";
}

static void log_write(int priority, const char *msg)
{
	struct timespec ts;
	struct tm tm;
	char stamp[32], line[1200];
	int n;

	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%S", &tm);
	if (log_fd >= 0) {
		/* One write() per line on an O_APPEND file: lines never mix. */
		n = snprintf(line, sizeof(line), "%s.%03ldZ %s[%d][%s]: %s\n", stamp,
			     ts.tv_nsec / 1000000, log_ident, (int)getpid(), log_prefix(priority),
			     msg);
		if (n >= (int)sizeof(line)) {
			n = (int)sizeof(line) - 1;
			line[n - 1] = '\n';
		}
		if (n > 0 && write(log_fd, line, (size_t)n) < 0) {
			/* Nowhere left to say it; syslog or stderr still gets the line. */
		}
	}
	if (log_to_syslog) {
		syslog(priority, "%s", msg);
		return;
	}
	/* One fprintf per line: stdio locks the stream, so lines never mix. */
	fprintf(stderr, "%s.%03ldZ %s[%s]: %s\n", stamp, ts.tv_nsec / 1000000, log_ident,
		log_prefix(priority), msg);
}

void log_vmsg(int priority, const char *fmt, va_list ap)
{
	char buf[1024];
	size_t n;

	if (!log_enabled(priority))
		return;
	vsnprintf(buf, sizeof(buf), fmt, ap);
	/* libfuse ends its messages with a newline; a log line has none. */
	n = strlen(buf);
	while (n > 0 && buf[n - 1] == '\n')
		buf[--n] = '\0';
	log_write(priority, buf);
}

void log_msg(int priority, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	log_vmsg(priority, fmt, ap);
	va_end(ap);
}

void log_sink(int priority, const char *msg)
{
	if (log_enabled(priority))
		log_write(priority, msg);
}

int log_level_parse(const char *name)
{
	static const struct {
		const char *name;
		int level;
	} levels[] = {
		{"error", LOG_ERR},
		{"warn", LOG_WARNING},
		{"info", LOG_INFO},
		{"debug", LOG_DEBUG},
	};

	for (size_t i = 0; i < sizeof(levels) / sizeof(levels[0]); i++)
		if (strcmp(name, levels[i].name) == 0)
			return levels[i].level;
	return -1;
}
