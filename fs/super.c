/*
 * super.c - the supervisor (see super.h, docs/architecture.md "Restarts").
 *
 * One thread, one poll() loop: signals arrive through a pipe, each
 * worker's reports through its own pipe. It never reads /dev/fuse, never
 * logs in, never touches a key: a worker's crash leaves it, and the
 * mount, standing.
 *
 * Workers: at most two at a time, one per journal lane: the one that
 * serves, and during an upgrade the one that replaces it. A worker that
 * ends while it serves is replaced at once, on its own lane, and the new
 * one answers what the dead one had read; one that keeps ending early is
 * restarted with a growing delay (a crash loop must not spin). An upgrade
 * (SIGHUP) starts the new worker first; the old one is told to stop only
 * once the new one serves, and it answers what it has read before it
 * exits.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define FUSE_USE_VERSION 312
#include <fuse_lowlevel.h>

#include "fs/atomic.h"
#include "fs/journal.h"
#include "fs/log.h"
#include "fs/super.h"

#define SUPER_ENV "AZAIONFS_WORKER"
#define SUPER_ENV_MOUNT "AZAIONFS_WORKER_MOUNT"
#define SUPER_ENV_CONFIG "AZAIONFS_WORKER_CONFIG"
#define SUPER_FDNAME_FUSE "azaionfs-fuse"
#define SUPER_FDNAME_JOURNAL "azaionfs-journal"
/* A worker that served at least this long before it ended is restarted at once. */
#define SUPER_HEALTHY_MS 1000
#define SUPER_BACKOFF_MAX_MS 30000

struct super_child {
	pid_t pid;
	unsigned epoch, lane;
	int report; /* the worker's pipe, -1 once closed */
	int ready, draining, upgrade;
	uint64_t started, served; /* ms, CLOCK_MONOTONIC */
	char line[64];
	size_t n;
};

struct super {
	const struct super_opts *o;
	int fuse_fd, journal_fd;
	struct fuse_session *se; /* the mount's session; NULL when it came from the fd store */
	int unmounter;		 /* auto_unmount: the watcher's pipe (super_start_watcher), or -1 */
	int report;		 /* the waiting mount command's pipe until it is told, then -1 */
	struct super_child w[JOURNAL_LANES];
	unsigned epoch; /* the last worker's number */
	int stopping;	/* a stop or the unmount: no new worker */
	int unmounted;	/* the kernel ended the mount */
	int served;	/* a worker has served: the mount command was told */
	int start_failed;
	int stop_asked;	     /* SIGTERM or SIGINT */
	int mounted;	     /* the mount was made (or taken over) */
	unsigned quick_ends; /* workers in a row that ended early */
	/* A restart waiting for its delay: lane, when, and what ended. */
	int restart_lane;
	uint64_t restart_at, ended_at;
	unsigned ended_epoch;
	char *pid_path;
};

static int super_sig[2] = {-1, -1};

static void super_stop(struct super *S, const char *why);

static uint64_t super_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void super_on_signal(int sig)
{
	int saved = errno;
	unsigned char b = (unsigned char)sig;
	ssize_t w = write(super_sig[1], &b, 1);

	(void)w;
	errno = saved;
}

/* ---- systemd's fd store (sd_notify(3) without libsystemd) ---------------------------- */

/* Sends msg with the n descriptors fds attached on sock (to the address to, when given). */
static int super_send_fds(int sock, const void *msg, size_t len, const int *fds, size_t n,
			  const struct sockaddr_un *to, socklen_t to_len)
{
	char cbuf[CMSG_SPACE(2 * sizeof(int))] = {0};
	struct iovec iov = {.iov_base = (void *)msg, .iov_len = len};
	struct msghdr mh = {.msg_name = (void *)to,
			    .msg_namelen = to ? to_len : 0,
			    .msg_iov = &iov,
			    .msg_iovlen = 1};
	struct cmsghdr *cm;

	if (n > 2)
		return -EINVAL;
	if (n) {
		mh.msg_control = cbuf;
		mh.msg_controllen = CMSG_SPACE(n * sizeof(int));
		cm = CMSG_FIRSTHDR(&mh);
		cm->cmsg_level = SOL_SOCKET;
		cm->cmsg_type = SCM_RIGHTS;
		cm->cmsg_len = CMSG_LEN(n * sizeof(int));
		memcpy(CMSG_DATA(cm), fds, n * sizeof(int));
	}
	return sendmsg(sock, &mh, MSG_NOSIGNAL) < 0 ? -errno : 0;
}

