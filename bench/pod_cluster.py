"""What pod_bench.py does in the simulated cluster itself, with the official client.

- ``Cluster``: start a source pod and wait until it runs, restore a checkpoint
  image on a node and time it (create + watch until it runs restored), check a
  restored pod, remove pods and wait until they are gone. Watches, not polling:
  each wait is one watch from the resourceVersion the write answered.
- ``Window``: what the API server saw between its creation and ``close()``: the
  requests of its access log (STATE/apiserver.log) and the TLS connections it
  accepted.
- ``migrate_env``: the environment of a migrate command against the simulator.

drain_bench.py uses ``Window`` and ``migrate_env`` too.

The bench's own requests (these) happen outside every ``Window``, except the
restore's, which is one of the parts an operator does by hand.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness import REPO, BenchError
from kubernetes import client, config, watch

from e2e.sim import Simulator

Obj = dict[str, Any]
NAMESPACE = "default"
IMAGE = "quay.io/adrianreber/counter:latest"
MEMORY_ANNOTATION = "sim.migrate.dev/memory-mib"
TIMEOUT = 120.0
_LOG_LINE = re.compile(r'"([A-Z]+) (\S+) HTTP/[0-9.]+" (\d{3})')


def pod_body(name: str, node: str, image: str, annotations: dict[str, str]) -> Obj:
    """The counters pod of the seed article, pinned to ``node``, with a volume (a restore
    must mount what the checkpointed container mounted)."""
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": {"app": "bench"}, "annotations": annotations},
            "spec": {"nodeName": node, "containers": [
                {"name": "counter", "image": image,
                 "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
                "volumes": [{"name": "data", "emptyDir": {}}]}}


def running(pod: Obj | None) -> bool:
    """The pod runs and its container is ready."""
    if pod is None:
        return False
    status = pod.get("status") or {}
    statuses = status.get("containerStatuses") or []
    return status.get("phase") == "Running" and bool(statuses) and all(
        s.get("ready") and (s.get("state") or {}).get("running") for s in statuses)


def gone(uid: str) -> Callable[[Obj | None], bool]:
    """A watch predicate: the pod with ``uid`` no longer exists."""
    return lambda pod: pod is None or pod["metadata"]["uid"] != uid


class Cluster:
    """The bench's client of the simulated cluster."""

    def __init__(self, sim: Simulator) -> None:
        cfg = client.Configuration()
        config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=str(sim.kubeconfig), client_configuration=cfg)
        # Any: raw responses (_preload_content=False) and dict bodies, not the models.
        self.core: Any = client.CoreV1Api(client.ApiClient(cfg))

    def _read(self, name: str) -> Obj | None:
        found = self.core.list_namespaced_pod(NAMESPACE, field_selector=f"metadata.name={name}",
                                              _preload_content=False)
        items: list[Obj] = json.loads(found.data)["items"]
        return items[0] if items else None

    def _create(self, body: Obj) -> str:
        """Create a pod; returns the resourceVersion the API server answered."""
        resp = self.core.create_namespaced_pod(NAMESPACE, body, _preload_content=False)
        return str(json.loads(resp.data)["metadata"]["resourceVersion"])

    def _watch(self, name: str, since: str, until: Callable[[Obj | None], bool],
               what: str) -> None:
        """Watch pod ``name`` from ``since`` until ``until(pod)`` (None: deleted)."""
        deadline = time.monotonic() + TIMEOUT
        stream = watch.Watch().stream(  # type: ignore[no-untyped-call]
            self.core.list_namespaced_pod, NAMESPACE, field_selector=f"metadata.name={name}",
            resource_version=since, timeout_seconds=int(TIMEOUT))
        for event in stream:
            if event["type"] == "ERROR":
                raise BenchError(f"{what}: watch error {event['raw_object']}")
            if until(None if event["type"] == "DELETED" else event["raw_object"]):
                return
            if time.monotonic() > deadline:
                break
        raise BenchError(f"{what}: not done after {TIMEOUT:g} s: {self._read(name)}")

    def start_pod(self, name: str, node: str, mib: int) -> None:
        """A source pod whose checkpoint holds ``mib`` MiB of memory; returns once it runs."""
        since = self._create(pod_body(name, node, IMAGE, {MEMORY_ANNOTATION: str(mib)}))
        self._watch(name, since, running, f"pod {name} on {node}")

    def restore(self, name: str, node: str, image: str, digest: str) -> float:
        """Seconds from creating a pod of checkpoint ``image`` on ``node`` to seeing it run."""
        start = time.perf_counter()
        since = self._create(pod_body(name, node, image, {}))
        self._watch(name, since, running, f"restore {name} on {node}")
        seconds = time.perf_counter() - start
        self.check_restored(name, node, digest)
        return seconds

    def check_restored(self, name: str, node: str, digest: str) -> None:
        """The pod runs on ``node`` from the checkpoint image ``digest``, restored."""
        pod = self._read(name)
        if pod is None or pod["spec"].get("nodeName") != node or not running(pod):
            raise BenchError(f"pod {name} does not run on {node}: {pod}")
        status = pod["status"]["containerStatuses"][0]
        restored = (pod["metadata"].get("annotations") or {}).get(
            "sim.migrate.dev/restored.counter")
        if digest not in str(status.get("imageID")) or not restored:
            raise BenchError(f"pod {name} was not restored from {digest}: {status}")

    def remove_pods(self, *names: str) -> None:
        """Delete the pods that exist among ``names``; returns once they are gone."""
        for name in names:
            pod = self._read(name)
            if pod is None:
                continue
            resp = self.core.delete_namespaced_pod(name, NAMESPACE, _preload_content=False)
            since = str(json.loads(resp.data)["metadata"]["resourceVersion"])
            if self._read(name) is None:
                continue  # gone at once: no later event to wait for
            self._watch(name, since, gone(pod["metadata"]["uid"]), f"deleting {name}")


class Window:
    """What the API server saw from now until ``close()``."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim
        self.log = sim.state_dir / "apiserver.log"
        self.offset = self.log.stat().st_size
        self.connections = sim.api_connections

    def close(self) -> tuple[tuple[str, ...], int]:
        """("METHOD /path STATUS" per request, TLS connections accepted)."""
        with self.log.open("rb") as f:
            f.seek(self.offset)
            text = f.read().decode(errors="replace")
        requests = tuple(" ".join(m.groups()) for m in map(_LOG_LINE.search, text.splitlines())
                         if m)
        return requests, self.sim.api_connections - self.connections


def migrate_env(sim: Simulator, state_dir: Path) -> dict[str, str]:
    """This environment for a migrate command talking to ``sim``.

    Bytecode cached, as for an installed tool (without it every run compiles
    migrate's modules again); this checkout importable; the simulator's
    kubeconfig; journals in ``state_dir``; archives read from the nodes'
    directories (MIGRATE_NODE_ROOT).
    """
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return {**env, "PYTHONPATH": str(REPO), "KUBECONFIG": str(sim.kubeconfig),
            "MIGRATE_STATE_DIR": str(state_dir),
            "MIGRATE_NODE_ROOT": str(sim.state_dir / "nodes" / "{node}")}
