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
- refused outright: privileged containers, host devices, host (or joined)
  PID, IPC, UTS, mount or user namespaces, pods, overlay and image volumes;
- labels say it is a forensic restore; no restart policy, no health check
  (it would run commands in the restored container); ``--rm`` through
  Podman's autoremove annotation.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from migrate.errors import InputError, UsageError

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


def refuse_unsafe(label: str, config: dict[str, Any], spec: dict[str, Any]) -> None:
    """Refuse what a sandbox cannot restore without reaching the host (exit 3)."""
    def refuse(what: str) -> InputError:
        return InputError(f"{label}: {what}", hint=_REFUSED)

    if config.get("privileged"):
        raise refuse("the container was privileged")
    linux = spec.get("linux") or {}
    devices = [d.get("path", "?") for d in linux.get("devices") or [] if isinstance(d, dict)]
    if devices:
        raise refuse(f"the container had host devices: {', '.join(devices)}")
    namespaces = {n.get("type"): n for n in linux.get("namespaces") or [] if isinstance(n, dict)}
    for kind in _OWN_NAMESPACES:
        ns = namespaces.get(kind)
        if ns is None:
            raise refuse(f"the container shared the host's {kind.upper()} namespace")
        if ns.get("path"):
            raise refuse(f"the container joined the {kind.upper()} namespace {ns['path']}")
    if namespaces.get("user", {}).get("path"):
        raise refuse(f"the container joined the user namespace {namespaces['user']['path']}")
    if config.get("pod"):
        raise refuse(f"the container was in Podman pod {config['pod']}")
    for key, what in (("overlayVolumes", "overlay volumes"), ("ctrImageVolumes", "image volumes")):
        if config.get(key):
            raise refuse(f"the container had {what}, which Podman restores from the host")


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
    others = [n for n in linux.get("namespaces") or [] if n.get("type") != "network"]
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
    config["namedVolumes"] = [v for v in config.get("namedVolumes") or []
                              if not (isinstance(v, dict) and v.get("dest") in chosen)]
    config["labels"] = {**(config.get("labels") or {}), **labels}
    for key in ("restart_policy", "restart_retries"):
        config.pop(key, None)
    config["healthcheck"] = None
    spec.setdefault("annotations", {})[AUTOREMOVE] = "TRUE" if autoremove else "FALSE"
    return config, spec
