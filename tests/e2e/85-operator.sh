#!/usr/bin/env bash
# 85-operator: the operator's surface of azaionctl and azaionfs.
#  - every azaionctl command answers -h/--help with its own usage on stdout,
#    exit 0, and does nothing: no configuration read (-c of a missing file
#    passes), no request to the API (its requests.log is unchanged), no
#    connection to the TPM or the side endpoint (a listener stands in for
#    both and counts), state_dir's device id unchanged; `help`, `help
#    COMMAND` and --version; a bad option is one line naming the command's
#    --help, exit 2;
#  - a failure's reason reaches stderr without -v (a credentials file of
#    mode 0640);
#  - an unknown key gets one line with the nearest key, from azaionctl -o,
#    the daemon's -o (no usage dump) and the file;
#  - a comma inside an -o value is written \, : the daemon starts with
#    tpm_tcti=swtpm:host=...\,port=... and tpm = required against the stack's
#    swtpm and reports tpm: ok; the bare comma gets one line saying how to write it;
#  - progress on a terminal (script(1)'s pseudo-terminal): bytes done of the
#    total and an ETA, within the terminal's width, an error on a line of
#    its own, none into a pipe; unlock shows its loading_images phase
#    (dockerd is reached through a proxy here that holds each image check
#    for a second, so the phase lasts long enough to be seen).
. "$(dirname "$0")/../lib.sh"
. "$AZ_TOP/tests/tools/fs-lib.sh"
need script /usr/bin/docker openssl
fs_init t85

