"""What the stages share: `Run` (the cluster, settings, journal, the request, the plan
and the results so far), and the readings and writes several stages make."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from migrate.adapters import kube
from migrate.errors import ClusterError
from migrate.pipeline import claims
from migrate.pipeline.journal import FAILED, RUNNING, Journal
from migrate.pipeline.migration.results import (
    BuildResult,
    CheckpointResult,
    CreateResult,
    StageResult,
    done,
)
from migrate.pipeline.preflight import Plan, PodRequest
from migrate.settings import Settings

Obj = dict[str, Any]
Progress = Callable[[str, str], None]  # (stage, message)
R = TypeVar("R", bound=StageResult)


@dataclass
class Run:
    """One migration's run: its request and plan (read from the journal once), and the
    typed result of every stage done so far."""

    cluster: kube.Cluster
    settings: Settings
    journal: Journal
    progress: Progress
    follow_kubelet: bool = True  # verify follows the restored pod's Events for progress
    req: PodRequest = field(init=False)
    plan: Plan = field(init=False)
    results: dict[str, StageResult] = field(init=False)
    # Stages an earlier process began and did not finish (it was interrupted or killed):
    # what they did may have happened without its record.
    retaken: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        self.req = PodRequest.from_dict(self.journal.request)
        self.plan = Plan.from_dict(self.journal.stage("preflight").data["plan"])
        self.results = done(self.journal)
        self.retaken = frozenset(s.name for s in self.journal.stages
                                 if s.status in (RUNNING, FAILED))

    def result(self, stage: str, kind: type[R]) -> R:
        """Stage ``stage``'s result (it is done: the stages run in order)."""
        found = self.results[stage]
        assert isinstance(found, kind), (stage, found)
        return found

    @property
    def checkpointed(self) -> CheckpointResult:
        """The checkpoint stage's result."""
        return self.result("checkpoint", CheckpointResult)

    @property
    def built(self) -> BuildResult:
        """The build stage's result."""
        return self.result("build", BuildResult)

    @property
    def created(self) -> CreateResult:
        """The create stage's result."""
        return self.result("create", CreateResult)


def source(run: Run) -> Obj | None:
    """The source pod as it is now (by name: the caller checks its uid), or None."""
    plan = run.plan
    return kube.find_pod(run.cluster, plan.namespace, plan.pod)


def live_source(run: Run) -> Obj:
    """The source pod as it is now; ClusterError when it is gone (or another pod took
    its name)."""
    found = source(run)
    if found is None or found["metadata"].get("uid") != run.plan.uid:
        raise ClusterError(f"the source pod {run.plan.namespace}/{run.plan.pod} is gone",
                           hint="nothing left to migrate")
    return found


def known(namespace: str, name: str, uid: str) -> Obj:
    """A pod this run knows exists: enough of it for an Event, without reading it again."""
    return {"metadata": {"namespace": namespace, "name": name, "uid": uid}}


def event(run: Run, pod: Obj | None, reason: str, message: str, warning: bool = False) -> None:
    """Tell the pod's Events what the run did (nothing when there is no pod)."""
    if pod is not None:
        kube.create_event(run.cluster, pod, reason, message, warning=warning)


def delete_temporaries(run: Run, kinds: tuple[str, ...]) -> list[str]:
    """Delete the run's objects of these kinds (newest first); forget them."""
    deleters = {"Job": kube.delete_job, "Secret": kube.delete_secret}
    removed = []
    for obj in reversed(list(run.journal.objects)):
        if obj["kind"] in kinds:
            deleters[obj["kind"]](run.cluster, obj["namespace"], obj["name"])
            removed.append(f"{obj['kind']} {obj['namespace']}/{obj['name']}")
            run.journal.objects.remove(obj)
            run.journal.record(f"deleted {obj['kind']}", namespace=obj["namespace"],
                               name=obj["name"])
    return removed


def release(run: Run) -> bool:
    """Remove this run's claim from the source, if it still carries it."""
    plan = run.plan
    return claims.release(run.cluster, plan.namespace, plan.pod, plan.uid, run.journal.id)
