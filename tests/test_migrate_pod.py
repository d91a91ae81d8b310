"""`migrate pod` end to end: the real control plane with node agents, the real registry,
the native builder.

Every failure test checks the cluster afterwards: the source pod is still
there, running, on its node, and nothing the run created is left.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from e2e.cluster.launcher import ControlPlane
from e2e.cluster.world import Cluster
from e2e.nodes import NodeConfig, RegistryConfig
from migrate.pipeline import migration
from migrate.pipeline.journal import Journal
from migrate.pipeline.migration import create as create_stage
from migrate.validation import validate
from tests.cluster import api_client, cordoned, held_once_stopped, node_agents, wait_for
from tests.conftest import Result, interrupt_at, journal_id_of
from tests.registries import RegistryUnderTest, push_app_image

Cli = Callable[..., Result]
SECRET = "s3cr3t-in-memory-4711"


@pytest.fixture(scope="module")
def cluster(real_cp: ControlPlane, tmp_path_factory: pytest.TempPathFactory,
            plain_registry: RegistryUnderTest) -> Iterator[Cluster]:
    configs = {"node-c": NodeConfig(runtime="containerd://2.4.0"),
               "node-d": NodeConfig(restore_level="checkpoint_only"),
               "node-e": NodeConfig(ready=False)}
    with node_agents(real_cp, tmp_path_factory.mktemp("nodes"),
                     nodes=("node-a", "node-b", "node-c", "node-d", "node-e"),
                     node_config=configs, start_latency=0.05, stop_latency=0.05,
                     registries=RegistryConfig(insecure=(plain_registry.host,))) as world:
        yield world


@pytest.fixture(autouse=True)
def _node_root(cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    # The tool reads archives where the nodes' directories are "shared".
    monkeypatch.setenv("MIGRATE_NODE_ROOT", cluster.node_root)


@pytest.fixture
def migrate(cli: Cli, cluster: Cluster, plain_registry: RegistryUnderTest) -> Callable[..., Result]:
    def run(pod: str, *args: str) -> Result:
        return cli("pod", pod, "--kubeconfig", cluster.kubeconfig, "--registry",
                   f"{plain_registry.host}/migrations", "--no-tls-verify", "--timeout", "20",
                   "--delete-emptydir-data", *args)
    return run


def make_pod(v1: client.CoreV1Api, name: str, node: str = "node-a",
             image: str = "quay.io/adrianreber/counter:latest",
             annotations_extra: dict[str, str] | None = None,
             finalizers: list[str] | None = None, **extra: Any) -> Any:
    annotations = {
        "sim.migrate.dev/processes": json.dumps([{"argv": ["/bin/counter", "--port", "8088"],
                                                  "heap": SECRET}]),
        "sim.migrate.dev/rootfs-diff": json.dumps({"/home/counter/test-file": "state 42\n"}),
        **(annotations_extra or {}),
    }
    body = {"metadata": {"name": name, "labels": {"app": name}, "annotations": annotations,
                         **({"finalizers": finalizers} if finalizers else {})},
            "spec": {"nodeName": node, "containers": [
                {"name": "counter", "image": image,
                 "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
                "volumes": [{"name": "data", "emptyDir": {}}], **extra}}
    v1.create_namespaced_pod("default", body)
    return wait_for(lambda: (p := v1.read_namespaced_pod(name, "default")).status.phase
                    == "Running" and p, what=f"{name} Running")


def pods(v1: client.CoreV1Api) -> dict[str, tuple[str, str]]:
    return {p.metadata.name: (p.spec.node_name, p.status.phase)
            for p in v1.list_namespaced_pod("default").items
            if not p.metadata.deletion_timestamp}


def events(v1: client.CoreV1Api, pod: str) -> list[str]:
    return [e.reason for e in v1.list_namespaced_event(
        "default", field_selector=f"involvedObject.name={pod}").items]


def assert_untouched(v1: client.CoreV1Api, name: str, uid: str) -> None:
    """The source runs where it ran, and no restored copy is left."""
    p = v1.read_namespaced_pod(name, "default")
    assert (p.metadata.uid, p.spec.node_name, p.status.phase) == (uid, "node-a", "Running")
    assert not (p.metadata.annotations or {}).get("controller.kubernetes.io/pod-deletion-cost")
    assert not [n for n in pods(v1) if n.startswith(f"{name}-restored")]


def test_a_bare_pod_moves_with_its_memory_and_files(migrate: Callable[..., Result], cli: Cli,
                                                    cluster: Cluster, v1: client.CoreV1Api,
                                                    tmp_path: Path) -> None:
    make_pod(v1, "counters")
    r = migrate("counters", "--to", "node-b", "-o", "json")
    assert r.code == 0, r.err
    report = r.json()
    validate(report, "pod.schema.json", "pod -o json")
    assert r.err == ""  # -o json: progress only with -v (the table run shows it)
    assert report["outcome"] == "succeeded"
    assert [s["status"] for s in report["stages"]] == ["done"] * 7
    assert pods(v1).get("counters") is None
    restored = v1.read_namespaced_pod(report["destination_pod"], "default")
    assert (restored.spec.node_name, restored.status.phase) == ("node-b", "Running")
    digest = report["images"]["counter"]["digest"]
    assert report["images"]["counter"]["freezing_time_us"] > 0  # the archive's stats-dump
    # Restored from the checkpoint image; CRI-O reports the workload's image as its own.
    record = json.loads(restored.metadata.annotations["sim.migrate.dev/restored.counter"])
    assert digest in record["imageID"]
    assert restored.status.container_statuses[0].image == record["baseImage"]
    # The proof: checkpoint the restored pod; its memory holds the secret, its files the state.
    r = cli("checkpoint", report["destination_pod"], "--kubeconfig", cluster.kubeconfig, "-o", "json")
    assert r.code == 0, r.err
    archive = cluster.node_path("node-b", r.json()["archive"])
    r = cli("memparse", archive, "--search", SECRET, "-o", "json")
    assert r.code == 0 and SECRET in r.out, r.err
    r = cli("rootfs-diff", archive, "--extract", tmp_path / "rootfs")
    assert (tmp_path / "rootfs/home/counter/test-file").read_text() == "state 42\n"
    assert report["state_window_seconds"] > 0
    assert report["unavailability_seconds"] == 0
    assert report["api_requests"] > 0
    assert "Checkpointed" in events(v1, "counters")
    assert {"Restored", "Migrated"} <= set(events(v1, report["destination_pod"]))


def test_the_state_window_ends_when_the_source_stops_not_when_its_pod_goes(
        migrate: Callable[..., Result], v1: client.CoreV1Api) -> None:
    """What the source does after its checkpoint is lost until its processes stop.
    The kubelet reports that (the containers terminated, the pod Failed) before the pod
    goes: 0.7 s before on a real kubelet, here a second before, held by a finalizer."""
    make_pod(v1, "held")
    with held_once_stopped(v1, "default", "held", hold=1.0) as released:
        r = migrate("held", "--to", "node-b", "-o", "json")
    assert r.code == 0, r.err
    report = r.json()
    data = {s.name: s.data for s in
            Journal.load(Path(os.environ["MIGRATE_STATE_DIR"]), report["id"]).stages}
    stopped, taken = data["switchover"]["source_stopped_at"], data["checkpoint"]["taken_at"]
    assert released and stopped < released[0] - 0.5
    assert report["state_window_seconds"] == round(stopped - taken, 3)


def test_a_migration_sends_few_requests_and_lists_nothing(
        migrate: Callable[..., Result], v1: client.CoreV1Api,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A drain runs this for every pod of a node, against one API server, and a list
    filters every pod (or Event) of the namespace where a GET reads one key. Every look
    at the source, the restored pod and the name it takes is a GET; each watch starts
    where a write answered; with -o json and no -v nobody reads the kubelet's Events,
    so they are not followed."""
    from migrate.adapters.kube import client as kube_client
    from migrate.adapters.kube import events as kube_events
    from migrate.adapters.kube import nodes as kube_nodes
    from migrate.adapters.kube import watches as kube_watches

    sent: list[tuple[str, str, dict[str, str]]] = []
    real_send = kube_client.send

    def recording(cluster: Any, method: str, path: str, **kw: Any) -> Any:
        sent.append((method, path.format(**(kw.get("path_params") or {})),
                     dict(kw.get("query") or [])))
        return real_send(cluster, method, path, **kw)

    for module in (kube_client, kube_events, kube_nodes, kube_watches):
        monkeypatch.setattr(module, "send", recording)
    make_pod(v1, "budget")
    r = migrate("budget", "--to", "node-b", "-o", "json")
    assert r.code == 0, r.err
    lists = [(path, query) for method, path, query in sent
             if method == "GET" and path.endswith(("/pods", "/events"))
             and "resourceVersion" not in query]
    # One: node-b's pods, whose requests the room for this one is counted against (a
    # drain's migrations skip it: the drain placed them with its own list).
    assert lists == [("/api/v1/pods", {"fieldSelector": "spec.nodeName=node-b"})]
    assert not [path for _, path, query in sent if path.endswith("/events") and "watch" in query]
    watched = [query["fieldSelector"] for _, path, query in sent if "watch" in query]
    # the restored pod's and the source's going; before them a pre-pull pod's, if node-b
    # did not list the image yet (this test alone)
    assert [w for w in watched if "-prepull-" not in w] == [
        "metadata.name=budget-restored", "metadata.name=budget"]
    assert r.json()["api_requests"] == len(sent) <= 22, sent


