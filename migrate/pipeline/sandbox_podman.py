"""Sandbox stage with Podman: restore a checkpoint on this machine, fenced off, to look at it.

1. check the request (name, network, mounts given) before touching anything;
2. find the checkpoint: an ARCHIVE file (its sha256 is the sandbox's label),
   or an IMAGE that Podman pulls and mounts (its manifest digest is the label);
3. refuse what a sandbox cannot restore, and plan network, mounts and labels
   (`libpod_rewrite`);
4. refuse a name in use, and what CRIU would restore beyond a sandbox from
   the dump's own images (capabilities, seccomp mode, mounts); write a
   private copy of the checkpoint with config.dump and spec.dump rewritten
   (`adapters.repack`), in a 0700 temporary directory;
5. ``podman container restore --import COPY --name NAME``, then delete the
   copy; when the restore fails, remove the container Podman left behind.

`stop_sandbox` removes a sandbox again, and only a sandbox: a container
without the `libpod_rewrite.LABEL` label is refused.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from migrate.adapters.checkpoint import ENGINE_PODMAN, Checkpoint, engine_of
from migrate.adapters.podman import Podman, PodmanFailed
from migrate.adapters.registry.reference import parse_reference
from migrate.adapters.repack import (
    ArchiveSource,
    CheckpointSource,
    DirectorySource,
    file_digest,
    write_copy,
)
from migrate.errors import (
    DependencyError,
    InputError,
    MigrateError,
    NotFoundError,
    RegistryError,
    UsageError,
)
from migrate.pipeline.libpod_rewrite import (
    CRIU_IMAGE,
    LABEL,
    SANDBOX_LABEL,
    SandboxMount,
    canonical,
    choose_mounts,
    read_image,
    recorded_mounts,
    refuse_unsafe,
    refuse_unsafe_images,
    rewrite,
)
from migrate.settings import Settings

# Podman's own rule for names (libpod/define, NameRegex), and for networks.
_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
_PREFIX = "migrate.dev/"
_RESTORE_HINT = ("a sandbox cannot restore established TCP connections (Podman restores them "
                 "only under the original name and address), nor files that differ from the "
                 "dump (Podman 4.3 leaves changed image files out of its archives)")
_REGISTRY = re.compile(r"^[a-zA-Z0-9](?:[a-zA-Z0-9.-]*[a-zA-Z0-9])?(?::[0-9]+)?$")


@dataclass(frozen=True)
class PodmanSandboxRequest:
    """One `migrate sandbox --engine podman`."""

    checkpoint: str
    """An archive's path, or an image reference (with its registry: ``host[:port]/repo``)."""
    name: str | None = None
    """Container name; default: forensic-<container>."""
    network: str = "none"
    """``none``, or the name of a Podman network to join."""
    allow_mounts: tuple[str, ...] = ()
    """``DEST=HOSTPATH`` for each recorded bind mount."""
    autoremove: bool = False


@dataclass(frozen=True)
class PodmanSandboxReport:
    """What was restored (the JSON form of `migrate sandbox --engine podman`)."""

    name: str
    id: str
    source: str
    """``archive`` or ``image``."""
    checkpoint: str
    """The archive's absolute path, or the image reference."""
    image_id: str | None
    digest: str
    container: str
    network: str
    mounts: list[SandboxMount]
    labels: dict[str, str]
    autoremove: bool
    commands: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Stable keys (schemas/sandbox-podman.schema.json)."""
        return {"engine": "podman", "name": self.name, "id": self.id, "source": self.source,
                "archive": self.checkpoint if self.source == "archive" else None,
                "image": self.checkpoint if self.source == "image" else None,
                "image_id": self.image_id, "digest": self.digest, "container": self.container,
                "network": self.network, "mounts": [m.to_dict() for m in self.mounts],
                "labels": self.labels, "rm": self.autoremove, "commands": self.commands}


def parse_allowed(values: tuple[str, ...]) -> dict[str, Path]:
    """``DEST=HOSTPATH`` options -> {DEST: absolute HOSTPATH}; the path must exist."""
    out: dict[str, Path] = {}
    for value in values:
        dest, sep, host = value.partition("=")
        if not sep or not dest.startswith("/") or not host:
            raise UsageError(f"--allow-mount {value!r}: expected DEST=HOSTPATH",
                             hint="DEST is the path in the container, e.g. "
                             "--allow-mount /data=/srv/forensics/data")
        dest = "/" + dest.strip("/")
        if dest in out:
            raise UsageError(f"--allow-mount {dest} is given twice")
        path = Path(host).absolute()
        if not path.exists():
            raise NotFoundError(f"--allow-mount {dest}: {path} does not exist",
                                hint="create it first (an empty directory, or an empty file "
                                "for a file mount)")
        out[dest] = path
    return out


def _check_name(name: str, what: str) -> None:
    if not _NAME.match(name):
        raise UsageError(f"{what} {name!r} is not a valid Podman name",
                         hint="letters, digits, '_', '.' and '-', starting with a letter or "
                         "digit")


def _default_name(container: str) -> str:
    base = re.sub(r"[^a-zA-Z0-9_.-]+", "-", container).strip("-_.") or "container"
    return f"forensic-{base}"[:128]


def is_image_reference(value: str) -> bool:
    """An image reference names its registry (``host.domain/...``, ``host:port/...``,
    ``localhost/...``); anything else is taken for an archive's path."""
    first, sep, _ = value.partition("/")
    if not sep or not _REGISTRY.match(first) or not ("." in first or ":" in first
                                                     or first == "localhost"):
        return False
    try:
        parse_reference(value)
    except UsageError:
        return False
    return True


