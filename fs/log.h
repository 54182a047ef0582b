/*
 * log.h - the daemon's one logger: stderr in the foreground, syslog once
 * daemonised, filtered by log_level. Thread-safe. Secrets (passwords,
 * tokens, keys, plaintext) are never passed to it.
 */
#ifndef AZAION_LOG_H
#define AZAION_LOG_H

#include <stdarg.h>
#include <syslog.h>

/* level: LOG_ERR, LOG_WARNING, LOG_INFO or LOG_DEBUG. */
void log_init(const char *ident, int level);
void log_set_level(int level);
/* Switches output to syslog (after daemonising). */
void log_use_syslog(void);
/* Standard input, output and error to /dev/null (the terminal is gone), and syslog. */
void log_detach(void);
/*
 * Also appends every line to path (log_file), from now on and after
 * daemonising. Creates it mode 0600; refuses a symlink, anything but a
 * regular file, and a file others (group or world) may write. On failure
 * *ret_msg (malloc()ed, may be NULL) says why.
 */
int log_open_file(const char *path, char **ret_msg);
void log_close_file(void);
/*
 * strerror() for what an operator reads: the words of the failed HTTP
 * call behind err (fetch_strerror), "not logged in" for -ENOKEY.
 */
const char *log_strerror(int err);
int log_enabled(int priority);
void log_msg(int priority, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void log_vmsg(int priority, const char *fmt, va_list ap) __attribute__((format(printf, 2, 0)));
/* Adapter for the lower modules' log callbacks. */
void log_sink(int priority, const char *msg);
/* "error" "warn" "info" "debug" -> LOG_*; -1 when unknown. */
int log_level_parse(const char *name);

#define log_err(...) log_msg(LOG_ERR, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_WARNING, __VA_ARGS__)
#define log_info(...) log_msg(LOG_INFO, __VA_ARGS__)
#define log_debug(...) log_msg(LOG_DEBUG, __VA_ARGS__)

#endif
