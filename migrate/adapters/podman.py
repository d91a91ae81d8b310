"""Podman through `sh`: pull, image mount, network check, restore --import, inspect, remove.

Every call goes through `_Podman`, the one command runner: Podman's own
message (its ``Error: ...`` line and what follows) goes into the error, with
the registry's credentials scrubbed from it; credentials reach Podman in a
private authfile, never on its argv. Podman 4.3 is what this was written
against (Debian 12): its restore facts are in the README, "Sandboxes with
Podman".
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sh

from migrate.adapters.registry.auth import auth_token
from migrate.adapters.registry.reference import parse_reference
from migrate.adapters.stderr import tail
from migrate.errors import (
    AuthError,
    DependencyError,
    MigrateError,
    NotFoundError,
    RegistryError,
)
from migrate.settings import PodmanSettings, RegistrySettings, Secret

log = logging.getLogger(__name__)

_INSTALL = ("install it (apt-get install podman runc, as scripts/setup does), or name another "
            "executable with --podman")
_AUTH_FAILURE = re.compile(r"unauthorized|authentication required|\b40[13]\b|access.*denied", re.I)
_NO_CONTAINER = re.compile(r"no such container", re.I)
_HINT = "see Podman's message; `podman info` shows its runtime, storage and CRIU support"
_LOG_FILE = re.compile(r"\|?\s*log file: (/\S+)")
# "(00.231191)      1: Error (criu/files-reg.c:2175): File etc/data.txt has bad size 9 ..."
_CRIU_ERROR = re.compile(r"^\(\s*[\d.]+\)\s+(?:(\d+): )?Error \([^)]*\): (.+)$")
# What follows from a cause above: a task that could not open an fd, or hand one to
# another task that failed ("sent" is CRIU 4.1's spelling), then exits.
_CONSEQUENCES = re.compile(r"^(Unable to open fd=|Can't sen[dt] fd |Restoring FAILED|"
                           r"\d+ exited, status=|\d+ killed by signal)")
_LOG_TAIL = 1024 * 1024
_ERROR_CHARS = 200


def _said(stderr: str) -> str:
    """Podman's message: from its last ``Error:`` line on (warnings before it dropped)."""
    lines = stderr.splitlines()
    starts = [i for i, ln in enumerate(lines) if ln.startswith("Error: ")]
    if starts:
        lines = lines[starts[-1]:]
        lines[0] = lines[0].removeprefix("Error: ")
    return tail("\n".join(lines))


def _inspected(out: str, sub: str) -> Any:
    """``podman SUB``'s JSON: not JSON means a podman we do not understand, not a bug."""
    try:
        return json.loads(out)
    except ValueError as e:
        raise DependencyError(f"podman {sub} did not answer JSON",
                              hint="check that `podman` on the PATH is Podman (`podman --version`)"
                              ) from e


class PodmanFailed(DependencyError):
    """A podman command failed; ``said`` is Podman's own message (scrubbed), "" for none."""

    def __init__(self, sub: str, said: str, exit_code: int) -> None:
        super().__init__(f"podman {sub} failed: {said or f'exit code {exit_code}'}", hint=_HINT)
        self.sub = sub
        self.said = said
        self.status = exit_code


