#!/usr/bin/env bash
# 83-cross-arm64: the aarch64 build of scripts/cross-arm64 (Debian's cross
# compiler, arm64 multiarch libraries; installed by scripts/install-deps):
#  - azaionfs, azaionctl and the unit tests build for aarch64 with -Werror;
#  - the daemon runs under qemu-user and the unit tests that need no server
#    pass there (the madvise checks qemu-user cannot perform are named by the
#    script and are the only failures it accepts);
#  - the aarch64 daemon itself, under qemu-user, against the local stack:
#    it mounts (FUSE through qemu's system calls), enrols with the stack's
#    swtpm, reads a format-1 and a format-2 model with their sha256,
#    answers F6 (GET /health, GET /status) and F1 (POST /login) on its side
#    endpoint, and exits 0 on unmount. The aarch64 azaionctl asks the same
#    endpoint for its health.
. "$(dirname "$0")/../lib.sh"
need aarch64-linux-gnu-gcc qemu-aarch64-static file
. "$AZ_TOP/tests/tools/fs-lib.sh"
fs_init t83
QEMU=$(command -v qemu-aarch64-static)
ARM=$AZ_TOP/build-arm64
# The daemon that fs_mount starts: the aarch64 build under qemu-user (the
# arm64 loader and libraries of the multiarch packages).
AZ_DAEMON=$W/azaionfs-arm64
printf '#!/bin/sh\nQEMU_LD_PREFIX=/ exec %s %s "$@"\n' "$QEMU" "$ARM/azaionfs" >"$AZ_DAEMON"
chmod 755 "$AZ_DAEMON"
# The supervisor starts each worker by exec of its own (aarch64) binary: the
# kernel must hand that to qemu too, as binfmt_misc does on a machine with
# qemu-user-binfmt. Registered for this test when nothing handles aarch64 yet.
BINFMT=/proc/sys/fs/binfmt_misc
BINFMT_NAME=azaionfs-t83-aarch64
binfmt_off() { [ -e "$BINFMT/$BINFMT_NAME" ] && echo -1 >"$BINFMT/$BINFMT_NAME"; }
[ -e "$BINFMT/register" ] || mount -t binfmt_misc binfmt_misc "$BINFMT" 2>/dev/null ||
	bail "cannot mount binfmt_misc at $BINFMT: the arm64 supervisor could not start its worker"
if ! grep -lqs 'magic 7f454c460201010000000000000000000200b700' "$BINFMT"/*; then
	# binfmt_misc reads the \xNN escapes itself: printf must pass them as written.
	printf ':%s:M::%s:%s:%s:F\n' "$BINFMT_NAME" \
		'\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00' \
		'\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff' \
		"$QEMU" >"$BINFMT/register" ||
		bail "cannot register qemu-aarch64 with binfmt_misc: the arm64 supervisor could not start its worker"
	trap 'binfmt_off; fs_cleanup' EXIT
fi
out=$W/cross-arm64.log
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
[ $rc -eq 0 ] || bail "no aarch64 build to run"

# ---- the aarch64 daemon under qemu-user, against the local stack
F=a83$TAG
S=$W/rest.sock
fs_conf "$W/conf" "cdn_url=$NGINX_URL" "folder=$F" "state_dir=$W/state" "cache_dir=$W/cache" \
	"tpm=auto" "tpm_tcti=$TPM_TCTI" "tpm_wait=10" "catalog_ttl=2" "rest_listen=unix:$S"
# fs_mount fails loudly with the daemon's log when qemu-user cannot mount.
fs_mount "$W/mnt" "$W/conf"
pid=$FS_PID
check_eq "the mount's daemon is qemu-aarch64-static" "$(readlink "/proc/$pid/exe")" "$QEMU"
check "running build-arm64/azaionfs" \
	sh -c "tr '\\0' ' ' </proc/$pid/cmdline | grep -qF '$ARM/azaionfs azaion $W/mnt'"
check "it enrolled the device with the stack's TPM" test -s "$W/state/device_id"
u() { curl -s --max-time 20 --unix-socket "$S" "$@"; }
check_eq "F6 GET /health" "$(u http://localhost/health)" '{"status":"healthy"}'
st=$(u http://localhost/status)
echo "# GET /status: $st"
for kv in '"authenticated":true' '"mounted":true' '"tpm":"ok"'; do
	check "F6 GET /status has $kv" sh -c "echo '$st' | grep -qF '$kv'"
done
check_eq "the aarch64 azaionctl health, through the side endpoint" \
	"$(QEMU_LD_PREFIX=/ "$QEMU" "$ARM/azaionctl" -o "rest_listen=unix:$S" health 2>&1)" healthy

mkdir -p "$W/plain"
for fmt in 1 2; do
	n=${TAG}-f$fmt.onnx
	head -c $((300001 + fmt)) /dev/urandom >"$W/plain/$n"
	fs_publish "$W/conf" "$fmt" "$n" "$W/plain/$n" ||
		bail "publishing $n failed: $(tail -3 "$W/publish.log")"
done
login=$(u -w ' %{http_code}' -H 'Content-Type: application/json' \
	-d "{\"email\": \"$API_EMAIL\", \"password\": \"$API_PASSWORD\"}" http://localhost/login)
check_eq "F1 POST /login" "$login" '{"status":"ok"} 200'
for fmt in 1 2; do
	n=${TAG}-f$fmt.onnx
	wait_for 20 test -e "$W/mnt/$n"
	check_eq "reads the format-$fmt model under qemu" "$(sha_of "$W/mnt/$n" 2>&1)" \
		"$(sha_of "$W/plain/$n")"
done
grep -E 'azaionfs\[(err|warn)' "$W/mnt.log" | sed 's/^/# /'
fs_umount "$W/mnt" "$pid"
fs_no_leftovers
done_testing
