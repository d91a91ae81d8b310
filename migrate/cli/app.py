"""The entry point and the one error boundary (the root command is in root.py).

Nothing heavy is imported before a command needs it: ``migrate --version`` is
answered here, without typer, and a command imports only its own module
(`migrate.cli.root.register_for`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType

from migrate import __version__
from migrate.errors import ExitCode, MigrateError

# The global flags `migrate --version` may come with and still print just the version.
_VERSION_FLAGS = frozenset({"--version", "--debug", "--verbose", "-v", "-vv", "-vvv"})


def _debug_requested(argv: Sequence[str]) -> bool:
    args = list(argv[: argv.index("--")] if "--" in argv else argv)
    return "--debug" in args or os.environ.get("MIGRATE_DEBUG", "") in ("1", "true")


def _interrupted(terminated: threading.Event) -> str:
    return "interrupted by SIGTERM" if terminated.is_set() else "interrupted"


def _fail(message: str, hint: str | None, code: int) -> int:
    from migrate.cli.output import say

    # Messages quote archive members and cluster objects: escaped, each stays one line
    # (and the commands they quote are spelled as the user runs the tool: say()).
    say(f"error: {message}")
    if hint:
        say(f"hint: {hint}")
    return code


def program_name(argv0: str) -> str:
    """How the user called the tool: ``kubectl migrate`` when kubectl ran its plugin (the
    executable ``kubectl-migrate``), else ``migrate``."""
    return "kubectl migrate" if Path(argv0).name == "kubectl-migrate" else "migrate"


class Terminated(KeyboardInterrupt):
    """SIGTERM (what kubelets, systemd and `kill` send): handled as Ctrl-C is, so that a
    run stops where it is, its journal says `interrupted` and the way to resume it is
    printed, instead of the process vanishing with its journal still `running`."""


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[threading.Event]:
    """While the command runs, SIGTERM raises `Terminated` in the main thread; the event
    yielded says whether it came (typer reports any KeyboardInterrupt as 130)."""
    received = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield received  # handlers belong to the main thread; an embedding caller keeps its own
        return

    def terminate(signum: int, frame: FrameType | None) -> None:
        # Once: a second SIGTERM must not cut short the journal's bookkeeping the first
        # one set off (SIGKILL remains for a process that will not end).
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        received.set()
        raise Terminated

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield received
    finally:
        signal.signal(signal.SIGTERM, previous)


def run(argv: Sequence[str] | None = None, program: str | None = None) -> int:
    """Run the CLI and map every outcome to an exit code; never raises.

    ``program``: how the user called it (`program_name`; default: from sys.argv[0]).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if "--version" in args and _VERSION_FLAGS.issuperset(args):
        return _print_version()
    from migrate.cli.output import PROGRAM

    token = PROGRAM.set(program or program_name(sys.argv[0]))
    try:
        with _sigterm_interrupts() as terminated:
            try:
                return _run(args, terminated)
            except KeyboardInterrupt:  # landed between the command's end and its exit code
                return _fail(_interrupted(terminated), None, ExitCode.INTERRUPTED)
    finally:
        PROGRAM.reset(token)


def _print_version() -> int:
    try:
        sys.stdout.write(f"migrate {__version__}\n")
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return ExitCode.OK


def _run(args: list[str], terminated: threading.Event) -> int:
    import traceback

    import typer
    import typer.main

    from migrate.cli import argv as normalise
    from migrate.cli.completion import handle_completion_options
    from migrate.cli.output import PROGRAM
    from migrate.cli.root import app, register_for

    debug = _debug_requested(args)
    try:
        register_for(args)
        command = typer.main.get_command(app)
        # kubectl habits: global options anywhere on the line (argv.py).
        args = normalise.globals_first(command, args)
        program = PROGRAM.get()
        # Completion scripts call the executable back (`kubectl-migrate` for the plugin),
        # with its own variable: _MIGRATE_COMPLETE, _KUBECTL_MIGRATE_COMPLETE.
        executable = "migrate" if program == "migrate" else Path(sys.argv[0]).name
        complete_var = normalise.complete_var(executable)
        done = handle_completion_options(command, args, executable=executable,
                                         complete_var=complete_var)
        if done is not None:
            return done
        if complete_var in os.environ:  # a completion script calling back
            from typer._completion_classes import completion_init

            completion_init()  # typer registers its shells' classes only with its options
        rv = command.main(args=args, prog_name=program, complete_var=complete_var,
                          standalone_mode=False)
        # Without standalone mode typer returns exit codes instead of raising
        # them, Ctrl-C included (as 130).
        if rv == ExitCode.INTERRUPTED:
            return _fail(_interrupted(terminated), None, ExitCode.INTERRUPTED)
        return int(rv) if isinstance(rv, int) else ExitCode.OK
    except MigrateError as e:
        if debug:
            traceback.print_exc()
        return _fail(e.message, e.hint, e.exit_code)
    except typer.Exit as e:
        return int(e.exit_code)
    except typer.TyperException as e:
        # Typer's (vendored click) usage errors: exit code 2, and a context
        # that names the command whose --help explains the options.
        code = int(getattr(e, "exit_code", ExitCode.USAGE))
        ctx = getattr(e, "ctx", None)
        cmd = ctx.command_path if ctx is not None else PROGRAM.get()
        message = e.format_message()
        if not message:  # a group given no command: its help is printed, and says it all
            message = f"{cmd} needs a command"
        hint = f"see '{cmd} --help'" if code == ExitCode.USAGE else None
        return _fail(message, hint, code)
    except (typer.Abort, KeyboardInterrupt):
        return _fail(_interrupted(terminated), None, ExitCode.INTERRUPTED)
    except BrokenPipeError:
        # Output piped into `head` and closed early: not an error worth a message.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return ExitCode.OK
    except Exception as e:  # the boundary: anything else is a bug
        if debug:
            traceback.print_exc()
        return _fail(
            f"unexpected {type(e).__name__}: {e}",
            "this is a bug in migrate; rerun with --debug and report the traceback",
            ExitCode.ERROR,
        )


def main() -> None:
    """Console-script entry point (`migrate`, `kubectl-migrate`)."""
    sys.exit(run())


def kubectl_complete() -> None:
    """Console-script entry point `kubectl_complete-migrate`: what kubectl (1.26+) runs to
    complete `kubectl migrate ...` (see completion.py)."""
    import typer.main

    from migrate.cli.completion import kubectl_complete as complete
    from migrate.cli.root import app, register_for

    register_for([])
    sys.exit(complete(typer.main.get_command(app), sys.argv[1:]))
