/*
 * test_crypto.c - crypto/: known-answer vectors of both formats from the
 * independent tools (tests/vectors, made by tests/vectors/generate), random
 * range decryption against whole-file decryption, AES-256-GCM (a NIST
 * vector, the TPM store's layout against EVP), format-2 tampering,
 * padding checks and the locked memory. Ends with a throughput line.
 *
 * The vectors are read from $AZ_TOP/tests/vectors (tests/run sets AZ_TOP),
 * else from tests/vectors under the current directory.
 */
#include <errno.h>
#include <grp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "crypto/crypto.h"
#include "tests/unit/check.h"

#define MIB (1024 * 1024)

/* ---- helpers ---------------------------------------------------------- */

static uint64_t rng_state = 0x9e3779b97f4a7c15ULL;

static uint64_t rng(void)
{
	/* xorshift64*: reproducible from the printed seed. */
	rng_state ^= rng_state >> 12;
	rng_state ^= rng_state << 25;
	rng_state ^= rng_state >> 27;
	return rng_state * 0x2545f4914f6cdd1dULL;
}

static uint64_t rng_below(uint64_t n)
{
	return n ? rng() % n : 0;
}

static void fill_random(uint8_t *p, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++)
		p[i] = (uint8_t)(rng() >> 32);
}

static void *xmalloc(size_t n)
{
	void *p = malloc(n ? n : 1);

	if (!p) {
		printf("Bail out! out of memory (%zu bytes)\n", n);
		exit(1);
	}
	return p;
}

static const char *vectors_dir(void)
{
	static char dir[4096];
	const char *top = getenv("AZ_TOP");

	snprintf(dir, sizeof(dir), "%s/tests/vectors", top && *top ? top : ".");
	return dir;
}

/* Reads a vector file whole; NULL (and a diagnostic) when it cannot. */
static uint8_t *read_vector(const char *name, size_t *ret_len)
{
	char path[4200];
	uint8_t *buf;
	FILE *f;
	long len;

	snprintf(path, sizeof(path), "%s/%s", vectors_dir(), name);
	f = fopen(path, "rb");
	if (!f) {
		printf("# cannot open %s: %s\n", path, strerror(errno));
		return NULL;
	}
	if (fseek(f, 0, SEEK_END) < 0 || (len = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) < 0) {
		fclose(f);
		return NULL;
	}
	buf = xmalloc((size_t)len);
	if (fread(buf, 1, (size_t)len, f) != (size_t)len) {
		printf("# short read of %s\n", path);
		free(buf);
		fclose(f);
		return NULL;
	}
	fclose(f);
	*ret_len = (size_t)len;
	return buf;
}

/* Decodes a hex field ("-" is empty) into out, NUL-terminated; -1 if bad. */
static long unhex(const char *s, uint8_t *out, size_t cap)
{
	size_t n = 0;
	unsigned v;

	if (strcmp(s, "-") == 0) {
		out[0] = 0;
		return 0;
	}
	while (s[0] && s[1]) {
		if (n + 1 >= cap || sscanf(s, "%2x", &v) != 1)
			return -1;
		out[n++] = (uint8_t)v;
		s += 2;
	}
	if (s[0])
		return -1;
	out[n] = 0;
	return (long)n;
}

static int all_zero_or(const uint8_t *p, size_t n, uint8_t fill)
{
	size_t i;

	for (i = 0; i < n; i++)
		if (p[i] != 0 && p[i] != fill)
			return 0;
	return 1;
}

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---- primitives ------------------------------------------------------- */

static void test_encodings(void)
{
	static const struct {
		const char *plain, *b64;
	} rfc4648[] = {
		{"", ""},
		{"f", "Zg=="},
		{"fo", "Zm8="},
		{"foo", "Zm9v"},
		{"foob", "Zm9vYg=="},
		{"fooba", "Zm9vYmE="},
		{"foobar", "Zm9vYmFy"},
	};
	static const char *bad[] = {
		"Zg=",	"Zg===", "Z===", "====",     "Zm9v\n",	  " Zm9",
		"Zm=v", "Zh==",	 "Zm9=", "Zm9vY!==", "Zm9v Yg==",
	};
	uint8_t all[256], dec[300], md[48];
	char enc[400], hex[100];
	size_t i, len;
	int bad_count = 0, err;

	for (i = 0; i < sizeof(rfc4648) / sizeof(rfc4648[0]); i++) {
		const char *p = rfc4648[i].plain, *b = rfc4648[i].b64;

		len = crypto_b64_encode(p, strlen(p), enc);
		if (len != strlen(b) || strcmp(enc, b) != 0)
			bad_count++;
		err = crypto_b64_decode(b, strlen(b), dec, sizeof(dec), &len);
		if (err || len != strlen(p) || memcmp(dec, p, len) != 0)
			bad_count++;
	}
	CHECK(bad_count == 0, "base64 matches the RFC 4648 examples both ways");

	for (i = 0; i < 256; i++)
		all[i] = (uint8_t)i;
	len = crypto_b64_encode(all, 256, enc);
	err = crypto_b64_decode(enc, len, dec, sizeof(dec), &len);
	CHECK(err == 0 && len == 256 && memcmp(dec, all, 256) == 0,
	      "base64 round-trips every byte value");

	bad_count = 0;
	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		len = 12345;
		err = crypto_b64_decode(bad[i], strlen(bad[i]), dec, sizeof(dec), &len);
		if (err != -EINVAL || len != 12345) {
			printf("# \"%s\" decoded: %d\n", bad[i], err);
			bad_count++;
		}
	}
	CHECK(bad_count == 0, "malformed base64 (padding, whitespace, bad characters) -EINVAL");
	err = crypto_b64_decode("Zm9vYmFy", 8, dec, 5, &len);
	CHECK(err == -ENOBUFS, "base64 decode into a short buffer: -ENOBUFS (%d)", err);
	err = crypto_b64_decode("Zm9vYg==", 8, dec, 4, &len);
	CHECK(err == 0 && len == 4, "base64 decode into an exactly sized buffer");

	crypto_sha256("abc", 3, md);
	crypto_hex(md, 32, hex);
	CHECK(strcmp(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad") == 0,
	      "SHA-256(\"abc\") (FIPS 180-2)");
	crypto_sha384("abc", 3, md);
	crypto_hex(md, 48, hex);
	CHECK(strcmp(hex, "cb00753f45a35e8bb5a03d699ac65007272c32ab0eded1631a8b605a43ff5bed"
			  "8086072ba1e7cc2358baeca134c825a7") == 0,
	      "SHA-384(\"abc\") (FIPS 180-2)");

	{
		struct crypto_sha256 *h = crypto_sha256_new();
		uint8_t *buf = xmalloc(MIB + 7), a[32], b[32], c[32];
		size_t off = 0, step;

		fill_random(buf, MIB + 7);
		crypto_sha256(buf, MIB + 7, a);
		while (off < MIB + 7) {
			step = rng_below(5000);
			if (step > MIB + 7 - off)
				step = MIB + 7 - off;
			crypto_sha256_update(h, buf + off, step);
			off += step;
		}
		crypto_sha256_final(h, b);
		crypto_sha256_reset(h);
		crypto_sha256_update(h, buf, MIB + 7);
		crypto_sha256_final(h, c);
		CHECK(h && memcmp(a, b, 32) == 0 && memcmp(a, c, 32) == 0,
		      "streaming SHA-256 in random pieces, and after reset, equals one-shot");
		crypto_sha256_free(h);
		crypto_sha256_free(NULL);
		free(buf);
	}

	CHECK(crypto_memcmp("abcd", "abcd", 4) == 0 && crypto_memcmp("abcd", "abce", 4) != 0,
	      "crypto_memcmp tells equal from different");
	{
		uint8_t r1[64], r2[64];

		CHECK(crypto_random(r1, 64) == 0 && crypto_random(r2, 64) == 0 &&
			      memcmp(r1, r2, 64) != 0,
		      "crypto_random gives different bytes each call");
	}
}

/* ---- known-answer vectors ---------------------------------------------- */

struct vec_stats {
	int lines, ks, aes, hw, api, archive, hardware, f1, f1split, f1wrap, f2;
	int bad_keys, bad_f1_dec, bad_f1_enc, bad_f1_size, bad_split, bad_wrap, bad_f2_dec,
		bad_f2_enc, bad_hardware;
};

