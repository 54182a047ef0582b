/*
 * main.c - azaionfs, the daemon: the command line as mount.fuse3 passes it
 * (azaionfs SOURCE MOUNTPOINT -o key=value,...), the configuration, and
 * the two roles this program plays (docs/architecture.md, "Restarts"):
 *
 * - the supervisor (super.c): checks the mount point, detaches, mounts,
 *   and keeps a worker serving; it holds no secret;
 * - a worker: this program started again by the supervisor. It hardens
 *   and locks its memory, logs in, builds the read path, and serves the
 *   mount's inherited /dev/fuse descriptor (serve.c) and the side
 *   endpoint.
 *
 * The command's own process only waits, holding the terminal, until the
 * supervisor reports that the mount answers, its FUSE handshake done (exit
 * 0), or that it failed (exit 1, the messages already printed, nothing
 * left mounted). The fork comes first, before any secret exists: secret
 * memory is MADV_WIPEONFORK, and no secret ever passes between processes.
 */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <malloc.h>
#include <pthread.h>
#include <pwd.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "crypto/crypto.h"
#include "fetch/fetch.h"
#include "fs/catalog.h"
#include "fs/config.h"
#include "fs/device.h"
#include "fs/journal.h"
#include "fs/keys.h"
#include "fs/log.h"
#include "fs/metrics.h"
#include "fs/msg.h"
#include "fs/ops.h"
#include "fs/rest.h"
#include "fs/serve.h"
#include "fs/session.h"
#include "fs/store.h"
#include "fs/super.h"

#define MAIN_VERSION "0.1"
#define MAIN_MAX_SETS 256
#define MAIN_MAX_THREADS 16
/*
 * The kernel reads ahead of a FUSE file by its mount's read_ahead_kb, 128
 * KiB unless raised, and asks for that much per request: a sequential
 * reader then costs 8 requests per MiB. 1 MiB is the largest request this
 * libfuse takes (max_pages 256) and cuts the daemon's CPU per byte.
 */
#define MAIN_KERNEL_READAHEAD_KB 1024
#define MAIN_FUSE_MAGIC 0x65735546 /* statfs f_type of a FUSE mount */
/* The mount's defaults (docs/trust.md 3): root owns, the group reads, nobody else. */
#define MAIN_DEFAULT_UID "0"
#define MAIN_DEFAULT_GID "azaion"
#define MAIN_DEFAULT_UMASK 0027
/*
 * Every thread's stack (FUSE workers, the endpoint's per-connection
 * threads, curl's resolver threads, the read-ahead workers). Locked, the
 * whole of a stack counts against RLIMIT_MEMLOCK (and without MCL_ONFAULT
 * is resident in full), and glibc's default is 8 MiB; the deepest frame
 * here is a 64 KiB buffer plus what OpenSSL, curl and getaddrinfo's NSS
 * modules need.
 */
#define MAIN_THREAD_STACK (512 * 1024)
/*
 * What RLIMIT_MEMLOCK must allow besides memory_cache: libraries, heap,
 * thread stacks and the endpoint's bodies, all locked by mlockall, and the
 * 64 MiB of address space each extra malloc arena reserves, which counts
 * against the limit although it is not resident (about 300 MiB in all,
 * measured, at the default memory_cache).
 */
#define MAIN_MEMLOCK_HEADROOM (512ULL << 20)
#define MAIN_CAP_IPC_LOCK 14

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define MAIN_SANITIZER 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer) || \
	__has_feature(memory_sanitizer)
#define MAIN_SANITIZER 1
#endif
#endif
#ifndef MAIN_SANITIZER
#define MAIN_SANITIZER 0
#endif

#define MAIN_USAGE                                                                                 \
	"usage: azaionfs SOURCE MOUNTPOINT [-o key=value,...] [-f] [-d]\n"                         \
	"  -o config=PATH   configuration file (default " CONFIG_DEFAULT_PATH " when it exists)\n" \
	"  -o KEY=VALUE     any key of the configuration file; wins over the file; a comma\n"      \
	"                   inside a value is written \\, (tpm_tcti=swtpm:host=H\\,port=P)\n"      \
	"  -o allow_other,default_permissions  both or neither: who else may open a file\n"        \
	"  -o uid=USER,gid=GROUP,umask=M       files' owner, group and mode (root, azaion, "       \
	"0027)\n"                                                                                  \
	"  -o auto_unmount\n"                                                                      \
	"  -o nonempty      mount on a folder that is not empty or already a mount point\n"        \
	"  -f               stay in the foreground\n"                                              \
	"  -d               debug output (implies -f)\n"

enum {
	KEY_FOREGROUND,
	KEY_DEBUG,
	KEY_HELP,
	KEY_VERSION,
	KEY_KEEP,
	KEY_ALLOW_OTHER,
	KEY_DEFAULT_PERMISSIONS,
	KEY_NONEMPTY,
	KEY_AUTO_UNMOUNT,
};

struct main_opts {
	char *source;
	char *mountpoint;
	char *config_path;
	int foreground;
	int debug;
	int help;
	int version;
	int bad;
	char *sets[MAIN_MAX_SETS]; /* "key=value" of docs/config.md, in order */
	unsigned n_sets;
	char *uid, *gid; /* a name or a number */
	unsigned umask;
	int has_umask;
	int allow_other, default_permissions;
	int nonempty; /* -o nonempty: the mount point may hold files or a mount */
	int auto_unmount;
};

