#!/usr/bin/env bash
# 41-unlock: F4/F5 into the stack's real dockerd. Two small images, each
# with a random marker file, are made here (docker import), saved with
# docker save and encrypted in format 1 (the key fragment's SHA-256) and
# format 2 (published so that the API holds the key; the big part is the
# archive); removed from dockerd, then unlocked: F5 walks the states to
# ready and lists both images, dockerd's /images/json has them, and a
# second F4 answers ready at once. A wrong key fragment, truncated
# archives of both formats and a dockerd that is not there end in "error"
# with the cause named, while the daemon keeps serving the mount. While
# the unlocks run, a canary scan of every folder of the test and the
# stack (dockerd's data root aside) looks for the markers' plaintext.
. "$(dirname "$0")/../lib.sh"
. "$AZ_TOP/tests/tools/fs-lib.sh"
need cc openssl /usr/bin/docker
fs_init t41

D() { /usr/bin/docker -H "unix://$DOCKER_SOCK" "$@"; }
azf() { "$PY" "$AZ_TOP/tests/tools/azformat.py" "$@"; }
free_port() {
	"$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
PORT=$(free_port)
F=u41$TAG
V=v$(echo "$TAG" | tr 'A-Z' 'a-z')
IMAGES="test/one:$V test/two:$V"
mkdir -p "$W/plain" "$W/arch"
cleanup41() { D rmi -f $IMAGES >/dev/null 2>&1; fs_cleanup; }
trap cleanup41 EXIT

fs_conf "$W/conf" "cdn_url=$NGINX_URL" "folder=$F" "state_dir=$W/state" "cache_dir=$W/cache" \
	"tpm=auto" "tpm_tcti=$TPM_TCTI" "tpm_wait=5" "rest_listen=127.0.0.1:$PORT" "catalog_ttl=1" \
	"images=test/one, test/two" "images_version=$V" "images_archive=$W/arch/images.enc" \
	"docker_socket=$DOCKER_SOCK"
(umask 077 && printf '{"email": "%s", "password": "%s"}' "$API_EMAIL" "$API_PASSWORD" >"$W/creds.json")

# ---- two images with a marker each, saved, encrypted, removed ---------------------
for i in 1 2; do
	mkdir -p "$W/rootfs$i/opt"
	head -c $((8 * 1024 * 1024)) /dev/urandom >"$W/plain/marker$i"
	cp "$W/plain/marker$i" "$W/rootfs$i/opt/marker"
done
tar -C "$W/rootfs1" -c . | D import - "test/one:$V" >/dev/null &&
	tar -C "$W/rootfs2" -c . | D import - "test/two:$V" >/dev/null &&
	D save -o "$W/plain/images.tar" $IMAGES && D rmi $IMAGES >/dev/null ||
	bail "cannot make the test images with dockerd"
rm -rf "$W/rootfs1" "$W/rootfs2"
azf f1-encrypt --key-hex "$(sha256sum <"$KEY_FRAGMENT_FILE" | cut -d' ' -f1)" \
	--in "$W/plain/images.tar" --out "$W/arch/good-f1.enc" || bail "f1-encrypt failed"
azf f1-encrypt --key-hex "$(openssl rand -hex 32)" --in "$W/plain/images.tar" \
	--out "$W/arch/wrong-key.enc" || bail "f1-encrypt failed"
size=$(stat -c %s "$W/arch/good-f1.enc")
head -c $((size / 2 + 7)) "$W/arch/good-f1.enc" >"$W/arch/trunc-f1.enc"

# The daemon logs in at start and enrols the TPM; then the format-2 archive
# is published so that the API wraps its key to this device, and a model for
# the mount's check.
fs_mount "$W/mnt" "$W/conf"
pid=$FS_PID
check "the device is enrolled" wait_for 10 test -s "$W/state/device_id"
fs_publish "$W/conf" 2 images.tar "$W/plain/images.tar" ||
	bail "publishing the format-2 archive failed: $(tail -3 "$W/publish.log")"
curl -fsS --cacert "$STACK_CA" -o "$W/arch/good-f2.big" "$NGINX_URL/$F/images.tar.big" ||
	bail "cannot fetch the format-2 archive from the CDN"
size2=$(stat -c %s "$W/arch/good-f2.big")
head -c $((size2 - 70000)) "$W/arch/good-f2.big" >"$W/arch/trunc-f2.enc"
head -c 300001 /dev/urandom >"$W/model.bin"
fs_publish "$W/conf" 1 model.bin "$W/model.bin" || bail "publishing a model failed"
rm -f "$W/plain/images.tar"
check "the mount lists the model" wait_for 20 test -e "$W/mnt/model.bin"

cc -O2 -o "$W/canary" "$AZ_TOP/tests/tools/canary.c" || bail "cannot build the canary scanner"
# Everything the test and the stack write, dockerd's data root aside; the
# markers themselves are the plaintexts looked for. While an unlock runs,
# the test's folder (but for the archives, read-only inputs) and dockerd's
# exec root are scanned over and over, so that scans start all along it;
# everything, the archives and the stack's folders too, once it is done.
# Of the CDN, this test's folder: the rest holds other tests' models.
scan_paths() {
	local p
	for p in "$W"/* "$STACK_DIR"/* "$STACK_DIR"/docker/* "$CDN_ROOT/$F"; do
		case $p in
		"$W/plain" | "$W/mnt" | "$W/mnt2" | "$STACK_DIR/docker" | "$DOCKER_ROOT") ;;
		"$CDN_ROOT") ;;
		*) echo "$p" ;;
		esac
	done
}
canary() { "$W/canary" "$W/plain/marker1" "$W/plain/marker2" -- "$@" >>"$W/canary.hits" 2>&1; }
canary_loop() {
	local n=0 p paths=()
	for p in "$W"/* "$STACK_DIR/docker/exec"; do
		case $p in "$W/plain" | "$W/mnt" | "$W/mnt2" | "$W/arch") ;; *) paths+=("$p") ;; esac
	done
	while [ ! -e "$W/canary.stop" ]; do
		canary "${paths[@]}"
		[ -e "$W/f4.sent" ] && n=$((n + 1))
	done
	echo "$n" >"$W/canary.count"
}

# The scanner finds a marker's window where there is one.
{ head -c 100 /dev/urandom; tail -c +4097 "$W/plain/marker2" | head -c 48; } >"$W/control"
"$W/canary" "$W/plain/marker1" "$W/plain/marker2" -- "$W/control" >/dev/null 2>&1
check_eq "canary control: 48 bytes of a marker in a file are found" "$?" 1
rm -f "$W/control"

# f4 [PORT]: POST /unlock with the original body; prints "STATUS BODY".
f4() {
	curl -s -w ' %{http_code}' -H 'Content-Type: application/json' -d @"$W/creds.json" \
		"http://127.0.0.1:${1:-$PORT}/unlock"
}
# watch [PORT]: polls F5 until ready or error; prints the states seen, then the last answer.
watch() {
	"$PY" - "${1:-$PORT}" <<'EOF'
import json, sys, time, urllib.request
url = f"http://127.0.0.1:{sys.argv[1]}/unlock/status"
seen, doc, end = [], None, time.time() + 90
while time.time() < end:
    with urllib.request.urlopen(url, timeout=10) as r:
        doc = json.load(r)
    if not seen or seen[-1] != doc["state"]:
        seen.append(doc["state"])
    if doc["state"] in ("ready", "error"):
        break
    time.sleep(0.02)
print(" ".join(seen))
print(json.dumps(doc))
EOF
}
field() { "$PY" -c 'import json, sys; d = json.loads(sys.stdin.read()); v = d[sys.argv[1]]; print(v if not isinstance(v, list) else " ".join(v))' "$1"; }
docker_has() {
	curl -s --unix-socket "$DOCKER_SOCK" http://docker/images/json |
		"$PY" -c 'import json, sys
tags = {t for i in json.load(sys.stdin) for t in (i.get("RepoTags") or [])}
sys.exit(0 if set(sys.argv[1:]) <= tags else 1)' $IMAGES
}
mount_serves() {
	[ "$(sha_of "$W/mnt/model.bin" 2>/dev/null)" = "$(sha_of "$W/model.bin")" ] &&
		[ "$(curl -s "http://127.0.0.1:$PORT/health")" = '{"status":"healthy"}' ]
}

# failing NAME ARCHIVE WORDS...: an unlock that must end in error naming the cause.
failing() {
	local what=$1 out doc err w
	cp "$2" "$W/arch/images.enc"
	shift 2
	out=$(f4)
	check_eq "$what: F4 starts (200 authenticating)" "$out" '{"state":"authenticating"} 200'
	out=$(watch)
	doc=$(echo "$out" | tail -1)
	err=$(echo "$doc" | field error)
	check_eq "$what: F5 ends in error" "$(echo "$doc" | field state)" error
	for w in "$@"; do
		case $err in *"$w"*) ok "$what: the error names the cause ('$w'): $err" ;;
		*) not_ok "$what: the error does not say '$w': $err" ;; esac
	done
	check "$what: the daemon keeps serving the mount and the endpoint" mount_serves
}

# unlocking NAME ARCHIVE: a good unlock, with the canary running meanwhile.
unlocking() {
	local what=$1 out doc seq t0 t1 total
	cp "$2" "$W/arch/images.enc"
	total=$(stat -c %s "$2")
	rm -f "$W/canary.stop" "$W/canary.count" "$W/f4.sent"
	canary_loop &
	local cpid=$!
	touch "$W/f4.sent"
	out=$(f4)
	check_eq "$what: F4 starts (200 authenticating)" "$out" '{"state":"authenticating"} 200'
	out=$(watch)
	touch "$W/canary.stop"
	wait "$cpid"
	mapfile -t paths < <(scan_paths)
	canary "${paths[@]}"
	seq=$(echo "$out" | head -1)
	doc=$(echo "$out" | tail -1)
	echo "# $what: F5 went through: $seq; canary scans meanwhile: $(cat "$W/canary.count")"
	check "$what: F5 walks the states in order to ready ($seq)" "$PY" -c '
import sys
order = ["authenticating", "downloading_key", "decrypting", "loading_images", "ready"]
seen = sys.argv[1].split()
idx = [order.index(s) for s in seen]
sys.exit(0 if seen[-1] == "ready" and idx == sorted(idx) else 1)' "$seq"
	check_eq "$what: F5 at ready lists both images, error null" \
		"$(echo "$doc" | field images)|$(echo "$doc" | field error)" "$IMAGES|None"
	check_eq "$what: bytes_done = bytes_total = the archive's size" \
		"$(echo "$doc" | field bytes_done) $(echo "$doc" | field bytes_total)" "$total $total"
	check "$what: dockerd's /images/json has both images" docker_has
	t0=$(date +%s%N)
	out=$(f4)
	t1=$(date +%s%N)
	check_eq "$what: a second F4 answers ready" "$out" '{"state":"ready"} 200'
	check "$what: ... at once ($(((t1 - t0) / 1000000)) ms)" test $(((t1 - t0) / 1000000)) -lt 2000
	check_eq "$what: canary: no marker plaintext outside dockerd's data root while unlocking" \
		"$(cat "$W/canary.hits" 2>/dev/null)" ""
	check "$what: canary scans ran during the unlock ($(cat "$W/canary.count"))" \
		test "$(cat "$W/canary.count")" -gt 0
	D rmi $IMAGES >/dev/null || not_ok "$what: docker rmi failed"
}

failing "format 1, wrong key fragment" "$W/arch/wrong-key.enc" "key fragment"
failing "format 1, truncated archive" "$W/arch/trunc-f1.enc" "truncated"
unlocking "format 1" "$W/arch/good-f1.enc"
failing "format 2, truncated archive" "$W/arch/trunc-f2.enc" "truncated"
unlocking "format 2" "$W/arch/good-f2.big"
fs_umount "$W/mnt" "$pid"

# ---- dockerd not there ------------------------------------------------------------
PORT2=$(free_port)
sed -e "s|^rest_listen = .*|rest_listen = 127.0.0.1:$PORT2|" \
	-e "s|^docker_socket = .*|docker_socket = $W/no-dockerd.sock|" -e 's/^tpm = auto/tpm = off/' \
	"$W/conf" >"$W/nodocker.conf"
cp "$W/arch/good-f1.enc" "$W/arch/images.enc"
fs_mount "$W/mnt2" "$W/nodocker.conf"
pid=$FS_PID
out=$(f4 "$PORT2")
check_eq "no dockerd: F4 starts (200 authenticating)" "$out" '{"state":"authenticating"} 200'
doc=$(watch "$PORT2" | tail -1)
err=$(echo "$doc" | field error)
check_eq "no dockerd: F5 ends in error" "$(echo "$doc" | field state)" error
case $err in *"$W/no-dockerd.sock"*"dockerd"*) ok "no dockerd: the error names the cause: $err" ;;
*) not_ok "no dockerd: the error does not name the socket and dockerd: $err" ;; esac
check_eq "no dockerd: the mount still serves" "$(sha_of "$W/mnt2/model.bin" 2>/dev/null)" \
	"$(sha_of "$W/model.bin")"
fs_umount "$W/mnt2" "$pid"

check "the password reaches no log of the daemon" \
	sh -c "! grep -qF -- '$API_PASSWORD' '$W/mnt.log' '$W/mnt2.log'"
fs_no_leftovers
done_testing
