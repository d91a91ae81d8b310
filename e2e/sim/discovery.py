"""Discovery documents: /version, /api, /apis, /api/v1 and /apis/GROUP/VERSION.

Clients (kubectl's RESTMapper, the Python client's dynamic client) learn from
these which resources exist, their scope, verbs and short names. Only the
legacy (unaggregated) discovery format is served: kubectl asks for the
aggregated `apidiscovery.k8s.io/v2` form first and falls back to this when the
response is plain `application/json`, as it does against older servers.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

from e2e.sim.resources import Registry, ResourceType

__all__ = [
    "KUBE_VERSION",
    "api_group",
    "api_group_list",
    "api_resource_list",
    "api_versions",
    "version_info",
]

#: The Kubernetes version the simulator claims to be (kubectl's skew check reads it).
KUBE_VERSION = "v1.30.4"

_SUBRESOURCE_KINDS = {"binding": "Binding", "eviction": "Eviction", "scale": "Scale"}
# Subresources whose kind lives in another group: kubectl drain looks for pods/eviction's
# group and version to send a policy/v1 Eviction, kubectl scale for autoscaling/v1 Scale.
_SUBRESOURCE_GROUPS = {"eviction": ("policy", "v1"), "scale": ("autoscaling", "v1")}


def version_info() -> dict[str, Any]:
    """The `/version` document."""
    major, minor, _ = KUBE_VERSION.lstrip("v").split(".")
    return {
        "major": major,
        "minor": minor,
        "gitVersion": KUBE_VERSION,
        "gitCommit": "0" * 40,
        "gitTreeState": "clean",
        "buildDate": "2024-08-14T19:29:00Z",
        "goVersion": "go1.22.5",
        "compiler": "gc",
        "platform": "linux/amd64",
    }


def api_versions(server_address: str) -> dict[str, Any]:
    """The `/api` document (core group versions)."""
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [
            {"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}
        ],
    }


def _group(name: str, versions: list[str]) -> dict[str, Any]:
    entries = [{"groupVersion": f"{name}/{v}", "version": v} for v in versions]
    return {"name": name, "versions": entries, "preferredVersion": entries[0]}


def api_group_list(registry: Registry) -> dict[str, Any]:
    """The `/apis` document: every non-core group served."""
    groups: dict[str, list[str]] = {}
    for group, version in registry.group_versions():
        if group:
            groups.setdefault(group, []).append(version)
    return {
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": [_group(name, versions) for name, versions in sorted(groups.items())],
    }


def api_group(registry: Registry, name: str) -> dict[str, Any] | None:
    """The `/apis/GROUP` document, or None if the group is not served."""
    versions = [v for g, v in registry.group_versions() if g == name]
    if not versions:
        return None
    return {"kind": "APIGroup", "apiVersion": "v1", **_group(name, versions)}


def _storage_hash(rt: ResourceType) -> str:
    digest = hashlib.sha256(f"{rt.api_version}/{rt.kind}".encode()).digest()
    return base64.b64encode(digest[:8]).decode()


def _resources(rt: ResourceType) -> list[dict[str, Any]]:
    main: dict[str, Any] = {
        "name": rt.plural,
        "singularName": rt.singular,
        "namespaced": rt.namespaced,
        "kind": rt.kind,
        "verbs": sorted(rt.verbs),
        "storageVersionHash": _storage_hash(rt),
    }
    if rt.short_names:
        main["shortNames"] = list(rt.short_names)
    if rt.categories:
        main["categories"] = list(rt.categories)
    out = [main]
    for sub, verbs in sorted(rt.subresources.items()):
        entry: dict[str, Any] = {
            "name": f"{rt.plural}/{sub}",
            "singularName": "",
            "namespaced": rt.namespaced,
        }
        if sub in _SUBRESOURCE_GROUPS:
            entry["group"], entry["version"] = _SUBRESOURCE_GROUPS[sub]
        entry["kind"] = _SUBRESOURCE_KINDS.get(
            sub, f"{rt.kind}ProxyOptions" if sub == "proxy" else rt.kind)
        entry["verbs"] = sorted(verbs)
        out.append(entry)
    return out


def api_resource_list(registry: Registry, group: str, version: str) -> dict[str, Any] | None:
    """The APIResourceList of one group/version, or None if it is not served."""
    types = registry.in_group_version(group, version)
    if not types:
        return None
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": f"{group}/{version}" if group else version,
        "resources": [r for rt in types for r in _resources(rt)],
    }
