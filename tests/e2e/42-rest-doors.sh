#!/usr/bin/env bash
# 42-rest-doors: who gets an answer from the side endpoint (docs/trust.md 2),
# tried as a local attacker and as a web page would. Each attack fails with
# a clear status, and nothing is published or leaked:
#  - TCP with rest_token_file: the user nobody's F2 gets 401 (no plaintext),
#    a wrong token 401, GET /health stays open, the right token loads;
#  - F3 is off by default: 403, and the CDN's big part is unchanged;
#  - a Host that is not loopback, localhost or rest_hosts: 421; a foreign
#    Origin: 403; a body that does not say its type: 415; never a CORS header;
#  - metrics_listen serves /metrics alone;
#  - a unix: socket: nobody cannot connect; with the socket opened up by
#    mistake the peer check still refuses (403); a member of rest_group and
#    root are served;
#  - F3 (switched on): folder names checked (422 with the reason) and
#    escaped into the CDN URL (folder=a?b= does not write to the CDN's
#    root); one upload over 512 MiB is 413, announced or streamed;
#  - a CDN that refuses the signature (s3rver, wrong secret): F2 is 502 with
#    S3's reason, not 401;
#  - refused at start (the mount stops, nothing answers): rest_public
#    without a token, a token file others can read, a short token, a
#    missing rest_group, a rest_listen name that resolves off loopback;
#    accepted: a name that resolves to loopback.
. "$(dirname "$0")/../lib.sh"
. "$AZ_TOP/tests/tools/fs-lib.sh"
need setpriv openssl unshare
fs_init t42

