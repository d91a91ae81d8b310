"""Interrupted migrations: SIGTERM, interruptions as a stage starts, killed processes,
and resuming them, also against registries that need TLS options or credentials.

Against the real control plane with node agents. SIGTERM goes to real
`migrate pod` processes (the installed console script) at points the test
knows they are at: inside the checkpoint (the source node's agent holds
checkpoints), or in verify (the destination's image pull takes seconds; the
journal says when verify began).
"""

from __future__ import annotations

import base64
import json
import os
import signal
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
from migrate.pipeline import migration, switchover
from migrate.pipeline.journal import Journal
from tests.cluster import node_agents, wait_for
from tests.conftest import Result, done_then, interrupt_at, journal_id_of
from tests.registries import RegistryUnderTest
from tests.test_migrate_pod import assert_untouched, make_pod, pods

Cli = Callable[..., Result]
MIGRATE = str(Path(sys.executable).parent / "migrate")


@pytest.fixture(scope="module")
def cluster(real_cp: ControlPlane, tmp_path_factory: pytest.TempPathFactory,
            plain_registry: RegistryUnderTest,
            tls_basic_registry: RegistryUnderTest) -> Iterator[Cluster]:
    assert tls_basic_registry.ca_cert is not None
    registries = RegistryConfig(insecure=(plain_registry.host,),
                                ca_files=(tls_basic_registry.ca_cert,))
    with node_agents(real_cp, tmp_path_factory.mktemp("nodes"), nodes=("node-a", "node-b"),
                     start_latency=0.05, stop_latency=0.05, registries=registries) as world:
        yield world


