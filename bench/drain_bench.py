"""Benchmark ``migrate drain`` against issue 7's performance and scale targets.

The targets: on the real control plane with node agents, a drain of 200 pods
over 4 nodes with ``--concurrency 16`` reaches at least 70% parallel
efficiency, i.e. wall time <= ideal / 0.7, where ideal = (sum of the pods'
simulated latencies) / concurrency; the API requests per pod are reported;
the tool's peak RSS stays under 300 MB.

What it runs, side by side in one run: a loopback registry (Debian's
``docker-registry``, ``e2e.services.registry``), one real control plane (Kubernetes'
API server, controller manager and scheduler on etcd, ``e2e.cluster``; root
and the binaries scripts/setup builds), and, for every measured drain, fresh
node agents (``e2e.cluster.world.Cluster``): the source node node-a and
``--nodes`` destinations (node-b, node-c, ...), each in its own network
namespace, and a namespace of its own. node-a holds ``--pods`` pods, a mix of
bare pods and Deployments' pods (``--deployments`` x ``--replicas``, each
Deployment with a PodDisruptionBudget of ``--max-unavailable``; the
Deployments' pods are handed over to their ReplicaSets: the real ReplicaSet
controller, the real disruption controller), each with ``--mib`` MiB of
simulated memory; node-a reports a capacity of 256 pods, as a node that holds
200 pods must. They are created and awaited untimed. Then, timed: ``migrate
drain node-a --concurrency C --registry REG -o json``, a subprocess under GNU
time (wall, peak RSS, CPU). Afterwards every pod must have moved: its
restored copy runs on the node the drain chose, from its checkpoint image
(drain_cluster.py).

The simulated latencies, per migrated pod, are the node agents' knobs
(e2e/nodes/nodeconfig.py; containers are simulated processes):

- the checkpoint: ``--checkpoint-seconds`` per MiB of the pod's memory
  (NodeConfig.checkpoint_delay_per_mib), here x ``--mib``;
- the restore: the agent's start latency (``--start-latency``, from the
  restored pod being bound to its start) plus the image pull
  (``--pull-seconds``, NodeConfig.image_pull_seconds). The destinations pull
  ``--pulls-at-once`` images at a time (0, the default: no limit, a kubelet
  with serializeImagePulls false; the kubelet's own default is 1, one pull at
  a time per node, which bounds a drain's restores by the destinations' pulls:
  ``--pulls-at-once 1`` shows that bound);
- the switch-over: the source pod's stop latency (``--stop-latency``).

Their sum over the pods, over the concurrency, is the ideal: what a perfect
tool would take with C migrations always in flight and no cost of its own.
efficiency = ideal / wall; the target is >= 0.7. Everything else counts
against the tool: its start-up, the cordon and the plan, the archives' reads
and pushes, the journal, Events, renders and watches, waits for disruption
budgets, and the control plane's, the agents' and the registry's CPU on this
machine's cores (they share them with the tool).

Side by side: a serial drain (``--serial-pods`` bare pods, ``--concurrency
1``) in each repetition shows the per-pod cost of one migration on its own
(its wall per pod over its simulated latency per pod): the parallel drain's
efficiency can only be as good as the serial one's allows. The runs are
interleaved (the order rotates each repetition) after one untimed warm-up of
each kind, and medians are compared: the machine is shared and noisy.

Requests are counted on the API server's side, from its audit log (the
launcher's Options.audit_users: migrate runs as a user of its own,
``bench-migrate`` in group system:masters, so only its requests count), and
by migrate itself (the report's ``api_requests``), per pod. The pod journals
the drain wrote give each stage's median time next to the simulated latency
it holds.

This is a report, not a test: it exits 0 whether or not the targets are met,
and non-zero only when it could not measure. Run from the repository root, as
root: ``.venv/bin/python bench/drain_bench.py`` (200 pods, 4 destinations,
concurrency 16, 3 repetitions: about a quarter of an hour).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drain_cluster import AuditWindow, DrainCluster, Population, migrate_env
from harness import (
    MB,
    MIGRATE,
    BenchError,
    CpuWindow,
    Sample,
    Series,
    fmt_s,
    measure,
    render,
    run_once,
    with_registry,
)

from e2e.cluster import binaries, nodehost
from e2e.cluster.launcher import ControlPlane, Options, control_plane
from e2e.cluster.world import Cluster
from e2e.nodes import NodeConfig, RegistryConfig
from e2e.services.registry import Registry

EFFICIENCY_TARGET = 0.7  # ideal / wall >=
RSS_TARGET_MB = 300.0  # peak RSS of migrate drain <
SOURCE = "node-a"
MAX_PODS = "256"  # the source's pod capacity: the kubelet's default (110) is too few
USER = "bench-migrate"  # migrate's user: the audit log counts its requests
# Stage of a `migrate pod` run -> the simulated latency it contains.
STAGE_LATENCY = {"checkpoint": "checkpoint", "verify": "pull + start", "switchover": "stop"}


@dataclass(frozen=True)
class Latencies:
    """The node agents' knobs, in seconds."""

    checkpoint_per_mib: float
    pull: float
    start: float
    stop: float

    def per_pod(self, mib: int) -> dict[str, float]:
        return {"checkpoint": self.checkpoint_per_mib * mib, "pull + start": self.pull + self.start,
                "stop": self.stop}


