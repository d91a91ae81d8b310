"""Child processes that cannot outlive the test world that started them.

Every server the control plane or a node host starts goes through `spawn`: the
child asks the kernel (prctl PR_SET_PDEATHSIG) to be killed when its parent
dies, so even a SIGKILL'ed launcher leaves no etcd or API server behind. The
signal is tied to the *thread* that forked the child: spawn from a thread that
lives as long as the child should (the main thread, in tests and the CLI).
`stop` is the orderly path: SIGTERM, a grace period, then SIGKILL, one
process after the other.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Proc", "spawn", "stop", "wait_until"]

_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


@dataclass
class Proc:
    """A started child: its name (for messages), Popen object and log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self.popen.pid

    def log_tail(self, lines: int = 25) -> str:
        """The end of the child's log, for error messages."""
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def _die_with(parent: int) -> Callable[[], None]:
    def preexec() -> None:
        if _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            os._exit(126)
        # The parent may have died between fork and prctl: then nobody would
        # ever send the signal.
        if os.getppid() != parent:
            os._exit(126)

    return preexec


def spawn(name: str, argv: Sequence[str | os.PathLike[str]], log: Path, *,
          env: Mapping[str, str], cwd: Path | None = None) -> Proc:
    """Start `argv` with stdout and stderr into `log` (created 0600), killed with its parent."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        popen = subprocess.Popen(
            [os.fspath(a) for a in argv], stdin=subprocess.DEVNULL, stdout=fd,
            stderr=subprocess.STDOUT, env=dict(env), cwd=cwd,
            preexec_fn=_die_with(os.getpid()),
        )
    finally:
        os.close(fd)
    return Proc(name=name, popen=popen, log=log)


def stop(procs: Sequence[Proc], grace: float) -> None:
    """Stop the processes one after the other, in the order given: SIGTERM, then
    SIGKILL after `grace` seconds.

    One at a time, because a server shutting down gracefully still talks to
    the ones after it (the API server to etcd: stopped together, it spends its
    whole grace period redialling etcd).
    """
    for p in procs:
        if p.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                p.popen.send_signal(signal.SIGTERM)
        try:
            p.popen.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            p.popen.kill()
            p.popen.wait()


def wait_until(check: Callable[[], bool], *, timeout: float, what: str,
               watch: Sequence[Proc] = (), interval: float = 0.1) -> None:
    """Poll `check` until it is true; fail early when a watched process has exited.

    Raises RuntimeError naming `what`, with the log tail of a process that died.
    """
    deadline = time.monotonic() + timeout
    while True:
        for p in watch:
            code = p.popen.poll()
            if code is not None:
                raise RuntimeError(f"{p.name} exited with status {code} while waiting for "
                                   f"{what}; the end of {p.log}:\n{p.log_tail()}")
        if check():
            return
        if time.monotonic() > deadline:
            tails = "".join(f"\n--- {p.log}:\n{p.log_tail(10)}" for p in watch)
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}{tails}")
        time.sleep(interval)
