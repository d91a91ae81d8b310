"""Build a checkpoint image with buildah and, optionally, push it.

The steps are those of ``checkpointctl build``: a scratch container, the
checkpoint archive unpacked into its root, the checkpoint annotations, a commit
and a push. Every buildah call goes through `_Buildah`, which turns failures
into our errors carrying the tail of buildah's stderr; the working container and
the local image are removed on every path, failures included.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

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
    UsageError,
)
from migrate.settings import Secret

log = logging.getLogger(__name__)

_INSTALL = "install it: apt-get install buildah (Debian/Ubuntu) or dnf install buildah"
_AUTH_FAILURE = re.compile(r"unauthorized|authentication required|\b40[13]\b|access.*denied", re.I)
_COMPRESSION = {"none": ["--disable-compression"], "gzip": ["--compression-format", "gzip"],
                "zstd": ["--compression-format", "zstd"]}


@dataclass(frozen=True)
class BuildahPush:
    """Where and how to push (``push=None`` builds only)."""

    destination: str
    """``registry/repo:tag`` (pushed as ``docker://...``) or transport-qualified
    (``oci:/dir:tag``, ``oci-archive:...``, anything with ``://``), used verbatim."""
    tls_verify: bool = True
    cert_dir: Path | None = None
    authfile: Path | None = None
    creds: tuple[str, Secret] | None = None
    """Wins over ``authfile``; handed to buildah in a private temporary authfile."""
    compression: str = "gzip"
    """``none``, ``gzip`` or ``zstd``. buildah 1.28 ignores ``none`` for docker://
    and oci: destinations (containers/image always compresses there)."""
    encryption_keys: tuple[str, ...] = ()
    """``jwe:PUBLIC_KEY_FILE`` recipients: buildah (containers/image with ocicrypt)
    encrypts the layer as it pushes (``--encryption-key``)."""


@dataclass(frozen=True)
class BuildahResult:
    """What was built: the image id, the pushed manifest digest, seconds per step."""

    image_id: str
    digest: str | None
    timings: dict[str, float]


class _Buildah:
    """The one command-runner: every buildah call, its errors and their scrubbing."""

    def __init__(self, executable: str, timeout: float | None, hidden: list[str]) -> None:
        try:
            self._cmd = sh.Command(executable)
        except sh.CommandNotFound as e:
            detail = "" if executable == "buildah" else f" ({executable} not found)"
            raise DependencyError(f"buildah is not installed{detail}", hint=_INSTALL) from e
        self._timeout = timeout
        self._hidden = [h for h in hidden if h]

    def _scrub(self, text: str) -> str:
        for h in self._hidden:
            text = text.replace(h, "***")
        return text

    def __call__(self, *args: str) -> str:
        """Run ``buildah ARGS``; stdout on success, a `MigrateError` otherwise."""
        sub = args[0]
        log.debug("buildah %s", " ".join(args))
        try:  # no tty: buildah would draw progress bars; stderr apart: it is the error text
            out = self._cmd(*args, _err_to_out=False, _tty_out=False, _timeout=self._timeout,
                            _encoding="utf-8", _decode_errors="replace")
        except sh.TimeoutException as e:
            cls = RegistryError if sub == "push" else DependencyError
            raise cls(f"buildah {sub} timed out after {self._timeout:g} s",
                      hint="retry, or allow more time") from e
        except sh.ErrorReturnCode as e:
            raw = e.stderr.decode("utf-8", "replace")
            err = _error(sub, self._scrub(tail(raw)), auth=bool(_AUTH_FAILURE.search(raw)))
            # sh's own exception quotes stderr verbatim: keep it off the chain if
            # buildah echoed a secret, so not even a --debug traceback shows it.
            raise err from (None if self._scrub(raw) != raw else e)
        return str(out)


def _error(sub: str, said: str, auth: bool) -> MigrateError:
    """Our error for a failed ``buildah SUB``: only a push can meet the registry."""
    message = f"buildah {sub} failed: {said or 'no error message'}"
    if sub != "push":
        return DependencyError(message, hint="see buildah's message; `buildah info` shows "
                               "its storage and configuration")
    if auth:
        return AuthError(message, hint="check the credentials (--creds or the authfile) and "
                         "that they may push to this repository")
    return RegistryError(message, hint="check that the registry is reachable; for plain HTTP "
                         "or a private CA, disable TLS verification or give a cert dir")


def _target(destination: str) -> tuple[str, str | None]:
    """buildah's destination, and the registry host when it is a docker:// one."""
    if destination.startswith(("oci:", "oci-archive:")) or "://" in destination:
        if not destination.startswith("docker://"):
            return destination, None
        destination = destination.removeprefix("docker://")
    return f"docker://{destination}", parse_reference(destination).registry


def _write_private(path: Path, data: str) -> Path:
    """Create ``path`` 0600 from the start: no moment where others could read it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(data)
    return path


@contextmanager
def _timed(timings: dict[str, float], step: str) -> Iterator[None]:
    """Record the seconds the block took as ``timings[step]``, even when it fails."""
    start = time.monotonic()
    try:
        yield
    finally:
        timings[step] = time.monotonic() - start


def _push(run: _Buildah, image: str, push: BuildahPush) -> str:
    """(5) Push ``image``; credentials travel in a 0600 file, never on buildah's argv."""
    target, host = _target(push.destination)
    with tempfile.TemporaryDirectory(prefix="migrate-buildah-") as tmp:  # mode 0700
        digestfile = Path(tmp, "digest")
        args = ["push", "--quiet", "--digestfile", str(digestfile)]
        args += [] if push.tls_verify else ["--tls-verify=false"]
        args += ["--cert-dir", str(push.cert_dir)] if push.cert_dir else []
        authfile = push.authfile
        if push.creds:
            auths = {"auths": {host or "": {"auth": auth_token(push.creds)}}}
            authfile = _write_private(Path(tmp, "auth.json"), json.dumps(auths))
        args += ["--authfile", str(authfile)] if authfile else []
        for key in push.encryption_keys:  # a public key's path: nothing secret on argv
            args += ["--encryption-key", key]
        run(*args, *_COMPRESSION[push.compression], image, target)
        digest = digestfile.read_text().strip() if digestfile.exists() else ""
    if not digest:
        raise DependencyError("buildah push wrote no digest", hint="check buildah's version")
    return digest


def build_with_buildah(archive: Path, annotations: Mapping[str, str], *, push: BuildahPush | None,
                       executable: str = "buildah", timeout: float | None = None) -> BuildahResult:
    """Build an OCI image whose root is ``archive`` unpacked, annotated; push it if asked.

    ``timeout`` bounds each buildah call (seconds). The local container and
    image are always removed; cleanup failures are logged, never raised.
    """
    if not archive.is_file():
        raise NotFoundError(f"{archive}: no such checkpoint archive")
    if push:  # refuse bad input before anything exists that would need cleaning up
        _target(push.destination)
        if push.compression not in _COMPRESSION:
            raise UsageError(f"unknown compression {push.compression!r}",
                             hint="use one of: " + ", ".join(_COMPRESSION))
    creds = push.creds if push else None
    run = _Buildah(executable, timeout, [creds[1].reveal(), auth_token(creds)] if creds else [])
    name = f"migrate-checkpoint-{secrets.token_hex(8)}"
    timings: dict[str, float] = {}
    container = image = None
    try:
        with _timed(timings, "from"):  # (1) an empty working container, named to be found
            run("from", "--name", name, "scratch")
            container = name
        with _timed(timings, "add"):  # (2) buildah unpacks a tar source into the root
            run("add", container, str(archive.resolve()), "/")
        if annotations:
            with _timed(timings, "config"):  # (3) one call for all (none: nothing to set)
                run("config", *(f"--annotation={k}={v}" for k, v in annotations.items()),
                    container)
        with _timed(timings, "commit"):  # (4) a unique local name: concurrent builds never clash
            image_id = run("commit", "--quiet", "--format", "oci", container,
                           f"localhost/{name}:latest").strip().rsplit("\n", 1)[-1]
            image = f"localhost/{name}:latest"
        digest = None
        if push:
            with _timed(timings, "push"):
                digest = _push(run, image, push)
    finally:
        with _timed(timings, "cleanup"):
            _cleanup(run, container, image)
    return BuildahResult(image_id, digest, timings)


def _cleanup(run: _Buildah, container: str | None, image: str | None) -> None:
    """Remove the working container and the local image; log, never raise, on failure."""
    steps = [("rm", container)] if container else []
    steps += [("rmi", image)] if image else []
    for sub, what in steps:
        try:
            run(sub, what)
        except MigrateError as e:  # the error that got us here matters more
            log.warning("cleanup: %s", e)


def buildah_version(executable: str = "buildah", timeout: float = 30.0) -> str:
    """``buildah --version``'s version number; `DependencyError` when it cannot run."""
    out = _Buildah(executable, timeout, [])("--version")
    # "buildah version 1.28.2 (image-spec 1.0.2-dev, runtime-spec 1.0.2-dev)"
    words = out.split()
    return words[2] if len(words) > 2 and words[1] == "version" else out.strip()
