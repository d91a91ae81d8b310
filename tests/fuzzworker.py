"""A long-lived process that runs migrate commands for the fuzz tests.

One Python start-up per test session instead of one per command keeps a few
hundred fuzzed runs inside CI's budget, while the commands still run in a
process of their own: its data segment is capped (RLIMIT_DATA), so a reader
that allocates what a size field claims dies of MemoryError, which the CLI
boundary reports as exit 1 "unexpected MemoryError" and the test catches.

Protocol: one JSON request per line on stdin, ``{"argv": [...]}``; one JSON
answer per line on stdout, ``{"code", "out", "err", "maxrss_kib", "seconds"}``.
The command's own stdout and stderr are captured, never mixed into the answer
stream.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import resource
import sys
import time


def _peak_rss_kib() -> int:
    """This program's own peak RSS: VmHWM, the high-water mark of the memory map the
    exec made. Not ru_maxrss, into which Linux carries the mark of the image the exec
    replaced: the forking test process's, 490 MB once it had run the real nodes' tests
    (tests/test_untrusted_limits.py meets the same with a small launcher)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status")


def _serve(limit: int) -> None:
    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    from migrate.cli.app import run  # after the cap: imports count too

    answers = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    for line in sys.stdin:
        request = json.loads(line)
        out, err = io.StringIO(), io.StringIO()
        # The CLI configures logging once per process, onto the stderr of that
        # moment; each request needs its own.
        logging.getLogger().handlers.clear()
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = run(request["argv"])
            except BaseException as e:  # run() must never raise: report it as a failure
                code = -1
                err.write(f"worker: run() raised {type(e).__name__}: {e}\n")
        answers.write(json.dumps({
            "code": code, "out": out.getvalue(), "err": err.getvalue(),
            "maxrss_kib": _peak_rss_kib(),
            "seconds": time.perf_counter() - t0}) + "\n")


if __name__ == "__main__":
    _serve(int(sys.argv[1]))
