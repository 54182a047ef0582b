/*
 * test_store.c - the read path's whole stack (store.h) over src_mem and a
 * fake key source: models of both formats made by the format layer's own
 * encryptors, then probed, opened and read: hits and misses, read-ahead,
 * eviction, a source that fails or serves tampered bytes, a format-2 key
 * wiped at the last close, and many threads at once.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "crypto/crypto.h"
#include "fs/format.h"
#include "fs/keys.h"
#include "fs/log.h"
#include "fs/msg.h"
#include "fs/src.h"
#include "fs/store.h"
#include "tests/unit/check.h"

#define CDN "mem://cdn"
#define FOLDER "models"

/* ---- a fake key source ---------------------------------------------------------- */

struct fake_model {
	const char *name;
	uint8_t *small; /* format 1 */
	size_t small_len;
	struct keys_doc doc; /* format 2: the "wrapped" key is the key itself */
	int has_doc;
	uint8_t *hashes; /* format 1: the API's chunk hashes, or NULL */
	size_t n_hashes;
	int hashes_errno; /* the API cannot be asked for the list: this error */
};

struct fake_keys {
	struct keys k;
	uint8_t rkey[CRYPTO_KEY_SIZE];
	struct fake_model *models;
	size_t n;
	int unwraps, docs;
	pthread_mutex_t lock;
};

static struct fake_model *fake_find(struct fake_keys *f, const char *name)
{
	for (size_t i = 0; i < f->n; i++)
		if (strcmp(f->models[i].name, name) == 0)
			return &f->models[i];
	return NULL;
}

static int fake_resource_key(struct keys *k, uint8_t *key, char **ret_msg)
{
	memcpy(key, ((struct fake_keys *)k)->rkey, CRYPTO_KEY_SIZE);
	return 0;
}

static int fake_cdn(struct keys *k, const char **ret_url, const struct fetch_s3 **ret_s3)
{
	*ret_url = CDN;
	*ret_s3 = NULL;
	return 0;
}

static int fake_small(struct keys *k, const char *name, uint8_t **ret, size_t *ret_len,
		      char **ret_msg)
{
	struct fake_model *m = fake_find((struct fake_keys *)k, name);

	if (!m || !m->small)
		return -ENOENT;
	*ret = secmem_alloc(m->small_len);
	if (!*ret)
		return -ENOMEM;
	memcpy(*ret, m->small, m->small_len);
	*ret_len = m->small_len;
	return 0;
}

static int fake_doc(struct keys *k, const char *name, struct keys_doc *ret, char **ret_msg)
{
	struct fake_keys *f = (struct fake_keys *)k;
	struct fake_model *m = fake_find(f, name);

	if (!m || !m->has_doc)
		return -ENOENT;
	pthread_mutex_lock(&f->lock);
	f->docs++;
	pthread_mutex_unlock(&f->lock);
	*ret = m->doc;
	return 0;
}

#define TEST_HASH_CHUNK (64 * 1024)

static int fake_chunk_hashes(struct keys *k, const char *name, uint32_t *ret_chunk_size,
			     uint8_t **ret_sha256, size_t *ret_count, char **ret_msg)
{
	struct fake_model *m = fake_find((struct fake_keys *)k, name);

	if (m && m->hashes_errno)
		return m->hashes_errno;
	if (!m || !m->hashes)
		return -ENOENT;
	*ret_sha256 = malloc(m->n_hashes * 32);
	if (!*ret_sha256)
		return -ENOMEM;
	memcpy(*ret_sha256, m->hashes, m->n_hashes * 32);
	*ret_chunk_size = TEST_HASH_CHUNK;
	*ret_count = m->n_hashes;
	return 0;
}

static int fake_unwrap(struct keys *k, const struct keys_doc *doc, uint8_t *key, char **ret_msg)
{
	struct fake_keys *f = (struct fake_keys *)k;

	pthread_mutex_lock(&f->lock);
	f->unwraps++;
	pthread_mutex_unlock(&f->lock);
	if (doc->wrapped_len != CRYPTO_KEY_SIZE)
		return -EIO;
	memcpy(key, doc->wrapped, CRYPTO_KEY_SIZE);
	return 0;
}

static void fake_free(struct keys *k)
{
}

static const struct keys_ops fake_ops = {
	.resource_key = fake_resource_key,
	.cdn = fake_cdn,
	.small_part = fake_small,
	.key_doc = fake_doc,
	.chunk_hashes = fake_chunk_hashes,
	.unwrap = fake_unwrap,
	.free = fake_free,
};

/* ---- models made by the format layer ------------------------------------------------ */

