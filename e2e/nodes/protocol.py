"""What passes between the kubelet API's HTTPS server and its handler.

https.py authenticates a connection's request into a `Request` carrying the
`User`; the handler (kubelet_api.py) answers with a `Response`; an
`Authorizer` sees each request as `Attributes`, the fields of a
SubjectAccessReview, and answers a `Decision`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Attributes", "Authorizer", "Decision", "Request", "Response", "User"]


@dataclass(frozen=True)
class User:
    """An authenticated user: a client certificate's CN and O (groups)."""

    name: str
    groups: tuple[str, ...] = ()


@dataclass(frozen=True)
class Attributes:
    """What a request wants to do (the authorizer's input, as in SubjectAccessReview)."""

    user: User
    verb: str
    resource: str
    subresource: str
    name: str


@dataclass(frozen=True)
class Decision:
    """An authorizer's answer (what a SubjectAccessReview's status says).

    denied: explicitly refused; RBAC never denies, it only fails to allow.
    reason: why, as the API server words it.
    """

    allowed: bool
    denied: bool = False
    reason: str = ""

    def __bool__(self) -> bool:
        return self.allowed


#: Decides whether a request may proceed.
Authorizer = Callable[[Attributes], Decision]


@dataclass
class Request:
    """One HTTP request, already authenticated.

    query: parsed query string (every value a list, as urllib.parse.parse_qs gives).
    """

    method: str
    path: str
    query: Mapping[str, list[str]]
    user: User

    def param(self, name: str) -> str | None:
        """The last value of query parameter `name`, or None."""
        values = self.query.get(name)
        return values[-1] if values else None


@dataclass
class Response:
    """A response: a JSON-able `body`, or raw bytes."""

    code: int
    body: Any = None
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)

    def payload(self) -> bytes:
        """The body as sent."""
        if isinstance(self.body, bytes):
            return self.body
        return json.dumps(self.body, separators=(",", ":")).encode()