static const struct fuse_opt main_opt_spec[] = {
	{"config=%s", offsetof(struct main_opts, config_path), 0},
	{"uid=%s", offsetof(struct main_opts, uid), 0},
	{"gid=%s", offsetof(struct main_opts, gid), 0},
	{"umask=%o", offsetof(struct main_opts, umask), 0},
	{"umask=", offsetof(struct main_opts, has_umask), 1},
	FUSE_OPT_KEY("-f", KEY_FOREGROUND),
	FUSE_OPT_KEY("-d", KEY_DEBUG),
	FUSE_OPT_KEY("debug", KEY_DEBUG),
	FUSE_OPT_KEY("-h", KEY_HELP),
	FUSE_OPT_KEY("--help", KEY_HELP),
	FUSE_OPT_KEY("-V", KEY_VERSION),
	FUSE_OPT_KEY("--version", KEY_VERSION),
	/* What fstab and mount(8) add that means nothing to a FUSE daemon. */
	FUSE_OPT_KEY("_netdev", FUSE_OPT_KEY_DISCARD),
	FUSE_OPT_KEY("auto", FUSE_OPT_KEY_DISCARD),
	FUSE_OPT_KEY("noauto", FUSE_OPT_KEY_DISCARD),
	FUSE_OPT_KEY("nofail", FUSE_OPT_KEY_DISCARD),
	FUSE_OPT_KEY("user", FUSE_OPT_KEY_DISCARD),
	FUSE_OPT_KEY("nouser", FUSE_OPT_KEY_DISCARD),
	FUSE_OPT_KEY("users", FUSE_OPT_KEY_DISCARD),
	FUSE_OPT_KEY("defaults", FUSE_OPT_KEY_DISCARD),
	FUSE_OPT_KEY("rw", FUSE_OPT_KEY_DISCARD),
	FUSE_OPT_KEY("ro", FUSE_OPT_KEY_DISCARD),
	FUSE_OPT_KEY("async", FUSE_OPT_KEY_DISCARD),
	FUSE_OPT_KEY("comment=", FUSE_OPT_KEY_DISCARD),
	/* Passed through to libfuse. */
	FUSE_OPT_KEY("allow_other", KEY_ALLOW_OTHER),
	FUSE_OPT_KEY("allow_root", KEY_KEEP),
	FUSE_OPT_KEY("default_permissions", KEY_DEFAULT_PERMISSIONS),
	/* The supervisor's own (super_start_watcher), not libfuse's. */
	FUSE_OPT_KEY("auto_unmount", KEY_AUTO_UNMOUNT),
	/* libfuse 3 no longer knows it; the check is main_check_mount_point's. */
	FUSE_OPT_KEY("nonempty", KEY_NONEMPTY),
	FUSE_OPT_KEY("max_read=", KEY_KEEP),
	/* nosuid,nodev are always added (main_fuse_args): dev and suid mean nothing. */
	FUSE_OPT_KEY("dev", FUSE_OPT_KEY_DISCARD),
	FUSE_OPT_KEY("nodev", FUSE_OPT_KEY_DISCARD),
	FUSE_OPT_KEY("suid", FUSE_OPT_KEY_DISCARD),
	FUSE_OPT_KEY("nosuid", FUSE_OPT_KEY_DISCARD),
	FUSE_OPT_KEY("exec", KEY_KEEP),
	FUSE_OPT_KEY("noexec", KEY_KEEP),
	FUSE_OPT_KEY("atime", KEY_KEEP),
	FUSE_OPT_KEY("noatime", KEY_KEEP),
	FUSE_OPT_KEY("relatime", KEY_KEEP),
	FUSE_OPT_KEY("nodiratime", KEY_KEEP),
	FUSE_OPT_END};

/* Set in a worker: the supervisor's view of the mount (super_worker_env). */
static struct super_worker *main_worker;

static int main_opt_proc(void *data, const char *arg, int key, struct fuse_args *outargs)
{
	struct main_opts *o = data;
	const char *eq;
	char name[64];

	switch (key) {
	case KEY_FOREGROUND:
		o->foreground = 1;
		return 0;
	case KEY_DEBUG:
		o->debug = 1;
		o->foreground = 1;
		return 0;
	case KEY_HELP:
		o->help = 1;
		return 0;
	case KEY_VERSION:
		o->version = 1;
		return 0;
	case KEY_ALLOW_OTHER:
		o->allow_other = 1;
		return 1;
	case KEY_DEFAULT_PERMISSIONS:
		o->default_permissions = 1;
		return 1;
	case KEY_NONEMPTY:
		o->nonempty = 1;
		return 0;
	case KEY_AUTO_UNMOUNT:
		o->auto_unmount = 1;
		return 0;
	case KEY_KEEP:
		return 1;
	case FUSE_OPT_KEY_NONOPT:
		if (!o->source) {
			o->source = strdup(arg);
			return o->source ? 0 : -1;
		}
		if (!o->mountpoint && main_worker) {
			/*
			 * Not realpath(): the mount point is this mount's root, and a
			 * worker that is not serving yet would wait on itself.
			 */
			o->mountpoint = strdup(main_worker->mountpoint);
			return o->mountpoint ? 0 : -1;
		}
		if (!o->mountpoint) {
			/* Absolute: the daemon leaves its working directory when it detaches. */
			o->mountpoint = realpath(arg, NULL);
			if (!o->mountpoint) {
				fprintf(stderr, "azaionfs: bad mount point '%s': %s\n", arg,
					strerror(errno));
				o->bad = 1;
			}
			return 0;
		}
		fprintf(stderr, "azaionfs: unexpected argument '%s'\n", arg);
		o->bad = 1;
		return 0;
	case FUSE_OPT_KEY_OPT:
		if (strncmp(arg, "x-", 2) == 0)
			return 0; /* fstab's x-systemd.* and the like */
		eq = strchr(arg, '=');
		snprintf(name, sizeof(name), "%.*s", eq ? (int)(eq - arg) : (int)strlen(arg), arg);
		if (eq && config_is_key(name)) {
			if (o->n_sets == MAIN_MAX_SETS) {
				fprintf(stderr, "azaionfs: too many -o settings\n");
				o->bad = 1;
				return 0;
			}
			o->sets[o->n_sets] = strdup(arg);
			return o->sets[o->n_sets++] ? 0 : -1;
		}
		if (arg[0] == '-')
			fprintf(stderr, "azaionfs: unknown option '%s' (see azaionfs --help)\n",
				arg);
		else if (config_is_key(name))
			fprintf(stderr, "azaionfs: -o %s: needs a value (%s=...)\n", name, name);
		else if (config_nearest_key(name))
			fprintf(stderr, "azaionfs: -o: unknown key '%s'; did you mean %s?\n", name,
				config_nearest_key(name));
		else
			fprintf(stderr,
				"azaionfs: -o: unknown key '%s' (see azaionfs --help and the keys "
				"in azaionfs(8)%s)\n",
				name, o->n_sets ? "; a comma inside a value is written \\," : "");
		o->bad = 1;
		return 0;
	}
	return 1;
}

