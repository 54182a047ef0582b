#!/usr/bin/env bash
# 01-stack: the local stack itself, checked with independent tools (curl,
# openssl, Python) before anything of the project runs against it: the
# Resource API emulator's calls and test controls, nginx as a CDN, the S3
# server's signature checks, swtpm and dockerd.
. "$(dirname "$0")/../lib.sh"
need curl openssl tpm2_getrandom /usr/bin/python3 /usr/bin/docker
need_stack

PY=/usr/bin/python3
TOOLS=$AZ_TOP/tests/tools
work=$(mktemp -d /tmp/stack-e2e.XXXXXX)
cleanup() {
	curl -s -o /dev/null --cacert "$STACK_CA" -X POST "$ADMIN_URL/reset" || true
	rm -rf "$work"
}
trap cleanup EXIT

c() { curl -s --max-time 20 --cacert "$STACK_CA" "$@"; }
code() { c -o /dev/null -w '%{http_code}' "$@"; }
# fetch_code FILE CURL-ARGS...: the body to FILE, the status to stdout.
fetch_code() {
	local out=$1
	shift
	c -o "$out" -w '%{http_code}' "$@"
}
# json_get FIELD: a field of the JSON document on stdin.
json_get() {
	"$PY" -c 'import json, sys; print(json.load(sys.stdin).get(sys.argv[1], ""))' "$1"
}
login_body() { printf '{"email":"%s","password":"%s"}' "$API_EMAIL" "$API_PASSWORD"; }
token() { c -X POST "$API_URL/login" -d "$(login_body)" | json_get token; }
admin() {
	local body=${2:-"{}"}
	c -X POST "$ADMIN_URL/$1" -H "Content-Type: application/json" -d "$body"
}
counter() {
	c "$ADMIN_URL/counters" |
		"$PY" -c 'import json, sys; print(json.load(sys.stdin)["calls"].get(sys.argv[1], 0))' "$1"
}

admin reset >/dev/null