static int super_notify(const char *msg, int fd)
{
	const char *path = getenv("NOTIFY_SOCKET");
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	socklen_t len;
	int s, r;

	if (!path || !*path || strlen(path) >= sizeof(sa.sun_path))
		return 0;
	memcpy(sa.sun_path, path, strlen(path));
	if (sa.sun_path[0] == '@')
		sa.sun_path[0] = '\0';
	len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(path));
	s = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (s < 0)
		return -errno;
	r = super_send_fds(s, msg, strlen(msg), &fd, fd >= 0, &sa, len);
	close(s);
	return r;
}

int super_stored(int *ret_fuse, int *ret_journal)
{
	const char *pid = getenv("LISTEN_PID"), *fds = getenv("LISTEN_FDS");
	const char *names = getenv("LISTEN_FDNAMES");
	char *copy, *save = NULL, *name;
	long n;
	int i = 0;

	*ret_fuse = *ret_journal = -1;
	if (!pid || !fds || !names || strtol(pid, NULL, 10) != (long)getpid())
		return 0;
	n = strtol(fds, NULL, 10);
	copy = strdup(names);
	for (name = copy ? strtok_r(copy, ":", &save) : NULL; name && i < n;
	     name = strtok_r(NULL, ":", &save), i++) {
		if (strcmp(name, SUPER_FDNAME_FUSE) == 0)
			*ret_fuse = 3 + i;
		else if (strcmp(name, SUPER_FDNAME_JOURNAL) == 0)
			*ret_journal = 3 + i;
	}
	free(copy);
	/* Not for the workers, whose LISTEN_PID this is not. */
	unsetenv("LISTEN_PID");
	unsetenv("LISTEN_FDS");
	unsetenv("LISTEN_FDNAMES");
	if (*ret_fuse < 0 || *ret_journal < 0) {
		*ret_fuse = *ret_journal = -1;
		return 0;
	}
	fcntl(*ret_fuse, F_SETFD, FD_CLOEXEC);
	fcntl(*ret_journal, F_SETFD, FD_CLOEXEC);
	return 1;
}

/* ---- the state file ----------------------------------------------------------------- */

/* state_dir/azaionfs.pid: this process, the worker that serves, the mount (azaionctl restart). */
static void super_write_pid(struct super *S, pid_t worker)
{
	char *text;
	int r;

	if (!S->pid_path)
		return;
	if (asprintf(&text, "supervisor %d\nworker %d\nmount %s\n", (int)getpid(), (int)worker,
		     S->o->mountpoint) < 0) {
		log_warn("cannot write %s: %s (azaionctl restart needs it)", S->pid_path,
			 strerror(ENOMEM));
		return;
	}
	/* Mode 0600, as all of state_dir: azaionctl restart is root's. */
	r = atomic_write_file(S->pid_path, 0600, text, strlen(text), NULL, NULL);
	if (r < 0)
		log_warn("cannot write %s: %s (azaionctl restart needs it)", S->pid_path,
			 strerror(-r));
	free(text);
}

/* ---- workers ------------------------------------------------------------------------ */

static struct super_child *super_child_of(struct super *S, pid_t pid)
{
	for (unsigned i = 0; i < JOURNAL_LANES; i++)
		if (S->w[i].pid == pid)
			return &S->w[i];
	return NULL;
}

static struct super_child *super_serving(struct super *S)
{
	for (unsigned i = 0; i < JOURNAL_LANES; i++)
		if (S->w[i].pid > 0 && S->w[i].ready && !S->w[i].draining)
			return &S->w[i];
	return NULL;
}

