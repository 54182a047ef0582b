/*
 * tpm.c - the device's TPM objects of docs/tpm.md (storage root key, device
 * key, sealed store) and the flows on them, through tpm2-tss's ESAPI;
 * and the TPM's half of attested enrolment (docs/trust.md 1): EK certificate,
 * EK, attestation key, ActivateCredential, Certify, Quote.
 *
 * This is the only file that talks to the TPM. A struct tpm owns one TCTI
 * and one ESYS context. Locking: every public function except
 * tpm_last_error() holds t->lock for its whole run, because an ESYS context
 * is not thread-safe and the handles it keeps (SRK, device key) are shared
 * state; holding it across TPM commands costs nothing, the TPM runs one
 * command at a time anyway.
 *
 * Sessions: every command that carries a secret (Create of the sealed
 * object, Unseal, RSA_Decrypt) runs with an HMAC session salted with the
 * SRK and parameter encryption (AES-128-CFB), so that nothing secret
 * crosses the bus in the clear. With a PCR binding the object is
 * authorised by a policy session (PolicyPCR; unsalted, as it carries no
 * secret: docs/tpm.md "Sessions") and the HMAC session rides along in the
 * second slot for the encryption.
 *
 * Files in state_dir, mode 0600, each written to a temporary and renamed:
 *   tpm-srk.pub           the SRK's TPM2B_PUBLIC at enrolment
 *   tpm-pcrs              the PCR selection the objects are bound to (text)
 *   tpm-dk.pub, .priv     device key, TPM2B_PUBLIC and TPM2B_PRIVATE
 *   tpm-seal.pub, .priv   sealed object holding the store key
 *   tpm-store             "AZTS" 1 0 0 0 || nonce(12) || AES-256-GCM(secret)
 *                         || tag(16), the header and nonce authenticated
 */
#include "tpm/tpm.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>

#include <tss2/tss2_esys.h>
#include <tss2/tss2_mu.h>
#include <tss2/tss2_rc.h>
#include <tss2/tss2_tctildr.h>

#include "crypto/crypto.h"

#define TPM_SRK_HANDLE 0x81000001u
#define TPM_STORE_KEY_LEN 32
#define TPM_STORE_MAX (64 * 1024) /* largest secret the store holds */
#define TPM_STORE_HDR 8
#define TPM_STORE_NONCE 12
#define TPM_STORE_TAG 16
#define TPM_FILE_MAX (TPM_STORE_MAX + 256) /* largest state file read */
#define TPM_PCR_MAX 24
#define TPM_ERR_LEN 512
#define TPM_QUICK_WAIT 2 /* seconds: tpm = auto, a TCTI that fails at once */
/*
 * Handle ranges for GetCapability, spelled out: tss2's TPM2_HR_TRANSIENT
 * shifts an int 0x80 left by 24, which is undefined behaviour in C.
 */
#define TPM_HANDLES_TRANSIENT 0x80000000u
#define TPM_HANDLES_SESSIONS 0x02000000u /* loaded HMAC (0x02) and policy (0x03) sessions */

/* The store is sealed by crypto_gcm_seal(): its sizes are that function's. */
_Static_assert(TPM_STORE_KEY_LEN == CRYPTO_KEY_SIZE, "store key is an AES-256 key");
_Static_assert(TPM_STORE_NONCE == CRYPTO_GCM_NONCE_SIZE, "store nonce is a GCM nonce");
_Static_assert(TPM_STORE_TAG == CRYPTO_TAG_SIZE, "store tag is a GCM tag");

static const uint8_t tpm_store_magic[TPM_STORE_HDR] = {'A', 'Z', 'T', 'S', 1, 0, 0, 0};

#define F_SRK "tpm-srk.pub"
#define F_PCRS "tpm-pcrs"
#define F_DK_PUB "tpm-dk.pub"
#define F_DK_PRIV "tpm-dk.priv"
#define F_SEAL_PUB "tpm-seal.pub"
#define F_SEAL_PRIV "tpm-seal.priv"
#define F_STORE "tpm-store"

static const char *const tpm_files[] = {F_SRK,	    F_PCRS,	 F_DK_PUB, F_DK_PRIV,
					F_SEAL_PUB, F_SEAL_PRIV, F_STORE};
#define TPM_NFILES (sizeof(tpm_files) / sizeof(tpm_files[0]))

struct tpm {
	pthread_mutex_t lock;
	TSS2_TCTI_CONTEXT *tcti;
	ESYS_CONTEXT *esys;
	tpm_log_fn log;
	char *tcti_conf;
	char *state_dir;
	TPML_PCR_SELECTION conf_pcrs; /* from opts, used at enrolment */
	uint8_t owner_auth[sizeof(TPMU_HA)];
	size_t owner_auth_len;

	int quick; /* tpm = auto: absent at once when plainly absent */

	/*
	 * The SRK and the device key occupy TPM slots only during a call:
	 * tpm_call_end saves their contexts and flushes them (park), the next
	 * call loads the contexts again, so that a TPM without a resource
	 * manager keeps its few slots free for other users between calls.
	 */
	ESYS_TR srk;	   /* ESYS_TR_NONE while parked or not yet needed */
	int srk_transient; /* created here, so parked and flushed */
	TPM2B_PUBLIC srk_pub;
	TPMS_CONTEXT *srk_ctx;

	/* Valid once loaded: the enrolled objects. */
	int loaded;
	ESYS_TR dk;
	TPMS_CONTEXT *dk_ctx;
	TPM2B_PUBLIC dk_pub;
	TPM2B_PRIVATE dk_priv;
	TPM2B_PUBLIC seal_pub;
	TPM2B_PRIVATE seal_priv;
	TPML_PCR_SELECTION pcrs; /* what the objects are bound to */
	uint8_t *store;
	size_t store_len;

	char err[TPM_ERR_LEN];
};

/* Enrolment's output before it replaces anything. */
struct tpm_enrolment {
	TPM2B_PUBLIC dk_pub;
	TPM2B_PRIVATE dk_priv;
	TPM2B_PUBLIC seal_pub;
	TPM2B_PRIVATE seal_priv;
	uint8_t *store;
	size_t store_len;
};

/* ---- messages ---------------------------------------------------------- */

static void tpm_say(struct tpm *t, int prio, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static int tpm_fail(struct tpm *t, int err, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static void tpm_vsay(struct tpm *t, int prio, const char *fmt, va_list ap)
	__attribute__((format(printf, 3, 0)));

static void tpm_vsay(struct tpm *t, int prio, const char *fmt, va_list ap)
{
	char msg[TPM_ERR_LEN];

	vsnprintf(msg, sizeof(msg), fmt, ap);
	if (prio <= LOG_ERR)
		snprintf(t->err, sizeof(t->err), "%s", msg);
	if (t->log)
		t->log(prio, msg);
}

static void tpm_say(struct tpm *t, int prio, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	tpm_vsay(t, prio, fmt, ap);
	va_end(ap);
}

/* Records and logs the cause once; returns err (a negative errno). */
static int tpm_fail(struct tpm *t, int err, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	tpm_vsay(t, LOG_ERR, fmt, ap);
	va_end(ap);
	return err;
}

/* The TPM's own response code without layer and parameter/handle/session number. */
static TSS2_RC tpm_rc_base(TSS2_RC rc)
{
	TSS2_RC layer = rc & TSS2_RC_LAYER_MASK;

	if (layer != TSS2_TPM_RC_LAYER && layer != TSS2_RESMGR_TPM_RC_LAYER)
		return rc;
	rc &= ~TSS2_RC_LAYER_MASK;
	if (rc & TPM2_RC_FMT1)
		return rc & (TPM2_RC_FMT1 | 0x3f);
	return rc & 0xfff;
}

/*
 * The one translation of a TSS2_RC: decoded, logged, recorded, mapped to
 * an errno. what names the operation for the operator.
 */
static int tpm_rc(struct tpm *t, TSS2_RC rc, const char *what)
{
	TSS2_RC base = tpm_rc_base(rc);
	const char *dec = Tss2_RC_Decode(rc);

	switch (base) {
	case TPM2_RC_POLICY_FAIL:
	case TPM2_RC_PCR_CHANGED:
		return tpm_fail(t, -EACCES,
				"tpm: %s: the PCR policy does not hold, the boot state changed "
				"since enrolment (%s); a new login re-enrols the device",
				what, dec);
	case TPM2_RC_AUTH_FAIL:
	case TPM2_RC_BAD_AUTH:
		return tpm_fail(t, -EACCES,
				"tpm: %s: authorisation refused (%s); is the owner password "
				"(tpm_owner_auth_file) right?",
				what, dec);
	case TPM2_RC_INTEGRITY:
	case TPM2_RC_BINDING:
		return tpm_fail(t, -ESTALE,
				"tpm: %s: the blobs in state_dir are not this TPM's (%s); a new "
				"login re-enrols the device",
				what, dec);
	case TPM2_RC_LOCKOUT:
		return tpm_fail(t, -EIO, "tpm: %s: the TPM is in dictionary-attack lockout (%s)",
				what, dec);
	case TPM2_RC_OBJECT_MEMORY:
	case TPM2_RC_SESSION_MEMORY:
	case TPM2_RC_OBJECT_HANDLES:
	case TPM2_RC_SESSION_HANDLES:
		/* A warning only: the caller flushes leftovers and retries once. */
		snprintf(t->err, sizeof(t->err),
			 "tpm: %s: the TPM has no free object or session slot (%s); other "
			 "programs hold them",
			 what, dec);
		if (t->log)
			t->log(LOG_WARNING, t->err);
		return -EBUSY;
	default:
		return tpm_fail(t, -EIO, "tpm: %s: %s", what, dec);
	}
}

/* ---- PCR selection ----------------------------------------------------- */

static const struct {
	const char *name;
	TPMI_ALG_HASH alg;
} tpm_banks[] = {
	{"sha1", TPM2_ALG_SHA1},
	{"sha256", TPM2_ALG_SHA256},
	{"sha384", TPM2_ALG_SHA384},
	{"sha512", TPM2_ALG_SHA512},
};
#define TPM_NBANKS (sizeof(tpm_banks) / sizeof(tpm_banks[0]))

/*
 * "sha256:0,2,7", several banks joined by '+' ("sha1:7+sha256:7"), NULL or
 * "" for none. On error, why says what is wrong.
 */
static int tpm_pcr_parse(const char *s, TPML_PCR_SELECTION *ret, char *why, size_t whylen)
{
	TPML_PCR_SELECTION sel = {0};
	const char *p = s;

	if (!s)
		s = p = "";
	while (*p == ' ' || *p == '\t')
		p++;
	if (*p == '\0') {
		*ret = sel;
		return 0;
	}
	for (;;) {
		const char *colon = strchr(p, ':');
		TPMS_PCR_SELECTION *bank;
		size_t i, n;

		if (!colon) {
			snprintf(why, whylen, "expected BANK:N[,N...] (e.g. sha256:0,2,7)");
			return -EINVAL;
		}
		n = (size_t)(colon - p);
		for (i = 0; i < TPM_NBANKS; i++)
			if (strlen(tpm_banks[i].name) == n && !strncmp(p, tpm_banks[i].name, n))
				break;
		if (i == TPM_NBANKS) {
			snprintf(why, whylen,
				 "unknown bank \"%.*s\" (sha1, sha256, sha384, sha512)",
				 (int)(n > 16 ? 16 : n), p);
			return -EINVAL;
		}
		for (n = 0; n < sel.count; n++)
			if (sel.pcrSelections[n].hash == tpm_banks[i].alg) {
				snprintf(why, whylen, "bank %s named twice", tpm_banks[i].name);
				return -EINVAL;
			}
		if (sel.count >= TPM2_NUM_PCR_BANKS) {
			snprintf(why, whylen, "too many banks");
			return -EINVAL;
		}
		bank = &sel.pcrSelections[sel.count++];
		bank->hash = tpm_banks[i].alg;
		bank->sizeofSelect = 3;
		p = colon + 1;
		for (;;) {
			char *end;
			unsigned long v;

			if (*p < '0' || *p > '9') {
				snprintf(why, whylen, "expected a PCR number after \"%.*s\"",
					 (int)(p - s > 40 ? 40 : p - s), s);
				return -EINVAL;
			}
			errno = 0;
			v = strtoul(p, &end, 10);
			if (errno || v >= TPM_PCR_MAX) {
				snprintf(why, whylen, "PCR %.*s out of range 0..%d",
					 (int)(end - p > 10 ? 10 : end - p), p, TPM_PCR_MAX - 1);
				return -EINVAL;
			}
			bank->pcrSelect[v / 8] |= (uint8_t)(1u << (v % 8));
			p = end;
			if (*p != ',')
				break;
			p++;
		}
		while (*p == ' ' || *p == '\t')
			p++;
		if (*p == '\0')
			break;
		if (*p != '+') {
			snprintf(why, whylen, "unexpected \"%c\" after \"%.*s\"", *p,
				 (int)(p - s > 40 ? 40 : p - s), s);
			return -EINVAL;
		}
		p++;
	}
	*ret = sel;
	return 0;
}

/* The canonical text of a selection ("" for none). */
static void tpm_pcr_format(const TPML_PCR_SELECTION *sel, char *buf, size_t len)
{
	size_t off = 0;
	uint32_t b;

	buf[0] = '\0';
	for (b = 0; b < sel->count && b < TPM2_NUM_PCR_BANKS; b++) {
		const TPMS_PCR_SELECTION *bank = &sel->pcrSelections[b];
		const char *name = "?";
		int first = 1;
		size_t i;

		for (i = 0; i < TPM_NBANKS; i++)
			if (tpm_banks[i].alg == bank->hash)
				name = tpm_banks[i].name;
		off += (size_t)snprintf(buf + off, off < len ? len - off : 0, "%s%s:", b ? "+" : "",
					name);
		for (i = 0; i < TPM_PCR_MAX && i / 8 < bank->sizeofSelect; i++) {
			if (!(bank->pcrSelect[i / 8] & (1u << (i % 8))))
				continue;
			off += (size_t)snprintf(buf + off, off < len ? len - off : 0, "%s%zu",
						first ? "" : ",", i);
			first = 0;
		}
	}
}

static int tpm_pcr_equal(const TPML_PCR_SELECTION *a, const TPML_PCR_SELECTION *b)
{
	char fa[256], fb[256];

	tpm_pcr_format(a, fa, sizeof(fa));
	tpm_pcr_format(b, fb, sizeof(fb));
	return !strcmp(fa, fb);
}

/* ---- state_dir files --------------------------------------------------- */

static int tpm_state_path(struct tpm *t, const char *name, char *buf, size_t len)
{
	int n = snprintf(buf, len, "%s/%s", t->state_dir, name);

	if (n < 0 || (size_t)n >= len)
		return tpm_fail(t, -ENAMETOOLONG, "tpm: state_dir path too long");
	return 0;
}

/*
 * Reads a whole state file, at most TPM_FILE_MAX bytes. -ENOENT is
 * returned without a message: the caller knows what a missing file means.
 */
static int tpm_file_read(struct tpm *t, const char *name, uint8_t **ret_buf, size_t *ret_len)
{
	char path[PATH_MAX];
	struct stat st;
	uint8_t *buf = NULL;
	size_t off = 0;
	int fd, r;

	r = tpm_state_path(t, name, path, sizeof(path));
	if (r < 0)
		return r;
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0) {
		if (errno == ENOENT)
			return -ENOENT;
		return tpm_fail(t, -EIO, "tpm: cannot open %s: %s", path, strerror(errno));
	}
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_size > TPM_FILE_MAX) {
		r = tpm_fail(t, -EIO, "tpm: %s is not a regular file of at most %d bytes", path,
			     TPM_FILE_MAX);
		goto out_close;
	}
	buf = malloc((size_t)st.st_size + 1);
	if (!buf) {
		r = tpm_fail(t, -ENOMEM, "tpm: out of memory reading %s", path);
		goto out_close;
	}
	while (off < (size_t)st.st_size) {
		ssize_t n = read(fd, buf + off, (size_t)st.st_size - off);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			r = tpm_fail(t, -EIO, "tpm: cannot read %s: %s", path,
				     n < 0 ? strerror(errno) : "short file");
			goto out_free;
		}
		off += (size_t)n;
	}
	buf[off] = '\0';
	*ret_buf = buf;
	*ret_len = off;
	buf = NULL;
	r = 0;
