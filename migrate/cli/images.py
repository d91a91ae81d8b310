"""`migrate build`: a checkpoint archive as an OCI image CRI-O restores from."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from migrate.cli.options import (
    AUTHFILE,
    CERT_DIR,
    CREDS,
    ENCRYPT_FOR,
    TLS_VERIFY,
    with_registry,
)
from migrate.cli.output import Format, emit, table
from migrate.errors import NotFoundError, PartialFailure, UsageError
from migrate.pipeline.choices import Builder, Compression, default_compression
from migrate.units import human_size

if TYPE_CHECKING:
    from migrate.pipeline.build import BuildReport

# The pipeline (urllib3, zstandard, sh) is imported when `build` runs, not when
# the CLI starts: every other command would pay ~75 ms for it.


_TERMINATION_HINT = ("give a file in an existing directory you may write (a Job's "
                     "/dev/termination-log), or leave --termination-message-path out")


def check_termination_path(path: Path) -> None:
    """Refuse, before any work, a --termination-message-path that could not be written:
    the build (or prune) would be done and its message lost."""
    if path.is_dir():
        raise UsageError(f"--termination-message-path {path}: is a directory",
                         hint=_TERMINATION_HINT)
    if path.exists():
        writable = os.access(path, os.W_OK)
    elif not path.parent.is_dir():
        raise NotFoundError(f"--termination-message-path {path}: no such directory "
                            f"{path.parent}", hint=_TERMINATION_HINT)
    else:
        writable = os.access(path.parent, os.W_OK | os.X_OK)
    if not writable:
        raise UsageError(f"--termination-message-path {path}: not writable",
                         hint=_TERMINATION_HINT)


def write_termination_message(path: Path, text: str) -> None:
    """Write the message; a failure now (the file system filled, the file changed since
    `check_termination_path`) comes after the work and its report: a partial success."""
    try:
        # 0600 and no link followed, as every file the tool writes (a Job's
        # /dev/termination-log is a regular file the kubelet mounted).
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
    except OSError as e:
        raise PartialFailure(f"--termination-message-path {path}: could not write the "
                             f"termination message: {e.strerror or e}",
                             hint="the work is done and reported above; only this message "
                             "is missing") from e


def _human(r: BuildReport) -> str:
    where = "pushed" if r.destination == "registry" else f"wrote to {r.destination}:"
    lines = [f"{where} {r.reference}",
             f"builder {r.builder}, compression {r.compression}"
             + (f", encrypted for {len(r.encrypted_for)} recipient(s)" if r.encrypted_for else ""),
             f"archive {human_size(r.archive_size)}, layer {human_size(r.layer_size)}, "
             f"image {human_size(r.image_size)}"]
    if r.encrypted_for:
        lines.append(f"restore pods must name it by its tag, {r.to_dict()['pod_image']}: "
                     "CRI-O does not decrypt an image pulled by digest")
    lines.append("")
    return "\n".join(lines) + table(("step", "time"),
                                    [(k, f"{v:.3f} s") for k, v in r.timings.items()])


def build(
    ctx: typer.Context,
    archive: Path = typer.Argument(..., help="Checkpoint archive (checkpoint-*.tar).",
                                   metavar="ARCHIVE", show_default=False),
    image: str | None = typer.Option(None, "--image", "-i", help="Image reference to push, "
                                     "REGISTRY/REPOSITORY[:TAG] (with --oci-layout: "
                                     "default localhost/checkpoint-CONTAINER:latest).",
                                     show_default=False),
    builder: Builder = typer.Option(Builder.native, "--builder", help="How to build."),
    push: bool = typer.Option(True, "--push/--no-push", help="Push to the registry."),
    compression: Compression | None = typer.Option(
        None, "--compression", help="Layer compression (default: none; gzip with --builder "
        "buildah).", show_default=False),
    authfile: Path | None = AUTHFILE,
    creds: str | None = CREDS,
    tls_verify: bool = TLS_VERIFY,
    cert_dir: Path | None = CERT_DIR,
    oci_layout: Path | None = typer.Option(None, "--oci-layout", metavar="DIR",
                                           help="With --no-push: write an OCI layout."),
    oci_index: bool = typer.Option(False, "--oci-index", help="Also push an OCI index "
                                   "carrying the annotations (containerd 2.1-2.3)."),
    containerd: bool = typer.Option(False, "--containerd", help="The archive is "
                                    "containerd's, for containerd 2.1-2.3 to restore (an OCI "
                                    "index; CRI-O never restores it). Without it, a "
                                    "containerd archive is refused."),
    encrypt_for: list[str] = ENCRYPT_FOR,
    termination_message_path: Path | None = typer.Option(
        None, "--termination-message-path", metavar="FILE",
        help="Also write the digest and sizes there as JSON (a Job's /dev/termination-log)."),
    output: Format = typer.Option(Format.table, "-o", "--output", help="Output format."),
) -> None:
    """Build an OCI checkpoint image from an archive and push it (or write an OCI layout)."""
    from migrate.adapters.registry.reference import parse_reference
    from migrate.pipeline.annotations import ROOTFS_IMAGE_NAME
    from migrate.pipeline.build import BuildRequest, build_image

    if termination_message_path is not None:
        check_termination_path(termination_message_path)
    settings = with_registry(ctx.obj, authfile=authfile, creds=creds, tls_verify=tls_verify,
                             cert_dir=cert_dir)
    report = build_image(BuildRequest(
        archive=archive, image=parse_reference(image) if image is not None else None,
        builder=builder, compression=compression or default_compression(builder), push=push,
        oci_layout=oci_layout, oci_index=oci_index, containerd=containerd,
        encrypt_for=tuple(encrypt_for)), settings)
    emit(report.to_dict(), output.value, lambda: _human(report))  # first: what was built
    if termination_message_path is not None:
        # Kubernetes keeps 4 KiB of a termination message: the few fields a caller needs.
        write_termination_message(termination_message_path, json.dumps({
            "reference": report.reference, "digest": report.digest,
            "archive_size": report.archive_size, "image_size": report.image_size,
            "rootfs_image": report.annotations.get(ROOTFS_IMAGE_NAME, ""),
            "freezing_time_us": report.criu_stats.get("freezing_time"),
            "frozen_time_us": report.criu_stats.get("frozen_time")}))


def register(app: typer.Typer) -> None:
    """Attach the image commands to the root app."""
    app.command("build")(build)