static unsigned super_alive(const struct super *S)
{
	unsigned n = 0;

	for (unsigned i = 0; i < JOURNAL_LANES; i++)
		n += S->w[i].pid > 0;
	return n;
}

static int super_keep_fd(int fd)
{
	int flags = fcntl(fd, F_GETFD);

	return flags < 0 ? -1 : fcntl(fd, F_SETFD, flags & ~FD_CLOEXEC);
}

/* In the child, between fork and exec: only async-signal-safe calls and setenv. */
static void super_exec_worker(struct super *S, int report, unsigned lane, unsigned resume,
			      int takeover)
{
	const struct super_opts *o = S->o;
	struct sigaction sa = {.sa_handler = SIG_DFL};
	char env[192];
	sigset_t none;

	/* Its supervisor gone, a worker would hold the mount alone and unrestartable. */
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	sigemptyset(&sa.sa_mask);
	for (int sig = 1; sig < NSIG; sig++)
		sigaction(sig, &sa, NULL);
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	if (super_keep_fd(S->journal_fd) < 0 || super_keep_fd(report) < 0)
		_exit(126);
	snprintf(env, sizeof(env), "journal=%d,report=%d,lane=%u,epoch=%u,resume=%u,takeover=%d",
		 S->journal_fd, report, lane, S->epoch, resume, takeover);
	if (setenv(SUPER_ENV, env, 1) < 0 || setenv(SUPER_ENV_MOUNT, o->mountpoint, 1) < 0 ||
	    (o->config_path && setenv(SUPER_ENV_CONFIG, o->config_path, 1) < 0))
		_exit(126);
	execv(o->exe, o->argv);
	fprintf(stderr, "azaionfs: cannot start a worker: %s: %s\n", o->exe, strerror(errno));
	_exit(127);
}

static int super_spawn(struct super *S, unsigned lane, unsigned resume, int takeover)
{
	struct super_child *c = &S->w[lane];
	int p[2];
	pid_t pid;

	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, p) < 0) {
		int r = -errno;

		log_err("cannot start a worker: socketpair: %s", strerror(-r));
		return r;
	}
	S->epoch++;
	pid = fork();
	if (pid < 0) {
		int r = -errno;

		log_err("cannot start a worker: fork: %s", strerror(-r));
		close(p[0]);
		close(p[1]);
		return r;
	}
	if (pid == 0) {
		close(p[0]);
		super_exec_worker(S, p[1], lane, resume, takeover);
	}
	close(p[1]);
	memset(c, 0, sizeof(*c));
	c->pid = pid;
	c->epoch = S->epoch;
	c->lane = lane;
	c->report = p[0];
	c->upgrade = takeover;
	c->started = super_now_ms();
	log_debug("worker %u (pid %d) starts on lane %u", c->epoch, (int)pid, lane);
	return 0;
}

/* The mount command's wait ends: 0 mounted, 1 failed. */
static void super_report(struct super *S, unsigned char status)
{
	if (S->report < 0)
		return;
	if (write(S->report, &status, 1) != 1)
		log_warn("cannot report the start to the mount command: %s", strerror(errno));
	close(S->report);
	S->report = -1;
}

/* Detached for good once the mount answers: the terminal is the mount command's. */
static void super_detach(struct super *S)
{
	if (S->o->foreground)
		return;
	if (chdir("/") < 0)
		log_warn("chdir /: %s", strerror(errno));
	log_detach();
}

