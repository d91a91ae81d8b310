"""The three patch types the API server accepts on built-in resources.

- JSON patch (RFC 6902, `application/json-patch+json`): add, remove, replace,
  move, copy, test.
- JSON merge patch (RFC 7386, `application/merge-patch+json`): maps merge, `null`
  deletes, lists are replaced.
- Strategic merge patch (`application/strategic-merge-patch+json`, what kubectl
  and the Python client send for dict bodies): like a merge patch, but lists of
  objects with a patch merge key (containers by `name`, conditions by `type`...)
  merge element by element, primitive lists with the merge strategy
  (finalizers) are unions, and the `$patch`, `$retainKeys`,
  `$deleteFromPrimitiveList/` and `$setElementOrder/` directives are honoured.
  Merge keys come from `MERGE_KEYS` (the Go struct tags of core/v1), matched on
  the end of the field's path so pod templates inside later workload kinds work.

Server-side apply (`application/apply-patch+yaml`) is not implemented.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from e2e.sim.errors import ApiError, bad_request

__all__ = ["MERGE_KEYS", "PRIMITIVE_MERGE", "json_patch", "merge_patch", "strategic_merge"]

#: Path suffix (field names, list levels skipped) -> patch merge key.
MERGE_KEYS: dict[tuple[str, ...], str] = {
    ("containers",): "name",
    ("initContainers",): "name",
    ("ephemeralContainers",): "name",
    ("containers", "env"): "name",
    ("initContainers", "env"): "name",
    ("containers", "ports"): "containerPort",
    ("initContainers", "ports"): "containerPort",
    ("containers", "volumeMounts"): "mountPath",
    ("initContainers", "volumeMounts"): "mountPath",
    ("containers", "volumeDevices"): "devicePath",
    ("containers", "resizePolicy"): "resourceName",
    ("spec", "volumes"): "name",
    ("spec", "imagePullSecrets"): "name",
    ("spec", "hostAliases"): "ip",
    ("spec", "resourceClaims"): "name",
    ("status", "conditions"): "type",
    ("status", "podIPs"): "ip",
    ("status", "hostIPs"): "ip",
    ("status", "addresses"): "type",
    ("metadata", "ownerReferences"): "uid",
}

#: Path suffixes of primitive lists merged as sets rather than replaced.
PRIMITIVE_MERGE: frozenset[tuple[str, ...]] = frozenset({("metadata", "finalizers")})

_DIRECTIVE = "$patch"
_RETAIN = "$retainKeys"
_DELETE_PRIMITIVE = "$deleteFromPrimitiveList/"
_ELEMENT_ORDER = "$setElementOrder/"


def _invalid_patch(message: str) -> ApiError:
    return ApiError(422, "Invalid", message)


# -- RFC 7386 -------------------------------------------------------------------------


def merge_patch(target: Any, patch: Any) -> Any:
    """Apply a JSON merge patch; returns a new document."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


# -- RFC 6902 -------------------------------------------------------------------------


def _pointer(path: Any) -> list[str]:
    if not isinstance(path, str) or (path and not path.startswith("/")):
        raise bad_request(f"invalid JSON pointer {path!r}")
    if path == "":
        return []
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _index(container: list[Any], token: str, *, adding: bool) -> int:
    if adding and token == "-":
        return len(container)
    if not token.isdigit():
        raise _invalid_patch(f"invalid array index {token!r}")
    i = int(token)
    if i > len(container) or (not adding and i == len(container)):
        raise _invalid_patch(f"array index {i} out of range")
    return i


def _parent(doc: Any, parts: list[str]) -> Any:
    node = doc
    for part in parts[:-1]:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list):
            node = node[_index(node, part, adding=False)]
        else:
            raise _invalid_patch(f"path /{'/'.join(parts)} does not exist")
    return node


def _get(doc: Any, parts: list[str]) -> Any:
    if not parts:
        return doc
    parent = _parent(doc, parts)
    last = parts[-1]
    if isinstance(parent, dict):
        if last not in parent:
            raise _invalid_patch(f"path /{'/'.join(parts)} does not exist")
        return parent[last]
    if isinstance(parent, list):
        return parent[_index(parent, last, adding=False)]
    raise _invalid_patch(f"path /{'/'.join(parts)} does not exist")


def _add(doc: Any, parts: list[str], value: Any) -> Any:
    if not parts:
        return value
    parent = _parent(doc, parts)
    if isinstance(parent, dict):
        parent[parts[-1]] = value
    elif isinstance(parent, list):
        parent.insert(_index(parent, parts[-1], adding=True), value)
    else:
        raise _invalid_patch(f"cannot add at /{'/'.join(parts)}")
    return doc


