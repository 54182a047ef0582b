#!/usr/bin/env bash
# 73-hardening: the daemon holds keys and plaintext, so it turns off core
# dumps (RLIMIT_CORE 0) and makes itself non-dumpable (PR_SET_DUMPABLE 0),
# which also forbids ptrace and /proc/PID/mem, environ and the like to other
# processes of its own user. Checked on a daemon run as the user nobody,
# each time beside a plain process of the same user that shows what the
# check would see without the hardening.
. "$(dirname "$0")/../lib.sh"
. "$AZ_TOP/tests/tools/fs-lib.sh"
need setpriv
fs_init t73
trap 'kill "${ctl:-0}" 2>/dev/null; fs_cleanup' EXIT
U=nobody
id "$U" >/dev/null 2>&1 || bail "missing prerequisite: a user $U"
AS_USER=(setpriv --reuid="$U" --regid="$(id -g "$U")" --clear-groups)
as_user() { "${AS_USER[@]}" "$@"; }

F=d73$TAG
N=${TAG}-h.onnx
fs_conf "$W/pub.conf" "cdn_url=$NGINX_URL" "folder=$F" "state_dir=$W/state-pub"
head -c 100003 /dev/urandom >"$W/$N"
fs_publish "$W/pub.conf" 1 "$N" "$W/$N" || bail "publishing failed: $(tail -3 "$W/publish.log")"

# Everything the daemon reads or writes, owned by or readable to the user.
# memory_lock = best-effort: a user's RLIMIT_MEMLOCK (8 MiB by default) is
# too low to lock all memory, and raising it takes CAP_SYS_RESOURCE, which
# a test may not have; 76-doors covers memory_lock = all.
chmod 711 "$W"
mkdir -p "$W/u/mnt" "$W/u/state"
cp "$STACK_CA" "$W/u/ca.pem"
cp "$W/creds" "$W/u/creds"
fs_conf "$W/u/conf" "ca_file=$W/u/ca.pem" "credentials=$W/u/creds" "cdn_url=$NGINX_URL" \
	"folder=$F" "state_dir=$W/u/state" "cache_max=0" "memory_cache=4M" \
	"rest_listen=unix:$W/u/rest.sock" "rest_group=$(id -gn "$U")" "memory_lock=best-effort"
chown -R "$U" "$W/u"
chmod 600 "$W/u/creds"

# setpriv execs: $! is the daemon itself.
"${AS_USER[@]}" "$AZ_DAEMON" azaion "$W/u/mnt" -f -o "config=$W/u/conf" >"$W/u/mnt.log" 2>&1 &
pid=$!
FS_PIDS+=("$pid")
FS_MNTS+=("$W/u/mnt")
wait_for 30 fs_mounted "$W/u/mnt" || { cat "$W/u/mnt.log"; bail "azaionfs did not mount as $U"; }
check_eq "the daemon runs as $U" "$(awk '/^Uid:/ {print $2}' "/proc/$pid/status")" "$(id -u "$U")"
check_eq "and serves" "$(as_user sha256sum "$W/u/mnt/$N" | cut -d' ' -f1)" "$(sha_of "$W/$N")"

# A plain process of the same user, for comparison.
"${AS_USER[@]}" sleep 300 &
ctl=$!
wait_for 5 test "$(stat -c %U "/proc/$ctl/environ" 2>/dev/null)" = "$U"

check_eq "core dumps are off (RLIMIT_CORE 0)" \
	"$(awk '/^Max core file size/ {print $5, $6}' "/proc/$pid/limits")" "0 0"
check_eq "  (a plain process of $U keeps the limit it inherited)" \
	"$(awk '/^Max core file size/ {print $5}' "/proc/$ctl/limits")" \
	"$(awk '/^Max core file size/ {print $5}' "/proc/self/limits")"
check_eq "the daemon is not dumpable: its /proc files belong to root" \
	"$(stat -c %U "/proc/$pid/environ")" root
check_eq "  (a plain process's belong to $U)" "$(stat -c %U "/proc/$ctl/environ")" "$U"
if as_user cat "/proc/$pid/environ" >/dev/null 2>&1; then
	not_ok "$U cannot read the daemon's /proc/PID/environ"
else
	ok "$U cannot read the daemon's /proc/PID/environ"
fi
check "  (but a plain process's)" as_user cat "/proc/$ctl/environ"
if as_user head -c 1 "/proc/$pid/mem" >/dev/null 2>&1; then
	not_ok "$U cannot open the daemon's /proc/PID/mem"
else
	ok "$U cannot open the daemon's /proc/PID/mem"
fi

# ptrace(PTRACE_ATTACH) as the same user.
attach() {
	as_user "$PY" -c 'import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
pid = int(sys.argv[1])
if libc.ptrace(16, pid, None, None) != 0:          # PTRACE_ATTACH
    print(os.strerror(ctypes.get_errno())); sys.exit(1)
os.waitpid(pid, 0)
libc.ptrace(17, pid, None, None)                   # PTRACE_DETACH
print("attached")' "$1"
}
out=$(attach "$pid")
check_eq "$U cannot ptrace-attach to the daemon" "$out" "Operation not permitted"
check_eq "  (but to a plain process of $U)" "$(attach "$ctl")" attached
kill "$ctl"

check "the daemon still serves after the attempts" \
	test "$(as_user sha256sum "$W/u/mnt/$N" | cut -d' ' -f1)" = "$(sha_of "$W/$N")"
as_user fusermount3 -u "$W/u/mnt"
check "it exits after fusermount3 -u" wait_for 20 fs_gone "$pid"
wait "$pid"
check_eq "with status 0" "$?" 0

# The same for a daemon started by root, as in production.
fs_mount "$W/mnt" "$W/pub.conf"
check_eq "a daemon started by root: RLIMIT_CORE 0 too" \
	"$(awk '/^Max core file size/ {print $5, $6}' "/proc/$FS_PID/limits")" "0 0"
fs_umount "$W/mnt" "$FS_PID"
fs_no_leftovers
done_testing
