"""Sandbox stage: crictl configs that restore a checkpoint archive for forensic work.

1. read the archive: the container's identity, what CRI-O will refuse, the
   mounts it will require (`binds.required_mounts`), and the image the container
   ran, which the restore is created on (its ID, and what pulls it);
2. render pod-config.json and container-config.json from templates/ and check
   them against the CRI schemas and the sandbox rules — before anything is
   written;
3. write them into DIR (0700; files 0600), with every required mount recreated
   empty under DIR/mounts with the type CRI-O demands (directories 0700, files
   0600) and a log directory; a failure part way removes what this run wrote;
4. with ``--run``: that image pulled unless the runtime holds it (with the
   credentials found here for its registry, as for a push), then crictl runp,
   create, start (`adapters.crictl`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from migrate.adapters import crictl
from migrate.adapters.checkpoint import Checkpoint, Identity
from migrate.adapters.registry.auth import Credentials, lookup
from migrate.adapters.registry.reference import parse_reference
from migrate.errors import InputError, UsageError
from migrate.pipeline.annotations import check_restorable, image_id, pull_reference
from migrate.pipeline.binds import RecordedMount, required_mounts
from migrate.pipeline.manifest import ANNOTATION_PREFIX
from migrate.pipeline.templating import fill
from migrate.settings import Settings
from migrate.validation import check_rendered

NAMESPACE = "migrate-sandbox"
POD_CONFIG, CONTAINER_CONFIG = "pod-config.json", "container-config.json"
_NETWORKS = ("none", "pod")
# CRI has no "no network" mode: a resolver nobody answers on keeps names from resolving.
_NO_DNS = {"servers": ["127.0.0.1"], "searches": [], "options": ["attempts:1", "timeout:1"]}
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
#: What the host path of a recreated mount keeps of its container path: enough to tell
#: which it is, its index before it keeps it unique, and well under NAME_MAX.
_MOUNT_NAME = 64
_NAME_MAX, _PATH_MAX = 255, 4095
# The base image's ID and pull reference go into crictl's command lines (and a printed
# shell line): an ID is hex (what CRI-O's storage names images by), never an option.
_IMAGE_ID = re.compile(r"^(?:sha256:)?[0-9a-f]{64}$")
_CRAFTED = "this archive may be crafted; nothing was written"


@dataclass(frozen=True)
class SandboxRequest:
    """One `migrate sandbox`."""

    archive: Path
    out: Path | None = None
    """Output directory; default: ./NAME. Must not exist, or be empty."""
    name: str | None = None
    """Sandbox pod name; default: forensic-<pod>."""
    network: str = "none"
    cgroup_parent: str | None = None
    run: bool = False


@dataclass(frozen=True)
class SandboxMount:
    """One recreated mount: an empty file or directory bound at ``container_path``."""

    container_path: str
    host_path: Path
    kind: str
    readonly: bool
    original_permissions: int | None

    def to_dict(self) -> dict[str, Any]:
        """JSON form (an item of sandbox.schema.json's ``mounts``)."""
        return {"container_path": self.container_path, "host_path": str(self.host_path),
                "type": self.kind, "readonly": self.readonly,
                "original_permissions": self.original_permissions}


@dataclass(frozen=True)
class SandboxReport:
    """What was written, and with ``--run`` what crictl made."""

    name: str
    uid: str
    container: str
    archive: Path
    out: Path
    network: str
    mounts: list[SandboxMount]
    commands: list[str]
    base_image: crictl.BaseImage | None
    pod_id: str | None = None
    container_id: str | None = None
    pulled: bool | None = None
    """With --run: whether the base image had to be pulled."""

    @property
    def log(self) -> Path | None:
        """With --run: the restored container's log (CRI-O names it by the container's ID)."""
        return self.out / "logs" / f"{self.container_id}.log" if self.container_id else None
    configs: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def pod_config(self) -> Path:
        """Where pod-config.json is."""
        return self.out / POD_CONFIG

    @property
    def container_config(self) -> Path:
        """Where container-config.json is."""
        return self.out / CONTAINER_CONFIG

    def to_dict(self) -> dict[str, Any]:
        """JSON form (schemas/sandbox.schema.json)."""
        return {"engine": "crictl", "name": self.name, "namespace": NAMESPACE, "uid": self.uid,
                "container": self.container, "archive": str(self.archive), "out": str(self.out),
                "pod_config": str(self.pod_config),
                "container_config": str(self.container_config), "network": self.network,
                "mounts": [m.to_dict() for m in self.mounts], "commands": self.commands,
                "base_image": self.base_image.to_dict() if self.base_image else None,
                "pod_id": self.pod_id, "container_id": self.container_id,
                "pulled_base_image": self.pulled,
                "log": str(self.log) if self.log else None}


def _name(req: SandboxRequest, who: Identity) -> str:
    if req.name is not None:
        if not _DNS_LABEL.match(req.name):
            raise UsageError(f"--name {req.name!r} is not a valid sandbox name",
                             hint="lower-case letters, digits and '-'; at most 63 (it is also the "
                             "sandbox's host name)")
        return req.name
    base = re.sub(r"[^a-z0-9]+", "-", f"forensic-{who.pod or who.container}".lower())
    return base[:63].strip("-")


def _check_destinations(label: str, recorded: list[RecordedMount]) -> None:
    """Refuse a container path no Linux file system can hold: CRI-O could never mount it,
    and its name recreated here would be too long to write."""
    for m in recorded:
        longest = max((len(part.encode()) for part in m.destination.split("/")), default=0)
        if longest > _NAME_MAX or len(m.destination.encode()) > _PATH_MAX:
            shown = m.destination if len(m.destination) <= 80 else m.destination[:80] + "..."
            raise InputError(f"{label}: spec.dump records a mount at {shown}, a path longer "
                             f"than Linux allows ({_NAME_MAX} bytes a name, {_PATH_MAX} in all)",
                             hint=_CRAFTED)


def _plan_mounts(recorded: list[RecordedMount], out: Path) -> list[SandboxMount]:
    return [SandboxMount(m.destination,
                         out / "mounts" / (f"{i:02d}-"
                                           + _UNSAFE.sub('-', m.destination).strip('-')
                                           [:_MOUNT_NAME].rstrip('-')),
                         m.kind, m.readonly, m.permissions)
            for i, m in enumerate(recorded, 1)]


def _base_image(label: str, config: dict[str, Any], reference: str | None
                ) -> crictl.BaseImage | None:
    """The image the container ran (`image_id`) and what pulls it, checked: both reach
    crictl's command lines."""
    recorded = str(config.get("rootfsImageRef") or "")
    if recorded and not _IMAGE_ID.match(recorded) and not _is_reference(recorded):
        raise InputError(f"{label}: config.dump's rootfsImageRef {recorded!r} is neither an "
                         "image ID nor an image reference", hint=_CRAFTED)
    ran = image_id(config)
    if not ran:
        return None
    if not _IMAGE_ID.match(ran):
        field = ("rootfsImageRef" if ran == recorded else
                 "rootfsImage" if config.get("rootfsImage") else "rootfsImageID")
        raise InputError(f"{label}: config.dump's {field} {ran!r} is not an image ID (64 hex "
                         "digits, sha256: before them or not)", hint=_CRAFTED)
    if reference is not None and not _is_reference(reference):
        raise InputError(f"{label}: the image to pull, {reference!r}, is not an image "
                         "reference", hint=_CRAFTED)
    return crictl.BaseImage(ran, reference)


def _is_reference(value: str) -> bool:
    if value.startswith("-"):
        return False
    try:
        parse_reference(value)
    except UsageError:
        return False
    return True


def _annotations(who: Identity, archive: Path, checkpoint_time: str | None) -> dict[str, str]:
    values = {"source-pod": f"{who.namespace}/{who.pod}" if who.pod else None,
              "source-uid": who.pod_uid, "source-container": who.container,
              "checkpoint": str(archive), "checkpoint-time": checkpoint_time}
    return {ANNOTATION_PREFIX + k: v for k, v in values.items() if v}


def _render(report: SandboxReport, who: Identity, checkpoint_time: str | None,
            req: SandboxRequest) -> dict[str, Any]:
    """Both configs, checked; nothing is written yet."""
    pod = fill("crictl-pod-config.yaml", {
        "name": report.name, "uid": report.uid, "log_directory": str(report.out / "logs"),
        "dns_config": _NO_DNS if report.network == "none" else None,
        "annotations": _annotations(who, report.archive, checkpoint_time),
        "cgroup_parent": req.cgroup_parent})
    container = fill("crictl-container-config.yaml", {
        "container": report.container, "archive": str(report.archive),
        "mounts": [{"container_path": m.container_path, "host_path": str(m.host_path),
                    **({"readonly": True} if m.readonly else {})} for m in report.mounts]})
    check_rendered(pod, "sandbox-pod-config.schema.json", POD_CONFIG)
    check_rendered(container, "sandbox-container-config.schema.json", CONTAINER_CONFIG)
    return {POD_CONFIG: pod, CONTAINER_CONFIG: container}


def _private_dir(path: Path) -> None:
    path.mkdir(mode=0o700, exist_ok=True)
    path.chmod(0o700)  # the umask may have taken bits away, never added them: be exact


def _private_file(path: Path, data: str = "") -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(data)
    path.chmod(0o600)


@contextlib.contextmanager
def _undo_on_failure(written: list[Path]) -> Iterator[None]:
    """On any failure, remove what this run wrote (``written``, in the order made: files,
    and directories it created), newest first; a directory that was there before is never
    in the list, so it is left as it was."""
    try:
        yield
    except BaseException:
        for path in reversed(written):
            with contextlib.suppress(OSError):  # what cannot be removed stays, as before
                if path.is_dir() and not path.is_symlink():
                    path.rmdir()
                else:
                    path.unlink()
        raise


def _write(report: SandboxReport) -> None:
    out = report.out
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"{out} exists and is not an empty directory",
                         hint="choose another --out, or remove it (a sandbox may still use it)")
    written = [p for p in reversed([out, *out.parents]) if not p.exists()]
    try:
        with _undo_on_failure(written):
            out.parent.mkdir(parents=True, exist_ok=True)
            _private_dir(out)
            for d in (out / "logs", out / "mounts"):
                written.append(d)
                _private_dir(d)
            for m in report.mounts:
                written.append(m.host_path)
                if m.kind == "file":
                    _private_file(m.host_path)
                else:
                    _private_dir(m.host_path)
            for name, document in report.configs.items():
                written.append(out / name)
                _private_file(out / name, json.dumps(document, indent=2) + "\n")
    except OSError as e:
        raise UsageError(f"cannot write the sandbox in {out}: {e.strerror or e}",
                         hint="check that the directory is writable and the file system has "
                         "room; what this run wrote there was removed") from e


