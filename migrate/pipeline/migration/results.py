"""What each stage of a migration produced: frozen, typed, and kept in the journal.

A stage returns one of these; the runner writes its `to_dict` into the stage's
``data`` in the journal, and a resumed run reads it back with `from_dict`
(the journal file, schemas/journal.schema.json, says exactly these keys). Later
stages read earlier results through `Run` (run.py), never through string keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from migrate.pipeline.journal import DONE, UNDONE, Journal


@dataclass(frozen=True)
class Archive:
    """One container's checkpoint archive, on the source node."""

    path: str
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"path": self.path, "seconds": self.seconds}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Archive:
        """Inverse of `to_dict`."""
        return cls(str(d["path"]), float(d["seconds"]))


@dataclass(frozen=True)
class CheckpointResult:
    """The archives, per container, and when the first checkpoint began (time.time())."""

    archives: Mapping[str, Archive]
    taken_at: float

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"archives": {c: a.to_dict() for c, a in self.archives.items()},
                "taken_at": self.taken_at}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CheckpointResult:
        """Inverse of `to_dict`."""
        return cls({c: Archive.from_dict(a) for c, a in d["archives"].items()},
                   float(d["taken_at"]))


@dataclass(frozen=True)
class ImageResult:
    """One container's checkpoint image, pushed."""

    reference: str  # IMAGE@DIGEST
    digest: str
    archive_size: int
    image_size: int
    freezing_time_us: int | None  # CRIU's stats-dump; None when the archive has none
    frozen_time_us: int | None
    built_on: str  # "local", or "job NAME"
    local_archive: str | None = None  # the archive as read here (a local build only)
    # The image the checkpointed container ran (the checkpoint's rootfsImageName): what a
    # CRI-O restore reports as the restored container's image (verify accepts it).
    rootfs_image: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON form (the journal's; the report leaves `local_archive` out)."""
        return {"reference": self.reference, "digest": self.digest,
                "archive_size": self.archive_size, "image_size": self.image_size,
                "freezing_time_us": self.freezing_time_us,
                "frozen_time_us": self.frozen_time_us, "built_on": self.built_on,
                "local_archive": self.local_archive, "rootfs_image": self.rootfs_image}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ImageResult:
        """Inverse of `to_dict`."""
        return cls(str(d["reference"]), str(d["digest"]), int(d["archive_size"]),
                   int(d["image_size"]), d["freezing_time_us"], d["frozen_time_us"],
                   str(d["built_on"]), d["local_archive"],
                   str(d.get("rootfs_image") or ""))  # journals before it: unknown


@dataclass(frozen=True)
class BuildResult:
    """The images, per container."""

    images: Mapping[str, ImageResult]

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"images": {c: i.to_dict() for c, i in self.images.items()}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BuildResult:
        """Inverse of `to_dict`."""
        return cls({c: ImageResult.from_dict(i) for c, i in d["images"].items()})


@dataclass(frozen=True)
class CreateResult:
    """The restored pod as its create answered."""

    pod: str
    uid: str
    resource_version: str | None
    # The owner's selector label kept off the restored pod until the hand-over.
    held_label: tuple[str, str] | None
    # The images the source ran, pulled on a CRI-O destination first (it restores onto
    # them and pulls nothing): image -> seconds. Empty: none needed, or older journals.
    base_images: Mapping[str, float] = field(default_factory=dict)
    # Container -> the image the source container ran (REPO@sha256:... when known) on a
    # CRI-O destination: pulled by it, a restored container may report that name.
    workload_images: Mapping[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"pod": self.pod, "uid": self.uid, "resource_version": self.resource_version,
                "held_label": list(self.held_label) if self.held_label else None,
                "base_images": dict(self.base_images),
                "workload_images": dict(self.workload_images)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CreateResult:
        """Inverse of `to_dict`."""
        held = d["held_label"]
        return cls(str(d["pod"]), str(d["uid"]), d["resource_version"],
                   (str(held[0]), str(held[1])) if held else None,
                   {str(i): float(s) for i, s in (d.get("base_images") or {}).items()},
                   {str(c): str(i) for c, i in (d.get("workload_images") or {}).items()})


@dataclass(frozen=True)
class VerifyResult:
    """When the restored pod was seen ready (time.time()), and its images' ids."""

    ready_at: float
    image_ids: Mapping[str, str]

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"ready_at": self.ready_at, "image_ids": dict(self.image_ids)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> VerifyResult:
        """Inverse of `to_dict`."""
        return cls(float(d["ready_at"]), dict(d["image_ids"]))


@dataclass(frozen=True)
class SwitchoverResult:
    """When the source stopped (time.time()); None when it runs on (--keep-source)."""

    source_stopped_at: float | None

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"source_stopped_at": self.source_stopped_at}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SwitchoverResult:
        """Inverse of `to_dict`."""
        stopped = d["source_stopped_at"]
        return cls(None if stopped is None else float(stopped))


@dataclass(frozen=True)
class CleanupResult:
    """What the cleanup removed, as lines (objects, archives)."""

    removed: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"removed": list(self.removed)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CleanupResult:
        """Inverse of `to_dict`."""
        return cls(tuple(d["removed"]))


StageResult = (CheckpointResult | BuildResult | CreateResult | VerifyResult | SwitchoverResult
               | CleanupResult)

#: Each stage's result type, by the stage's name in the journal.
TYPES: dict[str, type[StageResult]] = {
    "checkpoint": CheckpointResult, "build": BuildResult, "create": CreateResult,
    "verify": VerifyResult, "switchover": SwitchoverResult, "cleanup": CleanupResult,
}


def read(stage: str, data: Mapping[str, Any]) -> StageResult:
    """The result of a done stage, from its journal ``data``."""
    return TYPES[stage].from_dict(data)


def done(journal: Journal) -> dict[str, StageResult]:
    """The results of the stages ``journal`` says are done, by stage name; also of those
    a rollback undid (what they made is gone, what they measured still holds)."""
    return {s.name: read(s.name, s.data) for s in journal.stages
            if s.status in (DONE, UNDONE) and s.name in TYPES}