def _remove(doc: Any, parts: list[str]) -> Any:
    if not parts:
        raise _invalid_patch("cannot remove the whole document")
    _get(doc, parts)  # raises when absent, as RFC 6902 requires
    parent = _parent(doc, parts)
    if isinstance(parent, dict):
        del parent[parts[-1]]
    else:
        del parent[_index(parent, parts[-1], adding=False)]
    return doc


def json_patch(doc: Any, operations: Any) -> Any:
    """Apply an RFC 6902 patch (a list of operations); returns a new document."""
    if not isinstance(operations, list):
        raise bad_request("a JSON patch must be a list of operations")
    out = copy.deepcopy(doc)
    for op in operations:
        if not isinstance(op, Mapping) or "op" not in op:
            raise bad_request(f"invalid JSON patch operation {op!r}")
        kind, parts = op["op"], _pointer(op.get("path"))
        if kind == "add":
            out = _add(out, parts, copy.deepcopy(op.get("value")))
        elif kind == "remove":
            out = _remove(out, parts)
        elif kind == "replace":
            _get(out, parts)
            out = _add(_remove(out, parts), parts, copy.deepcopy(op.get("value"))) if parts \
                else copy.deepcopy(op.get("value"))
        elif kind in ("move", "copy"):
            source = _pointer(op.get("from"))
            value = copy.deepcopy(_get(out, source))
            if kind == "move":
                out = _remove(out, source)
            out = _add(out, parts, value)
        elif kind == "test":
            if _get(out, parts) != op.get("value"):
                raise _invalid_patch(f"testing value /{'/'.join(parts)} failed")
        else:
            raise bad_request(f"unknown JSON patch operation {kind!r}")
    return out


# -- strategic merge patch -------------------------------------------------------------


def _merge_key(path: tuple[str, ...]) -> str | None:
    for suffix, key in MERGE_KEYS.items():
        if path[-len(suffix):] == suffix:
            return key
    return None


def _merge_list(original: list[Any], patch: list[Any], path: tuple[str, ...]) -> list[Any]:
    if path[-2:] in PRIMITIVE_MERGE or path[-1:] in PRIMITIVE_MERGE:
        return list(original) + [v for v in patch if v not in original]
    key = _merge_key(path)
    if key is None:
        return [_strip_directives(v) for v in patch]
    if any(isinstance(p, Mapping) and p.get(_DIRECTIVE) == "replace" for p in patch):
        return [_strip_directives(p) for p in patch
                if not (isinstance(p, Mapping) and p.get(_DIRECTIVE) == "replace")]
    out = [copy.deepcopy(o) for o in original]
    for item in patch:
        if not isinstance(item, Mapping) or key not in item:
            raise _invalid_patch(f"map: {item!r} does not contain declared merge key: {key}")
        at = next((i for i, o in enumerate(out)
                   if isinstance(o, Mapping) and o.get(key) == item[key]), None)
        if item.get(_DIRECTIVE) == "delete":
            if at is not None:
                del out[at]
        elif at is None:
            out.append(_strip_directives(item))
        else:
            out[at] = _merge_map(out[at], item, path)
    return out


def _strip_directives(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _strip_directives(v) for k, v in value.items()
                if not (k.startswith("$") and (k in (_DIRECTIVE, _RETAIN)
                                               or k.startswith(_ELEMENT_ORDER)
                                               or k.startswith(_DELETE_PRIMITIVE)))}
    if isinstance(value, list):
        return [_strip_directives(v) for v in value]
    return copy.deepcopy(value)


def _merge_map(original: Any, patch: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    directive = patch.get(_DIRECTIVE)
    if directive == "delete":
        return None
    if directive == "replace" or not isinstance(original, Mapping):
        return _strip_directives(patch)
    out = dict(original)
    for key, value in patch.items():
        if key in (_DIRECTIVE, _RETAIN) or key.startswith(_ELEMENT_ORDER):
            continue  # element order is cosmetic here; retainKeys is applied below
        if key.startswith(_DELETE_PRIMITIVE):
            field = key[len(_DELETE_PRIMITIVE):]
            if isinstance(out.get(field), list):
                out[field] = [v for v in out[field] if v not in value]
            continue
        if value is None:
            out.pop(key, None)
        elif isinstance(value, Mapping):
            merged = _merge_map(out.get(key), value, (*path, key))
            if merged is None:
                out.pop(key, None)
            else:
                out[key] = merged
        elif isinstance(value, list) and isinstance(out.get(key), list):
            out[key] = _merge_list(out[key], value, (*path, key))
        else:
            out[key] = _strip_directives(value)
    retain = patch.get(_RETAIN)
    if isinstance(retain, list):
        out = {k: v for k, v in out.items() if k in retain}
    return out


def strategic_merge(original: Any, patch: Any) -> Any:
    """Apply a strategic merge patch to a built-in object; returns a new document."""
    if not isinstance(patch, Mapping):
        raise bad_request("a strategic merge patch must be a JSON object")
    merged = _merge_map(original, patch, ())
    return merged if merged is not None else {}
