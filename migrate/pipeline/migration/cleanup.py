"""Cleanup stage: what the run made only for itself goes once it succeeded.

Each step is a function of its own in `STEPS`, in order; a new one (an option
of `migrate pod`) is one more function there.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from migrate.errors import MigrateError
from migrate.pipeline.migration.results import CleanupResult
from migrate.pipeline.migration.run import Run, delete_temporaries, release
from migrate.pipeline.prune.images import delete_images

log = logging.getLogger(__name__)


def _temporaries(run: Run) -> list[str]:
    """The build Jobs and the Secrets made for them and for the pulls."""
    return delete_temporaries(run, kinds=("Job", "Secret"))


def _claim(run: Run) -> list[str]:
    """--keep-source: the source runs on, free for another run again."""
    if run.plan.switch == "keep" and release(run):
        run.journal.record("released", pod=run.plan.pod)
    return []


def _archives(run: Run) -> list[str]:
    """--cleanup-archive: the archives read here (each a copy of the memory)."""
    if not run.req.cleanup_archive:
        return []
    removed = []
    for image in run.built.images.values():
        if image.local_archive:
            Path(image.local_archive).unlink(missing_ok=True)
            removed.append(image.local_archive)
            run.journal.record("archive removed", path=image.local_archive)
    return removed


def _images(run: Run) -> list[str]:
    """--cleanup-image: the checkpoint images in the registry, unless a pod other than
    the restored one names them or it pulls Always (prune.images.delete_images). Kept
    images do not fail the run: the pod has moved; the journal and progress say why."""
    if not run.req.cleanup_image:
        return []
    refs = [i.reference for i in run.built.images.values()]  # IMAGE@DIGEST, as built
    try:
        deleted = delete_images(run.cluster, run.settings, refs,
                                restored=f"{run.plan.namespace}/{run.created.pod}")
    except MigrateError as e:
        run.journal.record("images kept", reason=e.message)
        run.progress("cleanup", f"kept the checkpoint images: {e.message}")
        log.warning("kept the checkpoint images: %s", e.message)
        return []
    for d in deleted:
        run.journal.record("image deleted", image=d["image"], present=d["deleted"])
    return [f"image {d['image']}" for d in deleted]


STEPS: tuple[Callable[[Run], list[str]], ...] = (_temporaries, _claim, _archives, _images)


def cleanup(run: Run) -> CleanupResult:
    """Run the cleanup steps in order; what they removed."""
    return CleanupResult(tuple(line for step in STEPS for line in step(run)))
