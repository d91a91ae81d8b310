"""A tiny Docker/OCI registry token server (Bearer auth), for tests.

It implements the client-facing half of the "Docker Registry v2 authentication"
flow that distribution's `auth: token` access controller expects:

    GET  /token?service=SERVICE&scope=repository:NAME:pull,push   (Basic credentials)
    POST /token   grant_type=password&username=..&password=..&service=..&scope=..

and answers `{"token": JWT, "access_token": JWT, "expires_in": N, "issued_at": ...}`,
the JWT granting every requested action (or what `policy` allows). Wrong or missing
credentials get a 401.

The JWT is ES256-signed by `signer` (a CertPair from e2e.services.pki) and carries the
signing certificate in its `x5c` header; distribution verifies that chain
against its `rootcertbundle` (the CA that issued `signer`), so no libtrust `kid`
is needed.

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
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from e2e.services.pki import CertPair

__all__ = ["Policy", "Scope", "TokenRequest", "TokenServer", "decode_jwt", "parse_scopes"]

LOOPBACK = "127.0.0.1"

#: (account, resource type, resource name, requested actions) -> granted actions.
Policy = Callable[[str, str, str, tuple[str, ...]], Collection[str]]


def _grant_all(
    account: str, type_: str, name: str, actions: tuple[str, ...]
) -> Collection[str]:
    return actions


@dataclass(frozen=True)
class Scope:
    """One parsed `type:name:action,action` scope, e.g. `repository:team/app:pull,push`."""

    type: str
    name: str
    actions: tuple[str, ...]


def parse_scopes(values: Sequence[str]) -> list[Scope]:
    """Parse `scope` parameters; each may hold several space-separated scopes.

    The name sits between the first and the last colon (a resource type may carry
    a class, `repository(plugin)`, and actions never contain a colon). Malformed
    entries are ignored, as a permissive token server would.
    """
    scopes: list[Scope] = []
    for value in values:
        for item in value.split():
            type_, sep, rest = item.partition(":")
            name, sep2, actions = rest.rpartition(":")
            if not (sep and sep2 and type_ and name):
                continue
            acts = tuple(a for a in actions.split(",") if a)
            scopes.append(Scope(type=type_, name=name, actions=acts))
    return scopes


@dataclass(frozen=True)
class TokenRequest:
    """What the token server saw and answered, one per HTTP request."""

    method: str
    path: str
    account: str | None
    service: str | None
    scopes: tuple[Scope, ...]
    status: int


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(data: str) -> bytes:
    return base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))


def decode_jwt(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return a JWT's (header, claims) WITHOUT verifying it: for assertions in tests."""
    header, claims, _sig = token.split(".")
    return json.loads(_b64url_decode(header)), json.loads(_b64url_decode(claims))


class _Server(ThreadingHTTPServer):
    # Handler threads are joined by server_close(): nothing outlives stop().
    daemon_threads = False
    block_on_close = True
    owner: TokenServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hangs up or fails the TLS handshake is not our failure;
        # keep pytest's output clean but remember it.
        self.owner._record_error(f"{client_address}: {sys.exc_info()[1]!r}")


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
        body = self.rfile.read(length).decode("utf-8", "replace") if length else ""
        form = urllib.parse.parse_qs(body)
        creds = self._basic_credentials()
        if creds is None and form.get("grant_type") == ["password"]:
            creds = (form.get("username", [""])[0], form.get("password", [""])[0])
        self._answer(form, creds)

    def _basic_credentials(self) -> tuple[str, str] | None:
        header = self.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
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
        scopes = tuple(parse_scopes(params.get("scope", [])))
        account = creds[0] if creds else None
        payload: dict[str, Any]
        extra: dict[str, str] = {}

        if path != owner.path:
            status = HTTPStatus.NOT_FOUND
            payload = {"errors": [{"code": "NOT_FOUND", "message": f"no such path {path!r}"}]}
        elif creds is None or not owner.check_password(*creds):
            status = HTTPStatus.UNAUTHORIZED
            payload = {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]}
            extra = {"WWW-Authenticate": f'Basic realm="{owner.realm}"'}
        elif service is not None and service != owner.service:
            status = HTTPStatus.BAD_REQUEST
            payload = {"errors": [{"code": "DENIED", "message": f"unknown service {service!r}"}]}
        else:
            assert account is not None
            token = owner.issue_token(account, scopes)
            status = HTTPStatus.OK
            payload = {
                "token": token,
                "access_token": token,
                "expires_in": owner.lifetime,
                "issued_at": dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z"),
            }
        owner._record(
            TokenRequest(self.command, path, account, service, scopes, int(status)),
            issued=status == HTTPStatus.OK,
        )
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for key, value in extra.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)


