"""Benchmark ``migrate pod`` of real containers against Podman's checkpoint and restore
of the same container by hand (the floor).

What it runs, side by side in one run (pod_cluster.py): the real control plane
with two real nodes, node-a and node-b (the real kubelet and CRI-O each, with
runc, conmon and CRIU 4.1.1: e2e/cluster/realnode.py), a loopback registry
(Debian's docker-registry), and a private Podman (e2e/real/podman.py, runc + the
CRIU scripts/setup-real built).
The workload is the counters container (e2e/real/counter.py: busybox-static,
a shell counting), small, and again with ``--mib`` MiB (default 256) of
touched memory held by a busybox awk child.

- migrate pod: a counters pod on node-a (created and awaited untimed), then
  ``migrate pod POD --to node-b --registry REG -o json``, timed from outside;
  its JSON gives each stage's seconds, CRIU's frozen time (stats-dump), the
  state window (checkpoint -> source stopped) and the unavailability (source
  stopped -> destination ready).
- by hand (the floor): ``podman run`` of the same root with the same
  environment (untimed), ``podman container checkpoint --export --compress none
  --print-stats`` (stops the container, as a migration's switch-over does),
  ``podman rm``, then ``podman container restore --import --print-stats``:
  same machine, no registry, no API server. Its state window and its
  unavailability are the same interval, checkpoint start -> restore done: the
  process does not run in between.

It prints one table, the ratios migrate / floor for the wall time and the
unavailability, CRIU's dump statistics of each side (stats-dump), and where
migrate's time goes (its stages). A report, not a
test: exit 0 whether or not migrate is close to the floor; non-zero only when
it could not measure. The machine is small and shared: one run of each by
default (``--reps``). Run as root from the repository root:
``.venv/bin/python bench/pod_bench.py``.
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from harness import BenchError, fmt_s, in_workdir, render, require, run_once
from pod_cluster import World, migrate_env, wait

from e2e.cluster import realnode
from migrate.adapters.checkpoint import Checkpoint
from migrate.settings import ArchiveSettings

STAGES = ("preflight", "checkpoint", "build", "create", "verify", "switchover", "cleanup")


@dataclass
class Run:
    """One migration's figures (seconds)."""

    wall: float
    frozen: float | None
    window: float
    unavailable: float
    stages: dict[str, float] = field(default_factory=dict)
    criu: dict[str, int] = field(default_factory=dict)  # CRIU's dump statistics (stats-dump)


def _migrate(w: World, work: Path, name: str, mib: int, tag: str) -> Run:
    w.start_counter(name, mib, f"BENCH-SECRET-{secrets.token_hex(6)}")
    env = {**migrate_env(w, work / "state"), "MIGRATE_CACHE_DIR": str(work / "cache" / tag)}
    s = run_once("migrate pod", [sys.executable, "-m", "migrate", "pod", name, "--to",
                                 "node-b", "--registry", f"{w.registry.host}/bench",
                                 "--no-tls-verify", "--timeout", "300", "-o", "json",
                                 "--delete-emptydir-data"], env)
    report = json.loads(s.stdout)
    if report.get("outcome") != "succeeded":
        raise BenchError(f"migrate pod {name}: outcome {report.get('outcome')}")
    restored = report["destination_pod"]
    before = w.logs(restored)
    wait(lambda: len(w.logs(restored)) > len(before), f"{restored} counting on node-b")
    w.remove(restored)
    stats: dict[str, int] = {}
    for archive in w.nodes["node-a"].checkpoints.glob("*"):
        with Checkpoint(archive, ArchiveSettings()) as ckpt:
            stats = ckpt.stats() or stats
        archive.unlink()
    frozen = report["images"]["counter"].get("frozen_time_us")
    return Run(s.seconds, frozen / 1e6 if frozen is not None else None,
               float(report["state_window_seconds"]), float(report["unavailability_seconds"]),
               {st["name"]: float(st["seconds"]) for st in report["stages"]}, stats)


def _podman(w: World, work: Path, name: str, mib: int) -> Run:
    p = w.podman
    env = [f"--env=SECRET=BENCH-SECRET-{secrets.token_hex(6)}", "--env=INTERVAL=1"]
    if mib:
        env.append(f"--env=BALLAST_MIB={mib}")
    p.podman("run", "--detach", "--name", name, "--network", "none", *env, w.podman_image,
             "/bin/sh", "/counter.sh")
    wait(lambda: "counter: 2" in (logs := p.podman("logs", name).stdout)
         and (not mib or "ballast:" in logs), f"podman {name} counting")
    out = work / f"{name}.tar"
    began = time.perf_counter()
    ckpt = p.podman("container", "checkpoint", "--export", str(out), "--compress", "none",
                    "--print-stats", name)
    checkpointed = time.perf_counter()
    p.podman("rm", name)
    removed = time.perf_counter()
    p.podman("container", "restore", "--import", str(out), "--print-stats")
    done = time.perf_counter()
    seen = p.podman("logs", name).stdout
    wait(lambda: len(p.podman("logs", name).stdout) > len(seen), f"podman {name} restored")
    p.podman("rm", "--force", "--time", "0", name)
    out.unlink()
    stats = json.loads(ckpt.stdout)["container_statistics"][0]["criu_statistics"]
    return Run(done - began, float(stats["frozen_time"]) / 1e6, done - began, done - began,
               {"checkpoint": checkpointed - began, "rm": removed - checkpointed,
                "restore": done - removed},
               {k: int(v) for k, v in stats.items() if isinstance(v, int)})


