"""The buildah adapter: exact calls and cleanup against a fake buildah; images,
pushes and their failures against the real buildah and real registries
(tests.registries: distribution over HTTPS, Basic and Bearer-token auth)."""

from __future__ import annotations

import base64
import gzip
import io
import json
import logging
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from migrate.adapters.buildah import BuildahPush, build_with_buildah
from migrate.errors import (
    AuthError,
    DependencyError,
    ExitCode,
    MigrateError,
    NotFoundError,
    RegistryError,
    UsageError,
)
from migrate.settings import Secret
from tests.registries import RegistryUnderTest

PASSWORD = "pa55-Wörd-do-not-leak"
IMAGE_ID = "f00d" * 16
DIGEST = "sha256:" + "ab" * 32
ANNOTATIONS = {"io.kubernetes.cri-o.annotations.checkpoint.name": "counter", "x.eq": "a=b"}

# The fake records its argv (one JSON list a line), snapshots any authfile and
# the digest file's directory while they exist, then fails or answers like buildah.
FAKE_BODY = r'''
import json, os, signal, sys, time
args = sys.argv[1:]
sub = args[0]
with open(CFG["log"], "a") as f:
    f.write(json.dumps(args) + "\n")
def arg(flag):
    return args[args.index(flag) + 1]
if "--authfile" in args and os.path.exists(arg("--authfile")):
    p = arg("--authfile")
    snap = {"path": p, "mode": os.stat(p).st_mode & 0o777, "content": json.load(open(p))}
    json.dump(snap, open(CFG["log"] + ".auth", "w"))
if sub == CFG["hang"]:
    time.sleep(30)
if sub == CFG["interrupt"]:
    os.kill(os.getppid(), signal.SIGINT)
    time.sleep(0.5)
    sys.exit(130)
if sub in CFG["fail"]:
    sys.stderr.write(CFG["stderr"])
    sys.exit(CFG["code"])
if sub == "from":
    print(arg("--name"))
elif sub == "commit":
    print(CFG["image_id"])
elif sub == "push":
    d = os.path.dirname(arg("--digestfile"))
    json.dump({"dir": d, "mode": os.stat(d).st_mode & 0o777}, open(CFG["log"] + ".dir", "w"))
    open(arg("--digestfile"), "w").write(CFG["digest"] + "\n")
'''


