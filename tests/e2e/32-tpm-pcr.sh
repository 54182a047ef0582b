#!/usr/bin/env bash
# 32-tpm-pcr: keys bound to a PCR (tpm_pcrs = sha256:16, the resettable
# debug PCR standing in for PCR 7). Extending it, as a firmware update
# would change the boot state, makes unseal and unwrap fail: the start
# logs the documented message and its fix, /status says error, format-2
# reads fail with EACCES and return nothing. A new login (azaionctl enroll,
# reading the credentials on stdin, while the daemon runs) re-enrols the
# device and reads work again, also after a restart with no operator.
# 33-tpm-relogin does the same with the side endpoint's POST /login.
. "$(dirname "$0")/../lib.sh"
. "$AZ_TOP/tests/tools/fs-lib.sh"
need tpm2_pcrreset tpm2_pcrextend
fs_init t32
export TPM2TOOLS_TCTI=$TPM_TCTI
tpm2_pcrreset 16 || bail "tpm2_pcrreset 16 failed"
trap 'tpm2_pcrreset 16; fs_cleanup' EXIT

F=t32$TAG
common=("cdn_url=$NGINX_URL" "folder=$F" "state_dir=$W/state" "cache_dir=$W/cache"
	"tpm=required" "tpm_tcti=$TPM_TCTI" "tpm_wait=10" "tpm_pcrs=sha256:16" "catalog_ttl=1"
	"rest_listen=unix:$W/rest.sock" "log_level=debug")
fs_conf "$W/enrol.conf" "${common[@]}"
fs_conf "$W/auto.conf" "${common[@]}"
sed -i '/^credentials = /d' "$W/auto.conf"

status() {
	curl -s --max-time 5 --unix-socket "$W/rest.sock" http://loader/status |
		"$PY" -c 'import json,sys; print(json.load(sys.stdin).get("tpm"))' 2>&1
}
# reads_ok: every model reads with its sha256.
reads_ok() {
	local n bad=0
	for n in "${names[@]}"; do
		[ "$(sha_of "$W/mnt/$n" 2>/dev/null)" = "$(sha_of "$W/plain/$n")" ] || bad=1
	done
	return $bad
}
# reads_refused: every format-2 model gives EACCES and no byte.
reads_refused() {
	local n out
	for n in "${names[@]}"; do
		case $n in *-f2-*) ;; *) continue ;; esac
		out=$(head -c 100 "$W/mnt/$n" 2>"$W/err" | wc -c)
		grep -q "Permission denied" "$W/err" && [ "$out" = 0 ] || return 1
	done
}

phase=0
fs_mount "$W/mnt" "$W/enrol.conf"
pid=$FS_PID
check "enrolled with tpm_pcrs = sha256:16" test -s "$W/state/device_id"
check_eq "the binding is recorded" "$(cat "$W/state/tpm-pcrs")" "sha256:16"
id1=$(cat "$W/state/device_id")
names=()
mkdir -p "$W/plain"
for n in f1-70001 f2-70001 f2-300000; do
	n=${TAG}-$n.onnx
	head -c "${n##*-}" /dev/urandom >"$W/plain/$n" 2>/dev/null ||
		head -c 70001 /dev/urandom >"$W/plain/$n"
	fmt=${n#*-f}
	fs_publish "$W/enrol.conf" "${fmt%%-*}" "$n" "$W/plain/$n" ||
		bail "publishing $n failed: $(tail -3 "$W/publish.log")"
	names+=("$n")
done
wait_for 15 test -e "$W/mnt/${names[2]}" || bail "the mount never listed the models"
check "the PCR-bound device reads every model" reads_ok
fs_umount "$W/mnt" "$pid"
cp "$W/mnt.log" "$W/log-$((++phase))"

# ---- the boot state changes
tpm2_pcrextend 16:sha256=0000000000000000000000000000000000000000000000000000000000000001 ||
	bail "tpm2_pcrextend failed"
fs_mount "$W/mnt" "$W/auto.conf"
pid=$FS_PID
check "start: the log says the PCR policy does not hold" \
	grep -q "the PCR policy does not hold, the boot state changed since enrolment" "$W/mnt.log"
check "and that a new login re-enrols the device" \
	grep -q "unseal.*a new login re-enrols the device" "$W/mnt.log"
check_eq "said once, by the start ($(grep -m1 'cannot unseal' "$W/mnt.log"))" \
	"$(grep -v '\[debug\]' "$W/mnt.log" | grep -c 'TPM: cannot unseal the stored credentials: .*boot state changed')" 1
[ -S "$W/rest.sock" ] && check_eq "GET /status says tpm: error" "$(status)" error
check "format-2 reads fail with EACCES and return nothing" reads_refused

# ---- a new login, while the daemon runs: azaionctl enroll, credentials on stdin
out=$(printf 'email = %s\npassword = %s\n' "$API_EMAIL" "$API_PASSWORD" |
	"$AZ_CTL" -c "$W/auto.conf" enroll 2>&1)
rc=$?
check_eq "azaionctl enroll succeeds ($out)" "$rc" 0
check_eq "and says only that it enrolled (the old store's failure is what it mends)" \
	"$(printf '%s\n' "$out" | grep -vc '^enrolled: device ')" 0
id2=$(cat "$W/state/device_id")
check "it enrolled a new device key ($id1 -> $id2)" test "$id2" != "$id1"
check "the running daemon picks the new enrolment up and every model reads" \
	wait_for 10 reads_ok
[ -S "$W/rest.sock" ] && check_eq "GET /status says tpm: ok" "$(status)" ok
fs_umount "$W/mnt" "$pid"
cp "$W/mnt.log" "$W/log-$((++phase))"

fs_mount "$W/mnt" "$W/auto.conf"
pid=$FS_PID
check "a restart with no operator unseals under the new boot state and reads all" reads_ok
fs_umount "$W/mnt" "$pid"
cp "$W/mnt.log" "$W/log-$((++phase))"

check "the password is in no log" sh -c "! grep -qF -- '$API_PASSWORD' '$W'/*.log"
fs_no_leftovers
done_testing
