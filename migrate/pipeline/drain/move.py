"""Move one pod of the drain with the `migrate pod` pipeline.

Each attempt is a `migrate pod` run of its own, made with the calls `migrate
pod` makes (migration.plan, start, Migration.run), with its own journal (the
drain records its id): preflight, checkpoint, build, create, verify,
switch-over, cleanup, rolled back on failure. What is the drain's own is
here: the disruption budgets' waits, the retries, a pod gone meanwhile, the
journal ids in the drain's state. A run that failed for a
transient reason (the API server or the registry) and was rolled back is
tried again, up to the request's attempts. A resumed drain continues a run
that was interrupted from its own journal.

Stopping: the drain sets its stop event; each run stops at its next stage
boundary (the progress callback raises KeyboardInterrupt there, before the
stage starts), so its journal is left resumable like any interrupted run.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from migrate.adapters import kube
from migrate.errors import MigrateError, Transient
from migrate.pipeline import migration
from migrate.pipeline.drain.budgets import Interrupted
from migrate.pipeline.drain.classify import SKIP, classify
from migrate.pipeline.drain.plan import PodPlan
from migrate.pipeline.drain.state import FAILED, GONE, INTERRUPTED, MIGRATED, Context
from migrate.pipeline.preflight import PodRequest
from migrate.retry import backoff


class _Gone(Exception):
    """The planned pod left the node by itself before its turn: deleted, replaced by
    another of its name, terminating, or its containers ended."""


def pod_request(ctx: Context, entry: PodPlan) -> PodRequest:
    """The `migrate pod` request for one planned pod: every container moves."""
    req = ctx.req
    assert entry.destination is not None
    return PodRequest(pod=entry.name, to=entry.destination, namespace=entry.namespace,
                      all_containers=True, registry=req.registry, build_on=req.build_on,
                      timeout=req.timeout, tool_image=req.tool_image,
                      registry_secret=req.registry_secret, encrypt_for=req.encrypt_for,
                      placed=True, delete_emptydir_data=req.delete_emptydir_data)


def _progress(ctx: Context, entry: PodPlan) -> migration.Progress:
    def progress(stage: str, message: str) -> None:
        if message == "started" and ctx.stop.is_set():
            raise KeyboardInterrupt  # a stage boundary: the safe place to stop
        if ctx.settings.output.verbose:
            ctx.progress(entry.key, f"{stage}: {message}")
    return progress


def _left(cluster: kube.Cluster, entry: PodPlan) -> bool:
    """Whether the planned pod has left the node by itself: gone, another in its name,
    or what the plan skips (terminating, its containers ended: classify.py)."""
    found = kube.find_pod(cluster, entry.namespace, entry.name)
    return (found is None or found["metadata"].get("uid") != entry.uid
            or classify(found)[0] == SKIP)


def _start(ctx: Context, cluster: kube.Cluster, entry: PodPlan) -> migration.Migration:
    """Preflight, then a new run (its journal and claim), recorded in the drain's state."""
    try:
        planned = migration.plan(cluster, ctx.settings, pod_request(ctx, entry))
    except MigrateError:
        # A drain of many pods takes minutes: its owner may have deleted or replaced a
        # pod, or it may have ended, since the plan. Asked only when preflight refuses,
        # so a drain pays nothing for it.
        if _left(cluster, entry):
            raise _Gone from None
        raise
    if planned.plan.uid != entry.uid:
        raise _Gone
    started = migration.start(planned)
    result = ctx.state.result(entry.key)
    ctx.state.update(entry.key, journals=[*result.get("journals", []), started.id],
                     attempts=int(result.get("attempts", 0)) + 1)
    ctx.progress(entry.key, f"migrating to {entry.destination} ({started.id})")
    return started


def _unfinished(ctx: Context, entry: PodPlan) -> migration.Migration | None:
    """This pod's last run, if a resume should continue it (locked if it is to run)."""
    journals = ctx.state.result(entry.key).get("journals") or []
    if not journals:
        return None
    last = migration.load(ctx.settings, journals[-1])
    if last.journal.outcome == "rolled-back":
        return None  # nothing of it is left: start afresh
    if last.journal.outcome in ("running", "interrupted", "failed"):
        last.journal.lock()
    return last


