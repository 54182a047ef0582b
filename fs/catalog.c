/*
 * catalog.c - the list of files the mount shows (see catalog.h).
 *
 * Locking: cat->lock guards cat->cur, the reference counts of the lists
 * and the refresher's stop flag. A refresh builds its new list (API call,
 * probes of the big parts) without the lock and only swaps the pointer
 * under it; cat->refresh_lock serialises refreshes themselves, so two
 * never probe the same entries at once.
 */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "crypto/crypto.h"
#include "fs/atomic.h"
#include "fs/catalog.h"
#include "fs/log.h"
#include "fs/msg.h"
#include "fs/names.h"

#define CATALOG_MAX_ENTRIES 100000
#define CATALOG_FILE "catalog.json"
#define CATALOG_RETRY_SECONDS 30 /* after a failed refresh, when catalog_ttl is longer */

struct catalog {
	const struct config *c;
	struct session *s;
	catalog_probe_fn probe;
	void *probe_ctx;
	char *path; /* state_dir/catalog.json */

	pthread_mutex_t refresh_lock;
	int failed; /* the last refresh failed (under refresh_lock) */
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct catalog_list *cur;
	int stop;
	int started;
	pthread_t thread;
};

static void catalog_entry_clear(struct catalog_entry *e)
{
	free(e->name);
	free(e->updated);
	memset(e, 0, sizeof(*e));
}

void catalog_list_free(struct catalog_list *l)
{
	if (!l)
		return;
	for (size_t i = 0; i < l->n; i++)
		catalog_entry_clear(&l->e[i]);
	free(l->e);
	free(l);
}

static struct catalog_list *catalog_list_new(size_t cap)
{
	struct catalog_list *l = calloc(1, sizeof(*l));

	if (!l)
		return NULL;
	l->refs = 1;
	if (cap) {
		l->e = calloc(cap, sizeof(*l->e));
		if (!l->e) {
			free(l);
			return NULL;
		}
	}
	return l;
}

struct catalog_sort {
	struct catalog_entry e;
	size_t pos;
};

static int catalog_sort_cmp(const void *a, const void *b)
{
	const struct catalog_sort *x = a, *y = b;
	int c = strcmp(x->e.name, y->e.name);

	if (c)
		return c;
	return x->pos < y->pos ? -1 : x->pos > y->pos;
}

static int catalog_hex_decode(const char *hex, uint8_t out[32])
{
	if (strlen(hex) != 64)
		return -EINVAL;
	for (int i = 0; i < 32; i++) {
		unsigned v;

		if (sscanf(hex + 2 * i, "%2x", &v) != 1 ||
		    !strchr("0123456789abcdefABCDEF", hex[2 * i]) ||
		    !strchr("0123456789abcdefABCDEF", hex[2 * i + 1]))
			return -EINVAL;
		out[i] = (uint8_t)v;
	}
	return 0;
}

static int catalog_get_u64(json_t *o, const char *key, uint64_t *ret, int *ret_has)
{
	json_t *v = json_object_get(o, key);

	*ret_has = 0;
	if (!v || json_is_null(v))
		return 0;
	if (!json_is_integer(v) || json_integer_value(v) < 0)
		return -EINVAL;
	*ret = (uint64_t)json_integer_value(v);
	*ret_has = 1;
	return 0;
}

/* n decimal digits at p into *ret; 0 or -EINVAL. */
static int catalog_digits(const char *p, int n, int *ret)
{
	int v = 0;

	for (int i = 0; i < n; i++) {
		if (!isdigit((unsigned char)p[i]))
			return -EINVAL;
		v = v * 10 + (p[i] - '0');
	}
	*ret = v;
	return 0;
}

