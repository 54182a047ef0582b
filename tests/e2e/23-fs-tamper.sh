#!/usr/bin/env bash
# 23-fs-tamper: every byte checked before it is served (docs/trust.md
# section 4). Nine bytes XORed into the big part of a format-1 model (whose
# chunk hashes the API holds) and of a format-2 model on the CDN: a cold
# read, through the mount and through POST /load, gets only bytes equal to
# the original and then EIO (or a short body), and the log names the chunk.
# A range tampered in cache_dir is dropped and fetched again from the CDN,
# and the read succeeds. A legacy format-1 resource without a list or a
# sha256 is served, and the log and GET /status say it is unchecked.
. "$(dirname "$0")/../lib.sh"
. "$AZ_TOP/tests/tools/fs-lib.sh"
fs_init t23
[ -d "$CDN_ROOT" ] || bail "missing prerequisite: the stack's nginx root (CDN_ROOT)"

c() { curl -s --max-time 20 --cacert "$STACK_CA" "$@"; }
MIB=1048576
F=t23$TAG
N1=${TAG}-f1.onnx N2=${TAG}-f2.onnx L=${TAG}-legacy.onnx
OFF=$((2 * MIB + 12345)) # inside the third MiB of each big part
PORT=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
fs_conf "$W/pub.conf" "cdn_url=$NGINX_URL" "folder=$F" "state_dir=$W/state-pub"
fs_conf "$W/mnt.conf" "cdn_url=$NGINX_URL" "folder=$F" "state_dir=$W/state" \
	"tpm=auto" "tpm_tcti=$TPM_TCTI" "tpm_wait=5" "io_timeout=5" "rest_listen=127.0.0.1:$PORT"
fs_conf "$W/cache.conf" "cdn_url=$NGINX_URL" "folder=$F" "state_dir=$W/state" \
	"tpm=auto" "tpm_tcti=$TPM_TCTI" "tpm_wait=5" "io_timeout=5" "cache_dir=$W/cache" \
	"cache_max=64M"

# xor9 FILE OFFSET: flips nine bytes of FILE in place.
xor9() {
	"$PY" - "$1" "$2" <<'PYEOF'
import sys
path, off = sys.argv[1], int(sys.argv[2])
with open(path, "r+b") as f:
    f.seek(off)
    b = bytearray(f.read(9))
    f.seek(off)
    f.write(bytes(x ^ 0x5A for x in b))
PYEOF
}
# umount_ok MNT PID: fs_umount, after retrying while something else (a
# scan of /tmp by another test) keeps the mount busy for a moment.
try_umount() { fusermount3 -u "$1" 2>/dev/null; }
umount_ok() {
	wait_for 15 try_umount "$1" || true
	fs_umount "$1" "$2" 2>/dev/null
}
# prefix_ok GOT WANT: GOT is shorter than WANT and equals its beginning.
prefix_ok() {
	local n
	n=$(stat -c %s "$1")
	[ "$n" -lt "$(stat -c %s "$2")" ] && cmp -s -n "$n" "$1" "$2"
}

# The mount enrols the device (format 2 needs it) before anything is published.
fs_mount "$W/m0" "$W/mnt.conf"
umount_ok "$W/m0" "$FS_PID"
mkdir -p "$W/parts"
for n in "$N1" "$N2" "$L"; do head -c $((5 * MIB + 777)) /dev/urandom >"$W/$n"; done
fs_publish "$W/pub.conf" 1 "$N1" "$W/$N1" && fs_publish "$W/pub.conf" 2 "$N2" "$W/$N2" &&
	"$AZ_CTL" -c "$W/pub.conf" publish --format 1 --name "$L" --out "$W/parts" "$W/$L" \
		>>"$W/publish.log" 2>&1 ||
	bail "publishing failed: $(tail -3 "$W/publish.log")"
tok=$(c -X POST "$API_URL/login" -d "{\"email\":\"$API_EMAIL\",\"password\":\"$API_PASSWORD\"}" |
	"$PY" -c 'import json, sys; print(json.load(sys.stdin)["token"])')
# The legacy resource, registered as the original publisher did: a small
# part with its sizes, no sha256 and no chunk hashes.
c -o /dev/null -T "$W/parts/$L.big" "$NGINX_URL/$F/$L.big"
code=$(c -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $tok" \
	-F "data=@$W/parts/$L.small;filename=$L.small" -F "size=$(stat -c %s "$W/$L")" \
	-F "big_size=$(stat -c %s "$W/parts/$L.big")" "$API_URL/resources/$F")
check_eq "a legacy small part without sha256 is registered" "$code" 200
check_eq "the API holds the format-1 model's chunk hashes" \
	"$(c -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $tok" "$API_URL/resources/hashes/$F/$N1")" 200
check_eq "the legacy resource has no list" \
	"$(c -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $tok" "$API_URL/resources/hashes/$F/$L")" 404

for n in "$N1" "$N2"; do
	cp "$CDN_ROOT/$F/$n.big" "$W/$n.big.orig"
	xor9 "$CDN_ROOT/$F/$n.big" "$OFF"
done

