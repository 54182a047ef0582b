/*
 * config.h - the one table of settings of docs/config.md, read from the file
 * (key = value lines, # comments) and from -o key=value (which wins).
 * Any unknown key, malformed value or missing required one is refused
 * with one message naming the key (and the file's line number).
 */
#ifndef AZAION_CONFIG_H
#define AZAION_CONFIG_H

#include <stdint.h>
#include <stddef.h>

enum config_tpm {
	CONFIG_TPM_AUTO,
	CONFIG_TPM_REQUIRED,
	CONFIG_TPM_OFF
};

enum config_memory_lock {
	CONFIG_MEMLOCK_ALL,	   /* mlockall, or stop (docs/trust.md 5) */
	CONFIG_MEMLOCK_BEST_EFFORT /* mlockall, or go on with a warning */
};

struct config {
	char *api_url;
	char *cdn_url;	     /* NULL: from cdn.yaml */
	char *s3_access_key; /* NULL: from cdn.yaml */
	char *s3_secret_key_file;
	char *s3_region;
	char *folder;
	char **models; /* NULL-terminated, or NULL */
	char *ca_file;
	char *credentials;
	char *hardware_id; /* NULL: derived */
	char *legacy_resource_secret_file;
	enum config_tpm tpm;
	char *tpm_tcti;
	char *tpm_pcrs; /* NULL: unset; "" for none ("none" in the file) */
	char *tpm_owner_auth_file;
	unsigned tpm_wait; /* seconds */
	char *state_dir;
	char *cache_dir;
	uint64_t cache_max;	/* bytes */
	uint64_t memory_cache;	/* bytes */
	unsigned catalog_ttl;	/* seconds */
	unsigned io_timeout;	/* seconds */
	unsigned key_ttl;	/* seconds a format-2 key outlives its last close */
	uint64_t readahead_max; /* bytes */
	char *rest_listen;
	int rest_public;
	char **rest_hosts;     /* NULL-terminated: Host names besides loopback ones */
	int rest_upload;       /* answer F3 at all */
	char *rest_group;      /* group allowed on a unix: endpoint */
	char *rest_token_file; /* NULL: no bearer token */
	char *metrics_listen;  /* NULL: /metrics only on rest_listen */
	char *images_archive;
	char *images_resource;
	char **images; /* NULL-terminated */
	char *images_version;
	char *docker_socket;
	int log_level; /* LOG_* */
	enum config_memory_lock memory_lock;
	char *log_file;	   /* NULL: stderr or syslog only */
	int kernel_resend; /* a new worker asks the kernel to resend (Linux 6.9+) */
};

#define CONFIG_DEFAULT_PATH "/etc/azaion/azaionfs.conf"

/* A config with every default of docs/config.md. */
int config_new(struct config **ret);
void config_free(struct config *c);

/*
 * Sets one key from text. where names the source for messages
 * ("azaionfs.conf:12" or "-o"); on error *ret_msg (may be NULL) gets a
 * malloc()ed one-line message naming the key. -EINVAL or -ENOENT (unknown).
 */
int config_set(struct config *c, const char *key, const char *value, const char *where,
	       char **ret_msg);
/* Reads a file of key = value lines; same error reporting. */
int config_load_file(struct config *c, const char *path, char **ret_msg);
/* 1 when key is one of docs/config.md's keys. */
int config_is_key(const char *key);
/* The key that key is most likely a typo of, or NULL when none is near. */
const char *config_nearest_key(const char *key);
/*
 * The PCR selection the TPM objects are bound to: tpm_pcrs when set ("" for
 * none), else PCR 7 (secure-boot state) with tpm = required and none with
 * tpm = auto (docs/tpm.md).
 */
#define CONFIG_TPM_PCRS_REQUIRED "sha256:7"
const char *config_tpm_pcrs(const struct config *c);
/* Checks values that depend on each other after all sources are read. */
int config_check(const struct config *c, char **ret_msg);
/*
 * 1 when every address a HOST:PORT listen spec resolves to is a loopback
 * one (so "localhost6", "127.1" and "[::1]" pass, a wildcard or a name
 * resolving elsewhere does not), 0 when one is not, -EINVAL when it does
 * not resolve. unix:PATH counts as loopback.
 */
int config_listen_loopback(const char *listen);
/* 1 when the socket address is a loopback one (127/8, ::1, ::ffff:127/104). */
int config_addr_loopback(const void *sockaddr);
/* Parses "64M", "4G", "1024" into bytes. */
int config_parse_size(const char *s, uint64_t *ret);

/*
 * Reads a small secret file (credentials, S3 secret, resource secret,
 * owner auth) into locked memory, refusing a file readable by group or
 * others when must_be_private. *ret is secmem; free with secmem_free.
 */
int config_read_secret_file(const char *path, int must_be_private, char **ret, size_t *ret_len,
			    char **ret_msg);

/*
 * The format-1 resource key aes(resource_secret) from
 * legacy_resource_secret_file, or from the original loader's documented
 * secret when none is configured. key is the caller's locked memory.
 */
int config_resource_key(const struct config *c, uint8_t key[32], char **ret_msg);

/*
 * Reads a credentials file (mode 0600 or stricter) of "email = ..." and
 * "password = ..." lines; both results are NUL-terminated secmem.
 */
int config_read_credentials(const char *path, char **ret_email, char **ret_password,
			    char **ret_msg);

#endif