static void main_opts_clear(struct main_opts *o)
{
	free(o->source);
	free(o->mountpoint);
	free(o->config_path);
	free(o->uid);
	free(o->gid);
	for (unsigned i = 0; i < o->n_sets; i++)
		free(o->sets[i]);
}

/* The file, then every -o key=value; one message naming the key on error. */
static int main_config(struct main_opts *o, struct config **ret)
{
	const char *path = o->config_path;
	struct config *c = NULL;
	char *msg = NULL;
	int r;

	r = config_new(&c);
	if (r < 0) {
		fprintf(stderr, "azaionfs: %s\n", strerror(-r));
		return r;
	}
	if (!path && access(CONFIG_DEFAULT_PATH, F_OK) == 0)
		path = CONFIG_DEFAULT_PATH;
	if (path) {
		r = config_load_file(c, path, &msg);
		if (r < 0)
			goto err;
	}
	for (unsigned i = 0; i < o->n_sets; i++) {
		char *eq = strchr(o->sets[i], '=');

		*eq = '\0';
		r = config_set(c, o->sets[i], eq + 1, "-o", &msg);
		*eq = '=';
		if (r < 0)
			goto err;
	}
	r = config_check(c, &msg);
	if (r < 0)
		goto err;
	*ret = c;
	return 0;
err:
	fprintf(stderr, "azaionfs: %s\n", msg ? msg : strerror(-r));
	free(msg);
	config_free(c);
	return r;
}

/* A decimal id, or -1. */
static long main_numeric_id(const char *s)
{
	char *end;
	long v;

	if (!isdigit((unsigned char)*s))
		return -1;
	errno = 0;
	v = strtol(s, &end, 10);
	return errno || *end || v < 0 || v > 0x7fffffff ? -1 : v;
}

/*
 * The files' owner and group, by name or number (docs/trust.md 3). A
 * name must exist: a typo would otherwise leave the models to a group
 * that someone may create later. A number is taken as it is, for the
 * ids of a container's users that the host does not list.
 */
static int main_mount_owner(const struct main_opts *o, struct ops_opts *oo)
{
	const char *user = o->uid ? o->uid : MAIN_DEFAULT_UID;
	const char *group = o->gid ? o->gid : MAIN_DEFAULT_GID;
	struct passwd *pw;
	struct group *gr;
	long uid, gid;

	uid = main_numeric_id(user);
	if (uid < 0) {
		errno = 0;
		pw = getpwnam(user);
		if (!pw) {
			fprintf(stderr,
				"azaionfs: -o uid=%s: no such user%s%s; create it or give a "
				"number\n",
				user, errno ? ": " : "", errno ? strerror(errno) : "");
			return -ENOENT;
		}
		uid = (long)pw->pw_uid;
	}
	gid = main_numeric_id(group);
	if (gid < 0) {
		errno = 0;
		gr = getgrnam(group);
		if (!gr) {
			fprintf(stderr,
				"azaionfs: -o gid=%s: no such group%s%s; create it (groupadd "
				"--system %s) or give another one with -o gid=GROUP\n",
				group, errno ? ": " : "", errno ? strerror(errno) : "", group);
			return -ENOENT;
		}
		gid = (long)gr->gr_gid;
	}
	oo->uid = (uid_t)uid;
	oo->gid = (gid_t)gid;
	oo->umask = (o->has_umask ? o->umask : MAIN_DEFAULT_UMASK) & 0777;
	return 0;
}

/*
 * allow_other alone lets every local user and every container open every
 * model: the kernel checks nothing and this daemon does not either.
 * default_permissions makes the kernel check owner, group and mode.
 */
static int main_check_mount_opts(const struct main_opts *o)
{
	if (o->allow_other && !o->default_permissions) {
		fprintf(stderr, "azaionfs: allow_other without default_permissions would let every "
				"local user and container read every model; add "
				"default_permissions (files are then readable by uid and gid only, "
				"see -o uid=, gid=, umask=)\n");
		return -EPERM;
	}
	return 0;
}

/*
 * 1 when path is a mount point: listed in this namespace's mountinfo (a
 * bind mount of the same file system too), or on another device than its
 * parent. mountinfo writes a space, tab, newline and backslash as \ooo.
 */
static int main_is_mounted(const char *path)
{
	char line[4096], *dir, *end, parent[4096];
	struct stat a, b;
	FILE *f = fopen("/proc/self/mountinfo", "re");
	int found = 0;

	while (f && !found && fgets(line, sizeof(line), f)) {
		/* id parent major:minor root MOUNTPOINT ... */
		dir = line;
		for (int i = 0; i < 4 && dir; i++) {
			dir = strchr(dir, ' ');
			if (dir)
				dir++;
		}
		if (!dir || !(end = strchr(dir, ' ')))
			continue;
		*end = '\0';
		for (char *r = dir, *w = dir;; r++, w++) {
			if (r[0] == '\\' && r[1] >= '0' && r[1] <= '3' && r[2] >= '0' &&
			    r[2] <= '7' && r[3] >= '0' && r[3] <= '7') {
				*w = (char)((r[1] - '0') * 64 + (r[2] - '0') * 8 + (r[3] - '0'));
				r += 3;
			} else {
				*w = *r;
			}
			if (!*r)
				break;
		}
		found = strcmp(dir, path) == 0;
	}
	if (f)
		fclose(f);
	snprintf(parent, sizeof(parent), "%s/..", path);
	if (!found && stat(path, &a) == 0 && stat(parent, &b) == 0)
		found = a.st_dev != b.st_dev;
	return found;
}

/*
 * The mount point must be an empty directory that nothing is mounted on:
 * a mount over files hides them, and a second azaionfs over the first
 * would serve the same folder twice, the first one unreachable. -o
 * nonempty says that this is meant.
 */
