#!/usr/bin/python3
"""resource_api - the test suite's emulator of the Azaion Resource API
(resource-api.md, parts 1 and 2), served over HTTPS on loopback.

It is a test server, not a product: it keeps content keys in plain files and
answers unauthenticated test controls under /_admin/.

State lives in the data directory (--data), so a restart keeps resources and
devices:

  users                     email:password lines (when no --users was given)
  jwt-secret                HMAC key of the tokens
  key-fragment              raw bytes of GET /binary-split/key-fragment
  resources/<folder>/<file> format-1 small parts as uploaded, and cdn.yaml
                            (the empty folder is the directory "_root")
  resources/<folder>/<file>.meta.json   catalog fields of an uploaded part
  keys/<folder>/<name>.json format-2 registrations (K in base64, size, ...)
  hashes/<folder>/<name>.json  format-1 chunk hashes (trust.md section 4), the
                            body GET answers; replaced on republish, removed
                            when a format-2 key replaces the resource
  devices.json              enrolled devices
  requests.log              one line per request: no passwords, tokens, keys

Test controls (no authentication; loopback only):

  GET  /_admin/health                   {"status": "ok"}
  GET  /_admin/counters                 {"calls": {"POST /login": n, ...}, "total": n}
  POST /_admin/token_ttl {"seconds": n} token lifetime; null: tokens without exp
  POST /_admin/catalog {"enabled": b}   false: /resources/list answers 404
  GET  /_admin/devices                  the enrolled devices
  POST /_admin/devices/{id}/revoke      the device's key requests answer 404
  POST /_admin/devices/{id}/restore     undoes a revocation
  POST /_admin/fault {"status": s, "count": n, "delay": d, "path": prefix}
                                        the next n matching calls wait d seconds
                                        and answer s (0: answer normally)
  POST /_admin/reset {"data": b}        counters, settings and faults to their
                                        defaults; with data, also resources,
                                        keys, chunk hashes and devices
  DELETE /_admin/hashes/{folder}/{name} drops a resource's chunk hashes (a
                                        legacy resource) -> {"deleted": b}
  PUT  /_admin/hashes/{folder}/{name}   stores the body as is, for GET
                                        /resources/hashes to answer verbatim
                                        (malformed lists); an empty folder is
                                        written as /_admin/hashes//{name}

Chunk hashes (trust.md section 4), authenticated like the other resource
routes:

  POST /resources/hashes/{folder}/{name} {"chunk_size": n, "sha256": [hex, ...]}
        -> 201; n a power of two from 64 KiB to 16 MiB, each entry 64 hex
        characters (stored lowercase); replaces the list held before
  GET  /resources/hashes/{folder}/{name} -> 200 the list, 404 when none
"""
import argparse
import base64
import hashlib
import hmac
import json
import os
import re
import secrets
import socket
import ssl
import sys
import threading
import time
import urllib.parse
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools"))
from azformat import api_key, cbc_encrypt, hw_hash  # noqa: E402

JSON_MAX = 64 * 1024          # any JSON request body
UPLOAD_MAX = 1024 * 1024      # a multipart upload (small parts are <= 3072 bytes)
HASHES_MAX = (1 << 20) * 70   # a chunk-hash list: 2^20 entries (1 TiB at 1 MiB)
NAME_MAX = 255
DEFAULT_TTL = 3600
DEFAULT_EMAIL = "test@azaion.com"
ROOT_FOLDER = "_root"

# Folder and resource names as they appear in paths: no separators, no
# hidden files, nothing that escapes the data directory.
NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+@=,-]*$")


class HttpError(Exception):
    def __init__(self, status, detail):
        super().__init__(detail)
        self.status = status
        self.detail = detail


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def write_atomic(path: str, data: bytes, mode: int = 0o600):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = "%s.tmp.%d.%d" % (path, os.getpid(), threading.get_ident())
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def check_name(name: str, what: str) -> str:
    if not name or len(name.encode()) > NAME_MAX or not NAME_RE.match(name):
        raise HttpError(422, "invalid %s" % what)
    return name


def folder_dir(folder: str) -> str:
    return ROOT_FOLDER if folder == "" else check_name(folder, "folder")


