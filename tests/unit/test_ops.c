/*
 * test_ops - what makes node ids and file handles outlive the serving
 * process (fs/ops.c, docs/architecture.md "Restarts"): the id of a name is
 * a fixed function of the name (FNV-1a, 63 bits, never 0 or 1), and a file
 * handle packs and unpacks its epoch, version tag and slot without one
 * field reaching into another.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "fs/log.h"
#include "fs/ops.h"

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

static int fh_round_trip(uint16_t epoch, uint32_t tag, uint32_t slot)
{
	struct ops_fh in = {.epoch = epoch, .tag = tag, .slot = slot};
	struct ops_fh out = ops_fh_unpack(ops_fh_pack(&in));

	return out.epoch == epoch && out.tag == tag && out.slot == slot;
}

int main(void)
{
	enum {
		N = 20000
	};
	uint64_t *ids = calloc(N, sizeof(*ids));
	struct ops_fh d;
	char name[64];
	int bad = 0;

	log_init("test_ops", LOG_ERR);

	/* Known FNV-1a 64 values, top bit cleared: the same in every build. */
	CHECK(ops_name_id("a") == 0x2f63dc4c8601ec8cull, "id of \"a\" is FNV-1a 64 of it, 63 bits");
	CHECK(ops_name_id("foobar") == 0x05944171f73967e8ull, "id of \"foobar\"");
	CHECK(ops_name_id("yolo11n.onnx") == 0x6b724830bcd056edull, "id of \"yolo11n.onnx\"");
	CHECK(ops_name_id("yolo11n.onnx") == ops_name_id("yolo11n.onnx"),
	      "the id of a name does not change between calls");

	for (int i = 0; i < N && ids; i++) {
		snprintf(name, sizeof(name), "model-%d.onnx", i);
		ids[i] = ops_name_id(name);
		if (ids[i] < 2 || ids[i] > 0x7fffffffffffffffull)
			bad++;
	}
	CHECK(ids && bad == 0, "%d ids: none is 0 or 1 (the root), all fit 63 bits", N);
	if (ids)
		qsort(ids, N, sizeof(*ids), cmp_u64);
	bad = 0;
	for (int i = 1; i < N && ids; i++)
		if (ids[i] == ids[i - 1])
			bad++;
	CHECK(ids && bad == 0, "%d similar names have %d different ids", N, N);
	free(ids);

	CHECK(fh_round_trip(0, 0, 0), "fh 0/0/0 round trip");
	CHECK(fh_round_trip(1, 0x123456, 7), "fh 1/0x123456/7 round trip");
	CHECK(fh_round_trip(0xffff, 0xffffff, 0xffffff), "fh with every field full round trip");
	CHECK(fh_round_trip(0xffff, 0, 0) && fh_round_trip(0, 0xffffff, 0) &&
		      fh_round_trip(0, 0, 0xffffff),
	      "one full field leaves the others 0");

	d = (struct ops_fh){.epoch = 3, .tag = 0xabcdef, .slot = 42};
	CHECK(ops_fh_pack(&d) == (3ull << 48 | 0xabcdefull << 24 | 42),
	      "fh layout: epoch << 48 | tag << 24 | slot");
	d = (struct ops_fh){.epoch = 0, .tag = 0x7abcdef, .slot = 0x1000005};
	CHECK(ops_fh_pack(&d) == (0xabcdefull << 24 | 5),
	      "tag and slot are cut to 24 bits and do not reach the next field");
	d = ops_fh_unpack(0x0002ffffff000001ull);
	CHECK(d.epoch == 2 && d.tag == 0xffffff && d.slot == 1, "unpack of a raw value");

	return check_done();
}
