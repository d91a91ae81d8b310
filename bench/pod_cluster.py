"""What pod_bench.py runs: the real control plane, two node agents running real (runc)
containers, a loopback registry, and a private Podman for the floor.

- ``World``: everything started in one ``with``, stopped at the end (failures too):
  the registry, the control plane (e2e/cluster), node agents node-a and node-b
  pulling from the registry, the counter's image pushed there
  (e2e/real/counter.py), and a ``PodmanWorld`` (e2e/real/podman.py) holding the
  same root as an image of its own.
- ``World.start_counter``: a counters pod on node-a, a real container, with
  BALLAST_MIB MiB of touched memory, awaited (untimed) until its log shows the
  ballast built and the counter counting.
- ``World.remove``: pods deleted and awaited gone.
- ``migrate_env``: the environment of a migrate command against the world.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness import BenchError

from e2e.cluster.launcher import control_plane
from e2e.cluster.world import Cluster
from e2e.nodes import RegistryConfig
from e2e.real.counter import counter_pod, counter_rootfs, push_counter_image
from e2e.real.podman import PodmanWorld
from e2e.real.tools import tools
from e2e.services.registry import Registry

TIMEOUT = 120.0


def wait(predicate: Callable[[], Any], what: str, timeout: float = TIMEOUT) -> Any:
    """Poll ``predicate`` until it is truthy; BenchError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)
    return value


class World:
    """The bench's cluster, registry and Podman, under ``work``."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self._stack = contextlib.ExitStack()
        self.registry: Registry
        self.cluster: Cluster
        self.podman: PodmanWorld
        self.image = ""
        self.podman_image = "localhost/bench-counter:1"

    def __enter__(self) -> World:
        try:
            self.registry = self._stack.enter_context(Registry(self.work / "registry"))
            cp = self._stack.enter_context(control_plane(self.work / "control-plane"))
            self.cluster = self._stack.enter_context(Cluster(
                cp, self.work / "cluster", nodes=("node-a", "node-b"),
                registries=RegistryConfig(insecure=(self.registry.host,)),
                start_latency=0.05, stop_latency=0.05))
            self.image = push_counter_image(self.registry.host, "bench/counter", "1",
                                            self.work / "image")
            self.podman = self._stack.enter_context(
                PodmanWorld(self.work / "podman", tools().criu_bin_dir))
            self.podman.build_image(counter_rootfs(self.work / "podman-rootfs"),
                                    self.podman_image, env="PATH=/bin")
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def kubectl(self, *args: str, input: str | None = None) -> str:
        done = subprocess.run(["kubectl", "--kubeconfig", str(self.cluster.kubeconfig), *args],
                              capture_output=True, text=True, input=input, timeout=120,
                              check=False)
        if done.returncode != 0:
            raise BenchError(f"kubectl {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout

    def logs(self, pod: str) -> str:
        """`kubectl logs POD` ("" while the container is not there)."""
        done = subprocess.run(["kubectl", "--kubeconfig", str(self.cluster.kubeconfig),
                               "logs", pod], capture_output=True, text=True, timeout=60,
                              check=False)
        return done.stdout if done.returncode == 0 else ""

    def start_counter(self, name: str, mib: int, secret: str) -> None:
        """A counters pod on node-a holding ``mib`` MiB, awaited until it counts."""
        body = counter_pod(name, self.image, secret=secret, node="node-a", ballast_mib=mib)
        self.kubectl("apply", "-f", "-", input=json.dumps(body))
        wait(lambda: "counter: 2" in self.logs(name)
             and (not mib or "ballast:" in self.logs(name)), f"{name} counting")

    def remove(self, *pods: str) -> None:
        """Delete ``pods`` and wait until they are gone."""
        self.kubectl("delete", "pod", "--ignore-not-found", "--wait=true", *pods)


def migrate_env(world: World, state: Path) -> dict[str, str]:
    """A migrate command's environment: the admin kubeconfig, a private state dir, the
    nodes' directories readable here (MIGRATE_NODE_ROOT)."""
    return {**os.environ, "KUBECONFIG": str(world.cluster.kubeconfig),
            "MIGRATE_STATE_DIR": str(state), "MIGRATE_NODE_ROOT": world.cluster.node_root}
