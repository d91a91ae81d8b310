"""A tiny Docker/OCI registry token server (Bearer auth), for tests.

It implements the client-facing half of the "Docker Registry v2 authentication"
flow that distribution's `auth: token` access controller expects:

    GET  /token?service=SERVICE&scope=repository:NAME:pull,push   (Basic credentials)
    POST /token   grant_type=password&username=..&password=..&service=..&scope=..

and answers `{"token": JWT, "access_token": JWT, "expires_in": N, "issued_at": ...}`,
the JWT granting every requested action. Wrong or missing credentials get a 401.

The JWT is ES256-signed (jwcrypto) by `signer` (a CertPair from e2e.services.pki)
and carries the signing certificate in its `x5c` header; distribution verifies
that chain against its `rootcertbundle` (the CA that issued `signer`), so no
libtrust `kid` is needed.

The server is stdlib `http.server` in a background thread, bound to 127.0.0.1
only, optionally over TLS. Every request is recorded (`requests`,
`request_count`, `token_count`) so tests can assert that a client really went
through the token flow.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hmac
import json
import secrets
import ssl
import threading
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from jwcrypto import jwk, jwt

from e2e.services.pki import CertPair

__all__ = ["Scope", "TokenRequest", "TokenServer", "decode_jwt", "parse_scopes"]

LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class Scope:
    """One parsed `type:name:action,action` scope, e.g. `repository:team/app:pull,push`."""

    type: str
    name: str
    actions: tuple[str, ...]


def parse_scopes(values: list[str]) -> tuple[Scope, ...]:
    """Parse `scope` parameters; each may hold several space-separated scopes. The name
    sits between the first and the last colon (actions never hold one); malformed
    entries are ignored, as a permissive token server would."""
    scopes = []
    for item in " ".join(values).split():
        type_, sep, rest = item.partition(":")
        name, sep2, actions = rest.rpartition(":")
        if sep and sep2 and type_ and name:
            scopes.append(Scope(type_, name, tuple(a for a in actions.split(",") if a)))
    return tuple(scopes)


@dataclass(frozen=True)
class TokenRequest:
    """What the token server saw and answered, one per HTTP request."""

    method: str
    path: str
    account: str | None
    scopes: tuple[Scope, ...]
    status: int


def decode_jwt(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return a JWT's (header, claims) WITHOUT verifying it: for assertions in tests."""
    header, claims = (json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
                      for part in token.split(".")[:2])
    return header, claims


class _Server(ThreadingHTTPServer):
    # Handler threads are joined by server_close(): nothing outlives stop().
    daemon_threads = False
    block_on_close = True
    owner: TokenServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hangs up or fails the TLS handshake is not our failure


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = 5  # seconds, per socket operation: a stalled client cannot pin a thread
    server_version = "migrate-test-token-server"

    def setup(self) -> None:
        super().setup()
        if isinstance(self.connection, ssl.SSLSocket):
            # The listening socket does not handshake in accept() (that runs in the
            # serving thread); do it here, in this request's own thread.
            self.connection.do_handshake()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # requests are recorded in TokenServer.requests instead

    def do_GET(self) -> None:
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
        self._answer(query, self._basic_credentials())

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        form = urllib.parse.parse_qs(self.rfile.read(length).decode("utf-8", "replace"))
        creds = self._basic_credentials()
        if creds is None and form.get("grant_type") == ["password"]:
            creds = (form.get("username", [""])[0], form.get("password", [""])[0])
        self._answer(form, creds)

    def _basic_credentials(self) -> tuple[str, str] | None:
        scheme, _, value = self.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            user, sep, password = base64.b64decode(value, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return (user, password) if sep else None

    def _answer(self, params: dict[str, list[str]], creds: tuple[str, str] | None) -> None:
        owner = self.server.owner
        path = urllib.parse.urlsplit(self.path).path
        service = params.get("service", [None])[0]
        scopes = parse_scopes(params.get("scope", []))
        headers = {"Content-Type": "application/json", "Cache-Control": "no-store"}
        payload: dict[str, Any]
        if path != owner.path:
            status, payload = 404, {"errors": [{"code": "NOT_FOUND", "message": path}]}
        elif creds is None or not owner.check_password(*creds):
            status = 401
            payload = {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]}
            headers["WWW-Authenticate"] = f'Basic realm="{owner.realm}"'
        elif service is not None and service != owner.service:
            status = 400
            payload = {"errors": [{"code": "DENIED", "message": f"unknown service {service!r}"}]}
        else:
            token = owner.issue_token(creds[0], scopes)
            status = 200
            payload = {"token": token, "access_token": token, "expires_in": owner.lifetime,
                       "issued_at": dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")}
        owner._record(TokenRequest(self.command, path, creds[0] if creds else None, scopes,
                                   status))
        body = json.dumps(payload).encode()
        self.send_response(status)
        for key, value in {**headers, "Content-Length": str(len(body))}.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)


