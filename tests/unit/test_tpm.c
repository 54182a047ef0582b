/*
 * test_tpm.c - tpm/ against swtpm: the TPM named by $TPM_TCTI (the local
 * stack's) and a second swtpm this test starts and stops itself, for the
 * "blobs from another TPM" cases. PCR binding uses PCR 16, the debug PCR
 * that can be reset, and resets it at the end. Needs swtpm and tpm2-tools
 * (tpm2_pcrextend, tpm2_pcrreset, tpm2_changeauth, tpm2_createprimary,
 * tpm2_evictcontrol); their absence fails the test.
 */
#include "tests/unit/check.h"
#include "tpm/tpm.h"

#include <dirent.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/rsa.h>

#define WRAPPED_MAX 512

static char logs[1 << 16];
static size_t logs_len;

static void test_log(int prio, const char *msg)
{
	size_t n = strlen(msg);

	fprintf(stderr, "# tpm log [%d]: %s\n", prio, msg);
	if (logs_len + n + 1 < sizeof(logs)) {
		memcpy(logs + logs_len, msg, n);
		logs_len += n;
		logs[logs_len++] = '\n';
	}
}

static int open_tpm(const char *tcti, const char *dir, const char *pcrs, unsigned wait,
		    const char *owner_auth, struct tpm **ret)
{
	struct tpm_opts o = {
		.tcti = tcti,
		.wait_seconds = wait,
		.pcrs = pcrs,
		.owner_auth = (const uint8_t *)owner_auth,
		.owner_auth_len = owner_auth ? strlen(owner_auth) : 0,
		.state_dir = dir,
		.log = test_log,
	};

	return tpm_open(&o, ret);
}

/* tpm_open as under tpm = auto (opts.quick). */
static int open_tpm_quick(const char *tcti, const char *dir, unsigned wait, struct tpm **ret)
{
	struct tpm_opts o = {
		.tcti = tcti,
		.wait_seconds = wait,
		.state_dir = dir,
		.log = test_log,
		.quick = 1,
	};

	return tpm_open(&o, ret);
}

