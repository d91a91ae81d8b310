"""Restore a checkpoint into a sandbox with crictl, through `sh`.

The steps of the seed article's sandbox restore: ``crictl runp`` makes the
pod sandbox, ``crictl create`` restores the container into it from the
archive, ``crictl start`` runs it. Before them the runtime must hold the image
the container ran: CRI-O creates the restored container on it by its storage ID
and pulls nothing (server/container_restore.go, v1.36.3), so a host that never
ran it fails the create with `image not known`; ``crictl pull`` fetches it
first when ``crictl inspecti`` does not find it. Every call goes through `_Crictl`, which
puts the tail of crictl's stderr into the error; when a step after ``runp``
fails, the sandbox it made is stopped and removed (``stopp``, ``rmp``: a
removed sandbox takes its containers with it).

Registry credentials for the pull go to crictl in its environment
(CRICTL_CREDS, which cri-tools v1.37 reads for ``pull --creds``), never on its
command line, where any user of the host could read them in ps.
"""

from __future__ import annotations

import logging
import os
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sh

from migrate.adapters.registry.auth import Credentials, user_password
from migrate.adapters.stderr import tail
from migrate.errors import DependencyError, MigrateError, UsageError
from migrate.settings import CrictlSettings

log = logging.getLogger(__name__)

MIN_TIMEOUT = 60.0
_INSTALL = ("install cri-tools (crictl) on the node, or run the printed commands where it is; "
            "--crictl names another executable")


def check_timeout(settings: CrictlSettings) -> None:
    """Refuse deadlines too short for a restore: crictl's default (2 s) fails it."""
    if settings.timeout < MIN_TIMEOUT:
        raise UsageError(f"--timeout must be at least {MIN_TIMEOUT:g} seconds",
                         hint="a pull of the base image, or a restore of much memory, takes "
                         "longer than that before the runtime answers")


def base_command(settings: CrictlSettings) -> list[str]:
    """crictl and its global flags: the part every step shares."""
    args = [settings.executable]
    if settings.runtime_endpoint:
        args += ["--runtime-endpoint", settings.runtime_endpoint]
    return [*args, "--timeout", f"{settings.timeout:g}s"]


@dataclass(frozen=True)
class BaseImage:
    """The image the checkpointed container ran, which the restore is created on."""

    id: str
    """Its storage ID (config.dump's rootfsImageRef): what CRI-O looks the image up by."""
    reference: str | None
    """What to pull when the runtime lacks it: a REPO@DIGEST CRI-O recorded for the image,
    else the name the container ran (a tag may have moved since); None: nothing to pull
    by (the archive names no image)."""

    def to_dict(self) -> dict[str, Any]:
        """JSON form (sandbox.schema.json's ``base_image``)."""
        return {"id": self.id, "reference": self.reference}


def manual_commands(settings: CrictlSettings, pod_config: Path,
                    container_config: Path, base: BaseImage | None) -> list[str]:
    """The shell lines an operator can run instead of ``--run``: the base image's pull
    (when the runtime lacks it and there is a reference), runp, create, start."""
    crictl = shlex.join(base_command(settings))
    pod, ctr = shlex.quote(str(pod_config)), shlex.quote(str(container_config))
    pull = ([f"{crictl} inspecti {shlex.quote(base.id)} >/dev/null 2>&1 || "
             f"{crictl} pull {shlex.quote(base.reference)}"]
            if base is not None and base.id and base.reference else [])
    return [*pull, f"POD_ID=$({crictl} runp {pod})",
            f'CTR_ID=$({crictl} create "$POD_ID" {ctr} {pod})',
            f'{crictl} start "$CTR_ID"']