free_port() {
	"$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
F=d42$TAG
NOBODY=(setpriv --reuid=nobody --regid="$(id -g nobody)" --clear-groups)
chmod 711 "$W"

# call WHAT STATUS DETAIL [PREFIX... --] CURL-ARGS...: one check of one answer
# (status line, headers and body kept in $W/last and appended to $W/all).
call() {
	local what=$1 want=$2 detail=$3 pre=() st
	shift 3
	if printf '%s\n' "$@" | grep -qx -- --; then
		while [ "$1" != -- ]; do
			pre+=("$1")
			shift
		done
		shift
	fi
	"${pre[@]}" curl -s -i --max-time 60 -w '\n%{http_code}' "$@" >"$W/last" 2>&1
	st=$(tail -1 "$W/last")
	cat "$W/last" >>"$W/all"
	if [ "$st" = "$want" ] && { [ -z "$detail" ] || grep -qF -- "$detail" "$W/last"; }; then
		ok "$what: $st $(tail -2 "$W/last" | head -1 | head -c 160)"
	else
		not_ok "$what: got $st, wanted $want${detail:+ with '$detail'}"
		tail -3 "$W/last" | head -c 400 | sed 's/^/#   /'
	fi
}

# ---- a model on the nginx CDN, published before anything else
fs_conf "$W/pub.conf" "cdn_url=$NGINX_URL" "folder=$F" "state_dir=$W/state-pub"
head -c 300007 /dev/urandom >"$W/m1.onnx"
fs_publish "$W/pub.conf" 1 m1.onnx "$W/m1.onnx" || bail "publishing failed: $(tail -3 "$W/publish.log")"
big_sha() { curl -fsS --cacert "$STACK_CA" "$NGINX_URL/$F/m1.onnx.big" | sha256sum | cut -d' ' -f1; }
big_before=$(big_sha)
[ -n "$big_before" ] || bail "the big part is not on the CDN"

# ---- A: TCP on loopback with a bearer token, and /metrics on a port of its own
PORT=$(free_port)
MPORT=$(free_port)
openssl rand -hex 32 >"$W/token"
chmod 600 "$W/token"
TOKEN=$(cat "$W/token")
fs_conf "$W/a.conf" "cdn_url=$NGINX_URL" "folder=$F" "state_dir=$W/state-a" "cache_max=0" \
	"rest_listen=127.0.0.1:$PORT" "rest_token_file=$W/token" "metrics_listen=127.0.0.1:$MPORT"
fs_mount "$W/mnt-a" "$W/a.conf"
pid=$FS_PID
A=http://127.0.0.1:$PORT
AUTH=(-H "Authorization: Bearer $TOKEN")
JSON=(-H 'Content-Type: application/json')
BODY="{\"filename\": \"m1.onnx\", \"folder\": \"$F\"}"
check "A answers GET /health" wait_for 10 curl -sf "$A/health"
grep -q "bearer token required" "$W/mnt-a.log" &&
	ok "the log says the endpoint wants a bearer token" ||
	not_ok "the log says the endpoint wants a bearer token"

call "GET /health needs no token" 200 healthy "$A/health"
call "as nobody: curl -X POST $A/load/m1.onnx" 401 "Authorization: Bearer" \
	"${NOBODY[@]}" -- -X POST "$A/load/m1.onnx"
call "as nobody: F2 with a well-formed body and no token" 401 "rest_token_file" \
	"${NOBODY[@]}" -- "${JSON[@]}" -d "$BODY" "$A/load/m1.onnx"
check_eq "  and no byte of the model in the answer" \
	"$(grep -c . "$W/last" | awk '{print ($1 < 20)}')" 1
call "F2 with a wrong token" 401 "not the one" -H "Authorization: Bearer x$TOKEN" \
	"${JSON[@]}" -d "$BODY" "$A/load/m1.onnx"
check "  a 401 says WWW-Authenticate: Bearer" grep -qi '^WWW-Authenticate: Bearer' "$W/last"
call "F2 with 'Basic' instead of a bearer token" 401 "" -u "a:$TOKEN" "${JSON[@]}" -d "$BODY" \
	"$A/load/m1.onnx"
call "GET /status without a token" 401 "" "$A/status"
call "GET /metrics without a token" 401 "" "$A/metrics"
call "an unknown path without a token" 401 "" "$A/nope"
curl -s "${AUTH[@]}" "${JSON[@]}" -d "$BODY" -o "$W/m1.back" -w '%{http_code}' "$A/load/m1.onnx" \
	>"$W/st"
check_eq "F2 with the token: 200" "$(cat "$W/st")" 200
check_eq "  the model's bytes" "$(sha_of "$W/m1.back")" "$(sha_of "$W/m1.onnx")"
call "GET /status with the token" 200 '"authenticated":true' "${AUTH[@]}" "$A/status"

# F3 off by default.
head -c 5000 /dev/urandom >"$W/evil.bin"
call "as nobody: curl -F data=@evil.bin $A/upload/m1.onnx" 401 "" "${NOBODY[@]}" -- \
	-F "data=@$W/evil.bin" "$A/upload/m1.onnx"
call "as nobody: the same, chunked" 401 "" "${NOBODY[@]}" -- -H 'Transfer-Encoding: chunked' \
	-F "data=@$W/evil.bin" "$A/upload/m1.onnx"
call "F3 with the token, uploads off" 403 '"uploads are disabled on this device"' "${AUTH[@]}" \
	-F "data=@$W/evil.bin" -F "folder=$F" "$A/upload/m1.onnx"
check_eq "  the big part on the CDN is unchanged" "$(big_sha)" "$big_before"
check_eq "  and the mount serves the original" "$(sha_of "$W/mnt-a/m1.onnx")" \
	"$(sha_of "$W/m1.onnx")"
check_eq "  and the endpoint published nothing" \
	"$(curl -s "${AUTH[@]}" "$A/metrics" | awk '$1 == "azaionfs_uploads_total" {print $2}')" 0

# Host, Origin, content type, CORS: what a page in a browser can send.
call "Host: attacker.example" 421 "attacker.example" "${AUTH[@]}" -H 'Host: attacker.example' \
	"${JSON[@]}" -d "$BODY" "$A/load/m1.onnx"
call "Host: attacker.example on GET /health" 421 "rest_hosts" -H 'Host: attacker.example:8080' \
	"$A/health"
call "Host: 127.0.0.1.attacker.example" 421 "" -H 'Host: 127.0.0.1.attacker.example' "$A/health"
call "Host: localhost:$PORT" 200 healthy -H "Host: localhost:$PORT" "$A/health"
call "Host: loader:8080 (rest_hosts' default)" 200 healthy -H 'Host: loader:8080' "$A/health"
call "Host: [::1]:8080" 200 healthy -H 'Host: [::1]:8080' "$A/health"
call "Origin: http://attacker.example" 403 "web page" "${AUTH[@]}" \
	-H 'Origin: http://attacker.example' "${JSON[@]}" -d "$BODY" "$A/load/m1.onnx"
call "Origin: null" 403 "" "${AUTH[@]}" -H 'Origin: null' "$A/status"
call "Origin: http://localhost:3000 (a page on the device's own loopback)" 200 "" \
	"${AUTH[@]}" -H 'Origin: http://localhost:3000' "$A/status"
call "F1 with Content-Type: text/plain" 415 "application/json" "${AUTH[@]}" \
	-H 'Content-Type: text/plain' -d '{"email": "a", "password": "b"}' "$A/login"
call "F2 with a form's Content-Type" 415 "application/json" "${AUTH[@]}" -d "$BODY" \
	"$A/load/m1.onnx"
call "F4 without a Content-Type" 415 "got none" "${AUTH[@]}" -H 'Content-Type:' \
	-d '{"email": "a", "password": "b"}' "$A/unlock"
call "F2 with Content-Type: Application/JSON; charset=utf-8" 200 "" "${AUTH[@]}" \
	-H 'Content-Type: Application/JSON; charset=utf-8' -d "$BODY" -o /dev/null "$A/load/m1.onnx"
call "a CORS pre-flight" 405 "" "${AUTH[@]}" -X OPTIONS -H 'Origin: http://localhost' \
	-H 'Access-Control-Request-Method: POST' "$A/load/m1.onnx"
check "no answer carried an Access-Control-* header" \
	sh -c "! grep -qi '^Access-Control-' '$W/all'"

# metrics_listen: /metrics and nothing else.
M=http://127.0.0.1:$MPORT
call "metrics_listen: GET /metrics with the token" 200 azaionfs_loads_total "${AUTH[@]}" \
	"$M/metrics"
call "metrics_listen: GET /metrics without it" 401 "" "$M/metrics"
call "metrics_listen: F2 is not there" 404 "" "${AUTH[@]}" "${JSON[@]}" -d "$BODY" \
	"$M/load/m1.onnx"
call "metrics_listen: F1 is not there" 404 "" "${AUTH[@]}" "${JSON[@]}" -d '{}' "$M/login"
check "azaionctl sends the token, the content type and a Host it accepts" \
	"$AZ_CTL" -c "$W/a.conf" status
"$AZ_CTL" -c "$W/a.conf" load --out "$W/m1.ctl" m1.onnx >/dev/null 2>&1
check_eq "azaionctl load with the token" "$(sha_of "$W/m1.ctl" 2>/dev/null)" "$(sha_of "$W/m1.onnx")"
fs_umount "$W/mnt-a" "$pid"
check "the token never reached the log" sh -c "! grep -qF -- '$TOKEN' '$W/mnt-a.log'"

# ---- B: a unix socket, rest_group root, uploads on
mkdir -m 711 "$W/u"
fs_conf "$W/b.conf" "cdn_url=$NGINX_URL" "folder=$F" "state_dir=$W/state-b" "cache_max=0" \
	"rest_listen=unix:$W/u/rest.sock" "rest_upload=true" "rest_group=root"
fs_mount "$W/mnt-b" "$W/b.conf"
pid=$FS_PID
S=(--unix-socket "$W/u/rest.sock")
B=http://localhost
check "B's socket appears" wait_for 10 test -S "$W/u/rest.sock"
check_eq "the socket: mode 660, group root" "$(stat -c '%a %G' "$W/u/rest.sock")" "660 root"
"${NOBODY[@]}" curl -s --max-time 10 "${S[@]}" "$B/health" >/dev/null 2>&1
rc=$?
check_eq "as nobody: the socket as shipped cannot be connected to (curl exit 7)" "$rc" 7
call "root: GET /health" 200 healthy "${S[@]}" "$B/health"
call "nobody with root as a supplementary group" 200 '"status":"ok"' \
	setpriv --reuid=nobody --regid="$(id -g nobody)" --groups=0 -- "${S[@]}" "$B/status"
call "nobody with root as its primary group" 200 healthy \
	setpriv --reuid=nobody --regid=0 --clear-groups -- "${S[@]}" "$B/health"
chmod 666 "$W/u/rest.sock" # an operator's mistake: the peer check still holds
call "as nobody on a socket opened to all: F2 refused by the peer check" 403 "group 'root'" \
	"${NOBODY[@]}" -- "${S[@]}" "${JSON[@]}" -d "$BODY" "$B/load/m1.onnx"
check "  the answer closes the connection" grep -qi '^Connection: close' "$W/last"
call "as nobody on a socket opened to all: F3 refused" 403 "rest_group" "${NOBODY[@]}" -- \
	"${S[@]}" -F "data=@$W/evil.bin" -F "folder=$F" "$B/upload/m1.onnx"
call "as nobody on a socket opened to all: GET /health refused" 403 "" "${NOBODY[@]}" -- \
	"${S[@]}" "$B/health"
chmod 660 "$W/u/rest.sock"
check_eq "  the big part on the CDN is still unchanged" "$(big_sha)" "$big_before"
grep -q "refused uid $(id -u nobody)" "$W/mnt-b.log" &&
	ok "the log names the refused uid" || not_ok "the log names the refused uid"

# Folder names: checked, and escaped into the CDN URL.
call "F3 folder '..'" 422 "'.' and '..' are not names" "${S[@]}" -F "data=@$W/evil.bin" \
	-F "folder=.." "$B/upload/m2.onnx"
call "F3 folder 'a/b'" 422 "contains '/'" "${S[@]}" -F "data=@$W/evil.bin" -F "folder=a/b" \
	"$B/upload/m2.onnx"
Q="q$TAG?b="
curl -s --cacert "$STACK_CA" -o /dev/null -w '%{http_code}' "$NGINX_URL/q$TAG" >"$W/st"
check_eq "before: nothing at the CDN's /q$TAG" "$(cat "$W/st")" 404
# The API refuses such a folder (502), after the big part went to the CDN.
call "F3 folder '$Q'" 502 "upload failed" "${S[@]}" -F "data=@$W/evil.bin" -F "folder=$Q" \
	"$B/upload/m2.onnx"
check_eq "  nothing was written at the CDN's /q$TAG (the folder was not cut at '?')" \
	"$(curl -s --cacert "$STACK_CA" -o /dev/null -w '%{http_code}' "$NGINX_URL/q$TAG")" 404
check_eq "  the big part is in the folder '$Q' itself" \
	"$(curl -s --cacert "$STACK_CA" -o /dev/null -w '%{http_code}' \
		"$NGINX_URL/q$TAG%3Fb%3D/m2.onnx.big")" 200
call "F3 folder 'f+$TAG=x' (escaped, and the API takes it)" 200 '"status":"ok"' "${S[@]}" \
	-F "data=@$W/evil.bin" -F "folder=f+$TAG=x" "$B/upload/m2.onnx"
check_eq "  its big part under the folder's own name" \
	"$(curl -s --cacert "$STACK_CA" -o /dev/null -w '%{http_code}' \
		"$NGINX_URL/f%2B$TAG%3Dx/m2.onnx.big")" 200

# One upload over 512 MiB: 413, announced or streamed.
cat >"$W/big-upload.py" <<'EOF'
import socket, sys
path, mode = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_UNIX)
s.connect(path)
b = b"x42"
head = (b"--x42\r\nContent-Disposition: form-data; name=\"data\"; filename=\"a\"\r\n"
        b"Content-Type: application/octet-stream\r\n\r\n")
