"""The API client: connecting (kubeconfig, in-cluster), sending requests, and the
client's errors translated into ours.

Every request goes through `request_json` (or, for streams, `send` under the
same error translation): `call` runs it under the named retry policy and maps
an ``ApiException`` to the error tree using the API server's own ``Status``
message, marks connection errors, 5xx and 429 as transient, and never lets the
client's exceptions (or a bearer token in them) reach the user.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from migrate.adapters.background import BackgroundSender
from migrate.errors import (
    AlreadyExistsError,
    AuthError,
    ClusterError,
    ConflictError,
    InputError,
    InvalidError,
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


def status_field(body: str | bytes | None, key: str) -> str:
    """One string field of the API server's Status body ("" when it is not one)."""
    try:
        status = json.loads(body or "")
    except (ValueError, TypeError):
        return ""
    return str(status.get(key, "")) if isinstance(status, dict) else ""


def status_message(body: str | bytes | None) -> str:
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
        detail = status_message(e.body) or (e.reason or "")
        msg = f"{what}: {detail}" if detail else f"{what} failed: HTTP {e.status}"
        if e.status == 404:
            return NotFoundError(msg, hint="check the name and the namespace (-n)")
        if e.status == 401:
            return AuthError(msg, hint="the cluster rejected the credentials; check the "
                             "kubeconfig (an expired token?)")
        if e.status == 403:
            return AuthError(msg, hint="ask for the RBAC this needs; `migrate doctor` "
                             "lists what is missing")
        if e.status == 409 and status_field(e.body, "reason") == "Conflict":
            # Not AlreadyExists: a precondition (resourceVersion, uid) no longer holds.
            return ConflictError(msg, hint="someone else changed it at the same time; "
                                 "read it again")
        if e.status == 409 and status_field(e.body, "reason") == "AlreadyExists":
            return AlreadyExistsError(msg, hint="an object of that name exists already")
        if e.status in (400, 422):
            return InvalidError(msg, hint="the API server refused the request")
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


def create_once(cluster: Cluster, what: str, collection: str, namespace: str,
                 body: dict[str, Any]) -> dict[str, Any]:
    """POST ``body`` once: a create whose answer was lost may have happened (see create_pod)."""
    return request_json(cluster, what, "POST", collection, path_params={"namespace": namespace},
                        body=body, _retry=dataclasses.replace(cluster.settings.retry,
                                                               attempts=1))


def delete_object(cluster: Cluster, what: str, path: str, params: dict[str, str],
            body: dict[str, Any]) -> bool:
    """DELETE one object; False if it was already gone."""
    return deletion(cluster, what, path, params, body) is not None


def deletion(cluster: Cluster, what: str, path: str, params: dict[str, str],
             body: dict[str, Any]) -> dict[str, Any] | None:
    """DELETE one object; the answer (the object as it terminates, or a Status when it
    went at once), or None if it was already gone."""
    try:
        return request_json(cluster, what, "DELETE", path, path_params=params, body=body)
    except NotFoundError:
        return None