static void super_on_ready(struct super *S, struct super_child *c, long replayed)
{
	struct super_child *old = NULL;
	uint64_t now = super_now_ms();

	c->ready = 1;
	c->served = now;
	if (!S->served) {
		S->served = 1;
		log_info("worker %u (pid %d) serves %s", c->epoch, (int)c->pid, S->o->mountpoint);
		super_report(S, 0);
		super_detach(S);
	} else if (c->upgrade) {
		for (unsigned i = 0; i < JOURNAL_LANES; i++)
			if (&S->w[i] != c && S->w[i].pid > 0 && !S->w[i].draining)
				old = &S->w[i];
		if (old) {
			old->draining = 1;
			kill(old->pid, SIGTERM);
			log_info("upgrade: worker %u (pid %d) serves %s; worker %u (pid %d) "
				 "finishes what it has read and exits",
				 c->epoch, (int)c->pid, S->o->mountpoint, old->epoch,
				 (int)old->pid);
		} else {
			log_info("upgrade: worker %u (pid %d) serves %s", c->epoch, (int)c->pid,
				 S->o->mountpoint);
		}
		c->upgrade = 0;
	} else if (replayed < 0) {
		log_info("worker %u (pid %d) serves %s: %llu ms after worker %u ended (kernel "
			 "resend)",
			 c->epoch, (int)c->pid, S->o->mountpoint,
			 (unsigned long long)(now - S->ended_at), S->ended_epoch);
	} else {
		log_info("worker %u (pid %d) serves %s: %llu ms after worker %u ended (%ld "
			 "requests replayed from user space)",
			 c->epoch, (int)c->pid, S->o->mountpoint,
			 (unsigned long long)(now - S->ended_at), S->ended_epoch, replayed);
	}
	super_write_pid(S, c->pid);
}

/*
 * auto_unmount, done here rather than by libfuse's fusermount3, which
 * checks whether the mount still answers the moment the mounting process
 * is gone: the worker, still serving for that moment, made it leave a
 * dead mount behind. The watcher is a process of its own (forked twice:
 * not a child of the supervisor) that holds the read end of a pipe whose
 * write end the supervisor and every worker hold. End of file means all of
 * them are gone, so the mount is dead: it unmounts it (lazily: readers may
 * still hold it). A stop that unmounted says 'q' first, so that the
 * watcher never unmounts a later mount at the same path.
 */
static int super_start_watcher(struct super *S)
{
	int p[2];
	pid_t pid;

	if (pipe2(p, O_CLOEXEC) < 0)
		return -errno;
	pid = fork();
	if (pid < 0) {
		close(p[0]);
		close(p[1]);
		return -errno;
	}
	if (pid == 0) {
		char b = 0;
		ssize_t n;

		if (fork() != 0)
			_exit(0);
		setsid();
		/*
		 * Nothing of the mount's may stay open here: it would keep it
		 * alive. Nor the terminal's: a caller reading the mount command's
		 * output ($(mount ...)) would wait for this process to end.
		 */
		for (int fd = 0; fd < 1024; fd++)
			if (fd != p[0])
				close(fd);
		while ((n = read(p[0], &b, 1)) < 0 && errno == EINTR)
			;
		if (n == 0 && umount2(S->o->mountpoint, MNT_DETACH) < 0 && errno != EINVAL)
			_exit(1);
		_exit(0);
	}
	close(p[0]);
	waitpid(pid, NULL, 0);
	S->unmounter = p[1];
	return 0;
}

/* The mount: libfuse's, through a session that never serves (ops are the workers'). */
static int super_mount(struct super *S)
{
	static const struct fuse_lowlevel_ops none;
	int fd;

	S->se = fuse_session_new(S->o->args, &none, sizeof(none), NULL);
	if (!S->se)
		return -EINVAL; /* libfuse said why */
	if (fuse_session_mount(S->se, S->o->mountpoint) != 0) {
		fuse_session_destroy(S->se);
		S->se = NULL;
		return -EIO;
	}
	fd = fuse_session_fd(S->se);
	if (S->o->auto_unmount && super_start_watcher(S) < 0)
		log_warn("auto_unmount: cannot start its watcher: %s; a dead mount will stay until "
			 "umount",
			 strerror(errno));
	if (fcntl(fd, F_SETFD, FD_CLOEXEC) < 0)
		log_warn("fcntl: %s", strerror(errno));
	S->fuse_fd = fd;
	S->mounted = 1;
	super_notify("FDSTORE=1\nFDNAME=" SUPER_FDNAME_FUSE, S->fuse_fd);
	super_notify("FDSTORE=1\nFDNAME=" SUPER_FDNAME_JOURNAL, S->journal_fd);
	return 0;
}

