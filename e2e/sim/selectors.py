"""Label and field selectors, parsed and matched as the API server does.

Label selectors (k8s.io/apimachinery/pkg/labels):

    app=web, tier!=db, env in (prod,staging), env notin (dev), gpu, !legacy, replicas>2

Field selectors (k8s.io/apimachinery/pkg/fields): `field=value`, `field==value`,
`field!=value`, comma-separated, with `\\,` `\\=` `\\\\` escapes in values. Which
fields exist is per resource; an unknown one is a 400, as on a real server
(`field label not supported: spec.foo`).

Parse errors raise ApiError 400 (BadRequest).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from e2e.sim.errors import bad_request

__all__ = [
    "FieldGetter",
    "FieldRequirement",
    "LabelRequirement",
    "match_fields",
    "match_labels",
    "parse_field_selector",
    "parse_label_selector",
]

#: Reads one selectable field of an object, as a string ("" when unset).
FieldGetter = Callable[[Mapping[str, Any]], str]

_TOKEN = re.compile(r"\s*(==|!=|=|!|\(|\)|,|>|<|[^\s=!(),<>]+)")


@dataclass(frozen=True)
class LabelRequirement:
    """One term of a label selector: `key OP values`.

    op: "exists", "!", "=", "!=", "in", "notin", "gt" or "lt".
    """

    key: str
    op: str
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Does this requirement hold for an object carrying `labels`?"""
        present = self.key in labels
        value = labels.get(self.key)
        if self.op == "exists":
            return present
        if self.op == "!":
            return not present
        if self.op in ("=", "in"):
            return present and value in self.values
        if self.op in ("!=", "notin"):
            return not present or value not in self.values
        if not present:
            return False
        try:
            number = int(value or "")
        except ValueError:
            return False
        bound = int(self.values[0])
        return number > bound if self.op == "gt" else number < bound


def _tokens(text: str) -> list[str]:
    tokens: list[str] = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise bad_request(f"unable to parse requirement: unexpected character at {pos}")
        tokens.append(m.group(1))
        pos = m.end()
    return tokens


class _LabelParser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokens(text)
        self.pos = 0

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> str | None:
        token = self.peek()
        self.pos += 1
        return token

    def fail(self, why: str) -> Exception:
        return bad_request(f"unable to parse requirement: {why} in selector {self.text!r}")

    def identifier(self, what: str) -> str:
        token = self.take()
        if token is None or token in ("==", "!=", "=", "!", "(", ")", ",", ">", "<"):
            raise self.fail(f"expected {what}, found {token!r}")
        return token

    def value(self) -> str:
        # A value may be empty: `key=` selects an empty label value.
        if self.peek() in (None, ","):
            return ""
        return self.identifier("a value")

    def value_set(self) -> tuple[str, ...]:
        if self.take() != "(":
            raise self.fail("expected '('")
        values: list[str] = []
        while True:
            values.append(self.value() if self.peek() != ")" else "")
            token = self.take()
            if token == ")":
                return tuple(values)
            if token != ",":
                raise self.fail("expected ',' or ')'")

    def requirement(self) -> LabelRequirement:
        if self.peek() == "!":
            self.take()
            return LabelRequirement(self.identifier("a key"), "!")
        key = self.identifier("a key")
        op = self.peek()
        if op in (None, ","):
            return LabelRequirement(key, "exists")
        self.take()
        if op in ("=", "=="):
            return LabelRequirement(key, "=", (self.value(),))
        if op == "!=":
            return LabelRequirement(key, "!=", (self.value(),))
        if op in ("in", "notin"):
            return LabelRequirement(key, op, self.value_set())
        if op in (">", "<"):
            bound = self.identifier("an integer")
            if not re.fullmatch(r"-?\d+", bound):
                raise self.fail(f"{bound!r} is not an integer")
            return LabelRequirement(key, "gt" if op == ">" else "lt", (bound,))
        raise self.fail(f"unknown operator {op!r}")

    def parse(self) -> list[LabelRequirement]:
        requirements: list[LabelRequirement] = []
        while self.peek() is not None:
            requirements.append(self.requirement())
            token = self.take()
            if token not in (None, ","):
                raise self.fail(f"expected ',' found {token!r}")
        return requirements


def parse_label_selector(text: str | None) -> list[LabelRequirement]:
    """Parse a `labelSelector` query value; empty or None selects everything."""
    if not text or not text.strip():
        return []
    return _LabelParser(text).parse()


def match_labels(requirements: list[LabelRequirement], obj: Mapping[str, Any]) -> bool:
    """Do all requirements hold for `obj`'s metadata.labels?"""
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return all(r.matches(labels) for r in requirements)


@dataclass(frozen=True)
class FieldRequirement:
    """One term of a field selector: `field == value` (negate: `!=`)."""

    field: str
    value: str
    negate: bool = False


def _split_unescaped(text: str, sep: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    escaped = False
    for ch in text:
        if escaped:
            current.append("\\" + ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == sep:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return parts


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", r"\1", value)


def _field_term(term: str) -> FieldRequirement:
    # Find the first unescaped operator; values may hold escaped '=' and ','.
    i = 0
    while i < len(term):
        if term[i] == "\\":
            i += 2
            continue
        for op, negate in (("!=", True), ("==", False), ("=", False)):
            if term.startswith(op, i):
                return FieldRequirement(term[:i].strip(), _unescape(term[i + len(op):]), negate)
        i += 1
    raise bad_request(f"invalid selector: '{term}'; can't understand '{term}'")


def parse_field_selector(
    text: str | None, getters: Mapping[str, FieldGetter]
) -> list[FieldRequirement]:
    """Parse a `fieldSelector`; fields not in `getters` are a 400 BadRequest."""
    if not text or not text.strip():
        return []
    requirements = [_field_term(t) for t in _split_unescaped(text, ",") if t.strip()]
    for r in requirements:
        if r.field not in getters:
            raise bad_request(f'field label not supported: {r.field}')
    return requirements


def match_fields(
    requirements: list[FieldRequirement],
    getters: Mapping[str, FieldGetter],
    obj: Mapping[str, Any],
) -> bool:
    """Do all field requirements hold for `obj`?"""
    return all((getters[r.field](obj) == r.value) != r.negate for r in requirements)
