/*
 * fetch.c - the exchange engine of fetch/: the struct fetch (a curl share
 * for DNS and TLS sessions, a pool of easy handles that keep their
 * connections alive between calls), one call's attempts within its
 * deadline with retries and capped, jittered backoff, the generic buffered
 * or streamed answer, and the one mapping of curl and HTTP codes to errno.
 *
 * Locking: pool_lock guards the pool array and nothing else; it is never
 * held across a transfer, a handle's cleanup or any other I/O. The share's
 * mutexes (one per curl_lock_data) are taken by libcurl itself around its
 * short accesses to the shared caches. An easy handle belongs to a single
 * thread from pool_get() to pool_put().
 *
 * The connection cache is deliberately not in the share: libcurl 7.88
 * documents CURL_LOCK_DATA_CONNECT as unsupported between concurrent
 * threads (its known bug "A shared connection cache is not thread-safe").
 * Connections stay alive in the cache of each pooled handle instead, which
 * is reused call after call; a handle that saw a transport error is
 * dropped with its connections.
 */
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <syslog.h>
#include <sys/random.h>
#include <time.h>

#include "crypto/crypto.h"
#include "fetch/internal.h"

#define FETCH_POOL_MAX 32
#define FETCH_DEFAULT_TIMEOUT_MS 30000u
#define FETCH_DEFAULT_CONNECT_MS 10000u
#define FETCH_LOW_SPEED_S 15u
#define FETCH_BACKOFF_BASE_MS 100u
#define FETCH_BACKOFF_MAX_MS 3000u
/* Body of an answer that will be retried: read this much to keep the
 * connection, then drop it. */
#define FETCH_DISCARD_MAX (64u * 1024)
/* x-amz-content-sha256 of an empty payload. */
#define FETCH_SHA256_EMPTY "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

struct fetch {
	char *ca_file;
	unsigned timeout_ms; /* read and written atomically */
	unsigned connect_timeout_ms;
	unsigned max_retries;
	fetch_log_fn log;
	CURLSH *share;
	pthread_mutex_t share_locks[CURL_LOCK_DATA_LAST];
	pthread_mutex_t pool_lock;
	CURL *pool[FETCH_POOL_MAX];
	size_t pool_len;
};

/* ---- helpers ------------------------------------------------------------ */

/*
 * The operator's words for the last failed call: this thread's (any
 * errno), and the process's last refused, unresolved or timed-out call
 * for the threads that only wait for another's fetch (the store's
 * workers); that one is used for a minute at most.
 */
#define FETCH_WHY_MAX 400
#define FETCH_WHY_ANY_MS 60000
#define FETCH_WHY_LOGGED 1 /* why_err of a line fetch_logf kept from a quiet thread */
static __thread int why_err;
static __thread char why_msg[FETCH_WHY_MAX];
static __thread int quiet_thread; /* fetch_quiet */
static __thread char why_out[FETCH_WHY_MAX];
static pthread_mutex_t why_lock = PTHREAD_MUTEX_INITIALIZER;
static int why_any_err;
static int64_t why_any_ms;
static char why_any_msg[FETCH_WHY_MAX];

static int64_t now_ms(void);
struct fetch_request;
static void peer_name(const struct fetch_request *req, char *out, size_t cap);

static void why_set(int err, const char *msg)
{
	why_err = err;
	snprintf(why_msg, sizeof(why_msg), "%s", msg);
	if (err != -EHOSTUNREACH && err != -ETIMEDOUT)
		return;
	pthread_mutex_lock(&why_lock);
	why_any_err = err;
	why_any_ms = now_ms();
	snprintf(why_any_msg, sizeof(why_any_msg), "%s", msg);
	pthread_mutex_unlock(&why_lock);
}

int fetch_quiet(int on)
{
	int was = quiet_thread;

	quiet_thread = on;
	return was;
}

const char *fetch_strerror(int err)
{
	if (err < 0 && (err == why_err || why_err == FETCH_WHY_LOGGED))
		return why_msg;
	if (err == -EHOSTUNREACH || err == -ETIMEDOUT) {
		int found = 0;

		pthread_mutex_lock(&why_lock);
		if (why_any_err == err && now_ms() - why_any_ms < FETCH_WHY_ANY_MS) {
			snprintf(why_out, sizeof(why_out), "%s", why_any_msg);
			found = 1;
		}
		pthread_mutex_unlock(&why_lock);
		if (found)
			return why_out;
	}
	return strerror(err < 0 ? -err : err);
}

void fetch_logf(struct fetch *f, int priority, const char *fmt, ...)
{
	char msg[768];
	va_list ap;

	if (priority >= LOG_DEBUG && (!f || !f->log))
		return;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	/* A quiet thread's caller says it: the words stay for fetch_strerror. */
	if (quiet_thread && priority < LOG_DEBUG) {
		if (why_err == 0 || why_err == FETCH_WHY_LOGGED) {
			why_err = FETCH_WHY_LOGGED;
			snprintf(why_msg, sizeof(why_msg), "%.*s", (int)sizeof(why_msg) - 1, msg);
		}
		priority = LOG_DEBUG;
	}
	if (f && f->log)
		f->log(priority, msg);
}