out_free:
	free(buf);
out_close:
	close(fd);
	return r;
}

/* Writes data to a new temporary file next to name (mode 0600); returns its path. */
static int tpm_file_write_tmp(struct tpm *t, const char *name, const void *data, size_t len,
			      char *ret_tmp, size_t tmplen)
{
	const uint8_t *p = data;
	int fd, r;

	if (snprintf(ret_tmp, tmplen, "%s/.%s.XXXXXX", t->state_dir, name) >= (int)tmplen)
		return tpm_fail(t, -ENAMETOOLONG, "tpm: state_dir path too long");
	fd = mkostemp(ret_tmp, O_CLOEXEC);
	if (fd < 0)
		return tpm_fail(t, -EIO, "tpm: cannot create a file in %s: %s", t->state_dir,
				strerror(errno));
	if (fchmod(fd, 0600) < 0) {
		r = tpm_fail(t, -EIO, "tpm: chmod %s: %s", ret_tmp, strerror(errno));
		goto out_unlink;
	}
	while (len > 0) {
		ssize_t n = write(fd, p, len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			r = tpm_fail(t, -EIO, "tpm: cannot write %s: %s", ret_tmp,
				     n < 0 ? strerror(errno) : "no progress");
			goto out_unlink;
		}
		p += n;
		len -= (size_t)n;
	}
	if (fsync(fd) < 0) {
		r = tpm_fail(t, -EIO, "tpm: fsync %s: %s", ret_tmp, strerror(errno));
		goto out_unlink;
	}
	if (close(fd) < 0) {
		fd = -1;
		r = tpm_fail(t, -EIO, "tpm: close %s: %s", ret_tmp, strerror(errno));
		goto out_unlink;
	}
	return 0;
out_unlink:
	if (fd >= 0)
		close(fd);
	unlink(ret_tmp);
	return r;
}

static int tpm_state_dir_prepare(struct tpm *t)
{
	struct stat st;

	if (mkdir(t->state_dir, 0700) < 0 && errno != EEXIST)
		return tpm_fail(t, -EIO, "tpm: cannot create state_dir %s: %s", t->state_dir,
				strerror(errno));
	if (stat(t->state_dir, &st) < 0 || !S_ISDIR(st.st_mode))
		return tpm_fail(t, -EIO, "tpm: state_dir %s is not a directory", t->state_dir);
	return 0;
}

/* ---- marshalling -------------------------------------------------------- */

static int tpm_pub_marshal(struct tpm *t, const TPM2B_PUBLIC *pub, uint8_t *buf, size_t cap,
			   size_t *ret_len)
{
	size_t off = 0;
	TSS2_RC rc = Tss2_MU_TPM2B_PUBLIC_Marshal(pub, buf, cap, &off);

	if (rc != TSS2_RC_SUCCESS)
		return tpm_rc(t, rc, "marshalling a public area");
	*ret_len = off;
	return 0;
}

static int tpm_pub_unmarshal(struct tpm *t, const char *name, const uint8_t *buf, size_t len,
			     TPM2B_PUBLIC *ret)
{
	TPM2B_PUBLIC pub = {0};
	size_t off = 0;
	TSS2_RC rc = Tss2_MU_TPM2B_PUBLIC_Unmarshal(buf, len, &off, &pub);

	if (rc != TSS2_RC_SUCCESS || off != len)
		return tpm_fail(t, -EIO, "tpm: %s/%s is corrupt", t->state_dir, name);
	*ret = pub;
	return 0;
}

static int tpm_priv_unmarshal(struct tpm *t, const char *name, const uint8_t *buf, size_t len,
			      TPM2B_PRIVATE *ret)
{
	TPM2B_PRIVATE priv = {0};
	size_t off = 0;
	TSS2_RC rc = Tss2_MU_TPM2B_PRIVATE_Unmarshal(buf, len, &off, &priv);

	if (rc != TSS2_RC_SUCCESS || off != len)
		return tpm_fail(t, -EIO, "tpm: %s/%s is corrupt", t->state_dir, name);
	*ret = priv;
	return 0;
}

/* ---- the store's AES-256-GCM (crypto/) and the PEM export (OpenSSL) ---- */

static int tpm_store_seal(struct tpm *t, const uint8_t key[TPM_STORE_KEY_LEN], const void *secret,
			  size_t len, uint8_t **ret_blob, size_t *ret_len)
{
	size_t total = TPM_STORE_HDR + TPM_STORE_NONCE + len + TPM_STORE_TAG;
	uint8_t *blob, *nonce, *ct;
	int r;

	if (len > TPM_STORE_MAX)
		return tpm_fail(t, -EINVAL, "tpm: secret of %zu bytes exceeds the store's %d", len,
				TPM_STORE_MAX);
	blob = malloc(total);
	if (!blob)
		return tpm_fail(t, -ENOMEM, "tpm: out of memory");
	memcpy(blob, tpm_store_magic, TPM_STORE_HDR);
	nonce = blob + TPM_STORE_HDR;
	ct = nonce + TPM_STORE_NONCE;
	if (crypto_random(nonce, TPM_STORE_NONCE) < 0) {
		r = tpm_fail(t, -EIO, "tpm: no random bytes for the store");
		goto out_free;
	}
	/* The header and the nonce are the additional data. */
	r = crypto_gcm_seal(key, nonce, blob, TPM_STORE_HDR + TPM_STORE_NONCE, secret, len, ct);
	if (r < 0) {
		r = tpm_fail(t, r, "tpm: AES-256-GCM encryption of the store failed");
		goto out_free;
	}
	*ret_blob = blob;
	*ret_len = total;
	blob = NULL;
out_free:
	free(blob);
	return r;
}

static int tpm_store_open(struct tpm *t, const uint8_t key[TPM_STORE_KEY_LEN], const uint8_t *blob,
			  size_t len, uint8_t *buf, size_t cap, size_t *ret_len)
{
	const size_t aad = TPM_STORE_HDR + TPM_STORE_NONCE;
	size_t ptlen;
	uint8_t *pt;
	int r;

	if (len < aad + TPM_STORE_TAG || memcmp(blob, tpm_store_magic, TPM_STORE_HDR))
		return tpm_fail(t, -EBADMSG, "tpm: %s/%s is not a sealed store", t->state_dir,
				F_STORE);
	ptlen = len - aad - TPM_STORE_TAG;
	if (ptlen > TPM_STORE_MAX)
		return tpm_fail(t, -EBADMSG, "tpm: sealed store too large");
	if (ptlen > cap)
		return tpm_fail(t, -ENOBUFS, "tpm: the sealed store holds %zu bytes, room for %zu",
				ptlen, cap);
	/* Decrypted aside first: the caller's buffer never sees unauthenticated bytes. */
	pt = OPENSSL_secure_malloc(ptlen + 1);
	if (!pt)
		return tpm_fail(t, -ENOMEM, "tpm: out of memory");
	r = crypto_gcm_open(key, blob + TPM_STORE_HDR, blob, aad, blob + aad, len - aad, pt);
	if (r == -EBADMSG) {
		r = tpm_fail(t, -EBADMSG,
			     "tpm: the sealed store does not decrypt under its sealed key "
			     "(state_dir damaged or mixed from two enrolments)");
		goto out_free;
	}
	if (r < 0) {
		r = tpm_fail(t, r, "tpm: AES-256-GCM decryption of the store failed");
		goto out_free;
	}
	memcpy(buf, pt, ptlen);
	*ret_len = ptlen;
out_free:
	OPENSSL_secure_clear_free(pt, ptlen + 1);
	return r;
}

/* SubjectPublicKeyInfo PEM of an RSA public key given as big-endian n and e. */
static int tpm_rsa_pem(struct tpm *t, const uint8_t *n, size_t nlen, uint32_t e, char **ret_pem)
{
	OSSL_PARAM_BLD *bld = NULL;
	OSSL_PARAM *params = NULL;
	EVP_PKEY_CTX *pctx = NULL;
	EVP_PKEY *pkey = NULL;
	BIGNUM *bn_n = NULL, *bn_e = NULL;
	BIO *bio = NULL;
	char *data, *pem;
	long len;
	int r = -EIO;

	bn_n = BN_bin2bn(n, (int)nlen, NULL);
	bn_e = BN_new();
	bld = OSSL_PARAM_BLD_new();
	if (!bn_n || !bn_e || !bld || BN_set_word(bn_e, e) != 1 ||
	    OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, bn_n) != 1 ||
	    OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, bn_e) != 1) {
		r = tpm_fail(t, -ENOMEM, "tpm: out of memory building the public key");
		goto out;
	}
	params = OSSL_PARAM_BLD_to_param(bld);
	pctx = EVP_PKEY_CTX_new_from_name(NULL, "RSA", NULL);
	if (!params || !pctx || EVP_PKEY_fromdata_init(pctx) != 1 ||
	    EVP_PKEY_fromdata(pctx, &pkey, EVP_PKEY_PUBLIC_KEY, params) != 1) {
		r = tpm_fail(t, -EIO, "tpm: OpenSSL rejects the device key's public half");
		goto out;
	}
	bio = BIO_new(BIO_s_mem());
	if (!bio || PEM_write_bio_PUBKEY(bio, pkey) != 1) {
		r = tpm_fail(t, -EIO, "tpm: PEM encoding of the device key failed");
		goto out;
	}
	len = BIO_get_mem_data(bio, &data);
	if (len <= 0) {
		r = tpm_fail(t, -EIO, "tpm: PEM encoding of the device key is empty");
		goto out;
	}
	pem = malloc((size_t)len + 1);
	if (!pem) {
		r = tpm_fail(t, -ENOMEM, "tpm: out of memory");
		goto out;
	}
	memcpy(pem, data, (size_t)len);
	pem[len] = '\0';
	*ret_pem = pem;
	r = 0;
out:
	BIO_free(bio);
	EVP_PKEY_free(pkey);
	EVP_PKEY_CTX_free(pctx);
	OSSL_PARAM_free(params);
	OSSL_PARAM_BLD_free(bld);
	BN_free(bn_e);
	BN_free(bn_n);
	return r;
}

static int tpm_dk_pem(struct tpm *t, const TPM2B_PUBLIC *pub, char **ret_pem)
{
	const TPMT_PUBLIC *a = &pub->publicArea;
	uint32_t e = a->parameters.rsaDetail.exponent;

	return tpm_rsa_pem(t, a->unique.rsa.buffer, a->unique.rsa.size, e ? e : 65537, ret_pem);
}

/* ---- sessions and handles ---------------------------------------------- */

static void tpm_handle_flush(struct tpm *t, ESYS_TR *h)
{
	TSS2_RC rc;

	if (*h == ESYS_TR_NONE)
		return;
	rc = Esys_FlushContext(t->esys, *h);
	if (rc != TSS2_RC_SUCCESS) {
		/* The TPM may have dropped it already; the ESYS object must go anyway. */
		tpm_say(t, LOG_WARNING, "tpm: flushing a handle: %s", Tss2_RC_Decode(rc));
		Esys_TR_Close(t->esys, h);
	}
	*h = ESYS_TR_NONE;
}

/*
 * An HMAC or policy session salted with the SRK (AES-128-CFB for parameter
 * encryption), or, with salted == 0, an unsalted one (trial, or before an
 * SRK exists).
 */
