/*
 * azbench - the measuring end of scripts/bench: reads files the way the
 * benchmark's workloads do and times them, and times the two limits and
 * the legacy loader's decryption in memory with the project's crypto/.
 * Built by scripts/bench against the build's libazcrypto.a.
 *
 *   azbench seq FILE                  sequential read, 1 MiB reads: "mbps S secs T bytes N"
 *   azbench ttfb FILE                 open and read the first 4 KiB: "secs T"
 *   azbench rand FILE SECS SEED       random aligned 4 KiB preads for SECS: "iops N reads N"
 *   azbench par FILE...               one thread per file, each reading it whole:
 *                                     "mbps S secs T bytes N" for all of them together
 *   azbench decrypt BIG               format-1 decryption of a big part held in memory,
 *                                     1 MiB runs as the read path does them: "mbps S"
 *   azbench decrypt2 BIG KEY          the same for format 2, chunk by chunk (KEY: b64)
 *   azbench reopen FILE SECS          for SECS: open, read whole in 1 MiB reads, close;
 *                                     "mbps S opens N"
 *   azbench sha256 FILE               SHA-256 of a file held in memory, in 1 MiB pieces
 *                                     on 2 threads, as the format-1 read path checks
 *                                     its chunks: "mbps S cpu C bytes N" (C: the CPU
 *                                     seconds of both threads together)
 *   azbench dwrite FILE BYTES         writes BYTES to a new FILE with O_DIRECT in 1 MiB
 *                                     pieces from one buffer on one thread, as the
 *                                     cache_dir writer stores a fill, then removes it:
 *                                     "mbps S cpu C bytes N"
 *   azbench evict FILE...             drops the files' pages from the page cache
 *   azbench legacy ANSWER BIG EMAIL PASSWORD HW
 *                                     the legacy loader after its two downloads: decrypt
 *                                     the API's answer, join the parts, decrypt the whole
 *                                     model in memory, then read it: "secs T bytes N"
 *
 * Times are wall-clock seconds (CLOCK_MONOTONIC). Exit 0, or 1 with a
 * message on stderr.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "crypto/crypto.h"

#define BENCH_BS (1024 * 1024)
#define BENCH_SMALL 4096

static double bench_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int bench_fail(const char *what, const char *path)
{
	fprintf(stderr, "azbench: %s %s: %s\n", what, path ? path : "", strerror(errno));
	return 1;
}

/* Reads fd to its end; the byte count, or -1. */
static long long bench_drain(int fd, uint8_t *buf)
{
	long long total = 0;
	ssize_t n;

	while ((n = read(fd, buf, BENCH_BS)) > 0)
		total += n;
	return n < 0 ? -1 : total;
}

static int bench_seq(const char *path)
{
	uint8_t *buf = malloc(BENCH_BS);
	long long total;
	double t0, t;
	int fd;

	if (!buf)
		return bench_fail("malloc", NULL);
	t0 = bench_now();
	fd = open(path, O_RDONLY);
	if (fd < 0)
		return bench_fail("open", path);
	total = bench_drain(fd, buf);
	t = bench_now() - t0;
	close(fd);
	free(buf);
	if (total < 0)
		return bench_fail("read", path);
	printf("mbps %.1f secs %.4f bytes %lld\n", (double)total / t / 1e6, t, total);
	return 0;
}

static int bench_ttfb(const char *path)
{
	uint8_t buf[BENCH_SMALL];
	double t0, t;
	ssize_t n;
	int fd;

	t0 = bench_now();
	fd = open(path, O_RDONLY);
	if (fd < 0)
		return bench_fail("open", path);
	n = read(fd, buf, sizeof(buf));
	t = bench_now() - t0;
	close(fd);
	if (n != (ssize_t)sizeof(buf))
		return bench_fail("read", path);
	printf("secs %.5f\n", t);
	return 0;
}

static int bench_rand(const char *path, double secs, unsigned long long seed)
{
	uint8_t buf[BENCH_SMALL];
	uint64_t s = seed | 1, blocks;
	long long reads = 0;
	struct stat sb;
	double t0, t;
	int fd;

	fd = open(path, O_RDONLY);
	if (fd < 0 || fstat(fd, &sb) < 0)
		return bench_fail("open", path);
	blocks = (uint64_t)sb.st_size / BENCH_SMALL;
	if (!blocks) {
		fprintf(stderr, "azbench: %s is smaller than 4 KiB\n", path);
		return 1;
	}
	t0 = bench_now();
	do {
		/* Ten reads between clock reads; xorshift picks the blocks. */
		for (int i = 0; i < 10; i++) {
			s ^= s << 13;
			s ^= s >> 7;
			s ^= s << 17;
			if (pread(fd, buf, sizeof(buf), (off_t)((s % blocks) * BENCH_SMALL)) !=
			    (ssize_t)sizeof(buf))
				return bench_fail("pread", path);
			reads++;
		}
		t = bench_now() - t0;
	} while (t < secs);
	close(fd);
	printf("iops %.1f reads %lld\n", (double)reads / t, reads);
	return 0;
}