struct model {
	char name[64];
	int format;
	uint8_t *plain;
	size_t size;
	uint8_t *stream; /* the whole ciphertext stream */
	size_t stream_len, small_len;
	char url[128];
	struct catalog_entry e;
};

static void fill_random(uint8_t *p, size_t n, unsigned seed)
{
	uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;

	for (size_t i = 0; i < n; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		p[i] = (uint8_t)x;
	}
}

/* Encrypts size random bytes in format; the big part goes to src, the rest to fm. */
static int make_model(struct model *m, struct fake_keys *f, struct fake_model *fm, struct src *src,
		      const char *name, int format, size_t size, unsigned shift)
{
	const struct format_ops *ops = format_get(format);
	struct format_enc *enc = NULL;
	uint8_t *key = NULL, *out = NULL;
	char file_id[33] = "";
	size_t cap, pos = 0, len, done = 0;
	int r;

	memset(m, 0, sizeof(*m));
	memset(fm, 0, sizeof(*fm));
	snprintf(m->name, sizeof(m->name), "%s", name);
	snprintf(m->url, sizeof(m->url), "%s/%s/%s.big", CDN, FOLDER, name);
	m->format = format;
	m->size = size;
	m->plain = malloc(size ? size : 1);
	fill_random(m->plain, size, (unsigned)size * 7 + (unsigned)format);
	r = ops->enc_new(f->rkey, size, shift, &enc, &key, file_id);
	if (r < 0)
		return r;
	m->stream_len = (size_t)ops->enc_size(enc);
	m->stream = malloc(m->stream_len);
	ops->enc_next(enc, &cap);
	out = malloc(cap);
	while (r == 0 && !ops->enc_done(enc)) {
		size_t n = ops->enc_next(enc, &cap);

		r = ops->enc_update(enc, m->plain + done, n, out, &len);
		if (r == 0 && pos + len <= m->stream_len)
			memcpy(m->stream + pos, out, len);
		pos += len;
		done += n;
	}
	if (r == 0 && (pos != m->stream_len || done != size))
		r = -EIO;
	m->small_len = (size_t)ops->small_size(size);
	fm->name = m->name;
	if (m->small_len) {
		fm->small = m->stream;
		fm->small_len = m->small_len;
	}
	if (key) {
		memcpy(fm->doc.file_id, file_id, sizeof(fm->doc.file_id));
		memcpy(fm->doc.wrapped, key, CRYPTO_KEY_SIZE);
		fm->doc.wrapped_len = CRYPTO_KEY_SIZE;
		fm->has_doc = 1;
	}
	if (r == 0)
		r = src_mem_put(src, m->url, m->stream + m->small_len,
				m->stream_len - m->small_len);
	m->e.name = m->name;
	m->e.format = format;
	free(out);
	ops->enc_free(enc);
	secmem_free(key);
	return r;
}

/* Gives fm the chunk hashes of m's big part, as a publisher registers them. */
static void model_hashes(struct model *m, struct fake_model *fm)
{
	size_t big = m->stream_len - m->small_len;

	fm->n_hashes = (big + TEST_HASH_CHUNK - 1) / TEST_HASH_CHUNK;
	fm->hashes = malloc(fm->n_hashes * 32);
	for (size_t c = 0; c < fm->n_hashes; c++) {
		size_t a = c * TEST_HASH_CHUNK;

		crypto_sha256(m->stream + m->small_len + a,
			      big - a < TEST_HASH_CHUNK ? big - a : TEST_HASH_CHUNK,
			      fm->hashes + 32 * c);
	}
}

/* XORs nine bytes of m's big part at off on the source. */
static void tamper(struct src *mem, struct model *m, size_t off)
{
	uint8_t x[9];

	memcpy(x, m->stream + m->small_len + off, sizeof(x));
	for (size_t i = 0; i < sizeof(x); i++)
		x[i] ^= 0xa5;
	src_mem_poke(mem, m->url, off, x, sizeof(x));
}

static void untamper(struct src *mem, struct model *m, size_t off)
{
	src_mem_poke(mem, m->url, off, m->stream + m->small_len + off, 9);
}

static void model_free(struct model *m)
{
	free(m->plain);
	free(m->stream);
}

/*
 * The words of this thread's last failed open or read (msg.h), for the
 * checks that look at them; "" after a success, "(none)" for a failure
 * that came without any.
 */
static __thread char last_msg[512];

static void keep_msg(int r, char *msg)
{
	snprintf(last_msg, sizeof(last_msg), "%s", r == 0 ? "" : msg ? msg : "(none)");
	free(msg);
}

static int t_open(struct store *st, const struct catalog_entry *e, struct store_file **ret)
{
	char *msg = NULL;
	int r = store_open(st, e, ret, &msg);

	keep_msg(r, msg);
	return r;
}

