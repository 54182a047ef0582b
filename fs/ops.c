/*
 * ops.c - the FUSE low-level operations (see ops.h). Each operation is a
 * worker that returns 0 or a negative errno and a wrapper that replies
 * exactly once. The filesystem is one flat, read-only directory; files are
 * served with the kernel page cache kept (no direct_io), so mmap works.
 *
 * Inode numbers: 1 is the root; every name the catalog ever showed gets a
 * number for the life of the process (so forget needs to do nothing).
 *
 * Locking: ops->lock guards the inode table and the list of open handles;
 * it is never held across a catalog or store call that does I/O.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>

#include "fs/log.h"
#include "fs/metrics.h"
#include "fs/ops.h"

#define OPS_ROOT 1
#define OPS_TIMEOUT 1.0 /* seconds the kernel may cache names and sizes */
#define OPS_BLOCK 4096

struct ops_inode {
	char *name;
	fuse_ino_t ino;
	uint64_t version; /* of the catalog entry last opened */
	struct ops_inode *hnext;
};

struct ops_handle {
	struct ops_handle *prev, *next;
	struct store_file *f;
};

struct ops {
	struct ops_opts o;
	pthread_mutex_t lock;
	struct ops_inode **by_ino; /* index ino - 2 */
	size_t n_ino, cap_ino;
	struct ops_inode **hash;
	size_t hash_mask;
	struct ops_handle *open;
};

static uint64_t ops_fnv(const void *p, size_t n, uint64_t h)
{
	const unsigned char *s = p;

	for (size_t i = 0; i < n; i++)
		h = (h ^ s[i]) * 0x100000001b3ull;
	return h;
}

static uint64_t ops_entry_version(const struct catalog_entry *e)
{
	uint64_t h = 0xcbf29ce484222325ull;

	h = ops_fnv(&e->format, sizeof(e->format), h);
	h = ops_fnv(&e->size, sizeof(e->size), h);
	h = ops_fnv(&e->big_size, sizeof(e->big_size), h);
	if (e->has_sha256)
		h = ops_fnv(e->sha256, sizeof(e->sha256), h);
	if (e->updated)
		h = ops_fnv(e->updated, strlen(e->updated), h);
	return h;
}

/* Under ops->lock: the inode of name, created when new; 0 on ENOMEM. */
static fuse_ino_t ops_ino_locked(struct ops *ops, const char *name)
{
	size_t slot = ops_fnv(name, strlen(name), 0xcbf29ce484222325ull) & ops->hash_mask;
	struct ops_inode *in;

	for (in = ops->hash[slot]; in; in = in->hnext)
		if (strcmp(in->name, name) == 0)
			break;
	if (in)
		return in->ino;
	if (ops->n_ino == ops->cap_ino) {
		size_t cap = ops->cap_ino ? 2 * ops->cap_ino : 64;
		void *p = realloc(ops->by_ino, cap * sizeof(*ops->by_ino));

		if (!p)
			return 0;
		ops->by_ino = p;
		ops->cap_ino = cap;
	}
	in = calloc(1, sizeof(*in));
	if (!in || !(in->name = strdup(name))) {
		free(in);
		return 0;
	}
	in->hnext = ops->hash[slot];
	ops->hash[slot] = in;
	ops->by_ino[ops->n_ino++] = in;
	in->ino = ops->n_ino + 1;
	return in->ino;
}

static fuse_ino_t ops_ino(struct ops *ops, const char *name)
{
	fuse_ino_t ino;

	pthread_mutex_lock(&ops->lock);
	ino = ops_ino_locked(ops, name);
	pthread_mutex_unlock(&ops->lock);
	return ino;
}

/* The inode record of ino, or NULL; the record lives as long as ops. */
static struct ops_inode *ops_inode(struct ops *ops, fuse_ino_t ino)
{
	struct ops_inode *in = NULL;

	pthread_mutex_lock(&ops->lock);
	if (ino >= 2 && ino - 2 < ops->n_ino)
		in = ops->by_ino[ino - 2];
	pthread_mutex_unlock(&ops->lock);
	return in;
}

/*
 * Times are the catalog's: a file's `updated` (a republished model moves
 * its mtime, which is what stat-polling reload watchers look at; inotify
 * does not see FUSE changes), the root's the last change of the list.
 */
