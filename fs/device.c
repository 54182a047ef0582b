/*
 * device.c - the TPM wiring of the filesystem (see device.h): kept in one
 * small place so that unattended start (unsealing the stored credentials)
 * can grow here.
 *
 * Locking: d->lock guards the id, the status and the enrolling flag. It is
 * not held across TPM or API calls; an enrolment in progress makes a second
 * one return -EBUSY. The struct tpm serialises its own calls.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "crypto/crypto.h"
#include "fs/device.h"
#include "fs/log.h"
#include "tpm/tpm.h"

#define DEVICE_ID_MAX 128

struct device {
	const struct config *c;
	struct session *s;
	struct tpm *tpm; /* NULL: none */
	char *id_path;

	pthread_mutex_t lock;
	char id[DEVICE_ID_MAX + 1]; /* "" when not enrolled */
	int loaded;		    /* the device key is loaded */
	int enrolling;
	const char *status;
	char reason[256];
};

static void device_set_status(struct device *d, const char *status, const char *reason)
{
	pthread_mutex_lock(&d->lock);
	d->status = status;
	snprintf(d->reason, sizeof(d->reason), "%s", reason ? reason : "");
	pthread_mutex_unlock(&d->lock);
}

static int device_read_id(struct device *d)
{
	char buf[DEVICE_ID_MAX + 2];
	ssize_t n;
	int fd;

	fd = open(d->id_path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n < 0)
		return -EIO;
	while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r' || buf[n - 1] == ' '))
		n--;
	if (n == 0 || n > DEVICE_ID_MAX) {
		log_warn("%s: not a device id", d->id_path);
		return -EINVAL;
	}
	buf[n] = '\0';
	memcpy(d->id, buf, (size_t)n + 1);
	return 0;
}

static int device_write_id(struct device *d, const char *id)
{
	char *tmp;
	size_t n = strlen(id);
	int fd, r = 0;

	if (n == 0 || n > DEVICE_ID_MAX)
		return -EPROTO;
	if (asprintf(&tmp, "%s.tmp", d->id_path) < 0)
		return -ENOMEM;
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd < 0) {
		r = -errno;
	} else {
		if (write(fd, id, n) != (ssize_t)n || write(fd, "\n", 1) != 1 || fsync(fd) < 0)
			r = -EIO;
		close(fd);
		if (r == 0 && rename(tmp, d->id_path) < 0)
			r = -errno;
	}
	if (r < 0) {
		log_err("cannot write %s: %s", d->id_path, strerror(-r));
		unlink(tmp);
	}
	free(tmp);
	return r;
}

int device_new(const struct config *c, struct session *s, struct device **ret)
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
		*ret = d;
		return 0;
	}
	if (c->tpm_owner_auth_file) {
		r = config_read_secret_file(c->tpm_owner_auth_file, 1, &auth, &auth_len, &msg);
		if (r < 0) {
			log_err("tpm_owner_auth_file: %s", msg ? msg : strerror(-r));
			free(msg);
			goto err;
		}
	}
	o.tcti = c->tpm_tcti;
	o.wait_seconds = c->tpm_wait;
	o.pcrs = c->tpm_pcrs;
	o.owner_auth = (const uint8_t *)auth;
	o.owner_auth_len = auth_len;
	o.state_dir = c->state_dir;
	o.log = log_sink;
	r = tpm_open(&o, &d->tpm);
	secmem_free(auth);
	if (r < 0) {
		d->tpm = NULL;
		if (c->tpm == CONFIG_TPM_REQUIRED) {
			log_err("tpm = required, but no TPM at %s: %s", c->tpm_tcti, strerror(-r));
			r = -ENODEV;
			goto err;
		}
		log_info("no TPM at %s (%s): format-2 files will not be readable", c->tpm_tcti,
			 strerror(-r));
		snprintf(d->reason, sizeof(d->reason), "no TPM at %s: %s", c->tpm_tcti,
			 strerror(-r));
		*ret = d;
		return 0;
	}
	d->status = "ok";
	if (tpm_is_enrolled(d->tpm)) {
		r = tpm_load(d->tpm);
		if (r < 0) {
			log_err("TPM: cannot load the device key: %s", tpm_last_error(d->tpm));
			d->status = "error";
			snprintf(d->reason, sizeof(d->reason), "%s", tpm_last_error(d->tpm));
		} else {
			d->loaded = 1;
			device_read_id(d);
		}
	}
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
	free(d->id_path);
	pthread_mutex_destroy(&d->lock);
	free(d);
}

