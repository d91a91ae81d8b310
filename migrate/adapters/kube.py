"""The Kubernetes adapter: the official client, its errors translated into ours.

Only this module imports ``kubernetes``. Every API call goes through `call`,
which maps an ``ApiException`` to the error tree using the API server's own
``Status`` message, marks connection errors, 5xx and 429 as transient for the
named retry policy, and never lets the client's exceptions (or a bearer token
in them) reach the user.

Requests are built with the client's ``ApiClient`` (its configuration, auth
and connection pool) but not through the generated API classes: importing
``CoreV1Api`` alone costs ~0.75 s (hundreds of pydantic-validated methods
built at import), each method's first call builds its validator, and
watches through ``watch.Watch`` deserialize every event into models. The
pipeline works with the API's JSON (manifest field names) anyway.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
from collections.abc import Callable, Generator
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
from migrate.settings import KubeSettings, RetrySettings

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class Cluster:
    """A connected API client and the namespace to default to."""

    api: Any  # kubernetes.client.ApiClient
    namespace: str
    settings: KubeSettings
    requests: int = 0  # API requests sent (retries and watches included): the report's count


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


def call(cluster: Cluster, what: str, fn: Callable[..., T], *args: Any,
         _retry: RetrySettings | None = None, **kw: Any) -> T:
    """Run one API call with the named retry policy; errors come out as ours."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    kw.setdefault("_request_timeout", cluster.settings.request_timeout)
    for attempt in cluster_policy(_retry or cluster.settings.retry):
        with attempt:
            cluster.requests += 1
            try:
                return fn(*args, **kw)
            except (ApiException, HTTPError, OSError) as e:
                raise translate(e, what) from e
    raise AssertionError("unreachable")  # pragma: no cover


def send(cluster: Cluster, method: str, path: str, *,
         path_params: dict[str, str] | None = None,
         query: list[tuple[str, str]] | None = None, body: Any = None,
         content_type: str = "application/json", request_timeout: float | None = None,
         accept: str = "application/json") -> Any:
    """One HTTP request through the client's pool; returns its ``RESTResponse``, body
    unread. Any status but 2xx is an ``ApiException`` (for `call` to translate)."""
    from kubernetes.client.exceptions import ApiException

    headers = {"Accept": accept}
    if body is not None:
        headers["Content-Type"] = content_type
    request = cluster.api.param_serialize(
        method, path, path_params=path_params, query_params=query or [],
        header_params=headers, body=body, auth_settings=["BearerToken"])
    resp = cluster.api.call_api(*request, _request_timeout=request_timeout)
    if not 200 <= resp.status < 300:
        data = resp.read()
        raise ApiException.from_response(http_resp=resp, body=data.decode(errors="replace"),
                                         data=None)
    return resp


def request_json(cluster: Cluster, what: str, method: str, path: str, *,
                 _retry: RetrySettings | None = None, **kw: Any) -> dict[str, Any]:
    """`send` under `call` (retries, error translation); the answer's JSON."""
    def once(_request_timeout: float) -> bytes:
        data: bytes = send(cluster, method, path, request_timeout=_request_timeout,
                           **kw).read()
        return data

    answer: dict[str, Any] = json.loads(call(cluster, what, once, _retry=_retry))
    return answer


_POD = "/api/v1/namespaces/{namespace}/pods/{name}"
_PODS = "/api/v1/namespaces/{namespace}/pods"