int catalog_parse_time(const char *s, time_t *ret)
{
	static const int mdays[] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
	struct tm tm = {0};
	int y, mo, d, h, mi, sec, oh = 0, om = 0, sign = 0;
	const char *p = s;
	time_t t;

	/* date-time of RFC 3339 section 5.6; 't', 'z' and a space for 'T' too. */
	if (catalog_digits(p, 4, &y) < 0 || p[4] != '-' || catalog_digits(p + 5, 2, &mo) < 0 ||
	    p[7] != '-' || catalog_digits(p + 8, 2, &d) < 0)
		return -EINVAL;
	p += 10;
	if (*p != 'T' && *p != 't' && *p != ' ')
		return -EINVAL;
	p++;
	if (catalog_digits(p, 2, &h) < 0 || p[2] != ':' || catalog_digits(p + 3, 2, &mi) < 0 ||
	    p[5] != ':' || catalog_digits(p + 6, 2, &sec) < 0)
		return -EINVAL;
	p += 8;
	if (*p == '.') {
		if (!isdigit((unsigned char)*++p))
			return -EINVAL;
		while (isdigit((unsigned char)*p))
			p++;
	}
	if (*p == 'Z' || *p == 'z') {
		p++;
	} else if (*p == '+' || *p == '-') {
		sign = *p == '-' ? -1 : 1;
		if (catalog_digits(p + 1, 2, &oh) < 0 || p[3] != ':' ||
		    catalog_digits(p + 4, 2, &om) < 0 || oh > 23 || om > 59)
			return -EINVAL;
		p += 6;
	} else {
		return -EINVAL;
	}
	if (*p || y < 1970 || mo < 1 || mo > 12 || d < 1 || d > mdays[mo - 1] || h > 23 ||
	    mi > 59 || sec > 60)
		return -EINVAL;
	if (mo == 2 && d == 29 && (y % 4 != 0 || (y % 100 == 0 && y % 400 != 0)))
		return -EINVAL;
	tm.tm_year = y - 1900;
	tm.tm_mon = mo - 1;
	tm.tm_mday = d;
	tm.tm_hour = h;
	tm.tm_min = mi;
	tm.tm_sec = sec == 60 ? 59 : sec; /* a leap second */
	t = timegm(&tm);
	if (t == (time_t)-1)
		return -EINVAL;
	*ret = t - sign * (time_t)(oh * 3600 + om * 60);
	return 0;
}

/* One entry of the document into e; -EINVAL (logged) when it is refused. */
static int catalog_parse_entry(json_t *o, size_t idx, struct catalog_entry *e)
{
	json_t *name = json_object_get(o, "name"), *v;
	const char *n;
	int has;

	if (!json_is_object(o) || !json_is_string(name)) {
		log_warn("catalog: entry %zu has no name; ignored", idx);
		return -EINVAL;
	}
	n = json_string_value(name);
	if (strlen(n) != json_string_length(name) || !names_valid(n)) {
		/* %.64s: a hostile name is not copied whole into the log. */
		log_warn("catalog: refused the name \"%.64s\" (entry %zu): empty, longer than "
			 "255 bytes, or holding '/' or NUL, or '.' or '..'",
			 n, idx);
		return -EINVAL;
	}
	memset(e, 0, sizeof(*e));
	e->format = 1;
	v = json_object_get(o, "format");
	if (v && !json_is_null(v)) {
		if (!json_is_integer(v) ||
		    (json_integer_value(v) != 1 && json_integer_value(v) != 2)) {
			log_warn("catalog: %s has an unknown format; ignored", n);
			return -EINVAL;
		}
		e->format = (int)json_integer_value(v);
	}
	if (catalog_get_u64(o, "size", &e->size, &e->has_size) < 0 ||
	    catalog_get_u64(o, "big_size", &e->big_size, &has) < 0) {
		log_warn("catalog: %s has a malformed size; ignored", n);
		return -EINVAL;
	}
	v = json_object_get(o, "sha256");
	if (json_is_string(v)) {
		if (catalog_hex_decode(json_string_value(v), e->sha256) < 0) {
			log_warn("catalog: %s has a malformed sha256; ignored", n);
			return -EINVAL;
		}
		e->has_sha256 = 1;
	}
	v = json_object_get(o, "updated");
	if (json_is_string(v) && !(e->updated = strdup(json_string_value(v))))
		return -ENOMEM;
	/* Left 0 (stamped when listed) when `updated` is absent or not a time. */
	if (e->updated && catalog_parse_time(e->updated, &e->mtime) < 0)
		log_debug("catalog: %s: updated \"%.40s\" is not an RFC 3339 time; its time is "
			  "when it was listed",
			  n, e->updated);
	e->name = strdup(n);
	if (!e->name) {
		free(e->updated);
		return -ENOMEM;
	}
	return 0;
}

