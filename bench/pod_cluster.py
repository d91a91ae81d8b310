"""What pod_bench.py runs: the real control plane, two real nodes (the real kubelet and
CRI-O each), a loopback registry, and a private Podman for the floor.

- ``World``: everything started in one ``with``, stopped at the end (failures too):
  the registry, the control plane (e2e/cluster), the real nodes node-a and node-b
  (e2e/cluster/realnode.py) pulling from the registry, the counter's image pushed
  there (e2e/real/counter.py) and pulled on node-b by a warm-up pod (as Podman's
  floor has its image at hand; `migrate pod` would pull it there first otherwise),
  and a ``PodmanWorld`` (e2e/real/podman.py) holding the same root as an image of
  its own.
- ``World.start_counter``: a counters pod on node-a with BALLAST_MIB MiB of touched
  memory, awaited (untimed) until its log shows the ballast built and the counter
  counting.
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

from e2e.cluster import realnode
from e2e.cluster.launcher import ControlPlane, control_plane
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
        self.cp: ControlPlane
        self.nodes: dict[str, realnode.RealNode] = {}
        self.podman: PodmanWorld
        self.image = ""
        self.podman_image = "localhost/bench-counter:1"

    def __enter__(self) -> World:
        try:
            self.registry = self._stack.enter_context(Registry(self.work / "registry"))
            self.cp = self._stack.enter_context(control_plane(self.work / "control-plane"))
            for name in ("node-a", "node-b"):
                self.nodes[name] = self._stack.enter_context(realnode.real_node(
                    self.cp, self.work / name, name=name, registry=self.registry.host))
            self.image = push_counter_image(self.registry.host, "bench/counter", "1",
                                            self.work / "image")
            self._pull_on("node-b")
            self.podman = self._stack.enter_context(
                PodmanWorld(tools().criu_bin_dir))
            self.podman.build_image(counter_rootfs(self.work / "podman-rootfs"),
                                    self.podman_image, env="PATH=/bin")
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def _pull_on(self, node: str) -> None:
        """The counter's image pulled on ``node`` by a pod of it, which then goes."""
        body = counter_pod("warm-up", self.image, secret="-", node=node)
        self.kubectl("apply", "-f", "-", input=json.dumps(body))
        wait(lambda: "counter: 1" in self.logs("warm-up"), f"the warm-up pod on {node}")
        self.remove("warm-up")

    def kubectl(self, *args: str, input: str | None = None) -> str:
        done = subprocess.run(["kubectl", "--kubeconfig", str(self.cp.admin_kubeconfig), *args],
                              capture_output=True, text=True, input=input, timeout=120,
                              check=False)
        if done.returncode != 0:
            raise BenchError(f"kubectl {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout

    def logs(self, pod: str) -> str:
        """`kubectl logs POD` ("" while the container is not there)."""
        done = subprocess.run(["kubectl", "--kubeconfig", str(self.cp.admin_kubeconfig),
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
    """A migrate command's environment: the admin kubeconfig, a private state dir, and
    MIGRATE_NODE_ROOT=/ (the kubelets' checkpoint directories are on this machine, at
    the paths they report)."""
    return {**os.environ, "KUBECONFIG": str(world.cp.admin_kubeconfig),
            "MIGRATE_STATE_DIR": str(state), "MIGRATE_NODE_ROOT": "/"}
