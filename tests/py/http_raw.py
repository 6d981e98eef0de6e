"""Raw bytes to the gateway's HTTPS port, for malformed and hostile input.

  http_raw.py PORT CAFILE MODE [ARG]

MODE:
  send            send stdin as is, read the answer until the gateway closes
  plain           send stdin over plain TCP (no TLS)
  slowloris N     send a request head one header every second, for N seconds
                  at most; report when the gateway closed the connection
Prints JSON {"response": first 2000 bytes as text, "closed_after": seconds}.
"""

import json
import socket
import ssl
import sys
import time


def connect(port, cafile, tls=True):
    raw = socket.create_connection(("127.0.0.1", port), timeout=30)
    if not tls:
        return raw
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx.wrap_socket(raw, server_hostname="127.0.0.1")


def read_all(sock, limit=30):
    data = b""
    start = time.time()
    sock.settimeout(limit)
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except (socket.timeout, ConnectionError, ssl.SSLError, OSError):
        pass
    return data, time.time() - start


def main():
    port, cafile, mode = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    start = time.time()
    if mode in ("send", "plain"):
        payload = sys.stdin.buffer.read()
        sock = connect(port, cafile, tls=(mode == "send"))
        try:
            sock.sendall(payload)
        except (ConnectionError, ssl.SSLError, OSError):
            pass
        data, _ = read_all(sock)
    elif mode == "slowloris":
        limit = float(sys.argv[4])
        sock = connect(port, cafile)
        sock.sendall(b"GET /crm/echo HTTP/1.1\r\nHost: x\r\n")
        data = b""
        i = 0
        while time.time() - start < limit:
            try:
                sock.sendall(f"X-Slow-{i}: {i}\r\n".encode())
            except (ConnectionError, ssl.SSLError, OSError):
                break
            sock.settimeout(1.0)
            try:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
            except socket.timeout:
                pass
            except (ConnectionError, ssl.SSLError, OSError):
                break
            i += 1
    else:
        sys.exit(f"unknown mode {mode}")
    print(json.dumps({"response": data[:2000].decode(errors="replace"), "closed_after": time.time() - start}))


if __name__ == "__main__":
    main()