def _libpod(source: CheckpointSource) -> None:
    engine = engine_of(source.spec.get("annotations") or {})
    if engine != ENGINE_PODMAN:
        raise InputError(f"{source.label}: a {engine} checkpoint; Podman restores only the "
                         "checkpoints Podman made (libpod's config.dump)",
                         hint="restore it on a CRI host: migrate sandbox ARCHIVE --engine "
                         "crictl (or `migrate manifest` for a Pod)")


def _labels(source: CheckpointSource, checkpoint: str, digest: str) -> dict[str, str]:
    config = source.config
    values = {LABEL: digest, SANDBOX_LABEL: "forensic", _PREFIX + "checkpoint": checkpoint,
              _PREFIX + "source-container": str(config.get("name") or ""),
              _PREFIX + "source-id": str(config.get("id") or ""),
              _PREFIX + "checkpoint-time": source.dump_time()}
    return {k: v for k, v in values.items() if v}


@dataclass(frozen=True)
class _Found:
    source: CheckpointSource
    kind: str
    checkpoint: str
    digest: str
    image_id: str | None = None


@contextmanager
def _open(req: PodmanSandboxRequest, image: bool, podman: Podman,
          settings: Settings) -> Iterator[_Found]:
    """The checkpoint, open (an archive) or pulled and mounted (an image) while in use."""
    if not image:
        archive = Path(req.checkpoint).absolute()
        with Checkpoint(archive, settings.archive) as ckpt:
            # The archive's own digest, as `sha256sum` prints it: the label ties the
            # sandbox to the evidence file.
            yield _Found(ArchiveSource(ckpt), "archive", str(archive), file_digest(archive))
        return
    try:
        pulled = podman.pull(req.checkpoint, settings.registry)
    except (NotFoundError, RegistryError) as e:
        raise type(e)(e.message, hint=f"{e.hint}; there is no file {req.checkpoint}, so it "
                      "was taken for an image reference") from e
    with podman.mounted_image(pulled.id) as root:
        yield _Found(DirectorySource(root, req.checkpoint, settings.archive), "image",
                     req.checkpoint, pulled.digest, pulled.id)


def _require_root() -> None:
    # Podman's rule (cmd/podman/containers/restore.go); checked before a pull.
    if os.geteuid() != 0:
        raise DependencyError("Podman restores checkpoints only as root (rootful Podman: "
                              "CRIU needs it)", hint="run `migrate sandbox --engine podman` "
                              "as root")


@dataclass(frozen=True)
class _Plan:
    name: str
    container: str
    mounts: list[SandboxMount]
    labels: dict[str, str]
    replaced: dict[str, bytes]
    spec: dict[str, Any]
    """spec.dump as checked (`libpod_rewrite.canonical`)."""


def _plan(req: PodmanSandboxRequest, found: _Found, allowed: dict[str, Path]) -> _Plan:
    """Check the checkpoint; the sandbox's name, mounts, labels and rewritten metadata."""
    source = found.source
    _libpod(source)
    config, spec = canonical(source.label, source.config, source.spec)
    refuse_unsafe(source.label, config, spec)
    mounts = choose_mounts(source.label, recorded_mounts(config, spec), allowed)
    labels = _labels(source, found.checkpoint, found.digest)
    new_config, new_spec = rewrite(config, spec, network=req.network, mounts=mounts,
                                   labels=labels, autoremove=req.autoremove)
    container = str(config.get("name") or "")
    return _Plan(req.name or _default_name(container), container, mounts, labels,
                 {"config.dump": json.dumps(new_config).encode(),
                  "spec.dump": json.dumps(new_spec).encode()}, spec)


