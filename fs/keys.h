/*
 * keys.h - where the read path's keys and key material come from, behind
 * one function table: the real source asks the API (session), the TPM
 * (device) and the configuration; tests put a fake one in its place.
 *
 * keys_resource_key is the one owner of the format-1 resource key rule
 * (docs/formats.md, docs/tpm.md): the secret sealed in the TPM first, then
 * legacy_resource_secret_file, then the original loader's documented
 * default. The mount, POST /upload and azaionctl all call it, at each use,
 * so that what is published decrypts for the readers and a re-enrolment
 * counts at once. Never a guess: when a sealed store that may hold the
 * secret does not unseal and no file is configured, it is -EACCES, since
 * the default would decrypt into garbage that no check catches.
 *
 * Errors are 0 or a negative errno with a message the caller owns (where
 * there is one); nothing here logs above debug, except the kept key
 * documents', small parts' and chunk hashes' housekeeping (a warning when
 * state_dir cannot keep one) and
 * keys_new's warning that format 1 is unreadable until a re-enrolment.
 */
#ifndef AZAION_KEYS_H
#define AZAION_KEYS_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "fetch/fetch.h"
#include "fs/config.h"
#include "fs/device.h"
#include "fs/session.h"

#define KEYS_WRAPPED_MAX 1024

/*
 * The format-1 resource key into key (CRYPTO_KEY_SIZE bytes); d may be
 * NULL (azaionctl: the file or the default). -EACCES with *ret_msg when the
 * TPM's sealed store does not unseal and no legacy_resource_secret_file is set.
 */
int keys_resource_key(const struct config *c, struct device *d, uint8_t *key, char **ret_msg);

/* A format-2 key document, as the API or the copy in state_dir gave it. */
struct keys_doc {
	char file_id[33]; /* hex */
	uint8_t wrapped[KEYS_WRAPPED_MAX];
	size_t wrapped_len;
	int kept; /* from state_dir: the API was out of reach */
};

struct keys;
struct keys_ops {
	/* The format-1 resource key (keys_resource_key for the real source). */
	int (*resource_key)(struct keys *k, uint8_t *key, char **ret_msg);
	/*
	 * The CDN's base URL (no trailing '/') and its keys: -ENOENT when none
	 * is known. The strings live as long as k.
	 */
	int (*cdn)(struct keys *k, const char **ret_url, const struct fetch_s3 **ret_s3);
	/* The small part of name (format 1), in locked memory; -ENOKEY: not logged in. */
	int (*small_part)(struct keys *k, const char *name, uint8_t **ret, size_t *ret_len,
			  char **ret_msg);
	/*
	 * The key document of name for this device (format 2). -EACCES: no
	 * enrolled device or not allowed; -ENOENT: the API holds none; else
	 * the API's error when no kept copy serves instead.
	 */
	int (*key_doc)(struct keys *k, const char *name, struct keys_doc *ret, char **ret_msg);
	/*
	 * The chunk hashes of name's big part (docs/trust.md section 4), from
	 * the API, never the CDN: *ret_sha256 (count * 32 bytes) malloc()ed.
	 * -ENOENT when the API holds none.
	 */
	int (*chunk_hashes)(struct keys *k, const char *name, uint32_t *ret_chunk_size,
			    uint8_t **ret_sha256, size_t *ret_count, char **ret_msg);
	/* Unwraps a document's key into key (CRYPTO_KEY_SIZE bytes, locked memory). */
	int (*unwrap)(struct keys *k, const struct keys_doc *doc, uint8_t *key, char **ret_msg);
	void (*free)(struct keys *k);
};
struct keys {
	const struct keys_ops *ops;
};

/*
 * The real source; c, s and d must outlive it (d may be NULL: no TPM). It
 * reads the resource key once, now (after the device's login, which
 * unseals the TPM's copy).
 */
int keys_new(const struct config *c, struct session *s, struct device *d, struct keys **ret,
	     char **ret_msg);
void keys_free(struct keys *k);

/*
 * Checks a format-2 key document (docs/formats.md): format 2, a file_id of
 * 32 hex digits (copied to ret_file_id), a wrapped_key that decodes into
 * at most cap bytes of wrapped. -EBADMSG when it does not.
 */
int keys_parse_doc(json_t *doc, char ret_file_id[33], uint8_t *wrapped, size_t cap,
		   size_t *ret_len);

#endif
