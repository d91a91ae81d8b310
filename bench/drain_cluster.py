"""What drain_bench.py does in the cluster itself: the real control plane with node agents.

- ``Population``: what the drained node holds: bare pods and Deployments'
  pods, each with ``mib`` MiB of simulated memory (its checkpoint's size), and
  a PodDisruptionBudget per Deployment (``max_unavailable``; 0: none).
- ``DrainCluster.populate``: create them in the run's own namespace on the
  source node and wait until every one runs and every budget has its status
  from the disruption controller (untimed setup: the other nodes are cordoned
  meanwhile, so that the scheduler puts the Deployments' pods on the source too).
- ``DrainCluster.check``: after a drain, every planned pod moved: the source
  node holds none of them, each restored pod runs on the node the drain chose,
  restored from its checkpoint image (the node agent's `restored.<container>`
  annotation, whose imageID is in the bench's registry).
- ``DrainCluster.remove``: delete the namespace and wait until it is gone.
- ``AuditWindow``: the requests the API server's audit log holds for one user
  between its creation and ``close()`` (the launcher's Options.audit_users).
- ``migrate_env``: the environment of a migrate command against the cluster.

Raw JSON (``_preload_content=False``) throughout: hundreds of pods through the
client's models would cost the bench seconds per listing for nothing.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import REPO, BenchError
from kubernetes import client, config

from e2e.cluster.launcher import unschedulable_tainted
from e2e.cluster.world import Cluster

Obj = dict[str, Any]
IMAGE = "quay.io/adrianreber/counter:latest"
CONTAINER = "counter"
MEMORY_ANNOTATION = "sim.migrate.dev/memory-mib"
RESTORED_ANNOTATION = f"sim.migrate.dev/restored.{CONTAINER}"
SETUP_TIMEOUT = 600.0


@dataclass(frozen=True)
class Population:
    """The drained node's pods: ``bare`` bare pods, ``deployments`` x ``replicas``,
    each Deployment with a budget of ``max_unavailable`` (0: no budget)."""

    bare: int
    deployments: int
    replicas: int
    mib: int
    max_unavailable: int = 0

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


def _poll(what: str, done: Any) -> None:
    # Setup, not measured: a plain poll is enough.
    deadline = time.monotonic() + SETUP_TIMEOUT
    while not done():
        if time.monotonic() > deadline:
            raise BenchError(f"setup: {what} after {SETUP_TIMEOUT:g} s")
        time.sleep(0.5)


class DrainCluster:
    """The bench's client of one run's namespace, as kubernetes-admin."""

    def __init__(self, cluster: Cluster, namespace: str) -> None:
        cfg = client.Configuration()
        config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=str(cluster.kubeconfig), client_configuration=cfg)
        api = client.ApiClient(cfg)
        # Any: raw responses (_preload_content=False) and dict bodies, not the models.
        self.core: Any = client.CoreV1Api(api)
        self.apps: Any = client.AppsV1Api(api)
        self.policy: Any = client.PolicyV1Api(api)
        self.cluster, self.namespace = cluster, namespace

    def pods(self) -> list[Obj]:
        """Every pod of the namespace."""
        resp = self.core.list_namespaced_pod(self.namespace, _preload_content=False)
        items: list[Obj] = json.loads(resp.data)["items"]
        return items

    def _node(self, name: str) -> Obj:
        node: Obj = json.loads(self.core.read_node(name, _preload_content=False).data)
        return node

    def _cordon(self, nodes: list[str], on: bool) -> None:
        for node in nodes:
            self.core.patch_node(node, {"spec": {"unschedulable": True if on else None}},
                                 _preload_content=False)

    def populate(self, node: str, population: Population) -> None:
        """Create the namespace and ``population`` on ``node``; returns once every pod
        runs and every budget allows what it should."""
        self.core.create_namespace({"metadata": {"name": self.namespace}},
                                   _preload_content=False)
        _poll(f"the default ServiceAccount of {self.namespace}", lambda: json.loads(
            self.core.list_namespaced_service_account(self.namespace,
                                                      _preload_content=False).data)["items"])
        others = [n for n in self.cluster.node_names if n != node]
        self._cordon(others, True)
        try:
            for d in range(population.deployments):
                self._deployment(f"web-{d:02d}", population)
            for i in range(population.bare):
                body = _template({"app": "solo"}, population.mib)
                body["metadata"]["name"] = f"solo-{i:03d}"
                body["spec"]["nodeName"] = node
                self.core.create_namespaced_pod(self.namespace, body, _preload_content=False)
            _poll(f"{population.pods} pods running on {node}",
                  lambda: len([p for p in self.pods() if running(p)
                               and p["spec"].get("nodeName") == node]) == population.pods)
        finally:
            self._cordon(others, False)
        # The node lifecycle controller takes its unschedulable taint away a moment after
        # the uncordon; a drain planned before then finds no destination.
        _poll("the unschedulable taints to go", lambda: not any(
            unschedulable_tainted(self._node(n)) for n in others))
        if population.max_unavailable and population.deployments:
            _poll("every budget's status from the disruption controller", lambda: all(
                (b.get("status") or {}).get("disruptionsAllowed") == population.max_unavailable
                for b in self._budgets()) and len(self._budgets()) == population.deployments)

    def _deployment(self, name: str, population: Population) -> None:
        labels = {"app": name}
        self.apps.create_namespaced_deployment(self.namespace, {
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
            "spec": {"replicas": population.replicas, "selector": {"matchLabels": labels},
                     "template": _template(labels, population.mib)}},
            _preload_content=False)
        if population.max_unavailable:
            self.policy.create_namespaced_pod_disruption_budget(self.namespace, {
                "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
                "metadata": {"name": name},
                "spec": {"maxUnavailable": population.max_unavailable,
                         "selector": {"matchLabels": labels}}}, _preload_content=False)

    def _budgets(self) -> list[Obj]:
        resp = self.policy.list_namespaced_pod_disruption_budget(self.namespace,
                                                                 _preload_content=False)
        items: list[Obj] = json.loads(resp.data)["items"]
        return items

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
            # The agent's restore record, not the container's imageID: a CRI-O
            # restore reports the workload's image there, as the real one does.
            restored = (copy["metadata"].get("annotations") or {}).get(RESTORED_ANNOTATION)
            image_id = json.loads(restored).get("imageID") if restored else None
            if not image_id or registry not in str(image_id):
                raise BenchError(f"{planned['name']}: {copy['metadata']['name']} was not "
                                 f"restored from a checkpoint image: {restored}")
            spread[str(where)] += 1
        return spread

    def remove(self) -> None:
        """Delete the namespace (its Deployments first, so that nothing makes pods
        again) and wait until it is gone."""
        self.apps.delete_collection_namespaced_deployment(
            self.namespace, propagation_policy="Background", _preload_content=False)
        self.core.delete_namespace(self.namespace, _preload_content=False)

        def gone() -> bool:
            names = json.loads(self.core.list_namespace(_preload_content=False).data)["items"]
            return all(n["metadata"]["name"] != self.namespace for n in names)

        _poll(f"namespace {self.namespace} gone", gone)


class AuditWindow:
    """The requests of ``user`` the API server audited from now until ``close()``."""

    def __init__(self, log: Path, user: str) -> None:
        self.log, self.user = log, user
        self.offset = log.stat().st_size if log.exists() else 0

    def close(self) -> tuple[str, ...]:
        """"VERB URI STATUS" per request of the user."""
        if not self.log.exists():
            raise BenchError(f"the API server wrote no audit log at {self.log}")
        with self.log.open("rb") as f:
            f.seek(self.offset)
            text = f.read().decode(errors="replace")
        out = []
        for line in text.splitlines():
            event = json.loads(line)
            if (event.get("user") or {}).get("username") == self.user:
                code = (event.get("responseStatus") or {}).get("code")
                out.append(f"{event['verb']} {event['requestURI']} {code}")
        return tuple(out)


def migrate_env(cluster: Cluster, kubeconfig: Path, state_dir: Path) -> dict[str, str]:
    """This environment for a migrate command against ``cluster`` as ``kubeconfig``'s user.

    Bytecode cached, as for an installed tool (without it every run compiles
    migrate's modules again); this checkout importable; journals in
    ``state_dir``; archives read from the nodes' directories (MIGRATE_NODE_ROOT).
    """
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return {**env, "PYTHONPATH": str(REPO), "KUBECONFIG": str(kubeconfig),
            "MIGRATE_STATE_DIR": str(state_dir), "MIGRATE_NODE_ROOT": cluster.node_root}
