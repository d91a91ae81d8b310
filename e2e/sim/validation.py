"""Validating objects against the Kubernetes schemas, as the API server decodes them.

The API server turns a request body into a Go struct before anything else;
what the struct cannot hold is refused at that step with 400 BadRequest:

    Pod in version "v1" cannot be handled as a Pod: json: cannot unmarshal
    string into Go struct field PodSpec.spec.terminationGracePeriodSeconds of type int64

Fields the struct does not have are dropped, and reported according to the
request's `fieldValidation` (Strict: 400 `strict decoding error: unknown field
"spec.foo"`; Warn, the default: a `Warning` header; Ignore: silently).
kubectl sends Strict. For patches both come back as 422 on the field `patch`.
Only then does validation proper run: missing required fields are 422
Invalid with causes (`spec.containers[0].name: Required value`), together
with each kind's own checks (rest.py).

`decode()` and `required_errors()` do both over schema.py's trees. The
request's directive and the warnings it collects live in a context variable
that api.py sets per request (as the API server keeps them in the request
context); writes by the simulator's own controllers see the default, Ignore.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import contextvars
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from e2e.sim.errors import ApiError, FieldError, bad_request, invalid
from e2e.sim.schema import Node

__all__ = ["DIRECTIVES", "FieldValidation", "Patch", "decode", "field_validation",
           "required_errors"]

DIRECTIVES = ("Ignore", "Warn", "Strict")
_QUANTITY = re.compile(r"^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$")
_QUANTITY_NUMBER = re.compile(r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)$")
_QUANTITY_SUFFIX = re.compile(r"^([KMGTPE]i|[numkMGTPE]?|[eE][-+]?[0-9]+)$")
_QUANTITY_FORMAT = ("quantities must match the regular expression "
                    "'^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'")
_B64 = re.compile(r"[A-Za-z0-9+/]")
_INT_RANGE = {"int32": 2**31, "int64": 2**63}
# metav1.Time and MicroTime layouts, element by element, as Go's time.Parse reads them.
_LAYOUTS = {"date-time": "2006-01-02T15:04:05Z07:00",
            "micro-time": "2006-01-02T15:04:05.000000Z07:00"}
_ELEMENTS = [("2006", r"\d{4}"), ("-", "-"), ("01", r"\d{2}"), ("-", "-"), ("02", r"\d{2}"),
             ("T", "T"), ("15", r"\d{2}"), (":", ":"), ("04", r"\d{2}"), (":", ":"),
             ("05", r"\d{2}(\.\d+)?"), ("Z07:00", r"Z|[+-]\d{2}:\d{2}")]


@dataclass
class FieldValidation:
    """One request's `fieldValidation` directive and the warnings it collected."""

    directive: str = "Ignore"
    warnings: list[str] = field(default_factory=list)

    def warning_header(self) -> str | None:
        """The `Warning` header value (RFC 7234, code 299), or None without warnings."""
        if not self.warnings:
            return None
        return ", ".join('299 - "{}"'.format(w.replace("\\", "\\\\").replace('"', '\\"'))
                         for w in self.warnings)


_current: contextvars.ContextVar[FieldValidation | None] = contextvars.ContextVar(
    "field_validation", default=None)


@contextlib.contextmanager
def field_validation(value: str | None, options_kind: str) -> Iterator[FieldValidation]:
    """The scope of one write request; `value` is its `fieldValidation` parameter
    (absent: Warn), `options_kind` CreateOptions, UpdateOptions or PatchOptions."""
    if value not in (None, "", *DIRECTIVES):
        raise invalid(options_kind, "", [FieldError(
            "NotSupported", "fieldValidation",
            'supported values: "", "Ignore", "Strict", "Warn"', value)], "meta.k8s.io")
    scope = FieldValidation(value or "Warn")
    token = _current.set(scope)
    try:
        yield scope
    finally:
        _current.reset(token)


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _time_error(text: str, layout: str) -> str | None:
    rest = text
    for element, pattern in _ELEMENTS:
        m = re.match(pattern, rest)
        if m is None:
            return f'parsing time "{text}" as "{layout}": cannot parse "{rest}" as "{element}"'
        rest = rest[m.end():]
    if rest:
        return f'parsing time "{text}": extra text: "{rest}"'
    return None