static int main_check_mount_point(const struct main_opts *o)
{
	const char *p = o->mountpoint;
	struct dirent *de;
	struct stat sb;
	int entries = 0, e;
	DIR *dir;

	if (stat(p, &sb) < 0) {
		e = -errno;
		fprintf(stderr, "azaionfs: mount point %s: %s\n", p, strerror(-e));
		return e;
	}
	if (!S_ISDIR(sb.st_mode)) {
		fprintf(stderr,
			"azaionfs: mount point %s is not a directory; give an empty "
			"directory (mkdir it)\n",
			p);
		return -ENOTDIR;
	}
	if (o->nonempty)
		return 0;
	if (main_is_mounted(p)) {
		fprintf(stderr,
			"azaionfs: mount point %s is already mounted (see /proc/mounts); unmount "
			"it first (umount %s), or add -o nonempty to mount over it\n",
			p, p);
		return -EBUSY;
	}
	dir = opendir(p);
	if (!dir) {
		e = -errno;
		fprintf(stderr, "azaionfs: mount point %s: %s\n", p, strerror(-e));
		return e;
	}
	while (!entries && (de = readdir(dir)))
		entries = strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0;
	closedir(dir);
	if (entries) {
		fprintf(stderr,
			"azaionfs: mount point %s is not empty: the mount would hide its files; "
			"give an empty directory, or add -o nonempty to mount over them\n",
			p);
		return -ENOTEMPTY;
	}
	return 0;
}

/* 1 when this process may lock memory past RLIMIT_MEMLOCK. */
static int main_has_ipc_lock(void)
{
	char line[256];
	unsigned long long caps = 0;
	FILE *f = fopen("/proc/self/status", "re");
	int found = 0;

	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "CapEff: %llx", &caps) == 1) {
			found = 1;
			break;
		}
	fclose(f);
	return found && (caps >> MAIN_CAP_IPC_LOCK) & 1;
}

/*
 * Locks all memory, now and future (docs/trust.md 5): the password and the
 * token in libcurl's buffers and the upload bodies in libmicrohttpd's never
 * reach swap. After the fork, which does not inherit it. -1 means stop.
 */
static int main_lock_memory(const struct config *c)
{
	int all = c->memory_lock == CONFIG_MEMLOCK_ALL;
	unsigned long long need = c->memory_cache + MAIN_MEMLOCK_HEADROOM;
	struct rlimit rl;

	if (MAIN_SANITIZER) {
		/* Its shadow is terabytes of reserved address space: mlockall would fail or fill RAM. */
		log_info(
			"memory_lock: not locking all memory in a sanitizer build; secrets stay in "
			"locked buffers");
		return 0;
	}
	if (getrlimit(RLIMIT_MEMLOCK, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY &&
	    rl.rlim_cur < need && !main_has_ipc_lock()) {
		/*
		 * With MCL_FUTURE every later mapping past the limit would fail:
		 * malloc, thread stacks. Better refuse now than fail at random.
		 */
		if (all) {
			log_err("memory_lock: RLIMIT_MEMLOCK is %llu KiB, and locking all memory "
				"needs about %llu MiB (memory_cache + %llu MiB); raise it "
				"(LimitMEMLOCK=infinity in the unit, ulimit -l unlimited, or "
				"CAP_IPC_LOCK), or set memory_lock = best-effort",
				(unsigned long long)rl.rlim_cur >> 10, need >> 20,
				MAIN_MEMLOCK_HEADROOM >> 20);
			return -1;
		}
		log_warn("memory_lock: RLIMIT_MEMLOCK is %llu KiB, too low to lock all memory; "
			 "only secrets and plaintext are locked (best-effort); raise "
			 "LimitMEMLOCK or ulimit -l to lock the rest",
			 (unsigned long long)rl.rlim_cur >> 10);
		return 0;
	}
	/*
	 * MCL_ONFAULT: a page is locked when first touched, and a page that
	 * holds a byte has been touched, so nothing written reaches swap; the
	 * unread parts of libraries and stacks stay out of RAM (without it
	 * RSS grows by what every library maps). Kernels before 4.4 refuse it.
	 */
	if (mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT) < 0 &&
	    (errno != EINVAL || mlockall(MCL_CURRENT | MCL_FUTURE) < 0)) {
		if (all) {
			log_err("memory_lock: cannot lock all memory: %s; raise "
				"LimitMEMLOCK in the unit or ulimit -l, or set "
				"memory_lock = best-effort",
				strerror(errno));
			return -1;
		}
		log_warn("memory_lock: cannot lock all memory: %s; only secrets and plaintext "
			 "are locked (best-effort)",
			 strerror(errno));
		return 0;
	}
	log_debug("memory_lock: all memory locked");
	return 0;
}

/* No core dumps, no ptrace by other users: plaintext and keys live in this process. */
static void main_harden(void)
{
	struct rlimit rl = {0, 0};
	pthread_attr_t attr;

	if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) < 0)
		log_warn("prctl(PR_SET_DUMPABLE): %s", strerror(errno));
	if (setrlimit(RLIMIT_CORE, &rl) < 0)
		log_warn("setrlimit(RLIMIT_CORE): %s", strerror(errno));
	/*
	 * Fixed thresholds: freed ciphertext buffers go back to the system
	 * instead of growing the heap, so RSS stays near memory_cache.
	 */
	mallopt(M_MMAP_THRESHOLD, 128 * 1024);
	mallopt(M_TRIM_THRESHOLD, 256 * 1024);
	mallopt(M_ARENA_MAX, 4);
	/*
	 * Before any thread: a locked stack counts in full (MAIN_THREAD_STACK).
	 * A sanitizer build locks nothing and its frames are larger: it keeps
	 * glibc's default.
	 */
	if (!MAIN_SANITIZER && pthread_attr_init(&attr) == 0) {
		if (pthread_attr_setstacksize(&attr, MAIN_THREAD_STACK) != 0 ||
		    pthread_setattr_default_np(&attr) != 0)
			log_warn("cannot set the default thread stack size");
		pthread_attr_destroy(&attr);
	}
}

static pid_t main_child;

/* The child is in its own session: Ctrl-C and a stop reach the parent only. */
static void main_forward_signal(int sig)
{
	if (main_child > 0)
		kill(main_child, sig);
}

/*
 * Forks unless foreground: the parent waits for the child's one-byte
 * status and exits with it, passing SIGINT and SIGTERM on (the child then
 * ends a TPM wait and reports); the child returns the pipe to report on.
 */
