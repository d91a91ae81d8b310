"""The tool's own image, built from the repository's Containerfile for real, and pushed.

    ref = build_tool_image(repo, f"{registry.host}/migrate/tool:test")

What `--build-on node` Jobs and `schedule drain` CronJobs run on a cluster. The
base, debian:bookworm-slim, comes from scripts/setup-toolimage (Debian's archive,
Docker Hub being out of reach); everything after it is the Containerfile's own
steps, `apt-get` and `pip` included, with this host's network.

Builds share one buildah store in the cache (TOOL_STORE), with `--layers`: the
apt steps are built once, and a changed checkout rebuilds from its `COPY`. Old
builds are pruned after each push. `--isolation chroot`: on this host's hybrid
cgroups buildah's OCI runtimes refuse to run the RUN steps ("cgroups in hybrid
mode not supported").
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from e2e.real import tools

__all__ = ["build_tool_image", "missing"]

_SUITE = tools.versions()["TOOL_BASE_SUITE"]
BASE = f"docker.io/library/debian:{_SUITE}-slim"
_LOCAL = "localhost/migrate:test"
_TIMEOUT = 1200.0  # a first build installs Debian packages and the wheel's dependencies


def _base_tar() -> Path:
    return tools.cache_dir() / f"tool-base-{_SUITE}" / "rootfs.tar"


def missing() -> str | None:
    """None when the tool image can be built here, else what is missing."""
    if os.geteuid() != 0:
        return "building the tool's image needs root (its buildah store is in the cache)"
    if shutil.which("buildah") is None:
        return "building the tool's image needs buildah: run scripts/setup"
    if not _base_tar().exists():
        return f"the tool image's base {BASE} is missing: run scripts/setup-toolimage as root"
    return None


def _buildah(*args: str) -> str:
    store = tools.cache_dir() / "tool-image"
    argv = ["buildah", "--root", str(store / "storage"), "--runroot", str(store / "run"),
            "--storage-driver", "overlay", *args]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=_TIMEOUT, check=False)
    if r.returncode != 0:
        tail = "\n".join((r.stdout + r.stderr).splitlines()[-30:])
        raise RuntimeError(f"buildah {args[0]} failed ({r.returncode}):\n{tail}")
    return r.stdout


def _import_base() -> None:
    """The base under its Docker Hub name, from setup-toolimage's tar (again if it changed)."""
    stamp = (_base_tar().parent / ".stamp").read_text().strip()
    label = f"migrate.test/base={stamp}"
    found = _buildah("images", "--filter", f"label={label}", "--format", "{{.Name}}:{{.Tag}}")
    if BASE in found.split():
        return
    ctr = _buildah("from", "scratch").strip()
    try:
        _buildah("add", ctr, str(_base_tar()), "/")
        _buildah("config", "--env", "PIP_CERT=/etc/ssl/certs/ca-certificates.crt",
                 "--cmd", "bash", "--label", label, ctr)
        _buildah("commit", "--quiet", ctr, BASE)
    finally:
        _buildah("rm", ctr)


def build_tool_image(repo: Path, ref: str) -> str:
    """Build `repo`'s Containerfile and push it to `ref` (a plain-HTTP registry); `ref`."""
    _import_base()
    _buildah("bud", "--isolation", "chroot", "--layers", "--network", "host", "--pull-never",
             "-f", str(repo / "Containerfile"), "-t", _LOCAL, str(repo))
    _buildah("push", "--tls-verify=false", _LOCAL, f"docker://{ref}")
    _buildah("rmi", "--prune")
    return ref
