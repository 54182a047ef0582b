/*
 * device.c - the TPM wiring of the filesystem (see device.h): start-up
 * (load, unseal, hand the sealed credentials to the session), enrolment
 * and re-enrolment, and the unwrapping of format-2 content keys.
 *
 * The sealed store's content, packed here (tpm/ sees an opaque secret):
 *   "AZDS" 1 0 0 0 || u32 n || credentials (session_credentials_blob's
 *   "email = ...\npassword = ...\n") || u32 m || resource_secret (m = 0:
 *   none), little-endian lengths.
 *
 * Locking: d->lock guards the id, its file's stamp, the status, the flags,
 * the unsealed credentials waiting for device_login and the resource
 * secret. It is never held across TPM or API calls; d->busy makes a second
 * enrolment or reload return -EBUSY (or skip, for a reload) instead. The
 * struct tpm serialises its own calls. Messages of tpm/ at error level are
 * demoted to debug: each failure is logged here once, with its context.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "crypto/crypto.h"
#include "fs/atomic.h"
#include "fs/device.h"
#include "fs/log.h"
#include "fs/msg.h"
#include "tpm/tpm.h"

#define DEVICE_ID_MAX 128
#define DEVICE_ID_MAX_TEXT "128"
#define DEVICE_SEALED_MAX (16 * 1024) /* largest sealed content unsealed */
#define DEVICE_SECRET_MAX 4096	      /* largest resource_secret sealed */
#define DEVICE_FIX "a new login re-enrols the device"

static const uint8_t device_magic[8] = {'A', 'Z', 'D', 'S', 1, 0, 0, 0};

struct device_stamp {
	dev_t dev;
	ino_t ino;
	struct timespec mtime;
	off_t size;
};

struct device {
	const struct config *c;
	struct session *s;
	struct tpm *tpm; /* NULL: none */
	char *id_path;

	pthread_mutex_t lock;
	char id[DEVICE_ID_MAX + 1];   /* "" when not enrolled */
	struct device_stamp id_stamp; /* of the id file when last read or written */
	int loaded;		      /* the device key is loaded */
	int sealed_ok;		      /* the sealed store unsealed (or was just written) */
	int busy;		      /* an enrolment or reload runs */
	int creds_sealed;	      /* the session's credentials came from the store */
	uint8_t sealed_digest[32];    /* SHA-256 of the sealed credentials */
	char *email, *password;	      /* unsealed, until device_login takes them */
	char *rsecret;		      /* unsealed resource_secret, or NULL */
	size_t rsecret_len;
	const char *status;
	char reason[512];
};

/* ---- small helpers --------------------------------------------------------- */

/* The last error tpm/ reported on this thread: tpm_open's, which has no struct to keep it. */
static __thread char device_tpm_why[256];

static void device_tpm_log(int priority, const char *msg)
{
	if (priority <= LOG_ERR)
		snprintf(device_tpm_why, sizeof(device_tpm_why), "%s", msg);
	log_sink(priority <= LOG_ERR ? LOG_DEBUG : priority, msg);
}

/* Under d->lock. */
static void device_status_locked(struct device *d, const char *status, const char *reason)
{
	d->status = status;
	if (!strcmp(status, "error") && reason && !strstr(reason, "re-enrol"))
		snprintf(d->reason, sizeof(d->reason), "%s; " DEVICE_FIX, reason);
	else
		snprintf(d->reason, sizeof(d->reason), "%s", reason ? reason : "");
}

static void device_set_status(struct device *d, const char *status, const char *reason)
{
	pthread_mutex_lock(&d->lock);
	device_status_locked(d, status, reason);
	pthread_mutex_unlock(&d->lock);
}

static int device_stamp_of(const char *path, struct device_stamp *ret)
{
	struct stat st;

	if (stat(path, &st) < 0)
		return -errno;
	ret->dev = st.st_dev;
	ret->ino = st.st_ino;
	ret->mtime = st.st_mtim;
	ret->size = st.st_size;
	return 0;
}

static int device_stamp_eq(const struct device_stamp *a, const struct device_stamp *b)
{
	return a->dev == b->dev && a->ino == b->ino && a->mtime.tv_sec == b->mtime.tv_sec &&
	       a->mtime.tv_nsec == b->mtime.tv_nsec && a->size == b->size;
}

/*
 * A device id goes into the X-Device-Id header of every key request and
 * into the log: 1 to DEVICE_ID_MAX visible ASCII characters, no spaces,
 * no line breaks (docs/resource-api.md).
 */
static int device_id_valid(const char *id, size_t n)
{
	if (n == 0 || n > DEVICE_ID_MAX)
		return 0;
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)id[i] < 0x21 || (unsigned char)id[i] > 0x7e)
			return 0;
	return 1;
}