def _base64_error(text: str) -> str | None:
    stripped = text.replace("\r", "").replace("\n", "")
    try:
        base64.b64decode(stripped, validate=True)
        return None
    except (binascii.Error, ValueError):
        pass
    body = stripped.rstrip("=")
    for i, ch in enumerate(body):
        if not _B64.match(ch):
            return f"illegal base64 data at input byte {i}"
    return f"illegal base64 data at input byte {len(body) - len(body) % 4}"


def _quantity_error(value: Any) -> str | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return None
    text = value.strip() if isinstance(value, str) else json.dumps(value)
    m = _QUANTITY.match(text)
    if m is None or not _QUANTITY_NUMBER.match(m.group(1)):
        return _QUANTITY_FORMAT
    if not _QUANTITY_SUFFIX.match(m.group(2)):
        return "unable to parse quantity's suffix"
    return None


class _Decoder:
    """One walk of a body: its first type error, its unknown fields, pruned as it goes."""

    def __init__(self) -> None:
        self.error: str | None = None
        self.unknown: list[str] = []

    def fail(self, message: str) -> None:
        if self.error is None:  # Go's decoder reports the earliest error
            self.error = message

    def mismatch(self, value: Any, node: Node, struct: str, go_path: str,
                 shown: str = "") -> None:
        self.fail(f"json: cannot unmarshal {shown or _json_type(value)} into Go struct field "
                  f"{struct}.{go_path} of type {node.go}")

    def walk(self, node: Node, value: Any, struct: str, go_path: str, path: str) -> None:
        if value is None or node.kind == "any":
            return
        container = list if node.kind == "list" else dict
        if node.kind in ("struct", "map", "object", "list") and not isinstance(value, container):
            self.mismatch(value, node, struct, go_path)
        elif node.kind == "struct":
            self.struct(node, value, go_path, path)
        elif node.kind == "map" and node.element is not None:
            for key, item in value.items():
                self.walk(node.element, item, struct, go_path, f"{path}[{key}]")
        elif node.kind == "list" and node.element is not None:
            for i, item in enumerate(value):
                self.walk(node.element, item, struct, go_path, f"{path}[{i}]")
        elif node.kind == "scalar":
            self.scalar(node, value, struct, go_path)

    def struct(self, node: Node, value: dict[str, Any], go_path: str, path: str) -> None:
        for key in list(value):
            child = node.fields.get(key)
            where = f"{path}.{key}" if path else key
            if child is None:
                self.unknown.append(where)
                del value[key]
            else:
                self.walk(child, value[key], node.struct,
                          f"{go_path}.{key}" if go_path else key, where)

    def scalar(self, node: Node, value: Any, struct: str, go_path: str) -> None:
        fmt, json_type = node.format, node.json_type
        if fmt == "quantity":
            message = _quantity_error(value)
            if message:
                self.fail(message)
        elif fmt == "int-or-string":
            if not isinstance(value, str) and not _fits_int(value, "int32"):
                shown = f"number {value}" if isinstance(value, float) else _json_type(value)
                self.fail(f"json: cannot unmarshal {shown} into Go value of type int32")
        elif fmt in _LAYOUTS:
            if not isinstance(value, str):
                self.fail(f"json: cannot unmarshal {_json_type(value)} into Go value of "
                          f"type string")
            elif (message := _time_error(value, _LAYOUTS[fmt])) is not None:
                self.fail(message)
        elif json_type == "integer":
            if not _fits_int(value, fmt):
                shown = f"number {value}" if _json_type(value) == "number" else ""
                self.mismatch(value, node, struct, go_path, shown)
        elif json_type == "number":
            if _json_type(value) != "number":
                self.mismatch(value, node, struct, go_path)
        elif json_type == "boolean":
            if not isinstance(value, bool):
                self.mismatch(value, node, struct, go_path)
        elif not isinstance(value, str):
            self.mismatch(value, node, struct, go_path)
        elif fmt == "byte" and (message := _base64_error(value)) is not None:
            self.fail(message)


