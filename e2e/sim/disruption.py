"""The disruption controller: each PodDisruptionBudget's status (disruption/disruption.go).

    expectedPods        minAvailable as an integer: the number of matching pods;
                        otherwise the sum of the scales of the matching pods'
                        controllers (a Deployment's for its ReplicaSets' pods, a
                        ReplicaSet's, any kind with a scale subresource)
    desiredHealthy      minAvailable, or expectedPods - maxUnavailable (percentages
                        of expectedPods, rounded up)
    currentHealthy      matching pods that are Ready, not being deleted and not
                        recently evicted (in disruptedPods)
    disruptionsAllowed  currentHealthy - desiredHealthy (0 if negative, or while no
                        pod is expected)

`disruptedPods` holds the pods an eviction has just been granted for: they stop
counting as healthy at once, and leave the map when they are deleted or two
minutes later (then they count again). A pod whose controller cannot be found
fails the sync: disruptionsAllowed 0, DisruptionAllowed False, reason SyncFailed.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from e2e.sim.apps import DEPLOYMENTS, REPLICASETS
from e2e.sim.controllers import Controller
from e2e.sim.core import PODS
from e2e.sim.errors import ApiError
from e2e.sim.meta import now, parse_time
from e2e.sim.owners import controller_ref, int_or_percent, is_pod_ready, selector_matches
from e2e.sim.policy import PODDISRUPTIONBUDGETS, set_disruption_allowed
from e2e.sim.store import Obj

__all__ = ["DELETION_TIMEOUT", "DisruptionController"]

#: How long an evicted pod may take to be deleted before it counts again.
DELETION_TIMEOUT = dt.timedelta(minutes=2)


def _selected_by(selector: dict[str, Any] | None) -> Callable[[Obj], bool]:
    return lambda pod: selector_matches(selector, pod["metadata"].get("labels"))


class _NoController(Exception):
    """A matching pod's controller (and so its scale) cannot be found."""


