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

#include <stddef.h>
#include <stdint.h>

/* priority is syslog's (LOG_ERR, LOG_WARNING, LOG_INFO); msg never holds a secret. */
typedef void (*tpm_log_fn)(int priority, const char *msg);

struct tpm_opts {
	const char *tcti;              /* e.g. "device:/dev/tpmrm0", "swtpm:port=2321" */
	unsigned wait_seconds;         /* wait for the device to appear */
	const char *pcrs;              /* "sha256:0,2,7" or NULL/"" for none; banks
					* sha1, sha256, sha384, sha512, several
					* joined by '+' */
	const uint8_t *owner_auth;     /* owner hierarchy password, or NULL; copied,
					* used only to create the SRK */
	size_t owner_auth_len;
	const char *state_dir;         /* where blobs live, mode 0600 */
	tpm_log_fn log;                /* may be NULL */
	int quick;		       /* tpm = auto: see tpm_open */
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
 */
int tpm_open(const struct tpm_opts *opts, struct tpm **ret);
void tpm_close(struct tpm *t);

/*
 * 1 when state_dir holds this device's blobs (a complete set; whether they
 * are this TPM's is tpm_load's check), else 0.
 */
int tpm_is_enrolled(struct tpm *t);

/*
 * Enrolment: creates (or re-creates) the device key and the sealed store
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
int tpm_unwrap(struct tpm *t, const uint8_t *wrapped, size_t len, uint8_t *buf,
	       size_t cap, size_t *ret_len);

/*
 * The last call's error message ("" when it succeeded); valid until the
 * next call on t.
 */
const char *tpm_last_error(struct tpm *t);

#endif