def read_pod(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    """The pod as the API serves it (camelCase field names, as in manifests)."""
    return request_json(cluster, f"read pod {namespace}/{name}", "GET", _POD,
                        path_params={"namespace": namespace, "name": name})


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

        try:
            resp = send(cluster, "POST",
                        "/api/v1/nodes/{node}/proxy/checkpoint/{namespace}/{pod}/{container}",
                        path_params={"node": node, "namespace": namespace, "pod": pod,
                                     "container": container},
                        query=query, request_timeout=_request_timeout)
        except ApiException as e:
            if (e.status or 0) >= 500:
                lines = (e.body or "").strip().splitlines()
                raise runtime_failure(what, lines[0][:300] if lines else f"HTTP {e.status}"
                                      ) from e
            raise  # `call` translates it
        data: bytes = resp.read()
        return data

    # The request lasts as long as the runtime takes to dump the memory.
    request_timeout = max(cluster.settings.request_timeout, (timeout or 0) + 30)
    try:
        resp = call(cluster, what, post, _request_timeout=request_timeout)
    except MigrateError as e:
        raise _checkpoint_error(e) from e
    return parse_checkpoint_response(resp, what)


def server_version(cluster: Cluster) -> dict[str, Any]:
    """``/version``: gitVersion, major, minor, platform."""
    return request_json(cluster, "read the server version", "GET", "/version/")


def list_nodes(cluster: Cluster) -> list[dict[str, Any]]:
    """Every node, as the API serves it."""
    items: list[dict[str, Any]] = request_json(cluster, "list nodes", "GET",
                                               "/api/v1/nodes")["items"]
    return items


def read_node(cluster: Cluster, name: str) -> dict[str, Any]:
    """One node, as the API serves it."""
    return request_json(cluster, f"read node {name}", "GET", "/api/v1/nodes/{name}",
                        path_params={"name": name})


@dataclass(frozen=True)
class Access:
    """What a SelfSubjectAccessReview answered."""

    allowed: bool
    reason: str


def can_i(cluster: Cluster, verb: str, resource: str, *, group: str = "",
          subresource: str = "", namespace: str = "") -> Access:
    """Ask the API server whether the current user may ``verb`` the ``resource``."""
    attributes = {"verb": verb, "resource": resource, "group": group,
                  **({"subresource": subresource} if subresource else {}),
                  **({"namespace": namespace} if namespace else {})}
    body = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
            "spec": {"resourceAttributes": attributes}}
    what = f"review access to {verb} {resource}{'/' + subresource if subresource else ''}"
    status = request_json(cluster, what, "POST",
                          "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
                          body=body).get("status") or {}
    return Access(bool(status.get("allowed")), str(status.get("reason") or ""))


# -- pods, owners and events: what a migration does --------------------------------------


