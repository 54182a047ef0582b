/*
 * config.c - the settings table of docs/config.md and its two sources, the
 * file and -o key=value. One table drives parsing, defaults and messages,
 * so a key cannot be known to one source and not the other.
 */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>

#include "crypto/crypto.h"
#include "fs/config.h"
#include "fs/log.h"
#include "fs/msg.h"

#define CONFIG_LINE_MAX 4096
#define CONFIG_FILE_MAX (1024 * 1024)
#define CONFIG_SECRET_MAX (64 * 1024)

enum config_type {
	T_STR,	/* text, never empty */
	T_OPT,	/* text, may be empty (NULL) */
	T_URL,	/* http:// or https:// */
	T_LIST, /* comma-separated names */
	T_BOOL,
	T_SECONDS, /* unsigned */
	T_SIZE,	   /* bytes with K, M, G suffix */
	T_TPM,
	T_LEVEL,
	T_PCRS,
	T_MEMLOCK,
};

struct config_key {
	const char *name;
	enum config_type type;
	size_t offset;
	const char *def; /* NULL: unset */
};

#define K(n, t, d)                                   \
	{                                            \
#n, t, offsetof(struct config, n), d \
	}
static const struct config_key config_keys[] = {
	K(api_url, T_URL, "https://api.azaion.com"),
	K(cdn_url, T_URL, NULL),
	K(s3_access_key, T_OPT, NULL),
	K(s3_secret_key_file, T_OPT, NULL),
	K(s3_region, T_STR, "us-east-1"),
	K(folder, T_STR, "models"),
	K(models, T_LIST, NULL),
	K(ca_file, T_OPT, NULL),
	K(credentials, T_OPT, NULL),
	K(hardware_id, T_OPT, NULL),
	K(legacy_resource_secret_file, T_OPT, NULL),
	K(tpm, T_TPM, "auto"),
	K(tpm_tcti, T_STR, "device:/dev/tpmrm0"),
	K(tpm_pcrs, T_PCRS, NULL), /* unset: config_tpm_pcrs() */
	K(tpm_owner_auth_file, T_OPT, NULL),
	K(tpm_wait, T_SECONDS, "60"),
	K(state_dir, T_STR, "/var/lib/azaionfs"),
	K(cache_dir, T_OPT, "/var/cache/azaionfs"),
	K(cache_max, T_SIZE, "4G"),
	K(memory_cache, T_SIZE, "64M"),
	K(catalog_ttl, T_SECONDS, "300"),
	K(io_timeout, T_SECONDS, "30"),
	K(key_ttl, T_SECONDS, "600"),
	K(readahead_max, T_SIZE, "8M"),
	K(rest_listen, T_STR, "127.0.0.1:8080"),
	K(rest_public, T_BOOL, "false"),
	K(rest_hosts, T_LIST, "loader"),
	K(rest_upload, T_BOOL, "false"),
	K(rest_group, T_STR, "azaion"),
	K(rest_token_file, T_OPT, NULL),
	K(metrics_listen, T_OPT, NULL),
	K(images_archive, T_STR, "/opt/azaion/images.enc"),
	K(images_resource, T_STR, "images.tar"),
	K(images, T_LIST,
	  "azaion/annotations, azaion/flights, azaion/detections, azaion/gps-denied-onboard, "
	  "azaion/gps-denied-desktop, azaion/autopilot, azaion/ai-training"),
	K(images_version, T_STR, "latest"),
	K(docker_socket, T_STR, "/var/run/docker.sock"),
	K(log_level, T_LEVEL, "info"),
	K(log_file, T_OPT, NULL),
	K(memory_lock, T_MEMLOCK, "all"),
	K(kernel_resend, T_BOOL, "true"),
};
#undef K
#define CONFIG_NKEYS (sizeof(config_keys) / sizeof(config_keys[0]))

