"""`migrate checkpoint` against the cluster simulator over real HTTPS."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config

from e2e.sim import Simulator
from tests.conftest import Result

Cli = Callable[..., Result]


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Simulator]:
    with Simulator(tmp_path_factory.mktemp("sim") / "state", start_latency=0.05,
                   stop_latency=0.05) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def v1(sim: Simulator) -> Iterator[client.CoreV1Api]:
    cfg = client.Configuration()
    config.load_kube_config(config_file=str(sim.kubeconfig), client_configuration=cfg)
    with client.ApiClient(cfg) as api:
        yield client.CoreV1Api(api)


def running_pod(v1: client.CoreV1Api, name: str, containers: tuple[str, ...] = ("app",),
                node: str | None = "node-a", annotations: dict[str, str] | None = None
                ) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{"name": c, "image": "registry.example/app:1"}
                                           for c in containers]}
    if node:
        spec["nodeName"] = node
    v1.create_namespaced_pod("default", {"metadata": {"name": name,
                                                      "annotations": annotations or {}},
                                         "spec": spec})
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        pod = v1.read_namespaced_pod(name, "default")
        if pod.status.phase == "Running":
            return pod.to_dict()  # type: ignore[no-any-return]
        time.sleep(0.02)
    raise AssertionError(f"pod {name} never ran")


def test_unknown_pod(cli: Cli, sim: Simulator) -> None:
    r = cli("checkpoint", "ghost", "--kubeconfig", sim.kubeconfig)
    assert r.code == 4
    assert r.err == ('error: read pod default/ghost: pods "ghost" not found\n'
                     "hint: check the name and the namespace (-n)\n")


def test_several_containers_need_c(cli: Cli, sim: Simulator, v1: client.CoreV1Api) -> None:
    running_pod(v1, "duo", ("app", "sidecar"))
    r = cli("checkpoint", "duo", "--kubeconfig", sim.kubeconfig)
    assert r.code == 2
    assert r.err == ("error: pod default/duo has 2 containers; say which with -c\n"
                     "hint: its containers: app, sidecar\n")
    r = cli("checkpoint", "duo", "-c", "db", "--kubeconfig", sim.kubeconfig)
    assert (r.code, r.err.splitlines()[0]) == (4, "error: pod default/duo has no container 'db'")


def test_pod_not_running(cli: Cli, sim: Simulator, v1: client.CoreV1Api) -> None:
    sim_unschedulable = {"containers": [{"name": "app", "image": "x"}],
                         "nodeSelector": {"no-such": "node"}}
    v1.create_namespaced_pod("default", {"metadata": {"name": "pending"},
                                         "spec": sim_unschedulable})
    r = cli("checkpoint", "pending", "--kubeconfig", sim.kubeconfig)
    assert r.code == 6
    assert r.err == ("error: pod default/pending is Pending, not Running\n"
                     "hint: only a running container can be checkpointed\n")


def test_namespace_and_context_come_from_flags(cli: Cli, sim: Simulator) -> None:
    r = cli("checkpoint", "x", "-n", "kube-system", "--kubeconfig", sim.kubeconfig)
    assert r.err.splitlines()[0] == 'error: read pod kube-system/x: pods "x" not found'
    r = cli("checkpoint", "x", "--context", "nope", "--kubeconfig", sim.kubeconfig)
    assert r.code == 3
    assert r.err.startswith(f"error: cannot load {sim.kubeconfig}: ")


def test_kubelet_route_needs_its_credentials(cli: Cli, sim: Simulator,
                                             v1: client.CoreV1Api) -> None:
    running_pod(v1, "solo")
    r = cli("checkpoint", "solo", "--via", "kubelet", "--kubeconfig", sim.kubeconfig)
    assert (r.code, r.err.splitlines()[0]) == (
        2, "error: --via kubelet needs --kubelet-url, --cert and --key")


def test_missing_kubeconfig(cli: Cli, tmp_path: Path) -> None:
    r = cli("checkpoint", "x", "--kubeconfig", tmp_path / "none")
    assert r.code == 3
    assert r.err.startswith(f"error: cannot load {tmp_path / 'none'}: ")
