"""Claims: one migration at a time per source pod (migrate.pipeline.claims).

Against the real control plane with node agents, and the real registry.
Racing runs are real processes (the installed `migrate`), started together;
the source node's agent holds checkpoints (`Cluster.holding_checkpoints`), so
the run that wins is known to be inside its checkpoint while the other one
decides.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from e2e.cluster.launcher import ControlPlane
from e2e.cluster.world import Cluster
from e2e.nodes import RegistryConfig
from migrate.adapters import kube
from migrate.errors import ConflictError
from migrate.pipeline import claims, migration
from migrate.pipeline.journal import Journal
from migrate.settings import KubeSettings
from tests.cluster import Kubectl, cordoned, node_agents, wait_for
from tests.conftest import Result, interrupt_at, journal_id_of
from tests.registries import RegistryUnderTest
from tests.test_migrate_pod import make_pod, pods

Cli = Callable[..., Result]
MIGRATE = str(Path(sys.executable).parent / "migrate")
CLAIM = "migrate.dev/claimed-by"
NODES = ("node-a", "node-b", "node-c")


@pytest.fixture(scope="module")
def cluster(real_cp: ControlPlane, tmp_path_factory: pytest.TempPathFactory,
            plain_registry: RegistryUnderTest) -> Iterator[Cluster]:
    with node_agents(real_cp, tmp_path_factory.mktemp("nodes"), nodes=NODES,
                     start_latency=0.05, stop_latency=0.05,
                     registries=RegistryConfig(insecure=(plain_registry.host,))) as world:
        yield world


@pytest.fixture(scope="module")
def world(cluster: Cluster) -> Cluster:
    return cluster


@pytest.fixture(autouse=True)
def _node_root(cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIGRATE_NODE_ROOT", cluster.node_root)


def _args(cluster: Cluster, registry: RegistryUnderTest, pod: str, *extra: str) -> list[str]:
    return ["pod", pod, "--kubeconfig", str(cluster.kubeconfig), "--registry",
            f"{registry.host}/claims", "--no-tls-verify", "--timeout", "30",
            "--delete-emptydir-data", *extra]


@pytest.fixture
def migrate(cli: Cli, cluster: Cluster, plain_registry: RegistryUnderTest) -> Callable[..., Result]:
    def run(pod: str, *args: str) -> Result:
        return cli(*_args(cluster, plain_registry, pod, *args))
    return run


def spawn(cluster: Cluster, registry: RegistryUnderTest, pod: str, to: str
          ) -> subprocess.Popen[str]:
    """`migrate pod POD --to TO -o json` as a process of its own (the environment is the
    test's: its state directory and node root)."""
    return subprocess.Popen([MIGRATE, *_args(cluster, registry, pod, "--to", to, "-o", "json")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def annotations(v1: client.CoreV1Api, name: str) -> dict[str, str]:
    return dict(v1.read_namespaced_pod(name, "default").metadata.annotations or {})


def annotate(v1: client.CoreV1Api, name: str, value: str | None) -> None:
    v1.patch_namespaced_pod(name, "default", {"metadata": {"annotations": {CLAIM: value}}})


def deployment_pod(api: client.ApiClient, v1: client.CoreV1Api, name: str) -> Any:
    """A one-replica Deployment whose pod runs on node-a."""
    apps = client.AppsV1Api(api)
    with cordoned(v1, NODES[1:]):  # the scheduler spreads pods: only node-a takes this one
        apps.create_namespaced_deployment("default", {
            "metadata": {"name": name},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}}, "spec": {
                         "containers": [{"name": "web", "image": "quay.io/example/web:1"}]}}}})
        pod = wait_for(lambda: next((p for p in running(v1, f"app={name}")), None),
                       what=f"{name}'s pod")
    assert pod.spec.node_name == "node-a"
    return pod


def running(v1: client.CoreV1Api, selector: str) -> list[Any]:
    return [p for p in v1.list_namespaced_pod("default", label_selector=selector).items
            if not p.metadata.deletion_timestamp and p.status.phase == "Running"]


def history(cli: Cli) -> dict[str, dict[str, Any]]:
    return {h["id"]: h for h in cli("history", "-o", "json").json()}


@pytest.mark.parametrize("kind", ["bare", "deployment"])
def test_of_two_runs_started_together_one_proceeds_the_other_refuses(
        kind: str, cli: Cli, cluster: Cluster, api: client.ApiClient, v1: client.CoreV1Api,
        plain_registry: RegistryUnderTest, spawned: list[subprocess.Popen[str]]) -> None:
    name = f"race-{kind}"
    source = make_pod(v1, name) if kind == "bare" else deployment_pod(api, v1, name)
    name = source.metadata.name
    with cluster.holding_checkpoints("node-a") as waiting:
        runs = [spawn(cluster, plain_registry, name, "node-b"),
                spawn(cluster, plain_registry, name, "node-c")]
        spawned += runs
        # The loser ends while the winner waits inside its checkpoint.
        loser = wait_for(lambda: next((r for r in runs if r.poll() is not None), None),
                         timeout=60, what="one of the two runs to end")
        winner = next(r for r in runs if r is not loser)
        wait_for(lambda: waiting() == 1, timeout=30, what="the winner's checkpoint")
        holder = annotations(v1, name)[CLAIM]
        out, err = loser.communicate()
    assert loser.returncode == 2, err
    # Which the loser saw first is the race's: the winner's claim on the pod ("claimed
    # by"), or its journal on this machine before the claim was written ("held by").
    assert err.splitlines() in ([
        f"error: pod default/{name} is {verb} by migration {holder}, which another process "
        "is running", "hint: wait for it to end (`migrate history` shows how it did)"]
        for verb in ("claimed", "held"))
    assert out == ""
    out, err = winner.communicate(timeout=120)
    assert winner.returncode == 0, err
    report = json.loads(out)
    assert (report["id"], report["outcome"]) == (holder, "succeeded")
    assert list(history(cli)) == [holder]  # the refused run left no journal
    restored = report["destination_pod"]
    assert report["plan"]["destination"] == ("node-b" if winner is runs[0] else "node-c")
    if kind == "bare":
        assert name not in pods(v1)
        assert pods(v1)[restored] == (report["plan"]["destination"], "Running")
        assert CLAIM not in annotations(v1, restored)
        return
    # One copy, the winner's, adopted by the ReplicaSet: the replica count held.
    final = wait_for(lambda: (ps := running(v1, f"app={source.metadata.labels['app']}"))
                     and [p.metadata.name for p in ps] == [restored] and ps,
                     timeout=30, what="the ReplicaSet to keep only the restored pod")
    assert final[0].metadata.owner_references[0].uid == \
        source.metadata.owner_references[0].uid
    assert CLAIM not in (final[0].metadata.annotations or {})


