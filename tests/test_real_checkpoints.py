"""Real checkpoints (Podman 4.3, and the kubelet v1.37 with CRI-O v1.36, each with runc
and CRIU 4.1.1) against /proc, crit and checkpointctl.

The archives are `podman container checkpoint --export` of the workload in
e2e/real/workload.py, and the kubelet's checkpoint of the same workload run as
a pod on a real node; the truth is what /proc showed just before the dump
(tests/real.py). Every field migrate reports is compared with the truth, with
CRIU's crit (4.1.1, same tree as the CRIU that dumped) and with checkpointctl.
Where a peer disagrees for a known reason, the test pins that reason (so it
says when the peer changes); the README's "Checked against real CRIU, crit and
checkpointctl" lists them.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import io
import ipaddress
import json
import quopri
import re
import subprocess
import tarfile
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import zstandard

from e2e.real import tools as real
from e2e.real.truth import CONTEXT
from e2e.real.workload import DELETED_FILES, HOSTNAME, PROCESSES, TMPFS
from migrate.cli.app import run
from migrate.forensics.memsearch import escape
from migrate.units import human_size
from tests.conftest import Result
from tests.real import RealArchive, require
from tests.test_untrusted_limits import measured_run

pytestmark = pytest.mark.real
Cli = Callable[..., Result]
PAGE = 4096


def _run(args: list[str | Path]) -> str:
    proc = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0, f"{args}: {proc.stderr}"
    return proc.stdout


@pytest.fixture(scope="session")
def criu_dir(real_podman_archive: RealArchive,
             tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The archive's checkpoint/ directory, extracted for crit (our own archive)."""
    out = tmp_path_factory.mktemp("real-criu")
    with tarfile.open(real_podman_archive.path) as tf:
        tf.extractall(out, members=[m for m in tf.getmembers()
                                    if m.name.startswith("checkpoint/")], filter="data")
    return out / "checkpoint"


@pytest.fixture(scope="session")
def crit() -> Callable[..., str]:
    """Run CRIU 4.1.1's crit; skips (or fails in CI) when it is not installed."""
    require(real.missing_engine() or real.missing_crit())
    path = real.tools().crit
    return lambda *args: _run([path, *args])


@pytest.fixture(scope="session")
def checkpointctl() -> Callable[..., str]:
    """Run the pinned checkpointctl."""
    require(real.missing_engine() or real.missing_checkpointctl())
    path = real.tools().checkpointctl
    return lambda *args: _run([path, *args])


@functools.cache
def _inspect(path: Path) -> dict[str, Any]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert run(["inspect", str(path), "--all", "-o", "json"]) == 0
    result: dict[str, Any] = json.loads(out.getvalue())
    return result


@pytest.fixture(scope="session")
def inspected(real_podman_archive: RealArchive) -> dict[str, Any]:
    """`migrate inspect --all -o json` of Podman's archive (run once)."""
    return _inspect(real_podman_archive.path)


# Both real archives: Podman's export, and the kubelet's (CRI-O's) from a real node.
CRIO = pytest.param("real_crio_archive", marks=pytest.mark.controlplane)
BOTH = pytest.mark.parametrize("archive", ["real_podman_archive", CRIO], indirect=True)
# ...and Podman's gzip and zstd exports (zstd is its default), each a dump of its own.
COMPRESSED = ["real_podman_archive_gzip", "real_podman_archive_zstd"]
EVERY = pytest.mark.parametrize("archive", ["real_podman_archive", CRIO, *COMPRESSED],
                                indirect=True)


@pytest.fixture
def archive(request: pytest.FixtureRequest) -> RealArchive:
    """The real archive a parametrized test names."""
    result: RealArchive = request.getfixturevalue(request.param)
    return result


def _list_json(directory: Path) -> list[dict[str, Any]]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert run(["list", str(directory), "-o", "json"]) == 0
    result: list[dict[str, Any]] = json.loads(out.getvalue())
    return result


def _open_tar(path: Path) -> tarfile.TarFile:
    """The archive as tarfile reads it, zstd included (which tarfile cannot open)."""
    data = path.read_bytes()
    if data.startswith(b"\x28\xb5\x2f\xfd"):
        data = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)).read()
    return tarfile.open(fileobj=io.BytesIO(data))


def _walk(node: dict[str, Any], parent: int = 0) -> Iterator[tuple[int, dict[str, Any]]]:
    """(parent pid, node) for every process of a tree (checkpointctl omits empty children)."""
    yield parent, node
    for child in node.get("children", []):
        yield from _walk(child, node["pid"])


# --- migrate against /proc -----------------------------------------------------------


