"""Verify stage: the restored pod runs on the destination, from the checkpoint images."""

from __future__ import annotations

from migrate.pipeline import nodes, restore
from migrate.pipeline.migration.results import VerifyResult
from migrate.pipeline.migration.run import Run, event, known


def verify(run: Run) -> VerifyResult:
    """Watch the restored pod until it runs restored (or is refused, or time is up)."""
    plan, created, images = run.plan, run.created, run.built.images
    digests = {c: i.digest for c, i in images.items()}
    run.progress("verify", f"waiting for {created.pod} to run restored")
    # From the create's answer: no list first (a resumed run's may be too old: the
    # watch then answers 410 and lists).
    runtime = nodes.parse_runtime(plan.destination_runtime) if plan.destination_runtime \
        else None
    sizes = {c: i.image_size for c, i in images.items()}
    report = (restore.KubeletReport(lambda message: run.progress("verify", message), sizes)
              if run.follow_kubelet else None)
    restored = restore.wait_restored(run.cluster, plan.namespace, created.pod,
                                     plan.destination, digests, run.req.timeout,
                                     since=created.resource_version, runtime=runtime,
                                     uid=created.uid, report=report,
                                     rootfs={c: i.rootfs_image for c, i in images.items()},
                                     ran=dict(created.workload_images),
                                     emptied=plan.emptied)
    event(run, known(plan.namespace, created.pod, restored.uid), "Restored",
          f"restored from {', '.join(sorted(set(digests.values())))} "
          f"(migration {run.journal.id} from {plan.source})")
    return VerifyResult(restored.ready_at, restored.image_ids)
