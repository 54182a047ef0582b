/*
 * crypto.h - the resource formats of docs/formats.md, the AES-256-GCM they and
 * the TPM's sealed store share, and the secret memory that holds keys and
 * plaintext.
 *
 * Pure functions over buffers: no I/O, no threads, no logging. Every
 * function returns 0 or a negative errno:
 *   -EINVAL   an argument out of range (a size, a chunk index)
 *   -EBADMSG  ciphertext that fails its check (GCM tag, CBC padding,
 *             a malformed header); no plaintext is left in the output
 *             in that case (it is wiped)
 *   -ENOMEM   an allocation failed
 *   -ENOBUFS  an output buffer too small for the result
 *   -EIO      OpenSSL failed for another reason
 * Out-parameters are named ret_* and written only on success.
 *
 * The few functions that return void cannot fail short of OpenSSL failing
 * to allocate a few bytes; they abort() then rather than hand back a wrong
 * digest that would become a key. Thread-safe throughout.
 */
#ifndef AZAION_CRYPTO_H
#define AZAION_CRYPTO_H

#include <stddef.h>
#include <stdint.h>

#define CRYPTO_KEY_SIZE 32 /* AES-256 */
#define CRYPTO_KS_LEN 64   /* b64(SHA-384), without the NUL */
#define CRYPTO_BLOCK 16	   /* AES block, also the CBC IV size */
#define CRYPTO_TAG_SIZE 16 /* GCM tag */

/* ---- secret memory --------------------------------------------------- */

/*
 * Memory for keys and plaintext: page-aligned, mlock()ed so it never
 * reaches swap, MADV_DONTDUMP so it never reaches a core dump,
 * MADV_WIPEONFORK so a child never sees it, and wiped on free.
 * secmem_alloc() returns NULL with errno set when the memory cannot be
 * locked (RLIMIT_MEMLOCK without CAP_IPC_LOCK): secrets are never kept
 * in unlocked memory. secmem_free(NULL) is a no-op.
 *
 * Each allocation is its own mapping: a header page, the data pages and a
 * PROT_NONE guard page after them, so an overrun faults. secmem_alloc(0)
 * returns a valid pointer (to no usable byte). Because of MADV_WIPEONFORK,
 * a forked child reads zeros: a process that forks to daemonise allocates
 * its secrets after the fork. secmem_free() and secmem_size() abort on a
 * pointer that secmem_alloc() did not return.
 */
void *secmem_alloc(size_t size);
/*
 * As secmem_alloc, for a large buffer that the kernel copies out of again
 * and again (the plaintext cache's slab, which every FUSE reply comes
 * from; cache_dir's staging pool, every direct write's): from 2 MiB on, its data starts on a 2 MiB boundary and is marked
 * for transparent huge pages, which the kernel gives where it has them;
 * its pages are locked as they are first touched. Freed with secmem_free.
 */
void *secmem_alloc_huge(size_t size);
void secmem_free(void *p);
/* The first n bytes at s as a NUL-terminated
 * string in secret memory; NULL with errno set on failure. */
char *secmem_strndup(const void *s, size_t n);
/* Size that secmem_alloc() was given for p. */
size_t secmem_size(const void *p);
/* Wipes n bytes in a way the compiler cannot elide. */
void crypto_wipe(void *p, size_t n);
/* Constant-time comparison; 0 when equal. */
int crypto_memcmp(const void *a, const void *b, size_t n);
/* Cryptographically strong random bytes. */
int crypto_random(void *buf, size_t n);

/* ---- encodings and digests ------------------------------------------ */

/* Standard base64 with padding; out must hold 4*ceil(n/3)+1 bytes (NUL). */
size_t crypto_b64_encode(const void *in, size_t n, char *out);
/*
 * Decodes standard base64 (padding required, no whitespace, unused bits
 * zero): -EINVAL when malformed, -ENOBUFS when the result exceeds cap.
 */