# ---- cold reads through the mount and through POST /load
fs_mount "$W/m1" "$W/mnt.conf"
pid=$FS_PID
for n in "$N1" "$N2"; do
	err=$(dd if="$W/m1/$n" of="$W/$n.got" bs=64k status=none 2>&1)
	case $err in *"Input/output error"*) ok "$n tampered on the CDN: the read ends in EIO" ;;
	*) not_ok "$n tampered on the CDN: the read ends in EIO: '$err'" ;; esac
	check "$n: every byte served before equals the original" prefix_ok "$W/$n.got" "$W/$n"
	check "$n: and it got as far as the chunk before the damage" \
		test "$(stat -c %s "$W/$n.got")" -ge $((OFF - 2 * MIB))
	sleep 1.2 # past the moment a failed read answers at once for
	code=$(curl -sS -o "$W/$n.load" -w '%{http_code}' -X POST \
		-H 'Content-Type: application/json' -d "{\"filename\": \"$n\", \"folder\": \"$F\"}" \
		"http://127.0.0.1:$PORT/load/$n" 2>/dev/null)
	check_eq "$n: POST /load starts with 200" "$code" 200
	check "$n: POST /load gives only original bytes, then stops short" prefix_ok "$W/$n.load" "$W/$n"
done
check "the format-1 chunk that failed is logged" \
	grep -q "$N1.big: chunk 2 of the big part fails its SHA-256 again" "$W/m1.log"
check "the format-2 chunk that failed is logged" \
	grep -q "$N2: chunk .* fails its check (.*): tampered, truncated or not this file's$" "$W/m1.log"
err=$(cat "$W/m1/$L" 2>&1 >"$W/$L.got")
check_eq "the legacy resource with neither list nor sha256 is served" "$err" ""
check "  whole" cmp -s "$W/$L.got" "$W/$L"
check "the log says it is served unchecked" grep -q "$L: served unchecked" "$W/m1.log"
st=$(curl -sS "http://127.0.0.1:$PORT/status")
check "GET /status lists it under \"unchecked\", and only it" "$PY" -c '
import json, sys
u = json.loads(sys.argv[1])["unchecked"]
assert u == [sys.argv[2]], u' "$st" "$L"
umount_ok "$W/m1" "$pid"

# ---- damage in the first 64 KiB: POST /load answers 502 with the cause, logged once
# (without cache_dir, whose default under state_dir holds the first reads' bytes)
for n in "$N1" "$N2"; do xor9 "$CDN_ROOT/$F/$n.big" 100; done
fs_conf "$W/nocache.conf" "cdn_url=$NGINX_URL" "folder=$F" "state_dir=$W/state" \
	"tpm=auto" "tpm_tcti=$TPM_TCTI" "tpm_wait=5" "io_timeout=5" "rest_listen=127.0.0.1:$PORT" \
	"cache_max=0"
fs_mount "$W/m1b" "$W/nocache.conf"
pid=$FS_PID
for n in "$N1" "$N2"; do
	code=$(curl -sS -o "$W/$n.load" -w '%{http_code}' -X POST \
		-H 'Content-Type: application/json' -d "{\"filename\": \"$n\", \"folder\": \"$F\"}" \
		"http://127.0.0.1:$PORT/load/$n" 2>/dev/null)
	check_eq "$n damaged at its start: POST /load is 502 ($(head -c 300 "$W/$n.load"))" "$code" 502
done
check "  format 1: the detail names the chunk and its SHA-256" \
	grep -q "$N1.big: chunk 0 of the big part fails its SHA-256 again" "$W/$N1.load"
check "  format 2: the detail names the chunk and its check" \
	grep -q "$N2: chunk 0 fails its check" "$W/$N2.load"
check_eq "  format 1: the failure is logged once" \
	"$(grep -c "chunk 0 of the big part fails its SHA-256 again" "$W/m1b.log")" 1
check_eq "  format 2: the failure is logged once (and the first try, read again, as a warning)" \
	"$(grep "chunk 0 fails its check (.*): tampered" "$W/m1b.log" | grep -vc "reading it again")" 1
umount_ok "$W/m1b" "$pid"

# ---- a range tampered in cache_dir: dropped, fetched again from the CDN
for n in "$N1" "$N2"; do cp "$W/$n.big.orig" "$CDN_ROOT/$F/$n.big"; done
fs_mount "$W/m2" "$W/cache.conf"
pid=$FS_PID
for n in "$N1" "$N2"; do
	check "$n: read whole into cache_dir" cmp -s "$W/m2/$n" "$W/$n"
done
umount_ok "$W/m2" "$pid"
ndata=0
for d in "$W"/cache/*.data; do
	[ -f "$d" ] || continue
	xor9 "$d" "$OFF"
	ndata=$((ndata + 1))
done
check_eq "both big parts are in cache_dir, and both are tampered there" "$ndata" 2
fs_mount "$W/m3" "$W/cache.conf"
pid=$FS_PID
for n in "$N1" "$N2"; do
	check "$n tampered in cache_dir: the read gives the original" cmp -s "$W/m3/$n" "$W/$n"
done
check "the format-1 range was dropped and read again" \
	grep -q "$N1.big: chunk 2 of the big part fails its SHA-256; reading it again" "$W/m3.log"
check "the format-2 range was dropped and read again" \
	grep -q "$N2: chunk .* fails its check.*reading it again" "$W/m3.log"
umount_ok "$W/m3" "$pid"

fs_no_leftovers
done_testing
