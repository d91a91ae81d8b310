"""What a drain does with each pod on the node, and why.

    migrate  Running bare pods and ReplicaSet (Deployment) pods, matching
             --pod-selector when one is given: moved with their memory.
    evict    pods migrate cannot hand over or whose state stays on the node
             (StatefulSet, Job and unknown controllers; hostPath volumes,
             persistent volume claims), pods not Running, pods the selector
             leaves out: evicted through the Eviction API, as kubectl drain does.
    skip     DaemonSet pods, mirror pods of static pods, pods already
             terminating or completed: a drain leaves them (kubectl drain
             --ignore-daemonsets does the same).
    blocked  a pod to migrate that no destination fits (placement decides), and
             any pod another migration has claimed (plan.py).
"""

from __future__ import annotations

from typing import Any

from migrate.pipeline.preflight import controller_of

Obj = dict[str, Any]
MIGRATE, EVICT, SKIP, BLOCKED = "migrate", "evict", "skip", "blocked"
MIRROR_ANNOTATION = "kubernetes.io/config.mirror"

#: Why pods of these owners are evicted rather than migrated (preflight.REFUSED_OWNERS
#: says what `migrate pod` tells the user instead).
_EVICTED_OWNERS = {
    "StatefulSet": "a StatefulSet pod's name and storage cannot be taken by a copy while "
                   "it exists",
    "Job": "a Job counts its pods and would start another",
}


def _skip_reason(pod: Obj, owner: tuple[str, str] | None) -> str | None:
    meta = pod.get("metadata") or {}
    phase = (pod.get("status") or {}).get("phase", "Unknown")
    if MIRROR_ANNOTATION in (meta.get("annotations") or {}):
        return "mirror pod: the kubelet runs this static pod from a file on the node"
    if meta.get("deletionTimestamp"):
        return "already terminating"
    if phase in ("Succeeded", "Failed"):
        return f"completed ({phase})"
    if owner and owner[0] == "DaemonSet":
        return f"DaemonSet {owner[1]}: it runs a pod on every node"
    return None


def node_bound_volume(pod: Obj) -> str | None:
    """Why one of the pod's volumes keeps its data on this node, if one does."""
    for v in (pod.get("spec") or {}).get("volumes") or []:
        if "hostPath" in v:
            return f"volume {v.get('name')} is a hostPath: its data stays on the node"
        if "persistentVolumeClaim" in v or "ephemeral" in v:
            return (f"volume {v.get('name')} is a persistent volume claim: a restored copy "
                    "would need it mounted on two nodes at once")
    return None


def _evict_reason(pod: Obj, owner: tuple[str, str] | None, selected: bool) -> str | None:
    phase = (pod.get("status") or {}).get("phase", "Unknown")
    if phase != "Running":
        return f"{phase}, not Running: no running state to keep"
    if owner and owner[0] in _EVICTED_OWNERS:
        return f"{owner[0]} {owner[1]}: {_EVICTED_OWNERS[owner[0]]}"
    if owner and owner[0] != "ReplicaSet":
        return f"{owner[0]} {owner[1]}: migrate cannot hand a pod over to this controller"
    volume = node_bound_volume(pod)
    if volume:
        return volume
    if not selected:
        return "not matched by --pod-selector"
    return None


def classify(pod: Obj, *, selected: bool = True) -> tuple[str, str]:
    """(action, reason) for one pod of the drained node; ``selected``: --pod-selector
    matched it (or none was given)."""
    owner = controller_of(pod)
    why = _skip_reason(pod, owner)
    if why:
        return SKIP, why
    why = _evict_reason(pod, owner, selected)
    if why:
        return EVICT, why
    if owner:
        return MIGRATE, f"ReplicaSet {owner[1]}: the restored copy is handed over to it"
    return MIGRATE, "bare pod: the restored copy replaces it"