void fetch_url_for_log(const char *url, char *out, size_t cap)
{
	const char *p, *at, *end, *scheme;
	size_t n = 0;

	if (!cap)
		return;
	out[0] = '\0';
	if (!url)
		return;
	end = url + strcspn(url, "?#");
	p = url;
	scheme = strstr(url, "://");
	if (scheme && scheme < end) {
		size_t authority;

		p = scheme + 3;
		authority = strcspn(p, "/?#");
		at = memchr(p, '@', authority);
		n = (size_t)(p - url);
		if (n >= cap)
			n = cap - 1;
		memcpy(out, url, n);
		if (at)
			p = at + 1;
	}
	while (p < end && n + 1 < cap)
		out[n++] = *p++;
	out[n] = '\0';
}

unsigned fetch_timeout_ms(struct fetch *f)
{
	return __atomic_load_n(&f->timeout_ms, __ATOMIC_RELAXED);
}

void fetch_set_timeout(struct fetch *f, unsigned timeout_ms)
{
	if (f && timeout_ms)
		__atomic_store_n(&f->timeout_ms, timeout_ms, __ATOMIC_RELAXED);
}

static int64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(unsigned ms)
{
	struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000};

	while (nanosleep(&ts, &ts) && errno == EINTR)
		;
}

/* Jitter only: xorshift per thread, seeded from the kernel. */
static unsigned rand_below(unsigned n)
{
	static __thread uint64_t s;

	if (!s) {
		if (getrandom(&s, sizeof(s), GRND_NONBLOCK) != (ssize_t)sizeof(s))
			s = (uint64_t)now_ms() ^ (uint64_t)(uintptr_t)&s;
		s |= 1;
	}
	s ^= s << 13;
	s ^= s >> 7;
	s ^= s << 17;
	return n ? (unsigned)(s % n) : 0;
}

/* Full jitter: uniform in [0, min(max, base * 2^attempt)]. */
static unsigned backoff_ms(unsigned attempt)
{
	unsigned cap = FETCH_BACKOFF_BASE_MS << (attempt < 8 ? attempt : 8);

	if (cap > FETCH_BACKOFF_MAX_MS)
		cap = FETCH_BACKOFF_MAX_MS;
	return rand_below(cap + 1);
}

int fetch_status_errno(long status)
{
	if (status >= 200 && status < 300)
		return 0;
	if (status == 401 || status == 403)
		return -EACCES;
	if (status == 404)
		return -ENOENT;
	return -EIO;
}

int fetch_check_status(struct fetch *f, const char *method, const char *url, long status,
		       int quiet_404)
{
	char u[512];
	int r = fetch_status_errno(status);

	if (r) {
		fetch_url_for_log(url, u, sizeof(u));
		fetch_logf(f, quiet_404 && status == 404 ? LOG_DEBUG : LOG_ERR, "%s %s: HTTP %ld",
			   method, u, status);
	}
	if (r == -EIO) {
		/* EIO alone would read "Input/output error". */
		struct fetch_request req = {.url = url};
		char peer[300], msg[FETCH_WHY_MAX];

		peer_name(&req, peer, sizeof(peer));
		snprintf(msg, sizeof(msg), "%.300s answered HTTP %ld to %.8s", peer, status,
			 method);
		why_set(r, msg);
	}
	return r;
}

/* Statuses that may succeed if asked again. */
static int status_transient(long status)
{
	return status == 408 || status == 429 ||
	       (status >= 500 && status <= 599 && status != 501 && status != 505);
}

static int curl_errno(CURLcode rc, int *transient)
{
	*transient = 0;
	switch (rc) {
	case CURLE_COULDNT_RESOLVE_HOST:
	case CURLE_COULDNT_RESOLVE_PROXY:
	case CURLE_COULDNT_CONNECT:
	case CURLE_SEND_ERROR:
	case CURLE_RECV_ERROR:
	case CURLE_GOT_NOTHING:
	case CURLE_HTTP2:
	case CURLE_HTTP2_STREAM:
		*transient = 1;
		return -EHOSTUNREACH;
	case CURLE_PARTIAL_FILE:
	case CURLE_SSL_CONNECT_ERROR:
		*transient = 1;
		return -EIO;
	case CURLE_OPERATION_TIMEDOUT:
		*transient = 1;
		return -ETIMEDOUT;
	case CURLE_OUT_OF_MEMORY:
		return -ENOMEM;
	case CURLE_URL_MALFORMAT:
	case CURLE_UNSUPPORTED_PROTOCOL:
	case CURLE_BAD_FUNCTION_ARGUMENT:
		return -EINVAL;
	case CURLE_FILESIZE_EXCEEDED:
		return -EFBIG;
	case CURLE_ABORTED_BY_CALLBACK:
	case CURLE_WRITE_ERROR:
	case CURLE_READ_ERROR:
		return -ECANCELED;
	default:
		return -EIO;
	}
}

/* ---- the struct fetch --------------------------------------------------- */

static void share_lock(CURL *h, curl_lock_data data, curl_lock_access access, void *ctx)
{
	struct fetch *f = ctx;

	if ((unsigned)data < CURL_LOCK_DATA_LAST)
		pthread_mutex_lock(&f->share_locks[data]);
}

static void share_unlock(CURL *h, curl_lock_data data, void *ctx)
{
	struct fetch *f = ctx;

	if ((unsigned)data < CURL_LOCK_DATA_LAST)
		pthread_mutex_unlock(&f->share_locks[data]);
}

