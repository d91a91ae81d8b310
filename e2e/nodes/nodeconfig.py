"""Per-node settings: the container runtime, checkpoint support, readiness, faults.

`NodeConfig` is what `Cluster(node_config={...})` (e2e/cluster/world.py) takes
for each node; `Cluster.configure_node` changes it while the node runs.

Runtimes are `<name>://<version>` as a Node reports them in
`status.nodeInfo.containerRuntimeVersion`. Which of them can checkpoint is
`checkpoint_support()`: CRI-O from 1.25 and containerd from 2.0, and neither
when the restore level is "none" (CRI-O's `[crio.checkpoint_restore]
container_level_enabled = none`, or no CRIU on the node). A node that sets no
`restore_level` runs with its CRI-O release's default (runtime_releases.py:
none up to 1.29, checkpoint_only in the patch releases since September 2026).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

from e2e.nodes.runtime_releases import CRIO_NOT_AVAILABLE, crio_default_level

__all__ = [
    "DEFAULT_RUNTIME",
    "RESTORE_LEVELS",
    "NodeConfig",
    "checkpoint_support",
]

#: What nodes report as their runtime unless configured otherwise.
DEFAULT_RUNTIME = "cri-o://1.30.4"
#: CRI-O's `container_level_enabled` values (FORMATS.md §5).
RESTORE_LEVELS = ("none", "checkpoint_only", "checkpoint_restore")
#: The kubelet's --runtime-request-timeout default: the floor of a checkpoint's deadline.
DEFAULT_RUNTIME_REQUEST_TIMEOUT = 120.0

_RUNTIME = re.compile(r"^([a-z0-9.-]+)://v?(\d+)\.(\d+)(?:\.(\d+))?([-+.~].*)?$")
#: The kubelet's image pull backoff: 10 s doubling to 300 s (MaxContainerBackOff).
DEFAULT_BACKOFF, DEFAULT_BACKOFF_MAX = 10.0, 300.0


@dataclass
class NodeConfig:
    """How one simulated node behaves.

    runtime: `status.nodeInfo.containerRuntimeVersion`, e.g. `cri-o://1.30.4`,
        `containerd://2.4.0`; its name also prefixes the pods' container IDs.
    restore_level: none | checkpoint_only | checkpoint_restore (CRI-O's setting;
        "none" makes checkpoints fail with 500 on any runtime); None: what the
        runtime's release defaults to (`level`).
    enable_experimental_restore_via_create: containerd's switch (2.2.7+, 2.3.4+)
        for restoring checkpoint images in CreateContainer.
    checkpoint_gate: the kubelet's ContainerCheckpoint feature gate; off, the
        kubelet has no /checkpoint route (404 "404 page not found").
    ready: the Node's Ready condition (False: NotReady; the node lifecycle
        controller then adds its `node.kubernetes.io/not-ready` taints). Only what the
        Node reports changes: the simulated kubelet still runs its pods and answers.
    labels, taints, capacity: added to (labels, taints) or overriding (capacity
        keys; allocatable follows) what a node registers with.
    runtime_request_timeout: seconds; the kubelet's --runtime-request-timeout.
        A checkpoint's deadline is `?timeout=` when larger, else this (as the
        kubelet's CRI client does).
    fail_next_checkpoints: fault injection: the next N checkpoints reaching the
        runtime fail with 500 "checkpoint failed: (injected)".
    checkpoint_delay_per_mib: fault injection: seconds a checkpoint takes per
        MiB of the container's simulated memory.
    backoff, backoff_max: seconds; after a failed image pull the kubelet waits
        `backoff`, doubling after each further failure up to `backoff_max`
        (ImagePullBackOff); a failed container creation is retried every
        `backoff` (the pod worker's requeue). The kubelet's are 10 and 300.
    image_pull_seconds: fault injection: how long each image pull takes at least
        (the real transfer from the loopback registry within it); the pod stays
        Pending (ContainerCreating) meanwhile.
    max_parallel_image_pulls: how many image pulls the node runs at once; the
        others wait their turn, in order, under their `Pulling` event. 1 is the
        kubelet's default (serializeImagePulls true: one puller goroutine reading
        a queue, pkg/kubelet/images/puller.go at v1.37.2); None is
        serializeImagePulls false with no maxParallelImagePulls (no limit).
    """

    runtime: str = DEFAULT_RUNTIME
    restore_level: str | None = None
    enable_experimental_restore_via_create: bool = False
    checkpoint_gate: bool = True
    ready: bool = True
    labels: dict[str, str] = field(default_factory=dict)
    taints: list[dict[str, Any]] = field(default_factory=list)
    capacity: dict[str, str] = field(default_factory=dict)
    runtime_request_timeout: float = DEFAULT_RUNTIME_REQUEST_TIMEOUT
    fail_next_checkpoints: int = 0
    checkpoint_delay_per_mib: float = 0.0
    backoff: float = DEFAULT_BACKOFF
    backoff_max: float = DEFAULT_BACKOFF_MAX
    image_pull_seconds: float = 0.0
    max_parallel_image_pulls: int | None = 1

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """ValueError when a field is out of range (called on creation and by replace())."""
        if not _RUNTIME.match(self.runtime):
            raise ValueError(f"runtime {self.runtime!r}: expected <name>://<version>, "
                             f"e.g. {DEFAULT_RUNTIME}")
        if self.restore_level is not None and self.restore_level not in RESTORE_LEVELS:
            raise ValueError(f"restore_level {self.restore_level!r}: expected one of "
                             f"{', '.join(RESTORE_LEVELS)}")
        for name in ("fail_next_checkpoints", "checkpoint_delay_per_mib",
                     "runtime_request_timeout", "backoff", "backoff_max", "image_pull_seconds"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.max_parallel_image_pulls is not None and self.max_parallel_image_pulls < 1:
            raise ValueError("max_parallel_image_pulls must be >= 1 (None: no limit)")

    def replace(self, **changes: Any) -> NodeConfig:
        """A copy with `changes` applied (validated)."""
        return dataclasses.replace(self, **changes)

    @property
    def runtime_name(self) -> str:
        """`cri-o`, `containerd`, ... (the scheme of `runtime`)."""
        return self.runtime.split("://", 1)[0]

    @property
    def runtime_version(self) -> tuple[int, int, int]:
        """(major, minor, patch) of `runtime`."""
        m = _RUNTIME.match(self.runtime)
        assert m is not None  # validated
        return int(m.group(2)), int(m.group(3)), int(m.group(4) or 0)

    @property
    def level(self) -> str:
        """The restore level in effect: `restore_level`, else the CRI-O release's default
        (other runtimes: checkpoint_restore, i.e. CRIU is there)."""
        if self.restore_level is not None:
            return self.restore_level
        if self.runtime_name == "cri-o":
            return crio_default_level(self.runtime_version)
        return "checkpoint_restore"


def checkpoint_support(config: NodeConfig) -> str | None:
    """Why the node's runtime cannot checkpoint (a CRI error as the kubelet relays it),
    or None when it can."""
    name, version = config.runtime_name, config.runtime_version
    if name == "cri-o":
        if version < (1, 25, 0):
            return "rpc error: code = Unimplemented desc = unknown method CheckpointContainer " \
                   "for service runtime.v1.RuntimeService"
        if config.level == "none":
            return f"rpc error: code = Unknown desc = {CRIO_NOT_AVAILABLE}"
        return None
    if name == "containerd":
        if version < (2, 0, 0):
            return "rpc error: code = Unimplemented desc = method CheckpointContainer not " \
                   "implemented"
        if config.level == "none":
            return 'rpc error: code = Unknown desc = failed to checkpoint container: exec: ' \
                   '"criu": executable file not found in $PATH'
        return None
    return "rpc error: code = Unimplemented desc = method CheckpointContainer not implemented"
