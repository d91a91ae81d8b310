"""`migrate drain`: cordon, plan, then move and evict with bounded concurrency.

    cordon -> plan -> drain (a thread pool: one `migrate pod` run or one
                             eviction per pod; skipped and blocked pods are
                             recorded as such)

Every step lands in the drain's journal, so `migrate drain --resume ID`
continues where a drain stopped: pods done stay done, a pod whose migration
was interrupted resumes its own journal, the others start. One pod's
failure is recorded and the others go on. The node stays cordoned at the
end (as kubectl drain leaves it); `uncordon` undoes that.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import TYPE_CHECKING

from migrate.adapters import kube
from migrate.errors import MigrateError, UsageError
from migrate.pipeline import trust
from migrate.pipeline.drain.budgets import Budgets
from migrate.pipeline.drain.evict import evict_pod
from migrate.pipeline.drain.move import migrate_pod
from migrate.pipeline.drain.plan import DrainRequest, PodPlan, plan
from migrate.pipeline.drain.state import (
    BLOCKED,
    FAILED,
    FINAL,
    INTERRUPTED,
    MIGRATED,
    PENDING,
    SKIPPED,
    STAGES,
    SUCCESSFUL,
    Context,
    DrainState,
    Progress,
    journal_dir,
)
from migrate.pipeline.journal import UNDONE, Journal
from migrate.settings import Settings

if TYPE_CHECKING:
    from migrate.pipeline.migration import Migration

log = logging.getLogger(__name__)


def uncordon(cluster: kube.Cluster, node: str) -> bool:
    """Make ``node`` schedulable again; returns whether it was cordoned."""
    from migrate.pipeline.names import read_node
    from migrate.pipeline.nodes import cordoned

    was = cordoned(read_node(cluster, node))
    if was:
        kube.patch_node(cluster, node, {"spec": {"unschedulable": None}})
    return was


def start(settings: Settings, req: DrainRequest) -> Journal:
    """Open a new drain's journal (locked by this process); it keeps how the registry was
    reached, for `--resume` (trust.py)."""
    return Journal.create(journal_dir(settings), "drain", req.node, req.to_dict(), STAGES,
                          registry=trust.record(settings.registry))


def load(settings: Settings, journal_id: str) -> Journal:
    """A drain's journal, for `--resume`."""
    return Journal.load(journal_dir(settings), journal_id)


def _cordon_stage(cluster: kube.Cluster, state: DrainState, progress: Progress) -> None:
    from migrate.pipeline.nodes import cordoned

    journal, node = state.journal, state.request.node
    first = not journal.done("cordon")
    if first:
        journal.begin("cordon")
    # Again on resume: someone may have uncordoned it.
    was = cordoned(kube.read_node(cluster, node))
    stage = journal.stage("cordon")
    if first and "was_cordoned" not in stage.data:
        # Saved before the patch, and kept by a resume (which finds the node cordoned by
        # the first try): a drain stopped between the two still knows that it cordoned
        # the node, and its rollback uncordons it.
        stage.data["was_cordoned"] = was
        journal.save()
    if not was:
        kube.patch_node(cluster, node, {"spec": {"unschedulable": True}})
    if first:
        journal.finish("cordon")
    if not was:
        state.record("cordoned", node=node)
        progress("drain", f"cordoned {node}")


def _plan_stage(cluster: kube.Cluster, settings: Settings, state: DrainState,
                progress: Progress) -> None:
    journal = state.journal
    if journal.done("plan"):
        return
    journal.begin("plan")
    entries = plan(cluster, state.request, settings.state_dir)
    journal.finish("plan", pods=[e.to_dict() for e in entries])
    counts: dict[str, int] = {}
    for e in entries:
        counts[e.action] = counts.get(e.action, 0) + 1
    progress("drain", "plan: " + (", ".join(f"{n} {a}" for a, n in counts.items())
                                  or "no pods on the node"))


