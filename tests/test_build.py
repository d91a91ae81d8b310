"""`migrate build` against the real registry server (Debian docker-registry on 127.0.0.1).

Images are pulled back with buildah and their root compared byte for byte
with the archive; annotations are read from the pushed manifest.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from migrate.adapters.registry.client import MAX_ANSWER_BYTES, RegistryClient
from migrate.adapters.registry.reference import parse_reference
from migrate.errors import ExitCode, RegistryError, TransientRegistryError
from migrate.pipeline.build import BuildRequest, build_image
from migrate.pipeline.preflight import RECENT_LOGIN_SECONDS, check_registry
from migrate.settings import RetrySettings, Secret, Settings, load_settings
from migrate.validation import validate
from tests.conftest import Result
from tests.fake_registry import FakeRegistry, Reply
from tests.registries import RegistryUnderTest

Cli = Callable[..., Result]
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
INDEX = "application/vnd.oci.image.index.v1+json"
CRIO_NAME = "io.kubernetes.cri-o.annotations.checkpoint.name"
LAYER_TYPES = {"none": "application/vnd.oci.image.layer.v1.tar",
               "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
               "zstd": "application/vnd.oci.image.layer.v1.tar+zstd"}


BLOB_INFO_CACHE = Path("/var/lib/containers/cache/blob-info-cache-v1.boltdb")


@pytest.fixture(autouse=True)
def _cold_buildah_cache() -> None:
    """buildah reuses blobs it remembers pushing (even in another repository, in another
    compression); each test starts cold so that it pushes what it is asked to."""
    BLOB_INFO_CACHE.unlink(missing_ok=True)


def manifest(reg: RegistryUnderTest, repo: str, ref: str, accept: str = MANIFEST,
             scope_actions: str = "pull") -> dict[str, Any]:
    r = reg.http().request("GET", f"{reg.url}/v2/{repo}/manifests/{ref}",
                           headers={"Accept": accept,
                                    **reg.auth_headers(f"repository:{repo}:{scope_actions}")})
    assert r.status == 200, (r.status, r.data)
    doc: dict[str, Any] = json.loads(r.data)
    return doc


def archive_files(archive: Path) -> dict[str, bytes]:
    with tarfile.open(archive) as tf:
        return {m.name: tf.extractfile(m).read()  # type: ignore[union-attr]
                for m in tf.getmembers() if m.isreg()}


def pulled_root(image: str, reg: RegistryUnderTest) -> Iterator[Path]:
    """buildah pulls and mounts the image; yields its root."""
    args = ["--tls-verify=false"] if not reg.tls else ["--cert-dir", str(reg.cert_dir)]
    if reg.creds:
        args += ["--creds", reg.creds]
    ctr = subprocess.run(["buildah", "from", "-q", *args, image], check=True,
                         capture_output=True, text=True).stdout.strip()
    try:
        mnt = subprocess.run(["buildah", "mount", ctr], check=True, capture_output=True,
                             text=True).stdout.strip()
        yield Path(mnt)
    finally:
        subprocess.run(["buildah", "rm", ctr], capture_output=True)
        subprocess.run(["buildah", "rmi", "-f", image], capture_output=True)


def assert_root_holds_archive(image: str, reg: RegistryUnderTest, archive: Path) -> None:
    expected = archive_files(archive)
    for root in pulled_root(image, reg):
        for name, data in expected.items():
            assert (root / name).read_bytes() == data, name
        on_disk = {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}
        assert on_disk == set(expected)


@pytest.mark.parametrize(("builder", "compression"), [
    ("native", "none"), ("native", "gzip"), ("native", "zstd"),
    ("buildah", "gzip"), ("buildah", "zstd"),
])
def test_push_pull_back_byte_for_byte(cli: Cli, counters_archive: Path,
                                      plain_registry: RegistryUnderTest, unique_repo: str,
                                      builder: str, compression: str) -> None:
    image = f"{plain_registry.host}/{unique_repo}:v1"
    r = cli("build", counters_archive, "--image", image, "--builder", builder,
            "--compression", compression, "--no-tls-verify", "-o", "json")
    assert r.code == 0, r.err
    report = r.json()
    validate(report, "build.schema.json", "build -o json")
    assert report["reference"] == report["pod_image"] == f"{image}@{report['digest']}"
    doc = manifest(plain_registry, unique_repo, report["digest"])
    assert doc["layers"][0]["mediaType"] == LAYER_TYPES[compression]
    assert doc["layers"][0]["size"] == report["layer_size"]
    ann = doc["annotations"]
    assert ann[CRIO_NAME] == "counter"
    assert ann["org.criu.checkpoint.pod.name"] == "counters"
    assert ann["org.criu.checkpoint.pod.namespace"] == "default"
    assert ann["io.kubernetes.cri-o.annotations.checkpoint.rootfsImageName"] == \
        "quay.io/adrianreber/counter:blog"
    assert report["annotations"].items() <= ann.items()
    if builder == "native":
        config = json.loads(plain_registry.http().request(
            "GET", f"{plain_registry.url}/v2/{unique_repo}/blobs/{doc['config']['digest']}").data)
        archive_sha = hashlib.sha256(counters_archive.read_bytes()).hexdigest()
        assert config["rootfs"]["diff_ids"] == [f"sha256:{archive_sha}"]
        assert config["architecture"] == "amd64"
    assert_root_holds_archive(image, plain_registry, counters_archive)


def test_builders_make_equivalent_images(cli: Cli, counters_archive: Path,
                                         plain_registry: RegistryUnderTest,
                                         unique_repo: str) -> None:
    docs, roots = {}, {}
    for builder in ("native", "buildah"):
        image = f"{plain_registry.host}/{unique_repo}:{builder}"
        r = cli("build", counters_archive, "--image", image, "--builder", builder,
                "--compression", "gzip", "--no-tls-verify", "-o", "json")
        assert r.code == 0, r.err
        docs[builder] = manifest(plain_registry, unique_repo, builder)
        for root in pulled_root(image, plain_registry):
            roots[builder] = {str(p.relative_to(root)): p.read_bytes()
                              for p in root.rglob("*") if p.is_file()}
    ours = {k: v for k, v in docs["native"]["annotations"].items()}
    assert ours.items() <= docs["buildah"]["annotations"].items()
    assert roots["native"] == roots["buildah"]


def test_no_push_writes_an_oci_layout(cli: Cli, counters_archive: Path, tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    r = cli("build", counters_archive, "--image", "example.org/ckpt/counter:v2", "--no-push",
            "--oci-layout", layout, "--compression", "zstd", "-o", "json")
    assert r.code == 0, r.err
    report = r.json()
    assert report["destination"] == str(layout)
    assert report["layer_uploaded"] is False  # written, not uploaded
    index = json.loads((layout / "index.json").read_text())
    (entry,) = index["manifests"]
    assert entry["annotations"]["org.opencontainers.image.ref.name"] == "v2"
    assert entry["digest"] == report["digest"]
    blob = layout / "blobs" / "sha256" / entry["digest"].removeprefix("sha256:")
    doc = json.loads(blob.read_bytes())
    assert hashlib.sha256(blob.read_bytes()).hexdigest() == entry["digest"][7:]
    assert doc["annotations"][CRIO_NAME] == "counter"
    for f in (layout / "blobs" / "sha256").iterdir():
        assert f.stat().st_mode & 0o777 == 0o600, f
    assert not list((layout / "blobs" / "sha256").glob("*.partial"))
    # buildah reads the layout back: the root holds the archive.
    ctr = subprocess.run(["buildah", "from", "-q", f"oci:{layout}:v2"], check=True,
                         capture_output=True, text=True).stdout.strip()
    image_id = subprocess.run(["buildah", "inspect", "--format", "{{.FromImageID}}", ctr],
                              capture_output=True, text=True).stdout.strip()
    try:
        mnt = Path(subprocess.run(["buildah", "mount", ctr], check=True, capture_output=True,
                                  text=True).stdout.strip())
        assert (mnt / "spec.dump").read_bytes() == archive_files(counters_archive)["spec.dump"]
    finally:
        subprocess.run(["buildah", "rm", ctr], capture_output=True)
        subprocess.run(["buildah", "rmi", "-f", image_id], capture_output=True)


def _annotations_with_config(cli: Cli, archive: Path, tmp_path: Path,
                             **config: str) -> dict[str, str]:
    """The image annotations `build` derives from ``archive`` with these fields of its
    config.dump set."""
    from tests.test_untrusted_input import rewrite_member

    def change(data: bytes) -> bytes:
        return json.dumps({**json.loads(data), **config}).encode()

    changed = rewrite_member(archive, tmp_path / "changed.tar", "config.dump", change)
    notes: dict[str, str] = cli("build", changed, "--image", "example.org/c:1", "--no-push",
                                "--oci-layout", tmp_path / "c", "-o", "json").json()["annotations"]
    return notes


@pytest.mark.parametrize("asked", [
    "quay.io/adrianreber/counter:blog",  # crictl given a name (CRI-O >= 1.30)
    "d0b3e3b25b4e5b3c1a2f4e6d8c0b2a4f6e8d0c2b4a6f8e0d2c4b6a8f0e2d4c6b",  # another ID
])
def test_the_image_id_comes_from_rootfs_image_ref(
        cli: Cli, counters_archive: Path, tmp_path: Path, asked: str) -> None:
    """CRI-O keeps in config.dump's rootfsImage what the client asked for (a name, when
    crictl was given one) and the image's ID in rootfsImageRef: the annotation is the ID."""
    ref = "5e3f" * 16
    notes = _annotations_with_config(cli, counters_archive, tmp_path, rootfsImage=asked,
                                     rootfsImageRef=ref)
    assert notes["io.kubernetes.cri-o.annotations.checkpoint.rootfsImageID"] == ref
    assert notes["org.criu.checkpoint.rootfsImageID"] == ref


