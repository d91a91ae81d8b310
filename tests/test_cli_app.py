"""The CLI boundary: entry points, global options, exit codes, no tracebacks."""

from __future__ import annotations

import importlib
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


_HEAVY = ("sh", "urllib3", "zstandard", "jsonschema", "yaml", "kubernetes", "pydantic")


def _imported_after(call: str) -> set[str]:
    """The modules a fresh interpreter holds after ``call`` (from migrate.cli.app)."""
    code = ("import sys, io, contextlib\nfrom migrate.cli import app\n"
            f"with contextlib.redirect_stdout(io.StringIO()): {call}\n"
            "print(' '.join(sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(r.stdout.split())


def test_start_up_imports_stay_light() -> None:
    """Every command pays for what the CLI imports at start-up; the heavy modules load on
    first use (bench/archive_bench.py's memparse-vs-grep budget depends on it)."""
    # `migrate --help` registers every command: still none of the heavy modules.
    assert _imported_after("app.run(['--help'])") & set(_HEAVY) == set()
    # `migrate --version` is answered before typer is imported at all.
    assert {"typer", "migrate.cli.root", "migrate.settings"} & _imported_after(
        "app.run(['--version'])") == set()
    # A command imports its own module only, and the stages it runs.
    loaded = _imported_after("app.run(['memparse', '--help'])")
    assert "migrate.cli.archive" in loaded
    assert {"migrate.cli.cluster", "migrate.cli.images", "migrate.cli.migration",
            "migrate.forensics.inspect", "migrate.adapters.checkpoint"} & loaded == set()


def test_command_table_names_what_each_module_registers() -> None:
    """root.MODULES decides which module a command's run imports; it must stay true."""
    import typer

    from migrate.cli import root

    for module, names in root.MODULES.items():
        mod = importlib.import_module(f"migrate.cli.{module}")
        # A module's own sub-apps (`schedule`) gain commands too: put them back after.
        subapps = {a: list(a.registered_commands) for a in vars(mod).values()
                   if isinstance(a, typer.Typer) and a is not root.app}
        probe = typer.Typer()
        try:
            mod.register(probe)
        finally:
            for subapp, commands in subapps.items():
                subapp.registered_commands = commands
        registered = [c.name for c in probe.registered_commands]
        registered += [g.typer_instance.info.name for g in probe.registered_groups
                       if g.typer_instance is not None]
        assert tuple(registered) == names, module


def _commands() -> list[str]:
    from migrate.cli.root import app, register_for

    register_for([])
    return sorted(c.name for c in app.registered_commands if c.name)


@pytest.mark.parametrize("command", _commands())
def test_every_help_text_renders_whole(cli: Callable[..., Result], command: str) -> None:
    # typer renders help through rich, which reads "[...]" as markup: it eats
    # "[default: x]" and fails on "[/x]". Help texts use parentheses instead.
    r = cli(command, "--help")
    assert r.code == 0, r.err
    assert not re.search(r" \.(\s|$)", r.out), r.out  # "file ." once "[default: x]" is eaten
