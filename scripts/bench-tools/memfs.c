/*
 * memfs - a limit of scripts/bench: the fastest a FUSE read of a file can
 * be on this machine, with no I/O and no crypto. It serves one read-only
 * file, /data, of SIZE bytes, whose content is 1 MiB of random bytes
 * repeated, from memory. Reads of up to 1 MiB, as azaionfs takes them
 * (max_pages 256); the multithreaded loop, as azaionfs runs; the bench sets
 * the mount's read_ahead_kb as azaionfs does (docs/architecture.md).
 *
 *   memfs MOUNTPOINT SIZE     in the foreground until unmounted
 */
#define FUSE_USE_VERSION 31

#include <errno.h>
#include <fuse_lowlevel.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>

#define MEMFS_PIECE (1024 * 1024)
#define MEMFS_MAX_SEGS 16 /* 16 MiB: more than the kernel asks for at once */
#define MEMFS_INO 2
#define MEMFS_NAME "data"

static off_t memfs_size;
/* The 1 MiB piece twice: any run of up to 1 MiB from any offset is contiguous in it. */
static unsigned char *memfs_buf;

static void memfs_stat(fuse_ino_t ino, struct stat *st)
{
	memset(st, 0, sizeof(*st));
	st->st_ino = ino;
	if (ino == FUSE_ROOT_ID) {
		st->st_mode = S_IFDIR | 0555;
		st->st_nlink = 2;
	} else {
		st->st_mode = S_IFREG | 0444;
		st->st_nlink = 1;
		st->st_size = memfs_size;
	}
}

static void memfs_init(void *userdata, struct fuse_conn_info *conn)
{
	(void)userdata;
	/* libfuse sizes the largest read (max_pages) by max_write: 1 MiB, as azaionfs. */
	conn->max_write = MEMFS_PIECE;
	if (conn->capable & FUSE_CAP_ASYNC_READ)
		conn->want |= FUSE_CAP_ASYNC_READ;
}

static void memfs_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct fuse_entry_param ep;

	if (parent != FUSE_ROOT_ID || strcmp(name, MEMFS_NAME)) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	memset(&ep, 0, sizeof(ep));
	ep.ino = MEMFS_INO;
	ep.attr_timeout = 3600;
	ep.entry_timeout = 3600;
	memfs_stat(MEMFS_INO, &ep.attr);
	fuse_reply_entry(req, &ep);
}

static void memfs_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct stat st;

	(void)fi;
	if (ino != FUSE_ROOT_ID && ino != MEMFS_INO) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	memfs_stat(ino, &st);
	fuse_reply_attr(req, &st, 3600);
}

static void memfs_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	if (ino != MEMFS_INO)
		fuse_reply_err(req, EISDIR);
	else if ((fi->flags & O_ACCMODE) != O_RDONLY)
		fuse_reply_err(req, EACCES);
	else
		fuse_reply_open(req, fi);
}

static void memfs_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		       struct fuse_file_info *fi)
{
	struct iovec iov[MEMFS_MAX_SEGS];
	int n = 0;

	(void)ino;
	(void)fi;
	if (off >= memfs_size)
		size = 0;
	else if ((off_t)size > memfs_size - off)
		size = (size_t)(memfs_size - off);
	if (size > (size_t)MEMFS_MAX_SEGS * MEMFS_PIECE)
		size = (size_t)MEMFS_MAX_SEGS * MEMFS_PIECE;
	while (size > 0) {
		size_t len = size < MEMFS_PIECE ? size : MEMFS_PIECE;

		iov[n].iov_base = memfs_buf + off % MEMFS_PIECE;
		iov[n].iov_len = len;
		n++;
		off += (off_t)len;
		size -= len;
	}
	fuse_reply_iov(req, iov, n);
}

static const struct fuse_lowlevel_ops memfs_ops = {
	.init = memfs_init,
	.lookup = memfs_lookup,
	.getattr = memfs_getattr,
	.open = memfs_open,
	.read = memfs_read,
};

int main(int argc, char **argv)
{
	char *fuse_argv[] = {argv[0], "-o", "ro,fsname=memfs,subtype=memfs", NULL};
	struct fuse_args args = FUSE_ARGS_INIT(3, fuse_argv);
	struct fuse_session *se = NULL;
	char *end;
	int rc = 1;

	if (argc != 3) {
		fprintf(stderr, "usage: memfs MOUNTPOINT SIZE\n");
		return 2;
	}
	memfs_size = strtoll(argv[2], &end, 10);
	if (*end || memfs_size < 0) {
		fprintf(stderr, "memfs: not a size: %s\n", argv[2]);
		return 2;
	}
	memfs_buf = malloc(2 * MEMFS_PIECE);
	if (!memfs_buf) {
		perror("memfs: malloc");
		return 1;
	}
	srandom(1);
	for (size_t i = 0; i < MEMFS_PIECE; i++)
		memfs_buf[i] = (unsigned char)random();
	memcpy(memfs_buf + MEMFS_PIECE, memfs_buf, MEMFS_PIECE);
	se = fuse_session_new(&args, &memfs_ops, sizeof(memfs_ops), NULL);
	if (!se)
		goto out_buf;
	if (fuse_set_signal_handlers(se) < 0)
		goto out_session;
	if (fuse_session_mount(se, argv[1]) < 0)
		goto out_signals;
	rc = fuse_session_loop_mt(se, 0) ? 1 : 0;
	fuse_session_unmount(se);
out_signals:
	fuse_remove_signal_handlers(se);
out_session:
	fuse_session_destroy(se);
out_buf:
	free(memfs_buf);
	return rc;
}
