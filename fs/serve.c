/*
 * serve.c - the worker's FUSE loop (see serve.h).
 *
 * Not libfuse's multi-threaded loop: that one reads into its own buffers,
 * so a request read by a worker that dies before answering would be lost,
 * and its reader blocked for good (docs/architecture.md, "Restarts").
 * Here each thread reads straight into its journal slot.
 *
 * Threads wait in epoll on the descriptor and on a stop pipe, and read
 * without blocking (the descriptor is O_NONBLOCK, for every worker: they
 * share it): a stop never interrupts a thread that holds a request, and
 * no signal reaches a thread in the middle of a reply. Each thread has its
 * own epoll with the descriptor added EPOLLEXCLUSIVE, so a request wakes
 * one idle thread rather than all sixteen; the stop pipe wakes them all.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/fuse.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "fs/log.h"
#include "fs/serve.h"

/* Linux 6.9's notify code; the kernel headers of older distributions lack it. */
#define SERVE_NOTIFY_RESEND 7

struct serve_thread {
	struct serve *s;
	void *slot;
	pthread_t id;
	int started;
};

struct serve {
	struct serve_opts o;
	int fd;
	int stop[2]; /* readable once a stop is asked for: every poll sees it */
	int unmounted, failed;
	int replay_own; /* each thread answers its own slot's request first */
	struct serve_thread t[JOURNAL_SLOTS];
};

int serve_new(const struct serve_opts *o, struct serve **ret)
{
	struct serve *s;
	int flags;

	if (o->threads == 0 || o->threads > JOURNAL_SLOTS || o->lane >= JOURNAL_LANES)
		return -EINVAL;
	s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	s->o = *o;
	s->fd = fuse_session_fd(o->se);
	if (pipe2(s->stop, O_CLOEXEC | O_NONBLOCK) < 0) {
		free(s);
		return -errno;
	}
	flags = fcntl(s->fd, F_GETFL);
	if (flags < 0 || fcntl(s->fd, F_SETFL, flags | O_NONBLOCK) < 0) {
		int r = -errno;

		serve_free(s);
		return r;
	}
	for (unsigned i = 0; i < o->threads; i++) {
		s->t[i].s = s;
		s->t[i].slot = journal_slot(o->j, o->lane, i);
	}
	*ret = s;
	return 0;
}

void serve_free(struct serve *s)
{
	if (!s)
		return;
	close(s->stop[0]);
	close(s->stop[1]);
	free(s);
}

/* fuse_session_process_buf over a request held in memory. */
static void serve_process(struct serve *s, void *req, size_t len)
{
	struct fuse_buf buf = {.size = len, .mem = req};

	fuse_session_process_buf(s->o.se, &buf);
}

int serve_init(struct serve *s, int *ret_had_init)
{
	unsigned char copy[JOURNAL_INIT_MAX];
	const void *init;
	size_t len;

	*ret_had_init = 0;
	init = journal_init(s->o.j, &len);
	if (!init || len > sizeof(copy))
		return 0;
	/* libfuse may keep pointers into the buffer while it handles it: not into shared memory. */
	memcpy(copy, init, len);
	serve_process(s, copy, len);
	*ret_had_init = 1;
	return 0;
}

int serve_resume(struct serve *s, unsigned lanes, int resend, int *ret_replayed)
{
	struct fuse_out_header notify = {
		.len = sizeof(notify), .error = SERVE_NOTIFY_RESEND, .unique = 0};
	int n = 0;

	*ret_replayed = 0;
	if (resend) {
		if (write(s->fd, &notify, sizeof(notify)) == (ssize_t)sizeof(notify)) {
			/* The kernel sends them again, each once: the journal's copies must not run. */
			for (unsigned lane = 0; lane < JOURNAL_LANES; lane++)
				for (unsigned i = 0; i < JOURNAL_SLOTS && (lanes >> lane & 1); i++)
					journal_slot_clear(journal_slot(s->o.j, lane, i));
			*ret_replayed = -1;
			return 0;
		}
		log_info("the kernel cannot resend the requests of the worker that ended (%s: "
			 "Linux before 6.9); answering them from the journal",
			 strerror(errno));
	}
	for (unsigned lane = 0; lane < JOURNAL_LANES; lane++) {
		if (!(lanes >> lane & 1))
			continue;
		for (unsigned i = 0; i < JOURNAL_SLOTS; i++) {
			void *slot = journal_slot(s->o.j, lane, i);
			uint32_t len = journal_slot_len(slot);
			const struct fuse_in_header *h = slot;

			if (len < sizeof(*h) || len != h->len || h->opcode == FUSE_INIT ||
			    (lane == s->o.lane && i >= s->o.threads)) {
				journal_slot_clear(slot);
				continue;
			}
			n++;
			/*
			 * This worker's own lane: thread i answers slot i before it
			 * reads, in parallel, and the slot stays until then (a crash
			 * meanwhile leaves it to the next worker).
			 */
			if (lane == s->o.lane)
				continue;
			serve_process(s, slot, len);
			journal_slot_clear(slot);
		}
		if (lane == s->o.lane)
			s->replay_own = 1;
	}
	*ret_replayed = n;
	return 0;
}

