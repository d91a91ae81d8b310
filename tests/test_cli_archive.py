"""The forensic commands as an operator runs them: tables, JSON, errors."""

from __future__ import annotations

import gzip
import json
import os
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
import zstandard

from migrate.validation import validate
from tests.conftest import Result, run_binary

Cli = Callable[..., Result]

SHOW_TABLE = (
    "CONTAINER   IMAGE                              ID             RUNTIME   CREATED"
    "                ENGINE   IP           CHKPT SIZE   ROOT FS DIFF SIZE\n"
    "counter     quay.io/adrianreber/counter:blog   059a219a22e5   runc      "
    "2023-03-02T06:06:49Z   CRI-O    10.88.0.25   24.6 KiB     10.0 KiB\n"
)


def test_show_table(cli: Cli, counters_archive: Path) -> None:
    r = cli("show", counters_archive)
    assert (r.code, r.out, r.err) == (0, SHOW_TABLE, "")


def test_show_stats_table(cli: Cli, counters_archive: Path) -> None:
    r = cli("show", counters_archive, "--print-stats")
    assert r.code == 0
    assert r.out.startswith(SHOW_TABLE)
    assert r.out.endswith(
        "\nCRIU dump statistics\n"
        "FREEZING TIME   FROZEN TIME   MEMDUMP TIME   MEMWRITE TIME   PAGES SCANNED   PAGES WRITTEN\n"
        "100809 us       119627 us     11602 us       7379 us         7800            2198\n")


def test_show_json(cli: Cli, counters_archive: Path) -> None:
    r = cli("show", counters_archive, "--stats", "-o", "json")
    data = r.json()
    validate(data, "show.schema.json", "show -o json")
    with tarfile.open(counters_archive) as tf:
        criu = [m for m in tf.getmembers() if m.isreg() and m.name.startswith("checkpoint/")]
        diff = tf.getmember("rootfs-diff.tar").size
    assert data == [{
        "container_name": "counter",
        "image": "quay.io/adrianreber/counter:blog",
        "id": "059a219a22e56a1d2c3b4a5f6e7d8c9b0a1f2e3d4c5b6a7f8e9d0c1b2a3f4e5d",
        "runtime": "runc",
        "created": "2023-03-02T06:06:49.123456789Z",
        "engine": "CRI-O",
        "ip": "10.88.0.25",
        "pod_name": "counters",
        "namespace": "default",
        "checkpoint_size": {
            "total_size": sum(m.size for m in criu),
            "memory_pages_size": sum(m.size for m in criu if "/pages-" in m.name),
            "root_fs_diff_size": diff,
        },
        "statistics": {"freezing_time": 100809, "frozen_time": 119627, "memdump_time": 11602,
                       "memwrite_time": 7379, "pages_scanned": 7800, "pages_written": 2198},
    }]


def test_show_yaml_equals_json(cli: Cli, counters_archive: Path) -> None:
    assert yaml.safe_load(cli("show", counters_archive, "-o", "yaml").out) == cli(
        "show", counters_archive, "-o", "json").json()


def test_show_several_archives_in_order(cli: Cli, make_archive: Callable[..., Path]) -> None:
    a = make_archive("a.tar", container="alpha", pod="pa")
    b = make_archive("b.tar", container="beta", pod="pb", namespace="prod")
    data = cli("show", a, b, "-o", "json").json()
    assert [(d["container_name"], d["pod_name"], d["namespace"]) for d in data] == [
        ("alpha", "pa", "default"), ("beta", "pb", "prod")]


@pytest.mark.parametrize("engine,expected", [
    ("libpod", ("counter", "", "", "Podman", "10.88.0.25")),  # from network.status
    ("containerd", ("counter", "counters", "default", "containerd", "")),
])
def test_engines(cli: Cli, make_archive: Callable[..., Path], engine: str,
                 expected: tuple[str, ...]) -> None:
    d = cli("show", make_archive(engine=engine), "-o", "json").json()[0]
    assert (d["container_name"], d["pod_name"], d["namespace"], d["engine"], d["ip"]) == expected


@pytest.mark.parametrize(("status", "ip"), [
    (None, ""),  # --network none or host
    ({"b-net": {"interfaces": {"eth1": {"subnets": [{"ipnet": "10.89.1.5/24"}]},
                               "eth0": {"subnets": [{"ipnet": "10.89.1.4/24"},
                                                    {"ipnet": "fd00::4/64"}]}}},
      "a-net": {"interfaces": {"eth0": {"subnets": None}}}}, "10.89.1.4, fd00::4, 10.89.1.5"),
    ([{"cniVersion": "0.4.0", "ips": [{"version": "4", "address": "10.88.0.7/16"}]}],
     "10.88.0.7"),  # Podman 3: CNI results
], ids=["null", "netavark-sorted", "podman3-cni"])
def test_podman_ip_from_network_status(cli: Cli, make_archive: Callable[..., Path],
                                       status: Any, ip: str) -> None:
    archive = make_archive(engine="libpod",
                           extra_members={"network.status": json.dumps(status).encode()})
    assert cli("show", archive, "-o", "json").json()[0]["ip"] == ip


