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

from migrate.adapters.background import BackgroundSender
from migrate.adapters.kubelet import parse_checkpoint_response, runtime_failure
from migrate.errors import (
    AuthError,
    ClusterError,
    ConflictError,
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
    # Where Events go: None sends them inline; copies of a Cluster share it.
    events: BackgroundSender | None = None
    # What does not change while a command runs (the server's /version), shared by
    # copies: a drain's workers would otherwise each ask for every pod they render.
    memo: dict[str, Any] = dataclasses.field(default_factory=dict)


def connect(settings: KubeSettings, *, pool_size: int | None = None,
            background_events: bool = False) -> Cluster:
    """Load kubeconfig (or the in-cluster service account) and build a client.

    ``pool_size``: connections kept open for reuse (the client's default is five
    per CPU); callers running requests on many threads at once raise it.
    ``background_events``: Events are sent off the caller's path; the caller
    must `close` the cluster before it reports.
    """
    import yaml
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    configuration = client.Configuration()
    namespace = settings.namespace
    in_cluster = settings.kubeconfig is None and _in_cluster(settings.serviceaccount_dir)
    try:
        if in_cluster:
            _load_in_cluster(settings.serviceaccount_dir, configuration)
            namespace = namespace or _in_cluster_namespace(settings.serviceaccount_dir)
        else:
            # Several files: the client merges them as kubectl does.
            kc = os.pathsep.join(map(str, _kubeconfig_files(settings)))
            contexts, active = config.list_kube_config_contexts(config_file=kc)
            chosen = active
            if settings.context:
                chosen = next((c for c in contexts if c["name"] == settings.context), None)
                if chosen is None:
                    raise _unknown_context(settings, [str(c["name"]) for c in contexts])
            config.load_kube_config(config_file=kc, context=settings.context,
                                    client_configuration=configuration)
            namespace = namespace or (chosen or {}).get("context", {}).get("namespace")
    except (ConfigException, OSError, yaml.YAMLError, TypeError, AttributeError) as e:
        # The client's own words name its internals ("Invalid kube-config file. Expected
        # object with name ..."): say which file, and the first line of why.
        where = "the in-cluster service account" if in_cluster else (
            f"kubeconfig {', '.join(map(str, _kubeconfig_files(settings)))}")
        why = (str(e).strip().splitlines() or [type(e).__name__])[0]
        why = why.removeprefix("Invalid kube-config file. ")
        raise InputError(f"{where} is not usable: {why}",
                         hint="check the file (kubectl config view), or pass another with "
                         "--kubeconfig FILE") from e
    configuration.retries = False  # retries are ours, transient failures only
    if pool_size is not None:
        configuration.connection_pool_maxsize = max(pool_size,
                                                    configuration.connection_pool_maxsize)
    return Cluster(client.ApiClient(configuration), namespace or "default", settings,
                   events=BackgroundSender() if background_events else None)


#: How long `close` waits for queued Events.
EVENTS_FLUSH_SECONDS = 10.0


def close(cluster: Cluster, timeout: float = EVENTS_FLUSH_SECONDS) -> None:
    """Send what is queued (Events), waiting at most ``timeout`` seconds."""
    if cluster.events is None:
        return
    left = cluster.events.flush(timeout)
    if left:
        log.warning("%d event(s) not recorded after %g s: the API server is slow or "
                    "unreachable", left, timeout)


def _kubeconfig_files(settings: KubeSettings) -> list[Path]:
    """The kubeconfig files the client reads: --kubeconfig, else $KUBECONFIG (a list),
    else ~/.kube/config. A missing one is refused in our words, with the exit code for
    things not found, rather than the client's "No configuration found"."""
    if settings.kubeconfig is not None:
        if not settings.kubeconfig.is_file():
            raise NotFoundError(f"kubeconfig {settings.kubeconfig} does not exist",
                                hint="give the path of a kubeconfig file with --kubeconfig "
                                "FILE (or set KUBECONFIG)")
        return [settings.kubeconfig]
    listed = [Path(os.path.expanduser(p)) for p in
              settings.default_kubeconfig.split(os.pathsep) if p]
    found = [p for p in listed if p.is_file()]
    if not found:
        shown = ", ".join(map(str, listed)) or "no file"
        raise NotFoundError(f"no kubeconfig: {shown} does not exist, and this is not a pod "
                            "with a service account",
                            hint="pass --kubeconfig FILE (and --context NAME), set KUBECONFIG, "
                            "or run in a pod with a service account")
    return found


def _unknown_context(settings: KubeSettings, known: list[str]) -> NotFoundError:
    import difflib

    files = ", ".join(map(str, _kubeconfig_files(settings)))
    close = difflib.get_close_matches(settings.context or "", known, n=2, cutoff=0.6)
    listed = ", ".join(sorted(known)) or "none"
    return NotFoundError(f"context {settings.context} is not in kubeconfig {files}",
                         hint=(f"did you mean {' or '.join(close)}? " if close else "")
                         + f"its contexts: {listed} (kubectl config get-contexts)")


def _in_cluster(directory: Path) -> bool:
    return "KUBERNETES_SERVICE_HOST" in os.environ and (directory / "token").is_file()


def _load_in_cluster(directory: Path, configuration: Any) -> None:
    """The client's in-cluster loader, reading the token and CA from ``directory``."""
    from kubernetes.config.incluster_config import InClusterConfigLoader

    InClusterConfigLoader(token_filename=str(directory / "token"),
                          cert_filename=str(directory / "ca.crt")).load_and_set(configuration)


def _in_cluster_namespace(directory: Path) -> str | None:
    path = directory / "namespace"
    return path.read_text().strip() if path.is_file() else None


def _status_field(body: str | bytes | None, key: str) -> str:
    """One string field of the API server's Status body ("" when it is not one)."""
    try:
        status = json.loads(body or "")
    except (ValueError, TypeError):
        return ""
    return str(status.get(key, "")) if isinstance(status, dict) else ""


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
        if e.status == 409 and _status_field(e.body, "reason") == "Conflict":
            # Not AlreadyExists: a precondition (resourceVersion, uid) no longer holds.
            return ConflictError(msg, hint="someone else changed it at the same time; "
                                 "read it again")
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


def _raw(resp: Any) -> dict[str, Any]:
    """The JSON body of a generated API method called with ``_preload_content=False``."""
    data: dict[str, Any] = json.loads(resp.data)
    return data


_POD = "/api/v1/namespaces/{namespace}/pods/{name}"
_PODS = "/api/v1/namespaces/{namespace}/pods"
_JOBS = "/apis/batch/v1/namespaces/{namespace}/jobs"
_SECRETS = "/api/v1/namespaces/{namespace}/secrets"


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


def list_namespaces(cluster: Cluster) -> list[dict[str, Any]]:
    """Every namespace (shell completion of -n)."""
    items: list[dict[str, Any]] = request_json(cluster, "list namespaces", "GET",
                                               "/api/v1/namespaces")["items"]
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
    return _create_once(cluster, f"create pod {namespace}/{name}", _PODS, namespace, body)


def delete_pod(cluster: Cluster, namespace: str, name: str, *, uid: str | None = None,
               grace_seconds: int | None = None) -> bool:
    """Delete a pod (only the one with ``uid``, when given); False if it was already gone."""
    body: dict[str, Any] = {"apiVersion": "v1", "kind": "DeleteOptions"}
    if uid:
        body["preconditions"] = {"uid": uid}
    if grace_seconds is not None:
        body["gracePeriodSeconds"] = grace_seconds
    return _delete(cluster, f"delete pod {namespace}/{name}", _POD,
                   {"namespace": namespace, "name": name}, body)


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
              until: Callable[[dict[str, Any] | None], T | None], timeout: float,
              *, since: str | None = None) -> T:
    """Watch one pod until ``until(pod)`` returns something (None: the pod is gone).

    ``since``: the resourceVersion a write of this pod answered (its create): the
    watch starts there, without a list, since every later change is an event.
    """
    return _watch(cluster, _PODS, f"pod {namespace}/{name}", namespace, name, until, timeout,
                  since)