static int main_fork(int foreground, int *ret_fd)
{
	unsigned char status = 1;
	int p[2];
	pid_t pid;

	*ret_fd = -1;
	if (foreground)
		return 0;
	if (pipe2(p, O_CLOEXEC) < 0) {
		fprintf(stderr, "azaionfs: pipe: %s\n", strerror(errno));
		return -errno;
	}
	pid = fork();
	if (pid < 0) {
		fprintf(stderr, "azaionfs: fork: %s\n", strerror(errno));
		return -errno;
	}
	if (pid > 0) {
		struct sigaction sa = {.sa_handler = main_forward_signal};
		ssize_t n;

		main_child = pid;
		sigemptyset(&sa.sa_mask);
		sigaction(SIGINT, &sa, NULL);
		sigaction(SIGTERM, &sa, NULL);
		close(p[1]);
		while ((n = read(p[0], &status, 1)) < 0 && errno == EINTR)
			;
		if (n != 1)
			status = 1;
		_exit(status);
	}
	close(p[0]);
	setsid();
	*ret_fd = p[1];
	return 0;
}

/* The FUSE init's thread and the main thread may both report. */
static pthread_mutex_t main_report_lock = PTHREAD_MUTEX_INITIALIZER;

struct main_state {
	struct catalog *cat;
	struct store *st;
	struct rest *rest;
	struct serve *serve;
	const char *mountpoint;
	const char *source;
	int foreground;
	int reported;	/* the supervisor knows this worker serves */
	int resumed;	/* not the mount's first worker: the INIT was the kept one */
	int failed;	/* the start failed after the mount: exit 1 */
	int stop_asked; /* SIGTERM or SIGINT: an end, not a failure */
	char *ready_mp; /* main_ready's copy of the mount point */
	pthread_t ready;
	int has_ready;
};

/* One per worker process: the signal handler stops its loop. */
static struct main_state main_ms;

/*
 * Tells the supervisor that this worker serves (replayed: what it
 * answered for the worker before it, see super_worker_ready); then
 * detaches from the terminal for good, which is the mount command's.
 */
static void main_report(struct main_state *ms, int replayed)
{
	pthread_mutex_lock(&main_report_lock);
	if (!ms->reported) {
		ms->reported = 1;
		super_worker_ready(main_worker, replayed);
		if (!ms->foreground)
			log_detach();
	}
	pthread_mutex_unlock(&main_report_lock);
}

/*
 * Ends a start that failed after the mount: the loop ends, and the worker
 * exits 1 unreported, so that the supervisor unmounts before the mount
 * command returns.
 */
static void main_fail_started(struct main_state *ms)
{
	__atomic_store_n(&ms->failed, 1, __ATOMIC_RELAXED);
	if (ms->serve)
		serve_stop(ms->serve);
}

/* SIGTERM, SIGINT (the supervisor's stop or upgrade): answer what was read, then exit. */
static void main_on_stop(int sig)
{
	int saved = errno;

	(void)sig;
	__atomic_store_n(&main_ms.stop_asked, 1, __ATOMIC_RELAXED);
	if (main_ms.serve)
		serve_stop(main_ms.serve);
	errno = saved;
}

/*
 * Raises the mount's kernel read-ahead. The kernel lowers it to what
 * FUSE_INIT's answer allows, so it runs once that answer is out: its
 * stat() of the mount root waits for it. As root only (sysfs); without,
 * reads stay correct in smaller requests.
 */
static void main_readahead(const char *mountpoint)
{
	char path[96], value[16];
	struct statfs fs;
	struct stat sb;
	int fd = -1, n;

	/* Only this FUSE mount's: never the read-ahead of the disk beneath it. */
	if (statfs(mountpoint, &fs) < 0 || fs.f_type != MAIN_FUSE_MAGIC ||
	    stat(mountpoint, &sb) < 0)
		goto out;
	snprintf(path, sizeof(path), "/sys/class/bdi/%u:%u/read_ahead_kb", major(sb.st_dev),
		 minor(sb.st_dev));
	n = snprintf(value, sizeof(value), "%u\n", MAIN_KERNEL_READAHEAD_KB);
	fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0 || write(fd, value, (size_t)n) != n)
		log_info("kernel read-ahead stays at its default: cannot write %s: %s", path,
			 strerror(errno));
out:
	if (fd >= 0)
		close(fd);
}

/*
 * The mount answers only once the kernel has libfuse's answer to
 * FUSE_INIT, and a request on it waits until then: a stat of the root that
 * succeeds on this FUSE mount means that the handshake went through, and
 * only then does the mount command exit 0. An option the kernel or
 * libfuse refuses at the handshake makes the stat fail (ECONNREFUSED).
 */
static void *main_ready(void *arg)
{
	struct main_state *ms = arg;
	struct statfs fs;
	struct stat sb;
	int err = 0;

	if (statfs(ms->ready_mp, &fs) < 0)
		err = errno;
	else if (fs.f_type != MAIN_FUSE_MAGIC)
		err = ENOENT; /* what is there now is not this mount */
	else if (stat(ms->ready_mp, &sb) < 0)
		err = errno;
	if (!err) {
		log_info("mounted %s at %s", ms->source, ms->ready_mp);
		/* Before the report: once the mount command returns, nothing of ours keeps the mount busy. */
		main_readahead(ms->ready_mp);
		main_report(ms, -2);
		return NULL;
	}
	/*
	 * Only a refused answer to FUSE_INIT is a failed start. Anything else
	 * means that the mount went away before it answered (an unmount, a
	 * stop asked for): the FUSE loop ends by itself, as after any unmount.
	 */
	if (err == ECONNREFUSED && !__atomic_load_n(&ms->stop_asked, __ATOMIC_RELAXED)) {
		log_err("the FUSE handshake of %s failed (%s): see the message above; a mount "
			"option that libfuse or the kernel refuses (max_read?) must go; remove it "
			"and mount again",
			ms->ready_mp, strerror(err));
		main_fail_started(ms);
		return NULL;
	}
	log_info("%s was unmounted before it answered", ms->ready_mp);
	return NULL;
}

