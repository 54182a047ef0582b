/*
 * probe.c - format and size of a model from its big part (see probe.h).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "crypto/crypto.h"
#include "fs/format.h"
#include "fs/msg.h"
#include "fs/probe.h"

/*
 * Tells format and sizes from the big part alone: a format whose magic
 * begins it and whose head opens, else the format without a magic (format
 * 1), its size from its head and the resource key.
 */
int probe_entry(struct src *src, struct keys *keys, const char *url, const struct fetch_s3 *s3,
		struct catalog_entry *e, char **ret_msg)
{
	const struct format_ops *fmt = NULL;
	struct format_file *ff = NULL;
	struct format_key fk = {0};
	struct format_hint hint = {0};
	struct src_blob b = {0};
	uint8_t first[64], *head = NULL, *key = NULL;
	uint64_t e_size, head_off;
	size_t head_len, first_len;
	char *msg = NULL;
	int r;

	b.url = url;
	b.s3 = s3;
	r = src_size(src, &b, &b.size, &msg);
	if (r < 0)
		goto out;
	first_len = b.size < sizeof(first) ? (size_t)b.size : sizeof(first);
	/* The catalog's format, or the one whose magic begins the big part. */
	fmt = e->format ? format_get(e->format) : NULL;
	if (e->format && !fmt) {
		msg = msg_fmt("format %d is not one this build reads", e->format);
		r = -EPROTO;
		goto out;
	}
	if (!fmt) {
		r = first_len ? src_read(src, &b, 0, first_len, first, &msg) : 0;
		if (r < 0)
			goto out;
		fmt = format_detect(first, first_len);
	}
	for (int pass = 0; pass < 2; pass++) {
		r = fmt->stream_size(b.size, &e_size);
		if (r < 0) {
			msg = msg_fmt("a big part of %llu bytes fits no format-%d file",
				      (unsigned long long)b.size, fmt->id);
			goto out;
		}
		fmt->head(e_size, NULL, &head_off, &head_len);
		head = malloc(head_len ? head_len : 1);
		key = secmem_alloc(CRYPTO_KEY_SIZE);
		if (!head || !key) {
			r = -ENOMEM;
			goto out;
		}
		/* A head that begins before the big part takes the key material's prefix. */
		if (head_off < e_size - b.size) {
			r = fmt->key_material(keys, e->name, &fk, &msg);
			if (r == 0 && fk.prefix_len + b.size != e_size) {
				msg = msg_fmt(
					"its small part (%zu bytes) and big part (%llu bytes) "
					"do not make one file",
					fk.prefix_len, (unsigned long long)b.size);
				r = -EPROTO;
			}
			if (r == 0)
				memcpy(head, fk.prefix + head_off,
				       (size_t)(e_size - b.size - head_off));
			if (r == 0 && b.size)
				r = src_read(src, &b, 0, (size_t)b.size,
					     head + (e_size - b.size - head_off), &msg);
		} else {
			r = src_read(src, &b, head_off - (e_size - b.size), head_len, head, &msg);
		}
		if (r == 0)
			r = keys->ops->resource_key(keys, key, &msg);
		hint.prefix_len = (size_t)(e_size - b.size);
		if (r == 0)
			r = fmt->open(key, head, e_size, &hint, &ff, &msg);
		free(head);
		head = NULL;
		secmem_free(key);
		key = NULL;
		format_key_clear(&fk);
		/* A magic that did not open: the format without one after all (format 1). */
		if (r < 0 && !e->format && fmt != format_detect(NULL, 0)) {
			fmt = format_detect(NULL, 0);
			free(msg);
			msg = NULL;
			continue;
		}
		break;
	}
	if (r < 0)
		goto out;
	e->format = fmt->id;
	e->size = ff->size;
	e->big_size = b.size;
	e->has_size = 1;
out:
	format_close(ff);
	free(head);
	secmem_free(key);
	format_key_clear(&fk);
	if (r < 0 && ret_msg)
		*ret_msg = msg;
	else
		free(msg);
	return r;
}