/*
 * A worker is ready to serve (logged in, its endpoint bound): the mount
 * is made now, for the first one, so that a start that fails leaves
 * nothing mounted and a mount that shows is one that answers. The
 * descriptor goes over the worker's socket; no descriptor means "stop".
 */
static void super_hand_mount(struct super *S, struct super_child *c)
{
	if (S->fuse_fd < 0 && !S->stopping && super_mount(S) < 0) {
		S->start_failed = 1;
		super_stop(S, NULL);
	}
	int fds[2] = {S->fuse_fd, S->unmounter}, r;

	if (S->fuse_fd >= 0 && !S->stopping)
		r = super_send_fds(c->report, "m", 1, fds, S->unmounter >= 0 ? 2 : 1, NULL, 0);
	else
		r = super_send_fds(c->report, "x", 1, NULL, 0, NULL, 0);
	if (r < 0)
		log_warn("cannot hand the mount to worker %u (pid %d): %s", c->epoch, (int)c->pid,
			 strerror(-r));
}

/* A line from a worker's socket: "prepared", "ready N". */
static void super_read_report(struct super *S, struct super_child *c)
{
	ssize_t n = read(c->report, c->line + c->n, sizeof(c->line) - 1 - c->n);
	char *nl;

	if (n <= 0) {
		if (n < 0 && (errno == EINTR || errno == EAGAIN))
			return;
		close(c->report);
		c->report = -1;
		return;
	}
	c->n += (size_t)n;
	c->line[c->n] = '\0';
	while ((nl = strchr(c->line, '\n'))) {
		long replayed;

		*nl = '\0';
		if (strcmp(c->line, "prepared") == 0)
			super_hand_mount(S, c);
		else if (sscanf(c->line, "ready %ld", &replayed) == 1 && !c->ready)
			super_on_ready(S, c, replayed);
		memmove(c->line, nl + 1, c->n - (size_t)(nl + 1 - c->line) + 1);
		c->n -= (size_t)(nl + 1 - c->line);
	}
	if (c->n == sizeof(c->line) - 1)
		c->n = 0; /* not a report: dropped */
}

static void super_describe(const struct super *S, int status, char *out, size_t cap)
{
	/* The exec failed: its message went to a terminal long gone. */
	if (WIFEXITED(status) && WEXITSTATUS(status) == 127)
		snprintf(out, cap,
			 "exit status 127: %s could not be run (removed, or not a program "
			 "for this machine?)",
			 S->o->exe);
	else if (WIFSIGNALED(status))
		snprintf(out, cap, "killed by signal %d (%s)", WTERMSIG(status),
			 strsignal(WTERMSIG(status)));
	else
		snprintf(out, cap, "exit status %d", WEXITSTATUS(status));
}

static void super_unmount(struct super *S)
{
	if (S->se) {
		fuse_session_unmount(S->se);
		return;
	}
	/* The stored mount has no session of this process: the kernel's lazy unmount. */
	if (umount2(S->o->mountpoint, MNT_DETACH) < 0 && errno != EINVAL && errno != ENOENT)
		log_warn("cannot unmount %s: %s", S->o->mountpoint, strerror(errno));
}

static void super_stop(struct super *S, const char *why)
{
	if (S->stopping)
		return;
	S->stopping = 1;
	S->restart_at = 0;
	if (why)
		log_info("%s", why);
	/* Mounted, though perhaps not answered yet: a stop leaves nothing behind. */
	if (!S->unmounted && (S->served || S->fuse_fd >= 0)) {
		log_info("unmounting %s", S->o->mountpoint);
		super_unmount(S);
	}
	for (unsigned i = 0; i < JOURNAL_LANES; i++)
		if (S->w[i].pid > 0)
			kill(S->w[i].pid, SIGTERM);
}

