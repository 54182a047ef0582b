/*
 * format_f2.c - format 2 (docs/formats.md): a 64-byte header, then the
 * plaintext in chunks of 2^shift bytes, each sealed by AES-256-GCM with
 * the file's own key and a tag of its own. A plaintext range needs the
 * whole chunks it touches.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "fs/format.h"
#include "fs/msg.h"

struct f2_file {
	struct format_file ff;
	struct f2_header hdr;
	uint8_t *key; /* locked */
};

struct format_enc {
	struct f2_header hdr;
	uint8_t *key; /* locked, the caller's copy is separate */
	uint64_t chunk;
	int header_sent;
};

static int fmt2_sniff(const uint8_t *b, size_t n)
{
	return n >= 4 && memcmp(b, F2_MAGIC, 4) == 0;
}

static int fmt2_key_material(struct keys *k, const char *name, struct format_key *fk,
			     char **ret_msg)
{
	int r = k->ops->key_doc(k, name, &fk->doc, ret_msg);

	/* No key for this device: to a reader, not allowed. */
	if (r == -ENOENT)
		r = -EACCES;
	if (r < 0)
		return r;
	memcpy(fk->file_id, fk->doc.file_id, sizeof(fk->file_id));
	fk->mark = fk->file_id;
	fk->mark_len = strlen(fk->file_id);
	return 0;
}

static int fmt2_key_unlock(struct keys *k, struct format_key *fk, char **ret_msg)
{
	int r;

	fk->key = secmem_alloc(CRYPTO_KEY_SIZE);
	if (!fk->key)
		return -ENOMEM;
	r = k->ops->unwrap(k, &fk->doc, fk->key, ret_msg);
	if (r < 0) {
		secmem_free(fk->key);
		fk->key = NULL;
	}
	return r;
}

static int fmt2_stream_size(uint64_t big, uint64_t *ret)
{
	*ret = big;
	return 0;
}

static void fmt2_head(uint64_t cipher_size, const struct format_hint *hint, uint64_t *ret_off,
		      size_t *ret_len)
{
	*ret_off = 0;
	*ret_len = F2_HEADER_SIZE;
}