static void config_fail(char **ret_msg, const char *where, const char *key, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
static void config_fail(char **ret_msg, const char *where, const char *key, const char *fmt, ...)
{
	char *detail = NULL;
	va_list ap;

	if (!ret_msg)
		return;
	free(*ret_msg);
	va_start(ap, fmt);
	if (vasprintf(&detail, fmt, ap) < 0)
		detail = NULL;
	va_end(ap);
	*ret_msg = msg_fmt("%s: %s: %s", where, key, detail ? detail : "invalid");
	free(detail);
}

static const struct config_key *config_find(const char *key)
{
	for (size_t i = 0; i < CONFIG_NKEYS; i++)
		if (strcmp(config_keys[i].name, key) == 0)
			return &config_keys[i];
	return NULL;
}

int config_is_key(const char *key)
{
	return config_find(key) != NULL;
}

static void config_free_list(char **list)
{
	if (!list)
		return;
	for (char **p = list; *p; p++)
		free(*p);
	free(list);
}

static char *config_trim(char *s)
{
	char *end;

	while (isspace((unsigned char)*s))
		s++;
	end = s + strlen(s);
	while (end > s && isspace((unsigned char)end[-1]))
		*--end = '\0';
	return s;
}

/* "a, b ,c" -> {"a","b","c",NULL}; empty items are refused. */
static int config_parse_list(const char *value, char ***ret)
{
	char *copy, *item, *rest;
	char **list = NULL;
	size_t n = 0;
	int r = -ENOMEM;

	copy = strdup(value);
	if (!copy)
		return -ENOMEM;
	rest = copy;
	/* strsep, not strtok: "a,,b" must show its empty item to be refused. */
	while ((item = strsep(&rest, ","))) {
		char **grown;

		item = config_trim(item);
		if (!*item) {
			r = -EINVAL;
			goto out_list;
		}
		grown = realloc(list, (n + 2) * sizeof(*list));
		if (!grown)
			goto out_list;
		list = grown;
		list[n] = strdup(item);
		if (!list[n])
			goto out_list;
		list[++n] = NULL;
	}
	if (n == 0) {
		r = -EINVAL;
		goto out_list;
	}
	*ret = list;
	free(copy);
	return 0;

out_list:
	config_free_list(list);
	free(copy);
	return r;
}

int config_parse_size(const char *s, uint64_t *ret)
{
	char *end;
	unsigned long long v;
	uint64_t mul = 1;

	if (!isdigit((unsigned char)*s))
		return -EINVAL;
	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno)
		return -EINVAL;
	switch (toupper((unsigned char)*end)) {
	case '\0':
		break;
	case 'K':
		mul = 1ULL << 10;
		break;
	case 'M':
		mul = 1ULL << 20;
		break;
	case 'G':
		mul = 1ULL << 30;
		break;
	case 'T':
		mul = 1ULL << 40;
		break;
	default:
		return -EINVAL;
	}
	if (*end && end[1] != '\0' && !(toupper((unsigned char)end[1]) == 'B' && end[2] == '\0'))
		return -EINVAL;
	if (v > UINT64_MAX / mul)
		return -EINVAL;
	*ret = v * mul;
	return 0;
}

static int config_parse_seconds(const char *s, unsigned *ret)
{
	char *end;
	unsigned long v;

	if (!isdigit((unsigned char)*s))
		return -EINVAL;
	errno = 0;
	v = strtoul(s, &end, 10);
	if (errno || *end || v > 86400 * 365)
		return -EINVAL;
	*ret = (unsigned)v;
	return 0;
}

static int config_parse_bool(const char *s, int *ret)
{
	if (!strcmp(s, "true") || !strcmp(s, "yes") || !strcmp(s, "1") || !strcmp(s, "on"))
		*ret = 1;
	else if (!strcmp(s, "false") || !strcmp(s, "no") || !strcmp(s, "0") || !strcmp(s, "off"))
		*ret = 0;
	else
		return -EINVAL;
	return 0;
}

