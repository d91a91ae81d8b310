"""What a node's agent reads from and writes to its cluster: the pod source and sink.

The node code in this package (kubelet.py and what it uses) never talks to an
API server itself: it goes through a `NodeApi`, implemented by
e2e/cluster/nodeapi.py (the real API server over HTTPS, pods from a watch) and,
for unit tests, by any in-memory fake.

Objects are plain dicts in the API's JSON form. What `pods()` and `pod()` return
is read-only (the real backend hands out its
watch cache): copy before changing. Writes that find their object gone raise
`Gone`; other refusals raise `ApiFailure` with the HTTP status.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any, Protocol

__all__ = ["ApiFailure", "Change", "Gone", "NodeApi", "Obj", "now", "observed", "rfc3339",
           "set_condition"]

#: An API object as JSON.
Obj = dict[str, Any]
#: A read-modify-write: gets a copy of the current object, returns the new one
#: (None: nothing to write).
Change = Callable[[Obj], "Obj | None"]


class ApiFailure(Exception):
    """A write or read the cluster refused: `code` is the HTTP status."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class Gone(ApiFailure):
    """The object is not there (any more): 404."""

    def __init__(self, message: str) -> None:
        super().__init__(404, message)


class NodeApi(Protocol):
    """One node's view of its cluster (see the module docstring)."""

    def pods(self) -> list[Obj]:
        """The pods bound to this node (spec.nodeName), read-only."""
        ...

    def pod(self, namespace: str, name: str) -> Obj | None:
        """A pod bound to this node, read-only; None if there is none of that name."""
        ...

    def update_pod(self, namespace: str, name: str, change: Change) -> None:
        """Read-modify-write a pod: its status and its annotations (what the node
        reports); retried on conflicts. Gone if the pod is."""
        ...

    def delete_pod(self, namespace: str, name: str, uid: str) -> None:
        """Delete with grace period 0 (the kubelet's confirmation that the pod's
        containers have stopped), only if the pod still has `uid`; a pod already
        gone, or another pod of that name, is not an error."""
        ...

    def register_node(self, node: Obj) -> None:
        """Create the Node (with its status); one that exists already is kept."""
        ...

    def update_node(self, change: Change) -> None:
        """Read-modify-write this node's Node: labels, taints, status."""
        ...

    def create_event(self, event: Obj) -> None:
        """Create a core/v1 Event."""
        ...

    def patch_event(self, namespace: str, name: str, patch: Obj) -> None:
        """Merge-patch an Event (count, lastTimestamp); Gone if it expired."""
        ...

    def get(self, kind: str, namespace: str, name: str) -> Obj | None:
        """A Secret, ConfigMap, ServiceAccount or Job (`kind` as written in
        manifests) the node needs for a pod, or None."""
        ...

    def service_account_token(self, pod: Obj, account: str) -> str:
        """A token for ServiceAccount `account` in the pod's namespace, bound to the pod."""
        ...


def now() -> dt.datetime:
    """The current UTC time, truncated to seconds (metav1.Time's precision)."""
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def rfc3339(t: dt.datetime) -> str:
    """`2024-05-01T12:00:00Z`, the wire form of metav1.Time."""
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(status: dict[str, Any], type_: str, value: str, reason: str = "",
                  message: str = "") -> None:
    """Set one condition in `status.conditions`; its transition time changes only
    when its status does."""
    conditions: list[dict[str, Any]] = status.setdefault("conditions", [])
    current = next((c for c in conditions if c.get("type") == type_), None)
    entry: dict[str, Any] = {"type": type_, "status": value, "lastProbeTime": None}
    if reason:
        entry["reason"] = reason
    if message:
        entry["message"] = message
    if current is not None and current.get("status") == value:
        entry["lastTransitionTime"] = current.get("lastTransitionTime")
        current.clear()
        current.update(entry)
        return
    entry["lastTransitionTime"] = rfc3339(now())
    if current is not None:
        current.clear()
        current.update(entry)
    else:
        conditions.append(entry)


def observed(pod: Obj) -> Obj:
    """Stamp `pod` as the kubelet's status manager does on each write since v1.35
    (PodObservedGenerationTracking, GA and locked on): the generation the node acted
    on, in the status and in each of its conditions."""
    generation = pod["metadata"].get("generation", 1)
    status = pod.setdefault("status", {})
    status["observedGeneration"] = generation
    for condition in status.get("conditions") or []:
        condition["observedGeneration"] = generation
    return pod
