"""pytest plugin: the real control plane (e2e/cluster), one per test session.

Loaded from tests/conftest.py (`pytest_plugins`). Fixtures:

    real_cp         session  e2e.cluster.launcher.ControlPlane, started on first use
    cp_kubectl      session  run(kubeconfig, *args, input=None, check=True): kubectl with a
                             private HOME and none of the caller's KUBE* variables
    cp_admin        session  an official-client ApiClient as kubernetes-admin
    cp_namespace    function a fresh namespace whose default ServiceAccount exists

Tests using them are marked `controlplane`. When the binaries are missing they
skip, saying what to run; with MIGRATE_REQUIRE_CLUSTER=1 (scripts/test sets it
as root, where setup builds them) they fail instead: in CI nothing may be
skipped silently.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config

from e2e.cluster import binaries
from e2e.cluster.launcher import ControlPlane, control_plane

__all__ = ["Kubectl", "api_client", "require_cluster", "wait_for"]

Kubectl = Callable[..., subprocess.CompletedProcess[str]]
DEADLINE = 60.0


def require_cluster(reason: str | None) -> None:
    """Skip (or, with MIGRATE_REQUIRE_CLUSTER=1, fail) when `reason` says what is missing."""
    if reason is None:
        return
    if os.environ.get("MIGRATE_REQUIRE_CLUSTER") == "1":
        pytest.fail(f"{reason} (MIGRATE_REQUIRE_CLUSTER=1: nothing may be skipped)")
    pytest.skip(reason)


def wait_for(predicate: Callable[[], Any], timeout: float = DEADLINE, what: str = "") -> Any:
    """Poll `predicate` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(0.1)


def api_client(kubeconfig: Path) -> client.ApiClient:
    """The official client, configured from `kubeconfig` as users configure it."""
    return config.new_client_from_config(config_file=str(kubeconfig))


@pytest.fixture(scope="session")
def real_cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    require_cluster(binaries.missing())
    with control_plane(tmp_path_factory.mktemp("control-plane") / "cp") as cp:
        yield cp


@pytest.fixture(scope="session")
def cp_kubectl(tmp_path_factory: pytest.TempPathFactory) -> Kubectl:
    kubectl = shutil.which("kubectl")
    require_cluster(None if kubectl else "kubectl is not installed")
    assert kubectl is not None
    home = tmp_path_factory.mktemp("kubectl-home")
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBE")}
    env["HOME"] = str(home)

    def run(kubeconfig: Path, *args: str, input: str | None = None, check: bool = True
            ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([kubectl, "--kubeconfig", str(kubeconfig), *args],
                                capture_output=True, text=True, env=env, input=input,
                                timeout=120, check=False)
        if check:
            assert result.returncode == 0, (args, result.stdout, result.stderr)
        return result

    return run


@pytest.fixture(scope="session")
def cp_admin(real_cp: ControlPlane) -> client.ApiClient:
    return api_client(real_cp.admin_kubeconfig)


@pytest.fixture
def cp_namespace(real_cp: ControlPlane, cp_admin: client.ApiClient,
                 request: pytest.FixtureRequest) -> str:
    name = f"t-{request.node.name[:40].lower().replace('_', '-')}-{secrets.token_hex(3)}"
    name = "".join(c for c in name if c.isalnum() or c == "-")
    core = client.CoreV1Api(cp_admin)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))

    def default_sa() -> bool:
        return any(sa.metadata.name == "default"
                   for sa in core.list_namespaced_service_account(name).items)

    wait_for(default_sa, what=f"the default ServiceAccount of {name}")
    return name
