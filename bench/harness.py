"""What the benchmark scripts share: running commands, timing them, printing tables.

- Paths and units: ``REPO``, ``MIGRATE`` (the ``.venv/bin/migrate`` console
  script), ``GNU_TIME`` / ``HAVE_GNU_TIME``, ``MIB``, ``MB``.
- ``BenchError`` (the benchmark could not measure; not a missed target) and
  ``check`` (a sanity check that raises it).
- ``require``: migrate's console script and the tools a script needs are there;
  ``in_workdir``: run the benchmark in a temporary directory removed at the end,
  turning what stops a measurement into an error message and exit code 1;
  ``with_registry``: the same for a benchmark that starts a loopback registry
  (and a simulator), stopped even when the script is killed.
- ``archive_args``: the command line of a benchmark over one generated archive
  (``--big-mib``, ``--reps``, ``--workdir``), checked.
- ``generate``: a checkpoint archive of realistic memory pages (``e2e.archives.archivegen``).
- ``Sample`` and ``run_once``: one run of a command under ``/usr/bin/time -f
  "%M %U %S"`` (wall time, peak RSS of the largest single process of the tree,
  user + system CPU of the whole tree); without GNU time, ``os.wait4``'s figures
  (``wait4_note`` says what that means for peak RSS).
- ``Series``: a command's timed samples and their statistics (median, peak RSS,
  CPU); each script subclasses it with what its commands need.
- ``measure``: one untimed warm-up run per command, then interleaved
  repetitions whose order rotates, for a shared and noisy machine.
- ``process_cpu`` and ``CpuWindow``: CPU seconds of running processes, of this
  process's threads and of the whole machine, over a timed window: whether a
  measurement was bound by the cores, and by whose work.
- ``fmt_s`` and ``render``: the report's numbers and aligned plain-text tables.

The scripts import it as ``harness``: run as ``python bench/SCRIPT.py``, their
own directory is first on ``sys.path``.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

REPO = Path(__file__).resolve().parent.parent
MIGRATE = REPO / ".venv" / "bin" / "migrate"
GNU_TIME = Path("/usr/bin/time")
HAVE_GNU_TIME = os.access(GNU_TIME, os.X_OK)
MIB = 1024 * 1024
MB = 1000 * 1000


class BenchError(Exception):
    """The benchmark could not measure something (not a missed target)."""


def check(ok: bool, what: str) -> None:
    if not ok:
        raise BenchError(f"sanity check failed: {what}")


def require(*tools: str) -> bool:
    """Whether migrate's console script and ``tools`` are installed; if not, say so."""
    if not os.access(MIGRATE, os.X_OK):
        print(f"error: {MIGRATE} not found; run scripts/setup first", file=sys.stderr)
        return False
    missing = [t for t in tools if not shutil.which(t)]
    if missing:
        print(f"error: not installed: {', '.join(missing)}", file=sys.stderr)
        return False
    return True


def in_workdir(prefix: str, workdir: Path | None, bench: Callable[[Path], None],
               errors: tuple[type[Exception], ...] = ()) -> int:
    """Run ``bench`` in a new temporary directory (under ``workdir`` if given).

    The directory is removed at the end. Returns the exit code: 1 after printing a
    ``BenchError``, a failed ``subprocess.run``, an ``OSError`` or one of ``errors``.
    """
    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=prefix, dir=workdir))
    caught: tuple[type[Exception], ...] = (BenchError, subprocess.CalledProcessError, OSError,
                                           *errors)
    try:
        bench(work)
    except caught as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def with_registry(prefix: str, workdir: Path | None, bench: Callable[[Path], None]) -> int:
    """``in_workdir`` for a benchmark that starts Debian's docker-registry (e2e.services.registry).

    Returns 2 when docker-registry is not installed. Killed (SIGTERM), the script
    still runs its ``finally`` blocks, which stop the registry and the node agents.
    """
    from e2e.services.registry import RegistryError

    if not require("docker-registry"):
        return 2
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    return in_workdir(prefix, workdir, bench, (RegistryError,))


def archive_args(argv: Sequence[str] | None, doc: str | None, big_mib: int,
                 workdir_help: str) -> argparse.Namespace:
    """Parse ``--big-mib`` (default ``big_mib``), ``--reps`` and ``--workdir``; the
    description is the first paragraph of the script's ``doc``."""
    ap = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--big-mib", type=int, default=big_mib, help="bulk memory of the archive")
    ap.add_argument("--reps", type=int, default=3, help="timed repetitions of each command")
    ap.add_argument("--workdir", type=Path, default=None, help=f"{workdir_help} (a temporary "
                    "subdirectory of it, removed at the end) [default: the system temporary "
                    "directory]")
    args = ap.parse_args(argv)
    if args.reps < 1 or args.big_mib < 0:
        ap.error("--reps must be at least 1 and --big-mib non-negative")
    return args


