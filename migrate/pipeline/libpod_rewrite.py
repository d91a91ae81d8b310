"""What a forensic restore changes in a Podman checkpoint's config.dump and spec.dump.

Podman 4.3 restores a container exactly as these two members describe it
(pkg/checkpoint/checkpoint_restore.go reads them; libpod's RestoreContainer
takes them as they are): its networks and published ports, its bind mounts
with their host paths, its labels, restart policy and health check. It has no
option to change any of that but the name. So the sandbox rewrites them:

- network: none, or one Podman network the user names; never the recorded
  ones, never a published port, never the recorded IP or MAC;
- mounts: Podman recreates its own (`PODMAN_OWN`); every other bind mount
  (a host path, a named volume, a secret) is refused unless the user names
  the host path to bind there (`--allow-mount DEST=HOSTPATH`);
- refused outright (`refuse_unsafe`): privileged containers, host devices
  (and device rules that allow any), every device of the host, a host
  directory as root file system, host (or joined) PID, IPC, UTS, mount, user
  or cgroup namespaces, namespaces of other containers (``*NsCtr``,
  ``Dependencies``), an unusual cgroup parent, pods, overlay and image
  volumes, CDI devices, OCI hooks (runc runs them on this machine, as root,
  when it restores), capabilities beyond Podman's defaults, AppArmor
  ``unconfined``, a seccomp filter that allows what it does not name, fewer
  masked or read-only paths than Podman's, sysfs, cgroup and /proc/sys
  mounted read-write, and mounts of other kinds than Podman makes (or whose
  options name host paths, as an overlay's lowerdir does);
- labels say it is a forensic restore; no restart policy, no health check
  (it would run commands in the restored container); ``--rm`` through
  Podman's autoremove annotation; none of the recorded host paths Podman
  would write to or unmount (PID files, ``mounts``), no secrets of this
  machine's Podman, no exit command, no init binary path; Podman's masked
  and read-only paths where spec.dump lists none.

spec.dump is not what the restored processes get, though. CRIU restores them
from the dump's images: the capabilities stored in each task's
``core-<tid>.img`` (CRIU only drops from its own full set what the image's
bounding set lacks, then sets the permitted, effective and inheritable sets
as recorded; so the bounding set the image records is what limits them),
their seccomp mode, and the proc, sysfs and cgroup mounts it makes itself
with the flags of ``mountpoints-<id>.img``. So the images are checked too
(`refuse_unsafe_images`): capabilities (all five sets) within Podman's
defaults, a seccomp filter, no AppArmor ``unconfined``; only proc, sysfs,
tmpfs, devpts, mqueue and cgroup mounts besides those bound from outside;
sysfs and cgroup read-only, every proc mount but /proc read-only, and
/proc/sys covered. spec.dump's own settings still count: runc applies its
hooks and device rules on the restore, and `podman exec` and a later
`podman start` take its capabilities, AppArmor profile, seccomp filter,
masked paths and mounts.

Podman reads both members with Go's encoding/json, which matches field names
regardless of case and takes the last of two spellings: `canonical` spells
the fields checked here as Podman does and refuses two spellings of one.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from migrate.adapters.criu.images import ImageError, decode_entries
from migrate.adapters.criu.wire import Field, Schema
from migrate.errors import ArchiveError, InputError, UsageError
from migrate.validation import validate

#: Mounts Podman drops from a restored spec and makes anew (libpod/runtime_ctr.go,
#: setupContainer, `if ctr.restoreFromCheckpoint`: g.RemoveMount of each).
PODMAN_OWN = frozenset({"/dev/shm", "/etc/resolv.conf", "/etc/hostname", "/etc/hosts",
                        "/run/.containerenv", "/run/secrets"})
AUTOREMOVE = "io.podman.annotations.autoremove"
LABEL = "migrate.dev/forensic-restore"
SANDBOX_LABEL = "migrate.dev/sandbox"
_OWN_NAMESPACES = ("pid", "ipc", "uts", "mount")
_NETWORK_KEYS = ("newNetworks", "networks", "newPortMappings", "portMappings", "exposedPorts",
                 "staticIP", "staticMAC", "network_options")
_REFUSED = "a sandbox restores only what cannot reach the host; nothing was restored"
_SPELLED_TWICE = ("Podman reads field names regardless of case, so one of them would be "
                  "ignored here and used there; this checkpoint may be crafted; nothing was "
                  "restored")

#: The capabilities Podman gives a container by default, as Debian 12's Podman 4.3
#: (containers-common 0.50) does when containers.conf names none: pkg/config's
#: DefaultCapabilities, what the test world's real checkpoints record. The
#: containers.conf Debian ships (/usr/share/containers/containers.conf) narrows them to
#: 11 (no AUDIT_WRITE, MKNOD, NET_RAW): a subset, so accepted too.
DEFAULT_CAPABILITIES = frozenset({
    "CAP_AUDIT_WRITE", "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
    "CAP_MKNOD", "CAP_NET_BIND_SERVICE", "CAP_NET_RAW", "CAP_SETFCAP", "CAP_SETGID",
    "CAP_SETPCAP", "CAP_SETUID", "CAP_SYS_CHROOT"})
#: Capability numbers (linux/capability.h): CRIU's images store the sets as bit words.
_CAP_NAMES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
    "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW",
    "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
    "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ",
    "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE")
_DEFAULT_CAP_BITS = sum(1 << _CAP_NAMES.index(c) for c in DEFAULT_CAPABILITIES)
_CAP_SETS = ("bounding", "effective", "permitted", "inheritable", "ambient")
#: Podman 4.3's masked and read-only paths (its real checkpoints' spec.dump).
PODMAN_MASKED = ("/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                 "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
                 "/sys/firmware", "/sys/fs/selinux", "/sys/dev/block")
PODMAN_READONLY = ("/proc/asound", "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys",
                   "/proc/sysrq-trigger")
#: The mounts Podman makes itself, besides binds (a bind's host path is the user's choice).
_OWN_KINDS = frozenset({"proc", "sysfs", "tmpfs", "devpts", "mqueue", "cgroup", "cgroup2",
                        "ramfs"})
_READ_ONLY_KINDS = ("sysfs", "cgroup", "cgroup2")
#: Where Podman puts a container's cgroup when not told (libpod's CgroupfsDefaultCgroupParent
#: and SystemdDefaultCgroupParent); another parent would put it beside other workloads.
_USUAL_CGROUP_PARENTS = frozenset({"", "/libpod_parent", "machine.slice"})
#: An option whose value names a path (an overlay's ``lowerdir=/a:/b``, ``upperdir=/c``).
_HOST_PATH_OPTION = re.compile(r"^[^=]*=(?:.*[:,])?/")

# The fields of config.dump and spec.dump read or written here, as Podman spells them
# (libpod/container_config.go, runtime-spec's config.go).
_CONFIG_FIELDS = (
    "id", "name", "privileged", "pod", "overlayVolumes", "ctrImageVolumes", "namedVolumes",
    "labels", "restart_policy", "restart_retries", "healthcheck", "startupHealthCheck",
    "createNetNS", "networkMode", *_NETWORK_KEYS, "ipcNsCtr", "mountNsCtr", "netNsCtr",
    "pidNsCtr", "userNsCtr", "utsNsCtr", "cgroupNsCtr", "Dependencies", "cgroupParent",
    "rootfs", "mountAllDevices", "cdiDevices", "mounts", "conmonPidFile", "pid_file",
    "exitCommand", "secrets", "secret_env", "initPath")
_SPEC_FIELDS = ("ociVersion", "process", "root", "hostname", "mounts", "hooks", "annotations",
                "linux")
_PROCESS_FIELDS = ("capabilities", "apparmorProfile", "selinuxLabel", "noNewPrivileges",
                   "user", "args", "env", "cwd")
_LINUX_FIELDS = ("namespaces", "devices", "resources", "seccomp", "maskedPaths",
                 "readonlyPaths", "cgroupsPath", "uidMappings", "gidMappings", "sysctl")
# What the sandbox takes away from config.dump: host paths Podman would write to
# (conmon's and the container's PID files) or unmount on cleanup (``mounts``, made anew
# for the new /dev/shm), this machine's secrets the container would be given, the
# command conmon runs on exit and the init binary's host path.
_DROPPED = ("mounts", "conmonPidFile", "pid_file", "exitCommand", "secrets", "secret_env",
            "initPath", "startupHealthCheck")


@dataclass(frozen=True)
class RecordedMount:
    """A bind mount of the checkpointed container that Podman would bind again as recorded."""

    destination: str
    source: str
    """The host path the archive records (for a named volume, the volume's directory)."""
    volume: str | None
    """The named volume's name, when it was one."""
    readonly: bool

    def describe(self) -> str:
        """``/data (from /srv/data)`` or ``/cache (volume cache)``."""
        where = f"volume {self.volume}" if self.volume else f"from {self.source}"
        return f"{self.destination} ({where})"


@dataclass(frozen=True)
class SandboxMount:
    """A recorded mount and the host path the user chose for it."""

    recorded: RecordedMount
    host_path: Path

    def to_dict(self) -> dict[str, Any]:
        """JSON form (an item of sandbox-podman.schema.json's ``mounts``)."""
        r = self.recorded
        return {"container_path": r.destination, "host_path": str(self.host_path),
                "readonly": r.readonly, "recorded_source": r.source, "volume": r.volume}


def _is_bind(m: dict[str, Any]) -> bool:
    return m.get("type") == "bind" or bool({"bind", "rbind"} & set(m.get("options") or []))


def recorded_mounts(config: dict[str, Any], spec: dict[str, Any]) -> list[RecordedMount]:
    """Every bind mount Podman would restore from the host, in spec order."""
    volumes = {v.get("dest"): v.get("volumeName") for v in config.get("namedVolumes") or []
               if isinstance(v, dict)}
    out: dict[str, RecordedMount] = {}
    for m in spec.get("mounts") or []:
        dest = m["destination"]
        if dest in PODMAN_OWN or not _is_bind(m):
            continue
        out[dest] = RecordedMount(dest, str(m.get("source", "")), volumes.get(dest),
                                  "ro" in (m.get("options") or []))
    return list(out.values())


def _dict(value: Any) -> dict[str, Any]:
    # Podman fails to decode a member whose field has the wrong type: nothing is restored,
    # so such a field is read here as absent.
    return value if isinstance(value, dict) else {}


def _items(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _strings(value: Any) -> list[str]:
    return [v for v in _items(value) if isinstance(v, str)]


def _some(names: list[str], shown: int = 5) -> str:
    """The first few of ``names``: a crafted list may hold thousands."""
    more = len(names) - shown
    return ", ".join(names[:shown]) + (f" (and {more} more)" if more > 0 else "")


def _value(value: Any) -> str:
    return (value if isinstance(value, str) else repr(value))[:200]


def _fold(label: str, member: str, where: str, obj: Any, names: tuple[str, ...]) -> Any:
    """``obj`` (a new dict) with each key that Go's encoding/json takes for one of ``names``
    spelled as there; two keys for one field are refused.

    Go matches a JSON key to a struct field regardless of case (Unicode simple folding:
    the long s, U+017F, is ``s``, the Kelvin sign ``k``) and the last of several wins, so
    ``{"privileged": false, "Privileged": true}`` is a privileged container to Podman.
    """
    if not isinstance(obj, dict):
        return obj
    canon = {n.casefold(): n for n in names}
    out: dict[str, Any] = {}
    spelled: dict[str, str] = {}
    for key, value in obj.items():
        folded = key.casefold()
        if folded in spelled:
            raise InputError(f"{label}: {member}: {where}the field {canon.get(folded) or key} is "
                             f"spelled twice ({spelled[folded]!r} and {key!r})",
                             hint=_SPELLED_TWICE)
        spelled[folded] = key
        out[canon.get(folded) or key] = value
    return out


def _fold_items(label: str, member: str, where: str, value: Any,
                names: tuple[str, ...]) -> Any:
    if not isinstance(value, list):
        return value
    return [_fold(label, member, where, item, names) for item in value]


def canonical(label: str, config: dict[str, Any],
              spec: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """config.dump and spec.dump (new dicts) with the fields this module reads and writes
    spelled as Podman spells them, so that Podman reads what was checked (see the module)."""
    config = _fold(label, "config.dump", "", config, _CONFIG_FIELDS)
    if "namedVolumes" in config:
        config["namedVolumes"] = _fold_items(label, "config.dump", "namedVolumes: ",
                                             config["namedVolumes"], ("volumeName", "dest"))
    spec = _fold(label, "spec.dump", "", spec, _SPEC_FIELDS)
    if isinstance(spec.get("process"), dict):
        process = _fold(label, "spec.dump", "process: ", spec["process"], _PROCESS_FIELDS)
        if "capabilities" in process:
            process["capabilities"] = _fold(label, "spec.dump", "process.capabilities: ",
                                            process["capabilities"], _CAP_SETS)
        spec["process"] = process
    if isinstance(spec.get("linux"), dict):
        linux = _fold(label, "spec.dump", "linux: ", spec["linux"], _LINUX_FIELDS)
        for key, names in (("namespaces", ("type", "path")),
                           ("devices", ("path", "type", "major", "minor"))):
            if key in linux:
                linux[key] = _fold_items(label, "spec.dump", f"linux.{key}: ", linux[key], names)
        if "seccomp" in linux:
            linux["seccomp"] = _fold(label, "spec.dump", "linux.seccomp: ", linux["seccomp"],
                                     ("defaultAction", "architectures", "flags", "syscalls"))
        if isinstance(linux.get("resources"), dict):
            resources = _fold(label, "spec.dump", "linux.resources: ", linux["resources"],
                              ("devices",))
            if "devices" in resources:
                resources["devices"] = _fold_items(
                    label, "spec.dump", "linux.resources.devices: ", resources["devices"],
                    ("allow", "type", "major", "minor", "access"))
            linux["resources"] = resources
        spec["linux"] = linux
    if "mounts" in spec:
        spec["mounts"] = _fold_items(label, "spec.dump", "mounts: ", spec["mounts"],
                                     ("destination", "type", "source", "options"))
    if "hooks" in spec:
        spec["hooks"] = _fold(label, "spec.dump", "hooks: ", spec["hooks"],
                              ("prestart", "createRuntime", "createContainer",
                               "startContainer", "poststart", "poststop"))
    # A field spelled otherwise escaped the schema's check of the member as read.
    validate(config, "config-dump.schema.json", f"{label}: config.dump")
    validate(spec, "spec-dump.schema.json", f"{label}: spec.dump")
    return config, spec


def refuse_unsafe(label: str, config: dict[str, Any], spec: dict[str, Any]) -> None:
    """Refuse what a sandbox cannot restore without reaching the host (exit 3)."""
    def refuse(what: str) -> InputError:
        return InputError(f"{label}: {what}", hint=_REFUSED)

    if config.get("privileged"):
        raise refuse("the container was privileged")
    if config.get("mountAllDevices"):
        raise refuse("the container was given every device of the host (mountAllDevices)")
    linux = _dict(spec.get("linux"))
    devices = [_value(d.get("path", "?")) for d in _items(linux.get("devices"))
               if isinstance(d, dict)]
    if devices:
        raise refuse(f"the container had host devices: {_some(devices)}")
    allowed = [d for d in _items(_dict(linux.get("resources")).get("devices"))
               if isinstance(d, dict) and d.get("allow")]
    if allowed:
        rule = allowed[0]
        raise refuse(f"the container's device cgroup allowed {_value(rule.get('type', 'a'))} "
                     f"{_value(rule.get('major', '*'))}:{_value(rule.get('minor', '*'))} "
                     f"{_value(rule.get('access', 'rwm'))} (Podman allows none but its own)")
    namespaces = {n["type"]: n for n in _items(linux.get("namespaces"))
                  if isinstance(n, dict) and isinstance(n.get("type"), str)}
    for kind in _OWN_NAMESPACES:
        ns = namespaces.get(kind)
        if ns is None:
            raise refuse(f"the container shared the host's {kind.upper()} namespace")
        if ns.get("path"):
            raise refuse(f"the container joined the {kind.upper()} namespace {ns['path']}")
    if namespaces.get("user", {}).get("path"):
        raise refuse(f"the container joined the user namespace {namespaces['user']['path']}")
    for kind, ns in namespaces.items():
        # The network namespace is the sandbox's own (`rewrite`).
        if kind not in ("network", "user", *_OWN_NAMESPACES) and ns.get("path"):
            raise refuse(f"the container joined the {kind.upper()} namespace "
                         f"{_value(ns['path'])}")
    for key, value in config.items():
        if key.casefold().endswith("nsctr") and value:
            raise refuse(f"the container joined the {key[:-5].upper()} namespace of container "
                         f"{_value(value)}")
    if config.get("Dependencies"):
        raise refuse("the container depended on other containers: "
                     f"{_some([_value(v) for v in _items(config['Dependencies'])])}")
    if config.get("pod"):
        raise refuse(f"the container was in Podman pod {config['pod']}")
    for key, what in (("overlayVolumes", "overlay volumes"), ("ctrImageVolumes", "image volumes")):
        if config.get(key):
            raise refuse(f"the container had {what}, which Podman restores from the host")
    if config.get("rootfs"):
        raise refuse("the container's root file system was the host directory "
                     f"{_value(config['rootfs'])}")
    if config.get("cdiDevices"):
        raise refuse(f"the container had CDI devices: {_some(_strings(config['cdiDevices']))}")
    parent = config.get("cgroupParent") or ""
    if parent not in _USUAL_CGROUP_PARENTS:
        raise refuse(f"the container's cgroup parent was {_value(parent)}, not Podman's own "
                     "(/libpod_parent, or machine.slice with systemd)")
    _refuse_hooks(spec, refuse)
    _refuse_privileges(spec, linux, refuse)
    _refuse_mounts(spec, refuse)


def _refuse_hooks(spec: dict[str, Any], refuse: Callable[[str], InputError]) -> None:
    hooks = spec.get("hooks")
    kinds = sorted(k for k, v in hooks.items() if v) if isinstance(hooks, dict) else []
    if kinds or (hooks and not isinstance(hooks, dict)):
        # runc runs prestart and createRuntime hooks when it restores (seen with Podman 4.3
        # and runc: a hook of an edited spec.dump ran), the others at a later start.
        raise refuse(f"the container had OCI hooks ({_some(kinds) or _value(hooks)}), which "
                     "runc would run on this machine, as root")


def _capability_name(name: str) -> str:
    upper = name.upper()
    return upper if upper.startswith("CAP_") else f"CAP_{upper}"


def _refuse_privileges(spec: dict[str, Any], linux: dict[str, Any],
                       refuse: Callable[[str], InputError]) -> None:
    """What `podman exec` (and a later start) would give a process beyond Podman's defaults."""
    process = _dict(spec.get("process"))
    caps = _dict(process.get("capabilities"))
    extra = sorted({_capability_name(c) for key in _CAP_SETS for c in _strings(caps.get(key))}
                   - DEFAULT_CAPABILITIES)
    if extra:
        raise refuse(f"the container had capabilities beyond Podman's defaults: {_some(extra)}")
    if process.get("apparmorProfile") == "unconfined":
        raise refuse("the container ran without AppArmor confinement (apparmorProfile "
                     "unconfined)")
    seccomp = linux.get("seccomp")
    if isinstance(seccomp, dict) and seccomp.get("defaultAction") in ("SCMP_ACT_ALLOW",
                                                                       "SCMP_ACT_LOG"):
        raise refuse("the container's seccomp filter allowed every system call it does not "
                     f"name (defaultAction {seccomp['defaultAction']}; Podman's denies them)")
    # A list that is absent gets Podman's in `rewrite`; one that leaves some out was made so
    # (--security-opt unmask) or edited.
    for key, defaults, what in (
            ("maskedPaths", PODMAN_MASKED, "unmasked (Podman masks them)"),
            ("readonlyPaths", PODMAN_READONLY, "writable (Podman mounts them read-only)")):
        if linux.get(key) is None:
            continue
        missing = [p for p in defaults if p not in _strings(linux.get(key))]
        if missing:
            raise refuse(f"the container left {_some(missing)} {what}")


def _refuse_mounts(spec: dict[str, Any], refuse: Callable[[str], InputError]) -> None:
    for m in _items(spec.get("mounts")):
        if not isinstance(m, dict) or m.get("destination") in PODMAN_OWN or _is_bind(m):
            continue
        dest, kind = m.get("destination"), str(m.get("type") or "typeless")
        options = _strings(m.get("options"))
        named = [o for o in options if _HOST_PATH_OPTION.match(o)]
        if named:
            raise refuse(f"the container had a mount of type {kind} at {dest} whose options "
                         f"name host paths ({_value(named[0])})")
        if kind not in _OWN_KINDS:
            raise refuse(f"the container had a mount of type {kind} at {dest}; a sandbox "
                         f"mounts only what Podman makes ({', '.join(sorted(_OWN_KINDS))}) "
                         "and binds")
        if ("ro" not in options and "rro" not in options
                and (kind in _READ_ONLY_KINDS or (kind == "proc" and dest != "/proc"))):
            raise refuse(f"the container had {dest} ({kind}) mounted read-write")


# --- the CRIU images --------------------------------------------------------------------

#: The images checked: what CRIU restores each task's credentials and seccomp mode from
#: (creds-<pid>.img is the format before 2015, still read when a core lacks them), and the
#: mounts it makes.
CRIU_IMAGE = re.compile(r"^checkpoint/(core|creds|mountpoints)-[0-9]+\.img$")
_MAX_IMAGE = 16 * 1024 * 1024
_MAGIC_NAMES = {"core": "CORE", "creds": "CREDS", "mountpoints": "MNTS"}  # images.MAGICS
_CREDS: Schema = {
    9: Field("cap_inh", "uint", repeated=True), 10: Field("cap_prm", "uint", repeated=True),
    11: Field("cap_eff", "uint", repeated=True), 12: Field("cap_bnd", "uint", repeated=True),
    15: Field("lsm_profile", "string"), 19: Field("cap_amb", "uint", repeated=True)}
_THREAD_CORE: Schema = {10: Field("creds", "message", message=_CREDS),
                        11: Field("seccomp_mode", "uint")}
_SCHEMAS: dict[str, Schema] = {
    "core": {5: Field("thread_core", "message", message=_THREAD_CORE)},
    "creds": _CREDS,
    "mountpoints": {1: Field("fstype", "uint"), 2: Field("mnt_id", "uint"),
                    4: Field("parent_mnt_id", "uint"), 5: Field("flags", "uint"),
                    6: Field("root", "string"), 7: Field("mountpoint", "string"),
                    13: Field("ext_mount", "bool"), 14: Field("fsname", "string"),
                    17: Field("sb_flags", "uint"), 18: Field("ext_key", "string")}}
# images/mnt.proto's fstype; CRIU mounts these anew (the rest it binds from outside).
_PROC, _SYSFS, _CGROUP, _CGROUP2 = 1, 2, 12, 23
_FSTYPES = {0: "unsupported", 1: "proc", 2: "sysfs", 3: "devtmpfs", 4: "binfmt_misc",
            5: "tmpfs", 6: "devpts", 7: "simfs", 8: "pstore", 9: "securityfs", 10: "fusectl",
            11: "debugfs", 12: "cgroup", 13: "aufs", 14: "mqueue", 15: "fuse", 16: "auto",
            17: "overlay", 18: "autofs", 19: "tracefs", 23: "cgroup2"}
_NEW_MOUNTS = frozenset({1, 2, 5, 6, 12, 14, 23})
_MS_RDONLY = 1
_SECCOMP_STRICT, _SECCOMP_FILTER = 1, 2


def _beyond_defaults(creds: dict[str, Any]) -> list[str]:
    """The capabilities of any of the five sets that Podman does not give."""
    found: set[int] = set()
    for key in ("cap_bnd", "cap_prm", "cap_eff", "cap_inh", "cap_amb"):
        words = creds.get(key) or []
        if len(words) > 8:  # CRIU writes 2 (64 capabilities)
            return [f"{len(words)} words of {key}"]
        for i, word in enumerate(words):
            extra = (word & 0xFFFFFFFF) & ~(_DEFAULT_CAP_BITS >> (32 * i))
            found.update(32 * i + b for b in range(32) if extra >> b & 1)
    return [_CAP_NAMES[n] if n < len(_CAP_NAMES) else f"capability {n}" for n in sorted(found)]


def _refuse_creds(creds: dict[str, Any], refuse: Callable[[str], InputError]) -> None:
    extra = _beyond_defaults(creds)
    if extra:
        raise refuse("a task had capabilities beyond Podman's defaults, which CRIU restores "
                     f"as recorded: {_some(extra)}")
    if str(creds.get("lsm_profile") or "").split(" ")[0] == "unconfined":
        raise refuse("a task ran without AppArmor confinement (unconfined), which CRIU "
                     "restores")


def _refuse_mountpoints(entries: list[dict[str, Any]],
                        refuse: Callable[[str], InputError]) -> None:
    ids = {e.get("mnt_id") for e in entries}
    proc = sys_read_only = False
    for e in entries:
        where = _value(e.get("mountpoint", "?"))
        fstype = e.get("fstype", 0)
        name = _value(e.get("fsname") or _FSTYPES.get(fstype, f"type {fstype}"))
        read_only = bool((e.get("flags", 0) | e.get("sb_flags", 0)) & _MS_RDONLY)
        external = e.get("ext_key") or (e.get("root") if e.get("ext_mount") else "")
        if str(external).startswith("CRIU:"):
            raise refuse(f"CRIU would mount {where} from what it finds on this machine "
                         f"({_value(external)})")
        if e.get("parent_mnt_id") not in ids:
            continue  # the root: runc gives CRIU the container's own root file system
        if not external and fstype not in _NEW_MOUNTS:
            raise refuse(f"CRIU would mount a {name} file system at {where}; a sandbox mounts "
                         "only proc, sysfs, tmpfs, devpts, mqueue and cgroup besides binds")
        if fstype in (_SYSFS, _CGROUP, _CGROUP2) and not read_only:
            raise refuse(f"CRIU would mount {where} ({name}) read-write")
        if fstype == _PROC:
            if where == "/proc" and e.get("root") == "/":
                proc = True
            elif not read_only:
                raise refuse(f"CRIU would mount {where} (proc) read-write")
        sys_read_only |= where == "/proc/sys" and read_only
    if proc and not sys_read_only:
        raise refuse("CRIU would leave /proc/sys writable (Podman mounts it read-only)")


def refuse_unsafe_images(label: str, images: Mapping[str, bytes],
                         spec: dict[str, Any]) -> None:
    """Refuse what CRIU would restore beyond a sandbox from the dump's images (`CRIU_IMAGE`
    members, by name; see the module), and a spec.dump without the seccomp filter the
    processes ran under (exit 3)."""
    filtered = False
    for member, data in sorted(images.items()):
        def refuse(what: str, member: str = member) -> InputError:
            return ArchiveError(label, what, hint=_REFUSED, member=member)

        kind = member.split("/")[-1].split("-")[0]
        try:
            entries = list(decode_entries(data, _MAGIC_NAMES[kind], _SCHEMAS[kind]))
        except ImageError as e:
            raise ArchiveError(label, f"is not a readable CRIU {kind} image ({e})",
                               hint="the CRIU image is corrupt or truncated",
                               member=member) from e
        if kind == "mountpoints":
            _refuse_mountpoints(entries, refuse)
            continue
        for entry in entries:
            if kind == "creds":
                _refuse_creds(entry, refuse)
                continue
            thread = entry.get("thread_core")
            if thread is None:
                # A zombie's core has none; and CRIU 4.1.1 restores no live task without
                # it (open_cores reads its seccomp mode unchecked).
                continue
            if "creds" not in thread:
                raise refuse("a task's credentials are missing: CRIU would leave it with its "
                             "own, every capability")
            _refuse_creds(thread["creds"], refuse)
            if thread.get("seccomp_mode") not in (_SECCOMP_STRICT, _SECCOMP_FILTER):
                raise refuse("a task ran without a seccomp filter, and CRIU restores it so "
                             "(Podman sets one for every container it does not run "
                             "privileged)")
            filtered = True
    if filtered and not isinstance(_dict(spec.get("linux")).get("seccomp"), dict):
        raise InputError(f"{label}: spec.dump has no seccomp filter, yet the container's "
                         "processes ran under one", hint=_REFUSED)


def read_image(label: str, member: str, f: Any) -> bytes:
    """The bytes of one `CRIU_IMAGE` member, read from ``f`` up to a bound."""
    data: bytes = f.read(_MAX_IMAGE + 1)
    if len(data) > _MAX_IMAGE:
        raise ArchiveError(label, f"is more than {_MAX_IMAGE} bytes", member=member,
                           hint="CRIU's core and mount images are small; this one may be "
                           "crafted")
    return data


def choose_mounts(label: str, recorded: list[RecordedMount],
                  allowed: dict[str, Path]) -> list[SandboxMount]:
    """Pair every recorded mount with the host path the user allowed for it (exit 2 if not)."""
    known = {m.destination for m in recorded}
    unknown = sorted(set(allowed) - known)
    if unknown:
        raise UsageError(f"--allow-mount {unknown[0]}: the checkpoint records no bind mount "
                         "there", hint="its mounts: " + (", ".join(sorted(known)) or "none"))
    missing = [m for m in recorded if m.destination not in allowed]
    if missing:
        n = len(missing)
        raise UsageError(
            f"{label} records {n} host mount{'s' if n > 1 else ''} the restored container "
            f"would bind: {', '.join(m.describe() for m in missing)}",
            hint="a restore needs each of them (CRIU restores the process with its mounts); "
            "give --allow-mount DEST=HOSTPATH for each, with a path you chose (an empty "
            "directory made for it is safest); nothing was restored")
    return [SandboxMount(m, allowed[m.destination]) for m in recorded]


def _interface(config: dict[str, Any]) -> str:
    """The interface name the container had on its first network (eth0 by default)."""
    networks = config.get("newNetworks") or {}
    for name in sorted(networks):
        opts = networks[name]
        if isinstance(opts, dict) and opts.get("interface_name"):
            return str(opts["interface_name"])
    return "eth0"


def _network(config: dict[str, Any], spec: dict[str, Any], network: str) -> None:
    interface = _interface(config)
    for key in _NETWORK_KEYS:
        config.pop(key, None)
    # Podman makes the namespace (a path for runc, which restores a process whose
    # namespace was external at the dump only into a given one); with no network
    # in it, it holds a loopback device and nothing else (configureNetNS).
    config["createNetNS"] = True
    if network == "none":
        config["networkMode"] = "none"
    else:
        config["networkMode"] = "bridge"
        config["newNetworks"] = {network: {"interface_name": interface}}
    linux = spec.setdefault("linux", {})
    others = [n for n in _items(linux.get("namespaces"))
              if isinstance(n, dict) and n.get("type") != "network"]
    linux["namespaces"] = [*others, {"type": "network"}]


def rewrite(config: dict[str, Any], spec: dict[str, Any], *, network: str,
            mounts: list[SandboxMount], labels: dict[str, str],
            autoremove: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """New config.dump and spec.dump (the inputs are left as they were)."""
    config, spec = copy.deepcopy(config), copy.deepcopy(spec)
    _network(config, spec, network)
    chosen = {m.recorded.destination: m.host_path for m in mounts}
    for m in spec.get("mounts") or []:
        if m["destination"] in chosen:
            m["source"] = str(chosen[m["destination"]])
            m["type"] = "bind"
    # Each volume spec.dump binds became a chosen bind mount; any other would only be made
    # (with its driver's options: a local volume can mount a device) and never bound.
    config["namedVolumes"] = []
    for key in _DROPPED:
        config.pop(key, None)
    config["labels"] = {**(config.get("labels") or {}), **labels}
    for key in ("restart_policy", "restart_retries"):
        config.pop(key, None)
    config["healthcheck"] = None
    spec.setdefault("annotations", {})[AUTOREMOVE] = "TRUE" if autoremove else "FALSE"
    linux = spec["linux"]  # made by _network
    # None recorded (--security-opt unmask=ALL leaves them out): Podman's, for a later
    # start; the restored processes get the masks CRIU's mount images record.
    for key, defaults in (("maskedPaths", PODMAN_MASKED), ("readonlyPaths", PODMAN_READONLY)):
        if linux.get(key) is None:
            linux[key] = list(defaults)
    return config, spec
