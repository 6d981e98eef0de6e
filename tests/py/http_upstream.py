"""A real HTTP upstream for the HTTP gateway tests (stdlib only).

Usage: http_upstream.py PORT LOG_FILE [CERT KEY]

Every request's method, path, query and headers are appended to LOG_FILE as
one JSON line before it is answered, so a test can see exactly what reached
the upstream (injected credentials included) without the gateway's response
redaction in between.

Endpoints:
  /echo            JSON: method, path, query, headers, body length (echoes credentials)
  /customers       JSON with emails, card numbers and a `password` key
  /text            text/plain with an email address
  /large?mb=N      N MiB of text/plain, streamed in 64 KiB chunks
  /upload          reads the request body, answers its length and sha256
  /act             a framework stand-in: reads the whole body (a request whose body
                   ends early is never dispatched), honours a POST's `_method` in a
                   form or untyped body (as Rack) or a JSON object (as Laravel), and
                   logs {"acted": METHOD, "at": "/act", "length": N} once it has run
  /slow?s=N        answers after N seconds
  /gzip            a gzip-encoded JSON body whatever Accept-Encoding says
  /redirect        302 to http://<its own host>/echo?from=redirect
  /ws[?deflate=1]   WebSocket echo (text and binary frames, ping, close); with deflate=1
                   the 101 names permessage-deflate whatever the client offered
  /raw?type=T&body=B[&disposition=D][&partial=1]  answers B (URL-decoded) with
                   Content-Type T, as is (and Content-Disposition D); `Range: bytes=N-`
                   (or partial=1: bytes=1-) is answered 206 with that part
  /reason          200 whose reason phrase echoes the Authorization header
  anything else    JSON {"ok": true, "path": ...}
"""