def test_podman_network_status_of_another_shape_is_refused(
        cli: Cli, make_archive: Callable[..., Path]) -> None:
    archive = make_archive(engine="libpod", extra_members={
        "network.status": b'{"podman": {"interfaces": {"eth0": {"subnets": "10.0.0.1"}}}}'})
    r = cli("show", archive)
    assert r.code == 3
    assert r.err.splitlines()[0] == (f"error: {archive}: network.status: "
                                     "$.podman.interfaces.eth0.subnets: '10.0.0.1' is not of "
                                     "type 'array', 'null'")


def test_podman_list_time_is_criu_dump_time(cli: Cli, make_archive: Callable[..., Path],
                                            tmp_path: Path) -> None:
    """Podman's config.dump has no checkpointedTime: the inventory's tar time stands in."""
    make_archive("checkpoint-counter.tar", engine="libpod")
    (entry,) = cli("list", tmp_path, "-o", "json").json()
    assert (entry["engine"], entry["checkpointed"]) == ("Podman", "2023-03-02T06:08:12Z")


def test_show_without_stats_dump(cli: Cli, make_archive: Callable[..., Path]) -> None:
    archive = make_archive(omit=("stats-dump",))
    assert cli("show", archive).code == 0
    r = cli("show", archive, "--stats")
    assert r.code == 3
    assert r.err.splitlines()[0] == f"error: {archive}: stats-dump: missing from the archive"


def _tree(node: dict[str, Any]) -> list[Any]:
    return [node["pid"], node["command"], node.get("cmdline"),
            [_tree(c) for c in node["children"]]]


def test_inspect_json_all(cli: Cli, counters_archive: Path) -> None:
    data = cli("inspect", counters_archive, "--all", "-o", "json").json()
    validate(data, "inspect.schema.json", "inspect -o json")
    assert data["hostname"] == "counters"
    assert _tree(data["process_tree"]) == [
        1, "bash", "bash -c /home/counter/counter.py 2>&1 | tee /home/counter/logfile", [
            [7, "counter.py", "/usr/bin/python3 /home/counter/counter.py", []],
            [8, "tee", "/usr/bin/coreutils --coreutils-prog-shebang=tee /usr/bin/tee "
                       "/home/counter/logfile", []]]]
    assert "HOSTNAME=counters" in data["process_tree"]["environment"]
    assert {"path": "home/counter/test-file", "size": 10, "type": "file"} in data["rootfs_diff"]
    assert data["deleted_files"] == []
    assert {"destination": "/etc/hosts", "type": "bind",
            "source": "/var/lib/kubelet/pods/6a2d1a4e-53a1-4f8b-9c1e-0d5e0f1b7a21/etc-hosts"
            } in data["mounts"]
    assert data["statistics"]["frozen_time"] == 119627


def test_inspect_default_reads_no_memory(cli: Cli, counters_archive: Path) -> None:
    data = cli("inspect", counters_archive, "-o", "json").json()
    assert "process_tree" not in data and "mounts" not in data and "statistics" not in data
    tree = cli("inspect", counters_archive, "--ps-tree", "-o", "json").json()["process_tree"]
    assert "cmdline" not in tree and "environment" not in tree


def test_inspect_tree_view(cli: Cli, counters_archive: Path) -> None:
    r = cli("inspect", counters_archive, "--ps-tree")
    assert r.code == 0
    assert r.out.startswith("counter\n├── Image: quay.io/adrianreber/counter:blog\n")
    assert ("├── Process tree\n"
            "│   └── [1]  bash\n"
            "│       ├── [7]  counter.py\n"
            "│       └── [8]  tee\n") in r.out or r.out.endswith(
            "└── Process tree\n"
            "    └── [1]  bash\n"
            "        ├── [7]  counter.py\n"
            "        └── [8]  tee\n")


def test_inspect_lists_deleted_files(cli: Cli, make_archive: Callable[..., Path]) -> None:
    archive = make_archive(deleted_files=["/etc/motd", "/tmp/x"])
    data = cli("inspect", archive, "--rootfs-diff", "-o", "json").json()
    assert data["deleted_files"] == ["/etc/motd", "/tmp/x"]
    assert "/etc/motd (deleted)" in cli("inspect", archive, "--rootfs-diff").out