# ---- login and tokens
tok=$(token)
check "login answers a JWT" test -n "$tok"
exp_ok=$("$PY" -c '
import base64, json, sys, time
p = sys.argv[1].split(".")[1]
c = json.loads(base64.urlsafe_b64decode(p + "=" * (-len(p) % 4)))
print("yes" if c["exp"] > time.time() + 60 else "no")' "$tok")
check_eq "the JWT has an exp claim in the future" "$exp_ok" yes
bad_login=$(printf '{"email":"%s","password":"nope"}' "$API_EMAIL")
check_eq "wrong password: 401" "$(code -X POST "$API_URL/login" -d "$bad_login")" 401
check_eq "malformed JSON: 422" "$(code -X POST "$API_URL/login" -d '{"email":')" 422
detail=$(c -X POST "$API_URL/login" -d '{}' | json_get detail)
check "a refusal carries detail" test -n "$detail"
n_login=$(counter "POST /login")
token >/dev/null
check_eq "the login counter counts" "$(counter "POST /login")" $((n_login + 1))

admin token_ttl '{"seconds": 1}' >/dev/null
short=$(token)
frag=$API_URL/binary-split/key-fragment
frag_code() { code -H "Authorization: Bearer $short" "$frag"; }
expired() { [ "$(frag_code)" = 401 ]; }
check "a token past its exp (token_ttl 1 s) gets 401" wait_for 5 expired
admin token_ttl '{"seconds": 3600}' >/dev/null
# The first character of the signature carries six whole bits: change it.
sig_part=${tok##*.}
case $sig_part in A*) forged=B ;; *) forged=A ;; esac
forged=${tok%.*}.$forged${sig_part#?}
check_eq "a forged token gets 401" "$(code -H "Authorization: Bearer $forged" "$frag")" 401
check_eq "no token: 401" "$(code "$frag")" 401

auth=(-H "Authorization: Bearer $tok")

# ---- key fragment
c "${auth[@]}" "$frag" -o "$work/frag"
check "the key fragment is the one in KEY_FRAGMENT_FILE" \
	cmp -s "$work/frag" "$KEY_FRAGMENT_FILE"
check "the key fragment is not empty" test -s "$work/frag"

# ---- format 1: upload a small part, fetch it back under api_key
hw="CPU: Test CPU @ 2.0GHz. GPU: Test GPU. Memory: 8000. DriveSerial: SN123"
head -c 2345 /dev/urandom >"$work/small"
st=$(code "${auth[@]}" -F "data=@$work/small;filename=stacktest.onnx.small" -F size=7777 \
	-F sha256="$(printf '%064d' 0 | tr 0 a)" -F big_size=5432 "$API_URL/resources/models")
check_eq "multipart upload of a small part: 200" "$st" 200
getbody() {
	printf '{"password":"%s","hardware":"%s","fileName":"%s"}' "${2:-$API_PASSWORD}" "$hw" "$1"
}
get=$API_URL/resources/get
c "${auth[@]}" -X POST "$get/models" -d "$(getbody stacktest.onnx.small)" -o "$work/answer"
decrypt() {
	"$PY" - "$API_EMAIL" "$API_PASSWORD" "$hw" "$1" "$2" <<EOF
import sys
sys.path.insert(0, "$TOOLS")
from azformat import api_key, cbc_decrypt, hw_hash
email, password, hw, src, dst = sys.argv[1:]
key = api_key(email, password, hw_hash(hw))
open(dst, "wb").write(cbc_decrypt(key, open(src, "rb").read()))
EOF
}
decrypt "$work/answer" "$work/answer.plain"
check "the fetched small part decrypts with api_key to the bytes uploaded" \
	cmp -s "$work/answer.plain" "$work/small"
check "it is not sent in the clear" test "$(cmp -s "$work/answer" "$work/small"; echo $?)" != 0
st=$(code "${auth[@]}" -X POST "$get/models" -d "$(getbody stacktest.onnx.small wrong)")
check_eq "wrong password in the body: 403" "$st" 403
st=$(code "${auth[@]}" -X POST "$get/models" -d "$(getbody nothing.small)")
check_eq "unknown file: 404" "$st" 404
st=$(code "${auth[@]}" -F "other=@$work/small;filename=x.small" "$API_URL/resources/models")
check_eq "upload without the data field: 422" "$st" 422

c "${auth[@]}" -X POST "$get/" -d "$(getbody cdn.yaml)" -o "$work/cdn.enc"
decrypt "$work/cdn.enc" "$work/cdn.yaml"
check "cdn.yaml from the empty folder decrypts to YAML with host" \
	grep -q "^host: \"${S3_URL:-$NGINX_URL}\"" "$work/cdn.yaml"
check "cdn.yaml names the downloader key" \
	grep -q "^downloader_access_key: \"${S3_ACCESS_KEY:-}\"" "$work/cdn.yaml"

# ---- devices and format 2
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$work/dk.pem" 2>/dev/null
openssl pkey -in "$work/dk.pem" -pubout -out "$work/dk.pub"
devbody=$("$PY" -c '
import json, sys
print(json.dumps({"name": "stacktest", "hardware": sys.argv[1],
                  "public_key": open(sys.argv[2]).read()}))' "$hw" "$work/dk.pub")
st=$(code "${auth[@]}" -X POST "$API_URL/devices" -d "$devbody")
check_eq "a bare public key is not enrolled (docs/trust.md 1): 403" "$st" 403
# The emulator's test control records a software key, for the wrap checks.
admin devices "$devbody" >"$work/dev1"
dev1=$(json_get device_id <"$work/dev1")
dev2=$(admin devices "$devbody" | json_get device_id)
check "the test control answers a device_id" test -n "$dev1"
check_eq "the same public key gets the same device_id" "$dev2" "$dev1"

head -c 32 /dev/urandom >"$work/K"
fid=$(openssl rand -hex 16)
regbody=$(printf '{"key":"%s","size":1000,"sha256":"%s","file_id":"%s","big_size":1100}' \
	"$(base64 -w0 "$work/K")" "$(printf '%064d' 0 | tr 0 b)" "$fid")
keys=$API_URL/resources/key/models
check_eq "key registration: 201" "$(code "${auth[@]}" -X POST "$keys/stacktest2.onnx" -d "$regbody")" 201
c "${auth[@]}" -H "X-Device-Id: $dev1" "$keys/stacktest2.onnx" -o "$work/small2.json"
json_get wrapped_key <"$work/small2.json" | base64 -d >"$work/wrapped"
openssl pkeyutl -decrypt -inkey "$work/dk.pem" -in "$work/wrapped" -out "$work/K.out" \
	-pkeyopt rsa_padding_mode:oaep -pkeyopt rsa_oaep_md:sha256 \
	-pkeyopt rsa_mgf1_md:sha256 2>/dev/null
check "the wrapped key unwraps with the device's private key to K" \
	cmp -s "$work/K" "$work/K.out"
check_eq "the small part names format 2" "$(json_get format <"$work/small2.json")" 2
check_eq "the small part names the algorithm" "$(json_get alg <"$work/small2.json")" rsa-oaep-sha256
check_eq "the small part carries the file_id" "$(json_get file_id <"$work/small2.json")" "$fid"
check_eq "the small part names the device" "$(json_get device_id <"$work/small2.json")" "$dev1"
check_eq "unknown device: 404" \
	"$(code "${auth[@]}" -H "X-Device-Id: dev-none" "$keys/stacktest2.onnx")" 404
check_eq "format-1 resource asked as format 2: 404" \
	"$(code "${auth[@]}" -H "X-Device-Id: $dev1" "$keys/stacktest.onnx")" 404
check_eq "key not 32 bytes: 422" "$(code "${auth[@]}" -X POST "$keys/bad" \
	-d '{"key":"AAAA","size":1,"sha256":"00"}')" 422
admin "devices/$dev1/revoke" >/dev/null
check_eq "revoked device: 404" \
	"$(code "${auth[@]}" -H "X-Device-Id: $dev1" "$keys/stacktest2.onnx")" 404
admin "devices/$dev1/restore" >/dev/null
check_eq "restored device: 200" \
	"$(code "${auth[@]}" -H "X-Device-Id: $dev1" "$keys/stacktest2.onnx")" 200

# ---- catalog
c "${auth[@]}" "$API_URL/resources/list/models" -o "$work/list.json"
cat_check=$("$PY" - "$work/list.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))["resources"]
names = [e["name"] for e in r]
byname = {e["name"]: e for e in r}
a, b = byname.get("stacktest.onnx"), byname.get("stacktest2.onnx")
ok = (names == sorted(names) and a and b and a["format"] == 1 and a["size"] == 7777
      and a["big_size"] == 5432 and b["format"] == 2 and b["size"] == 1000
      and b["sha256"] == "b" * 64 and "updated" in a and "updated" in b)
print("yes" if ok else "no: %r" % r)
EOF
)
check_eq "the catalog lists both formats, sorted, with their fields" "$cat_check" yes
admin catalog '{"enabled": false}' >/dev/null
list=$API_URL/resources/list/models
check_eq "catalog switched off: 404" "$(code "${auth[@]}" "$list")" 404
admin catalog '{"enabled": true}' >/dev/null
check_eq "catalog on again: 200" "$(code "${auth[@]}" "$list")" 200

# ---- no secrets in the emulator's logs
# absent STRING FILE...: no file holds STRING.
absent() {
	local what=$1
	shift
	! grep -rqF -- "$what" "$@"
}
check "the request log exists" test -s "$API_LOG"
check "no password in the logs" absent "$API_PASSWORD" "$API_LOG" "$STACK_DIR/logs"
check "no token in the logs" absent "${tok##*.}" "$API_LOG" "$STACK_DIR/logs"

# ---- nginx: PUT, Range, access log
head -c 100000 /dev/urandom >"$work/big"
tail -c +1001 "$work/big" | head -c 4000 >"$work/big.1000-4999"
cdn_obj=$NGINX_URL/models/stacktest.onnx.big
st=$(code -T "$work/big" "$cdn_obj")
check "nginx PUT: 201 or 204 (got $st)" test "$st" = 201 -o "$st" = 204
check "the PUT object is under CDN_ROOT" cmp -s "$work/big" "$CDN_ROOT/models/stacktest.onnx.big"
check_eq "nginx Range GET: 206" "$(fetch_code "$work/range" -r 1000-4999 "$cdn_obj")" 206
check "the range holds the exact bytes" cmp -s "$work/range" "$work/big.1000-4999"
check "the access log shows the range and the bytes sent" \
	grep -qE '^GET /models/stacktest.onnx.big 206 "bytes=1000-4999" 4000 ' "$NGINX_LOG"
ka=$(c -r 0-9 -o /dev/null -o /dev/null -w '%{num_connects}\n' "$cdn_obj" "$cdn_obj" | tail -1)
check_eq "nginx keeps the connection alive" "$ka" 0

# ---- s3
sig=(--aws-sigv4 "aws:amz:$S3_REGION:s3" -H "x-amz-content-sha256: UNSIGNED-PAYLOAD")
up=(--user "$S3_UPLOADER_ACCESS_KEY:$S3_UPLOADER_SECRET_KEY")
down=(--user "$S3_ACCESS_KEY:$S3_SECRET_KEY")
obj=$S3_URL/$S3_BUCKET/stacktest.onnx.big
st=$(code "${sig[@]}" "${up[@]}" -T "$work/big" "$obj")
check_eq "S3 signed PUT with the uploader key: 200" "$st" 200
st=$(fetch_code "$work/s3range" "${sig[@]}" "${down[@]}" -r 1000-4999 "$obj")
check_eq "S3 signed ranged GET with the downloader key: 206" "$st" 206
check "the S3 range holds the exact bytes" cmp -s "$work/s3range" "$work/big.1000-4999"
check_eq "S3 unsigned GET: 403" "$(code "$obj")" 403
st=$(code "${sig[@]}" --user "$S3_ACCESS_KEY:wrong" "$obj")
check_eq "S3 GET signed with a wrong secret: 403" "$st" 403
st=$(code "${sig[@]}" "${down[@]}" -T "$work/big" "$obj")
check_eq "S3 PUT with the downloader key: 403" "$st" 403
st=$(code --aws-sigv4 "aws:amz:$S3_REGION:s3" "${down[@]}" "$obj")
check_eq "S3 GET without x-amz-content-sha256: 400, as S3 answers" "$st" 400

# ---- TPM
hex32() { [[ $1 =~ ^[0-9a-f]{32}$ ]]; }
r=$(TPM2TOOLS_TCTI=$TPM_TCTI tpm2_getrandom --hex 16 2>&1)
check "swtpm answers TPM2_GetRandom" hex32 "$r"
tcti2=$("$AZ_TOP/scripts/stack" tpm2 "$STACK_DIR" e2e)
check "a second TPM starts with its own TCTI" test -n "$tcti2" -a "$tcti2" != "$TPM_TCTI"
r=$(TPM2TOOLS_TCTI=$tcti2 tpm2_getrandom --hex 16 2>&1)
check "the second TPM answers" hex32 "$r"
check_eq "asking again gives the same second TPM" \
	"$("$AZ_TOP/scripts/stack" tpm2 "$STACK_DIR" e2e)" "$tcti2"

# ---- docker
dk() { /usr/bin/docker -H "unix://$DOCKER_SOCK" "$@"; }
check_eq "dockerd answers /_ping" \
	"$(curl -s --max-time 5 --unix-socket "$DOCKER_SOCK" http://docker/_ping)" OK
images=$(dk image ls --format '{{.Repository}}:{{.Tag}}')
check "dockerd lists the busybox image" grep -qx azaion-test/busybox:latest <<<"$images"
check_eq "a container runs" "$(dk run --rm --network none azaion-test/busybox echo hi 2>&1)" hi

done_testing
