/*
 * log.c - the daemon's logger. Before daemonising every message goes to
 * stderr (so start-up errors reach the terminal); after log_use_syslog()
 * to syslog. The level and the sink are read without a lock: they change
 * only at start-up, before any thread runs.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "fs/log.h"

static int log_level = LOG_INFO;
static int log_to_syslog;
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
	char stamp[32];

	if (log_to_syslog) {
		syslog(priority, "%s", msg);
		return;
	}
	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%S", &tm);
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
