"""`migrate sandbox` given crafted checkpoints: what they must not get on the analyst's machine.

With Podman (a stand-in podman, `tests.test_sandbox_podman_checks.Standin`), a checkpoint
that would reach the host is refused before Podman is asked to restore it: spec.dump's
privileges and mounts (what runc applies on the restore, `podman exec` and a later start
use), config.dump's fields joining other containers or naming host paths, spelled in any
case (Podman's Go decoder matches names regardless of it), and the CRIU images the
processes are restored from (their capabilities, seccomp mode and mounts: real Podman
restores showed that CRIU takes them from there, not from spec.dump). The real restores
of real checkpoints, which all of this must accept, are tests/test_podman_sandbox.py.

With crictl, what the archive names reaches command lines and file names checked; a
failure while writing the output directory leaves nothing of this run behind. And names
from an archive never add a line to `sandbox` or `list -o name` output.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import struct
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from e2e.archives.criu_encode import encode_with_pycriu
from migrate.pipeline import sandbox as crictl_sandbox
from tests.conftest import Result
from tests.test_sandbox_podman_checks import Standin, allow_all
from tests.test_untrusted_input import read_members, rewrite_member, write_tar
from tests.test_untrusted_output import EVIL, SHOWN, no_raw_controls

Cli = Callable[..., Result]
Doc = dict[str, Any]
REFUSED = "hint: a sandbox restores only what cannot reach the host; nothing was restored\n"
CRAFTED = "hint: this archive may be crafted; nothing was written\n"
CAPS = ["CAP_AUDIT_WRITE", "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_FSETID",
        "CAP_KILL", "CAP_MKNOD", "CAP_NET_BIND_SERVICE", "CAP_NET_RAW", "CAP_SETFCAP",
        "CAP_SETGID", "CAP_SETPCAP", "CAP_SETUID", "CAP_SYS_CHROOT"]
CAP_BITS = 0xA80425FB  # the same 14 as CRIU writes them (a real Podman 4.3 checkpoint's)
SYS_ADMIN = 1 << 21
MASKED = ["/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
          "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware",
          "/sys/fs/selinux", "/sys/dev/block"]
READONLY = ["/proc/asound", "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys",
            "/proc/sysrq-trigger"]
SECCOMP = {"defaultAction": "SCMP_ACT_ERRNO", "architectures": ["SCMP_ARCH_X86_64"],
           "syscalls": [{"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"}]}
CORE = "checkpoint/core-1.img"
MOUNTS = "checkpoint/mountpoints-13.img"


# --- building checkpoints -------------------------------------------------------------------


def edit_json(src: Path, dst: Path, member: str, change: Callable[[Doc], Any]) -> Path:
    """``src`` copied to ``dst`` with the JSON member ``member`` passed through ``change``."""
    def apply(data: bytes) -> bytes:
        doc = json.loads(data)
        change(doc)
        return json.dumps(doc).encode()
    return rewrite_member(src, dst, member, apply)


def with_members(src: Path, dst: Path, members: dict[str, bytes]) -> Path:
    """``src`` copied to ``dst`` with these members replaced, or added at the end."""
    old = read_members(src)
    names = {info.name for info, _ in old}
    new = [(info, members.get(info.name, data)) for info, data in old]
    for name, data in members.items():
        if name not in names:
            info = tarfile.TarInfo(name)
            info.mode = 0o600
            new.append((info, data))
    return write_tar(dst, new)


def creds(bits: int = CAP_BITS, **more: Any) -> Doc:
    return {"uid": 0, "gid": 0, "euid": 0, "egid": 0, "suid": 0, "sgid": 0, "fsuid": 0,
            "fsgid": 0, "cap_inh": [0, 0], "cap_prm": [bits, 0], "cap_eff": [bits, 0],
            "cap_bnd": [bits, 0], "secbits": 0, **more}


def core(thread: Doc | None) -> Doc:
    """A live task's core-<pid>.img in crit's JSON (``thread``: its thread_core)."""
    entry: Doc = {"mtype": "X86_64", "tc": {"task_state": 1, "exit_code": 0, "personality": 0,
                                           "flags": 0x402100, "blk_sigset": 0, "comm": "sh"}}
    if thread is not None:
        entry["thread_core"] = {"futex_rla": 0, "futex_rla_len": 0, **thread}
    return {"magic": "CORE", "entries": [entry]}


def ambient(bits: int) -> bytes:
    """An old-format creds-<pid>.img (CRIU reads it for a core without credentials) of
    Podman's capabilities and ``bits`` ambient: Debian's pycriu (3.17) has no cap_amb, so
    its field (19, CRIU 4.x) is added to the entry by hand."""
    image = encode_with_pycriu({"c": {"magic": "CREDS", "entries": [creds()]}})["c"]
    (size,) = struct.unpack_from("<I", image, 8)  # after the two magics
    field = _varint(19 << 3) + _varint(bits)  # cap_amb's first word (varint)
    entry = image[12:12 + size] + field
    return image[:8] + struct.pack("<I", len(entry)) + entry


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append(n & 0x7F | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def thread(**more: Any) -> Doc:
    return {"creds": creds(), "seccomp_mode": "filter", **more}


def mount(mnt_id: int, parent: int, where: str, fstype: int, *, ro: bool = False,
          root: str = "/", **more: Any) -> Doc:
    """One entry of mountpoints-<id>.img (fstype: images/mnt.proto's numbers)."""
    return {"fstype": fstype, "mnt_id": mnt_id, "root_dev": "0:1", "parent_mnt_id": parent,
            "flags": hex(0x200000E | ro), "root": root, "mountpoint": where, "source": "x",
            "options": "", **more}


def podman_mounts() -> list[Doc]:
    """The mounts CRIU records for a container Podman 4.3 ran (a real one's, trimmed)."""
    return [mount(80, 53, "/", 17),  # the root: overlay, restored from the container's own
            mount(81, 80, "/proc", 1),
            mount(82, 81, "/proc/sys", 1, ro=True, root="/sys"),
            mount(83, 81, "/proc/keys", 5, root="/null", ext_key="/dev/null"),
            mount(84, 80, "/sys", 2, ro=True),
            mount(85, 84, "/sys/fs/cgroup", 5),
            mount(86, 85, "/sys/fs/cgroup/cpu", 12, ro=True, ext_key="/sys/fs/cgroup/cpu"),
            mount(87, 80, "/dev", 5),
            mount(88, 87, "/dev/pts", 6),
            mount(89, 87, "/dev/termination-log", 0, ext_key="/dev/termination-log")]


def images(core_image: Doc | None = None, mounts: list[Doc] | None = None) -> dict[str, bytes]:
    encoded = encode_with_pycriu({
        "core": core_image or core(thread()),
        "mnts": {"magic": "MNTS", "entries": podman_mounts() if mounts is None else mounts}})
    return {CORE: encoded["core"], MOUNTS: encoded["mnts"]}


def harden(spec: Doc) -> None:
    """spec.dump as Podman 4.3 writes it: its capabilities, seccomp filter, masked and
    read-only paths, a read-only cgroup mount."""
    spec["process"]["capabilities"] = {k: list(CAPS) for k in ("bounding", "effective",
                                                               "permitted")}
    spec["linux"].update(seccomp=SECCOMP, maskedPaths=MASKED, readonlyPaths=READONLY,
                         resources={"devices": [{"allow": False, "access": "rwm"}]})
    spec["mounts"].append({"destination": "/sys/fs/cgroup", "type": "cgroup",
                           "source": "cgroup", "options": ["nosuid", "ro"]})


@pytest.fixture
def podman(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Standin:
    # Podman restores only as root; the stand-in does not care.
    monkeypatch.setattr("migrate.pipeline.sandbox_podman.os.geteuid", lambda: 0)
    return Standin(tmp_path / "bin")


@pytest.fixture
def like_podman(make_archive: Callable[..., Path], tmp_path: Path) -> Path:
    """The generated Podman export made as Podman 4.3 makes one: spec.dump as `harden`
    leaves it, config.dump with its cgroup parent, a core image with credentials and a
    seccomp filter, and a mount image."""
    plain = make_archive("plain.tar", engine="libpod")
    spec = edit_json(plain, tmp_path / "spec.tar", "spec.dump", harden)
    config = edit_json(spec, tmp_path / "config.tar", "config.dump",
                       lambda c: c.update(cgroupParent="/libpod_parent"))
    return with_members(config, tmp_path / "checkpoint-podman.tar", images())


def restore(cli: Cli, podman: Standin, archive: Path, tmp_path: Path, *args: str) -> Result:
    return cli("sandbox", archive, "--engine", "podman", "--podman", podman.path,
               *allow_all(tmp_path), *args)


def refused(r: Result, podman: Standin, error: str, hint: str = REFUSED) -> None:
    """Exit 3 with this one error line, and Podman never asked to restore anything."""
    assert (r.code, r.out, r.err) == (3, "", f"error: {error}\n{hint}")
    assert all(call[:2] != ["container", "restore"] for call in podman.calls())


# --- Podman: what is accepted, and how the copy is fenced ------------------------------------


def test_a_checkpoint_as_podman_makes_it_is_restored(cli: Cli, podman: Standin, like_podman: Path,
                                                     tmp_path: Path) -> None:
    r = restore(cli, podman, like_podman, tmp_path, "-o", "json")
    assert r.code == 0, r.err
    assert podman.calls()[-1][:2] == ["container", "restore"]


def test_the_copy_names_no_host_path_podman_would_use(cli: Cli, podman: Standin,
                                                      like_podman: Path, tmp_path: Path) -> None:
    """PID files Podman writes, paths it unmounts on cleanup, this machine's secrets, an
    exit command, an init binary, a volume never bound: none reach Podman. Masked and
    read-only paths recorded nowhere are Podman's (for a later start)."""
    recorded = {"conmonPidFile": "/etc/cron.d/x", "pid_file": "/etc/passwd",
                "mounts": ["/home", "/boot"], "exitCommand": ["/bin/sh", "-c", "id"],
                "secrets": [{"Name": "db-password"}], "secret_env": {"PW": "db-password"},
                "initPath": "/etc/shadow",
                "namedVolumes": [{"volumeName": "disk", "dest": "/nowhere",
                                  "options": ["volume-opt=device=/dev/sda1"]}]}
    archive = edit_json(like_podman, tmp_path / "fields.tar", "config.dump",
                        lambda c: c.update(recorded))
    archive = edit_json(archive, tmp_path / "nomask.tar", "spec.dump",
                        lambda s: [s["linux"].pop(k) for k in ("maskedPaths", "readonlyPaths")])
    r = restore(cli, podman, archive, tmp_path)
    assert r.code == 0, r.err
    files = podman.copy()["files"]
    config, spec = json.loads(files["config.dump"]), json.loads(files["spec.dump"])
    assert set(recorded) - {"namedVolumes"} & set(config) == set()
    assert config["namedVolumes"] == []
    assert (spec["linux"]["maskedPaths"], spec["linux"]["readonlyPaths"]) == (MASKED, READONLY)


# --- Podman: spec.dump and config.dump ------------------------------------------------------


def _mount(**m: Any) -> Callable[[Doc], Any]:
    return lambda s: s["mounts"].append(m)


def _linux(**fields: Any) -> Callable[[Doc], Any]:
    return lambda s: s["linux"].update(fields)


SPEC_CASES: list[tuple[str, Callable[[Doc], Any], str]] = [
    ("bounding set", lambda s: s["process"]["capabilities"]["bounding"].append("CAP_SYS_ADMIN"),
     "the container had capabilities beyond Podman's defaults: CAP_SYS_ADMIN"),
    ("ambient set", lambda s: s["process"]["capabilities"].update(
        ambient=["CAP_SYS_MODULE", "CAP_SYS_PTRACE"]),
     "the container had capabilities beyond Podman's defaults: CAP_SYS_MODULE, CAP_SYS_PTRACE"),
    ("apparmor", lambda s: s["process"].update(apparmorProfile="unconfined"),
     "the container ran without AppArmor confinement (apparmorProfile unconfined)"),
    ("seccomp allows", _linux(seccomp={"defaultAction": "SCMP_ACT_ALLOW"}),
     "the container's seccomp filter allowed every system call it does not name "
     "(defaultAction SCMP_ACT_ALLOW; Podman's denies them)"),
    ("no masks", _linux(maskedPaths=[]),
     "the container left /proc/acpi, /proc/kcore, /proc/keys, /proc/latency_stats, "
     "/proc/timer_list (and 6 more) unmasked (Podman masks them)"),
    ("/proc/sys writable", _linux(readonlyPaths=[p for p in READONLY if p != "/proc/sys"]),
     "the container left /proc/sys writable (Podman mounts them read-only)"),
    ("sysfs rw", lambda s: s["mounts"][3].update(options=["nosuid", "rw"]),
     "the container had /sys (sysfs) mounted read-write"),
    ("cgroup rw", lambda s: s["mounts"][-1].update(options=["rw"]),
     "the container had /sys/fs/cgroup (cgroup) mounted read-write"),
    ("proc sys rw", _mount(destination="/proc/sys", type="proc", source="proc", options=[]),
     "the container had /proc/sys (proc) mounted read-write"),
    ("overlay", _mount(destination="/x", type="overlay", source="overlay",
                       options=["lowerdir=/srv/a:/srv/b", "upperdir=/srv/c"]),
     "the container had a mount of type overlay at /x whose options name host paths "
     "(lowerdir=/srv/a:/srv/b)"),
    ("host disk", _mount(destination="/disk", type="ext4", source="/dev/sda1", options=[]),
     "the container had a mount of type ext4 at /disk; a sandbox mounts only what Podman "
     "makes (cgroup, cgroup2, devpts, mqueue, proc, ramfs, sysfs, tmpfs) and binds"),
    ("hooks", lambda s: s.update(hooks={"prestart": [{"path": "/bin/sh"}]}),
     "the container had OCI hooks (prestart), which runc would run on this machine, as root"),
    ("hooks spelled otherwise", lambda s: s.update(HOOKS={"createRuntime": [{"path": "/x"}]}),
     "the container had OCI hooks (createRuntime), which runc would run on this machine, "
     "as root"),
    ("device rule", lambda s: s["linux"]["resources"]["devices"].append(
        {"allow": True, "access": "rwm"}),
     "the container's device cgroup allowed a *:* rwm (Podman allows none but its own)"),
    ("cgroup namespace", lambda s: s["linux"]["namespaces"].append(
        {"type": "cgroup", "path": "/proc/1/ns/cgroup"}),
     "the container joined the CGROUP namespace /proc/1/ns/cgroup"),
]


@pytest.mark.parametrize("change, message", [c[1:] for c in SPEC_CASES],
                         ids=[c[0] for c in SPEC_CASES])
def test_spec_dump_reaching_the_host_is_refused(cli: Cli, podman: Standin, like_podman: Path,
                                               tmp_path: Path, change: Callable[[Doc], Any],
                                               message: str) -> None:
    archive = edit_json(like_podman, tmp_path / "edited.tar", "spec.dump", change)
    refused(restore(cli, podman, archive, tmp_path), podman, f"{archive}: {message}")


CONFIG_CASES: list[tuple[str, Doc, str]] = [
    ("network of another container", {"netNsCtr": "abc123"},
     "the container joined the NET namespace of container abc123"),
    ("long s", {"ipcN\u017fCtr": "abc123"},  # Go folds U+017F to s
     "the container joined the IPC namespace of container abc123"),
    ("dependencies", {"Dependencies": ["abc123"]},
     "the container depended on other containers: abc123"),
    ("cgroup parent", {"cgroupParent": "/kubepods/besteffort"},
     "the container's cgroup parent was /kubepods/besteffort, not Podman's own "
     "(/libpod_parent, or machine.slice with systemd)"),
    ("host root", {"rootfs": "/"}, "the container's root file system was the host directory /"),
    ("every device", {"mountAllDevices": True},
     "the container was given every device of the host (mountAllDevices)"),
    ("spelled otherwise", {"Privileged": True}, "the container was privileged"),
]


@pytest.mark.parametrize("fields, message", [c[1:] for c in CONFIG_CASES],
                         ids=[c[0] for c in CONFIG_CASES])
def test_config_dump_reaching_the_host_is_refused(cli: Cli, podman: Standin, like_podman: Path,
                                                 tmp_path: Path, fields: Doc,
                                                 message: str) -> None:
    archive = edit_json(like_podman, tmp_path / "edited.tar", "config.dump",
                        lambda c: c.update(fields))
    refused(restore(cli, podman, archive, tmp_path), podman, f"{archive}: {message}")


def test_a_field_spelled_twice_is_refused(cli: Cli, podman: Standin, like_podman: Path,
                                          tmp_path: Path) -> None:
    """Go takes the last of two spellings: the check must not read the other one."""
    archive = edit_json(like_podman, tmp_path / "edited.tar", "config.dump",
                        lambda c: c.update(privileged=False, PRIVILEGED=True))
    refused(restore(cli, podman, archive, tmp_path), podman,
            f"{archive}: config.dump: the field privileged is spelled twice ('privileged' and "
            "'PRIVILEGED')",
            "hint: Podman reads field names regardless of case, so one of them would be "
            "ignored here and used there; this checkpoint may be crafted; nothing was "
            "restored\n")


def test_the_reviewers_escape_is_refused(cli: Cli, podman: Standin, like_podman: Path,
                                         tmp_path: Path) -> None:
    """Everything at once (tmp/review5/t5_podman.py): extra capabilities, AppArmor
    unconfined, no seccomp, no masks, sysfs and cgroup writable."""
    def escape(s: Doc) -> None:
        caps = ["CAP_SYS_ADMIN", "CAP_SYS_PTRACE", "CAP_SYS_MODULE", "CAP_NET_ADMIN"]
        s["process"]["capabilities"] = {k: caps for k in ("bounding", "effective",
                                                          "permitted", "inheritable",
                                                          "ambient")}
        s["process"]["apparmorProfile"] = "unconfined"
        s["linux"].pop("seccomp")
        s["linux"].update(maskedPaths=[], readonlyPaths=[])
        for m in s["mounts"]:
            if m["type"] in ("sysfs", "cgroup"):
                m["options"] = ["rw"]
    archive = edit_json(like_podman, tmp_path / "t5.tar", "spec.dump", escape)
    refused(restore(cli, podman, archive, tmp_path), podman,
            f"{archive}: the container had capabilities beyond Podman's defaults: "
            "CAP_NET_ADMIN, CAP_SYS_ADMIN, CAP_SYS_MODULE, CAP_SYS_PTRACE")


# --- Podman: the CRIU images the processes are restored from ---------------------------------


IMAGE_CASES: list[tuple[str, dict[str, bytes] | Callable[[], dict[str, bytes]], str, str]] = [
    ("capabilities", lambda: images(core(thread(creds=creds(CAP_BITS | SYS_ADMIN)))), CORE,
     "a task had capabilities beyond Podman's defaults, which CRIU restores as recorded: "
     "CAP_SYS_ADMIN"),
    ("ambient", lambda: {**images(), "checkpoint/creds-1.img": ambient(SYS_ADMIN)},
     "checkpoint/creds-1.img",
     "a task had capabilities beyond Podman's defaults, which CRIU restores as recorded: "
     "CAP_SYS_ADMIN"),
    ("no credentials", lambda: images(core({"seccomp_mode": "filter"})), CORE,
     "a task's credentials are missing: CRIU would leave it with its own, every capability"),
    ("no seccomp", lambda: images(core(thread(seccomp_mode="disabled"))), CORE,
     "a task ran without a seccomp filter, and CRIU restores it so (Podman sets one for "
     "every container it does not run privileged)"),
    ("apparmor", lambda: images(core(thread(creds=creds(lsm_profile="unconfined")))), CORE,
     "a task ran without AppArmor confinement (unconfined), which CRIU restores"),
    ("sysfs rw", lambda: images(mounts=[*podman_mounts()[:4], mount(84, 80, "/sys", 2),
                                        *podman_mounts()[5:]]), MOUNTS,
     "CRIU would mount /sys (sysfs) read-write"),
    ("cgroup rw", lambda: images(mounts=[*podman_mounts()[:6],
                                         mount(86, 85, "/sys/fs/cgroup/cpu", 12),
                                         *podman_mounts()[7:]]), MOUNTS,
     "CRIU would mount /sys/fs/cgroup/cpu (cgroup) read-write"),
    ("/proc/sys writable", lambda: images(mounts=[m for m in podman_mounts()
                                                  if m["mountpoint"] != "/proc/sys"]), MOUNTS,
     "CRIU would leave /proc/sys writable (Podman mounts it read-only)"),
    ("another proc", lambda: images(mounts=[*podman_mounts(), mount(90, 80, "/mnt", 1)]),
     MOUNTS, "CRIU would mount /mnt (proc) read-write"),
    ("host devices", lambda: images(mounts=[*podman_mounts(), mount(90, 80, "/mnt", 3)]),
     MOUNTS, "CRIU would mount a devtmpfs file system at /mnt; a sandbox mounts only proc, "
     "sysfs, tmpfs, devpts, mqueue and cgroup besides binds"),
    ("host disk", lambda: images(mounts=[*podman_mounts(), mount(
        90, 80, "/mnt", 16, fsname="ext4", source="/dev/sda1")]),
     MOUNTS, "CRIU would mount a ext4 file system at /mnt; a sandbox mounts only proc, "
     "sysfs, tmpfs, devpts, mqueue and cgroup besides binds"),
    ("autodetected", lambda: images(mounts=[*podman_mounts(), mount(
        90, 80, "/mnt", 0, ext_key="CRIU:AUTOGENERATED")]),
     MOUNTS, "CRIU would mount /mnt from what it finds on this machine (CRIU:AUTOGENERATED)"),
    ("old credentials image", lambda: {**images(), **encode_with_pycriu(
        {"checkpoint/creds-1.img": {"magic": "CREDS", "entries": [creds(0xFFFFFFFF)]}})},
     "checkpoint/creds-1.img",
     "a task had capabilities beyond Podman's defaults, which CRIU restores as recorded: "
     "CAP_DAC_READ_SEARCH, CAP_LINUX_IMMUTABLE, CAP_NET_BROADCAST, CAP_NET_ADMIN, "
     "CAP_IPC_LOCK (and 13 more)"),
]


@pytest.mark.parametrize("members, member, message", [c[1:] for c in IMAGE_CASES],
                         ids=[c[0] for c in IMAGE_CASES])
def test_criu_images_reaching_the_host_are_refused(
        cli: Cli, podman: Standin, like_podman: Path, tmp_path: Path,
        members: Callable[[], dict[str, bytes]], member: str, message: str) -> None:
    """spec.dump as Podman writes it; the images as CRIU would restore them."""
    archive = with_members(like_podman, tmp_path / "edited.tar", members())
    refused(restore(cli, podman, archive, tmp_path), podman, f"{archive}: {member}: {message}")


def test_spec_dump_without_the_seccomp_filter_the_processes_had(
        cli: Cli, podman: Standin, like_podman: Path, tmp_path: Path) -> None:
    archive = edit_json(like_podman, tmp_path / "edited.tar", "spec.dump",
                        lambda s: s["linux"].pop("seccomp"))
    refused(restore(cli, podman, archive, tmp_path), podman,
            f"{archive}: spec.dump has no seccomp filter, yet the container's processes ran "
            "under one")


def test_a_garbled_core_image_is_refused(cli: Cli, podman: Standin, like_podman: Path,
                                         tmp_path: Path) -> None:
    garbled = images()[CORE] + b"\xff\xff\xff\x7f"
    archive = with_members(like_podman, tmp_path / "edited.tar", {CORE: garbled})
    refused(restore(cli, podman, archive, tmp_path), podman,
            f"{archive}: {CORE}: is not a readable CRIU core image (entry 1 declares "
            "2147483647 bytes but only 0 remain)",
            "hint: the CRIU image is corrupt or truncated\n")


# --- crictl: the base image, mount paths, a failed write ------------------------------------


def _crictl(cli: Cli, archive: Path, out: Path, *args: str) -> Result:
    return cli("sandbox", archive, "--out", out, *args)


@pytest.mark.parametrize("fields, message", [
    ({"rootfsImageRef": "nothex", "rootfsImage": "--all"},
     "config.dump's rootfsImage '--all' is not an image ID (64 hex digits, sha256: before "
     "them or not)"),
    ({"rootfsImageRef": "-all"},
     "config.dump's rootfsImageRef '-all' is neither an image ID nor an image reference"),
    ({"rootfsImageRef": "", "rootfsImage": "x; rm -rf /"},
     "config.dump's rootfsImage 'x; rm -rf /' is not an image ID (64 hex digits, sha256: "
     "before them or not)"),
])
def test_an_image_id_that_is_no_id_is_refused(cli: Cli, counters_archive: Path,
                                              tmp_path: Path, fields: Doc, message: str) -> None:
    """It went into `crictl inspecti ID` (the printed line, and --run's call)."""
    archive = edit_json(counters_archive, tmp_path / "edited.tar", "config.dump",
                        lambda c: c.update(fields))
    r = _crictl(cli, archive, tmp_path / "box")
    assert (r.code, r.out, r.err) == (3, "", f"error: {archive}: {message}\n{CRAFTED}")
    assert not (tmp_path / "box").exists()


def test_an_image_id_with_its_algorithm_is_taken(cli: Cli, counters_archive: Path,
                                                 tmp_path: Path) -> None:
    image = "sha256:" + "d0" * 32
    archive = edit_json(counters_archive, tmp_path / "edited.tar", "config.dump",
                        lambda c: c.update(rootfsImageRef="", rootfsImage=image))
    r = _crictl(cli, archive, tmp_path / "box", "-o", "json")
    assert r.code == 0, r.err
    assert r.json()["base_image"]["id"] == image


def test_a_mount_path_linux_cannot_hold_is_refused(cli: Cli, counters_archive: Path,
                                                   tmp_path: Path) -> None:
    """A 400-character name: OSError (exit 1) and a half-written DIR the next run refused."""
    dest = "/" + "a" * 400
    archive = edit_json(counters_archive, tmp_path / "edited.tar", "spec.dump",
                        lambda s: s["mounts"].append({"destination": dest, "type": "bind",
                                                      "source": "/srv", "options": ["bind"]}))
    r = _crictl(cli, archive, tmp_path / "box")
    assert (r.code, r.out, r.err) == (3, "", (
        f"error: {archive}: spec.dump records a mount at /{'a' * 79}..., a path longer than "
        f"Linux allows (255 bytes a name, 4095 in all)\n{CRAFTED}"))
    assert not (tmp_path / "box").exists()
    assert _crictl(cli, counters_archive, tmp_path / "box").code == 0


def test_a_long_mount_path_gets_a_short_host_name(cli: Cli, counters_archive: Path,
                                                  tmp_path: Path) -> None:
    dest = f"/{'a' * 200}/{'b' * 200}"
    archive = edit_json(counters_archive, tmp_path / "edited.tar", "spec.dump",
                        lambda s: s["mounts"].append({"destination": dest, "type": "bind",
                                                      "source": "/srv", "options": ["bind"]}))
    r = _crictl(cli, archive, tmp_path / "box", "-o", "json")
    assert r.code == 0, r.err
    (host,) = [m["host_path"] for m in r.json()["mounts"] if m["container_path"] == dest]
    assert Path(host).is_dir() and len(Path(host).name) <= 72


@pytest.mark.parametrize("existed", [False, True])
def test_a_failed_write_removes_what_it_wrote(cli: Cli, counters_archive: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch,
                                              existed: bool) -> None:
    """The file system fills at the last file: the run's files and directories go, a DIR
    the user made (empty) stays."""
    real = crictl_sandbox._private_file

    def full(path: Path, data: str = "") -> None:
        if path.name == crictl_sandbox.CONTAINER_CONFIG:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real(path, data)

    monkeypatch.setattr(crictl_sandbox, "_private_file", full)
    out = tmp_path / "new" / "box"
    if existed:
        out.mkdir(parents=True)
    r = _crictl(cli, counters_archive, out)
    assert (r.code, r.out) == (2, ""), r.err
    assert r.err == (f"error: cannot write the sandbox in {out}: No space left on device\n"
                     "hint: check that the directory is writable and the file system has "
                     "room; what this run wrote there was removed\n")
    if existed:
        assert list(out.iterdir()) == []
    else:
        assert not (tmp_path / "new").exists()


# --- names from the archive on the terminal --------------------------------------------------


def test_crictl_sandbox_output_escapes_the_container_name(cli: Cli,
                                                          make_archive: Callable[..., Path],
                                                          tmp_path: Path) -> None:
    archive = make_archive("evil.tar", container=EVIL)
    r = _crictl(cli, archive, tmp_path / "box")
    assert r.code == 0, r.err
    lines = r.out.splitlines()
    assert "sandbox forensic-counters (namespace migrate-sandbox, uid " in lines[2]
    assert lines[2].endswith(f"): container {SHOWN}, network none")
    assert not any(line.startswith("error:") for line in lines)
    no_raw_controls(r.out, r.err)


def test_podman_sandbox_output_escapes_the_container_name(cli: Cli, podman: Standin,
                                                          make_archive: Callable[..., Path],
                                                          tmp_path: Path) -> None:
    archive = make_archive("evil.tar", engine="libpod", container=EVIL)
    r = restore(cli, podman, archive, tmp_path)
    assert r.code == 0, r.err
    lines = r.out.splitlines()
    assert lines[2] == f"container {SHOWN}, network none"
    assert not any(line.startswith("error:") for line in lines)
    no_raw_controls(r.out, r.err)


def test_list_names_are_one_line_each(cli: Cli, counters_archive: Path, tmp_path: Path) -> None:
    shutil.copy(counters_archive, tmp_path / "checkpoint-x\nerror: none\x1b[2J.tar")
    r = cli("list", tmp_path, "-o", "name")
    assert (r.code, r.err) == (0, "")
    assert r.out == f"{tmp_path}/checkpoint-x\\nerror: none\\x1b[2J.tar\n"
    no_raw_controls(r.out)