/* Runs a tpm2-tools command line against tcti; its exit status. */
static int tools(const char *tcti, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int tools(const char *tcti, const char *fmt, ...)
{
	char cmd[1024];
	va_list ap;
	int st;

	va_start(ap, fmt);
	vsnprintf(cmd, sizeof(cmd), fmt, ap);
	va_end(ap);
	setenv("TPM2TOOLS_TCTI", tcti, 1);
	st = system(cmd);
	return st == -1 ? -1 : WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

/*
 * Bytes printed by a tpm2-tools command line (-1 when it fails): the
 * handle lists are empty when nothing leaked.
 */
static long tools_output(const char *tcti, const char *cmd)
{
	char buf[512];
	long total = 0;
	size_t n;
	FILE *p;

	setenv("TPM2TOOLS_TCTI", tcti, 1);
	p = popen(cmd, "r");
	if (!p)
		return -1;
	while ((n = fread(buf, 1, sizeof(buf), p)) > 0) {
		fwrite(buf, 1, n, stderr);
		total += (long)n;
	}
	return pclose(p) == 0 ? total : -1;
}

static int tpm_leaks(const char *tcti)
{
	return tools_output(tcti, "tpm2_getcap handles-transient") != 0 ||
	       tools_output(tcti, "tpm2_getcap handles-loaded-session") != 0 ||
	       tools_output(tcti, "tpm2_getcap handles-saved-session") != 0;
}

/* RSA-OAEP of k to the PEM's key with md (SHA-256 for the real thing). */
static int wrap(const char *pem, const uint8_t *k, size_t klen, const EVP_MD *md, uint8_t *out,
		size_t *outlen)
{
	BIO *b = BIO_new_mem_buf(pem, -1);
	EVP_PKEY *pk = b ? PEM_read_bio_PUBKEY(b, NULL, NULL, NULL) : NULL;
	EVP_PKEY_CTX *c = pk ? EVP_PKEY_CTX_new(pk, NULL) : NULL;
	int ok = c && EVP_PKEY_encrypt_init(c) == 1 &&
		 EVP_PKEY_CTX_set_rsa_padding(c, RSA_PKCS1_OAEP_PADDING) == 1 &&
		 EVP_PKEY_CTX_set_rsa_oaep_md(c, md) == 1 &&
		 EVP_PKEY_CTX_set_rsa_mgf1_md(c, md) == 1 &&
		 EVP_PKEY_encrypt(c, out, outlen, k, klen) == 1;

	EVP_PKEY_CTX_free(c);
	EVP_PKEY_free(pk);
	BIO_free(b);
	return ok ? 0 : -1;
}

static int pem_rsa_bits(const char *pem)
{
	BIO *b = BIO_new_mem_buf(pem, -1);
	EVP_PKEY *pk = b ? PEM_read_bio_PUBKEY(b, NULL, NULL, NULL) : NULL;
	int bits = pk && EVP_PKEY_get_base_id(pk) == EVP_PKEY_RSA ? EVP_PKEY_get_bits(pk) : -1;

	EVP_PKEY_free(pk);
	BIO_free(b);
	return bits;
}

/*
 * Scans dir's files: counts those that are not regular 0600 files, those
 * holding needle, and leftover temporaries. Returns the number of files.
 */
static int scan_dir(const char *dir, const void *needle, size_t nlen, int *bad_mode,
		    int *has_needle, int *tmp_left)
{
	DIR *d = opendir(dir);
	struct dirent *de;
	int files = 0;

	*bad_mode = *has_needle = *tmp_left = 0;
	if (!d)
		return -1;
	while ((de = readdir(d))) {
		char path[4096], *buf;
		struct stat st;
		FILE *f;
		long n;

		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		files++;
		if (de->d_name[0] == '.')
			(*tmp_left)++;
		snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
		if (lstat(path, &st) < 0 || !S_ISREG(st.st_mode) || (st.st_mode & 07777) != 0600)
			(*bad_mode)++;
		f = fopen(path, "rb");
		if (!f)
			continue;
		buf = malloc((size_t)st.st_size + 1);
		n = buf ? (long)fread(buf, 1, (size_t)st.st_size, f) : 0;
		if (buf && nlen && memmem(buf, (size_t)n, needle, nlen))
			(*has_needle)++;
		free(buf);
		fclose(f);
	}
	closedir(d);
	return files;
}

static int copy_file(const char *from, const char *to)
{
	char buf[1 << 16];
	FILE *in = fopen(from, "rb"), *out = in ? fopen(to, "wb") : NULL;
	size_t n;
	int r = in && out ? 0 : -1;

	while (r == 0 && (n = fread(buf, 1, sizeof(buf), in)) > 0)
		if (fwrite(buf, 1, n, out) != n)
			r = -1;
	if (out && fclose(out) != 0)
		r = -1;
	if (in)
		fclose(in);
	return r;
}

static int copy_files(const char *from, const char *to, const char *const *names)
{
	char a[4096], b[4096];

	for (; *names; names++) {
		snprintf(a, sizeof(a), "%s/%s", from, *names);
		snprintf(b, sizeof(b), "%s/%s", to, *names);
		if (copy_file(a, b) < 0)
			return -1;
	}
	return 0;
}

/* Reads dir/name into buf (cap bytes); its size, 0 when unreadable or larger. */
static size_t read_file_at(const char *dir, const char *name, uint8_t *buf, size_t cap)
{
	char path[4200];
	FILE *f;
	size_t n;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	f = fopen(path, "rb");
	if (!f)
		return 0;
	n = fread(buf, 1, cap, f);
	if (n == cap || ferror(f))
		n = 0;
	fclose(f);
	return n;
}

/* Replaces dir/name's content with n bytes of buf, keeping its mode; -1 on failure. */
static int write_file_at(const char *dir, const char *name, const uint8_t *buf, size_t n)
{
	char path[4200];
	FILE *f;
	int r;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	f = fopen(path, "r+b");
	if (!f)
		return -1;
	r = fwrite(buf, 1, n, f) == n && ftruncate(fileno(f), (off_t)n) == 0 ? 0 : -1;
	if (fclose(f) != 0)
		r = -1;
	return r;
}

static int all_bytes(const uint8_t *p, size_t n, uint8_t v)
{
	size_t i;

	for (i = 0; i < n; i++)
		if (p[i] != v)
			return 0;
	return 1;
}

static const char *const all_files[] = {
	"tpm-srk.pub",	"tpm-pcrs",	 "tpm-dk.pub", "tpm-dk.priv",
	"tpm-seal.pub", "tpm-seal.priv", "tpm-store",  NULL};
static const char *const object_files[] = {"tpm-dk.pub",    "tpm-dk.priv", "tpm-seal.pub",
					   "tpm-seal.priv", "tpm-store",   NULL};

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* A TCP port on 127.0.0.1 that nothing listens on, with port+1 free too. */
static int free_port_pair(void)
{
	int tries;

	for (tries = 0; tries < 50; tries++) {
		struct sockaddr_in a = {.sin_family = AF_INET,
					.sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
		socklen_t al = sizeof(a);
		int s1 = socket(AF_INET, SOCK_STREAM, 0), s2 = socket(AF_INET, SOCK_STREAM, 0);
		int port = -1;

		if (s1 >= 0 && s2 >= 0 && bind(s1, (struct sockaddr *)&a, sizeof(a)) == 0 &&
		    getsockname(s1, (struct sockaddr *)&a, &al) == 0 && ntohs(a.sin_port) < 65000) {
			port = ntohs(a.sin_port);
			a.sin_port = htons((uint16_t)(port + 1));
			if (bind(s2, (struct sockaddr *)&a, sizeof(a)) != 0)
				port = -1;
		}
		if (s1 >= 0)
			close(s1);
		if (s2 >= 0)
			close(s2);
		if (port > 0)
			return port;
	}
	return -1;
}

static pid_t swtpm_start(const char *dir, int port)
{
	char state[4200], server[128], ctrl[128];
	pid_t pid;

	snprintf(state, sizeof(state), "dir=%s", dir);
	snprintf(server, sizeof(server), "type=tcp,port=%d,bindaddr=127.0.0.1", port);
	snprintf(ctrl, sizeof(ctrl), "type=tcp,port=%d,bindaddr=127.0.0.1", port + 1);
	pid = fork();
	if (pid == 0) {
		/* Gone with this test even if it dies. */
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		execlp("swtpm", "swtpm", "socket", "--tpm2", "--tpmstate", state, "--server",
		       server, "--ctrl", ctrl, "--flags", "not-need-init,startup-clear",
		       (char *)NULL);
		_exit(127);
	}
	return pid;
}

static void swtpm_stop(pid_t pid)
{
	if (pid <= 0)
		return;
	kill(pid, SIGTERM);
	waitpid(pid, NULL, 0);
}

struct unwrap_job {
	struct tpm *t;
	const uint8_t *wrapped;
	size_t wlen;
	const uint8_t *want;
	int bad;
};

static void *unwrap_thread(void *arg)
{
	struct unwrap_job *j = arg;
	int i;

	for (i = 0; i < 5; i++) {
		uint8_t k[64];
		size_t klen = 0;

		if (tpm_unwrap(j->t, j->wrapped, j->wlen, k, sizeof(k), &klen) != 0 || klen != 32 ||
		    memcmp(k, j->want, 32))
			j->bad++;
	}
	return NULL;
}

static int rm_rf(const char *dir)
{
	char cmd[4200];

	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	return system(cmd);
}

int main(void)
{
	const char *tcti = getenv("TPM_TCTI");
	char dir_a[] = "/tmp/test_tpm_a.XXXXXX", dir_p[] = "/tmp/test_tpm_p.XXXXXX";
	char dir_c[] = "/tmp/test_tpm_c.XXXXXX", dir_d[] = "/tmp/test_tpm_d.XXXXXX";
	char dir_e[] = "/tmp/test_tpm_e.XXXXXX", sw_dir[] = "/tmp/test_tpm_sw.XXXXXX";
	static const char secret1[] = "email = device@example.com\npassword = pa55-w0rd-\x01\x02";
	uint8_t secret2[300], k[32], out[512], wrapped[WRAPPED_MAX], wrapped_p[WRAPPED_MAX];
	size_t wlen = sizeof(wrapped), wlen_p = sizeof(wrapped_p), olen;
	char tcti2[128], bad_tcti[128];
	struct tpm *t = NULL, *t2 = NULL;
	char *pem = NULL, *pem2 = NULL;
	pid_t sw = -1;
	int r, port, bad_mode, has, tmp_left, files;
	double t0, el;

	if (!tcti || !*tcti) {
		CHECK(0, "TPM_TCTI is set (run through tests/run, or export "
			 "TPM_TCTI=swtpm:host=127.0.0.1,port=N)");
		return check_done();
	}
	if (!mkdtemp(dir_a) || !mkdtemp(dir_p) || !mkdtemp(dir_c) || !mkdtemp(dir_d) ||
	    !mkdtemp(dir_e) || !mkdtemp(sw_dir)) {
		CHECK(0, "temporary folders: %s", strerror(errno));
		return check_done();
	}
	RAND_bytes(secret2, sizeof(secret2));
	RAND_bytes(k, sizeof(k));

	/* ---- argument checks ---- */
	{
		static const char *const bad[] = {"sha256:",	"sha256:24", "md5:1",
						  "sha256:1,x", "0,1",	     "sha256:1+sha256:2",
						  "sha256:-1",	NULL};
		int wrong = 0;
		size_t i;

		for (i = 0; bad[i]; i++) {
			t = NULL;
			r = open_tpm(tcti, dir_a, bad[i], 0, NULL, &t);
			if (r != -EINVAL || t) {
				printf("# \"%s\" gave %d\n", bad[i], r);
				wrong++;
			}
		}
		CHECK(wrong == 0, "bad PCR selections are refused with -EINVAL");
		CHECK(strstr(logs, "tpm_pcrs") != NULL, "and the message names tpm_pcrs");
	}

	/* ---- no TPM ---- */
	port = free_port_pair();
	snprintf(bad_tcti, sizeof(bad_tcti), "swtpm:host=127.0.0.1,port=%d", port);
	t0 = now();
	t = NULL;
	r = open_tpm(bad_tcti, dir_a, NULL, 1, NULL, &t);
	el = now() - t0;
	CHECK(r == -ENODEV && !t, "a TCTI to a closed port gives -ENODEV (got %d)", r);
	CHECK(el >= 0.9 && el < 3.0, "after waiting about wait_seconds=1 (%.2f s)", el);

	/* tpm = auto: a TPM that is plainly absent is absent at once. */
	t0 = now();
	r = open_tpm_quick(bad_tcti, dir_a, 30, &t);
	el = now() - t0;
	CHECK(r == -ENODEV && !t && el < 3.0,
	      "quick: a closed port is absent within 2 s though tpm_wait is 30 (%d, %.2f s)", r,
	      el);
	{
		int tee = access("/dev/tee0", F_OK) == 0 || access("/dev/teepriv0", F_OK) == 0;
		size_t mark = logs_len;

		t0 = now();
		r = open_tpm_quick("device:/dev/azaion-test-no-tpm", dir_a, 1, &t);
		el = now() - t0;
		logs[logs_len] = '\0';
		if (tee)
			CHECK(r == -ENODEV && strstr(logs + mark, "did not appear within 1 s"),
			      "quick, with a TEE: a missing device node is waited for (%d, %.2f s)",
			      r, el);
		else
			CHECK(r == -ENODEV && el < 0.5 && strstr(logs + mark, "no TEE"),
			      "quick, no TEE: a missing device node is absent at once (%d, %.2f s)",
			      r, el);
	}

	/* ---- enrolment ---- */
	r = open_tpm(tcti, dir_a, "", 10, NULL, &t);
	CHECK(r == 0, "tpm_open on %s (%d)", tcti, r);
	if (r < 0)
		goto out;
	CHECK(tpm_is_enrolled(t) == 0, "a fresh state_dir is not enrolled");
	r = tpm_load(t);
	CHECK(r == -ENOENT, "tpm_load before enrolment gives -ENOENT (%d)", r);
	CHECK(strstr(tpm_last_error(t), "not enrolled") != NULL, "last error says not enrolled: %s",
	      tpm_last_error(t));
	olen = 0;
	r = tpm_unseal(t, out, sizeof(out), &olen);
	CHECK(r == -ENOENT && olen == 0, "tpm_unseal before enrolment gives -ENOENT (%d)", r);

	r = tpm_enroll(t, secret1, sizeof(secret1), &pem);
	CHECK(r == 0 && pem, "tpm_enroll (%d)", r);
	if (r < 0)
		goto out;
	CHECK(strcmp(tpm_last_error(t), "") == 0, "no last error after a success");
	CHECK(tpm_is_enrolled(t) == 1, "now enrolled");
	files = scan_dir(dir_a, secret1, sizeof(secret1), &bad_mode, &has, &tmp_left);
	CHECK(files == 7 && bad_mode == 0 && tmp_left == 0,
	      "seven blobs, all regular files with mode 0600, no temporaries (%d, %d, %d)", files,
	      bad_mode, tmp_left);
	CHECK(has == 0, "the secret is in no state_dir file in the clear");
	CHECK(pem_rsa_bits(pem) == 2048, "the PEM parses with OpenSSL as an RSA-2048 key");

	olen = 0;
	memset(out, 0, sizeof(out));
	r = tpm_unseal(t, out, sizeof(out), &olen);
	CHECK(r == 0 && olen == sizeof(secret1) && !memcmp(out, secret1, olen),
	      "unseal returns the secret (%d, %zu bytes)", r, olen);
	olen = 7;
	r = tpm_unseal(t, out, 10, &olen);
	CHECK(r == -ENOBUFS && olen == 7, "unseal into too small a buffer: -ENOBUFS (%d)", r);

	/*
	 * The store's layout on disk (docs/tpm.md), which existing devices
	 * hold: "AZTS" 1 0 0 0 || nonce(12) || ciphertext || tag(16). A bit
	 * flipped in its ciphertext is refused and leaves the caller's buffer
	 * as it was.
	 */
	{
		static const uint8_t magic[8] = {'A', 'Z', 'T', 'S', 1, 0, 0, 0};
		uint8_t store[1024], flipped[1024];
		size_t slen;

		slen = read_file_at(dir_a, "tpm-store", store, sizeof(store));
		CHECK(slen == 8 + 12 + sizeof(secret1) + 16 && !memcmp(store, magic, 8),
		      "tpm-store is magic, nonce, %zu bytes of ciphertext and a tag (%zu bytes)",
		      sizeof(secret1), slen);
		memcpy(flipped, store, slen);
		flipped[8 + 12 + 5] ^= 0x10;
		r = write_file_at(dir_a, "tpm-store", flipped, slen);
		r = r ? r : tpm_load(t);
		CHECK(r == 0, "tpm_load reads a tpm-store with a flipped bit (%d)", r);
		olen = 7;
		memset(out, 0xaa, sizeof(out));
		r = tpm_unseal(t, out, sizeof(out), &olen);
		CHECK(r == -EBADMSG && olen == 7 && all_bytes(out, sizeof(out), 0xaa),
		      "a flipped bit in the store: -EBADMSG, the buffer untouched (%d)", r);
		CHECK(strstr(tpm_last_error(t), "does not decrypt") != NULL,
		      "and the last error says so: %s", tpm_last_error(t));
		r = write_file_at(dir_a, "tpm-store", store, slen);
		r = r ? r : tpm_load(t);
		olen = 0;
		r = r ? r : tpm_unseal(t, out, sizeof(out), &olen);
		CHECK(r == 0 && olen == sizeof(secret1) && !memcmp(out, secret1, olen),
		      "the store put back unseals again (%d)", r);
	}

	CHECK(wrap(pem, k, sizeof(k), EVP_sha256(), wrapped, &wlen) == 0 && wlen == 256,
	      "OpenSSL wraps a key to the PEM with RSA-OAEP-SHA256");
	memset(out, 0, sizeof(out));
	olen = 0;
	r = tpm_unwrap(t, wrapped, wlen, out, sizeof(out), &olen);
	CHECK(r == 0 && olen == 32 && !memcmp(out, k, 32),
	      "tpm_unwrap yields the same 32 bytes (%d)", r);
	{
		uint8_t junk[256], w1[WRAPPED_MAX];
		size_t w1len = sizeof(w1);

		RAND_bytes(junk, sizeof(junk));
		junk[0] &= 0x7f; /* below the modulus, so it is the padding that fails */
		olen = 99;
		memset(out, 0xaa, sizeof(out));
		r = tpm_unwrap(t, junk, sizeof(junk), out, sizeof(out), &olen);
		CHECK(r == -EBADMSG && olen == 99 && out[0] == 0xaa,
		      "garbage wrapped gives -EBADMSG and nothing (%d)", r);
		r = tpm_unwrap(t, junk, 100, out, sizeof(out), &olen);
		CHECK(r == -EBADMSG, "a wrapped key of the wrong size gives -EBADMSG (%d)", r);
		r = wrap(pem, k, sizeof(k), EVP_sha1(), w1, &w1len);
		r = r ? r : tpm_unwrap(t, w1, w1len, out, sizeof(out), &olen);
		CHECK(r == -EBADMSG, "a key wrapped with OAEP-SHA1 gives -EBADMSG (%d)", r);
		r = tpm_unwrap(t, wrapped, wlen, out, 16, &olen);
		CHECK(r == -ENOBUFS, "unwrap into too small a buffer: -ENOBUFS (%d)", r);
	}
	r = tpm_public_pem(t, &pem2);
	CHECK(r == 0 && pem2 && !strcmp(pem, pem2), "tpm_public_pem equals the enrolment's PEM");
	free(pem2);
	pem2 = NULL;

	/* Several threads on one struct tpm. */
	{
		struct unwrap_job jobs[4];
		pthread_t th[4];
		int i, bad = 0;

		for (i = 0; i < 4; i++) {
			jobs[i] = (struct unwrap_job){t, wrapped, wlen, k, 0};
			pthread_create(&th[i], NULL, unwrap_thread, &jobs[i]);
		}
		for (i = 0; i < 4; i++) {
			pthread_join(th[i], NULL);
			bad += jobs[i].bad;
		}
		CHECK(bad == 0, "4 threads x 5 unwraps on one struct tpm all succeed (%d bad)",
		      bad);
	}

	/* ---- a restart ---- */
	tpm_close(t);
	t = NULL;
	r = open_tpm(tcti, dir_a, NULL, 10, NULL, &t);
	CHECK(r == 0, "tpm_open again (%d)", r);
	if (r < 0)
		goto out;
	r = tpm_load(t);
	CHECK(r == 0, "tpm_load after a restart (%d)", r);
	r = tpm_public_pem(t, &pem2);
	CHECK(r == 0 && pem2 && !strcmp(pem, pem2), "same public key after the restart");
	free(pem2);
	pem2 = NULL;
	olen = 0;
	r = tpm_unseal(t, out, sizeof(out), &olen);
	CHECK(r == 0 && olen == sizeof(secret1) && !memcmp(out, secret1, olen),
	      "unseal after the restart (%d)", r);
	olen = 0;
	r = tpm_unwrap(t, wrapped, wlen, out, sizeof(out), &olen);
	CHECK(r == 0 && olen == 32 && !memcmp(out, k, 32), "unwrap after the restart (%d)", r);
	CHECK(!tpm_leaks(tcti), "between calls an open, loaded struct tpm holds no TPM slot");

	/* A crashed program's leftovers fill the TPM (swtpm has three object slots). */
	r = tools(tcti,
		  "for i in 1 2 3; do tpm2_createprimary -Q -C o -c %s/left$i.ctx || exit 1;"
		  " done",
		  dir_d);
	CHECK(r == 0, "three transient objects left in the TPM by tpm2_createprimary (%d)", r);
	{
		size_t mark = logs_len;

		olen = 0;
		memset(out, 0, sizeof(out));
		r = tpm_unwrap(t, wrapped, wlen, out, sizeof(out), &olen);
		logs[logs_len] = '\0';
		CHECK(r == 0 && olen == 32 && !memcmp(out, k, 32),
		      "unwrap works in a full TPM: the leftovers are flushed (%d)", r);
		CHECK(strstr(logs + mark, "the TPM was full: flushed 3 transient objects") != NULL,
		      "and a warning says what was flushed");
		CHECK(!tpm_leaks(tcti), "nothing left in the TPM afterwards");
	}

	/* Re-enrolment with a 300-byte secret. */
	free(pem);
	pem = NULL;
	r = tpm_enroll(t, secret2, sizeof(secret2), &pem);
	CHECK(r == 0, "re-enrolment with a 300-byte secret (%d)", r);
	olen = 0;
	r = tpm_unseal(t, out, sizeof(out), &olen);
	CHECK(r == 0 && olen == 300 && !memcmp(out, secret2, 300),
	      "unseal returns all 300 bytes (%d)", r);
	files = scan_dir(dir_a, secret2, sizeof(secret2), &bad_mode, &has, &tmp_left);
	CHECK(files == 7 && bad_mode == 0 && has == 0 && tmp_left == 0,
	      "still seven 0600 blobs, the 300-byte secret in none of them");
	scan_dir(dir_a, secret2 + 100, 32, &bad_mode, &has, &tmp_left);
	CHECK(has == 0, "not even 32 bytes of it");
	r = tpm_unwrap(t, wrapped, wlen, out, sizeof(out), &olen);
	CHECK(r == -EBADMSG, "a key wrapped to the old device key no longer unwraps (%d)", r);
	tpm_close(t);
	t = NULL;

	/* ---- PCR binding ---- */
	r = tools(tcti, "tpm2_pcrreset 16");
	CHECK(r == 0, "tpm2_pcrreset 16 (tpm2-tools present; status %d)", r);
	r = open_tpm(tcti, dir_p, "sha256:16", 10, NULL, &t);
	CHECK(r == 0, "tpm_open with tpm_pcrs=sha256:16 (%d)", r);
	if (r < 0)
		goto out;
	free(pem);
	pem = NULL;
	r = tpm_enroll(t, secret1, sizeof(secret1), &pem);
	CHECK(r == 0, "PCR-bound enrolment (%d)", r);
	if (r < 0)
		goto out;
	wlen_p = sizeof(wrapped_p);
	CHECK(wrap(pem, k, sizeof(k), EVP_sha256(), wrapped_p, &wlen_p) == 0,
	      "wrap to the bound key");
	olen = 0;
	r = tpm_unseal(t, out, sizeof(out), &olen);
	CHECK(r == 0 && olen == sizeof(secret1) && !memcmp(out, secret1, olen),
	      "bound unseal works while the PCR holds (%d)", r);
	olen = 0;
	r = tpm_unwrap(t, wrapped_p, wlen_p, out, sizeof(out), &olen);
	CHECK(r == 0 && olen == 32 && !memcmp(out, k, 32), "bound unwrap works (%d)", r);
	tpm_close(t);
	t = NULL;
	r = open_tpm(tcti, dir_p, "sha256:16", 10, NULL, &t);
	r = r ? r : tpm_load(t);
	olen = 0;
	r = r ? r : tpm_unwrap(t, wrapped_p, wlen_p, out, sizeof(out), &olen);
	CHECK(r == 0 && olen == 32 && !memcmp(out, k, 32), "and after a restart (%d)", r);

	r = tools(tcti, "tpm2_pcrextend 16:sha256=%s",
		  "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff");
	CHECK(r == 0, "tpm2_pcrextend 16 (status %d)", r);
	olen = 77;
	memset(out, 0xaa, sizeof(out));
	r = t ? tpm_unseal(t, out, sizeof(out), &olen) : -1;
	CHECK(r == -EACCES && olen == 77 && out[0] == 0xaa,
	      "after the PCR changed, unseal gives -EACCES and nothing (%d)", r);
	CHECK(t && strstr(tpm_last_error(t), "boot state changed") &&
		      strstr(tpm_last_error(t), "re-enrol"),
	      "the message tells the boot state changed and a login re-enrols: %s",
	      t ? tpm_last_error(t) : "");
	r = t ? tpm_unwrap(t, wrapped_p, wlen_p, out, sizeof(out), &olen) : -1;
	CHECK(r == -EACCES && olen == 77 && out[0] == 0xaa, "and unwrap gives -EACCES (%d)", r);
	free(pem);
	pem = NULL;
	r = t ? tpm_enroll(t, secret1, sizeof(secret1), &pem) : -1;
	CHECK(r == 0, "re-enrolment under the new PCR state (%d)", r);
	olen = 0;
	r = r ? r : tpm_unseal(t, out, sizeof(out), &olen);
	CHECK(r == 0 && olen == sizeof(secret1) && !memcmp(out, secret1, olen),
	      "unseal works again (%d)", r);
	wlen_p = sizeof(wrapped_p);
	r = pem ? wrap(pem, k, sizeof(k), EVP_sha256(), wrapped_p, &wlen_p) : -1;
	olen = 0;
	r = r ? r : tpm_unwrap(t, wrapped_p, wlen_p, out, sizeof(out), &olen);
	CHECK(r == 0 && olen == 32 && !memcmp(out, k, 32), "unwrap with the new key works (%d)", r);
	tpm_close(t);
	t = NULL;
	/* A changed tpm_pcrs does not break the enrolled binding; it warns. */
	r = open_tpm(tcti, dir_p, "sha256:7", 10, NULL, &t);
	r = r ? r : tpm_load(t);
	olen = 0;
	r = r ? r : tpm_unseal(t, out, sizeof(out), &olen);
	CHECK(r == 0 && olen == sizeof(secret1) && strstr(logs, "bound to PCRs \"sha256:16\""),
	      "with tpm_pcrs changed, the enrolled binding is used and a warning logged (%d)", r);
	tpm_close(t);
	t = NULL;
	CHECK(tools(tcti, "tpm2_pcrreset 16") == 0, "PCR 16 reset again");
	CHECK(!tpm_leaks(tcti), "no transient object or session left in the TPM");

	/* ---- a second TPM ---- */
	port = free_port_pair();
	sw = swtpm_start(sw_dir, port);
	CHECK(sw > 0 && port > 0, "a second swtpm started on port %d", port);
	snprintf(tcti2, sizeof(tcti2), "swtpm:host=127.0.0.1,port=%d", port);
	r = open_tpm(tcti2, dir_c, NULL, 10, NULL, &t2);
	CHECK(r == 0, "tpm_open waits for it and opens it (%d; is swtpm installed?)", r);
	if (r < 0)
		goto out;
	tpm_close(t2);
	t2 = NULL;
	CHECK(copy_files(dir_a, dir_c, all_files) == 0, "state_dir copied");
	r = open_tpm(tcti2, dir_c, NULL, 10, NULL, &t2);
	CHECK(r == 0, "tpm_open on the second TPM with the copied state_dir (%d)", r);
	if (r < 0)
		goto out;
	r = tpm_load(t2);
	CHECK(r == -ESTALE, "tpm_load of blobs from another TPM gives -ESTALE (%d)", r);
	CHECK(strstr(tpm_last_error(t2), "different TPM or a cleared one") != NULL,
	      "the message says the TPM is a different or cleared one: %s", tpm_last_error(t2));
	olen = 55;
	memset(out, 0xaa, sizeof(out));
	r = tpm_unwrap(t2, wrapped, wlen, out, sizeof(out), &olen);
	CHECK(r == -ESTALE && olen == 55 && out[0] == 0xaa, "unwrap: -ESTALE and nothing (%d)", r);
	r = tpm_unseal(t2, out, sizeof(out), &olen);
	CHECK(r == -ESTALE && olen == 55 && out[0] == 0xaa, "unseal: -ESTALE and nothing (%d)", r);
	tpm_close(t2);
	t2 = NULL;

	/* The second TPM's own SRK record, the first TPM's objects: the TPM's integrity check. */
	r = open_tpm(tcti2, dir_d, NULL, 10, NULL, &t2);
	r = r ? r : tpm_enroll(t2, "x", 1, &pem2);
	CHECK(r == 0, "enrolment on the second TPM (%d)", r);
	free(pem2);
	pem2 = NULL;
	tpm_close(t2);
	t2 = NULL;
	CHECK(copy_files(dir_a, dir_d, object_files) == 0, "the first TPM's objects copied over");
	r = open_tpm(tcti2, dir_d, NULL, 10, NULL, &t2);
	r = r ? r : tpm_load(t2);
	CHECK(r == -ESTALE, "tpm_load of another TPM's objects under this SRK gives -ESTALE (%d)",
	      r);
	CHECK(t2 && strstr(tpm_last_error(t2), "not this TPM's"), "and says why: %s",
	      t2 ? tpm_last_error(t2) : "");
	tpm_close(t2);
	t2 = NULL;

	/* Owner password, then a persistent SRK. */
	r = tools(tcti2, "tpm2_changeauth -c owner ownerpw");
	CHECK(r == 0, "owner password set on the second TPM (status %d)", r);
	r = open_tpm(tcti2, dir_e, NULL, 10, "wrong", &t2);
	r = r ? r : tpm_enroll(t2, "x", 1, &pem2);
	CHECK(r == -EACCES, "a wrong owner password gives -EACCES (%d)", r);
	CHECK(t2 && strstr(tpm_last_error(t2), "owner password"), "and says so: %s",
	      t2 ? tpm_last_error(t2) : "");
	tpm_close(t2);
	t2 = NULL;
	r = open_tpm(tcti2, dir_e, NULL, 10, "ownerpw", &t2);
	r = r ? r : tpm_enroll(t2, secret2, sizeof(secret2), &pem2);
	olen = 0;
	r = r ? r : tpm_unseal(t2, out, sizeof(out), &olen);
	CHECK(r == 0 && olen == 300 && !memcmp(out, secret2, 300),
	      "with the right owner password, enrolment and unseal work (%d)", r);
	free(pem2);
	pem2 = NULL;
	tpm_close(t2);
	t2 = NULL;
	{
		char ctx[4200];

		snprintf(ctx, sizeof(ctx), "%s/srk.ctx", sw_dir);
		r = tools(tcti2,
			  "tpm2_createprimary -Q -C o -P ownerpw -g sha256 -G ecc -c %s && "
			  "tpm2_evictcontrol -Q -C o -P ownerpw -c %s 0x81000001 && "
			  "tpm2_flushcontext -t",
			  ctx, ctx);
		CHECK(r == 0, "a persistent SRK at 0x81000001 (status %d)", r);
	}
	rm_rf(dir_e);
	mkdir(dir_e, 0700);
	r = open_tpm(tcti2, dir_e, NULL, 10, NULL, &t2);
	r = r ? r : tpm_enroll(t2, secret2, sizeof(secret2), &pem2);
	CHECK(r == 0, "enrolment under the persistent SRK, no owner password needed (%d)", r);
	tpm_close(t2);
	t2 = NULL;
	r = open_tpm(tcti2, dir_e, NULL, 10, NULL, &t2);
	r = r ? r : tpm_load(t2);
	olen = 0;
	r = r ? r : tpm_unseal(t2, out, sizeof(out), &olen);
	CHECK(r == 0 && olen == 300 && !memcmp(out, secret2, 300),
	      "load and unseal under the persistent SRK (%d)", r);

	{
		/* This swtpm was never provisioned: no EK certificate, no attestation. */
		struct tpm_attest *a = NULL;

		r = tpm_attest_new(t2, &a);
		CHECK(r == -ENOKEY && !a, "a TPM without an EK certificate cannot attest (%d)", r);
		CHECK(strstr(tpm_last_error(t2), "swtpm_setup --create-ek-cert") &&
			      strstr(tpm_last_error(t2), "Jetson") &&
			      strstr(tpm_last_error(t2), "tpm2_nvwrite"),
		      "and the message says how to provision one");
	}
	{
		/* The stack's swtpm was, as a manufacturer does (scripts/stack). */
		struct tpm *ts = NULL;
		struct tpm_attest *a = NULL;
		const uint8_t *d = NULL;
		const unsigned char *pp;
		size_t n = 0;
		X509 *x = NULL;

		r = open_tpm(tcti, dir_a, NULL, 10, NULL, &ts);
		r = r ? r : tpm_attest_new(ts, &a);
		CHECK(r == 0 && a, "the stack's swtpm attests: EK certificate, EK, AK (%d)", r);
		if (a && tpm_attest_item(a, TPM_ATTEST_EK_CERT, &d, &n) == 0) {
			pp = d;
			x = d2i_X509(NULL, &pp, (long)n);
		}
		CHECK(x != NULL, "its EK certificate is DER X.509");
		X509_free(x);
		CHECK(a && tpm_attest_item(a, TPM_ATTEST_SECRET, &d, &n) == -ENOENT,
		      "no credential before a challenge is answered");
		r = a ? tpm_attest_prove(ts, a, (const uint8_t *)"\0\5x", 3,
					 (const uint8_t *)"\0\0", 2, (const uint8_t *)"n", 1)
		      : -1;
		CHECK(r == -EBADMSG, "a malformed credential blob: -EBADMSG (%d)", r);
		tpm_attest_free(a);
		tpm_close(ts);
	}
	tpm_close(t2);
	t2 = NULL;
	CHECK(!tpm_leaks(tcti2), "none left in the second TPM either");
	CHECK(!memmem(logs, logs_len, secret1, sizeof(secret1) - 3) &&
		      !memmem(logs, logs_len, secret2, 16),
	      "no secret reached the log");
out:
	tpm_close(t);
	tpm_close(t2);
	free(pem);
	free(pem2);
	swtpm_stop(sw);
	rm_rf(dir_a);
	rm_rf(dir_p);
	rm_rf(dir_c);
	rm_rf(dir_d);
	rm_rf(dir_e);
	rm_rf(sw_dir);
	return check_done();
}
