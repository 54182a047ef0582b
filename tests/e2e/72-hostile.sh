#!/usr/bin/env bash
# 72-hostile: a hostile or broken Resource API, played by the fault proxy's
# "body" answers, in front of a running mount.
#  - a catalog with names holding '/', '..', '.', NUL, empty, 10 KiB long,
#    duplicates, negative sizes, an unknown format, a huge size: only the
#    acceptable entries show (a 255-byte name does, the first duplicate
#    wins), each refusal is logged, and the mount goes on serving;
#  - a 64 MiB catalog answer and JSON nested 10,000 deep are refused without
#    being buffered (peak RSS stays small), the last good list stays;
#  - an oversized small part fails that open cleanly.
. "$(dirname "$0")/../lib.sh"
. "$AZ_TOP/tests/tools/fs-lib.sh"
. "$AZ_TOP/tests/tools/fault-lib.sh"
fs_init t72
trap 'fs_cleanup; fp_cleanup' EXIT

F=h72$TAG
fp_start API "$API_URL"
fs_conf "$W/pub.conf" "cdn_url=$NGINX_URL" "folder=$F" "state_dir=$W/state-pub"
fs_conf "$W/conf" "cdn_url=$NGINX_URL" "folder=$F" "state_dir=$W/state" "cache_max=0" \
	"memory_cache=4M" "io_timeout=3" "catalog_ttl=1" "rest_listen=unix:$W/rest.sock"
sed -i "1s|.*|api_url = $API_URL|" "$W/conf"

M=${TAG}-m.onnx P=${TAG}-p.onnx
head -c 500001 /dev/urandom >"$W/$M"
head -c 70001 /dev/urandom >"$W/$P"
fs_publish "$W/pub.conf" 1 "$M" "$W/$M" || bail "publishing failed: $(tail -3 "$W/publish.log")"
fs_mount "$W/mnt" "$W/conf"
pid=$FS_PID
check_eq "the mount lists the published model" "$(ls "$W/mnt")" "$M"

# The API's real list plus hostile entries.
tok=$(curl -s --max-time 10 --cacert "$STACK_CA" -X POST "$API_URL/login" \
	-d "{\"email\":\"$API_EMAIL\",\"password\":\"$API_PASSWORD\"}" |
	"$PY" -c 'import json, sys; print(json.load(sys.stdin)["token"])')
curl -s --max-time 10 --cacert "$STACK_CA" -H "Authorization: Bearer $tok" \
	"$API_URL/resources/list/$F" >"$W/real.json"
N255=$(printf 'n%.0s' $(seq 255))
"$PY" - "$W/real.json" "$W/hostile.json" "$N255" <<'EOF'
import json, sys
doc = json.load(open(sys.argv[1]))
bad = [{"name": n, "format": 1, "size": 5} for n in
       ["a/b", "/abs", "..", ".", "", "../../etc/passwd", "n" * 10240, "n" * 256]]
bad += [
    {"name": "dup.onnx", "format": 1, "size": 10, "big_size": 100},
    {"name": "dup.onnx", "format": 1, "size": 20, "big_size": 200},
    {"name": "neg.onnx", "format": 1, "size": -1},
    {"name": "negbig.onnx", "format": 1, "size": 5, "big_size": -7},
    {"name": "fmt.onnx", "format": 3, "size": 5},
    {"name": "huge.onnx", "format": 1, "size": 2**63 - 1, "big_size": 2**63 - 1},
    {"name": sys.argv[3], "format": 1, "size": 7, "big_size": 3000},
    {"name": 12}, {"size": 1}, "text", None, [1, 2],
    {"name": "sha.onnx", "format": 1, "size": 3, "sha256": "not-hex"},
]
doc["resources"] += bad
json.dump(doc, open(sys.argv[2], "w"))
EOF

fp_fault API "{\"kind\": \"body\", \"count\": -1, \"path\": \"/resources/list/\", \"file\": \"$W/hostile.json\"}"
want=$(printf '%s\n' "$M" dup.onnx huge.onnx "$N255" | sort | tr '\n' ' ')
listing() { ls "$W/mnt" | sort | tr '\n' ' '; }
check "a hostile catalog: the mount shows only the acceptable entries" \
	wait_for 15 eval '[ "$(listing)" = "$want" ]'
[ "$(listing)" = "$want" ] || echo "# got: $(listing | cut -c1-300)"
for n in "a/b" "/abs" "../../etc/passwd" ".." "nnnnnnnnnnnnnnnnnnnn"; do
	check "  the refusal of \"${n:0:20}\" is logged" grep -qF "refused the name \"$n" "$W/mnt.log"
done
for m in "neg.onnx has a malformed size" "negbig.onnx has a malformed size" \
	"fmt.onnx has an unknown format" "sha.onnx has a malformed sha256" "has no name; ignored"; do
	check "  \"$m\" is logged" grep -qF "$m" "$W/mnt.log"
done
check "  a 10 KiB name is cut short in the log" \
	test "$(awk '{ if (length($0) > m) m = length($0) } END { print m + 0 }' "$W/mnt.log")" -lt 1024
