#!/usr/bin/env bash
# 11-publish-hashes: the format-1 chunk hashes (docs/trust.md section 4) that
# azaionctl publish registers with the small part. On both CDNs (nginx, S3)
# the list the API holds equals an independent computation (Python's
# hashlib, tests/tools/azformat.py) over the big part as curl downloads it,
# with the right number of chunks for big parts just under, at and just over
# 1 MiB and of several MiB; a republish replaces the list; a format-2
# publish drops it; --out writes <name>.hashes; and a refused registration
# fails the publish with one clear line and leaves no small part behind.
. "$(dirname "$0")/../lib.sh"
need_stack
need curl /usr/bin/python3

work=$(mktemp -d /tmp/az-hashes.XXXXXX)
trap 'curl -fsS --cacert "$STACK_CA" -d "{\"count\": 0}" "$API_URL/_admin/fault" >/dev/null 2>&1; rm -rf "$work"' EXIT
azf() { /usr/bin/python3 "$AZ_TOP/tests/tools/azformat.py" "$@"; }
ctl() { "$AZ_BUILD/azaionctl" "$@"; }
hw="CPU: hashes-test. GPU: none. Memory: 1 kB. DriveSerial: P11"
tag=$$

umask 077
printf 'email = %s\npassword = %s\n' "$API_EMAIL" "$API_PASSWORD" >"$work/credentials"
common="api_url = $API_URL
ca_file = $STACK_CA
credentials = $work/credentials
hardware_id = $hw
tpm = off
state_dir = $work/state"
printf '%s\ncdn_url = %s\n' "$common" "$NGINX_URL" >"$work/nginx.conf"
# No cdn_url: the CDN and its uploader keys come from cdn.yaml (S3).
printf '%s\n' "$common" >"$work/s3.conf"
umask 022

