/*
 * ops.c - the FUSE low-level operations (see ops.h). Each operation is a
 * worker that returns 0 or a negative errno and a wrapper that replies
 * exactly once. The filesystem is one flat, read-only directory; files are
 * served with the kernel page cache kept (no direct_io), so mmap works.
 *
 * Node ids and file handles outlive the process that hands them out: when
 * the serving process restarts, the kernel goes on sending the ids and
 * handles the dead one gave to the new one (docs/architecture.md,
 * "Restarts"). So:
 * - A file's node id is a hash of its name (1 is the root), the same in
 *   every process; an id this process has not handed out yet is looked for
 *   among the names of the current catalog. Every name keeps its record
 *   for the life of the process, so forget needs to do nothing.
 * - A handle (fi->fh) is never a pointer but says what it is: the epoch of
 *   the worker that opened it, the version tag of the catalog entry it
 *   opened and a slot in this process's handle table (ops_fh_pack). A
 *   handle of another epoch (or a slot that does not match) came from a
 *   dead worker: it is reopened by node id on first use, and when the file
 *   was republished in between its reads fail with EIO, so a reader never
 *   sees a mix of two versions.
 * - Handlers are idempotent: a request the dead worker had read may be run
 *   again here, so releasing a handle nobody knows does nothing.
 *
 * Locking: ops->lock guards the node tables, the handle table and the
 * foreign handles, and a handle's last logged failure; it is never held
 * across a catalog or store call that does I/O. Node records are never
 * freed before ops_free, so a record's name may be read without the lock.
 * A handle is used without the lock between open and release: the kernel
 * sends no release while a read of that handle is in flight.
 *
 * This is the read path's edge for the kernel: a failed open or read is
 * logged here, once, with the store's words for it (msg.h).
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>

#include "fs/journal.h"
#include "fs/log.h"
#include "fs/metrics.h"
#include "fs/msg.h"
#include "fs/ops.h"

#define OPS_ROOT 1
#define OPS_TIMEOUT 1.0 /* seconds the kernel may cache names and sizes */
#define OPS_BLOCK 4096
#define OPS_BUCKETS 1024 /* of each node table */
#define OPS_ID_MAX 0x7fffffffffffffffull
#define OPS_SLOTS_MAX (OPS_FH_SLOT_MASK + 1ull)
#define OPS_READ_LOG_MS 10000 /* a handle's same failure is logged again after this long */

struct ops_inode {
	char *name;
	fuse_ino_t ino;
	uint64_t version;	 /* of the catalog entry last opened */
	struct ops_inode *nnext; /* chain of the by_name bucket */
	struct ops_inode *inext; /* chain of the by_ino bucket */
};

enum ops_kind {
	OPS_FILE,
	OPS_DIR
};

struct ops_handle {
	enum ops_kind kind;
	fuse_ino_t ino;
	uint32_t tag;		/* version tag (ops_fh_pack) */
	struct store_file *f;	/* OPS_FILE; NULL when reads fail with err */
	struct catalog_list *l; /* OPS_DIR: one snapshot per directory stream */
	int err;
	int logged_err; /* the last failed read logged, under ops->lock */
	int64_t logged_ms;
	uint64_t fh;		 /* foreign: the dead worker's value */
	struct ops_handle *next; /* foreign: the list */
};

struct ops {
	struct ops_opts o;
	pthread_mutex_t lock;
	struct ops_inode *by_name[OPS_BUCKETS];
	struct ops_inode *by_ino[OPS_BUCKETS];
	/* Own handles: fh's slot indexes slots; NULL slots are on free. */
	struct ops_handle **slots;
	uint32_t *free;
	size_t n_slots, cap_slots, n_free;
	/* Handles of dead workers reopened here, by their fh (a few at most). */
	struct ops_handle *foreign;
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

uint64_t ops_name_id(const char *name)
{
	uint64_t h = ops_fnv(name, strlen(name), 0xcbf29ce484222325ull) & OPS_ID_MAX;

	return h < 2 ? h + 2 : h;
}

uint64_t ops_fh_pack(const struct ops_fh *fh)
{
	return (uint64_t)fh->epoch << 48 | (uint64_t)(fh->tag & OPS_FH_TAG_MASK) << 24 |
	       (fh->slot & OPS_FH_SLOT_MASK);
}

struct ops_fh ops_fh_unpack(uint64_t fh)
{
	struct ops_fh r = {
		.epoch = (uint16_t)(fh >> 48),
		.tag = (uint32_t)(fh >> 24) & OPS_FH_TAG_MASK,
		.slot = (uint32_t)fh & OPS_FH_SLOT_MASK,
	};

