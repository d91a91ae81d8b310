"""The one-line summary of a checkpoint (`migrate show`, `migrate list`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from migrate.adapters.checkpoint import STATS_DUMP, Checkpoint
from migrate.adapters.criu.images import DUMP_STAT_KEYS

ENGINE_CRIO, ENGINE_PODMAN, ENGINE_CONTAINERD = "CRI-O", "Podman", "containerd"


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


def engine_of(annotations: dict[str, str]) -> str:
    """Which engine wrote the archive, as checkpointctl decides it."""
    manager = annotations.get("io.container.manager")
    if manager == "cri-o":
        return ENGINE_CRIO
    if manager == "libpod":
        return ENGINE_PODMAN
    return ENGINE_CONTAINERD


def _identity(ckpt: Checkpoint, engine: str) -> tuple[str, str, str, str, str]:
    """(container name, pod, namespace, created, ip) from the engine's own annotations."""
    a, config = ckpt.annotations, ckpt.config
    created = config.get("createdTime", "")
    if engine == ENGINE_CRIO:
        meta = ckpt.annotation_json("io.kubernetes.cri-o.Metadata")
        name = meta.get("name", "") if isinstance(meta, dict) else ""
        name = name or a.get("io.kubernetes.container.name", "") or config.get("name", "")
        return (
            name,
            a.get("io.kubernetes.pod.name", ""),
            a.get("io.kubernetes.pod.namespace", ""),
            a.get("io.kubernetes.cri-o.Created", created),
            a.get("io.kubernetes.cri-o.IP.0", ""),
        )
    if engine == ENGINE_CONTAINERD:
        return (
            a.get("io.kubernetes.cri.container-name", "") or config.get("name", ""),
            a.get("io.kubernetes.cri.sandbox-name", ""),
            a.get("io.kubernetes.cri.sandbox-namespace", ""),
            created,
            "",
        )
    return config.get("name", ""), "", "", created, ""


def summarize(ckpt: Checkpoint, *, with_stats: bool = False) -> Summary:
    """Read config.dump, spec.dump and tar headers (and stats-dump if asked)."""
    engine = engine_of(ckpt.annotations)
    name, pod, namespace, created, ip = _identity(ckpt, engine)
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
        container_name=name,
        image=config.get("rootfsImageName", ""),
        id=config.get("id", ""),
        runtime=config.get("runtime", ""),
        created=created,
        engine=engine,
        ip=ip,
        pod_name=pod,
        namespace=namespace,
        checkpointed=config.get("checkpointedTime", ""),
        checkpoint_size=CheckpointSize(total, pages, diff),
        statistics=stats,
    )

