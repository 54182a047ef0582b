#!/usr/bin/env bash
# 83-cross-arm64: the aarch64 build of scripts/cross-arm64 (Debian's cross
# compiler, arm64 multiarch libraries; installed by scripts/install-deps):
#  - azaionfs, azaionctl and the unit tests build for aarch64 with -Werror;
#  - the daemon runs under qemu-user and the unit tests that need no server
#    pass there (the two checks qemu-user cannot perform are named by the
#    script and are the only failures it accepts).
. "$(dirname "$0")/../lib.sh"
need aarch64-linux-gnu-gcc qemu-aarch64-static file
out=$(mktemp /tmp/az-t83.XXXXXX)
trap 'rm -f "$out"' EXIT
"$AZ_TOP/scripts/cross-arm64" --no-install >"$out" 2>&1
rc=$?
grep -E '^(arm64|cross-arm64:|    expected)' "$out" | sed 's/^/# /'
[ $rc -eq 0 ] || tail -30 "$out" | sed 's/^/# /'
check "scripts/cross-arm64 builds and passes under qemu" test $rc -eq 0
check_eq "build-arm64/azaionfs is an aarch64 executable" \
	"$(file -b "$AZ_TOP/build-arm64/azaionfs" | grep -o 'ARM aarch64' | head -1)" "ARM aarch64"
check_eq "build-arm64/azaionctl too" \
	"$(file -b "$AZ_TOP/build-arm64/azaionctl" | grep -o 'ARM aarch64' | head -1)" "ARM aarch64"
for t in test_crypto test_config test_catalog; do
	check "arm64 $t ran and passed" grep -qE "^arm64 $t +[1-9][0-9]* ok" "$out"
done
check "the daemon answers --version under qemu" grep -q '^azaionfs [0-9]' "$out"
done_testing
