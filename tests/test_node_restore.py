"""Restoring checkpoint images on node agents (e2e/nodes on the real control plane),
against the real registry.

A pod is checkpointed on one node agent through its kubelet API, the
archive is built into a checkpoint image and pushed by the project's own
builder (`migrate build`) to a real `docker-registry` on 127.0.0.1, and a pod
naming that image on another node is restored from it: the kubelet pulls it
over HTTP(S) and runs CRI-O's checks. Everything is observed as a user would,
through the official client: pod status, annotations and Events.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import re
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import urllib3
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from e2e.cluster.launcher import ControlPlane
from e2e.cluster.world import Cluster
from e2e.nodes import NodeConfig, RegistryConfig
from e2e.nodes.checkpoints import MEMORY_ANNOTATION, PROCESSES_ANNOTATION, ROOTFS_ANNOTATION
from e2e.nodes.images import parse_image
from tests.cluster import api_client, node_agents, wait_for
from tests.conftest import Result
from tests.registries import RegistryPKI, RegistryUnderTest

Cli = Callable[..., Result]
DEADLINE = 30.0
SECRET = "RESTORE_SECRET_5521"
BASE_IMAGE = "registry.example/team/web-server:1.4"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_TYPES = (OCI_MANIFEST, "application/vnd.oci.image.config.v1+json",
             "application/vnd.oci.image.layer.v1.tar")
DOCKER_TYPES = ("application/vnd.docker.distribution.manifest.v2+json",
                "application/vnd.docker.container.image.v1+json",
                "application/vnd.docker.image.rootfs.diff.tar.gzip")
RESTORED = "sim.migrate.dev/restored.app"
VOLUMES = [{"name": "cache", "emptyDir": {}}, {"name": "conf", "configMap": {"name": "conf"}}]
MOUNTS = [{"name": "cache", "mountPath": "/cache"}, {"name": "conf", "mountPath": "/etc/app"}]
FAST = {"backoff": 0.2, "backoff_max": 1.0}
NODES = {
    "node-a": NodeConfig(**FAST),
    "node-b": NodeConfig(**FAST),
    "node-containerd": NodeConfig(runtime="containerd://2.4.0", **FAST),
    "node-ckpt-only": NodeConfig(restore_level="checkpoint_only", **FAST),
    "node-slow": NodeConfig(image_pull_seconds=1.0, **FAST),
    "node-parallel": NodeConfig(image_pull_seconds=1.0, max_parallel_image_pulls=None, **FAST),
}


@pytest.fixture(scope="module")
def cluster(real_cp: ControlPlane, tmp_path_factory: pytest.TempPathFactory,
        plain_registry: RegistryUnderTest, registry_pki: RegistryPKI) -> Iterator[Cluster]:
    registries = RegistryConfig(insecure=(plain_registry.host,),
                                ca_files=(registry_pki.ca_cert,))
    with node_agents(real_cp, tmp_path_factory.mktemp("nodes"), nodes=list(NODES),
                     node_config=NODES, start_latency=0.05, stop_latency=0.05,
                     registries=registries) as cluster:
        yield cluster


_counter = iter(range(1_000_000))


def _create(v1: client.CoreV1Api, node: str, image: str, *, prefix: str = "p",
            annotations: dict[str, str] | None = None, mounts: list[Any] | None = None,
            **spec: Any) -> str:
    name = f"{prefix}-{next(_counter)}"
    container: dict[str, Any] = {"name": "app", "image": image,
                                 "volumeMounts": MOUNTS if mounts is None else mounts}
    container.update(spec.pop("container", {}))
    v1.create_namespaced_pod("default", {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "annotations": annotations or {}},
        "spec": {"nodeName": node, "containers": [container], "volumes": VOLUMES, **spec},
    })
    return name


def _running(v1: client.CoreV1Api, name: str) -> client.V1Pod:
    def check() -> client.V1Pod | None:
        pod = v1.read_namespaced_pod(name, "default")
        return pod if pod.status.phase == "Running" else None

    pod: client.V1Pod = wait_for(check, what=f"pod {name} Running")
    return pod


def _waiting(v1: client.CoreV1Api, name: str, reason: str) -> client.V1ContainerStateWaiting:
    def check() -> client.V1ContainerStateWaiting | None:
        statuses = v1.read_namespaced_pod(name, "default").status.container_statuses or []
        waiting = statuses[0].state.waiting if statuses else None
        return waiting if waiting is not None and waiting.reason == reason else None

    found: client.V1ContainerStateWaiting = wait_for(check, what=f"{name} waiting {reason}")
    return found


def _events(v1: client.CoreV1Api, name: str) -> list[client.CoreV1Event]:
    items = v1.list_namespaced_event("default", field_selector=f"involvedObject.name={name}")
    return sorted(items.items, key=lambda e: e.metadata.creation_timestamp)


def _started_events(v1: client.CoreV1Api, name: str) -> list[client.CoreV1Event]:
    """The pod's Events once its Started Event is in: a kubelet records Events
    without waiting for them to be written (client-go's recorder), so they may come
    after the status that says the pod runs."""
    _event(v1, name, "Started")
    return _events(v1, name)


def _event(v1: client.CoreV1Api, name: str, reason: str, prefix: str = "") -> client.CoreV1Event:
    def check() -> client.CoreV1Event | None:
        return next((e for e in _events(v1, name)
                     if e.reason == reason and e.message.startswith(prefix)), None)

    found: client.CoreV1Event = wait_for(check, what=f"event {reason} {prefix!r} for {name}")
    return found


def _checkpoint(cluster: Cluster, node: str, pod: str) -> Path:
    """Checkpoint `app` of `pod` through the node's kubelet API; the archive here."""
    http = urllib3.PoolManager(cert_reqs="CERT_REQUIRED", ca_certs=str(cluster.ca.cert),
                               cert_file=str(cluster.kubelet_client.cert),
                               key_file=str(cluster.kubelet_client.key), retries=False,
                               timeout=DEADLINE)
    answer = http.request("POST", f"{cluster.kubelet_url(node)}/checkpoint/default/{pod}/app")
    assert answer.status == 200, answer.data
    return cluster.node_path(node, json.loads(answer.data)["items"][0])


def _push(cli: Cli, archive: Path, image: str, reg: RegistryUnderTest, *extra: str) -> str:
    """`migrate build` the archive into `image` on `reg`; the manifest digest."""
    args = ["--no-tls-verify"] if not reg.tls else ["--cert-dir", str(reg.cert_dir)]
    if reg.creds:
        args += ["--creds", reg.creds]
    r = cli("build", archive, "--image", image, *args, *extra, "-o", "json")
    assert r.code == 0, r.err
    digest: str = r.json()["digest"]
    return digest


def _config_id(reg: RegistryUnderTest, repo: str, tag: str) -> str:
    """The image ID CRI-O gives the image: its config digest, without `sha256:`."""
    answer = reg.http().request("GET", f"{reg.url}/v2/{repo}/manifests/{tag}",
                                headers={"Accept": OCI_MANIFEST,
                                         **reg.auth_headers(f"repository:{repo}:pull")})
    return str(json.loads(answer.data)["config"]["digest"]).removeprefix("sha256:")


def _members(archive: Path) -> dict[str, bytes]:
    with tarfile.open(archive) as tf:
        return {m.name: tf.extractfile(m).read()  # type: ignore[union-attr]
                for m in tf.getmembers() if m.isreg()}


def _memory(archive: Path) -> dict[str, bytes]:
    """What a restore brings back byte for byte: processes, memory, root-fs changes."""
    keep = re.compile(r"checkpoint/(pages|pagemap|mm|core)-\d+\.img|checkpoint/pstree\.img|"
                      r"rootfs-diff\.tar")
    return {k: v for k, v in _members(archive).items() if keep.fullmatch(k)}


@pytest.fixture
def checkpoint_image(cluster: Cluster, v1: client.CoreV1Api, cli: Cli,
                     plain_registry: RegistryUnderTest, unique_repo: str
                     ) -> tuple[str, str, str]:
    """A pod checkpointed on node-a and pushed: (image, digest, source pod)."""
    processes = [{"pid": 1, "comm": "supervisor", "argv": ["/sbin/supervisor"]},
                 {"pid": 12, "comm": "worker", "argv": ["/usr/bin/worker", "--port=8080"],
                  "env": ["MODE=prod"], "heap": f"token={SECRET};"}]
    source = _create(v1, "node-a", BASE_IMAGE, prefix="src", annotations={
        PROCESSES_ANNOTATION: json.dumps(processes), MEMORY_ANNOTATION: "0.5",
        ROOTFS_ANNOTATION: json.dumps({"/srv/state.txt": "counter=41\n"})})
    _running(v1, source)
    image = f"{plain_registry.host}/{unique_repo}:v1"
    digest = _push(cli, _checkpoint(cluster, "node-a", source), image, plain_registry)
    return image, digest, source


# -- restoring ------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["two processes", "one process"])
def test_migrate_a_pod_then_migrate_it_again(cluster: Cluster, v1: client.CoreV1Api, cli: Cli,
                                             plain_registry: RegistryUnderTest,
                                             unique_repo: str, layout: str) -> None:
    processes: list[dict[str, Any]] = [
        {"pid": 12, "comm": "worker", "argv": ["/usr/bin/worker"], "heap": f"token={SECRET};"}]
    if layout == "two processes":
        processes.insert(0, {"pid": 1, "comm": "supervisor", "argv": ["/sbin/supervisor"]})
        processes[1]["ppid"] = 1
    source = _create(v1, "node-a", BASE_IMAGE, prefix="src", annotations={
        PROCESSES_ANNOTATION: json.dumps(processes), MEMORY_ANNOTATION: "0.25",
        ROOTFS_ANNOTATION: json.dumps({"/srv/state.txt": "counter=41\n"})})
    _running(v1, source)
    first = _checkpoint(cluster, "node-a", source)
    image = f"{plain_registry.host}/{unique_repo}:v1"
    digest = _push(cli, first, image, plain_registry, "--compression", "zstd")

    restored = _create(v1, "node-b", image, prefix="dst")
    pod = _running(v1, restored)
    [status] = pod.status.container_statuses
    # CRI-O reports the image the container was created on: the checkpointed one's.
    assert status.image == BASE_IMAGE and digest not in status.image_id
    assert (status.ready, status.started, status.state.running is not None) == (True, True, True)
    record = json.loads(pod.metadata.annotations[RESTORED])
    assert record["imageID"] == f"{plain_registry.host}/{unique_repo}@{digest}"
    assert record["checkpoint"] == "app"
    assert record["source"]["pod"] == source and record["source"]["namespace"] == "default"
    assert record["baseImage"] == BASE_IMAGE
    assert [p["comm"] for p in record["processes"]] == [p["comm"] for p in processes]
    assert record["memoryBytes"] >= 256 * 1024 and record["rootfsDiff"] == ["/srv/state.txt"]
    assert SECRET in pod.metadata.annotations[f"{PROCESSES_ANNOTATION}.app"]
    assert [(e.type, e.reason) for e in _started_events(v1, restored)] == [
        ("Normal", "Pulling"), ("Normal", "Pulled"), ("Normal", "Created"),
        ("Normal", "Started")]
    assert _event(v1, restored, "Pulled").message.startswith(
        f'Successfully pulled image "{image}" in ')

    # Checkpointed again, the restored pod holds the same memory and files.
    second = _checkpoint(cluster, "node-b", restored)
    assert _memory(second) == _memory(first)
    assert json.loads(_members(second)["config.dump"])["rootfsImageName"] == BASE_IMAGE
    r = cli("memparse", second, "--search", SECRET, "-o", "json")
    assert r.code == 0 and [m["match"] for m in r.json()] == [SECRET]

    # ...and migrates on: back to node-a from an image of the second checkpoint.
    again = f"{plain_registry.host}/{unique_repo}:v2"
    _push(cli, second, again, plain_registry, "--compression", "gzip")
    third = _running(v1, _create(v1, "node-a", again, prefix="dst"))
    assert json.loads(third.metadata.annotations[RESTORED])["source"]["pod"] == restored
    assert _memory(_checkpoint(cluster, "node-a", third.metadata.name)) == _memory(first)


def test_an_oci_index_restores_from_its_manifest(cluster: Cluster, v1: client.CoreV1Api,
                                                 cli: Cli, checkpoint_image: tuple[str, str, str],
                                                 plain_registry: RegistryUnderTest,
                                                 unique_repo: str) -> None:
    _, _, source = checkpoint_image
    image = f"{plain_registry.host}/{unique_repo}:index"
    digest = _push(cli, _checkpoint(cluster, "node-a", source), image, plain_registry,
                   "--oci-index")
    pod = _running(v1, _create(v1, "node-b", image))
    assert json.loads(pod.metadata.annotations[RESTORED])["imageID"].endswith(f"@{digest}")


def test_a_missing_bind_mount_refuses_the_restore(v1: client.CoreV1Api,
                                                  checkpoint_image: tuple[str, str, str],
                                                  plain_registry: RegistryUnderTest,
                                                  unique_repo: str) -> None:
    image, _, _ = checkpoint_image
    name = _create(v1, "node-b", image, mounts=MOUNTS[:1])
    waiting = _waiting(v1, name, "CreateContainerError")
    expected = (f'restoring "{_config_id(plain_registry, unique_repo, "v1")}" expects '
                "following bind mounts defined (/etc/app)")
    assert waiting.message == expected
    failed = _event(v1, name, "Failed", "Error: ")
    assert (failed.type, failed.message) == ("Warning", f"Error: {expected}")
    # The kubelet keeps trying (every `backoff`), and the pod never runs.
    wait_for(lambda: _event(v1, name, "Failed", "Error: ").count >= 2, what="a retry")
    pod = v1.read_namespaced_pod(name, "default")
    assert pod.status.phase == "Pending" and RESTORED not in (pod.metadata.annotations or {})
    ready = next(c for c in pod.status.conditions if c.type == "Ready")
    assert (ready.status, ready.reason) == ("False", "ContainersNotReady")


@pytest.mark.parametrize(("node", "command", "reason", "message"), [
    ("node-containerd", None, "CreateContainerError",
     'failed to generate container "{cid}" spec: no command specified'),
    ("node-ckpt-only", None, "CreateContainerError", "no command specified"),
    ("node-ckpt-only", ["/bin/sleep", "1d"], "CreateContainerError",
     'container create failed: runc create failed: unable to start container process: '
     'exec: "/bin/sleep": stat /bin/sleep: no such file or directory'),
    ("node-containerd", ["sleep", "1d"], "RunContainerError",
     'failed to create containerd task: failed to create shim task: OCI runtime create '
     'failed: runc create failed: unable to start container process: exec: "sleep": '
     'executable file not found in $PATH: unknown'),
])
def test_nodes_that_cannot_restore_run_the_image_as_an_ordinary_one(
        v1: client.CoreV1Api, checkpoint_image: tuple[str, str, str], node: str,
        command: list[str] | None, reason: str, message: str) -> None:
    image, _, _ = checkpoint_image
    name = _create(v1, node, image, container={"command": command} if command else {})
    waiting = _waiting(v1, name, reason)
    uid = v1.read_namespaced_pod(name, "default").metadata.uid
    assert waiting.message == message.format(cid=hashlib.sha256(f"{uid}/app".encode())
                                             .hexdigest())
    assert _event(v1, name, "Failed", "Error: ").message == f"Error: {waiting.message}"
    assert v1.read_namespaced_pod(name, "default").status.phase == "Pending"


def _app_layer() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        info = tarfile.TarInfo("bin/app")
        info.size, info.mode = 4, 0o755
        tf.addfile(info, io.BytesIO(b"\x7fELF"))
    return buf.getvalue()


def _push_image(reg: RegistryUnderTest, repo: str, layer: bytes, *, docker: bool = False,
                annotations: dict[str, str] | None = None) -> str:
    """An image of one uncompressed (Docker: gzip) layer with Cmd /bin/app, pushed with the
    registry API; its manifest digest."""
    diff_id = _digest(layer)
    if docker:
        layer = gzip.compress(layer, mtime=0)
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "config": {"Cmd": ["/bin/app"]},
                         "rootfs": {"type": "layers", "diff_ids": [diff_id]}}).encode()
    http = reg.http()
    for blob in (layer, config):
        start = http.request("POST", f"{reg.url}/v2/{repo}/blobs/uploads/")
        location = start.headers["Location"]
        url = location if location.startswith("http") else reg.url + location
        sep = "&" if "?" in url else "?"
        done = http.request("PUT", f"{url}{sep}digest={_digest(blob)}", body=blob,
                            headers={"Content-Type": "application/octet-stream"})
        assert done.status == 201, done.data
    kinds = (DOCKER_TYPES if docker else OCI_TYPES)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": kinds[0],
        "config": {"mediaType": kinds[1], "digest": _digest(config), "size": len(config)},
        "layers": [{"mediaType": kinds[2], "digest": _digest(layer), "size": len(layer)}],
        **({"annotations": annotations} if annotations else {})}).encode()
    put = http.request("PUT", f"{reg.url}/v2/{repo}/manifests/v1", body=manifest,
                       headers={"Content-Type": kinds[0]})
    assert put.status == 201, put.data
    return _digest(manifest)


