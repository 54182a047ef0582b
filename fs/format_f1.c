/*
 * format_f1.c - format 1 (docs/formats.md): E = AES-256-CBC(resource key,
 * P) with PKCS#7 padding and a random IV as E's first block; the small
 * part is E's first min(3072, floor(0.3 |E|)) bytes. Any block decrypts
 * from the one before it, so a plaintext range needs the ciphertext from
 * one block before it.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fs/format.h"
#include "fs/msg.h"

#define F1_STEP (1024 * 1024) /* plaintext per encryptor update */

struct f1_file {
	struct format_file ff;
	uint8_t *key; /* locked */
};

struct format_enc {
	struct f1_encryptor *enc;
	uint64_t size, done;
};

static int fmt1_sniff(const uint8_t *b, size_t n)
{
	return 0; /* a random IV: no magic */
}

static void fmt1_head(uint64_t cipher_size, const struct format_hint *hint, uint64_t *ret_off,
		      size_t *ret_len)
{
	/*
	 * The last two blocks: the padding tells the size, and where the
	 * catalog gives it, tells whether the key is the publisher's (CBC has
	 * no tag: a wrong resource_secret would decrypt into garbage).
	 */
	(void)hint;
	*ret_off = cipher_size >= 32 ? cipher_size - 32 : 0;
	*ret_len = 32;
}

static int fmt1_open(const uint8_t *key, const uint8_t *head, uint64_t cipher_size,
		     const struct format_hint *hint, struct format_file **ret, char **ret_msg)
{
	struct f1_file *f;
	uint64_t size;
	int r;

	if (cipher_size % CRYPTO_BLOCK || cipher_size < 32) {
		if (hint && hint->prefix_len) {
			msg_set(ret_msg,
				"a small part of %zu bytes does not fit a big part of %llu "
				"bytes",
				hint->prefix_len,
				(unsigned long long)(cipher_size - hint->prefix_len));
			return -EIO;
		}
		msg_set(ret_msg, "%llu bytes are not a whole number of AES blocks",
			(unsigned long long)cipher_size);
		return -EBADMSG;
	}
	if (hint && hint->prefix_len && hint->prefix_len != f1_small_size(cipher_size)) {
		msg_set(ret_msg, "a small part of %zu bytes does not fit a big part of %llu bytes",
			hint->prefix_len, (unsigned long long)(cipher_size - hint->prefix_len));
		return -EIO;
	}
	if (hint && hint->has_size) {
		uint64_t padded;

		size = hint->size;
		if (f1_cipher_size(size) != cipher_size) {
			msg_set(ret_msg, "the catalog's size %llu does not match its parts",
				(unsigned long long)size);
			return -EIO;
		}
		/* A key check: about 255 wrong keys in 256 fail it. */
		if (key && head &&
		    (f1_plain_size(key, head, cipher_size, &padded) < 0 || padded != size)) {
			msg_set(ret_msg,
				"it does not decrypt to the catalog's size %llu with this device's "
				"format-1 resource key: the resource_secret differs from the "
				"publisher's (legacy_resource_secret_file, or the one sealed in "
				"the "
				"TPM), or the big part's end is damaged",
				(unsigned long long)size);
			return -EIO;
		}
	} else {
		r = key && head ? f1_plain_size(key, head, cipher_size, &size) : -EINVAL;
		if (r < 0) {
			msg_set(ret_msg, "cannot derive its size: %s", strerror(-r));
			return r;
		}
	}
	f = calloc(1, sizeof(*f));
	if (!f)
		return -ENOMEM;
	f->key = secmem_alloc(CRYPTO_KEY_SIZE);
	if (!f->key) {
		free(f);
		return -ENOMEM;
	}
	if (key)
		memcpy(f->key, key, CRYPTO_KEY_SIZE);
	f->ff.ops = &format_f1;
	f->ff.size = size;
	f->ff.cipher_size = cipher_size;
	f->ff.unit = CRYPTO_BLOCK;
	*ret = &f->ff;
	return 0;
}