class _Crictl:
    """The one command runner: every crictl call and its errors."""

    def __init__(self, settings: CrictlSettings) -> None:
        try:
            self._cmd = sh.Command(settings.executable)
        except sh.CommandNotFound as e:
            raise DependencyError(f"crictl is not installed ({settings.executable} not found)",
                                  hint=_INSTALL) from e
        self._global = base_command(settings)[1:]
        # crictl's own deadline covers one runtime call; leave it room to report.
        self._timeout = settings.timeout + 30

    def __call__(self, *args: str, env: Mapping[str, str] | None = None) -> str:
        """Run ``crictl GLOBAL ARGS``; its stdout, stripped, or a `DependencyError`.
        ``env``: more environment for this call (never logged: it carries credentials)."""
        sub = args[0]
        log.debug("crictl %s", " ".join(args))
        try:
            out = self._cmd(*self._global, *args, _err_to_out=False, _tty_out=False,
                            _timeout=self._timeout, _encoding="utf-8", _decode_errors="replace",
                            _env={**os.environ, **env} if env else None)
        except sh.TimeoutException as e:
            raise DependencyError(f"crictl {sub} did not finish in {self._timeout:g} s",
                                  hint="see the runtime's log (journalctl -u crio)") from e
        except sh.ErrorReturnCode as e:
            said = tail(e.stderr.decode("utf-8", "replace")) or f"exit code {e.exit_code}"
            raise DependencyError(f"crictl {sub} failed: {said}",
                                  hint="see the runtime's log (journalctl -u crio)") from e
        return str(out).strip()


@dataclass(frozen=True)
class SandboxIds:
    """What ``--run`` made."""

    pod_id: str
    container_id: str
    pulled_base_image: bool


def _remove(run: _Crictl, pod_id: str) -> bool:
    """Stop and remove the sandbox; False (logged) when crictl refuses."""
    try:
        run("stopp", pod_id)
        run("rmp", pod_id)
    except MigrateError as e:  # the error that got us here matters more
        log.warning("cleanup: %s", e)
        return False
    return True


def _has_image(run: _Crictl, image_id: str) -> bool:
    try:
        run("inspecti", "-q", image_id)
    except DependencyError:  # crictl says "no such image" with exit code 1
        return False
    return True


def _ensure_base_image(run: _Crictl, base: BaseImage,
                       creds: Credentials | None) -> bool:
    """Pull the base image unless the runtime holds it by ID, with ``creds`` (user,
    password) when given; whether it pulled.

    A pull that brings another image (a tag moved since the checkpoint) is refused
    here: the create would fail with `image not known` after the sandbox exists."""
    if not base.id or _has_image(run, base.id):
        return False
    if base.reference is None:
        raise DependencyError(f"the runtime has no image {base.id[:12]} (the one the "
                              "checkpointed container ran), and the archive names none to "
                              "pull", hint="pull that image on this host first, or restore "
                              "where the container ran")
    env = {"CRICTL_CREDS": user_password(creds)} if creds else None
    try:
        run("pull", base.reference, env=env)
    except DependencyError as e:
        registry = base.reference.split("/", 1)[0]
        whose = (f"it pulled with the credentials found for {registry}" if creds else
                 f"no credentials for {registry} were found here (--creds, --authfile, "
                 "`podman login`), so only the runtime's own apply")
        raise DependencyError(f"{e.message} (the image the checkpointed container ran: "
                              "CRI-O restores onto it and does not pull it itself)",
                              hint=f"{whose}; pull {base.reference} on this host by hand, "
                              "or make it reachable") from e
    if not _has_image(run, base.id):
        raise DependencyError(f"crictl pulled {base.reference}, but it is not image "
                              f"{base.id[:12]}, the one the checkpointed container ran",
                              hint="the tag has moved since the checkpoint: pull that image "
                              "by its digest, then run again")
    return True


def restore_in_sandbox(settings: CrictlSettings, pod_config: Path,
                       container_config: Path, base: BaseImage | None,
                       creds: Credentials | None = None) -> SandboxIds:
    """The base image (pulled unless the runtime holds it, with ``creds`` if any), then
    runp, create, start; on a failure after runp, the sandbox is removed again."""
    check_timeout(settings)
    run = _Crictl(settings)
    pulled = _ensure_base_image(run, base, creds) if base is not None else False
    pod_id = run("runp", str(pod_config))  # (1) the sandbox: its namespaces, its network
    if not pod_id:
        raise DependencyError("crictl runp printed no pod ID", hint="check crictl's version")
    try:
        # (2) an image that is a file path: CRI-O restores the container from the archive
        container_id = run("create", pod_id, str(container_config), str(pod_config))
        run("start", container_id)  # (3)
    except DependencyError as e:
        removed = _remove(run, pod_id)
        what = "was removed" if removed else "could not be removed"
        hint = f"{e.hint}; the sandbox {pod_id} {what}" + (
            "" if removed else f": crictl stopp {pod_id}; crictl rmp {pod_id}")
        raise DependencyError(e.message, hint=hint) from e
    return SandboxIds(pod_id, container_id, pulled)
