/*
 * fuzz_config.c - the configuration file (azaionfs.conf): the input is
 * written to a file that config_load_file reads, as the daemon does, then
 * config_check judges the result; one line of it also goes through
 * config_set as -o would, and config_parse_size.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fs/config.h"
#include "fs/log.h"
#include "tests/fuzz/fuzz.h"

static char fuzz_path[64];

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	int fd;

	log_init("fuzz", LOG_ERR);
	snprintf(fuzz_path, sizeof(fuzz_path), "/tmp/fuzz-config.XXXXXX");
	fd = mkstemp(fuzz_path);
	if (fd < 0)
		abort();
	close(fd);
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct config *c = NULL;
	char *msg = NULL, *text, *eq;
	uint64_t v;
	int fd;

	fd = open(fuzz_path, O_WRONLY | O_TRUNC);
	if (fd < 0 || write(fd, data, size) != (ssize_t)size)
		abort();
	close(fd);
	if (config_new(&c) < 0)
		return 0;
	if (config_load_file(c, fuzz_path, &msg) == 0) {
		free(msg);
		msg = NULL;
		config_check(c, &msg);
	}
	free(msg);
	msg = NULL;

	/* The first line as "-o key=value", the whole input as a size. */
	text = strndup((const char *)data, size);
	if (text) {
		text[strcspn(text, "\n")] = '\0';
		eq = strchr(text, '=');
		if (eq) {
			*eq = '\0';
			config_set(c, text, eq + 1, "-o", &msg);
			free(msg);
			*eq = '=';
		}
		config_parse_size(text, &v);
		config_is_key(text);
		free(text);
	}
	config_free(c);
	return 0;
}