	return r;
}

/* ---- node ids ------------------------------------------------------------- */

static struct ops_inode *ops_by_ino_locked(struct ops *ops, fuse_ino_t ino)
{
	struct ops_inode *in;

	for (in = ops->by_ino[ino % OPS_BUCKETS]; in; in = in->inext)
		if (in->ino == ino)
			break;
	return in;
}

/* Under ops->lock: the node id of name, its record created when new; 0 on ENOMEM. */
static fuse_ino_t ops_ino_locked(struct ops *ops, const char *name)
{
	uint64_t id = ops_name_id(name);
	struct ops_inode **nb = &ops->by_name[id % OPS_BUCKETS], *in, *other;
	fuse_ino_t ino = id;

	for (in = *nb; in; in = in->nnext)
		if (strcmp(in->name, name) == 0)
			return in->ino;
	/*
	 * Two names with one id (a 63-bit hash: practically never): the one
	 * seen second takes the next free id, so which gets which depends on
	 * the order they are looked up in, and may change with a restart.
	 */
	other = ops_by_ino_locked(ops, ino);
	if (other)
		log_warn("%s and %s have the same node id %llu: which file keeps it depends on "
			 "the order they are looked up in, and may change when the serving "
			 "process restarts",
			 other->name, name, (unsigned long long)id);
	while (ops_by_ino_locked(ops, ino))
		ino = ino == OPS_ID_MAX ? 2 : ino + 1;
	in = calloc(1, sizeof(*in));
	if (!in || !(in->name = strdup(name))) {
		free(in);
		return 0;
	}
	in->ino = ino;
	in->nnext = *nb;
	*nb = in;
	in->inext = ops->by_ino[ino % OPS_BUCKETS];
	ops->by_ino[ino % OPS_BUCKETS] = in;
	return ino;
}

static fuse_ino_t ops_ino(struct ops *ops, const char *name)
{
	fuse_ino_t ino;

	pthread_mutex_lock(&ops->lock);
	ino = ops_ino_locked(ops, name);
	pthread_mutex_unlock(&ops->lock);
	return ino;
}

/*
 * The record of ino, or NULL; the record lives as long as ops. An id this
 * process has not handed out (the kernel kept it from a worker before a
 * restart) is looked for among the names of the current catalog; NULL
 * then means the file has left the catalog.
 */
static struct ops_inode *ops_inode(struct ops *ops, fuse_ino_t ino)
{
	struct catalog_list *l;
	struct ops_inode *in;

	pthread_mutex_lock(&ops->lock);
	in = ops_by_ino_locked(ops, ino);
	pthread_mutex_unlock(&ops->lock);
	if (in || ino < 2)
		return in;
	l = catalog_get(ops->o.cat);
	pthread_mutex_lock(&ops->lock);
	for (size_t i = 0; i < l->n; i++)
		if (!ops_ino_locked(ops, l->e[i].name))
			break;
	in = ops_by_ino_locked(ops, ino);
	pthread_mutex_unlock(&ops->lock);
	catalog_put(ops->o.cat, l);
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

/* ---- file handles --------------------------------------------------------- */

/* Closes what h holds and frees it; accepts NULL. */
static void ops_handle_free(struct ops *ops, struct ops_handle *h)
{
	if (!h)
		return;
	if (h->f)
		store_close(h->f);
	if (h->l)
		catalog_put(ops->o.cat, h->l);
	free(h);
}

/* Under ops->lock: puts h in a free slot; 0, -ENOMEM or -ENFILE. */
static int ops_slot_add_locked(struct ops *ops, struct ops_handle *h, uint32_t *ret_slot)
{
	uint32_t slot;

	if (ops->n_free) {
		slot = ops->free[--ops->n_free];
	} else {
		if (ops->n_slots == ops->cap_slots) {
			size_t cap = ops->cap_slots ? 2 * ops->cap_slots : 64;
			void *p;

			if (ops->cap_slots == OPS_SLOTS_MAX)
				return -ENFILE;
			if (cap > OPS_SLOTS_MAX)
				cap = OPS_SLOTS_MAX;
			p = realloc(ops->slots, cap * sizeof(*ops->slots));
			if (!p)
				return -ENOMEM;
			ops->slots = p;
			p = realloc(ops->free, cap * sizeof(*ops->free));
			if (!p)
				return -ENOMEM;
			ops->free = p;
			ops->cap_slots = cap;
		}
		slot = (uint32_t)ops->n_slots++;
	}
	ops->slots[slot] = h;
	*ret_slot = slot;
	return 0;
}

/*
 * Under ops->lock: the handle fh names in this process's table, or NULL
 * when fh is foreign: another epoch, a free slot, or a slot that now holds
 * something else (fh came from an earlier worker of the same epoch).
 */
static struct ops_handle *ops_own_locked(struct ops *ops, fuse_ino_t ino, uint64_t fh,
					 enum ops_kind kind)
{
	struct ops_fh d = ops_fh_unpack(fh);
	struct ops_handle *h;

