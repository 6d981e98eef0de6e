"""Real clients for the HTTP gateway tests.

  http_client.py ws URL TOKEN CAFILE MESSAGE...
      A WebSocket client (stdlib: ssl + socket, RFC 6455 framing): upgrades
      through the gateway, sends each MESSAGE as a masked text frame, then a
      4 KiB binary frame and a ping, reads the echoes, closes. Prints JSON
      {"status": .., "echoes": [..], "binary_ok": .., "pong": .., "close": ..}.

  http_client.py keepalive URL TOKEN CAFILE SECONDS
      Two GETs on one kept-alive requests.Session, SECONDS apart; prints
      JSON {"first", "second", "second_body"}.

  http_client.py conn BASE_URL CAFILE
      One kept-alive http.client connection driven from stdin: each line
      "METHOD PATH TOKEN" is sent on it and answered with one JSON line
      {"status", "body", "reconnected"} on stdout ("reconnected": the
      gateway had closed the connection, so http.client opened a new one).

  http_client.py chunked URL TOKEN CAFILE CONTENT_TYPE PAUSE FILE...
      One POST over HTTP/1.1 with a chunked body: each FILE's bytes are one
      chunk, sent PAUSE seconds after the one before (so the gateway reads
      them apart). Prints JSON {"status", "body"} (status 0: no answer).

  http_client.py requests URL TOKEN CAFILE [METHOD]
      Python requests (a real SDK-style client): prints JSON {"status",
      "headers", "body"} of one call.
"""

import base64
import json
import os
import socket
import ssl
import struct
import sys
from urllib.parse import urlsplit


def ws(url, token, cafile, messages):
    u = urlsplit(url)
    raw = socket.create_connection((u.hostname, u.port), timeout=20)
    if u.scheme == "wss" or u.scheme == "https":
        ctx = ssl.create_default_context(cafile=cafile)
        ctx.set_alpn_protocols(["http/1.1"])
        sock = ctx.wrap_socket(raw, server_hostname=u.hostname)
    else:
        sock = raw
    key = base64.b64encode(os.urandom(16)).decode()
    path = u.path + ("?" + u.query if u.query else "")
    sock.sendall(
        (
            f"GET {path} HTTP/1.1\r\nHost: {u.netloc}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            # Browsers and most libraries offer compression; the gateway must not pass it on.
            f"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
            f"Authorization: Bearer {token}\r\n\r\n"
        ).encode()
    )
    rfile = sock.makefile("rb")
    status_line = rfile.readline().decode().strip()
    status = int(status_line.split()[1])
    headers = {}
    while True:
        line = rfile.readline().decode().strip()
        if not line:
            break
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    result = {"status": status, "echoes": [], "binary_ok": False, "pong": False, "close": None}
    if status != 101:
        length = int(headers.get("content-length", "0"))
        result["body"] = rfile.read(length).decode(errors="replace")
        print(json.dumps(result))
        return

    def send(opcode, payload):
        mask = os.urandom(4)
        n = len(payload)
        header = bytes([0x80 | opcode])
        if n < 126:
            header += bytes([0x80 | n])
        elif n < 65536:
            header += bytes([0x80 | 126]) + struct.pack(">H", n)
        else:
            header += bytes([0x80 | 127]) + struct.pack(">Q", n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        sock.sendall(header + mask + masked)

    def read_exact(n):
        data = b""
        while len(data) < n:
            chunk = rfile.read(n - len(data))
            if not chunk:
                raise EOFError
            data += chunk
        return data

    def recv():
        b0, b1 = read_exact(2)
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack(">H", read_exact(2))[0]
        elif n == 127:
            n = struct.unpack(">Q", read_exact(8))[0]
        return b0 & 0x0F, read_exact(n)

    for m in messages:
        send(1, m.encode())
        op, payload = recv()
        result["echoes"].append(payload.decode())
    blob = os.urandom(4096)
    send(2, blob)
    op, payload = recv()
    result["binary_ok"] = op == 2 and payload == blob
    send(9, b"are you there")
    op, payload = recv()
    result["pong"] = op == 10 and payload == b"are you there"
    send(8, struct.pack(">H", 1000))
    try:
        op, payload = recv()
        result["close"] = struct.unpack(">H", payload[:2])[0] if op == 8 and len(payload) >= 2 else op
    except EOFError:
        result["close"] = "eof"
    print(json.dumps(result))


def with_requests(url, token, cafile, method):
    import requests

    r = requests.request(method, url, headers={"Authorization": f"Bearer {token}"}, verify=cafile, timeout=60)
    try:
        body = r.json()
    except ValueError:
        body = r.text
    print(json.dumps({"status": r.status_code, "headers": dict(r.headers), "body": body}))


def keepalive(url, token, cafile, pause):
    """Two GETs on one kept-alive connection (requests.Session), `pause` seconds apart."""
    import time

    import requests

    s = requests.Session()
    s.headers["Authorization"] = f"Bearer {token}"
    first = s.get(url, verify=cafile, timeout=30)
    time.sleep(float(pause))
    second = s.get(url, verify=cafile, timeout=30)
    print(json.dumps({"first": first.status_code, "second": second.status_code, "second_body": second.text}))


def conn(base, cafile):
    import http.client

    u = urlsplit(base)
    ctx = ssl.create_default_context(cafile=cafile)
    c = http.client.HTTPSConnection(u.hostname, u.port, context=ctx, timeout=30)
    c.connect()
    first_sock = c.sock
    reconnected = False
    for line in sys.stdin:
        parts = line.split()
        if not parts:
            continue
        method, path, token = parts
        headers = {"Authorization": f"Bearer {token}"}
        try:
            c.request(method, path, headers=headers)
            r = c.getresponse()
        except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError, ssl.SSLError):
            # The gateway closed the connection: send it again on a new one.
            c.close()
            reconnected = True
            c.request(method, path, headers=headers)
            r = c.getresponse()
        body = r.read().decode(errors="replace")
        if c.sock is not None and c.sock is not first_sock:
            reconnected = True
        print(json.dumps({"status": r.status, "body": body, "reconnected": reconnected}), flush=True)


