#!/usr/bin/env bash
# 86-messages: what an operator reads when something is wrong.
#  - each connection failure has its own words, in azaionctl's answer and in
#    the daemon's log: a port nobody listens on ("connection refused at
#    HOST:PORT"), a name that does not resolve ("cannot resolve NAME"), a
#    server whose certificate is not signed by a CA in ca_file ("TLS:
#    certificate of HOST:PORT not trusted"), a server that accepts and never
#    answers ("timed out after N s"), a CDN that closes mid-transfer ("closed
#    the connection after N of M bytes"), no credentials ("not logged in");
#    none of them is "No route to host";
#  - log_level = debug: one line per API or CDN request (method, URL, status,
#    bytes, ms), none holding the password, the token or the S3 secret;
#  - log_file: created mode 0600, written after detaching; a symlink or a
#    file others can write is refused;
#  - tpm = required with no TPM says within seconds what it waits for, and
#    SIGTERM (daemon, also daemonised) or SIGINT (azaionctl enroll) ends the
#    wait within 2 s.
. "$(dirname "$0")/../lib.sh"
. "$AZ_TOP/tests/tools/fs-lib.sh"
. "$AZ_TOP/tests/tools/fault-lib.sh"
need pgrep stat
fs_init t86
PIDS=()
cleanup86() {
	local p
	for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
	fp_cleanup
	fs_cleanup
}
trap cleanup86 EXIT

F=m86$TAG
A=${TAG}-a.onnx
head -c 300001 /dev/urandom >"$W/$A"

