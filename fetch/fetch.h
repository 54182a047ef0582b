/*
 * fetch.h - every outbound HTTP exchange: the Resource API, CDN range reads
 * and uploads, the Docker Engine API on its Unix socket, and plain calls
 * for azaionctl. Returns bytes and parsed JSON; knows no resource formats.
 *
 * One struct fetch per process. It is thread-safe: requests from several
 * threads share DNS and TLS sessions (a curl share) and a pool of easy
 * handles whose connections stay alive from call to call (libcurl 7.88
 * cannot share a connection cache between threads safely). TLS peers are
 * always verified.
 *
 * Errors are 0 or a negative errno, mapped once here:
 *   -EACCES      401 or 403
 *   -ENOENT      404
 *   -ETIMEDOUT   the request (with its retries) ran past its timeout
 *   -EHOSTUNREACH connection refused, DNS failure, reset (after retries)
 *   -EIO         5xx or 429 after retries, a short body, a TLS failure,
 *                any other non-2xx status
 *   -EPROTO      an answer that breaks the protocol (bad Content-Range,
 *                unparsable JSON, a missing field)
 *   -EFBIG       an answer larger than the cap for that call
 *   -EBADMSG     a chunk-hash list that breaks its rules (below)
 *   -ECANCELED   a sink or body reader asked to stop
 *   -ENOMEM
 * The cause is logged once, here, through the log callback; secrets
 * (passwords, tokens, key material) are never logged. fetch_strerror()
 * gives it in an operator's words. At LOG_DEBUG every request sent is one
 * line: "request METHOD URL: HTTP status; N bytes in, N out, N ms" (the
 * URL without userinfo and query), or "failed: CAUSE" instead of a status.
 */
#ifndef AZAION_FETCH_H
#define AZAION_FETCH_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>
#include <jansson.h>

/*
 * Like strerror(-err), but when err is what the last failed call of this
 * thread returned, its cause in an operator's words: "connection refused
 * at HOST:PORT: nothing listens there", "cannot resolve NAME", "TLS:
 * certificate of HOST:PORT not trusted (...)", "no answer from HOST:PORT:
 * timed out after N s", "HOST:PORT closed the connection after N of M
 * bytes (...)". A thread that waited for another's call (the read path's
 * workers) gets the process's last refused, unreachable or timed-out call
 * of the last minute for -EHOSTUNREACH and -ETIMEDOUT. The text stays valid
 * until the thread's next fetch call or fetch_strerror.
 */
const char *fetch_strerror(int err);

/*
 * on = 1: from now on this thread's calls log their failures at debug
 * only, and fetch_strerror gives their words (the last line that would
 * have been logged, when no better words were set): for a caller that
 * says each failure itself, once (the read path's key source, whose words
 * go up to the edge that answers the reader). Returns the setting before,
 * to restore it.
 */
int fetch_quiet(int on);

/* Copies url without userinfo, query and fragment: what a log or a message may show. */
void fetch_url_for_log(const char *url, char *out, size_t cap);

/* Log callback; priority is a syslog LOG_* value. */
typedef void (*fetch_log_fn)(int priority, const char *msg);

struct fetch_opts {
	const char *ca_file;	     /* NULL: the system store */
	unsigned timeout_ms;	     /* bound of one call, retries included */
	unsigned connect_timeout_ms; /* bound of one connection attempt */
	unsigned max_retries;	     /* transient failures retried, e.g. 5 */
	fetch_log_fn log;	     /* may be NULL */
};

struct fetch;
int fetch_new(const struct fetch_opts *opts, struct fetch **ret);
void fetch_free(struct fetch *f);
/* Changes the per-call timeout of later calls (0 keeps it). */
void fetch_set_timeout(struct fetch *f, unsigned timeout_ms);

/* A buffered answer, owned by the caller; fetch_buf_free wipes it. */
struct fetch_buf {
	uint8_t *data;
	size_t len;
};
void fetch_buf_free(struct fetch_buf *b);

/* Streamed body source: returns bytes written to buf, 0 at the end,
 * or a negative errno to abort. */
typedef ssize_t (*fetch_read_fn)(void *ctx, uint8_t *buf, size_t cap);
/* A fetch_read_fn over memory: fetch_mem_read(&(struct fetch_mem_body){data, len}, ...). */
struct fetch_mem_body {
	const uint8_t *data;
	size_t len, pos;
};
ssize_t fetch_mem_read(void *body, uint8_t *buf, size_t cap);
/* Streamed answer sink: returns 0, or a negative errno to abort. */
typedef int (*fetch_write_fn)(void *ctx, const uint8_t *data, size_t len);

