"""The Kubernetes adapter: the official client, its errors translated into ours.

Only this module imports ``kubernetes``. Every API call goes through `call`,
which maps an ``ApiException`` to the error tree using the API server's own
``Status`` message, marks connection errors, 5xx and 429 as transient for the
named retry policy, and never lets the client's exceptions (or a bearer token
in them) reach the user.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from migrate.adapters.kubelet import parse_checkpoint_response, runtime_failure
from migrate.errors import (
    AuthError,
    ClusterError,
    InputError,
    MigrateError,
    NotFoundError,
    TransientClusterError,
)
from migrate.retry import cluster_policy, retry_after
from migrate.settings import KubeSettings

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class Cluster:
    """A connected API client and the namespace to default to."""

    api: Any  # kubernetes.client.ApiClient
    namespace: str
    settings: KubeSettings


def connect(settings: KubeSettings) -> Cluster:
    """Load kubeconfig (or the in-cluster service account) and build a client."""
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    configuration = client.Configuration()
    namespace = settings.namespace
    try:
        if settings.kubeconfig is None and _in_cluster():
            config.load_incluster_config(client_configuration=configuration)
            namespace = namespace or _in_cluster_namespace()
        else:
            kc = str(settings.kubeconfig) if settings.kubeconfig else None
            config.load_kube_config(config_file=kc, context=settings.context,
                                    client_configuration=configuration)
            contexts, active = config.list_kube_config_contexts(config_file=kc)
            chosen = (next((c for c in contexts if c["name"] == settings.context), None)
                      if settings.context else active)
            namespace = namespace or (chosen or {}).get("context", {}).get("namespace")
    except (ConfigException, OSError) as e:
        where = settings.kubeconfig or "the default kubeconfig"
        raise InputError(f"cannot load {where}: {e}",
                         hint="pass --kubeconfig FILE (and --context NAME), or run in a pod "
                         "with a service account") from e
    configuration.retries = False  # retries are ours, transient failures only
    return Cluster(client.ApiClient(configuration), namespace or "default", settings)


def _in_cluster() -> bool:
    from kubernetes.config.incluster_config import SERVICE_TOKEN_FILENAME

    return "KUBERNETES_SERVICE_HOST" in os.environ and Path(SERVICE_TOKEN_FILENAME).is_file()


def _in_cluster_namespace() -> str | None:
    path = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
    return path.read_text().strip() if path.is_file() else None


def _status_message(body: str | bytes | None) -> str:
    """The API server's Status.message, when the body is a Status."""
    if not body:
        return ""
    try:
        status = json.loads(body)
    except (ValueError, TypeError):
        text = body.decode(errors="replace") if isinstance(body, bytes) else str(body)
        return text.strip().splitlines()[0][:300] if text.strip() else ""
    return str(status.get("message", "")) if isinstance(status, dict) else ""


def translate(e: Exception, what: str) -> MigrateError:
    """One client exception as an error of ours; ``what`` says what we were doing."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    if isinstance(e, ApiException):
        detail = _status_message(e.body) or (e.reason or "")
        msg = f"{what}: {detail}" if detail else f"{what} failed: HTTP {e.status}"
        if e.status == 404:
            return NotFoundError(msg, hint="check the name and the namespace (-n)")
        if e.status == 401:
            return AuthError(msg, hint="the cluster rejected the credentials; check the "
                             "kubeconfig (an expired token?)")
        if e.status == 403:
            return AuthError(msg, hint="ask for the RBAC this needs; `migrate doctor` "
                             "lists what is missing")
        if e.status == 429 or (e.status or 0) >= 500:
            return TransientClusterError(
                msg, hint="the API server is overloaded or failing; try again later",
                retry_after=retry_after((e.headers or {}).get("Retry-After")))
        return ClusterError(msg, hint="the API server refused the request")
    if isinstance(e, HTTPError | OSError):
        return TransientClusterError(f"{what}: cannot reach the API server "
                                     f"({type(e).__name__})",
                                     hint="check the kubeconfig's server address and the "
                                     "network")
    raise e


def call(cluster: Cluster, what: str, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
    """Run one API call with the named retry policy; errors come out as ours."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    kw.setdefault("_request_timeout", cluster.settings.request_timeout)
    for attempt in cluster_policy(cluster.settings.retry):
        with attempt:
            try:
                return fn(*args, **kw)
            except (ApiException, HTTPError, OSError) as e:
                raise translate(e, what) from e
    raise AssertionError("unreachable")  # pragma: no cover


