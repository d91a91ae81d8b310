"""The root command: the typer app, its global options, and which module holds each command.

Command modules are imported only for the command being run (`register_for`):
every command pays at start-up for what the CLI imports, and typer builds its
click command of every function registered, so `migrate memparse` imports and
converts the archive commands alone. Help and unknown commands get them all.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import typer
import typer.core

from migrate import __version__
from migrate.cli.completion import complete_namespaces
from migrate.cli.examples import Command, Group
from migrate.cli.output import EscapingFormatter
from migrate.settings import load_settings

app = typer.Typer(
    name="migrate",
    cls=Group,
    help="Move running Kubernetes containers between nodes, and restore them in "
    "sandboxes, from CRIU checkpoints.",
    no_args_is_help=True,
    # Rich tracebacks print local variables, and locals can hold credentials.
    pretty_exceptions_enable=False,
    pretty_exceptions_show_locals=False,
    # The completion options are ours (completion.py): typer's take no shell name.
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    # `migrate --version` alone never gets here (app.run answers it without typer).
    if value:
        typer.echo(f"migrate {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks and debug logs."),
    verbose: int = typer.Option(0, "-v", "--verbose", count=True, help="More logging (-vv)."),
    kubeconfig: Path | None = typer.Option(None, "--kubeconfig", help="Kubeconfig file, for "
                                           "every command that uses the cluster.",
                                           show_default=False),
    context: str | None = typer.Option(None, "--context", help="Kubeconfig context, for "
                                       "every command that uses the cluster.",
                                       show_default=False),
    namespace: str | None = typer.Option(None, "-n", "--namespace", help="Namespace, for "
                                         "every command that takes one.", show_default=False,
                                         autocompletion=complete_namespaces),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version."
    ),
    tmp_dir: Path | None = typer.Option(
        None, "--tmp-dir", metavar="DIR", show_default=False,
        help="Where compressed archives are decompressed (default: $TMPDIR, else /tmp)."),
    install_completion: str | None = typer.Option(
        None, "--install-completion", metavar="SHELL", show_default=False,
        help="Install shell completion: bash, zsh or fish (default: the current shell)."),
    show_completion: str | None = typer.Option(
        None, "--show-completion", metavar="SHELL", show_default=False,
        help="Print the completion script for bash, zsh or fish (default: the current "
        "shell)."),
) -> None:
    """Global options (before or after the command, as kubectl takes them); builds the
    settings every command receives."""
    # --install-completion and --show-completion were handled before parsing (app.run).
    settings = load_settings(debug=debug, verbose=verbose, tmp_dir=tmp_dir)
    settings = dataclasses.replace(settings, kube=dataclasses.replace(
        settings.kube, kubeconfig=kubeconfig, context=context, namespace=namespace))
    level = logging.DEBUG if settings.output.debug or verbose > 1 else (
        logging.INFO if verbose else logging.WARNING
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(EscapingFormatter("%(levelname)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])
    ctx.obj = settings


# The command modules in the order `migrate --help` lists them, and the commands each
# registers (tests/test_cli_app.py checks the table against what they register).
MODULES: dict[str, tuple[str, ...]] = {
    "archive": ("show", "inspect", "memparse", "rootfs-diff", "list"),
    "images": ("build",),
    "cluster": ("checkpoint", "doctor"),
    "migration": ("pod", "resume", "rollback", "history"),
    "drain": ("drain", "uncordon"),
    "restore": ("manifest", "sandbox"),
    "schedule": ("deploy", "schedule"),
    "prune": ("prune",),
}
# Modules a module's commands use: `schedule drain` and `schedule prune` parse their
# pass-through options with `migrate drain`'s and `migrate prune`'s own parsers, which
# must then be registered too.
_NEEDS: dict[str, tuple[str, ...]] = {"schedule": ("drain", "prune")}
_registered: dict[str, tuple[list[typer.models.CommandInfo], list[typer.models.TyperInfo]]] = {}
# Global options that take a value (the command name is the first other word).
_VALUED = ("--tmp-dir", "--kubeconfig", "--context", "-n", "--namespace")


def command_of(args: Sequence[str]) -> str | None:
    """The command ``args`` name (the first word that is not a global option), if any."""
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in _VALUED:
            i += 2
        elif arg.startswith("-"):
            i += 1
        else:
            return arg
    return None


def register_for(args: Sequence[str]) -> None:
    """Register the module of the command ``args`` run; all of them if unknown or none."""
    name = command_of(args)
    wanted = [m for m, names in MODULES.items() if name in names] or list(MODULES)
    wanted += [n for m in wanted for n in _NEEDS.get(m, ()) if n not in wanted]
    for module in wanted:
        if module not in _registered:
            before = (list(app.registered_commands), list(app.registered_groups))
            importlib.import_module(f"migrate.cli.{module}").register(app)
            _registered[module] = (
                [c for c in app.registered_commands if c not in before[0]],
                [g for g in app.registered_groups if g not in before[1]])
    # Always in the table's order, whatever order commands were first run in.
    app.registered_commands = [c for m in MODULES for c in _registered.get(m, ([], []))[0]]
    app.registered_groups = [g for m in MODULES for g in _registered.get(m, ([], []))[1]]
    # Every help page ends with examples (examples.py).
    for info in [*app.registered_commands,
                 *(c for g in app.registered_groups if g.typer_instance
                   for c in g.typer_instance.registered_commands)]:
        if info.cls in (None, typer.core.TyperCommand):
            info.cls = Command


