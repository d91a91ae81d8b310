"""The one way to run a migration, for `migrate pod`, `resume`, `rollback` and the drain.

    plan(cluster, settings, req)  -> Planned     preflight; nothing changed
    start(planned)                -> Migration   its journal, and the claim on the source
    load(settings, id)            -> Migration   a journal to resume or roll back
    Migration.run(cluster, settings, progress)   the stages left (resumed: claim re-taken)
    Migration.rollback(cluster, settings)        undo what it did (before the switch-over)
    Migration.report(api_requests)               what happened (schemas/pod.schema.json)

A run ends one of three ways: returns (succeeded), `StageFailed` (the stage's
error; rolled back unless the source was already stopped; it carries the
journal), or `Interrupted` (a KeyboardInterrupt: Ctrl-C, SIGTERM, a drain's
stop), whose journal says `interrupted` and whatever it was doing is left as it
is, to resume or roll back. `run` and `rollback` hold the journal's lock (another
process running the same migration is refused) and release it when they end.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from migrate.adapters import kube
from migrate.errors import MigrateError, UsageError
from migrate.pipeline import claims, trust
from migrate.pipeline.journal import DONE, Journal, drain_directory
from migrate.pipeline.migration import runner
from migrate.pipeline.migration.report import planned, report
from migrate.pipeline.migration.results import CreateResult, done
from migrate.pipeline.migration.run import Progress, Run
from migrate.pipeline.preflight import Plan, PodRequest, preflight
from migrate.settings import Settings


@dataclass(frozen=True)
class Planned:
    """A migration that passed preflight: the request, the plan, and the preflight's
    time. Nothing was changed to make it."""

    cluster: kube.Cluster
    settings: Settings
    req: PodRequest
    plan: Plan
    seconds: float

    def report(self) -> dict[str, Any]:
        """The dry run's report (`migrate pod --dry-run`)."""
        return planned(runner.STAGES, self.plan, self.seconds, self.cluster.requests)


def plan(cluster: kube.Cluster, settings: Settings, req: PodRequest) -> Planned:
    """Preflight: check everything, change nothing; the first reason it cannot work is
    raised."""
    started = time.perf_counter()
    checked = preflight(cluster, settings, req)
    return Planned(cluster, settings, req, checked, time.perf_counter() - started)


class Interrupted(KeyboardInterrupt):
    """A run stopped by an interruption; its journal says `interrupted`."""

    def __init__(self, migration: Migration) -> None:
        super().__init__()
        self.migration = migration


@dataclass
class Migration:
    """One migration, by its journal (see the module's docstring)."""

    journal: Journal
    claimed: bool = False  # this process took the claim (a new run); else re-taken by run

    @property
    def id(self) -> str:
        """The journal id (`migrate resume ID`)."""
        return self.journal.id

    @property
    def needs_registry(self) -> bool:
        """Whether the rest of the run pushes (a resume needs the registry's trust)."""
        return not self.journal.done("build")

    @property
    def restored_pod(self) -> str | None:
        """The restored pod's name, once created."""
        created = done(self.journal).get("create")
        return created.pod if isinstance(created, CreateResult) else None

    def run(self, cluster: kube.Cluster, settings: Settings, progress: Progress, *,
            follow_kubelet: bool = True) -> Migration:
        """Run the stages not yet done (see the module's docstring for how it ends);
        returns itself, succeeded. ``follow_kubelet``: tell ``progress`` the restored
        pod's Events while verify waits (a watch of its own: a caller that drops the
        messages saves its requests)."""
        try:
            self.journal.hold()
            if not self.claimed:
                runner.retake(cluster, settings, self.journal)
                self.claimed = True
            runner.execute(cluster, settings, self.journal, progress, follow_kubelet)
            return self
        except KeyboardInterrupt as e:
            self.journal.interrupted()
            raise Interrupted(self) from e
        finally:
            self.journal.unlock()

    def rollback(self, cluster: kube.Cluster, settings: Settings) -> list[str]:
        """`migrate rollback ID`: undo what the run did; the lines of what was undone."""
        try:
            self.journal.hold()
            if self.journal.stage("preflight").status != DONE:
                self.journal.set_outcome("rolled-back")
                return []
            undone = runner.rollback(Run(cluster, settings, self.journal, lambda s, m: None))
            self.journal.set_outcome("rolled-back")
            return undone
        finally:
            self.journal.unlock()

    def switched(self, cluster: kube.Cluster, settings: Settings) -> bool:
        """Whether the restored pod has replaced the source (`runner.switched`): from
        there the run can be finished (`run`), not undone."""
        return runner.switched(Run(cluster, settings, self.journal, lambda s, m: None))

    def report(self, api_requests: int | None = None) -> dict[str, Any]:
        """What happened (schemas/pod.schema.json)."""
        return report(self.journal, done(self.journal), api_requests)


def start(planned: Planned, progress: Progress | None = None) -> Migration:
    """Open the journal of a run whose preflight passed, and claim its source (claims.py)
    conditionally on what preflight read; ``progress`` hears that it did.

    The journal exists before the claim is written, so that a claim always has a
    journal to resume or roll back with. A refused claim changed nothing: its
    journal goes again, and the refusal (`claims.Claimed`) is raised.
    """
    settings, req, plan = planned.settings, planned.req, planned.plan
    journal = Journal.create(settings.state_dir, "pod", req.pod, req.to_dict(), runner.STAGES,
                             registry=trust.record(settings.registry))
    stage = journal.stage("preflight")
    stage.status, stage.started, stage.ended = DONE, journal.created, journal.created
    stage.seconds = round(planned.seconds, 6)
    stage.data["plan"] = plan.to_dict()
    journal.save()
    migration = Migration(journal, claimed=True)
    try:
        claims.take(planned.cluster, settings.state_dir, plan.namespace, plan.pod, plan.uid,
                    journal.id, plan.resource_version)
        journal.record("claimed", pod=plan.pod)
        if progress is not None:
            progress("preflight", f"passed; migration {journal.id} claimed "
                     f"{plan.namespace}/{plan.pod}")
    except KeyboardInterrupt as e:
        journal.interrupted()  # the claim may be written: resume or rollback deals with it
        journal.unlock()
        raise Interrupted(migration) from e
    except MigrateError:
        # Refused or failed: this run's claim was not written (a write whose answer was
        # lost is retried, and the retry finds it); nothing to keep.
        journal.discard()
        raise
    return migration


def load(settings: Settings, journal_id: str, *, resume: bool = False) -> Migration:
    """The migration of journal ``journal_id`` (`run` and `rollback` lock it).

    ``resume``: refuse a drain's id (naming the command that resumes it) and a run
    with nothing left to do.
    """
    if resume:
        _not_a_drain(settings, journal_id)
    journal = Journal.load(settings.state_dir, journal_id)
    if resume and journal.outcome in ("succeeded", "rolled-back"):
        raise UsageError(f"migration {journal_id} has {journal.outcome}; nothing to resume")
    return Migration(journal)


def _not_a_drain(settings: Settings, journal_id: str) -> None:
    """Refuse a drain's id where a migration's is expected, naming the command for it."""
    if not journal_id.startswith("drain-"):
        return
    try:
        drain = Journal.load(drain_directory(settings.state_dir), journal_id)
    except MigrateError:
        return  # not a drain's either: the migration journal's own error says so
    raise UsageError(f"{journal_id} is a drain ({drain.current_outcome()}), not a migration",
                     hint=f"`migrate drain --resume {journal_id}` continues it, `migrate "
                     f"rollback {journal_id}` undoes its migrations in flight")