static void fmt1_span(const struct format_file *ff, uint64_t off, size_t len, uint64_t *ret_c0,
		      uint64_t *ret_c1)
{
	uint64_t j0 = off / CRYPTO_BLOCK, j1 = (off + len + CRYPTO_BLOCK - 1) / CRYPTO_BLOCK;

	/* Block j of P is block j + 1 of E, after the IV. */
	*ret_c0 = j0 * CRYPTO_BLOCK;
	*ret_c1 = (j1 + 1) * CRYPTO_BLOCK;
}

/*
 * A decryption of a plaintext range from its CBC blocks as they arrive:
 * the span's first block is the IV, and each piece after it is cut where
 * a slot ends, so that the blocks it completes go to one slot (off and
 * stride are multiples of the block).
 */
struct format_dec {
	const struct f1_file *f;
	struct f1_decryptor *dec; /* once the IV is in */
	uint8_t *const *out;
	size_t stride;
	uint64_t total; /* the range's bytes, rounded up to whole blocks */
	uint8_t iv[CRYPTO_BLOCK];
	size_t iv_got;
	uint64_t in;   /* bytes after the IV taken */
	uint64_t done; /* plaintext bytes written */
	int err;
};

static int fmt1_dec_new(const struct format_file *ff, uint64_t off, size_t len, uint8_t *const *out,
			size_t stride, struct format_dec **ret)
{
	struct format_dec *d = calloc(1, sizeof(*d));

	if (!d)
		return -ENOMEM;
	d->f = (const struct f1_file *)ff;
	d->out = out;
	d->stride = stride;
	d->total = (len + CRYPTO_BLOCK - 1) / CRYPTO_BLOCK * CRYPTO_BLOCK;
	*ret = d;
	return 0;
}

static int fmt1_dec_update(struct format_dec *d, const uint8_t *ct, size_t n)
{
	while (n && !d->err) {
		uint64_t slot_end = (d->in / d->stride + 1) * d->stride;
		size_t k, got = 0;

		if (d->iv_got < CRYPTO_BLOCK) {
			k = n < CRYPTO_BLOCK - d->iv_got ? n : CRYPTO_BLOCK - d->iv_got;
			memcpy(d->iv + d->iv_got, ct, k);
			d->iv_got += k;
			if (d->iv_got == CRYPTO_BLOCK)
				d->err = f1_decryptor_new(d->f->key, d->iv, &d->dec);
		} else if (d->in >= d->total) {
			d->err = -EPROTO; /* more bytes than the span has */
			break;
		} else {
			if (slot_end > d->total)
				slot_end = d->total;
			k = n < slot_end - d->in ? n : (size_t)(slot_end - d->in);
			/* What a held partial block and these bytes complete lands in this slot. */
			d->err = f1_decryptor_update(
				d->dec, ct, k, d->out[d->done / d->stride] + d->done % d->stride,
				&got);
			d->in += k;
			d->done += got;
		}
		ct += k;
		n -= k;
	}
	return d->err;
}

static int fmt1_dec_end(struct format_dec *d, char **ret_msg)
{
	int r = d->err;

	if (r == 0 && (d->iv_got < CRYPTO_BLOCK || d->in < d->total)) {
		r = -EIO;
		msg_set(ret_msg, "its blocks came short (%llu of %llu bytes)",
			(unsigned long long)(d->iv_got + d->in),
			(unsigned long long)(CRYPTO_BLOCK + d->total));
	} else if (r == -EPROTO) {
		msg_set(ret_msg, "more bytes came than its blocks hold");
	} else if (r < 0) {
		msg_set(ret_msg, "decrypting its blocks failed: %s", strerror(-r));
	}
	f1_decryptor_free(d->dec);
	free(d);
	return r;
}

static void fmt1_close(struct format_file *ff)
{
	struct f1_file *f = (struct f1_file *)ff;

	if (!f)
		return;
	secmem_free(f->key);
	free(f);
}

static uint64_t fmt1_small(uint64_t size)
{
	return f1_small_size(f1_cipher_size(size));
}

