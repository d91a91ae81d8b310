"""Deployment helpers (deployment/util): template hashes, and the status computed
from the ReplicaSets (deployment/sync.go).

The pod-template-hash is FNV-32a of the template (and a collision count), its
decimal digits mapped as rand.SafeEncodeString maps them, like
`7f58579cf4`; templates compare with nulls dropped and that label ignored.

Counts sum over the ReplicaSets: `replicas` their pods, `updatedReplicas`
the new one's, `unavailableReplicas` the wanted ones not available. The
Available condition holds while available pods reach replicas -
maxUnavailable. Progressing moves through NewReplicaSetCreated (or
FoundNewReplicaSet), ReplicaSetUpdated on every observed progress, and
NewReplicaSetAvailable once the rollout is complete.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from typing import Any

from e2e.sim.apps import max_surge_unavailable
from e2e.sim.owners import set_typed_condition
from e2e.sim.store import Obj

__all__ = [
    "REVISION",
    "TEMPLATE_HASH",
    "deployment_status",
    "rollout_complete",
    "template_hash",
    "without_hash",
]

#: The revision annotation, on a Deployment and each of its ReplicaSets.
REVISION = "deployment.kubernetes.io/revision"
#: The label telling one template's ReplicaSet and pods from another's.
TEMPLATE_HASH = "pod-template-hash"
_SAFE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
_TIMES = ("lastUpdateTime", "lastTransitionTime")


def _semantic(value: Any) -> Any:
    # Typed decoding makes a null field and an absent one the same (`kubectl rollout
    # undo` sends `creationTimestamp: null` in the template it restores).
    if isinstance(value, Mapping):
        return {k: _semantic(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_semantic(v) for v in value]
    return value


def template_hash(template: Mapping[str, Any], collision_count: int = 0) -> str:
    """The pod-template-hash: FNV-32a of the template (and the collision count),
    its decimal digits mapped as rand.SafeEncodeString maps them."""
    data = json.dumps(_semantic(template), sort_keys=True, separators=(",", ":")).encode()
    if collision_count:
        data += collision_count.to_bytes(8, "little")
    value = 0x811C9DC5
    for byte in data:
        value = ((value ^ byte) * 0x01000193) & 0xFFFFFFFF
    return "".join(_SAFE_ALPHABET[ord(ch) % len(_SAFE_ALPHABET)] for ch in str(value))


def without_hash(template: Mapping[str, Any]) -> dict[str, Any]:
    """The template as compared between a Deployment and its ReplicaSets: nulls dropped,
    no pod-template-hash label (deploymentutil.EqualIgnoreHash)."""
    out: dict[str, Any] = _semantic(template)
    labels = (out.get("metadata") or {}).get("labels")
    if isinstance(labels, dict):
        labels.pop(TEMPLATE_HASH, None)
    return out


def _sum(sets: list[Obj], field: str) -> int:
    return sum(int(rs.get("status", {}).get(field, 0)) for rs in sets)


def rollout_complete(d: Obj, status: dict[str, Any]) -> bool:
    """Every wanted pod is updated and available and the spec was observed."""
    replicas = int(d["spec"].get("replicas", 1))
    return bool(status.get("updatedReplicas", 0) == replicas
                and status.get("replicas", 0) == replicas
                and status.get("availableReplicas", 0) == replicas
                and status.get("observedGeneration", 0) >= int(d["metadata"].get("generation", 1)))


def _progressed(new: dict[str, Any], old: dict[str, Any]) -> bool:
    old_pods = old.get("replicas", 0) - old.get("updatedReplicas", 0)
    new_pods = new.get("replicas", 0) - new.get("updatedReplicas", 0)
    return bool(new.get("updatedReplicas", 0) > old.get("updatedReplicas", 0)
                or new_pods < old_pods
                or new.get("readyReplicas", 0) > old.get("readyReplicas", 0)
                or new.get("availableReplicas", 0) > old.get("availableReplicas", 0))


def _condition(type_: str, reason: str, message: str, value: str = "True") -> dict[str, Any]:
    return {"type": type_, "status": value, "reason": reason, "message": message}


def _set(conditions: list[dict[str, Any]], entry: dict[str, Any]) -> None:
    # SetDeploymentCondition: same status and reason -> nothing changes.
    set_typed_condition(conditions, entry, time_fields=_TIMES, same=lambda c: (
        c.get("status"), c.get("reason")) == (entry["status"], entry["reason"]))


def _progressing(d: Obj, status: dict[str, Any], new: Obj | None, created: bool) -> None:
    conditions: list[dict[str, Any]] = status["conditions"]
    current = next((c for c in conditions if c.get("type") == "Progressing"), None)
    name = new["metadata"]["name"] if new is not None else ""
    if created:
        _set(conditions, _condition("Progressing", "NewReplicaSetCreated",
                                    f'Created new replica set "{name}"'))
    elif current is None and new is not None:
        _set(conditions, _condition("Progressing", "FoundNewReplicaSet",
                                    f'Found new replica set "{name}"'))
    current = next((c for c in conditions if c.get("type") == "Progressing"), None)
    done = status.get("replicas", 0) == status.get("updatedReplicas", 0) and \
        current is not None and current.get("reason") == "NewReplicaSetAvailable"
    if done or new is None:
        return
    if rollout_complete(d, status):
        _set(conditions, _condition("Progressing", "NewReplicaSetAvailable",
                                    f'ReplicaSet "{name}" has successfully progressed.'))
    elif _progressed(status, d.get("status") or {}):
        # Progress refreshes lastUpdateTime even when the reason stays the same.
        entry = _condition("Progressing", "ReplicaSetUpdated", f'ReplicaSet "{name}" is '
                           f"progressing.")
        if current is not None:
            conditions.remove(current)
            if current.get("status") == "True":
                entry["lastTransitionTime"] = current.get("lastTransitionTime")
        set_typed_condition(conditions, entry, time_fields=_TIMES)


def deployment_status(d: Obj, new: Obj | None, old: list[Obj], *, created: bool = False
                      ) -> dict[str, Any]:
    """The status the Deployment should report (zero counts omitted, as they are)."""
    sets = [*old, new] if new is not None else list(old)
    available = _sum(sets, "availableReplicas")
    wanted = sum(int(rs["spec"].get("replicas", 0)) for rs in sets)
    counts = {
        "observedGeneration": int(d["metadata"].get("generation", 1)),
        "replicas": _sum(sets, "replicas"),
        "updatedReplicas": _sum([new], "replicas") if new is not None else 0,
        "readyReplicas": _sum(sets, "readyReplicas"),
        "availableReplicas": available,
        "unavailableReplicas": max(wanted - available, 0),
    }
    previous = d.get("status") or {}
    status: dict[str, Any] = {k: v for k, v in counts.items() if v}
    if previous.get("collisionCount"):
        status["collisionCount"] = previous["collisionCount"]
    status["conditions"] = copy.deepcopy(previous.get("conditions") or [])
    replicas = int(d["spec"].get("replicas", 1))
    if available >= replicas - max_surge_unavailable(d)[1]:
        _set(status["conditions"], _condition("Available", "MinimumReplicasAvailable",
                                              "Deployment has minimum availability."))
    else:
        _set(status["conditions"], _condition("Available", "MinimumReplicasUnavailable",
                                              "Deployment does not have minimum availability.",
                                              "False"))
    _progressing(d, status, new, created)
    return status
