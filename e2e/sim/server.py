"""The simulator's API server front: HTTPS (e2e/nodes/https.py) with bearer tokens.

`ApiServer`: `Authorization: Bearer <token>` must name a known token, on every
path but /healthz, /livez and /readyz; anything else is 401 with a Status body
(as an API server with anonymous auth disabled answers).
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from pathlib import Path

from e2e.nodes.https import LOOPBACK, HttpsServer, cert_user
from e2e.nodes.protocol import Response, User
from e2e.pki import CertPair
from e2e.sim.api import Api
from e2e.sim.errors import unauthorized

__all__ = ["LOOPBACK", "ApiServer", "HttpsServer", "cert_user"]


class ApiServer(HttpsServer):
    """The API server's HTTPS front: bearer tokens, Status 401s.

    api: the router.
    tls: server certificate and key (PEM) from e2e.pki.
    tokens: bearer token -> user (add to `tokens` later for more users).
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
        super().__init__(
            api, tls, authenticator=lambda header, _cert: self.authenticate(header),
            unauthorized=lambda: Response(401, unauthorized().status()),
            public_paths=("/healthz", "/livez", "/readyz"), port=port, log=log,
            name="sim-apiserver",
        )

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