@dataclass(frozen=True)
class DrainSample(Sample):
    """One measured drain."""

    report: dict[str, Any] = field(default_factory=dict)
    requests: int = 0  # seen by the API server
    kinds: tuple[tuple[str, int], ...] = ()  # request_kind -> how many
    stages: dict[str, list[float]] = field(default_factory=dict)  # from the pod journals
    spread: tuple[tuple[str, int], ...] = ()
    cpu_split: dict[str, float] = field(default_factory=dict)  # CpuWindow's, in the drain


@dataclass
class Drain(Series[DrainSample]):
    """One kind of drain: its pods and concurrency."""

    population: Population = field(default_factory=lambda: Population(0, 0, 0, 1))
    concurrency: int = 1

    @property
    def pods(self) -> int:
        return self.population.pods

    def ideal(self, lat: Latencies) -> float:
        return self.pods * sum(lat.per_pod(self.population.mib).values()) / self.concurrency

    def efficiency(self, lat: Latencies) -> float:
        return self.ideal(lat) / self.median

    @property
    def pool(self) -> float:
        """Median seconds from the first pod's start to the last pod's end."""
        return statistics.median(
            float(max(p["ended_at"] for p in s.report["pods"]) -
                  min(p["started_at"] for p in s.report["pods"])) for s in self.samples)

    def per_pod(self, what: str) -> float:
        if what == "server":
            return statistics.median(s.requests / self.pods for s in self.samples)
        return statistics.median(float(s.report["api_requests"]) / self.pods
                                 for s in self.samples)

    def cpu_of(self, name: str) -> float:
        """Median CPU seconds of one CpuWindow entry over the samples."""
        return statistics.median(s.cpu_split.get(name, 0.0) for s in self.samples)

    def stage(self, name: str) -> float:
        return statistics.median(t for s in self.samples for t in s.stages.get(name, []))


