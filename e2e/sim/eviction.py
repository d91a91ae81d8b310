"""The pods/eviction subresource: delete a pod unless a disruption budget forbids it.

    POST /api/v1/namespaces/NS/pods/NAME/eviction
    {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": NAME},
     "deleteOptions": {...}}

As pkg/registry/core/pod/storage/eviction.go decides (Kubernetes 1.30):

- a pod that is Pending, finished or already being deleted is deleted at once;
- otherwise the PodDisruptionBudgets of its namespace selecting it decide: none
  -> deleted; more than one -> 500; one whose status is older than its spec ->
  429 (retry after 10 s); a pod that is not Ready is deleted without using the
  budget if the policy is AlwaysAllow, or (IfHealthyBudget, the default) while
  currentHealthy >= desiredHealthy > 0; else disruptionsAllowed must be > 0:
  it is decremented and the pod recorded in disruptedPods, atomically, so two
  evictions cannot share one allowed disruption; at 0 -> 429 TooManyRequests,
  "Cannot evict pod as it would violate the pod's disruption budget.", with a
  cause of reason DisruptionBudget.

Deleting adds the DisruptionTarget condition (reason EvictionByEvictionAPI) and
honours the Eviction's deleteOptions (grace period, preconditions, dry run).
Success is 201 with a Status of status Success.
"""

from __future__ import annotations

from typing import Any

from e2e.nodes.protocol import Request, Response
from e2e.sim.api import SubresourceHandler
from e2e.sim.controllers import set_condition
from e2e.sim.core import PODS
from e2e.sim.errors import (
    ApiError,
    bad_request,
    conflict,
    forbidden,
    method_not_allowed,
    status_body,
)
from e2e.sim.meta import now, rfc3339
from e2e.sim.owners import is_pod_ready, selector_matches
from e2e.sim.policy import PODDISRUPTIONBUDGETS, set_disruption_allowed
from e2e.sim.resources import ResourceType
from e2e.sim.rest import Rest
from e2e.sim.store import Obj

__all__ = ["BUDGET_VIOLATION", "eviction_handler"]

BUDGET_VIOLATION = "Cannot evict pod as it would violate the pod's disruption budget."
_MANY_BUDGETS = ("This pod has more than one PodDisruptionBudget, which the eviction "
                 "subresource does not support.")
_VERSIONS = ("policy/v1", "policy/v1beta1")
# More recorded-but-unconfirmed evictions than this and the budget refuses (upstream's bound).
_MAX_DISRUPTED = 2000
_CONFLICT_RETRIES = 5


def _too_many_requests(cause: str, retry_after: int = 0) -> ApiError:
    details: dict[str, Any] = {"causes": [{"reason": "DisruptionBudget", "message": cause}]}
    if retry_after:
        details["retryAfterSeconds"] = retry_after
    return ApiError(429, "TooManyRequests", BUDGET_VIOLATION, details)


def _still_processing(pdb_name: str) -> ApiError:
    return _too_many_requests(
        f"The disruption budget {pdb_name} is still being processed by the server.", 10)


def _options(body: Any, namespace: str, name: str) -> dict[str, Any]:
    if not isinstance(body, dict) or body.get("kind") != "Eviction" or \
            body.get("apiVersion") not in _VERSIONS:
        raise bad_request("the body of an eviction must be a policy/v1 Eviction")
    meta = body.get("metadata") or {}
    if meta.get("name") != name:
        raise bad_request("name in URL does not match name in Eviction object")
    if meta.get("namespace") not in (None, "", namespace):
        raise bad_request("the namespace of the provided object does not match the namespace "
                          "sent on the request")
    options = body.get("deleteOptions") or {}
    if not isinstance(options, dict):
        raise bad_request("deleteOptions must be DeleteOptions")
    return options