def _fits_int(value: Any, fmt: str) -> bool:
    if not isinstance(value, int) or isinstance(value, bool):
        return False
    bound = _INT_RANGE.get(fmt, 2**63)
    return -bound <= value < bound


@dataclass(frozen=True)
class Patch:
    """What a patch request sent, for its 422s: media type and the parsed patch."""

    media_type: str
    document: Any


def _go_format(value: Any) -> str:
    # Go's %+v of a decoded JSON map, which the API server shows for strategic patches.
    if isinstance(value, dict):
        return "map[" + " ".join(f"{k}:{_go_format(value[k])}" for k in sorted(value)) + "]"
    if isinstance(value, list):
        return "[" + " ".join(_go_format(v) for v in value) + "]"
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _patch_invalid(detail: str, patched: Any, patch: Patch) -> ApiError:
    shown = _go_format(patch.document) \
        if patch.media_type == "application/strategic-merge-patch+json" \
        else json.dumps(patched, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    # NewInvalid with no kind and no name; the value quoted as Go's %q does.
    message = f"Invalid value: {json.dumps(shown, ensure_ascii=False)}: {detail}"
    return ApiError(422, "Invalid", f' "" is invalid: patch: {message}', {
        "causes": [{"reason": "FieldValueInvalid", "message": message, "field": "patch"}]})


def decode(node: Node, kind: str, version: str, obj: dict[str, Any],
           patch: Patch | None = None) -> None:
    """Check `obj` (a body, or a patch's result) as the API server's decoder would:
    unknown fields are removed in place; a type error, or unknown fields
    under Strict, raise; under Warn they become warnings of the request."""
    original = json.loads(json.dumps(obj)) if patch is not None else None
    decoder = _Decoder()
    decoder.struct(node, obj, "", "")
    scope = _current.get() or FieldValidation()
    unknown = [f'unknown field "{path}"' for path in decoder.unknown]
    if decoder.error is not None:
        detail = decoder.error
    elif unknown and scope.directive == "Strict":
        detail = "strict decoding error: " + ", ".join(unknown)
    else:
        if scope.directive == "Warn":
            scope.warnings += unknown
        return
    if patch is not None:
        raise _patch_invalid(detail, original, patch)
    raise bad_request(f'{kind} in version "{version}" cannot be handled as a {kind}: {detail}')


def _required(node: Node, value: Any, path: str, errors: list[FieldError]) -> None:
    if node.kind == "struct" and isinstance(value, dict):
        for name in node.required:
            # A missing boolean is false, which the API server accepts.
            if value.get(name) is None and node.fields[name].json_type != "boolean":
                errors.append(FieldError("Required", f"{path}.{name}" if path else name))
        for key, item in value.items():
            child = node.fields.get(key)
            # Status is the server's to write and is not validated on the way in.
            if child is not None and not (not path and key == "status"):
                _required(child, item, f"{path}.{key}" if path else key, errors)
    elif node.kind == "map" and isinstance(value, dict) and node.element is not None:
        for key, item in value.items():
            _required(node.element, item, f"{path}[{key}]", errors)
    elif node.kind == "list" and isinstance(value, list) and node.element is not None:
        for i, item in enumerate(value):
            _required(node.element, item, f"{path}[{i}]", errors)


def required_errors(node: Node, obj: dict[str, Any]) -> list[FieldError]:
    """Required fields missing from `obj` (outside its status), as 422 causes."""
    errors: list[FieldError] = []
    _required(node, obj, "", errors)
    return errors
