/*
 * keys.c - the read path's real key source (see keys.h): the API through
 * the session, the TPM through the device, the configuration.
 *
 * Format-2 key documents are kept in state_dir/keys, one file per folder,
 * name and device, so that a model read before still opens while the API
 * is out of reach. They are useless off this TPM. An answer of the API
 * that the key is gone (404: revoked, republished elsewhere) removes the
 * copy; only an API out of reach makes the copy serve.
 *
 * Format-1 small parts are kept the same way, in state_dir/small, as the
 * API returned them: encrypted to this user and hardware, useless without
 * the credentials (which the TPM seals). The same rules: a 404 removes
 * the copy, only an API out of reach makes it serve.
 *
 * No lock of its own: the session and the device guard themselves, and a
 * key document is replaced by rename.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "crypto/crypto.h"
#include "fs/atomic.h"
#include "fs/keys.h"
#include "fs/log.h"
#include "fs/msg.h"

#define KEYS_DOC_MAX (64 * 1024)  /* a kept key document, read back */
#define KEYS_DIR "keys"		  /* under state_dir */
#define KEYS_SMALL_DIR "small"	  /* under state_dir */
#define KEYS_SMALL_MAX (64 << 20) /* a kept small part, read back */

struct keys_real {
	struct keys k;
	const struct config *c;
	struct session *s;
	struct device *d;
};

int keys_resource_key(const struct config *c, struct device *d, uint8_t *key, char **ret_msg)
{
	char *secret = NULL;
	size_t len;
	int r;

	/* The TPM's copy outlives legacy_resource_secret_file, which may go once sealed. */
	r = d ? device_resource_secret(d, &secret, &len) : -ENOENT;
	if (r == 0) {
		f1_aes_key(secret, len, key);
		secmem_free(secret);
		return 0;
	}
	/*
	 * A sealed store that no longer unseals may hold a secret of its own:
	 * the documented default would then decrypt every format-1 file into
	 * garbage that no check catches (the chunk hashes cover ciphertext).
	 */
	if (r == -ENOKEY && !c->legacy_resource_secret_file) {
		*ret_msg = msg_fmt("format 1: the TPM's sealed store, which holds this device's "
				   "resource_secret, does not unseal (a PCR change?): log in again "
				   "(azaionctl login) to re-enrol, or set "
				   "legacy_resource_secret_file");
		return -EACCES;
	}
	if (r < 0 && r != -ENOENT && r != -ENOKEY)
		return r;
	return config_resource_key(c, key, ret_msg);
}

int keys_parse_doc(json_t *doc, char ret_file_id[2 * F2_FILE_ID_SIZE + 1], uint8_t *wrapped,
		   size_t cap, size_t *ret_len)
{
	const char *fid, *wk;
	size_t wlen;

	fid = json_string_value(json_object_get(doc, "file_id"));
	wk = json_string_value(json_object_get(doc, "wrapped_key"));
	if (!fid || !wk || !json_is_integer(json_object_get(doc, "format")) ||
	    json_integer_value(json_object_get(doc, "format")) != 2 ||
	    strlen(fid) != 2 * F2_FILE_ID_SIZE ||
	    strspn(fid, "0123456789abcdefABCDEF") != 2 * F2_FILE_ID_SIZE ||
	    crypto_b64_decode(wk, strlen(wk), wrapped, cap, &wlen) < 0 || wlen == 0)
		return -EBADMSG;
	memcpy(ret_file_id, fid, 2 * F2_FILE_ID_SIZE + 1);
	*ret_len = wlen;
	return 0;
}

/* state_dir/DIR/HASH.EXT, HASH of the folder, the name and (format 2) the device. */
static char *keys_kept_path(struct keys_real *k, const char *dir, const char *name,
			    const char *device, const char *ext)
{
	struct crypto_sha256 *h = crypto_sha256_new();
	char hex[33], *p = NULL;
	uint8_t d[32];

	if (!h)
		return NULL;
	crypto_sha256_update(h, k->c->folder, strlen(k->c->folder) + 1);
	crypto_sha256_update(h, name, strlen(name) + 1);
	if (device)
		crypto_sha256_update(h, device, strlen(device) + 1);
	crypto_sha256_final(h, d);
	crypto_sha256_free(h);
	crypto_hex(d, 16, hex);
	if (asprintf(&p, "%s/%s/%s.%s", k->c->state_dir, dir, hex, ext) < 0)
		return NULL;
	return p;
}

static char *keys_doc_path(struct keys_real *k, const char *name, const char *device)
{
	return keys_kept_path(k, KEYS_DIR, name, device, "json");
}

