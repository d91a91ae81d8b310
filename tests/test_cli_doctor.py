"""`migrate doctor` against the real control plane with node agents, the real registry and
buildah."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from e2e.cluster.launcher import ControlPlane
from e2e.cluster.world import Cluster
from e2e.nodes import NodeConfig
from migrate.pipeline import nodes
from migrate.pipeline.doctor import _gate
from migrate.validation import validate
from tests.cluster import api_client, cordoned, node_agents
from tests.conftest import Result
from tests.registries import RegistryUnderTest

Cli = Callable[..., Result]
LIMITED = "limited-operator"
#: The limited operator may do everything but proxy to kubelets and create Jobs.
LIMITED_RULES = [{"apiGroups": [""], "verbs": ["*"],
                  "resources": ["pods", "pods/eviction", "pods/log", "nodes", "events",
                                "secrets"]},
                 {"apiGroups": ["apps"], "resources": ["*"], "verbs": ["*"]}]


@pytest.fixture(scope="module")
def cluster(real_cp: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    configs = {
        "node-c": NodeConfig(runtime="containerd://2.4.0"),
        "node-d": NodeConfig(ready=False),
        "node-e": NodeConfig(taints=[{"key": "maintenance", "value": "kernel",
                                      "effect": "NoSchedule"}]),
    }
    with node_agents(real_cp, tmp_path_factory.mktemp("nodes"),
                     nodes=("node-a", "node-b", "node-c", "node-d", "node-e"),
                     node_config=configs) as world:
        yield world


def rows(r: Result) -> dict[str, tuple[str, str, str]]:
    data: dict[str, Any] = json.loads(r.out)
    validate(data, "doctor.schema.json", "doctor -o json")
    return {c["check"]: (c["status"], c["detail"], c["hint"]) for c in data["checks"]}


def test_a_healthy_node_and_the_admin_pass(cli: Cli, cluster: Cluster,
                                           real_cp: ControlPlane) -> None:
    r = cli("doctor", "--kubeconfig", cluster.kubeconfig, "--node", "node-a", "-o", "json")
    assert r.code == 0, r.err
    got = rows(r)
    assert got["api"][0] == "PASS"
    assert real_cp.versions.kubernetes in got["api"][1]
    rbac = {k: v[0] for k, v in got.items() if k.startswith("rbac: ")}
    assert rbac == {
        "rbac: get pods": "PASS", "rbac: watch pods": "PASS", "rbac: create pods": "PASS",
        "rbac: delete pods": "PASS", "rbac: patch pods": "PASS",
        "rbac: create nodes/proxy": "PASS",
        "rbac: create jobs (batch)": "PASS", "rbac: create pods/eviction": "PASS",
        "rbac: patch nodes": "PASS"}
    assert got["node node-a: runtime"][:2] == ("PASS", "cri-o://1.30.4: checkpoint and restore")
    assert "checkpoint_restore" in got["node node-a: runtime"][2]
    assert got["node node-a: ready"][0] == got["node node-a: schedulable"][0] == "PASS"
    # The kubelet's default, read from its /configz.
    assert got["node node-a: image pulls"] == (
        "PASS", "one at a time (the kubelet's serializeImagePulls): restores onto this node "
        "pull their images in turn", None)
    assert not any(k.startswith("node node-b") for k in got)  # --node limits the nodes
    assert r.err == ""


def test_every_node_problem_is_a_row(cli: Cli, cluster: Cluster) -> None:
    r = cli("doctor", "--kubeconfig", cluster.kubeconfig, "-o", "json")
    got = rows(r)
    assert got["node node-c: runtime"] == (
        "WARN", "containerd://2.4.0: checkpoints, but neither a source nor a destination",
        "containerd can checkpoint (2.0+) but does not restore CRI-O checkpoint images "
        "(restore was removed in 2.4), and CRI-O does not restore its archives: neither a "
        "source nor a destination")
    assert got["node node-d: ready"][0] == "FAIL"
    assert got["node node-d: ready"][1].startswith("not Ready: ")
    assert got["node node-e: schedulable"][:2] == ("WARN", "maintenance=kernel:NoSchedule")
    assert not any(k.endswith(": image pulls") for k in got)  # no kubelet asked unless named
    assert r.code == 9
    assert r.err == ("error: 1 check failed\n"
                     "hint: each FAIL row has a hint; fix those and run migrate doctor again\n")


def test_a_node_not_ready_is_not_asked_about_its_pulls(cli: Cli, cluster: Cluster) -> None:
    got = rows(cli("doctor", "--kubeconfig", cluster.kubeconfig, "--node", "node-d", "-o",
                   "json"))
    assert got["node node-d: image pulls"] == ("SKIP", "not asked: the node is not Ready", None)


def test_cordoned_node_is_a_warning(cli: Cli, cluster: Cluster) -> None:
    with api_client(cluster.kubeconfig) as api, cordoned(client.CoreV1Api(api), ["node-b"]):
        got = rows(cli("doctor", "--kubeconfig", cluster.kubeconfig, "--node", "node-b",
                       "-o", "json"))
    status, detail, hint = got["node node-b: schedulable"]
    assert (status, detail.split(",")[0]) == ("WARN", "cordoned")
    assert "uncordon" in hint


@pytest.mark.parametrize(("at_once", "detail"), [(4, "4 at once (maxParallelImagePulls)"),
                                                 (None, "any number at once "
                                                        "(serializeImagePulls false)")])
def test_image_pulls_in_parallel(cli: Cli, cluster: Cluster, at_once: int | None,
                                 detail: str) -> None:
    cluster.configure_node("node-b", max_parallel_image_pulls=at_once)
    try:
        got = rows(cli("doctor", "--kubeconfig", cluster.kubeconfig, "--node", "node-b",
                       "-o", "json"))
    finally:
        cluster.configure_node("node-b", max_parallel_image_pulls=1)
    assert got["node node-b: image pulls"] == ("PASS", detail, None)


def test_rbac_denials(cli: Cli, cluster: Cluster, tmp_path: Path) -> None:
    kubeconfig = cluster.user_kubeconfig(LIMITED, LIMITED_RULES)
    r = cli("doctor", "--kubeconfig", kubeconfig, "--node", "node-a", "-o", "json")
    got = rows(r)
    assert got["rbac: create nodes/proxy"] == (
        "FAIL", "denied: needed to checkpoint through the API server (--via apiserver)",
        "grant create on nodes/proxy (`migrate deploy` emits the role the tool needs)")
    assert got["rbac: create jobs (batch)"] == (
        "WARN", "denied in namespace default: needed to build the image on the source node "
        "(--build-on node)",
        "grant create on jobs in API group batch (`migrate deploy` emits the role the tool "
        "needs)")
    assert got["rbac: create pods"][0] == "PASS"
    # Without nodes/proxy the kubelet's configuration cannot be read: a row says so.
    status, detail, _ = got["node node-a: image pulls"]
    assert (status, detail.split(":")[0]) == ("SKIP", "cannot read the kubelet's configuration")
    assert r.code == 9


def test_table_output(cli: Cli, cluster: Cluster) -> None:
    r = cli("doctor", "--kubeconfig", cluster.kubeconfig, "--node", "node-c")
    lines = r.out.splitlines()
    assert lines[0].split() == ["STATUS", "CHECK", "DETAIL"]
    assert any(line.startswith("WARN ") and "node node-c: runtime" in line for line in lines)
    assert "hints:" in lines
    assert lines[-1].endswith("0 failed, 0 skipped")
    assert r.code == 0


def test_unreachable_api_skips_the_cluster_checks(cli: Cli, tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "x",
        "clusters": [{"name": "x", "cluster": {"server": "https://127.0.0.1:9"}}],
        "contexts": [{"name": "x", "context": {"cluster": "x", "user": "x"}}],
        "users": [{"name": "x", "user": {"token": "not-a-real-token"}}]}))
    os.chmod(kubeconfig, stat.S_IRUSR | stat.S_IWUSR)
    r = cli("doctor", "--kubeconfig", kubeconfig, "-o", "json")
    got = rows(r)
    assert got["api"][0] == "FAIL"
    assert "cannot reach the API server" in got["api"][1]
    assert got["rbac"][0] == got["nodes"][0] == "SKIP"
    assert "not-a-real-token" not in r.out + r.err
    assert r.code == 9


def test_registry_reachable_and_authorised(cli: Cli, cluster: Cluster,
                                           tls_basic_registry: RegistryUnderTest) -> None:
    reg = tls_basic_registry
    base = ("doctor", "--kubeconfig", cluster.kubeconfig, "--node", "node-a", "-o", "json",
            "--registry", f"{reg.host}/ckpt", "--cert-dir", reg.cert_dir)
    got = rows(cli(*base, "--creds", f"{reg.username}:{reg.password}"))
    assert got[f"registry {reg.host}"] == (
        "PASS", f"reachable, authenticated as {reg.username} (push scope ckpt)", None)
    r = cli(*base, "--creds", f"{reg.username}:wrong-password")
    status, detail, _ = rows(r)[f"registry {reg.host}"]
    assert (status, detail) == ("FAIL", f"{reg.host}: login failed: HTTP 401 (UNAUTHORIZED: "
                                "authentication required) as 'alice'")
    assert "wrong-password" not in r.out + r.err
    assert r.code == 9


def test_registry_without_tls_verification(cli: Cli, cluster: Cluster,
                                           plain_registry: RegistryUnderTest) -> None:
    base = ("doctor", "--kubeconfig", cluster.kubeconfig, "--node", "node-a", "-o", "json",
            "--registry", plain_registry.host)
    assert rows(cli(*base))[f"registry {plain_registry.host}"][0] == "FAIL"
    got = rows(cli(*base, "--no-tls-verify"))
    assert got[f"registry {plain_registry.host}"][:2] == (
        "PASS", "reachable, anonymous access accepted (push scope migrate/doctor)")


def test_bad_registry_argument_is_a_usage_error(cli: Cli, cluster: Cluster) -> None:
    r = cli("doctor", "--kubeconfig", cluster.kubeconfig, "--registry", "just-a-name")
    assert (r.code, r.out) == (2, "")
    assert r.err == ("error: --registry 'just-a-name' does not start with a registry host\n"
                     "hint: use HOST[:PORT][/REPOSITORY], e.g. registry.example:5000/ckpt\n")


def test_buildah_missing_is_a_warning(cli: Cli, cluster: Cluster, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    r = cli("doctor", "--kubeconfig", cluster.kubeconfig, "--node", "node-a", "-o", "json")
    status, detail, _ = rows(r)["buildah"]
    assert status == "PASS" and detail.startswith("buildah 1.")
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing to find
    status, detail, hint = rows(cli("doctor", "--kubeconfig", cluster.kubeconfig, "--node",
                                    "node-a", "-o", "json"))["buildah"]
    assert (status, detail) == ("WARN", "buildah is not installed")
    assert hint.startswith("only --builder buildah needs it")


@pytest.mark.parametrize(("major", "minor", "status"), [
    ("1", "24", "FAIL"), ("1", "25", "WARN"), ("1", "29", "WARN"), ("1", "30", "PASS"),
    ("1", "33+", "PASS"), ("x", "y", "WARN"),
])
def test_the_version_decides_the_gate(major: str, minor: str, status: str) -> None:
    assert _gate({"major": major, "minor": minor, "gitVersion": f"v{major}.{minor}"}
                 ).status.value == status


@pytest.mark.parametrize(("runtime", "checkpoint", "restore"), [
    ("cri-o://1.30.4", True, True), ("containerd://1.7.20", False, False),
    ("containerd://2.0.1", True, False), ("containerd://2.4.0", True, False),
    ("docker://24.0.7", False, False), ("", False, False),
])
def test_runtime_classification(runtime: str, checkpoint: bool, restore: bool) -> None:
    rt = nodes.runtime_of({"status": {"nodeInfo": {"containerRuntimeVersion": runtime}}})
    assert (rt.can_checkpoint, rt.can_restore) == (checkpoint, restore)