def _pull_creds(base: crictl.BaseImage | None, settings: Settings) -> Credentials | None:
    """Credentials for the base image's registry, found as for a push (--creds, --authfile,
    the usual files); None: the runtime pulls with its own, if any. Looked up before the
    sandbox exists: a named credentials file that is missing fails first."""
    if base is None or base.reference is None:
        return None
    ref = parse_reference(base.reference)
    return lookup(ref.registry, ref.repository, settings.registry)


def prepare_sandbox(req: SandboxRequest, settings: Settings, uid: str | None = None
                    ) -> SandboxReport:
    """Render, check and write the sandbox; ``uid`` is fresh unless given (tests)."""
    if req.network not in _NETWORKS:
        raise UsageError(f"--network {req.network!r}: --engine crictl takes none or pod",
                         hint="a named network is for --engine podman")
    crictl.check_timeout(settings.crictl)
    archive = req.archive.absolute()
    with Checkpoint(archive, settings.archive) as ckpt:
        who = ckpt.identity()
        check_restorable(ckpt, who)
        recorded, checkpoint_time = required_mounts(ckpt), ckpt.config.get("checkpointedTime")
        _check_destinations(ckpt.label, recorded)
        base = _base_image(ckpt.label, ckpt.config, pull_reference(ckpt))
    name = _name(req, who)
    out = (req.out or Path(name)).absolute()
    report = SandboxReport(
        name=name, uid=uid or str(uuid.uuid4()), container=who.container, archive=archive,
        out=out, network=req.network, mounts=_plan_mounts(recorded, out),
        commands=crictl.manual_commands(settings.crictl, out / POD_CONFIG,
                                        out / CONTAINER_CONFIG, base), base_image=base)
    report = replace(report, configs=_render(report, who, checkpoint_time, req))
    _write(report)
    if not req.run:
        return report
    ids = crictl.restore_in_sandbox(settings.crictl, report.pod_config, report.container_config,
                                    base, _pull_creds(base, settings))
    return replace(report, pod_id=ids.pod_id, container_id=ids.container_id,
                   pulled=ids.pulled_base_image)