class _Eviction:
    """One eviction request against the store."""

    def __init__(self, rest: Rest, namespace: str, name: str, options: dict[str, Any],
                 dry_run: bool) -> None:
        self.rest, self.namespace, self.name = rest, namespace, name
        self.options = options
        self.dry_run = dry_run or bool(options.get("dryRun"))
        self.preconditions = dict(options.get("preconditions") or {})
        grace = options.get("gracePeriodSeconds")
        self.grace = int(grace) if grace is not None else None

    def run(self) -> Response:
        for attempt in range(_CONFLICT_RETRIES):
            pod = self.rest.get(PODS, self.namespace, self.name)
            if not self._ignores_budgets(pod):
                break
            rv = None if self._terminal(pod) else pod["metadata"]["resourceVersion"]
            try:
                self._delete(rv)
                return self._success()
            except ApiError as e:
                if e.code != 409 or self.preconditions.get("resourceVersion") or \
                        attempt == _CONFLICT_RETRIES - 1:
                    raise
        budgets = self._budgets(pod)
        if len(budgets) > 1:
            return Response(500, status_body(500, "", _MANY_BUDGETS))
        pin_version = bool(budgets) and self._unhealthy_may_go(pod, budgets[0])
        if budgets and not pin_version:
            self._check_and_decrement(budgets[0]["metadata"]["name"])
        try:
            self._delete(pod["metadata"]["resourceVersion"] if pin_version else None)
        except ApiError as e:
            if e.code == 409 and pin_version and not self.preconditions.get("resourceVersion"):
                # The pod may have become ready meanwhile: the client should retry.
                raise _still_processing(budgets[0]["metadata"]["name"]) from None
            raise
        return self._success()

    @staticmethod
    def _success() -> Response:
        return Response(201, status_body(201, "", ""))

    @staticmethod
    def _terminal(pod: Obj) -> bool:
        return pod.get("status", {}).get("phase") in ("Succeeded", "Failed") or bool(
            pod["metadata"].get("deletionTimestamp"))

    def _ignores_budgets(self, pod: Obj) -> bool:
        # A finished, pending or terminating pod already is (or never was) a disruption.
        return self._terminal(pod) or pod.get("status", {}).get("phase") == "Pending"

    def _budgets(self, pod: Obj) -> list[Obj]:
        labels = pod["metadata"].get("labels")
        budgets, _ = self.rest.list(PODDISRUPTIONBUDGETS, self.namespace, lambda b: (
            selector_matches(b["spec"].get("selector"), labels)))
        return budgets

    @staticmethod
    def _unhealthy_may_go(pod: Obj, pdb: Obj) -> bool:
        if is_pod_ready(pod):
            return False
        if pdb["spec"].get("unhealthyPodEvictionPolicy") == "AlwaysAllow":
            return True
        status = pdb.get("status") or {}
        desired = int(status.get("desiredHealthy", 0))
        return int(status.get("currentHealthy", 0)) >= desired > 0

    def _check_and_decrement(self, pdb_name: str) -> None:
        def decrement(pdb: Obj) -> Obj | None:
            status = pdb.setdefault("status", {})
            allowed = int(status.get("disruptionsAllowed", 0))
            if int(status.get("observedGeneration", 0)) < int(pdb["metadata"].get(
                    "generation", 1)):
                raise _still_processing(pdb_name)
            if allowed < 0:
                raise forbidden("poddisruptionbudget", pdb_name,
                                "pdb disruptions allowed is negative", "policy")
            if len(status.get("disruptedPods") or {}) > _MAX_DISRUPTED:
                raise forbidden("poddisruptionbudget", pdb_name, "DisruptedPods map too big - "
                                "too many evictions not confirmed by PDB controller", "policy")
            if allowed == 0:
                raise _too_many_requests(
                    f"The disruption budget {pdb_name} needs {status.get('desiredHealthy', 0)} "
                    f"healthy pods and has {status.get('currentHealthy', 0)} currently")
            if self.dry_run:
                return None
            status["disruptionsAllowed"] = allowed - 1
            if allowed == 1:
                set_disruption_allowed(status)
            status.setdefault("disruptedPods", {})[self.name] = rfc3339(now())
            return pdb

        self.rest.mutate(PODDISRUPTIONBUDGETS, self.namespace, pdb_name, decrement)

    def _delete(self, pin_rv: str | None) -> None:
        wanted = dict(self.preconditions)
        if pin_rv and not wanted.get("resourceVersion"):
            wanted["resourceVersion"] = pin_rv
        if self.dry_run:
            self._check(self.rest.get(PODS, self.namespace, self.name), wanted)
            return

        def mark(pod: Obj) -> Obj:
            self._check(pod, wanted)
            set_condition(pod.setdefault("status", {}), "DisruptionTarget", "True",
                          "EvictionByEvictionAPI", "Eviction API: evicting")
            return pod

        marked = self.rest.mutate(PODS, self.namespace, self.name, mark)
        if wanted.get("resourceVersion"):
            wanted["resourceVersion"] = marked["metadata"]["resourceVersion"]
        self.rest.delete(PODS, self.namespace, self.name, grace=self.grace, preconditions=wanted)

    def _check(self, pod: Obj, wanted: dict[str, Any]) -> None:
        meta = pod["metadata"]
        for key, field in (("uid", "UID"), ("resourceVersion", "ResourceVersion")):
            if wanted.get(key) and wanted[key] != meta.get(key):
                raise conflict("Pod", self.name, f"the {field} in the precondition "
                               f"({wanted[key]}) does not match the {field} in record "
                               f"({meta.get(key)}). The object might have been modified")


def eviction_handler(rest: Rest) -> SubresourceHandler:
    """The SubresourceHandler serving pods/eviction."""

    def handle(req: Request, verb: str, rt: ResourceType, namespace: str, name: str
               ) -> Response:
        if verb != "create":
            raise method_not_allowed()
        options = _options(req.json(), namespace, name)
        eviction = _Eviction(rest, namespace, name, options, req.param("dryRun") == "All")
        try:
            return eviction.run()
        except ApiError as e:
            retry = (e.details or {}).get("retryAfterSeconds")
            headers = {"Retry-After": str(retry)} if e.code == 429 and retry else {}
            return Response(e.code, e.status(), headers=headers)

    return handle
