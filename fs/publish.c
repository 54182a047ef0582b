/*
 * publish.c - the publishing path: plaintext in, small and big parts out,
 * as a pull stream so that the big part can go straight into a PUT (or a
 * file) with memory bounded by one buffer of plaintext and one of output,
 * whatever the model's size.
 *
 * Format 1's small part is the first n bytes of E = CBC(resource_key, P)
 * and n depends only on |E|, which the plaintext size fixes, so the stream
 * diverts those bytes into a buffer and emits the rest as the big part.
 * CBC has no tag, so the SHA-256 of every 1 MiB of that big part is taken
 * as its bytes go by and registered before the small part (docs/trust.md
 * section 4): 32 bytes of memory per MiB, and no second pass.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "crypto/crypto.h"
#include "fs/atomic.h"
#include "fs/format.h"
#include "fs/log.h"
#include "fs/names.h"
#include "fs/publish.h"

#define PUB_HASH_CHUNK (1024u * 1024)

/* ---- format-1 chunk hashes, taken as the big part goes by -------------------- */

struct pub_chunks {
	struct crypto_sha256 *sha;
	uint8_t *digests; /* count * 32 */
	size_t count, want;
	size_t fill; /* bytes of the current chunk hashed so far */
};

/* -EFBIG when a big part of big_size bytes needs more hashes than a list may hold. */
static int pub_chunks_init(struct pub_chunks *h, uint64_t big_size)
{
	uint64_t want = (big_size + PUB_HASH_CHUNK - 1) / PUB_HASH_CHUNK;

	if (want > SIZE_MAX / 32 || !fetch_chunk_hashes_valid(PUB_HASH_CHUNK, (size_t)want))
		return -EFBIG;
	h->want = (size_t)want;
	h->sha = crypto_sha256_new();
	h->digests = malloc(h->want ? h->want * 32 : 1);
	return h->sha && h->digests ? 0 : -ENOMEM;
}

static void pub_chunks_update(struct pub_chunks *h, const uint8_t *p, size_t n)
{
	while (n > 0 && h->count < h->want) {
		size_t take = PUB_HASH_CHUNK - h->fill;

		if (take > n)
			take = n;
		crypto_sha256_update(h->sha, p, take);
		h->fill += take;
		p += take;
		n -= take;
		if (h->fill == PUB_HASH_CHUNK) {
			crypto_sha256_final(h->sha, h->digests + 32 * h->count++);
			crypto_sha256_reset(h->sha);
			h->fill = 0;
		}
	}
}

/* Closes the last, shorter chunk; 0 when every chunk has its hash. */
static int pub_chunks_final(struct pub_chunks *h)
{
	if (h->fill && h->count < h->want) {
		crypto_sha256_final(h->sha, h->digests + 32 * h->count++);
		h->fill = 0;
	}
	return h->count == h->want ? 0 : -EIO;
}

static void pub_chunks_free(struct pub_chunks *h)
{
	crypto_sha256_free(h->sha);
	free(h->digests);
}

/* fetch_read_fn writing the list as the API serves it, one entry a line. */
struct pub_chunks_json {
	const struct pub_chunks *h;
	int head, tail; /* written */
	size_t next;	/* entry */
};

static ssize_t pub_chunks_json_read(void *ctx, uint8_t *buf, size_t cap)
{
	struct pub_chunks_json *j = ctx;
	size_t n = 0;

	if (cap < 128)
		return -EINVAL;
	if (!j->head) {
		n = (size_t)snprintf((char *)buf, cap, "{\"chunk_size\": %u, \"sha256\": [",
				     PUB_HASH_CHUNK);
		j->head = 1;
	}
	/* ,\n"<64 hex>" and crypto_hex's NUL */
	while (j->next < j->h->count && cap - n >= 70) {
		if (j->next)
			buf[n++] = ',';
		buf[n++] = '\n';
		buf[n++] = '"';
		crypto_hex(j->h->digests + 32 * j->next, 32, (char *)buf + n);
		n += 64;
		buf[n++] = '"';
		j->next++;
	}
	if (j->next == j->h->count && !j->tail && cap - n >= 4) {
		if (j->next)
			buf[n++] = '\n';
		memcpy(buf + n, "]}\n", 3);
		n += 3;
		j->tail = 1;
	}
	return (ssize_t)n;
}

