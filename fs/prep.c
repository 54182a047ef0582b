/*
 * prep.c - one file version made ready to read (see prep.h).
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "crypto/crypto.h"
#include "fs/check.h"
#include "fs/log.h"
#include "fs/msg.h"
#include "fs/names.h"
#include "fs/prep.h"

#define PREP_HASH_CHUNK (1024 * 1024) /* chunks of a whole-file check's own list */

int prep_reader_errno(int r)
{
	switch (r) {
	case 0:
	case -EACCES:
	case -ENOENT:
	case -ETIMEDOUT:
	case -ENOMEM:
	case -EKEYREJECTED: /* the CDN refused: not a login matter (fetch.h) */
		return r;
	default:
		return -EIO;
	}
}

int prep_big_url(const struct prep_env *env, const char *name, char **ret_url,
		 const struct fetch_s3 **ret_s3, char **ret_msg)
{
	char *ef, *en, *url = NULL;
	const char *base = NULL;
	int r;

	r = env->keys->ops->cdn(env->keys, &base, ret_s3);
	if (r < 0) {
		msg_set(ret_msg, "no CDN address: cdn_url is not set and cdn.yaml is not known "
				 "(not logged in)");
		return -EACCES;
	}
	ef = names_url_escape(env->c->folder);
	en = names_url_escape(name);
	if (ef && en && asprintf(&url, "%s/%s/%s.big", base, ef, en) < 0)
		url = NULL;
	free(ef);
	free(en);
	*ret_url = url;
	return url ? 0 : -ENOMEM;
}

/* Reads [off, off + len) of pf's ciphertext stream: its prefix, then the big part. */
static int prep_read_stream(const struct prep_env *env, const struct prep_file *pf, uint64_t off,
			    size_t len, uint8_t *buf, struct prep_counts *counts, char **ret_msg)
{
	size_t n = pf->prefix_len, k = 0;
	int r;

	if (off < n) {
		k = (size_t)(n - off) < len ? (size_t)(n - off) : len;
		memcpy(buf, pf->prefix + off, k);
	}
	if (k == len)
		return 0;
	r = src_read(env->src, &pf->blob, off + k - n, len - k, buf + k, ret_msg);
	counts->fetches++;
	if (r < 0)
		counts->fetch_errors++;
	else
		counts->fetch_bytes += len - k;
	return r;
}

void prep_drop_stream(const struct prep_env *env, const struct prep_file *pf, uint64_t off,
		      size_t len)
{
	uint64_t n = pf->prefix_len;

	if (off + len <= n)
		return;
	if (off < n) {
		len -= (size_t)(n - off);
		off = n;
	}
	src_drop(env->src, &pf->blob, off - n, len);
}

/* The big part's URL and size, and the CDN's keys, into pf. */
static int prep_locate(const struct prep_env *env, const struct catalog_entry *e,
		       struct prep_file *pf, char **ret_msg)
{
	const struct fetch_s3 *s3 = NULL;
	char *msg = NULL, *url;
	int r;

	r = prep_big_url(env, e->name, &url, &s3, ret_msg);
	if (r < 0)
		return r;
	/* A new preparation takes the CDN's current address. */
	free(pf->url);
	pf->url = url;
	pf->blob.url = pf->url;
	pf->blob.s3 = s3;
	pf->blob.size = e->big_size;
	pf->blob.cache_id = NULL;
	if (!pf->blob.size) {
		r = src_size(env->src, &pf->blob, &pf->blob.size, &msg);
		if (r < 0) {
			msg_set(ret_msg, "the size of its big part is unknown: %s", msg_or(msg, r));
			free(msg);
			return prep_reader_errno(r);
		}
	}
	return 0;
}

/*
 * Names the big part's blocks in cache_dir. Not by URL, so that the cache
 * still serves when the CDN's address changes or it is down; the format's
 * mark (format 1's small part, whose IV is random; format 2's file_id)
 * makes every publication's name new.
 */
static void prep_cache_id(const struct prep_env *env, const struct catalog_entry *e,
			  struct prep_file *pf, const void *mark, size_t mark_len)
{
	struct crypto_sha256 *h = crypto_sha256_new();
	uint8_t d[32];
	char size[24];