@EVERY
def test_process_tree_commands_and_environments_match_proc(archive: RealArchive) -> None:
    truth = archive.truth.processes
    seen = {}
    for parent, node in _walk(_inspect(archive.path)["process_tree"]):
        p = truth[node["pid"]]
        seen[node["pid"]] = {"ppid": parent, "command": node["command"],
                             "cmdline": node["cmdline"], "environment": node["environment"]}
        assert seen[node["pid"]] == {"ppid": p.ppid, "command": p.comm,
                                     "cmdline": " ".join(p.argv), "environment": p.environ}
    assert sorted(seen) == sorted(truth)
    assert len(seen) == PROCESSES


@EVERY
def test_memparse_addresses_and_bytes_match_proc(cli: Cli, archive: RealArchive) -> None:
    a = archive
    r = cli("memparse", a.path, "--search", a.secret, "--context", CONTEXT, "-o", "json")
    assert r.code == 0, r.err
    got = {(m["pid"], m["address"]): m for m in r.json()}
    want = {(pid, f"0x{addr:x}"): ctx for pid, p in a.truth.processes.items()
            for addr, ctx in p.secret_at.items()}
    assert want, "the secret should be in the workload's heap"
    assert set(got) == set(want)
    for key, m in got.items():
        assert m["before"] + m["match"] + m["after"] == escape(bytes.fromhex(want[key]))
        assert m["match"] == escape(a.secret.encode())
        assert m["command"] == a.truth.processes[m["pid"]].comm
    # ...and each offset holds the secret in the named pages file.
    with _open_tar(a.path) as tf:
        for m in got.values():
            f = tf.extractfile(f"checkpoint/{m['file']}")
            assert f is not None
            f.seek(m["offset"])
            assert f.read(len(a.secret)) == a.secret.encode()


def test_summary_matches_podman(cli: Cli, real_podman_archive: RealArchive,
                                inspected: dict[str, Any]) -> None:
    a, view = real_podman_archive, real_podman_archive.engine
    (shown,) = cli("show", a.path, "-o", "json").json()
    assert {k: shown[k] for k in ("container_name", "image", "id", "runtime", "engine", "ip",
                                  "pod_name", "namespace")} == {
        "container_name": a.container, "image": view.image, "id": view.id, "runtime": "runc",
        "engine": "Podman", "ip": view.ip, "pod_name": "", "namespace": ""}
    assert _instant(shown["created"]) == _instant(view.created)
    with tarfile.open(a.path) as tf:
        files = [m for m in tf.getmembers() if m.isfile()]
        assert shown["checkpoint_size"] == {
            "total_size": sum(m.size for m in files if m.name.startswith("checkpoint/")),
            "memory_pages_size": sum(m.size for m in files
                                     if m.name.startswith("checkpoint/pages-")),
            "root_fs_diff_size": tf.getmember("rootfs-diff.tar").size}
    assert inspected["hostname"] == a.truth.hostname == HOSTNAME
    assert {k: inspected[k] for k in shown} == shown


def _instant(rfc3339: str) -> datetime:
    """Seconds precision: Podman prints nanoseconds, checkpointctl none."""
    text = re.sub(r"\.\d+", "", rfc3339.replace(" +0000 UTC", "Z").replace(" ", "T"))
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


@BOTH
def test_rootfs_diff_matches_the_diff_and_proc(cli: Cli, archive: RealArchive,
                                               tmp_path: Path) -> None:
    """Against `podman diff`, and for CRI-O the container's root read against its image's."""
    a = archive
    data = cli("rootfs-diff", a.path, "-o", "json").json()
    listed = {e["path"]: e["type"] for e in data["rootfs_diff"]}
    added = {p.lstrip("/") for p, kind in a.engine.diff.items() if kind == "A"}
    # Podman 4.3 and CRI-O v1.36 pack only the files the diff calls added (A): a
    # changed image file (C, /etc/data.txt here) is not in the archive (README).
    assert set(listed) == added
    assert a.engine.diff["/etc/data.txt"] == "C"
    assert listed["run/ctl.fifo"] == "fifo"
    assert data["deleted_files"] == DELETED_FILES
    assert {p for p, kind in a.engine.diff.items() if kind == "D"} == set(DELETED_FILES)
    r = cli("rootfs-diff", a.path, "--extract", tmp_path / "out")
    assert r.code == 0, r.err
    assert (tmp_path / "out/var/log/app.log").read_text() == a.truth.files["/var/log/app.log"]