	if (d.epoch != ops->o.epoch || d.slot >= ops->n_slots)
		return NULL;
	h = ops->slots[d.slot];
	if (!h || h->kind != kind || h->ino != ino || h->tag != d.tag)
		return NULL;
	return h;
}

/* Under ops->lock: the foreign handle fh, and where the list points to it. */
static struct ops_handle **ops_foreign_locked(struct ops *ops, fuse_ino_t ino, uint64_t fh,
					      enum ops_kind kind)
{
	struct ops_handle **p;

	for (p = &ops->foreign; *p; p = &(*p)->next)
		if ((*p)->fh == fh && (*p)->ino == ino && (*p)->kind == kind)
			break;
	return p;
}

/*
 * The handle fh names: this process's own, or a dead worker's reopened
 * here. NULL when neither (not opened here yet, or released).
 */
static struct ops_handle *ops_handle_find(struct ops *ops, fuse_ino_t ino, uint64_t fh,
					  enum ops_kind kind)
{
	struct ops_handle *h;

	pthread_mutex_lock(&ops->lock);
	h = ops_own_locked(ops, ino, fh, kind);
	if (!h)
		h = *ops_foreign_locked(ops, ino, fh, kind);
	pthread_mutex_unlock(&ops->lock);
	return h;
}

/*
 * Keeps h as the foreign handle h->fh and returns 1, unless a concurrent
 * request kept one first: then h is freed, 0, and *ret is that one.
 */
static int ops_foreign_add(struct ops *ops, struct ops_handle *h, struct ops_handle **ret)
{
	struct ops_handle *old;

	pthread_mutex_lock(&ops->lock);
	old = *ops_foreign_locked(ops, h->ino, h->fh, h->kind);
	if (!old) {
		h->next = ops->foreign;
		ops->foreign = h;
	}
	pthread_mutex_unlock(&ops->lock);
	if (!old) {
		*ret = h;
		return 1;
	}
	ops_handle_free(ops, h);
	*ret = old;
	return 0;
}

/* Drops the handle fh (own or foreign); nothing when it is not known here. */
static void ops_handle_release(struct ops *ops, fuse_ino_t ino, uint64_t fh, enum ops_kind kind)
{
	struct ops_handle *h, **p;

	pthread_mutex_lock(&ops->lock);
	h = ops_own_locked(ops, ino, fh, kind);
	if (h) {
		uint32_t slot = ops_fh_unpack(fh).slot;

		ops->slots[slot] = NULL;
		ops->free[ops->n_free++] = slot;
	} else {
		p = ops_foreign_locked(ops, ino, fh, kind);
		h = *p;
		if (h)
			*p = h->next;
	}
	pthread_mutex_unlock(&ops->lock);
	ops_handle_free(ops, h);
}

/* Opens the catalog entry behind ino; *ret_version its version. */
static int ops_open_entry(struct ops *ops, fuse_ino_t ino, struct store_file **ret,
			  uint64_t *ret_version)
{
	struct catalog_list *l;
	const struct catalog_entry *e;
	uint64_t version;
	char *msg = NULL;
	int r;

	r = ops_entry(ops, ino, &l, &e);
	if (r < 0)
		return r;
	version = ops_entry_version(e);
	r = store_open(ops->o.st, e, ret, &msg);
	if (r < 0)
		log_err("%s: %s", e->name, msg_or(msg, r));
	free(msg);
	catalog_put(ops->o.cat, l);
	if (r < 0)
		return r;
	*ret_version = version;
	return 0;
}

/*
 * The first read of a dead worker's handle: opens ino again, as open does,
 * and keeps the handle for the reads that follow. When the entry's version
 * is not the one the handle opened (the file was republished while the
 * serving process restarted) or the file left the catalog, every read of
 * the handle fails with EIO: the old version is gone, and the new one must
 * not be mixed into a reader's old bytes.
 */
static int ops_foreign_open(struct ops *ops, fuse_ino_t ino, uint64_t fh, struct ops_handle **ret)
{
	struct ops_inode *in;
	struct ops_handle *h;
	struct store_file *f = NULL;
	uint64_t version = 0;
	uint32_t tag = ops_fh_unpack(fh).tag;
	int r;

	r = ops_open_entry(ops, ino, &f, &version);
	if (r < 0 && r != -ENOENT)
		return r; /* may succeed when read again: keep nothing */
	h = calloc(1, sizeof(*h));
	if (!h) {
		if (f)
			store_close(f);
		return -ENOMEM;
	}
	h->kind = OPS_FILE;
	h->ino = ino;
	h->tag = tag;
	h->fh = fh;
	if (r == 0 && (version & OPS_FH_TAG_MASK) == tag) {
		h->f = f;
	} else {
		if (f)
			store_close(f);
		h->err = -EIO;
	}
	/* One line per handle, from the request that kept it. */
	if (!ops_foreign_add(ops, h, ret) || h->f)
		return 0;
	in = ops_inode(ops, ino);
	if (r == 0 && in)
		log_err("%s: republished while the serving process restarted: reads of the copy "
			"opened before fail with EIO; reopen the file to read the new version",
			in->name);
	else if (in)
		log_err("%s: left the catalog while the serving process restarted: reads of the "
			"copy opened before fail with EIO",
			in->name);
	else
		log_err("node %llu: left the catalog while the serving process restarted: reads "
			"of the file opened before fail with EIO",
			(unsigned long long)ino);
	return 0;
}

/* ---- operations ----------------------------------------------------------- */

static void ops_init(void *userdata, struct fuse_conn_info *conn)
{
	struct ops *ops = userdata;

	/* Parallel reads of one file are what read-ahead and the slab are for. */
	if (conn->capable & FUSE_CAP_ASYNC_READ)
		conn->want |= FUSE_CAP_ASYNC_READ;
	/*
	 * Nothing is written, but libfuse sizes the largest read (max_pages)
	 * by max_write: 1 MiB, which a journal slot holds (journal.h).
	 */
	conn->max_write = JOURNAL_MAX_WRITE;
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

static int ops_do_opendir(struct ops *ops, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct ops_handle *h;
	struct ops_fh d = {.epoch = ops->o.epoch};
	int r;

	if (ino != OPS_ROOT)
		return -ENOTDIR;
	h = calloc(1, sizeof(*h));
	if (!h)
		return -ENOMEM;
	h->kind = OPS_DIR;
	h->ino = ino;
	/* One snapshot per directory stream, so offsets stay meaningful. */
	h->l = catalog_get(ops->o.cat);
	pthread_mutex_lock(&ops->lock);
	r = ops_slot_add_locked(ops, h, &d.slot);
	pthread_mutex_unlock(&ops->lock);
	if (r < 0) {
		ops_handle_free(ops, h);
		return r;
	}
	fi->fh = ops_fh_pack(&d);
	return 0;
}

static void ops_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct ops *ops = ops_of(req);
	int r = ops_do_opendir(ops, ino, fi);

	if (r < 0) {
		fuse_reply_err(req, -r);
		return;
	}
	if (fuse_reply_open(req, fi) != 0)
		ops_handle_release(ops, ino, fi->fh, OPS_DIR);
}

static void ops_releasedir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	ops_handle_release(ops_of(req), ino, fi->fh, OPS_DIR);
	fuse_reply_err(req, 0);
}

/*
 * The list a directory stream reads: its own snapshot, or for a dead
 * worker's stream the current list, kept until releasedir.
 */
static int ops_dir_list(struct ops *ops, fuse_ino_t ino, uint64_t fh,
			const struct catalog_list **ret)
{
	struct ops_handle *h;

	if (ino != OPS_ROOT)
		return -ENOTDIR;
	h = ops_handle_find(ops, ino, fh, OPS_DIR);
	if (!h) {
		h = calloc(1, sizeof(*h));
		if (!h)
			return -ENOMEM;
		h->kind = OPS_DIR;
		h->ino = ino;
		h->fh = fh;
		h->l = catalog_get(ops->o.cat);
		ops_foreign_add(ops, h, &h);
	}
	*ret = h->l;
	return 0;
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
	struct ops *ops = ops_of(req);
	const struct catalog_list *l;
	size_t len = 0;
	char *buf;
	int r;

	r = ops_dir_list(ops, ino, fi->fh, &l);
	if (r < 0) {
		fuse_reply_err(req, -r);
		return;
	}
	if (size > 1024 * 1024)
		size = 1024 * 1024;
	buf = malloc(size);
	if (!buf) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	r = ops_do_readdir(req, ops, l, off, buf, size, &len);
	if (r < 0)
		fuse_reply_err(req, -r);
	else
		fuse_reply_buf(req, buf, len);
	free(buf);
}

static int ops_do_open(struct ops *ops, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct ops_fh d = {.epoch = ops->o.epoch};
	struct ops_handle *h;
	struct ops_inode *in;
	uint64_t version;
	int r;

	if (ino == OPS_ROOT)
		return -EISDIR;
	if ((fi->flags & O_ACCMODE) != O_RDONLY || (fi->flags & O_TRUNC))
		return -EROFS;
	h = calloc(1, sizeof(*h));
	if (!h)
		return -ENOMEM;
	r = ops_open_entry(ops, ino, &h->f, &version);
	if (r < 0) {
		free(h);
		return r;
	}
	h->kind = OPS_FILE;
	h->ino = ino;
	h->tag = d.tag = (uint32_t)(version & OPS_FH_TAG_MASK);
	pthread_mutex_lock(&ops->lock);
	r = ops_slot_add_locked(ops, h, &d.slot);
	if (r == 0) {
		/* The kernel may keep its pages unless the file changed since. */
		in = ops_by_ino_locked(ops, ino);
		fi->keep_cache = in->version == version;
		in->version = version;
	}
	pthread_mutex_unlock(&ops->lock);
	if (r < 0) {
		ops_handle_free(ops, h);
		return r;
	}
	fi->direct_io = 0;
	fi->fh = ops_fh_pack(&d);
	return 0;
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
		ops_handle_release(ops, ino, fi->fh, OPS_FILE);
}

/* The open file fh names, reopening a dead worker's handle on first use. */
static int ops_file(struct ops *ops, fuse_ino_t ino, uint64_t fh, struct ops_handle **ret)
{
	struct ops_handle *h = ops_handle_find(ops, ino, fh, OPS_FILE);
	int r;

	if (!h) {
		r = ops_foreign_open(ops, ino, fh, &h);
		if (r < 0)
			return r;
	}
	if (!h->f)
		return h->err;
	*ret = h;
	return 0;
}

/*
 * Logs a failed read of h. The kernel retries a failed read-ahead page by
 * page, so one handle's same failure is logged again only after
 * OPS_READ_LOG_MS.
 */
static void ops_read_failed(struct ops *ops, fuse_ino_t ino, struct ops_handle *h, int r,
			    const char *msg)
{
	struct ops_inode *in;
	struct timespec ts;
	int64_t now;
	int again;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	now = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
	pthread_mutex_lock(&ops->lock);
	again = h->logged_err == r && now - h->logged_ms < OPS_READ_LOG_MS;
	if (!again) {
		h->logged_err = r;
		h->logged_ms = now;
	}
	in = ops_by_ino_locked(ops, ino);
	pthread_mutex_unlock(&ops->lock);
	if (!again)
		log_err("%s: %s", in ? in->name : "?", msg_or(msg, r));
}

static void ops_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		     struct fuse_file_info *fi)
{
	uint64_t t0 = metrics_now();
	struct ops *ops = ops_of(req);
	struct ops_handle *h = NULL;
	struct store_read rd;
	char *msg = NULL;
	int r;

	if (off < 0) {
		fuse_reply_err(req, EINVAL);
		return;
	}
	r = ops_file(ops, ino, fi->fh, &h);
	if (r == 0) {
		r = store_read(h->f, (uint64_t)off, size, &rd, &msg);
		if (r < 0)
			ops_read_failed(ops, ino, h, r, msg);
		free(msg);
	}
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
	ops_handle_release(ops_of(req), ino, fi->fh, OPS_FILE);
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

	if (!ops)
		return -ENOMEM;
	ops->o = *o;
	pthread_mutex_init(&ops->lock, NULL);
	*ret = ops;
	return 0;
}

void ops_free(struct ops *ops)
{
	struct ops_handle *h;

	if (!ops)
		return;
	for (size_t i = 0; i < ops->n_slots; i++)
		ops_handle_free(ops, ops->slots[i]);
	while ((h = ops->foreign)) {
		ops->foreign = h->next;
		ops_handle_free(ops, h);
	}
	for (size_t i = 0; i < OPS_BUCKETS; i++) {
		struct ops_inode *in, *next;

		for (in = ops->by_name[i]; in; in = next) {
			next = in->nnext;
			free(in->name);
			free(in);
		}
	}
	free(ops->slots);
	free(ops->free);
	pthread_mutex_destroy(&ops->lock);
	free(ops);
}
