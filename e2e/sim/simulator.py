"""`Simulator`: a whole local cluster in one process, for tests and `python -m e2e.sim`.

    with Simulator(tmp / "sim", node_config={"node-b": NodeConfig(runtime="containerd://2.4.0")}
                   ) as sim:
        sim.url          # https://127.0.0.1:40123
        sim.kubeconfig   # tmp/sim/kubeconfig: server, CA data, bearer token
        sim.token        # the admin bearer token
        sim.ca           # CertPair of the generated CA (sim.ca.cert: PEM file)
        sim.kubelet_url("node-a")       # https://127.0.0.1:40125, the node's kubelet API
        sim.kubelet_client              # CertPair: a client certificate the kubelets accept
        sim.node_path("node-a", "/var/lib/kubelet/checkpoints/x.tar")  # where that file is
        sim.configure_node("node-a", fail_next_checkpoints=1)          # NodeConfig changes
        token = sim.add_user("bob", rules=[{"apiGroups": [""], "resources": ["pods"],
                                            "verbs": ["get", "list"], "namespaces": ["shop"]}])
        sim.user_kubeconfig("bob")      # STATE_DIR/kubeconfig-bob, bob's token
        sim.service_account_token("ns", "sa")   # a token as that ServiceAccount
        sim.advance_cron(to=datetime(2030, 1, 5, 2, 0, tzinfo=UTC))  # CronJobs' clock

Kubelets pull images from registries on 127.0.0.1 for real (images.py):
`Simulator(..., registries=RegistryConfig(insecure=("127.0.0.1:5000",),
ca_files=(ca_pem,)))`; images of other registries count as present.

start() generates a CA and a server certificate for 127.0.0.1/localhost
(e2e.pki, files 0600 under STATE_DIR/pki), creates the `default`,
`kube-system` and `kube-public` namespaces and one Node per name, starts the
scheduler, the namespace controller, the workload controllers (workloads.py:
Deployments, ReplicaSets, Jobs, disruption budgets, garbage collection) and a
kubelet per node, listens on
127.0.0.1 (only) and writes the kubeconfig last, atomically: once it exists,
the cluster answers. stop() (or leaving the `with`) stops every thread.

Each node's kubelet serves its API (kubelet_api.py) over HTTPS on its own
127.0.0.1 port, reported in the Node's `status.daemonEndpoints.kubeletEndpoint.Port`.
It authenticates client certificates signed by the cluster CA (CN: user,
O: groups; an absent one is 401, one from another CA fails the TLS handshake)
and the API server's bearer tokens. start() also writes, 0600, STATE_DIR/ca.crt
and STATE_DIR/kubelet-client.crt/.key (CN `kubelet-admin`, O `system:masters`)
for tools that talk to kubelets directly. The API server reaches them the
same way (`/api/v1/nodes/NODE/proxy/...`), with its own client certificate.
A node's files live under STATE_DIR/nodes/NODE/ (its root directory):
checkpoint archives in var/lib/kubelet/checkpoints/, pulled images in
var/lib/containers/storage/, its kubelet's access log in var/log/kubelet.log.

Run-to-completion containers whose image is one of `tool_images` run the
tool's CLI for real, in a subprocess with a pod's in-cluster credentials
(toolrun.py, podfiles.py); their output is the pods' log (`kubectl logs`,
podlogs.py). The CronJob controller reads `cron_clock`: the wall clock until
advance_cron() sets it (cronjob_controller.py).

Requests are authorized by RBAC (rbac_authorizer.py) over the cluster's own
Roles, ClusterRoles and bindings (rbac.authorization.k8s.io/v1, served like
any kind), starting from the bootstrap policy: the admin token is in
system:masters, every user may read discovery and ask SelfSubjectAccessReviews.
add_user() grants rules through such objects (users.py); add_token() only
authenticates. `authorizer=` replaces RBAC altogether (e.g. `allow_all`).
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hmac
import http.client
import os
import re
import secrets
import ssl
import threading
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import yaml

from e2e.nodes.checkpoints import CHECKPOINT_DIR
from e2e.nodes.https import LOOPBACK, HttpsServer, cert_user
from e2e.nodes.images import RegistryConfig
from e2e.nodes.kubelet import Kubelet
from e2e.nodes.kubelet_api import KubeletApi
from e2e.nodes.nodeconfig import NodeConfig
from e2e.nodes.podfiles import PodFiles, TokenIssuer
from e2e.nodes.protocol import Authorizer, Request, Response, User
from e2e.nodes.runs import ContainerProcess, annotated_process
from e2e.nodes.toolrun import DEFAULT_TIMEOUT, ToolRunner
from e2e.pki import CertPair, issue, make_ca, write_private
from e2e.sim import authz, rbac, workloads
from e2e.sim.api import Api
from e2e.sim.controllers import Controller, NamespaceController, Scheduler
from e2e.sim.core import NAMESPACES, PODS, core_registry
from e2e.sim.cron import CronClock
from e2e.sim.cronjob_controller import CronJobController
from e2e.sim.discovery import KUBE_VERSION
from e2e.sim.errors import status_body
from e2e.sim.kubelets import KubeletLoop
from e2e.sim.nodeapi import SimNodeApi
from e2e.sim.podlogs import log_handler
from e2e.sim.rbac_authorizer import RbacAuthorizer, service_account_user
from e2e.sim.rest import Rest
from e2e.sim.schema import schemas_for
from e2e.sim.server import ApiServer
from e2e.sim.serviceaccounts import ServiceAccountController
from e2e.sim.store import Obj, Store
from e2e.sim.users import UserSpec, user_grants

__all__ = ["ADMIN", "DEFAULT_NODES", "KUBELET_CLIENT_CN", "Simulator"]

DEFAULT_NODES = ("node-a", "node-b")
#: The user the kubeconfig's token authenticates as.
ADMIN = User("sim-admin", ("system:masters", "system:authenticated"))
#: Who STATE_DIR/kubelet-client.crt says it is (a cluster admin, like kubeadm's
#: apiserver-kubelet-client).
KUBELET_CLIENT_CN = "kubelet-admin"
_CLUSTER = "sim"
_IMAGE_STORAGE = "var/lib/containers/storage"
_UNAUTHORIZED_TEXT = "Unauthorized\n"


class Simulator:
    """A simulated cluster: API server, scheduler, namespace controller, kubelets.

    state_dir: where the PKI, the kubeconfig and the logs go (created if needed).
    nodes: node names; node i (from 1) gets pod IPs 10.88.i.x.
    port: 0 picks a free port.
    start_latency: seconds from a pod being bound to it Running.
    stop_latency: seconds from a pod's deletion to it being gone.
    authorizer: decides every request, the API server's and the kubelets'
        (default: RBAC over the cluster's own RBAC objects).
    users: users to create at start (see add_user()).
    node_config: NodeConfig per node name (runtime, checkpoint support,
        readiness, faults...); nodes not named get NodeConfig().
    registries: how kubelets reach registries on 127.0.0.1 (plain HTTP ones,
        trusted CAs); default: HTTPS with the system's CAs.
    container_process: what the containers of run-to-completion pods (Jobs) do
        (runs.py; default: run and exit as the pod's annotations say).
    tool_images: images that are the tool's own: such containers run
        `python -m migrate` in a subprocess, in-cluster (toolrun.py); others as
        `container_process` says.
    tool_timeout: seconds a tool container may run when neither its pod nor its
        Job sets activeDeadlineSeconds.
    """

    def __init__(
        self,
        state_dir: Path,
        *,
        nodes: Sequence[str] = DEFAULT_NODES,
        port: int = 0,
        start_latency: float = 0.2,
        stop_latency: float = 0.2,
        authorizer: Authorizer | None = None,
        node_config: Mapping[str, NodeConfig] | None = None,
        users: Sequence[UserSpec] = (),
        registries: RegistryConfig | None = None,
        container_process: ContainerProcess | None = None,
        tool_images: Sequence[str] = (),
        tool_timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        if not nodes:
            raise ValueError("a cluster needs at least one node")
        if len(set(nodes)) != len(nodes):
            raise ValueError(f"node names must be unique: {list(nodes)}")
        unknown = sorted(set(node_config or {}) - set(nodes))
        if unknown:
            raise ValueError(f"node_config names nodes that are not in the cluster: {unknown}")
        self.state_dir = Path(state_dir)
        self.node_names = tuple(nodes)
        self.start_latency = start_latency
        self.stop_latency = stop_latency
        self.token = secrets.token_urlsafe(32)
        self.store = Store()
        self.registry = core_registry()
        authz.register(self.registry)
        rbac.register(self.registry)
        self.rest = Rest(self.store, self.registry, schemas_for(KUBE_VERSION))
        self.authorizer = authorizer if authorizer is not None else RbacAuthorizer(self.store)
        self.api = Api(self.rest, self.registry, authorizer=self.authorizer,
                       server_address=lambda: f"{LOOPBACK}:{self.port}", log=self.log,
                       node_proxy=self._proxy_to_kubelet)
        workloads.install(self.registry, self.rest, self.api)
        self.api.serve_subresource(PODS, "log", log_handler(self.rest, self.node_dir))
        self._tokens: dict[str, User] = {self.token: ADMIN}
        self._users: dict[str, tuple[UserSpec, str]] = {}
        self._port = port
        self._server: ApiServer | None = None
        self._controllers: list[Controller] = []
        self._ca: CertPair | None = None
        self._kubelet_client: CertPair | None = None
        self._proxy_context: ssl.SSLContext | None = None
        self.registries = registries or RegistryConfig()
        self.cron_clock = CronClock()
        self.node_apis = {node: SimNodeApi(self.rest, node, tokens=(
            self.service_account_token, self.revoke_token)) for node in self.node_names}
        process = self._process(container_process or annotated_process, tool_images,
                                tool_timeout)
        self.kubelets = {
            node: Kubelet(self.node_apis[node], node, index, start_latency=start_latency,
                          stop_latency=stop_latency, config=(node_config or {}).get(node),
                          log=self.log, registries=self.registries,
                          storage=self.state_dir / "nodes" / node / _IMAGE_STORAGE,
                          process=process, kubelet_version=KUBE_VERSION)
            for index, node in enumerate(self.node_names, start=1)
        }
        self._kubelet_apis: dict[str, KubeletApi] = {}
        self._kubelet_servers: dict[str, HttpsServer] = {}
        self._log_file: IO[str] | None = None
        self._log_lock = threading.Lock()
        for spec in users:
            self.add_user(spec.name, spec.groups, spec.rules, token=spec.token)

    def _process(self, fallback: ContainerProcess, tool_images: Sequence[str],
                 timeout: float) -> ContainerProcess:
        if not tool_images:
            return fallback
        files = PodFiles(self.node_apis.__getitem__, self.node_dir, TokenIssuer(
            lambda pod, account: self.service_account_token(pod["metadata"]["namespace"],
                                                            account),
            self.revoke_token, lambda: self.ca.cert))
        return ToolRunner(tool_images, self.node_apis.__getitem__, files, lambda: self.port,
                          fallback=fallback, timeout=timeout, log=self.log)

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
    def api_connections(self) -> int:
        """TLS connections the API server has accepted so far (its requests are the
        lines of STATE_DIR/apiserver.log)."""
        if self._server is None:
            raise RuntimeError("simulator not started")
        return self._server.connections_accepted

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

    @property
    def kubelet_client(self) -> CertPair:
        """A client certificate every kubelet accepts (STATE_DIR/kubelet-client.crt/.key)."""
        if self._kubelet_client is None:
            raise RuntimeError("simulator not started")
        return self._kubelet_client

    def kubelet_url(self, node: str) -> str:
        """`https://127.0.0.1:PORT` of `node`'s kubelet API."""
        self._check_node(node)
        server = self._kubelet_servers.get(node)
        if server is None:
            raise RuntimeError("simulator not started")
        return server.url

    def node_dir(self, node: str) -> Path:
        """The node's root directory on this machine (STATE_DIR/nodes/NODE)."""
        self._check_node(node)
        return self.state_dir / "nodes" / node

    def node_path(self, node: str, path: str) -> Path:
        """Where the node's absolute `path` (e.g. a checkpoint the kubelet answered) is here."""
        if not path.startswith("/") or ".." in Path(path).parts:
            raise ValueError(f"not an absolute, normalized node path: {path!r}")
        return self.node_dir(node) / path.lstrip("/")

    def checkpoint_dir(self, node: str) -> Path:
        """The node's /var/lib/kubelet/checkpoints on this machine."""
        return self.node_path(node, CHECKPOINT_DIR)

    def node_config(self, node: str) -> NodeConfig:
        """The node's current NodeConfig."""
        self._check_node(node)
        return self.kubelets[node].config

    def configure_node(self, node: str, **changes: Any) -> NodeConfig:
        """Change a node's settings (NodeConfig fields, e.g. `ready=False`,
        `fail_next_checkpoints=2`); the Node object reports them at once."""
        self._check_node(node)
        return self.kubelets[node].update_config(**changes)

    @contextlib.contextmanager
    def holding_checkpoints(self, node: str) -> Iterator[Callable[[], int]]:
        """Within the block, checkpoints reaching NODE's runtime wait before they dump,
        as a long dump would, and go on when it ends; yields a function telling how
        many wait now. A test uses it to know a run is inside its checkpoint."""
        self._check_node(node)
        api = self._kubelet_apis[node]  # they exist once the simulator started
        api.hold()
        try:
            yield lambda: api.held
        finally:
            api.release()

    def _check_node(self, node: str) -> None:
        if node not in self.kubelets:
            raise KeyError(f"no node {node!r} in this cluster (nodes: "
                           f"{', '.join(self.node_names)})")

    def add_token(self, user: str, groups: Sequence[str] = ()) -> str:
        """A new bearer token for `user` (for tests of other identities, e.g. 403s).
        It only authenticates: under RBAC the user may read discovery and ask
        access reviews, and what bindings to it or its groups grant (add_user())."""
        token = secrets.token_urlsafe(32)
        self._authenticate(token, User(user, tuple(groups)))
        return token

    def service_account_token(self, namespace: str, name: str) -> str:
        """A new bearer token for ServiceAccount NAMESPACE/NAME, as a TokenRequest
        issues one: user `system:serviceaccount:NAMESPACE:NAME`, in the groups
        system:serviceaccounts and system:serviceaccounts:NAMESPACE; RBAC bindings
        to the ServiceAccount apply."""
        user = service_account_user(namespace, name)
        return self.add_token(user.name, user.groups)

    def revoke_token(self, token: str) -> None:
        """Stop accepting `token` (as a bound token stops working with its pod)."""
        self._tokens.pop(token, None)
        if self._server is not None:
            self._server.tokens = {k: v for k, v in self._server.tokens.items() if k != token}

    def _authenticate(self, token: str, user: User) -> None:
        self._tokens[token] = user
        if self._server is not None:
            # A new mapping, not an insert: requests being authenticated iterate the old one.
            self._server.tokens = {**self._server.tokens, token: user}

    def add_user(self, name: str, groups: Sequence[str] = (),
                 rules: Sequence[Mapping[str, Any]] = (), *, token: str | None = None) -> str:
        """A bearer token for user `name`, granted `rules` (users.py) through RBAC
        objects named `sim:user:NAME`; namespaces they name are created. Before
        start() the objects are created at start; the token and
        user_kubeconfig(name) work either way."""
        if name in self._users:
            raise ValueError(f"user {name!r} already exists")
        spec = UserSpec(name, tuple(groups), tuple(rules), token)
        token = token or secrets.token_urlsafe(32)
        self._authenticate(token, User(name, spec.groups))
        self._users[name] = (spec, token)
        if self._server is not None:
            self._grant(spec)
            self._write_kubeconfig(self.user_kubeconfig(name), name, token)
        return token

    def user_kubeconfig(self, name: str) -> Path:
        """The kubeconfig of a user made by add_user() (STATE_DIR/kubeconfig-NAME)."""
        if name not in self._users:
            raise KeyError(f"no user {name!r} was added")
        return self.state_dir / f"kubeconfig-{re.sub(r'[^A-Za-z0-9_.-]', '-', name)}"

    def _grant(self, spec: UserSpec) -> None:
        for rt, namespace, obj in user_grants(spec):
            if namespace and self.store.find(NAMESPACES.key, "", namespace) is None:
                self.rest.create(NAMESPACES, "", {"metadata": {"name": namespace}})
            self.rest.create(rt, namespace, obj)

    def advance_cron(self, to: dt.datetime | None = None, *,
                     by: dt.timedelta | None = None) -> dt.datetime:
        """Set the CronJob controller's clock to `to` (aware) or forward `by`; it stays
        there (never going back). Returns the new time once the controller has run
        a pass at it: the Jobs due by then exist."""
        if (to is None) == (by is None):
            raise ValueError("give exactly one of to= and by=")
        target = to if to is not None else self.cron_clock.now() + (by or dt.timedelta())
        self.cron_clock.set(target)
        controller = next((c for c in self._controllers if isinstance(c, CronJobController)),
                          None)
        if controller is not None:
            controller.run_pass()
        return target

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
        write_private(self.state_dir / "ca.crt", self._ca.cert.read_bytes())
        self._kubelet_client = issue(self._ca, self.state_dir, "kubelet-client", client=True,
                                     cn=KUBELET_CLIENT_CN, org="system:masters")
        proxy_cert = issue(self._ca, pki, "apiserver-kubelet-client", client=True,
                           cn="kube-apiserver-kubelet-client", org="system:masters")
        self._proxy_context = ssl.create_default_context(cafile=str(self._ca.cert))
        self._proxy_context.load_cert_chain(proxy_cert.cert, proxy_cert.key)
        try:
            self._start_kubelet_servers(pki)
            self._bootstrap()
            self._server = ApiServer(self.api, server_cert, self._tokens, port=self._port,
                                     log=self.state_dir / "apiserver.log")
            self._server.start()
            for name, (_, token) in self._users.items():
                self._write_kubeconfig(self.user_kubeconfig(name), name, token)
            self._write_kubeconfig(self.kubeconfig, ADMIN.name, self.token)
        except BaseException:
            self.stop()
            raise
        self.log(f"ready {self.url}")
        return self

    def _bootstrap(self) -> None:
        for name in ("default", "kube-system", "kube-public", "kube-node-lease"):
            self.rest.create(NAMESPACES, "", {"metadata": {"name": name}})
        for rt, obj in rbac.default_policy():
            self.rest.create(rt, "", obj)
        for spec, _ in self._users.values():
            self._grant(spec)
        self._controllers = [Scheduler(self.rest, log=self.log),
                             NamespaceController(self.rest, log=self.log),
                             ServiceAccountController(self.rest, log=self.log),
                             *workloads.controllers(self.rest, log=self.log,
                                                    cron_clock=self.cron_clock)]
        for node, kubelet in self.kubelets.items():
            kubelet.register(self._kubelet_servers[node].port)
            self._controllers.append(KubeletLoop(self.rest, kubelet, log=self.log))
        for controller in self._controllers:
            controller.start()

    def _start_kubelet_servers(self, pki: Path) -> None:
        for node, kubelet in self.kubelets.items():
            checkpoints = self.checkpoint_dir(node)
            checkpoints.mkdir(parents=True, exist_ok=True)
            checkpoints.chmod(0o700)
            (self.node_dir(node) / "var" / "log").mkdir(parents=True, exist_ok=True)
            cert = issue(self.ca, pki / "nodes", f"kubelet-{node}", dns=[node, "localhost"],
                         ips=[LOOPBACK], cn=f"system:node:{node}", org="system:nodes")
            api = KubeletApi(kubelet, checkpoints, authorizer=self.authorizer, log=self.log,
                             pod_logs=self.node_dir(node) / "var/log/pods")
            server = HttpsServer(
                api, cert, authenticator=self._kubelet_user,
                unauthorized=lambda: Response(401, _UNAUTHORIZED_TEXT.encode(),
                                              "text/plain; charset=utf-8"),
                client_ca=self.ca.cert, log=self.node_dir(node) / "var" / "log" / "kubelet.log",
                name=f"sim-kubelet-{node}", server_header="",
            )
            self._kubelet_apis[node] = api
            self._kubelet_servers[node] = server
            server.start()

    def _kubelet_user(self, header: str | None, cert: dict[str, Any] | None) -> User | None:
        # x509 first, then bearer tokens (the kubelet's webhook token authentication).
        user = cert_user(cert)
        if user is not None:
            return user
        scheme, _, token = (header or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        found = None
        for known, who in list(self._tokens.items()):
            if hmac.compare_digest(known.encode(), token.strip().encode()):
                found = who
        return found

    def _proxy_to_kubelet(self, node: Obj, req: Request, path: str) -> Response:
        """The API server's node proxy: `req` sent on to the kubelet, its answer back."""
        endpoint = (node.get("status") or {}).get("daemonEndpoints") or {}
        port = int((endpoint.get("kubeletEndpoint") or {}).get("Port") or 0)
        query = urllib.parse.urlencode([(k, v) for k, vs in req.query.items() for v in vs])
        headers = {k: str(req.headers.get(k)) for k in ("Content-Type", "Accept")
                   if req.headers.get(k)}
        # No read timeout: the API server treats proxy requests as long-running.
        conn = http.client.HTTPSConnection(LOOPBACK, port, context=self._proxy_context)
        try:
            conn.request(req.method, path + (f"?{query}" if query else ""),
                         body=req.body or None, headers=headers)
            answer = conn.getresponse()
            body = answer.read()
        except (OSError, http.client.HTTPException) as e:
            return Response(503, status_body(
                503, "ServiceUnavailable",
                f"error trying to reach service: dial tcp {LOOPBACK}:{port}: {e}"))
        finally:
            conn.close()
        passed = {k: v for k, v in answer.getheaders() if k.lower() == "x-content-type-options"}
        return Response(answer.status, body,
                        answer.getheader("Content-Type") or "text/plain; charset=utf-8",
                        headers=passed)

    def _write_kubeconfig(self, path: Path, user: str, token: str) -> None:
        config: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": _CLUSTER, "cluster": {
                "server": self.url,
                "certificate-authority-data": base64.b64encode(
                    self.ca.cert.read_bytes()).decode(),
            }}],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [{"name": _CLUSTER, "context": {
                "cluster": _CLUSTER, "user": user, "namespace": "default"}}],
            "current-context": _CLUSTER,
            "preferences": {},
        }
        # Written aside and renamed: whoever sees the file sees all of it.
        tmp = path.with_name(f".{path.name}.tmp")
        write_private(tmp, yaml.safe_dump(config, sort_keys=False).encode())
        os.replace(tmp, path)

    def stop(self) -> None:
        """Stop serving, stop every controller and join every thread. Idempotent;
        a stopped simulator cannot be started again (make a new one)."""
        # Checkpoints in progress end first: the API server's proxy threads wait on them.
        for api in self._kubelet_apis.values():
            api.abort()
        self.store.close()
        if self._server is not None:
            self._server.stop()
        for server in self._kubelet_servers.values():
            server.stop()
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
