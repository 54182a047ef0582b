#!/usr/bin/env bash
# 30-tpm-start: the TPM device end to end, against the stack's swtpm.
#  - the first mount with credentials enrols the device (device key, sealed
#    store, POST /devices, state_dir/device_id), blobs mode 0600;
#  - a restart with no credentials configured unseals them and logs in by
#    itself: every model of a catalog mixing format 1 and format 2 reads
#    with its sha256 through the one mount (the migration path);
#  - no password, content key or sealed byte appears in the debug logs or
#    in state_dir;
#  - tpm = off: format 1 reads, format 2 fails with EACCES, reason logged;
#  - tpm = required without a TPM: one clear line, non-zero exit, no mount;
#  - tpm = auto without a TPM: the start does not wait tpm_wait.
. "$(dirname "$0")/../lib.sh"
. "$AZ_TOP/tests/tools/fs-lib.sh"
need tpm2_getcap
fs_init t30

c() { curl -s --max-time 20 --cacert "$STACK_CA" "$@"; }
calls() {
	c "$ADMIN_URL/counters" |
		"$PY" -c 'import json, sys; print(json.load(sys.stdin)["calls"].get(sys.argv[1], 0))' "$1"
}

F=t30$TAG
(umask 077 && openssl rand -hex 24 >"$W/rsecret")
common=("cdn_url=$NGINX_URL" "folder=$F" "state_dir=$W/state" "cache_dir=$W/cache"
	"legacy_resource_secret_file=$W/rsecret" "tpm_tcti=$TPM_TCTI" "tpm_wait=10"
	"rest_listen=unix:$W/rest.sock" "log_level=debug")
fs_conf "$W/enrol.conf" "${common[@]}" "tpm=auto"
# The unattended configuration: no credentials key at all.
fs_conf "$W/auto.conf" "${common[@]}" "tpm=auto"
sed -i '/^credentials = /d' "$W/auto.conf"

# ---- enrolment at the first mount
fs_mount "$W/mnt" "$W/enrol.conf"
pid=$FS_PID
check "the first mount enrolled the device" test -s "$W/state/device_id"
id=$(cat "$W/state/device_id")
check "the API knows the device" sh -c "c() { curl -s --cacert '$STACK_CA' \"\$@\"; };
	c '$ADMIN_URL/devices' | grep -q '\"$id\"'"
n_blobs=$(ls "$W/state" | grep -c '^tpm-')
check_eq "seven TPM blobs in state_dir" "$n_blobs" 7
check_eq "every file in state_dir is mode 0600" "$(find "$W/state" -type f ! -perm 0600)" ""
check_eq "the TPM holds no object of the daemon between calls" \
	"$(TPM2TOOLS_TCTI=$TPM_TCTI tpm2_getcap handles-transient)" ""

# A catalog mixing both formats; sizes below, at and above one chunk.
names=()
mkdir -p "$W/plain"
for fmt in 1 2; do
	for s in 1 65536 300001; do
		n=${TAG}-f$fmt-$s.onnx
		head -c "$s" /dev/urandom >"$W/plain/$n"
		fs_publish "$W/enrol.conf" "$fmt" "$n" "$W/plain/$n" ||
			bail "publishing $n failed: $(tail -3 "$W/publish.log")"
		names+=("$n")
	done
done
ok "published ${#names[@]} models, formats 1 and 2"
fs_umount "$W/mnt" "$pid"
cp "$W/mnt.log" "$W/log-enrol"

# ---- unattended start: no credentials configured, no operator
logins0=$(calls "POST /login")
fs_mount "$W/mnt" "$W/auto.conf"
pid=$FS_PID
bad=()
for n in "${names[@]}"; do
	[ "$(sha_of "$W/mnt/$n" 2>/dev/null)" = "$(sha_of "$W/plain/$n")" ] || bad+=("$n")
done
check_eq "after a restart without credentials every model (formats 1 and 2) reads right" \
	"${bad[*]}" ""
check "the daemon logged in with the sealed credentials" \
	grep -q "logging in with the credentials sealed in the TPM" "$W/mnt.log"
logins1=$(calls "POST /login")
check "the daemon itself logged in to the API ($logins0 -> $logins1 logins)" \
	test "$logins1" -gt "$logins0"
check_eq "the device id did not change" "$(cat "$W/state/device_id")" "$id"
check "the log says the legacy resource_secret was sealed too" \
	grep -q "unsealed (credentials and the legacy resource_secret)" "$W/mnt.log"
