/*
 * msg.c - messages a failing call hands to its caller (see msg.h).
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fs/msg.h"

static char *msg_vfmt(const char *fmt, va_list ap) __attribute__((format(printf, 1, 0)));
static char *msg_vfmt(const char *fmt, va_list ap)
{
	char *m = NULL;

	if (vasprintf(&m, fmt, ap) < 0)
		m = NULL;
	return m;
}

char *msg_fmt(const char *fmt, ...)
{
	va_list ap;
	char *m;

	va_start(ap, fmt);
	m = msg_vfmt(fmt, ap);
	va_end(ap);
	return m;
}

void msg_set(char **ret_msg, const char *fmt, ...)
{
	va_list ap;
	char *m;

	if (!ret_msg)
		return;
	va_start(ap, fmt);
	m = msg_vfmt(fmt, ap);
	va_end(ap);
	free(*ret_msg);
	*ret_msg = m;
}

const char *msg_or(const char *msg, int err)
{
	return msg ? msg : strerror(err < 0 ? -err : err);
}