def test_an_older_cri_o_archive_names_the_image_id_in_rootfs_image(
        cli: Cli, counters_archive: Path, tmp_path: Path) -> None:
    """Before 1.30 rootfsImageRef was absent or a REPO@DIGEST; rootfsImage held the ID."""
    notes = _annotations_with_config(
        cli, counters_archive, tmp_path,
        rootfsImageRef="quay.io/adrianreber/counter@sha256:" + "4a" * 32)
    assert notes["org.criu.checkpoint.rootfsImageID"] == json.loads(
        archive_files(counters_archive)["config.dump"])["rootfsImage"]


PODMAN_KEYS = "io.podman.annotations.checkpoint."


def test_podman_annotations_only_for_podman_archives(
        cli: Cli, counters_archive: Path, make_archive: Callable[..., Path],
        tmp_path: Path) -> None:
    """Podman restores from libpod's config.dump: its keys go on images of its archives only.

    Podman 4.3 takes an image for a checkpoint when `...runtime.name` is present
    (the real restore is in tests/test_podman_sandbox.py)."""
    podman = make_archive("podman.tar", engine="libpod", runtime="runc")
    notes = cli("build", podman, "--image", "example.org/p:1", "--no-push", "--oci-layout",
                tmp_path / "p", "-o", "json").json()["annotations"]
    assert {k: v for k, v in notes.items() if k.startswith(PODMAN_KEYS)} == {
        PODMAN_KEYS + "name": "counter",
        PODMAN_KEYS + "rawImageName": "quay.io/adrianreber/counter:blog",
        PODMAN_KEYS + "rootfsImageID": (
            "d0b3e3b25b4e5b3c1a2f4e6d8c0b2a4f6e8d0c2b4a6f8e0d2c4b6a8f0e2d4c6b"),
        PODMAN_KEYS + "rootfsImageName": "quay.io/adrianreber/counter:blog",
        PODMAN_KEYS + "runtime.name": "runc",
        PODMAN_KEYS + "host.arch": "amd64",
    }
    crio = cli("build", counters_archive, "--image", "example.org/c:1", "--no-push",
               "--oci-layout", tmp_path / "c", "-o", "json").json()["annotations"]
    assert not [k for k in crio if k.startswith(PODMAN_KEYS)]
    assert crio[CRIO_NAME] == "counter"