class Runner:
    """Runs one drain on fresh node agents of the control plane ``cp``."""

    def __init__(self, work: Path, cp: ControlPlane, registry: Registry, destinations: int,
                 lat: Latencies, pulls_at_once: int | None) -> None:
        self.work, self.cp, self.registry, self.lat = work, cp, registry, lat
        self.pulls_at_once = pulls_at_once
        self.nodes = (SOURCE, *(f"node-{chr(ord('b') + i)}" for i in range(destinations)))
        self.kubeconfig = cp.kubeconfig(USER, group="system:masters")
        self._runs = 0

    def run(self, drain: Drain, tag: str) -> DrainSample:
        """One drain of ``drain``'s kind (tag: "warmup", "r1", ...)."""
        self._runs += 1
        run_dir = self.work / f"run-{self._runs}"
        lat = self.lat
        # The pull delay on the destinations only: the source's pods start (untimed)
        # without it, and no restore happens there.
        source = NodeConfig(checkpoint_delay_per_mib=lat.checkpoint_per_mib,
                            capacity={"pods": MAX_PODS})
        destination = NodeConfig(image_pull_seconds=lat.pull,
                                 max_parallel_image_pulls=self.pulls_at_once)
        configs = {n: source if n == SOURCE else destination for n in self.nodes}
        print(f"  {tag}: {drain.label}: {drain.pods} pods ...", flush=True)
        with Cluster(self.cp, run_dir / "cluster", nodes=self.nodes, node_config=configs,
                     start_latency=lat.start, stop_latency=lat.stop,
                     registries=RegistryConfig(insecure=(self.registry.host,))) as world:
            cluster = DrainCluster(world, f"drain-{self._runs}")
            try:
                cluster.populate(SOURCE, drain.population)
                window = AuditWindow(self.cp.logs["audit"], USER)
                cpu = CpuWindow({**self.cp.pids, "registry": self.registry.pid or 0})
                sample = run_once(f"migrate drain ({drain.label})", [
                    str(MIGRATE), "drain", SOURCE, "--registry", f"{self.registry.host}/bench",
                    "--no-tls-verify", "--concurrency", str(drain.concurrency), "--timeout",
                    "300", "-o", "json", "--delete-emptydir-data"], self._env(run_dir, world))
                cpu_split = cpu.close()
                requests = window.close()
                try:
                    report: dict[str, Any] = json.loads(sample.stdout)
                except ValueError as e:
                    raise BenchError(f"migrate drain: no JSON on stdout ({e})") from e
                spread = cluster.check(report, SOURCE, self.registry.host)
            finally:
                cluster.remove()
        kinds = Counter(request_kind(r) for r in requests)
        return DrainSample(**vars(sample), report=report, requests=len(requests),
                           kinds=tuple(sorted(kinds.items())),
                           stages=_stages(run_dir / "state", report),
                           spread=tuple(sorted(spread.items())), cpu_split=cpu_split)

    def _env(self, run_dir: Path, world: Cluster) -> dict[str, str]:
        # A state directory and an empty layer-digest cache per run: every push is cold.
        return {**migrate_env(world, self.kubeconfig, run_dir / "state"),
                "MIGRATE_CACHE_DIR": str(run_dir / "cache")}


def request_kind(request: str) -> str:
    """"VERB URI STATUS" (AuditWindow's) -> "verb resource[/subresource]", the object's
    name and namespace left out: what the requests per pod are spent on."""
    verb, uri, _ = request.split(" ", 2)
    path, _, query = uri.partition("?")
    parts = [p for p in path.split("/") if p][2:]  # past /api/v1 or /apis/GROUP
    if path.startswith("/apis/"):
        parts = parts[1:]  # and the group's version
    if parts[:1] == ["namespaces"] and len(parts) > 2:
        parts = parts[2:]
    resource = parts[0] if parts else path
    sub = f"/{parts[2]}" if len(parts) > 2 else ""
    if "watch=true" in query or "watch=1" in query:
        verb = "watch"
    elif verb == "GET" and len(parts) == 1:
        verb = "list"
    return f"{verb} {resource}{sub}"


