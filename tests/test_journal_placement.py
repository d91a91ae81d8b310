"""The migration journal (files, locking, damage) and the scheduling checks."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from migrate.errors import InputError, NotFoundError, UsageError
from migrate.pipeline.journal import DONE, FAILED, Journal
from migrate.pipeline.placement import refusals


def test_journal_round_trip_is_private_and_atomic(tmp_path: Path) -> None:
    j = Journal.create(tmp_path, "pod", "Counters_1", {"pod": "counters"}, ["a", "b"])
    assert j.id.startswith("pod-counters-1-")
    assert stat.S_IMODE(j.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(j.path.parent.stat().st_mode) == 0o700
    j.begin("a")
    j.finish("a", archive="/x.tar")
    j.begin("b")
    j.fail("b", "boom")
    j.created_object("Pod", "default", "counters-abc", "uid-1")
    again = Journal.load(tmp_path, j.id)
    assert again.stage("a").status == DONE and again.stage("a").data == {"archive": "/x.tar"}
    assert again.stage("b").status == FAILED and again.stage("b").error == "boom"
    assert again.objects == [{"kind": "Pod", "namespace": "default", "name": "counters-abc",
                              "uid": "uid-1"}]
    assert [a["action"] for a in again.actions] == ["created Pod"]
    assert not list(tmp_path.glob("journal/.*.tmp"))  # no temporary file left behind
    assert [h.id for h in Journal.history(tmp_path)] == [j.id]


def test_a_journal_in_use_cannot_be_taken(tmp_path: Path) -> None:
    j = Journal.create(tmp_path, "pod", "p", {}, ["a"])
    other = Journal.load(tmp_path, j.id)
    with pytest.raises(UsageError, match="being run by another process"):
        other.lock()
    j.unlock()
    other.lock()


def test_a_running_journal_whose_lock_is_free_reads_as_interrupted(tmp_path: Path) -> None:
    j = Journal.create(tmp_path, "pod", "p", {}, ["a", "b"])
    j.begin("a")
    seen = Journal.load(tmp_path, j.id)
    assert not seen.lock_free() and seen.current_outcome() == "running"  # its run holds it
    j.unlock()  # as the kernel does when the process dies
    assert seen.lock_free() and seen.current_outcome() == "interrupted"
    assert seen.outcome == "running"  # only read so: the file is not changed
    j.lock()
    j.interrupted()
    again = Journal.load(tmp_path, j.id)
    assert (again.outcome, again.stage("a").status, again.stage("a").error,
            again.stage("b").status) == ("interrupted", FAILED, "interrupted", "pending")
    j.discard()  # a run refused before it changed anything leaves nothing
    assert not list((tmp_path / "journal").iterdir())


def test_the_registry_trust_is_kept_never_the_credentials(tmp_path: Path) -> None:
    from migrate.adapters.registry.auth import parse_creds
    from migrate.errors import AuthError
    from migrate.pipeline import trust
    from migrate.settings import RegistrySettings

    used = RegistrySettings(tls_verify=False, cert_dir=tmp_path / "certs",
                            creds=parse_creds("alice:s3cret"))
    j = Journal.create(tmp_path, "pod", "p", {}, ["a"], registry=trust.record(used))
    assert "s3cret" not in j.path.read_text()
    recorded = Journal.load(tmp_path, j.id).registry
    assert recorded == {"tls_verify": False, "cert_dir": str(tmp_path / "certs"),
                        "authfile": None, "creds": True}
    base = RegistrySettings(env=(("HOME", "/home/x"),))
    with pytest.raises(AuthError) as refused:
        trust.resumed(base, recorded, trust.Given(), run="migration X",
                      command="migrate resume X", needs_registry=True)
    assert (refused.value.message, refused.value.hint) == (
        "migration X logged in to the registry with --creds, and credentials are never "
        "recorded", "give them again: migrate resume X --creds USER:PASS (or --authfile FILE)")
    again = trust.resumed(base, recorded, trust.Given(creds=parse_creds("alice:s3cret")),
                          run="migration X", command="migrate resume X", needs_registry=True)
    assert (again.tls_verify, again.cert_dir, again.creds, again.env) == (
        False, tmp_path / "certs", parse_creds("alice:s3cret"), base.env)
    # Nothing left to push: no credentials needed; what is given wins over the record.
    later = trust.resumed(base, recorded, trust.Given(tls_verify=True, authfile=tmp_path / "a"),
                          run="migration X", command="migrate resume X", needs_registry=False)
    assert (later.tls_verify, later.authfile, later.creds) == (True, tmp_path / "a", None)
    # A journal from before the record: the defaults, as such a resume always had.
    old = trust.resumed(base, {}, trust.Given(), run="migration X", command="migrate resume X",
                        needs_registry=True)
    assert (old.tls_verify, old.cert_dir, old.authfile, old.creds) == (True, None, None, None)


def test_bad_ids_and_damaged_files(tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        Journal.load(tmp_path, "../../etc/passwd")
    with pytest.raises(NotFoundError):
        Journal.load(tmp_path, "pod-nothing-here")
    j = Journal.create(tmp_path, "pod", "p", {}, ["a"])
    j.path.write_text(json.dumps({"id": j.id}))
    with pytest.raises(InputError, match="is damaged"):
        Journal.load(tmp_path, j.id)
    assert Journal.history(tmp_path) == []  # a damaged file hides nothing else (none here)


def test_no_state_directory(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no state directory"):
        Journal.create(None, "pod", "p", {}, [])


def node(name: str, labels: dict[str, str] | None = None,
         taints: list[dict[str, str]] | None = None) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": labels or {}},
            "spec": {"taints": taints or []}}


def pod(**spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": "p"}, "spec": spec}


def test_node_selector() -> None:
    assert refusals(pod(nodeSelector={"disk": "ssd"}), node("b", {"disk": "ssd"})) == []
    assert refusals(pod(nodeSelector={"disk": "ssd"}), node("b")) == [
        "node b does not have the label disk=ssd (the pod's nodeSelector)"]


@pytest.mark.parametrize(("expr", "admitted"), [
    ({"key": "zone", "operator": "In", "values": ["a", "b"]}, True),
    ({"key": "zone", "operator": "NotIn", "values": ["a"]}, False),
    ({"key": "zone", "operator": "Exists"}, True),
    ({"key": "gpu", "operator": "DoesNotExist"}, True),
    ({"key": "cores", "operator": "Gt", "values": ["4"]}, True),
    ({"key": "cores", "operator": "Lt", "values": ["4"]}, False),
])
def test_required_node_affinity(expr: dict[str, Any], admitted: bool) -> None:
    p = pod(affinity={"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [expr]}]}}})
    assert (refusals(p, node("b", {"zone": "a", "cores": "8"})) == []) is admitted


def test_match_fields_on_the_node_name() -> None:
    p = pod(affinity={"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In",
                                                "values": ["a"]}]}]}}})
    assert refusals(p, node("a")) == []
    assert refusals(p, node("b")) == [
        "node b matches none of the pod's required node affinity terms"]


def test_taints_and_tolerations() -> None:
    taint = {"key": "dedicated", "value": "db", "effect": "NoSchedule"}
    assert refusals(pod(), node("b", taints=[taint])) == [
        "node b has the taint dedicated=db:NoSchedule, which the pod does not tolerate"]
    equal = {"key": "dedicated", "operator": "Equal", "value": "db", "effect": "NoSchedule"}
    exists = {"key": "dedicated", "operator": "Exists"}
    everything = {"operator": "Exists"}
    wrong = {"key": "dedicated", "operator": "Equal", "value": "web"}
    for t in (equal, exists, everything):
        assert refusals(pod(tolerations=[t]), node("b", taints=[taint])) == []
    assert refusals(pod(tolerations=[wrong]), node("b", taints=[taint]))
    soft = {"key": "x", "effect": "PreferNoSchedule"}
    assert refusals(pod(), node("b", taints=[soft])) == []


def test_what_a_resume_or_rollback_reads_is_synced_a_stage_start_is_not(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[str] = []
    j = Journal.create(tmp_path, "pod", "counters", {"pod": "counters"}, ["a", "b"])
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(j.path.name), real_fsync(fd)))

    def saves(step: Callable[[], object]) -> int:
        before = len(synced)
        step()
        return len(synced) - before

    assert saves(lambda: j.begin("a")) == 0
    # Written all the same, only not synced.
    assert json.loads(j.path.read_text())["stages"][0]["status"] == "running"
    assert saves(lambda: j.record("checkpointed", archive="/x")) == 1
    assert saves(lambda: j.created_object("Pod", "default", "counters-restored")) == 1
    assert saves(lambda: j.finish("a", archive="/x")) == 1
    assert saves(lambda: j.set_outcome("succeeded")) == 1
    assert oct(j.path.stat().st_mode & 0o777) == "0o600"
