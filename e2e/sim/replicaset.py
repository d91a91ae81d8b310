"""The ReplicaSet controller: keeps `spec.replicas` active pods for every ReplicaSet.

As kube-controller-manager's replicaset controller does, each pass over a
ReplicaSet:

1. claims pods (owners.claim): the active pods of its namespace it controls,
   adopting matching orphans and releasing pods whose labels stopped matching;
   pods that finished or are being deleted never count;
2. unless the ReplicaSet is being deleted, creates pods from the template
   (generateName `<rs>-`, a controller ownerReference) or deletes the surplus,
   the cheapest to lose first (`deletion_order`);
3. writes status: replicas, fullyLabeledReplicas, readyReplicas,
   availableReplicas (ready for minReadySeconds) and observedGeneration.
"""

from __future__ import annotations

import datetime as dt
import functools
import math
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

from e2e.sim.apps import REPLICASETS
from e2e.sim.controllers import Controller
from e2e.sim.core import PODS
from e2e.sim.errors import ApiError
from e2e.sim.meta import now, parse_time
from e2e.sim.owners import (
    OWNER_INDEX,
    claim,
    claim_candidates,
    controller_ref,
    index_owners,
    is_pod_active,
    is_pod_available,
    is_pod_ready,
    pod_from_template,
    selector_matches,
)
from e2e.sim.rest import Rest
from e2e.sim.store import Obj

__all__ = ["DELETION_COST", "ReplicaSetController", "deletion_order", "replicaset_status"]

#: Pods with a lower cost are deleted first when scaling down (an int32, default 0).
DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"
_PHASE_RANK = {"Pending": 0, "Unknown": 1, "Running": 2}


def _deletion_cost(pod: Obj) -> int:
    try:
        cost = int((pod["metadata"].get("annotations") or {}).get(DELETION_COST, "0"))
    except ValueError:
        return 0
    return cost if -(2**31) <= cost < 2**31 else 0


def _ready_since(pod: Obj) -> dt.datetime | None:
    for c in pod.get("status", {}).get("conditions") or []:
        if c.get("type") == "Ready" and c.get("lastTransitionTime"):
            return parse_time(c["lastTransitionTime"])
    return None


def _newer(a: Obj, b: Obj, time_a: dt.datetime, time_b: dt.datetime, at: dt.datetime
           ) -> bool:
    # LogarithmicScaleDown: ages compare by their power of two (in nanoseconds), and
    # within one bucket the (random) uid decides, so no age order is favoured.
    def bucket(t: dt.datetime) -> int:
        nanos = (at - t).total_seconds() * 1e9
        return int(math.log2(nanos)) if nanos > 0 else -1

    if bucket(time_a) != bucket(time_b):
        return bucket(time_a) < bucket(time_b)
    return bool(a["metadata"]["uid"] < b["metadata"]["uid"])


def _restarts(pod: Obj) -> int:
    statuses = pod.get("status", {}).get("containerStatuses") or []
    return max((int(s.get("restartCount", 0)) for s in statuses), default=0)


def _less(a: tuple[Obj, int], b: tuple[Obj, int], at: dt.datetime) -> bool:
    """controller.ActivePodsWithRanks.Less: is pod `a` the better one to delete?"""
    (pa, rank_a), (pb, rank_b) = a, b
    node_a, node_b = pa["spec"].get("nodeName") or "", pb["spec"].get("nodeName") or ""
    if node_a != node_b and (not node_a or not node_b):
        return not node_a  # 1. unscheduled before scheduled
    phase_a = _PHASE_RANK.get(pa.get("status", {}).get("phase", ""), 0)
    phase_b = _PHASE_RANK.get(pb.get("status", {}).get("phase", ""), 0)
    if phase_a != phase_b:
        return phase_a < phase_b  # 2. Pending < Unknown < Running
    if is_pod_ready(pa) != is_pod_ready(pb):
        return not is_pod_ready(pa)  # 3. not ready before ready
    if _deletion_cost(pa) != _deletion_cost(pb):
        return _deletion_cost(pa) < _deletion_cost(pb)  # 4. lower pod-deletion-cost
    if rank_a != rank_b:
        return rank_a > rank_b  # 5. doubled up on a node before alone
    ready_a, ready_b = _ready_since(pa), _ready_since(pb)
    if is_pod_ready(pa) and is_pod_ready(pb) and ready_a and ready_b and ready_a != ready_b:
        return _newer(pa, pb, ready_a, ready_b, at)  # 6. ready for less time first
    if _restarts(pa) != _restarts(pb):
        return _restarts(pa) > _restarts(pb)  # 7. more restarts first
    created_a, created_b = _created(pa), _created(pb)
    if created_a != created_b:
        return _newer(pa, pb, created_a, created_b, at)  # 8. newer first
    return False


def _created(pod: Obj) -> dt.datetime:
    stamp = pod["metadata"].get("creationTimestamp")
    return parse_time(stamp) if stamp else now()


def deletion_order(pods: list[Obj], related: list[Obj]) -> list[Obj]:
    """`pods` sorted so the first ones are the ones to delete; `related`: the active pods
    of the same workload, whose count per node is the "doubled up" rank."""
    per_node = Counter(p["spec"].get("nodeName") or "" for p in related if is_pod_active(p))
    ranked = [(p, per_node[p["spec"].get("nodeName") or ""]) for p in pods]
    at = now()

    def compare(a: tuple[Obj, int], b: tuple[Obj, int]) -> int:
        return -1 if _less(a, b, at) else (1 if _less(b, a, at) else 0)

    return [p for p, _ in sorted(ranked, key=functools.cmp_to_key(compare))]