int catalog_parse(json_t *doc, struct catalog_list **ret)
{
	json_t *arr = json_is_object(doc) ? json_object_get(doc, "resources") : NULL;
	struct catalog_list *l;
	size_t n, i, out;

	if (!json_is_array(arr)) {
		log_warn("catalog: the answer has no \"resources\" array");
		return -EPROTO;
	}
	n = json_array_size(arr);
	if (n > CATALOG_MAX_ENTRIES) {
		log_warn("catalog: %zu entries, more than %d", n, CATALOG_MAX_ENTRIES);
		return -EFBIG;
	}
	l = catalog_list_new(n);
	if (!l)
		return -ENOMEM;
	for (i = 0; i < n; i++) {
		int r = catalog_parse_entry(json_array_get(arr, i), i, &l->e[l->n]);

		if (r == -ENOMEM) {
			catalog_list_free(l);
			return r;
		}
		if (r == 0)
			l->n++;
	}
	/* Sort by name, then position: of duplicates the first in the document stays. */
	if (l->n > 1) {
		struct catalog_sort *tmp = calloc(l->n, sizeof(*tmp));

		if (!tmp) {
			catalog_list_free(l);
			return -ENOMEM;
		}
		for (i = 0; i < l->n; i++) {
			tmp[i].e = l->e[i];
			tmp[i].pos = i;
		}
		qsort(tmp, l->n, sizeof(*tmp), catalog_sort_cmp);
		for (i = 0, out = 0; i < l->n; i++) {
			if (out > 0 && strcmp(l->e[out - 1].name, tmp[i].e.name) == 0) {
				log_warn("catalog: duplicate name \"%s\"; the first entry stays",
					 tmp[i].e.name);
				catalog_entry_clear(&tmp[i].e);
				continue;
			}
			l->e[out++] = tmp[i].e;
		}
		l->n = out;
		free(tmp);
	}
	*ret = l;
	return 0;
}

const struct catalog_entry *catalog_find(const struct catalog_list *l, const char *name)
{
	size_t lo = 0, hi = l->n;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		int c = strcmp(name, l->e[mid].name);

		if (c == 0)
			return &l->e[mid];
		if (c < 0)
			hi = mid;
		else
			lo = mid + 1;
	}
	return NULL;
}

int catalog_entry_same(const struct catalog_entry *a, const struct catalog_entry *b)
{
	if (strcmp(a->name, b->name) != 0 || a->format != b->format || a->size != b->size ||
	    a->big_size != b->big_size || a->has_sha256 != b->has_sha256)
		return 0;
	if (a->has_sha256 && memcmp(a->sha256, b->sha256, 32) != 0)
		return 0;
	if (!a->updated != !b->updated)
		return 0;
	return !a->updated || strcmp(a->updated, b->updated) == 0;
}

/* ---- saved copy ---------------------------------------------------------- */

static json_t *catalog_to_json(const struct catalog_list *l, const char *folder)
{
	json_t *arr = json_array(), *doc;

	if (!arr)
		return NULL;
	for (size_t i = 0; i < l->n; i++) {
		const struct catalog_entry *e = &l->e[i];
		json_t *o =
			json_pack("{s:s, s:i, s:I, s:I}", "name", e->name, "format", e->format,
				  "size", (json_int_t)e->size, "big_size", (json_int_t)e->big_size);
		char hex[65];

		if (!o)
			goto err;
		if (e->has_sha256) {
			crypto_hex(e->sha256, 32, hex);
			json_object_set_new(o, "sha256", json_string(hex));
		}
		if (e->updated)
			json_object_set_new(o, "updated", json_string(e->updated));
		if (json_array_append_new(arr, o) < 0)
			goto err;
	}
	/* The folder too: a copy of another folder's list must not be shown. */
	doc = json_pack("{s:s, s:o}", "folder", folder, "resources", arr);
	return doc;
err:
	json_decref(arr);
	return NULL;
}

static int catalog_save(struct catalog *cat, const struct catalog_list *l)
{
	char *text;
	json_t *doc;
	int r;

	doc = catalog_to_json(l, cat->c->folder);
	if (!doc)
		return -ENOMEM;
	text = json_dumps(doc, JSON_COMPACT);
	json_decref(doc);
	if (!text)
		return -ENOMEM;
	r = atomic_write_file(cat->path, 0600, text, strlen(text), NULL, NULL);
	if (r < 0)
		log_warn("catalog: cannot save %s: %s", cat->path, strerror(-r));
	free(text);
	return r;
}

