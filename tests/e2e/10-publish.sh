#!/usr/bin/env bash
# 10-publish: azaionctl publish through the stack, read back with curl and
# decrypted with the independent implementation (tests/tools/azformat.py,
# the openssl command line): both formats, both CDNs (nginx, S3), a local
# folder; bounded memory on a multi-GiB model; one clear line for each bad
# input; azaionctl hw.
. "$(dirname "$0")/../lib.sh"
need_stack
need curl openssl sha256sum /usr/bin/time /usr/bin/python3

work=$(mktemp -d /tmp/az-publish.XXXXXX)
trap 'rm -rf "$work"' EXIT
azf() { /usr/bin/python3 "$AZ_TOP/tests/tools/azformat.py" "$@"; }
ctl() { "$AZ_BUILD/azaionctl" "$@"; }
sha() { sha256sum <"$1" | cut -d' ' -f1; }
hw="CPU: publish-test. GPU: none. Memory: 1 kB. DriveSerial: P10"

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

# A device key of our own, recorded through the emulator's test control (a
# software key cannot enrol through the API), so the API wraps format-2 keys to it.
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$work/dev.key" 2>/dev/null
openssl pkey -in "$work/dev.key" -pubout -out "$work/dev.pub"
device_id=$(/usr/bin/python3 - "$work/dev.pub" <<EOF | curl -fsS --cacert "$STACK_CA" \
	-H 'Content-Type: application/json' -d @- \
	"$ADMIN_URL/devices" | /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["device_id"])'
import json, sys
print(json.dumps({"name": "publish-test", "hardware": "$hw", "public_key": open(sys.argv[1]).read()}))
EOF
)
[ -n "$device_id" ] || bail "cannot enrol a test device"

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

# decrypt_remote FORMAT NAME BIG OUT: the small part or key from the API,
# then the independent tools.
decrypt_remote() {
	local fmt=$1 name=$2 big=$3 out=$4 d=$work/d.$2
	mkdir -p "$d"
	if [ "$fmt" = 1 ]; then
		/usr/bin/python3 -c 'import json,sys; print(json.dumps({"password":sys.argv[1],"hardware":sys.argv[2],"fileName":sys.argv[3]}))' \
			"$API_PASSWORD" "$hw" "$name.small" >"$d/req.json"
		curl -fsS --cacert "$STACK_CA" -H "Authorization: Bearer $token" \
			-H 'Content-Type: application/json' -d @"$d/req.json" \
			-o "$d/wrapped" "$API_URL/resources/get/models" || return 1
		azf f1-unwrap --email "$API_EMAIL" --password "$API_PASSWORD" --hardware "$hw" \
			--in "$d/wrapped" --out "$d/small" &&
			azf f1-join --small "$d/small" --big "$big" --out "$d/E" &&
			azf f1-decrypt --secret='-#%@AzaionKey@%#---234sdfklgvhjbnn' --in "$d/E" --out "$out"
	else
		curl -fsS --cacert "$STACK_CA" -H "Authorization: Bearer $token" \
			-H "X-Device-Id: $device_id" -o "$d/small.json" \
			"$API_URL/resources/key/models/$name" || return 1
		/usr/bin/python3 - "$d/small.json" "$big" "$d/wrapped" <<'EOF' || return 1
import base64, json, sys
doc = json.load(open(sys.argv[1]))
header = open(sys.argv[2], "rb").read(64)
assert doc["format"] == 2 and doc["alg"] == "rsa-oaep-sha256", doc
assert doc["file_id"] == header[16:32].hex(), "file_id differs from the header's"
open(sys.argv[3], "wb").write(base64.b64decode(doc["wrapped_key"]))
EOF
		openssl pkeyutl -decrypt -inkey "$work/dev.key" -pkeyopt rsa_padding_mode:oaep \
			-pkeyopt rsa_oaep_md:sha256 -pkeyopt rsa_mgf1_md:sha256 \
			-in "$d/wrapped" -out "$d/K" || return 1
		azf f2-decrypt --key-hex "$(od -An -tx1 -v "$d/K" | tr -d ' \n')" --in "$big" --out "$out"
	fi
}

