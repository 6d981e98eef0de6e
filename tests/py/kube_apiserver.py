"""A stand-in Kubernetes API server for the e2e tests (the real one cannot run here).

usage: kube_apiserver.py --cert CHAIN.pem --key KEY.pem --token-env VAR --log FILE

Serves, over TLS on 127.0.0.1 (a free port, printed as "LISTENING <port>"), the API
shapes kubectl reads: /version, legacy discovery (/api, /api/v1, /apis), pods, secrets
and configmaps in namespace "default" (list, get, delete; JSON, YAML on request, and the
meta.k8s.io Table kubectl asks for), watch streams, pod logs (also --follow), and exec over WebSocket
(v5/v4.channel.k8s.io) that runs nothing but answers deterministically:
"ran: <argv>" on stdout, exit status 0 (or 3 for the command `false`).

Every request must carry `Authorization: Bearer $VAR` (401 Status otherwise), or with
--client-ca a client certificate from that CA with CN sluice-gateway; each
request is logged to FILE as a JSON line with the Authorization header it carried, so the
tests can check what credential reached the upstream.

Only the standard library: the WebSocket handshake and framing are written out here.
"""

import argparse
import base64
import hashlib
import json
import os
import socket
import ssl
import struct
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
CREATED = "2026-01-01T00:00:00Z"
LOCK = threading.Lock()


def b64(s):
    return base64.b64encode(s.encode()).decode()


def meta(name, kind, uid, extra=None):
    m = {
        "name": name,
        "namespace": "default",
        "uid": uid,
        "resourceVersion": "100",
        "creationTimestamp": CREATED,
    }
    if extra:
        m.update(extra)
    return m


def pod(name, uid):
    return {
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": meta(name, "Pod", uid, {"labels": {"app": "web"}}),
        "spec": {
            "containers": [{"name": "app", "image": "nginx:1.27"}],
            "nodeName": "node-1",
        },
        "status": {
            "phase": "Running",
            "podIP": "10.0.0.7",
            "containerStatuses": [
                {"name": "app", "ready": True, "restartCount": 0, "image": "nginx:1.27",
                 "imageID": "", "started": True, "state": {"running": {"startedAt": CREATED}}}
            ],
        },
    }


SECRET_DATA = {"username": "app", "password": "s3cr3t-Pa55w0rd!"}


def secret():
    applied = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "db-credentials", "namespace": "default"},
        "stringData": dict(SECRET_DATA),
        "type": "Opaque",
    }
    return {
        "kind": "Secret",
        "apiVersion": "v1",
        "metadata": meta(
            "db-credentials",
            "Secret",
            "6b1f7c1e-0000-4000-8000-000000000002",
            {"annotations": {
                "kubectl.kubernetes.io/last-applied-configuration": json.dumps(applied) + "\n"
            }},
        ),
        "data": {k: b64(v) for k, v in SECRET_DATA.items()},
        "type": "Opaque",
    }


def configmap():
    return {
        "kind": "ConfigMap",
        "apiVersion": "v1",
        "metadata": meta("app-config", "ConfigMap", "6b1f7c1e-0000-4000-8000-000000000003"),
        "data": {"ADMIN_EMAIL": "ops.lead@example.com", "LOG_LEVEL": "info"},
    }


STATE = {
    "pods": {
        "web-1": pod("web-1", "6b1f7c1e-0000-4000-8000-000000000010"),
        "web-2": pod("web-2", "6b1f7c1e-0000-4000-8000-000000000011"),
    },
    "secrets": {"db-credentials": secret()},
    "serviceaccounts": {"default": {"kind": "ServiceAccount", "apiVersion": "v1",
                                    "metadata": meta("default", "ServiceAccount",
                                                     "6b1f7c1e-0000-4000-8000-000000000020")}},
    "configmaps": {"app-config": configmap()},
}
KINDS = {"pods": "Pod", "secrets": "Secret", "configmaps": "ConfigMap",
         "serviceaccounts": "ServiceAccount"}
