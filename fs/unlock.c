/*
 * unlock.c - the Docker unlock workflow (see unlock.h): one run at a time
 * on its own thread, the archive decrypted piece by piece into locked
 * memory and handed to libcurl's upload to dockerd, never to a file.
 *
 * Format 1 is streamed with the range primitives: the padding (and so the
 * plaintext size, and most wrong keys) is checked first from the last two
 * blocks, then each step of ciphertext is decrypted with the block before
 * it. Format 2 is opened chunk by chunk, each tag checked before a byte of
 * it goes out; a failed check aborts the load, so dockerd never gets an
 * unauthenticated byte.
 *
 * Locking: u->lock guards state, error, bytes_*, images, running and
 * joinable; it is never held across I/O. u->start_lock serialises F4
 * calls (their Docker checks and the thread start). u->stop is atomic.
 * A run owns its struct unlock_run alone.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "crypto/crypto.h"
#include "fs/log.h"
#include "fs/unlock.h"

#define UNLOCK_STEP (1024 * 1024) /* archive bytes decrypted at a time (format 1) */
#define UNLOCK_ERR_MAX 512
#define UNLOCK_REF_MAX 512
#define UNLOCK_WRAPPED_MAX 1024
#define UNLOCK_FIELD_MAX 1024

struct unlock {
	const struct config *c;
	struct fetch *f;
	struct session *s;
	struct device *d;

	pthread_mutex_t start_lock;
	pthread_mutex_t lock;
	enum unlock_state state;
	char error[UNLOCK_ERR_MAX];
	uint64_t bytes_done, bytes_total;
	json_t *images; /* array of references found present */
	int running;
	int joinable;
	pthread_t thread;
	int stop;

	/* handed to the run: secmem, freed by it */
	char *email;
	char *password;
};

struct unlock_run {
	struct unlock *u;
	int fd;
	int format;
	uint64_t size; /* of the archive file */
	uint64_t consumed;
	uint8_t *key;	/* secmem */
	uint8_t *cbuf;	/* ciphertext: not secret */
	uint8_t *plain; /* secmem */
	size_t plain_cap, plain_len, plain_pos;
	int eof;
	char msg[UNLOCK_ERR_MAX]; /* the first cause of a failed read */
	/* format 1 */
	uint64_t plain_size, plain_emitted;
	uint8_t prev[CRYPTO_BLOCK];
	/* format 2 */
	struct f2_header hdr;
	uint64_t chunk;
};

static const char *const unlock_names[] = {
	[UNLOCK_IDLE] = "idle",
	[UNLOCK_AUTHENTICATING] = "authenticating",
	[UNLOCK_DOWNLOADING_KEY] = "downloading_key",
	[UNLOCK_DECRYPTING] = "decrypting",
	[UNLOCK_LOADING_IMAGES] = "loading_images",
	[UNLOCK_READY] = "ready",
	[UNLOCK_ERROR] = "error",
};

const char *unlock_state_name(enum unlock_state st)
{
	if ((unsigned)st >= sizeof(unlock_names) / sizeof(unlock_names[0]))
		return "error";
	return unlock_names[st];
}

static void unlock_set_state(struct unlock *u, enum unlock_state st)
{
	pthread_mutex_lock(&u->lock);
	u->state = st;
	pthread_mutex_unlock(&u->lock);
	log_info("unlock: %s", unlock_state_name(st));
}

