"""Issue 15: an operator's first hour, against the real control plane and a real registry.

Each test reproduces one numbered problem from the user's side (the CLI's
real boundary, or the console scripts) and checks what it does now: the
exact error and hint, the exit code, and that nothing moved (no checkpoint on
the node, no journal, no object) when it refuses.

The cluster: node agents (tests/cluster.py) on the session's control plane.
node-a and node-b run CRI-O that restores; node-c runs containerd 2.4 (it
checkpoints; nothing it writes is restorable by CRI-O); node-d runs a CRI-O
whose restore is off (checkpoint_only): the restore fails at verify, which is
how a run fails late.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from e2e.archives.archivegen import ArchiveSpec, build
from e2e.cluster.launcher import ControlPlane
from e2e.cluster.world import Cluster
from e2e.nodes import NodeConfig, RegistryConfig
from e2e.nodes.checkpoints import CHECKPOINT_DIR
from migrate.pipeline import claims
from migrate.pipeline.drain.plan import BARE_POD
from migrate.pipeline.journal import Journal
from migrate.validation import validate
from tests.cluster import Kubectl, api_client, node_agents, wait_for
from tests.conftest import Result, interrupt_at, journal_id_of, run_binary
from tests.registries import RegistryUnderTest
from tests.test_migrate_pod import assert_untouched, make_pod, pods

Cli = Callable[..., Result]
BIN = Path(sys.executable).parent
TOOL = "localhost/migrate:test"


@pytest.fixture(scope="module")
def cluster(real_cp: ControlPlane, tmp_path_factory: pytest.TempPathFactory,
        plain_registry: RegistryUnderTest, cp_kubectl: Kubectl) -> Iterator[Cluster]:
    configs = {"node-c": NodeConfig(runtime="containerd://2.4.0"),
               "node-d": NodeConfig(restore_level="checkpoint_only")}
    with node_agents(real_cp, tmp_path_factory.mktemp("nodes"),
                     nodes=("node-a", "node-b", "node-c", "node-d"), node_config=configs,
                     start_latency=0.05, stop_latency=0.05,
                     registries=RegistryConfig(insecure=(plain_registry.host,))) as cluster:
        try:
            yield cluster
        finally:  # what the tests made outside namespace default
            cp_kubectl(real_cp.admin_kubeconfig, "delete", "--ignore-not-found", "--wait=false",
                       "namespace/shop", "namespace/tools", "clusterrole/migrate",
                       "clusterrolebinding/migrate:tools")


@pytest.fixture(autouse=True)
def _environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # A newcomer's environment: neither is set (the demo sets the first quietly).
    monkeypatch.delenv("MIGRATE_NODE_ROOT", raising=False)
    monkeypatch.delenv("MIGRATE_TOOL_IMAGE", raising=False)


@pytest.fixture
def shared(cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """The nodes' checkpoint directories are readable here."""
    monkeypatch.setenv("MIGRATE_NODE_ROOT", cluster.node_root)


@pytest.fixture
def migrate(cli: Cli, cluster: Cluster, plain_registry: RegistryUnderTest) -> Callable[..., Result]:
    def run(pod: str, *args: str) -> Result:
        return cli("pod", pod, "--kubeconfig", cluster.kubeconfig, "--registry",
                   f"{plain_registry.host}/first", "--no-tls-verify", "--timeout", "20",
                   "--delete-emptydir-data", *args)
    return run


def checkpoint_dir(cluster: Cluster, node: str) -> Path:
    """The node's /var/lib/kubelet/checkpoints on this machine."""
    return cluster.node_path(node, CHECKPOINT_DIR)


def archives(cluster: Cluster, node: str) -> list[str]:
    """The checkpoint archives on a node."""
    directory = checkpoint_dir(cluster, node)
    return sorted(p.name for p in directory.glob("*.tar")) if directory.is_dir() else []


def every_pod(v1: client.CoreV1Api) -> list[str]:
    """Pods of default, those being deleted too."""
    return [p.metadata.name for p in v1.list_namespaced_pod("default").items]


def journals() -> list[str]:
    return [j.id for j in Journal.history(Path(os.environ["MIGRATE_STATE_DIR"]))]


def lines(r: Result) -> list[str]:
    return r.err.splitlines()




# -- 1. the default build location: decided, and proved, before the checkpoint ----------------