static int file_eq(const uint8_t *a, size_t na, const uint8_t *b, size_t nb)
{
	return na == nb && (na == 0 || memcmp(a, b, na) == 0);
}

static void vec_key_line(struct vec_stats *st, char **f, int nf)
{
	static uint8_t in[4096], in2[4096], in3[4096], in4[4096], want[4096];
	char ks[CRYPTO_KS_LEN + 1], hex[65], out[4096];
	uint8_t key[32];
	long n;

	if (strcmp(f[0], "ks") == 0 && nf == 3) {
		st->ks++;
		n = unhex(f[1], in, sizeof(in));
		if (n < 0) {
			st->bad_keys++;
			return;
		}
		f1_key_string(in, (size_t)n, ks);
		if (strcmp(ks, f[2]) != 0) {
			st->bad_keys++;
			printf("# ks of %s: %s\n", f[1], ks);
		}
	} else if (strcmp(f[0], "aes") == 0 && nf == 3) {
		st->aes++;
		n = unhex(f[1], in, sizeof(in));
		if (n < 0) {
			st->bad_keys++;
			return;
		}
		f1_aes_key(in, (size_t)n, key);
		crypto_hex(key, 32, hex);
		if (strcmp(hex, f[2]) != 0) {
			st->bad_keys++;
			printf("# aes of %s: %s\n", f[1], hex);
		}
	} else if (strcmp(f[0], "hw_hash") == 0 && nf == 3) {
		st->hw++;
		n = unhex(f[1], in, sizeof(in));
		if (n < 0) {
			st->bad_keys++;
			return;
		}
		f1_hw_hash((const char *)in, ks);
		if (strcmp(ks, f[2]) != 0) {
			st->bad_keys++;
			printf("# hw_hash: %s\n", ks);
		}
	} else if (strcmp(f[0], "api_key") == 0 && nf == 5) {
		st->api++;
		if (unhex(f[1], in, sizeof(in)) < 0 || unhex(f[2], in2, sizeof(in2)) < 0 ||
		    f1_api_key((char *)in, (char *)in2, f[3], key) != 0) {
			st->bad_keys++;
			return;
		}
		crypto_hex(key, 32, hex);
		if (strcmp(hex, f[4]) != 0) {
			st->bad_keys++;
			printf("# api_key: %s\n", hex);
		}
	} else if (strcmp(f[0], "archive") == 0 && nf == 3) {
		st->archive++;
		n = unhex(f[1], in, sizeof(in));
		if (n < 0) {
			st->bad_keys++;
			return;
		}
		f1_archive_key(in, (size_t)n, key);
		crypto_hex(key, 32, hex);
		if (strcmp(hex, f[2]) != 0) {
			st->bad_keys++;
			printf("# archive_key: %s\n", hex);
		}
	} else if (strcmp(f[0], "hardware") == 0 && nf == 6) {
		st->hardware++;
		if (unhex(f[1], in, sizeof(in)) < 0 || unhex(f[2], in2, sizeof(in2)) < 0 ||
		    unhex(f[3], in3, sizeof(in3)) < 0 || unhex(f[4], in4, sizeof(in4)) < 0 ||
		    unhex(f[5], want, sizeof(want)) < 0) {
			st->bad_hardware++;
			return;
		}
		if (f1_hardware_string((char *)in, (char *)in2, (char *)in3, (char *)in4, out,
				       sizeof(out)) != 0 ||
		    strcmp(out, (char *)want) != 0)
			st->bad_hardware++;
		/* One byte short of the NUL: refused, not truncated. */
		if (f1_hardware_string((char *)in, (char *)in2, (char *)in3, (char *)in4, out,
				       strlen((char *)want)) != -ENOBUFS)
			st->bad_hardware++;
	}
}

/* Encrypts p with a fixed IV through the streaming encryptor, in random pieces. */
static int f1_encrypt_iv(const uint8_t *key, const uint8_t *iv, const uint8_t *p, size_t n,
			 uint8_t *out, size_t *ret_len)
{
	struct f1_encryptor *e;
	size_t off = 0, len = 0, step, got;
	int err;

	err = f1_encryptor_new(key, iv, &e);
	if (err)
		return err;
	while (off < n) {
		step = 1 + rng_below(n < 40 ? 5 : 4000);
		if (step > n - off)
			step = n - off;
		err = f1_encryptor_update(e, p + off, step, out + len, &got);
		if (err)
			goto out;
		off += step;
		len += got;
	}
	err = f1_encryptor_final(e, out + len, &got);
	if (err)
		goto out;
	*ret_len = len + got;
out:
	f1_encryptor_free(e);
	return err;
}

static void vec_f1_line(struct vec_stats *st, char **f)
{
	uint8_t key[33], iv[17], *plain, *enc, *out, *re;
	size_t np = 0, ne = 0, len;
	uint64_t psize;
	int err;

	st->f1++;
	plain = read_vector(f[3], &np);
	enc = read_vector(f[4], &ne);
	if (!plain || !enc || unhex(f[1], key, sizeof(key)) != 32 ||
	    unhex(f[2], iv, sizeof(iv)) != 16) {
		st->bad_f1_dec++;
		goto out;
	}
	out = xmalloc(ne);
	re = xmalloc(ne + 32);
	err = f1_decrypt(key, enc, ne, out, &len);
	if (err || !file_eq(out, len, plain, np)) {
		st->bad_f1_dec++;
		printf("# f1_decrypt(%s): %d\n", f[4], err);
	}
	err = f1_decrypt_blocks(key, enc, ne, out);
	if (err || (np && memcmp(out, plain, np) != 0)) {
		st->bad_f1_dec++;
		printf("# f1_decrypt_blocks(%s): %d\n", f[4], err);
	}
	err = f1_plain_size(key, enc + ne - 32, ne, &psize);
	if (err || psize != np || f1_cipher_size(np) != ne)
		st->bad_f1_size++;
	err = f1_encrypt_iv(key, iv, plain, np, re, &len);
	if (err || !file_eq(re, len, enc, ne)) {
		st->bad_f1_enc++;
		printf("# f1 encryption of %s differs\n", f[3]);
	}
	free(re);
	free(out);
out:
	free(plain);
	free(enc);
}

static void vec_f1split_line(struct vec_stats *st, char **f)
{
	uint8_t *e, *small, *big;
	size_t ne = 0, ns = 0, nb = 0;

	st->f1split++;
	e = read_vector(f[1], &ne);
	small = read_vector(f[2], &ns);
	big = read_vector(f[3], &nb);
	if (!e || !small || !big || f1_small_size(ne) != ns || ns + nb != ne ||
	    memcmp(e, small, ns) != 0 || memcmp(e + ns, big, nb) != 0)
		st->bad_split++;
	free(e);
	free(small);
	free(big);
}

static void vec_f1wrap_line(struct vec_stats *st, char **f)
{
	static char email[512], password[512], hw[4096];
	char hwh[CRYPTO_KS_LEN + 1];
	uint8_t key[32], iv[17], *small, *wrapped, *out = NULL;
	size_t ns = 0, nw = 0, len;
	int err;

	st->f1wrap++;
	small = read_vector(f[4], &ns);
	wrapped = read_vector(f[6], &nw);
	if (!small || !wrapped || unhex(f[1], (uint8_t *)email, sizeof(email)) < 0 ||
	    unhex(f[2], (uint8_t *)password, sizeof(password)) < 0 ||
	    unhex(f[3], (uint8_t *)hw, sizeof(hw)) < 0 || unhex(f[5], iv, sizeof(iv)) != 16) {
		st->bad_wrap++;
		goto out;
	}
	f1_hw_hash(hw, hwh);
	if (f1_api_key(email, password, hwh, key) != 0) {
		st->bad_wrap++;
		goto out;
	}
	out = xmalloc(nw + 32);
	err = f1_decrypt(key, wrapped, nw, out, &len);
	if (err || !file_eq(out, len, small, ns)) {
		st->bad_wrap++;
		printf("# unwrapping %s: %d\n", f[6], err);
	}
	err = f1_encrypt_iv(key, iv, small, ns, out, &len);
	if (err || !file_eq(out, len, wrapped, nw)) {
		st->bad_wrap++;
		printf("# wrapping %s differs\n", f[4]);
	}
out:
	free(out);
	free(small);
	free(wrapped);
}