CMDS="publish hw enroll login load upload unlock status health"
free_port() {
	"$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
LISTENER_PIDS=()
cleanup85() {
	local p
	for p in "${LISTENER_PIDS[@]}"; do kill "$p" 2>/dev/null; done
	[ -n "${IMAGES:-}" ] && /usr/bin/docker -H "unix://$DOCKER_SOCK" rmi -f $IMAGES >/dev/null 2>&1
	fs_cleanup
}
trap cleanup85 EXIT

# A TCP listener that stands in for the TPM and the side endpoint: one line
# per connection into its log.
LPORT=$(free_port)
"$PY" - "$LPORT" "$W/listener.log" <<'EOF' &
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen(16)
while True:
    c, a = s.accept()
    with open(sys.argv[2], "a") as f:
        f.write("connection from %s\n" % (a,))
    c.close()
EOF
LISTENER_PIDS+=($!)
wait_for 10 "$PY" -c "import socket; socket.create_connection(('127.0.0.1', $LPORT), 1)" ||
	bail "the listener did not start"
rm -f "$W/listener.log"

# ---- --help does nothing
mkdir -p "$W/state"
echo "before-help" >"$W/state/device_id"
fs_conf "$W/conf" "state_dir=$W/state" "cache_dir=$W/cache" "tpm=auto" \
	"tpm_tcti=swtpm:host=127.0.0.1\\,port=$LPORT" "rest_listen=127.0.0.1:$LPORT"
log_before=$(wc -l <"$API_LOG")
for c in $CMDS; do
	for h in --help -h; do
		"$AZ_CTL" -c "$W/conf" $c $h >"$W/out" 2>"$W/err"
		rc=$?
		check_eq "azaionctl $c $h: exit 0" "$rc" 0
		check_eq "azaionctl $c $h: its own usage on stdout" "$(head -1 "$W/out" | cut -d' ' -f1-3)" \
			"usage: azaionctl $c"
		check_eq "azaionctl $c $h: nothing on stderr" "$(cat "$W/err")" ""
	done
	"$AZ_CTL" -c /nonexistent/azaionfs.conf $c --help >"$W/out2" 2>&1
	check "azaionctl -c MISSING $c --help: no configuration is read" cmp -s "$W/out" "$W/out2"
	"$AZ_CTL" help $c >"$W/out3" 2>&1
	check "azaionctl help $c is $c --help" cmp -s "$W/out" "$W/out3"
done
printf 'email = %s\npassword = %s\n' "$API_EMAIL" "$API_PASSWORD" |
	"$AZ_CTL" -c "$W/conf" enroll --help >/dev/null 2>&1
check_eq "enroll --help with credentials on stdin: the device id is unchanged" \
	"$(cat "$W/state/device_id")" before-help
check_eq "--help of every command: no request reached the API" "$(wc -l <"$API_LOG")" "$log_before"
check_eq "--help of every command: no connection to the TPM or the side endpoint" \
	"$(cat "$W/listener.log" 2>/dev/null)" ""

"$AZ_CTL" help >"$W/out" 2>&1
check_eq "azaionctl help: exit 0" "$?" 0
check "azaionctl help lists every command" sh -c \
	"for c in $CMDS; do grep -q \"^  \$c \" '$W/out' || exit 1; done"
"$AZ_CTL" --help >"$W/out2" 2>&1
check "azaionctl help is azaionctl --help" cmp -s "$W/out" "$W/out2"
out=$("$AZ_CTL" --version 2>&1)
check "azaionctl --version: '$out'" sh -c "echo '$out' | grep -qE '^azaionctl [0-9]+\.[0-9]+'"
check_eq "azaionctl -V is --version" "$("$AZ_CTL" -V 2>&1)" "$out"
out=$("$AZ_DAEMON" --version 2>&1)
check "azaionfs --version: '$out'" sh -c "echo '$out' | grep -qE '^azaionfs [0-9]+\.[0-9]+'"

# one_line WHAT RC PATTERN CMD...: CMD exits RC with one line on stderr matching PATTERN.
one_line() {
	local what=$1 want=$2 pat=$3 rc
	shift 3
	"$@" >/dev/null 2>"$W/err"
	rc=$?
	if [ "$rc" = "$want" ] && [ "$(wc -l <"$W/err")" -eq 1 ] && grep -qE -- "$pat" "$W/err"; then
		ok "$what: exit $rc, '$(cat "$W/err")'"
	else
		not_ok "$what: exit $rc (want $want), stderr: $(head -c 600 "$W/err")"
	fi
}
one_line "azaionctl help nope" 2 "unknown command 'nope'" "$AZ_CTL" help nope
one_line "azaionctl nope" 2 "unknown command 'nope'" "$AZ_CTL" nope
one_line "azaionctl publish --bogus" 2 "publish: unknown option '--bogus' \(see azaionctl publish --help\)" \
	"$AZ_CTL" -c "$W/conf" publish --bogus x
one_line "azaionctl status extra" 2 "status: unexpected argument 'extra'" \
	"$AZ_CTL" -c "$W/conf" status extra
one_line "azaionctl publish --format (no value)" 2 "publish: --format needs a value" \
	"$AZ_CTL" -c "$W/conf" publish --format

# ---- the reason of a failure without -v
fs_conf "$W/c640.conf" "cdn_url=$NGINX_URL" "state_dir=$W/state2" "cache_dir=$W/cache"
cp "$W/creds" "$W/creds640" && chmod 640 "$W/creds640"
sed -i "s|^credentials = .*|credentials = $W/creds640|" "$W/c640.conf"
head -c 1000 /dev/urandom >"$W/small.onnx"
"$AZ_CTL" -c "$W/c640.conf" publish "$W/small.onnx" >/dev/null 2>"$W/err"
rc=$?
check_eq "publish with a 0640 credentials file fails" "$rc" 1
check "and says why without -v: $(head -1 "$W/err")" \
	grep -q "creds640: mode 640 lets others read it; chmod 600 it" "$W/err"
"$AZ_CTL" -c "$W/c640.conf" login >/dev/null 2>"$W/err"
check "login says it too: $(head -1 "$W/err")" grep -q "mode 640 lets others read it" "$W/err"

# ---- unknown keys: the nearest one
one_line "azaionctl -o cach_dir=" 1 "unknown key 'cach_dir'; did you mean cache_dir\?" \
	"$AZ_CTL" -o cach_dir=/x hw
one_line "azaionctl -o tpm_tcit=" 1 "unknown key 'tpm_tcit'; did you mean tpm_tcti\?" \
	"$AZ_CTL" -o tpm_tcit=x hw
mkdir -p "$W/m0"
one_line "azaionfs -o cach_dir= (no usage dump)" 1 "unknown key 'cach_dir'; did you mean cache_dir\?" \
	"$AZ_DAEMON" azaion "$W/m0" -f -o "config=$W/conf,cach_dir=/x"
check "and it did not mount" sh -c "! grep -q ' $W/m0 ' /proc/mounts"
cp "$W/conf" "$W/typo.conf" && echo "cach_dir = /x" >>"$W/typo.conf"
one_line "the file's cach_dir" 1 "typo.conf:[0-9]+: unknown key 'cach_dir'; did you mean cache_dir\?" \
	"$AZ_CTL" -c "$W/typo.conf" hw
one_line "a key far from any" 1 "unknown key 'zzzzzz' \(azaionfs\(8\) lists the keys\)" \
	"$AZ_CTL" -o zzzzzz=1 hw

# ---- a comma in an -o value: \,
[ -n "${TPM_TCTI:-}" ] || bail "no TPM in the stack (TPM_TCTI unset)"
esc=${TPM_TCTI//,/\\,}
fs_conf "$W/tpm.conf" "cdn_url=$NGINX_URL" "folder=o85$TAG" "state_dir=$W/state3" \
	"cache_dir=$W/cache3" "tpm=required" "tpm_wait=5" "rest_listen=unix:$W/rest.sock"
sed -i '/^credentials = /d' "$W/tpm.conf"
one_line "azaionfs -o tpm_tcti with a bare comma" 1 \
	"unknown key 'port'.*a comma inside a value is written \\\\," \
	"$AZ_DAEMON" azaion "$W/m0" -f -o "config=$W/tpm.conf,tpm_tcti=$TPM_TCTI"
one_line "azaionctl -o tpm_tcti with a bare comma" 1 \
	"unknown key 'port'.*a comma inside a value is written \\\\," \
	"$AZ_CTL" -c "$W/tpm.conf" -o "tpm_tcti=$TPM_TCTI" hw
fs_mount "$W/mt" "$W/tpm.conf" "tpm_tcti=$esc"
pid=$FS_PID
check "the daemon started with -o ...,tpm_tcti=$esc" fs_mounted "$W/mt"
check_eq "and its TPM answers there (status: tpm ok)" \
	"$("$AZ_CTL" -c "$W/tpm.conf" status 2>&1 | sed -n 's/^tpm: *//p')" ok
check_eq "its log has no 'no TPM' line" "$(grep -ci 'no TPM' "$W/mt.log")" 0
fs_umount "$W/mt" "$pid"

# ---- progress on a terminal
head -c $((48 * 1024 * 1024)) /dev/urandom >"$W/big.onnx"
mkdir -p "$W/parts1" "$W/parts2"
# bar LOG: the lines drawn, one per redraw (script keeps the \r and escapes).
bar() { tr '\r' '\n' <"$1" | sed 's/\x1b\[K//g'; }
script -qec "stty cols 72; $AZ_CTL -o tpm=off publish --format 2 --out $W/parts1 $W/big.onnx" \
	"$W/tty.txt" >/dev/null 2>&1
bar "$W/tty.txt" >"$W/bars"
sed 's/^/# /' "$W/bars" | tail -4
check "publish on a terminal: 100% with done/total and the time taken" \
	grep -qE '^big\.onnx \[#+\] 100% 48\.0 MiB/48\.0 MiB [0-9.]+ [KMG]iB/s in [0-9]+:[0-9]{2}$' "$W/bars"
check "on the way: done of total and an ETA" \
	grep -qE '^big\.onnx \[[# ]+\] +[0-9]+% [0-9.]+ [KM]?i?B/48\.0 MiB [0-9.]+ [KMG]iB/s ETA [0-9]+:[0-9]{2}$' \
	"$W/bars"
check_eq "no line wider than the terminal's 72 columns" \
	"$(awk '/^big.onnx/ && length($0) > 71' "$W/bars" | head -1)" ""
script -qec "stty cols 150; $AZ_CTL -o tpm=off publish --format 2 --out $W/parts2 $W/big.onnx" \
	"$W/tty2.txt" >/dev/null 2>&1
w=$(bar "$W/tty2.txt" | awk '/^big.onnx.*100%/ { print length($0) }' | head -1)
check "a wider terminal gets a wider bar (149 columns: $w)" test "${w:-0}" -eq 149
"$AZ_CTL" -o tpm=off publish --format 2 --out "$W/parts2" "$W/big.onnx" >"$W/pipe.txt" 2>&1
check_eq "into a pipe: no progress" "$(grep -c 'ETA\|%' "$W/pipe.txt")" 0

# An upload that fails half-way: the error on a line of its own, never after
# the bar. The CDN here reads 8 MiB of the big part, then nothing more, and
# never answers: the upload times out with the bar drawn.
SPORT=$(free_port)
"$PY" - "$SPORT" <<'EOF' &
import socket, sys, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen(16)
held = []
while True:
    c, _ = s.accept()
    n = 0
    while n < 8 << 20:
        b = c.recv(65536)
        if not b:
            break
        n += len(b)
    held.append(c)
EOF
LISTENER_PIDS+=($!)
wait_for 10 "$PY" -c "import socket; socket.create_connection(('127.0.0.1', $SPORT), 1)" ||
	bail "the stalling CDN did not start"
fs_conf "$W/dead.conf" "cdn_url=http://127.0.0.1:$SPORT" "folder=o85$TAG" "state_dir=$W/state4" \
	"io_timeout=3"
script -qec "stty cols 100; $AZ_CTL -c $W/dead.conf publish --format 2 $W/big.onnx" \
	"$W/tty3.txt" >/dev/null 2>&1
tr -d '\r' <"$W/tty3.txt" | sed 's/\x1b\[K/\n/g' >"$W/lines3"
sed 's/^/# /' "$W/lines3" | grep -v '^# *$' | tail -4
check "a failed publish says so" grep -q "azaionctl: publish big.onnx" "$W/lines3"
check "with the bar drawn part of the way before" grep -qE '^big\.onnx \[#* +\] +[0-9]+% ' "$W/lines3"
check_eq "every error line stands alone (no bar before it)" \
	"$(tr '\r' '\n' <"$W/tty3.txt" | grep -E 'azaionctl(\[error\])?:' | grep -E '\[#|%' | head -1)" ""

# ---- unlock: the loading_images phase
D() { /usr/bin/docker -H "unix://$DOCKER_SOCK" "$@"; }
V=v$(echo "$TAG" | tr 'A-Z' 'a-z')
IMAGES="test85/one:$V"
mkdir -p "$W/rootfs/opt" "$W/arch"
head -c $((4 * 1024 * 1024)) /dev/urandom >"$W/rootfs/opt/blob"
tar -C "$W/rootfs" -c . | D import - "test85/one:$V" >/dev/null &&
	D save -o "$W/images.tar" $IMAGES && D rmi $IMAGES >/dev/null ||
	bail "cannot make the test image with dockerd"
"$PY" "$AZ_TOP/tests/tools/azformat.py" f1-encrypt \
	--key-hex "$(sha256sum <"$KEY_FRAGMENT_FILE" | cut -d' ' -f1)" \
	--in "$W/images.tar" --out "$W/arch/images.enc" || bail "f1-encrypt failed"
rm -f "$W/images.tar"
# dockerd through a proxy that holds each image check (GET /images/.../json) for 1 s.
"$PY" - "$W/slow-docker.sock" "$DOCKER_SOCK" 1.0 "$W/slow.log" <<'EOF' &
import socket, sys, threading, time
listen, upstream, delay, log = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
srv = socket.socket(socket.AF_UNIX)
srv.bind(listen)
srv.listen(16)
def pipe(src, dst, inspect):
    try:
        while True:
            b = src.recv(65536)
            if not b:
                break
            line = b.split(b"\r\n", 1)[0]
            if inspect and b.startswith(b"GET ") and b"/images/" in line:
                with open(log, "a") as f:
                    f.write(line.decode(errors="replace") + "\n")
                time.sleep(delay)
            dst.sendall(b)
    except OSError:
        pass
    finally:
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass
def serve(c):
    u = socket.socket(socket.AF_UNIX)
    u.connect(upstream)
    t = threading.Thread(target=pipe, args=(u, c, False), daemon=True)
    t.start()
    pipe(c, u, True)
    t.join()
    c.close()
    u.close()
while True:
    c, _ = srv.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
EOF
LISTENER_PIDS+=($!)
wait_for 10 test -S "$W/slow-docker.sock" || bail "the docker proxy did not start"
PORT=$(free_port)
fs_conf "$W/unlock.conf" "cdn_url=$NGINX_URL" "folder=o85$TAG" "state_dir=$W/state5" \
	"cache_dir=$W/cache5" "rest_listen=127.0.0.1:$PORT" "images=test85/one" \
	"images_version=$V" "images_archive=$W/arch/images.enc" \
	"docker_socket=$W/slow-docker.sock"
fs_mount "$W/mu" "$W/unlock.conf"
pid=$FS_PID
script -qec "stty cols 100; $AZ_CTL -c $W/unlock.conf unlock" "$W/tty4.txt" >/dev/null 2>&1
bar "$W/tty4.txt" >"$W/bars4"
sed 's/^/# /' "$W/bars4" | grep -v '^# *$' | tail -5
check "unlock on a terminal shows its loading_images phase" \
	grep -qE '^unlock loading_images, [0-9]+:[0-9]{2} so far$' "$W/bars4"
check "and ends ready" grep -q '^unlock: ready' "$W/bars4"
check "the proxy held image checks" test -s "$W/slow.log"
check "dockerd has the image" sh -c "/usr/bin/docker -H 'unix://$DOCKER_SOCK' image inspect 'test85/one:$V' >/dev/null"
fs_umount "$W/mu" "$pid"

fs_no_leftovers
done_testing
