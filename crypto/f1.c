/*
 * f1.c - format 1 of docs/formats.md, the legacy AES-256-CBC split: its key
 * derivations, whole-buffer and streaming encryption, and the range
 * decryption the read path uses (any run of whole blocks, decrypted with
 * the block before it as the IV).
 *
 * No locking: all state is in the caller's buffers and contexts.
 */
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "crypto/crypto.h"

/* EVP's update functions take an int length; feed them in steps of this. */
#define F1_STEP (1u << 30)

/*
 * The cipher, fetched once: EVP_aes_256_cbc() looks it up in the provider store,
 * under its lock, on every init, and the read path inits once per read.
 * Kept for the life of the process.
 */
static pthread_once_t f1_cbc_once = PTHREAD_ONCE_INIT;
static EVP_CIPHER *f1_cbc;

static void f1_cbc_fetch(void)
{
	f1_cbc = EVP_CIPHER_fetch(NULL, "AES-256-CBC", NULL);
}

static const EVP_CIPHER *f1_cipher(void)
{
	pthread_once(&f1_cbc_once, f1_cbc_fetch);
	return f1_cbc;
}

/* A piece of a string that a key is derived from. */
struct f1_piece {
	const void *p;
	size_t n;
};

/* ks(pieces) into out (65 bytes, NUL-terminated). */
static int f1_ks_pieces(const struct f1_piece *pieces, size_t count, char out[CRYPTO_KS_LEN + 1])
{
	uint8_t md[48];
	EVP_MD_CTX *ctx;
	size_t i;
	int err = -EIO;

	ctx = EVP_MD_CTX_new();
	if (!ctx)
		return -ENOMEM;
	if (EVP_DigestInit_ex(ctx, EVP_sha384(), NULL) != 1)
		goto free_ctx;
	for (i = 0; i < count; i++)
		if (EVP_DigestUpdate(ctx, pieces[i].p, pieces[i].n) != 1)
			goto free_ctx;
	if (EVP_DigestFinal_ex(ctx, md, NULL) != 1)
		goto free_ctx;
	crypto_b64_encode(md, sizeof(md), out);
	err = 0;
free_ctx:
	EVP_MD_CTX_free(ctx);
	OPENSSL_cleanse(md, sizeof(md));
	return err;
}

/* aes(pieces) = SHA256(ks(pieces)). */
static int f1_aes_pieces(const struct f1_piece *pieces, size_t count, uint8_t out[CRYPTO_KEY_SIZE])
{
	char ks[CRYPTO_KS_LEN + 1];
	int err;

	err = f1_ks_pieces(pieces, count, ks);
	if (err == 0 && EVP_Digest(ks, CRYPTO_KS_LEN, out, NULL, EVP_sha256(), NULL) != 1)
		err = -EIO;
	OPENSSL_cleanse(ks, sizeof(ks));
	return err;
}

void f1_key_string(const void *s, size_t n, char out[CRYPTO_KS_LEN + 1])
{
	struct f1_piece piece = {s, n};

	/* See encode.c: a failed digest must not turn into a key. */
	if (f1_ks_pieces(&piece, 1, out) < 0)
		abort();
}

void f1_aes_key(const void *s, size_t n, uint8_t out[CRYPTO_KEY_SIZE])
{
	struct f1_piece piece = {s, n};

	if (f1_aes_pieces(&piece, 1, out) < 0)
		abort();
}

void f1_hw_hash(const char *hw, char out[CRYPTO_KS_LEN + 1])
{
	static const char pre[] = "Azaion_", post[] = "_%$$$)0_";
	struct f1_piece pieces[] = {
		{pre, sizeof(pre) - 1},
		{hw, strlen(hw)},
		{post, sizeof(post) - 1},
	};

	if (f1_ks_pieces(pieces, 3, out) < 0)
		abort();
}