static int tpm_session_start(struct tpm *t, TPM2_SE type, int salted, TPMA_SESSION attrs,
			     ESYS_TR *ret)
{
	TPMT_SYM_DEF sym = {
		.algorithm = TPM2_ALG_AES, .keyBits = {.aes = 128}, .mode = {.aes = TPM2_ALG_CFB}};
	TPMT_SYM_DEF none = {.algorithm = TPM2_ALG_NULL};
	ESYS_TR s = ESYS_TR_NONE;
	TSS2_RC rc;

	rc = Esys_StartAuthSession(t->esys, salted ? t->srk : ESYS_TR_NONE, ESYS_TR_NONE,
				   ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, NULL, type,
				   salted ? &sym : &none, TPM2_ALG_SHA256, &s);
	if (rc != TSS2_RC_SUCCESS)
		return tpm_rc(t, rc, "starting a session");
	rc = Esys_TRSess_SetAttributes(t->esys, s, attrs | TPMA_SESSION_CONTINUESESSION, 0xff);
	if (rc != TSS2_RC_SUCCESS) {
		tpm_handle_flush(t, &s);
		return tpm_rc(t, rc, "setting session attributes");
	}
	*ret = s;
	return 0;
}

/*
 * The sessions for a command on an enrolled object: *ret_auth authorises
 * it, *ret_enc (ESYS_TR_NONE when the auth session does it) encrypts the
 * parameters as enc says. The HMAC session is salted with the SRK; the
 * policy session is not: its PolicyPCR needs no secret, and a salt costs
 * the TPM a private-key operation at every unwrap (docs/tpm.md).
 */
static int tpm_sessions_start(struct tpm *t, TPMA_SESSION enc, ESYS_TR *ret_auth, ESYS_TR *ret_enc)
{
	TPM2B_DIGEST empty = {.size = 0};
	ESYS_TR hmac = ESYS_TR_NONE, pol = ESYS_TR_NONE;
	TSS2_RC rc;
	int r;

	r = tpm_session_start(t, TPM2_SE_HMAC, 1, enc, &hmac);
	if (r < 0)
		return r;
	if (t->pcrs.count == 0) {
		*ret_auth = hmac;
		*ret_enc = ESYS_TR_NONE;
		return 0;
	}
	r = tpm_session_start(t, TPM2_SE_POLICY, 0, 0, &pol);
	if (r < 0)
		goto out_hmac;
	/* An empty digest makes the TPM take the PCRs' current values. */
	rc = Esys_PolicyPCR(t->esys, pol, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, &empty,
			    &t->pcrs);
	if (rc != TSS2_RC_SUCCESS) {
		r = tpm_rc(t, rc, "PolicyPCR");
		goto out_pol;
	}
	*ret_auth = pol;
	*ret_enc = hmac;
	return 0;
out_pol:
	tpm_handle_flush(t, &pol);
out_hmac:
	tpm_handle_flush(t, &hmac);
	return r;
}

/* The PolicyPCR digest over sel's current values, from a trial session. */
static int tpm_policy_digest(struct tpm *t, const TPML_PCR_SELECTION *sel, TPM2B_DIGEST *ret)
{
	TPM2B_DIGEST empty = {.size = 0};
	TPM2B_DIGEST *digest = NULL;
	ESYS_TR trial = ESYS_TR_NONE;
	TSS2_RC rc;
	int r;

	r = tpm_session_start(t, TPM2_SE_TRIAL, 0, 0, &trial);
	if (r < 0)
		return r;
	rc = Esys_PolicyPCR(t->esys, trial, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, &empty, sel);
	if (rc != TSS2_RC_SUCCESS) {
		r = tpm_rc(t, rc, "PolicyPCR (trial; are those PCR banks active?)");
		goto out;
	}
	rc = Esys_PolicyGetDigest(t->esys, trial, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE,
				  &digest);
	if (rc != TSS2_RC_SUCCESS) {
		r = tpm_rc(t, rc, "PolicyGetDigest");
		goto out;
	}
	*ret = *digest;
	Esys_Free(digest);
	r = 0;
out:
	tpm_handle_flush(t, &trial);
	return r;
}

/* ---- parked objects ----------------------------------------------------- */

/*
 * Loads a parked object's saved context into *ret. -ENOENT (nothing
 * logged, *ctx freed) when the TPM refuses it, e.g. after a TPM reset:
 * the caller re-creates the object. A full TPM is an error (-EBUSY).
 */
static int tpm_context_load(struct tpm *t, const char *what, TPMS_CONTEXT **ctx, ESYS_TR *ret)
{
	ESYS_TR h = ESYS_TR_NONE;
	TSS2_RC rc, base;

	rc = Esys_ContextLoad(t->esys, *ctx, &h);
	if (rc == TSS2_RC_SUCCESS) {
		*ret = h;
		return 0;
	}
	base = tpm_rc_base(rc);
	if (base == TPM2_RC_OBJECT_MEMORY || base == TPM2_RC_OBJECT_HANDLES)
		return tpm_rc(t, rc, what);
	tpm_say(t, LOG_INFO, "tpm: %s from its saved context: %s; loading it anew", what,
		Tss2_RC_Decode(rc));
	free(*ctx);
	*ctx = NULL;
	return -ENOENT;
}

/* Saves a transient object's context (once) and flushes it from the TPM. */
static void tpm_object_park(struct tpm *t, ESYS_TR *h, TPMS_CONTEXT **ctx)
{
	TSS2_RC rc;

	if (*h == ESYS_TR_NONE)
		return;
	if (!*ctx) {
		rc = Esys_ContextSave(t->esys, *h, ctx);
		if (rc != TSS2_RC_SUCCESS) {
			*ctx = NULL;
			tpm_say(t, LOG_WARNING, "tpm: saving an object's context: %s",
				Tss2_RC_Decode(rc));
		}
	}
	tpm_handle_flush(t, h);
}

static void tpm_objects_park(struct tpm *t)
{
	if (!t->esys)
		return;
	tpm_object_park(t, &t->dk, &t->dk_ctx);
	if (t->srk_transient)
		tpm_object_park(t, &t->srk, &t->srk_ctx);
}

/* ---- the storage root key ---------------------------------------------- */

static int tpm_srk_create(struct tpm *t, ESYS_TR *ret, TPM2B_PUBLIC **ret_pub)
{
	/* TCG's standard ECC P-256 storage template: deterministic per seed. */
	TPM2B_PUBLIC tmpl = {
		.publicArea =
			{
				.type = TPM2_ALG_ECC,
				.nameAlg = TPM2_ALG_SHA256,
				.objectAttributes = TPMA_OBJECT_RESTRICTED | TPMA_OBJECT_DECRYPT |
						    TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT |
						    TPMA_OBJECT_SENSITIVEDATAORIGIN |
						    TPMA_OBJECT_USERWITHAUTH | TPMA_OBJECT_NODA,
				.parameters.eccDetail =
					{
						.symmetric = {.algorithm = TPM2_ALG_AES,
							      .keyBits = {.aes = 128},
							      .mode = {.aes = TPM2_ALG_CFB}},
						.scheme = {.scheme = TPM2_ALG_NULL},
						.curveID = TPM2_ECC_NIST_P256,
						.kdf = {.scheme = TPM2_ALG_NULL},
					},
			},
	};
	TPM2B_SENSITIVE_CREATE in = {0};
	TPM2B_DATA outside = {0};
	TPML_PCR_SELECTION creation = {0};
	TPM2B_AUTH auth = {0};
	ESYS_TR s = ESYS_TR_NONE, h = ESYS_TR_NONE;
	TPM2B_PUBLIC *pub = NULL;
	TSS2_RC rc;
	int r;

	auth.size = (UINT16)t->owner_auth_len;
	memcpy(auth.buffer, t->owner_auth, t->owner_auth_len);
	rc = Esys_TR_SetAuth(t->esys, ESYS_TR_RH_OWNER, &auth);
	crypto_wipe(&auth, sizeof(auth));
	if (rc != TSS2_RC_SUCCESS)
		return tpm_rc(t, rc, "setting the owner password");
	/* An HMAC session, so that an owner password never crosses the bus in clear. */
	r = tpm_session_start(t, TPM2_SE_HMAC, 0, 0, &s);
	if (r < 0)
		goto out_auth;
	rc = Esys_CreatePrimary(t->esys, ESYS_TR_RH_OWNER, s, ESYS_TR_NONE, ESYS_TR_NONE, &in,
				&tmpl, &outside, &creation, &h, &pub, NULL, NULL, NULL);
	if (rc != TSS2_RC_SUCCESS) {
		r = tpm_rc(t, rc, "creating the storage root key (CreatePrimary, owner)");
		goto out_session;
	}
	*ret = h;
	*ret_pub = pub;
	r = 0;
out_session:
	tpm_handle_flush(t, &s);
out_auth:
	Esys_TR_SetAuth(t->esys, ESYS_TR_RH_OWNER, &(TPM2B_AUTH){.size = 0});
	return r;
}

/* Makes t->srk usable: the persistent SRK when there is one, else a new primary. */
static int tpm_srk_get(struct tpm *t)
{
	TPMS_CAPABILITY_DATA *cap = NULL;
	TPM2B_PUBLIC *pub = NULL;
	ESYS_TR h = ESYS_TR_NONE;
	TPMA_OBJECT need = TPMA_OBJECT_RESTRICTED | TPMA_OBJECT_DECRYPT;
	int persistent, r;
	TSS2_RC rc;

	if (t->srk != ESYS_TR_NONE)
		return 0;
	if (t->srk_ctx) {
		r = tpm_context_load(t, "reloading the storage root key", &t->srk_ctx, &t->srk);
		if (r != -ENOENT)
			return r;
	}
	rc = Esys_GetCapability(t->esys, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, TPM2_CAP_HANDLES,
				TPM_SRK_HANDLE, 1, NULL, &cap);
	if (rc != TSS2_RC_SUCCESS)
		return tpm_rc(t, rc, "listing persistent handles");
	persistent = cap->data.handles.count > 0 && cap->data.handles.handle[0] == TPM_SRK_HANDLE;
	Esys_Free(cap);
	if (!persistent) {
		r = tpm_srk_create(t, &h, &pub);
		if (r < 0)
			return r;
		t->srk_transient = 1;
		goto done;
	}
	rc = Esys_TR_FromTPMPublic(t->esys, TPM_SRK_HANDLE, ESYS_TR_NONE, ESYS_TR_NONE,
				   ESYS_TR_NONE, &h);
	if (rc != TSS2_RC_SUCCESS)
		return tpm_rc(t, rc, "opening the persistent SRK 0x81000001");
	rc = Esys_ReadPublic(t->esys, h, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, &pub, NULL,
			     NULL);
	if (rc != TSS2_RC_SUCCESS) {
		r = tpm_rc(t, rc, "reading the persistent SRK 0x81000001");
		Esys_TR_Close(t->esys, &h);
		return r;
	}
	if ((pub->publicArea.objectAttributes & need) != need ||
	    (pub->publicArea.type != TPM2_ALG_ECC && pub->publicArea.type != TPM2_ALG_RSA)) {
		Esys_Free(pub);
		Esys_TR_Close(t->esys, &h);
		return tpm_fail(t, -EIO,
				"tpm: the persistent key at 0x81000001 is not an RSA or ECC "
				"storage key");
	}
	t->srk_transient = 0;
done:
	t->srk_pub = *pub;
	Esys_Free(pub);
	t->srk = h;
	return 0;
}

static void tpm_srk_drop(struct tpm *t)
{
	free(t->srk_ctx);
	t->srk_ctx = NULL;
	if (t->srk == ESYS_TR_NONE)
		return;
	if (t->srk_transient)
		tpm_handle_flush(t, &t->srk);
	else
		Esys_TR_Close(t->esys, &t->srk);
	t->srk = ESYS_TR_NONE;
}

/* ---- objects ----------------------------------------------------------- */

static int tpm_object_create(struct tpm *t, const char *what, const TPM2B_PUBLIC *tmpl,
			     const TPM2B_SENSITIVE_CREATE *in, TPM2B_PUBLIC *ret_pub,
			     TPM2B_PRIVATE *ret_priv)
{
	TPM2B_DATA outside = {0};
	TPML_PCR_SELECTION creation = {0};
	TPM2B_PUBLIC *pub = NULL;
	TPM2B_PRIVATE *priv = NULL;
	ESYS_TR s = ESYS_TR_NONE;
	TSS2_RC rc;
	int r;

	/* DECRYPT: inSensitive, the sealed data, goes to the TPM encrypted. */
	r = tpm_session_start(t, TPM2_SE_HMAC, 1, TPMA_SESSION_DECRYPT, &s);
	if (r < 0)
		return r;
	rc = Esys_Create(t->esys, t->srk, s, ESYS_TR_NONE, ESYS_TR_NONE, in, tmpl, &outside,
			 &creation, &priv, &pub, NULL, NULL, NULL);
	if (rc != TSS2_RC_SUCCESS) {
		r = tpm_rc(t, rc, what);
		goto out;
	}
	*ret_pub = *pub;
	*ret_priv = *priv;
	Esys_Free(pub);
	Esys_Free(priv);
	r = 0;
out:
	tpm_handle_flush(t, &s);
	return r;
}

static int tpm_object_load(struct tpm *t, const char *what, const TPM2B_PUBLIC *pub,
			   const TPM2B_PRIVATE *priv, ESYS_TR *ret)
{
	ESYS_TR h = ESYS_TR_NONE;
	TSS2_RC rc;

	/* Nothing secret in Load: the private blob is wrapped by the SRK. */
	rc = Esys_Load(t->esys, t->srk, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, priv, pub,
		       &h);
	if (rc != TSS2_RC_SUCCESS)
		return tpm_rc(t, rc, what);
	*ret = h;
	return 0;
}

