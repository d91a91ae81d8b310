"""Validate data where it enters, against the JSON Schemas in schemas/."""

from __future__ import annotations

import json
from functools import cache
from itertools import islice
from typing import TYPE_CHECKING, Any

from migrate.errors import InputError, RenderError, UsageError
from migrate.resources import data_dir

if TYPE_CHECKING:
    from jsonschema import Draft202012Validator
    from referencing import Registry

# jsonschema is imported on first use, not with this module: it costs ~50 ms of
# start-up that commands which never validate (memparse) should not pay. The same
# goes for kubernetes_validate (the OpenAPI schemas of every Kubernetes release).

_ERRORS_READ = 100
_MESSAGE_CHARS = 200
_BUG_HINT = "this is a bug in migrate; rerun with --debug and report it with the source"


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
    """Raise `InputError` naming ``source`` and the JSON path of the first problem.

    Input can be hostile: only the first `_ERRORS_READ` errors are collected
    (an array of a million wrong items makes a million), and the message,
    which quotes the offending value, is cut to `_MESSAGE_CHARS`.
    """
    found = islice(_validator(schema).iter_errors(instance), _ERRORS_READ)
    errors = sorted(found, key=lambda e: list(e.absolute_path))
    if errors:
        first = errors[0]
        message = first.message
        if len(message) > _MESSAGE_CHARS:
            message = message[:_MESSAGE_CHARS] + "..."
        raise InputError(
            f"{source}: {_path(first.absolute_path)}: {message}",
            hint=f"the data does not match {schema}",
        )


def check_rendered(instance: Any, schema: str, what: str) -> None:
    """Raise `RenderError` when a document the tool made fails ``schema``."""
    errors = sorted(_validator(schema).iter_errors(instance), key=lambda e: list(e.absolute_path))
    if errors:
        first = errors[0]
        raise RenderError(f"{what} fails {schema} at {_path(first.absolute_path)}: "
                          f"{first.message}", hint=_BUG_HINT)


@cache
def kubernetes_versions() -> tuple[str, ...]:
    """The Kubernetes releases whose OpenAPI schemas we ship, as ``MAJOR.MINOR``, oldest first."""
    from kubernetes_validate.utils import all_versions

    found = {".".join(v.split(".")[:2]) for v in all_versions()}
    return tuple(sorted(found, key=lambda v: tuple(int(p) for p in v.split("."))))


def kubernetes_version(requested: str) -> str:
    """``requested`` (``1.30``, ``v1.30``, ``1.30.4``) as a supported ``MAJOR.MINOR``.

    Unknown versions are a usage error listing the supported ones.
    """
    parts = requested.strip().lstrip("v").split(".")
    version = ".".join(parts[:2])
    if len(parts) < 2 or not all(p.isdigit() for p in parts[:2]) or \
            version not in kubernetes_versions():
        raise UsageError(f"unknown Kubernetes version {requested!r}",
                         hint="supported: " + ", ".join(kubernetes_versions()))
    return version


@cache
def _kubernetes_validator(version: str, kind: str, api_version: str) -> Draft202012Validator:
    """The strict validator of one kind, built once per process.

    kubernetes_validate.validate() parses the release's schema files (the shared
    definitions alone are megabytes of JSON) on every call: a drain renders a Pod
    per migration, so the parsed schemas are kept. The file layout is the
    package's: ``v<release>-local-strict/<kind>-<group>-<version>.json``, the
    release being the newest shipped one not newer than ``version``.
    """
    import re

    from jsonschema import Draft202012Validator
    from kubernetes_validate import utils
    from referencing import Registry, Resource

    release = [v for v in utils.all_versions()
               if utils.major_minor(v) <= utils.major_minor(version)][-1]
    group_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    folder = f"kubernetes-json-schema/v{release}-local-strict"
    try:
        schema = utils.schema_contents(f"{folder}/{kind.lower()}-{group_version}.json", version)
    except FileNotFoundError:
        raise RenderError(f"Kubernetes {version} has no schema for {kind} ({api_version})",
                          hint=_BUG_HINT) from None
    definitions = utils.schema_contents(f"{folder}/_definitions.json", version)
    registry: Registry[Any] = Resource.from_contents(schema) @ Registry()
    registry = Resource.from_contents(definitions) @ registry
    return Draft202012Validator(schema, registry=registry)


def check_kubernetes(obj: dict[str, Any], version: str, what: str) -> None:
    """Validate ``obj`` against the strict OpenAPI schema of Kubernetes ``version``.

    Strict: unknown fields are errors, as the API server's strict field
    validation (kubectl's default) makes them. Raises `RenderError` naming the
    JSON path.
    """
    from jsonschema import ValidationError

    validator = _kubernetes_validator(version, str(obj.get("kind")), str(obj.get("apiVersion")))
    try:
        validator.validate(obj)
    except ValidationError as e:
        hint = (f"{_BUG_HINT}; or the source uses fields Kubernetes {version} does not "
                "know (choose the target's version with --k8s-version)")
        raise RenderError(f"{what} is not a valid {obj.get('kind')} for Kubernetes {version} "
                          f"at {_path(e.absolute_path)}: {e.message}", hint=hint) from e