int fetch_new(const struct fetch_opts *opts, struct fetch **ret)
{
	struct fetch *f;
	int i, r = -ENOMEM;

	if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
		if (opts && opts->log)
			opts->log(LOG_ERR, "fetch: libcurl failed to initialise");
		return -EIO;
	}
	f = calloc(1, sizeof(*f));
	if (!f)
		goto err_global;
	f->timeout_ms = opts && opts->timeout_ms ? opts->timeout_ms : FETCH_DEFAULT_TIMEOUT_MS;
	f->connect_timeout_ms = opts && opts->connect_timeout_ms ? opts->connect_timeout_ms
								 : FETCH_DEFAULT_CONNECT_MS;
	f->max_retries = opts ? opts->max_retries : 0;
	f->log = opts ? opts->log : NULL;
	if (opts && opts->ca_file) {
		f->ca_file = strdup(opts->ca_file);
		if (!f->ca_file)
			goto err_free;
	}
	for (i = 0; i < CURL_LOCK_DATA_LAST; i++)
		pthread_mutex_init(&f->share_locks[i], NULL);
	pthread_mutex_init(&f->pool_lock, NULL);

	f->share = curl_share_init();
	if (!f->share)
		goto err_locks;
	if (curl_share_setopt(f->share, CURLSHOPT_LOCKFUNC, share_lock) ||
	    curl_share_setopt(f->share, CURLSHOPT_UNLOCKFUNC, share_unlock) ||
	    curl_share_setopt(f->share, CURLSHOPT_USERDATA, f) ||
	    curl_share_setopt(f->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_DNS) ||
	    curl_share_setopt(f->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_SSL_SESSION)) {
		fetch_logf(f, LOG_ERR, "fetch: libcurl share setup failed");
		r = -EIO;
		goto err_share;
	}
	*ret = f;
	return 0;

err_share:
	curl_share_cleanup(f->share);
err_locks:
	pthread_mutex_destroy(&f->pool_lock);
	for (i = 0; i < CURL_LOCK_DATA_LAST; i++)
		pthread_mutex_destroy(&f->share_locks[i]);
	free(f->ca_file);
err_free:
	free(f);
err_global:
	curl_global_cleanup();
	return r;
}

void fetch_free(struct fetch *f)
{
	size_t i;
	int k;

	if (!f)
		return;
	/* Handles first: the share refuses to go while one still uses it. */
	for (i = 0; i < f->pool_len; i++)
		curl_easy_cleanup(f->pool[i]);
	curl_share_cleanup(f->share);
	pthread_mutex_destroy(&f->pool_lock);
	for (k = 0; k < CURL_LOCK_DATA_LAST; k++)
		pthread_mutex_destroy(&f->share_locks[k]);
	free(f->ca_file);
	free(f);
	curl_global_cleanup();
}

static CURL *pool_get(struct fetch *f)
{
	CURL *h = NULL;

	pthread_mutex_lock(&f->pool_lock);
	if (f->pool_len)
		h = f->pool[--f->pool_len];
	pthread_mutex_unlock(&f->pool_lock);
	return h ? h : curl_easy_init();
}

/* keep == 0 drops the handle and the connections it caches. */
static void pool_put(struct fetch *f, CURL *h, int keep)
{
	if (keep) {
		/* Keeps live connections and caches, forgets every option
		 * (and so the credentials of this call). */
		curl_easy_reset(h);
		pthread_mutex_lock(&f->pool_lock);
		if (f->pool_len < FETCH_POOL_MAX) {
			f->pool[f->pool_len++] = h;
			h = NULL;
		}
		pthread_mutex_unlock(&f->pool_lock);
	}
	if (h)
		curl_easy_cleanup(h);
}

/* ---- one call ------------------------------------------------------------ */

/* "host:port" of a request, or "unix socket PATH", for messages. */
static void peer_name(const struct fetch_request *req, char *out, size_t cap)
{
	CURLU *u;
	char *host = NULL, *port = NULL;

	snprintf(out, cap, "the server");
	if (req->unix_socket) {
		snprintf(out, cap, "the unix socket %s", req->unix_socket);
		return;
	}
	u = curl_url();
	if (!u)
		return;
	if (!curl_url_set(u, CURLUPART_URL, req->url, 0) &&
	    !curl_url_get(u, CURLUPART_HOST, &host, 0) &&
	    !curl_url_get(u, CURLUPART_PORT, &port, CURLU_DEFAULT_PORT))
		snprintf(out, cap, "%s:%s", host, port);
	curl_free(host);
	curl_free(port);
	curl_url_cleanup(u);
}

/* The host name alone, for a failed resolution. */
static void host_name(const char *url, char *out, size_t cap)
{
	CURLU *u = curl_url();
	char *host = NULL;

	snprintf(out, cap, "the host");
	if (u && !curl_url_set(u, CURLUPART_URL, url, 0) &&
	    !curl_url_get(u, CURLUPART_HOST, &host, 0))
		snprintf(out, cap, "%s", host);
	curl_free(host);
	curl_url_cleanup(u);
}

/*
 * The operator's words for a transport failure of one attempt: what
 * happened, where, and what curl saw. Runs before the handle goes back to
 * the pool (its counters are read here).
 */