/*
 * The kept file at path, if it is a regular file of at most max bytes, in
 * locked memory as the API's answer is (secmem_free) when locked, else
 * malloc()ed.
 */
static int keys_read_file(const char *path, size_t max, int locked, uint8_t **ret, size_t *ret_len)
{
	struct stat sb;
	uint8_t *buf = NULL;
	size_t got = 0;
	ssize_t n;
	int fd, r = 0;

	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0)
		return -errno;
	if (fstat(fd, &sb) < 0 || !S_ISREG(sb.st_mode) || sb.st_size <= 0 ||
	    (size_t)sb.st_size > max) {
		r = -EINVAL;
		goto out;
	}
	buf = locked ? secmem_alloc((size_t)sb.st_size) : malloc((size_t)sb.st_size);
	if (!buf) {
		r = -ENOMEM;
		goto out;
	}
	while (got < (size_t)sb.st_size && (n = read(fd, buf + got, (size_t)sb.st_size - got)) > 0)
		got += (size_t)n;
	if (got != (size_t)sb.st_size) {
		r = -EIO;
		goto out;
	}
	*ret = buf;
	*ret_len = got;
	buf = NULL;
out:
	if (locked)
		secmem_free(buf);
	else
		free(buf);
	close(fd);
	return r;
}

/*
 * Whether the document kept at path is for the same file and device as
 * doc. The API wraps the key anew for every answer (RSA-OAEP is
 * randomised), and any of its wrappings serves the same.
 */
static int keys_doc_same(const char *path, json_t *doc)
{
	static const char *const fields[] = {"file_id", "device_id"};
	struct stat sb;
	json_t *kept;
	int same = 1;

	if (stat(path, &sb) < 0 || !S_ISREG(sb.st_mode) || sb.st_size > KEYS_DOC_MAX)
		return 0;
	kept = json_load_file(path, JSON_REJECT_DUPLICATES, NULL);
	if (!kept)
		return 0;
	for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++) {
		const char *a = json_string_value(json_object_get(kept, fields[i]));
		const char *b = json_string_value(json_object_get(doc, fields[i]));

		if (!a || !b || strcasecmp(a, b) != 0)
			same = 0;
	}
	if (!json_is_string(json_object_get(kept, "wrapped_key")))
		same = 0;
	json_decref(kept);
	return same;
}

static void keys_doc_save(struct keys_real *k, const char *name, const char *device, json_t *doc)
{
	char *path = keys_doc_path(k, name, device), *dir = NULL, *text = NULL;
	int r;

	if (!path || asprintf(&dir, "%s/%s", k->c->state_dir, KEYS_DIR) < 0)
		goto out;
	text = json_dumps(doc, JSON_COMPACT);
	if (!text || (mkdir(dir, 0700) < 0 && errno != EEXIST))
		goto out;
	/* Every open brings the document: an fsync per open would hold up each first read. */
	if (keys_doc_same(path, doc))
		goto out;
	r = atomic_write_file(path, 0600, text, strlen(text), NULL, NULL);
	if (r < 0)
		log_warn("%s: cannot keep its key document in %s: %s", name, dir, strerror(-r));
out:
	free(text);
	free(dir);
	free(path);
}

static json_t *keys_doc_load(struct keys_real *k, const char *name, const char *device)
{
	char *path = keys_doc_path(k, name, device);
	json_t *doc = NULL;
	struct stat sb;

	if (path && stat(path, &sb) == 0 && S_ISREG(sb.st_mode) && sb.st_size <= KEYS_DOC_MAX)
		doc = json_load_file(path, JSON_REJECT_DUPLICATES, NULL);
	free(path);
	return doc;
}

static void keys_doc_forget(struct keys_real *k, const char *name, const char *device)
{
	char *path = keys_doc_path(k, name, device);

	if (path && unlink(path) == 0)
		log_info("%s: the API no longer gives its key; the kept copy is removed", name);
	free(path);
}

static int real_resource_key(struct keys *kk, uint8_t *key, char **ret_msg)
{
	struct keys_real *k = (struct keys_real *)kk;

	/* At each use: a re-enrolment (which seals the secret again) counts at once. */
	return keys_resource_key(k->c, k->d, key, ret_msg);
}

static int real_cdn(struct keys *kk, const char **ret_url, const struct fetch_s3 **ret_s3)
{
	struct keys_real *k = (struct keys_real *)kk;
	struct session_cdn cdn;
	int r = session_cdn(k->s, &cdn);

	if (r < 0)
		return r;
	*ret_url = cdn.url;
	*ret_s3 = cdn.s3;
	return 0;
}

