#!/usr/bin/env bash
# 40-rest-api: the side endpoint as today's clients call it. A client made
# of plain HTTP calls with the original bodies (Python's standard library
# only) runs F1-F6 against the daemon and checks every documented success
# body and status code and every documented error: 401, 404, 405, 413,
# 422. F3 then F2 round trips a 100 MiB model in both formats with
# identical bytes (the mount gives the same); 200 concurrent /health and
# 20 concurrent F2 loads answer correctly; /metrics counts reads, fetches,
# cache and errors; a unix: socket has mode 0660; azaionctl's client
# commands; and no password reaches a log.
. "$(dirname "$0")/../lib.sh"
. "$AZ_TOP/tests/tools/fs-lib.sh"
fs_init t40

free_port() {
	"$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
PORT=$(free_port)
F=r40$TAG
# No credentials file: the first calls are made before any login (F1).
cat >"$W/conf" <<EOF
api_url = $API_URL
ca_file = $STACK_CA
hardware_id = azaionfs-test-hardware
cdn_url = $NGINX_URL
folder = $F
state_dir = $W/state
cache_dir = $W/cache
tpm = auto
tpm_tcti = $TPM_TCTI
tpm_wait = 5
rest_listen = 127.0.0.1:$PORT
rest_upload = true
rest_group = root
images_archive = $W/no-such-archive.enc
images = test/absent-$TAG
docker_socket = $DOCKER_SOCK
EOF
fs_mount "$W/mnt" "$W/conf"
pid=$FS_PID
check "the side endpoint answers on 127.0.0.1:$PORT" \
	wait_for 10 curl -sf "http://127.0.0.1:$PORT/health"

printf '%s' "$API_PASSWORD" >"$W/password"
chmod 600 "$W/password"
head -c 3145739 /dev/urandom >"$W/small.bin"
head -c $((100 * 1024 * 1024)) /dev/urandom >"$W/big.bin"

# The client: plain HTTP calls with the original bodies, as today's clients
# make them. Each check prints one TAP-style line (numbered by the shell).
cat >"$W/client.py" <<'EOF'
import hashlib, http.client, json, os, sys, threading, uuid

HOST, PORT = "127.0.0.1", int(os.environ["PORT"])
EMAIL, PASSWORD = os.environ["API_EMAIL"], os.environ["API_PASSWORD"]
MNT, FOLDER, W = os.environ["MNT"], os.environ["FOLDER"], os.environ["W"]

def call(method, path, body=None, headers=None, raw=False):
    c = http.client.HTTPConnection(HOST, PORT, timeout=300)
    h = dict(headers or {})
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
        h.setdefault("Content-Type", "application/json")
    c.request(method, path, body=body, headers=h)
    r = c.getresponse()
    data = r.read()
    c.close()
    if raw:
        return r.status, data, r
    try:
        return r.status, json.loads(data), r
    except ValueError:
        return r.status, data, r

def multipart(fields, files):
    b = uuid.uuid4().hex
    out = []
    for k, v in fields.items():
        out.append(f'--{b}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode())
    for k, (name, data) in files.items():
        out.append(f'--{b}\r\nContent-Disposition: form-data; name="{k}"; filename="{name}"\r\n'
                   'Content-Type: application/octet-stream\r\n\r\n'.encode())
        out.append(data)
        out.append(b"\r\n")
    out.append(f"--{b}--\r\n".encode())
    return b"".join(out), {"Content-Type": f"multipart/form-data; boundary={b}"}

def check(what, cond, got=None):
    print(("ok - " if cond else "not ok - ") + what + ("" if cond else f" (got {got!r})"),
          flush=True)

def expect(what, method, path, status, body=None, headers=None, want=None, detail=None):
    st, doc, _ = call(method, path, body, headers)
    good = st == status and (want is None or doc == want)
    if detail is not None:
        good = good and isinstance(doc, dict) and isinstance(doc.get("detail"), str) \
            and detail in doc["detail"]
    check(f"{what}: {method} {path} -> {status}" + (f" {json.dumps(want)}" if want else ""),
          good, (st, doc))
    return doc

def load(name, folder=FOLDER):
    c = http.client.HTTPConnection(HOST, PORT, timeout=300)
    c.request("POST", f"/load/{name}", body=json.dumps({"filename": name, "folder": folder}),
              headers={"Content-Type": "application/json"})
    r = c.getresponse()
    h = hashlib.sha256()
    n = 0
    while True:
        d = r.read(1 << 20)
        if not d:
            break
        h.update(d)
        n += len(d)
    c.close()
    return r.status, r.getheader("Content-Length"), r.getheader("Content-Type"), n, h.hexdigest()

def sha(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for d in iter(lambda: f.read(1 << 20), b""):
            h.update(d)
    return h.hexdigest()

step = sys.argv[1]
if step == "before-login":
    expect("F6 health", "GET", "/health", 200, want={"status": "healthy"})
    st, doc, _ = call("GET", "/status")
    check("F6 status before login: 200, the original fields and the new ones",
          st == 200 and doc.get("status") == "ok" and doc.get("authenticated") is False
          and doc.get("modelCacheDir") == MNT and doc.get("mounted") is True
          and doc.get("tpm") in ("ok", "absent", "error") and "device_id" in doc
          and doc.get("api") == "ok" and isinstance(doc.get("models"), int), (st, doc))
    expect("F2 before any login", "POST", "/load/x.bin", 401,
           {"filename": "x.bin", "folder": FOLDER})
    expect("F3 before any login", "POST", "/upload/x.bin", 401,
           *multipart({"folder": FOLDER}, {"data": ("x.bin", b"abc")}))
    expect("F1 malformed JSON", "POST", "/login", 422, b'{"email": "a",',
           {"Content-Type": "application/json"}, detail="JSON")
    expect("F1 without password", "POST", "/login", 422, {"email": EMAIL}, detail="password")
    expect("F1 without email", "POST", "/login", 422, {"password": PASSWORD}, detail="email")
    expect("F1 with a number for a password", "POST", "/login", 422,
           {"email": EMAIL, "password": 5}, detail="password")
    expect("F1 body over 64 KiB", "POST", "/login", 413,
           {"email": EMAIL, "password": "x" * 70000})
    expect("F1 wrong password", "POST", "/login", 401, {"email": EMAIL, "password": "wrong"})
    st, doc, _ = call("GET", "/status")
    check("a refused F1 leaves the daemon unauthenticated",
          st == 200 and doc["authenticated"] is False, doc)
    expect("F1 login", "POST", "/login", 200, {"email": EMAIL, "password": PASSWORD},
           want={"status": "ok"})
    st, doc, _ = call("GET", "/status")
    check("F6 status after login: authenticated", doc.get("authenticated") is True, doc)

elif step == "flows":
    for fmt, name in (("1", "small-f1.bin"), (None, "small-f1d.bin"), ("2", "small-f2.bin")):
        fields = {"folder": FOLDER}
        if fmt:
            fields["format"] = fmt
        data = open(f"{W}/small.bin", "rb").read()
        expect(f"F3 upload, format {fmt or 'default (1)'}", "POST", f"/upload/{name}", 200,
               *multipart(fields, {"data": (name, data)}), want={"status": "ok"})
        st, cl, ct, n, digest = load(name)
        check(f"F2 load of {name}: 200, octet-stream, Content-Length and bytes equal the upload",
              st == 200 and ct == "application/octet-stream" and cl == str(len(data))
              and digest == hashlib.sha256(data).hexdigest(), (st, ct, cl, n))
        check(f"the mount serves the same bytes as F2 for {name}",
              sha(f"{MNT}/{name}") == hashlib.sha256(data).hexdigest())
    expect("F3 without data", "POST", "/upload/nodata.bin", 422,
           *multipart({"folder": FOLDER}, {}), detail="data")
    expect("F3 with format 3", "POST", "/upload/f3.bin", 422,
           *multipart({"folder": FOLDER, "format": "3"}, {"data": ("f3.bin", b"abc")}),
           detail="format")
    expect("F3 not multipart", "POST", "/upload/j.bin", 415, {"data": "abc"},
           detail="multipart/form-data")
    expect("F2 of a missing resource", "POST", "/load/missing.bin", 404,
           {"filename": "missing.bin", "folder": FOLDER})
    expect("F2 without folder", "POST", "/load/small-f1.bin", 422,
           {"filename": "small-f1.bin"}, detail="folder")
    expect("F2 malformed JSON", "POST", "/load/small-f1.bin", 422, b"filename=x",
           {"Content-Type": "application/json"})
    expect("unknown path", "GET", "/nope", 404, want={"detail": "Not Found"})
    expect("unknown path, POST", "POST", "/load", 404, {"filename": "a", "folder": FOLDER})
    st, doc, r = call("GET", "/login")
    check("wrong method: GET /login -> 405 with Allow: POST",
          st == 405 and r.getheader("Allow") == "POST", (st, doc))
    expect("wrong method", "POST", "/health", 405, {})
    expect("wrong method", "DELETE", "/unlock/status", 405)
    st, doc, _ = call("GET", "/unlock/status")
    check("F5 before any unlock: 200 idle, error null, bytes_done, bytes_total, images",
          st == 200 and doc == {"state": "idle", "error": None, "bytes_done": 0,
                                "bytes_total": 0, "images": []}, (st, doc))
    expect("F4 archive missing and images not loaded", "POST", "/unlock", 404,
           {"email": EMAIL, "password": PASSWORD},
           want={"detail": "Encrypted archive not found"})
    expect("F4 without password", "POST", "/unlock", 422, {"email": EMAIL}, detail="password")
    expect("F4 malformed JSON", "POST", "/unlock", 422, b"{{",
           {"Content-Type": "application/json"})

elif step == "big":
    size = os.path.getsize(f"{W}/big.bin")
    want = sha(f"{W}/big.bin")
    data = open(f"{W}/big.bin", "rb").read()
    for fmt in ("1", "2"):
        name = f"big-f{fmt}.bin"
        expect(f"F3 upload of 100 MiB, format {fmt}", "POST", f"/upload/{name}", 200,
               *multipart({"folder": FOLDER, "format": fmt}, {"data": (name, data)}),
               want={"status": "ok"})
        st, cl, ct, n, digest = load(name)
        check(f"F2 load of the 100 MiB model, format {fmt}: identical bytes",
              st == 200 and cl == str(size) and n == size and digest == want, (st, cl, n))

elif step == "concurrent":
    results = []
    lock = threading.Lock()
    def health():
        try:
            st, doc, _ = call("GET", "/health")
            ok = st == 200 and doc == {"status": "healthy"}
        except Exception as e:
            ok = repr(e)
        with lock:
            results.append(ok)
    ts = [threading.Thread(target=health) for _ in range(200)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    bad = [r for r in results if r is not True]
    check(f"200 concurrent GET /health: {len(results) - len(bad)} answered healthy",
          len(results) == 200 and not bad, bad[:3])
    want = sha(f"{W}/small.bin")
    loads = []
    def one(i):
        name = ("small-f1.bin", "small-f2.bin")[i % 2]
        try:
            st, cl, ct, n, digest = load(name)
            ok = st == 200 and digest == want
        except Exception as e:
            ok = repr(e)
        with lock:
            loads.append(ok)
    ts = [threading.Thread(target=one, args=(i,)) for i in range(20)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    bad = [r for r in loads if r is not True]
    check(f"20 concurrent F2 loads: {len(loads) - len(bad)} gave the right bytes",
          len(loads) == 20 and not bad, bad[:3])

elif step == "metrics":
    st, text, r = call("GET", "/metrics", raw=True)
    text = text.decode()
    vals = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            k, v = line.rsplit(" ", 1)
            vals[k] = float(v)
    check("GET /metrics: 200, Prometheus text format",
          st == 200 and r.getheader("Content-Type").startswith("text/plain; version=0.0.4")
          and all(line.startswith(("# HELP ", "# TYPE ", "azaionfs_", "process_"))
                  for line in text.splitlines() if line), text[:300])
    for k in ("azaionfs_reads_total", "azaionfs_read_bytes_total", "azaionfs_fetches_total",
              "azaionfs_fetch_bytes_total", "azaionfs_cache_misses_total",
              "azaionfs_cache_hits_total", "azaionfs_loads_total", "azaionfs_uploads_total"):
        check(f"/metrics: {k} counted ({vals.get(k)})", vals.get(k, 0) > 0)
    for k in ("azaionfs_read_errors_total", "azaionfs_fetch_errors_total",
              "azaionfs_errors_total", 'azaionfs_http_responses_total{class="4xx"}',
              "azaionfs_authenticated", "azaionfs_models", 'azaionfs_unlock_state{state="idle"}'):
        check(f"/metrics: {k} present", k in vals, sorted(vals)[:5])
    check("/metrics: the 4xx answers of this test counted",
          vals.get('azaionfs_http_responses_total{class="4xx"}', 0) >= 15)
EOF

# client STEP: runs a step of the client; its lines become this script's checks.
client() {
	local line rc
	PORT=$PORT MNT=$W/mnt FOLDER=$F W=$W "$PY" "$W/client.py" "$1" >"$W/client.out" 2>&1
	rc=$?
	while IFS= read -r line; do
		case $line in
		"ok - "*) ok "${line#ok - }" ;;
		"not ok - "*) not_ok "${line#not ok - }" ;;
		*) echo "# $line" ;;
		esac
	done <"$W/client.out"
	[ $rc -eq 0 ] || not_ok "client step $1 exited with status $rc"
}

# F1 while the API fails (503 until the retries give up): 401, as documented.
curl -s --cacert "$STACK_CA" -H 'Content-Type: application/json' \
	-d '{"status": 503, "count": 100, "path": "/login"}' "$ADMIN_URL/fault" >/dev/null
out=$(curl -s -w ' %{http_code}' -H 'Content-Type: application/json' \
	-d "{\"email\": \"$API_EMAIL\", \"password\": \"x$TAG\"}" "http://127.0.0.1:$PORT/login")
curl -s --cacert "$STACK_CA" -H 'Content-Type: application/json' -d '{"data": false}' \
	"$ADMIN_URL/reset" >/dev/null
case $out in *unreachable*" 401") ok "F1 while the API fails: 401 naming it: $out" ;;
*) not_ok "F1 while the API fails: '$out'" ;; esac
client before-login
client flows
# F3 registered format 1's chunk hashes (docs/trust.md section 4) with the small part.
tok=$(curl -fsS --cacert "$STACK_CA" -H 'Content-Type: application/json' \
	-d "{\"email\":\"$API_EMAIL\",\"password\":\"$API_PASSWORD\"}" "$API_URL/login" |
	"$PY" -c 'import json,sys; print(json.load(sys.stdin)["token"])')
