/*
 * tpm.h - the device's TPM objects and flows of docs/tpm.md behind a small
 * interface: open, enrol, load, unseal, unwrap.
 *
 * A struct tpm owns one ESYS context; calls on it are serialised by an
 * internal mutex, so several threads may share it. A build or a run without
 * a TPM answers -ENODEV from tpm_open ("absent"), never a crash. Between
 * calls it holds no object or session slot in the TPM (its keys are kept
 * as saved contexts), so that several programs can share a TPM that has no
 * resource manager; when the TPM is full all the same, what other
 * programs left there is flushed, with a warning, and the call retried.
 *
 * Errors are 0 or a negative errno, each cause logged once here:
 *   -ENODEV    no TPM could be reached through the TCTI within wait
 *   -ENOENT    not enrolled: no blobs in state_dir
 *   -EACCES    the PCR policy does not hold (boot state changed), or the
 *              owner password is wrong
 *   -ESTALE    the SRK differs from the one recorded at enrolment
 *              (another TPM, or a cleared one), or the blobs are not this
 *              TPM's
 *   -EBADMSG   a wrapped key or sealed store that does not decrypt
 *   -EINVAL    a bad PCR selection or argument
 *   -ENOBUFS   the caller's buffer is too small for what unseal or unwrap
 *              yields (nothing is written)
 *   -ENOKEY    no EK certificate in the TPM's NV (attestation)
 *   -EKEYREJECTED  the EK certificate is not this TPM's EK
 *   -EBUSY     no free object or session slot in the TPM, even after
 *              flushing what other programs left there
 *   -EIO       any other TPM or file failure
 * tpm_last_error() keeps the last message, for health reports.
 *
 * Nothing is written to an out-parameter or a caller's buffer on failure.
 * tpm2-tss itself may print to stderr; TSS2_LOG=all+NONE silences it.
 */
#ifndef AZAION_TPM_H
#define AZAION_TPM_H

#include <signal.h>
#include <stddef.h>
#include <stdint.h>

/* priority is syslog's (LOG_ERR, LOG_WARNING, LOG_INFO); msg never holds a secret. */
typedef void (*tpm_log_fn)(int priority, const char *msg);

struct tpm_opts {
	const char *tcti;	   /* e.g. "device:/dev/tpmrm0", "swtpm:port=2321" */
	unsigned wait_seconds;	   /* wait for the device to appear */
	const char *pcrs;	   /* "sha256:0,2,7" or NULL/"" for none; banks
					* sha1, sha256, sha384, sha512, several
					* joined by '+' */
	const uint8_t *owner_auth; /* owner hierarchy password, or NULL; copied,
					* used only to create the SRK */
	size_t owner_auth_len;
	const char *state_dir; /* where blobs live, mode 0600 */
	tpm_log_fn log;	       /* may be NULL */
	int quick;	       /* tpm = auto: see tpm_open */
	/* Non-zero (set by a signal handler) ends a wait with -EINTR; may be NULL. */
	const volatile sig_atomic_t *stop;
};

struct tpm;
/*
 * Checks opts (-EINVAL for a bad PCR selection, before any waiting), then
 * retries the TCTI until a started TPM answers or wait_seconds pass
 * (-ENODEV). Never sends TPM2_Startup. opts need not outlive the call.
 *
 * With opts->quick (tpm = auto) a TPM that is plainly absent is -ENODEV
 * at once: a "device:" TCTI whose node is missing on a machine without a
 * TEE, or any TCTI that has not answered within 2 s. Only a missing node
 * where a TEE exists (a firmware TPM still to come) is waited for, up to
 * wait_seconds.
 *
 * While it waits it says every TPM_WAIT_SAY_S seconds (LOG_WARNING) what it
 * waits for, how long is left and what to check; *opts->stop ends the wait
 * within a second (-EINTR, logged).
 */
#define TPM_WAIT_SAY_S 5
int tpm_open(const struct tpm_opts *opts, struct tpm **ret);
void tpm_close(struct tpm *t);

/*
 * 1 when state_dir holds this device's blobs (a complete set; whether they
 * are this TPM's is tpm_load's check), else 0.
 */
int tpm_is_enrolled(struct tpm *t);

/*
 * Enrolment, the TPM's half (tpm_attest_* prove it to the API): creates
 * (or re-creates) the device key and the sealed store
 * holding secret (up to 64 KiB; a random 256-bit key is sealed and the store
 * kept AES-256-GCM-encrypted under it in state_dir), bound to the PCR
 * selection, records the SRK's public key, writes the blobs with mode 0600
 * and returns the device key's public half as PEM (malloc()ed).
 */
int tpm_enroll(struct tpm *t, const void *secret, size_t len, char **ret_pem);

