/*
 * publish.h - turns a plaintext model into its small and big parts
 * (docs/formats.md) as a stream, and sends them to a local folder or to the CDN
 * and the Resource API (big part first, then the small part or the key).
 * Memory stays bounded whatever the model's size. Used by `azaionctl
 * publish` and by the side endpoint's F3 upload.
 */
#ifndef AZAION_PUBLISH_H
#define AZAION_PUBLISH_H

#include <stdint.h>

#include "fetch/fetch.h"
#include "fs/session.h"

struct publish_req {
	const char *name; /* resource name, no '/' */
	const char *folder;
	int format;		     /* 1 or 2 */
	unsigned chunk_shift;	     /* format 2; 0: the default */
	const uint8_t *resource_key; /* format 1: aes(resource_secret) */
	fetch_read_fn src;	     /* the plaintext, exactly size bytes */
	void *src_ctx;
	uint64_t size;
	/* Called as the big part is written; may be NULL. */
	void (*progress)(void *ctx, uint64_t done, uint64_t total);
	void *progress_ctx;
};

/*
 * Where the parts go: a folder (out_dir), or the CDN and the API through a
 * logged-in session (the CDN address and the S3 uploader keys follow from
 * the configuration and cdn.yaml, session.h).
 */
struct publish_target {
	const char *out_dir;
	struct fetch *fetch;
	struct session *session;
};

struct publish_result {
	uint64_t size; /* plaintext */
	uint64_t big_size;
	uint64_t small_size; /* format 1 */
	char sha256[65];     /* of the plaintext, hex */
	char file_id[33];    /* format 2, hex */
};

/*
 * Publishes one model. Writes <name>.big, <name>.hashes and <name>.small
 * (format 1: the chunk-hash list as the API serves it, the raw small part)
 * or <name>.key (format 2: the key registration body, mode 0600) in
 * out_dir; or PUTs the big part to {cdn_url}/{folder}/{name}.big and then
 * registers the chunk hashes and uploads the small part (format 1,
 * docs/trust.md section 4), or registers the key. A failure at any step
 * stops there, so a small part never exists without its list.
 * On error *ret_msg gets a malloc()ed line saying what failed, with the
 * failed call's words; the failure is not logged here: the caller says it.
 */
int publish_model(const struct publish_req *req, const struct publish_target *t,
		  struct publish_result *ret, char **ret_msg);

#endif