class TokenServer:
    """Bearer token server on 127.0.0.1 for distribution's `auth: token`.

    signer: certificate + key the JWTs are signed with (EC P-256); its issuing CA
        must be in the registry's `rootcertbundle`.
    users: account -> password accepted as Basic credentials.
    service: expected `service` parameter and the JWT `aud` (= the registry's
        `auth.token.service`).
    issuer: JWT `iss` (= the registry's `auth.token.issuer`).
    tls: serve HTTPS with this certificate (clients must trust its CA).
    """

    path = "/token"
    #: Token lifetime in seconds (`expires_in`, and `exp` - `iat`).
    lifetime = 300

    def __init__(self, signer: CertPair, users: Mapping[str, str], *,
                 service: str = "migrate-test-registry",
                 issuer: str = "migrate-test-token-issuer",
                 tls: CertPair | None = None) -> None:
        self.service = service
        self.issuer = issuer
        self.tls = tls
        self._users = dict(users)
        self._key = jwk.JWK.from_pem(signer.key.read_bytes())
        self._x5c = [base64.b64encode(signer.cert_der()).decode("ascii")]
        self._lock = threading.Lock()
        self._requests: list[TokenRequest] = []
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> TokenServer:
        """Bind 127.0.0.1 on a free port and serve in a background thread."""
        if self._server is not None:
            raise RuntimeError("token server already started")
        server = _Server((LOOPBACK, 0), _Handler)
        server.owner = self
        if self.tls is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            ctx.load_cert_chain(self.tls.cert, self.tls.key)
            server.socket = ctx.wrap_socket(server.socket, server_side=True,
                                            do_handshake_on_connect=False)
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever,
                                        kwargs={"poll_interval": 0.05},
                                        name=f"token-server-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, close the socket and join the serving and handler threads."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout=10)

    def __enter__(self) -> TokenServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The bound port (the server must be started)."""
        if self._server is None:
            raise RuntimeError("token server not started")
        return int(self._server.server_address[1])

    @property
    def realm(self) -> str:
        """The token endpoint, e.g. `https://127.0.0.1:41234/token`: the registry's
        `auth.token.realm`."""
        return f"{'https' if self.tls is not None else 'http'}://{LOOPBACK}:{self.port}{self.path}"

    @property
    def requests(self) -> list[TokenRequest]:
        """A copy of every request seen so far, oldest first."""
        with self._lock:
            return list(self._requests)

    @property
    def request_count(self) -> int:
        """Number of HTTP requests answered (any status)."""
        return len(self.requests)

    @property
    def token_count(self) -> int:
        """Number of tokens issued over HTTP (200 answers)."""
        return sum(r.status == 200 for r in self.requests)

    def _record(self, request: TokenRequest) -> None:
        with self._lock:
            self._requests.append(request)

    def check_password(self, user: str, password: str) -> bool:
        """True iff `user` exists and `password` matches (constant-time compare)."""
        expected = self._users.get(user)
        return expected is not None and hmac.compare_digest(expected.encode(), password.encode())

    def issue_token(self, account: str, scopes: tuple[Scope, ...]) -> str:
        """A signed JWT for `account` granting every action of `scopes`."""
        access: dict[tuple[str, str], list[str]] = {}
        for scope in scopes:
            granted = access.setdefault((scope.type, scope.name), [])
            granted += [a for a in scope.actions if a not in granted]
        now = int(time.time())
        claims: dict[str, Any] = {
            # `aud` a string: distribution 2.8 rejects a list ("cannot unmarshal array
            # into Go struct field ClaimSet.aud of type string").
            "iss": self.issuer, "sub": account, "aud": self.service,
            "exp": now + self.lifetime, "nbf": now, "iat": now, "jti": secrets.token_hex(16),
            "access": [{"type": t, "name": n, "actions": acts}
                       for (t, n), acts in access.items()],
        }
        token = jwt.JWT(header={"typ": "JWT", "alg": "ES256", "x5c": self._x5c},
                        claims=claims)
        token.make_signed_token(self._key)
        return str(token.serialize())
