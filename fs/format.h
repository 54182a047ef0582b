/*
 * format.h - the decryption layer: one table of operations per format of
 * docs/formats.md. The read path (mount, POST /load), unlock and publish
 * reach a format only through its table, over any source: the layer does
 * no I/O, it says which ciphertext it needs and turns those bytes into
 * plaintext (or plaintext into ciphertext). Adding a format is one more
 * format_fN.c and its line in format_get.
 *
 * Each format has one ciphertext stream:
 *   format 1: E = CBC(key, P), cut into the small part (E's first
 *             small_size bytes, from the API) and the big part (the rest);
 *   format 2: the big part, header and GCM chunks; the small part is the
 *             key document.
 * Offsets below are in that stream (cipher) or in the plaintext (off).
 *
 * Errors are 0 or a negative errno, with a message the caller owns (may be
 * NULL on -ENOMEM); -EBADMSG means bytes that fail their check (tampered,
 * truncated, another file's or another key's). Nothing here logs.
 */
#ifndef AZAION_FORMAT_H
#define AZAION_FORMAT_H

#include <stddef.h>
#include <stdint.h>

#include "crypto/crypto.h"
#include "fs/keys.h"

/* What the catalog or the key material already says of a file. */
struct format_hint {
	int has_size;
	uint64_t size;	     /* plaintext bytes, when has_size */
	size_t prefix_len;   /* bytes of the stream before the big part */
	const char *file_id; /* the key document's, hex; NULL: no check */
};

/* What opening one file takes from the key source (format_key_clear frees it). */
struct format_key {
	uint8_t *key;	 /* CRYPTO_KEY_SIZE bytes, locked; set by unlock */
	uint8_t *prefix; /* the stream's bytes before the big part (locked), or NULL */
	size_t prefix_len;
	const void *mark; /* names this publication (for cache_dir): points into this */
	size_t mark_len;
	char file_id[33];    /* "" when the format has none */
	struct keys_doc doc; /* what unlock needs, where the format has one */
};
void format_key_clear(struct format_key *fk);

/* An opened file: its key in locked memory and what the layout needs. */
struct format_file {
	const struct format_ops *ops;
	uint64_t size;	      /* plaintext bytes */
	uint64_t cipher_size; /* bytes of the ciphertext stream */
	uint64_t unit;	      /* the natural step: a block (format 1), a chunk (format 2) */
};

struct format_enc;
struct format_dec;