def test_dry_run_changes_nothing(migrate: Callable[..., Result], cli: Cli,
                                 v1: client.CoreV1Api) -> None:
    pod = make_pod(v1, "dry")
    r = migrate("dry", "--to", "node-b", "--dry-run", "-o", "json")
    assert r.code == 0, r.err
    assert r.json()["plan"]["destination"] == "node-b"
    assert r.json()["plan"]["switch"] == "delete"
    assert r.json()["plan"]["emptied_volumes"] == ["data"]  # make_pod's emptyDir
    validate(r.json(), "pod.schema.json", "pod --dry-run -o json")
    r = migrate("dry", "--to", "node-b", "--dry-run")
    assert r.out.splitlines()[-2:] == [
        "note: emptyDir volume(s) data start empty on node-b: a checkpoint holds no volume's "
        "files", "dry run: preflight passed, nothing changed"]
    assert_untouched(v1, "dry", pod.metadata.uid)
    assert cli("history", "-o", "json").json() == []


def test_a_pod_whose_emptydir_data_would_go_moves_only_when_told(
        cli: Cli, cluster: Cluster, v1: client.CoreV1Api,
        plain_registry: RegistryUnderTest) -> None:
    # kubectl drain's rule, for the same reason: the source pod's emptyDirs are deleted
    # with it, and a checkpoint holds none of their files.
    pod = make_pod(v1, "scratch")
    base = ("pod", "scratch", "--to", "node-b", "--kubeconfig", cluster.kubeconfig,
            "--registry", f"{plain_registry.host}/migrations", "--no-tls-verify")
    for args in ((), ("--dry-run",)):
        r = cli(*base, *args)
        assert (r.code, r.err.splitlines()) == (2, [
            "error: pod default/scratch has emptyDir volume(s) data: a checkpoint does not "
            "hold their files, and they are deleted with the source pod",
            "hint: --delete-emptydir-data moves it anyway (the restored pod gets them "
            "empty); --keep-source leaves the source and its data running"])
    assert_untouched(v1, "scratch", pod.metadata.uid)
    assert cli("history", "-o", "json").json() == []
    # A copy beside a source left running loses nothing; the flag lets it go.
    for args in (("--keep-source",), ("--delete-emptydir-data",)):
        r = cli(*base, *args, "--dry-run", "-o", "json")
        assert (r.code, r.json()["plan"]["emptied_volumes"]) == (0, ["data"]), r.err


