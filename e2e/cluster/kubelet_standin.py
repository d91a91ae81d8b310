"""A stand-in for a kubelet's HTTPS API, to prove what the API server's node proxy reaches.

    python -m e2e.cluster.kubelet_standin --address A --port P --cert C --key K --ca CA

It serves what the node proxy is used for, the way the kubelet answers:

    GET  /healthz                                   200 "ok"
    POST /checkpoint/{namespace}/{pod}/{container}  200 {"items": ["<archive path>"]}
    GET  /standin/peer                              200 the client certificate's subject
                                                    and the last checkpoint request seen

Clients must present a certificate signed by CA (as a kubelet with
`--client-ca-file` requires); the API server presents its
`--kubelet-client-certificate`. This is not a node agent: it runs no pods and
writes no archive. Logs one line per request to stderr.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import ssl
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

__all__ = ["main"]

_CHECKPOINT_DIR = "/var/lib/kubelet/checkpoints"


class _Handler(BaseHTTPRequestHandler):
    server_version = "kubelet-standin"
    # The last checkpoint request, for /standin/peer (one server per process).
    last_checkpoint: ClassVar[dict[str, Any]] = {}

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, doc: Any) -> None:
        self._send(status, json.dumps(doc).encode(), "application/json")

    def _peer(self) -> dict[str, list[str]]:
        cert = self.connection.getpeercert()
        subject: dict[str, list[str]] = {}
        for rdn in (cert or {}).get("subject", ()):
            for key, value in rdn:
                subject.setdefault(key, []).append(value)
        return subject

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            self._send(200, b"ok", "text/plain; charset=utf-8")
        elif path == "/standin/peer":
            self._json(200, {"subject": self._peer(), "last_checkpoint": self.last_checkpoint})
        else:
            self._send(404, b"404 page not found\n", "text/plain; charset=utf-8")

    def do_POST(self) -> None:
        path, _, query = self.path.partition("?")
        parts = path.strip("/").split("/")
        if len(parts) != 4 or parts[0] != "checkpoint":
            self._send(404, b"404 page not found\n", "text/plain; charset=utf-8")
            return
        _, namespace, pod, container = parts
        stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        archive = f"{_CHECKPOINT_DIR}/checkpoint-{pod}_{namespace}-{container}-{stamp}.tar"
        type(self).last_checkpoint = {"path": path, "query": query,
                                      "client": self._peer().get("commonName", [])}
        self._json(200, {"items": [archive]})

    def log_message(self, format: str, *args: Any) -> None:
        sys.stderr.write(f"{self.address_string()} {format % args}\n")


def main(argv: list[str] | None = None) -> None:
    """Serve until killed."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--address", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--ca", required=True)
    a = ap.parse_args(argv)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(a.cert, a.key)
    ctx.load_verify_locations(a.ca)
    ctx.verify_mode = ssl.CERT_REQUIRED
    server = ThreadingHTTPServer((a.address, a.port), _Handler)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
