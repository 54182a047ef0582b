#!/usr/bin/env bash
# 33-tpm-relogin: the boot state changes under a PCR-bound device (PCR 16
# extended, as in 32-tpm-pcr) and the operator logs in through the side
# endpoint (F1, POST /login): the login re-enrols the device, /status goes
# from error to ok, and every model reads again on the running mount.
. "$(dirname "$0")/../lib.sh"
. "$AZ_TOP/tests/tools/fs-lib.sh"
need tpm2_pcrreset tpm2_pcrextend
fs_init t33
export TPM2TOOLS_TCTI=$TPM_TCTI
tpm2_pcrreset 16 || bail "tpm2_pcrreset 16 failed"
trap 'tpm2_pcrreset 16; fs_cleanup' EXIT

F=t33$TAG
common=("cdn_url=$NGINX_URL" "folder=$F" "state_dir=$W/state" "cache_dir=$W/cache"
	"tpm=required" "tpm_tcti=$TPM_TCTI" "tpm_wait=10" "tpm_pcrs=sha256:16" "catalog_ttl=1"
	"rest_listen=unix:$W/rest.sock")
fs_conf "$W/enrol.conf" "${common[@]}"
fs_conf "$W/auto.conf" "${common[@]}"
sed -i '/^credentials = /d' "$W/auto.conf"

status() {
	curl -s --max-time 5 --unix-socket "$W/rest.sock" http://loader/status |
		"$PY" -c 'import json,sys; print(json.load(sys.stdin).get("tpm"))' 2>&1
}
reads_ok() {
	local n bad=0
	for n in "${names[@]}"; do
		[ "$(sha_of "$W/mnt/$n" 2>/dev/null)" = "$(sha_of "$W/plain/$n")" ] || bad=1
	done
	return $bad
}
reads_refused() {
	local n out
	for n in "${names[@]}"; do
		case $n in *-f2-*) ;; *) continue ;; esac
		out=$(head -c 100 "$W/mnt/$n" 2>"$W/err" | wc -c)
		grep -q "Permission denied" "$W/err" && [ "$out" = 0 ] || return 1
	done
}

fs_mount "$W/mnt" "$W/enrol.conf"
pid=$FS_PID
check "enrolled with tpm_pcrs = sha256:16" test -s "$W/state/device_id"
id1=$(cat "$W/state/device_id")
names=(${TAG}-f1-5000.onnx ${TAG}-f2-5000.onnx)
mkdir -p "$W/plain"
for n in "${names[@]}"; do
	head -c 5000 /dev/urandom >"$W/plain/$n"
	fmt=${n#*-f}
	fs_publish "$W/enrol.conf" "${fmt%%-*}" "$n" "$W/plain/$n" ||
		bail "publishing $n failed: $(tail -3 "$W/publish.log")"
done
wait_for 15 test -e "$W/mnt/${names[1]}" || bail "the mount never listed the models"
check "every model reads" reads_ok
fs_umount "$W/mnt" "$pid"

tpm2_pcrextend 16:sha256=0000000000000000000000000000000000000000000000000000000000000003 ||
	bail "tpm2_pcrextend failed"
fs_mount "$W/mnt" "$W/auto.conf"
pid=$FS_PID
[ -S "$W/rest.sock" ] || bail "the side endpoint is not listening on $W/rest.sock"
check_eq "after the PCR changed, GET /status says tpm: error" "$(status)" error
check "format-2 reads fail with EACCES and return nothing" reads_refused
body=$("$PY" -c 'import json,sys; print(json.dumps({"email": sys.argv[1], "password": sys.argv[2]}))' \
	"$API_EMAIL" "$API_PASSWORD")
code=$(curl -s -o "$W/login.out" -w '%{http_code}' --max-time 30 --unix-socket "$W/rest.sock" \
	-H 'Content-Type: application/json' -d "$body" http://loader/login)
check_eq "POST /login answers 200" "$code" 200
id2=$(cat "$W/state/device_id" 2>/dev/null)
check "POST /login re-enrolled the device ($id1 -> $id2)" test -n "$id2" -a "$id2" != "$id1"
check_eq "GET /status says tpm: ok" "$(status)" ok
check "and every model reads again" reads_ok
fs_umount "$W/mnt" "$pid"

check "the password is in no log" sh -c "! grep -qF -- '$API_PASSWORD' '$W/mnt.log'"
fs_no_leftovers
done_testing