def _stages(state: Path, report: dict[str, Any]) -> dict[str, list[float]]:
    """Each stage's seconds over the drain's `migrate pod` journals; then, per migrated
    pod, its time in the drain in all and the part of it outside its runs' stages
    (claims, budget waits, the drain's journal, retries' pauses)."""
    out: dict[str, list[float]] = {}
    in_stages: dict[str, float] = {}
    for path in sorted((state / "journal").glob("pod-*.json")):
        journal = json.loads(path.read_text())
        for stage in journal["stages"]:
            if stage.get("seconds") is not None:
                out.setdefault(stage["name"], []).append(float(stage["seconds"]))
                in_stages[journal["id"]] = in_stages.get(journal["id"], 0.0) + stage["seconds"]
    for pod in report.get("pods") or []:
        if pod.get("outcome") == "migrated" and pod.get("seconds") is not None:
            out.setdefault(IN_ALL, []).append(float(pod["seconds"]))
            out.setdefault(OUTSIDE, []).append(float(pod["seconds"]) - sum(
                in_stages.get(j, 0.0) for j in pod.get("journals") or []))
    return out


IN_ALL, OUTSIDE = "the pod in all", "outside stages"


def target_rows(par: Drain, serial: Drain, lat: Latencies) -> list[list[str]]:
    """The targets, then the serial drain's efficiency for context."""
    eff, rss = par.efficiency(lat), par.peak_rss_mb
    return [
        [f"efficiency, {par.pods} pods, concurrency {par.concurrency}",
         f"{eff:.2f}", f">= {EFFICIENCY_TARGET}", "OK" if eff >= EFFICIENCY_TARGET else "MISSED"],
        ["peak RSS of migrate drain (MB)", f"{rss:.0f}", f"< {RSS_TARGET_MB:g}",
         "OK" if rss < RSS_TARGET_MB else "MISSED"],
        [f"API requests per pod (server side; migrate counts {par.per_pod('migrate'):.1f})",
         f"{par.per_pod('server'):.1f}", "(info)", "-"],
        [f"efficiency, {serial.pods} pods, concurrency 1 (serial)",
         f"{serial.efficiency(lat):.2f}", "(info)", "-"],
    ]


def run_rows(par: Drain, serial: Drain, lat: Latencies) -> list[list[str]]:
    rows = []
    for d in (par, serial):
        rows.append([d.label, str(d.pods), str(d.concurrency), fmt_s(d.ideal(lat)),
                     fmt_s(d.median), fmt_s(d.pool), f"{d.median / d.pods:.3f}",
                     f"{d.cpu:.1f}", f"{d.peak_rss_mb:.0f}",
                     " ".join(f"{t:.1f}" for t in d.times)])
    return rows


def stage_rows(par: Drain, serial: Drain, lat: Latencies, mib: int) -> list[list[str]]:
    simulated = lat.per_pod(mib)
    names = list(par.last.stages) or list(serial.last.stages)
    rows = []
    for name in names:
        holds = STAGE_LATENCY.get(name)
        held = (f"{simulated[holds]:.3f} ({holds})" if holds else
                f"{sum(simulated.values()):.3f} (all)" if name == IN_ALL else "-")
        rows.append([name, f"{serial.stage(name):.3f}", f"{par.stage(name):.3f}", held])
    return rows


CPU_PARTS = {"migrate (the tool, GNU time)": None, "node agents (the bench's threads)": "self",
             "kube-apiserver": "kube-apiserver", "etcd": "etcd",
             "kube-controller-manager": "kube-controller-manager",
             "kube-scheduler": "kube-scheduler", "registry": "registry"}