static void serve_wake(struct serve *s)
{
	ssize_t w = write(s->stop[1], "x", 1);

	(void)w; /* a full pipe is readable already */
}

/*
 * The thread's own epoll over the descriptor (exclusive: one waiter woken
 * per request) and the stop pipe (every waiter). Kernels before 4.5 have
 * no EPOLLEXCLUSIVE: every thread is woken then, and all but one read
 * EAGAIN, which is correct, only slower.
 */
static int serve_epoll(struct serve *s)
{
	struct epoll_event fuse_ev = {.events = EPOLLIN | EPOLLEXCLUSIVE, .data.fd = s->fd};
	struct epoll_event stop_ev = {.events = EPOLLIN, .data.fd = s->stop[0]};
	int ep = epoll_create1(EPOLL_CLOEXEC), r;

	if (ep < 0)
		return -errno;
	if (epoll_ctl(ep, EPOLL_CTL_ADD, s->fd, &fuse_ev) < 0) {
		fuse_ev.events = EPOLLIN;
		if (errno != EINVAL || epoll_ctl(ep, EPOLL_CTL_ADD, s->fd, &fuse_ev) < 0)
			goto fail;
	}
	if (epoll_ctl(ep, EPOLL_CTL_ADD, s->stop[0], &stop_ev) < 0)
		goto fail;
	return ep;
fail:
	r = -errno;
	close(ep);
	return r;
}

static void *serve_thread(void *arg)
{
	struct serve_thread *t = arg;
	struct serve *s = t->s;
	int ep = serve_epoll(s);
	uint32_t len;

	pthread_setname_np(pthread_self(), "az-serve");

	if (ep < 0) {
		log_err("cannot wait on /dev/fuse: epoll: %s", strerror(-ep));
		__atomic_store_n(&s->failed, 1, __ATOMIC_RELAXED);
		serve_wake(s);
		return NULL;
	}
	if (s->replay_own && (len = journal_slot_len(t->slot)) > 0) {
		serve_process(s, t->slot, len);
		journal_slot_clear(t->slot);
	}
	for (;;) {
		const struct fuse_in_header *h = t->slot;
		struct epoll_event ev[2];
		int stop = 0, ready;
		size_t kept;
		ssize_t n;

		ready = epoll_wait(ep, ev, 2, -1);
		if (ready < 0) {
			if (errno == EINTR)
				continue;
			log_err("waiting on /dev/fuse: %s", strerror(errno));
			__atomic_store_n(&s->failed, 1, __ATOMIC_RELAXED);
			serve_wake(s);
			break;
		}
		for (int i = 0; i < ready; i++)
			if (ev[i].data.fd == s->stop[0])
				stop = 1;
		if (stop)
			break;
		n = read(s->fd, t->slot, JOURNAL_SLOT_SIZE);
		if (n < 0) {
			/* EAGAIN: another thread (or worker) took it; ENOENT: it was interrupted. */
			if (errno == EAGAIN || errno == EINTR || errno == ENOENT)
				continue;
			if (errno == ENODEV) {
				__atomic_store_n(&s->unmounted, 1, __ATOMIC_RELAXED);
			} else {
				log_err("reading /dev/fuse: %s", strerror(errno));
				__atomic_store_n(&s->failed, 1, __ATOMIC_RELAXED);
			}
			serve_wake(s);
			break;
		}
		if ((size_t)n < sizeof(*h))
			continue;
		if (h->opcode == FUSE_INIT && !journal_init(s->o.j, &kept) &&
		    journal_save_init(s->o.j, t->slot, (size_t)n) < 0)
			log_warn("FUSE_INIT of %zd bytes is too long to keep: a restarted worker "
				 "could not serve this mount",
				 n);
		serve_process(s, t->slot, (size_t)n);
		journal_slot_clear(t->slot);
	}
	close(ep);
	return NULL;
}

int serve_start(struct serve *s)
{
	for (unsigned i = 0; i < s->o.threads; i++) {
		int r = pthread_create(&s->t[i].id, NULL, serve_thread, &s->t[i]);

		if (r != 0) {
			log_err("cannot start a FUSE thread: %s", strerror(r));
			serve_stop(s);
			return -r;
		}
		s->t[i].started = 1;
	}
	return 0;
}

enum serve_end serve_wait(struct serve *s)
{
	struct pollfd p = {.fd = s->stop[0], .events = POLLIN};

	while (poll(&p, 1, -1) < 0 && errno == EINTR)
		;
	for (unsigned i = 0; i < s->o.threads; i++)
		if (s->t[i].started)
			pthread_join(s->t[i].id, NULL);
	if (__atomic_load_n(&s->failed, __ATOMIC_RELAXED))
		return SERVE_FAILED;
	if (__atomic_load_n(&s->unmounted, __ATOMIC_RELAXED))
		return SERVE_UNMOUNTED;
	return SERVE_STOPPED;
}

void serve_stop(struct serve *s)
{
	serve_wake(s);
}