static TPMA_OBJECT tpm_auth_attrs(const TPM2B_DIGEST *policy)
{
	/* PCR-bound objects answer to their policy only. */
	return policy->size ? TPMA_OBJECT_ADMINWITHPOLICY : TPMA_OBJECT_USERWITHAUTH;
}

static int tpm_dk_create(struct tpm *t, const TPM2B_DIGEST *policy, TPM2B_PUBLIC *ret_pub,
			 TPM2B_PRIVATE *ret_priv)
{
	TPM2B_PUBLIC tmpl = {
		.publicArea =
			{
				.type = TPM2_ALG_RSA,
				.nameAlg = TPM2_ALG_SHA256,
				/*
			 * Bound to PCRs, the USER role (RSA_Decrypt) answers to the
			 * policy only; the ADMIN role (Certify at enrolment) keeps its
			 * empty authValue, because a policy for ADMIN would have to
			 * name each command (PolicyCommandCode).
			 */
				.objectAttributes = TPMA_OBJECT_DECRYPT | TPMA_OBJECT_FIXEDTPM |
						    TPMA_OBJECT_FIXEDPARENT |
						    TPMA_OBJECT_SENSITIVEDATAORIGIN |
						    (policy->size ? 0 : TPMA_OBJECT_USERWITHAUTH),
				.authPolicy = *policy,
				.parameters.rsaDetail =
					{
						.symmetric = {.algorithm = TPM2_ALG_NULL},
						/* The scheme (OAEP-SHA256) is chosen at each use. */
						.scheme = {.scheme = TPM2_ALG_NULL},
						.keyBits = 2048,
						.exponent = 0,
					},
			},
	};
	TPM2B_SENSITIVE_CREATE in = {0};

	return tpm_object_create(t, "creating the device key", &tmpl, &in, ret_pub, ret_priv);
}

static int tpm_seal_create(struct tpm *t, const TPM2B_DIGEST *policy,
			   const uint8_t key[TPM_STORE_KEY_LEN], TPM2B_PUBLIC *ret_pub,
			   TPM2B_PRIVATE *ret_priv)
{
	TPM2B_PUBLIC tmpl = {
		.publicArea =
			{
				.type = TPM2_ALG_KEYEDHASH,
				.nameAlg = TPM2_ALG_SHA256,
				.objectAttributes = TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT |
						    tpm_auth_attrs(policy),
				.authPolicy = *policy,
				.parameters.keyedHashDetail.scheme = {.scheme = TPM2_ALG_NULL},
			},
	};
	TPM2B_SENSITIVE_CREATE in = {0};
	int r;

	in.sensitive.data.size = TPM_STORE_KEY_LEN;
	memcpy(in.sensitive.data.buffer, key, TPM_STORE_KEY_LEN);
	r = tpm_object_create(t, "creating the sealed store", &tmpl, &in, ret_pub, ret_priv);
	crypto_wipe(&in, sizeof(in));
	return r;
}

/* ---- load -------------------------------------------------------------- */

static void tpm_loaded_drop(struct tpm *t)
{
	tpm_handle_flush(t, &t->dk);
	free(t->dk_ctx);
	t->dk_ctx = NULL;
	free(t->store);
	t->store = NULL;
	t->store_len = 0;
	t->loaded = 0;
}

/* Compares the current SRK with the recorded one. */
static int tpm_srk_check(struct tpm *t, const uint8_t *rec, size_t rec_len)
{
	uint8_t cur[sizeof(TPM2B_PUBLIC)];
	size_t cur_len = 0;
	int r;

	r = tpm_pub_marshal(t, &t->srk_pub, cur, sizeof(cur), &cur_len);
	if (r < 0)
		return r;
	if (cur_len != rec_len || memcmp(cur, rec, cur_len))
		return tpm_fail(t, -ESTALE,
				"tpm: the storage root key differs from the one recorded at "
				"enrolment: this is a different TPM or a cleared one; a new login "
				"re-enrols the device");
	return 0;
}

static int tpm_state_load(struct tpm *t)
{
	uint8_t *data[TPM_NFILES] = {0};
	size_t len[TPM_NFILES] = {0};
	TPM2B_PUBLIC dk_pub, seal_pub;
	TPM2B_PRIVATE dk_priv, seal_priv;
	TPML_PCR_SELECTION pcrs;
	const TPMT_PUBLIC *a;
	ESYS_TR dk = ESYS_TR_NONE;
	char why[160];
	size_t i;
	int r;

	for (i = 0; i < TPM_NFILES; i++) {
		r = tpm_file_read(t, tpm_files[i], &data[i], &len[i]);
		if (r == -ENOENT) {
			r = tpm_fail(t, -ENOENT, "tpm: not enrolled: %s/%s is missing",
				     t->state_dir, tpm_files[i]);
			goto out;
		}
		if (r < 0)
			goto out;
	}
	/* Order of tpm_files[]: srk, pcrs, dk pub, dk priv, seal pub, seal priv, store. */
	r = tpm_srk_get(t);
	if (r < 0)
		goto out;
	r = tpm_srk_check(t, data[0], len[0]);
	if (r < 0)
		goto out;
	data[1][strcspn((char *)data[1], "\n")] = '\0';
	r = tpm_pcr_parse((char *)data[1], &pcrs, why, sizeof(why));
	if (r < 0) {
		r = tpm_fail(t, -EIO, "tpm: %s/%s is corrupt: %s", t->state_dir, F_PCRS, why);
		goto out;
	}
	r = tpm_pub_unmarshal(t, F_DK_PUB, data[2], len[2], &dk_pub);
	if (r == 0)
		r = tpm_priv_unmarshal(t, F_DK_PRIV, data[3], len[3], &dk_priv);
	if (r == 0)
		r = tpm_pub_unmarshal(t, F_SEAL_PUB, data[4], len[4], &seal_pub);
	if (r == 0)
		r = tpm_priv_unmarshal(t, F_SEAL_PRIV, data[5], len[5], &seal_priv);
	if (r < 0)
		goto out;
	a = &dk_pub.publicArea;
	if (a->type != TPM2_ALG_RSA || !(a->objectAttributes & TPMA_OBJECT_DECRYPT) ||
	    a->unique.rsa.size == 0 || (a->authPolicy.size != 0) != (pcrs.count != 0)) {
		r = tpm_fail(t, -EIO, "tpm: %s/%s is not this program's device key", t->state_dir,
			     F_DK_PUB);
		goto out;
	}
	if (!tpm_pcr_equal(&pcrs, &t->conf_pcrs)) {
		char was[256], now[256];

		tpm_pcr_format(&pcrs, was, sizeof(was));
		tpm_pcr_format(&t->conf_pcrs, now, sizeof(now));
		tpm_say(t, LOG_WARNING,
			"tpm: the keys are bound to PCRs \"%s\", the configuration says \"%s\"; "
			"the new binding applies from the next enrolment",
			was, now);
	}
	r = tpm_object_load(t, "loading the device key", &dk_pub, &dk_priv, &dk);
	if (r < 0)
		goto out;

	tpm_loaded_drop(t);
	t->dk = dk;
	t->dk_pub = dk_pub;
	t->dk_priv = dk_priv;
	t->seal_pub = seal_pub;
	t->seal_priv = seal_priv;
	t->pcrs = pcrs;
	t->store = data[6];
	t->store_len = len[6];
	data[6] = NULL;
	t->loaded = 1;
	r = 0;
out:
	for (i = 0; i < TPM_NFILES; i++)
		free(data[i]);
	return r;
}

static int tpm_ensure_loaded(struct tpm *t)
{
	return t->loaded ? 0 : tpm_state_load(t);
}

/* The loaded device key in t->dk (and the SRK in t->srk), from parking if need be. */
static int tpm_dk_get(struct tpm *t)
{
	int r;

	r = tpm_ensure_loaded(t);
	if (r == 0)
		r = tpm_srk_get(t);
	if (r < 0 || t->dk != ESYS_TR_NONE)
		return r;
	if (t->dk_ctx) {
		r = tpm_context_load(t, "reloading the device key", &t->dk_ctx, &t->dk);
		if (r != -ENOENT)
			return r;
	}
	return tpm_object_load(t, "loading the device key", &t->dk_pub, &t->dk_priv, &t->dk);
}

/* ---- open, close ------------------------------------------------------- */

static void tpm_connection_drop(struct tpm *t)
{
	if (t->esys)
		Esys_Finalize(&t->esys);
	if (t->tcti)
		Tss2_TctiLdr_Finalize(&t->tcti);
	t->esys = NULL;
	t->tcti = NULL;
}

/*
 * One attempt to reach a started TPM: TCTI, ESYS context, and a
 * GetCapability, since some TCTIs connect only at the first command.
 */
static int tpm_connection_try(struct tpm *t, char *why, size_t whylen)
{
	TPMS_CAPABILITY_DATA *cap = NULL;
	TSS2_RC rc;
	uint32_t man;
	char vendor[5];
	int i;

	rc = Tss2_TctiLdr_Initialize(t->tcti_conf, &t->tcti);
	if (rc != TSS2_RC_SUCCESS) {
		t->tcti = NULL;
		snprintf(why, whylen, "TCTI: %s", Tss2_RC_Decode(rc));
		return -ENODEV;
	}
	rc = Esys_Initialize(&t->esys, t->tcti, NULL);
	if (rc != TSS2_RC_SUCCESS) {
		t->esys = NULL;
		snprintf(why, whylen, "ESYS: %s", Tss2_RC_Decode(rc));
		goto fail;
	}
	rc = Esys_GetCapability(t->esys, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE,
				TPM2_CAP_TPM_PROPERTIES, TPM2_PT_MANUFACTURER, 1, NULL, &cap);
	if (rc != TSS2_RC_SUCCESS) {
		if (tpm_rc_base(rc) == TPM2_RC_INITIALIZE)
			snprintf(why, whylen,
				 "the TPM is not started (TPM2_Startup is the platform's job)");
		else
			snprintf(why, whylen, "%s", Tss2_RC_Decode(rc));
		goto fail;
	}
	man = cap->data.tpmProperties.count ? cap->data.tpmProperties.tpmProperty[0].value : 0;
	Esys_Free(cap);
	for (i = 0; i < 4; i++) {
		char c = (char)(man >> (24 - 8 * i));

		vendor[i] = c >= 0x20 && c < 0x7f ? c : ' ';
	}
	vendor[4] = '\0';
	tpm_say(t, LOG_INFO, "tpm: TPM 2.0 by \"%s\" through %s", vendor, t->tcti_conf);
	return 0;
fail:
	tpm_connection_drop(t);
	return -ENODEV;
}

