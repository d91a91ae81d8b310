"""The migration journal (files, locking, damage) and the scheduling checks."""

from __future__ import annotations

import json
import stat
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
