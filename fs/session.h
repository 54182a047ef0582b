/*
 * session.h - the daemon's standing with the Resource API: credentials,
 * the token and its expiry, the hardware string, the api_key, cdn.yaml,
 * and the CDN address and keys that follow from them and the configuration.
 *
 * Calls that need a token log in when there is none or it has expired, and
 * log in again once and retry when the API answers 401/403 (-EACCES).
 * Thread-safe. Errors are 0 or a negative errno; -ENOKEY means no
 * credentials are known.
 *
 * A failed call or login is not logged here (debug only): its API calls
 * run quiet (fetch_quiet), and the caller, which knows what the call was
 * for, says it once with the failure's words, log_strerror(r) on the same
 * thread right after the call (docs/architecture.md, errors and messages).
 * cdn.yaml, fetched in the background of a login, logs its own failures.
 */
#ifndef AZAION_SESSION_H
#define AZAION_SESSION_H

#include <stddef.h>
#include <stdint.h>
#include <jansson.h>

#include "fetch/fetch.h"
#include "fs/config.h"

struct session;

/*
 * Reads the credentials file (when configured), the S3 secret and the
 * hardware string, and refuses an api_url or cdn_url that would carry
 * secrets in the clear. Does no network I/O. c and f must outlive the
 * session. On failure *ret_msg (msg.h; may be NULL) says what to fix,
 * naming the setting.
 */
int session_new(const struct config *c, struct fetch *f, struct session **ret, char **ret_msg);
void session_free(struct session *s);

/* Replaces the credentials (e.g. from the side endpoint) and logs in. */
int session_set_credentials(struct session *s, const char *email, const char *password);
/* Logs in with the known credentials and fetches cdn.yaml. */
int session_login(struct session *s);
/* 1 when credentials are known. */
int session_has_credentials(struct session *s);
/* 1 when the last login succeeded. */
int session_logged_in(struct session *s);
/* The hardware string H; valid until session_free. */
const char *session_hardware(struct session *s);
/*
 * The credentials as "email = ...\npassword = ...\n" (the credentials file's
 * form) in locked memory, for sealing; free with secmem_free.
 */
int session_credentials_blob(struct session *s, char **ret, size_t *ret_len);

/*
 * A format-1 resource of folder (a small part): fetched with the password
 * and hardware string and decrypted with api_key. *ret is locked memory
 * (secmem_free). An answer that is not one (not a CBC message, another
 * device's) is -EIO or -EACCES with *ret_msg (msg.h; may be NULL) saying
 * so; a failed call's words are fetch_strerror's.
 */
int session_get_resource(struct session *s, const char *folder, const char *name, uint8_t **ret,
			 size_t *ret_len, char **ret_msg);
/* GET /resources/list/{folder}. */
int session_list(struct session *s, const char *folder, json_t **ret);
/* GET /resources/key/{folder}/{name} with X-Device-Id. */
int session_device_key(struct session *s, const char *folder, const char *name,
		       const char *device_id, json_t **ret);
/*
 * GET /binary-split/key-fragment (Docker unlock, format 1); *ret is
 * secmem_free()d. An answer that is not one is -EPROTO with *ret_msg
 * (msg.h; may be NULL) saying so.
 */
int session_key_fragment(struct session *s, uint8_t **ret, size_t *ret_len, char **ret_msg);
/*
 * Attested enrolment (docs/trust.md 1): POST /devices/challenge with evidence
 * (the session adds "hardware"), then POST /devices with the proof.
 * -EPERM when the API refuses (403), *ret_detail (malloc()ed, may be
 * NULL) its reason.
 */
int session_device_challenge(struct session *s, json_t *evidence, json_t **ret, char **ret_detail);
int session_device_enrol(struct session *s, json_t *proof, char **ret_id, char **ret_detail);

/*
 * Where big parts live. The configured cdn_url and S3 keys win; keys from
 * cdn.yaml apply only when the CDN host comes from cdn.yaml too or equals
 * the configured one. The pointers stay valid until session_free.
 */
struct session_cdn {
	const char *url;	   /* base URL, no trailing '/' */
	const struct fetch_s3 *s3; /* NULL: unsigned requests */
};
/* -ENOENT when no CDN is configured and cdn.yaml is not (yet) known. */
int session_cdn(struct session *s, struct session_cdn *ret);
/* The same address with the keys for uploading (publishing). */
int session_cdn_upload(struct session *s, struct session_cdn *ret);

/* POST /resources/{folder}: a small part, with extra form fields (name, value, ..., NULL). */
int session_upload(struct session *s, const char *folder, const char *file_name, const void *data,
		   size_t len, const char *const *fields);
/* POST /resources/key/{folder}/{name}: a format-2 content key (publishing). */
int session_register_key(struct session *s, const char *folder, const char *name,
			 const char *key_b64, uint64_t size, const char *sha256_hex,
			 const char *file_id_hex, uint64_t big_size);
/* POST /resources/hashes/{folder}/{name}: a format-1 big part's chunk hashes (publishing). */
int session_register_chunk_hashes(struct session *s, const char *folder, const char *name,
				  uint32_t chunk_size, const uint8_t *sha256, size_t count);
/* GET /resources/hashes/{folder}/{name}: the list (malloc()ed); -ENOENT when the API holds none. */
int session_chunk_hashes(struct session *s, const char *folder, const char *name,
			 uint32_t *ret_chunk_size, uint8_t **ret_sha256, size_t *ret_count);

/* Parses cdn.yaml's flat "key: value" lines; exposed for tests. */
struct session_cdn_yaml {
	char *host;
	char *access_key;
	char *secret_key; /* locked memory */
	char *up_access_key;
	char *up_secret_key; /* locked memory */
};
int session_parse_cdn_yaml(const char *text, size_t len, struct session_cdn_yaml *ret);
void session_cdn_yaml_clear(struct session_cdn_yaml *y);

#endif
