"""pytest plugin: real checkpoints of a real workload, made once per session.

Loaded from tests/conftest.py (`pytest_plugins`). Fixtures (session scope):

    real_world                  a private Podman (e2e/real/podman.py), or a skip saying
                                exactly what is missing (root, podman, runc, CRIU 4.1.1)
    real_container              the workload (e2e/real/workload.py) running in it
    real_podman_archive         RealArchive: `podman container checkpoint --export
                                --compress none` of it, with the /proc ground truth
    real_podman_archive_gzip    the same with --compress gzip
    real_podman_archive_zstd    the same with --compress zstd (Podman's default)
    real_crio_archive           the archive the real kubelet and CRI-O write: the same
                                workload as a pod on a real node (e2e/cluster/realnode.py,
                                on the session's control plane), checkpointed through the
                                kubelet API; .pod holds the pod's names as the API server
                                has them, .engine CRI-O's own record of the container
    real_tools                  e2e.real.tools.Tools (criu, crit, checkpointctl)

Podman's checkpoints are taken with --leave-running, so they are of the same,
idle container; the kubelet's leaves its container running too. The truth is
read again just before each one. With MIGRATE_REQUIRE_REAL=1 (scripts/test sets
it when run as root) a missing part fails the test instead of skipping it (the
real node's: MIGRATE_REQUIRE_CLUSTER=1): in CI, where setup installs everything,
nothing may be skipped silently.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from e2e.cluster import realnode
from e2e.cluster.launcher import ControlPlane
from e2e.real import tools as real_tools_mod
from e2e.real.podman import PodmanWorld
from e2e.real.truth import Truth, read_truth, root_diff
from e2e.real.workload import (
    WORKLOAD_FILES,
    Container,
    EngineView,
    build_workload_image,
    engine_view,
    export_checkpoint,
    push_workload_image,
    start_workload,
    wait_idle,
    workload_pod,
)
from tests.cluster import api_client, require_cluster, wait_for
from tests.registries import RegistryUnderTest

__all__ = ["Pod", "RealArchive", "criu_config", "kubelet_checkpoint", "pod_log", "require",
           "start_pod"]

CRIO_DEADLINE = 180.0  # the node's pulls, CRIU and a loaded 2-core machine


def require(reason: str | None) -> None:
    """Skip (or, with MIGRATE_REQUIRE_REAL=1, fail) when ``reason`` says something is missing."""
    if reason is None:
        return
    if os.environ.get("MIGRATE_REQUIRE_REAL") == "1":
        pytest.fail(f"{reason} (MIGRATE_REQUIRE_REAL=1: nothing may be skipped)")
    pytest.skip(reason)


@dataclass(frozen=True)
class Pod:
    """A pod's names, as the API server has them."""

    name: str
    namespace: str
    uid: str
    container: str


@dataclass(frozen=True)
class RealArchive:
    """A real checkpoint archive and what /proc showed just before it was taken."""

    path: Path
    truth: Truth
    secret: str
    container: str  # the container's name (Podman's; the pod's container for CRI-O)
    compress: str
    engine: EngineView  # what `podman inspect` and `podman diff` said, or CRI-O's record
    pod: Pod | None = None  # the pod the kubelet checkpointed (CRI-O's archive)


@pytest.fixture(scope="session")
def real_tools() -> real_tools_mod.Tools:
    """The cached real tools; skips when the engine parts are missing."""
    require(real_tools_mod.missing_engine())
    return real_tools_mod.tools()


@pytest.fixture(scope="session")
def real_world(real_tools: real_tools_mod.Tools) -> Iterator[PodmanWorld]:
    """A Podman private to this session."""
    with PodmanWorld(real_tools.criu_bin_dir) as world:
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


# --- the kubelet's checkpoint of the workload, on a real node ----------------------


@pytest.fixture(scope="session")
def real_crio_archive(real_tools: real_tools_mod.Tools, _real_secret: str,
                      request: pytest.FixtureRequest,
                      tmp_path_factory: pytest.TempPathFactory) -> RealArchive:
    """The kubelet's checkpoint of the workload running as a pod on a real node.

    The node is this fixture's own, stopped once the archive is written: a node
    registered for the rest of the session would take pods the node agents' tests
    schedule. Its root, the archive in its kubelet's checkpoint directory, stays.
    """
    require_cluster(realnode.missing())  # before the control plane is started for nothing
    cp: ControlPlane = request.getfixturevalue("real_cp")
    registry: RegistryUnderTest = request.getfixturevalue("plain_registry")
    out = tmp_path_factory.mktemp("real-crio")
    image = push_workload_image(registry.host, "forensics/workload", secrets.token_hex(4),
                                out / "rootfs", _real_secret)
    # CRIU refuses the workload's established TCP connection unless told to dump it.
    manifest = workload_pod("forensics", "evidence", image, node="node-forensics",
                            annotations=criu_config(out, "tcp-established"))
    with realnode.real_node(cp, out / "node", name="node-forensics",
                            registry=registry.host) as node, _namespace(cp, "evidence"):
        pod = start_pod(cp, manifest)
        (status,) = pod["status"]["containerStatuses"]
        container_id = status["containerID"].removeprefix("cri-o://")
        crio = node.crio_container(container_id)
        if not wait_idle(crio["pid"]):
            meta = pod["metadata"]
            pytest.fail(f"the workload did not get idle:\n"
                        f"{pod_log(cp, meta['namespace'], meta['name']) or '(no log)'}")
        truth = read_truth(crio["pid"], _real_secret.encode(), WORKLOAD_FILES)
        diff = root_diff(crio["pid"], out / "rootfs")
        path = kubelet_checkpoint(cp, node, pod["metadata"]["namespace"],
                                  pod["metadata"]["name"], status["name"])
    (out / "truth-crio.json").write_text(truth.to_json())
    (out / "crio-container.json").write_text(json.dumps(crio, indent=1))
    meta = pod["metadata"]
    names = Pod(meta["name"], meta["namespace"], meta["uid"], status["name"])
    return RealArchive(path, truth, _real_secret, status["name"], "none",
                       _crio_view(container_id, crio, diff), names)


