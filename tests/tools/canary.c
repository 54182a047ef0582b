/*
 * canary - reports every file that holds a 32-byte window of a plaintext.
 *
 *   canary PLAIN... -- PATH...
 *
 * PATHs are files or folders (walked, symlinks not followed). Any 32-byte
 * window of a plaintext contains one of its 16-byte blocks at a multiple
 * of 16, so the plaintexts' aligned blocks go into a hash table and every
 * 16-byte window of every scanned file is looked up; a hit is extended both
 * ways and reported when the common run reaches 32 bytes. Exit 0: clean;
 * 1: a window was found (each printed); 2: a usage or I/O error.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define WIN 32
#define BLK 16

struct plain {
	const char *path;
	const uint8_t *data;
	size_t len;
};

static struct plain *plains;
static size_t n_plains;
static uint64_t *slots;                /* (plain index + 1) << 40 | block index; 0: empty */
static size_t mask;
static int found;

static uint64_t hash16(const uint8_t *p)
{
	uint64_t a, b;

	memcpy(&a, p, 8);
	memcpy(&b, p + 8, 8);
	a ^= b * 0x9E3779B97F4A7C15ull;
	a ^= a >> 31;
	a *= 0xBF58476D1CE4E5B9ull;
	return a ^ (a >> 29);
}

static void add_blocks(size_t pi)
{
	const struct plain *p = &plains[pi];

	for (size_t off = 0; off + BLK <= p->len; off += BLK) {
		size_t s = hash16(p->data + off) & mask;

		while (slots[s])
			s = (s + 1) & mask;
		slots[s] = ((uint64_t)(pi + 1) << 40) | (off / BLK);
	}
}

static const uint8_t *map_file(const char *path, size_t *len)
{
	struct stat st;
	void *m;
	int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);

	if (fd < 0 || fstat(fd, &st) < 0) {
		if (fd >= 0)
			close(fd);
		return NULL;
	}
	*len = (size_t)st.st_size;
	if (*len == 0) {
		close(fd);
		return (const uint8_t *)"";
	}
	m = mmap(NULL, *len, PROT_READ, MAP_PRIVATE, fd, 0);
	close(fd);
	return m == MAP_FAILED ? NULL : m;
}

static void scan_file(const char *path)
{
	size_t len = 0;
	const uint8_t *d = map_file(path, &len);

	if (!d) {
		fprintf(stderr, "canary: cannot read %s\n", path);
		return;
	}
	for (size_t q = 0; q + BLK <= len; q++) {
		size_t s = hash16(d + q) & mask;

		for (; slots[s]; s = (s + 1) & mask) {
			const struct plain *p = &plains[(slots[s] >> 40) - 1];
			size_t off = (size_t)(slots[s] & ((1ull << 40) - 1)) * BLK;
			size_t back = 0, fwd = BLK;

			if (memcmp(p->data + off, d + q, BLK) != 0)
				continue;
			while (back < off && back < q && p->data[off - back - 1] == d[q - back - 1])
				back++;
			while (off + fwd < p->len && q + fwd < len && p->data[off + fwd] == d[q + fwd])
				fwd++;
			if (back + fwd >= WIN) {
				printf("%s: %zu bytes of %s at offset %zu\n", path, back + fwd,
				       p->path, q - back);
				found = 1;
				q += fwd - 1;
				break;
			}
		}
	}
	if (len)
		munmap((void *)d, len);
}

static void scan(const char *path)
{
	struct stat st;
	struct dirent *de;
	DIR *dir;

	if (lstat(path, &st) < 0)
		return;
	if (S_ISREG(st.st_mode)) {
		scan_file(path);
		return;
	}
	if (!S_ISDIR(st.st_mode) || !(dir = opendir(path)))
		return;
	while ((de = readdir(dir))) {
		char *sub;

		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		if (asprintf(&sub, "%s/%s", path, de->d_name) < 0)
			break;
		scan(sub);
		free(sub);
	}
	closedir(dir);
}

int main(int argc, char **argv)
{
	size_t blocks = 0, cap;
	int i, sep = -1;

	for (i = 1; i < argc; i++)
		if (!strcmp(argv[i], "--"))
			sep = i;
	if (sep < 2 || sep == argc - 1) {
		fprintf(stderr, "usage: canary PLAIN... -- PATH...\n");
		return 2;
	}
	n_plains = (size_t)sep - 1;
	plains = calloc(n_plains, sizeof(*plains));
	for (i = 1; i < sep; i++) {
		struct plain *p = &plains[i - 1];

		p->path = argv[i];
		p->data = map_file(argv[i], &p->len);
		if (!p->data) {
			fprintf(stderr, "canary: cannot read %s\n", argv[i]);
			return 2;
		}
		blocks += p->len / BLK;
	}
	for (cap = 1024; cap < 2 * blocks; cap <<= 1)
		;
	slots = calloc(cap, sizeof(*slots));
	if (!slots)
		return 2;
	mask = cap - 1;
	for (size_t pi = 0; pi < n_plains; pi++)
		add_blocks(pi);
	for (i = sep + 1; i < argc; i++)
		scan(argv[i]);
	return found;
}