/* Reads [off, off + len) of h and compares it with want: 0, or the read's error. */
static int read_cmp(struct store_file *h, uint64_t off, size_t len, const uint8_t *want,
		    size_t *ret_got)
{
	struct store_read rd;
	char *msg = NULL;
	size_t at = 0;
	int r, same = 1;

	r = store_read(h, off, len, &rd, &msg);
	keep_msg(r, msg);
	if (r < 0)
		return r;
	for (int i = 0; i < rd.iovcnt; i++) {
		if (memcmp(rd.iov[i].iov_base, want + at, rd.iov[i].iov_len) != 0)
			same = 0;
		at += rd.iov[i].iov_len;
	}
	if (ret_got)
		*ret_got = rd.len;
	if (at != rd.len)
		same = 0;
	store_read_release(&rd);
	return same ? 0 : -EILSEQ;
}

/* Reads the whole file in steps of step bytes: 0, or the first error. */
static int read_all(struct store_file *h, const struct model *m, size_t step)
{
	for (uint64_t off = 0; off < m->size; off += step) {
		size_t n = m->size - off < step ? (size_t)(m->size - off) : step, got = 0;
		int r = read_cmp(h, off, n, m->plain + off, &got);

		if (r < 0)
			return r;
		if (got != n)
			return -ERANGE;
	}
	return 0;
}

/* ---- format 2's decryption fed in pieces (format.h, dec_new) ----------------------------- */

#define DEC_SLOT (64 * 1024)
#define DEC_SLOTS 40

/* Feeds ct in pieces of 1..max bytes; what dec_update first returned. */
static int dec_feed(const struct format_ops *ops, struct format_dec *d, const uint8_t *ct,
		    size_t len, uint64_t *x, size_t max)
{
	int r = 0;

	for (size_t at = 0, k; at < len; at += k) {
		*x ^= *x << 13;
		*x ^= *x >> 7;
		*x ^= *x << 17;
		k = 1 + (size_t)(*x % max);
		if (k > len - at)
			k = len - at;
		if (ops->dec_update(d, ct + at, k) < 0 && !r)
			r = -1;
	}
	return r;
}

/*
 * Random ranges of m, decrypted from its stream fed in random pieces
 * (1..17 bytes, or 1..70000), compared with its plaintext: bad ranges.
 */
static size_t dec_pieces_bad(const struct format_ops *ops, struct format_file *ff, struct model *m,
			     uint8_t **slots)
{
	uint64_t x = 88172645463325252ull, c0, c1;
	struct format_dec *d;
	size_t bad = 0;
	char *msg = NULL;
	int r;

	for (int t = 0; t < 200; t++) {
		uint64_t off, len;

		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		off = (x % m->size) & ~(uint64_t)15;
		len = (x >> 24) % ((uint64_t)DEC_SLOT * DEC_SLOTS - DEC_SLOT) + 1;
		if (len > m->size - off)
			len = m->size - off;
		ops->span(ff, off, (size_t)len, &c0, &c1);
		r = ops->dec_new(ff, off, (size_t)len, slots, DEC_SLOT, &d);
		if (r == 0 &&
		    dec_feed(ops, d, m->stream + c0, (size_t)(c1 - c0), &x, t % 2 ? 17 : 70000) < 0)
			bad++;
		if (r < 0 || ops->dec_end(d, &msg) != 0)
			bad++;
		free(msg);
		msg = NULL;
		for (uint64_t q = 0; q < len; q += DEC_SLOT)
			if (memcmp(slots[q / DEC_SLOT], m->plain + off + q,
				   len - q < DEC_SLOT ? (size_t)(len - q) : DEC_SLOT) != 0)
				bad++;
	}
	return bad;
}

/*
 * Opens m in its format (the head the format asks for), then checks
 * random ranges fed in pieces; ff and the slots stay for the caller's
 * checks (NULL ff when it did not open).
 */
static struct format_file *dec_pieces_open(const struct format_ops *ops, struct model *m,
					   const uint8_t *key, uint8_t **slots)
{
	struct format_file *ff = NULL;
	uint64_t head_off;
	size_t head_len, bad;
	char *msg = NULL;
	int r;

	ops->head(m->stream_len, NULL, &head_off, &head_len);
	r = ops->open(key, m->stream + head_off, m->stream_len, NULL, &ff, &msg);
	CHECK(r == 0 && ff->size == m->size, "format %d: %s opens (%d)", ops->id, m->name, r);
	free(msg);
	if (r < 0)
		return NULL;
	bad = dec_pieces_bad(ops, ff, m, slots);
	CHECK(bad == 0,
	      "format %d: 200 random ranges of %s, fed in pieces of 1..17 and 1..70000 bytes, "
	      "decrypt to the plaintext (%zu bad)",
	      ops->id, m->name, bad);
	return ff;
}