/* Reads state_dir/device_id into d->id and records its stamp; under d->lock. */
static int device_read_id_locked(struct device *d)
{
	char buf[DEVICE_ID_MAX + 2];
	struct stat st;
	ssize_t n;
	int fd;

	d->id[0] = '\0';
	memset(&d->id_stamp, 0, sizeof(d->id_stamp));
	fd = open(d->id_path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	n = read(fd, buf, sizeof(buf) - 1);
	if (fstat(fd, &st) == 0) {
		d->id_stamp.dev = st.st_dev;
		d->id_stamp.ino = st.st_ino;
		d->id_stamp.mtime = st.st_mtim;
		d->id_stamp.size = st.st_size;
	}
	close(fd);
	if (n < 0)
		return -EIO;
	while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r' || buf[n - 1] == ' '))
		n--;
	if (!device_id_valid(buf, (size_t)n)) {
		log_warn("%s: not a device id", d->id_path);
		return -EINVAL;
	}
	buf[n] = '\0';
	memcpy(d->id, buf, (size_t)n + 1);
	return 0;
}

static int device_write_id(struct device *d, const char *id)
{
	char line[DEVICE_ID_MAX + 2];
	size_t n = strlen(id);

	if (!device_id_valid(id, n))
		return -EPROTO;
	memcpy(line, id, n);
	line[n] = '\n';
	return atomic_write_file(d->id_path, 0600, line, n + 1, NULL, NULL);
}

static void device_drop_unsealed_locked(struct device *d)
{
	secmem_free(d->email);
	secmem_free(d->password);
	d->email = d->password = NULL;
}

/* ---- the sealed content ------------------------------------------------------ */

static void put_u32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
	p[2] = (uint8_t)(v >> 16);
	p[3] = (uint8_t)(v >> 24);
}

static uint32_t get_u32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static int device_pack(const char *creds, size_t clen, const char *rs, size_t rlen, uint8_t **ret,
		       size_t *ret_len)
{
	size_t len = sizeof(device_magic) + 4 + clen + 4 + rlen;
	uint8_t *p, *buf;

	if (len > DEVICE_SEALED_MAX)
		return -E2BIG;
	buf = secmem_alloc(len);
	if (!buf)
		return -ENOMEM;
	p = buf;
	memcpy(p, device_magic, sizeof(device_magic));
	p += sizeof(device_magic);
	put_u32(p, (uint32_t)clen);
	memcpy(p + 4, creds, clen);
	p += 4 + clen;
	put_u32(p, (uint32_t)rlen);
	if (rlen)
		memcpy(p + 4, rs, rlen);
	*ret = buf;
	*ret_len = len;
	return 0;
}

/* A NUL-terminated copy in locked memory. */
/*
 * Splits the sealed content; the credentials text is
 * "email = E\npassword = P\n", P taken up to the last newline so that it
 * may hold any byte. Results are secmem; rs NULL when none was sealed.
 */
static int device_unpack(const uint8_t *buf, size_t len, char **ret_email, char **ret_password,
			 char **ret_rs, size_t *ret_rlen, uint8_t digest[32])
{
	static const char ek[] = "email = ", pk[] = "\npassword = ";
	const uint8_t *p = buf + sizeof(device_magic);
	const char *creds, *pw, *end;
	char *email = NULL, *password = NULL, *rs = NULL;
	size_t clen, rlen;

	if (len < sizeof(device_magic) + 8 || memcmp(buf, device_magic, sizeof(device_magic)))
		return -EBADMSG;
	clen = get_u32(p);
	if (clen > len - sizeof(device_magic) - 8)
		return -EBADMSG;
	creds = (const char *)p + 4;
	p += 4 + clen;
	rlen = get_u32(p);
	if (rlen != len - sizeof(device_magic) - 8 - clen)
		return -EBADMSG;
	end = creds + clen;
	if (clen < sizeof(ek) + sizeof(pk) || memcmp(creds, ek, sizeof(ek) - 1) || end[-1] != '\n')
		return -EBADMSG;
	pw = memmem(creds, clen, pk, sizeof(pk) - 1);
	if (!pw)
		return -EBADMSG;
	email = secmem_strndup(creds + sizeof(ek) - 1, (size_t)(pw - creds) - (sizeof(ek) - 1));
	pw += sizeof(pk) - 1;
	password = secmem_strndup(pw, (size_t)(end - 1 - pw));
	if (rlen)
		rs = secmem_strndup(p + 4, rlen);
	if (!email || !password || (rlen && !rs)) {
		secmem_free(email);
		secmem_free(password);
		secmem_free(rs);
		return -ENOMEM;
	}
	crypto_sha256(creds, clen, digest);
	*ret_email = email;
	*ret_password = password;
	*ret_rs = rs;
	*ret_rlen = rlen;
	return 0;
}