class State:
    """Everything the emulator knows; one lock guards the files and settings."""

    def __init__(self, data_dir: str, users: dict):
        self.dir = data_dir
        self.lock = threading.Lock()
        self.users = users
        os.makedirs(os.path.join(data_dir, "resources", ROOT_FOLDER), exist_ok=True)
        os.makedirs(os.path.join(data_dir, "keys"), exist_ok=True)
        self.jwt_secret = self._persistent("jwt-secret", 32)
        self._persistent("key-fragment", 32)
        self.reset_settings()

    def _persistent(self, name: str, size: int) -> bytes:
        path = os.path.join(self.dir, name)
        if not os.path.exists(path):
            write_atomic(path, os.urandom(size))
        with open(path, "rb") as f:
            return f.read()

    def reset_settings(self):
        self.token_ttl = DEFAULT_TTL
        self.catalog = True
        self.counters = {}
        self.fault = None

    def reset_data(self):
        for sub in ("resources", "keys", "hashes"):
            top = os.path.join(self.dir, sub)
            for root, dirs, files in os.walk(top, topdown=False):
                for f in files:
                    if not (sub == "resources" and f == "cdn.yaml"
                            and os.path.basename(root) == ROOT_FOLDER):
                        os.unlink(os.path.join(root, f))
        write_atomic(self.devices_path(), b"[]")

    def path(self, *parts) -> str:
        return os.path.join(self.dir, *parts)

    # devices
    def devices_path(self) -> str:
        return self.path("devices.json")

    def load_devices(self) -> list:
        try:
            with open(self.devices_path(), "rb") as f:
                return json.loads(f.read())
        except FileNotFoundError:
            return []

    def save_devices(self, devices: list):
        write_atomic(self.devices_path(), json.dumps(devices, indent=1).encode())

    # tokens
    def make_token(self, email: str) -> str:
        head = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
        now = int(time.time())
        claims = {"sub": email, "iat": now, "jti": secrets.token_hex(8)}
        if self.token_ttl is not None:
            claims["exp"] = now + self.token_ttl
        body = b64url(json.dumps(claims, separators=(",", ":")).encode())
        sig = hmac.new(self.jwt_secret, ("%s.%s" % (head, body)).encode(), hashlib.sha256)
        return "%s.%s.%s" % (head, body, b64url(sig.digest()))

    def check_token(self, auth: str) -> str:
        """Returns the token's user, or raises 401."""
        if not auth or not auth.startswith("Bearer "):
            raise HttpError(401, "Not authenticated")
        parts = auth[7:].strip().split(".")
        if len(parts) != 3:
            raise HttpError(401, "Invalid token")
        sig = hmac.new(self.jwt_secret, ("%s.%s" % (parts[0], parts[1])).encode(),
                       hashlib.sha256).digest()
        try:
            given = b64url_decode(parts[2])
            claims = json.loads(b64url_decode(parts[1]))
        except (ValueError, TypeError):
            raise HttpError(401, "Invalid token")
        if not hmac.compare_digest(sig, given) or not isinstance(claims, dict):
            raise HttpError(401, "Invalid token")
        exp = claims.get("exp")
        if exp is not None and time.time() >= exp:
            raise HttpError(401, "Token expired")
        email = claims.get("sub")
        if email not in self.users:
            raise HttpError(401, "Invalid token")
        return email


def load_users(path: str, data_dir: str) -> dict:
    text = None
    if path:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    elif os.environ.get("AZ_API_USERS"):
        text = os.environ["AZ_API_USERS"]
    else:
        default = os.path.join(data_dir, "users")
        if not os.path.exists(default):
            write_atomic(default, ("%s:%s\n" % (DEFAULT_EMAIL, secrets.token_urlsafe(12))).encode())
        with open(default, encoding="utf-8") as f:
            text = f.read()
    users = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        email, sep, password = line.partition(":")
        if not sep or not email:
            raise SystemExit("resource_api: a users line is not email:password")
        users[email] = password
    if not users:
        raise SystemExit("resource_api: no users")
    return users


