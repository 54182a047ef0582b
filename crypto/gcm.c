/*
 * gcm.c - AES-256-GCM: the one place that drives OpenSSL's GCM, for the
 * format-2 chunks of docs/formats.md (f2.c) and for the TPM's sealed store
 * of docs/tpm.md (tpm/tpm.c). One buffer at a time (seal, open), or a
 * stream of messages under one key, fed in pieces (struct crypto_gcm).
 *
 * No locking: all state is in the caller's buffers or its crypto_gcm; the
 * cipher is fetched once under pthread_once.
 */
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "crypto/crypto.h"

/*
 * The cipher, fetched once: EVP_aes_256_gcm() looks it up in the provider store,
 * under its lock, on every init, and the read path inits once per read.
 * Kept for the life of the process.
 */
static pthread_once_t gcm_cipher_once = PTHREAD_ONCE_INIT;
static EVP_CIPHER *gcm_cipher_fetched;

static void gcm_cipher_fetch(void)
{
	gcm_cipher_fetched = EVP_CIPHER_fetch(NULL, "AES-256-GCM", NULL);
}

static const EVP_CIPHER *gcm_cipher(void)
{
	pthread_once(&gcm_cipher_once, gcm_cipher_fetch);
	return gcm_cipher_fetched;
}

/* A context with key, nonce and additional data set; enc 1 seals, 0 opens. */
static int gcm_ctx(const uint8_t key[CRYPTO_KEY_SIZE], const uint8_t nonce[CRYPTO_GCM_NONCE_SIZE],
		   const void *aad, size_t aad_len, int enc, EVP_CIPHER_CTX **ret)
{
	EVP_CIPHER_CTX *ctx;
	int len;

	if (!gcm_cipher())
		return -EIO;
	ctx = EVP_CIPHER_CTX_new();
	if (!ctx)
		return -ENOMEM;
	if (EVP_CipherInit_ex(ctx, gcm_cipher(), NULL, NULL, NULL, enc) != 1)
		goto fail;
	if (EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, CRYPTO_GCM_NONCE_SIZE, NULL) != 1)
		goto fail;
	if (EVP_CipherInit_ex(ctx, NULL, NULL, key, nonce, enc) != 1)
		goto fail;
	if (aad_len && EVP_CipherUpdate(ctx, NULL, &len, aad, (int)aad_len) != 1)
		goto fail;
	*ret = ctx;
	return 0;

fail:
	EVP_CIPHER_CTX_free(ctx);
	return -EIO;
}

int crypto_gcm_seal(const uint8_t key[CRYPTO_KEY_SIZE], const uint8_t nonce[CRYPTO_GCM_NONCE_SIZE],
		    const void *aad, size_t aad_len, const void *plain, size_t plain_len,
		    uint8_t *out)
{
	EVP_CIPHER_CTX *ctx;
	int len = 0, tail, err;

	if ((!aad && aad_len) || (!plain && plain_len) || !out)
		return -EINVAL;
	/* OpenSSL counts in int: say so before narrowing. */
	if (aad_len > INT_MAX || plain_len > INT_MAX)
		return -EINVAL;
	err = gcm_ctx(key, nonce, aad, aad_len, 1, &ctx);
	if (err < 0)
		return err;
	err = -EIO;
	if (plain_len && EVP_EncryptUpdate(ctx, out, &len, plain, (int)plain_len) != 1)
		goto free_ctx;
	if (EVP_EncryptFinal_ex(ctx, out + len, &tail) != 1)
		goto free_ctx;
	if ((size_t)len + (size_t)tail != plain_len)
		goto free_ctx;
	if (EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, CRYPTO_TAG_SIZE, out + plain_len) != 1)
		goto free_ctx;
	err = 0;
free_ctx:
	EVP_CIPHER_CTX_free(ctx);
	return err;
}