/*
 * A sealed store that did not load or unseal: the status is error with
 * WHAT: WHY (the start or device_refresh says it). Returns r.
 */
static int device_unseal_failed(struct device *d, int r, int unloaded, const char *what,
				const char *why)
{
	char reason[512];

	snprintf(reason, sizeof(reason), "%s: %s", what, why);
	pthread_mutex_lock(&d->lock);
	if (unloaded)
		d->loaded = 0;
	d->sealed_ok = 0;
	device_status_locked(d, "error", reason);
	pthread_mutex_unlock(&d->lock);
	return r;
}

/*
 * Load and unseal: on success the unsealed credentials wait in d for
 * device_login, the resource secret is kept, and the status is ok. On
 * failure the status is error with the reason, which the caller says
 * (main.c at start, device_refresh on a reload). Runs with d->busy set
 * or before any other thread exists.
 */
static int device_unseal(struct device *d)
{
	char *email = NULL, *password = NULL, *rs = NULL;
	uint8_t *buf = NULL, digest[32];
	size_t len = 0, rlen = 0;
	int r;

	r = tpm_load(d->tpm);
	if (r < 0)
		return device_unseal_failed(d, r, 1, "cannot load the device key",
					    tpm_last_error(d->tpm));
	pthread_mutex_lock(&d->lock);
	d->loaded = 1;
	pthread_mutex_unlock(&d->lock);
	buf = secmem_alloc(DEVICE_SEALED_MAX);
	if (!buf)
		return device_unseal_failed(d, -ENOMEM, 0, "cannot unseal the stored credentials",
					    "no locked memory for them (memlock limit)");
	r = tpm_unseal(d->tpm, buf, DEVICE_SEALED_MAX, &len);
	if (r < 0) {
		device_unseal_failed(d, r, 0, "cannot unseal the stored credentials",
				     tpm_last_error(d->tpm));
		goto out;
	}
	r = device_unpack(buf, len, &email, &password, &rs, &rlen, digest);
	if (r < 0) {
		device_unseal_failed(d, r, 0, "cannot unseal the stored credentials",
				     "the sealed store holds none this program wrote");
		goto out;
	}
	pthread_mutex_lock(&d->lock);
	device_drop_unsealed_locked(d);
	d->email = email;
	d->password = password;
	if (rs || !d->rsecret) {
		secmem_free(d->rsecret);
		d->rsecret = rs;
		d->rsecret_len = rlen;
		rs = NULL;
	}
	memcpy(d->sealed_digest, digest, sizeof(digest));
	d->sealed_ok = 1;
	device_status_locked(d, "ok", NULL);
	pthread_mutex_unlock(&d->lock);
	log_info("TPM: the sealed store unsealed (credentials%s)",
		 rlen ? " and the legacy resource_secret" : "");
	r = 0;
out:
	secmem_free(rs);
	crypto_wipe(digest, sizeof(digest));
	secmem_free(buf);
	return r;
}

/* ---- start ------------------------------------------------------------------ */

/* The signal that asked the TPM wait to end (0: none). */
static volatile sig_atomic_t device_stop;

static void device_on_signal(int sig)
{
	device_stop = sig;
}

/*
 * tpm_open with SIGINT and SIGTERM ending its wait (Ctrl-C, systemctl
 * stop): the wait may last tpm_wait seconds, and a stop should not. A
 * signal that came while no wait was in progress is raised again once the
 * previous handlers are back, so it is not lost.
 */
static int device_tpm_open(struct tpm_opts *o, struct tpm **ret)
{
	struct sigaction sa = {.sa_handler = device_on_signal}, old_int, old_term;
	int r, sig;

	sigemptyset(&sa.sa_mask);
	device_stop = 0;
	sigaction(SIGINT, &sa, &old_int);
	sigaction(SIGTERM, &sa, &old_term);
	o->stop = &device_stop;
	r = tpm_open(o, ret);
	sigaction(SIGINT, &old_int, NULL);
	sigaction(SIGTERM, &old_term, NULL);
	sig = device_stop;
	device_stop = 0;
	if (sig && r != -EINTR)
		raise(sig);
	return r;
}

