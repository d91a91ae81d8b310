"""The HTTPS server of a node's kubelet API: TLS, client certificates, HTTP/1.1.

`HttpsServer` is a `ThreadingHTTPServer`, one thread per connection, with
keep-alive (the API server's node proxy and urllib3 reuse connections), on a
socket the caller made (a node agent's, inside its node host's network
namespace: e2e/cluster/agent.py). TLS is real: certificates come from
e2e.services.pki and clients verify them. The TLS handshake runs in the
connection's own thread, so a stalled client cannot block accept(). A client
certificate is verified when one is offered (one from another CA fails the
handshake), as the kubelet's server does; without one the request is 401.

stop() ends everything it started: it stops accepting, shuts idle keep-alive
connections and joins every connection thread.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import urllib.parse
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any

from e2e.nodes.protocol import Request, Response, User
from e2e.services.pki import CertPair

__all__ = ["HttpsServer", "cert_user", "read_body"]

#: Idle keep-alive connections are closed after this long (seconds).
_IDLE_TIMEOUT = 120
_UNAUTHORIZED = Response(401, b"Unauthorized\n", "text/plain; charset=utf-8")


def cert_user(cert: dict[str, Any] | None) -> User | None:
    """The user a verified client certificate names: CN the name, O the groups
    (as Kubernetes' x509 authenticator maps them)."""
    names: dict[str, list[str]] = {}
    for rdn in (cert or {}).get("subject", ()):
        for key, value in rdn:
            names.setdefault(key, []).append(value)
    common = names.get("commonName") or [""]
    if not common[0]:
        return None
    return User(common[0], (*names.get("organizationName", []), "system:authenticated"))


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = False
    block_on_close = True

    def __init__(self, listening: socket.socket, owner: HttpsServer) -> None:
        self.owner = owner
        # A socket made elsewhere (in another network namespace): serve on it.
        super().__init__(listening.getsockname()[:2], _Handler, bind_and_activate=False)
        self.socket.close()
        self.socket = listening

    def finish_request(self, request: Any, client_address: Any) -> None:
        # Runs in the connection's thread: handshake here, not in accept().
        self.owner._serve_connection(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hangs up mid-request is not the server's problem.
        pass


def read_body(request: BaseHTTPRequestHandler) -> bytes:
    """The body of the request being handled, sent with a Content-Length or chunked (its
    trailers, if any, read and dropped)."""
    if "chunked" in (request.headers.get("Transfer-Encoding") or "").lower():
        body = bytearray()
        while size := int(request.rfile.readline().split(b";")[0].strip() or b"0", 16):
            body += request.rfile.read(size)
            request.rfile.readline()
        while request.rfile.readline() not in (b"\r\n", b"\n", b""):
            pass  # trailers
        return bytes(body)
    return request.rfile.read(int(request.headers.get("Content-Length") or 0))


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = _IDLE_TIMEOUT
    server: _HTTPServer

    def send_response(self, code: int, message: str | None = None) -> None:
        # BaseHTTPRequestHandler's without the Server header (the kubelet sends none).
        self.log_request(code)
        self.send_response_only(code, message)
        self.send_header("Date", self.date_time_string())

    def do_GET(self) -> None:
        # Nothing the kubelet API takes has a body, but what a client sends must be
        # read for the connection to stay usable (the proxy may send it chunked).
        read_body(self)
        url = urllib.parse.urlsplit(self.path)
        peer = self.connection.getpeercert() if hasattr(self.connection, "getpeercert") \
            else None
        user = cert_user(peer)
        if user is None:
            self._send(_UNAUTHORIZED)
            return
        # Decoded, as Go's URL.Path is.
        self._send(self.server.owner.handler(Request(
            self.command, urllib.parse.unquote(url.path),
            urllib.parse.parse_qs(url.query, keep_blank_values=True), user)))

    do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        self.server.owner._log(f"{self.address_string()} {format % args}")

    def _send(self, response: Response) -> None:
        payload = response.payload()
        self.send_response(response.code)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Cache-Control", "no-cache, private")
        for key, value in response.headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


class HttpsServer:
    """An HTTPS server for `handler` on the listening socket `listening`.

    tls: server certificate and key (PEM) from e2e.services.pki.
    client_ca: CA file verifying client certificates.
    log: file for the access log; name: the serving thread's name.
    """

    def __init__(self, handler: Callable[[Request], Response], tls: CertPair, *,
                 client_ca: Path, listening: socket.socket, log: Path, name: str) -> None:
        self.handler = handler
        self._name = name
        self._context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._context.load_cert_chain(tls.cert, tls.key)
        # Asked for, verified if given: absent, the request is anonymous (401).
        self._context.verify_mode = ssl.CERT_OPTIONAL
        self._context.load_verify_locations(cafile=str(client_ca))
        # HTTP/2 is not implemented: say so in ALPN so Go clients stay on 1.1.
        self._context.set_alpn_protocols(["http/1.1"])
        self._listening = listening
        self._log_path = log
        self._log_file: IO[str] | None = None
        self._log_lock = threading.Lock()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()
        self._conn_lock = threading.Lock()
        self._stopping = False

    def start(self) -> None:
        """Serve in a background thread."""
        self._stopping = False
        self._log_file = open(self._log_path, "a", encoding="utf-8")  # noqa: SIM115
        self._httpd = _HTTPServer(self._listening, self)
        self._thread = threading.Thread(target=self._httpd.serve_forever,
                                        kwargs={"poll_interval": 0.1}, name=self._name)
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and join every thread."""
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
        with self._log_lock:
            if self._log_file is not None:
                self._log_file.write(line + "\n")
                self._log_file.flush()
