/*
 * serve.h - a worker's FUSE loop over the mount's inherited descriptor
 * (docs/architecture.md, "Restarts"). Every thread reads /dev/fuse into
 * its journal slot, so that what it has read survives the worker; a new
 * worker first hands its session the mount's kept FUSE_INIT, then gets
 * the dead worker's unanswered requests answered (the kernel resends them,
 * or they are replayed from the journal), and only then serves.
 */
#ifndef AZAION_SERVE_H
#define AZAION_SERVE_H

#ifndef FUSE_USE_VERSION
#define FUSE_USE_VERSION 312
#endif
#include <fuse_lowlevel.h>

#include "fs/journal.h"

struct serve;

struct serve_opts {
	struct fuse_session *se; /* attached to the inherited descriptor */
	struct journal *j;
	unsigned lane;	  /* this worker's slots */
	unsigned threads; /* at most JOURNAL_SLOTS */
};

enum serve_end {
	SERVE_STOPPED,	 /* serve_stop: what was read is answered */
	SERVE_UNMOUNTED, /* the kernel ended the connection */
	SERVE_FAILED,	 /* reading /dev/fuse failed (logged) */
};

int serve_new(const struct serve_opts *o, struct serve **ret);
void serve_free(struct serve *s);

/*
 * Hands the session the mount's kept FUSE_INIT (the kernel refuses the
 * answer, which libfuse ignores). 0 when none is kept yet: this is the
 * mount's first worker, and its threads read the INIT itself.
 */
int serve_init(struct serve *s, int *ret_had_init);

/*
 * The requests that dead workers read into the journal lanes (a bit per
 * lane) and did not answer: with resend, the kernel sends them again (Linux 6.9 and later;
 * *ret_replayed is then -1); otherwise, or when the kernel cannot, they
 * are processed here from the journal (*ret_replayed: how many). Before
 * serve_start.
 */
int serve_resume(struct serve *s, unsigned lanes, int resend, int *ret_replayed);

int serve_start(struct serve *s);
/* Until serve_stop or the unmount; every thread joined. */
enum serve_end serve_wait(struct serve *s);
/* Async-signal-safe: threads stop reading and answer what they have read. */
void serve_stop(struct serve *s);

#endif
