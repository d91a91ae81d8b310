"""Where scripts/setup-cluster put the control plane's binaries, and which versions.

The versions are read from e2e/cluster/go.mod, the one place they are pinned, so
the launcher, the setup script and the tests cannot disagree about them.
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass
from pathlib import Path

from e2e.real import tools as real_tools

__all__ = ["COMPONENTS", "Binaries", "Versions", "binaries", "missing", "versions"]

HERE = Path(__file__).resolve().parent
GO_MOD = HERE / "go.mod"
SETUP_HINT = "run scripts/setup as root (it calls scripts/setup-cluster)"
#: The programs setup-cluster builds, by their file names.
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")


@dataclass(frozen=True)
class Versions:
    """The pinned releases: Kubernetes (`v1.X.Y`) and its etcd server (`v3.X.Y`)."""

    kubernetes: str
    etcd: str

    @property
    def staging(self) -> str:
        """The version of the published k8s.io staging modules of the same release."""
        return "v0." + self.kubernetes.removeprefix("v1.")


def _required(text: str, module: str) -> str:
    match = re.search(rf"^\s*(?:require\s+)?{re.escape(module)}\s+(v\S+)", text, re.M)
    if match is None:
        raise ValueError(f"{GO_MOD}: no version of {module}")
    return match.group(1)


@functools.cache
def versions() -> Versions:
    """The versions go.mod requires."""
    text = GO_MOD.read_text()
    return Versions(kubernetes=_required(text, "k8s.io/kubernetes"),
                    etcd=_required(text, "go.etcd.io/etcd/server/v3"))


@dataclass(frozen=True)
class Binaries:
    """Paths of the built programs (see `missing` before running them)."""

    bin_dir: Path

    def __getitem__(self, component: str) -> Path:
        if component not in COMPONENTS:
            raise KeyError(component)
        return self.bin_dir / component


def binaries() -> Binaries:
    """The cache directory setup-cluster builds into ($MIGRATE_TEST_CACHE/k8s-<version>/bin)."""
    return Binaries(real_tools.cache_dir() / f"k8s-{versions().kubernetes}" / "bin")


def missing() -> str | None:
    """None when every component is built, else one sentence naming what is missing."""
    b = binaries()
    absent = [c for c in COMPONENTS if not os.access(b[c], os.X_OK)]
    if not absent:
        return None
    return (f"the real control plane needs {', '.join(absent)} (Kubernetes "
            f"{versions().kubernetes}) in {b.bin_dir}: {SETUP_HINT}")
