"""Benchmark ``migrate build`` against the issue's performance targets.

What it measures, on a generated checkpoint archive of realistic memory pages
(``e2e.archives.archivegen``, ~1 GiB by default), every image pushed to a loopback
registry (Debian's ``docker-registry``, ``e2e.services.registry``):

1. ``migrate build --builder native --compression none`` is within 1.5x of
   ``sha256sum ARCHIVE`` (the native builder reads the archive once, hashing
   and uploading as it goes).
2. The native builder (none) is at least 3.5x faster than the buildah path,
   ``migrate build --builder buildah --compression gzip`` (buildah from, add,
   config, commit, push; buildah's push compresses with gzip).
3. ``--compression zstd`` (native) is at least 3x faster than the buildah path;
   its layer size is reported against the archive size, and native gzip is
   measured too, for context.
4. The peak RSS of every ``migrate build`` mode stays under 200 MB.

Every push is cold. Before each ``migrate build`` (and each raw upload) the
registry is stopped, its storage deleted and the registry started again, so it
holds no blob at all; the repository name is fresh too (mode and repetition
in it); migrate's layer-digest cache (``MIGRATE_CACHE_DIR``) is a new empty
directory; before each buildah run buildah's blob-info cache
(``/var/lib/containers/cache/blob-info-cache-v1.boltdb``) is deleted so
buildah cannot reuse or mount an earlier upload. After each run the
registry's storage must hold at least the layer's bytes (proof the layer was
uploaded, not skipped) and, after each buildah run, ``buildah images`` and
``buildah containers`` must show nothing new (leftovers are reported and
removed). ``sync`` runs before every timed command, so one run's write-back
does not land in the next one's time.

Why this way: the machine is shared and noisy, so every command runs several
times, the commands are interleaved (the order rotates each repetition) and
medians are compared as ratios; one untimed warm-up run per command puts the
archive in the page cache and buildah's binaries in memory. Commands run as
subprocesses through the ``.venv/bin/migrate`` console script, so times
include Python's start-up; ``migrate --version`` is timed too, as that fixed
floor. Peak RSS and CPU come from ``/usr/bin/time -f "%M %U %S"`` around every
command: %M is the largest *single* process of the command's tree (for the
buildah mode: migrate itself or one buildah child, whichever is larger, never
their sum); %U and %S add up all of the tree's waited-for processes. The
registry's CPU seconds per run come from ``/proc/PID/stat``. Two floors show
where the native builder's time goes: ``hashlib`` SHA-256 over the archive in
1 MiB blocks (the hashing migrate does) and a raw upload of the archive bytes
(one POST, one PATCH with Content-Length, one PUT, from a small Python
``http.client`` script: what the registry alone costs to ingest them).

This is a report, not a test: it exits 0 whether or not targets are met, and
non-zero only when it could not measure (a command failed, no disk space, no
registry or buildah). It needs root for buildah's default storage. Local
files only: the archive and the registry's storage live in a temporary
directory (under ``--workdir`` if given) that is removed at the end.

The machinery (running, timing, interleaving, tables) is in ``harness.py``,
shared with ``archive_bench.py``.

Run from the repository root: ``.venv/bin/python bench/build_bench.py``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import (
    GNU_TIME,
    HAVE_GNU_TIME,
    MIB,
    MIGRATE,
    BenchError,
    Sample,
    Series,
    archive_args,
    check,
    fmt_s,
    generate,
    in_workdir,
    measure,
    process_cpu,
    render,
    require,
    run_once,
    wait4_note,
)

from e2e.services.registry import Registry, RegistryError

BLOB_INFO_CACHE = Path("/var/lib/containers/cache/blob-info-cache-v1.boltdb")
CONTAINERS_STORAGE = Path("/var/lib/containers")
SHA256SUM_TARGET = 1.5  # t(native none) / t(sha256sum) <=
BUILDAH_NONE_TARGET = 3.5  # t(buildah) / t(native none) >=
BUILDAH_ZSTD_TARGET = 3.0  # t(buildah) / t(native zstd) >=
RSS_TARGET_MB = 200.0
BLOCK = MIB  # migrate's default registry chunk_bytes: the hashing floor reads the same blocks

# The floors run as children, like everything measured: same start-up, same GNU time.
HASH_SNIPPET = """\
import hashlib, os, sys
buf = bytearray(int(sys.argv[2])); view = memoryview(buf); h = hashlib.sha256()
fd = os.open(sys.argv[1], os.O_RDONLY)
while n := os.readv(fd, [buf]):
    h.update(view[:n])