/*
 * Keeps what the API returned for a format-1 file (ext "small": its small
 * part; "hashes": its chunk-hash list) unless the same is kept.
 */
static void keys_small_save(struct keys_real *k, const char *name, const char *ext,
			    const uint8_t *data, size_t len)
{
	char *path = keys_kept_path(k, KEYS_SMALL_DIR, name, NULL, ext), *dir = NULL;
	uint8_t *kept = NULL;
	size_t kept_len = 0;
	int r;

	if (!path || asprintf(&dir, "%s/%s", k->c->state_dir, KEYS_SMALL_DIR) < 0)
		goto out;
	/* Every open brings it: an fsync per open would hold up each first read. */
	if (keys_read_file(path, KEYS_SMALL_MAX, 1, &kept, &kept_len) == 0 && kept_len == len &&
	    memcmp(kept, data, len) == 0)
		goto out;
	r = mkdir(dir, 0700) < 0 && errno != EEXIST ? -errno : 0;
	if (r == 0)
		r = atomic_write_file(path, 0600, data, len, NULL, NULL);
	if (r < 0)
		log_warn("%s: cannot keep its %s in %s: %s", name,
			 strcmp(ext, "small") == 0 ? "small part" : "chunk hashes", dir,
			 strerror(-r));
out:
	secmem_free(kept);
	free(dir);
	free(path);
}

static int real_small_part(struct keys *kk, const char *name, uint8_t **ret, size_t *ret_len,
			   char **ret_msg)
{
	struct keys_real *k = (struct keys_real *)kk;
	char *small_name = NULL, *path = NULL, *msg = NULL;
	int r;

	if (asprintf(&small_name, "%s.small", name) < 0)
		return -ENOMEM;
	/* The failed call's words go up with the message, for the edge to log once. */
	r = session_get_resource(k->s, k->c->folder, small_name, ret, ret_len, &msg);
	free(small_name);
	path = keys_kept_path(k, KEYS_SMALL_DIR, name, NULL, "small");
	if (r == 0 && path)
		keys_small_save(k, name, "small", *ret, *ret_len);
	if (r == -ENOENT && path && unlink(path) == 0)
		log_info("%s: the API no longer gives its small part; the kept copy is removed",
			 name);
	/* Only an API out of reach: a refusal or a 404 is its answer. */
	if (r < 0 && r != -ENOENT && r != -EACCES && r != -ENOKEY && path &&
	    keys_read_file(path, KEYS_SMALL_MAX, 1, ret, ret_len) == 0) {
		log_info("%s: the API is out of reach (%s): using its small part kept in "
			 "state_dir",
			 name, log_strerror(r));
		r = 0;
	}
	free(path);
	if (r == -ENOKEY)
		*ret_msg = msg_fmt("not logged in (no credentials): its small part is out of "
				   "reach");
	else if (r < 0)
		*ret_msg = msg_fmt("cannot get its small part: %s", msg ? msg : log_strerror(r));
	free(msg);
	return r;
}

static int real_key_doc(struct keys *kk, const char *name, struct keys_doc *ret, char **ret_msg)
{
	struct keys_real *k = (struct keys_real *)kk;
	struct keys_doc kd = {0};
	json_t *doc = NULL;
	char id[160];
	int r;

	r = k->d ? device_id(k->d, id, sizeof(id)) : -ENODEV;
	if (r < 0) {
		*ret_msg = msg_fmt("format 2 needs an enrolled TPM device, and this one is not");
		return -EACCES;
	}
	r = session_device_key(k->s, k->c->folder, name, id, &doc);
	if (r == -ENOENT)
		keys_doc_forget(k, name, id);
	if (r < 0 && r != -ENOENT && r != -EACCES) {
		doc = keys_doc_load(k, name, id);
		if (doc) {
			log_info("%s: the API is out of reach (%s): using its key document kept "
				 "in state_dir",
				 name, log_strerror(r));
			kd.kept = 1;
			r = 0;
		}
	}
	if (r < 0) {
		*ret_msg = msg_fmt("cannot get its key for device %s: %s", id, log_strerror(r));
		return r;
	}
	if (keys_parse_doc(doc, kd.file_id, kd.wrapped, sizeof(kd.wrapped), &kd.wrapped_len) < 0) {
		*ret_msg = msg_fmt("the %s key document is malformed", kd.kept ? "kept" : "API's");
		r = -EBADMSG;
		goto out;
	}
	if (!kd.kept)
		keys_doc_save(k, name, id, doc);
	*ret = kd;
out:
	json_decref(doc);
	return r;
}

