"""The Kubernetes adapter's error translation and retries (no server needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import MaxRetryError, NewConnectionError

from migrate.adapters.kube import Cluster, call, connect, translate
from migrate.errors import (
    AuthError,
    ClusterError,
    ExitCode,
    InputError,
    InvalidError,
    NotFoundError,
    TransientClusterError,
)
from migrate.settings import KubeSettings, RetrySettings


def api_error(status: int, message: str = "", headers: dict[str, str] | None = None
              ) -> ApiException:
    e = ApiException(status=status, reason="Reason")
    e.body = json.dumps({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                         "message": message, "code": status})
    e.headers = headers
    return e


@pytest.mark.parametrize(("status", "cls", "code"), [
    (404, NotFoundError, ExitCode.NOT_FOUND),
    (401, AuthError, ExitCode.AUTH),
    (403, AuthError, ExitCode.AUTH),
    (409, ClusterError, ExitCode.CLUSTER),
    (422, InvalidError, ExitCode.CLUSTER),
    (500, TransientClusterError, ExitCode.CLUSTER),
    (503, TransientClusterError, ExitCode.CLUSTER),
    (429, TransientClusterError, ExitCode.CLUSTER),
])
def test_status_codes_map_to_the_error_tree(status: int, cls: type, code: int) -> None:
    err = translate(api_error(status, 'pods "web" is forbidden'), "read pod prod/web")
    assert type(err) is cls
    assert err.exit_code == code
    assert err.message == 'read pod prod/web: pods "web" is forbidden'
    assert err.hint


def test_not_transient_unless_retrying_can_help() -> None:
    assert not isinstance(translate(api_error(409), "x"), TransientClusterError)
    assert not isinstance(translate(api_error(422), "x"), TransientClusterError)


def test_retry_after_is_carried() -> None:
    err = translate(api_error(429, "slow down", {"Retry-After": "3"}), "list pods")
    assert isinstance(err, TransientClusterError) and err.retry_after == 3.0


def test_non_status_body_and_no_body() -> None:
    e = ApiException(status=500, reason="Internal Server Error")
    e.body = "checkpointing not supported by the runtime\nmore"
    assert translate(e, "checkpoint").message == (
        "checkpoint: checkpointing not supported by the runtime")
    assert translate(ApiException(status=502, reason=None), "x").message == "x failed: HTTP 502"


def test_connection_errors_are_transient() -> None:
    cause = MaxRetryError(None, "/api", NewConnectionError(None, "refused"))  # type: ignore[arg-type]
    err = translate(cause, "list nodes")
    assert isinstance(err, TransientClusterError)
    assert err.message == "list nodes: cannot reach the API server (MaxRetryError)"


def _cluster(attempts: int) -> Cluster:
    settings = KubeSettings(retry=RetrySettings(attempts=attempts, initial_wait=0, max_wait=0))
    return Cluster(api=None, namespace="default", settings=settings)


def test_call_retries_transient_failures_only() -> None:
    calls: list[dict[str, object]] = []

    def flaky(**kw: object) -> str:
        calls.append(kw)
        if len(calls) < 3:
            raise api_error(503, "etcd leader changed")
        return "ok"

    assert call(_cluster(5), "list pods", flaky) == "ok"
    assert len(calls) == 3
    assert calls[0]["_request_timeout"] == 30.0

    calls.clear()

    def missing(**kw: object) -> str:
        calls.append(kw)
        raise api_error(404, 'pods "x" not found')

    with pytest.raises(NotFoundError, match='read pod: pods "x" not found'):
        call(_cluster(5), "read pod", missing)
    assert len(calls) == 1


def test_call_gives_up_after_the_attempts() -> None:
    calls: list[int] = []

    def down(**kw: object) -> None:
        calls.append(1)
        raise api_error(500, "boom")

    with pytest.raises(TransientClusterError):
        call(_cluster(3), "x", down)
    assert len(calls) == 3


def test_connect_errors_name_the_kubeconfig(tmp_path: Path) -> None:
    bad = tmp_path / "kubeconfig"
    bad.write_text("apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\n")
    with pytest.raises(InputError) as e:
        connect(KubeSettings(kubeconfig=bad))
    assert e.value.message == (f"kubeconfig {bad} is not usable: Expected key "
                               f"current-context in {bad}")
    assert "--kubeconfig" in (e.value.hint or "")


def test_connect_reads_the_context_namespace(tmp_path: Path) -> None:
    cfg = tmp_path / "kubeconfig"
    cfg.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "a",
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
        "users": [{"name": "u", "user": {"token": "t0ken"}}],
        "contexts": [{"name": "a", "context": {"cluster": "c", "user": "u"}},
                     {"name": "b", "context": {"cluster": "c", "user": "u",
                                               "namespace": "prod"}}]}))
    assert connect(KubeSettings(kubeconfig=cfg)).namespace == "default"
    assert connect(KubeSettings(kubeconfig=cfg, context="b")).namespace == "prod"
    assert connect(KubeSettings(kubeconfig=cfg, context="b", namespace="x")).namespace == "x"


def test_the_server_version_is_asked_once_per_connection(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # A drain renders a Pod per migration, each on a worker's copy of the Cluster.
    import dataclasses

    from migrate.adapters import kube

    asked: list[str] = []

    def version(cluster: Cluster) -> dict[str, str]:
        asked.append("GET /version")
        return {"major": "1", "minor": "30+"}

    monkeypatch.setattr(kube.nodes, "server_version", version)
    cluster = _cluster(1)
    worker = dataclasses.replace(cluster, requests=0)
    assert kube.server_minor_version(cluster) == "1.30"
    assert kube.server_minor_version(worker) == "1.30"
    assert asked == ["GET /version"]
    assert kube.server_minor_version(_cluster(1)) == "1.30"  # another connection asks again
    assert len(asked) == 2