def _median(runs: Sequence[Run], key: str) -> float | None:
    values = [getattr(r, key) for r in runs if getattr(r, key) is not None]
    return statistics.median(values) if values else None


def _stage(runs: Sequence[Run], name: str) -> str:
    values = [r.stages[name] for r in runs if name in r.stages]
    return fmt_s(statistics.median(values)) if values else "-"


#: stats-dump's fields shown (stats.proto): times in us, the rest counts.
CRIU_FIELDS = ("freezing_time", "frozen_time", "memdump_time", "memwrite_time",
               "pages_scanned", "pages_written")


def _criu(runs: Sequence[Run], key: str) -> str:
    values = [r.criu[key] for r in runs if key in r.criu]
    if not values:
        return "-"
    value = statistics.median(values)
    return f"{value / 1000:.1f}" if key.endswith("_time") else f"{value:.0f}"


def _cell(value: float | None) -> str:
    return fmt_s(value) if value is not None else "-"


def _report(results: dict[tuple[str, str], list[Run]], mib: int) -> None:
    headers = ["workload", "how", "wall", "frozen (CRIU)", "state window", "unavailable",
               "checkpoint", "build+push", "restore"]
    rows = []
    for (size, how), runs in results.items():
        restore = _stage(runs, "restore") if how == "podman" else \
            fmt_s(statistics.median(r.stages["create"] + r.stages["verify"] for r in runs))
        rows.append([size, how, _cell(_median(runs, "wall")), _cell(_median(runs, "frozen")),
                     _cell(_median(runs, "window")), _cell(_median(runs, "unavailable")),
                     _stage(runs, "checkpoint"), _stage(runs, "build"), restore])
    print(render(headers, rows, lambda i: i >= 2))
    print()
    for size in ("small", f"{mib} MiB"):
        pod, floor = results[(size, "migrate pod")], results[(size, "podman")]
        ratio = {key: (_median(pod, key) or 0) / (_median(floor, key) or 1)
                 for key in ("wall", "window", "unavailable", "frozen")}
        print(f"{size}: migrate pod / podman by hand: wall {ratio['wall']:.2f}x, state "
              f"window {ratio['window']:.2f}x, unavailability {ratio['unavailable']:.2f}x, "
              f"CRIU frozen {ratio['frozen']:.2f}x")
    print("(migrate pod's source runs on until the destination is ready: its state window "
          "is when changes are lost, its unavailability the gap without a running copy)")
    print()
    print("CRIU's dump, from its statistics (median; times in ms):")
    fields = [k for k in CRIU_FIELDS if any(k in r.criu for runs in results.values()
                                            for r in runs)]
    print(render(["workload", "how", *fields], [
        [size, how, *(_criu(runs, k) for k in fields)]
        for (size, how), runs in results.items()], lambda i: i >= 2))
    print()
    print("where migrate pod's time goes (median seconds per stage):")
    for size in ("small", f"{mib} MiB"):
        runs = results[(size, "migrate pod")]
        print(f"  {size}: " + ", ".join(f"{name} {_stage(runs, name)}" for name in STAGES))


def bench(work: Path, mib: int, reps: int) -> None:
    """Start the world, run every case ``reps`` times (interleaved), print the report."""
    results: dict[tuple[str, str], list[Run]] = {}
    with World(work) as w:
        for rep in range(reps):
            for size, m in (("small", 0), (f"{mib} MiB", mib)):
                tag = f"{'s' if not m else 'm'}{rep}"
                results.setdefault((size, "migrate pod"), []).append(
                    _migrate(w, work, f"counters-{tag}", m, tag))
                results.setdefault((size, "podman"), []).append(
                    _podman(w, work, f"floor-{tag}", m))
                print(f"done: {size}, repetition {rep + 1}", file=sys.stderr, flush=True)
    # The raw figures first: a report that fails to render loses no measurement.
    print(json.dumps({f"{size} / {how}": [vars(r) for r in runs]
                      for (size, how), runs in results.items()}), file=sys.stderr)
    _report(results, mib)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=256,
                        help="touched memory of the large case, MiB (a power of two)")
    parser.add_argument("--reps", type=int, default=1, help="runs of each case")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where the temporary directory goes")
    args = parser.parse_args(argv)
    if not require("docker-registry", "podman", "runc", "kubectl"):
        return 2
    if (missing := realnode.missing()) is not None:
        print(f"error: {missing}", file=sys.stderr)
        return 2
    errors: tuple[type[Exception], ...] = (RuntimeError,)
    return in_workdir("pod-bench-", args.workdir,
                      lambda work: bench(work, args.mib, args.reps), errors)


if __name__ == "__main__":
    sys.exit(main())