def _push_plain_image(reg: RegistryUnderTest, repo: str) -> str:
    """An ordinary image (bin/app, Cmd /bin/app); its digest."""
    return _push_image(reg, repo, _app_layer())


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_an_image_without_the_annotation_starts_as_an_ordinary_container(
        v1: client.CoreV1Api, plain_registry: RegistryUnderTest, unique_repo: str) -> None:
    digest = _push_plain_image(plain_registry, unique_repo)
    image = f"{plain_registry.host}/{unique_repo}:v1"
    pod = _running(v1, _create(v1, "node-b", image))
    assert pod.status.container_statuses[0].image_id == \
        f"{plain_registry.host}/{unique_repo}@{digest}"
    assert RESTORED not in (pod.metadata.annotations or {})
    # A second pod finds the image on the node (IfNotPresent: no pull).
    again = _create(v1, "node-b", image, container={"imagePullPolicy": "IfNotPresent"})
    _running(v1, again)
    assert _event(v1, again, "Pulled").message == \
        f'Container image "{image}" already present on machine and can be accessed by the pod'


def test_cri_o_reads_the_checkpoint_annotation_from_oci_manifests_only(
        cluster: Cluster, v1: client.CoreV1Api, checkpoint_image: tuple[str, str, str],
        plain_registry: RegistryUnderTest, unique_repo: str) -> None:
    _, _, source = checkpoint_image
    archive = _checkpoint(cluster, "node-a", source).read_bytes()
    repo = f"{unique_repo}-docker"
    _push_image(plain_registry, repo, archive, docker=True,
                annotations={"io.kubernetes.cri-o.annotations.checkpoint.name": "app"})
    name = _create(v1, "node-b", f"{plain_registry.host}/{repo}:v1")
    # Pulled (a Docker v2 manifest, gzip layer), but taken for an ordinary image whose
    # root holds the archive, not /bin/app.
    waiting = _waiting(v1, name, "CreateContainerError")
    assert waiting.message == ('container create failed: runc create failed: unable to start '
                               'container process: exec: "/bin/app": stat /bin/app: no such '
                               "file or directory")
    assert _event(v1, name, "Pulled").message.startswith("Successfully pulled image")
    assert v1.read_namespaced_pod(name, "default").metadata.annotations in (None, {})