print(h.hexdigest())
"""
UPLOAD_SNIPPET = """\
import http.client, os, sys
host, repo, path, digest = sys.argv[1:5]
conn = http.client.HTTPConnection(host, blocksize=int(sys.argv[5]))
def call(method, url, body=None, headers={}):
    conn.request(method, url, body=body, headers=headers)
    resp = conn.getresponse(); resp.read()
    if resp.status not in (201, 202):
        sys.exit(f"{method} {url}: HTTP {resp.status}")
    return resp.headers["Location"]
loc = call("POST", f"/v2/{repo}/blobs/uploads/")
with open(path, "rb") as f:
    loc = call("PATCH", loc, f, {"Content-Type": "application/octet-stream",
                                 "Content-Length": str(os.fstat(f.fileno()).st_size)})
call("PUT", loc + ("&" if "?" in loc else "?") + "digest=" + digest)
"""


@dataclass(frozen=True)
class BuildSample(Sample):
    """One run of a command, with what the registry did meanwhile (if it was involved)."""

    registry_cpu: float | None = None
    stored_bytes: int | None = None  # registry storage after the run (it was empty before)
    report: dict[str, Any] | None = None  # migrate build -o json


@dataclass
class Command(Series[BuildSample]):
    """A command measured repeatedly.

    ``argv`` gets the run's tag ("warmup", "r1", ...) and the registry host (for
    fresh repository names). ``registry``: the command pushes, so the registry is
    emptied before each run. ``build``: a ``migrate build``; its JSON is kept.
    """

    argv: Callable[[str, str], list[str]]
    registry: bool = False
    build: bool = False
    buildah: bool = False

    @property
    def registry_cpu(self) -> float | None:
        vals = [s.registry_cpu for s in self.samples if s.registry_cpu is not None]
        return statistics.median(vals) if vals else None

    @property
    def reports(self) -> list[dict[str, Any]]:
        return [s.report for s in self.samples if s.report is not None]

    def timing(self, step: str) -> float | None:
        vals = [float(r["timings"][step]) for r in self.reports if step in r["timings"]]
        return statistics.median(vals) if vals else None


def tree_size(path: Path) -> int:
    """Bytes of the regular files under ``path``."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def buildah_ids() -> set[str]:
    """Ids of buildah's images and working containers ("image:ID", "container:ID")."""
    out: set[str] = set()
    for kind, args in (("image", ["images", "-q"]), ("container", ["containers", "-q"])):
        res = subprocess.run(["buildah", *args], check=True, capture_output=True, text=True)
        out |= {f"{kind}:{line.strip()}" for line in res.stdout.splitlines() if line.strip()}
    return out