def watch_job(cluster: Cluster, namespace: str, name: str,
              until: Callable[[dict[str, Any] | None], T | None], timeout: float) -> T:
    """Watch one Job until ``until(job)`` returns something (None: the Job is gone)."""
    return _watch(cluster, _JOBS, f"job {namespace}/{name}", namespace, name, until, timeout)


def _watch(cluster: Cluster, collection: str, what: str, namespace: str, name: str,
           until: Callable[[dict[str, Any] | None], T | None], timeout: float,
           since: str | None = None) -> T:
    """Watch one object of ``collection`` until ``until(obj)`` returns something.

    A watch, not a polling loop: one list for the starting resourceVersion
    (or ``since``, when the caller knows one), then events; an expired
    resourceVersion (410) or a dropped connection starts over from a fresh
    list. `ClusterError` after ``timeout`` seconds.
    """
    import time

    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    selector = [("fieldSelector", f"metadata.name={name}")]
    where = {"namespace": namespace}
    deadline = time.monotonic() + timeout
    while True:
        if since is None:
            listing = request_json(cluster, f"list {what}", "GET", collection,
                                   path_params=where, query=selector)
            items = listing.get("items") or []
            found = until(items[0] if items else None)
            if found is not None:
                return found
            since = str(listing["metadata"]["resourceVersion"])
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        cluster.requests += 1
        query = [*selector, ("resourceVersion", since),
                 ("timeoutSeconds", str(max(1, int(remaining)))), ("watch", "true")]
        try:
            resp = send(cluster, "GET", collection, path_params=where, query=query,
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
            err = translate(e, f"watch {what}")
            expired = isinstance(e, ApiException) and e.status == 410
            if not (expired or isinstance(err, TransientClusterError)):
                raise err from e
        since = None  # the stream ended: the next round lists again
        if time.monotonic() > deadline:
            break
    raise ClusterError(f"{what}: timed out after {timeout:g} s",
                       hint="raise --timeout, or look at its events (kubectl describe)")


class EventWatch:
    """The Events about one object, as the API server records them, on a thread of its own.

    ``on_event(event)`` hears each Event (ADDED or MODIFIED: a repeat raises its
    count), those recorded before the watch began first; ``on_idle()`` is called
    after each ``idle_seconds`` without one. It is a courtesy (progress for a human):
    errors end it silently. `stop` ends it at once, whatever it is waiting for.
    Requests go through a copy of the cluster; `requests` counts them.
    """

    def __init__(self, cluster: Cluster, namespace: str, uid: str,
                 on_event: Callable[[dict[str, Any]], None], on_idle: Callable[[], None],
                 idle_seconds: float = 15.0) -> None:
        import threading

        self._cluster = dataclasses.replace(cluster, requests=0)
        self._where = {"namespace": namespace}
        self._selector = [("fieldSelector", f"involvedObject.uid={uid}")]
        self._on_event, self._on_idle, self._idle = on_event, on_idle, idle_seconds
        self._stopped = threading.Event()
        self._current: Any = None  # the streaming response being read
        self._thread = threading.Thread(target=self._run, name="events", daemon=True)

    @property
    def requests(self) -> int:
        """API requests this watch sent."""
        return self._cluster.requests

    def start(self) -> EventWatch:
        """Begin watching; returns self."""
        self._thread.start()
        return self

    def stop(self, catch_up: bool = True) -> None:
        """Stop the thread now; ``catch_up``: first report, on the caller's thread, the
        Events recorded that its watch has not delivered yet (the two streams race: the
        pod can be seen ready before its "Started" arrives). Nothing is reported after
        this returns."""
        self._stopped.set()
        current = self._current
        if current is not None:
            with contextlib.suppress(Exception):
                current.response.shutdown()  # unblocks the read on the other thread
        if catch_up:
            once = dataclasses.replace(self._cluster.settings.retry, attempts=1)
            with contextlib.suppress(Exception):
                self._list(once, final=True)

    def _run(self) -> None:
        since: str | None = None
        once = dataclasses.replace(self._cluster.settings.retry, attempts=1)
        while not self._stopped.is_set():
            try:
                if since is None:
                    since = self._list(once)
                since = self._watch(since)
            except Exception:  # a courtesy: whatever went wrong, stop reporting
                return

    def _list(self, retry: RetrySettings, final: bool = False) -> str:
        listing = request_json(self._cluster, "list events", "GET", _EVENTS,
                               path_params=self._where, query=self._selector, _retry=retry)
        items = sorted(listing.get("items") or [],
                       key=lambda e: str(e.get("lastTimestamp") or e.get("eventTime") or ""))
        for event in items:
            if final:
                self._on_event(event)
            else:
                self._report(event)
        return str(listing["metadata"]["resourceVersion"])

    def _watch(self, since: str) -> str | None:
        self._cluster.requests += 1
        query = [*self._selector, ("resourceVersion", since),
                 ("timeoutSeconds", str(max(1, int(self._idle)))), ("watch", "true")]
        self._current = send(self._cluster, "GET", _EVENTS, path_params=self._where,
                             query=query, request_timeout=self._idle + 5)
        quiet = True
        with contextlib.closing(_events(self._current)) as events:
            for event in events:
                if event.get("type") == "ERROR":
                    return None  # expired: list again
                obj = event.get("object") or {}
                since = str((obj.get("metadata") or {}).get("resourceVersion") or since)
                if event.get("type") in ("ADDED", "MODIFIED"):
                    quiet = False
                    self._report(obj)
        if quiet and not self._stopped.is_set():
            self._on_idle()
        return since

    def _report(self, event: dict[str, Any]) -> None:
        if not self._stopped.is_set():
            self._on_event(event)


_EVENTS = "/api/v1/namespaces/{namespace}/events"


def watch_events(cluster: Cluster, namespace: str, uid: str,
                 on_event: Callable[[dict[str, Any]], None], on_idle: Callable[[], None],
                 idle_seconds: float = 15.0) -> EventWatch:
    """Start an `EventWatch` on the object ``uid`` in ``namespace``; `EventWatch.stop` it."""
    return EventWatch(cluster, namespace, uid, on_event, on_idle, idle_seconds).start()


def _create_once(cluster: Cluster, what: str, collection: str, namespace: str,
                 body: dict[str, Any]) -> dict[str, Any]:
    """POST ``body`` once: a create whose answer was lost may have happened (see create_pod)."""
    return request_json(cluster, what, "POST", collection, path_params={"namespace": namespace},
                        body=body, _retry=dataclasses.replace(cluster.settings.retry,
                                                               attempts=1))


def _delete(cluster: Cluster, what: str, path: str, params: dict[str, str],
            body: dict[str, Any]) -> bool:
    """DELETE one object; False if it was already gone."""
    try:
        request_json(cluster, what, "DELETE", path, path_params=params, body=body)
    except NotFoundError:
        return False
    return True


def create_job(cluster: Cluster, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
    """Create a Job (not retried: see create_pod)."""
    return _create_once(cluster, f"create job in {namespace}", _JOBS, namespace, body)


def delete_job(cluster: Cluster, namespace: str, name: str) -> bool:
    """Delete a Job and its pods; False if it was already gone."""
    return _delete(cluster, f"delete job {namespace}/{name}", _JOBS + "/{name}",
                   {"namespace": namespace, "name": name},
                   {"apiVersion": "v1", "kind": "DeleteOptions",
                    "propagationPolicy": "Background"})


def create_secret(cluster: Cluster, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
    """Create a Secret; the error never quotes its data."""
    created = _create_once(cluster, f"create secret in {namespace}", _SECRETS, namespace, body)
    created.pop("data", None)  # nothing downstream needs it back in memory
    return created


def delete_secret(cluster: Cluster, namespace: str, name: str) -> bool:
    """Delete a Secret; False if it was already gone."""
    return _delete(cluster, f"delete secret {namespace}/{name}", _SECRETS + "/{name}",
                   {"namespace": namespace, "name": name},
                   {"apiVersion": "v1", "kind": "DeleteOptions"})


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


# -- applying the tool's own objects (migrate deploy, migrate schedule) ----------------


def _typed(cluster: Cluster, kind: str) -> tuple[bool, Callable[..., Any], Callable[..., Any],
                                                  Callable[..., Any]]:
    """(namespaced, create, read, replace) of the kinds the tool applies."""
    from kubernetes import client

    core, batch = client.CoreV1Api(cluster.api), client.BatchV1Api(cluster.api)
    rbac = client.RbacAuthorizationV1Api(cluster.api)
    known: dict[str, tuple[bool, Callable[..., Any], Callable[..., Any], Callable[..., Any]]] = {
        "Namespace": (False, core.create_namespace, core.read_namespace,
                      core.replace_namespace),
        "ServiceAccount": (True, core.create_namespaced_service_account,
                           core.read_namespaced_service_account,
                           core.replace_namespaced_service_account),
        "ClusterRole": (False, rbac.create_cluster_role, rbac.read_cluster_role,
                        rbac.replace_cluster_role),
        "ClusterRoleBinding": (False, rbac.create_cluster_role_binding,
                               rbac.read_cluster_role_binding,
                               rbac.replace_cluster_role_binding),
        "CronJob": (True, batch.create_namespaced_cron_job, batch.read_namespaced_cron_job,
                    batch.replace_namespaced_cron_job),
    }
    if kind not in known:
        raise ClusterError(f"cannot apply a {kind}", hint="this is a bug in migrate")
    return known[kind]


def read_object(cluster: Cluster, kind: str, namespace: str, name: str
                ) -> dict[str, Any] | None:
    """One object of a kind `apply_object` knows, or None if there is none."""
    namespaced, _, read, _ = _typed(cluster, kind)
    where = f"{namespace}/{name}" if namespaced else name
    try:
        return _raw(call(cluster, f"read {kind} {where}", read, name,
                         *([namespace] if namespaced else []), _preload_content=False))
    except NotFoundError:
        return None


def _contains(current: Any, wanted: Any) -> bool:
    """Whether ``current`` already says everything ``wanted`` says (server defaults aside)."""
    if isinstance(wanted, dict):
        return isinstance(current, dict) and all(
            k in current and _contains(current[k], v) for k, v in wanted.items())
    if isinstance(wanted, list):
        return isinstance(current, list) and len(current) == len(wanted) and all(
            _contains(c, w) for c, w in zip(current, wanted, strict=True))
    return bool(current == wanted)


def apply_object(cluster: Cluster, obj: dict[str, Any]) -> str:
    """Create ``obj``, or replace the object of that name with it.

    Returns "created", "configured" (replaced) or "unchanged" (it already
    said all of this): running it twice changes nothing. A replace carries
    the current resourceVersion, so a concurrent change is a conflict, not
    overwritten.
    """
    kind, meta = obj["kind"], obj["metadata"]
    namespaced, create, _, replace = _typed(cluster, kind)
    ns = [meta["namespace"]] if namespaced else []
    where = f"{kind} {'/'.join([*ns, meta['name']])}"
    current = read_object(cluster, kind, meta.get("namespace", ""), meta["name"])
    once = dataclasses.replace(cluster.settings.retry, attempts=1)
    if current is None:
        call(cluster, f"create {where}", create, *ns, obj, _retry=once,
             _preload_content=False)
        return "created"
    if _contains(current, obj):
        return "unchanged"
    body = {**obj, "metadata": {**meta,
                                "resourceVersion": current["metadata"]["resourceVersion"]}}
    call(cluster, f"replace {where}", replace, meta["name"], *ns, body, _retry=once,
         _preload_content=False)
    return "configured"


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

    def send(target: Cluster) -> None:
        try:
            request_json(target, f"record event {reason}", "POST",
                         "/api/v1/namespaces/{namespace}/events",
                         path_params={"namespace": meta["namespace"]}, body=body)
        except MigrateError as e:
            log.warning("could not record event %s on pod %s: %s", reason, meta["name"],
                        e.message)

    if cluster.events is None:
        send(cluster)
        return
    # Counted now, for the caller's report; sent on a copy whose counter nobody reads,
    # so that no two threads add to one counter.
    cluster.requests += 1
    cluster.events.submit(lambda: send(dataclasses.replace(cluster, requests=0)))


def _rfc3339() -> str:
    from datetime import UTC, datetime

    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def server_minor_version(cluster: Cluster) -> str:
    """The API server's Kubernetes version as ``MAJOR.MINOR`` (its ``/version``).

    Asked once per connection: an upgrade of the control plane during one command
    would change nothing the answer is used for (which schema a Pod is checked against).
    """
    if "minor_version" not in cluster.memo:
        cluster.memo["minor_version"] = version_of(server_version(cluster))
    return str(cluster.memo["minor_version"])


def version_of(info: dict[str, Any]) -> str:
    """``MAJOR.MINOR`` of a ``/version`` document."""
    # Managed clusters report minor "30+"; gitVersion ("v1.30.4-gke.1") is the fallback.
    major, minor = (str(info.get(k, "")).rstrip("+") for k in ("major", "minor"))
    if not (major.isdigit() and minor.isdigit()):
        major, _, rest = str(info.get("gitVersion", "")).lstrip("v").partition(".")
        minor = rest.split(".")[0]
    return f"{major}.{minor}"


# -- nodes, evictions and disruption budgets: what a drain does --------------------------


def patch_node(cluster: Cluster, name: str, patch: dict[str, Any]) -> dict[str, Any]:
    """Strategic-merge-patch a node (cordon: ``{"spec": {"unschedulable": True}}``)."""
    from kubernetes import client

    core = client.CoreV1Api(cluster.api)
    return _raw(call(cluster, f"patch node {name}", core.patch_node, name, patch,
                     _preload_content=False))


def list_nodes_matching(cluster: Cluster, label_selector: str) -> list[dict[str, Any]]:
    """Nodes whose labels match ``label_selector`` (the API server parses it)."""
    from kubernetes import client

    core = client.CoreV1Api(cluster.api)
    items: list[dict[str, Any]] = _raw(call(
        cluster, f"list nodes matching {label_selector!r}", core.list_node,
        label_selector=label_selector, _preload_content=False))["items"]
    return items


def list_pdbs(cluster: Cluster, namespace: str | None) -> list[dict[str, Any]]:
    """PodDisruptionBudgets (policy/v1) in ``namespace`` (None: every namespace)."""
    from kubernetes import client

    policy = client.PolicyV1Api(cluster.api)
    if namespace is None:
        resp = call(cluster, "list pod disruption budgets",
                    policy.list_pod_disruption_budget_for_all_namespaces,
                    _preload_content=False)
    else:
        resp = call(cluster, f"list pod disruption budgets in {namespace}",
                    policy.list_namespaced_pod_disruption_budget, namespace,
                    _preload_content=False)
    items: list[dict[str, Any]] = _raw(resp)["items"]
    return items


EVICTED, GONE, REFUSED = "evicted", "gone", "refused"


@dataclass(frozen=True)
class Eviction:
    """What the eviction subresource answered."""

    outcome: str  # EVICTED | GONE (no such pod, or another pod by that name) | REFUSED
    message: str = ""  # why REFUSED: the budget's own words
    retry_after: float | None = None  # seconds the server asked us to wait, if it did


def _refusal(e: Any) -> Eviction:
    """A 429 as an `Eviction`: the Status message and the budget's cause, if given."""
    message = _status_message(e.body) or "too many requests"
    wait = retry_after((e.headers or {}).get("Retry-After"))
    try:
        details = json.loads(e.body).get("details") or {}
    except (ValueError, TypeError, AttributeError):
        details = {}
    causes = [c.get("message") for c in details.get("causes") or [] if c.get("message")]
    if causes:
        message = f"{message} ({'; '.join(causes)})"
    if wait is None and isinstance(details.get("retryAfterSeconds"), int):
        wait = float(details["retryAfterSeconds"])
    return Eviction(REFUSED, message, wait)


def evict_pod(cluster: Cluster, namespace: str, name: str, *,
              uid: str | None = None) -> Eviction:
    """Ask the API server to evict a pod (policy/v1 Eviction: disruption budgets apply).

    A 429 is not a failure but the budget (or the server) saying "not now": it
    comes back as REFUSED, never raised nor retried here, so that the caller
    waits as kubectl drain does. With ``uid``, only that pod is evicted; a pod
    already gone, or replaced by another of the same name, is GONE.
    """
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    core = client.CoreV1Api(cluster.api)
    body: Any = {"apiVersion": "policy/v1", "kind": "Eviction",
                            "metadata": {"name": name, "namespace": namespace}}
    if uid:
        body["deleteOptions"] = {"preconditions": {"uid": uid}}

    def post(**kw: Any) -> Eviction:
        try:
            core.create_namespaced_pod_eviction(name, namespace, body, _preload_content=False,
                                                **kw)
        except ApiException as e:
            if e.status == 429:
                return _refusal(e)
            if e.status == 409 and uid:  # the uid precondition: another pod took the name
                return Eviction(GONE, _status_message(e.body))
            raise
        return Eviction(EVICTED)

    try:
        return call(cluster, f"evict pod {namespace}/{name}", post)
    except NotFoundError:
        return Eviction(GONE)
