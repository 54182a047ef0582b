/*
 * check.c - the whole-file check (see check.h). The stream goes through a
 * window of one chunk and the few bytes before it: after each chunk of the
 * big part, the plaintext that the bytes read so far decrypt (its format's
 * span says which) is decrypted into locked memory, hashed and wiped.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "crypto/crypto.h"
#include "fs/check.h"
#include "fs/msg.h"

int check_whole(struct src *src, const struct src_blob *b, const struct format_file *ff,
		const uint8_t *prefix, size_t prefix_len, const uint8_t want[32],
		uint32_t chunk_size, uint8_t **ret_list, size_t *ret_count, char **ret_msg)
{
	const struct format_ops *fmt = ff->ops;
	uint64_t big = b->size, size = ff->size, unit = ff->unit, p = 0, w0 = 0;
	size_t count = (size_t)((big + chunk_size - 1) / chunk_size), wlen;
	size_t cap = prefix_len + chunk_size + 4 * CRYPTO_BLOCK + (size_t)unit;
	struct crypto_sha256 *sha = crypto_sha256_new();
	uint8_t *list = malloc(count ? count * 32 : 1), *win = malloc(cap);
	uint8_t *plain = secmem_alloc(cap), d[32];
	int r = 0;

	if (!sha || !list || !win || !plain || !chunk_size) {
		r = chunk_size ? -ENOMEM : -EINVAL;
		goto out;
	}
	memcpy(win, prefix, prefix_len);
	wlen = prefix_len;
	for (size_t c = 0; r == 0 && c < count; c++) {
		uint64_t a = (uint64_t)c * chunk_size, e_avail, p_next, c0, c1, nc0;
		size_t n = big - a < chunk_size ? (size_t)(big - a) : chunk_size;
		char *msg = NULL;

		r = src_read(src, b, a, n, win + wlen, &msg);
		if (r < 0) {
			msg_set(ret_msg, "reading it whole for its sha256 check: %s",
				msg_or(msg, r));
			free(msg);
			break;
		}
		crypto_sha256(win + wlen, n, list + 32 * c);
		wlen += n;
		e_avail = w0 + wlen;
		/* The plaintext that the stream read so far decrypts. */
		p_next = c + 1 == count ? size : e_avail / unit * unit;
		if (p_next > size)
			p_next = size;
		for (; p_next > p; p_next = p_next - p > unit ? p_next - unit : p) {
			fmt->span(ff, p, (size_t)(p_next - p), &c0, &c1);
			if (c1 <= e_avail)
				break;
		}
		if (p_next > p) {
			uint8_t *out[1] = {plain};

			fmt->span(ff, p, (size_t)(p_next - p), &c0, &c1);
			r = format_decrypt(ff, p, (size_t)(p_next - p), win + (c0 - w0), out, cap,
					   &msg);
			if (r < 0) {
				*ret_msg = msg;
				break;
			}
			crypto_sha256_update(sha, plain, (size_t)(p_next - p));
			crypto_wipe(plain, (size_t)(p_next - p));
			p = p_next;
		}
		nc0 = e_avail;
		if (p < size)
			fmt->span(ff, p, (size_t)(size - p < unit ? size - p : unit), &nc0, &c1);
		memmove(win, win + (nc0 - w0), (size_t)(e_avail - nc0));
		wlen = (size_t)(e_avail - nc0);
		w0 = nc0;
	}
	if (r == 0 && p != size) {
		msg_set(ret_msg, "its parts decrypt to %llu of %llu bytes", (unsigned long long)p,
			(unsigned long long)size);
		r = -EBADMSG;
	}
	if (r == 0) {
		crypto_sha256_final(sha, d);
		if (crypto_memcmp(d, want, 32) != 0) {
			*ret_msg = strdup("the plaintext's sha256 differs from the catalog's");
			r = -EBADMSG;
		}
	}
	if (r == 0) {
		*ret_list = list;
		*ret_count = count;
		list = NULL;
	}
out:
	crypto_sha256_free(sha);
	free(list);
	free(win);
	secmem_free(plain);
	return r;
}
