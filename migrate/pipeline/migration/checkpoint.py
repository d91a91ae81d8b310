"""Checkpoint stage: every planned container of the source pod, through the kubelet.

Preflight already read the pod and chose its containers (the plan). First, on a
CRI-O destination, the images the source ran are pulled there (base.py: the
restore needs them, and a pull before the checkpoint costs the state window
nothing); then the source node's kubelet is asked, through the API server, for
each container's archive. (`migrate checkpoint`, pipeline/checkpoint.py, does the same for
one container it reads and picks itself.)
"""

from __future__ import annotations

import time

from migrate.adapters import kube
from migrate.pipeline.migration import base
from migrate.pipeline.migration.results import Archive, CheckpointResult
from migrate.pipeline.migration.run import Run, event, known


def checkpoint(run: Run) -> CheckpointResult:
    """Checkpoint each container; the journal records each archive as it is made."""
    plan = run.plan
    base.pull_base_images(run)
    archives: dict[str, Archive] = {}
    started = time.time()
    for container in plan.containers:
        run.progress("checkpoint", f"{plan.namespace}/{plan.pod}/{container} on {plan.source}")
        t0 = time.perf_counter()
        path = kube.checkpoint_via_apiserver(run.cluster, plan.source, plan.namespace,
                                             plan.pod, container, None)
        archives[container] = Archive(path, round(time.perf_counter() - t0, 6))
        run.journal.record("checkpointed", container=container, node=plan.source, archive=path)
    event(run, known(plan.namespace, plan.pod, plan.uid), "Checkpointed",
          f"checkpointed {', '.join(plan.containers)} for migration {run.journal.id}")
    return CheckpointResult(archives, started)