static int bench_reopen(const char *path, double secs)
{
	uint8_t *buf = malloc(BENCH_BS);
	long long total = 0, opens = 0, n;
	double t0, t;
	int fd;

	if (!buf)
		return bench_fail("malloc", NULL);
	t0 = bench_now();
	do {
		fd = open(path, O_RDONLY);
		if (fd < 0)
			return bench_fail("open", path);
		n = bench_drain(fd, buf);
		close(fd);
		if (n < 0)
			return bench_fail("read", path);
		total += n;
		opens++;
		t = bench_now() - t0;
	} while (t < secs);
	free(buf);
	printf("mbps %.1f opens %lld\n", (double)total / t / 1e6, opens);
	return 0;
}

struct bench_job {
	pthread_t t;
	const char *path;
	long long bytes;
	int err;
};

static void *bench_par_one(void *arg)
{
	struct bench_job *j = arg;
	uint8_t *buf = malloc(BENCH_BS);
	int fd = open(j->path, O_RDONLY);

	if (!buf || fd < 0) {
		j->err = errno ? errno : ENOMEM;
	} else {
		j->bytes = bench_drain(fd, buf);
		if (j->bytes < 0)
			j->err = errno;
	}
	if (fd >= 0)
		close(fd);
	free(buf);
	return NULL;
}

static int bench_par(int n, char **paths)
{
	struct bench_job *j = calloc((size_t)n, sizeof(*j));
	long long total = 0;
	double t0, t;
	int started = 0, rc = 0;

	if (!j)
		return bench_fail("calloc", NULL);
	t0 = bench_now();
	for (; started < n; started++) {
		j[started].path = paths[started];
		if (pthread_create(&j[started].t, NULL, bench_par_one, &j[started]) != 0)
			break;
	}
	for (int i = 0; i < started; i++) {
		pthread_join(j[i].t, NULL);
		if (j[i].err) {
			errno = j[i].err;
			rc = bench_fail("read", j[i].path);
		}
		total += j[i].bytes;
	}
	t = bench_now() - t0;
	if (started < n) {
		fprintf(stderr, "azbench: only %d threads started\n", started);
		rc = 1;
	}
	if (!rc)
		printf("mbps %.1f secs %.4f bytes %lld\n", (double)total / t / 1e6, t, total);
	free(j);
	return rc;
}

/* The whole file in memory (read, not mapped, so that timing excludes the disk). */
static uint8_t *bench_load(const char *path, size_t *ret_len)
{
	struct stat sb;
	uint8_t *p;
	size_t done = 0;
	int fd = open(path, O_RDONLY);

	if (fd < 0 || fstat(fd, &sb) < 0) {
		bench_fail("open", path);
		return NULL;
	}
	p = malloc(sb.st_size ? (size_t)sb.st_size : 1);
	while (p && done < (size_t)sb.st_size) {
		ssize_t n = read(fd, p + done, (size_t)sb.st_size - done);

		if (n <= 0) {
			bench_fail("read", path);
			free(p);
			p = NULL;
			break;
		}
		done += (size_t)n;
	}
	close(fd);
	if (p)
		*ret_len = done;
	return p;
}

struct bench_hash_job {
	pthread_t t;
	const uint8_t *data;
	size_t len;
	int first; /* this thread hashes pieces first, first + 2, ... */
};

static void *bench_hash_one(void *arg)
{
	struct bench_hash_job *j = arg;
	uint8_t md[32];

	for (size_t off = (size_t)j->first * BENCH_BS; off < j->len; off += 2 * (size_t)BENCH_BS)
		crypto_sha256(j->data + off, j->len - off < BENCH_BS ? j->len - off : BENCH_BS, md);
	return NULL;
}

