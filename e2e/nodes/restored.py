"""What a restored container brings back, kept on its Pod so that it survives a later
checkpoint (migrating a migrated pod).

StartContainer of a checkpoint image runs CRIU: the processes, their memory
and the root-fs changes come back. The simulator reads them from the archive
and sets the pod annotations its checkpoints are filled from (documented in
kubelet.py), per container so that other containers are not affected:

    sim.migrate.dev/processes.<ctr>     pid, ppid, comm, argv, env and heap of each process
    sim.migrate.dev/memory-mib.<ctr>    dumped memory besides heaps and argv/environment
    sim.migrate.dev/rootfs-diff.<ctr>   the files of rootfs-diff.tar (UTF-8 text ones)

and a record of the restore, `sim.migrate.dev/restored.<ctr>` (JSON):
image, imageID, checkpoint (the image's checkpoint.name), source (pod,
namespace, uid, container and container ID from config.dump and spec.dump),
checkpointedTime, baseImage/baseImageRef (config.dump's rootfsImageName and
rootfsImageRef), processes (pid, ppid, comm, argv), memoryBytes (dumped),
rootfsDiff (paths), deletedFiles, truncated (true when heaps or files had to
be cut to keep the annotations small). Heap bytes that are not UTF-8 come
back as U+FFFD; memory outside heaps and argv/environment comes back as an
amount (memory-mib), not byte for byte.
"""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import dataclass, field
from typing import Any

from e2e.nodes.api import Obj
from e2e.nodes.checkpoints import (
    MEMORY_ANNOTATION,
    PROCESSES_ANNOTATION,
    RESTORED_ANNOTATION,
    ROOTFS_ANNOTATION,
)
from e2e.nodes.criu_read import PAGE, CriuError, DumpedProcess, read_processes
from e2e.nodes.images import PulledImage
from e2e.nodes.restore import CHECKPOINT_ANNOTATION, Checkpoint, CreateError, LayerRoot

__all__ = ["RESTORED_ANNOTATION", "Restored", "bring_back"]

_MAX_HEAP = 32 * 1024
_MAX_FILE = 16 * 1024
_MAX_FILES = 64
_PAGES_PER_MIB = (1024 * 1024) // PAGE


@dataclass
class Restored:
    """A container brought back: its record and the pod annotations to set."""

    record: dict[str, Any]
    annotations: dict[str, str] = field(default_factory=dict)


def _source(checkpoint: Checkpoint) -> dict[str, str]:
    # config.dump's name is CRI-O's k8s_<container>_<pod>_<namespace>_<uid>_<attempt>;
    # spec.dump's annotations say the same for archives of other layouts.
    config, annotations = checkpoint.config, checkpoint.spec.get("annotations") or {}
    parts = str(config.get("name", "")).split("_")
    named = len(parts) == 6 and parts[0] == "k8s"
    return {
        "pod": parts[2] if named else str(annotations.get("io.kubernetes.pod.name", "")),
        "namespace": parts[3] if named else
        str(annotations.get("io.kubernetes.pod.namespace", "")),
        "uid": parts[4] if named else str(annotations.get("io.kubernetes.pod.uid", "")),
        "container": parts[1] if named else
        str(annotations.get("io.kubernetes.container.name", "")),
        "containerID": str(config.get("id", "")),
    }


def _rootfs(root: LayerRoot) -> tuple[dict[str, str], bool]:
    data = root.read("rootfs-diff.tar")
    files: dict[str, str] = {}
    truncated = False
    if not data:
        return files, truncated
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        for member in tf.getmembers():
            reader = tf.extractfile(member) if member.isreg() else None
            if reader is None:
                continue
            content = reader.read(_MAX_FILE + 1)
            try:
                text = content[:_MAX_FILE].decode("utf-8")
            except UnicodeDecodeError:
                truncated = True
                continue
            truncated |= len(content) > _MAX_FILE or len(files) >= _MAX_FILES
            if len(files) < _MAX_FILES:
                files["/" + member.name.removeprefix("./").lstrip("/")] = text
    return files, truncated


def _bulk_pages(processes: list[DumpedProcess]) -> int:
    bulk = sum(p.other_pages for p in processes)
    if len(processes) == 1:
        # A lone process's extra memory is dumped as zeroed heap (checkpoints.py).
        only = processes[0]
        used = -(-len(only.heap) // PAGE)
        if only.heap_pages > max(1, used):
            bulk += only.heap_pages - used
    return bulk


def _process_entry(p: DumpedProcess) -> tuple[dict[str, Any], bool]:
    heap = p.heap[:_MAX_HEAP]
    entry = {"pid": p.pid, "ppid": p.ppid, "comm": p.comm, "argv": p.argv or [p.comm],
             "env": p.env, "heap": heap.decode("utf-8", "replace")}
    return entry, len(p.heap) > _MAX_HEAP


def bring_back(image: PulledImage, root: LayerRoot, checkpoint: Checkpoint, pod: Obj,
               container: dict[str, Any]) -> Restored:
    """StartContainer of a restore: CreateError RunContainerError if CRIU could not
    restore what the archive holds."""
    try:
        processes = read_processes(root.read, root.open)
    except CriuError as e:
        raise CreateError("RunContainerError",
                          f"failed to restore container {container['name']}: {e}") from None
    entries = [_process_entry(p) for p in processes]
    files, truncated = _rootfs(root)
    truncated |= any(cut for _, cut in entries)
    try:
        deleted = json.loads(root.read("deleted.files") or b"[]")
    except ValueError:
        deleted = []
    name = str(container["name"])
    bulk = _bulk_pages(processes)
    record = {
        "image": str(container.get("image", "")), "imageID": image.repo_digest,
        "checkpoint": image.annotations.get(CHECKPOINT_ANNOTATION, ""),
        "source": _source(checkpoint),
        "checkpointedTime": str(checkpoint.config.get("checkpointedTime", "")),
        "baseImage": str(checkpoint.config.get("rootfsImageName", "")),
        "baseImageRef": str(checkpoint.config.get("rootfsImageRef", "")),
        "processes": [{k: e[k] for k in ("pid", "ppid", "comm", "argv")} for e, _ in entries],
        "memoryBytes": sum(p.dumped_bytes for p in processes),
        "rootfsDiff": sorted(files), "deletedFiles": deleted if isinstance(deleted, list) else [],
        "truncated": truncated,
    }
    annotations = {
        f"{RESTORED_ANNOTATION}.{name}": json.dumps(record, separators=(",", ":")),
        f"{PROCESSES_ANNOTATION}.{name}": json.dumps([e for e, _ in entries],
                                                     separators=(",", ":")),
        f"{ROOTFS_ANNOTATION}.{name}": json.dumps(files, separators=(",", ":")),
    }
    if bulk:
        annotations[f"{MEMORY_ANNOTATION}.{name}"] = repr(bulk / _PAGES_PER_MIB)
    return Restored(record, annotations)