	if (!h) {
		pf->blob.cache_id = NULL;
		return;
	}
	snprintf(size, sizeof(size), "%llu", (unsigned long long)pf->blob.size);
	crypto_sha256_update(h, env->c->folder, strlen(env->c->folder) + 1);
	crypto_sha256_update(h, e->name, strlen(e->name) + 1);
	crypto_sha256_update(h, size, strlen(size) + 1);
	crypto_sha256_update(h, mark, mark_len);
	crypto_sha256_final(h, d);
	crypto_sha256_free(h);
	crypto_hex(d, 16, pf->cache_id);
	pf->blob.cache_id = pf->cache_id;
}

/*
 * The key source's slow step (the TPM's unwrap) takes as long as the
 * head's CDN read; each runs in its own thread at open, so that the first
 * byte waits for the slower only.
 */
struct prep_unlock {
	struct keys *k;
	const struct format_ops *fmt;
	struct format_key *fk;
	char *msg;
	int r;
};

static void *prep_unlock_main(void *arg)
{
	struct prep_unlock *u = arg;

	u->r = u->fmt->key_unlock(u->k, u->fk, &u->msg);
	return NULL;
}

/*
 * A format without tags, no chunk hashes from the API, a sha256 in the
 * catalog (a legacy resource, docs/trust.md section 4): checked whole
 * before its first byte is served (check.h); the list of its chunks that
 * the check yields then checks every later read, from the CDN or
 * cache_dir, against the bytes that were checked whole.
 */
static int prep_check_whole(const struct prep_env *env, const struct catalog_entry *e,
			    struct prep_file *pf, struct prep_counts *counts, char **ret_msg)
{
	struct src_blob b = pf->blob;
	uint8_t *list = NULL;
	size_t count = 0;
	char *msg = NULL;
	int r;

	b.hashes = NULL;
	r = check_whole(env->src, &b, pf->ff, pf->prefix, pf->prefix_len, e->sha256,
			PREP_HASH_CHUNK, &list, &count, &msg);
	counts->fetches += count;
	counts->fetch_bytes += r == 0 ? b.size : 0;
	if (r < 0) {
		*ret_msg = msg;
		return r == -ENOMEM ? r : -EIO;
	}
	pf->hash_list = list;
	pf->hashes.id = pf->id;
	pf->hashes.chunk_size = PREP_HASH_CHUNK;
	pf->hashes.sha256 = pf->hash_list;
	pf->hashes.count = count;
	pf->blob.hashes = &pf->hashes;
	log_debug("%s: checked whole against the catalog's sha256", e->name);
	return 0;
}

/*
 * A format without tags: the API's chunk hashes for pf's big part, set on
 * its blob, so that the source stack checks every range (docs/trust.md
 * section 4). 1 when the API holds none (404), after which the caller
 * checks the file whole or marks it unchecked; a failure to get the list
 * is an error, not a file without one.
 */
static int prep_hashes(const struct prep_env *env, const struct catalog_entry *e,
		       struct prep_file *pf, char **ret_msg)
{
	struct keys *k = env->keys;
	uint8_t *list = NULL;
	uint32_t cs = 0;
	size_t count = 0;
	char *msg = NULL;
	int r;

	if (!k->ops->chunk_hashes)
		return 1;
	r = k->ops->chunk_hashes(k, e->name, &cs, &list, &count, &msg);
	if (r == -ENOENT) {
		free(msg);
		return 1;
	}
	if (r < 0) {
		/*
		 * Never a downgrade: whoever can break this one call (a reset
		 * connection, a 5xx) must not get the file served with a weaker
		 * check than its list gives. The open fails; the next one asks again.
		 */
		msg_set(ret_msg,
			"cannot get its chunk hashes from the API (%s); not served until they "
			"arrive: check the API's reachability and open it again",
			msg_or(msg, r));
		free(msg);
		return prep_reader_errno(r) == -ETIMEDOUT ? -ETIMEDOUT : -EIO;
	}
	if (!cs || count != (pf->blob.size + cs - 1) / cs) {
		msg_set(ret_msg,
			"the API's chunk-hash list (%zu chunks of %u bytes) does not cover its "
			"big part of %llu bytes",
			count, cs, (unsigned long long)pf->blob.size);
		free(list);
		return -EIO;
	}
	pf->hash_list = list;
	pf->hashes.id = pf->id;
	pf->hashes.chunk_size = cs;
	pf->hashes.sha256 = list;
	pf->hashes.count = count;
	pf->blob.hashes = &pf->hashes;
	return 0;
}