int crypto_b64_decode(const char *in, size_t len, uint8_t *out, size_t cap, size_t *ret_len);
void crypto_sha256(const void *in, size_t n, uint8_t out[32]);
void crypto_sha384(const void *in, size_t n, uint8_t out[48]);

/* Streaming SHA-256, for whole-file checks and publishing. */
struct crypto_sha256;
struct crypto_sha256 *crypto_sha256_new(void);
void crypto_sha256_update(struct crypto_sha256 *h, const void *in, size_t n);
/* Writes the digest; the context may be reused after crypto_sha256_reset. */
void crypto_sha256_final(struct crypto_sha256 *h, uint8_t out[32]);
void crypto_sha256_reset(struct crypto_sha256 *h);
void crypto_sha256_free(struct crypto_sha256 *h);
/* Lower-case hex of n bytes into out (2n+1 bytes). */
void crypto_hex(const uint8_t *in, size_t n, char *out);

/* ---- format 1: keys -------------------------------------------------- */

/* ks(s) = b64(SHA384(s)), 64 characters plus NUL. */
void f1_key_string(const void *s, size_t n, char out[CRYPTO_KS_LEN + 1]);
/* aes(s) = SHA256(ks(s)). */
void f1_aes_key(const void *s, size_t n, uint8_t out[CRYPTO_KEY_SIZE]);
/* hw_hash = ks("Azaion_" || hw || "_%$$$)0_"). */
void f1_hw_hash(const char *hw, char out[CRYPTO_KS_LEN + 1]);
/* api_key = aes(email "-" password "-" hw_hash "-#%@AzaionKey@%#---"). */
int f1_api_key(const char *email, const char *password, const char *hw_hash,
	       uint8_t out[CRYPTO_KEY_SIZE]);
/* archive_key = SHA256(key_fragment). */
void f1_archive_key(const void *fragment, size_t n, uint8_t out[CRYPTO_KEY_SIZE]);
/* The original loader's documented resource_secret. */
#define F1_DEFAULT_RESOURCE_SECRET "-#%@AzaionKey@%#---234sdfklgvhjbnn"

/*
 * "CPU: c. GPU: g. Memory: m. DriveSerial: s" into out (cap bytes);
 * -ENOBUFS when it does not fit (never truncated).
 */
int f1_hardware_string(const char *cpu, const char *gpu, const char *memory, const char *serial,
		       char *out, size_t cap);

/* ---- format 1: whole-buffer CBC (small parts, cdn.yaml) -------------- */

/* Size of CBC(k, m) for |m| = plain_size: 16 (IV) + padded size (saturates). */
uint64_t f1_cipher_size(uint64_t plain_size);
/* Small part size n = min(3072, floor(|E| * 3 / 10)) of an E of e_size. */
uint64_t f1_small_size(uint64_t e_size);

/* out = iv || CBC(key, in) with a random IV; out holds f1_cipher_size(n). */
int f1_encrypt(const uint8_t key[CRYPTO_KEY_SIZE], const void *in, size_t n, uint8_t *out,
	       size_t *ret_len);
/*
 * in = iv || ciphertext; out holds n - 16 bytes; padding is checked in
 * constant time. -EBADMSG (out wiped) for a bad padding or an n that is not
 * a multiple of 16 of at least 32.
 */
int f1_decrypt(const uint8_t key[CRYPTO_KEY_SIZE], const uint8_t *in, size_t n, uint8_t *out,
	       size_t *ret_len);

/* ---- format 1: streaming encryption (publishing) --------------------- */

struct f1_encryptor;
/* iv NULL: random. The first output is the 16-byte IV. */
int f1_encryptor_new(const uint8_t key[CRYPTO_KEY_SIZE], const uint8_t *iv,
		     struct f1_encryptor **ret);
/* out must hold n + 32 bytes; writes *ret_len bytes (IV included once). */
int f1_encryptor_update(struct f1_encryptor *e, const void *in, size_t n, uint8_t *out,
			size_t *ret_len);
