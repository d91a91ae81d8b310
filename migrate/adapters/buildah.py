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
import stat
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


def _layout_dir(destination: str) -> Path | None:
    """The directory of an ``oci:DIR[:REF]`` destination (containers/image splits
    at the first colon), else None."""
    if not destination.startswith("oci:"):
        return None
    directory = destination.removeprefix("oci:").split(":", 1)[0]
    return Path(directory) if directory else None


def _layout_error(layout: Path, e: OSError) -> UsageError:
    return UsageError(f"{layout}: cannot write the OCI layout: {e.strerror or e}",
                      hint=f"check that {layout} is a directory you may write")


def _prepare_layout(layout: Path) -> bool:
    """Make the directories the blobs go into 0700 before buildah writes them
    (containers/image makes them 0755, its blobs 0644); True when ``layout`` is new."""
    if layout.is_dir():  # the user's directory: its mode is theirs; blobs/ is the layout's
        new, targets = False, [layout / "blobs", layout / "blobs" / "sha256"]
    elif layout.parent.is_dir():
        new, targets = True, [layout]
    else:  # buildah makes the parents too; `_private_layout` narrows the root after
        return True
    try:
        for d in targets:
            d.mkdir(mode=0o700, exist_ok=True)  # exist_ok: a concurrent build made it
    except OSError as e:
        raise _layout_error(layout, e) from e
    return new


def _private_file(name: str, dir_fd: int) -> None:
    """Make a regular file 0600; a symlink (or anything else) is left alone."""
    try:
        if not stat.S_ISREG(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode):
            return
        # O_NOFOLLOW: a symlink swapped in since the stat is not followed (and the
        # chmod goes through the descriptor: Linux has no lchmod).
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                     dir_fd=dir_fd)
    except (FileNotFoundError, NotADirectoryError):
        return
    try:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


def _is_dir(name: str, dir_fd: int) -> bool:
    """A directory, not a symlink to one."""
    try:
        return stat.S_ISDIR(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except FileNotFoundError:
        return False


def _private_layout(layout: Path, new: bool) -> None:
    """Narrow the layout buildah wrote to 0700 directories and 0600 files: containers/image
    makes blobs and index.json 0644, and a checkpoint holds process memory.

    Only the layout's own entries (oci-layout, index.json, blobs/), and the root when
    it is ``new``, are changed: DIR may be a directory of the user's holding other
    files. No symlink is followed.
    """
    try:
        root = os.open(layout, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        return  # buildah failed before writing anything
    except OSError as e:
        raise _layout_error(layout, e) from e
    try:
        if new:
            os.fchmod(root, 0o700)
        for name in ("oci-layout", "index.json"):
            _private_file(name, root)
        if _is_dir("blobs", root):
            # fwalk opens each directory without following a symlink (nor descending
            # into one) and yields its descriptor.
            for _, _, files, fd in os.fwalk("blobs", dir_fd=root, follow_symlinks=False):
                os.fchmod(fd, 0o700)
                for name in files:
                    _private_file(name, fd)
    except OSError as e:
        raise _layout_error(layout, e) from e
    finally:
        os.close(root)


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
        layout = _layout_dir(target)
        new = _prepare_layout(layout) if layout is not None else False
        try:
            run(*args, *_COMPRESSION[push.compression], image, target)
        except BaseException:
            if layout is not None:  # blobs buildah wrote before failing
                try:
                    _private_layout(layout, new)
                except MigrateError as e:  # buildah's error matters more
                    log.warning("%s", e)
            raise
        if layout is not None:
            _private_layout(layout, new)
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
