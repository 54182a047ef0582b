/*
 * unlock.h - the Docker unlock (docs/loader-api.md, F4/F5): log in, get the
 * archive key (format 1: SHA-256 of the API's key fragment; format 2: the
 * archive's small part, unwrapped by the TPM), decrypt images_archive as a
 * stream into the Docker Engine API (POST /images/load on docker_socket),
 * and check that every configured image is present. The plaintext archive
 * never exists as a file: it passes through locked memory on its way to
 * dockerd's socket.
 *
 * One run at a time, on its own thread; the state machine is
 *   idle -> authenticating -> downloading_key -> decrypting
 *        -> loading_images -> ready        (or error from any step)
 * "decrypting" lasts while the archive streams into dockerd (bytes_done
 * counts archive bytes read); "loading_images" while dockerd finishes the
 * load and the images are checked.
 */
#ifndef AZAION_UNLOCK_H
#define AZAION_UNLOCK_H

#include <stdint.h>
#include <jansson.h>

#include "fetch/fetch.h"
#include "fs/config.h"
#include "fs/device.h"
#include "fs/session.h"

enum unlock_state {
	UNLOCK_IDLE,
	UNLOCK_AUTHENTICATING,
	UNLOCK_DOWNLOADING_KEY,
	UNLOCK_DECRYPTING,
	UNLOCK_LOADING_IMAGES,
	UNLOCK_READY,
	UNLOCK_ERROR,
};

/* The state's name as F5 spells it. */
const char *unlock_state_name(enum unlock_state st);

/*
 * The login that F1 and F4 share: checks the credentials against the API
 * first, so that wrong ones never replace the ones in use; then stores
 * them in the session (locked memory), logs in, fetches cdn.yaml, and on a
 * TPM device enrols it when it is not yet. 0, -EINVAL (an empty or
 * oversized field), -EACCES (refused) or the transport's errno (the API
 * unreachable). Credentials are never logged, nor is a failure: the
 * caller says it once, with log_strerror(r)'s words on the same thread.
 */
int unlock_login(const struct config *c, struct fetch *f, struct session *s, struct device *d,
		 const char *email, const char *password);

struct unlock;
/* c, f, s and d must outlive it. Starts no thread. */
int unlock_new(const struct config *c, struct fetch *f, struct session *s, struct device *d,
	       struct unlock **ret);
/* Cancels a run in progress (the load is aborted) and waits for it. */
void unlock_free(struct unlock *u);

/*
 * F4. *ret_state: UNLOCK_READY when every image is already present (no
 * run starts), the current state while a run is in progress (nothing new
 * starts), else UNLOCK_AUTHENTICATING with a new run started. -ENOENT when
 * the archive is missing and the images are not loaded; -EINVAL for empty
 * credentials; -ENOMEM, -EAGAIN (no thread).
 */
int unlock_start(struct unlock *u, const char *email, const char *password,
		 enum unlock_state *ret_state);

/*
 * F5: {"state","error","bytes_done","bytes_total","images"}; images are
 * the configured references found present by the last check.
 */
json_t *unlock_status_json(struct unlock *u);
/* The current state, for /status and /metrics. */
enum unlock_state unlock_state(struct unlock *u);

#endif