/* "" or "bank:n,n,...[+bank:...]" with PCR numbers 0..23. */
static int config_check_pcrs(const char *s)
{
	const char *p = s;

	if (!*s)
		return 0;
	while (*p) {
		if (strncmp(p, "sha256:", 7) == 0)
			p += 7;
		else if (strncmp(p, "sha1:", 5) == 0)
			p += 5;
		else if (strncmp(p, "sha384:", 7) == 0)
			p += 7;
		else
			return -EINVAL;
		for (;;) {
			char *end;
			long n;

			if (!isdigit((unsigned char)*p))
				return -EINVAL;
			n = strtol(p, &end, 10);
			if (n < 0 || n > 23)
				return -EINVAL;
			p = end;
			if (*p != ',')
				break;
			p++;
		}
		if (*p == '+')
			p++;
		else if (*p)
			return -EINVAL;
	}
	return 0;
}

static int config_assign(struct config *c, const struct config_key *k, const char *value,
			 const char *where, char **ret_msg)
{
	void *field = (char *)c + k->offset;
	char *copy;
	int r;

	switch (k->type) {
	case T_URL:
		if (strncmp(value, "https://", 8) != 0 && strncmp(value, "http://", 7) != 0) {
			config_fail(ret_msg, where, k->name,
				    "expected an http:// or https:// URL, got '%s'", value);
			return -EINVAL;
		}
		/* fall through */
	case T_STR:
	case T_PCRS:
	case T_OPT:
		if (!*value && (k->type == T_STR || k->type == T_URL)) {
			config_fail(ret_msg, where, k->name, "must not be empty");
			return -EINVAL;
		}
		/* "none": the explicit opt-out of the default binding (config_tpm_pcrs). */
		if (k->type == T_PCRS && !strcmp(value, "none"))
			value = "";
		if (k->type == T_PCRS && config_check_pcrs(value) < 0) {
			config_fail(ret_msg, where, k->name,
				    "expected a PCR selection such as sha256:0,2,7, got '%s'",
				    value);
			return -EINVAL;
		}
		copy = *value || k->type == T_PCRS ? strdup(value) : NULL;
		if (*value && !copy)
			return -ENOMEM;
		free(*(char **)field);
		*(char **)field = copy;
		/* A URL with a trailing slash would double it in every path. */
		if (k->type == T_URL)
			while (strlen(copy) > 8 && copy[strlen(copy) - 1] == '/')
				copy[strlen(copy) - 1] = '\0';
		return 0;
	case T_LIST: {
		char **list = NULL;

		r = config_parse_list(value, &list);
		if (r < 0) {
			if (r == -EINVAL)
				config_fail(ret_msg, where, k->name,
					    "expected a comma-separated list of names, got '%s'",
					    value);
			return r;
		}
		config_free_list(*(char ***)field);
		*(char ***)field = list;
		return 0;
	}
	case T_BOOL:
		if (config_parse_bool(value, (int *)field) < 0) {
			config_fail(ret_msg, where, k->name, "expected true or false, got '%s'",
				    value);
			return -EINVAL;
		}
		return 0;
	case T_SECONDS:
		if (config_parse_seconds(value, (unsigned *)field) < 0) {
			config_fail(ret_msg, where, k->name,
				    "expected a whole number of seconds, got '%s'", value);
			return -EINVAL;
		}
		return 0;
	case T_SIZE:
		if (config_parse_size(value, (uint64_t *)field) < 0) {
			config_fail(ret_msg, where, k->name,
				    "expected a size such as 64M or 4G, got '%s'", value);
			return -EINVAL;
		}
		return 0;
	case T_TPM:
		if (!strcmp(value, "auto"))
			c->tpm = CONFIG_TPM_AUTO;
		else if (!strcmp(value, "required"))
			c->tpm = CONFIG_TPM_REQUIRED;
		else if (!strcmp(value, "off"))
			c->tpm = CONFIG_TPM_OFF;
		else {
			config_fail(ret_msg, where, k->name,
				    "expected auto, required or off, got '%s'", value);
			return -EINVAL;
		}
		return 0;
	case T_MEMLOCK:
		if (!strcmp(value, "all"))
			c->memory_lock = CONFIG_MEMLOCK_ALL;
		else if (!strcmp(value, "best-effort"))
			c->memory_lock = CONFIG_MEMLOCK_BEST_EFFORT;
		else {
			config_fail(ret_msg, where, k->name,
				    "expected all or best-effort, got '%s'", value);
			return -EINVAL;
		}
		return 0;
	case T_LEVEL:
		r = log_level_parse(value);
		if (r < 0) {
			config_fail(ret_msg, where, k->name,
				    "expected error, warn, info or debug, got '%s'", value);
			return -EINVAL;
		}
		c->log_level = r;
		return 0;
	}
	return -EINVAL;
}

