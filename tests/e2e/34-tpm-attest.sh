#!/usr/bin/env bash
# 34-tpm-attest: attested enrolment (docs/trust.md 1) through the daemon.
#  - a device with tpm = required and no tpm_pcrs enrols at its first F1
#    login (POST /login on the side endpoint): the API records it as attested,
#    with its EK certificate's serial, its AK and the quoted PCR 7 (the
#    default binding), and it reads a format-2 model;
#  - a TPM with no EK certificate in NV: no device id, the log says how to
#    provision one, /status says tpm: error;
#  - a TPM whose EK certificate comes from a CA the API does not trust: no
#    device id, the log carries the API's 403 reason;
#  - an API (a fault proxy's answer) that gives a device id with a line
#    break, a space, a byte past ASCII or 129 characters: no device id kept,
#    the log says why in one line without echoing it, /status says tpm:
#    error.
# The attacks on the API itself (replay, wrong nonce, software key, guessed
# secret, ...) are in tests/unit/test_attest.c.
. "$(dirname "$0")/../lib.sh"
. "$AZ_TOP/tests/tools/fs-lib.sh"
. "$AZ_TOP/tests/tools/fault-lib.sh"
need swtpm tpm2_getcap
fs_init t34

F=t34$TAG
raw_pid=
untrusted=t34u$TAG
cleanup() {
	[ -n "$raw_pid" ] && kill -TERM "$raw_pid" 2>/dev/null
	local f=$STACK_DIR/pids/tpm-$untrusted
	[ -f "$f" ] && kill -TERM "$(cat "$f")" 2>/dev/null
	rm -f "$f"
	fs_cleanup
	fp_cleanup
}
trap cleanup EXIT

common=("cdn_url=$NGINX_URL" "folder=$F" "cache_dir=$W/cache" "tpm=required" "tpm_wait=10"
	"catalog_ttl=1" "rest_listen=unix:$W/rest.sock" "log_level=debug")
status() {
	curl -s --max-time 5 --unix-socket "$W/rest.sock" http://loader/status |
		"$PY" -c 'import json,sys; print(json.load(sys.stdin).get("tpm"))' 2>&1
}
f1_login() {
	local body
	body=$("$PY" -c 'import json,sys; print(json.dumps({"email": sys.argv[1], "password": sys.argv[2]}))' \
		"$API_EMAIL" "$API_PASSWORD")
	curl -s -o "$W/login.out" -w '%{http_code}' --max-time 60 --unix-socket "$W/rest.sock" \
		-H 'Content-Type: application/json' -d "$body" http://loader/login
}
# device_field ID FIELD: a field of the API's record of a device.
device_field() {
	curl -s --cacert "$STACK_CA" "$ADMIN_URL/devices" | "$PY" -c '
import json, sys
d = [x for x in json.load(sys.stdin)["devices"] if x["device_id"] == sys.argv[1]]
v = d[0].get(sys.argv[2]) if d else None
print(json.dumps(v) if isinstance(v, (dict, bool)) else (v or ""))' "$1" "$2"
}

# ---- the first F1 login enrols, attested
fs_conf "$W/dev.conf" "${common[@]}" "state_dir=$W/state" "tpm_tcti=$TPM_TCTI"
sed -i '/^credentials = /d' "$W/dev.conf"
fs_mount "$W/mnt" "$W/dev.conf"
pid=$FS_PID
[ -S "$W/rest.sock" ] || bail "the side endpoint is not listening on $W/rest.sock"
check "not enrolled before the first login" test ! -e "$W/state/device_id"
check_eq "F1 POST /login answers 200" "$(f1_login)" 200
id=$(cat "$W/state/device_id" 2>/dev/null)
check "the first login enrolled the device" test -n "$id"
check_eq "the API records it as attested" "$(device_field "$id" attested)" true
check "with its EK certificate's serial" test -n "$(device_field "$id" ek_serial)"
check "and its AK" test -n "$(device_field "$id" ak_public)"
check "and the quoted PCR 7 (tpm = required binds to it by default)" \
	sh -c "echo '$(device_field "$id" pcrs)' | grep -q '\"sha256\": {\"7\"'"
check "the daemon bound its keys to sha256:7" grep -qx "sha256:7" "$W/state/tpm-pcrs"
check_eq "GET /status says tpm: ok" "$(status)" ok
n=${TAG}-f2-70000.onnx
mkdir -p "$W/plain"
head -c 70000 /dev/urandom >"$W/plain/$n"
fs_conf "$W/pub.conf" "cdn_url=$NGINX_URL" "folder=$F" "state_dir=$W/state-pub" "tpm=off"
fs_publish "$W/pub.conf" 2 "$n" "$W/plain/$n" || bail "publishing $n failed: $(tail -3 "$W/publish.log")"
wait_for 15 test -e "$W/mnt/$n" || bail "the mount never listed $n"
check_eq "the attested device reads a format-2 model" "$(sha_of "$W/mnt/$n" 2>&1)" \
	"$(sha_of "$W/plain/$n")"
fs_umount "$W/mnt" "$pid"