/* S3 request signing (AWS SigV4 by libcurl). access_key NULL: unsigned. */
struct fetch_s3 {
	const char *access_key;
	const char *secret_key;
	const char *region; /* NULL: us-east-1 */
};

/* ---- generic exchange (azaionctl, tests) ------------------------------ */

struct fetch_request {
	const char *method; /* "GET", "POST", "PUT", "HEAD", "DELETE" */
	const char *url;
	const char *unix_socket;    /* NULL: TCP */
	const char *bearer;	    /* Authorization: Bearer ... */
	const char *const *headers; /* NULL-terminated, "Name: value" */
	const void *body;	    /* buffered request body, or */
	size_t body_len;
	fetch_read_fn body_reader; /* a streamed one */
	void *body_ctx;
	int64_t body_size; /* streamed size; -1: chunked */
	const char *content_type;
	const struct fetch_s3 *s3;
	size_t max_response; /* cap of a buffered answer; 0: 1 MiB */
	fetch_write_fn sink; /* stream the answer instead */
	void *sink_ctx;
	int no_retry;	     /* requests that are not idempotent */
	unsigned timeout_ms; /* 0: the fetch's; for long uploads */
};
struct fetch_response {
	long status;
	struct fetch_buf body; /* empty when a sink was given */
};
/*
 * Runs one exchange (retrying transient transport failures, 5xx and 429
 * unless no_retry). Returns 0 when an HTTP answer arrived, whatever its
 * status; a negative errno when none did. Transport failures are logged
 * here; a status is the caller's to judge and log.
 * Retries never replay what cannot be replayed: a no_retry request is sent
 * again only when it never left (connection refused), a body_reader only
 * when it was never read, a sink only when it received nothing. The body
 * of a 5xx or 429 answer that may still be retried is dropped, so such a
 * final answer can come back with an empty body.
 */
int fetch_request(struct fetch *f, const struct fetch_request *req, struct fetch_response *ret);
void fetch_response_free(struct fetch_response *r);
/* Maps an HTTP status to 0 or a negative errno as above. */
int fetch_status_errno(long status);

/* ---- transport policy (docs/trust.md 5) -------------------------------- */

/*
 * Whether url may carry the password and the token: https://, or plain
 * http:// to a loopback host (localhost, 127.0.0.0/8, ::1; a name when
 * every address it resolves to is one of those). Makes no connection.
 * 0 allowed; -EPERM refused, -EINVAL not an http(s) URL, both with
 * *ret_why (malloc()ed, may be NULL on ENOMEM) saying why; -ENOMEM.
 */
int fetch_url_allowed(const char *url, char **ret_why);

/* ---- multipart/form-data bodies ----------------------------------------- */

/*
 * A streamed multipart/form-data body (RFC 7578): the text fields first, in
 * their order, each
 *   --B CRLF Content-Disposition: form-data; name="NAME" CRLF CRLF VALUE CRLF
 * then one file part
 *   --B CRLF Content-Disposition: form-data; name="FILE_FIELD"; filename="FILE_NAME" CRLF
 *   Content-Type: application/octet-stream CRLF CRLF BYTES CRLF --B-- CRLF
 * where B is "azaionfs" and 24 random hex digits, and BYTES are the size
 * bytes read from rd as the body is read, never all in memory. fields (may
 * be NULL) is a NULL-terminated list of name, value pairs. -EINVAL for a
 * name without a value, or a name, file_field or file_name that is empty or
 * holds '"', CR or LF (they go into the head as they are). A reader that
 * ends before size bytes ends the body with -EIO; its errors end it too.
 */
struct fetch_multipart;
int fetch_multipart_new(const char *const *fields, const char *file_field, const char *file_name,
			uint64_t size, fetch_read_fn rd, void *rd_ctx,
			struct fetch_multipart **ret);
void fetch_multipart_free(struct fetch_multipart *m);
/* Makes m req's body: body_reader, body_ctx, body_size and content_type (with the
 * boundary, valid while m lives). One exchange reads it once. */
void fetch_multipart_set_body(struct fetch_multipart *m, struct fetch_request *req);
/* The body_reader that set_body installs (a fetch_read_fn over m). */
ssize_t fetch_multipart_read(void *m, uint8_t *buf, size_t cap);

/* ---- the Resource API (docs/resource-api.md) ----------------------------- */

/* POST /login; *ret_token is malloc()ed, *ret_exp the JWT exp (0: none). */
int fetch_api_login(struct fetch *f, const char *api_url, const char *email, const char *password,
		    char **ret_token, time_t *ret_exp);