def chunked(url, token, cafile, ctype, pause, files):
    import time

    u = urlsplit(url)
    raw = socket.create_connection((u.hostname, u.port), timeout=60)
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.set_alpn_protocols(["http/1.1"])
    sock = ctx.wrap_socket(raw, server_hostname=u.hostname)
    path = u.path + ("?" + u.query if u.query else "")
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {u.netloc}\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: {ctype}\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    try:
        sock.sendall(head.encode())
        for i, name in enumerate(files):
            if i:
                time.sleep(float(pause))
            with open(name, "rb") as f:
                data = f.read()
            sock.sendall(b"%x\r\n" % len(data) + data + b"\r\n")
        sock.sendall(b"0\r\n\r\n")
    except (ConnectionError, ssl.SSLError, OSError):
        # Answered (and closed) before the body was all sent.
        pass
    rfile = sock.makefile("rb")
    status, body = 0, ""
    try:
        status_line = rfile.readline().decode()
        status = int(status_line.split()[1])
        length = 0
        while True:
            line = rfile.readline().decode().strip()
            if not line:
                break
            k, _, v = line.partition(":")
            if k.strip().lower() == "content-length":
                length = int(v.strip())
        body = rfile.read(length).decode(errors="replace")
    except (ConnectionError, ssl.SSLError, OSError, IndexError, ValueError):
        pass
    print(json.dumps({"status": status, "body": body}))


def main():
    what = sys.argv[1]
    if what == "ws":
        ws(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:])
    elif what == "requests":
        with_requests(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5] if len(sys.argv) > 5 else "GET")
    elif what == "conn":
        conn(sys.argv[2], sys.argv[3])
    elif what == "chunked":
        chunked(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6], sys.argv[7:])
    elif what == "keepalive":
        keepalive(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5])
    else:
        sys.exit(f"unknown command {what}")


if __name__ == "__main__":
    main()
