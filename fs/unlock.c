/*
 * unlock.c - the Docker unlock workflow (see unlock.h): one run at a time
 * on its own thread, the archive decrypted piece by piece into locked
 * memory and handed to libcurl's upload to dockerd, never to a file.
 *
 * The archive is one format's ciphertext stream (format.h), read through
 * its format's table like a model: the head opens it (format 1: the
 * padding, and so the plaintext size and most wrong keys, from the last two
 * blocks; format 2: the header), then each step is decrypted from the
 * ciphertext its span names. Format 2 checks every chunk's tag before a
 * byte of it goes out; a failed check aborts the load, so dockerd never
 * gets an unauthenticated byte. The keys come from a key source of the
 * unlock's own (format 1: the archive key from the API's key fragment;
 * format 2: the device's key document for images_resource).
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
#include "fs/format.h"
#include "fs/keys.h"
#include "fs/log.h"
#include "fs/msg.h"
#include "fs/unlock.h"

#define UNLOCK_STEP (1024 * 1024) /* plaintext decrypted at a time, at least */
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
	const struct format_ops *fmt;
	struct format_file *ff; /* the archive opened: its key */
	uint64_t size;		/* of the archive file */
	uint64_t consumed;
	uint64_t plain_done; /* plaintext decrypted so far */
	size_t step;	     /* plaintext per fill */
	uint8_t *cbuf;	     /* ciphertext: not secret */
	size_t cbuf_cap;
	uint8_t *plain; /* secmem */
	size_t plain_cap, plain_len, plain_pos;
	int eof;
	char msg[UNLOCK_ERR_MAX]; /* the first cause of a failed read */
};

