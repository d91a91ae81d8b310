"""Workloads: a pod's controller, and the Jobs and Secrets of builds on a node."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from migrate.adapters.kube.client import Cluster, T, create_once, delete_object, request_json
from migrate.adapters.kube.watches import watch_object
from migrate.errors import ClusterError

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


_JOBS = "/apis/batch/v1/namespaces/{namespace}/jobs"


def create_job(cluster: Cluster, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
    """Create a Job (not retried: see create_pod)."""
    return create_once(cluster, f"create job in {namespace}", _JOBS, namespace, body)


def delete_job(cluster: Cluster, namespace: str, name: str) -> bool:
    """Delete a Job and its pods; False if it was already gone."""
    return delete_object(cluster, f"delete job {namespace}/{name}", _JOBS + "/{name}",
                   {"namespace": namespace, "name": name},
                   {"apiVersion": "v1", "kind": "DeleteOptions",
                    "propagationPolicy": "Background"})


def watch_job(cluster: Cluster, namespace: str, name: str,
              until: Callable[[dict[str, Any] | None], T | None], timeout: float) -> T:
    """Watch one Job until ``until(job)`` returns something (None: the Job is gone)."""
    return watch_object(cluster, _JOBS, f"job {namespace}/{name}", namespace, name, until, timeout)


_SECRETS = "/api/v1/namespaces/{namespace}/secrets"


def create_secret(cluster: Cluster, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
    """Create a Secret; the error never quotes its data."""
    created = create_once(cluster, f"create secret in {namespace}", _SECRETS, namespace, body)
    created.pop("data", None)  # nothing downstream needs it back in memory
    return created


def delete_secret(cluster: Cluster, namespace: str, name: str) -> bool:
    """Delete a Secret; False if it was already gone."""
    return delete_object(cluster, f"delete secret {namespace}/{name}", _SECRETS + "/{name}",
                   {"namespace": namespace, "name": name},
                   {"apiVersion": "v1", "kind": "DeleteOptions"})