def test_a_conditional_claim_that_lost_the_race_reads_again_and_refuses(
        world: Cluster, v1: client.CoreV1Api) -> None:
    pod = make_pod(v1, "lost-race")
    cluster = kube.connect(KubeSettings(kubeconfig=world.kubeconfig))
    state = Path(os.environ["MIGRATE_STATE_DIR"])
    first = Journal.create(state, "pod", "lost-race", {}, migration.STAGES)  # held (locked)
    seen = pod.metadata.resource_version  # what both runs read before either wrote
    assert claims.take(cluster, state, "default", "lost-race", pod.metadata.uid, first.id, seen)
    before = cluster.requests
    with pytest.raises(claims.Claimed) as refused:
        claims.take(cluster, state, "default", "lost-race", pod.metadata.uid, "pod-second", seen)
    assert refused.value.message == (f"pod default/lost-race is claimed by migration "
                                     f"{first.id}, which another process is running")
    assert cluster.requests - before == 2  # the PATCH answered 409, then the pod read again
    with pytest.raises(ConflictError):  # what the adapter made of that 409
        kube.patch_pod(cluster, "default", "lost-race", {"metadata": {
            "resourceVersion": seen, "annotations": {CLAIM: "pod-second"}}})
    assert annotations(v1, "lost-race")[CLAIM] == first.id
    first.unlock()



def test_an_interrupted_run_holds_its_pod_until_rolled_back(
        migrate: Callable[..., Result], cli: Cli, cluster: Cluster, v1: client.CoreV1Api,
        monkeypatch: pytest.MonkeyPatch) -> None:
    pod = make_pod(v1, "held")
    original = pod.metadata.annotations
    with monkeypatch.context() as m:
        interrupt_at(m, "verify")
        r = migrate("held", "--to", "node-b")
    assert r.code == 130
    held = journal_id_of(r.err)
    assert annotations(v1, "held") == {**original, CLAIM: held}
    for extra in ((), ("--dry-run",)):  # refused before anything moves, as preflight
        r = migrate("held", "--to", "node-c", *extra)
        assert (r.code, r.err.splitlines()) == (2, [
            f"error: pod default/held is claimed by migration {held}, which was interrupted",
            f"hint: `migrate resume {held}` continues it, `migrate rollback {held}` undoes "
            "it and releases the pod"])
    assert list(history(cli)) == [held]
    r = cli("rollback", held, "--kubeconfig", cluster.kubeconfig, "-o", "json")
    assert r.code == 0, r.err
    assert r.json()["undone"][0].startswith("deleted pod default/held-restored")
    assert r.json()["undone"][-1] == "released the claim on held"
    # Exactly as it was: same pod, same annotations, running where it ran, and the
    # restored copy gone, not terminating, when rollback returns: its name is free.
    assert [p.metadata.name for p in v1.list_namespaced_pod("default").items
            if p.metadata.name == "held-restored"] == []
    now = v1.read_namespaced_pod("held", "default")
    assert (now.metadata.uid, now.metadata.annotations, now.spec.node_name,
            now.status.phase) == (pod.metadata.uid, original, "node-a", "Running")
    # A claim whose run ended (its release lost, say) is stale: the next run takes it over.
    annotate(v1, "held", held)
    r = migrate("held", "--to", "node-c", "-o", "json")
    assert r.code == 0, r.err
    assert pods(v1)[r.json()["destination_pod"]] == ("node-c", "Running")
    assert any(a["action"] == "claimed" for a in r.json()["actions"])


def test_a_claim_whose_journal_is_elsewhere_is_refused_with_the_way_out(
        migrate: Callable[..., Result], cluster: Cluster, v1: client.CoreV1Api,
        cp_kubectl: Kubectl) -> None:
    make_pod(v1, "foreign")
    other = "pod-foreign-20260101t000000-abcd"
    annotate(v1, "foreign", other)
    r = migrate("foreign", "--to", "node-b")
    assert (r.code, r.err.splitlines()) == (2, [
        f"error: pod default/foreign is claimed by migration {other}, whose journal is not "
        "on this machine",
        f"hint: roll it back where it ran (`migrate rollback {other}`); if that run is gone "
        f"for good, remove the claim: kubectl annotate pod -n default foreign {CLAIM}-"])
    assert annotations(v1, "foreign")[CLAIM] == other
    # the hint's command, as given
    cp_kubectl(cluster.kubeconfig, "annotate", "pod", "-n", "default", "foreign", f"{CLAIM}-")
    assert CLAIM not in annotations(v1, "foreign")
    assert migrate("foreign", "--to", "node-b", "--dry-run").code == 0