static void ops_fill_attr(struct ops *ops, fuse_ino_t ino, const struct catalog_list *l,
			  const struct catalog_entry *e, struct stat *st)
{
	memset(st, 0, sizeof(*st));
	st->st_ino = ino;
	st->st_uid = ops->o.uid;
	st->st_gid = ops->o.gid;
	st->st_blksize = OPS_BLOCK;
	st->st_atime = st->st_mtime = st->st_ctime = e ? e->mtime : l->mtime;
	if (!e) {
		st->st_mode = S_IFDIR | (0555 & ~ops->o.umask);
		st->st_nlink = 2;
		return;
	}
	st->st_mode = S_IFREG | (0444 & ~ops->o.umask);
	st->st_nlink = 1;
	st->st_size = (off_t)e->size;
	st->st_blocks = (blkcnt_t)((e->size + 511) / 512);
}

/* The catalog entry behind ino (a reference to the list in *ret_list). */
static int ops_entry(struct ops *ops, fuse_ino_t ino, struct catalog_list **ret_list,
		     const struct catalog_entry **ret)
{
	struct ops_inode *in = ops_inode(ops, ino);
	struct catalog_list *l;
	const struct catalog_entry *e;

	if (!in)
		return -ENOENT;
	l = catalog_get(ops->o.cat);
	e = catalog_find(l, in->name);
	if (!e) {
		catalog_put(ops->o.cat, l);
		return -ENOENT;
	}
	*ret_list = l;
	*ret = e;
	return 0;
}

static struct ops *ops_of(fuse_req_t req)
{
	return fuse_req_userdata(req);
}

/* ---- operations ----------------------------------------------------------- */

static void ops_init(void *userdata, struct fuse_conn_info *conn)
{
	struct ops *ops = userdata;

	/* Parallel reads of one file are what read-ahead and the slab are for. */
	if (conn->capable & FUSE_CAP_ASYNC_READ)
		conn->want |= FUSE_CAP_ASYNC_READ;
	/* Nothing is written: requests then fit a journal slot (journal.h). */
	conn->max_write = 4096;
	if (ops->o.on_init)
		ops->o.on_init(ops->o.on_init_arg);
}

static int ops_do_lookup(struct ops *ops, fuse_ino_t parent, const char *name,
			 struct fuse_entry_param *ep)
{
	struct catalog_list *l;
	const struct catalog_entry *e;
	fuse_ino_t ino;

	if (parent != OPS_ROOT)
		return -ENOTDIR;
	l = catalog_get(ops->o.cat);
	e = catalog_find(l, name);
	if (!e) {
		catalog_put(ops->o.cat, l);
		return -ENOENT;
	}
	ino = ops_ino(ops, name);
	if (!ino) {
		catalog_put(ops->o.cat, l);
		return -ENOMEM;
	}
	memset(ep, 0, sizeof(*ep));
	ep->ino = ino;
	ep->attr_timeout = OPS_TIMEOUT;
	ep->entry_timeout = OPS_TIMEOUT;
	ops_fill_attr(ops, ino, l, e, &ep->attr);
	catalog_put(ops->o.cat, l);
	return 0;
}

static void ops_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct fuse_entry_param ep;
	int r = ops_do_lookup(ops_of(req), parent, name, &ep);

	if (r < 0)
		fuse_reply_err(req, -r);
	else
		fuse_reply_entry(req, &ep);
}

static int ops_do_getattr(struct ops *ops, fuse_ino_t ino, struct stat *st)
{
	struct catalog_list *l;
	const struct catalog_entry *e;
	int r;

	if (ino == OPS_ROOT) {
		l = catalog_get(ops->o.cat);
		ops_fill_attr(ops, ino, l, NULL, st);
		catalog_put(ops->o.cat, l);
		return 0;
	}
	r = ops_entry(ops, ino, &l, &e);
	if (r < 0)
		return r;
	ops_fill_attr(ops, ino, l, e, st);
	catalog_put(ops->o.cat, l);
	return 0;
}

static void ops_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct stat st;
	int r = ops_do_getattr(ops_of(req), ino, &st);

	if (r < 0)
		fuse_reply_err(req, -r);
	else
		fuse_reply_attr(req, &st, OPS_TIMEOUT);
}

static void ops_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct ops *ops = ops_of(req);

	if (ino != OPS_ROOT) {
		fuse_reply_err(req, ENOTDIR);
		return;
	}
	/* One snapshot per directory stream, so offsets stay meaningful. */
	fi->fh = (uintptr_t)catalog_get(ops->o.cat);
	if (fuse_reply_open(req, fi) != 0)
		catalog_put(ops->o.cat, (struct catalog_list *)(uintptr_t)fi->fh);
}