static void describe(struct fetch_call *c, CURL *h, CURLcode rc, const char *errbuf,
		     int64_t elapsed_ms, int short_body, char *out, size_t cap)
{
	const struct fetch_request *req = c->req;
	char peer[300], host[256];
	curl_off_t got = 0, sent = 0, len = -1, connected = 0, resolved = 0;
	long oserr = 0;
	const char *detail = errbuf && *errbuf ? errbuf : curl_easy_strerror(rc);
	double secs = (double)elapsed_ms / 1000.0;

	peer_name(req, peer, sizeof(peer));
	curl_easy_getinfo(h, CURLINFO_SIZE_DOWNLOAD_T, &got);
	curl_easy_getinfo(h, CURLINFO_SIZE_UPLOAD_T, &sent);
	curl_easy_getinfo(h, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &len);
	curl_easy_getinfo(h, CURLINFO_CONNECT_TIME_T, &connected);
	curl_easy_getinfo(h, CURLINFO_NAMELOOKUP_TIME_T, &resolved);
	curl_easy_getinfo(h, CURLINFO_OS_ERRNO, &oserr);
	if (short_body) {
		snprintf(out, cap, "%s closed the connection after %lld of %lld bytes (%s)", peer,
			 (long long)got, (long long)len, c->why ? c->why : "a short body");
		return;
	}
	switch (rc) {
	case CURLE_COULDNT_RESOLVE_HOST:
		host_name(req->url, host, sizeof(host));
		snprintf(out, cap, "cannot resolve %s: check the name and the DNS", host);
		return;
	case CURLE_COULDNT_CONNECT:
		if (oserr == ECONNREFUSED)
			snprintf(out, cap, "connection refused at %s: nothing listens there", peer);
		else if (oserr)
			snprintf(out, cap, "cannot connect to %s: %s", peer, strerror((int)oserr));
		else
			snprintf(out, cap, "cannot connect to %s (%s)", peer, detail);
		return;
	case CURLE_OPERATION_TIMEDOUT:
		/* A resolver that never answers (no DNS server reachable) ends
		 * here rather than in CURLE_COULDNT_RESOLVE_HOST. */
		if (!resolved && !connected && !got) {
			host_name(req->url, host, sizeof(host));
			snprintf(out, cap,
				 "cannot resolve %s: the DNS lookup timed out after %.0f s; "
				 "check the name and the DNS",
				 host, secs);
			return;
		}
		/* Not "cannot connect": a peer that accepts and stays silent is
		 * still in curl's connect phase (the TLS handshake). */
		snprintf(out, cap, "no answer from %s%s: timed out after %.0f s", peer,
			 connected || got ? "" : " while connecting", secs);
		return;
	case CURLE_PEER_FAILED_VERIFICATION:
		snprintf(out, cap, "TLS: certificate of %s not trusted (%s; ca_file %s)", peer,
			 detail, c->f->ca_file ? c->f->ca_file : "unset: the system store");
		return;
	case CURLE_SSL_CACERT_BADFILE:
		snprintf(out, cap, "TLS: cannot use ca_file %s (%s)",
			 c->f->ca_file ? c->f->ca_file : "(the system store)", detail);
		return;
	case CURLE_SSL_CONNECT_ERROR:
		snprintf(out, cap, "TLS: the handshake with %s failed (%s)", peer, detail);
		return;
	case CURLE_PARTIAL_FILE:
	case CURLE_RECV_ERROR:
	case CURLE_SEND_ERROR:
	case CURLE_GOT_NOTHING:
	case CURLE_HTTP2:
	case CURLE_HTTP2_STREAM:
		if (sent > 0 && !got) {
			int64_t total = req->body_reader ? req->body_size : (int64_t)req->body_len;

			if (total >= 0)
				snprintf(out, cap,
					 "%s closed the connection after %lld of %lld bytes sent "
					 "(%s)",
					 peer, (long long)sent, (long long)total, detail);
			else
				snprintf(out, cap,
					 "%s closed the connection after %lld bytes sent (%s)",
					 peer, (long long)sent, detail);
		} else if (len >= 0) {
			snprintf(out, cap, "%s closed the connection after %lld of %lld bytes (%s)",
				 peer, (long long)got, (long long)len, detail);
		} else if (rc == CURLE_GOT_NOTHING) {
			snprintf(out, cap, "%s closed the connection without an answer", peer);
		} else {
			snprintf(out, cap, "%s closed the connection after %lld bytes (%s)", peer,
				 (long long)got, detail);
		}
		return;
	default:
		snprintf(out, cap, "%s: %s", peer, detail);
		return;
	}
}

/* The engine's state of one attempt, given to the curl callbacks. */
struct xfer {
	struct fetch_call *c;
	CURL *h;
	size_t body_pos; /* buffered request body */
	int64_t sent;	 /* bytes taken from the body reader */
	int reader_used;
	int err;     /* a callback's errno */
	int headed;  /* head() ran */
	int discard; /* a transient status: body dropped */
	size_t discarded;
	int stopped;  /* body() had all it wanted */
	int retry_ok; /* the request may be sent again */
};

static int start_body(struct xfer *x)
{
	struct fetch_call *c = x->c;
	curl_off_t len = -1;
	long status = 0;

	x->headed = 1;
	curl_easy_getinfo(x->h, CURLINFO_RESPONSE_CODE, &status);
	curl_easy_getinfo(x->h, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &len);
	c->status = status;
	c->length = len;
	if (status_transient(status) && x->retry_ok && !x->reader_used) {
		x->discard = 1;
		return 0;
	}
	return c->ops && c->ops->head ? c->ops->head(c) : 0;
}

