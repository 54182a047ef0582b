#!/usr/bin/env bash
# 22-fs-large: a 256 MiB model on nginx with memory_cache = 16M. A cold
# read of its first MiB fetches only a few MiB (counted in nginx's access
# log); streaming all of it (16 times memory_cache) gives the plaintext's
# sha256 while the daemon's peak RSS (VmHWM) stays under memory_cache +
# 32 MiB. The RSS bound is a property of the release build, so this test
# runs build/azaionfs even when the suite runs a sanitizer build.
. "$(dirname "$0")/../lib.sh"
AZ_DAEMON=$AZ_TOP/build/azaionfs
. "$AZ_TOP/tests/tools/fs-lib.sh"
fs_init t22

MC_MIB=16
F=l22$TAG
N=${TAG}-large.onnx
fs_conf "$W/conf" "cdn_url=$NGINX_URL" "folder=$F" "state_dir=$W/state" \
	"cache_dir=$W/cache" "cache_max=32M" "memory_cache=${MC_MIB}M" "io_timeout=20"
head -c 256M /dev/urandom >"$W/$N"
want=$(sha_of "$W/$N")
fs_publish "$W/conf" 1 "$N" "$W/$N" || bail "publishing failed: $(tail -3 "$W/publish.log")"

fs_mount "$W/mnt" "$W/conf"
pid=$FS_PID
check_eq "ls -l shows 256 MiB" "$(stat -c %s "$W/mnt/$N")" 268435456

# Cold read of 1 MiB; read-ahead settles within a second once it stops.
log_from=$(($(wc -l <"$NGINX_LOG") + 1))
got=$(dd if="$W/mnt/$N" bs=1M count=1 status=none | sha256sum | cut -d' ' -f1)
check_eq "the first MiB equals the plaintext's" "$got" "$(head -c 1M "$W/$N" | sha256sum | cut -d' ' -f1)"
settled() {
	local n
	n=$(wc -l <"$NGINX_LOG")
	sleep 0.5
	[ "$n" = "$(wc -l <"$NGINX_LOG")" ]
}
wait_for 10 settled
fetched=$(tail -n +"$log_from" "$NGINX_LOG" | awk -v u="/$F/$N.big" '$2 == u {s += $5} END {print s + 0}')
whole=$(tail -n +"$log_from" "$NGINX_LOG" | awk -v u="/$F/$N.big" '$2 == u && $4 == "\"-\"" && $1 == "GET"' | wc -l)
echo "# reading 1 MiB fetched $fetched bytes of the big part"
# The MiB read, the kernel's read-ahead (1 MiB on this mount) and the
# daemon's own, whose window starts at 256 KiB and grows only while reads
# come in order: a few MiB, far from the 256.
check "reading 1 MiB of 256 MiB fetched at most 8 MiB ($fetched bytes)" \
	test "$fetched" -le $((8 * 1024 * 1024)) -a "$fetched" -ge $((1024 * 1024))
check_eq "every GET of the big part was a range request" "$whole" 0

# Stream the whole model: 16 times memory_cache.
got=$(sha_of "$W/mnt/$N")
check_eq "streaming 256 MiB gives the plaintext's sha256" "$got" "$want"
hwm=$(awk '/^VmHWM:/ {print $2}' "/proc/$pid/status")
echo "# peak RSS ${hwm} KiB with memory_cache = ${MC_MIB} MiB"
check "peak RSS ${hwm} KiB is under memory_cache + 32 MiB" \
	test "$hwm" -lt $(((MC_MIB + 32) * 1024))
cache_kib=$(du -sk "$W/cache" | cut -f1)
check "cache_dir stays within cache_max ($cache_kib KiB)" test "$cache_kib" -le $((32 * 1024 + 64))

fs_umount "$W/mnt" "$pid"
fs_no_leftovers
done_testing