token=$(curl -fsS --cacert "$STACK_CA" -H 'Content-Type: application/json' \
	-d "{\"email\":\"$API_EMAIL\",\"password\":\"$API_PASSWORD\"}" "$API_URL/login" |
	/usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
[ -n "$token" ] || bail "cannot log in to the emulator"

# fetch_big CDN NAME OUT: the big part back from the CDN with curl.
fetch_big() {
	if [ "$1" = nginx ]; then
		curl -fsS --cacert "$STACK_CA" -o "$3" "$NGINX_URL/models/$2.big"
	else
		curl -fsS --cacert "$STACK_CA" --aws-sigv4 "aws:amz:$S3_REGION:s3" \
			--user "$S3_ACCESS_KEY:$S3_SECRET_KEY" -H 'x-amz-content-sha256: UNSIGNED-PAYLOAD' \
			-o "$3" "$S3_URL/models/$2.big"
	fi
}
# api_hashes NAME OUT: the registered list; fails on any status but 200.
api_hashes() {
	curl -fsS --cacert "$STACK_CA" -H "Authorization: Bearer $token" -o "$2" \
		"$API_URL/resources/hashes/models/$1"
}
# api_status PATH: the HTTP status of an authenticated GET.
api_status() {
	curl -sS --cacert "$STACK_CA" -H "Authorization: Bearer $token" -o /dev/null \
		-w '%{http_code}' "$API_URL$1"
}
# small_status NAME: the status of resources/get of NAME.small.
small_status() {
	/usr/bin/python3 -c 'import json,sys; print(json.dumps({"password":sys.argv[1],"hardware":sys.argv[2],"fileName":sys.argv[3]}))' \
		"$API_PASSWORD" "$hw" "$1.small" >"$work/req.json"
	curl -sS --cacert "$STACK_CA" -H "Authorization: Bearer $token" \
		-H 'Content-Type: application/json' -d @"$work/req.json" -o /dev/null \
		-w '%{http_code}' "$API_URL/resources/get/models"
}
# same_list LIST BIG COUNT: LIST equals azformat's list over BIG and has COUNT entries.
same_list() {
	azf f1-hashes --in "$2" >"$work/want.json" &&
		/usr/bin/python3 - "$1" "$work/want.json" "$3" <<'EOF'
import json, sys
got, want = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
assert got == want, "the lists differ: %d vs %d entries" % (len(got.get("sha256", [])), len(want["sha256"]))
assert got["chunk_size"] == 1048576 and len(got["sha256"]) == int(sys.argv[3]), got["chunk_size"]
EOF
}

# Plaintext sizes for big parts of known sizes: E = 16 + 16 * (P / 16 + 1)
# and, from 10 KiB of E up, the small part is 3072 bytes, so P = B + 3040
# gives a big part of B bytes (B a multiple of 16, as every big part here
# is). A 0-byte model still has a 23-byte big part. "P big chunks":
cases="0 23 1
1051600 1048560 1
1051616 1048576 1
1051632 1048592 2
3145733 3142688 3
6303801 6300752 7"
mkdir -p "$work/plain"
while read -r p _ _; do head -c "$p" /dev/urandom >"$work/plain/m$p"; done <<<"$cases"

# ---- the registered list equals an independent computation -----------------
for cdn in nginx s3; do
	while read -r p b n; do
		name=p11-$cdn-$p-$tag.bin
		if ! ctl -c "$work/$cdn.conf" publish --format 1 --name "$name" "$work/plain/m$p" \
			>/dev/null 2>"$work/err"; then
			not_ok "publish $name to $cdn: $(head -c 300 "$work/err")"
			continue
		fi
		if ! fetch_big "$cdn" "$name" "$work/big" || ! api_hashes "$name" "$work/list.json"; then
			not_ok "$name: no big part on $cdn or no list at the API"
			continue
		fi
		if [ "$(stat -c %s "$work/big")" != "$b" ]; then
			not_ok "$name: the big part is $(stat -c %s "$work/big") bytes, not $b"
			continue
		fi
		check "$cdn, $p-byte model, $b-byte big part: the API's list equals hashlib over the CDN's bytes, $n chunk(s)" \
			same_list "$work/list.json" "$work/big" "$n"
	done <<<"$cases"
done

# ---- a republish replaces the list -------------------------------------------
name=p11-again-$tag.bin
ctl -c "$work/nginx.conf" publish --format 1 --name "$name" "$work/plain/m3145733" >/dev/null &&
	api_hashes "$name" "$work/first.json"
ctl -c "$work/nginx.conf" publish --format 1 --name "$name" "$work/plain/m3145733" >/dev/null &&
	api_hashes "$name" "$work/second.json" && fetch_big nginx "$name" "$work/big"
check "republishing the same model (a new IV) replaces the list with the new big part's" \
	same_list "$work/second.json" "$work/big" 3
check "the replaced list differs from the first" \
	test -s "$work/first.json" -a "$(cat "$work/first.json" 2>/dev/null)" != "$(cat "$work/second.json" 2>/dev/null)"
ctl -c "$work/nginx.conf" publish --format 1 --name "$name" "$work/plain/m1051632" >/dev/null &&
	api_hashes "$name" "$work/third.json" && fetch_big nginx "$name" "$work/big"
check "republishing a smaller model shrinks the list to its 2 chunks" \
	same_list "$work/third.json" "$work/big" 2
ctl -c "$work/nginx.conf" publish --format 2 --name "$name" "$work/plain/m1051632" >/dev/null
check_eq "publishing the name as format 2 drops its format-1 list" \
	"$(api_status "/resources/hashes/models/$name")" 404

# ---- --out writes <name>.hashes ------------------------------------------------
mkdir -p "$work/out"
ctl -o tpm=off publish --format 1 --name local.bin --out "$work/out" "$work/plain/m6303801" >/dev/null
check "--out: local.bin.hashes equals hashlib over local.bin.big, 7 chunks" \
	same_list "$work/out/local.bin.hashes" "$work/out/local.bin.big" 7
check_eq "--out: the .hashes file is readable by all, like the .big" \
	"$(stat -c %a "$work/out/local.bin.hashes" 2>/dev/null)" 644
ctl -o tpm=off publish --format 2 --name local2.bin --out "$work/out" "$work/plain/m0" >/dev/null
check "--out, format 2: no .hashes file (GCM tags check every chunk)" \
	test -f "$work/out/local2.bin.big" -a ! -e "$work/out/local2.bin.hashes"

# ---- a refused registration fails the publish ----------------------------------
for status in 500 422; do
	name=p11-fail-$status-$tag.bin
	curl -fsS --cacert "$STACK_CA" \
		-d "{\"status\": $status, \"count\": 100, \"path\": \"/resources/hashes/\"}" \
		"$API_URL/_admin/fault" >/dev/null || bail "cannot set a fault in the emulator"
	ctl -c "$work/nginx.conf" publish --format 1 --name "$name" "$work/plain/m3145733" \
		>"$work/out.txt" 2>"$work/err"
	rc=$?
	curl -fsS --cacert "$STACK_CA" -d '{"count": 0}' "$API_URL/_admin/fault" >/dev/null
	if [ $rc -ne 0 ] && grep -q "registering the chunk hashes with the API failed" "$work/err" &&
		grep -q "publish it again" "$work/err" && [ "$(wc -l <"$work/err")" -eq 1 ] &&
		[ ! -s "$work/out.txt" ]; then
		ok "API answering $status to the list: publish exits $rc, one line: '$(cat "$work/err")'"
	else
		not_ok "API answering $status to the list: exit $rc, stdout '$(head -c 200 "$work/out.txt")', stderr '$(head -c 400 "$work/err")'"
	fi
	check_eq "after the refused list ($status), no small part was uploaded" "$(small_status "$name")" 404
	check_eq "after the refused list ($status), the API holds no list" \
		"$(api_status "/resources/hashes/models/$name")" 404
	curl -fsS --cacert "$STACK_CA" -H "Authorization: Bearer $token" \
		"$API_URL/resources/list/models" >"$work/catalog.json"
	check "after the refused list ($status), the catalog does not name the model" \
		/usr/bin/python3 -c 'import json,sys; assert sys.argv[2] not in [e["name"] for e in json.load(open(sys.argv[1]))["resources"]]' \
		"$work/catalog.json" "$name"
done

# An API that stops answering once the big part is up: every call to the
# list's route waits past io_timeout.
printf 'io_timeout = 2\n' >>"$work/nginx.conf"
name=p11-silent-$tag.bin
curl -fsS --cacert "$STACK_CA" \
	-d '{"status": 0, "delay": 4, "count": 100, "path": "/resources/hashes/"}' \
	"$API_URL/_admin/fault" >/dev/null || bail "cannot set a fault in the emulator"
ctl -c "$work/nginx.conf" publish --format 1 --name "$name" "$work/plain/m1051600" \
	>/dev/null 2>"$work/err"
rc=$?
curl -fsS --cacert "$STACK_CA" -d '{"count": 0}' "$API_URL/_admin/fault" >/dev/null
if [ $rc -ne 0 ] && grep -q "registering the chunk hashes with the API failed" "$work/err"; then
	ok "an API that stops answering after the PUT fails the publish: '$(tail -1 "$work/err")'"
else
	not_ok "an API that stops answering after the PUT: exit $rc, stderr '$(head -c 400 "$work/err")'"
fi
check "...although the big part did reach the CDN" fetch_big nginx "$name" "$work/big"
check_eq "...and no small part exists" "$(small_status "$name")" 404

done_testing