def parse_multipart(ctype: str, body: bytes) -> dict:
    """Returns {field: (filename or None, bytes)}."""
    m = re.search(r'boundary="?([^";]+)"?', ctype)
    if not m:
        raise HttpError(422, "multipart body without boundary")
    delim = b"--" + m.group(1).encode()
    fields = {}
    chunks = body.split(delim)
    if len(chunks) < 3:
        raise HttpError(422, "malformed multipart body")
    for chunk in chunks[1:]:
        if chunk.startswith(b"--"):
            break
        if chunk.startswith(b"\r\n"):
            chunk = chunk[2:]
        head, sep, data = chunk.partition(b"\r\n\r\n")
        if not sep:
            raise HttpError(422, "malformed multipart part")
        if data.endswith(b"\r\n"):
            data = data[:-2]
        name = filename = None
        for line in head.decode("utf-8", "replace").split("\r\n"):
            key, _, value = line.partition(":")
            if key.strip().lower() != "content-disposition":
                continue
            for param in value.split(";")[1:]:
                pk, _, pv = param.strip().partition("=")
                pv = pv.strip()
                if len(pv) >= 2 and pv[0] == '"' and pv[-1] == '"':
                    pv = pv[1:-1]
                if pk.lower() == "name":
                    name = pv
                elif pk.lower() == "filename":
                    filename = pv
        if name is None:
            raise HttpError(422, "multipart part without a name")
        fields[name] = (filename, data)
    return fields


def want_int(value, what):
    if isinstance(value, bool):
        raise HttpError(422, "%s is not a number" % what)
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise HttpError(422, "%s is not a number" % what)
    if n < 0:
        raise HttpError(422, "%s is negative" % what)
    return n


