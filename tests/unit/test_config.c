/*
 * test_config.c - the settings table: defaults, the file and -o, and one
 * clear message naming the key (and the line) for every bad input.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <syslog.h>
#include <unistd.h>

#include "crypto/crypto.h"
#include "fs/config.h"
#include "fs/names.h"
#include "tests/unit/check.h"

static char tmpdir[] = "/tmp/test_config.XXXXXX";

static const char *write_file(const char *name, const char *text, mode_t mode)
{
	static char path[256];
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", tmpdir, name);
	f = fopen(path, "w");
	fputs(text, f);
	fclose(f);
	chmod(path, mode);
	return path;
}

static void test_defaults(void)
{
	struct config *c = NULL;

	CHECK(config_new(&c) == 0, "config_new");
	CHECK(!strcmp(c->api_url, "https://api.azaion.com"), "api_url default");
	CHECK(c->cdn_url == NULL, "cdn_url unset by default");
	CHECK(!strcmp(c->folder, "models"), "folder default");
	CHECK(c->memory_cache == 64ULL << 20, "memory_cache default 64M");
	CHECK(c->cache_max == 4ULL << 30, "cache_max default 4G");
	CHECK(c->readahead_max == 8ULL << 20, "readahead_max default 8M");
	CHECK(c->catalog_ttl == 300 && c->io_timeout == 30 && c->tpm_wait == 60,
	      "seconds defaults");
	CHECK(c->tpm == CONFIG_TPM_AUTO, "tpm default auto");
	CHECK(!strcmp(c->tpm_tcti, "device:/dev/tpmrm0"), "tpm_tcti default");
	CHECK(!strcmp(config_tpm_pcrs(c), ""), "tpm_pcrs default empty with tpm = auto");
	CHECK(!strcmp(c->rest_listen, "127.0.0.1:8080") && !c->rest_public, "rest defaults");
	CHECK(c->rest_hosts && !strcmp(c->rest_hosts[0], "loader") && !c->rest_hosts[1] &&
		      !c->rest_upload && !strcmp(c->rest_group, "azaion") && !c->rest_token_file &&
		      !c->metrics_listen,
	      "rest_hosts loader, rest_upload false, rest_group azaion, no token, no "
	      "metrics_listen");
	CHECK(c->images && !strcmp(c->images[0], "azaion/annotations") && c->images[6] &&
		      !strcmp(c->images[6], "azaion/ai-training") && !c->images[7],
	      "the seven default images");
	CHECK(c->log_level == LOG_INFO, "log_level default info");
	config_set(c, "tpm", "required", "-o", NULL);
	CHECK(!strcmp(config_tpm_pcrs(c), "sha256:7"), "tpm = required binds to PCR 7 by default");
	CHECK(config_set(c, "tpm_pcrs", "none", "-o", NULL) == 0 && !strcmp(config_tpm_pcrs(c), ""),
	      "tpm_pcrs = none opts out of the binding");
	CHECK(config_set(c, "tpm_pcrs", "sha256:0,7", "-o", NULL) == 0 &&
		      !strcmp(config_tpm_pcrs(c), "sha256:0,7"),
	      "an explicit tpm_pcrs wins");
	config_free(c);
}

static void test_file_and_options(void)
{
	struct config *c = NULL;
	char *msg = NULL;
	const char *path;

	path = write_file("good.conf",
			  "# a comment\n"
			  "api_url = https://127.0.0.1:9443/  # trailing comment\n"
			  "  folder=weights\n"
			  "models = a.onnx, b.engine ,c.bin\n"
			  "memory_cache = 16M\n"
			  "tpm = off\n"
			  "tpm_pcrs = sha256:0,2,7\n"
			  "rest_public = true\n"
			  "hardware_id = \"CPU: x. GPU: y. Memory: z. DriveSerial: s\"\n",
			  0644);
	config_new(&c);
	CHECK(config_load_file(c, path, &msg) == 0, "a valid file loads (%s)", msg ? msg : "");
	CHECK(!strcmp(c->api_url, "https://127.0.0.1:9443"), "trailing slash and comment dropped");
	CHECK(!strcmp(c->folder, "weights"), "spaces around '=' optional");
	CHECK(c->models && !strcmp(c->models[1], "b.engine") && !strcmp(c->models[2], "c.bin") &&
		      !c->models[3],
	      "models list parsed");
	CHECK(c->memory_cache == 16ULL << 20, "size suffix");
	CHECK(c->tpm == CONFIG_TPM_OFF, "tpm off");
	CHECK(!strcmp(c->hardware_id, "CPU: x. GPU: y. Memory: z. DriveSerial: s"),
	      "quotes stripped");
	CHECK(config_set(c, "folder", "other", "-o", &msg) == 0 && !strcmp(c->folder, "other"),
	      "-o wins over the file");
	config_free(c);
	free(msg);
}

static void expect_file_error(const char *text, const char *want1, const char *want2)
{
	struct config *c = NULL;
	char *msg = NULL;
	const char *path = write_file("bad.conf", text, 0644);
	int r;

	config_new(&c);
	r = config_load_file(c, path, &msg);
	CHECK(r < 0 && msg && strstr(msg, want1) && strstr(msg, want2), "bad file refused with: %s",
	      msg ? msg : "(no message)");
	config_free(c);
	free(msg);
}

static void test_errors(void)
{
	struct config *c = NULL;
	char *msg = NULL;

	expect_file_error("folder = x\nbogus = 1\n", "bad.conf:2", "unknown key 'bogus'");
	expect_file_error("tpm = sometimes\n", "bad.conf:1", "tpm");
	expect_file_error("\n\nmemory_cache = lots\n", "bad.conf:3", "memory_cache");
	expect_file_error("io_timeout = -1\n", "bad.conf:1", "io_timeout");
	expect_file_error("rest_public = maybe\n", "bad.conf:1", "rest_public");
	expect_file_error("api_url = ftp://x\n", "bad.conf:1", "api_url");
	expect_file_error("tpm_pcrs = sha256:99\n", "bad.conf:1", "tpm_pcrs");
	expect_file_error("models = a,,b\n", "bad.conf:1", "models");
	expect_file_error("log_level = loud\n", "bad.conf:1", "log_level");
	expect_file_error("just words\n", "bad.conf:1", "key = value");

	config_new(&c);
	CHECK(config_set(c, "nope", "1", "-o", &msg) == -ENOENT && msg &&
		      strstr(msg, "-o: unknown key 'nope'"),
	      "-o unknown key named");
	free(msg);
	msg = NULL;
	/* A typo gets the nearest key; another word gets none. */
	CHECK(config_set(c, "cach_dir", "/x", "-o", &msg) == -ENOENT && msg &&
		      strstr(msg, "unknown key 'cach_dir'; did you mean cache_dir?"),
	      "a typo names the nearest key");
	free(msg);
	msg = NULL;
	CHECK(config_nearest_key("tpm_tcit") && !strcmp(config_nearest_key("tpm_tcit"), "tpm_tcti"),
	      "a swapped pair is one slip");
	CHECK(config_nearest_key("tcti") && !strcmp(config_nearest_key("tcti"), "tpm_tcti"),
	      "the distinctive part of one key");
	CHECK(config_nearest_key("log_levl") &&
		      !strcmp(config_nearest_key("log_levl"), "log_level"),
	      "a dropped letter");
	CHECK(!config_nearest_key("port"), "no key near 'port'");
	CHECK(!config_nearest_key("cache"), "'cache' is part of two keys: no guess");
	CHECK(!config_nearest_key("zzzzzzzzzzzz"), "nothing near a word far from every key");
	CHECK(!config_nearest_key(""), "no guess for an empty key");
	CHECK(config_load_file(c, "/nonexistent/azaionfs.conf", &msg) == -ENOENT && msg &&
		      strstr(msg, "/nonexistent/azaionfs.conf"),
	      "missing file named");
	free(msg);
	msg = NULL;
	config_set(c, "rest_listen", "0.0.0.0:8080", "-o", NULL);
	CHECK(config_check(c, &msg) < 0 && msg && strstr(msg, "rest_public"),
	      "non-loopback rest_listen needs rest_public");
	free(msg);
	msg = NULL;
	config_set(c, "rest_public", "true", "-o", NULL);
	CHECK(config_check(c, &msg) < 0 && msg && strstr(msg, "rest_token_file"),
	      "rest_public without rest_token_file is refused");
	free(msg);
	msg = NULL;
	config_set(c, "rest_token_file", "/etc/azaion/rest.token", "-o", NULL);
	CHECK(config_check(c, &msg) == 0, "with rest_public and a token it is accepted");
	config_set(c, "rest_public", "false", "-o", NULL);
	config_set(c, "rest_listen", "127.0.0.1:8080", "-o", NULL);
	config_set(c, "metrics_listen", "0.0.0.0:9100", "-o", NULL);
	CHECK(config_check(c, &msg) < 0 && msg && strstr(msg, "metrics_listen"),
	      "a non-loopback metrics_listen needs rest_public");
	free(msg);
	msg = NULL;
	config_set(c, "metrics_listen", "[::1]:9100", "-o", NULL);
	CHECK(config_check(c, &msg) == 0, "metrics_listen on [::1] accepted");
	config_set(c, "rest_public", "true", "-o", NULL);
	config_set(c, "rest_listen", "unix:/run/azaion.sock", "-o", NULL);
	CHECK(config_check(c, &msg) == 0, "unix socket accepted");
	config_set(c, "memory_cache", "1M", "-o", NULL);
	CHECK(config_check(c, &msg) < 0 && msg && strstr(msg, "memory_cache"),
	      "too small memory_cache refused");
	free(msg);
	config_free(c);
}

