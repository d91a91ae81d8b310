"""`migrate pod`, `migrate drain` and `doctor --probe` with `--encrypt-for`: encrypted
checkpoint images restored by real CRI-O v1.36.3 (two real kubelet+CRI-O nodes,
e2e/cluster/realnode.py), on the real control plane with the real registry.

node-b holds the EC key in its `decryption_keys_path` (CRI-O reads it at each
pull); node-a holds none. A node with the key restores the counter, which
counts on; a node without any key (node-a), or with another key (node-b, the
image encrypted for the RSA key only), fails the pull with containers/image's
words, and `migrate pod` fails at once with a hint naming the directory,
leaving the source untouched.

Skips when the real node's binaries are not built (scripts/setup-stretch);
with MIGRATE_REQUIRE_CLUSTER=1 it fails instead.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from kubernetes import client

from e2e.cluster import realnode
from e2e.cluster.launcher import ControlPlane
from e2e.real.counter import counter_pod, counts, push_counter_image
from tests.cluster import api_client, empty_namespace, require_cluster, wait_for
from tests.conftest import Result
from tests.registries import RegistryUnderTest

pytestmark = [pytest.mark.controlplane, pytest.mark.real]

Cli = Callable[..., Result]
FAST_FAIL = 30.0  # a refusal comes well inside the 300 s --timeout (not a performance test)
DEADLINE = 180.0  # pulls, CRIU and a loaded 2-core machine
ENCRYPTED = "application/vnd.oci.image.layer.v1.tar+encrypted"


def _write_pair(directory: Path, name: str,
                key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> Path:
    """The private key PEM in ``directory``; returns the public key PEM written beside it."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    (directory / f"{name}.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    public = directory.parent / f"{name}.pub"
    public.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return public