class DiskWatch:
    """Samples the free space of some filesystems; reports the largest drop seen."""

    def __init__(self, paths: Sequence[Path]) -> None:
        by_dev: dict[int, list[Path]] = {}
        for p in paths:
            by_dev.setdefault(p.stat().st_dev, []).append(p)
        self.paths = [ps[0] for ps in by_dev.values()]
        self.names = {ps[0]: " and ".join(map(str, ps)) for ps in by_dev.values()}
        self.start_free = {p: shutil.disk_usage(p).free for p in self.paths}
        self.min_free = dict(self.start_free)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            for p in self.paths:
                self.min_free[p] = min(self.min_free[p], shutil.disk_usage(p).free)

    def __enter__(self) -> DiskWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class Bench:
    """The registry, the work directory and the per-run preparation of cold pushes."""

    def __init__(self, work: Path, registry: Registry) -> None:
        self.work = work
        self.registry = registry
        self.leftovers: list[str] = []
        self.max_stored = 0
        self._known_buildah: set[str] = set()
        self._runs = 0

    def fresh_registry(self) -> None:
        """Stop the registry, delete its storage, start it again: it holds no blob."""
        self.registry.stop()
        shutil.rmtree(self.registry.storage, ignore_errors=True)
        self.registry.start()

    def run(self, cmd: Command, tag: str) -> BuildSample:
        """Prepare a cold run of ``cmd``, run it, check and record what it did."""
        self._runs += 1
        env = dict(os.environ)
        if cmd.registry:
            self.fresh_registry()
        if cmd.build:
            cache = self.work / "cache" / str(self._runs)
            cache.mkdir(parents=True)
            env["MIGRATE_CACHE_DIR"] = str(cache)  # migrate's layer-digest cache: empty
        if cmd.buildah:
            BLOB_INFO_CACHE.unlink(missing_ok=True)
            self._known_buildah = buildah_ids()
        os.sync()
        reg_pid = self.registry.pid if cmd.registry else None
        reg_cpu0 = process_cpu(reg_pid) if reg_pid is not None else 0.0
        sample = run_once(cmd.label, cmd.argv(tag, self.registry.host if cmd.registry else ""),
                          env)
        extra: dict[str, Any] = {}
        if reg_pid is not None:
            extra["registry_cpu"] = process_cpu(reg_pid) - reg_cpu0
            extra["stored_bytes"] = tree_size(self.registry.storage)
            self.max_stored = max(self.max_stored, extra["stored_bytes"])
        if cmd.build:
            try:
                extra["report"] = json.loads(sample.stdout)
            except ValueError as e:
                raise BenchError(f"{cmd.label}: no JSON on stdout ({e})") from e
        if cmd.buildah:
            self._check_buildah(cmd)
        result = BuildSample(**vars(sample), **extra)
        check_upload(cmd, result)
        return result

    def _check_buildah(self, cmd: Command) -> None:
        """Nothing new in buildah's storage; remove (and report) what migrate left."""
        new = sorted(buildah_ids() - self._known_buildah)
        for item in new:
            kind, ident = item.split(":", 1)
            self.leftovers.append(f"{cmd.label}: {kind} {ident}")
            subprocess.run(["buildah", "rm" if kind == "container" else "rmi", ident],
                           check=False, capture_output=True)


def check_upload(cmd: Command, sample: BuildSample) -> None:
    """A cold push really uploaded its layer (the registry was empty before the run)."""
    if sample.report is not None:
        report = sample.report
        check(report.get("layer_uploaded", True) is True,
              f"{cmd.label}: migrate skipped the layer upload (layer_uploaded false)")
        check(int(report["layer_size"]) > 0, f"{cmd.label}: layer_size in the JSON")
        if sample.stored_bytes is not None:
            check(sample.stored_bytes >= int(report["layer_size"]),
                  f"{cmd.label}: registry storage ({sample.stored_bytes} B) smaller than the "
                  f"layer ({report['layer_size']} B): the upload was skipped")


def fmt_opt(value: float | None, fmt: str = "{:.3f}") -> str:
    return "-" if value is None else fmt.format(value)


def ratio_row(name: str, num: float, den: float, floor: float, target: float,
              at_most: bool, net_den: bool = True) -> list[str]:
    """``num / den`` against a target; net = the same with the start-up floor taken off
    migrate's times (the numerator's always, the denominator's when ``net_den``)."""
    ratio = num / den
    net_d = den - floor if net_den else den
    net = (num - floor) / net_d if net_d > 0.005 else None
    ok = ratio <= target if at_most else ratio >= target
    return [name, fmt_s(num), fmt_s(den), f"{ratio:.2f}", fmt_opt(net, "{:.2f}"),
            f"{'<=' if at_most else '>='} {target}", "OK" if ok else "MISSED"]


