/*
 * names.h - resource names as the catalog and the publisher accept them
 * (docs/resource-api.md): 1 to 255 bytes, no '/' or NUL, not "." or "..".
 */
#ifndef AZAION_NAMES_H
#define AZAION_NAMES_H

/* 1 when name is acceptable as a file in the mount. */
int names_valid(const char *name);
/* name percent-encoded for one URL path segment; malloc()ed, NULL on ENOMEM. */
char *names_url_escape(const char *name);

#endif