def test_the_emptydirs_a_pod_loses_are_all_of_its_own() -> None:
    from migrate.pipeline.preflight import PodRequest, local_data

    spec = {"volumes": [{"name": "shm", "emptyDir": {"medium": "Memory"}},
                        {"name": "conf", "configMap": {"name": "c"}},
                        {"name": "unmounted", "emptyDir": {}}], "containers": []}
    assert local_data({"spec": spec}) == ("shm", "unmounted")
    assert local_data({"spec": {"containers": []}}) == ()
    # A run journaled before the flag existed moved such pods: resumed, it still does.
    req = PodRequest("web", "node-b").to_dict()
    assert PodRequest.from_dict(req).delete_emptydir_data is False
    del req["delete_emptydir_data"]
    assert PodRequest.from_dict(req).delete_emptydir_data is True


@pytest.mark.parametrize(("node", "code", "message"), [
    ("node-a", 2, "error: pod dry2 already runs on node-a"),
    ("node-c", 6, "error: node node-c cannot restore checkpoints: containerd can checkpoint"),
    ("node-e", 6, "error: node node-e is not Ready: "),
    ("node-x", 4, "error: --to node-x: no such node\nhint: the cluster's nodes: node-a, "
     "node-b, node-c, node-d, node-e\n"),
])
def test_preflight_refusals(migrate: Callable[..., Result], v1: client.CoreV1Api,
                            node: str, code: int, message: str) -> None:
    if "dry2" not in pods(v1):
        make_pod(v1, "dry2")
    uid = v1.read_namespaced_pod("dry2", "default").metadata.uid
    r = migrate("dry2", "--to", node)
    assert r.code == code
    assert r.err.startswith(message), r.err
    assert "\nhint: " in r.err
    assert_untouched(v1, "dry2", uid)


def test_preflight_refuses_a_pod_it_cannot_move_before_anything_changes(
        migrate: Callable[..., Result], cluster: Cluster, v1: client.CoreV1Api) -> None:
    """What `migrate pod` refuses in the pod and its destination, each in one line with a
    hint, before the checkpoint: nothing is claimed, nothing is made."""
    def refused(pod: str, *args: str) -> tuple[int, str]:
        r = migrate(pod, "--to", "node-b", *args)
        lines = r.err.splitlines()
        assert len(lines) == 2 and lines[1].startswith("hint: "), r.err
        now = v1.read_namespaced_pod(pod, "default")
        assert "migrate.dev/claimed-by" not in (now.metadata.annotations or {})
        return r.code, lines[0]

    make_pod(v1, "picky", nodeSelector={"kubernetes.io/hostname": "node-a"})
    assert refused("picky") == (6, "error: node node-b does not have the label "
                                   "kubernetes.io/hostname=node-a (the pod's nodeSelector)")
    make_pod(v1, "cordon")
    with cordoned(v1, ["node-b"]):
        assert refused("cordon") == (6, "error: node node-b is cordoned")
    # A pod whose containers ended: nothing runs to be checkpointed.
    make_pod(v1, "ended", restartPolicy="Never",
             annotations_extra={"sim.migrate.dev/run-seconds": "2"})
    wait_for(lambda: v1.read_namespaced_pod("ended", "default").status.phase == "Succeeded",
             what="ended Succeeded")
    assert refused("ended") == (6, "error: pod default/ended is Succeeded, not Running")
    # A pod being deleted (a finalizer holds it there).
    make_pod(v1, "leaving", finalizers=["example.com/hold"])
    v1.delete_namespaced_pod("leaving", "default")
    try:
        assert refused("leaving") == (6, "error: pod default/leaving is being deleted")
    finally:
        v1.patch_namespaced_pod("leaving", "default", {"metadata": {"finalizers": None}})
    # A Job's pod: its controller would start another.
    batch = client.BatchV1Api(v1.api_client)
    batch.create_namespaced_job("default", {"metadata": {"name": "nightly"}, "spec": {
        "template": {"metadata": {"annotations": {"sim.migrate.dev/run-seconds": "600"}},
                     "spec": {"restartPolicy": "Never", "nodeName": "node-a",
                              "containers": [{"name": "task", "image": "busybox"}]}}}})
    job_pod = wait_for(lambda: [p.metadata.name for p in v1.list_namespaced_pod(
        "default", label_selector="job-name=nightly").items
        if p.status.phase == "Running"], what="the Job's pod Running")[0]
    try:
        assert refused(job_pod) == (2, f"error: pod default/{job_pod} is owned by Job "
                                       "nightly: it cannot be migrated")
    finally:
        batch.delete_namespaced_job("nightly", "default", propagation_policy="Background")


def test_image_names_the_checkpoint_image_of_one_container(
        cli: Cli, cluster: Cluster, v1: client.CoreV1Api,
        plain_registry: RegistryUnderTest) -> None:
    make_pod(v1, "chosen")
    ref = f"{plain_registry.host}/chosen/by-hand:v1"
    r = cli("pod", "chosen", "--to", "node-b", "-c", "counter", "--image", ref,
            "--kubeconfig", cluster.kubeconfig, "--no-tls-verify", "--timeout", "20",
            "--delete-emptydir-data", "-o", "json")
    assert r.code == 0, r.err
    image = r.json()["images"]["counter"]
    assert image["reference"] == f"{ref}@{image['digest']}", image
    restored = v1.read_namespaced_pod(r.json()["destination_pod"], "default")
    assert restored.spec.containers[0].image == image["reference"]
    # One image for two containers cannot be.
    make_pod(v1, "pair", containers=[
        {"name": "counter", "image": "quay.io/adrianreber/counter:latest"},
        {"name": "side", "image": "quay.io/adrianreber/counter:latest"}])
    r = cli("pod", "pair", "--to", "node-b", "--all-containers", "--image", ref,
            "--kubeconfig", cluster.kubeconfig, "--no-tls-verify", "--delete-emptydir-data")
    assert (r.code, r.err.splitlines()) == (2, [
        "error: --image names one image, and this migration checkpoints 2 containers",
        "hint: use --registry REG: each container gets its own image"])