/* Edit distance with transpositions (a swapped pair is one slip); keys are short. */
static size_t config_distance(const char *a, const char *b)
{
	size_t la = strlen(a), lb = strlen(b), d[3][64];
	size_t *prev2 = d[0], *prev = d[1], *cur = d[2], *t;

	if (la >= 63 || lb >= 63)
		return SIZE_MAX;
	for (size_t j = 0; j <= lb; j++)
		prev[j] = j;
	for (size_t i = 1; i <= la; i++) {
		cur[0] = i;
		for (size_t j = 1; j <= lb; j++) {
			size_t v = prev[j - 1] + (a[i - 1] != b[j - 1]);

			if (prev[j] + 1 < v)
				v = prev[j] + 1;
			if (cur[j - 1] + 1 < v)
				v = cur[j - 1] + 1;
			if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] &&
			    prev2[j - 2] + 1 < v)
				v = prev2[j - 2] + 1;
			cur[j] = v;
		}
		t = prev2;
		prev2 = prev;
		prev = cur;
		cur = t;
	}
	return prev[lb];
}

const char *config_nearest_key(const char *key)
{
	const char *best = NULL, *part = NULL;
	size_t best_d = SIZE_MAX, len = strlen(key), limit;
	int parts = 0;

	for (size_t i = 0; i < CONFIG_NKEYS; i++) {
		size_t d = config_distance(key, config_keys[i].name);

		if (d < best_d) {
			best_d = d;
			best = config_keys[i].name;
		}
		if (len >= 4 && strstr(config_keys[i].name, key)) {
			part = config_keys[i].name;
			parts++;
		}
	}
	/* A slip of a key, not another word: one edit in a short key, up to three in a long one. */
	limit = len <= 4 ? 1 : len <= 8 ? 2 : 3;
	if (best_d <= limit)
		return best;
	/* Or the distinctive part of exactly one key ("tcti" for tpm_tcti). */
	return parts == 1 ? part : NULL;
}

int config_set(struct config *c, const char *key, const char *value, const char *where,
	       char **ret_msg)
{
	const struct config_key *k = config_find(key);

	if (!k) {
		if (ret_msg) {
			const char *near = config_nearest_key(key);

			free(*ret_msg);
			if (near)
				*ret_msg = msg_fmt("%s: unknown key '%s'; did you mean %s?", where,
						   key, near);
			else
				*ret_msg = msg_fmt("%s: unknown key '%s' (azaionfs(8) lists the "
						   "keys)",
						   where, key);
		}
		return -ENOENT;
	}
	return config_assign(c, k, value, where, ret_msg);
}

int config_new(struct config **ret)
{
	struct config *c;
	char *msg = NULL;

	c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	for (size_t i = 0; i < CONFIG_NKEYS; i++) {
		if (!config_keys[i].def)
			continue;
		if (config_assign(c, &config_keys[i], config_keys[i].def, "default", &msg) < 0) {
			free(msg);
			config_free(c);
			return -ENOMEM;
		}
	}
	*ret = c;
	return 0;
}

