"""Runtimes as they ship in 2026 (issue 14): each state a destination can be in, driven
through `migrate pod`, `migrate drain` and `migrate doctor --probe` against the
real control plane with node agents configured that way, and the real registry.

For every state the tests assert the outcome, the exact error and hint, that a
refusal comes in seconds against a 300 s --timeout (a generous bound, measured
around the whole command: not a performance test), and that the source pod is
untouched (same uid, Running, on its node, no copy or temporary Secret left).
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from e2e.archives.archivegen import ArchiveSpec, build
from e2e.cluster.launcher import ControlPlane
from e2e.cluster.world import Cluster
from e2e.nodes import NodeConfig, RegistryConfig
from e2e.nodes.runtime_releases import crio_default_level
from migrate.adapters.registry.client import RegistryClient
from migrate.adapters.registry.reference import parse_reference
from migrate.pipeline import migration, nodes, probe, restore
from migrate.settings import load_settings
from migrate.validation import validate
from tests.cluster import api_client, node_agents, wait_for
from tests.conftest import Result
from tests.registries import RegistryPKI, RegistryUnderTest, _build_pki, _Stack

Cli = Callable[..., Result]
FAST = {"backoff": 0.2, "backoff_max": 1.0}
#: A refusal must come well inside this (the default --timeout is 300 s).
FAST_FAIL = 30.0
CRIO_FIX = ('[crio.checkpoint_restore] container_level_enabled = "checkpoint_restore" in a '
            "file in /etc/crio/crio.conf.d/")
CONTAINERD_FIX = ('[plugins."io.containerd.cri.v1.runtime"] '
                  "enable_experimental_restore_via_create = true in /etc/containerd/config.toml")
NODES = {
    "node-a": NodeConfig(**FAST),  # cri-o://1.30.4: the source of every test
    "node-drain": NodeConfig(**FAST),  # the source of the drains
    "crio-1-34-11": NodeConfig(runtime="cri-o://1.34.11", **FAST),
    "crio-1-34-12": NodeConfig(runtime="cri-o://1.34.12", **FAST),
    "crio-1-34-12-on": NodeConfig(runtime="cri-o://1.34.12", restore_level="checkpoint_restore",
                                  **FAST),
    "crio-none": NodeConfig(runtime="cri-o://1.36.4", restore_level="none", **FAST),
    "crio-1-29": NodeConfig(runtime="cri-o://1.29.13", **FAST),
    # enable_criu_support = false, on a release without [crio.checkpoint_restore]
    "crio-1-36-3-off": NodeConfig(runtime="cri-o://1.36.3", restore_level="none", **FAST),
    "ctrd-2-1": NodeConfig(runtime="containerd://2.1.9", **FAST),
    "ctrd-2-3-off": NodeConfig(runtime="containerd://2.3.4", **FAST),
    "ctrd-2-3-on": NodeConfig(runtime="containerd://2.3.4",
                              enable_experimental_restore_via_create=True, **FAST),
    "ctrd-2-4": NodeConfig(runtime="containerd://2.4.0", **FAST),
}


class World:
    """The node agents and the registries of the module."""

    def __init__(self, cluster: Cluster, v1: client.CoreV1Api, plain: RegistryUnderTest,
                 unlisted: RegistryUnderTest, untrusted: RegistryUnderTest,
                 untrusted_pki: RegistryPKI, basic: RegistryUnderTest,
                 flaky: RegistryUnderTest) -> None:
        self.cluster, self.v1 = cluster, v1
        self.plain, self.unlisted, self.untrusted, self.basic = plain, unlisted, untrusted, basic
        self.untrusted_pki, self.flaky = untrusted_pki, flaky
        self.count = 0

    def pod(self, node: str = "node-a", **spec: Any) -> tuple[str, str]:
        """A running bare pod on ``node``: (name, uid)."""
        self.count += 1
        name = f"p{self.count}"
        body = {"metadata": {"name": name, "labels": {"app": name}, "annotations": {
            "sim.migrate.dev/processes": json.dumps([{"argv": ["/bin/app"], "heap": "x"}])}},
            "spec": {"nodeName": node, "containers": [
                {"name": "counter", "image": "quay.io/example/app:1"}], **spec}}
        self.v1.create_namespaced_pod("default", body)
        pod = wait_for(lambda: (p := self.v1.read_namespaced_pod(name, "default")).status.phase
                       == "Running" and p, what=f"{name} Running")
        return name, pod.metadata.uid

    def untouched(self, name: str, uid: str, node: str = "node-a") -> None:
        """The source runs where it ran; no copy, claim or temporary Secret is left."""
        p = self.v1.read_namespaced_pod(name, "default")
        assert (p.metadata.uid, p.spec.node_name, p.status.phase) == (uid, node, "Running")
        assert "migrate.dev/claimed-by" not in (p.metadata.annotations or {})
        left = [q.metadata.name for q in self.v1.list_namespaced_pod("default").items
                if q.metadata.name.startswith(f"{name}-") and not q.metadata.deletion_timestamp]
        assert left == []
        wait_for(lambda: not [s for s in self.v1.list_namespaced_secret("default").items
                              if s.metadata.name.startswith("migrate-registry-")],
                 what="no temporary registry Secret left")


@pytest.fixture(scope="module")
def world(real_cp: ControlPlane, tmp_path_factory: pytest.TempPathFactory,
          plain_registry: RegistryUnderTest,
          tls_basic_registry: RegistryUnderTest, registry_pki: RegistryPKI) -> Iterator[World]:
    stack = _Stack()
    try:
        unlisted = stack.start(tmp_path_factory.mktemp("reg-unlisted"), None, tls=False,
                               auth=None)
        other_pki = _build_pki(tmp_path_factory.mktemp("other-pki"))
        untrusted = stack.start(tmp_path_factory.mktemp("reg-untrusted"), other_pki, tls=True,
                                auth=None)
        flaky = stack.start(tmp_path_factory.mktemp("reg-flaky"), None, tls=False, auth=None)
        # The nodes know the plain and the flaky registry as insecure, and trust the
        # session CA (tls_basic_registry's), not other_pki's.
        registries = RegistryConfig(insecure=(plain_registry.host, flaky.host),
                                    ca_files=(registry_pki.ca_cert,), timeout=2.0)
        with node_agents(real_cp, tmp_path_factory.mktemp("nodes"), nodes=list(NODES),
                         node_config=NODES, start_latency=0.05, stop_latency=0.05,
                         registries=registries) as cluster, \
                api_client(cluster.kubeconfig) as api:
            yield World(cluster, client.CoreV1Api(api), plain_registry, unlisted, untrusted,
                        other_pki, tls_basic_registry, flaky)
    finally:
        stack.close()


@pytest.fixture(autouse=True)
def _node_root(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    # The tool reads archives where the nodes' directories are "shared".
    monkeypatch.setenv("MIGRATE_NODE_ROOT", world.cluster.node_root)


def timed(run: Callable[[], Result]) -> tuple[Result, float]:
    t0 = time.monotonic()
    r = run()
    return r, time.monotonic() - t0


def error_and_hint(r: Result) -> tuple[str, str]:
    lines = [x for x in r.err.splitlines() if x.startswith(("error: ", "hint: "))]
    assert [x[:5] for x in lines[-2:]] == ["error", "hint:"], r.err
    return lines[-2].removeprefix("error: "), lines[-1].removeprefix("hint: ")


def migrate_pod(cli: Cli, world: World, pod: str, to: str, *args: str,
                registry: RegistryUnderTest | None = None) -> Result:
    reg = registry or world.plain
    creds = ["--creds", reg.creds] if reg.creds else []
    trust = ["--cert-dir", str(reg.cert_dir)] if reg.cert_dir else ["--no-tls-verify"]
    return cli("pod", pod, "--to", to, "--kubeconfig", world.cluster.kubeconfig, "--registry",
               f"{reg.host}/runtimes", *creds, *trust, "--timeout", "300", "-o", "json", *args)


def doctor_probe(cli: Cli, world: World, node: str, *args: str,
                 registry: RegistryUnderTest | None = None) -> Result:
    reg = registry or world.plain
    creds = ["--creds", reg.creds] if reg.creds else []
    trust = ["--cert-dir", str(reg.cert_dir)] if reg.cert_dir else ["--no-tls-verify"]
    return cli("doctor", "--kubeconfig", world.cluster.kubeconfig, "--node", "node-a",
               "--registry", f"{reg.host}/probes", *creds, *trust, "--probe", node,
               "--probe-source", "node-a", "--timeout", "300", "-o", "json", *args)


def probe_row(r: Result) -> dict[str, Any]:
    report = r.json()
    validate(report, "doctor.schema.json", "doctor -o json")
    (row,) = report["probes"]
    return dict(row)


# -- the facts the node agents follow ------------------------------------------------------


@pytest.mark.parametrize(("version", "level", "migrate_says"), [
    ((1, 25, 0), "none", "disabled"), ((1, 29, 13), "none", "disabled"),
    ((1, 30, 14), "checkpoint_restore", "on"), ((1, 30, 15), "checkpoint_only", "off"),
    ((1, 31, 13), "checkpoint_restore", "on"), ((1, 31, 14), "checkpoint_only", "off"),
    ((1, 32, 14), "checkpoint_only", "off"), ((1, 33, 14), "checkpoint_only", "off"),
    ((1, 34, 11), "checkpoint_restore", "on"), ((1, 34, 12), "checkpoint_only", "off"),
    ((1, 35, 6), "checkpoint_restore", "on"), ((1, 35, 7), "checkpoint_only", "unsettled"),
    ((1, 36, 3), "checkpoint_restore", "on"), ((1, 36, 4), "checkpoint_only", "off"),
    ((1, 37, 0), "checkpoint_restore", "on"), ((1, 37, 1), "checkpoint_only", "unsettled"),
    ((1, 38, 0), "checkpoint_only", "off"),
])
def test_each_crio_release_has_its_default(version: tuple[int, int, int], level: str,
                                           migrate_says: str) -> None:
    # The node agents and migrate's doctor read the same releases the same way.
    assert crio_default_level(version) == level
    assert NodeConfig(runtime="cri-o://{}.{}.{}".format(*version)).level == level
    assert nodes.crio_default(version) == migrate_says


# -- doctor without --probe: the release's default ------------------------------------------


def test_doctor_warns_where_the_release_defaults_to_restore_off(cli: Cli, world: World) -> None:
    r = cli("doctor", "--kubeconfig", world.cluster.kubeconfig, "-o", "json")
    rows = {c["check"]: c for c in r.json()["checks"]}
    assert r.code == 0, r.err  # WARN rows do not fail doctor
    got = {n: (rows[f"node {n}: runtime"]["status"], rows[f"node {n}: runtime"]["detail"])
           for n in NODES}
    assert got == {
        "node-a": ("PASS", "cri-o://1.30.4: checkpoint and restore"),
        "node-drain": ("PASS", "cri-o://1.30.4: checkpoint and restore"),
        "crio-1-34-11": ("PASS", "cri-o://1.34.11: checkpoint and restore"),
        "crio-1-34-12": ("WARN", "cri-o://1.34.12: checkpoint only by default"),
        "crio-1-34-12-on": ("WARN", "cri-o://1.34.12: checkpoint only by default"),
        "crio-none": ("WARN", "cri-o://1.36.4: checkpoint only by default"),
        "crio-1-29": ("WARN", "cri-o://1.29.13: checkpoint and restore off by default"),
        "crio-1-36-3-off": ("PASS", "cri-o://1.36.3: checkpoint and restore"),
        "ctrd-2-1": ("WARN", "containerd://2.1.9: checkpoints, but neither a source nor a destination"),
        "ctrd-2-3-off": ("WARN", "containerd://2.3.4: checkpoints, but neither a source nor a destination"),
        "ctrd-2-3-on": ("WARN", "containerd://2.3.4: checkpoints, but neither a source nor a destination"),
        "ctrd-2-4": ("WARN", "containerd://2.4.0: checkpoints, but neither a source nor a destination"),
    }
    assert rows["node crio-1-34-12: runtime"]["hint"] == (
        'CRI-O 1.34.12 defaults to container_level_enabled = "checkpoint_only": it '
        f"checkpoints but refuses restores; set {CRIO_FIX} (e.g. "
        "/etc/crio/crio.conf.d/99-checkpoint-restore.conf) and restart CRI-O, or start it "
        "with --checkpoint-restore-level=checkpoint_restore")
    assert "[crio.runtime] enable_criu_support = true" in rows[
        "node crio-1-29: runtime"]["hint"]


# -- each destination state, through pod, drain and probe ------------------------------------

#: destination -> (restores?, the runtime's own message in the probe row, hint fragment)
STATES: dict[str, tuple[bool, str, str]] = {
    "crio-1-34-11": (True, "", ""),
    "crio-1-34-12-on": (True, "", ""),
    "crio-1-34-12": (False, "CreateContainerError: no command specified", CRIO_FIX),
    "crio-none": (False, "CreateContainerError: no command specified", CRIO_FIX),
    "crio-1-29": (False, "CreateContainerError: no command specified",
                  "set [crio.runtime] enable_criu_support = true in a file in "
                  "/etc/crio/crio.conf.d/"),
    # Proven on a real CRI-O 1.36.3 with the support off (test_real_node.py).
    "crio-1-36-3-off": (False, "CreateContainerError: no command specified",
                        "set [crio.runtime] enable_criu_support = true in a file in "
                        "/etc/crio/crio.conf.d/ and restart CRI-O, with criu on its PATH"),
    "ctrd-2-1": (False, 'CreateContainerError: failed to read "status.dump": open '
                 "/tmp/checkpoint", "containerd restores only archives in its own layout"),
    "ctrd-2-3-on": (False, 'CreateContainerError: failed to read "status.dump": open '
                    "/tmp/checkpoint", "containerd restores only archives in its own layout"),
    "ctrd-2-3-off": (False, "CreateContainerError: checkpoint restore via CreateContainer is "
                     "disabled by configuration", CONTAINERD_FIX),
    "ctrd-2-4": (False, 'CreateContainerError: failed to generate container "', CONTAINERD_FIX),
}


@pytest.mark.parametrize("node", list(STATES))
def test_migrate_pod_to_each_runtime_state(cli: Cli, world: World, node: str) -> None:
    restores, _, fix = STATES[node]
    name, uid = world.pod()
    r, seconds = timed(lambda: migrate_pod(cli, world, name, node))
    if restores:
        assert r.code == 0, r.err
        restored = world.v1.read_namespaced_pod(r.json()["destination_pod"], "default")
        assert (restored.spec.node_name, restored.status.phase) == (node, "Running")
        return
    error, hint = error_and_hint(r)
    assert seconds < FAST_FAIL, seconds
    assert r.code == 6, r.err
    if node.startswith("ctrd"):  # refused before anything is done: no journal, no report
        version = NODES[node].runtime.removeprefix("containerd://")
        assert error == (f"node {node} cannot restore checkpoints: containerd can checkpoint "
                         "(2.0+) but does not restore CRI-O checkpoint images (restore was "
                         "removed in 2.4), and CRI-O does not restore its archives: neither a "
                         "source nor a destination"), version
        assert hint.startswith("pick a CRI-O node (`migrate doctor` lists them); containerd "
                               f"2.2.7+/2.3.4+ restore only with {CONTAINERD_FIX}"), hint
    else:
        runtime = NODES[node].runtime
        assert error == (f"verify: the restore of counter on {node} failed: "
                         f"CreateContainerError: no command specified ({runtime} on {node} "
                         "does not restore checkpoints: it started the checkpoint image as an "
                         "ordinary image)")
        assert fix in hint and hint.endswith(f"`migrate doctor --probe {node}` proves it")
        report = r.json()
        assert report["outcome"] == "rolled-back"
        assert [(s["name"], s["status"]) for s in report["stages"]][3:5] == [
            ("create", "undone"), ("verify", "failed")]  # its pod deleted
    world.untouched(name, uid)


@pytest.mark.parametrize("node", list(STATES))
def test_migrate_drain_to_each_runtime_state(cli: Cli, world: World, node: str) -> None:
    restores, _, fix = STATES[node]
    name, uid = world.pod("node-drain")
    try:
        r, seconds = timed(lambda: cli(
            "drain", "node-drain", "--to", node, "--pod-selector", f"app={name}", "--skip-rest",
            "--kubeconfig", world.cluster.kubeconfig, "--registry", f"{world.plain.host}/drains",
            "--no-tls-verify", "--timeout", "300", "-o", "json"))
    finally:
        cli("uncordon", "node-drain", "--kubeconfig", world.cluster.kubeconfig)
    if restores:
        assert r.code == 0, r.err
        pod = next(p for p in r.json()["pods"] if p["name"] == name)
        assert pod["outcome"] == "migrated"
        return
    assert seconds < FAST_FAIL, seconds
    error, hint = error_and_hint(r)
    if node.startswith("ctrd"):  # checked before the cordon: nothing changed
        assert r.code == 6, r.err
        assert error == (f"--to {node}: cannot restore checkpoints: containerd can checkpoint "
                         "(2.0+) but does not restore CRI-O checkpoint images (restore was "
                         "removed in 2.4), and CRI-O does not restore its archives: neither a "
                         "source nor a destination")
        assert hint == ("pick another node, or let the drain choose (omit --to); containerd "
                        f"2.2.7+/2.3.4+ restore only with {CONTAINERD_FIX} (removed in 2.4), "
                        "and only archives in containerd's own layout (status.dump): restore "
                        "CRI-O checkpoints on a CRI-O node")
    else:
        assert r.code == 10, r.err
        report = r.json()
        validate(report, "drain.schema.json", "drain -o json")
        pod = next(p for p in report["pods"] if p["name"] == name)
        assert pod["outcome"] == "failed"
        assert pod["error"].startswith(f"verify: the restore of counter on {node} failed: "
                                       "CreateContainerError: no command specified ("), pod
        assert fix in pod["hint"], pod["hint"]
        assert f"  default/{name}: " not in r.out  # -o json: the hint is in the report
    world.untouched(name, uid, "node-drain")


@pytest.mark.parametrize("node", list(STATES))
def test_doctor_probe_of_each_runtime_state(cli: Cli, world: World, node: str) -> None:
    restores, message, fix = STATES[node]
    before = {p.metadata.name for p in world.v1.list_namespaced_pod("default").items}
    r, seconds = timed(lambda: doctor_probe(cli, world, node))
    row = probe_row(r)
    assert row["source"] == "node-a" and row["node"] == node
    assert set(row["seconds"]) == ({"start", "checkpoint", "build", "restore", "cleanup"})
    assert row["leftovers"] == []
    if restores:
        assert (row["status"], row["stage"], row["message"]) == ("PASS", None, None), json.dumps(row)
        assert r.code == 0, r.err
    else:
        assert seconds < FAST_FAIL, seconds
        assert r.code == 9, r.err
        assert error_and_hint(r)[0] == "1 probe failed"
        assert (row["status"], row["stage"]) == ("FAIL", "restore")
        assert row["message"].startswith(message), row["message"]
        assert fix in row["hint"], row["hint"]
    # Everything the probe made is gone: pods (deleted, and soon away), archive, image.
    wait_for(lambda: {p.metadata.name for p in world.v1.list_namespaced_pod(
        "default").items} <= before, what="the probe's pods gone")
    assert not list((world.cluster.node_dir("node-a") / "var/lib/kubelet/checkpoints")
                    .glob("checkpoint-migrate-probe-*"))
    image = parse_reference(row["image"])
    answer = world.plain.http().request(
        "GET", f"{world.plain.url}/v2/{image.repository}/manifests/{image.digest}")
    assert answer.status == 404


def test_the_probe_pod_runs_the_pause_image_the_node_holds(world: World) -> None:
    node = world.v1.read_node("node-a").to_dict()
    assert probe.pause_image({"status": {"images": [
        {"names": [i["names"][0]]} for i in node["status"]["images"]]}}) == \
        "registry.k8s.io/pause:3.10"
    assert probe.pause_image({"status": {"images": []}}) == probe.DEFAULT_PAUSE_IMAGE


def test_a_human_probe_report(cli: Cli, world: World) -> None:
    r = cli("doctor", "--kubeconfig", world.cluster.kubeconfig, "--node", "node-a", "--registry",
            f"{world.plain.host}/probes", "--no-tls-verify", "--probe",
            "crio-1-34-11,crio-1-34-12", "--probe-source", "node-a")
    assert r.code == 9
    lines = r.out.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("PROBE"))
    assert lines[head].split() == ["PROBE", "NODE", "FROM", "FAILED", "AT", "START",
                                   "CHECKPOINT", "BUILD", "RESTORE", "CLEANUP"]
    assert lines[head + 1].split()[:3] == ["PASS", "crio-1-34-11", "node-a"]
    assert lines[head + 2].split()[:4] == ["FAIL", "crio-1-34-12", "node-a", "restore"]
    assert "  crio-1-34-12: CreateContainerError: no command specified" in lines
    assert lines[-1] == "probes: 1 passed, 1 failed"
    assert r.err.splitlines()[-2:] == [
        "error: 1 probe failed",
        "hint: each FAIL row has a hint; fix those and run migrate doctor again"]


def test_probe_usage(cli: Cli, world: World) -> None:
    r = cli("doctor", "--kubeconfig", world.cluster.kubeconfig, "--probe", "crio-1-34-11")
    assert (r.code, r.err.splitlines()[0]) == (
        2, "error: --probe needs --registry REG: the probe pushes its checkpoint image there")
    r = cli("doctor", "--kubeconfig", world.cluster.kubeconfig, "--probe-image", "x")
    assert (r.code, r.err.splitlines()[0]) == (
        2, "error: --probe-image and --probe-source go with --probe NODE")


# -- image pulls: a cause no retry fixes fails at once; a transient one is waited out ------


def test_a_registry_the_nodes_reach_over_https_only(cli: Cli, world: World) -> None:
    name, uid = world.pod()
    r, seconds = timed(lambda: migrate_pod(cli, world, name, "crio-1-34-11",
                                           registry=world.unlisted))
    assert seconds < FAST_FAIL and r.code == 7, r.err
    error, hint = error_and_hint(r)
    assert error.startswith("verify: crio-1-34-11 cannot pull the checkpoint image of counter: "
                            "the registry answers plain HTTP and the node speaks HTTPS: "
                            "initializing source docker://"), \
        error
    assert error.endswith("http: server gave HTTP response to HTTPS client")
    assert hint == ("list it as insecure in the nodes' /etc/containers/registries.conf "
                    f'([[registry]] location = "{world.unlisted.host}", insecure = true; '
                    f"containerd: a hosts.toml in /etc/containerd/certs.d/{world.unlisted.host}/)"
                    ", or serve it over TLS")
    assert r.json()["outcome"] == "rolled-back"
    world.untouched(name, uid)
    # The probe finds the same, with the kubelet's own words.
    r, seconds = timed(lambda: doctor_probe(cli, world, "crio-1-34-11",
                                            registry=world.unlisted))
    row = probe_row(r)
    assert seconds < FAST_FAIL and r.code == 9
    assert (row["stage"], row["hint"]) == ("restore", hint)
    assert row["message"].startswith("ErrImagePull: initializing source docker://")


def test_a_registry_certificate_the_nodes_do_not_trust(cli: Cli, world: World) -> None:
    name, uid = world.pod("node-drain")
    try:
        r, seconds = timed(lambda: cli(
            "drain", "node-drain", "--to", "crio-1-34-11", "--pod-selector", f"app={name}",
            "--skip-rest", "--kubeconfig", world.cluster.kubeconfig, "--registry",
            f"{world.untrusted.host}/drains", "--cert-dir", str(world.untrusted.cert_dir),
            "--timeout", "300", "-o", "json"))
    finally:
        cli("uncordon", "node-drain", "--kubeconfig", world.cluster.kubeconfig)
    assert seconds < FAST_FAIL and r.code == 10, r.err
    pod = next(p for p in r.json()["pods"] if p["name"] == name)
    assert pod["error"].startswith("verify: crio-1-34-11 cannot pull the checkpoint image of "
                                   "counter: the node does not trust the registry's "
                                   "certificate: "), pod["error"]
    assert "x509: certificate signed by unknown authority" in pod["error"]
    assert pod["hint"] == (f"put the registry's CA in /etc/containers/certs.d/"
                           f"{world.untrusted.host}/ca.crt on each node (containerd: "
                           f"/etc/containerd/certs.d/{world.untrusted.host}/), or use a "
                           "certificate the nodes trust")
    assert pod["attempts"] == 1  # not retried as a transient failure
    world.untouched(name, uid, "node-drain")
    r = doctor_probe(cli, world, "crio-1-34-11", registry=world.untrusted)
    row = probe_row(r)
    assert (row["status"], row["stage"], row["hint"]) == ("FAIL", "restore", pod["hint"])


def test_wrong_pull_credentials(cli: Cli, world: World) -> None:
    docker_config = {"auths": {world.basic.host: {"auth": base64.b64encode(
        b"alice:wrong").decode()}}}
    world.v1.create_namespaced_secret("default", {
        "metadata": {"name": "stale-pull"}, "type": "kubernetes.io/dockerconfigjson",
        "data": {".dockerconfigjson": base64.b64encode(json.dumps(docker_config).encode())
                 .decode()}})
    name, uid = world.pod()
    r, seconds = timed(lambda: migrate_pod(cli, world, name, "crio-1-34-11",
                                           "--registry-secret", "stale-pull",
                                           registry=world.basic))
    assert seconds < FAST_FAIL and r.code == 7, r.err
    error, hint = error_and_hint(r)
    assert error.startswith("verify: crio-1-34-11 cannot pull the checkpoint image of counter: "
                            "the node has no valid credentials for the registry: "), error
    assert hint.startswith("give migrate credentials that can pull from "
                           f"{world.basic.host} (--creds or --authfile)")
    world.untouched(name, uid)


def test_an_image_the_registry_no_longer_has(cli: Cli, world: World,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    real = migration.STAGE_FUNCTIONS["create"]

    def delete_then_create(run: migration.Run) -> dict[str, Any]:
        settings = run.settings
        for info in run.built.images.values():
            ref = parse_reference(info.reference)
            assert RegistryClient(ref, settings.registry).delete_manifest(info.digest)
        return real(run)

    monkeypatch.setitem(migration.STAGE_FUNCTIONS, "create", delete_then_create)
    name, uid = world.pod()
    r, seconds = timed(lambda: migrate_pod(cli, world, name, "crio-1-34-11",
                                           registry=world.basic))
    assert seconds < FAST_FAIL and r.code == 7, r.err
    error, hint = error_and_hint(r)
    assert error.startswith("verify: crio-1-34-11 cannot pull the checkpoint image of counter: "
                            "the registry does not have the image the node asked for: "), error
    assert "manifest unknown" in error
    assert hint.startswith("check that the nodes reach the same registry as migrate at "
                           f"{world.basic.host}")
    # The pull Secret made from --creds was journaled and rolled back with the pod.
    actions = [a["action"] for a in r.json()["actions"]]
    assert "created Secret" in actions
    assert any(a.startswith("rollback: deleted Secret default/migrate-registry-")
               for a in actions), actions
    world.untouched(name, uid)


def test_a_registry_that_is_down_is_waited_for_until_the_timeout(
        cli: Cli, world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    real = migration.STAGE_FUNCTIONS["create"]

    def stop_then_create(run: migration.Run) -> dict[str, Any]:
        world.flaky.registry.stop()
        return real(run)

    monkeypatch.setitem(migration.STAGE_FUNCTIONS, "create", stop_then_create)
    name, uid = world.pod()
    try:
        r, seconds = timed(lambda: migrate_pod(cli, world, name, "crio-1-34-11", "--timeout",
                                               "4", registry=world.flaky))
    finally:
        world.flaky.registry.start()
    assert r.code == 6, r.err
    assert seconds >= 4  # a registry can come back: the whole --timeout is waited
    error, hint = error_and_hint(r)
    assert error.startswith("verify: pod default/") and "timed out after 4 s; last state: " \
        "counter: " in error, error
    assert "connect: connection refused" in error or "Back-off pulling image" in error
    assert hint == "raise --timeout, or look at its events (kubectl describe)"
    world.untouched(name, uid)


def test_the_restored_pod_carries_the_pull_secrets(cli: Cli, world: World) -> None:
    name, _ = world.pod(imagePullSecrets=[{"name": "base-pull"}])
    r = migrate_pod(cli, world, name, "crio-1-34-11", registry=world.basic)
    assert r.code == 0, r.err
    restored = world.v1.read_namespaced_pod(r.json()["destination_pod"], "default")
    secrets_ = [s.name for s in restored.spec.image_pull_secrets]
    assert secrets_[0] == "base-pull" and secrets_[1].startswith("migrate-registry-")
    assert restored.status.phase == "Running"
    actions = r.json()["actions"]
    assert [a["name"] for a in actions if a["action"] == "created Secret"] == [secrets_[1]]
    assert [a["name"] for a in actions if a["action"] == "deleted Secret"] == [secrets_[1]]
    wait_for(lambda: not [s for s in world.v1.list_namespaced_secret("default").items
                          if s.metadata.name == secrets_[1]], what="the pull Secret removed")
    # The credentials are in the Secret only: never in the journal or the output.
    assert world.basic.password not in r.out + r.err
    assert world.basic.password is not None
    for journal in Path(load_settings().state_dir).rglob("*.json"):
        assert world.basic.password not in journal.read_text()


def test_an_interrupted_probe_removes_what_it_made(cli: Cli, world: World,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(*args: Any, **kw: Any) -> None:
        raise KeyboardInterrupt  # Ctrl-C while the restored pod starts

    seen: dict[str, Any] = {}
    real_cleanup = probe._cleanup

    def cleanup(p: Any) -> None:
        seen.update(made=list(p.made), archive=p.archive, pushed=p.pushed)
        real_cleanup(p)

    monkeypatch.setattr(restore, "wait_restored", interrupted)
    monkeypatch.setattr(probe, "_cleanup", cleanup)
    r = doctor_probe(cli, world, "crio-1-34-11")
    assert r.code == 130, r.err
    assert [kind for kind, _ in seen["made"]] == ["Pod", "Pod"]  # probe and restored pod
    for _, name in seen["made"]:
        wait_for(lambda n=name: not [p for p in world.v1.list_namespaced_pod("default").items
                                     if p.metadata.name == n], what=f"{name} gone")
    assert seen["archive"] is not None and not seen["archive"].exists()
    image = parse_reference(seen["pushed"])
    answer = world.plain.http().request(
        "GET", f"{world.plain.url}/v2/{image.repository}/manifests/{image.digest}")
    assert answer.status == 404


# -- containerd's own restore path on the node agents --------------------------------------


def _containerd_checkpoint_image(cli: Cli, world: World, tmp_path: Path, base: str) -> str:
    """A checkpoint image in containerd's layout (status.dump) whose base image is ``base``."""
    archive = build(ArchiveSpec(engine="containerd", container="app", image=base,
                                image_ref=base, extra_members={"status.dump": b"{}"}),
                    tmp_path / "containerd.tar")
    r = cli("build", archive, "--image", f"{world.plain.host}/containerd/app:{tmp_path.name}",
            "--no-tls-verify", "--containerd", "-o", "json")
    assert r.code == 0, r.err
    return str(r.json()["reference"])


