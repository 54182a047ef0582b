#!/usr/bin/python3
"""faultproxy - the tests' own fault-injecting HTTPS proxy.

It sits between the daemon and one upstream (the Resource API emulator or
nginx), terminates TLS with the stack's server certificate, forwards each
request to the upstream (verified against the stack's CA) and, when a fault
is armed for it, breaks the answer on purpose. Loopback only.

  faultproxy.py --upstream https://127.0.0.1:PORT --ca CA --cert PEM --key KEY
                --port-file FILE [--port N] [--log FILE]

A fault with "range_min" takes only Range requests of at least that many
bytes (e.g. chunks, not a format-2 header).

Control, on the proxy's own address (never forwarded):
  POST /_proxy/fault  {"kind": K, "count": n, "path": prefix, ...}  arms a fault
                      (count -1: until cleared); faults are tried in order,
                      the first one whose path prefix (and method, when
                      given) matches takes the request; "first": true puts
                      it ahead of those armed before
  POST /_proxy/clear  disarms every fault
  GET  /_proxy/stats  {"requests": n, "faults": {kind: n}, "armed": [...]}

Kinds:
  status    answer "status" (e.g. 503, 429, 401) without forwarding
  reset     forward, send the head and "after" body bytes, then a TCP reset
  truncate  the same with a clean close: a body shorter than its length
  stall     wait "seconds" (after the head and "after" bytes when "after"
            is given), then answer normally
  range     forward, with a Content-Range that names other bytes
  flip      forward, with the body byte at "after" (default: the middle)
            inverted
  body      answer "status" (default 200) with the bytes of "file" (or
            "text") instead of forwarding
  refuse    close the connection without answering
"""
import argparse
import http.client
import http.server
import json
import os
import re
import socket
import ssl
import struct
import sys
import threading
import time

CHUNK = 64 * 1024
MAX_STALL = 120.0  # bounded: a stall never outlives a test
MAX_REQUEST_BODY = 64 * 1024 * 1024
HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te",
       "trailer", "upgrade", "host"}