if [ -S "$W/rest.sock" ]; then
	st=$(curl -s --max-time 5 --unix-socket "$W/rest.sock" http://loader/status)
	tpm_st=$(echo "$st" | "$PY" -c 'import json,sys; d=json.load(sys.stdin); print(d.get("tpm"), d.get("device_id"))' 2>&1)
	check_eq "GET /status reports tpm ok and the device id" "$tpm_st" "ok $id"
fi
check_eq "still no object of the daemon in the TPM between calls" \
	"$(TPM2TOOLS_TCTI=$TPM_TCTI tpm2_getcap handles-transient)" ""
fs_umount "$W/mnt" "$pid"
cp "$W/mnt.log" "$W/log-auto"

# ---- secrets: the password, every content key (raw, base64, hex), the
# resource secret and the sealed credentials text, in no log (debug) and
# in no state_dir file.
scan=$("$PY" - "$API_DATA/keys" "$F" "$API_PASSWORD" "$API_EMAIL" "$W/rsecret" -- \
	"$W/state" "$W/log-enrol" "$W/log-auto" "$W/cache" <<'EOF'
import base64, glob, json, os, sys
keys_dir, folder, password, email, rsecret = sys.argv[1:6]
paths = sys.argv[sys.argv.index("--") + 1:]
needles = {"password": password.encode(),
           "sealed credentials": ("email = %s\npassword = " % email).encode(),
           "resource_secret": open(rsecret, "rb").read().strip()}
regs = glob.glob(os.path.join(keys_dir, "*", "*.json"))
n = 0
for p in regs:
    if folder not in p:
        continue
    k = base64.b64decode(json.load(open(p))["key"])
    n += 1
    needles["key %d raw" % n] = k
    needles["key %d b64" % n] = base64.b64encode(k)
    needles["key %d hex" % n] = k.hex().encode()
if n < 3:
    print("only %d content keys found in %s" % (n, keys_dir))
files = []
for p in paths:
    if os.path.isdir(p):
        for root, _, fs in os.walk(p):
            files += [os.path.join(root, f) for f in fs]
    elif os.path.exists(p):
        files.append(p)
for f in files:
    data = open(f, "rb").read()
    for what, needle in needles.items():
        if needle and needle in data:
            print("%s in %s" % (what, f))
EOF
)
check_eq "no password, content key, resource secret or sealed text in logs or state_dir" "$scan" ""
check "the logs scanned are at debug level" grep -q "debug\]" "$W/log-auto"

# ---- tpm = off: format 1 only
fs_conf "$W/off.conf" "${common[@]}" "tpm=off"
fs_mount "$W/mnt" "$W/off.conf"
pid=$FS_PID
n=${TAG}-f1-300001.onnx
check_eq "tpm = off: a format-1 model reads" "$(sha_of "$W/mnt/$n" 2>&1)" "$(sha_of "$W/plain/$n")"
n=${TAG}-f2-300001.onnx
err=$(head -c 1 "$W/mnt/$n" 2>&1 >/dev/null)
case $err in *"Permission denied"*) ok "tpm = off: a format-2 model fails with EACCES" ;;
*) not_ok "tpm = off: reading a format-2 model: '$err'" ;; esac
check "and the log says why" grep -q "tpm = off: format-2 files will not be readable" "$W/mnt.log"
fs_umount "$W/mnt" "$pid"

# ---- no TPM: a closed port
port=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
notpm="tpm_tcti=swtpm:host=127.0.0.1,port=$port"
# (a TCTI string holds commas, which -o cannot carry: configuration files)
fs_conf "$W/required.conf" "${common[@]}" "tpm=required" "tpm_wait=2" "$notpm"
fs_conf "$W/absent.conf" "${common[@]}" "tpm=auto" "tpm_wait=60" "$notpm" \
	"state_dir=$W/state-none"
mkdir -p "$W/mnt-r"
"$AZ_DAEMON" azaion "$W/mnt-r" -f -o "config=$W/required.conf" >"$W/required.log" 2>&1 &
rpid=$!
FS_PIDS+=("$rpid")
wait_for 20 fs_gone "$rpid"
wait "$rpid"
rc=$?
check "tpm = required without a TPM: the daemon exits non-zero ($rc)" test "$rc" -ne 0
errs=$(grep -c "error\]" "$W/required.log")
check_eq "with one error line" "$errs" 1
check "naming tpm = required and the TCTI" \
	grep -q "tpm = required, but no TPM answers at swtpm:host=127.0.0.1,port=$port" "$W/required.log"
check_eq "and no other output on stderr" \
	"$(grep -v -e 'info\]' -e 'debug\]' -e 'error\]' "$W/required.log")" ""
not_mounted() { ! fs_mounted "$1"; }
check "no mount left" not_mounted "$W/mnt-r"

start=$SECONDS
fs_mount "$W/mnt" "$W/absent.conf"
pid=$FS_PID
el=$((SECONDS - start))
check "tpm = auto without a TPM mounts without waiting tpm_wait=60 (${el}s)" test "$el" -le 10
check "and logs that format-2 files will not be readable" \
	grep -q "no TPM at swtpm.*: format-2 files will not be readable" "$W/mnt.log"
fs_umount "$W/mnt" "$pid"

check_eq "no transient object or session left in the TPM" \
	"$(TPM2TOOLS_TCTI=$TPM_TCTI tpm2_getcap handles-transient; TPM2TOOLS_TCTI=$TPM_TCTI tpm2_getcap handles-loaded-session)" ""
fs_no_leftovers
done_testing