@EVERY
def test_every_command_reads_the_real_archive(cli: Cli, archive: RealArchive) -> None:
    """The tables as well as the JSON: nothing the engines write is an error."""
    a = archive
    for args in (["show", "--stats"], ["inspect", "--all"], ["memparse"],
                 ["memparse", "--search", a.secret], ["rootfs-diff"]):
        r = cli(args[0], a.path, *args[1:])
        assert (r.code, r.err) == (0, ""), args
    inspected = _inspect(a.path)
    (entry,) = cli("list", a.path.parent, "-o", "json").json()
    assert (entry["container_name"], entry["engine"]) == (inspected["container_name"],
                                                         inspected["engine"])
    # Podman's config.dump has no checkpointedTime: CRIU's inventory time stands
    # in; CRI-O's has one. Either way: just now.
    taken = _instant(entry["checkpointed"])
    assert abs((datetime.now(UTC) - taken).total_seconds()) < 600
    assert {m["destination"] for m in inspected["mounts"]} >= {TMPFS, "/proc", "/dev"}


@pytest.mark.controlplane
def test_crio_layout_identity_and_build(cli: Cli, real_crio_archive: RealArchive,
                                        tmp_path: Path) -> None:
    """The kubelet's archive: the pod as the API server has it, the container as CRI-O
    records it, CRIU's version from the real dump.log."""
    a, view, pod = real_crio_archive, real_crio_archive.engine, real_crio_archive.pod
    assert pod is not None
    (shown,) = cli("show", a.path, "-o", "json").json()
    assert {k: shown[k] for k in ("container_name", "pod_name", "namespace", "engine", "ip",
                                  "id", "image", "created")} == {
        "container_name": pod.container, "pod_name": pod.name, "namespace": pod.namespace,
        "engine": "CRI-O", "ip": view.ip, "id": view.id, "image": view.image,
        "created": view.created}
    assert _inspect(a.path)["hostname"] == HOSTNAME
    (entry,) = cli("list", a.path.parent, "-o", "json").json()
    assert (entry["namespace"], entry["pod_name"], entry["engine"]) == (
        pod.namespace, pod.name, "CRI-O")
    r = cli("build", a.path, "--image", "localhost/forensics:1", "--no-push", "--oci-layout",
            tmp_path / "oci", "-o", "json")
    assert r.code == 0, r.err
    notes = r.json()["annotations"]
    # The CRIU version comes from the real dump.log's "Version: 4.1.1" line.
    assert notes["io.kubernetes.cri-o.annotations.checkpoint.criu.version"] == \
        real.versions()["CRIU_VERSION"]
    assert notes["io.kubernetes.cri-o.annotations.checkpoint.name"] == pod.container
    assert {k: notes[f"org.criu.checkpoint.{k}"] for k in (
        "container.name", "pod.name", "pod.namespace", "pod.uid", "rootfsImageName",
        "rootfsImageID")} == {
        "container.name": pod.container, "pod.name": pod.name, "pod.namespace": pod.namespace,
        "pod.uid": pod.uid, "rootfsImageName": view.image, "rootfsImageID": view.image_id}
    assert notes["io.kubernetes.cri-o.annotations.checkpoint.rootfsImageID"] == view.image_id


def test_build_reads_podmans_config_dump(cli: Cli, real_podman_archive: RealArchive,
                                         tmp_path: Path) -> None:
    """Podman names the image ID rootfsImageID and records no checkpointedTime."""
    a = real_podman_archive
    r = cli("build", a.path, "--image", "localhost/podman-ckpt:1", "--no-push", "--oci-layout",
            tmp_path / "oci", "-o", "json")
    assert r.code == 0, r.err
    notes = r.json()["annotations"]
    assert notes["org.criu.checkpoint.rootfsImageID"] == a.engine.image_id
    assert notes["org.criu.checkpoint.engine.name"] == "podman"
    index = json.loads((tmp_path / "oci/index.json").read_text())
    manifest_digest = index["manifests"][0]["digest"].split(":", 1)[1]
    manifest = json.loads((tmp_path / "oci/blobs/sha256" / manifest_digest).read_text())
    config = json.loads((tmp_path / "oci/blobs/sha256" /
                         manifest["config"]["digest"].split(":", 1)[1]).read_text())
    # The image is as old as the dump (CRIU's inventory), not the container.
    assert _instant(config["created"]) == _instant(_list_json(a.path.parent)[0]["checkpointed"])


# --- migrate against crit ------------------------------------------------------------


def _crit_ps(text: str) -> dict[int, tuple[int, str]]:
    """`crit x DIR ps` -> {pid: (parent pid, comm)}; the tree is drawn by indentation."""
    out: dict[int, tuple[int, str]] = {}
    stack: list[int] = []
    for line in text.splitlines()[1:]:
        m = re.match(r"^\s*(\d+)\s+\d+\s+\d+   ( *)(.*)$", line)
        assert m, line
        depth = len(m.group(2)) // 4
        del stack[depth:]
        out[int(m.group(1))] = (stack[-1] if stack else 0, m.group(3))
        stack.append(int(m.group(1)))
    return out


