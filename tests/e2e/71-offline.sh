#!/usr/bin/env bash
# 71-offline: the device loses its network, its daemon or its disk space.
#  - CDN down after the models were read once: a new daemon reads them from
#    cache_dir (ciphertext); models never read fail cleanly within io_timeout;
#  - API down as well: both formats still read (format 2's key document
#    and format 1's small part and chunk hashes kept in state_dir, the big
#    parts in cache_dir), and say so without an error; a model never read
#    fails with one line, the failed call's words in it;
#  - the API failing the key document alone: the open's one line says so;
#  - kill -9 during reads: with auto_unmount the mount goes away by itself,
#    without it umount clears the dead mount; a restart serves again, no
#    process or mount is left, and no plaintext reached the disk;
#  - cache_dir on a full file system: reads work from memory; cache_max is
#    capped to 0 by the free space, said once at start, nothing written.
. "$(dirname "$0")/../lib.sh"
. "$AZ_TOP/tests/tools/fs-lib.sh"
. "$AZ_TOP/tests/tools/fault-lib.sh"
need cc
fs_init t71
FULL=$W/full
trap 'fs_cleanup_full; fs_cleanup; fp_cleanup' EXIT
fs_cleanup_full() { mountpoint -q "$FULL" 2>/dev/null && umount -l "$FULL"; }

IO=3
F=o71$TAG
fp_start API "$API_URL"
fp_start CDN "$NGINX_URL"
fs_conf "$W/pub.conf" "cdn_url=$NGINX_URL" "folder=$F" "state_dir=$W/state-pub"
fs_conf "$W/conf" "cdn_url=$CDN_URL" "folder=$F" "state_dir=$W/state" "cache_dir=$W/cache" \
	"io_timeout=$IO" "catalog_ttl=1" "tpm=auto" "tpm_tcti=$TPM_TCTI" "tpm_wait=5" \
	"rest_listen=unix:$W/rest.sock"
sed -i "1s|.*|api_url = $API_URL|" "$W/conf"

fs_mount "$W/mnt" "$W/conf"
check "the device enrolled" test -s "$W/state/device_id"
C1=${TAG}-c1.onnx C2=${TAG}-c2.onnx U1=${TAG}-u1.onnx U2=${TAG}-u2.onnx
mkdir -p "$W/plain"
for n in "$C1" "$C2" "$U1" "$U2"; do head -c 3000017 /dev/urandom >"$W/plain/$n"; done
for n in "$C1" "$U1"; do fs_publish "$W/pub.conf" 1 "$n" "$W/plain/$n" || bail "publishing $n failed"; done
for n in "$C2" "$U2"; do fs_publish "$W/pub.conf" 2 "$n" "$W/plain/$n" || bail "publishing $n failed"; done
wait_for 20 test -e "$W/mnt/$U2" || bail "the mount does not list the new models"
for n in "$C1" "$C2"; do
	check_eq "online: $n reads whole" "$(sha_of "$W/mnt/$n" 2>&1)" "$(sha_of "$W/plain/$n")"
done
fs_umount "$W/mnt" "$FS_PID"

# expect_fail WHAT NAME: reading NAME fails with an errno within io_timeout.
expect_fail() {
	local out res took
	out=$("$PY" "$AZ_TOP/tests/tools/readcmp.py" "$W/plain/$2" "$W/mnt/$2" 0 65536)
	res=${out%% *} took=${out#* }
	case $res in
	EIO | ETIMEDOUT | EACCES) ok "$1: $2 fails cleanly ($res, $took s)" ;;
	*) not_ok "$1: $2 fails cleanly, got '$res'" ;;
	esac
	check "  within twice io_timeout (open and read)" \
		awk -v t="$took" -v m=$((2 * IO + 1)) 'BEGIN { exit !(t <= m) }'
}

# ---- the CDN down: a new daemon, the same cache_dir and state_dir
fp_fault CDN '{"kind": "refuse", "count": -1}'
fs_mount "$W/mnt" "$W/conf"
pid=$FS_PID
for n in "$C1" "$C2"; do
	check_eq "CDN down: $n, read before, comes from cache_dir" \
		"$(sha_of "$W/mnt/$n" 2>&1)" "$(sha_of "$W/plain/$n")"