def generate(out: Path, mib: int) -> float:
    """Write an archive with ``mib`` MiB of bulk memory; returns seconds taken."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "e2e.archives.archivegen", str(out), "--bulk-mib",
                    str(mib)], cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


@dataclass(frozen=True)
class Sample:
    """One run of a command."""

    seconds: float
    maxrss_kib: int
    cpu_seconds: float  # user + system of the whole process tree
    returncode: int
    stdout: bytes
    stderr: bytes


def run_once(label: str, argv: list[str], env: dict[str, str] | None = None,
             ok_codes: tuple[int, ...] = (0,)) -> Sample:
    """Run ``argv`` once: wall time, peak RSS and CPU from GNU time (else ``os.wait4``).

    An exit code not in ``ok_codes`` is a ``BenchError``.
    """
    with tempfile.TemporaryDirectory() as tmp, tempfile.TemporaryFile() as out, \
            tempfile.TemporaryFile() as err:
        usage_file = Path(tmp) / "usage"
        full = ([str(GNU_TIME), "-f", "%M %U %S", "-o", str(usage_file), *argv]
                if HAVE_GNU_TIME else argv)
        start = time.perf_counter()
        proc = subprocess.Popen(full, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        if HAVE_GNU_TIME and usage_file.exists():
            # GNU time writes "Command exited with non-zero status N" before the figures.
            rss, user, system = usage_file.read_text().split()[-3:]
            maxrss, cpu = int(rss), float(user) + float(system)
        else:
            maxrss, cpu = usage.ru_maxrss, usage.ru_utime + usage.ru_stime
        out.seek(0)
        err.seek(0)
        sample = Sample(seconds, maxrss, cpu, proc.returncode, out.read(), err.read())
    if sample.returncode not in ok_codes:
        raise BenchError(f"{label}: exit code {sample.returncode}\n  $ {' '.join(argv)}\n"
                         f"{sample.stderr.decode(errors='replace')}")
    return sample


def wait4_note() -> str:
    """What peak RSS means without GNU time (``os.wait4``'s figure)."""
    floor_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return (f"peak RSS: os.wait4 (no {GNU_TIME}); figures include this script's own "
            f"{floor_mib:.1f} MiB, inherited across exec")


S = TypeVar("S", bound=Sample)


@dataclass
class Series(Generic[S]):
    """A command's label and its timed samples (warm-ups are not kept)."""

    label: str
    samples: list[S] = field(default_factory=list, kw_only=True)

    @property
    def times(self) -> list[float]:
        return [s.seconds for s in self.samples]

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def peak_rss_mib(self) -> float:
        return max(s.maxrss_kib for s in self.samples) / 1024

    @property
    def peak_rss_mb(self) -> float:
        return max(s.maxrss_kib for s in self.samples) * 1024 / MB

    @property
    def cpu(self) -> float:
        return statistics.median(s.cpu_seconds for s in self.samples)

    @property
    def last(self) -> S:
        return self.samples[-1]


C = TypeVar("C", bound="Series[Any]")


def measure(commands: Sequence[C], reps: int, run: Callable[[C, str], Sample],
            progress: bool = False) -> None:
    """One untimed warm-up each, then ``reps`` interleaved rounds in rotating order.

    ``run(cmd, tag)`` runs ``cmd`` once (``tag``: "warmup", "r1", "r2", ...) and
    returns its sample, which is kept unless it was the warm-up. ``progress``
    prints a line per repetition.
    """
    for cmd in commands:
        run(cmd, "warmup")
    n = len(commands)
    for rep in range(reps):
        if progress:
            print(f"  repetition {rep + 1}/{reps} ...", flush=True)
        for cmd in [*commands[rep % n:], *commands[:rep % n]]:
            cmd.samples.append(run(cmd, f"r{rep + 1}"))


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of a running process (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy() -> float:
    """CPU seconds all cores spent busy since boot (not idle, not waiting for I/O)."""
    ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    # user nice system idle iowait irq softirq steal (guest time is inside user already)
    return (sum(ticks[:8]) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


class CpuWindow:
    """CPU used between its creation and `close`: by each named process, by this
    process (all its threads), and by the whole machine."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self._start = self._read()

    def _read(self) -> dict[str, float]:
        now = {name: process_cpu(pid) for name, pid in self.pids.items()}
        own = os.times()
        return {**now, "self": own.user + own.system, "machine": machine_busy()}

    def close(self) -> dict[str, float]:
        """CPU seconds per name, plus "self" and "machine"."""
        end = self._read()
        return {k: round(end[k] - self._start[k], 3) for k in end}


def fmt_s(seconds: float) -> str:
    return f"{seconds:.3f} s"


def render(headers: Sequence[str], rows: Sequence[Sequence[str]],
           right: Callable[[int], bool]) -> str:
    """A plain-text table; column ``i`` is right-aligned when ``right(i)``."""
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if right(i) else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, rows)])