def create_pod(cluster: Cluster, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
    """Create a pod; returns it as the API stored it."""
    name = body.get("metadata", {}).get("name") or body.get("metadata", {}).get("generateName")
    # Not retried: a create whose answer was lost may have happened; the caller's
    # journal and the name (or generateName) sort that out, not a blind second POST.
    return request_json(cluster, f"create pod {namespace}/{name}", "POST", _PODS,
                        path_params={"namespace": namespace}, body=body,
                        _retry=dataclasses.replace(cluster.settings.retry, attempts=1))


def delete_pod(cluster: Cluster, namespace: str, name: str, *, uid: str | None = None,
               grace_seconds: int | None = None) -> bool:
    """Delete a pod (only the one with ``uid``, when given); False if it was already gone."""
    body: dict[str, Any] = {"apiVersion": "v1", "kind": "DeleteOptions"}
    if uid:
        body["preconditions"] = {"uid": uid}
    if grace_seconds is not None:
        body["gracePeriodSeconds"] = grace_seconds
    try:
        request_json(cluster, f"delete pod {namespace}/{name}", "DELETE", _POD,
                     path_params={"namespace": namespace, "name": name}, body=body)
    except NotFoundError:
        return False
    return True


def patch_pod(cluster: Cluster, namespace: str, name: str,
              patch: dict[str, Any]) -> dict[str, Any]:
    """Strategic-merge-patch a pod (``None`` values remove keys)."""
    return request_json(cluster, f"patch pod {namespace}/{name}", "PATCH", _POD,
                        path_params={"namespace": namespace, "name": name}, body=patch,
                        content_type="application/strategic-merge-patch+json")


def _selectors(label_selector: str, field_selector: str) -> list[tuple[str, str]]:
    return [(k, v) for k, v in (("labelSelector", label_selector),
                                ("fieldSelector", field_selector)) if v]


def list_pods(cluster: Cluster, namespace: str | None, *, label_selector: str = "",
              field_selector: str = "") -> list[dict[str, Any]]:
    """Pods in ``namespace`` (None: every namespace) matching the selectors."""
    query = _selectors(label_selector, field_selector)
    if namespace is None:
        listing = request_json(cluster, "list pods", "GET", "/api/v1/pods", query=query)
    else:
        listing = request_json(cluster, f"list pods in {namespace}", "GET", _PODS,
                               path_params={"namespace": namespace}, query=query)
    items: list[dict[str, Any]] = listing["items"]
    return items


#: apps/v1 owners a pod can have, by kind: their resource names.
_APPS_OWNERS = {"ReplicaSet": "replicasets", "Deployment": "deployments",
                "StatefulSet": "statefulsets", "DaemonSet": "daemonsets"}


def read_owner(cluster: Cluster, namespace: str, kind: str, name: str) -> dict[str, Any]:
    """A pod's controller (ReplicaSet, Deployment, ...), as the API serves it."""
    if kind not in _APPS_OWNERS:
        raise ClusterError(f"cannot read owner {kind} {namespace}/{name}",
                           hint="only apps/v1 owners are followed")
    return request_json(cluster, f"read {kind} {namespace}/{name}", "GET",
                        "/apis/apps/v1/namespaces/{namespace}/{resource}/{name}",
                        path_params={"namespace": namespace, "resource": _APPS_OWNERS[kind],
                                     "name": name})


def watch_pod(cluster: Cluster, namespace: str, name: str,
              until: Callable[[dict[str, Any] | None], T | None], timeout: float) -> T:
    """Watch one pod until ``until(pod)`` returns something (None: the pod is gone).

    A watch, not a polling loop: one list for the starting resourceVersion,
    then events; an expired resourceVersion (410) or a dropped connection
    starts over from a fresh list. `ClusterError` after ``timeout`` seconds.
    """
    import time

    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    selector = [("fieldSelector", f"metadata.name={name}")]
    where = {"namespace": namespace}
    deadline = time.monotonic() + timeout
    while True:
        listing = request_json(cluster, f"list pod {namespace}/{name}", "GET", _PODS,
                               path_params=where, query=selector)
        pods = listing.get("items") or []
        found = until(pods[0] if pods else None)
        if found is not None:
            return found
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        cluster.requests += 1
        query = [*selector, ("resourceVersion", listing["metadata"]["resourceVersion"]),
                 ("timeoutSeconds", str(max(1, int(remaining)))), ("watch", "true")]
        try:
            resp = send(cluster, "GET", _PODS, path_params=where, query=query,
                        request_timeout=remaining + 5)
            with contextlib.closing(_events(resp)) as events:
                for event in events:
                    if event.get("type") == "ERROR":
                        break  # 410 Gone and friends: list again
                    found = until(None if event["type"] == "DELETED" else event["object"])
                    if found is not None:
                        return found
                    if time.monotonic() > deadline:
                        break
        except (ApiException, HTTPError, OSError) as e:
            err = translate(e, f"watch pod {namespace}/{name}")
            if not isinstance(err, TransientClusterError):
                raise err from e
        if time.monotonic() > deadline:
            break
    raise ClusterError(f"pod {namespace}/{name}: timed out after {timeout:g} s",
                       hint="raise --timeout, or look at the pod's events "
                       "(kubectl describe pod)")


def _events(resp: Any) -> Generator[dict[str, Any], None, None]:
    """The watch events of a streamed response, one JSON object per line. A line
    that is not JSON (cut short by a dropped connection) ends the stream, as the
    drop would. The connection is closed at the end: a watch cut short cannot be
    reused."""
    raw = resp.response  # urllib3's, unread
    pending = b""
    try:
        for chunk in raw.stream(amt=None, decode_content=False):
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                if line.strip():
                    try:
                        event: dict[str, Any] = json.loads(line)
                    except ValueError:
                        return
                    yield event
    finally:
        raw.close()
        raw.release_conn()


def create_event(cluster: Cluster, pod: dict[str, Any], reason: str, message: str,
                 *, warning: bool = False) -> None:
    """Record a core/v1 Event on ``pod``; failing to is logged, never fatal."""
    meta = pod["metadata"]
    now = _rfc3339()
    body = {
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
        "involvedObject": {"apiVersion": "v1", "kind": "Pod", "name": meta["name"],
                           "namespace": meta["namespace"], "uid": meta.get("uid", "")},
        "reason": reason, "message": message[:1024], "type": "Warning" if warning else "Normal",
        "source": {"component": "migrate"}, "reportingComponent": "migrate",
        "reportingInstance": os.uname().nodename, "firstTimestamp": now, "lastTimestamp": now,
        "count": 1,
    }
    try:
        request_json(cluster, f"record event {reason}", "POST",
                     "/api/v1/namespaces/{namespace}/events",
                     path_params={"namespace": meta["namespace"]}, body=body)
    except MigrateError as e:
        log.warning("could not record event %s on pod %s: %s", reason, meta["name"], e.message)


def _rfc3339() -> str:
    from datetime import UTC, datetime

    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def server_minor_version(cluster: Cluster) -> str:
    """The API server's Kubernetes version as ``MAJOR.MINOR`` (its ``/version``)."""
    return version_of(server_version(cluster))


def version_of(info: dict[str, Any]) -> str:
    """``MAJOR.MINOR`` of a ``/version`` document."""
    # Managed clusters report minor "30+"; gitVersion ("v1.30.4-gke.1") is the fallback.
    major, minor = (str(info.get(k, "")).rstrip("+") for k in ("major", "minor"))
    if not (major.isdigit() and minor.isdigit()):
        major, _, rest = str(info.get("gitVersion", "")).lstrip("v").partition(".")
        minor = rest.split(".")[0]
    return f"{major}.{minor}"
