#!/usr/bin/env bash
# 70-faults: the daemon reads through fault-injecting proxies of the tests'
# own (tests/tools/faultproxy.py) in front of the API and of nginx, with no
# disk cache, so that every read reaches the network.
#  - transient faults (5xx, 429, resets mid-body, truncated bodies, a stall
#    shorter than io_timeout, a wrong Content-Range, a flipped byte in
#    format 2, a 401 from the API): the read returns the plaintext's bytes;
#  - persistent faults (5xx, resets, stalls, flipped bytes): EIO or
#    ETIMEDOUT within io_timeout, never wrong bytes; a format-1 file read
#    whole through a corrupting CDN fails with EIO (the catalog's sha256);
#  - afterwards the same mount serves again.
. "$(dirname "$0")/../lib.sh"
. "$AZ_TOP/tests/tools/fs-lib.sh"
. "$AZ_TOP/tests/tools/fault-lib.sh"
fs_init t70
trap 'fs_cleanup; fp_cleanup' EXIT

IO=4
SLACK=2
F=f70$TAG
fp_start API "$API_URL"
fp_start CDN "$NGINX_URL"

fs_conf "$W/pub.conf" "cdn_url=$NGINX_URL" "folder=$F" "state_dir=$W/state-pub"
fs_conf "$W/conf" "api_url=$API_URL" "cdn_url=$CDN_URL" "folder=$F" "state_dir=$W/state" \
	"cache_max=0" "memory_cache=4M" "io_timeout=$IO" "catalog_ttl=1" \
	"tpm=auto" "tpm_tcti=$TPM_TCTI" "tpm_wait=5" "rest_listen=unix:$W/rest.sock"
# fs_conf writes the stack's API; this one must go through the proxy.
sed -i "1s|.*|api_url = $API_URL|" "$W/conf"

# The mount enrols the device (format 2 needs it) before anything is published.
fs_mount "$W/mnt" "$W/conf"
pid=$FS_PID
check "the device enrolled through the proxy" test -s "$W/state/device_id"

MIB=1048576
N1=${TAG}-f1.onnx N2=${TAG}-f2.onnx S1=${TAG}-sha.onnx
# Format-2 models opened only once each: their first open asks the API.
K1=${TAG}-k1.onnx K2=${TAG}-k2.onnx K3=${TAG}-k3.onnx
head -c $((32 * MIB)) /dev/urandom >"$W/$N1"
head -c $((32 * MIB)) /dev/urandom >"$W/$N2"
head -c $((MIB + 12345)) /dev/urandom >"$W/$S1"
for k in "$K1" "$K2" "$K3"; do
	head -c 300001 /dev/urandom >"$W/$k"
	fs_publish "$W/pub.conf" 2 "$k" "$W/$k" || bail "publishing $k failed"
done
fs_publish "$W/pub.conf" 1 "$N1" "$W/$N1" && fs_publish "$W/pub.conf" 2 "$N2" "$W/$N2" &&
	fs_publish "$W/pub.conf" 1 "$S1" "$W/$S1" ||
	bail "publishing failed: $(tail -3 "$W/publish.log")"
wait_for 20 test -e "$W/mnt/$S1" || bail "the mount does not list the new models"

# fs_settled: the daemon's read-ahead has ended (the CDN proxy saw no
# request for half a second).
fs_settled() {
	local n
	n=$(fp_requests CDN)
	sleep 0.5
	[ "$n" = "$(fp_requests CDN)" ]
}

# Each read takes a region not read before: region k is 128 KiB at k MiB.
next1=0 next2=0
region() {
	local fmt=$1 v
	v=next$fmt
	R_OFF=$((${!v} * MIB))
	printf -v "$v" '%s' $((${!v} + 1))
}
readcmp() { "$PY" "$AZ_TOP/tests/tools/readcmp.py" "$W/$1" "$W/mnt/$1" "$2" "$3"; }