/* Writes the padded last block(s); out must hold 32 bytes. Further calls: -EINVAL. */
int f1_encryptor_final(struct f1_encryptor *e, uint8_t *out, size_t *ret_len);
void f1_encryptor_free(struct f1_encryptor *e);

/* ---- format 1: range decryption -------------------------------------- */

/*
 * Decrypts whole CBC blocks out of E: e points at E[16*j] (the IV when
 * j = 0) and holds n bytes, a multiple of 16 and at least 32. Writes the
 * n - 16 plaintext bytes of blocks j .. j + n/16 - 2 to out, padding not
 * removed. out may not overlap e. -EINVAL for any other n.
 */
int f1_decrypt_blocks(const uint8_t key[CRYPTO_KEY_SIZE], const uint8_t *e, size_t n, uint8_t *out);
/*
 * The same, fed in pieces as they arrive: started with the block before
 * the first (E[16*j - 16], the IV when j = 0); each update takes n bytes
 * of E and writes the plaintext of the blocks it completed to out
 * (*ret_len bytes, a multiple of 16, at most n + 15), keeping a partial
 * block for the next. Padding is not removed. One thread at a time;
 * f1_decryptor_free wipes the key schedule.
 */
struct f1_decryptor;
int f1_decryptor_new(const uint8_t key[CRYPTO_KEY_SIZE], const uint8_t iv[CRYPTO_BLOCK],
		     struct f1_decryptor **ret);
int f1_decryptor_update(struct f1_decryptor *d, const uint8_t *in, size_t n, uint8_t *out,
			size_t *ret_len);
void f1_decryptor_free(struct f1_decryptor *d);
/*
 * Plaintext size of an E of e_size bytes from its last 32 bytes: decrypts
 * the last block and checks its PKCS#7 padding (-EBADMSG when invalid, or
 * when e_size is not a multiple of 16 of at least 32).
 */
int f1_plain_size(const uint8_t key[CRYPTO_KEY_SIZE], const uint8_t last32[32], uint64_t e_size,
		  uint64_t *ret_size);

/* ---- AES-256-GCM ----------------------------------------------------- */

#define CRYPTO_GCM_NONCE_SIZE 12

/*
 * Seals plain_len bytes under key and nonce: out receives plain_len + 16
 * bytes, ciphertext || tag. aad (aad_len bytes, NULL when 0) is
 * authenticated, not encrypted. A nonce must never repeat under one key.
 * out may be plain itself (in place). -EINVAL for a length past INT_MAX.
 */
int crypto_gcm_seal(const uint8_t key[CRYPTO_KEY_SIZE], const uint8_t nonce[CRYPTO_GCM_NONCE_SIZE],
		    const void *aad, size_t aad_len, const void *plain, size_t plain_len,
		    uint8_t *out);
/*
 * Opens ct (ciphertext || tag, ct_len bytes): out receives ct_len - 16
 * bytes, kept only when the tag verifies over aad and the ciphertext;
 * -EBADMSG otherwise, also for a ct_len below 16. On any failure out holds
 * no plaintext (wiped). out may be ct itself (in place). -EINVAL for a
 * length past INT_MAX (out untouched).
 */
int crypto_gcm_open(const uint8_t key[CRYPTO_KEY_SIZE], const uint8_t nonce[CRYPTO_GCM_NONCE_SIZE],
		    const void *aad, size_t aad_len, const uint8_t *ct, size_t ct_len,
		    uint8_t *out);

/*
 * An opener of many messages under one key, each fed in pieces as they
 * arrive: the key is expanded once, not per message, and the ciphertext
 * needs no buffer of its own. Per message: crypto_gcm_start, then
 * crypto_gcm_update for each piece (out receives n bytes of plaintext,
 * NOT yet authenticated: the caller keeps it from any reader until
 * crypto_gcm_finish returns 0, and wipes it otherwise), then
 * crypto_gcm_finish with the tag: 0, or -EBADMSG for a tag that does not
 * verify. One thread at a time; crypto_gcm_free wipes the key schedule.
 */