@pytest.fixture(autouse=True)
def _node_root(cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIGRATE_NODE_ROOT", cluster.node_root)


def plain(cluster: Cluster, registry: RegistryUnderTest, pod: str) -> list[str]:
    return ["pod", pod, "--to", "node-b", "--kubeconfig", str(cluster.kubeconfig), "--registry",
            f"{registry.host}/interrupted", "--no-tls-verify", "--timeout", "30",
            "--delete-emptydir-data"]


def journal(journal_id: str) -> Journal:
    return Journal.load(Path(os.environ["MIGRATE_STATE_DIR"]), journal_id)


def stages(journal_id: str) -> dict[str, tuple[str, str | None]]:
    return {s.name: (s.status, s.error) for s in journal(journal_id).stages}



def interrupted_lines(journal_id: str, why: str = "interrupted by SIGTERM") -> list[str]:
    return [f"migrate: migration {journal_id} interrupted: `migrate resume {journal_id}` "
            f"continues it, `migrate rollback {journal_id}` undoes it", f"error: {why}"]


def history(cli: Cli) -> dict[str, str]:
    return {h["id"]: h["outcome"] for h in cli("history", "-o", "json").json()}


def resume(cli: Cli, cluster: Cluster, journal_id: str, *args: str) -> Result:
    return cli("resume", journal_id, "--kubeconfig", cluster.kubeconfig, "-o", "json", *args)


def test_sigterm_in_the_checkpoint(cli: Cli, cluster: Cluster, v1: client.CoreV1Api,
                                   plain_registry: RegistryUnderTest,
                                   spawned: list[subprocess.Popen[str]]) -> None:
    pod = make_pod(v1, "term-checkpoint")
    with cluster.holding_checkpoints("node-a") as waiting:
        run = subprocess.Popen([MIGRATE, *plain(cluster, plain_registry, "term-checkpoint")],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        spawned.append(run)
        wait_for(lambda: waiting() == 1, timeout=60, what="the run inside its checkpoint")
        run.send_signal(signal.SIGTERM)
        _, err = run.communicate(timeout=30)
    assert run.returncode == 130, err
    journal_id = journal_id_of(err)
    assert err.splitlines()[-2:] == interrupted_lines(journal_id)
    assert journal(journal_id).outcome == "interrupted"
    assert stages(journal_id)["checkpoint"] == ("failed", "interrupted")
    assert history(cli)[journal_id] == "interrupted"
    assert_untouched(v1, "term-checkpoint", pod.metadata.uid)
    r = resume(cli, cluster, journal_id)  # no registry options: the journal has them
    assert r.code == 0, r.err
    assert r.json()["outcome"] == "succeeded"
    assert "term-checkpoint" not in pods(v1)
    assert pods(v1)[r.json()["destination_pod"]] == ("node-b", "Running")


def test_sigterm_in_verify(cli: Cli, cluster: Cluster, v1: client.CoreV1Api,
                           plain_registry: RegistryUnderTest,
                           spawned: list[subprocess.Popen[str]]) -> None:
    make_pod(v1, "term-verify")
    cluster.configure_node("node-b", image_pull_seconds=5.0)  # verify lasts this long at least
    try:
        run = subprocess.Popen([MIGRATE, *plain(cluster, plain_registry, "term-verify")],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        spawned.append(run)

        def verifying() -> str | None:
            for path in Path(os.environ["MIGRATE_STATE_DIR"], "journal").glob(
                    "pod-term-verify-*.json"):
                data = json.loads(path.read_text())
                if any(s["name"] == "verify" and s["status"] == "running"
                       for s in data["stages"]):
                    return str(data["id"])
            return None

        journal_id = wait_for(verifying, timeout=60, what="the run in verify")
        run.send_signal(signal.SIGTERM)
        _, err = run.communicate(timeout=30)
    finally:
        cluster.configure_node("node-b", image_pull_seconds=0.0)
    assert run.returncode == 130, err
    assert err.splitlines()[-2:] == interrupted_lines(journal_id)
    assert stages(journal_id)["verify"] == ("failed", "interrupted")
    assert "term-verify" in pods(v1)  # nothing was switched over
    r = resume(cli, cluster, journal_id)
    assert r.code == 0, r.err
    assert r.json()["outcome"] == "succeeded"
    assert "term-verify" not in pods(v1)


@pytest.mark.parametrize("where", ["progress", "begin"])
def test_an_interruption_as_a_stage_starts(cli: Cli, cluster: Cluster, v1: client.CoreV1Api,
                                           plain_registry: RegistryUnderTest,
                                           monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    """Ctrl-C or SIGTERM landing between `progress(stage, "started")`, the journal's
    `begin` and the stage's own code."""
    name = f"starting-{where}"
    make_pod(v1, name)
    real_begin = Journal.begin

    def begin(self: Journal, stage: str) -> Any:
        started = real_begin(self, stage)
        if stage == "build":
            raise KeyboardInterrupt
        return started

    def progress(stage: str, message: str) -> None:
        if (stage, message) == ("build", "started"):
            raise KeyboardInterrupt

    with monkeypatch.context() as m:
        if where == "begin":
            m.setattr(Journal, "begin", begin)
        else:
            m.setattr("migrate.cli.migration._progress", progress)
        r = cli(*plain(cluster, plain_registry, name))
    assert r.code == 130
    journal_id = journal_id_of(r.err)
    assert r.err.splitlines()[-2:] == interrupted_lines(journal_id, "interrupted")
    assert journal(journal_id).outcome == "interrupted"
    assert stages(journal_id)["build"] == (
        ("failed", "interrupted") if where == "begin" else ("pending", None))
    r = resume(cli, cluster, journal_id)
    assert r.code == 0, r.err
    assert [s["status"] for s in r.json()["stages"]] == ["done"] * 7


def test_a_killed_run_reads_as_interrupted(cli: Cli, cluster: Cluster, v1: client.CoreV1Api,
                                           plain_registry: RegistryUnderTest,
                                           spawned: list[subprocess.Popen[str]]) -> None:
    make_pod(v1, "killed")
    with cluster.holding_checkpoints("node-a") as waiting:
        run = subprocess.Popen([MIGRATE, *plain(cluster, plain_registry, "killed")],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        spawned.append(run)
        wait_for(lambda: waiting() == 1, timeout=60, what="the run inside its checkpoint")
        run.kill()  # SIGKILL: no chance to say anything
        run.communicate(timeout=30)
    (journal_id,) = [j for j in history(cli) if j.startswith("pod-killed-")]
    assert journal(journal_id).outcome == "running"  # what the file says...
    assert history(cli)[journal_id] == "interrupted"  # ...and what it means: no one runs it
    table = cli("history").out.splitlines()
    assert next(line for line in table if journal_id in line).split()[2] == "interrupted"
    r = cli(*plain(cluster, plain_registry, "killed"))  # its claim still holds the pod
    assert (r.code, r.err.splitlines()[0]) == (
        2, f"error: pod default/killed is claimed by migration {journal_id}, which was "
        "interrupted")
    r = resume(cli, cluster, journal_id)
    assert r.code == 0, r.err
    assert r.json()["outcome"] == "succeeded"



def test_resume_reaches_a_plain_http_registry_as_the_run_did(
        cli: Cli, cluster: Cluster, v1: client.CoreV1Api, plain_registry: RegistryUnderTest,
        monkeypatch: pytest.MonkeyPatch) -> None:
    make_pod(v1, "plain-resume")
    with monkeypatch.context() as m:
        interrupt_at(m, "build")
        r = cli(*plain(cluster, plain_registry, "plain-resume"))
    assert r.code == 130
    journal_id = journal_id_of(r.err)
    assert journal(journal_id).registry == {"tls_verify": False, "cert_dir": None,
                                            "authfile": None, "creds": False}
    r = resume(cli, cluster, journal_id)
    assert r.code == 0, r.err
    assert r.json()["images"]["counter"]["reference"].startswith(f"{plain_registry.host}/")
    assert "plain-resume" not in pods(v1)


@pytest.mark.parametrize("login", ["creds", "authfile"])
def test_resume_reaches_a_registry_needing_credentials(
        cli: Cli, cluster: Cluster, v1: client.CoreV1Api, tls_basic_registry: RegistryUnderTest,
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, login: str) -> None:
    reg = tls_basic_registry
    assert reg.cert_dir is not None and reg.password is not None
    name = f"private-{login}"
    secret = v1.create_namespaced_secret("default", {
        "metadata": {"name": f"pull-{login}"}, "type": "kubernetes.io/dockerconfigjson",
        "data": {".dockerconfigjson": base64.b64encode(json.dumps({"auths": {reg.host: {
            "auth": base64.b64encode(reg.creds.encode()).decode()}}}).encode()).decode()}})
    pod = make_pod(v1, name, imagePullSecrets=[{"name": secret.metadata.name}])
    authfile = tmp_path / "auth.json"
    authfile.write_text(json.dumps({"auths": {reg.host: {
        "auth": base64.b64encode(str(reg.creds).encode()).decode()}}}))
    given = ["--creds", str(reg.creds)] if login == "creds" else ["--authfile", str(authfile)]
    with monkeypatch.context() as m:
        interrupt_at(m, "build")
        r = cli("pod", name, "--to", "node-b", "--kubeconfig", cluster.kubeconfig, "--registry",
                f"{reg.host}/interrupted", "--cert-dir", reg.cert_dir, "--timeout", "30",
                "--delete-emptydir-data", *given)
    assert r.code == 130
    journal_id = journal_id_of(r.err)
    recorded = journal(journal_id)
    assert recorded.registry == {
        "tls_verify": True, "cert_dir": str(reg.cert_dir), "creds": login == "creds",
        "authfile": str(authfile) if login == "authfile" else None}
    assert reg.password not in recorded.path.read_text()  # never a secret
    if login == "creds":
        r = resume(cli, cluster, journal_id)
        assert (r.code, r.out, r.err.splitlines()) == (8, "", [
            f"error: migration {journal_id} logged in to the registry with --creds, and "
            "credentials are never recorded",
            f"hint: give them again: migrate resume {journal_id} --creds USER:PASS (or "
            "--authfile FILE)"])
        assert journal(journal_id).outcome == "interrupted"  # refused before anything
        assert_untouched(v1, name, pod.metadata.uid)
        r = resume(cli, cluster, journal_id, "--creds", str(reg.creds))
    else:
        r = resume(cli, cluster, journal_id)
    assert r.code == 0, r.err
    assert r.json()["outcome"] == "succeeded"
    restored = v1.read_namespaced_pod(r.json()["destination_pod"], "default")
    # Restored from the checkpoint image (CRI-O then reports the workload's image).
    record = json.loads(restored.metadata.annotations["sim.migrate.dev/restored.counter"])
    assert record["imageID"].endswith(r.json()["images"]["counter"]["digest"])
    assert reg.password not in journal(journal_id).path.read_text()


def test_resume_options_win_over_the_journal(cli: Cli, cluster: Cluster, v1: client.CoreV1Api,
                                             plain_registry: RegistryUnderTest,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    pod = make_pod(v1, "override")
    with monkeypatch.context() as m:
        interrupt_at(m, "build")
        r = cli(*plain(cluster, plain_registry, "override"))
    journal_id = journal_id_of(r.err)
    # --tls-verify against a plain-HTTP registry: the resume fails as that says, and
    # rolls back; the source stays.
    r = resume(cli, cluster, journal_id, "--tls-verify")
    assert r.code == 7, r.err
    assert r.err.startswith(f"error: build: TLS with {plain_registry.host} failed"), r.err
    assert journal(journal_id).outcome == "rolled-back"
    assert_untouched(v1, "override", pod.metadata.uid)


def test_a_failed_rollback_leaves_the_run_to_roll_back_again(
        cli: Cli, cluster: Cluster, v1: client.CoreV1Api, plain_registry: RegistryUnderTest,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from migrate.errors import ClusterError
    from migrate.pipeline import claims

    pod = make_pod(v1, "undo-fails")

    def refused(run: migration.Run) -> dict[str, Any]:
        raise ClusterError("verify refused (injected)")

    def unreachable(*args: Any) -> bool:
        raise ClusterError("patch pod default/undo-fails: cannot reach the API server")

    with monkeypatch.context() as m:
        m.setitem(migration.STAGE_FUNCTIONS, "verify", refused)
        m.setattr(claims, "release", unreachable)
        r = cli(*plain(cluster, plain_registry, "undo-fails"))
    assert r.code == 6
    (journal_id,) = [j for j in history(cli) if j.startswith("pod-undo-fails-")]
    assert r.err.splitlines()[-2:] == [
        "error: verify: verify refused (injected)",
        "hint: the rollback failed too (patch pod default/undo-fails: cannot reach the API "
        f"server): `migrate rollback {journal_id}` tries again"]
    assert history(cli)[journal_id] == "interrupted"  # not over: it holds its pod still
    r = cli("rollback", journal_id, "--kubeconfig", cluster.kubeconfig, "-o", "json")
    assert r.code == 0, r.err
    assert r.json()["undone"][-1] == "released the claim on undo-fails"
    wait_for(lambda: not [n for n in pods(v1) if n.startswith("undo-fails-restored")],
             what="the restored pod gone")
    assert_untouched(v1, "undo-fails", pod.metadata.uid)
    assert "migrate.dev/claimed-by" not in (
        v1.read_namespaced_pod("undo-fails", "default").metadata.annotations or {})


def test_a_run_interrupted_before_an_upgrade_resumes_after_it(
        cli: Cli, cluster: Cluster, v1: client.CoreV1Api, plain_registry: RegistryUnderTest,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Its journal as migrate wrote it before the stage results were typed (version 1:
    no ``schema`` 2, a result's absent keys left out) is read, resumed and written back
    in the current version."""
    make_pod(v1, "upgraded")
    with monkeypatch.context() as m:
        interrupt_at(m, "verify")
        r = cli(*plain(cluster, plain_registry, "upgraded"))
    assert r.code == 130, r.err
    journal_id = journal_id_of(r.err)
    path = journal(journal_id).path
    data = json.loads(path.read_text())
    data["schema"] = 1
    created = next(s for s in data["stages"] if s["name"] == "create")
    del created["data"]["resource_version"]  # version 1 files may lack it: verify lists first
    path.write_text(json.dumps(data))
    r = resume(cli, cluster, journal_id)
    assert r.code == 0, r.err
    assert r.json()["outcome"] == "succeeded"
    assert pods(v1)[r.json()["destination_pod"]] == ("node-b", "Running")
    assert "upgraded" not in pods(v1)
    assert json.loads(path.read_text())["schema"] == 2


def test_a_run_stopped_after_its_source_went_is_finished_not_undone(
        cli: Cli, cluster: Cluster, v1: client.CoreV1Api, plain_registry: RegistryUnderTest,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Stopped between the source's deletion and the journal's record of it: the
    # journal says less than happened. Undoing the run now would delete the restored
    # pod, the only copy of the workload left; rollback refuses, and resume finishes.
    make_pod(v1, "gone-src")
    deleted = switchover.delete_source
    monkeypatch.setattr(switchover, "delete_source", done_then(deleted, KeyboardInterrupt()))
    r = cli(*plain(cluster, plain_registry, "gone-src"))
    assert r.code == 130, r.err
    journal_id = journal_id_of(r.err)
    monkeypatch.setattr(switchover, "delete_source", deleted)
    assert "gone-src" not in pods(v1) and pods(v1)["gone-src-restored"] == ("node-b", "Running")
    r = cli("rollback", journal_id, "--kubeconfig", cluster.kubeconfig)
    assert r.code == 2, r.err
    assert r.err.splitlines() == [
        f"error: migration {journal_id} was stopped in its switch-over after the source pod "
        "default/gone-src went: the restored pod is what runs now, and undoing the run "
        "would delete it", f"hint: `migrate resume {journal_id}` finishes the switch-over"]
    assert pods(v1)["gone-src-restored"] == ("node-b", "Running")
    r = resume(cli, cluster, journal_id)
    assert r.code == 0, r.err
    assert r.json()["outcome"] == "succeeded"
    assert pods(v1)["gone-src-restored"] == ("node-b", "Running")


def test_a_run_stopped_between_its_create_and_the_record_of_it_takes_up_its_pod(
        cli: Cli, cluster: Cluster, v1: client.CoreV1Api, plain_registry: RegistryUnderTest,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The create's answer came, the process stopped before the journal said so: resume
    created the restored pod again (a bare pod's name taken: the resume failed and rolled
    back; a ReplicaSet's: a second copy). It now finds the one it made by the run's label."""
    from migrate.pipeline import restore

    make_pod(v1, "made-once")
    create = restore.create
    monkeypatch.setattr(restore, "create", done_then(create, KeyboardInterrupt()))
    r = cli(*plain(cluster, plain_registry, "made-once"))
    assert r.code == 130, r.err
    journal_id = journal_id_of(r.err)
    monkeypatch.setattr(restore, "create", create)
    assert journal(journal_id).objects == [] and stages(journal_id)["create"] == (
        "failed", "interrupted")
    made = v1.read_namespaced_pod("made-once-restored", "default").metadata.uid
    r = resume(cli, cluster, journal_id)
    assert r.code == 0, r.err
    assert r.json()["outcome"] == "succeeded"
    assert pods(v1)["made-once-restored"] == ("node-b", "Running")
    assert v1.read_namespaced_pod("made-once-restored", "default").metadata.uid == made
    assert "made-once" not in pods(v1)


def test_a_create_whose_answer_was_lost_is_rolled_back_by_the_runs_label(
        cli: Cli, cluster: Cluster, v1: client.CoreV1Api, plain_registry: RegistryUnderTest,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The API server made the pod and its answer never came: the stage fails, the rollback
    finds the pod by the run's label and deletes it. The failed stage stays failed: marked
    undone, with no result to read, it broke every later read of the journal (exit 1,
    KeyError)."""
    from migrate.errors import ClusterError
    from migrate.pipeline import restore

    pod = make_pod(v1, "answer-lost")
    monkeypatch.setattr(restore, "create", done_then(restore.create, ClusterError(
        "create pod: the connection was reset", hint="try again")))
    r = cli(*plain(cluster, plain_registry, "answer-lost"), "-o", "json")
    assert r.code == 6, r.err
    journal_id = r.json()["id"]
    assert stages(journal_id)["create"] == ("failed", "create pod: the connection was reset")
    assert r.json()["outcome"] == "rolled-back"
    assert any(a["action"].startswith("rollback: deleted pod default/answer-lost-restored")
               for a in r.json()["actions"]), r.json()["actions"]
    wait_for(lambda: "answer-lost-restored" not in pods(v1), what="the copy gone")
    assert_untouched(v1, "answer-lost", pod.metadata.uid)
    assert history(cli)[journal_id] == "rolled-back"