int crypto_gcm_open(const uint8_t key[CRYPTO_KEY_SIZE], const uint8_t nonce[CRYPTO_GCM_NONCE_SIZE],
		    const void *aad, size_t aad_len, const uint8_t *ct, size_t ct_len, uint8_t *out)
{
	uint8_t tag[CRYPTO_TAG_SIZE];
	EVP_CIPHER_CTX *ctx;
	size_t plain_len;
	int len = 0, tail, err;

	if ((!aad && aad_len) || !ct || !out)
		return -EINVAL;
	if (ct_len < CRYPTO_TAG_SIZE)
		return -EBADMSG;
	plain_len = ct_len - CRYPTO_TAG_SIZE;
	if (aad_len > INT_MAX || plain_len > INT_MAX)
		return -EINVAL;
	err = gcm_ctx(key, nonce, aad, aad_len, 0, &ctx);
	if (err < 0)
		goto wipe;
	err = -EIO;
	/* Read before out is written: out may be ct itself. */
	memcpy(tag, ct + plain_len, CRYPTO_TAG_SIZE);
	if (plain_len && EVP_DecryptUpdate(ctx, out, &len, ct, (int)plain_len) != 1)
		goto free_ctx;
	if ((size_t)len != plain_len)
		goto free_ctx;
	if (EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, CRYPTO_TAG_SIZE, tag) != 1)
		goto free_ctx;
	/* Compares the tag in constant time; anything but 1 is a failed check. */
	if (EVP_DecryptFinal_ex(ctx, out + len, &tail) != 1) {
		err = -EBADMSG;
		goto free_ctx;
	}
	err = 0;
free_ctx:
	EVP_CIPHER_CTX_free(ctx);
wipe:
	if (err < 0)
		crypto_wipe(out, plain_len);
	return err;
}

struct crypto_gcm {
	EVP_CIPHER_CTX *ctx; /* the key expanded; a nonce per message */
};

int crypto_gcm_new(const uint8_t key[CRYPTO_KEY_SIZE], struct crypto_gcm **ret)
{
	struct crypto_gcm *g;
	int err = -ENOMEM;

	if (!gcm_cipher())
		return -EIO;
	g = calloc(1, sizeof(*g));
	if (!g)
		goto fail;
	g->ctx = EVP_CIPHER_CTX_new();
	if (!g->ctx)
		goto fail;
	err = -EIO;
	if (EVP_DecryptInit_ex(g->ctx, gcm_cipher(), NULL, NULL, NULL) != 1 ||
	    EVP_CIPHER_CTX_ctrl(g->ctx, EVP_CTRL_GCM_SET_IVLEN, CRYPTO_GCM_NONCE_SIZE, NULL) != 1 ||
	    EVP_DecryptInit_ex(g->ctx, NULL, NULL, key, NULL) != 1)
		goto fail;
	*ret = g;
	return 0;

fail:
	crypto_gcm_free(g);
	return err;
}

int crypto_gcm_start(struct crypto_gcm *g, const uint8_t nonce[CRYPTO_GCM_NONCE_SIZE],
		     const void *aad, size_t aad_len)
{
	int len;

	if ((!aad && aad_len) || aad_len > INT_MAX)
		return -EINVAL;
	/* A new nonce under the key already set: no key expansion. */
	if (EVP_DecryptInit_ex(g->ctx, NULL, NULL, NULL, nonce) != 1)
		return -EIO;
	if (aad_len && EVP_DecryptUpdate(g->ctx, NULL, &len, aad, (int)aad_len) != 1)
		return -EIO;
	return 0;
}

int crypto_gcm_update(struct crypto_gcm *g, const uint8_t *ct, size_t n, uint8_t *out)
{
	int len = 0;

	if (!n)
		return 0;
	if (n > INT_MAX)
		return -EINVAL;
	/* GCM is a stream mode: every byte in gives one out, at once. */
	if (EVP_DecryptUpdate(g->ctx, out, &len, ct, (int)n) != 1 || (size_t)len != n)
		return -EIO;
	return 0;
}

int crypto_gcm_finish(struct crypto_gcm *g, const uint8_t tag[CRYPTO_TAG_SIZE])
{
	uint8_t tail[16];
	int len = 0;

	if (EVP_CIPHER_CTX_ctrl(g->ctx, EVP_CTRL_GCM_SET_TAG, CRYPTO_TAG_SIZE, (void *)tag) != 1)
		return -EIO;
	/* Compares the tag in constant time; anything but 1 is a failed check. */
	return EVP_DecryptFinal_ex(g->ctx, tail, &len) == 1 ? 0 : -EBADMSG;
}

void crypto_gcm_free(struct crypto_gcm *g)
{
	if (!g)
		return;
	EVP_CIPHER_CTX_free(g->ctx); /* cleanses the key schedule */
	free(g);
}
