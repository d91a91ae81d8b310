"""In-cluster configuration: the service-account directory, and where it may be moved."""

from __future__ import annotations

from pathlib import Path

import pytest

from migrate.adapters import kube
from migrate.errors import NotFoundError
from migrate.settings import SERVICEACCOUNT_DIR, KubeSettings, load_settings


def test_the_directory_is_the_pods_unless_a_stand_in_says_otherwise() -> None:
    assert load_settings(env={}).kube.serviceaccount_dir == SERVICEACCOUNT_DIR
    assert str(SERVICEACCOUNT_DIR) == "/var/run/secrets/kubernetes.io/serviceaccount"
    moved = load_settings(env={"MIGRATE_SERVICEACCOUNT_DIR": "/srv/sa"})
    assert moved.kube.serviceaccount_dir == Path("/srv/sa")


def test_connect_reads_token_ca_and_namespace_from_the_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "token").write_text("t0ken")
    (tmp_path / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    (tmp_path / "namespace").write_text("jobs\n")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "6443")
    cluster = kube.connect(KubeSettings(serviceaccount_dir=tmp_path))
    config = cluster.api.configuration
    assert (config.host, cluster.namespace) == ("https://127.0.0.1:6443", "jobs")
    assert config.api_key["BearerToken"].split() == ["bearer", "t0ken"]
    assert config.ssl_ca_cert == str(tmp_path / "ca.crt")
    # An explicit namespace wins over the pod's.
    assert kube.connect(KubeSettings(serviceaccount_dir=tmp_path, namespace="x")).namespace == "x"


def test_without_a_token_it_is_not_in_cluster(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    missing = tmp_path / "missing"
    with pytest.raises(NotFoundError, match=f"no kubeconfig: {missing} does not exist"):
        kube.connect(KubeSettings(serviceaccount_dir=tmp_path, default_kubeconfig=str(missing)))
