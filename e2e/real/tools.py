"""Where the real parts of the test world are, and what is missing.

scripts/setup-real installs them (versions pinned in versions.env, read here
too, so there is one place to change a version). Each ``missing_*`` function
returns None when everything is there, else one sentence naming exactly what
is missing, for a skip message.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
SETUP_HINT = "run scripts/setup as root"


@functools.cache
def versions() -> dict[str, str]:
    """The KEY=VALUE pairs of versions.env."""
    out: dict[str, str] = {}
    for line in (HERE / "versions.env").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key] = value
    return out


def cache_dir() -> Path:
    """Where setup-real keeps CRIU, crit and checkpointctl."""
    return Path(os.environ.get("MIGRATE_TEST_CACHE") or versions()["MIGRATE_TEST_CACHE_DEFAULT"])


@dataclass(frozen=True)
class Tools:
    """Paths of the real tools the fixtures and comparisons run."""

    criu: Path
    crit: Path
    checkpointctl: Path

    @property
    def criu_bin_dir(self) -> Path:
        """Put first on PATH so runc (and Podman's CRIU probe) run this CRIU."""
        return self.criu.parent


def tools() -> Tools:
    """The cached binaries (they may not exist: see the missing_* checks)."""
    v, cache = versions(), cache_dir()
    criu = cache / f"criu-{v['CRIU_VERSION']}" / "bin"
    ctl = cache / f"checkpointctl-{v['CHECKPOINTCTL_VERSION']}" / "checkpointctl"
    return Tools(criu=criu / "criu", crit=criu / "crit", checkpointctl=ctl)


@functools.cache
def _criu_version(criu: Path) -> str:
    try:
        out = subprocess.run([str(criu), "--version"], capture_output=True, text=True,
                             timeout=30, check=False).stdout
    except OSError:
        return ""
    for line in out.splitlines():
        if line.startswith("Version:"):
            return line.split(":", 1)[1].strip()
    return ""


def missing_engine() -> str | None:
    """What real Podman checkpoints need that this machine lacks, or None."""
    if os.geteuid() != 0:
        return f"real checkpoints need root (rootful Podman, CRIU): {SETUP_HINT}, test as root"
    absent = [p for p in ("podman", "runc", "buildah", "busybox") if shutil.which(p) is None]
    if absent:
        return f"real checkpoints need {', '.join(absent)} on PATH: {SETUP_HINT}"
    t = tools()
    want = versions()["CRIU_VERSION"]
    if not t.criu.is_file():
        return f"real checkpoints need CRIU {want} at {t.criu}: {SETUP_HINT}"
    have = _criu_version(t.criu)
    if have != want:
        return f"real checkpoints need CRIU {want}; {t.criu} says {have or 'nothing'}: {SETUP_HINT}"
    return None


def missing_crit() -> str | None:
    """None when crit (CRIU 4.1.1's, from the same tree) is installed."""
    t = tools()
    return None if t.crit.is_file() else f"the crit comparison needs {t.crit}: {SETUP_HINT}"


def missing_checkpointctl() -> str | None:
    """None when the pinned checkpointctl is installed."""
    t = tools()
    if t.checkpointctl.is_file():
        return None
    return f"the checkpointctl comparison needs {t.checkpointctl}: {SETUP_HINT}"