static size_t on_write(char *data, size_t size, size_t nmemb, void *ud)
{
	struct xfer *x = ud;
	struct fetch_call *c = x->c;
	size_t n = size * nmemb;
	int r;

	if (!x->headed) {
		r = start_body(x);
		if (r) {
			x->err = r;
			return 0;
		}
	}
	if (x->discard) {
		x->discarded += n;
		if (x->discarded > FETCH_DISCARD_MAX) {
			x->stopped = 1;
			return 0;
		}
		return n;
	}
	if (!c->ops || !c->ops->body)
		return n;
	r = c->ops->body(c, (const uint8_t *)data, n);
	if (r == FETCH_STOP) {
		x->stopped = 1;
		return 0;
	}
	if (r < 0) {
		x->err = r;
		return 0;
	}
	return n;
}

static size_t on_header(char *line, size_t size, size_t nmemb, void *ud)
{
	struct xfer *x = ud;
	struct fetch_call *c = x->c;
	size_t n = size * nmemb, k;
	const char *v;

	if (n >= 5 && !strncasecmp(line, "HTTP/", 5)) {
		/* A new response (after a 100 Continue): forget the last. */
		c->content_range[0] = '\0';
	} else if (n > 14 && !strncasecmp(line, "Content-Range:", 14)) {
		v = line + 14;
		k = n - 14;
		while (k && (*v == ' ' || *v == '\t')) {
			v++;
			k--;
		}
		while (k && (v[k - 1] == '\r' || v[k - 1] == '\n' || v[k - 1] == ' '))
			k--;
		if (k >= sizeof(c->content_range))
			k = 0; /* longer than any valid one: treated as absent */
		memcpy(c->content_range, v, k);
		c->content_range[k] = '\0';
	}
	return n;
}

static size_t on_read(char *buf, size_t size, size_t nitems, void *ud)
{
	struct xfer *x = ud;
	struct fetch_call *c = x->c;
	const struct fetch_request *req = c->req;
	size_t cap = size * nitems, n;
	ssize_t r;

	if (!req->body_reader) {
		n = req->body_len - x->body_pos;
		if (n > cap)
			n = cap;
		memcpy(buf, (const uint8_t *)req->body + x->body_pos, n);
		x->body_pos += n;
		return n;
	}
	if (req->body_size >= 0) {
		if (x->sent >= req->body_size)
			return 0;
		if ((uint64_t)(req->body_size - x->sent) < cap)
			cap = (size_t)(req->body_size - x->sent);
	}
	x->reader_used = 1;
	r = req->body_reader(req->body_ctx, (uint8_t *)buf, cap);
	if (r < 0 || (size_t)r > cap) {
		x->err = r < 0 ? (int)r : -EINVAL;
		c->why = "the request body's reader failed";
		return CURL_READFUNC_ABORT;
	}
	if (r == 0 && req->body_size >= 0 && x->sent < req->body_size) {
		x->err = -EIO;
		c->why = "the request body ended before its announced size";
		return CURL_READFUNC_ABORT;
	}
	x->sent += r;
	return (size_t)r;
}

static int on_seek(void *ud, curl_off_t off, int origin)
{
	struct xfer *x = ud;
	const struct fetch_request *req = x->c->req;

	if (origin != SEEK_SET || off < 0)
		return CURL_SEEKFUNC_CANTSEEK;
	if (!req->body_reader) {
		if ((uint64_t)off > req->body_len)
			return CURL_SEEKFUNC_FAIL;
		x->body_pos = (size_t)off;
		return CURL_SEEKFUNC_OK;
	}
	/* A stream can only be "rewound" before it was read at all. */
	return off == 0 && !x->reader_used ? CURL_SEEKFUNC_OK : CURL_SEEKFUNC_CANTSEEK;
}

static int add_header(struct curl_slist **list, const char *line)
{
	struct curl_slist *l = curl_slist_append(*list, line);

	if (!l)
		return -ENOMEM;
	*list = l;
	return 0;
}

/* Header lists can hold a bearer token: wipe before freeing. */
static void free_headers(struct curl_slist *list)
{
	struct curl_slist *l;

	for (l = list; l; l = l->next)
		crypto_wipe(l->data, strlen(l->data));
	curl_slist_free_all(list);
}

static int build_headers(const struct fetch_request *req, struct curl_slist **ret)
{
	struct curl_slist *list = NULL;
	const char *const *hp;
	char *line = NULL;
	int has_body = req->body_reader || req->body;
	int r = 0;

	if ((req->bearer && strpbrk(req->bearer, "\r\n")) ||
	    (req->content_type && strpbrk(req->content_type, "\r\n")))
		return -EINVAL;
	for (hp = req->headers; hp && *hp; hp++)
		if (strpbrk(*hp, "\r\n"))
			return -EINVAL;
	if (req->bearer) {
		size_t n = strlen(req->bearer) + sizeof("Authorization: Bearer ");

		line = malloc(n);
		if (!line)
			return -ENOMEM;
		snprintf(line, n, "Authorization: Bearer %s", req->bearer);
		r = add_header(&list, line);
		crypto_wipe(line, n);
		free(line);
		if (r)
			goto err;
	}
	if (req->content_type) {
		char ct[256];

		if (snprintf(ct, sizeof(ct), "Content-Type: %s", req->content_type) >=
		    (int)sizeof(ct)) {
			r = -EINVAL;
			goto err;
		}
		r = add_header(&list, ct);
		if (r)
			goto err;
	}
	if (req->s3 && req->s3->access_key) {
		/* libcurl 7.88 signs with this value as the payload hash and
		 * S3 requires the header: the hash of nothing for a bodiless
		 * request, UNSIGNED-PAYLOAD for a streamed one. */
		r = add_header(&list, has_body ? "x-amz-content-sha256: UNSIGNED-PAYLOAD"
					       : "x-amz-content-sha256: " FETCH_SHA256_EMPTY);
		if (r)
			goto err;
	}
	if (has_body) {
		/* No 100-continue round trip: not every server answers it,
		 * and curl would wait a second for it. */
		r = add_header(&list, "Expect:");
		if (r)
			goto err;
	}
	for (hp = req->headers; hp && *hp; hp++) {
		r = add_header(&list, *hp);
		if (r)
			goto err;
	}
	*ret = list;
	return 0;
err:
	free_headers(list);
	return r;
}