static void vec_f2_line(struct vec_stats *st, char **f)
{
	uint8_t key[33], fid[17], *plain, *big, *out = NULL, *re = NULL;
	size_t np = 0, nb = 0;
	struct f2_header h, h2;
	uint64_t i, n, off, pl;
	int err, bad = 0;

	st->f2++;
	plain = read_vector(f[4], &np);
	big = read_vector(f[5], &nb);
	if (!plain || !big || unhex(f[1], key, sizeof(key)) != 32 ||
	    unhex(f[2], fid, sizeof(fid)) != 16 || nb < F2_HEADER_SIZE) {
		st->bad_f2_dec++;
		goto out;
	}
	err = f2_header_parse(big, &h);
	if (err || h.size != np || h.chunk_shift != (unsigned)atoi(f[3]) ||
	    memcmp(h.file_id, fid, 16) != 0 || f2_big_size(&h) != nb) {
		st->bad_f2_dec++;
		printf("# header of %s: %d\n", f[5], err);
		goto out;
	}
	out = xmalloc(f2_chunk_size(&h));
	n = f2_chunk_count(&h);
	for (i = 0; i < n; i++) {
		off = f2_chunk_offset(&h, i);
		pl = f2_chunk_plain_len(&h, i);
		err = f2_open_chunk(key, &h, i, big + off, pl + CRYPTO_TAG_SIZE, out);
		if (err || (pl && memcmp(out, plain + (i << h.chunk_shift), pl) != 0))
			bad++;
	}
	if (bad) {
		st->bad_f2_dec++;
		printf("# %d chunks of %s failed\n", bad, f[5]);
	}

	/* The same key and file_id give the same bytes. */
	re = xmalloc(nb);
	if (f2_header_init(&h2, np, h.chunk_shift, fid) != 0 || f2_big_size(&h2) != nb) {
		st->bad_f2_enc++;
		goto out;
	}
	memcpy(re, h2.raw, F2_HEADER_SIZE);
	for (i = 0; i < n; i++) {
		pl = f2_chunk_plain_len(&h2, i);
		err = f2_seal_chunk(key, &h2, i, plain + (i << h.chunk_shift), pl,
				    re + f2_chunk_offset(&h2, i));
		if (err)
			bad++;
	}
	if (bad || memcmp(re, big, nb) != 0) {
		st->bad_f2_enc++;
		printf("# sealing %s differs\n", f[4]);
	}
out:
	free(re);
	free(out);
	free(plain);
	free(big);
}

static void test_vectors(void)
{
	struct vec_stats st = {0};
	char *buf, *line, *save = NULL, *f[8], *tok, *save2;
	uint8_t rkey[32], want[33];
	size_t len = 0;
	int nf, saw_default_key = 0;

	buf = (char *)read_vector("vectors.txt", &len);
	CHECK(buf != NULL, "the vectors are in %s (run tests/vectors/generate to remake them)",
	      vectors_dir());
	if (!buf)
		return;
	buf = realloc(buf, len + 1);
	buf[len] = 0;
	f1_aes_key(F1_DEFAULT_RESOURCE_SECRET, strlen(F1_DEFAULT_RESOURCE_SECRET), rkey);

	for (line = strtok_r(buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		if (line[0] == '#')
			continue;
		nf = 0;
		for (tok = strtok_r(line, " ", &save2); tok && nf < 8;
		     tok = strtok_r(NULL, " ", &save2))
			f[nf++] = tok;
		if (nf == 0)
			continue;
		st.lines++;
		if (strcmp(f[0], "f1") == 0 && nf == 5) {
			vec_f1_line(&st, f);
			if (unhex(f[1], want, sizeof(want)) == 32 && memcmp(want, rkey, 32) == 0)
				saw_default_key++;
		} else if (strcmp(f[0], "f1split") == 0 && nf == 4) {
			vec_f1split_line(&st, f);
		} else if (strcmp(f[0], "f1wrap") == 0 && nf == 7) {
			vec_f1wrap_line(&st, f);
		} else if (strcmp(f[0], "f2") == 0 && nf == 6) {
			vec_f2_line(&st, f);
		} else {
			vec_key_line(&st, f, nf);
		}
	}
	free(buf);

	CHECK(st.ks >= 5 && st.aes >= 5 && st.hw >= 2 && st.api >= 2 && st.archive >= 2 &&
		      st.hardware >= 1 && st.f1 >= 10 && st.f1split >= 1 && st.f1wrap >= 1 &&
		      st.f2 >= 8 &&
		      st.lines == st.ks + st.aes + st.hw + st.api + st.archive + st.hardware +
					  st.f1 + st.f1split + st.f1wrap + st.f2,
	      "every vector line understood (%d lines)", st.lines);
	CHECK(st.bad_keys == 0, "ks, aes, hw_hash, api_key, archive_key equal openssl's (%d)",
	      st.ks + st.aes + st.hw + st.api + st.archive);
	CHECK(st.bad_hardware == 0, "hardware strings (%d), and a short buffer refused",
	      st.hardware);
	CHECK(saw_default_key > 0, "aes(F1_DEFAULT_RESOURCE_SECRET) is the key of %d vectors",
	      saw_default_key);
	CHECK(st.bad_f1_dec == 0, "format 1: openssl's ciphertexts decrypt (%d)", st.f1);
	CHECK(st.bad_f1_enc == 0,
	      "format 1: encryption with the same key and IV is byte-identical");
	CHECK(st.bad_f1_size == 0, "format 1: f1_plain_size and f1_cipher_size agree with openssl");
	CHECK(st.bad_split == 0, "format 1: the split at f1_small_size");
	CHECK(st.bad_wrap == 0, "format 1: the API's wrapped small part, both ways");
	CHECK(st.bad_f2_dec == 0, "format 2: cryptography's big parts decrypt (%d)", st.f2);
	CHECK(st.bad_f2_enc == 0,
	      "format 2: sealing with the same key and file_id is byte-identical");
}

/* ---- format 1 --------------------------------------------------------- */

/* ---- AES-256-GCM ------------------------------------------------------ */

/*
 * The TPM's sealed store (tpm/tpm.c, docs/tpm.md): "AZTS" 1 0 0 0 || nonce
 * || ciphertext || tag, the first 20 bytes authenticated. Built here with
 * crypto_gcm_seal exactly as tpm.c builds it.
 */
#define STORE_HDR 8
#define STORE_AAD (STORE_HDR + CRYPTO_GCM_NONCE_SIZE)
static const uint8_t store_magic[STORE_HDR] = {'A', 'Z', 'T', 'S', 1, 0, 0, 0};

static int store_blob(const uint8_t *key, const uint8_t *nonce, const uint8_t *secret, size_t n,
		      uint8_t *blob)
{
	memcpy(blob, store_magic, STORE_HDR);
	memcpy(blob + STORE_HDR, nonce, CRYPTO_GCM_NONCE_SIZE);
	return crypto_gcm_seal(key, blob + STORE_HDR, blob, STORE_AAD, secret, n, blob + STORE_AAD);
}

/* The same blob through OpenSSL's EVP directly: the code tpm.c had before crypto_gcm_seal. */
static int store_blob_evp(const uint8_t *key, const uint8_t *nonce, const uint8_t *secret, size_t n,
			  uint8_t *blob)
{
	EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
	uint8_t *ct = blob + STORE_AAD;
	int len, ok;

	memcpy(blob, store_magic, STORE_HDR);
	memcpy(blob + STORE_HDR, nonce, CRYPTO_GCM_NONCE_SIZE);
	ok = c && EVP_EncryptInit_ex(c, EVP_aes_256_gcm(), NULL, NULL, NULL) == 1 &&
	     EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_IVLEN, CRYPTO_GCM_NONCE_SIZE, NULL) == 1 &&
	     EVP_EncryptInit_ex(c, NULL, NULL, key, blob + STORE_HDR) == 1 &&
	     EVP_EncryptUpdate(c, NULL, &len, blob, STORE_AAD) == 1 &&
	     (n == 0 || EVP_EncryptUpdate(c, ct, &len, secret, (int)n) == 1) &&
	     EVP_EncryptFinal_ex(c, ct + n, &len) == 1 &&
	     EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_GET_TAG, CRYPTO_TAG_SIZE, ct + n) == 1;
	EVP_CIPHER_CTX_free(c);
	return ok ? 0 : -1;
}