int device_new(const struct config *c, struct session *s, struct device **ret, char **ret_msg)
{
	struct tpm_opts o = {0};
	struct device *d;
	char *auth = NULL, *msg = NULL;
	size_t auth_len = 0;
	int r;

	d = calloc(1, sizeof(*d));
	if (!d)
		return -ENOMEM;
	d->c = c;
	d->s = s;
	d->status = "absent";
	pthread_mutex_init(&d->lock, NULL);
	if (asprintf(&d->id_path, "%s/device_id", c->state_dir) < 0) {
		d->id_path = NULL;
		r = -ENOMEM;
		goto err;
	}
	if (c->tpm == CONFIG_TPM_OFF) {
		snprintf(d->reason, sizeof(d->reason), "tpm = off");
		log_info("tpm = off: format-2 files will not be readable (EACCES)");
		*ret = d;
		return 0;
	}
	if (c->tpm_owner_auth_file) {
		r = config_read_secret_file(c->tpm_owner_auth_file, 1, &auth, &auth_len, &msg);
		if (r < 0) {
			msg_set(ret_msg, "tpm_owner_auth_file: %s", msg_or(msg, r));
			free(msg);
			goto err;
		}
	}
	o.tcti = c->tpm_tcti;
	o.wait_seconds = c->tpm_wait;
	o.pcrs = config_tpm_pcrs(c);
	o.owner_auth = (const uint8_t *)auth;
	o.owner_auth_len = auth_len;
	o.state_dir = c->state_dir;
	o.log = device_tpm_log;
	o.quick = c->tpm == CONFIG_TPM_AUTO;
	device_tpm_why[0] = '\0';
	r = device_tpm_open(&o, &d->tpm);
	secmem_free(auth);
	if (r < 0) {
		const char *why = device_tpm_why[0] ? device_tpm_why : strerror(-r);

		d->tpm = NULL;
		if (r == -EINTR) {
			msg_set(ret_msg, "stopped while waiting for the TPM at %s", c->tpm_tcti);
			goto err;
		}
		if (c->tpm == CONFIG_TPM_REQUIRED) {
			msg_set(ret_msg, "tpm = required, but no TPM answers at %s (%s)",
				c->tpm_tcti, why);
			r = -ENODEV;
			goto err;
		}
		log_info("no TPM at %s: format-2 files will not be readable (%s)", c->tpm_tcti,
			 why);
		snprintf(d->reason, sizeof(d->reason), "no TPM at %s: %s", c->tpm_tcti, why);
		*ret = d;
		return 0;
	}
	d->status = "ok";
	if (!tpm_is_enrolled(d->tpm)) {
		snprintf(d->reason, sizeof(d->reason), "not enrolled yet: the first login enrols");
		*ret = d;
		return 0;
	}
	device_unseal(d);
	pthread_mutex_lock(&d->lock);
	device_read_id_locked(d);
	pthread_mutex_unlock(&d->lock);
	*ret = d;
	return 0;

err:
	device_free(d);
	return r;
}

void device_free(struct device *d)
{
	if (!d)
		return;
	tpm_close(d->tpm);
	device_drop_unsealed_locked(d);
	secmem_free(d->rsecret);
	crypto_wipe(d->sealed_digest, sizeof(d->sealed_digest));
	free(d->id_path);
	pthread_mutex_destroy(&d->lock);
	free(d);
}

/* Hands unsealed credentials, if any wait, to the session (which logs in). */
static int device_hand_over(struct device *d)
{
	char *email, *password;
	int r;

	pthread_mutex_lock(&d->lock);
	email = d->email;
	password = d->password;
	d->email = d->password = NULL;
	pthread_mutex_unlock(&d->lock);
	if (!email)
		return -ENOKEY;
	log_info("logging in with the credentials sealed in the TPM");
	r = session_set_credentials(d->s, email, password);
	pthread_mutex_lock(&d->lock);
	d->creds_sealed = 1;
	pthread_mutex_unlock(&d->lock);
	secmem_free(email);
	secmem_free(password);
	return r;
}

int device_login(struct device *d)
{
	int r;

	if (session_has_credentials(d->s)) {
		/* The configured credentials win; the unsealed copy is not needed. */
		pthread_mutex_lock(&d->lock);
		device_drop_unsealed_locked(d);
		pthread_mutex_unlock(&d->lock);
		return session_login(d->s);
	}
	r = device_hand_over(d);
	if (r == -ENOKEY)
		log_info("no credentials yet: files need a login (credentials = FILE, the side "
			 "endpoint, or azaionctl enroll on a TPM device)");
	return r;
}

/* ---- enrolment -------------------------------------------------------------- */

/* obj[key] = base64 of data. */
static int json_set_b64(json_t *obj, const char *key, const uint8_t *data, size_t len)
{
	char *b64 = malloc(4 * ((len + 2) / 3) + 1);
	int r = -ENOMEM;

	if (!b64)
		return -ENOMEM;
	crypto_b64_encode(data, len, b64);
	if (json_object_set_new(obj, key, json_string(b64)) == 0)
		r = 0;
	free(b64);
	return r;
}

