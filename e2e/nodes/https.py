"""An HTTPS front for a `Handler`: TLS, authentication, HTTP/1.1.

`HttpsServer` is a `ThreadingHTTPServer`, one thread per connection, with
keep-alive (kubectl and urllib3 reuse connections) and chunked streaming for
watches, handing each authenticated `Request` to a `Handler`. It listens on
127.0.0.1, or on a socket the caller made (a node agent's, inside its node
host's network namespace: e2e/cluster/agent.py). TLS is real: certificates
come from e2e.services.pki and clients verify them. The TLS handshake runs in the
connection's own thread, so a stalled client cannot block accept(). With
`client_ca`, a client certificate is verified when one is offered (one from
another CA fails the handshake), as the kubelet's server does.

The kubelets' servers authenticate client certificates (e2e/cluster/agent.py).

stop() ends everything it started: it stops accepting, ends watches, shuts
idle keep-alive connections and joins every connection thread.
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import threading
import urllib.parse
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any, Protocol

from e2e.nodes.protocol import Request, Response, User
from e2e.services.pki import CertPair

__all__ = ["LOOPBACK", "Authenticator", "Handler", "HttpsServer", "cert_user"]

LOOPBACK = "127.0.0.1"
#: Idle keep-alive connections are closed after this long (seconds).
_IDLE_TIMEOUT = 120
_MAX_BODY = 16 * 1024 * 1024


class Handler(Protocol):
    """What a server hands authenticated requests to (api.Api, the kubelet API)."""

    def handle(self, req: Request) -> Response: ...


#: (Authorization header or None, the verified client certificate as
#: ssl.getpeercert() gives it, or None) -> the user, or None: unauthenticated.
Authenticator = Callable[[str | None, dict[str, Any] | None], User | None]


def cert_user(cert: dict[str, Any] | None) -> User | None:
    """The user a verified client certificate names: CN the name, O the groups
    (as Kubernetes' x509 authenticator maps them)."""
    if not cert:
        return None
    names: dict[str, list[str]] = {}
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            names.setdefault(key, []).append(value)
    common = names.get("commonName") or [""]
    if not common[0]:
        return None
    return User(common[0], (*names.get("organizationName", []), "system:authenticated"))


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = False
    block_on_close = True
    allow_reuse_address = True

    def __init__(self, port: int, owner: HttpsServer,
                 listening: socket.socket | None = None) -> None:
        self.owner = owner
        if listening is None:
            super().__init__((LOOPBACK, port), _Handler)
            return
        # A socket made elsewhere (e.g. in another network namespace): serve on it.
        super().__init__(listening.getsockname()[:2], _Handler, bind_and_activate=False)
        self.socket.close()
        self.socket = listening

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

    def send_response(self, code: int, message: str | None = None) -> None:
        # BaseHTTPRequestHandler's, with the Server header only when there is one
        # (Go servers, the kubelet's included, send none).
        self.log_request(code)
        self.send_response_only(code, message)
        if self.server.owner.server_header:
            self.send_header("Server", self.server.owner.server_header)
        self.send_header("Date", self.date_time_string())

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
            self._send(Response(413, {
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": "the request body is too large", "reason": "RequestEntityTooLarge",
                "code": 413}))
            return
        body = self._read_body()
        url = urllib.parse.urlsplit(self.path)
        peer = self.connection.getpeercert() if hasattr(self.connection, "getpeercert") \
            else None
        user = owner.authenticator(self.headers.get("Authorization"), peer or None)
        if user is None and url.path not in owner.public_paths:
            self._send(owner.unauthorized())
            return
        request = Request(
            method=self.command,
            # Decoded, as Go's URL.Path is: the official client sends a proxy
            # subpath as one %2F-escaped path parameter.
            path=urllib.parse.unquote(url.path),
            query=urllib.parse.parse_qs(url.query, keep_blank_values=True),
            headers=self.headers,  # type: ignore[arg-type]  # case-insensitive Message
            body=body,
            user=user or User("system:anonymous", ("system:unauthenticated",)),
            connection_closed=self._client_gone,
        )
        self._send(owner.handler.handle(request))

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


class HttpsServer:
    """An HTTPS server for a `Handler`, on 127.0.0.1 or a given socket.

    handler: answers authenticated requests.
    tls: server certificate and key (PEM) from e2e.services.pki.
    authenticator: who a request is (None: 401, except on `public_paths`).
    unauthorized: the 401 response.
    client_ca: CA file verifying client certificates (None: none are asked for).
    port: 0 for a free port chosen by the kernel.
    listening: a bound, listening socket to serve on instead of 127.0.0.1:port.
    log: file for the access log (None: no log).
    name: the thread names' prefix; server_header: the `Server:` header.
    """

    def __init__(
        self,
        handler: Handler,
        tls: CertPair,
        *,
        authenticator: Authenticator,
        unauthorized: Callable[[], Response],
        public_paths: tuple[str, ...] = (),
        client_ca: Path | None = None,
        port: int = 0,
        listening: socket.socket | None = None,
        log: Path | None = None,
        name: str = "sim-https",
        server_header: str = "kube-apiserver-sim",
    ) -> None:
        self.handler = handler
        self.authenticator = authenticator
        self.unauthorized = unauthorized
        self.public_paths = public_paths
        self.server_header = server_header
        self._name = name
        self._context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._context.load_cert_chain(tls.cert, tls.key)
        if client_ca is not None:
            # Asked for, verified if given: absent, the request is anonymous (401).
            self._context.verify_mode = ssl.CERT_OPTIONAL
            self._context.load_verify_locations(cafile=str(client_ca))
        # HTTP/2 is not implemented: say so in ALPN so Go clients stay on 1.1.
        self._context.set_alpn_protocols(["http/1.1"])
        self._port = port
        self._listening = listening
        self._log_path = log
        self._log_file: IO[str] | None = None
        self._log_lock = threading.Lock()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()
        self._conn_lock = threading.Lock()
        #: TLS connections accepted so far (handshake done): what a client's
        #: connection reuse saves shows here (bench/pod_bench.py reads it).
        self.connections_accepted = 0
        self._stopping = False

    @property
    def port(self) -> int:
        """The listening port (after start())."""
        if self._httpd is None:
            raise RuntimeError("server not started")
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        """`https://ADDRESS:PORT`."""
        if self._httpd is None:
            raise RuntimeError("server not started")
        host = self._httpd.server_address[0]
        return f"https://{host if isinstance(host, str) else host.decode()}:{self.port}"

    def start(self) -> None:
        """Listen and serve in a background thread; returns once listening."""
        self._stopping = False
        if self._log_path is not None:
            self._log_file = open(self._log_path, "a", encoding="utf-8")  # noqa: SIM115
        self._httpd = _HTTPServer(self._port, self, self._listening)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1},
            name=f"{self._name}-{self.port}",
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
            self.connections_accepted += 1
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