static void test_gcm(void)
{
	/* NIST GCM spec (McGrew and Viega), test case 16: AES-256, 60 bytes, 20 of AAD. */
	static const char nist_key[] =
		"feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308";
	static const char nist_iv[] = "cafebabefacedbaddecaf888";
	static const char nist_p[] =
		"d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"
		"1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39";
	static const char nist_a[] = "feedfacedeadbeeffeedfacedeadbeefabaddad2";
	static const char nist_ct[] =
		"522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa"
		"8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662"
		"76fc6ece0f4e1768cddf8853bb2d551b";
	/*
	 * A store blob made by Python's cryptography (AESGCM), key 00..1f,
	 * nonce a0..ab, and the secret below: the bytes existing devices hold.
	 */
	static const char store_kat[] =
		"415a545301000000a0a1a2a3a4a5a6a7a8a9aaab83751d4429eb3f9f0600f1ba641f80bb08cd3460fe"
		"d26c0ff3632cf61ed80676bd0423df9202235c6aa929bf3908e7d446190ce861bb72e6734c3e0b96ee"
		"fbf6f1fd";
	static const char secret[] = "email = device@example.com\npassword = pa55-w0rd-\x01\x02";
	uint8_t key[CRYPTO_KEY_SIZE], iv[CRYPTO_GCM_NONCE_SIZE + 1], p[64], a[32], want[96];
	uint8_t got[96], out[512], blob[512], ref[512], in[512];
	size_t n, i, bad;
	int err;

	/* ---- known answers ---- */
	CHECK(unhex(nist_key, blob, sizeof(blob)) == 32 && unhex(nist_iv, iv, sizeof(iv)) == 12 &&
		      unhex(nist_p, p, sizeof(p)) == 60 && unhex(nist_a, a, sizeof(a)) == 20 &&
		      unhex(nist_ct, want, sizeof(want)) == 76,
	      "gcm: the NIST vector decodes");
	memcpy(key, blob, sizeof(key));
	err = crypto_gcm_seal(key, iv, a, 20, p, 60, got);
	CHECK(err == 0 && memcmp(got, want, 76) == 0,
	      "gcm: crypto_gcm_seal gives NIST test case 16 (ciphertext and tag) (%d)", err);
	memset(out, 0xaa, sizeof(out));
	err = crypto_gcm_open(key, iv, a, 20, want, 76, out);
	CHECK(err == 0 && memcmp(out, p, 60) == 0, "gcm: crypto_gcm_open opens it (%d)", err);

	for (i = 0; i < sizeof(key); i++)
		key[i] = (uint8_t)i;
	for (i = 0; i < CRYPTO_GCM_NONCE_SIZE; i++)
		iv[i] = (uint8_t)(0xa0 + i);
	n = sizeof(secret) - 1; /* without the NUL */
	CHECK(unhex(store_kat, ref, sizeof(ref)) == (long)(STORE_AAD + n + CRYPTO_TAG_SIZE),
	      "gcm: the store vector decodes");
	err = store_blob(key, iv, (const uint8_t *)secret, n, blob);
	CHECK(err == 0 && memcmp(blob, ref, STORE_AAD + n + CRYPTO_TAG_SIZE) == 0,
	      "gcm: a store blob is byte for byte the known one (%d)", err);
	memset(out, 0xaa, sizeof(out));
	err = crypto_gcm_open(key, ref + STORE_HDR, ref, STORE_AAD, ref + STORE_AAD,
			      n + CRYPTO_TAG_SIZE, out);
	CHECK(err == 0 && memcmp(out, secret, n) == 0,
	      "gcm: the known store blob opens to its secret (%d)", err);

	/* ---- against EVP, every size up to 300, random keys and nonces ---- */
	bad = 0;
	for (n = 0; n <= 300; n++) {
		uint8_t nonce[CRYPTO_GCM_NONCE_SIZE];

		crypto_random(key, sizeof(key));
		crypto_random(nonce, sizeof(nonce));
		fill_random(in, n);
		if (store_blob(key, nonce, in, n, blob) != 0 ||
		    store_blob_evp(key, nonce, in, n, ref) != 0 ||
		    memcmp(blob, ref, STORE_AAD + n + CRYPTO_TAG_SIZE) != 0)
			bad++;
		memset(out, 0xaa, sizeof(out));
		if (crypto_gcm_open(key, blob + STORE_HDR, blob, STORE_AAD, blob + STORE_AAD,
				    n + CRYPTO_TAG_SIZE, out) != 0 ||
		    memcmp(out, in, n) != 0)
			bad++;
	}
	CHECK(bad == 0, "gcm: store blobs of 0..300 bytes equal EVP's and open (%zu bad)", bad);

	/* ---- tampering: every bit of a store blob, each a refusal that leaves nothing ---- */
	crypto_random(key, sizeof(key));
	crypto_random(iv, CRYPTO_GCM_NONCE_SIZE);
	n = sizeof(secret);
	store_blob(key, iv, (const uint8_t *)secret, n, blob);
	bad = 0;
	for (i = 0; i < (STORE_AAD + n + CRYPTO_TAG_SIZE) * 8; i++) {
		memcpy(ref, blob, STORE_AAD + n + CRYPTO_TAG_SIZE);
		ref[i / 8] ^= (uint8_t)(1u << (i % 8));
		memset(out, 0xaa, sizeof(out));
		err = crypto_gcm_open(key, ref + STORE_HDR, ref, STORE_AAD, ref + STORE_AAD,
				      n + CRYPTO_TAG_SIZE, out);
		if (err != -EBADMSG || !all_zero_or(out, n, 0) || out[n] != 0xaa)
			bad++;
	}
	CHECK(bad == 0,
	      "gcm: a flipped bit anywhere (header, nonce, ciphertext, tag) gives "
	      "-EBADMSG and a wiped output (%zu bad)",
	      bad);
	memset(out, 0xaa, sizeof(out));
	crypto_random(ref, CRYPTO_KEY_SIZE);
	err = crypto_gcm_open(ref, blob + STORE_HDR, blob, STORE_AAD, blob + STORE_AAD,
			      n + CRYPTO_TAG_SIZE, out);
	CHECK(err == -EBADMSG && all_zero_or(out, n, 0),
	      "gcm: another key gives -EBADMSG and a wiped output (%d)", err);
	memset(out, 0xaa, sizeof(out));
	err = crypto_gcm_open(key, blob + STORE_HDR, blob, STORE_AAD, blob + STORE_AAD,
			      CRYPTO_TAG_SIZE - 1, out);
	CHECK(err == -EBADMSG && out[0] == 0xaa,
	      "gcm: fewer bytes than a tag give -EBADMSG, nothing written (%d)", err);
	err = crypto_gcm_open(key, blob + STORE_HDR, blob, STORE_AAD - 1, blob + STORE_AAD,
			      n + CRYPTO_TAG_SIZE, out);
	CHECK(err == -EBADMSG, "gcm: a shorter AAD gives -EBADMSG (%d)", err);

	/* ---- streamed: one key, many messages, pieces of every size ---- */
	{
		struct crypto_gcm *g = NULL;
		size_t split, bad_pieces = 0, bad_reuse = 0;

		CHECK(unhex(nist_key, blob, sizeof(blob)) == 32 &&
			      unhex(nist_iv, iv, sizeof(iv)) == 12,
		      "gcm: the NIST key and nonce again");
		memcpy(key, blob, sizeof(key));
		err = crypto_gcm_new(key, &g);
		CHECK(err == 0, "gcm: crypto_gcm_new (%d)", err);
		/* The same opener for every message: only the nonce changes. */
		for (split = 1; g && split <= 60; split++) {
			size_t at, k;

			memset(out, 0xaa, sizeof(out));
			err = crypto_gcm_start(g, iv, a, 20);
			for (at = 0; err == 0 && at < 60; at += k) {
				k = 60 - at < split ? 60 - at : split;
				err = crypto_gcm_update(g, want + at, k, out + at);
			}
			if (err == 0)
				err = crypto_gcm_finish(g, want + 60);
			if (err != 0 || memcmp(out, p, 60) != 0)
				bad_pieces++;
		}
		CHECK(g && bad_pieces == 0,
		      "gcm: the NIST vector opens in pieces of 1..60 bytes, one opener for all "
		      "(%zu bad)",
		      bad_pieces);
		for (i = 0; g && i < 76 * 8; i++) {
			memcpy(got, want, 76);
			got[i / 8] ^= (uint8_t)(1u << (i % 8));
			err = crypto_gcm_start(g, iv, a, 20);
			if (err == 0)
				err = crypto_gcm_update(g, got, 60, out);
			if (err == 0)
				err = crypto_gcm_finish(g, got + 60);
			if (err != -EBADMSG)
				bad_reuse++;
		}
		err = g ? crypto_gcm_start(g, iv, a, 19) : -1;
		err = err ? err : crypto_gcm_update(g, want, 60, out);
		err = err ? err : crypto_gcm_finish(g, want + 60);
		CHECK(g && bad_reuse == 0 && err == -EBADMSG,
		      "gcm: streamed, a flipped bit anywhere, or a shorter AAD, fails the tag "
		      "(%zu bad; %d)",
		      bad_reuse, err);
		err = g ? crypto_gcm_start(g, iv, a, 20) : -1;
		err = err ? err : crypto_gcm_update(g, want, 60, out);
		err = err ? err : crypto_gcm_finish(g, want + 60);
		CHECK(err == 0 && memcmp(out, p, 60) == 0,
		      "gcm: after failures the same opener opens the vector again (%d)", err);
		crypto_gcm_free(g);
	}

	/* ---- in place ---- */
	memcpy(in, secret, n);
	err = crypto_gcm_seal(key, iv, NULL, 0, in, n, in);
	memcpy(ref, in, n + CRYPTO_TAG_SIZE);
	err = err ? err : crypto_gcm_open(key, iv, NULL, 0, in, n + CRYPTO_TAG_SIZE, in);
	CHECK(err == 0 && memcmp(in, secret, n) == 0 && memcmp(ref, secret, n) != 0,
	      "gcm: seal and open in place, no AAD (%d)", err);
}