static void ops_releasedir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	catalog_put(ops_of(req)->o.cat, (struct catalog_list *)(uintptr_t)fi->fh);
	fuse_reply_err(req, 0);
}

/* Fills buf (cap bytes) with the entries from off; *ret_len the bytes used. */
static int ops_do_readdir(fuse_req_t req, struct ops *ops, const struct catalog_list *l, off_t off,
			  char *buf, size_t cap, size_t *ret_len)
{
	size_t used = 0;

	for (size_t i = (size_t)off; i < l->n + 2; i++) {
		struct stat st = {0};
		const char *name;
		size_t need;

		if (i < 2) {
			name = i == 0 ? "." : "..";
			st.st_ino = OPS_ROOT;
			st.st_mode = S_IFDIR;
		} else {
			name = l->e[i - 2].name;
			st.st_ino = ops_ino(ops, name);
			if (!st.st_ino)
				return -ENOMEM;
			st.st_mode = S_IFREG;
		}
		need = fuse_add_direntry(req, buf + used, cap - used, name, &st, (off_t)i + 1);
		if (need > cap - used)
			break;
		used += need;
	}
	*ret_len = used;
	return 0;
}

static void ops_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
			struct fuse_file_info *fi)
{
	const struct catalog_list *l = (const struct catalog_list *)(uintptr_t)fi->fh;
	size_t len = 0;
	char *buf;
	int r;

	if (size > 1024 * 1024)
		size = 1024 * 1024;
	buf = malloc(size);
	if (!buf) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	r = ops_do_readdir(req, ops_of(req), l, off, buf, size, &len);
	if (r < 0)
		fuse_reply_err(req, -r);
	else
		fuse_reply_buf(req, buf, len);
	free(buf);
}

static int ops_do_open(struct ops *ops, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct catalog_list *l;
	const struct catalog_entry *e;
	struct ops_handle *oh;
	struct ops_inode *in;
	uint64_t version;
	int r;

	if (ino == OPS_ROOT)
		return -EISDIR;
	if ((fi->flags & O_ACCMODE) != O_RDONLY || (fi->flags & O_TRUNC))
		return -EROFS;
	r = ops_entry(ops, ino, &l, &e);
	if (r < 0)
		return r;
	oh = calloc(1, sizeof(*oh));
	if (!oh) {
		catalog_put(ops->o.cat, l);
		return -ENOMEM;
	}
	version = ops_entry_version(e);
	r = store_open(ops->o.st, e, &oh->f);
	catalog_put(ops->o.cat, l);
	if (r < 0) {
		free(oh);
		return r;
	}
	in = ops_inode(ops, ino);
	pthread_mutex_lock(&ops->lock);
	/* The kernel may keep its pages unless the file changed since. */
	fi->keep_cache = in->version == version;
	in->version = version;
	oh->next = ops->open;
	if (ops->open)
		ops->open->prev = oh;
	ops->open = oh;
	pthread_mutex_unlock(&ops->lock);
	fi->direct_io = 0;
	fi->fh = (uintptr_t)oh;
	return 0;
}

static void ops_handle_close(struct ops *ops, struct ops_handle *oh)
{
	pthread_mutex_lock(&ops->lock);
	if (oh->prev)
		oh->prev->next = oh->next;
	else
		ops->open = oh->next;
	if (oh->next)
		oh->next->prev = oh->prev;
	pthread_mutex_unlock(&ops->lock);
	store_close(oh->f);
	free(oh);
}

static void ops_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct ops *ops = ops_of(req);
	int r = ops_do_open(ops, ino, fi);

	if (r < 0) {
		fuse_reply_err(req, -r);
		return;
	}
	/* The open was interrupted: nobody will release this handle. */
	if (fuse_reply_open(req, fi) != 0)
		ops_handle_close(ops, (struct ops_handle *)(uintptr_t)fi->fh);
}

static void ops_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		     struct fuse_file_info *fi)
{
	struct ops_handle *oh = (struct ops_handle *)(uintptr_t)fi->fh;
	uint64_t t0 = metrics_now();
	struct store_read rd;
	int r;

	if (off < 0) {
		fuse_reply_err(req, EINVAL);
		return;
	}
	r = store_read(oh->f, (uint64_t)off, size, &rd);
	if (r < 0) {
		fuse_reply_err(req, -r);
		metrics_observe(METRICS_FUSE_READ, t0);
		return;
	}
	if (rd.len == 0)
		fuse_reply_buf(req, NULL, 0);
	else
		fuse_reply_iov(req, rd.iov, rd.iovcnt);
	store_read_release(&rd);
	metrics_observe(METRICS_FUSE_READ, t0);
}

