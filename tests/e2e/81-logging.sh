#!/usr/bin/env bash
# 81-logging: where the daemon's messages go, and progress on a terminal.
#  - in the foreground (-f) every line goes to stderr with a time stamp and
#    its level, and nothing to syslog;
#  - daemonised, `azaionfs SOURCE DIR` returns only once DIR is mounted (what
#    the systemd unit's Type=forking relies on), and from then on messages go
#    to syslog (facility daemon, "azaionfs[PID]:") at their level, filtered by
#    log_level;
#  - azaionctl draws a progress bar on a terminal, and none into a pipe.
# The syslog socket /dev/log is a listener of this test, bound in a private
# mount namespace (the whole test runs in one), so the machine's own syslog,
# if any, is neither needed nor disturbed.
if [ -z "${AZ_T81_NS:-}" ]; then
	command -v unshare >/dev/null || { echo "not ok 1 - missing prerequisite: unshare"; exit 1; }
	AZ_T81_NS=1 exec unshare -m --propagation private bash "$0" "$@"
fi
. "$(dirname "$0")/../lib.sh"
. "$AZ_TOP/tests/tools/fs-lib.sh"
need script pgrep
fs_init t81

# ---- azaionctl: a progress bar on a terminal, none into a pipe
head -c $((8 * 1024 * 1024)) /dev/urandom >"$W/big.onnx"
mkdir -p "$W/out1" "$W/out2"
script -qec "$AZ_CTL publish --format 2 --out $W/out1 $W/big.onnx" "$W/tty.txt" >/dev/null 2>&1
check "azaionctl on a terminal draws a bar to 100%" \
	grep -q 'big.onnx \[#\+\] 100% 8.0 MiB/8.0 MiB' "$W/tty.txt"
"$AZ_CTL" publish --format 2 --out "$W/out2" "$W/big.onnx" >"$W/pipe.txt" 2>&1
check_eq "azaionctl into a pipe draws none" "$(grep -c '%' "$W/pipe.txt")" 0

# ---- a private /dev with our syslog listener at /dev/log
D=$W/dev
mkdir -p "$D"
mount -t tmpfs -o mode=755 tmpfs "$D" || bail "cannot mount a tmpfs on $D"
for n in null zero full random urandom tty fuse; do
	touch "$D/$n" && mount --bind "/dev/$n" "$D/$n" || bail "cannot bind /dev/$n"
done
ln -s /proc/self/fd "$D/fd"
LOG=$W/syslog.txt
: >"$LOG"
"$PY" - "$D/log" "$LOG" <<'EOF' &
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
with open(sys.argv[2], "a") as out:
    while True:
        out.write(s.recv(65536).decode(errors="replace").rstrip("\n") + "\n")
        out.flush()
EOF
LISTENER=$!
# The private /dev goes before fs_no_leftovers looks for mounts under $W.
teardown_dev() {
	kill "$LISTENER" 2>/dev/null
	if [ "$(stat -c %i /dev/log 2>/dev/null)" = "$(stat -c %i "$D/log" 2>/dev/null)" ]; then
		umount -l /dev
	fi
	grep -q " $D " /proc/mounts && umount -R -l "$D"
}
trap 'teardown_dev; fs_cleanup' EXIT
wait_for 10 test -S "$D/log" || bail "the syslog listener did not start"
mount --rbind "$D" /dev || bail "cannot put the private /dev in place"
check "syslog works here: logger's line arrives" sh -c \
	"logger -t t81probe hello && sleep 0.2 && grep -q 't81probe.*hello' '$LOG'" || true

F=l81$TAG
A=${TAG}-a.onnx
fs_conf "$W/conf" "cdn_url=$NGINX_URL" "folder=$F" "state_dir=$W/state" "cache_dir=$W/cache" \
	"io_timeout=3"
head -c 200001 /dev/urandom >"$W/$A"
fs_publish "$W/conf" 1 "$A" "$W/$A" || bail "publishing failed: $(tail -3 "$W/publish.log")"

