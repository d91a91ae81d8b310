"""The stages in order, each recorded in the journal; resume and rollback.

    preflight -> checkpoint -> build -> create -> verify -> switchover -> cleanup

Safety rules this module keeps:
- the source is touched only in `switchover`, after `verify` saw the
  destination running from the checkpoint image, and after a last look
  that the destination node is still Ready and the restored pod still runs;
- any failure before the switch-over rolls back what this run created (the
  journal lists it) and leaves the source as it was; the error names the
  stage, and the journal keeps the actions taken;
- an interruption (Ctrl-C, SIGTERM: KeyboardInterrupt here) leaves everything
  as it is and the journal `interrupted`, resumable, wherever it lands.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from migrate.adapters import kube
from migrate.errors import MigrateError, UsageError, WatchTimeout
from migrate.pipeline import claims, switchover
from migrate.pipeline.journal import DONE, PENDING, UNDONE, Journal
from migrate.pipeline.migration.build import build
from migrate.pipeline.migration.checkpoint import checkpoint
from migrate.pipeline.migration.cleanup import cleanup
from migrate.pipeline.migration.create import create
from migrate.pipeline.migration.results import StageResult
from migrate.pipeline.migration.run import (
    Progress,
    Run,
    delete_temporaries,
    event,
    release,
    source,
)
from migrate.pipeline.migration.switchover import switch_over
from migrate.pipeline.migration.verify import verify
from migrate.pipeline.preflight import Plan, locate
from migrate.settings import Settings

STAGES = ["preflight", "checkpoint", "build", "create", "verify", "switchover", "cleanup"]

# Preflight runs before the journal exists (`start` records it done): a refusal
# leaves nothing behind, so it is never a stage run from here. Looked up when each
# stage runs (tests put a failing stage in).
STAGE_FUNCTIONS: dict[str, Callable[[Run], StageResult]] = {
    "checkpoint": checkpoint, "build": build, "create": create,
    "verify": verify, "switchover": switch_over, "cleanup": cleanup,
}


class StageFailed(MigrateError):
    """A stage failed; the run was rolled back. Carries the cause's exit code."""

    def __init__(self, stage: str, cause: MigrateError, journal: Journal,
                 hint: str | None = None) -> None:
        super().__init__(f"{stage}: {cause.message}", hint=hint or cause.hint)
        self.exit_code = cause.exit_code
        self.stage = stage
        self.journal = journal


def retake(cluster: kube.Cluster, settings: Settings, journal: Journal) -> None:
    """A resumed run makes sure it still holds its source (until the switch-over)."""
    if journal.done("preflight") and not journal.done("switchover"):
        plan = Plan.from_dict(journal.stage("preflight").data["plan"])
        claims.take(cluster, settings.state_dir, plan.namespace, plan.pod, plan.uid,
                    journal.id)


def execute(cluster: kube.Cluster, settings: Settings, journal: Journal,
            progress: Progress, follow_kubelet: bool = True) -> None:
    """Run the stages not yet done; roll back on failure (before the switch-over).

    The caller turns an interruption into the journal's `interrupted`.
    """
    run = Run(cluster, settings, journal, progress, follow_kubelet)
    journal.set_outcome("running")
    for name in STAGES:
        if not journal.done(name):
            _stage(run, name)
    journal.set_outcome("succeeded")


def _stage(run: Run, name: str) -> None:
    journal = run.journal
    run.progress(name, "started")
    journal.begin(name)
    try:
        result = STAGE_FUNCTIONS[name](run)
    except MigrateError as e:
        journal.fail(name, e.message)
        try:
            _failed(run, name, e)
        except MigrateError as undo:
            # Half undone: not over (nor "failed", whose claim another run may take), but
            # stopped, like an interruption: `migrate rollback` finishes the undoing.
            journal.record("rollback failed", error=undo.message)
            journal.set_outcome("interrupted")
            raise StageFailed(name, e, journal, hint=f"the rollback failed too "
                              f"({undo.message}): `migrate rollback {journal.id}` tries "
                              "again") from e
        raise StageFailed(name, e, journal) from e
    run.results[name] = result
    journal.finish(name, **result.to_dict())
    run.progress(name, f"done in {journal.stage(name).seconds:.3f} s")


def switched(run: Run) -> bool:
    """Whether the restored pod has replaced the source: the switch-over is done, or it
    began and the source is gone or going.

    The cluster is asked, not only the journal: a run killed between the source's
    deletion and its record of it, or a ReplicaSet that removed the source itself
    after the handover's patch, leaves a journal that says less than happened, and
    undoing such a run would delete the only copy of the workload."""
    stage = run.journal.stage("switchover")
    if stage.status == DONE or any(a["action"] == "source deleted"
                                   for a in run.journal.actions):
        return True
    if stage.status == PENDING and not any(a["action"] == "switch-over"
                                           for a in run.journal.actions):
        return False
    now = source(run)
    return (now is None or now["metadata"].get("uid") != run.plan.uid
            or bool(now["metadata"].get("deletionTimestamp")))