static int device_register(struct device *d, const char *pem)
{
	char host[256] = "azaionfs", *id = NULL;
	int r;

	gethostname(host, sizeof(host) - 1);
	r = session_register_device(d->s, host, pem, &id);
	if (r < 0) {
		log_err("TPM: registering the device with the API failed: %s", strerror(-r));
		return r;
	}
	r = device_write_id(d, id);
	if (r == 0) {
		pthread_mutex_lock(&d->lock);
		snprintf(d->id, sizeof(d->id), "%s", id);
		pthread_mutex_unlock(&d->lock);
		log_info("TPM: device enrolled as %s", id);
	}
	free(id);
	return r;
}

int device_enroll_if_needed(struct device *d)
{
	char *blob = NULL, *pem = NULL;
	size_t len;
	int r, enrolled, have_id;

	if (!d->tpm)
		return -ENODEV;
	pthread_mutex_lock(&d->lock);
	have_id = d->id[0] != '\0';
	if (d->enrolling || (have_id && d->loaded)) {
		r = d->enrolling ? -EBUSY : 0;
		pthread_mutex_unlock(&d->lock);
		return r;
	}
	d->enrolling = 1;
	pthread_mutex_unlock(&d->lock);

	enrolled = tpm_is_enrolled(d->tpm) && d->loaded;
	if (enrolled) {
		/* Enrolled before, but never registered: the same key gets the same id. */
		r = tpm_public_pem(d->tpm, &pem);
		if (r == 0)
			r = device_register(d, pem);
		goto out;
	}
	r = session_credentials_blob(d->s, &blob, &len);
	if (r < 0)
		goto out;
	r = tpm_enroll(d->tpm, blob, len, &pem);
	secmem_free(blob);
	if (r < 0) {
		log_err("TPM: enrolment failed: %s", tpm_last_error(d->tpm));
		device_set_status(d, "error", tpm_last_error(d->tpm));
		goto out;
	}
	r = tpm_load(d->tpm);
	if (r < 0) {
		log_err("TPM: cannot load the new device key: %s", tpm_last_error(d->tpm));
		device_set_status(d, "error", tpm_last_error(d->tpm));
		goto out;
	}
	pthread_mutex_lock(&d->lock);
	d->loaded = 1;
	pthread_mutex_unlock(&d->lock);
	device_set_status(d, "ok", NULL);
	r = device_register(d, pem);
out:
	free(pem);
	pthread_mutex_lock(&d->lock);
	d->enrolling = 0;
	pthread_mutex_unlock(&d->lock);
	return r;
}

int device_id(struct device *d, char *buf, size_t cap)
{
	int r = 0;

	pthread_mutex_lock(&d->lock);
	if (!d->id[0] || !d->loaded)
		r = -ENOENT;
	else if (strlen(d->id) >= cap)
		r = -ENAMETOOLONG;
	else
		memcpy(buf, d->id, strlen(d->id) + 1);
	pthread_mutex_unlock(&d->lock);
	return r;
}

int device_unwrap(struct device *d, const uint8_t *wrapped, size_t len, uint8_t *key, size_t cap,
		  size_t *ret_len)
{
	int r;

	if (!d->tpm) {
		log_err("format-2 files need a TPM (%s)", d->reason);
		return -EACCES;
	}
	r = tpm_unwrap(d->tpm, wrapped, len, key, cap, ret_len);
	if (r < 0) {
		log_err("TPM: the content key does not unwrap: %s", tpm_last_error(d->tpm));
		return r == -EBADMSG ? -EIO : -EACCES;
	}
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
