"""Claims: one migration at a time per source pod.

Two runs on one pod would each restore a copy; a ReplicaSet then deletes
one, and the other run still reports it as its restored pod. So a run claims
its source right after preflight, before the checkpoint: the annotation
``migrate.dev/claimed-by: <run id>``, written with the resourceVersion it
read as a precondition. Of two runs racing, exactly one write succeeds; the
other gets 409 Conflict, reads the pod again and finds the claim.

A claim held by another run is refused, unless it is stale: the other run's
journal is on this machine, no process holds its lock, and it ended
(succeeded, failed, rolled back). A run that was interrupted (or whose
process died) still owns its pod: it is resumed or rolled back, and a
rollback releases the claim. A claim whose journal is not here cannot be
judged: it is refused with the way to lift it by hand.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from migrate.adapters import kube
from migrate.errors import ClusterError, ConflictError, MigrateError, UsageError
from migrate.pipeline.journal import Journal

Obj = dict[str, Any]

CLAIM = "migrate.dev/claimed-by"
#: The label every pod a run creates carries: its run id (rollback finds them by it).
RUN_LABEL = "migrate.dev/migration"
#: Tries of a claim (or release) whose write met a conflict: each re-reads the pod.
ATTEMPTS = 5
ENDED = frozenset({"succeeded", "failed", "rolled-back"})


class Claimed(UsageError):
    """The pod is claimed by another migration; nothing was changed."""


@dataclass(frozen=True)
class Holder:
    """Another run's claim on a pod, as judged from this machine."""

    run: str
    stale: bool
    why: str  # "claimed by migration ID, which ..." (empty when stale)
    hint: str


def holder_of(pod: Obj) -> str | None:
    """The run id the pod is claimed by, if any."""
    value = ((pod.get("metadata") or {}).get("annotations") or {}).get(CLAIM)
    return str(value) if value else None


def judge(state_dir: Path | None, pod: Obj, run: str) -> Holder:
    """Whether run ``run``'s claim on ``pod`` may be taken over, and if not, why."""
    meta = pod.get("metadata") or {}
    where = f"-n {meta.get('namespace', 'default')} {meta.get('name')}"
    try:
        journal = Journal.load(state_dir, run)
    except MigrateError:  # not here, damaged, or not even a journal id
        return Holder(run, False, f"claimed by migration {run}, whose journal is not on "
                      "this machine",
                      f"roll it back where it ran (`migrate rollback {run}`); if that run is "
                      f"gone for good, remove the claim: kubectl annotate pod {where} "
                      f"{CLAIM}-")
    if not journal.lock_free():
        return Holder(run, False, f"claimed by migration {run}, which another process is "
                      "running", "wait for it to end (`migrate history` shows how it did)")
    if journal.outcome in ENDED:
        return Holder(run, True, "", "")
    return Holder(run, False, f"claimed by migration {run}, which was interrupted",
                  f"`migrate resume {run}` continues it, `migrate rollback {run}` undoes it "
                  "and releases the pod")


def check(state_dir: Path | None, pod: Obj, run: str | None = None) -> None:
    """Refuse a pod another run holds (``run``: ours, which may hold it)."""
    holder = holder_of(pod)
    if holder is None or holder == run:
        return
    verdict = judge(state_dir, pod, holder)
    if not verdict.stale:
        meta = pod["metadata"]
        raise Claimed(f"pod {meta.get('namespace')}/{meta['name']} is {verdict.why}",
                      hint=verdict.hint)


def check_journals(state_dir: Path | None, pod: Obj) -> None:
    """Refuse a pod that a run recorded on this machine has not finished with, even
    when the pod carries no claim (a run stopped before it could write one): a new run
    would checkpoint it again beside the one left. Runs of another pod of the same name
    (another uid) do not count."""
    meta = pod.get("metadata") or {}
    for journal in Journal.of_subject(state_dir, "pod", str(meta.get("name", ""))):
        plan = journal.stage("preflight").data.get("plan") or {}
        if (journal.request.get("pod") != meta.get("name") or plan.get("uid") != meta.get("uid")
                or journal.current_outcome() not in ("running", "interrupted")):
            continue
        verdict = judge(state_dir, pod, journal.id)
        raise Claimed(f"pod {meta.get('namespace')}/{meta['name']} is "
                      f"{verdict.why.replace('claimed by', 'held by', 1)}", hint=verdict.hint)


def blocked_reason(state_dir: Path | None, pod: Obj) -> str | None:
    """Why a drain must leave ``pod`` alone: a claim another run holds (None: free)."""
    holder = holder_of(pod)
    if holder is None:
        return None
    verdict = judge(state_dir, pod, holder)
    return None if verdict.stale else verdict.why


def _current(cluster: kube.Cluster, namespace: str, name: str, uid: str) -> Obj | None:
    found = kube.find_pod(cluster, namespace, name)
    return found if found is not None and found["metadata"].get("uid") == uid else None


def take(cluster: kube.Cluster, state_dir: Path | None, namespace: str, name: str, uid: str,
         run: str, resource_version: str | None = None) -> bool:
    """Claim pod ``uid`` for ``run``; False when the pod is gone (nothing to claim).

    ``resource_version``: the version the caller read and checked (preflight),
    so that the first try needs no read; without it, the pod is read first.
    `Claimed` when another run holds it.
    """
    for _ in range(ATTEMPTS):
        if resource_version is None:
            pod = _current(cluster, namespace, name, uid)
            if pod is None:
                return False
            if holder_of(pod) == run:
                return True
            check(state_dir, pod, run)
            resource_version = str(pod["metadata"].get("resourceVersion") or "")
        try:
            kube.patch_pod(cluster, namespace, name, {"metadata": {
                "resourceVersion": resource_version, "annotations": {CLAIM: run}}})
            return True
        except ConflictError:
            resource_version = None  # changed since: read it again, judge again
    raise ClusterError(f"pod {namespace}/{name} kept changing while migration {run} tried to "
                       f"claim it ({ATTEMPTS} tries)", hint="try again")


def release(cluster: kube.Cluster, namespace: str, name: str, uid: str, run: str) -> bool:
    """Remove ``run``'s claim from pod ``uid``; False when there was none to remove
    (the pod is gone, unclaimed, or claimed by another run)."""
    for _ in range(ATTEMPTS):
        pod = _current(cluster, namespace, name, uid)
        if pod is None or holder_of(pod) != run:
            return False
        try:
            kube.patch_pod(cluster, namespace, name, {"metadata": {
                "resourceVersion": pod["metadata"].get("resourceVersion"),
                "annotations": {CLAIM: None}}})
            return True
        except ConflictError:
            continue
    raise ClusterError(f"pod {namespace}/{name} kept changing while migration {run} tried to "
                       f"release its claim ({ATTEMPTS} tries)",
                       hint=f"remove it by hand: kubectl annotate pod -n {namespace} {name} "
                       f"{CLAIM}-")
