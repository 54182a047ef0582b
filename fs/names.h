/*
 * names.h - resource names as the catalog and the publisher accept them
 * (docs/resource-api.md): 1 to 255 bytes, no '/' or NUL, not "." or "..".
 * Folders follow the same rule. Wherever a name goes into a URL it is
 * percent-encoded, so '?', '#' or '%' in it stay part of the path.
 */
#ifndef AZAION_NAMES_H
#define AZAION_NAMES_H

/* Why name is not acceptable (a static phrase such as "it contains '/'"), or NULL. */
const char *names_problem(const char *name);
/* 1 when name is acceptable as a file in the mount. */
int names_valid(const char *name);
/* name percent-encoded for one URL path segment; malloc()ed, NULL on ENOMEM. */
char *names_url_escape(const char *name);

#endif
