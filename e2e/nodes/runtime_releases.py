"""What each CRI-O and containerd release does with checkpoints and restores (as shipped
by late 2026), and the exact words it answers with. Node-side facts only: the
simulated kubelets (restore.py, nodeconfig.py) follow them; nothing here knows
about the API server.

Sources, read at the tags and branches named (docs/runtimes.md has the whole
account):

CRI-O
- `enable_criu_support` ([crio.runtime]) defaulted to false up to 1.29 and to
  true from 1.30.0 (cri-o/cri-o #7846, commit c434ea8, first in v1.30.0); with
  it false a checkpoint answers "checkpoint/restore support not available"
  (server/container_checkpoint.go) and CreateContainer never looks for a
  checkpoint image.
- #10248 (main, 2026-08-17; in release-1.37) adds `[crio.checkpoint_restore]
  container_level_enabled = none | checkpoint_only | checkpoint_restore`
  (flag --checkpoint-restore-container-level-enabled, renamed
  --checkpoint-restore-level by #10319) and deprecates `enable_criu_support`
  (false is translated to "none"). CreateContainer skips the checkpoint
  detection unless the level is checkpoint_restore
  (`RestoreContainerEnabled()`, server/container_create.go), so the image is
  created as an ordinary container.
- #10251 (main, 2026-08-20) makes checkpoint_only the default. Backported
  with #10248 and #10319 to release-1.36 (#10322), 1.34 (#10327), 1.33
  (#10336), 1.32 (#10337), 1.31 (#10338), 1.30 (#10339), merged 2026-09-07..14,
  after the last tags of those branches (v1.30.14, v1.31.13, v1.32.13,
  v1.33.13, v1.34.11, v1.36.3): the next patch release of each carries it.
  The 1.29 backport (#10340) was closed unmerged: 1.29 keeps
  enable_criu_support (default false). No 1.35 or 1.37 backport was found;
  1.37.0's notes list #10248 only.
- An ordinary container from a checkpoint image fails in CRI-O's
  SpecSetProcessArgs with "no command specified" (the image has no Entrypoint
  or Cmd; internal/factory/container/container.go), unwrapped: the kubelet
  shows CreateContainerError "no command specified" and the Event
  `Error: no command specified`. With a command in the pod spec, runc cannot
  find it in the image's root (the archive's files): "container create failed:
  runc create failed: unable to start container process: exec: ...".

containerd
- 2.0 checkpoints only; CreateContainer does not look for checkpoint images.
- 2.1 restores in CreateContainer when the image's top-level document (read
  as an OCI index: an index's or a manifest's `annotations`) carries
  `org.criu.checkpoint.container.name` (internal/cri/server/
  container_checkpoint_linux.go, checkIfCheckpointOCIImage). It then reads
  spec.dump, config.dump and status.dump (`failed to read "status.dump": ...`
  for a CRI-O archive, which has none) and pulls the base image with no
  credentials: `failed to pull checkpoint base image REF: ...` (#12585,
  #11901: the pod's pull secrets are not used).
- 2.2.7 and 2.3.4 (2026-08-12; #13937 on release/2.2, #13913 on release/2.3)
  turn it off unless `enable_experimental_restore_via_create = true` in
  `[plugins."io.containerd.cri.v1.runtime"]`: CreateContainer answers
  "checkpoint restore via CreateContainer is disabled by configuration".
- 2.4 removes it (#13871 on main): a checkpoint image is an ordinary image,
  `failed to generate container "ID" spec: no command specified`.
"""

from __future__ import annotations

__all__ = [
    "CONTAINERD_RESTORE_DISABLED",
    "CONTAINERD_RESTORE_OPTION_FROM",
    "CRIO_ARTIFACT_FALLBACK_FROM",
    "CRIO_CHECKPOINT_ONLY_FROM",
    "CRIO_NOT_AVAILABLE",
    "PAUSE_IMAGE",
    "containerd_restore",
    "crio_default_level",
]

Version = tuple[int, int, int]

#: The sandbox (pause) image CRI-O's `pause_image` and containerd's `sandbox_image` name by
#: default in the releases modelled; the kubelet lists it among the node's images.
PAUSE_IMAGE = "registry.k8s.io/pause:3.10"
#: Its size as registry.k8s.io serves it for linux/amd64 (bytes, as the kubelet reports).
PAUSE_IMAGE_SIZE = 320368

#: First patch of each CRI-O minor whose default is checkpoint_only (see above).
#: 1.35 and 1.37 are assumed to follow (no backport found; releases after
#: September 2026 are taken to carry it); 1.38 and later branch off main after #10251.
CRIO_CHECKPOINT_ONLY_FROM: dict[tuple[int, int], int] = {
    (1, 30): 15, (1, 31): 14, (1, 32): 14, (1, 33): 14, (1, 34): 12, (1, 35): 7,
    (1, 36): 4, (1, 37): 1,
}
CRIO_NOT_AVAILABLE = "checkpoint/restore support not available"
#: From this CRI-O minor on, a pull that failed for any reason but the network (a
#: Go net.Error: refused, TLS, timeouts) is tried again as an OCI artifact, and the
#: error names both attempts; a network error is not, and reads `unable to pull image:
#: ...` (internal/storage/image.go's shouldTryArtifact and internal/ociartifact, read
#: at v1.36.3; both seen on the real nodes). Older releases are not checked: the node
#: agents word their failures without either there.
CRIO_ARTIFACT_FALLBACK_FROM = (1, 36)
#: First patch of the containerd minors that have `enable_experimental_restore_via_create`.
CONTAINERD_RESTORE_OPTION_FROM: dict[tuple[int, int], int] = {(2, 2): 7, (2, 3): 4}
CONTAINERD_RESTORE_DISABLED = "checkpoint restore via CreateContainer is disabled by configuration"


def crio_default_level(version: Version) -> str:
    """`container_level_enabled` a CRI-O release runs with when crio.conf does not set it
    (for releases before the table: what `enable_criu_support`'s default amounts to)."""
    minor = version[:2]
    if minor < (1, 30):
        return "none"  # enable_criu_support defaulted to false
    if minor >= (1, 38):
        return "checkpoint_only"
    first = CRIO_CHECKPOINT_ONLY_FROM.get((minor[0], minor[1]))
    if first is not None and version[2] >= first:
        return "checkpoint_only"
    return "checkpoint_restore"


def containerd_restore(version: Version, option: bool) -> str:
    """What containerd's CreateContainer does with a checkpoint image:
    "plain" (not looked for: 2.0, 2.4+), "restore" (2.1-2.3 with restore on) or
    "disabled" (2.2.7+/2.3.4+ without enable_experimental_restore_via_create)."""
    minor = version[:2]
    if minor < (2, 1) or minor >= (2, 4):
        return "plain"
    first = CONTAINERD_RESTORE_OPTION_FROM.get((minor[0], minor[1]))
    if first is not None and version[2] >= first and not option:
        return "disabled"
    return "restore"