static int json_set_item(json_t *obj, const char *key, const struct tpm_attest *a,
			 enum tpm_attest_item which)
{
	const uint8_t *data;
	size_t len;
	int r;

	r = tpm_attest_item(a, which, &data, &len);
	return r < 0 ? r : json_set_b64(obj, key, data, len);
}

/* The base64 member key of the API's answer, decoded into a malloc()ed buffer. */
static int json_get_b64(const json_t *obj, const char *key, uint8_t **ret, size_t *ret_len)
{
	const json_t *v = json_object_get(obj, key);
	size_t n, len;
	uint8_t *buf;

	if (!json_is_string(v) || (n = json_string_length(v)) == 0 || n > 8192)
		return -EPROTO;
	buf = malloc(n);
	if (!buf)
		return -ENOMEM;
	if (crypto_b64_decode(json_string_value(v), n, buf, n, &len) < 0) {
		free(buf);
		return -EPROTO;
	}
	*ret = buf;
	*ret_len = len;
	return 0;
}

/* jansson frees its strings unwiped: wipe a secret member in place first. */
static void json_wipe_member(json_t *obj, const char *key)
{
	json_t *v = json_object_get(obj, key);

	if (json_is_string(v))
		crypto_wipe((void *)json_string_value(v), json_string_length(v));
}

/* The evidence of POST /devices/challenge: name, EK certificate, EK and AK publics. */
static json_t *device_evidence(const struct tpm_attest *a)
{
	char host[256] = "azaionfs";
	json_t *ev = json_object();

	gethostname(host, sizeof(host) - 1);
	if (!ev || json_object_set_new(ev, "name", json_string(host)) ||
	    json_set_item(ev, "ek_cert", a, TPM_ATTEST_EK_CERT) < 0 ||
	    json_set_item(ev, "ek_public", a, TPM_ATTEST_EK_PUBLIC) < 0 ||
	    json_set_item(ev, "ak_public", a, TPM_ATTEST_AK_PUBLIC) < 0) {
		json_decref(ev);
		return NULL;
	}
	return ev;
}

/* The quote member of POST /devices, when the key is bound to PCRs; NULL otherwise. */
static int device_quote(const struct tpm_attest *a, json_t **ret)
{
	json_t *q = NULL, *pcrs, *bank;
	const uint8_t *digest;
	const char *name;
	char idx[16], hex[2 * 64 + 1];
	unsigned index;
	size_t i, len;
	int r;

	*ret = NULL;
	q = json_object();
	pcrs = json_object();
	if (!q || !pcrs || json_object_set_new(q, "pcrs", pcrs)) {
		json_decref(q);
		return -ENOMEM;
	}
	r = json_set_item(q, "info", a, TPM_ATTEST_QUOTE_INFO);
	if (r == -ENOENT) {
		json_decref(q);
		return 0;
	}
	if (r == 0)
		r = json_set_item(q, "signature", a, TPM_ATTEST_QUOTE_SIGNATURE);
	for (i = 0; r == 0 && tpm_attest_pcr(a, i, &name, &index, &digest, &len) == 0; i++) {
		bank = json_object_get(pcrs, name);
		if (!bank && json_object_set_new(pcrs, name, bank = json_object()))
			r = -ENOMEM;
		if (r == 0 && len * 2 < sizeof(hex)) {
			crypto_hex(digest, len, hex);
			snprintf(idx, sizeof(idx), "%u", index);
			if (json_object_set_new(bank, idx, json_string(hex)))
				r = -ENOMEM;
		}
	}
	if (r < 0) {
		json_decref(q);
		return r;
	}
	*ret = q;
	return 0;
}

/* The proof of POST /devices, from a proved attempt and the challenge's id. */
static json_t *device_proof(const struct tpm_attest *a, json_t *challenge_id, const char *pem)
{
	json_t *p = json_object(), *quote = NULL;

	if (!p || json_object_set(p, "challenge_id", challenge_id) ||
	    json_set_item(p, "secret", a, TPM_ATTEST_SECRET) < 0 ||
	    json_object_set_new(p, "public_key", json_string(pem)) ||
	    json_set_item(p, "dk_public", a, TPM_ATTEST_DK_PUBLIC) < 0 ||
	    json_set_item(p, "certify_info", a, TPM_ATTEST_CERTIFY_INFO) < 0 ||
	    json_set_item(p, "certify_signature", a, TPM_ATTEST_CERTIFY_SIGNATURE) < 0 ||
	    device_quote(a, &quote) < 0 || (quote && json_object_set_new(p, "quote", quote))) {
		json_decref(p);
		return NULL;
	}
	return p;
}

