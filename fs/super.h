/*
 * super.h - the supervisor: the daemon's process that holds the mount
 * (its /dev/fuse descriptor) and nothing secret, and keeps a worker
 * serving it (docs/architecture.md, "Restarts"). A worker is this same
 * program started again with SUPER_ENV_* in its environment.
 */
#ifndef AZAION_SUPER_H
#define AZAION_SUPER_H

#include <sys/types.h>

struct fuse_args;

/* A worker's exit status when the kernel ended the mount (an unmount). */
#define SUPER_EXIT_UNMOUNTED 3

struct super_opts {
	const char *exe;	 /* the program each worker runs (a path: an upgrade replaces it) */
	char *const *argv;	 /* the command line, given to every worker */
	const char *source;	 /* for the log */
	const char *mountpoint;	 /* absolute */
	const char *config_path; /* absolute, or NULL */
	const char *state_dir;	 /* where azaionfs.pid goes */
	struct fuse_args *args;	 /* libfuse's mount options */
	int report;		 /* the waiting mount command's pipe, or -1 */
	int foreground;
	int auto_unmount; /* -o auto_unmount: unmount once the supervisor and workers are gone */
	int stored_fuse, stored_journal; /* from systemd's fd store (super_stored), or -1 */
};

/*
 * Mounts (or takes the stored mount), runs workers until a stop or the
 * unmount, and returns the daemon's exit status.
 */
int super_run(const struct super_opts *o);

/*
 * The mount and journal descriptors that systemd's fd store handed back
 * to this process (LISTEN_FDS, LISTEN_FDNAMES): 1 when both are there.
 * Before any fork (LISTEN_PID names this process).
 */
int super_stored(int *ret_fuse, int *ret_journal);

/* What the supervisor tells a worker. */
struct super_worker {
	int fuse_fd; /* from super_worker_prepared */
	int journal_fd, report_fd;
	int unmounter; /* auto_unmount's watcher pipe, held for the worker's life */
	unsigned lane, epoch;
	unsigned resume;  /* bit per lane whose requests to answer first */
	int takeover;	  /* an upgrade: another worker still serves */
	char *mountpoint; /* absolute */
	char *config_path;
};

/* 1 when this process is a worker (*w filled), 0 when not, <0 when malformed. */
int super_worker_env(struct super_worker *w);
void super_worker_clear(struct super_worker *w);

/*
 * A worker that could serve asks for the mount (the supervisor mounts
 * for the first one): w->fuse_fd on 0; -ECANCELED when the supervisor
 * stops instead (the mount failed: libfuse said why).
 */
int super_worker_prepared(struct super_worker *w);

/*
 * A worker's report: "ready" once it serves, with replayed = -1 when the
 * kernel resent the dead worker's requests, else how many were replayed.
 */
void super_worker_ready(struct super_worker *w, int replayed);

#endif
