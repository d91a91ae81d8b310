"""Settings: one frozen dataclass tree, built once at the CLI edge and passed down.

Nothing below the CLI reads the environment or module-level state; a test
builds the settings it needs and hands them in.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from migrate.errors import UsageError
from migrate.units import parse_size

DEFAULT_CHECKPOINT_DIR = Path("/var/lib/kubelet/checkpoints")
#: Where Kubernetes puts a pod's service-account token, CA and namespace.
SERVICEACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


@dataclass(frozen=True)
class ArchiveSettings:
    """Limits for reading untrusted checkpoint archives."""

    max_metadata_bytes: int = 64 * 1024 * 1024
    """Largest CRIU image (protobuf) member read whole into memory (bytes); larger is refused."""

    max_json_bytes: int = 4 * 1024 * 1024
    """Largest JSON member (config.dump, spec.dump, deleted.files, bind.mounts) parsed (bytes).

    Parsed JSON takes up to ~30 times its size in memory (``[[],[],...]``), so
    this is much less than `max_metadata_bytes`; a CRI-O spec.dump is tens of KiB.
    """

    max_json_values: int = 262_144
    """Most values (items and members, counted from commas and brackets) in archive JSON.

    With `max_json_bytes`, bounds what a parsed document takes to ~25 MB; a
    spec.dump holds a few thousand.
    """

    max_json_depth: int = 64
    """Deepest nesting of arrays and objects accepted in archive JSON (an OCI spec needs ~8)."""

    max_members: int = 250_000
    """Most entries indexed in one tar (the archive, or its rootfs-diff.tar); more is refused.

    The index keeps ~250 bytes per entry, and a tar of empty entries holds one
    per 512 bytes; a checkpoint has a few per process and thread.
    """

    read_chunk_bytes: int = 4 * 1024 * 1024
    """Block size for streaming reads of memory pages (bytes); bounds memparse's memory."""

    max_string_bytes: int = 1024 * 1024
    """Longest argv or environment block read from process memory (bytes)."""

    max_strings_total_bytes: int = 32 * 1024 * 1024
    """Memory all processes' argv and environment strings may take together (bytes).

    Each string is counted as its length plus 64 (what Python needs to hold it);
    strings past the budget are left out with a warning.
    """

    max_open_files: int = 262_144
    """Most descriptors ``inspect --files``/``--sockets`` reads, all processes together.

    Each is kept with its file until the output is written (~1 KiB in JSON);
    a container's processes rarely hold more than a few thousand.
    """

    regex_window_bytes: int = 64 * 1024
    """Overlap kept between blocks for regex search: the longest match found (bytes)."""

    max_matches: int = 10_000
    """Matches memparse reports before it stops searching, with a warning."""

    max_match_text_bytes: int = 32 * 1024 * 1024
    """Characters of match text (with context) memparse holds before it stops, with a warning."""

    tmp_dir: Path = Path("/tmp")
    """Where a compressed archive is decompressed to (an anonymous 0600 file, gone when
    the command ends); the CLI sets it from --tmp-dir, else $TMPDIR."""

    max_uncompressed_bytes: int = 64 * 1024**3
    """Largest size a compressed archive may decompress to (bytes); more is refused."""

    min_free_bytes: int = 256 * 1024 * 1024
    """Space left free on `tmp_dir`'s file system while decompressing (bytes): a
    decompression that would eat into it is refused before the disk fills."""


@dataclass(frozen=True)
class OutputSettings:
    """How results reach the user."""

    verbose: int = 0
    """Count of -v flags: 1 logs steps, 2 logs details."""

    debug: bool = False
    """Show tracebacks and debug logs."""