NOWHERE = ["error: the image build has nowhere to run: the archives of node-a are not "
           "readable here (this machine is not node-a and MIGRATE_NODE_ROOT is not set), and "
           "a build on the node needs the tool's container image",
           "hint: give --tool-image REF (or MIGRATE_TOOL_IMAGE): the migrate image, built from "
           "the Containerfile and pushed; or set MIGRATE_NODE_ROOT to where this machine sees "
           "each node's files (e.g. /mnt/nodes/{node}), or run migrate on node-a"]


def test_1_no_place_to_build_is_refused_before_the_checkpoint(
        migrate: Callable[..., Result], v1: client.CoreV1Api, cluster: Cluster) -> None:
    """`--dry-run` printed a plan and exited 0; the real run checkpointed, then failed
    with `--build-on node needs the tool's container image`, the archive left behind."""
    pod = make_pod(v1, "nowhere")
    before = archives(cluster, "node-a")
    r = migrate("nowhere", "--to", "node-b", "--dry-run")
    assert (r.code, r.out, lines(r)) == (2, "", NOWHERE)
    r = migrate("nowhere", "--to", "node-b")
    assert (r.code, r.out, lines(r)) == (2, "", NOWHERE)
    assert archives(cluster, "node-a") == before  # nothing was checkpointed
    assert journals() == []  # nothing was started
    assert_untouched(v1, "nowhere", pod.metadata.uid)
    r = migrate("nowhere", "--to", "node-b", "--build-on", "node")
    assert lines(r) == ["error: --build-on node needs the tool's container image",
                        "hint: give --tool-image REF (or MIGRATE_TOOL_IMAGE): the migrate "
                        "image, built from the Containerfile and pushed"]
    r = migrate("nowhere", "--to", "node-b", "--build-on", "local")
    assert (r.code, lines(r)[0]) == (2, "error: --build-on local: the archives of node-a are "
                                     "not readable here: this machine is not node-a and "
                                     "MIGRATE_NODE_ROOT is not set")


