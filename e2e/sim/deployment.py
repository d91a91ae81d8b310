"""The Deployment controller: one ReplicaSet per pod template, rolled out by strategy.

Each Deployment controls ReplicaSets named `<deployment>-<pod-template-hash>`:
the hash (FNV-32a of the template, encoded as the API server encodes random
names) is added to the ReplicaSet's labels, selector and template labels, so
each template's pods are told apart. The "new" ReplicaSet is the one whose
template, without that label, equals the Deployment's; the others are old.

Strategies, as deployment/rolling.go and recreate.go do them:

    RollingUpdate  scale the new ReplicaSet up while the total stays within
                   replicas + maxSurge; scale old ones down (oldest first, their
                   unavailable pods first) while available pods stay at least
                   replicas - maxUnavailable.
    Recreate       scale every old ReplicaSet to 0, wait until none of their pods
                   runs, then create or scale the new one to `replicas`.

A scaling event in the middle of a rollout is not spread proportionally over
the ReplicaSets (the rolling rules above apply instead); progressDeadlineSeconds
is never reported exceeded. Old ReplicaSets scaled to 0 beyond
`revisionHistoryLimit` are deleted once a rollout completes; `spec.paused`
stops rollouts. Status: replicas, updatedReplicas, readyReplicas,
availableReplicas, unavailableReplicas, observedGeneration and the Available
and Progressing conditions; the revision annotation goes on both objects.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

from e2e.sim.apps import DEPLOYMENTS, REPLICASETS, max_surge_unavailable
from e2e.sim.controllers import Controller
from e2e.sim.core import PODS
from e2e.sim.deployment_util import (
    REVISION,
    TEMPLATE_HASH,
    deployment_status,
    rollout_complete,
    template_hash,
    without_hash,
)
from e2e.sim.errors import ApiError
from e2e.sim.owners import (
    OWNER_INDEX,
    claim,
    claim_candidates,
    index_owners,
    owner_reference,
)
from e2e.sim.rest import Rest
from e2e.sim.store import Obj

__all__ = ["DeploymentController"]

_DESIRED = "deployment.kubernetes.io/desired-replicas"
_HISTORY = "deployment.kubernetes.io/revision-history"
_MAX = "deployment.kubernetes.io/max-replicas"
# Deployment annotations not copied to its ReplicaSets (deploymentutil.skipCopyAnnotation).
_NOT_COPIED = frozenset({"kubectl.kubernetes.io/last-applied-configuration", REVISION,
                         _HISTORY, _DESIRED, _MAX,
                         "deprecated.deployment.rollback.to"})


def _revision(rs: Obj) -> int:
    try:
        return int((rs["metadata"].get("annotations") or {}).get(REVISION, "0"))
    except ValueError:
        return 0


def _replicas(rs: Obj) -> int:
    return int(rs["spec"].get("replicas", 0))


def _oldest_first(sets: list[Obj]) -> list[Obj]:
    return sorted(sets, key=lambda rs: (rs["metadata"].get("creationTimestamp") or "",
                                        rs["metadata"]["name"]))


class DeploymentController(Controller):
    """Reconciles every Deployment's ReplicaSets and status (see the module docstring).

    It reads the stored objects (Store.peek), copying only the ReplicaSets a
    Deployment owns (it updates them in place), and finds those through the
    owner index. It wakes for writes of Deployments and ReplicaSets, and of pods
    only while a Recreate rollout waits for old pods to stop (nothing else it
    decides depends on pods).
    """

    name = "deployment-controller"
    _QUIET = (DEPLOYMENTS.key, REPLICASETS.key)

    def __init__(self, rest: Rest, *, log: Callable[[str], None] | None = None) -> None:
        super().__init__(rest, log=log)
        self.resources: tuple[str, ...] | None = self._QUIET
        index_owners(rest.store, REPLICASETS)
        index_owners(rest.store, PODS)

    def reconcile(self) -> None:
        self.resources = self._QUIET
        for d in self.rest.store.peek(DEPLOYMENTS.key):
            selector = d["spec"].get("selector")
            candidates = claim_candidates(self.rest.store, REPLICASETS, d, selector)
            owned = claim(self.rest, REPLICASETS, d, DEPLOYMENTS, candidates, selector)
            self._sync(d, _oldest_first([copy.deepcopy(rs) for rs in owned]))

    def _sync(self, d: Obj, owned: list[Obj]) -> None:
        wanted = without_hash(d["spec"]["template"])
        new = next((rs for rs in owned if without_hash(rs["spec"]["template"]) == wanted), None)
        old = [rs for rs in owned if rs is not new]
        created = False
        if new is not None and not d["metadata"].get("deletionTimestamp"):
            self._sync_revision(new, old)
        if not d["metadata"].get("deletionTimestamp") and not d["spec"].get("paused"):
            if d["spec"]["strategy"].get("type") == "Recreate":
                new, created = self._recreate(d, new, old)
            else:
                new, created = self._rolling(d, new, old)
        elif new is not None and not d["metadata"].get("deletionTimestamp") and \
                not any(_replicas(rs) for rs in old):
            self._scale(d, new, int(d["spec"]["replicas"]))  # paused: scaling still applies
        self._write_status(d, new, old, created)

    # -- strategies ----------------------------------------------------------------------

    def _rolling(self, d: Obj, new: Obj | None, old: list[Obj]) -> tuple[Obj | None, bool]:
        replicas = int(d["spec"]["replicas"])
        surge, unavailable = max_surge_unavailable(d)
        created = new is None
        if new is None:
            room = replicas + surge - sum(_replicas(rs) for rs in old)
            new = self._create(d, old, max(0, min(room, replicas)))
            if new is None:
                return None, False
        elif _replicas(new) > replicas:
            self._scale(d, new, replicas)
        elif _replicas(new) < replicas:
            total = sum(_replicas(rs) for rs in [*old, new])
            up = min(replicas + surge - total, replicas - _replicas(new))
            if up > 0:
                self._scale(d, new, _replicas(new) + up)
                return new, created
        self._scale_down_old(d, new, old, replicas - unavailable)
        self._cleanup(d, new, old)
        return new, created

    def _scale_down_old(self, d: Obj, new: Obj, old: list[Obj], min_available: int) -> None:
        if not any(_replicas(rs) for rs in old):
            return
        total = sum(_replicas(rs) for rs in [*old, new])
        new_unavailable = _replicas(new) - int(new.get("status", {}).get("availableReplicas", 0))
        budget = total - min_available - new_unavailable
        if budget <= 0:
            return  # scaling down now would go below the availability floor
        for rs in old:  # unhealthy replicas first: removing them costs no availability
            unhealthy = _replicas(rs) - int(rs.get("status", {}).get("availableReplicas", 0))
            cut = min(budget, max(unhealthy, 0))
            if cut > 0:
                self._scale(d, rs, _replicas(rs) - cut)
                budget -= cut
        available = sum(int(rs.get("status", {}).get("availableReplicas", 0))
                        for rs in [*old, new])
        budget = available - min_available
        for rs in old:
            cut = min(_replicas(rs), budget)
            if cut > 0:
                self._scale(d, rs, _replicas(rs) - cut)
                budget -= cut

    def _recreate(self, d: Obj, new: Obj | None, old: list[Obj]) -> tuple[Obj | None, bool]:
        for rs in old:
            if _replicas(rs):
                self._scale(d, rs, 0)
        if self._old_pods_running(d, old):
            return new, False
        created = new is None
        if new is None:
            new = self._create(d, old, int(d["spec"]["replicas"]))
        elif _replicas(new) != int(d["spec"]["replicas"]):
            self._scale(d, new, int(d["spec"]["replicas"]))
        if new is not None:
            self._cleanup(d, new, old)
        return new, created

    def _old_pods_running(self, d: Obj, old: list[Obj]) -> bool:
        ns = d["metadata"]["namespace"]
        running = any(p.get("status", {}).get("phase") not in ("Succeeded", "Failed")
                      for rs in old for p in self.rest.store.peek(
                          PODS.key, ns, index=(OWNER_INDEX, f"uid {rs['metadata']['uid']}")))
        if running:
            self.resources = (*self._QUIET, PODS.key)  # their stopping resumes the rollout
        return running

    def _cleanup(self, d: Obj, new: Obj, old: list[Obj]) -> None:
        # Only once the rollout is done: old ReplicaSets at 0 beyond the history limit go.
        status = deployment_status(d, new, old)
        if not rollout_complete(d, status):
            return
        idle = [rs for rs in old if not _replicas(rs) and not rs.get("status", {}).get(
            "replicas") and not rs["metadata"].get("deletionTimestamp")]
        limit = int(d["spec"].get("revisionHistoryLimit", 10))
        for rs in idle[:max(0, len(idle) - limit)]:
            try:
                self.rest.delete(REPLICASETS, rs["metadata"]["namespace"], rs["metadata"]["name"],
                                 preconditions={"uid": rs["metadata"]["uid"]})
            except ApiError as e:
                if e.code not in (404, 409):
                    raise

    # -- writes --------------------------------------------------------------------------

    def _create(self, d: Obj, old: list[Obj], replicas: int) -> Obj | None:
        collisions = int(d.get("status", {}).get("collisionCount", 0))
        template = copy.deepcopy(d["spec"]["template"])
        digest = template_hash(template, collisions)
        labels = template.setdefault("metadata", {}).setdefault("labels", {})
        labels[TEMPLATE_HASH] = digest
        selector = copy.deepcopy(d["spec"]["selector"])
        selector.setdefault("matchLabels", {})[TEMPLATE_HASH] = digest
        annotations = {k: v for k, v in (d["metadata"].get("annotations") or {}).items()
                       if k not in _NOT_COPIED}
        annotations[REVISION] = str(max((_revision(rs) for rs in old), default=0) + 1)
        annotations.update(self._replica_annotations(d))
        body: Obj = {
            "metadata": {"name": f"{d['metadata']['name']}-{digest}", "labels": dict(labels),
                         "annotations": annotations,
                         "ownerReferences": [owner_reference(d, DEPLOYMENTS)]},
            "spec": {"replicas": replicas, "minReadySeconds": d["spec"].get(
                "minReadySeconds", 0), "selector": selector, "template": template},
        }
        try:
            return self.rest.create(REPLICASETS, d["metadata"]["namespace"], body)
        except ApiError as e:
            if e.reason != "AlreadyExists":
                raise
        # A ReplicaSet of that name exists with another template: hash again, differently.
        self._update_status(d, {"collisionCount": collisions + 1})
        return None

    def _sync_revision(self, new: Obj, old: list[Obj]) -> None:
        # The new ReplicaSet has the highest revision; one rolled back to moves up and
        # keeps its former revisions in revision-history.
        wanted = max((_revision(rs) for rs in old), default=0) + 1
        current = _revision(new)
        if current >= wanted:
            return
        annotations = dict(new["metadata"].get("annotations") or {})
        if current:
            history = [r for r in annotations.get(_HISTORY, "").split(",") if r]
            annotations[_HISTORY] = ",".join([*history, str(current)])
        annotations[REVISION] = str(wanted)
        try:
            updated = self.rest.patch(REPLICASETS, new["metadata"]["namespace"],
                                      new["metadata"]["name"], "application/merge-patch+json",
                                      {"metadata": {"annotations": annotations}})
        except ApiError as e:
            if e.code != 404:
                raise
            return
        new.clear()
        new.update(updated)

    @staticmethod
    def _replica_annotations(d: Obj) -> dict[str, str]:
        replicas = int(d["spec"]["replicas"])
        return {_DESIRED: str(replicas), _MAX: str(replicas + max_surge_unavailable(d)[0])}

    def _scale(self, d: Obj, rs: Obj, replicas: int) -> None:
        annotations = self._replica_annotations(d)
        current = rs["metadata"].get("annotations") or {}
        if _replicas(rs) == replicas and all(current.get(k) == v for k, v in annotations.items()):
            return
        self._log(f"{self.name}: {rs['metadata']['namespace']}/{rs['metadata']['name']} "
                  f"scaled to {replicas}")
        try:
            updated = self.rest.patch(
                REPLICASETS, rs["metadata"]["namespace"], rs["metadata"]["name"],
                "application/merge-patch+json",
                {"metadata": {"annotations": annotations}, "spec": {"replicas": replicas}})
        except ApiError as e:
            if e.code != 404:
                raise
            return
        rs.clear()
        rs.update(updated)

    def _write_status(self, d: Obj, new: Obj | None, old: list[Obj], created: bool) -> None:
        status = deployment_status(d, new, old, created=created)
        revision = str(_revision(new)) if new is not None else None
        if d.get("status") == status and (not revision or revision == "0" or (
                d["metadata"].get("annotations") or {}).get(REVISION) == revision):
            return  # unchanged: not a write (saves the store's copy and compare)
        uid = d["metadata"]["uid"]

        def change(current: Obj) -> Obj | None:
            if current["metadata"]["uid"] != uid:
                return None
            current["status"] = status
            if revision and revision != "0":
                current["metadata"].setdefault("annotations", {})[REVISION] = revision
            return current

        self._mutate(d, change)

    def _update_status(self, d: Obj, fields: Mapping[str, Any]) -> None:
        def change(current: Obj) -> Obj:
            current.setdefault("status", {}).update(fields)
            return current

        self._mutate(d, change)

    def _mutate(self, d: Obj, change: Any) -> None:
        try:
            self.rest.mutate(DEPLOYMENTS, d["metadata"]["namespace"], d["metadata"]["name"],
                             change)
        except ApiError as e:
            if e.code != 404:
                raise