# What `kubectl create token` would get: a credential for the API server itself.
MINTED_TOKEN = "eyJhbGciOiJSUzI1NiIsImtpZCI6InN0YW5kaW4ifQ.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6ZGVmYXVsdDpkZWZhdWx0In0.bWludGVkLXNpZ25hdHVyZQ"

RESOURCES = {
    "kind": "APIResourceList",
    "apiVersion": "v1",
    "groupVersion": "v1",
    "resources": [
        {"name": "pods", "singularName": "pod", "namespaced": True, "kind": "Pod",
         "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
         "shortNames": ["po"], "categories": ["all"]},
        {"name": "pods/exec", "singularName": "", "namespaced": True, "kind": "PodExecOptions",
         "verbs": ["create", "get"]},
        {"name": "pods/log", "singularName": "", "namespaced": True, "kind": "Pod", "verbs": ["get"]},
        {"name": "secrets", "singularName": "secret", "namespaced": True, "kind": "Secret",
         "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]},
        {"name": "configmaps", "singularName": "configmap", "namespaced": True, "kind": "ConfigMap",
         "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
         "shortNames": ["cm"]},
        {"name": "serviceaccounts", "singularName": "serviceaccount", "namespaced": True,
         "kind": "ServiceAccount", "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
         "shortNames": ["sa"]},
        {"name": "serviceaccounts/token", "singularName": "", "namespaced": True,
         "group": "authentication.k8s.io", "version": "v1", "kind": "TokenRequest", "verbs": ["create"]},
        {"name": "namespaces", "singularName": "namespace", "namespaced": False, "kind": "Namespace",
         "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"], "shortNames": ["ns"]},
    ],
}


def column(name, typ="string", fmt=""):
    return {"name": name, "type": typ, "format": fmt, "description": name, "priority": 0}


def table(resource, objects):
    if resource == "pods":
        cols = [column("Name", fmt="name"), column("Ready"), column("Status"),
                column("Restarts", "string"), column("Age")]
        cells = lambda o: [o["metadata"]["name"], "1/1", o["status"]["phase"], "0", "1d"]
    elif resource == "secrets":
        # A printer column beyond the built-in ones (as a CRD or an aggregated API may
        # add) that shows a value: the gateway must mask cells it does not know.
        cols = [column("Name", fmt="name"), column("Type"), column("Data", "integer"),
                column("Age"), column("Preview")]
        cells = lambda o: [o["metadata"]["name"], o.get("type", "Opaque"), len(o.get("data", {})), "1d",
                           SECRET_DATA["password"]]
    else:
        cols = [column("Name", fmt="name"), column("Data", "integer"), column("Age")]
        cells = lambda o: [o["metadata"]["name"], len(o.get("data", {})), "1d"]
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": "100"},
        "columnDefinitions": cols,
        # The whole object rides along (includeObject=Object), values included.
        "rows": [{"cells": cells(o), "object": o} for o in objects],
    }