static void test_loopback(void)
{
	CHECK(config_listen_loopback("127.0.0.1:8080") == 1, "127.0.0.1 is loopback");
	CHECK(config_listen_loopback("127.1:8080") == 1, "127.1 resolves to loopback");
	CHECK(config_listen_loopback("[::1]:8080") == 1, "[::1] is loopback");
	CHECK(config_listen_loopback("[::ffff:127.0.0.9]:8080") == 1,
	      "a v4-mapped 127/8 address is loopback");
	CHECK(config_listen_loopback("localhost:8080") == 1, "localhost resolves to loopback");
	CHECK(config_listen_loopback("unix:/run/azaionfs.sock") == 1, "unix: counts as loopback");
	CHECK(config_listen_loopback("0.0.0.0:8080") == 0, "0.0.0.0 is not");
	CHECK(config_listen_loopback(":8080") == 0 && config_listen_loopback("*:8080") == 0,
	      "no host (every address) is not");
	CHECK(config_listen_loopback("[::]:8080") == 0, "[::] is not");
	CHECK(config_listen_loopback("192.0.2.1:8080") == 0, "a TEST-NET address is not");
	CHECK(config_listen_loopback("128.0.0.1:8080") == 0, "128.0.0.1 is not");
	CHECK(config_listen_loopback("no-such-host.invalid:8080") < 0,
	      "a name that does not resolve is an error");
}

