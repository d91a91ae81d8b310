"""What a node can do for a migration, read from its Node object.

The API tells the runtime (``status.nodeInfo.containerRuntimeVersion``),
readiness and schedulability; it does not tell the runtime's restore setting,
which lives in the node's configuration files. What the API does tell is the
release, and with it the default that setting has (docs/runtimes.md has the
sources):

- CRI-O 1.25-1.29: ``enable_criu_support`` defaults to false: no checkpoint,
  no restore unless enabled; 1.30 turned it on by default (cri-o #7846);
- CRI-O's ``[crio.checkpoint_restore] container_level_enabled`` (cri-o #10248)
  defaults to ``checkpoint_only``, which checkpoints but refuses restores,
  from cri-o #10251 on: 1.30.15, 1.31.14, 1.32.14, 1.33.14, 1.34.12, 1.36.4
  and 1.38 (backports #10339, #10338, #10337, #10336, #10327, #10322), and
  presumably 1.35.7 and 1.37.1 (no backport found; the default of those is not
  certain);
- containerd restores in CreateContainer only in 2.1-2.3, from 2.2.7 and 2.3.4
  only with ``enable_experimental_restore_via_create = true`` (containerd
  #13937, #13913); 2.4 removed it. It needs its own archive layout
  (``status.dump``), so a CRI-O checkpoint never restores there.

So a CRI-O node is judged able to restore (its configuration may say so), and
doctor warns where the release's default says it will not; only a restore
(``migrate doctor --probe``) proves it, and the destination's kubelet has the
last word when the restored pod starts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

#: Where CRI-O's switch lives: a drop-in file, so that package upgrades keep it.
CRIO_CONFIG_DIR = "/etc/crio/crio.conf.d/"
CRIO_RESTORE_SETTING = ('[crio.checkpoint_restore] container_level_enabled = '
                        '"checkpoint_restore"')
#: Before the table (CRI-O up to the releases named above): the older switch.
CRIO_OLD_SETTING = "[crio.runtime] enable_criu_support = true"
CONTAINERD_CONFIG = "/etc/containerd/config.toml"
CONTAINERD_RESTORE_SETTING = ('[plugins."io.containerd.cri.v1.runtime"] '
                              "enable_experimental_restore_via_create = true")

#: First patch of each CRI-O minor whose default is checkpoint_only; 1.38+ all are.
CRIO_CHECKPOINT_ONLY_FROM: dict[tuple[int, int], int] = {
    (1, 30): 15, (1, 31): 14, (1, 32): 14, (1, 33): 14, (1, 34): 12, (1, 36): 4,
}
#: Minors whose backport was not found: their later patches probably default to it too.
CRIO_UNSETTLED_FROM: dict[tuple[int, int], int] = {(1, 35): 7, (1, 37): 1}

_VERSION = re.compile(r"(\d+)\.(\d+)(?:\.(\d+))?")


def _version(text: str) -> tuple[int, int, int] | None:
    m = _VERSION.search(text)
    return (int(m[1]), int(m[2]), int(m[3] or 0)) if m else None


def crio_restore_fix(version: tuple[int, int, int] | None = None) -> str:
    """What to set, where, on a CRI-O node that refuses restores: the switch its release
    has. The [crio.checkpoint_restore] table came with #10248, in 1.37 and in the patch
    releases that default to checkpoint_only; the releases before it (1.30.0 - 1.36.3
    among them, read in v1.36.3's pkg/config) have only enable_criu_support, and refuse
    restores when it is false or CRI-O found no criu at start."""
    if version is not None and version[:2] < (1, 30):
        return (f"set {CRIO_OLD_SETTING} in a file in {CRIO_CONFIG_DIR} and restart CRI-O "
                "(1.29 and older have no [crio.checkpoint_restore] table)")
    if version is not None and crio_default(version) == "on" and version[:2] != (1, 37):
        return (f"set {CRIO_OLD_SETTING} in a file in {CRIO_CONFIG_DIR} and restart CRI-O, "
                "with criu on its PATH (CRI-O turns the support off when it finds none); "
                f"{'.'.join(map(str, version))} has no [crio.checkpoint_restore] table")
    return (f"set {CRIO_RESTORE_SETTING} in a file in {CRIO_CONFIG_DIR} (e.g. "
            f"{CRIO_CONFIG_DIR}99-checkpoint-restore.conf) and restart CRI-O, or start it "
            "with --checkpoint-restore-level=checkpoint_restore")


def containerd_restore_fix() -> str:
    """What containerd would need; and why it still cannot take a CRI-O checkpoint."""
    return (f"containerd 2.2.7+/2.3.4+ restore only with {CONTAINERD_RESTORE_SETTING} in "
            f"{CONTAINERD_CONFIG} (removed in 2.4), and only archives in containerd's own "
            "layout (status.dump): restore CRI-O checkpoints on a CRI-O node")


def crio_default(version: tuple[int, int, int]) -> str:
    """What a CRI-O release does when its configuration says nothing: "on" (checkpoint
    and restore), "off" (checkpoint_only), "disabled" (1.25-1.29's enable_criu_support
    = false: neither) or "unsettled" (probably off; see the module docstring)."""
    minor = version[:2]
    if minor < (1, 30):
        return "disabled"
    if minor >= (1, 38):
        return "off"
    first = CRIO_CHECKPOINT_ONLY_FROM.get(minor)
    if first is not None and version[2] >= first:
        return "off"
    first = CRIO_UNSETTLED_FROM.get(minor)
    if first is not None and version[2] >= first:
        return "unsettled"
    return "on"


@dataclass(frozen=True)
class Runtime:
    """A node's container runtime and what migrations can ask of it."""

    name: str  # cri-o, containerd, docker, ... ("" when the node reports nothing)
    version: str
    can_checkpoint: bool
    can_restore: bool
    reason: str  # why not, or what to check
    restore_default: str = "on"  # on | off | disabled | unsettled (see `crio_default`)

    @property
    def can_source(self) -> bool:
        """Whether migrate can move pods off this node: it checkpoints, and its archives
        are CRI-O's, which CRI-O destinations restore."""
        return self.name == "cri-o" and self.can_checkpoint

    @property
    def source_reason(self) -> str:
        """Why pods on this node cannot be migrated ("" when they can)."""
        if self.can_source:
            return ""
        if self.name == "containerd" and self.can_checkpoint:
            return (f"{self.shown} checkpoints, but CRI-O refuses to restore containerd's "
                    "archives (their spec.dump has no io.kubernetes.cri-o.Annotations), and "
                    "migrate restores only on CRI-O")
        return f"{self.shown} cannot checkpoint: {self.reason}"

    @property
    def shown(self) -> str:
        """``name://version`` as the node reports it."""
        return f"{self.name}://{self.version}" if self.name else "unknown runtime"

    @property
    def restore_fix(self) -> str:
        """What to set, and where, so that this runtime restores."""
        if self.name == "containerd":
            return containerd_restore_fix()
        return crio_restore_fix(_version(self.version))


def _crio(version: str, parsed: tuple[int, int, int] | None) -> Runtime:
    if parsed is not None and parsed < (1, 25, 0):
        return Runtime("cri-o", version, False, False,
                       "CRI-O checkpoints from 1.25 on (the CRI CheckpointContainer call)")
    default = crio_default(parsed) if parsed else "unsettled"
    fix = crio_restore_fix(parsed)
    if default == "on":
        reason = f"CRI-O restores unless its configuration turns it off; to be sure, {fix}"
    elif default == "disabled":
        reason = (f"CRI-O {version} neither checkpoints nor restores by default "
                  f"(enable_criu_support = false); {fix}")
    elif default == "off":
        reason = (f"CRI-O {version} defaults to container_level_enabled = "
                  f'"checkpoint_only": it checkpoints but refuses restores; {fix}')
    else:
        reason = (f"CRI-O {version} probably defaults to container_level_enabled = "
                  f'"checkpoint_only" (restore off); {fix}')
    return Runtime("cri-o", version, True, True, reason, default)


def reported_runtime(node: dict[str, Any]) -> str:
    """``status.nodeInfo.containerRuntimeVersion`` ("" when absent)."""
    return str(((node.get("status") or {}).get("nodeInfo") or {})
               .get("containerRuntimeVersion", ""))


def runtime_of(node: dict[str, Any]) -> Runtime:
    """Classify the runtime a Node reports."""
    return parse_runtime(reported_runtime(node))


def parse_runtime(raw: str) -> Runtime:
    """Classify a runtime as a Node reports it (``cri-o://1.30.4``)."""
    name, _, version = raw.partition("://")
    parsed = _version(version)
    if name == "cri-o":
        return _crio(version, parsed)
    if name == "containerd":
        if parsed is None or parsed < (2, 0, 0):
            return Runtime(name, version, False, False,
                           "containerd checkpoints from 2.0 and cannot restore CRI-O archives")
        return Runtime(name, version, True, False,
                       "containerd can checkpoint (2.0+) but does not restore CRI-O "
                       "checkpoint images (restore was removed in 2.4), and CRI-O does not "
                       "restore its archives: neither a source nor a destination", "off")
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
