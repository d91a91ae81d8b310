"""Shared fixtures: generated checkpoint archives and a CLI runner.

Archives are generated at test time by e2e.archives.archivegen, their CRIU images
encoded by CRIU's own pycriu (the `criu` Debian package, installed by
scripts/setup), so the reader is checked against an independent encoder.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from e2e.archives.archivegen import ArchiveSpec, build
from e2e.archives.criu_encode import crit_available
from migrate.cli.app import run

# tests.real uses the other two: they are loaded (and their asserts rewritten) first.
pytest_plugins = ["tests.registries", "tests.fake_registry", "tests.cluster", "tests.real"]

REPO = Path(__file__).resolve().parent.parent


#: Files handed out first: the real nodes' take about half the suite's time, and with
#: pytest-xdist's --dist loadfile (scripts/test) they then run beside all the others.
FIRST = ("test_real_node.py",)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.path.name not in FIRST)  # stable: in-file order kept


@pytest.fixture(scope="session", autouse=True)
def _require_crit() -> None:
    # The suite's fixtures must come from CRIU's encoder; a silent fallback to
    # our own would make the reader test itself.
    if not crit_available():
        pytest.exit("crit/pycriu (Debian package criu) is required: run scripts/setup", 3)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory,
                   monkeypatch: pytest.MonkeyPatch) -> Path:
    """Keep the tool's caches and journals out of the real home directory."""
    cache = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("MIGRATE_CACHE_DIR", str(cache))
    monkeypatch.setenv("MIGRATE_STATE_DIR", str(tmp_path_factory.mktemp("state")))
    return cache


@pytest.fixture(scope="session")
def counters_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The seed article's `counters` checkpoint, as CRI-O writes it."""
    out = tmp_path_factory.mktemp("archives") / "checkpoint-counters_default-counter-2023.tar"
    return build(ArchiveSpec(use_crit=True), out)


@pytest.fixture
def make_archive(tmp_path: Path) -> Callable[..., Path]:
    """Build a variant: ``make_archive(name="x.tar", **ArchiveSpec fields)``."""

    def make(name: str = "checkpoint.tar", **fields: Any) -> Path:
        fields.setdefault("use_crit", True)
        return build(ArchiveSpec(**fields), tmp_path / name)

    return make


@dataclass
class Result:
    """What a CLI run printed and returned."""

    code: int
    out: str
    err: str

    def json(self) -> Any:
        """stdout parsed as JSON."""
        return json.loads(self.out)


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., Result]:
    """Run the CLI in-process through its real boundary (`migrate.cli.app.run`)."""

    def invoke(*args: str | os.PathLike[str]) -> Result:
        capsys.readouterr()
        code = run([str(a) for a in args])
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return invoke


@pytest.fixture
def spawned() -> Iterator[list[subprocess.Popen[str]]]:
    """Processes a test starts (it appends them); any still running when it ends (a
    failed test) are killed."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


@contextlib.contextmanager
def deadline(seconds: int, what: str) -> Iterator[None]:
    """Fail the block with AssertionError once it has run ``seconds`` (SIGALRM, so the
    main thread only): a hang a test looks for fails that test rather than stalling the
    suite. The previous SIGALRM handler is put back."""
    def expired(signum: int, frame: object) -> None:
        raise AssertionError(f"{what} did not end within {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def run_binary(args: Sequence[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    """Run the installed console script, as an operator would."""
    exe = Path(sys.executable).parent / "migrate"
    return subprocess.run([str(exe), *args], capture_output=True, text=True, **kw)


def interrupt_at(monkeypatch: pytest.MonkeyPatch, stage: str) -> None:
    """Make the migration's ``stage`` stop as Ctrl-C stops it, at its start."""
    from migrate.pipeline import migration

    def interrupted(run: migration.Run) -> dict[str, Any]:
        raise KeyboardInterrupt

    monkeypatch.setitem(migration.STAGE_FUNCTIONS, stage, interrupted)


def done_then(real: Callable[..., Any], error: BaseException) -> Callable[..., Any]:
    """``real``, then ``error``: the call was carried out and its caller never heard (an
    answer lost, or the process stopped just after it)."""
    def call(*args: Any, **kw: Any) -> Any:
        real(*args, **kw)
        raise error
    return call


def journal_id_of(err: str) -> str:
    """The id of the migration an interruption stopped, from what it said."""
    found = re.search(r"migration (pod-\S+) interrupted", err)
    assert found, err
    return found[1]