@dataclass
class Fake:
    """A fake buildah executable and what it recorded."""

    exe: Path
    log: Path

    def calls(self) -> list[list[str]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def snapshot(self, suffix: str) -> dict[str, Any]:
        return dict(json.loads(Path(f"{self.log}{suffix}").read_text()))


@pytest.fixture
def fake(tmp_path: Path) -> Any:
    def make(fail: tuple[str, ...] = (), stderr: str = "", code: int = 125,
             interrupt: str | None = None, hang: str | None = None,
             digest: str = DIGEST) -> Fake:
        log = tmp_path / "calls.jsonl"
        cfg = {"log": str(log), "fail": list(fail), "stderr": stderr, "code": code,
               "interrupt": interrupt, "hang": hang, "image_id": IMAGE_ID, "digest": digest}
        exe = tmp_path / "fake-buildah"
        exe.write_text(f"#!{sys.executable}\nimport json\nCFG = json.loads({json.dumps(cfg)!r})\n{FAKE_BODY}")
        exe.chmod(0o755)
        return Fake(exe, log)

    return make


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    path = tmp_path / "checkpoint.tar"
    path.write_bytes(b"not read by the fake")
    return path


@pytest.fixture
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temp root of the test's own, so leftover temp files can be seen."""
    root = tmp_path / "tmproot"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    return root


def expected_calls(name: str, archive: Path, push: list[str] | None) -> list[list[str]]:
    """Every call of a build that succeeds, ``push`` being the push call's argv."""
    image = f"localhost/{name}:latest"
    annotations = [f"--annotation={k}={v}" for k, v in ANNOTATIONS.items()]
    calls = [["from", "--name", name, "scratch"], ["add", name, str(archive), "/"],
             ["config", *annotations, name],
             ["commit", "--quiet", "--format", "oci", name, image]]
    return [*calls, *([push] if push else []), ["rm", name], ["rmi", image]]


def test_build_push_with_creds_exact_calls(fake: Any, archive: Path, private_tmp: Path) -> None:
    f = fake()
    push = BuildahPush("127.0.0.1:5000/ckpt/app:v1", creds=("alice", Secret(PASSWORD)))
    result = build_with_buildah(archive, ANNOTATIONS, push=push, executable=str(f.exe))

    calls = f.calls()
    name = calls[0][2]
    assert re.fullmatch(r"migrate-checkpoint-[0-9a-f]{16}", name)
    auth = f.snapshot(".auth")
    digest_dir = f.snapshot(".dir")
    push_call = ["push", "--quiet", "--digestfile", f"{digest_dir['dir']}/digest",
                 "--authfile", auth["path"], "--compression-format", "gzip",
                 f"localhost/{name}:latest", "docker://127.0.0.1:5000/ckpt/app:v1"]
    assert calls == expected_calls(name, archive, push_call)
    assert (result.image_id, result.digest) == (IMAGE_ID, DIGEST)
    assert set(result.timings) == {"from", "add", "config", "commit", "push", "cleanup"}
    # Credentials: only in a 0600 file inside a 0700 dir, both gone afterwards.
    token = base64.b64encode(f"alice:{PASSWORD}".encode()).decode()
    assert auth["content"] == {"auths": {"127.0.0.1:5000": {"auth": token}}}
    assert (auth["mode"], digest_dir["mode"]) == (0o600, 0o700)
    assert not any(PASSWORD in a or token in a for call in calls for a in call)
    assert not Path(auth["path"]).exists()
    assert list(private_tmp.iterdir()) == []


def test_push_flags(fake: Any, archive: Path, tmp_path: Path) -> None:
    f = fake()
    push = BuildahPush("docker://reg.example/ckpt/app:v2", tls_verify=False,
                       cert_dir=tmp_path / "certs", authfile=tmp_path / "auth.json",
                       compression="none")
    build_with_buildah(archive, ANNOTATIONS, push=push, executable=str(f.exe))
    call = f.calls()[4]
    assert call[:2] == ["push", "--quiet"] and call[2] == "--digestfile"
    assert call[4:] == ["--tls-verify=false", "--cert-dir", str(tmp_path / "certs"),
                        "--authfile", str(tmp_path / "auth.json"), "--disable-compression",
                        call[-2], "docker://reg.example/ckpt/app:v2"]


def test_build_only_and_verbatim_transport(fake: Any, archive: Path) -> None:
    f = fake()
    result = build_with_buildah(archive, ANNOTATIONS, push=None, executable=str(f.exe))
    assert result.digest is None and "push" not in result.timings
    assert f.calls() == expected_calls(f.calls()[0][2], archive, None)

    f.log.unlink()
    build_with_buildah(archive, {}, push=BuildahPush("oci:/some/dir:v1", compression="zstd"),
                       executable=str(f.exe))
    assert [c[0] for c in f.calls()] == ["from", "add", "commit", "push", "rm", "rmi"]
    assert f.calls()[3][-3:] == ["zstd", f.calls()[3][-2], "oci:/some/dir:v1"]


STDERR = ("time=\"...\" level=warning msg=\"noise\"\n" + "x" * 600 + "\n"
          "Error: adding content to container: no space left on device\n")


@pytest.mark.parametrize(("step", "error"), [
    ("add", DependencyError), ("config", DependencyError),
    ("commit", DependencyError), ("push", RegistryError)])
def test_failure_at_each_step_cleans_up(fake: Any, archive: Path, private_tmp: Path,
                                         step: str, error: type[MigrateError]) -> None:
    f = fake(fail=(step,), stderr=STDERR)
    push = BuildahPush("127.0.0.1:5000/ckpt/app:v1", creds=("alice", Secret(PASSWORD)))
    with pytest.raises(error) as exc:
        build_with_buildah(archive, ANNOTATIONS, push=push, executable=str(f.exe))
    # Only the last line fits in 500 characters beside the 600-character one.
    assert exc.value.message == (
        f"buildah {step} failed: Error: adding content to container: no space left on device")
    assert exc.value.hint
    assert exc.value.exit_code == (ExitCode.REGISTRY if step == "push" else ExitCode.DEPENDENCY)
    ran = {"add": ["from", "add", "rm"], "config": ["from", "add", "config", "rm"],
           "commit": ["from", "add", "config", "commit", "rm"],
           "push": ["from", "add", "config", "commit", "push", "rm", "rmi"]}[step]
    calls = f.calls()
    assert [c[0] for c in calls] == ran
    name = calls[0][2]
    assert calls[len(ran) - (2 if step == "push" else 1):] == [
        ["rm", name], *([["rmi", f"localhost/{name}:latest"]] if step == "push" else [])]
    assert list(private_tmp.iterdir()) == []


def test_failure_at_from_removes_nothing(fake: Any, archive: Path) -> None:
    f = fake(fail=("from",), stderr="Error: some storage trouble\n")
    with pytest.raises(DependencyError, match=r"^buildah from failed: Error: some storage"):
        build_with_buildah(archive, ANNOTATIONS, push=None, executable=str(f.exe))
    assert [c[0] for c in f.calls()] == ["from"]


def test_cleanup_failure_never_masks_the_error(fake: Any, archive: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    f = fake(fail=("config", "rm"), stderr="Error: boom\n")
    with pytest.raises(DependencyError, match=r"^buildah config failed: Error: boom$"):
        build_with_buildah(archive, ANNOTATIONS, push=None, executable=str(f.exe))
    assert "cleanup: buildah rm failed: Error: boom" in caplog.text


def test_cleanup_failure_after_success_is_logged(fake: Any, archive: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    f = fake(fail=("rmi",), stderr="Error: image in use\n")
    result = build_with_buildah(archive, ANNOTATIONS, push=None, executable=str(f.exe))
    assert result.image_id == IMAGE_ID
    assert "cleanup: buildah rmi failed: Error: image in use" in caplog.text


@pytest.mark.parametrize("stderr", [
    "Error: pushing image: checking whether a blob exists: unauthorized: authentication required\n",
    "Error: writing manifest: StatusCode: 401, \"\"\n",
    "Error: denied: requested access to the resource is denied\n"])
def test_auth_failure_gives_auth_error(fake: Any, archive: Path, stderr: str) -> None:
    f = fake(fail=("push",), stderr=stderr)
    push = BuildahPush("127.0.0.1:5000/ckpt/app:v1", creds=("alice", Secret(PASSWORD)))
    with pytest.raises(AuthError) as exc:
        build_with_buildah(archive, ANNOTATIONS, push=push, executable=str(f.exe))
    assert exc.value.exit_code == ExitCode.AUTH
    assert exc.value.message == f"buildah push failed: {stderr.strip()}"
    assert [c[0] for c in f.calls()][-2:] == ["rm", "rmi"]


def test_echoed_password_is_scrubbed(fake: Any, archive: Path) -> None:
    token = base64.b64encode(f"alice:{PASSWORD}".encode()).decode()
    f = fake(fail=("push",), stderr=f"Error: bad creds alice:{PASSWORD} ({token}): 401\n")
    push = BuildahPush("127.0.0.1:5000/ckpt/app:v1", creds=("alice", Secret(PASSWORD)))
    with pytest.raises(AuthError) as exc:
        build_with_buildah(archive, ANNOTATIONS, push=push, executable=str(f.exe))
    assert exc.value.message == "buildah push failed: Error: bad creds alice:*** (***): 401"
    # Not in the chained exceptions either: a --debug traceback prints them.
    text = "".join(traceback.format_exception(exc.value))
    assert PASSWORD not in text and token not in text


def test_interrupt_still_cleans_up(fake: Any, archive: Path) -> None:
    f = fake(interrupt="config")
    # Python maps SIGINT to KeyboardInterrupt only if SIGINT was not ignored when it
    # started, and a shell ignores it in what it runs in the background (`scripts/test &`).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            build_with_buildah(archive, ANNOTATIONS, push=None, executable=str(f.exe))
    finally:
        signal.signal(signal.SIGINT, previous)
    assert [c[0] for c in f.calls()] == ["from", "add", "config", "rm"]


def test_timeout_kills_the_call_and_cleans_up(fake: Any, archive: Path) -> None:
    f = fake(hang="add")
    start = time.monotonic()
    with pytest.raises(DependencyError, match=r"^buildah add timed out after 0.5 s$"):
        build_with_buildah(archive, ANNOTATIONS, push=None, executable=str(f.exe), timeout=0.5)
    assert time.monotonic() - start < 10
    assert [c[0] for c in f.calls()] == ["from", "add", "rm"]


def test_missing_digest_is_an_error(fake: Any, archive: Path) -> None:
    f = fake(digest="")
    with pytest.raises(DependencyError, match="wrote no digest"):
        build_with_buildah(archive, {}, push=BuildahPush("r.example/a:b"), executable=str(f.exe))
    assert [c[0] for c in f.calls()][-2:] == ["rm", "rmi"]


@pytest.mark.parametrize(("push", "error"), [
    (BuildahPush("r.example/a:b", compression="lz4"), UsageError),
    (BuildahPush("r.example/A:b"), UsageError)])
def test_bad_input_refused_before_buildah_runs(fake: Any, archive: Path, push: BuildahPush,
                                               error: type[MigrateError]) -> None:
    f = fake()
    with pytest.raises(error):
        build_with_buildah(archive, {}, push=push, executable=str(f.exe))
    with pytest.raises(NotFoundError):
        build_with_buildah(archive.with_name("nope.tar"), {}, push=None, executable=str(f.exe))
    assert f.calls() == []


def test_missing_buildah(archive: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(DependencyError) as exc:
        build_with_buildah(archive, {}, push=None, executable=str(tmp_path / "no-buildah"))
    assert exc.value.message == f"buildah is not installed ({tmp_path / 'no-buildah'} not found)"
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(DependencyError) as exc:
        build_with_buildah(archive, {}, push=None)
    assert (exc.value.message, exc.value.hint) == (
        "buildah is not installed",
        "install it: apt-get install buildah (Debian/Ubuntu) or dnf install buildah")
    assert exc.value.exit_code == ExitCode.DEPENDENCY


# ---- the real buildah ------------------------------------------------------------------

real = pytest.mark.skipif(shutil.which("buildah") is None, reason="buildah is not installed")


@pytest.fixture
def no_leftovers(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """After the test: the build's container and image are gone from buildah.

    The names come from the adapter's debug log, not a `migrate-checkpoint-*`
    pattern: other builds may be running on this machine at the same time.
    """
    caplog.set_level(logging.DEBUG, logger="migrate.adapters.buildah")
    yield
    text = "\n".join(r.getMessage() for r in caplog.get_records("call"))
    names = re.findall(r"buildah from --name (migrate-checkpoint-[0-9a-f]+)", text)
    assert names, "the build never started"
    fmt = {"containers": "{{.ContainerName}}", "images": "{{.Name}}"}
    for what, f in fmt.items():
        out = subprocess.run(["buildah", what, "--format", f], check=True,
                             capture_output=True, text=True).stdout
        assert not [n for n in names if n in out], f"left in buildah {what}: {out}"


def regular_files(tar: tarfile.TarFile) -> dict[str, bytes]:
    out = {}
    for m in tar.getmembers():
        if m.isfile():
            data = tar.extractfile(m)
            assert data is not None
            out[m.name.removeprefix("./")] = data.read()
    return out


def layer_files(blob: bytes, media_type: str) -> dict[str, bytes]:
    if media_type.endswith("+zstd"):
        zstd = pytest.importorskip("zstandard")
        blob = zstd.ZstdDecompressor().decompressobj().decompress(blob)
    elif media_type.endswith("+gzip"):
        blob = gzip.decompress(blob)
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        return regular_files(tar)


@real
@pytest.mark.parametrize("compression", ["gzip", "none", "zstd"])
def test_real_build_to_oci_layout(counters_archive: Path, tmp_path: Path, no_leftovers: None,
                                  compression: str) -> None:
    layout = tmp_path / "layout"
    push = BuildahPush(f"oci:{layout}:v1", compression=compression)
    result = build_with_buildah(counters_archive, ANNOTATIONS, push=push, timeout=120)

    index = json.loads((layout / "index.json").read_text())
    (entry,) = index["manifests"]
    assert entry["digest"] == result.digest
    blobs = layout / "blobs" / "sha256"
    manifest = json.loads((blobs / entry["digest"].removeprefix("sha256:")).read_bytes())
    assert manifest["config"]["digest"] == f"sha256:{result.image_id}"
    assert ANNOTATIONS.items() <= manifest["annotations"].items()
    (layer,) = manifest["layers"]
    # buildah 1.28 compresses for oci: whatever --disable-compression says.
    assert layer["mediaType"].endswith("+zstd" if compression == "zstd" else "+gzip")
    blob = (blobs / layer["digest"].removeprefix("sha256:")).read_bytes()
    with tarfile.open(counters_archive) as tar:
        assert layer_files(blob, layer["mediaType"]) == regular_files(tar)


@real
@pytest.mark.parametrize("packing", ["gzip", "zstd"])
def test_real_build_unpacks_a_compressed_archive(counters_archive: Path, tmp_path: Path,
                                                 no_leftovers: None, packing: str) -> None:
    """`migrate build --builder buildah` hands buildah a Podman export as it is: `buildah
    add` unpacks a gzip or zstd tar, so the layer holds the members, not the file."""
    zstd = pytest.importorskip("zstandard")
    data = counters_archive.read_bytes()
    packed = tmp_path / f"export.{packing}"
    packed.write_bytes(gzip.compress(data) if packing == "gzip"
                       else zstd.ZstdCompressor().compress(data))
    layout = tmp_path / "layout"
    result = build_with_buildah(packed, ANNOTATIONS, push=BuildahPush(
        f"oci:{layout}:v1", compression="gzip"), timeout=120)
    blobs = layout / "blobs" / "sha256"
    manifest = json.loads((blobs / result.digest.removeprefix("sha256:")).read_bytes())
    (layer,) = manifest["layers"]
    blob = (blobs / layer["digest"].removeprefix("sha256:")).read_bytes()
    with tarfile.open(counters_archive) as tar:
        assert layer_files(blob, layer["mediaType"]) == regular_files(tar)


def pushed(reg: RegistryUnderTest, repo: str, tag: str) -> tuple[str, dict[str, Any]]:
    """The digest and manifest the registry serves for ``repo:tag``."""
    resp = reg.http().request(
        "GET", f"{reg.url}/v2/{repo}/manifests/{tag}",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json",
                 **reg.auth_headers(f"repository:{repo}:pull")})
    assert resp.status == 200, resp.data
    return resp.headers["Docker-Content-Digest"], dict(json.loads(resp.data))


def creds(reg: RegistryUnderTest, password: str | None = None) -> tuple[str, Secret]:
    assert reg.username and reg.password
    return reg.username, Secret(password or reg.password)


@real
@pytest.mark.parametrize("kind", ["tls_basic_registry", "token_registry"])
def test_real_push_with_creds_and_cert_dir(counters_archive: Path, private_tmp: Path,
                                           no_leftovers: None, unique_repo: str,
                                           request: pytest.FixtureRequest, kind: str) -> None:
    reg: RegistryUnderTest = request.getfixturevalue(kind)
    push = BuildahPush(f"{reg.host}/{unique_repo}:v1", cert_dir=reg.cert_dir, creds=creds(reg))
    result = build_with_buildah(counters_archive, ANNOTATIONS, push=push, timeout=120)
    assert list(private_tmp.iterdir()) == []  # the authfile and digest file are gone
    digest, manifest = pushed(reg, unique_repo, "v1")
    assert digest == result.digest
    assert manifest["config"]["digest"] == f"sha256:{result.image_id}"
    assert ANNOTATIONS.items() <= manifest["annotations"].items()


@real
@pytest.mark.parametrize("kind", ["tls_basic_registry", "token_registry"])
def test_real_push_wrong_password(counters_archive: Path, no_leftovers: None,
                                  unique_repo: str, request: pytest.FixtureRequest,
                                  kind: str) -> None:
    reg: RegistryUnderTest = request.getfixturevalue(kind)
    wrong = "wrong-" + PASSWORD
    push = BuildahPush(f"{reg.host}/{unique_repo}:v1", cert_dir=reg.cert_dir,
                       creds=creds(reg, wrong))
    with pytest.raises(AuthError) as exc:
        build_with_buildah(counters_archive, ANNOTATIONS, push=push, timeout=120)
    assert exc.value.message.startswith("buildah push failed: ")
    assert re.search("unauthorized|authentication required", exc.value.message)
    assert wrong not in exc.value.message


@real
def test_real_push_unknown_ca(counters_archive: Path, no_leftovers: None, unique_repo: str,
                              tls_basic_registry: RegistryUnderTest) -> None:
    push = BuildahPush(f"{tls_basic_registry.host}/{unique_repo}:v1",
                       creds=creds(tls_basic_registry))
    with pytest.raises(RegistryError) as exc:
        build_with_buildah(counters_archive, ANNOTATIONS, push=push, timeout=120)
    assert exc.value.message.startswith("buildah push failed: ")
    assert "certificate signed by unknown authority" in exc.value.message