def test_pull_errors_read_as_cri_o_reports_them(v1: client.CoreV1Api, fresh_registry: Any,
                                               plain_registry: RegistryUnderTest,
                                               unique_repo: str) -> None:
    _push_plain_image(plain_registry, unique_repo)
    missing = f"{plain_registry.host}/{unique_repo}:nope"
    name = _create(v1, "node-b", missing)
    assert _waiting(v1, name, "ErrImagePull").message == (
        f"initializing source docker://{missing}: reading "
        f"manifest nope in {plain_registry.host}/{unique_repo}: manifest unknown")
    assert _event(v1, name, "Failed", "Error: ").message == "Error: ErrImagePull"
    # A plain-HTTP registry that the cluster does not list as insecure.
    unlisted: RegistryUnderTest = fresh_registry(tls=False)
    image = f"{unlisted.host}/{unique_repo}:v1"
    name = _create(v1, "node-b", image)
    assert _waiting(v1, name, "ErrImagePull").message == (
        f"initializing source docker://{image}: pinging "
        f'container registry {unlisted.host}: Get "https://{unlisted.host}/v2/": http: server '
        "gave HTTP response to HTTPS client")


def test_a_registry_that_comes_back_lets_the_pod_start(v1: client.CoreV1Api, cli: Cli,
                                                       fresh_registry: Any,
                                                       checkpoint_image: tuple[str, str, str],
                                                       cluster: Cluster, unique_repo: str) -> None:
    _, _, source = checkpoint_image
    reg: RegistryUnderTest = fresh_registry(tls=True)
    image = f"{reg.host}/{unique_repo}:v1"
    _push(cli, _checkpoint(cluster, "node-a", source), image, reg)
    reg.registry.stop()
    name = _create(v1, "node-b", image)
    # CRI-O v1.36.3 marks a refused connection RegistryUnavailable, which the kubelet
    # (v1.37.2, evalCRIPullErr) makes a waiting reason of its own.
    waiting = _waiting(v1, name, "RegistryUnavailable")
    cause = (f"initializing source docker://{image}: pinging container registry {reg.host}: "
             f'Get "https://{reg.host}/v2/": dial tcp {reg.host}: connect: connection refused')
    assert waiting.message == (f"image pull failed for {image} because the registry is "
                               f"unavailable: {cause}")
    assert _event(v1, name, "Failed", "Failed to pull image").message == \
        f'Failed to pull image "{image}": RegistryUnavailable: {cause}'
    assert _event(v1, name, "Failed", "Error: ").message == "Error: RegistryUnavailable"
    assert _event(v1, name, "BackOff").message == f'Back-off pulling image "{image}"'
    reg.registry.restart()
    pod = _running(v1, name)
    assert RESTORED in pod.metadata.annotations
    assert _event(v1, name, "Pulling").count >= 2