/*
 * Records a failed enrolment step in the status and gives the caller its
 * words (WHAT: WHY) to say; returns r.
 */
static int device_enrol_failed(struct device *d, int r, const char *what, const char *why,
			       char **ret_msg)
{
	char msg[512];

	snprintf(msg, sizeof(msg), "enrolment: %s: %s", what, why);
	device_set_status(d, "error", msg);
	msg_set(ret_msg, "%s: %s", what, why);
	return r;
}

/*
 * Attested enrolment of the loaded device key (docs/trust.md 1): evidence,
 * challenge, proof, device id. A refusal (-EPERM) names the API's reason;
 * the next login starts again from a new challenge.
 */
static int device_register(struct device *d, const char *pem, char **ret_msg)
{
	struct tpm_attest *a = NULL;
	json_t *ev = NULL, *ch = NULL, *proof = NULL;
	uint8_t *blob = NULL, *sec = NULL, *nonce = NULL;
	size_t blob_len = 0, sec_len = 0, nonce_len = 0;
	char *id = NULL, *detail = NULL;
	int r;

	r = tpm_attest_new(d->tpm, &a);
	if (r < 0) {
		device_enrol_failed(d, r, "this TPM cannot attest its key", tpm_last_error(d->tpm),
				    ret_msg);
		goto out;
	}
	ev = device_evidence(a);
	if (!ev) {
		r = -ENOMEM;
		goto out;
	}
	r = session_device_challenge(d->s, ev, &ch, &detail);
	if (r == -EPERM) {
		device_enrol_failed(d, r, "the API refused this TPM's EK certificate or AK",
				    detail ? detail : "no reason given", ret_msg);
		goto out;
	}
	if (r < 0) {
		device_enrol_failed(d, r, "POST /devices/challenge failed", log_strerror(r),
				    ret_msg);
		goto out;
	}
	if (!json_object_get(ch, "challenge_id") ||
	    json_get_b64(ch, "credential_blob", &blob, &blob_len) < 0 ||
	    json_get_b64(ch, "encrypted_secret", &sec, &sec_len) < 0 ||
	    json_get_b64(ch, "nonce", &nonce, &nonce_len) < 0) {
		r = device_enrol_failed(d, -EPROTO, "the API's challenge",
					"lacks challenge_id, credential_blob, encrypted_secret "
					"or nonce (base64)",
					ret_msg);
		goto out;
	}
	r = tpm_attest_prove(d->tpm, a, blob, blob_len, sec, sec_len, nonce, nonce_len);
	if (r < 0) {
		device_enrol_failed(d, r, "answering the API's challenge", tpm_last_error(d->tpm),
				    ret_msg);
		goto out;
	}
	proof = device_proof(a, json_object_get(ch, "challenge_id"), pem);
	if (!proof) {
		r = -ENOMEM;
		goto out;
	}
	r = session_device_enrol(d->s, proof, &id, &detail);
	json_wipe_member(proof, "secret");
	if (r == -EPERM) {
		device_enrol_failed(d, r, "the API refused the proof (POST /devices)",
				    detail ? detail : "no reason given", ret_msg);
		goto out;
	}
	if (r < 0) {
		device_enrol_failed(d, r, "POST /devices failed", log_strerror(r), ret_msg);
		goto out;
	}
	r = device_write_id(d, id);
	if (r == -EPROTO) {
		device_enrol_failed(
			d, r, "the API's device id",
			"not 1 to " DEVICE_ID_MAX_TEXT
			" visible ASCII characters (it goes into a request header); the API "
			"is broken or not the one configured",
			ret_msg);
	} else if (r < 0) {
		char what[PATH_MAX + 32];

		snprintf(what, sizeof(what), "cannot write %s", d->id_path);
		device_enrol_failed(d, r, what, strerror(-r), ret_msg);
	} else {
		pthread_mutex_lock(&d->lock);
		snprintf(d->id, sizeof(d->id), "%s", id);
		device_stamp_of(d->id_path, &d->id_stamp);
		device_status_locked(d, "ok", NULL);
		pthread_mutex_unlock(&d->lock);
		log_info("TPM: device enrolled as %s (attested by its EK certificate)", id);
	}
out:
	free(id);
	free(detail);
	free(blob);
	free(sec);
	free(nonce);
	json_decref(proof);
	json_decref(ch);
	json_decref(ev);
	tpm_attest_free(a);
	return r;
}