static int catalog_load_saved(struct catalog *cat, struct catalog_list **ret)
{
	json_error_t err;
	json_t *doc;
	int r;

	doc = json_load_file(cat->path, JSON_REJECT_DUPLICATES, &err);
	if (!doc) {
		if (access(cat->path, F_OK) == 0)
			log_warn("catalog: %s: %s (line %d)", cat->path, err.text, err.line);
		return -ENOENT;
	}
	if (!json_is_string(json_object_get(doc, "folder")) ||
	    strcmp(json_string_value(json_object_get(doc, "folder")), cat->c->folder) != 0) {
		log_info("catalog: %s is another folder's list; not used", cat->path);
		json_decref(doc);
		return -ENOENT;
	}
	r = catalog_parse(doc, ret);
	json_decref(doc);
	return r;
}

/* ---- refresh ------------------------------------------------------------- */

static int catalog_from_models(const struct config *c, struct catalog_list **ret)
{
	struct catalog_list *l;
	size_t n = 0;
	json_t *doc, *arr;
	int r;

	for (n = 0; c->models && c->models[n]; n++)
		;
	arr = json_array();
	if (!arr)
		return -ENOMEM;
	for (size_t i = 0; i < n; i++)
		json_array_append_new(arr, json_pack("{s:s}", "name", c->models[i]));
	doc = json_pack("{s:o}", "resources", arr);
	if (!doc)
		return -ENOMEM;
	r = catalog_parse(doc, &l);
	json_decref(doc);
	if (r < 0)
		return r;
	/* The format is not known either: the probe reads it from the big part. */
	for (size_t i = 0; i < l->n; i++)
		l->e[i].format = 0;
	*ret = l;
	return 0;
}

/* Completes entries from the previous list or the probe; drops the rest. */
static void catalog_complete(struct catalog *cat, struct catalog_list *l,
			     const struct catalog_list *prev)
{
	size_t out = 0;

	for (size_t i = 0; i < l->n; i++) {
		struct catalog_entry *e = &l->e[i];
		const struct catalog_entry *p = prev ? catalog_find(prev, e->name) : NULL;
		char *msg = NULL;
		int r = 0;

		/* big_size, when missing, is read at open. */
		if (e->has_size && e->format) {
			l->e[out++] = *e;
			continue;
		}
		/* An unchanged version needs no new probe. */
		if (p && e->format && e->updated && p->updated && p->format == e->format &&
		    strcmp(p->updated, e->updated) == 0 &&
		    (!e->big_size || e->big_size == p->big_size) &&
		    (!e->has_size || e->size == p->size)) {
			e->size = p->size;
			e->big_size = p->big_size;
			e->has_size = 1;
		} else {
			r = cat->probe(cat->probe_ctx, e, &msg);
		}
		if (r < 0) {
			log_warn("catalog: %s left out: its size cannot be derived from the big "
				 "part (%s)",
				 e->name, msg_or(msg, r));
			free(msg);
			catalog_entry_clear(e);
			continue;
		}
		l->e[out++] = *e;
	}
	l->n = out;
}

/*
 * Gives l's entries without a time of their own the one prev had for the
 * same version, or now; and l itself prev's time when nothing changed.
 */
static void catalog_stamp(struct catalog_list *l, const struct catalog_list *prev)
{
	time_t now = time(NULL);
	int same = prev->n == l->n;

	for (size_t i = 0; i < l->n; i++) {
		struct catalog_entry *e = &l->e[i];
		const struct catalog_entry *p = catalog_find(prev, e->name);
		int unchanged = p && catalog_entry_same(p, e);

		if (!e->mtime)
			e->mtime = unchanged ? p->mtime : now;
		same = same && unchanged;
	}
	l->mtime = same && prev->mtime ? prev->mtime : now;
}

static void catalog_publish(struct catalog *cat, struct catalog_list *l)
{
	struct catalog_list *old;

	pthread_mutex_lock(&cat->lock);
	old = cat->cur;
	cat->cur = l;
	pthread_mutex_unlock(&cat->lock);
	catalog_put(cat, old);
}