def test_a_pod_on_a_containerd_node_is_refused_before_anything_changes(
        migrate: Callable[..., Result], v1: client.CoreV1Api) -> None:
    pod = make_pod(v1, "ctrd-source", node="node-c")
    r = migrate("ctrd-source", "--to", "node-b")
    assert (r.code, r.err.splitlines()) == (6, [
        "error: pod default/ctrd-source runs on node-c, whose runtime cannot be a source: "
        "containerd://2.4.0 checkpoints, but CRI-O refuses to restore containerd's archives "
        "(their spec.dump has no io.kubernetes.cri-o.Annotations), and migrate restores only "
        "on CRI-O",
        "hint: only pods on CRI-O nodes can be migrated (`migrate doctor` lists the nodes' "
        "runtimes); nothing was checkpointed"])
    now = v1.read_namespaced_pod("ctrd-source", "default")
    assert (now.metadata.uid, now.spec.node_name, now.status.phase) == (
        pod.metadata.uid, "node-c", "Running")
    assert "migrate.dev/claimed-by" not in (now.metadata.annotations or {})


def test_checkpoint_failing_three_times_is_retried(migrate: Callable[..., Result],
                                                   cluster: Cluster, v1: client.CoreV1Api) -> None:
    make_pod(v1, "flaky")
    cluster.configure_node("node-a", fail_next_checkpoints=3)
    r = migrate("flaky", "--to", "node-b", "-o", "json")
    assert r.code == 0, r.err
    assert pods(v1)[r.json()["destination_pod"]] == ("node-b", "Running")


def test_registry_down_fails_before_anything_changes(cli: Cli, cluster: Cluster,
                                                     v1: client.CoreV1Api) -> None:
    pod = make_pod(v1, "noreg")
    r = cli("pod", "noreg", "--to", "node-b", "--kubeconfig", cluster.kubeconfig,
            "--registry", "127.0.0.1:9/migrations", "--no-tls-verify", "--delete-emptydir-data")
    assert r.code == 7
    assert r.err.startswith("error: cannot reach 127.0.0.1:9"), r.err
    assert_untouched(v1, "noreg", pod.metadata.uid)


def test_restore_refused_by_the_runtime_rolls_back(migrate: Callable[..., Result],
                                                   v1: client.CoreV1Api) -> None:
    pod = make_pod(v1, "norestore")
    r = migrate("norestore", "--to", "node-d", "-o", "json")  # restore level checkpoint_only
    assert r.code == 6
    assert r.err.startswith("error: verify: the restore of counter on node-d failed: "
                            "CreateContainerError: "), r.err  # -o json: no progress lines
    report = r.json()  # the report of what was done is printed on failure too
    assert report["outcome"] == "rolled-back"
    # The restored pod and the archive are gone: their stages say so; the image stays.
    assert [s["status"] for s in report["stages"]] == [
        "done", "undone", "done", "undone", "failed", "pending", "pending"]
    assert report["checkpoints"]["counter"]["path"]  # what the undone stages measured
    assert report["destination_pod"].startswith("norestore-restored")
    assert any(a["action"].startswith("rollback: deleted pod") for a in report["actions"])
    assert_untouched(v1, "norestore", pod.metadata.uid)
    assert "MigrationFailed" in events(v1, "norestore")


def test_missing_bind_mount_is_refused_and_rolled_back(
        migrate: Callable[..., Result], v1: client.CoreV1Api,
        monkeypatch: pytest.MonkeyPatch) -> None:
    pod = make_pod(v1, "nomount")
    real = create_stage.render_restore_pod

    def without_the_volume(*args: Any, **kw: Any) -> dict[str, Any]:
        rendered = real(*args, **kw)
        spec = rendered["spec"]
        spec["volumes"] = [v for v in spec["volumes"] if v["name"] != "data"]
        spec["containers"][0]["volumeMounts"] = [
            m for m in spec["containers"][0]["volumeMounts"] if m["name"] != "data"]
        return rendered

    monkeypatch.setattr(create_stage, "render_restore_pod", without_the_volume)
    r = migrate("nomount", "--to", "node-b")
    assert r.code == 6
    assert "expects following bind mounts defined (/data)" in r.err
    assert "hint: the restored pod must mount every volume" in r.err
    assert_untouched(v1, "nomount", pod.metadata.uid)



