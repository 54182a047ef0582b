/*
 * probe.h - what the catalog does not say of a model, from its big part:
 * its format (the catalog's, or the one whose magic begins the big part,
 * else the format without a magic) and its plaintext size (the format's
 * head, opened; format 1's with the resource key from the key source).
 * Reads through any source; logs nothing: the caller says why it failed.
 */
#ifndef AZAION_PROBE_H
#define AZAION_PROBE_H

#include "fetch/fetch.h"
#include "fs/catalog.h"
#include "fs/keys.h"
#include "fs/src.h"

/*
 * Fills e->format, e->size, e->big_size and e->has_size from the big part
 * at url (signed with s3 when not NULL). 0 or a negative errno: the
 * source's, -EPROTO for bytes that fit no format, or the format's; with
 * *ret_msg (msg.h; may be NULL) saying why.
 */
int probe_entry(struct src *src, struct keys *keys, const char *url, const struct fetch_s3 *s3,
		struct catalog_entry *e, char **ret_msg);

#endif