def test_oci_index_carries_the_annotations(cli: Cli, counters_archive: Path,
                                           plain_registry: RegistryUnderTest,
                                           unique_repo: str) -> None:
    image = f"{plain_registry.host}/{unique_repo}:v1"
    r = cli("build", counters_archive, "--image", image, "--oci-index", "--no-tls-verify",
            "-o", "json")
    assert r.code == 0, r.err
    index = manifest(plain_registry, unique_repo, "v1", accept=INDEX)
    assert index["mediaType"] == INDEX
    assert index["annotations"][CRIO_NAME] == "counter"
    assert index["annotations"]["org.criu.checkpoint.container.name"] == "counter"
    inner = manifest(plain_registry, unique_repo, index["manifests"][0]["digest"])
    assert inner["annotations"] == index["annotations"]
    assert index["manifests"][0]["platform"] == {"architecture": "amd64", "os": "linux"}


@pytest.mark.parametrize("how", ["creds", "authfile", "env"])
def test_tls_and_basic_auth(cli: Cli, counters_archive: Path, tmp_path: Path,
                            tls_basic_registry: RegistryUnderTest, unique_repo: str,
                            monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    reg = tls_basic_registry
    image = f"{reg.host}/{unique_repo}:v1"
    auth = tmp_path / "auth.json"
    import base64
    auth.write_text(json.dumps({"auths": {reg.host: {
        "auth": base64.b64encode(f"{reg.username}:{reg.password}".encode()).decode()}}}))
    args: list[str | Path] = {"creds": ["--creds", f"{reg.username}:{reg.password}"],
                              "authfile": ["--authfile", auth], "env": []}[how]
    if how == "env":
        monkeypatch.setenv("REGISTRY_AUTH_FILE", str(auth))
    r = cli("build", counters_archive, "--image", image, "--cert-dir", reg.cert_dir, *args,
            "--compression", "gzip", "-o", "json")
    assert r.code == 0, r.err
    assert manifest(reg, unique_repo, "v1")["annotations"][CRIO_NAME] == "counter"


def test_wrong_credentials(cli: Cli, counters_archive: Path,
                           tls_basic_registry: RegistryUnderTest, unique_repo: str) -> None:
    reg = tls_basic_registry
    r = cli("build", counters_archive, "--image", f"{reg.host}/{unique_repo}:v1",
            "--cert-dir", reg.cert_dir, "--creds", "alice:not-the-password")
    assert r.code == ExitCode.AUTH
    assert r.err == (f"error: {reg.host}: login failed: HTTP 401 (UNAUTHORIZED: authentication "
                     "required) as 'alice'\n"
                     "hint: check the user and password (--creds USER:PASS or --authfile "
                     "FILE)\n")
    assert "not-the-password" not in r.out + r.err


def test_tls_without_the_ca(cli: Cli, counters_archive: Path,
                            tls_basic_registry: RegistryUnderTest, unique_repo: str) -> None:
    reg = tls_basic_registry
    r = cli("build", counters_archive, "--image", f"{reg.host}/{unique_repo}:v1",
            "--creds", f"{reg.username}:{reg.password}")
    assert r.code == ExitCode.REGISTRY
    assert r.err == (f"error: TLS with {reg.host} failed: SSLError\n"
                     "hint: give the registry's CA with --cert-dir DIR (DIR/*.crt), or "
                     "--no-tls-verify\n")


def test_bearer_token_auth(cli: Cli, counters_archive: Path, token_registry: RegistryUnderTest,
                           unique_repo: str) -> None:
    reg = token_registry
    before = reg.token_requests
    r = cli("build", counters_archive, "--image", f"{reg.host}/{unique_repo}:v1",
            "--cert-dir", reg.cert_dir, "--creds", f"{reg.username}:{reg.password}",
            "--compression", "zstd")
    assert r.code == 0, r.err
    assert reg.token_requests > before
    assert manifest(reg, unique_repo, "v1")["annotations"][CRIO_NAME] == "counter"


def _catalog(reg: RegistryUnderTest) -> list[str]:
    data = json.loads(reg.http().request("GET", f"{reg.url}/v2/_catalog").data)
    repos: list[str] = data["repositories"]
    return repos


@pytest.mark.parametrize(("spec", "line"), [
    ({"annotations": {}}, None),
    ({"omit": ("spec.dump",)}, "spec.dump: missing from the archive"),
])
def test_refuses_what_crio_would_refuse_before_uploading(
        cli: Cli, make_archive: Callable[..., Path], plain_registry: RegistryUnderTest,
        unique_repo: str, spec: dict[str, Any], line: str | None) -> None:
    archive = make_archive(**spec)
    if line is None:
        # Remove io.kubernetes.cri-o.Annotations from spec.dump.
        members = archive_files(archive)
        doc = json.loads(members["spec.dump"])
        del doc["annotations"]["io.kubernetes.cri-o.Annotations"]
        archive = make_archive("no-annotations.tar",
                               extra_members={"spec.dump": json.dumps(doc).encode()})
        line = "spec.dump: has no io.kubernetes.cri-o.Annotations annotation"
    r = cli("build", archive, "--image", f"{plain_registry.host}/{unique_repo}:v1",
            "--no-tls-verify")
    assert r.code == ExitCode.INVALID_INPUT
    assert r.err.splitlines()[0] == f"error: {archive}: {line}"
    if "missing" not in line:
        assert r.err.splitlines()[1] == ("hint: CRI-O would refuse to restore from it; "
                                         "nothing was uploaded")
    assert unique_repo not in _catalog(plain_registry)


def _settings(**retry: Any) -> Settings:
    s = load_settings(env={})
    return dataclasses.replace(s, registry=dataclasses.replace(
        s.registry, tls_verify=False, chunk_bytes=64 * 1024,
        retry=RetrySettings(**{"initial_wait": 0.0, "max_wait": 0.0, **retry})))


def test_registry_stopped_mid_upload_leaves_no_tag(
        make_archive: Callable[..., Path], fresh_registry: Any, unique_repo: str) -> None:
    reg = fresh_registry()
    archive = make_archive(bulk_pages=1024)  # 4 MiB of memory pages
    killed: list[int] = []

    def kill_after_first_block(read: int) -> None:
        if not killed:
            killed.append(read)
            reg.registry.kill()

    req = BuildRequest(archive, parse_reference(f"{reg.host}/{unique_repo}:v1"))
    with pytest.raises(TransientRegistryError, match="cannot reach"):
        build_image(req, _settings(attempts=2), on_progress=kill_after_first_block)
    assert killed and killed[0] < archive.stat().st_size
    reg.registry.restart()
    r = reg.http().request("GET", f"{reg.url}/v2/{unique_repo}/manifests/v1",
                           headers={"Accept": MANIFEST})
    assert r.status == 404  # no tag points at a partial image


def test_transient_failure_mid_upload_is_retried(
        make_archive: Callable[..., Path], fresh_registry: Any, unique_repo: str) -> None:
    reg = fresh_registry()
    archive = make_archive(bulk_pages=1024)
    reads: list[int] = []

    def restart_once(read: int) -> None:
        reads.append(read)
        if len(reads) == 1:
            reg.registry.restart()  # the connection in flight breaks

    req = BuildRequest(archive, parse_reference(f"{reg.host}/{unique_repo}:v1"))
    report = build_image(req, _settings(attempts=3), on_progress=restart_once)
    # The second attempt read the archive again from its start.
    assert reads.count(64 * 1024) == 2
    doc = manifest(reg, unique_repo, "v1")
    assert doc["layers"][0]["digest"] == "sha256:" + hashlib.sha256(
        archive.read_bytes()).hexdigest()
    assert report.digest


def test_build_usage_errors(cli: Cli, counters_archive: Path, tmp_path: Path) -> None:
    r = cli("build", counters_archive, "--image", "Bad Name")
    assert r.code == 2
    assert r.err.splitlines()[0] == ("error: invalid image reference 'Bad Name': repository "
                                     "names are lower-case letters, digits and . _ - separators")
    r = cli("build", counters_archive, "--image", "example.org/a:v1", "--no-push")
    assert (r.code, r.err.splitlines()[0]) == (
        2, "error: --no-push needs --oci-layout DIR to put the image somewhere")
    r = cli("build", counters_archive, "--image", "example.org/a:v1", "--creds", "nocolon")
    assert (r.code, r.err.splitlines()[0]) == (2, "error: --creds must be USER:PASSWORD")
    r = cli("build", counters_archive, "--image", "example.org/a:v1", "--oci-layout", tmp_path)
    assert r.code == 2 and "add --no-push" in r.err
    r = cli("build", counters_archive, "--image", "example.org/a:v1", "--builder", "buildah",
            "--compression", "none")
    assert r.err == ("error: buildah cannot push uncompressed layers\n"
                     "hint: use --builder native for --compression none, or give buildah "
                     "--compression gzip or zstd\n")
    r = cli("build", counters_archive)
    assert (r.code, r.err) == (2, "error: say where to push: --image REGISTRY/REPOSITORY[:TAG]\n"
                                  "hint: or write an OCI layout: --no-push --oci-layout DIR\n")


def test_an_oci_layout_needs_no_image_name(cli: Cli, counters_archive: Path,
                                           tmp_path: Path) -> None:
    r = cli("build", counters_archive, "--no-push", "--oci-layout", tmp_path / "l", "-o", "json")
    assert r.code == 0, r.err
    report = r.json()
    validate(report, "build.schema.json", "build -o json")
    assert (report["image"], report["layer_uploaded"]) == (
        "localhost/checkpoint-counter:latest", False)
    (entry,) = json.loads((tmp_path / "l" / "index.json").read_text())["manifests"]
    assert entry["annotations"]["org.opencontainers.image.ref.name"] == "latest"
    assert entry["digest"] == report["digest"]


def test_buildah_without_a_compression_uses_gzip(cli: Cli, counters_archive: Path,
                                                 tmp_path: Path) -> None:
    if shutil.which("buildah") is None:
        pytest.skip("buildah is not installed")
    r = cli("build", counters_archive, "--builder", "buildah", "--no-push", "--oci-layout",
            tmp_path / "l", "-o", "json")
    assert r.code == 0, r.err
    assert (r.json()["compression"], r.json()["layer_uploaded"]) == ("gzip", False)
    (entry,) = json.loads((tmp_path / "l" / "index.json").read_text())["manifests"]
    manifest = json.loads((tmp_path / "l" / "blobs" / "sha256" /
                           entry["digest"].removeprefix("sha256:")).read_bytes())
    assert manifest["layers"][0]["mediaType"].endswith("+gzip")


def test_files_written_are_private(counters_archive: Path, tmp_path: Path) -> None:
    os.umask(0o022)
    req = BuildRequest(counters_archive, parse_reference("example.org/a:v1"), push=False,
                       oci_layout=tmp_path / "l")
    build_image(req, _settings())
    assert (tmp_path / "l" / "index.json").stat().st_mode & 0o777 == 0o600


def test_repeat_push_skips_the_layer_the_registry_has(
        cli: Cli, make_archive: Callable[..., Path], plain_registry: RegistryUnderTest,
        unique_repo: str, _private_cache: Path) -> None:
    archive = make_archive(bulk_pages=256)
    image = f"{plain_registry.host}/{unique_repo}:v1"
    args = ("build", archive, "--image", image, "--no-tls-verify", "--compression", "zstd",
            "-o", "json")
    first = cli(*args).json()
    assert first["layer_uploaded"] is True
    cache = _private_cache / "layer-digests.json"
    assert cache.stat().st_mode & 0o777 == 0o600
    second = cli(*args).json()
    assert second["layer_uploaded"] is False
    assert second["digest"] == first["digest"]  # the very same image
    # A changed archive (new mtime) is streamed again, even with the same bytes.
    os.utime(archive, ns=(1, 1))
    assert cli(*args).json()["layer_uploaded"] is True


def test_cached_digest_is_confirmed_with_the_registry(
        cli: Cli, counters_archive: Path, fresh_registry: Any, unique_repo: str) -> None:
    """A cache hit for a registry that lost (or never had) the blob still uploads it."""
    first, second = fresh_registry(), fresh_registry()
    for reg, expected in ((first, True), (second, True), (first, False)):
        r = cli("build", counters_archive, "--image", f"{reg.host}/{unique_repo}:v1",
                "--no-tls-verify", "-o", "json")
        assert r.code == 0, r.err
        assert r.json()["layer_uploaded"] is expected


def test_refuses_an_archive_naming_no_container(
        cli: Cli, make_archive: Callable[..., Path], plain_registry: RegistryUnderTest,
        unique_repo: str) -> None:
    base = make_archive()
    doc = json.loads(archive_files(base)["spec.dump"])
    for key in ("io.kubernetes.cri-o.Metadata", "io.kubernetes.container.name"):
        del doc["annotations"][key]
    config = json.loads(archive_files(base)["config.dump"])
    config["name"] = ""
    archive = make_archive("nameless.tar", extra_members={
        "spec.dump": json.dumps(doc).encode(), "config.dump": json.dumps(config).encode()})
    r = cli("build", archive, "--image", f"{plain_registry.host}/{unique_repo}:v1",
            "--no-tls-verify")
    assert r.code == ExitCode.INVALID_INPUT
    assert r.err == (f"error: {archive}: spec.dump: names no container\n"
                     "hint: CRI-O would refuse to restore from it; nothing was uploaded\n")
    assert unique_repo not in _catalog(plain_registry)


def test_plain_http_only_with_no_tls_verify(cli: Cli, counters_archive: Path,
                                            plain_registry: RegistryUnderTest,
                                            unique_repo: str) -> None:
    r = cli("build", counters_archive, "--image", f"{plain_registry.host}/{unique_repo}:v1")
    assert r.code == ExitCode.REGISTRY
    assert r.err == (f"error: TLS with {plain_registry.host} failed: SSLError\n"
                     "hint: give the registry's CA with --cert-dir DIR (DIR/*.crt), or "
                     "--no-tls-verify\n")
    assert unique_repo not in _catalog(plain_registry)


@pytest.mark.parametrize(("image", "loopback"), [
    ("127.0.0.1:5000/a:v1", True), ("127.9.9.9/a", True), ("localhost/a", True),
    ("localhost:5000/a", True), ("[::1]:5000/a", True), ("198.18.0.1:5000/a", False),
    ("registry.example/a", False), ("busybox", False), ("localhost.example/a", False)])
def test_a_registry_on_loopback_is_told_apart(image: str, loopback: bool) -> None:
    # What no pod reaches (a build Job's push, a scheduled drain): its own loopback.
    assert parse_reference(image).loopback is loopback


# -- what a push asks of the registry --------------------------------------------------------


def _client_requests(reg: RegistryUnderTest, since: int = 0) -> list[tuple[str, str]]:
    """The registry's access log from byte ``since``: migrate's requests (urllib3's), as
    (method, path with digests and upload sessions named generically)."""
    seen: list[tuple[str, str]] = []
    with open(reg.registry.log_path, "rb") as log:
        log.seek(since)
        for line in log.read().decode(errors="replace").splitlines():
            m = re.search(r'"([A-Z]+) (/v2/\S*) HTTP/[0-9.]+" \d+ \d+ "[^"]*" "python-urllib3', line)
            if m:
                path = re.sub(r"sha256:[0-9a-f]{64}", "DIGEST", m[2].split("?")[0])
                seen.append((m[1], re.sub(r"/uploads/[^/]+$", "/uploads/SESSION", path)))
    return seen


def test_a_native_push_asks_nothing_it_need_not(
        make_archive: Callable[..., Path], fresh_registry: Any, unique_repo: str) -> None:
    """The login, the config and the layer uploaded, the manifest: no check for a config
    the registry cannot have (it names the checkpoint's time), and no reading the
    manifest back, which the registry stored under the digest of what was sent."""
    reg = fresh_registry()
    req = BuildRequest(make_archive(), parse_reference(f"{reg.host}/{unique_repo}:v1"))
    report = build_image(req, _settings())
    session = f"/v2/{unique_repo}/blobs/uploads/SESSION"
    assert _client_requests(reg) == [
        ("GET", "/v2/"),
        ("POST", f"/v2/{unique_repo}/blobs/uploads/"), ("PATCH", session), ("PUT", session),
        ("POST", f"/v2/{unique_repo}/blobs/uploads/"), ("PUT", session),
        ("PUT", f"/v2/{unique_repo}/manifests/v1")]
    assert "verify" not in report.timings
    doc = manifest(reg, unique_repo, report.digest)
    assert doc["annotations"][CRIO_NAME] == "counter"
    assert report.layer_size == doc["layers"][0]["size"]


def _fake_push(fake: FakeRegistry, stored: str | None) -> None:
    """Script a whole push: uploads accepted, the manifest answered with ``stored`` as
    the digest it was stored under (None: not said)."""
    session = "/v2/repo/blobs/uploads/s1"
    fake.script("POST", "/v2/repo/blobs/uploads/", Reply(202, {"Location": session}))
    fake.script("PATCH", session, Reply(202, {"Location": session}))
    fake.script("PUT", session, Reply(201))
    fake.script("PUT", "/v2/repo/manifests/tag",
                Reply(201, {"Docker-Content-Digest": stored} if stored else {}))


def test_a_manifest_stored_under_another_digest_is_refused(
        make_archive: Callable[..., Path], fake: FakeRegistry) -> None:
    _fake_push(fake, "sha256:" + "0" * 64)
    req = BuildRequest(make_archive(), parse_reference(f"{fake.host}/repo:tag"))
    with pytest.raises(RegistryError, match=r"stored the .* as sha256:0{64}, not as the "
                       r"sha256:[0-9a-f]{64} that was sent") as e:
        build_image(req, _settings())
    assert e.value.hint == "the registry altered the manifest; CRI-O would not restore it"


def test_a_manifest_stored_without_its_digest_said_is_read_back(
        make_archive: Callable[..., Path], fake: FakeRegistry) -> None:
    """A registry that does not name the digest it stored the manifest under: migrate
    reads it back by the digest it computed (here it is not there: refused)."""
    _fake_push(fake, None)
    req = BuildRequest(make_archive(), parse_reference(f"{fake.host}/repo:tag"))
    with pytest.raises(RegistryError, match="manifest fetch"):
        build_image(req, _settings(attempts=1))
    read_back = [s.path for s in fake.seen if s.method == "GET" and "/manifests/" in s.path]
    assert len(read_back) == 1 and read_back[0].startswith("/v2/repo/manifests/sha256:")


# -- preflight's login, shared by a drain's pods --------------------------------------------


def test_preflight_logs_in_to_a_basic_registry_once_for_its_repositories(
        plain_basic_registry: RegistryUnderTest) -> None:
    reg = plain_basic_registry
    settings = dataclasses.replace(_settings(), registry=dataclasses.replace(
        _settings().registry, creds=(str(reg.username), Secret(str(reg.password)))))
    memo: dict[str, Any] = {}
    since = reg.registry.log_path.stat().st_size
    check_registry(settings, {"a": f"{reg.host}/drain/one:v1"}, memo)
    logged_in = _client_requests(reg, since)
    assert logged_in == [("GET", "/v2/"), ("GET", "/v2/")]  # challenged, then answered
    check_registry(settings, {"a": f"{reg.host}/drain/two:v1"}, memo)
    assert _client_requests(reg, since) == logged_in
    # Without the memo (one `migrate pod`), and once it is old, it logs in again.
    check_registry(settings, {"a": f"{reg.host}/drain/two:v1"})
    memo["registry_logins"] = {k: t - RECENT_LOGIN_SECONDS - 1
                               for k, t in memo["registry_logins"].items()}
    check_registry(settings, {"a": f"{reg.host}/drain/two:v1"}, memo)
    assert len(_client_requests(reg, since)) == 3 * len(logged_in)


def test_preflight_logs_in_again_for_another_repository_of_a_token_registry(
        token_registry: RegistryUnderTest, unique_repo: str) -> None:
    """A Bearer token holds for one repository: the next pod's is asked for again."""
    reg = token_registry
    settings = dataclasses.replace(_settings(), registry=dataclasses.replace(
        _settings().registry, tls_verify=True, cert_dir=reg.cert_dir,
        creds=(str(reg.username), Secret(str(reg.password)))))
    memo: dict[str, Any] = {}
    before = reg.token_requests
    for repo in ("one", "one", "two"):
        check_registry(settings, {"a": f"{reg.host}/{unique_repo}/{repo}:v1"}, memo)
    assert reg.token_requests - before == 2


# -- what a registry's answer may make the client hold ----------------------------------------


def test_an_answer_larger_than_any_registry_sends_is_refused_not_buffered(
        fake: FakeRegistry) -> None:
    """Every answer is read into memory up to MAX_ANSWER_BYTES (a manifest's limit in
    distribution); a broken or hostile registry sending more is refused, and the client
    goes on working for the next request on a new connection."""
    client = RegistryClient(parse_reference(f"{fake.host}/repo:tag"), _settings().registry)
    client.login()
    huge = b'{"tags": [' + b'"t",' * (MAX_ANSWER_BYTES // 4) + b'"t"]}'
    fake.script("GET", "/v2/repo/tags/list", Reply(200, body=huge),
                Reply(200, body=b'{"tags": ["v1"]}'))
    with pytest.raises(RegistryError) as e:
        client.list_tags()
    assert e.value.message == (f"{fake.host}: answered 200 with more than {MAX_ANSWER_BYTES} "
                               "bytes")
    assert e.value.hint == "is this an OCI distribution registry?"
    assert client.list_tags() == ["v1"]
    # Exactly the limit is an answer like any other.
    body = json.dumps({"tags": ["v2"]}).encode()
    fake.script("GET", "/v2/repo/tags/list",
                Reply(200, body=body + b" " * (MAX_ANSWER_BYTES - len(body))))
    assert client.list_tags() == ["v2"]