class Secret:
    """A credential that never shows itself in logs, errors or reprs."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The secret itself, for the one place that sends it."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class RetrySettings:
    """Retries of transient failures (connection errors, 5xx, 429, timeouts)."""

    attempts: int = 5
    """Tries in all, the first included."""

    initial_wait: float = 0.5
    """Seconds before the first retry; doubles each time (a Retry-After header wins)."""

    max_wait: float = 20.0
    """Longest wait between two tries (seconds)."""


@dataclass(frozen=True)
class RegistrySettings:
    """How to reach and authenticate to image registries."""

    tls_verify: bool = True
    """Verify TLS certificates; when False, plain HTTP is also allowed."""

    cert_dir: Path | None = None
    """Directory of CA certificates (*.crt) and a client pair (*.cert, *.key);
    default: /etc/containers/certs.d/<host:port> when it exists."""

    authfile: Path | None = None
    """Credentials file (auth.json / docker config.json); default: the usual places."""

    creds: tuple[str, Secret] | None = None
    """User and password from --creds; wins over any file."""

    timeout: float = 60.0
    """Seconds to wait for the registry to connect or answer one read."""

    chunk_bytes: int = 1024 * 1024
    """Block size when streaming a layer (bytes)."""

    retry: RetrySettings = field(default_factory=RetrySettings)

    env: tuple[tuple[str, str], ...] = ()
    """Environment values the credential lookup needs (REGISTRY_AUTH_FILE,
    XDG_RUNTIME_DIR, HOME, DOCKER_CONFIG), captured at the CLI edge."""


@dataclass(frozen=True)
class KubeSettings:
    """How to reach the cluster."""

    kubeconfig: Path | None = None
    """A kubeconfig file; default: `default_kubeconfig`, else in-cluster config."""
    default_kubeconfig: str = "~/.kube/config"
    """The kubeconfig files read without --kubeconfig: $KUBECONFIG (``:``-separated, merged
    as kubectl does), captured at the CLI edge, else ~/.kube/config."""

    context: str | None = None
    """The kubeconfig context; default: its current-context."""

    namespace: str | None = None
    """Namespace for commands that take one; default: the context's, else "default"."""

    request_timeout: float = 30.0
    """Seconds for one API request (checkpoints and watches set their own)."""

    retry: RetrySettings = field(default_factory=RetrySettings)

    serviceaccount_dir: Path = SERVICEACCOUNT_DIR
    """The in-cluster service-account directory (token, ca.crt, namespace). Only a
    stand-in for a pod sets another one (the simulator's runner, through
    MIGRATE_SERVICEACCOUNT_DIR): real pods always have it at this path."""


@dataclass(frozen=True)
class CrictlSettings:
    """How `migrate sandbox --run` drives crictl."""

    executable: str = "crictl"
    """The crictl program: a name looked up on PATH, or a path."""

    runtime_endpoint: str | None = None
    """CRI endpoint (unix:///run/crio/crio.sock); default: crictl's own configuration."""

    timeout: float = 60.0
    """Seconds crictl may wait for the runtime on each call (its --timeout); at least 60:
    the base image's pull, and a restore of much memory, take long before it answers."""


@dataclass(frozen=True)
class PodmanSettings:
    """How `migrate sandbox --engine podman` drives Podman (and `migrate sandbox stop`)."""

    executable: str = "podman"
    """The podman program: a name looked up on PATH, or a path."""

    timeout: float = 600.0
    """Seconds one podman call may take: a pull of a large checkpoint image, or a
    restore of much memory, takes minutes."""

    stop_timeout: int = 10
    """Seconds `migrate sandbox stop` gives the restored processes after SIGTERM
    before Podman kills them (podman rm --time)."""


@dataclass(frozen=True)
class Settings:
    """Root of the settings tree."""

    output: OutputSettings = field(default_factory=OutputSettings)
    archive: ArchiveSettings = field(default_factory=ArchiveSettings)
    registry: RegistrySettings = field(default_factory=RegistrySettings)
    kube: KubeSettings = field(default_factory=KubeSettings)
    crictl: CrictlSettings = field(default_factory=CrictlSettings)
    podman: PodmanSettings = field(default_factory=PodmanSettings)
    checkpoint_dirs: tuple[Path, ...] = (DEFAULT_CHECKPOINT_DIR,)
    """Where `migrate list` looks when no directory is given."""

    cache_dir: Path | None = None
    """Where the tool keeps caches (layer digests); None: no cache."""

    state_dir: Path | None = None
    """Where migration journals live (resume, rollback, history); None: nowhere,
    and commands that need a journal refuse to run."""

    node_root: str | None = None
    """Where this machine sees a node's filesystem: a path with ``{node}`` in it,
    e.g. ``/mnt/nodes/{node}`` when each node's checkpoint directory is shared.
    None: only the node the tool runs on (paths as they are)."""