def test_1_the_plan_says_where_the_build_runs(migrate: Callable[..., Result],
                                              v1: client.CoreV1Api, cluster: Cluster,
                                              plain_registry: RegistryUnderTest,
                                              pod_plain_registry: RegistryUnderTest,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    make_pod(v1, "planned")
    # The build would run in a Job, whose pod cannot reach a registry on loopback.
    r = migrate("planned", "--to", "node-b", "--dry-run", "--tool-image", TOOL)
    assert (r.code, lines(r)[0]) == (2, (
        "error: the image build runs in a Job on the node (the archives are not readable "
        f"here), and the Job's pod cannot reach the registry {plain_registry.host}: a "
        "loopback address is the pod's own"))
    r = migrate("planned", "--to", "node-b", "--dry-run", "--tool-image", TOOL, "-o", "json",
                "--registry", f"{pod_plain_registry.host}/first")
    assert r.code == 0, r.err
    plan = r.json()
    validate(plan, "pod.schema.json", "pod --dry-run -o json")  # item 10: it did not match
    assert (plan["outcome"], plan["id"], plan["dry_run"]) == ("planned", None, True)
    assert (plan["plan"]["build_on"], plan["plan"]["build_from"]) == ("node", TOOL)
    assert [s["status"] for s in plan["stages"]] == ["done"] + ["pending"] * 6
    monkeypatch.setenv("MIGRATE_NODE_ROOT", cluster.node_root)
    r = migrate("planned", "--to", "node-b", "--dry-run")
    assert r.code == 0, r.err
    row = r.out.splitlines()[1].split()
    assert row[:6] == ["default/planned", "node-a", "node-b", "counter", "delete", "here"]
    assert row[6] == f"({checkpoint_dir(cluster, 'node-a')})"
    assert r.out.endswith("dry run: preflight passed, nothing changed\n")
    assert journals() == []


# -- 2. an interrupted migration is named, never retried into an API conflict -------------------


def test_2_a_retry_after_ctrl_c_names_the_run(migrate: Callable[..., Result], cli: Cli,
                                              v1: client.CoreV1Api, cluster: Cluster,
                                              shared: None,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Each retry used to take a new checkpoint, then fail with `pods "solo2-restored"
    already exists` (exit 6)."""
    pod = make_pod(v1, "solo2")
    before = archives(cluster, "node-a")
    with monkeypatch.context() as m:
        interrupt_at(m, "verify")
        r = migrate("solo2", "--to", "node-b")
    assert r.code == 130
    run = journal_id_of(r.err)
    taken = archives(cluster, "node-a")
    (made,) = set(taken) - set(before)
    for _ in range(2):
        r = migrate("solo2", "--to", "node-b")
        assert (r.code, r.out, lines(r)) == (2, "", [
            f"error: pod default/solo2 is claimed by migration {run}, which was interrupted",
            f"hint: `migrate resume {run}` continues it, `migrate rollback {run}` undoes it "
            "and releases the pod"])
    assert archives(cluster, "node-a") == taken  # no new checkpoint
    # The drain leaves it alone and says why.
    r = cli("drain", "node-a", "--dry-run", "--kubeconfig", cluster.kubeconfig, "-o", "json")
    entry = next(p for p in r.json()["pods"] if p["name"] == "solo2")
    assert (entry["action"], entry["reason"]) == (
        "blocked", f"claimed by migration {run}, which was interrupted")
    # The one command it names recovers: the copy, the claim and the archive go.
    r = cli("rollback", run, "--kubeconfig", cluster.kubeconfig, "-o", "json")
    assert r.code == 0, r.err
    validate(r.json(), "rollback.schema.json", "rollback -o json")
    assert f"removed the archive /var/lib/kubelet/checkpoints/{made} from node-a" \
        in r.json()["undone"]
    assert archives(cluster, "node-a") == before
    wait_for(lambda: "solo2-restored" not in every_pod(v1), what="the copy gone")
    assert_untouched(v1, "solo2", pod.metadata.uid)
    assert migrate("solo2", "--to", "node-b").code == 0


def test_2_an_unclaimed_unfinished_run_is_found_by_its_journal(
        migrate: Callable[..., Result], v1: client.CoreV1Api, cluster: Cluster, shared: None,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Interrupted before its claim was written: the journal alone knows it."""
    make_pod(v1, "early")

    def claim(*args: Any, **kw: Any) -> None:
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(claims, "take", claim)
        r = migrate("early", "--to", "node-b")
    assert r.code == 130
    run = journal_id_of(r.err)
    assert "migrate.dev/claimed-by" not in (
        v1.read_namespaced_pod("early", "default").metadata.annotations or {})
    r = migrate("early", "--to", "node-b")
    assert (r.code, lines(r)) == (2, [
        f"error: pod default/early is held by migration {run}, which was interrupted",
        f"hint: `migrate resume {run}` continues it, `migrate rollback {run}` undoes it and "
        "releases the pod"])


def test_2_a_restored_copy_left_behind_is_named(migrate: Callable[..., Result],
                                                v1: client.CoreV1Api, cluster: Cluster,
                                                shared: None) -> None:
    make_pod(v1, "left")
    other = "pod-left-20260101t000000-abcd"
    v1.create_namespaced_pod("default", {
        "metadata": {"name": "left-restored", "labels": {"migrate.dev/migration": other}},
        "spec": {"nodeName": "node-b", "containers": [{"name": "c", "image": "x.io/y:1"}]}})
    taken = archives(cluster, "node-a")
    r = migrate("left", "--to", "node-b")
    assert (r.code, lines(r)) == (2, [
        f"error: pod default/left-restored is the restored copy of migration {other}, whose "
        "journal is not on this machine",
        f"hint: roll it back where it ran (`migrate rollback {other}`); if that run is gone for "
        "good, delete the copy: kubectl delete pod -n default left-restored"])
    make_pod(v1, "mine")
    v1.create_namespaced_pod("default", {
        "metadata": {"name": "mine-restored"},
        "spec": {"nodeName": "node-b", "containers": [{"name": "c", "image": "x.io/y:1"}]}})
    r = migrate("mine", "--to", "node-b")
    assert (r.code, lines(r)) == (2, [
        "error: pod default/mine-restored exists and was not made by migrate: the restored "
        "copy would take its name",
        "hint: delete or rename it (kubectl delete pod -n default mine-restored) if it is not "
        "needed"])
    assert archives(cluster, "node-a") == taken


def test_2_a_failed_run_removes_its_archives(migrate: Callable[..., Result],
                                             v1: client.CoreV1Api, cluster: Cluster,
                                             shared: None) -> None:
    make_pod(v1, "failing")
    before = archives(cluster, "node-a")
    r = migrate("failing", "--to", "node-d", "-o", "json")  # restore off: fails at verify
    assert r.code == 6, r.err
    report = r.json()
    assert report["outcome"] == "rolled-back"
    path = report["checkpoints"]["counter"]["path"]
    assert f"rollback: removed the archive {path} from node-a" in [
        a["action"] for a in report["actions"]]
    assert archives(cluster, "node-a") == before
    r = migrate("failing", "--to", "node-d", "--dry-run")
    if r.code == 2:  # the rolled-back copy may still be going: the name is taken until then
        assert lines(r) == [
            f"error: pod default/failing-restored, the restored copy of migration "
            f"{report['id']}, is still being deleted: the restored copy needs its name",
            "hint: run it again once it is gone (kubectl get pod -n default failing-restored)"]
    wait_for(lambda: "failing-restored" not in every_pod(v1), what="the copy gone")
    r = migrate("failing", "--to", "node-d", "-o", "json", "--keep-archive")
    assert r.code == 6, r.err
    kept = r.json()["checkpoints"]["counter"]["path"]
    assert archives(cluster, "node-a") == sorted([*before, Path(kept).name])
    assert f"rollback: kept the archive {kept} on node-a (--keep-archive)" in [
        a["action"] for a in r.json()["actions"]]
    status = {s["name"]: s["status"] for s in r.json()["stages"]}
    assert (status["checkpoint"], status["create"]) == ("done", "undone")  # still there


# -- 3. a containerd source is refused before anything moves -----------------------------------


CONTAINERD = ("containerd://2.4.0 checkpoints, but CRI-O refuses to restore containerd's "
              "archives (their spec.dump has no io.kubernetes.cri-o.Annotations), and migrate "
              "restores only on CRI-O")


def test_3_a_pod_on_containerd_is_refused_before_its_checkpoint(
        migrate: Callable[..., Result], cli: Cli, v1: client.CoreV1Api, cluster: Cluster,
        shared: None) -> None:
    """It was checkpointed, pushed and created before CRI-O refused at verify."""
    pod = make_pod(v1, "ctrd", node="node-c")
    for extra in ((), ("--dry-run",)):
        r = migrate("ctrd", "--to", "node-b", *extra)
        assert (r.code, r.out, lines(r)) == (6, "", [
            f"error: pod default/ctrd runs on node-c, whose runtime cannot be a source: "
            f"{CONTAINERD}",
            "hint: only pods on CRI-O nodes can be migrated (`migrate doctor` lists the "
            "nodes' runtimes); nothing was checkpointed"])
    assert archives(cluster, "node-c") == [] and journals() == []
    assert v1.read_namespaced_pod("ctrd", "default").metadata.uid == pod.metadata.uid
    r = cli("doctor", "--node", "node-c", "--kubeconfig", cluster.kubeconfig, "-o", "json")
    row = next(c for c in r.json()["checks"] if c["check"] == "node node-c: runtime")
    assert (row["status"], row["detail"]) == (
        "WARN", "containerd://2.4.0: checkpoints, but neither a source nor a destination")
    # A drain cannot move it either; a bare pod, it is evicted only with --force.
    for force, outcome in (((), f"; {BARE_POD}"),
                           (("--force",), "; evicted instead (--evict-rest)")):
        r = cli("drain", "node-c", "--dry-run", *force, "--kubeconfig", cluster.kubeconfig,
                "-o", "json", "--delete-emptydir-data")
        entry = next(p for p in r.json()["pods"] if p["name"] == "ctrd")
        assert (entry["action"], entry["reason"]) == (
            "evict" if force else "blocked",
            f"node-c cannot be a source: {CONTAINERD}{outcome}")


def test_3_build_refuses_a_containerd_archive_before_the_registry(
        cli: Cli, tmp_path: Path, plain_registry: RegistryUnderTest) -> None:
    """`migrate build` pushed it, although CRI-O would refuse it."""
    archive = build(ArchiveSpec(engine="containerd", use_crit=True), tmp_path / "ctrd.tar")
    # An address nothing listens on: refused before any connection is tried.
    r = cli("build", archive, "--image", "127.0.0.1:1/x/y:1", "--no-tls-verify")
    assert (r.code, lines(r)) == (3, [
        f"error: {archive}: is a containerd checkpoint: CRI-O refuses to restore it (its "
        "spec.dump has no io.kubernetes.cri-o.Annotations annotation)",
        "hint: CRI-O restores only CRI-O's archives; nothing was uploaded (containerd 2.1-2.3 "
        "restore their own: `migrate build --containerd`)"])
    # For containerd 2.1-2.3, which restore their own archives: on purpose only.
    r = cli("build", archive, "--image", f"{plain_registry.host}/ctrd/app:1", "--no-tls-verify",
            "--containerd", "-o", "json")
    assert r.code == 0, r.err
    validate(r.json(), "build.schema.json", "build --containerd -o json")


# -- 4. names that do not exist ---------------------------------------------------------------


def test_4_a_missing_node_or_pod_is_named_by_kind_with_what_was_meant(
        migrate: Callable[..., Result], cli: Cli, v1: client.CoreV1Api, cluster: Cluster) -> None:
    make_pod(v1, "named")
    nodes = "the cluster's nodes: node-a, node-b, node-c, node-d"
    r = migrate("named", "--to", "nod-b")
    assert (r.code, lines(r)) == (4, ["error: --to nod-b: no such node",
                                      f"hint: did you mean node-b?; {nodes}"])
    r = migrate("namd", "--to", "node-b")
    assert (r.code, lines(r)[0]) == (4, "error: pod default/namd does not exist")
    assert re.fullmatch(r"hint: did you mean named\?; (pods in default: .*|`kubectl get pods "
                        r"-n default` lists the \d+ pods in default)", lines(r)[1]), lines(r)
    v1.create_namespace({"metadata": {"name": "shop"}})
    make_pod_in(v1, "shop", "cart")
    r = cli("checkpoint", "cart", "--kubeconfig", cluster.kubeconfig)
    assert (r.code, lines(r)[0]) == (4, "error: pod default/cart does not exist")
    assert lines(r)[1].startswith("hint: it is in namespace shop: -n shop; ")
    r = cli("uncordon", "nod-a", "--kubeconfig", cluster.kubeconfig)
    assert (r.code, lines(r)) == (4, ["error: node nod-a does not exist",
                                      f"hint: did you mean node-a?; {nodes}"])


def make_pod_in(v1: client.CoreV1Api, namespace: str, name: str) -> None:
    v1.create_namespaced_pod(namespace, {"metadata": {"name": name}, "spec": {
        "nodeName": "node-a", "containers": [{"name": "c", "image": "quay.io/x/y:1"}]}})


def test_4_nothing_is_made_for_a_node_that_does_not_exist(cli: Cli, v1: client.CoreV1Api,
                                                          cluster: Cluster) -> None:
    """`manifest --node nod-b` printed a Pod pinned to a missing node; `schedule drain
    node-zz --apply` created the CronJob."""
    make_pod(v1, "pinned")
    r = cli("manifest", "--from-pod", "pinned", "--image", "x.io/c:1", "--node", "nod-b",
            "--kubeconfig", cluster.kubeconfig)
    assert (r.code, r.out, lines(r)[0]) == (4, "", "error: --node nod-b: no such node")
    r = cli("schedule", "drain", "node-zz", "--cron", "0 2 * * 6", "--image", TOOL,
            "--apply", "--kubeconfig", cluster.kubeconfig)
    assert (r.code, r.out, lines(r)[0]) == (4, "", "error: node node-zz does not exist")
    with api_client(cluster.kubeconfig) as api:
        assert client.BatchV1Api(api).list_cron_job_for_all_namespaces().items == []
    assert "migrate-system" not in [n.metadata.name for n in v1.list_namespace().items]
    r = cli("doctor", "--node", "nod-b", "--kubeconfig", cluster.kubeconfig, "-o", "json")
    row = next(c for c in r.json()["checks"] if c["check"] == "node nod-b")
    assert (row["status"], row["detail"], row["hint"]) == (
        "FAIL", "node nod-b does not exist", f"did you mean node-b?; {nodes_hint()}")


def nodes_hint() -> str:
    return "the cluster's nodes: node-a, node-b, node-c, node-d"


# -- 5. what the kubelet reports while verify waits ---------------------------------------------


def test_5_progress_while_the_restored_pod_starts(migrate: Callable[..., Result],
                                                  v1: client.CoreV1Api, cluster: Cluster,
                                                  shared: None,
                                                  plain_registry: RegistryUnderTest) -> None:
    """verify showed one line for as long as the pull and the restore took, even -vv."""
    make_pod(v1, "watched")
    cluster.configure_node("node-b", image_pull_seconds=1.0)
    try:
        r = migrate("watched", "--to", "node-b")
    finally:
        cluster.configure_node("node-b", image_pull_seconds=0.0)
    assert r.code == 0, r.err
    said = [line.removeprefix("migrate: verify: ") for line in lines(r)
            if line.startswith("migrate: verify: counter: ")]
    reasons = [line.split(": ")[1] for line in said]
    assert reasons[:4] == ["Pulling", "Pulled", "Created", "Started"], said
    assert re.fullmatch(r'counter: Pulling: Pulling image "\S+@sha256:[0-9a-f]{64}" '
                        r"\(\d+(\.\d)? [KM]iB\)", said[0]), said[0]
    assert said[1].startswith('counter: Pulled: Successfully pulled image "')
    assert said[2] == ("counter: Created: Container created (from the checkpoint: "
                       "CRIU restores its processes as it starts)")
    assert "migrate: build: counter: " in r.err and "streamed (100%)" in r.err
    # Quiet with -o json; the same lines are the log's with -v.
    make_pod(v1, "watched2")
    r = migrate("watched2", "--to", "node-b", "-o", "json")
    assert (r.code, r.err) == (0, "")
    make_pod(v1, "watched3")
    done = run_binary(["pod", "watched3", "--to", "node-b", "--kubeconfig", str(cluster.kubeconfig),
                       "--registry", f"{plain_registry.host}/first", "--no-tls-verify", "-o",
                       "json", "-v", "--delete-emptydir-data"])
    assert done.returncode == 0, done.stderr
    assert "INFO: verify: counter: Started: Container started" in \
        done.stderr.splitlines()


# -- 6. global options on either side, through the console script -------------------------------


def test_6_cluster_options_before_the_command(cluster: Cluster, v1: client.CoreV1Api,
                                              tmp_path: Path) -> None:
    """`migrate --context CTX doctor` was "No such option"."""
    env = {**os.environ, "HOME": str(tmp_path)}
    r = subprocess.run([str(BIN / "migrate"), "--context", "kubernetes-admin", "--kubeconfig",
                        str(cluster.kubeconfig), "doctor", "--node", "node-a", "-o", "json"],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["checks"][0]["status"] == "PASS"
    make_pod(v1, "moved-flags")
    r = subprocess.run([str(BIN / "migrate"), "-n", "default", "checkpoint", "moved-flags",
                        "--kubeconfig", str(cluster.kubeconfig), "-v", "-o", "json"],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["namespace"] == "default"


def test_6_history_lists_by_namespace_and_by_name(cli: Cli, migrate: Callable[..., Result],
                                                  v1: client.CoreV1Api, shared: None,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    make_pod(v1, "listed")
    assert migrate("listed", "--to", "node-b").code == 0
    everything = cli("history", "-o", "json").json()
    assert cli("history", "-A", "-o", "json").json() == everything
    assert cli("history", "-n", "nowhere", "-o", "json").json() == []
    assert cli("history", "-n", "default", "-o", "json").json() == everything
    assert cli("history", "-o", "name").out.splitlines() == [h["id"] for h in everything]


# -- 8. completion from the cluster and the journals ---------------------------------------------


def test_8_names_complete_from_the_cluster(cluster: Cluster, v1: client.CoreV1Api,
                                           tmp_path: Path) -> None:
    make_pod(v1, "completed")
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig), "HOME": str(tmp_path),
           "PATH": f"{BIN}:{os.environ['PATH']}"}

    def zsh(line: str) -> str:
        r = subprocess.run([str(BIN / "migrate")], capture_output=True, text=True, env={
            **env, "_MIGRATE_COMPLETE": "complete_zsh", "_TYPER_COMPLETE_ARGS": line})
        assert r.returncode == 0 and r.stderr == "", r.stderr
        return r.stdout

    assert '"completed":"Running on node-a"' in zsh("migrate pod comp")
    assert all(f'"{n}"' in zsh("migrate pod completed --to node-") for n in
               ("node-a", "node-b", "node-c", "node-d"))
    assert '"default":"namespace"' in zsh("migrate pod completed -n def")
    assert '"node-b"' in zsh("migrate uncordon node-")
    # As kubectl completes its plugin (kubectl 1.26+).
    r = subprocess.run(["kubectl", "__complete", "migrate", "pod", "comp"],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == "completed\tRunning on node-a"


def test_8_migration_ids_complete_from_the_journals(cli: Cli, migrate: Callable[..., Result],
                                                    v1: client.CoreV1Api, shared: None,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    make_pod(v1, "idcomp")
    with monkeypatch.context() as m:
        interrupt_at(m, "verify")
        run = journal_id_of(migrate("idcomp", "--to", "node-b").err)
    r = subprocess.run([str(BIN / "migrate")], capture_output=True, text=True, env={
        **os.environ, "_MIGRATE_COMPLETE": "complete_bash", "COMP_WORDS": "migrate resume pod-idc",
        "COMP_CWORD": "2"})
    assert r.stdout.split() == [run]


# -- 9. resume, rollback and history after an interruption ---------------------------------------


def test_9_an_interrupted_run_in_history_and_in_json(cli: Cli, migrate: Callable[..., Result],
                                                     v1: client.CoreV1Api, shared: None,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """history showed `FAILED STAGE verify` for an interruption; -o json printed nothing."""
    make_pod(v1, "stopped")
    with monkeypatch.context() as m:
        interrupt_at(m, "verify")
        r = migrate("stopped", "--to", "node-b", "-o", "json")
    assert r.code == 130
    report = r.json()
    validate(report, "pod.schema.json", "pod -o json, interrupted")
    assert report["outcome"] == "interrupted"
    run = report["id"]
    assert lines(r) == [f"migrate: migration {run} interrupted: `migrate resume {run}` "
                        f"continues it, `migrate rollback {run}` undoes it", "error: interrupted"]
    rows = {h["id"]: h for h in cli("history", "-o", "json").json()}
    validate(list(rows.values()), "history.schema.json", "history -o json")
    assert (rows[run]["outcome"], rows[run]["failed_stage"], rows[run]["interrupted_stage"]) == (
        "interrupted", None, "verify")
    table = cli("history").out
    assert re.search(rf"{run} .* interrupted .*verify \(interrupted\)", table), table
    assert migrate("stopped", "--to", "node-b", "--dry-run").code == 2


def test_9_drains_resume_and_roll_back_by_their_own_ids(cli: Cli, cluster: Cluster,
                                                        v1: client.CoreV1Api, shared: None,
                                                        plain_registry: RegistryUnderTest,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """`migrate resume drain-...` said there was no journal; a drain's Ctrl-C offered resume
    but not rollback."""
    pod = make_pod(v1, "drained", node="node-d")
    with monkeypatch.context() as m:
        interrupt_at(m, "verify")
        r = cli("drain", "node-d", "--to", "node-b", "--registry",
                f"{plain_registry.host}/first", "--no-tls-verify", "--kubeconfig",
                cluster.kubeconfig, "-o", "json", "--delete-emptydir-data")
    assert r.code == 130, r.err
    report = r.json()
    validate(report, "drain.schema.json", "drain -o json, interrupted")
    drain = report["id"]
    assert lines(r)[-2:] == [
        f"migrate: drain {drain} interrupted: `migrate drain --resume {drain}` continues it, "
        f"`migrate rollback {drain}` undoes its migrations in flight and uncordons node-d",
        "error: interrupted"]
    r = cli("resume", drain, "--kubeconfig", cluster.kubeconfig)
    assert (r.code, lines(r)) == (2, [
        f"error: {drain} is a drain (interrupted), not a migration",
        f"hint: `migrate drain --resume {drain}` continues it, `migrate rollback {drain}` "
        "undoes its migrations in flight"])
    (moving,) = report["pods"][0]["journals"]
    r = cli("drain", "--resume", moving, "--kubeconfig", cluster.kubeconfig)
    assert (r.code, lines(r)) == (2, [f"error: {moving} is a migration, not a drain",
                                      f"hint: `migrate resume {moving}` continues it"])
    r = cli("rollback", drain, "--kubeconfig", cluster.kubeconfig, "-o", "json")
    assert r.code == 0, r.err
    undone = r.json()
    validate(undone, "rollback.schema.json", "rollback of a drain -o json")
    assert (undone["kind"], undone["outcome"]) == ("drain", "rolled-back")
    assert undone["undone"][0].startswith("default/drained: deleted pod default/drained-restored")
    assert undone["undone"][-1] == "uncordoned node-d"
    assert not v1.read_node("node-d").spec.unschedulable
    wait_for(lambda: "drained-restored" not in pods(v1), what="the copy gone")
    assert v1.read_namespaced_pod("drained", "default").metadata.uid == pod.metadata.uid
    drains = cli("history", "--drains", "-o", "json").json()
    validate(drains, "drain-history.schema.json", "history --drains -o json")
    assert {d["id"]: d["outcome"] for d in drains}[drain] == "rolled-back"
    assert cli("history", "--drains", "-o", "name").out.splitlines() == [d["id"] for d in drains]


# -- 10. every JSON form has a schema that real output matches ----------------------------------


def test_10_uncordon_deploy_apply(cli: Cli, cluster: Cluster) -> None:
    r = cli("uncordon", "node-a", "--kubeconfig", cluster.kubeconfig, "-o", "json")
    assert r.code == 0, r.err
    validate(r.json(), "uncordon.schema.json", "uncordon -o json")
    assert r.json() == {"node": "node-a", "was_cordoned": False}
    r = cli("deploy", "--apply", "-n", "tools", "--kubeconfig", cluster.kubeconfig, "-o", "json")
    assert r.code == 0, r.err
    validate(r.json(), "apply.schema.json", "deploy --apply -o json")
    assert [(o["kind"], o["namespace"], o["action"]) for o in r.json()] == [
        ("Namespace", None, "created"), ("ServiceAccount", "tools", "created"),
        ("ClusterRole", None, "created"), ("ClusterRoleBinding", None, "created")]


JSON_FORMS = {  # the schema of each command's -o json, and a test validating real output
    "show": "show.schema.json", "inspect": "inspect.schema.json",
    "memparse": "memparse.schema.json", "rootfs-diff": "rootfs-diff.schema.json",
    "list": "list.schema.json", "build": "build.schema.json",
    "checkpoint": "checkpoint.schema.json", "doctor": "doctor.schema.json",
    "pod": "pod.schema.json", "resume": "pod.schema.json", "rollback": "rollback.schema.json",
    "history": "history.schema.json", "history --drains": "drain-history.schema.json",
    "drain": "drain.schema.json", "uncordon": "uncordon.schema.json",
    "deploy --apply": "apply.schema.json", "schedule drain --apply": "apply.schema.json",
    "sandbox": "sandbox.schema.json", "sandbox --engine podman": "sandbox-podman.schema.json",
    "sandbox stop": "sandbox-stop.schema.json",
    "prune": "prune.schema.json", "prune --registry": "prune-registry.schema.json",
    "schedule prune --apply": "apply.schema.json",
}


def test_10_every_json_form_has_a_schema_validated_in_a_test() -> None:
    """(manifest, deploy and schedule without --apply print Kubernetes objects: the
    OpenAPI schemas check them.)"""
    here = Path(__file__).parent
    tests = "\n".join(p.read_text() for p in here.glob("test_*.py"))
    validated = set(re.findall(r'validate\(.*"([a-z-]+\.schema\.json)"', tests))
    readme = (here.parent / "README.md").read_text()
    for form, schema in JSON_FORMS.items():
        assert (here.parent / "schemas" / schema).is_file(), form
        assert schema in validated, f"{form}: no test validates real output against {schema}"
        assert f"schemas/{schema}" in readme or f"`{schema}`" in readme, (
            f"README does not name {schema}")


# -- 11. the demo checks its own claims -----------------------------------------------------------


def test_11_the_demo_fails_loudly_when_a_claim_does_not_hold(counters_archive: Path,
                                                             capsys: pytest.CaptureFixture[str]
                                                             ) -> None:
    """"Done: the restored pod holds the same secret" would print even if it did not:
    memparse exited 0 on "no matches", and the demo looked at nothing."""
    from e2e import demo

    migrate = [sys.executable, "-m", "migrate"]
    found = demo._search(migrate, counters_archive, "RANDOM_1432_KEY", dict(os.environ),
                         "secret in the source")
    assert (found["pid"], found["match"]) == (7, "RANDOM_1432_KEY")
    assert "secret in the source: RANDOM_1432_KEY (pid 7, counter.py, address 0x" in \
        capsys.readouterr().out
    with pytest.raises(SystemExit) as stopped:
        demo._search(migrate, counters_archive, "NOT-IN-THERE", dict(os.environ),
                     "secret in the restored pod")
    assert str(stopped.value) == (f"demo: FAILED: secret in the restored pod: `NOT-IN-THERE` "
                                  f"is not in the memory of {counters_archive.name}")
    with pytest.raises(SystemExit, match="is held by 3 processes, not one"):
        demo._search(migrate, counters_archive, "HOSTNAME=counters", dict(os.environ), "x")