curl -fsS --cacert "$STACK_CA" -H "Authorization: Bearer $tok" -o "$W/f3.hashes" \
	"$API_URL/resources/hashes/$F/small-f1.bin"
curl -fsS --cacert "$STACK_CA" -o "$W/f3.big" "$NGINX_URL/$F/small-f1.bin.big"
check "F3, format 1: the API's chunk-hash list equals hashlib over the CDN's big part" \
	"$PY" -c 'import json,sys; sys.path.insert(0, sys.argv[3]); import azformat; assert json.load(open(sys.argv[1])) == azformat.f1_chunk_hashes(open(sys.argv[2], "rb"))' \
	"$W/f3.hashes" "$W/f3.big" "$AZ_TOP/tests/tools"
start=$SECONDS
client big
echo "# 100 MiB round trips: $((SECONDS - start)) s"
client concurrent
client metrics

# ---- azaionctl, the command-line client --------------------------------------
ctl() { "$AZ_CTL" -o "rest_listen=127.0.0.1:$PORT" -o "folder=$F" "$@"; }
check_eq "azaionctl health" "$(ctl health 2>&1)" "healthy"
check_eq "azaionctl --json health" "$(ctl --json health 2>&1)" '{"status":"healthy"}'
check "azaionctl status shows the login and the mount" \
	sh -c "'$AZ_CTL' -o rest_listen=127.0.0.1:$PORT status | grep -qx 'authenticated: yes'"
