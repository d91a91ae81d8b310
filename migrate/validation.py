"""Validate data where it enters, against the JSON Schemas in schemas/."""

from __future__ import annotations

import json
from functools import cache
from typing import Any

from jsonschema import Draft202012Validator

from migrate.errors import InputError
from migrate.resources import schema_path


@cache
def _validator(name: str) -> Draft202012Validator:
    schema = json.loads(schema_path(name).read_text())
    return Draft202012Validator(schema)


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