def _pull_secret(v1: client.CoreV1Api, reg: RegistryUnderTest, password: str) -> str:
    name = f"pull-{next(_counter)}"
    auth = base64.b64encode(f"{reg.username}:{password}".encode()).decode()
    v1.create_namespaced_secret("default", {
        "metadata": {"name": name}, "type": "kubernetes.io/dockerconfigjson",
        "stringData": {".dockerconfigjson": json.dumps({"auths": {reg.host: {"auth": auth}}})}})
    return name


@pytest.mark.parametrize("registry", ["tls_basic_registry", "token_registry"])
def test_a_private_registry_needs_the_pods_pull_secret(
        cluster: Cluster, v1: client.CoreV1Api, cli: Cli, request: pytest.FixtureRequest,
        registry: str, checkpoint_image: tuple[str, str, str], unique_repo: str) -> None:
    reg: RegistryUnderTest = request.getfixturevalue(registry)
    _, _, source = checkpoint_image
    image = f"{reg.host}/{unique_repo}:v1"
    _push(cli, _checkpoint(cluster, "node-a", source), image, reg)
    denied = f"initializing source docker://{image}: " + (
        f"reading manifest v1 in {reg.host}/{unique_repo}: " if reg.auth == "basic" else
        "unable to retrieve auth token: invalid username/password: ") + \
        "authentication required"
    anonymous = _create(v1, "node-b", image)
    assert _waiting(v1, anonymous, "ErrImagePull").message == denied
    wrong = _create(v1, "node-b", image,
                    imagePullSecrets=[{"name": _pull_secret(v1, reg, "not-it")}])
    assert _waiting(v1, wrong, "ErrImagePull").message == denied
    tokens = reg.token_requests
    good = _create(v1, "node-b", image,
                   imagePullSecrets=[{"name": "absent"},
                                     {"name": _pull_secret(v1, reg, str(reg.password))}])
    pod = _running(v1, good)
    assert RESTORED in pod.metadata.annotations
    assert _event(v1, good, "FailedToRetrieveImagePullSecret").message == (
        "Unable to retrieve some image pull secrets (absent); attempting to pull the image "
        "may not succeed.")
    assert (reg.token_requests > tokens) == (reg.auth == "token")


