"""API errors as the Kubernetes API server reports them: `Status` objects.

Every failure the simulator answers is an `ApiError` carrying the HTTP code, the
`reason` (NotFound, AlreadyExists, Conflict, Invalid, ...), the message and the
`details` the real server would send, so clients' error paths (the official
Python client's `ApiException`, kubectl's `Error from server (NotFound): ...`)
see exactly what they would see against a real cluster.

Messages follow k8s.io/apimachinery/pkg/api/errors word for word where tests or
clients may parse them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "MODIFIED",
    "ApiError",
    "FieldError",
    "already_exists",
    "bad_request",
    "conflict",
    "expired",
    "forbidden",
    "invalid",
    "method_not_allowed",
    "not_found",
    "status_body",
    "unauthorized",
    "unsupported_media_type",
]


@dataclass(frozen=True)
class FieldError:
    """One validation failure on one field (a `StatusCause` of a 422 Invalid).

    kind: Required, Invalid, Forbidden, Duplicate or NotSupported.
    field: JSON path as the API server spells it, e.g. `spec.containers[0].image`.
    detail: the explanation after the value (Invalid, Forbidden, NotSupported).
    value: the offending value (Invalid, Duplicate, NotSupported).
    """

    kind: str
    field: str
    detail: str = ""
    value: Any = None

    @property
    def reason(self) -> str:
        return f"FieldValue{self.kind}"

    @property
    def message(self) -> str:
        """The cause message, e.g. `Invalid value: "Foo": must be lower case`."""
        if self.kind == "Required":
            return "Required value" + (f": {self.detail}" if self.detail else "")
        if self.kind == "Forbidden":
            return f"Forbidden: {self.detail}"
        if self.kind == "Duplicate":
            return f"Duplicate value: {_quote(self.value)}"
        if self.kind == "NotSupported":
            return f"Unsupported value: {_quote(self.value)}: {self.detail}"
        return f"Invalid value: {_quote(self.value)}: {self.detail}"

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


def _quote(value: Any) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)


@dataclass
class ApiError(Exception):
    """A failed API request: becomes a `Status` body with HTTP status `code`."""

    code: int
    reason: str
    message: str
    details: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.code} {self.reason}: {self.message}"

    def status(self) -> dict[str, Any]:
        """The `Status` object sent as the response body."""
        return status_body(self.code, self.reason, self.message, self.details)


def status_body(
    code: int, reason: str, message: str, details: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A `v1 Status`; `Success` for 2xx codes, else `Failure`."""
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success" if 200 <= code < 300 else "Failure",
    }
    if message:
        body["message"] = message
    if reason:
        body["reason"] = reason
    if details:
        body["details"] = details
    body["code"] = code
    return body


def _details(resource: str, name: str, group: str = "") -> dict[str, Any]:
    # `kind` here is the resource (plural), as the API server fills it.
    details: dict[str, Any] = {"name": name, "kind": resource}
    if group:
        details["group"] = group
    return details


def _qualified(resource: str, group: str) -> str:
    return f"{resource}.{group}" if group else resource


def not_found(resource: str, name: str, group: str = "") -> ApiError:
    """404: `pods "x" not found`."""
    return ApiError(
        404, "NotFound", f'{_qualified(resource, group)} "{name}" not found',
        _details(resource, name, group),
    )


def already_exists(resource: str, name: str, group: str = "") -> ApiError:
    """409: `pods "x" already exists`."""
    return ApiError(
        409, "AlreadyExists", f'{_qualified(resource, group)} "{name}" already exists',
        _details(resource, name, group),
    )


def conflict(resource: str, name: str, why: str, group: str = "") -> ApiError:
    """409 Conflict: optimistic concurrency or precondition failure."""
    return ApiError(
        409, "Conflict",
        f'Operation cannot be fulfilled on {_qualified(resource, group)} "{name}": {why}',
        _details(resource, name, group),
    )


#: The Conflict text for a stale resourceVersion, as client-go retry helpers match it.
MODIFIED = "the object has been modified; please apply your changes to the latest version " \
    "and try again"


def invalid(kind: str, name: str, causes: list[FieldError], group: str = "") -> ApiError:
    """422: `Pod "x" is invalid: spec.containers: Required value`."""
    joined = ", ".join(str(c) for c in causes)
    summary = joined if len(causes) == 1 else f"[{joined}]"
    details: dict[str, Any] = {
        "name": name,
        "kind": kind,
        "causes": [{"reason": c.reason, "message": c.message, "field": c.field} for c in causes],
    }
    if group:
        details["group"] = group
    kind_text = f"{kind}.{group}" if group else kind
    return ApiError(422, "Invalid", f'{kind_text} "{name}" is invalid: {summary}', details)


def forbidden(resource: str, name: str, why: str, group: str = "") -> ApiError:
    """403: `pods "x" is forbidden: WHY` (or `pods is forbidden: ...` without a name)."""
    target = _qualified(resource, group)
    subject = f'{target} "{name}"' if name else target
    return ApiError(403, "Forbidden", f"{subject} is forbidden: {why}",
                    _details(resource, name, group))


def unauthorized() -> ApiError:
    """401 for a missing or unknown bearer token."""
    return ApiError(401, "Unauthorized", "Unauthorized")


def bad_request(message: str) -> ApiError:
    """400 BadRequest."""
    return ApiError(400, "BadRequest", message)


def method_not_allowed(message: str = "the server does not allow this method on the "
                       "requested resource") -> ApiError:
    """405 MethodNotAllowed."""
    return ApiError(405, "MethodNotAllowed", message)


def unsupported_media_type(content_type: str) -> ApiError:
    """415 UnsupportedMediaType (e.g. a patch type not implemented)."""
    return ApiError(415, "UnsupportedMediaType",
                    f'the body of the request was in an unknown format - accepted media '
                    f'types include: application/json-patch+json, application/merge-patch+json, '
                    f'application/strategic-merge-patch+json (got "{content_type}")')


def expired(message: str) -> ApiError:
    """410 Expired: a watch from a resourceVersion older than the kept history."""
    return ApiError(410, "Expired", message)
