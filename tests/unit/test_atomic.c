/*
 * test_atomic.c - atomic_write_file (fs/atomic.h): the file appears whole
 * with its mode, no temporary is left behind, and a failure leaves the
 * folder as it was.
 */
#include <dirent.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fs/atomic.h"
#include "tests/unit/check.h"

/* The number of entries of dir other than "." and "..". */
static int entries(const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	int n = 0;

	if (!d)
		return -1;
	while ((e = readdir(d)))
		if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
			n++;
	closedir(d);
	return n;
}

static int file_is(const char *path, const void *data, size_t len)
{
	char buf[256];
	FILE *f = fopen(path, "rb");
	size_t n;

	if (!f)
		return 0;
	n = fread(buf, 1, sizeof(buf), f);
	fclose(f);
	return n == len && !memcmp(buf, data, len);
}

struct pieces {
	const char *text;
	size_t pos;
	int fail_at; /* the call that fails, 0: none */
	int calls;
};

static ssize_t pieces_read(void *ctx, uint8_t *buf, size_t cap)
{
	struct pieces *p = ctx;
	size_t n = strlen(p->text + p->pos);

	if (++p->calls == p->fail_at)
		return -ENOSPC;
	if (n > 3)
		n = 3;
	memcpy(buf, p->text + p->pos, n);
	p->pos += n;
	return (ssize_t)n;
}

int main(void)
{
	char dir[] = "/tmp/test_atomic.XXXXXX", path[256], sub[256];
	struct pieces pc = {.text = " and the rest"};
	struct stat sb;
	mode_t old_mask = umask(022);
	int r;

	CHECK(mkdtemp(dir) != NULL, "a scratch folder");
	snprintf(path, sizeof(path), "%s/doc.json", dir);

	r = atomic_write_file(path, 0600, "{\"a\":1}", 7, NULL, NULL);
	CHECK(r == 0 && stat(path, &sb) == 0 && (sb.st_mode & 07777) == 0600,
	      "written with mode 0600 (%d, %o)", r, (unsigned)(sb.st_mode & 07777));
	CHECK(file_is(path, "{\"a\":1}", 7), "with its content");
	CHECK(entries(dir) == 1, "no temporary left beside it");

	r = atomic_write_file(path, 0644, "first", 5, pieces_read, &pc);
	CHECK(r == 0 && file_is(path, "first and the rest", 18),
	      "a replacement: the data, then what the reader gives (%d)", r);
	CHECK(entries(dir) == 1, "still one file");

	pc.pos = 0;
	pc.calls = 0;
	pc.fail_at = 2;
	r = atomic_write_file(path, 0600, "other", 5, pieces_read, &pc);
	CHECK(r == -ENOSPC, "the reader's error comes back as it is (%d)", r);
	CHECK(file_is(path, "first and the rest", 18) && entries(dir) == 1,
	      "the old file stays and no temporary is left");

	snprintf(sub, sizeof(sub), "%s/sub", dir);
	CHECK(mkdir(sub, 0700) == 0, "a folder where the file should go");
	r = atomic_write_file(sub, 0600, "x", 1, NULL, NULL);
	CHECK(r == -EISDIR, "renaming over a folder fails with -EISDIR (%d)", r);
	CHECK(entries(dir) == 2 && entries(sub) == 0 && stat(sub, &sb) == 0 && S_ISDIR(sb.st_mode),
	      "the folder stays and no temporary is left");

	snprintf(sub, sizeof(sub), "%s/missing/doc.json", dir);
	r = atomic_write_file(sub, 0600, "x", 1, NULL, NULL);
	CHECK(r == -ENOENT, "a missing folder: -ENOENT (%d)", r);

	snprintf(sub, sizeof(sub), "%s/sub", dir);
	rmdir(sub);
	unlink(path);
	CHECK(rmdir(dir) == 0, "nothing else was left in the scratch folder");
	umask(old_mask);
	return check_done();
}