static void main_on_init(void *arg)
{
	struct main_state *ms = arg;

	if (store_start(ms->st) < 0)
		log_warn("read-ahead is off: no worker thread could start");
	if (catalog_start(ms->cat) < 0)
		log_warn("the catalog will not be refreshed: no thread could start");
	/* The endpoint is the only way to log in and unlock: without it, no mount. */
	if (rest_start(ms->rest) < 0) {
		log_err("the side endpoint on %s did not start; the mount stops", ms->mountpoint);
		main_fail_started(ms);
		return;
	}
	/* A later worker's INIT is the kept one: the handshake was done long ago. */
	if (ms->resumed)
		return;
	/* The main thread joins it: it holds ms. */
	ms->ready_mp = strdup(ms->mountpoint);
	if (!ms->ready_mp || pthread_create(&ms->ready, NULL, main_ready, ms) != 0) {
		log_err("cannot start a thread: %s", strerror(errno));
		main_fail_started(ms);
		return;
	}
	ms->has_ready = 1;
}

/*
 * libfuse's own messages (a lost connection, a bad option) would go to
 * stderr, which is /dev/null once detached: they take the daemon's path.
 * Its levels are syslog's.
 */
static void main_fuse_log(enum fuse_log_level level, const char *fmt, va_list ap)
	__attribute__((format(printf, 2, 0)));
static void main_fuse_log(enum fuse_log_level level, const char *fmt, va_list ap)
{
	log_vmsg((int)level, fmt, ap);
}

static int main_fuse_args(const struct main_opts *o, struct fuse_args *args)
{
	/*
	 * ro, nosuid and nodev always: fusermount3 adds the last two for users
	 * but a root start (mount -t fuse.azaionfs, the unit) would not. The
	 * name shows in mount(8) and /proc/mounts.
	 */
	if (fuse_opt_add_arg(args, "-oro,nosuid,nodev,fsname=azaion,subtype=azaionfs") < 0)
		return -ENOMEM;
	if (o->debug && fuse_opt_add_arg(args, "-odebug") < 0)
		return -ENOMEM;
	return 0;
}

/*
 * Whether the start may go on after the first login (docs/architecture.md,
 * start-up). "No credentials" (none configured, none sealed in the TPM: a
 * device before its first login) mounts: the side endpoint is how they
 * arrive. Configured credentials that the API refuses stop the start; so
 * does an API out of reach with no saved catalog, since the mount would
 * be an empty folder. With a saved catalog it is an offline start. The
 * TPM's sealed credentials refused mount too: azaionctl login, through
 * the endpoint, replaces them. why: the login's words, logged here once.
 */
static int main_check_login(const struct config *c, struct catalog *cat, int had_creds, int login,
			    const char *why)
{
	struct catalog_list *l;
	size_t n;

	if (login == 0 || login == -ENOKEY)
		return 0;
	if (login == -EACCES) {
		if (!had_creds) {
			log_warn("the API refused the credentials sealed in the TPM: log in again "
				 "(azaionctl login) to read the models");
			return 0;
		}
		log_err("the API at %s refused the credentials in %s (HTTP 401/403): correct "
			"them there and mount again",
			c->api_url, c->credentials ? c->credentials : "the configuration");
		return -EACCES;
	}
	l = catalog_get(cat);
	n = l->n;
	catalog_put(cat, l);
	if (n == 0) {
		log_err("cannot reach the API at %s (%s) and state_dir %s holds no saved catalog: "
			"the mount would be an empty folder; check api_url, the network and "
			"ca_file, and mount again",
			c->api_url, why, c->state_dir);
		return login;
	}
	log_warn("offline start: the API at %s is out of reach (%s); serving the saved catalog "
		 "(%zu files), with the keys kept in state_dir, until it is back",
		 c->api_url, why, n);
	return 0;
}

/*
 * Enrols the device at start when it needs it (device.h), and says a
 * failed step once: the device records it for /status, the log is ours.
 */
static void main_enroll(struct device *d)
{
	char *msg = NULL;
	int r = device_enroll_if_needed(d, &msg);

	if (r < 0 && r != -ENODEV && r != -EBUSY)
		log_err("TPM: enrolment: %s", msg_or(msg, r));
	free(msg);
}

/*
 * Composes the read path (store.h): the CDN, cache_dir over it when set,
 * the chunk-hash check over those, the key source, and the store over all.
 * On failure *ret_msg says why.
 */
static int main_read_path(const struct config *c, struct fetch *f, struct session *s,
			  struct device *d, struct store **ret, char **ret_msg)
{
	struct src *src = NULL, *disk = NULL;
	struct keys *keys = NULL;
	int r;

	r = keys_new(c, s, d, &keys, ret_msg);
	if (r < 0)
		return r;
	r = src_cdn_new(f, &src);
	if (r < 0) {
		keys_free(keys);
		return r;
	}
	if (c->cache_dir && *c->cache_dir && c->cache_max > 0) {
		r = src_disk_new(c->cache_dir, c->cache_max, src, &disk);
		if (r < 0)
			log_warn("cache_dir %s unusable (%s): reading without a disk cache",
				 c->cache_dir, strerror(-r));
		else
			src = disk;
	}
	/* Above cache_dir: its bytes are checked as the CDN's are (docs/trust.md). */
	r = src_hash_new(src, &disk);
	if (r < 0) {
		src_free(src);
		keys_free(keys);
		return r;
	}
	return store_new(c, disk, keys, ret, ret_msg);
}

/*
 * The supervisor's part: the checks a refused mount must fail on before
 * it touches anything, the detach, then super_run. The exit status.
 */