def test_inspect_process_without_dumped_argv(cli: Cli, make_archive: Callable[..., Path]
                                             ) -> None:
    """A cmdline whose memory is not in this dump is null, not an error."""
    from e2e.archives.archivegen import Process
    archive = make_archive(processes=[Process(1, 0, "sh", [], [])])
    tree = cli("inspect", archive, "--ps-tree-cmd", "-o", "json").json()["process_tree"]
    assert tree["pid"] == 1 and tree["cmdline"] == ""


def test_memparse_sizes(cli: Cli, counters_archive: Path) -> None:
    r = cli("memparse", counters_archive)
    assert r.out == ("PID   PROCESS NAME   MEMORY SIZE\n"
                     "1     bash           20.0 KiB\n"
                     "7     counter.py     20.0 KiB\n"
                     "8     tee            20.0 KiB\n")
    data = cli("memparse", counters_archive, "--pid", "7", "-o", "json").json()
    validate(data, "memparse.schema.json", "memparse")
    assert data == [{"pid": 7, "command": "counter.py", "memory_size": 5 * 4096}]


def test_memparse_search_json(cli: Cli, counters_archive: Path) -> None:
    data = cli("memparse", counters_archive, "--search", "RANDOM_1432_KEY", "-o", "json").json()
    validate(data, "memparse.schema.json", "memparse")
    assert [(m["pid"], m["command"], m["file"], m["match"]) for m in data] == [
        (7, "counter.py", "pages-2.img", "RANDOM_1432_KEY")]
    assert data[0]["address"] == "0x56000000006b"


def test_memparse_regex_and_pid_filter(cli: Cli, counters_archive: Path) -> None:
    data = cli("memparse", counters_archive, "-r", r"counter: \d", "-p", "7", "-o", "json").json()
    assert [m["match"] for m in data] == ["counter: 0", "counter: 1", "counter: 2"]
    # The environment strings live in every process's stack.
    env = cli("memparse", counters_archive, "-s", "HOSTNAME=counters", "-o", "json").json()
    assert sorted(m["pid"] for m in env) == [1, 7, 8]


def test_memparse_no_match(cli: Cli, counters_archive: Path) -> None:
    """Issue 15, item 11: "no matches" is exit 11 (as grep's 1), so a script that checks
    the exit code cannot take it for a find."""
    r = cli("memparse", counters_archive, "-s", "NOT-THERE-AT-ALL")
    assert (r.code, r.out, r.err) == (11, "", "no matches\n")
    r = cli("memparse", counters_archive, "-s", "NOT-THERE", "-o", "json")
    assert (r.code, r.json(), r.err) == (11, [], "")
    r = run_binary(["memparse", str(counters_archive), "-r", "NOT[-]THERE"])
    assert (r.returncode, r.stderr) == (11, "no matches\n")


def test_memparse_context_apart_from_the_match(cli: Cli, counters_archive: Path) -> None:
    """Issue 15, item 10: with --context the match keeps its own start; the context
    is in `before` and `after`."""
    plain = cli("memparse", counters_archive, "-s", "RANDOM_1432_KEY", "-o", "json").json()
    r = cli("memparse", counters_archive, "-s", "RANDOM_1432_KEY", "--context", "8", "-o",
            "json")
    assert r.code == 0, r.err
    data = r.json()
    validate(data, "memparse.schema.json", "memparse --context")
    (m,) = data
    assert (m["before"], m["match"], m["after"]) == ("\\x00secret=", "RANDOM_1432_KEY",
                                                     "\\x00counter")
    assert (m["offset"], m["address"]) == (plain[0]["offset"], plain[0]["address"])
    assert (plain[0]["before"], plain[0]["after"]) == (None, None)
    table = cli("memparse", counters_archive, "-s", "RANDOM_1432_KEY", "--context", "8")
    assert table.out.splitlines()[1].endswith("\\x00secret=RANDOM_1432_KEY\\x00counter")


def test_memparse_errors(cli: Cli, counters_archive: Path) -> None:
    r = cli("memparse", counters_archive, "--pid", "99")
    assert r.code == 4
    assert r.err == (f"error: {counters_archive}: no process with PID 99 in the checkpoint\n"
                     "hint: PIDs in this checkpoint: 1, 7, 8\n")
    r = cli("memparse", counters_archive, "-s", "a", "-r", "b")
    assert r.code == 2
    assert r.err.splitlines()[0] == "error: give exactly one of --search and --search-regex"
    r = cli("memparse", counters_archive, "-r", "(")
    assert r.code == 2 and r.err.startswith("error: --search-regex '(' is not a valid")


