"""The journal file's versions: a version 1 file (as migrate wrote it before the stage
results were typed) is read and resumes; a newer one is refused; a damaged result is
named by its JSON path."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from migrate.errors import InputError
from migrate.pipeline.journal import SCHEMA_VERSION, Journal
from migrate.pipeline.migration import Migration
from migrate.pipeline.migration.results import BuildResult, CreateResult, ImageResult, done
from migrate.pipeline.preflight import Plan, PodRequest
from migrate.validation import validate
from tests.conftest import Result

GOLDEN = Path(__file__).parent / "golden" / "journal" / "pod-v1-interrupted.json"
ID = "pod-web-20261201t101500-ab12"


def place(state: Path, data: dict[str, Any] | None = None) -> Path:
    """Put the golden version 1 journal (or ``data``) where `Journal.load` finds it."""
    path = state / "journal" / f"{ID}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    if data is None:
        shutil.copy(GOLDEN, path)
    else:
        path.write_text(json.dumps(data))
    return path


def test_a_version_1_journal_is_read_with_its_results_typed(tmp_path: Path) -> None:
    place(tmp_path)
    journal = Journal.load(tmp_path, ID)
    results = done(journal)
    assert sorted(results) == ["build", "checkpoint", "create"]
    built = results["build"]
    assert isinstance(built, BuildResult)
    assert built.images["app"] == ImageResult(
        "registry.example:5000/migrations/default-web-app@sha256:" + "1" * 64,
        "sha256:" + "1" * 64, 1048576, 1049000, None, None, "job migrate-build-web-x7k2p",
        None)  # built on the node: version 1 left the local archive out
    assert results["create"] == CreateResult("web-5d8f7c-restored-abcde",
                                             "7d4c1f0e-0000-4000-8000-000000000002", "4711",
                                             ("pod-template-hash", "5d8f7c"))
    req = PodRequest.from_dict(journal.request)
    plan = Plan.from_dict(journal.stage("preflight").data["plan"])
    assert (req.build_on, plan.build_on, plan.owner) == ("node", "node",
                                                         ("ReplicaSet", "web-5d8f7c"))


def test_a_version_1_journal_reports_as_it_did(tmp_path: Path) -> None:
    place(tmp_path)
    report = Migration(Journal.load(tmp_path, ID)).report(3)
    validate(report, "pod.schema.json", "report")
    old = json.loads(GOLDEN.read_text())
    stages = {s["name"]: s["data"] for s in old["stages"]}
    # What version 1's report said: the stages' data as they were in the file.
    assert report["plan"] == stages["preflight"]["plan"]
    assert report["checkpoints"] == stages["checkpoint"]["archives"]
    assert report["images"] == stages["build"]["images"]
    assert (report["id"], report["outcome"], report["destination_pod"], report["api_requests"]) \
        == (ID, "interrupted", "web-5d8f7c-restored-abcde", 3)
    assert report["actions"] == old["actions"]


def test_a_version_1_journal_is_written_back_as_the_current_version(tmp_path: Path) -> None:
    path = place(tmp_path)
    journal = Journal.load(tmp_path, ID)
    journal.lock()
    journal.record("resumed")  # any change saves it
    journal.unlock()
    saved = json.loads(path.read_text())
    assert saved["schema"] == SCHEMA_VERSION == 2
    validate(saved, "journal.schema.json", str(path))
    build = next(s for s in saved["stages"] if s["name"] == "build")
    assert build["data"]["images"]["sidecar"]["local_archive"] is None


def test_a_version_1_journal_from_before_the_build_location_was_planned(tmp_path: Path) -> None:
    old = json.loads(GOLDEN.read_text())
    for key in ("destination_runtime", "build_on", "build_from"):
        del old["stages"][0]["data"]["plan"][key]
    del old["stages"][3]["data"]["resource_version"]
    del old["registry"]
    place(tmp_path, old)
    journal = Journal.load(tmp_path, ID)
    plan = Plan.from_dict(journal.stage("preflight").data["plan"])
    assert (plan.build_on, plan.build_from, plan.destination_runtime) == ("", "", "")
    assert journal.registry == {}
    created = done(journal)["create"]
    assert isinstance(created, CreateResult) and created.resource_version is None


def test_a_journal_from_a_newer_migrate_is_refused(tmp_path: Path) -> None:
    newer = {**json.loads(GOLDEN.read_text()), "schema": 3}
    path = place(tmp_path, newer)
    with pytest.raises(InputError) as refused:
        Journal.load(tmp_path, ID)
    assert (refused.value.message, refused.value.hint) == (
        f"journal {path} is of version 3; this migrate reads versions 1 to 2",
        "resume or roll it back with the migrate that wrote it (or a newer one)")
    assert Journal.history(tmp_path) == []  # skipped, like a damaged one


def test_a_damaged_stage_result_is_named_by_its_path(tmp_path: Path) -> None:
    damaged = json.loads(GOLDEN.read_text())
    del damaged["stages"][2]["data"]["images"]["app"]["digest"]
    path = place(tmp_path, damaged)
    with pytest.raises(InputError) as refused:
        Journal.load(tmp_path, ID)
    assert refused.value.message == (f"journal {path} is damaged: "
                                     "$.stages[2].data.images.app: 'digest' is a required "
                                     "property")
    assert refused.value.hint == "it can be removed; check the cluster by hand"


def test_resume_and_rollback_refuse_a_newer_journal_in_one_line(
        cli: Callable[..., Result]) -> None:
    state = Path(os.environ["MIGRATE_STATE_DIR"])
    path = place(state, {**json.loads(GOLDEN.read_text()), "schema": 3})
    for command in ("resume", "rollback"):
        r = cli(command, ID)
        assert (r.code, r.out, r.err.splitlines()) == (3, "", [
            f"error: journal {path} is of version 3; this migrate reads versions 1 to 2",
            "hint: resume or roll it back with the migrate that wrote it (or a newer one)"])
    assert json.loads(path.read_text())["schema"] == 3  # left as it was
