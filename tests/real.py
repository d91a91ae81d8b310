"""pytest plugin: real checkpoints of a real workload, made once per session.

Loaded from tests/conftest.py (`pytest_plugins`). Fixtures (session scope):

    real_world                  a private Podman (e2e/real/podman.py), or a skip saying
                                exactly what is missing (root, podman, runc, CRIU 4.1.1)
    real_container              the workload (e2e/real/workload.py) running in it
    real_podman_archive         RealArchive: `podman container checkpoint --export
                                --compress none` of it, with the /proc ground truth
    real_podman_archive_gzip    the same with --compress gzip
    real_podman_archive_zstd    the same with --compress zstd (Podman's default)
    real_crio_archive           a CRI-O-layout archive made as CRI-O makes one: `runc
                                checkpoint` of the same container, packed with CRI-O's
                                metadata (e2e/real/crio.py); .pod holds its Kubernetes names
    real_tools                  e2e.real.tools.Tools (criu, crit, checkpointctl)

Checkpoints are taken with --leave-running, so every archive is of the same,
idle container; the truth is read again just before each one. With
MIGRATE_REQUIRE_REAL=1 (scripts/test sets it when run as root) a missing part
fails the test instead of skipping it: in CI, where setup installs everything,
nothing may be skipped silently.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from e2e.real import tools as real_tools_mod
from e2e.real.crio import Pod, crio_archive
from e2e.real.podman import PodmanWorld
from e2e.real.truth import Truth, read_truth
from e2e.real.workload import (
    WORKLOAD_FILES,
    Container,
    EngineView,
    build_workload_image,
    engine_view,
    export_checkpoint,
    start_workload,
)

__all__ = ["CRIO_POD", "RealArchive", "require"]

CRIO_POD = Pod()


def require(reason: str | None) -> None:
    """Skip (or, with MIGRATE_REQUIRE_REAL=1, fail) when ``reason`` says something is missing."""
    if reason is None:
        return
    if os.environ.get("MIGRATE_REQUIRE_REAL") == "1":
        pytest.fail(f"{reason} (MIGRATE_REQUIRE_REAL=1: nothing may be skipped)")
    pytest.skip(reason)


@dataclass(frozen=True)
class RealArchive:
    """A real checkpoint archive and what /proc showed just before it was taken."""

    path: Path
    truth: Truth
    secret: str
    container: str  # the container's name
    compress: str
    engine: EngineView  # what `podman inspect` and `podman diff` said


@pytest.fixture(scope="session")
def real_tools() -> real_tools_mod.Tools:
    """The cached real tools; skips when the engine parts are missing."""
    require(real_tools_mod.missing_engine())
    return real_tools_mod.tools()


@pytest.fixture(scope="session")
def real_world(tmp_path_factory: pytest.TempPathFactory,
               real_tools: real_tools_mod.Tools) -> Iterator[PodmanWorld]:
    """A Podman private to this session."""
    with PodmanWorld(tmp_path_factory.mktemp("podman"), real_tools.criu_bin_dir) as world:
        yield world


@pytest.fixture(scope="session")
def _real_secret() -> str:
    return f"MIGRATE-SECRET-{secrets.token_hex(12)}"


@pytest.fixture(scope="session")
def real_container(real_world: PodmanWorld, _real_secret: str,
                   tmp_path_factory: pytest.TempPathFactory) -> Container:
    """The workload, running and idle."""
    tag = f"localhost/migrate-real-workload:{secrets.token_hex(4)}"
    build_workload_image(real_world, _real_secret, tmp_path_factory.mktemp("rootfs"), tag)
    return start_workload(real_world, tag, f"wl-{secrets.token_hex(3)}")


def _export(world: PodmanWorld, ctr: Container, secret: str, out_dir: Path,
            compress: str) -> RealArchive:
    suffix = {"none": ".tar", "gzip": ".tar.gz", "zstd": ".tar.zst"}[compress]
    truth = read_truth(ctr.host_pid, secret.encode(), WORKLOAD_FILES)
    view = engine_view(world, ctr.name)
    path = export_checkpoint(world, ctr.name, out_dir / f"checkpoint-{ctr.name}{suffix}",
                             compress)
    (out_dir / f"truth-{compress}.json").write_text(truth.to_json())
    return RealArchive(path, truth, secret, ctr.name, compress, view)


@pytest.fixture(scope="session")
def real_podman_archive(real_world: PodmanWorld, real_container: Container, _real_secret: str,
                        tmp_path_factory: pytest.TempPathFactory) -> RealArchive:
    """Podman's export of the workload, uncompressed."""
    return _export(real_world, real_container, _real_secret,
                   tmp_path_factory.mktemp("real-none"), "none")


@pytest.fixture(scope="session")
def real_crio_archive(real_world: PodmanWorld, real_container: Container, _real_secret: str,
                      tmp_path_factory: pytest.TempPathFactory) -> RealArchive:
    """`runc checkpoint` of the workload, packed as CRI-O packs it."""
    out_dir = tmp_path_factory.mktemp("real-crio")
    ctr = real_container
    truth = read_truth(ctr.host_pid, _real_secret.encode(), WORKLOAD_FILES)
    view = engine_view(real_world, ctr.name)
    path = crio_archive(real_world, ctr.host_pid, view,
                        out_dir / f"checkpoint-{CRIO_POD.name}_{CRIO_POD.namespace}-"
                        f"{CRIO_POD.container}.tar", CRIO_POD)
    (out_dir / "truth-crio.json").write_text(truth.to_json())
    return RealArchive(path, truth, _real_secret, ctr.name, "none", view)


@pytest.fixture(scope="session")
def real_podman_archive_gzip(real_world: PodmanWorld, real_container: Container,
                             _real_secret: str,
                             tmp_path_factory: pytest.TempPathFactory) -> RealArchive:
    """Podman's export of the workload, gzip-compressed."""
    return _export(real_world, real_container, _real_secret,
                   tmp_path_factory.mktemp("real-gzip"), "gzip")


@pytest.fixture(scope="session")
def real_podman_archive_zstd(real_world: PodmanWorld, real_container: Container,
                             _real_secret: str,
                             tmp_path_factory: pytest.TempPathFactory) -> RealArchive:
    """Podman's export of the workload, zstd-compressed (Podman's default)."""
    return _export(real_world, real_container, _real_secret,
                   tmp_path_factory.mktemp("real-zstd"), "zstd")