def test_pull_latency_holds_the_pod_in_container_creating(
        v1: client.CoreV1Api, checkpoint_image: tuple[str, str, str]) -> None:
    image, _, _ = checkpoint_image
    since = v1.list_namespaced_pod("default").metadata.resource_version
    name = _create(v1, "node-slow", image)
    seen: list[tuple[str, str | None]] = []
    w = watch.Watch()
    for event in w.stream(v1.list_namespaced_pod, "default", resource_version=since,
                          field_selector=f"metadata.name={name}", timeout_seconds=int(DEADLINE)):
        pod = event["object"]
        statuses = pod.status.container_statuses or []
        waiting = statuses[0].state.waiting if statuses else None
        seen.append((pod.status.phase, waiting.reason if waiting else None))
        if pod.status.phase == "Running":
            w.stop()
    assert ("Pending", "ContainerCreating") in seen
    assert seen.index(("Pending", "ContainerCreating")) < seen.index(("Running", None))
    pulled = _event(v1, name, "Pulled").message
    took = re.search(r" in ([\d.]+)(ms|s) \(", pulled)
    assert took is not None and took.group(2) == "s" and float(took.group(1)) >= 1.0
    reasons = [e.reason for e in _started_events(v1, name)]
    assert reasons.index("Pulling") < reasons.index("Pulled") < reasons.index("Started")