def test_rootfs_diff_list_and_extract(cli: Cli, counters_archive: Path, tmp_path: Path) -> None:
    r = cli("rootfs-diff", counters_archive)
    assert r.out == ("PATH                     CHANGE   SIZE\n"
                     "home                     dir      0 B\n"
                     "home/counter             dir      0 B\n"
                     "home/counter/logfile     file     218 B\n"
                     "home/counter/test-file   file     10 B\n")
    dest = tmp_path / "out"
    r = cli("rootfs-diff", counters_archive, "--extract", dest, "-o", "json")
    validate(r.json(), "rootfs-diff.schema.json", "rootfs-diff")
    assert (dest / "home/counter/test-file").read_bytes() == b"test-file\n"
    assert os.stat(dest / "home/counter/logfile").st_mode & 0o777 == 0o600


def test_rootfs_diff_without_changes(cli: Cli, make_archive: Callable[..., Path]) -> None:
    archive = make_archive(rootfs_files={}, deleted_files=["/gone"])
    assert cli("rootfs-diff", archive, "-o", "json").json() == {
        "rootfs_diff": [], "deleted_files": ["/gone"]}


def test_list(cli: Cli, make_archive: Callable[..., Path], tmp_path: Path) -> None:
    make_archive("checkpoint-counters_default-counter-2023-03-02T06:08:12Z.tar")
    make_archive("checkpoint-web_prod-nginx-2023-03-02T07:00:00Z.tar", pod="web",
                 namespace="prod", container="nginx", checkpointed="2023-03-02T07:00:00Z")
    # Found by content, whatever the name (Podman exports have any), compressed or not.
    exported = make_archive("exported", pod="dbg", namespace="tools", container="shell",
                            checkpointed="2023-03-02T08:00:00Z")
    exported.write_bytes(zstandard.ZstdCompressor().compress(exported.read_bytes()))
    # Not checkpoints, skipped without a word: text, compressed text, a tar of other files.
    (tmp_path / "notes.txt").write_text("hello\n")
    (tmp_path / "notes.txt.gz").write_bytes(gzip.compress(b"hello\n"))
    with tarfile.open(tmp_path / "other.tar", "w") as tf:
        tf.add(tmp_path / "notes.txt", "notes.txt")
    r = cli("list", tmp_path)
    assert (r.code, r.err) == (0, "")
    assert r.out == (
        "NAMESPACE   POD        CONTAINER   ENGINE   TIME CHECKPOINTED      ARCHIVE\n"
        "default     counters   counter     CRI-O    2023-03-02T06:08:12Z   "
        "checkpoint-counters_default-counter-2023-03-02T06:08:12Z.tar\n"
        "prod        web        nginx       CRI-O    2023-03-02T07:00:00Z   "
        "checkpoint-web_prod-nginx-2023-03-02T07:00:00Z.tar\n"
        "tools       dbg        shell       CRI-O    2023-03-02T08:00:00Z   exported\n")
    data = cli("list", tmp_path, "-o", "json").json()
    validate(data, "list.schema.json", "list")
    assert data[1]["archive"] == str(tmp_path / "checkpoint-web_prod-nginx-2023-03-02T07:00:00Z.tar")


def test_list_skips_unreadable_archives_with_a_warning(cli: Cli, make_archive: Callable[..., Path],
                                                        tmp_path: Path) -> None:
    make_archive("checkpoint-good.tar")
    (tmp_path / "checkpoint-bad.tar").write_bytes(b"garbage" * 100)
    r = cli("list", tmp_path, "-o", "json")
    assert r.code == 0
    assert [Path(e["archive"]).name for e in r.json()] == ["checkpoint-good.tar"]
    assert r.err.startswith(f"warning: skipped {tmp_path / 'checkpoint-bad.tar'}: ")


def test_list_empty_and_missing_dirs(cli: Cli, tmp_path: Path) -> None:
    r = cli("list", tmp_path)
    assert (r.code, r.out, r.err) == (0, "", f"no checkpoints found in {tmp_path}\n")
    r = cli("list", tmp_path / "nope")
    assert r.code == 4
    assert r.err.splitlines()[0] == f"error: {tmp_path / 'nope'}: no such directory"


def test_list_default_dir_from_settings(cli: Cli, make_archive: Callable[..., Path],
                                        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_archive("checkpoint-x.tar")
    monkeypatch.setenv("MIGRATE_CHECKPOINT_DIRS", str(tmp_path))
    assert len(cli("list", "-o", "json").json()) == 1


def test_inspect_all_leaves_out_missing_stats_but_stats_flag_requires_them(
        cli: Cli, make_archive: Callable[..., Path]) -> None:
    archive = make_archive(omit=("stats-dump",))
    r = cli("inspect", archive, "--all", "-o", "json")
    assert r.code == 0 and "statistics" not in r.json()
    r = cli("inspect", archive, "--stats")
    assert r.code == 3
    assert r.err.splitlines()[0] == f"error: {archive}: stats-dump: missing from the archive"