class State:
    def __init__(self):
        self.lock = threading.Lock()
        self.faults = []
        self.requests = 0
        self.applied = {}

    def take(self, method, path, rng):
        with self.lock:
            self.requests += 1
            for f in self.faults:
                if not path.startswith(f.get("path", "")):
                    continue
                if f.get("method") and f["method"] != method:
                    continue
                if f.get("range_min") and range_len(rng) < int(f["range_min"]):
                    continue
                if f["count"] > 0:
                    f["count"] -= 1
                if f["count"] == 0:
                    self.faults.remove(f)
                self.applied[f["kind"]] = self.applied.get(f["kind"], 0) + 1
                return dict(f)
        return None


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "faultproxy"
    sys_version = ""

    def log_message(self, fmt, *args):
        if self.server.logf:
            self.server.logf.write("%s %s\n" % (time.strftime("%H:%M:%S"), fmt % args))
            self.server.logf.flush()

    # ---- plumbing

    def read_body(self):
        n = self.headers.get("Content-Length")
        if n is not None:
            n = int(n)
            if n < 0 or n > MAX_REQUEST_BODY:
                raise ValueError("request body too large")
            return self.rfile.read(n)
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
                if len(out) > MAX_REQUEST_BODY:
                    raise ValueError("request body too large")
        return b""

    def upstream(self):
        conn = getattr(self.server.local, "conn", None)
        if conn is None:
            u = self.server.up
            conn = http.client.HTTPSConnection(u.hostname, u.port, context=self.server.up_ctx,
                                               timeout=60)
            self.server.local.conn = conn
        return conn

    def forward(self, body):
        hdrs = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
        hdrs["Host"] = self.server.up.netloc
        for attempt in range(2):
            conn = self.upstream()
            try:
                conn.request(self.command, self.path, body=body if body else None, headers=hdrs)
                return conn.getresponse()
            except (OSError, http.client.HTTPException):
                conn.close()
                self.server.local.conn = None
                if attempt:
                    raise
        raise OSError("unreachable")

    def hard_close(self, reset):
        try:
            self.wfile.flush()
        except OSError:
            pass
        sock = self.connection
        if reset:
            # SO_LINGER 0: close() sends a RST instead of a FIN.
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
        try:
            sock.close()
        except OSError:
            pass
        self.close_connection = True

    def send_plain(self, status, body, ctype="application/json", extra=None):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    # ---- control

    def control(self, what, body):
        st = self.server.state
        if self.command == "POST" and what == "fault":
            f = json.loads(body or b"{}")
            if f.get("kind") not in ("status", "reset", "truncate", "stall", "range", "flip",
                                     "body", "refuse"):
                return self.send_plain(400, b'{"detail": "unknown kind"}')
            f.setdefault("count", 1)
            f["count"] = int(f["count"])
            with st.lock:
                if f.get("first"):
                    st.faults.insert(0, f)
                else:
                    st.faults.append(f)
            return self.send_plain(200, json.dumps({"armed": f}).encode())
        if self.command == "POST" and what == "clear":
            with st.lock:
                st.faults = []
            return self.send_plain(200, b'{"armed": []}')
        if self.command == "GET" and what == "stats":
            with st.lock:
                doc = {"requests": st.requests, "faults": dict(st.applied),
                       "armed": list(st.faults)}
            return self.send_plain(200, json.dumps(doc).encode())
        return self.send_plain(404, b'{"detail": "no such control"}')

    # ---- requests

    def handle_any(self):
        try:
            body = self.read_body()
        except ValueError:
            return self.send_plain(413, b'{"detail": "too large"}')
        if self.path.startswith("/_proxy/"):
            return self.control(self.path[len("/_proxy/"):], body)
        f = self.server.state.take(self.command, self.path, self.headers.get("Range"))
        kind = f["kind"] if f else None
        if kind == "refuse":
            return self.hard_close(True)
        if kind == "status":
            code = int(f.get("status", 503))
            extra = {"Retry-After": "0"} if code in (429, 503) else None
            return self.send_plain(code, b'{"detail": "injected fault"}', extra=extra)
        if kind == "body":
            return self.answer_file(f)
        if kind == "stall" and "after" not in f:
            time.sleep(min(float(f.get("seconds", 5)), MAX_STALL))
        try:
            resp = self.forward(body)
        except (OSError, http.client.HTTPException) as e:
            return self.send_plain(502, json.dumps({"detail": "upstream: %s" % e}).encode())
        self.relay(resp, f)

    def answer_file(self, f):
        status = int(f.get("status", 200))
        if "file" in f:
            size = os.path.getsize(f["file"])
            self.send_response(status)
            self.send_header("Content-Type", f.get("type", "application/json"))
            self.send_header("Content-Length", str(size))
            self.end_headers()
            if self.command == "HEAD":
                return
            with open(f["file"], "rb") as src:
                while True:
                    b = src.read(CHUNK)
                    if not b:
                        break
                    self.wfile.write(b)
        else:
            self.send_plain(status, f.get("text", "").encode(), f.get("type", "application/json"))

    def relay(self, resp, f):
        kind = f["kind"] if f else None
        data = resp.read() if self.command != "HEAD" else b""
        length = resp.getheader("Content-Length")
        self.send_response(resp.status, resp.reason)
        for k, v in resp.getheaders():
            lk = k.lower()
            if lk in HOP or lk == "content-length":
                continue
            if lk == "content-range" and kind == "range":
                v = shift_range(v)
            self.send_header(k, v)
        if self.command == "HEAD":
            self.send_header("Content-Length", length or "0")
        else:
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command == "HEAD":
            return
        if kind == "flip" and data:
            at = int(f.get("after", len(data) // 2)) % len(data)
            data = data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1:]
        if kind in ("reset", "truncate", "stall") and "after" in f:
            cut = min(int(f["after"]), len(data))
            self.wfile.write(data[:cut])
            if kind == "stall":
                self.wfile.flush()
                time.sleep(min(float(f.get("seconds", 5)), MAX_STALL))
                try:
                    self.wfile.write(data[cut:])
                except OSError:
                    self.close_connection = True
                return
            return self.hard_close(kind == "reset")
        self.wfile.write(data)

    def do_GET(self):
        self.handle_any()

    do_POST = do_PUT = do_HEAD = do_DELETE = do_GET


def range_len(v):
    m = re.match(r"\s*bytes=(\d+)-(\d+)\s*$", v or "")
    return int(m.group(2)) - int(m.group(1)) + 1 if m else 0


def shift_range(v):
    """bytes S-E/T -> bytes (S+16)-(E+16)/T: the answer claims other bytes."""
    m = re.match(r"\s*bytes\s+(\d+)-(\d+)/(\S+)", v)
    if not m:
        return "bytes 0-0/1"
    s, e = int(m.group(1)) + 16, int(m.group(2)) + 16
    return "bytes %d-%d/%s" % (s, e, m.group(3))


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def handle_error(self, request, client_address):
        # Broken connections are the point of this server: no tracebacks.
        pass


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--upstream", required=True)
    ap.add_argument("--ca", required=True)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--port-file", required=True)
    ap.add_argument("--log")
    a = ap.parse_args()

    from urllib.parse import urlsplit
    srv = Server(("127.0.0.1", a.port), Handler)
    srv.up = urlsplit(a.upstream)
    srv.up_ctx = ssl.create_default_context(cafile=a.ca)
    srv.state = State()
    srv.local = threading.local()
    srv.logf = open(a.log, "a") if a.log else None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(a.cert, a.key)
    # The handshake happens in the handler's thread, not in accept().
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True, do_handshake_on_connect=False)
    tmp = a.port_file + ".tmp"
    with open(tmp, "w") as pf:
        pf.write("%d\n" % srv.server_address[1])
    os.rename(tmp, a.port_file)
    try:
        srv.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