# ---- a TPM without an EK certificate
port=$("$PY" -c '
import socket
while True:
    a, b = socket.socket(), socket.socket()
    a.bind(("127.0.0.1", 0))
    p = a.getsockname()[1]
    try:
        b.bind(("127.0.0.1", p + 1))
    except OSError:
        continue
    print(p)
    break')
mkdir -p "$W/raw-tpm"
swtpm socket --tpm2 --tpmstate "dir=$W/raw-tpm" \
	--server "type=tcp,port=$port,bindaddr=127.0.0.1" \
	--ctrl "type=tcp,port=$((port + 1)),bindaddr=127.0.0.1" \
	--flags not-need-init,startup-clear >"$W/raw-tpm.log" 2>&1 &
raw_pid=$!
raw_up() { TPM2TOOLS_TCTI="swtpm:host=127.0.0.1,port=$port" tpm2_getcap properties-fixed >/dev/null 2>&1; }
wait_for 15 raw_up || bail "the unprovisioned swtpm did not start"
fs_conf "$W/raw.conf" "${common[@]}" "state_dir=$W/state-raw" \
	"tpm_tcti=swtpm:host=127.0.0.1,port=$port"
sed -i '/^credentials = /d' "$W/raw.conf"
fs_mount "$W/mnt" "$W/raw.conf"
pid=$FS_PID
f1_login >/dev/null
check "no EK certificate: no device id" test ! -e "$W/state-raw/device_id"
check "the log says there is no EK certificate" grep -q "no EK certificate in the TPM's NV" "$W/mnt.log"
check "and how to provision one" grep -q "swtpm_setup --create-ek-cert" "$W/mnt.log"
check_eq "in one line of the log, the login's ($(grep -m1 "no EK certificate" "$W/mnt.log"))" \
	"$(grep -v '\[debug\]' "$W/mnt.log" | grep -c "no EK certificate in the TPM's NV") $(grep -c "logged in, but enrolling the device failed: this TPM cannot attest its key: .*no EK certificate" "$W/mnt.log")" "1 1"
check_eq "GET /status says tpm: error" "$(status)" error
fs_umount "$W/mnt" "$pid"
kill -TERM "$raw_pid" 2>/dev/null
wait "$raw_pid" 2>/dev/null
raw_pid=

# ---- a TPM certified by a CA the API does not trust
tcti3=$(AZ_STACK_EK_CA=$W/otherca "$AZ_TOP/scripts/stack" tpm2 "$STACK_DIR" "$untrusted") ||
	bail "no swtpm with an untrusted EK certificate"
fs_conf "$W/untrusted.conf" "${common[@]}" "state_dir=$W/state-u" "tpm_tcti=$tcti3"
sed -i '/^credentials = /d' "$W/untrusted.conf"
fs_mount "$W/mnt" "$W/untrusted.conf"
pid=$FS_PID
f1_login >/dev/null
check "an untrusted EK certificate: no device id" test ! -e "$W/state-u/device_id"
check "the log carries the API's 403 reason" \
	grep -q "the API refused this TPM's EK certificate or AK: the EK certificate does not chain to a trusted TPM manufacturer CA" "$W/mnt.log"
check_eq "in one line of the log" \
	"$(grep -v '\[debug\]' "$W/mnt.log" | grep -c "does not chain to a trusted TPM manufacturer CA")" 1
check_eq "GET /status says tpm: error" "$(status)" error
fs_umount "$W/mnt" "$pid"

# ---- an API that answers POST /devices with a device id the daemon cannot use
fp_start API "$API_URL" # fs_conf writes the proxy's address from here on
fs_conf "$W/hostile.conf" "${common[@]}" "state_dir=$W/state-h" "tpm_tcti=$TPM_TCTI"
sed -i '/^credentials = /d' "$W/hostile.conf"
fs_mount "$W/mnt" "$W/hostile.conf"
pid=$FS_PID
long=$(printf 'd%.0s' $(seq 129))
n=0
for bad in $'dev-1\r\nX-Evil: 1' 'dev 1' $'dev-\xc3\xa9' "$long"; do
	from=$(wc -l <"$W/mnt.log")
	n=$((n + 1))
	fp_clear API
	# The challenge goes through; the enrolment's answer is the proxy's.
	fp_fault API '{"kind": "stall", "seconds": 0, "count": 1, "path": "/devices/challenge"}'
	fp_fault API "$("$PY" -c 'import json, sys
print(json.dumps({"kind": "body", "status": 201, "count": 1, "path": "/devices", "method": "POST",
                  "text": json.dumps({"device_id": sys.argv[1]})}))' "$bad")"
	f1_login >/dev/null
	what=$(printf '%q' "${bad:0:16}")
	check_eq "device id $what: the proxy answered the enrolment" "$(fp_stat API body)" "$n"
	check "... no device id is kept" test ! -e "$W/state-h/device_id"
	tail -n +$((from + 1)) "$W/mnt.log" >"$W/mnt-$n.log"
	check_eq "... the log says why, in one line ($(grep -m1 "the API's device id" "$W/mnt-$n.log"))" \
		"$(grep -v '\[debug\]' "$W/mnt-$n.log" | grep -c "enrolling the device failed: the API's device id: not 1 to 128 visible ASCII characters")" 1
	check "... without echoing it" sh -c "! grep -q 'X-Evil\|dev 1\|dev-.\|ddddddddddddddddddddd' '$W/mnt-$n.log'"
	check_eq "... GET /status says tpm: error" "$(status)" error
done
fs_umount "$W/mnt" "$pid"

check "the password is in no log" sh -c "! grep -qF -- '$API_PASSWORD' '$W'/*.log"
fs_no_leftovers
done_testing