class _Podman:
    """The one command runner: every podman call, its errors and their scrubbing."""

    def __init__(self, settings: PodmanSettings, hidden: tuple[str, ...] = ()) -> None:
        try:
            self._cmd = sh.Command(settings.executable)
        except sh.CommandNotFound as e:
            raise DependencyError(f"podman is not installed ({settings.executable} not found)",
                                  hint=_INSTALL) from e
        self._timeout = settings.timeout
        self._hidden = [h for h in hidden if h]

    def _scrub(self, text: str) -> str:
        for h in self._hidden:
            text = text.replace(h, "***")
        return text

    def __call__(self, *args: str, sub: str | None = None) -> str:
        """Run ``podman ARGS``; its stdout, or `PodmanFailed` carrying Podman's message."""
        sub = sub or args[0]
        log.debug("podman %s", " ".join(args))
        try:  # no tty: podman would draw progress bars; stderr apart: it is the error text
            out = self._cmd(*args, _err_to_out=False, _tty_out=False, _timeout=self._timeout,
                            _encoding="utf-8", _decode_errors="replace")
        except sh.TimeoutException as e:
            raise DependencyError(f"podman {sub} did not finish in {self._timeout:g} s",
                                  hint="it may still be working: `podman ps -a` shows what "
                                  "it made") from e
        except sh.ErrorReturnCode as e:
            raw = e.stderr.decode("utf-8", "replace")
            # sh's own exception quotes stderr verbatim: keep it off the chain if it
            # held a secret, so that not even a --debug traceback shows it.
            raise PodmanFailed(sub, self._scrub(_said(raw)), e.exit_code) from (
                None if self._scrub(raw) != raw else e)
        return str(out)


@dataclass(frozen=True)
class PulledImage:
    """A checkpoint image in Podman's storage."""

    id: str
    digest: str
    """The manifest's digest, ``sha256:...``: what the registry served."""


def _auth(creds: tuple[str, Secret], host: str) -> str:
    """An auth.json naming ``host`` (``{"auths": {host: {"auth": base64(user:pass)}}}``)."""
    return json.dumps({"auths": {host: {"auth": auth_token(creds)}}})


def _write_private(path: Path, data: str) -> Path:
    """Create ``path`` 0600 from the start: no moment where others could read it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(data)
    return path


class Podman:
    """The Podman of this machine (its configuration comes from its own environment)."""

    def __init__(self, settings: PodmanSettings) -> None:
        self.settings = settings
        self._run = _Podman(settings)

    def pull(self, reference: str, registry: RegistrySettings) -> PulledImage:
        """``podman pull`` with the registry options of `migrate build`; the image pulled.

        Podman's own failures stay `DependencyError` (exit 5); what the registry
        refused becomes `AuthError` (401/403) or `RegistryError`, as for build.
        """
        args = ["pull", "--quiet"]
        args += [] if registry.tls_verify else ["--tls-verify=false"]
        args += ["--cert-dir", str(registry.cert_dir)] if registry.cert_dir else []
        hidden: tuple[str, ...] = ()
        with tempfile.TemporaryDirectory(prefix="migrate-podman-") as tmp:  # mode 0700
            authfile = registry.authfile
            if registry.creds:
                host = parse_reference(reference).registry
                authfile = _write_private(Path(tmp, "auth.json"), _auth(registry.creds, host))
                hidden = (registry.creds[1].reveal(), auth_token(registry.creds))
            args += ["--authfile", str(authfile)] if authfile else []
            run = _Podman(self.settings, hidden) if hidden else self._run
            try:
                image_id = run(*args, reference).strip().splitlines()[-1]
            except PodmanFailed as e:
                raise _pull_error(reference, e) from e
        # The manifest's digest, which `migrate build` printed; the image ID (its
        # config's digest) if Podman knows none.
        digest = str(self.image(image_id).get("Digest") or f"sha256:{image_id}")
        return PulledImage(image_id, digest)

    def image(self, name: str) -> dict[str, Any]:
        """``podman image inspect`` of one image."""
        data = _inspected(self._run("image", "inspect", name, sub="image inspect"),
                          "image inspect")
        return data[0] if isinstance(data, list) and data and isinstance(data[0], dict) else {}

    @contextmanager
    def mounted_image(self, image_id: str) -> Iterator[Path]:
        """The image's root, mounted read-only by Podman while the block runs."""
        path = Path(self._run("image", "mount", image_id, sub="image mount").strip())
        try:
            yield path
        finally:
            try:
                self._run("image", "unmount", image_id, sub="image unmount")
            except MigrateError as e:  # the error that got us here matters more
                log.warning("cleanup: %s", e)

    def network_exists(self, name: str) -> bool:
        """Whether Podman has a network of that name (``podman network exists``)."""
        try:
            self._run("network", "exists", name, sub="network exists")
        except PodmanFailed as e:
            if e.status == 1 and not e.said:  # "no" is exit code 1 without a message
                return False
            raise
        return True

    def restore_import(self, archive: Path, name: str) -> str:
        """``podman container restore --import ARCHIVE --name NAME``; the new container's ID.

        With a new name Podman gives the container a new ID and no longer the
        archive's IP address (it would clash with the original's). When CRIU
        fails, Podman says only ``criu failed`` and where its log is: the
        log's own errors are added to the message. Podman may leave the
        container it made behind (created, not running).
        """
        try:
            out = self._run("container", "restore", "--import", str(archive), "--name", name,
                            sub="container restore")
        except PodmanFailed as e:
            log_file = _LOG_FILE.search(e.said)
            errors = criu_errors(Path(log_file.group(1))) if log_file else []
            if not errors:
                raise
            said = _LOG_FILE.sub("", e.said).rstrip(" |")
            raise PodmanFailed(e.sub, f"{said}; CRIU: {'; '.join(errors)}", e.status) from e
        return out.strip().splitlines()[-1] if out.strip() else ""

    def container(self, name: str) -> dict[str, Any] | None:
        """``podman container inspect NAME``, or None when there is no such container."""
        try:
            out = self._run("container", "inspect", name, sub="container inspect")
        except PodmanFailed as e:
            if _NO_CONTAINER.search(e.said):
                return None
            raise
        data = _inspected(out, "container inspect")
        return data[0] if isinstance(data, list) and data and isinstance(data[0], dict) else None

    def remove(self, name: str) -> None:
        """Stop (SIGTERM, then SIGKILL after the stop timeout) and remove the container."""
        self._run("rm", "--force", "--volumes", "--time", str(self.settings.stop_timeout), name)


