"""`migrate pod` of a real container: runc on node agents of the real control plane,
CRIU's dump on node-a, CRIU's restore on node-b (e2e/nodes/realpods.py).

The counter (e2e/real/counter.py) prints `counter: N` every 0.2 s from a busybox
shell holding `token=<secret>` in its heap. What is checked is what an operator
would look at: the logs through the API server's node proxy (`kubectl logs`),
the memory of a checkpoint (`migrate memparse --search`), and the order in
which the pods change while `migrate pod` runs (a watch).

Needs root, runc, CRIU (tests/real.py's gate: MIGRATE_REQUIRE_REAL=1 fails
instead of skipping) and the control plane's binaries (tests/cluster.py's).
"""

from __future__ import annotations

import json
import secrets
import tarfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, watch

from e2e.cluster.launcher import ControlPlane
from e2e.cluster.world import Cluster
from e2e.nodes import RegistryConfig
from e2e.nodes.realpods import missing
from e2e.real.counter import counter_pod, counts, push_counter_image
from tests.cluster import Kubectl, node_agents, wait_for
from tests.conftest import Result
from tests.real import require
from tests.registries import RegistryUnderTest

pytestmark = [pytest.mark.real, pytest.mark.controlplane]

Cli = Callable[..., Result]
SECRET = f"REAL-SECRET-{secrets.token_hex(8)}"
TOKEN = f"token={SECRET}"


@pytest.fixture(scope="module")
def _runc_and_criu() -> None:
    require(missing())  # before the control plane starts, not after


@pytest.fixture(scope="module")
def cluster(_runc_and_criu: None, real_cp: ControlPlane,
            tmp_path_factory: pytest.TempPathFactory,
            plain_registry: RegistryUnderTest) -> Iterator[Cluster]:
    with node_agents(real_cp, tmp_path_factory.mktemp("nodes"), nodes=("node-a", "node-b"),
                     start_latency=0.05, stop_latency=0.05,
                     registries=RegistryConfig(insecure=(plain_registry.host,))) as world:
        yield world


@pytest.fixture(scope="module")
def image(plain_registry: RegistryUnderTest, tmp_path_factory: pytest.TempPathFactory) -> str:
    return push_counter_image(plain_registry.host, "real/counter", "1",
                              tmp_path_factory.mktemp("counter"))