def test_process_tree_matches_crit_ps(crit: Callable[..., str], criu_dir: Path,
                                      inspected: dict[str, Any]) -> None:
    ours = {n["pid"]: (parent, n["command"]) for parent, n in _walk(inspected["process_tree"])}
    assert ours == _crit_ps(crit("x", criu_dir, "ps"))


def test_memory_sizes_match_crit_pagemaps(cli: Cli, crit: Callable[..., str], criu_dir: Path,
                                          real_podman_archive: RealArchive) -> None:
    sizes = {e["pid"]: e["memory_size"]
             for e in cli("memparse", real_podman_archive.path, "-o", "json").json()}
    assert sizes
    for pid, size in sizes.items():
        entries = json.loads(crit("decode", "-i", criu_dir / f"pagemap-{pid}.img"))["entries"]
        assert size == sum(e["nr_pages"] for e in entries[1:]) * PAGE
        # What CRIU 4.1.1 really writes: anonymous memory lazy *and* present.
        assert {e.get("flags") for e in entries[1:]} <= {4, 6}  # PE_PRESENT, +PE_LAZY
        assert 6 in {e.get("flags") for e in entries[1:]}


def _crit_mems(text: str) -> dict[int, set[str]]:
    out: dict[int, set[str]] = {}
    pid = 0
    for line in text.splitlines():
        if re.fullmatch(r"\d+", line):
            pid = int(line)
            out[pid] = set()
        elif m := re.match(r"^\t([0-9a-f]+-[0-9a-f]+)\s", line):
            out[pid].add(m.group(1))
    return out


def test_secret_lies_in_memory_crit_and_proc_both_map(
        cli: Cli, crit: Callable[..., str], criu_dir: Path,
        real_podman_archive: RealArchive) -> None:
    a = real_podman_archive
    vmas = _crit_mems(crit("x", criu_dir, "mems"))
    for pid, p in a.truth.processes.items():
        # CRIU keeps the vDSO's data pages as one VMA where /proc may show two
        # ([vvar], [vvar_vclock]): every dumped VMA must be covered, not equal.
        mapped = sorted(_span(line.split()[0]) for line in p.maps)
        for lo, hi in map(_span, vmas[pid]):
            assert _covered(lo, hi, mapped), (pid, hex(lo), hex(hi))
    for m in cli("memparse", a.path, "--search", a.secret, "-o", "json").json():
        assert m["address"] is not None, m
        addr = int(m["address"], 16)
        assert any(lo <= addr < hi for lo, hi in map(_span, vmas[m["pid"]]))


def _covered(lo: int, hi: int, spans: list[tuple[int, int]]) -> bool:
    for start, end in spans:
        if start <= lo < end:
            lo = end
        if lo >= hi:
            return True
    return False


def _span(text: str) -> tuple[int, int]:
    lo, hi = text.split("-")
    return int(lo, 16), int(hi, 16)


def test_open_files_in_the_dump_match_proc(crit: Callable[..., str], criu_dir: Path,
                                           real_podman_archive: RealArchive) -> None:
    """The fixture itself: CRIU dumped the files /proc showed open (for inspect --files)."""
    dumped: dict[int, dict[int, str]] = {}
    pid = 0
    for line in crit("x", criu_dir, "fds").splitlines():
        if re.fullmatch(r"\d+", line):
            pid = int(line)
            dumped[pid] = {}
        elif m := re.match(r"^\t\s*(\d+): (.*)$", line):
            dumped[pid][int(m.group(1))] = m.group(2)
    for pid, p in real_podman_archive.truth.processes.items():
        regular = {fd: path.removesuffix(" (deleted)") for fd, path in p.fds.items()
                   if path.startswith("/") and not path.endswith(".fifo")}
        assert {fd: dumped[pid][fd] for fd in regular} == regular, pid
        assert set(dumped[pid]) == set(p.fds), pid


# --- migrate against checkpointctl ---------------------------------------------------


