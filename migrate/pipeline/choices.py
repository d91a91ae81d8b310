"""The choices a request makes: the CLI offers them as these enums and the pipeline
takes them as they are (no string to check again). A module of its own, and light:
the CLI's option declarations import it when it starts."""

from __future__ import annotations

from enum import StrEnum


class Builder(StrEnum):
    """Image builders."""

    native = "native"
    buildah = "buildah"


class Compression(StrEnum):
    """Layer compressions."""

    none = "none"
    gzip = "gzip"
    zstd = "zstd"


class OnInterrupt(StrEnum):
    """What an interrupted drain leaves behind."""

    stop = "stop"  # its migrations in flight stopped at a stage boundary: --resume goes on
    rollback = "rollback"  # those undone and the node uncordoned: nothing to resume


class BuildOn(StrEnum):
    """Where the checkpoint image is built."""

    auto = "auto"
    local = "local"
    node = "node"


def default_compression(builder: Builder) -> Compression:
    """What --compression is when not given: none, or gzip for buildah, which cannot push
    uncompressed layers (containers/image compresses whatever it pushes)."""
    return Compression.gzip if builder is Builder.buildah else Compression.none