/* The legacy resource_secret to seal: the configured file's, else the one unsealed. */
static int device_secret_to_seal(struct device *d, char **ret, size_t *ret_len, char **ret_msg)
{
	char *secret = NULL, *msg = NULL;
	size_t len = 0;
	int r = 0;

	*ret = NULL;
	*ret_len = 0;
	if (d->c->legacy_resource_secret_file) {
		r = config_read_secret_file(d->c->legacy_resource_secret_file, 1, &secret, &len,
					    &msg);
		if (r < 0) {
			device_enrol_failed(d, r, "legacy_resource_secret_file", msg_or(msg, r),
					    ret_msg);
			free(msg);
			return r;
		}
		/* As the read path takes it: trailing line ends are not part of it. */
		while (len > 0 && (secret[len - 1] == '\n' || secret[len - 1] == '\r'))
			len--;
		if (len > DEVICE_SECRET_MAX) {
			char why[64];

			secmem_free(secret);
			snprintf(why, sizeof(why), "it holds more than %d bytes",
				 DEVICE_SECRET_MAX);
			return device_enrol_failed(d, -E2BIG, "legacy_resource_secret_file", why,
						   ret_msg);
		}
		*ret = secret;
		*ret_len = len;
		return 0;
	}
	pthread_mutex_lock(&d->lock);
	if (d->rsecret) {
		secret = secmem_strndup(d->rsecret, d->rsecret_len);
		len = d->rsecret_len;
		r = secret ? 0 : -ENOMEM;
	}
	pthread_mutex_unlock(&d->lock);
	if (r < 0)
		return r;
	*ret = secret;
	*ret_len = len;
	return 0;
}

/* A new device key and sealed store, then POST /devices. d->busy is held. */
static int device_do_enroll(struct device *d, const char *creds, size_t clen, char **ret_msg)
{
	char *rs = NULL, *pem = NULL;
	uint8_t *packed = NULL, digest[32];
	size_t rlen = 0, plen = 0;
	int r;

	r = device_secret_to_seal(d, &rs, &rlen, ret_msg);
	if (r < 0)
		return r;
	r = device_pack(creds, clen, rs, rlen, &packed, &plen);
	if (r < 0)
		goto out;
	r = tpm_enroll(d->tpm, packed, plen, &pem);
	if (r < 0) {
		device_enrol_failed(d, r, "cannot make the device key and sealed store",
				    tpm_last_error(d->tpm), ret_msg);
		goto out;
	}
	crypto_sha256(creds, clen, digest);
	pthread_mutex_lock(&d->lock);
	d->loaded = 1;
	d->sealed_ok = 1;
	memcpy(d->sealed_digest, digest, sizeof(digest));
	if (rs) {
		secmem_free(d->rsecret);
		d->rsecret = rs;
		d->rsecret_len = rlen;
		rs = NULL;
	}
	/* A new key: the old id is another device's now. */
	d->id[0] = '\0';
	device_status_locked(d, "ok", NULL);
	pthread_mutex_unlock(&d->lock);
	crypto_wipe(digest, sizeof(digest));
	unlink(d->id_path);
	r = device_register(d, pem, ret_msg);
out:
	free(pem);
	secmem_free(packed);
	secmem_free(rs);
	return r;
}

static int device_enroll_common(struct device *d, int force, char **ret_msg)
{
	char *blob = NULL, *pem = NULL;
	uint8_t digest[32];
	size_t len = 0;
	int r, need, have_id, differ = 0;

	if (!d->tpm)
		return -ENODEV;
	pthread_mutex_lock(&d->lock);
	if (d->busy) {
		pthread_mutex_unlock(&d->lock);
		return -EBUSY;
	}
	d->busy = 1;
	need = force || !d->loaded || !d->sealed_ok;
	have_id = d->id[0] != '\0';
	pthread_mutex_unlock(&d->lock);

	r = session_credentials_blob(d->s, &blob, &len);
	if (r == 0 && !need) {
		crypto_sha256(blob, len, digest);
		pthread_mutex_lock(&d->lock);
		differ = crypto_memcmp(digest, d->sealed_digest, sizeof(digest)) != 0;
		pthread_mutex_unlock(&d->lock);
		crypto_wipe(digest, sizeof(digest));
		if (differ) {
			log_info("TPM: the credentials differ from the sealed ones: re-enrolling");
			need = 1;
		}
	}
	if (!need && !have_id && r == 0) {
		/*
		 * Enrolled before, but never registered (the API refused, or was
		 * away): a new key and a new attempt from a new challenge.
		 */
		log_info("TPM: the device key has no device id yet: enrolling again");
		need = 1;
	}
	if (!need) {
		r = 0;
		goto out;
	}
	if (r < 0) {
		log_info("TPM: enrolment waits for credentials (a login)");
		goto out;
	}
	r = device_do_enroll(d, blob, len, ret_msg);
out:
	free(pem);
	secmem_free(blob);
	pthread_mutex_lock(&d->lock);
	d->busy = 0;
	pthread_mutex_unlock(&d->lock);
	return r;
}