static void super_on_exit(struct super *S, struct super_child *c, int status)
{
	char how[4200];
	unsigned lane = c->lane;
	struct super_child dead = *c;
	uint64_t now = super_now_ms(), delay = 0;

	if (c->report >= 0)
		close(c->report);
	memset(c, 0, sizeof(*c));
	c->report = -1;
	super_describe(S, status, how, sizeof(how));
	if (WIFEXITED(status) && WEXITSTATUS(status) == SUPER_EXIT_UNMOUNTED) {
		S->unmounted = 1;
		super_stop(S, NULL);
		log_info("%s was unmounted", S->o->mountpoint);
		return;
	}
	if (S->stopping)
		return;
	if (!S->served) {
		/* The first worker: its messages said why; nothing may stay mounted. */
		log_debug("worker %u (pid %d) ended before the mount answered: %s", dead.epoch,
			  (int)dead.pid, how);
		S->start_failed = 1;
		super_stop(S, NULL);
		return;
	}
	if (dead.draining) {
		log_info("worker %u (pid %d) answered what it had read and exited (%s)", dead.epoch,
			 (int)dead.pid, how);
		return;
	}
	if (dead.upgrade && !dead.ready && super_serving(S)) {
		log_err("upgrade failed: worker %u (pid %d) ended before it served (%s); worker "
			"%u keeps serving; see its messages above",
			dead.epoch, (int)dead.pid, how, super_serving(S)->epoch);
		return;
	}
	if (super_serving(S))
		return; /* another worker serves: nothing to replace */
	if (dead.ready && now - dead.served >= SUPER_HEALTHY_MS) {
		S->quick_ends = 0;
	} else {
		S->quick_ends++;
		delay = S->quick_ends <= 1 ? 0 : 1000ull << (S->quick_ends - 2);
		if (delay > SUPER_BACKOFF_MAX_MS)
			delay = SUPER_BACKOFF_MAX_MS;
	}
	S->ended_at = now;
	S->ended_epoch = dead.epoch;
	S->restart_lane = (int)lane;
	S->restart_at = now + delay;
	if (delay)
		log_err("worker %u (pid %d) ended: %s; it is the %u. in a row to end early: "
			"starting worker %u in %llu s; see its messages above",
			dead.epoch, (int)dead.pid, how, S->quick_ends, S->epoch + 1,
			(unsigned long long)(delay / 1000));
	else
		log_warn("worker %u (pid %d) ended: %s; starting worker %u", dead.epoch,
			 (int)dead.pid, how, S->epoch + 1);
}

static void super_reap(struct super *S)
{
	int status;
	pid_t pid;

	while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
		struct super_child *c = super_child_of(S, pid);

		if (c)
			super_on_exit(S, c, status);
	}
}

static void super_upgrade(struct super *S)
{
	struct super_child *cur = super_serving(S);
	unsigned lane;

	if (!cur || super_alive(S) > 1 || S->stopping) {
		log_warn("restart asked for while %s: ignored; ask again once a worker serves",
			 S->stopping ? "stopping" : "a worker starts or drains");
		return;
	}
	lane = cur->lane ^ 1u;
	log_info("restart asked for: starting worker %u beside worker %u", S->epoch + 1,
		 cur->epoch);
	super_spawn(S, lane, 0, 1);
}

static void super_on_signal_byte(struct super *S, int sig)
{
	switch (sig) {
	case SIGCHLD:
		super_reap(S);
		break;
	case SIGHUP:
		super_upgrade(S);
		break;
	case SIGTERM:
	case SIGINT:
		S->stop_asked = 1;
		super_stop(S, S->served ? NULL : "stopped before the mount answered");
		break;
	default:
		break;
	}
}

static int super_setup_signals(void)
{
	struct sigaction sa = {.sa_handler = super_on_signal, .sa_flags = SA_RESTART};
	int sigs[] = {SIGCHLD, SIGHUP, SIGTERM, SIGINT};

	if (pipe2(super_sig, O_CLOEXEC | O_NONBLOCK) < 0)
		return -errno;
	sigemptyset(&sa.sa_mask);
	for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++)
		if (sigaction(sigs[i], &sa, NULL) < 0)
			return -errno;
	signal(SIGPIPE, SIG_IGN);
	return 0;
}

