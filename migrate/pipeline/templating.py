"""Fill the YAML templates in templates/ with data, structurally.

A template is a YAML document whose placeholders are whole values:
``name: $name``. Filling replaces the *value* (a string, a list, a mapping)
after the template has been parsed, so nothing a value contains is ever read
as YAML: no quoting rules, no injection. Two more rules keep templates short:

- a placeholder whose value is None removes its key (optional fields);
- a mapping key ``$name`` with an empty value splices the mapping ``name``
  at that place; keys the template itself sets win over spliced ones.

A placeholder the caller does not supply, or a supplied value the template
never uses, is a bug and raises `RenderError`.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Mapping
from functools import cache
from typing import Any

from migrate.errors import RenderError
from migrate.resources import data_dir

_PLACEHOLDER = re.compile(r"^\$([a-z_][a-z0-9_]*)$")


@cache
def _load(name: str) -> Any:
    import yaml

    return yaml.safe_load((data_dir("templates") / name).read_text())


def fill(template: str, values: Mapping[str, Any]) -> Any:
    """The document of ``templates/<template>`` with its placeholders filled from ``values``."""
    used: set[str] = set()

    def value_of(key: str) -> Any:
        if key not in values:
            raise RenderError(f"template {template} uses ${key}, which the tool did not supply",
                              hint="this is a bug in migrate, or an edited template")
        used.add(key)
        return copy.deepcopy(values[key])

    def walk(node: Any) -> Any:
        if isinstance(node, str):
            m = _PLACEHOLDER.match(node)
            return value_of(m.group(1)) if m else node
        if isinstance(node, list):
            return [v for v in (walk(item) for item in node) if v is not None]
        if isinstance(node, dict):
            return _mapping(node, walk, value_of)
        return node

    document = walk(_load(template))
    unused = sorted(set(values) - used)
    if unused:
        raise RenderError(f"template {template} does not use {', '.join('$' + u for u in unused)}",
                          hint="this is a bug in migrate, or an edited template")
    return document


def _mapping(node: dict[str, Any], walk: Callable[[Any], Any],
             value_of: Callable[[str], Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, raw in node.items():
        m = _PLACEHOLDER.match(str(key))
        if m and raw is None:
            spliced = value_of(m.group(1)) or {}
            if not isinstance(spliced, Mapping):
                raise RenderError(f"${m.group(1)} must be a mapping to be spliced",
                                  hint="this is a bug in migrate")
            for k, v in spliced.items():
                if k not in node and v is not None:
                    out[k] = v
            continue
        value = walk(raw)
        if value is not None:
            out[key] = value
    return out
