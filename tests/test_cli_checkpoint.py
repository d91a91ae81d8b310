"""`migrate checkpoint` against the real control plane with node agents: through the API
server's node proxy, and straight to a node's kubelet API (in its node host)."""

from __future__ import annotations

import ssl
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
from kubernetes import client

from e2e.cluster.launcher import ControlPlane
from e2e.cluster.world import Cluster
from e2e.services.pki import issue, make_ca
from migrate.adapters.kubelet import (
    MAX_ANSWER_BYTES,
    SUPPORT_OFF_HINT,
    KubeletEndpoint,
    auth_hint,
    checkpoint_direct,
)
from migrate.errors import ClusterError
from migrate.settings import RetrySettings
from tests.cluster import node_agents, wait_for
from tests.conftest import Result

Cli = Callable[..., Result]


@pytest.fixture(scope="module")
def cluster(real_cp: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with node_agents(real_cp, tmp_path_factory.mktemp("nodes"), start_latency=0.05,
                     stop_latency=0.05) as world:
        yield world


def running_pod(v1: client.CoreV1Api, name: str, containers: tuple[str, ...] = ("app",),
                node: str | None = "node-a", annotations: dict[str, str] | None = None
                ) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{"name": c, "image": "registry.example/app:1"}
                                           for c in containers]}
    if node:
        spec["nodeName"] = node
    v1.create_namespaced_pod("default", {"metadata": {"name": name,
                                                      "annotations": annotations or {}},
                                         "spec": spec})
    pod = wait_for(lambda: (p := v1.read_namespaced_pod(name, "default")).status.phase
                   == "Running" and p, what=f"pod {name} Running")
    return pod.to_dict()  # type: ignore[no-any-return]


def test_unknown_pod(cli: Cli, cluster: Cluster) -> None:
    r = cli("checkpoint", "ghost", "--kubeconfig", cluster.kubeconfig)
    assert r.code == 4
    assert r.err == ("error: pod default/ghost does not exist\n"
                     "hint: there are no pods in default; check the name and the namespace "
                     "(-n)\n")


def test_several_containers_need_c(cli: Cli, cluster: Cluster, v1: client.CoreV1Api) -> None:
    running_pod(v1, "duo", ("app", "sidecar"))
    r = cli("checkpoint", "duo", "--kubeconfig", cluster.kubeconfig)
    assert r.code == 2
    assert r.err == ("error: pod default/duo has 2 containers; say which with -c\n"
                     "hint: its containers: app, sidecar\n")
    r = cli("checkpoint", "duo", "-c", "db", "--kubeconfig", cluster.kubeconfig)
    assert (r.code, r.err.splitlines()[0]) == (4, "error: pod default/duo has no container 'db'")


def test_pod_not_running(cli: Cli, cluster: Cluster, v1: client.CoreV1Api) -> None:
    sim_unschedulable = {"containers": [{"name": "app", "image": "x"}],
                         "nodeSelector": {"no-such": "node"}}
    v1.create_namespaced_pod("default", {"metadata": {"name": "pending"},
                                         "spec": sim_unschedulable})
    r = cli("checkpoint", "pending", "--kubeconfig", cluster.kubeconfig)
    assert r.code == 6
    assert r.err == ("error: pod default/pending is Pending, not Running\n"
                     "hint: only a running container can be checkpointed\n")


def test_namespace_and_context_come_from_flags(cli: Cli, cluster: Cluster) -> None:
    r = cli("checkpoint", "x", "-n", "kube-system", "--kubeconfig", cluster.kubeconfig)
    assert r.err.splitlines()[0] == "error: pod kube-system/x does not exist"
    r = cli("checkpoint", "x", "--context", "nope", "--kubeconfig", cluster.kubeconfig)
    assert r.code == 4
    assert r.err.startswith(f"error: context nope is not in kubeconfig {cluster.kubeconfig}\n")


def test_kubelet_route_needs_its_credentials(cli: Cli, cluster: Cluster,
                                             v1: client.CoreV1Api) -> None:
    running_pod(v1, "solo")
    r = cli("checkpoint", "solo", "--via", "kubelet", "--kubeconfig", cluster.kubeconfig)
    assert (r.code, r.err.splitlines()[0]) == (
        2, "error: --via kubelet needs --kubelet-url, --cert and --key")


def test_missing_kubeconfig(cli: Cli, tmp_path: Path) -> None:
    r = cli("checkpoint", "x", "--kubeconfig", tmp_path / "none")
    assert r.code == 4
    assert r.err == (f"error: kubeconfig {tmp_path / 'none'} does not exist\n"
                     "hint: give the path of a kubeconfig file with --kubeconfig FILE (or set "
                     "KUBECONFIG)\n")


SECRET_PROCS = ('[{"pid": 1, "ppid": 0, "comm": "server", "argv": ["/srv/server", "--port=80"], '
                '"env": ["HOME=/"], "heap": "token=S3CR3T-IN-MEMORY"}]')


