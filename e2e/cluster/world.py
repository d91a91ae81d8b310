"""`Cluster`: the real control plane with node agents, for tests and the drain benchmark.

    with control_plane() as cp, Cluster(cp, tmp / "world", nodes=("node-a", "node-b"),
                                        node_config={"node-b": NodeConfig(ready=False)}) as c:
        c.kubeconfig                  # the admin kubeconfig (cp.admin_kubeconfig)
        c.node_root                   # ".../nodes/{node}": MIGRATE_NODE_ROOT for the tool
        c.node_path("node-a", "/var/lib/kubelet/checkpoints/x.tar")   # where that file is
        c.configure_node("node-a", fail_next_checkpoints=1)           # NodeConfig changes
        with c.holding_checkpoints("node-a") as waiting: ...          # hold dumps
        c.user_kubeconfig("bob", rules=[...])                          # a restricted user

It is what the end-to-end tests and the drain benchmark use (the demo and the pod
benchmark run real nodes, realnode.py): each node is
a node host (nodehost.py: a network namespace and a 198.18 address) and a node
agent (agent.py). A node's
files are under DIR/nodes/NODE on this machine (checkpoints, pulled images,
pod logs); the tool reads archives there through MIGRATE_NODE_ROOT, as it
would from shared node directories.

What the real control plane does by itself is not here:
the scheduler, the controllers (ReplicaSets, Deployments, Jobs, CronJobs,
disruption budgets, garbage collection, node lifecycle), RBAC, admission. The
CronJob controller keeps the real clock: a test fires a CronJob now with a
Job made from its template (`kubectl create job --from=cronjob/NAME`), as an
operator would.

stop() (or leaving the `with`) stops the agents, force-deletes the pods still
bound to the nodes, deletes the Nodes (their Leases go with them: owner
references) and removes the node hosts. The control plane is the caller's.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from e2e.cluster import nodehost
from e2e.cluster.agent import NodeAgent
from e2e.cluster.kubeclient import KubeClient
from e2e.cluster.launcher import ControlPlane
from e2e.nodes.api import ApiFailure, Gone
from e2e.nodes.images import RegistryConfig
from e2e.nodes.nodeconfig import NodeConfig
from e2e.nodes.podfiles import PodFiles
from e2e.nodes.runs import ContainerProcess, annotated_process
from e2e.nodes.toolrun import DEFAULT_TIMEOUT, ToolRunner
from e2e.services.pki import CertPair, issue

__all__ = ["DEFAULT_NODES", "Cluster"]

DEFAULT_NODES = ("node-a", "node-b")


class Cluster:
    """Node agents on a running control plane `cp`, their files under `directory`.

    nodes: node names (node i, from 1, gets pod IPs 10.88.i.x).
    node_config: NodeConfig per node (others get NodeConfig()).
    registries: how nodes reach registries on 127.0.0.1.
    start_latency, stop_latency: seconds from a pod bound (deleted) to it started (gone).
    tool_images: images whose containers run `python -m migrate` for real
        (e2e/nodes/toolrun.py); tool_timeout: their deadline when the pod sets none.
    """

    def __init__(self, cp: ControlPlane, directory: Path, *,
                 nodes: Sequence[str] = DEFAULT_NODES,
                 node_config: Mapping[str, NodeConfig] | None = None,
                 registries: RegistryConfig | None = None, start_latency: float = 0.2,
                 stop_latency: float = 0.2,
                 tool_images: Sequence[str] = (), tool_timeout: float = DEFAULT_TIMEOUT) -> None:
        if not nodes or len(set(nodes)) != len(nodes):
            raise ValueError(f"node names must be given, each once: {list(nodes)}")
        unknown = sorted(set(node_config or {}) - set(nodes))
        if unknown:
            raise ValueError(f"node_config names nodes that are not in the cluster: {unknown}")
        self.cp = cp
        self.state_dir = Path(directory)
        self.node_names = tuple(nodes)
        self._configs = dict(node_config or {})
        self._registries = registries or RegistryConfig()
        self._latency = (start_latency, stop_latency)
        self._tool = (tuple(tool_images), tool_timeout)
        self.agents: dict[str, NodeAgent] = {}
        self._stack = contextlib.ExitStack()
        self._log_lock = threading.Lock()
        self._log_file: IO[str] | None = None
        self._client: KubeClient | None = None

    # -- what tests use ------------------------------------------------------------------

    @property
    def kubeconfig(self) -> Path:
        """The admin kubeconfig (kubernetes-admin, system:masters)."""
        return self.cp.admin_kubeconfig

    @property
    def ca(self) -> CertPair:
        """The cluster CA (API server, kubelets, clients)."""
        return self.cp.ca

    @property
    def kubelet_client(self) -> CertPair:
        """A client certificate every kubelet accepts: the API server's own."""
        return self.cp.kubelet_client

    @property
    def node_root(self) -> str:
        """DIR/nodes/{node}: where each node's files are (MIGRATE_NODE_ROOT's form)."""
        return str(self.state_dir / "nodes" / "{node}")

    def node_dir(self, node: str) -> Path:
        """The node's root directory on this machine (DIR/nodes/NODE)."""
        self._agent(node)
        return self.state_dir / "nodes" / node

    def node_path(self, node: str, path: str) -> Path:
        """Where the node's absolute `path` (e.g. a checkpoint the kubelet answered) is here."""
        if not path.startswith("/") or ".." in Path(path).parts:
            raise ValueError(f"not an absolute, normalized node path: {path!r}")
        return self.node_dir(node) / path.lstrip("/")

    def kubelet_url(self, node: str) -> str:
        """`https://ADDRESS:10250`, the node's kubelet API (reachable from the host)."""
        return self._agent(node).kubelet_url

    def node_address(self, node: str) -> str:
        """The node's InternalIP (its node host's address)."""
        return self._agent(node).host.address

    def node_config(self, node: str) -> NodeConfig:
        """The node's current NodeConfig."""
        return self._agent(node).kubelet.config

    def configure_node(self, node: str, **changes: Any) -> NodeConfig:
        """Change a node's settings (NodeConfig fields, e.g. `ready=False`,
        `fail_next_checkpoints=2`); the Node object reports them at once."""
        return self._agent(node).kubelet.update_config(**changes)

    @contextlib.contextmanager
    def holding_checkpoints(self, node: str) -> Iterator[Any]:
        """Within the block, checkpoints reaching NODE's runtime wait before they dump,
        and go on when it ends; yields a function telling how many wait now."""
        api = self._agent(node).kubelet_api
        api.hold()
        try:
            yield lambda: api.held
        finally:
            api.release()

    def user_kubeconfig(self, name: str, rules: Sequence[Mapping[str, Any]] = (), *,
                        group: str | None = None) -> Path:
        """A kubeconfig for user `name` (a client certificate), granted `rules`
        (RBAC PolicyRules, cluster-wide) by a ClusterRole and binding named
        `test-user:NAME`."""
        if rules:
            client = self._admin()
            role = f"test-user:{name}"
            meta = {"name": role, "labels": {"migrate-test/user": "true"}}
            for path, body in (
                ("/apis/rbac.authorization.k8s.io/v1/clusterroles",
                 {"metadata": meta, "rules": [dict(r) for r in rules]}),
                ("/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
                 {"metadata": meta, "roleRef": {"apiGroup": "rbac.authorization.k8s.io",
                                                "kind": "ClusterRole", "name": role},
                  "subjects": [{"kind": "User", "name": name,
                                "apiGroup": "rbac.authorization.k8s.io"}]}),
            ):
                try:
                    client.request("POST", path, body)
                except ApiFailure as e:
                    if e.code != 409:
                        raise
        return self.cp.kubeconfig(name, group=group)

    def _agent(self, node: str) -> NodeAgent:
        agent = self.agents.get(node)
        if agent is None:
            raise KeyError(f"no node {node!r} in this cluster (nodes: "
                           f"{', '.join(self.node_names)})")
        return agent

    # -- life cycle ----------------------------------------------------------------------

    def start(self) -> Cluster:
        """Make the node hosts, start an agent on each; returns once all are registered."""
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.state_dir / "cluster.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND,
                     0o600)
        self._log_file = os.fdopen(fd, "a", encoding="utf-8")
        try:
            process = self._container_process()
            for index, node in enumerate(self.node_names, start=1):
                self._start_node(node, index, process)
            self._wait_schedulable()
        except BaseException:
            self.stop()
            raise
        return self

    #: Taints the node lifecycle controller puts on a node whose kubelet stopped reporting.
    _LIFECYCLE_TAINTS = ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable")

    def _wait_schedulable(self, timeout: float = 60.0) -> None:
        """Wait until every node meant to be Ready is Ready without the lifecycle taints.

        The Node objects outlive the agents of an earlier test on the same control
        plane: once those stopped renewing their Leases, the controller marked the
        nodes unreachable and tainted them, and it lifts the taints only after it
        sees the new agent's Ready (its monitor period later). A test that starts
        before then finds no destination a pod tolerates.
        """
        deadline = time.monotonic() + timeout
        for node in self.node_names:
            config = self._configs.get(node)
            if config is not None and not config.ready:
                continue
            while True:
                obj = self._admin().request("GET", f"/api/v1/nodes/{node}")
                ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                            for c in (obj.get("status") or {}).get("conditions") or [])
                tainted = any(t.get("key") in self._LIFECYCLE_TAINTS
                              for t in (obj.get("spec") or {}).get("taints") or [])
                if ready and not tainted:
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"node {node}: not Ready and untainted after "
                                       f"{timeout:g} s")
                time.sleep(0.1)

    def _admin(self) -> KubeClient:
        if self._client is None:
            pair = issue(self.cp.ca, self.cp.pki, f"node-agents-{secrets.token_hex(4)}",
                         client=True, cn="migrate-test:node-agents", org="system:masters")
            self._client = KubeClient(self.cp.server, self.cp.ca, pair, connections=16)
        return self._client

    def _container_process(self) -> ContainerProcess:
        images, timeout = self._tool
        if not images:
            return annotated_process
        files = PodFiles(lambda node: self._agent(node).api, self.node_dir,
                         lambda pod, account: self._agent(pod["spec"]["nodeName"]).api
                         .service_account_token(pod, account))
        port = int(self.cp.server.rsplit(":", 1)[1])
        return ToolRunner(images, lambda node: self._agent(node).api, files, lambda: port,
                          fallback=annotated_process, timeout=timeout, log=self.log)

    def _start_node(self, node: str, index: int, process: ContainerProcess) -> None:
        logs = self.state_dir / "logs"
        logs.mkdir(exist_ok=True, mode=0o700)
        host = self._stack.enter_context(nodehost.node_host(node, logs))
        serving = self.cp.serving_cert(f"kubelet-{node}-{secrets.token_hex(3)}",
                                       [host.address])
        agent = NodeAgent(
            self._admin(), host, index, self.state_dir / "nodes" / node, serving=serving,
            ca=self.cp.ca, config=self._configs.get(node), registries=self._registries,
            process=process, start_latency=self._latency[0], stop_latency=self._latency[1],
            kubelet_version=self.cp.versions.kubernetes, log=self.log)
        self.agents[node] = agent
        agent.start()

    def stop(self) -> None:
        """Stop the agents, remove their pods, Nodes and node hosts (idempotent)."""
        for agent in self.agents.values():
            agent.begin_stop()  # all at once: each waits for its watch to end
        for agent in self.agents.values():
            agent.stop()
        if self._client is not None:
            for node in self.agents:
                self._remove_node(node)
        self.agents = {}
        self._stack.close()
        if self._client is not None:
            self._client.close()
            self._client = None
        with self._log_lock:
            if self._log_file is not None:
                self._log_file.close()
                self._log_file = None

    def _remove_node(self, node: str) -> None:
        client = self._admin()
        pods = client.request("GET", "/api/v1/pods",
                              query={"fieldSelector": f"spec.nodeName={node}"})
        for pod in pods.get("items") or []:
            meta = pod["metadata"]
            with contextlib.suppress(Gone):
                client.request("DELETE", f"/api/v1/namespaces/{meta['namespace']}/pods/"
                                         f"{meta['name']}", {"gracePeriodSeconds": 0})
        for path in (f"/api/v1/nodes/{node}",
                     f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{node}"):
            with contextlib.suppress(Gone):
                client.request("DELETE", path)

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def log(self, line: str) -> None:
        """Append a line to DIR/cluster.log (what the agents did, and failed to)."""
        with self._log_lock:
            if self._log_file is not None:
                self._log_file.write(line + "\n")
                self._log_file.flush()