int catalog_refresh(struct catalog *cat, int offline)
{
	struct catalog_list *l = NULL, *prev;
	json_t *doc = NULL;
	int r;

	pthread_mutex_lock(&cat->refresh_lock);
	r = offline ? -EHOSTUNREACH : session_list(cat->s, cat->c->folder, &doc);
	if (r == 0) {
		r = catalog_parse(doc, &l);
		json_decref(doc);
	} else if (r == -ENOENT) {
		if (!cat->c->models)
			log_warn("catalog: the API has no catalog for %s and `models` is not set",
				 cat->c->folder);
		r = catalog_from_models(cat->c, &l);
	} else if (!offline) {
		log_warn("catalog: cannot list %s: %s", cat->c->folder, log_strerror(r));
	}
	if (r < 0) {
		prev = catalog_get(cat);
		if (prev->n == 0 && catalog_load_saved(cat, &l) == 0) {
			catalog_stamp(l, prev);
			log_info("catalog: using the saved copy (%zu files)", l->n);
			catalog_publish(cat, l);
		}
		catalog_put(cat, prev);
		cat->failed = 1;
		pthread_mutex_unlock(&cat->refresh_lock);
		return r;
	}
	prev = catalog_get(cat);
	catalog_complete(cat, l, prev);
	catalog_stamp(l, prev);
	catalog_put(cat, prev);
	catalog_save(cat, l);
	log_debug("catalog: %zu files", l->n);
	catalog_publish(cat, l);
	cat->failed = 0;
	pthread_mutex_unlock(&cat->refresh_lock);
	return 0;
}

struct catalog_list *catalog_get(struct catalog *cat)
{
	struct catalog_list *l;

	pthread_mutex_lock(&cat->lock);
	l = cat->cur;
	l->refs++;
	pthread_mutex_unlock(&cat->lock);
	return l;
}

void catalog_put(struct catalog *cat, struct catalog_list *l)
{
	int last;

	if (!l)
		return;
	pthread_mutex_lock(&cat->lock);
	last = --l->refs == 0;
	pthread_mutex_unlock(&cat->lock);
	if (last)
		catalog_list_free(l);
}

static void *catalog_thread(void *arg)
{
	struct catalog *cat = arg;
	unsigned wait = cat->c->catalog_ttl;

	pthread_setname_np(pthread_self(), "az-catalog");

	pthread_mutex_lock(&cat->refresh_lock);
	if (cat->failed && wait > CATALOG_RETRY_SECONDS)
		wait = CATALOG_RETRY_SECONDS;
	pthread_mutex_unlock(&cat->refresh_lock);

	pthread_mutex_lock(&cat->lock);
	while (!cat->stop) {
		struct timespec ts;
		int r;

		clock_gettime(CLOCK_MONOTONIC, &ts);
		ts.tv_sec += wait;
		r = pthread_cond_timedwait(&cat->cond, &cat->lock, &ts);
		if (cat->stop || r != ETIMEDOUT)
			continue;
		pthread_mutex_unlock(&cat->lock);
		r = catalog_refresh(cat, 0);
		wait = cat->c->catalog_ttl;
		if (r < 0 && wait > CATALOG_RETRY_SECONDS)
			wait = CATALOG_RETRY_SECONDS;
		pthread_mutex_lock(&cat->lock);
	}
	pthread_mutex_unlock(&cat->lock);
	return NULL;
}

int catalog_start(struct catalog *cat)
{
	int r;

	if (cat->c->catalog_ttl == 0)
		return 0;
	r = pthread_create(&cat->thread, NULL, catalog_thread, cat);
	if (r)
		return -r;
	cat->started = 1;
	return 0;
}

int catalog_new(const struct config *c, struct session *s, catalog_probe_fn probe, void *probe_ctx,
		struct catalog **ret)
{
	struct catalog *cat = calloc(1, sizeof(*cat));
	pthread_condattr_t ca;

	if (!cat)
		return -ENOMEM;
	cat->c = c;
	cat->s = s;
	cat->probe = probe;
	cat->probe_ctx = probe_ctx;
	cat->cur = catalog_list_new(0);
	if (!cat->cur || asprintf(&cat->path, "%s/%s", c->state_dir, CATALOG_FILE) < 0) {
		free(cat->cur);
		free(cat);
		return -ENOMEM;
	}
	cat->cur->mtime = time(NULL);
	pthread_mutex_init(&cat->refresh_lock, NULL);
	pthread_mutex_init(&cat->lock, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&cat->cond, &ca);
	pthread_condattr_destroy(&ca);
	*ret = cat;
	return 0;
}

void catalog_free(struct catalog *cat)
{
	if (!cat)
		return;
	if (cat->started) {
		pthread_mutex_lock(&cat->lock);
		cat->stop = 1;
		pthread_cond_broadcast(&cat->cond);
		pthread_mutex_unlock(&cat->lock);
		pthread_join(cat->thread, NULL);
	}
	catalog_list_free(cat->cur);
	free(cat->path);
	pthread_cond_destroy(&cat->cond);
	pthread_mutex_destroy(&cat->lock);
	pthread_mutex_destroy(&cat->refresh_lock);
	free(cat);
}
