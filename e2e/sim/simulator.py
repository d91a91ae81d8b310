"""`Simulator`: a whole local cluster in one process, for tests and `python -m e2e.sim`.

    with Simulator(tmp / "sim") as sim:
        sim.url          # https://127.0.0.1:40123
        sim.kubeconfig   # tmp/sim/kubeconfig: server, CA data, bearer token
        sim.token        # the admin bearer token
        sim.ca           # CertPair of the generated CA (sim.ca.cert: PEM file)

start() generates a CA and a server certificate for 127.0.0.1/localhost
(e2e.pki, files 0600 under STATE_DIR/pki), creates the `default`,
`kube-system` and `kube-public` namespaces and one Node per name, starts the
scheduler, the namespace controller and a kubelet per node, listens on
127.0.0.1 (only) and writes the kubeconfig last, atomically: once it exists,
the cluster answers. stop() (or leaving the `with`) stops every thread.
"""

from __future__ import annotations

import base64
import os
import secrets
import threading
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import yaml

from e2e.pki import CertPair, issue, make_ca, write_private
from e2e.sim.api import Api
from e2e.sim.controllers import Controller, NamespaceController, Scheduler
from e2e.sim.core import NAMESPACES, core_registry
from e2e.sim.kubelet import Kubelet
from e2e.sim.protocol import Authorizer, User, allow_all
from e2e.sim.rest import Rest
from e2e.sim.server import LOOPBACK, ApiServer
from e2e.sim.store import Store

__all__ = ["ADMIN", "DEFAULT_NODES", "Simulator"]

DEFAULT_NODES = ("node-a", "node-b")
#: The user the kubeconfig's token authenticates as.
ADMIN = User("sim-admin", ("system:masters", "system:authenticated"))
_CLUSTER = "sim"


class Simulator:
    """A simulated cluster: API server, scheduler, namespace controller, kubelets.

    state_dir: where the PKI, the kubeconfig and the logs go (created if needed).
    nodes: node names; node i (from 1) gets pod IPs 10.88.i.x.
    port: 0 picks a free port.
    start_latency: seconds from a pod being bound to it Running.
    stop_latency: seconds from a pod's deletion to it being gone.
    authorizer: decides every request (default: allow everything).
    """

    def __init__(
        self,
        state_dir: Path,
        *,
        nodes: Sequence[str] = DEFAULT_NODES,
        port: int = 0,
        start_latency: float = 0.2,
        stop_latency: float = 0.2,
        authorizer: Authorizer = allow_all,
    ) -> None:
        if not nodes:
            raise ValueError("a cluster needs at least one node")
        if len(set(nodes)) != len(nodes):
            raise ValueError(f"node names must be unique: {list(nodes)}")
        self.state_dir = Path(state_dir)
        self.node_names = tuple(nodes)
        self.start_latency = start_latency
        self.stop_latency = stop_latency
        self.token = secrets.token_urlsafe(32)
        self.store = Store()
        self.registry = core_registry()
        self.rest = Rest(self.store, self.registry)
        self.api = Api(self.rest, self.registry, authorizer=authorizer,
                       server_address=lambda: f"{LOOPBACK}:{self.port}", log=self.log)
        self._tokens: dict[str, User] = {self.token: ADMIN}
        self._port = port
        self._server: ApiServer | None = None
        self._controllers: list[Controller] = []
        self._ca: CertPair | None = None
        self._log_file: IO[str] | None = None
        self._log_lock = threading.Lock()

    # -- what clients need -------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("simulator not started")
        return self._server.port

    @property
    def url(self) -> str:
        """`https://127.0.0.1:PORT`."""
        return f"https://{LOOPBACK}:{self.port}"

    @property
    def kubeconfig(self) -> Path:
        """The kubeconfig file (exists once start() has returned)."""
        return self.state_dir / "kubeconfig"

    @property
    def ca(self) -> CertPair:
        """The cluster CA (its certificate verifies the API server's)."""
        if self._ca is None:
            raise RuntimeError("simulator not started")
        return self._ca

    def add_token(self, user: str, groups: Sequence[str] = ()) -> str:
        """A new bearer token for `user` (for tests of other identities, e.g. 403s)."""
        token = secrets.token_urlsafe(32)
        self._tokens[token] = User(user, tuple(groups))
        if self._server is not None:
            self._server.tokens[token] = self._tokens[token]
        return token

    # -- life cycle --------------------------------------------------------------------

    def start(self) -> Simulator:
        """Bring the cluster up; returns self once the kubeconfig is written."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._log_file = open(self.state_dir / "cluster.log", "a", encoding="utf-8")  # noqa: SIM115
        pki = self.state_dir / "pki"
        self._ca = make_ca(pki, "sim-ca")
        server_cert = issue(self._ca, pki, "apiserver", dns=["localhost", "kubernetes",
                                                              "kubernetes.default"],
                            ips=[LOOPBACK], cn="kube-apiserver")
        try:
            self._bootstrap()
            self._server = ApiServer(self.api, server_cert, self._tokens, port=self._port,
                                     log=self.state_dir / "apiserver.log")
            self._server.start()
            self._write_kubeconfig()
        except BaseException:
            self.stop()
            raise
        self.log(f"ready {self.url}")
        return self

    def _bootstrap(self) -> None:
        for name in ("default", "kube-system", "kube-public", "kube-node-lease"):
            self.rest.create(NAMESPACES, "", {"metadata": {"name": name}})
        self._controllers = [Scheduler(self.rest, log=self.log),
                             NamespaceController(self.rest, log=self.log)]
        for index, node in enumerate(self.node_names, start=1):
            kubelet = Kubelet(self.rest, node, index, start_latency=self.start_latency,
                              stop_latency=self.stop_latency, log=self.log)
            kubelet.register()
            self._controllers.append(kubelet)
        for controller in self._controllers:
            controller.start()

    def _write_kubeconfig(self) -> None:
        config: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": _CLUSTER, "cluster": {
                "server": self.url,
                "certificate-authority-data": base64.b64encode(
                    self.ca.cert.read_bytes()).decode(),
            }}],
            "users": [{"name": ADMIN.name, "user": {"token": self.token}}],
            "contexts": [{"name": _CLUSTER, "context": {
                "cluster": _CLUSTER, "user": ADMIN.name, "namespace": "default"}}],
            "current-context": _CLUSTER,
            "preferences": {},
        }
        # Written aside and renamed: whoever sees the file sees all of it.
        tmp = self.kubeconfig.with_name(".kubeconfig.tmp")
        write_private(tmp, yaml.safe_dump(config, sort_keys=False).encode())
        os.replace(tmp, self.kubeconfig)

    def stop(self) -> None:
        """Stop serving, stop every controller and join every thread. Idempotent;
        a stopped simulator cannot be started again (make a new one)."""
        self.store.close()
        if self._server is not None:
            self._server.stop()
        for controller in self._controllers:
            controller.stop()
        self._controllers = []
        if self._log_file is not None:
            with self._log_lock:
                self._log_file.close()
                self._log_file = None

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def log(self, line: str) -> None:
        """Append a line to STATE_DIR/cluster.log (controllers' decisions, errors)."""
        with self._log_lock:
            if self._log_file is not None:
                self._log_file.write(line + "\n")
                self._log_file.flush()
