/*
 * ops.h - the FUSE low-level operations: a thin layer that turns requests
 * into catalog and store calls and their results into exactly one reply.
 */
#ifndef AZAION_OPS_H
#define AZAION_OPS_H

#define FUSE_USE_VERSION 312
#include <fuse_lowlevel.h>
#include <stdint.h>
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
	/*
	 * The worker's number, in every file handle it hands out: a handle of
	 * another epoch came from a worker before a restart (ops.c).
	 */
	uint16_t epoch;
	/* Called once from the FUSE init callback, after daemonising. */
	void (*on_init)(void *arg);
	void *on_init_arg;
};

int ops_new(const struct ops_opts *o, struct ops **ret);
/* Closes files the kernel left open; call after the session loop ends. */
void ops_free(struct ops *ops);
const struct fuse_lowlevel_ops *ops_table(void);

/*
 * Exposed for tests. The node id of a file: a hash of its name, never 0 or
 * 1 (the root), the same in every process. (ops.c gives the next free id
 * to a second name with the same hash.)
 */
uint64_t ops_name_id(const char *name);

/*
 * A file handle (fi->fh) as ops.c hands it out: epoch << 48 | tag << 24 |
 * slot. tag: the low 24 bits of the version of the catalog entry opened
 * (0 for the directory); slot: the handle's index in the worker's table.
 */
#define OPS_FH_TAG_MASK 0xffffffu
#define OPS_FH_SLOT_MASK 0xffffffu
struct ops_fh {
	uint16_t epoch;
	uint32_t tag;
	uint32_t slot;
};
uint64_t ops_fh_pack(const struct ops_fh *fh);
struct ops_fh ops_fh_unpack(uint64_t fh);

#endif
