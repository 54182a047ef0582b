/*
 * test_catalog - the catalog's parsing of /resources/list answers (hostile
 * names refused, duplicates dropped, fields checked) and cdn.yaml's.
 */
#include <errno.h>
#include <string.h>
#include <jansson.h>

#include "check.h"
#include "crypto/crypto.h"
#include "fs/catalog.h"
#include "fs/log.h"
#include "fs/session.h"

static struct catalog_list *parse(const char *text)
{
	struct catalog_list *l = NULL;
	json_error_t err;
	json_t *doc = json_loads(text, JSON_ALLOW_NUL, &err);

	if (!doc || catalog_parse(doc, &l) < 0)
		l = NULL;
	json_decref(doc);
	return l;
}

int main(void)
{
	struct catalog_list *l;
	const struct catalog_entry *e;
	struct session_cdn_yaml y;
	char long_name[300];
	char doc[1024];
	const char *yaml;

	log_init("test_catalog", LOG_ERR);

	l = parse("{\"resources\": [{\"name\": \"b.onnx\", \"format\": 2, \"size\": 10,"
		  " \"big_size\": 90, \"updated\": \"u1\"}, {\"name\": \"a.onnx\","
		  " \"sha256\": "
		  "\"00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\"}]}");
	CHECK(l && l->n == 2, "two valid entries are kept");
	CHECK(l && strcmp(l->e[0].name, "a.onnx") == 0, "entries are sorted by name");
	e = l ? catalog_find(l, "b.onnx") : NULL;
	CHECK(e && e->format == 2 && e->has_size && e->size == 10 && e->big_size == 90 &&
		      strcmp(e->updated, "u1") == 0,
	      "format, size, big_size and updated are read");
	e = l ? catalog_find(l, "a.onnx") : NULL;
	CHECK(e && e->format == 1 && !e->has_size && e->has_sha256 && e->sha256[1] == 0x11 &&
		      e->sha256[31] == 0xff,
	      "format defaults to 1; a missing size is marked; sha256 is decoded");
	CHECK(l && !catalog_find(l, "c.onnx"), "an absent name is not found");
	CHECK(e && e->mtime == 0, "an `updated` that is not a time leaves the time to the listing");
	catalog_list_free(l);

	l = parse("{\"resources\": [{\"name\": \"m\", \"updated\": \"2026-11-01T12:00:00Z\"}]}");
	CHECK(l && l->n == 1 && l->e[0].mtime == 1793534400,
	      "an RFC 3339 `updated` is the file's time");
	catalog_list_free(l);
	{
		static const struct {
			const char *s;
			long long t; /* -1: refused */
		} tv[] = {
			{"2026-11-01T12:00:00Z", 1793534400},
			{"2026-11-01t12:00:00z", 1793534400},
			{"2026-11-01 12:00:00Z", 1793534400},
			{"2026-11-01T12:00:00.123456Z", 1793534400},
			{"2026-11-01T14:30:00+02:30", 1793534400},
			{"2026-11-01T07:00:00-05:00", 1793534400},
			{"2016-12-31T23:59:60Z", 1483228799},
			{"2024-02-29T00:00:00Z", 1709164800},
			{"2023-02-29T00:00:00Z", -1},
			{"2026-13-01T00:00:00Z", -1},
			{"2026-11-01T24:00:00Z", -1},
			{"2026-11-01T12:00:00", -1},
			{"2026-11-01T12:00:00Zjunk", -1},
			{"2026-11-01T12:00:00.Z", -1},
			{"2026-11-01T12:00:00+2:00", -1},
			{"2026-11-01", -1},
			{"+026-11-01T12:00:00Z", -1},
			{"", -1},
			{"u1", -1},
		};
		for (size_t i = 0; i < sizeof(tv) / sizeof(tv[0]); i++) {
			time_t t = 0;
			int r = catalog_parse_time(tv[i].s, &t);

			CHECK(tv[i].t < 0 ? r == -EINVAL : r == 0 && (long long)t == tv[i].t,
			      "catalog_parse_time(\"%s\")", tv[i].s);
		}
	}

	memset(long_name, 'x', 256);
	long_name[256] = '\0';
	snprintf(doc, sizeof(doc),
		 "{\"resources\": [{\"name\": \"\"}, {\"name\": \".\"}, {\"name\": \"..\"},"
		 " {\"name\": \"a/b\"}, {\"name\": \"nul\\u0000x\"}, {\"name\": \"%s\"},"
		 " {\"name\": \"ok\"}, {\"name\": 5}, {\"size\": 1}]}",
		 long_name);
	l = parse(doc);
	CHECK(l && l->n == 1 && strcmp(l->e[0].name, "ok") == 0,
	      "empty, '.', '..', '/', NUL, 256-byte and non-string names are refused");
	catalog_list_free(l);

	memset(long_name, 'y', 255);
	long_name[255] = '\0';
	snprintf(doc, sizeof(doc), "{\"resources\": [{\"name\": \"%s\"}]}", long_name);
	l = parse(doc);
	CHECK(l && l->n == 1, "a 255-byte name is accepted");
	catalog_list_free(l);

	l = parse("{\"resources\": [{\"name\": \"d\", \"size\": 1}, {\"name\": \"d\", \"size\": 2},"
		  " {\"name\": \"c\"}, {\"name\": \"d\", \"size\": 3}]}");
	CHECK(l && l->n == 2 && catalog_find(l, "d") && catalog_find(l, "d")->size == 1,
	      "duplicates are dropped, the first in the document stays");
	catalog_list_free(l);

	l = parse("{\"resources\": [{\"name\": \"f\", \"format\": 3}, {\"name\": \"g\","
		  " \"size\": -1}, {\"name\": \"h\", \"sha256\": \"zz\"}, {\"name\": \"i\"}]}");
	CHECK(l && l->n == 1 && strcmp(l->e[0].name, "i") == 0,
	      "unknown formats, negative sizes and malformed sha256 are refused");
	catalog_list_free(l);

	CHECK(parse("{\"items\": []}") == NULL, "a document without resources is refused");
	CHECK(parse("[1, 2]") == NULL, "a non-object document is refused");

	yaml = "# cdn\nhost: \"https://cdn.example:9000/\"\ndownloader_access_key: 'AK'\n"
	       "downloader_access_secret: s3cr3t\nuploader_access_key: UK\n"
	       "uploader_access_secret: \"us\"\n";
	memset(&y, 0, sizeof(y));
	CHECK(session_parse_cdn_yaml(yaml, strlen(yaml), &y) == 0 && y.host &&
		      strcmp(y.host, "https://cdn.example:9000/") == 0 &&
		      strcmp(y.access_key, "AK") == 0 && strcmp(y.secret_key, "s3cr3t") == 0 &&
		      strcmp(y.up_access_key, "UK") == 0 && strcmp(y.up_secret_key, "us") == 0,
	      "cdn.yaml: host and keys, quoted or not");
	session_cdn_yaml_clear(&y);
	CHECK(session_parse_cdn_yaml("nothing: here\n", 14, &y) < 0,
	      "cdn.yaml without host or keys is refused");
	return check_done();
}