static int set_body(CURL *h, const struct fetch_request *req, const char *method)
{
	int has_body = req->body_reader || req->body;
	curl_off_t size = req->body_reader ? req->body_size : (curl_off_t)req->body_len;
	CURLcode rc = CURLE_OK;

	if (!strcmp(method, "GET") && !has_body)
		return curl_easy_setopt(h, CURLOPT_HTTPGET, 1L) ? -EINVAL : 0;
	if (!strcmp(method, "HEAD"))
		return curl_easy_setopt(h, CURLOPT_NOBODY, 1L) ? -EINVAL : 0;
	if (!strcmp(method, "PUT")) {
		rc |= curl_easy_setopt(h, CURLOPT_UPLOAD, 1L);
		rc |= curl_easy_setopt(h, CURLOPT_INFILESIZE_LARGE, has_body ? size : 0);
		return rc ? -EINVAL : 0;
	}
	if (strcmp(method, "POST"))
		rc |= curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
	if (!has_body) {
		if (strcmp(method, "POST"))
			return rc ? -EINVAL : 0;
		rc |= curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)0);
		rc |= curl_easy_setopt(h, CURLOPT_POSTFIELDS, "");
	} else if (!req->body_reader) {
		/* Not COPYPOSTFIELDS: the body may hold a password, and a
		 * copy inside libcurl would be freed unwiped. */
		rc |= curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, size);
		rc |= curl_easy_setopt(h, CURLOPT_POSTFIELDS, req->body);
	} else {
		/* -1: libcurl sends it chunked. */
		rc |= curl_easy_setopt(h, CURLOPT_POST, 1L);
		rc |= curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, size);
	}
	return rc ? -EINVAL : 0;
}

static int setup_handle(struct fetch_call *c, struct xfer *x, struct curl_slist *headers,
			char *errbuf, int64_t remaining)
{
	struct fetch *f = c->f;
	const struct fetch_request *req = c->req;
	const char *method = req->method ? req->method : "GET";
	CURL *h = x->h;
	CURLcode rc = CURLE_OK;
	unsigned connect_ms = f->connect_timeout_ms;
	unsigned low_speed = c->low_speed_s ? c->low_speed_s : FETCH_LOW_SPEED_S;
	int r;

	if ((int64_t)connect_ms > remaining)
		connect_ms = (unsigned)remaining;
	rc |= curl_easy_setopt(h, CURLOPT_SHARE, f->share);
	rc |= curl_easy_setopt(h, CURLOPT_URL, req->url);
	rc |= curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
	rc |= curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
	rc |= curl_easy_setopt(h, CURLOPT_ERRORBUFFER, errbuf);
	rc |= curl_easy_setopt(h, CURLOPT_USERAGENT, "azaionfs");
	rc |= curl_easy_setopt(h, CURLOPT_TCP_KEEPALIVE, 1L);
	rc |= curl_easy_setopt(h, CURLOPT_SSL_VERIFYPEER, 1L);
	rc |= curl_easy_setopt(h, CURLOPT_SSL_VERIFYHOST, 2L);
	if (f->ca_file)
		rc |= curl_easy_setopt(h, CURLOPT_CAINFO, f->ca_file);
	rc |= curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, (long)remaining);
	rc |= curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, (long)(connect_ms ? connect_ms : 1));
	rc |= curl_easy_setopt(h, CURLOPT_LOW_SPEED_LIMIT, 1L);
	rc |= curl_easy_setopt(h, CURLOPT_LOW_SPEED_TIME, (long)low_speed);
	rc |= curl_easy_setopt(h, CURLOPT_HTTPHEADER, headers);
	rc |= curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_write);
	rc |= curl_easy_setopt(h, CURLOPT_WRITEDATA, x);
	rc |= curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
	rc |= curl_easy_setopt(h, CURLOPT_HEADERDATA, x);
	rc |= curl_easy_setopt(h, CURLOPT_READFUNCTION, on_read);
	rc |= curl_easy_setopt(h, CURLOPT_READDATA, x);
	rc |= curl_easy_setopt(h, CURLOPT_SEEKFUNCTION, on_seek);
	rc |= curl_easy_setopt(h, CURLOPT_SEEKDATA, x);
	if (req->unix_socket)
		rc |= curl_easy_setopt(h, CURLOPT_UNIX_SOCKET_PATH, req->unix_socket);
	if (req->body_reader)
		/* A stream cannot be replayed if a reused connection turns
		 * out to be dead; start on a fresh one. */
		rc |= curl_easy_setopt(h, CURLOPT_FRESH_CONNECT, 1L);
	if (c->range)
		rc |= curl_easy_setopt(h, CURLOPT_RANGE, c->range);
	if (req->s3 && req->s3->access_key) {
		char sig[128];

		snprintf(sig, sizeof(sig), "aws:amz:%s:s3",
			 req->s3->region ? req->s3->region : "us-east-1");
		rc |= curl_easy_setopt(h, CURLOPT_AWS_SIGV4, sig);
		rc |= curl_easy_setopt(h, CURLOPT_USERNAME, req->s3->access_key);
		rc |= curl_easy_setopt(h, CURLOPT_PASSWORD,
				       req->s3->secret_key ? req->s3->secret_key : "");
	}
	if (rc)
		return -EINVAL;
	r = set_body(h, req, method);
	if (r)
		return r;
	if (c->hooks && c->hooks->setup)
		return c->hooks->setup(c->hooks->ctx, h);
	return 0;
}

