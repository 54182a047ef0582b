/*
 * secmem.c - locked, non-dumpable memory for keys and plaintext, plus the
 * small helpers that handle secrets (wipe, constant-time compare, random).
 *
 * Layout of one allocation, each part a whole number of pages:
 *
 *   [ header page | data pages ... | guard page ]
 *                 ^ pointer handed out (page-aligned)
 *
 * The header page keeps the size; the guard page (PROT_NONE) turns an
 * overrun into a fault instead of a silent write into a neighbour. The
 * header and data pages are locked; the guard page is never touched, so
 * it costs address space only. The data pages are wiped on fork: a process
 * that forks to daemonise must allocate its secrets after the fork.
 *
 * secmem_alloc_huge's data of SECMEM_HUGE or more (the plaintext cache's
 * slab, cache_dir's staging pool) starts on a SECMEM_HUGE boundary and is
 * marked for transparent huge pages, which the kernel gives where it has
 * them: the kernel copies every FUSE reply out of that slab and every
 * direct write out of that pool, pinning their pages one by one for small
 * pages and at once for a huge page, and with fewer TLB misses (a read's
 * CPU 3% lower, a fill's 8%: docs/architecture.md). Locked like the rest,
 * a huge page is never swapped either. Only on request: a huge page may
 * cost the kernel a compaction to find, worth it for buffers made once,
 * not for every upload's chunk.
 *
 * No locking: every allocation is its own mapping.
 */
#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <string.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/rand.h>

#include "crypto/crypto.h"

#define SECMEM_MAGIC 0x617a5365634d656dULL /* "azSecMem" */
#define SECMEM_HUGE (2u << 20)		   /* a huge page where pages are 4 KiB */

struct secmem_header {
	uint64_t magic;
	size_t size;	/* what the caller asked for */
	size_t map_len; /* the whole mapping, guard page included */
};

static size_t secmem_page(void)
{
	long v = sysconf(_SC_PAGESIZE);

	return v > 0 ? (size_t)v : 4096;
}

static struct secmem_header *secmem_header_of(const void *p)
{
	struct secmem_header *hdr;

	hdr = (struct secmem_header *)((uintptr_t)p - secmem_page());
	/* A pointer that did not come from secmem_alloc: like free(), do not go on. */
	if (((uintptr_t)p & (secmem_page() - 1)) || hdr->magic != SECMEM_MAGIC)
		abort();
	return hdr;
}

/*
 * map_len bytes of fresh memory, or NULL. When huge, the data (past the
 * header page) starts on a SECMEM_HUGE boundary: mapped with that much to
 * spare, the spare unmapped again.
 */
static uint8_t *secmem_map(size_t map_len, size_t page, int huge)
{
	size_t over = huge ? map_len + SECMEM_HUGE : map_len;
	uint8_t *raw, *base;

	if (over < map_len)
		return NULL;
	raw = mmap(NULL, over, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (raw == MAP_FAILED)
		return NULL;
	if (!huge)
		return raw;
	base = (uint8_t *)(((uintptr_t)raw + page + SECMEM_HUGE - 1) / SECMEM_HUGE * SECMEM_HUGE) -
	       page;
	if (base > raw)
		munmap(raw, (size_t)(base - raw));
	if (raw + over > base + map_len)
		munmap(base + map_len, (size_t)(raw + over - (base + map_len)));
	/* Refused by a kernel without huge pages: small pages then, as for the rest. */
	madvise(base + page, map_len - 2 * page, MADV_HUGEPAGE);
	return base;
}

static void *secmem_alloc_pages(size_t size, int huge)
{
	size_t page = secmem_page();
	size_t data_len, lock_len, map_len;
	struct secmem_header *hdr;
	uint8_t *base;
	long locked;
	int err;

	/* Header page + data rounded up to pages + guard page, without overflow. */
	if (size > SIZE_MAX - 3 * page) {
		errno = ENOMEM;
		return NULL;
	}
	data_len = (size + page - 1) & ~(page - 1);
	lock_len = page + data_len;
	map_len = lock_len + page;

	base = secmem_map(map_len, page, huge && data_len >= SECMEM_HUGE);
	if (!base) {
		/* Whatever mmap says (EINVAL for a length past the address space). */
		errno = ENOMEM;
		return NULL;
	}
	if (mprotect(base + lock_len, page, PROT_NONE) < 0)
		goto fail;
	/*
	 * Order matters: nothing is written before the pages are locked. The
	 * system call itself, because sanitizer runtimes replace mlock() with a
	 * no-op that reports success. A huge allocation's pages are locked as
	 * they are first touched (MLOCK_ONFAULT, where the kernel has it): a
	 * slab that reads fill bit by bit is resident only as far as it was
	 * used, and holds nothing where it was not.
	 */
	locked = huge ? syscall(SYS_mlock2, base, lock_len, MLOCK_ONFAULT) : -1;
	if (locked < 0 && (!huge || errno == ENOSYS || errno == EINVAL))
		locked = syscall(SYS_mlock, base, lock_len);
	if (locked < 0)
		goto fail;
	if (madvise(base, lock_len, MADV_DONTDUMP) < 0)
		goto fail;
	/*
	 * The header stays readable in a child so that secmem_free() still
	 * works there; it holds no secret.
	 */
	if (madvise(base + page, data_len, MADV_WIPEONFORK) < 0)
		goto fail;

	hdr = (struct secmem_header *)base;
	hdr->magic = SECMEM_MAGIC;
	hdr->size = size;
	hdr->map_len = map_len;
	return base + page;

fail:
	err = errno;
	munmap(base, map_len);
	errno = err;
	return NULL;
}

void *secmem_alloc(size_t size)
{
	return secmem_alloc_pages(size, 0);
}

void *secmem_alloc_huge(size_t size)
{
	return secmem_alloc_pages(size, 1);
}

char *secmem_strndup(const void *s, size_t n)
{
	char *p = secmem_alloc(n + 1);

	if (p) {
		memcpy(p, s, n);
		p[n] = '\0';
	}
	return p;
}

void secmem_free(void *p)
{
	struct secmem_header *hdr;
	size_t map_len;
	int err = errno;

	if (!p)
		return;
	hdr = secmem_header_of(p);
	map_len = hdr->map_len;
	/* The whole data area: the caller may have used the slack past size. */
	OPENSSL_cleanse(p, map_len - 2 * secmem_page());
	OPENSSL_cleanse(hdr, sizeof(*hdr));
	munmap(hdr, map_len);
	errno = err;
}

size_t secmem_size(const void *p)
{
	return p ? secmem_header_of(p)->size : 0;
}

void crypto_wipe(void *p, size_t n)
{
	if (p && n)
		OPENSSL_cleanse(p, n);
}

int crypto_memcmp(const void *a, const void *b, size_t n)
{
	return CRYPTO_memcmp(a, b, n) ? 1 : 0;
}

int crypto_random(void *buf, size_t n)
{
	uint8_t *p = buf;
	int step;

	/* RAND_bytes takes an int. */
	while (n > 0) {
		step = n > (1u << 30) ? (1 << 30) : (int)n;
		if (RAND_bytes(p, step) != 1)
			return -EIO;
		p += step;
		n -= (size_t)step;
	}
	return 0;
}