/* Format 1 and 2 fed in pieces; format 2 also cut short, tampered and overfed. */
static void test_dec_pieces(struct model *m1, const uint8_t *key1, struct model *m,
			    const uint8_t *key)
{
	const struct format_ops *ops = &format_f2;
	struct format_file *ff;
	uint8_t *slots[DEC_SLOTS], *ct;
	struct format_dec *d;
	uint64_t x = 88172645463325252ull, c0, c1;
	size_t wiped_bad = 0;
	char *msg = NULL;
	int r;

	for (int i = 0; i < DEC_SLOTS; i++)
		slots[i] = malloc(DEC_SLOT);
	format_close(dec_pieces_open(&format_f1, m1, key1, slots));
	ff = dec_pieces_open(ops, m, key, slots);
	if (!ff)
		goto out;

	/* A flipped byte in the third chunk: refused there, its plaintext wiped. */
	ops->span(ff, 0, DEC_SLOT, &c0, &c1);
	ct = malloc((size_t)(c1 - c0));
	memcpy(ct, m->stream + c0, (size_t)(c1 - c0));
	ct[2 * (4096 + CRYPTO_TAG_SIZE) + 100] ^= 1;
	for (int i = 0; i < DEC_SLOTS; i++)
		memset(slots[i], 0xaa, DEC_SLOT);
	r = ops->dec_new(ff, 0, DEC_SLOT, slots, DEC_SLOT, &d);
	if (r == 0)
		r = dec_feed(ops, d, ct, (size_t)(c1 - c0), &x, 3000);
	CHECK(r == -1, "format 2: a flipped byte makes dec_update fail");
	r = ops->dec_end(d, &msg);
	for (size_t i = 2 * 4096; i < 3 * 4096; i++)
		if (slots[0][i] != 0)
			wiped_bad++;
	CHECK(r == -EBADMSG && msg && strstr(msg, "chunk 2 fails its check") && wiped_bad == 0 &&
		      memcmp(slots[0], m->plain, 2 * 4096) == 0,
	      "format 2: ... dec_end says chunk 2 fails its check (%d, %s); its 4 KiB wiped, "
	      "the chunks before it good",
	      r, msg ? msg : "no message");
	free(msg);
	msg = NULL;

	/* Cut short in the middle of a chunk: -EIO, nothing of that chunk left. */
	memset(slots[0], 0xaa, DEC_SLOT);
	r = ops->dec_new(ff, 0, DEC_SLOT, slots, DEC_SLOT, &d);
	if (r == 0)
		r = ops->dec_update(d, m->stream + F2_HEADER_SIZE, 4096 + CRYPTO_TAG_SIZE + 2000);
	r = r ? r : ops->dec_end(d, &msg);
	wiped_bad = 0;
	for (size_t i = 4096; i < 4096 + 2000; i++)
		if (slots[0][i] != 0)
			wiped_bad++;
	CHECK(r == -EIO && msg && wiped_bad == 0,
	      "format 2: a range cut short is -EIO (%d, %s), its unchecked plaintext wiped", r,
	      msg ? msg : "no message");
	free(msg);
	msg = NULL;

	/* More bytes than the range's chunks: -EPROTO. */
	r = ops->dec_new(ff, 0, 4096, slots, DEC_SLOT, &d);
	if (r == 0)
		r = ops->dec_update(d, m->stream + F2_HEADER_SIZE, 4096 + CRYPTO_TAG_SIZE + 1);
	r = ops->dec_end(d, &msg);
	CHECK(r == -EPROTO && msg, "format 2: bytes past the range's chunks are -EPROTO (%d)", r);
	free(msg);
	free(ct);
	format_close(ff);
out:
	for (int i = 0; i < DEC_SLOTS; i++)
		free(slots[i]);
}

/* ---- threads ------------------------------------------------------------------------- */

struct reader {
	struct store *st;
	struct model *m;
	unsigned seed;
	int bad;
};

static void *reader_main(void *arg)
{
	struct reader *rd = arg;
	uint64_t x = rd->seed * 2654435761u + 1;

	for (int i = 0; i < 60; i++) {
		struct model *m = &rd->m[i % 3];
		struct store_file *h = NULL;
		uint64_t off;
		size_t len;

		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		off = x % m->size;
		len = (size_t)(x >> 20) % (300 * 1024) + 1;
		if (len > m->size - off)
			len = (size_t)(m->size - off);
		if (t_open(rd->st, &m->e, &h) < 0 ||
		    read_cmp(h, off, len, m->plain + off, NULL) < 0)
			rd->bad++;
		store_close(h);
	}
	return NULL;
}