struct pub_stream {
	const struct publish_req *req;
	uint8_t *plain; /* secmem: one step of plaintext */
	size_t plain_cap;
	uint8_t *out; /* pending big-part bytes */
	size_t out_cap, out_len, out_pos;
	uint64_t src_done;
	uint64_t emitted;
	uint64_t big_size;
	struct crypto_sha256 *sha;
	int done;
	int err;
	char *msg;
	const struct format_ops *fmt;
	struct format_enc *enc;
	struct pub_chunks chunks; /* a format without tags (format 1) */
	uint8_t *small;		  /* secmem: the stream's first bytes (format 1's small part) */
	size_t small_len, small_want;
	uint8_t *key; /* secmem, CRYPTO_KEY_SIZE: a key the format drew (format 2) */
	char file_id[33];
};

static void pub_fail(struct pub_stream *s, int err, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static void pub_fail(struct pub_stream *s, int err, const char *fmt, ...)
{
	va_list ap;

	if (s->err)
		return;
	s->err = err;
	va_start(ap, fmt);
	if (vasprintf(&s->msg, fmt, ap) < 0)
		s->msg = NULL;
	va_end(ap);
}

/* Reads exactly n plaintext bytes (n never passes the declared size). */
static int pub_read_plain(struct pub_stream *s, size_t n)
{
	size_t got = 0;

	while (got < n) {
		ssize_t r = s->req->src(s->req->src_ctx, s->plain + got, n - got);

		if (r < 0) {
			pub_fail(s, (int)r, "reading the model: %s", strerror((int)-r));
			return (int)r;
		}
		if (r == 0) {
			pub_fail(s, -EIO, "the model ended after %llu of %llu bytes",
				 (unsigned long long)(s->src_done + got),
				 (unsigned long long)s->req->size);
			return -EIO;
		}
		got += (size_t)r;
	}
	crypto_sha256_update(s->sha, s->plain, n);
	s->src_done += n;
	return 0;
}

/* The next update of the format's stream, minus what goes to the small part. */
static int pub_refill(struct pub_stream *s)
{
	size_t cap, len = 0, take, n = s->fmt->enc_next(s->enc, &cap);
	int r;

	if (n > s->plain_cap || cap > s->out_cap) {
		pub_fail(s, -EIO, "the encryptor asks for more room than it said");
		return -EIO;
	}
	if (n) {
		r = pub_read_plain(s, n);
		if (r < 0)
			return r;
	}
	r = s->fmt->enc_update(s->enc, s->plain, n, s->out, &len);
	crypto_wipe(s->plain, n);
	if (r < 0) {
		pub_fail(s, r, "encryption failed at %llu bytes", (unsigned long long)s->src_done);
		return r;
	}
	s->done = s->fmt->enc_done(s->enc);
	take = s->small_want - s->small_len;
	if (take > len)
		take = len;
	memcpy(s->small + s->small_len, s->out, take);
	s->small_len += take;
	s->out_pos = take;
	s->out_len = len;
	return 0;
}

/* fetch_read_fn over the big part. */
static ssize_t pub_big_read(void *ctx, uint8_t *buf, size_t cap)
{
	struct pub_stream *s = ctx;
	size_t n;

	if (s->err)
		return s->err;
	while (s->out_pos == s->out_len) {
		int r;

		if (s->done)
			return 0;
		r = pub_refill(s);
		if (r < 0)
			return r;
	}
	n = s->out_len - s->out_pos;
	if (n > cap)
		n = cap;
	memcpy(buf, s->out + s->out_pos, n);
	if (s->fmt->chunk_hashes)
		pub_chunks_update(&s->chunks, buf, n);
	s->out_pos += n;
	s->emitted += n;
	if (s->req->progress)
		s->req->progress(s->req->progress_ctx, s->emitted, s->big_size);
	return (ssize_t)n;
}

static void pub_stream_free(struct pub_stream *s)
{
	if (s->fmt)
		s->fmt->enc_free(s->enc);
	pub_chunks_free(&s->chunks);
	crypto_sha256_free(s->sha);
	secmem_free(s->plain);
	secmem_free(s->small);
	secmem_free(s->key);
	free(s->out);
	free(s->msg);
}

static int pub_stream_init(struct pub_stream *s, const struct publish_req *req)
{
	size_t out_cap;
	int r;

	memset(s, 0, sizeof(*s));
	s->req = req;
	s->fmt = format_get(req->format);
	s->sha = crypto_sha256_new();
	if (!s->sha || !s->fmt)
		return s->fmt ? -ENOMEM : -EINVAL;
	r = s->fmt->enc_new(req->resource_key, req->size, req->chunk_shift, &s->enc, &s->key,
			    s->file_id);
	if (r < 0)
		return r;
	s->small_want = (size_t)s->fmt->small_size(req->size);
	s->big_size = s->fmt->enc_size(s->enc) - s->small_want;
	s->small = secmem_alloc(s->small_want ? s->small_want : 1);
	if (!s->small)
		return -errno;
	if (s->fmt->chunk_hashes) {
		r = pub_chunks_init(&s->chunks, s->big_size);
		if (r == -EFBIG)
			pub_fail(s, r,
				 "the big part would be larger than 1 TiB, more than its "
				 "chunk-hash list may cover");
		if (r < 0)
			return r;
	}
	/* Every update's plaintext and output fit in the room the first one names. */
	s->fmt->enc_next(s->enc, &out_cap);
	s->plain_cap = out_cap;
	s->out_cap = out_cap;
	s->plain = secmem_alloc(s->plain_cap);
	s->out = malloc(s->out_cap);
	if (!s->plain || !s->out)
		return -ENOMEM;
	return 0;
}

/* Writes dir/name+suffix whole, through a temporary renamed into place (atomic.h). */
static int pub_write_file(const char *dir, const char *name, const char *suffix, mode_t mode,
			  fetch_read_fn rd, void *ctx, const void *data, size_t len)
{
	char path[4096];

	snprintf(path, sizeof(path), "%s/%s%s", dir, name, suffix);
	return atomic_write_file(path, mode, data, len, rd, ctx);
}

/*
 * Format 1: the chunk hashes of the big part just sent, registered (or
 * written as <name>.hashes) before the small part, so that a small part
 * never exists without its list (docs/trust.md section 4).
 */
static int pub_register_chunks(struct pub_stream *s, const struct publish_req *req,
			       const struct publish_target *t)
{
	struct pub_chunks_json j = {.h = &s->chunks};
	int r;

	r = pub_chunks_final(&s->chunks);
	if (r < 0) {
		pub_fail(s, r, "the chunk hashes cover %zu of %zu chunks of the big part",
			 s->chunks.count, s->chunks.want);
		return r;
	}
	if (t->out_dir) {
		r = pub_write_file(t->out_dir, req->name, ".hashes", 0644, pub_chunks_json_read, &j,
				   NULL, 0);
		if (r < 0)
			pub_fail(s, r, "writing %s/%s.hashes: %s", t->out_dir, req->name,
				 strerror(-r));
		return r;
	}
	r = session_register_chunk_hashes(t->session, req->folder, req->name, PUB_HASH_CHUNK,
					  s->chunks.digests, s->chunks.count);
	if (r < 0)
		pub_fail(s, r,
			 "registering the chunk hashes with the API failed: %s; the small part "
			 "was not uploaded, so the model is not published: publish it again",
			 log_strerror(r));
	return r;
}

static int pub_key_body(struct pub_stream *s, const struct publish_result *res, char **ret)
{
	char key_b64[64];
	int n;

	crypto_b64_encode(s->key, CRYPTO_KEY_SIZE, key_b64);
	n = asprintf(ret,
		     "{\"key\": \"%s\", \"size\": %llu, \"sha256\": \"%s\", "
		     "\"file_id\": \"%s\", \"big_size\": %llu}\n",
		     key_b64, (unsigned long long)res->size, res->sha256, res->file_id,
		     (unsigned long long)res->big_size);
	crypto_wipe(key_b64, sizeof(key_b64));
	return n < 0 ? -ENOMEM : 0;
}

int publish_model(const struct publish_req *req, const struct publish_target *t,
		  struct publish_result *ret, char **ret_msg)
{
	struct pub_stream s;
	struct publish_result res;
	uint8_t digest[32];
	char *body = NULL, *url = NULL, *escaped = NULL, *ef = NULL;
	int r, quiet;

	if (!names_valid(req->name)) {
		*ret_msg = strdup("the name must be 1 to 255 bytes, without '/', and not . or ..");
		return -EINVAL;
	}
	if (!req->folder || !names_valid(req->folder)) {
		*ret_msg =
			strdup("the folder must be 1 to 255 bytes, without '/', and not . or ..");
		return -EINVAL;
	}
	if (!format_get(req->format)) {
		*ret_msg = strdup("the format must be 1 or 2");
		return -EINVAL;
	}
	r = pub_stream_init(&s, req);
	if (r < 0) {
		pub_fail(&s, r, "cannot prepare the encryption: %s", strerror(-r));
		goto out;
	}
	memset(&res, 0, sizeof(res));
	res.size = req->size;
	res.big_size = s.big_size;
	res.small_size = s.small_want;
	memcpy(res.file_id, s.file_id, sizeof(res.file_id));

	/* The big part first: a small part or key must never name a missing one. */
	if (t->out_dir) {
		r = pub_write_file(t->out_dir, req->name, ".big", 0644, pub_big_read, &s, NULL, 0);
		if (r < 0) {
			pub_fail(&s, r, "writing %s/%s.big: %s", t->out_dir, req->name,
				 strerror(-r));
			goto out;
		}
	} else {
		char why[FETCH_CDN_WHY_MAX];
		struct session_cdn cdn;

		r = session_cdn_upload(t->session, &cdn);
		if (r < 0) {
			pub_fail(&s, r,
				 "no CDN to upload to: set cdn_url, or log in so that "
				 "cdn.yaml names one");
			goto out;
		}
		escaped = names_url_escape(req->name);
		ef = names_url_escape(req->folder);
		if (!escaped || !ef || asprintf(&url, "%s/%s/%s.big", cdn.url, ef, escaped) < 0) {
			url = NULL;
			r = -ENOMEM;
			pub_fail(&s, r, "out of memory");
			goto out;
		}
		/* Quiet: the message below carries the failed call's words (publish.h). */
		quiet = fetch_quiet(1);
		r = fetch_cdn_put(t->fetch, url, cdn.s3, pub_big_read, &s, s.big_size, why,
				  sizeof(why));
		fetch_quiet(quiet);
		if (r < 0) {
			pub_fail(&s, r, "uploading the big part to %s failed: %s%s%s%s", url,
				 log_strerror(r), *why ? " (the CDN says: " : "", why,
				 *why ? ")" : "");
			goto out;
		}
	}
	if (s.emitted != s.big_size) {
		r = -EIO;
		pub_fail(&s, r, "the big part came out at %llu bytes, not %llu",
			 (unsigned long long)s.emitted, (unsigned long long)s.big_size);
		goto out;
	}
	crypto_sha256_final(s.sha, digest);
	crypto_hex(digest, sizeof(digest), res.sha256);

	if (s.fmt->chunk_hashes) {
		r = pub_register_chunks(&s, req, t);
		if (r < 0)
			goto out;
	}
	/* A format with a small part sends it; one that drew a key registers that. */
	if (!s.key) {
		if (t->out_dir) {
			r = pub_write_file(t->out_dir, req->name, ".small", 0600, NULL, NULL,
					   s.small, s.small_len);
		} else {
			char file_name[300], size[24], big_size[24];
			const char *fields[] = {"size",	    size,     "sha256", res.sha256,
						"big_size", big_size, NULL};

			snprintf(file_name, sizeof(file_name), "%s.small", req->name);
			snprintf(size, sizeof(size), "%llu", (unsigned long long)res.size);
			snprintf(big_size, sizeof(big_size), "%llu",
				 (unsigned long long)res.big_size);
			r = session_upload(t->session, req->folder, file_name, s.small, s.small_len,
					   fields);
		}
		if (r < 0) {
			pub_fail(&s, r, "storing the small part failed: %s", log_strerror(r));
			goto out;
		}
	} else {
		char key_b64[64];

		if (t->out_dir) {
			r = pub_key_body(&s, &res, &body);
			if (r == 0)
				r = pub_write_file(t->out_dir, req->name, ".key", 0600, NULL, NULL,
						   body, strlen(body));
		} else {
			crypto_b64_encode(s.key, CRYPTO_KEY_SIZE, key_b64);
			r = session_register_key(t->session, req->folder, req->name, key_b64,
						 res.size, res.sha256, res.file_id, res.big_size);
			crypto_wipe(key_b64, sizeof(key_b64));
		}
		if (r < 0) {
			pub_fail(&s, r, "registering the content key failed: %s", log_strerror(r));
			goto out;
		}
	}
	*ret = res;
	r = 0;
out:
	if (r < 0 && ret_msg) {
		*ret_msg = s.msg;
		s.msg = NULL;
	}
	if (body) {
		crypto_wipe(body, strlen(body));
		free(body);
	}
	free(url);
	free(escaped);
	free(ef);
	pub_stream_free(&s);
	return r;
}
