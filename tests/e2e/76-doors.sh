#!/usr/bin/env bash
# 76-doors: the mount's door and the daemon's transport and memory
# (docs/trust.md 3 and 5).
#  - allow_other without default_permissions, a group or a user that does
#    not exist: refused before mounting, with a message naming the cause;
#  - the shipped mount (allow_other,default_permissions, the defaults of
#    uid, gid and umask): files root:azaion 0440, the root 0550; a process
#    in the group azaion reads a model, the user nobody gets EACCES;
#  - api_url or cdn_url over plain http:// to a non-loopback address:
#    refused at start with the reason, and a listener there sees no
#    connection;
#  - every resident page of the worker is locked (mlockall), VmLck covers
#    VmRSS; memory_lock = all with RLIMIT_MEMLOCK too low and no
#    CAP_IPC_LOCK stops with what to raise, memory_lock = best-effort goes
#    on; in a sanitizer build the daemon says that it does not lock all.
. "$(dirname "$0")/../lib.sh"
. "$AZ_TOP/tests/tools/fs-lib.sh"
need setpriv prlimit ip getent stat ldd
fs_init t76
trap 'kill "${lpid:-0}" 2>/dev/null; fs_cleanup' EXIT
chmod 711 "$W"
GID=$(getent group azaion | cut -d: -f3)
[ -n "$GID" ] || bail "missing prerequisite: the group azaion"
NOBODY=65534
in_group() { setpriv --reuid=$NOBODY --regid=$NOBODY --groups="$GID" "$@"; }
outsider() { setpriv --reuid=$NOBODY --regid=$NOBODY --clear-groups "$@"; }
# errno of open(PATH) as the given runner, by name ("ok" when it opens).
open_errno() {
	"$@" "$PY" -c 'import errno, os, sys
try:
    os.close(os.open(sys.argv[1], os.O_RDONLY)); print("ok")
except OSError as e:
    print(errno.errorcode[e.errno])' "$P"
}
sanitizer=0
ldd "$AZ_DAEMON" | grep -qE 'lib(a|t)san' && sanitizer=1

F=d76$TAG
N=${TAG}-doors.onnx
fs_conf "$W/conf" "cdn_url=$NGINX_URL" "folder=$F" "state_dir=$W/state" "cache_max=0"
head -c 1500007 /dev/urandom >"$W/$N"
fs_publish "$W/conf" 1 "$N" "$W/$N" || bail "publishing failed: $(tail -3 "$W/publish.log")"

# ---- refused before mounting
mkdir -p "$W/m0"
refused() { # refused WHAT EXPECTED-PART -o OPTIONS...
	local what=$1 part=$2 out rc
	shift 2
	out=$("$AZ_DAEMON" azaion "$W/m0" -f "$@" 2>&1)
	rc=$?
	check_eq "$what: refused with exit status 1" "$rc" 1
	case $out in *"$part"*) ok "  saying so: $(echo "$out" | tail -1)" ;;
	*) not_ok "  saying so ('$part'): '$out'" ;; esac
	check "  and nothing was mounted" test "$(grep -c " $W/m0 " /proc/mounts)" = 0
}
refused "allow_other without default_permissions" \
	"allow_other without default_permissions would let every local user" \
	-o "config=$W/conf,allow_other"
refused "a group that does not exist" "gid=nogroup$TAG: no such group" \
	-o "config=$W/conf,allow_other,default_permissions,gid=nogroup$TAG"
refused "a user that does not exist" "uid=nouser$TAG: no such user" \
	-o "config=$W/conf,allow_other,default_permissions,uid=nouser$TAG"

# ---- the shipped mount: root and the group azaion read, nobody else
fs_mount "$W/m" "$W/conf" allow_other default_permissions
pid=$FS_PID
P=$W/m/$N
check_eq "a model is root:azaion, mode 0440 (0444 less umask 0027)" \
	"$(stat -c '%U:%G %a' "$P")" "root:azaion 440"
check_eq "the mount's root is root:azaion, mode 0550" "$(stat -c '%U:%G %a' "$W/m")" \
	"root:azaion 550"
check_eq "a process of user $NOBODY in the group azaion reads the model" \
	"$(in_group sha256sum "$P" 2>&1 | cut -d' ' -f1)" "$(sha_of "$W/$N")"
check_eq "the user nobody, outside the group, gets EACCES opening it" \
	"$(open_errno outsider)" EACCES
check_eq "  and listing the mount" "$(outsider ls "$W/m" >/dev/null 2>&1 || echo denied)" denied
check_eq "root reads it" "$(sha_of "$P")" "$(sha_of "$W/$N")"

