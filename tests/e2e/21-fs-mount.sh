#!/usr/bin/env bash
# 21-fs-mount: how the daemon starts and stops, and how it fails.
#  - mount -t fuse.azaionfs, an fstab line (with fstab noise), a relative
#    mount point, umount, fusermount3 -u and SIGTERM all work and leave no
#    process or mount; the mount's kernel read-ahead is raised to 1 MiB;
#    mount -t fuse.azaionfs (root, no fusermount3) is nosuid,nodev too;
#  - configuration errors name the key (and the file's line) and stop the
#    start; an unknown -o option too;
#  - an offline start lists the models from the catalog kept in state_dir,
#    a format-1 model read before reads again (its small part kept there),
#    others fail with an errno within io_timeout, cause in the log;
#  - with no catalog in the API, the `models` setting names the files and
#    their sizes come from the big parts;
#  - a CDN that does not answer and an API that answers too late fail reads
#    within io_timeout; an expired token is renewed by logging in again.
. "$(dirname "$0")/../lib.sh"
. "$AZ_TOP/tests/tools/fs-lib.sh"
need mount umount
fs_init t21

c() { curl -s --max-time 20 --cacert "$STACK_CA" "$@"; }
admin() { c -X POST "$ADMIN_URL/$1" -H "Content-Type: application/json" -d "${2:-{\}}" >/dev/null; }
logins() {
	c "$ADMIN_URL/counters" |
		"$PY" -c 'import json, sys; print(json.load(sys.stdin)["calls"].get("POST /login", 0))'
}
restore_api() { admin reset '{"data": false}'; }

# mount(8) runs mount.fuse3 with a fixed PATH, so it finds the daemon only
# in a system folder: link the build there for this test (an installed
# azaionfs is put back afterwards).
SYSLINK=/usr/local/sbin/azaionfs
restore_syslink() {
	[ -L "$SYSLINK" ] && [ "$(readlink "$SYSLINK")" = "$AZ_DAEMON" ] && rm -f "$SYSLINK"
	[ -e "$W/saved-azaionfs" ] && mv "$W/saved-azaionfs" "$SYSLINK"
}
trap 'restore_syslink; restore_api; fs_cleanup' EXIT
mkdir -p "$(dirname "$SYSLINK")"
if [ -e "$SYSLINK" ] || [ -L "$SYSLINK" ]; then
	mv "$SYSLINK" "$W/saved-azaionfs" || bail "cannot move $SYSLINK aside"
fi
ln -s "$AZ_DAEMON" "$SYSLINK" || bail "cannot link $SYSLINK"

F=m21$TAG
A=${TAG}-a.onnx
B=${TAG}-b.onnx
fs_conf "$W/conf" "cdn_url=$NGINX_URL" "folder=$F" "state_dir=$W/state" "cache_dir=$W/cache" \
	"io_timeout=3"
head -c 300001 /dev/urandom >"$W/$A"
head -c 70000 /dev/urandom >"$W/$B"
fs_publish "$W/conf" 1 "$A" "$W/$A" && fs_publish "$W/conf" 1 "$B" "$W/$B" ||
	bail "publishing failed: $(tail -3 "$W/publish.log")"

daemon_of() { pgrep -f -- "azaionfs azaion $1( |$)" | head -1; }

# ---- mount -t fuse.azaionfs, then umount
mkdir -p "$W/m1"
out=$(mount -t fuse.azaionfs azaion "$W/m1" -o "config=$W/conf" 2>&1)
fs_mounted "$W/m1" || echo "$out" | sed 's/^/# /'
check "mount -t fuse.azaionfs SOURCE DIR -o config=... succeeds" fs_mounted "$W/m1"
pid=$(daemon_of "$W/m1")
FS_PIDS+=(${pid:-}) FS_MNTS+=("$W/m1")
check_eq "it reads a model" "$(sha_of "$W/m1/$A" 2>&1)" "$(sha_of "$W/$A")"
check_eq "the mount is read-only, fsname azaion" \
	"$(awk -v m="$W/m1" '$2 == m {print $1, substr($4, 1, 2)}' /proc/mounts)" "azaion ro"
check_eq "it is nosuid,nodev as a direct start is, although mount(8) ran it as root" \
	"$(awk -v m="$W/m1" '$2 == m {n = split($4, o, ","); for (i = 1; i <= n; i++) if (o[i] == "nosuid" || o[i] == "nodev") s = s o[i] " "; print s}' /proc/mounts)" \
	"nosuid nodev "
umount "$W/m1"
check "after umount the daemon exits" wait_for 10 fs_gone "${pid:-0}"