static void test_f1_sizes_and_padding(void)
{
	uint8_t key[32], p[64], e[96], out[96], last[32];
	size_t n, len;
	uint64_t size;
	int bad = 0, err;

	CHECK(f1_small_size(32) == 9 && f1_small_size(48) == 14 && f1_small_size(10239) == 3071 &&
		      f1_small_size(10240) == 3072 && f1_small_size(1000000000) == 3072 &&
		      f1_small_size(UINT64_MAX) == 3072,
	      "f1_small_size: 32 -> 9, 10239 -> 3071, 10240 and larger -> 3072");
	CHECK(f1_cipher_size(0) == 32 && f1_cipher_size(15) == 32 && f1_cipher_size(16) == 48 &&
		      f1_cipher_size(UINT64_MAX) == UINT64_MAX,
	      "f1_cipher_size: 16 + padded size");

	crypto_random(key, sizeof(key));
	fill_random(p, sizeof(p));
	for (n = 0; n <= 40; n++) {
		err = f1_encrypt(key, p, n, e, &len);
		if (err || len != f1_cipher_size(n)) {
			bad++;
			continue;
		}
		err = f1_plain_size(key, e + len - 32, len, &size);
		if (err || size != n)
			bad++;
		err = f1_decrypt(key, e, len, out, &len);
		if (err || len != n || memcmp(out, p, n) != 0)
			bad++;
	}
	CHECK(bad == 0, "f1_plain_size is the real size for sizes 0..40 (and f1_decrypt too)");

	/*
	 * Bad padding: flipping bits of the block before the last flips the
	 * same bits of the last plaintext block. With a pad p of 1..16,
	 * p ^ 0x80 and p ^ 0x10 are 0 or past 16, and p ^ 0x1f is 16..30 or 15
	 * over bytes that are 16: never valid.
	 */
	bad = 0;
	for (n = 0; n <= 40; n++) {
		static const uint8_t flips[] = {0x80, 0x10, 0x1f};
		size_t k;

		f1_encrypt(key, p, n, e, &len);
		for (k = 0; k < sizeof(flips); k++) {
			memcpy(last, e + len - 32, 32);
			last[15] ^= flips[k];
			size = 777;
			err = f1_plain_size(key, last, len, &size);
			if (err != -EBADMSG || size != 777)
				bad++;
		}
	}
	CHECK(bad == 0, "f1_plain_size: a pad byte of 0, past 16 or over unequal bytes: -EBADMSG");

	/* The whole-buffer path: each corruption of the padding is refused and nothing kept. */
	bad = 0;
	for (n = 0; n <= 40; n++) {
		uint8_t cor[96], dec[96];
		size_t pad = 16 - n % 16, pos, got = 12345;

		f1_encrypt(key, p, n, e, &len);
		/* Every byte of the padding, one at a time, the pad length byte included. */
		for (pos = 16 - pad; pos < 16; pos++) {
			memcpy(cor, e, len);
			cor[len - 32 + pos] ^= 0x40;
			memset(dec, 0xa5, sizeof(dec));
			err = f1_decrypt(key, cor, len, dec, &got);
			if (err != -EBADMSG || got != 12345 || !all_zero_or(dec, len - 16, 0xa5))
				bad++;
			err = f1_plain_size(key, cor + len - 32, len, &size);
			if (err != -EBADMSG)
				bad++;
		}
	}
	CHECK(bad == 0, "bad padding (any padding byte changed): -EBADMSG from f1_decrypt, "
			"output wiped, and from f1_plain_size");

	err = f1_decrypt(key, e, 31, out, &len);
	CHECK(err == -EBADMSG, "f1_decrypt of 31 bytes: -EBADMSG");
	err = f1_decrypt(key, e, 40, out, &len);
	CHECK(err == -EBADMSG, "f1_decrypt of a length not a multiple of 16: -EBADMSG");
	err = f1_plain_size(key, e, 40, &size);
	CHECK(err == -EBADMSG, "f1_plain_size of an E not a multiple of 16: -EBADMSG");
	err = f1_decrypt_blocks(key, e, 16, out);
	CHECK(err == -EINVAL, "f1_decrypt_blocks of one block: -EINVAL");

	{
		/* A different key almost never yields a valid padding. */
		uint8_t other[32];
		int refused = 0, i;

		crypto_random(other, sizeof(other));
		for (i = 0; i < 200; i++) {
			f1_encrypt(key, p, 33, e, &len);
			if (f1_decrypt(other, e, len, out, &len) == -EBADMSG)
				refused++;
		}
		CHECK(refused > 150,
		      "f1_decrypt with a wrong key is refused by the padding (%d/200)", refused);
	}
}

/* Format-1 ranges: only E[16*j0 .. 16*(j1+2)) is decrypted. */
static int f1_ranges(const uint8_t *key, const uint8_t *p, size_t size, int pairs)
{
	size_t e_len, len, off, j0, j1, n;
	uint8_t *e, *out;
	int bad = 0, i, err;

	e = xmalloc(f1_cipher_size(size));
	out = xmalloc(size + 32);
	if (f1_encrypt(key, p, size, e, &e_len) != 0)
		return pairs;
	for (i = 0; i < pairs; i++) {
		if (size == 0)
			break;
		off = rng_below(size);
		switch (rng_below(10)) {
		case 0:
			len = 1 + rng_below(size - off);
			break;
		case 1:
		case 2:
		case 3:
			len = 1 + rng_below(40);
			break;
		default:
			len = 1 + rng_below(rng_below(2) ? 4096 : 262144);
		}
		if (len > size - off)
			len = size - off;
		j0 = off / 16;
		j1 = (off + len - 1) / 16;
		n = 16 * (j1 + 2) - 16 * j0;
		err = f1_decrypt_blocks(key, e + 16 * j0, n, out);
		if (err || memcmp(out + (off - 16 * j0), p + off, len) != 0) {
			if (bad++ < 3)
				printf("# size %zu range %zu+%zu: %d\n", size, off, len, err);
		}
	}
	free(out);
	free(e);
	return bad;
}

/* Opens chunk i as a reader would: offset and length from the header, cut at the end. */
static int f2_open_from(const uint8_t *key, const struct f2_header *h, const uint8_t *big,
			size_t big_len, uint64_t i, uint8_t *out)
{
	uint64_t off = f2_chunk_offset(h, i);
	uint64_t want = f2_chunk_plain_len(h, i) + CRYPTO_TAG_SIZE;
	size_t have;

	if (off >= big_len)
		return f2_open_chunk(key, h, i, big, 0, out);
	have = big_len - off < want ? big_len - off : want;
	return f2_open_chunk(key, h, i, big + off, have, out);
}

