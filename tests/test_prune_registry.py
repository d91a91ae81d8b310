"""`migrate prune --registry` and deleting a migration's images, against the real registry
(distribution, delete enabled; and one with deletes disabled) and the real control plane,
whose pods say which images are in use."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kubernetes import client

from e2e.cluster.launcher import ControlPlane
from e2e.services.registry import Registry
from migrate.adapters import kube
from migrate.errors import UsageError
from migrate.pipeline.prune.images import delete_images
from migrate.settings import load_settings
from migrate.validation import validate
from tests.cluster import wait_for
from tests.conftest import Result
from tests.registries import RegistryUnderTest, make_repo_name
from tests.test_registry_infra import tags, upload_blob

Cli = Callable[..., Result]
OCI = "application/vnd.oci.image.manifest.v1+json"
pytestmark = pytest.mark.controlplane


def push_checkpoint(cli: Cli, archive: Path, ref: str) -> str:
    r = cli("build", archive, "--image", ref, "--no-tls-verify", "-o", "json")
    assert r.code == 0, r.err
    return str(r.json()["digest"])


def push_plain(reg: RegistryUnderTest, repo: str, tag: str) -> str:
    """An ordinary image (no checkpoint annotation), old enough for any --older-than."""
    config = json.dumps({"created": "2001-01-01T00:00:00Z", "architecture": "amd64",
                         "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}).encode()
    digest = upload_blob(reg, repo, config)
    manifest = json.dumps({"schemaVersion": 2, "mediaType":
                           "application/vnd.oci.image.manifest.v1+json", "config": {
                               "mediaType": "application/vnd.oci.image.config.v1+json",
                               "digest": digest, "size": len(config)}, "layers": []}).encode()
    r = reg.http().request("PUT", f"{reg.url}/v2/{repo}/manifests/{tag}", body=manifest,
                           headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
    assert r.status == 201, r.data
    return str(r.headers["Docker-Content-Digest"])


@pytest.fixture
def pending_pod(real_cp: ControlPlane, cp_admin: client.ApiClient,
                cp_namespace: str) -> Iterator[Callable[..., None]]:
    """Make a pod naming an image; it never runs (no node matches), it only names it."""
    core = client.CoreV1Api(cp_admin)

    def make(name: str, image: str, policy: str | None = None) -> None:
        container = {"name": "c", "image": image}
        if policy:
            container["imagePullPolicy"] = policy
        core.create_namespaced_pod(cp_namespace, {"metadata": {"name": name}, "spec": {
            "nodeSelector": {"migrate.dev/no-such-node": "true"}, "containers": [container]}})

    yield make


def prune(cli: Cli, cp: ControlPlane, where: str, *args: str) -> Result:
    return cli("prune", "--registry", where, "--no-tls-verify", "--kubeconfig",
               cp.admin_kubeconfig, "-o", "json", *args)


def test_unused_old_checkpoint_images_go_and_the_rest_stay(
        cli: Cli, real_cp: ControlPlane, plain_registry: RegistryUnderTest,
        counters_archive: Path, pending_pod: Callable[..., None],
        cp_namespace: str) -> None:
    prefix = make_repo_name("prune")
    host = plain_registry.host
    # Two workloads' repositories under the prefix, as `migrate pod --registry` names them.
    unused = push_checkpoint(cli, counters_archive, f"{host}/{prefix}/ns-web-app:checkpoint-1")
    cli("build", counters_archive, "--image", f"{host}/{prefix}/ns-web-app:also",
        "--no-tls-verify")
    used_ref = f"{host}/{prefix}/ns-db-pg:checkpoint-2"
    used = push_checkpoint(cli, counters_archive, used_ref)
    assert used == unused  # the same archive: the same image; pushed to another repository
    plain = push_plain(plain_registry, f"{prefix}/ns-web-app", "base")
    pending_pod("uses-db", used_ref)  # by tag

    r = prune(cli, real_cp, f"{host}/{prefix}", "--older-than", "30d", "--dry-run")
    assert r.code == 0, r.err
    rep = r.json()
    validate(rep, "prune-registry.schema.json", "prune --registry -o json")
    assert [(i["repository"], i["tags"]) for i in rep["pruned"]] == [
        (f"{host}/{prefix}/ns-web-app", ["also", "checkpoint-1"])]
    assert [(i["repository"], i["why"]) for i in rep["kept"]] == [
        (f"{host}/{prefix}/ns-db-pg", f"used by pod {cp_namespace}/uses-db")]
    assert rep["other_images"] == 1 and rep["dry_run"] is True
    assert sorted(tags(plain_registry, f"{prefix}/ns-web-app")) == ["also", "base",
                                                                    "checkpoint-1"]

    r = prune(cli, real_cp, f"{host}/{prefix}", "--older-than", "30d")
    assert r.code == 0, r.err
    assert len(r.json()["pruned"]) == 1
    # Deleting the manifest by digest took its tags; the plain image and the used one stay.
    assert tags(plain_registry, f"{prefix}/ns-web-app") == ["base"]
    assert tags(plain_registry, f"{prefix}/ns-db-pg") == ["checkpoint-2"]
    assert plain.startswith("sha256:")

    # --older-than longer than the image's age (its checkpoint time): it stays.
    r = prune(cli, real_cp, f"{host}/{prefix}/ns-db-pg", "--older-than", "100000d")
    assert [i["why"] for i in r.json()["kept"]] == [f"used by pod {cp_namespace}/uses-db"]


def test_a_registry_that_refuses_deletes_says_how_to_allow_them(
        cli: Cli, real_cp: ControlPlane, tmp_path: Path, counters_archive: Path,
        cp_namespace: str) -> None:
    with Registry(tmp_path / "reg", extra_config={"storage": {"delete": {"enabled": False}}}
                  ) as server:
        reg = RegistryUnderTest(server)
        push_checkpoint(cli, counters_archive, f"{reg.host}/ckpt/web:v1")
        r = prune(cli, real_cp, f"{reg.host}/ckpt", "--older-than", "1d")
        assert r.code == 7, r.err
        assert r.err.splitlines() == [
            f"error: {reg.host} refuses to delete manifests (HTTP 405 UNSUPPORTED): nothing "
            "was deleted there",
            "hint: the registry must allow deletes: in distribution's config.yml, `storage: "
            "delete: enabled: true` (REGISTRY_STORAGE_DELETE_ENABLED=true), then restart it; "
            "its garbage collector (`registry garbage-collect`) frees the space"]
        assert tags(reg, "ckpt/web") == ["v1"]


@pytest.mark.parametrize(("args", "first"), [
    (("--older-than", "1d", "--keep", "2"),
     "error: --keep and --max-size apply to node archives, not to --registry"),
    ((), "error: --registry needs --older-than DURATION"),
    (("--older-than", "1d", "--node", "node-a"),
     "error: --node, --where, --dir and --protect apply to node archives, not to --registry"),
    (("--older-than", "1 day"), "error: --older-than '1 day' is not a duration"),
])
def test_registry_usage_errors(cli: Cli, real_cp: ControlPlane, args: tuple[str, ...],
                               first: str) -> None:
    r = prune(cli, real_cp, "127.0.0.1:1/x", *args)
    assert r.code == 2 and r.err.splitlines()[0] == first, r.err
    r = prune(cli, real_cp, "http://127.0.0.1:1/x", "--older-than", "1d")
    assert r.code == 2 and "without http://" in r.err, r.err


def test_credentials_never_reach_a_message(cli: Cli, real_cp: ControlPlane,
                                           tls_basic_registry: RegistryUnderTest) -> None:
    r = cli("prune", "--registry", f"{tls_basic_registry.host}/x", "--older-than", "1d",
            "--creds", "alice:wrong-pa55word", "--cert-dir", str(tls_basic_registry.cert_dir),
            "--kubeconfig", real_cp.admin_kubeconfig)
    assert r.code == 8, r.err
    assert "wrong-pa55word" not in r.err + r.out and "as 'alice'" in r.err


def test_a_migrations_images_are_deleted_only_once_no_pod_uses_them(
        cli: Cli, real_cp: ControlPlane, plain_registry: RegistryUnderTest,
        counters_archive: Path, pending_pod: Callable[..., None],
        cp_namespace: str, cp_admin: client.ApiClient) -> None:
    repo = make_repo_name("cleanup")
    ref = f"{plain_registry.host}/{repo}:checkpoint-1"
    digest = push_checkpoint(cli, counters_archive, ref)
    pinned = f"{plain_registry.host}/{repo}@{digest}"
    pending_pod("restored", pinned)  # as the restored pod names it
    base = load_settings(debug=False, verbose=0, tmp_dir=None)
    settings = dataclasses.replace(
        base, kube=dataclasses.replace(base.kube, kubeconfig=real_cp.admin_kubeconfig),
        registry=dataclasses.replace(base.registry, tls_verify=False))
    cluster = kube.connect(settings.kube)
    with pytest.raises(UsageError) as refused:
        delete_images(cluster, settings, [f"{ref}@{digest}"])
    assert refused.value.message == (f"checkpoint image {plain_registry.host}/{repo}@{digest} "
                                     f"is still used by pod {cp_namespace}/restored: nothing "
                                     "was deleted")
    assert tags(plain_registry, repo) == ["checkpoint-1"]
    with pytest.raises(UsageError, match="has no digest"):
        delete_images(cluster, settings, [ref])
    # The migration's own restored pod restarts from its node's copy; another does not.
    pending_pod("other", pinned)
    with pytest.raises(UsageError, match=f"used by pod {cp_namespace}/other"):
        delete_images(cluster, settings, [pinned], restored=f"{cp_namespace}/restored")
    core = client.CoreV1Api(cp_admin)
    for name in ("restored", "other"):
        core.delete_namespaced_pod(name, cp_namespace, grace_period_seconds=0)
    wait_for(lambda: not core.list_namespaced_pod(cp_namespace).items, what="the pods to go")
    pending_pod("restored", pinned, "Always")  # pulls at every start: it needs the registry
    with pytest.raises(UsageError, match=f"used by pod {cp_namespace}/restored"):
        delete_images(cluster, settings, [pinned], restored=f"{cp_namespace}/restored")
    core.delete_namespaced_pod("restored", cp_namespace, grace_period_seconds=0)
    pending_pod("restored-b", pinned)
    assert delete_images(cluster, settings, [pinned], restored=f"{cp_namespace}/restored-b") == [
        {"image": pinned, "digest": digest, "deleted": True}]
    assert tags(plain_registry, repo) == []
    assert delete_images(cluster, settings, [pinned], restored=f"{cp_namespace}/restored-b") == [
        {"image": pinned, "digest": digest, "deleted": False}]


def test_a_token_registry_grants_the_delete_it_was_asked_for(
        cli: Cli, real_cp: ControlPlane, token_registry: RegistryUnderTest,
        counters_archive: Path) -> None:
    """Bearer tokens are per action: a prune asks for pull,delete on each repository
    (distribution checks `delete` for DELETE), and the catalog is not granted: the
    repository given is pruned alone."""
    repo = make_repo_name("token")
    creds = f"{token_registry.username}:{token_registry.password}"
    tls = ("--cert-dir", str(token_registry.cert_dir))
    r = cli("build", counters_archive, "--image", f"{token_registry.host}/{repo}:v1",
            "--creds", creds, *tls, "-o", "json")
    assert r.code == 0, r.err
    r = cli("prune", "--registry", f"{token_registry.host}/{repo}", "--older-than", "1d",
            "--creds", creds, *tls, "--kubeconfig", real_cp.admin_kubeconfig, "-o", "json")
    assert r.code == 0, r.err
    assert [i["tags"] for i in r.json()["pruned"]] == [["v1"]]
    assert tags(token_registry, repo) == []


def test_a_probe_deletes_its_image_from_a_token_registry(
        cli: Cli, token_registry: RegistryUnderTest, counters_archive: Path) -> None:
    """The probe asked its token for pull,push: a token registry refuses a DELETE without
    `delete`, and every probe left its image behind (a leftover, exit 0)."""
    from migrate.adapters.registry.auth import parse_creds
    from migrate.pipeline.probe import ProbeRequest, ProbeResult, _cleanup, _Probe

    repo = make_repo_name("probe")
    creds = f"{token_registry.username}:{token_registry.password}"
    r = cli("build", counters_archive, "--image", f"{token_registry.host}/{repo}:probe",
            "--creds", creds, "--cert-dir", str(token_registry.cert_dir), "-o", "json")
    assert r.code == 0, r.err
    base = load_settings(debug=False, verbose=0, tmp_dir=None)
    settings = dataclasses.replace(base, registry=dataclasses.replace(
        base.registry, cert_dir=token_registry.cert_dir, creds=parse_creds(creds)))
    result = ProbeResult("node-b")
    probe = _Probe(None, settings, ProbeRequest(("node-b",), token_registry.host),  # type: ignore[arg-type]
                   "node-b", "run", "default", result,
                   pushed=f"{token_registry.host}/{repo}@{r.json()['digest']}")
    _cleanup(probe)
    assert result.leftovers == []
    assert tags(token_registry, repo) == []


def test_what_a_live_run_needs_and_what_was_just_checkpointed_stay(
        cli: Cli, real_cp: ControlPlane, plain_registry: RegistryUnderTest,
        counters_archive: Path, tmp_path: Path) -> None:
    """Only pods naming an image kept it: a run interrupted between its push and its
    restored pod (its journal here), or one in flight elsewhere (an in-cluster drain),
    lost its image to `--older-than 0s`, and its resume could not pull."""
    import os
    from datetime import UTC, datetime

    from migrate.pipeline.journal import Journal
    from tests.test_untrusted_input import rewrite_member

    host, prefix = plain_registry.host, make_repo_name("live")
    needed = f"{host}/{prefix}/ns-web-app:checkpoint-1"
    digest = push_checkpoint(cli, counters_archive, needed)
    journal = Journal.create(Path(os.environ["MIGRATE_STATE_DIR"]), "pod", "web", {},
                             ["preflight", "build"])
    journal.stage("preflight").data["plan"] = {"images": {"app": needed}}
    journal.stage("build").data["images"] = {"app": {"digest": digest}}
    journal.save()
    journal.unlock()  # interrupted: `migrate resume` would create the restored pod
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    fresh_archive = rewrite_member(counters_archive, tmp_path / "fresh.tar", "config.dump",
                                   lambda d: json.dumps({**json.loads(d),
                                                         "checkpointedTime": now}).encode())
    push_checkpoint(cli, fresh_archive, f"{host}/{prefix}/ns-db-pg:checkpoint-2")
    r = prune(cli, real_cp, f"{host}/{prefix}", "--older-than", "0s")
    assert r.code == 0, r.err
    assert r.json()["pruned"] == []
    assert sorted((i["repository"].rpartition("/")[2], i["why"]) for i in r.json()["kept"]) == [
        ("ns-db-pg", "checkpointed in the last hour: a migration may not have restored it yet"),
        ("ns-web-app", "a running or interrupted migration journaled here needs it")]


def test_a_repository_that_cannot_be_read_does_not_stop_the_others(
        cli: Cli, real_cp: ControlPlane, plain_registry: RegistryUnderTest,
        counters_archive: Path) -> None:
    """One repository's failure ended the prune with an error and no report, the ones
    before it already pruned."""
    host, prefix = plain_registry.host, make_repo_name("partial")
    config = b"{" + b" " * (5 << 20) + b"}"  # a config no registry client reads whole
    digest = upload_blob(plain_registry, f"{prefix}/broken", config)
    manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI, "config": {
        "mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest,
        "size": len(config)}, "layers": []}).encode()
    r = plain_registry.http().request("PUT", f"{plain_registry.url}/v2/{prefix}/broken/"
                                      "manifests/v1", body=manifest,
                                      headers={"Content-Type": OCI})
    assert r.status == 201, r.data
    push_checkpoint(cli, counters_archive, f"{host}/{prefix}/zz-fine:checkpoint-1")
    r = prune(cli, real_cp, f"{host}/{prefix}", "--older-than", "1d")
    assert r.code == 10, r.err
    rep = r.json()
    validate(rep, "prune-registry.schema.json", "prune --registry -o json, partly")
    assert [i["repository"] for i in rep["pruned"]] == [f"{host}/{prefix}/zz-fine"]
    assert [f["repository"] for f in rep["failed"]] == [f"{host}/{prefix}/broken"]
    assert rep["failed"][0]["error"].endswith(f"answered 200 with more than {4 << 20} bytes")
    assert r.err.splitlines() == [
        f"error: prune: 1 repository not read; {host}/{prefix}/broken: "
        f"{rep['failed'][0]['error']}",
        "hint: the others were pruned; the report says what went"]