def _failed(run: Run, stage: str, error: MigrateError) -> None:
    over = switched(run)
    # The cluster may be what failed; the rollback below says more.
    with contextlib.suppress(MigrateError):
        event(run, source(run), "MigrationFailed", f"{stage}: {error.message}", warning=True)
    if over:
        run.journal.set_outcome("failed")
        return
    rollback(run)
    run.journal.set_outcome("rolled-back")


def rollback(run: Run) -> list[str]:
    """Undo what the journal says this run did; the source is left as it was."""
    journal, plan = run.journal, run.plan
    if journal.stage("switchover").status == DONE:
        raise UsageError(f"migration {journal.id} already switched over: the restored pod "
                         "replaced the source", hint="to move it back, migrate it again")
    if switched(run):
        raise UsageError(f"migration {journal.id} was stopped in its switch-over after the "
                         f"source pod {plan.namespace}/{plan.pod} went: the restored pod is "
                         "what runs now, and undoing the run would delete it",
                         hint=f"`migrate resume {journal.id}` finishes the switch-over")
    undone = []
    pods = {(o["namespace"], o["name"]): o["uid"] for o in journal.objects
            if o["kind"] == "Pod"}
    labelled = kube.list_pods(run.cluster, plan.namespace,
                              label_selector=f"{claims.RUN_LABEL}={journal.id}")
    for p in labelled:
        if p["metadata"].get("uid") != plan.uid:
            pods.setdefault((plan.namespace, p["metadata"]["name"]),
                            p["metadata"].get("uid", ""))
    deleted = []
    for (namespace, name), uid in pods.items():  # every deletion first: they end together
        if kube.delete_pod(run.cluster, namespace, name, uid=uid or None):
            deleted.append((namespace, name, uid))
    undone += [f"deleted pod {ns}/{name}{_still_going(run, ns, name, uid)}"
               for ns, name, uid in deleted]
    undone += [f"deleted {what}" for what in delete_temporaries(run, ("Job", "Secret"))]
    cost_set = any(a["action"] == "deletion-cost set" for a in journal.actions)
    if cost_set and source(run) is not None:
        kube.patch_pod(run.cluster, plan.namespace, plan.pod, {"metadata": {
            "annotations": {switchover.DELETION_COST: None}}})
        undone.append(f"removed the deletion cost from {plan.pod}")
    undone += _remove_archives(run)
    for line in undone:
        journal.record("rollback: " + line)
    journal.objects = []
    # The restored pods are gone: the create stage says so (a build's image stays in its
    # registry, for prune; _remove_archives says the checkpoint's part).
    if deleted:
        _undone(journal, "create")
    journal.save()
    # Last: the source is free for another run only once nothing of this one is left.
    if release(run):
        undone.append(f"released the claim on {plan.pod}")
        journal.record("rollback: " + undone[-1])
    return undone


#: How long a rollback waits for each pod it deleted to be gone: long enough for a
#: container that exits on SIGTERM, short enough when the node is lost and nothing
#: will confirm the deletion.
GONE_WAIT = 15.0


def _still_going(run: Run, namespace: str, name: str, uid: str) -> str:
    """Wait for a pod the rollback deleted to be gone, so that the source's claim goes
    only when the name of its restored copy is free for another run; what to add to the
    report's line when it is not gone yet."""
    if not uid:
        return ""
    try:
        switchover.wait_gone(run.cluster, namespace, name, uid,
                             min(run.req.timeout, GONE_WAIT))
    except WatchTimeout:
        return " (still terminating: another run must wait until it is gone)"
    return ""


def _remove_archives(run: Run) -> list[str]:
    """Remove the checkpoint archives this run made (each one a copy of the container's
    memory, secrets included), unless --keep-archive; an archive this machine cannot
    read is named instead: it stays on its node."""
    plan, actions = run.plan, run.journal.actions
    made = [a["archive"] for a in actions if a["action"] == "checkpointed"]
    gone = {a.get("path") for a in actions if a["action"] == "archive removed"}
    out, left = [], False
    for path in (p for p in made if p not in gone):
        local = locate(plan.source, path, run.settings)
        if run.req.keep_archive:
            out.append(f"kept the archive {path} on {plan.source} (--keep-archive)")
            left = True
        elif local.is_file():
            local.unlink(missing_ok=True)
            run.journal.record("archive removed", path=path)
            out.append(f"removed the archive {path} from {plan.source}")
        else:
            out.append(f"left the archive {path} on {plan.source}: it is not readable here")
            left = True
    if made and not left:  # every archive it made is gone: so is what the stage did
        _undone(run.journal, "checkpoint")
    return out


def _undone(journal: Journal, name: str) -> None:
    """Mark a done stage undone: its result stays (what it measured still holds). A stage
    that failed stays failed: it has no result to keep, and the report says what went."""
    if journal.stage(name).status == DONE:
        journal.stage(name).status = UNDONE