/* Builds the big part of p; the caller frees it. */
static uint8_t *f2_build(const uint8_t *key, const uint8_t *p, size_t size, unsigned shift,
			 const uint8_t *fid, struct f2_header *h, size_t *ret_len)
{
	uint8_t *big;
	uint64_t i;

	if (f2_header_init(h, size, shift, fid) != 0)
		return NULL;
	big = xmalloc(f2_big_size(h));
	memcpy(big, h->raw, F2_HEADER_SIZE);
	for (i = 0; i < f2_chunk_count(h); i++) {
		if (f2_seal_chunk(key, h, i, p + (i << shift), f2_chunk_plain_len(h, i),
				  big + f2_chunk_offset(h, i)) != 0) {
			free(big);
			return NULL;
		}
	}
	*ret_len = f2_big_size(h);
	return big;
}

static int f2_ranges(const uint8_t *key, const uint8_t *p, size_t size, unsigned shift, int pairs)
{
	uint8_t fid[16], *big, *out;
	struct f2_header h, parsed;
	size_t big_len, off, len, cs = (size_t)1 << shift;
	uint64_t c, c0, c1;
	int bad = 0, i, err = 0;

	crypto_random(fid, sizeof(fid));
	big = f2_build(key, p, size, shift, fid, &h, &big_len);
	if (!big || f2_header_parse(big, &parsed) != 0)
		return pairs;
	out = xmalloc(size + cs);
	for (i = 0; i < pairs; i++) {
		if (size == 0) {
			err = f2_open_from(key, &parsed, big, big_len, 0, out);
			bad += err != 0;
			break;
		}
		off = rng_below(size);
		switch (rng_below(10)) {
		case 0:
			len = 1 + rng_below(size - off);
			break;
		case 1:
		case 2:
		case 3:
			len = 1 + rng_below(40);
			break;
		default:
			len = 1 + rng_below(rng_below(2) ? 4096 : 262144);
		}
		if (len > size - off)
			len = size - off;
		c0 = off >> shift;
		c1 = (off + len - 1) >> shift;
		for (c = c0; c <= c1; c++) {
			err = f2_open_from(key, &parsed, big, big_len, c,
					   out + ((c - c0) << shift));
			if (err)
				break;
		}
		if (err || memcmp(out + (off - (c0 << shift)), p + off, len) != 0) {
			if (bad++ < 3)
				printf("# shift %u size %zu range %zu+%zu: %d\n", shift, size, off,
				       len, err);
		}
	}
	free(out);
	free(big);
	return bad;
}

static void test_ranges(void)
{
	const size_t big = 3 * MIB + 5;
	const size_t sizes[] = {0, 1, 15, 16, 17, 4095, 4096, 4097, 65535, 65536, 65537, big};
	uint8_t key[32], *p;
	size_t k;
	int bad1 = 0, bad2 = 0, bad3 = 0, pairs = 0, per;

	crypto_random(key, sizeof(key));
	p = xmalloc(big);
	fill_random(p, big);
	for (k = 0; k < sizeof(sizes) / sizeof(sizes[0]); k++) {
		per = sizes[k] < 64 ? 300 : 1000;
		pairs += per;
		bad1 += f1_ranges(key, p, sizes[k], per);
		bad2 += f2_ranges(key, p, sizes[k], 12, per);
		bad3 += f2_ranges(key, p, sizes[k], F2_SHIFT_DEFAULT, per);
	}
	CHECK(bad1 == 0, "format 1: %d random ranges via f1_decrypt_blocks equal the plaintext",
	      pairs);
	CHECK(bad2 == 0, "format 2, shift 12: %d random ranges via their chunks", pairs);
	CHECK(bad3 == 0, "format 2, shift 16: %d random ranges via their chunks", pairs);
	free(p);
}

/* ---- format 2 --------------------------------------------------------- */

static void test_f2_geometry(void)
{
	uint8_t fid[16] = {1, 2, 3}, key[32] = {9}, buf[64];
	struct f2_header h, g;
	int err;

	err = f2_header_init(&h, 0, 12, fid);
	CHECK(err == 0 && f2_chunk_count(&h) == 1 && f2_chunk_plain_len(&h, 0) == 0 &&
		      f2_big_size(&h) == 80 && f2_chunk_offset(&h, 0) == 64,
	      "an empty plaintext is one empty chunk: 80 bytes");
	err = f2_header_init(&h, 3 * 4096 + 100, 12, fid);
	CHECK(err == 0 && f2_chunk_count(&h) == 4 && f2_chunk_plain_len(&h, 3) == 100 &&
		      f2_chunk_plain_len(&h, 2) == 4096 && f2_chunk_plain_len(&h, 4) == 0 &&
		      f2_chunk_offset(&h, 3) == 64 + 3 * 4112 &&
		      f2_big_size(&h) == 64 + 3 * 4096 + 100 + 4 * 16 && f2_chunk_size(&h) == 4096,
	      "chunk geometry of 3 chunks and 100 bytes");
	err = f2_header_init(&h, 1, 11, fid);
	CHECK(err == -EINVAL, "f2_header_init with shift 11: -EINVAL");
	err = f2_header_init(&h, 1, 25, fid);
	CHECK(err == -EINVAL, "f2_header_init with shift 25: -EINVAL");
	err = f2_header_init(&h, UINT64_MAX - 100, 16, fid);
	CHECK(err == -EINVAL, "f2_header_init with a size whose big part overflows: -EINVAL");
	err = f2_header_init(&h, 65536 * 2, 16, fid);
	err = err ? err : f2_header_parse(h.raw, &g);
	CHECK(err == 0 && g.size == h.size && g.chunk_shift == 16 &&
		      memcmp(g.file_id, fid, 16) == 0 && memcmp(g.raw, h.raw, 64) == 0 &&
		      memcmp(h.raw, "AZB2\x02\x10\0\0\0\0\x02\0\0\0\0\0\x01\x02\x03", 19) == 0,
	      "header bytes as docs/formats.md lays them out, and parsed back");
	err = f2_seal_chunk(key, &h, 0, buf, 64, buf);
	CHECK(err == -EINVAL, "f2_seal_chunk with the wrong plaintext length: -EINVAL");
	err = f2_seal_chunk(key, &h, 2, buf, 0, buf);
	CHECK(err == -EINVAL, "f2_seal_chunk past the last chunk: -EINVAL");
	err = f2_open_chunk(key, &h, 2, buf, 16, buf);
	CHECK(err == -EINVAL, "f2_open_chunk past the last chunk: -EINVAL");
}

static void test_f2_header_reject(void)
{
	uint8_t fid[16], raw[64];
	struct f2_header h, g;
	int bad = 0, i, err;

	crypto_random(fid, sizeof(fid));
	f2_header_init(&h, 12345, 16, fid);

#define REJECT(what, edit)                                            \
	do {                                                          \
		memcpy(raw, h.raw, 64);                               \
		edit;                                                 \
		memset(&g, 0x5a, sizeof(g));                          \
		err = f2_header_parse(raw, &g);                       \
		if (err != -EBADMSG || g.chunk_shift != 0x5a5a5a5a) { \
			printf("# header with %s: %d\n", what, err);  \
			bad++;                                        \
		}                                                     \
	} while (0)

	for (i = 0; i < 4; i++)
		REJECT("bad magic", raw[i] ^= 0x20);
	REJECT("version 1", raw[4] = 1);
	REJECT("version 3", raw[4] = 3);
	REJECT("version 0", raw[4] = 0);
	REJECT("shift 11", raw[5] = 11);
	REJECT("shift 25", raw[5] = 25);
	REJECT("shift 0", raw[5] = 0);
	REJECT("shift 255", raw[5] = 255);
	REJECT("reserved 6", raw[6] = 1);
	REJECT("reserved 7", raw[7] = 0x80);
	for (i = 32; i < 64; i++)
		REJECT("reserved 32..63", raw[i] = 1);
	REJECT("a size past any file", memset(raw + 8, 0xff, 8));
#undef REJECT
	CHECK(bad == 0, "f2_header_parse refuses bad magic, version, shift, reserved, size");
	memcpy(raw, h.raw, 64);
	raw[5] = 12;
	err = f2_header_parse(raw, &g);
	CHECK(err == 0 && g.chunk_shift == 12, "shift 12 parses");
	raw[5] = 24;
	err = f2_header_parse(raw, &g);
	CHECK(err == 0 && g.chunk_shift == 24, "shift 24 parses");
}

