"""Switch-over stage: the one that touches the source, after a last look at the
destination (verify may have ended a while ago: a resume, a slow watch)."""

from __future__ import annotations

from migrate.adapters import kube
from migrate.pipeline import switchover as handover
from migrate.pipeline.migration.results import SwitchoverResult
from migrate.pipeline.migration.run import Run, event, known


def switch_over(run: Run) -> SwitchoverResult:
    """Stop the source (delete it, or hand it over to its ReplicaSet); --keep-source:
    nothing."""
    plan, created = run.plan, run.created
    timeout = run.req.timeout
    if plan.switch == "keep":
        return SwitchoverResult(None)
    handover.check_destination(run.cluster, plan.namespace, created.pod, created.uid,
                               plan.destination, plan.containers)
    run.journal.record("switch-over", mode=plan.switch, source=plan.pod)
    if plan.switch == "handover":
        assert plan.owner is not None and created.held_label is not None
        owner = kube.read_owner(run.cluster, plan.namespace, *plan.owner)
        run.journal.record("deletion-cost set", pod=plan.pod)
        stopped = handover.hand_over(run.cluster, plan.namespace, plan.pod, plan.uid,
                                     created.pod, created.held_label, owner, timeout,
                                     plan.containers)
    else:
        stopped = handover.delete_source(run.cluster, plan.namespace, plan.pod, plan.uid,
                                         timeout, plan.containers)
    run.journal.record("source deleted", pod=plan.pod)
    event(run, known(plan.namespace, created.pod, created.uid), "Migrated",
          f"took over from {plan.namespace}/{plan.pod} on {plan.source}")
    return SwitchoverResult(stopped)