# ---- an fstab line with the usual noise, then fusermount3 -u
mkdir -p "$W/m2"
echo "azaion $W/m2 fuse.azaionfs config=$W/conf,_netdev,nofail,noauto,x-systemd.automount,allow_other,default_permissions 0 0" >"$W/fstab"
out=$(mount -T "$W/fstab" "$W/m2" 2>&1)
fs_mounted "$W/m2" || echo "$out" | sed 's/^/# /'
check "mount DIR from an fstab line succeeds" fs_mounted "$W/m2"
pid=$(daemon_of "$W/m2")
FS_PIDS+=(${pid:-}) FS_MNTS+=("$W/m2")
check_eq "it reads a model" "$(sha_of "$W/m2/$B" 2>&1)" "$(sha_of "$W/$B")"
fusermount3 -u "$W/m2"
check "after fusermount3 -u the daemon exits" wait_for 10 fs_gone "${pid:-0}"

# ---- a relative mount point (the daemon detaches into /), the kernel's read-ahead
mkdir -p "$W/m5"
out=$(cd "$W" && "$AZ_DAEMON" azaion m5 -o "config=$W/conf" 2>&1)
fs_mounted "$W/m5" || echo "$out" | sed 's/^/# /'
check "a relative mount point mounts there" fs_mounted "$W/m5"
pid=$(daemon_of m5)
FS_PIDS+=(${pid:-}) FS_MNTS+=("$W/m5")
check_eq "it reads a model" "$(sha_of "$W/m5/$A" 2>&1)" "$(sha_of "$W/$A")"
ra=$(cat "/sys/class/bdi/$(mountpoint -d "$W/m5")/read_ahead_kb" 2>&1)
check_eq "the mount's kernel read-ahead is raised to 1 MiB" "$ra" 1024
fusermount3 -u "$W/m5"
check "after fusermount3 -u the daemon exits" wait_for 10 fs_gone "${pid:-0}"

# ---- SIGTERM
fs_mount "$W/m3" "$W/conf"
pid=$FS_PID
kill -TERM "$pid"
check "SIGTERM ends the daemon" wait_for 10 fs_gone "$pid"
wait "$pid"
check_eq "it exits with 0" "$?" 0
check "and the mount is gone" test "$(grep -c " $W/m3 " /proc/mounts)" = 0

# ---- a stop or an unmount as soon as the mount shows, perhaps before it answered:
# an end as asked for (exit 0, nothing left mounted), never a failed start
fast_mounted() {
	local i=0
	until grep -q " $1 fuse.azaionfs " /proc/mounts; do
		i=$((i + 1))
		[ $i -ge 20000 ] && return 1
	done
}
hit=0
for round in 1 2 3 4; do
	mnt="$W/early$round"
	mkdir -p "$mnt"
	"$AZ_DAEMON" azaion "$mnt" -f -o "config=$W/conf" >"$mnt.log" 2>&1 &
	pid=$!
	FS_PIDS+=("$pid") FS_MNTS+=("$mnt")
	fast_mounted "$mnt"
	# EBUSY while a stat of the root is under way, as on any mount: fusermount3 again.
	if [ $((round % 2)) = 1 ]; then how="fusermount3 -u"; wait_for 5 fusermount3 -u "$mnt"; else how=SIGTERM; kill -TERM "$pid"; fi
	if wait_for 20 fs_gone "$pid"; then
		ok "$how at once (round $round): the daemon ends"
		wait "$pid"
		rc=$?
	else
		not_ok "$how at once (round $round): the daemon ends"
		kill -KILL "$pid"
		rc=killed
	fi
	check_eq "$how at once (round $round): it exits with 0" "$rc" 0
	[ "$rc" = 0 ] || tail -5 "$mnt.log" | sed 's/^/# /'
	check "$how at once (round $round): nothing is left mounted" test "$(grep -c " $mnt " /proc/mounts)" = 0
	check_eq "$how at once (round $round): no error is logged" "$(grep -c 'azaionfs\[error\]' "$mnt.log")" 0
	grep -q 'before it answered\|before the mount answered' "$mnt.log" && hit=$((hit + 1))
done
echo "# $hit of 4 rounds ended before the mount answered"

