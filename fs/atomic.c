/*
 * atomic.c - the one writer of files that must never be seen half
 * written (see atomic.h): a reader finds the old file or the new one.
 * The temporary's name carries the thread id, so that two threads
 * replacing the same file never write into one temporary.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "fs/atomic.h"

static int atomic_write_all(int fd, const uint8_t *p, size_t n)
{
	while (n > 0) {
		ssize_t w = write(fd, p, n);

		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0)
			return -errno;
		if (w == 0)
			return -EIO;
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

int atomic_write_file(const char *path, mode_t mode, const void *data, size_t len, fetch_read_fn rd,
		      void *ctx)
{
	uint8_t buf[64 * 1024];
	char *tmp = NULL;
	int fd, r = 0;

	if (asprintf(&tmp, "%s.tmp.%d", path, (int)gettid()) < 0)
		return -ENOMEM;
	/*
	 * A new file, never one already there: a leftover (or planted) one
	 * would keep its own mode and owner, and a key would land in it.
	 */
	unlink(tmp);
	fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode);
	if (fd < 0) {
		r = -errno;
		goto out;
	}
	if (data)
		r = atomic_write_all(fd, data, len);
	while (rd && r == 0) {
		ssize_t n = rd(ctx, buf, sizeof(buf));

		if (n <= 0) {
			r = (int)n;
			break;
		}
		if ((size_t)n > sizeof(buf)) {
			r = -EINVAL;
			break;
		}
		r = atomic_write_all(fd, buf, (size_t)n);
	}
	if (r == 0 && fsync(fd) < 0)
		r = -errno;
	if (close(fd) < 0 && r == 0)
		r = -errno;
	if (r == 0 && rename(tmp, path) < 0)
		r = -errno;
	if (r < 0)
		unlink(tmp);
out:
	free(tmp);
	return r;
}