@contextlib.contextmanager
def _namespace(cp: ControlPlane, name: str) -> Iterator[None]:
    """A namespace of the pod's own (so that the archive names one that is not `default`),
    deleted with whatever is left in it."""
    status, body = cp.api("POST", "/api/v1/namespaces",
                          {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    assert status == 201, body
    try:
        # The ServiceAccount admission refuses pods until the controller made `default`.
        wait_for(lambda: cp.api("GET", f"/api/v1/namespaces/{name}/serviceaccounts/default")[0]
                 == 200, CRIO_DEADLINE, f"ServiceAccount {name}/default")
        yield
    finally:
        cp.api("DELETE", f"/api/v1/namespaces/{name}/pods?gracePeriodSeconds=0")
        cp.api("DELETE", f"/api/v1/namespaces/{name}")


def criu_config(directory: Path, *options: str) -> dict[str, str]:
    """A CRIU configuration file of ``options`` in ``directory``, as the pod annotation that
    has runc hand it to CRIU (org.criu.config, which the real nodes' CRI-O lets through)."""
    path = directory / "criu.conf"
    path.write_text("".join(f"{option}\n" for option in options))
    path.chmod(0o644)
    return {"org.criu.config": str(path)}


def start_pod(cp: ControlPlane, manifest: dict[str, Any]) -> dict[str, Any]:
    """Create the pod and wait until its containers run; returns the pod."""
    meta = manifest["metadata"]
    url = f"/api/v1/namespaces/{meta['namespace']}/pods"
    status, body = cp.api("POST", url, manifest)
    assert status == 201, body

    def running() -> dict[str, Any] | None:
        status, pod = cp.api("GET", f"{url}/{meta['name']}")
        statuses = pod.get("status", {}).get("containerStatuses", []) if status == 200 else []
        return pod if statuses and all("running" in s["state"] for s in statuses) else None

    found: dict[str, Any] = wait_for(running, CRIO_DEADLINE, f"{meta['name']} Running")
    return found


def pod_log(cp: ControlPlane, namespace: str, name: str) -> str:
    """What the pod's container printed ("" when the API server has no log for it)."""
    status, text = cp.api("GET", f"/api/v1/namespaces/{namespace}/pods/{name}/log")
    return text if status == 200 and isinstance(text, str) else ""


def kubelet_checkpoint(cp: ControlPlane, node: realnode.RealNode, namespace: str, pod: str,
                       container: str) -> Path:
    """POST /api/v1/nodes/NODE/proxy/checkpoint/NS/POD/CONTAINER (the kubelet API through
    the API server's node proxy, as the seed article's curl does), with a timeout longer
    than cp.api's for CRIU's dump: the path of the archive the kubelet wrote."""
    with api_client(cp.admin_kubeconfig) as api:
        try:
            resp = client.CoreV1Api(api).connect_post_node_proxy_with_path(
                node.name, f"checkpoint/{namespace}/{pod}/{container}",
                _request_timeout=CRIO_DEADLINE, _preload_content=False)
        except client.ApiException as e:
            pytest.fail(f"{e.status} {e.body}\n{node.logs['kubelet'].read_text()[-3000:]}")
    (path,) = json.loads(resp.data)["items"]
    return Path(path)


def _crio_view(container_id: str, crio: dict[str, Any], diff: dict[str, str]) -> EngineView:
    """CRI-O's record of the container (`RealNode.crio_container`) as an EngineView: the
    image by name, its storage ID and the creation time from the annotations CRI-O keeps
    for it (its image_ref is a repository digest; its created_time runc's, a little
    later). CRI-O has no diff command: ``diff`` is the container's root against the
    image's (`root_diff`)."""
    notes = crio["crio_annotations"]
    return EngineView(container_id, crio["image"], notes["io.kubernetes.cri-o.ImageRef"],
                      notes["io.kubernetes.cri-o.Created"],
                      ", ".join(crio["ip_addresses"] or []), diff)