static double tpm_now_seconds(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* What an operator checks when nothing answers through conf. */
static const char *tpm_tcti_hint(const char *conf)
{
	if (!strncmp(conf, "swtpm", 5) || !strncmp(conf, "mssim", 5))
		return "check that swtpm (or the simulator) listens at that address";
	if (!strncmp(conf, "tabrmd", 6))
		return "check that tpm2-abrmd runs (systemctl status tpm2-abrmd)";
	if (!strncmp(conf, "device", 6) || !strncmp(conf, "libtss2-tcti-device", 19))
		return "check that the device node exists and the daemon may open it (a "
		       "firmware TPM needs tee-supplicant running, e.g. on a Jetson)";
	return "check that the TPM stack named by tpm_tcti runs";
}

/* Sleeps up to seconds; 1 when *stop asked to end the wait. */
static int tpm_wait_sleep(double seconds, const volatile sig_atomic_t *stop)
{
	struct timespec ts;

	if (stop && *stop)
		return 1;
	ts.tv_sec = (time_t)seconds;
	ts.tv_nsec = (long)((seconds - (double)ts.tv_sec) * 1e9);
	nanosleep(&ts, NULL); /* a signal cuts it short */
	return stop && *stop;
}

static int tpm_wait_stopped(struct tpm *t, const char *what)
{
	return tpm_fail(t, -EINTR, "tpm: stopped waiting for %s: interrupted by a signal", what);
}

static int tpm_connection_open(struct tpm *t, unsigned wait_seconds,
			       const volatile sig_atomic_t *stop)
{
	double start = tpm_now_seconds(), deadline = start + wait_seconds;
	/* tpm = auto's short look is not a wait worth announcing. */
	double next_say = wait_seconds > TPM_QUICK_WAIT ? start : deadline + 1, delay = 0.1;
	char why[256] = "", what[300];

	snprintf(what, sizeof(what), "a TPM through \"%s\"", t->tcti_conf);
	for (;;) {
		double now, left, nap;

		if (tpm_connection_try(t, why, sizeof(why)) == 0)
			return 0;
		now = tpm_now_seconds();
		left = deadline - now;
		if (left <= 0)
			break;
		/* Silence for a minute looks like a hang: say what is awaited. */
		if (now >= next_say) {
			tpm_say(t, LOG_WARNING,
				"tpm: waiting for %s (%s); %.0f s left of tpm_wait=%u; %s", what,
				why, left, wait_seconds, tpm_tcti_hint(t->tcti_conf));
			next_say = now + TPM_WAIT_SAY_S;
		}
		if (delay > left)
			delay = left;
		/* Wake for the next announcement on time, too. */
		nap = delay < next_say - now ? delay : next_say - now;
		if (tpm_wait_sleep(nap > 0.05 ? nap : 0.05, stop))
			return tpm_wait_stopped(t, what);
		if (delay < 1.0)
			delay *= 2;
	}
	return tpm_fail(t, -ENODEV, "tpm: no TPM through \"%s\" within %u s: %s; %s", t->tcti_conf,
			wait_seconds, why, tpm_tcti_hint(t->tcti_conf));
}

/*
 * The device node of a "device[:PATH]" TCTI into buf (the default node
 * when none is named); 0 for any other TCTI.
 */
static int tpm_tcti_device_node(const char *conf, char *buf, size_t len)
{
	const char *p = conf;

	if (!strncmp(p, "libtss2-tcti-device.so", 22))
		p += 22;
	else if (!strncmp(p, "device", 6))
		p += 6;
	else
		return 0;
	if (*p != '\0' && *p != ':')
		return 0;
	if (*p == ':')
		p++;
	snprintf(buf, len, "%s", *p ? p : "/dev/tpmrm0");
	return 1;
}

static int tpm_node_present(const char *node)
{
	/* Without a node named, tpm2-tss falls back from tpmrm0 to tpm0. */
	return access(node, F_OK) == 0 ||
	       (!strcmp(node, "/dev/tpmrm0") && access("/dev/tpm0", F_OK) == 0);
}

/* A TEE (OP-TEE on a Jetson) is where a firmware TPM comes from, late. */
static int tpm_tee_present(void)
{
	return access("/dev/tee0", F_OK) == 0 || access("/dev/teepriv0", F_OK) == 0;
}

/*
 * tpm = auto: how long a TPM is worth waiting for. A device node that
 * exists, or a TCTI of another kind, gets TPM_QUICK_WAIT; a missing node
 * is waited for (up to wait_seconds) only where a TEE may still bring a
 * firmware TPM, and is absent at once elsewhere.
 */
static int tpm_quick_wait(struct tpm *t, unsigned wait_seconds, const volatile sig_atomic_t *stop,
			  unsigned *ret_wait)
{
	char node[PATH_MAX];
	double deadline, next_say;

	*ret_wait = wait_seconds < TPM_QUICK_WAIT ? wait_seconds : TPM_QUICK_WAIT;
	if (!tpm_tcti_device_node(t->tcti_conf, node, sizeof(node)) || tpm_node_present(node))
		return 0;
	if (!tpm_tee_present())
		return tpm_fail(t, -ENODEV,
				"tpm: no TPM: %s does not exist and no TEE could "
				"bring a firmware TPM",
				node);
	tpm_say(t, LOG_INFO,
		"tpm: waiting up to %u s for %s (a firmware TPM appears once the "
		"TEE supplicant runs)",
		wait_seconds, node);
	deadline = tpm_now_seconds() + wait_seconds;
	next_say = tpm_now_seconds() + TPM_WAIT_SAY_S;
	while (!tpm_node_present(node)) {
		double now = tpm_now_seconds();

		if (now >= deadline)
			return tpm_fail(t, -ENODEV,
					"tpm: no TPM: %s did not appear within %u s; %s", node,
					wait_seconds, tpm_tcti_hint(t->tcti_conf));
		if (now >= next_say) {
			tpm_say(t, LOG_WARNING, "tpm: waiting for %s to appear; %.0f s left; %s",
				node, deadline - now, tpm_tcti_hint(t->tcti_conf));
			next_say = now + TPM_WAIT_SAY_S;
		}
		if (tpm_wait_sleep(0.25, stop))
			return tpm_wait_stopped(t, node);
	}
	return 0;
}

static void tpm_free(struct tpm *t)
{
	crypto_wipe(t->owner_auth, sizeof(t->owner_auth));
	free(t->tcti_conf);
	free(t->state_dir);
	pthread_mutex_destroy(&t->lock);
	free(t);
}

int tpm_open(const struct tpm_opts *opts, struct tpm **ret)
{
	struct tpm *t;
	char why[160];
	unsigned wait;
	int r;

	if (!opts || !ret)
		return -EINVAL;
	t = calloc(1, sizeof(*t));
	if (!t)
		return -ENOMEM;
	if (pthread_mutex_init(&t->lock, NULL) != 0) {
		free(t);
		return -ENOMEM;
	}
	t->log = opts->log;
	t->srk = ESYS_TR_NONE;
	t->dk = ESYS_TR_NONE;
	if (!opts->tcti || !*opts->tcti || !opts->state_dir || !*opts->state_dir) {
		r = tpm_fail(t, -EINVAL, "tpm: tpm_tcti and state_dir are required");
		goto out_free;
	}
	r = tpm_pcr_parse(opts->pcrs, &t->conf_pcrs, why, sizeof(why));
	if (r < 0) {
		r = tpm_fail(t, -EINVAL, "tpm: bad tpm_pcrs \"%.64s\": %s", opts->pcrs, why);
		goto out_free;
	}
	if (opts->owner_auth_len > sizeof(t->owner_auth) ||
	    (opts->owner_auth_len && !opts->owner_auth)) {
		r = tpm_fail(t, -EINVAL, "tpm: the owner password is longer than %zu bytes",
			     sizeof(t->owner_auth));
		goto out_free;
	}
	if (opts->owner_auth_len)
		memcpy(t->owner_auth, opts->owner_auth, opts->owner_auth_len);
	t->owner_auth_len = opts->owner_auth_len;
	t->tcti_conf = strdup(opts->tcti);
	t->state_dir = strdup(opts->state_dir);
	if (!t->tcti_conf || !t->state_dir) {
		r = -ENOMEM;
		goto out_free;
	}
	wait = opts->wait_seconds;
	if (opts->quick) {
		r = tpm_quick_wait(t, opts->wait_seconds, opts->stop, &wait);
		if (r < 0)
			goto out_free;
	}
	r = tpm_connection_open(t, wait, opts->stop);
	if (r < 0)
		goto out_free;
	*ret = t;
	return 0;
out_free:
	tpm_free(t);
	return r;
}

void tpm_close(struct tpm *t)
{
	if (!t)
		return;
	pthread_mutex_lock(&t->lock);
	tpm_loaded_drop(t);
	tpm_srk_drop(t);
	tpm_connection_drop(t);
	pthread_mutex_unlock(&t->lock);
	tpm_free(t);
}

/* ---- public flows ------------------------------------------------------ */

static void tpm_call_begin(struct tpm *t)
{
	pthread_mutex_lock(&t->lock);
	t->err[0] = '\0';
}

static int tpm_call_end(struct tpm *t, int r)
{
	tpm_objects_park(t);
	pthread_mutex_unlock(&t->lock);
	return r;
}

/*
 * Sends TPM2_FlushContext for a raw handle through the TCTI, under ESYS:
 * ESYS has no object for another program's handles. t->lock is held and
 * ESYS is between commands, so the TCTI is free.
 */
static int tpm_raw_flush(struct tpm *t, TPM2_HANDLE h)
{
	uint8_t cmd[14], resp[64];
	size_t off = 0, len = sizeof(resp);
	TSS2_TCTI_CONTEXT *tcti = NULL;
	TPM2_RC code = 0;
	TSS2_RC rc;

	rc = Esys_GetTcti(t->esys, &tcti);
	if (rc == TSS2_RC_SUCCESS)
		rc = Tss2_MU_TPM2_ST_Marshal(TPM2_ST_NO_SESSIONS, cmd, sizeof(cmd), &off);
	if (rc == TSS2_RC_SUCCESS)
		rc = Tss2_MU_UINT32_Marshal(sizeof(cmd), cmd, sizeof(cmd), &off);
	if (rc == TSS2_RC_SUCCESS)
		rc = Tss2_MU_TPM2_CC_Marshal(TPM2_CC_FlushContext, cmd, sizeof(cmd), &off);
	if (rc == TSS2_RC_SUCCESS)
		rc = Tss2_MU_TPM2_HANDLE_Marshal(h, cmd, sizeof(cmd), &off);
	if (rc == TSS2_RC_SUCCESS)
		rc = Tss2_Tcti_Transmit(tcti, off, cmd);
	if (rc == TSS2_RC_SUCCESS)
		rc = Tss2_Tcti_Receive(tcti, &len, resp, 10000);
	if (rc != TSS2_RC_SUCCESS || len < 10)
		return -EIO;
	off = 6;
	if (Tss2_MU_UINT32_Unmarshal(resp, len, &off, &code) != TSS2_RC_SUCCESS || code != 0)
		return -EIO;
	return 0;
}

/* Flushes every handle of one kind (transient objects, loaded sessions); how many went. */
static unsigned tpm_flush_kind(struct tpm *t, TPM2_HANDLE first)
{
	TPMS_CAPABILITY_DATA *cap = NULL;
	unsigned n = 0;
	uint32_t i;
	TSS2_RC rc;

	rc = Esys_GetCapability(t->esys, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, TPM2_CAP_HANDLES,
				first, TPM2_MAX_CAP_HANDLES, NULL, &cap);
	if (rc != TSS2_RC_SUCCESS)
		return 0;
	for (i = 0; i < cap->data.handles.count; i++) {
		TPM2_HANDLE h = cap->data.handles.handle[i];

		if ((h >> 24) != (first >> 24) &&
		    !(first == TPM_HANDLES_SESSIONS && (h >> 24) == 0x03))
			continue;
		if (tpm_raw_flush(t, h) == 0)
			n++;
	}
	Esys_Free(cap);
	return n;
}

/*
 * After a "TPM full" (-EBUSY): what fills the TPM belongs to other
 * programs, since this one has parked all of its own. Without a resource
 * manager (swtpm, /dev/tpm0) those are mostly a crashed process's
 * leftovers, which nothing else would ever flush. Flushes them all and
 * says so; returns how many went.
 */
static unsigned tpm_leftovers_flush(struct tpm *t)
{
	unsigned objs, sess;

	tpm_objects_park(t);
	objs = tpm_flush_kind(t, TPM_HANDLES_TRANSIENT);
	sess = tpm_flush_kind(t, TPM_HANDLES_SESSIONS);
	if (objs || sess) {
		t->err[0] = '\0';
		tpm_say(t, LOG_WARNING,
			"tpm: the TPM was full: flushed %u transient objects and %u sessions "
			"left by other programs (a crashed one, or one sharing the TPM without "
			"a resource manager)",
			objs, sess);
	}
	return objs + sess;
}

int tpm_is_enrolled(struct tpm *t)
{
	char path[PATH_MAX];
	size_t i;

	if (!t)
		return 0;
	for (i = 0; i < TPM_NFILES; i++) {
		if (snprintf(path, sizeof(path), "%s/%s", t->state_dir, tpm_files[i]) >=
		    (int)sizeof(path))
			return 0;
		if (access(path, F_OK) < 0)
			return 0;
	}
	return 1;
}

static void tpm_enrolment_free(struct tpm_enrolment *e)
{
	free(e->store);
	e->store = NULL;
}

/* Writes the enrolment's files: all to temporaries first, then renamed. */
static int tpm_enrolment_write(struct tpm *t, const struct tpm_enrolment *e,
			       const TPML_PCR_SELECTION *pcrs)
{
	/* Indexed like tpm_files[]: srk, pcrs, dk pub, dk priv, seal pub, seal priv, store. */
	uint8_t blob[TPM_NFILES - 1][sizeof(TPM2B_PRIVATE) + sizeof(TPM2B_PUBLIC)];
	const void *data[TPM_NFILES];
	size_t len[TPM_NFILES] = {0};
	char tmp[TPM_NFILES][PATH_MAX];
	char path[PATH_MAX], text[256];
	size_t i, n;
	TSS2_RC rc = TSS2_RC_SUCCESS;
	int fd, r;

	for (i = 0; i < TPM_NFILES - 1; i++)
		data[i] = blob[i];
	r = tpm_pub_marshal(t, &t->srk_pub, blob[0], sizeof(blob[0]), &len[0]);
	if (r < 0)
		return r;
	tpm_pcr_format(pcrs, text, sizeof(text) - 1);
	strcat(text, "\n");
	data[1] = text;
	len[1] = strlen(text);
	r = tpm_pub_marshal(t, &e->dk_pub, blob[2], sizeof(blob[2]), &len[2]);
	if (r < 0)
		return r;
	r = tpm_pub_marshal(t, &e->seal_pub, blob[4], sizeof(blob[4]), &len[4]);
	if (r < 0)
		return r;
	rc = Tss2_MU_TPM2B_PRIVATE_Marshal(&e->dk_priv, blob[3], sizeof(blob[3]), &len[3]);
	if (rc == TSS2_RC_SUCCESS)
		rc = Tss2_MU_TPM2B_PRIVATE_Marshal(&e->seal_priv, blob[5], sizeof(blob[5]),
						   &len[5]);
	if (rc != TSS2_RC_SUCCESS)
		return tpm_rc(t, rc, "marshalling a private blob");
	data[6] = e->store;
	len[6] = e->store_len;

	for (n = 0; n < TPM_NFILES; n++) {
		r = tpm_file_write_tmp(t, tpm_files[n], data[n], len[n], tmp[n], sizeof(tmp[n]));
		if (r < 0)
			goto out_unlink;
	}
	for (i = 0; i < TPM_NFILES; i++) {
		r = tpm_state_path(t, tpm_files[i], path, sizeof(path));
		if (r < 0)
			goto out_unlink;
		if (rename(tmp[i], path) < 0) {
			r = tpm_fail(t, -EIO, "tpm: rename to %s: %s", path, strerror(errno));
			goto out_unlink;
		}
		tmp[i][0] = '\0';
	}
	fd = open(t->state_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd >= 0) {
		fsync(fd);
		close(fd);
	}
	return 0;
out_unlink:
	for (i = 0; i < n; i++)
		if (tmp[i][0])
			unlink(tmp[i]);
	return r;
}

static int tpm_enroll_once(struct tpm *t, const void *secret, size_t len, char **ret_pem)
{
	struct tpm_enrolment e = {0};
	TPM2B_DIGEST policy = {.size = 0};
	uint8_t key[TPM_STORE_KEY_LEN];
	ESYS_TR dk = ESYS_TR_NONE;
	char *pem = NULL;
	int r;

	if (len > TPM_STORE_MAX) {
		r = tpm_fail(t, -EINVAL, "tpm: secret of %zu bytes exceeds the store's %d", len,
			     TPM_STORE_MAX);
		goto out;
	}
	r = tpm_state_dir_prepare(t);
	if (r < 0)
		goto out;
	r = tpm_srk_get(t);
	if (r < 0)
		goto out;
	if (t->conf_pcrs.count) {
		r = tpm_policy_digest(t, &t->conf_pcrs, &policy);
		if (r < 0)
			goto out;
	}
	r = tpm_dk_create(t, &policy, &e.dk_pub, &e.dk_priv);
	if (r < 0)
		goto out;
	if (RAND_priv_bytes(key, sizeof(key)) != 1) {
		r = tpm_fail(t, -EIO, "tpm: no random bytes for the store key");
		goto out;
	}
	r = tpm_seal_create(t, &policy, key, &e.seal_pub, &e.seal_priv);
	if (r < 0)
		goto out_key;
	r = tpm_store_seal(t, key, secret, len, &e.store, &e.store_len);
	if (r < 0)
		goto out_key;
	r = tpm_object_load(t, "loading the new device key", &e.dk_pub, &e.dk_priv, &dk);
	if (r < 0)
		goto out_store;
	r = tpm_dk_pem(t, &e.dk_pub, &pem);
	if (r < 0)
		goto out_dk;
	r = tpm_enrolment_write(t, &e, &t->conf_pcrs);
	if (r < 0)
		goto out_pem;

	tpm_loaded_drop(t);
	t->dk = dk;
	t->dk_pub = e.dk_pub;
	t->dk_priv = e.dk_priv;
	t->seal_pub = e.seal_pub;
	t->seal_priv = e.seal_priv;
	t->pcrs = t->conf_pcrs;
	t->store = e.store;
	t->store_len = e.store_len;
	e.store = NULL;
	t->loaded = 1;
	dk = ESYS_TR_NONE;
	*ret_pem = pem;
	pem = NULL;
	tpm_say(t, LOG_INFO, "tpm: enrolled; device key and sealed store in %s", t->state_dir);
	r = 0;
out_pem:
	free(pem);
out_dk:
	tpm_handle_flush(t, &dk);
out_store:
	tpm_enrolment_free(&e);
out_key:
	crypto_wipe(key, sizeof(key));
out:
	return r;
}

int tpm_enroll(struct tpm *t, const void *secret, size_t len, char **ret_pem)
{
	int r;

	if (!t || (!secret && len) || !ret_pem)
		return -EINVAL;
	tpm_call_begin(t);
	r = tpm_enroll_once(t, secret, len, ret_pem);
	if (r == -EBUSY && tpm_leftovers_flush(t))
		r = tpm_enroll_once(t, secret, len, ret_pem);
	return tpm_call_end(t, r);
}

int tpm_load(struct tpm *t)
{
	int r;

	if (!t)
		return -EINVAL;
	tpm_call_begin(t);
	r = tpm_state_load(t);
	if (r == -EBUSY && tpm_leftovers_flush(t))
		r = tpm_state_load(t);
	return tpm_call_end(t, r);
}

int tpm_public_pem(struct tpm *t, char **ret_pem)
{
	int r;

	if (!t || !ret_pem)
		return -EINVAL;
	tpm_call_begin(t);
	r = tpm_ensure_loaded(t);
	if (r == 0)
		r = tpm_dk_pem(t, &t->dk_pub, ret_pem);
	return tpm_call_end(t, r);
}

/*
 * ESYS decrypts a response parameter in place, in the context's one
 * command/response buffer, where it stays until a longer response
 * overwrites it. A GetCapability over the fixed properties answers some
 * hundreds of bytes and so scrubs an unsealed or unwrapped key from it.
 */
static void tpm_esys_scrub(struct tpm *t)
{
	TPMS_CAPABILITY_DATA *cap = NULL;
	TSS2_RC rc;

	rc = Esys_GetCapability(t->esys, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE,
				TPM2_CAP_TPM_PROPERTIES, TPM2_PT_FIXED, TPM2_MAX_TPM_PROPERTIES,
				NULL, &cap);
	if (rc == TSS2_RC_SUCCESS)
		Esys_Free(cap);
}

/* One try at unsealing the store key; -EAGAIN when a PCR changed meanwhile. */
static int tpm_unseal_key(struct tpm *t, uint8_t key[TPM_STORE_KEY_LEN])
{
	TPM2B_SENSITIVE_DATA *out = NULL;
	ESYS_TR obj = ESYS_TR_NONE, auth = ESYS_TR_NONE, enc = ESYS_TR_NONE;
	TSS2_RC rc;
	int r;

	r = tpm_object_load(t, "loading the sealed store", &t->seal_pub, &t->seal_priv, &obj);
	if (r < 0)
		return r;
	/* Unseal has no command parameter to encrypt, only the response. */
	r = tpm_sessions_start(t, TPMA_SESSION_ENCRYPT, &auth, &enc);
	if (r < 0)
		goto out_obj;
	rc = Esys_Unseal(t->esys, obj, auth, enc, ESYS_TR_NONE, &out);
	if (rc != TSS2_RC_SUCCESS) {
		r = tpm_rc_base(rc) == TPM2_RC_PCR_CHANGED ? -EAGAIN
							   : tpm_rc(t, rc, "unsealing the store");
		goto out_sessions;
	}
	if (out->size != TPM_STORE_KEY_LEN) {
		r = tpm_fail(t, -EBADMSG, "tpm: the sealed store key has %u bytes, not %d",
			     out->size, TPM_STORE_KEY_LEN);
	} else {
		memcpy(key, out->buffer, TPM_STORE_KEY_LEN);
		r = 0;
	}
	crypto_wipe(out, sizeof(*out));
	Esys_Free(out);
	tpm_esys_scrub(t);
out_sessions:
	tpm_handle_flush(t, &enc);
	tpm_handle_flush(t, &auth);
out_obj:
	tpm_handle_flush(t, &obj);
	return r;
}

int tpm_unseal(struct tpm *t, uint8_t *buf, size_t cap, size_t *ret_len)
{
	uint8_t key[TPM_STORE_KEY_LEN];
	int r, tries = 0, flushed = 0;

	if (!t || (!buf && cap) || !ret_len)
		return -EINVAL;
	tpm_call_begin(t);
	for (;;) {
		r = tpm_ensure_loaded(t);
		if (r == 0)
			r = tpm_srk_get(t);
		if (r == 0)
			r = tpm_unseal_key(t, key);
		if (r == -EAGAIN && ++tries < 2)
			continue;
		if (r == -EBUSY && !flushed++ && tpm_leftovers_flush(t))
			continue;
		break;
	}
	if (r == -EAGAIN)
		r = tpm_fail(t, -EACCES, "tpm: unsealing the store: the PCRs keep changing");
	if (r < 0)
		goto out_key;
	r = tpm_store_open(t, key, t->store, t->store_len, buf, cap, ret_len);
out_key:
	crypto_wipe(key, sizeof(key));
	return tpm_call_end(t, r);
}

/*
 * libtpms (swtpm, and the vTPMs built on it) answers TPM_RC_FAILURE when
 * OAEP decoding fails, where a hardware TPM says TPM_RC_VALUE. A TPM really
 * in failure mode refuses every command but a few, GetRandom among those
 * it refuses; one that answers it is well and the ciphertext was bad.
 */
static int tpm_healthy(struct tpm *t)
{
	TPM2B_DIGEST *rnd = NULL;
	TSS2_RC rc;

	rc = Esys_GetRandom(t->esys, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, 1, &rnd);
	if (rc != TSS2_RC_SUCCESS)
		return 0;
	Esys_Free(rnd);
	return 1;
}

/* One try at the RSA decryption; -EAGAIN when a PCR changed meanwhile. */
static int tpm_unwrap_once(struct tpm *t, const TPM2B_PUBLIC_KEY_RSA *in, uint8_t *buf, size_t cap,
			   size_t *ret_len)
{
	TPMT_RSA_DECRYPT scheme = {.scheme = TPM2_ALG_OAEP,
				   .details = {.oaep = {.hashAlg = TPM2_ALG_SHA256}}};
	TPM2B_DATA label = {.size = 0};
	TPM2B_PUBLIC_KEY_RSA *out = NULL;
	ESYS_TR auth = ESYS_TR_NONE, enc = ESYS_TR_NONE;
	TSS2_RC rc, base;
	int r;

	r = tpm_sessions_start(t, TPMA_SESSION_DECRYPT | TPMA_SESSION_ENCRYPT, &auth, &enc);
	if (r < 0)
		return r;
	rc = Esys_RSA_Decrypt(t->esys, t->dk, auth, enc, ESYS_TR_NONE, in, &scheme, &label, &out);
	if (rc != TSS2_RC_SUCCESS) {
		base = tpm_rc_base(rc);
		if (base == TPM2_RC_PCR_CHANGED)
			r = -EAGAIN;
		else if (base == TPM2_RC_VALUE || base == TPM2_RC_SIZE ||
			 (base == TPM2_RC_FAILURE && tpm_healthy(t)))
			r = tpm_fail(t, -EBADMSG,
				     "tpm: the wrapped key does not decrypt with the device key "
				     "(%s): wrapped for another device?",
				     Tss2_RC_Decode(rc));
		else
			r = tpm_rc(t, rc, "unwrapping a key (RSA_Decrypt)");
		goto out;
	}
	if (out->size > cap) {
		r = tpm_fail(t, -ENOBUFS, "tpm: the unwrapped key has %u bytes, room for %zu",
			     out->size, cap);
	} else {
		memcpy(buf, out->buffer, out->size);
		*ret_len = out->size;
		r = 0;
	}
	crypto_wipe(out, sizeof(*out));
	Esys_Free(out);
	tpm_esys_scrub(t);
out:
	tpm_handle_flush(t, &enc);
	tpm_handle_flush(t, &auth);
	return r;
}

int tpm_unwrap(struct tpm *t, const uint8_t *wrapped, size_t len, uint8_t *buf, size_t cap,
	       size_t *ret_len)
{
	TPM2B_PUBLIC_KEY_RSA in = {0};
	int r, tries = 0, flushed = 0;

	if (!t || !wrapped || (!buf && cap) || !ret_len)
		return -EINVAL;
	tpm_call_begin(t);
	if (len > sizeof(in.buffer)) {
		r = tpm_fail(t, -EBADMSG, "tpm: a wrapped key of %zu bytes is too long", len);
		goto out;
	}
	in.size = (UINT16)len;
	memcpy(in.buffer, wrapped, len);
	for (;;) {
		r = tpm_dk_get(t);
		if (r == 0 && len != t->dk_pub.publicArea.unique.rsa.size) {
			r = tpm_fail(t, -EBADMSG,
				     "tpm: a wrapped key has %zu bytes, the device key takes %u",
				     len, t->dk_pub.publicArea.unique.rsa.size);
			goto out;
		}
		if (r == 0)
			r = tpm_unwrap_once(t, &in, buf, cap, ret_len);
		if (r == -EAGAIN && ++tries < 2)
			continue;
		if (r == -EBUSY && !flushed++ && tpm_leftovers_flush(t))
			continue;
		break;
	}
	if (r == -EAGAIN)
		r = tpm_fail(t, -EACCES, "tpm: unwrapping a key: the PCRs keep changing");
out:
	return tpm_call_end(t, r);
}

/* ---- attested enrolment (docs/trust.md 1) ------------------------------------ */

#define TPM_EK_CERT_MAX 4096 /* largest certificate read from NV */
#define TPM_NV_CHUNK 512     /* bytes per NV_Read, below every TPM's buffer */
#define TPM_QUOTE_PCRS_MAX 32

struct tpm_attest_pcr {
	TPMI_ALG_HASH bank;
	unsigned index;
	TPM2B_DIGEST value;
};

/*
 * The EK certificates of the TCG EK Credential Profile, in the order they
 * are tried, each with the template its EK is created from: L-1 (RSA-2048),
 * L-2 (ECC P-256), and the high-range P-384 one that swtpm provisions.
 */
struct tpm_ek_kind {
	TPM2_HANDLE nv;
	const char *what;
	TPMI_ALG_PUBLIC type;
	TPMI_ECC_CURVE curve;
	int high; /* high range: userWithAuth, the empty password authorises */
};

static const struct tpm_ek_kind tpm_ek_kinds[] = {
	{0x01c00002u, "RSA-2048", TPM2_ALG_RSA, 0, 0},
	{0x01c0000au, "ECC P-256", TPM2_ALG_ECC, TPM2_ECC_NIST_P256, 0},
	{0x01c00016u, "ECC P-384", TPM2_ALG_ECC, TPM2_ECC_NIST_P384, 1},
};
#define TPM_EK_KINDS (sizeof(tpm_ek_kinds) / sizeof(tpm_ek_kinds[0]))

struct tpm_attest {
	const struct tpm_ek_kind *ek;
	uint8_t *ek_cert;
	size_t ek_cert_len;
	TPM2B_PUBLIC ek_pub;
	TPM2B_PUBLIC ak_pub;
	TPM2B_PRIVATE ak_priv;
	/* Filled by prove. */
	TPM2B_PUBLIC dk_pub;
	int proved, quoted;
	TPM2B_DIGEST secret;
	TPM2B_ATTEST certify_info, quote_info;
	TPMT_SIGNATURE certify_sig, quote_sig;
	struct tpm_attest_pcr pcrs[TPM_QUOTE_PCRS_MAX];
	size_t npcrs;
	/* Marshalled copies handed out by tpm_attest_item. */
	uint8_t m[9][sizeof(TPM2B_PUBLIC) + sizeof(TPM2B_ATTEST)];
};

/* PolicySecret(TPM_RH_ENDORSEMENT), the low-range templates' authPolicy (SHA-256). */
static const uint8_t tpm_ek_policy_low[32] = {0x83, 0x71, 0x97, 0x67, 0x44, 0x84, 0xb3, 0xf8,
					      0x1a, 0x90, 0xcc, 0x8d, 0x46, 0xa5, 0xd7, 0x24,
					      0xfd, 0x52, 0xd7, 0x6e, 0x06, 0x52, 0x0b, 0x64,
					      0xf2, 0xa1, 0xda, 0x1b, 0x33, 0x14, 0x69, 0xaa};
/* PolicyB-SHA384 of the EK profile's high-range templates. */
static const uint8_t tpm_ek_policy_high384[48] = {
	0xb2, 0x6e, 0x7d, 0x28, 0xd1, 0x1a, 0x50, 0xbc, 0x53, 0xd8, 0x82, 0xbc,
	0xf5, 0xfd, 0x3a, 0x1a, 0x07, 0x41, 0x48, 0xbb, 0x35, 0xd3, 0xb4, 0xe4,
	0xcb, 0x1c, 0x0a, 0xd9, 0xbd, 0xe4, 0x19, 0xca, 0xcb, 0x47, 0xba, 0x09,
	0x69, 0x96, 0x46, 0x15, 0x0f, 0x9f, 0xc0, 0x00, 0xf3, 0xf8, 0x0e, 0x12};

static void tpm_ek_template(const struct tpm_ek_kind *k, TPM2B_PUBLIC *tmpl)
{
	TPMT_PUBLIC *a = &tmpl->publicArea;

	memset(tmpl, 0, sizeof(*tmpl));
	a->type = k->type;
	a->objectAttributes = TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT |
			      TPMA_OBJECT_SENSITIVEDATAORIGIN | TPMA_OBJECT_ADMINWITHPOLICY |
			      TPMA_OBJECT_RESTRICTED | TPMA_OBJECT_DECRYPT;
	if (k->high) {
		a->nameAlg = TPM2_ALG_SHA384;
		a->objectAttributes |= TPMA_OBJECT_USERWITHAUTH;
		a->authPolicy.size = sizeof(tpm_ek_policy_high384);
		memcpy(a->authPolicy.buffer, tpm_ek_policy_high384, sizeof(tpm_ek_policy_high384));
	} else {
		a->nameAlg = TPM2_ALG_SHA256;
		a->authPolicy.size = sizeof(tpm_ek_policy_low);
		memcpy(a->authPolicy.buffer, tpm_ek_policy_low, sizeof(tpm_ek_policy_low));
	}
	if (k->type == TPM2_ALG_RSA) {
		a->parameters.rsaDetail.symmetric.algorithm = TPM2_ALG_AES;
		a->parameters.rsaDetail.symmetric.keyBits.aes = 128;
		a->parameters.rsaDetail.symmetric.mode.aes = TPM2_ALG_CFB;
		a->parameters.rsaDetail.scheme.scheme = TPM2_ALG_NULL;
		a->parameters.rsaDetail.keyBits = 2048;
		a->unique.rsa.size = 256; /* zeros, as the profile says */
		return;
	}
	a->parameters.eccDetail.symmetric.algorithm = TPM2_ALG_AES;
	a->parameters.eccDetail.symmetric.keyBits.aes = k->high ? 256 : 128;
	a->parameters.eccDetail.symmetric.mode.aes = TPM2_ALG_CFB;
	a->parameters.eccDetail.scheme.scheme = TPM2_ALG_NULL;
	a->parameters.eccDetail.curveID = k->curve;
	a->parameters.eccDetail.kdf.scheme = TPM2_ALG_NULL;
	if (!k->high) {
		/* Low range: 32 zero bytes for x and y; high range: empty. */
		a->unique.ecc.x.size = 32;
		a->unique.ecc.y.size = 32;
	}
}

static int tpm_ek_create(struct tpm *t, const struct tpm_ek_kind *k, ESYS_TR *ret,
			 TPM2B_PUBLIC *ret_pub)
{
	TPM2B_PUBLIC tmpl, *pub = NULL;
	TPM2B_SENSITIVE_CREATE in = {0};
	TPM2B_DATA outside = {0};
	TPML_PCR_SELECTION creation = {0};
	ESYS_TR h = ESYS_TR_NONE;
	TSS2_RC rc;

	tpm_ek_template(k, &tmpl);
	rc = Esys_CreatePrimary(t->esys, ESYS_TR_RH_ENDORSEMENT, ESYS_TR_PASSWORD, ESYS_TR_NONE,
				ESYS_TR_NONE, &in, &tmpl, &outside, &creation, &h, &pub, NULL, NULL,
				NULL);
	if (rc != TSS2_RC_SUCCESS)
		return tpm_rc(t, rc, "creating the endorsement key (CreatePrimary, endorsement)");
	if (ret_pub)
		*ret_pub = *pub;
	Esys_Free(pub);
	*ret = h;
	return 0;
}

/* 1 when an NV index exists, 0 when not; its data size in *ret_size. */
static int tpm_nv_size(struct tpm *t, TPM2_HANDLE index, ESYS_TR *ret_h, size_t *ret_size)
{
	TPM2B_NV_PUBLIC *pub = NULL;
	ESYS_TR h = ESYS_TR_NONE;
	TSS2_RC rc;

	rc = Esys_TR_FromTPMPublic(t->esys, index, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, &h);
	if (rc != TSS2_RC_SUCCESS)
		return tpm_rc_base(rc) == TPM2_RC_HANDLE ? 0 : tpm_rc(t, rc, "opening an NV index");
	rc = Esys_NV_ReadPublic(t->esys, h, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, &pub, NULL);
	if (rc != TSS2_RC_SUCCESS) {
		Esys_TR_Close(t->esys, &h);
		return tpm_rc(t, rc, "reading an NV index's public area");
	}
	*ret_size = pub->nvPublic.dataSize;
	Esys_Free(pub);
	*ret_h = h;
	return 1;
}

static int tpm_ek_cert_read(struct tpm *t, const struct tpm_ek_kind **ret_kind, uint8_t **ret,
			    size_t *ret_len)
{
	const struct tpm_ek_kind *k = NULL;
	TPM2B_MAX_NV_BUFFER *part = NULL;
	ESYS_TR h = ESYS_TR_NONE;
	size_t size = 0, off = 0, i;
	uint8_t *buf;
	TSS2_RC rc;
	int r = 0;

	for (i = 0; i < TPM_EK_KINDS && r == 0; i++) {
		r = tpm_nv_size(t, tpm_ek_kinds[i].nv, &h, &size);
		if (r < 0)
			return r;
		k = &tpm_ek_kinds[i];
	}
	if (r == 0)
		return tpm_fail(
			t, -ENOKEY,
			"tpm: no EK certificate in the TPM's NV (indices 0x%08x, 0x%08x, "
			"0x%08x): the API enrols only a TPM its manufacturer certified. A "
			"Jetson Orin's fTPM gets one from the board's provisioning (EKB); for "
			"swtpm run swtpm_setup --create-ek-cert; otherwise write the "
			"manufacturer's DER certificate with tpm2_nvdefine 0x%08x and "
			"tpm2_nvwrite",
			tpm_ek_kinds[0].nv, tpm_ek_kinds[1].nv, tpm_ek_kinds[2].nv,
			tpm_ek_kinds[0].nv);
	if (size == 0 || size > TPM_EK_CERT_MAX) {
		Esys_TR_Close(t->esys, &h);
		return tpm_fail(t, -EKEYREJECTED, "tpm: the EK certificate index holds %zu bytes",
				size);
	}
	buf = malloc(size);
	if (!buf) {
		Esys_TR_Close(t->esys, &h);
		return tpm_fail(t, -ENOMEM, "tpm: out of memory");
	}
	while (off < size) {
		UINT16 n = (UINT16)(size - off > TPM_NV_CHUNK ? TPM_NV_CHUNK : size - off);

		rc = Esys_NV_Read(t->esys, h, h, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, n,
				  (UINT16)off, &part);
		if (rc != TSS2_RC_SUCCESS) {
			r = tpm_rc(t, rc, "reading the EK certificate from NV");
			goto out_free;
		}
		if (part->size != n) {
			Esys_Free(part);
			r = tpm_fail(t, -EIO, "tpm: a short read of the EK certificate");
			goto out_free;
		}
		memcpy(buf + off, part->buffer, n);
		Esys_Free(part);
		off += n;
	}
	Esys_TR_Close(t->esys, &h);
	*ret_kind = k;
	*ret = buf;
	*ret_len = size;
	return 0;
out_free:
	Esys_TR_Close(t->esys, &h);
	free(buf);
	return r;
}

/*
 * The certificate's key must be the EK's (n and e); *ret_len becomes the
 * DER's own length (an NV index may be padded).
 */
/* 1 when key is the RSA key of ek (n, e = 65537). */
static int tpm_ek_rsa_equal(EVP_PKEY *key, const TPM2B_PUBLIC *ek)
{
	const TPM2B_PUBLIC_KEY_RSA *n = &ek->publicArea.unique.rsa;
	uint8_t mod[TPM2_MAX_RSA_KEY_BYTES];
	BIGNUM *bn_n = NULL, *bn_e = NULL;
	int eq;

	eq = EVP_PKEY_get_base_id(key) == EVP_PKEY_RSA &&
	     EVP_PKEY_get_bn_param(key, OSSL_PKEY_PARAM_RSA_N, &bn_n) == 1 &&
	     EVP_PKEY_get_bn_param(key, OSSL_PKEY_PARAM_RSA_E, &bn_e) == 1 &&
	     BN_num_bytes(bn_n) == n->size && n->size <= sizeof(mod) &&
	     BN_bn2binpad(bn_n, mod, n->size) == n->size && !memcmp(mod, n->buffer, n->size) &&
	     BN_is_word(bn_e, 65537);
	BN_free(bn_n);
	BN_free(bn_e);
	return eq;
}

/* 1 when key is the EC point of ek (uncompressed 04 || x || y). */
static int tpm_ek_ecc_equal(EVP_PKEY *key, const TPM2B_PUBLIC *ek)
{
	const TPMS_ECC_POINT *q = &ek->publicArea.unique.ecc;
	uint8_t pt[1 + 2 * TPM2_MAX_ECC_KEY_BYTES];
	size_t len = 0;

	return EVP_PKEY_get_base_id(key) == EVP_PKEY_EC &&
	       EVP_PKEY_get_octet_string_param(key, OSSL_PKEY_PARAM_ENCODED_PUBLIC_KEY, pt,
					       sizeof(pt), &len) == 1 &&
	       q->x.size == q->y.size && len == 1 + 2u * q->x.size && pt[0] == 0x04 &&
	       !memcmp(pt + 1, q->x.buffer, q->x.size) &&
	       !memcmp(pt + 1 + q->x.size, q->y.buffer, q->y.size);
}

/*
 * The certificate's key must be the EK's; *ret_len becomes the DER's own
 * length (an NV index may be padded).
 */
static int tpm_ek_cert_check(struct tpm *t, const struct tpm_ek_kind *k, const uint8_t *der,
			     size_t *len, const TPM2B_PUBLIC *ek)
{
	const unsigned char *p = der;
	EVP_PKEY *key;
	X509 *x;
	int eq;

	x = d2i_X509(NULL, &p, (long)*len);
	if (!x)
		return tpm_fail(t, -EKEYREJECTED,
				"tpm: the EK certificate in NV 0x%08x is not DER X.509", k->nv);
	key = X509_get0_pubkey(x);
	eq = key &&
	     (k->type == TPM2_ALG_RSA ? tpm_ek_rsa_equal(key, ek) : tpm_ek_ecc_equal(key, ek));
	X509_free(x);
	if (!eq)
		return tpm_fail(
			t, -EKEYREJECTED,
			"tpm: the %s EK certificate in NV 0x%08x does not certify this "
			"TPM's EK (TCG default template): the certificate belongs to another "
			"TPM or the EK template differs",
			k->what, k->nv);
	*len = (size_t)(p - der);
	return 0;
}

static int tpm_ak_create(struct tpm *t, TPM2B_PUBLIC *ret_pub, TPM2B_PRIVATE *ret_priv)
{
	TPM2B_PUBLIC tmpl = {
		.publicArea =
			{
				.type = TPM2_ALG_RSA,
				.nameAlg = TPM2_ALG_SHA256,
				.objectAttributes =
					TPMA_OBJECT_RESTRICTED | TPMA_OBJECT_SIGN_ENCRYPT |
					TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT |
					TPMA_OBJECT_SENSITIVEDATAORIGIN | TPMA_OBJECT_USERWITHAUTH,
				.parameters.rsaDetail =
					{
						.symmetric = {.algorithm = TPM2_ALG_NULL},
						.scheme =
							{.scheme = TPM2_ALG_RSASSA,
							 .details =
								 {.rsassa =
									  {.hashAlg =
										   TPM2_ALG_SHA256}}},
						.keyBits = 2048,
					},
			},
	};
	TPM2B_SENSITIVE_CREATE in = {0};

	return tpm_object_create(t, "creating the attestation key", &tmpl, &in, ret_pub, ret_priv);
}

static int tpm_attest_new_once(struct tpm *t, struct tpm_attest *a)
{
	ESYS_TR ek = ESYS_TR_NONE;
	int r;

	free(a->ek_cert);
	a->ek_cert = NULL;
	r = tpm_ek_cert_read(t, &a->ek, &a->ek_cert, &a->ek_cert_len);
	if (r < 0)
		return r;
	r = tpm_ek_create(t, a->ek, &ek, &a->ek_pub);
	if (r < 0)
		return r;
	tpm_handle_flush(t, &ek);
	r = tpm_ek_cert_check(t, a->ek, a->ek_cert, &a->ek_cert_len, &a->ek_pub);
	if (r < 0)
		return r;
	r = tpm_srk_get(t);
	if (r < 0)
		return r;
	return tpm_ak_create(t, &a->ak_pub, &a->ak_priv);
}

int tpm_attest_new(struct tpm *t, struct tpm_attest **ret)
{
	struct tpm_attest *a;
	int r;

	if (!t || !ret)
		return -EINVAL;
	a = calloc(1, sizeof(*a));
	if (!a)
		return -ENOMEM;
	tpm_call_begin(t);
	r = tpm_attest_new_once(t, a);
	if (r == -EBUSY && tpm_leftovers_flush(t))
		r = tpm_attest_new_once(t, a);
	r = tpm_call_end(t, r);
	if (r < 0) {
		tpm_attest_free(a);
		return r;
	}
	*ret = a;
	return 0;
}

/* A policy session satisfying the EK's PolicySecret(endorsement), salted with the SRK. */
static int tpm_ek_session(struct tpm *t, ESYS_TR *ret)
{
	TPM2B_TIMEOUT *timeout = NULL;
	TPMT_TK_AUTH *ticket = NULL;
	ESYS_TR s = ESYS_TR_NONE;
	TSS2_RC rc;
	int r;

	r = tpm_session_start(t, TPM2_SE_POLICY, 1, 0, &s);
	if (r < 0)
		return r;
	rc = Esys_PolicySecret(t->esys, ESYS_TR_RH_ENDORSEMENT, s, ESYS_TR_PASSWORD, ESYS_TR_NONE,
			       ESYS_TR_NONE, NULL, NULL, NULL, 0, &timeout, &ticket);
	if (rc != TSS2_RC_SUCCESS) {
		tpm_handle_flush(t, &s);
		return tpm_rc(t, rc, "PolicySecret(endorsement) for the EK");
	}
	Esys_Free(timeout);
	Esys_Free(ticket);
	*ret = s;
	return 0;
}

static int tpm_attest_activate(struct tpm *t, struct tpm_attest *a, ESYS_TR ak,
			       const TPM2B_ID_OBJECT *blob, const TPM2B_ENCRYPTED_SECRET *sec)
{
	ESYS_TR ek = ESYS_TR_NONE, hmac = ESYS_TR_NONE, pol = ESYS_TR_NONE;
	TPM2B_DIGEST *cred = NULL;
	TSS2_RC rc;
	int r;

	r = tpm_srk_get(t);
	if (r < 0)
		return r;
	/* The credential comes back encrypted by the salted session. */
	r = tpm_session_start(t, TPM2_SE_HMAC, 1, TPMA_SESSION_ENCRYPT, &hmac);
	if (r < 0)
		goto out;
	/* A low-range EK answers to PolicySecret(endorsement), a high-range one to its password. */
	if (a->ek->high)
		pol = ESYS_TR_PASSWORD;
	else
		r = tpm_ek_session(t, &pol);
	if (r < 0)
		goto out;
	/*
	 * The sessions hold their salt: the SRK may go, so that AK and EK fit
	 * in a TPM with three object slots (swtpm, some firmware TPMs).
	 */
	tpm_objects_park(t);
	r = tpm_ek_create(t, a->ek, &ek, NULL);
	if (r < 0)
		goto out;
	rc = Esys_ActivateCredential(t->esys, ak, ek, hmac, pol, ESYS_TR_NONE, blob, sec, &cred);
	if (rc != TSS2_RC_SUCCESS) {
		TSS2_RC base = tpm_rc_base(rc);

		/* A refusal of the credential itself, not a full or locked TPM. */
		if ((rc & TSS2_RC_LAYER_MASK) != TSS2_TPM_RC_LAYER ||
		    base == TPM2_RC_OBJECT_MEMORY || base == TPM2_RC_SESSION_MEMORY ||
		    base == TPM2_RC_OBJECT_HANDLES || base == TPM2_RC_SESSION_HANDLES ||
		    base == TPM2_RC_LOCKOUT)
			r = tpm_rc(t, rc, "activating the API's credential (ActivateCredential)");
		else
			r = tpm_fail(t, -EACCES,
				     "tpm: the API's credential does not activate with this "
				     "TPM's EK and AK (%s)",
				     Tss2_RC_Decode(rc));
		goto out;
	}
	a->secret = *cred;
	crypto_wipe(cred, sizeof(*cred));
	Esys_Free(cred);
	tpm_esys_scrub(t);
	r = 0;
out:
	if (pol != ESYS_TR_PASSWORD)
		tpm_handle_flush(t, &pol);
	tpm_handle_flush(t, &hmac);
	tpm_handle_flush(t, &ek);
	return r;
}

static int tpm_attest_quote(struct tpm *t, struct tpm_attest *a, ESYS_TR ak,
			    const TPM2B_DATA *nonce)
{
	TPMT_SIG_SCHEME scheme = {.scheme = TPM2_ALG_NULL};
	TPML_PCR_SELECTION one;
	TPML_DIGEST *values = NULL;
	TPM2B_ATTEST *quoted = NULL;
	TPMT_SIGNATURE *sig = NULL;
	UINT32 i, pcr, upd;
	TSS2_RC rc;

	a->npcrs = 0;
	for (i = 0; i < t->pcrs.count; i++) {
		const TPMS_PCR_SELECTION *s = &t->pcrs.pcrSelections[i];

		for (pcr = 0; pcr < 8u * s->sizeofSelect; pcr++) {
			if (!(s->pcrSelect[pcr / 8] & (1u << (pcr % 8))))
				continue;
			if (a->npcrs == TPM_QUOTE_PCRS_MAX)
				return tpm_fail(t, -EINVAL, "tpm: more than %d PCRs to quote",
						TPM_QUOTE_PCRS_MAX);
			memset(&one, 0, sizeof(one));
			one.count = 1;
			one.pcrSelections[0].hash = s->hash;
			one.pcrSelections[0].sizeofSelect = 3;
			one.pcrSelections[0].pcrSelect[pcr / 8] = (BYTE)(1u << (pcr % 8));
			rc = Esys_PCR_Read(t->esys, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, &one,
					   &upd, NULL, &values);
			if (rc != TSS2_RC_SUCCESS)
				return tpm_rc(t, rc, "reading a PCR to quote");
			if (values->count != 1) {
				Esys_Free(values);
				return tpm_fail(t, -EIO, "tpm: PCR %u of a bank is not active",
						pcr);
			}
			a->pcrs[a->npcrs].bank = s->hash;
			a->pcrs[a->npcrs].index = pcr;
			a->pcrs[a->npcrs].value = values->digests[0];
			a->npcrs++;
			Esys_Free(values);
		}
	}
	rc = Esys_Quote(t->esys, ak, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, nonce, &scheme,
			&t->pcrs, &quoted, &sig);
	if (rc != TSS2_RC_SUCCESS)
		return tpm_rc(t, rc, "quoting the PCRs (Quote)");
	a->quote_info = *quoted;
	a->quote_sig = *sig;
	Esys_Free(quoted);
	Esys_Free(sig);
	a->quoted = 1;
	return 0;
}

static int tpm_attest_prove_once(struct tpm *t, struct tpm_attest *a, const TPM2B_ID_OBJECT *blob,
				 const TPM2B_ENCRYPTED_SECRET *sec, const TPM2B_DATA *nonce)
{
	TPMT_SIG_SCHEME scheme = {.scheme = TPM2_ALG_NULL};
	TPM2B_ATTEST *info = NULL;
	TPMT_SIGNATURE *sig = NULL;
	ESYS_TR ak = ESYS_TR_NONE;
	TSS2_RC rc;
	int r;

	r = tpm_ensure_loaded(t);
	if (r == 0)
		r = tpm_srk_get(t);
	if (r < 0)
		return r;
	a->dk_pub = t->dk_pub;
	r = tpm_object_load(t, "loading the attestation key", &a->ak_pub, &a->ak_priv, &ak);
	if (r < 0)
		return r;
	r = tpm_attest_activate(t, a, ak, blob, sec);
	if (r == 0)
		r = tpm_dk_get(t);
	if (r < 0)
		goto out;
	/* Nothing secret in Certify: the DK's ADMIN role answers to its empty authValue. */
	rc = Esys_Certify(t->esys, t->dk, ak, ESYS_TR_PASSWORD, ESYS_TR_PASSWORD, ESYS_TR_NONE,
			  nonce, &scheme, &info, &sig);
	if (rc != TSS2_RC_SUCCESS) {
		r = tpm_rc(t, rc, "certifying the device key (Certify)");
		goto out;
	}
	a->certify_info = *info;
	a->certify_sig = *sig;
	Esys_Free(info);
	Esys_Free(sig);
	a->quoted = 0;
	if (t->pcrs.count) {
		r = tpm_attest_quote(t, a, ak, nonce);
		if (r < 0)
			goto out;
	}
	a->proved = 1;
	r = 0;
out:
	tpm_handle_flush(t, &ak);
	return r;
}

int tpm_attest_prove(struct tpm *t, struct tpm_attest *a, const uint8_t *blob, size_t blob_len,
		     const uint8_t *enc_secret, size_t enc_secret_len, const uint8_t *nonce,
		     size_t nonce_len)
{
	TPM2B_ID_OBJECT id = {0};
	TPM2B_ENCRYPTED_SECRET sec = {0};
	TPM2B_DATA qual = {0};
	size_t off = 0;
	int r;

	if (!t || !a || !blob || !enc_secret || !nonce)
		return -EINVAL;
	tpm_call_begin(t);
	if (Tss2_MU_TPM2B_ID_OBJECT_Unmarshal(blob, blob_len, &off, &id) != TSS2_RC_SUCCESS ||
	    off != blob_len) {
		r = tpm_fail(t, -EBADMSG,
			     "tpm: the API's credential_blob is not a TPM2B_ID_OBJECT");
		goto out;
	}
	off = 0;
	if (Tss2_MU_TPM2B_ENCRYPTED_SECRET_Unmarshal(enc_secret, enc_secret_len, &off, &sec) !=
		    TSS2_RC_SUCCESS ||
	    off != enc_secret_len) {
		r = tpm_fail(t, -EBADMSG,
			     "tpm: the API's encrypted_secret is not a TPM2B_ENCRYPTED_SECRET");
		goto out;
	}
	if (nonce_len == 0 || nonce_len > sizeof(qual.buffer)) {
		r = tpm_fail(t, -EBADMSG, "tpm: the API's nonce has %zu bytes", nonce_len);
		goto out;
	}
	qual.size = (UINT16)nonce_len;
	memcpy(qual.buffer, nonce, nonce_len);
	a->proved = 0;
	r = tpm_attest_prove_once(t, a, &id, &sec, &qual);
	if (r == -EBUSY && tpm_leftovers_flush(t))
		r = tpm_attest_prove_once(t, a, &id, &sec, &qual);
out:
	return tpm_call_end(t, r);
}

int tpm_attest_item(const struct tpm_attest *a, enum tpm_attest_item which, const uint8_t **ret,
		    size_t *ret_len)
{
	struct tpm_attest *w = (struct tpm_attest *)a; /* the marshalled cache only */
	uint8_t *buf;
	size_t cap, off = 0;
	TSS2_RC rc;

	if (!a || !ret || !ret_len || (unsigned)which > TPM_ATTEST_QUOTE_SIGNATURE)
		return -EINVAL;
	if (which == TPM_ATTEST_EK_CERT) {
		*ret = a->ek_cert;
		*ret_len = a->ek_cert_len;
		return 0;
	}
	if (which >= TPM_ATTEST_SECRET && !a->proved)
		return -ENOENT;
	if (which >= TPM_ATTEST_QUOTE_INFO && !a->quoted)
		return -ENOENT;
	if (which == TPM_ATTEST_SECRET) {
		*ret = a->secret.buffer;
		*ret_len = a->secret.size;
		return 0;
	}
	buf = w->m[which];
	cap = sizeof(w->m[which]);
	switch (which) {
	case TPM_ATTEST_EK_PUBLIC:
		rc = Tss2_MU_TPM2B_PUBLIC_Marshal(&a->ek_pub, buf, cap, &off);
		break;
	case TPM_ATTEST_AK_PUBLIC:
		rc = Tss2_MU_TPM2B_PUBLIC_Marshal(&a->ak_pub, buf, cap, &off);
		break;
	case TPM_ATTEST_DK_PUBLIC:
		rc = Tss2_MU_TPM2B_PUBLIC_Marshal(&a->dk_pub, buf, cap, &off);
		break;
	case TPM_ATTEST_CERTIFY_INFO:
		rc = Tss2_MU_TPM2B_ATTEST_Marshal(&a->certify_info, buf, cap, &off);
		break;
	case TPM_ATTEST_CERTIFY_SIGNATURE:
		rc = Tss2_MU_TPMT_SIGNATURE_Marshal(&a->certify_sig, buf, cap, &off);
		break;
	case TPM_ATTEST_QUOTE_INFO:
		rc = Tss2_MU_TPM2B_ATTEST_Marshal(&a->quote_info, buf, cap, &off);
		break;
	default:
		rc = Tss2_MU_TPMT_SIGNATURE_Marshal(&a->quote_sig, buf, cap, &off);
		break;
	}
	if (rc != TSS2_RC_SUCCESS)
		return -EIO;
	*ret = buf;
	*ret_len = off;
	return 0;
}

int tpm_attest_pcr(const struct tpm_attest *a, size_t i, const char **ret_bank, unsigned *ret_index,
		   const uint8_t **ret_digest, size_t *ret_len)
{
	size_t b;

	if (!a || !ret_bank || !ret_index || !ret_digest || !ret_len)
		return -EINVAL;
	if (!a->quoted || i >= a->npcrs)
		return -ENOENT;
	for (b = 0; b < TPM_NBANKS; b++)
		if (tpm_banks[b].alg == a->pcrs[i].bank)
			break;
	if (b == TPM_NBANKS)
		return -EIO;
	*ret_bank = tpm_banks[b].name;
	*ret_index = a->pcrs[i].index;
	*ret_digest = a->pcrs[i].value.buffer;
	*ret_len = a->pcrs[i].value.size;
	return 0;
}

void tpm_attest_free(struct tpm_attest *a)
{
	if (!a)
		return;
	free(a->ek_cert);
	crypto_wipe(a, sizeof(*a));
	free(a);
}

const char *tpm_last_error(struct tpm *t)
{
	return t ? t->err : "";
}
