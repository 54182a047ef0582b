#!/usr/bin/env bash
# 75-fuzz: builds the libFuzzer targets of tests/fuzz (clang, ASan+UBSan,
# `make fuzz-build`) and runs each over its corpus for AZ_FUZZ_SECONDS
# (default 20), two at a time: every parser of outside data (the
# configuration file, the catalog JSON, cdn.yaml, format-1 parts, the
# format-2 header, chunks and small part, the side endpoint's requests).
# A crash, a sanitizer report, a leak or a hang fails the target. `make fuzz`
# runs them longer (FUZZ_SECONDS, default 60).
. "$(dirname "$0")/../lib.sh"
need clang make
log=$(mktemp /tmp/az-t75.XXXXXX)
trap 'rm -f "$log"' EXIT
if ! make -C "$AZ_TOP" -j2 fuzz-build >"$log" 2>&1; then
	tail -20 "$log" | sed 's/^/# /'
	bail "make fuzz-build failed"
fi
ok "the fuzz targets build (clang -fsanitize=fuzzer,address,undefined)"
# Its lines are TAP lines of their own (numbered from 1 again).
mkdir "$log.d"
trap 'rm -rf "$log" "$log.d"' EXIT
# Every target of tests/fuzz, so a new one is in CI from its first commit.
"$AZ_TOP/tests/fuzz/run" --build "$AZ_TOP/build-fuzz" --seconds "${AZ_FUZZ_SECONDS:-20}" --jobs 2 \
	--logs "$log.d"