def test_an_interrupted_run_resumes(migrate: Callable[..., Result], cli: Cli, cluster: Cluster,
                                    v1: client.CoreV1Api,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    make_pod(v1, "resumed")
    with monkeypatch.context() as m:
        interrupt_at(m, "verify")
        r = migrate("resumed", "--to", "node-b")
    assert r.code == 130
    journal_id = journal_id_of(r.err)
    assert f"`migrate resume {journal_id}` continues it" in r.err
    history = {h["id"]: h for h in cli("history", "-o", "json").json()}
    assert history[journal_id]["outcome"] == "interrupted"
    assert "resumed" in pods(v1)  # nothing was switched over
    r = cli("resume", journal_id, "--kubeconfig", cluster.kubeconfig, "-o", "json")
    assert r.code == 0, r.err
    assert r.json()["outcome"] == "succeeded"
    assert "resumed" not in pods(v1)
    assert pods(v1)[r.json()["destination_pod"]] == ("node-b", "Running")
    r = cli("resume", journal_id, "--kubeconfig", cluster.kubeconfig)
    assert (r.code, r.err.splitlines()[0]) == (
        2, f"error: migration {journal_id} has succeeded; nothing to resume")


def test_rollback_undoes_an_interrupted_run(migrate: Callable[..., Result], cli: Cli,
                                            cluster: Cluster, v1: client.CoreV1Api,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    pod = make_pod(v1, "undone")
    with monkeypatch.context() as m:
        interrupt_at(m, "switchover")
        r = migrate("undone", "--to", "node-b")
    assert r.code == 130
    journal_id = journal_id_of(r.err)
    assert any(n.startswith("undone-restored") for n in pods(v1))
    r = cli("rollback", journal_id, "--kubeconfig", cluster.kubeconfig, "-o", "json")
    assert r.code == 0, r.err
    assert r.json()["outcome"] == "rolled-back"
    assert r.json()["undone"][0].startswith("deleted pod default/undone-restored")
    stages = {s.name: s.status for s in
              Journal.load(Path(os.environ["MIGRATE_STATE_DIR"]), journal_id).stages}
    assert stages == {"preflight": "done", "checkpoint": "undone", "build": "done",
                      "create": "undone", "verify": "done", "switchover": "failed",
                      "cleanup": "pending"}
    wait_for(lambda: not any(n.startswith("undone-restored") for n in pods(v1)))
    assert_untouched(v1, "undone", pod.metadata.uid)


def test_journal_files_are_private(migrate: Callable[..., Result], v1: client.CoreV1Api,
                                   tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIGRATE_STATE_DIR", str(tmp_path))
    make_pod(v1, "private")
    assert migrate("private", "--to", "node-b").code == 0
    files = list((tmp_path / "journal").glob("*.json"))
    assert len(files) == 1 and files[0].stat().st_mode & 0o777 == 0o600


def test_usage_errors(cli: Cli, cluster: Cluster) -> None:
    r = cli("pod", "x", "--to", "node-b", "--kubeconfig", cluster.kubeconfig)
    assert (r.code, r.err.splitlines()[0]) == (
        2, "error: give exactly one of --registry REG and --image REF")
    r = cli("pod", "x", "--to", "node-b", "-c", "a", "--all-containers", "--image", "r.io/a:1")
    assert (r.code, r.err.splitlines()[0]) == (2, "error: -c and --all-containers exclude "
                                                   "each other")
    r = cli("resume", "../etc", "--kubeconfig", cluster.kubeconfig)
    assert r.code == 2
    r = cli("rollback", "pod-nothing-20260101t000000-abcd", "--kubeconfig", cluster.kubeconfig)
    assert r.code == 4


def test_a_deployment_pod_is_handed_over_to_its_replicaset(
        migrate: Callable[..., Result], cluster: Cluster, v1: client.CoreV1Api) -> None:
    with api_client(cluster.kubeconfig) as api:
        apps = client.AppsV1Api(api)
        template = {"metadata": {"labels": {"app": "web"}, "annotations": {
            "sim.migrate.dev/processes": json.dumps([{"argv": ["/web"], "heap": SECRET}])}},
            "spec": {"containers": [{"name": "web", "image": "quay.io/example/web:1"}],
                     "nodeSelector": {}}}
        def web_pods() -> list[Any]:
            return [p for p in v1.list_namespaced_pod("default", label_selector="app=web").items
                    if not p.metadata.deletion_timestamp]

        # Off the containerd node: CRI-O cannot restore its checkpoints (preflight says so).
        with cordoned(v1, ["node-c"]):
            apps.create_namespaced_deployment("default", {
                "metadata": {"name": "web"},
                "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                         "template": template}})
            running = wait_for(lambda: (ps := web_pods()) and len(ps) == 2 and all(
                p.status.phase == "Running" for p in ps) and ps, what="2 web pods")
        source = next((p for p in running if p.spec.node_name == "node-a"), running[0])
        to = "node-b" if source.spec.node_name == "node-a" else "node-a"
        rs_name = source.metadata.owner_references[0].name
        r = migrate(source.metadata.name, "--to", to, "-o", "json")
        assert r.code == 0, r.err
        report = r.json()
        assert report["plan"]["switch"] == "handover"
        assert report["plan"]["owner"] == {"kind": "ReplicaSet", "name": rs_name}
        restored_name = report["destination_pod"]
        assert restored_name.startswith(f"{rs_name}-") and restored_name != source.metadata.name

        def settled() -> list[Any] | None:
            ps = web_pods()
            rs = apps.read_namespaced_replica_set(rs_name, "default")
            names = {p.metadata.name for p in ps}
            return ps if (len(ps) == 2 and restored_name in names
                          and source.metadata.name not in names
                          and rs.status.replicas == 2) else None

        final = wait_for(settled, what="the ReplicaSet to settle on the restored pod")
        restored = next(p for p in final if p.metadata.name == restored_name)
        assert restored.spec.node_name == to
        assert restored.metadata.owner_references[0].name == rs_name  # adopted
        assert restored.metadata.labels["pod-template-hash"]  # the held-back label is back
        assert apps.read_namespaced_deployment("web", "default").spec.replicas == 2
        # The ReplicaSet never made a pod of its own during the switch-over (one
        # would mean it saw the source gone before it counted the restored pod):
        # it created the two it started with, nothing since.
        created = [e for e in v1.list_namespaced_event(
            "default", field_selector=f"involvedObject.name={rs_name}").items
            if e.reason == "SuccessfulCreate"]
        assert sum(e.count or 1 for e in created) == 2, [e.message for e in created]


def test_every_container_of_a_pod_with_an_init_container(
        migrate: Callable[..., Result], v1: client.CoreV1Api) -> None:
    body = {"metadata": {"name": "multi", "annotations": {
        "sim.migrate.dev/processes.api": json.dumps([{"argv": ["/api"], "heap": SECRET}]),
        "sim.migrate.dev/processes.sidecar": json.dumps([{"argv": ["/ship"]}])}},
        "spec": {"nodeName": "node-a",
                 "initContainers": [{"name": "init", "image": "quay.io/example/init:1"}],
                 "containers": [{"name": "api", "image": "quay.io/example/api:1"},
                                {"name": "sidecar", "image": "quay.io/example/ship:1"}]}}
    v1.create_namespaced_pod("default", body)
    wait_for(lambda: v1.read_namespaced_pod("multi", "default").status.phase == "Running")
    r = migrate("multi", "--to", "node-b", "--all-containers", "-o", "json")
    assert r.code == 0, r.err
    report = r.json()
    assert sorted(report["images"]) == ["api", "sidecar"]
    restored = v1.read_namespaced_pod(report["destination_pod"], "default")
    assert not restored.spec.init_containers  # they already ran
    statuses = {s.name: s for s in restored.status.container_statuses}
    for container in ("api", "sidecar"):
        record = json.loads(restored.metadata.annotations[f"sim.migrate.dev/restored.{container}"])
        assert report["images"][container]["digest"] in record["imageID"]
        assert statuses[container].image == record["baseImage"]


@pytest.mark.parametrize("fault", ["node NotReady", "restored pod gone"])
def test_a_destination_lost_after_verify_leaves_the_source_untouched(
        migrate: Callable[..., Result], cluster: Cluster, v1: client.CoreV1Api,
        monkeypatch: pytest.MonkeyPatch, fault: str) -> None:
    name = "lost-node" if fault == "node NotReady" else "lost-pod"
    pod = make_pod(v1, name)
    real = migration.STAGE_FUNCTIONS["verify"]

    def verify_then_lose(run: migration.Run) -> dict[str, Any]:
        verified = real(run)  # the destination was fine when verify saw it...
        if fault == "node NotReady":  # ...and then it was not
            cluster.configure_node("node-b", ready=False)
        else:
            v1.delete_namespaced_pod(run.created.pod, "default",
                                     grace_period_seconds=0)
        return verified

    monkeypatch.setitem(migration.STAGE_FUNCTIONS, "verify", verify_then_lose)
    try:
        r = migrate(name, "--to", "node-b", "-o", "json")
    finally:
        cluster.configure_node("node-b", ready=True)
    assert r.code == 6, r.err
    report = r.json()
    restored = report["destination_pod"]
    error, hint = r.err.splitlines()[-2:]
    if fault == "node NotReady":
        assert error.startswith("error: switchover: destination node node-b is not Ready any "
                                "more: container runtime network not ready"), error
    else:
        assert error == f"error: switchover: the restored pod {restored} is gone or going"
    assert hint == ("hint: the source was not touched; migrate it again when the destination "
                    "is healthy")
    assert report["outcome"] == "rolled-back"
    assert [s["status"] for s in report["stages"]][4:6] == ["done", "failed"]
    assert not [a for a in report["actions"] if a["action"] in ("switch-over",
                                                                "source deleted")]
    wait_for(lambda: restored not in pods(v1), what=f"{restored} rolled back")
    assert_untouched(v1, name, pod.metadata.uid)
    assert "migrate.dev/claimed-by" not in (
        v1.read_namespaced_pod(name, "default").metadata.annotations or {})


def test_a_deployment_pod_stays_when_the_destination_goes_not_ready(
        migrate: Callable[..., Result], cluster: Cluster, v1: client.CoreV1Api,
        monkeypatch: pytest.MonkeyPatch) -> None:
    with api_client(cluster.kubeconfig) as api:
        apps = client.AppsV1Api(api)
        with cordoned(v1, ["node-b", "node-c", "node-d"]):  # only node-a takes the pod
            apps.create_namespaced_deployment("default", {
                "metadata": {"name": "steady"},
                "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "steady"}},
                         "template": {"metadata": {"labels": {"app": "steady"}}, "spec": {
                             "containers": [{"name": "web",
                                             "image": "quay.io/example/web:1"}]}}}})
            source = wait_for(lambda: next((p for p in v1.list_namespaced_pod(
                "default", label_selector="app=steady").items if p.status.phase == "Running"),
                None), what="steady's pod")
        real = migration.STAGE_FUNCTIONS["verify"]

        def verify_then_lose(run: migration.Run) -> dict[str, Any]:
            verified = real(run)
            cluster.configure_node("node-b", ready=False)
            return verified

        monkeypatch.setitem(migration.STAGE_FUNCTIONS, "verify", verify_then_lose)
        try:
            r = migrate(source.metadata.name, "--to", "node-b", "-o", "json")
        finally:
            cluster.configure_node("node-b", ready=True)
        assert r.code == 6, r.err
        assert r.json()["outcome"] == "rolled-back"
        # The ReplicaSet keeps its own pod: no deletion cost, no claim, same uid.
        wait_for(lambda: [p.metadata.name for p in v1.list_namespaced_pod(
            "default", label_selector="app=steady").items] == [source.metadata.name],
            what="only the source left")
        now = v1.read_namespaced_pod(source.metadata.name, "default")
        assert (now.metadata.uid, now.status.phase, now.spec.node_name) == (
            source.metadata.uid, "Running", "node-a")
        assert now.metadata.annotations == source.metadata.annotations


def manifest_status(registry: RegistryUnderTest, image: str) -> int:
    """HTTP status of the registry's manifest for ``image`` (REG/REPO[:TAG]@DIGEST)."""
    name, digest = image.split("/", 1)[1].split("@")
    name = name.rsplit(":", 1)[0] if ":" in name.rsplit("/", 1)[-1] else name
    resp = registry.http().request("HEAD", f"{registry.url}/v2/{name}/manifests/{digest}",
                                   headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
    return int(resp.status)


def test_cleanup_image_deletes_the_checkpoint_image_once_switched_over(
        migrate: Callable[..., Result], v1: client.CoreV1Api,
        plain_registry: RegistryUnderTest) -> None:
    """Only the restored pod names the image, and it restarts from its node's copy."""
    make_pod(v1, "tidy")
    r = migrate("tidy", "--to", "node-b", "--cleanup-image", "-o", "json")
    assert r.code == 0, r.err
    report = r.json()
    validate(report, "pod.schema.json", "pod -o json")
    image = report["images"]["counter"]["reference"]
    assert manifest_status(plain_registry, image) == 404
    assert [a["image"] for a in report["actions"] if a["action"] == "image deleted"] == [image]
    restored = v1.read_namespaced_pod(report["destination_pod"], "default")
    assert (restored.spec.node_name, restored.status.phase) == ("node-b", "Running")


def test_cleanup_image_kept_does_not_fail_the_migration(
        migrate: Callable[..., Result], v1: client.CoreV1Api, plain_registry: RegistryUnderTest,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The pod has moved: an image the cleanup may not delete is kept, and said so."""
    from migrate.errors import UsageError
    from migrate.pipeline.migration import cleanup

    def refused(*_: Any, **__: Any) -> list[dict[str, Any]]:
        raise UsageError("checkpoint image X is still used by pod default/other: nothing was "
                         "deleted")
    monkeypatch.setattr(cleanup, "delete_images", refused)
    make_pod(v1, "kept")
    r = migrate("kept", "--to", "node-b", "--cleanup-image", "-o", "json")
    assert r.code == 0, r.err
    report = r.json()
    assert report["outcome"] == "succeeded"
    assert [a["reason"] for a in report["actions"] if a["action"] == "images kept"] == [
        "checkpoint image X is still used by pod default/other: nothing was deleted"]
    assert manifest_status(plain_registry, report["images"]["counter"]["reference"]) == 200


# -- the workload's image on a CRI-O destination (CRI-O restores onto it, pulls nothing) ----

@pytest.fixture
def workload_image(plain_registry: RegistryUnderTest, unique_repo: str) -> tuple[str, str]:
    """An image of a registry the nodes pull from (none holds it yet): (tag, REPO@DIGEST)."""
    digest = push_app_image(plain_registry, unique_repo)
    repo = f"{plain_registry.host}/{unique_repo}"
    return f"{repo}:v1", f"{repo}@{digest}"


def prepull_pods(v1: client.CoreV1Api) -> list[str]:
    return [n for n in pods(v1) if "-prepull-" in n]


def test_a_destination_without_the_workload_image_pulls_it_before_the_restore(
        migrate: Callable[..., Result], v1: client.CoreV1Api,
        workload_image: tuple[str, str]) -> None:
    tag, by_digest = workload_image
    source = make_pod(v1, "fresh", image=tag)
    assert source.status.container_statuses[0].image_id == by_digest
    r = migrate("fresh", "--to", "node-b", "-o", "json")
    assert r.code == 0, r.err
    report = r.json()
    validate(report, "pod.schema.json", "pod -o json")
    assert list(report["base_images"]) == [by_digest] and report["base_images"][by_digest] > 0
    [pulled] = [a for a in report["actions"] if a["action"] == "base image pulled"]
    assert (pulled["node"], pulled["image"]) == ("node-b", by_digest)
    # Pulled before the checkpoint (the state window pays nothing for it), so before the
    # restored pod existed; the pre-pull pod is gone.
    actions = [a["action"] for a in report["actions"]]
    assert actions.index("base image pulled") < actions.index("checkpointed")
    assert actions.index("base image pulled") < actions.index("created Pod", actions.index(
        "base image pulled"))
    assert prepull_pods(v1) == []
    restored = v1.read_namespaced_pod(report["destination_pod"], "default")
    # CRI-O reports the base image by node-b's name for it: the digest it was pulled by.
    assert restored.status.container_statuses[0].image == by_digest
    # The node now lists the image, as a kubelet lists what it holds: the next
    # migration of it to node-b has nothing to pull.
    wait_for(lambda: by_digest in {n for i in v1.read_node("node-b").status.images or []
                                   for n in i.names}, what="node-b to list the image")
    make_pod(v1, "fresh-2", image=tag)
    r = migrate("fresh-2", "--to", "node-b", "-o", "json")
    assert r.code == 0, r.err
    assert "base_images" not in r.json()
    assert [a["image"] for a in r.json()["actions"] if a["action"] == "base image present"] == [
        by_digest]


def test_a_restored_pod_migrates_back_where_its_image_has_another_name(
        migrate: Callable[..., Result], v1: client.CoreV1Api,
        workload_image: tuple[str, str]) -> None:
    # node-b holds the base image by digest (the pre-pull), node-a by tag (the source's
    # pull): back on node-a, CRI-O shows the restored container's image by its tag, and
    # its imageID is the base image's. Found on the real nodes.
    tag, by_digest = workload_image
    make_pod(v1, "there-and-back", image=tag)
    r = migrate("there-and-back", "--to", "node-b", "-o", "json")
    assert r.code == 0, r.err
    r = migrate(r.json()["destination_pod"], "--to", "node-a", "-o", "json")
    assert r.code == 0, r.err
    back = v1.read_namespaced_pod(r.json()["destination_pod"], "default")
    [status] = back.status.container_statuses
    assert (back.spec.node_name, status.image, status.image_id) == ("node-a", tag, by_digest)


def test_without_the_pull_the_restore_fails_as_cri_o_fails_it(
        migrate: Callable[..., Result], v1: client.CoreV1Api,
        workload_image: tuple[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """What the pull prevents: CRI-O's `image not known`, rolled back, with the hint."""
    from migrate.pipeline.migration import base

    monkeypatch.setattr(base, "pull_base_images", lambda run: None)
    uid = make_pod(v1, "bare", image=workload_image[0]).metadata.uid
    r = migrate("bare", "--to", "node-b")
    assert r.code != 0
    assert "image not known" in r.err and "reading image" in r.err, r.err
    assert "pull that image on the destination" in r.err
    assert_untouched(v1, "bare", uid)


def test_an_image_the_destination_cannot_pull_fails_before_the_restored_pod(
        migrate: Callable[..., Result], v1: client.CoreV1Api, plain_registry: RegistryUnderTest,
        workload_image: tuple[str, str]) -> None:
    tag, by_digest = workload_image
    uid = make_pod(v1, "gone", image=tag).metadata.uid
    repo, digest = by_digest.split("/", 1)[1].split("@")
    deleted = plain_registry.http().request("DELETE",
                                            f"{plain_registry.url}/v2/{repo}/manifests/{digest}")
    assert deleted.status == 202, deleted.data
    r = migrate("gone", "--to", "node-b", "-o", "json")
    assert r.code != 0
    report = r.json()
    assert report["outcome"] == "rolled-back"
    # Before any checkpoint: the pull comes first in the checkpoint stage.
    assert [s["status"] for s in report["stages"]][1] == "failed"
    assert not [a for a in report["actions"] if a["action"] == "checkpointed"]
    assert f"node-b cannot pull {by_digest}" in r.err, r.err
    assert "hint: " in r.err
    actions = [a["action"] for a in report["actions"]]
    assert actions.count("created Pod") == 1  # the pre-pull pod only, then deleted
    assert prepull_pods(v1) == []
    assert_untouched(v1, "gone", uid)


def test_a_destination_listing_the_image_is_not_asked_to_pull_it(
        migrate: Callable[..., Result], cluster: Cluster, v1: client.CoreV1Api,
        workload_image: tuple[str, str]) -> None:
    tag, by_digest = workload_image
    make_pod(v1, "known", image=tag)
    # node-b got it some other way (the node agent's store, as its Node reports it).
    make_pod(v1, "other", node="node-b", image=tag)
    images = v1.read_node("node-b").status.images or []
    v1.patch_node_status("node-b", {"status": {"images": [
        *({"names": i.names, "sizeBytes": i.size_bytes} for i in images),
        {"names": [by_digest, tag], "sizeBytes": 1024}]}})
    r = migrate("known", "--to", "node-b", "-o", "json")
    assert r.code == 0, r.err
    report = r.json()
    assert "base_images" not in report
    assert [(a["node"], a["image"]) for a in report["actions"]
            if a["action"] == "base image present"] == [("node-b", by_digest)]
    assert [a for a in report["actions"] if a["action"] == "created Pod"] == [
        a for a in report["actions"] if a["action"] == "created Pod"
        and a["name"] == report["destination_pod"]]


def test_a_run_interrupted_while_pulling_resumes_without_leaving_the_pre_pull_pod(
        migrate: Callable[..., Result], cli: Cli, cluster: Cluster, v1: client.CoreV1Api,
        workload_image: tuple[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    from migrate.pipeline import prepull

    def interrupted(*_: Any, **__: Any) -> None:
        raise KeyboardInterrupt
    make_pod(v1, "halfway", image=workload_image[0])
    with monkeypatch.context() as m:
        m.setattr(prepull, "wait", interrupted)
        r = migrate("halfway", "--to", "node-b")
    assert r.code == 130
    assert len(prepull_pods(v1)) == 1
    journal_id = journal_id_of(r.err)
    r = cli("resume", journal_id, "--kubeconfig", cluster.kubeconfig, "-o", "json")
    assert r.code == 0, r.err
    # The interrupted pre-pull pod had pulled it already: the node lists it now, or the
    # resumed run pulls it again.
    assert r.json()["outcome"] == "succeeded"
    assert [a["image"] for a in r.json()["actions"]
            if a["action"] in ("base image pulled", "base image present")][-1:] == [
        workload_image[1]]
    assert prepull_pods(v1) == []


def test_only_the_emptydirs_of_the_moved_containers_are_named() -> None:
    from migrate.pipeline.preflight import emptied_volumes

    pod = {"spec": {"volumes": [{"name": "cache", "emptyDir": {}},
                                {"name": "shm", "emptyDir": {"medium": "Memory"}},
                                {"name": "conf", "configMap": {"name": "c"}},
                                {"name": "logs", "emptyDir": {}}],
                    "containers": [
                        {"name": "app", "volumeMounts": [{"name": "shm", "mountPath": "/s"},
                                                         {"name": "cache", "mountPath": "/c"},
                                                         {"name": "conf", "mountPath": "/e"}]},
                        {"name": "shipper", "volumeMounts": [{"name": "logs", "mountPath": "/l"}]}]}}
    assert emptied_volumes(pod, ("app",)) == ("cache", "shm")
    assert emptied_volumes(pod, ("app", "shipper")) == ("cache", "logs", "shm")


def test_a_user_who_may_not_list_the_nodes_pods_leaves_the_room_to_the_kubelet(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from migrate.errors import AuthError
    from migrate.pipeline import preflight

    def forbidden(*args: Any, **kw: Any) -> Any:
        raise AuthError("pods is forbidden: cannot list resource pods at the cluster scope")

    monkeypatch.setattr(preflight.kube, "list_pods", forbidden)
    pod = {"metadata": {"name": "big", "namespace": "default"},
           "spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": "64"}}}]}}
    node = {"metadata": {"name": "node-b"}, "status": {"allocatable": {"cpu": "2"}}}
    preflight.check_room(None, pod, node)  # type: ignore[arg-type]
    monkeypatch.setattr(preflight.kube, "list_pods", lambda *a, **kw: [])
    with pytest.raises(preflight.ClusterError, match="node node-b has no room for pod "
                       "default/big: not enough cpu"):
        preflight.check_room(None, pod, node)  # type: ignore[arg-type]
