"""`migrate sandbox --engine podman` before Podman restores anything: what is refused, and the
copy of the checkpoint Podman is given (network, mounts, labels rewritten; the rest as it was).

The real restores are in tests/test_podman_sandbox.py. Here Podman is a stand-in written by
the test: it records its calls, answers `container inspect` with "no such container" (or a
container the test describes), and for `container restore --import COPY` keeps the copy's
config.dump, spec.dump and member list for the test to read, and prints an ID.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from migrate.adapters.podman import criu_errors
from migrate.errors import InputError
from migrate.pipeline import sandbox_podman
from migrate.pipeline.libpod_rewrite import (
    RecordedMount,
    SandboxMount,
    recorded_mounts,
    refuse_unsafe,
    rewrite,
)
from migrate.validation import validate
from tests.conftest import Result

Cli = Callable[..., Result]
ID = "5a4db0c5" * 8
KUBELET = "/var/lib/kubelet/pods/6a2d1a4e-53a1-4f8b-9c1e-0d5e0f1b7a21"

STANDIN = r'''
import json, os, sys, tarfile
CFG = json.loads(CONFIG)
args = sys.argv[1:]
with open(CFG["log"], "a") as f:
    f.write(json.dumps(args) + "\n")
if args[:2] == ["container", "inspect"]:
    known = CFG["containers"].get(args[2])
    if known is None:
        sys.stderr.write("Error: inspecting object: no such container %s\n" % args[2])
        sys.exit(125)
    print(json.dumps([known]))
elif args[:2] == ["container", "restore"]:
    copy = args[args.index("--import") + 1]
    with tarfile.open(copy) as tf:
        members = [(m.name, m.type.decode(), m.size) for m in tf.getmembers()]
        kept = {m.name: tf.extractfile(m).read().decode("latin-1")
                for m in tf.getmembers() if m.isreg()}
    json.dump({"members": members, "files": kept, "mode": os.stat(copy).st_mode & 0o777,
               "dir_mode": os.stat(os.path.dirname(copy)).st_mode & 0o777},
              open(CFG["restored"], "w"))
    print(CFG["id"])
elif args[:1] == ["rm"]:
    print(args[-1])
else:
    sys.stderr.write("Error: the stand-in does not know %s\n" % " ".join(args))
    sys.exit(125)
'''


class Standin:
    """The podman stand-in: its path, its calls, and what it was asked to restore."""

    def __init__(self, where: Path, containers: dict[str, Any] | None = None) -> None:
        where.mkdir(parents=True, exist_ok=True)
        self.log, self.restored = where / "podman.log", where / "restored.json"
        cfg = {"log": str(self.log), "restored": str(self.restored), "id": ID,
               "containers": containers or {}}
        self.path = where / "podman"
        self.path.write_text(f"#!{sys.executable}\nCONFIG = {json.dumps(json.dumps(cfg))}\n"
                             f"{STANDIN}")
        self.path.chmod(0o755)

    def calls(self) -> list[list[str]]:
        return ([json.loads(line) for line in self.log.read_text().splitlines()]
                if self.log.exists() else [])

    def copy(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.restored.read_text())
        return data


@pytest.fixture
def podman(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Standin:
    # Podman restores only as root; the stand-in does not care.
    monkeypatch.setattr(sandbox_podman.os, "geteuid", lambda: 0)
    return Standin(tmp_path / "bin")


@pytest.fixture
def libpod_archive(make_archive: Callable[..., Path]) -> Path:
    """A Podman export; its spec.dump has the kubelet's three bind mounts (two besides
    /etc/hosts, which Podman makes anew)."""
    return make_archive("podman.tar", engine="libpod")


def sandbox(cli: Cli, podman: Standin, *args: Any) -> Result:
    return cli("sandbox", *args, "--engine", "podman", "--podman", podman.path)


def allow_all(tmp_path: Path) -> list[str]:
    (tmp_path / "term").write_text("")
    (tmp_path / "sa").mkdir(exist_ok=True)
    return ["--allow-mount", f"/dev/termination-log={tmp_path / 'term'}",
            "--allow-mount", f"/var/run/secrets/kubernetes.io/serviceaccount={tmp_path / 'sa'}"]


def members(archive: Path) -> dict[str, bytes]:
    with tarfile.open(archive) as tf:
        return {m.name: tf.extractfile(m).read()  # type: ignore[union-attr]
                for m in tf.getmembers() if m.isreg()}


def test_the_copy_podman_restores(cli: Cli, podman: Standin, libpod_archive: Path,
                                  tmp_path: Path) -> None:
    r = sandbox(cli, podman, libpod_archive, *allow_all(tmp_path), "--rm", "-o", "json")
    assert r.code == 0, r.err
    report = r.json()
    validate(report, "sandbox-podman.schema.json", "sandbox -o json")
    digest = "sha256:" + hashlib.sha256(libpod_archive.read_bytes()).hexdigest()
    assert (report["name"], report["id"], report["digest"], report["rm"]) == (
        "forensic-counter", ID, digest, True)
    assert podman.calls() == [
        ["container", "inspect", "forensic-counter"],
        ["container", "restore", "--import", podman.calls()[1][3], "--name",
         "forensic-counter"]]
    copy = podman.copy()
    assert (copy["mode"], copy["dir_mode"]) == (0o600, 0o700)
    assert not Path(podman.calls()[1][3]).exists()  # deleted once restored
    original = members(libpod_archive)
    assert [name for name, _, _ in copy["members"]] == [
        "checkpoint", *[n for n in _names(libpod_archive) if n != "checkpoint"]]
    for name, data in original.items():
        if name not in ("config.dump", "spec.dump"):
            assert copy["files"][name].encode("latin-1") == data, name
    config, spec = json.loads(copy["files"]["config.dump"]), json.loads(copy["files"]["spec.dump"])
    assert config["labels"] == report["labels"] == {
        "migrate.dev/forensic-restore": digest, "migrate.dev/sandbox": "forensic",
        "migrate.dev/checkpoint": str(libpod_archive),
        "migrate.dev/source-container": "counter",
        "migrate.dev/source-id": "059a219a22e56a1d2c3b4a5f6e7d8c9b0a1f2e3d4c5b6a7f8e9d0c1b2a3f4e5d",
        "migrate.dev/checkpoint-time": "2023-03-02T06:08:12Z"}
    assert (config["networkMode"], config["createNetNS"]) == ("none", True)
    assert spec["annotations"]["io.podman.annotations.autoremove"] == "TRUE"
    binds = {m["destination"]: m["source"] for m in spec["mounts"] if m["type"] == "bind"}
    assert binds["/dev/termination-log"] == str(tmp_path / "term")
    assert binds["/var/run/secrets/kubernetes.io/serviceaccount"] == str(tmp_path / "sa")
    assert [m["container_path"] for m in report["mounts"]] == [
        "/dev/termination-log", "/var/run/secrets/kubernetes.io/serviceaccount"]


def _names(archive: Path) -> list[str]:
    with tarfile.open(archive) as tf:
        return [m.name for m in tf.getmembers()]


def test_host_mounts_are_refused_unless_allowed(cli: Cli, podman: Standin,
                                                libpod_archive: Path) -> None:
    r = sandbox(cli, podman, libpod_archive)
    assert (r.code, r.out) == (2, "")
    assert r.err == (
        f"error: {libpod_archive} records 2 host mounts the restored container would bind: "
        f"/dev/termination-log (from {KUBELET}/containers/counter/1a2b3c4d), "
        "/var/run/secrets/kubernetes.io/serviceaccount (from "
        f"{KUBELET}/volumes/kubernetes.io~projected/kube-api-access-7xk2p)\n"
        "hint: a restore needs each of them (CRIU restores the process with its mounts); give "
        "--allow-mount DEST=HOSTPATH for each, with a path you chose (an empty directory made "
        "for it is safest); nothing was restored\n")
    assert podman.calls() == []


@pytest.mark.parametrize("allow, code, err", [
    (["/etc/other=/tmp"], 2, "error: --allow-mount /etc/other: the checkpoint records no bind "
     "mount there\nhint: its mounts: /dev/termination-log, "
     "/var/run/secrets/kubernetes.io/serviceaccount\n"),
    (["data=/tmp"], 2, "error: --allow-mount 'data=/tmp': expected DEST=HOSTPATH\nhint: DEST "
     "is the path in the container, e.g. --allow-mount /data=/srv/forensics/data\n"),
    (["/data=/nonexistent/x"], 4, "error: --allow-mount /data: /nonexistent/x does not exist\n"
     "hint: create it first (an empty directory, or an empty file for a file mount)\n"),
])
def test_allow_mount_errors(cli: Cli, podman: Standin, libpod_archive: Path,
                            allow: list[str], code: int, err: str) -> None:
    r = sandbox(cli, podman, libpod_archive, *[a for x in allow for a in ("--allow-mount", x)])
    assert (r.code, r.err) == (code, err)
    assert podman.calls() == []


def test_a_crio_checkpoint_is_for_crictl(cli: Cli, podman: Standin,
                                        counters_archive: Path) -> None:
    r = sandbox(cli, podman, counters_archive)
    assert (r.code, r.err) == (3, (
        f"error: {counters_archive}: a CRI-O checkpoint; Podman restores only the checkpoints "
        "Podman made (libpod's config.dump)\nhint: restore it on a CRI host: migrate sandbox "
        "ARCHIVE --engine crictl (or `migrate manifest` for a Pod)\n"))
    assert podman.calls() == []


def test_a_name_in_use_is_refused_before_the_copy(cli: Cli, tmp_path: Path,
                                                  libpod_archive: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox_podman.os, "geteuid", lambda: 0)
    podman = Standin(tmp_path / "bin", {"evidence": {"Id": ID, "Config": {"Labels": {}}}})
    r = sandbox(cli, podman, libpod_archive, *allow_all(tmp_path), "--name", "evidence")
    assert (r.code, r.err) == (2, "error: a container named evidence exists\nhint: choose "
                                  "another --name, or remove it (`migrate sandbox stop "
                                  "evidence` if it is a sandbox)\n")
    assert [c[:2] for c in podman.calls()] == [["container", "inspect"]]


def test_only_root_restores(cli: Cli, tmp_path: Path, libpod_archive: Path,
                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox_podman.os, "geteuid", lambda: 1000)
    podman = Standin(tmp_path / "bin")
    r = sandbox(cli, podman, libpod_archive, *allow_all(tmp_path))
    assert (r.code, r.err) == (5, "error: Podman restores checkpoints only as root (rootful "
                                  "Podman: CRIU needs it)\nhint: run `migrate sandbox --engine "
                                  "podman` as root\n")
    assert "restore" not in [c[1] for c in podman.calls()]


def test_a_crafted_member_is_never_copied(cli: Cli, podman: Standin, libpod_archive: Path,
                                          tmp_path: Path) -> None:
    with tarfile.open(libpod_archive, "a") as tf:
        link = tarfile.TarInfo("checkpoint/evil")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/shadow"
        tf.addfile(link)
    r = sandbox(cli, podman, libpod_archive, *allow_all(tmp_path))
    assert (r.code, r.err) == (3, (
        f"error: {libpod_archive}: checkpoint/evil: is a symlink\nhint: a checkpoint holds "
        "only files and directories; this one may be crafted\n"))
    assert [c[:2] for c in podman.calls()] == [["container", "inspect"]]


@pytest.mark.parametrize("args, err", [
    (["--out", "x"], "error: --out is an option of --engine crictl\nhint: see 'migrate sandbox "
     "restore --help'; this is --engine podman\n"),
    (["--name", "-bad"], "error: --name '-bad' is not a valid Podman name\nhint: letters, "
     "digits, '_', '.' and '-', starting with a letter or digit\n"),
    (["--network", "pod/x"], "error: --network 'pod/x' is not a valid Podman name\nhint: "
     "letters, digits, '_', '.' and '-', starting with a letter or digit\n"),
])
def test_bad_options(cli: Cli, podman: Standin, libpod_archive: Path, args: list[str],
                     err: str) -> None:
    r = sandbox(cli, podman, libpod_archive, *args)
    assert (r.code, r.err) == (2, err)
    assert podman.calls() == []


def test_podman_options_are_not_for_crictl(cli: Cli, libpod_archive: Path) -> None:
    r = cli("sandbox", libpod_archive, "--rm")
    assert (r.code, r.err) == (2, "error: --rm is an option of --engine podman\nhint: see "
                                  "'migrate sandbox restore --help'; this is --engine crictl\n")
    r = cli("sandbox", libpod_archive, "--no-tls-verify")
    assert r.err.splitlines()[0] == "error: --no-tls-verify is an option of --engine podman"
    r = cli("sandbox", "registry.example:5000/ckpt/app:v1", "--out", "x")
    assert (r.code, r.err) == (2, "error: registry.example:5000/ckpt/app:v1: --engine crictl "
                                  "restores from an archive file\nhint: restore an image with "
                                  "--engine podman, or on a cluster with `migrate manifest "
                                  "--image`\n")


def test_missing_podman(cli: Cli, libpod_archive: Path, tmp_path: Path) -> None:
    r = cli("sandbox", libpod_archive, "--engine", "podman", "--podman", tmp_path / "none")
    assert (r.code, r.err.splitlines()[0]) == (
        5, f"error: podman is not installed ({tmp_path}/none not found)")


def test_sandbox_restore_is_the_same_command(cli: Cli, podman: Standin, libpod_archive: Path,
                                             tmp_path: Path) -> None:
    """`migrate sandbox ARCHIVE` (as before `stop` existed) is `migrate sandbox restore`."""
    r = cli("sandbox", "restore", libpod_archive, "--engine", "podman", "--podman",
            podman.path, *allow_all(tmp_path), "-o", "json")
    assert (r.code, r.json()["id"]) == (0, ID)


# --- the rewrite itself --------------------------------------------------------------

def _podman_dumps() -> tuple[dict[str, Any], dict[str, Any]]:
    """config.dump and spec.dump as Podman 4.3 wrote them for `podman run --network NET
    -p 8080:80 -v /srv/data:/data -v cache:/cache --restart always` (trimmed)."""
    config = {
        "id": "3df5", "name": "web", "createNetNS": True, "networkMode": "bridge",
        "newNetworks": {"front": {"interface_name": "eth1"}},
        "newPortMappings": [{"host_ip": "", "container_port": 80, "host_port": 8080,
                             "range": 1, "protocol": "tcp"}],
        "staticIP": "10.88.0.9", "labels": {"app": "web"},
        "namedVolumes": [{"volumeName": "cache", "dest": "/cache", "options": ["rw"]}],
        "restart_policy": "always", "healthcheck": {"Test": ["CMD", "true"]}}
    spec = {
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/data", "type": "bind", "source": "/srv/data",
             "options": ["rw", "rprivate", "rbind"]},
            {"destination": "/cache", "type": "bind",
             "source": "/var/lib/containers/storage/volumes/cache/_data",
             "options": ["ro", "rprivate", "rbind"]},
            {"destination": "/etc/hosts", "type": "bind", "source": "/run/x/userdata/hosts",
             "options": ["bind", "rprivate"]},
            {"destination": "/run/.containerenv", "type": "bind",
             "source": "/run/x/userdata/.containerenv", "options": ["bind", "rprivate"]}],
        "annotations": {"io.container.manager": "libpod"},
        "linux": {"namespaces": [{"type": "pid"}, {"type": "network", "path": "/run/netns/n1"},
                                 {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}]}}
    return config, spec


def test_recorded_mounts_leave_out_podmans_own() -> None:
    config, spec = _podman_dumps()
    assert recorded_mounts(config, spec) == [
        RecordedMount("/data", "/srv/data", None, False),
        RecordedMount("/cache", "/var/lib/containers/storage/volumes/cache/_data", "cache",
                      True)]


def test_rewrite_for_no_network() -> None:
    config, spec = _podman_dumps()
    before = json.dumps([config, spec])
    mounts = [SandboxMount(m, Path(f"/forensics{m.destination}"))
              for m in recorded_mounts(config, spec)]
    new_config, new_spec = rewrite(config, spec, network="none", mounts=mounts,
                                   labels={"migrate.dev/forensic-restore": "sha256:x"},
                                   autoremove=False)
    assert json.dumps([config, spec]) == before  # the inputs are untouched
    assert new_config == {
        "id": "3df5", "name": "web", "createNetNS": True, "networkMode": "none",
        "labels": {"app": "web", "migrate.dev/forensic-restore": "sha256:x"},
        "namedVolumes": [], "healthcheck": None}
    assert new_spec["linux"]["namespaces"] == [
        {"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"},
        {"type": "network"}]
    assert [(m["destination"], m["source"]) for m in new_spec["mounts"]] == [
        ("/proc", "proc"), ("/data", "/forensics/data"), ("/cache", "/forensics/cache"),
        ("/etc/hosts", "/run/x/userdata/hosts"),
        ("/run/.containerenv", "/run/x/userdata/.containerenv")]
    assert new_spec["mounts"][2]["options"] == ["ro", "rprivate", "rbind"]  # kept read-only
    assert new_spec["annotations"]["io.podman.annotations.autoremove"] == "FALSE"


def test_rewrite_for_a_named_network_keeps_the_interface_name() -> None:
    config, spec = _podman_dumps()
    new_config, _ = rewrite(config, spec, network="forensics", mounts=[], labels={},
                            autoremove=True)
    assert (new_config["networkMode"], new_config["newNetworks"]) == (
        "bridge", {"forensics": {"interface_name": "eth1"}})
    assert "newPortMappings" not in new_config and "staticIP" not in new_config


@pytest.mark.parametrize("change, message", [
    (lambda c, s: c.update(privileged=True), "the container was privileged"),
    (lambda c, s: s["linux"].update(devices=[{"path": "/dev/sda", "type": "b"}]),
     "the container had host devices: /dev/sda"),
    (lambda c, s: s["linux"]["namespaces"].pop(0),
     "the container shared the host's PID namespace"),
    (lambda c, s: s["linux"]["namespaces"][2].update(path="/proc/1/ns/ipc"),
     "the container joined the IPC namespace /proc/1/ns/ipc"),
    (lambda c, s: s["linux"]["namespaces"].append({"type": "user", "path": "/proc/9/ns/user"}),
     "the container joined the user namespace /proc/9/ns/user"),
    (lambda c, s: c.update(pod="p1"), "the container was in Podman pod p1"),
    (lambda c, s: c.update(overlayVolumes=[{"dest": "/o", "source": "/srv/o"}]),
     "the container had overlay volumes, which Podman restores from the host"),
])
def test_refused_outright(change: Callable[[dict[str, Any], dict[str, Any]], Any],
                          message: str) -> None:
    config, spec = _podman_dumps()
    refuse_unsafe("ckpt.tar", config, spec)  # as it is: fine
    change(config, spec)
    with pytest.raises(InputError) as e:
        refuse_unsafe("ckpt.tar", config, spec)
    assert (e.value.message, e.value.hint) == (
        f"ckpt.tar: {message}",
        "a sandbox restores only what cannot reach the host; nothing was restored")


def test_image_references_and_paths() -> None:
    for ref in ("127.0.0.1:5000/ckpt/app:v1", "registry.example/a/b@sha256:" + "0" * 64,
                "localhost/ckpt:1"):
        assert sandbox_podman.is_image_reference(ref), ref
    for path in ("checkpoint.tar", "./checkpoint.tar", "../x/y.tar", "/abs/ckpt.tar",
                 "dir/ckpt.tar", "ckpt:1"):
        assert not sandbox_podman.is_image_reference(path), path




def test_criu_errors_name_the_cause(tmp_path: Path) -> None:
    """From a real CRIU 4.1.1 restore.log (trimmed): a task's errors first, its consequences
    and CRIU's own setup noise left out."""
    log = tmp_path / "restore.log"
    log.write_text(
        "(00.081468) Error (criu/util.c:1533): rlimit: Can't setup RLIMIT_NOFILE for self: "
        "Operation not permitted\n"
        "(00.231191)      1: Error (criu/files-reg.c:2175): File etc/data.txt has bad size 9 "
        "(expect 33)\n"
        "(00.231202)      1: Error (criu/files.c:1221): Unable to open fd=3 id=0x5\n"
        "(00.231442)     17: Error (criu/sk-inet.c:903): inet: Connected TCP socket in image\n"
        "(00.233059)     11: Error (criu/sk-inet.c:903): inet: Connected TCP socket in image\n"
        "(00.233100)      7: Error (criu/files.c:246): Can't sent fd 2 to 7\n"
        "(00.240000) Error (criu/cr-restore.c:1480): 8 exited, status=1\n"
        "(00.245423) Error (criu/cr-restore.c:2320): Restoring FAILED.\n")
    assert criu_errors(log) == ["File etc/data.txt has bad size 9 (expect 33)",
                                "inet: Connected TCP socket in image"]
    assert criu_errors(tmp_path / "gone.log") == []


@pytest.mark.parametrize("method", ["image", "container"])
def test_podman_answering_other_than_json_is_a_dependency_error(method: str) -> None:
    """A podman wrapper or a broken one: its inspect output was parsed unguarded (exit 1,
    JSONDecodeError)."""
    from migrate.adapters.podman import Podman
    from migrate.errors import DependencyError
    from migrate.settings import PodmanSettings

    podman = Podman(PodmanSettings())
    podman._run = lambda *args, **kw: "podman: warning: not JSON"  # type: ignore[assignment]
    with pytest.raises(DependencyError) as e:
        getattr(podman, method)("forensic-counter")
    assert e.value.message == f"podman {method} inspect did not answer JSON"
    assert e.value.hint == "check that `podman` on the PATH is Podman (`podman --version`)"