mkdir -p "$work/plain"
sizes="0 17 70001 3145733"
for s in $sizes; do head -c "$s" /dev/urandom >"$work/plain/m$s"; done

# ---- publishing to the CDN and the API, read back independently -----------
for cdn in nginx s3; do
	for fmt in 1 2; do
		for s in $sizes; do
			name=p10-$cdn-f$fmt-$s.bin
			if ! ctl -c "$work/$cdn.conf" publish --format "$fmt" --name "$name" \
				"$work/plain/m$s" >"$work/out" 2>"$work/err"; then
				not_ok "publish $name to $cdn: $(head -c 300 "$work/err")"
				continue
			fi
			if ! fetch_big "$cdn" "$name" "$work/big.$name"; then
				not_ok "$name: big part not on the $cdn CDN"
				continue
			fi
			if decrypt_remote "$fmt" "$name" "$work/big.$name" "$work/back.$name" 2>"$work/err"; then
				check_eq "format $fmt, $s bytes via $cdn: published, read back and decrypted independently" \
					"$(sha "$work/back.$name")" "$(sha "$work/plain/m$s")"
			else
				not_ok "$name: independent decryption failed: $(head -c 300 "$work/err")"
			fi
		done
	done
done

# The catalog lists what was published, with plaintext sizes and digests.
curl -fsS --cacert "$STACK_CA" -H "Authorization: Bearer $token" \
	"$API_URL/resources/list/models" >"$work/catalog.json"
check "the catalog lists every published model with its size and sha256" \
	/usr/bin/python3 - "$work/catalog.json" "$work/plain" <<'EOF'
import hashlib, json, os, sys
entries = {e["name"]: e for e in json.load(open(sys.argv[1]))["resources"]}
for cdn in ("nginx", "s3"):
    for fmt in (1, 2):
        for s in (0, 17, 70001, 3145733):
            e = entries[f"p10-{cdn}-f{fmt}-{s}.bin"]
            digest = hashlib.sha256(open(os.path.join(sys.argv[2], f"m{s}"), "rb").read()).hexdigest()
            assert e["format"] == fmt and e["size"] == s and e["sha256"] == digest, e
EOF

# ---- publishing to a local folder ------------------------------------------
mkdir -p "$work/out1" "$work/out2"
s=3145733
ctl -o tpm=off publish --format 1 --name local.bin --out "$work/out1" "$work/plain/m$s" >/dev/null &&
	azf f1-join --small "$work/out1/local.bin.small" --big "$work/out1/local.bin.big" --out "$work/E" &&
	azf f1-decrypt --secret='-#%@AzaionKey@%#---234sdfklgvhjbnn' --in "$work/E" --out "$work/back1"
check_eq "format 1 to a folder: small and big parts decrypt independently" \
	"$(sha "$work/back1" 2>/dev/null)" "$(sha "$work/plain/m$s")"
ctl -o tpm=off publish --format 2 --name local.bin --out "$work/out2" "$work/plain/m$s" >/dev/null
key_hex=$(/usr/bin/python3 -c 'import base64,json,sys; print(base64.b64decode(json.load(open(sys.argv[1]))["key"]).hex())' \
	"$work/out2/local.bin.key" 2>/dev/null)
azf f2-decrypt --key-hex "$key_hex" --in "$work/out2/local.bin.big" --out "$work/back2"
check_eq "format 2 to a folder: big part decrypts with the key file's key" \
	"$(sha "$work/back2" 2>/dev/null)" "$(sha "$work/plain/m$s")"
check_eq "format 2 key file is private (mode 600)" "$(stat -c %a "$work/out2/local.bin.key")" 600
printf 'my-secret' >"$work/rsecret"
chmod 600 "$work/rsecret"
ctl -o tpm=off -o "legacy_resource_secret_file=$work/rsecret" publish --format 1 --name sec.bin \
	--out "$work/out1" "$work/plain/m70001" >/dev/null &&
	azf f1-join --small "$work/out1/sec.bin.small" --big "$work/out1/sec.bin.big" --out "$work/E" &&
	azf f1-decrypt --secret=my-secret --in "$work/E" --out "$work/back3"
check_eq "format 1 honours legacy_resource_secret_file" \
	"$(sha "$work/back3" 2>/dev/null)" "$(sha "$work/plain/m70001")"