# ---- memory: every resident page locked (a release build)
unlocked_kb() {
	awk '/^[0-9a-f]+-[0-9a-f]+ / {rss = 0} /^Rss:/ {rss = $2}
	/^VmFlags:/ {if ($0 !~ / lo( |$)/) sum += rss} END {print sum + 0}' "/proc/$1/smaps"
}
st() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; }
if [ $sanitizer = 1 ]; then
	check "a sanitizer build says that it does not lock all memory" \
		grep -q "memory_lock: not locking all memory in a sanitizer build" "$W/m.log"
else
	# The worker holds the secrets; the supervisor holds none and locks nothing.
	wpid=$(pgrep -P "$pid" | head -1)
	check "the supervisor ($pid) has a worker (${wpid:-none})" test -n "$wpid"
	lck=$(st "${wpid:-0}" VmLck) rss=$(st "${wpid:-0}" VmRSS) ul=$(unlocked_kb "${wpid:-0}")
	check "VmLck ($lck kB) covers VmRSS ($rss kB)" test "$lck" -ge "$rss"
	# The vDSO is a special mapping that mlockall leaves alone: a page or two.
	check "resident but unlocked: $ul kB (at most 64: the vDSO)" test "$ul" -le 64
	check "no warning about memory locking" sh -c "! grep -q memory_lock '$W/m.log'"
fi
fs_umount "$W/m" "$pid"

if [ $sanitizer = 0 ]; then
	# Root without CAP_IPC_LOCK is bound by RLIMIT_MEMLOCK like any user.
	# 6 MiB: lowering needs no privilege (raising would need CAP_SYS_RESOURCE).
	lowlock=(prlimit --memlock=6291456:6291456 setpriv --inh-caps=-ipc_lock
		--bounding-set=-ipc_lock)
	out=$("${lowlock[@]}" "$AZ_DAEMON" azaion "$W/m0" -f -o "config=$W/conf" 2>&1)
	rc=$?
	check_eq "memory_lock = all with RLIMIT_MEMLOCK 6 MiB, no CAP_IPC_LOCK: exit status 1" \
		"$rc" 1
	case $out in *"RLIMIT_MEMLOCK is 6144 KiB"*LimitMEMLOCK*"ulimit -l"*) ok "  saying what to raise" ;;
	*) not_ok "  saying what to raise: '$out'" ;; esac
	check "  and nothing was mounted" test "$(grep -c " $W/m0 " /proc/mounts)" = 0
	mkdir -p "$W/m1"
	"${lowlock[@]}" "$AZ_DAEMON" azaion "$W/m1" -f \
		-o "config=$W/conf,memory_lock=best-effort,memory_cache=4M" >"$W/m1.log" 2>&1 &
	pid=$!
	FS_PIDS+=("$pid") FS_MNTS+=("$W/m1")
	wait_for 30 fs_mounted "$W/m1" || sed 's/^/# /' "$W/m1.log"
	check_eq "memory_lock = best-effort with the same limit mounts and reads" \
		"$(sha_of "$W/m1/$N" 2>&1)" "$(sha_of "$W/$N")"
	check "  with a warning that names the limit" \
		grep -q "memory_lock: RLIMIT_MEMLOCK is 6144 KiB, too low to lock all memory" \
		"$W/m1.log"
	fs_umount "$W/m1" "$pid"
fi

# ---- plain http:// off loopback: refused before any connection
EXT=$(ip -4 -o addr show scope global | awk '{sub(/\/.*/, "", $4); print $4; exit}')
[ -n "$EXT" ] || bail "missing prerequisite: an IPv4 address that is not loopback"
"$PY" -c 'import socket, sys
s = socket.socket(); s.bind((sys.argv[1], 0)); s.listen(16)
open(sys.argv[2] + ".port", "w").write(str(s.getsockname()[1]))
while True:
    c, a = s.accept(); open(sys.argv[2], "a").write("connection from %s\n" % a[0]); c.close()' \
	"$EXT" "$W/seen" &
lpid=$!
wait_for 10 test -s "$W/seen.port" || bail "the listener on $EXT did not start"
LURL=http://$EXT:$(cat "$W/seen.port")
refused "api_url = $LURL" "api_url: plain http:// would send the password and the token in the clear: '$EXT' is not a loopback address; use https://" \
	-o "config=$W/conf,allow_other,default_permissions,api_url=$LURL"
refused "cdn_url = $LURL/cdn" "cdn_url: plain http:// would send the password and the token in the clear" \
	-o "config=$W/conf,allow_other,default_permissions,cdn_url=$LURL/cdn"
check_eq "the listener at $LURL saw no connection" "$(cat "$W/seen" 2>/dev/null)" ""
curl -s -m 5 -o /dev/null "$LURL/" 2>/dev/null
check "  (it sees one when there is one)" wait_for 5 grep -q "connection from" "$W/seen"
kill "$lpid" 2>/dev/null

fs_no_leftovers
done_testing
