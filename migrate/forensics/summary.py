"""The one-line summary of a checkpoint (`migrate show`, `migrate list`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from migrate.adapters.checkpoint import STATS_DUMP, Checkpoint
from migrate.adapters.criu.images import DUMP_STAT_KEYS


@dataclass(frozen=True)
class CheckpointSize:
    """Sizes in bytes, read from tar headers."""

    total_size: int  # regular files under checkpoint/
    memory_pages_size: int  # checkpoint/pages-*.img
    root_fs_diff_size: int  # rootfs-diff.tar


@dataclass(frozen=True)
class Summary:
    """What identifies a checkpoint: container, pod, engine, sizes."""

    container_name: str
    image: str
    id: str
    runtime: str
    created: str
    engine: str
    ip: str
    pod_name: str
    namespace: str
    checkpointed: str
    checkpoint_size: CheckpointSize
    statistics: dict[str, int] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The documented JSON form (schemas/show.schema.json)."""
        out = asdict(self)
        del out["checkpointed"]
        if self.statistics is None:
            del out["statistics"]
        return out


def summarize(ckpt: Checkpoint, *, with_stats: bool = False) -> Summary:
    """Read config.dump, spec.dump and tar headers (and stats-dump if asked)."""
    who = ckpt.identity()
    total, pages, diff = ckpt.sizes()
    stats = None
    if with_stats:
        raw = ckpt.stats()
        if raw is None:
            ckpt.archive.member(STATS_DUMP)  # raises the missing-member error
        else:
            stats = {k: raw[k] for k in DUMP_STAT_KEYS}
    config = ckpt.config
    return Summary(
        container_name=who.container,
        image=config.get("rootfsImageName", ""),
        id=config.get("id", ""),
        runtime=config.get("runtime", ""),
        created=who.created,
        engine=who.engine,
        ip=who.ip,
        pod_name=who.pod,
        namespace=who.namespace,
        # Podman's config.dump has no checkpointedTime: CRIU's own time then.
        checkpointed=config.get("checkpointedTime") or ckpt.dump_time(),
        checkpoint_size=CheckpointSize(total, pages, diff),
        statistics=stats,
    )