static int real_chunk_hashes(struct keys *kk, const char *name, uint32_t *ret_chunk_size,
			     uint8_t **ret_sha256, size_t *ret_count, char **ret_msg)
{
	struct keys_real *k = (struct keys_real *)kk;
	char *path = keys_kept_path(k, KEYS_SMALL_DIR, name, NULL, "hashes");
	uint8_t *buf = NULL;
	size_t len = 0;
	int r;

	r = session_chunk_hashes(k->s, k->c->folder, name, ret_chunk_size, ret_sha256, ret_count);
	/*
	 * Kept beside the small part, as 4 bytes of chunk size (little-endian)
	 * and the hashes: without them a format-1 file is not served at all.
	 */
	if (r == 0 && path && *ret_count <= (KEYS_SMALL_MAX - 4) / 32) {
		buf = malloc(4 + *ret_count * 32);
		if (buf) {
			for (int i = 0; i < 4; i++)
				buf[i] = (uint8_t)(*ret_chunk_size >> (8 * i));
			memcpy(buf + 4, *ret_sha256, *ret_count * 32);
			keys_small_save(k, name, "hashes", buf, 4 + *ret_count * 32);
			free(buf);
			buf = NULL;
		}
	}
	if (r == -ENOENT && path)
		unlink(path);
	if (r < 0 && r != -ENOENT && r != -EACCES && r != -ENOKEY && path &&
	    keys_read_file(path, KEYS_SMALL_MAX, 0, &buf, &len) == 0 && len > 4 &&
	    (len - 4) % 32 == 0) {
		uint8_t *list = malloc(len - 4);

		if (list) {
			*ret_chunk_size = (uint32_t)buf[0] | (uint32_t)buf[1] << 8 |
					  (uint32_t)buf[2] << 16 | (uint32_t)buf[3] << 24;
			memcpy(list, buf + 4, len - 4);
			*ret_sha256 = list;
			*ret_count = (len - 4) / 32;
			log_info("%s: the API is out of reach (%s): using its chunk hashes kept in "
				 "state_dir",
				 name, log_strerror(r));
			r = 0;
		}
	}
	free(buf);
	free(path);
	if (r < 0 && r != -ENOENT)
		*ret_msg = msg_fmt("cannot get its chunk hashes from the API: %s", log_strerror(r));
	return r;
}

static int real_unwrap(struct keys *kk, const struct keys_doc *doc, uint8_t *key, char **ret_msg)
{
	struct keys_real *k = (struct keys_real *)kk;
	size_t klen = 0;
	char *msg = NULL;
	int r;

	r = k->d ? device_unwrap(k->d, doc->wrapped, doc->wrapped_len, key, CRYPTO_KEY_SIZE, &klen,
				 &msg)
		 : -ENODEV;
	if (r == 0 && klen != CRYPTO_KEY_SIZE) {
		*ret_msg = msg_fmt("the unwrapped key has %zu bytes", klen);
		return -EIO;
	}
	if (r < 0)
		*ret_msg = msg_fmt("the TPM cannot unwrap its key: %s", msg_or(msg, r));
	free(msg);
	return r;
}

static void real_free(struct keys *kk)
{
	struct keys_real *k = (struct keys_real *)kk;

	free(k);
}

static const struct keys_ops real_ops = {
	.resource_key = real_resource_key,
	.cdn = real_cdn,
	.small_part = real_small_part,
	.key_doc = real_key_doc,
	.chunk_hashes = real_chunk_hashes,
	.unwrap = real_unwrap,
	.free = real_free,
};

int keys_new(const struct config *c, struct session *s, struct device *d, struct keys **ret,
	     char **ret_msg)
{
	struct keys_real *k = NULL;
	uint8_t *probe = secmem_alloc(CRYPTO_KEY_SIZE);
	char *msg = NULL;
	int r;

	if (!probe)
		return -ENOMEM;
	/*
	 * Once at start, so that an unreadable legacy_resource_secret_file
	 * stops it; a sealed store that does not unseal only stops format 1
	 * (each open asks again, and says why).
	 */
	r = keys_resource_key(c, d, probe, &msg);
	secmem_free(probe);
	if (r == -EACCES) {
		log_warn("%s", msg);
		free(msg);
	} else if (r < 0) {
		*ret_msg = msg;
		return r;
	}
	k = calloc(1, sizeof(*k));
	if (!k)
		return -ENOMEM;
	k->k.ops = &real_ops;
	k->c = c;
	k->s = s;
	k->d = d;
	*ret = &k->k;
	return 0;
}

void keys_free(struct keys *k)
{
	if (k)
		k->ops->free(k);
}