/*
 * Every chunk of (key, big) must fail with -EBADMSG and leave no plaintext,
 * read as a reader would, with the geometry of whatever header big has.
 */
static int f2_all_refused(const uint8_t *key, const uint8_t *big, size_t big_len)
{
	struct f2_header h;
	uint64_t i, n;
	size_t cs;
	uint8_t *out;
	int err, bad = 0;

	err = f2_header_parse(big, &h);
	if (err)
		return err == -EBADMSG ? 0 : 1;
	cs = f2_chunk_size(&h);
	out = xmalloc(cs);
	n = f2_chunk_count(&h);
	if (n > 64)
		n = 64;
	for (i = 0; i < n; i++) {
		memset(out, 0xa5, cs);
		err = f2_open_from(key, &h, big, big_len, i, out);
		if (err != -EBADMSG || !all_zero_or(out, cs, 0xa5))
			bad++;
	}
	free(out);
	return bad;
}

static void test_f2_tamper(void)
{
	const unsigned shift = 12;
	const size_t cs = 4096, size = 3 * 4096 + 100;
	uint8_t key[32], key2[32], fid[16], fid2[16], *p, *big, *big2, *t, *out;
	size_t big_len, big2_len, j, trunc[6];
	struct f2_header h, h2;
	uint64_t i, off, n;
	int bad, err, k;

	crypto_random(key, sizeof(key));
	crypto_random(key2, sizeof(key2));
	crypto_random(fid, sizeof(fid));
	memcpy(fid2, fid, sizeof(fid2));
	fid2[15] ^= 1;
	p = xmalloc(size);
	fill_random(p, size);
	big = f2_build(key, p, size, shift, fid, &h, &big_len);
	big2 = f2_build(key, p, size, shift, fid2, &h2, &big2_len);
	t = xmalloc(big_len);
	out = xmalloc(cs);
	n = f2_chunk_count(&h);

	bad = 0;
	for (j = 0; j < F2_HEADER_SIZE; j++) {
		for (k = 0; k < 2; k++) {
			memcpy(t, big, big_len);
			t[j] ^= k ? 0x80 : 0x01;
			bad += f2_all_refused(key, t, big_len);
		}
	}
	CHECK(bad == 0, "a flipped bit in any of the 64 header bytes fails every chunk");

	bad = 0;
	for (i = 0; i < n; i++) {
		off = f2_chunk_offset(&h, i);
		for (j = 0; j < f2_chunk_plain_len(&h, i) + CRYPTO_TAG_SIZE; j++) {
			memcpy(t + off, big + off,
			       cs + CRYPTO_TAG_SIZE > big_len - off ? big_len - off
								    : cs + CRYPTO_TAG_SIZE);
			t[off + j] ^= (uint8_t)(1u << (j % 8));
			memset(out, 0xa5, cs);
			err = f2_open_chunk(key, &h, i, t + off,
					    f2_chunk_plain_len(&h, i) + CRYPTO_TAG_SIZE, out);
			if (err != -EBADMSG || !all_zero_or(out, cs, 0xa5))
				bad++;
		}
		memcpy(t + off, big + off, f2_chunk_plain_len(&h, i) + CRYPTO_TAG_SIZE);
	}
	CHECK(bad == 0, "a flipped bit in any byte of any chunk's ciphertext or tag: -EBADMSG, "
			"no plaintext written");

	/* Truncation: the reader reads what the header promises and gets less. */
	trunc[0] = big_len - 1;
	trunc[1] = big_len - 16;
	trunc[2] = big_len - 17;
	trunc[3] = f2_chunk_offset(&h, n - 1) + 5;
	trunc[4] = f2_chunk_offset(&h, n - 1);
	trunc[5] = F2_HEADER_SIZE;
	bad = 0;
	for (k = 0; k < 6; k++) {
		memset(out, 0xa5, cs);
		err = f2_open_from(key, &h, big, trunc[k], n - 1, out);
		if (err != -EBADMSG || !all_zero_or(out, cs, 0xa5))
			bad++;
	}
	CHECK(bad == 0, "a truncated big part fails its last chunk");
	{
		/* Truncated to whole chunks, with the size in the header lowered to match. */
		struct f2_header hs;
		uint8_t raw[64];

		memcpy(raw, big, 64);
		raw[8] = 0;
		raw[9] = 0x20; /* 8192: two chunks */
		raw[10] = 0;
		err = f2_header_parse(raw, &hs);
		memset(out, 0xa5, cs);
		if (!err)
			err = f2_open_chunk(key, &hs, 1, big + f2_chunk_offset(&h, 1), cs + 16,
					    out);
		CHECK(err == -EBADMSG && all_zero_or(out, cs, 0xa5),
		      "a big part cut at a chunk boundary with its size rewritten: -EBADMSG");
	}

	/* Chunks swapped within a file, or moved between files. */
	memset(out, 0xa5, cs);
	err = f2_open_chunk(key, &h, 0, big + f2_chunk_offset(&h, 1), cs + 16, out);
	CHECK(err == -EBADMSG && all_zero_or(out, cs, 0xa5), "chunk 1 read as chunk 0: -EBADMSG");
	memset(out, 0xa5, cs);
	err = f2_open_chunk(key, &h, 2, big + f2_chunk_offset(&h, 1), cs + 16, out);
	CHECK(err == -EBADMSG && all_zero_or(out, cs, 0xa5), "chunk 1 read as chunk 2: -EBADMSG");
	bad = 0;
	for (i = 0; i < n; i++) {
		memset(out, 0xa5, cs);
		err = f2_open_chunk(key, &h, i, big2 + f2_chunk_offset(&h2, i),
				    f2_chunk_plain_len(&h2, i) + 16, out);
		if (err != -EBADMSG || !all_zero_or(out, cs, 0xa5))
			bad++;
	}
	CHECK(bad == 0, "chunks of another file (same key, other file_id) fail in place: -EBADMSG");
	CHECK(f2_all_refused(key2, big, big_len) == 0, "every chunk under a wrong key: -EBADMSG");
	err = f2_open_chunk(key, &h, 0, big + 64, 15, out);
	CHECK(err == -EBADMSG, "a chunk shorter than a tag: -EBADMSG");
	err = f2_open_chunk(key, &h, 0, big + 64, cs + 16, out);
	CHECK(err == 0 && memcmp(out, p, cs) == 0, "the untouched chunk 0 still opens");

	free(out);
	free(t);
	free(big2);
	free(big);
	free(p);
}

/* ---- locked memory ------------------------------------------------------ */

/* A field of /proc/self/status in kB, -1 when absent. */
static long status_kb(const char *field)
{
	char line[256];
	long v = -1;
	FILE *f = fopen("/proc/self/status", "r");
	size_t n = strlen(field);

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (strncmp(line, field, n) == 0 && line[n] == ':')
			v = strtol(line + n + 1, NULL, 10);
	fclose(f);
	return v;
}

static void copy_str(char *out, size_t cap, const char *in)
{
	size_t n = strlen(in);

	if (n >= cap)
		n = cap - 1;
	memcpy(out, in, n);
	out[n] = 0;
}

/* The VmFlags line of the /proc/self/smaps entry that holds p, "" when none. */
static void smaps_flags(const void *p, char *out, size_t cap)
{
	char line[512];
	unsigned long lo, hi, a = (unsigned long)p;
	int in = 0;
	FILE *f = fopen("/proc/self/smaps", "r");

	out[0] = 0;
	if (!f)
		return;
	while (fgets(line, sizeof(line), f)) {
		/* Only the mapping lines start "lo-hi". */
		if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2)
			in = a >= lo && a < hi;
		else if (in && strncmp(line, "VmFlags:", 8) == 0)
			copy_str(out, cap, line + 8);
	}
	fclose(f);
}

/*
 * A large allocation for huge pages (the plaintext cache's slab) starts on
 * a 2 MiB boundary, marked for them, and keeps every other property:
 * locked, not dumped, wiped on fork, unlocked when freed. A plain one of
 * that size is not marked.
 */