int prep_open(const struct prep_env *env, const struct catalog_entry *e, struct prep_file *pf,
	      struct prep_counts *counts, char **ret_msg)
{
	struct format_key fk = {0};
	struct prep_unlock unlock = {.k = env->keys, .fmt = pf->fmt, .fk = &fk};
	struct format_hint hint = {0};
	uint8_t *head = NULL;
	uint64_t head_off, e_size;
	size_t head_len;
	pthread_t unlocker;
	char *msg = NULL;
	int r, threaded = 0, whole = 0;

	if (!pf->fmt) {
		msg_set(ret_msg, "format %d is not one this build reads", e->format);
		return -EIO;
	}
	r = prep_locate(env, e, pf, ret_msg);
	if (r < 0)
		return r;
	r = pf->fmt->key_material(env->keys, e->name, &fk, ret_msg);
	if (r < 0)
		return r == -ENOKEY ? -EACCES : prep_reader_errno(r);
	prep_cache_id(env, e, pf, fk.mark, fk.mark_len);
	if (pf->fmt->chunk_hashes) {
		whole = prep_hashes(env, e, pf, ret_msg);
		if (whole < 0) {
			r = whole;
			goto out;
		}
	}
	/* The prefix moves into pf: the stream reads need it. */
	pf->prefix = fk.prefix;
	pf->prefix_len = fk.prefix_len;
	fk.prefix = NULL;
	e_size = pf->prefix_len + pf->blob.size;
	hint.has_size = e->has_size;
	hint.size = e->size;
	hint.prefix_len = pf->prefix_len;
	hint.file_id = fk.file_id[0] ? fk.file_id : NULL;
	pf->fmt->head(e_size, &hint, &head_off, &head_len);
	head = head_len ? malloc(head_len) : NULL;
	if (head_len && !head) {
		r = -ENOMEM;
		goto out;
	}
	threaded = pthread_create(&unlocker, NULL, prep_unlock_main, &unlock) == 0;
	if (!threaded)
		prep_unlock_main(&unlock);
	/* A head that fails a check is read once more, as chunks are (store.c's fill). */
	for (int retried = 0;; retried = 1) {
		char *src_msg = NULL;

		r = head_len && head_off + head_len > e_size ? -EIO : 0;
		if (r == 0 && head_len)
			r = prep_read_stream(env, pf, head_off, head_len, head, counts, &src_msg);
		if (r < 0) {
			msg = msg_fmt("cannot read its header: %s", msg_or(src_msg, r));
			free(src_msg);
		} else {
			if (threaded) {
				pthread_join(unlocker, NULL);
				threaded = 0;
			}
			if (unlock.r < 0)
				break;
			r = pf->fmt->open(fk.key, head, e_size, &hint, &pf->ff, &msg);
		}
		if (r == 0 || retried || (r != -EBADMSG && r != -EPROTO))
			break;
		/* An event no caller sees: the open goes on. */
		log_warn("%s: %s; reading it again", e->name, msg_or(msg, r));
		free(msg);
		msg = NULL;
		prep_drop_stream(env, pf, head_off, head_len);
	}
	if (threaded)
		pthread_join(unlocker, NULL);
	if (r == 0 && unlock.r < 0) {
		r = unlock.r;
		msg = unlock.msg;
		unlock.msg = NULL;
	}
	if (r < 0) {
		*ret_msg = msg;
		msg = NULL;
		r = prep_reader_errno(r);
		goto out;
	}
	if (whole && e->has_sha256)
		r = prep_check_whole(env, e, pf, counts, ret_msg);
	else
		pf->unchecked = whole;
	if (r < 0)
		goto out;
	pf->size = pf->ff->size;
out:
	if (r < 0)
		prep_close(pf);
	free(unlock.msg);
	free(msg);
	free(head);
	format_key_clear(&fk);
	return r;
}

void prep_close(struct prep_file *pf)
{
	format_close(pf->ff);
	pf->ff = NULL;
	free(pf->hash_list);
	pf->hash_list = NULL;
	pf->blob.hashes = NULL;
	secmem_free(pf->prefix);
	pf->prefix = NULL;
	pf->prefix_len = 0;
	pf->unchecked = 0;
}

void prep_free(struct prep_file *pf)
{
	prep_close(pf);
	free(pf->url);
	pf->url = NULL;
}
