"""What drain_bench.py does in the simulated cluster itself, with the official client.

- ``Population``: what the drained node holds: bare pods and Deployments'
  pods, each with ``mib`` MiB of simulated memory (its checkpoint's size).
- ``DrainCluster.populate``: create them on the source node and wait until
  every one runs (untimed setup: the other nodes are cordoned meanwhile, so
  that the scheduler puts the Deployments' pods on the source too).
- ``DrainCluster.check``: after a drain, every planned pod moved: the source
  node holds none of them, each restored pod runs on the node the drain chose,
  restored from its checkpoint image (the kubelet's `restored.<container>`
  annotation and an imageID from the bench's registry).

Raw JSON (``_preload_content=False``) throughout: hundreds of pods through the
client's models would cost the bench seconds per listing for nothing.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from harness import BenchError
from kubernetes import client, config

from e2e.sim import Simulator

Obj = dict[str, Any]
NAMESPACE = "default"
IMAGE = "quay.io/adrianreber/counter:latest"
CONTAINER = "counter"
MEMORY_ANNOTATION = "sim.migrate.dev/memory-mib"
RESTORED_ANNOTATION = f"sim.migrate.dev/restored.{CONTAINER}"
SETUP_TIMEOUT = 600.0


@dataclass(frozen=True)
class Population:
    """The drained node's pods: ``bare`` bare pods, ``deployments`` x ``replicas``."""

    bare: int
    deployments: int
    replicas: int
    mib: int

    @property
    def pods(self) -> int:
        return self.bare + self.deployments * self.replicas


def _container() -> Obj:
    # A volume, as the seed's counters pod has: a restore must mount what the
    # checkpointed container mounted.
    return {"name": CONTAINER, "image": IMAGE,
            "volumeMounts": [{"name": "data", "mountPath": "/data"}]}


def _template(labels: dict[str, str], mib: int) -> Obj:
    return {"metadata": {"labels": labels, "annotations": {MEMORY_ANNOTATION: str(mib)}},
            "spec": {"containers": [_container()],
                     "volumes": [{"name": "data", "emptyDir": {}}]}}


def running(pod: Obj) -> bool:
    """The pod runs, all its containers ready, and is not being deleted."""
    status = pod.get("status") or {}
    statuses = status.get("containerStatuses") or []
    return (status.get("phase") == "Running" and not pod["metadata"].get("deletionTimestamp")
            and bool(statuses) and all(s.get("ready") for s in statuses))


class DrainCluster:
    """The bench's client of one simulated cluster."""

    def __init__(self, sim: Simulator) -> None:
        cfg = client.Configuration()
        config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=str(sim.kubeconfig), client_configuration=cfg)
        api = client.ApiClient(cfg)
        # Any: raw responses (_preload_content=False) and dict bodies, not the models.
        self.core: Any = client.CoreV1Api(api)
        self.apps: Any = client.AppsV1Api(api)
        self.sim = sim

    def pods(self) -> list[Obj]:
        """Every pod of the namespace."""
        resp = self.core.list_namespaced_pod(NAMESPACE, _preload_content=False)
        items: list[Obj] = json.loads(resp.data)["items"]
        return items

    def _cordon(self, nodes: list[str], on: bool) -> None:
        for node in nodes:
            self.core.patch_node(node, {"spec": {"unschedulable": True if on else None}},
                                 _preload_content=False)

    def populate(self, node: str, population: Population) -> None:
        """Create ``population`` on ``node``; returns once every pod runs."""
        others = [n for n in self.sim.node_names if n != node]
        self._cordon(others, True)
        try:
            for d in range(population.deployments):
                labels = {"app": f"web-{d:02d}"}
                self.apps.create_namespaced_deployment(NAMESPACE, {
                    "apiVersion": "apps/v1", "kind": "Deployment",
                    "metadata": {"name": f"web-{d:02d}"},
                    "spec": {"replicas": population.replicas,
                             "selector": {"matchLabels": labels},
                             "template": _template(labels, population.mib)}},
                    _preload_content=False)
            for i in range(population.bare):
                body = _template({"app": "solo"}, population.mib)
                body["metadata"]["name"] = f"solo-{i:03d}"
                body["spec"]["nodeName"] = node
                self.core.create_namespaced_pod(NAMESPACE, body, _preload_content=False)
            self._wait_running(node, population.pods)
        finally:
            self._cordon(others, False)

    def _wait_running(self, node: str, count: int) -> None:
        # Setup, not measured: a plain poll is enough.
        deadline = time.monotonic() + SETUP_TIMEOUT
        while True:
            pods = self.pods()
            ready = [p for p in pods if running(p) and p["spec"].get("nodeName") == node]
            if len(ready) == count:
                return
            if time.monotonic() > deadline:
                raise BenchError(f"setup: {len(ready)} of {count} pods run on {node} after "
                                 f"{SETUP_TIMEOUT:g} s")
            time.sleep(0.5)

    def check(self, report: Obj, node: str, registry: str) -> Counter[str]:
        """Every planned pod migrated, its copy runs restored where the drain put it.

        Returns the number of pods per destination.
        """
        if report.get("outcome") != "succeeded":
            failed = [f"{p['name']}: {p.get('outcome')} {p.get('error') or ''}"
                      for p in report.get("pods", []) if p.get("outcome") != "migrated"]
            raise BenchError(f"drain {report.get('outcome')}: " + "; ".join(failed[:5]))
        now = {p["metadata"]["name"]: p for p in self.pods()}
        left = [n for n, p in now.items() if p["spec"].get("nodeName") == node]
        if left:
            raise BenchError(f"{len(left)} pod(s) still on {node}: {left[:5]}")
        spread: Counter[str] = Counter()
        for planned in report["pods"]:
            copy = now.get(str(planned.get("restored_pod")))
            where = planned.get("destination")
            if copy is None or not running(copy) or copy["spec"].get("nodeName") != where:
                raise BenchError(f"{planned['name']}: its copy {planned.get('restored_pod')} "
                                 f"does not run on {where}")
            status = copy["status"]["containerStatuses"][0]
            restored = (copy["metadata"].get("annotations") or {}).get(RESTORED_ANNOTATION)
            if not restored or registry not in str(status.get("imageID")):
                raise BenchError(f"{planned['name']}: {copy['metadata']['name']} was not "
                                 f"restored from a checkpoint image: {status}")
            spread[str(where)] += 1
        return spread
