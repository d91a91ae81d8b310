"""Benchmark the forensic commands against the issue's performance targets.

What it measures, on a small (~10 MiB) and a big (~1 GiB) generated checkpoint
archive of realistic memory pages (`e2e.archivegen`), side by side in one run:

1. ``migrate show`` and ``migrate inspect`` (no memory work) read only the
   members they need, so the big archive may cost at most 1.5x the small one.
2. ``migrate memparse BIG --search STR`` is within 1.5x of one
   ``grep -c -a STR`` over the archive's extracted ``checkpoint/pages-*.img``
   files, for a string that occurs (RANDOM_1432_KEY) and one that does not.
3. The peak RSS of ``migrate memparse BIG --search STR`` stays under 150 MiB.

Why this way: the machine is shared and noisy, so every command runs several
times, the compared commands are interleaved (the order rotates each
repetition) and medians are compared as ratios; one untimed warm-up run per
command puts both archives in the page cache. Commands run as subprocesses
through the ``.venv/bin/migrate`` console script, so times include Python's
start-up; ``migrate --version`` is timed too, as that fixed floor. grep runs
with ``LC_ALL=C`` (its fastest, locale-independent mode: the strict
baseline). Peak RSS comes from running every measured command under
``/usr/bin/time -f %M``: ``os.wait4``'s ``ru_maxrss`` for a child of this
process is no good, since Linux carries the high-water mark of the (v)forked
parent's memory across ``exec`` into the child's figure. Without GNU time the
script falls back to ``os.wait4`` and prints that floor. The machinery (running,
timing, interleaving, tables) is in ``harness.py``, shared with ``build_bench.py``.

This is a report, not a test: it exits 0 whether or not targets are met, and
non-zero only when it could not measure (a command failed, no disk space).
Only local files are touched; the generated archives live in a temporary
directory (under ``--workdir`` if given) that is removed at the end.

Run from the repository root: ``.venv/bin/python bench/archive_bench.py``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tarfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from harness import (
    GNU_TIME,
    HAVE_GNU_TIME,
    MIB,
    MIGRATE,
    BenchError,
    Sample,
    Series,
    check,
    fmt_s,
    generate,
    in_workdir,
    measure,
    render,
    require,
    run_once,
    wait4_note,
)

PRESENT = "RANDOM_1432_KEY"
ABSENT = "NOWHERE_IN_MEMORY_7Q9Z"
RATIO_TARGET = 1.5
RSS_TARGET_MIB = 150.0
PAGES_MEMBER = re.compile(r"checkpoint/pages-\d+\.img")


@dataclass
class Command(Series[Sample]):
    """A command line measured repeatedly; ``ok_codes`` are its success exit codes."""

    argv: list[str]
    env: dict[str, str] | None = None
    ok_codes: tuple[int, ...] = (0,)


def run(cmd: Command, tag: str) -> Sample:
    """One run of ``cmd`` (for ``measure``; the tag does not change the command)."""
    return run_once(cmd.label, cmd.argv, cmd.env, cmd.ok_codes)


def extract_pages(archive: Path, dest: Path) -> list[Path]:
    """Extract the ``checkpoint/pages-*.img`` members (what grep gets to search)."""
    with tarfile.open(archive, mode="r:") as tf:
        members = [m for m in tf if m.isfile() and PAGES_MEMBER.fullmatch(m.name)]
        tf.extractall(dest, members=members, filter="data")
    return sorted(dest / m.name for m in members)


def grep_total(sample: Sample) -> int:
    """Sum of ``grep -c`` counts (``FILE:N`` lines, one per file)."""
    return sum(int(line.rsplit(b":", 1)[-1]) for line in sample.stdout.splitlines())


def ratio_row(name: str, base: float, measured: float, net: float | None) -> list[str]:
    ratio = measured / base
    return [name, fmt_s(base), fmt_s(measured), f"{ratio:.2f}",
            "n/a" if net is None else f"{net:.2f}", f"<= {RATIO_TARGET}",
            "OK" if ratio <= RATIO_TARGET else "MISSED"]


def net_ratio(measured: float, base: float) -> float | None:
    """Ratio of the parts above the start-up floor; None when the base has none left."""
    return measured / base if base > 0.005 else None


def bench(work: Path, small_mib: int, big_mib: int, reps: int) -> None:
    need = (2 * big_mib + small_mib + 64) * MIB
    free = shutil.disk_usage(work).free
    if free < need:
        raise BenchError(f"{work}: {free // MIB} MiB free, the run needs about {need // MIB}")
    small, big = work / "small.tar", work / "big.tar"
    print(f"generating archives in {work} ...", flush=True)
    t_gen_small, t_gen_big = generate(small, small_mib), generate(big, big_mib)
    start = time.perf_counter()
    pages = extract_pages(big, work / "pages")
    t_extract = time.perf_counter() - start
    pages_bytes = sum(p.stat().st_size for p in pages)
    print(f"  small: {small.stat().st_size / MIB:.1f} MiB archive, generated in "
          f"{t_gen_small:.1f} s")
    print(f"  big:   {big.stat().st_size / MIB:.1f} MiB archive, generated in {t_gen_big:.1f} s;"
          f" {len(pages)} pages files ({pages_bytes / MIB:.1f} MiB) extracted in "
          f"{t_extract:.1f} s")

    mig = str(MIGRATE)
    grep_env = {**os.environ, "LC_ALL": "C"}
    files = [str(p) for p in pages]
    floor = Command("migrate --version", [mig, "--version"])
    show = {k: Command(f"show {k}", [mig, "show", str(a)]) for k, a in (("small", small),
                                                                         ("big", big))}
    insp = {k: Command(f"inspect {k}", [mig, "inspect", str(a)]) for k, a in (("small", small),
                                                                               ("big", big))}
    grep = {s: Command(f"grep -c -a {s}", ["grep", "-c", "-a", s, *files], grep_env, (0, 1))
            for s in (PRESENT, ABSENT)}
    memparse = {s: Command(f"memparse big --search {s}", [mig, "memparse", str(big),
                                                          "--search", s])
                for s in (PRESENT, ABSENT)}

    print(f"measuring: {reps} interleaved repetitions after one warm-up run each ...", flush=True)
    measure([floor, show["small"], show["big"], insp["small"], insp["big"]], reps, run)
    measure([grep[PRESENT], memparse[PRESENT], grep[ABSENT], memparse[ABSENT]], reps, run)
    check(grep_total(grep[PRESENT].last) > 0, f"grep finds {PRESENT}")
    check(grep_total(grep[ABSENT].last) == 0, f"grep does not find {ABSENT}")
    check(PRESENT.encode() in memparse[PRESENT].last.stdout, f"memparse finds {PRESENT}")
    check(b"no matches" in memparse[ABSENT].last.stderr, f"memparse does not find {ABSENT}")

    f = floor.median
    rows = [
        ratio_row("show: big / small archive", show["small"].median, show["big"].median,
                  net_ratio(show["big"].median - f, show["small"].median - f)),
        ratio_row("inspect: big / small archive", insp["small"].median, insp["big"].median,
                  net_ratio(insp["big"].median - f, insp["small"].median - f)),
    ]
    for s in (PRESENT, ABSENT):
        rows.append(ratio_row(f"memparse big --search {s} / grep", grep[s].median,
                              memparse[s].median,
                              net_ratio(memparse[s].median - f, grep[s].median)))
    for s in (PRESENT, ABSENT):
        rss = memparse[s].peak_rss_mib
        rows.append([f"memparse big --search {s}: peak RSS", "-", f"{rss:.1f} MiB", "-", "-",
                     f"< {RSS_TARGET_MIB:.0f} MiB", "OK" if rss < RSS_TARGET_MIB else "MISSED"])
    rows.append(["start-up floor: migrate --version", "-", fmt_s(f), "-", "-", "(info)", "-"])

    print()
    print(f"RESULTS (medians of {reps}; baseline = small archive, or grep; ratio = measured / "
          "baseline;\n  net = the same ratio with the start-up floor taken off migrate's times)")
    print(render(["metric", "baseline", "measured", "ratio", "net", "target", "result"], rows,
                 lambda i: i in (1, 2, 3, 4)))

    every = [floor, *show.values(), *insp.values(), *grep.values(), *memparse.values()]
    print()
    print("RAW (seconds; peak RSS is the largest of all runs)")
    print(render(
        ["command", "median", "min", "max", "peak RSS", "runs"],
        [[c.label, f"{c.median:.3f}", f"{min(c.times):.3f}", f"{max(c.times):.3f}",
          f"{c.peak_rss_mib:.1f} MiB", " ".join(f"{t:.3f}" for t in c.times)] for c in every],
        lambda i: i in (1, 2, 3, 4)))
    big_mib_s = pages_bytes / MIB
    print()
    print(f"throughput over {big_mib_s:.0f} MiB of pages: grep "
          f"{big_mib_s / grep[PRESENT].median:.0f} MiB/s, memparse "
          f"{big_mib_s / memparse[PRESENT].median:.0f} MiB/s (--search {PRESENT}, "
          "start-up included)")
    print(f"peak RSS: {GNU_TIME} -f %M around every run (its fork/exec is in all times)"
          if HAVE_GNU_TIME else wait4_note())


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--big-mib", type=int, default=1024, help="bulk memory of the big archive")
    ap.add_argument("--small-mib", type=int, default=10, help="bulk memory of the small archive")
    ap.add_argument("--reps", type=int, default=5, help="timed repetitions of each command")
    ap.add_argument("--workdir", type=Path, default=None,
                    help="where to put the archives (a temporary subdirectory of it, removed "
                         "at the end) [default: the system temporary directory]")
    args = ap.parse_args(argv)
    if args.reps < 1 or args.small_mib < 0 or args.big_mib < 0:
        ap.error("--reps must be at least 1 and sizes non-negative")
    if not require():
        return 2
    return in_workdir("archive-bench-", args.workdir,
                      lambda work: bench(work, args.small_mib, args.big_mib, args.reps))


if __name__ == "__main__":
    sys.exit(main())