/* POST /resources/get/{folder} {"password","hardware","fileName"}. */
int fetch_api_resource(struct fetch *f, const char *api_url, const char *token, const char *folder,
		       const char *file_name, const char *password, const char *hardware,
		       struct fetch_buf *ret);
/* GET /resources/list/{folder}; -ENOENT when the API has no catalog (that
 * 404 is logged at LOG_DEBUG only). */
int fetch_api_list(struct fetch *f, const char *api_url, const char *token, const char *folder,
		   json_t **ret);
/* GET /binary-split/key-fragment. */
int fetch_api_key_fragment(struct fetch *f, const char *api_url, const char *token,
			   struct fetch_buf *ret);
/*
 * POST /resources/{folder}, multipart (fetch_multipart above) file field
 * "data" named file_name; fields (may be NULL) is a NULL-terminated list of
 * name, value pairs sent as extra form fields before it (the publisher's
 * size, sha256, big_size).
 */
int fetch_api_upload(struct fetch *f, const char *api_url, const char *token, const char *folder,
		     const char *file_name, const void *data, size_t len,
		     const char *const *fields);
/*
 * Attested enrolment (docs/trust.md 1). POST /devices/challenge with the
 * evidence object ({"name", "hardware", "ek_cert", "ek_public",
 * "ak_public"}): *ret the answer ({"challenge_id", "credential_blob",
 * "encrypted_secret", "nonce"}). POST /devices with the proof object
 * (the caller wipes its "secret" member: a 401 sends it again after a new
 * login): *ret_device_id malloc()ed; never retried on its own. A 403 is -EPERM with *ret_detail (may be NULL;
 * malloc()ed) the API's reason, and is logged.
 */
int fetch_api_device_challenge(struct fetch *f, const char *api_url, const char *token,
			       json_t *evidence, json_t **ret, char **ret_detail);
int fetch_api_device_enrol(struct fetch *f, const char *api_url, const char *token, json_t *proof,
			   char **ret_device_id, char **ret_detail);
/* GET /resources/key/{folder}/{name} with X-Device-Id: the JSON small part;
 * -ENOENT (logged at LOG_DEBUG) for an unknown or revoked device or a
 * resource that is not format 2. */
int fetch_api_device_key(struct fetch *f, const char *api_url, const char *token,
			 const char *folder, const char *name, const char *device_id, json_t **ret);
/*
 * POST /resources/key/{folder}/{name} {"key","size","sha256"}, plus the
 * extra fields "file_id" (when file_id_hex is not NULL) and "big_size"
 * (when not 0) that the API needs to build the small part.
 */
int fetch_api_register_key(struct fetch *f, const char *api_url, const char *token,
			   const char *folder, const char *name, const char *key_b64, uint64_t size,
			   const char *sha256_hex, const char *file_id_hex, uint64_t big_size);

/*
 * Format-1 chunk hashes (docs/trust.md section 4): the SHA-256 of every
 * chunk_size bytes of a big part's ciphertext, the last chunk possibly
 * shorter; an empty big part has none. chunk_size is a power of two from
 * FETCH_CHUNK_HASHES_MIN to FETCH_CHUNK_HASHES_MAX; a list covers at most
 * FETCH_CHUNK_HASHES_BIG_MAX bytes and holds at most
 * FETCH_CHUNK_HASHES_COUNT_MAX entries (32 MiB of digests), so that a
 * hostile API cannot make the daemon allocate without bound.
 */
#define FETCH_CHUNK_HASHES_MIN (64u * 1024)
#define FETCH_CHUNK_HASHES_MAX (16u * 1024 * 1024)
#define FETCH_CHUNK_HASHES_BIG_MAX ((uint64_t)1 << 40)
#define FETCH_CHUNK_HASHES_COUNT_MAX ((size_t)1 << 20)
/* 1 when chunk_size and count follow the rules above. */
int fetch_chunk_hashes_valid(uint32_t chunk_size, size_t count);
/* GET /resources/hashes/{folder}/{name} (docs/trust.md section 4): the format-1 chunk hashes;
 * -ENOENT (logged at LOG_DEBUG only) when the API holds none; -EBADMSG (logged, with the
 * reason) for an answer that breaks the rules above or is not the JSON object
 * {"chunk_size": n, "sha256": ["<64 hex>", ...]} (other members are skipped). */
