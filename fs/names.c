/*
 * names.c - what a resource name may be, in one place, so the catalog,
 * the publisher and the side endpoint refuse the same names.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fs/names.h"

const char *names_problem(const char *name)
{
	size_t n = strlen(name);

	if (n == 0)
		return "it is empty";
	if (n > 255)
		return "it is longer than 255 bytes";
	if (strchr(name, '/'))
		return "it contains '/'";
	if (strcmp(name, ".") == 0 || strcmp(name, "..") == 0)
		return "'.' and '..' are not names";
	return NULL;
}

int names_valid(const char *name)
{
	return names_problem(name) == NULL;
}

char *names_url_escape(const char *name)
{
	static const char hex[] = "0123456789ABCDEF";
	size_t n = strlen(name);
	char *out = malloc(3 * n + 1), *p = out;

	if (!out)
		return NULL;
	for (const unsigned char *s = (const unsigned char *)name; *s; s++) {
		/* RFC 3986 unreserved characters pass; everything else is encoded. */
		if ((*s >= 'A' && *s <= 'Z') || (*s >= 'a' && *s <= 'z') ||
		    (*s >= '0' && *s <= '9') || strchr("-._~", *s)) {
			*p++ = (char)*s;
		} else {
			*p++ = '%';
			*p++ = hex[*s >> 4];
			*p++ = hex[*s & 15];
		}
	}
	*p = '\0';
	return out;
}
