"""Settings: one frozen dataclass tree, built once at the CLI edge and passed down.

Nothing below the CLI reads the environment or module-level state; a test
builds the settings it needs and hands them in.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_CHECKPOINT_DIR = Path("/var/lib/kubelet/checkpoints")


@dataclass(frozen=True)
class ArchiveSettings:
    """Limits for reading untrusted checkpoint archives."""

    max_metadata_bytes: int = 64 * 1024 * 1024
    """Largest JSON/protobuf member read whole into memory (bytes); larger is refused."""

    read_chunk_bytes: int = 4 * 1024 * 1024
    """Block size for streaming reads of memory pages (bytes); bounds memparse's memory."""

    max_string_bytes: int = 1024 * 1024
    """Longest argv or environment block read from process memory (bytes)."""

    regex_window_bytes: int = 64 * 1024
    """Overlap kept between blocks for regex search: the longest match found (bytes)."""


@dataclass(frozen=True)
class OutputSettings:
    """How results reach the user."""

    verbose: int = 0
    """Count of -v flags: 1 logs steps, 2 logs details."""

    debug: bool = False
    """Show tracebacks and debug logs."""


@dataclass(frozen=True)
class Settings:
    """Root of the settings tree."""

    output: OutputSettings = field(default_factory=OutputSettings)
    archive: ArchiveSettings = field(default_factory=ArchiveSettings)
    checkpoint_dirs: tuple[Path, ...] = (DEFAULT_CHECKPOINT_DIR,)
    """Where `migrate list` looks when no directory is given."""


def load_settings(
    *, debug: bool = False, verbose: int = 0, env: Mapping[str, str] | None = None
) -> Settings:
    """Build the settings from command-line values and the environment.

    ``MIGRATE_CHECKPOINT_DIRS`` (``:``-separated) overrides the default list
    directories; ``MIGRATE_DEBUG=1`` turns on debug like ``--debug``.
    """
    env = os.environ if env is None else env
    dirs = tuple(Path(p) for p in env.get("MIGRATE_CHECKPOINT_DIRS", "").split(":") if p)
    return Settings(
        output=OutputSettings(
            verbose=verbose, debug=debug or env.get("MIGRATE_DEBUG", "") in ("1", "true")
        ),
        checkpoint_dirs=dirs or (DEFAULT_CHECKPOINT_DIR,),
    )