req = (b"POST /upload/huge.onnx HTTP/1.1\r\nHost: localhost\r\n"
       b"Content-Type: multipart/form-data; boundary=x42\r\n")
if mode == "announced":
    s.sendall(req + b"Content-Length: %d\r\n\r\n" % (600 << 20) + head)
else:
    s.sendall(req + b"Transfer-Encoding: chunked\r\n\r\n")
    block = b"\0" * (1 << 20)
    s.sendall(b"%x\r\n%s\r\n" % (len(head), head))
    try:
        for _ in range(520):
            s.sendall(b"%x\r\n%s\r\n" % (len(block), block))
        s.sendall(b"0\r\n\r\n")
    except OSError:
        pass
s.settimeout(120)
out = b""
while True:
    try:
        d = s.recv(65536)
    except OSError:
        break
    if not d:
        break
    out += d
    if b"\r\n\r\n" in out and b"}" in out:
        break
sys.stdout.write(out.decode(errors="replace"))
EOF
out=$("$PY" "$W/big-upload.py" "$W/u/rest.sock" announced 2>&1)
case $out in *" 413 "*"512 MiB for one upload"*) ok "an upload announced at 600 MiB: 413 at once" ;;
*) not_ok "an upload announced at 600 MiB: '$(echo "$out" | tail -1)'" ;; esac
out=$("$PY" "$W/big-upload.py" "$W/u/rest.sock" streamed 2>&1)
case $out in *" 413 "*"512 MiB for one upload"*) ok "a chunked upload of 520 MiB: 413 after 512 MiB" ;;
*) not_ok "a chunked upload of 520 MiB: '$(echo "$out" | tail -1)'" ;; esac
call "and the endpoint still serves" 200 healthy "${S[@]}" "$B/health"
fs_umount "$W/mnt-b" "$pid"

