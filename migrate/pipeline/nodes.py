"""What a node can do for a migration, read from its Node object.

The API tells the runtime (``status.nodeInfo.containerRuntimeVersion``),
readiness and schedulability; it does not tell CRI-O's restore level, which
lives in crio.conf on the node. So a CRI-O node is judged able to restore and
the hint names the setting to check; the destination's kubelet has the last
word when the restored pod starts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

#: Where CRI-O keeps the switch (shared/FORMATS.md §5); since Sep 2026 the default
#: level is checkpoint_only, which checkpoints but refuses restores.
CRIO_RESTORE_SETTING = ("[crio.checkpoint_restore] container_level_enabled = "
                        "checkpoint_restore (older CRI-O: enable_criu_support = true)")

_VERSION = re.compile(r"(\d+)\.(\d+)(?:\.(\d+))?")


def _version(text: str) -> tuple[int, int, int] | None:
    m = _VERSION.search(text)
    return (int(m[1]), int(m[2]), int(m[3] or 0)) if m else None


@dataclass(frozen=True)
class Runtime:
    """A node's container runtime and what migrations can ask of it."""

    name: str  # cri-o, containerd, docker, ... ("" when the node reports nothing)
    version: str
    can_checkpoint: bool
    can_restore: bool
    reason: str  # why not, or what to check


def runtime_of(node: dict[str, Any]) -> Runtime:
    """Classify the runtime a Node reports."""
    raw = str(((node.get("status") or {}).get("nodeInfo") or {})
              .get("containerRuntimeVersion", ""))
    name, _, version = raw.partition("://")
    parsed = _version(version)
    if name == "cri-o":
        return Runtime(name, version, True, True,
                       f"CRI-O restores when crio.conf has {CRIO_RESTORE_SETTING}")
    if name == "containerd":
        if parsed is None or parsed < (2, 0, 0):
            return Runtime(name, version, False, False,
                           "containerd checkpoints from 2.0 and cannot restore CRI-O archives")
        return Runtime(name, version, True, False,
                       "containerd can checkpoint (2.0+) but does not restore CRI-O "
                       "checkpoint images (restore was removed in 2.4): a source, never "
                       "a destination")
    shown = raw or "no runtime reported"
    return Runtime(name, version, False, False,
                   f"{shown}: only CRI-O (and containerd as a source) support checkpoints")


def ready(node: dict[str, Any]) -> tuple[bool, str]:
    """Whether the Ready condition is True, and its message otherwise."""
    for cond in (node.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            ok = cond.get("status") == "True"
            why = cond.get("message") or cond.get("reason") or f"Ready={cond.get('status')}"
            return ok, "" if ok else str(why)
    return False, "the node reports no Ready condition"


def blocking_taints(node: dict[str, Any]) -> list[str]:
    """Taints that keep new pods off the node (NoSchedule, NoExecute), as key=value:effect."""
    out = []
    for t in (node.get("spec") or {}).get("taints") or []:
        if t.get("effect") in ("NoSchedule", "NoExecute"):
            value = f"={t['value']}" if t.get("value") else ""
            out.append(f"{t.get('key')}{value}:{t['effect']}")
    return out


def cordoned(node: dict[str, Any]) -> bool:
    """``spec.unschedulable``: kubectl cordon was run on it."""
    return bool((node.get("spec") or {}).get("unschedulable"))