void config_free(struct config *c)
{
	if (!c)
		return;
	for (size_t i = 0; i < CONFIG_NKEYS; i++) {
		void *field = (char *)c + config_keys[i].offset;

		switch (config_keys[i].type) {
		case T_STR:
		case T_OPT:
		case T_URL:
		case T_PCRS:
			free(*(char **)field);
			break;
		case T_LIST:
			config_free_list(*(char ***)field);
			break;
		default:
			break;
		}
	}
	free(c);
}

/* Strips a trailing comment (a # after white space) and matching quotes. */
static char *config_value(char *v)
{
	size_t n;

	for (char *p = v; *p; p++)
		if (*p == '#' && (p == v || isspace((unsigned char)p[-1]))) {
			*p = '\0';
			break;
		}
	v = config_trim(v);
	n = strlen(v);
	if (n >= 2 && ((v[0] == '"' && v[n - 1] == '"') || (v[0] == '\'' && v[n - 1] == '\''))) {
		v[n - 1] = '\0';
		v++;
	}
	return v;
}

int config_load_file(struct config *c, const char *path, char **ret_msg)
{
	FILE *f;
	char line[CONFIG_LINE_MAX + 2];
	char where[512];
	unsigned lineno = 0;
	size_t total = 0;
	int r = 0;

	f = fopen(path, "re");
	if (!f) {
		r = -errno;
		if (ret_msg)
			*ret_msg = msg_fmt("%s: cannot read the configuration: %s", path,
					   strerror(errno));
		return r;
	}
	while (fgets(line, sizeof(line), f)) {
		char *key, *eq, *s;
		size_t len = strlen(line);

		lineno++;
		total += len;
		snprintf(where, sizeof(where), "%s:%u", path, lineno);
		if (total > CONFIG_FILE_MAX || (len > CONFIG_LINE_MAX && line[len - 1] != '\n')) {
			if (ret_msg)
				*ret_msg = msg_fmt("%s: line too long", where);
			r = -EINVAL;
			goto out_file;
		}
		if (memchr(line, '\0', len) != NULL && strlen(line) != len) {
			if (ret_msg)
				*ret_msg = msg_fmt("%s: NUL byte in the line", where);
			r = -EINVAL;
			goto out_file;
		}
		s = config_trim(line);
		if (!*s || *s == '#')
			continue;
		eq = strchr(s, '=');
		if (!eq) {
			if (ret_msg)
				*ret_msg = msg_fmt("%s: expected 'key = value', got '%.64s'", where,
						   s);
			r = -EINVAL;
			goto out_file;
		}
		*eq = '\0';
		key = config_trim(s);
		r = config_set(c, key, config_value(eq + 1), where, ret_msg);
		if (r < 0)
			goto out_file;
	}
	if (ferror(f)) {
		r = -EIO;
		if (ret_msg)
			*ret_msg = msg_fmt("%s: read error", path);
	}
out_file:
	fclose(f);
	return r;
}

int config_addr_loopback(const void *sockaddr)
{
	const struct sockaddr *sa = sockaddr;

	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *in = sockaddr;

		return (ntohl(in->sin_addr.s_addr) >> 24) == 127;
	}
	if (sa->sa_family == AF_INET6) {
		const struct in6_addr *a = &((const struct sockaddr_in6 *)sockaddr)->sin6_addr;

		return IN6_IS_ADDR_LOOPBACK(a) ||
		       (IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr[12] == 127);
	}
	return 0;
}