def _one(ctx: Context, entry: PodPlan) -> str:
    """Run one pod's part; record its result; returns its outcome. Never raises."""
    if ctx.stop.is_set():
        return PENDING
    before = ctx.state.result(entry.key)
    t0, started = time.perf_counter(), time.time()
    deadline = time.monotonic() + ctx.req.timeout
    try:
        run = migrate_pod if entry.action == "migrate" else evict_pod
        out = run(ctx, entry, deadline)
    except MigrateError as e:
        out = {"outcome": FAILED, "error": e.message, "hint": e.hint}
    except Exception as e:  # a bug must not take the other pods down with it
        log.debug("pod %s", entry.key, exc_info=True)
        out = {"outcome": FAILED, "error": f"unexpected {type(e).__name__}: {e}"}
    out["api_requests"] = int(before.get("api_requests", 0)) + int(out.get("api_requests", 0))
    if "error" in out and out["error"] is None:
        out["hint"] = None  # an earlier try's (a resumed drain's pod) no longer applies
    out.update(started_at=round(started, 3), ended_at=round(time.time(), 3),
               seconds=round(time.perf_counter() - t0, 3))
    ctx.state.update(entry.key, **out)
    outcome = str(out["outcome"])
    if outcome == INTERRUPTED:
        ctx.stop.set()  # now, before this thread takes the next pod
    else:
        detail = f" to {entry.destination}" if outcome == "migrated" else ""
        error = f": {out['error']}" if out.get("error") else ""
        ctx.progress(entry.key, f"{outcome}{detail}{error}")
    return outcome


def _settle(state: DrainState, entries: list[PodPlan]) -> list[PodPlan]:
    """Record the pods with nothing to do; return those with work left."""
    todo = []
    for e in entries:
        done = state.result(e.key)["outcome"] in FINAL
        if not done and e.action in ("skip", "blocked"):
            state.update(e.key, outcome=SKIPPED if e.action == "skip" else BLOCKED)
        elif not done:
            todo.append(e)
    return todo


def spread(todo: list[PodPlan]) -> list[PodPlan]:
    """The order the workers take the pods in: round by round, one pod of each group
    sharing disruption budgets per round (pods without a budget all in the first),
    otherwise in plan order.

    In plan order (by name) a Deployment's pods come together, and a budget
    allowing two disruptions at a time would hold every other worker waiting
    behind them while other Deployments' pods could move (the 200-pod drain
    benchmark on the real control plane lost half its wall time so)."""
    seen: dict[tuple[str, tuple[str, ...]], int] = {}
    ranks = []
    for e in todo:
        group = (e.namespace, tuple(e.budgets))
        ranks.append(seen.get(group, 0) if e.budgets else 0)
        seen[group] = seen.get(group, 0) + 1
    order = sorted(range(len(todo)), key=lambda i: ranks[i])  # stable: plan order within
    return [todo[i] for i in order]


def _run_pool(ctx: Context, todo: list[PodPlan]) -> None:
    """Run the pods' parts, ``concurrency`` at a time; stop everything on interruption."""
    pool = ThreadPoolExecutor(max_workers=ctx.req.concurrency, thread_name_prefix="drain")
    try:
        futures = [pool.submit(_one, ctx, e) for e in spread(todo)]
        for future in as_completed(futures):
            future.result()
    except KeyboardInterrupt:
        ctx.stop.set()
        ctx.progress("drain", "interrupted: waiting for the pods in flight to reach a "
                     "safe point")
        raise
    finally:
        _wait_for_workers(ctx, pool)


def _wait_for_workers(ctx: Context, pool: ThreadPoolExecutor) -> None:
    """Wait for the pool's threads, through further Ctrl-Cs: Python cannot stop a thread,
    and the process waits for them before it exits anyway; returning early would record
    the drain interrupted while its workers still change its journal."""
    while True:
        try:
            pool.shutdown(wait=True, cancel_futures=True)
            return
        except KeyboardInterrupt:
            ctx.stop.set()
            ctx.progress("drain", "interrupted again: still waiting for the pods in flight "
                         "(each stops at its next stage boundary; SIGKILL leaves their runs "
                         "to `migrate drain --resume`)")


