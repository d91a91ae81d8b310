"""The annotations that make an image a checkpoint image, and the archive checks CRI-O makes.

We set both families: CRI-O's keys (``io.kubernetes.cri-o.annotations.checkpoint.*``,
of which CRI-O checks ``.name``) and checkpointctl/containerd's
(``org.criu.checkpoint.*``). No tool today sets both.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

from migrate.adapters.checkpoint import (
    CRIO_ANNOTATIONS,
    ENGINE_CRIO,
    SPEC_DUMP,
    Checkpoint,
    Identity,
)
from migrate.errors import ArchiveError

CRIO = "io.kubernetes.cri-o.annotations.checkpoint."
CRIU = "org.criu.checkpoint."
CHECKPOINT_NAME = CRIO + "name"
_CRIU_VERSION = re.compile(rb"Version: (\d+\.\d+(?:\.\d+)?)")
_ARCHES = {1: "amd64", 2: "arm", 3: "arm64", 4: "ppc64le", 5: "s390x", 6: "mips64le"}
_REFUSED = "CRI-O would refuse to restore from it; nothing was uploaded"


@dataclass(frozen=True)
class CheckpointImageInfo:
    """What the image build needs to know about the archive."""

    identity: Identity
    annotations: dict[str, str]
    created: str  # when the checkpoint was taken (RFC 3339)
    architecture: str  # OCI name of the checkpointed processes' architecture, "" if unknown


def _criu_version(ckpt: Checkpoint) -> str | None:
    if not ckpt.archive.has("dump.log"):
        return None
    head = ckpt.archive.open_member("dump.log").read(4096)
    m = _CRIU_VERSION.search(head)
    return m.group(1).decode() if m else None


def _architecture(ckpt: Checkpoint) -> str:
    tree = ckpt.pstree()
    return _ARCHES.get(ckpt.core(tree[0].pid).mtype, "") if tree else ""


def check_restorable(ckpt: Checkpoint, who: Identity) -> None:
    """Refuse what CRI-O would refuse, before anything is uploaded."""
    if not who.container:
        raise ArchiveError(ckpt.label, "names no container", hint=_REFUSED, member=SPEC_DUMP)
    if who.engine == ENGINE_CRIO and CRIO_ANNOTATIONS not in ckpt.annotations:
        raise ArchiveError(ckpt.label, f"has no {CRIO_ANNOTATIONS} annotation", hint=_REFUSED,
                           member=SPEC_DUMP)


def checkpoint_image_info(ckpt: Checkpoint) -> CheckpointImageInfo:
    """Check the archive and derive the image's annotations from config.dump and spec.dump."""
    who = ckpt.identity()
    check_restorable(ckpt, who)
    config = ckpt.config
    image_name = config.get("rootfsImageName") or ckpt.annotations.get(
        "io.kubernetes.cri-o.ImageName", "")
    # CRI-O's config.dump calls the image ID rootfsImage, Podman's rootfsImageID.
    image_id = config.get("rootfsImage") or config.get("rootfsImageID", "")
    values = {
        CRIO + "name": who.container,
        CRIO + "rawImageName": image_name,
        CRIO + "rootfsImageName": image_name,
        CRIO + "rootfsImageID": image_id,
        CRIU + "container.name": who.container,
        CRIU + "pod.name": who.pod,
        CRIU + "pod.namespace": who.namespace,
        CRIU + "pod.uid": who.pod_uid,
        CRIU + "rootfsImageName": image_name,
        CRIU + "rootfsImageID": image_id,
        CRIU + "engine.name": who.engine.lower(),
        CRIU + "runtime.name": config.get("runtime", ""),
    }
    version = _criu_version(ckpt)
    if version:
        values[CRIO + "criu.version"] = values[CRIU + "criu.version"] = version
    # The image's creation time is the checkpoint's, so rebuilding the same
    # archive gives the same config digest.
    created = (config.get("checkpointedTime") or ckpt.dump_time() or who.created
               or datetime.now(UTC).isoformat())
    return CheckpointImageInfo(
        identity=who,
        annotations={k: v for k, v in values.items() if v},
        created=created,
        architecture=_architecture(ckpt),
    )