/*
 * log_level = debug: one line per request sent (an attempt), with what
 * identifies it and no secret: the URL without userinfo and query.
 */
static void fetch_log_attempt(struct fetch_call *c, CURL *h, const char *method, const char *u,
			      const char *failure, int64_t ms)
{
	curl_off_t got = 0, sent = 0;

	if (!c->f->log)
		return;
	curl_easy_getinfo(h, CURLINFO_SIZE_DOWNLOAD_T, &got);
	curl_easy_getinfo(h, CURLINFO_SIZE_UPLOAD_T, &sent);
	if (failure && !c->status)
		fetch_logf(c->f, LOG_DEBUG,
			   "request %s %s: failed: %s; %lld bytes in, %lld out, %lld ms", method, u,
			   failure, (long long)got, (long long)sent, (long long)ms);
	else
		fetch_logf(c->f, LOG_DEBUG,
			   "request %s %s: HTTP %ld; %lld bytes in, %lld out, %lld ms", method, u,
			   c->status, (long long)got, (long long)sent, (long long)ms);
}

int fetch_run(struct fetch_call *c)
{
	struct fetch *f = c->f;
	const struct fetch_request *req = c->req;
	const char *method = req->method ? req->method : "GET";
	unsigned timeout = req->timeout_ms ? req->timeout_ms : fetch_timeout_ms(f);
	int64_t start = now_ms(), deadline = start + timeout, remaining;
	struct curl_slist *headers = NULL;
	char errbuf[CURL_ERROR_SIZE];
	char cause[FETCH_WHY_MAX];
	char u[512];
	unsigned attempt;
	int r;

	why_err = 0;
	fetch_url_for_log(req->url, u, sizeof(u));
	if (!req->url) {
		fetch_logf(f, LOG_ERR, "%s: no URL", method);
		return -EINVAL;
	}
	r = build_headers(req, &headers);
	if (r) {
		fetch_logf(f, LOG_ERR, "%s %s: cannot build the request headers", method, u);
		return r;
	}
	for (attempt = 0;; attempt++) {
		struct xfer x = {.c = c};
		int transient = 0, keep = 1, sent;
		long request_size = 0;
		int64_t t0;
		CURLcode rc;
		unsigned wait;

		remaining = deadline - now_ms();
		if (remaining <= 0) {
			char last[FETCH_WHY_MAX];

			snprintf(last, sizeof(last), "%s", attempt ? cause : "");
			snprintf(cause, sizeof(cause), "timed out after %.0f s%s%.300s%s",
				 (double)(now_ms() - start) / 1000.0, *last ? " (" : "", last,
				 *last ? ")" : "");
			fetch_logf(f, LOG_ERR, "%s %s: %s", method, u, cause);
			r = -ETIMEDOUT;
			why_set(r, cause);
			break;
		}
		cause[0] = '\0';
		x.h = pool_get(f);
		if (!x.h) {
			fetch_logf(f, LOG_ERR, "%s %s: no curl handle", method, u);
			r = -ENOMEM;
			break;
		}
		c->status = 0;
		c->length = -1;
		c->content_range[0] = '\0';
		c->why = NULL;
		x.retry_ok = !req->no_retry && !c->no_more_retries;
		if (c->ops && c->ops->begin)
			c->ops->begin(c);
		errbuf[0] = '\0';
		r = setup_handle(c, &x, headers, errbuf, remaining);
		if (r) {
			if (c->hooks && c->hooks->undo)
				c->hooks->undo(c->hooks->ctx);
			pool_put(f, x.h, 0);
			fetch_logf(f, LOG_ERR, "%s %s: cannot set up the request", method, u);
			break;
		}
		t0 = now_ms();
		rc = curl_easy_perform(x.h);
		if (c->hooks && c->hooks->undo)
			c->hooks->undo(c->hooks->ctx);
		curl_easy_getinfo(x.h, CURLINFO_REQUEST_SIZE, &request_size);
		if (rc == CURLE_WRITE_ERROR && x.stopped && !x.err)
			rc = CURLE_OK;
		if (rc == CURLE_OK && !x.headed && !x.err)
			x.err = start_body(&x);
		sent = request_size > 0 || x.reader_used;

		if (x.err) {
			r = x.err;
			snprintf(cause, sizeof(cause), "%s", c->why ? c->why : strerror(-r));
		} else if (rc != CURLE_OK) {
			keep = 0;
			r = curl_errno(rc, &transient);
			if (rc == CURLE_OPERATION_TIMEDOUT && deadline - now_ms() <= 0)
				transient = 0;
			if (transient && sent &&
			    (req->no_retry || x.reader_used || c->no_more_retries))
				transient = 0;
			describe(c, x.h, rc, errbuf, now_ms() - start, 0, cause, sizeof(cause));
		} else if (x.discard) {
			r = 0;
			transient = 1;
			snprintf(cause, sizeof(cause), "HTTP %ld", c->status);
		} else {
			r = c->ops && c->ops->end ? c->ops->end(c) : 0;
			if (r == FETCH_SHORT) {
				r = -EIO;
				transient = !c->no_more_retries;
				describe(c, x.h, rc, errbuf, now_ms() - start, 1, cause,
					 sizeof(cause));
			}
			if (r < 0)
				snprintf(cause, sizeof(cause), "%s",
					 c->why ? c->why : strerror(-r));
		}
		fetch_log_attempt(c, x.h, method, u, rc == CURLE_OK && !x.err ? NULL : cause,
				  now_ms() - t0);
		pool_put(f, x.h, keep);
		wait = 0;
		if (transient && attempt < f->max_retries) {
			wait = backoff_ms(attempt);
			if ((int64_t)wait >= deadline - now_ms())
				transient = 0;
		} else {
			transient = 0;
		}
		if (!transient) {
			/* A status is the caller's to judge and log. */
			if (r < 0 && attempt > 0) {
				size_t n = strlen(cause);

				snprintf(cause + n, sizeof(cause) - n, "; %u attempts in %.1f s",
					 attempt + 1, (double)(now_ms() - start) / 1000.0);
			}
			if (r < 0) {
				fetch_logf(f, LOG_ERR, "%s %s: %s", method, u, cause);
				why_set(r, cause);
			}
			break;
		}
		fetch_logf(f, LOG_DEBUG, "%s %s: %s, retry %u in %u ms", method, u, cause,
			   attempt + 1, wait);
		sleep_ms(wait);
	}
	free_headers(headers);
	return r;
}

