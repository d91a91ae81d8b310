"""Pods: read, list, create, patch, delete and watch (what a migration does to them)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from migrate.adapters.kube.client import (
    Cluster,
    T,
    create_once,
    delete_object,
    deletion,
    request_json,
)
from migrate.adapters.kube.watches import watch_object
from migrate.errors import NotFoundError

_POD = "/api/v1/namespaces/{namespace}/pods/{name}"


_PODS = "/api/v1/namespaces/{namespace}/pods"


def read_pod(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    """The pod as the API serves it (camelCase field names, as in manifests)."""
    return request_json(cluster, f"read pod {namespace}/{name}", "GET", _POD,
                        path_params={"namespace": namespace, "name": name})


def find_pod(cluster: Cluster, namespace: str, name: str) -> dict[str, Any] | None:
    """The pod named ``name`` as it is now, or None when there is none.

    A GET, not a list by ``metadata.name``: the API server answers a GET with one
    key's read, while a list filters every pod of the namespace, and a drain asks
    this several times a pod in a namespace that may hold hundreds.
    """
    try:
        return read_pod(cluster, namespace, name)
    except NotFoundError:
        return None


def create_pod(cluster: Cluster, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
    """Create a pod; returns it as the API stored it."""
    name = body.get("metadata", {}).get("name") or body.get("metadata", {}).get("generateName")
    # Not retried: a create whose answer was lost may have happened; the caller's
    # journal and the name (or generateName) sort that out, not a blind second POST.
    return create_once(cluster, f"create pod {namespace}/{name}", _PODS, namespace, body)


def _delete_options(uid: str | None, grace_seconds: int | None) -> dict[str, Any]:
    body: dict[str, Any] = {"apiVersion": "v1", "kind": "DeleteOptions"}
    if uid:
        body["preconditions"] = {"uid": uid}
    if grace_seconds is not None:
        body["gracePeriodSeconds"] = grace_seconds
    return body


def delete_pod(cluster: Cluster, namespace: str, name: str, *, uid: str | None = None,
               grace_seconds: int | None = None) -> bool:
    """Delete a pod (only the one with ``uid``, when given); False if it was already gone."""
    return delete_object(cluster, f"delete pod {namespace}/{name}", _POD,
                         {"namespace": namespace, "name": name},
                         _delete_options(uid, grace_seconds))


def begin_pod_deletion(cluster: Cluster, namespace: str, name: str, uid: str) -> str | None:
    """Delete pod ``uid`` gracefully; the resourceVersion its deletion began at, from
    which `watch_pod` (``since``) sees it terminate without listing first; None when it
    is gone already (or went at once: the answer is a Status, not the pod)."""
    answer = deletion(cluster, f"delete pod {namespace}/{name}", _POD,
                      {"namespace": namespace, "name": name}, _delete_options(uid, None))
    if answer is None or answer.get("kind") != "Pod":
        return None
    return str((answer.get("metadata") or {}).get("resourceVersion") or "") or None


def patch_pod(cluster: Cluster, namespace: str, name: str,
              patch: dict[str, Any]) -> dict[str, Any]:
    """Strategic-merge-patch a pod (``None`` values remove keys)."""
    return request_json(cluster, f"patch pod {namespace}/{name}", "PATCH", _POD,
                        path_params={"namespace": namespace, "name": name}, body=patch,
                        content_type="application/strategic-merge-patch+json")


def _selectors(label_selector: str, field_selector: str) -> list[tuple[str, str]]:
    return [(k, v) for k, v in (("labelSelector", label_selector),
                                ("fieldSelector", field_selector)) if v]


def list_pods(cluster: Cluster, namespace: str | None, *, label_selector: str = "",
              field_selector: str = "") -> list[dict[str, Any]]:
    """Pods in ``namespace`` (None: every namespace) matching the selectors."""
    query = _selectors(label_selector, field_selector)
    if namespace is None:
        listing = request_json(cluster, "list pods", "GET", "/api/v1/pods", query=query)
    else:
        listing = request_json(cluster, f"list pods in {namespace}", "GET", _PODS,
                               path_params={"namespace": namespace}, query=query)
    items: list[dict[str, Any]] = listing["items"]
    return items


def watch_pod(cluster: Cluster, namespace: str, name: str,
              until: Callable[[dict[str, Any] | None], T | None], timeout: float,
              *, since: str | None = None) -> T:
    """Watch one pod until ``until(pod)`` returns something (None: the pod is gone).

    ``since``: the resourceVersion a write of this pod answered (its create): the
    watch starts there, without a list, since every later change is an event.
    """
    return watch_object(cluster, _PODS, f"pod {namespace}/{name}", namespace, name, until, timeout,
                  since)
