"""Validate data where it enters, against the JSON Schemas in schemas/."""

from __future__ import annotations

import json
from functools import cache
from typing import TYPE_CHECKING, Any

from migrate.errors import InputError
from migrate.resources import data_dir

if TYPE_CHECKING:
    from jsonschema import Draft202012Validator
    from referencing import Registry

# jsonschema is imported on first use, not with this module: it costs ~50 ms of
# start-up that commands which never validate (memparse) should not pay.


@cache
def _registry() -> Registry[Any]:
    """Every schema in schemas/, so that they can refer to each other by file name."""
    from referencing import Registry, Resource

    resources = []
    for path in sorted(data_dir("schemas").glob("*.schema.json")):
        resources.append((path.name, Resource.from_contents(json.loads(path.read_text()))))
    return Registry().with_resources(resources)


@cache
def _validator(name: str) -> Draft202012Validator:
    from jsonschema import Draft202012Validator

    registry = _registry()
    return Draft202012Validator(registry.contents(name), registry=registry)


def _path(parts: Any) -> str:
    out = "$"
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else f".{p}"
    return out


def validate(instance: Any, schema: str, source: str) -> None:
    """Raise `InputError` naming ``source`` and the JSON path of the first problem."""
    errors = sorted(_validator(schema).iter_errors(instance), key=lambda e: list(e.absolute_path))
    if errors:
        first = errors[0]
        raise InputError(
            f"{source}: {_path(first.absolute_path)}: {first.message}",
            hint=f"the data does not match {schema}",
        )
