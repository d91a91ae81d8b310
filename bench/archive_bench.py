"""Benchmark the forensic commands against the issue's performance targets.

What it measures, on a small (~10 MiB) and a big (~1 GiB) generated checkpoint
archive of realistic memory pages (`e2e.archives.archivegen`), side by side in one run:

1. ``migrate show`` and ``migrate inspect`` (no memory work) read only the
   members they need, so the big archive may cost at most 1.5x the small one.
2. ``migrate memparse BIG --search STR`` is within 1.3x of one
   ``grep -c -a STR`` over the archive's extracted ``checkpoint/pages-*.img``
   files, raw (Python's start-up included), for a string that occurs
   (RANDOM_1432_KEY) and one that does not.
3. ``migrate --version`` (the start-up floor) takes under 0.1 s.
4. The peak RSS of ``migrate memparse BIG --search STR`` stays under 150 MiB.
5. (reported, no target) compressed archives: the big archive zstd- and
   gzip-compressed, ``memparse --search`` on them against ``zstd -dc | grep -c
   -a`` (``gzip -dc | ...``), and ``show`` on them against the decompressor
   alone (``zstd -dc >/dev/null``): what decompressing into the temporary file
   costs on top of decompressing.
6. (reported, with ``--real``: root, Podman and CRIU 4.1.1 as scripts/setup
   installs them) the real checkpoints the tests make (Podman's export of
   e2e/real's workload, uncompressed, gzip and zstd): ``memparse --search
   SECRET`` against grep over their pages files, and against ``zstd -dc |
   grep`` for the zstd one. They are small: start-up dominates.

Why this way: the machine is shared and noisy, so every command runs several
times, the compared commands are interleaved (the order rotates each
repetition) and medians are compared as ratios; one untimed warm-up run per
command puts the archives in the page cache (and writes migrate's bytecode
cache: migrate's commands run with ``PYTHONDONTWRITEBYTECODE`` dropped, as an
installed tool has its ``.pyc`` files). Commands run as subprocesses through
the ``.venv/bin/migrate`` console script, so times include Python's start-up.
grep runs with ``LC_ALL=C`` (its fastest, locale-independent mode: the strict
baseline); pipelines run under ``sh -c`` (one more fork, a few ms). Peak RSS
comes from running every measured command under ``/usr/bin/time -f %M``:
``os.wait4``'s ``ru_maxrss`` for a child of this process is no good, since
Linux carries the high-water mark of the (v)forked parent's memory across
``exec`` into the child's figure. Without GNU time the script falls back to
``os.wait4`` and prints that floor. The machinery (running, timing,
interleaving, tables) is in ``harness.py``, shared with ``build_bench.py``.

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
import subprocess
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
RATIO_TARGET = 1.3
SIZE_RATIO_TARGET = 1.5
VERSION_TARGET_S = 0.1
RSS_TARGET_MIB = 150.0
PAGES_MEMBER = re.compile(r"checkpoint/pages-\d+\.img")
# migrate as installed: its bytecode cached (the warm-up run writes it).
MIGRATE_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
GREP_ENV = {**os.environ, "LC_ALL": "C"}


@dataclass
class Command(Series[Sample]):
    """A command line measured repeatedly; ``ok_codes`` are its success exit codes."""

    argv: list[str]
    env: dict[str, str] | None = None
    ok_codes: tuple[int, ...] = (0,)


def run(cmd: Command, tag: str) -> Sample:
    """One run of ``cmd`` (for ``measure``; the tag does not change the command)."""
    return run_once(cmd.label, cmd.argv, cmd.env, cmd.ok_codes)


def mig(label: str, *args: str | Path, env: dict[str, str] | None = None) -> Command:
    return Command(label, [str(MIGRATE), *map(str, args)], env or MIGRATE_ENV)


def grep(label: str, needle: str, files: list[Path]) -> Command:
    return Command(label, ["grep", "-c", "-a", needle, *map(str, files)], GREP_ENV, (0, 1))


def piped(label: str, shell: str) -> Command:
    """A pipeline under ``sh -c`` (grep's status decides: 1 is "no match")."""
    return Command(label, ["sh", "-c", shell], GREP_ENV, (0, 1))


def extract_pages(archive: Path, dest: Path) -> list[Path]:
    """Extract the ``checkpoint/pages-*.img`` members (what grep gets to search)."""
    with tarfile.open(archive, mode="r:*") as tf:
        members = [m for m in tf if m.isfile() and PAGES_MEMBER.fullmatch(m.name)]
        tf.extractall(dest, members=members, filter="data")
    return sorted(dest / m.name for m in members)


def grep_total(sample: Sample) -> int:
    """Sum of ``grep -c`` counts (``FILE:N`` lines, one per file, or a lone ``N``)."""
    return sum(int(line.rsplit(b":", 1)[-1]) for line in sample.stdout.splitlines())


def ratio_row(name: str, base: float, measured: float, net: float | None,
              target: float | None) -> list[str]:
    ratio = measured / base
    verdict = "-" if target is None else ("OK" if ratio <= target else "MISSED")
    return [name, fmt_s(base), fmt_s(measured), f"{ratio:.2f}",
            "n/a" if net is None else f"{net:.2f}", "(info)" if target is None
            else f"<= {target}", verdict]


def net_ratio(measured: float, base: float) -> float | None:
    """Ratio of the parts above the start-up floor; None when the base has none left."""
    return measured / base if base > 0.005 else None


def shell_quote(path: Path) -> str:
    return "'" + str(path).replace("'", "'\\''") + "'"


def compress_big(big: Path) -> dict[str, Path]:
    """``big`` as .tar.zst (zstd -3, Podman's level) and .tar.gz (gzip -6, its default)."""
    out: dict[str, Path] = {}
    if shutil.which("zstd"):
        start = time.perf_counter()
        out["zstd"] = big.with_name(big.name + ".zst")
        subprocess.run(["zstd", "-q", "-3", "-T0", str(big), "-o", str(out["zstd"])],
                       check=True)
        print(f"  zstd: {out['zstd'].stat().st_size / MIB:.1f} MiB in "
              f"{time.perf_counter() - start:.1f} s")
    if shutil.which("gzip"):
        start = time.perf_counter()
        out["gzip"] = big.with_name(big.name + ".gz")
        with out["gzip"].open("wb") as f:
            subprocess.run(["gzip", "-6", "-c", str(big)], stdout=f, check=True)
        print(f"  gzip: {out['gzip'].stat().st_size / MIB:.1f} MiB in "
              f"{time.perf_counter() - start:.1f} s")
    return out


def real_archives(work: Path) -> tuple[dict[str, Path], str] | str:
    """Podman exports (none, gzip, zstd) of the tests' real workload, and its secret; or
    why they cannot be made here."""
    from e2e.real import tools as real_tools

    missing = real_tools.missing_engine()
    if missing:
        return missing
    import secrets as secrets_mod

    from e2e.real.podman import PodmanWorld
    from e2e.real.workload import build_workload_image, export_checkpoint, start_workload

    secret = f"MIGRATE-SECRET-{secrets_mod.token_hex(12)}"
    out: dict[str, Path] = {}
    with PodmanWorld(real_tools.tools().criu_bin_dir) as world:
        tag = f"localhost/migrate-bench-workload:{secrets_mod.token_hex(4)}"
        build_workload_image(world, secret, work / "rootfs", tag)
        ctr = start_workload(world, tag, f"bench-{secrets_mod.token_hex(3)}")
        for kind, suffix in (("none", ".tar"), ("gzip", ".tar.gz"), ("zstd", ".tar.zst")):
            out[kind] = export_checkpoint(world, ctr.name, work / f"real{suffix}", kind)
    return out, secret


def bench(work: Path, small_mib: int, big_mib: int, reps: int, compressed: bool,
          real: bool) -> None:
    need = ((5 if compressed else 2) * big_mib + small_mib + 64) * MIB
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
    packed = compress_big(big) if compressed else {}
    # Compressed archives decompress next to the others (the work directory's disk).
    tmp_env = {**MIGRATE_ENV, "TMPDIR": str(work)}

    floor = mig("migrate --version", "--version")
    python = Command("python -c pass", [sys.executable, "-c", "pass"], MIGRATE_ENV)
    show = {k: mig(f"show {k}", "show", a) for k, a in (("small", small), ("big", big))}
    insp = {k: mig(f"inspect {k}", "inspect", a) for k, a in (("small", small), ("big", big))}
    greps = {s: grep(f"grep -c -a {s}", s, pages) for s in (PRESENT, ABSENT)}
    memparse = {s: mig(f"memparse big --search {s}", "memparse", big, "--search", s)
                for s in (PRESENT, ABSENT)}
    memparse[ABSENT].ok_codes = (11,)  # memparse's "searched, not found", as grep's 1

    print(f"measuring: {reps} interleaved repetitions after one warm-up run each ...", flush=True)
    measure([floor, python, show["small"], show["big"], insp["small"], insp["big"]], reps, run)
    measure([greps[PRESENT], memparse[PRESENT], greps[ABSENT], memparse[ABSENT]], reps, run)
    check(grep_total(greps[PRESENT].last) > 0, f"grep finds {PRESENT}")
    check(grep_total(greps[ABSENT].last) == 0, f"grep does not find {ABSENT}")
    check(PRESENT.encode() in memparse[PRESENT].last.stdout, f"memparse finds {PRESENT}")
    check(b"no matches" in memparse[ABSENT].last.stderr, f"memparse does not find {ABSENT}")

    f = floor.median
    rows = [
        ratio_row("show: big / small archive", show["small"].median, show["big"].median,
                  net_ratio(show["big"].median - f, show["small"].median - f),
                  SIZE_RATIO_TARGET),
        ratio_row("inspect: big / small archive", insp["small"].median, insp["big"].median,
                  net_ratio(insp["big"].median - f, insp["small"].median - f),
                  SIZE_RATIO_TARGET),
    ]
    for s in (PRESENT, ABSENT):
        rows.append(ratio_row(f"memparse big --search {s} / grep", greps[s].median,
                              memparse[s].median,
                              net_ratio(memparse[s].median - f, greps[s].median), RATIO_TARGET))
    rows.append(["start-up floor: migrate --version", "-", fmt_s(f), "-", "-",
                 f"< {VERSION_TARGET_S} s", "OK" if f < VERSION_TARGET_S else "MISSED"])
    rows.append(["python -c pass (the interpreter alone)", "-", fmt_s(python.median), "-", "-",
                 "(info)", "-"])
    for s in (PRESENT, ABSENT):
        rss = memparse[s].peak_rss_mib
        rows.append([f"memparse big --search {s}: peak RSS", "-", f"{rss:.1f} MiB", "-", "-",
                     f"< {RSS_TARGET_MIB:.0f} MiB", "OK" if rss < RSS_TARGET_MIB else "MISSED"])

    every: list[Command] = [floor, python, *show.values(), *insp.values(), *greps.values(),
                            *memparse.values()]
    for kind, archive in packed.items():
        tool = {"zstd": "zstd -dc", "gzip": "gzip -dc"}[kind]
        pipe = piped(f"{tool} | grep -c -a {PRESENT}",
                     f"{tool} {shell_quote(archive)} | grep -c -a {PRESENT}")
        search = mig(f"memparse big.{kind} --search {PRESENT}", "memparse", archive,
                     "--search", PRESENT, env=tmp_env)
        alone = piped(f"{tool} >/dev/null", f"{tool} {shell_quote(archive)} >/dev/null")
        shown = mig(f"show big.{kind}", "show", archive, env=tmp_env)
        measure([pipe, search, alone, shown], reps, run)
        check(grep_total(pipe.last) > 0, f"{tool} | grep finds {PRESENT}")
        check(PRESENT.encode() in search.last.stdout, f"memparse finds {PRESENT} ({kind})")
        rows.append(ratio_row(f"memparse big.{kind} --search / {tool} | grep", pipe.median,
                              search.median, None, None))
        rows.append(ratio_row(f"show big.{kind} / {tool} >/dev/null", alone.median,
                              shown.median, None, None))
        rows.append([f"memparse big.{kind} --search: peak RSS", "-",
                     f"{search.peak_rss_mib:.1f} MiB", "-", "-", f"< {RSS_TARGET_MIB:.0f} MiB",
                     "OK" if search.peak_rss_mib < RSS_TARGET_MIB else "MISSED"])
        every += [pipe, search, alone, shown]

    if real:
        made = real_archives(work / "real")
        if isinstance(made, str):
            print(f"\nreal checkpoints: skipped ({made})")
        else:
            archives, secret = made
            real_pages = extract_pages(archives["none"], work / "real-pages")
            base = grep(f"grep -c -a SECRET (real pages, {len(real_pages)} files)", secret,
                        real_pages)
            zpipe = piped("zstd -dc real.tar.zst | grep -c -a SECRET",
                          f"zstd -dc {shell_quote(archives['zstd'])} | grep -c -a {secret}")
            searches = {k: mig(f"memparse real.{k} --search SECRET", "memparse", a,
                               "--search", secret, env=tmp_env) for k, a in archives.items()}
            measure([base, zpipe, *searches.values()], reps, run)
            for k, cmd in searches.items():
                check(secret.encode() in cmd.last.stdout, f"memparse finds the secret ({k})")
                baseline = zpipe if k == "zstd" else base
                rows.append(ratio_row(f"memparse real.{k} --search / {baseline.label.split()[0]}"
                                      f"{' | grep' if k == 'zstd' else ''}", baseline.median,
                                      cmd.median, net_ratio(cmd.median - f, baseline.median),
                                      None))
            every += [base, zpipe, *searches.values()]

    print()
    print(f"RESULTS (medians of {reps}; baseline = small archive, grep, or the decompressor; "
          "ratio = measured / baseline;\n  net = the same ratio with the start-up floor taken "
          "off migrate's times)")
    print(render(["metric", "baseline", "measured", "ratio", "net", "target", "result"], rows,
                 lambda i: i in (1, 2, 3, 4)))

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
          f"{big_mib_s / greps[PRESENT].median:.0f} MiB/s, memparse "
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
    ap.add_argument("--no-compressed", dest="compressed", action="store_false",
                    help="skip the zstd- and gzip-compressed copies of the big archive")
    ap.add_argument("--real", action="store_true",
                    help="also measure real Podman checkpoints (root, Podman, CRIU 4.1.1)")
    ap.add_argument("--workdir", type=Path, default=None,
                    help="where to put the archives (a temporary subdirectory of it, removed "
                         "at the end) [default: the system temporary directory]")
    args = ap.parse_args(argv)
    if args.reps < 1 or args.small_mib < 0 or args.big_mib < 0:
        ap.error("--reps must be at least 1 and sizes non-negative")
    if not require():
        return 2
    return in_workdir("archive-bench-", args.workdir,
                      lambda work: bench(work, args.small_mib, args.big_mib, args.reps,
                                         args.compressed, args.real))


if __name__ == "__main__":
    sys.exit(main())