static int fmt1_enc_new(const uint8_t *key, uint64_t size, unsigned chunk_shift,
			struct format_enc **ret, uint8_t **ret_key, char ret_file_id[33])
{
	struct format_enc *e;
	int r;

	if (!key)
		return -EINVAL;
	e = calloc(1, sizeof(*e));
	if (!e)
		return -ENOMEM;
	r = f1_encryptor_new(key, NULL, &e->enc);
	if (r < 0) {
		free(e);
		return r;
	}
	e->size = size;
	*ret = e;
	return 0;
}

static uint64_t fmt1_enc_size(const struct format_enc *e)
{
	return f1_cipher_size(e->size);
}

static size_t fmt1_enc_next(const struct format_enc *e, size_t *ret_out_cap)
{
	uint64_t left = e->size - e->done;

	/* E's IV and the padding block come with the first and the last update. */
	*ret_out_cap = F1_STEP + 3 * CRYPTO_BLOCK;
	return left < F1_STEP ? (size_t)left : F1_STEP;
}

static int fmt1_enc_done(const struct format_enc *e)
{
	return e->enc == NULL;
}

static int fmt1_enc_update(struct format_enc *e, const uint8_t *plain, size_t n, uint8_t *out,
			   size_t *ret_len)
{
	size_t len = 0, tail = 0;
	int r;

	if (!e->enc)
		return -EINVAL;
	r = f1_encryptor_update(e->enc, plain, n, out, &len);
	if (r < 0)
		return r;
	e->done += n;
	if (e->done == e->size) {
		r = f1_encryptor_final(e->enc, out + len, &tail);
		f1_encryptor_free(e->enc);
		e->enc = NULL;
		if (r < 0)
			return r;
	}
	*ret_len = len + tail;
	return 0;
}

static void fmt1_enc_free(struct format_enc *e)
{
	if (!e)
		return;
	f1_encryptor_free(e->enc);
	free(e);
}

static int fmt1_key_material(struct keys *k, const char *name, struct format_key *fk,
			     char **ret_msg)
{
	int r = k->ops->small_part(k, name, &fk->prefix, &fk->prefix_len, ret_msg);

	if (r < 0)
		return r;
	/* The small part begins with E's random IV: every publication's is new. */
	fk->mark = fk->prefix;
	fk->mark_len = fk->prefix_len;
	fk->file_id[0] = 0;
	return 0;
}

static int fmt1_key_unlock(struct keys *k, struct format_key *fk, char **ret_msg)
{
	int r;

	fk->key = secmem_alloc(CRYPTO_KEY_SIZE);
	if (!fk->key)
		return -ENOMEM;
	r = k->ops->resource_key(k, fk->key, ret_msg);
	if (r < 0) {
		secmem_free(fk->key);
		fk->key = NULL;
	}
	return r;
}

static int fmt1_stream_size(uint64_t big, uint64_t *ret)
{
	/* |E| - min(3072, floor(0.3 |E|)) = big. */
	for (uint64_t e = (big + 15) / 16 * 16; e <= big + 3072 + 16; e += 16) {
		if (e >= 32 && e - f1_small_size(e) == big) {
			*ret = e;
			return 0;
		}
	}
	return -EPROTO;
}

const struct format_ops format_f1 = {
	.id = 1,
	.chunk_hashes = 1,
	.file_key = 0,
	.sniff = fmt1_sniff,
	.key_material = fmt1_key_material,
	.key_unlock = fmt1_key_unlock,
	.stream_size = fmt1_stream_size,
	.head = fmt1_head,
	.open = fmt1_open,
	.span = fmt1_span,
	.dec_new = fmt1_dec_new,
	.dec_update = fmt1_dec_update,
	.dec_end = fmt1_dec_end,
	.close = fmt1_close,
	.small_size = fmt1_small,
	.enc_new = fmt1_enc_new,
	.enc_size = fmt1_enc_size,
	.enc_next = fmt1_enc_next,
	.enc_done = fmt1_enc_done,
	.enc_update = fmt1_enc_update,
	.enc_free = fmt1_enc_free,
};