static double bench_cpu(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int bench_sha256(const char *path)
{
	struct bench_hash_job j[2];
	double t0, c0, t, c;
	size_t len;
	uint8_t *data = bench_load(path, &len);
	int started = 0;

	if (!data)
		return 1;
	t0 = bench_now();
	c0 = bench_cpu();
	for (; started < 2; started++) {
		j[started] = (struct bench_hash_job){.data = data, .len = len, .first = started};
		if (pthread_create(&j[started].t, NULL, bench_hash_one, &j[started]) != 0)
			break;
	}
	for (int i = 0; i < started; i++)
		pthread_join(j[i].t, NULL);
	t = bench_now() - t0;
	c = bench_cpu() - c0;
	free(data);
	if (started < 2) {
		fprintf(stderr, "azbench: only %d threads started\n", started);
		return 1;
	}
	printf("mbps %.1f cpu %.4f bytes %zu\n", (double)len / t / 1e6, c, len);
	return 0;
}

static int bench_decrypt(const char *path)
{
	uint8_t key[CRYPTO_KEY_SIZE], *big, *out;
	size_t len, off;
	double t0, t;

	f1_aes_key(F1_DEFAULT_RESOURCE_SECRET, strlen(F1_DEFAULT_RESOURCE_SECRET), key);
	big = bench_load(path, &len);
	out = malloc(BENCH_BS);
	if (!big || !out || len < 2 * CRYPTO_BLOCK)
		return bench_fail("load", path);
	len -= len % CRYPTO_BLOCK;
	t0 = bench_now();
	/* Each run carries the block before it as its IV, as a range read does. */
	for (off = 0; off + 2 * CRYPTO_BLOCK <= len; off += BENCH_BS) {
		size_t n =
			len - off < BENCH_BS + CRYPTO_BLOCK ? len - off : BENCH_BS + CRYPTO_BLOCK;

		if (f1_decrypt_blocks(key, big + off, n, out) < 0) {
			fprintf(stderr, "azbench: decryption failed\n");
			return 1;
		}
	}
	t = bench_now() - t0;
	printf("mbps %.1f\n", (double)len / t / 1e6);
	free(out);
	free(big);
	return 0;
}

static int bench_decrypt2(const char *path, const char *key_b64)
{
	uint8_t key[CRYPTO_KEY_SIZE], *big, *out;
	struct crypto_gcm *g;
	struct f2_header h;
	size_t len, klen;
	uint64_t count;
	double t0, t;

	if (crypto_b64_decode(key_b64, strlen(key_b64), key, sizeof(key), &klen) < 0 ||
	    klen != CRYPTO_KEY_SIZE) {
		fprintf(stderr, "azbench: the key is not 32 bytes of base64\n");
		return 1;
	}
	big = bench_load(path, &len);
	if (!big || len < F2_HEADER_SIZE || f2_header_parse(big, &h) < 0 ||
	    f2_big_size(&h) != len) {
		fprintf(stderr, "azbench: %s is not a format-2 big part\n", path);
		return 1;
	}
	out = malloc(f2_chunk_size(&h));
	if (!out)
		return bench_fail("malloc", NULL);
	count = f2_chunk_count(&h);
	t0 = bench_now();
	/* As the read path opens them: one key expansion, then each chunk by its nonce. */
	if (crypto_gcm_new(key, &g) < 0)
		return bench_fail("crypto_gcm_new", NULL);
	for (uint64_t i = 0; i < count; i++) {
		uint64_t plen = f2_chunk_plain_len(&h, i);
		const uint8_t *ct = big + f2_chunk_offset(&h, i);

		if (f2_chunk_start(g, &h, i) < 0 || crypto_gcm_update(g, ct, plen, out) < 0 ||
		    crypto_gcm_finish(g, ct + plen) < 0) {
			fprintf(stderr, "azbench: chunk %llu fails its check\n",
				(unsigned long long)i);
			return 1;
		}
	}
	t = bench_now() - t0;
	crypto_gcm_free(g);
	printf("mbps %.1f\n", (double)len / t / 1e6);
	free(out);
	free(big);
	return 0;
}

static int bench_legacy(const char *answer_path, const char *big_path, const char *email,
			const char *password, const char *hw)
{
	uint8_t api_key[CRYPTO_KEY_SIZE], rkey[CRYPTO_KEY_SIZE], *answer, *big, *e, *plain;
	char hw_hash[CRYPTO_KS_LEN + 1];
	size_t alen, blen, slen, plen;
	uint8_t sink = 0;
	double t0, t;

	t0 = bench_now();
	answer = bench_load(answer_path, &alen);
	big = bench_load(big_path, &blen);
	if (!answer || !big)
		return 1;
	f1_hw_hash(hw, hw_hash);
	if (f1_api_key(email, password, hw_hash, api_key) < 0)
		return bench_fail("api key", NULL);
	e = malloc(alen + blen);
	plain = malloc(alen + blen);
	if (!e || !plain)
		return bench_fail("malloc", NULL);
	if (f1_decrypt(api_key, answer, alen, e, &slen) < 0) {
		fprintf(stderr, "azbench: the API's answer does not decrypt\n");
		return 1;
	}
	memcpy(e + slen, big, blen);
	free(big);
	f1_aes_key(F1_DEFAULT_RESOURCE_SECRET, strlen(F1_DEFAULT_RESOURCE_SECRET), rkey);
	if (f1_decrypt(rkey, e, slen + blen, plain, &plen) < 0) {
		fprintf(stderr, "azbench: the model does not decrypt\n");
		return 1;
	}
	/* The reader then reads it: one touch per page. */
	for (size_t i = 0; i < plen; i += 4096)
		sink ^= plain[i];
	t = bench_now() - t0;
	printf("secs %.4f bytes %zu check %u\n", t, plen, sink);
	free(e);
	free(plain);
	free(answer);
	return 0;
}

static int bench_dwrite(const char *path, size_t len)
{
	uint8_t *buf = NULL;
	double t0, c0, t, c;
	size_t off;
	int fd = -1, rc = 1;

	if (posix_memalign((void **)&buf, 4096, BENCH_BS)) {
		fprintf(stderr, "azbench: out of memory\n");
		return 1;
	}
	for (size_t i = 0; i < BENCH_BS; i++)
		buf[i] = (uint8_t)(i * 131 + 7);
	fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_DIRECT, 0600);
	if (fd < 0) {
		rc = bench_fail("open with O_DIRECT", path);
		goto out;
	}
	t0 = bench_now();
	c0 = bench_cpu();
	for (off = 0; off < len; off += BENCH_BS)
		if (pwrite(fd, buf, BENCH_BS, (off_t)off) != BENCH_BS) {
			rc = bench_fail("write", path);
			goto out;
		}
	t = bench_now() - t0;
	c = bench_cpu() - c0;
	printf("mbps %.1f cpu %.4f bytes %zu\n", (double)off / t / 1e6, c, off);
	rc = 0;
out:
	if (fd >= 0) {
		close(fd);
		unlink(path);
	}
	free(buf);
	return rc;
}