def cpu_rows(par: Drain, serial: Drain, lat: Latencies) -> list[list[str]]:
    """Whose CPU the drains used, and what the machine's cores allow.

    When the machine is busy for most of a drain's wall time, the drain is bound
    by the cores, and its efficiency cannot pass ideal / (busy CPU / cores) of
    the work it needs: a ceiling no change to the tool's waiting can lift, only
    less CPU per pod (the tool's, the control plane's, the agents').
    """
    cores = os.cpu_count() or 1
    drains = (par, serial)

    def needed(d: Drain) -> float:  # the drain's own work: every part but other work
        return d.cpu + sum(d.cpu_of(k) for k in CPU_PARTS.values() if k)

    def row(label: str, value: Callable[[Drain], float], fmt: str = "{:.1f}") -> list[str]:
        return [label, *(fmt.format(value(d)) for d in drains)]

    return [
        *(row(label, lambda d, k=key: d.cpu if k is None else d.cpu_of(k))
          for label, key in CPU_PARTS.items()),
        row("the rest of the machine (other work)",
            lambda d: max(0.0, d.cpu_of("machine") - needed(d))),
        row("all cores busy (machine)", lambda d: d.cpu_of("machine")),
        row(f"cores busy on average (of {cores})", lambda d: d.cpu_of("machine") / d.median,
            "{:.2f}"),
        row("efficiency ceiling: ideal / (the drain's CPU / cores)",
            lambda d: d.ideal(lat) / max(needed(d) / cores, 1e-9), "{:.2f}"),
        row("CPU per pod (tool + control plane + agents + registry)",
            lambda d: needed(d) / d.pods, "{:.3f}"),
    ]


def bench(work: Path, args: argparse.Namespace) -> None:
    lat = Latencies(args.checkpoint_seconds, args.pull_seconds, args.start_latency,
                    args.stop_latency)
    deployed = args.deployments * args.replicas
    if deployed > args.pods:
        raise BenchError(f"--deployments x --replicas ({deployed}) exceeds --pods ({args.pods})")
    par = Drain(f"drain, concurrency {args.concurrency}",
                population=Population(args.pods - deployed, args.deployments, args.replicas,
                                      args.mib, args.max_unavailable),
                concurrency=args.concurrency)
    serial = Drain("drain, serial", population=Population(args.serial_pods, 0, 0, args.mib))
    missing = binaries.missing() or nodehost.missing()
    if missing:
        raise BenchError(missing)
    registry = Registry(work / "registry").start()
    try:
        print("starting the control plane ...", flush=True)
        with control_plane(work / "control-plane", Options(audit_users=(USER,))) as cp:
            runner = Runner(work, cp, registry, args.nodes, lat, args.pulls_at_once or None)
            print(f"measuring: {args.reps} interleaved repetitions after one warm-up each; "
                  f"every drain on fresh node agents ...", flush=True)
            measure([par, serial], args.reps, runner.run)
    finally:
        registry.stop()
    report(par, serial, lat, args)