def _pull_times(message: str) -> tuple[float, float]:
    """A Pulled event's pull time and time including waiting, in seconds."""
    found = re.search(r" in ([\d.]+)(ms|s) \(([\d.]+)(ms|s) including waiting\)", message)
    assert found is not None, message
    scale = {"ms": 0.001, "s": 1.0}
    return (float(found.group(1)) * scale[found.group(2)],
            float(found.group(3)) * scale[found.group(4)])


@pytest.mark.parametrize(("node", "serial"), [("node-slow", True), ("node-parallel", False)])
def test_a_node_pulls_one_image_at_a_time_unless_told_otherwise(
        v1: client.CoreV1Api, node: str, serial: bool) -> None:
    # No tag: pulled Always, each pull taking the node's 1 s.
    names = [_create(v1, node, "docker.io/library/busybox", mounts=[]) for _ in range(3)]
    times = sorted(_pull_times(_event(v1, n, "Pulled").message) for n in names)
    assert all(1.0 <= pull < 1.9 for pull, _ in times), times
    waited = sorted(total for _, total in times)
    if serial:  # the kubelet's default: one puller, the others in line behind it
        # (less the few milliseconds between the pods' creations)
        assert waited[1] >= 1.8 and waited[2] >= 2.7, times
    else:
        assert waited[2] < 1.9, times