def _table(text: str) -> list[dict[str, str]]:
    """checkpointctl's tables: a header, a line of dashes, rows; columns split on 2+ spaces."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    i = next(n for n, ln in enumerate(lines) if ln.startswith("---"))
    head = re.split(r"\s{2,}", lines[i - 1].strip())
    return [dict(zip(head, re.split(r"\s{2,}", ln.strip()), strict=True)) for ln in lines[i + 1:]]


@BOTH
def test_show_matches_checkpointctl(cli: Cli, checkpointctl: Callable[..., str],
                                    archive: RealArchive) -> None:
    (theirs,) = _table(checkpointctl("show", archive.path))
    r = cli("show", archive.path)
    head, row = r.out.splitlines()
    ours = dict(zip(re.split(r"\s{2,}", head.strip()), re.split(r"\s{2,}", row.strip()),
                    strict=True))
    # checkpointctl 1.6 prints no IP column (it is in its JSON, compared below)...
    assert ours.pop("IP") == archive.engine.ip
    # ...and CRI-O's Created annotation as written (nanoseconds); migrate's
    # table shows every engine's time to the second (its JSON keeps it whole).
    assert ours.pop("CREATED") == _instant(theirs.pop("CREATED")).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert ours == theirs


@BOTH
def test_inspect_matches_checkpointctl(checkpointctl: Callable[..., str],
                                       archive: RealArchive) -> None:
    inspected = _inspect(archive.path)
    (theirs,) = json.loads(checkpointctl("inspect", "--all", "--format", "json", archive.path))
    same = ("container_name", "image", "id", "runtime", "engine", "ip", "checkpoint_size",
            "statistics", "mounts")
    assert {k: inspected[k] for k in same} == {k: theirs[k] for k in same}
    if inspected["engine"] == "CRI-O":
        assert inspected["created"] == theirs["created"]  # the annotation, as written
        # checkpointctl's JSON has config.dump's checkpointedTime (to the second);
        # migrate's has it in `list` (as written) and its pod and namespace everywhere.
        (listed,) = [e for e in _list_json(archive.path.parent)]
        assert _instant(listed["checkpointed"]) == _instant(theirs["checkpointed"])
        assert archive.pod is not None
        assert "pod_name" not in theirs and inspected["pod_name"] == archive.pod.name
    else:
        # A difference kept on purpose (README): checkpointctl prints Podman's
        # createdTime to the second, migrate as the engine recorded it.
        assert theirs["created"] == _instant(inspected["created"]).strftime(
            "%Y-%m-%dT%H:%M:%SZ") != inspected["created"]

    def tree(node: dict[str, Any]) -> Any:  # checkpointctl's children come in map order
        return (node["pid"], node["command"],
                sorted(tree(c) for c in node.get("children", [])))

    assert tree(inspected["process_tree"]) == tree(theirs["process_tree"])
    # ...and checkpointctl 1.6 (go-criu 8.4) reads a run's page count only from
    # the u64 field CRIU 4.2 added: on CRIU 4.1.1 dumps every run has 0 pages,
    # so its command lines are blanks and its environments absent.
    for _, node in _walk(theirs["process_tree"]):
        assert node["cmdline"].strip() == "" and not node.get("environment_variables")


@BOTH
def test_memparse_vs_checkpointctl(cli: Cli, checkpointctl: Callable[..., str],
                                   archive: RealArchive) -> None:
    """Pinned difference: checkpointctl 1.6 finds no memory in CRIU 4.1.1 dumps (see above)."""
    a = archive
    theirs = {int(r["PID"]): r for r in _table(checkpointctl("memparse", a.path))}
    ours = {e["pid"]: e for e in cli("memparse", a.path, "-o", "json").json()}
    assert set(theirs) == set(ours)
    for pid, row in theirs.items():
        assert row["PROCESS NAME"] == ours[pid]["command"]
        assert row["MEMORY SIZE"] == "0 B" != human_size(ours[pid]["memory_size"])
    out = checkpointctl("memparse", "--pid", "1", "--search", a.secret, a.path)
    assert f'No matches for pattern "{a.secret}" in the memory of PID 1' in out
    assert cli("memparse", a.path, "--pid", 1, "--search", a.secret, "-o", "json").json()


# --- open files and sockets (inspect --files --sockets) ------------------------------

O_CLOEXEC = 0o2000000
# sock_diag's TCP_* states and /proc/net/unix's types, by the names migrate prints.
TCP_STATES = {1: "ESTABLISHED", 7: "CLOSE", 10: "LISTEN"}
UNIX_TYPES = {1: "STREAM", 2: "DGRAM", 5: "SEQPACKET"}
SS_UNCONNECTED, SS_CONNECTED, ACCEPTCON = 1, 3, 0x10000


def _files(inspected: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {p["pid"]: p for p in inspected["files"]}


def _sockets(inspected: dict[str, Any]) -> dict[tuple[int, int], dict[str, Any]]:
    return {(p["pid"], s["fd"]): s for p in inspected["sockets"] for s in p["open_sockets"]}


def _ip(text: str | None) -> Any:
    return None if text is None else ipaddress.ip_address(text)


@BOTH
def test_open_files_match_proc(archive: RealArchive) -> None:
    """Every descriptor: path as /proc/PID/fd shows it, position and flags as
    /proc/PID/fdinfo shows them (CRIU keeps O_CLOEXEC as the descriptor's FD_CLOEXEC)."""
    files = _files(_inspect(archive.path))
    assert set(files) == set(archive.truth.processes)
    kinds = set()
    for pid, p in archive.truth.processes.items():
        ours = {f["fd"]: f for f in files[pid]["open_files"]}
        assert set(ours) == set(p.fds), pid
        for n, f in ours.items():
            kinds.add(f["type"])
            assert f["path"] + (" (deleted)" if f["deleted"] else "") == p.fds[n], (pid, n)
            assert f["flags"] == p.fdinfo[n]["flags"] & ~O_CLOEXEC, (pid, n)
            assert f["cloexec"] == bool(p.fdinfo[n]["flags"] & O_CLOEXEC), (pid, n)
            assert f["mode"] == ("r", "w", "rw")[f["flags"] & 3]
            if f["type"] in ("REG", "FIFO"):
                assert f["pos"] == p.fdinfo[n]["pos"], (pid, n)
        assert (files[pid]["cwd"], files[pid]["root"]) == (p.cwd, p.root)
    # The workload has one of each: what the comparison covered.
    assert kinds == {"REG", "PIPE", "FIFO", "UNIXSK", "INETSK"}
    deleted = {f["path"] for p in files.values() for f in p["open_files"] if f["deleted"]}
    assert deleted == {"/var/tmp/gone.log"}
    assert {f["pos"] for f in files[1]["open_files"] if f["path"] == "/var/log/app.log"} == {
        len("started alpha beta gamma\n")}


@BOTH
def test_sockets_match_proc_net(archive: RealArchive) -> None:
    """Each socket against its line in the container's /proc/net/{tcp,tcp6,unix}."""
    sockets = _sockets(_inspect(archive.path))
    on_proc = {(pid, n): int(link[8:-1]) for pid, p in archive.truth.processes.items()
               for n, link in p.fds.items() if link.startswith("socket:[")}
    assert {k: s["inode"] for k, s in sockets.items()} == on_proc
    families = set()
    for s in sockets.values():
        t = archive.truth.sockets[s["inode"]]
        families.add(s["family"])
        if t["family"] == "UNIX":
            listening = t["flags"] & ACCEPTCON
            state = "LISTEN" if listening else {SS_UNCONNECTED: "CLOSE",
                                                SS_CONNECTED: "ESTABLISHED"}[t["state"]]
            assert (s["family"], s["type"], s["state"], s["address"]) == (
                "UNIX", UNIX_TYPES[t["type"]], state, t["path"])
            continue
        assert (s["family"], s["protocol"], s["state"], s["src_port"], s["dst_port"]) == (
            t["family"], t["protocol"], TCP_STATES[t["state"]], t["src_port"], t["dst_port"])
        assert (_ip(s["src"]), _ip(s["dst"])) == (_ip(t["src"]), _ip(t["dst"]))
    assert families == {"UNIX", "INET", "INET6"}
    # nc -l listens on :: (IPv4 clients arrive v4-mapped); the client connects over 127.0.0.1.
    assert {(s["src"], s["dst"]) for s in sockets.values() if s["family"] == "INET6"} == {
        ("::ffff:127.0.0.1", "::ffff:127.0.0.1")}


def _crit_fds(text: str) -> dict[int, dict[str, str]]:
    """`crit x DIR fds` -> {pid: {fd or cwd/root: what crit prints}}."""
    out: dict[int, dict[str, str]] = {}
    pid = 0
    for line in text.splitlines():
        if re.fullmatch(r"\d+", line):
            pid = int(line)
            out[pid] = {}
        elif m := re.match(r"^\t\s*(\w+): (.*)$", line):
            out[pid][m.group(1)] = m.group(2)
    return out


def test_open_files_match_crit_x_fds(crit: Callable[..., str], criu_dir: Path,
                                     inspected: dict[str, Any]) -> None:
    theirs = _crit_fds(crit("x", criu_dir, "fds"))
    for pid, p in _files(inspected).items():
        ours = {str(f["fd"]): f for f in p["open_files"]}
        assert set(ours) | {"cwd", "root"} == set(theirs[pid]), pid
        assert (theirs[pid]["cwd"], theirs[pid]["root"]) == (p["cwd"], p["root"])
        for n, f in ours.items():
            shown = theirs[pid][n]
            if f["type"] == "REG":
                assert shown == f["path"]
            elif f["type"] == "PIPE":  # crit: pipe[N], /proc and migrate: pipe:[N]
                assert shown == f["path"].replace(":", "")
            elif f["type"] == "UNIXSK":  # unix[ino (peer) name]
                assert shown.startswith(f"unix[{f['path'][8:-1]} ")
            else:  # crit names other types by their id: FIFO.7, INETSK.20
                assert re.fullmatch(f"{f['type']}\\.\\d+", shown), shown


def test_open_files_match_crit_decode(crit: Callable[..., str], criu_dir: Path,
                                      inspected: dict[str, Any]) -> None:
    """Every field migrate shows, from crit's own decoding of the same images."""
    entries = {e["id"]: e for e in json.loads(crit("decode", "-i", criu_dir / "files.img"))[
        "entries"]}
    sockets = _sockets(inspected)
    for pid, p in _files(inspected).items():
        ids = json.loads(crit("decode", "-i", criu_dir / f"ids-{pid}.img"))["entries"][0]
        table = json.loads(crit("decode", "-i", criu_dir / f"fdinfo-{ids['files_id']}.img"))
        by_fd = {e["fd"]: e for e in table["entries"]}
        for f in p["open_files"]:
            e = by_fd[f["fd"]]
            assert (f["type"], f["cloexec"]) == (e["type"], bool(e["flags"] & 1))
            file = entries[e["id"]]
            sub = file[{"REG": "reg", "PIPE": "pipe", "FIFO": "fifo", "UNIXSK": "usk",
                        "INETSK": "isk"}[f["type"]]]
            if f["type"] == "FIFO":
                sub = entries[sub["regf_id"]]["reg"]
            assert f["flags"] == sub["flags"]
            if "pos" in sub:
                assert (f["pos"], f["size"]) == (sub["pos"], sub.get("size"))
            if f["type"] in ("REG", "FIFO"):
                assert f["path"] == sub["name"]
            if f["type"] == "INETSK":
                s = sockets[pid, f["fd"]]
                assert (s["inode"], s["src_port"], s["dst_port"]) == (
                    sub["ino"], sub["src_port"], sub["dst_port"])
                assert _ip(s["src"]) == _ip(_crit_ip(sub["src_addr"]))
            if f["type"] == "UNIXSK":
                s = sockets[pid, f["fd"]]
                assert s["inode"] == sub["ino"]
                # crit prints the name quoted-printable: /dev/log=00 (with the kernel's NUL)
                assert quopri.decodestring(sub["name"]) == s["address"].encode() + b"\0"


def _crit_ip(words: list[int]) -> str:
    return str(ipaddress.ip_address(b"".join(w.to_bytes(4, "little") for w in words)))


@BOTH
def test_files_and_sockets_vs_checkpointctl(checkpointctl: Callable[..., str],
                                            archive: RealArchive) -> None:
    """Equal where both show the same thing; where they differ, the README says why."""
    (theirs,) = json.loads(checkpointctl("inspect", "--files", "--sockets", "--format", "json",
                                         archive.path))
    inspected = _inspect(archive.path)
    files, sockets = _files(inspected), _sockets(inspected)
    their_files = {p["pid"]: p["open_files"] for p in theirs["file_descriptors"]}
    assert set(their_files) == set(files)
    for pid, rows in their_files.items():
        *fds, cwd, root = rows
        assert (cwd["fd"], cwd["path"], root["fd"], root["path"]) == (
            "cwd", files[pid]["cwd"], "root", files[pid]["root"])
        ours = files[pid]["open_files"]
        assert [r["fd"] for r in fds] == [f"{f['type']} {f['fd']}" for f in ours]
        for r, f in zip(fds, ours, strict=True):
            if f["type"] == "REG":
                assert r["path"] == f["path"]
            elif f["type"] == "PIPE":  # pipe[N] (crit's), not /proc's pipe:[N]
                assert r["path"] == f["path"].replace(":", "")
            elif f["type"] == "UNIXSK":  # unix[ino (peer) name], the kernel's NUL kept
                s = sockets[pid, f["fd"]]
                assert r["path"] == f"unix[{s['inode']} (0) {s['address']}\0]"
            else:  # FIFO.7, INETSK.20: the file id, where migrate shows the path or inode
                assert re.fullmatch(f"{f['type']}\\.\\d+", r["path"])
    their_sockets = {p["pid"]: [s["data"] for s in p["open_sockets"]] for p in theirs["sockets"]}
    # checkpointctl lists only processes with sockets, and no fd numbers.
    assert {pid: len(v) for pid, v in their_sockets.items()} == {
        p["pid"]: len(p["open_sockets"]) for p in inspected["sockets"] if p["open_sockets"]}
    ours_by_pid = {p["pid"]: p["open_sockets"] for p in inspected["sockets"]}
    for pid, datas in their_sockets.items():
        for data, s in zip(datas, ours_by_pid[pid], strict=True):
            if s["family"] == "UNIX":
                # checkpointctl: type "UNIX", no state, the name with the kernel's NUL.
                assert data == {"type": "UNIX", "address": s["address"] + "\0"}
                continue
            assert {k: data[k] for k in ("type", "state", "src", "src_port", "dst",
                                         "dst_port")} == {
                "type": s["protocol"], "state": s["state"], "src": s["src"],
                "src_port": s["src_port"], "dst": s["dst"], "dst_port": s["dst_port"]}


# --- the compressed variants ---------------------------------------------------------


@pytest.mark.parametrize(("fixture", "magic"), [
    ("real_podman_archive_gzip", b"\x1f\x8b"), ("real_podman_archive_zstd", b"\x28\xb5\x2f\xfd")])
def test_compressed_exports_are_made(request: pytest.FixtureRequest, fixture: str,
                                     magic: bytes, real_podman_archive: RealArchive) -> None:
    archive: RealArchive = request.getfixturevalue(fixture)
    assert archive.path.read_bytes()[:len(magic)] == magic
    # Dumped with --leave-running from the same idle container: the same truth.
    before = real_podman_archive.truth.processes
    assert {p: (t.argv, t.environ, t.secret_at) for p, t in archive.truth.processes.items()} \
        == {p: (t.argv, t.environ, t.secret_at) for p, t in before.items()}


def _analyses(cli: Cli, path: Path, secret: str) -> dict[str, Any]:
    """The JSON of every analysis command on ``path``."""
    out = {}
    for args in (["show", "--stats"], ["inspect", "--all"], ["memparse"],
                 ["memparse", "--search", secret, "--context", str(CONTEXT)], ["rootfs-diff"]):
        r = cli(args[0], path, *args[1:], "-o", "json")
        assert (r.code, r.err) == (0, ""), args
        out[" ".join(args[:2])] = r.json()
    return out


def _same_dump_fields(doc: Any) -> Any:
    """``doc`` without what differs between two dumps of the same idle container: CRIU's
    timings, and the CRIU images' total size (core images vary by a byte or two)."""
    if isinstance(doc, list):
        return [_same_dump_fields(d) for d in doc]
    if isinstance(doc, dict):
        return {k: _same_dump_fields(v) for k, v in doc.items()
                if k not in ("statistics", "total_size")}
    return doc


@pytest.mark.parametrize("archive", COMPRESSED, indirect=True)
def test_podman_compressed_export_reads_as_the_uncompressed_one(
        cli: Cli, archive: RealArchive, real_podman_archive: RealArchive) -> None:
    """Podman's own gzip/zstd export: the same container, process tree, command lines,
    environments, memory sizes, memparse addresses and files as its uncompressed export."""
    got = _analyses(cli, archive.path, archive.secret)
    want = _analyses(cli, real_podman_archive.path, real_podman_archive.secret)
    assert _same_dump_fields(got) == _same_dump_fields(want)
    assert got["memparse --search"], "the secret is found in the compressed dump"
    (listed,) = cli("list", archive.path.parent, "-o", "json").json()
    assert listed["archive"] == str(archive.path)
    assert (listed["container_name"], listed["engine"]) == (archive.container, "Podman")


def test_list_finds_podman_exports_by_content(cli: Cli, real_podman_archive: RealArchive,
                                              real_podman_archive_gzip: RealArchive,
                                              real_podman_archive_zstd: RealArchive,
                                              tmp_path: Path) -> None:
    """`podman container checkpoint --export FILE` takes any name: list goes by content."""
    names = {"web.backup": real_podman_archive, "web-1.gz": real_podman_archive_gzip,
             "nightly": real_podman_archive_zstd}
    for name, a in names.items():
        (tmp_path / name).write_bytes(a.path.read_bytes())
    (tmp_path / "truth.json").write_text("{}")  # not an archive: skipped, no warning
    r = cli("list", tmp_path, "-o", "json")
    assert (r.code, r.err) == (0, "")
    assert [(Path(e["archive"]).name, e["container_name"], e["engine"]) for e in r.json()] == [
        (name, names[name].container, "Podman") for name in sorted(names)]


@pytest.mark.parametrize("kind", ["gzip", "zstd"])
def test_the_same_dump_compressed_gives_the_same_json(
        cli: Cli, real_podman_archive: RealArchive, tmp_path: Path, kind: str) -> None:
    """The uncompressed export compressed here: byte for byte the same answers, build too."""
    a = real_podman_archive
    data = a.path.read_bytes()
    packed = tmp_path / f"export.{kind}"
    packed.write_bytes(gzip.compress(data) if kind == "gzip"
                       else zstandard.ZstdCompressor().compress(data))
    assert _analyses(cli, packed, a.secret) == _analyses(cli, a.path, a.secret)
    digests = []
    for src in (a.path, packed):
        r = cli("build", src, "--image", "localhost/real:1", "--no-push", "--oci-layout",
                tmp_path / f"oci-{src.name}", "-o", "json")
        assert r.code == 0, r.err
        digests.append(r.json()["digest"])
    assert digests[0] == digests[1]


@pytest.mark.parametrize("archive", COMPRESSED, indirect=True)
def test_peak_memory_on_real_compressed_exports(archive: RealArchive) -> None:
    for args in (["inspect", "--all", "-o", "json"], ["memparse", "--search", archive.secret]):
        r, peak = measured_run(args[0], archive.path, *args[1:])
        assert r.returncode == 0, r.stderr
        assert peak < 100 << 20, (args, peak)