int f1_api_key(const char *email, const char *password, const char *hw_hash,
	       uint8_t out[CRYPTO_KEY_SIZE])
{
	static const char dash[] = "-", post[] = "-#%@AzaionKey@%#---";
	struct f1_piece pieces[6];

	if (!email || !password || !hw_hash)
		return -EINVAL;
	pieces[0] = (struct f1_piece){email, strlen(email)};
	pieces[1] = (struct f1_piece){dash, 1};
	pieces[2] = (struct f1_piece){password, strlen(password)};
	pieces[3] = (struct f1_piece){dash, 1};
	pieces[4] = (struct f1_piece){hw_hash, strlen(hw_hash)};
	pieces[5] = (struct f1_piece){post, sizeof(post) - 1};
	return f1_aes_pieces(pieces, 6, out);
}

void f1_archive_key(const void *fragment, size_t n, uint8_t out[CRYPTO_KEY_SIZE])
{
	crypto_sha256(fragment, n, out);
}

int f1_hardware_string(const char *cpu, const char *gpu, const char *memory, const char *serial,
		       char *out, size_t cap)
{
	int len;

	if (!cpu || !gpu || !memory || !serial || !out || cap == 0)
		return -EINVAL;
	len = snprintf(out, cap, "CPU: %s. GPU: %s. Memory: %s. DriveSerial: %s", cpu, gpu, memory,
		       serial);
	if (len < 0)
		return -EINVAL;
	if ((size_t)len >= cap) {
		out[0] = '\0';
		return -ENOBUFS;
	}
	return 0;
}

uint64_t f1_cipher_size(uint64_t plain_size)
{
	/* Saturates instead of wrapping; no real file comes near. */
	if (plain_size > UINT64_MAX - 2 * CRYPTO_BLOCK)
		return UINT64_MAX;
	return CRYPTO_BLOCK + (plain_size / CRYPTO_BLOCK + 1) * CRYPTO_BLOCK;
}

uint64_t f1_small_size(uint64_t e_size)
{
	/* 10240 * 3 / 10 = 3072: from there on the cap holds (and e*3 cannot overflow). */
	if (e_size >= 10240)
		return 3072;
	return e_size * 3 / 10;
}

/* Runs update over n bytes in int-sized steps; *ret_len gets the bytes written. */
static int f1_update(EVP_CIPHER_CTX *ctx, const uint8_t *in, size_t n, uint8_t *out,
		     size_t *ret_len)
{
	size_t done = 0, step;
	int len;

	*ret_len = 0;
	while (n > 0) {
		step = n > F1_STEP ? F1_STEP : n;
		if (EVP_CipherUpdate(ctx, out + done, &len, in, (int)step) != 1)
			return -EIO;
		done += (size_t)len;
		in += step;
		n -= step;
	}
	*ret_len = done;
	return 0;
}

/* ---- streaming encryption -------------------------------------------- */

struct f1_encryptor {
	EVP_CIPHER_CTX *ctx;
	uint8_t iv[CRYPTO_BLOCK];
	int iv_written;
	int finished;
};

int f1_encryptor_new(const uint8_t key[CRYPTO_KEY_SIZE], const uint8_t *iv,
		     struct f1_encryptor **ret)
{
	struct f1_encryptor *e;
	int err;

	e = calloc(1, sizeof(*e));
	if (!e)
		return -ENOMEM;
	if (iv) {
		memcpy(e->iv, iv, CRYPTO_BLOCK);
	} else {
		err = crypto_random(e->iv, CRYPTO_BLOCK);
		if (err < 0)
			goto free_e;
	}
	err = -ENOMEM;
	e->ctx = EVP_CIPHER_CTX_new();
	if (!e->ctx)
		goto free_e;
	err = -EIO;
	if (!f1_cipher() || EVP_EncryptInit_ex(e->ctx, f1_cipher(), NULL, key, e->iv) != 1)
		goto free_ctx;
	*ret = e;
	return 0;

free_ctx:
	EVP_CIPHER_CTX_free(e->ctx);
free_e:
	free(e);
	return err;
}