struct crypto_gcm;
int crypto_gcm_new(const uint8_t key[CRYPTO_KEY_SIZE], struct crypto_gcm **ret);
int crypto_gcm_start(struct crypto_gcm *g, const uint8_t nonce[CRYPTO_GCM_NONCE_SIZE],
		     const void *aad, size_t aad_len);
int crypto_gcm_update(struct crypto_gcm *g, const uint8_t *ct, size_t n, uint8_t *out);
int crypto_gcm_finish(struct crypto_gcm *g, const uint8_t tag[CRYPTO_TAG_SIZE]);
void crypto_gcm_free(struct crypto_gcm *g);

/* ---- format 2 --------------------------------------------------------- */

#define F2_HEADER_SIZE 64
#define F2_MAGIC "AZB2"
#define F2_VERSION 2
#define F2_SHIFT_MIN 12
#define F2_SHIFT_MAX 24
#define F2_SHIFT_DEFAULT 16
#define F2_FILE_ID_SIZE 16

struct f2_header {
	unsigned chunk_shift;
	uint64_t size; /* plaintext size */
	uint8_t file_id[F2_FILE_ID_SIZE];
	uint8_t raw[F2_HEADER_SIZE]; /* the bytes, as authenticated */
};

/*
 * Builds a header (raw filled in); -EINVAL for a shift out of range or a
 * size whose big part would not fit in an off_t (INT64_MAX bytes).
 */
int f2_header_init(struct f2_header *h, uint64_t size, unsigned chunk_shift,
		   const uint8_t file_id[F2_FILE_ID_SIZE]);
/*
 * Parses and checks magic, version, shift, reserved bytes and the size's
 * limit of f2_header_init (-EBADMSG).
 */
int f2_header_parse(const uint8_t raw[F2_HEADER_SIZE], struct f2_header *ret);

uint64_t f2_chunk_size(const struct f2_header *h);  /* cs */
uint64_t f2_chunk_count(const struct f2_header *h); /* max(1, ceil(size/cs)) */
/*
 * Plaintext bytes in chunk i (the last may be shorter; 0 for empty files
 * and for i past the last chunk).
 */
uint64_t f2_chunk_plain_len(const struct f2_header *h, uint64_t i);
/* Offset of chunk i in the big part: 64 + i * (cs + 16). */
uint64_t f2_chunk_offset(const struct f2_header *h, uint64_t i);
/* Total big part size for this header. */
uint64_t f2_big_size(const struct f2_header *h);

/*
 * Seals chunk i: out receives plain_len + 16 bytes (ciphertext || tag).
 * plain_len must equal f2_chunk_plain_len(h, i) and i be a chunk of h,
 * else -EINVAL.
 */
int f2_seal_chunk(const uint8_t key[CRYPTO_KEY_SIZE], const struct f2_header *h, uint64_t i,
		  const uint8_t *plain, size_t plain_len, uint8_t *out);
/*
 * Opens chunk i from ct (ciphertext || tag, ct_len bytes, which must be
 * f2_chunk_plain_len(h, i) + 16). Writes ct_len - 16 bytes to out only when
 * the tag verifies; -EBADMSG otherwise (out is wiped), also for a ct_len
 * that differs (a truncated big part). -EINVAL for an i past the last chunk.
 */
int f2_open_chunk(const uint8_t key[CRYPTO_KEY_SIZE], const struct f2_header *h, uint64_t i,
		  const uint8_t *ct, size_t ct_len, uint8_t *out);
/*
 * Starts opening chunk i of h in g, for a stream of its ciphertext
 * (crypto_gcm_update) and its tag (crypto_gcm_finish). -EINVAL for an i
 * past the last chunk.
 */
int f2_chunk_start(struct crypto_gcm *g, const struct f2_header *h, uint64_t i);

#endif