int device_enroll_if_needed(struct device *d, char **ret_msg)
{
	return device_enroll_common(d, 0, ret_msg);
}

int device_enroll(struct device *d, char **ret_msg)
{
	return device_enroll_common(d, 1, ret_msg);
}

/* ---- use -------------------------------------------------------------------- */

/*
 * Another process (azaionctl enroll) enrolled this state_dir anew: the
 * device_id file changed. Reloads the key and the store, takes the new id,
 * and gives the session the new sealed credentials unless it has
 * configured ones.
 */
static void device_refresh(struct device *d)
{
	struct device_stamp now = {0};
	int changed, creds_sealed, has_creds;

	if (device_stamp_of(d->id_path, &now) < 0)
		return;
	pthread_mutex_lock(&d->lock);
	changed = !d->busy && !device_stamp_eq(&now, &d->id_stamp);
	if (changed)
		d->busy = 1;
	pthread_mutex_unlock(&d->lock);
	if (!changed)
		return;
	log_info("TPM: %s changed: another process enrolled this device; reloading", d->id_path);
	if (device_unseal(d) < 0) {
		char reason[sizeof(d->reason)];

		/* A reload in the background: nobody else to say it. */
		device_status(d, reason, sizeof(reason));
		log_err("TPM: reloading: %s", reason);
	}
	pthread_mutex_lock(&d->lock);
	device_read_id_locked(d);
	creds_sealed = d->creds_sealed;
	pthread_mutex_unlock(&d->lock);
	has_creds = session_has_credentials(d->s);
	if (!has_creds || creds_sealed) {
		device_hand_over(d);
	} else {
		pthread_mutex_lock(&d->lock);
		device_drop_unsealed_locked(d);
		pthread_mutex_unlock(&d->lock);
	}
	pthread_mutex_lock(&d->lock);
	d->busy = 0;
	pthread_mutex_unlock(&d->lock);
}

int device_id(struct device *d, char *buf, size_t cap)
{
	int r = 0;

	if (!d->tpm)
		return -ENOENT;
	device_refresh(d);
	pthread_mutex_lock(&d->lock);
	if (!d->id[0])
		r = -ENOENT;
	else if (strlen(d->id) >= cap)
		r = -ENAMETOOLONG;
	else
		memcpy(buf, d->id, strlen(d->id) + 1);
	pthread_mutex_unlock(&d->lock);
	return r;
}

int device_unwrap(struct device *d, const uint8_t *wrapped, size_t len, uint8_t *key, size_t cap,
		  size_t *ret_len, char **ret_msg)
{
	int r;

	if (!d->tpm) {
		msg_set(ret_msg, "format-2 files need a TPM (%s)", d->reason);
		return -EACCES;
	}
	r = tpm_unwrap(d->tpm, wrapped, len, key, cap, ret_len);
	if (r == 0)
		return 0;
	msg_set(ret_msg, "TPM: the content key does not unwrap: %s", tpm_last_error(d->tpm));
	if (r == -EBADMSG)
		return -EIO;
	if (r == -EACCES || r == -ESTALE) {
		/* The boot state changed while running, or the blobs are not this TPM's. */
		pthread_mutex_lock(&d->lock);
		d->sealed_ok = 0;
		device_status_locked(d, "error", tpm_last_error(d->tpm));
		pthread_mutex_unlock(&d->lock);
	}
	return -EACCES;
}

int device_resource_secret(struct device *d, char **ret, size_t *ret_len)
{
	char *s = NULL;
	size_t n = 0;
	int r = -ENOENT;

	pthread_mutex_lock(&d->lock);
	if (d->rsecret) {
		s = secmem_strndup(d->rsecret, d->rsecret_len);
		n = d->rsecret_len;
		r = s ? 0 : -ENOMEM;
	} else if (d->tpm && tpm_is_enrolled(d->tpm) && !d->sealed_ok) {
		r = -ENOKEY;
	}
	pthread_mutex_unlock(&d->lock);
	if (r < 0)
		return r;
	*ret = s;
	*ret_len = n;
	return 0;
}

const char *device_status(struct device *d, char *reason, size_t cap)
{
	const char *st;

	pthread_mutex_lock(&d->lock);
	st = d->status;
	if (reason && cap)
		snprintf(reason, cap, "%s", d->reason);
	pthread_mutex_unlock(&d->lock);
	return st;
}
