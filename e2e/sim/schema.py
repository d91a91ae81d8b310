"""The Kubernetes OpenAPI schemas, compiled once into trees the validator walks.

The `kubernetes-validate` package ships the API's JSON schemas per release
(kubernetes_validate/kubernetes-json-schema/vX.Y.0-local-strict/
_definitions.json). Every kind the API serves is a definition carrying its
`x-kubernetes-group-version-kind`, so any kind a simulator registers (apps,
batch, policy, rbac...) is found by group, version and kind alone.

A definition compiles into a `Node`: a struct (known fields, required
fields, the Go struct's name), a map, a list, a scalar with its format, or
a free-form object. Nodes are built lazily, one per definition, and shared
(recursive definitions just point back at themselves), so loading costs one
JSON parse per release and each kind's tree is built on first use.
"""

from __future__ import annotations

import functools
import importlib.resources
import json
import re
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Node", "Schemas", "schemas_for"]

_SCHEMA_DIR = "kubernetes-json-schema"
_DEFS = "#/$defs/"
# Definitions with their own JSON decoding in Go (custom UnmarshalJSON).
_SPECIAL = {
    "io.k8s.apimachinery.pkg.api.resource.Quantity": "quantity",
    "io.k8s.apimachinery.pkg.util.intstr.IntOrString": "int-or-string",
    "io.k8s.apimachinery.pkg.apis.meta.v1.Time": "date-time",
    "io.k8s.apimachinery.pkg.apis.meta.v1.MicroTime": "micro-time",
}
_GO_SCALARS = {"string": "string", "boolean": "bool", "number": "float64", "integer": "int64"}


@dataclass(eq=False)
class Node:
    """One compiled schema.

    kind: struct | map | list | scalar | object (free-form) | any.
    go: the Go type as the API server's JSON errors name it (`v1.PodSpec`,
        `[]v1.Container`, `map[string]string`, `int32`).
    json_type: for scalars, string | integer | number | boolean.
    format: int32, int64, byte, quantity, int-or-string, date-time, micro-time.
    fields, required, struct: a struct's fields, required field names and Go name.
    element: a map's values or a list's items.
    """

    kind: str
    go: str = ""
    json_type: str = ""
    format: str = ""
    fields: dict[str, Node] = field(default_factory=dict)
    required: tuple[str, ...] = ()
    struct: str = ""
    element: Node | None = None


def _types(schema: dict[str, Any]) -> set[str]:
    declared = schema.get("type")
    if isinstance(declared, str):
        return {declared}
    return {t for t in declared or [] if t != "null"}


class Schemas:
    """The compiled definitions of one Kubernetes release."""

    def __init__(self, definitions: dict[str, Any], release: str) -> None:
        self.release = release
        self._defs = definitions
        self._nodes: dict[str, Node] = {}
        self._kinds: dict[tuple[str, str, str], str] = {}
        for name, schema in definitions.items():
            for gvk in schema.get("x-kubernetes-group-version-kind") or []:
                self._kinds.setdefault((gvk["group"], gvk["version"], gvk["kind"]), name)

    def kind(self, group: str, version: str, kind: str) -> Node | None:
        """The schema of a served kind, or None if the release has none."""
        name = self._kinds.get((group, version, kind))
        return self.definition(name) if name is not None else None

    def definition(self, name: str) -> Node:
        """A definition by name, compiled on first use."""
        node = self._nodes.get(name)
        if node is not None:
            return node
        schema = self._defs[name]
        special = _SPECIAL.get(name)
        go = ".".join(name.split(".")[-2:])
        if special is not None:
            node = Node("scalar", go=go, format=special)
            self._nodes[name] = node
            return node
        node = Node("any", go=go)
        self._nodes[name] = node  # before compiling its fields: definitions may recurse
        compiled = self._compile(schema, go)
        node.__dict__.update(compiled.__dict__)
        if node.kind == "struct":
            node.struct = name.rsplit(".", 1)[-1]
        return node

    def _compile(self, schema: dict[str, Any], go: str = "") -> Node:
        ref = schema.get("$ref")
        if isinstance(ref, str):
            return self.definition(ref.split(_DEFS, 1)[1])
        types = _types(schema)
        if "properties" in schema:
            fields = {k: self._compile(v) for k, v in schema["properties"].items()}
            required = tuple(schema.get("required") or ())
            return Node("struct", go=go, fields=fields, required=required)
        if "array" in types:
            items = self._compile(schema.get("items") or {})
            return Node("list", go=f"[]{items.go}", element=items)
        if "object" in types:
            values = schema.get("additionalProperties")
            if isinstance(values, dict):
                element = self._compile(values)
                return Node("map", go=f"map[string]{element.go}", element=element)
            return Node("object", go=go or "map[string]interface {}")
        if len(types) == 1:
            (json_type,) = types
            fmt = str(schema.get("format") or "")
            go_type = {"int32": "int32", "int64": "int64", "byte": "[]uint8",
                       "double": "float64"}.get(fmt, _GO_SCALARS[json_type])
            return Node("scalar", go=go_type, json_type=json_type, format=fmt)
        return Node("any", go=go or "interface {}")


def _release_dirs() -> dict[tuple[int, int], str]:
    root = importlib.resources.files("kubernetes_validate").joinpath(_SCHEMA_DIR)
    found: dict[tuple[int, int], str] = {}
    for entry in root.iterdir():
        m = re.fullmatch(r"v(\d+)\.(\d+)\.\d+-local-strict", entry.name)
        if m:
            found[(int(m.group(1)), int(m.group(2)))] = entry.name
    return found


@functools.lru_cache(maxsize=4)
def schemas_for(kube_version: str) -> Schemas:
    """The schemas of the newest release not newer than `kube_version` (`v1.30.4`),
    loaded once per process."""
    m = re.match(r"v?(\d+)\.(\d+)", kube_version)
    if m is None:
        raise ValueError(f"not a Kubernetes version: {kube_version!r}")
    wanted = (int(m.group(1)), int(m.group(2)))
    releases = _release_dirs()
    candidates = [r for r in releases if r <= wanted]
    if not candidates:
        raise ValueError(f"kubernetes-validate has no schemas for {kube_version} or older")
    release = releases[max(candidates)]
    path = importlib.resources.files("kubernetes_validate").joinpath(
        _SCHEMA_DIR, release, "_definitions.json")
    definitions = json.loads(path.read_text(encoding="utf-8"))["$defs"]
    return Schemas(definitions, release)