static void unlock_fail(struct unlock *u, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
static void unlock_fail(struct unlock *u, const char *fmt, ...)
{
	char msg[UNLOCK_ERR_MAX];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	log_err("unlock failed: %s", msg);
	pthread_mutex_lock(&u->lock);
	u->state = UNLOCK_ERROR;
	memcpy(u->error, msg, sizeof(msg));
	pthread_mutex_unlock(&u->lock);
}

static void unlock_run_fail(struct unlock_run *run, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
static void unlock_run_fail(struct unlock_run *run, const char *fmt, ...)
{
	va_list ap;

	if (run->msg[0])
		return;
	va_start(ap, fmt);
	vsnprintf(run->msg, sizeof(run->msg), fmt, ap);
	va_end(ap);
}

/* An errno as a reader would want to see it in F5's "error". */
static const char *unlock_cause(int r)
{
	switch (r) {
	case -EACCES:
		return "the API refused the credentials";
	case -EHOSTUNREACH:
		return "the API is unreachable";
	case -ETIMEDOUT:
		return "the API did not answer in time";
	case -ENOENT:
		return "the API does not know it";
	case -ENOKEY:
		return "no credentials";
	default:
		return strerror(-r);
	}
}

int unlock_login(const struct config *c, struct fetch *f, struct session *s, struct device *d,
		 const char *email, const char *password)
{
	char *tok = NULL;
	time_t exp = 0;
	int r;

	if (!email || !password || !*email || !*password || strlen(email) > UNLOCK_FIELD_MAX ||
	    strlen(password) > UNLOCK_FIELD_MAX)
		return -EINVAL;
	r = fetch_api_login(f, c->api_url, email, password, &tok, &exp);
	if (r < 0) {
		log_warn("login to %s with the given credentials failed: %s", c->api_url,
			 strerror(-r));
		return r;
	}
	crypto_wipe(tok, strlen(tok));
	free(tok);
	r = session_set_credentials(s, email, password);
	if (r < 0)
		return r;
	/* "error" too: a login is how a device whose PCRs changed re-enrols. */
	if (d && strcmp(device_status(d, NULL, 0), "absent") != 0) {
		int e = device_enroll_if_needed(d);

		if (e < 0 && e != -EBUSY)
			log_warn("logged in, but enrolling the device failed: %s", strerror(-e));
	}
	return 0;
}

/* ---- Docker --------------------------------------------------------------- */

/* 0 when something accepts connections on the socket; a quick check, no retries. */
static int unlock_docker_ping(const char *path)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	int fd, r = 0;

	if (strlen(path) >= sizeof(sa.sun_path))
		return -ENAMETOOLONG;
	memcpy(sa.sun_path, path, strlen(path) + 1);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
		r = -errno;
	close(fd);
	return r;
}

/* "name:tag" of the i-th configured image; a name that has a tag or digest stays as is. */
static void unlock_ref(const struct config *c, const char *name, char *out, size_t cap)
{
	const char *slash = strrchr(name, '/');
	const char *last = slash ? slash + 1 : name;

	if (strchr(last, ':') || strchr(name, '@'))
		snprintf(out, cap, "%s", name);
	else
		snprintf(out, cap, "%s:%s", name, c->images_version);
}

/*
 * Which configured images dockerd has. 0 when all are there, -ENOENT
 * (the first missing one in missing) when some are not, another errno
 * when dockerd does not answer. *ret_present: the ones found.
 */
static int unlock_check_images(struct unlock *u, json_t **ret_present, char *missing, size_t cap)
{
	json_t *present = json_array();
	char ref[UNLOCK_REF_MAX];
	int r, result = 0;

	if (!present)
		return -ENOMEM;
	if (missing && cap)
		missing[0] = '\0';
	r = unlock_docker_ping(u->c->docker_socket);
	if (r < 0) {
		json_decref(present);
		return r;
	}
	for (char **p = u->c->images; p && *p; p++) {
		unlock_ref(u->c, *p, ref, sizeof(ref));
		r = fetch_docker_image_exists(u->f, u->c->docker_socket, ref);
		if (r == 0) {
			json_array_append_new(present, json_string(ref));
		} else if (r == -ENOENT) {
			if (result == 0 && missing)
				snprintf(missing, cap, "%s", ref);
			result = -ENOENT;
		} else {
			json_decref(present);
			return r;
		}
	}
	*ret_present = present;
	return result;
}

static void unlock_set_images(struct unlock *u, json_t *present)
{
	pthread_mutex_lock(&u->lock);
	json_decref(u->images);
	u->images = present;
	pthread_mutex_unlock(&u->lock);
}

/* ---- the archive as a stream of plaintext --------------------------------- */

static int unlock_read_full(struct unlock_run *run, uint8_t *buf, size_t n)
{
	size_t got = 0;

	while (got < n) {
		ssize_t k = read(run->fd, buf + got, n - got);

		if (k < 0 && errno == EINTR)
			continue;
		if (k < 0) {
			int e = errno;

			unlock_run_fail(run, "reading %s: %s", run->u->c->images_archive,
					strerror(e));
			return -e;
		}
		if (k == 0) {
			unlock_run_fail(run, "%s ended after %llu bytes: the archive is truncated",
					run->u->c->images_archive,
					(unsigned long long)(run->consumed + got));
			return -EIO;
		}
		got += (size_t)k;
	}
	return 0;
}

static void unlock_progress(struct unlock_run *run)
{
	pthread_mutex_lock(&run->u->lock);
	run->u->bytes_done = run->consumed;
	pthread_mutex_unlock(&run->u->lock);
}

/* The archive fully read: dockerd still has to finish the load. */
static void unlock_run_eof(struct unlock_run *run)
{
	run->eof = 1;
	unlock_progress(run);
	unlock_set_state(run->u, UNLOCK_LOADING_IMAGES);
}

static int unlock_fill_f1(struct unlock_run *run)
{
	uint64_t left = run->size - run->consumed;
	size_t want = left < UNLOCK_STEP ? (size_t)left : UNLOCK_STEP, n;
	int r;

	if (want == 0) {
		unlock_run_eof(run);
		return 0;
	}
	memcpy(run->cbuf, run->prev, CRYPTO_BLOCK);
	r = unlock_read_full(run, run->cbuf + CRYPTO_BLOCK, want);
	if (r < 0)
		return r;
	r = f1_decrypt_blocks(run->key, run->cbuf, want + CRYPTO_BLOCK, run->plain);
	if (r < 0) {
		unlock_run_fail(run, "decrypting the archive failed: %s", strerror(-r));
		return -EIO;
	}
	memcpy(run->prev, run->cbuf + want, CRYPTO_BLOCK);
	run->consumed += want;
	/* The padding, already checked, is cut off the last step. */
	n = run->plain_size - run->plain_emitted < want
		    ? (size_t)(run->plain_size - run->plain_emitted)
		    : want;
	run->plain_emitted += n;
	run->plain_len = n;
	run->plain_pos = 0;
	unlock_progress(run);
	return 0;
}

static int unlock_fill_f2(struct unlock_run *run)
{
	uint64_t plen;
	size_t ct_len;
	int r;

	if (run->chunk == f2_chunk_count(&run->hdr)) {
		unlock_run_eof(run);
		return 0;
	}
	plen = f2_chunk_plain_len(&run->hdr, run->chunk);
	ct_len = (size_t)plen + CRYPTO_TAG_SIZE;
	r = unlock_read_full(run, run->cbuf, ct_len);
	if (r < 0)
		return r;
	r = f2_open_chunk(run->key, &run->hdr, run->chunk, run->cbuf, ct_len, run->plain);
	if (r < 0) {
		unlock_run_fail(run,
				"chunk %llu of %s fails its check: the archive is damaged, "
				"or not the one its key is for",
				(unsigned long long)run->chunk, run->u->c->images_archive);
		return -EIO;
	}
	run->chunk++;
	run->consumed += ct_len;
	run->plain_len = (size_t)plen;
	run->plain_pos = 0;
	unlock_progress(run);
	return 0;
}

/* fetch_read_fn for dockerd's upload. */
static ssize_t unlock_read(void *ctx, uint8_t *buf, size_t cap)
{
	struct unlock_run *run = ctx;
	size_t n;
	int r;

	while (run->plain_pos == run->plain_len) {
		if (__atomic_load_n(&run->u->stop, __ATOMIC_RELAXED)) {
			unlock_run_fail(run, "cancelled: the daemon is stopping");
			return -ECANCELED;
		}
		crypto_wipe(run->plain, run->plain_len);
		run->plain_len = run->plain_pos = 0;
		if (run->eof)
			return 0;
		r = run->format == 2 ? unlock_fill_f2(run) : unlock_fill_f1(run);
		if (r < 0)
			return r;
	}
	n = run->plain_len - run->plain_pos < cap ? run->plain_len - run->plain_pos : cap;
	memcpy(buf, run->plain + run->plain_pos, n);
	run->plain_pos += n;
	return (ssize_t)n;
}

/* ---- the key -------------------------------------------------------------- */

static int unlock_key_f1(struct unlock_run *run)
{
	struct unlock *u = run->u;
	uint8_t last[32];
	uint8_t *frag = NULL;
	size_t flen;
	int r;

	if (run->size < 32 || run->size % CRYPTO_BLOCK) {
		unlock_fail(u,
			    "%s is truncated or not an encrypted archive: %llu bytes is not a "
			    "whole number of AES blocks",
			    u->c->images_archive, (unsigned long long)run->size);
		return -EIO;
	}
	r = session_key_fragment(u->s, &frag, &flen);
	if (r < 0) {
		unlock_fail(u, "cannot get the key fragment from the API: %s", unlock_cause(r));
		return r;
	}
	f1_archive_key(frag, flen, run->key);
	secmem_free(frag);
	if (pread(run->fd, last, sizeof(last), (off_t)(run->size - 32)) != (ssize_t)sizeof(last)) {
		unlock_fail(u, "reading the end of %s: %s", u->c->images_archive, strerror(errno));
		return -EIO;
	}
	r = f1_plain_size(run->key, last, run->size, &run->plain_size);
	if (r < 0) {
		unlock_fail(u,
			    "%s does not decrypt with the archive key from the API's key "
			    "fragment (bad padding): a wrong key fragment, or a damaged or "
			    "truncated archive",
			    u->c->images_archive);
		return -EBADMSG;
	}
	/* The stream starts after the IV, which is the first "previous block". */
	r = unlock_read_full(run, run->prev, CRYPTO_BLOCK);
	if (r < 0) {
		unlock_fail(u, "%s", run->msg);
		return r;
	}
	run->consumed = CRYPTO_BLOCK;
	run->plain_cap = UNLOCK_STEP;
	return 0;
}

static int unlock_key_f2(struct unlock_run *run, const uint8_t *raw)
{
	struct unlock *u = run->u;
	char id[160], file_id[2 * F2_FILE_ID_SIZE + 1];
	uint8_t wrapped[UNLOCK_WRAPPED_MAX];
	const char *fid, *wk;
	size_t wlen, klen;
	json_t *doc = NULL;
	int r;

	r = f2_header_parse(raw, &run->hdr);
	if (r < 0) {
		unlock_fail(u, "%s has a malformed format-2 header", u->c->images_archive);
		return r;
	}
	if (f2_big_size(&run->hdr) != run->size) {
		unlock_fail(u, "%s has %llu bytes, its header says %llu: the archive is %s",
			    u->c->images_archive, (unsigned long long)run->size,
			    (unsigned long long)f2_big_size(&run->hdr),
			    run->size < f2_big_size(&run->hdr) ? "truncated" : "damaged");
		return -EIO;
	}
	if (device_id(u->d, id, sizeof(id)) < 0) {
		unlock_fail(u,
			    "a format-2 archive needs an enrolled TPM device, and this one "
			    "is not (TPM: %s)",
			    device_status(u->d, NULL, 0));
		return -EACCES;
	}
	r = session_device_key(u->s, u->c->folder, u->c->images_resource, id, &doc);
	if (r < 0) {
		unlock_fail(u, "cannot get the key of %s/%s for device %s: %s", u->c->folder,
			    u->c->images_resource, id, unlock_cause(r));
		return r;
	}
	fid = json_string_value(json_object_get(doc, "file_id"));
	wk = json_string_value(json_object_get(doc, "wrapped_key"));
	if (!fid || !wk || json_integer_value(json_object_get(doc, "format")) != 2 ||
	    crypto_b64_decode(wk, strlen(wk), wrapped, sizeof(wrapped), &wlen) < 0) {
		unlock_fail(u, "the API's key document for %s is malformed", u->c->images_resource);
		r = -EPROTO;
		goto out;
	}
	crypto_hex(run->hdr.file_id, F2_FILE_ID_SIZE, file_id);
	if (strcasecmp(file_id, fid) != 0) {
		unlock_fail(u, "the key of %s is for file %s, but %s is file %s",
			    u->c->images_resource, fid, u->c->images_archive, file_id);
		r = -EIO;
		goto out;
	}
	r = device_unwrap(u->d, wrapped, wlen, run->key, CRYPTO_KEY_SIZE, &klen);
	if (r == 0 && klen != CRYPTO_KEY_SIZE)
		r = -EIO;
	if (r < 0) {
		unlock_fail(u, "the TPM cannot unwrap the archive's key: %s", strerror(-r));
		goto out;
	}
	/* The header came by pread: the stream of chunks starts after it. */
	if (lseek(run->fd, F2_HEADER_SIZE, SEEK_SET) != F2_HEADER_SIZE) {
		r = -errno;
		unlock_fail(u, "%s: %s", u->c->images_archive, strerror(errno));
		goto out;
	}
	run->consumed = F2_HEADER_SIZE;
	run->plain_cap = (size_t)f2_chunk_size(&run->hdr);
out:
	json_decref(doc);
	return r;
}

/* ---- the run --------------------------------------------------------------- */

static void unlock_finish(struct unlock *u)
{
	pthread_mutex_lock(&u->lock);
	u->running = 0;
	pthread_mutex_unlock(&u->lock);
}

static void unlock_load(struct unlock_run *run)
{
	struct unlock *u = run->u;
	char *loaded = NULL, *message = NULL;
	char missing[UNLOCK_REF_MAX];
	json_t *present = NULL;
	int r;

	r = unlock_docker_ping(u->c->docker_socket);
	if (r < 0) {
		unlock_fail(u, "the Docker Engine is not reachable at %s (%s): is dockerd running?",
			    u->c->docker_socket, strerror(-r));
		return;
	}
	r = fetch_docker_load(u->f, u->c->docker_socket, unlock_read, run, &loaded, &message);
	if (r < 0) {
		if (run->msg[0])
			unlock_fail(u, "%s", run->msg);
		else if (message)
			unlock_fail(u, "dockerd refused the archive: %s", message);
		else
			unlock_fail(u, "loading into dockerd at %s failed: %s", u->c->docker_socket,
				    strerror(-r));
		goto out;
	}
	if (!run->eof) {
		unlock_fail(u, "dockerd ended the load before reading the whole archive");
		goto out;
	}
	if (loaded && *loaded) {
		for (char *p = loaded; *p; p++)
			if (*p == '\n')
				*p = ';';
		log_info("dockerd: %s", loaded);
	}
	r = unlock_check_images(u, &present, missing, sizeof(missing));
	if (r == -ENOENT) {
		unlock_set_images(u, present);
		unlock_fail(u, "the archive did not hold %s (images = ..., images_version = %s)",
			    missing, u->c->images_version);
		goto out;
	}
	if (r < 0) {
		unlock_fail(u, "cannot list dockerd's images: %s", strerror(-r));
		goto out;
	}
	unlock_set_images(u, present);
	unlock_set_state(u, UNLOCK_READY);
out:
	free(loaded);
	free(message);
}

static void *unlock_thread(void *arg)
{
	struct unlock *u = arg;
	struct unlock_run run = {.u = u, .fd = -1};
	uint8_t raw[F2_HEADER_SIZE];
	struct stat sb;
	ssize_t n;
	int r;

	r = unlock_login(u->c, u->f, u->s, u->d, u->email, u->password);
	secmem_free(u->email);
	secmem_free(u->password);
	u->email = u->password = NULL;
	if (r < 0) {
		unlock_fail(u, "login failed: %s",
			    r == -EINVAL ? "an empty or oversized field" : unlock_cause(r));
		goto out;
	}
	unlock_set_state(u, UNLOCK_DOWNLOADING_KEY);
	run.fd = open(u->c->images_archive, O_RDONLY | O_CLOEXEC);
	if (run.fd < 0 || fstat(run.fd, &sb) < 0 || !S_ISREG(sb.st_mode)) {
		unlock_fail(u, "%s: %s", u->c->images_archive,
			    run.fd < 0 ? strerror(errno) : "not a regular file");
		goto out;
	}
	run.size = (uint64_t)sb.st_size;
	pthread_mutex_lock(&u->lock);
	u->bytes_total = run.size;
	pthread_mutex_unlock(&u->lock);
	n = pread(run.fd, raw, sizeof(raw), 0);
	run.key = secmem_alloc(CRYPTO_KEY_SIZE);
	if (!run.key) {
		unlock_fail(u, "cannot lock memory for the key: %s", strerror(errno));
		goto out;
	}
	/* The magic tells the formats apart: a CBC archive starts with a random IV. */
	run.format = n >= 4 && memcmp(raw, F2_MAGIC, 4) == 0 ? 2 : 1;
	if (run.format == 2 && n != (ssize_t)sizeof(raw)) {
		unlock_fail(u, "%s is truncated: %zd bytes", u->c->images_archive, n);
		goto out;
	}
	r = run.format == 2 ? unlock_key_f2(&run, raw) : unlock_key_f1(&run);
	if (r < 0)
		goto out;
	log_info("unlock: %s is a format-%d archive of %llu bytes", u->c->images_archive,
		 run.format, (unsigned long long)run.size);

	unlock_set_state(u, UNLOCK_DECRYPTING);
	run.plain = secmem_alloc(run.plain_cap);
	run.cbuf = malloc(run.plain_cap + CRYPTO_TAG_SIZE + CRYPTO_BLOCK);
	if (!run.plain || !run.cbuf) {
		unlock_fail(u, "cannot lock %zu bytes of memory for the plaintext", run.plain_cap);
		goto out;
	}
	unlock_load(&run);
out:
	secmem_free(run.plain);
	free(run.cbuf);
	secmem_free(run.key);
	crypto_wipe(run.prev, sizeof(run.prev));
	if (run.fd >= 0)
		close(run.fd);
	unlock_finish(u);
	return NULL;
}

int unlock_start(struct unlock *u, const char *email, const char *password,
		 enum unlock_state *ret_state)
{
	char missing[UNLOCK_REF_MAX];
	json_t *present = NULL;
	struct stat sb;
	int r, running, joinable;

	pthread_mutex_lock(&u->start_lock);
	pthread_mutex_lock(&u->lock);
	running = u->running;
	joinable = u->joinable;
	if (running)
		*ret_state = u->state;
	pthread_mutex_unlock(&u->lock);
	if (running) {
		r = 0;
		goto out;
	}
	if (joinable) {
		/* Finished (running is 0): the join does not wait. */
		pthread_join(u->thread, NULL);
		u->joinable = 0;
	}
	if (!email || !password || !*email || !*password) {
		r = -EINVAL;
		goto out;
	}
	r = unlock_check_images(u, &present, missing, sizeof(missing));
	if (r == 0) {
		unlock_set_images(u, present);
		pthread_mutex_lock(&u->lock);
		u->state = UNLOCK_READY;
		u->error[0] = '\0';
		pthread_mutex_unlock(&u->lock);
		log_info("unlock: every image is already loaded");
		*ret_state = UNLOCK_READY;
		goto out;
	}
	json_decref(present);
	if (stat(u->c->images_archive, &sb) < 0 || !S_ISREG(sb.st_mode)) {
		log_warn("unlock: the encrypted archive %s is missing and %s is not loaded",
			 u->c->images_archive, missing[0] ? missing : "an image");
		r = -ENOENT;
		goto out;
	}
	u->email = secmem_strndup(email, strlen(email));
	u->password = secmem_strndup(password, strlen(password));
	if (!u->email || !u->password) {
		secmem_free(u->email);
		secmem_free(u->password);
		u->email = u->password = NULL;
		r = -ENOMEM;
		goto out;
	}
	pthread_mutex_lock(&u->lock);
	u->state = UNLOCK_AUTHENTICATING;
	u->error[0] = '\0';
	u->bytes_done = u->bytes_total = 0;
	json_decref(u->images);
	u->images = NULL;
	u->running = 1;
	pthread_mutex_unlock(&u->lock);
	r = pthread_create(&u->thread, NULL, unlock_thread, u);
	if (r != 0) {
		secmem_free(u->email);
		secmem_free(u->password);
		u->email = u->password = NULL;
		unlock_fail(u, "cannot start a thread: %s", strerror(r));
		unlock_finish(u);
		r = -EAGAIN;
		goto out;
	}
	u->joinable = 1;
	log_info("unlock: started");
	*ret_state = UNLOCK_AUTHENTICATING;
	r = 0;
out:
	pthread_mutex_unlock(&u->start_lock);
	return r;
}

json_t *unlock_status_json(struct unlock *u)
{
	json_t *o;

	pthread_mutex_lock(&u->lock);
	o = json_pack("{s:s, s:s?, s:I, s:I, s:o}", "state", unlock_state_name(u->state), "error",
		      u->state == UNLOCK_ERROR ? u->error : NULL, "bytes_done",
		      (json_int_t)u->bytes_done, "bytes_total", (json_int_t)u->bytes_total,
		      "images", u->images ? json_incref(u->images) : json_array());
	pthread_mutex_unlock(&u->lock);
	return o;
}

enum unlock_state unlock_state(struct unlock *u)
{
	enum unlock_state st;

	pthread_mutex_lock(&u->lock);
	st = u->state;
	pthread_mutex_unlock(&u->lock);
	return st;
}

int unlock_new(const struct config *c, struct fetch *f, struct session *s, struct device *d,
	       struct unlock **ret)
{
	struct unlock *u = calloc(1, sizeof(*u));

	if (!u)
		return -ENOMEM;
	u->c = c;
	u->f = f;
	u->s = s;
	u->d = d;
	pthread_mutex_init(&u->start_lock, NULL);
	pthread_mutex_init(&u->lock, NULL);
	*ret = u;
	return 0;
}

void unlock_free(struct unlock *u)
{
	if (!u)
		return;
	__atomic_store_n(&u->stop, 1, __ATOMIC_RELAXED);
	pthread_mutex_lock(&u->start_lock);
	if (u->joinable)
		pthread_join(u->thread, NULL);
	pthread_mutex_unlock(&u->start_lock);
	secmem_free(u->email);
	secmem_free(u->password);
	json_decref(u->images);
	pthread_mutex_destroy(&u->lock);
	pthread_mutex_destroy(&u->start_lock);
	free(u);
}
