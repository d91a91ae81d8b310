"""Issue 16's stretch: the seed article's checkpoint and restore with nothing simulated.

One node runs the real kubelet and real CRI-O (e2e/cluster/realnode.py) on the
real control plane. The counter (e2e/real/counter.py) runs there as a pod; a
POST to /api/v1/nodes/NODE/proxy/checkpoint/default/POD/CONTAINER through the
API server makes the kubelet ask CRI-O for a checkpoint; checkpointctl reads
the archive; `migrate build` pushes the checkpoint image to the loopback
registry; the Pod `migrate manifest --from-pod` renders runs on the same node,
and its process counts on from where the checkpoint caught it. `migrate
memparse` finds the counter's secret in the kubelet's archive and `rootfs-diff`
its file. `doctor --probe` passes there, and `migrate pod` moves a counter to a
second real node: the restored pod is ready before the source goes (a watch),
its log (`kubectl logs`, through the API server's node proxy) counts on, and a
checkpoint of it holds the secret in the same process; with `--build-on node` the
tool's own image, built from the Containerfile, does the build in a Job on the
source node and pushes from inside the pod. `migrate sandbox --run`
restores the kubelet's archive with real crictl into a CRI-O with no kubelet
(`realnode.crio_alone`), the seed article's restore outside Kubernetes.
The node agents (e2e/nodes), which stand in for nodes wherever faults or scale
are needed, are held to what the real nodes report: the same migration on both
must give the same kubelet Events, pod status and report, but for the fields
AGENTS_LEAVE_OUT names.

Skips when the stretch binaries are not built (scripts/setup builds them as root,
with scripts/setup-stretch); with MIGRATE_REQUIRE_CLUSTER=1 (scripts/test as root)
it fails instead: nothing may be skipped.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import ipaddress
import json
import os
import re
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, watch

from e2e.cluster import kubeproxy, nodehost, realnode
from e2e.cluster.launcher import SERVICE_CIDR, ControlPlane, unschedulable_tainted
from e2e.cluster.world import Cluster
from e2e.nodes import NodeConfig, RegistryConfig
from e2e.real import toolimage
from e2e.real.counter import counter_pod, counts, push_counter_image
from migrate.adapters.kubelet import SUPPORT_OFF_HINT
from migrate.pipeline.drain.plan import BARE_POD
from migrate.pipeline.journal import Journal
from tests.cluster import Kubectl, api_client, held_once_stopped, require_cluster, wait_for
from tests.conftest import REPO, Result, interrupt_at, journal_id_of
from tests.real import criu_config, kubelet_checkpoint, pod_log, require, start_pod
from tests.registries import RegistryUnderTest

pytestmark = [pytest.mark.controlplane, pytest.mark.real]

Cli = Callable[..., Result]
POD, CONTAINER, SECRET = "counters", "counter", "token-of-the-real-node"
TOKEN = f"token={SECRET}"  # what the counter's shell builds in its heap
DEADLINE = 180.0  # pulls, CRIU and a loaded 2-core machine


@pytest.fixture(scope="module")
def node_b(node: realnode.RealNode, real_cp: ControlPlane, plain_registry: RegistryUnderTest,
           pod_plain_registry: RegistryUnderTest, pod_plain_basic_registry: RegistryUnderTest,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[realnode.RealNode]:
    """A second real node, for `migrate pod` between two."""
    with realnode.real_node(real_cp, tmp_path_factory.mktemp("real-node-b"), name="node-b",
                            registry=plain_registry.host, insecure=(
                                pod_plain_registry.host, pod_plain_basic_registry.host)) as n:
        yield n


@pytest.fixture(scope="module")
def stretch_built() -> None:
    """Skips (fails with MIGRATE_REQUIRE_CLUSTER=1) without the binaries."""
    require_cluster(realnode.missing())


@pytest.fixture(scope="module")
def kubernetes_service(real_cp: ControlPlane, node: realnode.RealNode,
                       pods_host: nodehost.NodeHost,
                       tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """In-cluster clients on the real nodes reach the API server as the `kubernetes`
    Service: real kube-proxy, and a relay to it on `pods_host` (e2e/cluster/kubeproxy.py)."""
    with kubeproxy.api_for_pods(real_cp, pods_host.host_address), kubeproxy.kube_proxy(
            real_cp, tmp_path_factory.mktemp("kube-proxy"),
            binary=realnode.bin_dir() / "kube-proxy", node=node.name,
            service_ip=str(ipaddress.ip_network(SERVICE_CIDR)[1])):
        yield


@pytest.fixture(scope="module")
def node(stretch_built: None, real_cp: ControlPlane, plain_registry: RegistryUnderTest,
         pod_plain_registry: RegistryUnderTest, pod_plain_basic_registry: RegistryUnderTest,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[realnode.RealNode]:
    # stretch_built first: no control plane is started only to be skipped.
    with realnode.real_node(real_cp, tmp_path_factory.mktemp("real-node"),
                            registry=plain_registry.host, insecure=(
                                pod_plain_registry.host, pod_plain_basic_registry.host)) as n:
        yield n


def _running(cp: ControlPlane, name: str) -> bool:
    status, pod = cp.api("GET", f"/api/v1/namespaces/default/pods/{name}")
    statuses = pod.get("status", {}).get("containerStatuses", []) if status == 200 else []
    return bool(statuses) and all("running" in s["state"] for s in statuses)


def _log_after(cp: ControlPlane, name: str, since: dt.datetime, lines: int,
               container: str = CONTAINER) -> list[tuple[dt.datetime, str]] | None:
    """The pod's log as (time, line) once it has `lines` lines stamped after `since`."""
    status, text = cp.api("GET", f"/api/v1/namespaces/default/pods/{name}/log?timestamps=true"
                                 f"&container={container}")
    if status != 200 or not isinstance(text, str):
        return None
    log = []
    for entry in text.splitlines():
        stamp, _, line = entry.partition(" ")
        # RFC 3339 with nanoseconds; fromisoformat takes microseconds.
        log.append((dt.datetime.fromisoformat(stamp[:26] + "+00:00"), line))
    return log if sum(t > since for t, _ in log) >= lines else None


def _counts(cp: ControlPlane, name: str) -> list[int]:
    return counts(pod_log(cp, "default", name))


