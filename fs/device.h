/*
 * device.h - this device's TPM as the filesystem uses it: opened and
 * loaded at start, enrolled with the API when it is not yet and
 * credentials are known, and asked to unwrap format-2 content keys.
 * Without a TPM (tpm = off, or none found under tpm = auto) format-2 files
 * cannot be read: device_unwrap answers -EACCES with the reason logged.
 */
#ifndef AZAION_DEVICE_H
#define AZAION_DEVICE_H

#include <stddef.h>
#include <stdint.h>

#include "fs/config.h"
#include "fs/session.h"

struct device;

/*
 * Opens the TPM as the configuration says. -ENODEV (logged) only when
 * tpm = required and no TPM answers; any other trouble leaves a device
 * without a TPM, with the reason in device_status().
 */
int device_new(const struct config *c, struct session *s, struct device **ret);
void device_free(struct device *d);

/*
 * Enrols the device (device key, sealed credentials, POST /devices,
 * state_dir/device_id) when a TPM is present and credentials are known,
 * and registers an already enrolled key that has no device id yet.
 */
int device_enroll_if_needed(struct device *d);

/* The device id into buf (cap bytes); -ENOENT when not enrolled. */
int device_id(struct device *d, char *buf, size_t cap);

/* Unwraps a format-2 content key into key (locked memory of the caller). */
int device_unwrap(struct device *d, const uint8_t *wrapped, size_t len, uint8_t *key, size_t cap,
		  size_t *ret_len);

/* "ok", "absent" or "error"; the reason, if any, is copied into reason (cap bytes). */
const char *device_status(struct device *d, char *reason, size_t cap);

#endif
