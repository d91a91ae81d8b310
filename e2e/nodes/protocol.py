"""What passes between an HTTPS server and its handler: users, requests, responses.

https.py authenticates a connection's request into a `Request` carrying the
`User`; the handler (the kubelet API, kubelet_api.py) answers with a
`Response` (a JSON body, or a `stream` of chunks); an `Authorizer` sees each
request as `Attributes`, the same fields a SubjectAccessReview has, and
answers a bool or a `Decision` (which also says why).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

__all__ = [
    "Attributes",
    "Authorizer",
    "BadRequest",
    "Decision",
    "Request",
    "Response",
    "User",
    "allow_all",
]


class BadRequest(ValueError):
    """A request the handler cannot take as it is (a 400 BadRequest; str(): why)."""


@dataclass(frozen=True)
class User:
    """An authenticated user, as a token authenticator reports it."""

    name: str
    groups: tuple[str, ...] = ()


@dataclass(frozen=True)
class Attributes:
    """What a request wants to do (the authorizer's input, as in SubjectAccessReview).

    For non-resource requests (`/version`, `/api`), `resource` is "" and `path`
    is set.
    """

    user: User
    verb: str
    group: str = ""
    resource: str = ""
    subresource: str = ""
    namespace: str = ""
    name: str = ""
    path: str = ""


@dataclass(frozen=True)
class Decision:
    """An authorizer's answer with its reasons (what a SubjectAccessReview's status says).

    allowed: the request may proceed.
    denied: explicitly refused (no other authorizer may allow it); RBAC never denies,
        it only fails to allow.
    reason: why, e.g. `RBAC: allowed by ClusterRoleBinding "x" of ClusterRole "y" to
        User "bob"`; appended to a 403's message when not allowed.
    """

    allowed: bool
    denied: bool = False
    reason: str = ""

    def __bool__(self) -> bool:
        return self.allowed


#: Decides whether a request may proceed: a bool, or a Decision with its reason.
Authorizer = Callable[[Attributes], "bool | Decision"]


def allow_all(attributes: Attributes) -> bool:
    """The default authorizer: every authenticated user may do everything."""
    return True


@dataclass
class Request:
    """One HTTP request, already authenticated.

    query: parsed query string (every value a list, as urllib.parse.parse_qs gives).
    headers: case-insensitive header lookup (http.server's message object works).
    connection_closed: tells a watch whether the client went away.
    """

    method: str
    path: str
    query: Mapping[str, list[str]]
    headers: Mapping[str, str]
    body: bytes
    user: User
    connection_closed: Callable[[], bool] = lambda: False

    def param(self, name: str) -> str | None:
        """The last value of query parameter `name`, or None."""
        values = self.query.get(name)
        return values[-1] if values else None

    def json(self) -> Any:
        """The body, JSON (or YAML, which kubectl never sends but humans do)."""
        if not self.body:
            return None
        try:
            return json.loads(self.body)
        except ValueError:
            pass
        try:
            return yaml.safe_load(self.body)
        except yaml.YAMLError as e:
            raise BadRequest(f"the request body is neither JSON nor YAML: {e}") from None


@dataclass
class Response:
    """A response: a JSON-able `body` (or raw bytes), or a `stream` of chunks."""

    code: int
    body: Any = None
    content_type: str = "application/json"
    stream: Iterator[bytes] | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def payload(self) -> bytes:
        if isinstance(self.body, bytes):
            return self.body
        if isinstance(self.body, str):
            return self.body.encode()
        return json.dumps(self.body, separators=(",", ":")).encode()