class DisruptionController(Controller):
    """Keeps every PodDisruptionBudget's status current (see the module docstring)."""

    name = "disruption-controller"
    # What it reads: budgets, pods, and the scales of the pods' controllers (the kinds
    # with a scale subresource).
    resources = (PODDISRUPTIONBUDGETS.key, PODS.key, REPLICASETS.key, DEPLOYMENTS.key)
    _wakeup: float | None = None

    def reconcile(self) -> None:
        # The stored objects themselves (Store.peek): nothing here mutates them.
        self._wakeup = None
        for pdb in self.rest.store.peek(PODDISRUPTIONBUDGETS.key):
            pods = self.rest.store.peek(PODS.key, pdb["metadata"]["namespace"],
                                        _selected_by(pdb["spec"].get("selector")))
            try:
                status = self._status(pdb, pods)
            except (_NoController, ValueError) as e:
                status = self._failed(pdb, str(e))
            self._write(pdb, status)

    def next_wakeup(self) -> float | None:
        return self._wakeup

    def _status(self, pdb: Obj, pods: list[Obj]) -> dict[str, Any]:
        expected, desired = self._expected(pdb, pods)
        at = now()
        disrupted = self._disrupted(pdb, pods, at)
        healthy = sum(1 for p in pods if not p["metadata"].get("deletionTimestamp")
                      and p["metadata"]["name"] not in disrupted and is_pod_ready(p))
        allowed = healthy - desired if expected > 0 else 0
        status: dict[str, Any] = {
            "observedGeneration": int(pdb["metadata"].get("generation", 1)),
            "disruptionsAllowed": max(allowed, 0),
            "currentHealthy": healthy, "desiredHealthy": desired, "expectedPods": expected,
            "conditions": list((pdb.get("status") or {}).get("conditions") or []),
        }
        if disrupted:
            status["disruptedPods"] = disrupted
        set_disruption_allowed(status)
        return status

    def _expected(self, pdb: Obj, pods: list[Obj]) -> tuple[int, int]:
        spec = pdb["spec"]
        if "maxUnavailable" in spec:
            expected = self._scale(pdb, pods)
            unavailable = int_or_percent(spec["maxUnavailable"], expected, round_up=True)
            return expected, max(expected - unavailable, 0)
        minimum = spec.get("minAvailable")
        if isinstance(minimum, int):
            return len(pods), minimum
        if minimum is None:
            return 0, 0
        expected = self._scale(pdb, pods)
        return expected, int_or_percent(minimum, expected, round_up=True)

    def _scale(self, pdb: Obj, pods: list[Obj]) -> int:
        scales: dict[str, int] = {}
        for pod in pods:
            ref = controller_ref(pod)
            if ref is None or ref.get("uid") in scales:
                continue  # pods without a controller are left out (a warning, upstream)
            found = self._controller_scale(ref, pod["metadata"]["namespace"])
            if found is None:
                raise _NoController(f'found no controllers for pod "{pod["metadata"]["name"]}"')
            scales[found[0]] = found[1]
            scales.setdefault(str(ref.get("uid")), 0)
        return sum(scales.values())

    def _controller_scale(self, ref: dict[str, Any], ns: str) -> tuple[str, int] | None:
        group = str(ref.get("apiVersion", "")).rpartition("/")[0]
        try:
            rt = self.rest.registry.by_kind(str(ref.get("kind")), group)
        except KeyError:
            return None
        obj = self.rest.store.peek_one(rt.key, ns, str(ref.get("name")))
        if obj is None or obj["metadata"]["uid"] != ref.get("uid") or \
                "scale" not in rt.subresources:
            return None
        owner = controller_ref(obj) if rt is REPLICASETS else None
        if owner is not None and owner.get("kind") == DEPLOYMENTS.kind:
            # A Deployment's ReplicaSet: the Deployment's scale is what is expected.
            deployment = self.rest.store.peek_one(DEPLOYMENTS.key, ns, str(owner.get("name")))
            if deployment is not None and deployment["metadata"]["uid"] == owner.get("uid"):
                return deployment["metadata"]["uid"], int(deployment["spec"].get("replicas", 0))
        return obj["metadata"]["uid"], int(obj["spec"].get("replicas", 0))

    def _disrupted(self, pdb: Obj, pods: list[Obj], at: dt.datetime) -> dict[str, str]:
        # buildDisruptedPodMap: keep entries of live, not-yet-deleted pods for two minutes.
        before = (pdb.get("status") or {}).get("disruptedPods") or {}
        kept: dict[str, str] = {}
        for pod in pods:
            name = pod["metadata"]["name"]
            if pod["metadata"].get("deletionTimestamp") or name not in before:
                continue
            expires = parse_time(before[name]) + DELETION_TIMEOUT
            if expires > at:
                kept[name] = before[name]
                left = (expires - at).total_seconds()
                self._wakeup = left if self._wakeup is None else min(self._wakeup, left)
        return kept

    @staticmethod
    def _failed(pdb: Obj, why: str) -> dict[str, Any]:
        status = dict(pdb.get("status") or {})
        status["disruptionsAllowed"] = 0
        status["conditions"] = list(status.get("conditions") or [])
        set_disruption_allowed(status, why, reason="SyncFailed")
        return status

    def _write(self, pdb: Obj, status: dict[str, Any]) -> None:
        if pdb.get("status") == status:
            return  # unchanged: not a write (saves the store's copy and compare)
        seen = pdb["metadata"]["resourceVersion"]

        def change(current: Obj) -> Obj | None:
            # Optimistic concurrency, as UpdateStatus has: an eviction may have just
            # granted a disruption; the next pass recomputes from that.
            if current["metadata"]["resourceVersion"] != seen:
                return None
            current["status"] = status
            return current

        try:
            self.rest.mutate(PODDISRUPTIONBUDGETS, pdb["metadata"]["namespace"],
                             pdb["metadata"]["name"], change)
        except ApiError as e:
            if e.code != 404:
                raise