def want_hex(value, what, size):
    if (not isinstance(value, str) or len(value) != size * 2
            or not re.match(r"^[0-9a-fA-F]+$", value)):
        raise HttpError(422, "%s is not %d bytes of hex" % (what, size))
    return value.lower()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "azaion-resource-api-emulator"
    timeout = 60

    # The default logs to stderr with the client's request line; the
    # emulator keeps its own log without bodies or headers.
    def log_message(self, format, *args):
        pass

    @property
    def state(self) -> State:
        return self.server.state

    def log_request_line(self, status, size, started):
        line = "%s %s %s %s %d %d %.3f\n" % (
            now_iso(), self.client_address[0], self.command, self.path.split("?")[0],
            status, size, time.monotonic() - started)
        with self.server.log_lock:
            with open(self.state.path("requests.log"), "a") as f:
                f.write(line)

    def send(self, status, body=b"", ctype="application/json"):
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
        self.drain_body()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self._status = status
        self._size = len(body)

    def drain_body(self):
        """A body left unread (an early refusal) would be parsed as the next
        request on this connection: read it, or close the connection."""
        if self._body_done:
            return
        try:
            self.read_body(UPLOAD_MAX)
        except HttpError:
            self.close_connection = True

    def read_body(self, cap) -> bytes:
        self._body_done = True
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            out = bytearray()
            while True:
                line = self.rfile.readline(100)
                try:
                    n = int(line.split(b";")[0].strip(), 16)
                except ValueError:
                    raise HttpError(400, "bad chunked body")
                if n == 0:
                    while self.rfile.readline(1000) not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                if len(out) + n > cap:
                    self.close_connection = True
                    raise HttpError(413, "body too large")
                out += self.rfile.read(n)
                self.rfile.readline(10)
        length = self.headers.get("Content-Length")
        if length is None:
            return b""
        try:
            n = int(length)
        except ValueError:
            raise HttpError(400, "bad Content-Length")
        if n < 0 or n > cap:
            self.close_connection = True
            raise HttpError(413, "body too large")
        return self.rfile.read(n)

    def read_json(self) -> dict:
        body = self.read_body(JSON_MAX)
        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise HttpError(422, "malformed JSON")
        if not isinstance(doc, dict):
            raise HttpError(422, "the body is not a JSON object")
        return doc

    def handle_any(self):
        started = time.monotonic()
        self._status = 0
        self._size = 0
        self._body_done = False
        path = urllib.parse.unquote(self.path.split("?")[0])
        try:
            if path.startswith("/_admin/"):
                self.admin(path[len("/_admin/"):])
            else:
                key = "%s %s" % (self.command, path)
                with self.state.lock:
                    self.state.counters[key] = self.state.counters.get(key, 0) + 1
                    fault = self.take_fault(path)
                if fault:
                    if fault.get("delay"):
                        time.sleep(float(fault["delay"]))
                    if fault.get("status"):
                        self.read_body(UPLOAD_MAX)
                        raise HttpError(int(fault["status"]), "injected failure")
                self.route(path)
        except HttpError as e:
            self.send(e.status, {"detail": e.detail})
        except (BrokenPipeError, ConnectionResetError, socket.timeout):
            self.close_connection = True
        except Exception as e:  # a bug here must not kill the connection silently
            sys.stderr.write("resource_api: %s %s: %r\n" % (self.command, path, e))
            self.send(500, {"detail": "internal error"})
        self.log_request_line(self._status, self._size, started)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = handle_any

    def take_fault(self, path):
        f = self.state.fault
        if not f or not path.startswith(f.get("path") or "/"):
            return None
        f["count"] -= 1
        if f["count"] <= 0:
            self.state.fault = None
        return f

    # ---- the API
    def route(self, path):
        m = self.command
        if m == "POST" and path == "/login":
            return self.login()
        if m == "POST" and path.startswith("/resources/get/"):
            return self.get_resource(path[len("/resources/get/"):])
        if m == "GET" and path.startswith("/resources/list/"):
            return self.list_resources(path[len("/resources/list/"):])
        if path.startswith("/resources/key/"):
            folder, _, name = path[len("/resources/key/"):].partition("/")
            if m == "GET":
                return self.get_key(folder, name)
            if m == "POST":
                return self.register_key(folder, name)
        if path.startswith("/resources/hashes/"):
            folder, _, name = path[len("/resources/hashes/"):].partition("/")
            if m == "GET":
                return self.get_hashes(folder, name)
            if m == "POST":
                return self.register_hashes(folder, name)
        if m == "GET" and path == "/binary-split/key-fragment":
            self.state.check_token(self.headers.get("Authorization"))
            with open(self.state.path("key-fragment"), "rb") as f:
                return self.send(200, f.read(), "application/octet-stream")
        if m == "POST" and path == "/devices":
            return self.enrol_device()
        if m == "POST" and path.startswith("/resources/") and path.count("/") == 2:
            return self.upload(path[len("/resources/"):])
        raise HttpError(404, "Not found")

    def login(self):
        doc = self.read_json()
        email, password = doc.get("email"), doc.get("password")
        if not isinstance(email, str) or not isinstance(password, str):
            raise HttpError(422, "email and password are required")
        known = self.state.users.get(email)
        if known is None or not hmac.compare_digest(known.encode(), password.encode()):
            raise HttpError(401, "Invalid credentials")
        with self.state.lock:
            token = self.state.make_token(email)
        self.send(200, {"token": token})

    def get_resource(self, folder):
        email = self.state.check_token(self.headers.get("Authorization"))
        doc = self.read_json()
        password, hardware, name = doc.get("password"), doc.get("hardware"), doc.get("fileName")
        if not all(isinstance(v, str) for v in (password, hardware, name)):
            raise HttpError(422, "password, hardware and fileName are required")
        if not hmac.compare_digest(self.state.users[email].encode(), password.encode()):
            raise HttpError(403, "The password does not match the token's user")
        d = folder_dir(folder)
        check_name(name, "fileName")
        if name.endswith(".meta.json"):
            raise HttpError(404, "No such resource")
        try:
            with open(self.state.path("resources", d, name), "rb") as f:
                content = f.read()
        except (FileNotFoundError, NotADirectoryError):
            raise HttpError(404, "No such resource")
        key = api_key(email, password, hw_hash(hardware))
        self.send(200, cbc_encrypt(key, content), "application/octet-stream")

    def upload(self, folder):
        self.state.check_token(self.headers.get("Authorization"))
        d = folder_dir(folder)
        ctype = self.headers.get("Content-Type", "")
        if not ctype.lower().startswith("multipart/form-data"):
            self.read_body(UPLOAD_MAX)
            raise HttpError(422, "multipart/form-data expected")
        fields = parse_multipart(ctype, self.read_body(UPLOAD_MAX))
        if "data" not in fields or not fields["data"][0]:
            raise HttpError(422, "file field data is required")
        filename, content = fields["data"]
        check_name(filename, "file name")
        if not filename.endswith(".small") or len(filename) == len(".small"):
            raise HttpError(422, "the file name must be <name>.small")
        meta = {"format": 1, "updated": now_iso()}
        for field, kind in (("size", "int"), ("big_size", "int"), ("sha256", "hex")):
            if field not in fields:
                continue
            raw = fields[field][1].decode("utf-8", "replace").strip()
            meta[field] = want_int(raw, field) if kind == "int" else want_hex(raw, field, 32)
        name = filename[:-len(".small")]
        with self.state.lock:
            base = self.state.path("resources", d, filename)
            write_atomic(base, content)
            write_atomic(base + ".meta.json", json.dumps(meta).encode())
            try:
                os.unlink(self.state.path("keys", d, name + ".json"))
            except FileNotFoundError:
                pass
        self.send(200, {"status": "ok"})

    def list_resources(self, folder):
        self.state.check_token(self.headers.get("Authorization"))
        if not self.state.catalog:
            raise HttpError(404, "Not found")
        d = folder_dir(folder)
        entries = {}
        rdir = self.state.path("resources", d)
        kdir = self.state.path("keys", d)
        with self.state.lock:
            for f in sorted(os.listdir(rdir)) if os.path.isdir(rdir) else []:
                if not f.endswith(".small"):
                    continue
                entry = {"name": f[:-len(".small")], "format": 1}
                try:
                    with open(os.path.join(rdir, f + ".meta.json"), "rb") as mf:
                        entry.update(json.loads(mf.read()))
                except FileNotFoundError:
                    entry["updated"] = now_iso()
                entries[entry["name"]] = entry
            for f in sorted(os.listdir(kdir)) if os.path.isdir(kdir) else []:
                if not f.endswith(".json"):
                    continue
                with open(os.path.join(kdir, f), "rb") as kf:
                    reg = json.loads(kf.read())
                entry = {"name": f[:-len(".json")], "format": 2}
                for k in ("size", "sha256", "big_size", "updated"):
                    if k in reg:
                        entry[k] = reg[k]
                entries[entry["name"]] = entry
        self.send(200, {"resources": [entries[k] for k in sorted(entries)]})

    def enrol_device(self):
        self.state.check_token(self.headers.get("Authorization"))
        doc = self.read_json()
        name, hardware, pem = doc.get("name"), doc.get("hardware"), doc.get("public_key")
        if not all(isinstance(v, str) for v in (name, hardware, pem)):
            raise HttpError(422, "name, hardware and public_key are required")
        try:
            pub = serialization.load_pem_public_key(pem.encode())
        except ValueError:
            raise HttpError(422, "public_key is not a PEM public key")
        if not isinstance(pub, rsa.RSAPublicKey) or pub.key_size < 2048:
            raise HttpError(422, "public_key is not an RSA key of 2048 bits or more")
        der = pub.public_bytes(serialization.Encoding.DER,
                               serialization.PublicFormat.SubjectPublicKeyInfo)
        fingerprint = hashlib.sha256(der).hexdigest()
        with self.state.lock:
            devices = self.state.load_devices()
            for dev in devices:
                if dev["fingerprint"] == fingerprint:
                    return self.send(201, {"device_id": dev["device_id"]})
            dev = {"device_id": "dev-" + secrets.token_hex(8), "name": name,
                   "hardware": hardware, "fingerprint": fingerprint,
                   "public_key": pub.public_bytes(
                       serialization.Encoding.PEM,
                       serialization.PublicFormat.SubjectPublicKeyInfo).decode(),
                   "revoked": False, "created": now_iso()}
            devices.append(dev)
            self.state.save_devices(devices)
        self.send(201, {"device_id": dev["device_id"]})

    def get_key(self, folder, name):
        self.state.check_token(self.headers.get("Authorization"))
        d = folder_dir(folder)
        check_name(name, "name")
        device_id = self.headers.get("X-Device-Id", "")
        with self.state.lock:
            dev = next((x for x in self.state.load_devices() if x["device_id"] == device_id), None)
            try:
                with open(self.state.path("keys", d, name + ".json"), "rb") as f:
                    reg = json.loads(f.read())
            except FileNotFoundError:
                reg = None
        if dev is None or dev.get("revoked"):
            raise HttpError(404, "Unknown or revoked device")
        if reg is None:
            raise HttpError(404, "No format-2 resource of that name")
        pub = serialization.load_pem_public_key(dev["public_key"].encode())
        k = base64.b64decode(reg["key"])
        wrapped = pub.encrypt(k, padding.OAEP(mgf=padding.MGF1(hashes.SHA256()),
                                              algorithm=hashes.SHA256(), label=None))
        doc = {"format": 2, "alg": "rsa-oaep-sha256", "device_id": device_id,
               "wrapped_key": base64.b64encode(wrapped).decode()}
        if "file_id" in reg:
            doc["file_id"] = reg["file_id"]
        self.send(200, doc)

    def register_key(self, folder, name):
        self.state.check_token(self.headers.get("Authorization"))
        d = folder_dir(folder)
        check_name(name, "name")
        doc = self.read_json()
        try:
            k = base64.b64decode(doc.get("key") or "", validate=True)
        except (ValueError, TypeError):
            raise HttpError(422, "key is not base64")
        if len(k) != 32:
            raise HttpError(422, "key is not 32 bytes")
        reg = {"key": base64.b64encode(k).decode(),
               "size": want_int(doc.get("size"), "size"),
               "sha256": want_hex(doc.get("sha256"), "sha256", 32),
               "updated": now_iso()}
        if doc.get("file_id") is not None:
            reg["file_id"] = want_hex(doc["file_id"], "file_id", 16)
        if doc.get("big_size") is not None:
            reg["big_size"] = want_int(doc["big_size"], "big_size")
        with self.state.lock:
            write_atomic(self.state.path("keys", d, name + ".json"), json.dumps(reg).encode())
            for f in (name + ".small", name + ".small.meta.json"):
                try:
                    os.unlink(self.state.path("resources", d, f))
                except FileNotFoundError:
                    pass
            self.drop_hashes(d, name)
        self.send(201, {"status": "ok"})

    # ---- format-1 chunk hashes (trust.md section 4)
    def hashes_path(self, folder, name):
        check_name(name, "name")
        return self.state.path("hashes", folder_dir(folder), name + ".json")

    def drop_hashes(self, d, name):
        """Under the state lock. True when there was a list."""
        try:
            os.unlink(self.state.path("hashes", d, name + ".json"))
            return True
        except FileNotFoundError:
            return False

    def get_hashes(self, folder, name):
        self.state.check_token(self.headers.get("Authorization"))
        path = self.hashes_path(folder, name)
        with self.state.lock:
            try:
                with open(path, "rb") as f:
                    body = f.read()
            except FileNotFoundError:
                raise HttpError(404, "No chunk hashes for that resource")
        self.send(200, body)

    def register_hashes(self, folder, name):
        self.state.check_token(self.headers.get("Authorization"))
        path = self.hashes_path(folder, name)
        try:
            doc = json.loads(self.read_body(HASHES_MAX))
        except (ValueError, UnicodeDecodeError):
            raise HttpError(422, "malformed JSON")
        if not isinstance(doc, dict):
            raise HttpError(422, "the body is not a JSON object")
        size = doc.get("chunk_size")
        if (not isinstance(size, int) or isinstance(size, bool) or size < 65536
                or size > 16 << 20 or size & (size - 1)):
            raise HttpError(422, "chunk_size is not a power of two from 64 KiB to 16 MiB")
        sha = doc.get("sha256")
        if not isinstance(sha, list):
            raise HttpError(422, "sha256 is not a list")
        sha = [want_hex(h, "a sha256 entry", 32) for h in sha]
        if len(sha) > min(1 << 20, (1 << 40) // size):
            raise HttpError(422, "sha256 has more entries than a big part of 1 TiB needs")
        with self.state.lock:
            write_atomic(path, json.dumps({"chunk_size": size, "sha256": sha}).encode())
        self.send(201, {"status": "ok", "count": len(sha)})

    # ---- test controls
    def admin(self, what):
        if self.client_address[0] not in ("127.0.0.1", "::1"):
            raise HttpError(403, "test controls answer loopback only")
        st = self.state
        m = self.command
        if m == "GET" and what == "health":
            return self.send(200, {"status": "ok"})
        if m == "GET" and what == "counters":
            with st.lock:
                calls = dict(st.counters)
            return self.send(200, {"calls": calls, "total": sum(calls.values())})
        if m == "POST" and what == "token_ttl":
            seconds = self.read_json().get("seconds")
            with st.lock:
                st.token_ttl = None if seconds is None else want_int(seconds, "seconds")
            return self.send(200, {"token_ttl": st.token_ttl})
        if m == "POST" and what == "catalog":
            enabled = self.read_json().get("enabled")
            if not isinstance(enabled, bool):
                raise HttpError(422, "enabled must be true or false")
            st.catalog = enabled
            return self.send(200, {"catalog": st.catalog})
        if m == "GET" and what == "devices":
            with st.lock:
                devices = st.load_devices()
            return self.send(200, {"devices": devices})
        mm = re.match(r"^devices/([^/]+)/(revoke|restore)$", what)
        if m == "POST" and mm:
            with st.lock:
                devices = st.load_devices()
                dev = next((x for x in devices if x["device_id"] == mm.group(1)), None)
                if dev is None:
                    raise HttpError(404, "Unknown device")
                dev["revoked"] = mm.group(2) == "revoke"
                st.save_devices(devices)
            return self.send(200, {"device_id": dev["device_id"], "revoked": dev["revoked"]})
        if m == "POST" and what == "fault":
            doc = self.read_json()
            f = {"status": want_int(doc.get("status", 0), "status"),
                 "count": want_int(doc.get("count", 1), "count"),
                 "delay": float(doc.get("delay", 0) or 0),
                 "path": doc.get("path") or "/"}
            with st.lock:
                st.fault = f if f["count"] > 0 else None
            return self.send(200, {"fault": st.fault})
        if what.startswith("hashes/") and m in ("DELETE", "PUT"):
            folder, _, name = what[len("hashes/"):].partition("/")
            path = self.hashes_path(folder, name)
            if m == "PUT":
                body = self.read_body(HASHES_MAX)
                with st.lock:
                    write_atomic(path, body)
                return self.send(200, {"stored": len(body)})
            with st.lock:
                deleted = self.drop_hashes(folder_dir(folder), name)
            return self.send(200, {"deleted": deleted})
        if m == "POST" and what == "reset":
            doc = self.read_json() if self.headers.get("Content-Length", "0") != "0" else {}
            with st.lock:
                st.reset_settings()
                if doc.get("data"):
                    st.reset_data()
            return self.send(200, {"status": "ok"})
        raise HttpError(404, "Not found")


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr, state, tls):
        super().__init__(addr, Handler)
        self.state = state
        self.tls = tls
        self.log_lock = threading.Lock()

    # The TLS handshake runs in the request's own thread, so that a slow or
    # silent client cannot hold up accept().
    def finish_request(self, request, client_address):
        request.settimeout(Handler.timeout)
        # Headers and body leave in two writes; with Nagle on, the second
        # waits for the client's delayed ACK (40 ms), which no real API adds.
        request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            request = self.tls.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return
        super().finish_request(request, client_address)

    def handle_error(self, request, client_address):
        pass


def main():
    ap = argparse.ArgumentParser(description="Resource API emulator (tests only)")
    ap.add_argument("--data", required=True, help="state directory")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--cert", required=True, help="server certificate chain (PEM)")
    ap.add_argument("--key", required=True, help="server private key (PEM)")
    ap.add_argument("--users", help="file of email:password lines "
                    "(default: $AZ_API_USERS, else DATA/users, created with one user)")
    args = ap.parse_args()
    if args.host not in ("127.0.0.1", "::1", "localhost"):
        raise SystemExit("resource_api: listens on loopback only")

    os.makedirs(args.data, exist_ok=True)
    state = State(os.path.abspath(args.data), load_users(args.users, args.data))
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(args.cert, args.key)
    server = Server((args.host, args.port), state, tls)
    sys.stderr.write("resource_api: listening on https://%s:%d\n" % (args.host, args.port))
    sys.stderr.flush()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