AUTH_ENV = ("REGISTRY_AUTH_FILE", "XDG_RUNTIME_DIR", "HOME", "DOCKER_CONFIG")


def auth_env(env: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """The environment values credential lookup depends on."""
    return tuple((k, env[k]) for k in AUTH_ENV if k in env)


def load_settings(
    *, debug: bool = False, verbose: int = 0, tmp_dir: Path | None = None,
    env: Mapping[str, str] | None = None
) -> Settings:
    """Build the settings from command-line values and the environment.

    ``MIGRATE_CHECKPOINT_DIRS`` (``:``-separated) overrides the default list
    directories; ``MIGRATE_DEBUG=1`` turns on debug like ``--debug``;
    ``MIGRATE_STATE_DIR`` and ``MIGRATE_NODE_ROOT`` set `Settings.state_dir`
    and `Settings.node_root`; ``MIGRATE_SERVICEACCOUNT_DIR`` moves the in-cluster
    service-account directory (`KubeSettings.serviceaccount_dir`). Compressed
    archives are decompressed under ``tmp_dir`` (--tmp-dir), else ``$TMPDIR``,
    else /tmp, up to ``MIGRATE_MAX_UNCOMPRESSED`` (bytes, or with a K/M/G/T
    binary suffix) each.
    """
    env = os.environ if env is None else env
    dirs = tuple(Path(p) for p in env.get("MIGRATE_CHECKPOINT_DIRS", "").split(":") if p)
    return Settings(
        archive=_archive_settings(tmp_dir, env),
        output=OutputSettings(
            verbose=verbose, debug=debug or env.get("MIGRATE_DEBUG", "") in ("1", "true")
        ),
        checkpoint_dirs=dirs or (DEFAULT_CHECKPOINT_DIR,),
        registry=RegistrySettings(env=auth_env(env)),
        kube=KubeSettings(serviceaccount_dir=Path(env.get("MIGRATE_SERVICEACCOUNT_DIR")
                                                  or SERVICEACCOUNT_DIR),
                          default_kubeconfig=env.get("KUBECONFIG") or "~/.kube/config"),
        cache_dir=_cache_dir(env),
        state_dir=_state_dir(env),
        node_root=env.get("MIGRATE_NODE_ROOT") or None,
    )


def _archive_settings(tmp_dir: Path | None, env: Mapping[str, str]) -> ArchiveSettings:
    base = ArchiveSettings()
    limit = env.get("MIGRATE_MAX_UNCOMPRESSED")
    try:
        max_uncompressed = parse_size(limit) if limit else base.max_uncompressed_bytes
    except ValueError as e:
        raise UsageError(f"MIGRATE_MAX_UNCOMPRESSED={limit!r}: {e}",
                         hint="give bytes, or a number with K, M, G or T (binary units)") from e
    return dataclasses.replace(
        base, tmp_dir=tmp_dir or Path(env.get("TMPDIR") or "/tmp"),
        max_uncompressed_bytes=max_uncompressed)


def _state_dir(env: Mapping[str, str]) -> Path | None:
    """$MIGRATE_STATE_DIR, else $XDG_STATE_HOME/migrate, else ~/.local/state/migrate."""
    if env.get("MIGRATE_STATE_DIR"):
        return Path(env["MIGRATE_STATE_DIR"])
    if env.get("XDG_STATE_HOME"):
        return Path(env["XDG_STATE_HOME"]) / "migrate"
    return Path(env["HOME"]) / ".local" / "state" / "migrate" if env.get("HOME") else None


def _cache_dir(env: Mapping[str, str]) -> Path | None:
    """$MIGRATE_CACHE_DIR, else $XDG_CACHE_HOME/migrate, else ~/.cache/migrate."""
    if env.get("MIGRATE_CACHE_DIR"):
        return Path(env["MIGRATE_CACHE_DIR"])
    if env.get("XDG_CACHE_HOME"):
        return Path(env["XDG_CACHE_HOME"]) / "migrate"
    return Path(env["HOME"]) / ".cache" / "migrate" if env.get("HOME") else None