def criu_errors(log_file: Path, most: int = 3) -> list[str]:
    """The first distinct errors of a CRIU restore log, those of the restored tasks first.

    CRIU's own setup complains too (an rlimit it may not raise without
    CAP_SYS_RESOURCE) without failing; a task's error is the cause. Read from
    the log's last MiB; [] when it cannot be read.
    """
    try:
        with open(log_file, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - _LOG_TAIL))
            text = f.read(_LOG_TAIL).decode("utf-8", "replace")
    except OSError:
        return []
    tasks: list[str] = []
    others: list[str] = []
    for line in text.splitlines():
        m = _CRIU_ERROR.match(line)
        if m and not _CONSEQUENCES.match(m.group(2)):
            found = tasks if m.group(1) else others
            if m.group(2) not in found:
                found.append(m.group(2)[:_ERROR_CHARS])
    return (tasks or others)[:most]


def _pull_error(reference: str, e: PodmanFailed) -> MigrateError:
    """What a failed pull means: the registry refused (auth), could not serve, or Podman."""
    message = f"podman pull {reference} failed: {e.said or f'exit code {e.status}'}"
    if _AUTH_FAILURE.search(e.said):
        return AuthError(message, hint="check the credentials (--creds or the authfile) and "
                         "that they may pull from this repository")
    if re.search(r"manifest unknown|not found|name unknown", e.said, re.I):
        return NotFoundError(message, hint="check the image reference (`migrate build` "
                             "prints what it pushed)")
    if re.search(r"pinging container registry|connection refused|no such host|"
                 r"http: server gave HTTP response|x509|certificate", e.said, re.I):
        return RegistryError(message, hint="check that the registry is reachable; for plain "
                             "HTTP or a private CA, give --no-tls-verify or --cert-dir")
    return DependencyError(message, hint=_HINT)
