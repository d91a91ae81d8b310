"""The mounts a restore must provide, as the checkpoint archive records them.

CRI-O refuses to restore a container unless every mount in its spec.dump is
defined again, at the same container path, in the new container's mounts —
apart from the ones it sets up itself (`SKIPPED`, shared/FORMATS.md §5). The
archive's ``bind.mounts`` says whether each source was a file or a directory,
which a restore must match: a directory cannot be bound onto a file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from migrate.adapters.checkpoint import BIND_MOUNTS, CRIO_ANNOTATIONS, Checkpoint
from migrate.validation import validate

#: Container paths CRI-O mounts itself on restore: never required from the request.
SKIPPED = frozenset({
    "/proc", "/dev", "/dev/pts", "/dev/mqueue", "/sys", "/sys/fs/cgroup", "/dev/shm",
    "/etc/resolv.conf", "/etc/hostname", "/etc/passwd", "/etc/group", "/run/secrets",
    "/run/.containerenv",
})
DEFAULT_TERMINATION_PATH = "/dev/termination-log"
_TERMINATION_PATH = "io.kubernetes.container.terminationMessagePath"


@dataclass(frozen=True)
class RecordedMount:
    """One mount the restored container must get again."""

    destination: str
    source: str
    kind: str
    """``file`` or ``directory``: what the source was (bind.mounts), else our best reading."""
    permissions: int | None
    """The source's mode bits as bind.mounts records them; None when it does not."""
    readonly: bool
    how: str
    """Where ``kind`` comes from: ``bind.mounts``, or ``inferred`` (no entry there)."""


def termination_path(ckpt: Checkpoint) -> str:
    """The container's terminationMessagePath (the kubelet records it in its annotations)."""
    annotations = ckpt.annotation_json(CRIO_ANNOTATIONS)
    value = annotations.get(_TERMINATION_PATH) if isinstance(annotations, dict) else None
    return value if isinstance(value, str) and value else DEFAULT_TERMINATION_PATH


def host_path_type(m: RecordedMount) -> str | None:
    """The hostPath ``type`` that makes the kubelet check the source is what it was.

    ``Directory`` only when bind.mounts says the source was one. Nothing for CRI-O's
    ``file``: it means "not a directory" (CRI-O stats the source and asks only IsDir),
    so a socket or a device is a ``file`` too, and the type ``File`` (a regular file,
    since the kubelet compares the exact file type) would refuse a socket the source
    did bind. Nothing either for a kind we only inferred: no record, no check.
    """
    return "Directory" if m.how == BIND_MOUNTS and m.kind == "directory" else None


def _bind_mounts(ckpt: Checkpoint) -> dict[str, dict[str, Any]]:
    if not ckpt.archive.has(BIND_MOUNTS):
        return {}
    data = ckpt.archive.read_json(BIND_MOUNTS)
    validate(data, "bind-mounts.schema.json", f"{ckpt.label}: {BIND_MOUNTS}")
    return {entry["destination"]: entry for entry in data}


def required_mounts(ckpt: Checkpoint) -> list[RecordedMount]:
    """Every spec.dump mount CRI-O will ask for, in spec order, one per container path."""
    binds = _bind_mounts(ckpt)
    # Without a bind.mounts entry, the kubelet's two file mounts are still known files.
    known_files = {"/etc/hosts", termination_path(ckpt)}
    out: dict[str, RecordedMount] = {}
    for m in ckpt.spec.get("mounts") or []:
        dest = m["destination"]
        if dest in SKIPPED:
            continue
        entry = binds.get(dest)
        if entry is not None:
            kind, perms, how = entry["file_type"], entry.get("permissions"), BIND_MOUNTS
        else:
            kind = "file" if dest in known_files else "directory"
            perms, how = None, "inferred"
        out[dest] = RecordedMount(dest, str(m.get("source", "")), kind, perms,
                                  "ro" in (m.get("options") or []), how)
    return list(out.values())
