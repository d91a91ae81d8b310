"""The Job controller: runs a Job's pods to completion (job/job_controller.go, 1.30).

Each pass over a Job:

1. claims its pods (all phases; matching orphans are adopted) and counts the
   finished ones through the `batch.kubernetes.io/job-tracking` finalizer
   every pod gets: a finished pod's uid goes into
   status.uncountedTerminatedPods, its finalizer is removed, then it is added
   to `succeeded` or `failed`. A pod deleted before it finished counts as
   failed (podReplacementPolicy TerminatingOrFailed);
2. decides whether the Job is over: Failed/BackoffLimitExceeded when failures
   exceed backoffLimit (for restartPolicy OnFailure: when container restarts
   reach it), Failed/DeadlineExceeded once activeDeadlineSeconds have passed
   since startTime, Complete once `completions` pods succeeded (without
   completions: once one succeeded and none is left running); the pods still
   running are then deleted;
3. otherwise keeps min(parallelism, completions - succeeded) pods active,
   creating them from the template (generateName `<job>-`) or deleting the
   surplus; `suspend` deletes them all and sets the Suspended condition;
4. writes status: active, ready, terminating, succeeded, failed, startTime,
   completionTime, conditions.

Failed pods are replaced at once: the real controller's exponential back-off
(10 s, doubling) is not simulated. Pods whose Job is gone lose the finalizer.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from e2e.sim.batch import JOBS
from e2e.sim.controllers import Controller
from e2e.sim.core import PODS
from e2e.sim.errors import ApiError
from e2e.sim.job_status import (
    JOB_TRACKING,
    count_finished,
    drop_tracking_finalizer,
    finish_condition,
    job_status,
    set_job_condition,
)
from e2e.sim.meta import now, parse_time, rfc3339
from e2e.sim.owners import (
    claim,
    claim_candidates,
    controller_ref,
    index_owners,
    is_pod_active,
    pod_from_template,
)
from e2e.sim.replicaset import deletion_order
from e2e.sim.rest import Rest
from e2e.sim.store import Obj

__all__ = ["JobController"]


_TRACKED_INDEX = "job-tracking"


def _tracked(pod: Obj) -> list[str]:
    # Pods holding the job-tracking finalizer, found without reading every pod.
    return [JOB_TRACKING] if JOB_TRACKING in (pod["metadata"].get("finalizers") or []) else []


def _finished(job: Obj) -> bool:
    return any(c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
               for c in (job.get("status") or {}).get("conditions") or [])


class JobController(Controller):
    """Runs every Job's pods to completion (see the module docstring)."""

    name = "job-controller"
    resources = (JOBS.key, PODS.key)
    _wakeup: float | None = None

    def __init__(self, rest: Rest, *, log: Callable[[str], None] | None = None) -> None:
        super().__init__(rest, log=log)
        index_owners(rest.store, PODS)
        rest.store.add_index(PODS.key, _TRACKED_INDEX, _tracked)

    def reconcile(self) -> None:
        self._wakeup = None
        jobs, _ = self.rest.list(JOBS, None)
        for job in jobs:
            self._sync(job)
        self._release_orphans({j["metadata"]["uid"] for j in jobs})

    def next_wakeup(self) -> float | None:
        return self._wakeup

    def _sync(self, job: Obj) -> None:
        # The stored pods themselves (never mutated here), found through the owner index.
        selector = job["spec"].get("selector")
        candidates = claim_candidates(self.rest.store, PODS, job, selector)
        pods = claim(self.rest, PODS, job, JOBS, candidates, selector)
        job = count_finished(self.rest, job, pods, self._write)
        active = [p for p in pods if is_pod_active(p)]
        status: dict[str, Any] = dict(job.get("status") or {})
        conditions: list[dict[str, Any]] = list(status.get("conditions") or [])
        status["conditions"] = conditions
        spec = job["spec"]
        live = not _finished(job) and not job["metadata"].get("deletionTimestamp")
        if live and spec.get("suspend"):
            active = self._delete_all(active)
            set_job_condition(conditions, "Suspended", "True", "JobSuspended", "Job suspended")
        elif live:
            if any(c.get("type") == "Suspended" and c.get("status") == "True"
                   for c in conditions):
                set_job_condition(conditions, "Suspended", "False", "JobResumed", "Job resumed")
                status.pop("startTime", None)
            status.setdefault("startTime", _stamp())
            ending = finish_condition(job, status, pods)
            if ending is None:
                ending = self._deadline(job, status)
            if ending is not None:
                set_job_condition(conditions, *ending)
                active = self._delete_all(active)
            elif self._complete(job, status, active):
                set_job_condition(conditions, "Complete", "True")
                status["completionTime"] = _stamp()
                active = self._delete_all(active)
            else:
                active = self._manage(job, status, active)
        self._write(job, job_status(status, active, pods))

    def _deadline(self, job: Obj, status: dict[str, Any]) -> tuple[str, ...] | None:
        seconds = job["spec"].get("activeDeadlineSeconds")
        if seconds is None:
            return None
        end = parse_time(status["startTime"]) + dt.timedelta(seconds=int(seconds))
        left = (end - now()).total_seconds()
        if left <= 0:
            return ("Failed", "True", "DeadlineExceeded",
                    "Job was active longer than specified deadline")
        self._wakeup = left if self._wakeup is None else min(self._wakeup, left)
        return None

    @staticmethod
    def _complete(job: Obj, status: dict[str, Any], active: list[Obj]) -> bool:
        succeeded = int(status.get("succeeded", 0))
        completions = job["spec"].get("completions")
        if completions is not None:
            return succeeded >= int(completions)
        return succeeded > 0 and not active

    def _manage(self, job: Obj, status: dict[str, Any], active: list[Obj]) -> list[Obj]:
        spec = job["spec"]
        succeeded = int(status.get("succeeded", 0))
        want = int(spec.get("parallelism", 1))
        if spec.get("completions") is not None:
            want = min(want, int(spec["completions"]) - succeeded)
        elif succeeded > 0:
            want = len(active)  # a work queue: once one succeeded, no new pods start
        ns = job["metadata"]["namespace"]
        for _ in range(want - len(active)):
            pod = pod_from_template(job, JOBS, spec["template"], finalizers=[JOB_TRACKING])
            try:
                active.append(self.rest.create(PODS, ns, pod))
            except ApiError as e:
                self.failed(f"{ns}/{job['metadata']['name']}: {e}")
                break
        if len(active) > want:
            surplus = deletion_order(active, active)[:len(active) - want]
            active = [p for p in active if p not in surplus] + self._delete_all(surplus)
        return active

    def _delete_all(self, pods: list[Obj]) -> list[Obj]:
        for pod in pods:
            try:
                self.rest.delete(PODS, pod["metadata"]["namespace"], pod["metadata"]["name"],
                                 preconditions={"uid": pod["metadata"]["uid"]})
            except ApiError as e:
                if e.code not in (404, 409):
                    raise
        return []

    def _release_orphans(self, job_uids: set[str]) -> None:
        # A tracked pod whose Job is gone (or never was) must not stay stuck in deletion.
        for pod in self.rest.store.peek(PODS.key, index=(_TRACKED_INDEX, JOB_TRACKING)):
            ref = controller_ref(pod)
            if ref is None or ref.get("kind") != "Job" or ref.get("uid") not in job_uids:
                drop_tracking_finalizer(self.rest, pod)

    def _write(self, job: Obj, status: dict[str, Any]) -> Obj:
        uid = job["metadata"]["uid"]

        def change(current: Obj) -> Obj | None:
            if current["metadata"]["uid"] != uid:
                return None
            current["status"] = status
            return current

        try:
            return self.rest.mutate(JOBS, job["metadata"]["namespace"], job["metadata"]["name"],
                                    change)
        except ApiError as e:
            if e.code != 404:
                raise
            return job


def _stamp() -> str:
    return rfc3339(now())