static void super_loop(struct super *S)
{
	while (super_alive(S) || (!S->stopping && S->restart_at)) {
		struct pollfd p[1 + JOURNAL_LANES];
		struct super_child *who[1 + JOURNAL_LANES];
		int n = 0, timeout = -1;
		uint64_t now = super_now_ms();

		if (!S->stopping && S->restart_at) {
			if (now >= S->restart_at) {
				unsigned lane = (unsigned)S->restart_lane;

				S->restart_at = 0;
				if (super_spawn(S, lane, 1u << lane, 0) < 0)
					S->restart_at = now + 1000;
				continue;
			}
			timeout = (int)(S->restart_at - now);
		}
		p[n].fd = super_sig[0];
		p[n].events = POLLIN;
		who[n++] = NULL;
		for (unsigned i = 0; i < JOURNAL_LANES; i++)
			if (S->w[i].pid > 0 && S->w[i].report >= 0) {
				p[n].fd = S->w[i].report;
				p[n].events = POLLIN;
				who[n++] = &S->w[i];
			}
		if (poll(p, (nfds_t)n, timeout) < 0) {
			if (errno != EINTR)
				log_warn("poll: %s", strerror(errno));
			continue;
		}
		for (int i = 1; i < n; i++)
			if (p[i].revents && who[i]->pid > 0 && who[i]->report >= 0)
				super_read_report(S, who[i]);
		if (p[0].revents) {
			unsigned char b;

			while (read(super_sig[0], &b, 1) == 1)
				super_on_signal_byte(S, b);
		}
	}
}

int super_run(const struct super_opts *o)
{
	struct super S = {.o = o,
			  .fuse_fd = -1,
			  .journal_fd = -1,
			  .restart_lane = -1,
			  .unmounter = -1,
			  .report = o->report};
	struct journal *j = NULL;
	int r, rc = 1, stored = o->stored_fuse >= 0 && o->stored_journal >= 0;

	if (super_setup_signals() < 0) {
		log_err("cannot set up signals: %s", strerror(errno));
		goto out;
	}
	if (asprintf(&S.pid_path, "%s/azaionfs.pid", o->state_dir) < 0)
		S.pid_path = NULL;
	if (mkdir(o->state_dir, 0700) < 0 && errno != EEXIST)
		log_warn("state_dir %s: %s", o->state_dir, strerror(errno));
	if (stored) {
		/* A supervisor before this one kept them: the mount is still there. */
		S.fuse_fd = o->stored_fuse;
		S.journal_fd = o->stored_journal;
		r = journal_attach(S.journal_fd, &j);
		if (r < 0) {
			log_err("the stored journal cannot be read (%s): unmount %s and mount "
				"again",
				strerror(-r), o->mountpoint);
			goto out;
		}
		S.served = 0;
		S.mounted = 1;
		log_info("taking over %s from the service's fd store", o->mountpoint);
	} else {
		r = journal_create(&j, &S.journal_fd);
		if (r < 0) {
			log_err("cannot create the request journal: %s", strerror(-r));
			goto out;
		}
		/* The mount waits for the first worker (super_hand_mount). */
	}
	/* A taken-over mount may have had both lanes busy: answer both. */
	if (super_spawn(&S, 0, stored ? 3u : 0u, 0) < 0) {
		super_stop(&S, NULL);
		S.start_failed = 1;
	}
	super_loop(&S);
	/*
	 * A stop or an unmount of a mount that has not answered yet is an end,
	 * not a failure; a stop before there was a mount is a start that did
	 * not happen...
	 */
	rc = !S.start_failed && (S.served || (S.mounted && (S.stop_asked || S.unmounted))) ? 0 : 1;
	if (S.served)
		log_info("azaionfs on %s ends", o->mountpoint);
out:
	/* Whatever is at the mount point from now on is not this mount's: the watcher stands down. */
	if (S.unmounter >= 0) {
		if (write(S.unmounter, "q", 1) != 1)
			log_warn("auto_unmount: cannot stop its watcher: %s", strerror(errno));
		close(S.unmounter);
	}
	if (S.pid_path)
		unlink(S.pid_path);
	free(S.pid_path);
	journal_free(j);
	if (S.se) {
		/*
		 * A start that failed leaves nothing mounted; after an unmount
		 * (the descriptor says so) this only closes it and frees the name.
		 */
		fuse_session_unmount(S.se);
		fuse_session_destroy(S.se);
	} else if (S.fuse_fd >= 0)
		close(S.fuse_fd);
	if (S.journal_fd >= 0)
		close(S.journal_fd);
	/* ...but the mount command that waits was not given a mount. */
	super_report(&S, (unsigned char)(rc || !S.served ? 1 : 0));
	return rc;
}