daemon_of() { pgrep -f -- "azaionfs azaion $1( |$)" | head -1; }

# ---- foreground: stderr, nothing to syslog
fs_mount "$W/m1" "$W/conf"
pid=$FS_PID
wpid=$(pgrep -P "$pid" | head -1)
check_eq "foreground: a read works" "$(sha_of "$W/m1/$A" 2>&1)" "$(sha_of "$W/$A")"
fs_umount "$W/m1" "$pid"
check "foreground: stderr has time-stamped, levelled lines" grep -qE \
	'^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:.]+Z azaionfs\[info\]: mounted azaion at ' "$W/m1.log"
check "foreground: stderr has the unmount" grep -q "azaionfs\[info\]: $W/m1 was unmounted" "$W/m1.log"
check_eq "foreground: nothing of it in syslog, from either process" \
	"$(grep -cE "azaionfs\[($pid|${wpid:-x})\]" "$LOG")" 0

# ---- daemonised: ready on return, then syslog
mkdir -p "$W/m2"
"$AZ_DAEMON" azaion "$W/m2" -o "config=$W/conf" >"$W/m2.out" 2>&1
rc=$?
mounted_at_return=no
fs_mounted "$W/m2" && mounted_at_return=yes
pid=$(daemon_of "$W/m2")
FS_PIDS+=(${pid:-}) FS_MNTS+=("$W/m2")
check_eq "daemonised: the first process exits 0" "$rc" 0
check_eq "daemonised: the mount is in place when it returns" "$mounted_at_return" yes
check "daemonised: the start is reported on the terminal" grep -q 'mounted azaion at' "$W/m2.out"
check_eq "daemonised: a read works" "$(sha_of "$W/m2/$A" 2>&1)" "$(sha_of "$W/$A")"
fusermount3 -u "$W/m2"
check "daemonised: it exits after the unmount" wait_for 10 fs_gone "${pid:-0}"
# The supervisor (the detached process, the first of the two) says it.
wait_for 5 grep -q "azaionfs\[${pid:-x}\]: $W/m2 was unmounted" "$LOG"
check "daemonised: syslog has the unmount, facility daemon, level info (<30>)" \
	grep -qE "^<30>.*azaionfs\[${pid:-x}\]: $W/m2 was unmounted" "$LOG"
check_eq "daemonised: no debug line at log_level = info" \
	"$(grep -cE "^<31>.*azaionfs\[${pid:-x}\]" "$LOG")" 0
check_eq "daemonised: nothing after the start on the terminal" \
	"$(grep -c "was unmounted" "$W/m2.out")" 0

# ---- levels: log_level = warn keeps errors, drops info
fs_conf "$W/warn.conf" "cdn_url=https://127.0.0.1:1" "folder=$F" "state_dir=$W/state-w" \
	"cache_dir=$W/cache-w" "io_timeout=3" "log_level=warn"
mkdir -p "$W/m3"
"$AZ_DAEMON" azaion "$W/m3" -o "config=$W/warn.conf" >"$W/m3.out" 2>&1
pid=$(daemon_of "$W/m3")
FS_PIDS+=(${pid:-}) FS_MNTS+=("$W/m3")
check "log_level = warn: mounted" fs_mounted "$W/m3"
# The read's failure is the worker's to log (a child of the supervisor).
wpid=$(pgrep -P "${pid:-0}" | head -1)
err=$(cat "$W/m3/$A" 2>&1 >/dev/null)
check "log_level = warn: a read with no CDN fails ($err)" test -n "$err"
fusermount3 -u "$W/m3"
wait_for 10 fs_gone "${pid:-0}"
check "log_level = warn: the failure reaches syslog as an error or warning, naming the big part" \
	grep -qE "^<(27|28)>.*azaionfs\[${wpid:-x}\]: .*$A" "$LOG"
check_eq "log_level = warn: no info line (<30>) from either process" \
	"$(grep -cE "^<30>.*azaionfs\[(${pid:-x}|${wpid:-x})\]" "$LOG")" 0

teardown_dev
fs_no_leftovers
done_testing