struct format_ops {
	int id; /* 1, 2, ... as in the catalog and the API */
	/*
	 * 1 for a format without tags: its big part's ciphertext is checked
	 * against a list of chunk hashes from the API (docs/trust.md section 4).
	 */
	int chunk_hashes;
	/*
	 * 1 for a format whose files have keys of their own (format 2): the
	 * reader wipes one at its file's last close (docs/tpm.md), where a
	 * shared key (format 1's resource key) stays.
	 */
	int file_key;
	/* Whether a stream that begins with these n bytes is this format's (by its magic). */
	int (*sniff)(const uint8_t *b, size_t n);
	/*
	 * The key material of name from k, fast (API calls): the prefix, the
	 * mark, what unlock needs. -ENOKEY: not logged in; -EACCES: not
	 * allowed or no device; -ENOENT: the API holds none.
	 */
	int (*key_material)(struct keys *k, const char *name, struct format_key *fk,
			    char **ret_msg);
	/* Sets fk->key, maybe slowly (the TPM): run beside the head's read. */
	int (*key_unlock)(struct keys *k, struct format_key *fk, char **ret_msg);
	/* The stream's size for a big part of big bytes (the probe's). */
	int (*stream_size)(uint64_t big, uint64_t *ret);
	/*
	 * The range of the ciphertext stream (of cipher_size bytes) that open
	 * needs; *ret_len 0: none.
	 */
	void (*head)(uint64_t cipher_size, const struct format_hint *hint, uint64_t *ret_off,
		     size_t *ret_len);
	/*
	 * Checks the head bytes (NULL when head asked for none) against the
	 * sizes and the hint, derives the plaintext size and keeps a copy of
	 * key (CRYPTO_KEY_SIZE bytes; NULL for a probe of the size, where the
	 * format needs no key for it). -EBADMSG for a head that fails a check.
	 */
	int (*open)(const uint8_t *key, const uint8_t *head, uint64_t cipher_size,
		    const struct format_hint *hint, struct format_file **ret, char **ret_msg);
	/*
	 * The ciphertext [*ret_c0, *ret_c1) that decrypting plaintext
	 * [off, off + len) needs; off is a multiple of CRYPTO_BLOCK and
	 * off + len <= size. Whole multiples of unit waste nothing.
	 */
	void (*span)(const struct format_file *ff, uint64_t off, size_t len, uint64_t *ret_c0,
		     uint64_t *ret_c1);
	/*
	 * Decrypts plaintext [off, off + len) into out: bytes
	 * [off + i * stride, off + (i + 1) * stride) go to out[i], each with
	 * room for stride bytes (a multiple of CRYPTO_BLOCK and, for the last
	 * one, for len rounded up to CRYPTO_BLOCK), from the span's bytes fed
	 * in order by dec_update, in pieces of any size as they arrive, so that
	 * they need no buffer of their own. dec_update returns 0 or the first
	 * failure (-EBADMSG: bytes that fail their check; later pieces are
	 * then ignored). dec_end returns 0 only when every byte of the span
	 * came and passed (-EIO when some did not come; out then holds no
	 * plaintext that failed its check), and frees d.
	 */
	int (*dec_new)(const struct format_file *ff, uint64_t off, size_t len, uint8_t *const *out,
		       size_t stride, struct format_dec **ret);
	int (*dec_update)(struct format_dec *d, const uint8_t *ct, size_t n);
	int (*dec_end)(struct format_dec *d, char **ret_msg);
	/* Wipes the key and frees ff; accepts NULL. */
	void (*close)(struct format_file *ff);

	/* Publishing: the bytes of the stream that go to the small part. */
	uint64_t (*small_size)(uint64_t size);
	/*
	 * An encryptor of size bytes of plaintext. key: format 1 the resource
	 * key; NULL for a format that draws a fresh key (ret_key then gets it,
	 * CRYPTO_KEY_SIZE bytes of locked memory the caller frees, and
	 * ret_file_id the file id in hex).
	 */
	int (*enc_new)(const uint8_t *key, uint64_t size, unsigned chunk_shift,
		       struct format_enc **ret, uint8_t **ret_key, char ret_file_id[33]);
	/* The stream's size in all. */
	uint64_t (*enc_size)(const struct format_enc *e);
	/* Plaintext bytes the next update takes (may be 0), and the room its output needs. */
	size_t (*enc_next)(const struct format_enc *e, size_t *ret_out_cap);
	/* Whether the stream is complete: no update is due. */
	int (*enc_done)(const struct format_enc *e);
	/* Encrypts exactly enc_next bytes into out (*ret_len bytes of the stream). */
	int (*enc_update)(struct format_enc *e, const uint8_t *plain, size_t n, uint8_t *out,
			  size_t *ret_len);
	void (*enc_free)(struct format_enc *e);
};

extern const struct format_ops format_f1;
extern const struct format_ops format_f2;

/* The table of format id; NULL for one this build does not know. */
const struct format_ops *format_get(int id);

/* The format whose magic begins b; format 1 (which has none) otherwise. */
const struct format_ops *format_detect(const uint8_t *b, size_t n);

/* dec_new, dec_update and dec_end over ct, the whole span in one buffer. */
int format_decrypt(const struct format_file *ff, uint64_t off, size_t len, const uint8_t *ct,
		   uint8_t *const *out, size_t stride, char **ret_msg);

static inline void format_close(struct format_file *ff)
{
	if (ff)
		ff->ops->close(ff);
}

#endif