# ---- C: a CDN that refuses the signature: 502 with S3's reason
fs_conf "$W/s3pub.conf" "folder=models" "state_dir=$W/state-s3"
head -c 70001 /dev/urandom >"$W/m3.onnx"
fs_publish "$W/s3pub.conf" 1 "m3-$TAG.onnx" "$W/m3.onnx" ||
	bail "publishing to S3 failed: $(tail -3 "$W/publish.log")"
(umask 077 && echo "wrong-secret-$TAG" >"$W/wrong.secret")
PORT3=$(free_port)
fs_conf "$W/c.conf" "folder=models" "state_dir=$W/state-c" "cache_max=0" "cdn_url=$S3_URL" \
	"s3_access_key=$S3_ACCESS_KEY" "s3_secret_key_file=$W/wrong.secret" \
	"rest_listen=127.0.0.1:$PORT3"
fs_mount "$W/mnt-c" "$W/c.conf"
pid=$FS_PID
check "C answers" wait_for 10 curl -sf "http://127.0.0.1:$PORT3/health"
call "F2 when the CDN refuses the signature" 502 "SignatureDoesNotMatch" "${JSON[@]}" \
	-d "{\"filename\": \"m3-$TAG.onnx\", \"folder\": \"models\"}" \
	"http://127.0.0.1:$PORT3/load/m3-$TAG.onnx"
