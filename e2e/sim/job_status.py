"""A Job's status: counting finished pods through their finalizer, and the verdicts.

Counting follows the job controller's trackJobStatusAndRemoveFinalizers: the
uids of finished pods still carrying `batch.kubernetes.io/job-tracking` are
first written to status.uncountedTerminatedPods, then the finalizers are
removed, then the uids move into `succeeded` / `failed`. A pod is thereby
counted exactly once, even if it is deleted right after it finished.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from e2e.sim.core import PODS
from e2e.sim.errors import ApiError
from e2e.sim.owners import is_pod_ready, set_typed_condition
from e2e.sim.rest import Rest
from e2e.sim.store import Obj

__all__ = [
    "JOB_TRACKING",
    "count_finished",
    "drop_tracking_finalizer",
    "finish_condition",
    "job_status",
    "set_job_condition",
]

#: The finalizer that keeps a Job's pod until the Job has counted it.
JOB_TRACKING = "batch.kubernetes.io/job-tracking"
_OUTCOMES = ("succeeded", "failed")

#: (job, new status) -> the stored Job.
StatusWriter = Callable[[Obj, dict[str, Any]], Obj]


def _outcome(pod: Obj) -> str | None:
    phase = pod.get("status", {}).get("phase")
    if phase == "Succeeded":
        return "succeeded"
    if phase == "Failed" or pod["metadata"].get("deletionTimestamp"):
        return "failed"  # deleted before it finished: a failure (TerminatingOrFailed)
    return None


def _tracked(pod: Obj) -> bool:
    return JOB_TRACKING in (pod["metadata"].get("finalizers") or [])


def drop_tracking_finalizer(rest: Rest, pod: Obj) -> None:
    """Remove the job-tracking finalizer from `pod` (if it is still the same pod)."""
    uid = pod["metadata"]["uid"]

    def change(current: Obj) -> Obj | None:
        meta = current["metadata"]
        if meta["uid"] != uid:
            return None
        left = [f for f in meta.get("finalizers") or [] if f != JOB_TRACKING]
        if left:
            meta["finalizers"] = left
        else:
            meta.pop("finalizers", None)
        return current

    try:
        rest.mutate(PODS, pod["metadata"]["namespace"], pod["metadata"]["name"], change)
    except ApiError as e:
        if e.code != 404:
            raise


def count_finished(rest: Rest, job: Obj, pods: list[Obj], write: StatusWriter) -> Obj:
    """Count the Job's newly finished pods (see the module docstring); the Job as stored."""
    status = dict(job.get("status") or {})
    uncounted = {k: list((status.get("uncountedTerminatedPods") or {}).get(k) or [])
                 for k in _OUTCOMES}
    tracked = [p for p in pods if _tracked(p)]
    fresh = False
    for pod in tracked:
        outcome = _outcome(pod)
        if outcome and pod["metadata"]["uid"] not in uncounted[outcome]:
            uncounted[outcome].append(pod["metadata"]["uid"])
            fresh = True
    if fresh:
        status["uncountedTerminatedPods"] = {k: v for k, v in uncounted.items() if v}
        job = write(job, status)
    pending = {uid for uids in uncounted.values() for uid in uids}
    if not pending:
        return job
    for pod in tracked:
        if pod["metadata"]["uid"] in pending:
            drop_tracking_finalizer(rest, pod)
    for outcome in _OUTCOMES:
        status[outcome] = int(status.get(outcome, 0)) + len(uncounted[outcome])
    status["uncountedTerminatedPods"] = {}
    return write(job, status)


def _restarts_while_running(pods: list[Obj]) -> int:
    total = 0
    for pod in pods:
        if pod.get("status", {}).get("phase") in ("Running", "Pending"):
            for field in ("initContainerStatuses", "containerStatuses"):
                total += sum(int(s.get("restartCount", 0))
                             for s in pod.get("status", {}).get(field) or [])
    return total


def finish_condition(job: Obj, status: dict[str, Any], pods: list[Obj]
                     ) -> tuple[str, ...] | None:
    """(type, status, reason, message) of the Failed condition the backoff limit calls
    for, or None. With restartPolicy OnFailure, container restarts count too."""
    limit = int(job["spec"].get("backoffLimit", 6))
    exceeded = int(status.get("failed", 0)) > limit
    template = job["spec"].get("template") or {}
    if (template.get("spec") or {}).get("restartPolicy") == "OnFailure":
        restarts = _restarts_while_running(pods)
        exceeded = exceeded or (restarts > 0 if limit == 0 else restarts >= limit)
    if exceeded:
        return ("Failed", "True", "BackoffLimitExceeded",
                "Job has reached the specified backoff limit")
    return None


def set_job_condition(conditions: list[dict[str, Any]], type_: str, value: str,
                      reason: str = "", message: str = "") -> None:
    """A JobCondition (lastProbeTime and lastTransitionTime); unchanged if equal."""
    entry: dict[str, Any] = {"type": type_, "status": value}
    if reason:
        entry["reason"] = reason
    if message:
        entry["message"] = message
    set_typed_condition(conditions, entry, time_fields=("lastProbeTime", "lastTransitionTime"),
                        same=lambda c: all(c.get(k) == entry.get(k)
                                           for k in ("status", "reason", "message")))


def job_status(status: dict[str, Any], active: list[Obj], pods: list[Obj]) -> dict[str, Any]:
    """The status to write: counters (zero ones omitted, ready and terminating always
    present), times, conditions and uncountedTerminatedPods."""
    out: dict[str, Any] = {}
    if status.get("conditions"):
        out["conditions"] = status["conditions"]
    for key in ("startTime", "completionTime"):
        if status.get(key):
            out[key] = status[key]
    if active:
        out["active"] = len(active)
    for key in _OUTCOMES:
        if status.get(key):
            out[key] = status[key]
    out["terminating"] = sum(1 for p in pods if p["metadata"].get("deletionTimestamp")
                             and p.get("status", {}).get("phase") not in ("Succeeded", "Failed"))
    out["uncountedTerminatedPods"] = status.get("uncountedTerminatedPods") or {}
    out["ready"] = sum(1 for p in active if is_pod_ready(p))
    return out
