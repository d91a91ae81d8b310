"""The CLI boundary: entry points, global options, exit codes, no tracebacks."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from migrate import __version__
from migrate.errors import ExitCode, MigrateError
from tests.conftest import REPO, Result, run_binary

Cli = Callable[..., Result]


def test_version_and_help(cli: Cli) -> None:
    assert cli("--version").out == f"migrate {__version__}\n"
    r = cli("--help")
    assert r.code == 0
    for command in ("show", "inspect", "memparse", "rootfs-diff", "list"):
        assert command in r.out


@pytest.mark.parametrize("entry", [["migrate"], ["kubectl-migrate"], ["-m", "migrate"]])
def test_entry_points(entry: list[str], counters_archive: Path) -> None:
    """`migrate`, `kubectl migrate` (a kubectl plugin) and `python -m migrate`."""
    bindir = Path(sys.executable).parent
    cmd = [sys.executable, *entry] if entry[0] == "-m" else [str(bindir / entry[0])]
    r = subprocess.run([*cmd, "show", str(counters_archive), "-o", "json"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert '"container_name": "counter"' in r.stdout


def test_kubectl_finds_the_plugin(counters_archive: Path) -> None:
    bindir = Path(sys.executable).parent
    r = subprocess.run(["kubectl", "migrate", "show", str(counters_archive)],
                       capture_output=True, text=True,
                       env={"PATH": f"{bindir}:/usr/bin:/bin", "HOME": "/tmp"})
    assert r.returncode == 0, r.stderr
    assert "counter" in r.stdout


def test_usage_errors_exit_2_with_hint(cli: Cli) -> None:
    r = cli("show")
    assert r.code == ExitCode.USAGE
    assert r.err == "error: Missing argument 'ARCHIVE...'.\nhint: see 'migrate show --help'\n"
    r = cli("frobnicate")
    assert r.code == 2 and r.err.startswith("error: No such command 'frobnicate'.")
    r = cli("show", "x.tar", "-o", "xml")
    assert r.code == 2 and "'xml' is not one of 'table', 'json', 'yaml'" in r.err


def test_missing_archive_exits_4(cli: Cli, tmp_path: Path) -> None:
    r = cli("show", tmp_path / "nope.tar")
    assert r.code == ExitCode.NOT_FOUND
    assert r.err == (f"error: {tmp_path / 'nope.tar'}: no such file\n"
                     "hint: check the archive path (see `migrate list`)\n")


def test_unexpected_exception_is_one_line_without_traceback(
        cli: Cli, counters_archive: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from migrate.adapters import checkpoint

    def boom(*a: object, **k: object) -> None:
        raise RuntimeError("kaput")

    monkeypatch.setattr(checkpoint, "engine_of", boom)
    r = cli("show", counters_archive)
    assert r.code == ExitCode.ERROR
    assert r.err == ("error: unexpected RuntimeError: kaput\n"
                     "hint: this is a bug in migrate; rerun with --debug and report the "
                     "traceback\n")
    r = cli("--debug", "show", counters_archive)
    assert r.code == ExitCode.ERROR
    assert "Traceback (most recent call last)" in r.err and "kaput" in r.err


def test_interrupt_exits_130(cli: Cli, counters_archive: Path,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    from migrate.adapters import checkpoint

    def interrupted(*a: object, **k: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "engine_of", interrupted)
    r = cli("show", counters_archive)
    assert (r.code, r.err) == (130, "error: interrupted\n")


def test_every_error_class_has_a_documented_exit_code() -> None:
    readme = (REPO / "README.md").read_text()
    for code in ExitCode:
        assert f"| {code.value} |" in readme, f"exit code {code.name} not documented"

    def subclasses(cls: type) -> list[type]:
        return [cls, *[s for c in cls.__subclasses__() for s in subclasses(c)]]

    for cls in subclasses(MigrateError):
        assert isinstance(cls.exit_code, ExitCode)


def test_output_closed_early_is_not_an_error(counters_archive: Path) -> None:
    r = subprocess.run(f"'{Path(sys.executable).parent / 'migrate'}' inspect "
                       f"'{counters_archive}' --all | head -1", shell=True,
                       capture_output=True, text=True)
    assert r.stdout == "counter\n"
    assert "Traceback" not in r.stderr and "error" not in r.stderr


def test_verbose_logging_goes_to_stderr(counters_archive: Path) -> None:
    r = run_binary(["-vv", "show", str(counters_archive), "-o", "json"])
    assert r.returncode == 0
    assert r.stdout.startswith("[")


def test_start_up_imports_stay_light() -> None:
    """Every command pays for what the CLI imports at start-up; the heavy modules load on
    first use (bench/archive_bench.py's memparse-vs-grep budget depends on it)."""
    code = ("import sys, migrate.cli.app; "
            "print(','.join(m for m in ('sh', 'urllib3', 'zstandard', 'jsonschema', 'yaml', "
            "'kubernetes', 'pydantic') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == ""


def _commands() -> list[str]:
    from migrate.cli.app import app

    return sorted(c.name for c in app.registered_commands if c.name)


@pytest.mark.parametrize("command", _commands())
def test_every_help_text_renders_whole(cli: Callable[..., Result], command: str) -> None:
    # typer renders help through rich, which reads "[...]" as markup: it eats
    # "[default: x]" and fails on "[/x]". Help texts use parentheses instead.
    r = cli(command, "--help")
    assert r.code == 0, r.err
    assert not re.search(r" \.(\s|$)", r.out), r.out  # "file ." once "[default: x]" is eaten