def bench(work: Path, big_mib: int, reps: int) -> None:
    archive = work / "checkpoint.tar"
    # buildah's storage (created at its first use: until then, the filesystem it goes on)
    containers = next(p for p in (CONTAINERS_STORAGE, *CONTAINERS_STORAGE.parents) if p.exists())
    watch_paths = [work, containers]
    free = {p: shutil.disk_usage(p).free for p in watch_paths}
    # archive + one registry upload (storage is emptied before every push) in work;
    # buildah: the unpacked container, the committed layer and push's staging.
    need = {work: 2 * big_mib * MIB + 64 * MIB, containers: 3 * big_mib * MIB}
    if os.stat(work).st_dev == os.stat(containers).st_dev:
        need = {work: sum(need.values())}
    for p, n in need.items():
        print(f"disk: {p}: {free[p] // MIB} MiB free, this run needs about {n // MIB} MiB")
        if free[p] < n:
            raise BenchError(f"{p}: {free[p] // MIB} MiB free, the run needs about {n // MIB}")

    print(f"generating the archive in {work} ...", flush=True)
    t_gen = generate(archive, big_mib)
    size = archive.stat().st_size
    with archive.open("rb") as fh:
        digest = "sha256:" + hashlib.file_digest(fh, "sha256").hexdigest()
    print(f"  {size / MIB:.1f} MiB archive ({big_mib} MiB of bulk memory), generated in "
          f"{t_gen:.1f} s")

    mig, arc, py = str(MIGRATE), str(archive), sys.executable

    def build(builder: str, compression: str) -> Command:
        def argv(tag: str, host: str) -> list[str]:
            image = f"{host}/bench/{builder}-{compression}-{tag}:latest"
            return [mig, "build", arc, "--image", image, "--builder", builder,
                    "--compression", compression, "--no-tls-verify", "-o", "json"]
        return Command(f"migrate build {builder} {compression}", argv, registry=True,
                       build=True, buildah=builder == "buildah")

    floor = Command("migrate --version", lambda tag, host: [mig, "--version"])
    sha = Command("sha256sum ARCHIVE", lambda tag, host: ["sha256sum", arc])
    hashing = Command("hashlib sha256 (1 MiB blocks)",
                      lambda tag, host: [py, "-c", HASH_SNIPPET, arc, str(BLOCK)])
    upload = Command("raw upload (http.client)", lambda tag, host: [
        py, "-c", UPLOAD_SNIPPET, host, f"bench/raw-{tag}", arc, digest, str(BLOCK)],
        registry=True)
    native = {c: build("native", c) for c in ("none", "zstd", "gzip")}
    buildah = build("buildah", "gzip")
    commands = [floor, sha, hashing, upload, *native.values(), buildah]

    registry = Registry(work / "registry")
    registry.start()
    b = Bench(work, registry)
    try:
        with DiskWatch(watch_paths) as disk:
            print(f"measuring: {reps} interleaved repetitions after one warm-up run each "
                  f"({len(commands)} commands, every push to an emptied registry) ...",
                  flush=True)
            measure(commands, reps, b.run, progress=True)
    finally:
        registry.stop()

    hexdigest = digest.removeprefix("sha256:")
    check(sha.last.stdout.split()[0].decode() == hexdigest, "sha256sum's digest")
    check(hashing.last.stdout.strip().decode() == hexdigest, "hashlib's digest")
    for cmd in native.values():
        for r in cmd.reports:
            check(int(r["archive_size"]) == size, f"{cmd.label}: archive_size")
    check(all(s.stored_bytes is not None and s.stored_bytes >= size for s in upload.samples),
          "raw upload: the registry holds the archive's bytes")
    check(all(int(r["layer_size"]) == size for r in native["none"].reports),
          "native none: the layer is the archive, byte for byte")

    f = floor.median
    t_none, t_zstd, t_gzip, t_bah = (native["none"].median, native["zstd"].median,
                                     native["gzip"].median, buildah.median)
    zstd_layer = int(native["zstd"].reports[-1]["layer_size"])
    gzip_layer = int(native["gzip"].reports[-1]["layer_size"])
    bah_layer = int(buildah.reports[-1]["layer_size"])
    rows = [
        ratio_row("t(native none) / t(sha256sum)", t_none, sha.median, f, SHA256SUM_TARGET,
                  True, net_den=False),
        ratio_row("t(buildah gzip) / t(native none)", t_bah, t_none, f, BUILDAH_NONE_TARGET,
                  False),
        ratio_row("t(buildah gzip) / t(native zstd)", t_bah, t_zstd, f, BUILDAH_ZSTD_TARGET,
                  False),
        ["t(buildah gzip) / t(native gzip)", fmt_s(t_bah), fmt_s(t_gzip), f"{t_bah / t_gzip:.2f}",
         fmt_opt((t_bah - f) / (t_gzip - f), "{:.2f}"), "(info)", "-"],
    ]
    for cmd in (*native.values(), buildah):
        rss = cmd.peak_rss_mb
        rows.append([f"{cmd.label.removeprefix('migrate ')}: peak RSS", f"{rss:.1f} MB", "-",
                     "-", "-", f"< {RSS_TARGET_MB:.0f} MB", "OK" if rss < RSS_TARGET_MB
                     else "MISSED"])
    for name, layer in (("native zstd", zstd_layer), ("native gzip", gzip_layer),
                        ("buildah gzip", bah_layer)):
        rows.append([f"{name}: layer / archive size", f"{layer / MIB:.1f} MiB",
                     f"{size / MIB:.1f} MiB", f"{layer / size:.3f}", "-", "(info)", "-"])
    rows.append(["start-up floor: migrate --version", fmt_s(f), "-", "-", "-", "(info)", "-"])
    rows.append(["sha256sum throughput", f"{size / MIB / sha.median:.0f} MiB/s", "-", "-", "-",
                 "(info)", "-"])

    print()
    print(f"RESULTS ({size / MIB:.0f} MiB archive; medians of {reps}; ratio = A / B; net = the "
          "same ratio with the\n  start-up floor taken off migrate's times; RSS in MB of "
          "10^6 bytes)")
    print(render(["metric", "A", "B", "ratio", "net", "target", "result"], rows,
                 lambda i: i in (1, 2, 3, 4)))

    print()
    print("RAW (seconds; peak RSS is the largest of all runs; CPU = user + system of the "
          "command's\n  process tree, registry CPU = the registry's own, medians)")
    print(render(
        ["command", "median", "min", "max", "MiB/s", "CPU", "registry CPU", "peak RSS", "runs"],
        [[c.label, f"{c.median:.3f}", f"{min(c.times):.3f}", f"{max(c.times):.3f}",
          "-" if c is floor else f"{size / MIB / c.median:.0f}", f"{c.cpu:.2f}",
          fmt_opt(c.registry_cpu, "{:.2f}"), f"{c.peak_rss_mb:.1f} MB",
          " ".join(f"{t:.3f}" for t in c.times)] for c in commands],
        lambda i: 0 < i < 8))

    builds = [*native.values(), buildah]
    steps = list(dict.fromkeys(k for c in builds for r in c.reports for k in r["timings"]))
    print()
    print("STEPS (migrate build's own timings from its JSON, medians, seconds; config is the "
          "config blob's\n  upload for native, `buildah config` for buildah)")
    print(render(["step", *(c.label.removeprefix("migrate build ") for c in builds)],
                 [[s, *(fmt_opt(c.timing(s)) for c in builds)] for s in steps],
                 lambda i: i > 0))

    print()
    print("disk (free-space drop, whole filesystem, largest seen during the measurements; "
          "other users' writes included):")
    for p in disk.paths:
        used = disk.start_free[p] - disk.min_free[p]
        print(f"  {disk.names[p]}: {disk.start_free[p] // MIB} MiB free at start, up to "
              f"{max(used, 0) // MIB} MiB used")
    print(f"  archive {size / MIB:.0f} MiB; registry storage up to "
          f"{b.max_stored / MIB:.0f} MiB (emptied before every push)")
    if b.leftovers:
        print(f"WARNING: buildah images/containers left behind by migrate (removed): "
              f"{'; '.join(b.leftovers)}")
    else:
        print("buildah: no images or containers left behind after any buildah run")
    if HAVE_GNU_TIME:
        print(f"peak RSS and CPU: {GNU_TIME} -f '%M %U %S' around every run; for the buildah "
              "mode %M is the\n  largest single process of migrate's tree (migrate or one "
              "buildah child), not their sum")
    else:
        print(wait4_note())


def main(argv: Sequence[str] | None = None) -> int:
    args = archive_args(argv, __doc__, 1024, "where to put the archive and the registry's "
                        "storage")
    if not require("buildah", "docker-registry", "sha256sum"):
        return 2
    return in_workdir("build-bench-", args.workdir,
                      lambda work: bench(work, args.big_mib, args.reps), (RegistryError,))


if __name__ == "__main__":
    sys.exit(main())