static int bench_evict(int n, char **paths)
{
	for (int i = 0; i < n; i++) {
		int fd = open(paths[i], O_RDONLY);

		if (fd < 0)
			return bench_fail("open", paths[i]);
		errno = posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
		close(fd);
		if (errno)
			return bench_fail("fadvise", paths[i]);
	}
	return 0;
}

int main(int argc, char **argv)
{
	const char *cmd = argc > 1 ? argv[1] : "";

	if (!strcmp(cmd, "seq") && argc == 3)
		return bench_seq(argv[2]);
	if (!strcmp(cmd, "ttfb") && argc == 3)
		return bench_ttfb(argv[2]);
	if (!strcmp(cmd, "rand") && argc == 5)
		return bench_rand(argv[2], atof(argv[3]), strtoull(argv[4], NULL, 10));
	if (!strcmp(cmd, "reopen") && argc == 4)
		return bench_reopen(argv[2], atof(argv[3]));
	if (!strcmp(cmd, "sha256") && argc == 3)
		return bench_sha256(argv[2]);
	if (!strcmp(cmd, "par") && argc >= 3)
		return bench_par(argc - 2, argv + 2);
	if (!strcmp(cmd, "dwrite") && argc == 4)
		return bench_dwrite(argv[2], strtoull(argv[3], NULL, 10));
	if (!strcmp(cmd, "evict"))
		return bench_evict(argc - 2, argv + 2);
	if (!strcmp(cmd, "decrypt") && argc == 3)
		return bench_decrypt(argv[2]);
	if (!strcmp(cmd, "decrypt2") && argc == 4)
		return bench_decrypt2(argv[2], argv[3]);
	if (!strcmp(cmd, "legacy") && argc == 7)
		return bench_legacy(argv[2], argv[3], argv[4], argv[5], argv[6]);
	fprintf(stderr,
		"usage: azbench seq|ttfb|rand|reopen|par|sha256|dwrite|evict|decrypt|decrypt2|legacy "
		"... "
		"(see "
		"its source)\n");
	return 2;
}
