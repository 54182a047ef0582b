/*
 * atomic.h - a file replaced whole or not at all: what is kept in
 * state_dir (key documents, small parts) and what the publisher writes
 * to its output folder.
 */
#ifndef AZAION_ATOMIC_H
#define AZAION_ATOMIC_H

#include <stddef.h>
#include <sys/types.h>

#include "fetch/fetch.h"

/*
 * Writes path whole: first len bytes of data (data may be NULL), then
 * what rd (may be NULL) gives until it returns 0, into PATH.tmp.TID in
 * the same directory (created with mode, O_NOFOLLOW, truncated), fsynced
 * and renamed over path. 0, or a negative errno (rd's own error as it
 * is) with the temporary removed and path as it was.
 */
int atomic_write_file(const char *path, mode_t mode, const void *data, size_t len, fetch_read_fn rd,
		      void *ctx);

#endif