static int fmt2_open(const uint8_t *key, const uint8_t *head, uint64_t cipher_size,
		     const struct format_hint *hint, struct format_file **ret, char **ret_msg)
{
	char file_id[2 * F2_FILE_ID_SIZE + 1];
	struct f2_file *f;
	struct f2_header h;
	int r;

	r = f2_header_parse(head, &h);
	if (r < 0) {
		msg_set(ret_msg, "cannot read its header: %s", strerror(-r));
		return r;
	}
	crypto_hex(h.file_id, F2_FILE_ID_SIZE, file_id);
	if (hint && hint->file_id && strcasecmp(file_id, hint->file_id) != 0) {
		msg_set(ret_msg, "the key is for file %s, the big part is file %s", hint->file_id,
			file_id);
		return -EBADMSG;
	}
	if ((hint && hint->has_size && h.size != hint->size) || f2_big_size(&h) != cipher_size) {
		msg_set(ret_msg,
			"the header's sizes do not match the catalog's or the big part's "
			"(%llu bytes, the header says %llu)",
			(unsigned long long)cipher_size, (unsigned long long)f2_big_size(&h));
		return -EBADMSG;
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
	f->hdr = h;
	f->ff.ops = &format_f2;
	f->ff.size = h.size;
	f->ff.cipher_size = cipher_size;
	f->ff.unit = f2_chunk_size(&h);
	*ret = &f->ff;
	return 0;
}

static void fmt2_span(const struct format_file *ff, uint64_t off, size_t len, uint64_t *ret_c0,
		      uint64_t *ret_c1)
{
	const struct f2_header *h = &((const struct f2_file *)ff)->hdr;
	uint64_t cs = f2_chunk_size(h), c0 = off / cs, c1 = len ? (off + len - 1) / cs : c0;

	*ret_c0 = f2_chunk_offset(h, c0);
	*ret_c1 = f2_chunk_offset(h, c1) + f2_chunk_plain_len(h, c1) + CRYPTO_TAG_SIZE;
}

/*
 * A decryption of a plaintext range from its chunks as they arrive: each
 * chunk's ciphertext is opened into its place as it comes, its tag held
 * until the chunk is whole. A chunk inside one slot is opened there; one
 * that straddles slots or the range's ends goes through tmp.
 */
struct format_dec {
	const struct f2_file *f;
	struct crypto_gcm *g;
	uint64_t off, end; /* the plaintext range */
	uint8_t *const *out;
	size_t stride;
	uint64_t c, c_end; /* the chunk being received; one past the last */
	size_t plen;	   /* its plaintext bytes */
	size_t got;	   /* its bytes received: ciphertext, then tag */
	uint8_t *dst;	   /* where its plaintext goes */
	uint8_t *tmp;	   /* locked, one chunk */
	uint8_t tag[CRYPTO_TAG_SIZE];
	int err;
};

static int fmt2_dec_chunk(struct format_dec *d)
{
	const struct f2_header *h = &d->f->hdr;
	uint64_t cs = f2_chunk_size(h), p0 = d->c * cs, p1;

	d->plen = (size_t)f2_chunk_plain_len(h, d->c);
	d->got = 0;
	p1 = p0 + d->plen;
	if (d->plen && p0 >= d->off && p1 <= d->end &&
	    (p0 - d->off) / d->stride == (p1 - 1 - d->off) / d->stride) {
		d->dst = d->out[(p0 - d->off) / d->stride] + (p0 - d->off) % d->stride;
	} else {
		if (!d->tmp && !(d->tmp = secmem_alloc(cs)))
			return -ENOMEM;
		d->dst = d->tmp;
	}
	return f2_chunk_start(d->g, h, d->c);
}

/* Chunk d->c is whole: checks its tag and moves on to the next. */
static int fmt2_dec_chunk_done(struct format_dec *d)
{
	uint64_t p0 = d->c * f2_chunk_size(&d->f->hdr), p1 = p0 + d->plen;
	int r = crypto_gcm_finish(d->g, d->tag);

	if (r < 0) {
		crypto_wipe(d->dst, d->plen);
		return r;
	}
	for (uint64_t q = p0 > d->off ? p0 : d->off; d->dst == d->tmp && q < p1 && q < d->end;) {
		uint64_t s = (q - d->off) / d->stride, s_end = d->off + (s + 1) * d->stride;
		uint64_t to = s_end < p1 ? s_end : p1;

		if (to > d->end)
			to = d->end;
		memcpy(d->out[s] + (q - d->off) % d->stride, d->tmp + (q - p0), to - q);
		q = to;
	}
	if (++d->c < d->c_end)
		return fmt2_dec_chunk(d);
	return 0;
}

static int fmt2_dec_update(struct format_dec *d, const uint8_t *ct, size_t n)
{
	while (n && !d->err) {
		size_t k;

		if (d->c >= d->c_end) {
			d->err = -EPROTO; /* more bytes than the span has */
			break;
		}
		if (d->got < d->plen) {
			k = n < d->plen - d->got ? n : d->plen - d->got;
			d->err = crypto_gcm_update(d->g, ct, k, d->dst + d->got);
		} else {
			k = n < d->plen + CRYPTO_TAG_SIZE - d->got
				    ? n
				    : d->plen + CRYPTO_TAG_SIZE - d->got;
			memcpy(d->tag + (d->got - d->plen), ct, k);
		}
		d->got += k;
		ct += k;
		n -= k;
		if (!d->err && d->got == d->plen + CRYPTO_TAG_SIZE)
			d->err = fmt2_dec_chunk_done(d);
	}
	return d->err;
}

static void fmt2_dec_free(struct format_dec *d)
{
	/* Plaintext of a chunk that did not pass stays nowhere. */
	if (d->err && d->c < d->c_end && d->dst)
		crypto_wipe(d->dst, d->got < d->plen ? d->got : d->plen);
	crypto_gcm_free(d->g);
	secmem_free(d->tmp);
	free(d);
}

static int fmt2_dec_end(struct format_dec *d, char **ret_msg)
{
	unsigned long long c = d->c;
	int r;

	if (d->err == 0 && d->c < d->c_end) {
		d->err = -EIO;
		msg_set(ret_msg, "chunk %llu came short (%zu of %zu bytes)", c, d->got,
			d->plen + CRYPTO_TAG_SIZE);
	} else if (d->err == -EBADMSG) {
		msg_set(ret_msg,
			"chunk %llu fails its check (%s): tampered, truncated or not this "
			"file's",
			c, strerror(EBADMSG));
	} else if (d->err == -EPROTO) {
		msg_set(ret_msg, "more bytes came than its chunks hold");
	} else if (d->err < 0) {
		msg_set(ret_msg, "chunk %llu cannot be decrypted: %s", c, strerror(-d->err));
	}
	r = d->err;
	fmt2_dec_free(d);
	return r;
}

static int fmt2_dec_new(const struct format_file *ff, uint64_t off, size_t len, uint8_t *const *out,
			size_t stride, struct format_dec **ret)
{
	const struct f2_file *f = (const struct f2_file *)ff;
	uint64_t cs = f2_chunk_size(&f->hdr);
	struct format_dec *d;
	int r;

	d = calloc(1, sizeof(*d));
	if (!d)
		return -ENOMEM;
	d->f = f;
	d->off = off;
	d->end = off + len;
	d->out = out;
	d->stride = stride;
	d->c = off / cs;
	d->c_end = len ? (off + len - 1) / cs + 1 : d->c;
	r = crypto_gcm_new(f->key, &d->g);
	if (r == 0 && d->c < d->c_end)
		r = fmt2_dec_chunk(d);
	if (r < 0) {
		d->err = r;
		fmt2_dec_free(d);
		return r;
	}
	*ret = d;
	return 0;
}

static void fmt2_close(struct format_file *ff)
{
	struct f2_file *f = (struct f2_file *)ff;

	if (!f)
		return;
	secmem_free(f->key);
	free(f);
}

static uint64_t fmt2_small(uint64_t size)
{
	return 0; /* the small part is the key document */
}

static int fmt2_enc_new(const uint8_t *key, uint64_t size, unsigned chunk_shift,
			struct format_enc **ret, uint8_t **ret_key, char ret_file_id[33])
{
	uint8_t file_id[F2_FILE_ID_SIZE];
	struct format_enc *e;
	uint8_t *k = NULL;
	int r;

	e = calloc(1, sizeof(*e));
	if (!e)
		return -ENOMEM;
	e->key = secmem_alloc(CRYPTO_KEY_SIZE);
	k = secmem_alloc(CRYPTO_KEY_SIZE);
	if (!e->key || !k) {
		r = -ENOMEM;
		goto err;
	}
	/* Every publication draws its own key and file id. */
	r = crypto_random(e->key, CRYPTO_KEY_SIZE);
	if (r == 0)
		r = crypto_random(file_id, sizeof(file_id));
	if (r == 0)
		r = f2_header_init(&e->hdr, size, chunk_shift ? chunk_shift : F2_SHIFT_DEFAULT,
				   file_id);
	if (r < 0)
		goto err;
	memcpy(k, e->key, CRYPTO_KEY_SIZE);
	crypto_hex(file_id, F2_FILE_ID_SIZE, ret_file_id);
	*ret_key = k;
	*ret = e;
	return 0;
err:
	secmem_free(k);
	secmem_free(e->key);
	free(e);
	return r;
}

static uint64_t fmt2_enc_size(const struct format_enc *e)
{
	return f2_big_size(&e->hdr);
}

static size_t fmt2_enc_next(const struct format_enc *e, size_t *ret_out_cap)
{
	*ret_out_cap = (size_t)f2_chunk_size(&e->hdr) + CRYPTO_TAG_SIZE;
	if (!e->header_sent)
		return 0;
	return (size_t)f2_chunk_plain_len(&e->hdr, e->chunk);
}

static int fmt2_enc_done(const struct format_enc *e)
{
	return e->header_sent && e->chunk == f2_chunk_count(&e->hdr);
}

static int fmt2_enc_update(struct format_enc *e, const uint8_t *plain, size_t n, uint8_t *out,
			   size_t *ret_len)
{
	int r;

	if (!e->header_sent) {
		memcpy(out, e->hdr.raw, F2_HEADER_SIZE);
		e->header_sent = 1;
		*ret_len = F2_HEADER_SIZE;
		return 0;
	}
	if (fmt2_enc_done(e) || n != f2_chunk_plain_len(&e->hdr, e->chunk))
		return -EINVAL;
	r = f2_seal_chunk(e->key, &e->hdr, e->chunk, plain, n, out);
	if (r < 0)
		return r;
	e->chunk++;
	*ret_len = n + CRYPTO_TAG_SIZE;
	return 0;
}

static void fmt2_enc_free(struct format_enc *e)
{
	if (!e)
		return;
	secmem_free(e->key);
	free(e);
}

const struct format_ops format_f2 = {
	.id = 2,
	.chunk_hashes = 0,
	.file_key = 1,
	.sniff = fmt2_sniff,
	.key_material = fmt2_key_material,
	.key_unlock = fmt2_key_unlock,
	.stream_size = fmt2_stream_size,
	.head = fmt2_head,
	.open = fmt2_open,
	.span = fmt2_span,
	.dec_new = fmt2_dec_new,
	.dec_update = fmt2_dec_update,
	.dec_end = fmt2_dec_end,
	.close = fmt2_close,
	.small_size = fmt2_small,
	.enc_new = fmt2_enc_new,
	.enc_size = fmt2_enc_size,
	.enc_next = fmt2_enc_next,
	.enc_done = fmt2_enc_done,
	.enc_update = fmt2_enc_update,
	.enc_free = fmt2_enc_free,
};