# ---- configuration errors stop the start with the key's name
mkdir -p "$W/m4"
printf 'api_url = %s\n# comment\nbogus_key = 1\n' "$API_URL" >"$W/bad.conf"
out=$("$AZ_DAEMON" azaion "$W/m4" -o "config=$W/bad.conf" 2>&1)
rc=$?
check "an unknown key in the file stops the start" test "$rc" -ne 0
case $out in *bad.conf:3*bogus_key*) ok "the message names the file, line 3 and the key" ;;
*) not_ok "the message names the file, line 3 and the key: '$out'" ;; esac
out=$("$AZ_DAEMON" azaion "$W/m4" -o "config=$W/conf,memory_cache=lots" 2>&1)
rc=$?
case "$rc:$out" in 0:*) not_ok "a malformed -o value stops the start" ;;
*memory_cache*) ok "a malformed -o value stops the start, naming the key" ;;
*) not_ok "a malformed -o value: '$out'" ;; esac
out=$("$AZ_DAEMON" azaion "$W/m4" -o "config=$W/conf,frobnicate" 2>&1)
rc=$?
case "$rc:$out" in 0:*) not_ok "an unknown -o option stops the start" ;;
*frobnicate*) ok "an unknown -o option stops the start, naming it" ;;
*) not_ok "an unknown -o option: '$out'" ;; esac
check_eq "none of them mounted" "$(grep -c " $W/m4 " /proc/mounts)" 0

# ---- offline start: the catalog kept in state_dir
fs_conf "$W/offline.conf" "api_url=https://127.0.0.1:1" "cdn_url=$NGINX_URL" "folder=$F" \
	"state_dir=$W/state" "cache_dir=$W/cache-off" "io_timeout=3"
fs_mount "$W/m5" "$W/offline.conf"
pid=$FS_PID
check_eq "offline, ls lists the models kept in state_dir" \
	"$(ls "$W/m5" | tr '\n' ' ')" "$(printf '%s\n' "$A" "$B" | sort | tr '\n' ' ')"
check_eq "offline, the sizes are the plaintexts'" "$(stat -c %s "$W/m5/$A")" 300001
check "the log says it is an offline start" grep -q "offline start" "$W/m5.log"
# A model read before reads again: its small part and chunk hashes are kept in state_dir.
check_eq "offline, $A read before reads whole (kept in state_dir/small)" \
	"$(sha_of "$W/m5/$A" 2>&1)" "$(sha_of "$W/$A")"
fs_umount "$W/m5" "$pid"
# Without them, reads fail cleanly.
rm -rf "$W/state/small"
fs_mount "$W/m5" "$W/offline.conf"
pid=$FS_PID
start=$SECONDS
err=$(cat "$W/m5/$A" 2>&1 >/dev/null)
took=$((SECONDS - start))
case $err in *"Permission denied"* | *"Input/output error"* | *"timed out"*)
	ok "offline, a read fails with an errno ($err)" ;;
*) not_ok "offline, a read fails with an errno: '$err'" ;; esac
check "within io_timeout (${took} s)" test "$took" -le 5
check "the log says why" grep -q "$A" "$W/m5.log"
fs_umount "$W/m5" "$pid"

# ---- no catalog in the API: the models setting, sizes from the big parts
admin catalog '{"enabled": false}'
fs_conf "$W/models.conf" "cdn_url=$NGINX_URL" "folder=$F" "state_dir=$W/state-models" \
	"cache_dir=$W/cache-models" "models=$A, $B, ../evil"
fs_mount "$W/m6" "$W/models.conf"
pid=$FS_PID
check_eq "models: ls -l shows the named models with derived plaintext sizes" \
	"$(ls -l "$W/m6" | awk 'NF > 5 {print $5, $9}' | tr '\n' ' ')" \
	"$(printf '%s %s\n' 300001 "$A" 70000 "$B" | sort -k2 | tr '\n' ' ')"
check_eq "models: a model reads back" "$(sha_of "$W/m6/$B" 2>&1)" "$(sha_of "$W/$B")"
check "models: the hostile name was refused and logged" grep -q 'refused the name "../evil"' "$W/m6.log"
fs_umount "$W/m6" "$pid"
admin catalog '{"enabled": true}'

# ---- a CDN that does not answer
fs_conf "$W/nocdn.conf" "cdn_url=https://127.0.0.1:1" "folder=$F" "state_dir=$W/state-nocdn" \
	"cache_dir=$W/cache-nocdn" "io_timeout=3"
fs_mount "$W/m7" "$W/nocdn.conf"
pid=$FS_PID
start=$SECONDS
err=$(cat "$W/m7/$A" 2>&1 >/dev/null)
took=$((SECONDS - start))
case $err in *"Input/output error"* | *"timed out"*) ok "no CDN: a read fails with EIO or ETIMEDOUT" ;;
*) not_ok "no CDN: a read fails with EIO or ETIMEDOUT: '$err'" ;; esac
check "no CDN: within io_timeout (${took} s)" test "$took" -le 5
check "no CDN: the log names the big part" grep -q "127.0.0.1:1/$F/$A.big" "$W/m7.log"
fs_umount "$W/m7" "$pid"