def replicaset_status(rs: Obj, pods: list[Obj]) -> dict[str, Any]:
    """calculateStatus: counts over the pods the ReplicaSet controls (zeros omitted)."""
    template_labels = ((rs["spec"].get("template") or {}).get("metadata") or {}).get(
        "labels") or {}
    min_ready = int(rs["spec"].get("minReadySeconds", 0))
    at = now()
    status: dict[str, Any] = {"replicas": len(pods)}
    counts = {
        "fullyLabeledReplicas": sum(1 for p in pods if selector_matches(
            {"matchLabels": template_labels}, p["metadata"].get("labels"))),
        "readyReplicas": sum(1 for p in pods if is_pod_ready(p)),
        "availableReplicas": sum(1 for p in pods if is_pod_available(p, min_ready, at)),
        "observedGeneration": int(rs["metadata"].get("generation", 1)),
    }
    status.update({k: v for k, v in counts.items() if v})
    conditions = (rs.get("status") or {}).get("conditions")
    if conditions:
        status["conditions"] = conditions
    return status


class ReplicaSetController(Controller):
    """Reconciles every ReplicaSet's pods and status (see the module docstring).

    It reads the stored objects (Store.peek), finding each ReplicaSet's pods
    through the owner index, and wakes only for writes of ReplicaSets and pods.
    """

    name = "replicaset-controller"
    resources = (REPLICASETS.key, PODS.key)
    _wakeup: float | None = None

    def __init__(self, rest: Rest, *, log: Callable[[str], None] | None = None) -> None:
        super().__init__(rest, log=log)
        index_owners(rest.store, PODS)

    def reconcile(self) -> None:
        self._wakeup = None
        sets = self.rest.store.peek(REPLICASETS.key)
        for rs in sets:
            self._sync(rs, sets)

    def _sync(self, rs: Obj, sets: list[Obj]) -> None:
        selector = rs["spec"].get("selector")
        active = [p for p in claim_candidates(self.rest.store, PODS, rs, selector)
                  if is_pod_active(p)]
        pods = claim(self.rest, PODS, rs, REPLICASETS, active, selector)
        if not rs["metadata"].get("deletionTimestamp"):
            pods = self._manage(rs, pods, lambda: self._related(rs, sets))
        self._write_status(rs, replicaset_status(rs, pods))
        self._note_availability(rs, pods)

    def _note_availability(self, rs: Obj, pods: list[Obj]) -> None:
        # Ready pods become available minReadySeconds later: wake up then to count them.
        min_ready = int(rs["spec"].get("minReadySeconds", 0))
        at = now()
        for pod in pods:
            since = _ready_since(pod)
            if min_ready and since and is_pod_ready(pod):
                left = (since - at).total_seconds() + min_ready
                if left > 0:
                    self._wakeup = left if self._wakeup is None else min(self._wakeup, left)

    def _related(self, rs: Obj, sets: list[Obj]) -> list[Obj]:
        # Active pods of every ReplicaSet with the same owner (a Deployment's old and new
        # ones).
        owner = controller_ref(rs)
        if owner is None:
            uids = {rs["metadata"]["uid"]}
        else:
            uids = {s["metadata"]["uid"] for s in sets
                    if (controller_ref(s) or {}).get("uid") == owner.get("uid")}
        ns = rs["metadata"]["namespace"]
        return [p for uid in sorted(uids) for p in self.rest.store.peek(
            PODS.key, ns, index=(OWNER_INDEX, f"uid {uid}")) if is_pod_active(p)]

    def _manage(self, rs: Obj, pods: list[Obj], related: Callable[[], list[Obj]]
                ) -> list[Obj]:
        diff = len(pods) - int(rs["spec"].get("replicas", 1))
        ns = rs["metadata"]["namespace"]
        if diff < 0:
            template = rs["spec"].get("template") or {}
            for _ in range(-diff):
                try:
                    pods.append(self.rest.create(
                        PODS, ns, pod_from_template(rs, REPLICASETS, template)))
                except ApiError as e:
                    self.failed(f"{ns}/{rs['metadata']['name']}: {e}")
                    break
            return pods
        doomed = deletion_order(pods, related())[:diff] if diff > 0 else []
        for pod in doomed:
            self._log(f"{self.name}: {ns}/{rs['metadata']['name']} deletes "
                      f"{pod['metadata']['name']}")
            try:
                self.rest.delete(PODS, ns, pod["metadata"]["name"],
                                 preconditions={"uid": pod["metadata"]["uid"]})
            except ApiError as e:
                if e.code not in (404, 409):
                    raise
        gone = {p["metadata"]["uid"] for p in doomed}
        return [p for p in pods if p["metadata"]["uid"] not in gone]

    def _write_status(self, rs: Obj, status: Mapping[str, Any]) -> None:
        if rs.get("status") == status:
            return  # unchanged: not a write (saves the store's copy and compare)
        uid = rs["metadata"]["uid"]

        def change(current: Obj) -> Obj | None:
            if current["metadata"]["uid"] != uid:
                return None
            current["status"] = dict(status)
            return current

        try:
            self.rest.mutate(REPLICASETS, rs["metadata"]["namespace"], rs["metadata"]["name"],
                             change)
        except ApiError as e:
            if e.code != 404:
                raise

    def next_wakeup(self) -> float | None:
        return self._wakeup