int f1_encryptor_update(struct f1_encryptor *e, const void *in, size_t n, uint8_t *out,
			size_t *ret_len)
{
	size_t head = 0, len;
	int err;

	if (e->finished)
		return -EINVAL;
	if (!e->iv_written) {
		memcpy(out, e->iv, CRYPTO_BLOCK);
		head = CRYPTO_BLOCK;
	}
	err = f1_update(e->ctx, in, n, out + head, &len);
	if (err < 0)
		return err;
	e->iv_written = 1;
	*ret_len = head + len;
	return 0;
}

int f1_encryptor_final(struct f1_encryptor *e, uint8_t *out, size_t *ret_len)
{
	size_t head = 0;
	int len;

	if (e->finished)
		return -EINVAL;
	if (!e->iv_written) {
		memcpy(out, e->iv, CRYPTO_BLOCK);
		head = CRYPTO_BLOCK;
	}
	if (EVP_EncryptFinal_ex(e->ctx, out + head, &len) != 1)
		return -EIO;
	e->iv_written = 1;
	e->finished = 1;
	*ret_len = head + (size_t)len;
	return 0;
}

void f1_encryptor_free(struct f1_encryptor *e)
{
	if (!e)
		return;
	/* EVP_CIPHER_CTX_free wipes the key schedule. */
	EVP_CIPHER_CTX_free(e->ctx);
	OPENSSL_cleanse(e, sizeof(*e));
	free(e);
}

/* ---- whole-buffer CBC ------------------------------------------------- */

int f1_encrypt(const uint8_t key[CRYPTO_KEY_SIZE], const void *in, size_t n, uint8_t *out,
	       size_t *ret_len)
{
	struct f1_encryptor *e;
	size_t len, tail;
	int err;

	if (n > SIZE_MAX - 2 * CRYPTO_BLOCK)
		return -EINVAL;
	err = f1_encryptor_new(key, NULL, &e);
	if (err < 0)
		return err;
	err = f1_encryptor_update(e, in, n, out, &len);
	if (err < 0)
		goto free_e;
	err = f1_encryptor_final(e, out + len, &tail);
	if (err < 0)
		goto free_e;
	*ret_len = len + tail;
free_e:
	f1_encryptor_free(e);
	return err;
}

/*
 * PKCS#7 padding length of the last plaintext block, 0 when invalid.
 * Branch-free: format 1 has no MAC, so a timing difference here would be a
 * padding oracle.
 */
static unsigned f1_pad_len(const uint8_t last[CRYPTO_BLOCK])
{
	unsigned pad = last[CRYPTO_BLOCK - 1];
	unsigned good, i, in_pad, diff;

	/* good = all ones when 1 <= pad <= 16. */
	good = 0u - ((((pad - 1u) | (16u - pad)) >> 8) == 0);
	for (i = 0; i < CRYPTO_BLOCK; i++) {
		/* in_pad = all ones when byte i is part of the padding. */
		in_pad = 0u - (((CRYPTO_BLOCK - 1 - i) - pad) >> 31);
		diff = last[i] ^ pad;
		good &= ~(in_pad & (0u - ((diff | (0u - diff)) >> 31)));
	}
	return pad & good;
}

/* CBC decryption of whole blocks, no padding: in = iv || c, out gets |c| bytes. */
static int f1_cbc_raw(const uint8_t key[CRYPTO_KEY_SIZE], const uint8_t *in, size_t n, uint8_t *out)
{
	EVP_CIPHER_CTX *ctx;
	size_t len;
	int err = -EIO;
	int tail;

	if (!f1_cipher())
		return -EIO;
	ctx = EVP_CIPHER_CTX_new();
	if (!ctx)
		return -ENOMEM;
	if (EVP_DecryptInit_ex(ctx, f1_cipher(), NULL, key, in) != 1)
		goto free_ctx;
	if (EVP_CIPHER_CTX_set_padding(ctx, 0) != 1)
		goto free_ctx;
	if (f1_update(ctx, in + CRYPTO_BLOCK, n - CRYPTO_BLOCK, out, &len) < 0)
		goto free_ctx;
	if (EVP_DecryptFinal_ex(ctx, out + len, &tail) != 1)
		goto free_ctx;
	if (len + (size_t)tail != n - CRYPTO_BLOCK)
		goto free_ctx;
	err = 0;
free_ctx:
	EVP_CIPHER_CTX_free(ctx);
	if (err < 0)
		OPENSSL_cleanse(out, n - CRYPTO_BLOCK);
	return err;
}

