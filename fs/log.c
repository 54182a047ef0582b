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
	switch (priority) {
	case LOG_ERR:
		return "error";
	case LOG_WARNING:
		return "warn";
	case LOG_INFO:
		return "info";
	default:
		return "debug";
	}
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

void log_msg(int priority, const char *fmt, ...)
{
	char buf[1024];
	va_list ap;

	if (!log_enabled(priority))
		return;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	log_write(priority, buf);
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
