/*
 * journal.h - what a restarted worker needs of the one before it
 * (docs/architecture.md, "Restarts"): the mount's first FUSE_INIT request,
 * and every request a worker has read and not yet answered. It lives in a
 * memfd that the supervisor creates and keeps; each worker maps it. Nothing
 * in it is secret: request headers and arguments (names, offsets, sizes).
 *
 * A lane is one worker's slots, one per serving thread; two lanes, since
 * an upgrade runs the old worker and the new one side by side. A thread
 * reads /dev/fuse straight into its slot, so that a request the kernel has
 * handed over is in shared memory the moment read() returns, however the
 * worker dies afterwards; the slot is empty again (its header's length 0)
 * once the request is answered.
 */
#ifndef AZAION_JOURNAL_H
#define AZAION_JOURNAL_H

#include <stddef.h>
#include <stdint.h>

/*
 * The kernel wants a read buffer of max_write plus headers. libfuse
 * derives the largest read request (max_pages) from max_write, so ops
 * keeps max_write at JOURNAL_MAX_WRITE, 1 MiB, for 1 MiB reads; nothing is
 * ever written. The slots are sparse: a read-only mount's requests are a
 * few hundred bytes, so only a slot's first page is ever touched (and
 * locked). A longer request (setxattr) is refused by the kernel with
 * E2BIG, not handed over.
 */
#define JOURNAL_MAX_WRITE (1024u * 1024)
#define JOURNAL_SLOT_SIZE (JOURNAL_MAX_WRITE + 4096u)
/* The kept FUSE_INIT's largest size (today's are 64 bytes). */
#define JOURNAL_INIT_MAX 512u
#define JOURNAL_SLOTS 16 /* per lane: the serving threads of one worker */
#define JOURNAL_LANES 2

struct journal;

/* A new journal in a memfd; *ret_fd is the caller's (close-on-exec). */
int journal_create(struct journal **ret, int *ret_fd);
/* Maps the journal behind fd (a worker's inherited one, or the fd store's). */
int journal_attach(int fd, struct journal **ret);
void journal_free(struct journal *j);

/* Slot i of lane: JOURNAL_SLOT_SIZE bytes, a fuse_in_header first. */
void *journal_slot(struct journal *j, unsigned lane, unsigned i);
/* The length of the request in slot, 0 when empty. */
uint32_t journal_slot_len(const void *slot);
/* Empties slot: its request has been answered. */
void journal_slot_clear(void *slot);

/* Keeps the mount's FUSE_INIT request (the first worker, once). */
int journal_save_init(struct journal *j, const void *req, size_t len);
/* The kept FUSE_INIT, or NULL before the first worker has read it. */
const void *journal_init(struct journal *j, size_t *ret_len);

#endif
