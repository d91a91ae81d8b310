"""A scripted registry on 127.0.0.1 (HTTP), for what the real one cannot be made to do:
fail on cue, answer with headers it would not send. Loaded as a pytest plugin (conftest's
``pytest_plugins``): the ``fake`` fixture starts one for a test."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from e2e.nodes.https import read_body


@dataclass
class Reply:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


def error_json(code: str, message: str) -> bytes:
    return json.dumps({"errors": [{"code": code, "message": message}]}).encode()


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class FakeRegistry:
    """HTTP on 127.0.0.1: GET /v2/ answers 200 unless scripted; other routes are scripted.

    ``script(method, path, *replies)`` queues replies for a route; its last reply
    repeats. Unscripted routes answer 404. TLS handshakes (the client's first
    try with --no-tls-verify) are counted in ``tls_attempts`` and refused.
    """

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], list[Reply]] = {("GET", "/v2/"): [Reply(200)]}
        self.seen: list[Seen] = []
        self.tls_attempts = 0
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def handle(self) -> None:
                if self.connection.recv(1, socket.MSG_PEEK) == b"\x16":  # a TLS ClientHello
                    with fake.lock:
                        fake.tls_attempts += 1
                    return
                super().handle()

            def _serve(self) -> None:
                body = read_body(self)  # a streamed layer comes chunked
                path = self.path.split("?", 1)[0]
                with fake.lock:
                    fake.seen.append(Seen(self.command, self.path, dict(self.headers), body))
                    queue = fake.routes.get((self.command, path))
                    reply = (queue.pop(0) if len(queue) > 1 else queue[0]) if queue else \
                        Reply(404, body=error_json("NOT_FOUND", "no such route"))
                self.send_response(reply.status)
                for k, v in reply.headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(reply.body)))
                if reply.body:
                    self.send_header("Content-Type", "application/json")
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(reply.body)

            do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = _serve

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02},
                                       daemon=True)

    def script(self, method: str, path: str, *replies: Reply) -> None:
        with self.lock:
            self.routes[(method, path)] = list(replies)

    def count(self, method: str, path: str | None = None) -> int:
        with self.lock:
            return sum(1 for s in self.seen
                       if s.method == method and (path is None or s.path.split("?")[0] == path))

    def reset(self) -> None:
        with self.lock:
            self.seen.clear()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"


@pytest.fixture
def fake() -> Iterator[FakeRegistry]:
    reg = FakeRegistry()
    reg.thread.start()
    try:
        yield reg
    finally:
        reg.server.shutdown()
        reg.server.server_close()
        reg.thread.join(timeout=5)