check "azaionctl --json status is one JSON document with the unlock state" \
	"$PY" -c 'import json, sys; d = json.loads(sys.stdin.read()); assert d["status"] == "ok" and d["unlock"]["state"] == "idle"' \
	< <(ctl --json status)
check "azaionctl login --email E --password-file F" \
	ctl login --email "$API_EMAIL" --password-file "$W/password"
out=$(printf 'wrong\n' | ctl login --email "$API_EMAIL" 2>&1)
case $out in *"HTTP 401"*) ok "azaionctl login with a wrong password (stdin): one line, HTTP 401" ;;
*) not_ok "azaionctl login with a wrong password: '$out'" ;; esac
check "azaionctl upload --format 2" ctl upload --format 2 --name ctl.bin "$W/small.bin"
ctl load --out "$W/ctl.back" ctl.bin >/dev/null
check_eq "azaionctl load --out gives the uploaded bytes" "$(sha_of "$W/ctl.back")" \
	"$(sha_of "$W/small.bin")"
check_eq "azaionctl load --out writes the plaintext with mode 600" \
	"$(stat -c %a "$W/ctl.back")" 600
check_eq "azaionctl load to stdout" "$(ctl load ctl.bin | sha256sum | cut -d' ' -f1)" \
	"$(sha_of "$W/small.bin")"