/* ---- the worker's side -------------------------------------------------------------- */

int super_worker_env(struct super_worker *w)
{
	const char *env = getenv(SUPER_ENV), *mp = getenv(SUPER_ENV_MOUNT);
	const char *cf = getenv(SUPER_ENV_CONFIG);
	int takeover = 0;

	memset(w, 0, sizeof(*w));
	w->fuse_fd = w->journal_fd = w->report_fd = w->unmounter = -1;
	if (!env)
		return 0;
	if (sscanf(env, "journal=%d,report=%d,lane=%u,epoch=%u,resume=%u,takeover=%d",
		   &w->journal_fd, &w->report_fd, &w->lane, &w->epoch, &w->resume,
		   &takeover) != 6 ||
	    !mp || w->lane >= JOURNAL_LANES)
		return -EINVAL;
	w->takeover = takeover;
	w->mountpoint = strdup(mp);
	w->config_path = cf ? strdup(cf) : NULL;
	if (!w->mountpoint || (cf && !w->config_path))
		return -ENOMEM;
	/* Not inherited further (docker, the TPM's helpers). */
	unsetenv(SUPER_ENV);
	unsetenv(SUPER_ENV_MOUNT);
	unsetenv(SUPER_ENV_CONFIG);
	fcntl(w->journal_fd, F_SETFD, FD_CLOEXEC);
	fcntl(w->report_fd, F_SETFD, FD_CLOEXEC);
	return 1;
}

void super_worker_clear(struct super_worker *w)
{
	free(w->mountpoint);
	free(w->config_path);
	if (w->report_fd >= 0)
		close(w->report_fd);
	if (w->journal_fd >= 0)
		close(w->journal_fd);
	w->mountpoint = w->config_path = NULL;
	w->report_fd = w->journal_fd = -1;
}

int super_worker_prepared(struct super_worker *w)
{
	char cbuf[CMSG_SPACE(2 * sizeof(int))] = {0};
	char b = 0;
	struct iovec iov = {.iov_base = &b, .iov_len = 1};
	struct msghdr mh = {.msg_iov = &iov,
			    .msg_iovlen = 1,
			    .msg_control = cbuf,
			    .msg_controllen = sizeof(cbuf)};
	struct cmsghdr *cm;
	ssize_t n;
	int fds[2] = {-1, -1};

	if (write(w->report_fd, "prepared\n", 9) != 9)
		return -errno;
	while ((n = recvmsg(w->report_fd, &mh, MSG_CMSG_CLOEXEC)) < 0 && errno == EINTR)
		;
	if (n <= 0)
		return n < 0 ? -errno : -EPIPE;
	cm = CMSG_FIRSTHDR(&mh);
	if (cm && cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS)
		memcpy(fds, CMSG_DATA(cm),
		       cm->cmsg_len >= CMSG_LEN(2 * sizeof(int)) ? 2 * sizeof(int) : sizeof(int));
	if (b != 'm' || fds[0] < 0) {
		for (int i = 0; i < 2; i++)
			if (fds[i] >= 0)
				close(fds[i]);
		return -ECANCELED;
	}
	w->fuse_fd = fds[0];
	/* auto_unmount's watcher pipe (super_start_watcher): held for the worker's life. */
	w->unmounter = fds[1];
	return 0;
}

void super_worker_ready(struct super_worker *w, int replayed)
{
	char line[32];
	int n = snprintf(line, sizeof(line), "ready %d\n", replayed);

	if (w->report_fd >= 0 && write(w->report_fd, line, (size_t)n) != n)
		log_warn("cannot tell the supervisor that this worker serves: %s", strerror(errno));
}