done
expect_fail "CDN down" "$U1"
expect_fail "CDN down" "$U2"
check "CDN down: the daemon still runs" kill -0 "$pid"
fs_umount "$W/mnt" "$pid"

# ---- the API down as well
fp_fault API '{"kind": "refuse", "count": -1}'
fs_mount "$W/mnt" "$W/conf"
pid=$FS_PID
check_eq "API and CDN down: ls lists the models (catalog kept in state_dir)" \
	"$(ls "$W/mnt" | grep -c "^$TAG-")" 4
check_eq "API and CDN down: format 2 $C2 reads (small part in state_dir, big part in cache_dir)" \
	"$(sha_of "$W/mnt/$C2" 2>&1)" "$(sha_of "$W/plain/$C2")"
check "  the log says the kept key document served" \
	grep -q "$C2: the API is out of reach.*kept in state_dir" "$W/mnt.log"
check_eq "API and CDN down: format 1 $C1 reads (small part and chunk hashes in state_dir)" \
	"$(sha_of "$W/mnt/$C1" 2>&1)" "$(sha_of "$W/plain/$C1")"
check "  the log says the kept small part served" \
	grep -q "$C1: the API is out of reach.*small part kept in state_dir" "$W/mnt.log"
check_eq "  served from what was kept: no error logged for them" \
	"$(grep -E "$C1|$C2" "$W/mnt.log" | grep -c '\[error\]')" 0
expect_fail "API and CDN down" "$U2"
# The failed CDN read's words reach the read's one line.
check_eq "  the failed read is logged once, with the failed call's words" \
	"$(grep "$U2" "$W/mnt.log" | grep '\[error\]' | grep -c "connection refused\|closed the connection\|timed out")" 1
fs_umount "$W/mnt" "$pid"
fp_clear API
fp_clear CDN
check "the kept key documents and small parts are 0600 files" \
	test -z "$(find "$W/state" -type f -perm /077)" -a -n "$(ls "$W/state/keys" 2>/dev/null)" \
	-a -n "$(ls "$W/state/small" 2>/dev/null)"

# ---- the API fails the key document's request alone (the login works)
rm -f "$W/state/keys/"*
fp_fault API '{"kind": "status", "status": 503, "count": -1, "path": "/resources/key/"}'
fs_mount "$W/mnt" "$W/conf"
pid=$FS_PID
expect_fail "the API answers 503 to the key document" "$U2"
# The key source's API call is quiet: its words reach the open's one line.
check_eq "  the failed open is logged once, with the API's words" \
	"$(grep "$U2" "$W/mnt.log" | grep '\[error\]' | grep -c 'HTTP 503')" 1
fs_umount "$W/mnt" "$pid"
fp_clear API

# ---- kill -9 during reads
# kill9 OPT: mounts (OPT: extra -o), starts readers, kills the daemon.
kill9() {
	fs_mount "$W/mnt" "$W/conf" $1
	K_PID=$FS_PID
	"$PY" "$AZ_TOP/tests/tools/preads.py" "$W/plain/$U2" "$W/mnt/$U2" 4 100000 \
		>"$W/preads.out" 2>&1 &
	local rd=$!
	"$PY" "$AZ_TOP/tests/tools/preads.py" "$W/plain/$U1" "$W/mnt/$U1" 4 100000 \
		>>"$W/preads.out" 2>&1 &
	local rd2=$!
	wait_for 20 grep -q "GET /$F/$U2.big" "$W/fp-CDN.log"
	sleep 0.5
	kill -KILL "$K_PID"
	wait "$K_PID" 2>/dev/null
	check "kill -9 ${1:-without auto_unmount}: the readers end (with errors)" \
		wait_for 20 fs_gone "$rd"
	wait_for 20 fs_gone "$rd2"
	wait "$rd" "$rd2" 2>/dev/null
}
# The mount command's output captured: $(...) returns once it has mounted;
# auto_unmount's watcher keeps no copy of the command's stderr.
mkdir -p "$W/m-cap"
FS_MNTS+=("$W/m-cap")
# cat ends at end of file, when no process holds the pipe any more; 124 if not.
out=$("$AZ_DAEMON" azaion "$W/m-cap" -o "config=$W/conf,auto_unmount" 2>&1 | timeout 20 cat
	exit "${PIPESTATUS[1]}")
