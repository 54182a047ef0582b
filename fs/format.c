/*
 * format.c - the table of formats (see format.h).
 */
#include <stddef.h>
#include <string.h>

#include "fs/format.h"

static const struct format_ops *const format_table[] = {
	&format_f1,
	&format_f2,
};

const struct format_ops *format_get(int id)
{
	for (size_t i = 0; i < sizeof(format_table) / sizeof(format_table[0]); i++)
		if (format_table[i]->id == id)
			return format_table[i];
	return NULL;
}

const struct format_ops *format_detect(const uint8_t *b, size_t n)
{
	for (size_t i = 0; i < sizeof(format_table) / sizeof(format_table[0]); i++)
		if (format_table[i]->sniff(b, n))
			return format_table[i];
	return &format_f1;
}

int format_decrypt(const struct format_file *ff, uint64_t off, size_t len, const uint8_t *ct,
		   uint8_t *const *out, size_t stride, char **ret_msg)
{
	const struct format_ops *ops = ff->ops;
	struct format_dec *d;
	uint64_t c0, c1;
	int r;

	if (!len)
		return 0;
	ops->span(ff, off, len, &c0, &c1);
	r = ops->dec_new(ff, off, len, out, stride, &d);
	if (r < 0)
		return r;
	ops->dec_update(d, ct, (size_t)(c1 - c0));
	return ops->dec_end(d, ret_msg);
}

void format_key_clear(struct format_key *fk)
{
	secmem_free(fk->key);
	secmem_free(fk->prefix);
	crypto_wipe(&fk->doc, sizeof(fk->doc));
	memset(fk, 0, sizeof(*fk));
}
