/*
 * encode.c - base64, hex and the SHA-2 digests the formats are built on.
 *
 * The digest functions return nothing: with OpenSSL's default provider they
 * fail only when it cannot allocate a few bytes, and returning a made-up
 * digest (which would become a key) is worse than stopping, so they
 * abort() then.
 *
 * No locking: no state outside the caller's contexts.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "crypto/crypto.h"

/* EVP_EncodeBlock takes an int; any multiple of 3 keeps the pieces joinable. */
#define B64_STEP (3u << 28)

size_t crypto_b64_encode(const void *in, size_t n, char *out)
{
	const uint8_t *p = in;
	size_t len = 0;
	size_t step;

	out[0] = '\0';
	while (n > 0) {
		step = n > B64_STEP ? B64_STEP : n;
		len += (size_t)EVP_EncodeBlock((unsigned char *)out + len, p, (int)step);
		p += step;
		n -= step;
	}
	return len;
}

/*
 * Value of one base64 character, -1 if it is not one. Arithmetic instead of
 * a table so that decoding a secret leaks nothing through the cache.
 */
static int b64_value(unsigned char c)
{
	int ch = c;
	int v = -1;

	v += (((0x40 - ch) & (ch - 0x5b)) >> 8) & (ch - 64); /* A-Z: 0..25 */
	v += (((0x60 - ch) & (ch - 0x7b)) >> 8) & (ch - 70); /* a-z: 26..51 */
	v += (((0x2f - ch) & (ch - 0x3a)) >> 8) & (ch + 5);  /* 0-9: 52..61 */
	v += (((0x2a - ch) & (ch - 0x2c)) >> 8) & 63;	     /* +: 62 */
	v += (((0x2e - ch) & (ch - 0x30)) >> 8) & 64;	     /* /: 63 */
	return v;
}

int crypto_b64_decode(const char *in, size_t len, uint8_t *out, size_t cap, size_t *ret_len)
{
	size_t pad = 0, out_len, i, o = 0;
	int bad = 0;

	if (len % 4)
		return -EINVAL;
	if (len == 0) {
		*ret_len = 0;
		return 0;
	}
	if (in[len - 1] == '=')
		pad = in[len - 2] == '=' ? 2 : 1;
	out_len = len / 4 * 3 - pad;
	if (out_len > cap)
		return -ENOBUFS;

	for (i = 0; i < len; i += 4) {
		int a = b64_value((unsigned char)in[i]);
		int b = b64_value((unsigned char)in[i + 1]);
		int c, d;
		unsigned long v;

		if (i + 4 == len && pad == 2) {
			c = 0;
			d = 0;
			/* Canonical form only: the bits past the data are zero. */
			bad |= b & 0x0f;
		} else if (i + 4 == len && pad == 1) {
			c = b64_value((unsigned char)in[i + 2]);
			d = 0;
			bad |= c & 0x03;
		} else {
			c = b64_value((unsigned char)in[i + 2]);
			d = b64_value((unsigned char)in[i + 3]);
		}
		bad |= (a | b | c | d) < 0;
		v = ((unsigned long)(a & 63) << 18) | ((unsigned long)(b & 63) << 12) |
		    ((unsigned long)(c & 63) << 6) | (unsigned long)(d & 63);
		out[o++] = (uint8_t)(v >> 16);
		if (o < out_len)
			out[o++] = (uint8_t)(v >> 8);
		if (o < out_len)
			out[o++] = (uint8_t)v;
	}
	if (bad) {
		OPENSSL_cleanse(out, out_len);
		return -EINVAL;
	}
	*ret_len = out_len;
	return 0;
}

void crypto_hex(const uint8_t *in, size_t n, char *out)
{
	static const char digits[] = "0123456789abcdef";
	size_t i;

	for (i = 0; i < n; i++) {
		out[2 * i] = digits[in[i] >> 4];
		out[2 * i + 1] = digits[in[i] & 15];
	}
	out[2 * n] = '\0';
}

static void digest_once(const EVP_MD *md, const void *in, size_t n, uint8_t *out)
{
	if (EVP_Digest(in, n, out, NULL, md, NULL) != 1)
		abort();
}

void crypto_sha256(const void *in, size_t n, uint8_t out[32])
{
	digest_once(EVP_sha256(), in, n, out);
}

void crypto_sha384(const void *in, size_t n, uint8_t out[48])
{
	digest_once(EVP_sha384(), in, n, out);
}

struct crypto_sha256 {
	EVP_MD_CTX *ctx;
};

struct crypto_sha256 *crypto_sha256_new(void)
{
	struct crypto_sha256 *h;

	h = calloc(1, sizeof(*h));
	if (!h)
		return NULL;
	h->ctx = EVP_MD_CTX_new();
	if (!h->ctx)
		goto free_h;
	if (EVP_DigestInit_ex(h->ctx, EVP_sha256(), NULL) != 1)
		goto free_ctx;
	return h;

free_ctx:
	EVP_MD_CTX_free(h->ctx);
free_h:
	free(h);
	return NULL;
}

void crypto_sha256_update(struct crypto_sha256 *h, const void *in, size_t n)
{
	if (EVP_DigestUpdate(h->ctx, in, n) != 1)
		abort();
}

void crypto_sha256_final(struct crypto_sha256 *h, uint8_t out[32])
{
	if (EVP_DigestFinal_ex(h->ctx, out, NULL) != 1)
		abort();
}

void crypto_sha256_reset(struct crypto_sha256 *h)
{
	if (EVP_DigestInit_ex(h->ctx, EVP_sha256(), NULL) != 1)
		abort();
}

void crypto_sha256_free(struct crypto_sha256 *h)
{
	if (!h)
		return;
	EVP_MD_CTX_free(h->ctx);
	free(h);
}
