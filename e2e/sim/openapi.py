"""A minimal OpenAPI v3 publication: operations only, no schemas (yet).

kubectl (1.27+) reads /openapi/v3 before create/apply to learn whether the
server validates fields itself (`fieldValidation` on the kind's PATCH
operation); if it cannot tell, it validates client-side from the OpenAPI v2
schemas and fails outright when /openapi/v2 is missing. Publishing the
operations, with that parameter, makes kubectl leave validation to the server
(`?fieldValidation=Strict`), as against a real API server.

PATCH operations carry no `requestBody` on purpose: kubectl then computes
`apply` patches from its built-in type metadata instead of looking for
schemas here. The server does validate fields itself, against the schemas the
kubernetes-validate package ships (schema.py, validation.py); publishing them
here too (for `kubectl explain`) is left for later.
/openapi/v2 is not served (404), which kubectl tolerates once v3 answers.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from e2e.sim.discovery import KUBE_VERSION
from e2e.sim.resources import Registry, ResourceType

__all__ = ["group_version_document", "root_document"]

_QUERY_PARAMS = ("dryRun", "fieldManager", "fieldValidation")


def _gv_path(group: str, version: str) -> str:
    return f"apis/{group}/{version}" if group else f"api/{version}"


def _operation(rt: ResourceType, action: str, writes: bool) -> dict[str, Any]:
    op: dict[str, Any] = {
        "operationId": f"{action}{rt.kind}",
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": {"group": rt.group, "version": rt.version,
                                            "kind": rt.kind},
        "responses": {"200": {"description": "OK"}},
    }
    if writes:
        op["parameters"] = [{"name": p, "in": "query", "schema": {"type": "string"}}
                            for p in _QUERY_PARAMS]
    return op


def _paths(rt: ResourceType) -> dict[str, Any]:
    base = "/" + _gv_path(rt.group, rt.version)
    collection = f"{base}/namespaces/{{namespace}}/{rt.plural}" if rt.namespaced \
        else f"{base}/{rt.plural}"
    # Only the operations the type serves: a review (create only) has no {name} path.
    methods = {
        collection: {"get": ("list", "list", False), "post": ("create", "post", True)},
        f"{collection}/{{name}}": {
            "get": ("get", "get", False), "put": ("update", "put", True),
            "patch": ("patch", "patch", True), "delete": ("delete", "delete", False),
        },
    }
    paths: dict[str, Any] = {}
    for path, operations in methods.items():
        served = {method: _operation(rt, action, writes)
                  for method, (verb, action, writes) in operations.items() if verb in rt.verbs}
        if served:
            paths[path] = served
    return paths


def group_version_document(registry: Registry, group: str, version: str) -> dict[str, Any] | None:
    """The document for one group/version (`/openapi/v3/api/v1`), or None."""
    types = registry.in_group_version(group, version)
    if not types:
        return None
    paths: dict[str, Any] = {}
    for rt in types:
        paths.update(_paths(rt))
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": KUBE_VERSION},
        "paths": paths,
        "components": {"schemas": {}},
    }


def root_document(registry: Registry) -> dict[str, Any]:
    """`/openapi/v3`: where each group/version's document is, with a content hash."""
    paths = {}
    for group, version in registry.group_versions():
        doc = group_version_document(registry, group, version)
        digest = hashlib.sha512(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:128]
        path = _gv_path(group, version)
        paths[path] = {"serverRelativeURL": f"/openapi/v3/{path}?hash={digest.upper()}"}
    return {"paths": paths}