def _retryable(ctx: Context, entry: PodPlan, error: MigrateError, tries: int) -> bool:
    """Whether to try again: a transient failure, rolled back, under the limit. ``tries``
    counts this drain's tries, those that failed before a run began (a preflight that met
    the registry down) included; the state's attempts count the runs begun, a resumed
    drain's earlier ones too."""
    cause = error.__cause__ if isinstance(error, migration.StageFailed) else error
    rolled_back = (not isinstance(error, migration.StageFailed)
                   or error.journal.outcome == "rolled-back")
    attempts = int(ctx.state.result(entry.key).get("attempts", 0))
    return (isinstance(cause, Transient) and rolled_back
            and max(attempts, tries) < ctx.req.attempts)


def _run(ctx: Context, cluster: kube.Cluster, entry: PodPlan,
         resumed: migration.Migration | None) -> dict[str, Any]:
    """One attempt: continue ``resumed`` or start a new run; the result's fields."""
    run = resumed or _start(ctx, cluster, entry)
    journal = run.journal
    # A run that failed after its switch-over (a resumed drain's) is finished, as
    # `migrate resume` finishes one: its restored pod is the workload now.
    if journal.outcome != "succeeded":
        try:
            # The kubelet's Events are progress for -v only: without it, no watch for them.
            run.run(cluster, ctx.settings, _progress(ctx, entry),
                    follow_kubelet=ctx.settings.output.verbose > 0)
        except migration.Interrupted:
            return {"outcome": INTERRUPTED}
    return {"outcome": MIGRATED, "restored_pod": run.restored_pod, "error": None}


def _failed(error: MigrateError) -> dict[str, Any]:
    return {"outcome": FAILED, "error": error.message, "hint": error.hint}


def _attempt(ctx: Context, cluster: kube.Cluster, entry: PodPlan,
             resumed: migration.Migration | None, tries: int) -> dict[str, Any] | MigrateError:
    """One run's result fields, or the error of one worth another try."""
    try:
        return _run(ctx, cluster, entry, resumed)
    except _Gone:
        return {"outcome": GONE, "error": None}
    except MigrateError as e:
        return e if _retryable(ctx, entry, e, tries) else _failed(e)


def migrate_pod(ctx: Context, entry: PodPlan, deadline: float) -> dict[str, Any]:
    """Move one pod (retrying transient failures); the result's fields."""
    cluster = dataclasses.replace(ctx.cluster, requests=0)  # a counter per thread
    resumed = _unfinished(ctx, entry)
    if resumed is not None and resumed.journal.outcome in ("succeeded", "failed"):
        return {**_run(ctx, cluster, entry, resumed), "api_requests": cluster.requests}
    waited, out, tries = 0.0, None, 0
    while out is None:
        tries += 1
        try:
            waited += ctx.budgets.wait(cluster, entry.namespace, entry.budgets, deadline,
                                       hold=True, waiting=ctx.waiting(entry))
        except (Interrupted, MigrateError) as e:
            if resumed is not None:
                resumed.journal.unlock()
            out = _failed(e) if isinstance(e, MigrateError) else {"outcome": INTERRUPTED}
            break
        try:
            result = _attempt(ctx, cluster, entry, resumed, tries)
        finally:
            ctx.budgets.release(entry.namespace, entry.budgets)
        resumed = None  # a retry starts a new run
        if not isinstance(result, MigrateError):
            out = result
            continue
        # A pause before the next try, as the API calls' retries make one (a failure
        # before any run began, the registry down at preflight, comes back at once);
        # the drain's stop ends it.
        if ctx.stop.wait(backoff(ctx.settings.kube.retry, tries)):
            out = {"outcome": INTERRUPTED}
        else:
            ctx.progress(entry.key, f"retrying after: {result.message}")
    return {**out, "budget_wait_seconds": round(waited, 3), "api_requests": cluster.requests}
