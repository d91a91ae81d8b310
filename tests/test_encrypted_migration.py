"""`migrate pod` and `migrate drain` with `--encrypt-for`: encrypted checkpoint images
restored on simulated nodes that decrypt as CRI-O does (e2e/nodes/decrypt.py: the
private keys in the node's `decryption_keys_path`), on the real control plane with
node agents and the real registry.

A node with the key restores; a node without any key, or with another key, fails
the pull the way CRI-O does, and `migrate pod` fails at once with a hint naming
the directory, leaving the source untouched.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from kubernetes import client

from e2e.cluster.launcher import ControlPlane
from e2e.cluster.world import Cluster
from e2e.nodes import NodeConfig, RegistryConfig
from tests.cluster import api_client, node_agents, wait_for
from tests.conftest import Result
from tests.registries import RegistryUnderTest

Cli = Callable[..., Result]
FAST = {"backoff": 0.2, "backoff_max": 1.0}
FAST_FAIL = 30.0  # a refusal comes well inside the 300 s --timeout (not a performance test)
ENCRYPTED = "application/vnd.oci.image.layer.v1.tar+encrypted"


def _write_pair(directory: Path, name: str,
                key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> tuple[Path, Path]:
    """(private key PEM in ``directory``, public key PEM beside it)."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    private = directory / f"{name}.pem"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    public = directory.parent / f"{name}.pub"
    public.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


class World:
    def __init__(self, cluster: Cluster, v1: client.CoreV1Api, registry: RegistryUnderTest,
                 public: Path, other_public: Path) -> None:
        self.cluster, self.v1, self.registry = cluster, v1, registry
        self.public, self.other_public = public, other_public
        self.count = 0

    def pod(self, node: str = "node-a") -> tuple[str, str]:
        self.count += 1
        name = f"e{self.count}"
        body = {"metadata": {"name": name, "labels": {"app": name}, "annotations": {
            "sim.migrate.dev/processes": json.dumps([{"argv": ["/bin/app"], "heap": "x"}])}},
            "spec": {"nodeName": node, "containers": [
                {"name": "counter", "image": "quay.io/example/app:1"}]}}
        self.v1.create_namespaced_pod("default", body)
        pod = wait_for(lambda: (p := self.v1.read_namespaced_pod(name, "default")).status.phase
                       == "Running" and p, what=f"{name} Running")
        return name, pod.metadata.uid

    def untouched(self, name: str, uid: str, node: str = "node-a") -> None:
        p = self.v1.read_namespaced_pod(name, "default")
        assert (p.metadata.uid, p.spec.node_name, p.status.phase) == (uid, node, "Running")
        left = [q.metadata.name for q in self.v1.list_namespaced_pod("default").items
                if q.metadata.name.startswith(f"{name}-") and not q.metadata.deletion_timestamp]
        assert left == []

    def migrate(self, cli: Cli, pod: str, to: str, *args: str) -> Result:
        return cli("pod", pod, "--to", to, "--kubeconfig", self.cluster.kubeconfig,
                   "--registry", f"{self.registry.host}/encrypted", "--no-tls-verify",
                   "--timeout", "300", "-o", "json", *args)


@pytest.fixture(scope="module")
def world(real_cp: ControlPlane, tmp_path_factory: pytest.TempPathFactory,
          plain_registry: RegistryUnderTest) -> Iterator[World]:
    keys = tmp_path_factory.mktemp("keys")
    _, public = _write_pair(keys / "keyed", "node", ec.generate_private_key(ec.SECP256R1()))
    _, other_public = _write_pair(keys / "other", "other", rsa.generate_private_key(65537, 2048))
    nodes = {"node-a": NodeConfig(**FAST),
             "keyed": NodeConfig(decryption_keys_path=str(keys / "keyed"), **FAST),
             "keyless": NodeConfig(**FAST),
             "wrong-key": NodeConfig(decryption_keys_path=str(keys / "other"), **FAST)}
    with node_agents(real_cp, tmp_path_factory.mktemp("nodes"), nodes=list(nodes),
                     node_config=nodes, start_latency=0.05, stop_latency=0.05,
                     registries=RegistryConfig(insecure=(plain_registry.host,))) as cluster, \
            api_client(cluster.kubeconfig) as api:
        yield World(cluster, client.CoreV1Api(api), plain_registry, public, other_public)