def execute(cluster: kube.Cluster, settings: Settings, journal: Journal,
            progress: Progress) -> Journal:
    """Run the drain's stages not yet done; the journal's outcome says how it ended:
    succeeded, partial (some pods failed or are blocked) or interrupted (raised)."""
    state, stop = DrainState(journal), threading.Event()
    ctx = Context(cluster, settings, state, Budgets(stop), stop, progress)
    requests_before = cluster.requests
    try:
        journal.set_outcome("running")
        _cordon_stage(cluster, state, progress)
        _plan_stage(cluster, settings, state, progress)
        journal.begin("drain")
        _run_pool(ctx, _settle(state, state.plan()))
    except KeyboardInterrupt:
        journal.interrupted()
        raise
    except MigrateError as e:
        stage = next((s.name for s in journal.stages if s.status == "running"), "drain")
        journal.fail(stage, e.message)
        journal.set_outcome("failed")
        raise
    finally:
        state.add_requests(cluster.requests - requests_before)
    return _conclude(state)


def rollback(cluster: kube.Cluster, settings: Settings, journal: Journal) -> list[str]:
    """`migrate rollback DRAIN-ID`: give a drain up. Each of its migrations that stopped
    half way (interrupted, or its process killed) is rolled back as `migrate rollback`
    does, and the node is uncordoned if the drain cordoned it. Pods it migrated or
    evicted stay where they are, and so does one whose migration had switched over
    when it stopped (the restored pod is the only copy): that run is finished instead
    (its clean-up). ``journal`` is locked by the caller."""
    from migrate.pipeline import migration

    if journal.outcome == "succeeded":
        raise UsageError(f"drain {journal.id} has succeeded: there is nothing in flight to "
                         "undo", hint=f"`migrate uncordon {journal.request['node']}` makes the "
                         "node schedulable again")
    state, undone = DrainState(journal), []
    for entry in state.plan():
        runs = state.result(entry.key).get("journals") or []
        if not runs:
            continue
        last = Journal.load(settings.state_dir, runs[-1])
        if last.current_outcome() not in ("running", "interrupted"):
            continue
        run = migration.load(settings, last.id)
        if run.switched(cluster, settings):
            undone.append(f"{entry.key}: {_finish_switched(cluster, settings, state, entry, run)}")
            continue
        lines = run.rollback(cluster, settings)
        undone += [f"{entry.key}: {line}" for line in lines] or [
            f"{entry.key}: migration {last.id} rolled back (it had changed nothing)"]
        state.update(entry.key, error=f"rolled back: migration {last.id}")
    node = journal.request["node"]
    cordoned_here = journal.stage("cordon").data.get("was_cordoned") is False
    if cordoned_here and uncordon(cluster, node):
        undone.append(f"uncordoned {node}")
        state.record("uncordoned", node=node)
    if cordoned_here:  # by us now, or by someone else before: the drain's cordon is gone
        journal.stage("cordon").status = UNDONE
    journal.set_outcome("rolled-back")
    return undone


def _finish_switched(cluster: kube.Cluster, settings: Settings, state: DrainState,
                     entry: PodPlan, run: Migration) -> str:
    """Finish a run past its switch-over (its clean-up); what became of it. A failure is
    said, not raised: the drain's other runs in flight still need undoing."""
    try:
        run.run(cluster, settings, lambda stage, message: None, follow_kubelet=False)
    except MigrateError as e:
        state.update(entry.key, error=f"switched over; not finished: {e.message}")
        return (f"migration {run.id} had switched over (the pod runs as {run.restored_pod}); "
                f"finishing it failed: {e.message}: `migrate resume {run.id}` tries again")
    state.update(entry.key, outcome=MIGRATED, restored_pod=run.restored_pod, error=None,
                 hint=None)
    return f"migration {run.id} had switched over: finished it (the pod runs as " \
           f"{run.restored_pod})"


def _conclude(state: DrainState) -> Journal:
    journal = state.journal
    outcomes = [state.result(e.key)["outcome"] for e in state.plan()]
    if INTERRUPTED in outcomes or PENDING in outcomes:  # the pool was stopped
        journal.interrupted()
        raise KeyboardInterrupt
    journal.finish("drain")
    journal.set_outcome("succeeded" if all(o in SUCCESSFUL for o in outcomes) else "partial")
    return journal
