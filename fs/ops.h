/*
 * ops.h - the FUSE low-level operations: a thin layer that turns requests
 * into catalog and store calls and their results into exactly one reply.
 */
#ifndef AZAION_OPS_H
#define AZAION_OPS_H

#define FUSE_USE_VERSION 312
#include <fuse_lowlevel.h>
#include <sys/types.h>

#include "fs/catalog.h"
#include "fs/config.h"
#include "fs/store.h"

struct ops;

struct ops_opts {
	const struct config *c;
	struct catalog *cat;
	struct store *st;
	uid_t uid; /* owner shown for every file */
	gid_t gid;
	mode_t umask; /* applied to 0444 files and the 0555 root */
	/* Called once from the FUSE init callback, after daemonising. */
	void (*on_init)(void *arg);
	void *on_init_arg;
	uint16_t epoch; /* the worker's number: file handles carry it */
};

int ops_new(const struct ops_opts *o, struct ops **ret);
/* Closes files the kernel left open; call after the session loop ends. */
void ops_free(struct ops *ops);
const struct fuse_lowlevel_ops *ops_table(void);

#endif