class TokenServer:
    """Bearer token server on 127.0.0.1 for distribution's `auth: token`.

    signer: certificate + key the JWTs are signed with; its issuing CA must be in
        the registry's `rootcertbundle`.
    users: account -> password accepted as Basic credentials.
    service: expected `service` parameter and the JWT `aud` (= the registry's
        `auth.token.service`).
    issuer: JWT `iss` (= the registry's `auth.token.issuer`).
    tls: serve HTTPS with this certificate (clients must trust its CA).
    lifetime: token lifetime in seconds (`expires_in`, and `exp` - `iat`).
    policy: which of the requested actions to grant; default: all of them.

    Use as a context manager, or start() / stop().
    """

    path = "/token"

    def __init__(
        self,
        signer: CertPair,
        users: Mapping[str, str],
        *,
        service: str = "migrate-test-registry",
        issuer: str = "migrate-test-token-issuer",
        tls: CertPair | None = None,
        lifetime: int = 300,
        policy: Policy | None = None,
    ) -> None:
        self.service = service
        self.issuer = issuer
        self.lifetime = lifetime
        self.tls = tls
        self._users = dict(users)
        self._policy: Policy = policy or _grant_all
        self._key = signer.load_key()
        if not isinstance(self._key.curve, ec.SECP256R1):
            raise ValueError("the token signing key must be EC P-256 (ES256)")
        self._x5c = [base64.b64encode(signer.cert_der()).decode("ascii")]
        self._lock = threading.Lock()
        self._requests: list[TokenRequest] = []
        self._tokens = 0
        self._errors: list[str] = []
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------------

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
            server.socket = ctx.wrap_socket(
                server.socket, server_side=True, do_handshake_on_connect=False
            )
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"token-server-{self.port}",
            daemon=True,
        )
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

    close = stop

    def __enter__(self) -> TokenServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- addresses -----------------------------------------------------------------

    @property
    def port(self) -> int:
        """The bound port (the server must be started)."""
        if self._server is None:
            raise RuntimeError("token server not started")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """Base URL, e.g. `https://127.0.0.1:41234`."""
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://{LOOPBACK}:{self.port}"

    @property
    def realm(self) -> str:
        """The token endpoint: the registry's `auth.token.realm`."""
        return self.url + self.path

    # -- bookkeeping ---------------------------------------------------------------

    @property
    def requests(self) -> list[TokenRequest]:
        """A copy of every request seen so far, oldest first."""
        with self._lock:
            return list(self._requests)

    @property
    def request_count(self) -> int:
        """Number of HTTP requests answered (any status)."""
        with self._lock:
            return len(self._requests)

    @property
    def token_count(self) -> int:
        """Number of tokens issued over HTTP (200 answers)."""
        with self._lock:
            return self._tokens

    def reset_counts(self) -> None:
        """Forget recorded requests (for session-scoped servers shared by tests)."""
        with self._lock:
            self._requests.clear()
            self._tokens = 0

    @property
    def errors(self) -> list[str]:
        """Connection-level failures (client hang-ups, failed TLS handshakes)."""
        with self._lock:
            return list(self._errors)

    def _record_error(self, message: str) -> None:
        with self._lock:
            self._errors.append(message)

    def _record(self, request: TokenRequest, *, issued: bool) -> None:
        with self._lock:
            self._requests.append(request)
            self._tokens += int(issued)

    # -- tokens --------------------------------------------------------------------

    def check_password(self, user: str, password: str) -> bool:
        """True iff `user` exists and `password` matches (constant-time compare)."""
        expected = self._users.get(user)
        return expected is not None and hmac.compare_digest(
            expected.encode(), password.encode()
        )

    def issue_token(self, account: str, scopes: Sequence[Scope]) -> str:
        """A signed JWT for `account` granting `scopes` as filtered by the policy.

        Usable directly by tests that want a token without an HTTP round trip (such
        tokens are not counted).
        """
        access: dict[tuple[str, str], list[str]] = {}
        for scope in scopes:
            granted = self._policy(account, scope.type, scope.name, scope.actions)
            actions = access.setdefault((scope.type, scope.name), [])
            actions.extend(a for a in granted if a not in actions)
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "sub": account,
            # A string: distribution 2.8 rejects a list here ("cannot unmarshal array
            # into Go struct field ClaimSet.aud of type string").
            "aud": self.service,
            "exp": now + self.lifetime,
            "nbf": now,
            "iat": now,
            "jti": secrets.token_hex(16),
            "access": [
                {"type": t, "name": n, "actions": acts} for (t, n), acts in access.items()
            ],
        }
        header = {"typ": "JWT", "alg": "ES256", "x5c": self._x5c}
        signing_input = ".".join(
            _b64url(json.dumps(part, separators=(",", ":")).encode())
            for part in (header, claims)
        )
        der = self._key.sign(signing_input.encode("ascii"), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")  # JWS raw R||S
        return f"{signing_input}.{_b64url(signature)}"