check "  the duplicate is logged" grep -q 'duplicate name "dup.onnx"' "$W/mnt.log"
check_eq "  the first duplicate wins" "$(stat -c %s "$W/mnt/dup.onnx")" 10
check_eq "  a 255-byte name is shown" "$(stat -c %s "$W/mnt/$N255")" 7
check_eq "  a huge size is shown as such" "$(stat -c %s "$W/mnt/huge.onnx")" 9223372036854775807
out=$("$PY" "$AZ_TOP/tests/tools/readcmp.py" "$W/$M" "$W/mnt/huge.onnx" 0 10)
case ${out%% *} in EIO | ENOENT | EACCES | ETIMEDOUT) ok "  reading it fails cleanly (${out%% *})" ;;
*) not_ok "  reading it fails cleanly, got '$out'" ;; esac
check_eq "the real model still reads" "$(sha_of "$W/mnt/$M" 2>&1)" "$(sha_of "$W/$M")"
check "the catalog kept in state_dir holds no refused name" \
	eval '! grep -qE "etc/passwd|neg.onnx|fmt.onnx" "$W/state/catalog.json"'

# A name holding NUL: jansson refuses \u0000 in strings, so the whole
# answer is refused as malformed and the last good list stays. (Each new
# answer is armed ahead of the previous one, so that no refresh in between
# sees the real list.)
"$PY" - "$W/hostile.json" "$W/nul.json" <<'EOF'
import json, sys
doc = json.load(open(sys.argv[1]))
doc["resources"].append({"name": "x\u0000y.onnx", "format": 1, "size": 5})
doc["resources"].append({"name": "new.onnx", "format": 1, "size": 5})
json.dump(doc, open(sys.argv[2], "w"))
EOF
before=$(grep -c "" "$W/mnt.log")
fp_fault API "{\"kind\": \"body\", \"count\": -1, \"first\": true, \"path\": \"/resources/list/\", \"file\": \"$W/nul.json\"}"
check "a catalog with a NUL in a name is refused whole" \
	wait_for 15 eval 'tail -n +$((before + 1)) "$W/mnt.log" | grep -q "resources/list/$F: the answer is not a JSON"'
check_eq "  the last good list stays" "$(listing)" "$want"

# Oversized and deeply nested answers: refused, the last good list stays.
"$PY" -c 'import sys
sys.stdout.write("{\"resources\": [" + ",".join(["{\"name\": \"big%07d.onnx\", \"format\": 1, \"size\": 1}" % i for i in range(1000000)]) + "]}")' >"$W/big.json"
fp_fault API "{\"kind\": \"body\", \"count\": -1, \"first\": true, \"path\": \"/resources/list/\", \"file\": \"$W/big.json\"}"
check "a $(($(stat -c %s "$W/big.json") >> 20)) MiB catalog is refused" \
	wait_for 15 grep -q "catalog: cannot list $F: .*the answer is larger than this call accepts" "$W/mnt.log"
check_eq "  the last good list stays" "$(listing)" "$want"
hwm=$(awk '/^VmHWM:/ {print $2}' "/proc/$pid/status")
check "  and was not buffered: peak RSS ${hwm} KiB under 48 MiB" test "$hwm" -lt $((48 * 1024))
"$PY" -c 'print("{\"resources\": " + "[" * 10000 + "]" * 10000 + "}")' >"$W/deep.json"
fp_fault API "{\"kind\": \"body\", \"count\": -1, \"first\": true, \"path\": \"/resources/list/\", \"file\": \"$W/deep.json\"}"
before=$(grep -c "" "$W/mnt.log")
check "JSON nested 10,000 deep is refused" \
	wait_for 15 eval 'tail -n +$((before + 1)) "$W/mnt.log" | grep -q "resources/list/$F: the answer is not a JSON"'
tail -n +$((before + 1)) "$W/mnt.log" | head -2 | cut -c1-200 | sed 's/^/# /'
check_eq "  the last good list stays" "$(listing)" "$want"
check "  the daemon still runs" kill -0 "$pid"
fp_clear API

# An oversized small part.
fs_publish "$W/pub.conf" 1 "$P" "$W/$P" || bail "publishing failed"
wait_for 15 test -e "$W/mnt/$P" || bail "the new model does not show"
head -c $((3 * 1024 * 1024)) /dev/urandom >"$W/big.small"
fp_fault API "{\"kind\": \"body\", \"count\": -1, \"path\": \"/resources/get/\", \"file\": \"$W/big.small\", \"type\": \"application/octet-stream\"}"
out=$("$PY" "$AZ_TOP/tests/tools/readcmp.py" "$W/$P" "$W/mnt/$P" 0 4096)
fp_clear API
case ${out%% *} in EIO | EACCES) ok "a 3 MiB small part: the open fails cleanly (${out%% *})" ;;
*) not_ok "a 3 MiB small part: the open fails cleanly, got '$out'" ;; esac
check "  the log says why" grep -q "$P: cannot get its small part" "$W/mnt.log"
check_eq "  with the API sane again, it reads" "$(sha_of "$W/mnt/$P" 2>&1)" "$(sha_of "$W/$P")"

fs_umount "$W/mnt" "$pid"
fs_no_leftovers
done_testing