def test_stop_ends_pulls_in_progress(real_cp: ControlPlane, tmp_path: Path) -> None:
    world = Cluster(real_cp, tmp_path / "nodes", nodes=["n1"], start_latency=0.01,
                    node_config={"n1": NodeConfig(image_pull_seconds=600)}).start()
    try:
        with api_client(world.kubeconfig) as admin:
            api = client.CoreV1Api(admin)
            # No tag: pulled Always, so the pull (and its 600 s fault) happens.
            name = _create(api, "n1", "docker.io/library/busybox", mounts=[])
            _event(api, name, "Pulling")
            # The kubelet's loop is not blocked by the pull: it still acts on others.
            other = _create(api, "n1", BASE_IMAGE, mounts=[])
            _running(api, other)
            started = time.monotonic()
            world.stop()
            assert time.monotonic() - started < 10
    finally:
        world.stop()


# -- pieces ---------------------------------------------------------------------------------


def test_images_of_other_registries_are_never_contacted(v1: client.CoreV1Api) -> None:
    name = _create(v1, "node-b", "docker.io/library/busybox", mounts=[])
    pod = _running(v1, name)
    assert pod.status.container_statuses[0].image_id.startswith(
        "docker.io/library/busybox@sha256:")
    assert [e.reason for e in _started_events(v1, name)] == [
        "Pulling", "Pulled", "Created", "Started"]


def test_a_pull_secret_without_its_data_is_invalid(v1: client.CoreV1Api) -> None:
    with pytest.raises(ApiException) as e:
        v1.create_namespaced_secret("default", {"metadata": {"name": "x"},
                                                "type": "kubernetes.io/dockerconfigjson",
                                                "data": {}})
    assert e.value.status == 422 and "data[.dockerconfigjson]" in e.value.body


def test_image_references_parse_and_node_settings_are_checked() -> None:
    ref = parse_image("busybox")
    assert (ref.registry, ref.repository, ref.tag, ref.reachable) == (
        "docker.io", "library/busybox", "latest", False)
    ref = parse_image(f"127.0.0.1:5000/t/app@sha256:{'a' * 64}")
    assert (ref.reachable, ref.reference) == (True, f"sha256:{'a' * 64}")
    with pytest.raises(ValueError, match="invalid reference format"):
        parse_image("Bad Name")
    with pytest.raises(ValueError, match="image_pull_seconds"):
        NodeConfig(image_pull_seconds=-1)
    with pytest.raises(ValueError, match="max_parallel_image_pulls"):
        NodeConfig(max_parallel_image_pulls=0)