/*
 * Loads the device key from state_dir and checks the SRK (-ESTALE when it
 * differs). The objects keep the PCR selection they were enrolled with; a
 * different opts->pcrs is logged as a warning and applies from the next
 * enrolment. tpm_public_pem, tpm_unseal and tpm_unwrap load on first use.
 */
int tpm_load(struct tpm *t);

/* Public half of the loaded device key, PEM, malloc()ed. */
int tpm_public_pem(struct tpm *t, char **ret_pem);

/*
 * Unseals the store into buf (cap bytes, the caller's locked memory).
 * Runs in a salted, parameter-encrypted session; -EACCES on a PCR mismatch.
 */
int tpm_unseal(struct tpm *t, uint8_t *buf, size_t cap, size_t *ret_len);

/*
 * RSA-OAEP (SHA-256, empty label) decryption of wrapped with the device
 * key, into buf (the caller's locked memory). Salted, parameter-encrypted
 * session; -EACCES on a PCR mismatch, -EBADMSG when it does not decrypt.
 */
int tpm_unwrap(struct tpm *t, const uint8_t *wrapped, size_t len, uint8_t *buf, size_t cap,
	       size_t *ret_len);

/*
 * Attested enrolment (docs/trust.md 1): evidence that the device key lives in
 * this TPM, for the API's two calls. One struct tpm_attest is one attempt:
 * its AK and the proof built over one challenge.
 *
 * tpm_attest_new reads the EK certificate from NV (the first of RSA-2048
 * at 0x01c00002, ECC P-256 at 0x01c0000a, high-range ECC P-384 at
 * 0x01c00016), creates the EK from the TCG template of that index, checks
 * that its public key is the certificate's, and creates an AK (restricted
 * signing, fixedTPM, fixedParent, sensitiveDataOrigin) under the SRK.
 * -ENOKEY: no EK certificate (the message says how to provision one);
 * -EKEYREJECTED: a certificate that does not match the TPM's EK.
 *
 * tpm_attest_prove takes the challenge (credential_blob, a TPM2B_ID_OBJECT,
 * and encrypted_secret, a TPM2B_ENCRYPTED_SECRET, both marshalled with
 * their size fields) and the nonce: TPM2_ActivateCredential (salted,
 * response encrypted), TPM2_Certify of the enrolled device key by the AK
 * over the nonce, and, when the key is bound to PCRs, TPM2_Quote of those
 * PCRs over the same nonce. -EACCES when the TPM refuses the credential
 * (made for another TPM or another AK).
 */
enum tpm_attest_item {
	TPM_ATTEST_EK_CERT,	      /* DER */
	TPM_ATTEST_EK_PUBLIC,	      /* TPM2B_PUBLIC */
	TPM_ATTEST_AK_PUBLIC,	      /* TPM2B_PUBLIC */
	TPM_ATTEST_SECRET,	      /* the credential's bytes (after prove) */
	TPM_ATTEST_DK_PUBLIC,	      /* TPM2B_PUBLIC */
	TPM_ATTEST_CERTIFY_INFO,      /* TPM2B_ATTEST */
	TPM_ATTEST_CERTIFY_SIGNATURE, /* TPMT_SIGNATURE */
	TPM_ATTEST_QUOTE_INFO,	      /* TPM2B_ATTEST; -ENOENT without PCRs */
	TPM_ATTEST_QUOTE_SIGNATURE,   /* TPMT_SIGNATURE; -ENOENT without PCRs */
};

struct tpm_attest;
int tpm_attest_new(struct tpm *t, struct tpm_attest **ret);
int tpm_attest_prove(struct tpm *t, struct tpm_attest *a, const uint8_t *blob, size_t blob_len,
		     const uint8_t *enc_secret, size_t enc_secret_len, const uint8_t *nonce,
		     size_t nonce_len);
/* Bytes of one item, valid until tpm_attest_free; -ENOENT when it has none (yet). */
int tpm_attest_item(const struct tpm_attest *a, enum tpm_attest_item which, const uint8_t **ret,
		    size_t *ret_len);
/*
 * The i-th quoted PCR value (bank name "sha256", index, digest), read just
 * before the quote; -ENOENT past the last.
 */
int tpm_attest_pcr(const struct tpm_attest *a, size_t i, const char **ret_bank, unsigned *ret_index,
		   const uint8_t **ret_digest, size_t *ret_len);
/* Wipes the credential and frees; accepts NULL. */
void tpm_attest_free(struct tpm_attest *a);

/*
 * The last call's error message ("" when it succeeded); valid until the
 * next call on t.
 */
const char *tpm_last_error(struct tpm *t);

#endif