@pytest.fixture(scope="module")
def source(real_cp: ControlPlane, node: realnode.RealNode, plain_registry: RegistryUnderTest,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    image = push_counter_image(plain_registry.host, "stretch/counter", "1",
                               tmp_path_factory.mktemp("counter"))
    pod = counter_pod(POD, image, secret=SECRET, node=node.name)
    _start(real_cp, pod)
    _counting(real_cp, POD)
    yield pod
    real_cp.api("DELETE", f"/api/v1/namespaces/default/pods/{POD}?gracePeriodSeconds=0")


@pytest.fixture(scope="module")
def counter_image(source: dict[str, Any]) -> str:
    """The counter's image, in the registry the real nodes pull from."""
    return str(source["spec"]["containers"][0]["image"])


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    """The archive the kubelet wrote."""
    before: int
    """The last count the source had printed before the POST."""
    seconds: float
    """How long the POST took: the count went on for at most that long before CRIU froze it."""


@pytest.fixture(scope="module")
def checkpoint(real_cp: ControlPlane, node: realnode.RealNode,
               source: dict[str, Any]) -> Checkpoint:
    before = _counts(real_cp, POD)[-1]
    start = time.monotonic()
    path = kubelet_checkpoint(real_cp, node, "default", POD, CONTAINER)
    return Checkpoint(path, before, time.monotonic() - start)


def test_the_kubelet_writes_the_archive_into_its_checkpoint_directory(
        node: realnode.RealNode, checkpoint: Checkpoint) -> None:
    path = checkpoint.path
    assert path.parent == node.checkpoints
    assert path.name.startswith(f"checkpoint-{POD}_default-{CONTAINER}-")
    assert path.stat().st_size > 0


def test_checkpointctl_reads_the_archive(checkpoint: Checkpoint) -> None:
    from e2e.real import tools

    require(tools.missing_checkpointctl())
    r = subprocess.run([str(tools.tools().checkpointctl), "show", str(checkpoint.path)],
                       capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    assert CONTAINER in r.stdout and "CRI-O" in r.stdout


def _token_in(cli: Cli, archive: Path) -> dict[str, Any]:
    """Where memparse finds TOKEN in ``archive``'s memory: one process."""
    r = cli("memparse", archive, "--search", TOKEN, "-o", "json")
    assert r.code == 0, r.err
    matches = r.json()
    assert matches and {m["pid"] for m in matches} == {matches[0]["pid"]}, matches
    found: dict[str, Any] = matches[0]
    return found


def test_memparse_and_rootfs_diff_read_the_kubelets_archive(
        cli: Cli, checkpoint: Checkpoint, tmp_path: Path) -> None:
    assert _token_in(cli, checkpoint.path)["command"] == "sh"
    r = cli("rootfs-diff", checkpoint.path, "-o", "json")
    assert r.code == 0, r.err
    assert "home/counter/test-file" in [e["path"] for e in r.json()["rootfs_diff"]]
    # CRI-O adds etc/mtab -> /proc/mounts to a root without one (the counter's has
    # none): --extract writes it as a link inside DIR, and says so.
    dest = tmp_path / "rootfs"
    r = cli("rootfs-diff", checkpoint.path, "--extract", dest, "-o", "json")
    assert r.code == 0, r.err
    assert (dest / "home/counter/test-file").read_text() == f"counter state file of {POD}\n"
    assert r.json()["rewritten_links"] == [
        {"path": "etc/mtab", "target": "/proc/mounts", "written": "../proc/mounts"}]
    assert os.readlink(dest / "etc/mtab") == "../proc/mounts"
    assert Path(os.path.realpath(dest / "etc/mtab")) == dest / "proc/mounts"


def test_the_restored_pod_counts_on_from_the_checkpoint(
        cli: Cli, real_cp: ControlPlane, node: realnode.RealNode,
        plain_registry: RegistryUnderTest, checkpoint: Checkpoint) -> None:
    before = checkpoint.before
    r = cli("build", checkpoint.path, "--image", f"{plain_registry.host}/stretch/counter-ckpt:v1",
            "--no-tls-verify", "-o", "json")
    assert r.code == 0, r.err
    ref = r.json()["reference"]
    r = cli("manifest", "--from-pod", POD, "--image", ref, "--node", node.name,
            "--kubeconfig", real_cp.admin_kubeconfig, "-o", "yaml")
    assert r.code == 0, r.err
    restored = yaml.safe_load(r.out)
    name = restored["metadata"]["name"]
    created = dt.datetime.now(dt.UTC)
    status, body = real_cp.api("POST", "/api/v1/namespaces/default/pods", restored)
    assert status == 201, body
    try:
        wait_for(lambda: _running(real_cp, name), DEADLINE, f"{name} Running (restored)")
        log = wait_for(lambda: _log_after(real_cp, name, created, 3), DEADLINE,
                       f"{name} counting")
        after = counts("\n".join(line for t, line in log if t > created))
        # Restored, not started afresh (that would print 1 after `created`): the first
        # value follows the ones printed before the checkpoint (it counts once a second,
        # so by at most the POST's duration and one more) and goes on without a gap.
        # CRI-O copies the source's log into the restored container's, so the whole
        # log counts from 1 with neither a gap nor a repeat.
        assert 2 <= before < after[0] <= before + checkpoint.seconds + 2, (before, after)
        whole = counts("\n".join(line for _, line in log))
        assert whole == list(range(1, len(whole) + 1)), whole
    finally:
        real_cp.api("DELETE", f"/api/v1/namespaces/default/pods/{name}?gracePeriodSeconds=0")


def test_doctor_probe_passes_on_the_real_node(
        cli: Cli, real_cp: ControlPlane, node: realnode.RealNode,
        plain_registry: RegistryUnderTest, source: dict[str, Any],
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The kubelet's checkpoint directory is on this machine, at the path it reports.
    monkeypatch.setenv("MIGRATE_NODE_ROOT", "/")
    r = cli("doctor", "--registry", f"{plain_registry.host}/probe", "--no-tls-verify",
            "--probe", node.name, "--probe-source", node.name,
            "--probe-image", source["spec"]["containers"][0]["image"], "--node", node.name,
            "--kubeconfig", real_cp.admin_kubeconfig, "-o", "json")
    assert r.code == 0, (r.out, r.err)
    (probe,) = r.json()["probes"]
    assert (probe["node"], probe["status"], probe["leftovers"]) == (node.name, "PASS", []), probe
    # The real kubelet's /configz, with its defaults: one pull at a time.
    rows = {c["check"]: c for c in r.json()["checks"]}
    assert rows[f"node {node.name}: image pulls"]["detail"].startswith("one at a time"), rows


def _probe(cli: Cli, cp: ControlPlane, registry: RegistryUnderTest, source: str,
           destination: str, image: str) -> dict[str, Any]:
    r = cli("doctor", "--registry", f"{registry.host}/probe", "--no-tls-verify",
            "--probe", destination, "--probe-source", source, "--probe-image", image,
            "--kubeconfig", cp.admin_kubeconfig, "-o", "json")
    (probe,) = r.json()["probes"]
    assert r.code == (0 if probe["status"] == "PASS" else 9), (r.out, r.err)
    assert probe["leftovers"] == [], probe
    status, left = cp.api("GET", "/api/v1/namespaces/default/pods?labelSelector=migrate.dev/probe")
    assert status == 200 and [p for p in left["items"]
                              if not p["metadata"].get("deletionTimestamp")] == []
    found: dict[str, Any] = probe
    return found


def test_doctor_probe_pulls_its_image_on_a_destination_without_it(
        cli: Cli, real_cp: ControlPlane, node: realnode.RealNode, node_b: realnode.RealNode,
        plain_registry: RegistryUnderTest, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # As `migrate pod` does: CRI-O restores onto the probe pod's image and pulls nothing,
    # so without the pre-pull the restore on node-b fails with `image not known`.
    image = push_counter_image(plain_registry.host, "stretch/probe-unpulled", "1", tmp_path,
                               env=("PROBE=1",))
    monkeypatch.setenv("MIGRATE_NODE_ROOT", "/")
    probe = _probe(cli, real_cp, plain_registry, node.name, node_b.name, image)
    assert (probe["node"], probe["status"]) == (node_b.name, "PASS"), json.dumps(probe)


def test_doctor_probe_fails_at_once_on_an_image_the_node_cannot_pull(
        cli: Cli, real_cp: ControlPlane, node: realnode.RealNode, node_b: realnode.RealNode,
        plain_registry: RegistryUnderTest, monkeypatch: pytest.MonkeyPatch) -> None:
    # Nothing listens on port 1: the kubelet reports RegistryUnavailable (CRI-O's word for
    # it), then ImagePullBackOff, for ever; the probe fails on the first, not at
    # --timeout's end (then its words would be the watch's, not the kubelet's).
    monkeypatch.setenv("MIGRATE_NODE_ROOT", "/")
    image = "127.0.0.1:1/nothing/here:1"
    probe = _probe(cli, real_cp, plain_registry, node.name, node_b.name, image)
    assert (probe["status"], probe["stage"]) == ("FAIL", "start"), probe
    assert probe["message"].startswith(
        f"the probe pod did not start on {node.name}: RegistryUnavailable: image pull failed "
        f"for {image} because the registry is unavailable: "), probe
    assert "connection refused" in probe["message"] and "\n" not in probe["message"], probe
    assert probe["hint"] == f"give an image {node.name} holds or can pull with --probe-image"


def test_the_pre_pull_refuses_an_image_the_node_cannot_pull(
        real_cp: ControlPlane, node_b: realnode.RealNode) -> None:
    # The kubelet's first word for an unreachable registry is RegistryUnavailable, not
    # ErrImagePull: the pre-pull took it for "past the pull" and went on to the restore.
    from migrate.adapters import kube
    from migrate.errors import Transient
    from migrate.pipeline import prepull
    from migrate.pipeline.refusals import PullRefused
    from migrate.settings import KubeSettings

    image = "127.0.0.1:1/nothing/here:1"
    cluster = kube.connect(KubeSettings(kubeconfig=real_cp.admin_kubeconfig))
    source = {"metadata": {"name": "unreachable", "namespace": "default"},
              "spec": {"containers": [{"name": "c", "image": image}]}}
    manifest = prepull.pod_manifest(source, "c", image, node_b.name, "test-run", [])
    made: list[dict[str, Any]] = []
    try:
        with pytest.raises(PullRefused) as e:
            prepull.pull(cluster, manifest, image, DEADLINE, made.append, made.remove)
    finally:
        for pod in made:
            kube.delete_pod(cluster, "default", pod["metadata"]["name"], grace_seconds=0)
    assert e.value.message.startswith(
        f"{node_b.name} cannot pull {image}, the image the restore runs on: image pull failed "
        f"for {image} because the registry is unavailable: "), e.value.message
    # No lasting cause: the run stops (before any checkpoint), a drain tries again later.
    assert isinstance(e.value, Transient)


def _start(cp: ControlPlane, pod: dict[str, Any]) -> str:
    """Create ``pod`` and wait until it runs; its name."""
    return str(start_pod(cp, pod)["metadata"]["name"])


def _delete(cp: ControlPlane, name: str) -> None:
    cp.api("DELETE", f"/api/v1/namespaces/default/pods/{name}?gracePeriodSeconds=0")


@contextlib.contextmanager
def _started(cp: ControlPlane, *pods: dict[str, Any]) -> Iterator[list[str]]:
    """Start ``pods`` (each running before the next); their names. Deleted afterwards."""
    names: list[str] = []
    try:
        for pod in pods:
            names.append(_start(cp, pod))
        yield names
    finally:
        for name in names:
            _delete(cp, name)


@contextlib.contextmanager
def _deleted_after(cp: ControlPlane, name: str) -> Iterator[str]:
    """``name``, a pod deleted when the block ends."""
    try:
        yield name
    finally:
        _delete(cp, name)


def _counting(cp: ControlPlane, name: str, lines: int = 2) -> list[int]:
    """The pod's counts once it has printed ``lines`` of them."""
    found: list[int] = wait_for(lambda: len(c := _counts(cp, name)) >= lines and c, DEADLINE,
                                f"{name} counting")
    return found


def _migrate(cli: Cli, cp: ControlPlane, registry: RegistryUnderTest, pod: str,
             to: str, *extra: str) -> Result:
    # The counter's /data emptyDir holds nothing, and the restored pod gets it empty.
    return cli("pod", pod, "--to", to, "--registry", f"{registry.host}/moved",
               "--no-tls-verify", "--kubeconfig", cp.admin_kubeconfig, "-o", "json",
               "--delete-emptydir-data", *extra)


@contextlib.contextmanager
def _moved_counting(cli: Cli, cp: ControlPlane, registry: RegistryUnderTest, name: str,
                    to: str, *extra: str) -> Iterator[dict[str, Any]]:
    """Migrate the counter ``name`` to ``to`` (``extra``: more options); it counts on there
    from where it was. Yields the report; the restored pod is deleted afterwards."""
    _counting(cp, name)
    before = _counts(cp, name)[-1]
    started = dt.datetime.now(dt.UTC)
    r = _migrate(cli, cp, registry, name, to, *extra)
    assert r.code == 0, r.err
    report: dict[str, Any] = r.json()
    assert report["outcome"] == "succeeded"
    moved = report["destination_pod"]
    try:
        status, pod = cp.api("GET", f"/api/v1/namespaces/default/pods/{moved}")
        assert status == 200 and pod["spec"]["nodeName"] == to
        assert cp.api("GET", f"/api/v1/namespaces/default/pods/{name}")[0] == 404
        log = wait_for(lambda: _log_after(cp, moved, started, 2), DEADLINE,
                       f"{moved} counting on {to}")
        after = counts("\n".join(line for t, line in log if t > started))
        assert before < after[0], (before, after)
        whole = counts("\n".join(line for _, line in log))
        assert whole == list(range(1, len(whole) + 1)), whole
        yield report
    finally:
        _delete(cp, moved)


def test_keep_source_leaves_the_counter_running_beside_its_restored_copy(
        cli: Cli, real_cp: ControlPlane, node: realnode.RealNode, node_b: realnode.RealNode,
        plain_registry: RegistryUnderTest, counter_image: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Nothing is deleted, so its emptyDir needs no word: both count on, each from the
    # checkpoint's value, and the source is released.
    monkeypatch.setenv("MIGRATE_NODE_ROOT", "/")
    with _started(real_cp, counter_pod("kept", counter_image, secret=SECRET,
                                       node=node.name)) as [name]:
        _counting(real_cp, name)
        r = cli("pod", name, "--to", node_b.name, "--registry", f"{plain_registry.host}/moved",
                "--no-tls-verify", "--kubeconfig", real_cp.admin_kubeconfig, "-o", "json",
                "--keep-source")
        assert r.code == 0, r.err
        report = r.json()
        assert (report["outcome"], report["plan"]["switch"]) == ("succeeded", "keep")
        with _deleted_after(real_cp, report["destination_pod"]) as copy:
            at_checkpoint = _counts(real_cp, copy)
            status, kept = real_cp.api("GET", f"/api/v1/namespaces/default/pods/{name}")
            assert status == 200 and kept["spec"]["nodeName"] == node.name
            assert "migrate.dev/claimed-by" not in (kept["metadata"].get("annotations") or {})
            source_now = _counts(real_cp, name)[-1]
            wait_for(lambda: _counts(real_cp, name)[-1] > source_now + 1
                     and _counts(real_cp, copy)[-1] > at_checkpoint[-1] + 1, DEADLINE,
                     "both counters counting on")
            assert _running(real_cp, name) and _running(real_cp, copy)


def test_migrate_pod_pulls_the_base_image_on_a_node_without_it(
        cli: Cli, real_cp: ControlPlane, node: realnode.RealNode, node_b: realnode.RealNode,
        plain_registry: RegistryUnderTest, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # CRI-O v1.36.3 restores onto the image config.dump names by its storage ID
    # (rootfsImageRef) and pulls nothing (server/container_restore.go): on a node
    # that never ran it the restore fails with `image not known`. An image of its
    # own, never pulled on node-b: migrate pulls it there first, and the counter
    # counts on.
    image = push_counter_image(plain_registry.host, "stretch/unpulled", "1", tmp_path,
                               env=("UNPULLED=1",))
    monkeypatch.setenv("MIGRATE_NODE_ROOT", "/")
    with _started(real_cp, counter_pod("unpulled", image, secret=SECRET, node=node.name)
                  ) as [name], _moved_counting(cli, real_cp, plain_registry, name,
                                               node_b.name) as report:
        pass
    [(pulled, seconds)] = report["base_images"].items()
    assert pulled.startswith(image.rsplit(":", 1)[0] + "@sha256:") and seconds > 0
    assert [a["node"] for a in report["actions"] if a["action"] == "base image pulled"] == \
        [node_b.name]
    status, left = real_cp.api("GET", "/api/v1/namespaces/default/pods")
    assert status == 200 and not [p for p in left["items"]
                                  if "-prepull-" in p["metadata"]["name"]]


@pytest.fixture(scope="module")
def tool_image(pod_plain_registry: RegistryUnderTest) -> str:
    """The tool's own image, built from this checkout's Containerfile, where nodes pull."""
    require_cluster(toolimage.missing())
    return toolimage.build_tool_image(REPO, f"{pod_plain_registry.host}/migrate/tool:test")


def test_build_on_node_runs_the_tools_own_image_in_a_job_on_the_source_node(
        cli: Cli, real_cp: ControlPlane, node: realnode.RealNode, node_b: realnode.RealNode,
        pod_plain_registry: RegistryUnderTest, tool_image: str, counter_image: str) -> None:
    # No MIGRATE_NODE_ROOT: the kubelet's archive cannot be read here, so the build runs
    # on node-a in a Job, in the image the Containerfile makes (a read-only root, as the
    # Job asks), and pushes from inside a pod. The digest comes back through the real
    # kubelet's termination message.
    with _started(real_cp, counter_pod("built", counter_image, secret=SECRET,
                                       node=node.name)) as [name], \
            _moved_counting(cli, real_cp, pod_plain_registry, name, node_b.name, "--build-on",
                            "node", "--tool-image", tool_image) as report:
        image = report["images"][CONTAINER]
    assert image["built_on"].startswith(f"job migrate-build-{name}-")
    # CRIU's times come back with the digest: the Job read them from the archive.
    assert image["freezing_time_us"] > 0 and image["frozen_time_us"] > 0, image
    repository, _, _ = image["reference"].removeprefix(f"{pod_plain_registry.host}/").partition(":")
    answer = pod_plain_registry.http().request(
        "HEAD", f"{pod_plain_registry.url}/v2/{repository}/manifests/{image['digest']}",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
    assert answer.status == 200
    status, jobs = real_cp.api("GET", "/apis/batch/v1/namespaces/default/jobs")
    assert status == 200 and not [j["metadata"]["name"] for j in jobs["items"]
                                  if not j["metadata"].get("deletionTimestamp")]


def test_a_registry_asking_for_credentials_serves_the_build_job_and_the_restored_pod(
        cli: Cli, real_cp: ControlPlane, node: realnode.RealNode, node_b: realnode.RealNode,
        pod_plain_basic_registry: RegistryUnderTest, tool_image: str, counter_image: str,
        tmp_path: Path) -> None:
    # --creds, and nothing else: the build Job pushes with a temporary Secret the real
    # kubelet mounts, the restored pod pulls with one in its imagePullSecrets (the real
    # kubelet hands it to CRI-O). Both go at clean-up; the password is in no file of
    # migrate's and in no report.
    auth = pod_plain_basic_registry
    assert auth.password is not None and auth.creds is not None
    made: list[str] = []
    with _started(real_cp, counter_pod("private", counter_image, secret=SECRET,
                                       node=node.name)) as [name], \
            _moved_counting(cli, real_cp, auth, name, node_b.name, "--build-on", "node",
                            "--tool-image", tool_image, "--creds", auth.creds) as report:
        _, restored = real_cp.api(
            "GET", f"/api/v1/namespaces/default/pods/{report['destination_pod']}")
        made = [s["name"] for s in restored["spec"].get("imagePullSecrets", [])]
        assert [s.split("-")[:2] for s in made] == [["migrate", "registry"]], made
    assert report["images"][CONTAINER]["built_on"].startswith(f"job migrate-build-{name}-")
    assert auth.password not in json.dumps(report)
    _, left = real_cp.api("GET", "/api/v1/namespaces/default/secrets")
    assert not [s["metadata"]["name"] for s in left["items"]
                if s["metadata"]["name"].startswith("migrate-registry-")]
    state = Path(os.environ["MIGRATE_STATE_DIR"])
    assert not [f for f in state.rglob("*") if f.is_file()
                and auth.password.encode() in f.read_bytes()]


def _timeline(cp: ControlPlane, source: str, events: list[tuple[str, str]]) -> None:
    """(pod, what) in the order the API server tells: `ready` when a pod's containers
    all run and are ready, `deleting` when its deletionTimestamp appears; ends once
    `source` is deleting."""
    seen: set[tuple[str, str]] = set()
    with api_client(cp.admin_kubeconfig) as api:
        for event in watch.Watch().stream(client.CoreV1Api(api).list_namespaced_pod,
                                          "default", timeout_seconds=int(DEADLINE)):
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


def _checkpoint_of(cli: Cli, cp: ControlPlane, pod: str) -> Path:
    """`migrate checkpoint POD`: the kubelet's archive (MIGRATE_NODE_ROOT=/ reads it)."""
    r = cli("checkpoint", pod, "--kubeconfig", cp.admin_kubeconfig, "-o", "json")
    assert r.code == 0, r.err
    return Path(r.json()["archive"])


def test_migrate_pod_moves_the_counter_between_real_nodes(
        cli: Cli, real_cp: ControlPlane, node: realnode.RealNode, node_b: realnode.RealNode,
        plain_registry: RegistryUnderTest, source: dict[str, Any], cp_kubectl: Kubectl,
        monkeypatch: pytest.MonkeyPatch) -> None:
    image = source["spec"]["containers"][0]["image"]
    monkeypatch.setenv("MIGRATE_NODE_ROOT", "/")
    name = _start(real_cp, counter_pod("movers", image, secret=SECRET, node=node.name))
    # Its emptyDir goes with the source: without the word for it, nothing moves.
    r = cli("pod", name, "--to", node_b.name, "--registry", f"{plain_registry.host}/moved",
            "--no-tls-verify", "--kubeconfig", real_cp.admin_kubeconfig)
    assert (r.code, r.err.splitlines()[0]) == (2, (
        f"error: pod default/{name} has emptyDir volume(s) data: a checkpoint does not hold "
        "their files, and they are deleted with the source pod"))
    before_token = _token_in(cli, _checkpoint_of(cli, real_cp, name))
    events: list[tuple[str, str]] = []
    watcher = threading.Thread(target=_timeline, args=(real_cp, name, events), daemon=True)
    watcher.start()
    with _moved_counting(cli, real_cp, plain_registry, name, node_b.name) as report:
        restored = report["destination_pod"]
        # kubectl, unchanged, reads the log through the API server and the kubelet.
        logged = counts(cp_kubectl(real_cp.admin_kubeconfig, "logs", restored).stdout)
        assert logged == list(range(1, len(logged) + 1)) and len(logged) >= 3, logged
        # The same process, the same memory: the secret where the source held it.
        after_token = _token_in(cli, _checkpoint_of(cli, real_cp, restored))
        assert (after_token["pid"], after_token["command"]) == \
            (before_token["pid"], before_token["command"])
    # The source went only once the destination ran.
    watcher.join(timeout=DEADLINE)
    assert (name, "deleting") in events, events
    assert events.index((restored, "ready")) < events.index((name, "deleting")), events



def _tcp_counter(cp: ControlPlane, registry: RegistryUnderTest, node: str, name: str,
                 workdir: Path, annotations: dict[str, str]) -> str:
    """The counter holding an established TCP connection (TCP_PORT), running on ``node``."""
    image = push_counter_image(registry.host, f"stretch/{name}", "1", workdir,
                               env=("TCP_PORT=7000",))
    pod = counter_pod(name, image, secret="TCP-SECRET", node=node)
    pod["metadata"]["annotations"] = annotations
    _start(cp, pod)
    wait_for(lambda: "tcp: connected on 7000" in pod_log(cp, "default", name), DEADLINE,
             f"{name}'s TCP connection")
    return name


def test_criu_refusing_a_tcp_connection_is_final_with_its_log_and_the_setting(
        cli: Cli, real_cp: ControlPlane, node: realnode.RealNode,
        plain_registry: RegistryUnderTest, tmp_path: Path) -> None:
    # CRI-O runs `runc checkpoint` with neither --tcp-established nor --tcp-close, and
    # without a CRIU configuration saying otherwise CRIU refuses the connection.
    name = _tcp_counter(real_cp, plain_registry, node.name, "tcp-held", tmp_path, {})
    with _deleted_after(real_cp, name):
        r = cli("checkpoint", name, "--kubeconfig", real_cp.admin_kubeconfig)
    assert r.code == 6, (r.out, r.err)
    first, hint = r.err.splitlines()
    assert first.startswith(f"error: checkpoint default/{name}/counter on {node.name}: CRIU "
                            "could not dump it (type NOTIFY errno 0); its log on the node: /")
    log = Path(first.rsplit("its log on the node: ", 1)[1])
    assert log.name == "dump.log"
    # The log is on this machine (the node's storage): it says what the hint says.
    assert "Connected TCP socket, consider using --tcp-established option" in log.read_text()
    assert hint.startswith("hint: CRIU's log on the node says why") and "tcp-close" in hint


def test_with_tcp_close_the_counter_with_a_tcp_connection_moves_and_counts_on(
        cli: Cli, real_cp: ControlPlane, node: realnode.RealNode, node_b: realnode.RealNode,
        plain_registry: RegistryUnderTest, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The hint's setting, in the file runc hands CRIU: here the pod's org.criu.config
    # annotation names it (the real nodes allow it) rather than /etc/criu/runc.conf, which
    # is this machine's. runc passes it on restore too.
    name = _tcp_counter(real_cp, plain_registry, node.name, "tcp-closed", tmp_path / "image",
                        criu_config(tmp_path, "tcp-close"))
    monkeypatch.setenv("MIGRATE_NODE_ROOT", "/")  # the kubelets' archives are on this machine
    with _moved_counting(cli, real_cp, plain_registry, name, node_b.name) as report:
        assert report["destination_pod"]


def _restore_refused(cli: Cli, cp: ControlPlane, registry: RegistryUnderTest, name: str,
                     to: str, container: str) -> tuple[str, str]:
    """Migrate ``name``, whose restore CRIU refuses: rolled back, the source running on
    untouched. The error's first line and the hint."""
    r = _migrate(cli, cp, registry, name, to)
    assert r.code == 6, (r.out, r.err)
    assert r.json()["outcome"] == "rolled-back"
    first, hint = r.err.splitlines()[:2]
    assert first.startswith(f"error: verify: the restore of {container} on {to} failed: CRIU "
                            "could not restore it (type NOTIFY errno 0)"), first
    assert _running(cp, name)
    return first, hint


def test_a_changed_image_file_held_open_fails_the_restore_with_criu_s_log(
        cli: Cli, real_cp: ControlPlane, node: realnode.RealNode, node_b: realnode.RealNode,
        plain_registry: RegistryUnderTest, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The forensic workload appends to /etc/data.txt, a file of its image, and keeps it
    # open. CRI-O puts a changed file into rootfs-diff.tar only where the node has a file
    # at that path (go.podman.io/common crutils.CRCreateRootFsDiffTar stats the host's
    # path), so the restore meets the image's shorter file and CRIU refuses it.
    from e2e.real.workload import push_workload_image, workload_pod

    image = push_workload_image(plain_registry.host, "stretch/changed", "1", tmp_path / "root",
                                "CHANGED-SECRET")
    name = _start(real_cp, workload_pod("changed", "default", image, node=node.name,
                                        # its TCP connection is not the point
                                        annotations=criu_config(tmp_path, "tcp-close")))
    time.sleep(2)  # the workload gets idle
    monkeypatch.setenv("MIGRATE_NODE_ROOT", "/")  # the kubelets' archives are on this machine
    with _deleted_after(real_cp, name):
        first, hint = _restore_refused(cli, real_cp, plain_registry, name, node_b.name,
                                       "workload")
    assert first.endswith("/restore.log") and f"; its log on {node_b.name}: /" in first
    assert "bad size" in hint


def test_a_file_held_open_on_an_emptydir_fails_the_restore_and_names_the_volume(
        cli: Cli, real_cp: ControlPlane, node: realnode.RealNode, node_b: realnode.RealNode,
        plain_registry: RegistryUnderTest, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The counter appends to /data/counter.log and holds it open: the restored pod's
    # emptyDir is a new, empty one, and CRIU cannot open the file again there.
    image = push_counter_image(plain_registry.host, "stretch/logged", "1", tmp_path,
                               env=("DATA_LOG=/data/counter.log",))
    name = _start(real_cp, counter_pod("logged", image, secret=SECRET, node=node.name))
    monkeypatch.setenv("MIGRATE_NODE_ROOT", "/")  # the kubelets' archives are on this machine
    with _deleted_after(real_cp, name):
        _, hint = _restore_refused(cli, real_cp, plain_registry, name, node_b.name, "counter")
    # CRIU's log says `Can't open file data/counter.log on restore: No such file or
    # directory`: the hint names the volume first.
    assert hint.startswith(f"hint: the emptyDir volume(s) data started empty on "
                           f"{node_b.name}: a file the process held open there"), hint


def _empty_dir(node: realnode.RealNode, uid: str, volume: str) -> Path:
    """Where a pod's emptyDir lives on the node (the kubelet's root dir is on this machine)."""
    return node.checkpoints.parent / "pods" / uid / "volumes" / "kubernetes.io~empty-dir" / volume


def _cordon(cp: ControlPlane, node: str, unschedulable: bool) -> None:
    status, body = cp.api("PATCH", f"/api/v1/nodes/{node}",
                          {"spec": {"unschedulable": unschedulable}},
                          content_type="application/strategic-merge-patch+json")
    assert status == 200, body
    if not unschedulable:  # as tests.cluster.cordoned: the controller's taint goes later
        wait_for(lambda: not unschedulable_tainted(cp.api("GET", f"/api/v1/nodes/{node}")[1]),
                 DEADLINE, f"the unschedulable taint to leave {node}")


def _pods(cp: ControlPlane, selector: str) -> list[dict[str, Any]]:
    status, found = cp.api("GET", f"/api/v1/namespaces/default/pods?labelSelector={selector}")
    assert status == 200, found
    return list(found["items"])


def test_a_drain_hands_a_deployments_counters_to_the_replicaset_on_node_b(
        cli: Cli, real_cp: ControlPlane, node: realnode.RealNode, node_b: realnode.RealNode,
        plain_registry: RegistryUnderTest, counter_image: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The real ReplicaSet, disruption and scheduler controllers with real kubelets: two
    # counters of a Deployment, a budget allowing one disruption at a time. The drain
    # moves both to node-b; the ReplicaSet takes the restored pods as its own and starts
    # no fresh one, and each counts on from where its source was.
    image = counter_image
    template = counter_pod("drained", image, secret=SECRET, node=node.name)
    del template["spec"]["nodeName"]
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment",
                  "metadata": {"name": "drained", "namespace": "default"},
                  "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "drained"}},
                           "template": {"metadata": {"labels": {"app": "drained"}},
                                        "spec": template["spec"]}}}
    budget = {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
              "metadata": {"name": "drained", "namespace": "default"},
              "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "drained"}}}}
    monkeypatch.setenv("MIGRATE_NODE_ROOT", "/")  # the kubelets' archives are on this machine
    _cordon(real_cp, node_b.name, True)  # the scheduler puts both on node-a
    try:
        for path, body in (("/apis/apps/v1/namespaces/default/deployments", deployment),
                           ("/apis/policy/v1/namespaces/default/poddisruptionbudgets", budget)):
            status, made = real_cp.api("POST", path, body)
            assert status == 201, made
        sources = wait_for(lambda: len(p := [x["metadata"]["name"]
                                             for x in _pods(real_cp, "app=drained")
                                             if _running(real_cp, x["metadata"]["name"])]) == 2
                           and p, DEADLINE, "both counters running")
        _cordon(real_cp, node_b.name, False)
        wait_for(lambda: all(len(_counts(real_cp, n)) >= 2 for n in sources), DEADLINE,
                 "both counting")
        status, rs = real_cp.api("GET", "/apis/apps/v1/namespaces/default/replicasets"
                                        "?labelSelector=app%3Ddrained")
        [replicaset] = rs["items"]
        before = {name: _counts(real_cp, name)[-1] for name in sources}
        started = dt.datetime.now(dt.UTC)
        r = cli("drain", node.name, "--to", node_b.name, "--pod-selector", "app=drained",
                "--registry", f"{plain_registry.host}/drained", "--no-tls-verify",
                "--kubeconfig", real_cp.admin_kubeconfig, "--concurrency", "2",
                "--timeout", str(int(DEADLINE)), "-o", "json", "--delete-emptydir-data")
        # The module's bare counter on node-a is left out by the selector; evicting it would
        # delete it for good (it did, until the drain refused bare pods without --force).
        assert r.code == 10, r.err
        report = r.json()
        pods = {p["name"]: p for p in report.pop("pods")}
        left = {n: pods.pop(n) for n in list(pods) if n not in sources}
        assert left[POD]["reason"] == f"not matched by --pod-selector; {BARE_POD}"
        assert all(p["action"] == "blocked" and p["reason"].endswith(BARE_POD)
                   for p in left.values()), left
        assert _running(real_cp, POD)
        assert {n: p["outcome"] for n, p in pods.items()} == {n: "migrated" for n in sources}
        assert all(p["budgets"] == ["drained"] for p in pods.values()), pods
        # One disruption at a time: the second waited for the first to finish.
        assert max(p["budget_wait_seconds"] for p in pods.values()) > 1, pods
        restored = {n: p["restored_pod"] for n, p in pods.items()}
        # The ReplicaSet owns exactly the restored pods, on node-b, and made none of its own.
        now = _pods(real_cp, "app=drained")
        assert sorted(p["metadata"]["name"] for p in now) == sorted(restored.values()), now
        for pod in now:
            assert pod["spec"]["nodeName"] == node_b.name
            [owner] = pod["metadata"]["ownerReferences"]
            assert owner["uid"] == replicaset["metadata"]["uid"] and owner["controller"]
        status, rs_now = real_cp.api(
            "GET", f"/apis/apps/v1/namespaces/default/replicasets/"
                   f"{replicaset['metadata']['name']}")
        assert rs_now["spec"]["replicas"] == 2
        for name, moved in restored.items():
            log = wait_for(functools.partial(_log_after, real_cp, moved, started, 2), DEADLINE,
                           f"{moved} counting on {node_b.name}")
            whole = counts("\n".join(line for _, line in log))
            assert whole == list(range(1, len(whole) + 1)), whole  # the same process
            assert whole[-1] > before[name], (name, before[name], whole)
        # A while later still two: the ReplicaSet did not replace anything.
        time.sleep(3)
        assert len(_pods(real_cp, "app=drained")) == 2
    finally:
        _cordon(real_cp, node.name, False)
        _cordon(real_cp, node_b.name, False)
        for path in ("/apis/apps/v1/namespaces/default/deployments/drained",
                     "/apis/policy/v1/namespaces/default/poddisruptionbudgets/drained"):
            real_cp.api("DELETE", path)
        for pod in _pods(real_cp, "app=drained"):
            real_cp.api("DELETE", f"/api/v1/namespaces/default/pods/"
                                  f"{pod['metadata']['name']}?gracePeriodSeconds=0")


def test_a_restored_counter_moves_on_and_back(
        cli: Cli, real_cp: ControlPlane, node: realnode.RealNode, node_b: realnode.RealNode,
        plain_registry: RegistryUnderTest, counter_image: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # A checkpoint of a container CRI-O restored, restored again: node-a -> node-b -> node-a.
    image = counter_image
    monkeypatch.setenv("MIGRATE_NODE_ROOT", "/")
    with _started(real_cp, counter_pod("roundtrip", image, secret=SECRET, node=node.name)
                  ) as [name], _moved_counting(cli, real_cp, plain_registry, name,
                                               node_b.name) as there:
        back = there["destination_pod"]
        with _moved_counting(cli, real_cp, plain_registry, back, node.name) as report:
            assert report["outcome"] == "succeeded"


def test_every_container_of_a_real_pod_with_an_init_container_moves(
        cli: Cli, real_cp: ControlPlane, node: realnode.RealNode, node_b: realnode.RealNode,
        plain_registry: RegistryUnderTest, counter_image: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Two counters in one pod, after an init container that has run to completion: each
    # counter is checkpointed and restored, and counts on from where it was.
    image = counter_image
    pod = counter_pod("pair", image, secret=SECRET, node=node.name)
    first = pod["spec"]["containers"][0]
    pod["spec"]["containers"].append({**first, "name": "second", "env": [
        {"name": "SECRET", "value": "second-" + SECRET}, {"name": "INTERVAL", "value": "0.5"}]})
    pod["spec"]["initContainers"] = [{
        "name": "init", "image": image, "command": ["/bin/sh", "-c", "echo ready >/data/init"],
        "volumeMounts": first["volumeMounts"]}]
    monkeypatch.setenv("MIGRATE_NODE_ROOT", "/")
    containers = ("counter", "second")
    with _started(real_cp, pod) as [name]:
        source_uid = real_cp.api("GET", f"/api/v1/namespaces/default/pods/{name}")[1][
            "metadata"]["uid"]
        started = dt.datetime.now(dt.UTC)
        wait_for(lambda: all(_log_after(real_cp, name, started, 2, c) for c in containers),
                 DEADLINE, "both counting")
        assert (_empty_dir(node, source_uid, "data") / "init").read_text() == "ready\n"
        before = {c: counts("\n".join(line for _, line in _log_after(
            real_cp, name, started, 0, c) or []))[-1] for c in containers}
        started = dt.datetime.now(dt.UTC)
        r = _migrate(cli, real_cp, plain_registry, name, node_b.name, "--all-containers")
        assert r.code == 0, r.err
        with _deleted_after(real_cp, r.json()["destination_pod"]) as moved:
            restored = real_cp.api("GET", f"/api/v1/namespaces/default/pods/{moved}")[1]
            assert "initContainers" not in restored["spec"]  # it had run
            # What the init container wrote into the emptyDir stays behind: a checkpoint
            # holds no volume's files. The report says so.
            assert r.json()["plan"]["emptied_volumes"] == ["data"]
            assert list(_empty_dir(node_b, restored["metadata"]["uid"], "data").iterdir()) == []
            for c in containers:
                log = wait_for(functools.partial(_log_after, real_cp, moved, started, 2, c),
                               DEADLINE, f"{moved}/{c} counting on")
                whole = counts("\n".join(line for _, line in log))
                assert whole == list(range(1, len(whole) + 1)), (c, whole)
                assert whole[-1] > before[c], (c, before[c], whole)


def test_a_counter_with_limits_probes_and_mounted_config_moves(
        cli: Cli, real_cp: ControlPlane, node: realnode.RealNode, node_b: realnode.RealNode,
        plain_registry: RegistryUnderTest, counter_image: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # What production pods carry: requests and limits (the restored process lands in the
    # new pod's cgroup), a ConfigMap (whole, and one key by subPath) and a Secret mounted
    # (CRI-O's restore checks every bind mount), readiness and liveness probes (verify
    # waits for ready).
    image = counter_image
    for path, body in (
            ("configmaps", {"metadata": {"name": "shaped"}, "data": {"mode": "fast"}}),
            ("secrets", {"metadata": {"name": "shaped"}, "stringData": {"key": "k"}})):
        status, made = real_cp.api("POST", f"/api/v1/namespaces/default/{path}", body)
        assert status in (201, 409), made
    pod = counter_pod("shaped", image, secret=SECRET, node=node.name)
    [container] = pod["spec"]["containers"]
    container["resources"] = {"requests": {"cpu": "50m", "memory": "32Mi"},
                              "limits": {"cpu": "500m", "memory": "128Mi"}}
    container["volumeMounts"] += [{"name": "config", "mountPath": "/etc/shaped"},
                                  {"name": "config", "mountPath": "/etc/shaped.mode",
                                   "subPath": "mode"},  # one file: a bind of a file
                                  {"name": "secret", "mountPath": "/run/shaped",
                                   "readOnly": True}]
    pod["spec"]["volumes"] += [{"name": "config", "configMap": {"name": "shaped"}},
                               {"name": "secret", "secret": {"secretName": "shaped"}}]
    probe = {"exec": {"command": ["/bin/sh", "-c", "test -f /home/counter/test-file"]},
             "periodSeconds": 1}
    container["readinessProbe"] = probe
    container["livenessProbe"] = {**probe, "periodSeconds": 2}
    monkeypatch.setenv("MIGRATE_NODE_ROOT", "/")
    with _started(real_cp, pod) as [name], \
            _moved_counting(cli, real_cp, plain_registry, name, node_b.name) as report:
        path = f"/api/v1/namespaces/default/pods/{report['destination_pod']}"
        moved = real_cp.api("GET", path)[1]
        [moved_container] = moved["spec"]["containers"]
        assert moved_container["resources"] == container["resources"]
        assert {v["name"] for v in moved["spec"]["volumes"]} >= {"config", "secret"}
        [ready] = moved["status"]["containerStatuses"]
        assert ready["ready"] and ready["restartCount"] == 0
        time.sleep(5)  # the liveness probe keeps passing: no restart
        assert real_cp.api("GET", path)[1]["status"]["containerStatuses"][0][
            "restartCount"] == 0
        # From the real kubelet's archive alone, the resources come back as they were
        # asked for (its OCI spec holds shares and quota; memory in bytes).
        r = cli("manifest", "--archive", report["checkpoints"][CONTAINER]["path"],
                "--image", "r/x:1", "--node", node_b.name, "-o", "json")
        assert r.code == 0, r.err
        assert r.json()["spec"]["containers"][0]["resources"] == {
            "requests": {"cpu": "50m"},
            "limits": {"cpu": "500m", "memory": str(128 * 1024 * 1024)}}


def test_a_destination_without_room_for_the_pod_is_refused_before_its_checkpoint(
        cli: Cli, real_cp: ControlPlane, node: realnode.RealNode, node_b: realnode.RealNode,
        plain_registry: RegistryUnderTest, counter_image: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # A pod created with spec.nodeName skips the scheduler, and the kubelet rejects one
    # its node has no room for (OutOf<resource>). node-b's CPU is mostly taken.
    image = counter_image
    _, found = real_cp.api("GET", f"/api/v1/nodes/{node_b.name}")
    millis = _millicpu(found["status"]["allocatable"]["cpu"])
    filler = counter_pod("filler", image, secret=SECRET, node=node_b.name)
    filler["spec"]["containers"][0]["resources"] = {"requests": {"cpu": f"{millis - 300}m"}}
    big = counter_pod("big", image, secret=SECRET, node=node.name)
    big["spec"]["containers"][0]["resources"] = {"requests": {"cpu": "500m"}}
    with _started(real_cp, filler, big):
        r = _migrate(cli, real_cp, plain_registry, "big", node_b.name)
        assert (r.code, r.out) == (6, ""), r.err  # nothing began: no run, no report
        first, hint = r.err.splitlines()
        assert first.startswith(f"error: node {node_b.name} has no room for pod default/big: "
                                "not enough cpu (the pod requests 500m, "), first
        assert hint == ("hint: its kubelet would reject the restored pod; make room there or "
                        "pick another node with --to")
        assert _running(real_cp, "big") and not _pods(real_cp, "app=big")[1:]
        # Without the check, the kubelet is the judge, after the checkpoint: as it was.
        monkeypatch.setattr("migrate.pipeline.preflight.check_room", lambda *a: None)
        monkeypatch.setenv("MIGRATE_NODE_ROOT", "/")
        r = _migrate(cli, real_cp, plain_registry, "big", node_b.name)
        assert r.code == 6 and r.json()["outcome"] == "rolled-back", r.err
        first, hint = r.err.splitlines()
        assert "ended: Failed OutOfcpu Pod was rejected" in first
        assert hint == (f"hint: the kubelet of {node_b.name} had no room for it; make room "
                        "there or pick another node with --to")


def _millicpu(quantity: str) -> int:
    return int(quantity[:-1]) if quantity.endswith("m") else int(float(quantity) * 1000)


def test_a_restored_counter_that_dies_is_restored_again_from_the_nodes_copy(
        cli: Cli, real_cp: ControlPlane, node: realnode.RealNode, node_b: realnode.RealNode,
        plain_registry: RegistryUnderTest, counter_image: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # docs/retention.md, read in CRI-O's and the kubelet's sources, proven here: a restart
    # of a restored container is a new CreateContainer of the checkpoint image, so it comes
    # back as the checkpoint caught it (not counting from 1, and not from where it died),
    # from the node's copy of the image: --cleanup-image deleted the registry's.
    monkeypatch.setenv("MIGRATE_NODE_ROOT", "/")
    with _started(real_cp, counter_pod("phoenix", counter_image, secret=SECRET,
                                       node=node.name)) as [name]:
        _counting(real_cp, name, 3)
        before = _counts(real_cp, name)[-1]
        r = _migrate(cli, real_cp, plain_registry, name, node_b.name, "--cleanup-image")
        assert r.code == 0, r.err
        with _deleted_after(real_cp, r.json()["destination_pod"]) as moved:
            assert [a["action"] for a in r.json()["actions"]].count("image deleted") == 1, \
                r.json()["actions"]
            path = f"/api/v1/namespaces/default/pods/{moved}"
            [status] = real_cp.api("GET", path)[1]["status"]["containerStatuses"]
            pid = node_b.crio_container(status["containerID"].removeprefix("cri-o://"))["pid"]
            died_at = wait_for(lambda: (c := _counts(real_cp, moved)[-1]) >= before + 8 and c,
                               DEADLINE, f"{moved} counting on")
            killed = dt.datetime.now(dt.UTC)
            os.kill(int(pid), 9)

            def restarted() -> list[int] | None:
                [s] = real_cp.api("GET", path)[1]["status"]["containerStatuses"]
                log = _log_after(real_cp, moved, killed, 2) if s["restartCount"] == 1 else None
                return counts("\n".join(line for t, line in log if t > killed)) if log else None

            again = wait_for(restarted, DEADLINE, f"{moved} restarted")
            # The checkpoint caught the count at `before` or a few seconds after (the pull
            # and the POST before it): back to there, well before where it died.
            assert before < again[0] < died_at, (before, died_at, again)


@contextlib.contextmanager
def _stopped_before_switch_over(cli: Cli, cp: ControlPlane, registry: RegistryUnderTest,
                                monkeypatch: pytest.MonkeyPatch, pod: dict[str, Any],
                                to: str) -> Iterator[tuple[str, str, str]]:
    """``pod`` started and counting, then migrated to ``to`` and interrupted once its
    restored copy runs there: (the pod's name, the run's id, the copy's name)."""
    monkeypatch.setenv("MIGRATE_NODE_ROOT", "/")
    with _started(cp, pod) as [name]:
        _counting(cp, name)
        with monkeypatch.context() as m:
            interrupt_at(m, "switchover")
            r = _migrate(cli, cp, registry, name, to)
        assert r.code == 130, r.err
        yield name, journal_id_of(r.err), r.json()["destination_pod"]


def test_a_run_interrupted_before_its_switch_over_resumes_between_real_nodes(
        cli: Cli, real_cp: ControlPlane, node: realnode.RealNode, node_b: realnode.RealNode,
        plain_registry: RegistryUnderTest, counter_image: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Stopped once the restored counter runs on node-b, beside its source; `migrate resume`
    # switches over: the source goes, the restored one counts on.
    with _stopped_before_switch_over(cli, real_cp, plain_registry, monkeypatch, counter_pod(
            "paused", counter_image, secret=SECRET, node=node.name), node_b.name) as (
            name, run, copy), _deleted_after(real_cp, copy) as moved:
        assert _running(real_cp, name) and _running(real_cp, moved)
        r = cli("resume", run, "--kubeconfig", real_cp.admin_kubeconfig, "-o", "json")
        assert r.code == 0, r.err
        assert r.json()["outcome"] == "succeeded"
        assert real_cp.api("GET", f"/api/v1/namespaces/default/pods/{name}")[0] == 404
        counted = len(_counts(real_cp, moved))
        _counting(real_cp, moved, counted + 1)


def test_a_run_interrupted_before_its_switch_over_rolls_back_between_real_nodes(
        cli: Cli, real_cp: ControlPlane, node: realnode.RealNode, node_b: realnode.RealNode,
        plain_registry: RegistryUnderTest, counter_image: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Stopped once the restored counter runs on node-b; `migrate rollback` deletes it. The
    # real kubelet takes its time to stop a container: rollback returns once the copy is
    # gone, so the next run may take its name at once (it found it terminating before).
    with _stopped_before_switch_over(cli, real_cp, plain_registry, monkeypatch, counter_pod(
            "undone", counter_image, secret=SECRET, node=node.name), node_b.name) as (
            name, run, copy):
        r = cli("rollback", run, "--kubeconfig", real_cp.admin_kubeconfig, "-o", "json")
        assert r.code == 0, r.err
        assert r.json()["undone"][0] == f"deleted pod default/{copy}", r.json()
        assert real_cp.api("GET", f"/api/v1/namespaces/default/pods/{copy}")[0] == 404
        counted = len(_counts(real_cp, name))
        _counting(real_cp, name, counted + 1)  # the source never stopped
        with _moved_counting(cli, real_cp, plain_registry, name, node_b.name) as report:
            assert report["destination_pod"] == copy


def test_migrate_checkpoint_through_the_kubelet_itself_needs_nodes_checkpoint(
        cli: Cli, real_cp: ControlPlane, node: realnode.RealNode,
        source: dict[str, Any]) -> None:
    # The seed article's curl: straight to the kubelet with a client certificate. The
    # kubelet authenticates it by its CA, then asks the API server whether the user may
    # create nodes/checkpoint (pkg/kubelet/server/auth.go, v1.37.2).
    user = "checkpointer"
    real_cp.kubeconfig(user)  # a client certificate the kubelet's client CA signed
    via = ["--via", "kubelet", "--kubelet-url", f"https://{node.address}:10250",
           "--cert", real_cp.pki / f"user-{user}.crt", "--key", real_cp.pki / f"user-{user}.key",
           "--ca", real_cp.ca.cert, "--kubeconfig", real_cp.admin_kubeconfig]
    r = cli("checkpoint", POD, *via)
    assert (r.code, r.out) == (8, ""), r.err
    assert r.err.splitlines() == [
        f"error: checkpoint default/{POD}/{CONTAINER} at https://{node.address}:10250: "
        f"Forbidden (user={user}, verb=create, resource=nodes, subresource(s)=[checkpoint])",
        f"hint: the kubelet knows the certificate's user {user}, who may not create "
        "nodes/checkpoint: grant it (a ClusterRole with that resource and verb, bound to "
        "the user); the kubelet remembers a denial for up to 30 s (its "
        "cacheUnauthorizedTTL)"]
    rbac = "/apis/rbac.authorization.k8s.io/v1"
    role = {"metadata": {"name": user}, "rules": [
        {"apiGroups": [""], "resources": ["nodes/checkpoint"], "verbs": ["create"]}]}
    binding = {"metadata": {"name": user}, "roleRef": {
        "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": user},
        "subjects": [{"kind": "User", "name": user, "apiGroup": "rbac.authorization.k8s.io"}]}
    assert real_cp.api("POST", f"{rbac}/clusterroles", role)[0] == 201
    assert real_cp.api("POST", f"{rbac}/clusterrolebindings", binding)[0] == 201
    try:
        # The kubelet caches its authorizer's denials (30 s by default; the real nodes
        # here set 2 s).
        r = wait_for(lambda: (got := cli("checkpoint", POD, *via, "-o", "json")).code == 0
                     and got, DEADLINE, "the kubelet to allow the checkpoint")
        archive = Path(r.json()["archive"])
        assert archive.parent == node.checkpoints and archive.stat().st_size > 0
        assert r.json()["via"] == "kubelet"
    finally:
        real_cp.api("DELETE", f"{rbac}/clusterrolebindings/{user}")
        real_cp.api("DELETE", f"{rbac}/clusterroles/{user}")


@pytest.fixture(scope="module")
def lone_crio(stretch_built: None, plain_registry: RegistryUnderTest,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[realnode.CrioAlone]:
    """CRI-O with no kubelet, for `migrate sandbox --run` (the seed article's restore
    outside Kubernetes)."""
    with realnode.crio_alone(tmp_path_factory.mktemp("crio-alone"),
                             registry=plain_registry.host) as crio:
        yield crio


def _cri_log_counts(path: Path) -> list[int]:
    """The counter's values in a CRI log file ("TIME STREAM TAG LINE" per line)."""
    return counts("\n".join(line.split(" ", 3)[-1] for line in path.read_text().splitlines()))


def test_migrate_sandbox_runs_the_kubelets_archive_in_crio_with_real_crictl(
        cli: Cli, checkpoint: Checkpoint, lone_crio: realnode.CrioAlone,
        plain_registry: RegistryUnderTest, tmp_path: Path) -> None:
    out = tmp_path / "sandbox"
    r = cli("sandbox", checkpoint.path, "--out", out, "--run", "--crictl",
            realnode.bin_dir() / "crictl", "--runtime-endpoint", lone_crio.endpoint,
            "-o", "json")
    assert r.code == 0, f"{r.err}\n{lone_crio.log.read_text()[-3000:]}"
    report = r.json()
    inspected = lone_crio.crictl("inspect", report["container_id"])
    assert inspected.returncode == 0, inspected.stderr
    info = json.loads(inspected.stdout)
    assert info["status"]["state"] == "CONTAINER_RUNNING", info["status"]
    # This CRI-O never ran the counter's image: the restore is created on it by its ID
    # (config.dump's rootfsImageRef), so it was pulled first, by the digest CRI-O recorded.
    # Without the pull the create failed: `reading image "<id>": ... image not known`.
    base = report["base_image"]
    assert report["pulled_base_image"] is True, report
    assert base["reference"].startswith(f"{plain_registry.host}/stretch/counter@sha256:"), base
    assert lone_crio.crictl("inspecti", "-q", base["id"]).returncode == 0
    # --network none, as the restored process sees it: a resolver where nothing answers.
    # Its host name is the checkpointed one, not the sandbox's: CRIU restores the UTS
    # namespace's name with the processes (the README says so).
    def inside(*cmd: str) -> str:
        got = lone_crio.crictl("exec", report["container_id"], *cmd)
        assert got.returncode == 0, got.stderr
        return got.stdout

    assert inside("cat", "/etc/resolv.conf") == ("nameserver 127.0.0.1\n"
                                                 "options attempts:1 timeout:1\n")
    assert (report["name"], inside("hostname")) == ("forensic-counters", f"{POD}\n")
    # Restored, not started afresh: its log (which CRI-O names by the container's ID,
    # whatever log_path says) holds the source's lines and counts on from them.
    log = Path(report["log"])
    assert log.parent == out / "logs"
    after = wait_for(lambda: log.exists() and len(c := _cri_log_counts(log)) >= checkpoint.before
                     + 2 and c, DEADLINE, "the sandboxed counter counting on")
    assert after == list(range(1, len(after) + 1)), after
    # The commands it prints, run by hand in a shell, do the same: the image gone again,
    # they pull it and restore.
    running = lone_crio.crictl("ps", "-q").stdout.split()  # killed at once: see crio_alone
    for step in (("stop", "--timeout", "0", *running), ("rmp", "--force", "--all"),
                 ("rmi", base["id"])):
        assert lone_crio.crictl(*step).returncode == 0, step
    r = cli("sandbox", checkpoint.path, "--out", tmp_path / "by-hand", "--name", "by-hand",
            "--crictl", realnode.bin_dir() / "crictl", "--runtime-endpoint",
            lone_crio.endpoint, "-o", "json")
    assert r.code == 0, r.err
    shell = subprocess.run(["sh", "-euc", "\n".join([*r.json()["commands"], 'echo "$CTR_ID"'])],
                           capture_output=True, text=True, timeout=DEADLINE, check=False)
    assert shell.returncode == 0, shell.stderr
    state = json.loads(lone_crio.crictl("inspect", shell.stdout.split()[-1]).stdout)
    assert state["status"]["state"] == "CONTAINER_RUNNING", state["status"]
    # Another sandbox of the same archive: the image is there now, nothing is pulled.
    r = cli("sandbox", checkpoint.path, "--out", tmp_path / "again", "--name", "again",
            "--run", "--crictl", realnode.bin_dir() / "crictl", "--runtime-endpoint",
            lone_crio.endpoint, "-o", "json")
    assert r.code == 0, r.err
    assert r.json()["pulled_base_image"] is False




def test_migrate_sandbox_pulls_a_private_base_image_with_the_credentials_given(
        cli: Cli, stretch_built: None, plain_registry: RegistryUnderTest,
        plain_basic_registry: RegistryUnderTest, tmp_path: Path) -> None:
    # CRI-O's own checkpoint (`crictl checkpoint --export`, the call the kubelet makes)
    # of the counter run from a registry that asks for credentials; then the image is
    # gone, and the sandbox's pull must bring them: crictl reads them from CRICTL_CREDS.
    auth = plain_basic_registry
    assert auth.creds is not None
    ref = f"{auth.host}/private/counter:1"
    skopeo = subprocess.run(
        ["skopeo", "copy", "--src-tls-verify=false", "--dest-tls-verify=false",
         "--dest-creds", auth.creds,
         f"docker://{push_counter_image(plain_registry.host, 'stretch/private', '1', tmp_path)}",
         f"docker://{ref}"], capture_output=True, text=True, timeout=DEADLINE, check=False)
    assert skopeo.returncode == 0, skopeo.stderr
    work = tmp_path / "crio"
    with realnode.crio_alone(work, registry=plain_registry.host,
                             insecure=(auth.host,)) as crio:
        def crictl(*args: str, creds: bool = False) -> str:
            env = {**os.environ, "CRICTL_CREDS": auth.creds or ""} if creds else None
            done = subprocess.run([str(realnode.bin_dir() / "crictl"), "--runtime-endpoint",
                                   crio.endpoint, "--timeout", "60s", *args], env=env,
                                  capture_output=True, text=True, timeout=DEADLINE,
                                  check=False)
            assert done.returncode == 0, (args, done.stderr, crio.log.read_text()[-2000:])
            return done.stdout.strip()

        assert "authentication required" in crio.crictl("pull", ref).stderr
        crictl("pull", ref, creds=True)
        image_id = json.loads(crictl("inspecti", "-q", ref))["status"]["id"]
        logs = work / "pod-logs"
        logs.mkdir()
        pod_config, ctr_config = work / "pod.json", work / "ctr.json"
        pod_config.write_text(json.dumps({
            "metadata": {"name": "private", "namespace": "default", "uid": str(uuid.uuid4()),
                         "attempt": 0}, "hostname": "private", "log_directory": str(logs),
            # PID namespace per container: CRI-O then runs no infra container, whose
            # oom_score_adj this machine may not lower (no CAP_SYS_RESOURCE).
            "linux": {"security_context": {"namespace_options": {"pid": 1}}}}))
        ctr_config.write_text(json.dumps({
            "metadata": {"name": "counter"}, "image": {"image": ref},
            "envs": [{"key": "SECRET", "value": "PRIVATE-SECRET"}],
            "log_path": "counter.log",
            "linux": {"security_context": {"namespace_options": {"pid": 1}}}}))
        pod = crictl("runp", str(pod_config))
        ctr = crictl("create", pod, str(ctr_config), str(pod_config))
        crictl("start", ctr)
        wait_for(lambda: len(_cri_log_counts(logs / "counter.log")) >= 2, DEADLINE,
                 "the private counter counting")
        archive = tmp_path / "private.tar"
        crictl("checkpoint", f"--export={archive}", ctr)
        # At once: the counter, PID 1 of its namespace, ignores SIGTERM (a stop would wait
        # out its grace period).
        crictl("stop", "--timeout", "0", ctr)
        crictl("rmp", "--force", pod)
        crictl("rmi", image_id)
        base = ("sandbox", archive, "--run", "--crictl", realnode.bin_dir() / "crictl",
                "--runtime-endpoint", crio.endpoint)
        # Without them the pull is refused, before any sandbox exists, and the hint says
        # none were found.
        r = cli(*base, "--out", tmp_path / "anonymous")
        assert r.code == 5, r.err
        assert r.err.splitlines()[1].startswith(
            f"hint: no credentials for {auth.host} were found here"), r.err
        assert crictl("pods", "-q") == ""
        r = cli(*base, "--out", tmp_path / "sandbox", "--creds", auth.creds, "-o", "json")
        assert r.code == 0, f"{r.err}\n{crio.log.read_text()[-3000:]}"
        report = r.json()
        assert report["pulled_base_image"] is True, report
        assert report["base_image"] == {"id": image_id, "reference": report["base_image"][
            "reference"]} and report["base_image"]["reference"].startswith(
            f"{auth.host}/private/counter@sha256:"), report
        # The password went to crictl in its environment: never into what migrate wrote.
        password = auth.creds.split(":", 1)[1]
        assert not [f for f in (tmp_path / "sandbox").rglob("*")
                    if f.is_file() and password in f.read_text(errors="replace")]
        log = Path(report["log"])
        after = wait_for(lambda: log.exists() and len(c := _cri_log_counts(log)) >= 3 and c,
                         DEADLINE, "the restored private counter counting on")
        assert after == list(range(1, len(after) + 1)), after


def test_a_drain_leaves_a_pod_criu_cannot_dump_running_where_it_was(
        cli: Cli, real_cp: ControlPlane, node: realnode.RealNode, node_b: realnode.RealNode,
        plain_registry: RegistryUnderTest, source: dict[str, Any], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # A counter holding an established TCP connection: CRIU refuses to dump it (CRI-O asks
    # for no TCP option). The drain tries once (a retry meets the same state), rolls the
    # run back and reports why; the pod runs on untouched and the node stays cordoned.
    monkeypatch.setenv("MIGRATE_NODE_ROOT", "/")
    name = _tcp_counter(real_cp, plain_registry, node.name, "tcp-drained", tmp_path, {})
    uid = real_cp.api("GET", f"/api/v1/namespaces/default/pods/{name}")[1]["metadata"]["uid"]
    try:
        r = cli("drain", node.name, "--to", node_b.name, "--pod-selector", f"app={name}",
                "--registry", f"{plain_registry.host}/drained", "--no-tls-verify",
                "--kubeconfig", real_cp.admin_kubeconfig, "-o", "json",
                "--delete-emptydir-data")
        assert r.code == 10, r.err
        pods = {p["name"]: p for p in r.json()["pods"]}
        failed = pods[name]
        assert (failed["outcome"], failed["attempts"], failed["restored_pod"]) == (
            "failed", 1, None), failed
        assert failed["error"].startswith(f"checkpoint: checkpoint default/{name}/counter on "
                                          f"{node.name}: CRIU could not dump it"), failed
        assert "tcp-close" in failed["hint"]
        assert pods[POD]["outcome"] == "blocked"  # the module's bare counter: left alone
        [journal] = failed["journals"]
        history = {h["id"]: h for h in cli("history", "-o", "json").json()}
        assert history[journal]["outcome"] == "rolled-back", history[journal]
        now = real_cp.api("GET", f"/api/v1/namespaces/default/pods/{name}")[1]
        assert (now["metadata"]["uid"], now["spec"]["nodeName"]) == (uid, node.name)
        assert _running(real_cp, name)
        assert [p["metadata"]["name"] for p in _pods(real_cp, f"app={name}")] == [name]
        assert real_cp.api("GET", f"/api/v1/nodes/{node.name}")[1]["spec"]["unschedulable"]
    finally:
        _cordon(real_cp, node.name, False)
        _delete(real_cp, name)



def test_a_node_whose_crio_has_criu_support_off_is_named_with_its_switch(
        cli: Cli, real_cp: ControlPlane, node: realnode.RealNode,
        plain_registry: RegistryUnderTest, counter_image: str,
        tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    # CRI-O 1.36.3 with enable_criu_support = false: its checkpoints answer "support not
    # available", and it starts a checkpoint image as an ordinary one. It has no
    # [crio.checkpoint_restore] table: both refusals name the switch it does have.
    monkeypatch.setenv("MIGRATE_NODE_ROOT", "/")
    switch = "set [crio.runtime] enable_criu_support = true in a file in /etc/crio/crio.conf.d/"
    with realnode.real_node(real_cp, tmp_path_factory.mktemp("real-node-c"), name="node-c",
                            registry=plain_registry.host, criu=False) as node_c:
        with _started(real_cp, counter_pod("to-c", counter_image, secret=SECRET,
                                           node=node.name)) as [name]:
            _counting(real_cp, name)
            r = _migrate(cli, real_cp, plain_registry, name, node_c.name)
            assert r.code == 6, r.err
            error, hint = r.err.splitlines()
            assert error == ("error: verify: the restore of counter on node-c failed: "
                             "CreateContainerError: no command specified (cri-o://1.36.3 on "
                             "node-c does not restore checkpoints: it started the checkpoint "
                             "image as an ordinary image)")
            assert hint.startswith(f"hint: {switch} and restart CRI-O, with criu on its PATH"), \
                hint
            assert r.json()["outcome"] == "rolled-back"
            assert [p["spec"]["nodeName"] for p in _pods(real_cp, f"app={name}")] == [node.name]
        with _started(real_cp, counter_pod("on-c", counter_image, secret=SECRET,
                                           node=node_c.name)) as [name]:
            _counting(real_cp, name)
            r = _migrate(cli, real_cp, plain_registry, name, node.name)
            assert r.code == 6, r.err
            assert r.err.splitlines() == [
                f"error: checkpoint: checkpoint default/{name}/counter on node-c: checkpointing "
                f"of default/{name}/counter failed (rpc error: code = Unknown desc = "
                "checkpoint/restore support not available)",
                f"hint: {SUPPORT_OFF_HINT}"]


def _pod_log(cp: ControlPlane, namespace: str, selector: str) -> str:
    status, found = cp.api("GET", f"/api/v1/namespaces/{namespace}/pods?labelSelector={selector}")
    assert status == 200 and len(found["items"]) == 1, found
    status, text = cp.api("GET", f"/api/v1/namespaces/{namespace}/pods/"
                                 f"{found['items'][0]['metadata']['name']}/log")
    return str(text)


def _finished(cp: ControlPlane, namespace: str, job: str) -> dict[str, Any] | None:
    status, found = cp.api("GET", f"/apis/batch/v1/namespaces/{namespace}/jobs/{job}")
    conditions = found.get("status", {}).get("conditions", []) if status == 200 else []
    return found if any(c["type"] in ("Complete", "Failed") and c["status"] == "True"
                        for c in conditions) else None


# What the real kubelet reports and the node agents leave out, none of which migrate
# reads: each container's mounts, resources and user (the kubelet has them from CRI-O),
# the pod-level resources, and a warning that the real nodes have no cluster DNS.
AGENTS_LEAVE_OUT = {"status.resources", "containerStatuses[].resources",
                    "containerStatuses[].volumeMounts", "containerStatuses[].user"}
NO_CLUSTER_DNS = "MissingClusterDNS"


def _as_real() -> NodeConfig:
    """A node agent's settings as the real nodes are: their CRI-O release."""
    return NodeConfig(runtime=realnode.runtime())


def _message_shape(message: str, images: list[str]) -> str:
    for image in images:
        message = message.replace(image, "IMAGE")
    message = re.sub(r"sha256:[0-9a-f]{64}", "DIGEST", message)
    message = re.sub(r"\b\d+(\.\d+)?(ms|s)\b", "T", message)
    return re.sub(r"\b\d+ bytes", "N bytes", message)


def _kubelet_events(cp: ControlPlane, name: str,
                    images: list[str]) -> list[tuple[str, str, str, str | None, int]]:
    """The Events the kubelet recorded about pod ``name`` (in the order it first recorded
    them), with names, times and sizes left out.

    That order is their names': POD.<the recording's time in hex nanoseconds>, in
    client-go (record/util GenerateEventName, v0.37.2) and the node agents alike. Not
    the resourceVersion's: a repeat raises its Event's count with a write of its own,
    so a look between two repeats' writes (BackOff raised, its Failed not yet) would
    see them out of their order."""
    _, events = cp.api("GET", "/api/v1/namespaces/default/events"
                              f"?fieldSelector=involvedObject.name%3D{name}")
    return [(e["type"], e["reason"], _message_shape(e["message"], images),
             e["involvedObject"].get("fieldPath"), e["count"])
            for e in sorted(events["items"], key=lambda e: str(e["metadata"]["name"]))
            if e["source"].get("component") == "kubelet" and e["reason"] != NO_CLUSTER_DNS]


def _as_reported(cp: ControlPlane, name: str, images: list[str]) -> dict[str, Any]:
    """What the node reported about pod ``name``, with its names, times and sizes left
    out: the Events the kubelet recorded, the status's fields, conditions and container
    statuses."""
    status, pod = cp.api("GET", f"/api/v1/namespaces/default/pods/{name}")
    assert status == 200, pod
    st = pod["status"]
    return {
        "events": _kubelet_events(cp, name, images),
        "status": sorted(set(st) - {k.removeprefix("status.") for k in AGENTS_LEAVE_OUT}),
        "conditions": sorted((c["type"], c["status"], tuple(sorted(c)))
                             for c in st.get("conditions", [])),
        "generation": (st.get("observedGeneration") == pod["metadata"]["generation"],
                       {c.get("observedGeneration") for c in st.get("conditions", [])}),
        "containers": [{
            "fields": sorted(set(c) - {k.removeprefix("containerStatuses[].")
                                       for k in AGENTS_LEAVE_OUT}),
            "state": sorted(c["state"]), "ready": c["ready"], "started": c.get("started"),
            "waiting": {k: _message_shape(v, images)
                        for k, v in c["state"].get("waiting", {}).items()},
            "restartCount": c["restartCount"],
            "runtime": c.get("containerID", "").partition("://")[0],
            "image": _message_shape(c["image"], images),
            "imageID": _message_shape(c.get("imageID", ""), images),
        } for c in st.get("containerStatuses", [])],
    }


def _stopping_shape(pod: dict[str, Any]) -> tuple[Any, ...]:
    """What a pod being deleted shows of its end: the phase, the grace period left, whether
    the node has seen its generation, its conditions and its containers' states."""
    meta, st = pod["metadata"], pod.get("status") or {}
    return (st.get("phase"), meta.get("deletionGracePeriodSeconds"),
            st.get("observedGeneration") == meta.get("generation"),
            sorted((c["type"], c["status"], c.get("reason"), c.get("message"))
                   for c in st.get("conditions", [])),
            [(c["name"], sorted(c["state"]), c["state"].get("terminated", {}).get("exitCode"),
              c["state"].get("terminated", {}).get("reason"), c["ready"], c.get("started"))
             for c in st.get("containerStatuses", [])])


@contextlib.contextmanager
def _stopping(v1: client.CoreV1Api, name: str) -> Iterator[list[Any]]:
    """Watch pod ``name`` in the block (and until it is gone); yields the list that gets
    each new `_stopping_shape` it showed once being deleted, and "DELETED" at the end."""
    seen: list[Any] = []
    since = v1.read_namespaced_pod(name, "default").metadata.resource_version
    w = watch.Watch()

    def follow() -> None:
        for event in w.stream(v1.list_namespaced_pod, "default", resource_version=since,
                              field_selector=f"metadata.name={name}", timeout_seconds=120):
            if event["type"] == "DELETED":
                seen.append("DELETED")
                return
            pod = event["raw_object"]
            if pod["metadata"].get("deletionTimestamp") and \
                    (not seen or seen[-1] != _stopping_shape(pod)):
                seen.append(_stopping_shape(pod))

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        thread.join(DEADLINE)
        w.stop()


# Whether a run pre-pulls the base image depends on whether the destination's Node lists
# it yet (a kubelet updates status.images on its own beat): not the node's kind.
PRE_PULL = (".base_images", ".actions[].seconds")


def _report_shape(value: Any, path: str = "") -> set[str]:
    """The paths of a report, each with whether it holds a value (null is not one);
    PRE_PULL's left out."""
    if path.startswith(PRE_PULL):
        return set()
    if isinstance(value, dict):
        return set().union(*(_report_shape(v, f"{path}.{k}") for k, v in value.items()),
                           {path})
    if isinstance(value, list):
        return set().union(*(_report_shape(v, f"{path}[]") for v in value), {path})
    return {f"{path}={'null' if value is None else type(value).__name__}"}


def test_the_node_agents_report_a_migration_as_the_real_kubelet_and_crio_do(
        cli: Cli, real_cp: ControlPlane, cp_admin: client.ApiClient, node: realnode.RealNode,
        node_b: realnode.RealNode, plain_registry: RegistryUnderTest, counter_image: str,
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The same counter moved between real nodes and between node agents: what the
    destination reports of the restored pod, what the source's node reports as it stops
    it, and what migrate reports of the run, agree. The node agents stand in for the
    real nodes wherever faults or scale are needed; a difference here is one the
    end-to-end tests on them would not notice.

    The source is held by a finalizer for a second after its node reports it stopped:
    the state window ends when it stopped, not when it went."""
    seen: dict[str, dict[str, Any]] = {}
    stopped: dict[str, dict[str, Any]] = {}
    reports: dict[str, set[str]] = {}
    v1 = client.CoreV1Api(cp_admin)
    sim_nodes = ("agents-a", "agents-b")
    with Cluster(real_cp, tmp_path / "agents", nodes=sim_nodes,
                 node_config=dict.fromkeys(sim_nodes, _as_real()),
                 registries=RegistryConfig(insecure=(plain_registry.host,))) as agents:
        for kind, root, (src, dst) in (("real", "/", (node.name, node_b.name)),
                                       ("agents", agents.node_root, sim_nodes)):
            monkeypatch.setenv("MIGRATE_NODE_ROOT", root)
            # Both nodes hold the base image by its tag on both sides (on the real ones,
            # earlier tests may have run it): CRI-O names a restored container's image
            # by a tag the node has for it, else by its digest, and the source's kubelet
            # pulls it or finds it present.
            for at in (src, dst):
                _delete(real_cp, _start(real_cp, counter_pod(f"tagged-{kind}-{at}",
                                                             counter_image, secret=SECRET,
                                                             node=at)))
            name = _start(real_cp, counter_pod(f"alike-{kind}", counter_image, secret=SECRET,
                                               node=src))
            with _stopping(v1, name) as states, \
                    held_once_stopped(v1, "default", name, hold=1.0) as released:
                r = _migrate(cli, real_cp, plain_registry, name, dst)
            assert r.code == 0, r.err
            report = r.json()
            try:
                images = [report["images"][CONTAINER]["reference"], counter_image,
                          plain_registry.host]
                seen[kind] = _as_reported(real_cp, report["destination_pod"], images)
            finally:
                _delete(real_cp, report["destination_pod"])
            reports[kind] = _report_shape(report)
            stopped[kind] = {"events": _kubelet_events(real_cp, name, images),
                             "states": states}
            journal = Journal.load(Path(os.environ["MIGRATE_STATE_DIR"]), report["id"])
            assert released and journal.stage("switchover").data["source_stopped_at"] < \
                released[0] - 0.5, kind
    assert seen["agents"] == seen["real"]
    assert stopped["agents"] == stopped["real"]
    assert reports["agents"] == reports["real"]
    assert ("Normal", "Killing", f"Stopping container {CONTAINER}",
            f"spec.containers{{{CONTAINER}}}", 1) in stopped["real"]["events"]


def _both_failing(cp: ControlPlane, names: dict[str, str], images: list[str],
                  reason: str, waiting: str) -> dict[str, dict[str, Any]]:
    """What each of the pods ``names`` (kind -> name) reported once its kubelet has
    recorded ``reason`` twice (after its backoff: the pod worker tries again) and its
    container is ``waiting`` (a pull's alternates with ErrImagePull), each Event once;
    the pods are deleted."""
    def twice(name: str) -> dict[str, Any] | None:
        view = _as_reported(cp, name, images)
        # Repeats are one Event whose count goes up (client-go's correlator).
        if sum(e[-1] for e in view["events"] if e[1] == reason) < 2 or \
                [c["waiting"].get("reason") for c in view["containers"]] != [waiting]:
            return None
        view["events"] = list(dict.fromkeys(e[:-1] for e in view["events"]))
        return view

    try:
        return {kind: wait_for(lambda name=name: twice(name), DEADLINE, f"{name}: {reason} x2")
                for kind, name in names.items()}
    finally:
        for name in names.values():
            _delete(cp, name)


def test_the_node_agents_fail_a_pull_as_the_real_kubelet_and_crio_do(
        real_cp: ControlPlane, node: realnode.RealNode, plain_registry: RegistryUnderTest,
        tls_basic_registry: RegistryUnderTest, plain_basic_registry: RegistryUnderTest,
        tmp_path: Path) -> None:
    """A pull that fails, on a real node and on a node agent: the same Events
    (ErrImagePull, then ImagePullBackOff) and the same waiting container. missing-tag:
    a tag the registry lacks, which CRI-O 1.36 tries again as an OCI artifact and
    reports both; untrusted: HTTPS with a certificate of a CA the node does not trust;
    plain-http: plain HTTP where the node speaks HTTPS. Those two are network errors,
    not tried again as artifacts. The three cases run at once: each waits out the
    kubelet's pull backoff (10 s, then its retry), which they can share."""
    registries = {"missing-tag": plain_registry, "untrusted": tls_basic_registry,
                  "plain-http": plain_basic_registry}
    images = {case: f"{reg.host}/stretch/counter:{'not-pushed' if case == 'missing-tag' else 'v1'}"
              for case, reg in registries.items()}
    # Only the plain registry is trusted over HTTP, as on the real node.
    with Cluster(real_cp, tmp_path / "agents", nodes=("agents-pull",),
                 node_config={"agents-pull": _as_real()},
                 registries=RegistryConfig(insecure=(plain_registry.host,))):
        names: dict[str, dict[str, str]] = {case: {} for case in registries}
        for case, image in images.items():
            for kind, where in (("real", node.name), ("agents", "agents-pull")):
                pod = counter_pod(f"unpulled-{case}-{kind}", image, secret=SECRET, node=where)
                status, body = real_cp.api("POST", "/api/v1/namespaces/default/pods", pod)
                assert status == 201, body
                names[case][kind] = body["metadata"]["name"]
        try:
            seen = {case: _both_failing(real_cp, names[case], [images[case], reg.host],
                                        "BackOff", "ImagePullBackOff")
                    for case, reg in registries.items()}
        finally:  # a case that failed leaves the others' pods
            for both in names.values():
                for name in both.values():
                    _delete(real_cp, name)
    for case, both in seen.items():
        assert both["agents"] == both["real"], case
        waiting = both["real"]["containers"][0]["waiting"]
        assert waiting["reason"] == "ImagePullBackOff", case
        assert ("artifact err" in waiting["message"]) == (case == "missing-tag"), waiting


def test_the_node_agents_refuse_a_restore_as_a_real_crio_without_criu_support_does(
        cli: Cli, real_cp: ControlPlane, node: realnode.RealNode,
        plain_registry: RegistryUnderTest, checkpoint: Checkpoint,
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """One checkpoint image (the real kubelet's archive) restored on a real CRI-O 1.36.3
    with enable_criu_support = false and on a node agent configured so: both start it
    as an ordinary image and fail, and say so in the same Events and the same status,
    retries included (the kubelet's pod worker tries again after its backoff)."""
    r = cli("build", checkpoint.path, "--image", f"{plain_registry.host}/stretch/refused:v1",
            "--no-tls-verify", "-o", "json")
    assert r.code == 0, r.err
    ref = r.json()["reference"]
    images = [ref, plain_registry.host]
    off = _as_real().replace(restore_level="none")
    with realnode.real_node(real_cp, tmp_path_factory.mktemp("real-node-off"), name="node-off",
                            registry=plain_registry.host, criu=False) as real_off, \
            Cluster(real_cp, tmp_path_factory.mktemp("agents-off"), nodes=("agents-off",),
                    node_config={"agents-off": off},
                    registries=RegistryConfig(insecure=(plain_registry.host,))):
        names = {}
        for kind, where in (("real", real_off.name), ("agents", "agents-off")):
            r = cli("manifest", "--from-pod", POD, "--image", ref, "--node", where,
                    "--kubeconfig", real_cp.admin_kubeconfig, "-o", "yaml")
            assert r.code == 0, r.err
            pod = yaml.safe_load(r.out)
            pod["metadata"]["name"] = names[kind] = f"refused-{kind}"
            status, body = real_cp.api("POST", "/api/v1/namespaces/default/pods", pod)
            assert status == 201, body
        seen = _both_failing(real_cp, names, images, "Failed", "CreateContainerError")
    assert seen["agents"] == seen["real"]
    assert ("Warning", "Failed", "Error: no command specified",
            "spec.containers{counter}") in seen["real"]["events"]


def test_a_scheduled_drain_runs_in_cluster_and_moves_the_counter_with_nothing_simulated(
        cli: Cli, real_cp: ControlPlane, node: realnode.RealNode, node_b: realnode.RealNode,
        pod_plain_registry: RegistryUnderTest, tool_image: str, counter_image: str,
        kubernetes_service: None, cp_kubectl: Kubectl) -> None:
    # `migrate deploy` and `schedule drain` as an operator applies them; the CronJob's
    # Job runs the tool's image on node-b (kept off the drained node) as the `migrate`
    # ServiceAccount: a token the real kubelet projects, the API server reached as the
    # `kubernetes` Service through real kube-proxy. It drains node-a with build Jobs
    # there, and the counter counts on at node-b. (Last in the module: the drain moves
    # every pod of node-a.)
    admin = str(real_cp.admin_kubeconfig)
    job = "drain-now"
    try:
        r = cli("deploy", "--apply", "--kubeconfig", admin, "--image", tool_image)
        assert r.code == 0, r.err
        r = cli("schedule", "drain", node.name, "--cron", "0 2 * * 6", "--registry",
                f"{pod_plain_registry.host}/drains", "--apply", "--kubeconfig", admin, "--",
                "--no-tls-verify", "--delete-emptydir-data")
        assert r.code == 0, r.err
        with _started(real_cp, counter_pod("scheduled", counter_image, secret=SECRET,
                                           node=node.name)) as [name]:
            _counting(real_cp, name)
            before = _counts(real_cp, name)[-1]
            # What the drain will move: this counter and the module's own, nothing an
            # earlier test left behind (once what they deleted is gone).
            wait_for(lambda: {p["metadata"]["name"] for p in real_cp.api(
                "GET", f"/api/v1/pods?fieldSelector=spec.nodeName={node.name}")[1]["items"]}
                <= {name, POD}, DEADLINE, f"only {name} and {POD} on {node.name}")
            cp_kubectl(admin, "create", "job", "-n", "migrate-system", job,
                       f"--from=cronjob/migrate-drain-{node.name}")
            done = wait_for(lambda: _finished(real_cp, "migrate-system", job), 2 * DEADLINE,
                            f"Job {job} to finish")
            log = _pod_log(real_cp, "migrate-system", f"job-name={job}")
            assert done["status"].get("succeeded") == 1, log
            assert name in log, log
            _, moved = real_cp.api("GET", "/api/v1/namespaces/default/pods")
            [copy] = [p for p in moved["items"] if p["metadata"]["name"].startswith(f"{name}-")]
            assert copy["spec"]["nodeName"] == node_b.name
            with _deleted_after(real_cp, copy["metadata"]["name"]) as restored:
                wait_for(lambda: len(_counts(real_cp, restored)) > 1, DEADLINE,
                         f"{restored} counting on")
                assert _counts(real_cp, restored)[-1] > before
            _, drained = real_cp.api("GET", f"/api/v1/nodes/{node.name}")
            assert drained["spec"].get("unschedulable") is True  # cordoned, by the drain
            _, runner = real_cp.api(
                "GET", f"/api/v1/namespaces/migrate-system/pods?labelSelector=job-name={job}")
            assert [p["spec"]["nodeName"] for p in runner["items"]] == [node_b.name]
    finally:
        _cordon(real_cp, node.name, False)
        cp_kubectl(admin, "delete", "--ignore-not-found", "--timeout=120s",
                   "namespace/migrate-system", "clusterrole/migrate",
                   "clusterrolebinding/migrate:migrate-system")