def to_yaml(value, indent=0):
    """Block-style YAML; scalars as JSON (a JSON string is a valid YAML scalar)."""
    pad = "  " * indent
    out = []
    if isinstance(value, dict):
        if not value:
            return pad + "{}\n"
        for k, v in value.items():
            if isinstance(v, (dict, list)) and v:
                out.append(f"{pad}{json.dumps(k)}:\n{to_yaml(v, indent + 1)}")
            else:
                out.append(f"{pad}{json.dumps(k)}: {json.dumps(v)}\n")
    elif isinstance(value, list):
        if not value:
            return pad + "[]\n"
        for v in value:
            if isinstance(v, (dict, list)) and v:
                inner = to_yaml(v, indent + 1).lstrip()
                out.append(f"{pad}- {inner}")
            else:
                out.append(f"{pad}- {json.dumps(v)}\n")
    else:
        out.append(f"{pad}{json.dumps(value)}\n")
    return "".join(out)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "kube-standin/1.32"

    def log_message(self, fmt, *args):
        pass

    def setup(self):
        # Headers and body go out as separate writes: without TCP_NODELAY the body
        # waits for the client's delayed ACK (~40 ms per response).
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().setup()

    # --- plumbing -------------------------------------------------------------------

    def record(self):
        entry = {
            "method": self.command,
            "path": self.path,
            "authorization": self.headers.get("Authorization"),
            "accept": self.headers.get("Accept"),
            "upgrade": self.headers.get("Upgrade"),
            "range": self.headers.get("Range"),
            "client_cn": self.client_cn(),
            "impersonation": sorted(k for k in self.headers.keys()
                                    if k.lower().startswith("impersonate-")),
        }
        with LOCK, open(self.server.log_path, "a") as f:
            f.write(json.dumps(entry) + "\n")

    def send_json(self, code, doc, ctype="application/json"):
        body = json.dumps(doc).encode()
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def status(self, code, reason, message):
        self.send_json(code, {"kind": "Status", "apiVersion": "v1", "metadata": {},
                              "status": "Failure", "message": message, "reason": reason,
                              "code": code})

    def client_cn(self):
        cert = self.connection.getpeercert() or {}
        for rdn in cert.get("subject", ()):
            for key, value in rdn:
                if key == "commonName":
                    return value
        return None

    def authorized(self):
        if self.server.client_ca:
            # Client-certificate mode: the TLS layer already required a certificate
            # from the client CA; only the gateway's is accepted.
            if self.client_cn() != "sluice-gateway":
                self.status(401, "Unauthorized", "Unauthorized")
                return False
            return True
        want = "Bearer " + self.server.token
        if self.headers.get("Authorization") != want:
            self.status(401, "Unauthorized", "Unauthorized")
            return False
        return True

    def body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def respond_object(self, obj, resource):
        accept = self.headers.get("Accept") or ""
        if "as=Table" in accept:
            self.send_json(200, table(resource, [obj]))
        elif accept.startswith("application/yaml"):
            body = to_yaml(obj).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/yaml")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        else:
            self.send_json(200, obj)

    # --- routes ---------------------------------------------------------------------

    def route(self):
        self.record()
        if not self.authorized():
            return
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query, keep_blank_values=True)
        parts = [p for p in url.path.split("/") if p]
        if parts == ["version"]:
            return self.send_json(200, {"major": "1", "minor": "32", "gitVersion": "v1.32.0",
                                        "gitCommit": "0000000", "gitTreeState": "clean",
                                        "buildDate": CREATED, "goVersion": "go1.23.0",
                                        "compiler": "gc", "platform": "linux/amd64"})
        if parts == ["api"]:
            return self.send_json(200, {"kind": "APIVersions", "versions": ["v1"],
                                        "serverAddressByClientCIDRs": [
                                            {"clientCIDR": "0.0.0.0/0",
                                             "serverAddress": "127.0.0.1:6443"}]})
        if parts == ["apis"]:
            return self.send_json(200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": []})
        if parts == ["api", "v1"]:
            return self.send_json(200, RESOURCES)
        if len(parts) >= 5 and parts[:4] == ["api", "v1", "namespaces", "default"]:
            resource = parts[4]
            if resource not in STATE:
                return self.status(404, "NotFound", f"the server could not find the requested resource")
            name = parts[5] if len(parts) > 5 else None
            sub = parts[6] if len(parts) > 6 else None
            if sub == "exec":
                return self.exec(query)
            if sub == "token" and resource == "serviceaccounts" and self.command == "POST":
                self.body()
                return self.send_json(201, {
                    "kind": "TokenRequest", "apiVersion": "authentication.k8s.io/v1",
                    "metadata": {"name": name, "namespace": "default", "creationTimestamp": None},
                    "spec": {"audiences": ["https://kubernetes.default.svc"], "expirationSeconds": 3600},
                    "status": {"token": MINTED_TOKEN, "expirationTimestamp": "2026-01-01T01:00:00Z"},
                })
            if sub == "log" and resource == "pods" and name in STATE["pods"]:
                return self.log(name, query)
            if (sub == "ephemeralcontainers" and resource == "pods" and name in STATE["pods"]
                    and self.command in ("PATCH", "PUT")):
                # kubectl debug: the pod with the new ephemeral containers.
                try:
                    patch = json.loads(self.body() or b"{}")
                except ValueError:
                    return self.status(400, "BadRequest", "the body is not JSON")
                added = (patch.get("spec") or {}).get("ephemeralContainers") or [] \
                    if isinstance(patch, dict) else [op.get("value") for op in patch]
                obj = json.loads(json.dumps(STATE["pods"][name]))
                obj["spec"].setdefault("ephemeralContainers", []).extend(added)
                return self.send_json(200, obj)
            if sub is not None:
                return self.status(404, "NotFound", "no such subresource")
            return self.resource(resource, name, query)
        return self.status(404, "NotFound", "the server could not find the requested resource")

    def resource(self, resource, name, query):
        kind = KINDS[resource]
        objects = STATE[resource]
        if self.command in ("GET", "HEAD"):
            if query.get("watch", ["false"])[0] not in ("0", "false"):
                return self.watch(resource)
            if name is None:
                items = list(objects.values())
                selector = query.get("fieldSelector", [""])[0]
                if selector.startswith("metadata.name="):
                    items = [o for o in items if o["metadata"]["name"] == selector.split("=", 1)[1]]
                accept = self.headers.get("Accept") or ""
                if "as=Table" in accept:
                    return self.send_json(200, table(resource, items))
                listing = {"kind": kind + "List", "apiVersion": "v1",
                           "metadata": {"resourceVersion": "100"},
                           "items": [{k: v for k, v in o.items() if k not in ("kind", "apiVersion")}
                                     for o in items]}
                return self.respond_object(listing, resource)
            if name not in objects:
                return self.status(404, "NotFound", f'{resource} "{name}" not found')
            return self.respond_object(objects[name], resource)
        if self.command == "DELETE" and name is not None:
            self.body()
            with LOCK:
                obj = objects.pop(name, None)
            if obj is None:
                return self.status(404, "NotFound", f'{resource} "{name}" not found')
            return self.send_json(200, obj)
        if self.command == "POST" and name is None:
            try:
                obj = json.loads(self.body() or b"{}")
            except ValueError:
                return self.status(400, "BadRequest", "the body is not JSON")
            new_name = (obj.get("metadata") or {}).get("name")
            if not new_name:
                return self.status(422, "Invalid", "metadata.name is required")
            obj.setdefault("metadata", {}).update(meta(new_name, kind, "6b1f7c1e-0000-4000-8000-0000000000ff"))
            if kind == "Secret":
                obj.setdefault("type", "Opaque")
            # stringData is write-only: the API server folds it into data.
            if "stringData" in obj:
                obj.setdefault("data", {}).update({k: b64(v) for k, v in obj.pop("stringData").items()})
            if "dryRun" not in query:
                with LOCK:
                    objects[new_name] = obj
            return self.send_json(201, obj)
        self.body()
        return self.status(405, "MethodNotAllowed", "the stand-in does not support this")

    def watch(self, resource):
        """One MODIFIED event per object shortly after the watch starts, then the stream
        stays open (chunked, newline-delimited JSON) for a moment and ends. Labelled
        as a real API server labels a JSON watch: plain application/json (it adds
        ;stream=watch only for other encodings)."""
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        accept = self.headers.get("Accept") or ""
        try:
            time.sleep(0.2)
            for obj in list(STATE[resource].values()):
                doc = table(resource, [obj]) if "as=Table" in accept else obj
                line = json.dumps({"type": "MODIFIED", "object": doc}).encode() + b"\n"
                # Split each event over two chunks: the gateway must reassemble lines.
                half = len(line) // 2
                for piece in (line[:half], line[half:]):
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                    self.wfile.flush()
                    time.sleep(0.05)
            time.sleep(float(os.environ.get("KUBE_STANDIN_WATCH_SECONDS", "1.5")))
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        self.close_connection = True

    def log(self, name, query):
        """Three log lines (one with an email address); with follow=true they come one by
        one, 0.3 s apart, over a chunked stream."""
        lines = [f"{name} started\n", "contact ops.lead@example.com for access\n",
                 f"{name} ready\n"]
        follow = query.get("follow", ["false"])[0] not in ("0", "false")
        wanted = self.headers.get("Range") or ""
        if not follow and wanted.startswith("bytes="):
            body = "".join(lines).encode()
            start = min(int(wanted[6:].split("-")[0] or 0), len(body))
            self.send_response(206)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            self.send_header("Content-Length", str(len(body) - start))
            self.end_headers()
            self.wfile.write(body[start:])
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        if not follow:
            body = "".join(lines).encode()
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for line in lines:
                data = line.encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()
                time.sleep(0.3)
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        self.close_connection = True

    def exec(self, query):
        if (self.headers.get("Upgrade") or "").lower() != "websocket":
            return self.status(400, "BadRequest", "the stand-in serves exec over WebSocket only")
        offered = [p.strip() for p in (self.headers.get("Sec-WebSocket-Protocol") or "").split(",")]
        proto = next((p for p in ("v5.channel.k8s.io", "v4.channel.k8s.io") if p in offered), None)
        if proto is None:
            return self.status(400, "BadRequest", "no supported channel protocol offered")
        key = self.headers.get("Sec-WebSocket-Key") or ""
        accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        self.send_header("Sec-WebSocket-Protocol", proto)
        self.end_headers()
        self.wfile.flush()
        argv = query.get("command", [])
        out = ("ran: " + " ".join(argv) + "\n").encode()
        if argv[:2] == ["cat", "/etc/app/env"]:
            out += b"ADMIN_EMAIL=ops.lead@example.com\n"
        send_ws(self.wfile, b"\x01" + out)
        # A kubelet's status follows the output by the time the process takes
        # to exit. Sent in the same instant, kubectl (client-go) can exit 0
        # without printing the output (kubernetes/kubernetes#124571). The
        # gateway's side of frames that arrive together is tested in
        # sluice-kube (exec_output_arriving_with_its_status_and_close_goes_out_first).
        time.sleep(0.02)
        if argv == ["false"]:
            status = {"metadata": {}, "status": "Failure", "message": "command terminated with non-zero exit code",
                      "reason": "NonZeroExitCode",
                      "details": {"causes": [{"reason": "ExitCode", "message": "3"}]}}
        else:
            status = {"metadata": {}, "status": "Success"}
        send_ws(self.wfile, b"\x03" + json.dumps(status).encode())
        send_ws(self.wfile, struct.pack("!H", 1000), opcode=8)
        self.wfile.flush()
        # Drain what the client sends (its close frame) briefly, then hang up.
        try:
            self.connection.settimeout(1.0)
            self.connection.recv(4096)
        except (OSError, socket.timeout):
            pass
        self.close_connection = True

    do_GET = route
    do_HEAD = route
    do_POST = route
    do_PUT = route
    do_PATCH = route
    do_DELETE = route


def send_ws(w, payload, opcode=2):
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 127, n)
    w.write(head + payload)
    w.flush()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--token-env", required=True)
    ap.add_argument("--log", required=True)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--client-ca", help="require a client certificate from this CA instead of a token")
    args = ap.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    server.token = os.environ[args.token_env]
    server.log_path = args.log
    server.client_ca = args.client_ca
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(args.cert, args.key)
    ctx.set_alpn_protocols(["http/1.1"])
    if args.client_ca:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(args.client_ca)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    print(f"LISTENING {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