check "  the detail names the CDN, not a login" grep -q "the CDN refused" "$W/last"
grep -q "the CDN refused the request: HTTP 403" "$W/mnt-c.log" &&
	ok "the log gives the CDN's answer" || not_ok "the log gives the CDN's answer"
fs_umount "$W/mnt-c" "$pid"

# ---- refused at start, and what the loopback check resolves
# start_fails WHAT PATTERN -o OPTIONS: the daemon stops before mounting, naming PATTERN.
start_fails() {
	local what=$1 pat=$2 out rc
	shift 2
	mkdir -p "$W/mnt-x"
	out=$(timeout 30 "$AZ_DAEMON" azaion "$W/mnt-x" -f "$@" 2>&1)
	rc=$?
	if [ $rc -ne 0 ] && [ $rc -ne 124 ] && grep -qF -- "$pat" <<<"$out"; then
		ok "$what: refused at start ($(head -1 <<<"$out" | head -c 160))"
	else
		not_ok "$what: rc=$rc '$(head -3 <<<"$out")'"
	fi
}
P=$(free_port)
start_fails "rest_public without rest_token_file" "rest_token_file" \
	-o "config=$W/b.conf,rest_listen=127.0.0.1:$P,rest_public=true"
# endpoint_off WHAT PATTERN PROBE OPT...: the endpoint is the only way to log
# in and unlock, so a setup error of it stops the start (77-loud has more),
# naming PATTERN; nothing answers on PROBE (curl's arguments).
endpoint_off() {
	local what=$1 pat=$2 probe=$3 o
	shift 3
	o=$(IFS=,; echo "$*")
	start_fails "$what" "$pat" -o "config=$W/b.conf,$o"
	# shellcheck disable=SC2086
	if curl -s --max-time 5 $probe >/dev/null 2>&1; then
		not_ok "  something answers on $probe"
	else
		ok "  nothing answers on $probe"
	fi
	check_eq "  nothing is mounted" "$(grep -c " $W/mnt-x " /proc/mounts)" 0
}
chmod 644 "$W/token"
endpoint_off "a rest_token_file others can read" "chmod 600" "http://127.0.0.1:$P/health" \
	"rest_listen=127.0.0.1:$P" "rest_token_file=$W/token"