def _waiting(world: World, name: str) -> tuple[str, str]:
    def check() -> tuple[str, str] | None:
        statuses = world.v1.read_namespaced_pod(name, "default").status.container_statuses
        waiting = statuses[0].state.waiting if statuses else None
        return (waiting.reason, waiting.message) if waiting and waiting.message else None

    found: tuple[str, str] = wait_for(check, what=f"{name} waiting")
    return found


def test_containerd_pulls_the_base_image_without_the_pods_secrets(
        cli: Cli, world: World, tmp_path: Path) -> None:
    base = f"{world.basic.host}/base/app:1"
    image = _containerd_checkpoint_image(cli, world, tmp_path, base)
    auth = base64.b64encode(f"{world.basic.creds}".encode()).decode()
    world.v1.create_namespaced_secret("default", {
        "metadata": {"name": "base-creds"}, "type": "kubernetes.io/dockerconfigjson",
        "data": {".dockerconfigjson": base64.b64encode(json.dumps(
            {"auths": {world.basic.host: {"auth": auth}}}).encode()).decode()}})
    world.v1.create_namespaced_pod("default", {
        "metadata": {"name": "ctrd-base"}, "spec": {
            "nodeName": "ctrd-2-1", "imagePullSecrets": [{"name": "base-creds"}],
            "containers": [{"name": "app", "image": image}]}})
    reason, message = _waiting(world, "ctrd-base")
    assert reason == "CreateContainerError"
    assert message.startswith(f"failed to pull checkpoint base image {base}: reading manifest "
                              f"1 in {world.basic.host}/base/app: "), message
    assert message.endswith("authentication required")


def test_containerd_restores_its_own_archive(cli: Cli, world: World, tmp_path: Path) -> None:
    image = _containerd_checkpoint_image(cli, world, tmp_path, "quay.io/example/base:1")
    for node in ("ctrd-2-1", "ctrd-2-3-on"):
        name = f"ctrd-own-{node}"
        world.v1.create_namespaced_pod("default", {
            "metadata": {"name": name}, "spec": {
                "nodeName": node, "containers": [{"name": "app", "image": image}]}})
        pod = wait_for(lambda n=name: (p := world.v1.read_namespaced_pod(n, "default"))
                       .status.phase == "Running" and p, what=f"{name} restored")
        assert "sim.migrate.dev/restored.app" in pod.metadata.annotations
    name = "ctrd-own-off"
    world.v1.create_namespaced_pod("default", {"metadata": {"name": name}, "spec": {
        "nodeName": "ctrd-2-3-off", "containers": [{"name": "app", "image": image}]}})
    assert _waiting(world, name) == (
        "CreateContainerError",
        "checkpoint restore via CreateContainer is disabled by configuration")
