"""Build stage: each archive as a checkpoint image, pushed: here (the archive read
through MIGRATE_NODE_ROOT or on the source node itself) or in a Job on the source
node (nodebuild.py), as preflight chose."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from migrate.adapters.registry.reference import parse_reference
from migrate.errors import UsageError
from migrate.pipeline import nodebuild
from migrate.pipeline.annotations import ROOTFS_IMAGE_NAME
from migrate.pipeline.build import BuildRequest, build_image
from migrate.pipeline.choices import BuildOn
from migrate.pipeline.migration.results import Archive, BuildResult, ImageResult
from migrate.pipeline.migration.run import Run
from migrate.pipeline.preflight import locate
from migrate.units import human_size


def build(run: Run) -> BuildResult:
    """Build and push one image per checkpointed container."""
    plan, req = run.plan, run.req
    images: dict[str, ImageResult] = {}
    for container, archive in run.checkpointed.archives.items():
        local = locate(plan.source, archive.path, run.settings)
        # Preflight chose (journals older than that choice decide here, as they did).
        on_node = plan.build_on == "node" if plan.build_on else (
            req.build_on is BuildOn.node or (req.build_on is BuildOn.auto
                                             and not local.is_file()))
        if on_node:
            images[container] = _on_node(run, container, archive)
        elif not local.is_file():
            raise UsageError(f"the archive {archive.path} of node {plan.source} is not "
                             f"readable here ({local})",
                             hint="use --build-on node (a Job on the source node), run "
                             "migrate on the source node, or share the nodes' checkpoint "
                             "directories and set MIGRATE_NODE_ROOT (e.g. /mnt/nodes/{node})")
        else:
            images[container] = _here(run, container, local)
        run.journal.record("pushed", container=container,
                           image=images[container].reference)
    return BuildResult(images)


def _here(run: Run, container: str, local: Path) -> ImageResult:
    plan, req = run.plan, run.req
    size = local.stat().st_size
    run.progress("build", f"{container}: {human_size(size)} -> {plan.images[container]}")
    report = build_image(BuildRequest(archive=local, image=parse_reference(
        plan.images[container]), builder=req.builder, compression=req.compression,
        encrypt_for=req.encrypt_for),
        run.settings, on_progress=_upload_progress(run, container, size))
    return ImageResult(report.reference, report.digest, report.archive_size,
                       report.image_size, report.criu_stats.get("freezing_time"),
                       report.criu_stats.get("frozen_time"), "local", str(local),
                       report.annotations.get(ROOTFS_IMAGE_NAME, ""))


def _upload_progress(run: Run, container: str, size: int) -> Callable[[int], None]:
    """Report the bytes streamed, every tenth of the archive (not every block)."""
    step = max(size // 10, 1)
    next_report = [step]

    def report(done: int) -> None:
        if done >= next_report[0] and size:
            next_report[0] = (done // step + 1) * step
            run.progress("build", f"{container}: {human_size(done)} of {human_size(size)} "
                         f"streamed ({min(100, done * 100 // size)}%)")

    return report


def _on_node(run: Run, container: str, archive: Archive) -> ImageResult:
    plan, req = run.plan, run.req
    name = nodebuild.start(run.cluster, run.settings, nodebuild.NodeBuild(
        namespace=plan.namespace, node=plan.source, pod=plan.pod, archive=archive.path,
        image=plan.images[container], run_id=run.journal.id,
        tool_image=nodebuild.check_tool_image(req.tool_image), builder=req.builder,
        compression=req.compression, tls_verify=run.settings.registry.tls_verify,
        secret=req.registry_secret, deadline=int(req.timeout)), run.journal)
    run.progress("build", f"{container}: Job {plan.namespace}/{name} on {plan.source}")
    result = nodebuild.collect(run.cluster, plan.namespace, name, req.timeout)
    return ImageResult(str(result["reference"]), str(result["digest"]),
                       int(result.get("archive_size", 0)), int(result.get("image_size", 0)),
                       _microseconds(result.get("freezing_time_us")),
                       _microseconds(result.get("frozen_time_us")), f"job {name}",
                       rootfs_image=str(result.get("rootfs_image") or ""))


def _microseconds(value: Any) -> int | None:
    """A CRIU time from a build Job's termination message: an int, or None (a tool image
    older than the field, or an archive without stats-dump)."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None
