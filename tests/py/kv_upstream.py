"""A tiny line-based key-value server: the upstream of the example `kv`
protocol crate (examples/kv-protocol). Usage: kv_upstream.py PORT PASSWORD LOG

The first line of a connection must be `AUTH PASSWORD`. Then, one command per
line, words split on whitespace: GET key | SET key value... | DEL key | KEYS.
Every command it executes is appended to LOG (one line each): the test's
oracle of what the upstream really ran.
"""

import socketserver
import sys
import threading

PORT, PASSWORD, LOG = int(sys.argv[1]), sys.argv[2], sys.argv[3]
DATA = {}
LOCK = threading.Lock()


def log(line):
    with LOCK, open(LOG, "a", encoding="utf-8") as f:
        f.write(line + "\n")


class Handler(socketserver.StreamRequestHandler):
    def send(self, text):
        self.wfile.write((text + "\n").encode())
        self.wfile.flush()

    def handle(self):
        first = self.rfile.readline().decode().split()
        if first != ["AUTH", PASSWORD]:
            self.send("-ERR bad password")
            return
        self.send("+OK")
        for raw in self.rfile:
            words = raw.decode().split()
            if not words:
                continue
            op, args = words[0].upper(), words[1:]
            log(" ".join([op] + args))
            with LOCK:
                if op == "GET" and len(args) == 1:
                    value = DATA.get(args[0])
                    self.send("$nil" if value is None else "+" + value)
                elif op == "SET" and len(args) >= 2:
                    DATA[args[0]] = " ".join(args[1:])
                    self.send("+OK")
                elif op == "DEL" and len(args) == 1:
                    self.send(":%d" % (1 if DATA.pop(args[0], None) is not None else 0))
                elif op == "CONFIG" and not args:
                    # Like Redis CONFIG GET requirepass: echoes the credential.
                    self.send("+requirepass " + PASSWORD)
                elif op == "KEYS" and not args:
                    self.send("+" + " ".join(sorted(DATA)))
                else:
                    self.send("-ERR unknown command")


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


Server(("127.0.0.1", PORT), Handler).serve_forever()