# transient NAME JSON: arm the fault on the CDN for each format's big part,
# read a fresh region, expect the plaintext.
transient() {
	local what=$1 json=$2 fmt n out taken
	for fmt in 1 2; do
		n=${TAG}-f$fmt.onnx
		region "$fmt"
		fp_fault CDN "$(echo "$json" | sed "s|}$|, \"path\": \"/$F/$n.big\"}|")"
		out=$(readcmp "$n" "$R_OFF" 131072)
		taken=$(fp_stat CDN "$(echo "$json" | sed 's/.*"kind": *"\([a-z]*\)".*/\1/')")
		fp_clear CDN
		check_eq "transient $what, format $fmt: the read returns the plaintext (fault taken $taken times in all)" \
			"${out%% *}" ok
	done
}
transient "503 twice" '{"kind": "status", "status": 503, "count": 2}'
transient "429 twice" '{"kind": "status", "status": 429, "count": 2}'
transient "connection reset after 1000 body bytes, twice" \
	'{"kind": "reset", "after": 1000, "count": 2}'
transient "body truncated after 5000 bytes" '{"kind": "truncate", "after": 5000, "count": 1}'
transient "2 s stall before the answer" '{"kind": "stall", "seconds": 2, "count": 1}'
transient "2 s stall mid-body" '{"kind": "stall", "after": 30000, "seconds": 2, "count": 1}'
transient "wrong Content-Range" '{"kind": "range", "count": 1}'
check "the proxy saw the faults" test "$(fp_stat CDN range)" -ge 2

# A flipped byte: format 2 detects it (GCM tag, header checks) and reads
# again; once in a chunk, once in the header.
region 2
fp_fault CDN "{\"kind\": \"flip\", \"count\": 1, \"range_min\": 4096, \"path\": \"/$F/$N2.big\"}"
out=$(readcmp "$N2" "$R_OFF" 131072)
fp_clear CDN
check_eq "transient flipped byte in a chunk, format 2: the read returns the plaintext" "${out%% *}" ok
check "  the failed check was logged" grep -q "$N2: chunk .* fails its check.*reading it again" "$W/mnt.log"
wait_for 10 fs_settled
region 2
fp_fault CDN "{\"kind\": \"flip\", \"count\": 1, \"path\": \"/$F/$N2.big\"}"
out=$(readcmp "$N2" "$R_OFF" 131072)
fp_clear CDN
check_eq "transient flipped byte in the header, format 2: the read returns the plaintext" "${out%% *}" ok

# A 401 from the API (the token expired mid-stream): log in again, retry.
# The first open of a format-2 model asks the API for its key: the 401
# meets that call.
logins_before=$(grep -c 'POST /login' "$W/fp-API.log")
fp_fault API '{"kind": "status", "status": 401, "count": 1, "path": "/resources/key/"}'
out=$(readcmp "$K1" 0 131072)
check_eq "a 401 from the API mid-stream: the read returns the plaintext" "${out%% *}" ok
check_eq "the 401 was answered" "$(fp_stat API status)" 1
check "the daemon logged in again" test "$(grep -c 'POST /login' "$W/fp-API.log")" -gt "$logins_before"
fp_clear API
fp_fault API '{"kind": "status", "status": 503, "count": 2, "path": "/resources/key/"}'
out=$(readcmp "$K2" 0 131072)
fp_clear API
check_eq "503 twice from the API: the read returns the plaintext" "${out%% *}" ok

# After a failed fill the daemon answers new reads of that file with the
# same error for a second (STORE_FAIL_HOLD_MS in fs/store.c): each case
# below waits that out, so that it meets its own fault.
hold_lapse() { sleep 1.1; }