int config_listen_loopback(const char *listen)
{
	struct addrinfo hints = {.ai_flags = AI_NUMERICSERV, .ai_socktype = SOCK_STREAM};
	struct addrinfo *res = NULL, *ai;
	const char *colon = strrchr(listen, ':');
	char host[256];
	size_t hl;
	int r = 1;

	if (strncmp(listen, "unix:", 5) == 0)
		return 1;
	if (!colon || (size_t)(colon - listen) >= sizeof(host))
		return -EINVAL;
	hl = (size_t)(colon - listen);
	if (hl >= 2 && listen[0] == '[' && listen[hl - 1] == ']')
		snprintf(host, sizeof(host), "%.*s", (int)hl - 2, listen + 1);
	else
		snprintf(host, sizeof(host), "%.*s", (int)hl, listen);
	/* No host is every address; "*" is what some write for it. */
	if (!*host || strcmp(host, "*") == 0)
		return 0;
	/* What the name stands for, not how it is spelt (docs/trust.md). */
	if (getaddrinfo(host, colon + 1, &hints, &res) != 0)
		return -EINVAL;
	for (ai = res; ai; ai = ai->ai_next)
		if (!config_addr_loopback(ai->ai_addr))
			r = 0;
	freeaddrinfo(res);
	return r;
}

/* The checks of a HOST:PORT or unix:PATH listen key. */
static int config_check_listen(const char *key, const char *listen, int public, char **ret_msg)
{
	const char *colon = strrchr(listen, ':');
	int r;

	if (strncmp(listen, "unix:", 5) == 0)
		return 0;
	if (!colon || colon == listen || !isdigit((unsigned char)colon[1])) {
		*ret_msg = msg_fmt("%s: expected HOST:PORT or unix:PATH, got '%s'", key, listen);
		return -EINVAL;
	}
	r = config_listen_loopback(listen);
	if (r < 0) {
		*ret_msg = msg_fmt("%s: '%s' does not resolve to an address", key, listen);
		return -EINVAL;
	}
	if (!public && !r) {
		*ret_msg = msg_fmt("%s: '%s' is not (or not only) a loopback address; set "
				   "rest_public = true, with rest_token_file, to listen on it",
				   key, listen);
		return -EINVAL;
	}
	return 0;
}

const char *config_tpm_pcrs(const struct config *c)
{
	if (c->tpm_pcrs)
		return c->tpm_pcrs;
	/* A device that requires a TPM binds to its secure-boot state by default. */
	return c->tpm == CONFIG_TPM_REQUIRED ? CONFIG_TPM_PCRS_REQUIRED : "";
}

int config_check(const struct config *c, char **ret_msg)
{
	if (config_check_listen("rest_listen", c->rest_listen, c->rest_public, ret_msg) < 0)
		return -EINVAL;
	if (c->metrics_listen &&
	    config_check_listen("metrics_listen", c->metrics_listen, c->rest_public, ret_msg) < 0)
		return -EINVAL;
	if (c->rest_public && !c->rest_token_file) {
		*ret_msg = msg_fmt("rest_public: a public side endpoint needs rest_token_file "
				   "(a 0600 file with the bearer token its callers send)");
		return -EINVAL;
	}
	if (c->memory_cache < (4ULL << 20)) {
		*ret_msg = msg_fmt("memory_cache: at least 4M is needed");
		return -EINVAL;
	}
	if (c->io_timeout == 0) {
		*ret_msg = msg_fmt("io_timeout: must be at least 1 second");
		return -EINVAL;
	}
	if (c->s3_access_key && !c->s3_secret_key_file) {
		*ret_msg = msg_fmt("s3_secret_key_file: required with s3_access_key");
		return -EINVAL;
	}
	if (strchr(c->folder, '/') || !strcmp(c->folder, ".") || !strcmp(c->folder, "..")) {
		*ret_msg = msg_fmt("folder: '%s' is not a folder name", c->folder);
		return -EINVAL;
	}
	return 0;
}