int main(void)
{
	struct fake_keys keys = {.k.ops = &fake_ops};
	struct fake_model fm[8];
	struct model m[8];
	struct src *mem = NULL;
	char **unchecked = NULL;
	size_t n_unchecked = 0;
	struct config c = {0};
	struct src *src = NULL;
	struct store *st = NULL;
	struct store_file *h = NULL, *h2 = NULL;
	struct store_stats ss, ss2;
	struct src_mem_stats ms, ms2;
	struct catalog_entry pe;
	size_t got;
	int r;

	log_init("test_store", LOG_CRIT);
	pthread_mutex_init(&keys.lock, NULL);
	fill_random(keys.rkey, sizeof(keys.rkey), 99);
	keys.models = fm;
	keys.n = 8;
	c.folder = FOLDER;
	c.io_timeout = 5;
	c.memory_cache = 4 << 20; /* the minimum: 64 units */
	c.readahead_max = 1 << 20;

	r = src_mem_new(&mem);
	CHECK(r == 0, "src_mem_new");
	r = src_hash_new(mem, &src);
	CHECK(r == 0, "src_hash_new over it");
	CHECK(make_model(&m[0], &keys, &fm[0], mem, "one.onnx", 1, 1000003, 0) == 0,
	      "a format-1 model of 1000003 bytes, small and big part");
	CHECK(make_model(&m[1], &keys, &fm[1], mem, "two.onnx", 2, 777777, 12) == 0,
	      "a format-2 model in 4 KiB chunks");
	CHECK(make_model(&m[2], &keys, &fm[2], mem, "big.onnx", 2, 6 << 20, 17) == 0,
	      "a format-2 model of 6 MiB in 128 KiB chunks (larger than a cache unit)");
	CHECK(make_model(&m[3], &keys, &fm[3], mem, "tiny.onnx", 1, 5, 0) == 0,
	      "a format-1 model of 5 bytes: its big part is shorter than a block");
	/* Format 1 and chunk hashes (docs/trust.md section 4). */
	CHECK(make_model(&m[4], &keys, &fm[4], mem, "listed.onnx", 1, 900000, 0) == 0,
	      "a format-1 model with the API's chunk hashes");
	model_hashes(&m[4], &fm[4]);
	CHECK(make_model(&m[5], &keys, &fm[5], mem, "legacy.onnx", 1, 300000, 0) == 0,
	      "a legacy format-1 model: no list, a catalog sha256");
	m[5].e.has_sha256 = 1;
	crypto_sha256(m[5].plain, m[5].size, m[5].e.sha256);
	CHECK(make_model(&m[6], &keys, &fm[6], mem, "wrong.onnx", 1, 200000, 0) == 0,
	      "a legacy format-1 model whose catalog sha256 is another file's");
	m[6].e.has_sha256 = 1;
	memcpy(m[6].e.sha256, m[5].e.sha256, 32);
	CHECK(make_model(&m[7], &keys, &fm[7], mem, "bare.onnx", 1, 100000, 0) == 0,
	      "a legacy format-1 model with neither");
	test_dec_pieces(&m[0], keys.rkey, &m[1], fm[1].doc.wrapped);
	r = store_new(&c, src, &keys.k, &st, NULL);
	CHECK(r == 0, "store_new over src_mem and a fake key source");
	if (r < 0)
		return check_done();

	/* Probing: format and sizes from the big part alone. */
	for (int i = 0; i < 4; i++) {
		pe = m[i].e;
		pe.format = 0;
		r = store_probe(st, &pe, NULL);
		CHECK(r == 0 && pe.format == m[i].format && pe.has_size && pe.size == m[i].size &&
			      pe.big_size == m[i].stream_len - m[i].small_len,
		      "probe of %s: format %d, %zu bytes (r=%d, format %d, size %llu)", m[i].name,
		      m[i].format, m[i].size, r, pe.format, (unsigned long long)pe.size);
	}

	/* Whole reads, in odd steps, of every model. */
	for (int i = 0; i < 4; i++) {
		r = t_open(st, &m[i].e, &h);
		CHECK(r == 0, "open %s", m[i].name);
		if (r == 0)
			CHECK(read_all(h, &m[i], 100003) == 0,
			      "%s reads back whole, in steps of 100003", m[i].name);
		got = 1;
		if (r == 0)
			CHECK(read_cmp(h, m[i].size, 10, m[i].plain, &got) == 0 && got == 0,
			      "%s: a read at the end gives 0 bytes", m[i].name);
		store_close(h);
		h = NULL;
	}

	/* Hits: the same bytes again come from the cache, not the source. */
	r = t_open(st, &m[1].e, &h);
	CHECK(r == 0 && read_cmp(h, 4096, 100000, m[1].plain + 4096, NULL) == 0, "a read");
	src_mem_stats(mem, &ms);
	store_stats(st, &ss);
	CHECK(read_cmp(h, 4096, 100000, m[1].plain + 4096, NULL) == 0, "the same read again");
	src_mem_stats(mem, &ms2);
	store_stats(st, &ss2);
	CHECK(ms2.reads == ms.reads, "a hit reads nothing from the source (%llu reads)",
	      (unsigned long long)(ms2.reads - ms.reads));
	CHECK(ss2.cache_hits >= ss.cache_hits + 2 && ss2.cache_misses == ss.cache_misses,
	      "the hits are counted, no miss");
	store_close(h);
	h = NULL;

	/* Eviction: 6 MiB through a 4 MiB cache leaves its start out. */
	r = t_open(st, &m[2].e, &h);
	CHECK(r == 0 && read_all(h, &m[2], 1 << 20) == 0, "6 MiB read through a 4 MiB cache");
	src_mem_stats(mem, &ms);
	CHECK(read_cmp(h, 0, 4096, m[2].plain, NULL) == 0, "its first bytes read again");
	src_mem_stats(mem, &ms2);
	CHECK(ms2.reads > ms.reads, "evicted: they came from the source again");
	store_close(h);
	h = NULL;

	/* Failures: a source that fails, then recovers; a tampered chunk. */
	r = t_open(st, &m[1].e, &h);
	CHECK(r == 0, "open two.onnx again");
	src_mem_fault(mem, m[1].url, 0, 1 << 30, -EIO, -1);
	r = read_cmp(h, 700000, 4096, m[1].plain + 700000, NULL);
	CHECK(r == -EIO, "a read the source fails is EIO (%d)", r);
	CHECK(strstr(last_msg, "the memory source failed") != NULL,
	      "... and its message is the source's words (%s)", last_msg);
	r = read_cmp(h, 650000, 4096, m[1].plain + 650000, NULL);
	CHECK(r == -EIO, "a read right after a failed fill fails at once (%d)", r);
	CHECK(strstr(last_msg, "the memory source failed") != NULL,
	      "... with the failed fill's words (%s)", last_msg);
	src_mem_fault(mem, m[1].url, 0, 0, 0, 0);
	usleep(1100 * 1000);
	CHECK(read_cmp(h, 700000, 4096, m[1].plain + 700000, NULL) == 0,
	      "once the source answers again, the read works");
	{
		uint8_t x = m[1].stream[64 + 5 * (4096 + 16) + 9] ^ 0x5a;

		src_mem_poke(mem, m[1].url, 64 + 5 * (4096 + 16) + 9, &x, 1);
	}
	src_mem_stats(mem, &ms);
	r = read_cmp(h, 5 * 4096 + 1, 10, m[1].plain + 5 * 4096 + 1, NULL);
	src_mem_stats(mem, &ms2);
	CHECK(r == -EIO, "a chunk that fails its tag is EIO (%d)", r);
	CHECK(strstr(last_msg, "chunk 5 fails its check") != NULL,
	      "... its message names the chunk (%s)", last_msg);
	CHECK(ms2.drops == ms.drops + 1 && ms2.reads == ms.reads + 2,
	      "it was dropped from the lower layers and read once more (%llu drops, %llu reads)",
	      (unsigned long long)(ms2.drops - ms.drops),
	      (unsigned long long)(ms2.reads - ms.reads));
	store_close(h);
	h = NULL;
	src_mem_poke(mem, m[1].url, 64 + 5 * (4096 + 16) + 9,
		     m[1].stream + 64 + 5 * (4096 + 16) + 9, 1);

	/* A format-2 key lives while the file is open, and is unwrapped again after. */
	usleep(1100 * 1000);
	keys.unwraps = 0;
	r = t_open(st, &m[1].e, &h);
	r = r ? r : t_open(st, &m[1].e, &h2);
	CHECK(r == 0 && keys.unwraps == 1, "two opens of a closed format-2 file unwrap once (%d)",
	      keys.unwraps);
	store_close(h);
	CHECK(read_cmp(h2, 5 * 4096, 4096, m[1].plain + 5 * 4096, NULL) == 0,
	      "the other handle still reads (the tampered chunk came back whole)");
	store_close(h2);
	h = h2 = NULL;
	r = t_open(st, &m[1].e, &h);
	CHECK(r == 0 && keys.unwraps == 2, "after the last close the key is unwrapped anew");
	store_close(h);
	h = NULL;

	/* Read-ahead: a sequential reader gets what it has not asked for yet. */
	CHECK(store_start(st) == 0, "the read-ahead workers start");
	r = t_open(st, &m[2].e, &h);
	src_mem_stats(mem, &ms);
	for (uint64_t off = 0; r == 0 && off < 512 * 1024; off += 128 * 1024)
		r = read_cmp(h, off, 128 * 1024, m[2].plain + off, NULL);
	CHECK(r == 0, "a sequential reader reads 512 KiB");
	for (int i = 0; i < 50; i++) {
		src_mem_stats(mem, &ms2);
		if (ms2.read_bytes - ms.read_bytes >= 1024 * 1024)
			break;
		usleep(20 * 1000);
	}
	CHECK(ms2.read_bytes - ms.read_bytes >= 1024 * 1024,
	      "read-ahead fetched past what was read (%llu bytes)",
	      (unsigned long long)(ms2.read_bytes - ms.read_bytes));
	store_stats(st, &ss);
	CHECK(read_cmp(h, 512 * 1024, 256 * 1024, m[2].plain + 512 * 1024, NULL) == 0,
	      "the next read");
	store_stats(st, &ss2);
	CHECK(ss2.cache_hits >= ss.cache_hits + 4, "the next read hits what read-ahead fetched");
	store_close(h);
	h = NULL;

	/* key_ttl: a format-2 key outlives its last close, then goes. */
	c.key_ttl = 2;
	{
		struct store *st2 = NULL;
		struct src *mem2 = NULL;
		int u0;

		/* A store of its own: key_ttl takes effect with its workers. */
		r = src_mem_new(&mem2);
		if (r == 0)
			r = src_mem_put(mem2, m[1].url, m[1].stream, m[1].stream_len);
		if (r == 0)
			r = store_new(&c, mem2, &keys.k, &st2, NULL);
		if (r == 0)
			r = store_start(st2);
		CHECK(r == 0, "a store with key_ttl = 2 s starts");
		u0 = keys.unwraps;
		r = r ? r : t_open(st2, &m[1].e, &h);
		store_close(h);
		r = r ? r : t_open(st2, &m[1].e, &h);
		CHECK(r == 0 && keys.unwraps == u0 + 1 &&
			      read_cmp(h, 0, 4096, m[1].plain, NULL) == 0,
		      "a reopening within key_ttl needs no unwrap (%d)", keys.unwraps - u0);
		store_close(h);
		h = NULL;
		usleep(3500 * 1000);
		r = t_open(st2, &m[1].e, &h);
		CHECK(r == 0 && keys.unwraps == u0 + 2,
		      "after key_ttl the key is gone: unwrapped anew");
		store_close(h);
		h = NULL;
		store_free(st2);
		c.key_ttl = 0;
	}

	/* Many readers at once, over every model, with a slow source. */
	{
		struct reader rd[8];
		pthread_t t[8];
		int bad = 0;

		src_mem_delay(mem, 2);
		for (int i = 0; i < 8; i++) {
			rd[i] = (struct reader){.st = st, .m = m, .seed = (unsigned)i + 1};
			pthread_create(&t[i], NULL, reader_main, &rd[i]);
		}
		for (int i = 0; i < 8; i++) {
			pthread_join(t[i], NULL);
			bad += rd[i].bad;
		}
		src_mem_delay(mem, 0);
		CHECK(bad == 0,
		      "8 threads x 60 random reads over 3 models: every byte right (%d bad)", bad);
	}

	/* Chunk hashes: every range is checked before it is decrypted. */
	r = t_open(st, &m[4].e, &h);
	CHECK(r == 0 && read_all(h, &m[4], 70000) == 0, "a listed model reads back whole");
	store_close(h);
	h = NULL;
	pe = m[4].e;
	pe.updated = "v2"; /* a new version: nothing of it in the cache */
	tamper(mem, &m[4], 5 * TEST_HASH_CHUNK + 100);
	src_mem_stats(mem, &ms);
	r = t_open(st, &pe, &h);
	CHECK(r == 0, "the tampered model opens (its head is intact)");
	got = 0;
	r = r ? r : read_cmp(h, 0, 5 * TEST_HASH_CHUNK - 4096, m[4].plain, &got);
	CHECK(r == 0, "the bytes before the tampered chunk read and match the original");
	r = read_cmp(h, 5 * TEST_HASH_CHUNK, 4096, m[4].plain + 5 * TEST_HASH_CHUNK, NULL);
	CHECK(r == -EIO, "the tampered chunk is EIO (%d)", r);
	CHECK(strstr(last_msg, "chunk 5 of the big part fails its SHA-256 again") != NULL,
	      "... its message names the chunk and the check (%s)", last_msg);
	src_mem_stats(mem, &ms2);
	CHECK(ms2.drops > ms.drops, "the failed chunk was dropped below and read again");
	untamper(mem, &m[4], 5 * TEST_HASH_CHUNK + 100);
	usleep(1100 * 1000);
	CHECK(read_cmp(h, 5 * TEST_HASH_CHUNK, 4096, m[4].plain + 5 * TEST_HASH_CHUNK, NULL) == 0,
	      "restored at the source, the chunk reads again");
	store_close(h);
	h = NULL;

	/* A list that exists but does not arrive: no downgrade to a weaker check. */
	fm[4].hashes_errno = -ECONNRESET;
	pe = m[4].e;
	pe.updated = "v3";
	r = t_open(st, &pe, &h);
	CHECK(r == -EIO, "a listed model whose list cannot be fetched does not open (%d)", r);
	CHECK(strstr(last_msg, "cannot get its chunk hashes from the API") != NULL,
	      "... and says so (%s)", last_msg);
	h = NULL;
	fm[4].hashes_errno = -ETIMEDOUT;
	pe.updated = "v4";
	r = t_open(st, &pe, &h);
	CHECK(r == -ETIMEDOUT, "... and a timed-out list is ETIMEDOUT (%d)", r);
	h = NULL;
	fm[4].hashes_errno = 0;
	pe.updated = "v5";
	r = t_open(st, &pe, &h);
	CHECK(r == 0 && read_all(h, &m[4], 70000) == 0, "once the list arrives, it reads whole");
	store_close(h);
	h = NULL;

	/* No list, a catalog sha256: checked whole before the first byte. */
	r = t_open(st, &m[5].e, &h);
	CHECK(r == 0 && read_all(h, &m[5], 65536) == 0,
	      "a legacy model whose sha256 matches opens and reads");
	tamper(mem, &m[5], 200000);
	pe = m[5].e;
	r = read_cmp(h, 190000, 20000, m[5].plain + 190000, NULL);
	CHECK(r == 0, "what the cache holds still reads");
	store_close(h);
	h = NULL;
	pe.updated = "v2";
	r = t_open(st, &pe, &h);
	CHECK(r == -EIO, "tampered, it no longer opens: the whole check fails (%d)", r);
	CHECK(strstr(last_msg, "sha256") != NULL, "... and says so (%s)", last_msg);
	untamper(mem, &m[5], 200000);
	r = t_open(st, &m[6].e, &h);
	CHECK(r == -EIO, "a model whose sha256 differs does not open (%d)", r);
	h = NULL;

	/* Neither: served unchecked, and said so. */
	r = t_open(st, &m[7].e, &h);
	CHECK(r == 0 && read_all(h, &m[7], 65536) == 0, "a model with neither reads");
	store_close(h);
	h = NULL;
	r = store_unchecked(st, &unchecked, &n_unchecked);
	CHECK(r == 0 && n_unchecked >= 1, "store_unchecked lists it");
	{
		int listed = 0, wrongly = 0;

		for (size_t i = 0; i < n_unchecked; i++) {
			listed += strcmp(unchecked[i], "bare.onnx") == 0;
			wrongly += strcmp(unchecked[i], "listed.onnx") == 0 ||
				   strcmp(unchecked[i], "legacy.onnx") == 0;
			free(unchecked[i]);
		}
		free(unchecked);
		CHECK(listed == 1 && !wrongly, "only the file with neither is unchecked");
	}

	/* A resource key other than the publisher's: the padding check refuses it. */
	keys.rkey[0] ^= 0x5a;
	pe = m[7].e;
	pe.has_size = 1; /* the catalog's size: no padding needed for the size itself */
	pe.size = m[7].size;
	pe.updated = "another-key";
	r = t_open(st, &pe, &h);
	CHECK(r == -EIO, "a format-1 model with a wrong resource key does not open (%d)", r);
	CHECK(strcmp(last_msg, "(none)") != 0 && *last_msg, "... and says why (%s)", last_msg);
	h = NULL;
	keys.rkey[0] ^= 0x5a;

	/* A source with no such big part. */
	pe = m[0].e;
	pe.name = "absent.onnx";
	r = t_open(st, &pe, &h);
	CHECK(r < 0, "a model the source does not have does not open (%d)", r);
	CHECK(strstr(last_msg, "absent.onnx.big: not in the memory source") != NULL,
	      "... and its message names the big part (%s)", last_msg);

	store_free(st);
	for (int i = 0; i < 8; i++) {
		model_free(&m[i]);
		free(fm[i].hashes);
	}
	pthread_mutex_destroy(&keys.lock);
	return check_done();
}