/* ---- the generic exchange ---------------------------------------------- */

struct generic {
	struct fetch_buf buf;
	size_t alloc;
	size_t max;
};

static void generic_begin(struct fetch_call *c)
{
	struct generic *g = c->ctx;

	crypto_wipe(g->buf.data, g->buf.len);
	g->buf.len = 0;
}

/* Grows without realloc(), so no unwiped copy is left behind. */
static int generic_grow(struct generic *g, size_t need)
{
	size_t n = g->alloc ? g->alloc : 4096;
	uint8_t *p;

	if (need > g->max)
		return -EFBIG;
	while (n < need)
		n = n > g->max / 2 ? g->max : n * 2;
	if (n < need)
		return -EFBIG;
	p = malloc(n);
	if (!p)
		return -ENOMEM;
	if (g->buf.len)
		memcpy(p, g->buf.data, g->buf.len);
	crypto_wipe(g->buf.data, g->buf.len);
	free(g->buf.data);
	g->buf.data = p;
	g->alloc = n;
	return 0;
}

static int generic_head(struct fetch_call *c)
{
	struct generic *g = c->ctx;

	if (c->req->sink)
		return 0;
	if (c->length > 0 && (uint64_t)c->length > g->max) {
		c->why = "the answer is larger than this call accepts";
		return -EFBIG;
	}
	if (c->length > 0 && (size_t)c->length > g->alloc)
		return generic_grow(g, (size_t)c->length);
	return 0;
}

static int generic_body(struct fetch_call *c, const uint8_t *data, size_t len)
{
	struct generic *g = c->ctx;
	int r;

	if (c->req->sink) {
		c->no_more_retries = 1;
		r = c->req->sink(c->req->sink_ctx, data, len);
		if (r < 0)
			c->why = "the answer's sink stopped";
		return r < 0 ? r : 0;
	}
	if (len > g->max - g->buf.len) {
		c->why = "the answer is larger than this call accepts";
		return -EFBIG;
	}
	if (g->buf.len + len > g->alloc) {
		r = generic_grow(g, g->buf.len + len);
		if (r)
			return r;
	}
	memcpy(g->buf.data + g->buf.len, data, len);
	g->buf.len += len;
	return 0;
}

static const struct fetch_body_ops generic_ops = {
	.begin = generic_begin,
	.head = generic_head,
	.body = generic_body,
};

int fetch_exchange(struct fetch *f, const struct fetch_request *req,
		   const struct fetch_hooks *hooks, struct fetch_response *ret)
{
	struct generic g = {.max = req->max_response ? req->max_response : FETCH_MIB};
	struct fetch_call c = {.f = f,
			       .req = req,
			       .ops = &generic_ops,
			       .ctx = &g,
			       .hooks = hooks,
			       .low_speed_s = hooks ? hooks->low_speed_s : 0};
	int r;

	r = fetch_run(&c);
	if (r) {
		fetch_buf_free(&g.buf);
		return r;
	}
	ret->status = c.status;
	ret->body = g.buf;
	return 0;
}

int fetch_request(struct fetch *f, const struct fetch_request *req, struct fetch_response *ret)
{
	return fetch_exchange(f, req, NULL, ret);
}

void fetch_buf_free(struct fetch_buf *b)
{
	if (!b)
		return;
	crypto_wipe(b->data, b->len);
	free(b->data);
	b->data = NULL;
	b->len = 0;
}

void fetch_response_free(struct fetch_response *r)
{
	if (!r)
		return;
	fetch_buf_free(&r->body);
	r->status = 0;
}