static void test_secmem_huge(void)
{
	const size_t size = 8 * MIB + 5, huge = 2 * MIB;
	long before = status_kb("VmLck"), locked, after;
	char flags[256];
	uint8_t *p;
	pid_t pid;
	int status, ok;

	p = secmem_alloc_huge(size);
	CHECK(p != NULL, "secmem_alloc_huge(8 MiB + 5): %s", p ? "ok" : strerror(errno));
	if (!p)
		return;
	locked = status_kb("VmLck");
	CHECK((uintptr_t)p % huge == 0 && secmem_size(p) == size,
	      "a large allocation starts on a 2 MiB boundary, for huge pages");
	CHECK(before >= 0 && locked - before >= (long)(size / 1024),
	      "VmLck grew by at least its size (%ld -> %ld kB)", before, locked);
	smaps_flags(p, flags, sizeof(flags));
	CHECK(strstr(flags, " lo") && strstr(flags, " dd") && strstr(flags, " wf") &&
		      strstr(flags, " hg"),
	      "its mapping is locked, not dumped, wiped on fork, for huge pages (VmFlags:%s)",
	      strtok(flags, "\n"));
	memset(p, 0x3a, size);
	fflush(stdout);
	pid = fork();
	if (pid == 0)
		_exit(p[0] || p[4 * MIB] || p[size - 1]);
	ok = pid > 0 && waitpid(pid, &status, 0) == pid && WIFEXITED(status) &&
	     WEXITSTATUS(status) == 0;
	CHECK(ok && p[4 * MIB] == 0x3a, "a forked child sees zeros there; the parent its bytes");
	secmem_free(p);
	after = status_kb("VmLck");
	CHECK(after == before, "secmem_free unlocks it (VmLck back to %ld kB, now %ld)", before,
	      after);
	p = secmem_alloc(size);
	if (p)
		smaps_flags(p, flags, sizeof(flags));
	CHECK(p && !strstr(flags, " hg"),
	      "secmem_alloc of the same size is not marked for huge pages (VmFlags:%s)",
	      p ? strtok(flags, "\n") : " none");
	secmem_free(p);
}

static void test_secmem(void)
{
	const size_t size = MIB + 123;
	long page = sysconf(_SC_PAGESIZE), before, locked, after;
	char flags[256];
	uint8_t *p, *z;
	pid_t pid;
	int status, ok;

	before = status_kb("VmLck");
	p = secmem_alloc(size);
	CHECK(p != NULL, "secmem_alloc(1 MiB + 123): %s", p ? "ok" : strerror(errno));
	if (!p)
		return;
	locked = status_kb("VmLck");
	CHECK(((uintptr_t)p & (uintptr_t)(page - 1)) == 0 && secmem_size(p) == size,
	      "page-aligned and secmem_size gives the size asked for");
	CHECK(before >= 0 && locked - before >= (long)(size / 1024),
	      "VmLck grew by at least the size (%ld -> %ld kB)", before, locked);
	smaps_flags(p, flags, sizeof(flags));
	CHECK(strstr(flags, " lo") && strstr(flags, " dd") && strstr(flags, " wf"),
	      "the mapping is locked, not dumped, wiped on fork (VmFlags:%s)", strtok(flags, "\n"));
	memset(p, 0x5c, size);
	fflush(stdout);
	pid = fork();
	if (pid == 0) {
		size_t i;

		for (i = 0; i < size; i++)
			if (p[i] != 0)
				_exit(1);
		secmem_free(p);
		_exit(0);
	}
	ok = pid > 0 && waitpid(pid, &status, 0) == pid && WIFEXITED(status) &&
	     WEXITSTATUS(status) == 0;
	CHECK(ok && p[0] == 0x5c && p[size - 1] == 0x5c,
	      "a forked child sees zeros and can free it; the parent keeps its bytes");
	secmem_free(p);
	after = status_kb("VmLck");
	CHECK(after == before, "secmem_free unlocks it (VmLck back to %ld kB, now %ld)", before,
	      after);
	secmem_free(NULL);

	z = secmem_alloc(0);
	CHECK(z != NULL && secmem_size(z) == 0, "secmem_alloc(0) gives a valid pointer of size 0");
	secmem_free(z);
	errno = 0;
	z = secmem_alloc(SIZE_MAX);
	CHECK(z == NULL && errno == ENOMEM, "secmem_alloc(SIZE_MAX): NULL, ENOMEM");
	errno = 0;
	z = secmem_alloc(SIZE_MAX / 2);
	CHECK(z == NULL && errno == ENOMEM, "secmem_alloc(SIZE_MAX / 2): NULL, ENOMEM (errno %d)",
	      errno);

	/*
	 * Without CAP_IPC_LOCK and with a small RLIMIT_MEMLOCK, memory that
	 * cannot be locked is refused, never handed out unlocked.
	 */
	fflush(stdout);
	pid = fork();
	if (pid == 0) {
		struct rlimit rl = {64 * 1024, 64 * 1024};
		uint8_t *q, *r;

		if (setrlimit(RLIMIT_MEMLOCK, &rl) < 0)
			_exit(10);
		if (getuid() == 0 &&
		    (setgroups(0, NULL) < 0 || setgid(65534) < 0 || setuid(65534) < 0))
			_exit(11);
		errno = 0;
		q = secmem_alloc(MIB);
		if (q || (errno != EPERM && errno != ENOMEM && errno != EAGAIN))
			_exit(12);
		r = secmem_alloc(100);
		if (!r)
			_exit(13);
		secmem_free(r);
		_exit(0);
	}
	ok = pid > 0 && waitpid(pid, &status, 0) == pid && WIFEXITED(status);
	CHECK(ok && WEXITSTATUS(status) == 0,
	      "over RLIMIT_MEMLOCK without CAP_IPC_LOCK: NULL; a small one still works (child %d)",
	      ok ? WEXITSTATUS(status) : -1);

	test_secmem_huge();

	{
		uint8_t w[64];

		memset(w, 0x77, sizeof(w));
		crypto_wipe(w, sizeof(w));
		CHECK(all_zero_or(w, sizeof(w), 0), "crypto_wipe zeroes");
	}
}

/* ---- throughput ---------------------------------------------------------- */

static void throughput(void)
{
	const size_t size = 8 * MIB, cs = 65536;
	uint8_t key[32], fid[16], *p, *e, *out, *big;
	struct f2_header h;
	size_t e_len, big_len, off, bytes = 0;
	double t0, t1, f1_rate, f2_rate;
	uint64_t i;
	int err = 0;

	crypto_random(key, sizeof(key));
	crypto_random(fid, sizeof(fid));
	p = xmalloc(size);
	fill_random(p, size);
	e = xmalloc(f1_cipher_size(size));
	out = xmalloc(size + 32);
	f1_encrypt(key, p, size, e, &e_len);
	big = f2_build(key, p, size, F2_SHIFT_DEFAULT, fid, &h, &big_len);

	/* 64 KiB reads, the shape of the read path. */
	t0 = now();
	do {
		for (off = 0; off + cs + 16 <= e_len && !err; off += cs) {
			err = f1_decrypt_blocks(key, e + off, cs + 16, out + off);
			bytes += cs;
		}
		t1 = now();
	} while (t1 - t0 < 0.3 && !err);
	f1_rate = (double)bytes / MIB / (t1 - t0);

	bytes = 0;
	t0 = now();
	do {
		for (i = 0; i < f2_chunk_count(&h) && !err; i++) {
			err = f2_open_chunk(key, &h, i, big + f2_chunk_offset(&h, i), cs + 16,
					    out + i * cs);
			bytes += cs;
		}
		t1 = now();
	} while (t1 - t0 < 0.3 && !err);
	f2_rate = (double)bytes / MIB / (t1 - t0);
	CHECK(err == 0 && memcmp(out, p, size) == 0, "throughput runs decrypted correctly");
	printf("# throughput (64 KiB calls): f1_decrypt_blocks %.0f MB/s, "
	       "f2_open_chunk %.0f MB/s\n",
	       f1_rate, f2_rate);
	free(big);
	free(out);
	free(e);
	free(p);
}

int main(void)
{
	uint64_t seed = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
	const char *s = getenv("AZ_SEED");

	if (s && *s)
		seed = strtoull(s, NULL, 0);
	rng_state = seed ? seed : 1;
	printf("# random seed %llu (AZ_SEED=... to repeat)\n", (unsigned long long)seed);

	test_encodings();
	test_vectors();
	test_gcm();
	test_f1_sizes_and_padding();
	test_ranges();
	test_f2_geometry();
	test_f2_header_reject();
	test_f2_tamper();
	test_secmem();
	throughput();
	return check_done();
}