def _criu_images(source: CheckpointSource) -> dict[str, bytes]:
    """The core, creds and mount images CRIU restores the processes' privileges and
    mounts from (`libpod_rewrite.CRIU_IMAGE`), by member name."""
    out: dict[str, bytes] = {}
    for entry in source.entries():
        if entry.kind == "file" and entry.open is not None and CRIU_IMAGE.match(entry.name):
            with entry.open() as f:
                out[entry.name] = read_image(source.label, entry.name, f)
    return out


def _name_free(podman: Podman, name: str) -> None:
    if podman.container(name) is not None:
        raise UsageError(f"a container named {name} exists",
                         hint=f"choose another --name, or remove it (`migrate sandbox stop "
                         f"{name}` if it is a sandbox)")


def _failed(podman: Podman, name: str, digest: str, e: PodmanFailed) -> DependencyError:
    """Remove what a failed restore left (Podman may leave the container created), if it is
    ours: the name was free before, and the label holds this checkpoint's digest."""
    info = podman.container(name)
    labels = ((info or {}).get("Config") or {}).get("Labels") or {}
    if info is None or labels.get(LABEL) != digest:
        return DependencyError(e.message, hint=f"{_RESTORE_HINT}; nothing was left behind")
    try:
        podman.remove(name)
    except MigrateError as cleanup:
        return DependencyError(e.message, hint=f"{_RESTORE_HINT}; the container {name} it "
                               f"made could not be removed ({cleanup.message}): podman rm "
                               f"--force {name}")
    return DependencyError(e.message, hint=f"{_RESTORE_HINT}; the container {name} it made "
                           "was removed")


def restore_sandbox(req: PodmanSandboxRequest, settings: Settings) -> PodmanSandboxReport:
    """Restore the checkpoint with Podman in a sandbox; see the module's steps."""
    if req.name is not None:
        _check_name(req.name, "--name")
    if req.network != "none":
        _check_name(req.network, "--network")
    allowed = parse_allowed(req.allow_mounts)
    podman = Podman(settings.podman)  # a missing podman fails here, before any work
    image = not Path(req.checkpoint).exists() and is_image_reference(req.checkpoint)
    if image:
        _require_root()
    if req.network != "none" and not podman.network_exists(req.network):
        raise UsageError(f"--network {req.network}: Podman has no such network",
                         hint="`podman network ls` lists them; `podman network create "
                         "--internal NAME` makes one with no route out")
    with tempfile.TemporaryDirectory(prefix="migrate-sandbox-") as tmp:  # 0700
        copy = Path(tmp) / "checkpoint.tar"
        with _open(req, image, podman, settings) as found:  # an image is unmounted at its end
            plan = _plan(req, found, allowed)
            _name_free(podman, plan.name)
            refuse_unsafe_images(found.source.label, _criu_images(found.source), plan.spec)
            write_copy(found.source, copy, plan.replaced)
        _require_root()
        try:
            container_id = podman.restore_import(copy, plan.name)
        except PodmanFailed as e:
            raise _failed(podman, plan.name, found.digest, e) from e
    return PodmanSandboxReport(
        name=plan.name, id=container_id, source=found.kind, checkpoint=found.checkpoint,
        image_id=found.image_id, digest=found.digest, container=plan.container,
        network=req.network, mounts=plan.mounts, labels=plan.labels,
        autoremove=req.autoremove,
        commands=[f"podman logs {plan.name}", f"migrate sandbox stop {plan.name}"])


@dataclass(frozen=True)
class StopReport:
    """What `migrate sandbox stop` removed."""

    name: str
    id: str
    digest: str

    def to_dict(self) -> dict[str, Any]:
        """Stable keys (schemas/sandbox-stop.schema.json)."""
        return {"engine": "podman", "name": self.name, "id": self.id, "digest": self.digest,
                "removed": True}


def stop_sandbox(name: str, settings: Settings) -> StopReport:
    """Stop and remove the sandbox ``name``; anything but a forensic restore is refused."""
    podman = Podman(settings.podman)
    info = podman.container(name)
    if info is None:
        raise NotFoundError(f"no container {name}",
                            hint=f"`podman ps -a --filter label={LABEL}` lists the sandboxes")
    labels = (info.get("Config") or {}).get("Labels") or {}
    if LABEL not in labels:
        raise UsageError(f"container {name} is not a forensic restore (no {LABEL} label)",
                         hint="migrate sandbox stop removes only what migrate sandbox "
                         "restored; use podman for anything else")
    podman.remove(name)
    return StopReport(name, str(info.get("Id") or ""), str(labels[LABEL]))