@pytest.mark.parametrize("via", ["apiserver", "kubelet"])
def test_checkpoint_writes_the_archive_on_the_pods_node(
        cli: Cli, cluster: Cluster, v1: client.CoreV1Api, via: str) -> None:
    name = f"web-{via}"
    running_pod(v1, name, node="node-b",
                annotations={"sim.migrate.dev/processes": SECRET_PROCS})
    args: list[str | Path] = ["checkpoint", name, "--kubeconfig", cluster.kubeconfig, "-o", "json"]
    if via == "kubelet":
        # The API server's own kubelet client certificate: its group may do everything.
        args += ["--via", "kubelet", "--kubelet-url", cluster.kubelet_url("node-b"),
                 "--cert", cluster.kubelet_client.cert, "--key", cluster.kubelet_client.key,
                 "--ca", cluster.ca.cert]
    r = cli(*args)
    assert r.code == 0, r.err
    out = r.json()
    from migrate.validation import validate
    validate(out, "checkpoint.schema.json", "checkpoint -o json")
    assert (out["node"], out["namespace"], out["pod"], out["container"], out["via"]) == (
        "node-b", "default", name, "app", via)
    assert out["archive"].startswith(f"/var/lib/kubelet/checkpoints/checkpoint-{name}_default-app-")
    local = cluster.node_path("node-b", out["archive"])
    assert local.stat().st_mode & 0o777 == 0o600
    # The archive is a real checkpoint of that container, memory included.
    shown = cli("show", local, "-o", "json").json()[0]
    assert (shown["container_name"], shown["pod_name"], shown["namespace"]) == (
        "app", name, "default")
    found = cli("memparse", local, "--search", "S3CR3T-IN-MEMORY", "-o", "json").json()
    assert [m["command"] for m in found] == ["server"]


def test_table_output(cli: Cli, cluster: Cluster, v1: client.CoreV1Api) -> None:
    running_pod(v1, "tabled")
    r = cli("checkpoint", "tabled", "--kubeconfig", cluster.kubeconfig)
    header, row = r.out.splitlines()
    assert header.split() == ["NODE", "POD", "CONTAINER", "ARCHIVE", "TIME"]
    assert row.split()[:3] == ["node-a", "default/tabled", "app"]


def test_gate_off_gets_the_feature_gate_hint(cli: Cli, cluster: Cluster,
                                             v1: client.CoreV1Api) -> None:
    running_pod(v1, "gated", node="node-b")
    cluster.configure_node("node-b", checkpoint_gate=False)
    try:
        r = cli("checkpoint", "gated", "--kubeconfig", cluster.kubeconfig)
    finally:
        cluster.configure_node("node-b", checkpoint_gate=True)
    assert r.code == 4
    assert r.err == ("error: checkpoint default/gated/app on node-b: 404 page not found\n"
                     "hint: the kubelet has no checkpoint endpoint: enable the "
                     "ContainerCheckpoint feature gate (on by default from 1.30)\n")


def test_a_failed_checkpoint_is_retried(cli: Cli, cluster: Cluster, v1: client.CoreV1Api) -> None:
    running_pod(v1, "flaky", node="node-b")
    cluster.configure_node("node-b", fail_next_checkpoints=1)
    r = cli("checkpoint", "flaky", "--kubeconfig", cluster.kubeconfig, "-o", "json")
    assert r.code == 0, r.err
    assert cluster.node_config("node-b").fail_next_checkpoints == 0


