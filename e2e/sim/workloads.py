"""The workload APIs, wired into a cluster: kinds, subresources and controllers.

    apps/v1      deployments (deploy), replicasets (rs)    apps.py
                 + their scale subresources                scale.py
    policy/v1    poddisruptionbudgets (pdb)                policy.py
                 + pods/eviction                           eviction.py
    batch/v1     jobs                                      batch.py
                 cronjobs (cj)                             cronjob.py

Controllers: replicaset.py, deployment.py (+ deployment_util.py),
disruption.py, job.py (+ job_status.py), cronjob_controller.py (on a
`CronClock` tests can set; schedules: cron.py) and the garbage collector, gc.py.
Run-to-completion pods are finished by the kubelets (runs.py).
"""

from __future__ import annotations

from collections.abc import Callable

from e2e.sim.api import Api
from e2e.sim.apps import DEPLOYMENTS, REPLICASETS
from e2e.sim.batch import JOBS
from e2e.sim.controllers import Controller
from e2e.sim.core import PODS
from e2e.sim.cron import CronClock
from e2e.sim.cronjob import CRONJOBS
from e2e.sim.cronjob_controller import CronJobController
from e2e.sim.deployment import DeploymentController
from e2e.sim.disruption import DisruptionController
from e2e.sim.eviction import eviction_handler
from e2e.sim.gc import GarbageCollector
from e2e.sim.job import JobController
from e2e.sim.policy import PODDISRUPTIONBUDGETS
from e2e.sim.replicaset import ReplicaSetController
from e2e.sim.resources import Registry
from e2e.sim.rest import Rest
from e2e.sim.scale import scale_handler

__all__ = ["WORKLOAD_TYPES", "controllers", "install"]

WORKLOAD_TYPES = (DEPLOYMENTS, REPLICASETS, PODDISRUPTIONBUDGETS, JOBS, CRONJOBS)


def install(registry: Registry, rest: Rest, api: Api) -> None:
    """Serve the workload kinds and their subresources."""
    for rt in WORKLOAD_TYPES:
        registry.add(rt)
    rest.orphan_by_default.add(JOBS.key)  # batch/v1's compatibility default
    api.serve_subresource(PODS, "eviction", eviction_handler(rest))
    for rt in (DEPLOYMENTS, REPLICASETS):
        api.serve_subresource(rt, "scale", scale_handler(rest))


def controllers(rest: Rest, *, log: Callable[[str], None] | None = None,
                cron_clock: CronClock | None = None) -> list[Controller]:
    """The workload controllers and the garbage collector (not started); the CronJob
    controller reads `cron_clock` (default: the wall clock)."""
    return [
        DeploymentController(rest, log=log),
        ReplicaSetController(rest, log=log),
        DisruptionController(rest, log=log),
        JobController(rest, log=log),
        CronJobController(rest, cron_clock or CronClock(), log=log),
        GarbageCollector(rest, log=log),
    ]
