"""Applying the tool's own objects (migrate deploy, migrate schedule): create, or replace
what differs, as `kubectl apply` would for objects the tool alone manages."""

from __future__ import annotations

import dataclasses
from typing import Any

from migrate.adapters.kube.client import Cluster, request_json
from migrate.errors import ClusterError, NotFoundError

#: The kinds the tool applies: whether namespaced, and their collection's path.
_KINDS: dict[str, tuple[bool, str]] = {
    "Namespace": (False, "/api/v1/namespaces"),
    "ServiceAccount": (True, "/api/v1/namespaces/{namespace}/serviceaccounts"),
    "ClusterRole": (False, "/apis/rbac.authorization.k8s.io/v1/clusterroles"),
    "ClusterRoleBinding": (False, "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings"),
    "CronJob": (True, "/apis/batch/v1/namespaces/{namespace}/cronjobs"),
}


def _kind(kind: str) -> tuple[bool, str]:
    if kind not in _KINDS:
        raise ClusterError(f"cannot apply a {kind}", hint="this is a bug in migrate")
    return _KINDS[kind]


def read_object(cluster: Cluster, kind: str, namespace: str, name: str
                ) -> dict[str, Any] | None:
    """One object of a kind `apply_object` knows, or None if there is none."""
    namespaced, collection = _kind(kind)
    where = f"{namespace}/{name}" if namespaced else name
    try:
        return request_json(cluster, f"read {kind} {where}", "GET", collection + "/{name}",
                            path_params={"namespace": namespace, "name": name})
    except NotFoundError:
        return None


def _contains(current: Any, wanted: Any) -> bool:
    """Whether ``current`` already says everything ``wanted`` says (server defaults aside)."""
    if isinstance(wanted, dict):
        return isinstance(current, dict) and all(
            k in current and _contains(current[k], v) for k, v in wanted.items())
    if isinstance(wanted, list):
        return isinstance(current, list) and len(current) == len(wanted) and all(
            _contains(c, w) for c, w in zip(current, wanted, strict=True))
    return bool(current == wanted)


def apply_object(cluster: Cluster, obj: dict[str, Any]) -> str:
    """Create ``obj``, or replace the object of that name with it.

    Returns "created", "configured" (replaced) or "unchanged" (it already
    said all of this): running it twice changes nothing. A replace carries
    the current resourceVersion, so a concurrent change is a conflict, not
    overwritten.
    """
    kind, meta = obj["kind"], obj["metadata"]
    namespaced, collection = _kind(kind)
    namespace = meta.get("namespace", "") if namespaced else ""
    where = f"{kind} {namespace + '/' if namespace else ''}{meta['name']}"
    params = {"namespace": namespace, "name": meta["name"]}
    current = read_object(cluster, kind, namespace, meta["name"])
    once = dataclasses.replace(cluster.settings.retry, attempts=1)
    if current is None:
        request_json(cluster, f"create {where}", "POST", collection, path_params=params,
                     body=obj, _retry=once)
        return "created"
    if _contains(current, obj):
        return "unchanged"
    body = {**obj, "metadata": {**meta,
                                "resourceVersion": current["metadata"]["resourceVersion"]}}
    request_json(cluster, f"replace {where}", "PUT", collection + "/{name}", path_params=params,
                 body=body, _retry=once)
    return "configured"
