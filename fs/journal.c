/*
 * journal.c - the requests in flight, in shared memory (see journal.h).
 *
 * Ordering: a slot's length is the first field of the fuse_in_header the
 * kernel writes; a worker empties it with a release store after the reply
 * has gone out, and the next worker reads it with an acquire load, so it
 * never replays a slot whose request was answered and not yet emptied
 * except for a reply the kernel then refuses (ENOENT: the unique is
 * gone), which is harmless.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "fs/journal.h"

#define JOURNAL_MAGIC 0x6a7a6161u /* "aazj" */
#define JOURNAL_VERSION 1u
#define JOURNAL_HEAD 4096u

struct journal_head {
	uint32_t magic;
	uint32_t version;
	uint32_t slot_size, slots, lanes;
	uint32_t init_len; /* 0 until the first FUSE_INIT is kept */
	unsigned char init[JOURNAL_INIT_MAX];
};

struct journal {
	unsigned char *map;
	size_t size;
};

static size_t journal_size(void)
{
	return JOURNAL_HEAD + (size_t)JOURNAL_LANES * JOURNAL_SLOTS * JOURNAL_SLOT_SIZE;
}

static int journal_map(int fd, struct journal **ret)
{
	struct journal *j = calloc(1, sizeof(*j));
	int r = 0;

	if (!j)
		return -ENOMEM;
	j->size = journal_size();
	j->map = mmap(NULL, j->size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (j->map == MAP_FAILED) {
		r = -errno;
		free(j);
		return r;
	}
	*ret = j;
	return 0;
}

int journal_create(struct journal **ret, int *ret_fd)
{
	struct journal_head *h;
	int fd, r;

	fd = memfd_create("azaionfs-journal", MFD_CLOEXEC);
	if (fd < 0)
		return -errno;
	if (ftruncate(fd, (off_t)journal_size()) < 0) {
		r = -errno;
		goto fail;
	}
	r = journal_map(fd, ret);
	if (r < 0)
		goto fail;
	h = (struct journal_head *)(*ret)->map;
	h->magic = JOURNAL_MAGIC;
	h->version = JOURNAL_VERSION;
	h->slot_size = JOURNAL_SLOT_SIZE;
	h->slots = JOURNAL_SLOTS;
	h->lanes = JOURNAL_LANES;
	*ret_fd = fd;
	return 0;
fail:
	close(fd);
	return r;
}

int journal_attach(int fd, struct journal **ret)
{
	const struct journal_head *h;
	off_t end = lseek(fd, 0, SEEK_END);
	int r;

	/* A journal of another layout (another build) is not read: -EPROTO. */
	if (end < 0)
		return -errno;
	if ((size_t)end != journal_size())
		return -EPROTO;
	r = journal_map(fd, ret);
	if (r < 0)
		return r;
	h = (const struct journal_head *)(*ret)->map;
	if (h->magic != JOURNAL_MAGIC || h->version != JOURNAL_VERSION ||
	    h->slot_size != JOURNAL_SLOT_SIZE || h->slots != JOURNAL_SLOTS ||
	    h->lanes != JOURNAL_LANES) {
		journal_free(*ret);
		*ret = NULL;
		return -EPROTO;
	}
	return 0;
}

void journal_free(struct journal *j)
{
	if (!j)
		return;
	munmap(j->map, j->size);
	free(j);
}

void *journal_slot(struct journal *j, unsigned lane, unsigned i)
{
	if (lane >= JOURNAL_LANES || i >= JOURNAL_SLOTS)
		return NULL;
	return j->map + JOURNAL_HEAD + ((size_t)lane * JOURNAL_SLOTS + i) * JOURNAL_SLOT_SIZE;
}

uint32_t journal_slot_len(const void *slot)
{
	uint32_t len = __atomic_load_n((const uint32_t *)slot, __ATOMIC_ACQUIRE);

	return len <= JOURNAL_SLOT_SIZE ? len : 0;
}

void journal_slot_clear(void *slot)
{
	__atomic_store_n((uint32_t *)slot, 0, __ATOMIC_RELEASE);
}

int journal_save_init(struct journal *j, const void *req, size_t len)
{
	struct journal_head *h = (struct journal_head *)j->map;

	if (len == 0 || len > JOURNAL_INIT_MAX)
		return -E2BIG;
	memcpy(h->init, req, len);
	__atomic_store_n(&h->init_len, (uint32_t)len, __ATOMIC_RELEASE);
	return 0;
}

const void *journal_init(struct journal *j, size_t *ret_len)
{
	struct journal_head *h = (struct journal_head *)j->map;
	uint32_t len = __atomic_load_n(&h->init_len, __ATOMIC_ACQUIRE);

	*ret_len = len;
	return len && len <= JOURNAL_INIT_MAX ? h->init : NULL;
}
