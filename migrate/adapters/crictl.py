"""Restore a checkpoint into a sandbox with crictl, through `sh`.

The steps of the seed article's sandbox restore: ``crictl runp`` makes the
pod sandbox, ``crictl create`` restores the container into it from the
archive, ``crictl start`` runs it. Every call goes through `_Crictl`, which
puts the tail of crictl's stderr into the error; when a step after ``runp``
fails, the sandbox it made is stopped and removed (``stopp``, ``rmp``: a
removed sandbox takes its containers with it).
"""

from __future__ import annotations

import logging
import shlex
from dataclasses import dataclass
from pathlib import Path

import sh

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
                         hint="a restore pulls the base image and restores the memory before "
                         "the runtime answers")


def base_command(settings: CrictlSettings) -> list[str]:
    """crictl and its global flags: the part every step shares."""
    args = [settings.executable]
    if settings.runtime_endpoint:
        args += ["--runtime-endpoint", settings.runtime_endpoint]
    return [*args, "--timeout", f"{settings.timeout:g}s"]


def manual_commands(settings: CrictlSettings, pod_config: Path,
                    container_config: Path) -> list[str]:
    """The three shell lines an operator can run instead of ``--run``."""
    crictl = shlex.join(base_command(settings))
    pod, ctr = shlex.quote(str(pod_config)), shlex.quote(str(container_config))
    return [f"POD_ID=$({crictl} runp {pod})",
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

    def __call__(self, *args: str) -> str:
        """Run ``crictl GLOBAL ARGS``; its stdout, stripped, or a `DependencyError`."""
        sub = args[0]
        log.debug("crictl %s", " ".join(args))
        try:
            out = self._cmd(*self._global, *args, _err_to_out=False, _tty_out=False,
                            _timeout=self._timeout, _encoding="utf-8", _decode_errors="replace")
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


def _remove(run: _Crictl, pod_id: str) -> bool:
    """Stop and remove the sandbox; False (logged) when crictl refuses."""
    try:
        run("stopp", pod_id)
        run("rmp", pod_id)
    except MigrateError as e:  # the error that got us here matters more
        log.warning("cleanup: %s", e)
        return False
    return True


def restore_in_sandbox(settings: CrictlSettings, pod_config: Path,
                       container_config: Path) -> SandboxIds:
    """runp, create, start; on a failure after runp, the sandbox is removed again."""
    check_timeout(settings)
    run = _Crictl(settings)
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
    return SandboxIds(pod_id, container_id)