@pytest.fixture(autouse=True)
def _node_root(cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIGRATE_NODE_ROOT", cluster.node_root)


def logged(kubectl: Kubectl, cluster: Cluster, pod: str) -> list[int]:
    """The counter's values in `kubectl logs POD` (kubelet containerLogs via the proxy)."""
    return counts(kubectl(cluster.kubeconfig, "logs", pod).stdout)


def start_counter(v1: client.CoreV1Api, kubectl: Kubectl, cluster: Cluster, image: str,
                  name: str) -> Any:
    v1.create_namespaced_pod("default", counter_pod(name, image, secret=SECRET,
                                                    node="node-a", interval=0.2))
    wait_for(lambda: v1.read_namespaced_pod(name, "default").status.phase == "Running",
             what=f"{name} Running")
    wait_for(lambda: len(logged(kubectl, cluster, name)) >= 3, what=f"{name} counting")
    return v1.read_namespaced_pod(name, "default")


def checkpoint(cli: Cli, cluster: Cluster, pod: str) -> Path:
    r = cli("checkpoint", pod, "--kubeconfig", cluster.kubeconfig, "-o", "json")
    assert r.code == 0, r.err
    return cluster.node_path(str(r.json()["node"]), str(r.json()["archive"]))


def token_in(cli: Cli, archive: Path) -> dict[str, Any]:
    r = cli("memparse", archive, "--search", TOKEN, "-o", "json")
    assert r.code == 0, r.err
    matches = json.loads(r.out)
    assert matches and {m["pid"] for m in matches} == {matches[0]["pid"]}, matches
    found: dict[str, Any] = matches[0]
    return found


def test_a_real_checkpoint_is_a_crio_archive_of_the_running_process(
        cli: Cli, cluster: Cluster, v1: client.CoreV1Api, cp_kubectl: Kubectl,
        image: str, tmp_path: Path) -> None:
    pod = start_counter(v1, cp_kubectl, cluster, image, "archived")
    archive = checkpoint(cli, cluster, "archived")
    assert archive.stat().st_mode & 0o777 == 0o600
    with tarfile.open(archive) as tf:
        names = set(tf.getnames())
        spec = json.load(tf.extractfile("spec.dump"))  # type: ignore[arg-type]
        config = json.load(tf.extractfile("config.dump"))  # type: ignore[arg-type]
        binds = json.load(tf.extractfile("bind.mounts"))  # type: ignore[arg-type]
    assert {"config.dump", "spec.dump", "bind.mounts", "rootfs-diff.tar", "deleted.files",
            "dump.log", "stats-dump", "checkpoint/inventory.img",
            "checkpoint/descriptors.json", "checkpoint/pstree.img"} <= names
    annotations = spec["annotations"]
    assert annotations["io.kubernetes.pod.uid"] == pod.metadata.uid
    assert annotations["io.kubernetes.cri-o.IP.0"] == pod.status.pod_ip
    assert json.loads(annotations["io.kubernetes.cri-o.Metadata"])["name"] == "counter"
    assert config["rootfsImageName"] == image and config["runtime"] == "runc"
    assert [b["destination"] for b in binds] == ["/data"]
    assert token_in(cli, archive)["command"] == "sh"
    r = cli("rootfs-diff", archive, "--extract", tmp_path / "rootfs")
    assert r.code == 0, r.err
    assert (tmp_path / "rootfs/home/counter/test-file").read_text() == \
        "counter state file of archived\n"
    # --leave-running: the process goes on counting after its dump.
    seen = logged(cp_kubectl, cluster, "archived")
    wait_for(lambda: logged(cp_kubectl, cluster, "archived")[-1] > seen[-1],
             what="counting after the checkpoint")


def _timeline(v1: client.CoreV1Api, source: str, events: list[tuple[str, str]]) -> None:
    """(pod, what) in the order the API server tells: `ready` when a pod's containers
    all run and are ready, `deleting` when its deletionTimestamp appears; ends once
    `source` is deleting."""
    seen: set[tuple[str, str]] = set()
    for event in watch.Watch().stream(v1.list_namespaced_pod, "default", timeout_seconds=90):
        pod = event["object"]
        statuses = pod.status.container_statuses or []
        for what, happened in (
                ("ready", bool(statuses) and all(s.ready and s.state.running
                                                 for s in statuses)),
                ("deleting", pod.metadata.deletion_timestamp is not None
                 or event["type"] == "DELETED")):
            if happened and (pod.metadata.name, what) not in seen:
                seen.add((pod.metadata.name, what))
                events.append((pod.metadata.name, what))
        if (source, "deleting") in seen:
            return


def test_migrate_pod_moves_a_real_process_that_keeps_counting(
        cli: Cli, cluster: Cluster, v1: client.CoreV1Api, cp_kubectl: Kubectl,
        plain_registry: RegistryUnderTest, image: str) -> None:
    start_counter(v1, cp_kubectl, cluster, image, "counters")
    before_token = token_in(cli, checkpoint(cli, cluster, "counters"))
    events: list[tuple[str, str]] = []
    watcher = threading.Thread(target=_timeline, args=(v1, "counters", events), daemon=True)
    watcher.start()
    before = logged(cp_kubectl, cluster, "counters")
    r = cli("pod", "counters", "--to", "node-b", "--kubeconfig", cluster.kubeconfig,
            "--registry", f"{plain_registry.host}/migrations", "--no-tls-verify",
            "--timeout", "60", "-o", "json")
    assert r.code == 0, r.err
    report = r.json()
    assert report["outcome"] == "succeeded"
    restored = report["destination_pod"]
    p = v1.read_namespaced_pod(restored, "default")
    assert (p.spec.node_name, p.status.phase) == ("node-b", "Running")
    # The restored process goes on from the checkpoint's count: never from 1, never
    # back before what the source had printed when the migration began.
    after = wait_for(lambda: (c := logged(cp_kubectl, cluster, restored)) and len(c) >= 3
                     and c, what="the restored pod counting")
    assert after[0] > before[-1] >= 3
    assert after == list(range(after[0], after[0] + len(after)))
    # The same process, the same memory: the secret where the source held it.
    after_token = token_in(cli, checkpoint(cli, cluster, restored))
    assert (after_token["pid"], after_token["command"]) == \
        (before_token["pid"], before_token["command"])
    # The source went only once the destination ran.
    watcher.join(timeout=30)
    assert ("counters", "deleting") in events, events
    assert events.index((restored, "ready")) < events.index(("counters", "deleting"))
    assert "counters" not in {p.metadata.name for p in v1.list_namespaced_pod("default").items}


def test_a_real_container_needs_its_image_from_a_loopback_registry(
        cluster: Cluster, v1: client.CoreV1Api) -> None:
    body = counter_pod("preloaded", "quay.io/adrianreber/counter:latest", secret=SECRET,
                       node="node-a")
    v1.create_namespaced_pod("default", body)

    def waiting() -> Any:
        statuses = v1.read_namespaced_pod("preloaded", "default").status.container_statuses
        return statuses and statuses[0].state.waiting

    state = wait_for(waiting, what="preloaded waiting")
    assert (state.reason, state.message) == (
        "CreateContainerError", "real containers need the layers of "
        "quay.io/adrianreber/counter:latest: it is not from a registry on 127.0.0.1")
    v1.delete_namespaced_pod("preloaded", "default", grace_period_seconds=0)