static int main_supervise(struct main_opts *o, const struct config *c, struct fuse_args *args,
			  char **argv)
{
	struct super_opts so = {.stored_fuse = -1, .stored_journal = -1, .report = -1};
	struct ops_opts oo = {0};
	char exe[4096], *config_abs = NULL;
	ssize_t n;
	int stored, rc = 1;

	/* An upgrade replaces the file: a worker runs what the path holds then. */
	n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
	if (n <= 0) {
		fprintf(stderr,
			"azaionfs: cannot tell where this program is (/proc/self/exe): %s\n",
			strerror(errno));
		return 1;
	}
	exe[n] = '\0';
	stored = super_stored(&so.stored_fuse, &so.stored_journal);
	/* Mount options first: a refused mount must not have touched the network. */
	if (main_check_mount_opts(o) < 0 || (!stored && main_check_mount_point(o) < 0) ||
	    main_mount_owner(o, &oo) < 0)
		return 1;
	if (o->config_path && !(config_abs = realpath(o->config_path, NULL))) {
		fprintf(stderr, "azaionfs: config %s: %s\n", o->config_path, strerror(errno));
		return 1;
	}
	if (main_fuse_args(o, args) < 0)
		goto out;
	main_harden();
	if (main_fork(o->foreground, &so.report) < 0)
		goto out;
	so.exe = exe;
	so.argv = argv;
	so.source = o->source ? o->source : "azaion";
	so.mountpoint = o->mountpoint;
	so.config_path = config_abs;
	so.state_dir = c->state_dir;
	so.args = args;
	so.foreground = o->foreground;
	so.auto_unmount = o->auto_unmount;
	rc = super_run(&so);
out:
	free(config_abs);
	return rc;
}

/* A worker's signals: a stop answers what was read; a lost reader must not kill it. */
static void main_worker_signals(void)
{
	struct sigaction sa = {.sa_handler = main_on_stop};

	sigemptyset(&sa.sa_mask);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGHUP, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);
}

/*
 * The worker's part: everything secret and everything networked, then the
 * FUSE loop over the supervisor's descriptor. The exit status tells the
 * supervisor what happened (SUPER_EXIT_UNMOUNTED: the mount is gone).
 */
static int main_serve(struct main_opts *o, struct config *c, struct fuse_args *args)
{
	struct super_worker *w = main_worker;
	struct main_state *ms = &main_ms;
	struct fetch_opts fo = {0};
	struct ops_opts oo = {0};
	struct rest_deps rd = {0};
	struct serve_opts sv = {0};
	struct fuse_session *se = NULL;
	struct journal *j = NULL;
	struct fetch *f = NULL;
	struct session *s = NULL;
	struct device *d = NULL;
	struct ops *ops = NULL;
	char dev[32], *msg = NULL;
	size_t init_len;
	int r, rc = 1, login, had_creds, had_init = 0, replayed = 0, stopped;
	char login_why[400], tpm_why[512];
	enum serve_end end;

	ms->foreground = o->foreground;
	if (main_check_mount_opts(o) < 0 || main_mount_owner(o, &oo) < 0)
		goto out;
	main_harden();
	if (main_lock_memory(c) < 0)
		goto out;
	if (mkdir(c->state_dir, 0700) < 0 && errno != EEXIST) {
		log_err("state_dir %s: %s", c->state_dir, strerror(errno));
		goto out;
	}
	r = journal_attach(w->journal_fd, &j);
	if (r < 0) {
		log_err("cannot read the supervisor's request journal: %s", strerror(-r));
		goto out;
	}
	ms->resumed = journal_init(j, &init_len) != NULL;

	fo.ca_file = c->ca_file;
	fo.timeout_ms = c->io_timeout * 1000;
	fo.connect_timeout_ms = c->io_timeout < 10 ? c->io_timeout * 1000 : 10000;
	fo.max_retries = 5;
	fo.log = log_sink;
	r = fetch_new(&fo, &f);
	if (r < 0) {
		log_err("cannot set up HTTP: %s", strerror(-r));
		goto out;
	}
	r = session_new(c, f, &s, &msg);
	if (r < 0) {
		log_err("%s", msg_or(msg, r));
		free(msg);
		goto out_fetch;
	}
	/*
	 * The TPM first: tpm = required without one stops here, before any
	 * network I/O; an enrolled device unseals the credentials it logs in
	 * with (unattended start). A failed login does not stop the mount:
	 * reads then fail with the cause logged.
	 */
	r = device_new(c, s, &d, &msg);
	if (r < 0) {
		log_err("%s: not starting", msg_or(msg, r));
		free(msg);
		goto out_session;
	}
	/* A sealed store that did not load or unseal: the start goes on without it. */
	if (!strcmp(device_status(d, tpm_why, sizeof(tpm_why)), "error"))
		log_err("TPM: %s", tpm_why);
	had_creds = session_has_credentials(s);
	login = device_login(d);
	/* The login's words, before the calls below replace this thread's (session.h). */
	snprintf(login_why, sizeof(login_why), "%s", log_strerror(login));
	if (session_logged_in(s))
		main_enroll(d);
	r = main_read_path(c, f, s, d, &ms->st, &msg);
	if (r < 0) {
		log_err("cannot set up the read path: %s", msg_or(msg, r));
		free(msg);
		goto out_device;
	}
	r = catalog_new(c, s, store_probe, ms->st, &ms->cat);
	if (r < 0)
		goto out_store;
	/* After a failed login, the saved list at once rather than another wait. */
	catalog_refresh(ms->cat, session_has_credentials(s) && !session_logged_in(s));
	/*
	 * Readers wait on a restarted worker: it serves what it has, and the
	 * refusal that would stop a first start is only logged.
	 */
	if (main_check_login(c, ms->cat, had_creds, login, login_why) < 0 && !ms->resumed)
		goto out_catalog;

	/*
	 * The side endpoint listens now, so that a busy port shows on the
	 * terminal, and serves from the FUSE init on. It is the only way to
	 * log in and unlock: a mount without it would be one nobody can fix
	 * from outside, so it stops the start (rest_new said why).
	 */
	rd.c = c;
	rd.mountpoint = o->mountpoint;
	rd.f = f;
	rd.s = s;
	rd.d = d;
	rd.cat = ms->cat;
	rd.st = ms->st;
	rd.takeover = w->takeover;
	r = rest_new(&rd, &ms->rest);
	if (r < 0) {
		log_err("the side endpoint on %s cannot start (%s): it is the way to log in and "
			"unlock, so the mount stops; fix the cause above and mount again",
			c->rest_listen, strerror(-r));
		goto out_catalog;
	}

	oo.c = c;
	oo.cat = ms->cat;
	oo.st = ms->st;
	oo.epoch = (uint16_t)w->epoch;
	oo.on_init = main_on_init;
	oo.on_init_arg = ms;
	ms->mountpoint = o->mountpoint;
	ms->source = o->source ? o->source : "azaion";
	if (ops_new(&oo, &ops) < 0 || main_fuse_args(o, args) < 0)
		goto out_rest;
	se = fuse_session_new(args, ops_table(), sizeof(struct fuse_lowlevel_ops), ops);
	if (!se)
		goto out_ops;
	r = super_worker_prepared(w);
	if (r < 0) {
		if (r != -ECANCELED)
			log_err("cannot get the mount from the supervisor: %s", strerror(-r));
		goto out_session_fuse;
	}
	/* libfuse takes a descriptor by this name rather than mounting. */
	snprintf(dev, sizeof(dev), "/dev/fd/%d", w->fuse_fd);
	if (fuse_session_mount(se, dev) != 0) {
		log_err("cannot serve the supervisor's FUSE descriptor %d", w->fuse_fd);
		goto out_session_fuse;
	}
	w->fuse_fd = -1; /* the session's now */
	sv.se = se;
	sv.j = j;
	sv.lane = w->lane;
	sv.threads = MAIN_MAX_THREADS;
	r = serve_new(&sv, &ms->serve);
	if (r < 0) {
		log_err("cannot set up the FUSE loop: %s", strerror(-r));
		goto out_session_fuse;
	}
	main_worker_signals();
	/* The kept INIT first: libfuse refuses every request of a session before one. */
	serve_init(ms->serve, &had_init);
	if (w->resume && !ms->failed &&
	    serve_resume(ms->serve, w->resume, c->kernel_resend, &replayed) < 0)
		log_err("the requests of the worker before could not be answered");
	if (__atomic_load_n(&ms->failed, __ATOMIC_RELAXED) || serve_start(ms->serve) < 0)
		goto out_serve;
	if (had_init)
		main_report(ms, replayed);
	end = serve_wait(ms->serve);
	stopped = __atomic_load_n(&ms->stop_asked, __ATOMIC_RELAXED);
	rc = end == SERVE_UNMOUNTED		      ? SUPER_EXIT_UNMOUNTED
	     : end == SERVE_FAILED		      ? 1
	     : !had_init && !ms->reported && !stopped ? 1
						      : 0;
	if (end == SERVE_STOPPED && !had_init && !ms->reported && !stopped &&
	    !__atomic_load_n(&ms->failed, __ATOMIC_RELAXED))
		log_err("the FUSE session ended before the mount answered; see the messages "
			"above");
	if (ms->has_ready) {
		struct timespec until;

		/* Its stat is answered by a worker that serves; this one no longer does. */
		clock_gettime(CLOCK_REALTIME, &until);
		until.tv_sec += 2;
		if (pthread_timedjoin_np(ms->ready, NULL, &until) == 0)
			ms->has_ready = 0;
	}
	if (__atomic_load_n(&ms->failed, __ATOMIC_RELAXED))
		rc = 1;
out_serve:
	if (!ms->has_ready) {
		serve_free(ms->serve);
		ms->serve = NULL;
	}
out_session_fuse:
	fuse_session_destroy(se);
out_ops:
	ops_free(ops);
out_rest:
	/* Before the store: F2 streams read from it. */
	rest_free(ms->rest);
out_catalog:
	catalog_free(ms->cat);
out_store:
	store_free(ms->st);
out_device:
	device_free(d);
out_session:
	session_free(s);
out_fetch:
	fetch_free(f);
out:
	journal_free(j);
	if (w->fuse_fd >= 0)
		close(w->fuse_fd);
	return rc;
}