def test_a_runtime_without_checkpoint_support(cli: Cli, cluster: Cluster,
                                              v1: client.CoreV1Api,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIGRATE_DEBUG", "")
    running_pod(v1, "norestore", node="node-b")
    cluster.configure_node("node-b", restore_level="none")
    try:
        r = cli("checkpoint", "norestore", "--kubeconfig", cluster.kubeconfig)
    finally:
        cluster.configure_node("node-b", restore_level="checkpoint_restore")
    assert r.code == 6
    first, hint = r.err.splitlines()
    assert first.startswith("error: checkpoint default/norestore/app on node-b: checkpointing "
                            "of default/norestore/app failed")
    assert hint == f"hint: {SUPPORT_OFF_HINT}"  # the words a real CRI-O 1.36.3 answers with
    # A runtime without the feature is not retried: the kubelet saw one request.
    log = (cluster.node_dir("node-b") / "var/log/kubelet.log").read_text()
    assert log.count("/checkpoint/default/norestore/app") == 1


@pytest.mark.parametrize(("status", "body", "hint"), [
    (401, "Unauthorized", "the kubelet does not accept this client certificate: --cert and "
     "--key must be signed by the CA its clientCAFile names"),
    (403, "Forbidden (user=ops, verb=create, resource=nodes, subresource(s)=[checkpoint])",
     "the kubelet knows the certificate's user ops, who may not create nodes/checkpoint: "
     "grant it (a ClusterRole with that resource and verb, bound to the user); the kubelet "
     "remembers a denial for up to 30 s (its cacheUnauthorizedTTL)"),
    (403, "Forbidden", "the kubelet accepts this client certificate, but its user may not "
     "checkpoint"),
])
def test_the_kubelets_refusals_say_what_to_mend(status: int, body: str, hint: str) -> None:
    # What the real kubelet answers (test_real_node.py proves the 403's wording).
    assert auth_hint(status, body) == hint


def _via_kubelet(cluster: Cluster, node: str = "node-b", **over: object) -> list[object]:
    opts: dict[str, object] = {"--kubelet-url": cluster.kubelet_url(node),
                               "--cert": cluster.kubelet_client.cert,
                               "--key": cluster.kubelet_client.key, "--ca": cluster.ca.cert,
                               **over}
    return ["--kubeconfig", cluster.kubeconfig, "--via", "kubelet",
            *[x for kv in opts.items() for x in kv]]


def test_kubelet_route_with_an_unusable_client_key(cli: Cli, cluster: Cluster,
                                                   v1: client.CoreV1Api, tmp_path: Path) -> None:
    running_pod(v1, "badkey", node="node-b")
    key = tmp_path / "client.key"
    key.write_text("not a key\n")
    r = cli("checkpoint", "badkey", *_via_kubelet(cluster, **{"--key": key}))
    assert r.code == 6, r.err
    first, hint = r.err.splitlines()
    assert first.startswith("error: cannot use the kubelet client certificate: ")
    assert hint == "hint: --cert and --key must be a PEM pair; --ca the kubelet's CA"


def test_kubelet_route_with_another_ca(cli: Cli, cluster: Cluster, v1: client.CoreV1Api,
                                       tmp_path: Path) -> None:
    """The kubelet's certificate is not signed by --ca: a TLS failure, not retried."""
    running_pod(v1, "otherca", node="node-b")
    other = make_ca(tmp_path, "other-ca")
    r = cli("checkpoint", "otherca", *_via_kubelet(cluster, **{"--ca": other.cert}))
    assert r.code == 6, r.err
    assert r.err == (f"error: checkpoint default/otherca/app at {cluster.kubelet_url('node-b')}:"
                     " TLS failed (SSLError)\n"
                     "hint: check --ca, and that the kubelet trusts --cert\n")


def test_kubelet_route_without_the_checkpoint_endpoint(cli: Cli, cluster: Cluster,
                                                       v1: client.CoreV1Api) -> None:
    running_pod(v1, "gated-direct", node="node-b")
    cluster.configure_node("node-b", checkpoint_gate=False)
    try:
        r = cli("checkpoint", "gated-direct", *_via_kubelet(cluster))
    finally:
        cluster.configure_node("node-b", checkpoint_gate=True)
    assert r.code == 4, r.err
    assert r.err == (f"error: checkpoint default/gated-direct/app at "
                     f"{cluster.kubelet_url('node-b')}: 404 page not found\n"
                     "hint: the kubelet has no checkpoint endpoint (ContainerCheckpoint gate) "
                     "or does not run this container\n")


class _Answers(BaseHTTPRequestHandler):
    """Whatever answers at a --kubelet-url: each request gets the next scripted answer."""

    script: ClassVar[list[tuple[int, bytes]]] = []

    def do_POST(self) -> None:
        status, body = self.script.pop(0)
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: object) -> None:
        pass


def test_a_kubelet_answer_larger_than_any_kubelet_sends_is_refused_not_buffered(
        tmp_path: Path) -> None:
    """A checkpoint's answer is one path; whatever answers at the address given (a wrong
    port, a proxy) is read up to MAX_ANSWER_BYTES and no further, success or error."""
    ca = make_ca(tmp_path)
    served = issue(ca, tmp_path, "kubelet", ips=["127.0.0.1"])
    mine = issue(ca, tmp_path, "client", client=True)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Answers)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(served.cert, served.key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    ep = KubeletEndpoint(f"https://127.0.0.1:{server.server_address[1]}", mine.cert, mine.key,
                         ca.cert)
    path = b'{"items": ["/var/lib/kubelet/checkpoints/c.tar"]}'
    _Answers.script = [(200, path + b" " * MAX_ANSWER_BYTES), (500, b"x" * (MAX_ANSWER_BYTES + 1)),
                       (200, path + b" " * (MAX_ANSWER_BYTES - len(path)))]
    try:
        for status in (200, 500):
            with pytest.raises(ClusterError) as e:
                checkpoint_direct(ep, "default", "p", "app", None, RetrySettings(attempts=1))
            assert e.value.message == (f"checkpoint default/p/app at {ep.url}: answered "
                                       f"{status} with more than {MAX_ANSWER_BYTES} bytes")
            assert e.value.hint == "is a kubelet answering at that address?"
        # Exactly the limit is an answer like any other.
        assert checkpoint_direct(ep, "default", "p", "app", None, RetrySettings(attempts=1)) \
            == "/var/lib/kubelet/checkpoints/c.tar"
    finally:
        server.shutdown()
        server.server_close()