import base64
import gzip
import hashlib
import json
import socket
import ssl
import struct
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
LOG_LOCK = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def record(self):
        url = urlsplit(self.path)
        entry = {
            "method": self.command,
            "path": url.path,
            "query": url.query,
            "headers": [[k, v] for k, v in self.headers.items()],
        }
        with LOG_LOCK, open(self.server.log_file, "a") as f:
            f.write(json.dumps(entry) + "\n")
        return url

    def send_json(self, value, status=200):
        body = json.dumps(value).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def read_body(self):
        length = int(self.headers.get("Content-Length") or 0)
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            total, digest = 0, hashlib.sha256()
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    break
                remaining = size
                while remaining:
                    chunk = self.rfile.read(min(remaining, 1 << 16))
                    digest.update(chunk)
                    total += len(chunk)
                    remaining -= len(chunk)
                self.rfile.readline()
            return total, digest.hexdigest()
        total, digest = 0, hashlib.sha256()
        while total < length:
            chunk = self.rfile.read(min(length - total, 1 << 16))
            if not chunk:
                break
            digest.update(chunk)
            total += len(chunk)
        return total, digest.hexdigest()

    def read_whole(self):
        """The whole body, or None when the connection ended before it did."""
        data = bytearray()
        try:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                while True:
                    line = self.rfile.readline()
                    if not line.endswith(b"\n"):
                        return None
                    size = int(line.strip().split(b";")[0], 16)
                    if size == 0:
                        return bytes(data) if self.rfile.readline().endswith(b"\n") else None
                    chunk = self.rfile.read(size)
                    if len(chunk) < size or not self.rfile.readline().endswith(b"\n"):
                        return None
                    data += chunk
            length = int(self.headers.get("Content-Length") or 0)
            chunk = self.rfile.read(length)
            return chunk if len(chunk) == length else None
        except (ValueError, OSError):
            return None

    def act(self, url):
        data = self.read_whole()
        if data is None:
            # Never dispatched: the request was not whole.
            self.close_connection = True
            return
        method = self.command
        if method == "POST":
            ctype = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
            override = None
            if ctype in ("", "application/x-www-form-urlencoded"):
                override = parse_qs(data.decode("latin-1")).get("_method", [None])[0]
            elif ctype == "application/json":
                try:
                    doc = json.loads(data)
                    override = doc.get("_method") if isinstance(doc, dict) else None
                except ValueError:
                    pass
            if override:
                method = str(override).upper()
        with LOG_LOCK, open(self.server.log_file, "a") as f:
            f.write(json.dumps({"acted": method, "at": url.path, "length": len(data)}) + "\n")
        self.send_json({"acted": method, "length": len(data)})

    def handle_any(self):
        url = self.record()
        query = parse_qs(url.query)
        if url.path == "/echo":
            length, _ = self.read_body()
            self.send_json(
                {
                    "method": self.command,
                    "path": url.path,
                    "query": url.query,
                    "headers": dict(self.headers.items()),
                    "body_length": length,
                }
            )
        elif url.path == "/customers":
            self.send_json(
                {
                    "customers": [
                        {"name": "Ada", "email": "ada@example.com", "card": "4111 1111 1111 1111", "password": "hunter22"},
                        {"name": "Bob", "email": "bob@example.org", "card": "5500 0000 0000 0004", "password": "swordfish"},
                    ],
                    "count": 2,
                }
            )
        elif url.path == "/reason":
            body = b"{}"
            self.send_response(200, "OK " + self.headers.get("Authorization", ""))
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif url.path == "/raw":
            body = query.get("body", [""])[0].encode()
            wanted = self.headers.get("Range") or ("bytes=1-" if "partial" in query else "")
            start = int(wanted[6:].split("-")[0]) if wanted.startswith("bytes=") else None
            if start is not None and start < len(body):
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                body = body[start:]
            else:
                self.send_response(200)
            self.send_header("Content-Type", query.get("type", ["application/json"])[0])
            self.send_header("Content-Length", str(len(body)))
            if "disposition" in query:
                self.send_header("Content-Disposition", query["disposition"][0])
            self.end_headers()
            self.wfile.write(body)
        elif url.path == "/text":
            body = b"contact: ada@example.com\nall good\n"
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif url.path == "/large":
            mib = int(query.get("mb", ["1"])[0])
            line = (b"0123456789abcdefghijklmnopqrstuvwxyz" * 2 + b"\n")
            chunk = (line * (65536 // len(line) + 1))[:65536]
            self.send_response(200)
            self.send_header("Content-Type", query.get("type", ["text/plain"])[0])
            self.send_header("Content-Length", str(mib * 1024 * 1024))
            self.end_headers()
            for _ in range(mib * 16):
                self.wfile.write(chunk)
        elif url.path == "/act":
            self.act(url)
        elif url.path == "/upload":
            length, digest = self.read_body()
            self.send_json({"length": length, "sha256": digest})
        elif url.path == "/slow":
            time.sleep(float(query.get("s", ["5"])[0]))
            self.send_json({"slow": True})
        elif url.path == "/gzip":
            body = gzip.compress(json.dumps({"email": "ada@example.com"}).encode())
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif url.path == "/redirect":
            host = self.headers.get("Host", "")
            self.send_response(302)
            self.send_header("Location", f"http://{host}/echo?from=redirect")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif url.path == "/ws":
            self.websocket("deflate" in query)
        else:
            self.read_body()
            self.send_json({"ok": True, "method": self.command, "path": url.path, "query": url.query})

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = handle_any

    def websocket(self, deflate=False):
        key = self.headers.get("Sec-WebSocket-Key", "")
        accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        if deflate:
            self.send_header("Sec-WebSocket-Extensions", "permessage-deflate")
        self.end_headers()
        self.wfile.flush()
        sock = self.connection
        rfile = self.rfile

        def read_exact(n):
            data = b""
            while len(data) < n:
                chunk = rfile.read(n - len(data))
                if not chunk:
                    raise EOFError
                data += chunk
            return data

        def send(opcode, payload):
            header = bytes([0x80 | opcode])
            n = len(payload)
            if n < 126:
                header += bytes([n])
            elif n < 65536:
                header += bytes([126]) + struct.pack(">H", n)
            else:
                header += bytes([127]) + struct.pack(">Q", n)
            sock.sendall(header + payload)

        try:
            while True:
                b0, b1 = read_exact(2)
                opcode = b0 & 0x0F
                n = b1 & 0x7F
                if n == 126:
                    n = struct.unpack(">H", read_exact(2))[0]
                elif n == 127:
                    n = struct.unpack(">Q", read_exact(8))[0]
                mask = read_exact(4) if b1 & 0x80 else None
                payload = bytearray(read_exact(n))
                if mask:
                    for i in range(n):
                        payload[i] ^= mask[i % 4]
                if opcode == 8:
                    send(8, bytes(payload[:2]) or b"\x03\xe8")
                    break
                if opcode == 9:
                    send(10, bytes(payload))
                elif opcode in (1, 2):
                    send(opcode, bytes(payload))
        except (EOFError, ConnectionError, OSError):
            pass
        self.close_connection = True


def main():
    port = int(sys.argv[1])
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    server.log_file = sys.argv[2]
    if len(sys.argv) > 4:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(sys.argv[3], sys.argv[4])
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