int fetch_api_chunk_hashes(struct fetch *f, const char *api_url, const char *token,
			   const char *folder, const char *name, uint32_t *ret_chunk_size,
			   uint8_t **ret_sha256 /* ret_count * 32 bytes, malloc()ed, not NULL */,
			   size_t *ret_count);
/*
 * The same parse over a whole answer in memory (the fuzz target's entry);
 * -EBADMSG with *ret_why (static) when it is malformed.
 */
int fetch_chunk_hashes_parse(const uint8_t *body, size_t len, uint32_t *ret_chunk_size,
			     uint8_t **ret_sha256, size_t *ret_count, const char **ret_why);
/* POST /resources/hashes/{folder}/{name} {"chunk_size","sha256":[hex,...]} -> 201. Replaces
 * the list the API held; safe to retry. -EINVAL when the list breaks the rules above. */
int fetch_api_register_chunk_hashes(struct fetch *f, const char *api_url, const char *token,
				    const char *folder, const char *name, uint32_t chunk_size,
				    const uint8_t *sha256, size_t count);

/* ---- the CDN ------------------------------------------------------------ */

/*
 * A 401 or 403 of the CDN (S3 refusing the signature or the keys) is
 * -EKEYREJECTED from every call below, apart from the API's -EACCES: a new
 * login would not help. Each call hands that refusal's reason to its own
 * caller: why (may be NULL when why_cap is 0) receives "HTTP 403:
 * SignatureDoesNotMatch: ..." (printable ASCII, cut to why_cap) on
 * -EKEYREJECTED and "" on any other result, so concurrent calls never see
 * each other's. The refusal is logged here at debug only: the caller says
 * it once, with its context. Other failures are logged as every call's
 * are (at debug on a thread made quiet by fetch_quiet).
 */
#define FETCH_CDN_WHY_MAX 256 /* room for any reason a call gives */

/*
 * Reads len bytes at off of the object at url into buf (Range request).
 * A 206 must carry a matching Content-Range; a 200 (range ignored) is
 * handled by skipping to off. *ret_len may be short only at the object's
 * end; *ret_total (may be NULL) receives the object's size, UINT64_MAX when
 * the answer does not tell it. A range that starts at or past the end (416)
 * reads 0 bytes. A short body is retried as a transient failure.
 */
int fetch_cdn_range(struct fetch *f, const char *url, const struct fetch_s3 *s3, uint64_t off,
		    size_t len, uint8_t *buf, size_t *ret_len, uint64_t *ret_total, char *why,
		    size_t why_cap);
/*
 * fetch_cdn_range, the bytes handed to sink as they arrive instead of
 * copied into a buffer. A retry after a broken transfer gives sink only
 * the bytes it has not had yet: sink sees each byte of the range once, in
 * order, whatever the attempts. What sink returns is not logged here.
 */
int fetch_cdn_range_stream(struct fetch *f, const char *url, const struct fetch_s3 *s3,
			   uint64_t off, size_t len, fetch_write_fn sink, void *arg,
			   size_t *ret_len, char *why, size_t why_cap);
/* Size of the object at url (HEAD, or a one-byte range; a refused HEAD's
 * reason comes from a one-byte GET, since a HEAD answer has no body). */
int fetch_cdn_size(struct fetch *f, const char *url, const struct fetch_s3 *s3, uint64_t *ret_size,
		   char *why, size_t why_cap);
/* PUTs size bytes read from rd to url (plain PUT, or S3 with s3 keys).
 * Its deadline is the call's timeout plus 1 s per 128 KiB; a stall fails
 * sooner. rd must give exactly size bytes. */
int fetch_cdn_put(struct fetch *f, const char *url, const struct fetch_s3 *s3, fetch_read_fn rd,
		  void *ctx, uint64_t size, char *why, size_t why_cap);

/* ---- the Docker Engine API ---------------------------------------------- */

/*
 * POST /images/load on the Unix socket, the archive streamed from rd
 * (chunked). Reads every line of the answer: an "error" or "errorDetail"
 * line fails the load with -EIO and *ret_message (malloc()ed, may be NULL)
 * holding Docker's words. *ret_loaded (may be NULL) receives the
 * malloc()ed "Loaded image: ..." lines joined with newlines.
 * ret_message, when not NULL, is always written: NULL unless Docker said
 * why the load failed.
 */
int fetch_docker_load(struct fetch *f, const char *socket_path, fetch_read_fn rd, void *ctx,
		      char **ret_loaded, char **ret_message);
/* GET /images/{ref}/json: 0 present, -ENOENT absent. */
int fetch_docker_image_exists(struct fetch *f, const char *socket_path, const char *ref);

#endif