chmod 600 "$W/token"
echo short >"$W/short.token"
chmod 600 "$W/short.token"
endpoint_off "a token of 5 characters" "at least 16" "http://127.0.0.1:$P/health" \
	"rest_listen=127.0.0.1:$P" "rest_token_file=$W/short.token"
endpoint_off "a rest_group that does not exist" "no group 'nosuch$TAG'" \
	"--unix-socket $W/u/rest.sock http://localhost/health" "rest_group=nosuch$TAG"
fs_mount "$W/mnt-g" "$W/b.conf" "rest_group=4242"
check_eq "rest_group as a number (a container's /etc/group lists root alone): the socket's gid" \
	"$(stat -c %g "$W/u/rest.sock" 2>/dev/null)" 4242
call "  root is served there" 200 healthy --unix-socket "$W/u/rest.sock" http://localhost/health
fs_umount "$W/mnt-g" "$FS_PID"
start_fails "a metrics_listen off loopback" "metrics_listen" \
	-o "config=$W/b.conf,metrics_listen=0.0.0.0:$P"
printf '192.0.2.2 127.0.0.1.evil.example\n127.0.0.7 loopname%s\n' "$TAG" >"$W/hosts"
out=$(timeout 30 unshare -m sh -c "mount --bind '$W/hosts' /etc/hosts && exec '$AZ_DAEMON' \
	azaion '$W/mnt-x' -f -o 'config=$W/b.conf,rest_listen=127.0.0.1.evil.example:$P'" 2>&1)
case $out in *"not (or not only) a loopback address"*)
	ok "a rest_listen name that starts with 127. but resolves elsewhere is refused" ;;
*) not_ok "a rest_listen name that resolves elsewhere: '$out'" ;; esac
unshare -m sh -c "mount --bind '$W/hosts' /etc/hosts && exec '$AZ_DAEMON' azaion '$W/mnt-x' \
	-f -o 'config=$W/b.conf,rest_listen=loopname$TAG:$P'" >"$W/x.log" 2>&1 &
xpid=$!
FS_PIDS+=("$xpid")
check "a rest_listen name that resolves to loopback (127.0.0.7) is accepted" \
	wait_for 20 curl -sf "http://127.0.0.7:$P/health"
kill -TERM "$xpid"
wait_for 20 fs_gone "$xpid" || not_ok "the daemon on loopname$TAG did not stop"

rm -f "$W/m1.back" "$W/m1.ctl"
fs_no_leftovers
done_testing