out=$(ctl load missing.bin 2>&1 >/dev/null)
case $out in *"HTTP 404"*) ok "azaionctl load of a missing model: '$out'" ;;
*) not_ok "azaionctl load of a missing model: '$out'" ;; esac
out=$(ctl unlock --email "$API_EMAIL" --password-file "$W/password" 2>&1)
case $out in *"Encrypted archive not found"*) ok "azaionctl unlock without an archive: '$out'" ;;
*) not_ok "azaionctl unlock without an archive: '$out'" ;; esac
rm -f "$W/ctl.back"

# ---- nothing secret in the logs -----------------------------------------------------
check "the password reaches neither the daemon's log nor the API's" \
	sh -c "! grep -qF -- '$API_PASSWORD' '$W/mnt.log' '$API_LOG'"

fs_umount "$W/mnt" "$pid"

# ---- a unix socket, and a refused public address -------------------------------------
sed -e "s|^rest_listen = .*|rest_listen = unix:$W/rest.sock|" -e 's/^tpm = auto/tpm = off/' \
	"$W/conf" >"$W/unix.conf"
fs_mount "$W/mnt-u" "$W/unix.conf"
pid=$FS_PID
check "the unix socket appears" wait_for 10 test -S "$W/rest.sock"
check_eq "the unix socket has mode 0660" "$(stat -c %a "$W/rest.sock")" 660
check_eq "GET /health on the unix socket" \
	"$(curl -s --unix-socket "$W/rest.sock" http://localhost/health)" '{"status":"healthy"}'
check_eq "azaionctl over the unix socket" \
	"$("$AZ_CTL" -o "rest_listen=unix:$W/rest.sock" health 2>&1)" healthy
fs_umount "$W/mnt-u" "$pid"
check "the unix socket is removed at exit" test ! -e "$W/rest.sock"
mkdir -p "$W/mnt-p"
out=$("$AZ_DAEMON" azaion "$W/mnt-p" -f -o "config=$W/unix.conf,rest_listen=0.0.0.0:$PORT" 2>&1)
case $out in *rest_public*) ok "a non-loopback rest_listen without rest_public stops the start" ;;
*) not_ok "a non-loopback rest_listen without rest_public: '$out'" ;; esac

rm -f "$W/big.bin"
fs_no_leftovers
done_testing
