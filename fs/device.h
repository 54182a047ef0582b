/*
 * device.h - this device's TPM as the filesystem uses it: opened, loaded
 * and unsealed at start (the sealed store holds the credentials and the
 * legacy resource_secret, so that a start needs no operator), enrolled
 * with the API when it is not yet and credentials are known, and asked to
 * unwrap format-2 content keys.
 *
 * Without a TPM (tpm = off, or none found under tpm = auto) format-2 files
 * cannot be read: device_id answers -ENOENT and device_unwrap -EACCES, the
 * reason logged at start. When the sealed store no longer unseals (a PCR
 * changed, another TPM) device_status says "error" with the reason and the
 * fix, format-2 reads fail with EACCES, and the next login re-enrols.
 */
#ifndef AZAION_DEVICE_H
#define AZAION_DEVICE_H

#include <stddef.h>
#include <stdint.h>

#include "fs/config.h"
#include "fs/session.h"

struct device;

/*
 * Opens the TPM as the configuration says and, when the device is
 * enrolled, loads its key and unseals the store into locked memory (no
 * network I/O). Fails, with *ret_msg (msg.h) for the caller to say, only
 * when tpm = required and no TPM answers (-ENODEV), the TPM wait was
 * stopped by a signal (-EINTR), or tpm_owner_auth_file cannot be read;
 * any other trouble leaves a device without a working TPM, with the
 * reason in device_status() for the caller to say (a sealed store that
 * does not load or unseal: "error"). Under tpm = auto a TPM that is plainly
 * absent is given up at once (tpm_open's quick mode).
 */
int device_new(const struct config *c, struct session *s, struct device **ret, char **ret_msg);
void device_free(struct device *d);

/*
 * Logs the session in at start: with the configured credentials when
 * there are, else with those the sealed store held (unattended start),
 * which are handed to the session and wiped here. -ENOKEY (logged at info)
 * when there are none.
 */
int device_login(struct device *d);

/*
 * Enrols the device (device key, sealed store, POST /devices,
 * state_dir/device_id) when a TPM is present, credentials are known, and
 * it is not enrolled, or its sealed store no longer unseals (re-enrolment
 * after a PCR change), or the session's credentials differ from the sealed
 * ones. Registers an enrolled key that has no device id yet. 0 when
 * nothing was needed; -ENODEV without a TPM; -EBUSY while another
 * enrolment runs. A failed step is in device_status() ("error") and in
 * *ret_msg (msg.h, "WHAT: WHY") for the caller to say; nothing is logged
 * above debug but the enrolment's progress.
 */
int device_enroll_if_needed(struct device *d, char **ret_msg);

/* The same, unconditionally: a new device key and sealed store (azaionctl enroll). */
int device_enroll(struct device *d, char **ret_msg);

/*
 * The device id into buf (cap bytes); -ENOENT when not enrolled or
 * without a TPM. Notices an enrolment made by another process (the
 * device_id file changed) and reloads the key and the sealed store.
 */
int device_id(struct device *d, char *buf, size_t cap);

/*
 * Unwraps a format-2 content key into key (locked memory of the caller).
 * -EACCES when the TPM cannot (none, PCR mismatch, another TPM's blobs),
 * -EIO when the wrapped key is not for this device key; *ret_msg (msg.h)
 * says which, with the TPM's words.
 */
int device_unwrap(struct device *d, const uint8_t *wrapped, size_t len, uint8_t *key, size_t cap,
		  size_t *ret_len, char **ret_msg);

/*
 * The legacy resource_secret the sealed store held (format 1), copied
 * into locked memory (secmem_free it); -ENOENT when it held none, e.g.
 * when none was configured at enrolment (the documented default applies),
 * or there is no enrolled TPM; -ENOKEY when there is a sealed store that
 * did not unseal (a PCR change), so what it holds is unknown.
 */
int device_resource_secret(struct device *d, char **ret, size_t *ret_len);

/* "ok", "absent" or "error"; the reason, if any, is copied into reason (cap bytes). */
const char *device_status(struct device *d, char *reason, size_t cap);

#endif
