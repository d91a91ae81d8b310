"""The annotations that make an image a checkpoint image, and the archive checks CRI-O makes.

We set CRI-O's keys (``io.kubernetes.cri-o.annotations.checkpoint.*``, of which
CRI-O checks ``.name``) and checkpointctl/containerd's (``org.criu.checkpoint.*``)
on every image; no tool today sets both. Images of archives Podman exported also
get Podman's own keys (``io.podman.annotations.checkpoint.*``): Podman 4.3 takes
an image for a checkpoint when ``...checkpoint.runtime.name`` is there and names
its own OCI runtime (cmd/podman/utils/utils.go, IsCheckpointImage). Only those
archives: Podman restores from libpod's config.dump, which CRI-O and containerd
archives do not have.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from migrate.adapters.checkpoint import (
    CRIO_ANNOTATIONS,
    ENGINE_CONTAINERD,
    ENGINE_CRIO,
    ENGINE_PODMAN,
    SPEC_DUMP,
    Checkpoint,
    Identity,
)
from migrate.adapters.registry.reference import parse_reference
from migrate.errors import ArchiveError, UsageError

CRIO = "io.kubernetes.cri-o.annotations.checkpoint."
CRIU = "org.criu.checkpoint."
PODMAN = "io.podman.annotations.checkpoint."
#: The checkpointed container's image: what a CRI-O restore reports running
#: (pipeline/restore.py).
ROOTFS_IMAGE_NAME = CRIO + "rootfsImageName"
CHECKPOINT_NAME = CRIO + "name"
PODMAN_RUNTIME = PODMAN + "runtime.name"
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


def check_restorable(ckpt: Checkpoint, who: Identity, containerd: bool = False) -> None:
    """Refuse what CRI-O would refuse, before anything is uploaded.

    ``containerd``: the image is for containerd 2.1-2.3, which restore their own
    archives (`migrate build --containerd`): a containerd archive is what it takes.
    """
    if not who.container:
        raise ArchiveError(ckpt.label, "names no container", hint=_REFUSED, member=SPEC_DUMP)
    if containerd and who.engine != ENGINE_CONTAINERD:
        raise UsageError(f"--containerd: {ckpt.label} is {who.engine}'s checkpoint, and "
                         "containerd restores only its own", hint="leave out --containerd")
    if who.engine == ENGINE_CONTAINERD and not containerd:
        raise ArchiveError(ckpt.label, f"is a containerd checkpoint: CRI-O refuses to restore "
                           f"it (its spec.dump has no {CRIO_ANNOTATIONS} annotation)",
                           hint="CRI-O restores only CRI-O's archives; nothing was uploaded "
                           "(containerd 2.1-2.3 restore their own: `migrate build "
                           "--containerd`)")
    if who.engine == ENGINE_CRIO and CRIO_ANNOTATIONS not in ckpt.annotations:
        raise ArchiveError(ckpt.label, f"has no {CRIO_ANNOTATIONS} annotation", hint=_REFUSED,
                           member=SPEC_DUMP)


#: Where CRI-O keeps, in spec.dump, the name the container's image ran under and the
#: REPO@DIGEST names of that image, comma-separated ("persisted for restore":
#: internal/annotations/annotations.go, internal/factory/container/container.go, v1.36.3).
CRIO_IMAGE_NAME = "io.kubernetes.cri-o.ImageName"
CRIO_REPO_DIGESTS = "io.kubernetes.cri-o.ImageRepoDigests"
# What an archive may name as an image to pull: nothing a command line could take for an
# option, nothing a shell would split.
_PULLABLE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@-]{0,254}$")


def image_name(ckpt: Checkpoint) -> str:
    """The name the checkpointed container's image ran under ("" when none is recorded)."""
    return str(ckpt.config.get("rootfsImageName")
               or ckpt.annotations.get(CRIO_IMAGE_NAME, ""))


def pull_reference(ckpt: Checkpoint) -> str | None:
    """What pulls exactly the image the container ran: the first REPO@DIGEST CRI-O
    recorded, else its name (a tag may have moved since); None when the archive names
    nothing that looks like an image reference (it is untrusted input)."""
    digests = [d.strip() for d in ckpt.annotations.get(CRIO_REPO_DIGESTS, "").split(",")]
    for candidate in [*(d for d in digests if "@" in d), image_name(ckpt)]:
        if _PULLABLE.match(candidate):
            try:
                parse_reference(candidate)
            except UsageError:
                continue
            return candidate
    return None


def image_id(config: dict[str, Any]) -> str:
    """The ID of the image the container ran. CRI-O from 1.30 writes it as rootfsImageRef
    (internal/lib/checkpoint.go, v1.36.3) and keeps in rootfsImage what the client asked
    for: the ID when the kubelet asks, a name when crictl is given one. Before 1.30
    rootfsImage was the ID; Podman calls it rootfsImageID."""
    ref = str(config.get("rootfsImageRef") or "")
    if re.fullmatch(r"[0-9a-f]{64}", ref):
        return ref
    return str(config.get("rootfsImage") or config.get("rootfsImageID") or "")


def checkpoint_image_info(ckpt: Checkpoint, containerd: bool = False) -> CheckpointImageInfo:
    """Check the archive and derive the image's annotations from config.dump and spec.dump
    (``containerd``: see `check_restorable`)."""
    who = ckpt.identity()
    check_restorable(ckpt, who, containerd)
    config = ckpt.config
    name = image_name(ckpt)
    ran_id = image_id(config)
    values = {
        CRIO + "name": who.container,
        CRIO + "rawImageName": name,
        CRIO + "rootfsImageName": name,
        CRIO + "rootfsImageID": ran_id,
        CRIU + "container.name": who.container,
        CRIU + "pod.name": who.pod,
        CRIU + "pod.namespace": who.namespace,
        CRIU + "pod.uid": who.pod_uid,
        CRIU + "rootfsImageName": name,
        CRIU + "rootfsImageID": ran_id,
        CRIU + "engine.name": who.engine.lower(),
        CRIU + "runtime.name": config.get("runtime", ""),
    }
    architecture = _architecture(ckpt)
    if who.engine == ENGINE_PODMAN:
        values |= _podman(config, who, name, ran_id, architecture)
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
        architecture=architecture,
    )


def _podman(config: dict[str, Any], who: Identity, image_name: str, image_id: str,
            architecture: str) -> dict[str, str]:
    """The keys `podman container checkpoint --create-image` sets that an archive can tell.

    Podman also writes its own, conmon's and the runtime's versions, the host's
    kernel, cgroup version and distribution: facts about the machine that
    checkpointed, which the archive does not record, so they are left out
    rather than made up. Podman reads only ``runtime.name``.
    """
    return {
        PODMAN + "name": who.container,
        PODMAN + "rawImageName": config.get("RawImageName") or image_name,
        PODMAN + "rootfsImageID": image_id,
        PODMAN + "rootfsImageName": image_name,
        PODMAN_RUNTIME: config.get("runtime", ""),
        PODMAN + "host.arch": architecture,
    }
