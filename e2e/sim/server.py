"""The HTTPS front of the simulated API server: TLS, bearer tokens, HTTP/1.1.

A `ThreadingHTTPServer` on 127.0.0.1 only, one thread per connection, with
keep-alive (kubectl and urllib3 reuse connections) and chunked streaming for
watches. TLS is real: the certificate comes from e2e.pki and clients verify it
against the CA in their kubeconfig. The TLS handshake runs in the
connection's own thread, so a stalled client cannot block accept().

Authentication: `Authorization: Bearer <token>` must name a known token, on
every path but /healthz, /livez and /readyz; anything else is 401 with a Status
body (as an API server with anonymous auth disabled answers).

stop() ends everything it started: it stops accepting, ends watches, shuts
idle keep-alive connections and joins every connection thread.
"""

from __future__ import annotations

import contextlib
import hmac
import select
import socket
import ssl
import threading
import urllib.parse
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any

from e2e.pki import CertPair
from e2e.sim.api import Api
from e2e.sim.errors import status_body, unauthorized
from e2e.sim.protocol import Request, Response, User

__all__ = ["LOOPBACK", "ApiServer"]

LOOPBACK = "127.0.0.1"
#: Idle keep-alive connections are closed after this long (seconds).
_IDLE_TIMEOUT = 120
_MAX_BODY = 16 * 1024 * 1024


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = False
    block_on_close = True
    allow_reuse_address = True

    def __init__(self, port: int, owner: ApiServer) -> None:
        self.owner = owner
        super().__init__((LOOPBACK, port), _Handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        # Runs in the connection's thread: handshake here, not in accept().
        self.owner._serve_connection(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hangs up mid-request is not the server's problem.
        pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "kube-apiserver-sim"
    sys_version = ""
    timeout = _IDLE_TIMEOUT
    server: _HTTPServer

    def do_GET(self) -> None:
        self._dispatch()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        self.server.owner._log(f"{self.address_string()} {format % args}")

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _dispatch(self) -> None:
        owner = self.server.owner
        if int(self.headers.get("Content-Length") or 0) > _MAX_BODY:
            self.close_connection = True  # the body stays unread
            self._send(Response(413, status_body(413, "RequestEntityTooLarge",
                                                 "the request body is too large")))
            return
        body = self._read_body()
        url = urllib.parse.urlsplit(self.path)
        user = owner.authenticate(self.headers.get("Authorization"))
        if user is None and url.path not in ("/healthz", "/livez", "/readyz"):
            self._send(Response(401, unauthorized().status()))
            return
        request = Request(
            method=self.command,
            path=url.path,
            query=urllib.parse.parse_qs(url.query, keep_blank_values=True),
            headers=self.headers,  # type: ignore[arg-type]  # case-insensitive Message
            body=body,
            user=user or User("system:anonymous", ("system:unauthenticated",)),
            connection_closed=self._client_gone,
        )
        self._send(owner.api.handle(request))

    def _client_gone(self) -> bool:
        # During a watch the client sends nothing: readable means it hung up
        # (EOF or a TLS close_notify).
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
        except (OSError, ValueError):
            return True
        return bool(readable)

    def _send(self, response: Response) -> None:
        self.send_response(response.code)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Cache-Control", "no-cache, private")
        for key, value in response.headers.items():
            self.send_header(key, value)
        if response.stream is None:
            payload = response.payload()
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)
            return
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for chunk in response.stream:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.wfile.write(b"0\r\n\r\n")
        finally:
            close = getattr(response.stream, "close", None)
            if close is not None:
                close()


class ApiServer:
    """HTTPS + bearer-token front for an `Api`, on 127.0.0.1.

    api: the router.
    tls: server certificate and key (PEM) from e2e.pki.
    tokens: bearer token -> user.
    port: 0 for a free port chosen by the kernel.
    log: file for the access log (None: no log).
    """

    def __init__(
        self,
        api: Api,
        tls: CertPair,
        tokens: Mapping[str, User],
        *,
        port: int = 0,
        log: Path | None = None,
    ) -> None:
        self.api = api
        self.tokens = dict(tokens)
        self._context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._context.load_cert_chain(tls.cert, tls.key)
        # HTTP/2 is not implemented: say so in ALPN so Go clients stay on 1.1.
        self._context.set_alpn_protocols(["http/1.1"])
        self._port = port
        self._log_path = log
        self._log_file: IO[str] | None = None
        self._log_lock = threading.Lock()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()
        self._conn_lock = threading.Lock()
        self._stopping = False

    @property
    def port(self) -> int:
        """The listening port (after start())."""
        if self._httpd is None:
            raise RuntimeError("server not started")
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        """`https://127.0.0.1:PORT`."""
        return f"https://{LOOPBACK}:{self.port}"

    def authenticate(self, header: str | None) -> User | None:
        """The user a `Bearer` Authorization header names, or None."""
        scheme, _, token = (header or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        token = token.strip()
        found = None
        for known, user in self.tokens.items():
            if hmac.compare_digest(known.encode(), token.encode()):
                found = user
        return found

    def start(self) -> None:
        """Listen and serve in a background thread; returns once listening."""
        self._stopping = False
        if self._log_path is not None:
            self._log_file = open(self._log_path, "a", encoding="utf-8")  # noqa: SIM115
        self._httpd = _HTTPServer(self._port, self)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1},
            name=f"sim-apiserver-{self.port}",
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and join every thread (call after the store is closed)."""
        if self._httpd is None:
            return
        self._httpd.shutdown()
        with self._conn_lock:
            self._stopping = True
            for conn in list(self._connections):
                # The plain socket's shutdown, not SSLSocket's: wakes a thread
                # blocked reading an idle keep-alive connection.
                with contextlib.suppress(OSError):
                    socket.socket.shutdown(conn, socket.SHUT_RDWR)
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join()
        self._httpd = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def _serve_connection(self, raw: socket.socket, client_address: Any) -> None:
        raw.settimeout(_IDLE_TIMEOUT)
        try:
            conn = self._context.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError) as e:
            self._log(f"{client_address[0]} TLS handshake failed: {e}")
            return
        with self._conn_lock:
            if self._stopping:
                conn.close()
                return
            self._connections.add(conn)
        try:
            assert self._httpd is not None
            _Handler(conn, client_address, self._httpd)
        except (ConnectionError, ssl.SSLError, TimeoutError, OSError):
            pass
        finally:
            with self._conn_lock:
                self._connections.discard(conn)
            with contextlib.suppress(OSError):
                conn.close()

    def _log(self, line: str) -> None:
        if self._log_file is None:
            return
        with self._log_lock:
            self._log_file.write(line + "\n")
            self._log_file.flush()

