"""Rendered restore Pods meet the (simulated) CRI-O of a node agent on the real control
plane: every golden case restores.

For each golden source pod: run it on node-a, checkpoint each container the
case restores, build and push the images to the real registry, render the
restore Pod with `migrate manifest --from-pod`, create it on node-b and wait
until the kubelet has restored every container from its checkpoint image.
CRI-O's bind-mount check is the one that matters: removing a volume from a
rendered Pod must make the restore fail with CRI-O's message.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml
from kubernetes import client

from e2e.cluster.launcher import ControlPlane
from e2e.cluster.world import Cluster
from e2e.nodes import RegistryConfig
from tests.cluster import node_agents, wait_for
from tests.conftest import Result
from tests.registries import RegistryUnderTest
from tests.test_manifest import CASES, fixture_priority_class, source

Cli = Callable[..., Result]


@pytest.fixture(scope="module")
def cluster(real_cp: ControlPlane, tmp_path_factory: pytest.TempPathFactory,
            plain_registry: RegistryUnderTest) -> Iterator[Cluster]:
    with node_agents(real_cp, tmp_path_factory.mktemp("nodes"), start_latency=0.05,
                     stop_latency=0.05,
                     registries=RegistryConfig(insecure=(plain_registry.host,))) as world, \
            fixture_priority_class(world.kubeconfig):
        yield world


def _containers(case: str, pod: dict[str, Any]) -> list[str]:
    named = [image.split("=", 1)[0] for image in CASES[case] if "=" in image.split("/")[0]]
    return named or [pod["spec"]["containers"][0]["name"]]


def _run_source(v1: client.CoreV1Api, pod: dict[str, Any]) -> None:
    # ownerReferences name objects this cluster does not have: its garbage collector
    # would (rightly) remove the pod, so the source runs bare here.
    keep = ("name", "labels", "annotations")
    spec = copy.deepcopy(pod["spec"])
    spec["nodeName"] = "node-a"
    v1.create_namespaced_pod("default", {
        "metadata": {k: v for k, v in pod["metadata"].items() if k in keep}, "spec": spec})
    name = pod["metadata"]["name"]
    wait_for(lambda: v1.read_namespaced_pod(name, "default").status.phase == "Running",
             what=f"{name} Running")


def _checkpoint_images(cli: Cli, cluster: Cluster, registry: RegistryUnderTest, case: str,
                       pod: dict[str, Any]) -> list[str]:
    args = []
    for container in _containers(case, pod):
        r = cli("checkpoint", pod["metadata"]["name"], "-c", container, "--kubeconfig",
                cluster.kubeconfig, "-o", "json")
        assert r.code == 0, r.err
        archive = cluster.node_path("node-a", r.json()["archive"])
        r = cli("build", archive, "--image", f"{registry.host}/golden/{case}-{container}:v1",
                "--no-tls-verify", "-o", "json")
        assert r.code == 0, r.err
        args += ["--image", f"{container}={r.json()['reference']}"]
    return args


def _render(cli: Cli, cluster: Cluster, pod: dict[str, Any], args: list[str]) -> dict[str, Any]:
    r = cli("manifest", "--from-pod", pod["metadata"]["name"], *args, "--node", "node-b",
            "--kubeconfig", cluster.kubeconfig)
    assert r.code == 0, r.err
    rendered: dict[str, Any] = yaml.safe_load(r.out)
    return rendered


def _waiting(v1: client.CoreV1Api, name: str) -> Any:
    pod = v1.read_namespaced_pod(name, "default")
    for s in pod.status.container_statuses or []:
        if s.state.waiting and s.state.waiting.reason == "CreateContainerError":
            return s.state.waiting
    return None


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_golden_case_restores(cli: Cli, cluster: Cluster, v1: client.CoreV1Api,
                                    plain_registry: RegistryUnderTest, case: str) -> None:
    pod = source(case)
    _run_source(v1, pod)
    restore = _render(cli, cluster, pod, _checkpoint_images(cli, cluster, plain_registry, case, pod))
    created = v1.create_namespaced_pod("default", restore)
    name = created.metadata.name
    restored = wait_for(lambda: (p := v1.read_namespaced_pod(name, "default")).status.phase
                        == "Running" and p, what=f"{name} restored")
    for container in _containers(case, pod):
        annotation = f"sim.migrate.dev/restored.{container}"
        assert annotation in restored.metadata.annotations, (case, container)


def test_a_restore_pod_without_its_volume_is_refused(cli: Cli, cluster: Cluster,
                                                     v1: client.CoreV1Api,
                                                     plain_registry: RegistryUnderTest) -> None:
    pod = source("volumes")
    pod["metadata"]["name"] = "ledger-novolume"
    _run_source(v1, pod)
    restore = _render(cli, cluster, pod, _checkpoint_images(cli, cluster, plain_registry, "volumes",
                                                        pod))
    spec = restore["spec"]
    dropped = spec["volumes"].pop(0)["name"]
    mounts = [m for c in spec["containers"] for m in c.get("volumeMounts") or []
              if m["name"] == dropped]
    for c in spec["containers"]:
        c["volumeMounts"] = [m for m in c.get("volumeMounts") or [] if m["name"] != dropped]
    restore["metadata"]["name"] = "ledger-novolume-restored"
    v1.create_namespaced_pod("default", restore)
    waiting = wait_for(lambda: _waiting(v1, "ledger-novolume-restored"),
                       what="the restore to be refused")
    assert "expects following bind mounts defined" in waiting.message
    assert all(m["mountPath"] in waiting.message for m in mounts)
    assert v1.read_namespaced_pod("ledger-novolume-restored", "default").status.phase == \
        "Pending"