static void ops_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	ops_handle_close(ops_of(req), (struct ops_handle *)(uintptr_t)fi->fh);
	fuse_reply_err(req, 0);
}

static void ops_statfs(fuse_req_t req, fuse_ino_t ino)
{
	struct ops *ops = ops_of(req);
	struct catalog_list *l = catalog_get(ops->o.cat);
	struct statvfs sv = {0};
	uint64_t bytes = 0;

	for (size_t i = 0; i < l->n; i++)
		bytes += l->e[i].size;
	sv.f_bsize = OPS_BLOCK;
	sv.f_frsize = OPS_BLOCK;
	sv.f_blocks = (bytes + OPS_BLOCK - 1) / OPS_BLOCK;
	sv.f_files = l->n + 1;
	sv.f_namemax = 255;
	/*
	 * As squashfs and erofs: the catalog's total used, nothing free or
	 * available, so df shows 100%. Disk-full alerts (node_exporter's
	 * filesystem rules) skip read-only mounts, and the mount is always
	 * `ro` (main.c); the kernel takes f_flag from the mount, not from here.
	 */
	sv.f_flag = ST_RDONLY;
	catalog_put(ops->o.cat, l);
	fuse_reply_statfs(req, &sv);
}

/* ---- everything that would change the filesystem: EROFS ----------------- */

static void ops_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set,
			struct fuse_file_info *fi)
{
	fuse_reply_err(req, EROFS);
}

static void ops_mknod(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode, dev_t rdev)
{
	fuse_reply_err(req, EROFS);
}

static void ops_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode)
{
	fuse_reply_err(req, EROFS);
}

static void ops_unlink(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	fuse_reply_err(req, EROFS);
}

static void ops_symlink(fuse_req_t req, const char *link, fuse_ino_t parent, const char *name)
{
	fuse_reply_err(req, EROFS);
}

static void ops_rename(fuse_req_t req, fuse_ino_t parent, const char *name, fuse_ino_t newparent,
		       const char *newname, unsigned int flags)
{
	fuse_reply_err(req, EROFS);
}

static void ops_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent, const char *newname)
{
	fuse_reply_err(req, EROFS);
}

static void ops_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off,
		      struct fuse_file_info *fi)
{
	fuse_reply_err(req, EROFS);
}

static void ops_create(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
		       struct fuse_file_info *fi)
{
	fuse_reply_err(req, EROFS);
}

static const struct fuse_lowlevel_ops ops_ll = {
	.init = ops_init,
	.lookup = ops_lookup,
	.getattr = ops_getattr,
	.opendir = ops_opendir,
	.readdir = ops_readdir,
	.releasedir = ops_releasedir,
	.open = ops_open,
	.read = ops_read,
	.release = ops_release,
	.statfs = ops_statfs,
	.setattr = ops_setattr,
	.mknod = ops_mknod,
	.mkdir = ops_mkdir,
	.unlink = ops_unlink,
	.rmdir = ops_unlink,
	.symlink = ops_symlink,
	.rename = ops_rename,
	.link = ops_link,
	.write = ops_write,
	.create = ops_create,
};

const struct fuse_lowlevel_ops *ops_table(void)
{
	return &ops_ll;
}

int ops_new(const struct ops_opts *o, struct ops **ret)
{
	struct ops *ops = calloc(1, sizeof(*ops));
	size_t nb = 1024;

	if (!ops)
		return -ENOMEM;
	ops->o = *o;
	ops->hash = calloc(nb, sizeof(*ops->hash));
	if (!ops->hash) {
		free(ops);
		return -ENOMEM;
	}
	ops->hash_mask = nb - 1;
	pthread_mutex_init(&ops->lock, NULL);
	*ret = ops;
	return 0;
}

void ops_free(struct ops *ops)
{
	if (!ops)
		return;
	while (ops->open)
		ops_handle_close(ops, ops->open);
	for (size_t i = 0; i < ops->n_ino; i++) {
		free(ops->by_ino[i]->name);
		free(ops->by_ino[i]);
	}
	free(ops->by_ino);
	free(ops->hash);
	pthread_mutex_destroy(&ops->lock);
	free(ops);
}