def read_pod(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    """The pod as the API serves it (camelCase field names, as in manifests)."""
    from kubernetes import client

    core = client.CoreV1Api(cluster.api)
    # Raw JSON, not the client's models: the pipeline works with manifest field names.
    resp: Any = call(cluster, f"read pod {namespace}/{name}", core.read_namespaced_pod, name,
                     namespace, _preload_content=False)
    pod: dict[str, Any] = json.loads(resp.data)
    return pod


_GATE_HINT = ("the kubelet has no checkpoint endpoint: enable the ContainerCheckpoint feature "
              "gate (on by default from 1.30)")


def _checkpoint_error(e: MigrateError) -> MigrateError:
    """Checkpoint failures, with hints for the two usual causes."""
    if isinstance(e, NotFoundError):
        return NotFoundError(e.message, hint=_GATE_HINT)
    return e


def checkpoint_via_apiserver(cluster: Cluster, node: str, namespace: str, pod: str,
                             container: str, timeout: int | None) -> str:
    """POST the kubelet's checkpoint API through the API server's node proxy.

    Returns the archive's path on the node. Needs RBAC ``nodes/proxy`` create.
    """
    what = f"checkpoint {namespace}/{pod}/{container} on {node}"
    query = [("timeout", str(timeout))] if timeout else []

    def post(_request_timeout: float) -> bytes:
        from kubernetes.client.exceptions import ApiException

        request = cluster.api.param_serialize(
            "POST", "/api/v1/nodes/{node}/proxy/checkpoint/{namespace}/{pod}/{container}",
            path_params={"node": node, "namespace": namespace, "pod": pod,
                         "container": container},
            query_params=query, header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"])
        resp = cluster.api.call_api(*request, _request_timeout=_request_timeout)
        data: bytes = resp.read()
        if resp.status >= 500:
            lines = data.decode(errors="replace").strip().splitlines()
            raise runtime_failure(what, lines[0][:300] if lines else f"HTTP {resp.status}")
        if not 200 <= resp.status < 300:
            # call_api hands back any status; `call` translates the exception.
            raise ApiException.from_response(http_resp=resp, body=data.decode(errors="replace"),
                                             data=None)
        return data

    # The request lasts as long as the runtime takes to dump the memory.
    request_timeout = max(cluster.settings.request_timeout, (timeout or 0) + 30)
    try:
        resp = call(cluster, what, post, _request_timeout=request_timeout)
    except MigrateError as e:
        raise _checkpoint_error(e) from e
    return parse_checkpoint_response(resp, what)


def server_version(cluster: Cluster) -> str:
    """The API server's Kubernetes version as ``MAJOR.MINOR`` (its ``/version``)."""
    from kubernetes import client

    resp: Any = call(cluster, "read the server version", client.VersionApi(cluster.api).get_code,
                     _preload_content=False)
    return version_of(json.loads(resp.data))


def version_of(info: dict[str, Any]) -> str:
    """``MAJOR.MINOR`` of a ``/version`` document."""
    # Managed clusters report minor "30+"; gitVersion ("v1.30.4-gke.1") is the fallback.
    major, minor = (str(info.get(k, "")).rstrip("+") for k in ("major", "minor"))
    if not (major.isdigit() and minor.isdigit()):
        major, _, rest = str(info.get("gitVersion", "")).lstrip("v").partition(".")
        minor = rest.split(".")[0]
    return f"{major}.{minor}"