static void test_sizes(void)
{
	uint64_t v = 0;

	CHECK(config_parse_size("1024", &v) == 0 && v == 1024, "plain bytes");
	CHECK(config_parse_size("4k", &v) == 0 && v == 4096, "k suffix");
	CHECK(config_parse_size("2G", &v) == 0 && v == 2ULL << 30, "G suffix");
	CHECK(config_parse_size("8MB", &v) == 0 && v == 8ULL << 20, "MB suffix");
	CHECK(config_parse_size("8X", &v) < 0, "bad suffix refused");
	CHECK(config_parse_size("", &v) < 0 && config_parse_size("-1", &v) < 0,
	      "empty and negative refused");
	CHECK(config_parse_size("99999999999999999999G", &v) < 0, "overflow refused");
}

static void test_secret_files(void)
{
	char *email = NULL, *password = NULL, *msg = NULL, *secret = NULL;
	const char *path;
	size_t len = 0;

	path = write_file("creds", "email = a@b.c\npassword = p4ss word\n", 0600);
	CHECK(config_read_credentials(path, &email, &password, &msg) == 0 &&
		      !strcmp(email, "a@b.c") && !strcmp(password, "p4ss word"),
	      "credentials read");
	secmem_free(email);
	secmem_free(password);
	path = write_file("creds-open", "email = a@b.c\npassword = x\n", 0644);
	CHECK(config_read_credentials(path, &email, &password, &msg) == -EACCES && msg &&
		      strstr(msg, "chmod 600"),
	      "credentials readable by others refused: %s", msg ? msg : "");
	free(msg);
	msg = NULL;
	path = write_file("creds-half", "email = a@b.c\n", 0600);
	CHECK(config_read_credentials(path, &email, &password, &msg) == -EINVAL && msg &&
		      strstr(msg, "password"),
	      "credentials without a password refused");
	free(msg);
	msg = NULL;
	path = write_file("secret", "s3cr3t\n", 0600);
	CHECK(config_read_secret_file(path, 1, &secret, &len, &msg) == 0 && len == 6 &&
		      !strcmp(secret, "s3cr3t"),
	      "secret file read without its newline");
	secmem_free(secret);
}

static void test_names(void)
{
	char long_name[300];
	char *e;

	memset(long_name, 'a', 256);
	long_name[256] = '\0';
	CHECK(names_valid("yolo11m.onnx") && names_valid("a b") && names_valid(".hidden"),
	      "ordinary names valid");
	CHECK(!names_valid("") && !names_valid(".") && !names_valid("..") && !names_valid("a/b") &&
		      !names_valid(long_name),
	      "hostile names refused");
	long_name[255] = '\0';
	CHECK(names_valid(long_name), "255 bytes is the limit");
	e = names_url_escape("a b/#?%.onnx");
	CHECK(e && !strcmp(e, "a%20b%2F%23%3F%25.onnx"), "URL escaping: %s", e ? e : "");
	free(e);
}

int main(void)
{
	if (!mkdtemp(tmpdir)) {
		perror("mkdtemp");
		return 1;
	}
	test_defaults();
	test_file_and_options();
	test_errors();
	test_loopback();
	test_sizes();
	test_secret_files();
	test_names();
	{
		char cmd[300];

		snprintf(cmd, sizeof(cmd), "rm -rf %s", tmpdir);
		if (system(cmd) != 0)
			fprintf(stderr, "cannot remove %s\n", tmpdir);
	}
	return check_done();
}