# conf FILE KEY=VALUE...: like fs_conf, but every key may be replaced.
conf() {
	local f=$1 kv k
	shift
	declare -A v=([api_url]=$API_URL [ca_file]=$STACK_CA [credentials]=$W/creds
		[hardware_id]=azaionfs-test-hardware [tpm]=off [rest_group]=root [folder]=$F
		[state_dir]=$W/state [cache_dir]=$W/cache [io_timeout]=3)
	for kv in "$@"; do v[${kv%%=*}]=${kv#*=}; done
	: >"$f"
	for k in "${!v[@]}"; do [ -n "${v[$k]}" ] && echo "$k = ${v[$k]}" >>"$f"; done
}

# A port nobody listens on: bound by the kernel for a moment, then freed.
DEAD=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
# A server that accepts and never answers.
"$PY" - "$W/silent.port" <<'EOF' &
import socket, sys, time
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen(64)
open(sys.argv[1] + ".tmp", "w").write(str(s.getsockname()[1]))
__import__("os").rename(sys.argv[1] + ".tmp", sys.argv[1])
held = []
while True:
    c, _ = s.accept()
    held.append(c)
EOF
PIDS+=($!)
wait_for 10 test -s "$W/silent.port" || bail "the silent server did not start"
SILENT=$(cat "$W/silent.port")
NGINX_HOSTPORT=${NGINX_URL#https://}

# An API out of reach with no saved catalog stops the start (77-loud): a
# model listed once gives the daemon below a saved catalog to start with.
S=${TAG}-s.onnx
head -c 1000 /dev/urandom >"$W/$S"
conf "$W/seed.conf" "cdn_url=$NGINX_URL"
fs_publish "$W/seed.conf" 1 "$S" "$W/$S" || bail "publishing failed: $(tail -3 "$W/publish.log")"
fs_mount "$W/m-seed" "$W/seed.conf"
wait_for 20 test -e "$W/m-seed/$S" || bail "the mount does not list $S"
fs_umount "$W/m-seed" "$FS_PID"

# ---- connection failures: azaionctl, then the daemon's log
# case NAME API_URL CA_FILE REGEX
cases=(
	"refused|https://127.0.0.1:$DEAD|$STACK_CA|connection refused at 127\.0\.0\.1:$DEAD"
	"dns|https://nonexistent.invalid|$STACK_CA|cannot resolve nonexistent\.invalid"
	"tls|$NGINX_URL|$STACK_EK_CA|TLS: certificate of ${NGINX_HOSTPORT//./\\.} not trusted"
	"timeout|https://127.0.0.1:$SILENT|$STACK_CA|no answer from 127\.0\.0\.1:$SILENT( while connecting)?: timed out after [0-9]+ s"
)
for c in "${cases[@]}"; do
	IFS='|' read -r name url ca re <<<"$c"
	conf "$W/$name.conf" "api_url=$url" "ca_file=$ca" "cdn_url=$NGINX_URL" "io_timeout=2" \
		"rest_listen=unix:$W/rest-$name.sock"
	"$AZ_CTL" -c "$W/$name.conf" publish --name "$A" "$W/$A" >"$W/$name.ctl" 2>&1
	rc=$?
	check "azaionctl, $name: fails (rc $rc)" test "$rc" -ne 0
	check "azaionctl, $name: says /$re/ ($(head -c 300 "$W/$name.ctl"))" \
		grep -qE "$re" "$W/$name.ctl"
	check_eq "azaionctl, $name: not 'No route to host'" "$(grep -c 'No route to host' "$W/$name.ctl")" 0
	fs_mount "$W/m-$name" "$W/$name.conf"
	pid=$FS_PID
	wait_for 15 grep -q "offline start: the API at" "$W/m-$name.log"
	check "daemon, $name: an offline start, said with /$re/" \
		grep -qE "offline start: the API at .* is out of reach \($re" "$W/m-$name.log"
	# Said once: not by fetch, the session and the start each (the login's
	# callers own its message).
	check_eq "daemon, $name: the failure is one line of the log ($(grep -E "$re" "$W/m-$name.log" | head -3))" \
		"$(grep -E "$re" "$W/m-$name.log" | grep -cv '\[debug\]')" 1
	check_eq "daemon, $name: not 'No route to host'" \
		"$(grep -c 'No route to host' "$W/m-$name.log")" 0
	# The side endpoint's answer (F1 login through the daemon) carries the same words.
	wait_for 10 test -S "$W/rest-$name.sock"
	# said_lines: the failure's lines that are not debug, less the catalog's
	# background retries, which may come at any time.
	said_lines() { grep -E "$re" "$W/m-$name.log" | grep -v '\[debug\]' | grep -cv 'catalog: cannot list'; }
	said=$(said_lines)
	"$AZ_CTL" -c "$W/$name.conf" login >"$W/$name.login" 2>&1
	check "side endpoint, $name: the login's detail says /$re/ ($(head -c 300 "$W/$name.login"))" \
		grep -qE "$re" "$W/$name.login"
	check "daemon, $name: the side endpoint's failed login, logged with /$re/" \
		grep -qE "login to .* with the given credentials failed: $re" "$W/m-$name.log"
	check_eq "daemon, $name: ... in one more line" \
		"$(said_lines)" $((said + 1))
	fs_umount "$W/m-$name" "$pid"
done

# ---- a resolver that never answers (a device with no DNS reachable):
# curl then times out in its lookup rather than failing it, and the words
# must still say it is the name that could not be resolved.
"$PY" - "$W/bh.port" <<'EOF' &
import socket, sys
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.bind(("127.0.0.77", 53))
t = socket.socket()
t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
t.bind(("127.0.0.77", 53))
t.listen()
open(sys.argv[1], "w").write("53")
while True:
    u.recvfrom(2048)
EOF
PIDS+=($!)
wait_for 10 test -s "$W/bh.port" || bail "the silent resolver did not start"
echo "nameserver 127.0.0.77" >"$W/resolv.silent"
conf "$W/dns-silent.conf" "api_url=https://nonexistent.invalid" "cdn_url=$NGINX_URL" "io_timeout=2"
unshare -m sh -c 'mount --bind "$1" /etc/resolv.conf && shift && exec "$@"' sh \
	"$W/resolv.silent" "$AZ_CTL" -c "$W/dns-silent.conf" publish --name "$A" "$W/$A" \
	>"$W/dns-silent.ctl" 2>&1
rc=$?
check "azaionctl, a silent resolver: fails (rc $rc)" test "$rc" -ne 0
check "azaionctl, a silent resolver: says the lookup timed out ($(head -c 300 "$W/dns-silent.ctl"))" \
	grep -qE "cannot resolve nonexistent\.invalid: the DNS lookup timed out after [0-9]+ s" \
	"$W/dns-silent.ctl"

# ---- not logged in
conf "$W/nologin.conf" "credentials=" "cdn_url=$NGINX_URL" "rest_listen=unix:$W/rest.sock"
fs_mount "$W/m-nologin" "$W/nologin.conf"
pid=$FS_PID
wait_for 10 test -S "$W/rest.sock"
"$AZ_CTL" -c "$W/nologin.conf" load --out "$W/nologin.out" "$A" >"$W/nologin.ctl" 2>&1
check "azaionctl load, not logged in: says to run azaionctl login ($(cat "$W/nologin.ctl"))" \
	grep -q "not logged in.*run azaionctl login" "$W/nologin.ctl"
check "daemon, not logged in: its log says 'not logged in: run azaionctl login'" \
	grep -q "not logged in: run azaionctl login" "$W/m-nologin.log"
check_eq "daemon, not logged in: no 'Required key not available'" \
	"$(grep -c 'Required key not available' "$W/m-nologin.log" "$W/nologin.ctl" | awk -F: '{s += $2} END {print s}')" 0
fs_umount "$W/m-nologin" "$pid"

# ---- a credentials file others can read: refused before any connection,
# in one line that names the file and the fix (the session's words, said
# once by the command or the start: not also 'cannot start a session')
cp "$W/creds" "$W/creds644"
chmod 644 "$W/creds644"
conf "$W/c644.conf" "credentials=$W/creds644" "cdn_url=$NGINX_URL"
want="credentials: $W/creds644: mode 644 lets others read it; chmod 600 it"
"$AZ_CTL" -c "$W/c644.conf" publish --name "$A" "$W/$A" >"$W/c644.ctl" 2>&1
rc=$?
check "azaionctl, credentials mode 644: fails (rc $rc)" test "$rc" -ne 0
check "azaionctl, credentials mode 644: says '$want' ($(head -c 300 "$W/c644.ctl"))" \
	grep -qF "$want" "$W/c644.ctl"
check_eq "azaionctl, credentials mode 644: in one line" "$(grep -c . "$W/c644.ctl")" 1
mkdir -p "$W/m-c644"
timeout 60 "$AZ_DAEMON" azaion "$W/m-c644" -f -o "config=$W/c644.conf" >"$W/m-c644.log" 2>&1
rc=$?
check "daemon, credentials mode 644: does not start (rc $rc)" test "$rc" -ne 0 -a "$rc" -ne 124
check "daemon, credentials mode 644: says '$want'" grep -qF "$want" "$W/m-c644.log"
check_eq "daemon, credentials mode 644: said once" "$(grep -cF "$W/creds644" "$W/m-c644.log")" 1
check_eq "daemon, credentials mode 644: nothing mounted" "$(grep -c " $W/m-c644 " /proc/mounts)" 0

# ---- a CDN that closes mid-transfer (a proxy in front of nginx)
fp_start CDN "$NGINX_URL"
conf "$W/pub.conf" "cdn_url=$CDN_URL"
fp_fault CDN '{"kind": "refuse", "count": -1, "method": "PUT"}'
"$AZ_CTL" -c "$W/pub.conf" publish --name "$A" "$W/$A" >"$W/midput.ctl" 2>&1
check "azaionctl publish, the CDN closes during the PUT: says so ($(head -c 300 "$W/midput.ctl"))" \
	grep -qE "closed the connection after [0-9]+ of [0-9]+ bytes" "$W/midput.ctl"
fp_clear CDN
fs_publish "$W/pub.conf" 1 "$A" "$W/$A" || bail "publishing failed: $(tail -3 "$W/publish.log")"
conf "$W/mid.conf" "cdn_url=$CDN_URL" "cache_dir=$W/cache-mid" "io_timeout=3"
fp_fault CDN '{"kind": "truncate", "count": -1, "path": "/'"$F"'/", "method": "GET", "after": 1000}'
fs_mount "$W/m-mid" "$W/mid.conf"
pid=$FS_PID
wait_for 10 test -e "$W/m-mid/$A"
check "daemon, the CDN closes mid-transfer: the read fails" \
	sh -c "! cat '$W/m-mid/$A' >/dev/null 2>&1"
check "daemon, the CDN closes mid-transfer: its log says after how many bytes" \
	grep -qE "GET ${CDN_URL//./\\.}/$F/.*: 127\.0\.0\.1:[0-9]+ closed the connection after 1000 of [0-9]+ bytes" \
	"$W/m-mid.log"
# The store hands the failed call's words up and the FUSE edge logs them:
# one failure, one line, from the mount (the HTTP client logs it at debug).
check_eq "daemon, the CDN closes mid-transfer: the failed read is logged once" \
	"$(grep -c "closed the connection after 1000 of" "$W/m-mid.log")" 1
fs_umount "$W/m-mid" "$pid"
fp_clear CDN

# ---- log_level = debug into log_file, daemonised, over S3 (signed requests)
(umask 077 && echo "$S3_SECRET_KEY" >"$W/s3.secret")
(umask 077 && echo "$S3_UPLOADER_SECRET_KEY" >"$W/s3up.secret")
conf "$W/s3pub.conf" "cdn_url=$S3_URL/$S3_BUCKET" "s3_access_key=$S3_UPLOADER_ACCESS_KEY" \
	"s3_secret_key_file=$W/s3up.secret" "folder=${F}s"
fs_publish "$W/s3pub.conf" 1 "$A" "$W/$A" || bail "publishing to S3 failed: $(tail -3 "$W/publish.log")"
LF=$W/logs/azaionfs.log
mkdir -p "$W/logs"
conf "$W/dbg.conf" "cdn_url=$S3_URL/$S3_BUCKET" "s3_access_key=$S3_ACCESS_KEY" \
	"s3_secret_key_file=$W/s3.secret" "folder=${F}s" "cache_dir=$W/cache-dbg" \
	"log_level=debug" "log_file=$LF"
mkdir -p "$W/m-dbg"
(umask 022 && "$AZ_DAEMON" azaion "$W/m-dbg" -o "config=$W/dbg.conf" >"$W/m-dbg.out" 2>&1)
pid=$(pgrep -f -- "azaionfs azaion $W/m-dbg( |$)" | head -1)
FS_PIDS+=(${pid:-}) FS_MNTS+=("$W/m-dbg")
check "log_file: daemonised mount is up" fs_mounted "$W/m-dbg"
check_eq "log_file: a read works" "$(sha_of "$W/m-dbg/$A" 2>&1)" "$(sha_of "$W/$A")"
fusermount3 -u "$W/m-dbg"
wait_for 10 fs_gone "${pid:-0}"
check_eq "log_file: created mode 0600" "$(stat -c %a "$LF" 2>&1)" 600
# The supervisor (the detached process, the lowest pid of the two) says so.
check "log_file: written after detaching (the unmount)" grep -q "\[${pid:-x}\]\[info\]: $W/m-dbg was unmounted" "$LF"
S3_HP=${S3_URL#https://}
check "debug: a line for the login: method, URL, status, bytes, ms" grep -qE \
	"request POST ${API_URL//./\\.}/login: HTTP 200; [0-9]+ bytes in, [0-9]+ out, [0-9]+ ms" "$LF"
check "debug: a line for the CDN range read: method, URL, status, bytes, ms" grep -qE \
	"request GET https://${S3_HP//./\\.}/$S3_BUCKET/${F}s/$A\.big: HTTP 20[06]; [1-9][0-9]* bytes in, 0 out, [0-9]+ ms" "$LF"
check "debug: a line for the catalog" grep -qE "request GET .*/resources/list/${F}s: HTTP 200" "$LF"
leaks=$(grep -cF -e "$API_PASSWORD" -e "$S3_SECRET_KEY" -e "eyJ" -e "Bearer" -e "X-Amz-Signature" \
	-e "Signature=" "$LF")
check_eq "debug: no password, token, S3 secret or signature in the log" "$leaks" 0
check_eq "debug: no query string in a logged URL" "$(grep -cE 'request [A-Z]+ [^ ]*\?' "$LF")" 0

# log_file refused: a symlink, a file others can write
ln -s "$W/logs/target.log" "$W/logs/link.log"
conf "$W/lf-link.conf" "cdn_url=$NGINX_URL" "log_file=$W/logs/link.log"
mkdir -p "$W/m-lf"
"$AZ_DAEMON" azaion "$W/m-lf" -f -o "config=$W/lf-link.conf" >"$W/lf-link.out" 2>&1
rc=$?
check "log_file a symlink: refused (rc $rc): $(cat "$W/lf-link.out")" \
	sh -c "[ $rc -ne 0 ] && grep -q 'log_file .* is a symlink' '$W/lf-link.out'"
check "log_file a symlink: its target is not created" test ! -e "$W/logs/target.log"
: >"$W/logs/open.log"
chmod 666 "$W/logs/open.log"
conf "$W/lf-open.conf" "cdn_url=$NGINX_URL" "log_file=$W/logs/open.log"
"$AZ_DAEMON" azaion "$W/m-lf" -f -o "config=$W/lf-open.conf" >"$W/lf-open.out" 2>&1
rc=$?
check "log_file others can write: refused (rc $rc): $(cat "$W/lf-open.out")" \
	sh -c "[ $rc -ne 0 ] && grep -q 'lets others write it; chmod 600 it' '$W/lf-open.out'"
check_eq "log_file refused: nothing mounted" "$(grep -c " $W/m-lf " /proc/mounts)" 0

# ---- tpm = required, no TPM: the wait speaks and a signal ends it
conf "$W/tpm.conf" "tpm=required" "tpm_tcti=swtpm:host=127.0.0.1,port=$DEAD" "tpm_wait=60" \
	"state_dir=$W/state-tpm" "cdn_url=$NGINX_URL"
mkdir -p "$W/m-tpm"
"$AZ_DAEMON" azaion "$W/m-tpm" -f -o "config=$W/tpm.conf" >"$W/tpm-fg.log" 2>&1 &
pid=$!
FS_PIDS+=("$pid")
check "tpm wait (foreground): says within 5 s what it waits for, how long, what to check" \
	wait_for 5 grep -qE "waiting for a TPM through \"swtpm:host=127\.0\.0\.1,port=$DEAD\" .*[0-9]+ s left of tpm_wait=60; check that swtpm" \
	"$W/tpm-fg.log"
said_twice() { [ "$(grep -c 'waiting for a TPM through' "$W/tpm-fg.log")" -ge 2 ]; }
check "tpm wait (foreground): says it again 5 s later" wait_for 7 said_twice
kill -TERM "$pid"
check "tpm wait (foreground): SIGTERM ends it within 2 s" wait_for 2 fs_gone "$pid"
wait "$pid"
rc=$?
check "tpm wait (foreground): exit status 1 (got $rc)" test "$rc" = 1
check "tpm wait (foreground): says it stopped" grep -q "stopped while waiting for the TPM at" "$W/tpm-fg.log"

# daemonised: the first process waits for the child; a SIGTERM to it reaches the wait
"$AZ_DAEMON" azaion "$W/m-tpm" -o "config=$W/tpm.conf" >"$W/tpm-bg.log" 2>&1 &
pid=$!
FS_PIDS+=("$pid")
wait_for 5 grep -q "waiting for a TPM through" "$W/tpm-bg.log"
child=$(pgrep -f -- "azaionfs azaion $W/m-tpm( |$)" | grep -v "^$pid$" | head -1)
FS_PIDS+=(${child:-})
kill -TERM "$pid"
check "tpm wait (daemonised): SIGTERM to the command ends it within 2 s" wait_for 2 fs_gone "$pid"
check "tpm wait (daemonised): the detached child is gone too" wait_for 2 fs_gone "${child:-0}"
check "tpm wait (daemonised): says it stopped, on the terminal" \
	grep -q "stopped while waiting for the TPM at" "$W/tpm-bg.log"

# azaionctl enroll: the same wait, shown without -v, ended by SIGINT (Ctrl-C)
"$AZ_CTL" -c "$W/tpm.conf" enroll >"$W/enroll.log" 2>&1 &
pid=$!
PIDS+=("$pid")
check "azaionctl enroll: says within 5 s what it waits for" \
	wait_for 5 grep -q "waiting for a TPM through \"swtpm:host=127.0.0.1,port=$DEAD\"" "$W/enroll.log"
kill -INT "$pid"
check "azaionctl enroll: SIGINT ends the wait within 2 s" wait_for 2 fs_gone "$pid"
wait "$pid"
rc=$?
check "azaionctl enroll: exits 1 (got $rc) saying it stopped" \
	sh -c "[ $rc = 1 ] && grep -q 'enroll: stopped while waiting for the TPM' '$W/enroll.log'"

# ---- tpm_owner_auth_file that cannot be read: its words, said once, not "no TPM"
conf "$W/auth.conf" "tpm=auto" "tpm_owner_auth_file=$W/no-such-auth" \
	"state_dir=$W/state-auth" "cdn_url=$NGINX_URL"
"$AZ_CTL" -c "$W/auth.conf" enroll </dev/null >"$W/auth-enroll.log" 2>&1
rc=$?
check "azaionctl enroll, unreadable tpm_owner_auth_file: exits 1 (got $rc)" test "$rc" = 1
check_eq "azaionctl enroll: one line naming the file ($(head -c 300 "$W/auth-enroll.log"))" \
	"$(grep -c "tpm_owner_auth_file: .*no-such-auth" "$W/auth-enroll.log") $(grep -c . "$W/auth-enroll.log")" "1 1"
check_eq "azaionctl enroll: not blamed on a missing TPM" "$(grep -c 'no TPM' "$W/auth-enroll.log")" 0
mkdir -p "$W/m-auth"
"$AZ_DAEMON" azaion "$W/m-auth" -f -o "config=$W/auth.conf" >"$W/m-auth.log" 2>&1 &
pid=$!
FS_PIDS+=("$pid")
check "daemon, unreadable tpm_owner_auth_file: does not start" wait_for 10 fs_gone "$pid"
check_eq "daemon: says it in one line, with the file and 'not starting' ($(grep -v '\[debug\]' "$W/m-auth.log" | grep -m1 tpm_owner))" \
	"$(grep -v '\[debug\]' "$W/m-auth.log" | grep -c "tpm_owner_auth_file: .*no-such-auth.*: not starting")" 1
check_eq "daemon: and nowhere else" "$(grep -v '\[debug\]' "$W/m-auth.log" | grep -c 'no-such-auth')" 1
check "daemon: nothing mounted at m-auth" sh -c "! grep -q ' $W/m-auth ' /proc/mounts"

fs_no_leftovers
done_testing