# ---- the disk cache serves what was read before, with the CDN unreachable
fs_conf "$W/cached.conf" "cdn_url=$NGINX_URL" "folder=$F" "state_dir=$W/state-c" \
	"cache_dir=$W/cache-c" "io_timeout=3"
fs_mount "$W/m9" "$W/cached.conf"
pid=$FS_PID
sha_of "$W/m9/$A" >/dev/null
fs_umount "$W/m9" "$pid"
fs_conf "$W/cached-off.conf" "cdn_url=https://127.0.0.1:1" "folder=$F" "state_dir=$W/state-c" \
	"cache_dir=$W/cache-c" "io_timeout=3"
fs_mount "$W/m10" "$W/cached-off.conf"
pid=$FS_PID
check_eq "CDN unreachable: a model read before comes from cache_dir" \
	"$(sha_of "$W/m10/$A" 2>&1)" "$(sha_of "$W/$A")"
fs_umount "$W/m10" "$pid"

# ---- format 1 without chunk hashes whose catalog sha256 is not the
# plaintext's: checked whole before its first byte (docs/trust.md section 4),
# so not even the first read is served
C=${TAG}-c.onnx
head -c 200000 /dev/urandom >"$W/$C"
mkdir -p "$W/parts"
"$AZ_CTL" -c "$W/conf" publish --format 1 --name "$C" --out "$W/parts" "$W/$C" >>"$W/publish.log" 2>&1 ||
	bail "azaionctl publish --out failed"
c -o /dev/null -T "$W/parts/$C.big" "$NGINX_URL/$F/$C.big"
tok=$(c -X POST "$API_URL/login" -d "{\"email\":\"$API_EMAIL\",\"password\":\"$API_PASSWORD\"}" |
	"$PY" -c 'import json, sys; print(json.load(sys.stdin)["token"])')
code=$(c -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $tok" \
	-F "data=@$W/parts/$C.small;filename=$C.small" -F size=200000 \
	-F sha256=0000000000000000000000000000000000000000000000000000000000000000 \
	-F "big_size=$(stat -c %s "$W/parts/$C.big")" "$API_URL/resources/$F")
check_eq "a small part with a wrong sha256 is registered" "$code" 200
fs_conf "$W/sha.conf" "cdn_url=$NGINX_URL" "folder=$F" "state_dir=$W/state-sha" \
	"cache_dir=$W/cache-sha" "io_timeout=3"
fs_mount "$W/m11" "$W/sha.conf"
pid=$FS_PID
err=$(dd if="$W/m11/$C" bs=64k count=1 status=none 2>&1 >/dev/null)
case $err in *"Input/output error"*) ok "sha256 mismatch: not even the first 64 KiB is served" ;;
*) not_ok "sha256 mismatch: not even the first 64 KiB is served: '$err'" ;; esac
err=$(cat "$W/m11/$C" 2>&1 >/dev/null)
case $err in *"Input/output error"*) ok "sha256 mismatch: reading the whole file fails with EIO" ;;
*) not_ok "sha256 mismatch: reading the whole file fails with EIO: '$err'" ;; esac
check "sha256 mismatch: the log says so" grep -q "$C: the plaintext's sha256 differs" "$W/m11.log"
fs_umount "$W/m11" "$pid"

# ---- an API that answers too late, and a token that expires
admin token_ttl '{"seconds": 2}'
# Nothing kept, or the kept small part would serve once the API times out.
rm -rf "$W/state/small"
fs_mount "$W/m8" "$W/conf"
pid=$FS_PID
admin fault '{"status": 0, "count": 2, "delay": 8, "path": "/resources/get/"}'
start=$SECONDS
err=$(cat "$W/m8/$A" 2>&1 >/dev/null)
took=$((SECONDS - start))
case $err in *"Input/output error"* | *"timed out"*) ok "slow API: a read fails with EIO or ETIMEDOUT" ;;
*) not_ok "slow API: a read fails with EIO or ETIMEDOUT: '$err'" ;; esac
check "slow API: within io_timeout (${took} s)" test "$took" -le 5
admin fault '{"status": 0, "count": 0}'
before=$(logins)
sleep 3
check_eq "after the token expired, a read works" "$(sha_of "$W/m8/$B" 2>&1)" "$(sha_of "$W/$B")"
check "the daemon logged in again" test "$(logins)" -gt "$before"
fs_umount "$W/m8" "$pid"

fs_no_leftovers
done_testing