int main(int argc, char **argv)
{
	struct fuse_args args = FUSE_ARGS_INIT(argc, argv);
	struct super_worker worker;
	struct main_opts o = {0};
	struct config *c = NULL;
	int r, rc = 1;

	log_init("azaionfs", LOG_INFO);
	metrics_set_version(MAIN_VERSION);
	/* tpm2-tss writes its own warnings to stderr; the causes reach the log through tpm/. */
	setenv("TSS2_LOG", "all+NONE", 0);
	fuse_set_log_func(main_fuse_log);
	r = super_worker_env(&worker);
	if (r < 0) {
		fprintf(stderr, "azaionfs: a malformed worker environment (AZAIONFS_WORKER): not "
				"started by an azaionfs supervisor\n");
		goto out_worker;
	}
	if (r > 0)
		main_worker = &worker;
	if (fuse_opt_parse(&args, &o, main_opt_spec, main_opt_proc) < 0) {
		fputs(MAIN_USAGE, stderr);
		goto out_args;
	}
	/* Each bad argument has had its own line; the whole usage would bury it. */
	if (o.bad)
		goto out_args;
	if (o.help || o.version) {
		if (o.help)
			fputs(MAIN_USAGE, stdout);
		else
			printf("azaionfs %s (libfuse %s)\n", MAIN_VERSION, fuse_pkgversion());
		rc = 0;
		goto out_args;
	}
	if (!o.mountpoint) {
		fprintf(stderr, "azaionfs: needs SOURCE and MOUNTPOINT\n%s", MAIN_USAGE);
		goto out_args;
	}
	/* The supervisor's absolute path: a worker's working directory is /. */
	if (main_worker && main_worker->config_path) {
		free(o.config_path);
		o.config_path = strdup(main_worker->config_path);
		if (!o.config_path)
			goto out_args;
	}
	if (main_config(&o, &c) < 0)
		goto out_args;
	log_set_level(o.debug ? LOG_DEBUG : c->log_level);
	if (c->log_file) {
		char *msg = NULL;

		r = log_open_file(c->log_file, &msg);
		if (r < 0) {
			fprintf(stderr, "azaionfs: %s\n", msg ? msg : strerror(-r));
			free(msg);
			goto out_config;
		}
	}
	if (main_worker)
		rc = main_serve(&o, c, &args);
	else
		rc = main_supervise(&o, c, &args, argv);
	log_close_file();
out_config:
	config_free(c);
	free(main_ms.ready_mp);
out_args:
	main_opts_clear(&o);
	fuse_opt_free_args(&args);
out_worker:
	super_worker_clear(&worker);
	return rc;
}