/* The unlock's key source (keys.h): the archive's keys, from the API and the TPM. */
struct unlock_keys {
	struct keys k;
	struct unlock *u;
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

/*
 * An API call's errno as a reader would want to see it in F5's "error",
 * with the failed call's words (this thread's, right after the call).
 */
static const char *unlock_cause(int r)
{
	static __thread char words[UNLOCK_ERR_MAX];

	switch (r) {
	case -EACCES:
		return "the API refused the credentials";
	case -ENOENT:
		return "the API does not know it";
	case -ENOKEY:
		return "no credentials";
	case -EHOSTUNREACH:
	case -ETIMEDOUT:
		snprintf(words, sizeof(words), "the API is out of reach: %s", log_strerror(r));
		return words;
	default:
		snprintf(words, sizeof(words), "the API failed: %s", log_strerror(r));
		return words;
	}
}

int unlock_login(const struct config *c, struct fetch *f, struct session *s, struct device *d,
		 const char *email, const char *password)
{
	char *tok = NULL;
	time_t exp = 0;
	int r, quiet;

	if (!email || !password || !*email || !*password || strlen(email) > UNLOCK_FIELD_MAX ||
	    strlen(password) > UNLOCK_FIELD_MAX)
		return -EINVAL;
	/* The caller says a failure, with log_strerror's words (unlock.h). */
	quiet = fetch_quiet(1);
	r = fetch_api_login(f, c->api_url, email, password, &tok, &exp);
	fetch_quiet(quiet);
	if (r < 0)
		return r;
	crypto_wipe(tok, strlen(tok));
	free(tok);
	r = session_set_credentials(s, email, password);
	if (r < 0)
		return r;
	/* "error" too: a login is how a device whose PCRs changed re-enrols. */
	if (d && strcmp(device_status(d, NULL, 0), "absent") != 0) {
		char *msg = NULL;
		int e = device_enroll_if_needed(d, &msg);

		if (e < 0 && e != -EBUSY && e != -ENODEV)
			log_warn("logged in, but enrolling the device failed: %s", msg_or(msg, e));
		free(msg);
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
	int r, quiet, result = 0;

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
		/* Quiet: the caller says a failure (log_strerror). */
		quiet = fetch_quiet(1);
		r = fetch_docker_image_exists(u->f, u->c->docker_socket, ref);
		fetch_quiet(quiet);
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

/* Reads exactly n bytes of the archive at off. */
static int unlock_pread_full(struct unlock_run *run, uint64_t off, uint8_t *buf, size_t n)
{
	size_t got = 0;

	while (got < n) {
		ssize_t k = pread(run->fd, buf + got, n - got, (off_t)(off + got));

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
					run->u->c->images_archive, (unsigned long long)(off + got));
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

/* Decrypts the next step of plaintext into run->plain. */
static int unlock_fill(struct unlock_run *run)
{
	uint64_t left = run->ff->size - run->plain_done, c0, c1;
	size_t n = left < run->step ? (size_t)left : run->step;
	uint8_t *out[1] = {run->plain};
	char *msg = NULL;
	int r;

	if (n == 0) {
		/* Format 1's last block may be all padding, which no span names. */
		run->consumed = run->size;
		unlock_run_eof(run);
		return 0;
	}
	run->fmt->span(run->ff, run->plain_done, n, &c0, &c1);
	if (c1 - c0 > run->cbuf_cap) {
		unlock_run_fail(run, "a step of %s needs %llu bytes of ciphertext",
				run->u->c->images_archive, (unsigned long long)(c1 - c0));
		return -EIO;
	}
	r = unlock_pread_full(run, c0, run->cbuf, (size_t)(c1 - c0));
	if (r < 0)
		return r;
	r = format_decrypt(run->ff, run->plain_done, n, run->cbuf, out, run->plain_cap, &msg);
	if (r < 0) {
		unlock_run_fail(run,
				"%s: %s: the archive is damaged, or not the one its key is for",
				run->u->c->images_archive, msg ? msg : strerror(-r));
		free(msg);
		return -EIO;
	}
	run->plain_done += n;
	run->consumed = c1;
	run->plain_len = n;
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
		r = unlock_fill(run);
		if (r < 0)
			return r;
	}
	n = run->plain_len - run->plain_pos < cap ? run->plain_len - run->plain_pos : cap;
	memcpy(buf, run->plain + run->plain_pos, n);
	run->plain_pos += n;
	return (ssize_t)n;
}

/* ---- the key -------------------------------------------------------------- */

/* keys_ops: format 1's key is the archive key from the API's key fragment. */
static int unlock_keys_archive(struct keys *k, uint8_t *key, char **ret_msg)
{
	struct unlock *u = ((struct unlock_keys *)k)->u;
	uint8_t *frag = NULL;
	char *msg = NULL;
	size_t flen;
	int r;

	r = session_key_fragment(u->s, &frag, &flen, &msg);
	if (r < 0) {
		msg_set(ret_msg, "cannot get the key fragment from the API: %s",
			msg ? msg : unlock_cause(r));
		free(msg);
		return r;
	}
	f1_archive_key(frag, flen, key);
	secmem_free(frag);
	return 0;
}

static int unlock_keys_cdn(struct keys *k, const char **ret_url, const struct fetch_s3 **ret_s3)
{
	return -ENOENT; /* the archive is a local file */
}

/* keys_ops: the archive holds the whole stream; nothing comes before it. */
static int unlock_keys_small(struct keys *k, const char *name, uint8_t **ret, size_t *ret_len,
			     char **ret_msg)
{
	*ret = NULL;
	*ret_len = 0;
	return 0;
}

static int unlock_keys_doc(struct keys *k, const char *name, struct keys_doc *ret, char **ret_msg)
{
	struct unlock *u = ((struct unlock_keys *)k)->u;
	struct keys_doc kd = {0};
	json_t *doc = NULL;
	char id[160];
	int r;

	if (device_id(u->d, id, sizeof(id)) < 0) {
		if (asprintf(ret_msg,
			     "a format-2 archive needs an enrolled TPM device, and this one "
			     "is not (TPM: %s)",
			     device_status(u->d, NULL, 0)) < 0)
			*ret_msg = NULL;
		return -EACCES;
	}
	r = session_device_key(u->s, u->c->folder, name, id, &doc);
	if (r < 0) {
		if (asprintf(ret_msg, "cannot get the key of %s/%s for device %s: %s", u->c->folder,
			     name, id, unlock_cause(r)) < 0)
			*ret_msg = NULL;
		return r;
	}
	r = keys_parse_doc(doc, kd.file_id, kd.wrapped, sizeof(kd.wrapped), &kd.wrapped_len);
	json_decref(doc);
	if (r < 0) {
		if (asprintf(ret_msg, "the API's key document for %s is malformed", name) < 0)
			*ret_msg = NULL;
		return -EPROTO;
	}
	*ret = kd;
	crypto_wipe(&kd, sizeof(kd));
	return 0;
}

static int unlock_keys_unwrap(struct keys *k, const struct keys_doc *doc, uint8_t *key,
			      char **ret_msg)
{
	struct unlock *u = ((struct unlock_keys *)k)->u;
	size_t klen = 0;
	int r;

	char *msg = NULL;

	r = device_unwrap(u->d, doc->wrapped, doc->wrapped_len, key, CRYPTO_KEY_SIZE, &klen, &msg);
	if (r == 0 && klen != CRYPTO_KEY_SIZE)
		r = -EIO;
	if (r < 0)
		msg_set(ret_msg, "the TPM cannot unwrap the archive's key: %s", msg_or(msg, r));
	free(msg);
	return r;
}

static void unlock_keys_free(struct keys *k)
{
}

static const struct keys_ops unlock_keys_ops = {
	.resource_key = unlock_keys_archive,
	.cdn = unlock_keys_cdn,
	.small_part = unlock_keys_small,
	.key_doc = unlock_keys_doc,
	.chunk_hashes = NULL, /* the archive is a local file */
	.unwrap = unlock_keys_unwrap,
	.free = unlock_keys_free,
};

/*
 * Opens the archive with its format's key material and head; a failure is
 * in F5's error. The step is a whole number of the format's units.
 */
static int unlock_open(struct unlock_run *run)
{
	struct unlock *u = run->u;
	struct unlock_keys keys = {.k.ops = &unlock_keys_ops, .u = u};
	struct format_key fk = {0};
	struct format_hint hint = {0};
	uint64_t head_off, c0, c1;
	uint8_t *head = NULL;
	size_t head_len;
	char *msg = NULL;
	int r;

	r = run->fmt->key_material(&keys.k, u->c->images_resource, &fk, &msg);
	if (r == 0)
		r = run->fmt->key_unlock(&keys.k, &fk, &msg);
	if (r < 0) {
		/* The API's failures come with words; what comes without is not the API's. */
		unlock_fail(u, "%s", msg_or(msg, r));
		goto out;
	}
	hint.file_id = fk.file_id[0] ? fk.file_id : NULL;
	run->fmt->head(run->size, &hint, &head_off, &head_len);
	head = malloc(head_len ? head_len : 1);
	if (!head) {
		r = -ENOMEM;
		unlock_fail(u, "%s", strerror(-r));
		goto out;
	}
	if (head_off + head_len > run->size) {
		unlock_fail(u, "%s is truncated or not an encrypted archive: %llu bytes",
			    u->c->images_archive, (unsigned long long)run->size);
		r = -EIO;
		goto out;
	}
	r = unlock_pread_full(run, head_off, head, head_len);
	if (r < 0) {
		unlock_fail(u, "%s", run->msg);
		goto out;
	}
	r = run->fmt->open(fk.key, head, run->size, &hint, &run->ff, &msg);
	if (r < 0) {
		unlock_fail(u,
			    "%s does not open with its key from the API (%s): a wrong key "
			    "fragment or device key, or a damaged or truncated archive",
			    u->c->images_archive, msg ? msg : strerror(-r));
		goto out;
	}
	run->step = run->ff->unit >= UNLOCK_STEP ? (size_t)run->ff->unit
						 : UNLOCK_STEP / run->ff->unit * run->ff->unit;
	run->plain_cap = run->step + CRYPTO_BLOCK; /* format 1's last block, padding and all */
	run->fmt->span(run->ff, 0, run->step < run->ff->size ? run->step : run->ff->size, &c0, &c1);
	run->cbuf_cap = (size_t)(c1 - c0) + 2 * CRYPTO_BLOCK;
out:
	free(msg);
	free(head);
	format_key_clear(&fk);
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
				    log_strerror(r));
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
		unlock_fail(u, "cannot list dockerd's images: %s", log_strerror(r));
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

	pthread_setname_np(pthread_self(), "az-unlock");
	/* Every failure ends in one unlock_fail, with the failed call's words. */
	fetch_quiet(1);
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
	/* The magic tells the formats apart: a CBC archive starts with a random IV. */
	run.fmt = format_detect(raw, n > 0 ? (size_t)n : 0);
	if (unlock_open(&run) < 0)
		goto out;
	log_info("unlock: %s is a format-%d archive of %llu bytes", u->c->images_archive,
		 run.fmt->id, (unsigned long long)run.size);

	unlock_set_state(u, UNLOCK_DECRYPTING);
	run.plain = secmem_alloc(run.plain_cap);
	run.cbuf = malloc(run.cbuf_cap);
	if (!run.plain || !run.cbuf) {
		unlock_fail(u, "cannot lock %zu bytes of memory for the plaintext", run.plain_cap);
		goto out;
	}
	unlock_load(&run);
out:
	secmem_free(run.plain);
	free(run.cbuf);
	format_close(run.ff);
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