int f1_decrypt(const uint8_t key[CRYPTO_KEY_SIZE], const uint8_t *in, size_t n, uint8_t *out,
	       size_t *ret_len)
{
	unsigned pad;
	int err;

	/* A length no CBC(k, m) can have is a damaged message, not a bad argument. */
	if (n < 2 * CRYPTO_BLOCK || n % CRYPTO_BLOCK)
		return -EBADMSG;
	err = f1_cbc_raw(key, in, n, out);
	if (err < 0)
		return err;
	pad = f1_pad_len(out + n - 2 * CRYPTO_BLOCK);
	if (!pad) {
		OPENSSL_cleanse(out, n - CRYPTO_BLOCK);
		return -EBADMSG;
	}
	*ret_len = n - CRYPTO_BLOCK - pad;
	return 0;
}

/* ---- range decryption ------------------------------------------------- */

int f1_decrypt_blocks(const uint8_t key[CRYPTO_KEY_SIZE], const uint8_t *e, size_t n, uint8_t *out)
{
	if (n < 2 * CRYPTO_BLOCK || n % CRYPTO_BLOCK)
		return -EINVAL;
	return f1_cbc_raw(key, e, n, out);
}

struct f1_decryptor {
	EVP_CIPHER_CTX *ctx;
};

int f1_decryptor_new(const uint8_t key[CRYPTO_KEY_SIZE], const uint8_t iv[CRYPTO_BLOCK],
		     struct f1_decryptor **ret)
{
	struct f1_decryptor *d;

	if (!f1_cipher())
		return -EIO;
	d = calloc(1, sizeof(*d));
	if (!d)
		return -ENOMEM;
	d->ctx = EVP_CIPHER_CTX_new();
	if (!d->ctx) {
		free(d);
		return -ENOMEM;
	}
	if (EVP_DecryptInit_ex(d->ctx, f1_cipher(), NULL, key, iv) != 1 ||
	    EVP_CIPHER_CTX_set_padding(d->ctx, 0) != 1) {
		f1_decryptor_free(d);
		return -EIO;
	}
	*ret = d;
	return 0;
}

int f1_decryptor_update(struct f1_decryptor *d, const uint8_t *in, size_t n, uint8_t *out,
			size_t *ret_len)
{
	return f1_update(d->ctx, in, n, out, ret_len);
}

void f1_decryptor_free(struct f1_decryptor *d)
{
	if (!d)
		return;
	EVP_CIPHER_CTX_free(d->ctx); /* wipes the key schedule */
	free(d);
}

int f1_plain_size(const uint8_t key[CRYPTO_KEY_SIZE], const uint8_t last32[32], uint64_t e_size,
		  uint64_t *ret_size)
{
	uint8_t block[CRYPTO_BLOCK];
	unsigned pad;
	int err;

	if (e_size < 2 * CRYPTO_BLOCK || e_size % CRYPTO_BLOCK)
		return -EBADMSG;
	err = f1_cbc_raw(key, last32, 2 * CRYPTO_BLOCK, block);
	if (err < 0)
		return err;
	pad = f1_pad_len(block);
	OPENSSL_cleanse(block, sizeof(block));
	if (!pad)
		return -EBADMSG;
	*ret_size = e_size - CRYPTO_BLOCK - pad;
	return 0;
}