# persistent NAME JSON: every request of the big part fails the same way.
persistent() {
	local what=$1 json=$2 fmt n out res took
	for fmt in 1 2; do
		n=${TAG}-f$fmt.onnx
		hold_lapse
		region "$fmt"
		fp_fault CDN "$(echo "$json" | sed "s|}$|, \"count\": -1, \"path\": \"/$F/$n.big\"}|")"
		out=$(readcmp "$n" "$R_OFF" 131072)
		fp_clear CDN
		res=${out%% *} took=${out#* }
		case $res in
		EIO | ETIMEDOUT) ok "persistent $what, format $fmt: $res" ;;
		*) not_ok "persistent $what, format $fmt: EIO or ETIMEDOUT, got '$res'" ;;
		esac
		check "  within io_timeout ($took s, io_timeout $IO s)" \
			awk -v t="$took" -v m=$((IO + SLACK)) 'BEGIN { exit !(t <= m) }'
	done
}
persistent "503" '{"kind": "status", "status": 503}'
persistent "429" '{"kind": "status", "status": 429}'
persistent "connection resets" '{"kind": "reset", "after": 100}'
persistent "truncated bodies" '{"kind": "truncate", "after": 100}'
persistent "stall of 30 s" '{"kind": "stall", "seconds": 30}'
persistent "connections closed unanswered" '{"kind": "refuse"}'
persistent "wrong Content-Range" '{"kind": "range"}'

# Persistent corruption of format 2: never data.
for min in 0 4096; do
	hold_lapse
	region 2
	fp_fault CDN "{\"kind\": \"flip\", \"count\": -1, \"range_min\": $min, \"path\": \"/$F/$N2.big\"}"
	out=$(readcmp "$N2" "$R_OFF" 131072)
	fp_clear CDN
	check_eq "persistent flipped bytes ($([ $min = 0 ] && echo everywhere || echo in chunks)), format 2: EIO, never the corrupt bytes" \
		"${out%% *}" EIO
done
check "  the chunk check failed twice: read again, then given up" \
	grep -q "$N2: chunk .* fails its check (.*): tampered, truncated or not this file's$" "$W/mnt.log"

# Format 1 has no tag: its chunk hashes (or, for a legacy resource, the
# catalog's sha256, checked whole) turn corruption into EIO.
fp_fault CDN "{\"kind\": \"flip\", \"count\": -1, \"path\": \"/$F/$S1.big\"}"
err=$(cat "$W/mnt/$S1" 2>&1 >/dev/null)
fp_clear CDN
case $err in *"Input/output error"*) ok "format 1 read whole through a corrupting CDN: EIO" ;;
*) not_ok "format 1 read whole through a corrupting CDN: EIO, got '$err'" ;; esac
check "the check that failed was logged" \
	grep -qE "$S1: the plaintext's sha256 differs|$S1.big: chunk .* fails its SHA-256 again" "$W/mnt.log"

# The API down for good: models opened before still read (a format-1
# small part stays with its file; a format-2 key lingers a moment after
# the last close, then its key document kept in state_dir serves, see
# 71-offline); a format-2 model never opened fails cleanly.
fp_fault API '{"kind": "status", "status": 503, "count": -1, "path": "/"}'
region 1
out=$(readcmp "$N1" "$R_OFF" 131072)
check_eq "API down: a region of a format-1 model opened before still reads" "${out%% *}" ok
hold_lapse
region 2
out=$(readcmp "$N2" "$R_OFF" 131072)
check_eq "API down: a region of a format-2 model opened before still reads" "${out%% *}" ok
out=$(readcmp "$K3" 0 131072)
fp_clear API
res=${out%% *} took=${out#* }
case $res in EIO | ETIMEDOUT | EACCES) ok "API down: a format-2 model never opened fails cleanly ($res)" ;;
*) not_ok "API down: a format-2 model never opened fails cleanly, got '$res'" ;; esac
check "  within twice io_timeout (open and read: $took s)" \
	awk -v t="$took" -v m=$((2 * IO + SLACK)) 'BEGIN { exit !(t <= m) }'

# Recovery: with every fault cleared the same mount serves fresh regions.
hold_lapse
for fmt in 1 2; do
	region "$fmt"
	out=$(readcmp "${TAG}-f$fmt.onnx" "$R_OFF" 131072)
	check_eq "after the faults, format $fmt reads again" "${out%% *}" ok
done
check "the daemon still runs" kill -0 "$pid"
fs_umount "$W/mnt" "$pid"
fs_no_leftovers
done_testing