@pytest.fixture(autouse=True)
def _node_root(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIGRATE_NODE_ROOT", world.cluster.node_root)


def _layer(world: World, reference: str) -> dict[str, Any]:
    name, digest = reference.split("/", 1)[1].split("@")
    repo = name.rsplit(":", 1)[0] if ":" in name.rsplit("/", 1)[-1] else name
    r = world.registry.http().request(
        "GET", f"{world.registry.url}/v2/{repo}/manifests/{digest}",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
    layer: dict[str, Any] = json.loads(r.data)["layers"][0]
    return layer


def _error_and_hint(r: Result) -> tuple[str, str]:
    lines = [x for x in r.err.splitlines() if x.startswith(("error: ", "hint: "))]
    assert [x[:5] for x in lines[-2:]] == ["error", "hint:"], r.err
    return lines[-2].removeprefix("error: "), lines[-1].removeprefix("hint: ")


def test_a_node_with_the_key_restores_the_encrypted_image(cli: Cli, world: World,
                                                          _private_cache: Path) -> None:
    name, _ = world.pod()
    r = world.migrate(cli, name, "keyed", "--encrypt-for", f"jwe:{world.public}",
                      "--encrypt-for", f"jwe:{world.other_public}")
    assert r.code == 0, r.err
    report = r.json()
    assert report["outcome"] == "succeeded"
    restored = world.v1.read_namespaced_pod(report["destination_pod"], "default")
    assert (restored.spec.node_name, restored.status.phase) == ("keyed", "Running")
    layer = _layer(world, report["images"]["counter"]["reference"])
    assert layer["mediaType"] == ENCRYPTED
    assert set(layer["annotations"]) == {"org.opencontainers.image.enc.keys.jwe",
                                         "org.opencontainers.image.enc.pubopts"}
    # The journal keeps the recipients' file names (to build again on resume), no key.
    state = Path(os.environ["MIGRATE_STATE_DIR"])
    journal = next(state.rglob(f"{report['id']}*.json")).read_text()
    assert f"jwe:{world.public}" in journal
    assert "BEGIN" not in journal and world.public.read_text().splitlines()[1] not in journal


@pytest.mark.parametrize(("node", "said"), [
    ("keyless", "missing private key needed for decryption"),
    ("wrong-key", "no suitable key unwrapper found or none of the private keys could be used "
                  "for decryption"),
])
def test_a_node_without_the_key_fails_fast_with_a_hint(cli: Cli, world: World, node: str,
                                                       said: str) -> None:
    name, uid = world.pod()
    t0 = time.monotonic()
    r = world.migrate(cli, name, node, "--encrypt-for", f"jwe:{world.public}")
    assert time.monotonic() - t0 < FAST_FAIL and r.code == 7, r.err
    error, hint = _error_and_hint(r)
    assert error.startswith(f"verify: {node} cannot pull the checkpoint image of counter: the "
                            "node has no private key for the encrypted image: rpc error: code "
                            "= Unknown desc = initializing source docker://"), error
    assert error.endswith(said)
    assert "decrypting layer sha256:" in error
    assert hint == (f"put the private key of one --encrypt-for recipient in CRI-O's "
                    f"decryption_keys_path on {node} (crio.conf [crio.runtime], default "
                    "/etc/crio/keys; containerd: /etc/containerd/ocicrypt/keys), or "
                    f"encrypt for {node}'s public key")
    assert r.json()["outcome"] == "rolled-back"
    world.untouched(name, uid)


def test_encryption_refuses_a_build_on_the_node(cli: Cli, world: World) -> None:
    name, uid = world.pod()
    r = world.migrate(cli, name, "keyed", "--encrypt-for", f"jwe:{world.public}",
                      "--build-on", "node", "--tool-image", "reg.example/migrate:1")
    assert r.code == 2
    assert r.err.splitlines()[-2:] == [
        "error: --encrypt-for needs the image built here: the build Job on the node cannot "
        "read the public key files",
        "hint: make the archives readable here (--build-on local, MIGRATE_NODE_ROOT) or run "
        "migrate on the source node"]
    world.untouched(name, uid)


def test_a_bad_key_fails_before_the_checkpoint(cli: Cli, world: World, tmp_path: Path) -> None:
    name, uid = world.pod()
    r = world.migrate(cli, name, "keyed", "--encrypt-for", f"jwe:{tmp_path}/gone.pub")
    assert r.code == 4
    assert r.err.splitlines()[-2:] == [
        f"error: {tmp_path}/gone.pub: no such key file",
        "hint: give the recipient's public key file: --encrypt-for jwe:PUBLIC_KEY_FILE"]
    world.untouched(name, uid)
    assert "Checkpointed" not in [e.reason for e in world.v1.list_namespaced_event(
        "default", field_selector=f"involvedObject.name={name}").items]


def test_a_drain_encrypts_every_image(cli: Cli, world: World) -> None:
    name, _ = world.pod("node-a")
    try:
        r = cli("drain", "node-a", "--to", "keyed", "--pod-selector", f"app={name}",
                "--skip-rest", "--kubeconfig", world.cluster.kubeconfig, "--registry",
                f"{world.registry.host}/drains", "--no-tls-verify", "--encrypt-for",
                f"jwe:{world.public}", "--timeout", "300", "-o", "json")
    finally:
        cli("uncordon", "node-a", "--kubeconfig", world.cluster.kubeconfig)
    assert r.code == 0, r.err
    (pod,) = [p for p in r.json()["pods"] if p["name"] == name]
    assert pod["outcome"] == "migrated", pod
    moved = [p for p in world.v1.list_namespaced_pod("default").items
             if p.metadata.name.startswith(f"{name}-") and not p.metadata.deletion_timestamp]
    assert [(p.spec.node_name, p.status.phase) for p in moved] == [("keyed", "Running")]


def _probe(cli: Cli, world: World, node: str, *args: str) -> Result:
    return cli("doctor", "--kubeconfig", world.cluster.kubeconfig, "--node", "node-a",
               "--registry", f"{world.registry.host}/probes", "--no-tls-verify", "--probe",
               node, "--probe-source", "node-a", "--timeout", "300", "-o", "json", *args)


def test_doctor_probe_proves_a_node_can_decrypt(cli: Cli, world: World) -> None:
    r = _probe(cli, world, "keyed", "--encrypt-for", f"jwe:{world.public}")
    assert r.code == 0, r.err
    (row,) = r.json()["probes"]
    assert row["status"] == "PASS"  # (the probe deletes its image: nothing to look at)
    r = _probe(cli, world, "keyless", "--encrypt-for", f"jwe:{world.public}")
    assert r.code == 9
    (row,) = r.json()["probes"]
    assert (row["status"], row["stage"]) == ("FAIL", "restore")
    assert row["message"].endswith("missing private key needed for decryption")
    assert row["hint"].startswith("put the private key of one --encrypt-for recipient in "
                                  "CRI-O's decryption_keys_path on keyless")
    # Unencrypted, the same node passes: the key is what it lacks.
    assert _probe(cli, world, "keyless").code == 0


def test_doctor_encrypt_for_needs_a_probe(cli: Cli, world: World) -> None:
    r = cli("doctor", "--kubeconfig", world.cluster.kubeconfig, "--encrypt-for",
            f"jwe:{world.public}")
    assert (r.code, r.err.splitlines()) == (2, [
        "error: --encrypt-for goes with --probe NODE: it encrypts the probe image",
        "hint: migrate doctor --registry REG --probe NODE --encrypt-for jwe:PUBLIC_KEY_FILE"])
