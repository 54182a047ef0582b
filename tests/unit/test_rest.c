/*
 * test_rest.c - the side endpoint's pure rules (docs/trust.md 2): which Host
 * and Origin headers are accepted, content types, and the peer-credential
 * group check of a unix: socket.
 */
#include <stdio.h>
#include <string.h>

#include "fs/rest.h"
#include "tests/unit/check.h"

static void test_hosts(void)
{
	char *names[] = {"loader", "Jetson-7.local", NULL};
	static const char *const good[] = {
		"127.0.0.1",  "127.0.0.1:8080", "127.9.8.7:1",
		"localhost",  "LocalHost:8080", "localhost.",
		"[::1]",      "[::1]:8080",	"[::ffff:127.0.0.1]:80",
		"loader",     "LOADER:8080",	"jetson-7.local:443",
		"127.1:8080", "0x7f000001",
	};
	static const char *const bad[] = {
		"",
		"attacker.example",
		"attacker.example:8080",
		"127.0.0.1.attacker.example",
		"localhost.attacker.example",
		"0.0.0.0",
		"192.168.1.5:8080",
		"[::]:8080",
		"[::2]:8080",
		"[::1",
		"[::1]x",
		"::1",
		"localhost:",
		"localhost:80a",
		"localhost:123456",
		"loader.evil",
		"localhost6",
		".",
		"[127.0.0.1]",
		"2130706433.attacker",
		"128.0.0.1",
		"127.0.0.1 x",
		"loader:8080:1",
	};
	size_t nbad = 0;

	for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
		if (!rest_host_allowed(good[i], names)) {
			printf("# refused: '%s'\n", good[i]);
			nbad++;
		}
	CHECK(nbad == 0, "loopback addresses, localhost and rest_hosts names are accepted");
	nbad = 0;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		if (rest_host_allowed(bad[i], names)) {
			printf("# accepted: '%s'\n", bad[i]);
			nbad++;
		}
	CHECK(nbad == 0, "every other Host is refused (%zu tried)", sizeof(bad) / sizeof(bad[0]));
	CHECK(!rest_host_allowed(NULL, names), "no Host header is refused");
	CHECK(rest_host_allowed("localhost", NULL) && !rest_host_allowed("loader", NULL),
	      "without rest_hosts only loopback and localhost");
}

static void test_origins(void)
{
	char *names[] = {"loader", NULL};

	CHECK(rest_origin_allowed("http://localhost:3000", names) &&
		      rest_origin_allowed("https://[::1]", names) &&
		      rest_origin_allowed("http://loader:8080", names),
	      "an Origin on loopback or a rest_hosts name is accepted");
	CHECK(!rest_origin_allowed("http://attacker.example", names) &&
		      !rest_origin_allowed("null", names) &&
		      !rest_origin_allowed("http://localhost:3000/x", names) &&
		      !rest_origin_allowed("file://", names) && !rest_origin_allowed(NULL, names),
	      "a foreign, null, malformed or missing Origin is refused");
}

static void test_media_types(void)
{
	CHECK(rest_media_type_is("application/json", "application/json") &&
		      rest_media_type_is("Application/JSON; charset=utf-8", "application/json") &&
		      rest_media_type_is("  application/json ;x=y", "application/json") &&
		      rest_media_type_is("multipart/form-data; boundary=x", "multipart/form-data"),
	      "the media type is compared case-insensitively, parameters ignored");
	CHECK(!rest_media_type_is("text/plain", "application/json") &&
		      !rest_media_type_is("application/jsonx", "application/json") &&
		      !rest_media_type_is("application/json-patch+json", "application/json") &&
		      !rest_media_type_is("", "application/json") &&
		      !rest_media_type_is(NULL, "application/json") &&
		      !rest_media_type_is("application/x-www-form-urlencoded",
					  "multipart/form-data"),
	      "other types, prefixes and a missing type are refused");
}

static void test_peers(void)
{
	gid_t groups[] = {27, 1001, 44};

	CHECK(rest_peer_allowed(0, 0, NULL, 0, 1001), "root is allowed");
	CHECK(rest_peer_allowed(1000, 1001, NULL, 0, 1001), "the group as primary group");
	CHECK(rest_peer_allowed(1000, 1000, groups, 3, 1001), "the group as a supplementary group");
	CHECK(!rest_peer_allowed(1000, 1000, groups, 3, 1002),
	      "a user outside the group is refused");
	CHECK(!rest_peer_allowed(65534, 65534, NULL, 0, 1001), "nobody is refused");
	CHECK(!rest_peer_allowed(1000, 1000, groups, 1, 1001),
	      "only the groups the kernel gave count");
}

int main(void)
{
	test_hosts();
	test_origins();
	test_media_types();
	test_peers();
	return check_done();
}
