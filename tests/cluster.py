"""pytest plugin: the real control plane (e2e/cluster), one per test session.

Loaded from tests/conftest.py (`pytest_plugins`). Fixtures:

    real_cp         session  e2e.cluster.launcher.ControlPlane, started on first use
    cp_kubectl      session  run(kubeconfig, *args, input=None, check=True): kubectl with a
                             private HOME and none of the caller's KUBE* variables
    cp_admin        session  an official-client ApiClient as kubernetes-admin
    cp_namespace    function a fresh namespace whose default ServiceAccount exists

and `node_agents(real_cp, directory, **Cluster options)`, a context manager:
node agents (e2e/cluster/world.py's Cluster) on the session's control plane,
for a module or a test. The end-to-end tests work in namespace `default`, as
an operator's first try would: node_agents() empties it before and after
(workloads, pods, Secrets, ConfigMaps, Events), so modules sharing the
control plane do not see each other's objects. Node hosts need root: without
it the tests skip (MIGRATE_REQUIRE_CLUSTER=1: fail).

Tests using them are marked `controlplane`. When the binaries are missing they
skip, saying what to run; with MIGRATE_REQUIRE_CLUSTER=1 (scripts/test sets it
as root, where setup builds them) they fail instead: in CI nothing may be
skipped silently.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config

from e2e.cluster import binaries, nodehost
from e2e.cluster.launcher import (
    UNSCHEDULABLE_TAINT,
    ControlPlane,
    control_plane,
    unschedulable_tainted,
)
from e2e.cluster.world import Cluster

__all__ = ["HOLD", "Kubectl", "api_client", "cordoned", "empty_namespace", "held_once_stopped",
           "node_agents", "require_cluster", "wait_for"]

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


@pytest.fixture(scope="module")
def api(cluster: Cluster) -> Iterator[client.ApiClient]:
    """An admin client of the test module's node agents (its own `cluster` fixture)."""
    with api_client(cluster.kubeconfig) as admin:
        yield admin


@pytest.fixture(scope="module")
def v1(api: client.ApiClient) -> client.CoreV1Api:
    """The core API of the test module's `cluster`."""
    return client.CoreV1Api(api)


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
                 request: pytest.FixtureRequest) -> Iterator[str]:
    name = f"t-{request.node.name[:40].lower().replace('_', '-')}-{secrets.token_hex(3)}"
    name = "".join(c for c in name if c.isalnum() or c == "-")
    core = client.CoreV1Api(cp_admin)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))

    def default_sa() -> bool:
        return any(sa.metadata.name == "default"
                   for sa in core.list_namespaced_service_account(name).items)

    wait_for(default_sa, what=f"the default ServiceAccount of {name}")
    yield name
    # Emptied before the namespace goes (which the namespace controller finishes in its
    # own time): a Deployment left pending here would otherwise be scheduled onto the
    # node agents a later test starts, and drained with that test's pods.
    empty_namespace(cp_admin, name)
    core.delete_namespace(name)


def empty_namespace(api: client.ApiClient, namespace: str) -> None:
    """Delete what tests make in `namespace` (its ServiceAccounts and kube-root-ca.crt
    stay) and wait until its pods are gone."""
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    batch, policy = client.BatchV1Api(api), client.PolicyV1Api(api)
    background = {"propagation_policy": "Background"}
    for delete in (apps.delete_collection_namespaced_deployment,
                   apps.delete_collection_namespaced_replica_set,
                   apps.delete_collection_namespaced_stateful_set,
                   apps.delete_collection_namespaced_daemon_set,
                   batch.delete_collection_namespaced_cron_job,
                   batch.delete_collection_namespaced_job):
        delete(namespace, **background)
    policy.delete_collection_namespaced_pod_disruption_budget(namespace)
    core.delete_collection_namespaced_secret(namespace)
    core.delete_collection_namespaced_config_map(
        namespace, field_selector="metadata.name!=kube-root-ca.crt")

    def no_pods() -> bool:
        # Again each round: a ReplicaSet not yet collected may make another.
        core.delete_collection_namespaced_pod(namespace, grace_period_seconds=0)
        return not core.list_namespaced_pod(namespace).items

    wait_for(no_pods, what=f"the pods of namespace {namespace} to be gone")
    core.delete_collection_namespaced_event(namespace)


#: A finalizer of the tests' own: a pod that has it stays after its kubelet let it go.
HOLD = "migrate.test/hold"


@contextlib.contextmanager
def held_once_stopped(v1: client.CoreV1Api, namespace: str, name: str,
                      hold: float) -> Iterator[list[float]]:
    """Give pod ``name`` the HOLD finalizer, and take it away ``hold`` seconds after its
    kubelet reports the pod stopped (phase Failed or Succeeded), in a thread; yields a
    list that gets the time.time() it was taken away. On exit it goes in any case."""
    released: list[float] = []
    v1.patch_namespaced_pod(name, namespace, {"metadata": {"finalizers": [HOLD]}})

    def release() -> None:
        with contextlib.suppress(client.ApiException):
            v1.patch_namespaced_pod(name, namespace, [
                {"op": "remove", "path": "/metadata/finalizers"}])

    def watch() -> None:
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline and not stop.is_set():
            try:
                phase = v1.read_namespaced_pod(name, namespace).status.phase
            except client.ApiException:  # gone: nothing holds it
                return
            if phase in ("Failed", "Succeeded"):
                time.sleep(hold)
                released.append(time.time())
                release()
                return
            time.sleep(0.05)
        release()  # never reported stopped: let it go, and `released` says so

    stop = threading.Event()
    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        yield released
    finally:
        stop.set()
        thread.join()
        release()


@contextlib.contextmanager
def cordoned(v1: client.CoreV1Api, nodes: list[str] | tuple[str, ...]) -> Iterator[None]:
    """`nodes` unschedulable for the block (the scheduler spreads pods: a test that wants
    them on one node cordons the others), then schedulable again. On the way out it waits
    for the node lifecycle controller to take away the taint it gave the cordoned nodes
    (node.kubernetes.io/unschedulable): until then the scheduler, and migrate's own
    placement, still refuse them (a drain planned in that window once evicted what it
    should have migrated)."""
    for node in nodes:
        v1.patch_node(node, {"spec": {"unschedulable": True}})
    try:
        yield
    finally:
        for node in nodes:
            v1.patch_node(node, {"spec": {"unschedulable": None}})
    wait_for(lambda: not any(unschedulable_tainted(json.loads(
        v1.read_node(node, _preload_content=False).data)) for node in nodes),
             what=f"the {UNSCHEDULABLE_TAINT} taint to leave {', '.join(nodes)}")


@contextlib.contextmanager
def node_agents(cp: ControlPlane, directory: Path, **options: Any) -> Iterator[Cluster]:
    """Node agents on `cp` (Cluster(cp, directory, **options)), namespace default
    emptied before and after."""
    require_cluster(nodehost.missing())
    admin = api_client(cp.admin_kubeconfig)
    with admin:
        empty_namespace(admin, "default")
        with Cluster(cp, directory, **options) as cluster:
            try:
                yield cluster
            finally:
                empty_namespace(admin, "default")
