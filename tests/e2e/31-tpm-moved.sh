#!/usr/bin/env bash
# 31-tpm-moved: a device's state_dir copied to another machine. The blobs
# (device key, sealed store, SRK record, device id) are copied next to a
# second, independent swtpm: nothing unseals, no format-2 byte is returned,
# the log and /status say why and what fixes it; a login there enrols that
# machine as a new device, under its own key.
. "$(dirname "$0")/../lib.sh"
. "$AZ_TOP/tests/tools/fs-lib.sh"
need tpm2_getcap
fs_init t31

F=t31$TAG
common=("cdn_url=$NGINX_URL" "folder=$F" "cache_dir=$W/cache" "tpm=auto" "tpm_wait=10"
	"catalog_ttl=1"
	"rest_listen=unix:$W/rest.sock" "log_level=debug")
fs_conf "$W/enrol.conf" "${common[@]}" "state_dir=$W/state" "tpm_tcti=$TPM_TCTI"

fs_mount "$W/mnt" "$W/enrol.conf"
pid=$FS_PID
check "the device enrolled on the stack's TPM" test -s "$W/state/device_id"
id1=$(cat "$W/state/device_id")
# device_field ID FIELD: a field of the API's record of a device.
device_field() {
	curl -s --cacert "$STACK_CA" "$ADMIN_URL/devices" | "$PY" -c '
import json, sys
d = [x for x in json.load(sys.stdin)["devices"] if x["device_id"] == sys.argv[1]]
print(d[0].get(sys.argv[2]) or "" if d else "")' "$1" "$2"
}
ek1=$(device_field "$id1" ek_serial)
fp1=$(device_field "$id1" fingerprint)
check "the API recorded the first TPM's EK certificate" test -n "$ek1" -a -n "$fp1"
names=()
mkdir -p "$W/plain"
for s in 1000 200003; do
	n=${TAG}-f2-$s.onnx
	head -c "$s" /dev/urandom >"$W/plain/$n"
	fs_publish "$W/enrol.conf" 2 "$n" "$W/plain/$n" ||
		bail "publishing $n failed: $(tail -3 "$W/publish.log")"
	names+=("$n")
done
n=${names[1]}
# The catalog (also kept in state_dir) lists the new models within catalog_ttl.
wait_for 15 test -e "$W/mnt/$n" || bail "the mount never listed $n"
check_eq "a format-2 model reads on the enrolled machine" "$(sha_of "$W/mnt/$n" 2>&1)" \
	"$(sha_of "$W/plain/$n")"
fs_umount "$W/mnt" "$pid"

# ---- the copy, next to another TPM
tpm2_name=t31$TAG
TCTI2=$("$AZ_TOP/scripts/stack" tpm2 "$STACK_DIR" "$tpm2_name") || bail "no second swtpm"
stop_tpm2() {
	local f=$STACK_DIR/pids/tpm-$tpm2_name
	[ -f "$f" ] && kill -TERM "$(cat "$f")" 2>/dev/null
	rm -f "$f"
}
trap 'stop_tpm2; fs_cleanup' EXIT
cp -a "$W/state" "$W/state2"
fs_conf "$W/moved.conf" "${common[@]}" "state_dir=$W/state2" "tpm_tcti=$TCTI2"
sed -i '/^credentials = /d' "$W/moved.conf"
fs_mount "$W/mnt" "$W/moved.conf"
pid=$FS_PID
check "the log says the TPM is another one" \
	grep -q "different TPM or a cleared one" "$W/mnt.log"
check "and names the fix" grep -q "a new login re-enrols the device" "$W/mnt.log"
no_unseal() { ! grep -q "sealed store unsealed\|logging in with the credentials" "$1"; }
check "nothing was unsealed" no_unseal "$W/mnt.log"
for n in "${names[@]}"; do
	out=$(head -c 100 "$W/mnt/$n" 2>"$W/err" | wc -c)
	err=$(cat "$W/err")
	case $err in
	*"Permission denied"*) check_eq "$n: EACCES, and not one byte returned" "$out" 0 ;;
	*) not_ok "$n: reading it on the other TPM gave '$err' and $out bytes" ;;
	esac
done
if [ -S "$W/rest.sock" ]; then
	st=$(curl -s --max-time 5 --unix-socket "$W/rest.sock" http://loader/status |
		"$PY" -c 'import json,sys; print(json.load(sys.stdin).get("tpm"))' 2>&1)
	check_eq "GET /status says tpm: error" "$st" error
fi
fs_umount "$W/mnt" "$pid"

# ---- a login on the other machine enrols it as a device of its own
fs_conf "$W/moved-login.conf" "${common[@]}" "state_dir=$W/state2" "tpm_tcti=$TCTI2"
fs_mount "$W/mnt" "$W/moved-login.conf"
pid=$FS_PID
id2=$(cat "$W/state2/device_id" 2>/dev/null)
check "a login re-enrols: a new device id ($id1 -> $id2)" test -n "$id2" -a "$id2" != "$id1"
n=${names[0]}
check_eq "and its own key reads the model" "$(sha_of "$W/mnt/$n" 2>&1)" "$(sha_of "$W/plain/$n")"
fs_umount "$W/mnt" "$pid"
check_eq "the first state_dir kept its device id" "$(cat "$W/state/device_id")" "$id1"
check "the new id is attested by the second TPM's EK certificate" \
	test -n "$(device_field "$id2" ek_serial)" -a "$(device_field "$id2" ek_serial)" != "$ek1"
check_eq "the old id still names the first TPM's key, not the second's" \
	"$(device_field "$id1" ek_serial) $(device_field "$id1" fingerprint)" "$ek1 $fp1"

check_eq "no transient object left in the second TPM" \
	"$(TPM2TOOLS_TCTI=$TCTI2 tpm2_getcap handles-transient)" ""
fs_no_leftovers
done_testing
