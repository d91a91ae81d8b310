"""Helpers for tests that drive the cluster simulator (e2e.sim) with real clients."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, config

from e2e.pki import write_private
from e2e.sim import Simulator

KUBECTL = shutil.which("kubectl")
needs_kubectl = pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed")
DEADLINE = 10.0

Kubectl = Callable[..., subprocess.CompletedProcess[str]]


def wait_for(predicate: Callable[[], Any], timeout: float = DEADLINE, what: str = "") -> Any:
    """Poll `predicate` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(0.02)


def sim_client(sim: Simulator, token: str | None = None) -> client.ApiClient:
    """A client configured by load_kube_config from the simulator's kubeconfig, or
    from a copy of it carrying another bearer token."""
    path = sim.kubeconfig
    if token is not None:
        kubeconfig = yaml.safe_load(sim.kubeconfig.read_text())
        kubeconfig["users"][0]["user"]["token"] = token
        path = sim.state_dir / f"kubeconfig-{token[:8]}"
        write_private(path, yaml.safe_dump(kubeconfig).encode())
    cfg = client.Configuration()
    config.load_kube_config(config_file=str(path), client_configuration=cfg)
    return client.ApiClient(cfg)


def kubectl_runner(home: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """``run(kubeconfig, *args, input=None, check=True)``: kubectl with its caches in
    ``home`` and none of the caller's KUBE* environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBE")}
    env["HOME"] = str(home)

    def run(kubeconfig: Path, *args: str, input: str | None = None, check: bool = True
            ) -> subprocess.CompletedProcess[str]:
        assert KUBECTL is not None
        result = subprocess.run([KUBECTL, "--kubeconfig", str(kubeconfig), *args],
                                capture_output=True, text=True, env=env, input=input,
                                timeout=60)
        if check:
            assert result.returncode == 0, (args, result.stdout, result.stderr)
        return result

    return run
