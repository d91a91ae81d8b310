"""`migrate prune` of one checkpoint directory (`--dir`, what a node Job runs), its rules,
what it protects, and hostile directories.

The cluster forms (nodes, Jobs on the nodes, claims, the registry, the
schedule) are in tests/test_prune_cluster.py.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from migrate.adapters import checkpoint_dir
from migrate.pipeline.journal import Journal
from migrate.pipeline.prune import archives, protect
from migrate.pipeline.prune.policy import Archive, Rules, parse_name, select
from migrate.units import parse_duration
from migrate.validation import validate
from tests.conftest import Result

Cli = Callable[..., Result]
NOW = datetime.now(UTC).replace(microsecond=0)


def stamp(days_ago: float) -> str:
    return (NOW - timedelta(days=days_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")


def archive(directory: Path, pod: str, days_ago: float, size: int = 1000,
            container: str = "app", namespace: str = "default") -> str:
    name = f"checkpoint-{pod}_{namespace}-{container}-{stamp(days_ago)}.tar"
    (directory / name).write_bytes(b"\0" * size)
    return name


def prune(cli: Cli, directory: Path, *args: str) -> Result:
    return cli("prune", "--dir", directory, "--node", "node-a", "-o", "json", *args)


def pruned(r: Result) -> list[str]:
    assert r.code == 0, r.err
    validate(r.json(), "prune.schema.json", "prune -o json")
    return [p["name"] for n in r.json()["nodes"] for p in n["pruned"]]


# -- the kubelet's names ------------------------------------------------------------------


def test_the_kubelets_names_parse_and_others_do_not() -> None:
    assert parse_name("checkpoint-web-7d9f_shop-front-app-2026-01-02T03:04:05Z.tar") == (
        "web-7d9f_shop-front-app", datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC).timestamp())
    assert parse_name("checkpoint-a_b-c-2026-01-02T03:04:05+01:00.tar") == (
        "a_b-c", datetime(2026, 1, 2, 2, 4, 5, tzinfo=UTC).timestamp())
    for name in ("checkpoint-a_b-c-2026-01-02.tar", "checkpoint-nounderscore-2026-01-02T03:04:05Z"
                 ".tar", "checkpoint-a_b-c-2026-13-40T03:04:05Z.tar", "x-a_b-c-2026-01-02T03"
                 ":04:05Z.tar", "checkpoint-a_b-c-2026-01-02T03:04:05Z.tar.zst"):
        assert parse_name(name) is None, name


def test_durations() -> None:
    assert [parse_duration(t) for t in ("90", "90m", "12h", "7d", "2w", "1h30m")] == [
        90, 5400, 43200, 604800, 1209600, 5400]
    for bad in ("", "7x", "d", "1.5h", "-1d", "7d 2h"):
        with pytest.raises(ValueError):
            parse_duration(bad)


# -- the rules ----------------------------------------------------------------------------


def a(name: str, key: str, days_ago: float, size: int = 100) -> Archive:
    return Archive(name, key, (NOW - timedelta(days=days_ago)).timestamp(), size)


def test_the_rules_apply_in_order_and_protected_archives_stay() -> None:
    found = [a("w0", "w", 0), a("w1", "w", 1), a("w2", "w", 2), a("w9", "w", 9),
             a("d0", "d", 0, 500), a("d3", "d", 3, 500)]
    now = NOW.timestamp()
    assert select(found, Rules(older_than=7 * 86400), set(), now).remove == {"w9": "older-than"}
    assert select(found, Rules(keep=1), set(), now).remove == {
        "w1": "keep", "w2": "keep", "w9": "keep", "d3": "keep"}
    # The newest protected one counts towards --keep: nothing else of w stays.
    assert select(found, Rules(keep=1), {"w2"}, now).remove == {
        "w1": "keep", "w9": "keep", "d3": "keep"}
    # --max-size: oldest first until the total (1400) fits in 700; protected d3 stays.
    chosen = select(found, Rules(max_size=700), {"d3"}, now)
    assert chosen.remove == {"w9": "max-size", "w2": "max-size", "w1": "max-size",
                             "d0": "max-size"}
    assert [k.name for k in chosen.kept] == ["w0", "d3"]
    assert select(found, Rules(older_than=3600), {"w1"}, now).remove.keys() == {
        "w2", "w9", "d3"}


def test_prune_removes_what_the_rules_say_and_dry_run_nothing(cli: Cli, tmp_path: Path) -> None:
    web = [archive(tmp_path, "web", d) for d in (0, 1, 2, 10)]
    db = [archive(tmp_path, "db", d, container="pg") for d in (0, 20)]
    before = sorted(os.listdir(tmp_path))
    r = prune(cli, tmp_path, "--older-than", "7d", "--keep", "2", "--dry-run")
    assert sorted(pruned(r)) == sorted([web[2], web[3], db[1]])
    assert r.json()["dry_run"] is True and sorted(os.listdir(tmp_path)) == before
    table = cli("prune", "--dir", tmp_path, "--node", "node-a", "--older-than", "7d",
                "--keep", "2", "--dry-run").out
    assert f"node-a: would prune {web[3]} (older-than)" in table.splitlines()
    assert f"node-a: would prune {web[2]} (keep)" in table.splitlines()
    r = prune(cli, tmp_path, "--older-than", "7d", "--keep", "2")
    assert sorted(pruned(r)) == sorted([web[2], web[3], db[1]])
    assert sorted(os.listdir(tmp_path)) == sorted([web[0], web[1], db[0]])
    node = r.json()["nodes"][0]
    assert (node["kept"], node["kept_bytes"], node["pruned_bytes"]) == (3, 3000, 3000)
    assert r.json()["pruned"] == 3


def test_protected_archives_are_kept(cli: Cli, tmp_path: Path) -> None:
    old = archive(tmp_path, "web", 30)
    claimed = archive(tmp_path, "moving", 30)
    gone = archive(tmp_path, "other", 30)
    r = prune(cli, tmp_path, "--older-than", "1d", "--protect", old,
              "--protect-prefix", "checkpoint-moving_default-")
    assert pruned(r) == [gone]
    assert r.json()["nodes"][0]["protected"] == sorted([old, claimed])
    assert sorted(os.listdir(tmp_path)) == sorted([old, claimed])


def test_live_journals_protect_their_archives(tmp_path: Path) -> None:
    state = tmp_path / "state"
    path = f"/var/lib/kubelet/checkpoints/checkpoint-web_default-app-{stamp(3)}.tar"
    done = f"/var/lib/kubelet/checkpoints/checkpoint-db_default-pg-{stamp(3)}.tar"
    running = Journal.create(state, "pod", "web", {}, ["checkpoint"])
    running.record("checkpointed", container="app", node="node-a", archive=path)
    finished = Journal.create(state, "pod", "db", {}, ["checkpoint"])
    finished.record("checkpointed", container="pg", node="node-a", archive=done)
    finished.set_outcome("succeeded")
    finished.unlock()
    kept = protect.Protected()
    protect.from_journals(state, kept)
    assert kept.on("node-a") == {Path(path).name} and kept.on("node-b") == set()
    running.unlock()  # its process is gone: interrupted, and resumable from the archive
    kept = protect.Protected()
    protect.from_journals(state, kept)
    assert kept.on("node-a") == {Path(path).name}
    running.record("archive removed", path=path)  # a rollback removed it already
    kept = protect.Protected()
    protect.from_journals(state, kept)
    assert kept.on("node-a") == set()


# -- hostile directories -----------------------------------------------------------------------


def test_only_regular_files_named_as_the_kubelet_names_them_go(cli: Cli, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious").write_text("keep me")
    ckpt = tmp_path / "checkpoints"
    ckpt.mkdir()
    real = archive(ckpt, "web", 30)
    link = f"checkpoint-evil_default-app-{stamp(40)}.tar"
    (ckpt / link).symlink_to(victim / "precious")
    dirname = f"checkpoint-dir_default-app-{stamp(40)}.tar"
    (ckpt / dirname).mkdir()
    fifo = f"checkpoint-fifo_default-app-{stamp(40)}.tar"
    os.mkfifo(ckpt / fifo)
    (ckpt / "checkpoint-garbage.tar").write_text("x")
    (ckpt / "podman-export.tar").write_text("x")
    r = prune(cli, ckpt, "--older-than", "1d")
    assert pruned(r) == [real]
    assert {s["name"]: s["why"] for s in r.json()["nodes"][0]["skipped"]} == {
        link: "is a symlink, not a regular file", dirname: "is a directory, not a regular file",
        fifo: "is a special file, not a regular file",
        "checkpoint-garbage.tar": "not named as the kubelet names archives"}
    assert (victim / "precious").read_text() == "keep me" and (ckpt / link).is_symlink()
    assert sorted(os.listdir(ckpt)) == sorted([link, dirname, fifo, "checkpoint-garbage.tar",
                                               "podman-export.tar"])
    table = cli("prune", "--dir", ckpt, "--node", "node-a", "--keep", "0", "--dry-run").out
    assert table.splitlines()[1].split() == [
        "node-a", "local", "0", "(0", "B)", "0", "(0", "B)", "4", "skipped", "(not", "kubelet",
        "archives)"]


def test_a_symlinked_checkpoint_directory_is_refused(cli: Cli, tmp_path: Path) -> None:
    real = tmp_path / "elsewhere"
    real.mkdir()
    archive(real, "web", 30)
    (tmp_path / "checkpoints").symlink_to(real)
    r = prune(cli, tmp_path / "checkpoints", "--older-than", "1d")
    assert r.code == 3, r.err
    assert r.err.splitlines() == [
        f"error: checkpoint directory {tmp_path / 'checkpoints'} is a symlink or not a "
        "directory: refusing to prune through it", "hint: point at the real directory"]
    assert len(os.listdir(real)) == 1
    r = prune(cli, tmp_path / "missing", "--older-than", "1d")
    assert r.code == 4 and r.err.startswith(f"error: checkpoint directory {tmp_path / 'missing'}"
                                            " does not exist\n"), r.err


def test_a_file_swapped_after_the_listing_is_left_alone(tmp_path: Path) -> None:
    name = archive(tmp_path, "web", 30)
    with checkpoint_dir.opened(tmp_path) as fd:
        listed = next(e for e in checkpoint_dir.entries(fd) if e.name == name)
        (tmp_path / name).unlink()
        (tmp_path / name).symlink_to("/etc/passwd")  # swapped in by someone else
        assert checkpoint_dir.remove(fd, listed) == "replaced since it was listed"
        (tmp_path / name).unlink()
        assert checkpoint_dir.remove(fd, listed) == "gone"
    assert Path("/etc/passwd").exists()


@pytest.mark.parametrize(("args", "message"), [
    ((), "error: say what to prune: --older-than DURATION, --keep N or --max-size SIZE"),
    (("--older-than", "soon"), "error: --older-than 'soon' is not a duration"),
    (("--max-size", "lots"), "error: --max-size 'lots' is not a size"),
    (("--keep", "-1"), None),
])
def test_bad_rules_are_usage_errors(cli: Cli, tmp_path: Path, args: tuple[str, ...],
                                    message: str | None) -> None:
    r = prune(cli, tmp_path, *args)
    assert r.code == 2, r.err
    if message:
        assert r.err.splitlines()[0] == message
        assert r.err.splitlines()[1].startswith("hint: ")


def test_dir_needs_one_node(cli: Cli, tmp_path: Path) -> None:
    r = cli("prune", "--dir", tmp_path, "--keep", "1")
    assert r.code == 2 and r.err.startswith("error: --dir needs exactly one --node"), r.err


def test_the_termination_message_fits_in_4_kib(cli: Cli, tmp_path: Path) -> None:
    names = [archive(tmp_path, f"pod{i:03d}", 30, size=10) for i in range(120)]
    message = tmp_path.parent / "termination-log"
    r = prune(cli, tmp_path, "--older-than", "1d", "--termination-message-path", message)
    assert sorted(pruned(r)) == sorted(names)  # stdout has them all
    text = message.read_text()
    assert len(text.encode()) <= archives.MESSAGE_BYTES
    node = json.loads(text)
    assert len(node["pruned"]) + node["omitted"] == 120 and node["pruned_bytes"] == 1200


def test_the_node_job_is_a_valid_job_that_protects_what_it_is_told() -> None:
    from migrate.pipeline import incluster
    from migrate.pipeline.prune.onnode import NodePrune, job_manifest

    job = job_manifest(NodePrune("default", "node-a", "reg.example/migrate:1",
                                 Rules(older_than=3600, keep=2, max_size=1 << 30),
                                 protected=("checkpoint-w_d-a-2026-01-01T00:00:00Z.tar",),
                                 protected_prefixes=("checkpoint-m_d-",), dry_run=True))
    incluster.check([job], incluster.target_version(None))
    pod = job["spec"]["template"]["spec"]
    assert pod["nodeName"] == "node-a" and pod["automountServiceAccountToken"] is False
    assert pod["volumes"][0]["hostPath"] == {"path": "/var/lib/kubelet/checkpoints",
                                             "type": "DirectoryOrCreate"}
    assert pod["containers"][0]["args"] == [
        "prune", "--where", "local", "--node", "node-a", "--dir", "/var/lib/kubelet/checkpoints",
        "--termination-message-path", "/dev/termination-log", "-o", "json",
        "--older-than", "3600s", "--keep", "2", "--max-size", str(1 << 30),
        "--protect", "checkpoint-w_d-a-2026-01-01T00:00:00Z.tar",
        "--protect-prefix", "checkpoint-m_d-", "--dry-run"]