# ---- bounded memory on a multi-GiB model -------------------------------------
truncate -s 2G "$work/huge.bin"
# Under AddressSanitizer freed blocks sit in its quarantine and shadow memory
# counts too, so the bound there is looser; it stays far below the model.
rss_max_mb=40
[ -n "${ASAN_OPTIONS:-}" ] && rss_max_mb=160
for fmt in 1 2; do
	rm -rf "$work/outh"
	mkdir "$work/outh"
	/usr/bin/time -f %M -o "$work/rss" "$AZ_BUILD/azaionctl" -o tpm=off publish --format $fmt \
		--out "$work/outh" "$work/huge.bin" >/dev/null 2>"$work/err"
	rss_kb=$(tail -1 "$work/rss")
	big=$(stat -c %s "$work/outh/huge.bin.big" 2>/dev/null || echo 0)
	check "format $fmt: a 2 GiB model publishes with peak RSS ${rss_kb} kB (< $rss_max_mb MiB), big part $big bytes" \
		test "$rss_kb" -lt $((rss_max_mb * 1024)) -a "$big" -gt $((2 * 1024 * 1024 * 1024 - 4096))
done
rm -rf "$work/outh" "$work/huge.bin"

# ---- bad input: one clear line, non-zero exit -------------------------------
# bad_input WHAT WANT CMD...: CMD fails with exactly one stderr line holding WANT.
bad_input() {
	local what=$1 want=$2 rc
	shift 2
	"$@" >/dev/null 2>"$work/err"
	rc=$?
	if [ $rc -ne 0 ] && [ "$(wc -l <"$work/err")" -eq 1 ] && grep -qF -- "$want" "$work/err"; then
		ok "bad input, $what: exit $rc, '$(cat "$work/err")'"
	else
		not_ok "bad input, $what: exit $rc, stderr: $(head -c 400 "$work/err")"
	fi
}
bad_input "missing model file" "/nonexistent/model.onnx" \
	ctl -o tpm=off publish --out "$work/out1" /nonexistent/model.onnx
bad_input "unreadable key file" "/nonexistent/secret" \
	ctl -o tpm=off -o legacy_resource_secret_file=/nonexistent/secret publish --format 1 \
	--out "$work/out1" "$work/plain/m17"
chmod 644 "$work/rsecret"
bad_input "key file readable by others" "chmod 600" \
	ctl -o tpm=off -o "legacy_resource_secret_file=$work/rsecret" publish --format 1 \
	--out "$work/out1" "$work/plain/m17"
bad_input "wrong format number" "--format" \
	ctl -o tpm=off publish --format 3 --out "$work/out1" "$work/plain/m17"
bad_input "name with a slash" "a/b" \
	ctl -o tpm=off publish --name a/b --out "$work/out1" "$work/plain/m17"
bad_input "output folder missing" "--out" \
	ctl -o tpm=off publish --out /nonexistent/dir "$work/plain/m17"
bad_input "unknown configuration key" "nope" ctl -o nope=1 hw
printf 'email = %s\npassword = wrong\n' "$API_EMAIL" >"$work/badcreds"
chmod 600 "$work/badcreds"
bad_input "wrong password" "login" \
	ctl -c "$work/nginx.conf" -o "credentials=$work/badcreds" publish "$work/plain/m17"

# ---- azaionctl hw -------------------------------------------------------------
ctl -o tpm=off hw >"$work/hw" 2>&1
derived=$(sed -n 's/^hardware: //p' "$work/hw")
hash=$(sed -n 's/^hw_hash: *//p' "$work/hw")
want=$(azf keys --hardware "$derived" | sed -n 's/^hw_hash[:= ]*//p')
check "hw prints a derived hardware string in the documented shape" \
	grep -qE '^hardware: CPU: .+\. GPU: .+\. Memory: .+\. DriveSerial: .+$' "$work/hw"
check_eq "hw_hash equals the independent derivation" "$hash" "$want"
check_eq "hardware_id overrides the derived string" \
	"$(ctl -o tpm=off -o "hardware_id=$hw" hw | sed -n 's/^hardware: //p')" "$hw"

done_testing
