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

void format_key_clear(struct format_key *fk)
{
	secmem_free(fk->key);
	secmem_free(fk->prefix);
	crypto_wipe(&fk->doc, sizeof(fk->doc));
	memset(fk, 0, sizeof(*fk));
}