class World:
    def __init__(self, cp: ControlPlane, v1: client.CoreV1Api, registry: RegistryUnderTest,
                 image: str, public: Path, other_public: Path) -> None:
        self.cp, self.v1, self.registry, self.image = cp, v1, registry, image
        self.public, self.other_public = public, other_public
        self.count = 0

    def pod(self, node: str = "node-a", labels: dict[str, str] | None = None) -> tuple[str, str]:
        """A counter on ``node``, counting: (name, uid)."""
        self.count += 1
        body = counter_pod(f"e{self.count}", self.image, secret="token-encrypted", node=node)
        body["metadata"].setdefault("labels", {}).update(labels or {})
        name = body["metadata"]["name"]
        self.v1.create_namespaced_pod("default", body)
        wait_for(lambda: len(self.counts(name)) >= 2, DEADLINE, f"{name} counting on {node}")
        return name, self.v1.read_namespaced_pod(name, "default").metadata.uid

    def counts(self, pod: str, since: dt.datetime | None = None) -> list[int]:
        """The counter's values in ``pod``'s log (only those stamped after ``since``)."""
        try:
            log = self.v1.read_namespaced_pod_log(pod, "default", timestamps=True)
        except client.ApiException:
            return []
        # RFC 3339 with nanoseconds; fromisoformat takes microseconds.
        return counts("\n".join(line for stamp, _, line in (x.partition(" ") for x in
                                                            log.splitlines())
                                if since is None
                                or dt.datetime.fromisoformat(stamp[:26] + "+00:00") > since))

    def counting_on(self, pod: str, node: str, before: int, since: dt.datetime) -> None:
        """``pod`` runs on ``node`` and counts on from ``before``, its last value before
        ``since``: restored, not started afresh (that would print 1 after ``since``);
        CRI-O carries the log over, so the whole log counts from 1 without a gap."""
        p = self.v1.read_namespaced_pod(pod, "default")
        assert (p.spec.node_name, p.status.phase) == (node, "Running")
        after = wait_for(lambda: len(c := self.counts(pod, since)) >= 2 and c, DEADLINE,
                         f"{pod} counting on {node}")
        assert before < after[0], (before, after)
        whole = self.counts(pod)
        assert whole == list(range(1, len(whole) + 1)), whole

    def untouched(self, name: str, uid: str, node: str) -> None:
        p = self.v1.read_namespaced_pod(name, "default")
        assert (p.metadata.uid, p.spec.node_name, p.status.phase) == (uid, node, "Running")
        left = [q.metadata.name for q in self.v1.list_namespaced_pod("default").items
                if q.metadata.name.startswith(f"{name}-") and not q.metadata.deletion_timestamp]
        assert left == []

    def migrate(self, cli: Cli, pod: str, to: str, *args: str) -> Result:
        return cli("pod", pod, "--to", to, "--kubeconfig", self.cp.admin_kubeconfig,
                   "--registry", f"{self.registry.host}/encrypted", "--no-tls-verify",
                   "--timeout", "300", "-o", "json", "--delete-emptydir-data", *args)

    def layer(self, reference: str) -> dict[str, Any]:
        """The first layer descriptor of the manifest REGISTRY/REPO[:TAG][@DIGEST]."""
        name, _, digest = reference.split("/", 1)[1].partition("@")
        repo, _, tag = name.rpartition(":") if ":" in name.rsplit("/", 1)[-1] else (name, "", "")
        r = self.registry.http().request(
            "GET", f"{self.registry.url}/v2/{repo}/manifests/{digest or tag}",
            headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
        layer: dict[str, Any] = json.loads(r.data)["layers"][0]
        return layer


@pytest.fixture(scope="module")
def world(real_cp: ControlPlane, plain_registry: RegistryUnderTest,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    require_cluster(realnode.missing())
    keys = tmp_path_factory.mktemp("keys")
    public = _write_pair(keys / "node-b", "node", ec.generate_private_key(ec.SECP256R1()))
    other_public = _write_pair(keys / "other", "other", rsa.generate_private_key(65537, 2048))
    image = push_counter_image(plain_registry.host, "encrypted/counter", "1",
                               tmp_path_factory.mktemp("counter"))
    nodes = tmp_path_factory.mktemp("nodes")
    with api_client(real_cp.admin_kubeconfig) as api:
        empty_namespace(api, "default")
        with realnode.real_node(real_cp, nodes / "a", name="node-a",
                                registry=plain_registry.host), \
                realnode.real_node(real_cp, nodes / "b", name="node-b",
                                   registry=plain_registry.host,
                                   decryption_keys=keys / "node-b"):
            try:
                yield World(real_cp, client.CoreV1Api(api), plain_registry, image, public,
                            other_public)
            finally:
                empty_namespace(api, "default")


@pytest.fixture(autouse=True)
def _node_root(monkeypatch: pytest.MonkeyPatch) -> None:
    # The kubelets' checkpoint directories are on this machine, at the paths they report.
    monkeypatch.setenv("MIGRATE_NODE_ROOT", "/")


def _error_and_hint(r: Result) -> tuple[str, str]:
    lines = [x for x in r.err.splitlines() if x.startswith(("error: ", "hint: "))]
    assert [x[:5] for x in lines[-2:]] == ["error", "hint:"], r.err
    return lines[-2].removeprefix("error: "), lines[-1].removeprefix("hint: ")


def test_a_node_with_the_key_restores_the_encrypted_image(cli: Cli, world: World,
                                                          _private_cache: Path) -> None:
    name, _ = world.pod("node-a")
    before, since = world.counts(name)[-1], dt.datetime.now(dt.UTC)
    r = world.migrate(cli, name, "node-b", "--encrypt-for", f"jwe:{world.public}",
                      "--encrypt-for", f"jwe:{world.other_public}")
    assert r.code == 0, r.err
    report = r.json()
    assert report["outcome"] == "succeeded"
    world.counting_on(report["destination_pod"], "node-b", before, since)
    reference = report["images"]["counter"]["reference"]
    # By its tag: CRI-O (containers/image) decrypts no image pulled by digest.
    restored = world.v1.read_namespaced_pod(report["destination_pod"], "default")
    assert restored.spec.containers[0].image == reference.split("@")[0]
    layer = world.layer(reference)
    assert layer["mediaType"] == ENCRYPTED
    assert set(layer["annotations"]) == {"org.opencontainers.image.enc.keys.jwe",
                                         "org.opencontainers.image.enc.pubopts"}
    # The journal keeps the recipients' file names (to build again on resume), no key.
    state = Path(os.environ["MIGRATE_STATE_DIR"])
    journal = next(state.rglob(f"{report['id']}*.json")).read_text()
    assert f"jwe:{world.public}" in journal
    assert "BEGIN" not in journal and world.public.read_text().splitlines()[1] not in journal


@pytest.mark.parametrize(("source", "node", "recipient", "said"), [
    ("node-b", "node-a", "public", "missing private key needed for decryption"),
    ("node-a", "node-b", "other_public", "no suitable key unwrapper found or none of the "
                                         "private keys could be used for decryption"),
])
def test_a_node_without_the_key_fails_fast_with_a_hint(cli: Cli, world: World, source: str,
                                                       node: str, recipient: str,
                                                       said: str) -> None:
    name, uid = world.pod(source)
    t0 = time.monotonic()
    r = world.migrate(cli, name, node, "--encrypt-for", f"jwe:{getattr(world, recipient)}")
    assert time.monotonic() - t0 < FAST_FAIL and r.code == 7, r.err
    error, hint = _error_and_hint(r)
    assert error.startswith(f"verify: {node} cannot pull the checkpoint image of counter: the "
                            "node has no private key for the encrypted image: "), error
    # CRI-O's words (internal/storage/image.go) around containers/image's and ocicrypt's
    # name its retry as an OCI artifact too: the journal keeps them, the error does not.
    assert re.search(rf"image: decrypting layer sha256:[0-9a-f]{{64}}: {said}:", error), error
    assert "artifact" not in error, error
    assert hint == (f"put the private key of one --encrypt-for recipient in CRI-O's "
                    f"decryption_keys_path on {node} (crio.conf [crio.runtime], default "
                    "/etc/crio/keys; containerd: /etc/containerd/ocicrypt/keys), or "
                    f"encrypt for {node}'s public key")
    assert r.json()["outcome"] == "rolled-back"
    world.untouched(name, uid, source)


def test_encryption_refuses_a_build_on_the_node(cli: Cli, world: World) -> None:
    name, uid = world.pod()
    r = world.migrate(cli, name, "node-b", "--encrypt-for", f"jwe:{world.public}",
                      "--build-on", "node", "--tool-image", "reg.example/migrate:1")
    assert r.code == 2
    assert r.err.splitlines()[-2:] == [
        "error: --encrypt-for needs the image built here: the build Job on the node cannot "
        "read the public key files",
        "hint: make the archives readable here (--build-on local, MIGRATE_NODE_ROOT) or run "
        "migrate on the source node"]
    world.untouched(name, uid, "node-a")


def test_a_bad_key_fails_before_the_checkpoint(cli: Cli, world: World, tmp_path: Path) -> None:
    name, uid = world.pod()
    r = world.migrate(cli, name, "node-b", "--encrypt-for", f"jwe:{tmp_path}/gone.pub")
    assert r.code == 4
    assert r.err.splitlines()[-2:] == [
        f"error: {tmp_path}/gone.pub: no such key file",
        "hint: give the recipient's public key file: --encrypt-for jwe:PUBLIC_KEY_FILE"]
    world.untouched(name, uid, "node-a")
    assert "Checkpointed" not in [e.reason for e in world.v1.list_namespaced_event(
        "default", field_selector=f"involvedObject.name={name}").items]


def test_a_drain_encrypts_every_image(cli: Cli, world: World) -> None:
    pods = [world.pod("node-a", {"drain": "encrypted"})[0] for _ in range(2)]
    before = {name: world.counts(name)[-1] for name in pods}
    since = dt.datetime.now(dt.UTC)
    try:
        r = cli("drain", "node-a", "--to", "node-b", "--pod-selector", "drain=encrypted",
                "--skip-rest", "--kubeconfig", world.cp.admin_kubeconfig, "--registry",
                f"{world.registry.host}/drains", "--no-tls-verify", "--encrypt-for",
                f"jwe:{world.public}", "--timeout", "300", "-o", "json",
                "--delete-emptydir-data")
    finally:
        cli("uncordon", "node-a", "--kubeconfig", world.cp.admin_kubeconfig)
    assert r.code == 0, r.err
    moved = {p["name"]: p for p in r.json()["pods"] if p["name"] in pods}
    assert {n: p["outcome"] for n, p in moved.items()} == dict.fromkeys(pods, "migrated")
    for name, pod in moved.items():
        world.counting_on(pod["restored_pod"], "node-b", before[name], since)
        restored = world.v1.read_namespaced_pod(pod["restored_pod"], "default")
        assert world.layer(restored.spec.containers[0].image)["mediaType"] == ENCRYPTED


def _probe(cli: Cli, world: World, node: str, *args: str) -> Result:
    return cli("doctor", "--kubeconfig", world.cp.admin_kubeconfig, "--node", "node-a",
               "--registry", f"{world.registry.host}/probes", "--no-tls-verify", "--probe",
               node, "--probe-source", "node-a", "--probe-image", world.image,
               "--timeout", "300", "-o", "json", *args)


def test_doctor_probe_proves_a_node_can_decrypt(cli: Cli, world: World) -> None:
    # The probe pulls no base image (migrate pod does): CRI-O restores onto the
    # probe's image by ID, so node-b must hold it already.
    world.pod("node-b")
    r = _probe(cli, world, "node-b", "--encrypt-for", f"jwe:{world.public}")
    assert r.code == 0, json.dumps(r.json()["probes"])
    (row,) = r.json()["probes"]
    assert row["status"] == "PASS", row  # (the probe deletes its image: nothing to look at)
    r = _probe(cli, world, "node-a", "--encrypt-for", f"jwe:{world.public}")
    assert r.code == 9, (r.out, r.err)
    (row,) = r.json()["probes"]
    assert (row["status"], row["stage"]) == ("FAIL", "restore"), row
    assert "missing private key needed for decryption" in row["message"], row
    assert row["hint"].startswith("put the private key of one --encrypt-for recipient in "
                                  "CRI-O's decryption_keys_path on node-a"), row
    # Unencrypted, the same node passes: the key is what it lacks.
    r = _probe(cli, world, "node-a")
    assert r.code == 0, json.dumps(r.json()["probes"])


def test_doctor_encrypt_for_needs_a_probe(cli: Cli, world: World) -> None:
    r = cli("doctor", "--kubeconfig", world.cp.admin_kubeconfig, "--encrypt-for",
            f"jwe:{world.public}")
    assert (r.code, r.err.splitlines()) == (2, [
        "error: --encrypt-for goes with --probe NODE: it encrypts the probe image",
        "hint: migrate doctor --registry REG --probe NODE --encrypt-for jwe:PUBLIC_KEY_FILE"])