def report(par: Drain, serial: Drain, lat: Latencies, args: argparse.Namespace) -> None:
    per_pod = lat.per_pod(args.mib)
    print()
    print(f"RESULTS (medians of {args.reps}; {par.pods} pods on {SOURCE}: "
          f"{par.population.bare} bare, {par.population.deployments} Deployments x "
          f"{par.population.replicas}, budgets maxUnavailable {args.max_unavailable}; "
          f"{args.nodes} destinations pulling "
          f"{args.pulls_at_once or 'any number of'} image(s) at once; simulated latency per pod "
          f"{sum(per_pod.values()):g} s: "
          + ", ".join(f"{k} {v:g}" for k, v in per_pod.items()) + ")")
    print(render(["measure", "value", "target", "result"], target_rows(par, serial, lat),
                 lambda i: i == 1))
    print()
    print("RUNS (seconds; ideal = pods x simulated latency / concurrency; pool = first pod's "
          "start to last pod's end;\n  CPU = migrate's user + system; RSS in MB)")
    print(render(["drain", "pods", "C", "ideal", "wall", "pool", "wall/pod", "CPU", "RSS",
                  "runs"], run_rows(par, serial, lat), lambda i: 0 < i < 9))
    print()
    print("CPU (median CPU seconds while the timed drain ran, per part)")
    print(render(["part", "parallel", "serial"], cpu_rows(par, serial, lat), lambda i: i > 0))
    print()
    print("STAGES (median seconds per pod, from the drains' `migrate pod` journals)")
    print(render(["stage", "serial", f"concurrency {par.concurrency}", "simulated"],
                 stage_rows(par, serial, lat, args.mib), lambda i: i in (1, 2)))
    print()
    spread = Counter(dict(par.last.spread))
    print(f"API REQUESTS per pod (medians): {par.per_pod('server'):.1f} in the API server's "
          f"audit log ({par.per_pod('migrate'):.1f} counted by migrate); serial "
          f"{serial.per_pod('server'):.1f}")
    kinds = Counter(dict(par.last.kinds))
    print("  last parallel drain's, per pod: " + ", ".join(
        f"{kind} {n / par.pods:.2f}" for kind, n in kinds.most_common()))
    waits = [float(p.get("budget_wait_seconds") or 0) for p in par.last.report["pods"]]
    print(f"last drain's waits for disruption budgets: {sum(1 for w in waits if w > 0)} pods, "
          f"{sum(waits):.1f} s in all")
    print("last drain's destinations: " + ", ".join(f"{n} {c}" for n, c in sorted(spread.items())))
    print(f"peak RSS: parallel {par.peak_rss_mb:.0f} MB, serial {serial.peak_rss_mb:.0f} MB "
          f"(target < {RSS_TARGET_MB:g} MB; {par.peak_rss_mb * MB / 2**20:.0f} MiB)")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pods", type=int, default=200, help="pods on the drained node")
    ap.add_argument("--deployments", type=int, default=10,
                    help="Deployments among them (the rest are bare pods)")
    ap.add_argument("--replicas", type=int, default=10, help="pods per Deployment")
    ap.add_argument("--max-unavailable", type=int, default=2,
                    help="each Deployment's PodDisruptionBudget (maxUnavailable; 0: none)")
    ap.add_argument("--nodes", type=int, default=4, help="destination nodes")
    ap.add_argument("--concurrency", type=int, default=16, help="migrate drain --concurrency")
    ap.add_argument("--serial-pods", type=int, default=8,
                    help="pods of the serial drain (concurrency 1) measured alongside")
    ap.add_argument("--reps", type=int, default=3, help="timed repetitions of each drain")
    ap.add_argument("--mib", type=int, default=1, help="simulated memory of each pod (MiB)")
    ap.add_argument("--checkpoint-seconds", type=float, default=1.0,
                    help="simulated checkpoint time per MiB of memory")
    ap.add_argument("--pull-seconds", type=float, default=0.5,
                    help="simulated image pull time (each restore pulls its image)")
    ap.add_argument("--pulls-at-once", type=int, default=0,
                    help="image pulls a destination runs at once (0: no limit; 1: the "
                         "kubelet's default, serializeImagePulls)")
    ap.add_argument("--start-latency", type=float, default=0.5,
                    help="simulated seconds from a pod bound to it starting")
    ap.add_argument("--stop-latency", type=float, default=0.5,
                    help="simulated seconds from a pod's deletion to it gone")
    ap.add_argument("--workdir", type=Path, default=None,
                    help="where the control plane, the nodes and the registry go (a temporary "
                         "subdirectory, removed at the end)")
    args = ap.parse_args(argv)
    if args.max_unavailable < 0:
        ap.error("--max-unavailable must be >= 0")
    if args.pulls_at_once < 0:
        ap.error("--pulls-at-once must be >= 0")
    if min(args.pods, args.nodes, args.concurrency, args.serial_pods, args.reps, args.mib) < 1:
        ap.error("--pods, --nodes, --concurrency, --serial-pods, --reps and --mib must be >= 1")
    if args.nodes > 24:
        ap.error("--nodes: at most 24 destinations (node-b ... node-y)")
    return with_registry("drain-bench-", args.workdir, lambda work: bench(work, args))


if __name__ == "__main__":
    sys.exit(main())