rc=$?
check_eq "auto_unmount: a mount command's captured output ends when it returns" "$rc" 0
cap=$(pgrep -f -- "azaionfs azaion $W/m-cap( |$)" | head -1)
FS_PIDS+=(${cap:-})
fusermount3 -u "$W/m-cap"
check "auto_unmount: that daemon ends after fusermount3 -u" wait_for 20 fs_gone "${cap:-0}"
kill9 auto_unmount
check "auto_unmount: the dead daemon's mount goes away by itself" \
	wait_for 10 eval '! fs_mounted "$W/mnt"'
fs_mount "$W/mnt" "$W/conf"
check_eq "auto_unmount: a restart serves again" "$(sha_of "$W/mnt/$U2" 2>&1)" \
	"$(sha_of "$W/plain/$U2")"
fs_umount "$W/mnt" "$FS_PID"

kill9 ""
err=$(stat "$W/mnt" 2>&1)
case $err in *"not connected"*) ok "without auto_unmount the dead mount answers ENOTCONN" ;;
*) not_ok "without auto_unmount the dead mount answers ENOTCONN: '$err'" ;; esac
check "umount clears it" umount "$W/mnt"
check "no mount is left" eval '! fs_mounted "$W/mnt"'
fs_mount "$W/mnt" "$W/conf"
check_eq "after umount, a remount serves again" "$(sha_of "$W/mnt/$U1" 2>&1)" \
	"$(sha_of "$W/plain/$U1")"
fs_umount "$W/mnt" "$FS_PID"

cc -O2 -o "$W/canary" "$AZ_TOP/tests/tools/canary.c" || bail "cannot build the canary scanner"
hits=$("$W/canary" "$W"/plain/* -- "$W/state" "$W/cache" "$W/mnt.log" "$W/conf" 2>&1)
check_eq "canary: no plaintext window in state_dir, cache_dir or the log after kill -9" "$hits" ""

# ---- cache_dir on a full file system
mkdir -p "$FULL"
mount -t tmpfs -o size=256k tmpfs "$FULL" || bail "cannot mount a small tmpfs"
mkdir "$FULL/cache"
dd if=/dev/zero of="$FULL/filler" bs=4k status=none 2>/dev/null
check "the small file system is full" test "$(df --output=avail -k "$FULL" | tail -1)" -eq 0
fs_conf "$W/full.conf" "cdn_url=$NGINX_URL" "folder=$F" "state_dir=$W/state" \
	"cache_dir=$FULL/cache" "cache_max=64M" "io_timeout=$IO" "tpm=auto" \
	"tpm_tcti=$TPM_TCTI" "tpm_wait=5" "rest_listen=unix:$W/rest.sock"
fs_mount "$W/mntf" "$W/full.conf"
pid=$FS_PID
bad=
for n in "$C1" "$C2" "$U1" "$U2"; do
	[ "$(sha_of "$W/mntf/$n" 2>&1)" = "$(sha_of "$W/plain/$n")" ] || bad="$bad $n"
done
check_eq "cache_dir full: every model reads whole and right" "$bad" ""
out=$("$PY" "$AZ_TOP/tests/tools/preads.py" "$W/plain/$U2" "$W/mntf/$U2" 4 300)
check_eq "cache_dir full: 1200 random preads right" "$out" "1200 0"
# cache_max is capped by the free space: nothing is written, and that is said once.
n_logged=$(grep -c "cache_max 64M capped to 0: the filesystem of $FULL/cache has 0 free" "$W/mntf.log")
check_eq "cache_dir full: the cap to 0 is logged once, at start" "$n_logged" 1
grep "$FULL/cache" "$W/mntf.log" | head -3 | sed 's/^/# /'
check "  and no write there was tried (no ENOSPC)" \
	sh -c "! grep -q 'No space left on device' '$W/mntf.log'"
fs_umount "$W/mntf" "$pid"
fs_cleanup_full

fs_no_leftovers
done_testing
