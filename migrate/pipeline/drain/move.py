"""Move one pod of the drain with the `migrate pod` pipeline.

Each attempt is a `migrate pod` run of its own, with its own journal (the
drain records its id): preflight, checkpoint, build, create, verify,
switch-over, cleanup, rolled back on failure. A run that failed for a
transient reason (the API server or the registry) and was rolled back is
tried again, up to the request's attempts. A resumed drain continues a run
that was interrupted from its own journal.

Stopping: the drain sets its stop event; each run stops at its next stage
boundary (the progress callback raises KeyboardInterrupt there, before the
stage starts), so its journal is left resumable like any interrupted run.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from migrate.adapters import kube
from migrate.errors import MigrateError, NotFoundError, Transient
from migrate.pipeline import migration
from migrate.pipeline.drain.budgets import Interrupted
from migrate.pipeline.drain.plan import PodPlan
from migrate.pipeline.drain.state import FAILED, GONE, INTERRUPTED, MIGRATED, Context
from migrate.pipeline.journal import Journal
from migrate.pipeline.preflight import PodRequest, preflight


class _Gone(Exception):
    """The planned pod no longer exists (or another took its name)."""


def pod_request(ctx: Context, entry: PodPlan) -> PodRequest:
    """The `migrate pod` request for one planned pod: every container moves."""
    req = ctx.req
    assert entry.destination is not None
    return PodRequest(pod=entry.name, to=entry.destination, namespace=entry.namespace,
                      all_containers=True, registry=req.registry, build_on=req.build_on,
                      timeout=req.timeout, tool_image=req.tool_image,
                      registry_secret=req.registry_secret, encrypt_for=req.encrypt_for)


def _progress(ctx: Context, entry: PodPlan) -> migration.Progress:
    def progress(stage: str, message: str) -> None:
        if message == "started" and ctx.stop.is_set():
            raise KeyboardInterrupt  # a stage boundary: the safe place to stop
        if ctx.settings.output.verbose:
            ctx.progress(entry.key, f"{stage}: {message}")
    return progress


def _still_there(cluster: kube.Cluster, entry: PodPlan) -> bool:
    found = kube.list_pods(cluster, entry.namespace,
                           field_selector=f"metadata.name={entry.name}")
    return bool(found) and found[0]["metadata"].get("uid") == entry.uid


def _start(ctx: Context, cluster: kube.Cluster, entry: PodPlan) -> Journal:
    """Preflight and open the journal of a new run (nothing changed before it)."""
    t0 = time.perf_counter()
    req = pod_request(ctx, entry)
    try:
        plan = preflight(cluster, ctx.settings, req)
    except NotFoundError:
        if not _still_there(cluster, entry):
            raise _Gone from None
        raise
    if plan.uid != entry.uid:
        raise _Gone
    journal = migration.start(cluster, ctx.settings, req, plan, time.perf_counter() - t0)
    result = ctx.state.result(entry.key)
    ctx.state.update(entry.key, journals=[*result.get("journals", []), journal.id],
                     attempts=int(result.get("attempts", 0)) + 1)
    ctx.progress(entry.key, f"migrating to {entry.destination} ({journal.id})")
    return journal


def _unfinished(ctx: Context, entry: PodPlan) -> Journal | None:
    """The journal of this pod's last run, if a resume should continue it (locked)."""
    journals = ctx.state.result(entry.key).get("journals") or []
    if not journals:
        return None
    journal = Journal.load(ctx.settings.state_dir, journals[-1])
    if journal.outcome == "rolled-back":
        return None  # nothing of it is left: start afresh
    if journal.outcome in ("running", "interrupted"):
        journal.lock()
    return journal


def _retryable(ctx: Context, entry: PodPlan, error: MigrateError) -> bool:
    cause = error.__cause__ if isinstance(error, migration.StageFailed) else error
    rolled_back = (not isinstance(error, migration.StageFailed)
                   or error.journal.outcome == "rolled-back")
    attempts = int(ctx.state.result(entry.key).get("attempts", 0))
    return isinstance(cause, Transient) and rolled_back and attempts < ctx.req.attempts


def _run(ctx: Context, cluster: kube.Cluster, entry: PodPlan,
         journal: Journal | None) -> dict[str, Any]:
    """One attempt: continue ``journal`` or start a new run; the result's fields."""
    resumed = journal is not None
    journal = journal or _start(ctx, cluster, entry)
    try:
        if journal.outcome == "failed":  # after its switch-over: nothing to retry
            failed = next((s for s in journal.stages if s.error), None)
            return {"outcome": FAILED, "error": f"{failed.name}: {failed.error}" if failed
                    else f"migration {journal.id} failed"}
        if journal.outcome != "succeeded":
            (migration.resume if resumed else migration.execute)(
                cluster, ctx.settings, journal, _progress(ctx, entry))
    except KeyboardInterrupt:
        if journal.outcome == "running":
            journal.set_outcome("interrupted")
        return {"outcome": INTERRUPTED}
    finally:
        journal.unlock()
    return {"outcome": MIGRATED, "restored_pod": journal.stage("create").data.get("pod"),
            "error": None}


def _attempt(ctx: Context, cluster: kube.Cluster, entry: PodPlan,
             journal: Journal | None) -> dict[str, Any] | None:
    """One run's result fields; None when it failed in a way worth another try."""
    try:
        return _run(ctx, cluster, entry, journal)
    except _Gone:
        return {"outcome": GONE, "error": None}
    except MigrateError as e:
        if not _retryable(ctx, entry, e):
            return {"outcome": FAILED, "error": e.message, "hint": e.hint}
        ctx.progress(entry.key, f"retrying after: {e.message}")
        return None


def migrate_pod(ctx: Context, entry: PodPlan, deadline: float) -> dict[str, Any]:
    """Move one pod (retrying transient failures); the result's fields."""
    cluster = dataclasses.replace(ctx.cluster, requests=0)  # a counter per thread
    journal = _unfinished(ctx, entry)
    if journal is not None and journal.outcome in ("succeeded", "failed"):
        return {**_run(ctx, cluster, entry, journal), "api_requests": cluster.requests}
    waited, out = 0.0, None
    while out is None:
        try:
            waited += ctx.budgets.wait(cluster, entry.namespace, entry.budgets, deadline,
                                       hold=True, waiting=ctx.waiting(entry))
        except (Interrupted, MigrateError) as e:
            if journal is not None:
                journal.unlock()
            out = ({"outcome": FAILED, "error": e.message, "hint": e.hint}
                   if isinstance(e, MigrateError)
                   else {"outcome": INTERRUPTED})
            break
        try:
            out = _attempt(ctx, cluster, entry, journal)
        finally:
            ctx.budgets.release(entry.namespace, entry.budgets)
        journal = None  # a retry starts a new run
    return {**out, "budget_wait_seconds": round(waited, 3), "api_requests": cluster.requests}