int config_read_secret_file(const char *path, int must_be_private, char **ret, size_t *ret_len,
			    char **ret_msg)
{
	struct stat st;
	char *buf = NULL;
	size_t len = 0;
	int fd, r;

	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
	if (fd < 0) {
		r = -errno;
		*ret_msg = msg_fmt("%s: %s", path, strerror(errno));
		return r;
	}
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		*ret_msg = msg_fmt("%s: not a regular file", path);
		r = -EINVAL;
		goto out_fd;
	}
	if (must_be_private && (st.st_mode & 077)) {
		*ret_msg = msg_fmt("%s: mode %03o lets others read it; chmod 600 it", path,
				   (unsigned)(st.st_mode & 0777));
		r = -EACCES;
		goto out_fd;
	}
	if (st.st_size > CONFIG_SECRET_MAX) {
		*ret_msg = msg_fmt("%s: larger than %d bytes", path, CONFIG_SECRET_MAX);
		r = -EFBIG;
		goto out_fd;
	}
	buf = secmem_alloc((size_t)st.st_size + 1);
	if (!buf) {
		r = -errno;
		*ret_msg =
			msg_fmt("%s: cannot lock memory for a secret: %s", path, strerror(errno));
		goto out_fd;
	}
	while (len < (size_t)st.st_size) {
		ssize_t n = read(fd, buf + len, (size_t)st.st_size - len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			r = n < 0 ? -errno : -EIO;
			*ret_msg = msg_fmt("%s: read error", path);
			goto out_buf;
		}
		len += (size_t)n;
	}
	/* A secret file written by an editor ends in a newline that is not part of it. */
	while (len > 0 && (buf[len - 1] == '\n' || buf[len - 1] == '\r'))
		len--;
	buf[len] = '\0';
	*ret = buf;
	if (ret_len)
		*ret_len = len;
	buf = NULL;
	r = 0;
out_buf:
	secmem_free(buf);
out_fd:
	close(fd);
	return r;
}

int config_resource_key(const struct config *c, uint8_t key[CRYPTO_KEY_SIZE], char **ret_msg)
{
	char *secret = NULL, *msg = NULL;
	size_t len = 0;
	int r;

	if (!c->legacy_resource_secret_file) {
		f1_aes_key(F1_DEFAULT_RESOURCE_SECRET, strlen(F1_DEFAULT_RESOURCE_SECRET), key);
		return 0;
	}
	r = config_read_secret_file(c->legacy_resource_secret_file, 1, &secret, &len, &msg);
	if (r < 0) {
		*ret_msg = msg_fmt("legacy_resource_secret_file: %s", msg ? msg : strerror(-r));
		free(msg);
		return r;
	}
	f1_aes_key(secret, len, key);
	secmem_free(secret);
	return 0;
}

int config_read_credentials(const char *path, char **ret_email, char **ret_password, char **ret_msg)
{
	char *text = NULL, *email = NULL, *password = NULL;
	char *line, *save = NULL;
	int r;

	r = config_read_secret_file(path, 1, &text, NULL, ret_msg);
	if (r < 0)
		return r;
	for (line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		char *eq, *key, *value, **slot;

		line = config_trim(line);
		if (!*line || *line == '#')
			continue;
		eq = strchr(line, '=');
		if (!eq) {
			*ret_msg = msg_fmt("%s: expected 'email = ...' or 'password = ...'", path);
			r = -EINVAL;
			goto out;
		}
		*eq = '\0';
		key = config_trim(line);
		value = config_trim(eq + 1);
		if (!strcmp(key, "email"))
			slot = &email;
		else if (!strcmp(key, "password"))
			slot = &password;
		else {
			*ret_msg = msg_fmt("%s: unknown key '%s'", path, key);
			r = -EINVAL;
			goto out;
		}
		secmem_free(*slot);
		*slot = NULL;
		*slot = secmem_strndup(value, strlen(value));
		if (!*slot) {
			r = -ENOMEM;
			*ret_msg = msg_fmt("%s: cannot lock memory for a secret", path);
			goto out;
		}
	}
	if (!email || !password || !*email || !*password) {
		*ret_msg = msg_fmt("%s: needs both 'email = ...' and 'password = ...'", path);
		r = -EINVAL;
		goto out;
	}
	*ret_email = email;
	*ret_password = password;
	email = password = NULL;
	r = 0;
out:
	secmem_free(email);
	secmem_free(password);
	secmem_free(text);
	return r;
}
